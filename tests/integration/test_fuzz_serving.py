"""Bad input over real HTTP (127.0.0.1:19200, local Ray, auth on): a corpus of malformed requests per
route, property-based bodies (hypothesis) for every POST route, and schemathesis cases generated from
the Open Inference Protocol spec in the shared data (`oip/open_inference_rest.yaml`; skipped with a
reason when absent). The contract: no response is a 5xx, and the same replica keeps serving (its
actor is never replaced).
"""

from __future__ import annotations

import json

import pytest
import requests
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import (APP, answers_health, deploy, export_int8, serve_on, replica_actors, serve_config_for_test,
                     wait_for)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PORT = 19200
URL = f"http://127.0.0.1:{PORT}"
TOKEN_ENV = "DISTILLERY_SERVE_TOKEN"
TOKEN = "fuzz-token-51d2"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON_CT = {"Content-Type": "application/json"}
POST_ROUTES = ["/predict", "/v2/models/ctr/infer", "/openrtb/2.5/bid", "/openrtb/2.6/bid"]
HTTP = requests.Session()


@pytest.fixture(scope="module")
def server(local_ray, tiny_bert, tmp_path_factory):
    """One replica with auth on; yields its actor name (which must not change while fuzzing)."""
    from ray import serve

    root = tmp_path_factory.mktemp("fuzz_root")
    export_int8(tiny_bert, root / "a")
    config = serve_config_for_test(PORT, root, TOKEN_ENV, TOKEN)
    app = config["applications"][0]
    app["args"]["limits"].update(max_body_bytes=50_000, max_rows=64, max_text_chars=500)
    dep = app["deployments"][0]
    dep.pop("autoscaling_config", None)
    dep.update(num_replicas=1, ray_actor_options={"num_cpus": 0.25})
    with serve_on(PORT):
        deploy(config)
        wait_for(lambda: answers_health(URL, HTTP) and replica_actors(), 180, "the app to come up", every_s=0.5)
        (replica,) = replica_actors()
        yield replica
        serve.delete(APP)


def send(method: str, path: str, data: bytes | None = None, headers: dict | None = None) -> requests.Response:
    return HTTP.request(method, f"{URL}{path}", data=data, headers={**AUTH, **(headers or {})}, timeout=30)


def assert_not_5xx(r: requests.Response, what) -> None:
    assert r.status_code < 500, (what, r.status_code, r.text[:300])
    if r.status_code >= 400:  # a refusal names the problem
        assert r.json()["error"], what


# ------------------------------------------------------------------------------- corpus

BANNER_REQ = {"id": "r1", "tmax": 500, "imp": [{"id": "1", "banner": {"w": 300, "h": 250}, "bidfloor": 0.01}],
              "site": {"page": "https://example.com/running-shoes"}, "device": {"devicetype": 2}}


HUGE = 10 ** 400  # past 2**63: no float holds it


def _bid(**changes) -> bytes:
    return json.dumps({**BANNER_REQ, **changes}).encode()


def _imp(**changes) -> bytes:
    return _bid(imp=[{**BANNER_REQ["imp"][0], **changes}])


