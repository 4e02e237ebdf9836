"""The single-process training loop and the training table: loss goes down, seeds reproduce,
a resumed run equals an uninterrupted one, kept=false rows and hidden clicks stay out."""

import math

import numpy as np
import pytest
import torch

from distillery.training.data import DataSection, build_training_table
from distillery.training.init import ModelInit, build_model
from distillery.training.loop import (InjectedFailure, LoopConfig, latest_local_checkpoint, load_checkpoint,
                                      local_hooks, train)


def test_table_skips_not_kept_rows_and_hides_unlabeled_clicks(run_dir):
    table = build_training_table(str(run_dir), DataSection(splits=["train", "unlabeled"], val_fraction=0.2), "soft")
    c = table.counts
    assert c["rows_read"] == 400 and c["rows_no_label"] == 0
    assert c["rows_not_kept"] == sum(1 for i in range(240) if i % 7 == 0) + sum(1 for i in range(160) if i % 7 == 0)
    assert len(table) == c["rows_used"] == 400 - c["rows_not_kept"]
    unl = np.array([s == "unlabeled" for s in table.split])
    assert np.isnan(table.click[unl]).all() and not np.isnan(table.click[~unl]).any()
    assert not np.isnan(table.target).any() and 0 < table.is_val.sum() < len(table)
    assert all(t.startswith("query:") or t.startswith("site:") or ":" in t for t in table.texts[:5])


def test_click_loss_needs_revealed_clicks_for_the_unlabeled_split(run_dir):
    with pytest.raises(ValueError, match="reveal_hidden_clicks"):
        build_training_table(str(run_dir), DataSection(splits=["train", "unlabeled"]), "click")
    strict = build_training_table(str(run_dir), DataSection(splits=["train", "unlabeled"], reveal_hidden_clicks=True), "click")
    assert strict.counts["rows_used"] == 400 and not np.isnan(strict.target).any()  # no labels needed for clicks


def test_validation_holdout_is_the_same_for_every_model(run_dir):
    a = build_training_table(str(run_dir), DataSection(splits=["train"]), "soft")
    b = build_training_table(str(run_dir), DataSection(splits=["train"]), "click")
    val_a = {i for i, v in zip(a.ids, a.is_val) if v}
    val_b = {i for i, v in zip(b.ids, b.is_val) if v}
    assert val_a <= val_b  # b has the kept=false rows too


def _loop(**kw):
    base = dict(loss="soft", epochs=3, batch_size=16, lr=3e-3, max_length=48, seed=0, warmup_fraction=0.0)
    base.update(kw)
    return LoopConfig(**base)


def _model(bert, seed=0):
    return build_model(ModelInit(kind="pretrained", source=str(bert), seed=seed))


def test_loss_goes_down_on_a_tiny_model(run_dir, bert):
    table = build_training_table(str(run_dir), DataSection(splits=["train"]), "soft")
    model, tok = _model(bert)
    state = train(_loop(epochs=3), table, model, tok)
    losses = [h["loss"] for h in state.history]
    assert losses[-1] < losses[0], losses
    assert state.epoch == 3 and 0 <= state.best_epoch < 3
    assert all(math.isfinite(h["val_loss"]) for h in state.history)


@pytest.mark.parametrize("loss", ["hard", "joint", "click"])
def test_every_loss_trains(run_dir, bert, loss):
    data = DataSection(splits=["train"]) if loss == "click" else DataSection(splits=["train", "unlabeled"])
    table = build_training_table(str(run_dir), data, loss)
    model, tok = _model(bert)
    state = train(_loop(loss=loss, epochs=1), table, model, tok)
    assert math.isfinite(state.history[0]["loss"])


