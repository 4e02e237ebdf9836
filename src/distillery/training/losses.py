"""Training losses for one click logit per row: the teacher fine-tune, the distilled student and the
click-only baseline all train through `compute_loss`; only the target columns differ.

Every function takes `student_logits: (batch,)` float logits (probability = sigmoid) and returns a
scalar mean over the rows that carry a target. Targets arrive as float tensors `(batch,)` with NaN
where unknown (a hidden click, a row without a teacher label), so one batch may mix labelled and
unlabelled rows.

    soft   BCE(sigmoid(s), p_teacher)                       the teacher probability as a soft target
    hard   BCE(sigmoid(s), y_teacher)                       y = [p ≥ threshold] or y ~ Bernoulli(p)
    joint  α·BCE(sigmoid(s), click) + (1−α)·T²·KL(p_T ‖ q_T) where the click is known,
           T²·KL(p_T ‖ q_T) where it is not;  p_T = σ(logit(p)/T), q_T = σ(s/T)
    click  BCE(sigmoid(s), click)                            ground truth only (teacher, student_direct)
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

__all__ = [
    "LossName",
    "PROB_EPS",
    "prob_to_logit",
    "bernoulli_kl",
    "soft_loss",
    "hard_targets",
    "hard_loss",
    "joint_loss",
    "click_loss",
    "compute_loss",
]

LossName = Literal["soft", "hard", "joint", "click"]

# Teacher probabilities are clipped away from 0 and 1 before taking logits, so a confident teacher
# cannot produce an infinite logit (and an infinite KL gradient).
PROB_EPS = 1e-6


def prob_to_logit(prob: torch.Tensor, eps: float = PROB_EPS) -> torch.Tensor:
    """logit(p) for `prob: (batch,)` in [0, 1], clipped to [eps, 1 − eps]."""
    p = prob.clamp(eps, 1.0 - eps)
    return torch.log(p) - torch.log1p(-p)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` over `mask`; zero (still differentiable) when the mask is empty."""
    count = mask.sum()
    if count == 0:
        return values.sum() * 0.0
    return (values * mask).sum() / count


def bernoulli_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(Bern(σ(t/T)) ‖ Bern(σ(s/T))) per row, `(batch,)`, in nats; ≥ 0, zero iff t == s.

    Written with log-sigmoids so large logits stay finite. Its gradient in `s` is
    (σ(s/T) − σ(t/T)) / T, hence the usual T² factor in `joint_loss` to keep gradients comparable
    across temperatures (Hinton et al., 2015).
    """
    t = teacher_logits / temperature
    s = student_logits / temperature
    p = torch.sigmoid(t)
    log_p, log_1mp = F.logsigmoid(t), F.logsigmoid(-t)
    log_q, log_1mq = F.logsigmoid(s), F.logsigmoid(-s)
    return p * (log_p - log_q) + (1.0 - p) * (log_1mp - log_1mq)


def soft_loss(student_logits: torch.Tensor, teacher_prob: torch.Tensor) -> torch.Tensor:
    """BCE of the student against the teacher probability, mean over rows with a teacher label."""
    mask = ~torch.isnan(teacher_prob)
    target = torch.where(mask, teacher_prob, torch.zeros_like(teacher_prob))
    per_row = F.binary_cross_entropy_with_logits(student_logits, target, reduction="none")
    return _masked_mean(per_row, mask.to(per_row.dtype))


def hard_targets(
    teacher_prob: torch.Tensor,
    mode: Literal["threshold", "sample"] = "threshold",
    threshold: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Teacher probabilities `(batch,)` turned into 0/1 labels (NaN stays NaN).

    `threshold`: 1 where p ≥ threshold. At a click rate of a few percent a 0.5 threshold labels
    almost everything 0; `sample` (y ~ Bernoulli(p), seeded by `generator`) keeps the rate.
    """
    mask = torch.isnan(teacher_prob)
    p = torch.where(mask, torch.zeros_like(teacher_prob), teacher_prob)
    if mode == "threshold":
        y = (p >= threshold).to(teacher_prob.dtype)
    elif mode == "sample":
        y = torch.bernoulli(p, generator=generator).to(teacher_prob.dtype)
    else:
        raise ValueError(f"hard_mode {mode!r}: expected 'threshold' or 'sample'")
    return torch.where(mask, teacher_prob, y)


def hard_loss(student_logits: torch.Tensor, hard_labels: torch.Tensor) -> torch.Tensor:
    """BCE against 0/1 teacher labels from `hard_targets`."""
    return soft_loss(student_logits, hard_labels)


def click_loss(student_logits: torch.Tensor, click: torch.Tensor) -> torch.Tensor:
    """BCE against ground-truth clicks, mean over rows where the click is known (not NaN)."""
    return soft_loss(student_logits, click)


def joint_loss(
    student_logits: torch.Tensor,
    teacher_prob: torch.Tensor,
    click: torch.Tensor,
    alpha: float = 0.5,
    temperature: float = 2.0,
) -> torch.Tensor:
    """α·BCE(click) + (1−α)·T²·KL(teacher ‖ student) per row, mean over rows with a teacher label.

    Rows whose click is unknown (NaN: the unlabeled split) get the distillation term alone (α = 0
    for that row), so adding unlabeled rows never invents clicks.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha {alpha}: expected a value in [0, 1]")
    if temperature <= 0:
        raise ValueError(f"temperature {temperature}: expected > 0")
    has_teacher = ~torch.isnan(teacher_prob)
    has_click = ~torch.isnan(click)
    t_logits = prob_to_logit(torch.where(has_teacher, teacher_prob, torch.full_like(teacher_prob, 0.5)))
    kd = temperature**2 * bernoulli_kl(t_logits, student_logits, temperature)
    ce = F.binary_cross_entropy_with_logits(
        student_logits, torch.where(has_click, click, torch.zeros_like(click)), reduction="none"
    )
    a = has_click.to(kd.dtype) * alpha
    per_row = a * ce + (1.0 - a) * kd
    return _masked_mean(per_row, has_teacher.to(per_row.dtype))


def compute_loss(
    name: LossName,
    student_logits: torch.Tensor,
    batch: dict[str, torch.Tensor],
    alpha: float = 0.5,
    temperature: float = 2.0,
) -> torch.Tensor:
    """The configured loss for a batch holding `target` (soft/hard/click) or `teacher_prob` + `click` (joint)."""
    if name == "joint":
        return joint_loss(student_logits, batch["teacher_prob"], batch["click"], alpha, temperature)
    if name in ("soft", "hard", "click"):
        return soft_loss(student_logits, batch["target"])
    raise ValueError(f"loss {name!r}: expected one of soft, hard, joint, click")
