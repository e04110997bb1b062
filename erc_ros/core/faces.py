"""Faces: a cheap frame buffer, Haar face detection on chosen frames, speaker crops.

Running a detector on every 640x480 frame at 15 fps does not fit two cores, so
:class:`FrameBuffer` only keeps frames (thinned to ``store_fps``, optionally downscaled, in a
bounded time-indexed buffer) and detection runs on the ``count`` frames chosen for an
utterance, on a copy downscaled to ``detect_width`` with boxes mapped back to the stored
resolution; detections are cached per frame.

With several faces, :func:`select_speaker` groups boxes across the chosen frames into
tracks and scores each by mouth-region motion (the lower part of the face changes while a
person talks), weighted by how much voice activity each frame has, plus size and
centrality. The winner's crops (square, with a margin, ``size`` x ``size``) make the
utterance's fixed-count face sequence.

:func:`unreadable` is the face-expression expert's quality gate on one face: too few pixels
(the box as detected, before any resize) or too blurred (:func:`sharpness`) to read an
expression from; :func:`normalized_entropy` says how undecided a distribution is
(docs/faces.md, "Quality gate").
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np

from .errors import ImageDecodeError, StampError
from .types import Frame

if TYPE_CHECKING:
    from .config import FaceConfig


def _cv2():
    import cv2

    return cv2


def as_rgb_image(image) -> np.ndarray:
    """A frame's image as HxWx3 uint8 RGB, or ImageDecodeError. Accepts RGB, grey (HxW or
    HxWx1), RGBA, and encoded bytes (JPEG/PNG, decoded with OpenCV)."""
    cv2 = _cv2()
    if isinstance(image, (bytes, bytearray, memoryview)):
        buf = np.frombuffer(bytes(image), np.uint8)
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
        if img is None:
            raise ImageDecodeError(f"{len(buf)} bytes of image data could not be decoded")
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if not isinstance(image, np.ndarray):
        raise ImageDecodeError(f"image must be a numpy array or encoded bytes, got "
                               f"{type(image).__name__}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ImageDecodeError(f"image of shape {image.shape} is not HxWx3 RGB")
    if image.shape[0] < 8 or image.shape[1] < 8:
        raise ImageDecodeError(f"image of shape {image.shape} is too small")
    if image.dtype != np.uint8:
        if image.dtype.kind == "f" and np.all(np.isfinite(image)) and image.max() <= 1.0:
            image = (np.clip(image, 0, 1) * 255).astype(np.uint8)
        else:
            raise ImageDecodeError(f"image dtype {image.dtype} is not uint8")
    if image.shape[2] == 4:
        image = image[:, :, :3]
    return image


#: Side of the grey square :func:`sharpness` measures a face box on (the expert's input size).
SHARPNESS_SIZE = 32
#: Why :func:`unreadable` refuses a face.
TOO_SMALL, TOO_BLURRED = "small", "blurred"


def sharpness(image: np.ndarray, box) -> float:
    """How much fine detail the face in ``box`` (x, y, w, h) of ``image`` (RGB) holds at the
    scale the expert reads it: the variance of the Laplacian of the box's inner 60 % (eyes,
    nose, mouth: not the hair line or the edge against the background, which stay sharp on an
    enlarged face) as a 32x32 grey image, over the variance of its pixels (so lighting and
    contrast cancel out). Measured on FER2013 public_test faces made into kinds
    (``evaluate-face --gate-report``, docs/faces.md): 48 px crops median 0.67, the same faces
    as a webcam gives them at 60-120 px 0.33 (1st percentile 0.09), real portraits at 60-120
    px 0.34 and up; shrunk to 16-24 px and enlarged 0.10, blurred (sigma 2 px at 48 px)
    0.04."""
    cv2 = _cv2()
    x, y, w, h = (float(v) for v in box[:4])
    inner = np.array([x + 0.2 * w, y + 0.2 * h, 0.6 * w, 0.6 * h])
    g = cv2.cvtColor(crop(image, inner, SHARPNESS_SIZE, 0.0),
                     cv2.COLOR_RGB2GRAY).astype(np.float64)
    return float(cv2.Laplacian(g, cv2.CV_64F).var() / max(float(g.var()), 1.0))


def unreadable(image: np.ndarray, box, min_pixels: float, min_sharpness: float) -> str:
    """Why the face-expression expert cannot read the face in ``box`` of ``image``:
    :data:`TOO_SMALL` when the box is narrower than ``min_pixels`` (pixels of ``image``,
    before any resize), :data:`TOO_BLURRED` when its :func:`sharpness` is below
    ``min_sharpness``; "" when it is readable. A limit of 0 is off."""
    if min_pixels > 0 and min(float(box[2]), float(box[3])) < min_pixels:
        return TOO_SMALL
    if min_sharpness > 0 and sharpness(image, box) < min_sharpness:
        return TOO_BLURRED
    return ""


def bits8(grey16: np.ndarray) -> np.ndarray:
    """16-bit grey -> 8 bits, shifted right by the bits its brightest pixel uses beyond 8:
    an image using all 16 bits keeps its top byte (``>> 8``), a 12-bit camera's ``>> 4``, one
    that fits in 8 bits stays as it is. Black stays black and brightness stays relative to
    the camera's own range (no per-image stretch)."""
    shift = max(0, int(grey16.max(initial=0)).bit_length() - 8)
    return (grey16 >> shift).astype(np.uint8)