def test_same_seed_same_weights_other_seed_differs(run_dir, bert):
    table = build_training_table(str(run_dir), DataSection(splits=["train"]), "soft")

    def weights(seed):
        model, tok = _model(bert)
        train(_loop(epochs=1, seed=seed), table, model, tok)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    a, b, c = weights(0), weights(0), weights(1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_resumed_run_equals_an_uninterrupted_one(run_dir, bert, tmp_path):
    table = build_training_table(str(run_dir), DataSection(splits=["train"]), "soft")
    model, tok = _model(bert)
    straight = train(_loop(epochs=3), table, model, tok)
    straight_w = torch.cat([p.detach().flatten() for p in model.parameters()])

    ckpt = str(tmp_path / "ckpt")
    model, tok = _model(bert)
    with pytest.raises(InjectedFailure):
        train(_loop(epochs=3, fail_once_at_epoch=2), table, model, tok, hooks=local_hooks(ckpt))
    latest = latest_local_checkpoint(ckpt)
    assert latest.endswith("epoch_0001")
    model, tok, state = load_checkpoint(latest)
    assert state.epoch == 2
    resumed = train(_loop(epochs=3, fail_once_at_epoch=2), table, model, tok, hooks=local_hooks(ckpt), state=state)
    resumed_w = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2]
    assert resumed.history[2]["loss"] == pytest.approx(straight.history[2]["loss"], rel=1e-5)
    assert torch.allclose(straight_w, resumed_w, atol=1e-6)


@pytest.mark.parametrize("name,cls", [("train.yaml", "TrainJobConfig"), ("train_direct.yaml", "TrainJobConfig"),
                                      ("teacher.yaml", "TeacherJobConfig"), ("evaluate.yaml", "EvaluateConfig")])
def test_shipped_configs_parse(name, cls):
    from pathlib import Path

    import distillery.evaluate as evaluate
    import distillery.training.job as job
    from distillery.config import load_config

    klass = getattr(job, cls, None) or getattr(evaluate, cls)
    cfg = load_config(klass, Path(__file__).resolve().parents[2] / "jobs" / "configs" / name)
    assert cfg.run_dir == "runs/demo"


def test_bad_job_configs_fail_naming_the_field():
    from distillery.config import ConfigError, load_config
    from distillery.training.job import TeacherJobConfig, TrainJobConfig

    with pytest.raises(ConfigError, match="reveal_hidden_clicks"):
        load_config(TrainJobConfig, None, ["data.reveal_hidden_clicks=true", "loop.loss=soft"])
    with pytest.raises(ConfigError, match="data.splits"):
        load_config(TrainJobConfig, None, ["loop.loss=click"])  # default splits include unlabeled
    with pytest.raises(ConfigError, match="loop.loss"):
        load_config(TeacherJobConfig, None, ["loop.loss=soft"])
    with pytest.raises(ConfigError, match="loop.epochs"):
        load_config(TrainJobConfig, None, ["loop.epochs=0"])


class _Payload:  # a pickled object that would run code when a checkpoint is unpickled
    def __reduce__(self):
        return (print, ("code ran while loading a checkpoint",))


def test_checkpoint_state_loads_without_unpickling_code(tmp_path):
    import pickle

    import torch

    from distillery.training.loop import STATE_FILE, TrainState, _plain, load_state

    state = TrainState(epoch=1, history=[{"loss": np.float64(0.5)}], rng=torch.get_rng_state())
    torch.save(_plain(state.__dict__), tmp_path / STATE_FILE)
    loaded = load_state(str(tmp_path))
    assert loaded["epoch"] == 1 and loaded["history"] == [{"loss": 0.5}] and torch.equal(loaded["rng"], state.rng)
    torch.save({"epoch": 1, "history": [_Payload()]}, tmp_path / STATE_FILE)  # written by someone else
    with pytest.raises(pickle.UnpicklingError):
        load_state(str(tmp_path))


