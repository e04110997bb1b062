"""Spoken MELD bags: MELD dialogues spoken by the shipped natural voices (or espeak-ng),
written once as labelled bags into the cache, keyed by what made them; and the voices
that enrol the speakers. Used by bench-spoken and heard-set."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Optional

from tqdm import tqdm

from erc_ros.bags import make_bag
from erc_ros.evaluation.eval_bag import DEFAULT_CONFIG
from erc_ros.paths import cache_root, sha256_file
from erc_ros.synth import conversation as gen
from erc_ros.synth.conversation import add_voice_arguments
from erc_ros.synth.speech import write_wav
from erc_ros.synth.voices import Speaker, household_lines

#: Bumped when the bags a key names would come out differently.
BAG_VERSION = 1


def add_spoken_arguments(p, voices: str) -> None:
    """How the dialogues are spoken and heard (bench-spoken, heard-set): voices, timing,
    room, which dialogues, the bags, the model and the node parameters."""

    add_voice_arguments(p, voices=voices, timing="natural")
    p.add_argument("--dialogues", type=int, default=None,
                   help="the first N dialogues of the file (default: all)")
    p.add_argument("--seed", type=int, default=0, help="the timelines' seed (turn-taking, "
                   "room); the voices depend only on the speakers' names")
    add_replay_arguments(p)


def add_replay_arguments(p) -> None:
    """How generated bags are kept and replayed (bench-spoken, heard-set, bench-senses): the
    camera's frame rate, the bags' folder, the model and the node parameters."""
    p.add_argument("--fps", type=float, default=2.0, help="camera frames per second in the bags")
    p.add_argument("--bags", default=None,
                   help="where the generated bags are kept (default: the cache)")
    p.add_argument("--model-dir", default="", help="model directory (default models/default)")
    p.add_argument("--backend", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="node parameter YAML")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a utterance_node parameter (as eval-bag --set), e.g. "
                        "perception.voice.model=DIR")


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def spoken_bags(csv_path: Path, args, dialogues: Optional[int], seed: int,
                folder: Optional[Path] = None, progress: bool = True) -> list[dict]:
    """One bag per dialogue (made once, kept): [{"dialogue", "bag", "seconds"}]."""

    dias = gen.read_meld(csv_path)
    if dialogues:
        dias = dias[:dialogues]
    opts_key = {"voices": args.voices, "timing": args.timing, "room": args.room,
                "rt60": args.rt60 if args.room else None,
                "snr": args.snr if args.room else None,
                "noise": args.noise if args.room else None, "fps": args.fps,
                "version": BAG_VERSION}
    root = Path(folder) if folder else cache_root() / "spoken_bags"
    csv_sha = sha256_file(csv_path)
    out = []
    todo = []
    for i, lines in enumerate(dias):
        d = lines[0].utterance_id.split("_")[0]
        key = _digest(csv_sha, d, seed, opts_key)[:16]
        bag = root / f"{args.voices}-{d}-{key}"
        out.append({"dialogue": d, "bag": bag, "lines": lines, "seed": seed * 100_003 + i})
        if not (bag / "labels.csv").is_file():
            todo.append(out[-1])
    if todo:
        bar = tqdm(todo, desc=f"speaking dialogues ({args.voices})", unit="dialogue",
                   disable=not progress, mininterval=2.0)
        for item in bar:
            conv = gen.build(item["lines"], seed=item["seed"], name=item["dialogue"],
                             **gen.voice_options(args, item["lines"]))
            tmp = item["bag"].with_name(item["bag"].name + ".tmp")
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.parent.mkdir(parents=True, exist_ok=True)
            make_bag.write_bag(make_bag.bag_messages(conv, fps=args.fps), tmp)
            make_bag.write_labels(make_bag.turns_of(conv), tmp / "labels.csv")
            tmp.rename(item["bag"])
    for item in out:
        item.pop("lines")
    return out


def enrolment_voices(engine: str) -> Path:
    """A folder of ``<name>.wav`` samples (``diarization.voices``): each of MELD's main
    characters saying a line of no dialogue in their voice
    (:func:`erc_ros.synth.voices.household_lines`, shipped with the spoken set: no synthesis).
    Written once into the cache."""

    lines = household_lines(engine)
    key = _digest([(t, v.describe(), n) for t, v, n in lines])[:16]
    folder = cache_root() / "enrol" / f"{engine}-{key}"
    names = [n.removeprefix("enrol_") for _, _, n in lines]
    if all((folder / f"{n}.wav").is_file() for n in names):
        return folder
    speaker = Speaker(engine)
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    for (text, voice, _), name in zip(lines, names):
        write_wav(tmp / f"{name}.wav", speaker.say(text, voice))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder
