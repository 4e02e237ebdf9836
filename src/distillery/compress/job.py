"""The compress stage: prepare → export ONNX → quantize → choose fusion → gate → publish.

    python -m jobs.compress --config jobs/configs/compress.yaml run_dir=runs/demo
    distillery compress --config jobs/configs/compress.yaml ffn_keep_ratio=0.5 presets=[int8-dynamic,fp16]

Reads `<run_dir>/<student>/` (a Hugging Face folder), writes a new immutable version
`<run_dir>/onnx.versions/<time>-<version>/` (the serving contract: see `export.py`) and makes it
current by one atomic switch of the `<run_dir>/onnx` link (`distillery.publish`): `onnx` always
names the last model that passed, a failed or killed build never touches it, and a replica that
loaded a version keeps reading that version's files. The newest `keep_versions` versions are kept.
(On object stores, which have no links, `onnx/` is replaced by an upload.)

A quantized variant that fails the quality gate is left out of the version (the card names it under
`rejected_variants`, its figures under `metrics.rejected`) and the rest is published: FP32 passes by
construction once its parity with PyTorch holds. `default_variant` in the card is the best variant
that passed (int8 first). Only a build with nothing to serve (FP32 parity broken) is refused: it is
kept at `<run_dir>/onnx.rejected/` with its figures and the job raises. The card also carries
`canary`: 64 test inputs and each published variant's probabilities for them, for promotion checks.

When pruning, the pruned checkpoint goes to `<run_dir>/student_pruned/` so the training job can
re-distil it. Validation rows come from `<run_dir>/data/<split>/`; when the run has no data yet,
from the synthetic generator (recorded in the card).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import Field

from distillery import io
from distillery.config import FolderName, RunSection, Section, config_hash

__all__ = ["CompressConfig", "ValidationSection", "run", "CANARY_ROWS", "DEFAULT_VARIANT_ORDER"]

log = logging.getLogger(__name__)

Preset = Literal["int8-dynamic", "int8-static", "fp16"]
# The variant a CPU replica serves by default, best first: the first that passed the gate goes in the
# card as `default_variant` (fp16 last: ORT runs it on CPUs by converting back to float).
DEFAULT_VARIANT_ORDER = ("int8", "int8_static", "fp32", "fp16")
CANARY_ROWS = 64  # test inputs recorded in the card with each variant's probabilities
CANARY_ATOL = 1e-3  # what a re-score of the published files may differ by (probability units)


class ValidationSection(Section):
    split: str = Field("test", description="split of <run_dir>/data with true clicks for AUC")
    rows: int = Field(4000, ge=50, description="rows for the paired quality gate of every variant")
    parity_rows: int = Field(256, ge=1, description="rows for the FP32-vs-PyTorch logit check")
    atol: float = Field(1e-3, gt=0, description="max |Δ logit| allowed between FP32 ONNX and PyTorch")
    max_auc_drop: float = Field(0.005, ge=0, description="quality gate, non-inferiority margin: a variant passes only when the upper end of the paired-DeLong CI of its AUC drop below FP32 is at most this")
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="quality gate: two-sided level of that confidence interval")
    min_spearman: float = Field(0.95, ge=-1.0, le=1.0, description="quality gate: least Spearman rank correlation with FP32's scores on the same rows")
    max_mean_abs_dp: float = Field(0.01, gt=0.0, le=1.0, description="quality gate: most mean |p_variant − p_fp32| on the same rows (calibration kept)")
    gate: Literal["fail", "warn"] = Field("fail", description="what a variant that fails the gate gets: left out of the published version (fail), or kept with a warning (warn)")
    calibration_split: str = Field("train", description="split whose rows calibrate int8-static and score importance")
    calibration_rows: int = Field(256, ge=8, description="rows for int8-static calibration and pruning importance")
    batch_size: int = Field(64, ge=1, description="rows per ORT/PyTorch call during validation")
    latency_calls: int = Field(200, ge=0, description="batch-1 calls per variant for p50/p99 in the card (0 = skip)")
    num_threads: int | None = Field(None, ge=1, description="ORT intra-op threads during validation (None = ORT default)")


class CompressConfig(RunSection):
    student: str = Field("student", description="student checkpoint: folder name under run_dir, or a path")
    out: FolderName = Field("onnx", description="output folder name under run_dir (the current-version link; versions beside it)")
    name: str = Field("ctr", description="model name in the card (served under this name)")
    keep_layers: list[int] | int | None = Field(None, description="encoder (or only stack) layers to keep: indices, or a count spread evenly; None keeps all")
    keep_decoder_layers: list[int] | int | None = Field(None, description="decoder layers to keep (encoder-decoders only)")
    ffn_keep_ratio: float = Field(1.0, gt=0, le=1, description="fraction of FFN units kept per layer, by activation importance")
    keep_heads: int | None = Field(None, ge=1, description="attention heads kept per layer (BERT family); None keeps all")
    presets: list[Preset] = Field(default_factory=lambda: ["int8-dynamic"], min_length=1, description="quantization presets to write (at least one)")
    per_channel: bool = Field(True, description="per-channel int8 weight scales (measured closer to FP32 than per-tensor)")
    reduce_range: bool | None = Field(None, description="int8-dynamic: 7-bit weights (no u8s8 int16 saturation on CPUs without VNNI); null decides from this CPU's features")
    try_fusion: bool = Field(True, description="build ORT's transformer-fused graph and keep it only if int8 measures faster")
    max_length: int = Field(128, ge=8, le=4096, description="truncation length in tokens, written to the card")
    opset: int = Field(17, ge=14, le=21, description="ONNX opset")
    teacher_id: str | None = Field(None, description="teacher id for lineage; default: from labels/_MANIFEST.json")
    keep_versions: int = Field(3, ge=1, description="published versions kept under <out>.versions/ (the current one always)")
    validation: ValidationSection = Field(default_factory=ValidationSection, description="parity, AUC gate, calibration")


def _local_dir(path: str, tmp: str, label: str) -> str:
    """A local folder for `path`, downloading URIs into `tmp` (HF and ORT need local files)."""
    if "://" not in path:
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{label} {path!r}: no such folder")
        return path
    import pyarrow.fs as pafs

    fs, p = io.filesystem(path)
    local = os.path.join(tmp, label)
    pafs.copy_files(p, local, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return local


def _rows(cfg: CompressConfig, split: str, n: int) -> tuple[list[dict], str]:
    """Up to `n` rows of a split, and where they came from."""
    from distillery.training.data import read_split

    try:
        return read_split(cfg.run_dir, split, max_rows=n).to_pylist(), f"{cfg.run_dir}/data/{split}"
    except FileNotFoundError:
        from distillery.data.synthetic import SyntheticConfig, generate

        log.warning("no %s split under %s: validating on synthetic rows", split, cfg.run_dir)
        syn = SyntheticConfig(rows_train=n, rows_test=n, rows_unlabeled=0)
        return generate(syn, "train" if split == "train" else "test").to_pylist()[:n], f"synthetic:{split}"


def _lineage(cfg: CompressConfig, student_path: str) -> dict[str, Any]:
    manifest_path = io.join(cfg.run_dir, "labels", "_MANIFEST.json")
    lineage: dict[str, Any] = {"student_checkpoint": student_path, "config_hash": config_hash(cfg),
                               "teacher_id": cfg.teacher_id, "labels_manifest_sha256": None}
    if io.exists(manifest_path):
        blob = io.read_bytes(manifest_path)
        lineage["labels_manifest_sha256"] = hashlib.sha256(blob).hexdigest()[:16]
        if lineage["teacher_id"] is None:
            import json

            ids = json.loads(blob).get("teacher_ids") or []
            lineage["teacher_id"] = ",".join(ids) or None
    return lineage


def _prune(cfg: CompressConfig, src: str, dst: str, texts: list[str]) -> dict[str, Any] | None:
    """Apply the configured pruning to `src`, save to `dst`; None when nothing is pruned."""
    if cfg.keep_layers is None and cfg.keep_decoder_layers is None and cfg.ffn_keep_ratio == 1.0 and cfg.keep_heads is None:
        return None
    from transformers import AutoTokenizer

    from distillery.compress.prune import layer_counts, load_pruned, prune_ffn, prune_heads, prune_layers

    model = load_pruned(src, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(src)
    before = {"layers": layer_counts(model), "params": model.num_parameters()}
    keep = {k: v for k, v in (("encoder", cfg.keep_layers), ("decoder", cfg.keep_decoder_layers)) if v is not None}
    if keep:
        if "decoder" in keep and "decoder" not in layer_counts(model):
            raise ValueError(f"keep_decoder_layers: model type {model.config.model_type!r} has no decoder stack")
        if "decoder" not in layer_counts(model):
            keep = {next(iter(layer_counts(model))): keep["encoder"]}
        prune_layers(model, keep)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    batches = [dict(tok(texts[i:i + 32], padding=True, truncation=True, max_length=cfg.max_length, return_tensors="pt"))
               for i in range(0, len(texts), 32)]
    if getattr(model.config, "type_vocab_size", 0) in (0, None):
        batches = [{k: v for k, v in b.items() if k != "token_type_ids"} for b in batches]
    if cfg.keep_heads is not None:
        prune_heads(model, cfg.keep_heads, inputs=batches)
    if cfg.ffn_keep_ratio < 1.0:
        prune_ffn(model, cfg.ffn_keep_ratio, inputs=batches)
    model.save_pretrained(dst)
    tok.save_pretrained(dst)
    return {"before": before, "after": {"layers": layer_counts(model), "params": model.num_parameters()},
            "keep_layers": cfg.keep_layers, "keep_decoder_layers": cfg.keep_decoder_layers,
            "ffn_keep_ratio": cfg.ffn_keep_ratio, "keep_heads": cfg.keep_heads, "importance": "activation"}


@dataclass
class _Build:
    """What the compress steps share. The card is held here and written once, by `_finish`."""

    cfg: CompressConfig
    student_path: str
    out_uri: str
    tmp: str = ""  # scratch: downloads, the pruned checkpoint
    out_dir: str = ""  # the version being built (`<out>.staging`, or under tmp for a URI)
    t0: float = field(default_factory=time.perf_counter)
    kind: Any = None  # `onnx_model.kinds.StudentKind`, decided once from the student folder
    model_dir: str = ""  # what is exported: the student, or its pruned copy
    pruning: dict[str, Any] | None = None
    lineage: dict[str, Any] = field(default_factory=dict)
    calib_texts: list[str] = field(default_factory=list)
    calib_source: str = ""
    texts: list[str] = field(default_factory=list)  # gate rows, as the scorers take them
    clicks: Any = None  # (n,) 0/1 of those rows
    source: str = ""
    card: Any = None  # `ModelCard` of the build
    parity: dict[str, Any] = field(default_factory=dict)
    presets: dict[str, str] = field(default_factory=dict)  # variant -> preset
    fusion: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)
    aucs: dict[str, float] = field(default_factory=dict)
    latency: dict[str, Any] = field(default_factory=dict)
    rejected: dict[str, Any] = field(default_factory=dict)  # variant -> why and its gate figures
    canary: dict[str, Any] = field(default_factory=dict)

    @property
    def rejected_uri(self) -> str:
        return self.out_uri.rstrip("/") + ".rejected"


def run(cfg: CompressConfig) -> dict[str, Any]:
    """Prepare, export, quantize, choose fusion, gate and publish; returns the model card (also in
    `<run_dir>/<out>/model_card.json`). ParityError (the build kept at `<out>.rejected`) when FP32
    does not compute what PyTorch does, so nothing could be served."""
    from distillery.publish import staging

    student = cfg.student if ("://" in cfg.student or os.path.isabs(cfg.student)) else io.join(cfg.run_dir, cfg.student)
    b = _Build(cfg, student, io.join(cfg.run_dir, cfg.out))
    io.remove_dir(b.rejected_uri)
    with tempfile.TemporaryDirectory(prefix="compress-") as b.tmp, staging(b.out_uri) as b.out_dir:
        for step in (_prepare, _export, _quantize, _choose_fusion, _gate, _record_canary, _finish, _publish):
            step(b)
    log.info("compress: %s in %.1fs; AUC %s", b.out_uri, time.perf_counter() - b.t0,
             {k: a if a is None else round(a, 4) for k, a in b.aucs.items()})
    return b.card.to_dict()


def _prepare(b: _Build) -> None:
    """Decide the student kind, read calibration rows, prune (when asked), record lineage."""
    from distillery.data.text import to_text
    from distillery.onnx_model.kinds import kind_of_folder

    cfg, v = b.cfg, b.cfg.validation
    src = _local_dir(b.student_path, b.tmp, "student")
    b.kind = kind_of_folder(src)  # decided once: export, parity, scoring and what may be pruned follow it
    b.kind.check_pruning([f for f, on in (("keep_layers", cfg.keep_layers is not None),
                                          ("keep_decoder_layers", cfg.keep_decoder_layers is not None),
                                          ("keep_heads", cfg.keep_heads is not None),
                                          ("ffn_keep_ratio", cfg.ffn_keep_ratio != 1.0)) if on])
    calib_rows, b.calib_source = _rows(cfg, v.calibration_split, v.calibration_rows)
    b.calib_texts = [to_text(r) for r in calib_rows]
    pruned_dir = os.path.join(b.tmp, "student_pruned")
    b.pruning = _prune(cfg, src, pruned_dir, b.calib_texts)
    b.model_dir = pruned_dir if b.pruning else src
    b.lineage = _lineage(cfg, b.student_path)
    if b.pruning:
        b.lineage["pruned_checkpoint"] = io.join(cfg.run_dir, "student_pruned")


def _export(b: _Build) -> None:
    """FP32 ONNX of the (pruned) student, checked logit by logit against PyTorch on the gate rows."""
    from distillery.compress.validate import ParityError
    from distillery.data.text import to_text
    from distillery.onnx_model.card import ModelCard

    cfg, v = b.cfg, b.cfg.validation
    print(f"[compress] export {b.model_dir} → ONNX (opset {cfg.opset})", flush=True)
    b.card = ModelCard.from_dict(b.kind.export(b.model_dir, b.out_dir, opset=cfg.opset, max_length=cfg.max_length,
                                               name=cfg.name, lineage=b.lineage))
    rows, b.source = _rows(cfg, v.split, v.rows)
    b.texts = [to_text(r) for r in rows]
    b.clicks = np.asarray([r.get("click") for r in rows], dtype=np.float64)
    try:
        b.parity = b.kind.parity(b.model_dir, b.out_dir, b.texts[:v.parity_rows], atol=v.atol,
                                 max_length=cfg.max_length, batch_size=v.batch_size, intra_op_threads=v.num_threads)
    except ParityError as err:  # FP32 is what every variant is judged against: nothing can be served
        b.parity = {"passed": False, "error": str(err), "atol": v.atol}
        _reject(b, err)


def _quantize(b: _Build) -> None:
    """Write each preset's variant beside FP32; the card then holds every variant the build has."""
    from distillery.compress.quantize import PRESET_VARIANT, apply_preset
    from distillery.onnx_model.card import ModelCard

    for preset in b.cfg.presets:
        print(f"[compress] quantize: {preset}", flush=True)
        apply_preset(b.out_dir, preset, calibration_texts=b.calib_texts, per_channel=b.cfg.per_channel,
                     reduce_range=b.cfg.reduce_range)
        b.presets[PRESET_VARIANT[preset]] = preset
    b.card = ModelCard.read(b.out_dir)  # what the quantizer recorded per variant (files, presets)


