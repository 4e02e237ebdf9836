"""The pipeline's stage runners: each calls one stage's library entry with its typed config.

Kept apart from `pipeline.py` (ordering, skipping, failure reporting) so each runner stays a few
lines. Every runner returns a small dict of what it produced, stored in the stage's marker.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from distillery import io
from distillery.loadtest import BID_COUNTS
from distillery.metrics import percentiles
from distillery.pipeline_config import PipelineConfig

log = logging.getLogger(__name__)

__all__ = ["DESIGN_KEYS", "missing_design_keys", "run_data", "run_teacher", "run_label", "run_student", "run_student_direct", "check_bid", "run_compress",
           "run_evaluate", "run_serve", "run_report", "summary_table", "measure_latency"]


def _merge_report(run_dir: str, section: str, values: dict[str, Any]) -> dict[str, Any]:
    from distillery.evaluate import merge_report

    return merge_report(io.join(run_dir, "report.json"), section, values)


def run_data(cfg: PipelineConfig) -> dict[str, Any]:
    """Generate the synthetic splits, or split the user's own log (`data.source: logs`) in time order."""
    data_dir = io.join(cfg.run_dir, "data")
    if getattr(cfg.data, "source", "synthetic") == "logs":
        from distillery.data.split import split_logs

        summary = split_logs(cfg.data, data_dir)
        return {k: summary[k] for k in ("rows_read", "rejected", "time_column", "order", *("train", "unlabeled", "test"))}
    from distillery.data.synthetic import write_splits

    return write_splits(cfg.data, data_dir)


def run_teacher(cfg: PipelineConfig) -> dict[str, Any]:
    from distillery.training.job import run_teacher as train_teacher

    return {"best": train_teacher(cfg.stage_config("teacher"))["best"]}


def run_label(cfg: PipelineConfig) -> dict[str, Any]:
    from distillery.labeling import run as label

    label_cfg = cfg.stage_config("label")
    if cfg.force:  # the pipeline's --force relabels too, not only re-runs the stage
        label_cfg = label_cfg.model_copy(update={"force": True})
    manifest = label(label_cfg)
    _merge_report(cfg.run_dir, "labeling", {
        "rows_in": manifest["rows_in"], "rows_labeled": manifest["rows_labeled"],
        "rows_kept": manifest["rows_kept"], "rows_rejected": manifest["rows_rejected"],
        "rows_per_s": manifest["timings"]["rows_per_s"],
        "kept_fraction": round(manifest["rows_kept"] / max(manifest["rows_labeled"], 1), 4),
        "teacher_ids": manifest["teacher_ids"],
    })
    return {k: manifest[k] for k in ("rows_in", "rows_labeled", "rows_kept", "rows_rejected")}


def run_student(cfg: PipelineConfig) -> dict[str, Any]:
    from distillery.training.job import run as train

    return {"best": train(cfg.stage_config("student"))["best"]}


