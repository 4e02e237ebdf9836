"""Quantization presets over an exported ONNX folder, named like Optimum's.

    path = quantize_int8("runs/demo/onnx")                            # student.int8.onnx
    path = apply_preset("runs/demo/onnx", "fp16")                     # student.fp16.onnx
    path = apply_preset("runs/demo/onnx", "int8-static", calibration_texts=texts)
    path = apply_preset("runs/demo/onnx", "int8-static", calibration_texts=texts, tensorrt=True)

| preset        | file                     | card variant  | for |
|---------------|--------------------------|---------------|-----|
| `int8-dynamic`| `student.int8.onnx`      | `int8`        | CPU: int8 weights (per channel), activations quantized per batch at run time (VNNI) |
| `int8-static` | `student.int8-static.onnx` | `int8_static` | QDQ graph with activation ranges calibrated on log rows (TensorRT / GPU, or CPU without per-batch scaling) |
| `fp16`        | `student.fp16.onnx`      | `fp16`        | GPU; float32 inputs/outputs kept so callers do not change |

`tensorrt=True` makes `int8-static` follow TensorRT's explicit-quantization rules: int8 (signed)
activations and weights, symmetric (every zero point 0), biases left float, since TensorRT only
runs symmetric QDQ; the default keeps uint8 asymmetric activations, which are more accurate on ORT's CPU kernels.
Each call adds its variant (file and size) to `model_card.json`. The quality gate lives in
`validate.py`; the preset order from most to least aggressive is `LESS_AGGRESSIVE`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

import numpy as np

from distillery.compress.export import FP32_FILE
from distillery.onnx_model.card import ModelCard

__all__ = ["PRESETS", "PRESET_VARIANT", "LESS_AGGRESSIVE", "apply_preset", "quantize_int8", "quantize_file",
           "fuse_transformer", "TextCalibrationReader", "quiet_ort_tools"]

log = logging.getLogger(__name__)

PRESETS = ("int8-dynamic", "int8-static", "fp16")
PRESET_VARIANT = {"int8-dynamic": "int8", "int8-static": "int8_static", "fp16": "fp16"}
PRESET_FILE = {"int8-dynamic": "student.int8.onnx", "int8-static": "student.int8-static.onnx", "fp16": "student.fp16.onnx"}
# What to try when a preset fails the quality gate (a less aggressive one, ending at fp32).
LESS_AGGRESSIVE = {"int8-static": "int8-dynamic", "int8-dynamic": "fp16 (GPU) or fp32", "fp16": "fp32"}

# MatMul/Gemm carry almost all the compute; quantizing Gather (the embedding table) shrinks the
# file but costs accuracy for no speed, and Attention/other ops stay float.
_INT8_OPS = ["MatMul", "Gemm"]


class TextCalibrationReader:
    """ORT `CalibrationDataReader` over texts (rendered log rows): tokenises them in small batches
    and yields `{input_name: int64 array (batch, seq)}` feeds, padded to each batch's longest."""

    def __init__(self, out_dir: str, texts: list[str], input_names: list[str], max_length: int, batch_size: int = 16):
        from transformers import AutoTokenizer

        if not texts:
            raise ValueError("calibration_texts: empty; int8-static needs rows from the logs")
        self._tok = AutoTokenizer.from_pretrained(out_dir)
        self._texts, self._names, self._max_length, self._bs = list(texts), input_names, max_length, batch_size
        self._it: Iterator[dict[str, np.ndarray]] | None = None

    def _feeds(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(0, len(self._texts), self._bs):
            enc = self._tok(self._texts[i:i + self._bs], padding=True, truncation=True,
                            max_length=self._max_length, return_tensors="np")
            yield {n: (enc[n] if n in enc else np.zeros_like(enc["input_ids"])).astype(np.int64) for n in self._names}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = self._feeds()
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None


@contextlib.contextmanager
def quiet_ort_tools():
    """ORT's quantizer and fusion tools log every tensor at INFO on the root logger; mute INFO
    while they run so a job's own log stays readable. Their advice to pre-process the model first
    (one root WARNING per static quantization, "Please consider ..."; not done here, and not measured)
    is dropped too; every other warning and error still shows."""
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)
    advice = _DropAdvice()
    logging.root.addFilter(advice)  # ORT logs it through logging.warning: the root logger's own filters apply
    try:
        yield
    finally:
        logging.root.removeFilter(advice)
        logging.disable(previous)


class _DropAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Please consider")


def _as_calibration_reader(reader: TextCalibrationReader):
    # Subclass ORT's ABC lazily so importing this module does not import onnxruntime.quantization.
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def get_next(self):
            return reader.get_next()

        def rewind(self):
            reader.rewind()

    return Reader()


