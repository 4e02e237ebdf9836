"""python bench/teacher_recipes.py --stage oracle|zeroshot|probe|finetune [--recipe NAME ...] [--rows-train 4000]

Why does the MiniLM teacher not learn to rank the synthetic clicks, and which recipe fixes it?
Every stage runs single-process (no Ray) on in-memory synthetic splits of one seed and appends one
JSON object per result to `--out` (default bench/teacher_recipes.jsonl); `--stage table` prints
them as the markdown table in BENCHMARKS.md (teacher recipes).

  oracle    AUC of the true click probability, and of its parts a model could learn: topic
            relevance alone, relevance + slot position (the generator's own coefficients).
  zeroshot  all-MiniLM-L6-v2 as the bi-encoder it was trained to be: cosine(query, ad title),
            no training; then a 3-feature logistic regression (cosine, position) on train clicks.
  probe     frozen MiniLM features of `to_text(row)` ([CLS] pooler output = what the classifier
            head reads, and mean pooling) → logistic regression on train clicks.
  finetune  `distillery.training.loop.train` with a named recipe (RECIPES), scored on test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

# name: LoopConfig overrides on top of BASE (the demo teacher: jobs/configs/demo.yaml).
BASE = {"loss": "click", "epochs": 1, "batch_size": 32, "max_length": 64, "lr": 1e-4,
        "freeze_embeddings": True, "torch_threads": 2}
RECIPES: dict[str, dict] = {
    "demo": {},
    "lr3e-5": {"lr": 3e-5},
    "bs16": {"batch_size": 16},
    "ep2": {"epochs": 2},
    "unfrozen": {"freeze_embeddings": False},
    "len80": {"max_length": 80},
}
# (A head learning rate of its own and a linear-probe head start were tried as well, 2026-11-26:
# no better than `demo`, so both options were removed from LoopConfig; BENCHMARKS.md keeps the rows.)


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _emit(out: str, record: dict) -> None:
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **record}
    print(json.dumps(record), flush=True)
    with open(out, "a") as f:
        f.write(json.dumps(record) + "\n")


def _splits(seed: int, rows_train: int, rows_test: int):
    from distillery.data.synthetic import SyntheticConfig, generate

    cfg = SyntheticConfig(seed=seed, rows_train=rows_train, rows_unlabeled=0, rows_test=rows_test)
    return generate(cfg, "train").to_pydict(), generate(cfg, "test").to_pydict()


def _texts(cols: dict) -> list[str]:
    from distillery.data.schema import TEXT_FIELDS
    from distillery.data.text import to_texts

    return to_texts({c: cols[c] for c in TEXT_FIELDS})


def _relevance(cols: dict) -> np.ndarray:
    """Topic relevance (1 / 0.4 / 0) recovered from the text: ad title → topic, query → topic by the
    longest topic phrasing it contains (the generator does not store topics)."""
    from distillery.data.vocab import TOPICS

    title_topic = {title: t for t, spec in TOPICS.items() for title in spec[3]}
    phrases = sorted(((p, t) for t, spec in TOPICS.items() for p in spec[2]), key=lambda x: -len(x[0]))
    related = {t: set(spec[1]) for t, spec in TOPICS.items()}
    for t, rs in list(related.items()):
        for r in rs:
            related[r].add(t)
    out = np.zeros(len(cols["query"]))
    for i, (q, title) in enumerate(zip(cols["query"], cols["ad_title"])):
        qt = next((t for p, t in phrases if p in q), None)
        at = title_topic[title]
        out[i] = 1.0 if qt == at else 0.4 if qt in related[at] else 0.0
    return out


def _position_effect(cols: dict) -> np.ndarray:
    return np.array([0.0, 0.0, -0.35, -0.6, -0.8])[np.asarray(cols["position"])]


def stage_oracle(args) -> None:
    from distillery.metrics import roc_auc

    train, test = _splits(args.seed, args.rows_train, args.rows_test)
    y = np.asarray(test["click"], dtype=float)
    rel = _relevance(test)
    for name, score in {"oracle (click_prob)": np.asarray(test["click_prob"]), "relevance only": rel,
                        "relevance + position": 2.0 * rel + _position_effect(test)}.items():
        _emit(args.out, {"stage": "oracle", "recipe": name, "rows_train": 0, "rows_test": len(y),
                         "test_clicks": int(y.sum()), "test_auc": roc_auc(y, score), "seed": args.seed})
    ytr = np.asarray(train["click"])
    _log(f"train CTR {ytr.mean():.4f} ({int(ytr.sum())} clicks); test CTR {y.mean():.4f} ({int(y.sum())} clicks)")


def _encoder(max_length: int = 64):
    from distillery.models import default_backbone
    from distillery.teachers.retrieval import TextEncoder

    return TextEncoder(default_backbone(), batch_size=128, max_length=max_length, num_threads=2, device="cpu")


def _fit_lr(x_tr, y_tr, x_te, c: float = 1.0):
    """Test logits of an L2 logistic regression (C = 1/l2) on train-standardised features."""
    from distillery.training.two_tower_teacher import fit_logistic

    mean, std = x_tr.mean(0), x_tr.std(0)
    std[std < 1e-12] = 1.0
    w, b = fit_logistic((x_tr - mean) / std, y_tr, l2=1.0 / c)
    return (x_te - mean) / std @ w + b


def stage_zeroshot(args) -> None:
    from distillery.metrics import roc_auc

    train, test = _splits(args.seed, args.rows_train, args.rows_test)
    enc = _encoder()
    t0 = time.perf_counter()
    feats = {}
    for name, cols in (("train", train), ("test", test)):
        uq, qi = np.unique(cols["query"], return_inverse=True)
        ut, ti = np.unique(cols["ad_title"], return_inverse=True)
        eq, et = enc.encode(list(uq)), enc.encode(list(ut))
        cos = (eq[qi] * et[ti]).sum(1)
        pos = np.eye(4)[np.asarray(cols["position"]) - 1][:, 1:]
        feats[name] = (cos, pos, np.asarray(cols["click"], dtype=float))
    secs = time.perf_counter() - t0
    cos_te, pos_te, y_te = feats["test"]
    cos_tr, pos_tr, y_tr = feats["train"]
    base = {"stage": "zeroshot", "rows_test": len(y_te), "seed": args.seed}
    _emit(args.out, {**base, "recipe": "bi-encoder cos(query, ad title), zero-shot", "rows_train": 0,
                     "test_auc": roc_auc(y_te, cos_te), "wall_s": secs})
    score = _fit_lr(np.column_stack([cos_tr, pos_tr]), y_tr, np.column_stack([cos_te, pos_te]))
    _emit(args.out, {**base, "recipe": "LR on [cos, position] (bi-encoder features)", "rows_train": len(y_tr),
                     "test_auc": roc_auc(y_te, score)})
    rel_te = _relevance(test)
    _emit(args.out, {**base, "recipe": "corr(cos, true relevance) on test", "rows_train": 0,
                     "test_auc": float(np.corrcoef(cos_te, rel_te)[0, 1])})


def _frozen_features(texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(pooler output, mean pooling): two (n, 384) float32 feature sets of the frozen backbone."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from distillery.models import default_backbone

    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(default_backbone())
    model = AutoModel.from_pretrained(default_backbone()).eval()
    pooler, mean = [], []
    with torch.inference_mode():
        for i in range(0, len(texts), 128):
            b = tok(texts[i:i + 128], truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            out = model(**b)
            m = b["attention_mask"].unsqueeze(-1).float()
            pooler.append(out.pooler_output.numpy())
            mean.append(((out.last_hidden_state * m).sum(1) / m.sum(1)).numpy())
    return np.concatenate(pooler), np.concatenate(mean)


def stage_probe(args) -> None:
    from distillery.metrics import roc_auc

    train, test = _splits(args.seed, args.rows_train, args.rows_test)
    t0 = time.perf_counter()
    p_tr, m_tr = _frozen_features(_texts(train), args.max_length)
    p_te, m_te = _frozen_features(_texts(test), args.max_length)
    secs = time.perf_counter() - t0
    y_tr, y_te = np.asarray(train["click"], dtype=float), np.asarray(test["click"], dtype=float)
    _log(f"features: {secs:.0f}s for {len(y_tr) + len(y_te)} rows")
    for n in sorted({min(n, len(y_tr)) for n in (1000, 2000, 4000, 10000)}):
        for name, (ftr, fte) in {"pooler ([CLS], the classifier's input)": (p_tr, p_te), "mean pooling": (m_tr, m_te)}.items():
            for c in (0.01, 0.1):
                score = _fit_lr(ftr[:n], y_tr[:n], fte, c)
                _emit(args.out, {"stage": "probe", "recipe": f"frozen {name} + LR C={c}", "rows_train": n,
                                 "max_length": args.max_length, "test_auc": roc_auc(y_te, score), "seed": args.seed})


def stage_finetune(args) -> None:
    import torch

    from distillery.metrics import roc_auc
    from distillery.training.data import TrainingTable, is_validation_id
    from distillery.training.init import ModelInit, build_model
    from distillery.training.loop import LoopConfig, score_texts, train

    train_cols, test = _splits(args.seed, args.rows_train, args.rows_test)
    ids = train_cols["id"]
    click = np.asarray(train_cols["click"], dtype=np.float32)
    table = TrainingTable(ids=ids, texts=_texts(train_cols), split=["train"] * len(ids), target=click.copy(),
                          teacher_prob=np.full(len(ids), np.nan, dtype=np.float32), click=click,
                          is_val=np.array([is_validation_id(i, 0.1) for i in ids]))
    test_texts, y_te = _texts(test), np.asarray(test["click"], dtype=float)
    for name in args.recipe:
        overrides = {**BASE, **RECIPES[name], **json.loads(args.override or "{}"), "seed": args.seed}
        cfg = LoopConfig(**overrides)
        model, tok = build_model(ModelInit(kind="pretrained", source="minilm", seed=args.seed))
        torch.set_num_threads(2)
        t0 = time.perf_counter()
        state = train(cfg, table, model, tok)
        wall = time.perf_counter() - t0
        t1 = time.perf_counter()
        prob = score_texts(model, tok, test_texts, max_length=cfg.max_length)
        _emit(args.out, {
            "stage": "finetune", "recipe": name, "overrides": {k: v for k, v in overrides.items() if BASE.get(k) != v},
            "rows_train": int((~table.is_val).sum()), "train_clicks": int(click[~table.is_val].sum()), "epochs": cfg.epochs,
            "wall_s": round(wall, 1), "score_s": round(time.perf_counter() - t1, 1), "test_auc": roc_auc(y_te, prob),
            "val_auc": [h["val_auc"] for h in state.history], "prob_range": [float(prob.min()), float(prob.max())],
            "rows_test": len(y_te), "seed": args.seed, "load_avg_1m": os.getloadavg()[0],
        })


def stage_table(args) -> None:
    rows = [json.loads(line) for line in open(args.out)]
    print("| stage | recipe | train rows | epochs | wall s | test AUC |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['stage']} | {r['recipe']} | {r.get('rows_train', '')} | {r.get('epochs', '')} | "
              f"{r.get('wall_s', '')} | {r['test_auc']:.4f} |")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=["oracle", "zeroshot", "probe", "finetune", "table"], required=True)
    p.add_argument("--recipe", nargs="*", default=["demo"], choices=list(RECIPES))
    p.add_argument("--override", default=None, help="JSON of extra LoopConfig fields for every recipe")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rows-train", type=int, default=4000)
    p.add_argument("--rows-test", type=int, default=3000)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--out", default="bench/teacher_recipes.jsonl")
    args = p.parse_args(argv)
    {"oracle": stage_oracle, "zeroshot": stage_zeroshot, "probe": stage_probe,
     "finetune": stage_finetune, "table": stage_table}[args.stage](args)


if __name__ == "__main__":
    sys.exit(main())
