"""Offline bag replay through the same Ingest -> PerceptionCore -> EmotionPipeline path the
nodes run (used by ``eval-bag``, ``make demo`` in offline mode and the tests).

Bag records are read with ``rosbags`` (MCAP and sqlite3 rosbag2) and deserialized by rclpy
into the real message classes, then converted by :mod:`erc_ros.ros.convert` exactly as a
node's worker does. Time is the bag's record time (the ``/clock`` a live replay would
publish), so the run is deterministic and goes as fast as the machine allows.
"""
from __future__ import annotations

import importlib
import json
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from rclpy.serialization import deserialize_message
from rosbags.highlevel import AnyReader

from erc_ros.ros.ingest import KIND_OF_TYPE, Ingest

GROUND_TRUTH_TOPIC = "/erc_ros/ground_truth"  # std_msgs/String JSON per turn (generated bags)


def message_class(typename: str):
    """'pkg/msg/Name' -> the rclpy message class."""
    pkg, _, name = typename.split("/")
    return getattr(importlib.import_module(f"{pkg}.msg"), name)


def read_bag(path: str | Path, topics: Optional[set[str]] = None
             ) -> Iterator[tuple[str, str, int, bytes]]:
    """(topic, type name, record time ns, raw CDR) in time order."""

    with AnyReader([Path(path)]) as reader:
        conns = [c for c in reader.connections if topics is None or c.topic in topics]
        for conn, t_ns, raw in reader.messages(connections=conns):
            yield conn.topic, conn.msgtype, t_ns, bytes(raw)


def bag_span(path: str | Path) -> tuple[float, float]:

    with AnyReader([Path(path)]) as reader:
        return reader.start_time / 1e9, reader.end_time / 1e9


def _prefetch(path, ingest: Ingest, depth: int = 256):
    """Read, deserialize and decode images on a second thread, in bag order (cv2 and the
    rclpy deserializer release the GIL): the same conversions, overlapped with the core."""

    from std_msgs.msg import String

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def reader():
        classes: dict[str, Any] = {}
        try:
            for topic, typename, t_ns, raw in read_bag(path):
                if stop.is_set():
                    return
                if topic == GROUND_TRUTH_TOPIC:
                    q.put((topic, typename, t_ns, None, deserialize_message(raw, String), None))
                    continue
                kind = KIND_OF_TYPE.get(typename)
                if kind is None:
                    continue
                cls = classes.get(typename) or classes.setdefault(typename,
                                                                  message_class(typename))
                try:
                    msg = deserialize_message(raw, cls)
                except Exception as err:  # a corrupt record: counted like refused input
                    ingest.health.refuse("deserialize", f"{topic}: {err}")
                    continue
                q.put((topic, typename, t_ns, kind, msg, ingest.convert_ahead(kind, msg)))
        except BaseException as err:  # re-raised in the consumer
            q.put(err)
        finally:
            q.put(done)

    th = threading.Thread(target=reader, name="erc_bag_reader", daemon=True)
    th.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while th.is_alive():  # unblock a reader waiting on a full queue
            try:
                q.get_nowait()
            except Exception:
                th.join(0.05)


#: Ingest kinds of ASR messages (the bag's own recognizer).
ASR_KINDS = ("transcript", "live_speech", "string")


@dataclass
class ReplayResult:
    estimates: list = field(default_factory=list)  # Estimate
    utterances: list = field(default_factory=list)  # Utterance (audio dropped to save memory)
    ground_truth: list = field(default_factory=list)  # dicts from GROUND_TRUTH_TOPIC
    duration_s: float = 0.0  # bag span
    wall_s: float = 0.0
    refused: dict = field(default_factory=dict)
    messages: int = 0
    #: The perception core's counters at the end (``PerceptionCore.stats()``): why an
    #: utterance came out as it did (e.g. ``timed_audio_incomplete``, dropped input).
    stats: dict = field(default_factory=dict)
    #: Each poll that released utterances or worked 5 ms or more (e.g. the recognizer,
    #: inline): (bag time ``now``, the poll's compute seconds, how many utterances it
    #: released, in order); with each estimate's ``latency_ms`` this places the replay's
    #: work on a real-time timeline (``bench-spoken``'s latency).
    polls: list = field(default_factory=list)


def replay_bag(path: str | Path, core: Any, pipeline: Any,
               on_estimate: Optional[Callable[[Any, Any], None]] = None,
               progress: Optional[Callable[[float], None]] = None,
               poll_period: float = 0.05, keep_media: bool = False) -> ReplayResult:
    """Replay one bag through ``core`` and ``pipeline``; each utterance is predicted as soon
    as the core releases it, in order, as the node would. ``on_estimate(utt, est)`` is called
    for each. ``progress(bag_seconds_done)`` is called now and then. With the core's own
    recognizer on (``asr.enabled``) the bag's ASR messages are not read, as the node with
    ``asr_type: embedded`` subscribes to none. ``keep_media``: the utterances kept in the
    result keep their audio and face crops (else dropped to save memory)."""

    ingest = Ingest(core)
    res = ReplayResult()
    t0 = time.perf_counter()
    start, end = bag_span(path)
    res.duration_s = end - start
    last_poll = float("-inf")
    last_progress = start

    def handle(utts):
        for utt in utts:
            est = pipeline.predict(utt)
            res.estimates.append(est)
            if not keep_media:
                utt.audio = utt.audio[:0]
                utt.faces = []
            res.utterances.append(utt)
            if on_estimate:
                on_estimate(utt, est)

    def poll(now: float):
        t = time.perf_counter()
        utts = core.poll(now)
        dt = time.perf_counter() - t
        if utts or dt >= 0.005:
            res.polls.append((now, dt, len(utts)))
        return utts

    skip = ASR_KINDS if core.config.asr.enabled else ()
    for topic, typename, t_ns, kind, msg, ahead in _prefetch(path, ingest):
        now = t_ns / 1e9
        if topic == GROUND_TRUTH_TOPIC:
            res.ground_truth.append(json.loads(msg.data))
            continue
        if kind in skip:
            continue
        res.messages += 1
        ingest.feed(kind, msg, now, topic, converted=ahead)
        if now - last_poll >= poll_period or kind in ASR_KINDS:
            handle(poll(now))
            last_poll = now
        if progress and now - last_progress >= 1.0:
            progress(now - start)
            last_progress = now
    handle(poll(end + 10.0))
    t = time.perf_counter()
    utts = core.flush()
    if utts:
        res.polls.append((end + 10.0, time.perf_counter() - t, len(utts)))
    handle(utts)
    if progress:
        progress(res.duration_s)
    res.wall_s = time.perf_counter() - t0
    res.refused = dict(ingest.health.refused)
    res.stats = core.stats()
    return res
