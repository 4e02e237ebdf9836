"""python bench/train_scale.py --rows 40000 [--rows 400000 ...] [--modes stream,memory] [--steps 20] [--demo runs/demo]

Training input at scale: `jobs.train` with `jobs/configs/train_direct.yaml` (click loss on the
train split, 2 Ray Train workers) limited to `--steps` steps, on a synthetic run of `--rows` train
rows, once with the streamed input (`data.stream=true`: Ray Data → each worker's shard) and once
with the in-memory table (`data.stream=false`: every worker builds the whole table), side by side.
Each run is its own process with its own embedded Ray, so nothing is shared between them.

Figures per run: peak memory of the job's process tree (driver, Ray, workers: RSS summed) and of
the machine (MemTotal − MemAvailable over its value before the run: other work on a shared machine
shows here too), the peak RSS of each training worker, the time from launch to the first training
step and to the end of the last (`steps_done_s`, before validation), the whole job's seconds, and the
training rows/s of those steps; `growth` divides each size's figures by the first size's.
`--demo RUN_DIR`: the demo's distilled student, whole, on a copy of a finished demo run, streamed and
in memory, alternately twice. `--memory-limit-gb` skips
the in-memory mode where it would not fit (estimated from the growth per row between the last two
in-memory runs).
The CPU model and flags are printed first; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_run(rows: int, root: str) -> str:
    """A synthetic run directory with `rows` train rows (files of ≤ 10k rows)."""
    from distillery.data.synthetic import SyntheticConfig, write_splits

    run_dir = os.path.join(root, f"run-{rows}")
    write_splits(SyntheticConfig(seed=0, rows_train=rows, rows_unlabeled=100, rows_test=100,
                                 files_per_split=max(1, rows // 10_000)), os.path.join(run_dir, "data"))
    return run_dir


def _meminfo_used_mb() -> float:
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":", 1)
            info[key] = int(value.split()[0])
    return (info["MemTotal"] - info["MemAvailable"]) / 1024


def _processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, RSS in kB, command line) of every process readable in /proc."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/status") as f:
                rss = next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        out[int(entry)] = (ppid, rss, cmd)
    return out


def _tree(root: int, procs: dict[int, tuple[int, int, str]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


class MemorySampler:
    """Samples the job's process tree every `every_s` seconds: peak tree RSS, peak machine use, peak RSS per worker."""

    def __init__(self, pid: int, every_s: float = 0.5):
        self.pid, self.every_s = pid, every_s
        self.baseline_mb = _meminfo_used_mb()
        self.tree_mb = self.machine_mb = 0.0
        self.workers_mb: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            procs = _processes()
            mine = _tree(self.pid, procs)
            self.tree_mb = max(self.tree_mb, sum(procs[p][1] for p in mine if p in procs) / 1024)
            self.machine_mb = max(self.machine_mb, _meminfo_used_mb() - self.baseline_mb)
            for p in mine:
                if p in procs and "RayTrainWorker" in procs[p][2]:
                    self.workers_mb[p] = max(self.workers_mb.get(p, 0.0), procs[p][1] / 1024)
            self._stop.wait(self.every_s)

    def stop(self) -> dict[str, float | list[float]]:
        self._stop.set()
        self._thread.join()
        return {"peak_tree_mb": round(self.tree_mb), "peak_machine_mb": round(self.machine_mb),
                "peak_worker_mb": sorted((round(v) for v in self.workers_mb.values()), reverse=True)}


def run_job(run_dir: str, stream: bool, steps: int | None, out_dir: str, config: str = "jobs/configs/train_direct.yaml") -> dict:
    """One `jobs.train` process; its figures (memory, seconds to the first step and to the last, rows/s)."""
    cmd = [sys.executable, "-m", "jobs.train", "--config", config, f"run_dir={run_dir}",
           f"output=bench_{'stream' if stream else 'memory'}", f"data.stream={str(stream).lower()}",
           f"checkpoint.storage={out_dir}"] + ([f"loop.max_steps_per_epoch={steps}", "loop.epochs=1"] if steps else [])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": REPO}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = MemorySampler(proc.pid)
    first_step, steps_done, last_json, tail = None, None, None, []
    for line in proc.stdout:
        tail = (tail + [line])[-40:]
        if first_step is None and "[train] first step done" in line:
            first_step = time.perf_counter() - t0
        if steps_done is None and "steps done in" in line:
            steps_done = time.perf_counter() - t0
        if line.startswith("{") and '"best"' in line:
            last_json = json.loads(line)
    proc.wait()
    seconds = time.perf_counter() - t0
    memory = sampler.stop()
    if proc.returncode != 0 or last_json is None:
        raise RuntimeError(f"jobs.train (stream={stream}) failed with {proc.returncode}:\n{''.join(tail)}")
    best = last_json["best"]
    return {"mode": "stream" if stream else "memory", **memory, "first_step_s": round(first_step or float("nan"), 1),
            "steps_done_s": round(steps_done or float("nan"), 1),
            "job_s": round(seconds, 1), "rows_per_s": round(best["rows_per_s"], 1)}


