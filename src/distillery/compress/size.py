"""Work backwards from the bid to the student: which students score a bid of N candidates in time.

    distillery size --budget-ms 10 --candidates 128 [--stat p99] [--calls 200] [--out runs/size]
    distillery size --budget-ms 2 --batch 1 --seq-len 64 [--provider cpu] [--stat p99] [--out runs/size]

Bid mode (`--candidates`) measures, on this machine, the students that could serve a bid of N
candidates, through the scorer a serving replica opens (`onnx_model.kinds.open_scorer`, INT8,
one ORT intra-op thread, the catalog passed to `warm_ads` first): two-tower students (request
tower once per bid, ad vectors cached per catalog ad, the head per candidate) and cross-encoders (a
transformer pass per candidate, each ad's tokens cached) of a few sizes. A bid is a request never
seen before (its query carries the bid number, so no request cache answers) × the N catalog ads
(`BidWorkload`, synthetic rows); the figure is the wall clock of `scorer.predict(rows)`, the call a
replica makes for a bid, tokenisation included. Shapes follow MiniLM's layout (head width 32, FFN
4 × hidden); at MiniLM's width the weights are MiniLM's own layers spread evenly ([0, 5] for two
layers: the shipped students), random elsewhere (latency does not depend on the values). The
choice is the student with the most parameters, of either kind, whose p99 (or p50) per bid fits the
budget, ties to the faster. Built candidates are kept under `<out>/students/`: a re-run only measures.

Batch mode (`--batch/--seq-len`, no `--candidates`): cross-encoders over the `layers × hidden ×
intermediate_ratio` grid with random weights, timed at `session.run` on (batch, seq_len) inputs.

Both print the table and write `size_table.json` / `size_table.md` to `--out`.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from typing import Any, Callable, Literal, Mapping

import numpy as np
from pydantic import Field

from distillery import io
from distillery.config import ConfigError, Section, load_config, validate_config
from distillery.metrics import percentiles

__all__ = ["SizeConfig", "BidSection", "BidWorkload", "pick_largest", "fits_bid", "needed_budget_message", "describe",
           "student_shape", "measure_student_kind", "bid_grid", "bid_table", "format_bid_table", "candidate_grid",
           "measure_candidate", "size_table", "format_table", "cli_main"]

log = logging.getLogger(__name__)

MIN_BID_CALLS = 10  # timed bids per candidate however slow it is; fewer say nothing of a percentile
_BUILT_FILE = "size_candidate.json"  # written last into a candidate's folder: present = complete


class BidSection(Section):
    budget_ms: float = Field(10.0, gt=0, description="latency budget for scoring one bid, ms (wall clock, tokenisation included)")
    candidates: int = Field(128, ge=1, description="eligible ads scored per bid")
    stat: Literal["p50", "p99"] = Field("p99", description="percentile of the per-bid latency that must fit the budget")


class SizeConfig(Section):
    layers: list[int] = Field(default_factory=lambda: [1, 2, 4, 6], description="batch mode: encoder depths to try")
    hidden: list[int] = Field(default_factory=lambda: [128, 256, 384], description="batch mode: hidden sizes to try (multiples of head_dim)")
    intermediate_ratio: list[float] = Field(default_factory=lambda: [2.0, 4.0], description="batch mode: FFN width as a multiple of hidden")
    head_dim: int = Field(64, ge=8, description="batch mode: attention head width; heads = hidden / head_dim")
    preset: Literal["auto", "int8-dynamic", "fp16", "none"] = Field("auto", description="batch mode: variant timed: auto = int8-dynamic on cpu, fp16 on cuda; none = fp32")
    two_tower_layers: list[int] = Field(default_factory=lambda: [1, 2], description="bid mode: two-tower depths to try")
    two_tower_hidden: list[int] = Field(default_factory=lambda: [128, 256, 384], description="bid mode: two-tower widths to try (multiples of 32)")
    cross_layers: list[int] = Field(default_factory=lambda: [1, 2, 4, 6], description="bid mode: cross-encoder depths to try")
    cross_hidden: list[int] = Field(default_factory=lambda: [384], description="bid mode: cross-encoder widths to try (multiples of 32)")
    seconds_per_candidate: float = Field(10.0, gt=0, description=f"bid mode: time for one candidate's timed bids, s; a slow one gets fewer (never under {MIN_BID_CALLS})")
    calls: int = Field(200, ge=10, description="timed calls (bids in bid mode) per candidate")
    warmup: int = Field(20, ge=0, description="untimed calls first")
    intra_op_threads: int | None = Field(1, ge=1, description="ORT intra-op threads (as one serving replica uses)")
    max_length: int = Field(128, ge=8, description="max_length written to each candidate's card (the compress job's default)")
    seed: int = Field(0, description="seed for random weights, token ids and bid rows")


# ---- the choice: pure functions over table rows (`params`, `p50`, `p99`, bid mode: `candidates`) ----

def pick_largest(table: list[dict[str, Any]], budget_ms: float, stat: str = "p99") -> dict[str, Any] | None:
    """The row with the most `params` whose `stat` latency (ms) is within `budget_ms`; ties go to
    the faster one. None when nothing fits. Pure: rows need `params` and `stat` keys."""
    if stat not in ("p50", "p99"):
        raise ValueError(f"stat {stat!r}: expected p50 or p99")
    if not budget_ms > 0:
        raise ValueError(f"budget_ms={budget_ms}: must be > 0")
    fits = [r for r in table if r.get(stat) is not None and r[stat] <= budget_ms]
    if not fits:
        return None
    return max(fits, key=lambda r: (r["params"], -r[stat]))


def _check_candidates(table: list[dict[str, Any]], bid: BidSection) -> None:
    other = sorted({r["candidates"] for r in table if r.get("candidates", bid.candidates) != bid.candidates})
    if other:
        raise ValueError(f"bid.candidates={bid.candidates}: the table holds rows measured at {other} candidates")


def fits_bid(table: list[dict[str, Any]], bid: BidSection) -> dict[str, Any] | None:
    """The largest student of `table` (rows of `measure_student_kind`, either kind) whose `bid.stat`
    latency per bid fits `bid.budget_ms`; None when none does. Rows measured at another number of
    candidates than `bid.candidates` are an error, not ignored."""
    _check_candidates(table, bid)
    return pick_largest(table, bid.budget_ms, bid.stat)


def describe(row: Mapping[str, Any]) -> str:
    """`two_tower 2×384`: kind, layers × hidden of a bid-mode row."""
    return f"{row['kind']} {row['layers']}×{row['hidden']}"


def needed_budget_message(table: list[dict[str, Any]], bid: BidSection) -> str:
    """Why no row of `table` fits `bid`, naming the budget (ms, rounded up) its fastest student needs."""
    _check_candidates(table, bid)
    head = f"no student fits budget_ms={bid.budget_ms:g} at {bid.candidates} candidates ({bid.stat})"
    timed = [r for r in table if r.get(bid.stat) is not None]
    if not timed:
        return f"{head}: none was measured"
    fastest = min(timed, key=lambda r: (r[bid.stat], -r["params"]))
    need = math.ceil(fastest[bid.stat] * 100) / 100
    return (f"{head}; the fastest measured, {describe(fastest)}, needs {need:g} ms: "
            f"raise bid.budget_ms to ≥ {need:g} or lower bid.candidates")


# ---- bid mode: what one bid costs a student ----

class BidWorkload:
    """A catalog of `candidates` distinct synthetic ads (`ads`: row fields, as `warm_ads` takes them)
    and bids over it: `rows(i)` = bid i's candidate rows, one request context whose query ends in
    the bid number (never repeated) × every catalog ad, positions 1-4 and slot sizes varied."""

    def __init__(self, candidates: int, seed: int = 0):
        from distillery.data.synthetic import SLOT_SIZES, SyntheticConfig, generate
        from distillery.loadtest import catalog_ads

        if candidates < 1:
            raise ValueError(f"candidates={candidates}: must be >= 1")
        logs = generate(SyntheticConfig(seed=seed, rows_test=max(4 * candidates, 256)), "test").to_pylist()
        self.contexts = [{k: r[k] for k in ("query", "site_category", "device", "os", "hour")} for r in logs[:256]]
        self.ads = catalog_ads(logs, candidates)  # distinct ads; repeats made distinct by a numbered title
        self.slots = SLOT_SIZES

    def rows(self, i: int) -> list[dict[str, Any]]:
        ctx = self.contexts[i % len(self.contexts)]
        return [{**ctx, "query": f"{ctx['query']} {i}", **ad, "position": 1 + k % 4, "slot_size": self.slots[k % 4]}
                for k, ad in enumerate(self.ads)]


@functools.lru_cache(maxsize=1)
def _minilm() -> dict[str, int]:
    """The packaged backbone's layout: hidden, layers, head width, FFN width / hidden."""
    from transformers import AutoConfig

    from distillery.models import default_backbone

    c = AutoConfig.from_pretrained(default_backbone())
    return {"hidden": c.hidden_size, "layers": c.num_hidden_layers, "head_dim": c.hidden_size // c.num_attention_heads,
            "ffn_ratio": c.intermediate_size // c.hidden_size}


def student_shape(kind: str, layers: int, hidden: int, source: Literal["auto", "minilm", "random"] = "auto") -> dict[str, Any]:
    """`{kind, layers, hidden, intermediate, heads, source, minilm_layers}` in MiniLM's layout.
    `auto`: MiniLM's own layers (spread evenly, [0, 5] for two) where the width is MiniLM's, else random."""
    from distillery.onnx_model.kinds import KINDS

    m = _minilm()
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: expected one of {sorted(KINDS)}")
    if layers < 1:
        raise ValueError(f"layers={layers}: must be >= 1")
    if hidden < m["head_dim"] or hidden % m["head_dim"]:
        raise ValueError(f"hidden={hidden}: must be a multiple of {m['head_dim']} (MiniLM's head width)")
    minilm_fits = hidden == m["hidden"] and layers <= m["layers"]
    if source == "auto":
        source = "minilm" if minilm_fits else "random"
    if source == "minilm" and not minilm_fits:
        raise ValueError(f"source=minilm: MiniLM has {m['layers']} layers of width {m['hidden']}, not {layers}×{hidden}")
    if source not in ("minilm", "random"):
        raise ValueError(f"source {source!r}: expected auto, minilm or random")
    spread = [0] if layers == 1 else [round(i * (m["layers"] - 1) / (layers - 1)) for i in range(layers)]
    return {"kind": kind, "layers": layers, "hidden": hidden, "intermediate": hidden * m["ffn_ratio"],
            "heads": hidden // m["head_dim"], "source": source, "minilm_layers": spread if source == "minilm" else None}


def _random_bert(shape: Mapping[str, int], tokenizer, seed: int, two_tower: bool = False):
    """A random BERT cross-encoder (one logit), or a `TwoTowerStudent` over a random BERT encoder."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=shape["hidden"], num_hidden_layers=shape["layers"],
                     num_attention_heads=shape["heads"], intermediate_size=shape["intermediate"],
                     max_position_embeddings=512, num_labels=1)
    if not two_tower:
        return BertForSequenceClassification(cfg).eval()
    from distillery.training.two_tower_student import TwoTowerSpec, TwoTowerStudent

    return TwoTowerStudent(BertModel(cfg, add_pooling_layer=False), TwoTowerSpec()).eval()


def _build_candidate(shape: dict[str, Any], folder: str, max_length: int, seed: int) -> int:
    """Build the student, export and INT8-quantize it as the compress job does into `folder`; its parameters."""
    from transformers import AutoTokenizer

    from distillery.compress.quantize import quantize_int8
    from distillery.models import default_backbone
    from distillery.onnx_model.kinds import KINDS
    from distillery.ray_runtime import no_progress_bars
    from distillery.training.init import ModelInit, build_model

    no_progress_bars()
    two_tower = shape["kind"] == "two_tower"
    if shape["source"] == "minilm":
        init = ModelInit(kind="two_tower" if two_tower else "layer_subset", layers=shape["minilm_layers"], seed=seed)
        model, tokenizer = build_model(init)
    else:
        tokenizer = AutoTokenizer.from_pretrained(default_backbone())
        model = _random_bert(shape, tokenizer, seed, two_tower)
    student = folder.rstrip("/") + ".student"
    shutil.rmtree(student, ignore_errors=True)
    try:
        model.save_pretrained(student)
        tokenizer.save_pretrained(student)
        KINDS[shape["kind"]].export(student, folder, max_length=max_length, name=os.path.basename(folder))
        quantize_int8(folder)
    finally:
        shutil.rmtree(student, ignore_errors=True)
    return int(sum(p.numel() for p in model.parameters()))


@contextlib.contextmanager
def _quiet():
    """No INFO logs and no Python warnings (the exporter's tracer warnings) while a candidate is
    built: the caller reports one line per candidate. Errors still surface."""
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _candidate_folder(shape: dict[str, Any], work_dir: str, max_length: int, seed: int) -> tuple[str, int, float, bool]:
    """(ONNX folder, parameters, build seconds, reused): built once per shape under `work_dir`."""
    key = f"{shape['kind']}-{shape['layers']}x{shape['hidden']}-{shape['source']}-len{max_length}"
    folder = os.path.join(work_dir, key)
    want = {**shape, "max_length": max_length}
    with contextlib.suppress(OSError, ValueError):
        with open(os.path.join(folder, _BUILT_FILE)) as f:
            saved = json.load(f)
        if {k: saved.get(k) for k in want} == want:
            return folder, int(saved["params"]), 0.0, True
    shutil.rmtree(folder, ignore_errors=True)
    t0 = time.perf_counter()
    with _quiet():
        params = _build_candidate(shape, folder, max_length, seed)
    with open(os.path.join(folder, _BUILT_FILE), "w") as f:
        json.dump({**want, "params": params}, f)
    return folder, params, time.perf_counter() - t0, False


def _time_bids(folder: str, workload: BidWorkload, calls: int, warmup: int, seconds: float,
               threads: int | None) -> dict[str, Any]:
    """p50/p99 (ms) of `scorer.predict(bid rows)` on a fresh replica's scorer, after `warm_ads(catalog)`.
    Warm-up stops after `seconds / 4`, timing after `seconds` (but not before `MIN_BID_CALLS` bids).
    numpy's BLAS runs one thread, as in a replica (`OMP_NUM_THREADS: 1` in serve/serve_config.yaml):
    with numpy's default pool a two-tower bid of 128 measured p50 7.9 ms here, not 0.7 (2 busy cores)."""
    from threadpoolctl import threadpool_limits

    from distillery.onnx_model.kinds import open_scorer

    scorer = open_scorer(folder, "int8", provider="cpu", intra_op_threads=threads)
    with threadpool_limits(limits=1):
        t0 = time.perf_counter()
        scorer.warm_ads(workload.ads)
        warm_ads_ms = (time.perf_counter() - t0) * 1000
        bid, start = 0, time.perf_counter()
        while bid < warmup and (bid == 0 or time.perf_counter() - start < seconds / 4):
            scorer.predict(workload.rows(bid))
            bid += 1
        warm, times, probs = bid, [], np.zeros(0)
        start = time.perf_counter()
        while len(times) < calls and (len(times) < MIN_BID_CALLS or time.perf_counter() - start < seconds):
            rows = workload.rows(bid)
            bid += 1
            t = time.perf_counter()
            probs = scorer.predict(rows)
            times.append((time.perf_counter() - t) * 1000)
    if probs.shape != (len(workload.ads),) or not np.all(np.isfinite(probs)):
        raise RuntimeError(f"{folder}: a bid of {len(workload.ads)} candidates scored {probs.shape}, finite: {np.isfinite(probs).all()}")
    return {**percentiles(times), "bids": len(times), "warmup_bids": warm, "warm_ads_ms": round(warm_ads_ms, 1),
            "variant": "int8", "providers": scorer.providers}


def measure_student_kind(kind: Literal["two_tower", "cross"], layers: int, hidden: int, candidates: int,
                         calls: int = 200, *, warmup: int = 20, seconds: float = 10.0, work_dir: str | None = None,
                         source: Literal["auto", "minilm", "random"] = "auto", max_length: int = 128,
                         intra_op_threads: int | None = 1, seed: int = 0,
                         workload: BidWorkload | None = None) -> dict[str, Any]:
    """Per-bid latency (ms) of one student shape at `candidates` per bid, on this machine.

    Builds the student (`student_shape`), exports and INT8-quantizes it (kept under `work_dir` when
    given, so a second call reuses it; a temporary folder otherwise), and times up to `calls` bids
    (fewer when they take over `seconds`, never under 10) after `warmup`. Returns the table row:
    `{kind, layers, hidden, intermediate, heads, source, minilm_layers, params, candidates, p50, p99,
    bids, warmup_bids, warm_ads_ms, variant, providers, build_s, reused}`.
    """
    shape = student_shape(kind, layers, hidden, source)
    if calls < 1 or warmup < 0 or not seconds > 0:
        raise ValueError(f"calls={calls}, warmup={warmup}, seconds={seconds}: need calls >= 1, warmup >= 0, seconds > 0")
    workload = BidWorkload(candidates, seed) if workload is None else workload
    if len(workload.ads) != candidates:
        raise ValueError(f"candidates={candidates}: the workload's catalog has {len(workload.ads)} ads")
    with contextlib.ExitStack() as stack:
        if work_dir is None:
            work_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="size-"))
        os.makedirs(work_dir, exist_ok=True)
        folder, params, build_s, reused = _candidate_folder(shape, work_dir, max_length, seed)
        timing = _time_bids(folder, workload, calls, warmup, seconds, intra_op_threads)
    return {**shape, "params": params, "candidates": candidates, **timing, "build_s": round(build_s, 1), "reused": reused}


def bid_grid(cfg: SizeConfig) -> list[tuple[str, int, int]]:
    """(kind, layers, hidden) of every bid-mode candidate: two-tower students, then cross-encoders, smallest first."""
    grid = []
    for kind, layers, hidden in (("two_tower", cfg.two_tower_layers, cfg.two_tower_hidden), ("cross", cfg.cross_layers, cfg.cross_hidden)):
        grid += sorted(((kind, n, h) for n, h in itertools.product(layers, hidden)), key=lambda c: (c[1] * c[2] ** 2, c[2]))
    return grid


def bid_table(cfg: SizeConfig, bid: BidSection, work_dir: str | None = None,
              progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """`measure_student_kind` over `bid_grid(cfg)` on one workload; one row per candidate, and a
    `progress` line as each is measured."""
    grid = bid_grid(cfg)
    for kind, layers, hidden in grid:  # a bad shape fails before anything is built
        student_shape(kind, layers, hidden)
    workload = BidWorkload(bid.candidates, cfg.seed)
    rows = []
    for i, (kind, layers, hidden) in enumerate(grid, 1):
        row = measure_student_kind(kind, layers, hidden, bid.candidates, cfg.calls, warmup=cfg.warmup,
                                   seconds=cfg.seconds_per_candidate, work_dir=work_dir, max_length=cfg.max_length,
                                   intra_op_threads=cfg.intra_op_threads, seed=cfg.seed, workload=workload)
        rows.append(row)
        if progress is not None:
            built = "reused" if row["reused"] else f"built in {row['build_s']} s"
            progress(f"[{i:>{len(str(len(grid)))}}/{len(grid)}] {describe(row):<15} {_weights(row):<15} {row['params'] / 1e6:6.2f} M params: "
                     f"p50 {row['p50']:.2f} ms  p99 {row['p99']:.2f} ms per bid over {row['bids']} bids ({built})")
    return rows


def _weights(row: Mapping[str, Any]) -> str:
    return "minilm[" + ",".join(map(str, row["minilm_layers"])) + "]" if row.get("minilm_layers") else row.get("source", "random")


def format_bid_table(rows: list[dict[str, Any]], pick: dict[str, Any] | None, bid: BidSection) -> str:
    """A Markdown table of bid-mode rows (latency per bid of `bid.candidates`), the pick marked with `<-`."""
    lines = [f"| kind | layers | hidden | weights | params (M) | bids | p50 ms/bid | p99 ms/bid | fits {bid.budget_ms:g} ms {bid.stat} |",
             "|:--|---:|---:|:--|---:|---:|---:|---:|:--|"]
    for r in rows:
        fits = "yes" if r[bid.stat] <= bid.budget_ms else "no"
        mark = " <- pick" if pick is not None and r is pick else ""
        lines.append(f"| {r['kind']} | {r['layers']} | {r['hidden']} | {_weights(r)} | {r['params'] / 1e6:.2f} | {r['bids']} | "
                     f"{r['p50']:.2f} | {r['p99']:.2f} | {fits}{mark} |")
    return "\n".join(lines)


# ---- batch mode: session.run at (batch, seq_len) ----

def candidate_grid(cfg: SizeConfig) -> list[dict[str, int]]:
    """Every (layers, hidden, intermediate) in the batch-mode grid, smallest first."""
    out = []
    for layers, hidden, ratio in itertools.product(cfg.layers, cfg.hidden, cfg.intermediate_ratio):
        if hidden % cfg.head_dim:
            raise ValueError(f"hidden={hidden}: not a multiple of head_dim={cfg.head_dim}")
        out.append({"layers": layers, "hidden": hidden, "intermediate": int(hidden * ratio), "heads": hidden // cfg.head_dim})
    return sorted(out, key=lambda c: (c["layers"] * (4 * c["hidden"] ** 2 + 2 * c["hidden"] * c["intermediate"]), c["hidden"]))


def measure_candidate(onnx_dir: str, variant: str, provider: str, batch: int, seq_len: int,
                      calls: int, warmup: int, threads: int | None, seed: int = 0) -> dict[str, float]:
    """p50/p99 (ms) of `session.run` on (batch, seq_len) int64 inputs of the real ORT session."""
    from distillery.onnx_model.scorer import OnnxScorer

    scorer = OnnxScorer(onnx_dir, variant=variant, provider=provider, intra_op_threads=threads)
    rng = np.random.default_rng(seed)
    vocab = scorer.tokenizer.vocab_size
    feeds = {"input_ids": rng.integers(1000, vocab, (batch, seq_len), dtype=np.int64),
             "attention_mask": np.ones((batch, seq_len), dtype=np.int64),
             "token_type_ids": np.zeros((batch, seq_len), dtype=np.int64)}
    feeds = {k: v for k, v in feeds.items() if k in scorer.input_names}
    for _ in range(warmup):
        scorer.session.run(None, feeds)
    times = np.empty(calls)
    for i in range(calls):
        t0 = time.perf_counter()
        scorer.session.run(None, feeds)
        times[i] = (time.perf_counter() - t0) * 1000
    return {**percentiles(times), "providers": scorer.providers}


def size_table(cfg: SizeConfig, batch: int, seq_len: int, provider: str = "cpu") -> list[dict[str, Any]]:
    """Build, export, quantize and time every batch-mode candidate; one row per candidate."""
    from transformers import AutoTokenizer

    from distillery.compress.export import export_onnx
    from distillery.compress.quantize import PRESET_VARIANT, apply_preset
    from distillery.models import default_backbone
    from distillery.ray_runtime import no_progress_bars

    preset = {"auto": "int8-dynamic" if provider == "cpu" else "fp16"}.get(cfg.preset, cfg.preset)
    variant = "fp32" if preset == "none" else PRESET_VARIANT[preset]
    no_progress_bars()  # two transformers bars per candidate otherwise; the log line below is the progress
    tokenizer = AutoTokenizer.from_pretrained(default_backbone())
    rows = []
    grid = candidate_grid(cfg)
    with tempfile.TemporaryDirectory(prefix="size-") as tmp:
        for i, cand in enumerate(grid):
            hf, onnx_dir = os.path.join(tmp, f"c{i}"), os.path.join(tmp, f"c{i}_onnx")
            model = _random_bert(cand, tokenizer, cfg.seed)
            model.save_pretrained(hf)
            tokenizer.save_pretrained(hf)
            card = export_onnx(hf, onnx_dir, max_length=cfg.max_length, name=f"size-c{i}")
            if preset != "none":
                apply_preset(onnx_dir, preset)
            lat = measure_candidate(onnx_dir, variant, provider, batch, seq_len, cfg.calls, cfg.warmup,
                                    cfg.intra_op_threads, cfg.seed)
            size_mb = os.path.getsize(os.path.join(onnx_dir, _variant_file(onnx_dir, variant))) / 1e6
            row = {**cand, "params": int(model.num_parameters()), "variant": variant, "size_mb": round(size_mb, 2),
                   "p50": lat["p50"], "p99": lat["p99"], "providers": lat["providers"], "version": card["version"]}
            rows.append(row)
            log.info("size: candidate %d/%d: %s", i + 1, len(grid), row)
    return rows


def _variant_file(onnx_dir: str, variant: str) -> str:
    from distillery.onnx_model.card import ModelCard

    return ModelCard.read(onnx_dir).variants[variant]


def format_table(rows: list[dict[str, Any]], pick: dict[str, Any] | None, budget_ms: float, stat: str) -> str:
    """A Markdown table of batch-mode rows, the pick marked with `<-`."""
    lines = ["| layers | hidden | intermediate | heads | params (M) | size MB | p50 ms | p99 ms | fits |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|:--|"]
    for r in rows:
        fits = "yes" if r[stat] <= budget_ms else "no"
        mark = " <- pick" if pick is not None and r is pick else ""
        lines.append(f"| {r['layers']} | {r['hidden']} | {r['intermediate']} | {r['heads']} | {r['params'] / 1e6:.2f} | "
                     f"{r['size_mb']} | {r['p50']} | {r['p99']} | {fits}{mark} |")
    return "\n".join(lines)


# ---- the command ----

def cli_main(args) -> int:
    """`distillery size`: exit 0 with a pick, 1 when no candidate fits the budget."""
    cfg = load_config(SizeConfig, args.config, None if args.calls is None else [f"calls={args.calls}"])
    bid = validate_config(BidSection, {"budget_ms": args.budget_ms, "stat": args.stat,
                                       **({} if args.candidates is None else {"candidates": args.candidates})}, "size")
    if args.candidates is None:
        return _batch_cli(cfg, args)
    if args.batch is not None or args.seq_len is not None:
        raise ConfigError("size: --batch/--seq-len: batch mode only; with --candidates a bid's rows set the shapes")
    if args.provider != "cpu":
        raise ConfigError(f"size: --provider {args.provider}: bid mode measures CPU replicas (INT8); use --batch/--seq-len on a GPU")
    return _bid_cli(cfg, bid, args.out)


def _bid_cli(cfg: SizeConfig, bid: BidSection, out: str) -> int:
    from distillery.hardware import cpu_info, cpu_summary

    machine = cpu_info()
    head = [f"cpu: {cpu_summary()} | flags {' '.join(machine['flags']) or '-'}",
            f"budget {bid.budget_ms:g} ms ({bid.stat}) per bid of {bid.candidates} candidates; int8, {cfg.intra_op_threads} ORT "
            f"thread(s), 1 BLAS thread; up to {cfg.calls} bids per student after {cfg.warmup} warm-up, {cfg.seconds_per_candidate:g} s each"]
    print("\n".join(head), flush=True)
    work_dir = None if "://" in out else os.path.join(out, "students")  # built students are cached on local disk only
    rows = bid_table(cfg, bid, work_dir, progress=lambda line: print(line, flush=True))
    pick = fits_bid(rows, bid)
    table = format_bid_table(rows, pick, bid)
    if pick is None:
        choice = needed_budget_message(rows, bid)
    else:
        choice = (f"choice: {describe(pick)} ({_weights(pick)}, {pick['params'] / 1e6:.2f} M params): "
                  f"{bid.stat} {pick[bid.stat]:.2f} ms per bid of {bid.candidates} ≤ {bid.budget_ms:g} ms")
    print(table)
    print(choice)
    io.makedirs(out)
    result = {"machine": {**machine, "summary": cpu_summary()}, "budget_ms": bid.budget_ms, "candidates": bid.candidates,
              "stat": bid.stat, "config": cfg.model_dump(), "rows": rows, "choice": pick, "message": choice}
    io.write_json(io.join(out, "size_table.json"), result)
    io.write_bytes(io.join(out, "size_table.md"), ("\n\n".join(["\n".join(head), table, choice]) + "\n").encode())
    return 0 if pick is not None else 1


def _batch_cli(cfg: SizeConfig, args) -> int:
    batch = 1 if args.batch is None else args.batch
    seq_len = 64 if args.seq_len is None else args.seq_len
    if batch < 1 or seq_len < 2:
        raise SystemExit(f"--batch {batch} / --seq-len {seq_len}: need batch >= 1 and seq-len >= 2")
    rows = size_table(cfg, batch, seq_len, args.provider)
    pick = pick_largest(rows, args.budget_ms, args.stat)
    table = format_table(rows, pick, args.budget_ms, args.stat)
    head = (f"budget {args.budget_ms} ms ({args.stat}), batch {batch}, seq-len {seq_len}, "
            f"provider {args.provider}, {cfg.intra_op_threads} ORT thread(s), variant {rows[0]['variant'] if rows else '-'}")
    print(head)
    print(table)
    if pick is None:
        fastest = min(rows, key=lambda r: r[args.stat])
        print(f"no candidate fits {args.budget_ms} ms: the fastest ({fastest['layers']} layers x {fastest['hidden']}) "
              f"took {fastest[args.stat]} ms {args.stat}; raise the budget or add smaller sizes to the grid")
    else:
        print(f"pick: {pick['layers']} layers, hidden {pick['hidden']}, intermediate {pick['intermediate']}, "
              f"{pick['heads']} heads ({pick['params'] / 1e6:.2f} M params), {args.stat} {pick[args.stat]} ms")
    io.makedirs(args.out)
    result = {"budget_ms": args.budget_ms, "stat": args.stat, "batch": batch, "seq_len": seq_len,
              "provider": args.provider, "config": cfg.model_dump(), "rows": rows, "pick": pick}
    io.write_json(io.join(args.out, "size_table.json"), result)
    io.write_bytes(io.join(args.out, "size_table.md"), (f"{head}\n\n{table}\n").encode())
    return 0 if pick is not None else 1
