"""mini-Xception (Arriaga, Ploeger & Valdenegro, 2017) in PyTorch, built from and loaded from
a Keras HDF5 file -- the face-expression expert's network (:mod:`erc_ros.models.face_expert`).

The Keras graph (the file's ``model_config``) is read, checked layer by layer against the
shape this module implements, and the sizes are taken from it (:func:`config_from_keras`)::

    input HxWx1 -> [Conv2D 3x3 valid, no bias -> BN -> ReLU] x 2            (stem)
    -> per block (16, 32, 64, 128 filters):
         main:     SepConv 3x3 same -> BN -> ReLU -> SepConv 3x3 same -> BN
                   -> MaxPool 3x3 / 2 same
         residual: Conv2D 1x1 / 2 same, no bias -> BN
         Add
    -> Conv2D 3x3 same (classes, bias) -> global average pool -> softmax

Two TensorFlow conventions matter for exactness: ``same`` padding with stride 2 pads the
bottom/right side more than the top/left (so the max-pool pads are asymmetric and depend on
the input size: 60 -> (0, 1), 15 -> (1, 1)), with -inf for a max pool; and Keras stores
kernels as (kh, kw, in, out), depthwise kernels as (kh, kw, in, multiplier). Batch norm is in
inference form (moving statistics, Keras's epsilon 1e-3).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class MiniXceptionConfig:
    input_size: int = 64
    in_channels: int = 1
    stem_filters: tuple = (8, 8)
    block_filters: tuple = (16, 32, 64, 128)
    num_classes: int = 7
    bn_eps: float = 1e-3

    def to_dict(self) -> dict:
        return asdict(self)


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's ``same`` padding along one axis: (before, after), the odd pixel after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SeparableConv2d(nn.Module):
    """Keras SeparableConv2D (depth multiplier 1, ``same``, stride 1, no bias): a depthwise
    3x3 then a pointwise 1x1."""

    def __init__(self, cin: int, cout: int, kernel: int = 3):
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, kernel, padding=kernel // 2, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


class XceptionBlock(nn.Module):
    """Two separable convolutions and a strided max pool, plus a strided 1x1 residual."""

    def __init__(self, cin: int, cout: int, in_size: int, eps: float):
        super().__init__()
        self.sep1 = SeparableConv2d(cin, cout)
        self.bn1 = nn.BatchNorm2d(cout, eps=eps)
        self.sep2 = SeparableConv2d(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout, eps=eps)
        self.residual = nn.Conv2d(cin, cout, 1, stride=2, bias=False)
        self.residual_bn = nn.BatchNorm2d(cout, eps=eps)
        a, b = same_pads(in_size, 3, 2)
        self.pool_pad = (a, b, a, b)  # F.pad order: left, right, top, bottom
        a, b = same_pads(in_size, 1, 2)
        self.residual_pad = (a, b, a, b)
        self.out_size = math.ceil(in_size / 2)

    def forward(self, x):
        r = F.pad(x, self.residual_pad) if any(self.residual_pad) else x
        r = self.residual_bn(self.residual(r))
        y = F.relu(self.bn1(self.sep1(x)))
        y = self.bn2(self.sep2(y))
        y = F.max_pool2d(F.pad(y, self.pool_pad, value=float("-inf")), 3, 2)
        return y + r


class MiniXception(nn.Module):
    """``forward(x [B, C, S, S] in [-1, 1]) -> class probabilities [B, classes]`` (softmax, as
    the Keras model outputs)."""

    def __init__(self, config: MiniXceptionConfig = MiniXceptionConfig()):
        super().__init__()
        self.config = config
        eps = config.bn_eps
        stem, cin, size = [], config.in_channels, config.input_size
        for f in config.stem_filters:
            stem += [nn.Conv2d(cin, f, 3, bias=False), nn.BatchNorm2d(f, eps=eps), nn.ReLU()]
            cin, size = f, size - 2
        self.stem = nn.Sequential(*stem)
        blocks = []
        for f in config.block_filters:
            blocks.append(XceptionBlock(cin, f, size, eps))
            cin, size = f, blocks[-1].out_size
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Conv2d(cin, config.num_classes, 3, padding=1, bias=True)

    def logits(self, x):
        s = self.config.input_size
        if tuple(x.shape[-2:]) != (s, s):  # the max-pool pads depend on the size
            raise ValueError(f"input of spatial size {tuple(x.shape[-2:])}, expected {(s, s)}")
        y = self.head(self.blocks(self.stem(x)))
        return y.mean(dim=(2, 3))

    def forward(self, x):
        return torch.softmax(self.logits(x), dim=-1)


# ------------------------------------------------------------------ Keras HDF5 -> torch

class KerasGraphMismatch(ValueError):
    """The HDF5 model is not the mini-Xception graph this module implements."""


def _layers(model_config: dict) -> tuple[dict, dict]:
    layers = {l["name"]: l for l in model_config["config"]["layers"]}
    inbound = {n: [i[0] for i in l["inbound_nodes"][0]] if l.get("inbound_nodes") else []
               for n, l in layers.items()}
    return layers, inbound


def config_from_keras(model_config: dict) -> tuple[MiniXceptionConfig, dict[str, str]]:
    """Walk the Keras graph back from its output, check every layer (class, kernel, stride,
    padding, bias, activation, connections) against mini-Xception and return its config and
    ``{torch module path: Keras layer name}`` for the layers with weights. Raises
    :class:`KerasGraphMismatch` naming the first layer that differs."""
    layers, inbound = _layers(model_config)

    def one_input(name: str) -> str:
        if len(inbound[name]) != 1:
            raise KerasGraphMismatch(f"layer {name} has {len(inbound[name])} inputs, expected 1")
        return inbound[name][0]

    def expect(name: str, cls: str, **want) -> dict:
        layer = layers[name]
        if layer["class_name"] != cls:
            raise KerasGraphMismatch(f"layer {name} is a {layer['class_name']}, expected {cls}")
        cfg = layer["config"]
        for k, v in want.items():
            got = cfg.get(k)
            got = list(got) if isinstance(got, (list, tuple)) else got
            if got != v:
                raise KerasGraphMismatch(f"layer {name}: {k} = {got!r}, expected {v!r}")
        if cfg.get("data_format", "channels_last") != "channels_last" or \
                list(cfg.get("dilation_rate", [1, 1])) != [1, 1]:
            raise KerasGraphMismatch(f"layer {name}: unexpected data format or dilation")
        return cfg

    bn = {"center": True, "scale": True}
    names: dict[str, str] = {}
    outputs = model_config["config"]["output_layers"]
    if len(outputs) != 1:
        raise KerasGraphMismatch(f"{len(outputs)} outputs, expected 1")
    out = outputs[0][0]
    expect(out, "Activation", activation="softmax")
    gap = one_input(out)
    expect(gap, "GlobalAveragePooling2D")
    head = one_input(gap)
    classes = expect(head, "Conv2D", kernel_size=[3, 3], strides=[1, 1], padding="same",
                     use_bias=True, activation="linear")["filters"]
    names["head"] = head
    x = one_input(head)
    blocks = []  # last first
    while layers[x]["class_name"] == "Add":
        if len(inbound[x]) != 2:
            raise KerasGraphMismatch(f"layer {x} adds {len(inbound[x])} inputs, expected 2")
        pool, res_bn = sorted(inbound[x], key=lambda n: layers[n]["class_name"] != "MaxPooling2D")
        expect(pool, "MaxPooling2D", pool_size=[3, 3], strides=[2, 2], padding="same")
        bn2 = one_input(pool)
        expect(bn2, "BatchNormalization", **bn)
        sep2 = one_input(bn2)
        f = expect(sep2, "SeparableConv2D", kernel_size=[3, 3], strides=[1, 1], padding="same",
                   depth_multiplier=1, use_bias=False, activation="linear")["filters"]
        act = one_input(sep2)
        expect(act, "Activation", activation="relu")
        bn1 = one_input(act)
        expect(bn1, "BatchNormalization", **bn)
        sep1 = one_input(bn1)
        expect(sep1, "SeparableConv2D", filters=f, kernel_size=[3, 3], strides=[1, 1],
               padding="same", depth_multiplier=1, use_bias=False, activation="linear")
        expect(res_bn, "BatchNormalization", **bn)
        res = one_input(res_bn)
        expect(res, "Conv2D", filters=f, kernel_size=[1, 1], strides=[2, 2], padding="same",
               use_bias=False, activation="linear")
        if one_input(sep1) != one_input(res):
            raise KerasGraphMismatch(f"block {x}: the residual and main paths start at "
                                     f"{one_input(res)} and {one_input(sep1)}")
        blocks.append({"filters": f, "sep1": sep1, "bn1": bn1, "sep2": sep2, "bn2": bn2,
                       "residual": res, "residual_bn": res_bn})
        x = one_input(sep1)
    stem = []  # last first
    while layers[x]["class_name"] == "Activation":
        expect(x, "Activation", activation="relu")
        b = one_input(x)
        expect(b, "BatchNormalization", **bn)
        c = one_input(b)
        f = expect(c, "Conv2D", kernel_size=[3, 3], strides=[1, 1], padding="valid",
                   use_bias=False, activation="linear")["filters"]
        stem.append({"filters": f, "conv": c, "bn": b})
        x = one_input(c)
    shape = expect(x, "InputLayer").get("batch_input_shape")
    if not blocks or not stem or not shape or len(shape) != 4 or shape[1] != shape[2]:
        raise KerasGraphMismatch(f"not a mini-Xception graph (input {shape}, {len(stem)} stem "
                                 f"convolutions, {len(blocks)} blocks)")
    eps = {layers[n]["config"].get("epsilon") for n in layers
           if layers[n]["class_name"] == "BatchNormalization"}
    if len(eps) != 1:
        raise KerasGraphMismatch(f"batch norms with different epsilons {sorted(eps)}")
    stem.reverse()
    blocks.reverse()
    for i, s in enumerate(stem):
        names[f"stem.{3 * i}"], names[f"stem.{3 * i + 1}"] = s["conv"], s["bn"]
    for i, b in enumerate(blocks):
        for part in ("sep1", "bn1", "sep2", "bn2", "residual", "residual_bn"):
            names[f"blocks.{i}.{part}"] = b[part]
    config = MiniXceptionConfig(input_size=int(shape[1]), in_channels=int(shape[3]),
                                stem_filters=tuple(s["filters"] for s in stem),
                                block_filters=tuple(b["filters"] for b in blocks),
                                num_classes=int(classes), bn_eps=float(eps.pop()))
    return config, names


def _keras_arrays(group) -> dict[str, np.ndarray]:
    """A layer's weights by their short name (``kernel``, ``gamma``, ``moving_mean``...)."""
    out = {}
    for raw in group.attrs.get("weight_names", []):
        full = raw.decode() if isinstance(raw, bytes) else str(raw)
        out[full.rsplit("/", 1)[-1].split(":")[0]] = np.asarray(group[full], np.float32)
    return out


