"""Conversation datasets as lists of :class:`Dialogue` (core ``Utterance`` objects + labels).

Models never know which corpus they see: MELD, EmoryNLP, IEMOCAP (and bag ground truth)
all become dialogues of ``Utterance`` with an integer label per utterance (-1 = unlabelled).

- MELD: the release CSV (``Sr No., Utterance, Speaker, Emotion, ..., Dialogue_ID,
  Utterance_ID, ..., StartTime, EndTime``); optional clip folder (MELD.Raw layout
  ``dia{D}_utt{U}.mp4``, a ``dia{D}_utt{U}.wav`` beside it wins for the audio), read by
  :mod:`erc_ros.training.media` as the perception core reads live input.
- EmoryNLP: ``emorynlp_*_final.csv`` (``Speaker`` is a list literal; ``Scene_ID``).
- GoEmotions (Ekman mapping, MELD's 7 classes): ``train.tsv``/``dev.tsv``, one-utterance
  dialogues (extra supervision for the rare classes; no context, no speakers).
- IEMOCAP: the standard release layout by path
  (``Session{1..5}/dialog/transcriptions/*.txt`` and ``dialog/EmoEvaluation/*.txt``, audio in
  ``sentences/wav/<dialog>/<utt>.wav``, video ``dialog/avi/DivX/<dialog>.avi`` cut at each
  utterance's times), 4/6-class label maps.

A dialogue loaded with its media's whereabouts (``clips_dir`` / ``with_media``) carries one
:class:`MediaRef` per utterance in ``Dialogue.media``; :mod:`erc_ros.training.media` reads
them (decoded once, cached).
"""
from __future__ import annotations

import ast
import csv
import dataclasses
import os
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from erc_ros.core.asr import sentence_cuts
from erc_ros.core.audio_buffer import read_wav_16k
from erc_ros.core.types import SAMPLE_RATE, Utterance
from erc_ros.models.labels import MELD_LABELS

EMORYNLP_LABELS = ("Neutral", "Joyful", "Peaceful", "Powerful", "Scared", "Mad", "Sad")
IEMOCAP6_LABELS = ("neutral", "happy", "sad", "angry", "excited", "frustrated")
IEMOCAP4_LABELS = ("neutral", "happy", "sad", "angry")  # excited merged into happy


@dataclass(frozen=True)
class MediaRef:
    """Where one utterance's audio and video are: a clip (``video``: MELD.Raw's mp4, whole)
    and/or a WAV, or a span [start, end] s of a longer recording (IEMOCAP's dialogue AVI)."""

    video: Optional[Path] = None
    wav: Optional[Path] = None
    start: Optional[float] = None  # None: the whole file
    end: Optional[float] = None


@dataclass
class Dialogue:
    conversation_id: str
    utterances: list[Utterance]
    labels: list[int] = field(default_factory=list)
    media: list[Optional[MediaRef]] = field(default_factory=list)  # [] or one per utterance

    def __len__(self) -> int:
        return len(self.utterances)


def data_root() -> Path:
    """``$ERC_ROS_DATA`` or ``<repo>/../shared/data``."""
    env = os.environ.get("ERC_ROS_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _clock(s: str) -> float:
    """MELD "00:16:16,059" -> seconds."""
    m = re.match(r"(\d+):(\d+):(\d+)[,.](\d+)", s or "")
    if not m:
        return 0.0
    h, mi, se, ms = (int(x) for x in m.groups())
    return h * 3600 + mi * 60 + se + ms / 1000


def _clean(text: str) -> str:
    # MELD's CSV carries a few mis-decoded characters (cp1252 read as latin-1).
    for a, b in (("\x92", "'"), ("\x93", '"'), ("\x94", '"'), ("\x97", "-"), ("\x85", "...")):
        text = text.replace(a, b)
    return " ".join(text.split())


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
                          end=_clock(r.get("EndTime", "")), text=_clean(r["Utterance"]))
            if clips_dir is not None:
                stem = Path(clips_dir) / f"dia{d}_utt{r['Utterance_ID']}"
                refs.append(MediaRef(video=stem.with_suffix(".mp4"), wav=stem.with_suffix(".wav")))
            utts.append(u)
            labs.append(index.get(r.get("Emotion", "").strip().lower(), -1))
        out.append(Dialogue(cid, utts, labs, refs))
    return out


#: What a script has and a robot does not (:func:`robot_view`; ``--robot-view all``).
ROBOT_VIEWS = ("speakers", "exclamations")
#: How a robot cuts what it hears (:func:`robot_view`), beside the views above.
CUT_VIEWS = ("sentences",)
#: :func:`robot_view`'s ``labelled``: which pieces of a turn cut into sentences keep its label.
PIECE_LABELS = ("every", "longest")


