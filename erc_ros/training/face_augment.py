"""What a robot's camera does to a face, as augmentation for training a face-expression
expert on 48x48 grey faces (:mod:`erc_ros.datasets.fer2013` reads them)."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class AugmentConfig:
    shift: float = 5.0            # random crop: up to this many pixels each way
    rotate: float = 12.0          # degrees, each way
    scale: float = 0.1            # zoom in or out by up to this fraction
    flip: float = 0.5             # probability of a horizontal mirror
    brightness: float = 0.25      # +- this fraction of the range (probability ``photometric``)
    contrast: float = 0.3         # x (1 +- this) about the face's mean
    photometric: float = 0.8
    blur: float = 0.2             # probability of a Gaussian blur, sigma 0.3-1.2 px
    jpeg: float = 0.3             # probability of a JPEG re-encode, quality 30-90
    downscale: float = 0.25       # probability of a downscale to 16-32 px and back
    erase: float = 0.0            # probability of a random erasing (grey box, 2-20 % of the face)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class FaceAugment:
    """``augment(images uint8 (n, 48, 48), rng) -> uint8 (n, 48, 48)``: a random shift / crop,
    rotation and zoom (one affine warp, borders reflected), mirror, brightness / contrast,
    Gaussian blur, JPEG re-encoding and a downscale-upscale, each image drawn on its own.
    numpy and OpenCV only (OpenCV releases the GIL: a loader thread overlaps it with the
    network's step)."""

    def __init__(self, config: AugmentConfig):
        self.config = config

    def __call__(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        c = self.config
        n, h, w = images.shape
        out = np.empty_like(images)
        centre = ((w - 1) / 2.0, (h - 1) / 2.0)
        for i in range(n):
            a = images[i]
            if c.rotate or c.scale or c.shift:
                m = cv2.getRotationMatrix2D(centre, rng.uniform(-c.rotate, c.rotate),
                                            1.0 + rng.uniform(-c.scale, c.scale))
                m[:, 2] += rng.uniform(-c.shift, c.shift, 2)
                a = cv2.warpAffine(a, m, (w, h), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_REFLECT_101)
            if rng.random() < c.downscale:
                s = int(rng.integers(16, 33))
                a = cv2.resize(cv2.resize(a, (s, s), interpolation=cv2.INTER_AREA), (w, h),
                               interpolation=cv2.INTER_LINEAR)
            if rng.random() < c.blur:
                a = cv2.GaussianBlur(a, (0, 0), rng.uniform(0.3, 1.2))
            if rng.random() < c.jpeg:
                ok, buf = cv2.imencode(".jpg", a, [cv2.IMWRITE_JPEG_QUALITY,
                                                   int(rng.integers(30, 91))])
                if ok:
                    a = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
            out[i] = a
        x = out.astype(np.float32)
        if c.photometric:
            on = rng.random(n) < c.photometric
            gain = np.where(on, 1.0 + rng.uniform(-c.contrast, c.contrast, n), 1.0)
            bias = np.where(on, rng.uniform(-c.brightness, c.brightness, n) * 255.0, 0.0)
            mean = x.mean(axis=(1, 2), keepdims=True)
            x = (x - mean) * gain[:, None, None].astype(np.float32) + mean + \
                bias[:, None, None].astype(np.float32)
        if c.erase:
            for i in np.flatnonzero(rng.random(n) < c.erase):
                area = rng.uniform(0.02, 0.2) * h * w
                ratio = np.exp(rng.uniform(np.log(0.3), np.log(3.3)))
                eh = int(min(h, round(np.sqrt(area * ratio))))
                ew = int(min(w, round(np.sqrt(area / ratio))))
                y0, x0 = int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1))
                x[i, y0:y0 + eh, x0:x0 + ew] = rng.uniform(0, 255)
        flip = rng.random(n) < c.flip
        x[flip] = x[flip, :, ::-1]
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)

