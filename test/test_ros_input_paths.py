"""The nodes' newest input paths probed as a robot's network would (issue 30), over real DDS:
the face node as its own process (``ros2 run``), the others in this one.

- face_expression_node follows a tracked face list that changes 50 times a second (every
  churning id replaced each time, crops at 10 Hz on every id) and stays alive and answering
  (it died within 7-50 s: a per-face entity destroyed while the executor built its wait
  set).
- a new voice's first utterance reaches a subscriber that follows /humans/voices/tracked as
  ROS4HRI's libraries do (subscribing to /humans/voices/<id>/speech when the id appears, with
  the system-default QoS libhri uses), in another DDS participant: the publisher announces
  the id and holds that voice's speech until the followers are matched (5 of 7 were lost).
- /diagnostics of the utterance node is no longer "ok" while it fails its job: audio lost
  before it reached the node (chunks missing from the stamps, or a 2,000 messages/s flood
  overflowing the subscription's history), an input whose topic carries another type
  (ros-drivers audio_capture's AudioData on ``audio``), a microphone or camera silent for
  ``input_timeout``, and the embedded recognizer behind the audio (tiny.en on a bag replayed
  at 4x), stamps far from the node's clock (a bag without /clock); the pure rules behind
  them.
- smaller: perception.asr.enabled reads True while the embedded recognizer runs; a face
  node that runs no torch says nothing of torch threads.
- face crops far too large (refused from their header) leave the face node's memory where
  it was: config/fastdds.xml makes DDS readers free what they received (they kept buffers
  as large as the largest sample ever received: +1.5 GB for 8 faces, for good).
"""
from __future__ import annotations

import threading
import time

import pytest
import rclpy
from builtin_interfaces.msg import Time
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

from _ros_support import close_rig, Collector, NodeProcess, wait_for
from erc_ros.ros import convert

pytestmark = pytest.mark.ros
RELIABLE = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50,
                      reliability=ReliabilityPolicy.RELIABLE)


class Driver:
    """A plain rclpy node of this process, spun in a thread."""

    def __init__(self, name: str):
        self.node = rclpy.create_node(name)
        self.ex = SingleThreadedExecutor()
        self.ex.add_node(self.node)
        self._thread = threading.Thread(target=self.ex.spin, daemon=True)
        self._thread.start()

    def collect(self, msg_type, topic: str, qos=RELIABLE) -> Collector:
        c = Collector()
        self.node.create_subscription(msg_type, topic, c, qos)
        return c

    def close(self) -> None:
        self.ex.shutdown(timeout_sec=2.0)
        self.node.destroy_node()


def _statuses(diags: Collector, prefix: str) -> list:
    return [st for arr in diags.snapshot() for st in arr.status if st.name.startswith(prefix)]


@pytest.mark.parametrize("seconds", [pytest.param(25, marks=pytest.mark.long),
                                     pytest.param(300, marks=pytest.mark.soak)])
