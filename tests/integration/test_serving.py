"""The Serve app over real HTTP on 127.0.0.1 with a local Ray: every route, bad input, tritonclient,
the OpenRTB samples, hot swap under load, autoscaling 1 -> 2 -> 1, load shedding, `distillery serve`.

Serve starts once for the module and is driven the way `serve deploy` drives it: the shipped
serve/serve_config.yaml with test overrides, applied through the controller (`deploy_apps`).
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from helpers import (APP, answers_health, deploy, export_int8, serve_on, running_replicas, serve_config_for_test,
                     wait_for)
from tinymodels import save_tiny_bert

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PORT = 18100
CLI_PORT = 18150
URL = f"http://127.0.0.1:{PORT}"
TOKEN_ENV = "DISTILLERY_TEST_SERVE_TOKEN"
TOKEN = "test-token-8b1f"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TEXT = "query: running shoes | site: sports | ad: Marathon-ready footwear | ad category: sports"


@pytest.fixture(scope="module")
def models(tiny_bert, tmp_path_factory):
    """Model root with two exported INT8 models of different weights: `a` and `b`."""
    root = tmp_path_factory.mktemp("model_root")
    export_int8(tiny_bert, root / "a")
    export_int8(save_tiny_bert(tmp_path_factory.mktemp("bert_b"), seed=1), root / "b")
    from distillery.onnx_model.scorer import OnnxScorer

    scorers = {name: OnnxScorer(str(root / name), variant="int8", intra_op_threads=1) for name in ("a", "b")}
    assert scorers["a"].version != scorers["b"].version
    return root, scorers


def _config(root: Path, model: str = "a", **deployment) -> dict:
    """serve/serve_config.yaml with the test's port, model root, token and small resources."""
    config = serve_config_for_test(PORT, root, TOKEN_ENV, TOKEN)
    app = config["applications"][0]
    app["args"]["limits"].update(max_body_bytes=200_000)
    app["args"]["bidder"].update(network_margin_ms=20.0)
    app["args"]["batch"].update(batch_wait_timeout_ms=3.0)  # > the 1 ms budget of the deadline test
    dep = app["deployments"][0]
    dep.update(max_ongoing_requests=16, max_queued_requests=16, ray_actor_options={"num_cpus": 0.25},
               user_config={"model_dir": model, "variant": "int8"},
               autoscaling_config={"min_replicas": 1, "initial_replicas": 1, "max_replicas": 2,
                                   "target_ongoing_requests": 4, "upscale_delay_s": 0.5,
                                   "downscale_delay_s": 2.0, "metrics_interval_s": 0.5, "look_back_period_s": 1.0})
    dep.update(deployment)
    return config


@pytest.fixture(scope="module")
def server(local_ray, models):
    from ray import serve

    root, scorers = models
    with serve_on(PORT) as ingress:
        deploy(_config(root))
        wait_for(lambda: answers_health(URL), 120, "the app to answer /healthz")
        yield root, scorers, ingress


def post(path: str, body=None, *, data: bytes | None = None, headers: dict | None = None, session=None):
    send = session or requests
    hdrs = {**AUTH, **(headers or {})}
    if data is None:
        data = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    return send.post(f"{URL}{path}", data=data, headers=hdrs, timeout=30)


# -- routes -----------------------------------------------------------------------------------


def test_requests_take_the_fast_path_where_haproxy_runs(server):
    """HAProxy on the Serve port forwards to the replica's own HTTP server (direct ingress), whose
    port checks the bearer token like the front door."""
    from distillery.serving.ingress import haproxy_binary

    if os.environ.get("DISTILLERY_TEST_INGRESS") == "proxy" or haproxy_binary() is None:
        pytest.skip("no HAProxy binary here (or the proxy path was asked for): the proxy path is tested")
    _, _, (ingress_env, mode) = server
    assert mode == "haproxy"
    from distillery.serving.ingress import direct_ingress_ports

    lo, hi = (int(ingress_env[f"RAY_SERVE_DIRECT_INGRESS_{k}_HTTP_PORT"]) for k in ("MIN", "MAX"))
    ports = wait_for(lambda: direct_ingress_ports(ingress_env), 60, "a replica's direct-ingress port in HAProxy's config")
    assert all(lo <= p <= hi for p in ports), ports
    direct = ports[0]
    r = requests.post(f"http://127.0.0.1:{direct}/predict", json={"texts": [TEXT]}, timeout=10)
    assert r.status_code == 401  # the replica's own port checks the token like the front door
    assert post("/predict", {"texts": [TEXT]}).status_code == 200


