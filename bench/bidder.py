"""python bench/bidder.py [--model-dir runs/demo/onnx] [--two-tower-dir runs/demo/onnx_two_tower] [--quick]

The bidder's request path, measured side by side in one run on one machine (one ORT thread, one
replica, light load = one client, one request at a time on a keep-alive connection):

1. floors, a no-op FastAPI route: plain uvicorn (no Serve), Serve through its Python proxy,
   Serve's fast path (HAProxy -> the replica's direct-ingress server) and that replica's port alone;
2. `/predict` (1 text) through the served path, both paths, beside the same texts in process;
   serve_overhead_p50_ms / _p99_ms = HTTP minus in-process on the fast path, measured text by text
   alternately from this process (same model, same rows, same moments of the machine's load);
3. `/openrtb/2.6/bid` light load on the IAB banner sample (8 eligible creatives);
4. bid_ms: bid latency over HTTP by number of eligible candidates (1 ... 1024) from a generated
   catalog of 1,024 creatives in size groups (a request's formats pick the first N), a new request
   context (keywords) per bid, for the cross-encoder and, hot-swapped in, the two-tower student;
5. serve_vs_raw: saturation rows/s through Serve (1 replica, 32 clients x 8 rows) over in-process
   ORT at its best batch, slices alternating as in bench/serve.py; on the fast path, and through
   the proxy for comparison (saturation_proxy).

Without --model-dir it builds bench/serve.py's student (MiniLM cut to 2 layers, random head,
INT8); without --two-tower-dir a two-tower student of the same 2 layers (random head, INT8). Speed
is real, scores are not. About 5 minutes on 2 cores (--quick: about 3).
The last line is one JSON object; every figure is in ms unless its name says otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from distillery.metrics import percentiles
from distillery.serving.ingress import free_ports

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
COUNTS = (1, 8, 32, 128, 512, 1024)
GROUPS = (1, 7, 24, 96, 384, 512)  # creatives per size group: the first k groups hold COUNTS[k-1]
SAMPLE = REPO.parent / "shared" / "data" / "openrtb" / "iab-ortb26-simple-banner.json"


def _bench_module(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench_serve = _bench_module("serve")  # load client, student export, workload, raw throughput


# -- models -----------------------------------------------------------------------------------


def two_tower_onnx(work: Path) -> Path:
    """A two-tower student folder: MiniLM's first 2 layers as the shared tower, a fresh head, INT8 (cached)."""
    out = work / "two_tower_l2" / "onnx"
    if (out / "model_card.json").exists() and (out / "student.int8.onnx").exists():
        return out
    from distillery.compress.export_two_tower import export_two_tower
    from distillery.compress.quantize import quantize_int8
    from distillery.models import default_backbone
    from distillery.training.init import ModelInit, build_model

    model, tok = build_model(ModelInit(kind="two_tower", source=default_backbone(), layers=[0, 1]))
    student = work / "two_tower_l2" / "student"
    model.save_pretrained(str(student))
    tok.save_pretrained(str(student))
    export_two_tower(str(student), str(out), max_length=64)
    quantize_int8(str(out))
    return out


def model_mb(folder: Path, variant: str) -> float:
    """Size of what a replica loads: the variant's graph, the two-tower head, the tokenizer."""
    from distillery.onnx_model.card import ModelCard

    files = [folder / ModelCard.read(str(folder)).variants[variant]]
    files += [p for p in folder.iterdir() if p.suffix == ".npz" or p.name.startswith("tokenizer") or p.name == "vocab.txt"]
    return round(sum(p.stat().st_size for p in files if p.exists()) / 1e6, 2)


