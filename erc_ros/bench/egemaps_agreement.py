"""`python -m erc_ros egemaps-agreement`: the packaged eGeMAPS functionals (afx-audio) against
openSMILE's eGeMAPSv02 Functionals on the same real clips, per feature and per feature group.

Clips (:func:`speech_clips`, all 16 kHz float32 as the models see them): espeak-ng sentences
in the project's speaker voices, and real recorded prompts of Debian's
``asterisk-core-sounds-en-wav`` (one English speaker) and ``-fr-wav`` (one French speaker),
8 kHz up-sampled with the project's reader, fetched once into the cache with ``apt-get
download``. Per feature and clip:

- ``rel``: symmetric relative difference ``|a - o| / ((|a| + |o|) / 2)`` (0 to 2; 0/0 = 0),
  large for features whose value is near zero (slopes, MFCC means) however close they are;
- ``per_spread``: ``|a - o|`` over the feature's spread over speech (the ``scale`` of
  :data:`erc_ros.models.egemaps.REFERENCE`): how far apart the two are in the units the
  audio encoder sees after normalisation;
- ``r``: Pearson correlation across clips (does afx-audio order the clips as openSMILE does).

The table gives the median over clips per feature, then per group the median of its
features. openSMILE (``pip install opensmile``; audEERING research licence, non-commercial
only, so in no requirements file) is needed only here; ``--derive-reference`` needs afx-audio
alone and prints the normalisation constants of :mod:`erc_ros.models.egemaps` from a larger
set of the same kinds of clips.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import wave
from pathlib import Path

import numpy as np

from erc_ros.models.egemaps import EGEMAPS_NAMES, REFERENCE, egemaps_features, egemaps_functionals
from erc_ros.models.preprocessing import prosody_features
from erc_ros.synth.conversation import fetch_asterisk
from erc_ros.synth.speech import VOICES, espeak, read_wav, to_16k

#: Feature groups of the table, by name prefix (first match wins).
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("F0 (pitch)", ("F0semitone",)),
    ("temporal (loudness peaks, voiced/unvoiced segments)",
     ("loudnessPeaks", "VoicedSegments", "MeanVoiced", "StddevVoiced", "MeanUnvoiced",
      "StddevUnvoiced")),
    ("loudness", ("loudness", "equivalentSoundLevel")),
    ("spectral balance", ("alphaRatio", "hammarbergIndex", "slope", "spectralFlux")),
    ("MFCC 1-4", ("mfcc",)),
    ("voice quality (jitter, shimmer, HNR, H1-H2, H1-A3)",
     ("jitter", "shimmer", "HNR", "logRelF0")),
    ("formants F1-F3", ("F1", "F2", "F3")),
)

SENTENCES = (
    "I can't believe you did that to me again.",
    "Oh wow, that is the best news I have heard all year!",
    "Please leave me alone, I really don't want to talk about it.",
    "Well, I suppose we could try it your way this time.",
)


def group_of(name: str) -> str:
    for group, prefixes in GROUPS:
        if name.startswith(prefixes):
            return group
    raise KeyError(name)


def _wav_seconds(path: Path) -> float:
    with wave.open(str(path), "rb") as w:
        return w.getnframes() / w.getframerate()


def speech_clips(n_espeak: int = 8, n_en: int = 6, n_fr: int = 6, min_s: float = 1.5,
                 max_s: float = 8.0) -> list[tuple[str, np.ndarray]]:
    """(name, 16 kHz float32) clips: ``n_espeak`` espeak-ng sentences (voices and sentences
    in turn) and ``n_en``/``n_fr`` asterisk prompts of ``min_s`` to ``max_s`` seconds, evenly
    spaced over the name-sorted list (deterministic)."""

    clips = []
    for i in range(n_espeak):
        voice, pitch, speed = VOICES[i % len(VOICES)]
        text = SENTENCES[i % len(SENTENCES)]
        clips.append((f"espeak/{voice}/{i % len(SENTENCES)}", espeak(text, voice, pitch, speed)))
    if n_en or n_fr:
        folders = fetch_asterisk()
        for lang, n in (("en", n_en), ("fr", n_fr)):
            wavs = [p for p in sorted(folders[lang].rglob("*.wav"))
                    if min_s <= _wav_seconds(p) <= max_s]
            for k in np.linspace(0, len(wavs) - 1, n).round().astype(int) if n else []:
                x, sr = read_wav(wavs[k])
                clips.append((f"asterisk-{lang}/{wavs[k].stem}", to_16k(x, sr)))
    return clips


def opensmile_functionals(clips) -> np.ndarray:
    """openSMILE eGeMAPSv02 Functionals [n_clips, 88] (imports ``opensmile``)."""
    import opensmile

    smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                            feature_level=opensmile.FeatureLevel.Functionals)
    if tuple(smile.feature_names) != EGEMAPS_NAMES:
        raise RuntimeError("openSMILE's eGeMAPSv02 names differ from EGEMAPS_NAMES")
    return np.stack([smile.process_signal(x, 16000).to_numpy()[0] for _, x in clips])


def agreement(afx: np.ndarray, smile: np.ndarray) -> dict:
    """Per-feature and per-group agreement of two [n_clips, 88] arrays (see the module)."""

    scale = np.array([REFERENCE[n][1] for n in EGEMAPS_NAMES])
    diff = np.abs(afx - smile)
    den = (np.abs(afx) + np.abs(smile)) / 2
    rel = np.where(den > 0, diff / np.where(den > 0, den, 1), 0.0)
    per_spread = diff / scale
    features = {}
    for j, name in enumerate(EGEMAPS_NAMES):
        a, o = afx[:, j], smile[:, j]
        r = float(np.corrcoef(a, o)[0, 1]) if a.std() > 0 and o.std() > 0 else float("nan")
        features[name] = {"group": group_of(name), "rel": float(np.median(rel[:, j])),
                          "per_spread": float(np.median(per_spread[:, j])), "r": r,
                          "afx_median": float(np.median(a)), "opensmile_median": float(np.median(o))}
    groups = {}
    for group, _ in GROUPS:
        fs = [f for f in features.values() if f["group"] == group]
        groups[group] = {"features": len(fs),
                         **{k: float(np.nanmedian([f[k] for f in fs])) for k in ("rel", "per_spread", "r")}}
    return {"clips": int(afx.shape[0]),
            "median_rel": float(np.median([f["rel"] for f in features.values()])),
            "median_per_spread": float(np.median([f["per_spread"] for f in features.values()])),
            "median_r": float(np.nanmedian([f["r"] for f in features.values()])),
            "groups": groups, "features": features}


def derive_reference(clips) -> dict[str, tuple[float, float]]:
    """Normalisation constants from raw functionals of ``clips``: centre = median, scale =
    inter-quartile range / 1.349 (the standard deviation of a normal with that IQR), or, where
    the quartiles coincide (a feature mostly 0 on these clips), the mean absolute deviation
    from the median, or 1; both rounded to 3 significant digits."""

    raw = np.stack([egemaps_functionals(x) for _, x in clips])
    out = {}
    for j, name in enumerate(EGEMAPS_NAMES):
        v = raw[:, j]
        c = float(np.median(v))
        q1, q3 = np.percentile(v, [25, 75])
        s = (q3 - q1) / 1.349
        if not s > 0:
            s = float(np.mean(np.abs(v - c))) or 1.0
        out[name] = (float(f"{c:.3g}"), float(f"{s:.3g}"))
    return out


def timing(seconds=(1.0, 3.0, 8.0), repeats: int = 7) -> dict[str, dict[str, float]]:
    """Median milliseconds per utterance of the ``egemaps`` and ``prosody`` acoustic features
    (what :meth:`Preprocessor.audio_inputs` adds at utterance close) on espeak-ng speech cut
    to each length, after one warm-up call."""

    speech = np.concatenate([espeak(t) for t in SENTENCES])
    out: dict[str, dict[str, float]] = {}
    for s in seconds:
        x = np.resize(speech, int(s * 16000))
        for name, f in (("egemaps", egemaps_features), ("prosody", prosody_features)):
            f(x)
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                f(x)
                ts.append(time.perf_counter() - t0)
            out.setdefault(f"{s:g} s", {})[name] = round(1e3 * float(np.median(ts)), 1)
    return out


def add_arguments(p) -> None:
    p.add_argument("--json", metavar="OUT", help="write every figure (per feature too) as JSON")
    p.add_argument("--espeak", type=int, default=8, help="espeak-ng clips (default 8)")
    p.add_argument("--en", type=int, default=6, help="asterisk English prompts (default 6)")
    p.add_argument("--fr", type=int, default=6, help="asterisk French prompts (default 6)")
    p.add_argument("--features", action="store_true", help="print every feature, not only groups")
    p.add_argument("--timing", action="store_true",
                   help="only time egemaps vs prosody features per utterance (1, 3, 8 s)")
    p.add_argument("--derive-reference", action="store_true",
                   help="print the normalisation constants (30 espeak + 40 + 40 prompts unless "
                        "given); no openSMILE needed")


def run(args) -> int:

    if args.timing:

        print(f"ms per utterance, median of 7 (load average {os.getloadavg()[0]:.1f}, "
              f"{os.cpu_count()} CPUs)")
        for length, t in timing().items():
            print(f"{length:>5s}  egemaps {t['egemaps']:7.1f}  prosody {t['prosody']:6.1f}")
        return 0
    if args.derive_reference:
        n = {k: getattr(args, k) for k in ("espeak", "en", "fr")}
        if n == {"espeak": 8, "en": 6, "fr": 6}:  # the defaults are the agreement's few clips
            n = {"espeak": 30, "en": 40, "fr": 40}
        clips = speech_clips(n["espeak"], n["en"], n["fr"])
        ref = derive_reference(clips)
        print(f"# {len(clips)} clips: {n}")
        print("REFERENCE: dict[str, tuple[float, float]] = {")
        for name in EGEMAPS_NAMES:
            print(f"    {name!r}: {ref[name]!r},")
        print("}")
        return 0

    if importlib.util.find_spec("opensmile") is None:
        print("openSMILE is not installed: `pip install opensmile` (research licence, "
              "non-commercial only; in no requirements file) in a separate environment",
              file=sys.stderr)
        return 2
    clips = speech_clips(args.espeak, args.en, args.fr)
    afx = np.stack([egemaps_functionals(x) for _, x in clips])
    res = agreement(afx, opensmile_functionals(clips))
    res["clip_names"] = [n for n, _ in clips]
    res["clip_seconds"] = [round(x.size / 16000, 2) for _, x in clips]
    print(f"{res['clips']} clips ({sum(res['clip_seconds']):.0f} s): "
          f"{args.espeak} espeak-ng, {args.en} asterisk en, {args.fr} asterisk fr")
    print(f"{'group':54s} {'n':>3s} {'rel':>6s} {'/spread':>8s} {'r':>6s}")
    rows = list(res["groups"].items()) + [("all 88", {"features": 88, "rel": res["median_rel"],
                                                      "per_spread": res["median_per_spread"],
                                                      "r": res["median_r"]})]
    for g, v in rows:
        print(f"{g:54s} {v['features']:3d} {100 * v['rel']:5.1f}% {v['per_spread']:8.2f} {v['r']:6.2f}")
    if args.features:
        print()
        for name, f in res["features"].items():
            print(f"{name:44s} {100 * f['rel']:6.1f}% {f['per_spread']:7.2f} {f['r']:6.2f}  "
                  f"afx {f['afx_median']:10.4g}  openSMILE {f['opensmile_median']:10.4g}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
