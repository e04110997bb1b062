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

:class:`PerceptionCore` is the orchestrator: it owns the parts (audio buffer, VAD, the
embedded recognizer's :class:`~erc_ros.core.recognition.Recognition`, speaker embedder and
diarizer, frame buffer, face detector and :class:`~erc_ros.core.face_expression.FaceExpressions`,
the voice expert's :class:`~erc_ros.core.voice_expression.VoiceExpressions`, conversation
history), runs them in order, and builds each utterance from a span the
:class:`~erc_ros.core.segmentation.Segmenter` decided. How spans are decided (timed /
untimed ASR, voice activity alone) and how ASR finals waiting are bounded is described in
:mod:`erc_ros.core.segmentation`. The embedded recognizer's text reaches the segmenter
directly (:meth:`~erc_ros.core.segmentation.Segmenter.add_recognized`), one utterance per
piece of a recognized segment (:func:`~erc_ros.core.recognition.pieces`); an external
ASR's results come through :meth:`PerceptionCore.push_transcript`.

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
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from threadpoolctl import ThreadpoolController

from .asr import WhisperRecognizer, sentence_cuts
from .audio_buffer import AudioBuffer
from .config import (AudioConfig, ConversationConfig, DiarizationConfig, FaceConfig,
                     PerceptionConfig, SegmentationConfig, VadConfig)
from .conversation import ConversationHistory
from .diarization import OnlineDiarizer, SpeakerEmbedder, enroll_voices
from .errors import InputError
from .face_expression import FaceExpressions
from .faces import FrameBuffer, detector_for, due_for_detection, speaker_faces
from .recognition import Piece, Recognition, Recognized, SpeechCut, pieces
from .segmentation import PendingUtterance, Segmenter
from .speakers import Speakers
from .types import FACE_DISABLED, SAMPLE_RATE, AudioChunk, Frame, TranscriptEvent, Utterance
from .vad import StreamingVad
from .voice_expression import VoiceExpressions, own_voice_onsets

__all__ = ["PerceptionCore", "PerceptionConfig", "AudioConfig", "VadConfig",
           "SegmentationConfig", "DiarizationConfig", "FaceConfig", "ConversationConfig"]

# Order of stats()["counters"] (as published on /diagnostics): the core's own counters and
# the segmenter's, interleaved as they always were.
_COUNTER_ORDER = ("utterances", "utterances_vad", "utterances_timed", "utterances_untimed",
                  "untimed_estimated_span", "timed_audio_incomplete", "close_embeddings",
                  "speech_dropped_untranscribed", "utterances_no_face", "utterances_face",
                  "utterances_no_camera", "refused",
                  "transcripts", "partials", "frames", "conversations", "discontinuities",
                  "speech_closed_stalled", "turn_splits", "onset_splits",
                  "sentence_splits", "speaker_continued")


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


