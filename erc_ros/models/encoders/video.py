"""Video encoders over per-utterance face crops.

``kind="vit"``: an image transformer (ViT family via ``AutoModel``, from a local checkpoint)
applied per frame, CLS token, masked mean over frames. ``kind="cnn"``: the packaged-weights
free fallback, a small FER-style CNN over 48x48 grey faces (mini-Xception-like depthwise
blocks), masked mean over frames.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
from torch import nn

from erc_ros.models.encoders.backbone import BackboneEncoder


@dataclass
class VideoEncoderConfig:
    kind: str = "cnn"  # "cnn" | "vit"
    in_channels: int = 1
    dim: int = 128  # cnn: output size (vit: read from the backbone)
    pretrained: Optional[str] = None
    backbone: dict = field(default_factory=dict)
    freeze_backbone: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)


class _SepBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False), nn.Conv2d(cin, cout, 1),
            nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1, groups=cout, bias=False), nn.Conv2d(cout, cout, 1),
            nn.BatchNorm2d(cout), nn.MaxPool2d(3, 2, 1))
        self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=2), nn.BatchNorm2d(cout))

    def forward(self, x):
        return self.body(x) + self.skip(x)


class CnnVideoEncoder(nn.Module):
    def __init__(self, config: VideoEncoderConfig):
        super().__init__()
        self.config = config
        c = config.in_channels
        self.net = nn.Sequential(nn.Conv2d(c, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                 _SepBlock(8, 16), _SepBlock(16, 32), _SepBlock(32, 64),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, config.dim))

    @property
    def dim(self) -> int:
        return self.config.dim

    def forward(self, pixel_values: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """``pixel_values`` [B, F, C, H, W], ``frame_mask`` [B, F] bool -> [B, D_v]."""
        b, f = pixel_values.shape[:2]
        x = self.net(pixel_values.flatten(0, 1)).view(b, f, -1)
        return _masked_mean(x, frame_mask)


class VitVideoEncoder(BackboneEncoder):
    def forward(self, pixel_values: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        b, f = pixel_values.shape[:2]
        h = self.backbone(pixel_values=pixel_values.flatten(0, 1)).last_hidden_state[:, 0]
        return _masked_mean(h.view(b, f, -1), frame_mask)


def build_video_encoder(config: VideoEncoderConfig) -> nn.Module:
    if config.kind == "cnn":
        return CnnVideoEncoder(config)
    if config.kind == "vit":
        return VitVideoEncoder(config)
    raise ValueError(f"unknown video encoder kind {config.kind!r}")