def write_catalog(path: Path) -> None:
    """1,024 creatives of distinct synthetic ads in size groups 301x250, 302x250, ...; the first 8
    also fit 300x250 (the IAB sample's slot)."""
    import yaml

    sys.path.insert(0, str(REPO / "bench"))
    from bidder_inprocess import catalog_ads

    ads, campaigns, k = catalog_ads(sum(GROUPS)), [], 0
    for g, n in enumerate(GROUPS):
        for _ in range(n):
            ad = ads[k]
            sizes = [f"{301 + g}x250"] + (["300x250"] if k < 8 else [])
            domain = f"adv{k}.example.com"
            campaigns.append({"id": f"c{k}", "advertiser": domain, "brand": ad["advertiser"],
                              "ad_category": ad["ad_category"], "iab_categories": ["IAB1"], "value_per_click": 5.0,
                              "max_bid_cpm": 20.0, "ads": [{"id": f"a{k}", "title": ad["ad_title"],
                                                            "description": ad["ad_description"], "sizes": sizes}]})
            k += 1
    path.write_text(yaml.safe_dump({"seat": "bench", "campaigns": campaigns}, sort_keys=False))


def bid_bodies(n: int, count: int, start: int = 0) -> list[dict]:
    """`count` bid requests with `n` eligible creatives each and a new request context per request."""
    groups = next(k + 1 for k, c in enumerate(COUNTS) if c == n)
    formats = [{"w": 301 + g, "h": 250} for g in range(groups)]
    return [{"id": f"b{n}-{i}", "tmax": 30000, "cur": ["USD"],
             "imp": [{"id": "1", "bidfloor": 0.0001, "banner": {"format": formats}}],
             "site": {"domain": "news.example.com", "page": f"https://news.example.com/a/{i}",
                      "keywords": f"running shoes trail {i}", "cat": ["IAB17"]},
             "device": {"os": "android", "devicetype": 4}, "user": {"id": f"u{i}"}}
            for i in range(start, start + count)]


# -- servers ----------------------------------------------------------------------------------


def noop_api():
    from fastapi import FastAPI

    api = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @api.post("/x")
    async def x() -> dict:
        return {"ok": 1}

    return api


def noop_app_builder(_args: dict | None = None):
    """Serve import_path `bidder:noop_app_builder`: the no-op route as a one-replica deployment."""
    from ray import serve

    @serve.deployment(name="Noop", num_replicas=1, max_ongoing_requests=32, ray_actor_options={"num_cpus": 0.25},
                      logging_config={"enable_access_log": False})
    @serve.ingress(noop_api())
    class Noop:
        pass

    return Noop.bind()


def light(url: str, bodies: list, requests: int, headers: dict | None = None) -> dict:
    """One client, one request at a time: p50 / p99 of the round trip, ms."""
    out = bench_serve.run_client({"url": url, "bodies": bodies, "concurrency": 1, "duration_s": 120,
                                  "max_requests": requests, "warmup_s": 1.0, "rows_per_request": 1})
    return {"p50": out["p50_ms"], "p99": out["p99_ms"], "requests": out["requests"], "statuses": out["statuses"]}


def direct_ports(env: dict[str, str], app_prefix: str) -> list[int]:
    """Replica direct-ingress ports HAProxy forwards to for the backend of `app_prefix`, from its config."""
    work = Path(env["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"]).parent
    lo, hi = int(env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"]), int(env["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"])
    ports, backend = [], ""
    for cfg in work.rglob("haproxy.cfg"):
        for line in cfg.read_text().splitlines():
            words = line.split()
            if words[:1] == ["backend"]:
                backend = words[1]
            elif words[:1] == ["server"] and app_prefix in backend:
                port = int(words[2].rsplit(":", 1)[1])
                if lo <= port <= hi:
                    ports.append(port)
    return ports


def app_config(model_root: Path, model_dir: Path, catalog: Path, port: int, args) -> dict:
    """serve/serve_config.yaml with the bench's model, catalog, port and one replica."""
    from distillery.serving.config import load_serve_config

    config = load_serve_config()
    config.pop("controller_options", None)  # the bench starts Serve itself, once per path
    config["http_options"] = {"host": "127.0.0.1", "port": port, "request_timeout_s": 120}
    app = config["applications"][0]
    app["args"].update(model_root=str(model_root), model={"model_dir": str(model_dir.relative_to(model_root)),
                                                          "variant": args.variant},
                       intra_op_threads=1, auth_token_env=None, auth="disabled")
    app["args"]["bidder"].update(catalog=str(catalog), max_candidates=1024)
    if args.batch_wait_ms is not None:
        app["args"]["batch"]["batch_wait_timeout_ms"] = args.batch_wait_ms
    dep = app["deployments"][0]
    dep.pop("autoscaling_config", None)
    dep.update(num_replicas=1, max_ongoing_requests=32, max_queued_requests=256, ray_actor_options={"num_cpus": 0.5})
    return config


def deploy(config: dict, apps: list[dict] | None = None) -> None:
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    config = {**config, "applications": config["applications"] + (apps or [])}
    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config))


