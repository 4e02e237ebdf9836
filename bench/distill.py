"""python bench/distill.py [--seeds 0 1 2] [--rows-train 4000 --rows-unlabeled 12000 --rows-test 4000] [--students cross two_tower]

Does a student taught by the teacher beat the same student taught by clicks alone? For each seed:

  1. synthetic data (train / unlabeled / test) from `distillery.data.synthetic`;
  2. `distillery teacher`: the two-tower teacher (jobs/configs/teacher_two_tower.yaml: MiniLM-L6
     cosine(query, ad) + a click head fitted on the train split's clicks), or with
     `--teacher fine-tune` MiniLM-L6 fine-tuned on those clicks (jobs/configs/teacher.yaml, Ray Train);
  3. `distillery label`: the teacher labels train + unlabeled (Ray Data);
  4. `distillery train`: the distilled student (teacher labels on train + unlabeled), and the
     same architecture and budget on clicks: `student_direct` on train clicks only for as many
     optimizer steps as the student (`loop.match_steps_of`: semi-supervised comparison, equal
     budget) and `student_direct_strict` on train + unlabeled with the hidden clicks revealed
     (strict comparison: same rows and steps, only the label source differs);
  5. `distillery evaluate` on the test split: AUC, logloss, ECE, oracle AUC.

All three students start from the same weights (layers 0 and 5 of MiniLM-L6) with the same budget;
only the labels differ. `--students two_tower` adds the two-tower student (jobs/configs/train_two_tower.yaml:
the same MiniLM layers as shared request/ad towers reading the teacher's fields + an interaction head
that starts as the teacher's click head; same labels, loss and budget) and its click-only twin
(`student_two_tower_direct`: train clicks, its head started as the same logistic form fitted on
them): efficiency, lift over the twin,
logloss and ECE side by side with the cross-encoder's (`two_tower_*` keys). Then training throughput of the student with 2 Ray Train workers vs 1 (one
torch thread per worker). Prints per-seed rows, mean ± std, and as its last line one JSON object.
The default sizes are chosen to fit a 2-core machine in about 15-20 min; `--rows-*` change them
(say so when quoting figures).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from distillery.config import load_config  # noqa: E402
from distillery.evaluate_ci import gain_retention  # noqa: E402

STUDENT_LAYERS = "[0, 5]"  # 2 of MiniLM-L6's 6 layers: ~3x fewer encoder FLOPs than the 6-layer encoder
TEACHERS = {
    "two-tower": ("jobs/configs/teacher_two_tower.yaml",
                  '{"kind": "two-tower", "model": "{run_dir}/teacher", "batch_size": 128, "dtype": "bf16", "num_threads": 2}'),
    "fine-tune": ("jobs/configs/teacher.yaml",
                  '{"kind": "hf-classifier", "model": "{run_dir}/teacher", "batch_size": 64, "dtype": "bf16", "num_threads": 2}'),
}


def _common(args) -> list[str]:
    return [f"scaling.num_workers={args.workers}", f"scaling.cpus_per_worker={args.cpus_per_worker}",
            "loop.torch_threads=1", f"loop.max_length={args.max_length}", "checkpoint.resume=false",
            "ray.num_cpus=4"]


def _seed_run(args, seed: int) -> dict:
    from distillery.data.synthetic import SyntheticConfig, write_splits
    from distillery.evaluate import EvaluateConfig
    from distillery.evaluate import run as evaluate
    from distillery.labeling import LabelConfig
    from distillery.labeling import run as label
    from distillery.training.job import TeacherJobConfig, TrainJobConfig, run, run_teacher

    run_dir = os.path.join(args.out, f"seed{seed}")
    shutil.rmtree(run_dir, ignore_errors=True)
    times = {}
    t = time.perf_counter()
    write_splits(SyntheticConfig(seed=seed, rows_train=args.rows_train, rows_unlabeled=args.rows_unlabeled,
                                 rows_test=args.rows_test), os.path.join(run_dir, "data"))
    times["data"] = time.perf_counter() - t

    teacher_yaml, label_teacher = TEACHERS[args.teacher]
    t = time.perf_counter()
    extra = [] if args.teacher == "two-tower" else [f"loop.epochs={args.teacher_epochs}", *_common(args)]
    teacher = run_teacher(load_config(TeacherJobConfig, teacher_yaml, [f"run_dir={run_dir}", f"loop.seed={seed}", *extra]))
    times["teacher"] = time.perf_counter() - t

    t = time.perf_counter()
    label(load_config(LabelConfig, "jobs/configs/label.yaml", [f"run_dir={run_dir}", f"teacher={label_teacher}"]))
    times["label"] = time.perf_counter() - t

    students = {}
    if "cross" in args.students:
        students["student"] = ("jobs/configs/train.yaml", [])
        students["student_direct"] = ("jobs/configs/train_direct.yaml", ["loop.match_steps_of=student"])  # equal steps
        if not args.skip_strict:
            students["student_direct_strict"] = ("jobs/configs/train_direct.yaml", [
                "output=student_direct_strict", "data.splits=[train, unlabeled]", "data.reveal_hidden_clicks=true"])
    if "two_tower" in args.students:
        # The student's head starts as the two-tower teacher's (init.head_from); its twin's as the same
        # logistic form fitted on its own click rows (no teacher). A fine-tuned teacher has no such head.
        fresh = ["init.head_from=null", "loop.init_bias_to_prior=true"]
        students["student_two_tower"] = ("jobs/configs/train_two_tower.yaml", [] if args.teacher == "two-tower" else fresh)
        students["student_two_tower_direct"] = ("jobs/configs/train_two_tower.yaml", [  # its click-only twin
            "init.head_from=clicks", "output=student_two_tower_direct", "data.splits=[train]", "loop.loss=click",
            "loop.match_steps_of=student_two_tower"])  # as many optimizer steps as the distilled student
    for name, (path, extra) in students.items():
        t = time.perf_counter()
        epochs = [] if any(e.startswith("loop.match_steps_of=") for e in extra) else [f"loop.epochs={args.student_epochs}"]
        run(load_config(TrainJobConfig, path, [f"run_dir={run_dir}", f"loop.seed={seed}", f"init.seed={seed}",
                                               *epochs, *_common(args), *extra]))
        times[name] = time.perf_counter() - t

    t = time.perf_counter()
    models = [f"models.{name}={{run_dir}}/{name}" for name in students if name not in ("student", "student_direct")]
    q = evaluate(load_config(EvaluateConfig, "jobs/configs/evaluate.yaml", [
        f"run_dir={run_dir}", *models, "num_threads=2",
        f"max_length={args.max_length}"]))["quality"]  # students are scored on the token window they were trained on
    times["evaluate"] = time.perf_counter() - t
    row = {"seed": seed, "teacher_auc": q["teacher"]["auc"], "oracle_auc": q["oracle_auc"],
           "teacher_logloss": q["teacher"]["logloss"], "teacher_ece": q["teacher"]["ece"],
           "teacher_val_auc": teacher["best"].get("val_auc"), "seconds": times}
    # (prefix of the row keys, distilled student, click-only twin, strict twin)
    kinds = [("", "student", "student_direct", "student_direct_strict"),
             ("two_tower_", "student_two_tower", "student_two_tower_direct", None)]
    for prefix, student, direct, strict in kinds:
        if student not in q:
            continue
        row.update({f"{prefix}student_auc": q[student]["auc"], f"{prefix}student_direct_auc": q[direct]["auc"],
                    f"{prefix}efficiency": q[student]["auc"] / q["teacher"]["auc"],
                    f"{prefix}gain_retention": gain_retention(q[student]["auc"], q["teacher"]["auc"]),
                    f"{prefix}gain_retention_ci": q[student].get("gain_retention_ci"),
                    f"{prefix}lift": q[student]["auc"] - q[direct]["auc"],
                    f"{prefix}student_logloss": q[student]["logloss"], f"{prefix}student_direct_logloss": q[direct]["logloss"],
                    f"{prefix}student_ece": q[student]["ece"]})
        if strict and strict in q:
            row.update({f"{prefix}student_direct_strict_auc": q[strict]["auc"], f"{prefix}strict_lift": q[student]["auc"] - q[strict]["auc"],
                        f"{prefix}student_direct_strict_logloss": q[strict]["logloss"]})
    shown = [("student", "student_auc"), ("direct", "student_direct_auc"), ("direct_strict", "student_direct_strict_auc"),
             ("efficiency", "efficiency"), ("gain_retention", "gain_retention"), ("lift", "lift"), ("strict_lift", "strict_lift"),
             ("two_tower", "two_tower_student_auc"), ("two_tower_direct", "two_tower_student_direct_auc"),
             ("two_tower_efficiency", "two_tower_efficiency"), ("two_tower_gain_retention", "two_tower_gain_retention"),
             ("two_tower_lift", "two_tower_lift"),
             ("two_tower_ece", "two_tower_student_ece")]
    print(f"seed {seed}: teacher {row['teacher_auc']:.4f}  oracle {row['oracle_auc']:.4f}  "
          + "  ".join(f"{label} {row[key]:+.4f}" if "lift" in key else f"{label} {row[key]:.4f}" for label, key in shown if key in row)
          + f"  ({', '.join(f'{k} {v:.0f}s' for k, v in times.items())})", flush=True)
    return row


def _throughput(args, run_dir: str, workers: int, threads: int) -> float:
    """Student training rows/s (train steps only, all workers together) on an existing run dir."""
    from distillery.training.job import TrainJobConfig, run

    summary = run(load_config(TrainJobConfig, "jobs/configs/train.yaml", [
        f"run_dir={run_dir}", f"output=throughput_w{workers}_t{threads}", "loop.epochs=1",
        f"loop.max_steps_per_epoch={args.throughput_steps}", f"scaling.num_workers={workers}",
        f"scaling.cpus_per_worker={args.cpus_per_worker}", f"loop.torch_threads={threads}",
        f"loop.max_length={args.max_length}", "checkpoint.resume=false", "data.val_fraction=0.01", "ray.num_cpus=4"]))
    return summary["history"][-1]["rows_per_s"]


def _latency_ms(model_dir: str, texts: list[str], max_length: int) -> float:
    """Median in-process batch-1 latency of a published model folder (tokenizing included), ms, one
    torch thread, fp32. A two-tower teacher encodes both towers on every call (no embedding cache)."""
    from distillery.teachers import build_teacher, folder_teacher_config

    runtime = {"batch_size": 1, "max_length": max_length, "device": "cpu", "num_threads": 1}
    cfg = folder_teacher_config(model_dir, **runtime)
    if cfg.kind == "two-tower":
        cfg = cfg.model_copy(update={"cache_size": 0})
    model = build_teacher(cfg)
    times = []
    for text in texts:
        t = time.perf_counter()
        model.predict_proba([text])
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times[5:])


def _stats(rows: list[dict], key: str) -> tuple[float, float]:
    vals = [r[key] for r in rows]
    return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rows-train", type=int, default=4_000)
    p.add_argument("--rows-unlabeled", type=int, default=12_000)
    p.add_argument("--rows-test", type=int, default=4_000)
    p.add_argument("--teacher", choices=list(TEACHERS), default="two-tower")
    p.add_argument("--teacher-epochs", type=int, default=2, help="--teacher fine-tune only")
    p.add_argument("--student-epochs", type=int, default=1)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--throughput-steps", type=int, default=30, help="train steps per throughput measurement")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--students", nargs="+", choices=["cross", "two_tower"], default=["cross", "two_tower"],
                   help="student architectures: cross-encoder (student, student_direct[, strict]) and/or two-tower")
    p.add_argument("--skip-strict", action="store_true", help="skip the cross-encoder's strict click-only baseline")
    p.add_argument("--out", default="runs/bench_distill")
    args = p.parse_args(argv)

    from distillery.ray_runtime import RaySection, ensure_ray

    t0 = time.perf_counter()
    ensure_ray(RaySection(num_cpus=4))
    rows = [_seed_run(args, s) for s in args.seeds]
    summary: dict = {"seeds": args.seeds, "rows": [args.rows_train, args.rows_unlabeled, args.rows_test],
                     "teacher": args.teacher, "student_epochs": args.student_epochs, "max_length": args.max_length,
                     "student": f"layer_subset {STUDENT_LAYERS} of MiniLM-L6 (student and both baselines)",
                     "students": args.students, "skip_strict": args.skip_strict}
    for key in ("teacher_auc", "student_auc", "student_direct_auc", "student_direct_strict_auc", "oracle_auc",
                "efficiency", "gain_retention", "lift", "strict_lift", "student_logloss", "student_ece", "two_tower_student_auc",
                "two_tower_student_direct_auc", "two_tower_efficiency", "two_tower_gain_retention", "two_tower_lift", "two_tower_student_logloss", "two_tower_student_ece"):
        if key not in rows[0]:
            continue
        mean, std = _stats(rows, key)
        summary[key] = round(mean, 4)
        summary[f"{key}_std"] = round(std, 4)
        print(f"{key:>28}: {mean:.4f} ± {std:.4f}")
    for key in ("efficiency", "gain_retention", "lift", "strict_lift", "two_tower_efficiency", "two_tower_gain_retention",
                "two_tower_lift"):
        if key in rows[0]:
            summary[f"{key}_min"] = round(min(r[key] for r in rows), 4)
    for key in ("gain_retention", "two_tower_gain_retention"):
        if key in rows[0]:
            summary[f"{key}_mean"] = summary[key]
    if "lift" in rows[0]:
        summary["student_beats_direct_every_seed"] = all(r["lift"] > 0 for r in rows)
    if "strict_lift" in rows[0]:
        summary["student_beats_strict_direct_every_seed"] = all(r["strict_lift"] > 0 for r in rows)
    if "two_tower_lift" in rows[0]:
        summary["two_tower_beats_its_twin_every_seed"] = all(r["two_tower_lift"] > 0 for r in rows)
    if not args.skip_throughput and "cross" in args.students:
        run_dir = os.path.join(args.out, f"seed{args.seeds[0]}")
        one = _throughput(args, run_dir, 1, 1)
        two = _throughput(args, run_dir, 2, 1)
        one_two_threads = _throughput(args, run_dir, 1, 2)
        summary.update(train_rows_per_s_1w=round(one, 1), train_rows_per_s_2w=round(two, 1),
                       train_rows_per_s_1w_2threads=round(one_two_threads, 1), train_2v1=round(two / one, 3),
                       train_2w_vs_1w_2threads=round(two / one_two_threads, 3))
        print(f"train throughput: 1 worker {one:.1f} rows/s, 2 workers {two:.1f} rows/s (2v1 {two / one:.2f}x); "
              f"1 worker x 2 threads {one_two_threads:.1f} rows/s")
    else:
        summary["train_2v1"] = None
    from distillery.data.schema import TEXT_FIELDS
    from distillery.data.text import to_texts
    from distillery.training.data import read_split

    run_dir = os.path.join(args.out, f"seed{args.seeds[0]}")
    test = read_split(run_dir, "test", 45)
    texts = to_texts({c: test[c].to_pylist() for c in TEXT_FIELDS})
    if "cross" not in args.students:  # bid latency of both students: bench/bidder_inprocess.py
        summary["per_seed"] = rows
        summary["seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(summary, default=float))
        return 0
    teacher_ms = _latency_ms(os.path.join(run_dir, "teacher"), texts, args.max_length)
    student_ms = _latency_ms(os.path.join(run_dir, "student"), texts, args.max_length)
    summary.update(teacher_ms_b1=round(teacher_ms, 2), student_ms_b1=round(student_ms, 2),
                   student_speedup=round(teacher_ms / student_ms, 2))
    print(f"batch-1 latency (1 thread, fp32 PyTorch, tokenizing included): teacher {teacher_ms:.2f} ms, student {student_ms:.2f} ms "
          f"({teacher_ms / student_ms:.1f}x)")
    summary["per_seed"] = rows
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(summary, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
