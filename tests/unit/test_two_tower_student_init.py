"""The two-tower student's start: a head that begins as the two-tower teacher's click head over the
student's own cosine (`init.head_from`), on a tiny random tower."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tinymodels import REPO
from distillery.config import ConfigError, load_config
from distillery.data.synthetic import SyntheticConfig, generate
from distillery.data.text import from_text, to_text
from distillery.data.tower_inputs import TwoTowerSpec, head_bucket, tower_inputs, tower_inputs_from_fields
from distillery.teachers.two_tower import TwoTowerHead
from distillery.training.init import ModelInit, build_model
from distillery.training.data import DataSection, build_training_table
from distillery.training.two_tower_student import TwoTowerRows, collate_two_tower, start_head_on_rows

# A teacher head over [cosine, position=2..4, site_category=news] (standardised), intercept -3.5.
TEACHER = dict(encoder="minilm", request_fields=["query"], ad_fields=["ad_title", "ad_description"],
               levels={"position": ["2", "3", "4"], "site_category": ["news"]},
               mean=[0.31, 0.22, 0.15, 0.1, 0.4], std=[0.12, 0.41, 0.36, 0.3, 0.49],
               weights=[0.45, -0.2, -0.3, -0.4, 0.1], intercept=-3.5)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher")
    TwoTowerHead(**TEACHER).save(str(folder))
    return folder


def _logits_and_cosines(model, tok, texts):
    batch = collate_two_tower([*TwoTowerRows(tok, texts, 48, model.spec)])
    inputs = {k: v for k, v in batch.items() if k not in ("target", "teacher_prob", "click")}
    with torch.no_grad():
        logits = model(**inputs).logits.squeeze(-1).double().numpy()
        u = model.embed(batch["request_input_ids"], batch["request_attention_mask"])
        v = model.embed(batch["ad_input_ids"], batch["ad_attention_mask"])
    return logits, ((u * v).sum(-1) / u.shape[-1]).double().numpy()


def test_head_from_the_teacher_scores_like_the_teacher_over_the_students_cosine(bert, teacher_dir):
    model, tok = build_model(ModelInit(kind="two_tower", source=str(bert), layers=[0], head_from=str(teacher_dir)))
    model.eval()
    texts = [to_text(r) for r in generate(SyntheticConfig(rows_test=60, seed=4), "test").to_pylist()]
    texts.append("query: running shoes | ad: Trail runners")  # no position: the reference level, as in the teacher
    logits, cos = _logits_and_cosines(model, tok, texts)
    # The teacher's own formula, with the site_category term left out (the head has no place for it).
    head = TwoTowerHead(**{**TEACHER, "levels": {"position": TEACHER["levels"]["position"]},
                           **{k: TEACHER[k][:4] for k in ("mean", "std", "weights")}})
    expected = head.logits(head.features(cos, [from_text(t) for t in texts]))
    np.testing.assert_allclose(logits, expected, atol=1e-5)
    assert np.ptp(cos) > 0  # the cosine varies, so the match is not a constant's


def test_head_from_the_teacher_starts_the_mlp_branch_at_zero_and_still_trains(bert, teacher_dir):
    model, _ = build_model(ModelInit(kind="two_tower", source=str(bert), layers=[0], head_from=str(teacher_dir)))
    head = model.classifier
    assert torch.count_nonzero(head.out.weight) == 0
    d = head.dim
    assert head.skip.weight[0, 3 * d].item() == pytest.approx(0.45 / 0.12, rel=1e-6)
    assert torch.count_nonzero(head.skip.weight) == 2  # the cosine and the position column; no slot levels
    assert head.position.weight[head_bucket("position", "3", model.spec), 0].item() == pytest.approx(-0.3 / 0.36, rel=1e-6)
    assert head.position.weight[0, 0].item() == 0.0  # unknown position = the reference level
    # The zero output weights get a gradient at once (the MLP branch is not stuck).
    x = torch.randn(4, head.dense.in_features)
    head.out(torch.relu(head.dense(x))).sum().backward()
    assert head.out.weight.grad.abs().sum() > 0


def test_a_fresh_head_is_unchanged_without_head_from(bert):
    torch.manual_seed(0)
    model, _ = build_model(ModelInit(kind="two_tower", source=str(bert), layers=[0]))
    assert torch.count_nonzero(model.classifier.skip.weight) == 0 and torch.count_nonzero(model.classifier.out.weight) > 0


def test_head_from_a_folder_without_a_head_names_the_field(bert, tmp_path):
    with pytest.raises(ConfigError, match="init.head_from"):
        build_model(ModelInit(kind="two_tower", source=str(bert), layers=[0], head_from=str(tmp_path)))


def test_head_bucket_is_the_bucket_tower_inputs_gives():
    spec = TwoTowerSpec()
    for row in generate(SyntheticConfig(rows_test=30), "test").to_pylist():
        _, _, pos, slot, *_ = tower_inputs(to_text(row), spec)
        assert (pos, slot) == (head_bucket("position", row["position"], spec), head_bucket("slot_size", row["slot_size"], spec))
    with pytest.raises(ValueError, match="head feature"):
        head_bucket("device", "mobile", spec)


def test_joined_text_is_the_teachers_strings_on_both_paths():
    from distillery.teachers.two_tower import tower_texts

    spec = TwoTowerSpec(text="joined")
    for row in generate(SyntheticConfig(rows_test=40, seed=2), "test").to_pylist():
        x = tower_inputs(to_text(row), spec)
        assert x == tower_inputs_from_fields(row, spec)
        req, ad, pos, slot = x.request, x.ad, x.position, x.slot
        parsed = from_text(to_text(row))
        assert ([req], [ad]) == tower_texts([parsed], spec.request_fields, spec.ad_fields)
        assert req == parsed["query"] and ad.startswith(parsed["ad_title"] + ". ")  # bare values, no labels
    assert tower_inputs("query: x | text: only a description", spec)[:2] == ("x", "only a description")


def test_head_on_rows_standardises_the_students_own_cosine(bert, teacher_dir, run_dir):
    table = build_training_table(str(run_dir), DataSection(splits=["train", "unlabeled"]), "joint")
    model, tok = build_model(ModelInit(kind="two_tower", source=str(bert), layers=[0], head_from=str(teacher_dir)))
    model.eval()
    start = start_head_on_rows(model, tok, str(teacher_dir), table, 48, rows=200)
    train = table.subset(~table.is_val)
    picked = [train.texts[i] for i in np.unique(np.linspace(0, len(train) - 1, 200).astype(int))]
    logits, cos = _logits_and_cosines(model, tok, picked)
    assert start["cosine_mean"] == pytest.approx(cos.mean(), abs=1e-4)
    # The cosine term has the teacher's standardised weight over the student's standardised cosine.
    position = logits - start["constant"] - start["cosine_weight"] * cos
    np.testing.assert_allclose(start["cosine_weight"], 0.45 / cos.std(), rtol=1e-3)
    assert len(np.unique(np.round(position, 5))) <= 4  # what is left is one value per position level


def test_head_on_clicks_fits_the_same_form_without_a_teacher(bert, run_dir):
    table = build_training_table(str(run_dir), DataSection(splits=["train"]), "click")
    model, tok = build_model(ModelInit(kind="two_tower", source=str(bert), layers=[0], head_from="clicks"))
    assert torch.count_nonzero(model.classifier.skip.weight) == 0  # nothing fitted before the rows are seen
    start = start_head_on_rows(model, tok, "clicks", table, 48)
    train = table.subset(~table.is_val)
    assert start["fitted_on_clicks"] == int(np.nansum(train.click)) > 0
    assert torch.count_nonzero(model.classifier.out.weight) == 0 and model.classifier.skip.weight[0, 3 * 32] != 0
    probs = torch.sigmoid(torch.tensor(_logits_and_cosines(model.eval(), tok, train.texts)[0])).numpy()
    assert probs.mean() == pytest.approx(np.nanmean(train.click), rel=0.15)  # a logistic fit matches the click rate


def test_shipped_config_starts_from_the_teacher_with_its_fields():
    from distillery.training.job import TeacherJobConfig, TrainJobConfig

    cfg = load_config(TrainJobConfig, REPO / "jobs" / "configs" / "train_two_tower.yaml", ["run_dir=/tmp/r"])
    assert cfg.init.head_from == "/tmp/r/teacher"
    assert not cfg.loop.init_bias_to_prior  # the teacher's intercept is the bias; the prior would overwrite it
    teacher = load_config(TeacherJobConfig, REPO / "jobs" / "configs" / "teacher_two_tower.yaml")
    assert cfg.init.two_tower.request_fields == teacher.two_tower.request_fields
    assert cfg.init.two_tower.ad_fields == teacher.two_tower.ad_fields and cfg.init.two_tower.text == "joined"
