"""The embedded recognizer's scheduling (``asr.enabled``): which speech goes to Whisper when,
and the text that comes back, in speech order.

:class:`Recognition` owns that state: the recognizer's thread and queue (or none: inline,
``asr.synchronous``), the segments waiting for their text, the early decode of a pause, the
decode of the speech in progress, the words heard so far (the prompt) and its counters. It
reads the core's audio buffer and voice activity detector and may cut the VAD's speech in
progress, but never reaches the segmenter or the diarizer: its methods return *events* the
caller acts on.

- :class:`Recognized`: a speech segment's text is in (in speech order, once the segments
  before it have theirs). The caller splits it into utterances (:func:`pieces`) and hands
  them to segmentation.
- :class:`SpeechCut`: the recognizer closed the speech in progress at a sentence end (a
  pause whose early decode ends a sentence, or a sentence inside the speech going on). The
  caller hands the segment to segmentation and back to :meth:`Recognition.add_segment` with
  its decode.

Usage, as :class:`~erc_ros.core.perception.PerceptionCore` runs it on each poll::

    rec.fetch(); act(rec.stream_cut())      # a decode of the speech going on came in
    for seg in vad.process(buffer):         # segments the VAD closed
        act(rec.add_segment(seg))
    rec.recognize_early(); act(rec.end_sentence())
    rec.recognize_streaming(); act(rec.stream_cut())
    act(rec.results())                      # texts in, in speech order
"""
from __future__ import annotations

import itertools
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .asr import AsrResult, AsrWorker, WhisperRecognizer, ends_sentence, has_words, sentence_cuts
from .config import PerceptionConfig
from .diarization import word_boundary
from .types import SAMPLE_RATE

__all__ = ["Recognition", "Job", "Recognized", "SpeechCut", "Piece", "pieces"]

#: A decode of the speech in progress (asr.stream_seconds) waits until this much speech
#: follows a pause (at most this much longer than its period): a word or two (~0.3 s each),
#: so that a sentence that ended at the pause shows with words after it and can be cut there.
#: After a pause too short for the sentence-end cut whose early decode ended a sentence, one
#: comes then, whatever its period; so too after a pause too short for an early decode but
#: at least half as long (a sentence said with no more than a breath before the next: two or
#: three VAD windows of quiet).
WORDS_AFTER_SECONDS = 0.5

#: A decode of the speech in progress whose audio ends at most this long before the speech
#: stopped (it was made as the person said their last word, before the VAD saw the pause)
#: is the early decode of that pause: it misses at most the end of the last word (five
#: 32 ms VAD windows), and a second decode of the same words would wait for it to finish.
STREAM_AS_EARLY_SECONDS = 0.15


def read_words(words) -> tuple[str, float]:
    """The text of some of a decode's words and its confidence (their mean probability)."""
    return " ".join(w.word for w in words), float(np.mean([w.probability for w in words]))


@dataclass(eq=False)
class Job:
    """A span of speech handed to the recognizer, until its result is taken."""

    id: int
    start: float
    end: float  #: the span its text is for (the segment's)
    result: Optional[AsrResult] = None
    ready: float = math.nan  #: time.perf_counter() when the result was ready
    #: The end of the audio it heard: ``end`` unless a decode of the speech in progress
    #: became the early decode of the pause after it (the rest of the span is the VAD's pad).
    heard_until: float = math.nan
    #: Speech the VAD was not sure of: no utterance unless the recognizer hears words in it.
    weak: bool = False

    def __post_init__(self):
        if math.isnan(self.heard_until):
            self.heard_until = self.end


@dataclass(frozen=True)
class Recognized:
    """Event: the text of speech segment ``job`` ([start, end]) is in, in speech order."""

    job: int
    start: float
    end: float
    text: str  #: the result's text, stripped
    result: AsrResult
    ready: float  #: time.perf_counter() when the result was ready


@dataclass(frozen=True)
class SpeechCut:
    """Event: the speech in progress was closed at a sentence end; ``segment`` goes to
    segmentation and back to :meth:`Recognition.add_segment` with ``decoded`` (its text,
    already decoded or on its way; None: the pause's early decode, matched by its span)."""

    segment: Any
    decoded: Optional[Job] = None


@dataclass(frozen=True)
class Piece:
    """One utterance of a recognized segment: its span and text, and the index of the
    speaker's turn it belongs to where the turn was cut into sentences (None: the piece is
    its turn). ``turn_span`` is that turn's span."""

    start: float
    end: float
    text: str
    confidence: float
    turn: Optional[int] = None
    turn_span: tuple[float, float] = field(default=(math.nan, math.nan))