def check_bid(cfg: PipelineConfig) -> dict[str, Any] | None:
    """Measure the configured student's shape at the bid's candidates on this machine (`distillery
    size`'s `measure_student_kind`, MiniLM's layers or random weights: speed does not depend on them);
    raise `ConfigError` naming the budget it would need when it does not fit. The pipeline calls it
    before its first stage whenever the student stage is selected. None without `bid`."""
    if cfg.bid is None:
        return None
    from transformers import AutoConfig

    from distillery.compress.size import fits_bid, measure_student_kind, needed_budget_message
    from distillery.config import ConfigError
    from distillery.models import resolve_model_path

    init = cfg.stage_config("student").init
    kind = "two_tower" if init.kind == "two_tower" else "cross"
    layers = len(init.layers) if init.kind in ("two_tower", "layer_subset") else None
    source = AutoConfig.from_pretrained(resolve_model_path(init.source))
    if init.kind == "fresh":
        layers = int(init.overrides.get("num_hidden_layers", source.num_hidden_layers))
    elif layers is None:
        layers = int(source.num_hidden_layers)
    hidden = int(init.overrides.get("hidden_size", source.hidden_size))
    b = cfg.bid
    print(f"[student] bid: measuring a {kind} {layers}x{hidden} student at {b.candidates} candidates per bid "
          f"(budget {b.budget_ms} ms {b.stat})", flush=True)
    work_dir = os.path.join(os.path.abspath(io.join(cfg.run_dir, "size")), "students") if "://" not in cfg.run_dir else None
    row = measure_student_kind(kind, layers, hidden, b.candidates, calls=b.calls, seconds=10.0, work_dir=work_dir)
    tries = [{k: row[k] for k in ("p50", "p99", "bids")}]
    if fits_bid([row], b) is None:  # one stall of a shared machine decides a p99 of 200 bids: look again once
        print(f"[student] bid: p99 {row['p99']:.2f} ms does not fit; measuring again", flush=True)
        row = measure_student_kind(kind, layers, hidden, b.candidates, calls=b.calls, seconds=10.0, work_dir=work_dir)
        tries.append({k: row[k] for k in ("p50", "p99", "bids")})
    fits = fits_bid([row], b) is not None
    result = {"budget_ms": b.budget_ms, "candidates": b.candidates, "stat": b.stat, "fits": fits, "tries": tries,
              "student": {k: row.get(k) for k in ("kind", "layers", "hidden", "params", "p50", "p99", "bids")}}
    _merge_report(cfg.run_dir, "bid", result)
    print(f"[student] bid: p50 {row['p50']:.2f} ms, p99 {row['p99']:.2f} ms per bid of {b.candidates} "
          f"over {row['bids']} bids: {'fits' if fits else 'does NOT fit'} {b.budget_ms} ms {b.stat}", flush=True)
    if not fits:
        raise ConfigError(f"bid: {needed_budget_message([row], b)}; `distillery size --budget-ms {b.budget_ms} "
                          f"--candidates {b.candidates}` lists the students that fit (student.init)")
    return result


def run_student_direct(cfg: PipelineConfig) -> dict[str, Any]:
    from distillery.training.job import run as train

    return {"best": train(cfg.stage_config("student_direct"))["best"]}


def run_compress(cfg: PipelineConfig) -> dict[str, Any]:
    """Compress; a variant the gate rejects is left out and said so in the report (`compress.rejected`).
    Fails only when nothing can be served (the rejected build's figures still go in the report)."""
    from distillery.compress.job import run as compress
    from distillery.compress.validate import ParityError, QualityGateError

    ccfg = cfg.stage_config("compress")
    try:
        card = compress(ccfg)
    except (ParityError, QualityGateError):
        rejected = io.join(cfg.run_dir, ccfg.out.rstrip("/") + ".rejected", "model_card.json")
        if io.exists(rejected):  # the figures that refused the build go in the report too
            _merge_report(cfg.run_dir, "compress", _compress_summary(io.read_json(rejected)))
        raise
    summary = _compress_summary(card)
    _merge_report(cfg.run_dir, "compress", summary)
    return {"quality_gate_passed": (summary["quality_gate"] or {}).get("passed"), "variants": sorted(card["variants"]),
            "rejected_variants": summary["rejected_variants"], "default_variant": summary["default_variant"]}


def _compress_summary(card: dict[str, Any]) -> dict[str, Any]:
    m = card.get("metrics") or {}
    return {"variants": sorted(card.get("variants", {})), "rejected_variants": sorted(card.get("rejected_variants") or {}),
            "default_variant": card.get("default_variant"), "rejected": m.get("rejected") or {},
            "quality_gate": m.get("quality_gate"), "fp32_parity": m.get("fp32_parity"),
            "graph_optimization": (m.get("graph_optimization") or {}).get("chosen"), "seconds": m.get("compress_s")}


def _dir_mb(path: str, suffixes: tuple[str, ...]) -> float | None:
    if not os.path.isdir(path):
        return None
    total = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(suffixes))
    return round(total / 1e6, 2) if total else None


def measure_latency(predict, texts: list[str], repeats: int = 200, warmup: int = 20) -> dict[str, float]:
    """p50/p99 in ms of `predict([text])`, one row per call (the bidder's worst case), in process."""
    for text in texts[:warmup]:
        predict([text])
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        predict([texts[i % len(texts)]])
        times.append((time.perf_counter() - t0) * 1000)
    return percentiles(times)


