"""The student kinds, decided once: what differs between a cross-encoder and a two-tower student.

    kind = kind_of_folder("runs/demo/student")        # a trained folder (PyTorch), by its files
    kind = kind_of_card(ModelCard.read(onnx_dir))     # an exported folder, by its card
    kind = kind_of_model(model)                       # a model in memory
    kind.rows(tokenizer, texts, max_length, model)    # the training / scoring dataset
    kind.export(model_dir, out_dir, ...); kind.parity(...); kind.variant_probs(...)
    kind.open_scorer(onnx_dir, variant, ...)          # the serving scorer

Every stage asks this module and works for any kind, as Optimum's `ORTQuantizer.from_pretrained`
decides the model type once. The offline parts (dataset, export, parity) are named by import path
and imported when called, so this module, Ray-free and below both the offline stages and serving,
imports neither torch nor the training package.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["StudentKind", "KINDS", "CROSS", "TWO_TOWER", "kind_of_folder", "kind_of_card", "kind_of_model", "open_scorer"]


def _call(path: str) -> Callable[..., Any]:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class StudentKind:
    """One student kind. Paths are "module:attribute"."""

    name: str                 # `ModelCard.student_kind`
    marker: str | None        # the file that marks a trained folder of this kind (None: a Hugging Face folder)
    dataset: str              # class `(tokenizer, texts, max_length, [spec,] target=, teacher_prob=, click=)`
    dataset_takes_spec: bool  # whether the dataset reads the model's `spec` (which columns feed which tower)
    loader: str | None        # (model in eval mode, tokenizer) of a trained folder; None: a Hugging Face
                              # classifier folder, scored by the teacher backends
    exporter: str             # export_*(model_dir, out_dir, *, opset, max_length, name, lineage) -> card dict
    parity_check: str         # (model_dir, onnx_dir, texts, *, atol, max_length, batch_size, intra_op_threads) -> figures
    probs: str                # (onnx_dir, variants, texts, *, batch_size, intra_op_threads) -> {variant: (n,)}
    scorer: str               # the serving scorer class: (onnx_dir, variant, **kwargs)
    batch_rows_field: str     # `serving.config.BatchSection` field: rows per scoring call
    prunable: bool            # whether compress may drop layers, heads and FFN units
    fusion: bool              # whether ORT's transformer fusion is worth trying (cost per candidate)
    starts_head_on_rows: bool  # whether `init.head_from` is fitted on the training rows before training
    uncached: tuple[tuple[str, int], ...] = ()  # scorer kwargs that turn its caches off (the cold path, per row)

    def rows(self, tokenizer, texts: list[str], max_length: int, model=None, **targets):
        """The dataset `model` trains on / is scored with, over row texts (targets: target, teacher_prob, click)."""
        cls = _call(self.dataset)
        return cls(tokenizer, texts, max_length, **({"spec": model.spec} if self.dataset_takes_spec else {}), **targets)

    def rows_of_table(self, tokenizer, table, max_length: int, model=None):
        return self.rows(tokenizer, table.texts, max_length, model, target=table.target,
                         teacher_prob=table.teacher_prob, click=table.click)

    def load(self, folder: str):
        if self.loader is None:
            raise ValueError(f"a {self.name} student folder loads as a Hugging Face classifier, not through its kind")
        return _call(self.loader)(folder)

    def export(self, model_dir: str, out_dir: str, **kwargs) -> dict[str, Any]:
        return _call(self.exporter)(model_dir, out_dir, **kwargs)

    def parity(self, model_dir: str, onnx_dir: str, texts: list[str], **kwargs) -> dict[str, Any]:
        return _call(self.parity_check)(model_dir, onnx_dir, texts, **kwargs)

    def variant_probs(self, onnx_dir: str, variants: list[str], texts: list[str], **kwargs):
        return _call(self.probs)(onnx_dir, variants, texts, **kwargs)

    def open_scorer(self, onnx_dir: str, variant: str = "int8", cold: bool = False, **kwargs):
        """The serving scorer; `cold`: its caches off, so every row pays the whole model (latency per row)."""
        return _call(self.scorer)(onnx_dir, variant, **(dict(self.uncached) if cold else {}), **kwargs)

    def check_pruning(self, asked: list[str]) -> None:
        """Refuse the pruning settings `asked` (field names) when this kind cannot apply them (ValueError naming the field)."""
        if asked and not self.prunable:
            raise ValueError(f"{asked[0]}: pruning is not supported for a {self.name} student "
                             "(train it with fewer layers: init.layers)")


CROSS, TWO_TOWER = "cross", "two_tower"

KINDS: dict[str, StudentKind] = {
    CROSS: StudentKind(
        name=CROSS, marker=None, dataset="distillery.training.loop:TokenizedRows", dataset_takes_spec=False,
        loader=None,
        exporter="distillery.compress.export:export_onnx", parity_check="distillery.compress.validate:fp32_parity",
        probs="distillery.compress.validate:variant_probs",
        scorer="distillery.onnx_model.cross_candidates:CrossCandidateScorer", batch_rows_field="max_batch_rows",
        prunable=True, fusion=True, starts_head_on_rows=False),
    TWO_TOWER: StudentKind(
        name=TWO_TOWER, marker="two_tower_student.json", dataset="distillery.training.two_tower_student:TwoTowerRows",
        dataset_takes_spec=True, uncached=(("ad_cache_size", 0), ("request_cache_size", 0)),
        loader="distillery.training.two_tower_student:load_two_tower",
        exporter="distillery.compress.export_two_tower:export_two_tower",
        parity_check="distillery.compress.export_two_tower:two_tower_parity",
        probs="distillery.compress.export_two_tower:two_tower_variant_probs",
        scorer="distillery.onnx_model.two_tower:TwoTowerScorer", batch_rows_field="two_tower_batch_rows",
        prunable=False, fusion=False, starts_head_on_rows=True),
}


def kind_of_folder(folder: str) -> StudentKind:
    """The kind of a trained student folder (local path or URI), by its marker file."""
    from distillery import io

    for kind in KINDS.values():
        if kind.marker and io.exists(io.join(folder, kind.marker)):
            return kind
    return KINDS[CROSS]


def kind_of_card(card) -> StudentKind:
    """The kind of an exported folder's `ModelCard`."""
    return KINDS[card.student_kind]


def kind_of_model(model) -> StudentKind:
    """The kind of a model in memory (unwrapped from DDP): its `student_kind`, else a cross-encoder."""
    return KINDS[getattr(getattr(model, "module", model), "student_kind", CROSS)]


def open_scorer(model_dir: str, variant: str = "int8", **kwargs):
    """The scorer the card asks for: `TwoTowerScorer` for a two-tower student, else a cross-encoder's
    `CrossCandidateScorer` (bid candidates from cached token pieces, texts as usual)."""
    from distillery.onnx_model.card import ModelCard

    return kind_of_card(ModelCard.read(model_dir)).open_scorer(model_dir, variant, **kwargs)