def _choose_fusion(b: _Build) -> None:
    """Build fused FP32+INT8 graphs; keep them (same file names) only if INT8 batch-1 p50 is ≥5% faster."""
    from distillery.compress.quantize import FUSED_SUFFIX, fuse_transformer, quantize_file
    from distillery.compress.validate import interleaved_latency
    from distillery.onnx_model.scorer import OnnxScorer

    if not b.kind.fusion:  # a two-tower's graph runs once per request / ad, not per candidate: not worth the search
        b.fusion = {"chosen": "plain", "reason": f"not tried for a {b.kind.name} student"}
        return
    if not (b.cfg.try_fusion and "int8" in b.presets):
        b.fusion = {"chosen": "plain", "reason": "not tried"}
        return
    fused = fuse_transformer(b.out_dir, "fp32")
    if fused is None:
        b.fusion = {"chosen": "plain", "reason": "no ORT fusion for this model type"}
        return
    int8 = os.path.join(b.out_dir, b.card.variants["int8"])
    int8_fused = int8[: -len(".onnx")] + FUSED_SUFFIX + ".onnx"
    quantize_file(fused, int8_fused, b.cfg.per_channel, b.card.presets.get("int8", {}).get("reduce_range") or False)
    threads = b.cfg.validation.num_threads or 1
    plain = OnnxScorer(b.out_dir, "int8", intra_op_threads=threads)
    os.replace(int8, int8 + ".plain")  # the card's int8 file holds the fused graph while it is timed
    os.replace(int8_fused, int8)
    fast = OnnxScorer(b.out_dir, "int8", intra_op_threads=threads)
    lat = interleaved_latency({"plain": plain.predict_proba, "fused": fast.predict_proba}, b.texts, calls=150)
    chosen = "fused" if lat["fused"]["p50"] < 0.95 * lat["plain"]["p50"] else "plain"
    if chosen == "fused":
        os.replace(fused, os.path.join(b.out_dir, b.card.variants["fp32"]))
        os.remove(int8 + ".plain")
        b.card.version = f"{b.card.version}-fused"
    else:
        os.replace(int8 + ".plain", int8)
        os.remove(fused)
    b.fusion = {"chosen": chosen, "int8_batch1_ms": lat, "rule": "fused only if p50 >= 5% faster, interleaved"}


