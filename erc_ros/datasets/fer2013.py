"""Face-expression corpora as :class:`FaceSet` (48x48 grey uint8 faces, labels in MELD's class
order :data:`~erc_ros.core.types.FACE_CLASSES`), one reader per layout (the augmentation that
makes them look like a robot's camera is :mod:`erc_ros.training.face_augment`).

Layouts (:func:`read_faces` picks by the path):

- **npz** (``images`` uint8 (n, H, W) grey, ``labels`` class names, optional ``names``):
  the project's copy of FER2013 (``train.npz``, ``public_test.npz``).
- **FER2013's original CSV** (``emotion,pixels,Usage``): ``emotion`` is FER's 0-6 (angry,
  disgust, fear, happy, sad, surprise, neutral), ``pixels`` 2304 space-separated values of a
  48x48 face, ``Usage`` Training / PublicTest / PrivateTest (a CSV without that column is
  one split).
- **a folder per class** (AffectNet, RAF-DB, CK+ as they come, one split's folder): each
  subfolder is named by a class, MELD's name or a common synonym (:data:`CLASS_SYNONYMS`,
  case-insensitive: angry, happy, sad, fearful, disgusted, surprised, ...), and holds PNG or
  JPEG images (at any depth) read grey and resized to 48x48. Files directly in the top folder
  (a README, a label list) are not read; hidden files are skipped.

Every reader refuses what it cannot read with a :class:`FaceDataError` that names the file
(and row or folder): an unknown class, a wrong pixel count, a missing column or key, a file
that is not an image. Nothing is guessed.
"""
from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from erc_ros.core.types import FACE_CLASSES
from erc_ros.models.face_expert import FER_LABELS, FER_TO_MELD
from erc_ros.paths import sha256_file

FACE_SIZE = 48
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Folder / label names -> MELD's class names (lower case; MELD's own names map to themselves).
CLASS_SYNONYMS = {
    **{c: c for c in FACE_CLASSES},
    "angry": "anger", "mad": "anger",
    "disgusted": "disgust",
    "fearful": "fear", "afraid": "fear", "scared": "fear",
    "happy": "joy", "happiness": "joy", "joyful": "joy",
    "sad": "sadness",
    "surprised": "surprise",
}
#: FER2013's CSV usages.
USAGES = ("Training", "PublicTest", "PrivateTest")
#: What a model trained on a corpus records of its terms.
FER2013_TERMS = ("FER2013 (Goodfellow et al. 2013, ICML challenge; images collected from the "
                 "web, no licence stated): research use only, not redistributed")


class FaceDataError(ValueError):
    """A face corpus that cannot be read as it is; the message names the file and why."""


@dataclass
class FaceSet:
    """Faces and labels: ``images`` uint8 (n, 48, 48), ``labels`` int64 (n,) indices into
    ``classes``. ``source`` says what was read (file and split); ``sha256`` identifies the
    data (the file's, or for a folder the digest of its images' paths and bytes)."""
    images: np.ndarray
    labels: np.ndarray
    source: str
    sha256: str
    classes: tuple[str, ...] = FACE_CLASSES
    names: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self) -> dict[str, int]:
        c = np.bincount(self.labels, minlength=len(self.classes))
        return {k: int(v) for k, v in zip(self.classes, c)}

    def subset(self, index: np.ndarray, source: str) -> "FaceSet":
        return FaceSet(self.images[index], self.labels[index], source, self.sha256,
                       self.classes, None if self.names is None else self.names[index])

    def describe(self) -> str:
        return (f"{self.source}: {len(self)} faces ("
                + ", ".join(f"{k} {v}" for k, v in self.counts().items()) + ")")


def class_index(name: str, where: str) -> int:
    """MELD's index of a class name or synonym; :class:`FaceDataError` naming ``where``."""
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    name = str(name)
    meld = CLASS_SYNONYMS.get(name.strip().lower())
    if meld is None:
        raise FaceDataError(f"{where}: unknown class {name!r}: expected one of MELD's "
                            f"{', '.join(FACE_CLASSES)} or a synonym "
                            f"({', '.join(sorted(set(CLASS_SYNONYMS) - set(FACE_CLASSES)))})")
    return FACE_CLASSES.index(meld)


def to_face_size(image: np.ndarray, size: int = FACE_SIZE) -> np.ndarray:
    """A grey uint8 image as ``size`` x ``size``: INTER_AREA down, INTER_LINEAR up."""
    if image.shape == (size, size):
        return image
    enlarge = image.shape[0] < size or image.shape[1] < size
    return cv2.resize(image, (size, size),
                      interpolation=cv2.INTER_LINEAR if enlarge else cv2.INTER_AREA)


