"""Labelled emotional speech by path: one :class:`VoiceClip` per file (its path, MELD class,
speaker and corpus), read from the layouts the corpora come in.

- RAVDESS (:func:`read_ravdess`): ``Actor_NN/03-01-EE-II-SS-RR-AA.(wav|flac)``, speech only
  (modality 03, vocal channel 01); the emotion code maps to MELD's classes (calm counts as
  neutral), the actor is the speaker.
- CREMA-D (:func:`read_crema_d`): ``AudioWAV/1001_DFA_ANG_XX.wav`` (or the files directly in
  the folder); the actor id is the speaker.
- IEMOCAP (:func:`read_iemocap`): the release layout, through
  :func:`erc_ros.datasets.iemocap.load_iemocap`; happy and excited count as joy, frustrated
  and other classes are left out; the speaker is session + gender of the utterance's id.
- MELD.Raw (:func:`read_meld_raw`): a MELD CSV and its clip folder, each utterance's clip
  (``dia{D}_utt{U}.wav`` or ``.mp4``); the speaker is the character.
- A CSV of ``path,label,speaker`` (:func:`read_clips_csv`, paths relative to the CSV).

:func:`read_voices` takes ``KIND:PATH`` (``ravdess:DIR``, ``crema-d:DIR``, ``iemocap:DIR``,
``meld-raw:CSV:DIR``, ``clips:CSV``) and returns the clips of one corpus. Cross-validation
splits by speaker, never by clip (:func:`speaker_folds`).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from erc_ros.core.types import FACE_CLASSES
from erc_ros.datasets.iemocap import IEMOCAP6_LABELS, load_iemocap
from erc_ros.datasets.meld import load_meld
from erc_ros.models.labels import MELD_LABELS

#: The voice expert's classes: MELD's seven, in the face expert's order.
VOICE_CLASSES = FACE_CLASSES

#: RAVDESS emotion codes -> MELD classes (02 calm counts as neutral).
RAVDESS_EMOTIONS = {1: "neutral", 2: "neutral", 3: "joy", 4: "sadness", 5: "anger",
                    6: "fear", 7: "disgust", 8: "surprise"}
#: CREMA-D's emotion codes -> MELD classes (it has no surprise).
CREMA_D_EMOTIONS = {"NEU": "neutral", "HAP": "joy", "SAD": "sadness", "ANG": "anger",
                    "FEA": "fear", "DIS": "disgust"}
#: IEMOCAP's six classes -> MELD classes; frustrated has no MELD class and is left out.
IEMOCAP_EMOTIONS = {"neutral": "neutral", "happy": "joy", "excited": "joy", "sad": "sadness",
                    "angry": "anger"}
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus")
KINDS = ("ravdess", "crema-d", "iemocap", "meld-raw", "clips")
RAVDESS_LICENCE = "CC BY-NC-SA 4.0 (RAVDESS, Livingstone & Russo 2018): non-commercial, share-alike"


class VoiceDataError(ValueError):
    """A corpus path or layout that cannot be read, with what was expected."""


@dataclass(frozen=True)
class VoiceClip:
    path: Path
    label: str          # one of VOICE_CLASSES
    speaker: str
    corpus: str
    intensity: str = ""  # RAVDESS: "normal" / "strong"; CREMA-D: its level code


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)


def read_ravdess(root: str | Path) -> list[VoiceClip]:
    """RAVDESS's speech clips under ``root`` (``Actor_NN`` folders)."""
    root = Path(root)
    actors = sorted(p for p in root.glob("Actor_*") if p.is_dir()) if root.is_dir() else []
    if not actors:
        raise VoiceDataError(f"{root}: no Actor_NN folders (RAVDESS's layout: "
                             "Actor_01/03-01-05-02-01-01-01.wav ...)")
    out = []
    for folder in actors:
        for f in _audio_files(folder):
            parts = f.stem.split("-")
            if len(parts) != 7 or not all(p.isdigit() for p in parts):
                raise VoiceDataError(f"{f}: not a RAVDESS file name (MM-VV-EE-II-SS-RR-AA)")
            mod, channel, emo, inten, _, _, actor = (int(p) for p in parts)
            if mod == 2 or channel != 1:  # video-only copies, song
                continue
            if emo not in RAVDESS_EMOTIONS:
                raise VoiceDataError(f"{f}: emotion code {emo:02d} is not RAVDESS's 01-08")
            out.append(VoiceClip(f, RAVDESS_EMOTIONS[emo], f"ravdess-{actor:02d}", "ravdess",
                                 "strong" if inten == 2 else "normal"))
    if not out:
        raise VoiceDataError(f"{root}: no speech clips ({', '.join(AUDIO_SUFFIXES)}) in its "
                             "Actor_NN folders")
    return out


