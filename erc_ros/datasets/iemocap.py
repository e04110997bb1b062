"""IEMOCAP: the standard release layout by path
(``Session{1..5}/dialog/transcriptions/*.txt`` and ``dialog/EmoEvaluation/*.txt``, audio in
``sentences/wav/<dialog>/<utt>.wav``, video ``dialog/avi/DivX/<dialog>.avi`` cut at each
utterance's times), 4/6-class label maps."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from erc_ros.core.audio_buffer import read_wav_16k
from erc_ros.core.types import Utterance
from erc_ros.datasets.dialogues import Dialogue, MediaRef, clean_text

IEMOCAP6_LABELS = ("neutral", "happy", "sad", "angry", "excited", "frustrated")
IEMOCAP4_LABELS = ("neutral", "happy", "sad", "angry")  # excited merged into happy


_IEMO_MAP = {"neu": "neutral", "hap": "happy", "sad": "sad", "ang": "angry",
             "exc": "excited", "fru": "frustrated"}


def load_iemocap(root: str | Path, sessions: Sequence[int] = (1, 2, 3, 4, 5),
                 labels: Sequence[str] = IEMOCAP6_LABELS, with_audio: bool = False,
                 with_media: bool = False) -> list[Dialogue]:
    """IEMOCAP_full_release layout by path. Utterances whose label is outside ``labels``
    (xxx, oth, fear, ...) keep their place in the dialogue with label -1 (context only).
    ``with_audio``: each utterance's WAV read now; ``with_media``: ``Dialogue.media`` says
    where each utterance's WAV and video span (the dialogue's AVI) are, read later."""
    root = Path(root)
    index = {k: i for i, k in enumerate(labels)}
    four = tuple(labels) == IEMOCAP4_LABELS
    out = []
    for s in sessions:
        sess = root / f"Session{s}" / "dialog"
        for tr in sorted((sess / "transcriptions").glob("*.txt")):
            emo = {}
            ev = sess / "EmoEvaluation" / tr.name
            if ev.is_file():
                for line in ev.read_text(errors="replace").splitlines():
                    m = re.match(r"\[(\S+) - (\S+)\]\s+(\S+)\s+(\w+)", line)
                    if m:
                        emo[m.group(3)] = m.group(4)
            utts, labs, refs = [], [], []
            cid = f"iemocap-{tr.stem}"
            avi = root / f"Session{s}" / "dialog" / "avi" / "DivX" / f"{tr.stem}.avi"
            for line in tr.read_text(errors="replace").splitlines():
                m = re.match(r"(\S+) \[(\d+\.\d+)-(\d+\.\d+)\]:\s*(.*)", line)
                if not m or m.group(1) not in emo:
                    continue
                uid, a, b, text = m.groups()
                spk = uid.split("_")[-1][0]  # F / M
                u = Utterance(uid, cid, spk, float(a), float(b), text=clean_text(text))
                wav = root / f"Session{s}" / "sentences" / "wav" / tr.stem / f"{uid}.wav"
                if with_audio and wav.is_file():
                    u.audio = read_wav_16k(wav)
                refs.append(MediaRef(video=avi, wav=wav, start=float(a), end=float(b)))
                name = _IEMO_MAP.get(emo[uid], "")
                if four and name == "excited":
                    name = "happy"
                utts.append(u)
                labs.append(index.get(name, -1))
            if utts:
                order = sorted(range(len(utts)), key=lambda i: utts[i].start)
                out.append(Dialogue(cid, [utts[i] for i in order], [labs[i] for i in order],
                                    [refs[i] for i in order] if with_media else []))
    return out
