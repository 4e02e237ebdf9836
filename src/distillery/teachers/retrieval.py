"""`retrieval`: a non-parametric teacher — the click rate of a row's nearest labelled logs.

1. Encode: mean-pooled, L2-normalised token embeddings of an encoder (how sentence-transformers
   runs all-MiniLM-L6-v2), so a dot product is a cosine similarity.
2. Index: every row with a known click in the `index` parquet logs, as `to_text(row)` → embedding
   (N, d) float32 plus clicks (N,). Embeddings are cached in an npz keyed by the encoder and the
   index content, so Ray actors load them instead of re-embedding per process.
3. Query: top-k cosine neighbours by chunked numpy matmul; their similarity-weighted click rate is
   smoothed toward the index's base rate with a Beta prior and blended with a base teacher
   (formulas in `smoothed_rate`, `blend`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io as _bytes_io
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from distillery import io
from distillery.config import ConfigError
from distillery.models import dtype_suffix
from distillery.data.text import to_text
from distillery.teachers._hf import (
    length_sorted_batches,
    load_tokenizer,
    local_model_dir,
    model_fingerprint,
    model_label,
    pad_batch,
    setup_torch,
)
from distillery.teachers.base import Teacher, logit, sigmoid
from distillery.teachers.configs import RetrievalConfig

__all__ = [
    "TextEncoder",
    "RetrievalIndex",
    "RetrievalTeacher",
    "build_index_cache",
    "read_labelled_texts",
    "top_k_cosine",
    "smoothed_rate",
    "blend",
]

log = logging.getLogger(__name__)


class TextEncoder:
    """Sentence embeddings: (n,) texts → (n, d) float32, unit L2 norm, mean pooling over real tokens."""

    def __init__(self, model: str, batch_size: int = 64, max_length: int = 128, dtype: str = "fp32",
                 device: str = "auto", num_threads: int | None = None):
        import torch
        from transformers import AutoModel

        self._torch = torch
        self.batch_size, self.max_length = batch_size, max_length
        self.device, torch_dtype = setup_torch(device, dtype, num_threads)
        path = local_model_dir(model)
        self.tokenizer = load_tokenizer(path)
        self.model = AutoModel.from_pretrained(path, dtype=torch_dtype).to(self.device).eval()
        self.dtype_suffix = dtype_suffix(torch_dtype)
        self.encoder_id = f"{model_label(model)}:{model_fingerprint(path, self.model)}:len{max_length}:{self.dtype_suffix.lstrip('@') or 'fp32'}"

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), hidden) float32 unit vectors, in the order of `texts`."""
        torch = self._torch
        dim = int(self.model.config.hidden_size)
        out = np.zeros((len(texts), dim), dtype=np.float32)
        if not texts:
            return out
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)
        lengths = [len(ids) for ids in encoded["input_ids"]]
        with torch.inference_mode():
            for index in length_sorted_batches(lengths, self.batch_size):
                batch = pad_batch(self.tokenizer, encoded, index, self.device)
                hidden = self.model(**batch).last_hidden_state.float()
                mask = batch["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[index] = torch.nn.functional.normalize(pooled, p=2, dim=1).cpu().numpy()
        return out


def read_labelled_texts(path: str, max_rows: int | None = None) -> tuple[list[str], np.ndarray]:
    """(texts, clicks (N,) float64) of the rows with a known click in the parquet logs at `path`
    (a folder, file or URI), in file order."""
    import pyarrow.parquet as pq

    try:
        files = io.list_files(path, (".parquet",))
    except FileNotFoundError:
        raise ConfigError(f"teacher.index: no logs at {path!r}") from None
    texts: list[str] = []
    clicks: list[float] = []
    for file in files:
        fs, inner = io.filesystem(file)
        table = pq.read_table(inner, filesystem=fs)
        if "click" not in table.column_names:
            raise ConfigError(f"teacher.index: {file} has no `click` column")
        for row in table.to_pylist():
            if row["click"] is None:
                continue
            texts.append(to_text(row))
            clicks.append(float(row["click"]))
            if max_rows is not None and len(texts) >= max_rows:
                return texts, np.asarray(clicks)
    if not texts:
        raise ConfigError(f"teacher.index: no rows with a known click under {path!r}")
    return texts, np.asarray(clicks)


@dataclass
class RetrievalIndex:
    embeddings: np.ndarray  # (N, d) float32, unit rows
    clicks: np.ndarray  # (N,) float64 in {0, 1}
    key: str  # content hash of encoder + texts + clicks

    @property
    def base_rate(self) -> float:
        return float(self.clicks.mean())

    def to_bytes(self) -> bytes:
        buf = _bytes_io.BytesIO()
        np.savez(buf, embeddings=self.embeddings, clicks=self.clicks, key=np.array(self.key))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "RetrievalIndex":
        with np.load(_bytes_io.BytesIO(data)) as z:
            return cls(z["embeddings"], z["clicks"], str(z["key"]))


def index_key(encoder_id: str, texts: list[str], clicks: np.ndarray) -> str:
    h = hashlib.sha256(encoder_id.encode())
    for text in texts:
        h.update(text.encode())
        h.update(b"\x00")
    h.update(np.ascontiguousarray(clicks, dtype=np.float64).tobytes())
    return h.hexdigest()[:20]


def _cache_path(cache: str | None, key: str) -> str | None:
    if cache is None:
        return None
    if cache == "auto":
        root = Path(os.environ.get("DISTILLERY_CACHE", Path.home() / ".cache" / "distillery"))
        return str(root / "retrieval" / f"{key}.npz")
    return cache


@contextlib.contextmanager
def _build_lock(path: str | None) -> Iterator[None]:
    """One builder per machine: actors starting together wait for the first to write the cache."""
    if path is None or "://" in path:
        yield
        return
    import fcntl

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path + ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_or_build_index(encoder: TextEncoder, texts: list[str], clicks: np.ndarray,
                        cache: str | None) -> tuple[RetrievalIndex, str]:
    """(index, "cache" or "built"): the cached embeddings when their key matches, else embed and
    save. A failed cache write is logged, not raised: the cache only saves time."""
    key = index_key(encoder.encoder_id, texts, clicks)
    path = _cache_path(cache, key)
    with _build_lock(path):
        if path is not None and io.exists(path):
            try:
                index = RetrievalIndex.from_bytes(io.read_bytes(path))
                if index.key == key and len(index.clicks) == len(texts):
                    return index, "cache"
                log.warning("retrieval cache %s is for another index or encoder; rebuilding", path)
            except (OSError, ValueError, KeyError) as err:
                log.warning("retrieval cache %s unreadable (%s); rebuilding", path, err)
        start = time.perf_counter()
        # Logs repeat impressions verbatim; embed each distinct text once.
        unique, inverse = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
        index = RetrievalIndex(encoder.encode(list(unique))[inverse.ravel()], clicks, key)
        log.info("embedded %d index rows (%d distinct texts) in %.1fs", len(texts), len(unique),
                 time.perf_counter() - start)
        if path is not None:
            try:
                io.write_bytes(path, index.to_bytes())
            except OSError as err:
                log.warning("could not write retrieval cache %s: %s", path, err)
    return index, "built"


def top_k_cosine(queries: np.ndarray, embeddings: np.ndarray, k: int,
                 max_block: int = 1 << 22) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, indices), each (n, min(k, N)), of the k most similar index rows per query
    (unit vectors, so a dot product is the cosine). Queries go in chunks so the (chunk, N)
    similarity block stays under `max_block` floats. Neighbours are unordered."""
    n, size = len(queries), len(embeddings)
    k = min(k, size)
    sims = np.zeros((n, k), dtype=np.float32)
    idx = np.zeros((n, k), dtype=np.int64)
    chunk = max(1, max_block // max(size, 1))
    for start in range(0, n, chunk):
        block = queries[start:start + chunk] @ embeddings.T
        top = np.argpartition(-block, k - 1, axis=1)[:, :k] if k < size else np.broadcast_to(np.arange(size), block.shape)
        idx[start:start + chunk] = top
        sims[start:start + chunk] = np.take_along_axis(block, top, axis=1)
    return sims, idx


def smoothed_rate(sims: np.ndarray, neighbour_clicks: np.ndarray, base_rate: float, prior_strength: float) -> np.ndarray:
    """(Σ w_j·click_j + a·base) / (Σ w_j + a) per row, w_j = max(sim_j, 0); (n, k) → (n,).

    A Beta(a·base, a·(1−base)) prior: with few or dissimilar neighbours the rate stays near the
    index's base rate; with many close ones it follows them. No weight at all → the base rate.
    """
    w = np.maximum(np.asarray(sims, dtype=np.float64), 0.0)
    num = (w * neighbour_clicks).sum(axis=1) + prior_strength * base_rate
    den = w.sum(axis=1) + prior_strength
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), base_rate)


def blend(rate: np.ndarray, base_prob: np.ndarray, weight: float, space: str) -> np.ndarray:
    """Mix the neighbour rate with the base teacher's probability, `weight` on the rate.

    `logit`: σ(w·logit(rate) + (1−w)·logit(p)), a weighted geometric mean of odds (a confident
    base teacher is not flattened toward 0.5). `prob`: w·rate + (1−w)·p.
    """
    if space == "logit":
        return sigmoid(weight * logit(rate) + (1 - weight) * logit(base_prob))
    if space == "prob":
        return weight * rate + (1 - weight) * np.asarray(base_prob, dtype=np.float64)
    raise ValueError(f"blend: {space!r}, expected logit or prob")


def build_index_cache(cfg: RetrievalConfig) -> tuple[str | None, str]:
    """Embed (or find) the index of `cfg` and write its cache, loading only the encoder; returns
    (cache path, "cache" or "built"). Call once on the driver before starting labeling actors, so
    each actor loads the npz instead of embedding the index itself."""
    encoder = TextEncoder(cfg.encoder, cfg.batch_size, cfg.max_length, cfg.dtype, cfg.device, cfg.num_threads)
    texts, clicks = read_labelled_texts(cfg.index, cfg.max_rows)
    index, source = load_or_build_index(encoder, texts, clicks, cfg.cache)
    return _cache_path(cfg.cache, index.key), source


class RetrievalTeacher:
    """Neighbour click rate (optionally blended with a base teacher). Builds or loads its index in
    `__init__`; construct it once on the driver first to write the cache actors then load."""

    def __init__(self, cfg: RetrievalConfig, base: Teacher | None = None):
        self.cfg, self.base = cfg, base
        self.encoder = TextEncoder(cfg.encoder, cfg.batch_size, cfg.max_length, cfg.dtype, cfg.device, cfg.num_threads)
        texts, clicks = read_labelled_texts(cfg.index, cfg.max_rows)
        self.index, self.index_source = load_or_build_index(self.encoder, texts, clicks, cfg.cache)
        parts = [f"retrieval:{self.encoder.encoder_id}:index-{self.index.key[:10]}",
                 f"k{cfg.k}:a{cfg.prior_strength:g}"]
        if base is not None:
            parts.append(f"w{cfg.neighbour_weight:g}-{cfg.blend}+({base.teacher_id})")
        self.teacher_id = ":".join(parts)

    def neighbour_rate(self, texts: list[str]) -> np.ndarray:
        """Smoothed click rate of each text's k nearest index rows, (n,) float64."""
        if not texts:
            return np.zeros(0)
        sims, idx = top_k_cosine(self.encoder.encode(texts), self.index.embeddings, self.cfg.k)
        return smoothed_rate(sims, self.index.clicks[idx], self.index.base_rate, self.cfg.prior_strength)

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Click probabilities, (len(texts),) float64 in [0, 1], in the order of `texts`."""
        rate = self.neighbour_rate(texts)
        if self.base is None or not texts:
            return rate
        base_prob = np.asarray(self.base.predict_proba(texts), dtype=np.float64)
        return np.clip(blend(rate, base_prob, self.cfg.neighbour_weight, self.cfg.blend), 0.0, 1.0)
