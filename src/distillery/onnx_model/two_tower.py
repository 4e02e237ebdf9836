"""The Ray-free two-tower scorer: one tower graph (ONNX Runtime) + the interaction head in numpy.

    scorer = open_scorer("runs/demo/onnx", variant="int8", intra_op_threads=1)   # by the card's student_kind
    scorer.warm_ads(row_fields_of_every_catalog_ad)          # ad tower once per ad (catalog load / change)
    probs = scorer.predict_rows(candidate_rows)              # a bid: request tower once, head per candidate
    probs = scorer.predict_proba(texts)                      # the same, from `to_text` rows (/predict, OIP)

Per call: the distinct requests go through the tower once each (an LRU keeps recent ones), ads come
from the ad cache (keyed by the ad's tower text; the cache lives in this scorer, so a hot swap to
another model version starts a new one and recomputes), and the head runs per candidate. The head
is linear in its inputs up to one ReLU, so its parts that depend on the request alone (W_u·ũ) or
on the ad alone (W_v·ṽ) are computed once per request / once per ad; per candidate only
ṽ·(W_uv ⊙ ũ)ᵀ, a (d × hidden) product, and table lookups for position and slot remain. That is
why the head is numpy and not a graph: a graph would recompute every part per candidate and add
an ORT call per bid. `tower_calls` counts tower passes (tests assert the per-bid cost with it).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from distillery.config import validate_config
from distillery.data.tower_inputs import TwoTowerSpec, tower_inputs, tower_inputs_from_fields
from distillery.onnx_model.card import ModelCard, variant_path
from distillery.onnx_model.scorer import OnnxScorer, check_row, sigmoid

__all__ = ["KIND", "HEAD_FILE", "NumpyHead", "TwoTowerScorer", "open_scorer"]

KIND = "two_tower"
HEAD_FILE = "two_tower_head.npz"


def open_scorer(model_dir: str, variant: str = "int8", **kwargs):
    """The scorer the card asks for: `TwoTowerScorer` for a two-tower student, else a cross-encoder's
    `OnnxScorer` (a `CrossCandidateScorer`: bid candidates from cached token pieces, texts as usual)."""
    from distillery.onnx_model.cross_candidates import CrossCandidateScorer

    if ModelCard.read(model_dir).student_kind == KIND:
        return TwoTowerScorer(model_dir, variant, **kwargs)
    return CrossCandidateScorer(model_dir, variant, **kwargs)


class NumpyHead:
    """`InteractionHead` in float32 numpy, split into per-request, per-ad and per-candidate parts.

    Arrays (from `HEAD_FILE`): `dense_w (H, n_in)`, `dense_b (H,)`, `skip_w (n_in,)`, `out_w (H,)`,
    `out_b ()`, `position (P, F)`, `slot (S, F)`, with n_in = 3d + 1 + 2F (see the PyTorch head).
    """

    def __init__(self, arrays: Mapping[str, np.ndarray]):
        f32 = {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()}
        w, s = f32["dense_w"], f32["skip_w"]
        self.hidden, n_in = w.shape
        feat = f32["position"].shape[1]
        d = (n_in - 1 - 2 * feat) // 3
        if 3 * d + 1 + 2 * feat != n_in or s.shape != (n_in,):
            raise ValueError(f"{HEAD_FILE}: dense_w {w.shape} / skip_w {s.shape} do not fit d, feature_dim={feat}")
        self.dim = d
        cu, cv, cuv, cc, cp = slice(0, d), slice(d, 2 * d), slice(2 * d, 3 * d), 3 * d, slice(3 * d + 1, 3 * d + 1 + feat)
        cs = slice(3 * d + 1 + feat, n_in)
        # rows 0..H-1: the ReLU units; row H: the linear (skip) path. cos = ũ·ṽ/d folds into the ũ⊙ṽ weights.
        self.w_u = np.vstack([w[:, cu], s[cu]])                                   # (H+1, d)
        self.w_v = np.vstack([w[:, cv], s[cv]])                                   # (H+1, d)
        self.w_uv = np.vstack([w[:, cuv] + w[:, cc:cc + 1] / d, s[cuv] + s[cc] / d])  # (H+1, d)
        self.pos_table = f32["position"] @ np.vstack([w[:, cp], s[cp]]).T         # (P, H+1)
        self.slot_table = f32["slot"] @ np.vstack([w[:, cs], s[cs]]).T            # (S, H+1)
        self.bias = np.append(f32["dense_b"], f32["out_b"].reshape(()))           # (H+1,)
        self.out_w = f32["out_w"]

    def request_part(self, u: np.ndarray) -> np.ndarray:
        """`(r, d)` request embeddings → `(r, H+1)` of what depends on the request alone (bias included)."""
        return u @ self.w_u.T + self.bias

    def ad_part(self, v: np.ndarray) -> np.ndarray:
        """`(a, d)` ad embeddings → `(a, H+1)`, cached with the ad."""
        return v @ self.w_v.T

    def logits(self, u: np.ndarray, req_part: np.ndarray, v: np.ndarray, ad_part: np.ndarray,
               position: np.ndarray, slot: np.ndarray) -> np.ndarray:
        """One request `u (d,)`, its `req_part (H+1,)`; candidates `v (n, d)`, `ad_part (n, H+1)`,
        `position, slot (n,)` bucket ids → logits `(n,)` float64."""
        z = v @ (self.w_uv * u).T + req_part + ad_part + self.pos_table[position] + self.slot_table[slot]
        return (np.maximum(z[:, :-1], 0.0) @ self.out_w + z[:, -1]).astype(np.float64)


class TwoTowerScorer:
    """Tower session (`OnnxScorer` over the card's variant, output `embedding (batch, d)`) + `NumpyHead`.

    Same surface as `OnnxScorer` for serving (`predict_proba`, `predict_rows`, `logits`, `name`,
    `version`, `variant`, `providers`, `card`, `max_length`) plus `warm_ads` and the counters
    `tower_calls` (session runs) and `tower_rows` (texts encoded). `ad_cache_size`,
    `request_cache_size`: LRU bounds in entries (0 disables a cache: every call encodes afresh).
    """

    student_kind = KIND

    def __init__(self, model_dir: str, variant: str = "int8", *, ad_cache_size: int = 200_000,
                 request_cache_size: int = 4096, tower_batch_size: int = 64, **kwargs: Any):
        self.tower = OnnxScorer(model_dir, variant, **kwargs)
        self.card = self.tower.card
        if self.card.student_kind != KIND:
            raise ValueError(f"model_dir {model_dir!r}: model_card.json student_kind is "
                             f"{self.card.student_kind!r}, not {KIND!r}")
        if self.card.two_tower is None:
            raise ValueError(f"{model_dir}/model_card.json: two_tower: missing; a two-tower card needs the towers' spec")
        with np.load(variant_path(model_dir, "head", self.card.head or HEAD_FILE)) as arrays:
            self.head = NumpyHead(dict(arrays))
        self.spec = validate_config(TwoTowerSpec, self.card.two_tower, f"{model_dir}/model_card.json: two_tower")
        self.name, self.version, self.variant = self.tower.name, self.tower.version, variant
        self.providers, self.max_length, self.provider = self.tower.providers, self.tower.max_length, self.tower.provider
        self.tokenizer = self.tower.tokenizer
        self.ad_cache_size, self.request_cache_size = ad_cache_size, request_cache_size
        self.tower_batch_size = tower_batch_size
        self._ads: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._requests: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.tower_calls = self.tower_rows = 0
        self._text_memo: dict[tuple, str] = {}
        self._bucket_memo: dict[tuple, tuple[int, int]] = {}

    def embed(self, texts: list[str]) -> np.ndarray:
        """Tower embeddings `(n, d)` float32 of tower texts, in batches of `tower_batch_size`."""
        out = []
        for i in range(0, len(texts), self.tower_batch_size):
            feeds = self.tower.encode(texts[i:i + self.tower_batch_size])
            (emb,) = self.tower.session.run([self.tower.output_name], feeds)
            self.tower_calls += 1
            self.tower_rows += len(feeds["input_ids"])
            out.append(np.asarray(emb, dtype=np.float32))
        return np.concatenate(out) if out else np.zeros((0, self.head.dim), dtype=np.float32)

    def _lookup(self, texts: list[str], cache: OrderedDict, size: int, part) -> list[tuple[np.ndarray, np.ndarray]]:
        """(embedding (d,), head part (H+1,)) per text; misses encoded in one batch and cached (LRU)."""
        missing = list(dict.fromkeys(t for t in texts if t not in cache))
        fresh: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if missing:
            emb = self.embed(missing)
            parts = part(emb)
            fresh = {t: (emb[i], parts[i]) for i, t in enumerate(missing)}
        out = []
        for t in texts:
            hit = cache.get(t)
            if hit is not None:
                cache.move_to_end(t)
                out.append(hit)
            else:
                out.append(fresh[t])
        if size > 0:
            for t, value in fresh.items():
                cache[t] = value
            while len(cache) > size:
                cache.popitem(last=False)
        return out

    def warm_ads(self, ads: Iterable[Mapping[str, Any]]) -> int:
        """Encode every ad (row fields, e.g. `CandidateAd.row_fields()`) not yet cached; returns how many were encoded."""
        texts = list(dict.fromkeys(tower_inputs_from_fields(a, self.spec)[1] for a in ads))
        before = self.tower_rows
        self._lookup(texts, self._ads, self.ad_cache_size, self.head.ad_part)
        return self.tower_rows - before

    def score_parts(self, parts: list[tuple[str, str, int, int]]) -> np.ndarray:
        """Logits `(n,)` float64 of (request text, ad text, position, slot) tuples."""
        n = len(parts)
        if not n:
            return np.zeros(0, dtype=np.float64)
        requests = self._lookup([p[0] for p in parts], self._requests, self.request_cache_size, self.head.request_part)
        ads = self._lookup([p[1] for p in parts], self._ads, self.ad_cache_size, self.head.ad_part)
        position = np.fromiter((p[2] for p in parts), dtype=np.int64, count=n)
        slot = np.fromiter((p[3] for p in parts), dtype=np.int64, count=n)
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(parts):
            groups.setdefault(p[0], []).append(i)
        out = np.empty(n, dtype=np.float64)
        for rows in groups.values():
            u, req_part = requests[rows[0]]
            v = np.stack([ads[i][0] for i in rows])
            ad_part = np.stack([ads[i][1] for i in rows])
            out[rows] = self.head.logits(u, req_part, v, ad_part, position[rows], slot[rows])
        return out

    def logits(self, texts: list[str]) -> np.ndarray:
        """Click logits `(n,)` float64 of canonical row texts (`to_text(row)`)."""
        if isinstance(texts, str):
            raise TypeError("texts: expected a list of strings, got one string")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}]: expected a string, got {type(t).__name__}")
        return self.score_parts([tower_inputs(t, self.spec) for t in texts])

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Click probabilities `(n,)` float64 in [0, 1] of row texts."""
        return sigmoid(self.logits(texts))

    def predict_rows(self, rows: Iterable[Mapping[str, Any]]) -> np.ndarray:
        """Click probabilities `(n,)` of row dicts, without rendering and re-parsing the full row text."""
        return sigmoid(self.score_parts([self._row_parts(r) for r in rows]))

    def predict(self, inputs: Sequence[str | Mapping[str, Any]]) -> np.ndarray:
        """Click probabilities `(n,)` of row texts and row dicts, mixed, in one call (`OnnxScorer.predict`)."""
        return sigmoid(self.score_parts([tower_inputs(x, self.spec) if isinstance(x, str) else self._row_parts(check_row(i, x))
                                         for i, x in enumerate(inputs)]))

    def _row_parts(self, row: Mapping[str, Any]) -> tuple[str, str, int, int]:
        """`tower_inputs_from_fields`, with each tower's text memoised on the tuple of its fields' values:
        a bid repeats one request over all its candidates and the catalog's ads over all bids, and
        rendering texts (`to_text`) was most of the per-candidate cost."""
        spec, memo = self.spec, self._text_memo
        try:
            rkey = ("r", *(row.get(k) for k in spec.request_fields))
            akey = ("a", *(row.get(k) for k in spec.ad_fields))
            request, ad = memo.get(rkey), memo.get(akey)
        except TypeError:  # an unhashable value (a list from JSON): render without the memo
            return tower_inputs_from_fields(row, spec)
        if request is None or ad is None:
            if len(memo) >= self.ad_cache_size + self.request_cache_size:
                memo.clear()  # bounded; refilled by the next bids
            request, ad, _, _ = tower_inputs_from_fields({k: row.get(k) for k in (*spec.request_fields, *spec.ad_fields)}, spec)
            memo[rkey], memo[akey] = request, ad
        pkey = (row.get("position"), row.get("slot_size"))
        buckets = self._bucket_memo.get(pkey)
        if buckets is None:
            buckets = self._bucket_memo[pkey] = tower_inputs_from_fields({"position": pkey[0], "slot_size": pkey[1]}, spec)[2:]
            if len(self._bucket_memo) > 10_000:
                self._bucket_memo.clear()
        return request, ad, buckets[0], buckets[1]

    def __repr__(self) -> str:
        return (f"TwoTowerScorer(name={self.name!r}, version={self.version!r}, variant={self.variant!r}, "
                f"providers={self.providers}, cached_ads={len(self._ads)})")
