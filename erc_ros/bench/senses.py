"""`python -m erc_ros bench-senses`: each sense of the published estimate, measured on real
people, on the same labelled turns.

Conversations are made of labelled real voice clips (RAVDESS's actors, ``--ravdess DIR``, or
a clips CSV ``path,label,speaker[,text]``, ``--clips CSV``): two speakers (two different
actors) alternate, a clip a turn (its label the turn's), laid on a timeline with natural
turn-taking (:class:`~erc_ros.synth.conversation.TurnTaking` ``natural``: gaps of a few
hundred ms, short overlaps, and espeak-ng back-channels such as "yeah" over long turns,
unlabelled). The text of a RAVDESS turn is the sentence the actor says (statement 01 "Kids
are talking by the door", 02 "Dogs are sitting by the door"); a clips CSV's turn has its
``text`` column's, else none. With ``--faces NPZ`` (FER2013's layout: ``images`` (n, 48, 48)
grey, ``labels`` MELD class names), each turn's speaker shows a face of the turn's label,
drawn at random (seeded), 60-120 px wide, at their place in the 640x480 frame while the turn
is spoken (:class:`~erc_ros.synth.senses.FacedConversation`); without it the bags have no
camera. Everything is drawn from ``--seed``. The bags (microphone and camera, no
transcripts) are kept in the cache, keyed by everything that makes them.

Each bag is replayed through the nodes' own assembly path as ``bench-spoken``'s stage
``asr`` does (:func:`erc_ros.evaluation.eval_bag.make_core` with the embedded recognizer,
diarization, the face and voice experts, the pipeline), and each labelled turn is matched
to the estimate that answers it (:func:`erc_ros.evaluation.matching.assign`: matched,
merged with another turn's, or lost). From that one estimate, four predictions: ``text``
(the text model alone, ``text_label``), ``voice`` (the voice expert, ``voice_label``),
``face`` (the face expert, ``face_label``) and ``fused`` (the published ``label``). A sense
that did not read (an empty label) and a lost turn count as wrong answers. Scores per sense:
weighted F1, UAR (the mean recall over the classes present), accuracy, per-class F1, in %.

With ``--faces``, ``faces.detected_share`` says how often the core's face detector (its
configured :func:`erc_ros.core.faces.detector_for`) finds the face of a turn in the bag's
camera frame nearest the turn's middle: what the face sense can read at best.

    python -m erc_ros bench-senses --ravdess ../shared/data/ravdess_speech --actors 16,17,18 \
        --faces ../shared/data/fer2013/public_test.npz --seed 0 --json runs/senses.json

Where the voice loses: ``voice_by_span`` counts, for each way the scored estimate covers its
turn (:func:`span_fit`: the ``whole`` turn, a ``part`` of it, or ``spills`` over a
neighbour's speech; ``lost``), the turns, those the voice expert read and those it read
right.

Writes ``--json OUT`` (``senses.<sense>.{weighted_f1, uar, accuracy, per_class_f1, read,
...}``, the turns' ``status`` per expert, ``voice_by_span``, the machine) and ``OUT.png``;
``--out DIR``: the per-turn CSV ``DIR/turns.csv`` (with each turn's ``span``).
"""
from __future__ import annotations

import csv
import hashlib
import json
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import numpy as np
from tqdm import tqdm

from erc_ros.bench import write_run
from erc_ros.bags import make_bag
from erc_ros.core.audio_files import AudioFileError, read_audio_16k
from erc_ros.core.faces import detector_for
from erc_ros.datasets.fer2013 import FaceDataError, FaceSet, framed_face, read_npz
from erc_ros.datasets.voices import VoiceClip, VoiceDataError, read_clips_csv, read_voices
from erc_ros.evaluation import eval_bag
from erc_ros.evaluation.eval_bag import process_settings as ps
from erc_ros.evaluation.matching import assign, classification, gold_turns
from erc_ros.evaluation.senses import NONE, SENSES, sense_labels, sense_scores
from erc_ros.evaluation.spoken_bags import add_replay_arguments
from erc_ros.models.labels import MELD_LABELS
from erc_ros.paths import cache_root
from erc_ros.ros import convert
from erc_ros.ros.replay import read_bag, replay_bag
from erc_ros.runtime import machine
from erc_ros.runtime.machine import line
from erc_ros.synth import conversation as gen
from erc_ros.synth.senses import SIDES, FacedConversation, TurnFace
from erc_ros.synth.speech import espeak, voice_for