def split_sentences(text: str) -> list[str]:
    """``text`` cut after every sentence as the node cuts a recognized turn
    (``segmentation.split_sentences``: :func:`erc_ros.core.asr.sentence_cuts` over its
    words); one piece where it holds one sentence."""
    words = text.split()
    edges = [0, *sentence_cuts(words), len(words)]
    return [" ".join(words[a:b]) for a, b in zip(edges[:-1], edges[1:])] or [text]


def no_exclamations(text: str) -> str:
    """``text`` with every ``!`` read as ``.`` (``?!`` and ``!?`` as ``?``): what a recognizer
    writes of a voice that does not carry them."""
    text = re.sub(r"\?+!+[?!]*", "?", text)
    text = re.sub(r"!+\?+[?!]*", "?", text)
    return re.sub(r"!+", ".", text)


def _pieces(u: Utterance, text: str) -> list[tuple[str, float, float]]:
    """``text`` (``u``'s, as a view reads it) cut into sentences (:func:`split_sentences`),
    each with its share of ``u``'s time by characters."""
    pieces = split_sentences(text)
    if len(pieces) == 1:
        return [(text, u.start, u.end)]
    edges = np.cumsum([0, *map(len, pieces)]) / sum(map(len, pieces))
    return [(p, u.start + (u.end - u.start) * float(edges[k]),
             u.start + (u.end - u.start) * float(edges[k + 1])) for k, p in enumerate(pieces)]


def robot_view(dialogues: Sequence[Dialogue], views: Sequence[str] = ROBOT_VIEWS,
               suffix: str = "", labelled: str = "every") -> list[Dialogue]:
    """The dialogues' text as a robot could at best have it, as copies (labels and media
    kept): ``speakers``: each dialogue's speakers renamed ``speaker_0``, ``speaker_1``, ...
    in order of first turn, as diarization tags them (a robot does not know their names);
    ``exclamations``: every ``!`` read as ``.`` (``?!`` as ``?``), as a recognizer writes
    a voice that does not carry them (docs/spoken.md: synthetic voices); ``sentences``: each
    turn cut after every sentence (:func:`split_sentences`), one utterance a sentence, as
    the node cuts a recognized turn (``segmentation.split_sentences``), its time shared by
    characters. ``labelled``: which pieces of a cut turn keep its label, ``every`` (training)
    or ``longest`` (the others unlabelled: each turn is scored once, on the piece that holds
    most of it, as ``bench-spoken`` scores a turn on the estimate that overlaps it most).
    ``suffix`` is added to the conversation and utterance ids (a copy trained beside its
    original)."""
    bad = set(views) - set(ROBOT_VIEWS + CUT_VIEWS)
    if bad:
        raise ValueError(f"robot views are {', '.join(ROBOT_VIEWS + CUT_VIEWS)}; got "
                         f"{', '.join(sorted(bad))}")
    if labelled not in PIECE_LABELS:
        raise ValueError(f"labelled is one of {', '.join(PIECE_LABELS)}; got {labelled!r}")
    out = []
    for d in dialogues:
        tags: dict[str, str] = {}
        utts, labels, media = [], [], []
        for i, u in enumerate(d.utterances):
            spk = tags.setdefault(u.speaker_id, f"speaker_{len(tags)}") \
                if "speakers" in views else u.speaker_id
            text = no_exclamations(u.text) if "exclamations" in views else u.text
            pieces = _pieces(u, text) if "sentences" in views else [(text, u.start, u.end)]
            keep = max(range(len(pieces)), key=lambda k: len(pieces[k][0]))
            for k, (piece, start, end) in enumerate(pieces):
                uid = u.utterance_id + (f".{k}" if len(pieces) > 1 else "") + suffix
                utts.append(dataclasses.replace(u, utterance_id=uid,
                                                conversation_id=d.conversation_id + suffix,
                                                speaker_id=spk, text=piece, start=start,
                                                end=end))
                if d.labels:  # [] where the dialogue carries none
                    labels.append(d.labels[i] if labelled == "every" or k == keep else -1)
                if d.media:
                    media.append(d.media[i])
        out.append(Dialogue(d.conversation_id + suffix, utts, labels, media))
    return out


