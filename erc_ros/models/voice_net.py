"""The voice expert's network (:class:`VoiceNet`, :class:`VoiceNetConfig`) and its model
directory (:func:`save_voice_model`, :func:`load_voice_model`).

What it reads: Whisper's encoder states of an utterance (CTranslate2's ``encode`` on the
utterance trimmed to its speech, :mod:`erc_ros.runtime.voice_expert`), pooled over time into
their mean and standard deviation (``2 x d_model`` values: 768 for Whisper tiny.en, 1,024 for base). The
network standardises them with the training set's statistics (kept as buffers, so the ONNX
export holds them), then a dropout-regularised hidden layer and a linear layer give logits
over MELD's seven classes (:data:`~erc_ros.core.types.FACE_CLASSES` order).

It also says how familiar a voice is: the Mahalanobis distance of its hidden vector to the
nearest class mean of the training voices, with their shared covariance (Lee et al. 2018),
kept as buffers and computed in the same forward pass (:meth:`VoiceNet.forward` returns
``(logits, distance)``). The runtime calls a voice "unfamiliar" past a threshold set on
held-out speakers (the manifest's ``gate``).

A model directory holds ``weights.safetensors`` and a ``manifest.json`` (``kind:
voice_expression``, the config, what the input is, the calibration temperature, the gate,
provenance with the training data and its licence, every file's sha256).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from erc_ros.core.types import FACE_CLASSES
from erc_ros.models.net_dir import load_into, load_net_state, save_net_dir

#: What a voice model's manifest says it is.
MODEL_KIND = "voice_expression"


@dataclass
class VoiceNetConfig:
    input_dim: int = 1024       # 2 x the encoder's width (mean and standard deviation)
    hidden: int = 256
    dropout: float = 0.3        # after the hidden layer
    input_dropout: float = 0.1  # on the standardised input
    label_names: tuple[str, ...] = field(default_factory=lambda: tuple(FACE_CLASSES))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["label_names"] = list(self.label_names)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> VoiceNetConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "label_names" in known:
            known["label_names"] = tuple(known["label_names"])
        return cls(**known)


class VoiceNet(nn.Module):
    """``net(pooled[n, input_dim]) -> (logits[n, classes], distance[n])``."""

    def __init__(self, config: VoiceNetConfig):
        super().__init__()
        self.config = config
        n, d, h = len(config.label_names), config.input_dim, config.hidden
        self.register_buffer("input_mean", torch.zeros(d))
        self.register_buffer("input_std", torch.ones(d))
        self.body = nn.Sequential(nn.Dropout(config.input_dropout), nn.Linear(d, h), nn.GELU(),
                                  nn.Dropout(config.dropout))
        self.head = nn.Linear(h, n)
        # the familiarity measure: class means of the training voices' hidden vectors and
        # the inverse of their shared covariance (set by fit_familiarity)
        self.register_buffer("class_means", torch.zeros(n, h))
        self.register_buffer("precision", torch.eye(h))

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.config.label_names

    def set_input_statistics(self, pooled: np.ndarray) -> None:
        """Standardise by the mean and standard deviation of the training set's inputs."""
        x = torch.as_tensor(np.asarray(pooled, np.float32))
        self.input_mean.copy_(x.mean(0))
        self.input_std.copy_(x.std(0) + 1e-5)

    def hidden(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.body((pooled - self.input_mean) / self.input_std)

    def distance(self, h: torch.Tensor) -> torch.Tensor:
        """Squared Mahalanobis distance of hidden vectors to the nearest class mean."""
        diff = h.unsqueeze(1) - self.class_means.unsqueeze(0)        # (n, classes, h)
        d = ((diff @ self.precision) * diff).sum(-1)                   # (n, classes)
        return d.min(dim=1).values

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.hidden(pooled)
        return self.head(h), self.distance(h)

    @torch.no_grad()
    def fit_familiarity(self, pooled: np.ndarray, labels: np.ndarray, ridge: float = 1e-3
                        ) -> None:
        """Class means and shared covariance of the hidden vectors of ``pooled`` (the
        training voices, the net in eval mode)."""
        was = self.training
        self.eval()
        h = self.hidden(torch.as_tensor(np.asarray(pooled, np.float32))).double()
        y = torch.as_tensor(np.asarray(labels, np.int64))
        means = torch.stack([h[y == c].mean(0) if (y == c).any() else h.mean(0)
                             for c in range(len(self.label_names))])
        r = h - means[y]
        cov = r.T @ r / max(1, len(r) - 1) + ridge * torch.eye(h.shape[1], dtype=h.dtype)
        self.class_means.copy_(means.float())
        self.precision.copy_(torch.linalg.inv(cov).float())
        self.train(was)


def save_voice_model(net: VoiceNet, model_dir: str | Path, model_id: str, *, encoder: dict,
                     calibration: dict, gate: dict, provenance: Optional[dict] = None) -> Path:
    """Write ``net`` as a self-describing model directory. ``encoder``: what makes its input
    (Whisper model, compute type, trimming); ``calibration``: ``{"temperature": T}``;
    ``gate``: the thresholds of the runtime's "uncertain" (see
    :class:`erc_ros.runtime.voice_expert.VoiceGate`)."""
    return save_net_dir(net, model_dir, kind=MODEL_KIND, model_id=model_id,
                        label_names=net.label_names, config=net.config.to_dict(),
                        fields={"input": {"encoder": encoder, "pooling": "mean+std over time",
                                          "sample_rate": 16000},
                                "calibration": calibration, "gate": gate},
                        provenance=provenance)


def load_voice_model(model_dir: str | Path) -> tuple[VoiceNet, dict]:
    """(the network in eval mode, its manifest), every listed file's sha256 checked."""
    state, m = load_net_state(model_dir, MODEL_KIND, "voice-expression")
    return load_into(VoiceNet(VoiceNetConfig.from_dict(m["config"])), state, model_dir), m
