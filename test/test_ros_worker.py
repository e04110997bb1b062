"""The bounded worker (drops counted, errors survive) and the /diagnostics status levels."""
from __future__ import annotations

import threading
import time

from diagnostic_msgs.msg import DiagnosticStatus

from erc_ros.ros.diagnostics import NodeHealth, to_status
from erc_ros.ros.worker import Worker


def test_worker_bounds_its_queue_counts_drops_and_survives_errors():
    health = NodeHealth()
    gate = threading.Event()
    seen: list = []

    def handle(items):
        gate.wait(5)
        for x in items:
            if x == "boom":
                raise RuntimeError("bad item")
            seen.append(x)

    errors: list = []
    w = Worker("input", 3, handle, health, period=0.01, on_error=errors.append)
    w.start()
    try:
        assert w.put(0)
        time.sleep(0.1)  # the worker holds item 0 and waits on the gate
        assert [w.put(i) for i in (1, 2, 3, 4, 5)] == [True, True, True, False, False]
        assert health.snapshot()["counts"]["dropped.input"] == 2
        assert w.depth() == 3
        gate.set()
        deadline = time.monotonic() + 5
        while not w.idle_now() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen == [0, 1, 2, 3]
        w.put("boom")
        deadline = time.monotonic() + 5
        while not errors and time.monotonic() < deadline:
            time.sleep(0.01)
        w.put(9)
        deadline = time.monotonic() + 5
        while 9 not in seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert 9 in seen and len(errors) == 1  # the worker lives on after an error
        assert health.snapshot()["counts"]["errors.input"] == 1
    finally:
        w.stop()


def test_status_levels_and_values():
    h = NodeHealth()
    h.latency("processing", 10.0)
    h.latency("processing", 30.0)
    st = to_status("n", "erc_ros", h, {"model": "m", "core": {"a": 1.5}}, {"q": (1, 10)})
    assert st.level == DiagnosticStatus.OK and st.message == "ok"
    kv = {v.key: v.value for v in st.values}
    assert kv["model"] == "m" and kv["core.a"] == "1.500" and kv["queue.q"] == "1/10"
    assert float(kv["latency.processing.p50_ms"]) == 20.0
    h.refuse("audio_coding", "mp3 is not raw PCM")
    st = to_status("n", "erc_ros", h, queue_depths={"q": (9, 10)})
    assert st.level == DiagnosticStatus.WARN
    assert "audio_coding" in st.message and "queue nearly full: q" in st.message
    assert {v.key: v.value for v in st.values}["refused.audio_coding"] == "1"
    h.error = "cannot load the model from 'x'"
    assert to_status("n", "erc_ros", h).level == DiagnosticStatus.ERROR


def test_internal_errors_raise_the_level_to_warn_with_their_counts():
    h = NodeHealth()
    h.count("in.image", 5)
    h.count("errors.predict", 0)  # a zero counter is not an error
    assert to_status("n", "erc_ros", h).level == DiagnosticStatus.OK
    h.count("errors.ingest", 2)
    h.count("errors.predict")
    st = to_status("n", "erc_ros", h)
    assert st.level == DiagnosticStatus.WARN
    assert st.message == ("last 30 s: 3 internal errors (ingest: 2, predict: 1); since start: "
                          "3 internal errors (ingest: 2, predict: 1)")
    assert {v.key: v.value for v in st.values}["errors.ingest"] == "2"
    h.refuse("image_too_large", "png image 20000x20000")
    st = to_status("n", "erc_ros", h)
    assert st.level == DiagnosticStatus.WARN
    assert st.message.startswith("last 30 s: 3 internal errors (ingest: 2, predict: 1); 1 "
                                 "refused input (image_too_large: png image 20000x20000)")
    h.error = "cannot load the model from 'x'"  # a hard error stays ERROR, its own message
    st = to_status("n", "erc_ros", h)
    assert st.level == DiagnosticStatus.ERROR and st.message == h.error


def test_the_level_says_how_things_stand_now_with_the_totals_beside():
    """A refusal or a drop raises the level while it is within the window, and no longer
    after it (one drop kept a node at WARN for life, issue 55); the totals stay."""
    clock = [1000.0]
    h = NodeHealth(window_s=30.0, clock=lambda: clock[0])
    h.count("dropped.input", 112)
    h.refuse("transcript_field", "transcript speaker_hint of 1000000 characters")
    st = to_status("n", "erc_ros", h)
    kv = {v.key: v.value for v in st.values}
    assert st.level == DiagnosticStatus.WARN
    assert st.message.startswith("last 30 s: 112 dropped; 1 refused input (transcript_field")
    assert kv["recent.dropped.input"] == "112" and kv["window_s"] == "30"
    clock[0] += 20.0
    h.count("dropped.input", 3)
    assert to_status("n", "erc_ros", h).message.startswith("last 30 s: 115 dropped")
    clock[0] += 15.0  # the first ones are older than the window, the last three are not
    st = to_status("n", "erc_ros", h)
    assert st.level == DiagnosticStatus.WARN and st.message == (
        "last 30 s: 3 dropped; since start: 115 dropped, 1 refused input")
    clock[0] += 130.0
    st = to_status("n", "erc_ros", h)
    kv = {v.key: v.value for v in st.values}
    assert st.level == DiagnosticStatus.OK
    assert st.message == "ok (since start: 115 dropped, 1 refused input)"
    assert kv["dropped.input"] == "115" and kv["refused.transcript_field"] == "1"
    assert not any(k.startswith("recent.") for k in kv)


def test_worker_bounds_the_bytes_it_holds():
    """With max_bytes, what is queued or being handled is bounded in bytes (a split-mode
    emotion node took 192 MB utterances until its memory grew by GBs); one item over the
    bound alone still goes in when nothing else is held."""
    health = NodeHealth()
    gate = threading.Event()
    w = Worker("utterances", 100, lambda items: gate.wait(5), health, period=0.01,
               max_bytes=250, size_of=len)
    w.start()
    try:
        assert w.put(b"x" * 100)
        time.sleep(0.1)  # being handled: still held
        assert w.held_bytes == 100
        assert [w.put(b"x" * 100), w.put(b"x" * 100)] == [True, False]
        assert w.held_bytes == 200 and health.snapshot()["counts"]["dropped.utterances"] == 1
        gate.set()
        deadline = time.monotonic() + 5
        while not w.idle_now() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert w.held_bytes == 0
        gate.clear()
        assert w.put(b"x" * 1000)  # over the bound alone: nothing else held
        assert not w.put(b"x")
    finally:
        gate.set()
        w.stop()
