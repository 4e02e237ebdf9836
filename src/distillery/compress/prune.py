"""Structured pruning of Hugging Face classifiers: whole layers, FFN units, attention heads.

    model = load_pruned("runs/demo/student")
    prune_layers(model, {"encoder": [0, 2, 5]})          # or an int: that many, evenly spaced
    prune_ffn(model, keep_ratio=0.5, inputs=batches)      # by activation importance, else weights
    prune_heads(model, keep=8)                             # BERT-family encoders
    model.save_pretrained(out); load_pruned(out)           # reloads to the same function

Families: encoders (BERT, RoBERTa, XLM-R, ELECTRA — MiniLM is a BERT — and DistilBERT),
encoder-decoders (BART/mBART, T5: encoder and decoder stacks pruned separately) and decoders
(GPT-2, Llama/Mistral/Qwen2). Every change is mirrored in the config (layer counts, FFN width,
`layer_types`) and cache indices (`layer_idx`) are renumbered, so `save_pretrained` →
`from_pretrained` gives the same model. Transformers 5 dropped `prune_heads` and the config's
`pruned_heads` hook, so head pruning records `distillery_pruned_heads` in the config and
`load_pruned` re-applies the shapes before loading weights (plain `from_pretrained` cannot).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

__all__ = ["FAMILIES", "family_of", "spread", "prune_layers", "prune_ffn", "prune_heads", "load_pruned", "layer_counts"]

log = logging.getLogger(__name__)

HEADS_KEY = "distillery_pruned_heads"  # config attribute: {layer index: [removed heads]}


@dataclass(frozen=True)
class Stack:
    """One stack of layers, with paths relative to `model.base_model` and to one layer."""

    name: str
    path: str  # layer ModuleList
    count_attr: str  # config attribute holding its depth
    ffn_in: tuple[str, ...]  # modules whose OUTPUT units are the FFN units (Linear rows / Conv1D cols)
    ffn_out: str  # module whose INPUT units are the FFN units
    ffn_attr: str  # config attribute holding the FFN width


_BERT = (Stack("encoder", "encoder.layer", "num_hidden_layers", ("intermediate.dense",), "output.dense", "intermediate_size"),)
_LLAMA = (Stack("layers", "layers", "num_hidden_layers", ("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj", "intermediate_size"),)
_T5_FFN_IN = ("DenseReluDense.wi", "DenseReluDense.wi_0", "DenseReluDense.wi_1")
FAMILIES: dict[str, tuple[Stack, ...]] = {
    **{t: _BERT for t in ("bert", "roberta", "xlm-roberta", "electra")},
    "distilbert": (Stack("encoder", "transformer.layer", "n_layers", ("ffn.lin1",), "ffn.lin2", "hidden_dim"),),
    **{t: (Stack("encoder", "encoder.layers", "encoder_layers", ("fc1",), "fc2", "encoder_ffn_dim"),
           Stack("decoder", "decoder.layers", "decoder_layers", ("fc1",), "fc2", "decoder_ffn_dim")) for t in ("bart", "mbart")},
    "t5": (Stack("encoder", "encoder.block", "num_layers", tuple(f"layer.1.{p}" for p in _T5_FFN_IN), "layer.1.DenseReluDense.wo", "d_ff"),
           Stack("decoder", "decoder.block", "num_decoder_layers", tuple(f"layer.2.{p}" for p in _T5_FFN_IN), "layer.2.DenseReluDense.wo", "d_ff")),
    "gpt2": (Stack("layers", "h", "n_layer", ("mlp.c_fc",), "mlp.c_proj", "n_inner"),),
    **{t: _LLAMA for t in ("llama", "mistral", "qwen2")},
}


def family_of(model) -> tuple[Stack, ...]:
    kind = model.config.model_type
    if kind not in FAMILIES:
        raise ValueError(f"model_type {kind!r}: pruning supports {', '.join(sorted(FAMILIES))}")
    return FAMILIES[kind]


def _get(root, path: str):
    node = root
    for part in path.split("."):
        node = node[int(part)] if part.lstrip("-").isdigit() else getattr(node, part, None)
        if node is None:
            return None
    return node


def layer_counts(model) -> dict[str, int]:
    """{stack name: number of layers} as the modules stand (not the config)."""
    return {s.name: len(_get(model.base_model, s.path)) for s in family_of(model)}


def spread(total: int, keep: int) -> list[int]:
    """`keep` layer indices out of `total`, evenly spaced and always including the first and last
    (the embedding-side and output-side layers carry the most distinct work)."""
    if not 1 <= keep <= total:
        raise ValueError(f"keep={keep}: must be between 1 and {total} layers")
    if keep == 1:
        return [total - 1]
    return sorted({int(round(x)) for x in np.linspace(0, total - 1, keep)})


def prune_layers(model, keep: Mapping[str, list[int] | int] | list[int] | int):
    """Keep only the chosen layers of each stack, in place; returns `model`.

    `keep`: indices (or a count, evenly spaced) for a single-stack model, or a mapping from stack
    name (`encoder`, `decoder`) to indices or count; stacks not named are left whole.
    """
    import torch

    stacks = family_of(model)
    if not isinstance(keep, Mapping):
        if len(stacks) > 1:
            keep = {s.name: keep for s in stacks}  # a bare list/int applies to both encoder and decoder
        else:
            keep = {stacks[0].name: keep}
    unknown = set(keep) - {s.name for s in stacks}
    if unknown:
        raise ValueError(f"keep: unknown stack(s) {sorted(unknown)}; this model has {[s.name for s in stacks]}")
    for stack in stacks:
        if stack.name not in keep:
            continue
        layers = _get(model.base_model, stack.path)
        total = len(layers)
        idx = keep[stack.name]
        idx = spread(total, idx) if isinstance(idx, int) else sorted(set(int(i) for i in idx))
        if not idx or idx[0] < 0 or idx[-1] >= total:
            raise ValueError(f"keep[{stack.name!r}]={idx}: indices must lie in [0, {total - 1}] and be non-empty")
        if model.config.model_type == "t5" and idx[0] != 0:
            _move_t5_relative_bias(layers[0], layers[idx[0]])
        kept = torch.nn.ModuleList([layers[i] for i in idx])
        _set_module(model.base_model, stack.path, kept)
        for new_i, layer in enumerate(kept):
            for mod in layer.modules():
                if hasattr(mod, "layer_idx"):
                    mod.layer_idx = new_i  # caches are indexed by position in the stack
        setattr(model.config, stack.count_attr, len(idx))
        sub_cfg = getattr(_get(model.base_model, stack.path.split(".")[0]), "config", None)
        if sub_cfg is not None and sub_cfg is not model.config and hasattr(sub_cfg, "num_layers"):
            sub_cfg.num_layers = len(idx)  # T5 stacks hold their own config copy
        types = getattr(model.config, "layer_types", None)
        if isinstance(types, list) and len(types) == total and len(stacks) == 1:
            model.config.layer_types = [types[i] for i in idx]
        log.info("pruned %s layers %d -> %d (kept %s)", stack.name, total, len(idx), idx)
    return model


def _move_t5_relative_bias(first, new_first) -> None:
    """T5 keeps the relative position bias only in block 0; the new first block must own it."""
    src, dst = first.layer[0].SelfAttention, new_first.layer[0].SelfAttention
    dst.relative_attention_bias = src.relative_attention_bias
    dst.has_relative_attention_bias = True


def _set_module(root, path: str, value) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(_get(root, parent) if parent else root, leaf, value)


# ---- unit pruning (FFN neurons, attention heads) ------------------------------------------------


def _is_conv1d(mod) -> bool:
    return type(mod).__name__ == "Conv1D"  # GPT-2 stores weight as (in, out)


def _out_weight(mod):
    """Weight as (out_units, in_features) regardless of Linear / Conv1D layout."""
    return mod.weight.T if _is_conv1d(mod) else mod.weight


def _keep_outputs(mod, idx) -> None:
    import torch

    with torch.no_grad():
        if _is_conv1d(mod):
            mod.weight = torch.nn.Parameter(mod.weight[:, idx].clone())
            mod.nf = len(idx)
        else:
            mod.weight = torch.nn.Parameter(mod.weight[idx].clone())
            mod.out_features = len(idx)
        if getattr(mod, "bias", None) is not None:
            mod.bias = torch.nn.Parameter(mod.bias[idx].clone())


def _keep_inputs(mod, idx) -> None:
    import torch

    with torch.no_grad():
        if _is_conv1d(mod):
            mod.weight = torch.nn.Parameter(mod.weight[idx].clone())
        else:
            mod.weight = torch.nn.Parameter(mod.weight[:, idx].clone())
            mod.in_features = len(idx)


def _activation_norms(model, out_modules: list, inputs: Iterable[Mapping[str, Any]]) -> list[np.ndarray]:
    """Mean |input| per feature of each `out_modules` entry over non-pad tokens: list of (features,)."""
    import torch

    sums = [None] * len(out_modules)
    count = [0.0]
    mask_box: dict[str, Any] = {}

    def hook(i):
        def fn(_mod, args):
            x = args[0].detach().float().abs()
            m = mask_box.get("mask")
            if m is not None and m.shape == x.shape[:2]:
                x = x * m[..., None]
            s = x.reshape(-1, x.shape[-1]).sum(0)
            sums[i] = s if sums[i] is None else sums[i] + s
        return fn

    handles = [m.register_forward_pre_hook(hook(i)) for i, m in enumerate(out_modules)]
    try:
        model.eval()
        with torch.no_grad():
            for batch in inputs:
                mask = batch.get("attention_mask")
                mask_box["mask"] = mask.float() if mask is not None else None
                count[0] += float(mask.sum()) if mask is not None else float(batch["input_ids"].numel())
                model(**batch)
    finally:
        for h in handles:
            h.remove()
    if sums[0] is None:
        raise ValueError("inputs: no batches given for activation importance")
    return [(s / max(count[0], 1.0)).numpy() for s in sums]


def _unit_scores(in_mods: list, out_mod, unit: int, act: np.ndarray | None) -> np.ndarray:
    """Importance per unit (an FFN neuron when unit=1, a head when unit=head_dim):
    ‖W_out[:, unit]‖ × (mean |activation| on real rows, or ‖W_in[unit, :]‖ without rows)."""
    w_out = _out_weight(out_mod).detach().float().T  # (units*unit, hidden): one row per input feature
    out_norm = w_out.reshape(-1, unit, w_out.shape[-1]).norm(dim=(1, 2)).numpy()
    if act is not None:
        return out_norm * act.reshape(-1, unit).mean(1)
    in_norm = np.ones_like(out_norm)
    for m in in_mods:
        w = _out_weight(m).detach().float()
        in_norm = in_norm * w.reshape(-1, unit, w.shape[-1]).norm(dim=(1, 2)).numpy()
    return out_norm * in_norm


def prune_ffn(model, keep_ratio: float, inputs: Iterable[Mapping[str, Any]] | None = None):
    """Keep the most important `keep_ratio` of FFN units in every layer, in place; returns `model`.

    The same count is kept in every layer (the config holds one FFN width). `inputs`: tokenised
    batches (`{"input_ids": LongTensor (b, s), "attention_mask": ...}`) from real rows; without
    them importance comes from weight norms alone.
    """
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio={keep_ratio}: must be in (0, 1]")
    stacks = family_of(model)
    plan = []  # (stack, layer, in_mods, out_mod)
    for stack in stacks:
        for layer in _get(model.base_model, stack.path):
            in_mods = [m for m in (_get(layer, p) for p in stack.ffn_in) if m is not None]
            plan.append((stack, layer, in_mods, _get(layer, stack.ffn_out)))
    width = _out_weight(plan[0][2][0]).shape[0]
    n_keep = max(1, int(round(width * keep_ratio)))
    if n_keep == width:
        return model
    acts = _activation_norms(model, [p[3] for p in plan], inputs) if inputs is not None else [None] * len(plan)
    for (stack, _layer, in_mods, out_mod), act in zip(plan, acts):
        scores = _unit_scores(in_mods, out_mod, 1, act)
        idx = np.sort(np.argsort(-scores, kind="stable")[:n_keep])
        for m in in_mods:
            _keep_outputs(m, idx)
        _keep_inputs(out_mod, idx)
    for stack in stacks:
        setattr(model.config, stack.ffn_attr, n_keep)
    log.info("pruned FFN width %d -> %d (%s importance)", width, n_keep, "activation" if inputs is not None else "weight")
    return model


_HEAD_FAMILIES = ("bert", "roberta", "xlm-roberta", "electra")


def _remove_heads(model, removed: Mapping[int, list[int]]) -> None:
    """Physically drop heads per layer (BERT family): slices Q/K/V rows and the output columns."""
    layers = _get(model.base_model, "encoder.layer")
    for li, heads in removed.items():
        attn = layers[int(li)].attention
        sa = attn.self
        d = sa.attention_head_size
        keep_h = [h for h in range(sa.num_attention_heads) if h not in set(heads)]
        if not keep_h:
            raise ValueError(f"layer {li}: cannot remove every attention head")
        idx = np.concatenate([np.arange(h * d, (h + 1) * d) for h in keep_h])
        for m in (sa.query, sa.key, sa.value):
            _keep_outputs(m, idx)
        _keep_inputs(attn.output.dense, idx)
        sa.num_attention_heads = len(keep_h)
        sa.all_head_size = len(keep_h) * d


def prune_heads(model, keep: int, inputs: Iterable[Mapping[str, Any]] | None = None):
    """Keep the `keep` most important attention heads in every layer, in place; returns `model`.

    BERT-family encoders only (MiniLM included). Importance as in `prune_ffn`, per head. The
    removed heads are recorded in `config.distillery_pruned_heads`; reload with `load_pruned`.
    """
    if model.config.model_type not in _HEAD_FAMILIES:
        raise ValueError(f"prune_heads: model_type {model.config.model_type!r} not supported (supports {', '.join(_HEAD_FAMILIES)})")
    n_heads = model.config.num_attention_heads
    if getattr(model.config, HEADS_KEY, None):
        raise ValueError("prune_heads: this model's heads were already pruned; prune from the unpruned checkpoint")
    if not 1 <= keep <= n_heads:
        raise ValueError(f"keep={keep}: must be between 1 and {n_heads} heads")
    if keep == n_heads:
        return model
    layers = _get(model.base_model, "encoder.layer")
    outs = [layer.attention.output.dense for layer in layers]
    acts = _activation_norms(model, outs, inputs) if inputs is not None else [None] * len(outs)
    removed = {}
    for li, (layer, act) in enumerate(zip(layers, acts)):
        sa = layer.attention.self
        scores = _unit_scores([sa.value], layer.attention.output.dense, sa.attention_head_size, act)
        removed[li] = sorted(int(h) for h in np.argsort(-scores, kind="stable")[keep:])
    _remove_heads(model, removed)
    setattr(model.config, HEADS_KEY, {str(k): v for k, v in removed.items()})
    log.info("pruned heads %d -> %d per layer", n_heads, keep)
    return model


def load_pruned(model_dir: str, **kwargs):
    """`AutoModelForSequenceClassification.from_pretrained`, re-applying recorded head pruning.

    kwargs go to `from_pretrained`/`from_config` (e.g. `attn_implementation="eager"`)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(model_dir)
    removed = getattr(config, HEADS_KEY, None)
    if not removed:
        return AutoModelForSequenceClassification.from_pretrained(model_dir, **kwargs)
    model = AutoModelForSequenceClassification.from_config(config, **kwargs)
    _remove_heads(model, {int(k): v for k, v in removed.items()})
    model.load_state_dict(_read_state_dict(model_dir), strict=True)
    return model.eval()


def _read_state_dict(model_dir: str) -> dict:
    import json

    from safetensors.torch import load_file

    single = os.path.join(model_dir, "model.safetensors")
    if os.path.exists(single):
        return load_file(single)
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if not os.path.exists(index):
        raise FileNotFoundError(f"{model_dir}: no model.safetensors(.index.json)")
    with open(index) as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
    state: dict = {}
    for name in files:
        state.update(load_file(os.path.join(model_dir, name)))
    return state
