"""Honest evaluation on the held-out test split: AUC, logloss and calibration for every model.

    python -m jobs.evaluate --config jobs/configs/evaluate.yaml run_dir=runs/demo

Scores each published model folder (teacher, student, student_direct) through its teacher backend
(`hf-classifier`, or `two-tower` for a folder holding two_tower.json), and each ONNX variant through `distillery.onnx_model.scorer.OnnxScorer`, on the
same test rows, and merges into `<run_dir>/report.json`:

    quality.<model>.{auc, logloss, ece, rows, mean_prob}
    quality.oracle_auc                       AUC of the true click probability (synthetic data); else null
                                             and quality.oracle_auc_reason says why
    quality.<model>.auc_ci, quality.{distillation_efficiency,lift_auc}_ci, quality.test_clicks,
    quality.few_clicks_warning               bootstrap intervals (`distillery.evaluate_ci`)
    quality.distillation_efficiency          student_int8.auc / teacher.auc (student.auc without ONNX)
    quality.distillation_efficiency_student  student.auc / teacher.auc
    quality.gain_retention                   (student_int8.auc − 0.5) / (teacher.auc − 0.5): the share of the
                                             teacher's gain over chance kept (gain_retention_ci: paired interval)
    quality.lift_auc                         student.auc − student_direct.auc

The metrics themselves live in `distillery.metrics`.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

import numpy as np
from pydantic import Field

from distillery import io
from distillery.config import RunSection
from distillery.evaluate_ci import BootstrapSection, gain_retention
from distillery.metrics import evaluate_predictions, roc_auc
from distillery.onnx_model.card import CARD_FILE

__all__ = ["EvaluateConfig", "run", "merge_report"]

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ job

class EvaluateConfig(RunSection):
    test_split: str = Field("test", description="split under <run_dir>/data with true clicks")
    max_rows: int | None = Field(None, ge=1, description="score at most this many test rows")
    models: dict[str, str] = Field(
        default_factory=lambda: {"teacher": "{run_dir}/teacher", "student": "{run_dir}/student",
                                 "student_direct": "{run_dir}/student_direct"},
        description="report name -> model folder (Hugging Face or two-tower); missing folders are skipped and listed")
    onnx_dir: str = Field("{run_dir}/onnx", description="ONNX folder from compression (skipped when absent)")
    onnx_variants: dict[str, str] = Field(default_factory=lambda: {"student_fp32": "fp32", "student_int8": "int8"},
                                          description="report name -> model_card variant scored with OnnxScorer")
    batch_size: int = Field(64, ge=1, description="rows per forward pass")
    chunk_rows: int = Field(8192, ge=1, description="test rows read, rendered and scored at a time (the split is never held whole)")
    max_length: int = Field(128, ge=8, description="tokens per row; must cover the training max_length")
    num_threads: int | None = Field(None, ge=1, description="torch / ORT intra-op threads; None = default")
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field("fp32", description="dtype of the PyTorch models scored. fp32 by default: bf16 rounds scores that differ by ~1e-4 (a weak model's) to a few values and so changes their AUC; auto = bf16 where the CPU has it natively (~3x fp32), fp32 elsewhere")
    ece_bins: int = Field(10, ge=2, description="bins of the expected calibration error")
    ece_strategy: Literal["quantile", "uniform"] = Field("quantile", description="equal-count or equal-width bins")
    report: str = Field("{run_dir}/report.json", description="report to merge the quality section into")
    bootstrap: BootstrapSection = Field(default_factory=BootstrapSection, description="confidence intervals of AUCs, efficiency and lift")
    predictions: str | None = Field("{run_dir}/plots/predictions.parquet",
                                    description="test clicks and every model's probabilities (ROC/calibration plots); null: not written")


class _TestRows:
    """The test split read in chunks of `chunk_rows` (files in name order, at most `max_rows`): texts
    are `to_text` of every column (`table_texts`), as labeling and training render them. Only the
    clicks and true click probabilities stay, `(n,)` float64 each; rows without a known click are
    left out and counted (`notes["test_rows_no_click"]`), and `notes` says why the oracle AUC is
    missing (`oracle_auc_reason`) when it is."""

    def __init__(self, cfg: EvaluateConfig, chunk_rows: int):
        self.cfg, self.chunk_rows = cfg, chunk_rows
        self.clicks: list[np.ndarray] = []
        self.oracle: list[np.ndarray] = []
        self.no_click = self.oracle_nulls = 0
        self.oracle_column = True

    def __iter__(self):
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        from distillery.data.schema import CLICK, CLICK_PROB
        from distillery.data.text import table_texts

        path = io.join(self.cfg.run_dir, "data", self.cfg.test_split)
        files = io.list_files(path, suffixes=(".parquet",))
        if not files:
            raise FileNotFoundError(f"{path}: no parquet files")
        left = self.cfg.max_rows
        for f in files:
            fs, p = io.filesystem(f)
            with fs.open_input_file(p) as handle:
                for batch in pq.ParquetFile(handle).iter_batches(batch_size=self.chunk_rows):
                    table = pa.Table.from_batches([batch])
                    if left is not None:
                        table, left = table.slice(0, left), left - min(left, table.num_rows)
                    if CLICK not in table.column_names:
                        raise ValueError(f"test_split: {self.cfg.test_split!r} has no click column; evaluation needs known clicks")
                    self.no_click += table[CLICK].null_count
                    table = table.filter(pc.is_valid(table[CLICK]))
                    self.oracle_column &= CLICK_PROB in table.column_names
                    if self.oracle_column:
                        self.oracle_nulls += table[CLICK_PROB].null_count
                        self.oracle.append(table[CLICK_PROB].to_numpy(zero_copy_only=False).astype(np.float64))
                    if table.num_rows:
                        self.clicks.append(table[CLICK].to_numpy(zero_copy_only=False).astype(np.float64))
                        yield table_texts(table)
                    if left is not None and left <= 0:
                        return

    def finish(self) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
        """(clicks (n,), true click probability (n,) or None, notes) of the rows read."""
        clicks = np.concatenate(self.clicks) if self.clicks else np.zeros(0)
        if not len(clicks):
            raise ValueError(f"test_split: {self.cfg.test_split!r} has no row with a known click")
        notes: dict[str, Any] = {"test_rows_no_click": self.no_click} if self.no_click else {}
        oracle = None
        if not self.oracle_column:
            notes["oracle_auc_reason"] = ("the test split has no click_prob column: only synthetic logs know the true "
                                          "click probability")
        elif self.oracle_nulls:
            notes["oracle_auc_reason"] = f"click_prob is null on {self.oracle_nulls} test rows"
        else:
            oracle = np.concatenate(self.oracle)
        return clicks, oracle, notes


def _folder_scorer(path: str, cfg: EvaluateConfig):
    """`texts -> probabilities (n,)` of a published model folder: a Hugging Face classifier or a
    two-tower head (the teacher backends), or a student whose kind loads itself (`_student_scorer`)."""
    from distillery.onnx_model.kinds import kind_of_folder
    from distillery.teachers import build_teacher, folder_teacher_config

    if kind_of_folder(path).loader is not None:
        return _student_scorer(path, cfg)
    teacher = build_teacher(folder_teacher_config(path, batch_size=cfg.batch_size, max_length=cfg.max_length,
                                                  dtype=cfg.dtype, device="auto", num_threads=cfg.num_threads))
    return teacher.predict_proba


def _student_scorer(path: str, cfg: EvaluateConfig):
    """Probabilities `(n,)` of a student folder in PyTorch, fp32 (a two-tower student's towers are small)."""
    import torch

    from distillery.onnx_model.kinds import kind_of_folder
    from distillery.training.loop import score_texts

    kind = kind_of_folder(path)
    if "://" in path:
        raise ValueError(f"models: {kind.name} student {path!r} must be a local folder")
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    model, tokenizer = kind.load(path)
    return lambda texts: score_texts(model, tokenizer, texts, cfg.max_length, cfg.batch_size)


def _onnx_scorer(model_dir: str, variant: str, cfg: EvaluateConfig):
    from distillery.onnx_model.kinds import open_scorer  # by the card's student kind

    scorer = open_scorer(model_dir, variant=variant, provider="cpu", intra_op_threads=cfg.num_threads)

    def score(texts: list[str]) -> np.ndarray:
        out = [scorer.predict_proba(texts[i: i + cfg.batch_size]) for i in range(0, len(texts), cfg.batch_size)]
        return np.concatenate(out) if out else np.zeros(0)

    return score


def _scorers(cfg: EvaluateConfig, skipped: list[str]) -> dict[str, Any]:
    """Report name -> `texts -> probabilities`, every model loaded once; absent ones go to `skipped`."""
    from distillery.onnx_model.kinds import kind_of_folder
    from distillery.teachers.two_tower import is_two_tower_folder

    scorers: dict[str, Any] = {}
    for name, path in cfg.models.items():
        if not (io.exists(io.join(path, "config.json")) or is_two_tower_folder(path) or kind_of_folder(path).marker):
            skipped.append(name)
            continue
        scorers[name] = _folder_scorer(path, cfg)
    if "://" not in cfg.onnx_dir and io.exists(io.join(cfg.onnx_dir, CARD_FILE)):
        for name, variant in cfg.onnx_variants.items():
            try:
                scorers[name] = _onnx_scorer(cfg.onnx_dir, variant, cfg)
            except ValueError as err:  # variant absent from the card
                log.warning("%s: %s", name, err)
                skipped.append(name)
    else:
        skipped.extend(cfg.onnx_variants)
    return scorers


def merge_report(path: str, section: str, values: dict[str, Any]) -> dict[str, Any]:
    """Merge `values` into `report[section]` (one level deep per model), keeping other keys."""
    report = io.read_json(path) if io.exists(path) else {}
    current = report.setdefault(section, {})
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(current.get(key), dict):
            current[key].update(value)
        else:
            current[key] = value
    io.write_json(path, report)
    return report


def run(cfg: EvaluateConfig) -> dict[str, Any]:
    """Score every available model on the test split; merge `quality` into the report.

    Returns `{"quality": {...}, "report": path}`."""
    from distillery.evaluate_ci import confidence_intervals

    t0 = time.perf_counter()
    skipped: list[str] = []
    scorers = _scorers(cfg, skipped)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in scorers}
    seconds = dict.fromkeys(scorers, 0.0)
    rows = _TestRows(cfg, cfg.chunk_rows)
    for texts in rows:  # one chunk of the split at a time: every model scores it, only probabilities stay
        for name, score in scorers.items():
            t = time.perf_counter()
            parts[name].append(np.asarray(score(texts), dtype=np.float64))
            seconds[name] += time.perf_counter() - t
    clicks, oracle, notes = rows.finish()
    quality: dict[str, Any] = {"test_rows": len(clicks), "click_rate": float(clicks.mean()),
                               "oracle_auc": roc_auc(clicks, oracle) if oracle is not None else None, **notes}
    scored = {name: np.concatenate(p) for name, p in parts.items()}
    for name, probs in scored.items():
        quality[name] = evaluate_predictions(clicks, probs, cfg.ece_bins, cfg.ece_strategy)
        quality[name]["seconds"] = seconds[name]
        log.info("%s: %s", name, quality[name])
    quality.update(_derived(quality))
    for key, value in confidence_intervals(clicks, scored, cfg.bootstrap).items():
        if isinstance(value, dict) and isinstance(quality.get(key), dict):
            quality[key].update(value)  # <model>.auc_ci beside <model>.auc
        else:
            quality[key] = value
    _null_non_finite(quality)
    quality["skipped"] = skipped
    if cfg.predictions:
        _write_predictions(cfg.predictions, clicks, scored)
    merge_report(cfg.report, "quality", quality)
    merge_report(cfg.report, "timings_s", {"evaluate": time.perf_counter() - t0})
    return {"quality": quality, "report": cfg.report}


