"""LPGNet-style head (seed 003): lightweight parallel intra/inter attention and dual-gated
fusion, without speaker identity.

For every modality m the block computes, in parallel (no stacking), one intra-modal
attention A_{m->m} and the inter-modal attentions A_{n->m} (query m, keys/values n), all
scaled dot-product with the mask-aware (and optionally causal) conversation mask. Each gets
the two-stage residual enhancement: a global context summary (running mean over the visible
past when causal, so no future leaks; LayerNorm in place of the paper's BatchNorm so padding
does not bias statistics) broadcast back and fused with the query and a position-wise FFN.
Dual-gated fusion: unimodal gates x' = sigmoid(W x) * x on the intra and inter streams,
concatenated and projected per modality (eqs. 9-12); then a multimodal gate
beta = softmax_m(w^T tanh(W U_m)) over the present modalities and F = sum_m beta_m U_m
(eqs. 13-14). ``beta`` is the reported modality weight. No speaker embedding anywhere;
positions are sinusoidal.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .common import (FusionConfig, FusionHead, ModalityProjection, UnimodalHeads, attention_mask,
                     sinusoidal_positions)


@dataclass
class LpgConfig(FusionConfig):
    use_speaker: bool = False  # speaker-independent by design


class _Attn(nn.Module):
    def __init__(self, cfg: FusionConfig):
        super().__init__()
        d = cfg.d_model
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.scale = d ** -0.5
        self.global_ = nn.Sequential(nn.Linear(d, d), nn.LayerNorm(d), nn.LeakyReLU(0.1))
        self.ffn = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Dropout(cfg.dropout),
                                 nn.Linear(2 * d, d))
        self.norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, query, kv, block, causal, valid):
        s = (self.q(query) @ self.k(kv).transpose(1, 2)) * self.scale
        s = s.masked_fill(block, float("-inf"))
        a = torch.softmax(s, -1) @ self.v(kv)
        # Global compression: mean over the visible past (causal) or the whole valid dialogue.
        vm = valid.to(a.dtype).unsqueeze(-1)
        if causal:
            g = (a * vm).cumsum(1) / vm.cumsum(1).clamp_min(1.0)
        else:
            g = ((a * vm).sum(1, keepdim=True) / vm.sum(1, keepdim=True).clamp_min(1.0)).expand_as(a)
        x = query + self.drop(a) + self.global_(g)
        return self.norm(x + self.drop(self.ffn(x)))


class LpgFusion(FusionHead):
    def __init__(self, cfg: LpgConfig):
        super().__init__()
        self.config = cfg
        d = cfg.d_model
        self.proj = ModalityProjection(cfg)
        self.attn = nn.ModuleDict({f"{q}{k}": _Attn(cfg) for q in "tav" for k in "tav"})
        self.gates = nn.ModuleDict({f"{q}{k}": nn.Linear(d, d) for q in "tav" for k in "tav"})
        self.merge = nn.ModuleDict({m: nn.Linear(2 * d, d) for m in "tav"})
        self.mm_proj = nn.Linear(d, d)
        self.mm_score = nn.Linear(d, 1, bias=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(d, cfg.num_classes)
        self.unimodal = UnimodalHeads(d, cfg.num_classes)

    def fuse(self, text, audio, video, modality_mask, speaker_ids, padding_mask,
             with_aux: bool = False):
        streams = self.proj(text, audio, video, modality_mask)
        t = padding_mask.shape[1]
        pe = sinusoidal_positions(t, self.config.d_model, text.device)[None]
        h = dict(zip("tav", (x + pe for x in streams)))
        block = attention_mask(padding_mask, self.config.causal)
        valid = ~padding_mask
        fused = []
        for m in "tav":
            intra = self.attn[m + m](h[m], h[m], block, self.config.causal, valid)
            intra = torch.sigmoid(self.gates[m + m](intra)) * intra
            inter = 0
            for n in "tav".replace(m, ""):
                x = self.attn[m + n](h[m], h[n], block, self.config.causal, valid)
                inter = inter + 0.5 * torch.sigmoid(self.gates[m + n](x)) * x
            fused.append(self.merge[m](torch.cat([intra, inter], -1)))
        u = torch.stack(fused, 2)  # [B, T, 3, d]
        score = self.mm_score(torch.tanh(self.mm_proj(u))).squeeze(-1)  # [B, T, 3]
        present = modality_mask | ~modality_mask.any(-1, keepdim=True)  # all absent: uniform
        beta = torch.softmax(score.masked_fill(~present, float("-inf")), -1)
        f = (beta.unsqueeze(-1) * u).sum(2)
        logits = self.classifier(self.drop(f))
        aux = self.unimodal(streams) if with_aux else None
        return logits, beta, aux
