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

:class:`PerceptionCore` is the orchestrator: it owns the parts (audio buffer, VAD, speaker
embedder and diarizer, frame buffer and face detector, conversation history), runs them in
order, and builds each utterance from a span the :class:`~erc_ros.core.segmentation.Segmenter`
decided. How spans are decided (timed / untimed ASR, voice activity alone) and how ASR
finals waiting are bounded is described in :mod:`erc_ros.core.segmentation`.

Every parameter is a documented dataclass field of :class:`PerceptionConfig`
(:mod:`erc_ros.core.config`, re-exported here).
"""
from __future__ import annotations

import contextlib
import math
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np

from .asr import AsrResult, ends_sentence, has_words, sentence_cuts
from .audio_buffer import AudioBuffer, read_wav_16k
from .config import (AudioConfig, ConversationConfig, DiarizationConfig, FaceConfig,
                     PerceptionConfig, SegmentationConfig, VadConfig)
from .conversation import ConversationHistory
from .diarization import SpeakerDecision, speaker_changes, word_boundary
from .errors import InputError
from .segmentation import PendingUtterance, Segmenter
from .types import (FACE_CLASSES, FACE_DISABLED, FACE_ERROR, FACE_NO_CAMERA, FACE_NOT_SEEN,
                    FACE_SEEN, FACE_UNCERTAIN, SAMPLE_RATE, AudioChunk, Frame, TranscriptEvent,
                    Utterance)

__all__ = ["PerceptionCore", "PerceptionConfig", "AudioConfig", "VadConfig",
           "SegmentationConfig", "DiarizationConfig", "FaceConfig", "ConversationConfig"]

# Order of stats()["counters"] (as published on /diagnostics): the core's own counters and
# the segmenter's, interleaved as they always were.
_COUNTER_ORDER = ("utterances", "utterances_vad", "utterances_timed", "utterances_untimed",
                  "untimed_estimated_span", "timed_audio_incomplete", "close_embeddings",
                  "speech_dropped_untranscribed", "utterances_no_face", "utterances_face",
                  "utterances_no_camera", "refused",
                  "transcripts", "partials", "frames", "conversations", "discontinuities",
                  "speech_closed_stalled", "turn_splits", "sentence_splits",
                  "speaker_continued")


def _read(words) -> tuple[str, float]:
    """The text of some of a decode's words and its confidence (their mean probability)."""
    return " ".join(w.word for w in words), float(np.mean([w.probability for w in words]))


@dataclass
class _Recognition:
    """A speech segment handed to the recognizer's thread, until its result is taken."""

    start: float
    end: float  #: the span its text is for (the segment's)
    result: Optional[AsrResult] = None
    ready: float = math.nan  #: time.perf_counter() when the result was ready
    #: The end of the audio it heard: ``end`` unless a decode of the speech in progress
    #: became the early decode of the pause after it (the rest of the span is the VAD's pad).
    heard_until: float = math.nan

    def __post_init__(self):
        if math.isnan(self.heard_until):
            self.heard_until = self.end


class _Timer:
    def __init__(self):
        self.total = {}
        self.calls = {}

    def add(self, name: str, dt: float, n: int = 1) -> None:
        self.total[name] = self.total.get(name, 0.0) + dt
        self.calls[name] = self.calls.get(name, 0) + n


def _weak_method(method):
    """``method`` as a callback that does not keep its object alive (a no-op once it is
    gone). The parts the core owns call it back this way: a strong reference would make a
    cycle, and a core its owner dropped (the node's cleanup) would keep its models, ONNX
    Runtime sessions and buffers until the next full garbage collection, which a long-running
    node may not reach for hours (docs/ros.md, memory across lifecycle cycles)."""
    ref = weakref.WeakMethod(method)

    def call(*args, **kwargs):
        bound = ref()
        return bound(*args, **kwargs) if bound is not None else None
    return call


#: A decode of the speech in progress (asr.stream_seconds) waits until this much speech
#: follows a pause (at most this much longer than its period): a word or two (~0.3 s each),
#: so that a sentence that ended at the pause shows with words after it and can be cut there.
#: After a pause too short for the sentence-end cut whose early decode ended a sentence, one
#: comes then, whatever its period; so too after a pause too short for an early decode but
#: at least half as long (a sentence said with no more than a breath before the next: two or
#: three VAD windows of quiet).
_WORDS_AFTER_SECONDS = 0.5

#: A decode of the speech in progress whose audio ends at most this long before the speech
#: stopped (it was made as the person said their last word, before the VAD saw the pause)
#: is the early decode of that pause: it misses at most the end of the last word (five
#: 32 ms VAD windows), and a second decode of the same words would wait for it to finish.
_STREAM_AS_EARLY_SECONDS = 0.15
#: ``diarization.voices``: samples enrolled at most (a household, not a crowd), and the
#: largest file read (a minute of 48 kHz stereo float is 23 MB).
MAX_VOICES = 64
MAX_VOICE_BYTES = 32_000_000
#: Embeddings of enrolled samples by (file, size, mtime, embedder window and step): a core
#: started again in this process (a lifecycle configure, a benchmark's core per dialogue)
#: reads and embeds each sample once (~0.3 s for 6 s of speech).
_VOICE_EMBEDDINGS: dict[tuple, np.ndarray] = {}