def _write_predictions(path: str, clicks: np.ndarray, scored: dict[str, np.ndarray]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"click": clicks.astype(np.int8), **{name: p.astype(np.float64) for name, p in scored.items()}})
    io.makedirs(path.rsplit("/", 1)[0])
    fs, p = io.filesystem(path)
    pq.write_table(table, p, filesystem=fs)


def _null_non_finite(quality: dict[str, Any]) -> None:
    """NaN is not JSON: an AUC with one click class in the test rows becomes null with a reason."""
    why = "the test rows hold a single click class, so no pair can be ranked"
    for key, value in list(quality.items()):
        if isinstance(value, dict):
            _null_non_finite(value)
        elif isinstance(value, float) and not np.isfinite(value):
            quality[key], quality[f"{key}_reason"] = None, why


def _derived(q: dict[str, Any]) -> dict[str, Any]:
    def auc(name):
        return q[name]["auc"] if isinstance(q.get(name), dict) else None

    out: dict[str, Any] = {}
    teacher, student, direct, int8 = auc("teacher"), auc("student"), auc("student_direct"), auc("student_int8")
    if teacher:
        if student is not None:
            out["distillation_efficiency_student"] = student / teacher
        final = int8 if int8 is not None else student
        if final is not None:
            out["distillation_efficiency"] = final / teacher
            out["gain_retention"] = gain_retention(final, teacher)
    if student is not None and direct is not None:
        out["lift_auc"] = student - direct
    return out