#: What RAVDESS's actors say (the file name's statement code).
RAVDESS_STATEMENTS = {1: "Kids are talking by the door", 2: "Dogs are sitting by the door"}
#: Bumped when the bags a key names would come out differently.
BAG_VERSION = 2
#: Natural turn-taking; each speaker's gain set by their first turn, so that their turns keep
#: the loudness they were recorded with (the voice expert reads it: bringing every RAVDESS
#: clip of actors 16-18 to one level costs it 12 of 107 right answers).
TIMING = gen.TurnTaking("natural", speaker_gain=True)
#: How the estimate a turn is scored with covers the turn (:func:`span_fit`): ``whole`` when
#: it hears at least ``WHOLE_SHARE`` of the turn and at most ``SPILL_SHARE`` of what it
#: hears lies outside the turn; ``spills`` past that (a neighbour's speech in it); ``part``
#: when it hears less of the turn (the recognizer cut the turn at a sentence end inside it).
WHOLE_SHARE, SPILL_SHARE = 0.75, 0.25
SPANS = ("whole", "part", "spills", "lost")


class SensesError(ValueError):
    """Arguments or data bench-senses cannot run on; the message says which and why."""


def add_arguments(p) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ravdess", metavar="DIR", help="RAVDESS speech (Actor_NN folders)")
    src.add_argument("--clips", metavar="CSV",
                     help="labelled clips: path,label,speaker[,text] (paths relative to the CSV)")
    p.add_argument("--faces", metavar="NPZ", default=None,
                   help="faces of the turns' labels (FER2013's layout: images (n,48,48) grey "
                        "uint8, labels MELD class names); without it, no camera")
    p.add_argument("--actors", default="",
                   help="comma-separated speakers to keep: RAVDESS actor numbers (16) or ids "
                        "(ravdess-16) (default: all)")
    p.add_argument("--seed", type=int, default=0, help="conversations, timelines and faces")
    p.add_argument("--conversations", type=int, default=None,
                   help="at most this many conversations (default: until the clips run out)")
    p.add_argument("--turns", type=int, default=8, help="turns per conversation")
    add_replay_arguments(p)
    p.add_argument("--json", required=True, help="write the results here (and OUT.png)")
    p.add_argument("--out", default=None, help="also write the per-turn CSV into this folder")


def process_settings(args) -> dict:
    return ps(args)


# --- the clips and the conversations ---------------------------------------------------------


def ravdess_text(path: Path) -> str:
    """The sentence a RAVDESS clip says (its file name's statement code)."""
    parts = path.stem.split("-")
    return RAVDESS_STATEMENTS.get(int(parts[4]), "") if len(parts) == 7 else ""


def csv_texts(path: Path) -> dict[Path, str]:
    """A clips CSV's ``text`` column by clip path (empty without the column)."""
    with path.open(newline="", encoding="utf-8") as fh:
        rows = csv.DictReader(fh)
        if "text" not in (rows.fieldnames or []):
            return {}
        out = {}
        for row in rows:
            p = Path(row["path"])
            out[p if p.is_absolute() else path.parent / p] = (row["text"] or "").strip()
    return out