class PerceptionCore:
    """See the module documentation.

    ``face_expert``: the face-expression expert (``labels`` == :data:`FACE_CLASSES`,
    ``predict(crops) -> (n, 7)`` probabilities), made by the assembly path
    (:func:`erc_ros.assemble.build_core`) when ``faces.expression`` is on; the core runs it
    on each face it detects while the person speaks (cached per frame and box, off the close
    path) and, when an utterance closes, averages the speaker's face into
    ``features["face_probabilities"]`` with ``face_status`` / ``face_count``. None (or
    ``faces.expression`` / ``faces.enabled`` off): ``face_status`` is ``disabled``.

    ``recognizer``: with ``asr.enabled``, an already loaded
    :class:`~erc_ros.core.asr.WhisperRecognizer` of the same ``asr`` settings to use instead
    of loading one (a benchmark that builds a core per conversation); else it is loaded.
    """

    def __init__(self, config: Optional[PerceptionConfig] = None, face_expert=None,
                 recognizer=None):
        self.config = cfg = config or PerceptionConfig()
        cfg.validate()
        from .diarization import OnlineDiarizer, SpeakerEmbedder
        from .faces import FrameBuffer, detector_for
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
                                  on_discontinuity=_weak_method(self._on_discontinuity))
        v = cfg.vad
        # Weak speech only where a recognizer can confirm it (words heard); otherwise the
        # segments are the sure ones alone.
        weak = dict(weak_threshold=v.weak_threshold, min_weak_s=v.min_weak_speech_seconds,
                    widen_s=v.weak_widen_seconds) if cfg.asr.enabled else {}
        self.vad = StreamingVad(VadSegmenter(v.threshold, v.neg_threshold, v.min_silence_seconds,
                                             v.min_speech_seconds,
                                             cfg.segmentation.max_utterance_seconds,
                                             v.pad_seconds, **weak),
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
        if dz.voices:
            self._enroll_voices(Path(dz.voices))
        fc = cfg.faces
        self.frames = FrameBuffer(fc.buffer_seconds, fc.store_fps, fc.store_max_width,
                                  a.clock_reset_seconds) if fc.enabled else None
        self.detector = detector_for(fc) if fc.enabled else None
        self.face_expert = face_expert if fc.enabled and fc.expression else None
        if self.face_expert is not None and tuple(self.face_expert.labels) != FACE_CLASSES:
            raise ValueError(f"the face expert's classes {tuple(self.face_expert.labels)} are "
                             f"not {FACE_CLASSES}")
        self.expression_counters = {"calls": 0, "crops": 0, "errors": 0,
                                    "utterances": {},  # face_status -> utterances
                                    # why utterances were "uncertain" (the quality gate)
                                    "uncertain": {"small": 0, "blurred": 0, "undecided": 0}}
        self._expression_ms: deque = deque(maxlen=500)  # ms per expert call
        #: What the assembly path loaded as the face expert, or why none (for the logs).
        self.face_expert_message = ""
        self.history = ConversationHistory(cfg.conversation.history_utterances)
        self.segmenter = Segmenter(cfg.segmentation)
        # The embedded recognizer (asr.enabled): each speech segment the VAD closes is
        # transcribed (on its own thread behind a bounded queue, or inline when
        # asr.synchronous) and comes back as a timed final.
        self.recognizer = self.asr_worker = None
        self._asr_backlog: deque[_Recognition] = deque()  # in speech order
        self._asr_ready: dict[tuple[float, float], float] = {}  # span -> perf_counter ready
        # segmentation.split_sentences: a sentence's span -> the span of the speaker's turn it
        # is a piece of, and each such turn's diarization (embedding, decision, pieces left)
        self._piece_of: dict[tuple[float, float], tuple[float, float]] = {}
        self._turn_speaker: dict[tuple[float, float], list] = {}
        self.asr_counters = {"segments": 0, "results": 0, "no_text": 0, "refused_full": 0,
                             "errors": 0, "unfinished": 0, "early": 0, "early_used": 0,
                             "sentence_ends": 0, "weak_no_words": 0, "stream": 0,
                             "stream_cuts": 0, "early_streamed": 0}
        self._weak: set[tuple[float, float]] = set()  # weak segments awaiting their text
        # The speech in progress handed to the recognizer early (asr.early_seconds): its
        # (start, end) as the VAD would close it, and the job.
        self._early: Optional[tuple[tuple[float, float], _Recognition]] = None
        # The speech in progress decoded while it goes on (asr.stream_seconds): the job not
        # yet looked at, and the last such decode (its job keeps the span it heard).
        self._stream: Optional[_Recognition] = None
        self._streamed: Optional[_Recognition] = None
        # A pause too short for the sentence-end cut whose early decode ended a sentence:
        # (that decode's end, the speech's start, when the decode of the speech in progress
        # that may cut there is due).
        self._stream_soon = (math.nan, math.nan, math.nan)
        # The words the recognizer gave out in this conversation, the newest last
        # (asr.prompt_words: its prompt).
        self._heard: deque[str] = deque(maxlen=int(cfg.asr.prompt_words))
        if cfg.asr.enabled:
            from .asr import AsrWorker, WhisperRecognizer
            t = time.perf_counter()
            self.recognizer = recognizer or WhisperRecognizer(cfg.asr).load()
            self._timer.add("load_asr", time.perf_counter() - t)
            if not cfg.asr.synchronous:
                self.asr_worker = AsrWorker(self.recognizer,
                                            on_done=_weak_method(self._asr_done))
        self._ready: list[Utterance] = []
        self._last_poll: Optional[float] = None  # `now` of the last poll (input clock)
        # The poll `now` at which the buffered audio last grew: audio that still flows but
        # lags the clock (a busy executor, a microphone clock behind ROS time) is waited for.
        self._audio_grew_at = -math.inf
        self._audio_seen_end = -math.inf
        self._conv_index = 0
        self._conv_id = self._make_conv_id()
        self._utt_index = 0
        self._last_end: Optional[float] = None
        # The last utterance built: (start, end, speaker id), and the ends of segments cut at a
        # sentence end (asr.sentence_end_seconds): the speech after such a cut may be the
        # same person going on.
        self._last_built: Optional[tuple[float, float, str]] = None
        self._sentence_cuts: deque[float] = deque(maxlen=8)
        # The core's counters; the segmenter's (utterances_vad/_timed/_untimed, transcripts,
        # partials, ...) are its own, merged by stats().
        self.counters = {"utterances": 0, "close_embeddings": 0, "utterances_no_face": 0,
                         "utterances_face": 0, "utterances_no_camera": 0,
                         "refused": {}, "frames": 0, "conversations": 1, "discontinuities": 0,
                         "speech_closed_stalled": 0, "turn_splits": 0,
                         "sentence_splits": 0, "speaker_continued": 0}
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
        self._heard.clear()
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
                self.segmenter.push_transcript(ev, self._input_clock())
            except InputError as e:
                self._refuse(e)
                raise

    def _input_clock(self) -> float:
        """The latest input time known: end of the audio pushed, or the last poll's ``now``
        if later (-inf before either)."""
        t = -math.inf if self._last_poll is None else self._last_poll
        if self.buffer.epoch >= 0:
            t = max(t, self.buffer.input_end_time)
        return t

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

    def _enroll_voices(self, folder: Path) -> None:
        """``diarization.voices``: each ``<name>.wav`` of ``folder`` enrolled as ``name``.
        Raises ValueError, naming the file, for a folder without samples or with more than
        :data:`MAX_VOICES`, a file that is not a regular file, is larger than
        :data:`MAX_VOICE_BYTES`, is not WAV audio or holds NaN or infinite samples, or a
        sample shorter than 1 s."""
        if self.embedder is None:
            raise ValueError("diarization.voices needs diarization.enabled")
        files = sorted(folder.glob("*.wav")) if folder.is_dir() else []
        if not files:
            raise ValueError(f"diarization.voices: {folder} is not a folder of <name>.wav "
                             "voice samples")
        if len(files) > MAX_VOICES:
            raise ValueError(f"diarization.voices: {folder} holds {len(files)} samples; at "
                             f"most {MAX_VOICES} are enrolled")
        for f in files:
            if not f.is_file():
                raise ValueError(f"diarization.voices: {f} is not a regular file")
            st = f.stat()
            if st.st_size > MAX_VOICE_BYTES:
                raise ValueError(f"diarization.voices: {f} is {st.st_size / 1e6:.0f} MB; "
                                 f"a voice sample is at most {MAX_VOICE_BYTES / 1e6:.0f} MB")
            key = (str(f.resolve()), st.st_size, st.st_mtime_ns, self.embedder.window,
                   self.embedder.step)
            if key in _VOICE_EMBEDDINGS:
                self.diarizer.enroll(f.stem, _VOICE_EMBEDDINGS[key])
                continue
            try:
                audio = read_wav_16k(f)
            except (OSError, ValueError) as e:
                raise ValueError(f"diarization.voices: {f} is not WAV audio ({e})") from e
            if not np.isfinite(audio).all():
                raise ValueError(f"diarization.voices: {f} holds NaN or infinite samples")
            try:
                self.enroll(f.stem, audio)
            except InputError as e:
                raise ValueError(f"diarization.voices: {f}: {e}") from e
            while len(_VOICE_EMBEDDINGS) >= 4 * MAX_VOICES:  # bounded: oldest out
                _VOICE_EMBEDDINGS.pop(next(iter(_VOICE_EMBEDDINGS)))
            _VOICE_EMBEDDINGS[key] = self.diarizer.enrolled[f.stem]

    # -- work --------------------------------------------------------------------------
    def _advance(self) -> None:
        """Run VAD and the streaming embedder over newly buffered audio."""
        # A decode of the speech in progress that came in since: cut before the new audio
        # (inline it was cut when it was made, below).
        self._fetch_results()
        self._stream_cut()
        t = time.perf_counter()
        segs = self.vad.process(self.buffer)
        self._timer.add("vad", time.perf_counter() - t)
        self._speech(segs)
        self._recognize_early()
        self._end_sentence()
        self._recognize_streaming()
        self._stream_cut()
        if self.embedder is not None:
            t = time.perf_counter()
            n = self.embedder.process(self.buffer, self.vad)
            if n:
                self._timer.add("embed_stream", time.perf_counter() - t, n)

    # -- embedded speech recognition --------------------------------------------------
    def _speech(self, segments, decoded: Optional[_Recognition] = None) -> None:
        """Speech segments the VAD closed: to the segmenter, and each to the recognizer
        (``decoded``: the one segment's recognition, already done)."""
        segments = list(segments)
        if decoded is not None and len(segments) != 1:
            raise ValueError("_speech: a recognition already done belongs to one segment")
        self.segmenter.add_speech(segments)
        if self.recognizer is None:
            return
        for seg in segments:
            if seg.weak:
                self._weak.add((seg.start, seg.end))
                while len(self._weak) > 256:  # results that never came (a reset between)
                    self._weak.remove(min(self._weak))
            self._recognize(seg.start, seg.end, decoded)

    def _early_quiet(self) -> float:
        """The quiet an early decode needs (``asr.early_seconds``, at least the VAD's pad,
        so that the padded end is buffered); shorter pauses get none."""
        return max(self.config.asr.early_seconds, self.config.vad.pad_seconds)

    def _recognize_early(self) -> None:
        """Hand the speech in progress to the recognizer once it has been quiet for
        ``asr.early_seconds``, while the VAD's hang-over still runs: where the quiet lasts,
        the segment the VAD closes is exactly this one and its text is ready sooner by the
        rest of the hang-over; where speech resumes, that decode is wasted (counted ``early``
        minus ``early_used``). Only on the recognizer's own thread and only when it is idle,
        so a closed segment waits at most for one early decode."""
        asr = self.config.asr
        wait, quiet = asr.early_seconds, self._early_quiet()
        pad = self.config.vad.pad_seconds
        pause, resumed = self.vad.pause_start, self.vad.resumed
        if pause is None and resumed is not None and resumed[1] - resumed[0] >= quiet \
                and self._stream_soon[1] != self.vad.open_start:
            # A pause that long which the VAD saw whole between two looks (audio comes in
            # chunks, and the VAD runs a poll behind): decoded as if it had been seen
            # quiet, so that whether a pause is decoded depends on the audio, not on where
            # the chunks fall. _end_sentence then splits there where the text ends a
            # sentence (the span is the one an early decode in the pause would have had).
            # Not while a decode of this speech is due for an earlier pause (_stream_soon):
            # that one shows this pause too.
            pause = resumed[0]
        # Offline (inline recognizer) an early decode serves only the sentence-end cut.
        inline = self.asr_worker is None
        if self.recognizer is None or wait < 0 or pause is None or \
                (inline and asr.sentence_end_seconds < 0):
            return
        if self.vad.processed_until(self.buffer) - pause < quiet:
            return  # not quiet long enough, or the padded end not buffered yet
        span = (self.vad.open_start, pause + pad)
        if self._early is not None and self._early[0] == span:
            return
        last = self._streamed
        if last is not None and last.start == span[0] and \
                last.heard_until >= pause - _STREAM_AS_EARLY_SECONDS:
            # The decode of the speech in progress heard it up to its last word: it was made
            # as the speech ended, before the VAD saw the pause. It is this pause's early
            # decode (whether or not it is in yet), instead of a second one of the same words.
            last.end = span[1]
            self._early = (span, last)
            self.asr_counters["early"] += 1
            self.asr_counters["early_streamed"] += 1
            return
        if inline:
            job = _Recognition(*span)
            job.result, job.ready = self._transcribe_inline(*span), time.perf_counter()
            self._early = (span, job)
            self.asr_counters["early"] += 1
            return
        if self.asr_worker.pending():
            return
        job = _Recognition(*span)
        if self.asr_worker.submit(job, self.buffer.read(*span), *span, self._prompt()):
            self._early = (span, job)
            self.asr_counters["early"] += 1

    def _end_sentence(self) -> bool:
        """``asr.sentence_end_seconds``: close the speech in progress at a pause, before
        the VAD's hang-over does, where the early decode up to that pause is in, ends a
        sentence, and the pause has lasted that long. The closed segment then takes that
        decode (:meth:`_recognize`). Where speech came back after such a pause before the
        decode was in (a next speaker within the hang-over, a recognizer slower than the
        pause), the segment is split there: the cut depends on the audio and the text, not
        on how fast the recognizer was. Returns whether it closed one."""
        wait = self.config.asr.sentence_end_seconds
        if wait < 0 or self._early is None:
            return False
        (start, end), job = self._early
        if job.result is None or self.vad.open_start != start or \
                end - start < self.config.vad.min_speech_seconds:
            return False
        pad = self.config.vad.pad_seconds
        pause, resumed = self.vad.pause_start, self.vad.resumed
        if pause is not None and pause + pad == end:  # still quiet
            if self.vad.processed_until(self.buffer) - pause < wait or \
                    not ends_sentence(job.result.text):
                return False
            seg = self.vad.cut_open(end)
        elif resumed is not None and resumed[0] + pad == end:  # the speech came back
            if not ends_sentence(job.result.text):
                return False
            if resumed[1] - resumed[0] < wait:
                # Whisper ends any piece with a mark: too short a pause to cut on that
                # alone. The speech in progress is decoded once a word or two follow, and
                # cut there where the sentence end holds with words after it (_stream_cut).
                if self._stream_soon[0] != end:
                    self._stream_soon = (end, start, resumed[1] + _WORDS_AFTER_SECONDS)
                return False
            seg = self.vad.split_open(end, resumed[1])
        else:
            return False  # the speaker went on after that pause and paused again
        self.asr_counters["sentence_ends"] += 1
        self._sentence_cuts.append(end)
        self._speech([seg])
        return True

    def _recognize_streaming(self) -> None:
        """``asr.stream_seconds``: hand the speech in progress to the recognizer while the
        person goes on speaking, each time it has grown that long since its start or the
        last such decode; :meth:`_stream_cut` then closes its finished sentences. Live only
        when the recognizer is idle (a pause's early decode or a closed segment never
        waits for more than one); offline (asr.synchronous) inline, at the same points."""
        every = self.config.asr.stream_seconds
        start = self.vad.open_start
        if self.recognizer is None or every < 0 or start is None or \
                self.vad.pause_start is not None or self._stream is not None:
            return
        until = self.vad.processed_until(self.buffer)
        last = self._streamed
        since = last.heard_until if last is not None and last.start == start else start
        soon = self._stream_soon[1] == start and until >= self._stream_soon[2]
        resumed = self.vad.resumed
        if not soon and resumed is not None and since <= resumed[0]:  # a pause since
            if until - resumed[1] >= _WORDS_AFTER_SECONDS:
                # one too short for an early decode (_recognize_early) but not a mere dip:
                # decoded now that a word or two follow, as after an early decode's sentence
                # end
                wait = self.config.asr.early_seconds
                soon = 0 <= wait / 2 <= resumed[1] - resumed[0] < self._early_quiet()
            elif until - since < every + _WORDS_AFTER_SECONDS:
                return  # a sentence that ended there shows with words after it
        if until - since < every and not soon:
            return
        job = _Recognition(start, until)
        if self.asr_worker is None:
            job.result, job.ready = self._transcribe_inline(start, until), time.perf_counter()
        elif self.asr_worker.pending() or \
                not self.asr_worker.submit(job, self.buffer.read(start, until), start, until,
                                           self._prompt()):
            return
        self._stream = self._streamed = job
        self.asr_counters["stream"] += 1
        if soon:
            self._stream_soon = (self._stream_soon[0], math.nan, math.nan)

    def _stream_cut(self) -> bool:
        """``asr.stream_seconds``: where the decode of the speech in progress is in, the
        speech is still open from the same start, and the decode ends a sentence with more
        words after it, close the speech at the last such sentence end (between its last
        word and the next), with the decode's words up to there as its text; the rest goes
        on as the speech in progress and is recognized on its own. Returns whether it
        closed one."""
        job = self._stream
        if job is None or job.result is None:
            return False
        self._stream = None
        words = job.result.words
        if self.vad.open_start != job.start or job.result.error:
            return False  # closed or cut since: that segment has its own decode
        ends = sentence_cuts([w.word for w in words])
        if not ends:
            return False
        # Word times are the recognizer's guess: the rest is cut no later than the VAD's pad
        # after the sentence, so that its first word is heard whole.
        pad = self.config.vad.pad_seconds
        head = words[:ends[-1]]
        at = min(word_boundary(words, ends[-1]), head[-1].end + pad)
        if at - job.start < self.config.vad.min_speech_seconds or \
                (self.vad.pause_start is not None and self.vad.pause_start < at):
            return False
        seg = self.vad.split_open(at, at + pad)
        text, confidence = _read(head)
        done = _Recognition(seg.start, seg.end, replace(
            job.result, text=text, words=head, confidence=confidence), job.ready)
        self.asr_counters["stream_cuts"] += 1
        self._speech([seg], done)
        return True

    def _continued(self, start: float, end: float) -> Optional[SpeakerDecision]:
        """``diarization.continue_speaker``: the speaker of the utterance before, where this
        one starts within the VAD's hang-over of a sentence-end cut that ended it (the
        hang-over would have joined the two) and the voice on either side of the pause is
        the same person's (the last and first ``diarization.window_seconds``, at least
        ``change_min_side_seconds`` each, cosine at or above ``continue_threshold``). A
        short piece alone is a poor sample of a voice; across the pause the decision uses
        both sides."""
        if not self.config.diarization.continue_speaker or self.embedder is None or \
                self._last_built is None:
            return None
        s0, e0, who = self._last_built
        dz, v = self.config.diarization, self.config.vad
        if not who or e0 not in self._sentence_cuts or \
                not 0 <= start - e0 < v.min_silence_seconds - 2 * v.pad_seconds + 1e-6:
            return None
        w, side = dz.window_seconds, dz.change_min_side_seconds
        left = self.buffer.read(max(e0 - w, s0, self.buffer.t_start), e0)
        right = self.buffer.read(start, min(end, start + w))
        if min(left.size, right.size) < side * SAMPLE_RATE:
            return None
        a, b = self.embedder.embed_windows([left, right])
        sim = float(np.dot(a, b))
        if sim < dz.continue_threshold:
            return None
        self.counters["speaker_continued"] += 1
        return SpeakerDecision(who, "continued", float(np.clip(sim, 0, 1)), sim)

    def _prompt(self) -> str:
        """``asr.prompt_words``: the conversation's last words the recognizer gave out."""
        return " ".join(self._heard)

    def _transcribe_inline(self, start: float, end: float) -> AsrResult:
        """The recognizer on this thread (``asr.synchronous``), timed as the ``asr`` stage;
        a failure is an empty result with its error (the speech still comes out)."""
        audio = self.buffer.read(start, end)
        t = time.perf_counter()
        try:
            res = self.recognizer.transcribe(audio, offset=start, prompt=self._prompt())
        except Exception as e:  # counted; the speech still comes out, without text
            res = AsrResult.empty(audio.size / SAMPLE_RATE, error=f"{type(e).__name__}: {e}")
        self._timer.add("asr", time.perf_counter() - t)
        return res

    def _recognize(self, start: float, end: float,
                   decoded: Optional[_Recognition] = None) -> None:
        self.segmenter.claim(start, end)
        self.asr_counters["segments"] += 1
        early, self._early = self._early, None
        if decoded is None and early is not None and early[0] == (start, end):
            self.asr_counters["early_used"] += 1
            decoded = early[1]
        if decoded is not None:
            if self.asr_worker is None:  # decoded inline already
                self._asr_result(start, end, decoded.result, decoded.ready)
            else:  # in speech order, behind the segments before it
                self._asr_backlog.append(decoded)
            return
        if self.asr_worker is None:
            self._asr_result(start, end, self._transcribe_inline(start, end),
                             time.perf_counter())
            return
        audio = self.buffer.read(start, end)
        job = _Recognition(start, end)
        if not self.asr_worker.submit(job, audio, start, end, self._prompt()):
            # Overloaded recognizer: the speech still becomes an utterance, without text
            # (after the segments before it, so utterances keep their order).
            self.asr_counters["refused_full"] += 1
            job.result = AsrResult.empty(audio.size / SAMPLE_RATE, error="refused_full")
            job.ready = time.perf_counter()
        self._asr_backlog.append(job)

    #: Called (no arguments, on the recognizer's thread) when a result is ready: the node
    #: polls at once instead of at its next period (the text's wait for the emotion path).
    on_asr_result = None

    def _asr_done(self) -> None:
        if self.on_asr_result is not None:
            self.on_asr_result()

    def _asr_results(self, wait: bool = False, timeout: float = 120.0,
                     give_up: bool = False) -> None:
        """Hand finished recognitions to the segmenter in speech order (``wait``: the
        pending ones too, for at most ``timeout`` s; then, with ``give_up``, the segments
        not finished come out without text, counted ``unfinished``)."""
        if self.asr_worker is None:
            return
        if wait and not self.asr_worker.wait_idle(timeout=timeout):
            import logging
            logging.getLogger("erc_ros.perception").warning(
                "embedded ASR still busy after %g s; %s", timeout,
                "the speech it has not transcribed comes out without text" if give_up
                else "its results come with later polls")
        self._fetch_results()
        if give_up:
            for job in self._asr_backlog:
                if job.result is None:
                    job.result = AsrResult.empty((job.end - job.start), error="unfinished")
                    job.ready = time.perf_counter()
        while self._asr_backlog and self._asr_backlog[0].result is not None:
            job = self._asr_backlog.popleft()
            self._asr_result(job.start, job.end, job.result, job.ready)

    def _fetch_results(self) -> None:
        """The recognizer thread's finished results, each into its job."""
        if self.asr_worker is None:
            return
        for r in self.asr_worker.results():
            job = r.segment_id
            job.result = r.result
            # the worker's monotonic finish time on the perf_counter clock
            job.ready = time.perf_counter() - (time.monotonic() - r.done)

    def _asr_result(self, start: float, end: float, res, ready: float) -> None:
        text = res.text.strip()
        if (start, end) in self._weak:
            self._weak.discard((start, end))
            if not res.error and not has_words(text):
                # Speech the VAD was not sure of, and the recognizer heard no word in it: a
                # tone, a click, a breath. Not an utterance (counted).
                self.asr_counters["weak_no_words"] += 1
                return
        if res.error == "unfinished":  # the recognizer did not get to it (flush's timeout)
            self.asr_counters["unfinished"] += 1
        elif res.error != "refused_full":  # a refused segment was counted at submit
            self.asr_counters["results"] += 1
            if res.error:
                self.asr_counters["errors"] += 1  # the speech comes out without text
            elif not text:
                # Nothing recognized: a one-word turn Whisper cannot read ("Hey!" in 0.4 s),
                # a cough, noise the VAD took for speech. The speech is not lost: it becomes an
                # utterance without text, as in voice-activity-only mode (counted).
                self.asr_counters["no_text"] += 1
            else:
                self._heard.extend(text.split())
        for s, e, piece, confidence in self._turns(start, end, text, res):
            self._asr_ready[(s, e)] = ready
            while len(self._asr_ready) > 256:  # entries of finals refused (pending_full)
                self._asr_ready.pop(next(iter(self._asr_ready)))
            self._asr_final(s, e, piece, confidence, res.language)

    def _turns(self, start: float, end: float, text: str, res) -> list[tuple]:
        """``(start, end, text, confidence)`` of each utterance in one recognized segment:
        the whole segment; its pieces where the voice changes at a sentence end
        (``diarization.split_turns``, :func:`~erc_ros.core.diarization.speaker_changes`);
        and each of those cut after every sentence (``segmentation.split_sentences``), whose
        pieces share the diarization of the turn they come from (:meth:`_speaker_of`)."""
        dz, sc = self.config.diarization, self.config.segmentation
        words = res.words
        voice_cuts = dz.split_turns and self.embedder is not None
        if not (text and len(words) > 1 and (voice_cuts or sc.split_sentences)):
            return [(start, end, text, res.confidence)]
        voice: list[int] = []
        if voice_cuts:
            t = time.perf_counter()
            voice = speaker_changes(words, self.buffer.read, self.embedder.embed_windows,
                                    dz.change_threshold, dz.window_seconds,
                                    dz.change_min_side_seconds)
            self._timer.add("turn_split", time.perf_counter() - t)
            self.counters["turn_splits"] += len(voice)
        sentences = sentence_cuts([w.word for w in words]) if sc.split_sentences else []
        if not voice and not sentences:
            return [(start, end, text, res.confidence)]
        self.counters["sentence_splits"] += len(set(sentences) - set(voice))

        def at(i: int) -> float:
            return start if i == 0 else end if i == len(words) else word_boundary(words, i)
        out, turn_edges = [], [0, *voice, len(words)]
        for a, b in zip(turn_edges[:-1], turn_edges[1:]):  # each speaker's turn
            edges = [a, *[i for i in sentences if a < i < b], b]
            turn = (at(a), at(b))
            if len(edges) > 2:
                self._turn_speaker[turn] = [None, None, len(edges) - 1]
            for c, d in zip(edges[:-1], edges[1:]):
                piece = words[c:d]
                span = (at(c), at(d))
                if len(edges) > 2:
                    self._piece_of[span] = turn
                out.append((*span, *_read(piece)))
        while len(self._piece_of) > 256:  # pieces never built (refused finals)
            self._turn_speaker.pop(self._piece_of.pop(next(iter(self._piece_of))), None)
        return out

    def _asr_final(self, start: float, end: float, text: str, confidence: float = math.nan,
                   language: str = "") -> None:
        text = text[:self.config.segmentation.max_text_characters]
        clock = self._input_clock()
        ev = TranscriptEvent(clock, text, True, start, end, confidence, locale=language)
        try:
            self.segmenter.push_transcript(ev, clock)
        except InputError as e:  # e.g. pending_full: counted as a refusal
            self._refuse(e)

    def _detect_while_speaking(self, since: float) -> None:
        """Detect faces on a few frames of the speech in progress (off the close path)."""
        from .faces import due_for_detection

        t = time.perf_counter()
        # At most one detection per poll keeps polls short.
        f = due_for_detection(self.frames.frames, since, self.config.faces.detect_fps)
        if f is None:
            return
        self.detector.boxes(f)
        self._timer.add("faces_stream", time.perf_counter() - t)
        if self.face_expert is not None:  # while speaking: off the close path
            t = time.perf_counter()
            self._classify([f])
            self._timer.add("expression_stream", time.perf_counter() - t)

    def _classify(self, frames) -> None:
        """The face expert on every face box of ``frames`` not yet classified (one call);
        the probabilities are kept on each frame (``expressions``), with the quality gate's
        verdict on each box (``unreadable``). A failure is counted and logged (first one),
        and leaves the frames unclassified."""
        from .faces import crop, unreadable

        fc = self.config.faces
        todo = [f for f in {id(f): f for f in frames}.values()
                if f.boxes is not None and f.expressions is None]
        crops = [crop(f.image, b, fc.size, fc.margin) for f in todo for b in f.boxes]
        if not crops:
            for f in todo:
                f.expressions = np.zeros((0, len(FACE_CLASSES)), np.float32)
            return
        t = time.perf_counter()
        try:
            probs = np.asarray(self.face_expert.predict(crops), np.float32)
        except Exception as e:  # the utterance still comes out, face_status "error"
            self.expression_counters["errors"] += 1
            if self.expression_counters["errors"] == 1:
                import logging
                logging.getLogger("erc_ros.perception").error(
                    "face-expression expert failed (counted; utterances get face_status "
                    "'error'): %r", e)
            return
        self._expression_ms.append(1000 * (time.perf_counter() - t))
        self.expression_counters["calls"] += 1
        self.expression_counters["crops"] += len(crops)
        i = 0
        for f in todo:
            f.expressions = probs[i:i + len(f.boxes)]
            f.unreadable = [unreadable(f.image, b, fc.expression_min_pixels,
                                       fc.expression_min_sharpness) for b in f.boxes]
            i += len(f.boxes)

    def _face_expression(self, chosen, sel) -> tuple[str, int, Optional[np.ndarray]]:
        """(face_status, crops averaged, mean probabilities or None) of an utterance whose
        frames were ``chosen`` and whose speaker's face is ``sel``. Faces detected while the
        person spoke were classified then; only those detected at close are classified
        here. The quality gate: only readable detections are averaged, and a face whose
        detections are unreadable at least half the time is "uncertain" (small or blurred),
        as is a mean too undecided (``faces.expression_max_entropy``)."""
        if self.face_expert is None:
            return FACE_DISABLED, 0, None
        if not chosen:
            return FACE_NO_CAMERA, 0, None
        if not sel.keys:
            return FACE_NOT_SEEN, 0, None
        t = time.perf_counter()
        self._classify([f for f, _ in sel.keys])
        self._timer.add("expression_close", time.perf_counter() - t)
        from .faces import TOO_SMALL, normalized_entropy

        rows, why = [], []
        for f, i in sel.keys:
            if f.expressions is None or i >= len(f.expressions):
                continue
            reason = f.unreadable[i] if f.unreadable is not None else ""
            if reason:
                why.append(reason)
            else:
                rows.append(f.expressions[i])
        gate = self.expression_counters["uncertain"]
        if why and len(why) >= len(rows):  # a face, but mostly unreadable: not trusted
            gate["small" if why.count(TOO_SMALL) * 2 >= len(why) else "blurred"] += 1
            return FACE_UNCERTAIN, 0, None
        if not rows:
            return FACE_ERROR, 0, None
        mean = np.mean(rows, axis=0).astype(np.float32)
        if normalized_entropy(mean) > self.config.faces.expression_max_entropy:
            gate["undecided"] += 1
            return FACE_UNCERTAIN, 0, None
        return FACE_SEEN, len(rows), mean

    def _build(self, p: PendingUtterance) -> Optional[Utterance]:
        from .faces import speaker_faces

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
        emb, dec = self._speaker_of(p, start, audio_end, audio.size > 0)
        if emb is not None:
            features["speaker_embedding"] = emb
        faces: list[np.ndarray] = []
        face_status, face_count = FACE_DISABLED, 0
        if self.frames is not None:
            t = time.perf_counter()
            chosen, sel = speaker_faces(self.frames, self.detector, fc, start, end,
                                        self.vad.activity)
            faces = sel.crops
            self.counters["utterances_face" if sel.keys else "utterances_no_face"] += 1
            if not chosen:
                self.counters["utterances_no_camera"] += 1
            self._timer.add("faces", time.perf_counter() - t)
            face_status, face_count, face_p = self._face_expression(chosen, sel)
            if face_p is not None:
                features["face_probabilities"] = face_p
        by_status = self.expression_counters["utterances"]
        by_status[face_status] = by_status.get(face_status, 0) + 1
        self._utt_index += 1
        utt = Utterance(
            utterance_id=f"utt{self._utt_index:06d}", conversation_id=self._conv_id,
            speaker_id=dec.speaker_id, start=start, end=end, text=p.text, audio=audio,
            faces=faces, speaker_source=dec.source, speaker_confidence=dec.confidence,
            text_confidence=p.text_confidence, locale=p.locale,
            final_stamp=None if math.isnan(p.final_stamp) else p.final_stamp, features=features,
            asr_ready=self._asr_ready.pop((p.start, p.end), None) if p.timed else None,
            face_status=face_status, face_count=face_count)
        self._last_end = end if self._last_end is None else max(self._last_end, end)
        self._last_built = (start, end, dec.speaker_id)
        self.history.add(utt)
        self.counters["utterances"] += 1
        self.segmenter.built(p)
        self._close_ms.append(1000 * (time.perf_counter() - t_close))
        return utt

    def _speaker_of(self, p: PendingUtterance, start: float, audio_end: float,
                    has_audio: bool) -> tuple[Optional[np.ndarray], SpeakerDecision]:
        """(speaker embedding, diarization decision) of the utterance ``p`` builds. A
        sentence of a turn cut into sentences (``segmentation.split_sentences``) takes its
        turn's, made on the whole turn when its first sentence is built: a short sentence
        alone is a poor sample of a voice."""
        turn = self._piece_of.pop((p.start, p.end), None) if not p.hint else None
        shared = self._turn_speaker.get(turn) if turn is not None else None
        if shared is not None:
            shared[2] -= 1
            if shared[2] <= 0:
                del self._turn_speaker[turn]
            if shared[1] is not None:
                return shared[0], shared[1]
            start = turn[0]
            audio_end = min(turn[1], start + self.config.segmentation.max_utterance_seconds)
        emb = None
        if self.embedder is not None and has_audio and not p.hint:
            t = time.perf_counter()
            emb, n = self.embedder.utterance_embedding(start, audio_end, self.buffer)
            self._timer.add("embed_close", time.perf_counter() - t)
            self.counters["close_embeddings"] += n
        elif self.embedder is not None and p.hint and has_audio:
            emb, _ = self.embedder.utterance_embedding(start, audio_end, self.buffer)
        t = time.perf_counter()
        dec = None if p.hint else self._continued(start, audio_end)
        if dec is None:
            dec = self.diarizer.assign(emb, audio_end - start, p.hint)
        self._timer.add("cluster", time.perf_counter() - t)
        if shared is not None:
            shared[0], shared[1] = emb, dec
        return emb, dec

    def _collect(self, now: float, final: bool) -> list[Utterance]:
        """Decide and build the utterances complete at ``now``; returns only those (the
        ones an earlier epoch left in ``_ready`` are the caller's, see :meth:`_take`)."""
        vad_t = self.vad.processed_until(self.buffer)
        self.segmenter.decide(now, final, vad_t if self.buffer.epoch >= 0 else -math.inf,
                              self.vad)
        out = []
        audio_flowing = now - self._audio_grew_at < self.config.segmentation.asr_wait_seconds
        for p in self.segmenter.ready(now, final, self.buffer.t_end, vad_t, audio_flowing):
            u = self._build(p)
            if u is not None:
                out.append(u)
        return out

    def _take(self, built: list[Utterance]) -> list[Utterance]:
        """What a poll returns: the utterances finished when the clock jumped (built inside
        push_audio, kept in ``_ready``), then ``built``."""
        out, self._ready = self._ready + built, []
        return out

    def _note_audio(self, now: float) -> None:
        """Remember when the buffered audio last grew: the poll ``now`` that saw it grow, or
        the audio's own end where that is later: a poll whose ``now`` was read before it
        waited for the core while more audio came in (a timer behind an input backlog) must
        not take that audio for a stall. (Stamps far ahead of the node's clock put the stall
        check off by as much; /diagnostics warns of such stamps.)"""
        if self.buffer.epoch >= 0 and self.buffer.input_end_time > self._audio_seen_end:
            self._audio_seen_end = self.buffer.input_end_time
            self._audio_grew_at = max(now, self._audio_seen_end)

    def _close_stalled_speech(self, now: float) -> None:
        """Speech open while no audio has come for ``vad.stalled_audio_seconds`` (a
        microphone stopped mid-speech): close it at the last audio, so its utterance comes
        out now rather than when (if ever) audio returns."""
        limit = self.config.vad.stalled_audio_seconds
        if limit > 0 and self.vad.open_start is not None and \
                now - self._audio_grew_at >= limit:
            segs = self.vad.close()
            self.counters["speech_closed_stalled"] += 1
            self._speech(segs)

    def poll(self, now: float) -> list[Utterance]:
        """Do the pending work; return the utterances complete at input-clock time ``now``."""
        with self._work():
            t = time.perf_counter()
            self._last_poll = float(now)
            self._advance()
            self._note_audio(float(now))
            self._close_stalled_speech(float(now))
            self._asr_results()
            if self._end_sentence():  # its decode is in: the utterance comes out now
                self._asr_results()
            out = self._take(self._collect(float(now), final=False))
            if not out and self.frames is not None and self.vad.open_start is not None:
                # Faces (and their expressions) of the speech in progress, in polls that
                # close nothing: the utterances this poll returns never wait for them.
                self._detect_while_speaking(self.vad.open_start)
            self._timer.add("poll", time.perf_counter() - t)
            return out

    def flush(self, asr_timeout: float = 120.0) -> list[Utterance]:
        """End of stream: close everything open and return the remaining utterances.

        The embedded recognizer's segments are waited for at most ``asr_timeout`` s (a
        process shutting down bounds it); those it has not finished by then come out as
        utterances without text (counted ``asr.unfinished``): the speech is never lost."""
        with self._work():
            t = time.perf_counter()
            self.buffer.flush()
            self._advance()
            self._speech(self.vad.close())
            self._asr_results(wait=True, timeout=asr_timeout, give_up=True)
            now = self.buffer.t_end if self.buffer.epoch >= 0 else 0.0
            out = self._take(self._collect(now, final=True))
            self._timer.add("poll", time.perf_counter() - t)
            return out

    def _on_discontinuity(self, kind: str) -> None:
        """Called by the buffer before it starts a new epoch: finish the old one."""
        self.counters["discontinuities"] += 1
        self._advance()
        self._speech(self.vad.close())
        self._asr_results(wait=True)
        # _collect returns only what it built; poll returns these (then its own) later.
        self._ready.extend(self._collect(self.buffer.t_end, final=True))
        self._audio_seen_end = -math.inf  # the new epoch's stamps start anywhere
        self.segmenter.new_epoch()
        self.vad.reset(0)
        self._early = None
        self._stream = self._streamed = None
        self._stream_soon = (math.nan, math.nan, math.nan)
        # every piece of the old epoch was built above
        self._piece_of.clear()
        self._turn_speaker.clear()
        if self.embedder is not None:
            self.embedder.reset(0)
        self._last_end = self._last_built = None
        self._sentence_cuts.clear()
        self._new_conversation()

    # -- diagnostics -------------------------------------------------------------------
    def _counters(self) -> dict:
        both = {**self.counters, **self.segmenter.counters}
        order = [k for k in _COUNTER_ORDER if k in both] + \
            [k for k in both if k not in _COUNTER_ORDER]
        return {k: (dict(both[k]) if isinstance(both[k], dict) else both[k]) for k in order}

    def stats(self) -> dict:
        """Counters, queue sizes and per-stage times (for /diagnostics and benchmarks)."""
        with self._lock:
            audio_s = self.buffer.counters["seconds_in"]
            stages = {k: {"total_s": round(v, 4), "calls": self._timer.calls[k],
                          "ms_per_call": round(1000 * v / max(1, self._timer.calls[k]), 3),
                          "ms_per_audio_s": round(1000 * v / audio_s, 3) if audio_s else None}
                      for k, v in self._timer.total.items()}
            work = sum(v for k, v in self._timer.total.items()
                       if k not in ("poll", "load_embedder", "load_asr"))
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
                "counters": self._counters(),
                "queues": {**self.segmenter.queue_sizes(),
                           "embedding_windows": len(self.embedder.history) if self.embedder else 0,
                           "history_utterances": len(self.history),
                           "history_bytes": self.history.nbytes},
                "in_speech": self.vad.in_speech,
                "speakers": self.diarizer.n_clusters,
                "speakers_enrolled": len(self.diarizer.enrolled),
                "speaker_overflow": self.diarizer.overflow,
                "vad_windows": self.vad.windows,
                "embedding_windows_computed": self.embedder.windows if self.embedder else 0,
                "face_detections": self.detector.calls if self.detector else 0,
                "stages": stages,
                "work_seconds": round(work, 4),
                "realtime_factor": round(audio_s / work, 2) if work > 0 else None,
                "close_ms_p50": float(np.percentile(close, 50)) if close.size else None,
                "close_ms_p95": float(np.percentile(close, 95)) if close.size else None,
                "asr": self._asr_stats(),
                "face_expression": self._expression_stats(),
            }

    def _expression_stats(self) -> dict:
        """The face-expression expert: enabled, its backend, calls, crops, errors, latency
        per call (ms p50/p95, over the last 500), utterances per face_status and why the
        "uncertain" ones were (small / blurred face, undecided distribution)."""
        c = self.expression_counters
        out = {"enabled": self.face_expert is not None, "calls": c["calls"],
               "crops": c["crops"], "errors": c["errors"], "utterances": dict(c["utterances"]),
               "uncertain": dict(c["uncertain"])}
        if self.face_expert is not None:
            out["backend"] = getattr(self.face_expert, "backend", "")
        ms = np.asarray(self._expression_ms) if self._expression_ms else np.zeros(0)
        out["latency_p50_ms"] = float(np.percentile(ms, 50)) if ms.size else None
        out["latency_p95_ms"] = float(np.percentile(ms, 95)) if ms.size else None
        return out

    def _asr_stats(self) -> dict:
        """The embedded recognizer's counters (segments, results, no_text, refused_full,
        errors), and, on its own thread, queue and submit -> result latency (and its parts: the
        wait behind other decodes, the decode itself)."""
        if self.recognizer is None:
            return {"enabled": False}
        r = self.recognizer
        out = {"enabled": True, "model": r.model_name or self.config.asr.model,
               "model_reason": r.choice.get("reason", ""), **self.asr_counters}
        # the recognizer's own retries (a recognizer a benchmark shares counts them all)
        if r.config.window == "fit":
            out["refit"] = r.refits
        if r.config.fallback == "beam":
            out["fallback"] = r.fallbacks
        if self.asr_worker is not None:
            w = self.asr_worker.stats()
            out.update(pending=w["pending"], queue_capacity=w["queue_capacity"],
                       degraded=w["degraded"],
                       latency_p50_ms=w["latency_p50_ms"], latency_p95_ms=w["latency_p95_ms"],
                       **{k: w[k] for k in ("wait_p50_ms", "wait_p95_ms", "decode_p50_ms",
                                            "decode_p95_ms")},
                       realtime_factor=w["realtime_factor"])
        return out

    def close(self, timeout: float = 30.0, drop_pending: bool = False) -> bool:
        """Stop the recognizer's thread, after the segments it accepted (``drop_pending``:
        after the one it is transcribing; :meth:`flush` first, so that none is lost), and
        join it for at most ``timeout`` s. Returns whether the thread has ended (False: still
        inside the recognizer; a process must not finalize under it). Idempotent."""
        if self.asr_worker is None:
            return True
        self.asr_worker.close(timeout=timeout, drop_pending=drop_pending)
        return not self.asr_worker.alive
