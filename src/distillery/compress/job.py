"""The compress stage: prune → export ONNX → quantize → validate → model card.

    python -m jobs.compress --config jobs/configs/compress.yaml run_dir=runs/demo
    distillery compress --config jobs/configs/compress.yaml ffn_keep_ratio=0.5 presets=[int8-dynamic,fp16]

Reads `<run_dir>/<student>/` (a Hugging Face folder), writes a new immutable version
`<run_dir>/onnx.versions/<time>-<version>/` (the serving contract: see `export.py`) and, only when
its gate passes, makes it current by one atomic switch of the `<run_dir>/onnx` link: `onnx` always
names the last model that passed, a failed or killed build never touches it (a rejected build is
kept at `<run_dir>/onnx.rejected/` with its figures), and a replica that loaded a version keeps
reading that version's files. The newest `keep_versions` versions are kept. (On object stores,
which have no links, `onnx/` is replaced by an upload after the gate passed.) When pruning, the
pruned checkpoint goes to `<run_dir>/student_pruned/` so the training job can re-distil it. Validation rows come from `<run_dir>/data/<split>/`; when
the run has no data yet, from the synthetic generator (recorded in the card). Fails, naming the
field or the preset to try instead, when FP32 parity or the AUC quality gate is not met.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import time
from typing import Any, Literal

import numpy as np
from pydantic import Field

from distillery import io
from distillery.config import FolderName, RunSection, Section, config_hash

__all__ = ["CompressConfig", "ValidationSection", "run"]

log = logging.getLogger(__name__)

Preset = Literal["int8-dynamic", "int8-static", "fp16"]


class ValidationSection(Section):
    split: str = Field("test", description="split of <run_dir>/data with true clicks for AUC")
    rows: int = Field(4000, ge=50, description="rows for the paired quality gate of every variant")
    parity_rows: int = Field(256, ge=1, description="rows for the FP32-vs-PyTorch logit check")
    atol: float = Field(1e-3, gt=0, description="max |Δ logit| allowed between FP32 ONNX and PyTorch")
    max_auc_drop: float = Field(0.002, ge=0, description="quality gate: a variant fails when the lower end of the paired-DeLong CI of its AUC drop below FP32 exceeds this")
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="quality gate: two-sided level of that confidence interval")
    min_spearman: float = Field(0.95, ge=-1.0, le=1.0, description="quality gate: least Spearman rank correlation with FP32's scores on the same rows")
    max_mean_abs_dp: float = Field(0.01, gt=0.0, le=1.0, description="quality gate: most mean |p_variant − p_fp32| on the same rows (calibration kept)")
    gate: Literal["fail", "warn"] = Field("fail", description="what a gate failure does: raise, or log and keep going")
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


def _choose_fusion(out_dir: str, cfg: CompressConfig, texts: list[str]) -> dict[str, Any]:
    """Build fused FP32+INT8 graphs; point the card at them only if INT8 batch-1 p50 is ≥5% faster."""
    from distillery.compress.quantize import FUSED_SUFFIX, fuse_transformer, quantize_file
    from distillery.compress.validate import interleaved_latency
    from distillery.onnx_model.card import ModelCard
    from distillery.onnx_model.scorer import OnnxScorer

    fused = fuse_transformer(out_dir, "fp32")
    if fused is None:
        return {"chosen": "plain", "reason": "no ORT fusion for this model type"}
    card = ModelCard.read(out_dir)
    int8_fused = os.path.join(out_dir, card.variants["int8"][: -len(".onnx")] + FUSED_SUFFIX + ".onnx")
    quantize_file(fused, int8_fused, cfg.per_channel, card.presets.get("int8", {}).get("reduce_range") or False)
    card.variants["_int8_fused"] = os.path.basename(int8_fused)
    card.write(out_dir)
    threads = cfg.validation.num_threads or 1
    plain = OnnxScorer(out_dir, "int8", intra_op_threads=threads)
    fast = OnnxScorer(out_dir, "_int8_fused", intra_op_threads=threads)
    lat = interleaved_latency({"plain": plain.predict_proba, "fused": fast.predict_proba}, texts, calls=150)
    card = ModelCard.read(out_dir)
    del card.variants["_int8_fused"]
    chosen = "fused" if lat["fused"]["p50"] < 0.95 * lat["plain"]["p50"] else "plain"
    if chosen == "fused":
        for variant, path in (("fp32", fused), ("int8", int8_fused)):
            os.replace(path, os.path.join(out_dir, card.variants[variant]))
    else:
        for path in (fused, int8_fused):
            os.remove(path)
    card.write(out_dir)
    return {"chosen": chosen, "int8_batch1_ms": lat, "rule": "fused only if p50 >= 5% faster, interleaved"}


def run(cfg: CompressConfig) -> dict[str, Any]:
    """Prune, export, quantize and validate; returns the model card (also in `<run_dir>/<out>/model_card.json`)."""
    from distillery.onnx_model.card import ModelCard
    from distillery.onnx_model.kinds import kind_of_folder
    from distillery.compress.quantize import PRESET_VARIANT, apply_preset
    from distillery.compress.gate import GateThresholds
    from distillery.compress.validate import QualityGateError, batch1_latency, quality_gate, raise_if_failed
    from distillery.metrics import roc_auc
    from distillery.data.text import to_text

    t0 = time.perf_counter()
    v = cfg.validation
    student_path = cfg.student if ("://" in cfg.student or os.path.isabs(cfg.student)) else io.join(cfg.run_dir, cfg.student)
    out_uri = io.join(cfg.run_dir, cfg.out)
    rejected_uri = out_uri.rstrip("/") + ".rejected"
    io.remove_dir(rejected_uri)
    with tempfile.TemporaryDirectory(prefix="compress-") as tmp, contextlib.ExitStack() as cleanup:
        src = _local_dir(student_path, tmp, "student")
        kind = kind_of_folder(src)  # decided once: export, parity, scoring and what may be pruned follow it
        kind.check_pruning([f for f, on in (("keep_layers", cfg.keep_layers is not None),
                                            ("keep_decoder_layers", cfg.keep_decoder_layers is not None),
                                            ("keep_heads", cfg.keep_heads is not None),
                                            ("ffn_keep_ratio", cfg.ffn_keep_ratio != 1.0)) if on])
        calib_rows, calib_source = _rows(cfg, v.calibration_split, v.calibration_rows)
        calib_texts = [to_text(r) for r in calib_rows]
        pruned_dir = os.path.join(tmp, "student_pruned")
        pruning = _prune(cfg, src, pruned_dir, calib_texts)
        model_dir = pruned_dir if pruning else src
        # Built in a staging folder and published by one rename: `onnx/` is either absent or complete.
        out_dir = os.path.join(tmp, "onnx") if "://" in out_uri else f"{out_uri.rstrip('/')}.staging"
        io.remove_dir(out_dir)
        cleanup.callback(io.remove_dir, out_dir)  # whatever fails, no staging folder is left behind
        lineage = _lineage(cfg, student_path)
        if pruning:
            lineage["pruned_checkpoint"] = io.join(cfg.run_dir, "student_pruned")
        print(f"[compress] export {model_dir} → ONNX (opset {cfg.opset})", flush=True)
        kind.export(model_dir, out_dir, opset=cfg.opset, max_length=cfg.max_length, name=cfg.name, lineage=lineage)
        card = ModelCard.read(out_dir)
        card.lineage["source_model"] = lineage.get("pruned_checkpoint", student_path)  # not the temp folder
        card.write(out_dir)
        rows, source = _rows(cfg, v.split, v.rows)
        texts = [to_text(r) for r in rows]
        clicks = np.asarray([r.get("click") for r in rows], dtype=np.float64)
        parity = kind.parity(model_dir, out_dir, texts[:v.parity_rows], atol=v.atol, max_length=cfg.max_length,
                           batch_size=v.batch_size, intra_op_threads=v.num_threads)
        presets = {}
        for preset in cfg.presets:
            print(f"[compress] quantize: {preset}", flush=True)
            apply_preset(out_dir, preset, calibration_texts=calib_texts, per_channel=cfg.per_channel,
                         reduce_range=cfg.reduce_range)
            presets[PRESET_VARIANT[preset]] = preset
        if not kind.fusion:  # a two-tower's graph runs once per request / ad, not per candidate: not worth the search
            fusion = {"chosen": "plain", "reason": f"not tried for a {kind.name} student"}
        else:
            fusion = _choose_fusion(out_dir, cfg, texts) if cfg.try_fusion and "int8" in presets else {"chosen": "plain", "reason": "not tried"}
        card = ModelCard.read(out_dir)
        for variant, file in card.variants.items():  # fusion may have replaced files
            card.size_mb[variant] = round(os.path.getsize(os.path.join(out_dir, file)) / 1e6, 3)
        card.version = card.version if fusion["chosen"] == "plain" else f"{card.version}-fused"
        print(f"[compress] quality gate: {len(texts)} rows, {int(clicks.sum())} clicks, variants {sorted(card.variants)}", flush=True)
        probs = kind.variant_probs(out_dir, list(card.variants), texts, batch_size=v.batch_size,
                         intra_op_threads=v.num_threads)
        thresholds = GateThresholds(max_auc_drop=v.max_auc_drop, confidence=v.confidence,
                                    min_spearman=v.min_spearman, max_mean_abs_dp=v.max_mean_abs_dp)
        gate = quality_gate(clicks, probs, thresholds, presets=presets)
        aucs = {"fp32": roc_auc(clicks, probs["fp32"]), **{k: r["auc_variant"] for k, r in gate["variants"].items()}}
        latency = {}
        if v.latency_calls:
            for variant in card.variants:
                # caches off: one row = the whole model (a two-tower: a request- and an ad-tower pass)
                scorer = kind.open_scorer(out_dir, variant, cold=True, intra_op_threads=v.num_threads or 1)
                latency[variant] = batch1_latency(scorer.predict_proba, texts, calls=v.latency_calls)
        card.metrics = {
            "fp32_parity": parity, "auc": aucs, "auc_drop": {k: r["auc_drop"] for k, r in gate["variants"].items()},
            "validation_rows": len(texts), "validation_clicks": int(clicks.sum()), "validation_source": source,
            "calibration_source": calib_source, "batch1_latency_ms": latency, "graph_optimization": fusion,
            "pruning": pruning, "compress_s": round(time.perf_counter() - t0, 1), "quality_gate": gate,
        }
        _print_gate(gate)
        if not gate["passed"] and v.gate == "fail":  # a variant that failed the gate must not be servable
            card.rejected_variants = {k: card.variants.pop(k) for k in gate["failed"]}
        card.write(out_dir)
        try:
            raise_if_failed(gate)
        except QualityGateError as err:
            if v.gate == "fail":
                # The build is kept for inspection under <out>.rejected, never under the served name.
                _move(out_dir, rejected_uri)
                raise QualityGateError(f"{err}\n  (the rejected build, with every figure in model_card.json, is in {rejected_uri})") from None
            log.warning("%s (validation.gate=warn: keeping the variants)", err)
        _publish(out_dir, out_uri, f"{card.version}", cfg.keep_versions)
        if pruning:
            _upload(pruned_dir, io.join(cfg.run_dir, "student_pruned"))
    log.info("compress: %s in %.1fs; AUC %s", out_uri, time.perf_counter() - t0, {k: round(a, 4) for k, a in aucs.items()})
    return card.to_dict()


def _print_gate(gate: dict[str, Any]) -> None:
    for v, r in gate["variants"].items():
        lo, hi = r["auc_drop_ci"]
        print(f"[compress] gate {v}: {'pass' if r['passed'] else 'FAIL'}: AUC drop {r['auc_drop']:+.4f} "
              f"(CI [{lo:+.4f}, {hi:+.4f}]), Spearman {r['spearman']:.4f}, flipped pairs {r['flipped_pairs']:.4f}, "
              f"mean |Δp| {r['mean_abs_dp']:.2e}, max |Δp| {r['max_abs_dp']:.2e}", flush=True)


def _move(local: str, dest: str) -> None:
    """Move a finished local folder to `dest` (a rename on the same local filesystem, else an upload)."""
    if "://" in dest:
        _upload(local, dest)
        return
    io.remove_dir(dest)
    os.replace(local, dest)


def _publish(local: str, dest: str, version: str, keep: int) -> str:
    """Make the build at `local` the current model `dest`; returns the folder it now names.

    Local: moved to `<dest>.versions/<time>-<version>/` (immutable from here on), then `dest`, a
    relative symlink, is switched to it by one rename, so a reader of `dest` sees the old model or
    the new one, never a mix or nothing; a real folder left by an earlier release becomes a version
    first. Versions beyond the newest `keep` are removed (the current one never). URIs: an upload
    over `dest` (object stores have no links)."""
    if "://" in dest:
        _upload(local, dest)
        return dest
    versions = f"{dest.rstrip('/')}.versions"
    os.makedirs(versions, exist_ok=True)
    if os.path.isdir(dest) and not os.path.islink(dest):  # published before versions existed
        os.replace(dest, os.path.join(versions, time.strftime("%Y%m%dT%H%M%S", time.localtime(os.path.getmtime(dest))) + "-earlier"))
    final = os.path.join(versions, f"{time.strftime('%Y%m%dT%H%M%S')}-{version}")
    if os.path.exists(final):
        final = f"{final}-{os.getpid()}"
    os.replace(local, final)
    link = f"{dest.rstrip('/')}.link-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.remove(link)
    os.symlink(os.path.relpath(final, os.path.dirname(os.path.abspath(dest))), link)
    os.replace(link, dest)  # the atomic switch
    current = os.path.realpath(dest)
    for old in sorted(os.listdir(versions))[:-keep]:
        path = os.path.join(versions, old)
        if os.path.realpath(path) != current:
            shutil.rmtree(path, ignore_errors=True)
    log.info("compress: %s now names %s", dest, final)
    return final


def _upload(local: str, dest: str) -> None:
    import pyarrow.fs as pafs

    fs, p = io.filesystem(dest)
    if isinstance(fs, pafs.LocalFileSystem) and os.path.abspath(local) == p:
        return
    if isinstance(fs, pafs.LocalFileSystem) and os.path.isdir(p):
        shutil.rmtree(p)
    io.makedirs(dest)
    pafs.copy_files(local, p, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
