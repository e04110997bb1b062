"""The face-expression quality gate measured on kinds of faces a robot meets
(``python -m erc_ros evaluate-face --faces public_test.npz --gate-report OUT``).

Each kind is made from labelled FER2013 faces (``--faces``, a random ``--gate-faces`` of
them, seeded) or from real photographs that installed packages ship:

- readable: FER2013's 48 px crops as they are; the same faces as a modest camera gives them,
  enlarged to 60-120 px, JPEG quality 70-90, half of them softened (Gaussian sigma 0.5-1 px
  at that size); the two real portraits (:func:`erc_ros.runtime.face_expert.portraits`)
  scaled to a 60-120 px face, JPEG 60-90, half softened, cut as the core cuts a face;
- degraded: FER faces shrunk to 28-36 px and enlarged to 120 px; JPEG quality 5-10;
- unreadable: FER faces shrunk to 16-24 px and enlarged to 120 px; blurred with sigma
  1.5-2.5 px at 48 px; scikit-image's 25x25 LFW faces enlarged to 120 px (the demo's former
  people; no labels).

For each kind: the expert's accuracy, the share the gate refuses (and why: small, blurred,
undecided) and the accuracy on what it keeps, with the gate's thresholds
(``perception.faces.expression_*``). Two curves: the ROC of the sharpness measure
(:func:`erc_ros.core.faces.sharpness`) separating readable from unreadable kinds, and the
accuracy kept against the share of FER2013's faces kept when the entropy threshold moves.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np

from erc_ros.core.config import FaceConfig
from erc_ros.core.faces import (FaceDetector, crop, detector_for, normalized_entropy, sharpness,
                                unreadable)
from erc_ros.datasets.fer2013 import framed_face
from erc_ros.runtime.face_expert import portraits

READABLE = ("fer2013 48 px", "webcam-like 60-120 px", "portraits 60-120 px")
DEGRADED = ("shrunk to 28-36 px, enlarged", "JPEG quality 5-10")
UNREADABLE = ("shrunk to 16-24 px, enlarged", "blurred sigma 1.5-2.5 px at 48 px",
              "LFW 25 px enlarged to 120 px")


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    import cv2

    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)


def _resize(g: np.ndarray, side: int) -> np.ndarray:
    import cv2

    return cv2.resize(g, (side, side), interpolation=cv2.INTER_AREA if side < g.shape[0]
                      else cv2.INTER_LINEAR)


def fer_kinds(rng: np.random.Generator) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Each FER-made kind: a 48x48 grey face -> the face as the expert gets it."""
    import cv2

    def webcam(g):
        side = int(rng.integers(60, 121))
        a = _resize(g, side)
        if rng.random() < 0.5:
            a = cv2.GaussianBlur(a, (0, 0), rng.uniform(0.5, 1.0))
        return _jpeg(a, rng.integers(70, 91))

    def thumbnail(lo, hi):
        return lambda g: _jpeg(_resize(_resize(g, int(rng.integers(lo, hi + 1))), 120), 85)

    return {
        "fer2013 48 px": lambda g: g,
        "webcam-like 60-120 px": webcam,
        "shrunk to 28-36 px, enlarged": thumbnail(28, 36),
        "JPEG quality 5-10": lambda g: _jpeg(g, rng.integers(5, 11)),
        "shrunk to 16-24 px, enlarged": thumbnail(16, 24),
        "blurred sigma 1.5-2.5 px at 48 px": lambda g: _jpeg(cv2.GaussianBlur(
            _resize(g, 96), (0, 0), 2 * rng.uniform(1.5, 2.5)), 85),
    }


def photographed(rng: np.random.Generator, per_portrait: int = 40):
    """(image, box, label) of the real portraits as a robot's camera sees them, and the
    LFW faces enlarged (label None)."""
    import cv2
    from skimage import data

    truth = {"astronaut": "joy", "grace_hopper": "neutral"}
    det = FaceDetector(detect_width=1024)
    rows = []
    for name, image in portraits().items():
        (box,) = det.detect(image)
        for k in range(per_portrait):
            f = rng.uniform(60, 120) / box[2]
            img = cv2.resize(image, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
            if k % 2:
                img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.0))
            rows.append((_jpeg(img, rng.integers(60, 91)), box * f, truth[name]))
    lfw = []
    for face in data.lfw_subset():
        g = cv2.resize(np.round(face * 255).astype(np.uint8), (120, 120),
                       interpolation=cv2.INTER_CUBIC)
        lfw.append((cv2.cvtColor(_jpeg(g, 60), cv2.COLOR_GRAY2RGB), np.array([0, 0, 120, 120]),
                    None))
    return rows, lfw


