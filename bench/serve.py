"""python bench/serve.py [--model-dir runs/demo/onnx] [--duration 30] [--concurrency 32] [--rows 8] [--ingress auto]

Ray Serve against raw ONNX Runtime on the same model, ORT threads and machine:

1. raw: `OnnxScorer.predict_proba` in this process at batch = `--rows` and batch = `max_batch_rows`
   (what Serve's batcher can reach); raw_rows_per_s is the better of the two;
2. Serve light load (1 replica): one client, one text per request, sequential -> p50 / p99 of the
   HTTP round trip seen by the client process; the same for /openrtb/2.6/bid on an IAB sample;
3. Serve saturation (1 replica, ORT threads as raw): `--concurrency` clients, `--rows` candidate
   rows per /predict request (the bidder pattern). Raw and Serve slices alternate (`--slices`) so
   load from other tenants of a shared machine drifts over both alike; serve_vs_raw = mean Serve
   rows/s over mean raw rows/s (best batch);
4. Autoscaling: a lightweight update to max `--max-replicas`, the same load for `--autoscale-s`,
   then `--cooldown-s` idle; the replica count is sampled every 0.5 s throughout.

The load comes from a separate process (`--client`, asyncio + aiohttp keep-alive connections).
Without `--model-dir` it exports a student-shaped model (all-MiniLM-L6-v2 cut to 2 layers, as
jobs/configs/train.yaml distills; random click head, so speed is real and scores are not) to
`--work/student_l2/onnx` and quantizes it to INT8.

The last line is one JSON object: raw_rows_per_s, serve_rows_per_s, serve_vs_raw, p50_ms_light,
p99_ms_light, max_replicas, replicas_over_time, ...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from distillery.metrics import percentiles

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "openrtb" / "iab-ortb26-simple-banner.json"


# -- load client (runs in its own process) ------------------------------------------------------


async def _client(spec: dict) -> dict:
    """Closed-loop load: `concurrency` workers, each POSTs its next body as soon as the last answers."""
    import aiohttp

    bodies = [json.dumps(b).encode() for b in spec["bodies"]]
    url, stop_at = spec["url"], time.perf_counter() + spec["duration_s"]
    latencies, statuses, rows = [], {}, 0
    warmup_until = time.perf_counter() + spec.get("warmup_s", 0.0)
    conn = aiohttp.TCPConnector(limit=spec["concurrency"], force_close=False)
    async with aiohttp.ClientSession(connector=conn, headers={"Content-Type": "application/json"}) as session:
        async def worker(k: int) -> None:
            nonlocal rows
            i = k
            while time.perf_counter() < stop_at and len(latencies) < spec.get("max_requests", 10**9):
                body = bodies[i % len(bodies)]
                i += spec["concurrency"]
                t0 = time.perf_counter()
                async with session.post(url, data=body) as resp:
                    await resp.read()
                    status = resp.status
                t1 = time.perf_counter()
                if t0 < warmup_until:
                    continue
                statuses[status] = statuses.get(status, 0) + 1
                latencies.append((t1 - t0) * 1000.0)
                if status == 200:
                    rows += spec["rows_per_request"]

        t_start = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(spec["concurrency"])))
        elapsed = time.perf_counter() - max(t_start, warmup_until)
    pct = percentiles(latencies)
    return {"requests": len(latencies), "statuses": {str(k): v for k, v in statuses.items()},
            "rows_per_s": round(rows / elapsed, 1), "requests_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": pct["p50"], "p99_ms": pct["p99"], "max_ms": round(max(latencies), 3) if latencies else None}


def run_client(spec: dict) -> dict:
    """Run `_client` in a separate Python process (so the load does not share our GIL)."""
    proc = subprocess.run([sys.executable, __file__, "--client"], input=json.dumps(spec), capture_output=True,
                          text=True, timeout=spec["duration_s"] + 120)
    if proc.returncode != 0:
        raise RuntimeError(f"load client failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- setup ----------------------------------------------------------------------------------------


def student_onnx(work: Path) -> Path:
    """A student-shaped INT8 ONNX folder: MiniLM's first 2 layers, exported and quantized (cached)."""
    out = work / "student_l2" / "onnx"
    if (out / "model_card.json").exists() and (out / "student.int8.onnx").exists():
        return out
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distillery.compress.export import export_onnx
    from distillery.compress.quantize import quantize_int8
    from distillery.models import default_backbone

    hf = work / "student_l2" / "hf"
    model = AutoModelForSequenceClassification.from_pretrained(default_backbone(), num_labels=1, num_hidden_layers=2)
    model.save_pretrained(hf)
    AutoTokenizer.from_pretrained(default_backbone()).save_pretrained(hf)
    export_onnx(str(hf), str(out), max_length=80, name="ctr")
    quantize_int8(str(out))
    return out


