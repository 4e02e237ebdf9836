"""Open Inference Protocol (KServe V2) REST payloads for the click model. Pure and Ray-free.

The model takes one BYTES input `text` (one ad-log text per element, any shape) and gives one FP32
output `click_prob` of the same shape. Both JSON tensor data and the binary tensor extension
(`Inference-Header-Content-Length`, as `tritonclient.http` sends by default) are read and written.
Errors are the spec's `{"error": "..."}` with a 4xx status (raised here as `BadRequest`).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from distillery import __version__
from distillery.serving.limits import BadRequest, LimitsSection, check_text, parse_json_body, show

__all__ = ["INPUT", "OUTPUT", "InferCall", "server_metadata", "model_metadata", "check_model", "parse_infer", "infer_response"]

INPUT, OUTPUT = "text", "click_prob"
HEADER_LENGTH = "inference-header-content-length"
_REQUEST_KEYS = {"id", "parameters", "inputs", "outputs"}


@dataclass(frozen=True)
class InferCall:
    """A parsed infer request: texts in row-major order, the input's shape, how to answer."""

    texts: list[str]
    shape: list[int]
    request_id: str | None
    binary_output: bool


def server_metadata() -> dict[str, Any]:
    return {"name": "distillery", "version": __version__, "extensions": ["binary_tensor_data"]}


def model_metadata(name: str, version: str) -> dict[str, Any]:
    return {
        "name": name,
        "versions": [version],
        "platform": "onnx_onnxv1",
        "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1]}],
    }


def check_model(name: str, version: str | None, served_name: str, served_version: str) -> None:
    """404 unless the path names the served model (and, when given, its current version)."""
    if name != served_name:
        raise BadRequest(404, f"model {name!r} is not served here; this server serves {served_name!r}")
    if version is not None and version != served_version:
        raise BadRequest(404, f"model {name!r} has no version {version!r}; the served version is {served_version!r}")


def _shape(value: Any, limits: LimitsSection) -> list[int]:
    if not isinstance(value, list) or not value:
        raise BadRequest(400, "inputs[0].shape: expected a non-empty list of integers")
    if len(value) > 8:
        raise BadRequest(400, f"inputs[0].shape: {len(value)} dimensions; at most 8 are accepted")
    for i, dim in enumerate(value):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
            raise BadRequest(400, f"inputs[0].shape[{i}]: expected a non-negative integer, got {show(dim)}")
    if 0 in value:
        raise BadRequest(400, f"inputs[0].shape {value}: empty tensor; send at least one text")
    # every dimension is >= 1 here, so one dimension past the limit is enough to refuse; checking
    # dimensions first keeps the product (and its decimal text) small
    if any(dim > limits.max_rows for dim in value) or math.prod(value) > limits.max_rows:
        dims = "[" + ", ".join(show(d, 12) for d in value) + "]"
        raise BadRequest(413, f"inputs[0].shape {dims}: the texts exceed the limit of {limits.max_rows} per request")
    return value


def _flatten(data: Any) -> list[Any]:
    out, stack = [], [data]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(reversed(node))
        else:
            out.append(node)
    return out


def _decode_bytes_tensor(raw: bytes) -> list[str]:
    """Binary BYTES tensor: each element is a little-endian uint32 length then that many bytes."""
    out, pos = [], 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise BadRequest(400, "inputs[0]: binary data truncated inside an element length")
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + n > len(raw):
            raise BadRequest(400, "inputs[0]: binary data truncated inside an element")
        try:
            out.append(raw[pos:pos + n].decode("utf-8"))
        except UnicodeDecodeError:
            raise BadRequest(400, f"inputs[0].data[{len(out)}]: not valid UTF-8") from None
        pos += n
    return out


