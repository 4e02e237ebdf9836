"""Property-based fuzzing of every parser at the edge (hypothesis, no Ray): whatever the input, each
one either accepts it or refuses it with its own error type naming the problem (a 4xx `BadRequest`,
a `BidRequestError`, a `ConfigError`, a reject row with a reason). Any other exception would be a
500 from the server or a crashed job, and fails here. Malformed log rows never cost a good row.
"""

from __future__ import annotations

import json
import string

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distillery.config import ConfigError, load_config
from distillery.serving.bidder import BidRequestError, plan_bids
from distillery.serving.catalog import load_catalog
from distillery.serving.limits import BadRequest, LimitsSection, check_text, parse_json_body
from distillery.serving.oip import parse_infer
from distillery.serving.predict import predict_texts

LIMITS = LimitsSection(max_body_bytes=20_000, max_json_depth=8, max_rows=16, max_text_chars=64)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# JSON values, with the keys the parsers look for mixed into random ones so the fuzzer reaches past
# the first check of each parser.
KEYS = st.sampled_from(["rows", "texts", "id", "inputs", "outputs", "parameters", "name", "datatype", "shape",
                        "data", "imp", "banner", "w", "h", "site", "app", "device", "tmax", "cur", "bidfloor",
                        "binary_data_size", "binary_data_output", "query", "ad_title", "hour", "native",
                        "request", "pmp", "deals", "bcat", "badv", "format"]) | st.text(max_size=8)
# Integers far past 2**63 (a 400-digit bidfloor or tmax has no float), texts with lone surrogates
# (a JSON "\ud800" escape decodes to one; no tokenizer takes it), and the values that broke before.
SCALARS = (st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.integers(-10**400, 10**400)
           | st.floats(allow_nan=False) | st.text(max_size=20) | st.text(st.characters(min_codepoint=0xD7F0, max_codepoint=0xE010, categories=['Cs', 'Lo', 'Co']), max_size=8)
           | st.sampled_from(["text", "BYTES", "FP32", "ctr", "USD", "300x250", "", "a\ud800b", "\udfff",
                              "0001-01-01T00:00:00", 1e20, -5, 10**400, "[" * 2000]))
JSON = st.recursive(SCALARS, lambda kids: st.lists(kids, max_size=5) | st.dictionaries(KEYS, kids, max_size=6),
                    max_leaves=30)


def _status_ok(err: BadRequest) -> None:
    assert 400 <= err.status < 500 and err.message


@FUZZ
@given(st.binary(max_size=2000))
def test_any_bytes_parse_or_get_a_4xx(body):
    try:
        parse_json_body(body, LIMITS)
    except BadRequest as err:
        _status_ok(err)


@FUZZ
@given(JSON | st.fixed_dictionaries({"texts": st.lists(SCALARS, max_size=3)})
       | st.fixed_dictionaries({"rows": st.lists(st.dictionaries(KEYS, SCALARS, max_size=4), max_size=3)}))
def test_predict_bodies_are_texts_or_a_4xx(body):
    try:
        texts = predict_texts(body, LIMITS)
    except BadRequest as err:
        _status_ok(err)
        return
    assert texts and all(isinstance(t, str) and t for t in texts) and len(texts) <= LIMITS.max_rows
    for text in texts:  # what reaches the tokenizer is real Unicode: encodable as UTF-8
        text.encode("utf-8")


OIP_TENSOR = st.fixed_dictionaries(
    {"name": st.sampled_from(["text", "x"]), "datatype": st.sampled_from(["BYTES", "FP32"]),
     "shape": st.lists(st.integers(-2, 5), max_size=3) | JSON},
    optional={"data": JSON | st.lists(st.text(max_size=10), max_size=6), "parameters": JSON})
OIP_BODY = st.fixed_dictionaries({"inputs": st.lists(OIP_TENSOR, max_size=2) | JSON},
                                 optional={"id": JSON, "outputs": JSON, "parameters": JSON})