def demo_student(run_dir: str, root: str) -> dict:
    """The demo's distilled student (`demo.yaml`'s `student` section, whole) on a copy of a finished
    demo run, streamed and in memory, alternately twice: rows/s of each and their ratio."""
    import yaml

    copy = os.path.join(root, "demo")
    for part in ("data", "labels", "teacher"):
        shutil.copytree(os.path.join(run_dir, part), os.path.join(copy, part))
    with open(os.path.join(REPO, "jobs/configs/demo.yaml")) as f:
        demo = yaml.safe_load(f)
    section = {**demo["student"], "run_dir": copy, **({"ray": demo["ray"]} if "ray" in demo else {})}
    config = os.path.join(root, "demo_student.yaml")
    with open(config, "w") as f:
        yaml.safe_dump(json.loads(json.dumps(section).replace("{run_dir}", copy)), f)
    runs = {"stream": [], "memory": []}
    for rep in range(2):
        for mode in runs:  # a checkpoint folder each: the same run key would resume the finished run
            figures = run_job(copy, mode == "stream", None, os.path.join(root, f"ckpt-demo-{rep}"), config)
            print(f"[bench] demo student {mode}: {figures}", flush=True)
            runs[mode].append(figures)
    mean = {m: sum(r["rows_per_s"] for r in v) / len(v) for m, v in runs.items()}
    return {"runs": runs, "rows_per_s": {m: round(v, 1) for m, v in mean.items()},
            "stream_vs_memory_rows_per_s": round(mean["stream"] / mean["memory"], 3),
            "job_s": {m: round(sum(r["job_s"] for r in v) / len(v), 1) for m, v in runs.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, action="append", help="train rows of a run (repeatable); default 40000, none with --demo")
    parser.add_argument("--modes", default="stream,memory", help="stream, memory or both")
    parser.add_argument("--steps", type=int, default=20, help="training steps per run (loop.max_steps_per_epoch)")
    parser.add_argument("--memory-limit-gb", type=float, default=None,
                        help="skip the in-memory mode where its estimated peak passes this; default: 80%% of MemTotal")
    parser.add_argument("--keep", action="store_true", help="keep the synthetic runs")
    parser.add_argument("--demo", metavar="RUN_DIR", help="also the demo's student on a copy of this finished demo run "
                                                          "(e.g. runs/demo), streamed vs in memory")
    args = parser.parse_args()
    sys.path.insert(0, REPO)
    from distillery.hardware import cpu_info, cpu_summary

    print(f"[bench] CPU: {cpu_summary()} | flags {','.join(cpu_info()['flags'])}", flush=True)
    with open("/proc/meminfo") as f:
        total_gb = int(f.readline().split()[1]) / 1024 ** 2
    limit_gb = args.memory_limit_gb or 0.8 * total_gb
    root = tempfile.mkdtemp(prefix="train-scale-")
    results, per_row_mb, memory_runs = [], None, []
    try:
        for rows in args.rows if args.rows is not None else ([] if args.demo else [40_000]):
            run_dir = make_run(rows, root)
            line = {"rows": rows}
            for mode in args.modes.split(","):
                stream = mode == "stream"
                estimate_mb = None if per_row_mb is None else memory_runs[-1][1] + per_row_mb * (rows - memory_runs[-1][0])
                if not stream and estimate_mb is not None and estimate_mb / 1024 > limit_gb:
                    line[mode] = {"skipped": f"estimated {estimate_mb / 1024:.0f} GB > {limit_gb:.0f} GB"}
                    continue
                figures = run_job(run_dir, stream, args.steps, os.path.join(root, "ckpt"))
                if not stream:  # growth per row between the last two in-memory runs (Ray's own base apart)
                    memory_runs.append((rows, figures["peak_tree_mb"]))
                    if len(memory_runs) > 1:
                        (r0, m0), (r1, m1) = memory_runs[-2:]
                        per_row_mb = max(0.0, (m1 - m0) / max(1, r1 - r0))
                line[mode] = figures
                print(f"[bench] {rows} rows {mode}: {figures}", flush=True)
            if "stream" in line and "rows_per_s" in line.get("memory", {}):
                line["stream_vs_memory"] = {
                    "rows_per_s": round(line["stream"]["rows_per_s"] / line["memory"]["rows_per_s"], 3),
                    "peak_tree_mb": round(line["stream"]["peak_tree_mb"] / line["memory"]["peak_tree_mb"], 3),
                    "first_step_s": round(line["stream"]["first_step_s"] / line["memory"]["first_step_s"], 3)}
            results.append(line)
            shutil.rmtree(run_dir, ignore_errors=True) if not args.keep else None
        demo = demo_student(args.demo, root) if args.demo else None
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({"cpu": cpu_info(), "steps": args.steps, "results": results, "growth": growth(results), "demo": demo}))


def growth(results: list[dict]) -> dict:
    """Each mode's figures at every size over its figures at the first size (memory over idle, time to the last step, job)."""
    out = {}
    for mode in ("stream", "memory"):
        done = [r for r in results if "job_s" in r.get(mode, {})]
        if len(done) < 2:
            continue
        base = done[0][mode]
        out[mode] = {str(r["rows"]): {k: round(r[mode][k] / base[k], 2) for k in ("peak_machine_mb", "steps_done_s", "job_s")}
                     for r in done[1:]}
    return out


if __name__ == "__main__":
    main()