def noop_app() -> dict:
    return {"name": "noop", "route_prefix": "/noop", "import_path": "bidder:noop_app_builder",
            "runtime_env": {"env_vars": {"PYTHONPATH": str(REPO / "bench"), "HF_HUB_OFFLINE": "1"}}}


def wait_status(url: str, timeout_s: float = 180, want: int = 200) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            req = urllib.request.Request(url, data=b"{}", method="POST") if url.endswith("/x") else url
            with urllib.request.urlopen(req, timeout=5) as r:
                if r.status == want:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer {want} within {timeout_s}s")


def served_version(base: str) -> str | None:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as resp:
            return json.loads(resp.read()).get("model_version")
    except OSError:
        return None


def asgi_floor(requests: int) -> dict:
    """The no-op route on plain uvicorn (no Serve) in its own process."""
    port = free_ports(1)[0]
    proc = subprocess.Popen([sys.executable, __file__, "--asgi-noop", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_status(f"http://127.0.0.1:{port}/x", 60)
        return light(f"http://127.0.0.1:{port}/x", [{}], requests)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def bids_over_http(base: str, counts, budget_s: float, max_calls: int) -> tuple[dict, dict]:
    """{"N": {"p50", "p99", "requests"}} and the statuses seen, per number of eligible candidates."""
    out, statuses = {}, {}
    for n in counts:
        probe = light(f"{base}/openrtb/2.6/bid", bid_bodies(n, 4, start=10**6), 1)  # warm-up, then one timed
        calls = int(max(5, min(max_calls, budget_s / max(probe["p50"] / 1000.0, 1e-3))))
        r = light(f"{base}/openrtb/2.6/bid", bid_bodies(n, calls + 5), calls)
        out[str(n)] = {"p50": r["p50"], "p99": r["p99"], "requests": r["requests"]}
        statuses[str(n)] = r["statuses"]
        print(f"  bid with {n:>4} candidates: p50 {r['p50']:.2f} ms  p99 {r['p99']:.2f} ms  ({r['requests']} bids, "
              f"{r['statuses']})", flush=True)
    return out, statuses


def paired_overhead(scorer, base: str, texts: list[str], n: int) -> dict:
    """In process and over HTTP alternately, text by text, from this process (one keep-alive
    connection): both sides see the same moments of a shared machine's load, so their difference
    is Serve's request path and not the drift between two separate runs."""
    import http.client

    conn = http.client.HTTPConnection(base.removeprefix("http://"), timeout=30)
    inproc, served = [], []
    for i in range(n + 20):
        text = texts[i % len(texts)]
        t0 = time.perf_counter()
        scorer.predict_proba([text])
        t1 = time.perf_counter()
        conn.request("POST", "/predict", body=json.dumps({"texts": [text]}), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        t2 = time.perf_counter()
        if resp.status != 200:
            raise RuntimeError(f"/predict answered {resp.status}")
        if i >= 20:
            inproc.append((t1 - t0) * 1000)
            served.append((t2 - t1) * 1000)
    conn.close()
    a, b = percentiles(inproc), percentiles(served)
    return {"inprocess": a, "http": b, "overhead_p50": round(b["p50"] - a["p50"], 3),
            "overhead_p99": round(b["p99"] - a["p99"], 3), "requests": n}


def _cpu_ticks() -> dict[str, dict[int, int]]:
    """CPU ticks (user + sys) so far: the model replica's per thread, HAProxy's, and the machine's
    busy total (`{"machine": {0: ticks}}`). The load client is not sampled: it has exited by the
    second snapshot, so it and Ray's own processes fall in `rest_of_machine`."""
    out: dict[str, dict[int, int]] = {"replica": {}, "haproxy": {}}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            key = "replica" if b"ServeReplica:distillery" in b" ".join(cmd) else "haproxy" if b"haproxy" in cmd[0] else None
            if key is None:
                continue
            for tid in os.listdir(f"/proc/{pid}/task") if key == "replica" else [pid]:
                f = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
                out[key][int(tid)] = int(f[11]) + int(f[12])
        except (OSError, IndexError, ValueError):
            continue
    cpu = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    out["machine"] = {0: sum(cpu) - cpu[3] - cpu[4]}  # all but idle, iowait
    return out


def _cpu_share(before: dict, after: dict, wall_s: float) -> dict:
    """Cores used between two `_cpu_ticks` snapshots: the replica's busiest two threads (the ORT thread
    and the event loop), the rest of the replica, HAProxy, everything else, the whole machine."""
    delta = {k: [v - before[k].get(i, 0) for i, v in after[k].items()] for k in after}
    threads = sorted(delta["replica"], reverse=True) + [0, 0]
    share = {"replica_thread_1": threads[0], "replica_thread_2": threads[1],
             "replica_other_threads": sum(threads[2:]), "haproxy": sum(delta["haproxy"])}
    share["rest_of_machine"] = delta["machine"][0] - sum(share.values())
    share["machine"] = delta["machine"][0]
    tick = os.sysconf("SC_CLK_TCK")
    return {k: round(v / tick / wall_s, 3) for k, v in share.items()}


def saturation(base: str, scorer, groups: list[list[str]], slices: int, slice_s: float) -> dict:
    """bench/serve.py's alternation: raw ORT (batch 8 and 64) then Serve, `slices` times; with the
    cores each process used during the Serve slices (`cores_used`: what limits the ratio)."""
    raw = {8: [], 64: []}
    served, shares = [], []
    bodies = [{"texts": g} for g in groups]
    for k in range(slices + 1):
        for b in raw:
            raw[b].append(bench_serve.raw_throughput(scorer, groups, b, max(2.0, slice_s / 3))[0])
        if k == slices:
            break
        before, t0 = _cpu_ticks(), time.perf_counter()
        served.append(bench_serve.run_client({"url": f"{base}/predict", "bodies": bodies, "concurrency": 32,
                                              "duration_s": slice_s, "warmup_s": 0.5, "rows_per_request": 8}))
        shares.append(_cpu_share(before, _cpu_ticks(), time.perf_counter() - t0))
    raw_best = max(sum(v) / len(v) for v in raw.values())
    serve_rows = sum(r["rows_per_s"] for r in served) / len(served)
    return {"raw_rows_per_s": round(raw_best, 1), "serve_rows_per_s": round(serve_rows, 1),
            "serve_vs_raw": round(serve_rows / raw_best, 3),
            "cores_used": {k: round(sum(s[k] for s in shares) / len(shares), 3) for k in shares[0]},
            "statuses": [r["statuses"] for r in served]}


# -- the run ----------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", default=None, help="cross-encoder ONNX folder; default: bench/serve.py's 2-layer student")
    p.add_argument("--two-tower-dir", default=None, help="two-tower ONNX folder; default: a 2-layer two-tower student")
    p.add_argument("--work", default=str(REPO / "runs" / "bench_serve"), help="cache for the built models")
    p.add_argument("--variant", default="int8")
    p.add_argument("--counts", type=int, nargs="+", default=list(COUNTS), choices=COUNTS)
    p.add_argument("--light-requests", type=int, default=400, help="requests per light-load figure")
    p.add_argument("--bid-budget-s", type=float, default=12.0, help="about this many seconds per candidate count")
    p.add_argument("--quick", action="store_true", help="fewer requests and shorter slices")
    p.add_argument("--batch-wait-ms", type=float, default=None,
                   help="the replica's batch.batch_wait_timeout_ms; default: serve_config.yaml's")
    p.add_argument("--asgi-noop", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.asgi_noop:
        import uvicorn

        uvicorn.run(noop_api(), host="127.0.0.1", port=args.asgi_noop, log_level="warning", access_log=False)
        return
    if args.quick:
        args.light_requests, args.bid_budget_s = 200, 6.0
    started = time.perf_counter()

    from distillery.hardware import cpu_info
    from distillery.serving.ingress import controller_options, ingress_env
    from distillery.onnx_model.card import ModelCard
    from distillery.onnx_model.scorer import OnnxScorer

    cpu = cpu_info()
    print(f"cpu: {cpu['model']}, {cpu['cores']} cores, isa {cpu['isa']}, flags {' '.join(cpu['flags'])}", flush=True)
    work = Path(args.work).resolve()
    cross_dir = Path(args.model_dir).resolve() if args.model_dir else bench_serve.student_onnx(work)
    two_tower_dir, two_tower_reason = None, None
    try:
        two_tower_dir = Path(args.two_tower_dir).resolve() if args.two_tower_dir else two_tower_onnx(work)
    except Exception as err:  # noqa: BLE001 - the bench still measures the cross-encoder
        two_tower_reason = f"no two-tower student folder: {type(err).__name__}: {err}"[:300]
    folders = [cross_dir] + ([two_tower_dir] if two_tower_dir else [])
    model_root = Path(os.path.commonpath([str(f) for f in folders]))
    if model_root in folders:
        model_root = model_root.parent
    catalog = work / "bench_catalog.yaml"
    write_catalog(catalog)

    # in process: the same texts /predict gets
    groups = bench_serve.workload(8, n_requests=100)
    singles = [[g[0]] for g in groups]
    scorer = OnnxScorer(str(cross_dir), variant=args.variant, intra_op_threads=1)
    inproc = bench_serve.raw_latency_ms(scorer, [s[0] for s in singles], n=args.light_requests)
    print(f"in process, 1 text: p50 {inproc['p50']:.2f} ms  p99 {inproc['p99']:.2f} ms", flush=True)

    floors = {"asgi_noop": asgi_floor(args.light_requests)}
    print(f"plain uvicorn no-op: {floors['asgi_noop']}", flush=True)

    import ray
    from ray import serve

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}})
    port = free_ports(1)[0]
    base = f"http://127.0.0.1:{port}"
    config = app_config(model_root, cross_dir, catalog, port, args)
    cfg_batch_wait = config["applications"][0]["args"]["batch"]["batch_wait_timeout_ms"]
    predict_bodies = [{"texts": s} for s in singles]
    result: dict = {}
    try:
        # Serve's Python proxy: the no-op floor and /predict
        env, _ = ingress_env("proxy")
        serve.start(http_options=config["http_options"], controller_options=controller_options(env))
        deploy(config, [noop_app()])
        wait_status(f"{base}/noop/x")
        wait_status(f"{base}/healthz")
        floors["serve_noop_proxy"] = light(f"{base}/noop/x", [{}], args.light_requests)
        predict_proxy = light(f"{base}/predict", predict_bodies, args.light_requests)
        print(f"proxy: no-op {floors['serve_noop_proxy']}  /predict {predict_proxy}", flush=True)
        deploy(config)  # the no-op app goes: its replica's CPU is not the model's
        sat_proxy = saturation(base, scorer, groups, *((1, 5.0) if args.quick else (2, 8.0)))
        print(f"proxy saturation: {sat_proxy}", flush=True)
        serve.shutdown()

        # the fast path, as shipped
        env, ingress = ingress_env("auto")
        serve.start(http_options=config["http_options"], controller_options=controller_options(env))
        deploy(config, [noop_app()])
        wait_status(f"{base}/noop/x")
        wait_status(f"{base}/healthz")
        if ingress == "haproxy":  # until HAProxy routes to the replicas, requests take the fallback proxy
            deadline = time.monotonic() + 120
            while not (direct_ports(env, "noop") and direct_ports(env, "distillery")) and time.monotonic() < deadline:
                time.sleep(0.5)
            time.sleep(3.0)  # HAProxy's first health checks
        floors["serve_noop_fast_path"] = light(f"{base}/noop/x", [{}], args.light_requests)
        if ingress == "haproxy" and (ports := direct_ports(env, "noop")):
            floors["serve_noop_direct_port"] = light(f"http://127.0.0.1:{ports[0]}/noop/x", [{}], args.light_requests)
        print(f"{ingress}: no-op {floors['serve_noop_fast_path']}  replica port {floors.get('serve_noop_direct_port')}",
              flush=True)
        deploy(config)  # the no-op app goes: its replica's CPU is not the model's

        predict_fast = light(f"{base}/predict", predict_bodies, args.light_requests)
        paired = paired_overhead(scorer, base, [t[0] for t in singles], args.light_requests)
        print(f"{ingress}: in process vs /predict, alternating: {paired}", flush=True)
        openrtb = None
        if SAMPLE.exists():
            sample = json.loads(SAMPLE.read_text())
            sample["tmax"] = 30000
            bodies = [{**sample, "id": f"s{i}", "site": {**sample["site"], "keywords": f"sample {i}"}}
                      for i in range(args.light_requests + 50)]
            openrtb = light(f"{base}/openrtb/2.6/bid", bodies, args.light_requests // 2)
        print(f"{ingress}: /predict {predict_fast}  /openrtb/2.6/bid (8 candidates) {openrtb}", flush=True)

        slices, slice_s = (2, 5.0) if args.quick else (3, 8.0)
        sat = saturation(base, scorer, groups, slices, slice_s)
        print(f"saturation: {sat}", flush=True)

        print("cross-encoder bids over HTTP:", flush=True)
        cross_bids, cross_statuses = bids_over_http(base, args.counts, args.bid_budget_s, 100)
        tt_bids, tt_statuses = None, None
        if two_tower_dir:
            swapped = json.loads(json.dumps(config))
            swapped["applications"][0]["deployments"][0]["user_config"] = {
                "model_dir": str(two_tower_dir.relative_to(model_root)), "variant": args.variant}
            deploy(swapped)  # hot swap: the replica encodes the 1,024 catalog ads once
            tt_version = ModelCard.read(str(two_tower_dir)).version
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                if served_version(base) == tt_version:
                    break
                time.sleep(1.0)
            else:
                two_tower_reason = "the hot swap to the two-tower student did not finish in 180 s"
            if two_tower_reason is None:
                print("two-tower bids over HTTP:", flush=True)
                tt_bids, tt_statuses = bids_over_http(base, args.counts, args.bid_budget_s, 200)
    finally:
        serve.shutdown()
        ray.shutdown()

    overhead = {"p50": paired["overhead_p50"], "p99": paired["overhead_p99"]}
    tt128 = (tt_bids or {}).get("128")
    tt1024 = (tt_bids or {}).get("1024")
    best128 = min((b["128"] for b in (tt_bids, cross_bids) if b and "128" in b), key=lambda b: b["p50"], default=None)
    result.update({
        "cpu_flags": cpu, "ingress": ingress,
        "floors_ms": floors,
        "predict_light_ms": {"inprocess_1_text": inproc, ingress: predict_fast, "proxy": predict_proxy},
        "openrtb_light_ms": None if openrtb is None else {**openrtb, "candidates": 8},
        "serve_overhead_p50_ms": overhead["p50"], "serve_overhead_p99_ms": overhead["p99"],
        "serve_overhead_paired": paired,
        "bid_ms": {"two_tower": tt_bids, "cross": cross_bids},
        "bid_statuses": {"two_tower": tt_statuses, "cross": cross_statuses},
        "two_tower_reason": two_tower_reason,
        "serve_vs_raw": sat["serve_vs_raw"], "saturation": sat, "saturation_proxy": sat_proxy,
        "model_mb": {"cross": model_mb(cross_dir, args.variant),
                     "two_tower": model_mb(two_tower_dir, args.variant) if two_tower_dir else None},
        "goals": {
            "serve_overhead_p50_le_2ms": overhead["p50"] <= 2.0, "serve_overhead_p99_le_5ms": overhead["p99"] <= 5.0,
            "bid_128_p50_le_10ms_p99_le_20ms": None if best128 is None else best128["p50"] <= 10 and best128["p99"] <= 20,
            "bid_1024_p99_le_30ms_two_tower": None if tt1024 is None else tt1024["p99"] <= 30,
            "serve_vs_raw_ge_0_9": sat["serve_vs_raw"] >= 0.9,
        },
        "two_tower_128": tt128,
        "variant": args.variant, "ort_threads": 1, "cores_visible": os.cpu_count(),
        "batch_wait_timeout_ms": cfg_batch_wait,
        "load_avg_1m_end": round(os.getloadavg()[0], 1), "wall_s": round(time.perf_counter() - started, 1),
    })
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
