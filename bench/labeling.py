"""python bench/labeling.py [--rows 8000] [--batch-size 64] [--threads 2] [--model minilm]

Throughput of the Ray Data labeling job against a plain in-process loop over the same teacher,
rows and cores. Both include reading the parquet, `to_text`, model loading and scoring; the Ray
side also includes actor start-up, the filters, the parquet write and the exactly-once commit.
Starting Ray itself is a fixed cost paid once per cluster and is excluded (measured and printed).

The last line is one JSON object: ray_rows_per_s, plain_rows_per_s, ray_vs_plain, ...
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def plain_loop(data_dir: str, teacher_cfg: dict, batch_size: int) -> tuple[int, float]:
    """Read → to_text → score, single process; returns (rows, seconds)."""
    import pyarrow.parquet as pq

    from distillery.data.text import to_text
    from distillery.teachers import build_teacher, score

    start = time.perf_counter()
    teacher = build_teacher(teacher_cfg)
    rows = 0
    for split in ("train", "unlabeled"):
        table = pq.read_table(os.path.join(data_dir, split))
        texts = [to_text(r) for r in table.to_pylist()]
        for i in range(0, len(texts), batch_size):
            score(teacher, texts[i:i + batch_size])
        rows += len(texts)
    return rows, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8000, help="rows labeled (train + unlabeled)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="torch threads, the same for both sides")
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--model", default="minilm", help="teacher model folder (default: packaged MiniLM, untrained head)")
    args = parser.parse_args()

    import ray
    import torch

    from distillery.config import load_config
    from distillery.data.synthetic import SyntheticConfig, write_splits
    from distillery.labeling import LabelConfig, run

    torch.set_num_threads(args.threads)
    work = tempfile.mkdtemp(prefix="distillery-bench-label-")
    try:
        n_train = args.rows // 5
        write_splits(SyntheticConfig(seed=0, rows_train=n_train, rows_unlabeled=args.rows - n_train, rows_test=1,
                                     files_per_split=4), os.path.join(work, "data"))
        teacher = {"kind": "hf-classifier", "model": args.model, "batch_size": args.batch_size,
                   "max_length": args.max_length, "num_threads": args.threads}

        plain_rows, plain_s = plain_loop(os.path.join(work, "data"), teacher, args.batch_size)
        print(f"plain loop: {plain_rows} rows in {plain_s:.1f}s = {plain_rows / plain_s:.1f} rows/s", flush=True)

        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
        ray_start_s = time.perf_counter() - t0
        cfg = load_config(LabelConfig, "jobs/configs/label.yaml", [
            f"run_dir={work}", "format=parquet", f"teacher.model={args.model}",
            f"teacher.batch_size={args.batch_size}", f"teacher.max_length={args.max_length}",
            f"teacher.num_threads={args.threads}", "filters.max_prob=1.0",
        ])
        t0 = time.perf_counter()
        manifest = run(cfg)
        ray_s = time.perf_counter() - t0
        ray.shutdown()
        ray_rows = manifest["rows_in"]
        print(f"ray data job: {ray_rows} rows in {ray_s:.1f}s = {ray_rows / ray_s:.1f} rows/s "
              f"(ray.init took {ray_start_s:.1f}s, excluded)", flush=True)
        result = {
            "rows": ray_rows,
            "ray_rows_per_s": round(ray_rows / ray_s, 2),
            "plain_rows_per_s": round(plain_rows / plain_s, 2),
            "ray_vs_plain": round((ray_rows / ray_s) / (plain_rows / plain_s), 3),
            "ray_init_s": round(ray_start_s, 2),
            "threads": args.threads,
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "model": args.model,
        }
        print(json.dumps(result))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