@FUZZ
@given(OIP_BODY | JSON, st.binary(max_size=64), st.one_of(st.none(), st.integers(-5, 400).map(str), st.text(max_size=4)))
def test_oip_infer_bodies_parse_or_get_a_4xx(request, tail, header_length):
    body = json.dumps(request).encode() + tail
    headers = {} if header_length is None else {"inference-header-content-length": header_length}
    try:
        call = parse_infer(body, headers, LIMITS)
    except BadRequest as err:
        _status_ok(err)
        return
    assert all(isinstance(t, str) for t in call.texts)
    for text in call.texts:
        text.encode("utf-8")


CATALOG = load_catalog(None)
DEAL = st.fixed_dictionaries({}, optional={"id": st.sampled_from(["d1", "deal-1"]) | JSON, "bidfloor": JSON,
                                           "bidfloorcur": JSON, "wseat": JSON}) | JSON
MEDIA = st.fixed_dictionaries({}, optional={"w": JSON, "h": JSON, "format": JSON, "mimes": JSON, "battr": JSON}) | JSON
IMP = st.fixed_dictionaries({}, optional={
    "id": JSON, "banner": MEDIA, "video": MEDIA, "audio": MEDIA, "bidfloor": JSON, "bidfloorcur": JSON,
    "native": st.fixed_dictionaries({"request": JSON | st.just("[" * 100_000) | JSON.map(json.dumps)}) | JSON,
    "pmp": st.fixed_dictionaries({}, optional={"deals": st.lists(DEAL, max_size=3) | JSON,
                                               "private_auction": JSON}) | JSON})
BID_REQUEST = st.fixed_dictionaries({"id": st.text(max_size=5) | JSON, "imp": st.lists(IMP, max_size=3) | JSON},
                                    optional={"site": JSON, "app": JSON, "device": JSON, "user": JSON, "tmax": JSON,
                                              "cur": JSON, "bcat": JSON, "badv": JSON, "wseat": JSON, "bseat": JSON,
                                              "ts": JSON, "ext": st.fixed_dictionaries({"ts": JSON}) | JSON})


@FUZZ
@given(BID_REQUEST | JSON)
def test_bid_requests_plan_or_get_a_reason(request):
    try:
        plan = plan_bids(request, CATALOG, max_candidates=64)
    except BidRequestError as err:
        assert str(err)
        return
    assert len(plan.candidates) <= 64
    assert set(plan.no_bid) <= set(plan.imp_ids)
    from distillery.serving.bidder import deadline_budget_ms

    deadline_budget_ms(request, 100.0, 15.0)  # the deadline of any planned request is computable
    plan.texts()  # and so are its model texts


# -------------------------------------------------------------------------------- log rows


def _good_rows(n: int) -> list[dict]:
    from distillery.data.synthetic import SyntheticConfig, generate

    return generate(SyntheticConfig(seed=1, rows_train=n, rows_unlabeled=0, rows_test=1), "train").to_pylist()