def read_npz(path: str | Path) -> FaceSet:
    path = Path(path)
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise FaceDataError(f"{path}: not a readable .npz ({e})") from None
    with z:
        missing = [k for k in ("images", "labels") if k not in z.files]
        if missing:
            raise FaceDataError(f"{path}: no {' or '.join(missing)} array (it holds "
                                f"{', '.join(z.files) or 'nothing'}): expected images uint8 "
                                "(n, H, W), labels (n,) class names")
        images, labels = z["images"], z["labels"]
        names = z["names"] if "names" in z.files else None
    if images.dtype != np.uint8 or images.ndim != 3:
        raise FaceDataError(f"{path}: images are {images.dtype} {images.shape}: expected grey "
                            "uint8 (n, H, W)")
    if labels.shape != (len(images),):
        raise FaceDataError(f"{path}: {labels.shape} labels for {len(images)} images")
    if names is not None and names.shape != labels.shape:
        names = None
    index = {v: class_index(v, str(path)) for v in np.unique(labels)}
    y = np.array([index[v] for v in labels], np.int64)
    if images.shape[1:] != (FACE_SIZE, FACE_SIZE):
        images = np.stack([to_face_size(a) for a in images])
    return FaceSet(np.ascontiguousarray(images), y, path.name, sha256_file(path),
                   names=names)


def read_fer_csv(path: str | Path, usage: Optional[str] = "Training") -> FaceSet:
    """FER2013's ``emotion,pixels,Usage`` CSV: the rows of ``usage`` (None: every row)."""
    path = Path(path)
    if usage is not None and usage not in USAGES:
        raise FaceDataError(f"usage {usage!r}: one of {', '.join(USAGES)}")
    images, labels = [], []
    n_pixels = FACE_SIZE * FACE_SIZE
    try:
        f = open(path, newline="", encoding="utf-8")
    except OSError as e:
        raise FaceDataError(f"{path}: cannot be read ({e.strerror or e})") from None
    with f:
        rows = csv.DictReader(f)
        cols = [c.strip() for c in rows.fieldnames or []]
        missing = [c for c in ("emotion", "pixels") if c not in cols]
        if missing:
            raise FaceDataError(f"{path}: no {' or '.join(missing)} column (header "
                                f"{cols}): expected FER2013's emotion,pixels,Usage")
        rows.fieldnames = cols
        has_usage = "Usage" in cols
        if usage is not None and not has_usage:
            usage = None  # one split
        for i, row in enumerate(rows, start=2):
            if usage is not None and (row.get("Usage") or "").strip() != usage:
                continue
            try:
                e = int(row["emotion"])
            except (TypeError, ValueError):
                e = -1
            if not 0 <= e < len(FER_LABELS):
                raise FaceDataError(f"{path}, line {i}: emotion {row['emotion']!r} is not "
                                    f"FER2013's 0-6 ({', '.join(FER_LABELS)})")
            try:
                px = np.array((row["pixels"] or "").split(), np.int64)
            except ValueError:
                raise FaceDataError(f"{path}, line {i}: pixels are not integers") from None
            if px.size != n_pixels:
                raise FaceDataError(f"{path}, line {i}: {px.size} pixels, a 48x48 face has "
                                    f"{n_pixels}")
            if px.min() < 0 or px.max() > 255:
                raise FaceDataError(f"{path}, line {i}: pixel values outside 0-255")
            images.append(px.astype(np.uint8).reshape(FACE_SIZE, FACE_SIZE))
            labels.append(FACE_CLASSES.index(FER_TO_MELD[FER_LABELS[e]]))
    if not images:
        raise FaceDataError(f"{path}: no {usage or ''} rows".replace("  ", " "))
    return FaceSet(np.stack(images), np.array(labels, np.int64),
                   f"{path.name}" + (f" ({usage})" if usage else ""), sha256_file(path))


