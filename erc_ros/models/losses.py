"""Losses: class-weighted cross-entropy, the seeds' distillation terms, self-distillation.

- :func:`weighted_cross_entropy` — CE with per-class weights (MELD is 47% neutral) and label
  smoothing; ignores label -1.
- :func:`pearson_kd` — MAGTKD eq. 6-9: response distillation with d(u,v) = 1 - Pearson(u,v)
  between temperature-softened predictions, inter-class (per sample, rows) + intra-class (per
  class over the batch, columns), each scaled by tau^2.
- :func:`relational_kd` — MAGTKD eq. 10-12: batch similarity matrices of teacher features
  (target, F = T T^T) and of student-teacher features (source, F' = S T^T), row-softmax with
  temperature, KL(T_i || S_i) averaged over rows; ``kind="jsd"`` uses the Jensen-Shannon
  divergence instead and ``"kl+jsd"`` the sum.
- :func:`feature_distillation` — the student's vectors (projected to the teacher's width)
  toward a trained teacher's: a cosine hint per sample plus :func:`relational_kd` over the
  L2-normalised vectors (scale-free, so the teacher's norms do not set the temperature).
- :class:`EmaTeacher` + :func:`self_distillation` — an exponential-moving-average copy of the
  model as teacher; KL(teacher_T || student_T) * tau^2.
- :func:`unimodal_self_distillation` — each unimodal head learns from the fused prediction
  (detached), the "unimodal self-distillation" of the fusion stage.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                           class_weight: Optional[torch.Tensor] = None,
                           label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean CE over labelled rows (``target >= 0``); logits [N, C] (or [..., C])."""
    logits = logits.reshape(-1, logits.shape[-1])
    target = target.reshape(-1)
    return F.cross_entropy(logits, target, weight=class_weight, ignore_index=-1,
                           label_smoothing=label_smoothing)


def pearson_distance(u: torch.Tensor, v: torch.Tensor, dim: int = -1,
                     eps: float = 1e-8) -> torch.Tensor:
    """1 - Pearson correlation of u and v along ``dim``."""
    u = u - u.mean(dim, keepdim=True)
    v = v - v.mean(dim, keepdim=True)
    r = (u * v).sum(dim) / (u.norm(dim=dim) * v.norm(dim=dim) + eps)
    return 1.0 - r


def pearson_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
               tau: float = 1.0, inter: float = 1.0, intra: float = 1.0) -> torch.Tensor:
    """MAGTKD eq. 9 on [B, C] logits (teacher is detached)."""
    ys = F.softmax(student_logits / tau, -1)
    yt = F.softmax(teacher_logits.detach() / tau, -1)
    inter_term = pearson_distance(ys, yt, dim=1).mean()  # (1/B) sum over samples
    intra_term = pearson_distance(ys, yt, dim=0).mean()  # (1/C) sum over classes
    return tau ** 2 * (inter * inter_term + intra * intra_term)


def relational_kd(student_feats: torch.Tensor, teacher_feats: torch.Tensor,
                  tau: float = 1.0, kind: str = "kl") -> torch.Tensor:
    """MAGTKD eq. 10-12 on [B, D] features of the same width (teacher detached)."""
    t = teacher_feats.detach()
    target = F.softmax(t @ t.T / tau, -1)
    log_source = F.log_softmax(student_feats @ t.T / tau, -1)
    loss = student_feats.new_zeros(())
    if "kl" in kind.split("+"):
        loss = loss + F.kl_div(log_source, target, reduction="batchmean")
    if "jsd" in kind.split("+"):
        source = log_source.exp()
        m = 0.5 * (source + target)
        log_m = m.clamp_min(1e-12).log()
        loss = loss + 0.5 * (F.kl_div(log_m, target, reduction="batchmean")
                             + F.kl_div(log_m, source, reduction="batchmean"))
    return loss


def feature_distillation(projected: torch.Tensor, teacher_feats: torch.Tensor,
                         tau: float = 0.1) -> torch.Tensor:
    """(1 - cos(P s, t)) averaged over the batch + :func:`relational_kd` of the L2-normalised
    vectors at ``tau`` (cosine similarities lie in [-1, 1]: tau 0.1 spreads them over a
    softmax range of e^20). ``projected``: the student's vectors already mapped to the
    teacher's width [B, D]; the teacher's [B, D] are detached."""
    s = F.normalize(projected, dim=-1)
    t = F.normalize(teacher_feats.detach().to(projected.dtype), dim=-1)
    hint = (1.0 - (s * t).sum(-1)).mean()
    return hint + relational_kd(s, t, tau)


def self_distillation(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      tau: float = 2.0, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened distributions, times tau^2, averaged over
    rows (optionally only rows where ``mask``)."""
    s = F.log_softmax(student_logits.reshape(-1, student_logits.shape[-1]) / tau, -1)
    t = F.softmax(teacher_logits.detach().reshape(-1, teacher_logits.shape[-1]) / tau, -1)
    kl = (t * (t.clamp_min(1e-12).log() - s)).sum(-1)
    if mask is not None:
        m = mask.reshape(-1).to(kl.dtype)
        return tau ** 2 * (kl * m).sum() / m.sum().clamp_min(1.0)
    return tau ** 2 * kl.mean()


def unimodal_self_distillation(unimodal_logits: dict[str, torch.Tensor],
                               fused_logits: torch.Tensor, modality_mask: torch.Tensor,
                               tau: float = 2.0) -> torch.Tensor:
    """Sum over modalities of KL(fused || unimodal) on the rows where that modality is present.
    ``unimodal_logits``: {"text"|"audio"|"video": [..., C]}; ``modality_mask`` [..., 3]."""
    order = {"text": 0, "audio": 1, "video": 2}
    loss = fused_logits.new_zeros(())
    for name, logits in unimodal_logits.items():
        loss = loss + self_distillation(logits, fused_logits, tau, modality_mask[..., order[name]])
    return loss


class EmaTeacher(nn.Module):
    """Exponential moving average of a model's parameters (and a copy of its buffers)."""

    def __init__(self, model: nn.Module, decay: float = 0.999):
        super().__init__()
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, decay: Optional[float] = None) -> None:
        d = self.decay if decay is None else decay
        for e, p in zip(self.module.parameters(), model.parameters()):
            if p.requires_grad:  # frozen tensors stay bit-identical (they may be referenced)
                e.mul_(d).add_(p.detach(), alpha=1 - d)
            else:
                e.copy_(p.detach())
        for e, b in zip(self.module.buffers(), model.buffers()):
            e.copy_(b)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
