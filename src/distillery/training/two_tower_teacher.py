"""Fitting the two-tower teacher's click head (`teachers.two_tower`) on a run's logged clicks.

    result = fit_two_tower("runs/demo", "teacher", TwoTowerFit(), ["train"], val_fraction=0.1)
    w, b = fit_logistic(z, clicks, l2=1.0)       # z: (n, d) standardised features; w: (d,), b: float

The `distillery teacher` job with `kind: two-tower` runs `fit_two_tower`: it embeds each row's
request and ad towers with the sentence encoder, builds [cosine, one-hot categorical levels],
standardises them on the training rows and fits an L2 logistic regression (`fit_logistic`,
scikit-learn's Newton–Cholesky solver) on the clicks; the held-out ids give a validation AUC. The
head and its summary are published to `<run_dir>/<output>/` atomically. Seconds on a CPU: the
encoder is not trained, and repeated strings are embedded once.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from pydantic import Field

from distillery import io
from distillery.config import ConfigError, Section
from distillery.data.text import from_text
from distillery.teachers.configs import Dtype
from distillery.teachers.two_tower import CachedEncoder, TwoTowerHead, cosines

__all__ = ["TwoTowerFit", "fit_logistic", "fit_two_tower", "check_fields"]

log = logging.getLogger(__name__)


class TwoTowerFit(Section):
    """How `distillery teacher` (kind: two-tower) fits the click head."""

    encoder: str = Field("minilm", description="sentence encoder: `minilm` (packaged all-MiniLM-L6-v2), a folder or URI")
    request_fields: list[str] = Field(["query"], min_length=1, description="log columns forming the request tower's text (any column: query, site_id, C3, ...)")
    ad_fields: list[str] = Field(["ad_title", "ad_description"], min_length=1, description="log columns forming the ad tower's text, joined by '. '")
    categorical: list[str] = Field(["position"], description="log columns added to the head as one-hot features (first level is the reference)")
    min_level_rows: int = Field(20, ge=1, description="categorical levels seen on fewer training rows share the reference weight")
    l2: float = Field(1.0, ge=0.0, description="L2 penalty of the logistic regression on standardised features (bias not penalised)")
    batch_size: int = Field(128, ge=1, description="texts per encoder forward pass")
    max_length: int = Field(64, ge=8, description="encoder tokens per text")
    dtype: Dtype = Field("fp32", description="encoder dtype while fitting")
    num_threads: int | None = Field(None, ge=1, description="torch intra-op threads while fitting")


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0) -> tuple[np.ndarray, float]:
    """L2-penalised logistic regression: (weights (d,), intercept), x (n, d) float, y (n,) in {0, 1}.

    Minimises Σ BCE(y_i, σ(x_i·w + b)) + l2/2·|w|² (the bias is not penalised; l2 = 1/C of
    scikit-learn's LogisticRegression, 0 = unpenalised); x should be standardised. Solved by
    scikit-learn's Newton–Cholesky to a gradient of ~1e-10, so it is the exact penalised optimum.
    """
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = len(y)
    if n == 0 or not 0 < y.mean() < 1:
        raise ValueError(f"fit_logistic: need both classes among the rows (n={n}, positives={int(y.sum())})")
    model = LogisticRegression(C=1.0 / l2 if l2 > 0 else np.inf, solver="newton-cholesky", tol=1e-10, max_iter=100)
    model.fit(x, y)
    return model.coef_[0].astype(np.float64), float(model.intercept_[0])


def fit_two_tower(run_dir: str, output: str, cfg: TwoTowerFit, splits: list[str], val_fraction: float,
                  seed: int = 0) -> dict[str, Any]:
    """Fit the click head on `splits` of the run's data (rows with a known click), hold out
    `val_fraction` of ids for a validation AUC, publish `<run_dir>/<output>/` atomically."""
    import hashlib

    from distillery.data.schema import CLICK, ID
    from distillery.data.text import table_texts
    from distillery.metrics import roc_auc
    from distillery.teachers.retrieval import TextEncoder
    from distillery.training.data import is_validation_id, read_split

    t0 = time.perf_counter()
    texts, clicks, ids = [], [], []
    for split in splits:
        table = read_split(run_dir, split)
        if CLICK not in table.column_names:
            raise ConfigError(f"data.splits: split {split!r} has no click column")
        check_fields(cfg, table.column_names, split)
        keep = [i for i, c in enumerate(table[CLICK].to_pylist()) if c is not None]
        table = table.take(keep)
        texts += table_texts(table)  # every column, as labeling renders it; the towers read theirs back
        clicks += [float(c) for c in table[CLICK].to_pylist()]
        ids += [str(i) for i in table[ID].to_pylist()]
    y = np.asarray(clicks)
    is_val = np.array([is_validation_id(i, val_fraction) for i in ids], dtype=bool)
    if y[~is_val].sum() == 0:
        raise ConfigError(f"data.splits: no clicks among the {int((~is_val).sum())} training rows of {splits}")
    rows = [from_text(t, extras=True) for t in texts]
    encoder = CachedEncoder(TextEncoder(cfg.encoder, batch_size=cfg.batch_size, max_length=cfg.max_length,
                                         dtype=cfg.dtype, device="cpu", num_threads=cfg.num_threads), cache_size=1 << 30)
    t_enc = time.perf_counter()
    cos = cosines(encoder, rows, cfg.request_fields, cfg.ad_fields)
    encode_s = time.perf_counter() - t_enc
    levels: dict[str, list[str]] = {}
    for name in cfg.categorical:
        values = [r.get(name) for r, v in zip(rows, is_val) if not v]
        counts: dict[str, int] = {}
        for v in values:
            if v is not None:
                counts[v] = counts.get(v, 0) + 1
        ordered = sorted(counts, key=lambda v: (-counts[v], v))
        levels[name] = sorted((v for v in ordered[1:] if counts[v] >= cfg.min_level_rows), key=_natural)
    head = TwoTowerHead(encoder=cfg.encoder, request_fields=cfg.request_fields, ad_fields=cfg.ad_fields, levels=levels,
                        mean=[], std=[], weights=[], intercept=0.0, max_length=cfg.max_length)
    x = head.features(cos, rows)
    mean, std = x[~is_val].mean(0), x[~is_val].std(0)
    std[std < 1e-12] = 1.0
    head.mean, head.std = mean.tolist(), std.tolist()
    w, b = fit_logistic((x[~is_val] - mean) / std, y[~is_val], l2=cfg.l2)
    head.weights, head.intercept = w.tolist(), b
    logits = head.logits(x)
    summary = {
        "kind": "two-tower", "encoder": cfg.encoder, "splits": splits,
        "train_rows": int((~is_val).sum()), "train_clicks": int(y[~is_val].sum()),
        "val_rows": int(is_val.sum()), "val_clicks": int(y[is_val].sum()),
        "train_auc": roc_auc(y[~is_val], logits[~is_val]),
        "val_auc": roc_auc(y[is_val], logits[is_val]) if 0 < y[is_val].sum() < is_val.sum() else None,
        "zero_shot_val_auc": roc_auc(y[is_val], cos[is_val]) if 0 < y[is_val].sum() < is_val.sum() else None,
        "distinct_texts": encoder.misses, "encode_seconds": round(encode_s, 2),
        "weights": dict(zip(head.feature_names, [round(v, 4) for v in head.weights])),
        "seed": seed,
    }
    summary["fingerprint"] = hashlib.sha256(repr((head.weights, head.intercept, head.mean, head.std)).encode()).hexdigest()[:12]
    head.fit = summary
    dest = io.join(run_dir, output)
    _publish(head, dest, {**summary, "seconds": round(time.perf_counter() - t0, 2)})
    log.info("two-tower teacher: %s", summary)
    return {"output": dest, "best": {"val_auc": summary["val_auc"], "train_auc": summary["train_auc"],
                                     "train_rows": summary["train_rows"], "train_clicks": summary["train_clicks"]},
            "summary": summary}


def check_fields(cfg: TwoTowerFit, columns: list[str], split: str) -> None:
    """Every tower and categorical field is a column of the log that reaches the model text; a
    ConfigError names the field list and the column otherwise."""
    from distillery.data.schema import is_text_column

    for name in ("request_fields", "ad_fields", "categorical"):
        for column in getattr(cfg, name):
            if column not in columns:
                raise ConfigError(f"two_tower.{name}: column {column!r} is not in split {split!r}; "
                                  f"its columns are {[c for c in columns if is_text_column(c)]}")
            if not is_text_column(column):
                raise ConfigError(f"two_tower.{name}: column {column!r} is identity, time or a label, "
                                  "never part of the model text")


def _natural(value: str) -> tuple:
    return (0, float(value), value) if value.replace(".", "", 1).lstrip("-").isdigit() else (1, 0.0, value)


def _publish(head: TwoTowerHead, dest: str, summary: dict[str, Any]) -> None:
    """Write the head and summary so a reader never sees a half-written folder (`distillery.publish`)."""
    from distillery.publish import staged_folder

    with staged_folder(dest) as tmp:
        head.save(tmp)
        io.write_json(io.join(tmp, "training_summary.json"), summary)