def test_health_routes_need_no_token(server):
    for path in ("/healthz", "/v2/health/live", "/v2/health/ready"):
        r = requests.get(f"{URL}{path}", timeout=5)
        assert r.status_code == 200, (path, r.text)
        assert "x-model-version" not in r.headers  # anonymous callers learn nothing about the model
    r = requests.get(f"{URL}/healthz", headers=AUTH, timeout=5)
    assert r.json()["model"] == "ctr" and r.headers["x-model-version"] == r.json()["model_version"]


def test_other_routes_require_the_bearer_token(server):
    r = requests.post(f"{URL}/predict", json={"texts": [TEXT]}, timeout=5)
    assert r.status_code == 401 and "bearer token" in r.json()["error"]
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = requests.get(f"{URL}/v2", headers={"Authorization": "Bearer wrong"}, timeout=5)
    assert r.status_code == 401 and "not accepted" in r.json()["error"]
    assert requests.get(f"{URL}/v2", headers=AUTH, timeout=5).json()["name"] == "distillery"


def test_predict_texts_and_rows_match_the_in_process_scorer(server):
    _, scorers, _ = server
    texts = [TEXT, "query: cheap flights | ad: Get away for less"]
    r = post("/predict", {"texts": texts})
    assert r.status_code == 200, r.text
    body = r.json()
    version = body["model_version"]
    assert r.headers["x-model-version"] == version
    scorer = next(s for s in scorers.values() if s.version == version)
    np.testing.assert_allclose(body["probabilities"], scorer.predict_proba(texts), atol=1e-6)
    rows = [{"query": "running shoes", "hour": 20, "ad_title": "Marathon-ready footwear"},
            {"id": "x", "query": "hotel deals", "ad_title": "Stay somewhere wonderful tonight"}]
    r = post("/predict", {"rows": rows})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["probabilities"], scorer.predict_rows(rows), atol=1e-6)


def test_large_predict_is_split_into_batches(server):
    _, scorers, _ = server
    texts = [f"{TEXT} | n={i}" for i in range(300)]  # more than max_batch_rows (64)
    r = post("/predict", {"texts": texts})
    assert r.status_code == 200, r.text
    scorer = next(s for s in scorers.values() if s.version == r.json()["model_version"])
    # Dynamic INT8 quantizes activations per batch, so a row's score depends (~1e-4) on its
    # batch-mates: compare with the same 64-row batches the server must have run.
    expected = np.concatenate([scorer.predict_proba(texts[i:i + 64]) for i in range(0, 300, 64)])
    np.testing.assert_allclose(r.json()["probabilities"], expected, atol=1e-6)


def test_oip_routes_over_raw_http(server):
    _, scorers, _ = server
    meta = requests.get(f"{URL}/v2/models/ctr", headers=AUTH, timeout=5).json()
    version = meta["versions"][0]
    assert meta["inputs"][0] == {"name": "text", "datatype": "BYTES", "shape": [-1]}
    assert requests.get(f"{URL}/v2/models/ctr/versions/{version}", headers=AUTH, timeout=5).status_code == 200
    assert requests.get(f"{URL}/v2/models/ctr/ready", headers=AUTH, timeout=5).json() == {"name": "ctr", "ready": True}
    assert requests.get(f"{URL}/v2/models/ctr/versions/{version}/ready", headers=AUTH, timeout=5).status_code == 200
    body = {"id": "req-1", "inputs": [{"name": "text", "datatype": "BYTES", "shape": [2, 1], "data": [[TEXT], ["x"]]}]}
    for path in ("/v2/models/ctr/infer", f"/v2/models/ctr/versions/{version}/infer"):
        r = post(path, body)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["id"] == "req-1" and out["model_name"] == "ctr" and out["model_version"] == version
        (tensor,) = out["outputs"]
        assert tensor["name"] == "click_prob" and tensor["datatype"] == "FP32" and tensor["shape"] == [2, 1]
        scorer = next(s for s in scorers.values() if s.version == version)
        np.testing.assert_allclose(tensor["data"], scorer.predict_proba([TEXT, "x"]), atol=1e-6)


