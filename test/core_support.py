"""Shared, cached test material for the perception-core tests (test_core_*.py).

Speech is synthesized once per test session (espeak-ng output cached in a temporary
folder, or under $ERC_ROS_CACHE when set) and the Debian asterisk recordings are fetched
once with ``apt-get download`` (CI machines reach apt; set-up installs espeak-ng).
"""
from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from pathlib import Path

from erc_ros.synth import conversation as cg


@functools.lru_cache(maxsize=None)
def cache_root() -> Path:
    if os.environ.get("ERC_ROS_CACHE"):
        p = Path(os.environ["ERC_ROS_CACHE"])
        p.mkdir(parents=True, exist_ok=True)
        return p
    p = Path(tempfile.mkdtemp(prefix="erc_ros_core_test_"))
    atexit.register(shutil.rmtree, p, ignore_errors=True)
    return p


def espeak_cache() -> Path:
    return cache_root() / "espeak"


@functools.lru_cache(maxsize=None)
def script_conversation() -> cg.GeneratedConversation:
    """The default 3-speaker script once through (~45 s, 12 turns)."""
    lines = [cg.ScriptLine(s, t, e, f"l{i}") for i, (s, e, t) in enumerate(cg.DEFAULT_SCRIPT)]
    return cg.build(lines, seed=3, cache=espeak_cache(), name="script")


#: RAVDESS emotion code (the third field of a clip's name) -> MELD class (the data's README).
RAVDESS_EMOTION = {"01": "neutral", "02": "neutral", "03": "joy", "04": "sadness", "05": "anger",
                   "06": "fear", "07": "disgust", "08": "surprise"}


def ravdess_clips(actor: int, n: int) -> list[tuple[str, "np.ndarray"]]:
    """``n`` (MELD class, 16 kHz float32 audio) RAVDESS clips of one actor (strong intensity,
    first sentence, first repetition: one per emotion in turn), from ../shared/data."""
    import numpy as np
    import soundfile as sf

    from erc_ros.paths import data_root

    files = sorted((data_root() / "ravdess_speech" / f"Actor_{actor:02d}").glob(
        "03-01-*-02-01-01-*.flac"))
    assert len(files) >= n, files
    out = []
    for f in files[:n]:
        x, sr = sf.read(str(f), dtype="float32")
        assert sr == 16000 and x.ndim == 1, f
        out.append((RAVDESS_EMOTION[f.name.split("-")[2]], np.asarray(x, np.float32)))
    return out


@functools.lru_cache(maxsize=None)
def ravdess_conversation(actors: tuple[int, ...] = (1, 2), turns: int = 3
                         ) -> cg.GeneratedConversation:
    """RAVDESS actors taking turns, ``turns`` clips each (their speech without its leading
    and trailing silence), speakers ``actor<n>``; no faces."""
    clips, lines = {}, []
    per_actor = {a: ravdess_clips(a, turns) for a in actors}
    for i in range(turns):
        for a in actors:
            emotion, x = per_actor[a][i]
            uid = f"a{a}_{i}"
            clips[uid] = x
            lines.append(cg.ScriptLine(f"actor{a}", "Kids are talking by the door", emotion, uid))
    return cg.build(lines, seed=2, speech=lambda line, _: clips[line.utterance_id],
                    with_faces=False, name="ravdess")


@functools.lru_cache(maxsize=None)
def real_conversation() -> cg.GeneratedConversation:
    """Two real speakers (Debian asterisk prompts, en and fr voices), 16 turns."""
    return cg.real_two_speaker(16, seed=1, cache=cache_root() / "asterisk")


@functools.lru_cache(maxsize=None)
def core_config(**overrides):
    from erc_ros.core.config import PerceptionConfig

    d = {"diarization.warmup": False}
    d.update({k.replace("__", "."): v for k, v in overrides.items()})
    return PerceptionConfig.from_dict(d)


def run_core(conv, asr: str = "timed", video: bool = False, t0: float = 0.0,
             sample_rate: int = 16000, **overrides):
    """Stream ``conv`` through a fresh core; returns (utterances, core)."""
    from erc_ros.core.perception import PerceptionCore
    from erc_ros.bench.core import stream

    core = PerceptionCore(core_config(**overrides))
    utts, _ = stream(core, conv, asr=asr, video=video, t0=t0, sample_rate=sample_rate)
    return utts, core


def best_turn(conv, u, t0: float = 0.0):
    """The ground-truth turn overlapping utterance ``u`` most (and the overlap)."""
    best, ov = None, 0.0
    for tr in conv.turns:
        o = min(u.end - t0, tr.end) - max(u.start - t0, tr.start)
        if o > ov:
            best, ov = tr, o
    return best, ov


def face_owner(conv: cg.GeneratedConversation, face) -> str:
    """Whose face ``face`` is (an RGB crop as the core cuts one: margin around the detector's
    box): the speaker of ``conv`` in whose face image the middle of the crop is found best.
    Where the detector's box falls on a face differs from how the face was cut, so the
    middle is searched at a few scales; the place matters, as two speakers of the generated
    conversations are mirror images of one photograph."""
    import cv2
    import numpy as np

    g = cv2.cvtColor(np.ascontiguousarray(face, dtype=np.uint8), cv2.COLOR_RGB2GRAY)
    g = cv2.resize(g, (112, 112), interpolation=cv2.INTER_AREA)
    inner = g[24:88, 24:88]
    score = {}
    for s, f in conv.faces.items():
        grey = cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)
        score[s] = max(float(cv2.matchTemplate(cv2.resize(grey, (n, n),
                                                          interpolation=cv2.INTER_AREA),
                                               inner, cv2.TM_CCOEFF_NORMED).max())
                       for n in (96, 112, 128))
    return max(score, key=score.get)
