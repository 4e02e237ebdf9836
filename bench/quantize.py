"""python bench/quantize.py [--run-dir runs/demo] [--onnx onnx] [--rows 3000] [--slices 3]

INT8 choices on this CPU, side by side: a trained student's FP32 graph (`<run-dir>/<onnx>`, what
`make demo` builds) quantized every way `compress.quantize` offers, each scored on the run's test
split and timed the way a replica runs it (1 ORT thread):

  int8-dynamic  per-channel / per-tensor weights  x  full-range / `reduce_range` (7-bit) weights
  int8-static   QDQ, per-channel, MinMax-calibrated on `--calib-rows` training rows

`reduce_range` exists for CPUs without VNNI: their u8s8 kernel (AVX2 `vpmaddubsw`) adds u8*s8
pairs in int16 and saturates with full-range weights; the compress job turns it on there by itself
(`hardware.has_vnni`). On a VNNI CPU the full range is exact and `reduce_range` only costs accuracy.

Per variant: rows/s on calls of 64 texts (slices alternate so a shared machine's drift falls on
all alike), batch-1 p50/p99, file size, and the paired comparison with FP32 the compress gate uses
(AUC drop with its CI, Spearman, flipped pairs, mean |dp|). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import serve as bench_serve  # noqa: E402 - raw_throughput: calls of 64 texts through a scorer, timed

# name -> (preset, apply_preset keyword arguments)
CHOICES = {
    "int8 per-channel": ("int8-dynamic", {"per_channel": True, "reduce_range": False}),
    "int8 per-channel reduce_range": ("int8-dynamic", {"per_channel": True, "reduce_range": True}),
    "int8 per-tensor": ("int8-dynamic", {"per_channel": False, "reduce_range": False}),
    "int8 per-tensor reduce_range": ("int8-dynamic", {"per_channel": False, "reduce_range": True}),
    "int8-static per-channel": ("int8-static", {"per_channel": True}),
}


def build(src: Path, work: Path, calib: list[str]) -> dict[str, tuple[Path, str]]:
    """One folder per choice (each a copy of the FP32 export with that variant beside it)."""
    from distillery.compress.quantize import PRESET_VARIANT, apply_preset

    out = {"fp32": (src, "fp32")}
    for k, (name, (preset, kwargs)) in enumerate(CHOICES.items()):
        folder = work / f"choice{k}"
        shutil.copytree(src, folder, ignore=shutil.ignore_patterns("student.int8*", "student.*static*", "student.fp16*"))
        t0 = time.perf_counter()
        apply_preset(str(folder), preset, calibration_texts=calib if preset == "int8-static" else None, **kwargs)
        print(f"  built {name} in {time.perf_counter() - t0:.1f}s", flush=True)
        out[name] = (folder, PRESET_VARIANT[preset])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", default=str(REPO / "runs" / "demo"), help="a finished pipeline run (make demo)")
    p.add_argument("--onnx", default="onnx", help="its ONNX folder, relative to --run-dir")
    p.add_argument("--rows", type=int, default=3000, help="test rows scored for the quality comparison")
    p.add_argument("--calib-rows", type=int, default=256, help="training rows that calibrate int8-static")
    p.add_argument("--slices", type=int, default=3)
    p.add_argument("--slice-s", type=float, default=2.0)
    p.add_argument("--latency-calls", type=int, default=300)
    args = p.parse_args()

    import numpy as np

    from distillery.compress.gate import paired_comparison
    from distillery.compress.validate import batch1_latency
    from distillery.data.text import to_text
    from distillery.hardware import cpu_info
    from distillery.onnx_model.card import ModelCard
    from distillery.onnx_model.scorer import OnnxScorer
    from distillery.training.data import read_split

    cpu = cpu_info()
    print(f"cpu: {cpu['model']}, {cpu['cores']} cores, isa {cpu['isa']}, vnni {cpu['vnni']}, "
          f"flags {' '.join(cpu['flags'])}", flush=True)
    src = Path(args.run_dir) / args.onnx
    if not (src / "model_card.json").exists():
        sys.exit(f"{src}: no ONNX student here; run `make demo` first (or pass --run-dir / --onnx)")
    if ModelCard.read(str(src)).student_kind == "two_tower":
        sys.exit(f"{src}: a two-tower student; this bench quantizes cross-encoders")
    test = read_split(args.run_dir, "test", max_rows=args.rows).to_pylist()
    texts = [to_text(r) for r in test]
    clicks = np.asarray([r["click"] for r in test], dtype=np.float64)
    calib = [to_text(r) for r in read_split(args.run_dir, "train", max_rows=args.calib_rows).to_pylist()]

    with tempfile.TemporaryDirectory(prefix="bench-quantize-") as tmp:
        folders = build(src, Path(tmp), calib)
        scorers = {name: OnnxScorer(str(folder), variant, intra_op_threads=1) for name, (folder, variant) in folders.items()}
        probs = {name: s.predict_proba(texts) for name, s in scorers.items()}
        speed: dict[str, list[float]] = {name: [] for name in scorers}
        for k in range(args.slices):
            for name, s in scorers.items():
                speed[name].append(bench_serve.raw_throughput(s, [texts[:1280]], 64, args.slice_s)[0])
            print(f"  slice {k + 1}/{args.slices}: " + "  ".join(f"{n}: {v[-1]:.0f}" for n, v in speed.items()), flush=True)
        result = {}
        for name, s in scorers.items():
            folder, variant = folders[name]
            card = ModelCard.read(str(folder))
            stats = paired_comparison(clicks, probs["fp32"], probs[name])
            result[name] = {
                "rows_per_s": round(sum(speed[name]) / len(speed[name]), 1),
                "batch1_ms": batch1_latency(s.predict_proba, texts, calls=args.latency_calls),
                "size_mb": round(os.path.getsize(card.variant_path(str(folder), variant)) / 1e6, 2),
                "auc": round(stats["auc_variant"], 4), "auc_drop": round(stats["auc_drop"], 5),
                "auc_drop_ci": [round(x, 5) for x in stats["auc_drop_ci"]],
                "spearman": round(stats["spearman"], 5), "flipped_pairs": round(stats["flipped_pairs"], 5),
                "mean_abs_dp": float(f"{stats['mean_abs_dp']:.3g}"),
            }
    base = result["fp32"]["rows_per_s"]
    for r in result.values():
        r["speed_vs_fp32"] = round(r["rows_per_s"] / base, 3)
    print(f"\n{'variant':<32}{'rows/s':>8}{'vs fp32':>9}{'b1 p50':>8}{'MB':>7}{'AUC':>8}{'drop':>9}  {'drop CI':<20}"
          f"{'Spearman':>9}{'flipped':>9}{'mean|dp|':>10}")
    for name, r in result.items():
        ci = f"[{r['auc_drop_ci'][0]:+.4f}, {r['auc_drop_ci'][1]:+.4f}]"
        print(f"{name:<32}{r['rows_per_s']:>8.0f}{r['speed_vs_fp32']:>9.2f}{r['batch1_ms']['p50']:>8.2f}{r['size_mb']:>7.1f}"
              f"{r['auc']:>8.4f}{r['auc_drop']:>+9.4f}  {ci:<20}{r['spearman']:>9.4f}{r['flipped_pairs']:>9.4f}"
              f"{r['mean_abs_dp']:>10.2e}")
    print(json.dumps({"cpu_flags": cpu, "student": str(src), "test_rows": len(texts), "test_clicks": int(clicks.sum()),
                      "variants": result}))


if __name__ == "__main__":
    main()