COMMON = [  # sent to every POST route
    b"", b" ", b"null", b"0", b"-1e999", b"NaN", b"Infinity", b'"text"', b"[]", b"{}", b"[{}]", b"{", b"}",
    b'{"a":1,"a":2}', b"\xff\xfe\xfd", b'{"k": "\\ud800"}', b'{"k": "\x00"}', b"\xef\xbb\xbf{}",
    b"[" * 33 + b"]" * 33, b'{"a":' * 40 + b"1" + b"}" * 40, b'{"' + b"k" * 10_000 + b'": 1}',
    json.dumps({"texts": ["x"]}).encode()[:-1], b'{"texts": ["a"]}' + b"\x00" * 10,
]
CORPUS = {
    "/predict": [
        b'{"texts": null}', b'{"texts": "abc"}', b'{"texts": [null]}', b'{"texts": [["a"]]}', b'{"texts": [""]}',
        b'{"texts": ["   "]}', b'{"texts": [1e400]}', b'{"texts": [NaN]}', b'{"texts": ["' + b"x" * 600 + b'"]}',
        json.dumps({"texts": ["x"] * 65}).encode(), b'{"rows": [null]}', b'{"rows": [[]]}', b'{"rows": {}}',
        b'{"rows": [{"hour": NaN, "query": "q", "ad_title": "t"}]}', b'{"rows": [{"hour": 1e308}]}',
        b'{"rows": [{"hour": -99999999999999999999999}]}', b'{"rows": [{"position": true}]}',
        b'{"rows": [{"query": ["a"]}]}', b'{"rows": [{"id": 5, "query": "q"}]}', b'{"rows": [{"\\u0000": "x"}]}',
        b'{"rows": [{"query": "q", "ad_title": "t"}], "texts": ["a"]}', b'{"id": [], "texts": ["a"]}',
        b'{"texts": ["ok", "bad \\ud800 text"]}', b'{"texts": ["\\udfff"]}', b'{"rows": [{"query": "q\\ud800"}]}',
        b'{"texts": [' + b"9" * 5000 + b']}',
    ],
    "/v2/models/ctr/infer": [
        b'{"inputs": null}', b'{"inputs": [null]}', b'{"inputs": [{"name": "text"}]}',
        b'{"inputs": [{"name": "text", "datatype": "BYTES"}]}',
        b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": null, "data": ["a"]}]}',
        b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1], "data": ["a"]}]}',
        b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1e20], "data": ["a"]}]}',
        b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [99999999999, 99999999999], "data": ["a"]}]}',
        b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1.5], "data": ["a"]}]}',
        b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [true], "data": ["a"]}]}',
        b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [[[["a"]]]]}]}',
        b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [{"a": 1}]}]}',
        b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [0], "data": []}]}',
        b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"], "parameters": []}]}',
        b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 99}}]}',
        b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}], "outputs": [{"name": 1}]}',
        b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}], "outputs": {}}',
        b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}], "parameters": 3}',
        b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]}], "id": {}}',
        b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [' + b"9" * 3001 + b", " + b"9" * 3001
        + b'], "data": ["a"]}]}',
        b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a \\ud800"]}]}',
    ],
    "/openrtb/2.6/bid": [
        _bid(imp={}), _bid(imp=[None]), _bid(imp=[[]]), _bid(id=None), _bid(id=""), _bid(tmax=-5), _bid(tmax="fast"),
        _bid(tmax=1e308), _bid(cur="USD"), _bid(cur=[1]), _bid(bcat="IAB1"), _bid(badv=[None]), _bid(wseat=[{}]),
        _bid(site=[]), _bid(device="x"), _bid(user=5), _bid(app={"bundle": ["x"]}), _bid(imp=[{"id": "1"}] * 600),
        _imp(banner=None), _imp(banner={"w": "300", "h": -1}), _imp(banner={"format": [{"w": None}]}),
        _imp(banner={"format": "300x250"}), _imp(bidfloor="cheap"), _imp(bidfloor=-1), _imp(bidfloor=1e308),
        _imp(bidfloorcur=7), _imp(native={"request": "{not json"}), _imp(native={"request": 5}),
        _imp(native={"request": json.dumps({"assets": "x"})}), _imp(video={"w": [], "mimes": 3}),
        _imp(pmp={"private_auction": 1, "deals": [{"id": None, "bidfloor": "x"}]}), _imp(pmp={"deals": {}}),
        _imp(id=5), _imp(id=None),
        # issue 14: each of these answered 500 (or bid) before
        _imp(video={"w": 640, "h": 480, "format": 5}, banner=None), _imp(pmp={"deals": 5}), _imp(pmp={"deals": [5]}),
        _imp(native={"request": "[" * 100_000}, banner=None), _bid(tmax=-5), _bid(tmax=0),
        _bid(ts=1e20), _bid(ts=-5), _bid(ts="0001-01-01T00:00:00"), _bid(ext={"ts": 1e20}),
        _bid(tmax=HUGE), _bid(ts=HUGE), _imp(bidfloor=HUGE), _imp(pmp={"deals": [{"id": "d", "bidfloor": HUGE}]}),
        _bid(imp=[{"id": str(i), "banner": {"w": 300, "h": 250}} for i in range(2000)]),
        _bid(id="r\ud800"), b'{"id": "r", "tmax": ' + b"1" * 5000 + b', "imp": []}',
    ],
}
CORPUS["/openrtb/2.5/bid"] = CORPUS["/openrtb/2.6/bid"]
BINARY_OIP = [  # (body, Inference-Header-Content-Length)
    (b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 8}}]}'
     + b"\xff\xff\xff\x7f" + b"abcd", None),
    (b'{"inputs": []}' + b"\x00" * 8, "x"), (b'{"inputs": []}', "-3"), (b'{"inputs": []}', "999999"),
    (b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 6}}]}'
     + b"\x02\x00\x00\x00\xff\xfe", "103"),
    (b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": 5}}]}'
     + b"\x01\x00\x00\x00a", "103"),
]
_TAIL = b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 60004}}]}'
BINARY_OIP.append((_TAIL + (60_000).to_bytes(4, "little") + b"x" * 60_000, str(len(_TAIL))))  # tail over the 50 KB limit