def read_folder(root: str | Path) -> FaceSet:
    """A folder per class (see the module docstring); images read grey, resized to 48x48."""
    root = Path(root)
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise FaceDataError(f"{root}: no class folders (expected one subfolder per class, "
                            f"named {', '.join(FACE_CLASSES)} or a synonym)")
    classes = {}
    for d in dirs:
        try:
            classes[d] = class_index(d.name, f"{root}: folder {d.name!r}")
        except FaceDataError as e:
            hint = (" (point the path at one split's folder, the one holding the class "
                    "folders)") if d.name.lower() in ("train", "test", "val", "valid",
                                                      "validation") else \
                " (move that folder out: the model reads MELD's seven classes)"
            raise FaceDataError(f"{e}{hint}") from None
    h = hashlib.sha256()
    images, labels, names = [], [], []
    for d, y in classes.items():
        for f in sorted(p for p in d.rglob("*") if p.is_file()):
            rel = f.relative_to(root).as_posix()
            if any(part.startswith(".") for part in f.relative_to(root).parts):
                continue
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                raise FaceDataError(f"{f}: not a PNG or JPEG image (a class folder holds only "
                                    f"{', '.join(IMAGE_SUFFIXES)} files)")
            data = f.read_bytes()
            a = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
            if a is None or a.size == 0:
                raise FaceDataError(f"{f}: not a readable image")
            h.update(f"{rel}\0{len(data)}\0".encode())
            h.update(hashlib.sha256(data).digest())
            images.append(to_face_size(a))
            labels.append(y)
            names.append(rel)
    if not images:
        raise FaceDataError(f"{root}: the class folders hold no image")
    return FaceSet(np.stack(images), np.array(labels, np.int64), f"{root.name}/ (folders)",
                   h.hexdigest(), names=np.array(names))


def read_faces(path: str | Path, usage: Optional[str] = "Training") -> FaceSet:
    """The faces at ``path``: a ``.npz``, a FER2013 ``.csv`` (its ``usage`` rows) or a folder
    per class."""
    path = Path(path)
    if path.is_dir():
        return read_folder(path)
    if not path.is_file():
        raise FaceDataError(f"{path}: no such file or folder")
    if path.suffix.lower() == ".npz":
        return read_npz(path)
    if path.suffix.lower() == ".csv":
        return read_fer_csv(path, usage)
    raise FaceDataError(f"{path}: not a face corpus: a .npz (images, labels), FER2013's .csv "
                        "(emotion,pixels,Usage) or a folder per class")


def default_dev(train_path: str | Path) -> Optional[Path]:
    """The dev set beside a training file: ``public_test.npz`` beside an npz; the CSV itself
    (its PublicTest rows) for FER2013's CSV; None otherwise."""
    p = Path(train_path)
    if p.suffix.lower() == ".npz" and (p.parent / "public_test.npz").is_file() and \
            p.name != "public_test.npz":
        return p.parent / "public_test.npz"
    if p.suffix.lower() == ".csv":
        return p
    return None


def held_out_split(faces: FaceSet, share: float, seed: int) -> tuple[FaceSet, FaceSet]:
    """(train, dev): ``share`` of each class drawn (seeded) as dev, the rest train."""
    rng = np.random.default_rng(seed)
    dev = []
    for c in range(len(faces.classes)):
        idx = np.flatnonzero(faces.labels == c)
        rng.shuffle(idx)
        dev.extend(idx[: int(round(share * len(idx)))].tolist())
    dev_mask = np.zeros(len(faces), bool)
    dev_mask[dev] = True
    return (faces.subset(np.flatnonzero(~dev_mask), f"{faces.source}, {1 - share:.0%} train"),
            faces.subset(np.flatnonzero(dev_mask),
                         f"{faces.source}, {share:.0%} held out (seed {seed})"))


def corpus_terms(path: str | Path) -> str:
    """What a model trained on ``path`` records of the data's terms."""
    p = Path(path)
    if "fer2013" in p.as_posix().lower() or p.suffix.lower() == ".csv":
        return FER2013_TERMS
    return "given by path: see the corpus's own licence before using or sharing the model"


#: Width of the border around a face corpus's tight crop, relative to the crop: the Haar
#: detector needs a little of the head around the features to find a face.
BORDER = 0.25
def framed_face(grey: np.ndarray, side: int, border: float = BORDER) -> np.ndarray:
    """A face corpus's grey crop (e.g. FER2013's 48x48) as RGB, the face ``side`` pixels
    wide (``cv2.INTER_CUBIC``) on a border ``border`` of its width wider in all, of the
    crop's own edge tone (the median of its outer pixels: a neutral grey or skin tone)."""
    g = np.asarray(grey, np.uint8)
    if g.ndim != 2:
        raise ValueError(f"a face crop must be grey (H, W), got shape {g.shape}")
    pad = int(round(g.shape[1] * border / 2))
    tone = int(np.median(np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]])))
    rgb = cv2.cvtColor(g, cv2.COLOR_GRAY2RGB)
    rgb = cv2.copyMakeBorder(rgb, pad, pad, pad, pad, cv2.BORDER_CONSTANT,
                             value=(tone, tone, tone))
    total = int(round(side * rgb.shape[1] / g.shape[1]))
    return cv2.resize(rgb, (total, total), interpolation=cv2.INTER_CUBIC)
