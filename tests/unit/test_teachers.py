"""Teacher backends with tiny random models: shapes, ranges, batching, the yes/no math, retrieval
smoothing, ensemble weights, confidence, and config errors that name the field."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tinymodels import save_tiny_bert
from distillery.config import ConfigError
from distillery.data.schema import LOG_SCHEMA
from distillery.data.text import to_text
from distillery.teachers import (
    Teacher,
    build_teacher,
    confidence,
    disagreement,
    parse_teacher_config,
    score,
    score_detailed,
    warm_caches,
)
from distillery.teachers.retrieval import blend, smoothed_rate, top_k_cosine

TEXTS = [
    "query: running shoes | site: sports | ad: cheap sneakers | text: free delivery on all orders",
    "query: luxury watch | ad: swiss watches",
    "device: mobile | os: android | hour: 21 | position: 2 | slot: 320x50 | advertiser: acme travel | ad: travel deals to rome and paris this summer",
    "hi",
    "query: news",
    "query: mortgage rates today | site: finance | ad: refinance your home loan at a lower rate | ad category: finance",
    "ad: socks",
    "query: pizza near me | device: desktop | ad: order pizza online tonight with free garlic bread",
    "query: flights | ad: cheap flights",
    "query: running shoes | ad: cheap sneakers",
    "query: gardening tools | ad: spring sale on shovels, rakes and hoses",
]


def _sharpen(path: Path) -> Path:
    """Refit a saved random classifier's head so its probabilities spread over (0, 1) on TEXTS:
    random BERT pooled outputs barely vary, so a random head gives ~constant probabilities."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        batch = tok(TEXTS, padding=True, return_tensors="pt")
        pooled = model.bert(**batch).pooler_output  # (n, hidden)
        centred = pooled - pooled.mean(0)
        direction = torch.linalg.svd(centred, full_matrices=False).Vh[0]  # most varying direction
        scale = 2.0 / (centred @ direction).std()
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
        model.classifier.weight[-1] = direction * scale
        model.classifier.bias[-1] = -(pooled.mean(0) @ direction) * scale
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def bert1(tmp_path_factory) -> Path:
    return _sharpen(save_tiny_bert(tmp_path_factory.mktemp("bert1"), seed=1))


@pytest.fixture(scope="module")
def bert1b(tmp_path_factory) -> Path:
    return _sharpen(save_tiny_bert(tmp_path_factory.mktemp("bert1b"), seed=2))


@pytest.fixture(scope="module")
def bert2(tmp_path_factory) -> Path:
    return _sharpen(save_tiny_bert(tmp_path_factory.mktemp("bert2"), num_labels=2, seed=3))


def _hf(model: Path, **kw):
    return build_teacher({"kind": "hf-classifier", "model": str(model), "device": "cpu", **kw})


# ----------------------------------------------------------------------------------- hf-classifier

def test_hf_classifier_protocol_shapes_range_and_determinism(bert1):
    teacher = _hf(bert1, batch_size=4)
    assert isinstance(teacher, Teacher)
    probs = teacher.predict_proba(TEXTS)
    assert probs.shape == (len(TEXTS),) and probs.dtype == np.float64
    assert np.all((probs >= 0) & (probs <= 1))
    assert probs.std() > 0.01, "the sharpened random head should spread probabilities"
    np.testing.assert_array_equal(probs, teacher.predict_proba(TEXTS))
    assert teacher.predict_proba([]).shape == (0,)
    probs2, conf = score(teacher, TEXTS)
    np.testing.assert_array_equal(probs2, probs)
    assert conf.shape == probs.shape and np.all((conf >= 0) & (conf <= 1))


def test_hf_classifier_batching_invariance_and_order(bert1):
    one = _hf(bert1, batch_size=1).predict_proba(TEXTS)
    eight = _hf(bert1, batch_size=8).predict_proba(TEXTS)
    np.testing.assert_allclose(one, eight, atol=1e-5)
    perm = np.random.default_rng(0).permutation(len(TEXTS))
    shuffled = _hf(bert1, batch_size=3).predict_proba([TEXTS[i] for i in perm])
    np.testing.assert_allclose(shuffled, eight[perm], atol=1e-5)


