"""MAGT: multi-modal anchor-gated transformer (MAGTKD, seed 000, eqs. 15-22).

Each modality is projected to ``d_model`` and made position- and speaker-aware
(H_m = F_m + PE + SE, eqs. 15-18). Audio and video act first as anchors and aggregate the
other modalities: H_{m->m} = Transformer(H_m, H_m, H_m), H_{n->m} = Transformer(H_m, H_n, H_n)
(eqs. 19-20), each cross stream gated alpha = sigmoid(W H + b), H' = H * alpha (eqs. 21-22).
The raw text stream is then the anchor over the enriched audio and video. The classifier
reads the text-anchored representation. ``causal`` restricts all attention to the past.
Modality weights: the mean gate of each stream into the text anchor (text's own stream has
weight 1), restricted to the present modalities and normalised.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .common import (CrossBlock, FusionConfig, FusionHead, ModalityProjection, UnimodalHeads,
                     attention_mask, sinusoidal_positions)


@dataclass
class MagtConfig(FusionConfig):
    pass


class _Anchor(nn.Module):
    """One anchor modality aggregating itself and two others, with gates on the others."""

    def __init__(self, cfg: FusionConfig):
        super().__init__()
        self.self_block = CrossBlock(cfg)
        self.cross = nn.ModuleList([CrossBlock(cfg) for _ in range(2)])
        self.gates = nn.ModuleList([nn.Linear(cfg.d_model, cfg.d_model) for _ in range(2)])
        self.out = nn.Linear(3 * cfg.d_model, cfg.d_model)

    def forward(self, anchor, others, mask):
        own = self.self_block(anchor, anchor, mask)
        streams, gate_means = [own], []
        for blk, gate, other in zip(self.cross, self.gates, others):
            h = blk(anchor, other, mask)
            alpha = torch.sigmoid(gate(h))
            streams.append(h * alpha)
            gate_means.append(alpha.mean(-1))
        return self.out(torch.cat(streams, -1)), gate_means


class MagtFusion(FusionHead):
    def __init__(self, cfg: MagtConfig):
        super().__init__()
        self.config = cfg
        self.proj = ModalityProjection(cfg)
        self.speaker = nn.Embedding(cfg.max_speakers, cfg.d_model)
        nn.init.normal_(self.speaker.weight, std=0.02)
        self.audio_anchor = _Anchor(cfg)
        self.video_anchor = _Anchor(cfg)
        self.text_anchor = _Anchor(cfg)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.d_model, cfg.num_classes)
        self.unimodal = UnimodalHeads(cfg.d_model, cfg.num_classes)

    def fuse(self, text, audio, video, modality_mask, speaker_ids, padding_mask,
             with_aux: bool = False):
        t_, a_, v_ = self.proj(text, audio, video, modality_mask)
        t = speaker_ids.shape[1]
        se = self.speaker(speaker_ids.clamp(0, self.config.max_speakers - 1)) \
            if self.config.use_speaker else 0.0
        pe = sinusoidal_positions(t, self.config.d_model, text.device)[None]
        ht, ha, hv = (x + pe + se for x in (t_, a_, v_))
        mask = attention_mask(padding_mask, self.config.causal)
        ea, _ = self.audio_anchor(ha, (ht, hv), mask)
        ev, _ = self.video_anchor(hv, (ht, ha), mask)
        tt, (ga, gv) = self.text_anchor(ht, (ea, ev), mask)
        h = self.norm(tt)
        logits = self.classifier(self.drop(h))
        w = torch.stack([torch.ones_like(ga), ga, gv], -1) * modality_mask.to(h.dtype)
        weights = w / w.sum(-1, keepdim=True).clamp_min(1e-6)
        aux = self.unimodal((t_, a_, v_)) if with_aux else None
        return logits, weights, aux