def select_clips(args) -> tuple[list[VoiceClip], dict[Path, str], int]:
    """(the clips of the chosen speakers with a MELD label, each clip's text, the number of
    clips skipped for a label outside MELD's classes)."""
    if args.ravdess:
        if not Path(args.ravdess).is_dir():
            raise SensesError(f"--ravdess {args.ravdess}: no such folder")
        clips = read_voices(f"ravdess:{args.ravdess}")
        texts = {c.path: ravdess_text(c.path) for c in clips}
    else:
        clips = read_clips_csv(args.clips)
        texts = csv_texts(Path(args.clips))
    names = set(MELD_LABELS)
    skipped = sum(c.label not in names for c in clips)
    clips = [c for c in clips if c.label in names]
    have = sorted({c.speaker for c in clips})
    wanted = [a.strip() for a in args.actors.split(",") if a.strip()]
    if wanted:
        ids = []
        for a in wanted:
            sid = f"ravdess-{int(a):02d}" if args.ravdess and a.isdigit() else a
            if sid not in have:
                raise SensesError(f"--actors: no speaker {a!r} in the clips (they have "
                                  f"{', '.join(have) or 'none'})")
            ids.append(sid)
        clips = [c for c in clips if c.speaker in ids]
    if len({c.speaker for c in clips}) < 2:
        raise SensesError(f"the selection has {len(clips)} clip(s) of "
                          f"{len({c.speaker for c in clips})} speaker(s): a conversation "
                          "needs two speakers")
    return clips, texts, skipped


def plan(clips: list[VoiceClip], turns: int, conversations: Optional[int],
         seed: int) -> list[list[VoiceClip]]:
    """Conversations of two speakers taking turns, a clip a turn, each clip used once: each
    conversation takes the two speakers with the most clips left (ties drawn), ``turns``
    turns (fewer when one runs out), until fewer than two speakers have clips or there are
    ``conversations`` of them."""
    rng = np.random.default_rng(seed)
    queues: dict[str, list[VoiceClip]] = {}
    for s in sorted({c.speaker for c in clips}):
        own = sorted((c for c in clips if c.speaker == s), key=lambda c: str(c.path))
        queues[s] = [own[i] for i in rng.permutation(len(own))]
    out: list[list[VoiceClip]] = []
    while conversations is None or len(out) < conversations:
        left = [s for s, q in queues.items() if q]
        if len(left) < 2:
            break
        tie = {s: r for s, r in zip(left, rng.permutation(len(left)))}
        a, b = sorted(left, key=lambda s: (-len(queues[s]), tie[s]))[:2]
        conv = []
        for i in range(turns):
            q = queues[a if i % 2 == 0 else b]
            if not q:
                break
            conv.append(q.pop())
        out.append(conv)
    return out


def face_pools(faces: FaceSet, labels: set[str]) -> dict[str, np.ndarray]:
    """The indices of ``faces`` of each of ``labels``; SensesError when one has none."""
    names = np.asarray(faces.classes)[faces.labels]
    pools = {lab: np.flatnonzero(names == lab) for lab in sorted(labels)}
    missing = [lab for lab, idx in pools.items() if not idx.size]
    if missing:
        raise SensesError(f"--faces {faces.source}: no face labelled {', '.join(missing)}, "
                          "a label of the clips")
    return pools


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def senses_bags(convs: list[list[VoiceClip]], texts: dict[Path, str], faces: Optional[FaceSet],
                seed: int, fps: float, folder: Optional[Path] = None,
                progress: bool = True) -> list[dict]:
    """One bag per conversation (made once, kept): [{"conversation", "bag"}]; each bag
    holds ``labels.csv`` and, with faces, ``faces.json`` (each labelled turn's face: its
    index in the NPZ, side, and box at the turn's middle)."""
    root = Path(folder) if folder else cache_root() / "senses_bags"
    pools = face_pools(faces, {c.label for cv in convs for c in cv}) if faces else {}
    out, todo = [], []
    for k, clips in enumerate(convs):
        name = f"c{k:03d}"
        lines = [gen.ScriptLine(c.speaker, texts.get(c.path, ""), c.label, f"{name}_t{i:02d}")
                 for i, c in enumerate(clips)]
        picks = []
        if faces is not None:
            rng = np.random.default_rng([seed, k])
            for c in clips:
                picks.append((int(rng.choice(pools[c.label])),
                              int(rng.integers(SIDES[0], SIDES[1] + 1))))
        key = _digest(BAG_VERSION, seed, k, fps,
                      [(str(c.path), c.path.stat().st_size, c.label, c.speaker) for c in clips],
                      [x.text for x in lines], faces.sha256 if faces else None, picks)[:16]
        item = {"conversation": name, "bag": root / f"{name}-{key}", "lines": lines,
                "clips": clips, "picks": picks, "seed": seed * 100_003 + k}
        out.append(item)
        if not (item["bag"] / "labels.csv").is_file():
            todo.append(item)
    bar = tqdm(todo, desc="making conversations", unit="conversation", disable=not progress,
               mininterval=2.0)
    for item in bar:
        _make_bag(item, faces, fps)
    return [{"conversation": i["conversation"], "bag": i["bag"]} for i in out]


