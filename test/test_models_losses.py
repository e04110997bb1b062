"""Losses against values computed by hand / by the papers' formulas written out in numpy.

Each loss runs twice on the same inputs: in float64, where it must equal the float64
reference to float64 rounding (that checks the formula), and in float32, the training
dtype, where it must stay within the float32 rounding bound of the same reference. The
bounds come from test/_tolerances.py: n roundings of intermediates of magnitude m, with n
and m counted for each loss below, never tuned to a machine.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from _tolerances import EPS32, EPS64, rounding_bound
from erc_ros.models.losses import (EmaTeacher, feature_distillation, pearson_kd, relational_kd,
                                   self_distillation, unimodal_self_distillation,
                                   weighted_cross_entropy)


F64 = torch.float64  # inputs are built in float64: casting to float32 rounds them once more


def _in(dtype, fn, *args, **kw) -> float:
    """``fn`` with every floating tensor argument cast to ``dtype`` (labels stay integers)."""
    cast = [a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
    return fn(*cast, **kw).item()


def _check(fn, args, expected: float, n_ops: float, magnitude: float, **kw) -> None:
    """float64 equals ``expected`` to float64 rounding, float32 to float32 rounding (one more
    rounding: the float64 inputs cast to float32)."""
    for dtype, eps in ((torch.float64, EPS64), (torch.float32, EPS32)):
        got = _in(dtype, fn, *args, **kw)
        bound = rounding_bound(n_ops + 1, magnitude, eps)
        assert abs(got - expected) <= bound, (dtype, got, expected, bound)


def _sd_ops(c: int) -> int:
    """Roundings in one row of self_distillation over c classes: log_softmax (scale, max,
    subtract, exp, c-term sum, log, subtract: c + 6), softmax (c + 4), log t, log t - s, t *
    (...), the c-term sum, the mean over rows and the tau^2 product (c + 5)."""
    return 3 * c + 15


def _log_magnitude(logits: torch.Tensor, tau: float) -> float:
    """Largest intermediate of the log-softmax path, scaled by tau^2 as the loss is: every
    |z_i| and every |log p_i| <= 2 max|z| + ln C, z = logits / tau."""
    z = logits.double().abs().max().item() / tau
    return tau ** 2 * (2 * z + math.log(logits.shape[-1]))


def test_weighted_cross_entropy_by_hand():
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0], [5.0, 1.0]], dtype=F64)
    y = torch.tensor([0, 1, -1])  # the last row is unlabelled
    w = torch.tensor([1.0, 3.0], dtype=F64)
    # (1 * -ln 0.75 + 3 * ln 2) / (1 + 3)
    expected = (math.log(4 / 3) + 3 * math.log(2)) / 4
    # Per labelled row, log_softmax over C = 2: c + 6 roundings (see _sd_ops); then the
    # weight product, the 2-row sum and the division by sum(w): 4 more. Intermediates are at
    # most max(w) * (max|logit| + ln C) = 3 * (ln 3 + ln 2) < 6.
    _check(weighted_cross_entropy, (logits, y, w), expected, n_ops=2 + 6 + 4, magnitude=6.0)
    _check(weighted_cross_entropy, (logits, y), (math.log(4 / 3) + math.log(2)) / 2,
           n_ops=2 + 6 + 4, magnitude=2.0)


def test_self_distillation_by_hand():
    s = torch.zeros(1, 2, dtype=F64)
    t = torch.tensor([[math.log(3.0), 0.0]], dtype=F64)  # teacher (0.75, 0.25), student (0.5, 0.5)
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # 0.130812
    for tau, expected in ((1.0, kl), (2.0, _kl_tau(2.0))):
        _check(self_distillation, (s, t), expected, _sd_ops(2), _log_magnitude(t, tau),
               tau=tau)
    # KL(t || t) is exactly 0: what float32 gives is the rounding of log t (log of softmax)
    # against the same value from log_softmax, the same n roundings of the same magnitudes
    # (4 * 1.2e-7 * 15 * 1.8 ~ 1.3e-5; one machine measured 1.7e-7, another less).
    _check(self_distillation, (t, t), 0.0, _sd_ops(2), _log_magnitude(t, 2.0), tau=2.0)


def _kl_tau(tau):
    a = math.log(3.0) / tau
    t = np.exp([a, 0.0]) / np.exp([a, 0.0]).sum()
    return tau ** 2 * float((t * np.log(t / 0.5)).sum())


def _pearson_reference(s: torch.Tensor, t: torch.Tensor, tau: float):
    """pearson_kd written out with loops in float64, with the implementation's 1e-8 in the
    denominator (part of the formula, not rounding). Also returns the magnitude for the
    bound: a centred probability u_i = p_i - mean(p) carries an absolute rounding error of
    ~eps * max p; relative to |u| (which r divides by) that is max p / min|u|."""
    def sm(x):
        e = np.exp(np.asarray(x, np.float64) / tau)
        return e / e.sum(-1, keepdims=True)

    ys, yt = sm(s.numpy()), sm(t.numpy())
    norms = []

    def d(u, v):
        u, v = u - u.mean(), v - v.mean()
        norms.extend([np.linalg.norm(u), np.linalg.norm(v)])
        return 1 - (u * v).sum() / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-8)

    b, c = ys.shape
    expected = tau ** 2 * (np.mean([d(ys[i], yt[i]) for i in range(b)])
                           + np.mean([d(ys[:, j], yt[:, j]) for j in range(c)]))
    amplification = max(ys.max(), yt.max()) / min(norms)
    return float(expected), tau ** 2 * 2 * amplification  # 2: 1 - r, r in [-1, 1]


def test_pearson_kd_by_hand():
    # Inter-class term for one reversed row, computed by hand: 1 - r = 1.8671 (4 decimals:
    # the constant itself is within 0.5e-4).
    p = np.exp([0.0, 1.0, 2.0]) / np.exp([0.0, 1.0, 2.0]).sum()
    xc, rc = p - p.mean(), p[::-1] - p.mean()
    r = (xc * rc).sum() / (np.linalg.norm(xc) * np.linalg.norm(rc))
    assert abs((1 - r) - 1.8671) <= 0.5e-4
    # Full eq. 9 on a 2x3 batch against the formula written out with loops. Roundings per
    # distance along n = max(B, C) = 3 values: softmax (n + 4), mean and centring (n + 2),
    # the three n-term sums (3n), sqrt x2, product, division, 1 - r (5); then the means over
    # B + C distances and the tau^2 product (B + C + 2).
    s = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.5, -1.0]], dtype=F64)
    t = torch.tensor([[2.0, 1.0, 0.0], [0.5, 0.0, 1.0]], dtype=F64)
    tau = 2.0
    n_ops = (3 + 4) + (3 + 2) + 3 * 3 + 5 + (2 + 3 + 2)
    expected, magnitude = _pearson_reference(s, t, tau)
    _check(pearson_kd, (s, t), expected, n_ops, magnitude, tau=tau)
    # Equal inputs: r = |u|^2 / (|u|^2 + 1e-8), so the exact loss is not 0 but
    # tau^2 * the means of 1e-8 / (|u|^2 + 1e-8) (1.3e-5 here: some |u| are ~0.06).
    expected, magnitude = _pearson_reference(t, t, tau)
    assert expected > 0
    _check(pearson_kd, (t, t), expected, n_ops, magnitude, tau=tau)


def test_relational_kd_by_hand():
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=F64)
    t = torch.tensor([[0.5, 0.5], [0.0, 1.0], [1.0, 0.0]], dtype=F64)
    tau = 1.0
    sn, tn = s.numpy(), t.numpy()  # the reference in float64
    F_t = tn @ tn.T
    F_s = sn @ tn.T
    T_ = np.exp(F_t / tau) / np.exp(F_t / tau).sum(1, keepdims=True)
    S_ = np.exp(F_s / tau) / np.exp(F_s / tau).sum(1, keepdims=True)
    kl = np.mean([(T_[i] * np.log(T_[i] / S_[i])).sum() for i in range(3)])
    M = 0.5 * (T_ + S_)
    jsd = np.mean([0.5 * (T_[i] * np.log(T_[i] / M[i])).sum()
                   + 0.5 * (S_[i] * np.log(S_[i] / M[i])).sum() for i in range(3)])
    # B = 3 rows of D = 2 features. Per row: the similarity products (D + 1 with /tau), softmax
    # and log_softmax over B (2B + 10), the KL terms and their B-term sum (B + 3), batchmean
    # (1): 3B + 16 = 25. JSD adds exp, the mixture (2), its log, and two more KLs (2(B + 3)):
    # 2B + 10 = 16 more. Intermediates: |log p| <= 2 max|F| / tau + ln B, F = s t^T.
    kl_ops, jsd_ops = 25, 25 + 16
    magnitude = 2 * np.abs(F_s).max() / tau + math.log(3)
    _check(relational_kd, (s, t), float(kl), kl_ops, magnitude, tau=tau, kind="kl")
    _check(relational_kd, (s, t), float(jsd), jsd_ops, magnitude, tau=tau, kind="jsd")
    _check(relational_kd, (s, t), float(kl + jsd), kl_ops + jsd_ops + 1, magnitude, tau=tau,
           kind="kl+jsd")
    assert 0 <= jsd <= math.log(2)


def test_feature_distillation_by_hand():
    """Cosine hint + relational KD over L2-normalised vectors: the float64 reference, then
    what it must not depend on (the vectors' scale) and where its gradient goes."""
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=F64)
    t = torch.tensor([[0.5, 0.5], [0.0, 3.0], [2.0, -1.0]], dtype=F64)
    tau = 0.1
    sn = s.numpy() / np.linalg.norm(s.numpy(), axis=1, keepdims=True)
    tn = t.numpy() / np.linalg.norm(t.numpy(), axis=1, keepdims=True)
    hint = np.mean(1 - (sn * tn).sum(1))
    F_t, F_s = tn @ tn.T / tau, sn @ tn.T / tau
    T_ = np.exp(F_t) / np.exp(F_t).sum(1, keepdims=True)
    S_ = np.exp(F_s) / np.exp(F_s).sum(1, keepdims=True)
    kl = np.mean([(T_[i] * np.log(T_[i] / S_[i])).sum() for i in range(3)])
    # B = 3, D = 2. Normalising a row: D squares, their sum, sqrt, clamp, divide (D + 4);
    # the hint: D-term dot, 1 - cos, the B-term mean (D + B + 2); relational_kd as in
    # test_relational_kd_by_hand (3B + 16); the final sum (1): 2D + 4B + 23 = 39. The
    # intermediates are the log-probabilities, |log p| <= 2 max|cos| / tau + ln B.
    magnitude = 2 / tau + math.log(3)
    _check(feature_distillation, (s, t), float(hint + kl), 39, magnitude, tau=tau)
    assert hint + kl > 0.1
    # Scale-free: a student 3x the teacher's vectors has nothing left to learn.
    assert feature_distillation(3 * t, t, tau).item() < rounding_bound(39, magnitude, EPS64)
    # The teacher is a target: no gradient reaches it.
    s32, t32 = s.float().requires_grad_(), t.float().requires_grad_()
    feature_distillation(s32, t32, tau).backward()
    assert s32.grad is not None and s32.grad.abs().sum() > 0 and t32.grad is None


