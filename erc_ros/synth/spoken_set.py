"""`python -m erc_ros spoken-set`: MELD dialogues spoken with natural voices, kept.

Speaking the 1,109 lines of MELD dev with Kokoro takes ~50 CPU-minutes, so it is done once and
shipped: ``data/spoken/kokoro/`` holds one 16 kHz Ogg Opus file per distinct (voice, speed,
text) (:func:`erc_ros.synth.voices.speech_key`) and ``manifest.json`` with each file's sha256,
length, voice and the MELD utterances that use it (and the main cast's voice samples,
:func:`erc_ros.synth.voices.household_lines`, for ``bench-spoken --enroll``).
:class:`erc_ros.synth.voices.SpeechStore` reads from it before its cache, checking each
file's sha256, so
``bench-spoken --voices kokoro`` on MELD dev runs anywhere in minutes without the voices
extra; any other MELD-format file is spoken on the fly (needs the extra, cached).

    python -m erc_ros spoken-set build --meld-csv DEV.csv --voices kokoro --workers 2
    python -m erc_ros spoken-set verify            # every shipped file against its sha256
    python -m erc_ros spoken-set marks --voices kokoro|espeak [--dialogues N] [--json OUT] \
        [--restored OUT.csv]

``build`` synthesizes what is missing (``--workers`` processes, one ONNX Runtime thread
each: Kokoro gains little from a second thread) into the cache and then writes the shipped
folder from the cache: the manifest is rewritten whole, files no line uses are removed.

``marks`` asks whether the voices say the marks the recognizer seldom writes (``!``): how well
a line's audio (its eGeMAPS functionals, standardised per voice as a robot could per speaker)
tells the lines that carry a mark from the others, against the words alone and both
(:func:`marks_heard`); ``--restored`` writes the lines with a ``!`` where that audio model
hears one (out of fold), for ``evaluate``.
"""
from __future__ import annotations

import csv
import json
import multiprocessing as mp
import os
import re
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np
from scipy.sparse import csr_matrix, hstack
from tqdm import tqdm

from erc_ros.datasets.robot_views import no_exclamations
from erc_ros.models.egemaps import egemaps_features
from erc_ros.paths import CHECKOUT, data_root, sha256_file
from erc_ros.synth.conversation import read_meld
from erc_ros.synth.voices import (Speaker, SpeechStore, cast, dialogue_of, household_lines,
                                  read_opus, speech_key)

#: Where the checkout keeps the spoken sets (one folder per engine).
SPOKEN_ROOT = CHECKOUT / "data" / "spoken"


def lines_to_speak(csv_path: str | Path, engine: str = "kokoro",
                   dialogues: Optional[list[int]] = None,
                   max_dialogues: Optional[int] = None) -> list[tuple[str, object, str]]:
    """(text, Voice, utterance id) of every line of the MELD file (its first
    ``max_dialogues``), cast per dialogue (:func:`erc_ros.synth.voices.cast`)."""

    out = []
    for dlg in read_meld(csv_path, dialogues=dialogues, max_dialogues=max_dialogues):
        voices = cast([x.speaker for x in dlg], engine)
        out += [(x.text, voices[x.speaker], x.utterance_id) for x in dlg]
    return out


_worker_speaker = None


def _init_worker(engine: str) -> None:
    global _worker_speaker

    os.environ.setdefault("OMP_NUM_THREADS", "1")
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
                "key": "erc_ros.synth.voices.speech_key(voice, text)",
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


#: The marks ``marks`` asks about: the recognizer writes ``?`` (a question's words show it)
#: and seldom ``!`` (the voices must say it).
MARKS = ("!", "?")