def normalized_entropy(probabilities) -> float:
    """Entropy of a class distribution over log(number of classes): 0 when one class has it
    all, 1 when every class is as likely."""
    p = np.clip(np.asarray(probabilities, np.float64), 0.0, None)
    if p.size < 2 or p.sum() <= 0:
        return 0.0
    p = p / p.sum()
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum() / np.log(p.size))


@dataclass
class StoredFrame:
    stamp: float
    image: np.ndarray  # RGB, at the stored resolution
    boxes: Optional[np.ndarray] = None  # (n, 4) x, y, w, h once detected
    # (n, k) the face-expression expert's probabilities of each box, once classified
    expressions: Optional[np.ndarray] = None
    # Per box, why the expert cannot read it (:func:`unreadable`; "" readable), once classified
    unreadable: Optional[list] = None


class FrameBuffer:
    """Bounded, time-ordered frames, thinned to ``store_fps`` and at most ``max_width``."""

    def __init__(self, buffer_s: float = 20.0, store_fps: float = 8.0, max_width: int = 640,
                 clock_reset_s: float = 1.0):
        self.buffer_s = buffer_s
        self.min_dt = 1.0 / store_fps if store_fps > 0 else 0.0
        self.max_width = max_width
        self.clock_reset_s = clock_reset_s
        self.frames: list[StoredFrame] = []
        self.counters = {"frames_in": 0, "frames_kept": 0, "frames_thinned": 0,
                         "frames_refused": 0, "frame_clock_resets": 0}

    def reset(self) -> None:
        self.frames.clear()

    def push(self, frame: Frame) -> bool:
        """Store ``frame`` (or skip it when thinning); raises ImageDecodeError/StampError."""
        self.counters["frames_in"] += 1
        stamp = float(frame.stamp)
        if not math.isfinite(stamp):
            self.counters["frames_refused"] += 1
            raise StampError(f"frame stamp {frame.stamp!r} is not a finite time")
        try:
            img = as_rgb_image(frame.image)
        except ImageDecodeError:
            self.counters["frames_refused"] += 1
            raise
        if self.frames and stamp < self.frames[-1].stamp - self.clock_reset_s:
            self.frames.clear()  # bag loop or clock reset
            self.counters["frame_clock_resets"] += 1
        if self.frames:
            k = bisect.bisect_left([f.stamp for f in self.frames[-4:]], stamp)
            near = self.frames[-4:][max(0, k - 1):k + 1]
            if any(abs(f.stamp - stamp) < self.min_dt for f in near):
                self.counters["frames_thinned"] += 1
                return False
        if img.shape[1] > self.max_width:
            cv2 = _cv2()
            h = int(round(img.shape[0] * self.max_width / img.shape[1]))
            img = cv2.resize(img, (self.max_width, h), interpolation=cv2.INTER_AREA)
        elif img is frame.image:
            img = img.copy()  # the caller may reuse its array
        sf = StoredFrame(stamp, img)
        if not self.frames or stamp >= self.frames[-1].stamp:
            self.frames.append(sf)
        else:
            bisect.insort(self.frames, sf, key=lambda f: f.stamp)
        newest = self.frames[-1].stamp
        while self.frames and self.frames[0].stamp < newest - self.buffer_s:
            self.frames.pop(0)
        self.counters["frames_kept"] += 1
        return True

    def select(self, t0: float, t1: float, count: int) -> list[StoredFrame]:
        """Up to ``count`` distinct frames spread evenly over [t0, t1]: for each target time
        the nearest frame, preferring one whose faces were already detected (while the
        person spoke) if it is within half a spacing, so little detection is left to do."""
        stamps = [f.stamp for f in self.frames]
        a, b = bisect.bisect_left(stamps, t0), bisect.bisect_right(stamps, t1)
        inside = self.frames[a:b]
        if len(inside) <= count:
            return list(inside)
        spacing = (t1 - t0) / count
        targets = t0 + (np.arange(count) + 0.5) * spacing
        ts = np.array([f.stamp for f in inside])
        detected = np.array([f.boxes is not None for f in inside])
        picked = set()
        for t in targets:
            d = np.abs(ts - t)
            near_detected = np.where(detected & (d <= spacing / 2), d, np.inf)
            i = int(np.argmin(near_detected)) if np.isfinite(near_detected).any() else \
                int(np.argmin(d))
            picked.add(i)
        return [inside[i] for i in sorted(picked)]


