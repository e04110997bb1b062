"""A compact CNN for 48x48 grey faces (:class:`FaceNet`, :class:`FaceNetConfig`) and its model
directory (:func:`save_face_model`, :func:`load_face_model`).

The network is VGG-style, as the single CNNs that read FER2013 best are (Pramerdorfer &
Kampel 2016; Khaireddin & Chen 2021): stages of two 3x3 conv-BN-ReLU layers, each stage
halving the map with a 2x2 max pool (48 -> 24 -> 12 -> 6 -> 3 with four stages), then the
flattened last map through a dropout-regularised two-layer classifier. Widths, depth and
dropout come from the config, so tests build a tiny one.

Input: ``(n, 1, 48, 48)`` float, a grey face resized with INTER_AREA and scaled by
:func:`~erc_ros.models.face_expert.face_input` (``(x / 255 - mean) / std``,
:data:`~erc_ros.models.face_expert.NORMALISATION`). Output: logits over
the config's classes, MELD's :data:`~erc_ros.core.types.FACE_CLASSES` order by default.

A model directory (the one thing that carries the model to the robot) holds
``weights.safetensors`` and a ``manifest.json`` written with :mod:`erc_ros.models.artefact`
(``kind: face_expression``, the config, classes, input size and normalisation, provenance,
every file's sha256); :func:`load_face_model` verifies the hashes and rebuilds the network
from the manifest alone.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from erc_ros.core.types import FACE_CLASSES
from erc_ros.models.net_dir import load_into, load_net_state, save_net_dir
# The input scaling (face_input) lives in the torch-free face_expert module: running a
# prepared expert never imports torch.
from erc_ros.models.face_expert import NORMALISATION

#: What a face model's manifest says it is (an ERC model directory has no ``kind``).
MODEL_KIND = "face_expression"


@dataclass
class FaceNetConfig:
    channels: tuple[int, ...] = (64, 128, 256, 512)
    convs_per_stage: int = 2
    hidden: int = 256          # the classifier's hidden layer (0: global average pool + linear)
    dropout: float = 0.4       # before each classifier layer
    input_size: int = 48
    in_channels: int = 1
    label_names: tuple[str, ...] = field(default_factory=lambda: tuple(FACE_CLASSES))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"], d["label_names"] = list(self.channels), list(self.label_names)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FaceNetConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for k in ("channels", "label_names"):
            if k in known:
                known[k] = tuple(known[k])
        return cls(**known)


def _stage(cin: int, cout: int, convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=False),
                   nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class FaceNet(nn.Module):
    """``net(pixels[n, C, S, S]) -> logits[n, classes]``."""

    def __init__(self, config: FaceNetConfig):
        super().__init__()
        self.config = config
        chans = (config.in_channels, *config.channels)
        self.features = nn.Sequential(*[_stage(a, b, config.convs_per_stage)
                                        for a, b in zip(chans[:-1], chans[1:])])
        side = config.input_size >> len(config.channels)
        if side < 1:
            raise ValueError(f"{len(config.channels)} stages halve a {config.input_size}-px "
                             "input to nothing")
        n = len(config.label_names)
        if config.hidden:
            self.classifier = nn.Sequential(
                nn.Flatten(), nn.Dropout(config.dropout),
                nn.Linear(config.channels[-1] * side * side, config.hidden),
                nn.ReLU(inplace=True), nn.Dropout(config.dropout), nn.Linear(config.hidden, n))
        else:
            self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                            nn.Dropout(config.dropout),
                                            nn.Linear(config.channels[-1], n))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.config.label_names

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(pixels))


class FlipMean(nn.Module):
    """What a face model runs as at deployment: the mean of the softmax of ``net`` on a face
    and on its mirror (test-time flip, as training scores dev); ``(n, 1, S, S) -> (n, classes)``
    probabilities."""

    def __init__(self, net: FaceNet):
        super().__init__()
        self.net = net

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # one pass over the faces and their mirrors (each weight used once in the graph)
        n = pixels.shape[0]
        p = torch.softmax(self.net(torch.cat([pixels, torch.flip(pixels, dims=[3])])), dim=1)
        return 0.5 * (p[:n] + p[n:])


def save_face_model(net: FaceNet, model_dir: str | Path, model_id: str,
                    provenance: Optional[dict] = None) -> Path:
    """Write ``net`` as a self-describing model directory (float32 safetensors + manifest
    with every file's sha256, :func:`erc_ros.models.net_dir.save_net_dir`)."""
    cfg = net.config
    return save_net_dir(net, model_dir, kind=MODEL_KIND, model_id=model_id,
                        label_names=cfg.label_names, config=cfg.to_dict(), fields={
                            "input": {"size": cfg.input_size, "channels": "grey",
                                      "dtype": "uint8",
                                      "resize": "INTER_AREA (INTER_LINEAR when enlarging)",
                                      "normalisation": dict(NORMALISATION)}},
                        provenance=provenance)


def load_face_model(model_dir: str | Path) -> tuple[FaceNet, dict]:
    """(the network in eval mode, its manifest) from a face model directory, after every
    listed file's sha256 is checked; :class:`ArtefactError` when it is not one."""
    state, m = load_net_state(model_dir, MODEL_KIND, "face-expression")
    return load_into(FaceNet(FaceNetConfig.from_dict(m["config"])), state, model_dir), m
