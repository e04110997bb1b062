"""Losses against values computed by hand / by the papers' formulas written out in numpy."""
from __future__ import annotations

import math

import numpy as np
import torch

from erc_ros.models.losses import (EmaTeacher, pearson_kd, relational_kd, self_distillation,
                                   unimodal_self_distillation, weighted_cross_entropy)


def test_weighted_cross_entropy_by_hand():
    logits = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0], [5.0, 1.0]])
    y = torch.tensor([0, 1, -1])  # the last row is unlabelled
    w = torch.tensor([1.0, 3.0])
    # (1 * -ln 0.75 + 3 * ln 2) / (1 + 3)
    expected = (0.2876821 + 3 * 0.6931472) / 4
    assert abs(weighted_cross_entropy(logits, y, w).item() - expected) < 1e-6
    assert abs(weighted_cross_entropy(logits, y).item() - (0.2876821 + 0.6931472) / 2) < 1e-6


def test_self_distillation_by_hand():
    s = torch.zeros(1, 2)
    t = torch.tensor([[math.log(3.0), 0.0]])  # teacher (0.75, 0.25), student (0.5, 0.5)
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)  # 0.130812
    assert abs(self_distillation(s, t, tau=1.0).item() - kl) < 1e-6
    assert abs(self_distillation(s, t, tau=2.0).item() - _kl_tau(2.0)) < 1e-6
    assert self_distillation(t, t, tau=2.0).item() < 1e-7


def _kl_tau(tau):
    a = math.log(3.0) / tau
    t = np.exp([a, 0.0]) / np.exp([a, 0.0]).sum()
    return tau ** 2 * float((t * np.log(t / 0.5)).sum())


def test_pearson_kd_by_hand():
    # Inter-class term for one reversed row, computed by hand: 1 - r = 1.8671.
    p = np.exp([0.0, 1.0, 2.0]) / np.exp([0.0, 1.0, 2.0]).sum()
    xc, rc = p - p.mean(), p[::-1] - p.mean()
    r = (xc * rc).sum() / (np.linalg.norm(xc) * np.linalg.norm(rc))
    assert abs((1 - r) - 1.8671) < 1e-3
    # Full eq. 9 on a 2x3 batch against the formula written out with loops.
    s = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.5, -1.0]])
    t = torch.tensor([[2.0, 1.0, 0.0], [0.5, 0.0, 1.0]])
    tau = 2.0

    def sm(x):
        e = np.exp(np.asarray(x) / tau)
        return e / e.sum(-1, keepdims=True)

    ys, yt = sm(s.numpy().astype(np.float64)), sm(t.numpy().astype(np.float64))

    def d(u, v):
        u, v = u - u.mean(), v - v.mean()
        return 1 - (u * v).sum() / (np.linalg.norm(u) * np.linalg.norm(v))

    expected = tau ** 2 * (np.mean([d(ys[i], yt[i]) for i in range(2)])
                           + np.mean([d(ys[:, j], yt[:, j]) for j in range(3)]))
    assert abs(pearson_kd(s, t, tau).item() - expected) < 1e-6 * 100 * abs(expected)
    assert pearson_kd(t, t, tau).item() < 1e-4  # float32 + eps


def test_relational_kd_by_hand():
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    t = torch.tensor([[0.5, 0.5], [0.0, 1.0], [1.0, 0.0]])
    tau = 1.0
    F_t = t.numpy() @ t.numpy().T
    F_s = s.numpy() @ t.numpy().T
    T_ = np.exp(F_t / tau) / np.exp(F_t / tau).sum(1, keepdims=True)
    S_ = np.exp(F_s / tau) / np.exp(F_s / tau).sum(1, keepdims=True)
    kl = np.mean([(T_[i] * np.log(T_[i] / S_[i])).sum() for i in range(3)])
    M = 0.5 * (T_ + S_)
    jsd = np.mean([0.5 * (T_[i] * np.log(T_[i] / M[i])).sum()
                   + 0.5 * (S_[i] * np.log(S_[i] / M[i])).sum() for i in range(3)])
    assert abs(relational_kd(s, t, tau, "kl").item() - kl) < 1e-5
    assert abs(relational_kd(s, t, tau, "jsd").item() - jsd) < 1e-5
    assert abs(relational_kd(s, t, tau, "kl+jsd").item() - (kl + jsd)) < 1e-5
    assert 0 <= jsd <= math.log(2)


def test_unimodal_self_distillation_uses_only_present_rows():
    fused = torch.tensor([[[math.log(3.0), 0.0], [0.0, 0.0]]])  # [1, 2, 2]
    uni = {"text": torch.zeros(1, 2, 2), "audio": torch.zeros(1, 2, 2)}
    mask = torch.tensor([[[True, False, False], [True, True, False]]])
    kl_row0 = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    # text: rows 0 and 1 (row 1 has KL 0) -> mean kl_row0/2 ; audio: only row 1 -> 0
    got = unimodal_self_distillation(uni, fused, mask, tau=1.0).item()
    assert abs(got - kl_row0 / 2) < 1e-6


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
