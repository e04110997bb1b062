"""Faces for generated conversations: the real, sharp, public-domain portraits that installed
packages ship, cut square around the face, one per speaker."""
from __future__ import annotations

import cv2
import numpy as np

from erc_ros.core.faces import crop

# The real, sharp, public-domain portraits that installed packages ship (the face expert
# reads them: docs/faces.md), with the core's Haar box (x, y, w, h) on the full image. Every
# other face a package ships is scikit-image's 25x25 LFW thumbnails, too small to read.
_FACES = (("astronaut", (177, 66, 95, 95)),  # scikit-image: Eileen Collins (NASA), smiling
          ("grace_hopper", (158, 106, 216, 216)))  # matplotlib: Grace Hopper (US Navy)
#: Side of the square cut around a face, relative to its box: the detector needs some margin.
_FACE_SIDE = 1.4
#: Where the mouth sits, as a fraction of the square's height (frame_at opens it there).
MOUTH_Y = 0.8


def _portrait(name: str) -> np.ndarray:
    if name == "astronaut":
        from skimage import data

        return data.astronaut()
    from matplotlib import cbook

    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def face_image(index: int, size: int = 160) -> np.ndarray:
    """Speaker ``index``'s face, ``size`` x ``size`` RGB uint8: a real photographed face the
    face expert can read (scikit-image's astronaut, matplotlib's Grace Hopper), cut square
    around its face with the mouth at :data:`MOUTH_Y` of the height. Only two such faces
    ship in packages, so speakers 2 and 3 get them mirrored, and from 4 on a colour cast
    per group of four keeps every speaker's image distinct."""
    name, (x, y, w, h) = _FACES[index % len(_FACES)]
    side = _FACE_SIDE * w
    above = MOUTH_Y * _FACE_SIDE - 0.8  # both mouths sit at 0.8 of their Haar box's height
    box = np.array([x + w / 2 - side / 2, y - above * h, side, side])
    img = crop(_portrait(name), box, size, 0.0)
    if (index // len(_FACES)) % 2:
        img = np.ascontiguousarray(img[:, ::-1])
    group = index // (2 * len(_FACES))
    if group:
        tint = np.array([[1.0, 0.9, 0.8], [0.85, 0.92, 1.0], [0.92, 1.0, 0.85]])[(group - 1) % 3]
        img = np.clip(img * tint[None, None, :], 0, 255).astype(np.uint8)
    return img
