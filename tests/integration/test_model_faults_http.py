"""Model faults are the server's, over real HTTP on 127.0.0.1:19400 with a local Ray and one replica:
a model answering NaN or raising in ONNX Runtime gets 503 (valid JSON) on /predict and OIP infer and
a no-bid with nbr 1 on OpenRTB, never a 500 or a 4xx; failed batches in a row make the replica
unhealthy so Serve replaces it; a hot swap to a model that loads but cannot score is refused and
never becomes the last good model; a client gone mid-body is counted, not logged as an error; a bid
body slower than the bid deadline is answered 408 in time.

The models are tiny hand-built ONNX graphs (`save_graph_model`, tests/unit/test_model_faults.py).
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
import requests

from helpers import APP, deploy, replica_actors, serve_config_for_test, serve_on, wait_for
from tinymodels import save_graph_model

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PORT = 19400
URL = f"http://127.0.0.1:{PORT}"
TOKEN_ENV = "DISTILLERY_SERVE_TOKEN"
TOKEN = "faults-token-7e21"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TEXT = "query: running shoes | site: sports | ad: Marathon-ready footwear | ad category: sports"
VERSIONS = {"good1": "good-1", "good2": "good-2", "nan": "nan-1", "broken": "broken-1"}
MAX_FAILURES = 5  # health.max_consecutive_failures of the shipped serve config


@pytest.fixture(scope="module")
def root(tiny_bert, tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("fault_models")
    graphs = {"good1": ("finite", 0.05), "good2": ("finite", 0.02), "nan": ("nan", 1.0), "broken": ("ort_error", 1.0)}
    for name, (graph, scale) in graphs.items():
        save_graph_model(base / name, tiny_bert, graph, VERSIONS[name], scale=scale)
    return base


def config(root: Path, start: str, swap_to: str | None = None) -> dict:
    """The shipped serve config: one small replica starting on `start`, `user_config` naming `swap_to`."""
    cfg = serve_config_for_test(PORT, root, TOKEN_ENV, TOKEN, request_timeout_s=10)
    app = cfg["applications"][0]
    app["args"]["model"] = {"model_dir": start, "variant": "int8"}
    dep = app["deployments"][0]
    dep.pop("autoscaling_config", None)
    dep.update(num_replicas=1, ray_actor_options={"num_cpus": 0.25}, health_check_period_s=1,
               health_check_timeout_s=5, user_config={"model_dir": swap_to or start, "variant": "int8"})
    return cfg


@pytest.fixture(scope="module")
def server(local_ray, root):
    from ray import serve

    with serve_on(PORT):
        yield root
        serve.delete(APP)


def health() -> dict | None:
    try:
        r = requests.get(f"{URL}/healthz", headers=AUTH, timeout=2)
        return r.json() if r.status_code == 200 else None
    except requests.RequestException:
        return None


def serving(root: Path, start: str, swap_to: str | None = None) -> dict:
    """Deploy, then wait until the replica answers with the version of `swap_to or start`."""
    deploy(config(root, start, swap_to))
    want = VERSIONS[swap_to or start]
    return wait_for(lambda: (h := health()) and h["model_version"] == want and h, 180, f"version {want}")


def strict_json(text: str):
    """JSON as the spec reads it: `NaN` / `Infinity` are not JSON."""
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"invalid JSON constant {c} in {text[:200]}"))


def bid_body(request_id: str) -> dict:
    """A bid request for 8 catalog creatives, tmax 10 s: what is under test is the model's answer, and a
    busy 2-core host can spend a second before a fresh replica scores (a no-bid nbr 15 otherwise)."""
    from distillery.loadtest import bid_request
    from distillery.serving.catalog import load_catalog

    sizes = sorted({s for ad in load_catalog().candidates() for s in ad.creative.sizes})
    formats = [{"w": int(s.split("x")[0]), "h": int(s.split("x")[1])} for s in sizes]
    return bid_request({"keywords": "running shoes"}, formats, request_id, tmax_ms=10_000)


INFER = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": [TEXT, TEXT + " b"]}]}


def assert_model_fault_answers(kind: str, version: str) -> None:
    """503 with a JSON error naming `kind` on /predict and OIP infer; 200 no-bid nbr 1 on both OpenRTB routes."""
    r = requests.post(f"{URL}/predict", json={"texts": [TEXT]}, headers=AUTH, timeout=10)
    assert r.status_code == 503, (r.status_code, r.text[:300])
    assert kind in strict_json(r.text)["error"] and r.headers["x-model-version"] == version
    r = requests.post(f"{URL}/v2/models/ctr/infer", json=INFER, headers=AUTH, timeout=10)
    assert r.status_code == 503, (r.status_code, r.text[:300])
    assert kind in strict_json(r.text)["error"]
    for openrtb in ("2.5", "2.6"):
        body = bid_body(f"fault-{openrtb}")
        r = requests.post(f"{URL}/openrtb/{openrtb}/bid", json=body, headers=AUTH, timeout=10)
        assert r.status_code == 200, (openrtb, r.status_code, r.text[:300])
        answer = strict_json(r.text)
        assert answer["id"] == body["id"] and answer["nbr"] == 1 and "seatbid" not in answer, answer
        assert "model fault" in r.headers["x-no-bid-reason"]
    bad = requests.post(f"{URL}/predict", json={"texts": [""]}, headers=AUTH, timeout=10)
    assert bad.status_code == 400  # the request's own fault stays a 4xx


def test_nan_model_answers_503_and_no_bid_then_the_replica_is_replaced(server):
    root = server
    serving(root, "nan")
    before = replica_actors()
    assert_model_fault_answers("non_finite", VERSIONS["nan"])  # 4 failed batches (one per request) so far
    assert health()["status"] == "ok"  # fewer than MAX_FAILURES in a row
    for _ in range(MAX_FAILURES - 4):
        assert requests.post(f"{URL}/predict", json={"texts": [TEXT]}, headers=AUTH, timeout=10).status_code == 503
    h = health()
    assert h["status"] == "degraded" and "in a row" in h["health_problem"], h
    assert h["counts"]["model_faults.non_finite"] == MAX_FAILURES, h
    assert requests.get(f"{URL}/healthz", timeout=5).json() == {"status": "degraded"}  # anonymous: no details
    # check_health raises: Serve replaces the replica (3 failed checks at 1 s, then a new one starts)
    wait_for(lambda: (now := replica_actors()) and not now & before, 120, "Serve to replace the unhealthy replica")
    fresh = wait_for(health, 120, "the replacement to answer")
    assert fresh["status"] == "ok" and fresh["counts"] == {}


def test_onnx_runtime_error_answers_503_not_422(server):
    serving(server, "broken")
    assert_model_fault_answers("runtime_error", VERSIONS["broken"])
    assert health()["counts"]["model_faults.runtime_error"] == 4


def test_swap_to_a_model_that_cannot_score_is_refused_and_never_last_good(server):
    import ray

    root = server
    serving(root, "good1")
    serving(root, "good1", "good2")  # a good swap: recorded as the last good model
    for bad in ("broken", "nan"):
        deploy(config(root, "good1", bad))
        h = wait_for(lambda: (h := health()) and bad in str(h["configured"]) and h["swap_error"] and h, 60,
                     f"the swap to {bad} to be refused")
        assert "canary" in h["swap_error"] and h["model_version"] == VERSIONS["good2"], h
        assert h["counts"]["model_faults.canary"] >= 1
        r = requests.post(f"{URL}/predict", json={"texts": [TEXT]}, headers=AUTH, timeout=10)
        assert r.status_code == 200 and r.json()["model_version"] == VERSIONS["good2"]
        assert requests.get(f"{URL}/healthz", timeout=5).json() == {"status": "degraded"}
    # a new replica loads the last good model (good2), not the refused one nor the start model
    (victim,) = replica_actors()
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    h = wait_for(lambda: victim not in replica_actors() and (h := health()) and h["replica"] not in victim and h,
                 120, "a replacement replica")
    assert h["model_version"] == VERSIONS["good2"] and "canary" in h["swap_error"], h
    serving(root, "good1", "good1")


def _raw_request(path: str, body: bytes, send: int, declared: int | None = None) -> socket.socket:
    """A connection that sent the headers of POST `path` and the first `send` bytes of `body`."""
    sock = socket.create_connection(("127.0.0.1", PORT), timeout=10)
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {declared or len(body)}\r\n\r\n").encode()
    sock.sendall(head + body[:send])
    return sock


def _replica_log(replica: str) -> str:
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    return "".join(p.read_text(errors="replace") for p in logs.glob(f"replica_*{replica}*.log"))


def test_client_gone_mid_body_is_counted_not_logged_as_an_error(server):
    h = serving(server, "good1")
    body = json.dumps({"texts": [TEXT] * 50}).encode()
    for _ in range(3):
        sock = _raw_request("/predict", body, send=100)
        time.sleep(0.3)
        sock.close()
    time.sleep(1.5)  # the replica sees each disconnect, and Serve's log handler flushes, asynchronously
    log = _replica_log(h["replica"])
    assert log, "no replica log found"
    assert "Traceback" not in log and "unhandled error" not in log and " 500 " not in log, log[-2000:]
    counted = wait_for(lambda: (h := health()) and h.get("counts", {}).get("client_disconnects", 0) >= 1 and h, 30,
                       "the disconnects to be counted")
    print(f"\nclient disconnects counted: {counted['counts']}")
    assert requests.post(f"{URL}/predict", json={"texts": [TEXT]}, headers=AUTH, timeout=10).status_code == 200


def test_slow_bid_body_is_answered_within_the_bid_deadline(server):
    serving(server, "good1")
    body = json.dumps(bid_body("slow-body")).encode()
    sock = _raw_request("/openrtb/2.6/bid", body, send=len(body) // 2)
    try:
        sock.settimeout(5.0)
        t0 = time.monotonic()
        try:
            answer = sock.recv(4096)
        except socket.timeout:
            pytest.fail("no answer 5 s after a bid's body stalled: the read ignores the bid deadline")
        took = time.monotonic() - t0
        # default_tmax_ms (100 ms) bounds the read; seconds of slack for a busy 2-core host
        assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
        assert took < 3.0, took  # the body read ignoring the deadline: 10 s (Serve's request timeout)
        # the replica was not held: a whole bid is answered while the slow client still holds its socket
        r = requests.post(f"{URL}/openrtb/2.6/bid", json=bid_body("after-slow"), headers=AUTH, timeout=10)
        assert r.status_code == 200 and strict_json(r.text)["id"] == "after-slow"
    finally:
        sock.close()
    assert health()["counts"].get("body_timeouts", 0) >= 1
