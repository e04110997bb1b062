"""DDVLM residual fusion (seed 004 section 3.6): text-centred, gated residual correction.

Text logits z_t come from the (optionally context-encoded) text stream. For each other
present modality x (audio, video): h~ = W2 ReLU(W1 LN(h_x)) projects it into the text space;
g = 0.05 + 0.45 sigmoid(W_g [h_t ; h~ ; h_t*h~ ; h_t-h~]) (gate kept within 0.05-0.5);
h_fused = h_t + g h~; delta = W_c Dropout(LN(h_fused - h_t)); the correction is scaled by
a learnable alpha (init 0.3, the paper's value), g, the cosine agreement s_cos = (1+cos)/2
and the confidence s_conf = max softmax of x's own logits: z = z_t + alpha g s_cos s_conf delta.
``num_layers`` > 0 adds a (causal) transformer over the text stream for conversation context.
Modality weights: 1 for text, the mean correction scale for the others, normalised.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .common import ContextEncoder, FusionConfig, FusionHead, SpeakerPosition


@dataclass
class ResidualConfig(FusionConfig):
    num_layers: int = 0
    alpha_init: float = 0.3


class _Correction(nn.Module):
    def __init__(self, in_dim: int, d: int, c: int, dropout: float):
        super().__init__()
        self.project = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, d), nn.ReLU(),
                                     nn.Linear(d, d))
        self.gate = nn.Linear(4 * d, 1)
        self.norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(d, c)  # W_c
        self.own = nn.Linear(d, c)  # the modality's own logits (confidence)

    def forward(self, ht, hx):
        hv = self.project(hx)
        g = 0.05 + 0.45 * torch.sigmoid(self.gate(torch.cat([ht, hv, ht * hv, ht - hv], -1)))
        delta = self.head(self.drop(self.norm(g * hv)))  # LN(h_fused - h_t), h_fused = h_t + g h~
        s_cos = 0.5 * (1 + F.cosine_similarity(ht, hv, dim=-1)).unsqueeze(-1)
        own = self.own(hv)
        s_conf = torch.softmax(own, -1).amax(-1, keepdim=True)
        return delta, g * s_cos * s_conf, own


class ResidualFusion(FusionHead):
    def __init__(self, cfg: ResidualConfig):
        super().__init__()
        self.config = cfg
        d = cfg.d_model
        self.text_proj = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.LayerNorm(d))
        self.text_missing = nn.Parameter(torch.zeros(d))
        self.context = ContextEncoder(cfg) if cfg.num_layers > 0 else None
        self.spk_pos = SpeakerPosition(cfg) if cfg.num_layers > 0 else None
        self.drop = nn.Dropout(cfg.dropout)
        self.text_head = nn.Linear(d, cfg.num_classes)
        self.audio = _Correction(cfg.audio_dim, d, cfg.num_classes, cfg.dropout)
        self.video = _Correction(cfg.video_dim, d, cfg.num_classes, cfg.dropout)
        self.alpha = nn.Parameter(torch.tensor(float(cfg.alpha_init)))

    def fuse(self, text, audio, video, modality_mask, speaker_ids, padding_mask,
             with_aux: bool = False):
        mt = modality_mask[..., 0:1].to(text.dtype)
        ht = self.text_proj(text) * mt + self.text_missing * (1 - mt)
        if self.context is not None:
            ht = self.context(ht + self.spk_pos(speaker_ids), padding_mask)
        z = self.text_head(self.drop(ht))
        scales, aux = [torch.ones_like(mt)], {"text": z}
        for i, (name, corr, x) in enumerate((("audio", self.audio, audio),
                                             ("video", self.video, video)), start=1):
            delta, scale, own = corr(ht, x)
            m = modality_mask[..., i:i + 1].to(text.dtype)
            z = z + self.alpha * scale * delta * m
            scales.append(self.alpha.abs() * scale * m)
            aux[name] = own
        w = torch.cat(scales, -1) * modality_mask.to(text.dtype)
        weights = w / w.sum(-1, keepdim=True).clamp_min(1e-6)
        return z, weights, aux if with_aux else None