def test_malformed_corpus_gets_no_5xx_and_the_replica_stays(server):
    sent = 0
    for path in POST_ROUTES:
        for body in COMMON + CORPUS[path]:
            for headers in (JSON_CT, {"Content-Type": "text/plain"}):
                assert_not_5xx(send("POST", path, body, headers), (path, body[:80], headers))
                sent += 1
    for path in POST_ROUTES:  # chunked (no declared length) and over the 50 KB limit: refused while reading
        big = b'{"texts": ["' + b"x" * 80_000 + b'"]}'
        r = HTTP.post(f"{URL}{path}", data=iter([big[:30_000], big[30_000:]]), headers={**AUTH, **JSON_CT}, timeout=30)
        assert r.status_code == 413, (path, r.status_code)
        sent += 1
    for body, length in BINARY_OIP:
        headers = {"Content-Type": "application/octet-stream"}
        if length is not None:
            headers["Inference-Header-Content-Length"] = length
        assert_not_5xx(send("POST", "/v2/models/ctr/infer", body, headers), (body[:60], length))
        sent += 1
    odd = [("GET", "/v2/models/%00"), ("GET", "/v2/models/ctr/versions/..%2F..%2Fetc"), ("GET", "/v2/models/" + "x" * 5000),
           ("DELETE", "/predict"), ("PUT", "/v2/models/ctr/infer"), ("GET", "/openrtb/2.7/bid"), ("POST", "/v2/health/live"),
           ("GET", "/predict?texts=a"), ("POST", "/predict?x=" + "y" * 3000)]
    for method, path in odd:
        assert_not_5xx(send(method, path, b"{}", JSON_CT), (method, path[:80]))
        sent += 1
    for name, value in [("Content-Length", "abc"), ("Content-Length", "-1"), ("Authorization", f"Bearer {TOKEN} extra"),
                        ("Content-Type", "application/json; charset=latin-1")]:
        try:
            r = HTTP.post(f"{URL}/predict", data=b'{"texts": ["a"]}', headers={**AUTH, name: value}, timeout=30)
        except requests.RequestException:
            continue  # the client refused to send it; nothing reached the server
        assert_not_5xx(r, (name, value))
        sent += 1
    print(f"\ncorpus: {sent} malformed requests, 0 answered 5xx")
    assert replica_actors() == {server}
    assert HTTP.get(f"{URL}/healthz", timeout=5).status_code == 200


