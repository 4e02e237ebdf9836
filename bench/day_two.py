"""python bench/day_two.py [--source runs/demo] [--run-dir runs/day_two] [--rps 60] [--port 19650] [--steps 100]

Day two beside a live service: the flow re-runs on a run directory while `distillery serve` answers
steady load from it, and the new model reaches the service only through `distillery.serving.promote`.

1. A copy of `--source` (a finished `make demo` run: data, labels, teacher, student, onnx link and
   versions) becomes `--run-dir`. A Ray is started here (4 logical CPUs) and `distillery serve
   --model-dir <run>/onnx` runs as a subprocess on it (RAY_ADDRESS), as on a cluster.
2. Load, open loop, paced at `--rps` for the whole run: /predict with 8 candidate ads under a
   request context never sent before (`loadtest.fresh_contexts` over the test split); every
   answer's status and model version is kept with its time.
3. The flow, each step a subprocess with its own embedded Ray (as a daily cron would run it):
   the student stage again (`--force`, a new seed, `--steps` steps per epoch); compress with an
   FP32 parity tolerance no export meets (`validation.atol=1e-12`; the one gate failure that
   refuses a whole build): refused, the build lands in `onnx.rejected`, the link stays; compress as
   configured: passes, the link names the new version (the server still serves the old one); then
   `promote.run`.
4. Checks: no request failed (transport error or 5xx); the versions answered are the old one, then
   the new one, and no other (the rejected build never served), none old after promote returned;
   a server started afterwards on `<run>/onnx` (its own embedded Ray) serves the promoted version.

About 5 minutes on 2 cores. The last line is one JSON object: the CPU (`cpu`), the load (requests,
statuses, rps overall and per 10 s window), each step's seconds and outcome, the versions.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
CONFIG = "jobs/configs/demo.yaml"
CANDIDATES = 8
_AD = ("advertiser", "ad_title", "ad_description", "ad_category")


# ------------------------------------------------------------------------------- paced load


def fresh_bodies(rows: list[dict]):
    """/predict bodies: a request context never sent before, with CANDIDATES ads of the test split."""
    from distillery.loadtest import fresh_contexts

    for i, ctx in enumerate(fresh_contexts(rows)):
        context = {"query": ctx["keywords"], **{k: ctx[k] for k in ("site_category", "device", "os", "position",
                                                                       "slot_size") if ctx.get(k) is not None}}
        ads = [{k: rows[(i * CANDIDATES + j) % len(rows)][k] for k in _AD} for j in range(CANDIDATES)]
        yield json.dumps({"rows": [{**context, **ad} for ad in ads]}).encode()


class PacedLoad:
    """Open-loop load at `rps` requests/s from `clients` keep-alive connections (a slot missed while
    all clients wait on answers is sent as soon as one is free). Keeps (time s, status, version)."""

    def __init__(self, port: int, rows: list[dict], rps: float, clients: int = 16):
        self.port, self.rps, self.clients = port, rps, clients
        self.bodies = fresh_bodies(rows)
        self.lock, self.stop_event = threading.Lock(), threading.Event()
        self.records: list[tuple[float, int, str | None]] = []
        self.sent = 0
        self.t0 = 0.0

    def start(self) -> None:
        self.t0 = time.monotonic()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)]
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=30)

    def _client(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self.stop_event.is_set():
            with self.lock:
                slot, self.sent = self.t0 + self.sent / self.rps, self.sent + 1
                body = next(self.bodies)
            time.sleep(max(0.0, slot - time.monotonic()))
            status, version = 0, None
            try:
                conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
                answer = conn.getresponse()
                answer.read()
                status, version = answer.status, answer.getheader("x-model-version")
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            with self.lock:
                self.records.append((time.monotonic() - self.t0, status, version))
        conn.close()

    def summary(self) -> dict:
        records = sorted(self.records)
        statuses: dict[int, int] = {}
        for _, status, _ in records:
            statuses[status] = statuses.get(status, 0) + 1
        seconds = records[-1][0] if records else 0.0
        windows = [sum(1 for t, _, _ in records if w <= t < w + 10) / 10 for w in range(0, int(seconds) - 9, 10)]
        return {"requests": len(records), "statuses": statuses, "failed": sum(n for s, n in statuses.items() if s == 0 or s >= 500),
                "seconds": round(seconds, 1), "rps": round(len(records) / max(seconds, 1e-9), 1),
                "min_rps_10s": min(windows) if windows else None, "rps_10s": windows}

    def versions(self) -> list[tuple[float, str]]:
        """(time s, version) of every answered request, in time order."""
        return [(t, v) for t, s, v in sorted(self.records) if s == 200 and v]


# ------------------------------------------------------------------------------- processes


def prepare_run(source: Path, run_dir: Path) -> None:
    """A fresh copy of `source` at `run_dir`, links kept as links (onnx -> onnx.versions/...)."""
    if not (source / "onnx" / "model_card.json").exists():
        raise SystemExit(f"--source {source}: no onnx/model_card.json; run `make demo` first")
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(source, run_dir, symlinks=True,
                    ignore=shutil.ignore_patterns("size", "checkpoints", "plots", "report.*", "serve", "onnx.rejected"))


def start_server(model_dir: Path, port: int, env: dict[str, str], log: Path) -> subprocess.Popen:
    """`distillery serve --model-dir model_dir --port port`; returns once it prints its banner."""
    out = open(log, "w")  # noqa: SIM115 - the child writes here for its whole life
    proc = subprocess.Popen([sys.executable, "-m", "distillery.cli", "serve", "--model-dir", str(model_dir),
                             "--port", str(port)], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if "distillery serving" in log.read_text():
            return proc
        if proc.poll() is not None:
            raise SystemExit(f"distillery serve exited {proc.returncode}: {log.read_text()[-3000:]}")
        time.sleep(0.5)
    stop_server(proc)
    raise SystemExit(f"distillery serve did not start in 300 s: {log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM (the server shuts Serve down), SIGKILL after 60 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def flow_step(name: str, run_dir: Path, overrides: list[str], log: Path) -> dict:
    """One pipeline invocation (`--force`) in a subprocess; its seconds and exit status."""
    cmd = [sys.executable, "-m", "jobs.pipeline", "--config", CONFIG, f"run_dir={run_dir}", *overrides, "--force"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own embedded Ray
    t0 = time.monotonic()
    with open(log, "a") as out:
        out.write(f"\n===== {name}: {' '.join(cmd)}\n")
        out.flush()
        rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    step = {"step": name, "exit": rc, "seconds": round(time.monotonic() - t0, 1)}
    print(f"[day-two] {name}: exit {rc} in {step['seconds']} s", flush=True)
    return step


def served_version(port: int) -> str | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/healthz")
        return json.loads(conn.getresponse().read()).get("model_version")
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        conn.close()


# ------------------------------------------------------------------------------- the run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="runs/demo", help="a finished demo run to copy")
    parser.add_argument("--run-dir", default="runs/day_two", help="the run directory of this bench (replaced)")
    parser.add_argument("--rps", type=float, default=60.0, help="paced /predict requests per second")
    parser.add_argument("--port", type=int, default=19650, help="the served port; the restarted server uses port+1")
    parser.add_argument("--steps", type=int, default=100, help="student steps per epoch (per worker)")
    args = parser.parse_args()

    import ray

    from distillery.hardware import cpu_info
    from distillery.onnx_model.card import ModelCard
    from distillery.serving.promote import PromoteConfig, run as promote
    from distillery.training.data import read_split

    cpu = cpu_info()
    print(f"cpu: {cpu['model']}, {cpu['cores']} cores, isa {cpu['isa']}, flags {' '.join(cpu['flags'])}", flush=True)
    run_dir = (REPO / args.run_dir).resolve()
    prepare_run((REPO / args.source).resolve(), run_dir)
    logs = run_dir / "_day_two"
    logs.mkdir()
    link = run_dir / "onnx"
    old_version = ModelCard.read(str(link)).version
    rows = read_split(str(run_dir), "test").to_pylist()

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}})
    address = ray.get_runtime_context().gcs_address
    env = {**os.environ, "RAY_ADDRESS": address}
    t_start = time.monotonic()
    server = start_server(link, args.port, env, logs / "serve.log")
    load = PacedLoad(args.port, rows, args.rps)
    steps, promoted = [], None
    try:
        print(f"[day-two] serving {old_version} on :{args.port} (Ray {address}); load {args.rps:.0f} requests/s", flush=True)
        load.start()
        time.sleep(5)
        flow_log = logs / "flow.log"
        # bid.budget_ms: the pre-check times students on this machine, which the bench itself loads
        steps.append(flow_step("student", run_dir, ["stages=[student]", f"student.loop.max_steps_per_epoch={args.steps}",
                                                    "student.loop.seed=1", "bid.budget_ms=1000"], flow_log))
        # A quantized variant that fails its gate is left out and the rest published (compress.job);
        # a build is refused as a whole when FP32 does not compute what PyTorch does: force that.
        steps.append(flow_step("compress (gate forced to fail)", run_dir,
                               ["stages=[compress]", "compress.validation.atol=0.000000000001"], flow_log))
        steps[-1]["rejected_kept"] = (run_dir / "onnx.rejected" / "model_card.json").exists()
        steps[-1]["link_unchanged"] = ModelCard.read(str(link)).version == old_version
        steps.append(flow_step("compress", run_dir, ["stages=[compress]"], flow_log))
        new_version = ModelCard.read(str(link)).version
        steps[-1]["link_names"] = new_version
        t_promote = time.monotonic() - load.t0
        promoted = promote(PromoteConfig(run_dir=str(run_dir), address=address, timeout_s=120))
        t_promoted = time.monotonic() - load.t0
        steps.append({"step": "promote", "exit": 0, "seconds": promoted["seconds"]})
        time.sleep(5)  # load on the new version
    finally:
        load.stop()
        stop_server(server)
        ray.shutdown()
    # A server started afterwards, as after a reboot: `distillery serve` on the link, its own Ray.
    plain_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    restarted = start_server(link, args.port + 1, plain_env, logs / "serve_restarted.log")
    try:
        after_restart = served_version(args.port + 1)
    finally:
        stop_server(restarted)

    figures = load.summary()
    answered = load.versions()
    order = list(dict.fromkeys(v for _, v in answered))
    flips = sum(1 for (_, a), (_, b) in zip(answered, answered[1:]) if a != b)
    old_after = [t for t, v in answered if v == old_version and t > t_promoted]
    result = {
        "bench": "day_two", "cpu": cpu, "rps_target": args.rps, "load": figures,
        "steps": steps, "promote": promoted, "total_s": round(time.monotonic() - t_start, 1),
        "versions": {"old": old_version, "new": new_version, "answered_in_order": order, "flips": flips,
                     "promote_started_s": round(t_promote, 1), "promote_returned_s": round(t_promoted, 1),
                     "old_answered_after_promote": len(old_after), "restarted_server": after_restart},
    }
    checks = {
        "no_failed_request": figures["failed"] == 0,
        "at_least_50_rps": figures["rps"] >= 50,
        "gate_failure_kept_the_link": bool(steps[1]["exit"] != 0 and steps[1]["rejected_kept"] and steps[1]["link_unchanged"]),
        "version_changed_once": order == [old_version, new_version] and not old_after and new_version != old_version,
        "restarted_server_serves_promoted": after_restart == new_version,
    }
    result["checks"] = checks
    print(json.dumps(result, default=str))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