def read_crema_d(root: str | Path) -> list[VoiceClip]:
    """CREMA-D's clips (``AudioWAV/`` under ``root``, or ``root`` itself)."""
    root = Path(root)
    folder = root / "AudioWAV" if (root / "AudioWAV").is_dir() else root
    if not folder.is_dir():
        raise VoiceDataError(f"{root}: no such folder")
    out = []
    for f in _audio_files(folder):
        parts = f.stem.split("_")
        if len(parts) != 4 or parts[2] not in CREMA_D_EMOTIONS:
            continue
        out.append(VoiceClip(f, CREMA_D_EMOTIONS[parts[2]], f"crema-{parts[0]}", "crema-d",
                             parts[3]))
    if not out:
        raise VoiceDataError(f"{root}: no CREMA-D clips (AudioWAV/1001_DFA_ANG_XX.wav ...)")
    return out


def read_iemocap(root: str | Path) -> list[VoiceClip]:
    """IEMOCAP's utterances whose label has a MELD class, from the release layout."""
    dialogues = load_iemocap(root, labels=IEMOCAP6_LABELS, with_media=True)
    out = []
    for d in dialogues:
        for u, ref in zip(d.utterances, d.media or [None] * len(d.utterances)):
            label = IEMOCAP6_LABELS[u.label] if 0 <= u.label < len(IEMOCAP6_LABELS) else ""
            if label not in IEMOCAP_EMOTIONS or ref is None or ref.wav is None:
                continue
            uid = Path(ref.wav).stem  # Ses01F_impro01_F000: session + the speaker's gender
            out.append(VoiceClip(Path(ref.wav), IEMOCAP_EMOTIONS[label],
                                 f"iemocap-{uid[:5]}{uid.split('_')[-1][0]}", "iemocap"))
    if not out:
        raise VoiceDataError(f"{root}: no IEMOCAP utterance with audio and a MELD class "
                             "(Session1/sentences/wav/...)")
    return out


def read_meld_raw(csv_path: str | Path, clips_dir: str | Path) -> list[VoiceClip]:
    """MELD.Raw's clips of the utterances in ``csv_path`` (its split's folder under
    ``clips_dir``); utterances without a clip are left out."""
    out = []
    for d in load_meld(csv_path, clips_dir=clips_dir):
        for u, ref in zip(d.utterances, d.media or [None] * len(d.utterances)):
            path = None if ref is None else (ref.wav or ref.video)
            if path is None or not Path(path).is_file() or u.label < 0:
                continue
            out.append(VoiceClip(Path(path), MELD_LABELS[u.label],
                                 f"meld-{u.speaker}", "meld-raw"))
    if not out:
        raise VoiceDataError(f"{clips_dir}: no MELD.Raw clip of the utterances in {csv_path}")
    return out


def read_clips_csv(path: str | Path) -> list[VoiceClip]:
    """A CSV with a header ``path,label,speaker`` (label: a MELD class name; relative paths
    are relative to the CSV's folder)."""
    path = Path(path)
    if not path.is_file():
        raise VoiceDataError(f"{path}: no such CSV")
    out = []
    with path.open(newline="", encoding="utf-8") as fh:
        rows = csv.DictReader(fh)
        if not rows.fieldnames or not {"path", "label", "speaker"} <= set(rows.fieldnames):
            raise VoiceDataError(f"{path}: the header must name path, label and speaker")
        for i, row in enumerate(rows, 2):
            label = (row["label"] or "").strip().lower()
            if label not in VOICE_CLASSES:
                raise VoiceDataError(f"{path}:{i}: label {label!r} is not one of "
                                     f"{', '.join(VOICE_CLASSES)}")
            p = Path(row["path"])
            out.append(VoiceClip(p if p.is_absolute() else path.parent / p, label,
                                 (row["speaker"] or "").strip() or "?", "clips"))
    if not out:
        raise VoiceDataError(f"{path}: no rows")
    return out


def read_voices(spec: str) -> list[VoiceClip]:
    """The clips of ``KIND:PATH`` (see the module's docstring)."""
    kind, _, rest = spec.partition(":")
    if kind not in KINDS or not rest:
        raise VoiceDataError(f"{spec!r}: give KIND:PATH with KIND one of {', '.join(KINDS)} "
                             "(meld-raw:CSV:DIR)")
    if kind == "ravdess":
        return read_ravdess(rest)
    if kind == "crema-d":
        return read_crema_d(rest)
    if kind == "iemocap":
        return read_iemocap(rest)
    if kind == "clips":
        return read_clips_csv(rest)
    csv_path, _, clips = rest.partition(":")
    if not clips:
        raise VoiceDataError(f"{spec!r}: meld-raw takes meld-raw:CSV:CLIPS_DIR")
    return read_meld_raw(csv_path, clips)


def speakers(clips: Sequence[VoiceClip]) -> list[str]:
    return sorted({c.speaker for c in clips})


def speaker_folds(clips: Sequence[VoiceClip], folds: int) -> list[list[str]]:
    """``folds`` groups of speakers, in their sorted order, as even as can be: fold k holds
    the k-th run of consecutive speakers (RAVDESS: actors 1-3, 4-6, ... for 6 folds, each
    mixing men and women)."""
    names = speakers(clips)
    if not 2 <= folds <= len(names):
        raise VoiceDataError(f"{folds} folds need 2 to {len(names)} speakers' worth "
                             f"({len(names)} speakers)")
    bounds = [round(i * len(names) / folds) for i in range(folds + 1)]
    return [names[bounds[i]:bounds[i + 1]] for i in range(folds)]