def _latency_and_size(cfg: PipelineConfig, texts: list[str]) -> tuple[dict, dict]:
    from distillery.onnx_model.card import ModelCard
    from distillery.onnx_model.scorer import OnnxScorer
    from distillery.teachers import build_teacher, folder_teacher_config
    from distillery.teachers.two_tower import is_two_tower_folder, weights_dir

    run_dir = cfg.run_dir
    teacher_dir = io.join(run_dir, "teacher")
    onnx_dir = io.join(run_dir, "onnx")
    latency: dict[str, Any] = {}
    runtime = {"batch_size": 1}
    if is_two_tower_folder(teacher_dir):
        runtime["cache_size"] = 0  # both towers encoded per call: the model's cost, not a cache's
    teacher = build_teacher(folder_teacher_config(teacher_dir, **runtime))
    latency["teacher"] = measure_latency(teacher.predict_proba, texts)
    del teacher
    variants = ModelCard.read(onnx_dir).variants
    for key, variant in (("student_fp32", "fp32"), ("student_int8", "int8")):
        if variant in variants:
            scorer = OnnxScorer(onnx_dir, variant=variant, provider="cpu")
            latency[key] = measure_latency(scorer.predict_proba, texts)
    size = {"teacher": _dir_mb(weights_dir(teacher_dir), (".safetensors", ".bin"))}
    for key, variant in (("student_fp32", "fp32"), ("student_int8", "int8")):
        name = variants.get(variant)
        path = os.path.join(onnx_dir, name) if name else None
        size[key] = round(os.path.getsize(path) / 1e6, 2) if path and os.path.exists(path) else None
    return latency, size


def run_evaluate(cfg: PipelineConfig) -> dict[str, Any]:
    from distillery.evaluate import run as evaluate

    result = evaluate(cfg.stage_config("evaluate"))
    texts = _test_texts(cfg.run_dir, 200)
    latency, size = _latency_and_size(cfg, texts)
    _merge_report(cfg.run_dir, "latency_ms", latency)
    _merge_report(cfg.run_dir, "size_mb", size)
    return {"quality": result.get("quality") if isinstance(result, dict) else None}


def _test_rows(run_dir: str, n: int) -> list[dict[str, Any]]:
    fs, base = io.filesystem(io.join(run_dir, "data", "test"))
    return pq.read_table(base, filesystem=fs).slice(0, n).to_pylist()


def _test_texts(run_dir: str, n: int) -> list[str]:
    from distillery.data.text import to_text

    return [to_text(r) for r in _test_rows(run_dir, n)]


def _running_replicas(app_name: str) -> int | None:
    """RUNNING replicas of an app, or None when serve.status() cannot say."""
    from ray import serve

    try:
        status = serve.status().applications[app_name].deployments
        return sum(d.replica_states.get("RUNNING", 0) for d in status.values())
    except Exception:  # noqa: BLE001 — status polling must never break the load test
        return None


def _replica_counter(app_name: str, samples: list, stop, t0: float) -> None:
    """Sample the replica count at once, then every 0.5 s until stopped (a short load test still gets one)."""
    while True:
        running = _running_replicas(app_name)
        if running is not None:
            samples.append([round(time.perf_counter() - t0, 2), running])
        if stop.wait(0.5):
            return