def pieces(ev: Recognized, voice: Sequence[int], sentences: Sequence[int]) -> list[Piece]:
    """The utterances of one recognized segment: the whole segment; its pieces at the word
    indices ``voice`` (where the voice changes at a sentence end, found by the caller's
    diarization); and each of those cut at the word indices ``sentences`` (after each word
    that ends a sentence, :func:`~erc_ros.core.asr.sentence_cuts`). The sentences of one
    turn carry that turn's index, so that they share its speaker."""
    words, start, end = ev.result.words, ev.start, ev.end
    if not voice and not sentences:
        return [Piece(start, end, ev.text, ev.result.confidence)]

    def at(i: int) -> float:
        return start if i == 0 else end if i == len(words) else word_boundary(words, i)
    out, turn_edges = [], [0, *voice, len(words)]
    for k, (a, b) in enumerate(zip(turn_edges[:-1], turn_edges[1:])):  # each speaker's turn
        edges = [a, *[i for i in sentences if a < i < b], b]
        shared = len(edges) > 2
        for c, d in zip(edges[:-1], edges[1:]):
            out.append(Piece(at(c), at(d), *read_words(words[c:d]),
                             turn=k if shared else None,
                             turn_span=(at(a), at(b)) if shared else (math.nan, math.nan)))
    return out


