"""`two-tower`: a sentence encoder used the way it was trained, with a click head fitted on logs.

    p(click) = σ(w · standardise([cos(e(request), e(ad)), one-hot(position), …]) + b)

`e` is the encoder's mean-pooled, L2-normalised embedding (how sentence-transformers runs
all-MiniLM-L6-v2); the request is the row's `request_fields` (the query or page text), the ad its
`ad_fields` joined as "title. description". Any column of the log may be a tower or categorical
field (a Criteo `C3`, an Avazu `site_id`): both are recovered from the canonical row text
(`from_text`, extras included), so the teacher reads the same strings as every other backend. The head is an L2
logistic regression over the cosine and one-hot categorical fields, fitted on the train split's
clicks by `distillery.training.two_tower_teacher.fit_two_tower` (the `distillery teacher` job with
`kind: two-tower`).

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

from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from distillery import io
from distillery.config import ConfigError
from distillery.data.text import from_text
from distillery.teachers.base import sigmoid
from distillery.teachers.configs import TwoTowerConfig

__all__ = ["HEAD_FILE", "TwoTowerHead", "TwoTowerTeacher", "CachedEncoder", "cosines", "tower_texts",
           "is_two_tower_folder", "weights_dir"]

HEAD_FILE = "two_tower.json"
_FORMAT = 1


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


class CachedEncoder:
    """`TextEncoder` with an LRU cache of unit embeddings per distinct string (the teacher and its fit)."""

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
        self.encoder = CachedEncoder(encoder, cfg.cache_size)
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