# ------------------------------------------------------------------------------- hypothesis over HTTP

KEYS = st.sampled_from(["texts", "rows", "id", "inputs", "outputs", "parameters", "name", "datatype", "shape", "data",
                        "imp", "banner", "w", "h", "format", "site", "app", "device", "tmax", "cur", "bidfloor",
                        "native", "request", "pmp", "deals", "query", "ad_title", "hour"]) | st.text(max_size=6)
SCALARS = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.integers(-10**400, 10**400) | st.floats()
           | st.text(max_size=12) | st.text(st.characters(min_codepoint=0xD7F0, max_codepoint=0xE010,
                                                           categories=["Cs", "Lo", "Co"]), max_size=6)
           | st.sampled_from(["text", "BYTES", "ctr", "USD", "300x250", "a\ud800", "0001-01-01T00:00:00", 1e20, -5]))
JSON = st.recursive(SCALARS, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(KEYS, kids, max_size=5),
                    max_leaves=25)
HTTP_FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)


@pytest.mark.parametrize("path", POST_ROUTES)
def test_property_based_bodies_get_no_5xx(server, path):
    @HTTP_FUZZ
    @given(JSON | st.fixed_dictionaries({"texts": JSON}) | st.fixed_dictionaries({"inputs": st.lists(JSON, max_size=2)})
           | st.fixed_dictionaries({"id": JSON, "imp": st.lists(st.dictionaries(KEYS, JSON, max_size=4), max_size=3)}))
    def check(body):
        # json.dumps writes NaN/Infinity literals; the server must refuse or accept them, never fail
        assert_not_5xx(send("POST", path, json.dumps(body).encode(), JSON_CT), body)

    check()
    assert replica_actors() == {server}


# ------------------------------------------------------------------------------- schemathesis (OIP spec)


def test_schemathesis_against_the_oip_spec(server, shared_data):
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode, openapi

    spec = shared_data / "oip" / "open_inference_rest.yaml"
    if not spec.exists():
        pytest.skip(f"OIP spec absent at {spec}")
    # The spec writes path templates as `${MODEL_NAME}`; OpenAPI's are `{MODEL_NAME}` (else every
    # generated path would read `/v2/models/$ctr/...` and never reach the infer parser).
    raw = yaml.safe_load(spec.read_text())
    raw["paths"] = {path.replace("${", "{"): item for path, item in raw["paths"].items()}
    schema = openapi.from_dict(raw)
    version = HTTP.get(f"{URL}/v2/models/ctr", headers=AUTH, timeout=10).json()["versions"][0]
    counts: dict[str, int] = {}
    statuses: dict[int, int] = {}
    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            for params in ({"MODEL_NAME": "ctr", "MODEL_VERSION": version}, None):
                if params is None and "MODEL_NAME" not in op.path:
                    continue
                kwargs = {"path_parameters": params} if params and "MODEL_NAME" in op.path else {}

                @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
                @given(op.as_strategy(generation_mode=mode, **kwargs))
                def check(case):
                    r = case.call(base_url=URL, session=HTTP, headers=AUTH, timeout=30)
                    assert r.status_code < 500, (case.method, case.formatted_path, case.body, r.status_code, r.text[:300])
                    key = f"{op.method.upper()} {op.path}"
                    counts[key] = counts.get(key, 0) + 1
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

                try:
                    check()
                except Unsatisfiable:  # negative mode: an operation without inputs has nothing to break
                    assert mode is GenerationMode.NEGATIVE, (op.method, op.path)
    print(f"\nschemathesis: {sum(counts.values())} cases over {len(counts)} OIP operations, 0 answered 5xx: {counts}; statuses {statuses}")
    assert len(counts) == 6
    assert statuses.get(200, 0) > 0 and statuses.get(400, 0) > 0  # cases reached the handlers, good and bad
    assert replica_actors() == {server}
