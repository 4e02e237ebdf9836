"""Work backwards from the latency budget to the student's size.

    distillery size --budget-ms 2 --batch 1 --seq-len 64 --provider cpu [--stat p99] [--out runs/size]

Builds candidate students (layers × hidden × intermediate from a grid; BERT layout with the MiniLM
tokenizer, random weights — latency does not depend on the values), exports and quantizes each
exactly as the compress job does, times the real ONNX Runtime session on inputs of shape
(batch, seq_len), and picks the largest (most parameters) whose p99 (or p50) fits the budget.
Prints the table and writes `size_table.json` / `size_table.md` to the run directory. The timed
span is `session.run` only; tokenisation adds ~0.1 ms per row on this CPU.
"""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
import time
from typing import Any, Literal

import numpy as np
from pydantic import Field

from distillery import io
from distillery.config import Section, load_config
from distillery.metrics import percentiles

__all__ = ["SizeConfig", "pick_largest", "candidate_grid", "measure_candidate", "size_table", "format_table", "cli_main"]

log = logging.getLogger(__name__)


class SizeConfig(Section):
    layers: list[int] = Field(default_factory=lambda: [1, 2, 4, 6], description="encoder depths to try")
    hidden: list[int] = Field(default_factory=lambda: [128, 256, 384], description="hidden sizes to try (multiples of head_dim)")
    intermediate_ratio: list[float] = Field(default_factory=lambda: [2.0, 4.0], description="FFN width as a multiple of hidden")
    head_dim: int = Field(64, ge=8, description="attention head width; heads = hidden / head_dim")
    preset: Literal["auto", "int8-dynamic", "fp16", "none"] = Field("auto", description="variant timed: auto = int8-dynamic on cpu, fp16 on cuda; none = fp32")
    calls: int = Field(200, ge=10, description="timed calls per candidate")
    warmup: int = Field(20, ge=0, description="untimed calls first")
    intra_op_threads: int | None = Field(1, ge=1, description="ORT intra-op threads (as one serving replica uses)")
    max_length: int = Field(128, ge=8, description="max_length written to each candidate's card")
    seed: int = Field(0, description="seed for random weights and token ids")


def candidate_grid(cfg: SizeConfig) -> list[dict[str, int]]:
    """Every (layers, hidden, intermediate) in the grid, smallest first."""
    out = []
    for layers, hidden, ratio in itertools.product(cfg.layers, cfg.hidden, cfg.intermediate_ratio):
        if hidden % cfg.head_dim:
            raise ValueError(f"hidden={hidden}: not a multiple of head_dim={cfg.head_dim}")
        out.append({"layers": layers, "hidden": hidden, "intermediate": int(hidden * ratio), "heads": hidden // cfg.head_dim})
    return sorted(out, key=lambda c: (c["layers"] * (4 * c["hidden"] ** 2 + 2 * c["hidden"] * c["intermediate"]), c["hidden"]))


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


def _build_student(cand: dict[str, int], path: str, tokenizer, seed: int) -> int:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=cand["hidden"], num_hidden_layers=cand["layers"],
                     num_attention_heads=cand["heads"], intermediate_size=cand["intermediate"],
                     max_position_embeddings=512, num_labels=1)
    model = BertForSequenceClassification(cfg).eval()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return int(model.num_parameters())


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
    """Build, export, quantize and time every candidate; one row per candidate."""
    from transformers import AutoTokenizer

    from distillery.compress.export import export_onnx
    from distillery.compress.quantize import PRESET_VARIANT, apply_preset
    from distillery.models import default_backbone

    preset = {"auto": "int8-dynamic" if provider == "cpu" else "fp16"}.get(cfg.preset, cfg.preset)
    variant = "fp32" if preset == "none" else PRESET_VARIANT[preset]
    from distillery.ray_runtime import no_progress_bars

    no_progress_bars()  # two transformers bars per candidate otherwise; the log line below is the progress
    tokenizer = AutoTokenizer.from_pretrained(default_backbone())
    rows = []
    grid = candidate_grid(cfg)
    with tempfile.TemporaryDirectory(prefix="size-") as tmp:
        for i, cand in enumerate(grid):
            hf, onnx_dir = os.path.join(tmp, f"c{i}"), os.path.join(tmp, f"c{i}_onnx")
            params = _build_student(cand, hf, tokenizer, cfg.seed)
            card = export_onnx(hf, onnx_dir, max_length=cfg.max_length, name=f"size-c{i}")
            if preset != "none":
                apply_preset(onnx_dir, preset)
            lat = measure_candidate(onnx_dir, variant, provider, batch, seq_len, cfg.calls, cfg.warmup,
                                    cfg.intra_op_threads, cfg.seed)
            size_mb = os.path.getsize(os.path.join(onnx_dir, _variant_file(onnx_dir, variant))) / 1e6
            row = {**cand, "params": params, "variant": variant, "size_mb": round(size_mb, 2),
                   "p50": lat["p50"], "p99": lat["p99"], "providers": lat["providers"], "version": card["version"]}
            rows.append(row)
            log.info("size: candidate %d/%d: %s", i + 1, len(grid), row)
    return rows


def _variant_file(onnx_dir: str, variant: str) -> str:
    from distillery.onnx_model.card import ModelCard

    return ModelCard.read(onnx_dir).variants[variant]


def format_table(rows: list[dict[str, Any]], pick: dict[str, Any] | None, budget_ms: float, stat: str) -> str:
    """A Markdown table, the pick marked with `<-`."""
    lines = ["| layers | hidden | intermediate | heads | params (M) | size MB | p50 ms | p99 ms | fits |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|:--|"]
    for r in rows:
        fits = "yes" if r[stat] <= budget_ms else "no"
        mark = " <- pick" if pick is not None and r is pick else ""
        lines.append(f"| {r['layers']} | {r['hidden']} | {r['intermediate']} | {r['heads']} | {r['params'] / 1e6:.2f} | "
                     f"{r['size_mb']} | {r['p50']} | {r['p99']} | {fits}{mark} |")
    return "\n".join(lines)


def cli_main(args) -> int:
    """`distillery size`: exit 0 with a pick, 1 when no candidate fits the budget."""
    cfg = load_config(SizeConfig, args.config, None)
    if args.batch < 1 or args.seq_len < 2:
        raise SystemExit(f"--batch {args.batch} / --seq-len {args.seq_len}: need batch >= 1 and seq-len >= 2")
    rows = size_table(cfg, args.batch, args.seq_len, args.provider)
    pick = pick_largest(rows, args.budget_ms, args.stat)
    table = format_table(rows, pick, args.budget_ms, args.stat)
    head = (f"budget {args.budget_ms} ms ({args.stat}), batch {args.batch}, seq-len {args.seq_len}, "
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
    result = {"budget_ms": args.budget_ms, "stat": args.stat, "batch": args.batch, "seq_len": args.seq_len,
              "provider": args.provider, "config": cfg.model_dump(), "rows": rows, "pick": pick}
    io.write_json(io.join(args.out, "size_table.json"), result)
    io.write_bytes(io.join(args.out, "size_table.md"), (f"{head}\n\n{table}\n").encode())
    return 0 if pick is not None else 1