def test_tritonclient_against_the_oip_routes(server):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    _, scorers, _ = server
    # headers=dict(AUTH) each time: tritonclient writes Inference-Header-Content-Length into the dict it is given
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{PORT}")
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("ctr", headers=dict(AUTH))
    assert client.get_server_metadata(headers=dict(AUTH))["name"] == "distillery"
    version = client.get_model_metadata("ctr", headers=dict(AUTH))["versions"][0]
    texts = np.array([TEXT.encode(), "query: cheap flights | ad: Get away for less".encode()], dtype=np.object_)
    scorer = next(s for s in scorers.values() if s.version == version)
    expected = scorer.predict_proba([t.decode() for t in texts])
    for binary in (True, False):
        inp = httpclient.InferInput("text", [2], "BYTES")
        inp.set_data_from_numpy(texts, binary_data=binary)
        outputs = [httpclient.InferRequestedOutput("click_prob", binary_data=binary)]
        result = client.infer("ctr", [inp], outputs=outputs, headers=dict(AUTH), request_id="t1")
        np.testing.assert_allclose(result.as_numpy("click_prob"), expected, atol=1e-6)
        assert result.get_response()["model_version"] == version
    result = client.infer("ctr", [inp], model_version=version, headers=dict(AUTH))  # no outputs: binary by default
    np.testing.assert_allclose(result.as_numpy("click_prob"), expected, atol=1e-6)
    with pytest.raises(InferenceServerException, match="not served here"):
        client.infer("nope", [inp], headers=dict(AUTH))
    client.close()


# -- bad input ----------------------------------------------------------------------------------

DEEP = b"[" * 40 + b"]" * 40
VERY_DEEP = b"[" * 50_000 + b"]" * 50_000
OIP = "/v2/models/ctr/infer"


@pytest.mark.parametrize("path, data, status, message", [
    ("/predict", b"{bad json", 400, "malformed JSON"),
    ("/predict", b'{"texts": [1, 2]}', 400, "texts[0]: expected a string"),
    ("/predict", b'{"rows": [{"query": "x", "hour": "late"}]}', 400, "rows[0].hour"),
    ("/predict", b'{"rows": [{"query": {"nested": 1}}]}', 400, "rows[0].query"),
    ("/predict", b"{}", 400, "rows, texts"),
    ("/predict", b'{"texts": []}', 400, "empty"),
    ("/predict", b'{"texts": ["\xff\xfe"]}', 400, "not valid UTF-8"),
    ("/predict", b"", 400, "body is empty"),
    ("/predict", DEEP, 400, "nested deeper"),
    ("/predict", VERY_DEEP, 400, "nested deeper"),
    ("/predict", b'{"texts": ["a"], "extra": 1}', 400, "extra: unknown field"),
    (OIP, b'{"inputs": []}', 400, "inputs"),
    (OIP, b'{"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]}', 400, "datatype"),
    (OIP, b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [3], "data": ["a"]}]}', 400, "needs 3 elements"),
    (OIP, b'{"inputs": [{"name": "ids", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}', 400, "inputs[0].name"),
    ("/v2/models/nope/infer", b'{"inputs": []}', 404, "not served here"),
    ("/v2/models/ctr/versions/v0/infer", b'{"inputs": []}', 404, "no version"),
    ("/openrtb/2.6/bid", b'{"id": "r1", "site": {}}', 400, "imp: missing"),
    ("/openrtb/2.5/bid", b'{"id": "r1", "imp": []}', 400, "imp: empty"),
    ("/openrtb/2.6/bid", b'[1, 2]', 400, "expected a JSON object"),
    ("/openrtb/2.6/bid", b'{"id": 5, "imp": [{"id": "1", "banner": {}}]}', 400, "id: expected"),
    ("/openrtb/2.5/bid", b"not json", 400, "malformed JSON"),
])
def test_bad_input_gets_a_4xx_naming_the_problem(server, path, data, status, message):
    r = post(path, data=data, headers={"Content-Type": "application/json"})
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert message in r.json()["error"]


def test_oversized_bodies_get_413_declared_or_chunked(server):
    big = json.dumps({"texts": ["x" * 1000] * 300}).encode()  # 300 KB > 200 KB limit
    r = post("/predict", data=big)
    assert r.status_code == 413 and "exceeds the limit" in r.json()["error"]
    r = post("/predict", data=iter([big[:100_000], big[100_000:]]))  # chunked: no Content-Length
    assert r.status_code == 413 and "exceeds the limit" in r.json()["error"]
    r = post("/predict", {"texts": [TEXT] * 600})  # more rows than max_rows
    assert r.status_code == 413 and "limit of 512" in r.json()["error"]


def test_unknown_route_and_method_get_json_errors_and_the_replica_keeps_serving(server):
    r = requests.get(f"{URL}/nope", headers=AUTH, timeout=5)
    assert r.status_code == 404 and "error" in r.json()
    r = requests.get(f"{URL}/predict", headers=AUTH, timeout=5)
    assert r.status_code == 405 and "error" in r.json()
    assert post("/predict", {"texts": [TEXT]}).status_code == 200


# -- OpenRTB ------------------------------------------------------------------------------------

