"""/diagnostics for the erc_ros nodes: counters, queue depths, latency, refused input.

:class:`NodeHealth` is thread-safe bookkeeping (callbacks count refused input, the worker
records latencies) and :func:`to_status` turns it, plus a stats dict from the core or the
pipeline, into a ``diagnostic_msgs/DiagnosticStatus`` (OK / WARN / ERROR).
"""
from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import Any, Mapping, Sequence

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

#: Default span, in seconds, of "now" on /diagnostics: refusals, drops and internal errors
#: older than this no longer set the level (the node parameter ``diagnostics_window``).
WINDOW_S = 30.0


def _warns(key: str) -> bool:
    """Counters that make a node's status WARN while recent: work dropped, internal errors."""
    return key.startswith("dropped") or key.startswith("errors.")


class NodeHealth:
    """Counters and recent latencies of one node (safe to call from any thread).

    Every counter is kept twice: in all, since the node started (``counts``, ``refused``),
    and over the last ``window_s`` seconds (:meth:`recent`, one-second bins), so
    /diagnostics says how things stand now with the totals beside them."""

    def __init__(self, latency_window: int = 500, window_s: float = WINDOW_S,
                 clock=time.monotonic):
        self._lock = threading.Lock()
        self.counts: Counter = Counter()
        self.refused: Counter = Counter()  # reason -> count
        self.last_refusal = ""
        self.latencies: dict[str, deque] = {}
        self._window = latency_window
        self.window_s = float(window_s)
        self._clock = clock
        self._bins: deque = deque()  # [second, Counter of warn keys and refused.<reason>]
        self.error = ""

    def _recent_add(self, key: str, n: int) -> None:
        sec = int(self._clock())
        if not self._bins or self._bins[-1][0] != sec:
            self._bins.append([sec, Counter()])
            self._prune(sec)
        self._bins[-1][1][key] += n

    def _prune(self, sec: int) -> None:
        while self._bins and self._bins[0][0] <= sec - self.window_s:
            self._bins.popleft()

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n
            if _warns(key):
                self._recent_add(key, n)

    def refuse(self, reason: str, message: str) -> None:
        with self._lock:
            self.refused[reason] += 1
            self.last_refusal = f"{reason}: {message}"[:300]
            self._recent_add(f"refused.{reason}", 1)

    def recent(self) -> Counter:
        """Drops, internal errors and refusals (``refused.<reason>``) of the last
        ``window_s`` seconds."""
        with self._lock:
            self._prune(int(self._clock()))
            out: Counter = Counter()
            for _, c in self._bins:
                out.update(c)
            return out

    def latency(self, key: str, ms: float) -> None:
        with self._lock:
            self.latencies.setdefault(key, deque(maxlen=self._window)).append(float(ms))

    def latency_stats(self, key: str) -> dict[str, float]:
        with self._lock:
            vals = np.asarray(self.latencies.get(key, ()), float)
        vals = vals[np.isfinite(vals)]
        if not vals.size:
            return {}
        return {"p50_ms": float(np.percentile(vals, 50)),
                "p95_ms": float(np.percentile(vals, 95)), "max_ms": float(vals.max())}

    def snapshot(self) -> dict[str, Any]:
        recent = self.recent()
        with self._lock:
            return {"counts": dict(self.counts), "refused": dict(self.refused),
                    "last_refusal": self.last_refusal, "error": self.error,
                    "recent": dict(recent), "window_s": self.window_s}


def _flatten(prefix: str, value: Any, out: list[KeyValue]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, float):
        out.append(KeyValue(key=prefix, value=f"{value:.3f}"))
    elif isinstance(value, (list, tuple)) and len(value) > 8:
        out.append(KeyValue(key=prefix, value=f"[{len(value)} items]"))
    else:
        out.append(KeyValue(key=prefix, value=str(value)))


def _level_int(level) -> int:
    """A DiagnosticStatus level (its constants are bytes) as an int."""
    return level[0] if isinstance(level, bytes) else int(level)


