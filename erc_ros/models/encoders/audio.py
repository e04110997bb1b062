"""Audio encoders: a self-supervised speech model (wav2vec2 / data2vec-audio / HuBERT / WavLM
via ``AutoModel``, 16 kHz, masked mean over frames) or the packaged-weights fallback
(``kind="prosody"``, a name kept from its first features so model directories stay readable):
an MLP over the preprocessor's feature vector, i.e. acoustic features (the 88 eGeMAPS
functionals, or 16 prosody statistics in older models: ``AudioFeatureConfig.kind``) plus the
diarization d-vector that the core already computed (``Utterance.features["speaker_embedding"]``),
so the live path computes nothing twice.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
from torch import nn

from erc_ros.models.encoders.backbone import BackboneEncoder


@dataclass
class AudioEncoderConfig:
    kind: str = "prosody"  # "prosody" | "ssl"
    in_dim: int = 345  # prosody: feature size, set by ErcModel (Preprocessor.audio_feature_dim:
    #                    88 eGeMAPS + 256 + 1; 16 + 256 + 1 = 273 for prosody features)
    dim: int = 128  # prosody: output size (ssl: read from the backbone)
    pretrained: Optional[str] = None  # ssl: local checkpoint directory
    backbone: dict = field(default_factory=dict)  # ssl: config dict to rebuild the backbone
    freeze_backbone: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


class ProsodyAudioEncoder(nn.Module):
    def __init__(self, config: AudioEncoderConfig):
        super().__init__()
        self.config = config
        self.norm = nn.LayerNorm(config.in_dim)
        self.net = nn.Sequential(nn.Linear(config.in_dim, config.dim), nn.GELU(),
                                 nn.Linear(config.dim, config.dim))

    @property
    def dim(self) -> int:
        return self.config.dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``features`` [B, F] -> [B, D_a]."""
        return self.net(self.norm(features))


class SslAudioEncoder(BackboneEncoder):
    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``input_values``/``attention_mask`` [B, N] (16 kHz) -> [B, D_a], masked mean."""
        h = self.backbone(input_values, attention_mask=attention_mask).last_hidden_state
        lengths = self.backbone._get_feat_extract_output_lengths(attention_mask.sum(-1))
        frames = torch.arange(h.shape[1], device=h.device)[None] < lengths[:, None]
        m = frames.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


def build_audio_encoder(config: AudioEncoderConfig) -> nn.Module:
    if config.kind == "prosody":
        return ProsodyAudioEncoder(config)
    if config.kind == "ssl":
        return SslAudioEncoder(config)
    raise ValueError(f"unknown audio encoder kind {config.kind!r}")