def test_hf_classifier_num_labels_2_is_softmax_of_class_1(bert2):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    probs = _hf(bert2, batch_size=4).predict_proba(TEXTS)
    tok = AutoTokenizer.from_pretrained(bert2)
    model = AutoModelForSequenceClassification.from_pretrained(bert2).eval()
    with torch.no_grad():
        manual = [model(**tok(t, return_tensors="pt")).logits.softmax(-1)[0, 1].item() for t in TEXTS]
    np.testing.assert_allclose(probs, manual, atol=1e-5)


def test_hf_classifier_truncates_to_max_length(bert1):
    long = " ".join(["word"] * 500)
    short = _hf(bert1, max_length=16).predict_proba([long, long + " more words at the end"])
    assert short[0] == pytest.approx(short[1], abs=1e-6)  # only the first 16 tokens are read


def test_hf_classifier_rejects_three_labels(tmp_path, bert1, index_dir):
    path = save_tiny_bert(tmp_path / "three", num_labels=3)
    with pytest.raises(ConfigError, match=r"teacher.model: .*num_labels=3"):
        _hf(path)
    members = [{"kind": "hf-classifier", "model": str(bert1)}, {"kind": "retrieval", "encoder": str(bert1), "index": str(index_dir), "cache": None,
                                        "base": {"kind": "hf-classifier", "model": str(path)}}]
    with pytest.raises(ConfigError, match=r"^teacher.members.1.base.model: .*num_labels=3"):
        build_teacher({"kind": "ensemble", "members": members})


def test_hf_classifier_id_is_stable_lineage(bert1, bert1b):
    a, b = _hf(bert1), _hf(bert1)
    assert a.teacher_id == b.teacher_id and a.teacher_id.startswith("hf-classifier:bert1")
    assert _hf(bert1b).teacher_id.split(":")[-1] != a.teacher_id.split(":")[-1]
    assert _hf(bert1, dtype="bf16").teacher_id.endswith("@bf16")


def test_hf_classifier_bf16_close_to_fp32(bert1):
    fp32 = _hf(bert1).predict_proba(TEXTS)
    bf16 = _hf(bert1, dtype="bf16").predict_proba(TEXTS)
    assert bf16.dtype == np.float64
    np.testing.assert_allclose(bf16, fp32, atol=0.05)


# ------------------------------------------------------------------------------------ hf-causal-lm

@pytest.fixture(params=["gpt2", "llama"])
def tiny_lm(request) -> Path:
    return request.getfixturevalue(f"tiny_{request.param}")


def _lm(model: Path, **kw):
    return build_teacher({"kind": "hf-causal-lm", "model": str(model), "device": "cpu", **kw})


def test_causal_lm_matches_manual_forward_pass(tiny_lm):
    import torch

    teacher = _lm(tiny_lm, batch_size=4)
    probs = teacher.predict_proba(TEXTS)
    assert probs.shape == (len(TEXTS),) and np.all((probs > 0) & (probs < 1))
    manual = []
    for text in TEXTS:  # one unpadded prompt at a time: no padding, no position-id tricks
        ids = teacher.tokenizer(teacher.render(text))["input_ids"]
        with torch.no_grad():
            p = teacher.model(torch.tensor([ids])).logits[0, -1].softmax(-1)
        p_yes, p_no = p[teacher.yes_ids].sum().item(), p[teacher.no_ids].sum().item()
        manual.append(p_yes / (p_yes + p_no))
    np.testing.assert_allclose(probs, manual, atol=1e-5)
    assert probs.std() > 0.01, "a random LM with wide init should vary by row"
    np.testing.assert_allclose(_lm(tiny_lm, batch_size=1).predict_proba(TEXTS), probs, atol=1e-5)


def test_causal_lm_answer_tokens_and_lineage(tiny_lm):
    teacher = _lm(tiny_lm)
    tok = teacher.tokenizer
    assert teacher.yes_ids == sorted({tok.encode(" yes")[0], tok.encode(" Yes")[0]})
    assert not set(teacher.yes_ids) & set(teacher.no_ids)
    assert teacher.teacher_id.startswith("hf-causal-lm:tiny_")
    other = _lm(tiny_lm, prompt="Ad: {text}\nClick? Answer:")
    assert other.teacher_id != teacher.teacher_id  # the prompt is part of the lineage