class FaceDetector:
    """OpenCV Haar frontal-face cascade on a downscaled grey copy."""

    def __init__(self, detect_width: int = 256, scale_factor: float = 1.2,
                 min_neighbors: int = 4, min_face_frac: float = 0.1):
        cv2 = _cv2()  # its thread pool is sized once per process (erc_ros.process)
        path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise RuntimeError(f"could not load the Haar cascade {path} (opencv-python < 5?)")
        self.detect_width = detect_width
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_face_frac = min_face_frac
        self.calls = 0

    def detect(self, image: np.ndarray) -> np.ndarray:
        cv2 = _cv2()
        h, w = image.shape[:2]
        s = min(1.0, self.detect_width / w)
        small = cv2.resize(image, (int(round(w * s)), int(round(h * s))),
                           interpolation=cv2.INTER_AREA) if s < 1 else image
        grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
        m = max(12, int(self.min_face_frac * grey.shape[1]))
        boxes = self.cascade.detectMultiScale(grey, self.scale_factor, self.min_neighbors,
                                              minSize=(m, m))
        self.calls += 1
        if len(boxes) == 0:
            return np.zeros((0, 4), np.float32)
        return (np.asarray(boxes, np.float32) / s).astype(np.float32)

    def boxes(self, frame: StoredFrame) -> np.ndarray:
        if frame.boxes is None:
            frame.boxes = self.detect(frame.image)
        return frame.boxes


def detector_for(fc: "FaceConfig") -> FaceDetector:
    """The face detector the perception core runs, from its ``faces`` section (training
    builds the very same one: what it crops is what the robot crops)."""
    return FaceDetector(fc.detect_width, 1.2, 4, fc.min_face_fraction)


def due_for_detection(frames: list[StoredFrame], since: float, detect_fps: float
                      ) -> Optional[StoredFrame]:
    """The next frame (from ``since`` on) that detection while the person speaks wants: the
    first without boxes at least ``1 / detect_fps`` after the last one detected; None when
    none is due (or ``detect_fps`` is 0)."""
    if detect_fps <= 0:
        return None
    last = -math.inf
    for f in frames:
        if f.stamp < since:
            continue
        if f.boxes is not None:
            last = f.stamp
        elif f.stamp - last >= 1.0 / detect_fps:
            return f
    return None