BID_RESPONSE_SCHEMA = {
    "type": "object",
    "required": ["id", "seatbid", "cur"],
    "properties": {
        "id": {"type": "string"},
        "cur": {"type": "string", "pattern": "^[A-Z]{3}$"},
        "seatbid": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["bid"],
            "properties": {"seat": {"type": "string"}, "bid": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["id", "impid", "price", "crid", "adomain", "cat"],
                "properties": {"id": {"type": "string"}, "impid": {"type": "string"},
                               "price": {"type": "number", "exclusiveMinimum": 0},
                               "adomain": {"type": "array", "items": {"type": "string"}},
                               "cat": {"type": "array", "items": {"type": "string"}},
                               "crid": {"type": "string"}, "dealid": {"type": "string"},
                               "mtype": {"type": "integer", "enum": [1, 2, 3, 4]}}}}}}},
    },
}


def _check_bid_response(request: dict, response: dict) -> None:
    import jsonschema

    jsonschema.validate(response, BID_RESPONSE_SCHEMA)
    assert response["id"] == request["id"]
    assert response["cur"] in request.get("cur", ["USD"])
    imps = {imp["id"]: imp for imp in request["imp"]}
    seen = set()
    for seat in response["seatbid"]:
        for bid in seat["bid"]:
            imp = imps[bid["impid"]]
            assert bid["impid"] not in seen
            seen.add(bid["impid"])
            floor = imp.get("bidfloor", 0)
            if "dealid" in bid:
                deal = next(d for d in imp["pmp"]["deals"] if d["id"] == bid["dealid"])
                floor = deal.get("bidfloor", floor)
            assert bid["price"] >= floor
            assert not any(c == b or c.startswith(b + "-") for c in bid["cat"] for b in request.get("bcat", []))
            assert not set(bid["adomain"]) & set(request.get("badv", []))


@pytest.mark.parametrize("route", ["2.5", "2.6"])
def test_every_shared_openrtb_sample_gets_a_valid_response(server, shared_data, route):
    samples = sorted((shared_data / "openrtb").glob("*.json"))
    assert len(samples) == 11
    answered = 0
    for path in samples:
        request = json.loads(path.read_text())
        r = post(f"/openrtb/{route}/bid", data=path.read_bytes())
        assert r.status_code == 200, (path.name, r.status_code, r.text)
        assert r.headers["x-model-version"]
        response = r.json()
        if "seatbid" not in response:  # a no-bid: only the native sample, whose request string is broken
            assert "native" in path.name, (path.name, response)
            assert response["id"] == request["id"] and response["nbr"] == 2  # invalid request
            assert "native.request" in r.headers["x-no-bid-reason"]
            continue
        answered += 1
        _check_bid_response(request, response)
        assert response["ext"]["model_version"] == r.headers["x-model-version"]
        assert all(("mtype" in b) == (route == "2.6") for s in response["seatbid"] for b in s["bid"])
    assert answered == 10


def test_unscorable_impression_gets_no_bid_while_others_are_answered(server, shared_data):
    request = json.loads((shared_data / "openrtb" / "iab-ortb25-native-ad.json").read_text())
    request["imp"].append({"id": "2", "bidfloor": 0.01, "banner": {"w": 300, "h": 250}})
    r = post("/openrtb/2.5/bid", request)
    assert r.status_code == 200, r.text
    response = r.json()
    _check_bid_response(request, response)
    assert [b["impid"] for s in response["seatbid"] for b in s["bid"]] == ["2"]
    assert "native.request: not valid JSON" in response["ext"]["no_bid"]["1"]


def test_no_bid_reason_header_survives_hostile_imp_ids(server):
    request = {"id": "r", "imp": [{"id": "é\r\nX-Evil: 1", "video": {"w": 1, "h": 1, "mimes": ["video/none"]}}]}
    r = post("/openrtb/2.6/bid", request)
    assert r.status_code == 200 and "x-evil" not in r.headers
    assert r.json()["nbr"] == 500 and "seatbid" not in r.json()  # no creative fits
    assert "no creative fits" in r.headers["x-no-bid-reason"]


def _assert_no_bid(r, request: dict, nbr: int) -> dict:
    """A reasoned no-bid: 200, the request's id, OpenRTB `nbr`, no `seatbid`, each impression's reason."""
    assert r.status_code == 200, (r.status_code, r.text)
    response = r.json()
    assert response["id"] == request["id"] and response["nbr"] == nbr, response
    assert "seatbid" not in response
    assert set(response["ext"]["no_bid"]) == {imp["id"] for imp in request["imp"]}
    assert r.headers["x-no-bid-reason"] and r.headers["x-model-version"]
    return response


