"""A CSV of impressions the way a user exports one (issue 15's acceptance log), written by tests, never shipped.

    write_impressions_csv(path, rows=6000, ctr=0.005, seed=0, bad_lines=3)

pandas-style: an unnamed index column (empty header), `click`, a `timestamp` column (ISO-8601, rows
not in time order), hashed categorical columns `site_hash, app_hash, device_hash, ad_hash, slot_hash,
campaign_hash` (8 hex digits) and ~`ctr` clicks. Clicks depend on `ad_hash` × `site_hash` and
`slot_hash`, so a model can rank them. `bad_lines` malformed lines (a missing field, an unparseable
timestamp) exercise the reader's and the split's rejects. Returns `{rows, bad_lines, clicks, ids}`
where `ids` are the row ids the readers give (content ids: a hash of the row's columns), one per data
line, None for a line the reader cannot split into the columns.
"""

from __future__ import annotations

import csv
import hashlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from distillery.data.parsing import content_id, generic_mapper

COLUMNS = ["", "click", "timestamp", "site_hash", "app_hash", "device_hash", "ad_hash", "slot_hash", "campaign_hash"]


def _hashes(prefix: str, n: int) -> list[str]:
    return [hashlib.md5(f"{prefix}{i}".encode()).hexdigest()[:8] for i in range(n)]


def write_impressions_csv(path: Path, rows: int = 6000, ctr: float = 0.005, seed: int = 0, bad_lines: int = 3) -> dict:
    rng = np.random.default_rng(seed)
    sites, apps, devices, ads, slots, campaigns = (_hashes(p, k) for p, k in (
        ("site", 12), ("app", 30), ("dev", 4), ("ad", 16), ("slot", 5), ("camp", 40)))
    site = rng.integers(0, len(sites), rows)
    ad = rng.integers(0, len(ads), rows)
    slot = rng.integers(0, len(slots), rows)
    match = (site % 4) == (ad % 4)  # a hidden affinity between sites and ads
    signal = 1.6 * match - 0.3 * slot + rng.normal(0, 0.3, rows)
    lo, hi = -15.0, 5.0  # the intercept whose mean click probability is `ctr`
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.mean(1 / (1 + np.exp(-(mid + signal)))) < ctr else (lo, mid)
    click = (rng.random(rows) < 1 / (1 + np.exp(-(lo + signal)))).astype(int)
    start = datetime(2026, 3, 1, tzinfo=timezone.utc)
    seconds = rng.integers(0, 3 * 86_400, rows)  # three days, shuffled in the file
    bad_at = set(rng.choice(np.arange(1, rows), size=bad_lines, replace=False).tolist()) if bad_lines else set()
    path = Path(path)
    to_row, ids = generic_mapper(None), []
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(COLUMNS)
        for i in range(rows):
            when = (start + timedelta(seconds=int(seconds[i]))).strftime("%Y-%m-%d %H:%M:%S")
            line = [i, int(click[i]), when, sites[site[i]], apps[rng.integers(len(apps))],
                    devices[rng.integers(len(devices))], ads[ad[i]], slots[slot[i]], campaigns[rng.integers(len(campaigns))]]
            if i in bad_at:
                line = line[:-1] if len(bad_at) and i % 2 else line[:2] + ["not-a-time"] + line[3:]
            out.writerow(line)
            ids.append(content_id(to_row(dict(zip(COLUMNS, map(str, line))), None)) if len(line) == len(COLUMNS) else None)
    return {"rows": rows, "bad_lines": len(bad_at), "clicks": int(click.sum()), "ids": ids}
