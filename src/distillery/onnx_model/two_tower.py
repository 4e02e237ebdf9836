"""The Ray-free two-tower scorer: one tower graph (ONNX Runtime) + the interaction head in numpy.

    scorer = TwoTowerScorer("runs/demo/onnx", variant="int8", intra_op_threads=1)   # or kinds.open_scorer by the card
    scorer.warm_ads(row_fields_of_every_catalog_ad)          # ad tower once per ad (catalog load / change)
    probs = scorer.predict_rows(candidate_rows)              # a bid: request tower once, head per candidate
    probs = scorer.predict_proba(texts)                      # the same, from `to_text` rows (/predict, OIP)

Per call: the distinct requests go through the tower once each (an LRU keeps recent ones), ads come
from the ad cache (keyed by the ad's tower text and hashed categoricals; the cache lives in this
scorer, so a hot swap to another model version starts a new one and recomputes), and the head runs
per candidate. A tower's hashed categoricals are a table lookup added before the normalisation; a
tower without text columns never runs the graph. The head
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
from distillery.data.tower_inputs import (TowerInputs, TwoTowerSpec, head_bucket, tower_inputs, tower_inputs_from_fields,
                                          tower_side)
from distillery.onnx_model.card import variant_path
from distillery.onnx_model.scorer import OnnxScorer, check_row, sigmoid

__all__ = ["KIND", "HEAD_FILE", "NumpyHead", "TwoTowerScorer"]

KIND = "two_tower"
HEAD_FILE = "two_tower_head.npz"


class NumpyHead:
    """`InteractionHead` in float32 numpy, split into per-request, per-ad and per-candidate parts.

    Arrays (from `HEAD_FILE`): `dense_w (H, n_in)`, `dense_b (H,)`, `skip_w (n_in,)`, `out_w (H,)`,
    `out_b ()`, `position (P, F)`, `slot (S, F)`, with n_in = 3d + 1 + 2F (see the PyTorch head); with
    head categoricals `head_cat (B, F)` and n_in = 3d + 1 + 3F; with tower categoricals
    `request_cat` / `ad_cat (B, d)` (embeddings already projected to the tower's width).
    """

    def __init__(self, arrays: Mapping[str, np.ndarray]):
        f32 = {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()}
        w, s = f32["dense_w"], f32["skip_w"]
        self.hidden, n_in = w.shape
        feat = f32["position"].shape[1]
        blocks = 3 if "head_cat" in f32 else 2
        d = (n_in - 1 - blocks * feat) // 3
        if 3 * d + 1 + blocks * feat != n_in or s.shape != (n_in,):
            raise ValueError(f"{HEAD_FILE}: dense_w {w.shape} / skip_w {s.shape} do not fit d, feature_dim={feat}")
        self.dim = d
        cu, cv, cuv, cc, cp = slice(0, d), slice(d, 2 * d), slice(2 * d, 3 * d), 3 * d, slice(3 * d + 1, 3 * d + 1 + feat)
        cs = slice(3 * d + 1 + feat, 3 * d + 1 + 2 * feat)
        ck = slice(3 * d + 1 + 2 * feat, n_in)
        self.cat_table = f32["head_cat"] @ np.vstack([w[:, ck], s[ck]]).T if blocks == 3 else None  # (B, H+1)
        self.tower_tables = {side: f32[f"{side}_cat"] for side in ("request", "ad") if f"{side}_cat" in f32}
        for side, table in self.tower_tables.items():
            if table.shape[1] != d:
                raise ValueError(f"{HEAD_FILE}: {side}_cat {table.shape} does not fit d={d}")
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

    def tower_vectors(self, side: str, text_emb: np.ndarray | None, cats: np.ndarray | None) -> np.ndarray:
        """The `side` tower's vectors `(n, d)`, norm √d: `text_emb (n, d)` (the graph's output, norm √d;
        None for a tower without text) plus the hashed categoricals `cats (n, F)` looked up and summed."""
        table = self.tower_tables.get(side)
        if table is None or cats is None:
            return text_emb
        x = table[cats].sum(1)
        if text_emb is not None:
            x = x + text_emb / np.sqrt(self.dim)
        norm = np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # as torch's normalize
        return (x / norm * np.sqrt(self.dim)).astype(np.float32)

    def logits(self, u: np.ndarray, req_part: np.ndarray, v: np.ndarray, ad_part: np.ndarray,
               position: np.ndarray, slot: np.ndarray, cats: np.ndarray | None = None) -> np.ndarray:
        """One request `u (d,)`, its `req_part (H+1,)`; candidates `v (n, d)`, `ad_part (n, H+1)`,
        `position, slot (n,)` bucket ids, head categoricals `cats (n, F)` → logits `(n,)` float64."""
        z = v @ (self.w_uv * u).T + req_part + ad_part + self.pos_table[position] + self.slot_table[slot]
        if self.cat_table is not None:
            z = z + self.cat_table[cats].sum(1)
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
        self._text_memo: dict[tuple, tuple[str, tuple[int, ...]]] = {}
        self._bucket_memo: dict[tuple, tuple[int, ...]] = {}
        spec = self.spec
        self._request_columns = (*spec.request_fields, *spec.request_categorical)
        self._ad_columns = (*spec.ad_fields, *spec.ad_categorical)
        self._head_columns = ("position", "slot_size", *spec.head_categorical)

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

    def _lookup(self, keys: list[tuple[str, tuple[int, ...]]], side: str) -> list[tuple[np.ndarray, np.ndarray]]:
        """(tower vector (d,), head part (H+1,)) per (tower text, hashed categoricals) key of the `side`
        tower; misses encoded in one batch and cached (LRU)."""
        if side == "request":
            cache, size, part = self._requests, self.request_cache_size, self.head.request_part
        else:
            cache, size, part = self._ads, self.ad_cache_size, self.head.ad_part
        missing = list(dict.fromkeys(t for t in keys if t not in cache))
        fresh: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        if missing:
            text_emb = self.embed([k[0] for k in missing]) if self.spec.has_text(side) else None
            cats = (np.array([k[1] for k in missing], dtype=np.int64).reshape(len(missing), -1)
                    if side in self.head.tower_tables else None)
            emb = self.head.tower_vectors(side, text_emb, cats)
            parts = part(emb)
            fresh = {t: (emb[i], parts[i]) for i, t in enumerate(missing)}
        out = []
        for t in keys:
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
        keys = list(dict.fromkeys(tower_side(a, self.spec, "ad") for a in ads))
        missing = sum(k not in self._ads for k in keys)
        self._lookup(keys, "ad")
        return missing

    def score_parts(self, parts: list[TowerInputs]) -> np.ndarray:
        """Logits `(n,)` float64 of `TowerInputs` rows."""
        n = len(parts)
        if not n:
            return np.zeros(0, dtype=np.float64)
        req_keys = [(p.request, p.request_cats) for p in parts]
        requests = self._lookup(req_keys, "request")
        ads = self._lookup([(p.ad, p.ad_cats) for p in parts], "ad")
        position = np.fromiter((p.position for p in parts), dtype=np.int64, count=n)
        slot = np.fromiter((p.slot for p in parts), dtype=np.int64, count=n)
        cats = np.array([p.head_cats for p in parts], dtype=np.int64).reshape(n, -1) if self.spec.head_categorical else None
        groups: dict[tuple, list[int]] = {}
        for i, key in enumerate(req_keys):
            groups.setdefault(key, []).append(i)
        out = np.empty(n, dtype=np.float64)
        for rows in groups.values():
            u, req_part = requests[rows[0]]
            v = np.stack([ads[i][0] for i in rows])
            ad_part = np.stack([ads[i][1] for i in rows])
            out[rows] = self.head.logits(u, req_part, v, ad_part, position[rows], slot[rows],
                                         None if cats is None else cats[rows])
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

    def _row_parts(self, row: Mapping[str, Any]) -> TowerInputs:
        """`tower_inputs_from_fields`, with each tower's text and hashes memoised on the tuple of its
        columns' values: a bid repeats one request over all its candidates and the catalog's ads over
        all bids, and rendering texts (`to_text`) was most of the per-candidate cost."""
        spec, memo = self.spec, self._text_memo
        try:
            rkey = ("r", *(row.get(k) for k in self._request_columns))
            akey = ("a", *(row.get(k) for k in self._ad_columns))
            hkey = tuple(row.get(k) for k in self._head_columns)
            request, ad, head = memo.get(rkey), memo.get(akey), self._bucket_memo.get(hkey)
        except TypeError:  # an unhashable value (a list from JSON): render without the memo
            return tower_inputs_from_fields(row, spec)
        if request is None or ad is None:
            if len(memo) >= self.ad_cache_size + self.request_cache_size:
                memo.clear()  # bounded; refilled by the next bids
            request, ad = tower_side(row, spec, "request"), tower_side(row, spec, "ad")
            memo[rkey], memo[akey] = request, ad
        if head is None:
            if len(self._bucket_memo) > 10_000:
                self._bucket_memo.clear()
            head = self._bucket_memo[hkey] = tuple(head_bucket(k, v, spec) for k, v in zip(self._head_columns, hkey))
        return TowerInputs(request[0], ad[0], head[0], head[1], request[1], ad[1], head[2:])

    def __repr__(self) -> str:
        return (f"TwoTowerScorer(name={self.name!r}, version={self.version!r}, variant={self.variant!r}, "
                f"providers={self.providers}, cached_ads={len(self._ads)})")