def measure(expert, faces, n: int = 600, seed: int = 0,
            config: Optional[FaceConfig] = None) -> dict:
    """Per kind: ``sharpness``, ``entropy``, ``correct`` (None without a label) and the
    gate's verdict on each face; plus the summary (:func:`summary`)."""
    import cv2

    fc = config or FaceConfig()
    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(faces))[:n]
    kinds: dict[str, list] = {}
    for name, make in fer_kinds(rng).items():
        rows = []
        for i in pick:
            a = make(faces.images[i])
            rgb = cv2.cvtColor(a, cv2.COLOR_GRAY2RGB)
            rows.append((rgb, np.array([0, 0, a.shape[1], a.shape[0]]), rgb,
                         faces.classes[int(faces.labels[i])]))
        kinds[name] = rows
    portrait, lfw = photographed(rng)
    kinds["portraits 60-120 px"] = [(img, b, crop(img, b, 112, fc.expression_margin), lab)
                                    for img, b, lab in portrait]
    kinds["LFW 25 px enlarged to 120 px"] = [(img, b, img, lab) for img, b, lab in lfw]
    out = {}
    for name, rows in kinds.items():
        p = np.asarray(expert.predict([r[2] for r in rows]))
        verdicts = []
        for (img, b, _, _), q in zip(rows, p):
            why = unreadable(img, b, fc.expression_min_pixels, fc.expression_min_sharpness)
            if not why and normalized_entropy(q) > fc.expression_max_entropy:
                why = "undecided"
            verdicts.append(why)
        out[name] = {
            "sharpness": np.array([sharpness(img, b) for img, b, _, _ in rows]),
            "entropy": np.array([normalized_entropy(q) for q in p]),
            "correct": None if rows[0][3] is None else np.array(
                [expert.labels[int(q.argmax())] == r[3] for q, r in zip(p, rows)]),
            "gate": verdicts}
    return out