def _conv_kernel(k: np.ndarray) -> np.ndarray:
    return k.transpose(3, 2, 0, 1)  # (kh, kw, in, out) -> (out, in, kh, kw)


def read_model_config(path: str | Path) -> dict:
    """The ``model_config`` (Keras graph) stored in an HDF5 model file."""
    import h5py

    with h5py.File(path, "r") as f:
        raw = f.attrs["model_config"]
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)


def load_keras_hdf5(path: str | Path) -> MiniXception:
    """A :class:`MiniXception` with the weights of the Keras HDF5 model at ``path``, in eval
    mode. Every parameter and batch-norm statistic is assigned (strict load); a graph that is
    not mini-Xception raises :class:`KerasGraphMismatch`."""
    import h5py

    with h5py.File(path, "r") as f:
        raw = f.attrs["model_config"]
        config, names = config_from_keras(json.loads(raw.decode() if isinstance(raw, bytes)
                                                     else raw))
        weights = f["model_weights"] if "model_weights" in f else f
        arrays = {module: _keras_arrays(weights[layer]) for module, layer in names.items()}
    model = MiniXception(config)
    state = {}
    for module, w in arrays.items():
        if "gamma" in w:  # BatchNormalization
            state.update({f"{module}.weight": w["gamma"], f"{module}.bias": w["beta"],
                          f"{module}.running_mean": w["moving_mean"],
                          f"{module}.running_var": w["moving_variance"]})
        elif "depthwise_kernel" in w:  # SeparableConv2D, depth multiplier 1
            dw = w["depthwise_kernel"]
            state[f"{module}.depthwise.weight"] = dw.transpose(2, 3, 0, 1).reshape(
                dw.shape[2] * dw.shape[3], 1, dw.shape[0], dw.shape[1])
            state[f"{module}.pointwise.weight"] = _conv_kernel(w["pointwise_kernel"])
        else:  # Conv2D
            state[f"{module}.weight"] = _conv_kernel(w["kernel"])
            if "bias" in w:
                state[f"{module}.bias"] = w["bias"]
    own = model.state_dict()
    for k, v in state.items():
        if k not in own or tuple(own[k].shape) != v.shape:
            raise KerasGraphMismatch(f"{path}: weight {k} of shape {v.shape} does not fit "
                                     f"{tuple(own[k].shape) if k in own else 'the model'}")
    # num_batches_tracked is training bookkeeping with no Keras counterpart.
    state.update({k: v for k, v in own.items() if k.endswith("num_batches_tracked")})
    model.load_state_dict({k: torch.as_tensor(np.ascontiguousarray(v)) for k, v in state.items()},
                          strict=True)
    return model.eval()
