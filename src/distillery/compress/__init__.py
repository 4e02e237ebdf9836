"""Compression: prune a student, export it to ONNX, quantize, validate, and size it to a latency budget.

    from distillery.compress import export_onnx, quantize_int8
    card = export_onnx("runs/demo/student", "runs/demo/onnx")
    quantize_int8("runs/demo/onnx")                       # student.int8.onnx

Modules: `prune` (layers, FFN units, heads), `export` (ONNX + tokenizer + model card), `quantize`
(int8-dynamic / int8-static / fp16 presets, optional ORT fusion), `validate` (parity, AUC gate,
latency), `size` (latency budget → student size), `job` (the compress stage, `CompressConfig`).
"""

from distillery.compress.export import export_onnx
from distillery.compress.quantize import apply_preset, quantize_int8

__all__ = ["export_onnx", "quantize_int8", "apply_preset"]