def test_evaluate_scores_the_test_split_in_chunks_with_the_same_figures(tmp_path):
    """`distillery evaluate` reads, renders and scores `chunk_rows` test rows at a time; the figures
    equal one pass over the whole split, and `max_rows` still cuts across chunks and files."""
    from distillery.evaluate import EvaluateConfig, run
    from tinymodels import make_tiny_run, save_tiny_bert

    run_dir = make_tiny_run(tmp_path / "run", rows_train=20, rows_unlabeled=0, rows_test=150)
    save_tiny_bert(run_dir / "student", num_layers=1, hidden=32, seed=2)

    def quality(**kw):
        cfg = EvaluateConfig(run_dir=str(run_dir), max_length=64, models={"student": str(run_dir / "student")},
                             report=str(tmp_path / f"report-{len(kw)}-{kw.get('chunk_rows')}.json"), predictions=None, **kw)
        return run(cfg)["quality"]

    whole, chunked = quality(chunk_rows=10_000), quality(chunk_rows=7)
    assert chunked["test_rows"] == whole["test_rows"] == 150
    for key in ("auc", "logloss", "ece"):
        assert chunked["student"][key] == pytest.approx(whole["student"][key], abs=1e-9)
    assert chunked["oracle_auc"] == pytest.approx(whole["oracle_auc"])
    assert quality(chunk_rows=7, max_rows=40)["test_rows"] == 40


@pytest.mark.parametrize("loss,splits", [("joint", ["train", "unlabeled"]), ("click", ["train"])])
def test_streamed_file_rows_are_the_tables_rows(run_dir, loss, splits):
    """`stream_rows` (one file at a time, Ray-free) keeps exactly the in-memory table's rows, texts,
    targets and held-out split; the unlabeled split's clicks are never read; counts agree."""
    from distillery.training.stream_rows import count_rows, file_rows, plan_inputs

    cfg = DataSection(splits=splits, val_fraction=0.2, stream=True, streaming={"block_rows": 50})
    table = build_training_table(str(run_dir), cfg, loss)
    inputs, sel = plan_inputs(str(run_dir), cfg, loss)
    got = {part: {r["id"]: r for inp in inputs for t in file_rows(inp, sel, part) for r in t.to_pylist()}
           for part in ("train", "val")}
    want = {i: (text, target, v) for i, text, target, v in zip(table.ids, table.texts, table.target, table.is_val)}
    assert set(got["train"]) == {i for i, w in want.items() if not w[2]}
    assert set(got["val"]) == {i for i, w in want.items() if w[2]}  # val_max_rows not reached: every held-out row
    for part in got.values():
        for i, r in part.items():
            assert r["text"] == want[i][0] and r["target"] == pytest.approx(want[i][1])
            assert (r["click"] != r["click"]) == (r["split"] == "unlabeled")  # NaN: the hidden column was not read
    counts = {k: sum(count_rows(inp, sel)[k] for inp in inputs) for k in table.counts}
    assert counts == pytest.approx(table.counts)


def test_streamed_validation_sample_is_bounded_and_fixed_by_id(run_dir):
    from distillery.training.stream_rows import file_rows, plan_inputs

    def val_ids(loss, **streaming):
        cfg = DataSection(splits=["train", "unlabeled"], val_fraction=0.5, stream=True, reveal_hidden_clicks=loss == "click",
                          streaming=streaming)
        inputs, sel = plan_inputs(str(run_dir), cfg, loss)
        return {r["id"] for inp in inputs for t in file_rows(inp, sel, "val") for r in t.to_pylist()}

    small = val_ids("joint", val_max_rows=40)
    assert 20 < len(small) < 60  # ~40 of the ~170 held-out rows
    assert small <= val_ids("joint")  # a hash cut inside the held-out rows
    assert small <= val_ids("click", val_max_rows=40) and val_ids("click", val_max_rows=40) - small  # + kept=false rows


