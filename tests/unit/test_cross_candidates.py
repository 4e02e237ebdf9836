"""Cross-encoder candidates tokenised from cached pieces equal the tokenizer on `to_text(row)` exactly."""

from __future__ import annotations

import numpy as np
import pytest

from tinymodels import save_tiny_bert
from distillery.data.synthetic import SyntheticConfig, generate
from distillery.data.text import to_text
from distillery.serving.catalog import load_catalog
from distillery.onnx_model.cross_candidates import CandidateTokens, CrossCandidateScorer, exact_for


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from distillery.models import default_backbone

    return AutoTokenizer.from_pretrained(default_backbone())


def _rows():
    rows = generate(SyntheticConfig(rows_test=400, seed=2), "test").to_pylist()
    ads = [a.row_fields() for a in load_catalog().candidates()]
    odd = [{"query": "Café  naïve\tcrème | brûlée", "device": "mobile", "ad_title": "日本語 テスト!!", "ad_category": "x"},
           {"ad_title": "only an ad"}, {"query": "only a query", "hour": 3},
           {"query": "word " * 80, "ad_title": "long ad " * 40}]  # truncation inside the context and the ad
    rows = [{k: v for k, v in r.items() if k not in ("id", "ts", "click", "click_prob")} for r in rows]
    return rows + [{**rows[i], **ads[i % len(ads)]} for i in range(60)] + odd


@pytest.mark.parametrize("strip", [False, True], ids=["labels", "labels-stripped"])
@pytest.mark.parametrize("max_length", [64, 16, 128])
def test_piecewise_ids_equal_the_tokenizer_on_the_whole_text(tokenizer, max_length, strip):
    from distillery.training.vocab import strip_field_labels

    tokenizer = strip_field_labels(tokenizer) if strip else tokenizer
    assert exact_for(tokenizer)
    pieces = CandidateTokens(tokenizer, max_length)
    for row in _rows():
        assert pieces.ids(row) == tokenizer(to_text(row), truncation=True, max_length=max_length)["input_ids"], row


def test_extra_columns_fall_back_to_the_whole_text(tokenizer):
    pieces = CandidateTokens(tokenizer, 64)
    row = {"query": "shoes", "ad_title": "sale", "zz_extra": "rendered last"}
    assert pieces.ids(row) == tokenizer(to_text(row), truncation=True, max_length=64)["input_ids"]


def test_scorer_rows_match_texts_and_tokenise_each_ad_once(tmp_path, tokenizer):
    from distillery.compress.export import export_onnx

    export_onnx(str(save_tiny_bert(tmp_path / "bert", seed=0)), str(tmp_path / "onnx"), max_length=64)
    scorer = CrossCandidateScorer(str(tmp_path / "onnx"), "fp32", intra_op_threads=1)
    ads = [a.row_fields() for a in load_catalog().candidates()]
    assert scorer.warm_ads(ads) > 0
    before = scorer.pieces.tokenized
    rows = [{"query": "running shoes", "device": "mobile", "position": 1, **ad} for ad in ads]
    np.testing.assert_allclose(scorer.predict_rows(rows), scorer.predict_proba([to_text(r) for r in rows]), atol=1e-6)
    assert scorer.pieces.tokenized - before == 1  # the request, once


def test_mixed_texts_and_rows_score_as_their_texts(tmp_path):
    """One serving batch holds /predict texts and bid rows together: `predict` scores each as its text."""
    from distillery.compress.export import export_onnx
    from distillery.onnx_model.scorer import OnnxScorer
    from distillery.onnx_model.kinds import open_scorer

    export_onnx(str(save_tiny_bert(tmp_path / "bert", seed=0)), str(tmp_path / "onnx"), max_length=64)
    rows = _rows()[:40]
    mixed = [to_text(r) if i % 3 else r for i, r in enumerate(rows)]
    scorer = open_scorer(str(tmp_path / "onnx"), "fp32", intra_op_threads=1)
    assert isinstance(scorer, CrossCandidateScorer)  # a cross-encoder's card opens the piece-cache scorer
    expected = scorer.predict_proba([to_text(r) for r in rows])
    np.testing.assert_allclose(scorer.predict(mixed), expected, atol=1e-6)
    np.testing.assert_allclose(OnnxScorer(str(tmp_path / "onnx"), "fp32", intra_op_threads=1).predict(mixed), expected, atol=1e-6)
    with pytest.raises(TypeError, match=r"inputs\[1\]: expected a row text \(str\) or a row \(dict\), got int"):
        scorer.predict(["query: a", 7])


def test_length_sorted_sub_batches_keep_each_rows_score_and_order(tmp_path):
    """`sub_batch_rows` changes how a call is cut into ORT runs, never a row's probability or its place."""
    from distillery.compress.export import export_onnx
    from distillery.onnx_model.scorer import CPU_SUB_BATCH_ROWS, OnnxScorer

    export_onnx(str(save_tiny_bert(tmp_path / "bert", seed=0)), str(tmp_path / "onnx"), max_length=64)
    texts = [to_text(r) for r in _rows()[:37]] + ["q", "query: " + "long " * 60]  # lengths 3 to 64
    alone = OnnxScorer(str(tmp_path / "onnx"), "fp32", intra_op_threads=1, sub_batch_rows=1)
    expected = np.concatenate([alone.predict_proba([t]) for t in texts])  # each row padded to nothing
    for rows in (0, 1, 5, CPU_SUB_BATCH_ROWS, 64):
        scorer = OnnxScorer(str(tmp_path / "onnx"), "fp32", intra_op_threads=1, sub_batch_rows=rows)
        np.testing.assert_allclose(scorer.predict_proba(texts), expected, atol=1e-5, err_msg=f"sub_batch_rows={rows}")
    assert OnnxScorer(str(tmp_path / "onnx"), "fp32").sub_batch_rows == CPU_SUB_BATCH_ROWS  # the CPU default
    with pytest.raises(ValueError, match="sub_batch_rows=-1"):
        OnnxScorer(str(tmp_path / "onnx"), "fp32", sub_batch_rows=-1)
