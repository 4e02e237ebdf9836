"""python bench/compress.py [--student runs/demo/student] [--teacher PATH] [--keep-layers 0 5] [--calls 150]

How much faster and smaller is the compressed student than the teacher, and what does INT8 cost?

  1. synthetic ad logs (train for the student and calibration, test with true clicks for AUC);
  2. teacher: PyTorch MiniLM-L6 with a classification head (or --teacher, a HF folder);
  3. student: --student (a trained HF folder), else the teacher's layers [0, 5] fine-tuned for a
     few steps on the synthetic rows' true click probabilities (a stand-in for teacher labels), so
     the AUC the INT8 gate compares is a real, non-random ranking;
  4. `distillery.compress.job.run` on it: ONNX FP32 (parity with PyTorch), INT8 dynamic per-channel,
     fusion kept only if faster, AUC of every variant on the test rows;
  5. latency of teacher (PyTorch), student FP32 (PyTorch and ORT) and student INT8 (ORT) at batch 1
     and batch 32, measured round-robin on the same texts (ratios side by side), tokenisation
     included, one thread each (torch.set_num_threads(1), ORT intra_op=1: one serving replica).

Prints a table and, as its last line, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402


def _texts_and_clicks(table):
    from distillery.data.text import to_text

    rows = table.to_pylist()
    return [to_text(r) for r in rows], np.asarray([r["click"] for r in rows], dtype=np.float64)


def build_student(teacher_dir: str, keep_layers: list[int], texts: list[str], targets: np.ndarray, out: str,
                  steps: int, batch_size: int = 32, lr: float = 1e-4, seed: int = 0) -> dict:
    """Teacher layers `keep_layers`, fine-tuned for `steps` steps on soft targets (BCE), saved to `out`.

    The targets are the synthetic logs' true click probabilities: a stand-in for teacher labels
    that needs no teacher run, so the AUC the INT8 gate compares is a real, non-random ranking.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distillery.compress.prune import prune_layers

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    model = AutoModelForSequenceClassification.from_pretrained(teacher_dir, num_labels=1)
    prune_layers(model, keep_layers)
    with torch.no_grad():  # start at the base rate so early steps learn ranking, not the prior
        prior = float(np.clip(targets.mean(), 1e-4, 1 - 1e-4))
        model.classifier.bias.fill_(float(np.log(prior / (1 - prior))))
    # The word embeddings are half the parameters and their dense AdamW update dominated step time
    # on 2 shared cores; a short fine-tune learns what it needs in the layers and the head.
    model.base_model.embeddings.word_embeddings.weight.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    model.train()
    t0, losses = time.perf_counter(), []
    for step in range(steps):
        idx = rng.choice(len(texts), batch_size, replace=False)
        enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=128, return_tensors="pt")
        logits = model(**enc).logits[:, 0]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor(targets[idx], dtype=torch.float32))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    model.eval().save_pretrained(out)
    tok.save_pretrained(out)
    return {"kind": "fine-tuned on click_prob", "keep_layers": keep_layers, "steps": steps, "batch": batch_size,
            "loss_first_last": [round(float(np.mean(losses[:10])), 4), round(float(np.mean(losses[-10:])), 4)],
            "train_s": round(time.perf_counter() - t0, 1)}


def _torch_predict(model_dir: str, max_length: int = 128):
    import torch
    from transformers import AutoTokenizer

    from distillery.compress.prune import load_pruned

    model = load_pruned(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)

    def predict(texts):
        with torch.no_grad():
            enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            logits = model(**enc).logits
            return torch.sigmoid(logits[:, -1] if logits.shape[1] == 1 else logits[:, 1] - logits[:, 0]).numpy()

    return predict, model.num_parameters()


def _weights_mb(folder: str) -> float:
    return round(sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)
                     if f.endswith((".safetensors", ".bin"))) / 1e6, 2)