def test_face_node_survives_faces_coming_and_going(ros, seconds):
    from diagnostic_msgs.msg import DiagnosticArray
    from hri_msgs.msg import Expression, IdsList
    from sensor_msgs.msg import Image

    from erc_ros.runtime.face_expert import sample_crops
    face = sample_crops(lfw=0)[0]  # scikit-image's astronaut
    proc = NodeProcess("erc_ros.ros.face_expression_node",
                       {"rate": 5.0, "diagnostics_period": 0.5})
    drv = Driver("face_churn_driver")
    try:
        tracked = drv.node.create_publisher(IdsList, "/humans/faces/tracked", RELIABLE)
        pool = [f"p{i}" for i in range(8)]
        crops = {i: drv.node.create_publisher(Image, f"/humans/faces/{i}/cropped", 1)
                 for i in ["keep", *pool]}
        kept = drv.collect(Expression, "/humans/faces/keep/expression")
        diags = drv.collect(DiagnosticArray, "/diagnostics")
        assert wait_for(lambda: tracked.get_subscription_count() == 1 or not proc.alive(),
                        120), proc.log()
        tracked.publish(IdsList(ids=["keep"]))
        assert wait_for(lambda: crops["keep"].get_subscription_count() == 1, 20), proc.log()

        t0 = time.monotonic()
        next_list = next_crop = t0
        changes, counts = 0, []  # (seconds since start, expressions of "keep" so far)
        while time.monotonic() - t0 < seconds and proc.alive():
            now = time.monotonic()
            if now >= next_list:  # 50 lists a second: the three churning ids all replaced
                ids = [pool[(3 * changes + j) % len(pool)] for j in range(3)]
                tracked.publish(IdsList(ids=["keep", *ids]))
                changes += 1
                next_list += 0.02
            if now >= next_crop:  # crops at 10 Hz on every id, tracked or not
                stamp = convert.float_to_time(now)
                for pub in crops.values():
                    pub.publish(convert.rgb_to_image(face, stamp))
                counts.append((now - t0, len(kept)))
                next_crop += 0.1
            time.sleep(max(0.0, min(next_list, next_crop) - time.monotonic()))
        assert proc.alive(), f"died after {time.monotonic() - t0:.1f} s, {changes} lists:\n" \
                             + proc.log()[-3000:]
        # It kept answering: the stable face's expressions came through the last third too.
        late = [n for t, n in counts if t >= 2 * seconds / 3]
        assert late and late[-1] > late[0], (counts[-5:], proc.log()[-2000:])
        assert changes >= 20 * seconds  # the churn really ran (at most 50/s)
        # ... and still does once the churn stops; its /diagnostics follow the list.
        tracked.publish(IdsList(ids=["keep"]))
        n = len(kept)
        for _ in range(100):
            crops["keep"].publish(convert.rgb_to_image(face, Time(sec=10)))
            if wait_for(lambda: len(kept) > n, 0.2):
                break
        assert len(kept) > n
        assert wait_for(lambda: any(kv.key == "faces.tracked" and kv.value == "1"
                                    for st in _statuses(diags, "face_expression_node")[-3:]
                                    for kv in st.values), 10)
        assert "Traceback" not in proc.log() and "InvalidHandle" not in proc.log()
    finally:
        drv.close()
        proc.stop()


class VoiceFollower:
    """What libhri's HRIListener does with voices, in its own DDS participant (own context):
    follows /humans/voices/tracked and, when an id appears, subscribes to its speech
    (system-default QoS: reliable, volatile, as libhri's Voice)."""

    def __init__(self):
        from hri_msgs.msg import IdsList, LiveSpeech
        from rclpy.qos import qos_profile_system_default
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("voice_follower", context=self.context)
        self.ex = SingleThreadedExecutor(context=self.context)
        self.ex.add_node(self.node)
        self.heard: dict[str, list[str]] = {}
        self._subs: dict = {}
        self._lock = threading.Lock()

        def on_tracked(msg):
            for vid in msg.ids:
                if vid not in self._subs:
                    self._subs[vid] = self.node.create_subscription(
                        LiveSpeech, f"/humans/voices/{vid}/speech",
                        lambda m, vid=vid: self._on_speech(vid, m), qos_profile_system_default)
        self.tracked = self.node.create_subscription(IdsList, "/humans/voices/tracked",
                                                     on_tracked, qos_profile_system_default)
        threading.Thread(target=self.ex.spin, daemon=True).start()

    def _on_speech(self, vid: str, msg) -> None:
        with self._lock:
            self.heard.setdefault(vid, []).append(msg.final)

    def snapshot(self) -> dict[str, list[str]]:
        with self._lock:
            return {k: list(v) for k, v in self.heard.items()}

    def close(self) -> None:
        self.ex.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def test_a_new_voice_first_utterance_reaches_a_tracked_list_follower(ros):
    """The embedded recognizer's output (AsrOutput, as the utterance node runs it: publish on
    a worker thread while the node spins): seven new voices, each speaking first 0.3 s
    after the previous one, two of them again; the follower hears every utterance, each
    voice's first included, in order."""
    from erc_ros.core.types import Utterance
    from erc_ros.ros.asr_output import AsrOutput
    from erc_ros.ros.diagnostics import NodeHealth

    follower = VoiceFollower()
    drv = Driver("asr_output_voices")
    health = NodeHealth()
    out = AsrOutput(drv.node, "erc_ros/transcript", max_voices=32, voice_timeout=60.0,
                    health=health)
    try:
        assert wait_for(lambda: out.tracked.get_subscription_count() == 1, 10)
        said: dict[str, list[str]] = {}
        t = 0.0
        for i in range(7):
            for vid in [f"v{i}"] + (["v0", "v1"] if i == 6 else []):
                text = f"{vid} says {len(said.get(vid, []))}"
                said.setdefault(vid, []).append(text)
                out.publish(Utterance(f"u{t}", "c", vid, t, t + 1.0, text=text), now=t)
                t += 1.0
            time.sleep(0.3)
        assert wait_for(lambda: follower.snapshot() == said, 15), (follower.snapshot(), said)
        assert health.counts["asr.voices_announced"] == 7
        assert health.counts.get("asr.announce_timeouts", 0) == 0
    finally:
        out.destroy()
        drv.close()
        follower.close()


