"""The published label from every sense: reliability-weighted log-linear pooling.

Each sense gives a distribution over the model's classes: the text model (``text``), the voice
expert (``voice``, when ``voice_status`` is ok) and the face expert (``face``, when the
speaker's face was seen and read). The fused distribution is

    log p(c) = sum_s (w_s / sum_r w_r) * log max(p_s(c), floor) + const,
    w_s = softplus(theta_s . f_s)

- ``f_s``, how far the reading can be trusted now: a constant, the top probability, one minus
  the normalized entropy, and (voice, face) whether the speaker has been read before and how
  far this reading is from the speaker's usual one (the mean of their earlier readings in the
  conversation): a face that reads the same in every utterance is that person's resting
  face, not the emotion of this utterance;
- ``floor`` (in ``fusion.json``; 1e-4 for files without it) keeps a sense with a small weight
  from vetoing the class another puts first;
- the weights sum to one: a sense alone gives its own distribution, unchanged (the text
  model alone publishes what it publishes without the others);
- a face is weighed from the speaker's second reading on: the first one only sets their usual
  face (a resting smile reads as joy at 0.9 to a FER2013 expert);
- a voice is weighed while the voice expert has found at least ``min_familiar_share`` (in
  ``fusion.json``; 0 for files without it) of the voices it heard in the conversation
  familiar, this one included: where it calls most of them unfamiliar (synthetic voices, a
  microphone or a room unlike any it learned from), the few it reads are at the edge of what
  it knows, and it is wrong on most of them.

A sense that did not read is left out (its weight is 0); with none, there is no label, as with
the text model alone. A fusion weighs the senses it has ``theta`` for (the text and some of
the others); the others are reported beside it, not weighed. ``theta`` is fitted on dev
compositions of real people (:mod:`erc_ros.training.senses`) and kept as ``fusion.json`` in
a model directory (``models/senses``) that names the text model it was fitted with; the
pipeline uses it only with that text model.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from erc_ros.core.faces import normalized_entropy
from erc_ros.core.types import FACE_CLASSES
from erc_ros.paths import CHECKOUT, share_path

from .manifest import read_manifest, verify_files

#: The senses, in the order of ``EmotionEstimate.modalities``, and the modality each is.
SENSES = ("text", "voice", "face")
MODALITY = {"text": "text", "voice": "audio", "face": "video"}
#: Senses read against the speaker's usual reading.
RELATIVE = ("voice", "face")
#: Senses whose first reading of a speaker only sets the usual one.
FROM_SECOND = ("face",)
#: Senses whose expert says when a reading is unlike anything it learned ("unfamiliar").
FAMILIAR = ("voice",)
#: Reliability features of a reading (see :func:`features`).
FEATURES = ("bias", "top_probability", "certainty", "known_speaker", "novelty")
FUSION_FILE = "fusion.json"
KIND = "sense_fusion"
EPS = 1e-4
FUSION_MODES = ("senses", "text")


def default_model_dir() -> Path:
    """The shipped fusion: ``models/senses`` of the checkout, else of a colcon install."""
    return share_path("models", "senses") or CHECKOUT / "models" / "senses"


def log_dist(p: Sequence[float], floor: float = EPS) -> np.ndarray:
    """The log of ``p`` normalized, each probability at least ``floor`` first."""
    p = np.clip(np.asarray(p, np.float64), floor, 1.0)
    return np.log(p / p.sum())


def features(p: np.ndarray, baseline: Optional[np.ndarray] = None) -> np.ndarray:
    """``FEATURES`` of one reading ``p`` (a distribution) given the speaker's usual one
    (``baseline``, a mean log distribution; None before the first): a constant, the top
    probability, one minus the normalized entropy, whether there is a baseline, and how far
    ``p`` is from it (total variation distance to its normalized exponential; 0 without)."""
    p = np.asarray(p, np.float64)
    known, novelty = 0.0, 0.0
    if baseline is not None:
        usual = np.exp(baseline - baseline.max())
        known, novelty = 1.0, 0.5 * float(np.abs(p / p.sum() - usual / usual.sum()).sum())
    return np.array([1.0, float(p.max()), 1.0 - normalized_entropy(p), known, novelty])


def softplus(x):
    return np.logaddexp(0.0, x)


@dataclass
class Reading:
    """One sense's distribution for one utterance and the speaker's usual one (None before
    the speaker's first reading of this sense)."""

    probs: np.ndarray
    baseline: Optional[np.ndarray] = None
    #: of this sense's utterances in the conversation so far, this one included, the share
    #: its expert found familiar (1 for a sense that does not say)
    familiar_share: float = 1.0


@dataclass
class SenseFusion:
    class_names: list[str]
    theta: dict[str, list[float]]
    text_model_id: str = ""
    model_id: str = ""
    #: each sense's probabilities are held at least this high before pooling, so that a
    #: sense with a small weight cannot veto the class another puts first
    floor: float = EPS
    #: a sense of :data:`FAMILIAR` is weighed only while its ``familiar_share`` is at least
    #: this (0: always)
    min_familiar_share: float = 0.0

    def counts(self, sense: str, r: Optional[Reading]) -> bool:
        """Whether ``sense``'s reading ``r`` weighs in: it read, the fusion weighs the sense,
        a face from the speaker's second reading on, a voice while its expert finds the
        conversation's voices familiar often enough."""
        return (r is not None and sense in self.theta
                and not (sense in FROM_SECOND and r.baseline is None)
                and not (sense in FAMILIAR and r.familiar_share < self.min_familiar_share))

    def weight(self, sense: str, r: Reading) -> float:
        f = features(r.probs, r.baseline)
        return float(softplus(np.dot(self.theta[sense], f)))

    def fuse(self, readings: dict[str, Reading]) -> tuple[np.ndarray, list[str], list[float]]:
        """The fused distribution, the senses it used (in :data:`SENSES` order) and their
        shares of the weight (summing to 1). No reading: empty distribution."""
        used = [s for s in SENSES if self.counts(s, readings.get(s))]
        if not used:
            return np.zeros(0), [], []
        if len(used) == 1:
            p = np.asarray(readings[used[0]].probs, np.float64)
            return p / p.sum(), used, [1.0]
        ws = np.array([self.weight(s, readings[s]) for s in used])
        shares = ws / ws.sum() if ws.sum() > 0 else np.full(len(used), 1.0 / len(used))
        z = sum(share * log_dist(readings[s].probs, self.floor)
                for s, share in zip(used, shares))
        z -= z.max()
        p = np.exp(z)
        return p / p.sum(), used, shares.tolist()

    def to_dict(self) -> dict:
        return {"class_names": list(self.class_names), "features": list(FEATURES),
                "theta": {s: [round(float(x), 6) for x in v] for s, v in self.theta.items()},
                "text_model_id": self.text_model_id, "model_id": self.model_id,
                "floor": self.floor, "min_familiar_share": self.min_familiar_share}

    @classmethod
    def from_dict(cls, d: dict) -> "SenseFusion":
        if list(d.get("features", [])) != list(FEATURES):
            raise ValueError(f"fusion features {d.get('features')} are not {list(FEATURES)}")
        theta = {s: [float(x) for x in d["theta"][s]] for s in SENSES if s in d["theta"]}
        if "text" not in theta or set(d["theta"]) - set(SENSES):
            raise ValueError(f"fusion theta for {sorted(d['theta'])}: text and some of "
                             f"{', '.join(SENSES)}")
        if any(len(v) != len(FEATURES) for v in theta.values()):
            raise ValueError("fusion theta: one weight per feature and sense")
        if not all(np.isfinite(v).all() for v in theta.values()):
            raise ValueError("fusion theta: not finite")
        if [str(c) for c in d.get("class_names", [])] != list(FACE_CLASSES):
            raise ValueError(f"fusion classes {d.get('class_names')} are not the experts' "
                             f"{list(FACE_CLASSES)}")
        floor = float(d.get("floor", EPS))  # files before the floor: EPS
        if not EPS <= floor < 1.0 / len(FACE_CLASSES):
            raise ValueError(f"fusion floor {floor}: from {EPS} to below 1/{len(FACE_CLASSES)}")
        share = float(d.get("min_familiar_share", 0.0))  # files before it: always
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"fusion min_familiar_share {share}: from 0 to 1")
        return cls(list(d["class_names"]), theta, d.get("text_model_id", ""),
                   d.get("model_id", ""), floor, share)

    @classmethod
    def load(cls, model_dir: str | Path) -> "SenseFusion":
        """The fusion of a model directory, its files checked against the manifest."""
        model_dir = Path(model_dir)
        m = read_manifest(model_dir)
        if m.get("kind") != KIND:
            raise ValueError(f"{model_dir}: not a sense-fusion model (kind {m.get('kind')!r})")
        verify_files(model_dir, [FUSION_FILE])
        fusion = cls.from_dict(json.loads((model_dir / FUSION_FILE).read_text()))
        fusion.model_id = m.get("model_id", fusion.model_id)
        return fusion