def _causes(counts: Mapping[str, int], last_refusal: str) -> list[str]:
    """The WARN causes in ``counts`` (drops, internal errors, ``refused.<reason>``), each
    with its count, internal errors first."""
    errors = {k[len("errors."):]: v for k, v in sorted(counts.items())
              if k.startswith("errors.") and v}
    drops = sum(v for k, v in counts.items() if k.startswith("dropped"))
    refused = sum(v for k, v in counts.items() if k.startswith("refused."))
    parts = []
    if errors:
        n = sum(errors.values())
        parts.append(f"{n} internal error{'s' if n != 1 else ''} ("
                     + ", ".join(f"{k}: {v}" for k, v in errors.items()) + ")")
    if drops:
        parts.append(f"{drops} dropped")
    if refused:
        parts.append(f"{refused} refused input" + (f" ({last_refusal})" if last_refusal else ""))
    return parts


def to_status(name: str, hardware_id: str, health: NodeHealth,
              extra: Mapping[str, Any] | None = None,
              queue_depths: Mapping[str, tuple[int, int]] | None = None,
              problems: Sequence[Any] = ()) -> DiagnosticStatus:
    """One DiagnosticStatus that says how the node stands now: ERROR when the node has an
    error (e.g. no model); WARN when, in the last ``health.window_s`` seconds, it counted
    internal errors (``errors.<where>`` counters: an exception that was not a refusal),
    dropped work or refused input, or when a queue is over 80% full; else OK. The message
    names each recent cause with its count, internal errors first, then the totals since
    start; the values carry both (``recent.<counter>`` and the totals under their names).

    ``problems`` (:class:`erc_ros.ros.input_health.Problem`: ``level``, ``message``) are the
    node's current ones (an input that never arrives, audio lost on the way, a recognizer
    behind): they raise the level to theirs and their reasons lead the message."""
    snap = health.snapshot()
    values: list[KeyValue] = []
    _flatten("", snap["counts"], values)
    for reason, n in sorted(snap["refused"].items()):
        values.append(KeyValue(key=f"refused.{reason}", value=str(n)))
    if snap["last_refusal"]:
        values.append(KeyValue(key="last_refusal", value=snap["last_refusal"]))
    values.append(KeyValue(key="window_s", value=f"{snap['window_s']:g}"))
    for key, n in sorted(snap["recent"].items()):
        values.append(KeyValue(key=f"recent.{key}", value=str(n)))
    for key in sorted(health.latencies):
        _flatten(f"latency.{key}", health.latency_stats(key), values)
    full = []
    for q, (depth, cap) in (queue_depths or {}).items():
        values.append(KeyValue(key=f"queue.{q}", value=f"{depth}/{cap}"))
        if cap and depth >= 0.8 * cap:
            full.append(q)
    if extra:
        _flatten("", dict(extra), values)
    totals = {**{k: v for k, v in snap["counts"].items() if _warns(k)},
              **{f"refused.{k}": v for k, v in snap["refused"].items()}}
    recent = _causes(snap["recent"], snap["last_refusal"])
    since = _causes(totals, "")
    since_start = f"since start: {', '.join(since)}" if since else ""
    if snap["error"]:
        level, message = DiagnosticStatus.ERROR, snap["error"]
    elif recent or full:
        level = DiagnosticStatus.WARN
        parts = [f"last {snap['window_s']:g} s: " + "; ".join(recent)] if recent else []
        if full:
            parts.append("queue nearly full: " + ", ".join(full))
        if since_start:
            parts.append(since_start)
        message = "; ".join(parts)
    else:
        level = DiagnosticStatus.OK
        message = f"ok ({since_start})" if since_start else "ok"
    if problems:
        reasons = [p.message for p in problems]
        if level != DiagnosticStatus.OK:
            reasons.append(message)
        level = bytes([max(_level_int(level), *(p.level for p in problems))])
        message = "; ".join(reasons)
    return DiagnosticStatus(level=level, name=name, message=message[:500],
                            hardware_id=hardware_id, values=values)


def diagnostic_array(stamp, statuses: list[DiagnosticStatus]) -> DiagnosticArray:
    arr = DiagnosticArray()
    arr.header.stamp = stamp
    arr.status = statuses
    return arr


def now_ms() -> float:
    return time.perf_counter() * 1000.0
