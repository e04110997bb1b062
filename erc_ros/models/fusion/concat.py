"""Concat baseline: per-utterance projection of each present modality, concatenation, MLP.

No mixing across utterances (the text prompt already carries the dialogue context), so it is
trivially causal. Absent modalities contribute a learned "missing" vector. The audio and video
projections start at zero (``zero_init_av``) so an untrained branch changes nothing until it
is trained; the weights are each modality's share of the first-layer activation norm.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .common import FusionConfig, FusionHead


@dataclass
class ConcatConfig(FusionConfig):
    zero_init_av: bool = True
    hidden: int = 0  # 0: a single linear layer over the concatenation


class ConcatFusion(FusionHead):
    def __init__(self, cfg: ConcatConfig):
        super().__init__()
        self.config = cfg
        self.dropout = nn.Dropout(cfg.dropout)
        dims = (cfg.text_dim, cfg.audio_dim, cfg.video_dim)
        width = cfg.hidden or cfg.num_classes
        self.proj = nn.ModuleList([nn.Linear(d, width, bias=False) for d in dims])
        self.bias = nn.Parameter(torch.zeros(width))
        self.missing = nn.Parameter(torch.zeros(3, width))
        if cfg.zero_init_av:
            nn.init.zeros_(self.proj[1].weight)
            nn.init.zeros_(self.proj[2].weight)
        self.out = nn.Sequential(nn.GELU(), nn.Dropout(cfg.dropout),
                                 nn.Linear(cfg.hidden, cfg.num_classes)) if cfg.hidden else None

    def fuse(self, text, audio, video, modality_mask, speaker_ids, padding_mask,
             with_aux: bool = False):
        parts = []
        for i, (x, p) in enumerate(zip((text, audio, video), self.proj)):
            m = modality_mask[..., i:i + 1].to(x.dtype)
            parts.append(p(self.dropout(x)) * m + self.missing[i] * (1 - m))
        h = parts[0] + parts[1] + parts[2] + self.bias
        logits = self.out(h) if self.out is not None else h
        norms = torch.stack([p.norm(dim=-1) for p in parts], -1) * modality_mask.to(h.dtype)
        weights = norms / norms.sum(-1, keepdim=True).clamp_min(1e-6)
        return logits, weights, None
