"""What the utterance node's /diagnostics must see beyond its counters: inputs
that never arrive, audio lost before it reached the node, and an embedded recognizer that
falls behind. Pure bookkeeping (no rclpy): the node feeds it and, each diagnostics period,
asks for :class:`Problem` s, which raise the status's level with their reason.

- :class:`InputWatch`: one subscribed input. Nothing can arrive when every publisher on the
  topic sends another type (ros-drivers ``audio_capture`` publishes ``AudioData`` on
  ``audio`` and ``AudioDataStamped`` on ``audio_stamped``: the default ``audio_msg: stamped``
  on ``audio`` matched nothing, silently) or only offers best-effort to a reliable
  subscription: ERROR, naming the topic, both types and the parameter that fixes it. A
  stream (microphone, camera) that sent nothing for ``input_timeout`` seconds while the
  node is active: WARN.
- :class:`AudioCoverage`: audio received against the time it spans. Consecutive chunks'
  start times (their stamps; for unstamped audio the receipt) advance by the audio between
  them; advance that no audio fills was lost on the way: a subscription whose keep-last
  history overflowed (2,000 messages a second of 8 samples: 18 % arrived, and nothing
  counted it: DDS reports no loss for a keep-last overflow), a dropped packet, the node's
  full input queue. A pause longer than ``pause_s`` is a stream that stopped, not loss.
- Stamps far from the node's clock (``max_stamp_offset``): a bag replayed without
  ``/clock`` (its stamps are years behind the wall clock: estimates came out stamped in
  1970, silently) or a driver stamping with a clock of its own: WARN, with both times.
- :class:`AsrLag`: how far the embedded recognizer is behind the audio clock: while
  segments wait, the time from the end of the newest speech it transcribed (or from when
  the waiting began) to the newest audio.

:func:`input_problems` gathers them for the node's diagnostics period.
"""
from __future__ import annotations

import datetime
import math
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

#: diagnostic_msgs/DiagnosticStatus levels.
WARN, ERROR = 1, 2


@dataclass(frozen=True)
class Problem:
    level: int  # WARN or ERROR
    message: str


@dataclass
class InputWatch:
    """One subscribed input: what it expects and when it last received."""

    kind: str  # the node's input kind (erc_ros.ros.ingest.KINDS)
    topic: str  # resolved topic name
    msg_type: str  # e.g. audio_common_msgs/msg/AudioDataStamped
    streaming: bool  # a sensor that should never be silent while active
    reliable: bool  # the subscription's reliability
    reliability_param: str = ""  # the parameter that sets it
    hint: str = ""  # how to read another type
    last: Optional[float] = None  # node-clock time of the newest message
    count: int = 0
    active_since: Optional[float] = None
    stamp: Optional[float] = None  # the newest non-zero header stamp ...
    offset: Optional[float] = None  # ... and the node's clock minus it, at receipt

    def arrived(self, now: float, stamp: Optional[float] = None) -> None:
        self.last = now
        self.count += 1
        if stamp:  # (a zero stamp means "unstamped": stamped at receipt)
            self.stamp, self.offset = stamp, now - stamp

    def check(self, publishers: Sequence[tuple[str, bool]], now: float,
              timeout: float, max_offset: float = 0.0,
              sim_time: bool = False) -> Optional[Problem]:
        """The problem of this input given the topic's ``publishers`` ((type, reliable) of
        each), at node-clock ``now``; ``timeout`` <= 0: silence is never a problem;
        ``max_offset`` > 0: stamps further than that from the node's clock are one."""
        types = sorted({t for t, _ in publishers})
        same = [rel for t, rel in publishers if t == self.msg_type]
        if publishers and not same:
            return Problem(ERROR, f"nothing can arrive on {self.topic}: its publishers send "
                                  f"{', '.join(types)}, this node reads {self.msg_type}"
                                  + (f" ({self.hint})" if self.hint else ""))
        if same and self.reliable and not any(same):
            return Problem(ERROR, f"nothing can arrive on {self.topic}: its publishers are "
                                  f"best-effort, this node's subscription is reliable (set "
                                  f"{self.reliability_param}:=best_effort)")
        if max_offset > 0 and self.offset is not None and abs(self.offset) > max_offset:
            why = ("/clock and the stamps disagree" if sim_time else
                   "a bag played without its clock? (play it with /clock and "
                   "use_sim_time:=true) or a driver stamping with a clock of its own")
            return Problem(WARN, f"stamps on {self.topic} are {_span(abs(self.offset))} "
                                 f"{'behind' if self.offset > 0 else 'ahead of'} the node's "
                                 f"clock (stamp {_date(self.stamp)}, clock "
                                 f"{_date(self.stamp + self.offset)}): {why}; outputs carry "
                                 "the input's time")
        if not self.streaming or timeout <= 0 or now <= 0:
            return None  # (simulated time before the first /clock: now is 0)
        if self.active_since is None or now < self.active_since:
            self.active_since = now  # first look, or the clock went back (a new replay)
        last = self.last if self.last is not None and self.last <= now else None
        quiet = now - (last if last is not None else self.active_since)
        if quiet < timeout:
            return None
        who = ("no publisher" if not publishers else
               f"{len(publishers)} publisher{'s' if len(publishers) > 1 else ''} of "
               f"{', '.join(types)}")
        what = "nothing" if self.count == 0 else "nothing more"
        return Problem(WARN, f"{what} on {self.topic} for {quiet:.0f} s ({who}; "
                             f"expects {self.msg_type})")