def speaker_faces(frames: "FrameBuffer", detector: FaceDetector, fc: "FaceConfig",
                  start: float, end: float,
                  activity: Optional[Callable[[np.ndarray], np.ndarray]] = None
                  ) -> tuple[list[StoredFrame], FaceSelection]:
    """(the frames chosen for the utterance [start, end], the speaker's face selection), as
    an utterance closes: ``fc.count`` frames spread over the span, then
    :func:`select_speaker` with ``fc``'s settings. ``activity(stamps)``: voice activity at
    the chosen frames' stamps (None: uniform)."""
    chosen = frames.select(start, end, fc.count)
    act = activity(np.array([f.stamp for f in chosen])) if chosen and activity else None
    sel = select_speaker(chosen, detector, fc.size, fc.count, act,
                         use_motion=fc.use_av_activity, margin=fc.margin,
                         detect_frames=fc.detect_frames, make_crops=fc.crops)
    return chosen, sel


@dataclass
class Track:
    boxes: dict = field(default_factory=dict)  # frame index -> box

    def mean_box(self) -> np.ndarray:
        return np.mean(np.stack(list(self.boxes.values())), axis=0)


def _tracks(all_boxes: list[np.ndarray]) -> list[Track]:
    """Greedy grouping of boxes across frames by centre distance (relative to box size)."""
    tracks: list[Track] = []
    for i, boxes in enumerate(all_boxes):
        used = set()
        for b in sorted(boxes, key=lambda b: -b[2] * b[3]):
            c = b[:2] + b[2:] / 2
            best, bd = None, 0.6
            for k, tr in enumerate(tracks):
                if k in used or i in tr.boxes:
                    continue
                mb = tr.mean_box()
                d = np.linalg.norm(c - (mb[:2] + mb[2:] / 2)) / max(mb[2], 1.0)
                if d < bd:
                    best, bd = k, d
            if best is None:
                tracks.append(Track({i: b}))
                used.add(len(tracks) - 1)
            else:
                tracks[best].boxes[i] = b
                used.add(best)
    return tracks


def _mouth(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    cv2 = _cv2()
    x, y, w, h = box
    x0, x1 = int(x + 0.2 * w), int(x + 0.8 * w)
    y0, y1 = int(y + 0.62 * h), int(y + 0.95 * h)
    patch = image[max(0, y0):max(1, y1), max(0, x0):max(1, x1)]
    if patch.size == 0:
        return np.zeros((12, 24), np.float32)
    g = cv2.cvtColor(np.ascontiguousarray(patch), cv2.COLOR_RGB2GRAY)
    return cv2.resize(g, (24, 12), interpolation=cv2.INTER_AREA).astype(np.float32)


def crop(image: np.ndarray, box: np.ndarray, size: int, margin: float = 0.2) -> np.ndarray:
    """Square crop around ``box`` enlarged by ``margin``, resized to ``size`` x ``size``
    (pixels outside the image are edge-replicated)."""
    cv2 = _cv2()
    x, y, w, h = box
    cx, cy, side = x + w / 2, y + h / 2, max(w, h) * (1 + 2 * margin)
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    s = max(1, int(round(side)))
    H, W = image.shape[:2]
    pad = max(0, -x0, -y0, x0 + s - W, y0 + s - H)
    img = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE) if pad else image
    patch = img[y0 + pad:y0 + pad + s, x0 + pad:x0 + pad + s]
    return cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)


@dataclass
class FaceSelection:
    crops: list[np.ndarray]
    stamps: list[float]
    n_faces: int  # distinct face tracks seen
    scores: list[float]  # per track, best first
    reason: str  # "av_activity", "largest_central", "single", "none"
    boxes: list = field(default_factory=list)  # the (x, y, w, h) each crop was cut from
    # The chosen face's detections: (key frame, index of the face's box in its boxes), in
    # time order (what the face-expression expert looks at).
    keys: list = field(default_factory=list)