class Recognition:
    """The embedded recognizer's scheduling (see the module documentation).

    ``recognizer``: the loaded :class:`~erc_ros.core.asr.WhisperRecognizer` of
    ``config.asr``. ``buffer``, ``vad``: the core's audio buffer and
    :class:`~erc_ros.core.vad.StreamingVad`, read (and the VAD's speech in progress cut) by
    the scheduling. ``on_result``: called with no arguments on the recognizer's thread when
    a result is ready (the owner may poll at once rather than at its next period).
    ``on_time(stage, seconds)``: time spent decoding inline (the ``asr`` stage)."""

    def __init__(self, config: PerceptionConfig, recognizer: WhisperRecognizer, buffer, vad,
                 on_result: Optional[Callable[[], None]] = None,
                 on_time: Optional[Callable[[str, float], None]] = None):
        self.config = config
        self.recognizer = recognizer
        self.buffer, self.vad = buffer, vad
        self._on_time = on_time or (lambda stage, seconds: None)
        #: The recognizer's own thread (None: inline, asr.synchronous).
        self.worker = None if config.asr.synchronous else \
            AsrWorker(recognizer, on_done=on_result)
        self._ids = itertools.count()
        self._backlog: deque[Job] = deque()  # in speech order
        self.counters = {"segments": 0, "results": 0, "no_text": 0, "refused_full": 0,
                         "errors": 0, "unfinished": 0, "early": 0, "early_used": 0,
                         "sentence_ends": 0, "weak_no_words": 0, "stream": 0,
                         "stream_cuts": 0, "early_streamed": 0}
        # The speech in progress handed to the recognizer early (asr.early_seconds): its
        # (start, end) as the VAD would close it, and the job.
        self._early: Optional[tuple[tuple[float, float], Job]] = None
        # The speech in progress decoded while it goes on (asr.stream_seconds): the job not
        # yet looked at, and the last such decode (its job keeps the span it heard).
        self._stream: Optional[Job] = None
        self._streamed: Optional[Job] = None
        # A pause too short for the sentence-end cut whose early decode ended a sentence:
        # (that decode's end, the speech's start, when the decode of the speech in progress
        # that may cut there is due).
        self._stream_soon = (math.nan, math.nan, math.nan)
        # The words the recognizer gave out in this conversation, the newest last
        # (asr.prompt_words: its prompt).
        self._heard: deque[str] = deque(maxlen=int(config.asr.prompt_words))
        #: Ends of the segments cut at a sentence end (asr.sentence_end_seconds), the newest
        #: last: the speech after such a cut may be the same person going on.
        self.sentence_cuts: deque[float] = deque(maxlen=8)

    def _job(self, start: float, end: float, **kw) -> Job:
        return Job(next(self._ids), start, end, **kw)

    # -- resets ------------------------------------------------------------------------
    def new_conversation(self) -> None:
        """A new conversation starts: the prompt starts without words."""
        self._heard.clear()

    def new_epoch(self) -> None:
        """The audio clock jumped (the old epoch's segments were all closed and their
        results taken): forget the speech in progress."""
        self._early = None
        self._stream = self._streamed = None
        self._stream_soon = (math.nan, math.nan, math.nan)
        self.sentence_cuts.clear()

    # -- segments ----------------------------------------------------------------------
    def add_segment(self, seg, decoded: Optional[Job] = None) -> list[Recognized]:
        """A speech segment the VAD closed (``decoded``: its recognition, already done or
        on its way): transcribed on the recognizer's thread, or inline. Returns what is
        ready at once (inline)."""
        start, end = seg.start, seg.end
        self.counters["segments"] += 1
        early, self._early = self._early, None
        if decoded is None and early is not None and early[0] == (start, end):
            self.counters["early_used"] += 1
            decoded = early[1]
        if decoded is not None:
            decoded.weak = seg.weak
            if self.worker is None:  # decoded inline already
                return self._deliver(decoded)
            self._backlog.append(decoded)  # in speech order, behind the segments before it
            return []
        if self.worker is None:
            job = self._job(start, end, weak=seg.weak)
            job.result, job.ready = self._transcribe_inline(start, end), time.perf_counter()
            return self._deliver(job)
        audio = self.buffer.read(start, end)
        job = self._job(start, end, weak=seg.weak)
        if not self.worker.submit(job, audio, start, end, self._prompt()):
            # Overloaded recognizer: the speech still becomes an utterance, without text
            # (after the segments before it, so utterances keep their order).
            self.counters["refused_full"] += 1
            job.result = AsrResult.empty(audio.size / SAMPLE_RATE, error="refused_full")
            job.ready = time.perf_counter()
        self._backlog.append(job)
        return []

    def results(self, wait: bool = False, timeout: float = 120.0,
                give_up: bool = False) -> list[Recognized]:
        """The finished recognitions, in speech order (``wait``: the pending ones too, for
        at most ``timeout`` s; then, with ``give_up``, the segments not finished come out
        without text, counted ``unfinished``)."""
        if self.worker is None:
            return []
        if wait and not self.worker.wait_idle(timeout=timeout):
            logging.getLogger("erc_ros.perception").warning(
                "embedded ASR still busy after %g s; %s", timeout,
                "the speech it has not transcribed comes out without text" if give_up
                else "its results come with later polls")
        self.fetch()
        if give_up:
            for job in self._backlog:
                if job.result is None:
                    job.result = AsrResult.empty((job.end - job.start), error="unfinished")
                    job.ready = time.perf_counter()
        out = []
        while self._backlog and self._backlog[0].result is not None:
            out += self._deliver(self._backlog.popleft())
        return out

    def fetch(self) -> None:
        """The recognizer thread's finished results, each into its job."""
        if self.worker is None:
            return
        for r in self.worker.results():
            job = r.segment_id
            job.result = r.result
            # the worker's monotonic finish time on the perf_counter clock
            job.ready = time.perf_counter() - (time.monotonic() - r.done)

    def _deliver(self, job: Job) -> list[Recognized]:
        """A segment's result, counted; no event for weak speech without words."""
        res = job.result
        text = res.text.strip()
        if job.weak and not res.error and not has_words(text):
            # Speech the VAD was not sure of, and the recognizer heard no word in it: a
            # tone, a click, a breath. Not an utterance (counted).
            self.counters["weak_no_words"] += 1
            return []
        if res.error == "unfinished":  # the recognizer did not get to it (flush's timeout)
            self.counters["unfinished"] += 1
        elif res.error != "refused_full":  # a refused segment was counted at submit
            self.counters["results"] += 1
            if res.error:
                self.counters["errors"] += 1  # the speech comes out without text
            elif not text:
                # Nothing recognized: a one-word turn Whisper cannot read ("Hey!" in 0.4 s),
                # a cough, noise the VAD took for speech. The speech is not lost: it becomes
                # an utterance without text, as in voice-activity-only mode (counted).
                self.counters["no_text"] += 1
            else:
                self._heard.extend(text.split())
        return [Recognized(job.id, job.start, job.end, text, res, job.ready)]

    # -- the speech in progress --------------------------------------------------------
    def _early_quiet(self) -> float:
        """The quiet an early decode needs (``asr.early_seconds``, at least the VAD's pad,
        so that the padded end is buffered); shorter pauses get none."""
        return max(self.config.asr.early_seconds, self.config.vad.pad_seconds)

    def recognize_early(self) -> None:
        """Hand the speech in progress to the recognizer once it has been quiet for
        ``asr.early_seconds``, while the VAD's hang-over still runs: where the quiet lasts,
        the segment the VAD closes is exactly this one and its text is ready sooner by the
        rest of the hang-over; where speech resumes, that decode is wasted (counted ``early``
        minus ``early_used``). Only on the recognizer's own thread and only when it is idle,
        so a closed segment waits at most for one early decode."""
        asr, vad = self.config.asr, self.vad
        wait, quiet = asr.early_seconds, self._early_quiet()
        pad = self.config.vad.pad_seconds
        pause, resumed = vad.pause_start, vad.resumed
        if pause is None and resumed is not None and resumed[1] - resumed[0] >= quiet \
                and self._stream_soon[1] != vad.open_start:
            # A pause that long which the VAD saw whole between two looks (audio comes in
            # chunks, and the VAD runs a poll behind): decoded as if it had been seen
            # quiet, so that whether a pause is decoded depends on the audio, not on where
            # the chunks fall. end_sentence then splits there where the text ends a
            # sentence (the span is the one an early decode in the pause would have had).
            # Not while a decode of this speech is due for an earlier pause (_stream_soon):
            # that one shows this pause too.
            pause = resumed[0]
        # Offline (inline recognizer) an early decode serves only the sentence-end cut.
        inline = self.worker is None
        if wait < 0 or pause is None or (inline and asr.sentence_end_seconds < 0):
            return
        if vad.processed_until(self.buffer) - pause < quiet:
            return  # not quiet long enough, or the padded end not buffered yet
        span = (vad.open_start, pause + pad)
        if self._early is not None and self._early[0] == span:
            return
        last = self._streamed
        if last is not None and last.start == span[0] and \
                last.heard_until >= pause - STREAM_AS_EARLY_SECONDS:
            # The decode of the speech in progress heard it up to its last word: it was made
            # as the speech ended, before the VAD saw the pause. It is this pause's early
            # decode (whether or not it is in yet), instead of a second one of the same words.
            last.end = span[1]
            self._early = (span, last)
            self.counters["early"] += 1
            self.counters["early_streamed"] += 1
            return
        if inline:
            job = self._job(*span)
            job.result, job.ready = self._transcribe_inline(*span), time.perf_counter()
            self._early = (span, job)
            self.counters["early"] += 1
            return
        if self.worker.pending():
            return
        job = self._job(*span)
        if self.worker.submit(job, self.buffer.read(*span), *span, self._prompt()):
            self._early = (span, job)
            self.counters["early"] += 1

    def end_sentence(self) -> Optional[SpeechCut]:
        """``asr.sentence_end_seconds``: close the speech in progress at a pause, before
        the VAD's hang-over does, where the early decode up to that pause is in, ends a
        sentence, and the pause has lasted that long. The closed segment then takes that
        decode (:meth:`add_segment`). Where speech came back after such a pause before the
        decode was in (a next speaker within the hang-over, a recognizer slower than the
        pause), the segment is split there: the cut depends on the audio and the text, not
        on how fast the recognizer was. Returns the cut, if it made one."""
        wait = self.config.asr.sentence_end_seconds
        if wait < 0 or self._early is None:
            return None
        vad = self.vad
        (start, end), job = self._early
        if job.result is None or vad.open_start != start or \
                end - start < self.config.vad.min_speech_seconds:
            return None
        pad = self.config.vad.pad_seconds
        pause, resumed = vad.pause_start, vad.resumed
        if pause is not None and pause + pad == end:  # still quiet
            if vad.processed_until(self.buffer) - pause < wait or \
                    not ends_sentence(job.result.text):
                return None
            seg = vad.cut_open(end)
        elif resumed is not None and resumed[0] + pad == end:  # the speech came back
            if not ends_sentence(job.result.text):
                return None
            if resumed[1] - resumed[0] < wait:
                # Whisper ends any piece with a mark: too short a pause to cut on that
                # alone. The speech in progress is decoded once a word or two follow, and
                # cut there where the sentence end holds with words after it (stream_cut).
                if self._stream_soon[0] != end:
                    self._stream_soon = (end, start, resumed[1] + WORDS_AFTER_SECONDS)
                return None
            seg = vad.split_open(end, resumed[1])
        else:
            return None  # the speaker went on after that pause and paused again
        self.counters["sentence_ends"] += 1
        self.sentence_cuts.append(end)
        return SpeechCut(seg)

    def recognize_streaming(self) -> None:
        """``asr.stream_seconds``: hand the speech in progress to the recognizer while the
        person goes on speaking, each time it has grown that long since its start or the
        last such decode; :meth:`stream_cut` then closes its finished sentences. Live only
        when the recognizer is idle (a pause's early decode or a closed segment never
        waits for more than one); offline (asr.synchronous) inline, at the same points."""
        every = self.config.asr.stream_seconds
        vad = self.vad
        start = vad.open_start
        if every < 0 or start is None or vad.pause_start is not None or \
                self._stream is not None:
            return
        until = vad.processed_until(self.buffer)
        last = self._streamed
        since = last.heard_until if last is not None and last.start == start else start
        soon = self._stream_soon[1] == start and until >= self._stream_soon[2]
        resumed = vad.resumed
        if not soon and resumed is not None and since <= resumed[0]:  # a pause since
            if until - resumed[1] >= WORDS_AFTER_SECONDS:
                # one too short for an early decode (recognize_early) but not a mere dip:
                # decoded now that a word or two follow, as after an early decode's sentence
                # end
                wait = self.config.asr.early_seconds
                soon = 0 <= wait / 2 <= resumed[1] - resumed[0] < self._early_quiet()
            elif until - since < every + WORDS_AFTER_SECONDS:
                return  # a sentence that ended there shows with words after it
        if until - since < every and not soon:
            return
        job = self._job(start, until)
        if self.worker is None:
            job.result, job.ready = self._transcribe_inline(start, until), time.perf_counter()
        elif self.worker.pending() or \
                not self.worker.submit(job, self.buffer.read(start, until), start, until,
                                       self._prompt()):
            return
        self._stream = self._streamed = job
        self.counters["stream"] += 1
        if soon:
            self._stream_soon = (self._stream_soon[0], math.nan, math.nan)

    def stream_cut(self) -> Optional[SpeechCut]:
        """``asr.stream_seconds``: where the decode of the speech in progress is in, the
        speech is still open from the same start, and the decode ends a sentence with more
        words after it, close the speech at the last such sentence end (between its last
        word and the next), with the decode's words up to there as its text; the rest goes
        on as the speech in progress and is recognized on its own. Returns the cut, if it
        made one."""
        job = self._stream
        if job is None or job.result is None:
            return None
        self._stream = None
        words = job.result.words
        if self.vad.open_start != job.start or job.result.error:
            return None  # closed or cut since: that segment has its own decode
        ends = sentence_cuts([w.word for w in words])
        if not ends:
            return None
        # Word times are the recognizer's guess: the rest is cut no later than the VAD's pad
        # after the sentence, so that its first word is heard whole.
        pad = self.config.vad.pad_seconds
        head = words[:ends[-1]]
        at = min(word_boundary(words, ends[-1]), head[-1].end + pad)
        if at - job.start < self.config.vad.min_speech_seconds or \
                (self.vad.pause_start is not None and self.vad.pause_start < at):
            return None
        seg = self.vad.split_open(at, at + pad)
        text, confidence = read_words(head)
        done = self._job(seg.start, seg.end, result=replace(
            job.result, text=text, words=head, confidence=confidence), ready=job.ready)
        self.counters["stream_cuts"] += 1
        return SpeechCut(seg, done)

    # -- decoding ----------------------------------------------------------------------
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
        self._on_time("asr", time.perf_counter() - t)
        return res

    # -- diagnostics and end -----------------------------------------------------------
    def pending(self) -> int:
        """Segments the recognizer's thread accepted and has not finished (0 inline)."""
        return self.worker.pending() if self.worker is not None else 0

    def stats(self) -> dict:
        """The counters (segments, results, no_text, refused_full, errors, ...), and, on
        the recognizer's own thread, queue and submit -> result latency (and its parts: the
        wait behind other decodes, the decode itself)."""
        r = self.recognizer
        out = {"enabled": True, "model": r.model_name or self.config.asr.model,
               "model_reason": r.choice.get("reason", ""), **self.counters}
        # the recognizer's own retries (a recognizer a benchmark shares counts them all)
        if r.config.window == "fit":
            out["refit"] = r.refits
        if r.config.fallback == "beam":
            out["fallback"] = r.fallbacks
        if self.worker is not None:
            w = self.worker.stats()
            out.update(pending=w["pending"], queue_capacity=w["queue_capacity"],
                       degraded=w["degraded"],
                       latency_p50_ms=w["latency_p50_ms"], latency_p95_ms=w["latency_p95_ms"],
                       **{k: w[k] for k in ("wait_p50_ms", "wait_p95_ms", "decode_p50_ms",
                                            "decode_p95_ms")},
                       realtime_factor=w["realtime_factor"])
        return out

    def close(self, timeout: float = 30.0, drop_pending: bool = False) -> bool:
        """Stop the recognizer's thread, after the segments it accepted (``drop_pending``:
        after the one it is transcribing), and join it for at most ``timeout`` s. Returns
        whether the thread has ended. Idempotent."""
        if self.worker is None:
            return True
        self.worker.close(timeout=timeout, drop_pending=drop_pending)
        return not self.worker.alive