def run_serve(cfg: PipelineConfig) -> dict[str, Any]:
    """Serve the INT8 student (`serving.app.start_serving`) and measure it over HTTP on 127.0.0.1:
    /predict at saturation (`serve.concurrency` clients: p50_ms / p99_ms include queueing), then
    OpenRTB bids at light load by number of eligible candidates (fresh requests: `bid_ms`), then
    bids/s per core at saturation (`bid_saturation`); stop it. Seconds per step in `stage_seconds`."""
    import threading

    import yaml

    from distillery.loadtest import bid_catalog, bid_latency, bid_saturation, fresh_contexts, predict_bodies, run_load
    from distillery.serving.app import start_serving

    s = cfg.serve
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    rows = _test_rows(cfg.run_dir, 5000)
    onnx_dir = os.path.abspath(io.join(cfg.run_dir, "onnx"))
    catalog = os.path.abspath(io.join(cfg.run_dir, "serve", "bid_catalog.yaml"))  # read by the replica: local
    io.write_bytes(catalog, yaml.safe_dump(bid_catalog(rows, s.bid_counts), sort_keys=False).encode())
    bidder = {**(s.app.get("bidder") or {}), "catalog": catalog}
    bidder["max_candidates"] = max(bidder.get("max_candidates") or 0, s.bid_counts[-1])
    overrides = {**s.app, "bidder": bidder}  # the variant: AppArgs.variant (the card's default_variant without int8)
    serving = start_serving(onnx_dir, port=s.port, overrides=overrides,
                            model_root=os.path.dirname(onnx_dir), app_name="distillery-demo")
    seconds["start"] = round(time.perf_counter() - t, 2)
    samples: list = []
    stop = threading.Event()
    t0 = time.perf_counter()
    poller = threading.Thread(target=_replica_counter, args=(serving.app_name, samples, stop, t0), daemon=True)
    poller.start()
    token = os.environ.get(serving.args.auth_token_env or "", "")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    bid_ms, saturation = {}, None
    try:
        pred = run_load(serving.url, predict_bodies(rows, s.candidates), s.requests, s.concurrency, s.max_seconds, headers)
        seconds["predict"] = round(time.perf_counter() - t0, 2)
        contexts = fresh_contexts(rows)  # one stream: no page/keywords text twice in this stage
        if s.openrtb_requests:
            t = time.perf_counter()
            bid_ms = bid_latency(serving.url, contexts, s.bid_counts, requests=s.openrtb_requests, tmax_ms=s.bid_tmax_ms,
                                 max_seconds=s.bid_max_seconds, headers=headers)
            seconds["bids"] = round(time.perf_counter() - t, 2)
        if s.openrtb_requests and s.saturation_concurrency:
            t = time.perf_counter()
            saturation = bid_saturation(serving.url, contexts, s.saturation_candidates, s.saturation_concurrency,
                                        seconds=s.saturation_seconds, tmax_ms=s.bid_tmax_ms, counts=s.bid_counts,
                                        headers=headers)
            seconds["saturation"] = round(time.perf_counter() - t, 2)
    finally:
        stop.set()
        poller.join(timeout=5)
        final = _running_replicas(serving.app_name)
        if final is not None:
            samples.append([round(time.perf_counter() - t0, 2), final])
        t = time.perf_counter()
        serving.shutdown()
        seconds["shutdown"] = round(time.perf_counter() - t, 2)
    lat = percentiles(pred.latencies_ms)
    bid_errors = sum(b["errors"] for b in bid_ms.values()) + sum(lv["errors"] for lv in (saturation or {}).get("levels", []))
    summary = {
        "p50_ms": lat["p50"], "p99_ms": lat["p99"],
        "rps": round(pred.requests / pred.seconds, 2) if pred.seconds else None,
        "rows_per_s": round(pred.rows / pred.seconds, 2) if pred.seconds else None,
        "errors": pred.errors + bid_errors,
        "max_replicas": max((n for _, n in samples), default=None),
        "requests": pred.requests, "candidates_per_request": s.candidates, "concurrency": s.concurrency,
        "ingress": serving.ingress,
        "statuses": {str(k): v for k, v in pred.statuses.items()},
        "bid_ms": bid_ms, "bid_tmax_ms": s.bid_tmax_ms, "bid_catalog": catalog,
        "bid_saturation": saturation,
        "replicas_over_time": samples,
        "latency_hist_ms": [round(x, 3) for x in pred.latencies_ms],
        "stage_seconds": seconds,
    }
    if not s.openrtb_requests:
        summary["bid_ms_reason"] = "serve.openrtb_requests is 0: no bids timed"
    if saturation is None:
        summary["bid_saturation_reason"] = "serve.saturation_concurrency is empty or openrtb_requests 0: no sweep"
    if summary["max_replicas"] is None:
        summary["max_replicas_reason"] = "serve.status() returned no replica counts during the load test"
    io.write_json(io.join(cfg.run_dir, "serve", "loadtest.json"), summary)
    _merge_report(cfg.run_dir, "serve", summary)
    return {k: summary[k] for k in ("p50_ms", "p99_ms", "rps", "errors", "max_replicas")}


def run_report(cfg: PipelineConfig) -> dict[str, Any]:
    from distillery.report import write_report

    timings = io.read_json(io.join(cfg.run_dir, "_stages", "timings.json"))
    _merge_report(cfg.run_dir, "data", _split_clicks(cfg.run_dir))  # what the headline says the student saw
    _merge_report(cfg.run_dir, "training", _budgets(cfg.run_dir))  # the lift compares budgets: show them
    report = _merge_report(cfg.run_dir, "timings_s", timings)
    _fill_nulls(cfg.run_dir, report)
    path = write_report(cfg.run_dir)
    return {"html": path}