def select_speaker(frames: list[StoredFrame], detector: FaceDetector, size: int, count: int,
                   activity: Optional[np.ndarray] = None, use_motion: bool = True,
                   motion_weight: float = 1.0, size_weight: float = 0.3,
                   center_weight: float = 0.2, margin: float = 0.2,
                   detect_frames: int = 1, make_crops: bool = True) -> FaceSelection:
    """The speaking person's face crops over ``frames`` (see module doc); ``make_crops``
    false: the choice only (boxes, keys), no crops cut.

    Detection runs until ``detect_frames`` key frames have boxes (frames detected earlier,
    while the person was speaking, count); the other frames reuse the boxes of the nearest
    key frame, which is enough for people who talk rather than run.
    """
    if not frames:
        return FaceSelection([], [], 0, [], "none")
    done = [i for i, f in enumerate(frames) if f.boxes is not None]
    if len(done) < detect_frames:
        spread = np.linspace(0, len(frames) - 1, min(detect_frames, len(frames))).round()
        for i in dict.fromkeys(int(v) for v in spread):
            if len(done) >= detect_frames:
                break
            if frames[i].boxes is None:
                detector.boxes(frames[i])
                done.append(i)
        done.sort()
    keys = [i for i in range(len(frames)) if frames[i].boxes is not None]
    key_tracks = _tracks([frames[i].boxes for i in keys])
    if not key_tracks:
        return FaceSelection([], [], 0, [], "none")
    stamps = np.array([f.stamp for f in frames])
    tracks = []
    for kt in key_tracks:  # key-frame positions -> every frame, nearest key frame's box
        kidx = np.array([keys[p] for p in sorted(kt.boxes)])
        kbox = [kt.boxes[p] for p in sorted(kt.boxes)]
        near = np.abs(stamps[:, None] - stamps[kidx][None, :]).argmin(axis=1)
        tracks.append((Track({j: kbox[near[j]] for j in range(len(frames))}),
                       len(kidx) / len(keys)))
    H, W = frames[0].image.shape[:2]
    act = np.ones(len(frames)) if activity is None else np.asarray(activity, float)
    raw = []
    for tr, presence in tracks:
        mb = tr.mean_box()
        size_s = math.sqrt(mb[2] * mb[3]) / math.sqrt(W * H)
        cx, cy = (mb[0] + mb[2] / 2) / W - 0.5, (mb[1] + mb[3] / 2) / H - 0.5
        centre = 1.0 - min(1.0, 2 * math.hypot(cx, cy))
        motion = 0.0
        if use_motion and len(frames) > 1:
            diffs, ws = [], []
            for i in range(len(frames) - 1):
                box = tr.boxes[i]  # same region in both frames: only the content changes
                mi, mj = _mouth(frames[i].image, box), _mouth(frames[i + 1].image, box)
                diffs.append(float(np.mean(np.abs(mi - mj))) / (float(np.mean(mi)) + 10.0))
                ws.append(0.5 * (act[i] + act[i + 1]))
            motion = float(np.average(diffs, weights=np.asarray(ws) + 1e-3))
        raw.append((motion, size_s, centre, presence))
    raw = np.asarray(raw)
    mot = raw[:, 0] / raw[:, 0].max() if raw[:, 0].max() > 0 else np.zeros(len(raw))
    siz = raw[:, 1] / raw[:, 1].max()
    scores = (motion_weight * mot + size_weight * siz + center_weight * raw[:, 2]) * \
        (0.5 + 0.5 * raw[:, 3])
    order = np.argsort(-scores)
    best = tracks[int(order[0])][0]
    reason = "single" if len(tracks) == 1 else (
        "av_activity" if use_motion and raw[:, 0].max() > 0 else "largest_central")
    idx = sorted(best.boxes)
    crops = [crop(frames[i].image, best.boxes[i], size, margin) for i in idx] \
        if make_crops else []
    cstamps = [frames[i].stamp for i in idx]
    boxes = [best.boxes[i] for i in idx]
    if crops and len(crops) < count:  # fixed count: repeat the nearest frames in time
        pos = np.linspace(0, len(crops) - 1, count).round().astype(int)
        crops, cstamps = [crops[p] for p in pos], [cstamps[p] for p in pos]
        boxes = [boxes[p] for p in pos]
    kt = key_tracks[int(order[0])]
    sel_keys = []
    for p in sorted(kt.boxes):
        f = frames[keys[p]]
        sel_keys.append((f, int(np.abs(f.boxes - kt.boxes[p]).sum(axis=1).argmin())))
    return FaceSelection(crops[:count], cstamps[:count], len(tracks),
                         [float(scores[k]) for k in order], reason, boxes[:count], sel_keys)
