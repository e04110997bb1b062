"""The perception core: time-stamped audio, frames and ASR results in, utterances out.

Usage (what the utterance node does; no rclpy here)::

    core = PerceptionCore(PerceptionConfig.from_dict(params))
    core.push_audio(chunk)          # cheap: decode, resample, buffer (raises InputError)
    core.push_frame(frame)          # cheap: validate, thin, buffer   (raises InputError)
    core.push_transcript(event)     # cheap: record                   (raises InputError)
    for utt in core.poll(now):      # the work: VAD, speaker embeddings, segmentation,
        publish(utt)                # diarization, faces; utterances complete at `now`
    core.flush()                    # end of stream

``push_*`` only buffer, so they may run in subscription callbacks; :meth:`poll` does the
work incrementally (each audio window is looked at once) and is meant for a timer. All
public methods take one lock, so callbacks and the timer may be on different threads.

Segmentation, by what the robot has (``segmentation.mode``, ``auto`` picks per result):

- ASR with times (``TranscriptEvent.timed``): the final result's [start, end] is the
  utterance; incremental results only mark it open. Voice-activity segments it overlaps
  are claimed so they are not emitted again.
- ASR without times: the final text is aligned to the voice-activity segment(s) it most
  plausibly belongs to: the latest unclaimed segment that ended before the result (or is
  still open), merged with earlier unclaimed ones closer than ``merge_gap_seconds``.
- No ASR: each voice-activity segment is an utterance with empty text.

ASR finals waiting are bounded. A timed final whose span ends more than
``max_transcript_lead_seconds`` after the input clock (the later of the end of the audio
pushed and the last ``now`` given to :meth:`poll`; before either, no final is judged so),
or an untimed final stamped that far ahead, is refused (``InputError`` reason ``transcript_future``): its audio would never come
and it would wait forever. A transcript a little ahead of its audio (ASR on its own
microphone path, audio still in flight) is within the lead and waits as before. At most
``max_pending_utterances`` timed finals wait for their audio, and as many untimed ones for
their speech; beyond that the *newest* is refused (``pending_full``): the waiting ones are
about to come out and are never dropped for it. Both refusals are counted by reason, like
every refused input (``stats()["counters"]["refused"]``, /diagnostics through the node).

Every parameter is a documented dataclass field of :class:`PerceptionConfig`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from .audio_buffer import AudioBuffer
from .conversation import ConversationHistory
from .errors import InputError, PendingFullError, TranscriptError, TranscriptFutureError
from .params import flatten
from .types import SAMPLE_RATE, AudioChunk, Frame, TranscriptEvent, Utterance


def _f(default, doc: str, **kw):
    """A config field with its documentation (read by ``PerceptionConfig.describe``)."""
    return field(default=default, metadata={"doc": doc, **kw})


@dataclass
class AudioConfig:
    capacity_seconds: float = _f(60.0, "seconds of 16 kHz audio kept in the ring buffer")
    stamp_tolerance_seconds: float = _f(
        0.1, "stamp jitter ignored between consecutive chunks; beyond it a gap is filled "
        "with silence or an overlap trimmed")
    max_gap_fill_seconds: float = _f(
        5.0, "gaps up to this are filled with silence; a larger forward jump starts a new "
        "epoch (and a new conversation)")
    clock_reset_seconds: float = _f(
        1.0, "a stamp this far behind the buffered audio is a clock reset / bag loop: new "
        "epoch and conversation; smaller steps back are overlaps (trimmed) or refused")
    max_chunk_seconds: float = _f(30.0, "longer chunks are refused (InputError 'audio_size')")
    check_sample_rate: bool = _f(
        True, "refuse chunks while the stamps advance at a pace the declared sample rate "
        "cannot explain (InputError 'audio_rate')")
    rate_tolerance: float = _f(0.15, "relative pace mismatch tolerated by check_sample_rate")


@dataclass
class VadConfig:
    threshold: float = _f(0.5, "silero-vad speech probability that starts speech")
    neg_threshold: float = _f(0.35, "probability below which speech may end")
    min_silence_seconds: float = _f(0.4, "silence hang-over that ends a speech segment")
    min_speech_seconds: float = _f(0.25, "shorter speech segments are ignored")
    pad_seconds: float = _f(0.05, "padding added to both ends of a speech segment")
    threads: int = _f(1, "onnxruntime threads for silero-vad")


@dataclass
class SegmentationConfig:
    mode: str = _f("auto", "auto | asr_timed | asr_untimed | vad. auto: timed ASR results "
                   "cut by their times, untimed ones are aligned to voice activity, and "
                   "speech no result claims within asr_wait_seconds becomes a text-less "
                   "utterance while no ASR result has been seen for asr_presence_seconds. "
                   "vad: voice activity alone, emitted at once",
                   choices=("auto", "asr_timed", "asr_untimed", "vad"))
    max_utterance_seconds: float = _f(15.0, "longer speech is cut; longer ASR spans keep "
                                      "their first max_utterance_seconds of audio")
    min_utterance_seconds: float = _f(0.2, "shorter utterances are dropped (ASR ones "
                                      "with text are widened to this length instead)")
    asr_wait_seconds: float = _f(
        3.0, "how long to wait for audio to cover a timed result, for an untimed final to "
        "arrive after its speech, or (auto/ASR modes) for text to claim a speech segment")
    asr_presence_seconds: float = _f(60.0, "auto mode: an ASR result within this long means "
                                     "ASR is present (unclaimed speech is dropped, not emitted)")
    emit_untranscribed: bool = _f(False, "with ASR present, emit speech no ASR result claimed "
                                  "(empty text) instead of dropping it")
    merge_gap_seconds: float = _f(1.0, "untimed ASR: merge unclaimed speech segments closer "
                                  "than this into one utterance")
    words_per_second: float = _f(2.5, "untimed ASR with no speech segment: span estimated "
                                 "from the word count")
    max_transcript_lead_seconds: float = _f(
        5.0, "a timed final whose span ends more than this after the input clock (end of the "
        "audio pushed, or the last poll time if later), or an untimed final stamped that far "
        "ahead, is refused (InputError 'transcript_future'): an ASR clock ahead of the "
        "robot's, or a flood; a result slightly ahead of its audio still waits for it")
    max_pending_utterances: int = _f(
        64, "timed finals waiting for their audio, and untimed finals waiting for their "
        "speech (each); beyond it the newest final is refused (InputError 'pending_full') "
        "and the waiting ones are kept")
    max_text_characters: int = _f(
        2000, "an ASR result with more characters than this is refused (InputError "
        "'transcript_too_long'): 15 s of speech is a few hundred characters, and the text "
        "model reads a few hundred tokens at most; a longer one is a flood or a broken ASR")


@dataclass
class DiarizationConfig:
    enabled: bool = _f(True, "compute speaker embeddings (resemblyzer) and cluster them")
    window_seconds: float = _f(1.6, "speaker-embedding window (resemblyzer partial = 1.6 s)")
    step_seconds: float = _f(0.8, "hop between windows embedded while the person speaks")
    min_voiced: float = _f(0.5, "a window is embedded if this fraction of it is speech")
    embed_on_pause: bool = _f(False, "embed the end of the speech as soon as it goes quiet "
                              "(VAD hang-over), so an utterance closed by an ASR result "
                              "arriving then needs no embedding on the latency path (saves "
                              "~5-10 ms there; raised DER on one real conversation here)")
    threshold: float = _f(0.80, "cosine similarity to a speaker centroid to join it")
    merge_threshold: float = _f(0.85, "two speakers whose centroids reach this similarity "
                                "continue as the older id (past ids never change)")
    merge_max_members: int = _f(3, "only a speaker with at most this many utterances is "
                                "folded into another (big clusters' centroids converge)")
    enroll_threshold: float = _f(0.75, "cosine similarity to an enrolled voice to take its name")
    min_new_speaker_seconds: float = _f(1.0, "shorter utterances never found a new speaker")
    max_speakers: int = _f(20, "cap on speaker clusters (kept across conversations unless "
                           "reset_on_new_conversation); beyond it, the nearest speaker")
    reset_on_new_conversation: bool = _f(False, "forget speakers when a conversation starts")
    warmup: bool = _f(True, "run the embedder once at start so the first utterance is fast")
    threads: int = _f(1, "torch threads for the speaker embedder (more than one thread on a "
                      "busy 2-core machine is much slower, not faster)")


@dataclass
class FaceConfig:
    enabled: bool = _f(True, "buffer frames and attach the speaker's face crops")
    count: int = _f(8, "face crops per utterance (fixed; nearest detections repeated)")
    size: int = _f(112, "crop side in pixels (square RGB)")
    margin: float = _f(0.2, "margin around the detected box, relative to its size")
    buffer_seconds: float = _f(20.0, "seconds of frames kept")
    store_fps: float = _f(8.0, "frames kept per second (others are dropped on arrival)")
    store_max_width: int = _f(640, "frames wider than this are downscaled when stored")
    detect_width: int = _f(256, "face detection runs on a copy this wide")
    detect_frames: int = _f(1, "key frames (frames with a face detection) an utterance needs: "
                            "those detected while the person spoke count, the rest are "
                            "detected when it closes, on the latency path; other frames "
                            "reuse the nearest key frame's boxes")
    detect_fps: float = _f(1.0, "while someone speaks, detect on stored frames at this rate "
                           "so little detection is left for when the utterance closes")
    min_face_fraction: float = _f(0.1, "smallest face detected, as a fraction of the width")
    use_av_activity: bool = _f(True, "with several faces pick the one whose mouth moves "
                               "while voice is active (else largest / most central)")


@dataclass
class ConversationConfig:
    new_conversation_gap_seconds: float = _f(60.0, "silence after which a new conversation "
                                             "starts")
    history_utterances: int = _f(20, "utterances kept per conversation")


_SECTIONS = {"audio": AudioConfig, "vad": VadConfig, "segmentation": SegmentationConfig,
             "diarization": DiarizationConfig, "faces": FaceConfig,
             "conversation": ConversationConfig}


@dataclass
class PerceptionConfig:
    """Every parameter of the core, in sections. ROS parameters / YAML use the flat names
    ``section.field`` (e.g. ``vad.min_silence_seconds``)."""

    audio: AudioConfig = field(default_factory=AudioConfig)
    vad: VadConfig = field(default_factory=VadConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    diarization: DiarizationConfig = field(default_factory=DiarizationConfig)
    faces: FaceConfig = field(default_factory=FaceConfig)
    conversation: ConversationConfig = field(default_factory=ConversationConfig)

    @classmethod
    def from_dict(cls, d: Optional[dict] = None) -> "PerceptionConfig":
        """From nested dicts ``{"vad": {"threshold": 0.6}}`` and/or flat keys
        ``{"vad.threshold": 0.6}``. Unknown keys and wrongly typed values raise ValueError."""
        cfg = cls()
        for key, value in flatten(d or {}).items():
            section, _, name = key.partition(".")
            sub = getattr(cfg, section, None) if section in _SECTIONS else None
            fields = {f.name: f for f in dataclasses.fields(sub)} if sub is not None else {}
            if name not in fields:
                raise ValueError(f"unknown perception parameter '{key}'")
            setattr(sub, name, _coerce(key, value, fields[name]))
        cfg.validate()
        return cfg

    def to_dict(self, flat: bool = False) -> dict:
        d = dataclasses.asdict(self)
        return flatten(d) if flat else d

    @classmethod
    def describe(cls) -> list[tuple[str, Any, str]]:
        """``(flat name, default, description)`` of every parameter, for declaring them."""
        out = []
        for section, klass in _SECTIONS.items():
            for f in dataclasses.fields(klass):
                out.append((f"{section}.{f.name}", f.default, f.metadata.get("doc", "")))
        return out

    def validate(self) -> None:
        if self.segmentation.mode not in ("auto", "asr_timed", "asr_untimed", "vad"):
            raise ValueError(f"segmentation.mode '{self.segmentation.mode}' is not one of "
                             "auto, asr_timed, asr_untimed, vad")
        if self.faces.count < 1 or self.faces.size < 8:
            raise ValueError("faces.count must be >= 1 and faces.size >= 8")
        if self.audio.capacity_seconds < self.segmentation.max_utterance_seconds + \
                self.segmentation.asr_wait_seconds:
            raise ValueError("audio.capacity_seconds must cover segmentation."
                             "max_utterance_seconds + asr_wait_seconds")
        if not (0 < self.vad.neg_threshold <= self.vad.threshold < 1):
            raise ValueError("need 0 < vad.neg_threshold <= vad.threshold < 1")
        if not self.segmentation.max_transcript_lead_seconds >= 0:
            raise ValueError("segmentation.max_transcript_lead_seconds must be >= 0")
        if self.segmentation.max_pending_utterances < 1:
            raise ValueError("segmentation.max_pending_utterances must be >= 1")
        if self.segmentation.max_text_characters < 1:
            raise ValueError("segmentation.max_text_characters must be >= 1")


def _coerce(key: str, value, f: dataclasses.Field):
    kind = type(f.default)
    if kind is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"parameter '{key}' must be a bool, got {value!r}")
        return bool(value)
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number, str)):
            raise ValueError(f"parameter '{key}' must be a number, got {value!r}")
        try:
            v = float(value)
        except ValueError:
            raise ValueError(f"parameter '{key}' must be a number, got {value!r}") from None
        if kind is int:
            if v != int(v):
                raise ValueError(f"parameter '{key}' must be an integer, got {value!r}")
            return int(v)
        return v
    if kind is str:
        return str(value)
    return value


@dataclass
class _Pending:
    """An utterance waiting for its audio (timed ASR) or decided (VAD / untimed ASR)."""

    start: float
    end: float
    text: str = ""
    final_stamp: float = float("nan")
    hint: str = ""
    text_confidence: float = float("nan")
    locale: str = ""
    timed: bool = False


@dataclass
class _Seg:
    start: float
    end: float
    claimed: bool = False
    emitted: bool = False


class _Timer:
    def __init__(self):
        self.total = {}
        self.calls = {}

    def add(self, name: str, dt: float, n: int = 1) -> None:
        self.total[name] = self.total.get(name, 0.0) + dt
        self.calls[name] = self.calls.get(name, 0) + n


class PerceptionCore:
    """See the module documentation."""

    def __init__(self, config: Optional[PerceptionConfig] = None):
        self.config = cfg = config or PerceptionConfig()
        cfg.validate()
        from .diarization import OnlineDiarizer, SpeakerEmbedder
        from .faces import FaceDetector, FrameBuffer
        from .vad import StreamingVad, VadSegmenter

        self._lock = threading.RLock()
        self._timer = _Timer()
        # The core's numpy maths is many small matrix products (mel filterbanks, cosine
        # similarities): OpenBLAS's thread pool makes those ~100x slower on a busy 2-core
        # machine (spinning threads). The core runs them single-threaded, scoped to its calls.
        from threadpoolctl import ThreadpoolController

        self._blas = ThreadpoolController()
        a = cfg.audio
        self.buffer = AudioBuffer(a.capacity_seconds, a.stamp_tolerance_seconds,
                                  a.max_gap_fill_seconds, a.clock_reset_seconds,
                                  a.max_chunk_seconds, a.check_sample_rate,
                                  rate_tolerance=a.rate_tolerance,
                                  on_discontinuity=self._on_discontinuity)
        v = cfg.vad
        self.vad = StreamingVad(VadSegmenter(v.threshold, v.neg_threshold, v.min_silence_seconds,
                                             v.min_speech_seconds,
                                             cfg.segmentation.max_utterance_seconds,
                                             v.pad_seconds),
                                history_s=a.capacity_seconds, threads=v.threads)
        dz = cfg.diarization
        self.embedder = None
        if dz.enabled:
            self.embedder = SpeakerEmbedder(dz.window_seconds, dz.step_seconds, dz.min_voiced,
                                            history_s=a.capacity_seconds,
                                            embed_on_pause=dz.embed_on_pause)
            t = time.perf_counter()
            with self._blas.limit(limits=1, user_api="blas"):
                self.embedder.load(warmup=dz.warmup)
            self._timer.add("load_embedder", time.perf_counter() - t)
        self.diarizer = OnlineDiarizer(dz.threshold, dz.enroll_threshold,
                                       dz.min_new_speaker_seconds, max_speakers=dz.max_speakers,
                                       merge_threshold=dz.merge_threshold,
                                       merge_max_members=dz.merge_max_members)
        fc = cfg.faces
        self.frames = FrameBuffer(fc.buffer_seconds, fc.store_fps, fc.store_max_width,
                                  a.clock_reset_seconds) if fc.enabled else None
        self.detector = FaceDetector(fc.detect_width, 1.2, 4, fc.min_face_fraction) \
            if fc.enabled else None
        self.history = ConversationHistory(cfg.conversation.history_utterances)
        self._segs: deque[_Seg] = deque(maxlen=256)
        self._pending: list[_Pending] = []
        # Both bounded by segmentation.max_pending_utterances (push_transcript refuses more).
        self._untimed: deque[TranscriptEvent] = deque()
        self._timed_spans: deque = deque(maxlen=32)  # recent timed ASR spans (claim speech)
        self._open_partials: dict[str, float] = {}
        self._ready: list[Utterance] = []
        self._asr_seen: Optional[float] = None
        self._last_poll: Optional[float] = None  # `now` of the last poll (input clock)
        self._conv_index = 0
        self._conv_id = self._make_conv_id()
        self._utt_index = 0
        self._last_end: Optional[float] = None
        self._last_claimed_end = -math.inf
        self.counters = {"utterances": 0, "utterances_vad": 0, "utterances_timed": 0,
                         "utterances_untimed": 0, "untimed_estimated_span": 0,
                         "close_embeddings": 0,
                         "speech_dropped_untranscribed": 0, "utterances_no_face": 0,
                         "refused": {}, "transcripts": 0, "partials": 0, "frames": 0,
                         "conversations": 1, "discontinuities": 0}
        self._close_ms: deque = deque(maxlen=200)

    @contextlib.contextmanager
    def _work(self):
        with self._lock, self._blas.limit(limits=1, user_api="blas"):
            yield

    # -- ids ---------------------------------------------------------------------------
    def _make_conv_id(self) -> str:
        return f"conv{self._conv_index:04d}"

    @property
    def conversation_id(self) -> str:
        return self._conv_id

    def new_conversation(self) -> str:
        """Start a new conversation now (context and, if configured, speakers forgotten)."""
        with self._lock:
            return self._new_conversation()

    def _new_conversation(self) -> str:
        self._conv_index += 1
        self._conv_id = self._make_conv_id()
        self.counters["conversations"] += 1
        if self.config.diarization.reset_on_new_conversation:
            self.diarizer.reset()
        return self._conv_id

    # -- input -------------------------------------------------------------------------
    def _refuse(self, e: InputError) -> None:
        r = self.counters["refused"]
        r[e.reason] = r.get(e.reason, 0) + 1

    def push_audio(self, chunk: AudioChunk) -> None:
        """Buffer one audio chunk (decoded, resampled to 16 kHz). Raises InputError."""
        with self._work():  # a clock reset inside push finishes the old epoch's work
            t = time.perf_counter()
            try:
                self.buffer.push(chunk)
            except InputError as e:
                self._refuse(e)
                raise
            finally:
                self._timer.add("buffer", time.perf_counter() - t)

    def push_frame(self, frame: Frame) -> None:
        """Buffer one camera frame (thinned, maybe downscaled). Raises InputError."""
        if self.frames is None:
            return
        with self._lock:
            t = time.perf_counter()
            try:
                self.frames.push(frame)
                self.counters["frames"] += 1
            except InputError as e:
                self._refuse(e)
                raise
            finally:
                self._timer.add("frames_store", time.perf_counter() - t)

    def push_transcript(self, ev: TranscriptEvent) -> None:
        """Record one ASR result (incremental or final, timed or not). Raises InputError."""
        with self._lock:
            try:
                self._check_transcript(ev)
                limit = self.config.segmentation.max_text_characters
                if len(ev.text) > limit:
                    raise TranscriptError(f"ASR result of {len(ev.text)} characters (segmentation."
                                          f"max_text_characters={limit})", "transcript_too_long")
            except InputError as e:
                self._refuse(e)
                raise
            mode = self.config.segmentation.mode
            timed = ev.timed and mode != "asr_untimed"
            if ev.is_final:
                try:
                    self._check_waiting_room(ev, timed)
                except InputError as e:
                    self._refuse(e)
                    raise
            self._asr_seen = float(ev.stamp)
            key = ev.segment_id or ("timed" if timed else "untimed")
            if not ev.is_final:
                self.counters["partials"] += 1
                self._open_partials.setdefault(key, ev.start if timed else ev.stamp)
                while len(self._open_partials) > 32:  # partials whose final never came
                    self._open_partials.pop(next(iter(self._open_partials)))
                return
            self.counters["transcripts"] += 1
            self._open_partials.pop(key, None)
            if timed:
                self._pending.append(_Pending(
                    float(ev.start), float(ev.end), ev.text.strip(), float(ev.stamp),
                    ev.speaker_hint, float(ev.confidence), ev.locale, timed=True))
            else:
                self._untimed.append(ev)

    def _input_clock(self) -> float:
        """The latest input time known: end of the audio pushed, or the last poll's ``now``
        if later (-inf before either)."""
        t = -math.inf if self._last_poll is None else self._last_poll
        if self.buffer.epoch >= 0:
            t = max(t, self.buffer.input_end_time)
        return t

    def _check_waiting_room(self, ev: TranscriptEvent, timed: bool) -> None:
        """Refuse a final that would wait forever (far ahead of the input clock) or that
        finds the waiting room full (see the module docs)."""
        sc = self.config.segmentation
        t = float(ev.end) if timed else float(ev.stamp)
        clock = self._input_clock()  # -inf before any audio or poll: nothing to judge by
        if clock > -math.inf and t > clock + sc.max_transcript_lead_seconds:
            what = f"span [{float(ev.start):.3f}, {t:.3f}] s ends" if timed else \
                f"stamp {t:.3f} s is"
            raise TranscriptFutureError(
                f"ASR final's {what} {t - clock:.1f} s after the latest audio/poll time "
                f"{clock:.3f} s (segmentation.max_transcript_lead_seconds="
                f"{sc.max_transcript_lead_seconds:g}): is the ASR clock ahead of the robot's? "
                f"Result refused")
        waiting = len(self._pending) if timed else len(self._untimed)
        if waiting >= sc.max_pending_utterances:
            raise PendingFullError(
                f"{waiting} {'timed' if timed else 'untimed'} ASR finals already wait for "
                f"their {'audio' if timed else 'speech'} (segmentation.max_pending_utterances="
                f"{sc.max_pending_utterances}); newest result refused")

    @staticmethod
    def _check_transcript(ev: TranscriptEvent) -> None:
        if not isinstance(ev.text, str):
            raise TranscriptError(f"transcript text must be a string, got {type(ev.text).__name__}")
        if not math.isfinite(float(ev.stamp)):
            raise TranscriptError(f"transcript stamp {ev.stamp!r} is not a finite time")
        if (ev.start is None) != (ev.end is None):
            raise TranscriptError("transcript has only one of start/end")
        if ev.timed:
            s, e = float(ev.start), float(ev.end)
            if not (math.isfinite(s) and math.isfinite(e)):
                raise TranscriptError(f"transcript times [{ev.start}, {ev.end}] are not finite")
            if e < s:
                raise TranscriptError(f"transcript ends ({e:.3f}) before it starts ({s:.3f})")

    def enroll(self, name: str, audio16k: np.ndarray) -> None:
        """Register a known person from a voice sample (mono float32, 16 kHz, >= 1 s)."""
        if self.embedder is None:
            raise RuntimeError("enrolment needs diarization.enabled")
        a = np.asarray(audio16k, np.float32).reshape(-1)
        if a.size < SAMPLE_RATE:
            raise InputError(f"enrolment sample for '{name}' is {a.size / SAMPLE_RATE:.2f} s; "
                             f"give at least 1 s of speech", reason="enroll")
        with self._work():
            self.diarizer.enroll(name, self.embedder.embed_audio(a))

    # -- work --------------------------------------------------------------------------
    def _advance(self) -> None:
        """Run VAD and the streaming embedder over newly buffered audio."""
        t = time.perf_counter()
        segs = self.vad.process(self.buffer)
        self._timer.add("vad", time.perf_counter() - t)
        for s in segs:
            self._segs.append(_Seg(s.start, s.end))
        if self.embedder is not None:
            t = time.perf_counter()
            n = self.embedder.process(self.buffer, self.vad)
            if n:
                self._timer.add("embed_stream", time.perf_counter() - t, n)
        if self.frames is not None and self.vad.segmenter.open_start is not None:
            self._detect_while_speaking(self.vad.segmenter.open_start)

    def _detect_while_speaking(self, since: float) -> None:
        """Detect faces on a few frames of the speech in progress (off the close path)."""
        fc = self.config.faces
        if fc.detect_fps <= 0:
            return
        t = time.perf_counter()
        last = -math.inf
        for f in self.frames.frames:
            if f.stamp < since:
                continue
            if f.boxes is not None:
                last = f.stamp
            elif f.stamp - last >= 1.0 / fc.detect_fps:
                self.detector.boxes(f)
                last = f.stamp
                self._timer.add("faces_stream", time.perf_counter() - t)
                return  # at most one detection per poll keeps polls short
    def _asr_present(self, now: float) -> bool:
        mode = self.config.segmentation.mode
        if mode in ("asr_timed", "asr_untimed"):
            return True
        if mode == "vad":
            return False
        return self._asr_seen is not None and now - self._asr_seen <= \
            self.config.segmentation.asr_presence_seconds

    def _decide(self, now: float, final: bool) -> None:
        """Turn segments / transcripts that are complete at ``now`` into pending utterances."""
        sc = self.config.segmentation
        vad_t = self.buffer.time_of(self.vad.next_index) if self.buffer.epoch >= 0 else -math.inf
        # Timed ASR claims the speech segments it overlaps (pending or already built).
        spans = [(p.start, p.end) for p in self._pending if p.timed] + list(self._timed_spans)
        for s in self._segs:
            if not s.claimed and any(min(s.end, b) - max(s.start, a) > 0.3 * (s.end - s.start)
                                     for a, b in spans):
                s.claimed = True
        # Untimed finals: align to speech once VAD has seen audio up to the result.
        while self._untimed:
            ev = self._untimed[0]
            in_speech = self.vad.segmenter.open_start is not None and \
                self.vad.segmenter.open_start < ev.stamp
            waited = now - ev.stamp >= sc.asr_wait_seconds or final
            if not waited and (vad_t < ev.stamp or in_speech):
                break
            self._untimed.popleft()
            self._pending.append(self._align_untimed(ev))
        # Voice activity not claimed by an ASR result. In "vad" mode it is the utterance at
        # once; otherwise it waits asr_wait_seconds for its text, then is emitted without
        # text if no ASR is around (auto mode, none seen for asr_presence_seconds) or
        # emit_untranscribed, else dropped (counted): waiting avoids a text-less duplicate
        # of speech whose transcript is on its way.
        for s in self._segs:
            if s.claimed or s.emitted:
                continue
            if sc.mode != "vad" and not (final or now - s.end >= sc.asr_wait_seconds):
                continue
            s.emitted = True
            if sc.mode == "vad" or sc.emit_untranscribed or not self._asr_present(now):
                self._pending.append(_Pending(s.start, s.end, final_stamp=max(s.end, now)))
                self.counters["utterances_vad"] += 1
            else:
                self.counters["speech_dropped_untranscribed"] += 1

    def _align_untimed(self, ev: TranscriptEvent) -> _Pending:
        sc = self.config.segmentation
        stamp = float(ev.stamp)
        cands = [s for s in self._segs if not s.claimed and not s.emitted
                 and s.end <= stamp + 0.5 and s.end >= stamp - sc.asr_wait_seconds - 0.5
                 and s.start > self._last_claimed_end - 0.05]
        if self.vad.segmenter.open_start is not None and self.vad.segmenter.open_start < stamp \
                and not cands:
            # ASR finalised before the hang-over ended: cut the open speech at the result.
            start = self.vad.segmenter.open_start
            end = min(stamp, self.buffer.time_of(self.vad.next_index))
            self.vad.segmenter.open_start = None
            self.vad.segmenter.reset()
            chosen = [_Seg(start, end)]
        elif cands:
            chosen = [cands[-1]]
            earlier = [s for s in self._segs if not s.claimed and not s.emitted
                       and s.end <= chosen[0].start and s.start > self._last_claimed_end - 0.05]
            for s in reversed(earlier):
                if chosen[0].start - s.end <= sc.merge_gap_seconds and \
                        chosen[-1].end - s.start <= sc.max_utterance_seconds:
                    chosen.insert(0, s)
                else:
                    break
        else:
            chosen = []
        self.counters["utterances_untimed"] += 1
        if chosen:
            for s in chosen:
                s.claimed = True
            start, end = chosen[0].start, chosen[-1].end
        else:
            self.counters["untimed_estimated_span"] += 1
            n_words = max(1, len(ev.text.split()))
            end = stamp
            start = end - min(sc.max_utterance_seconds, n_words / sc.words_per_second)
        self._last_claimed_end = max(self._last_claimed_end, end)
        return _Pending(start, end, ev.text.strip(), stamp, ev.speaker_hint,
                        float(ev.confidence), ev.locale)

    def _ready_pending(self, now: float, final: bool) -> list[_Pending]:
        sc = self.config.segmentation
        ready, keep = [], []
        audio_t = self.buffer.t_end
        for p in self._pending:
            covered = audio_t >= p.end - 1e-3 and self.buffer.time_of(self.vad.next_index) >= \
                p.end - 0.064
            if final or covered or now - p.end >= sc.asr_wait_seconds:
                ready.append(p)
            else:
                keep.append(p)
        self._pending = keep
        return sorted(ready, key=lambda p: p.start)

    def _build(self, p: _Pending) -> Optional[Utterance]:
        from .faces import select_speaker

        sc, fc = self.config.segmentation, self.config.faces
        t_close = time.perf_counter()
        start, end = p.start, p.end
        if end - start < sc.min_utterance_seconds:
            if not p.text:
                return None
            mid = 0.5 * (start + end)
            start, end = mid - sc.min_utterance_seconds / 2, mid + sc.min_utterance_seconds / 2
        audio_end = min(end, start + sc.max_utterance_seconds)
        audio = self.buffer.read(start, audio_end) if self.buffer.epoch >= 0 else \
            np.zeros(0, np.float32)
        if self._last_end is not None and start - self._last_end > \
                self.config.conversation.new_conversation_gap_seconds:
            self._new_conversation()
        features: dict[str, np.ndarray] = {}
        emb = None
        if self.embedder is not None and audio.size and not p.hint:
            t = time.perf_counter()
            emb, n = self.embedder.utterance_embedding(start, audio_end, self.buffer)
            self._timer.add("embed_close", time.perf_counter() - t)
            self.counters["close_embeddings"] += n
        elif self.embedder is not None and p.hint and audio.size:
            emb, _ = self.embedder.utterance_embedding(start, audio_end, self.buffer)
        if emb is not None:
            features["speaker_embedding"] = emb
        t = time.perf_counter()
        dec = self.diarizer.assign(emb, audio_end - start, p.hint)
        self._timer.add("cluster", time.perf_counter() - t)
        faces: list[np.ndarray] = []
        if self.frames is not None:
            t = time.perf_counter()
            chosen = self.frames.select(start, end, fc.count)
            act = self.vad.activity(np.array([f.stamp for f in chosen])) if chosen else None
            sel = select_speaker(chosen, self.detector, fc.size, fc.count, act,
                                 use_motion=fc.use_av_activity, margin=fc.margin,
                                 detect_frames=fc.detect_frames)
            faces = sel.crops
            if not faces:
                self.counters["utterances_no_face"] += 1
            self._timer.add("faces", time.perf_counter() - t)
        self._utt_index += 1
        utt = Utterance(
            utterance_id=f"utt{self._utt_index:06d}", conversation_id=self._conv_id,
            speaker_id=dec.speaker_id, start=start, end=end, text=p.text, audio=audio,
            faces=faces, speaker_source=dec.source, speaker_confidence=dec.confidence,
            text_confidence=p.text_confidence, locale=p.locale,
            final_stamp=None if math.isnan(p.final_stamp) else p.final_stamp, features=features)
        self._last_end = end if self._last_end is None else max(self._last_end, end)
        self.history.add(utt)
        self.counters["utterances"] += 1
        if p.timed:
            self.counters["utterances_timed"] += 1
            self._timed_spans.append((p.start, p.end))
        self._close_ms.append(1000 * (time.perf_counter() - t_close))
        return utt

    def _collect(self, now: float, final: bool) -> list[Utterance]:
        self._decide(now, final)
        out = self._ready
        self._ready = []
        for p in self._ready_pending(now, final):
            u = self._build(p)
            if u is not None:
                out.append(u)
        return out

    def poll(self, now: float) -> list[Utterance]:
        """Do the pending work; return the utterances complete at input-clock time ``now``."""
        with self._work():
            t = time.perf_counter()
            self._last_poll = float(now)
            self._advance()
            out = self._collect(float(now), final=False)
            self._timer.add("poll", time.perf_counter() - t)
            return out

    def flush(self) -> list[Utterance]:
        """End of stream: close everything open and return the remaining utterances."""
        with self._work():
            t = time.perf_counter()
            self.buffer.flush()
            self._advance()
            for s in self.vad.segmenter.close():
                self._segs.append(_Seg(s.start, s.end))
            now = self.buffer.t_end if self.buffer.epoch >= 0 else 0.0
            out = self._collect(now, final=True)
            self._timer.add("poll", time.perf_counter() - t)
            return out

    def _on_discontinuity(self, kind: str) -> None:
        """Called by the buffer before it starts a new epoch: finish the old one."""
        self.counters["discontinuities"] += 1
        self._advance()
        for s in self.vad.segmenter.close():
            self._segs.append(_Seg(s.start, s.end))
        self._ready.extend(self._collect(self.buffer.t_end, final=True))
        self._segs.clear()
        self._untimed.clear()
        self._timed_spans.clear()
        self._last_claimed_end = -math.inf
        self.vad.reset(0)
        if self.embedder is not None:
            self.embedder.reset(0)
        self._last_end = None
        self._new_conversation()

    # -- diagnostics -------------------------------------------------------------------
    def stats(self) -> dict:
        """Counters, queue sizes and per-stage times (for /diagnostics and benchmarks)."""
        with self._lock:
            audio_s = self.buffer.counters["seconds_in"]
            stages = {k: {"total_s": round(v, 4), "calls": self._timer.calls[k],
                          "ms_per_call": round(1000 * v / max(1, self._timer.calls[k]), 3),
                          "ms_per_audio_s": round(1000 * v / audio_s, 3) if audio_s else None}
                      for k, v in self._timer.total.items()}
            work = sum(v for k, v in self._timer.total.items()
                       if k not in ("poll", "load_embedder"))
            close = np.asarray(self._close_ms) if self._close_ms else np.zeros(0)
            return {
                "conversation_id": self._conv_id,
                "audio_seconds": round(audio_s, 3),
                "buffer_seconds": round((self.buffer.n_end - self.buffer.n_start) / SAMPLE_RATE, 3),
                "buffer_end": self.buffer.t_end if self.buffer.epoch >= 0 else None,
                "epoch": self.buffer.epoch,
                "audio": dict(self.buffer.counters),
                "frames": dict(self.frames.counters) if self.frames else {},
                "frames_buffered": len(self.frames.frames) if self.frames else 0,
                "counters": {k: (dict(v) if isinstance(v, dict) else v)
                             for k, v in self.counters.items()},
                "queues": {"pending_utterances": len(self._pending),
                           "untimed_transcripts": len(self._untimed),
                           "speech_segments": len(self._segs),
                           "open_partials": len(self._open_partials),
                           "embedding_windows": len(self.embedder.history) if self.embedder else 0,
                           "history_utterances": len(self.history)},
                "in_speech": self.vad.segmenter.in_speech,
                "speakers": self.diarizer.n_clusters,
                "speaker_overflow": self.diarizer.overflow,
                "vad_windows": self.vad.windows,
                "embedding_windows_computed": self.embedder.windows if self.embedder else 0,
                "face_detections": self.detector.calls if self.detector else 0,
                "stages": stages,
                "work_seconds": round(work, 4),
                "realtime_factor": round(audio_s / work, 2) if work > 0 else None,
                "close_ms_p50": float(np.percentile(close, 50)) if close.size else None,
                "close_ms_p95": float(np.percentile(close, 95)) if close.size else None,
            }