def workload(rows_per_request: int, n_requests: int = 200) -> list[list[str]]:
    """Groups of `rows_per_request` synthetic ad-log texts (a request context with candidate ads)."""
    from distillery.data.synthetic import SyntheticConfig, generate
    from distillery.data.text import to_text

    table = generate(SyntheticConfig(rows_train=1, rows_unlabeled=0, rows_test=rows_per_request * n_requests), "test")
    texts = [to_text(r) for r in table.to_pylist()]
    return [texts[i:i + rows_per_request] for i in range(0, len(texts), rows_per_request)]


def raw_throughput(scorer, groups: list[list[str]], batch: int, seconds: float) -> tuple[float, float]:
    """(rows/s, CPU ms per row) of the in-process scorer at a fixed batch size (tokenization included)."""
    texts = [t for g in groups for t in g]
    batches = [texts[i:i + batch] for i in range(0, len(texts) - batch + 1, batch)]
    for b in batches[:3]:
        scorer.predict_proba(b)
    rows, start, cpu0, i = 0, time.perf_counter(), time.process_time(), 0
    while time.perf_counter() - start < seconds:
        rows += len(scorer.predict_proba(batches[i % len(batches)]))
        i += 1
    return rows / (time.perf_counter() - start), (time.process_time() - cpu0) * 1000 / rows


def raw_latency_ms(scorer, texts: list[str], n: int = 300) -> dict[str, float | None]:
    """In-process `{"p50", "p99"}` of one text per call, ms."""
    lat = []
    for i in range(n + 20):
        t0 = time.perf_counter()
        scorer.predict_proba([texts[i % len(texts)]])
        if i >= 20:
            lat.append((time.perf_counter() - t0) * 1000)
    return percentiles(lat)


def serve_config(model_dir: Path, args, max_replicas: int) -> dict:
    """serve/serve_config.yaml with the bench's model, port and batching; `max_replicas` 1 pins one replica."""
    from distillery.serving.config import load_serve_config

    config = load_serve_config()
    config["http_options"] = {"host": "127.0.0.1", "port": args.port}
    app = config["applications"][0]
    app["args"].update(model_root=str(model_dir.parent), model={"model_dir": model_dir.name, "variant": args.variant},
                       intra_op_threads=args.threads, auth_token_env=None)
    app["args"]["batch"].update(max_batch_rows=args.max_batch_rows, batch_wait_timeout_ms=args.batch_wait_ms)
    dep = app["deployments"][0]
    dep["max_ongoing_requests"] = args.max_ongoing
    dep["max_queued_requests"] = 4 * args.concurrency
    dep["ray_actor_options"] = {"num_cpus": 0.5}
    dep["autoscaling_config"].update(min_replicas=1, initial_replicas=1, max_replicas=max_replicas,
                                     upscale_delay_s=3, downscale_delay_s=5)
    return config


def _raylet_pid() -> int:
    import ray

    return ray._private.worker.global_worker.node.all_processes["raylet"][0].process.pid