def _gate(b: _Build) -> None:
    """Judge every variant against FP32 on the same rows; with `validation.gate: fail` a failing one
    is left out of the version (never servable) and the rest goes on."""
    from distillery.compress.gate import GateThresholds
    from distillery.compress.validate import batch1_latency, gate_failures, quality_gate
    from distillery.metrics import roc_auc

    v = b.cfg.validation
    print(f"[compress] quality gate: {len(b.texts)} rows, {int(b.clicks.sum())} clicks, "
          f"variants {sorted(b.card.variants)}", flush=True)
    probs = b.kind.variant_probs(b.out_dir, list(b.card.variants), b.texts, batch_size=v.batch_size,
                                 intra_op_threads=v.num_threads)
    thresholds = GateThresholds(max_auc_drop=v.max_auc_drop, confidence=v.confidence,
                                min_spearman=v.min_spearman, max_mean_abs_dp=v.max_mean_abs_dp)
    b.gate = quality_gate(b.clicks, probs, thresholds, presets=b.presets)
    both = 0 < int(b.clicks.sum()) < len(b.clicks)
    b.aucs = {"fp32": roc_auc(b.clicks, probs["fp32"]) if both else None,
              **{k: r["auc_variant"] for k, r in b.gate["variants"].items()}}
    _print_gate(b.gate)
    for variant in b.card.variants if v.latency_calls else ():
        # caches off: one row = the whole model (a two-tower: a request- and an ad-tower pass)
        scorer = b.kind.open_scorer(b.out_dir, variant, cold=True, intra_op_threads=v.num_threads or 1)
        b.latency[variant] = batch1_latency(scorer.predict_proba, b.texts, calls=v.latency_calls)
    failures = gate_failures(b.gate)
    if failures and v.gate == "fail":
        b.card.rejected_variants = {k: b.card.variants.pop(k) for k in failures}
        b.rejected = {k: _rejection(b.gate["variants"][k], why) for k, why in failures.items()}
        log.warning("quality gate: left out of the version, the rest is published:\n  %s", "\n  ".join(failures.values()))
    elif failures:
        log.warning("quality gate failed (validation.gate=warn: keeping the variants):\n  %s", "\n  ".join(failures.values()))
    b.card.default_variant = next(x for x in DEFAULT_VARIANT_ORDER if x in b.card.variants)