class UtteranceRig:
    """An utterance node (no diarization, no ASR input) and a driver, on one executor
    spinning in a thread; the node's /diagnostics every 0.2 s."""

    def __init__(self, name: str, **params):
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import MultiThreadedExecutor
        from rclpy.parameter import Parameter

        from erc_ros.ros.utterance_node import UtteranceNode
        params = {"perception.diarization.enabled": False,
                  "perception.diarization.warmup": False, "diagnostics_period": 0.2,
                  **params}
        self.node = UtteranceNode(name=name, parameter_overrides=[
            Parameter(k, value=v) for k, v in params.items()])
        self.driver = rclpy.create_node(f"{name}_driver")
        self.diags = Collector()
        self.driver.create_subscription(DiagnosticArray, "/diagnostics", self.diags, 50)
        self.ex = MultiThreadedExecutor(num_threads=3)
        self.ex.add_node(self.node)
        self.ex.add_node(self.driver)
        threading.Thread(target=self.ex.spin, daemon=True).start()
        from rclpy.lifecycle import TransitionCallbackReturn
        assert self.node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert self.node.trigger_activate() == TransitionCallbackReturn.SUCCESS

    def status(self, cond=lambda st, v: True, timeout: float = 10.0) -> dict:
        """The values of the node's newest /diagnostics status for which ``cond`` holds
        (waits for one), with ``level`` (int) and ``message``."""
        found: dict = {}
        prefix = self.node.get_name() + ":"

        def look():
            for st in reversed(_statuses(self.diags, prefix)):
                v = {kv.key: kv.value for kv in st.values}
                if cond(st, v):
                    found.update(v, level=st.level[0], message=st.message)
                    return True
            return False
        assert wait_for(look, timeout), [(st.level, st.message)
                                         for st in _statuses(self.diags, prefix)[-3:]]
        return found

    def fresh_status(self, cond=lambda st, v: True, timeout: float = 10.0) -> dict:
        """:meth:`status` among the statuses published from now on (those already received
        are held here, so their ids stay theirs while this waits)."""
        old = _statuses(self.diags, self.node.get_name() + ":")
        seen = set(map(id, old))
        return self.status(lambda st, v: cond(st, v) and id(st) not in seen, timeout)

    def close(self) -> None:
        close_rig(self.ex, self.node, self.driver)


def _audio(stamp: float, samples: int, value: int = 300):
    import numpy as np
    return convert.pcm16_to_audio_msg(np.full(samples, value, np.int16), stamp)


def test_audio_lost_on_the_way_is_seen(ros):
    """A third of the audio missing from the stamps (0.8 s lost every 2.4 s, as a network
    drop loses it): WARN naming the share lost; back to ok once the audio is whole again.
    (Chunks lost one by one: the flood below.)"""
    from audio_common_msgs.msg import AudioDataStamped
    rig = UtteranceRig("lost_audio", image_transport="none")
    try:
        pub = rig.driver.create_publisher(AudioDataStamped, "/audio", RELIABLE)
        assert wait_for(lambda: pub.get_subscription_count() == 1, 10)
        t0, k = time.time(), 0

        def stream(seconds: float, lose: bool = False) -> None:
            nonlocal k
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                if not lose or k % 120 < 80:  # 1.6 s sent, 0.8 s lost
                    pub.publish(_audio(t0 + 0.02 * k, 320))
                k += 1
                time.sleep(0.02)
        stream(5.0, lose=True)
        st = rig.status(lambda st, v: st.level[0] == 1 and "audio lost" in st.message)
        # (a 5 s window over a 2.4 s pattern: between 0.8 and 1.6 s of 5 s lost)
        assert "on /audio had no audio" in st["message"], st
        assert 0.15 <= float(st["audio.lost_fraction"]) <= 0.4, st
        assert float(st["audio.lost_s"]) >= 0.75
        stream(6.0)  # the window (5 s) whole again
        # The audio goes on whole while the status is awaited (a pause would be "nothing
        # more on /audio"); a busy machine may publish one more status with the loss in it.
        done = threading.Event()
        feeder = threading.Thread(target=lambda: [stream(0.2) for _ in iter(done.is_set, True)])
        feeder.start()
        try:
            st = rig.fresh_status(lambda st, v: st.level[0] == 0, timeout=10.0)
        finally:
            done.set()
            feeder.join()
        assert st["message"] == "ok", st["message"]
        assert float(st["audio.lost_fraction"]) == 0.0, st["message"]
    finally:
        rig.close()


