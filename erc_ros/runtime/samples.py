"""Conversations to run a model on outside the robot: MELD (through the one MELD loader),
a short built-in dialogue when no data is present, and synthetic media for export checks.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from erc_ros.core.types import SAMPLE_RATE, Utterance
from erc_ros.datasets import meld
from erc_ros.models.labels import MELD_LABELS
from erc_ros.paths import data_root


def meld_dir() -> Path | None:
    """The MELD folder under the data root (:func:`erc_ros.paths.data_root`) if its
    dev split is there."""
    d = data_root() / "meld"
    return d if (d / "dev_sent_emo.csv").is_file() else None


def load_meld(split: str = "dev", limit: int = 0) -> list[tuple[list[Utterance], list[str]]]:
    """MELD dialogues as ``(utterances in order, emotion label names)``, read by the one MELD
    loader (:func:`erc_ros.datasets.meld.load_meld`: the text cleaned as training saw it)."""
    d = meld_dir()
    if d is None:
        raise FileNotFoundError("MELD not found: set ERC_ROS_DATA (see shared/data/README)")
    dialogues = meld.load_meld(d / f"{split}_sent_emo.csv", split=split)
    if limit:
        dialogues = dialogues[:limit]
    return [(dlg.utterances, [MELD_LABELS[i] if i >= 0 else "" for i in dlg.labels])
            for dlg in dialogues]


def load_meld_dialogues(split: str = "dev", limit: int = 0) -> list[list[Utterance]]:
    return [u for u, _ in load_meld(split, limit)]


_BUILTIN = [("Ross", "Hi. I just wanted to say thank you for coming tonight."),
            ("Rachel", "Oh, of course! I would not have missed it for anything."),
            ("Ross", "Really? Because last time you left before dessert."),
            ("Rachel", "That was one time, and the fire alarm went off!"),
            ("Joey", "Wait, there was dessert? Nobody told me about dessert!"),
            ("Ross", "I cannot believe you are still upset about that cake.")]


def builtin_dialogues() -> list[list[Utterance]]:
    """A short conversation for when no data is present (tracing and smoke checks)."""
    utts = [Utterance(f"builtin-{i}", "builtin", spk, 2.0 * i, 2.0 * i + 1.8, text)
            for i, (spk, text) in enumerate(_BUILTIN)]
    return [utts, utts[::-1][:4]]


def with_synthetic_media(u: Utterance, seed: int = 0, seconds: float = 1.5,
                         face_size: int = 64, n_faces: int = 3) -> Utterance:
    """A copy of ``u`` with a voiced-like signal and face-sized image crops.

    Only for export checks (they compare two runtimes on the *same* input, so any input with
    realistic ranges and shapes will do); tests use espeak-ng speech and real photos.
    """

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 110 + 60 * rng.random()
    wav = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    wav = wav * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2) + 0.02 * rng.standard_normal(t.size)
    wav = (0.3 * wav / np.abs(wav).max()).astype(np.float32)
    yy, xx = np.mgrid[:face_size, :face_size] / face_size
    faces = []
    for _ in range(n_faces):
        base = 0.5 + 0.3 * np.exp(-((xx - 0.5) ** 2 + (yy - 0.45) ** 2) / 0.08)
        img = np.clip(base[..., None] * [220, 180, 150] + rng.normal(0, 8, (face_size,
                                                                       face_size, 3)), 0, 255)
        faces.append(img.astype(np.uint8))
    return replace(u, audio=wav, faces=faces, features=dict(u.features))


def sample_utterances(n_dialogues: int = 6, max_turns: int = 8) -> list[list[Utterance]]:
    """Real dialogues for tracing and checking: MELD dev when the data is there, else a
    short built-in conversation (with synthetic audio and faces for the A/V encoders)."""
    dialogues = []
    if meld_dir() is not None:
        dialogues = [d[:max_turns] for d in load_meld_dialogues("dev")[:n_dialogues]]
    return dialogues or builtin_dialogues()
