"""Open Inference Protocol payloads, /predict bodies and the HTTP edge guards, without Ray."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from distillery.serving.limits import BadRequest, LimitsSection, check_bearer, json_depth, parse_json_body
from distillery.serving.oip import check_model, infer_response, model_metadata, parse_infer
from distillery.serving.predict import predict_texts

LIMITS = LimitsSection(max_body_bytes=10_000, max_json_depth=8, max_rows=4, max_text_chars=100)


def _bytes_tensor(texts: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in texts)


def _infer(body: dict) -> bytes:
    return json.dumps(body).encode()


def _status(fn, *args) -> tuple[int, str]:
    with pytest.raises(BadRequest) as err:
        fn(*args)
    return err.value.status, err.value.message


def test_json_infer_keeps_shape_and_id():
    body = {"id": "r", "inputs": [{"name": "text", "datatype": "BYTES", "shape": [2, 1], "data": [["a"], ["b"]]}]}
    call = parse_infer(_infer(body), {}, LIMITS)
    assert call.texts == ["a", "b"] and call.shape == [2, 1] and call.request_id == "r" and not call.binary_output
    payload, headers = infer_response(call, np.array([0.25, 0.5]), "ctr", "v1")
    out = json.loads(payload)
    assert out["id"] == "r" and out["model_version"] == "v1"
    assert out["outputs"] == [{"name": "click_prob", "datatype": "FP32", "shape": [2, 1], "data": [0.25, 0.5]}]


def test_binary_tensor_extension_round_trip():
    texts = ["héllo", "ad: shoes"]
    raw = _bytes_tensor(texts)
    header = _infer({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2],
                                 "parameters": {"binary_data_size": len(raw)}}],
                     "parameters": {"binary_data_output": True}})
    call = parse_infer(header + raw, {"inference-header-content-length": str(len(header))}, LIMITS)
    assert call.texts == texts and call.binary_output
    payload, headers = infer_response(call, np.array([0.1, 0.9]), "ctr", "v")
    n = int(headers["inference-header-content-length"])
    meta = json.loads(payload[:n])
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == 8
    np.testing.assert_allclose(np.frombuffer(payload[n:], dtype="<f4"), [0.1, 0.9], rtol=1e-6)


@pytest.mark.parametrize("body, headers, status, message", [
    (b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [5], "data": ["a","b","c","d","e"]}]}', {}, 413, "limit of 4"),
    (b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1], "data": ["a"]}]}', {}, 400, "shape[0]"),
    (b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [3]}]}', {}, 400, "data[0]: expected a string"),
    (b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1]}]}', {}, 400, "data: missing"),
    (b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}], "outputs": [{"name": "p"}]}',
     {}, 400, "outputs[0].name"),
    (b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}], "x": 1}', {}, 400, "x: unknown"),
    (b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}',
     {"inference-header-content-length": "9999"}, 400, "outside the body"),
])
def test_bad_infer_requests(body, headers, status, message):
    got_status, got_message = _status(parse_infer, body, headers, LIMITS)
    assert got_status == status and message in got_message


def test_truncated_binary_tensor_is_a_400():
    header = _infer({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 6}}]})
    raw = struct.pack("<I", 10) + b"ab"
    status, message = _status(parse_infer, header + raw, {"inference-header-content-length": str(len(header))}, LIMITS)
    assert status == 400 and "truncated" in message


def test_model_routing():
    check_model("ctr", None, "ctr", "v1")
    check_model("ctr", "v1", "ctr", "v1")
    assert _status(check_model, "other", None, "ctr", "v1")[0] == 404
    assert _status(check_model, "ctr", "v0", "ctr", "v1")[0] == 404
    assert model_metadata("ctr", "v1")["versions"] == ["v1"]


def test_json_guards():
    assert json_depth({"a": [1, {"b": []}]}, 10) == 4
    assert json_depth(5, 10) == 0
    assert parse_json_body(b'{"a": 1}', LIMITS) == {"a": 1}
    assert "nested deeper" in _status(parse_json_body, b"[" * 9 + b"]" * 9, LIMITS)[1]
    assert "nested deeper" in _status(parse_json_body, b"[" * 5000 + b"]" * 5000, LIMITS)[1]
    assert "UTF-8" in _status(parse_json_body, b'{"a": "\xc3"}', LIMITS)[1]
    assert _status(parse_json_body, b"x" * 10_001, LIMITS)[0] == 413


def test_bearer():
    check_bearer({}, None)
    check_bearer({"authorization": "Bearer s3cret"}, "s3cret")
    assert _status(check_bearer, {}, "s3cret")[0] == 401
    assert _status(check_bearer, {"authorization": "Basic s3cret"}, "s3cret")[0] == 401
    assert _status(check_bearer, {"authorization": "Bearer nope"}, "s3cret")[0] == 401


def test_predict_bodies():
    assert predict_texts({"texts": ["a b"]}, LIMITS) == ["a b"]
    (text,) = predict_texts({"rows": [{"query": "shoes", "hour": 3, "ad_title": "Run"}]}, LIMITS)
    assert text == "query: shoes | hour: 3 | ad: Run"
    for body, message in [([], "expected a JSON object"), ({"texts": "a"}, "expected a list"),
                          ({"rows": [{}]}, "rows[0]: row has no text fields"),
                          ({"rows": [{"ad_title": "x" * 101}]}, "rows[0].ad_title"),
                          ({"texts": ["a"], "rows": []}, "exactly one")]:
        assert message in _status(predict_texts, body, LIMITS)[1]


# -- issue 14: inputs that made the parsers (or their error messages) raise -----------------------


def test_a_shape_too_large_to_print_is_413_naming_the_field():
    body = b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [' + b"9" * 4000 + b", " + b"9" * 4000 \
        + b'], "data": ["a"]}]}'
    status, message = _status(parse_infer, body, {}, LimitsSection(max_body_bytes=20_000))
    assert status == 413 and "inputs[0].shape" in message and "digits" in message


def test_binary_tensor_tail_counts_against_the_body_limit():
    header = _infer({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                 "parameters": {"binary_data_size": 10_004}}]})
    body = header + _bytes_tensor(["x" * 10_000])
    status, message = _status(parse_infer, body, {"inference-header-content-length": str(len(header))}, LIMITS)
    assert status == 413 and "limit of 10000 bytes" in message


def test_integers_past_the_decimal_limit_are_a_400():
    status, message = _status(parse_json_body, b'{"tmax": ' + b"1" * 5000 + b"}", LIMITS)
    assert status == 400 and "malformed JSON" in message


@pytest.mark.parametrize("fn, body, where", [
    (predict_texts, {"texts": ["ok", "bad \ud800 text"]}, "texts[1]"),
    (predict_texts, {"rows": [{"query": "q \udfff", "ad_title": "t"}]}, "rows[0].query"),
])
def test_lone_surrogates_are_refused_per_request(fn, body, where):
    status, message = _status(fn, body, LIMITS)
    assert status == 400 and where in message and "surrogate" in message


def test_lone_surrogate_in_an_infer_tensor_is_refused():
    body = b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a \\ud800"]}]}'
    status, message = _status(parse_infer, body, {}, LIMITS)
    assert status == 400 and "inputs[0].data[0]" in message and "surrogate" in message


def test_bearer_token_is_compared_without_surrounding_whitespace(monkeypatch):
    from distillery.serving.limits import load_token

    monkeypatch.setenv("T_ENV", "s3cret\n")  # a secret file mounted as an env var
    token = load_token("T_ENV")
    assert token == "s3cret"
    check_bearer({"authorization": "Bearer s3cret"}, token)
    check_bearer({"authorization": "Bearer s3cret\t"}, "s3cret\n")
    with pytest.raises(BadRequest):
        check_bearer({"authorization": "Bearer s3cre"}, token)
    monkeypatch.setenv("T_ENV", "  \n")
    assert load_token("T_ENV") is None and load_token(None) is None


def test_body_stream_is_refused_as_soon_as_it_passes_the_limit():
    import asyncio

    from distillery.serving.limits import read_body

    pulled = []

    async def chunks():
        for i in range(100):  # 100 x 1 KB, chunked: no declared length
            pulled.append(i)
            yield b"x" * 1024

    with pytest.raises(BadRequest) as err:
        asyncio.run(read_body(chunks(), 10_000))
    assert err.value.status == 413 and len(pulled) == 10  # stopped at the limit, not read whole

    async def small():
        yield b"ab"
        yield b"c"

    assert asyncio.run(read_body(small(), 10_000)) == b"abc"