def test_an_audio_flood_is_counted_for_what_it_lost(ros):
    """2,000 messages a second of 8 samples (the issue's flood): whatever the subscription's
    history or the input queue lost is counted as lost audio, to the message; if any,
    /diagnostics warns."""
    from audio_common_msgs.msg import AudioDataStamped
    rig = UtteranceRig("audio_flood", image_transport="none")
    try:
        pub = rig.driver.create_publisher(AudioDataStamped, "/audio", RELIABLE)
        assert wait_for(lambda: pub.get_subscription_count() == 1, 10)
        t0, n = time.time(), 6000  # 3 s of audio, at 2,000 messages/s or as fast as it goes
        start = time.monotonic()
        for i in range(n):
            pub.publish(_audio(t0 + i * 0.0005, 8))
            ahead = start + i * 0.0005 - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        pub.publish(_audio(t0 + n * 0.0005, 8))  # the last gap is seen with a next chunk
        health = rig.node.health
        last = [-1]

        def settled():  # nothing more taken from DDS, and the worker is done with it
            n_now = health.counts["received"]
            same, last[0] = n_now == last[0], n_now
            return same and rig.node.worker.idle_now()
        assert wait_for(settled, 60, period=0.5)
        got = health.counts["received"] - health.counts.get("dropped.input", 0)  # fed
        lost = rig.node.ingest.audio_coverage.lost_s
        assert lost == pytest.approx((n + 1 - got) * 0.0005, abs=0.02 + 0.05 * n * 0.0005), \
            (got, lost)
        if got < 0.95 * (n + 1):
            st = rig.status(lambda st, v: "audio lost" in st.message)
            assert st["level"] == 1, st
    finally:
        rig.close()


def test_an_input_of_another_type_or_silent_is_reported(ros):
    """ros-drivers audio_capture publishes AudioData on ``audio``: the default (stamped) reads
    nothing there: ERROR naming the topic and both types, at once. A camera that sends
    nothing for input_timeout: WARN. Both gone: ok."""
    from audio_common_msgs.msg import AudioData, AudioDataStamped
    from sensor_msgs.msg import Image
    rig = UtteranceRig("input_types", input_timeout=1.5)
    other = rclpy.Context()  # a driver's own participant (one holds one type per topic)
    rclpy.init(context=other)
    mic = rclpy.create_node("audio_capture", context=other)
    try:
        raw = mic.create_publisher(AudioData, "/audio", RELIABLE)
        st = rig.status(lambda st, v: st.level[0] == 2)
        assert "nothing can arrive on /audio" in st["message"], st
        assert "audio_common_msgs/msg/AudioData," in st["message"] + "," and \
            "audio_common_msgs/msg/AudioDataStamped" in st["message"], st
        assert "audio_msg:=raw" in st["message"]
        st = rig.status(lambda st, v: "on /camera/image_raw for" in st.message)
        assert "no publisher" in st["message"] and "sensor_msgs/msg/Image" in st["message"]
        # The right types arrive: ok again.
        mic.destroy_publisher(raw)
        audio = mic.create_publisher(AudioDataStamped, "/audio", RELIABLE)
        cam = rig.driver.create_publisher(Image, "/camera/image_raw", RELIABLE)
        import numpy as np
        frame = convert.rgb_to_image(np.zeros((48, 64, 3), np.uint8))
        t0 = time.time()
        for k in range(100):
            audio.publish(_audio(t0 + 0.02 * k, 320))
            if k % 10 == 0:
                frame.header.stamp = convert.float_to_time(t0 + 0.02 * k)
                cam.publish(frame)
            time.sleep(0.02)
        st = rig.fresh_status()
        assert st["level"] == 0 and st["message"] == "ok", st
        assert int(st["inputs.image.received"]) >= 1
    finally:
        rig.close()
        mic.destroy_node()
        rclpy.try_shutdown(context=other)