def test_no_bid_below_the_floor_says_nbr_without_seatbid(server, shared_data):
    request = json.loads((shared_data / "openrtb" / "iab-ortb26-simple-banner.json").read_text())
    request["tmax"] = 2000
    assert "seatbid" in post("/openrtb/2.6/bid", request).json()  # bid at the sample's own floor
    for imp in request["imp"]:
        imp["bidfloor"] = 10_000.0  # past every campaign's max bid
    for route in ("2.5", "2.6"):
        response = _assert_no_bid(post(f"/openrtb/{route}/bid", request), request, 504)
        assert all("floor" in why for why in response["ext"]["no_bid"].values())


def test_tmax_too_short_answers_no_bid_in_time(server, shared_data):
    request = json.loads((shared_data / "openrtb" / "iab-ortb26-simple-banner.json").read_text())
    request["tmax"] = 10  # below the 20 ms network margin: no time left to score
    r = post("/openrtb/2.6/bid", request)
    _assert_no_bid(r, request, 15)  # insufficient auction time
    assert "budget" in r.headers["x-no-bid-reason"]
    # 1 ms left, less than the 3 ms batch wait: whether the budget runs out while planning or while
    # scoring (timing), the answer is a no-bid before the deadline, never a late bid
    request["tmax"] = 21
    r = post("/openrtb/2.6/bid", request)
    _assert_no_bid(r, request, 15)
    assert "budget" in r.headers["x-no-bid-reason"]
    request["tmax"] = 2000
    r = post("/openrtb/2.6/bid", request)
    assert r.status_code == 200 and r.json()["seatbid"]
    # the clock starts at arrival: a request stamped (by the proxy or a load balancer) as having
    # arrived 3 s ago has spent its 2 s budget while queued, and answers no-bid, not a late bid
    stamp = {"X-Request-Start": f"t={int((time.time() - 3.0) * 1e6)}"}
    r = post("/openrtb/2.6/bid", request, headers=stamp)
    _assert_no_bid(r, request, 15)
    assert "budget" in r.headers["x-no-bid-reason"]
    request["tmax"] = -5  # used to fall back to the default deadline and bid
    r = post("/openrtb/2.6/bid", request)
    assert r.status_code == 400 and "tmax" in r.json()["error"]


def test_a_model_answering_nan_gets_no_bid_priced(server, shared_data):
    """NaN clears every floor comparison: a model answering NaN is the server's fault, so the bid route
    answers a no-bid with nbr 1 (technical error), counted as a model fault, never a priced bid.
    The replica's route runs in this process with the model's answer replaced by NaN."""
    import asyncio
    from types import SimpleNamespace
    from unittest import mock

    from starlette.requests import Request

    from distillery.serving import deployment
    from distillery.serving.catalog import load_catalog
    from distillery.serving.config import AppArgs

    root, _, _ = server
    routes = deployment.CTRServer.func_or_class.__mro__[1]  # the class under Serve's ASGI wrapper
    assert "_bid" in vars(routes)
    replica = object.__new__(routes)
    replica.args = AppArgs.model_validate(_config(root)["applications"][0]["args"])
    replica._catalog, replica._metrics = load_catalog(), mock.Mock()
    replica._scorer = SimpleNamespace(version="nan-model")
    body = (shared_data / "openrtb" / "iab-ortb26-simple-banner.json").read_bytes()

    async def body_of(request, timeout_s=None):
        return body

    async def nan_scores(rows):
        return np.full(len(rows), np.nan), "nan-model"

    replica._body, replica._score_inputs = body_of, nan_scores
    request = Request({"type": "http", "method": "POST", "path": "/openrtb/2.6/bid", "headers": []})
    answer = asyncio.run(replica._bid(request, "2.6"))
    reply = json.loads(answer.body)
    assert answer.status_code == 200 and reply["nbr"] == 1 and "seatbid" not in reply, reply
    replica._metrics.model_fault.assert_called_once_with("non_finite")


def test_cuda_required_but_absent_refuses_to_start(server):
    """provider: cuda where ORT cannot use CUDA: the replica refuses to start and Serve reports why;
    the running app is untouched."""
    import torch
    from ray import serve

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here; the refusal path needs a CPU-only machine")
    root, _, _ = server
    config = _config(root)
    cuda = copy.deepcopy(config["applications"][0])
    cuda.update(name="cuda-check", route_prefix="/cuda-check")
    cuda["args"]["provider"] = "cuda"
    cuda["deployments"][0].update(max_constructor_retry_count=1, autoscaling_config=None, num_replicas=1)
    deploy({**config, "applications": [config["applications"][0], cuda]})
    try:
        status = wait_for(lambda: (a := serve.status().applications.get("cuda-check")) and a.status == "DEPLOY_FAILED" and a,
                       120, "the cuda app to fail")
        assert "refusing to run on CPU" in status.message + str(status.deployments)
        assert post("/predict", {"texts": [TEXT]}).status_code == 200
    finally:
        deploy(config)
        wait_for(lambda: "cuda-check" not in serve.status().applications, 60, "the cuda app to go away")