def summary(measured: dict, config: Optional[FaceConfig] = None) -> dict:
    """Per kind: faces, accuracy, share gated (by reason) and accuracy on what is kept;
    the ROC of sharpness (readable vs unreadable kinds) with its area."""
    fc = config or FaceConfig()
    kinds = {}
    for name, m in measured.items():
        gated = np.array([bool(v) for v in m["gate"]])
        why = {r: round(100.0 * sum(v == r for v in m["gate"]) / len(gated), 1)
               for r in sorted(set(m["gate"]) - {""})}
        row = {"group": "readable" if name in READABLE else
               "degraded" if name in DEGRADED else "unreadable",
               "faces": int(len(gated)), "gated_percent": round(100.0 * gated.mean(), 1),
               "gated_by": why,
               "sharpness_p5_p50_p95": [round(float(v), 3) for v in
                                        np.percentile(m["sharpness"], [5, 50, 95])]}
        if m["correct"] is not None:
            row["accuracy"] = round(100.0 * m["correct"].mean(), 2)
            kept = m["correct"][~gated]
            row["accuracy_kept"] = round(100.0 * kept.mean(), 2) if len(kept) else None
        kinds[name] = row
    pos = np.concatenate([measured[k]["sharpness"] for k in READABLE if k in measured])
    neg = np.concatenate([measured[k]["sharpness"] for k in UNREADABLE if k in measured])
    thresholds = np.unique(np.concatenate([pos, neg]))
    tpr = np.array([(pos >= t).mean() for t in thresholds])   # readable kept
    fpr = np.array([(neg >= t).mean() for t in thresholds])   # unreadable kept
    order = np.argsort(fpr)
    auc = float(np.trapezoid(tpr[order], fpr[order]))
    at = fc.expression_min_sharpness
    return {"gate": {"min_pixels": fc.expression_min_pixels, "min_sharpness": at,
                     "max_entropy": fc.expression_max_entropy},
            "kinds": kinds,
            "sharpness_roc": {"auc": round(auc, 4), "readable_faces": int(len(pos)),
                              "unreadable_faces": int(len(neg)),
                              "at_threshold": {
                                  "readable_kept": round(float((pos >= at).mean()), 4),
                                  "unreadable_kept": round(float((neg >= at).mean()), 4)},
                              "fpr": fpr[order].round(4).tolist()[::max(1, len(order) // 200)],
                              "tpr": tpr[order].round(4).tolist()[::max(1, len(order) // 200)]}}


def framed(expert, faces, n: int = 600, seed: int = 0, sides=(64, 90, 120),
           margins=(0.0, 0.1, 0.2), config: Optional[FaceConfig] = None) -> dict:
    """How the expert reads faces as the core cuts them from a camera frame: ``n`` faces
    (seeded draw), each framed (:func:`~erc_ros.datasets.fer2013.framed_face`) at each of
    ``sides`` in the middle of a grey 640x480 frame, found by the core's detector
    (``config``'s) and cut at each of ``margins``. Per side: the share found, the accuracy
    of the crops as they are on those found, and of each margin's cut."""
    fc = config or FaceConfig()
    det = detector_for(fc)
    pick = np.random.default_rng(seed).permutation(len(faces))[:n]
    names = [str(c) for c in expert.labels]
    y = np.array([names.index(faces.classes[int(faces.labels[i])]) for i in pick])
    grey = [np.repeat(faces.images[i][:, :, None], 3, axis=2) for i in pick]
    direct = np.asarray(expert.predict(grey)).argmax(1) == y
    out = {"faces": int(len(pick)), "seed": seed, "accuracy_as_is": round(100 * direct.mean(), 2),
           "sides": {}}
    for side in sides:
        found, cuts = [], {m: [] for m in margins}
        for k, i in enumerate(pick):
            f = framed_face(faces.images[i], side)
            frame = np.full((480, 640, 3), 110, np.uint8)
            x0, y0 = 320 - f.shape[1] // 2, 240 - f.shape[0] // 2
            frame[y0:y0 + f.shape[0], x0:x0 + f.shape[1]] = f
            hit = [b for b in det.detect(frame) if abs(b[0] + b[2] / 2 - 320) < side / 2
                   and abs(b[1] + b[3] / 2 - 240) < side / 2]
            if hit:
                found.append(k)
                box = np.asarray(max(hit, key=lambda b: b[2]))
                for m in margins:
                    cuts[m].append(crop(frame, box, fc.size, m))
        row = {"found": round(len(found) / len(pick), 3), "accuracy_as_is": None,
               **{f"margin {m:g}": None for m in margins}}
        if found:
            row["accuracy_as_is"] = round(100 * direct[found].mean(), 2)
            for m in margins:
                ok = np.asarray(expert.predict(cuts[m])).argmax(1) == y[found]
                row[f"margin {m:g}"] = round(100 * ok.mean(), 2)
        out["sides"][f"{side} px"] = row
    return out


def plot(measured: dict, report: dict, path: str | Path) -> Path:
    """Two panels: the sharpness ROC (the threshold marked) and FER2013's accuracy kept
    against faces kept as the entropy threshold moves (the threshold marked)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.5))
    roc = report["sharpness_roc"]
    a.plot(roc["fpr"], roc["tpr"], lw=2)
    at = roc["at_threshold"]
    a.plot([at["unreadable_kept"]], [at["readable_kept"]], "o", color="C3",
           label=f"min_sharpness {report['gate']['min_sharpness']}")
    a.set(xlabel="unreadable faces kept", ylabel="readable faces kept",
          title=f"sharpness ROC (AUC {roc['auc']:.3f})")
    a.legend(loc="lower right")
    m = measured["fer2013 48 px"]
    ent, ok = m["entropy"], m["correct"]
    ts = np.linspace(0.05, 1.0, 60)
    kept = [(ent <= t).mean() for t in ts]
    acc = [ok[ent <= t].mean() if (ent <= t).any() else np.nan for t in ts]
    b.plot(np.array(kept) * 100, np.array(acc) * 100, lw=2)
    t = report["gate"]["max_entropy"]
    b.plot([(ent <= t).mean() * 100], [ok[ent <= t].mean() * 100], "o", color="C3",
           label=f"max_entropy {t}")
    b.set(xlabel="FER2013 faces kept (%)", ylabel="accuracy on kept (%)",
          title="entropy threshold on FER2013's 48 px faces")
    b.legend(loc="upper right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