@pytest.fixture(scope="module")
def mic_bag(tmp_path_factory):
    from _ros_support import make_bag
    return make_bag(tmp_path_factory.mktemp("bags") / "mic_only", transcripts=False)


def test_a_recognizer_behind_the_audio_raises_the_level(ros, mic_bag, model):
    """The embedded recognizer (tiny.en) on a microphone bag replayed at 2x with /clock: it
    falls behind the audio clock by more than max_asr_lag (0.3 s) while it decodes each turn
    and /diagnostics says so, with the lag and the queue; once it has caught up, the reason
    is gone."""
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.parameter import Parameter

    from erc_ros.ros.live import LiveSession
    from erc_ros.ros.replay import bag_span
    # A recognizer that takes seconds of audio per turn on every CPU kind (the whole 30 s
    # window, beam search, no cheaper decode of a backlog; tiny.en's defaults kept up with 4x
    # on a fast Xeon), on one thread, and nothing else that needs the CPU (no speaker
    # embeddings, no camera); 2x, not 4x: at 4x on two cores the process lost audio messages
    # and /diagnostics ticks for tenths of a second at a time (noted in the issue log).
    params = {"perception.diarization.enabled": False, "image_transport": "none",
              "perception.asr.model": "tiny.en", "perception.asr.window": "full",
              "perception.asr.beam_size": 5, "perception.asr.degrade_backlog": 0,
              "perception.asr.threads": 1, "max_asr_lag": 0.3, "diagnostics_period": 0.1}
    sess = LiveSession(mic_bag, model_dir=str(model), asr_type="embedded",
                       extra_utterance_params=[Parameter(k, value=v) for k, v in params.items()])
    diags = Collector()
    sess.player_node.create_subscription(DiagnosticArray, "/diagnostics", diags, 100)
    try:
        start, end = bag_span(mic_bag)
        assert sess.start(start)
        sess.player.play(mic_bag, rate=2.0)
        sess.finish(end)
        behind = [st for st in _statuses(diags, "utterance_node:")
                  if "speech recognizer" in st.message]
        assert behind, [(s.level, s.message) for s in _statuses(diags, "utterance_node:")][-5:]
        worst = max(behind, key=lambda st: st.level)
        values = {kv.key: kv.value for kv in worst.values}
        assert worst.level[0] >= 1 and float(values["asr.lag_s"]) > 0.3, worst
        assert "behind the audio" in worst.message and "waiting" in worst.message
        # A status after the last result: finish() may return while the recognizer still
        # decodes the last turn (its deadline passes first on a slow CPU), so the clock moves
        # on until a status says it caught up, as long as the recognizer needs.
        tick = [end + 6.0]

        def caught_up():
            tick[0] += 0.2
            sess.player.clock(tick[0])
            time.sleep(0.1)
            statuses = _statuses(diags, "utterance_node:")
            return bool(statuses) and "speech recognizer" not in statuses[-1].message

        assert wait_for(caught_up, 90), _statuses(diags, "utterance_node:")[-1]
        last = _statuses(diags, "utterance_node:")[-1]
        assert {kv.key: kv.value for kv in last.values}["asr.lag_s"] == "0.000"
        # perception.asr.enabled reads what runs (it read False), and its own value after
        node = sess.comp.utterance
        assert node.get_parameter("perception.asr.enabled").value is True
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
        assert node.get_parameter("perception.asr.enabled").value is False
    finally:
        sess.close()