def robot_copy(dialogues: Sequence[Dialogue], names_share: float = 0.0, seed: int = 0,
               suffix: str = "-robot", cuts: Sequence[str] = ()) -> list[Dialogue]:
    """One copy of each dialogue as a robot could at best have it (:func:`robot_view`), to
    train beside the originals: every ``!`` read as ``.``; the speakers tagged ``speaker_N``
    (strangers), except in a share ``names_share`` of the dialogues, drawn with ``seed``,
    which keep their names (a household the robot knows by voice: docs/spoken.md);
    ``cuts``: :data:`CUT_VIEWS` too (``sentences``: each turn one utterance a sentence, every
    piece with its turn's label)."""
    if not 0.0 <= names_share <= 1.0:
        raise ValueError(f"names_share is a share of the dialogues, 0 to 1; got {names_share}")
    bad = set(cuts) - set(CUT_VIEWS)
    if bad:
        raise ValueError(f"cuts are {', '.join(CUT_VIEWS)}; got {', '.join(sorted(bad))}")
    named = set(random.Random(seed).sample(range(len(dialogues)),
                                           round(names_share * len(dialogues))))
    return [robot_view([d], ("exclamations", *cuts) if i in named else (*ROBOT_VIEWS, *cuts),
                       suffix)[0]
            for i, d in enumerate(dialogues)]


def load_emorynlp(csv_path: str | Path, labels: Sequence[str] = EMORYNLP_LABELS,
                  split: str = "") -> list[Dialogue]:
    csv_path = Path(csv_path)
    split = split or csv_path.stem
    index = {k.lower(): i for i, k in enumerate(labels)}
    rows: dict[str, list[dict]] = {}
    with open(csv_path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            key = f"s{r['Season']}e{r['Episode']}c{r['Scene_ID']}"
            rows.setdefault(key, []).append(r)
    out = []
    for key in rows:
        cid = f"emorynlp-{split}-{key}"
        utts, labs = [], []
        for r in sorted(rows[key], key=lambda r: int(r["Utterance_ID"])):
            try:
                spk = ast.literal_eval(r["Speaker"])
                spk = ", ".join(spk) if isinstance(spk, (list, tuple)) else str(spk)
            except (ValueError, SyntaxError):
                spk = r["Speaker"]
            utts.append(Utterance(f"{cid}-{r['Utterance_ID']}", cid, spk.strip(), 0.0, 0.0,
                                  text=_clean(r["Utterance"])))
            labs.append(index.get(r["Emotion"].strip().lower(), -1))
        out.append(Dialogue(cid, utts, labs))
    return out


#: GoEmotions' Ekman classes onto other label sets (by lower-cased name; unmapped = dropped).
GOEMOTIONS_MAP = {"joyful": "joy", "mad": "anger", "sad": "sadness", "scared": "fear",
                  "happy": "joy", "angry": "anger"}


def load_goemotions(tsv_path: str | Path, labels: Sequence[str] = MELD_LABELS,
                    split: str = "") -> list[Dialogue]:
    """GoEmotions (Ekman mapping: ``text<TAB>label ids<TAB>comment id`` rows, class names in
    ``labels.txt`` beside the file) as one-utterance dialogues with no speaker. Comments with
    several labels are dropped (their class is ambiguous), as are classes ``labels`` lacks
    (``GOEMOTIONS_MAP`` names the equivalents, e.g. EmoryNLP's Scared = fear)."""
    tsv_path = Path(tsv_path)
    split = split or tsv_path.stem
    names = (tsv_path.parent / "labels.txt").read_text().split()
    ours = {}
    for i, k in enumerate(labels):
        key = k.lower()
        ours[GOEMOTIONS_MAP.get(key, key)] = i
    idx = {j: ours[n] for j, n in enumerate(names) if n in ours}
    out = []
    with open(tsv_path, newline="", encoding="utf-8") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) < 3 or "," in row[1] or not row[1].strip().isdigit():
                continue
            y = idx.get(int(row[1]), -1)
            text = _clean(row[0])
            if y < 0 or not text:
                continue
            cid = f"goemotions-{split}-{row[2]}"
            out.append(Dialogue(cid, [Utterance(f"{cid}-0", cid, "", 0.0, 0.0, text=text)], [y]))
    return out


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
                u = Utterance(uid, cid, spk, float(a), float(b), text=_clean(text))
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


def class_counts(dialogues: Sequence[Dialogue], num_classes: int) -> np.ndarray:
    c = Counter(l for d in dialogues for l in d.labels if l >= 0)
    return np.asarray([c.get(i, 0) for i in range(num_classes)], np.int64)


def class_weights(counts: np.ndarray, power: float) -> np.ndarray:
    """Inverse-frequency weights ``(n / n_c) ** power`` normalised to mean 1 over the
    training samples (power 0 = unweighted, 1 = fully balanced)."""
    counts = np.maximum(np.asarray(counts, np.float64), 1)
    w = (counts.sum() / counts) ** power
    return (w / (w * counts).sum() * counts.sum()).astype(np.float32)