def test_validation_shared_by_workers_gives_every_worker_the_whole_sets_figures(run_dir, bert):
    from distillery.training.loop import TARGET_KEYS, Hooks, make_loader, rows_for, validate

    table = build_training_table(str(run_dir), DataSection(splits=["train"], val_fraction=0.3), "joint")
    model, tok = _model(bert)
    cfg = _loop(loss="joint", eval_batch_size=8)
    loader = make_loader(rows_for(model, tok, table.subset(table.is_val), cfg.max_length), 8, shuffle=False)
    whole = validate(model, loader, cfg)
    assert whole["val_rows"] == int(table.is_val.sum()) > 16

    pieces = {}  # rank -> its scored part; a gather as torch.distributed's, over two calls in turn

    def gather_as(rank):
        def gather(mine):
            pieces[rank] = mine
            return [pieces.get(r, (torch.zeros(0), dict.fromkeys(TARGET_KEYS, torch.zeros(0)))) for r in range(2)]
        return gather

    validate(model, loader, cfg, hooks=Hooks(world_rank=1, world_size=2, gather=gather_as(1)))
    shared = validate(model, loader, cfg, hooks=Hooks(world_rank=0, world_size=2, gather=gather_as(0)))
    assert 0 < len(pieces[0][0]) < whole["val_rows"] and len(pieces[0][0]) + len(pieces[1][0]) == whole["val_rows"]
    assert shared["val_rows"] == whole["val_rows"] and shared["val_click_rows"] == whole["val_click_rows"]
    assert shared["val_loss"] == pytest.approx(whole["val_loss"], rel=1e-5)
    assert shared["val_auc"] == pytest.approx(whole["val_auc"], rel=1e-9)


def test_stream_auto_streams_only_above_the_row_threshold(run_dir):
    from pydantic import ValidationError

    from distillery.training.stream_rows import streams

    import pyarrow.parquet as pq

    rows = sum(pq.read_metadata(f).num_rows for split in ("train", "unlabeled") for f in (run_dir / "data" / split).glob("*.parquet"))
    auto = dict(splits=["train", "unlabeled"], stream="auto")
    assert streams(str(run_dir), DataSection(**auto, stream_above_rows=rows - 1)) == (
        True, f"data.stream=auto: {rows} rows in the input files, above data.stream_above_rows={rows - 1}")
    assert streams(str(run_dir), DataSection(**auto, stream_above_rows=rows))[0] is False
    assert streams(str(run_dir), DataSection(**{**auto, "max_rows_per_split": 5}, stream_above_rows=9))[0] is True
    assert streams(str(run_dir), DataSection(**{**auto, "max_rows_per_split": 4}, stream_above_rows=9))[0] is False
    assert streams(str(run_dir), DataSection(splits=["train"], stream=True, stream_above_rows=10**9))[0] is True
    assert streams(str(run_dir), DataSection(splits=["train"], stream=False, stream_above_rows=0))[0] is False
    assert DataSection().stream == "auto"
    with pytest.raises(ValidationError, match="stream"):
        DataSection(stream="sometimes")


def test_a_step_budget_trains_exactly_that_many_steps_across_passes(run_dir, bert):
    table = build_training_table(str(run_dir), DataSection(splits=["train"]), "soft")
    model, tok = _model(bert)
    one_pass = train(_loop(epochs=1), table, model, tok).history[0]["steps"]
    model, tok = _model(bert)
    state = train(_loop(steps=2 * one_pass + 3), table, model, tok)
    assert [h["steps"] for h in state.history] == [one_pass, one_pass, 3]  # the last pass cut short
    with pytest.raises(ValueError, match="steps: set loop.steps or loop.match_steps_of"):
        _loop(steps=5, match_steps_of="student")


def test_match_steps_of_reads_the_other_models_budget(tmp_path):
    from distillery.training.job import matched_steps

    (tmp_path / "student").mkdir()
    with pytest.raises(ValueError, match="training_summary.json does not exist: train 'other' first"):
        matched_steps(str(tmp_path), "other")
    (tmp_path / "student" / "training_summary.json").write_text('{"history": []}')
    with pytest.raises(ValueError, match="records no optimizer steps"):
        matched_steps(str(tmp_path), "student")
    (tmp_path / "student" / "training_summary.json").write_text('{"optimizer_steps": 416}')
    assert matched_steps(str(tmp_path), "student") == 416
