"""Whisper on the robot's CPU through faster-whisper (CTranslate2): decoding a speech
segment into text with word times on the caller's clock.

The model is chosen and loaded by :class:`WhisperRecognizer` from local files only
(:mod:`erc_ros.core.asr.files`); faster-whisper is imported only when a model loads.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from erc_ros.core.config import AUTO, AsrConfig

from .files import AsrModelError, resolve_model
from .sentences import ends_sentence, has_words

log = logging.getLogger("erc_ros.asr")

SAMPLE_RATE = 16000
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


#: Whisper's mel hop (samples) and its window in mel frames (30 s).
_HOP = 160
_WINDOW_FRAMES = 3000


class StableMelFilters:
    """faster-whisper's mel filterbank (``FeatureExtractor.mel_filters``), projected in
    float64 and rounded to float32. Its float32 product with the power spectrum runs on
    NumPy's OpenBLAS, whose sums round differently with another thread count: the features
    moved by one ulp here and there, and Whisper's INT8 layers after them turned that into
    other word probabilities and encoder states (a transcript or voice reading then depended
    on whether the perception core held BLAS at one thread at that moment; seen on an
    AVX2-only AMD EPYC). In float64 the rounding to float32 no longer depends on it."""

    def __init__(self, filters: np.ndarray):
        self.filters = np.asarray(filters, np.float64)

    def __matmul__(self, magnitudes: np.ndarray) -> np.ndarray:
        return (self.filters @ np.asarray(magnitudes, np.float64)).astype(np.float32)


def stable_features(model):
    """``model`` (a faster-whisper ``WhisperModel``) with :class:`StableMelFilters`."""
    fe = model.feature_extractor
    if not isinstance(fe.mel_filters, StableMelFilters):
        fe.mel_filters = StableMelFilters(fe.mel_filters)
    return model


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
            model = stable_features(_fit_window(WhisperModel)(
                str(path), device="cpu", compute_type=self.config.compute_type,
                cpu_threads=int(self.config.threads), num_workers=1, local_files_only=True))
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