# -- operations -------------------------------------------------------------------------------


def _load(stop: threading.Event, results: list, body: dict, max_requests: int) -> None:
    """One client: POST /predict until told to stop (bounded by max_requests)."""
    with requests.Session() as session:
        for _ in range(max_requests):
            if stop.is_set():
                return
            try:
                r = post("/predict", body, session=session)
                payload = r.json() if r.status_code == 200 else None
                results.append((time.monotonic(), r.status_code, r.headers.get("x-model-version"),
                                payload["probabilities"][0] if payload else None))
            except requests.RequestException as err:
                results.append((time.monotonic(), repr(err), None, None))


def test_hot_swap_under_load_fails_no_request(server):
    root, scorers, _ = server
    expected = {s.version: float(s.predict_proba([TEXT])[0]) for s in scorers.values()}
    va, vb = scorers["a"].version, scorers["b"].version
    stop, results = threading.Event(), []
    with ThreadPoolExecutor(4) as pool:
        for _ in range(4):
            pool.submit(_load, stop, results, {"texts": [TEXT]}, 3000)
        wait_for(lambda: len(results) >= 20, 30, "load to start")
        deploy(_config(root, model="b"))
        swapped = wait_for(lambda: next((t for t, _, v, _ in list(results) if v == vb), None), 60, "version b")
        wait_for(lambda: results[-1][0] > swapped + 1.0, 30, "a second of load after the swap")
        stop.set()
    statuses = [s for _, s, _, _ in results]
    assert statuses.count(200) == len(results), {s for s in statuses if s != 200}
    versions = {v for _, _, v, _ in results}
    assert versions == {va, vb}
    for _, _, version, prob in results:  # each answer was scored by the version it names
        assert prob == pytest.approx(expected[version], abs=1e-6)
    assert all(v == vb for t, _, v, _ in results if t > swapped + 0.5)
    meta = requests.get(f"{URL}/v2/models/ctr", headers=AUTH, timeout=5).json()
    assert meta["versions"] == [vb]


def test_bad_swap_keeps_the_old_model_serving(server):
    root, scorers, _ = server
    before = post("/predict", {"texts": [TEXT]}).json()["model_version"]
    deploy(_config(root, model="missing"))
    time.sleep(3)
    r = post("/predict", {"texts": [TEXT]})
    assert r.status_code == 200 and r.json()["model_version"] == before
    from ray import serve

    deploy(_config(root, model="a"))
    wait_for(lambda: post("/predict", {"texts": [TEXT]}).json()["model_version"] == scorers["a"].version, 60, "swap back")
    # answering with version a comes before Serve marks the app RUNNING again (on 2 busy cores, seconds later)
    wait_for(lambda: serve.status().applications[APP].status == "RUNNING", 60, "the app to settle RUNNING")


def _two_tower_int8(hf_dir: Path, out_dir: Path) -> None:
    """An (untrained) two-tower student on the tiny BERT's layers, exported to ONNX and quantized."""
    from distillery.compress.export_two_tower import export_two_tower
    from distillery.compress.quantize import quantize_int8
    from distillery.training.init import ModelInit, build_model
    from distillery.training.loop import TrainState, save_checkpoint

    model, tokenizer = build_model(ModelInit(kind="two_tower", source=str(hf_dir), layers=[0, 1]))
    save_checkpoint(str(out_dir.parent / "tt_student"), model, tokenizer, TrainState())
    export_two_tower(str(out_dir.parent / "tt_student"), str(out_dir), max_length=48)
    quantize_int8(str(out_dir))