class PerceptionCore:
    """See the module documentation.

    ``face_expert``: the face-expression expert (``labels`` == :data:`FACE_CLASSES`,
    ``predict(crops) -> (n, 7)`` probabilities), made by the assembly path
    (:func:`erc_ros.assemble.build_core`) when ``faces.expression`` is on; the core runs it
    on each face it detects while the person speaks (cached per frame and box, off the close
    path) and, when an utterance closes, averages the speaker's face into
    ``features["face_probabilities"]`` with ``face_status`` / ``face_count``. None (or
    ``faces.expression`` / ``faces.enabled`` off): ``face_status`` is ``disabled``.
    ``voice_expert``: the voice expert (``labels`` == :data:`FACE_CLASSES`, ``predict(audio)``),
    made there when ``voice.expression`` is on; run on each utterance's audio at close
    (``voice_status`` / ``voice_reason``, ``features["voice_probabilities"]``; see
    :class:`~erc_ros.core.voice_expression.VoiceExpressions`). None: ``disabled``.

    ``recognizer``: with ``asr.enabled``, an already loaded
    :class:`~erc_ros.core.asr.WhisperRecognizer` of the same ``asr`` settings to use instead
    of loading one (a benchmark that builds a core per conversation); else it is loaded.

    ``on_asr_result``: with ``asr.enabled`` on the recognizer's own thread, called (no
    arguments, on that thread) when a result is ready: the owner may poll at once instead
    of at its next period (the utterance node wakes its worker: the text's wait for the
    emotion path).
    """

    def __init__(self, config: Optional[PerceptionConfig] = None, face_expert=None,
                 voice_expert=None, recognizer=None,
                 on_asr_result: Optional[Callable[[], None]] = None):
        self.config = cfg = config or PerceptionConfig()
        cfg.validate()
        self._lock = threading.RLock()
        self._timer = _Timer()
        # The core's numpy maths is many small matrix products (mel filterbanks, cosine
        # similarities): OpenBLAS's thread pool makes those ~100x slower on a busy 2-core
        # machine (spinning threads). The core runs them single-threaded, scoped to its calls.
        self._blas = ThreadpoolController()
        self.buffer = AudioBuffer(cfg.audio, on_discontinuity=_weak_method(self._on_discontinuity))
        # Weak speech only where a recognizer can confirm it (words heard); otherwise the
        # segments are the sure ones alone.
        self.vad = StreamingVad(cfg.vad, cfg.segmentation.max_utterance_seconds,
                                weak=cfg.asr.enabled, history_s=cfg.audio.capacity_seconds)
        dz = cfg.diarization
        self.embedder = None
        if dz.enabled:
            self.embedder = SpeakerEmbedder(dz, history_s=cfg.audio.capacity_seconds)
            t = time.perf_counter()
            with self._blas.limit(limits=1, user_api="blas"):
                self.embedder.load(warmup=dz.warmup)
            self._timer.add("load_embedder", time.perf_counter() - t)
        self.diarizer = OnlineDiarizer(dz)
        self.speakers = Speakers(cfg, self.buffer, self.embedder, self.diarizer,
                                 self._timer.add)
        if dz.voices:
            if self.embedder is None:
                raise ValueError("diarization.voices needs diarization.enabled")
            enroll_voices(Path(dz.voices), self.embedder, self.diarizer, self.enroll)
        fc = cfg.faces
        self.frames = FrameBuffer(fc.buffer_seconds, fc.store_fps, fc.store_max_width,
                                  cfg.audio.clock_reset_seconds) if fc.enabled else None
        self.detector = detector_for(fc) if fc.enabled else None
        self.face_expert = face_expert if fc.enabled and fc.expression else None
        self.expressions = FaceExpressions(fc, self.face_expert, self._timer.add)
        self.voice_expert = voice_expert if cfg.voice.expression else None
        self.voice_expressions = VoiceExpressions(
            cfg.voice, self.voice_expert, self._timer.add,
            own_voice_onsets(cfg.voice, self.voice_expert, self.speakers.onsets),
            dz.onset_threshold)
        #: What the assembly path loaded as the face / voice expert, or why none (for the logs).
        self.face_expert_message = self.voice_expert_message = ""
        self.history = ConversationHistory(cfg.conversation.history_utterances)
        self.segmenter = Segmenter(cfg.segmentation)
        # The embedded recognizer (asr.enabled): each speech segment the VAD closes is
        # transcribed (on its own thread behind a bounded queue, or inline when
        # asr.synchronous); its text comes back as the Recognition's events.
        self.recognizer: Optional[WhisperRecognizer] = None
        self.recognition: Optional[Recognition] = None
        if cfg.asr.enabled:
            t = time.perf_counter()
            self.recognizer = recognizer or WhisperRecognizer(cfg.asr).load()
            self._timer.add("load_asr", time.perf_counter() - t)
            self.recognition = Recognition(cfg, self.recognizer, self.buffer, self.vad,
                                           on_result=on_asr_result, on_time=self._timer.add)
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
        # The core's counters; the segmenter's (utterances_vad/_timed/_untimed, transcripts,
        # partials, ...) are its own, merged by stats().
        # The speakers' (close_embeddings, turn_splits, onset_splits, speaker_continued) likewise.
        self.counters = {"utterances": 0, "utterances_no_face": 0, "utterances_face": 0,
                         "utterances_no_camera": 0, "refused": {}, "frames": 0,
                         "conversations": 1, "discontinuities": 0, "speech_closed_stalled": 0,
                         "sentence_splits": 0}
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
        if self.recognition is not None:
            self.recognition.new_conversation()
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

    # -- work --------------------------------------------------------------------------
    def _advance(self) -> None:
        """Run VAD and the streaming embedder over newly buffered audio."""
        rec = self.recognition
        if rec is not None:
            # A decode of the speech in progress that came in since: cut before the new
            # audio (inline it was cut when it was made, below).
            rec.fetch()
            self._cut(rec.stream_cut())
        t = time.perf_counter()
        segs = self.vad.process(self.buffer)
        self._timer.add("vad", time.perf_counter() - t)
        self._speech(segs)
        if rec is not None:
            rec.recognize_early()
            self._cut(rec.end_sentence())
            rec.recognize_streaming()
            self._cut(rec.stream_cut())
        if self.embedder is not None:
            t = time.perf_counter()
            n = self.embedder.process(self.buffer, self.vad)
            if n:
                self._timer.add("embed_stream", time.perf_counter() - t, n)

    # -- the embedded recognizer's events ----------------------------------------------
    def _speech(self, segments, decoded=None) -> None:
        """Speech segments the VAD closed: to the segmenter, and each to the recognizer
        (``decoded``: the one segment's recognition, already done or on its way)."""
        segments = list(segments)
        if decoded is not None and len(segments) != 1:
            raise ValueError("_speech: a recognition already done belongs to one segment")
        self.segmenter.add_speech(segments)
        if self.recognition is None:
            return
        for seg in segments:
            # its text comes as a timed final later: the speech is not emitted meanwhile
            self.segmenter.claim(seg.start, seg.end)
            self._recognized(self.recognition.add_segment(seg, decoded))

    def _cut(self, cut: Optional[SpeechCut]) -> bool:
        """The recognizer closed the speech in progress: the segment goes on as any the VAD
        closes, with its decode. Returns whether there was a cut."""
        if cut is None:
            return False
        self._speech([cut.segment], cut.decoded)
        return True

    def _take_recognized(self, wait: bool = False, timeout: float = 120.0,
                         give_up: bool = False) -> None:
        """The recognizer's finished texts, in speech order, to segmentation (see
        :meth:`Recognition.results`)."""
        if self.recognition is not None:
            self._recognized(self.recognition.results(wait, timeout, give_up))

    def _recognized(self, events: list[Recognized]) -> None:
        """Each recognized segment's utterances to the segmenter, directly, stamped with the
        input clock; one the waiting room refuses is counted as a refusal (``pending_full``)."""
        for ev in events:
            ps = self._pieces(ev)
            self.speakers.share(ev.job, ps)
            for p in ps:
                turn = (ev.job, p.turn) if p.turn is not None else None
                try:
                    self.segmenter.add_recognized(p.start, p.end, p.text, p.confidence,
                                                  ev.result.language, self._input_clock(),
                                                  ev.ready, turn)
                except InputError as e:
                    self._refuse(e)
                    self.speakers.taken(turn)

    def _pieces(self, ev: Recognized) -> list[Piece]:
        """The utterances of one recognized segment: the whole segment; its pieces where the
        voice changes at a sentence end (``diarization.split_turns``,
        :func:`~erc_ros.core.diarization.speaker_changes`); and each of those cut after
        every sentence (``segmentation.split_sentences``), whose pieces share the
        diarization of the turn they come from (:meth:`Speakers.of`)."""
        dz, sc = self.config.diarization, self.config.segmentation
        words = ev.result.words
        voice_cuts = dz.split_turns and self.embedder is not None
        if not (ev.text and len(words) > 1 and (voice_cuts or sc.split_sentences)):
            return [Piece(ev.start, ev.end, ev.text, ev.result.confidence)]
        voice: list[int] = []
        if voice_cuts:
            voice = self.speakers.changes(words)
        sentences = sentence_cuts([w.word for w in words]) if sc.split_sentences else []
        if voice or sentences:
            self.counters["sentence_splits"] += len(set(sentences) - set(voice))
        return pieces(ev, voice, sentences)

    def _detect_while_speaking(self, since: float) -> None:
        """Detect faces on a few frames of the speech in progress (off the close path)."""
        t = time.perf_counter()
        # At most one detection per poll keeps polls short.
        f = due_for_detection(self.frames.frames, since, self.config.faces.detect_fps)
        if f is None:
            return
        self.detector.boxes(f)
        self._timer.add("faces_stream", time.perf_counter() - t)
        if self.face_expert is not None:  # while speaking: off the close path
            t = time.perf_counter()
            self.expressions.classify([f])
            self._timer.add("expression_stream", time.perf_counter() - t)

    def _build(self, p: PendingUtterance) -> Optional[Utterance]:
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
        cuts = self.recognition.sentence_cuts if self.recognition is not None else ()
        emb, dec = self.speakers.of(p, start, audio_end, audio.size > 0, cuts)
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
            face_status, face_count, face_p = self.expressions.of_utterance(chosen, sel)
            if face_p is not None:
                features["face_probabilities"] = face_p
        self.expressions.count(face_status)
        voice_status, voice_reason, voice_p = self.voice_expressions.of_utterance(audio)
        if voice_p is not None:
            features["voice_probabilities"] = voice_p
        self.voice_expressions.count(voice_status)
        self._utt_index += 1
        utt = Utterance(
            utterance_id=f"utt{self._utt_index:06d}", conversation_id=self._conv_id,
            speaker_id=dec.speaker_id, start=start, end=end, text=p.text, audio=audio,
            faces=faces, speaker_source=dec.source, speaker_confidence=dec.confidence,
            text_confidence=p.text_confidence, locale=p.locale,
            final_stamp=None if math.isnan(p.final_stamp) else p.final_stamp, features=features,
            asr_ready=p.asr_ready, face_status=face_status, face_count=face_count,
            voice_status=voice_status, voice_reason=voice_reason)
        self._last_end = end if self._last_end is None else max(self._last_end, end)
        self.speakers.last_built = (start, end, dec.speaker_id)
        self.history.add(utt)
        self.counters["utterances"] += 1
        self.segmenter.built(p)
        self._close_ms.append(1000 * (time.perf_counter() - t_close))
        return utt

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
            self._take_recognized()
            if self.recognition is not None and self._cut(self.recognition.end_sentence()):
                self._take_recognized()  # its decode is in: the utterance comes out now
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
            self._take_recognized(wait=True, timeout=asr_timeout, give_up=True)
            now = self.buffer.t_end if self.buffer.epoch >= 0 else 0.0
            out = self._take(self._collect(now, final=True))
            self._timer.add("poll", time.perf_counter() - t)
            return out

    def _on_discontinuity(self, kind: str) -> None:
        """Called by the buffer before it starts a new epoch: finish the old one."""
        self.counters["discontinuities"] += 1
        self._advance()
        self._speech(self.vad.close())
        self._take_recognized(wait=True)
        # _collect returns only what it built; poll returns these (then its own) later.
        self._ready.extend(self._collect(self.buffer.t_end, final=True))
        self._audio_seen_end = -math.inf  # the new epoch's stamps start anywhere
        self.segmenter.new_epoch()
        self.vad.reset(0)
        if self.recognition is not None:
            self.recognition.new_epoch()
        self.speakers.new_epoch()  # every sentence of the old epoch was built above
        if self.embedder is not None:
            self.embedder.reset(0)
        self._last_end = None
        self._new_conversation()

    # -- diagnostics -------------------------------------------------------------------
    def _counters(self) -> dict:
        both = {**self.counters, **self.speakers.counters, **self.segmenter.counters}
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
                "asr": self.recognition.stats() if self.recognition is not None
                else {"enabled": False},
                "face_expression": self.expressions.stats(),
                "voice_expression": self.voice_expressions.stats(),
            }

    def close(self, timeout: float = 30.0, drop_pending: bool = False) -> bool:
        """Stop the recognizer's thread, after the segments it accepted (``drop_pending``:
        after the one it is transcribing; :meth:`flush` first, so that none is lost), and
        join it for at most ``timeout`` s. Returns whether the thread has ended (False: still
        inside the recognizer; a process must not finalize under it). Idempotent."""
        return self.recognition is None or \
            self.recognition.close(timeout=timeout, drop_pending=drop_pending)