def test_unimodal_self_distillation_uses_only_present_rows():
    fused = torch.tensor([[[math.log(3.0), 0.0], [0.0, 0.0]]], dtype=F64)  # [1, 2, 2]
    uni = {"text": torch.zeros(1, 2, 2), "audio": torch.zeros(1, 2, 2)}
    mask = torch.tensor([[[True, False, False], [True, True, False]]])
    kl_row0 = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    # text: rows 0 and 1 (row 1 has KL 0) -> mean kl_row0/2 ; audio: only row 1 -> 0
    # Two self_distillation calls (2 rows each: one more rounding in the masked sum, one in
    # the division by the row count) and the sum of the two.
    for dtype, eps in ((torch.float64, EPS64), (torch.float32, EPS32)):
        got = unimodal_self_distillation({k: v.to(dtype) for k, v in uni.items()},
                                         fused.to(dtype), mask, tau=1.0).item()
        bound = rounding_bound(2 * (_sd_ops(2) + 2) + 2, _log_magnitude(fused, 1.0), eps)
        assert abs(got - kl_row0 / 2) <= bound, (dtype, got)


def test_ema_teacher_update():
    m = torch.nn.Linear(2, 1)
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema = EmaTeacher(m, decay=0.9)
    with torch.no_grad():
        m.weight.fill_(0.0)
    ema.update(m)
    torch.testing.assert_close(ema.module.weight, torch.full((1, 2), 0.9))
    assert not any(p.requires_grad for p in ema.parameters())
    # A frozen tensor is copied, never averaged: it stays bit-identical to the source
    # (model directories reference frozen packaged tensors by sha256).
    m.bias.requires_grad_(False)
    with torch.no_grad():
        m.bias.fill_(0.1234567)
    for _ in range(5):
        ema.update(m)
    assert torch.equal(ema.module.bias, m.bias)
