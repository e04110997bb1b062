"""MELD: the release CSV (``Sr No., Utterance, Speaker, Emotion, ..., Dialogue_ID,
Utterance_ID, ..., StartTime, EndTime``); optional clip folder (MELD.Raw layout
``dia{D}_utt{U}.mp4``, a ``dia{D}_utt{U}.wav`` beside it wins for the audio), whose clips
:mod:`erc_ros.training.media` reads as the perception core reads live input."""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Optional, Sequence

from erc_ros.core.types import Utterance
from erc_ros.datasets.dialogues import Dialogue, MediaRef, clean_text
from erc_ros.models.labels import MELD_LABELS


def _clock(s: str) -> float:
    """MELD "00:16:16,059" -> seconds."""
    m = re.match(r"(\d+):(\d+):(\d+)[,.](\d+)", s or "")
    if not m:
        return 0.0
    h, mi, se, ms = (int(x) for x in m.groups())
    return h * 3600 + mi * 60 + se + ms / 1000


#: MELD.Raw's clip folders per split (the release's names, then shorter ones), looked for in
#: the media folder and in a folder of the split's name inside it.
MELD_SPLIT_DIRS = {"train": ("train_splits", "train"), "dev": ("dev_splits_complete", "dev"),
                   "test": ("output_repeated_splits_test", "test")}


def meld_split_dir(media_dir: str | Path, split: str) -> Optional[Path]:
    """The folder of ``split``'s clips (``dia{D}_utt{U}.mp4``) under a MELD.Raw folder: the
    first of ``MELD_SPLIT_DIRS[split]`` (directly or inside ``<media_dir>/<split>``) that
    holds clips; None if none does."""
    media_dir = Path(media_dir)
    names = MELD_SPLIT_DIRS[split]
    for cand in [media_dir / n for n in names] + [media_dir / split / n for n in names]:
        if cand.is_dir() and (next(cand.glob("dia*_utt*.mp4"), None) is not None or
                              next(cand.glob("dia*_utt*.wav"), None) is not None):
            return cand
    return None


def load_meld(csv_path: str | Path, clips_dir: str | Path | None = None,
              labels: Sequence[str] = MELD_LABELS, split: str = "") -> list[Dialogue]:
    """MELD-format CSV -> dialogues (ordered by Dialogue_ID then Utterance_ID). With
    ``clips_dir`` each dialogue's ``media`` says where its clips are:
    :func:`erc_ros.training.media.attach_media` decodes them into the utterances (a small
    set; training streams a corpus's clips, whose media do not fit in memory)."""
    csv_path = Path(csv_path)
    split = split or csv_path.stem
    index = {k.lower(): i for i, k in enumerate(labels)}
    rows: dict[int, list[dict]] = {}
    with open(csv_path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            rows.setdefault(int(r["Dialogue_ID"]), []).append(r)
    out = []
    for d in sorted(rows):
        utts, labs, refs = [], [], []
        cid = f"meld-{split}-{d}"
        for r in sorted(rows[d], key=lambda r: int(r["Utterance_ID"])):
            u = Utterance(utterance_id=f"{cid}-{r['Utterance_ID']}", conversation_id=cid,
                          speaker_id=r["Speaker"].strip(), start=_clock(r.get("StartTime", "")),
                          end=_clock(r.get("EndTime", "")), text=clean_text(r["Utterance"]))
            if clips_dir is not None:
                stem = Path(clips_dir) / f"dia{d}_utt{r['Utterance_ID']}"
                refs.append(MediaRef(video=stem.with_suffix(".mp4"), wav=stem.with_suffix(".wav")))
            utts.append(u)
            labs.append(index.get(r.get("Emotion", "").strip().lower(), -1))
        out.append(Dialogue(cid, utts, labs, refs))
    return out
