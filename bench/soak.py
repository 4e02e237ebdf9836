"""Serving soak: repeat the fault scenarios of tests/integration/test_faults_serving.py and report figures.

    .venv/bin/python bench/soak.py [--kills 5] [--overloads 2] [--swaps 3] [--clients 60,150] [--out bench/soak.json]

Starts a local Ray (4 logical CPUs) and Serve on 127.0.0.1:19300 with two replicas of a tiny random
BERT exported to ONNX INT8, auth on; then, N times each: kill a replica under steady load (failed
requests, time until Serve has replaced it), overload with many closed-loop clients (503 shed, p99 of
accepted requests, recovery), hot swap under load (failed requests). Every load loop is bounded and
targets 127.0.0.1 only. The scenario code is the test module's (imported as pytest imports it, each
scenario given this bench's port), so the bench and the tests measure the same thing. Prints one
JSON line per trial and a summary; writes everything to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PORT = 19300


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=5, help="replica-kill trials")
    ap.add_argument("--overloads", type=int, default=2, help="overload trials per client count")
    ap.add_argument("--swaps", type=int, default=3, help="hot-swap trials")
    ap.add_argument("--clients", default="60,150", help="closed-loop client counts for overload")
    ap.add_argument("--out", default="bench/soak.json", help="JSON file for every trial's figures")
    args = ap.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # the folders pytest puts on sys.path for tests/integration (`pythonpath` and the test's own folder)
    sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "integration")]
    import test_faults_serving as faults
    from helpers import RAY_ENV_VARS, deploy, export_int8, running_replicas, wait_for
    from tinymodels import save_tiny_bert

    import ray
    from ray import serve

    work = Path(tempfile.mkdtemp(prefix="distillery-soak-"))
    versions = {name: export_int8(save_tiny_bert(work / f"bert_{name}", seed=seed), work / "root" / name)
                for name, seed in (("a", 0), ("b", 1))}
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": dict(RAY_ENV_VARS)})
    trials: list[dict] = []
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": PORT})
        deploy(faults.serve_config(work / "root", port=PORT))
        wait_for(lambda: running_replicas() == faults.REPLICAS and faults.served_version(PORT), 180, "the app")

        def record(kind: str, figures: dict) -> None:
            row = {"scenario": kind, **figures}
            trials.append(row)
            print(json.dumps(row, default=str), flush=True)

        for _ in range(args.kills):
            record("replica_kill", faults.kill_one_replica_under_load(port=PORT))
            time.sleep(2)
        for clients in (int(c) for c in args.clients.split(",")):
            for _ in range(args.overloads):
                record("overload", faults.overload(clients=clients, port=PORT))
                time.sleep(2)
        for _ in range(args.swaps):
            record("hot_swap", faults.hot_swap_under_load(work / "root", versions, port=PORT))
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    summary = summarise(trials)
    print(json.dumps(summary, indent=2, default=str))
    out = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "note": "shared with other jobs"},
           "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "trials": trials, "summary": summary}
    Path(args.out).write_text(json.dumps(out, indent=2, default=str))
    return 0


def summarise(trials: list[dict]) -> dict:
    kills = [t for t in trials if t["scenario"] == "replica_kill"]
    swaps = [t for t in trials if t["scenario"] == "hot_swap"]
    over = [t for t in trials if t["scenario"] == "overload"]
    summary: dict = {}
    if kills:
        requests, failed = sum(t["requests"] for t in kills), sum(t["failed"] for t in kills)
        summary["replica_kill"] = {
            "trials": len(kills), "requests": requests, "failed": failed,
            "failed_pct": round(100 * failed / max(requests, 1), 3),
            "worst_trial_failed_pct": max(round(100 * t["failed"] / max(t["requests"], 1), 3) for t in kills),
            "replaced_s": sorted(t["replica_replaced_s"] for t in kills),
            "client_errors_until_s": sorted(t["client_errors_until_s"] for t in kills),
        }
    if over:
        summary["overload"] = [{k: t[k] for k in ("clients", "capacity_rps", "offered_x_capacity", "overload_statuses",
                                                  "accepted_p50_ms", "accepted_p99_ms", "capacity_p99_ms", "after_statuses")}
                               for t in over]
    if swaps:
        summary["hot_swap"] = {"trials": len(swaps), "requests": sum(t["requests"] for t in swaps),
                               "failed": sum(t["failed"] for t in swaps),
                               "swap_visible_s": sorted(t["swap_visible_s"] for t in swaps)}
    return summary


if __name__ == "__main__":
    sys.exit(main())