def _rejection(figures: dict[str, Any], why: str) -> dict[str, Any]:
    """What the card and the report say about a variant the gate left out."""
    keys = ("preset", "reasons", "auc_ref", "auc_variant", "auc_drop", "auc_drop_ci", "spearman", "mean_abs_dp")
    return {"why": why, **{k: figures.get(k) for k in keys}}


def _record_canary(b: _Build) -> None:
    """`CANARY_ROWS` gate inputs and each published variant's probabilities for them, scored as a
    replica scores (`open_scorer(folder, variant).predict(inputs)`), for checks before promotion."""
    inputs = b.texts[:CANARY_ROWS]
    probs = {variant: [float(p) for p in b.kind.open_scorer(b.out_dir, variant, intra_op_threads=1).predict(inputs)]
             for variant in b.card.variants}
    b.canary = {"inputs": inputs, "probs": probs, "atol": CANARY_ATOL,
                "how": "onnx_model.kinds.open_scorer(folder, variant).predict(inputs): click probabilities"}


def _finish(b: _Build) -> None:
    """Every figure into the card, written once."""
    card = b.card
    card.lineage["source_model"] = b.lineage.get("pruned_checkpoint", b.student_path)  # not the temp folder
    for variant, file in {**card.variants, **(card.rejected_variants or {})}.items():  # fusion may have replaced files
        card.size_mb[variant] = round(os.path.getsize(os.path.join(b.out_dir, file)) / 1e6, 3)
    card.metrics = {
        "fp32_parity": b.parity, "auc": b.aucs, "auc_drop": {k: r["auc_drop"] for k, r in b.gate["variants"].items()},
        "validation_rows": len(b.texts), "validation_clicks": int(b.clicks.sum()), "validation_source": b.source,
        "calibration_source": b.calib_source, "batch1_latency_ms": b.latency, "graph_optimization": b.fusion,
        "pruning": b.pruning, "compress_s": round(time.perf_counter() - b.t0, 1), "quality_gate": b.gate,
        "rejected": b.rejected,
    }
    card.canary = b.canary
    card.write(b.out_dir)