def mark_features(lines, engine: str, progress: bool = True):
    """The eGeMAPS functionals (:func:`erc_ros.models.egemaps.egemaps_features`) of each
    distinct clip of ``lines`` ((text, Voice, utterance id), :func:`lines_to_speak`), spoken
    as ``bench-spoken`` speaks them (the stores, else synthesis). Returns (features [n, 88],
    texts, voices (``Voice.describe()``), dialogues (of the clip's first line), the clip of
    each line (utterance id -> row))."""

    speaker = Speaker(engine)
    feats, texts, voices, dialogues, row, clip_of = [], [], [], [], {}, {}
    for text, voice, uid in tqdm(lines, unit="line", desc=f"eGeMAPS ({engine})",
                                 disable=not progress, mininterval=5.0):
        k = speech_key(voice, text)
        if k in row:  # the same clip twice would be in two folds at once
            clip_of[uid] = row[k]
            continue
        clip_of[uid] = row[k] = len(feats)
        feats.append(egemaps_features(speaker.say(text, voice)))
        texts.append(text)
        voices.append(voice.describe())
        dialogues.append(dialogue_of(uid))
    return (np.array(feats, dtype=np.float64).reshape(-1, 88), texts, voices, dialogues,
            clip_of)


def marks_heard(features, texts, voices, dialogues, mark: str = "!", folds: int = 5,
                scores: Optional[dict] = None) -> dict:
    """How well ``mark`` in a line's text is told from its audio, its words or both:
    out-of-fold ROC AUC of a logistic regression (scikit-learn, fixed C=1, no choice made on
    the data), ``folds`` folds grouped by dialogue. The audio is each clip's features
    standardised over its voice's clips (a voice with one clip gives zeros) and scaled to
    rows of unit norm on average, as the words' rows are (so that neither block outweighs
    the other in ``both`` by its size); the words are
    TF-IDF unigrams and bigrams of the text with every mark taken out (``!?.,;:``), as
    neither the recognizer's text nor the audio shows them as such. AUC 0.5 is chance.
    ``scores``, where given, gets each model's out-of-fold probabilities (``audio``,
    ``words``, ``both``: one per clip)."""

    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold

    x = np.asarray(features, dtype=np.float64)
    y = np.array([mark in t for t in texts])
    voices, groups = np.asarray(voices), np.asarray(dialogues)
    out = {"mark": mark, "clips": int(len(y)), "with_mark": int(y.sum()),
           "voices": int(len(set(voices.tolist()))), "folds": folds}
    if len(y) < 2 * folds or y.all() or not y.any() or len(set(groups.tolist())) < folds:
        raise ValueError(f"marks: {len(y)} clips ({int(y.sum())} with {mark!r}) in "
                         f"{len(set(groups.tolist()))} dialogues: too few for {folds} folds")
    audio = np.zeros_like(x)
    for v in set(voices.tolist()):
        i = voices == v
        if i.sum() > 1:
            audio[i] = (x[i] - x[i].mean(0)) / (x[i].std(0) + 1e-6)
    audio /= np.sqrt(x.shape[1])  # rows of unit norm on average, as the words' TF-IDF rows
    bare = [re.sub(r"[!?.,;:]", " ", t).lower() for t in texts]
    words = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit_transform(bare)
    for name, f in (("audio", csr_matrix(audio)), ("words", words),
                    ("both", hstack([words, csr_matrix(audio)]).tocsr())):
        p = np.zeros(len(y))
        for tr, te in GroupKFold(folds).split(f, y, groups):
            if y[tr].all() or not y[tr].any():
                p[te] = y[tr].mean()
                continue
            m = LogisticRegression(C=1.0, max_iter=5000).fit(f[tr], y[tr])
            p[te] = m.predict_proba(f[te])[:, 1]
        out[f"auc_{name}"] = round(float(roc_auc_score(y, p)), 4)
        if scores is not None:
            scores[name] = p
    return out


def with_marks_restored(text: str, exclaimed: bool) -> str:
    """``text`` as a recognizer that hears exclamations in the voice would write it: every
    ``!`` read as ``.`` (:func:`erc_ros.datasets.robot_views.robot_view`'s ``exclamations``), then,
    where ``exclaimed``, the line's last full stop (or its end, where it has no mark) made a
    ``!``; a question stays one."""

    t = no_exclamations(text).rstrip()
    if not exclaimed or t.endswith("?"):
        return t
    if t.endswith(".") and not t.endswith(".."):
        return t[:-1] + "!"
    return t + "!"