def _span(seconds: float) -> str:
    for unit, size in (("days", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.1f} s"


def _date(t: float) -> str:
    try:
        return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return f"{t:.3f} s"


class AudioCoverage:
    """Audio received against the time it spans, over the last ``window_s`` seconds of
    receipts (thread-safe: the worker adds, the diagnostics timer reads)."""

    def __init__(self, window_s: float = 5.0, pause_s: float = 1.0, bin_s: float = 0.5,
                 min_span_s: float = 1.0):
        self.window_s, self.pause_s, self.bin_s = window_s, pause_s, bin_s
        self.min_span_s = min_span_s
        self.advance_s = 0.0  # in all: time the chunks' start times advanced over
        self.received_s = 0.0  # ... and the audio that filled it
        self._bins: deque = deque()  # [receipt bin, advance, received]
        self._prev: Optional[tuple[float, float]] = None  # (start, duration) of the last chunk
        self._lock = threading.Lock()

    def add(self, start: float, duration: float, receipt: float) -> None:
        """One chunk: its start time on its own timeline, its duration, its receipt."""
        with self._lock:
            prev, self._prev = self._prev, (start, duration)
            if prev is None:
                return
            advance = start - prev[0]
            if not 0.0 <= advance <= self.pause_s + prev[1]:
                return  # a pause, or the clock went back: a new run
            self.advance_s += advance
            self.received_s += prev[1]
            b = math.floor(receipt / self.bin_s)
            if self._bins and self._bins[-1][0] == b:
                self._bins[-1][1] += advance
                self._bins[-1][2] += prev[1]
            else:
                self._bins.append([b, advance, prev[1]])
                while len(self._bins) > 1 and self._bins[0][0] < b - self.window_s / self.bin_s:
                    self._bins.popleft()

    @property
    def lost_s(self) -> float:
        """Seconds of audio lost in all (advance no audio filled)."""
        with self._lock:
            return max(0.0, self.advance_s - self.received_s)

    def lost_fraction(self, now: float) -> float:
        """The share of the last ``window_s`` seconds (of receipts before ``now``) that no
        audio filled; 0 over less than ``min_span_s`` of audio."""
        lo = math.floor(now / self.bin_s) - self.window_s / self.bin_s
        with self._lock:
            adv = sum(a for b, a, _ in self._bins if b >= lo)
            rec = sum(r for b, _, r in self._bins if b >= lo)
        if adv < self.min_span_s:
            return 0.0
        return max(0.0, 1.0 - rec / adv)

    def problem(self, now: float, max_loss: float, topic: str,
                dropped: int = 0) -> Optional[Problem]:
        frac = self.lost_fraction(now)
        if frac <= max_loss:
            return None
        why = ("the node's input queue was full (dropped.input)" if dropped else
               "a lossy link, or a subscription history that overflows when many small "
               "chunks come faster than the node takes them: publish fewer, larger chunks "
               "(20-100 ms)")
        return Problem(WARN, f"audio lost before it reached the node: {frac:.0%} of the last "
                             f"{self.window_s:g} s on {topic} had no audio ({self.lost_s:.1f} s "
                             f"in all); {why}")


class AsrLag:
    """How far the embedded recognizer is behind the audio clock (worker: :meth:`done`;
    diagnostics timer: :meth:`observe`)."""

    def __init__(self):
        self.done_end: Optional[float] = None  # end of the newest speech transcribed
        self.since: Optional[float] = None  # audio clock when segments were first seen waiting
        self.lag = 0.0

    def done(self, end: float) -> None:
        self.done_end = end if self.done_end is None else max(self.done_end, end)

    def observe(self, pending: int, audio_end: Optional[float]) -> float:
        if pending <= 0 or audio_end is None:
            self.since, self.lag = None, 0.0
            return 0.0
        if self.since is None or audio_end < self.since:
            self.since = audio_end
        ref = self.since if self.done_end is None else max(self.since, self.done_end)
        self.lag = max(0.0, audio_end - ref)
        return self.lag

    @staticmethod
    def problem(lag: float, pending: int, capacity: int, max_lag: float) -> Optional[Problem]:
        if capacity and pending >= capacity:
            return Problem(ERROR, f"speech recognizer cannot keep up: its queue is full "
                                  f"({pending}/{capacity} segments; new speech gets no text), "
                                  f"{lag:.1f} s behind the audio")
        if max_lag <= 0 or lag <= max_lag:
            return None
        return Problem(ERROR if lag > 4 * max_lag else WARN,
                       f"speech recognizer {lag:.1f} s behind the audio ({pending} segment"
                       f"{'s' if pending != 1 else ''} waiting, queue {pending}/{capacity}; "
                       f"max_asr_lag {max_lag:g} s)")


class SequenceGaps:
    """Messages lost on the way to one subscription, from the publishers' sequence numbers
    (rmw's ``publication_sequence_number`` in each message's info): each publisher numbers
    what it publishes from 1, so a jump from n to n + k + 1 is k messages that never reached
    the node: a subscription history that overflowed (a keep-last history overwrites what
    the node has not taken, and DDS reports no loss for it), a dropped packet. A publisher's
    first message numbered n + 1 means n lost too, unless the publisher was already there
    when the subscription was made (:meth:`existing`: what it sent before is not this
    node's). A number at or below the last one seen is a publisher that started again.
    Thread-safe (the callbacks add, the diagnostics timer reads); at most
    ``max_publishers`` publishers are followed (the least recent one is forgotten)."""

    def __init__(self, window_s: float = 30.0, max_publishers: int = 64):
        self.window_s = window_s
        self.max_publishers = max_publishers
        self.lost = 0  # in all
        self.received = 0  # numbered messages seen
        self._last: dict[bytes, int] = {}  # publisher gid -> last sequence number
        self._before: set[bytes] = set()  # publishers there before the subscription
        self._recent: deque = deque()  # (receipt, lost) of gaps within window_s
        self._lock = threading.Lock()

    def existing(self, gids) -> None:
        """The gids (16 bytes or a list of ints) of the topic's publishers when the
        subscription was made."""
        with self._lock:
            for g in gids:
                self._before.add(bytes(g)[:16])
            while len(self._before) > 4 * self.max_publishers:
                self._before.pop()

    def add(self, info, now: float) -> int:
        """One message's info (rclpy's MessageInfo dict, or None) at node-clock ``now``;
        returns the messages found missing before it."""
        seq = (info or {}).get("publication_sequence_number")
        gid = (info or {}).get("publisher_gid")
        if seq is None or gid is None:
            return 0  # an rmw without sequence numbers: nothing to judge by
        key = bytes(gid.get("data", b"") if isinstance(gid, dict) else gid)[:16]
        seq = int(seq)
        with self._lock:
            self.received += 1
            last = self._last.pop(key, None)
            self._last[key] = seq
            while len(self._last) > self.max_publishers:
                self._last.pop(next(iter(self._last)))
            if last is None:
                gap = 0 if key in self._before else seq - 1
            else:
                gap = seq - last - 1 if seq > last else 0
            if gap > 0:
                self.lost += gap
                self._recent.append((now, gap))
            while self._recent and not now - self.window_s <= self._recent[0][0] <= now:
                self._recent.popleft()
            return gap

    def lost_recently(self, now: float) -> int:
        with self._lock:
            return sum(n for t, n in self._recent if now - self.window_s <= t <= now)

    def problem(self, now: float, topic: str, depth: int) -> Optional[Problem]:
        n = self.lost_recently(now)
        if n <= 0:
            return None
        return Problem(WARN, f"{n} message{'s' if n != 1 else ''} on {topic} lost before they "
                             f"reached the node in the last {self.window_s:g} s ({self.lost} "
                             f"in all; {self.received} arrived): published faster than the "
                             f"node takes them, beyond its subscription's history of "
                             f"{depth}, or a lossy link")


#: Inputs that stream while they work (silence for input_timeout is a problem).
STREAMS = {"image", "compressed", "audio", "audio_stamped"}
#: Inputs whose every message is an utterance's words: one lost on the way is a problem
#: (counted from the publishers' sequence numbers, :class:`SequenceGaps`).
TEXT_KINDS = {"transcript", "live_speech", "string"}
#: How to read an input's other types, said when its topic carries only those.
TYPE_HINTS = {
    "audio_stamped": "audio_msg:=raw reads AudioData; ros-drivers audio_capture publishes "
                     "AudioDataStamped on audio_stamped: audio_topic:=audio_stamped",
    "audio": "audio_msg:=stamped reads AudioDataStamped",
    "image": "image_transport:=compressed reads CompressedImage on <image_topic>/compressed",
    "compressed": "image_transport:=raw reads Image",
    "transcript": "asr_type selects the type: transcript, live_speech or string",
    "live_speech": "asr_type selects the type: transcript, live_speech or string",
    "string": "asr_type selects the type: transcript, live_speech or string",
}


def input_problems(watches: dict[str, InputWatch], gaps: dict[str, SequenceGaps], ingest: Any,
                   asr_lag: AsrLag, publishers_of: Callable[[str], list[tuple[str, bool]]],
                   now: float, params: dict[str, Any], sim_time: bool, health: Any,
                   asr_depth: int, extra: dict[str, Any]) -> list[Problem]:
    """What the utterance node fails at now: inputs that cannot or do not arrive, audio lost
    on the way, the embedded recognizer behind. Their figures go into ``extra``
    (``inputs.<kind>``, ``audio.lost_*``, ``asr.lag_s``; ``extra["core"]``: the core's
    stats, read). ``watches``, ``gaps``: by input kind; ``ingest``: the node's
    :class:`~erc_ros.ros.ingest.Ingest`; ``publishers_of(topic)``: (type, reliable) of each
    publisher (raises while the node is being destroyed); ``params``: the node's
    ``input_timeout``, ``max_stamp_offset``, ``max_audio_loss`` and ``max_asr_lag``;
    ``health``: its NodeHealth (input dropped); ``asr_depth``: the ASR subscriptions'
    history."""
    out = []
    for kind, watch in list(watches.items()):
        try:
            pubs = publishers_of(watch.topic)
        except Exception:  # the node is being destroyed
            return out
        problem = watch.check(pubs, now, params["input_timeout"], params["max_stamp_offset"],
                              sim_time)
        g = gaps.get(kind)
        extra[f"inputs.{kind}"] = {"topic": watch.topic, "received": watch.count,
                                   "publishers": len(pubs),
                                   "lost": g.lost if g is not None else 0}
        if problem is None and g is not None and kind in TEXT_KINDS:
            problem = g.problem(now, watch.topic, asr_depth)
        if problem is not None:
            out.append(problem)
    if "live_speech" in gaps and "live_speech" not in watches:  # hri_voices
        g = gaps["live_speech"]
        extra["inputs.voices_lost"] = g.lost
        problem = g.problem(now, "/humans/voices/*/speech", asr_depth)
        if problem is not None:
            out.append(problem)
    audio = watches.get("audio_stamped") or watches.get("audio")
    if audio is not None and ingest.audio_format_error is not None:
        out.append(Problem(ERROR, f"audio on {audio.topic} refused: "
                                  f"{ingest.audio_format_error}"))
    elif audio is not None:
        cov = ingest.audio_coverage
        extra["audio.lost_s"] = cov.lost_s
        extra["audio.lost_fraction"] = cov.lost_fraction(now)
        problem = cov.problem(now, params["max_audio_loss"], audio.topic,
                              health.counts.get("dropped.input", 0))
        if problem is not None:
            out.append(problem)
    asr = extra.get("core", {}).get("asr", {})
    if asr.get("enabled") and "pending" in asr:
        lag = asr_lag.observe(asr["pending"], ingest.audio_end)
        extra["asr.lag_s"] = lag
        problem = AsrLag.problem(lag, asr["pending"], asr["queue_capacity"],
                                 params["max_asr_lag"])
        if problem is not None:
            out.append(problem)
    return out
