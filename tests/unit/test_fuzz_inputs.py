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
from distillery.serving.limits import BadRequest, LimitsSection, parse_json_body
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
SCALARS = (st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=False)
           | st.text(max_size=20) | st.sampled_from(["text", "BYTES", "FP32", "ctr", "USD", "300x250", ""]))
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
@given(JSON)
def test_predict_bodies_are_texts_or_a_4xx(body):
    try:
        texts = predict_texts(body, LIMITS)
    except BadRequest as err:
        _status_ok(err)
        return
    assert texts and all(isinstance(t, str) and t for t in texts) and len(texts) <= LIMITS.max_rows


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


CATALOG = load_catalog(None)
IMP = st.fixed_dictionaries({}, optional={
    "id": JSON, "banner": st.fixed_dictionaries({}, optional={"w": JSON, "h": JSON, "format": JSON}) | JSON,
    "native": JSON, "video": JSON, "bidfloor": JSON, "bidfloorcur": JSON, "pmp": JSON})
BID_REQUEST = st.fixed_dictionaries({"id": st.text(max_size=5) | JSON, "imp": st.lists(IMP, max_size=3) | JSON},
                                    optional={"site": JSON, "app": JSON, "device": JSON, "user": JSON, "tmax": JSON,
                                              "cur": JSON, "bcat": JSON, "badv": JSON, "wseat": JSON, "bseat": JSON})


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


# -------------------------------------------------------------------------------- log rows


def _good_rows(n: int) -> list[dict]:
    from distillery.data.synthetic import SyntheticConfig, generate

    return generate(SyntheticConfig(seed=1, rows_train=n, rows_unlabeled=0, rows_test=1), "train").to_pylist()


GOOD = _good_rows(20)
# A file on disk holds UTF-8: lone surrogates (category Cs) cannot be written, so they are not garbage a reader meets.
GARBAGE_LINE = (st.text(alphabet=st.characters(blacklist_characters="\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029",
                                               blacklist_categories=("Cs",)),
                        min_size=1, max_size=60).filter(lambda s: s.strip())
                | JSON.map(json.dumps)
                | st.fixed_dictionaries({"id": JSON, "query": JSON, "hour": JSON, "click": JSON}).map(json.dumps))


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
    from distillery.serving.app import AppArgs

    path = tmp_path_factory.mktemp("cfg") / "serve.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(AppArgs, path)
    except ConfigError as err:
        assert str(err)


@pytest.mark.parametrize("model_dir", ["../outside", "/etc", "a/../../outside", "~/x"])
def test_model_dir_cannot_escape_the_model_root(tmp_path, model_dir):
    from distillery.serving.app import AppArgs

    with pytest.raises(ConfigError, match="outside model_root"):
        load_config(AppArgs, None, [f"model_root={tmp_path / 'root'}", f"model.model_dir={model_dir}"])


def test_symlink_out_of_the_model_root_is_refused(tmp_path):
    from distillery.serving.app import resolve_model_dir

    (tmp_path / "root").mkdir()
    (tmp_path / "secret").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(ConfigError, match="outside model_root"):
        resolve_model_dir(str(tmp_path / "root"), "link")