def test_input_health_rules():
    """The pure rules behind the cases above: a reliable subscription to best-effort
    publishers is an error; silence counts from activation (simulated time before /clock is
    not), and from the newest message; the recognizer's lag runs from the newest speech it
    transcribed while segments wait, and is 0 once none does."""
    from erc_ros.ros.input_health import ERROR, WARN, AsrLag, AudioCoverage, InputWatch
    w = InputWatch("audio_stamped", "/audio", "a/msg/S", streaming=True, reliable=True,
                   reliability_param="audio_reliability")
    p = w.check([("a/msg/S", False)], 10.0, 5.0)
    assert p.level == ERROR and "audio_reliability:=best_effort" in p.message
    assert w.check([("a/msg/S", True)], 0.0, 5.0) is None  # no /clock yet
    assert w.check([], 100.0, 5.0) is None  # activation seen now
    assert w.check([], 104.0, 5.0) is None
    p = w.check([], 105.5, 5.0)
    assert p.level == WARN and "nothing on /audio for 6 s (no publisher" in p.message
    w.arrived(105.6)
    assert w.check([("a/msg/S", True)], 110.0, 5.0) is None
    assert "nothing more on /audio for 5 s (1 publisher of a/msg/S" in \
        w.check([("a/msg/S", True)], 110.7, 5.0).message
    assert w.check([], 200.0, 0.0) is None  # input_timeout 0: never

    lag = AsrLag()
    assert lag.observe(0, 50.0) == 0.0
    assert lag.observe(1, 50.0) == 0.0  # the waiting begins
    assert lag.observe(2, 56.0) == 6.0
    lag.done(48.0)  # a result whose speech ended before the waiting began
    assert lag.observe(1, 57.0) == 7.0
    lag.done(55.0)
    assert lag.observe(1, 57.5) == 2.5
    assert AsrLag.problem(2.5, 1, 8, 5.0) is None
    assert AsrLag.problem(6.0, 2, 8, 5.0).level == WARN
    assert AsrLag.problem(21.0, 2, 8, 5.0).level == ERROR
    assert "queue is full" in AsrLag.problem(0.0, 8, 8, 5.0).message
    assert lag.observe(0, 58.0) == 0.0 and lag.since is None

    cov = AudioCoverage()
    for i in range(300):  # 3 s of 10 ms chunks, every fourth missing
        if i % 4:
            cov.add(1000.0 + 0.01 * i, 0.01, 5.0 + 0.01 * i)
    assert cov.lost_fraction(8.0) == pytest.approx(0.25, abs=0.02)
    assert cov.lost_s == pytest.approx(0.75, abs=0.02)
    assert cov.lost_fraction(20.0) == 0.0  # nothing within the window any more
    cov.add(1010.0, 0.01, 20.0)  # a pause (10 s of stamps): not loss
    cov.add(1010.01, 0.01, 20.01)
    assert cov.lost_s == pytest.approx(0.75, abs=0.02)

    from erc_ros.ros.input_health import SequenceGaps

    def info(gid: bytes, seq: int) -> dict:
        return {"publication_sequence_number": seq, "publisher_gid": {"data": gid}}
    gaps = SequenceGaps(window_s=10.0)
    gaps.existing([list(b"A" * 16)])  # there before the subscription: its past is not lost
    assert gaps.add(info(b"A" * 16, 500), 1.0) == 0
    assert gaps.add(info(b"A" * 16, 504), 2.0) == 3
    assert gaps.add(info(b"B" * 16, 10), 3.0) == 9  # new: its first nine never came
    assert gaps.add(info(b"B" * 16, 1), 4.0) == 0  # started again
    assert gaps.add(None, 4.0) == 0  # an rmw without numbers
    assert (gaps.lost, gaps.received, gaps.lost_recently(5.0)) == (12, 4, 12)
    assert gaps.lost_recently(12.5) == 9 and gaps.problem(20.0, "/t", 100) is None
    assert "12 in all" in gaps.problem(12.5, "/t", 100).message



def test_transcripts_lost_on_the_way_are_counted(ros):
    """3,000 final transcripts as fast as one publisher goes (issue 55: 207 arrived, the
    rest were lost with no counter): every one is either received by the node or counted
    lost from the publisher's sequence numbers, to the message, and a loss is a WARN naming
    the topic."""
    from erc_ros.msg import Transcript
    rig = UtteranceRig("transcript_flood", image_transport="none", audio_msg="none")
    try:
        pub = rig.driver.create_publisher(Transcript, "/erc_ros/transcript", RELIABLE)
        assert wait_for(lambda: pub.get_subscription_count() == 1, 10)
        n = 3000
        for i in range(n):
            pub.publish(Transcript(text=f"word {i}", is_final=True))
        health, last = rig.node.health, [-1]

        def settled():
            n_now = health.counts.get("received", 0)
            same, last[0] = n_now == last[0], n_now
            return same and rig.node.worker.idle_now()
        assert wait_for(settled, 60, period=0.5)
        gaps = rig.node._gaps["transcript"]
        assert health.counts["received"] + gaps.lost == n, (health.counts["received"],
                                                            gaps.lost)
        st = rig.status(lambda st, v: "inputs.transcript.lost" in v)
        assert int(st["inputs.transcript.lost"]) == gaps.lost
        if gaps.lost:
            st = rig.status(lambda st, v: "lost before they reached" in st.message)
            assert st["level"] >= 1 and "/erc_ros/transcript" in st["message"], st
    finally:
        rig.close()


