"""python bench/ort_runs.py [--model-dir runs/demo/onnx ...] [--call-rows 64] [--slices 3] [--slice-s 3]

Rows per ONNX Runtime run (`OnnxScorer.sub_batch_rows`, default `CPU_SUB_BATCH_ROWS` on a CPU):
scoring calls of `--call-rows` texts (the serving batch, `batch.max_batch_rows`) through scorers that
differ only in how a call is cut into ORT runs — 0 is the whole call in one run, padded to its
longest; n sorts the call's rows by token length and runs n at a time. The settings alternate in
`--slices` rounds so a shared machine's drift falls on all alike; 1 ORT thread.

Without `--model-dir` it measures bench/serve.py's 2-layer INT8 student (exported on first use).
The last line is one JSON object: cpu_flags, and per model the rows/s of each setting and its
ratio to the whole call.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import serve as bench_serve  # noqa: E402 - the workload and the bench student

SETTINGS = (0, 1, 2, 4, 8, 16, 32)


def measure(model_dir: Path, variant: str, call_rows: int, slices: int, slice_s: float) -> dict:
    from distillery.onnx_model.scorer import OnnxScorer

    groups = bench_serve.workload(8, n_requests=100)
    texts = [t for g in groups for t in g]
    scorers = {n: OnnxScorer(str(model_dir), variant=variant, intra_op_threads=1, sub_batch_rows=n) for n in SETTINGS}
    lengths = [len(x) for x in scorers[0].tokenizer(texts, truncation=True, max_length=scorers[0].max_length)["input_ids"]]
    got: dict[int, list[float]] = {n: [] for n in SETTINGS}
    for k in range(slices):
        for n in SETTINGS:
            got[n].append(bench_serve.raw_throughput(scorers[n], groups, call_rows, slice_s)[0])
        print(f"  {model_dir.name} slice {k + 1}/{slices}: "
              + "  ".join(f"{n or 'whole'}: {got[n][-1]:.0f}" for n in SETTINGS), flush=True)
    mean = {n: sum(v) / len(v) for n, v in got.items()}
    return {"model_dir": str(model_dir), "variant": variant, "call_rows": call_rows,
            "token_lengths": {"min": min(lengths), "max": max(lengths), "mean": round(sum(lengths) / len(lengths), 1)},
            "rows_per_s": {str(n): round(v, 1) for n, v in mean.items()},
            "vs_whole_call": {str(n): round(v / mean[0], 3) for n, v in mean.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", nargs="*", default=[], help="ONNX folders; default: bench/serve.py's 2-layer student")
    p.add_argument("--work", default=str(REPO / "runs" / "bench_serve"), help="cache for the bench student")
    p.add_argument("--variant", default="int8")
    p.add_argument("--call-rows", type=int, default=64, help="rows per scoring call (serving's max_batch_rows)")
    p.add_argument("--slices", type=int, default=3)
    p.add_argument("--slice-s", type=float, default=3.0)
    args = p.parse_args()

    from distillery.hardware import cpu_info
    from distillery.onnx_model.scorer import CPU_SUB_BATCH_ROWS

    cpu = cpu_info()
    print(f"cpu: {cpu['model']}, {cpu['cores']} cores, isa {cpu['isa']}, flags {' '.join(cpu['flags'])}", flush=True)
    dirs = [Path(d).resolve() for d in args.model_dir] or [bench_serve.student_onnx(Path(args.work).resolve())]
    results = [measure(d, args.variant, args.call_rows, args.slices, args.slice_s) for d in dirs]
    for r in results:
        print(f"{r['model_dir']}: rows/s by rows per run {r['rows_per_s']} (vs whole call {r['vs_whole_call']})", flush=True)
    print(json.dumps({"cpu_flags": cpu, "default_sub_batch_rows": CPU_SUB_BATCH_ROWS, "models": results}))


if __name__ == "__main__":
    main()