def test_a_two_tower_student_serves_predict_and_bids(server, tiny_bert):
    """Hot swap to a two-tower student: /predict (texts and rows) and an OpenRTB bid answer exactly what
    the in-process TwoTowerScorer and bidder decide; then back to the cross-encoder."""
    from distillery.onnx_model.two_tower import TwoTowerScorer
    from distillery.serving.bidder import decide_bids, plan_bids
    from distillery.serving.catalog import load_catalog

    root, scorers, _ = server
    _two_tower_int8(tiny_bert, root / "tt")
    local = TwoTowerScorer(str(root / "tt"), "int8", intra_op_threads=1)
    local.warm_ads(ad.row_fields() for ad in load_catalog().candidates())  # as the replica does: the same ad batches
    deploy(_config(root, model="tt"))
    wait_for(lambda: post("/predict", {"texts": [TEXT]}).headers.get("x-model-version") == local.version, 90, "the two-tower model")
    rows = [{"query": "running shoes", "device": "mobile", "position": 1, "ad_title": "Trail runner", "ad_category": "sports"},
            {"query": "cheap flights", "site_category": "travel", "position": 2, "ad_title": "Fares to Paris"}]
    r = post("/predict", {"rows": rows})
    assert r.status_code == 200, r.text
    # dynamic INT8 scales each tower batch by its own range: an ad encoded in another batch moves p by ~1e-5
    np.testing.assert_allclose(r.json()["probabilities"], local.predict_rows(rows), atol=1e-4)
    r = post("/predict", {"texts": [TEXT]})
    np.testing.assert_allclose(r.json()["probabilities"], local.predict_proba([TEXT]), atol=1e-4)

    request = {"id": "tt-1", "tmax": 5000, "site": {"domain": "news.example", "cat": ["IAB17"]},
               "device": {"devicetype": 4, "os": "ios"}, "cur": ["USD"],
               "imp": [{"id": "1", "bidfloor": 0.0, "banner": {"w": 300, "h": 250}},
                       {"id": "2", "bidfloor": 0.0, "banner": {"w": 728, "h": 90}}]}
    r = post("/openrtb/2.6/bid", request)
    assert r.status_code == 200, r.text
    plan = plan_bids(request, load_catalog())
    expected, _ = decide_bids(plan, local.predict([c.row for c in plan.candidates]), model_version=local.version, openrtb="2.6")
    got = {b["impid"]: b for s in r.json()["seatbid"] for b in s["bid"]}
    want = {b["impid"]: b for s in expected["seatbid"] for b in s["bid"]}
    assert got.keys() == want.keys() and len(plan.candidates) > 2
    for imp, bid in want.items():  # the same creative at the same price from the same pCTR
        assert (got[imp]["crid"], got[imp]["price"]) == (bid["crid"], bid["price"])
        assert got[imp]["ext"]["pctr"] == pytest.approx(bid["ext"]["pctr"], abs=1e-6)
    deploy(_config(root, model="a"))
    wait_for(lambda: post("/predict", {"texts": [TEXT]}).headers.get("x-model-version") == scorers["a"].version, 90, "swap back")


def test_metrics_are_exported_to_prometheus(server, shared_data):
    """The replica's counters reach Ray's Prometheus endpoint with Serve's tags (runs after the swaps)."""
    import ray

    port = ray._private.worker.global_worker.node.metrics_export_port
    native = (shared_data / "openrtb" / "iab-ortb25-native-ad.json").read_bytes()
    late = json.loads((shared_data / "openrtb" / "iab-ortb26-simple-banner.json").read_text())
    late["tmax"] = 5
    wanted = ("distillery_predictions_total", "distillery_rejected_total", "distillery_no_bids_total",
              "distillery_deadline_misses_total", "distillery_model_swaps_total", "distillery_model_info",
              "distillery_batch_rows_count", "distillery_batch_queue_ms_bucket", "distillery_batch_score_ms_sum")

    def scrape() -> str | None:
        post("/predict", {"texts": [TEXT]})
        post("/predict", data=b"{bad")
        post("/openrtb/2.5/bid", data=native)
        post("/openrtb/2.6/bid", late)
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        return text if all(w in text for w in wanted) else None

    try:
        text = wait_for(scrape, 60, "distillery metrics on the Prometheus endpoint", every_s=2.0)
    except AssertionError:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        raise AssertionError(f"missing {[w for w in wanted if w not in text]}") from None
    lines = [line for line in text.splitlines() if line.startswith("ray_distillery_")]
    assert any('reason="no_candidates"' in line for line in lines)  # the native sample
    assert any('route="predict"' in line and 'status="400"' in line for line in lines)
    assert all('deployment="CTRServer"' in line and 'replica="' in line for line in lines)
    batches = [line for line in lines if line.startswith("ray_distillery_batch_rows_count")]
    assert batches and all(float(line.rsplit(" ", 1)[1]) >= 1 for line in batches)  # the scoring thread's batches


def test_path_escaping_the_model_root_is_refused():
    from distillery.config import ConfigError
    from distillery.serving.config import resolve_model_dir

    with pytest.raises(ConfigError, match="outside model_root"):
        resolve_model_dir("/srv/models", "../etc")
    with pytest.raises(ConfigError, match="outside model_root"):
        resolve_model_dir("/srv/models", "/tmp/x")
    assert resolve_model_dir("/srv/models", "a/../b") == "/srv/models/b"