def _publish(b: _Build) -> None:
    """The build becomes the current version; the pruned checkpoint goes beside the student."""
    from distillery.publish import move_folder, publish_version

    publish_version(b.out_dir, b.out_uri, b.card.version, b.cfg.keep_versions)
    if b.pruning:
        move_folder(os.path.join(b.tmp, "student_pruned"), io.join(b.cfg.run_dir, "student_pruned"))


def _reject(b: _Build, err: Exception) -> None:
    """Keep a build with nothing to serve at `<out>.rejected` with its figures, then raise `err`'s kind."""
    from distillery.publish import move_folder

    b.card.metrics = {"fp32_parity": b.parity, "validation_rows": len(b.texts), "validation_source": b.source,
                      "pruning": b.pruning, "compress_s": round(time.perf_counter() - b.t0, 1)}
    b.card.write(b.out_dir)
    move_folder(b.out_dir, b.rejected_uri)
    raise type(err)(f"{err}\n  (nothing can be served; the rejected build, with its figures in model_card.json, "
                    f"is in {b.rejected_uri})") from None


def _print_gate(gate: dict[str, Any]) -> None:
    for v, r in gate["variants"].items():
        auc = (f"AUC drop {r['auc_drop']:+.4f} (CI [{r['auc_drop_ci'][0]:+.4f}, {r['auc_drop_ci'][1]:+.4f}]), "
               f"flipped pairs {r['flipped_pairs']:.4f}" if r["auc_drop"] is not None else r["auc_drop_reason"])
        print(f"[compress] gate {v}: {'pass' if r['passed'] else 'FAIL'}: {auc}, Spearman {r['spearman']:.4f}, "
              f"mean |Δp| {r['mean_abs_dp']:.2e}, max |Δp| {r['max_abs_dp']:.2e}", flush=True)
