"""KD loss math: zero KL when distributions match, gradient direction, temperature scaling, masking."""

import math

import pytest
import torch

from distillery.training.losses import (bernoulli_kl, click_loss, compute_loss, hard_targets, joint_loss,
                                        prob_to_logit, soft_loss)


def test_kl_is_zero_when_student_matches_teacher_and_positive_otherwise():
    t = torch.tensor([-3.0, 0.0, 2.5])
    assert torch.allclose(bernoulli_kl(t, t.clone(), 1.0), torch.zeros(3), atol=1e-7)
    assert torch.allclose(bernoulli_kl(t, t.clone(), 4.0), torch.zeros(3), atol=1e-7)
    assert (bernoulli_kl(t, t + 0.5, 1.0) > 0).all()


def test_kl_matches_hand_computed_value():
    p, q = 0.2, 0.5
    expected = p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
    got = bernoulli_kl(prob_to_logit(torch.tensor([p])), torch.tensor([0.0]), 1.0)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_kd_gradient_pushes_student_toward_teacher():
    teacher_prob = torch.tensor([0.9, 0.1])
    s = torch.tensor([0.0, 0.0], requires_grad=True)
    joint_loss(s, teacher_prob, torch.tensor([float("nan")] * 2), alpha=0.5, temperature=2.0).backward()
    # gradient descent raises the first logit (teacher says 0.9) and lowers the second
    assert s.grad[0] < 0 < s.grad[1]


def test_temperature_scaling_of_gradient():
    """d/ds T²·KL at temperature T equals T·(σ(s/T) − σ(t/T)): the T² factor keeps magnitudes comparable."""
    t = prob_to_logit(torch.tensor([0.8]))
    for T in (1.0, 2.0, 5.0):
        s = torch.tensor([-1.0], requires_grad=True)
        joint_loss(s, torch.tensor([0.8]), torch.tensor([float("nan")]), alpha=0.0, temperature=T).backward()
        expected = T * (torch.sigmoid(s.detach() / T) - torch.sigmoid(t / T))
        assert s.grad.item() == pytest.approx(expected.item(), rel=1e-4)


def test_joint_uses_click_only_where_known_and_alpha_one_is_plain_ce():
    s = torch.tensor([0.3, -1.0])
    tp = torch.tensor([0.4, 0.05])
    clicks = torch.tensor([1.0, 0.0])
    ce = torch.nn.functional.binary_cross_entropy_with_logits(s, clicks)
    assert joint_loss(s, tp, clicks, alpha=1.0).item() == pytest.approx(ce.item(), rel=1e-6)
    # a row with an unknown click gets the KD term alone, whatever alpha is
    hidden = torch.tensor([float("nan"), float("nan")])
    assert joint_loss(s, tp, hidden, alpha=1.0).item() == pytest.approx(joint_loss(s, tp, hidden, alpha=0.0).item())


def test_soft_loss_equals_bce_and_ignores_nan_targets():
    s = torch.tensor([0.5, -0.5, 3.0])
    tp = torch.tensor([0.3, 0.1, float("nan")])
    ref = torch.nn.functional.binary_cross_entropy_with_logits(s[:2], tp[:2])
    assert soft_loss(s, tp).item() == pytest.approx(ref.item(), rel=1e-6)
    assert click_loss(s, torch.full((3,), float("nan"))).item() == 0.0


def test_soft_loss_minimised_at_teacher_logit():
    tp = torch.tensor([0.25])
    best = soft_loss(prob_to_logit(tp), tp)
    for delta in (-0.5, 0.5):
        assert soft_loss(prob_to_logit(tp) + delta, tp) > best


def test_hard_targets_threshold_and_sample():
    p = torch.tensor([0.2, 0.7, float("nan")])
    th = hard_targets(p, "threshold", 0.5)
    assert th[:2].tolist() == [0.0, 1.0] and math.isnan(th[2])
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    big = torch.full((20000,), 0.03)
    a, b = hard_targets(big, "sample", generator=g1), hard_targets(big, "sample", generator=g2)
    assert torch.equal(a, b) and 0.02 < a.mean().item() < 0.04


def test_compute_loss_rejects_unknown_name_and_bad_params():
    s = torch.zeros(2)
    batch = {"target": torch.zeros(2), "teacher_prob": torch.zeros(2), "click": torch.zeros(2)}
    with pytest.raises(ValueError, match="loss"):
        compute_loss("mse", s, batch)
    with pytest.raises(ValueError, match="temperature"):
        joint_loss(s, batch["teacher_prob"], batch["click"], temperature=0.0)