def serve_process_cpu_s(raylet_pid: int) -> dict[str, float]:
    """CPU seconds (user + sys) used so far by our Serve replica and proxy processes (the children of
    our raylet: other tenants may run Serve apps of the same name on this machine)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {"replica": 0.0, "proxy": 0.0}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) != raylet_pid:  # ppid
                continue
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            key = "replica" if "ServeReplica:distillery" in cmd else "proxy" if "ProxyActor" in cmd else None
            if key is not None:
                out[key] += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        except (OSError, IndexError, ValueError):
            continue
    return out


def replicas_over_time(stop: threading.Event, samples: list, t0: float) -> None:
    from ray import serve

    while not stop.wait(0.5):
        try:
            dep = serve.status().applications["distillery"].deployments["CTRServer"]
            samples.append((round(time.perf_counter() - t0, 1), dep.replica_states.get("RUNNING", 0)))
        except Exception:  # a status call racing a scale event: skip the sample
            continue


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", default=None, help="ONNX folder; default: export a 2-layer MiniLM student")
    p.add_argument("--work", default=str(REPO / "runs" / "bench_serve"), help="cache for the exported student")
    p.add_argument("--variant", default="int8")
    p.add_argument("--threads", type=int, default=1, help="ORT intra-op threads (raw and per replica)")
    p.add_argument("--rows", type=int, default=8, help="candidate rows per request at saturation")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--duration", type=float, default=30.0, help="seconds of 1-replica saturation load, in slices")
    p.add_argument("--slices", type=int, default=3, help="raw / Serve alternations")
    p.add_argument("--autoscale-s", type=float, default=30.0, help="seconds of load with autoscaling on")
    p.add_argument("--cooldown-s", type=float, default=15.0, help="seconds watched after the load stops")
    p.add_argument("--light-requests", type=int, default=500)
    p.add_argument("--max-batch-rows", type=int, default=64)
    p.add_argument("--batch-wait-ms", type=float, default=0.5)
    p.add_argument("--max-ongoing", type=int, default=32)
    p.add_argument("--max-replicas", type=int, default=2)
    p.add_argument("--port", type=int, default=18200)
    p.add_argument("--ingress", choices=("auto", "haproxy", "proxy"), default="auto",
                   help="auto: HAProxy + direct ingress where it runs (as shipped), else Serve's proxy")
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client:
        print(json.dumps(asyncio.run(_client(json.loads(sys.stdin.read())))))
        return

    model_dir = Path(args.model_dir).resolve() if args.model_dir else student_onnx(Path(args.work))
    groups = workload(args.rows)
    singles = [[g[0]] for g in groups]
    print(f"model {model_dir} ({args.variant}), {os.cpu_count()} cores visible, ORT threads {args.threads}", flush=True)

    from distillery.onnx_model.scorer import OnnxScorer

    scorer = OnnxScorer(str(model_dir), variant=args.variant, intra_op_threads=args.threads)
    raw_b1 = raw_latency_ms(scorer, [s[0] for s in singles])  # `raw` is taken below: rows/s by batch
    print(f"raw ORT in-process, batch   1: p50 {raw_b1['p50']:.2f} ms  p99 {raw_b1['p99']:.2f} ms", flush=True)

    import ray
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    def deploy(max_replicas: int) -> None:
        config = serve_config(model_dir, args, max_replicas)
        _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config))

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}})
    base = f"http://127.0.0.1:{args.port}"
    predict_bodies = [{"texts": g} for g in groups]
    try:
        from distillery.serving.ingress import controller_options, ingress_env

        env, ingress = ingress_env(args.ingress)  # the shipped request path unless told otherwise
        print(f"request path: {ingress}", flush=True)
        serve.start(http_options={"host": "127.0.0.1", "port": args.port}, controller_options=controller_options(env))
        deploy(max_replicas=1)  # one replica, the raw side's thread count: the like-for-like comparison
        _wait_ready(f"{base}/healthz")

        light = run_client({"url": f"{base}/predict", "bodies": [{"texts": s} for s in singles], "concurrency": 1,
                            "duration_s": 60, "max_requests": args.light_requests, "warmup_s": 2.0,
                            "rows_per_request": 1})
        print(f"serve light load, 1 text/request: p50 {light['p50_ms']:.2f} ms  p99 {light['p99_ms']:.2f} ms "
              f"({light['requests']} requests)", flush=True)
        rtb = None
        if SAMPLE.exists():
            bid = json.loads(SAMPLE.read_text())
            bid["tmax"] = 1000
            rtb = run_client({"url": f"{base}/openrtb/2.6/bid", "bodies": [bid], "concurrency": 1, "duration_s": 30,
                              "max_requests": 300, "warmup_s": 1.0, "rows_per_request": 1})
            print(f"serve OpenRTB 2.6 bid (5 candidates), light load: p50 {rtb['p50_ms']:.2f} ms  "
                  f"p99 {rtb['p99_ms']:.2f} ms statuses {rtb['statuses']}", flush=True)

        # Raw and Serve slices alternate so the other tenants' load drifts over both alike.
        raw_runs = {b: [] for b in sorted({args.rows, args.max_batch_rows})}
        raw_cpu = {b: [] for b in raw_runs}
        serve_runs, serve_cpu = [], []
        slice_s = args.duration / args.slices
        for k in range(args.slices + 1):
            for b in raw_runs:
                rate, cpu_ms = raw_throughput(scorer, groups, b, max(2.0, slice_s / 4))
                raw_runs[b].append(rate)
                raw_cpu[b].append(cpu_ms)
            if k == args.slices:
                break
            cpu0 = serve_process_cpu_s(_raylet_pid())
            serve_runs.append(run_client({"url": f"{base}/predict", "bodies": predict_bodies,
                                          "concurrency": args.concurrency, "duration_s": slice_s, "warmup_s": 0.0,
                                          "rows_per_request": args.rows}))
            cpu1 = serve_process_cpu_s(_raylet_pid())
            rows = serve_runs[-1]["rows_per_s"] * slice_s
            serve_cpu.append({k2: (cpu1[k2] - cpu0[k2]) * 1000 / max(rows, 1) for k2 in cpu0})
            print(f"  slice {k}: raw {' '.join(f'b{b}={v[-1]:.0f}' for b, v in raw_runs.items())} rows/s, "
                  f"serve {serve_runs[-1]['rows_per_s']:.0f} rows/s {serve_runs[-1]['statuses']}", flush=True)
        raw = {b: sum(v) / len(v) for b, v in raw_runs.items()}
        best_b = max(raw, key=raw.get)
        raw_cpu_ms = sum(raw_cpu[best_b]) / len(raw_cpu[best_b])
        serve_cpu_ms = {k2: sum(c[k2] for c in serve_cpu) / len(serve_cpu) for k2 in ("replica", "proxy")}
        raw_best = max(raw.values())
        serve_rows = sum(r["rows_per_s"] for r in serve_runs) / len(serve_runs)
        sat = serve_runs[-1]
        for b, v in raw.items():
            print(f"raw ORT in-process, batch {b:>3}: {v:8.0f} rows/s (mean of {len(raw_runs[b])} slices)", flush=True)
        print(f"serve saturation, 1 replica, {args.rows} rows/request x {args.concurrency} clients: {serve_rows:.0f} "
              f"rows/s -> serve/raw {serve_rows / raw_best:.2f} (last slice p50 {sat['p50_ms']:.0f} ms, "
              f"p99 {sat['p99_ms']:.0f} ms)", flush=True)
        print(f"CPU per row: raw {raw_cpu_ms:.2f} ms; serve replica {serve_cpu_ms['replica']:.2f} ms + proxy "
              f"{serve_cpu_ms['proxy']:.2f} ms", flush=True)

        deploy(max_replicas=args.max_replicas)  # lightweight update: autoscaling on, same replica
        stop, samples = threading.Event(), []
        t0 = time.perf_counter()
        sampler = threading.Thread(target=replicas_over_time, args=(stop, samples, t0), daemon=True)
        sampler.start()
        auto = run_client({"url": f"{base}/predict", "bodies": predict_bodies, "concurrency": args.concurrency,
                           "duration_s": args.autoscale_s, "warmup_s": 0.0, "rows_per_request": args.rows})
        time.sleep(args.cooldown_s)  # watch it scale back down
        stop.set()
        sampler.join()
        print(f"serve autoscaled (max {args.max_replicas}): {auto['rows_per_s']:.0f} rows/s {auto['statuses']}", flush=True)
        print("replicas over time (s, running): " + " ".join(f"{t}:{n}" for t, n in samples[::4]), flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()

    result = {
        "raw_rows_per_s": round(raw_best, 1),
        "raw_rows_per_s_by_batch": {str(b): round(v, 1) for b, v in raw.items()},
        "raw_p50_ms_batch1": raw_b1["p50"], "raw_p99_ms_batch1": raw_b1["p99"],
        "serve_rows_per_s": round(serve_rows, 1),
        "serve_vs_raw": round(serve_rows / raw_best, 3),
        "serve_rows_per_s_slices": [r["rows_per_s"] for r in serve_runs],
        "raw_rows_per_s_slices": {str(b): [round(x, 1) for x in v] for b, v in raw_runs.items()},
        "cpu_ms_per_row": {"raw": round(raw_cpu_ms, 3), "serve_replica": round(serve_cpu_ms["replica"], 3),
                           "serve_proxy": round(serve_cpu_ms["proxy"], 3)},
        "serve_cpu_efficiency_vs_raw": round(raw_cpu_ms / max(serve_cpu_ms["replica"] + serve_cpu_ms["proxy"], 1e-9), 3),
        "serve_p50_ms_saturation": sat["p50_ms"], "serve_p99_ms_saturation": sat["p99_ms"],
        "serve_statuses_saturation": [r["statuses"] for r in serve_runs],
        "p50_ms_light": light["p50_ms"], "p99_ms_light": light["p99_ms"],
        "openrtb_p50_ms_light": rtb["p50_ms"] if rtb else None, "openrtb_p99_ms_light": rtb["p99_ms"] if rtb else None,
        "serve_rows_per_s_autoscaled": auto["rows_per_s"], "autoscaled_statuses": auto["statuses"],
        "max_replicas": max((n for _, n in samples), default=0),
        "replicas_over_time": samples,
        "rows_per_request": args.rows, "concurrency": args.concurrency, "ort_threads": args.threads,
        "max_batch_rows": args.max_batch_rows, "batch_wait_ms": args.batch_wait_ms, "variant": args.variant,
        "cores_visible": os.cpu_count(), "load_avg_1m_end": round(os.getloadavg()[0], 1), "ingress": ingress,
    }
    print(json.dumps(result))


def _wait_ready(url: str, timeout_s: float = 120) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not become ready in {timeout_s}s")


if __name__ == "__main__":
    main()
