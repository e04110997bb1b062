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
    assert st.message == "3 internal errors (ingest: 2, predict: 1)"
    assert {v.key: v.value for v in st.values}["errors.ingest"] == "2"
    h.refuse("image_too_large", "png image 20000x20000")
    st = to_status("n", "erc_ros", h)
    assert st.level == DiagnosticStatus.WARN
    assert st.message.startswith("3 internal errors (ingest: 2, predict: 1); 1 refused input")
    h.error = "cannot load the model from 'x'"  # a hard error stays ERROR, its own message
    st = to_status("n", "erc_ros", h)
    assert st.level == DiagnosticStatus.ERROR and st.message == h.error
