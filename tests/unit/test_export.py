"""ONNX export, quantization presets and the ORT scorer on tiny random BERTs (no Ray, no downloads)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from tinymodels import save_tiny_bert
from distillery.compress.export import FP32_FILE, export_onnx, load_for_export
from distillery.compress.quantize import apply_preset, quantize_int8
from distillery.onnx_model.card import CARD_FILE
from distillery.onnx_model.scorer import OnnxScorer, sigmoid

TEXTS = [
    "query: running shoes | site: sports | device: mobile | ad: trail runner",
    "query: a | ad: b",
    "query: cheap flights to lisbon in may with a long description that keeps going | site: travel",
]


@pytest.fixture(scope="module")
def exported(tiny_bert, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    card = export_onnx(str(tiny_bert), str(out), max_length=32, lineage={"teacher_id": "t"}, metrics={"auc": 0.7})
    quantize_int8(str(out))
    return out, card


def _torch_logits(model_dir, texts, max_length=32):
    model, tok = load_for_export(str(model_dir))
    enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits.double().numpy()


def test_folder_and_card_follow_the_contract(exported):
    out, card = exported
    assert (out / FP32_FILE).exists() and (out / "student.int8.onnx").exists()
    assert (out / "tokenizer.json").exists() or (out / "vocab.txt").exists()
    saved = json.loads((out / CARD_FILE).read_text())
    for key in ("name", "version", "max_length", "inputs", "output", "variants", "lineage", "metrics"):
        assert key in saved, key
    assert saved["name"] == "ctr" and saved["max_length"] == 32 and saved["output"] == "logits"
    assert saved["variants"] == {"fp32": FP32_FILE, "int8": "student.int8.onnx"}
    assert saved["lineage"]["teacher_id"] == "t" and saved["metrics"] == {"auc": 0.7}
    assert card["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]


def test_graph_has_dynamic_batch_and_sequence_axes(exported):
    out, _ = exported
    graph = onnx.load(str(out / FP32_FILE)).graph
    for inp in graph.input:
        dims = inp.type.tensor_type.shape.dim
        assert inp.type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert [d.dim_param for d in dims] == ["batch", "sequence"]
    (output,) = graph.output
    assert output.name == "logits" and output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = output.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and dims[1].dim_value == 1


def test_fp32_matches_pytorch_at_several_batch_sizes(exported, tiny_bert):
    out, _ = exported
    scorer = OnnxScorer(str(out), variant="fp32", intra_op_threads=1)
    ref = _torch_logits(tiny_bert, TEXTS)[:, 0]
    np.testing.assert_allclose(scorer.logits(TEXTS), ref, atol=1e-4)
    # batch 1 and a different sequence length than the trace used
    np.testing.assert_allclose(scorer.logits(TEXTS[1:2]), ref[1:2], atol=1e-4)
    probs = scorer.predict_proba(TEXTS)
    assert probs.shape == (3,) and probs.dtype == np.float64 and ((probs > 0) & (probs < 1)).all()


def test_int8_graph_contains_integer_ops_and_is_smaller(exported):
    out, _ = exported
    ops = {n.op_type for n in onnx.load(str(out / "student.int8.onnx")).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear", "QLinearMatMul"}, ops
    assert (out / "student.int8.onnx").stat().st_size < (out / FP32_FILE).stat().st_size


def test_int8_tracks_fp32(exported):
    out, _ = exported
    fp32 = OnnxScorer(str(out), variant="fp32", intra_op_threads=1).predict_proba(TEXTS)
    int8 = OnnxScorer(str(out), variant="int8", intra_op_threads=1).predict_proba(TEXTS)
    assert np.abs(fp32 - int8).max() < 0.02


def test_two_class_model_exports_as_one_logit(tmp_path):
    src = save_tiny_bert(tmp_path / "two", num_labels=2, seed=1)
    export_onnx(str(src), str(tmp_path / "onnx"), max_length=32)
    scorer = OnnxScorer(str(tmp_path / "onnx"), variant="fp32", intra_op_threads=1)
    logits = _torch_logits(src, TEXTS)
    softmax1 = np.exp(logits[:, 1]) / np.exp(logits).sum(axis=1)
    np.testing.assert_allclose(scorer.predict_proba(TEXTS), softmax1, atol=1e-5)


def test_fp16_and_static_presets_write_variants(exported):
    out, _ = exported
    apply_preset(str(out), "fp16")
    apply_preset(str(out), "int8-static", calibration_texts=TEXTS * 4)
    card = json.loads((out / CARD_FILE).read_text())
    assert {"fp16", "int8_static"} <= set(card["variants"])
    ops = {n.op_type for n in onnx.load(str(out / card["variants"]["int8_static"])).graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    fp32 = OnnxScorer(str(out), variant="fp32", intra_op_threads=1).predict_proba(TEXTS)
    for v in ("fp16", "int8_static"):
        assert np.abs(OnnxScorer(str(out), variant=v, intra_op_threads=1).predict_proba(TEXTS) - fp32).max() < 0.05


def test_static_preset_without_rows_names_the_problem(exported):
    with pytest.raises(ValueError, match="calibration_texts"):
        apply_preset(str(exported[0]), "int8-static")


def test_scorer_rejects_bad_arguments(exported):
    out, _ = exported
    with pytest.raises(ValueError, match="variant 'int4'"):
        OnnxScorer(str(out), variant="int4")
    with pytest.raises(ValueError, match="provider"):
        OnnxScorer(str(out), provider="tpu")
    scorer = OnnxScorer(str(out), variant="int8", intra_op_threads=1)
    with pytest.raises(TypeError, match="texts"):
        scorer.predict_proba("one string")
    assert scorer.predict_proba([]).shape == (0,)
    rows = [{"id": "1", "query": "running shoes", "ad_title": "trail runner"}]
    assert scorer.predict_rows(rows).shape == (1,)
    assert scorer.providers == ["CPUExecutionProvider"] and scorer.name == "ctr" and scorer.version


def test_cuda_request_without_cuda_refuses_to_start(exported):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the refusal path needs a machine without a usable GPU")
    with pytest.raises(RuntimeError, match="CUDAExecutionProvider|provider='cuda'"):
        OnnxScorer(str(exported[0]), variant="fp32", provider="cuda")


def test_sigmoid_is_stable_at_extremes():
    x = np.array([-1000.0, -1.0, 0.0, 1.0, 1000.0])
    y = sigmoid(x)
    assert y[0] == 0.0 and y[-1] == 1.0 and y[2] == 0.5
    np.testing.assert_allclose(y[1] + y[3], 1.0)


def test_quiet_ort_tools_drops_only_the_quantizers_advice(caplog):
    """ORT's quantizer logs per-tensor INFO and a 'Please consider ...' WARNING on the root logger:
    both are muted while it runs; any other warning still reaches the log, and nothing stays muted after."""
    import logging

    from distillery.compress.quantize import quiet_ort_tools

    with caplog.at_level(logging.INFO):
        with quiet_ort_tools():
            logging.info("quantizing tensor x")
            logging.warning("Please consider to run pre-processing before quantization.")
            logging.warning("calibration data is empty for tensor y")
        logging.warning("Please consider this after the quantizer finished")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["calibration data is empty for tensor y", "Please consider this after the quantizer finished"]