def test_causal_lm_truncates_text_but_keeps_the_answer_cue(tiny_gpt2):
    teacher = _lm(tiny_gpt2, max_length=48)
    long = "query: running shoes " * 80
    ids = teacher._encode_fitting(long)
    assert len(ids) <= 48
    assert teacher.tokenizer.decode(ids).endswith("Answer yes or no.\nAnswer:")
    assert teacher.tokenizer.decode(ids).startswith("Ad impression: query: running")
    probs = teacher.predict_proba([long, "ad: socks"])
    assert np.all(np.isfinite(probs))


def test_causal_lm_chat_template_wraps_the_prompt(tiny_gpt2, tmp_path):
    import torch
    from transformers import AutoTokenizer

    folder = Path(shutil.copytree(tiny_gpt2, tmp_path / "chat_lm"))
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = (
        "{% for m in messages %}<|endoftext|>user: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    tok.save_pretrained(folder)
    teacher = _lm(folder, chat_template=True, batch_size=3)
    prompt = teacher.render("ad: socks")
    assert prompt.startswith("<|endoftext|>user: Ad impression: ad: socks") and prompt.endswith("assistant:")
    probs = teacher.predict_proba(TEXTS[:5])
    for text, p in zip(TEXTS[:5], probs):
        ids = teacher.tokenizer(teacher.render(text), add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = teacher.model(torch.tensor([ids])).logits[0, -1]
        margin = logits[teacher.yes_ids].logsumexp(0) - logits[teacher.no_ids].logsumexp(0)
        assert p == pytest.approx(torch.sigmoid(margin).item(), abs=1e-5)


def test_causal_lm_config_errors(tiny_gpt2):
    with pytest.raises(ConfigError, match=r"teacher.max_length: 8 leaves no room"):
        _lm(tiny_gpt2, max_length=8)
    with pytest.raises(ConfigError, match=r"teacher.chat_template"):
        _lm(tiny_gpt2, chat_template=True)
    with pytest.raises(ConfigError, match=r"teacher.no_words: token ids"):
        _lm(tiny_gpt2, yes_words=[" yes"], no_words=[" yesno"])  # both start with the " yes" token
    with pytest.raises(ConfigError, match=r"teacher.prompt: .*\{text\}"):
        parse_teacher_config({"kind": "hf-causal-lm", "prompt": "no slot"})


# --------------------------------------------------------------------------------------- retrieval

def test_smoothed_rate_k1_and_prior():
    sims, clicks = np.array([[1.0]]), np.array([[1.0]])
    assert smoothed_rate(sims, clicks, base_rate=0.1, prior_strength=1.0)[0] == pytest.approx((1 + 0.1) / 2)
    assert smoothed_rate(sims, clicks, base_rate=0.1, prior_strength=0.0)[0] == pytest.approx(1.0)
    assert smoothed_rate(sims, clicks, base_rate=0.1, prior_strength=1e6)[0] == pytest.approx(0.1, abs=1e-5)
    # negative similarity carries no weight: the rate falls back to the base rate
    assert smoothed_rate(np.array([[-0.3]]), clicks, 0.2, 0.0)[0] == pytest.approx(0.2)
    weighted = smoothed_rate(np.array([[0.9, 0.3]]), np.array([[1.0, 0.0]]), 0.0, 0.0)[0]
    assert weighted == pytest.approx(0.9 / 1.2)


def test_blend_spaces():
    rate, base = np.array([0.8]), np.array([0.2])
    assert blend(rate, base, 0.5, "prob")[0] == pytest.approx(0.5)
    assert blend(rate, base, 0.5, "logit")[0] == pytest.approx(0.5)  # logits 1.386 and -1.386
    assert blend(rate, base, 1.0, "logit")[0] == pytest.approx(0.8)
    assert blend(rate, base, 0.0, "prob")[0] == pytest.approx(0.2)
    lo = blend(np.array([0.9]), np.array([0.01]), 0.5, "logit")[0]
    assert 0.01 < lo < blend(np.array([0.9]), np.array([0.01]), 0.5, "prob")[0]


def test_top_k_cosine_matches_brute_force_across_chunks():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    q = emb[:7] + 0.1 * rng.normal(size=(7, 8)).astype(np.float32)
    sims, idx = top_k_cosine(q, emb, k=5, max_block=60)  # 1 query per chunk
    full = q @ emb.T
    for row in range(7):
        assert set(idx[row]) == set(np.argsort(-full[row])[:5])
        np.testing.assert_allclose(sims[row], full[row, idx[row]], rtol=1e-6)
    sims_all, idx_all = top_k_cosine(q, emb, k=500)
    assert idx_all.shape == (7, 50)


def _write_index(folder: Path, groups: list[tuple[str, list[int]]]) -> Path:
    """Parquet logs: for each (ad title, clicks), one row per click value with that title."""
    rows = []
    for title, clicks in groups:
        for c in clicks:
            rows.append({"id": f"r{len(rows)}", "ad_title": title, "query": "shop", "click": c})
    rows.append({"id": "unlabelled", "ad_title": "never counted", "query": "shop", "click": None})
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=LOG_SCHEMA)
    pq.write_table(table.slice(0, 6), folder / "part-0.parquet")
    pq.write_table(table.slice(6), folder / "part-1.parquet")
    return folder


GROUPS = [("luxury swiss watch", [1, 1, 1, 1]), ("wool socks", [0, 0, 0, 0]),
          ("garden hose", [0]), ("pizza", [0]), ("flight deals", [1])]


def _text(title: str) -> str:
    return to_text({"ad_title": title, "query": "shop"})


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    return _write_index(tmp_path_factory.mktemp("index") / "train", GROUPS)


def _retrieval(bert: Path, index: Path, **kw):
    cfg = {"kind": "retrieval", "encoder": str(bert), "index": str(index), "device": "cpu", "cache": None, **kw}
    return build_teacher(cfg)


def test_retrieval_neighbour_rate_moves_toward_known_clicks(bert1, index_dir):
    base_rate = 5 / 11  # 4 + 0 + 0 + 0 + 1 clicks in 11 labelled rows
    t = _retrieval(bert1, index_dir, k=4, prior_strength=2.0)
    assert isinstance(t, Teacher) and t.index.embeddings.shape[0] == 11  # the unlabelled row is skipped
    assert t.index.base_rate == pytest.approx(base_rate)
    rate = t.neighbour_rate([_text("luxury swiss watch"), _text("wool socks")])
    # the 4 nearest rows of an indexed text are its 4 identical copies (cosine 1)
    assert rate[0] == pytest.approx((4 + 2 * base_rate) / (4 + 2), abs=1e-4)
    assert rate[1] == pytest.approx((0 + 2 * base_rate) / (4 + 2), abs=1e-4)
    np.testing.assert_allclose(t.predict_proba([_text("wool socks")]), rate[1:], atol=1e-6)  # no base: the rate
    # k=1: one neighbour, smoothed by the prior
    k1 = _retrieval(bert1, index_dir, k=1, prior_strength=1.0).neighbour_rate([_text("flight deals")])
    assert k1[0] == pytest.approx((1 + base_rate) / 2, abs=1e-4)


def test_retrieval_blends_with_base_teacher(bert1, bert1b, index_dir):
    texts = [_text("luxury swiss watch"), _text("wool socks")]
    base = _hf(bert1b).predict_proba(texts)
    t = _retrieval(bert1, index_dir, k=4, prior_strength=0.0, neighbour_weight=0.5, blend="prob",
                   base={"kind": "hf-classifier", "model": str(bert1b), "device": "cpu"})
    probs = t.predict_proba(texts)
    np.testing.assert_allclose(probs, 0.5 * np.array([1.0, 0.0]) + 0.5 * base, atol=1e-4)
    assert probs[0] > base[0] and probs[1] < base[1]  # pulled toward the neighbours' clicks
    assert "+(hf-classifier:bert1b0:" in t.teacher_id


def test_retrieval_index_cache_saved_loaded_and_invalidated(bert1, index_dir, tmp_path):
    cache = str(tmp_path / "emb.npz")
    first = _retrieval(bert1, index_dir, cache=cache)
    assert first.index_source == "built" and Path(cache).exists()
    second = _retrieval(bert1, index_dir, cache=cache)
    assert second.index_source == "cache"
    np.testing.assert_array_equal(second.index.embeddings, first.index.embeddings)
    other = _write_index(tmp_path / "other", [("pizza", [1, 0])])
    third = _retrieval(bert1, other, cache=cache)  # same cache path, different logs: rebuilt
    assert third.index_source == "built" and third.index.embeddings.shape[0] == 2
    assert _retrieval(bert1, index_dir, cache=cache).index_source == "built"  # overwritten by `other`


def test_warm_caches_builds_each_index_once_for_actors(bert1, index_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLERY_CACHE", str(tmp_path / "cache"))
    retrieval = {"kind": "retrieval", "encoder": str(bert1), "index": str(index_dir), "device": "cpu", "k": 2}
    cfg = parse_teacher_config({"kind": "ensemble", "members": [{"kind": "hf-classifier", "model": str(bert1)}, retrieval]})
    assert warm_caches(cfg) == {"teacher.members.1": "built"}
    assert len(list((tmp_path / "cache" / "retrieval").glob("*.npz"))) == 1
    assert warm_caches(cfg) == {"teacher.members.1": "cache"}
    actor_side = build_teacher(cfg)  # what a labeling actor does
    assert actor_side.members[1].index_source == "cache"


# ---------------------------------------------------------------------------------------- ensemble

def test_ensemble_weights_members_and_id(bert1, bert1b):
    members = [{"kind": "hf-classifier", "model": str(m), "device": "cpu"} for m in (bert1, bert1b)]
    ens = build_teacher({"kind": "ensemble", "members": members, "weights": [3, 1]})
    p1, p2 = _hf(bert1).predict_proba(TEXTS), _hf(bert1b).predict_proba(TEXTS)
    m = ens.predict_members(TEXTS)
    assert m.shape == (len(TEXTS), 2)
    np.testing.assert_allclose(m, np.stack([p1, p2], axis=1), atol=1e-7)
    np.testing.assert_allclose(ens.predict_proba(TEXTS), 0.75 * p1 + 0.25 * p2, atol=1e-7)
    assert "hf-classifier:bert10:" in ens.teacher_id and "hf-classifier:bert1b0:" in ens.teacher_id
    s = score_detailed(ens, TEXTS)
    np.testing.assert_allclose(s.probs, 0.75 * p1 + 0.25 * p2, atol=1e-7)
    np.testing.assert_allclose(s.disagreement, np.sqrt(0.75 * 0.25) * np.abs(p1 - p2), atol=1e-7)
    assert np.all(s.confidence <= confidence(s.probs) + 1e-12)


# -------------------------------------------------------------------------------------- confidence

def test_confidence_entropy_and_disagreement():
    c = confidence(np.array([0.0, 0.5, 1.0, 0.1, 0.9]))
    np.testing.assert_allclose(c[:3], [1.0, 0.0, 1.0], atol=1e-9)
    assert c[3] == pytest.approx(c[4]) and 0 < c[3] < 1
    assert c[3] == pytest.approx(1 + 0.1 * np.log2(0.1) + 0.9 * np.log2(0.9))
    agree = np.array([[0.1, 0.1]])
    split = np.array([[0.0, 0.2]])
    assert confidence(np.array([0.1]), agree)[0] == pytest.approx(c[3])
    assert confidence(np.array([0.1]), split)[0] == pytest.approx(c[3] * (1 - 2 * 0.1))
    assert confidence(np.array([0.5]), np.array([[0.0, 1.0]]))[0] == 0.0
    assert disagreement(np.array([[0.0, 1.0]]), np.array([1.0, 3.0]))[0] == pytest.approx(np.sqrt(0.1875))


class _Broken:
    teacher_id = "broken"

    def __init__(self, out):
        self.out = out

    def predict_proba(self, texts):
        return self.out


def test_score_rejects_bad_teacher_output():
    with pytest.raises(ValueError, match="broken: probabilities not finite"):
        score(_Broken(np.array([0.1, np.nan])), ["a", "b"])
    with pytest.raises(ValueError, match="broken: output shape"):
        score(_Broken(np.array([0.1])), ["a", "b"])
    with pytest.raises(ValueError, match="outside"):
        score(_Broken(np.array([0.1, 1.5])), ["a", "b"])


# ----------------------------------------------------------------------------------------- configs

@pytest.mark.parametrize("data, field", [
    ({"kind": "gpt-oracle"}, "teacher.kind"),
    ({"model": "x"}, "teacher.kind"),
    ({"kind": "retrieval", "k": 0}, "teacher.k"),
    ({"kind": "retrieval", "neighbour_weight": 1.5}, "teacher.neighbour_weight"),
    ({"kind": "ensemble", "members": [{"kind": "hf-classifier"}], "weights": [1, 2]}, "teacher.weights"),
    ({"kind": "ensemble", "members": [{"kind": "hf-classifier"}] * 2, "weights": [-1, 2]}, "teacher.weights"),
    ({"kind": "ensemble"}, "teacher.members"),
    ({"kind": "hf-classifier", "dtype": "int8"}, "teacher.dtype"),
    ({"kind": "hf-classifier", "device": "tpu"}, "teacher.device"),
    ({"kind": "hf-classifier", "batchsize": 8}, "teacher.batchsize"),
    ({"kind": "hf-causal-lm", "yes_words": [" yes"], "no_words": [" yes"]}, "teacher.no_words"),
    ({"kind": "ensemble", "members": [{"kind": "retrieval", "base": {"kind": "hf-classifier", "max_length": 2}}]},
     "teacher.members.0.base.max_length"),
])
def test_config_errors_name_the_field(data, field):
    with pytest.raises(ConfigError, match=rf"config: {field.replace('.', '[.]')}: "):
        parse_teacher_config(data)


def test_missing_model_folder_and_index_fail_before_loading(bert1, tmp_path):
    good = {"kind": "hf-classifier", "model": str(bert1)}
    with pytest.raises(ConfigError, match=r"teacher.members.1.model: no model folder"):
        build_teacher({"kind": "ensemble", "members": [good, {"kind": "hf-classifier", "model": str(tmp_path / "nope")}]})
    with pytest.raises(ConfigError, match=r"teacher.model: .*no config.json"):
        build_teacher({"kind": "hf-classifier", "model": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"teacher.model: .*cached hub model"):
        build_teacher({"kind": "hf-classifier", "model": "nobody/no-such-model"})
    with pytest.raises(ConfigError, match=r"teacher.index: no logs"):
        build_teacher({"kind": "retrieval", "encoder": str(bert1), "index": str(tmp_path / "missing")})
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"teacher.index: no rows with a known click"):
        build_teacher({"kind": "retrieval", "encoder": str(bert1), "index": str(tmp_path / "empty"), "cache": None})


def test_configs_pickle_and_round_trip():
    cfg = parse_teacher_config({"kind": "ensemble", "members": [
        {"kind": "hf-classifier", "batch_size": 16},
        {"kind": "retrieval", "k": 5, "base": {"kind": "hf-classifier", "dtype": "bf16"}},
    ], "weights": [1, 1]})
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    assert parse_teacher_config(cfg.model_dump()) == cfg
    assert cfg.members[1].base.dtype == "bf16"


def test_hf_classifier_decoder_model_without_pad_token(tiny_gpt2, tmp_path):
    """A GPT-2 sequence classifier (no pad token) scores the same alone and in padded batches."""
    from transformers import GPT2ForSequenceClassification

    model = GPT2ForSequenceClassification.from_pretrained(tiny_gpt2, num_labels=1)
    model.config.pad_token_id = None
    model.save_pretrained(tmp_path / "gpt2_cls")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_gpt2 / name, tmp_path / "gpt2_cls" / name)
    batched = _hf(tmp_path / "gpt2_cls", batch_size=8).predict_proba(TEXTS)
    alone = _hf(tmp_path / "gpt2_cls", batch_size=1).predict_proba(TEXTS)
    np.testing.assert_allclose(batched, alone, atol=1e-5)


class ConstantTeacher:
    """A user-defined teacher for the `python` extension point."""

    def __init__(self, p: float = 0.25):
        self.p = p
        self.teacher_id = f"constant:{p}"

    def predict_proba(self, texts):
        return np.full(len(texts), self.p)


def test_python_kind_builds_a_user_class_inside_an_ensemble(bert1):
    own = {"kind": "python", "target": f"{__name__}:ConstantTeacher", "kwargs": {"p": 0.75}}
    ens = build_teacher({"kind": "ensemble", "members": [own, {"kind": "hf-classifier", "model": str(bert1)}]})
    assert ens.members[0].teacher_id == "constant:0.75"
    np.testing.assert_allclose(ens.predict_members(TEXTS)[:, 0], 0.75)
    with pytest.raises(ConfigError, match=r"teacher.members.0.target: cannot import"):
        build_teacher({"kind": "ensemble", "members": [{"kind": "python", "target": "no_such_module:X"}]})
    with pytest.raises(ConfigError, match=r"teacher.target: .*Teacher protocol"):
        build_teacher({"kind": "python", "target": "collections:OrderedDict"})