def _budgets(run_dir: str) -> dict[str, dict[str, Any]]:
    """`{<model>: {optimizer_steps, batch_rows, epochs}}` of the trained students (their training summaries)."""
    out = {}
    for model in ("student", "student_direct"):
        path = io.join(run_dir, model, "training_summary.json")
        if io.exists(path):
            summary = io.read_json(path)
            out[model] = {"optimizer_steps": summary.get("optimizer_steps"), "batch_rows": summary.get("batch_rows"),
                          "epochs": len(summary.get("history") or [])}
    return out


def _split_clicks(run_dir: str) -> dict[str, int]:
    """`{<split>_rows, <split>_clicks}` of the train and test splits that have a click column."""
    out = {}
    for split in ("train", "test"):
        fs, base = io.filesystem(io.join(run_dir, "data", split))
        try:
            clicks = pq.read_table(base, columns=["click"], filesystem=fs)["click"].to_numpy(zero_copy_only=False)
        except (OSError, KeyError, ValueError):  # no such split, or no click column
            continue
        out[f"{split}_rows"], out[f"{split}_clicks"] = int(len(clicks)), int(np.nansum(clicks.astype(float)))
    return out


# report.json keys that other tools read (the project design's report contract); `timings_s.<stage>` for every stage that ran.
DESIGN_KEYS = (
    *(f"quality.{m}.{k}" for m in ("teacher", "student", "student_direct", "student_int8") for k in ("auc", "logloss", "ece")),
    "quality.oracle_auc", "quality.distillation_efficiency",
    *(f"labeling.{k}" for k in ("rows_in", "rows_labeled", "rows_kept", "rows_per_s")),
    *(f"latency_ms.{m}.{k}" for m in ("teacher", "student_fp32", "student_int8") for k in ("p50", "p99")),
    *(f"size_mb.{m}" for m in ("teacher", "student_fp32", "student_int8")),
    *(f"serve.{k}" for k in ("p50_ms", "p99_ms", "rps", "errors", "max_replicas")),
    *(f"serve.bid_ms.{n}.{k}" for n in BID_COUNTS for k in ("p50", "p99")),
)


def missing_design_keys(report: dict[str, Any], stages: tuple[str, ...] = (), allow_null: bool = False) -> list[str]:
    """DESIGN_KEYS absent from `report` (or null, unless `allow_null`), plus `timings_s.<stage>`
    for each of `stages`. Empty when the report is complete."""
    missing = []
    for key in (*DESIGN_KEYS, *(f"timings_s.{s}" for s in stages)):
        node: Any = report
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None and not (allow_null and _has_path(report, key)):
            missing.append(key)
    return missing


def _has_path(report: dict[str, Any], key: str) -> bool:
    *parents, last = key.split(".")
    node: Any = report
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    return isinstance(node, dict) and last in node


_REQUIRED = {
    "quality": {m: ("auc", "logloss", "ece") for m in ("teacher", "student", "student_direct", "student_int8")},
    "latency_ms": {m: ("p50", "p99") for m in ("teacher", "student_fp32", "student_int8")},
}


def _fill_nulls(run_dir: str, report: dict[str, Any]) -> None:
    """Every key of DESIGN_KEYS exists; a figure no stage measured is null with a reason beside it."""
    from distillery.evaluate import merge_report

    path = io.join(run_dir, "report.json")
    int8_out = _left_out(report, "int8")
    for section, models in _REQUIRED.items():
        part = report.get(section) or {}
        for model, keys in models.items():
            entry = part.get(model) or {}
            for key in keys:
                if key not in entry:
                    entry[key] = None
                    entry[f"{key}_reason"] = ((model == "student_int8" and int8_out)
                                              or f"stage producing {section}.{model} did not run or failed")
            part[model] = entry
        merge_report(path, section, part)
    flat = {"quality": ("oracle_auc", "distillation_efficiency"),
            "labeling": ("rows_in", "rows_labeled", "rows_kept", "rows_per_s"),
            "size_mb": ("teacher", "student_fp32", "student_int8"),
            "serve": ("p50_ms", "p99_ms", "rps", "errors", "max_replicas")}
    for section, keys in flat.items():
        part = io.read_json(path).get(section) or {}
        for key in keys:
            if key not in part:
                part[key] = None
                part[f"{key}_reason"] = ((key == "student_int8" and int8_out)
                                         or f"the stage producing {section}.{key} did not run")
        if section == "quality" and part.get("oracle_auc") is None and not part.get("oracle_auc_reason"):
            part["oracle_auc_reason"] = "the test split carries no true click probability (click_prob): real logs never do"
        merge_report(path, section, part)
    serve = io.read_json(path).get("serve") or {}
    bids = serve.get("bid_ms") if isinstance(serve.get("bid_ms"), dict) else {}
    for n in BID_COUNTS:
        entry = bids.get(str(n)) if isinstance(bids.get(str(n)), dict) else {}
        for key in ("p50", "p99"):
            if key not in entry:
                entry[key] = None
                entry[f"{key}_reason"] = serve.get("bid_ms_reason") or f"no bids with {n} candidates were timed (serve stage)"
        bids[str(n)] = entry
    merge_report(path, "serve", {"bid_ms": bids})


