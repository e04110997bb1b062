"""Pieces shared by the fusion heads.

Every head has the same signature (the runtime runs any of them unchanged)::

    head(text[B,T,Dt], audio[B,T,Da], video[B,T,Dv], modality_mask[B,T,3] bool,
         speaker_ids[B,T] long, padding_mask[B,T] bool) -> (logits[B,T,C], weights[B,T,3])

``padding_mask`` is True at PADDED positions (PyTorch ``key_padding_mask`` convention).
``modality_mask`` is True where the modality is present (order: text, audio, video).
``weights`` are the per-modality contributions, summing to 1 over the present modalities
(heads without learned gates spread them uniformly over what is present).

Training also wants each modality's own logits (unimodal self-distillation, Pearson and
relational KD): :meth:`FusionHead.forward_with_aux` returns them as a third value, a dict
``{"text"|"audio"|"video": logits[B,T,C]}`` (``None`` for heads without them). ``forward``
(what is exported and run) does not compute them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass
class FusionConfig:
    text_dim: int = 384
    audio_dim: int = 128
    video_dim: int = 128
    num_classes: int = 7
    d_model: int = 256
    num_layers: int = 1
    num_heads: int = 4
    dropout: float = 0.1
    causal: bool = True  # past-only attention over the conversation (live use)
    max_speakers: int = 9
    max_positions: int = 256
    use_speaker: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


class FusionHead(nn.Module):
    """Base of the fusion heads: one ``fuse`` computes the prediction and, on request, the
    per-modality logits; ``forward`` (the runtime signature) drops them."""

    def fuse(self, text, audio, video, modality_mask, speaker_ids, padding_mask,
             with_aux: bool = False):
        """-> (logits, weights, aux or None)."""
        raise NotImplementedError

    def forward(self, text, audio, video, modality_mask, speaker_ids, padding_mask):
        logits, weights, _ = self.fuse(text, audio, video, modality_mask, speaker_ids,
                                       padding_mask)
        return logits, weights

    def forward_with_aux(self, text, audio, video, modality_mask, speaker_ids, padding_mask):
        return self.fuse(text, audio, video, modality_mask, speaker_ids, padding_mask,
                         with_aux=True)


def uniform_weights(modality_mask: torch.Tensor) -> torch.Tensor:
    m = modality_mask.to(torch.float32)
    return m / m.sum(-1, keepdim=True).clamp_min(1.0)


def attention_mask(padding_mask: torch.Tensor, causal: bool, window: int | None = None
                   ) -> torch.Tensor:
    """Boolean [B, T, T] mask, True where query t may NOT attend key s. Every query may attend
    itself (so fully padded rows stay finite)."""
    b, t = padding_mask.shape
    idx = torch.arange(t, device=padding_mask.device)
    block = padding_mask[:, None, :].expand(b, t, t)
    if causal:
        block = block | (idx[None, :] > idx[:, None])[None]
    if window is not None:
        block = block | ((idx[:, None] - idx[None, :]).abs() > window)[None]
    eye = torch.eye(t, dtype=torch.bool, device=padding_mask.device)[None]
    return block & ~eye


class ModalityProjection(nn.Module):
    """Projects each modality to ``d_model`` and zeroes the absent ones."""

    def __init__(self, cfg: FusionConfig):
        super().__init__()
        self.proj = nn.ModuleList([
            nn.Sequential(nn.Linear(d, cfg.d_model), nn.LayerNorm(cfg.d_model))
            for d in (cfg.text_dim, cfg.audio_dim, cfg.video_dim)])
        self.missing = nn.Parameter(torch.zeros(3, cfg.d_model))

    def forward(self, text, audio, video, modality_mask):
        outs = []
        for i, (x, p) in enumerate(zip((text, audio, video), self.proj)):
            m = modality_mask[..., i:i + 1].to(x.dtype)
            outs.append(p(x) * m + self.missing[i] * (1 - m))
        return outs  # 3 x [B, T, d]


class SpeakerPosition(nn.Module):
    def __init__(self, cfg: FusionConfig):
        super().__init__()
        self.use_speaker = cfg.use_speaker
        self.speaker = nn.Embedding(cfg.max_speakers, cfg.d_model)
        self.position = nn.Embedding(cfg.max_positions, cfg.d_model)
        nn.init.normal_(self.speaker.weight, std=0.02)
        nn.init.normal_(self.position.weight, std=0.02)
        self.max_positions = cfg.max_positions

    def forward(self, speaker_ids: torch.Tensor) -> torch.Tensor:
        t = speaker_ids.shape[1]
        pos = torch.arange(t, device=speaker_ids.device).clamp_max(self.max_positions - 1)
        e = self.position(pos)[None]
        if self.use_speaker:
            e = e + self.speaker(speaker_ids.clamp(0, self.speaker.num_embeddings - 1))
        return e


class ContextEncoder(nn.Module):
    """Transformer layers over the conversation with the (causal) padding mask."""

    def __init__(self, cfg: FusionConfig, num_layers: int | None = None):
        super().__init__()
        self.causal = cfg.causal
        self.num_heads = cfg.num_heads
        n = cfg.num_layers if num_layers is None else num_layers
        self.layers = nn.ModuleList([
            nn.TransformerEncoderLayer(cfg.d_model, cfg.num_heads, 2 * cfg.d_model,
                                       cfg.dropout, batch_first=True, norm_first=True)
            for _ in range(n)])

    def forward(self, x, padding_mask, window=None):
        mask = attention_mask(padding_mask, self.causal, window)
        mask = mask.repeat_interleave(self.num_heads, dim=0)
        for layer in self.layers:
            x = layer(x, src_mask=mask)
        return x


def sinusoidal_positions(t: int, d: int, device=None) -> torch.Tensor:
    """MAGTKD eqs. 15-16: PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...)."""
    pos = torch.arange(t, device=device, dtype=torch.float32)[:, None]
    i = torch.arange(0, d, 2, device=device, dtype=torch.float32)
    angle = pos / torch.pow(torch.tensor(10000.0, device=device), i / d)
    pe = torch.zeros(t, d, device=device)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle)[:, : d // 2]
    return pe


class CrossBlock(nn.Module):
    """Transformer(Q, K, V): pre-norm multi-head attention of queries over keys/values with
    the conversation mask, then a feed-forward block; residual connections on the query."""

    def __init__(self, cfg: FusionConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.norm_q = nn.LayerNorm(cfg.d_model)
        self.norm_kv = nn.LayerNorm(cfg.d_model)
        self.attn = nn.MultiheadAttention(cfg.d_model, cfg.num_heads, dropout=cfg.dropout,
                                          batch_first=True)
        self.ff = nn.Sequential(nn.LayerNorm(cfg.d_model), nn.Linear(cfg.d_model, 2 * cfg.d_model),
                                nn.GELU(), nn.Dropout(cfg.dropout),
                                nn.Linear(2 * cfg.d_model, cfg.d_model))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, q, kv, mask):
        """``mask`` [B, T, T] bool, True = blocked (see :func:`attention_mask`)."""
        m = mask.repeat_interleave(self.num_heads, dim=0)
        kvn = self.norm_kv(kv)
        a, _ = self.attn(self.norm_q(q), kvn, kvn, attn_mask=m, need_weights=False)
        x = q + self.drop(a)
        return x + self.drop(self.ff(x))


class UnimodalHeads(nn.Module):
    """Per-modality classifiers used only in training (unimodal self-distillation)."""

    def __init__(self, d: int, num_classes: int):
        super().__init__()
        self.heads = nn.ModuleList([nn.Linear(d, num_classes) for _ in range(3)])

    def forward(self, streams):
        return {name: h(x) for name, h, x in zip(("text", "audio", "video"), self.heads, streams)}