def readings_of(order: np.ndarray, baselines: "SpeakerBaselines", speaker: str,
                text=None, voice=None, face=None,
                voice_unfamiliar: bool = False) -> dict[str, Reading]:
    """Each sense's reading of one utterance in the experts' class order, from distributions
    in a model's class order (``order``: index into the experts' classes of each model
    class; None or empty: the sense did not read), with the speaker's usual voice and face
    before this utterance and the share of the conversation's voices found familiar
    (``voice_unfamiliar``: the voice expert called this utterance's voice unfamiliar); then
    those take in this utterance."""
    readings = {}
    for sense, p in (("text", text), ("voice", voice), ("face", face)):
        if p is None or not len(p):
            continue
        q = np.zeros(len(order))
        q[order] = np.asarray(p, np.float64)
        readings[sense] = Reading(q, baselines.get(speaker, sense) if sense in RELATIVE
                                  else None)
    for sense in RELATIVE:
        if sense in readings:
            baselines.add(speaker, sense, readings[sense].probs)
    if "voice" in readings or voice_unfamiliar:
        share = baselines.heard("voice", familiar="voice" in readings)
        if "voice" in readings:
            readings["voice"].familiar_share = share
    return readings


class SpeakerBaselines:
    """Each speaker's usual reading of each relative sense in one conversation: the running
    mean of its log distributions; and how often each sense's expert found the
    conversation's utterances familiar."""

    def __init__(self):
        self._sum: dict[tuple[str, str], np.ndarray] = {}
        self._n: dict[tuple[str, str], int] = {}
        self._familiar: dict[str, list[int]] = {}  # sense -> [familiar, unfamiliar]

    def heard(self, sense: str, familiar: bool) -> float:
        """Count one utterance the expert of ``sense`` found familiar (it read it) or not;
        the share found familiar so far, this one included."""
        c = self._familiar.setdefault(sense, [0, 0])
        c[0 if familiar else 1] += 1
        return c[0] / (c[0] + c[1])

    def get(self, speaker: str, sense: str) -> Optional[np.ndarray]:
        n = self._n.get((speaker, sense), 0)
        return self._sum[(speaker, sense)] / n if n else None

    def add(self, speaker: str, sense: str, probs) -> None:
        k = (speaker, sense)
        self._sum[k] = self._sum.get(k, 0.0) + log_dist(probs)
        self._n[k] = self._n.get(k, 0) + 1