def parse_infer(body: bytes, headers: Mapping[str, str], limits: LimitsSection) -> InferCall:
    """Parse an infer request body (JSON, or JSON header + binary tensors); raises `BadRequest`."""
    if len(body) > limits.max_body_bytes:  # JSON header and binary tensors together
        raise BadRequest(413, f"request body of {len(body)} bytes exceeds the limit of {limits.max_body_bytes} bytes")
    binary = b""
    if (declared := headers.get(HEADER_LENGTH)) is not None:
        try:
            n = int(declared)
        except ValueError:
            raise BadRequest(400, f"{HEADER_LENGTH}: {declared!r} is not an integer") from None
        if not 0 < n <= len(body):
            raise BadRequest(400, f"{HEADER_LENGTH}: {show(n)} is outside the body of {len(body)} bytes")
        body, binary = body[:n], body[n:]
    req = parse_json_body(body, limits)
    if not isinstance(req, dict):
        raise BadRequest(400, f"body: expected an inference request object, got {type(req).__name__}")
    if unknown := sorted(set(req) - _REQUEST_KEYS):
        raise BadRequest(400, f"{unknown[0]}: unknown field of an inference request")
    request_id = req.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest(400, f"id: expected a string, got {type(request_id).__name__}")
    params = req.get("parameters") or {}
    if not isinstance(params, dict):
        raise BadRequest(400, "parameters: expected an object")
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest(400, f"inputs: expected a non-empty list with one BYTES input {INPUT!r}")
    if len(inputs) != 1:
        raise BadRequest(400, f"inputs: {len(inputs)} given; the model takes exactly one, {INPUT!r}")
    tensor = inputs[0]
    if not isinstance(tensor, dict):
        raise BadRequest(400, "inputs[0]: expected an object")
    if tensor.get("name") != INPUT:
        raise BadRequest(400, f"inputs[0].name: {show(tensor.get('name'))} is not an input of this model (expected {INPUT!r})")
    if tensor.get("datatype") != "BYTES":
        raise BadRequest(400, f"inputs[0].datatype: {show(tensor.get('datatype'))}; input {INPUT!r} is BYTES")
    shape = _shape(tensor.get("shape"), limits)
    tparams = tensor.get("parameters") or {}
    if not isinstance(tparams, dict):
        raise BadRequest(400, "inputs[0].parameters: expected an object")
    if "binary_data_size" in tparams:
        size = tparams["binary_data_size"]
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= len(binary):
            raise BadRequest(400, f"inputs[0].parameters.binary_data_size: {show(size)} does not fit the {len(binary)} binary bytes")
        texts: list[Any] = _decode_bytes_tensor(binary[:size])
    elif "data" in tensor:
        texts = _flatten(tensor["data"])
    else:
        raise BadRequest(400, "inputs[0].data: missing (and no binary_data_size)")
    if len(texts) != math.prod(shape):
        raise BadRequest(400, f"inputs[0]: shape {shape} needs {math.prod(shape)} elements, data has {len(texts)}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise BadRequest(400, f"inputs[0].data[{i}]: expected a string, got {type(text).__name__}")
        if len(text) > limits.max_text_chars:
            raise BadRequest(413, f"inputs[0].data[{i}]: {len(text)} characters exceed the limit of {limits.max_text_chars}")
        if text.strip():  # an empty BYTES element is scored as it is, as before
            check_text(f"inputs[0].data[{i}]", text, limits)
    binary_output = bool(params.get("binary_data_output", False))
    outputs = req.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list):
            raise BadRequest(400, "outputs: expected a list")
        for i, out in enumerate(outputs):
            if not isinstance(out, dict) or out.get("name") != OUTPUT:
                name = out.get("name") if isinstance(out, dict) else out
                raise BadRequest(400, f"outputs[{i}].name: {show(name)} is not an output of this model (expected {OUTPUT!r})")
            oparams = out.get("parameters") or {}
            binary_output = bool(oparams.get("binary_data", False)) if isinstance(oparams, dict) else False
    return InferCall(texts=texts, shape=shape, request_id=request_id, binary_output=binary_output)


def infer_response(call: InferCall, probs: np.ndarray, model_name: str, model_version: str) -> tuple[bytes, dict[str, str]]:
    """(body, extra headers) of the answer: FP32 `click_prob` in the input's shape. A NaN or infinite
    value raises ValueError rather than writing `NaN`, which is not JSON (the replica checks first)."""
    values = np.asarray(probs, dtype=np.float32).reshape(-1)
    output: dict[str, Any] = {"name": OUTPUT, "datatype": "FP32", "shape": list(call.shape)}
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": [output]}
    if call.request_id is not None:
        response["id"] = call.request_id
    if not call.binary_output:
        output["data"] = [float(v) for v in values]
        return json.dumps(response, allow_nan=False).encode(), {"content-type": "application/json"}
    raw = values.astype("<f4").tobytes()
    output["parameters"] = {"binary_data_size": len(raw)}
    header = json.dumps(response, allow_nan=False).encode()
    return header + raw, {"content-type": "application/octet-stream", "inference-header-content-length": str(len(header))}
