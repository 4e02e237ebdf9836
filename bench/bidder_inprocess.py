"""python bench/bidder_inprocess.py --cross runs/demo/onnx --two-tower runs/demo/onnx_two_tower [--variant int8]

In-process bid scoring latency by number of eligible candidates (1, 8, 32, 128, 512, 1024), both
students, one ORT thread: what one bid costs the model, without HTTP or Serve. Per bid: a new
request context (distinct query, so no request-cache hits) × N catalog ads from a generated
catalog of N ads (synthetic log ads), positions and slot sizes varied.

- `cross`: `plan.texts()` as the bidder renders them (`to_text` per candidate) → `OnnxScorer.predict_proba`:
  one transformer pass per candidate.
- `cross_rows`: the same model, token ids assembled from each ad's tokens (once) and the request's
  (`onnx_model.cross_candidates.CrossCandidateScorer.predict_rows`, exactly the tokenizer's ids).
- `two_tower` (rows): `TwoTowerScorer.predict_rows(candidate rows)` after `warm_ads(catalog)` (timed
  apart, once): one request-tower pass + the head per candidate.
- `two_tower_texts`: the same scorer through `predict_proba(plan.texts())`, the path the
  deployment's bid route took before it handed the model rows (rendering and re-parsing each
  candidate's text included).

`bid_ms(...)` is importable for `bench/bidder.py`. Prints the CPU (`distillery.hardware.cpu_summary()`)
beside the figures and one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # the head's numpy: one thread, like ORT
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from distillery.metrics import percentiles  # noqa: E402

COUNTS = (1, 8, 32, 128, 512, 1024)


def catalog_ads(n: int, seed: int = 0) -> list[dict]:
    """`n` distinct ads (row fields) from synthetic logs."""
    from distillery.data.synthetic import SyntheticConfig, generate

    rows = generate(SyntheticConfig(seed=seed, rows_test=max(4 * n, 200)), "test").to_pylist()
    seen, ads = set(), []
    for r in rows:
        ad = {k: r[k] for k in ("advertiser", "ad_title", "ad_description", "ad_category")}
        key = tuple(ad.values())
        if key not in seen:
            seen.add(key)
            ads.append(ad)
    while len(ads) < n:  # synthetic creatives repeat: make the rest distinct by a numbered title
        base = dict(ads[len(ads) % len(seen)])
        base["ad_title"] = f"{base['ad_title']} {len(ads)}"
        ads.append(base)
    return ads[:n]


def bid_rows(ads: list[dict], i: int, contexts: list[dict]) -> list[dict]:
    ctx = contexts[i % len(contexts)]
    slots = ("300x250", "728x90", "320x50", "160x600")
    return [{**ctx, "query": f"{ctx.get('query') or ''} {i}".strip(), **ad, "position": 1 + k % 4, "slot_size": slots[k % 4]}
            for k, ad in enumerate(ads)]


def _time(fn, calls: int, warmup: int = 2) -> dict[str, float]:
    for i in range(warmup):
        fn(-1 - i)
    t = np.empty(calls)
    for i in range(calls):
        t0 = time.perf_counter()
        fn(i)
        t[i] = (time.perf_counter() - t0) * 1000
    return {**percentiles(t), "calls": calls}


def bid_ms(cross_dir: str | None, two_tower_dir: str | None, variant: str = "int8", counts=COUNTS,
           budget_s: float = 20.0, threads: int = 1) -> dict:
    """`{"two_tower": {"N": {"p50", "p99", "calls"}}, "two_tower_texts": …, "cross": …, "warm_ads_ms": …}`."""
    from distillery.data.synthetic import SyntheticConfig, generate
    from distillery.data.text import to_text
    from distillery.onnx_model.cross_candidates import CrossCandidateScorer
    from distillery.onnx_model.two_tower import TwoTowerScorer

    contexts = [{k: r[k] for k in ("query", "site_category", "device", "os", "hour")}
                for r in generate(SyntheticConfig(seed=7, rows_test=500), "test").to_pylist()]
    out: dict = {"variant": variant, "threads": threads}
    for n in counts:
        ads = catalog_ads(n)
        if two_tower_dir:
            scorer = TwoTowerScorer(two_tower_dir, variant, intra_op_threads=threads)
            t0 = time.perf_counter()
            scorer.warm_ads(ads)
            out.setdefault("warm_ads_ms", {})[str(n)] = round((time.perf_counter() - t0) * 1000, 1)
            calls = 200 if n <= 128 else 60
            out.setdefault("two_tower", {})[str(n)] = _time(lambda i: scorer.predict_rows(bid_rows(ads, i, contexts)), calls)
            # other bid numbers than the rows path: a request seen there would be a cache hit here
            out.setdefault("two_tower_texts", {})[str(n)] = _time(
                lambda i: scorer.predict_proba([to_text(r) for r in bid_rows(ads, i + 1_000_000, contexts)]), calls)
            out.setdefault("tower_calls", {})[str(n)] = scorer.tower_calls
        if cross_dir:
            cross = CrossCandidateScorer(cross_dir, variant, intra_op_threads=threads)
            cross.warm_ads(ads)
            t0 = time.perf_counter()
            cross.predict_proba([to_text(r) for r in bid_rows(ads, 0, contexts)])
            one = time.perf_counter() - t0
            calls = int(max(3, min(100, budget_s / max(one, 1e-4))))
            out.setdefault("cross", {})[str(n)] = _time(
                lambda i: cross.predict_proba([to_text(r) for r in bid_rows(ads, i, contexts)]), calls, warmup=1)
            out.setdefault("cross_rows", {})[str(n)] = _time(
                lambda i: cross.predict_rows(bid_rows(ads, i, contexts)), calls, warmup=1)
        print(f"{n:>5} candidates: " + "  ".join(f"{k} p50 {out[k][str(n)]['p50']:.2f} ms p99 {out[k][str(n)]['p99']:.2f} ms"
                                                for k in ("two_tower", "two_tower_texts", "cross", "cross_rows") if k in out), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cross", help="ONNX folder of the cross-encoder student")
    p.add_argument("--two-tower", help="ONNX folder of the two-tower student")
    p.add_argument("--variant", default="int8")
    p.add_argument("--counts", type=int, nargs="+", default=list(COUNTS))
    p.add_argument("--budget-s", type=float, default=20.0, help="cross-encoder: about this many seconds per count")
    args = p.parse_args(argv)
    from distillery.hardware import cpu_summary

    cpu = cpu_summary()
    print(f"cpu: {cpu}", flush=True)
    result = bid_ms(args.cross, args.two_tower, args.variant, args.counts, args.budget_s)
    result["cpu"] = cpu
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