def test_overload_is_shed_with_503_not_500(server):
    body = {"texts": [f"{TEXT} {i}" for i in range(512)]}
    with ThreadPoolExecutor(48) as pool:
        statuses = list(pool.map(lambda _: post("/predict", body).status_code, range(48)))
    assert set(statuses) <= {200, 503}, statuses
    assert 503 in statuses and 200 in statuses
    assert post("/predict", {"texts": [TEXT]}).status_code == 200


def test_autoscaling_goes_to_two_replicas_under_load_and_back(server):
    wait_for(lambda: running_replicas() == 1, 60, "one replica before the load")
    stop, results = threading.Event(), []
    body = {"texts": [f"{TEXT} {i}" for i in range(64)]}
    timeline = []
    with ThreadPoolExecutor(12) as pool:
        for _ in range(12):
            pool.submit(_load, stop, results, body, 2000)
        try:
            wait_for(lambda: timeline.append(running_replicas()) or timeline[-1] == 2, 60, "a second replica")
        finally:
            stop.set()
    assert {s for _, s, _, _ in results} <= {200}, {s for _, s, _, _ in results}
    wait_for(lambda: running_replicas() == 1, 60, "scale back down to one replica")


def test_distillery_serve_cli(models, tmp_path):
    """`distillery serve --model-dir DIR` in its own process: URL printed, routes answer, Ctrl-C stops it."""
    root, scorers = models
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": "", "DISTILLERY_SERVE_TOKEN": ""}
    env.pop("RAY_ADDRESS")
    cmd = [sys.executable, "-m", "distillery.cli", "serve", "--model-dir", str(root / "b"), "--port", str(CLI_PORT)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    lines = []
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if f"http://127.0.0.1:{CLI_PORT}" in line:
                break
        assert any(f"http://127.0.0.1:{CLI_PORT}" in line for line in lines), "".join(lines[-30:])
        r = requests.post(f"http://127.0.0.1:{CLI_PORT}/predict", json={"texts": [TEXT]}, timeout=30)
        assert r.status_code == 200 and r.json()["model_version"] == scorers["b"].version
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_shipped_serve_config_validates():
    from ray.serve.schema import ServeDeploySchema

    from distillery.serving.config import AppArgs, deployment_options
    from distillery.serving.config import load_serve_config

    config = load_serve_config()
    ServeDeploySchema.model_validate(copy.deepcopy(config))
    args = AppArgs.model_validate(config["applications"][0]["args"])
    assert args.model.model_dir == "demo/onnx" and args.batch.max_batch_rows >= 8
    assert deployment_options(config)["max_ongoing_requests"] > 5  # Serve's default would cap batches


def test_ingress_env_selects_the_path_and_falls_back_without_haproxy(monkeypatch):
    """The fast path's switches only where an HAProxy binary runs; arrival stamps on either path."""
    from distillery.serving import ingress
    from distillery.serving.arrival import CALLBACK, CALLBACK_ENV

    env, mode = ingress.ingress_env("proxy")
    assert mode == "proxy" and env[CALLBACK_ENV] == CALLBACK and "RAY_SERVE_ENABLE_HA_PROXY" not in env
    monkeypatch.setattr(ingress, "haproxy_binary", lambda: None)
    env, mode = ingress.ingress_env("auto")
    assert mode == "proxy" and "RAY_SERVE_ENABLE_HA_PROXY" not in env and env[CALLBACK_ENV] == CALLBACK
    with pytest.raises(RuntimeError, match="no runnable HAProxy"):
        ingress.ingress_env("haproxy")
    monkeypatch.setattr(ingress, "haproxy_binary", lambda: "/usr/sbin/haproxy")
    env, mode = ingress.ingress_env("auto")
    assert mode == "haproxy" and {k: env[k] for k in ingress.FAST_PATH_ENV} == ingress.FAST_PATH_ENV
    single = [int(env[f"RAY_SERVE_{k}_PORT"]) for k in ("HAPROXY_STATS", "HAPROXY_METRICS", "FALLBACK_PROXY_HTTP",
                                                       "FALLBACK_PROXY_GRPC")]
    lo, hi = ingress.ephemeral_ports()  # a port from there can be taken by any outbound connection
    assert len(set(single)) == 4 and not any(lo <= p <= hi for p in single), (single, lo, hi)
    env, _ = ingress.ingress_env("auto", local=False)  # a cluster keeps Ray's defaults
    assert "RAY_SERVE_HAPROXY_STATS_PORT" not in env and "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S" not in env
