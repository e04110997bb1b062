"""Segmentation: which spans of the audio are utterances, from voice activity and ASR results.

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
pushed and the last ``now`` given to :meth:`PerceptionCore.poll`; before either, no final is
judged so), or an untimed final stamped that far ahead, is refused (``InputError`` reason
``transcript_future``): its audio would never come and it would wait forever. A transcript a
little ahead of its audio (ASR on its own microphone path, audio still in flight) is within
the lead and waits as before. At most ``max_pending_utterances`` timed finals wait for their
audio, and as many untimed ones for their speech; beyond that the *newest* is refused
(``pending_full``): the waiting ones are about to come out and are never dropped for it. Both
refusals are counted by reason, like every refused input (``stats()["counters"]["refused"]``,
/diagnostics through the node).

:class:`Segmenter` owns this state (speech segments, ASR results waiting, decided spans) and
its counters. It learns about voice activity only through its arguments: the speech segments
the VAD closed (:meth:`Segmenter.add_speech`), the time up to which the VAD has run, and a
:class:`VoiceActivity` (the :class:`~erc_ros.core.vad.StreamingVad`) whose open segment it
may read and cut. An external ASR's results come through :meth:`Segmenter.push_transcript`;
the core's own recognizer's text through :meth:`Segmenter.add_recognized` (a timed final
that carries when its text was ready and the speaker's turn it is a sentence of, under the
same waiting-room bounds). It never reads audio; :class:`~erc_ros.core.perception.PerceptionCore`
builds the utterances from the :class:`PendingUtterance` spans it returns.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Optional, Protocol

from .config import SegmentationConfig
from .errors import PendingFullError, TranscriptError, TranscriptFutureError
from .types import TranscriptEvent

#: Bounds of an ASR result's short fields, in characters (longer: refused, InputError
#: ``transcript_field``). A speaker hint is an upstream voice or person id (ROS4HRI ids are
#: a few characters), a locale a BCP-47 / POSIX tag (RFC 5646 asks implementations to read
#: 35), a segment id links partial results to their final. The text has its own bound,
#: ``segmentation.max_text_characters``.
TRANSCRIPT_BOUNDS = {"speaker_hint": 128, "locale": 35, "segment_id": 128}


@dataclass
class PendingUtterance:
    """An utterance waiting for its audio (timed ASR) or decided (VAD / untimed ASR)."""

    start: float
    end: float
    text: str = ""
    final_stamp: float = float("nan")
    hint: str = ""
    text_confidence: float = float("nan")
    locale: str = ""
    timed: bool = False
    #: The core's own recognizer: time.perf_counter() when its text was ready, and the
    #: speaker's turn this sentence is a piece of (its sentences share one diarization).
    asr_ready: Optional[float] = None
    turn: Optional[tuple[int, int]] = None


@dataclass
class _Seg:
    start: float
    end: float
    claimed: bool = False
    emitted: bool = False


class VoiceActivity(Protocol):
    """What the segmenter may know of, and do to, the voice activity detector."""

    @property
    def open_start(self) -> Optional[float]:
        """Start of the speech segment in progress, else None."""

    def cut_open(self, at: float):
        """End the speech segment in progress at ``at`` (returns it, with ``start``/``end``)."""


class Segmenter:
    """Turns speech segments and ASR results into utterance spans (see the module docs).

    ``pending``, ``untimed``, ``speech`` and ``open_partials`` are its queues (read them,
    don't change them); ``counters`` are its counters, merged into ``PerceptionCore.stats()``.
    """

    def __init__(self, config: SegmentationConfig):
        self.config = config
        self.speech: deque[_Seg] = deque(maxlen=256)
        self.pending: list[PendingUtterance] = []
        # Both bounded by segmentation.max_pending_utterances (push_transcript refuses more).
        self.untimed: deque[TranscriptEvent] = deque()
        self._timed_spans: deque = deque(maxlen=32)  # recent timed ASR spans (claim speech)
        self.open_partials: dict[str, float] = {}
        self._asr_seen: Optional[float] = None
        self._last_claimed_end = -math.inf
        self.counters = {"utterances_vad": 0, "utterances_timed": 0, "utterances_untimed": 0,
                         "untimed_estimated_span": 0, "speech_dropped_untranscribed": 0,
                         "timed_audio_incomplete": 0, "transcripts": 0, "partials": 0}

    # -- input -------------------------------------------------------------------------
    def add_speech(self, segments: Iterable) -> None:
        """Speech segments the VAD closed (anything with ``start``/``end``), in time order."""
        for s in segments:
            self.speech.append(_Seg(s.start, s.end))

    def push_transcript(self, ev: TranscriptEvent, clock: float) -> None:
        """Record one ASR result; ``clock`` is the input clock (-inf when unknown). Raises
        InputError (the caller counts the refusal)."""
        self._check_transcript(ev)
        limit = self.config.max_text_characters
        if len(ev.text) > limit:
            raise TranscriptError(f"ASR result of {len(ev.text)} characters (segmentation."
                                  f"max_text_characters={limit})", "transcript_too_long")
        timed = ev.timed and self.config.mode != "asr_untimed"
        if not ev.is_final:
            self._asr_seen = float(ev.stamp)
            self.counters["partials"] += 1
            key = ev.segment_id or ("timed" if timed else "untimed")
            self.open_partials.setdefault(key, ev.start if timed else ev.stamp)
            while len(self.open_partials) > 32:  # partials whose final never came
                self.open_partials.pop(next(iter(self.open_partials)))
            return
        self._final(ev, timed, clock)

    def add_recognized(self, start: float, end: float, text: str, confidence: float,
                       locale: str, clock: float, asr_ready: Optional[float] = None,
                       turn: Optional[tuple[int, int]] = None) -> None:
        """The core's own recognizer's text of speech [start, end] (a timed final stamped
        ``clock``, the input clock; cut to ``max_text_characters``). ``asr_ready`` and
        ``turn`` go with its utterance (:class:`PendingUtterance`). Raises InputError where
        the waiting room refuses it, or its span is not a span (see the module docs)."""
        ev = TranscriptEvent(clock, text[:self.config.max_text_characters], True, start, end,
                             confidence, locale=locale)
        self._check_transcript(ev)
        self._final(ev, self.config.mode != "asr_untimed", clock, asr_ready, turn)

    def _final(self, ev: TranscriptEvent, timed: bool, clock: float,
               asr_ready: Optional[float] = None,
               turn: Optional[tuple[int, int]] = None) -> None:
        self._check_waiting_room(ev, timed, clock)
        self._asr_seen = float(ev.stamp)
        self.counters["transcripts"] += 1
        self.open_partials.pop(ev.segment_id or ("timed" if timed else "untimed"), None)
        if timed:
            self.pending.append(PendingUtterance(
                float(ev.start), float(ev.end), ev.text.strip(), float(ev.stamp),
                ev.speaker_hint, float(ev.confidence), ev.locale, timed=True,
                asr_ready=asr_ready, turn=turn))
        else:
            self.untimed.append(ev)

    def _check_waiting_room(self, ev: TranscriptEvent, timed: bool, clock: float) -> None:
        """Refuse a final that would wait forever (far ahead of the input clock) or that
        finds the waiting room full (see the module docs)."""
        sc = self.config
        t = float(ev.end) if timed else float(ev.stamp)
        # clock is -inf before any audio or poll: nothing to judge by
        if clock > -math.inf and t > clock + sc.max_transcript_lead_seconds:
            what = f"span [{float(ev.start):.3f}, {t:.3f}] s ends" if timed else \
                f"stamp {t:.3f} s is"
            raise TranscriptFutureError(
                f"ASR final's {what} {t - clock:.1f} s after the latest audio/poll time "
                f"{clock:.3f} s (segmentation.max_transcript_lead_seconds="
                f"{sc.max_transcript_lead_seconds:g}): is the ASR clock ahead of the robot's? "
                f"Result refused")
        waiting = len(self.pending) if timed else len(self.untimed)
        if waiting >= sc.max_pending_utterances:
            raise PendingFullError(
                f"{waiting} {'timed' if timed else 'untimed'} ASR finals already wait for "
                f"their {'audio' if timed else 'speech'} (segmentation.max_pending_utterances="
                f"{sc.max_pending_utterances}); newest result refused")

    @staticmethod
    def _check_transcript(ev: TranscriptEvent) -> None:
        """Refuse an ASR result the core cannot use as it is (:data:`TRANSCRIPT_BOUNDS`;
        reasons ``transcript``, ``transcript_field``, ``empty_transcript``): every path into
        the core (the nodes, bag replay, the benchmarks feeding it directly) gets the same
        rules."""
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
        for name, limit in TRANSCRIPT_BOUNDS.items():
            value = getattr(ev, name)
            if not isinstance(value, str):
                raise TranscriptError(f"transcript {name} must be a string, got "
                                      f"{type(value).__name__}", "transcript_field")
            if len(value) > limit:
                raise TranscriptError(f"transcript {name} of {len(value)} characters (at most "
                                      f"{limit}): {value[:40]!r}...", "transcript_field")
        c = float(ev.confidence)
        if not math.isnan(c) and not 0.0 <= c <= 1.0:
            raise TranscriptError(f"transcript confidence {c!r} is outside [0, 1] (NaN: the "
                                  "ASR gives none)", "transcript_field")
        if ev.is_final and not ev.timed and not ev.text.strip():
            # An untimed empty final says nothing and spans nothing (a timed one still marks
            # an utterance whose audio and face may carry the emotion).
            raise TranscriptError("final ASR result with no text and no times",
                                  "empty_transcript")

    # -- decisions ---------------------------------------------------------------------
    def asr_present(self, now: float) -> bool:
        mode = self.config.mode
        if mode in ("asr_timed", "asr_untimed"):
            return True
        if mode == "vad":
            return False
        return self._asr_seen is not None and now - self._asr_seen <= \
            self.config.asr_presence_seconds

    def decide(self, now: float, final: bool, vad_time: float, vad: VoiceActivity) -> None:
        """Turn segments / transcripts that are complete at ``now`` into pending utterances.
        ``vad_time``: the time up to which the VAD has run (-inf before any audio); ``vad``'s
        open segment may be cut for an untimed final that came before its hang-over ended."""
        sc = self.config
        # Timed ASR claims the speech segments it overlaps (pending or already built).
        spans = [(p.start, p.end) for p in self.pending if p.timed] + list(self._timed_spans)
        for s in self.speech:
            if not s.claimed and any(min(s.end, b) - max(s.start, a) > 0.3 * (s.end - s.start)
                                     for a, b in spans):
                s.claimed = True
        # Untimed finals: align to speech once VAD has seen audio up to the result.
        while self.untimed:
            ev = self.untimed[0]
            in_speech = vad.open_start is not None and vad.open_start < ev.stamp
            waited = now - ev.stamp >= sc.asr_wait_seconds or final
            if not waited and (vad_time < ev.stamp or in_speech):
                break
            self.untimed.popleft()
            self.pending.append(self._align_untimed(ev, vad_time, vad))
        # Voice activity not claimed by an ASR result. In "vad" mode it is the utterance at
        # once; otherwise it waits asr_wait_seconds for its text, then is emitted without
        # text if no ASR is around (auto mode, none seen for asr_presence_seconds) or
        # emit_untranscribed, else dropped (counted): waiting avoids a text-less duplicate
        # of speech whose transcript is on its way.
        for s in self.speech:
            if s.claimed or s.emitted:
                continue
            if sc.mode != "vad" and not (final or now - s.end >= sc.asr_wait_seconds):
                continue
            s.emitted = True
            if sc.mode == "vad" or sc.emit_untranscribed or not self.asr_present(now):
                self.pending.append(PendingUtterance(s.start, s.end, final_stamp=max(s.end, now)))
                self.counters["utterances_vad"] += 1
            else:
                self.counters["speech_dropped_untranscribed"] += 1

    def _align_untimed(self, ev: TranscriptEvent, vad_time: float,
                       vad: VoiceActivity) -> PendingUtterance:
        sc = self.config
        stamp = float(ev.stamp)
        cands = [s for s in self.speech if not s.claimed and not s.emitted
                 and s.end <= stamp + 0.5 and s.end >= stamp - sc.asr_wait_seconds - 0.5
                 and s.start > self._last_claimed_end - 0.05]
        if vad.open_start is not None and vad.open_start < stamp and not cands:
            # ASR finalised before the hang-over ended: cut the open speech at the result.
            cut = vad.cut_open(min(stamp, vad_time))
            chosen = [_Seg(cut.start, cut.end)]
        elif cands:
            chosen = [cands[-1]]
            earlier = [s for s in self.speech if not s.claimed and not s.emitted
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
        return PendingUtterance(start, end, ev.text.strip(), stamp, ev.speaker_hint,
                                float(ev.confidence), ev.locale)

    def ready(self, now: float, final: bool, audio_end: float, vad_time: float,
              audio_flowing: bool = False) -> list[PendingUtterance]:
        """The pending utterances to build now, by start time: those whose audio is buffered
        (up to ``audio_end``) and run through the VAD (up to ``vad_time``), those waited for
        long enough, or all when ``final``. Long enough is ``asr_wait_seconds`` after the
        span's end while the audio has stopped growing; while it still grows
        (``audio_flowing``: it arrives, but behind the clock) a timed result waits up to
        ``max_transcript_lead_seconds`` more for the audio it names. One built without all
        its audio is counted (``timed_audio_incomplete``)."""
        sc = self.config
        ready, keep = [], []
        for p in self.pending:
            covered = audio_end >= p.end - 1e-3 and vad_time >= p.end - 0.064
            late = now - p.end
            waited = late >= sc.asr_wait_seconds and (
                not audio_flowing or late >= sc.asr_wait_seconds + sc.max_transcript_lead_seconds)
            if final or covered or waited:
                if p.timed and not covered:
                    self.counters["timed_audio_incomplete"] += 1
                ready.append(p)
            else:
                keep.append(p)
        self.pending = keep
        return sorted(ready, key=lambda p: p.start)

    def claim(self, start: float, end: float) -> None:
        """Speech [start, end] is being recognized (the embedded ASR): its result comes as
        a timed final later, so the speech it covers is neither emitted nor dropped
        meanwhile (see :meth:`decide`)."""
        self._timed_spans.append((float(start), float(end)))

    def built(self, p: PendingUtterance) -> None:
        """``p`` became an utterance: a timed one goes on claiming the speech it overlaps."""
        if p.timed:
            self.counters["utterances_timed"] += 1
            self._timed_spans.append((p.start, p.end))

    def new_epoch(self) -> None:
        """The audio clock jumped: forget the old epoch's speech and untimed results."""
        self.speech.clear()
        self.untimed.clear()
        self._timed_spans.clear()
        self._last_claimed_end = -math.inf

    def queue_sizes(self) -> dict:
        return {"pending_utterances": len(self.pending),
                "untimed_transcripts": len(self.untimed),
                "speech_segments": len(self.speech),
                "open_partials": len(self.open_partials)}
