"""Where a trained model starts: a pretrained folder, a layer subset of one, or a fresh config.

    model, tokenizer = build_model(ModelInit(kind="layer_subset", source="runs/demo/teacher", layers=[0, 5]))

- `pretrained`: the source as is (the teacher fine-tune starts from the MiniLM backbone this way).
- `layer_subset`: DistilBERT-style: embeddings, the chosen transformer layers (in the given order)
  and the pooler/classifier are copied from the source; the other layers are dropped.
- `fresh`: a randomly initialised model of the source's family, with config overrides of any size
  (`hidden_size`, `num_hidden_layers`, ...) and the source's tokenizer.
- `two_tower`: the two-tower student (`training.two_tower_student`): the source's encoder cut to
  `layers` as a shared request/ad tower, and an interaction head shaped by `two_tower`.

Any Hugging Face encoder whose layers sit in one `nn.ModuleList` works (BERT, RoBERTa, ELECTRA,
DistilBERT, DeBERTa, MiniLM ...). Every model has `num_labels=1`: one click logit.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import Field, model_validator

from distillery.config import Section
from distillery.data.tower_inputs import TwoTowerSpec
from distillery.models import resolve_model_path

__all__ = ["ModelInit", "build_model", "find_layer_list", "keep_layers"]

log = logging.getLogger(__name__)

# Config attributes that different model families use for their layer count.
_LAYER_COUNT_ATTRS = ("num_hidden_layers", "n_layers", "num_layers")


class ModelInit(Section):
    kind: Literal["pretrained", "layer_subset", "fresh", "two_tower"] = Field("layer_subset", description="how the model starts (two_tower: the two-tower student, a cross-encoder otherwise)")
    source: str = Field("minilm", description="HF folder or id the weights/config/tokenizer come from ('minilm' = packaged backbone)")
    layers: list[int] = Field(default_factory=lambda: [0, 5], description="layer_subset, two_tower: source layer indices to keep, in order")
    overrides: dict[str, int | float | str] = Field(default_factory=dict, description="fresh: config overrides, e.g. hidden_size: 128")
    seed: int = Field(0, description="seed of the randomly initialised parts (classifier head, fresh weights)")
    two_tower: TwoTowerSpec = Field(default_factory=TwoTowerSpec, description="two_tower: the towers' fields and the head's size (unused by other kinds)")
    strip_field_labels: bool = Field(False, description="cross-encoders: the tokenizer skips to_text's field labels ('query: ', 'site: ', …): about a third fewer tokens per row (training.vocab.strip_field_labels)")
    trim_vocab_splits: list[str] = Field(default_factory=list, description="splits under <run_dir>/data whose texts define the vocabulary kept (training.vocab: the embedding table cut to the pieces they use); empty keeps the full vocabulary")
    head_from: str | None = Field(None, description="two_tower: a two-tower teacher folder (two_tower.json) whose click head the student's head starts as ({run_dir}/teacher); 'clicks': that form fitted on the training rows' clicks; null: a fresh head")

    @model_validator(mode="after")
    def _check(self) -> "ModelInit":
        if self.kind in ("layer_subset", "two_tower"):
            if not self.layers:
                raise ValueError("layers: layer_subset needs at least one layer index")
            if len(set(self.layers)) != len(self.layers) or min(self.layers) < 0:
                raise ValueError(f"layers: {self.layers} must be distinct non-negative indices")
        if self.kind == "two_tower" and self.strip_field_labels:
            raise ValueError("strip_field_labels: the two-tower student renders each tower's fields itself; only cross-encoders strip labels")
        if self.kind == "two_tower" and self.overrides:
            raise ValueError("overrides: only used with kind=fresh")
        return self


def find_layer_list(model) -> tuple[str, Any]:
    """(dotted name, nn.ModuleList) of the transformer layers: the ModuleList named `layer`/`layers`
    whose length is the config's layer count."""
    import torch.nn as nn

    count = next((getattr(model.config, a) for a in _LAYER_COUNT_ATTRS if hasattr(model.config, a)), None)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] in ("layer", "layers"):
            if count is None or len(module) == count:
                return name, module
    raise ValueError(f"{type(model).__name__}: no transformer layer list found; layer_subset needs one nn.ModuleList of layers")


def keep_layers(model, layers: list[int]):
    """Drop every transformer layer of `model` except `layers` (in that order), in place; returns model.

    The kept layers are the same module objects, so their weights are the source's exactly.
    """
    import torch.nn as nn

    name, layer_list = find_layer_list(model)
    bad = [i for i in layers if i >= len(layer_list)]
    if bad:
        raise ValueError(f"layers: {bad} out of range; the source has {len(layer_list)} layers")
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, nn.ModuleList([layer_list[i] for i in layers]))
    for a in _LAYER_COUNT_ATTRS:
        if hasattr(model.config, a):
            setattr(model.config, a, len(layers))
    if getattr(model.config, "layer_types", None) is not None:  # per-layer configs (newer transformers)
        model.config.layer_types = [model.config.layer_types[i] for i in layers]
    return model


def build_model(init: ModelInit):
    """(model, tokenizer): an `AutoModelForSequenceClassification` with one logit (or, for
    kind=two_tower, a `TwoTowerStudent`), and its tokenizer."""
    import torch

    if init.kind == "two_tower":
        from distillery.training.two_tower_student import build_two_tower

        return build_two_tower(init)
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    source = resolve_model_path(init.source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if init.strip_field_labels:
        from distillery.training.vocab import strip_field_labels

        tokenizer = strip_field_labels(tokenizer)
    torch.manual_seed(init.seed)
    loading = {}
    if init.kind == "fresh":
        config = AutoConfig.from_pretrained(source, num_labels=1)
        for key, value in init.overrides.items():
            if not hasattr(config, key):
                raise ValueError(f"overrides.{key}: {type(config).__name__} has no such field")
            setattr(config, key, value)
        model = AutoModelForSequenceClassification.from_config(config)
    else:
        if init.overrides:
            raise ValueError("overrides: only used with kind=fresh")
        model, loading = _from_pretrained(source)
        if init.kind == "layer_subset":
            keep_layers(model, init.layers)
    model.config.num_labels = 1
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    fresh = sorted(set(loading.get("missing_keys", [])) | {k for k, *_ in loading.get("mismatched_keys", [])})
    log.info("model %s from %s: %.1fM parameters%s", init.kind, source, sum(p.numel() for p in model.parameters()) / 1e6,
             f"; newly initialised: {', '.join(fresh)}" if fresh else "")
    return model, tokenizer


def _from_pretrained(source: str):
    """(model, loading info) with one click logit. Transformers prints a table of the keys it had to
    initialise on every load, in every worker; the same facts go in one log line here instead, and
    anything worse than a warning still surfaces."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return AutoModelForSequenceClassification.from_pretrained(source, num_labels=1, ignore_mismatched_sizes=True,
                                                                  output_loading_info=True)
    finally:
        hf_logging.set_verbosity(level)
