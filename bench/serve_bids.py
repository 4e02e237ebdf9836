"""python bench/serve_bids.py [--model-dir runs/demo/onnx] [--candidates 128] [--requests 400] [--tmax 100]

What a user of `make demo` meets next (issue 26's acceptance): `distillery serve --model-dir DIR
--config <a serve config whose catalog has N banner creatives>` started as its own process group,
then `--requests` OpenRTB 2.6 bid requests sent one at a time on one keep-alive connection, each a
page never sent before (`loadtest.fresh_contexts` over the run's test split), `tmax` 100 ms, every
creative of the catalog eligible. Counts bids (a 200 with a seatbid), no-bids and errors; p50/p99
over every answer. Stops the server with SIGTERM (as `docker stop` does) and checks it exits.
The last line is one JSON object with the CPU flags and the model card's kind and version.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.request import urlopen

import yaml

from distillery.hardware import cpu_info, cpu_summary
from distillery.loadtest import bid_catalog, bid_latency, fresh_contexts
from distillery.onnx_model.card import ModelCard
from distillery.serving.config import load_serve_config
from distillery.serving.ingress import free_ports
from distillery.training.data import read_split

REPO = Path(__file__).resolve().parents[1]


def wait_ready(log_path: Path, url: str, proc: subprocess.Popen, timeout_s: float = 180) -> None:
    """Until `distillery serve` prints that it is serving, as a user waits for it (its /healthz
    answers earlier: HAProxy's health check passes while the server still warms up), then /healthz."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"distillery serve exited with {proc.returncode} before serving; see {log_path}")
        if "distillery serving " in log_path.read_text(errors="replace"):
            with urlopen(f"{url}/healthz", timeout=5) as r:
                if r.status == 200:
                    return
        time.sleep(0.2)
    raise SystemExit(f"distillery serve did not say it was serving in {timeout_s:.0f} s; see {log_path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", default="runs/demo/onnx")
    p.add_argument("--run-dir", default=None, help="rows for request contexts and ads (default: the model dir's parent)")
    p.add_argument("--candidates", type=int, default=128)
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--tmax", type=int, default=100)
    args = p.parse_args()
    model_dir = Path(args.model_dir).absolute()  # not resolved: `onnx` links to a version folder; its run is beside the link
    if not (model_dir / "model_card.json").exists():
        raise SystemExit(f"{model_dir}: no model_card.json; run `make demo` first")
    run_dir = Path(args.run_dir or model_dir.parent)
    rows = read_split(str(run_dir), "test").to_pylist()
    card = ModelCard.read(str(model_dir))

    work = Path(tempfile.mkdtemp(prefix="serve-bids-"))
    catalog = work / "catalog.yaml"
    catalog.write_text(yaml.safe_dump(bid_catalog(rows, counts=(args.candidates,))))
    config = load_serve_config()  # the shipped serve/serve_config.yaml, with this catalog
    config["applications"][0]["args"]["bidder"].update(catalog=str(catalog), max_candidates=max(512, args.candidates))
    config_path = work / "serve_config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    log = open(work / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "distillery.cli", "serve", "--model-dir", str(model_dir),
                             "--config", str(config_path), "--port", str(port)],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    t0 = time.monotonic()
    try:
        wait_ready(work / "serve.log", url, proc)
        started_s = time.monotonic() - t0
        print(f"distillery serve answered after {started_s:.1f} s; {args.requests} fresh bids at "
              f"{args.candidates} candidates, tmax {args.tmax} ms", flush=True)
        result = bid_latency(url, fresh_contexts(rows), (args.candidates,), requests=args.requests, tmax_ms=args.tmax,
                             max_seconds=600, warmup=0)[str(args.candidates)]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            stopped = proc.wait(timeout=60) is not None
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stopped = False
        log.close()
    out = {"model_dir": str(model_dir), "student_kind": card.student_kind, "version": card.version,
           "candidates": args.candidates, "tmax_ms": args.tmax, "bid_share": round(result["bids"] / max(result["requests"], 1), 4),
           **result, "server_start_s": round(started_s, 1), "stopped_on_sigterm": stopped,
           "cpu": cpu_summary(), "cpu_flags": cpu_info()["flags"], "serve_log": str(work / "serve.log")}
    print(f"bids {result['bids']}/{result['requests']}, no-bids {result['no_bids']}, errors {result['errors']}; "
          f"p50 {result['p50']} ms, p99 {result['p99']} ms", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