def test_transcript_fields_are_bounded_and_old_refusals_leave_the_warning(ros):
    """A speaker hint of 1,000,000 characters, a locale or segment id of 1 MB, a confidence
    of Inf or -5 are refused (``transcript_field``, issue 55); NaN (no confidence given) is
    not. /diagnostics says how things stand now: WARN while the refusals are within
    ``diagnostics_window``, then OK with the totals beside."""
    import math

    from erc_ros.msg import Transcript
    rig = UtteranceRig("transcript_bounds", image_transport="none", audio_msg="none",
                       diagnostics_window=2.0)
    try:
        pub = rig.driver.create_publisher(Transcript, "/erc_ros/transcript", RELIABLE)
        assert wait_for(lambda: pub.get_subscription_count() == 1, 10)
        big = "x" * 1_000_000
        for kw in ({"speaker_hint": big}, {"locale": big}, {"segment_id": big},
                   {"confidence": math.inf}, {"confidence": -5.0}):
            pub.publish(Transcript(text="hello there", is_final=False, **kw))
        pub.publish(Transcript(text="hello there", is_final=False, confidence=math.nan))
        health = rig.node.health
        assert wait_for(lambda: health.counts.get("received", 0) == 6
                        and rig.node.worker.idle_now(), 20)
        assert health.refused["transcript_field"] == 5, dict(health.refused)
        # the newest WARN once all five are counted: one published between the fourth and the
        # fifth refusal (the worker was still reading) says 4
        st = rig.status(lambda st, v: st.level[0] == 1
                        and v.get("recent.refused.transcript_field") == "5")
        assert "last 2 s: 5 refused input (transcript_field" in st["message"], st
        assert st["recent.refused.transcript_field"] == "5"
        st = rig.fresh_status(lambda st, v: st.level[0] == 0, timeout=10.0)
        assert st["message"] == "ok (since start: 5 refused input)", st
        assert st["refused.transcript_field"] == "5" and "recent.refused.transcript_field" \
            not in st
    finally:
        rig.close()


@pytest.mark.parametrize("rate", [0, 4294967295])
def test_an_audio_format_refused_says_so_first(ros, rate):
    """An AudioInfo with sample rate 0 (was read as 16 kHz, silently) or 4294967295 (its
    audio was reported as "lost before it reached the node ... publish fewer, larger
    chunks", issue 55): refused with its reason, and /diagnostics leads with it at ERROR;
    the audio that follows is refused, not counted as lost; a good AudioInfo mends it."""
    from audio_common_msgs.msg import AudioDataStamped, AudioInfo
    rig = UtteranceRig(f"audio_format_{rate}", image_transport="none")
    try:
        info = rig.driver.create_publisher(AudioInfo, "/audio_info", RELIABLE)
        pub = rig.driver.create_publisher(AudioDataStamped, "/audio", RELIABLE)
        assert wait_for(lambda: info.get_subscription_count() == 1
                        and pub.get_subscription_count() == 1, 10)
        info.publish(AudioInfo(channels=1, sample_rate=rate, sample_format="S16LE",
                               coding_format="wave"))
        assert wait_for(lambda: rig.node.ingest.audio_format_error is not None, 10)
        t0 = time.time()
        for k in range(100):
            pub.publish(_audio(t0 + 0.02 * k, 320))
            time.sleep(0.005)
        st = rig.status(lambda st, v: st.level[0] == 2 and "refused" in st.message)
        assert st["message"].startswith("audio on /audio refused: AudioInfo"), st["message"]
        assert ("sample_rate is 0" if rate == 0 else "out of range") in st["message"]
        assert "lost" not in st["message"] and "larger chunks" not in st["message"]
        assert rig.node.health.refused["audio_format"] >= 1
        assert rig.node.ingest.audio_coverage.lost_s == 0.0
        info.publish(AudioInfo(channels=1, sample_rate=16000, sample_format="S16LE",
                               coding_format="wave"))
        assert wait_for(lambda: rig.node.ingest.audio_format_error is None, 10)
    finally:
        rig.close()


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@pytest.fixture(scope="module")
def face_node_on_onnx(ros):
    """A face node process (reliable crops) started with the expert's ONNX file prepared,
    into this run's ERC_ROS_CACHE, which the node inherits: its start-up log and its memory
    under huge crops are two tests of one process start."""
    from erc_ros.runtime.face_expert import prepare
    prepare()
    proc = NodeProcess("erc_ros.ros.face_expression_node",
                       {"image_reliability": "reliable", "diagnostics_period": 0.5})
    yield proc
    proc.stop()


