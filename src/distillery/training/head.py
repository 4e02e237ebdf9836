"""The one-logit output head: its parameters apart from the encoder's, and a linear-probe start.

    groups = param_groups(model, lr=1e-4, head_lr=3e-3, weight_decay=0.01)
    fit_head_probe(model, loader, l2=1.0)        # "LP-FT": fit the head on frozen features first

Why: a sequence classifier's head starts random (weights ~N(0, 0.02)), and AdamW moves a weight
by about `lr` per step. A teacher fine-tune of ~100–300 steps at lr 1e-4 moves the head by ~0.01–0.03
in all, so the encoder bends itself toward a random projection instead of the head learning to read
features the pretrained encoder already has. A larger head learning rate, or a head fitted as a
logistic regression on the frozen features before fine-tuning (linear probe, then fine-tune), gives
the few clicks a head that already points somewhere useful.
"""

from __future__ import annotations

import logging
import math

import torch

__all__ = ["output_layer", "head_parameter_names", "param_groups", "fit_head_probe"]

log = logging.getLogger(__name__)

# Modules of an HF sequence classifier that are not the pretrained encoder proper: BERT's pooler
# (dense + tanh over [CLS]), RoBERTa/ELECTRA's `classifier.dense`, DistilBERT's `pre_classifier`.
_HEAD_MARKERS = ("classifier", "pre_classifier", "pooler", "score")


def output_layer(model: torch.nn.Module) -> torch.nn.Linear:
    """The one-logit output Linear (the last `nn.Linear` with `out_features == 1`)."""
    heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1]
    if not heads:
        raise ValueError(f"{type(model).__name__}: no one-logit output layer (nn.Linear with out_features=1)")
    return heads[-1]


def head_parameter_names(model: torch.nn.Module) -> set[str]:
    """Names of the head's parameters: pooler, pre-classifier and classifier."""
    return {n for n, _ in model.named_parameters() if any(part in _HEAD_MARKERS for part in n.split(".")[:-1])}


def param_groups(model: torch.nn.Module, lr: float, head_lr: float | None, weight_decay: float) -> list[dict]:
    """AdamW parameter groups of the trainable parameters: encoder at `lr`, head at `head_lr` (None: `lr`)."""
    head = head_parameter_names(model) if head_lr is not None else set()
    body = [p for n, p in model.named_parameters() if p.requires_grad and n not in head]
    top = [p for n, p in model.named_parameters() if p.requires_grad and n in head]
    groups = [{"params": body, "lr": lr, "weight_decay": weight_decay}]
    if top:
        groups.append({"params": top, "lr": head_lr, "weight_decay": weight_decay})
    return groups


@torch.no_grad()
def _head_inputs(model: torch.nn.Module, loader, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (n, d) float32 that the output layer reads, clicks (n,)) over `loader`, eval mode."""
    layer = output_layer(model)
    seen: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].detach().float().cpu()))
    targets = []
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
            targets.append(batch["target"])
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(seen).reshape(-1, layer.in_features), torch.cat(targets)


def fit_head_probe(model: torch.nn.Module, loader, l2: float = 1.0, device: str = "cpu", steps: int = 200) -> dict:
    """Fit the output layer as an L2-regularised logistic regression on the frozen encoder's features.

    Minimises mean BCE + `l2`/n · ||w||² over the rows of `loader` (targets in [0, 1], NaN rows
    skipped; features standardised, so `l2` = 1/(2C) of scikit-learn's LogisticRegression) with
    LBFGS, then writes w and b (folded back to raw features) into the output layer.
    Returns `{"rows", "loss" (final train BCE), "train_auc", "weight_norm"}`.
    """
    x, y = _head_inputs(model, loader, device)
    keep = ~torch.isnan(y)
    x, y = x[keep].double(), y[keep].double()
    if len(y) == 0 or y.min() == y.max():
        log.warning("head probe skipped: %d rows, targets all equal", len(y))
        return {"rows": int(len(y)), "skipped": True}
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)  # standardise for conditioning, fold back after
    z = (x - mean) / std
    rate = float(y.mean().clamp(1e-4, 1 - 1e-4))
    w = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([math.log(rate / (1 - rate))], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y) + l2 / len(y) * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        loss = float(torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y))
    layer = output_layer(model)
    with torch.no_grad():
        weight = (w / std).to(layer.weight.dtype)
        layer.weight.copy_(weight.reshape(layer.weight.shape))
        layer.bias.fill_(float(b - (w * mean / std).sum()))
    train_logits = (z @ w + b).detach().numpy()
    from distillery.metrics import roc_auc

    stats = {"rows": int(len(y)), "loss": loss, "train_auc": roc_auc(y.numpy(), train_logits),
             "weight_norm": float(weight.norm())}
    log.info("head probe: %s", stats)
    return stats