GOOD = _good_rows(20)
# A file on disk holds UTF-8: lone surrogates (category Cs) cannot be written raw. A JSON escape
# ("\ud800") can, and read_logs fails on one in a key or an id (see the xfail below), so the log-row
# garbage here is built from surrogate-free values.
def _utf8(value) -> bool:
    """No lone surrogate anywhere (hypothesis also injects string constants it finds in the source)."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _utf8_line(line: str) -> bool:
    """A line that is not JSON, or whose JSON holds no lone surrogate once its escapes are decoded."""
    try:
        return _utf8(json.loads(line))
    except (ValueError, RecursionError):
        return True


LOG_SCALARS = (st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=False)
               | st.text(max_size=20) | st.sampled_from(["text", "BYTES", "FP32", "ctr", "USD", "300x250", ""]))
LOG_JSON = st.recursive(LOG_SCALARS, lambda kids: st.lists(kids, max_size=5) | st.dictionaries(KEYS, kids, max_size=6),
                        max_leaves=30)
GARBAGE_LINE = (st.text(alphabet=st.characters(blacklist_characters="\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029",
                                               blacklist_categories=("Cs",)),
                        min_size=1, max_size=60).filter(lambda s: s.strip())
                | LOG_JSON.filter(_utf8).map(json.dumps)
                | st.fixed_dictionaries({"id": LOG_JSON, "query": LOG_JSON, "hour": LOG_JSON,
                                         "click": LOG_JSON}).filter(_utf8).map(json.dumps)).filter(_utf8_line)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(GARBAGE_LINE, min_size=1, max_size=8), st.randoms(use_true_random=False))
def test_malformed_jsonl_rows_are_rejected_with_reasons_and_no_good_row_is_lost(tmp_path, garbage, rnd):
    from distillery.data.readers import read_logs

    good = [json.dumps({k: v for k, v in row.items() if k != "ts"}) for row in GOOD]
    lines = good + garbage
    rnd.shuffle(lines)
    path = tmp_path / "logs.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = read_logs(str(path), fmt="jsonl")
    ids = result.table["id"].to_pylist()
    assert {r["id"] for r in GOOD} <= set(ids)  # nothing good lost
    assert all(result.rejects["reason"].to_pylist())  # every reject says why
    # every line is accounted for: a row or a reject, never silently dropped
    assert result.table.num_rows + result.rejects.num_rows == len(lines)


@pytest.mark.parametrize("line", ['{"\\ud800": 1}', '{"id": "\\ud800"}'])
def test_jsonl_line_with_an_escaped_surrogate_is_one_reject(tmp_path, line):
    from distillery.data.readers import read_logs

    path = tmp_path / "logs.jsonl"
    path.write_text(line + "\n" + json.dumps({"id": "ok", "query": "q"}) + "\n")
    result = read_logs(str(path), fmt="jsonl")
    assert result.table.num_rows == 1 and result.rejects.num_rows == 1


# -------------------------------------------------------------------------------- configs

CONFIG_VALUES = SCALARS | st.lists(SCALARS, max_size=3) | st.dictionaries(st.text(string.ascii_lowercase, max_size=6), SCALARS, max_size=3)
LABEL_KEYS = st.sampled_from(["run_dir", "inputs", "format", "output", "files_per_round", "force", "max_field_chars",
                              "actors.pool_min", "actors.num_cpus", "actors.batch_size", "actors.batch_retries",
                              "filters.min_confidence", "filters.clip", "teacher.kind", "teacher.model",
                              "teacher.batch_size", "teacher.device", "ray.num_cpus", "bogus", "actors.bogus"])


@FUZZ
@given(st.dictionaries(LABEL_KEYS, CONFIG_VALUES, min_size=1, max_size=4))
def test_label_config_overrides_validate_or_name_the_field(values):
    from distillery.labeling import LabelConfig

    overrides = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                 for k, v in values.items()]
    try:
        load_config(LabelConfig, "jobs/configs/label.yaml", overrides)
    except ConfigError as err:
        assert "config" in str(err) or "label.yaml" in str(err) or "override" in str(err)


@FUZZ
@given(st.text(max_size=200) | JSON.map(yaml.safe_dump))
def test_any_yaml_file_loads_or_gets_a_config_error(tmp_path_factory, text):
    from distillery.serving.config import AppArgs

    path = tmp_path_factory.mktemp("cfg") / "serve.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(AppArgs, path)
    except ConfigError as err:
        assert str(err)


@pytest.mark.parametrize("model_dir", ["../outside", "/etc", "a/../../outside", "~/x"])
def test_model_dir_cannot_escape_the_model_root(tmp_path, model_dir):
    from distillery.serving.config import AppArgs

    with pytest.raises(ConfigError, match="outside model_root"):
        load_config(AppArgs, None, [f"model_root={tmp_path / 'root'}", f"model.model_dir={model_dir}"])


def test_symlink_out_of_the_model_root_is_refused(tmp_path):
    from distillery.serving.config import resolve_model_dir

    (tmp_path / "root").mkdir()
    (tmp_path / "secret").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(ConfigError, match="outside model_root"):
        resolve_model_dir(str(tmp_path / "root"), "link")


# -------------------------------------------------------------------------------- issue 14: the edge


@FUZZ
@given(st.lists(st.integers(0, 10**3000) | st.integers(-5, 5), min_size=1, max_size=3))
def test_any_oip_shape_parses_or_gets_a_4xx_whose_message_renders(shape):
    body = b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [' + ", ".join(map(str, shape)).encode() \
        + b'], "data": ["a"]}]}'
    try:
        parse_infer(body, {}, LimitsSection(max_body_bytes=50_000))
    except BadRequest as err:
        _status_ok(err)
        assert "inputs[0].shape" in err.message or "inputs[0]:" in err.message


def test_a_bad_input_fails_only_its_own_request_in_a_batch():
    import numpy as np

    from distillery.serving.batch import score_batch

    def predict(texts):
        check = [t.encode("utf-8") for t in texts]  # what a tokenizer does with a lone surrogate
        return np.full(len(check), 0.5)

    out = score_batch(predict, [["a", "b"], ["bad \ud800"], ["c"]])
    assert [o.tolist() if not isinstance(o, Exception) else "err" for o in out] == [[0.5, 0.5], "err", [0.5]]
    assert isinstance(out[1], UnicodeEncodeError)
    assert isinstance(score_batch(predict, [["\ud800"]])[0], UnicodeEncodeError)  # alone: its own error


@pytest.mark.parametrize("file", ["/etc/passwd", "../outside.onnx", "sub/../../x.onnx", "link/x.onnx", "", None])
def test_model_card_variant_paths_cannot_leave_the_model_folder(tmp_path, file):
    from distillery.onnx_model.card import variant_path
    from distillery.onnx_model.scorer import OnnxScorer

    model = tmp_path / "model"
    model.mkdir()
    (tmp_path / "outside").mkdir()
    (model / "link").symlink_to(tmp_path / "outside")
    (model / "model_card.json").write_text(json.dumps({"variants": {"int8": file}, "max_length": 8}))
    with pytest.raises(ValueError, match="variants.int8"):
        variant_path(str(model), "int8", file)
    with pytest.raises(ValueError, match="variants.int8"):  # refused before ONNX Runtime opens anything
        OnnxScorer(str(model), variant="int8")
    assert variant_path(str(model), "int8", "student.int8.onnx") == str((model / "student.int8.onnx").resolve())


@pytest.mark.parametrize("policy, host, required", [
    ("auto", "127.0.0.1", False), ("auto", "::1", False), ("auto", "0.0.0.0", True), ("auto", None, True),
    ("required", "127.0.0.1", True), ("disabled", "0.0.0.0", False)])
def test_auth_fails_closed_unless_loopback_or_explicitly_disabled(policy, host, required):
    from distillery.serving.config import auth_required

    assert auth_required(policy, host) is required


def test_distillery_serve_refuses_exposure_without_a_token_and_a_missing_variant(tmp_path, monkeypatch, capsys):
    from distillery.cli import main

    model = tmp_path / "onnx"
    model.mkdir()
    (model / "model_card.json").write_text(json.dumps({"variants": {"fp32": "student.fp32.onnx"}}))
    monkeypatch.chdir(tmp_path)  # no serve/ here: the shipped serve_config.yaml is found from the package
    monkeypatch.delenv("DISTILLERY_SERVE_TOKEN", raising=False)
    assert main(["serve", "--model-dir", str(model)]) == 2
    err = capsys.readouterr().err
    assert "model.variant: 'int8' is not in" in err and "distillery compress --config jobs/configs/compress.yaml" in err
    (model / "model_card.json").write_text(json.dumps({"variants": {"int8": "student.int8.onnx"}}))
    assert main(["serve", "--model-dir", str(model), "--host", "0.0.0.0"]) == 2
    assert "DISTILLERY_SERVE_TOKEN is unset or empty" in capsys.readouterr().err


def test_arrival_stamp_is_read_in_any_unit_and_never_trusted_from_the_future():
    from distillery.serving.arrival import arrival_time

    now = 1_800_000_000.0
    for raw in ("t=1799999999.5", "1799999999500", "t=1799999999500000"):
        assert arrival_time({"x-request-start": raw}, now) == pytest.approx(now - 0.5)
    for raw in ("t=1900000000", "garbage", "", "t=1"):
        assert arrival_time({"x-request-start": raw}, now) is None
    assert arrival_time({}, now) is None


def test_proxy_middleware_stamps_arrival_over_a_client_header():
    import asyncio
    import time

    from distillery.serving.arrival import StampArrival, arrival_time

    seen = {}

    async def app(scope, receive, send):
        seen.update(scope)

    scope = {"type": "http", "headers": [(b"x-request-start", b"t=1")]}
    asyncio.run(StampArrival(app)(scope, None, None))
    headers = {k.decode(): v.decode() for k, v in seen["headers"]}
    assert abs(arrival_time(headers) - time.time()) < 5
