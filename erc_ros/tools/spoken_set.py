"""`python -m erc_ros spoken-set`: MELD dialogues spoken with natural voices, kept.

Speaking the 1,109 lines of MELD dev with Kokoro takes ~50 CPU-minutes, so it is done once and
shipped: ``data/spoken/kokoro/`` holds one 16 kHz Ogg Opus file per distinct (voice, speed,
text) (:func:`erc_ros.tools.voices.speech_key`) and ``manifest.json`` with each file's sha256,
length, voice and the MELD utterances that use it (and the main cast's voice samples,
:func:`erc_ros.tools.voices.household_lines`, for ``bench-spoken --enroll``).
:class:`erc_ros.tools.voices.SpeechStore` reads from it before its cache, checking each
file's sha256, so
``bench-spoken --voices kokoro`` on MELD dev runs anywhere in minutes without the voices
extra; any other MELD-format file is spoken on the fly (needs the extra, cached).

    python -m erc_ros spoken-set build --meld-csv DEV.csv --voices kokoro --workers 2
    python -m erc_ros spoken-set verify            # every shipped file against its sha256

``build`` synthesizes what is missing (``--workers`` processes, one ONNX Runtime thread
each: Kokoro gains little from a second thread) into the cache and then writes the shipped
folder from the cache: the manifest is rewritten whole, files no line uses are removed.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

from erc_ros.paths import CHECKOUT, sha256_file

#: Where the checkout keeps the spoken sets (one folder per engine).
SPOKEN_ROOT = CHECKOUT / "data" / "spoken"


def lines_to_speak(csv_path: str | Path, engine: str = "kokoro",
                   dialogues: Optional[list[int]] = None) -> list[tuple[str, object, str]]:
    """(text, Voice, utterance id) of every line of the MELD file, cast per dialogue
    (:func:`erc_ros.tools.voices.cast`)."""
    from erc_ros.tools.conversation_gen import read_meld
    from erc_ros.tools.voices import cast

    out = []
    for dlg in read_meld(csv_path, dialogues=dialogues):
        voices = cast([x.speaker for x in dlg], engine)
        out += [(x.text, voices[x.speaker], x.utterance_id) for x in dlg]
    return out


_worker_speaker = None


def _init_worker(engine: str) -> None:
    global _worker_speaker
    import os

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from erc_ros.tools.voices import SpeechStore, Speaker
    # The cache only: a worker writes what is missing there.
    _worker_speaker = Speaker(engine, threads=1, store=SpeechStore(engine))


def _speak(job: tuple[str, object]) -> tuple[str, float, float]:
    text, voice = job
    t = time.perf_counter()
    x = _worker_speaker.say(text, voice)
    return text, x.size / 16000, time.perf_counter() - t


def synthesize(lines, engine: str = "kokoro", workers: int = 2, progress: bool = True) -> dict:
    """Speak every distinct (text, voice) of ``lines`` not yet in a store, into the cache.
    Returns {"lines", "distinct", "synthesized", "audio_s", "wall_s"}."""
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing as mp

    from tqdm import tqdm

    from erc_ros.tools.voices import Speaker, speech_key

    speaker = Speaker(engine)
    jobs = {}
    for text, voice, _ in lines:
        jobs.setdefault(speech_key(voice, text), (text, voice))
    todo = [j for j in jobs.values() if not speaker.cached(*j)]
    t0 = time.perf_counter()
    audio_s = 0.0
    if todo:
        # longest first: the pool ends together
        todo.sort(key=lambda j: -len(j[0]))
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(engine,)) as pool, \
                tqdm(total=len(todo), unit="line", desc=f"speaking ({engine})",
                     disable=not progress, mininterval=5.0) as bar:
            for _, sec, _ in pool.map(_speak, todo, chunksize=4):
                audio_s += sec
                bar.update(1)
                bar.set_postfix_str(f"{audio_s / 60:.1f} min of speech")
    return {"lines": len(lines), "distinct": len(jobs), "synthesized": len(todo),
            "audio_s": round(audio_s, 1), "wall_s": round(time.perf_counter() - t0, 1)}


def write_shipped(lines, engine: str, out: Path) -> dict:
    """Copy the clips of ``lines`` from the stores into ``out`` and write its manifest;
    files of ``out`` no line uses are removed."""
    import shutil

    from erc_ros.tools.voices import SpeechStore, read_opus, speech_key

    store = SpeechStore(engine, [out] if (out / "manifest.json").is_file() else [])
    out.mkdir(parents=True, exist_ok=True)
    clips: dict[str, dict] = {}
    for text, voice, uid in lines:
        k = speech_key(voice, text)
        if k in clips:
            clips[k]["utterances"].append(uid)
            continue
        dest = out / f"{k}.opus"
        src = store.cache / f"{k}.opus"
        if not dest.is_file():
            if not src.is_file():
                raise FileNotFoundError(f"no clip for {uid} ({voice.describe()}): run build")
            shutil.copyfile(src, dest)
        clips[k] = {"file": dest.name, "sha256": sha256_file(dest),
                    "seconds": round(read_opus(dest).size / 16000, 3),
                    "voice": voice.name, "speed": voice.speed, "utterances": [uid]}
    for f in out.glob("*.opus"):
        if f.stem not in clips:
            f.unlink()
    manifest = {"engine": engine, "format": "Ogg Opus, 16 kHz mono",
                "key": "erc_ros.tools.voices.speech_key(voice, text)",
                "clips": dict(sorted(clips.items()))}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=0, sort_keys=False) + "\n")
    return manifest


def verify(folder: Path) -> list[str]:
    """Problems of a shipped folder: files missing, damaged (sha256) or not in the manifest."""
    m = json.loads((folder / "manifest.json").read_text())
    bad = []
    for k, c in m["clips"].items():
        p = folder / c["file"]
        if not p.is_file():
            bad.append(f"{c['file']}: missing")
        elif sha256_file(p) != c["sha256"]:
            bad.append(f"{c['file']}: sha256 differs from the manifest")
    known = {c["file"] for c in m["clips"].values()}
    bad += [f"{f.name}: not in the manifest" for f in folder.glob("*.opus") if f.name not in known]
    return bad


def add_arguments(p) -> None:
    p.add_argument("action", choices=["build", "verify"])
    p.add_argument("--meld-csv", default=None, help="MELD-format CSV (default: MELD dev)")
    p.add_argument("--voices", choices=["kokoro"], default="kokoro")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default=None, help="shipped folder (default data/spoken/<voices>)")


def process_settings(args) -> dict:
    return {"torch_threads": None}


def run(args) -> int:
    out = Path(args.out) if args.out else SPOKEN_ROOT / args.voices
    if args.action == "verify":
        bad = verify(out)
        n = len(json.loads((out / "manifest.json").read_text())["clips"])
        print(f"{out}: {n} clips, {len(bad)} problems")
        for b in bad:
            print("  " + b)
        return 1 if bad else 0
    from erc_ros.tools.voices import household_lines
    from erc_ros.training.data import data_root

    csv_path = Path(args.meld_csv) if args.meld_csv else data_root() / "meld" / "dev_sent_emo.csv"
    # MELD's lines, and the main cast's voice samples (bench-spoken --enroll)
    lines = lines_to_speak(csv_path, args.voices) + household_lines(args.voices)
    r = synthesize(lines, args.voices, args.workers)
    print(f"spoken-set: {r['lines']} lines, {r['distinct']} distinct, {r['synthesized']} "
          f"synthesized ({r['audio_s'] / 60:.1f} min of speech in {r['wall_s'] / 60:.1f} min)",
          flush=True)
    m = write_shipped(lines, args.voices, out)
    total = sum(c["seconds"] for c in m["clips"].values())
    size = sum((out / c["file"]).stat().st_size for c in m["clips"].values())
    print(f"spoken-set: {out}: {len(m['clips'])} clips, {total / 60:.1f} min, "
          f"{size / 1e6:.1f} MB", file=sys.stderr if False else sys.stdout)
    return 0