def main(argv: list[str] | None = None) -> int:
    import pyarrow.parquet as pq
    import torch

    from distillery.compress.job import CompressConfig, run as compress
    from distillery.compress.validate import interleaved_latency
    from distillery.data.synthetic import SyntheticConfig, generate
    from distillery.models import default_backbone
    from distillery.onnx_model.scorer import OnnxScorer

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    p.add_argument("--teacher", default=None, help="teacher HF folder (default: MiniLM-L6 + a classification head)")
    p.add_argument("--student", default=None, help="trained student HF folder (default: teacher layers, briefly fine-tuned)")
    p.add_argument("--keep-layers", type=int, nargs="+", default=[0, 5], help="teacher layers the default student keeps")
    p.add_argument("--ffn-keep-ratio", type=float, default=1.0, help="FFN units kept by the compress job")
    p.add_argument("--rows-train", type=int, default=6000, help="synthetic rows for the student's fine-tune and calibration")
    p.add_argument("--train-steps", type=int, default=150, help="fine-tune steps (batch 32) of the default student")
    p.add_argument("--train-threads", type=int, default=2, help="torch threads while fine-tuning")
    p.add_argument("--rows-test", type=int, default=6000, help="synthetic test rows for AUC")
    p.add_argument("--calls", type=int, default=150, help="batch-1 calls per model (batch 32: a fifth of it)")
    p.add_argument("--threads", type=int, default=1, help="torch and ORT intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench_compress", help="run directory for the ONNX folder and results")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    syn = SyntheticConfig(seed=args.seed, rows_train=args.rows_train, rows_test=args.rows_test, rows_unlabeled=0)
    train, test = generate(syn, "train"), generate(syn, "test")
    for split, table in (("train", train), ("test", test)):
        os.makedirs(os.path.join(args.out, "data", split), exist_ok=True)
        pq.write_table(table, os.path.join(args.out, "data", split, "part-0.parquet"))
    test_texts, _ = _texts_and_clicks(test)

    teacher_dir = args.teacher or default_backbone()
    with tempfile.TemporaryDirectory(prefix="bench-compress-") as tmp:
        if args.teacher is None:  # MiniLM + a classification head, saved as a plain HF classifier folder
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            teacher_dir = os.path.join(tmp, "teacher")
            AutoModelForSequenceClassification.from_pretrained(default_backbone(), num_labels=1).save_pretrained(teacher_dir)
            AutoTokenizer.from_pretrained(default_backbone()).save_pretrained(teacher_dir)
        if args.student:
            student_dir, student_info = args.student, {"kind": "given", "path": args.student}
        else:
            student_dir = os.path.join(args.out, "student")
            texts, _ = _texts_and_clicks(train)
            torch.set_num_threads(args.train_threads)
            student_info = build_student(teacher_dir, args.keep_layers, texts, train.column("click_prob").to_numpy(),
                                         student_dir, args.train_steps, seed=args.seed)
            torch.set_num_threads(args.threads)
        cfg = CompressConfig(run_dir=args.out, student=os.path.abspath(student_dir), ffn_keep_ratio=args.ffn_keep_ratio,
                             validation={"rows": args.rows_test, "gate": "warn", "latency_calls": 0,
                                         "num_threads": args.threads})
        card = compress(cfg)
        onnx_dir = os.path.join(args.out, "onnx")
        teacher_predict, teacher_params = _torch_predict(teacher_dir)
        student_predict, student_params = _torch_predict(card["lineage"]["source_model"])
        fp32 = OnnxScorer(onnx_dir, "fp32", intra_op_threads=args.threads)
        int8 = OnnxScorer(onnx_dir, "int8", intra_op_threads=args.threads)
        models = {"teacher_torch": teacher_predict, "student_fp32_torch": student_predict,
                  "student_fp32_ort": fp32.predict_proba, "student_int8_ort": int8.predict_proba}
        lat1 = interleaved_latency(models, test_texts, calls=args.calls, batch=1)
        lat32 = interleaved_latency(models, test_texts, calls=max(10, args.calls // 5), warmup=3, batch=32)
        # The same two graphs on pre-tokenised inputs: what INT8 does to the model itself, without the
        # per-call tokenisation and Python costs it cannot shrink.
        few = test_texts[:50]
        feeds = {t: fp32.encode([t]) for t in few}

        def session_run(scorer):
            return lambda group: scorer.session.run(None, feeds[group[0]])

        runs = {"fp32": session_run(fp32), "int8": session_run(int8)}
        lat_model = interleaved_latency(runs, few, calls=args.calls, batch=1)
        size = {"teacher_torch": _weights_mb(teacher_dir), "student_fp32_torch": _weights_mb(card["lineage"]["source_model"]),
                "student_fp32_ort": card["size_mb"]["fp32"], "student_int8_ort": card["size_mb"]["int8"]}

    auc = card["metrics"]["auc"]
    print(f"student: {student_info}; {student_params / 1e6:.1f} M params vs teacher {teacher_params / 1e6:.1f} M; "
          f"graph optimisation: {card['metrics']['graph_optimization']['chosen']}; threads {args.threads}")
    print(f"{'model':<20}{'b1 p50':>9}{'b1 p99':>9}{'b32 p50':>9}{'b32 p99':>9}{'size MB':>9}")
    for k in models:
        print(f"{k:<20}{lat1[k]['p50']:>9.2f}{lat1[k]['p99']:>9.2f}{lat32[k]['p50']:>9.1f}{lat32[k]['p99']:>9.1f}{size[k]:>9.1f}")
    print(f"{'session.run only':<20}fp32 {lat_model['fp32']['p50']:.2f} / int8 {lat_model['int8']['p50']:.2f} ms p50 (batch 1)")
    ratio = lambda a, b, lat: round(lat[a]["p50"] / lat[b]["p50"], 2)  # noqa: E731
    result = {
        "int8_vs_fp32": ratio("student_fp32_ort", "student_int8_ort", lat1),
        "int8_vs_fp32_b32": ratio("student_fp32_ort", "student_int8_ort", lat32),
        "student_int8_vs_teacher": ratio("teacher_torch", "student_int8_ort", lat1),
        "student_int8_vs_teacher_b32": ratio("teacher_torch", "student_int8_ort", lat32),
        "int8_vs_fp32_model_only": ratio("fp32", "int8", lat_model),
        "ort_fp32_vs_torch_fp32": ratio("student_fp32_torch", "student_fp32_ort", lat1),
        "int8_auc_drop": round(auc["fp32"] - auc["int8"], 5),
        "student_fp32_auc": round(auc["fp32"], 4), "student_int8_auc": round(auc["int8"], 4),
        "student_int8_p50_ms": lat1["student_int8_ort"]["p50"], "student_int8_p99_ms": lat1["student_int8_ort"]["p99"],
        "teacher_p50_ms": lat1["teacher_torch"]["p50"],
        "size_mb": size, "size_teacher_vs_int8": round(size["teacher_torch"] / size["student_int8_ort"], 2),
        "fp32_max_abs_diff": card["metrics"]["fp32_parity"]["max_abs_diff"],
        "quality_gate_passed": card["metrics"]["quality_gate"]["passed"],
        "graph_optimization": card["metrics"]["graph_optimization"]["chosen"],
        "test_rows": card["metrics"]["validation_rows"], "test_clicks": card["metrics"]["validation_clicks"],
        "threads": args.threads, "calls_b1": args.calls, "wall_s": round(time.perf_counter() - t_start, 1),
        "latency_ms": {"batch1": lat1, "batch32": lat32, "batch1_session_run_only": lat_model},
    }
    with open(os.path.join(args.out, "bench_compress.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