@pytest.mark.long
def test_huge_face_crops_leave_no_memory_behind(ros, face_node_on_onnx):
    """Four tracked faces (reliable crops), two floods of two 49 MB mono8 crops per face: every
    crop is refused from its header (image_too_large), and the node's RSS comes back to
    within 60 MB of what it was before the floods (it kept a 49 MB buffer or two per face
    reader: +187 MB here, +1.5 GB with 8 faces and 100 MB crops)."""
    from diagnostic_msgs.msg import DiagnosticArray
    from hri_msgs.msg import IdsList
    from sensor_msgs.msg import Image
    proc = face_node_on_onnx
    drv = Driver("huge_crops_driver")
    faces = [f"h{i}" for i in range(4)]
    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=2,
                     reliability=ReliabilityPolicy.RELIABLE)
    try:
        tracked = drv.node.create_publisher(IdsList, "/humans/faces/tracked", RELIABLE)
        pubs = [drv.node.create_publisher(Image, f"/humans/faces/{f}/cropped", qos)
                for f in faces]
        diags = drv.collect(DiagnosticArray, "/diagnostics")
        assert wait_for(lambda: tracked.get_subscription_count() == 1 or not proc.alive(),
                        120), proc.log()
        tracked.publish(IdsList(ids=faces))
        assert wait_for(lambda: all(p.get_subscription_count() == 1 for p in pubs), 20)

        def refused() -> int:
            for st in reversed(_statuses(diags, "face_expression_node:")):
                return int({kv.key: kv.value for kv in st.values}.get(
                    "refused.image_too_large", 0))
            return 0
        time.sleep(2.0)
        before = _rss_mb(proc.proc.pid)
        huge = Image(height=7000, width=7000, encoding="mono8", step=7000)
        huge.data = bytes(7000 * 7000)
        after, rounds = [], 0
        for flood in range(2):
            for _ in range(2):  # one crop per face, taken before the next (keep-last 1)
                for pub in pubs:
                    pub.publish(huge)
                rounds += 1
                assert wait_for(lambda n=4 * rounds: refused() == n, 60), (refused(), rounds)
            time.sleep(1.0)
            after.append(_rss_mb(proc.proc.pid))
        assert proc.alive()
        assert max(after) - before < 60, (before, after)
    finally:
        drv.close()


def test_stamps_far_from_the_nodes_clock_are_reported(ros):
    """A bag's stamps (here 1970) replayed without /clock into a node on wall time: the
    estimates would be stamped in 1970, silently; /diagnostics say so, with both times."""
    from audio_common_msgs.msg import AudioDataStamped
    rig = UtteranceRig("old_stamps", image_transport="none")
    try:
        pub = rig.driver.create_publisher(AudioDataStamped, "/audio", RELIABLE)
        assert wait_for(lambda: pub.get_subscription_count() == 1, 10)
        for k in range(50):
            pub.publish(_audio(100.0 + 0.02 * k, 320))
            time.sleep(0.02)
        st = rig.status(lambda st, v: "stamps on /audio" in st.message)
        assert st["level"] == 1, st
        assert "days behind the node's clock (stamp 1970-01-01 00:01:4" in st["message"], st
        assert "use_sim_time:=true" in st["message"]
    finally:
        rig.close()


def test_a_face_node_without_torch_says_nothing_of_torch_threads(ros, face_node_on_onnx):
    """With the expert's ONNX file prepared the face node runs no torch; it logged "torch
    threads stay 0 in this process (set by face_expression_node)" about itself."""
    proc = face_node_on_onnx
    assert wait_for(lambda: "active:" in proc.log() or not proc.alive(), 120), proc.log()
    log = proc.log()
    assert "torch not configured" in log and "onnxruntime" in log, log
    assert "torch threads stay" not in log, log