def _left_out(report: dict[str, Any], variant: str) -> str | None:
    """Why the quality gate left `variant` out of the published model, or None."""
    why = ((report.get("compress") or {}).get("rejected") or {}).get(variant)
    return f"the quality gate left the {variant} variant out of the published model: {why['why']}" if why else None


def summary_table(report: dict[str, Any]) -> str:
    """A short plain-text table of the headline figures."""
    q = report.get("quality") or {}
    lines = ["", f"{'model':<16}{'AUC':>8}{'logloss':>9}{'ECE':>8}{'p50 ms':>9}{'p99 ms':>9}{'MB':>8}"]
    lat, size = report.get("latency_ms") or {}, report.get("size_mb") or {}
    fmt = lambda v, spec: format(v, spec) if isinstance(v, (int, float)) else "—"  # noqa: E731
    for model, lkey in (("teacher", "teacher"), ("student", None), ("student_direct", None),
                        ("student_int8", "student_int8")):
        m = q.get(model) or {}
        lt = lat.get(lkey) or {} if lkey else {}
        lines.append(f"{model:<16}{fmt(m.get('auc'), '.4f'):>8}{fmt(m.get('logloss'), '.4f'):>9}"
                     f"{fmt(m.get('ece'), '.4f'):>8}{fmt(lt.get('p50'), '.2f'):>9}{fmt(lt.get('p99'), '.2f'):>9}"
                     f"{fmt(size.get(lkey) if lkey else None, '.1f'):>8}")
    sv = report.get("serve") or {}
    lines += [f"oracle AUC {fmt(q.get('oracle_auc'), '.4f')}   distillation efficiency "
              f"{fmt(q.get('distillation_efficiency'), '.4f')}   lift over click-only student "
              f"{fmt(q.get('lift_auc'), '+.4f')}",
              f"serve /predict at saturation ({sv.get('concurrency', '—')} clients): p50 {fmt(sv.get('p50_ms'), '.2f')} ms, "
              f"p99 {fmt(sv.get('p99_ms'), '.2f')} ms, {fmt(sv.get('rps'), '.1f')} req/s, errors {sv.get('errors', '—')}, "
              f"max replicas {sv.get('max_replicas', '—')}"]
    bids = sv.get("bid_ms") or {}
    if bids:
        lines.append("bids, light load, p50/p99 ms by candidates: " + ", ".join(
            f"{n}: {fmt((b or {}).get('p50'), '.2f')}/{fmt((b or {}).get('p99'), '.2f')}"
            + (f" (n={b['requests']})" if isinstance(b, dict) and b.get("requests") is not None else "")
            for n, b in sorted(((n, b) for n, b in bids.items() if str(n).isdigit()), key=lambda kv: int(kv[0]))))
    sat = sv.get("bid_saturation") or {}
    if sat:
        lines.append(f"bid saturation at {sat.get('candidates', '—')} candidates: {fmt(sat.get('bids_per_s_per_core'), '.1f')} "
                     f"bids/s per core ({fmt(sat.get('bids_per_s'), '.1f')} bids/s on {sat.get('cores', '—')} cores, "
                     f"{sat.get('concurrency', '—')} clients, p99 {fmt(sat.get('p99_ms'), '.2f')} ms)")
    return "\n".join(lines)
