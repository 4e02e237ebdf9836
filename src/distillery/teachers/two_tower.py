"""`two-tower`: a sentence encoder used the way it was trained, with a click head fitted on logs.

    p(click) = σ(w · standardise([cos(e(request), e(ad)), one-hot(position), …]) + b)

`e` is the encoder's mean-pooled, L2-normalised embedding (how sentence-transformers runs
all-MiniLM-L6-v2); the request is the row's `request_fields` (the query or page text), the ad its
`ad_fields` joined as "title. description". Any column of the log may be a tower or categorical
field (a Criteo `C3`, an Avazu `site_id`): both are recovered from the canonical row text
(`from_text`, extras included), so the teacher reads the same strings as every other backend. The head is an L2
logistic regression over the cosine and one-hot categorical fields, fitted on the train split's
clicks by `fit_two_tower` (the `distillery teacher` job with `kind: two-tower`).

Why this teacher: with a few thousand logged clicks a fine-tuned cross-encoder has to discover a
query-topic × ad-topic interaction from ~100 positives and stays near-constant (BENCHMARKS.md,
teacher recipes); the encoder's pretrained similarity already ranks relevance with no training,
so the clicks only have to calibrate it. Embeddings of repeated strings (ad creatives, popular
queries) are cached per process (`cache_size`), the way a production two-tower model precomputes
its ad tower.

The teacher folder holds `two_tower.json` (the head and the encoder it was fitted with) and
`training_summary.json`; the encoder itself is referenced (`minilm` or a path), not copied.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from pydantic import Field

from distillery import io
from distillery.config import ConfigError, Section
from distillery.data.text import from_text
from distillery.teachers.base import Dtype, TwoTowerConfig, sigmoid

__all__ = ["HEAD_FILE", "TwoTowerFit", "TwoTowerHead", "TwoTowerTeacher", "fit_logistic", "fit_two_tower",
           "is_two_tower_folder", "weights_dir"]

log = logging.getLogger(__name__)

HEAD_FILE = "two_tower.json"
_FORMAT = 1


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


@dataclass
class TwoTowerHead:
    """The fitted head: what `two_tower.json` holds."""

    encoder: str
    request_fields: list[str]
    ad_fields: list[str]
    levels: dict[str, list[str]]  # categorical field -> levels with their own weight (reference excluded)
    mean: list[float]
    std: list[float]
    weights: list[float]
    intercept: float
    max_length: int = 64
    fit: dict[str, Any] = field(default_factory=dict)
    format: int = _FORMAT

    @property
    def feature_names(self) -> list[str]:
        return ["cosine"] + [f"{f}={v}" for f, levels in self.levels.items() for v in levels]

    def features(self, cosine: np.ndarray, rows: list[dict[str, str]]) -> np.ndarray:
        """(n, features) float64, unstandardised: cosine, then one column per categorical level."""
        cols = [np.asarray(cosine, dtype=np.float64)]
        for name, levels in self.levels.items():
            values = [r.get(name) for r in rows]
            cols.extend(np.array([v == level for v in values], dtype=np.float64) for level in levels)
        return np.column_stack(cols)

    def logits(self, x: np.ndarray) -> np.ndarray:
        z = (x - np.asarray(self.mean)) / np.asarray(self.std)
        return z @ np.asarray(self.weights) + self.intercept

    def save(self, folder: str) -> None:
        io.write_json(io.join(folder, HEAD_FILE), asdict(self))

    @classmethod
    def load(cls, folder: str, field_name: str = "teacher.model") -> "TwoTowerHead":
        path = io.join(folder, HEAD_FILE)
        if not io.exists(path):
            raise ConfigError(f"{field_name}: {folder!r} has no {HEAD_FILE} (fit one with `distillery teacher` kind=two-tower)")
        data = io.read_json(path)
        if data.get("format") != _FORMAT:
            raise ConfigError(f"{field_name}: {path} has format {data.get('format')!r}, expected {_FORMAT}")
        try:
            head = cls(**data)
        except TypeError as err:
            raise ConfigError(f"{field_name}: {path} is not a two-tower head ({err})") from None
        n = len(head.feature_names)
        if not (len(head.mean) == len(head.std) == len(head.weights) == n):
            raise ConfigError(f"{field_name}: {path} has {len(head.weights)} weights for {n} features")
        return head


def is_two_tower_folder(folder: str) -> bool:
    return io.exists(io.join(folder, HEAD_FILE))


def weights_dir(folder: str) -> str:
    """Where a teacher folder's weights are: its encoder's folder for a two-tower head, else itself."""
    if not is_two_tower_folder(folder):
        return folder
    from distillery.teachers._hf import local_model_dir

    return local_model_dir(TwoTowerHead.load(folder).encoder)


def tower_texts(rows: list[dict[str, str]], request_fields: list[str], ad_fields: list[str]) -> tuple[list[str], list[str]]:
    """(request texts, ad texts) of parsed rows; missing fields are left out of the join."""
    def join(row: dict[str, str], names: list[str]) -> str:
        return ". ".join(row[n] for n in names if row.get(n))

    return [join(r, request_fields) for r in rows], [join(r, ad_fields) for r in rows]


class _CachedEncoder:
    """`TextEncoder` with an LRU cache of unit embeddings per distinct string."""

    def __init__(self, encoder: Any, cache_size: int):
        self.encoder, self.cache_size = encoder, cache_size
        self.cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.hits = self.misses = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        if self.cache_size <= 0:
            self.misses += len(texts)
            return self.encoder.encode(texts)
        missing = list(dict.fromkeys(t for t in texts if t not in self.cache))
        self.misses += len(missing)
        self.hits += len(texts) - len(missing)
        fresh = dict(zip(missing, self.encoder.encode(missing))) if missing else {}
        out = np.stack([self.cache[t] if t in self.cache else fresh[t] for t in texts]) if texts else \
            np.zeros((0, int(self.encoder.model.config.hidden_size)), np.float32)
        for text, vec in fresh.items():
            self.cache[text] = vec
        for text in texts:
            if text in self.cache:
                self.cache.move_to_end(text)
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return out


def cosines(encoder: Any, rows: list[dict[str, str]], request_fields: list[str], ad_fields: list[str]) -> np.ndarray:
    """cos(e(request), e(ad)) per row, (n,) float64; an empty tower text scores 0."""
    requests, ads = tower_texts(rows, request_fields, ad_fields)
    cos = (encoder.encode(requests) * encoder.encode(ads)).sum(1).astype(np.float64)
    empty = np.array([not r or not a for r, a in zip(requests, ads)], dtype=bool)
    cos[empty] = 0.0
    return cos


class TwoTowerTeacher:
    """Loads the head and its encoder in `__init__`; `predict_proba` embeds (with the cache) and scores."""

    def __init__(self, cfg: TwoTowerConfig):
        from distillery.teachers.retrieval import TextEncoder

        self.cfg = cfg
        self.head = TwoTowerHead.load(cfg.model)
        encoder = TextEncoder(self.head.encoder, batch_size=cfg.batch_size, max_length=cfg.max_length or self.head.max_length,
                              dtype=cfg.dtype, device=cfg.device, num_threads=cfg.num_threads)
        self.encoder = _CachedEncoder(encoder, cfg.cache_size)
        head_id = self.head.fit.get("fingerprint", "unfitted")
        suffix = encoder.dtype_suffix
        self.teacher_id = f"two-tower:{encoder.encoder_id}:{head_id}{suffix}"

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Click probabilities, (len(texts),) float64 in [0, 1], in the order of `texts`."""
        return sigmoid(self.predict_logits(texts))

    def predict_logits(self, texts: list[str]) -> np.ndarray:
        rows = [from_text(t, extras=True) for t in texts]
        cos = cosines(self.encoder, rows, self.head.request_fields, self.head.ad_fields)
        return self.head.logits(self.head.features(cos, rows))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, iters: int = 50, tol: float = 1e-9) -> tuple[np.ndarray, float]:
    """L2-penalised logistic regression by Newton's method: (weights (d,), intercept).

    Minimises Σ BCE(y_i, σ(x_i·w + b)) + l2/2·|w|² (the bias is not penalised); x should be
    standardised. The bias starts at logit(mean y), so a rare positive class converges in a few steps.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, d = x.shape
    if n == 0 or not 0 < y.mean() < 1:
        raise ValueError(f"fit_logistic: need both classes among the rows (n={n}, positives={int(y.sum())})")
    xb = np.column_stack([x, np.ones(n)])
    theta = np.zeros(d + 1)
    theta[-1] = np.log(y.mean() / (1 - y.mean()))
    penalty = np.full(d + 1, l2)
    penalty[-1] = 0.0
    for _ in range(iters):
        p = sigmoid(xb @ theta)
        grad = xb.T @ (p - y) + penalty * theta
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + np.diag(penalty) + 1e-9 * np.eye(d + 1)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.max(np.abs(step)) < tol:
            break
    return theta[:-1], float(theta[-1])


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
    encoder = _CachedEncoder(TextEncoder(cfg.encoder, batch_size=cfg.batch_size, max_length=cfg.max_length,
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
    """Write the head and summary so a reader never sees a half-written folder (local: rename)."""
    import shutil

    if "://" in dest:
        head.save(dest)
        io.write_json(io.join(dest, "training_summary.json"), summary)
        return
    tmp = dest.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    head.save(tmp)
    io.write_json(io.join(tmp, "training_summary.json"), summary)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