def apply_preset(
    out_dir: str,
    preset: str = "int8-dynamic",
    *,
    calibration_texts: list[str] | None = None,
    per_channel: bool = True,
    tensorrt: bool = False,
    reduce_range: bool | None = None,
) -> str:
    """Write the preset's variant of `out_dir/student.fp32.onnx` beside it; return its path.

    `tensorrt`: int8-static only; symmetric int8 activations and weights for TensorRT's EP.

    `per_channel`: one int8 scale per output channel of each weight (measured: tracks FP32 much
    more closely than one scale per tensor, at no speed cost on this CPU).

    `reduce_range`: 7-bit weights for int8-dynamic. Without VNNI, ORT's u8s8 kernels add pairs of
    u8×s8 products in int16 (AVX2 `vpmaddubsw`), which saturates with full-range weights; 7-bit
    weights cannot overflow there. None decides from this CPU (`hardware.has_vnni`): on where VNNI
    is missing, off where it is present (full range is more accurate and VNNI does not saturate).
    """
    if reduce_range is None:
        from distillery.hardware import has_vnni

        reduce_range = not has_vnni()
    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r}: expected one of {', '.join(PRESETS)}")
    card = ModelCard.read(out_dir)
    src = os.path.join(out_dir, card.variants.get("fp32", FP32_FILE))
    if not os.path.exists(src):
        raise FileNotFoundError(f"{src}: FP32 model missing (run export_onnx first)")
    dst = os.path.join(out_dir, PRESET_FILE[preset])

    if tensorrt and preset != "int8-static":
        raise ValueError(f"tensorrt=True: only the int8-static preset has a TensorRT form, not {preset!r}")
    if preset == "int8-static" and not calibration_texts:
        raise ValueError("int8-static: calibration_texts is empty; pass rows from the logs (validation.calibration_rows)")
    with quiet_ort_tools():
        if preset == "int8-dynamic":
            quantize_file(src, dst, per_channel, reduce_range)
        elif preset == "int8-static":
            from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

            reader = TextCalibrationReader(out_dir, calibration_texts, card.inputs, card.max_length)
            extra = {"DefaultTensorType": 1}
            if tensorrt:
                # TensorRT runs symmetric int8 only and wants biases float (it fuses them itself).
                extra.update(ActivationSymmetric=True, WeightSymmetric=True, QuantizeBias=False)
            quantize_static(src, dst, _as_calibration_reader(reader), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=_INT8_OPS, per_channel=per_channel,
                            activation_type=QuantType.QInt8 if tensorrt else QuantType.QUInt8,
                            weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, extra_options=extra)
        else:  # fp16
            import onnx
            from onnxruntime.transformers.float16 import convert_float_to_float16

            onnx.save(convert_float_to_float16(onnx.load(src), keep_io_types=True), dst)

    variant = PRESET_VARIANT[preset]
    card.variants[variant] = os.path.basename(dst)
    card.size_mb[variant] = round(os.path.getsize(dst) / 1e6, 3)
    from distillery.hardware import cpu_info

    card.presets[variant] = {"preset": preset, "per_channel": per_channel if preset != "fp16" else None,
                                               "tensorrt": tensorrt,
                                               "reduce_range": reduce_range if preset == "int8-dynamic" else None,
                                               "quantized_on": {k: cpu_info()[k] for k in ("model", "isa", "vnni")}}
    card.write(out_dir)
    log.info("%s -> %s (%.1f MB)", preset, dst, card.size_mb[variant])
    return dst


def quantize_int8(out_dir: str, preset: str = "int8-dynamic", **kwargs) -> str:
    """The INT8 presets of `apply_preset` (`int8-dynamic` → `student.int8.onnx`, variant `int8`)."""
    if not preset.startswith("int8"):
        raise ValueError(f"preset {preset!r}: quantize_int8 takes int8-dynamic or int8-static")
    return apply_preset(out_dir, preset, **kwargs)


# ORT's offline transformer fusion (Attention, SkipLayerNorm, BiasGelu …) understands these graphs.
_FUSION_MODEL_TYPE = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "electra": "bert", "distilbert": "bert"}
FUSED_SUFFIX = ".fused"


def fuse_transformer(out_dir: str, variant: str = "fp32") -> str | None:
    """Write ORT's transformer-fused copy of a variant (`student.fp32.fused.onnx`); None when the
    model type has no fusion support. Callers keep it only where it measures faster."""
    card = ModelCard.read(out_dir)
    kind = _FUSION_MODEL_TYPE.get(card.model_type or "")
    if kind is None:
        return None
    from onnxruntime.transformers.optimizer import optimize_model

    src = os.path.join(out_dir, card.variants[variant])
    dst = src[: -len(".onnx")] + FUSED_SUFFIX + ".onnx"
    # opt_level=0: fusions only; ORT's own session-level optimisations still run at load time.
    with quiet_ort_tools():
        optimize_model(src, model_type=kind, num_heads=0, hidden_size=0, opt_level=0).save_model_to_file(dst)
    return dst


def quantize_file(src: str, dst: str, per_channel: bool = True, reduce_range: bool = False) -> str:
    """`int8-dynamic` on an arbitrary ONNX file (used to quantize fused graphs); see `apply_preset`
    for `reduce_range`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # DefaultTensorType: fused graphs carry ops (Attention, SkipLayerNorm) whose output types the
    # quantizer cannot infer; it needs to be told they are float.
    with quiet_ort_tools():
        quantize_dynamic(src, dst, op_types_to_quantize=_INT8_OPS, per_channel=per_channel, reduce_range=reduce_range,
                         weight_type=QuantType.QInt8, extra_options={"DefaultTensorType": 1})
    return dst