def _make_bag(item: dict, faces: Optional[FaceSet], fps: float) -> None:
    audio = {}
    for x, c in zip(item["lines"], item["clips"]):
        try:
            audio[x.utterance_id] = read_audio_16k(c.path)[0]
        except AudioFileError as e:
            raise SensesError(str(e)) from None

    def speech(x: gen.ScriptLine, idx: int) -> np.ndarray:
        if x.utterance_id in audio:
            return audio[x.utterance_id]
        return espeak(x.text, *voice_for(idx))  # a back-channel

    conv = gen.build(item["lines"], seed=item["seed"], speech=speech, name=item["conversation"],
                     with_faces=False, timing=TIMING)
    boxes = []
    if faces is not None:
        tf = {x.utterance_id: TurnFace(framed_face(faces.images[i], side), side, x.emotion, i)
              for x, (i, side) in zip(item["lines"], item["picks"])}
        conv = FacedConversation.of(conv, tf)
        for t in conv.turns:
            if t.utterance_id in tf:
                mid = (t.start + t.end) / 2
                f = tf[t.utterance_id]
                boxes.append({"utterance_id": t.utterance_id, "speaker": t.speaker,
                              "label": f.label, "index": f.index, "side": f.side,
                              "mid": round(mid, 4),
                              "box": [int(v) for v in conv.face_box(t.speaker, mid)]})
    bag = item["bag"]
    tmp = bag.with_name(bag.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    make_bag.write_bag(make_bag.bag_messages(conv, fps=fps if faces is not None else 0.0,
                                             transcripts=False), tmp)
    make_bag.write_labels(make_bag.turns_of(conv), tmp / "labels.csv")
    if faces is not None:
        (tmp / "faces.json").write_text(json.dumps(boxes, indent=1))
    if bag.exists():
        shutil.rmtree(bag)
    tmp.rename(bag)


def detected_faces(bag: Path, detector) -> list[dict]:
    """Each labelled turn's face of ``bag``'s ``faces.json``, with ``found``: whether
    ``detector`` finds a face whose centre is in the turn's face box on the bag's camera
    frame nearest the turn's middle."""
    from rclpy.serialization import deserialize_message  # rclpy: outside erc_ros/ros
    from sensor_msgs.msg import CompressedImage

    entries = json.loads((bag / "faces.json").read_text())
    if not entries:
        return []
    frames = [(t_ns / 1e9, raw) for _, _, t_ns, raw in
              read_bag(bag, {make_bag.TOPICS["image"]})]
    if not frames:
        return [{**e, "found": False} for e in entries]
    stamps = np.asarray([t for t, _ in frames]) - make_bag.T0 - 0.01  # record = stamp + 10 ms
    out = []
    for e in entries:
        k = int(np.argmin(np.abs(stamps - e["mid"])))
        img = convert.compressed_to_rgb(deserialize_message(frames[k][1], CompressedImage))
        x, y, w, h = e["box"]
        found = any(x <= bx + bw / 2 <= x + w and y <= by + bh / 2 <= y + h
                    for bx, by, bw, bh in detector.detect(img))
        out.append({**e, "found": bool(found)})
    return out


# --- scoring ---------------------------------------------------------------------------------


def span_fit(start: float, end: float, heard_start: float, heard_end: float) -> str:
    """How an estimate heard from ``heard_start`` to ``heard_end`` covers a turn spoken from
    ``start`` to ``end``: ``whole``, ``part`` or ``spills`` (:data:`WHOLE_SHARE`)."""
    overlap = max(0.0, min(end, heard_end) - max(start, heard_start))
    if heard_end - heard_start - overlap > SPILL_SHARE * max(heard_end - heard_start, 1e-9):
        return "spills"
    return "whole" if overlap >= WHOLE_SHARE * (end - start) else "part"


class Senses:
    """The labelled turns' four predictions, summed over the conversations."""

    def __init__(self):
        self.y_true: list[str] = []
        self.pred: dict[str, list[str]] = {s: [] for s in SENSES}
        self.status = {"matched": 0, "merged": 0, "lost": 0}
        self.expert_status = {"voice": Counter(), "face": Counter()}
        self.voice_reasons: Counter = Counter()  # why the voice expert was uncertain
        # how the scored estimate covers the turn -> turns, voice read, voice right
        self.voice_by_span = {k: Counter(turns=0, read=0, right=0) for k in SPANS}
        self.rows: list[dict] = []

    def add(self, conversation: str, turns: list[dict], estimates: list,
            faces: Optional[dict[str, dict]] = None) -> None:
        pairs, _ = assign(turns, estimates)
        lab = [t for t in turns if t["label"]]
        for t, (status, e) in zip(lab, pairs):
            self.status[status] += 1
            self.y_true.append(t["label"].lower())
            got = sense_labels(e)
            for sense, v in got.items():
                self.pred[sense].append(v)
            vs = (e.voice_status or "none") if e is not None else "lost"
            fs = (e.face_status or "none") if e is not None else "lost"
            self.expert_status["voice"][vs] += 1
            self.expert_status["face"][fs] += 1
            if e is not None and e.voice_reason:
                self.voice_reasons[e.voice_reason] += 1
            span = span_fit(t["start"], t["end"], e.start, e.end) if e is not None else "lost"
            by = self.voice_by_span[span]
            by["turns"] += 1
            by["read"] += got["voice"] != NONE
            by["right"] += got["voice"] == t["label"].lower()
            face = (faces or {}).get(t["utterance_id"], {})
            self.rows.append({"conversation": conversation, "utterance_id": t["utterance_id"],
                              "start": f"{t['start']:.3f}", "end": f"{t['end']:.3f}",
                              "speaker": t["speaker"], "label": t["label"], "text": t["text"],
                              "status": status, "heard": e.text if e is not None else "",
                              # the span of the estimate the turn is scored with
                              "heard_start": f"{e.start:.3f}" if e is not None else "",
                              "heard_end": f"{e.end:.3f}" if e is not None else "",
                              "span": span,
                              **{f"{s}_label": "" if v == NONE else v for s, v in got.items()},
                              "voice_status": vs,
                              "voice_reason": e.voice_reason if e is not None else "",
                              "face_status": fs,
                              "face_side": face.get("side", ""),
                              "face_found": face.get("found", "")})

    def result(self, class_names) -> dict:
        return sense_scores(self.y_true, self.pred, class_names, classification)


def face_summary(found: list[dict], npz: Path, sha: str) -> dict:
    """faces.detected_share overall and by the face's side."""
    bands = [(60, 79), (80, 99), (100, 120)]
    by = {}
    for lo, hi in bands:
        sel = [f["found"] for f in found if lo <= f["side"] <= hi]
        by[f"{lo}-{hi}px"] = {"turns": len(sel),
                              "detected_share": round(float(np.mean(sel)), 3) if sel else None}
    return {"npz": str(npz), "sha256": sha, "turns": len(found),
            "detected": int(sum(f["found"] for f in found)),
            "detected_share": round(float(np.mean([f["found"] for f in found])), 3)
            if found else 0.0, "by_side": by}


# --- the run ---------------------------------------------------------------------------------


def bench(args, progress: bool = True) -> dict:
    t_start = time.perf_counter()
    if args.turns < 2:
        raise SensesError(f"--turns {args.turns}: a conversation needs at least 2 turns")
    if args.conversations is not None and args.conversations < 1:
        raise SensesError(f"--conversations {args.conversations}: give at least 1")
    try:
        eval_bag.check_sets(args.config, tuple(args.set))
    except ValueError as e:
        raise SensesError(str(e)) from None
    clips, texts, skipped = select_clips(args)
    faces = None
    if args.faces:
        if not Path(args.faces).is_file():
            raise SensesError(f"--faces {args.faces}: no such file")
        faces = read_npz(args.faces)
        face_pools(faces, {c.label for c in clips})
    convs = plan(clips, args.turns, args.conversations, args.seed)
    mach = machine.describe(args.threads)
    bags = senses_bags(convs, texts, faces, args.seed, args.fps,
                       Path(args.bags) if args.bags else None, progress)
    t_bags = time.perf_counter() - t_start
    pipeline = eval_bag.make_pipeline(args.model_dir, args.backend, args.precision, args.threads)
    names = list(pipeline.class_names)
    scored = Senses()
    found: list[dict] = []
    made = None
    detector = None
    t_replay = time.perf_counter()
    bar = tqdm(bags, desc="bench-senses", unit="conversation", disable=not progress,
               mininterval=2.0)
    for item in bar:
        bag = item["bag"]
        turns = gold_turns(bag)
        pipeline.reset()
        core = made = eval_bag.make_core(args.config, tuple(args.set), pipeline,
                                         asr_type="embedded", reuse=made)
        try:
            res = replay_bag(bag, core, pipeline)
        finally:
            core.close()
        ff = {}
        if faces is not None:
            detector = detector or detector_for(core.config.faces)
            got = detected_faces(bag, detector)
            found += got
            ff = {f["utterance_id"]: f for f in got}
        scored.add(item["conversation"], turns, res.estimates, ff)
        if progress and scored.y_true:
            acc = {s: np.mean([a == b for a, b in zip(scored.y_true, p)])
                   for s, p in scored.pred.items()}
            bar.set_postfix_str(" ".join(f"{s} {v:.2f}" for s, v in acc.items()))
    out = {
        "command": getattr(args, "command_line", ""),
        "clips": len(clips), "skipped_clips": skipped,
        "used_clips": sum(len(c) for c in convs),
        "actors": sorted({c.speaker for c in clips}), "seed": args.seed,
        "conversations": len(bags), "turns": len(scored.y_true),
        **scored.status,
        "senses": scored.result(names),
        "status": {k: dict(sorted(v.items())) for k, v in scored.expert_status.items()},
        "voice_reasons": dict(sorted(scored.voice_reasons.items())),
        "voice_by_span": {k: dict(v) for k, v in scored.voice_by_span.items()},
        "backchannels": "espeak-ng (unlabelled, TurnTaking natural)",
        "config_overrides": eval_bag.parse_sets(tuple(args.set)),
        "machine": mach, "model_id": pipeline.model_id,
        "backend": f"{pipeline.backend_name}/{pipeline.precision}",
        # which Whisper `auto` chose, by timed decodes on this machine (and its load): the
        # recognizer's cuts decide which turns the voice hears whole
        "asr": recognizer_choice(getattr(made, "recognizer", None)),
    }
    if faces is not None:
        out["faces"] = face_summary(found, Path(args.faces), faces.sha256)
    out["wall_s"] = {"bags": round(t_bags, 1),
                     "replay": round(time.perf_counter() - t_replay, 1),
                     "total": round(time.perf_counter() - t_start, 1)}
    if args.out:
        o = Path(args.out)
        o.mkdir(parents=True, exist_ok=True)
        if scored.rows:
            with open(o / "turns.csv", "w", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, list(scored.rows[0]))
                w.writeheader()
                w.writerows(scored.rows)
    return out


def recognizer_choice(rec) -> dict:
    """The Whisper model a core's recognizer runs and why (``auto``: timed decodes)."""
    if rec is None:
        return {"model": "", "model_reason": "no recognizer"}
    return {"model": rec.model_name, "model_reason": rec.choice.get("reason", "")}


def summary(r: dict) -> str:
    lines = [f"bench-senses: {r['conversations']} conversations of {', '.join(r['actors'])}, "
             f"{r['turns']} labelled turns ({r['matched']} matched, {r['merged']} merged, "
             f"{r['lost']} lost); model {r['model_id']} on {r['backend']}; recognizer "
             f"Whisper {r['asr']['model']} ({r['asr']['model_reason']})",
             f"machine: {line(r['machine'])}", "",
             "| sense | weighted F1 | UAR | accuracy | read on |", "|---|---|---|---|---|"]
    for s, m in r["senses"].items():
        lines.append(f"| {s} | {m['weighted_f1']:.1f} | {m['uar']:.1f} | {m['accuracy']:.1f} | "
                     f"{m['read']} / {r['turns']} turns |")
    st = r["status"]
    lines.append("")
    for k in ("voice", "face"):
        lines.append(f"{k} status: " + ", ".join(f"{a} {b}" for a, b in st[k].items()))
    if r.get("voice_reasons"):
        lines.append("voice uncertain because: " + ", ".join(
            f"{a} {b}" for a, b in r["voice_reasons"].items()))
    by = r.get("voice_by_span", {})
    if by:
        lines.append("voice by how the utterance covers the turn: " + "; ".join(
            f"{k} {v['turns']} (read {v['read']}, right {v['right']})"
            for k, v in by.items() if v["turns"]))
    if "faces" in r:
        f = r["faces"]
        lines.append(f"faces.detected_share: {f['detected_share']:.3f} ({f['detected']} of "
                     f"{f['turns']} turns' faces found by the core's detector; by side: "
                     + ", ".join(f"{k} {v['detected_share']}" for k, v in f["by_side"].items())
                     + ")")
    w = r["wall_s"]
    lines.append(f"wall: {w['total']:.0f} s (bags {w['bags']:.0f} s, replay {w['replay']:.0f} s)")
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(r["senses"])
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for off, key, label, colour in ((-0.2, "uar", "UAR", "#4c72b0"),
                                    (0.2, "weighted_f1", "weighted F1", "#55a868")):
        v = [r["senses"][s][key] for s in names]
        bars = ax.bar(x + off, v, 0.4, label=label, color=colour)
        for b, y in zip(bars, v):
            ax.text(b.get_x() + b.get_width() / 2, y + 0.5, f"{y:.1f}", ha="center", fontsize=8)
    ax.axhline(100 / len(MELD_LABELS), color="grey", lw=0.8, ls="--", label="chance UAR")
    ax.set_xticks(x, [f"{s}\n({r['senses'][s]['read']}/{r['turns']} read)" for s in names])
    ax.set_ylabel("%")
    ax.legend(fontsize=8)
    ax.set_title(f"bench-senses: {r['conversations']} conversations, {r['turns']} turns of "
                 f"{', '.join(r['actors'])}\nmodel {r['model_id']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args) -> int:
    try:
        r = bench(args)
    except (SensesError, VoiceDataError, FaceDataError) as e:
        print(f"bench-senses: error: {e}", file=sys.stderr)
        return 2
    out, png = write_run(r, args.json, plot)
    print(summary(r))
    print(f"wrote {out} and {png}" + (f"; {args.out}/turns.csv" if args.out else ""))
    return 0