def _write_restored(csv_path: Path, out: Path, clip_of: dict, p) -> int:
    """``csv_path``'s rows of the lines in ``clip_of`` (utterance id -> clip) with ``!``
    where the out-of-fold probability ``p`` of the line's clip is over 0.5
    (:func:`with_marks_restored`), as ``out``; returns how many lines got one."""

    exclaimed = {uid: p[i] > 0.5 for uid, i in clip_of.items()}
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = [(r, exclaimed.get(f"dia{r['Dialogue_ID']}_utt{r['Utterance_ID']}"))
                for r in reader]
        fields = reader.fieldnames
    n = 0
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        for r, bang in rows:
            if bang is None:  # a dialogue left out (--dialogues)
                continue
            bang = bool(bang)
            n += bang
            w.writerow({**r, "Utterance": with_marks_restored(r["Utterance"], bang)})
    return n


def _marks(args) -> int:

    csv_path = Path(args.meld_csv) if args.meld_csv else data_root() / "meld" / "dev_sent_emo.csv"
    if args.dialogues is not None and args.dialogues < 1:
        print(f"spoken-set marks: --dialogues must be 1 or more, got {args.dialogues}",
              file=sys.stderr)
        return 2
    lines = lines_to_speak(csv_path, args.voices, max_dialogues=args.dialogues)
    x, texts, voices, dlg, clip_of = mark_features(lines, args.voices)
    scores: dict = {}
    try:
        rows = [marks_heard(x, texts, voices, dlg, m, scores=scores if m == "!" else None)
                for m in MARKS]
    except ValueError as e:
        print(f"spoken-set {e}", file=sys.stderr)
        return 2
    print(f"spoken-set marks: {csv_path.name}, {args.voices} voices, {len(texts)} clips in "
          f"{len(set(dlg))} dialogues, {rows[0]['voices']} voices; out-of-fold ROC AUC of a "
          f"line's mark from (0.5 = chance):")
    print(f"  {'mark':>4} {'lines with it':>13} {'audio':>6} {'words':>6} {'both':>6}")
    for r in rows:
        print(f"  {r['mark']:>4} {r['with_mark']:>13} {r['auc_audio']:6.3f} "
              f"{r['auc_words']:6.3f} {r['auc_both']:6.3f}")
    if args.restored:
        n = _write_restored(csv_path, Path(args.restored), clip_of, scores["audio"])
        print(f"  {args.restored}: the lines with every '!' read as '.' and {n} given one "
              f"back where the audio says so (out of fold, p > 0.5): score it with "
              f"`python -m erc_ros evaluate --csv {args.restored}`")
    if args.json:
        Path(args.json).write_text(json.dumps({"csv": csv_path.name, "voices": args.voices,
                                               "marks": rows}, indent=1) + "\n")
    return 0


def add_arguments(p) -> None:
    p.add_argument("action", choices=["build", "verify", "marks"])
    p.add_argument("--meld-csv", default=None, help="MELD-format CSV (default: MELD dev)")
    p.add_argument("--voices", choices=["kokoro", "espeak"], default="kokoro",
                   help="build: kokoro only (espeak-ng is fast and needs no shipped set)")
    p.add_argument("--dialogues", type=int, default=None,
                   help="marks: the first N dialogues of the file")
    p.add_argument("--json", default=None, help="marks: the figures as JSON")
    p.add_argument("--restored", default=None, metavar="CSV",
                   help="marks: write the file's lines as a recognizer would that hears a "
                        "'!' where the audio model does (out of fold), for `evaluate`")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default=None, help="shipped folder (default data/spoken/<voices>)")


def process_settings(args) -> dict:
    return {"torch_threads": None}


def run(args) -> int:
    out = Path(args.out) if args.out else SPOKEN_ROOT / args.voices
    if args.action == "verify":
        if not (out / "manifest.json").is_file():
            print(f"spoken-set verify: no shipped set at {out} (no manifest.json)",
                  file=sys.stderr)
            return 2
        bad = verify(out)
        n = len(json.loads((out / "manifest.json").read_text())["clips"])
        print(f"{out}: {n} clips, {len(bad)} problems")
        for b in bad:
            print("  " + b)
        return 1 if bad else 0
    if args.action == "marks":
        return _marks(args)
    if args.voices != "kokoro":
        raise SystemExit("spoken-set build: kokoro only (espeak-ng is fast: spoken on the fly)")

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
