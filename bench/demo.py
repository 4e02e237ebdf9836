"""python bench/demo.py [--seeds 0 1 2] [--runs-dir runs/bench-demo] [--out bench/demo_runs.jsonl]

`make demo` as a new user runs it, once per seed, each from an empty run directory: the wall time,
every stage's time, the peak memory of the whole process tree (driver, Ray's daemons and every worker,
sampled each second from /proc: PSS, which counts a shared page once, and the RSS sum, which counts
it in every process), the lines the terminal showed, and the quality figures. The venv
must exist (`make install`); the install is not timed here. Prints one row per seed and, as its last
line, one JSON object; each run is appended to `--out` as a JSON line.

Budget (issue: `make demo` must pass every time): ≤ 600 s, ≤ 8 GB, ≤ ~400 lines of output, efficiency
≈ 0.98, lift over the click-only student > 0. The CPU's model and flags are printed with the figures:
machines of this kind differ (AVX-512 VNNI + bf16, or AVX2 only). `ONEDNN_MAX_CPU_ISA=AVX2
ATEN_CPU_CAPABILITY=avx2` caps torch at AVX2 to reproduce an AVX2-only machine on a bigger one
(ONNX Runtime is not capped by them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from distillery.hardware import cpu_info, cpu_summary  # noqa: E402


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of one process in MB. PSS splits each shared page among the processes mapping it
    (torch's libraries are mapped by every Ray worker), so PSS adds up to real memory use."""
    rss = pss = 0.0
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="utf-8") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) / 1024
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) / 1024
    except OSError:
        pass
    return rss, pss


def tree_memory_mb(root: int) -> tuple[float, float, float]:
    """(sum of RSS, sum of PSS, largest RSS) in MB over `root` and all its descendants."""
    tree, stack, rss_sum, pss_sum, biggest = _children(), [root], 0.0, 0.0, 0.0
    while stack:
        pid = stack.pop()
        rss, pss = _memory_mb(pid)
        rss_sum, pss_sum, biggest = rss_sum + rss, pss_sum + pss, max(biggest, rss)
        stack.extend(tree.get(pid, []))
    return rss_sum, pss_sum, biggest


def run_demo(seed: int, run_dir: Path, log_path: Path, overrides: list[str]) -> dict:
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [str(REPO / ".venv" / "bin" / "python"), "-m", "jobs.pipeline", "--config", "jobs/configs/demo.yaml",
           f"run_dir={run_dir}", f"data.seed={seed}", *overrides]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    peak = {"rss": 0.0, "pss": 0.0, "max": 0.0}
    t0 = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample() -> None:
            while not done.wait(1.0):
                rss, pss, biggest = tree_memory_mb(proc.pid)
                peak["rss"], peak["pss"], peak["max"] = max(peak["rss"], rss), max(peak["pss"], pss), max(peak["max"], biggest)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        rc = proc.wait()
        done.set()
        sampler.join()
    wall = time.perf_counter() - t0
    lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    report_path = run_dir / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    q = report.get("quality") or {}
    gate = ((report.get("compress") or {}).get("quality_gate") or {}).get("variants", {}).get("int8", {})
    return {
        "seed": seed, "rc": rc, "wall_s": round(wall, 1), "peak_pss_tree_mb": round(peak["pss"]),
        "peak_rss_tree_mb": round(peak["rss"]),
        "peak_rss_process_mb": round(peak["max"]), "output_lines": len(lines),
        "timings_s": report.get("timings_s"),
        "teacher_auc": (q.get("teacher") or {}).get("auc"), "student_auc": (q.get("student") or {}).get("auc"),
        "student_int8_auc": (q.get("student_int8") or {}).get("auc"),
        "student_direct_auc": (q.get("student_direct") or {}).get("auc"), "oracle_auc": q.get("oracle_auc"),
        "efficiency": q.get("distillation_efficiency"), "efficiency_ci": q.get("distillation_efficiency_ci"),
        "gain_retention": q.get("gain_retention"), "gain_retention_ci": q.get("gain_retention_ci"),
        "lift": q.get("lift_auc"), "lift_ci": q.get("lift_auc_ci"), "test_clicks": q.get("test_clicks"),
        "gate_int8": {k: gate.get(k) for k in ("passed", "auc_drop", "auc_drop_ci", "spearman", "flipped_pairs", "mean_abs_dp")},
        "latency_ms": report.get("latency_ms"), "size_mb": report.get("size_mb"),
        "serve": {k: (report.get("serve") or {}).get(k) for k in ("p50_ms", "p99_ms", "rps", "errors", "max_replicas")},
        "overrides": overrides, "log": str(log_path),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs-dir", default="runs/bench-demo")
    parser.add_argument("--out", default="bench/demo_runs.jsonl")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for every run, as `make demo ARGS=...` takes them (a trial, not the demo)")
    args = parser.parse_args()
    print(f"cpu: {cpu_summary()}", flush=True)
    runs_dir = (REPO / args.runs_dir).resolve()
    runs_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in args.seeds:
        r = run_demo(seed, runs_dir / f"seed{seed}", runs_dir / f"seed{seed}.log", args.overrides)
        r["cpu"] = cpu_info()
        results.append(r)
        with open(REPO / args.out, "a", encoding="utf-8") as f:
            f.write(json.dumps({**r, "at": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
        fmt = lambda v, s: format(v, s) if isinstance(v, (int, float)) else "—"  # noqa: E731
        print(f"seed {seed}: rc {r['rc']}, {r['wall_s']:.0f} s, peak memory {r['peak_pss_tree_mb']} MB PSS "
              f"({r['peak_rss_tree_mb']} MB RSS summed, shared pages counted in each process), "
              f"{r['output_lines']} lines, efficiency {fmt(r['efficiency'], '.3f')}, gain retention "
              f"{fmt(r['gain_retention'], '.3f')} {r['gain_retention_ci']}, lift {fmt(r['lift'], '+.3f')} {r['lift_ci']}, "
              f"int8 gate {r['gate_int8'].get('passed')}; stages {r['timings_s']}", flush=True)
    ok = all(r["rc"] == 0 for r in results)
    print(json.dumps({"cpu": cpu_info(), "runs": results, "all_passed": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
