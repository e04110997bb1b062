"""The utterance node: camera + microphone + ASR -> ``erc_ros/Utterance``.

Lifecycle (see STYLE.md): parameters declared in ``__init__``; ``on_configure`` builds the
PerceptionCore from them; ``on_activate`` subscribes; ``on_cleanup`` frees. Callbacks only
enqueue (bounded); one worker thread converts, feeds the core (:class:`Ingest`, shared with
eval-bag), polls it and hands each finished utterance on: published on ``utterance_topic``
and, when composed in one process with the emotion node, handed over in memory.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable, Optional

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import (HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data)

from erc_ros.core.params import unflatten
from erc_ros.ros import convert
from erc_ros.ros.diagnostics import NodeHealth, diagnostic_array, to_status
from erc_ros.ros.ingest import Ingest
from erc_ros.ros.lifecycle import declare_documented, run_node
from erc_ros.ros.worker import Worker

#: name -> (default, description). Every parameter of the node, documented.
PARAMETERS: dict[str, tuple[Any, str]] = {
    "autostart": (True, "configure and activate on start (there is no launch manager here)"),
    "image_topic": ("/camera/image_raw", "camera topic (sensor_msgs/Image)"),
    "image_transport": ("raw", "'raw' (Image on image_topic), 'compressed' (CompressedImage "
                               "on image_topic + '/compressed') or 'none'"),
    "audio_topic": ("/audio", "microphone topic (audio_common_msgs)"),
    "audio_msg": ("stamped", "'stamped' (AudioDataStamped), 'raw' (AudioData, stamped at "
                             "receipt) or 'none'"),
    "audio_info_topic": ("/audio_info", "audio_common_msgs/AudioInfo topic (format of the "
                                        "audio; S16LE mono 16 kHz until one arrives)"),
    "asr_type": ("transcript", "'transcript' (erc_ros/Transcript), 'live_speech' "
                               "(hri_msgs/LiveSpeech on asr_topic), 'hri_voices' (ROS4HRI: "
                               "/humans/voices/<id>/speech for every id on "
                               "/humans/voices/tracked), 'string' (std_msgs/String) or 'none'"),
    "asr_topic": ("/erc_ros/transcript", "ASR topic for asr_type transcript/live_speech/string"),
    "utterance_topic": ("/erc_ros/utterances", "output topic (erc_ros/Utterance)"),
    "publish_utterances": (True, "publish utterances (composed mode may hand them over in "
                                 "memory only)"),
    "sensor_reliability": ("best_effort", "QoS reliability of the camera subscription "
                                          "('best_effort' or 'reliable'); audio and ASR are "
                                          "always reliable"),
    "queue_size": (2000, "bound of the input queue (messages); overflow is dropped and counted"),
    "poll_period": (0.02, "seconds between polls of the core when no input arrives"),
    "diagnostics_period": (1.0, "seconds between /diagnostics messages"),
    "perception_config": ("", "optional YAML file with a PerceptionConfig tree; the "
                              "perception.* parameters override it"),
}


def perception_parameters() -> list[tuple[str, Any, str]]:
    """(flat name, default, description) of every PerceptionConfig field usable as a ROS
    parameter (scalars)."""
    from erc_ros.core.perception import PerceptionConfig
    return [(k, v, d) for k, v, d in PerceptionConfig.describe()
            if isinstance(v, (bool, int, float, str))]


def segmentation_for_asr(overrides: dict[str, Any], asr_type: str) -> dict[str, Any]:
    """Resolve ``segmentation.mode: auto`` from the ASR the node is configured for: untimed
    producers (LiveSpeech, String) -> ``asr_untimed`` (speech always waits for its text, even
    before the first result is seen); no ASR -> ``vad``; our timed Transcript keeps ``auto``."""
    out = dict(overrides)
    if out.get("segmentation.mode", "auto") == "auto":
        mode = {"live_speech": "asr_untimed", "hri_voices": "asr_untimed",
                "string": "asr_untimed", "none": "vad"}.get(asr_type)
        if mode:
            out["segmentation.mode"] = mode
    return out


def build_core(overrides: dict[str, Any], config_file: str = ""):
    """PerceptionCore from a YAML file (optional) with flattened overrides."""
    from erc_ros.core.perception import PerceptionConfig, PerceptionCore
    base = PerceptionConfig().to_dict()
    if config_file:
        import yaml
        with open(config_file) as f:
            loaded = yaml.safe_load(f) or {}
        base = _merge(base, loaded)
    base = _merge(base, unflatten(overrides))
    return PerceptionCore(PerceptionConfig.from_dict(base))


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class UtteranceNode(LifecycleNode):
    """camera / audio / ASR -> Utterance."""

    def __init__(self, name: str = "utterance_node", **kwargs):
        super().__init__(name, **kwargs)
        declare_documented(self, PARAMETERS)
        self._perception_keys: list[str] = []
        try:
            for key, default, doc in perception_parameters():
                self.declare_parameter(f"perception.{key}", default,
                                       ParameterDescriptor(description=doc))
                self._perception_keys.append(key)
        except ImportError:  # core not installed: configure will fail with a clear log
            pass
        self.health = NodeHealth()
        self.core = None
        self.ingest: Optional[Ingest] = None
        self.worker: Optional[Worker] = None
        self.on_utterance: Optional[Callable[[Any, Optional[float]], None]] = None
        self._subs: list = []
        self._voice_subs: dict[str, Any] = {}
        self._final_arrivals: dict[float, float] = {}
        self._pub = None
        self._diag_pub = None
        self._diag_timer = None
        self._group = MutuallyExclusiveCallbackGroup()
        self.published = 0
        self.flushed = False

    # -- lifecycle -----------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        p = {n: self.get_parameter(n).value for n in PARAMETERS}
        self.p = p
        try:
            overrides = {k: self.get_parameter(f"perception.{k}").value
                         for k in self._perception_keys}
            overrides = segmentation_for_asr(overrides, p["asr_type"])
            self.core = build_core(overrides, p["perception_config"])
        except Exception as err:
            self.get_logger().error(f"cannot build the perception core: {err}")
            self.health.error = f"perception core: {err}"
            return TransitionCallbackReturn.FAILURE
        self.ingest = Ingest(self.core, self.health)
        self.worker = Worker("input", p["queue_size"], self._process, self.health,
                             idle=self._poll, period=p["poll_period"],
                             on_error=lambda e: self.get_logger().error(f"worker: {e!r}"))
        from erc_ros.msg import Utterance
        self._pub = self.create_lifecycle_publisher(Utterance, p["utterance_topic"], 10)
        from diagnostic_msgs.msg import DiagnosticArray
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_timer = self.create_timer(p["diagnostics_period"], self.publish_diagnostics,
                                             callback_group=self._group)
        self.get_logger().info("configured")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        p = self.p
        reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100,
                              reliability=ReliabilityPolicy.RELIABLE)
        cam = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                         reliability=(ReliabilityPolicy.RELIABLE
                                      if p["sensor_reliability"] == "reliable"
                                      else qos_profile_sensor_data.reliability))
        from sensor_msgs.msg import CompressedImage, Image
        if p["image_transport"] == "raw":
            self._sub(Image, p["image_topic"], "image", cam)
        elif p["image_transport"] == "compressed":
            self._sub(CompressedImage, p["image_topic"] + "/compressed", "compressed", cam)
        if p["audio_msg"] in ("stamped", "raw"):
            from audio_common_msgs.msg import AudioData, AudioDataStamped, AudioInfo
            if p["audio_msg"] == "stamped":
                self._sub(AudioDataStamped, p["audio_topic"], "audio_stamped", reliable)
            else:
                self._sub(AudioData, p["audio_topic"], "audio", reliable)
            self._sub(AudioInfo, p["audio_info_topic"], "audio_info", reliable)
        asr = p["asr_type"]
        if asr == "transcript":
            from erc_ros.msg import Transcript
            self._sub(Transcript, p["asr_topic"], "transcript", reliable)
        elif asr == "live_speech":
            from hri_msgs.msg import LiveSpeech
            self._sub(LiveSpeech, p["asr_topic"], "live_speech", reliable)
        elif asr == "string":
            from std_msgs.msg import String
            self._sub(String, p["asr_topic"], "string", reliable)
        elif asr == "hri_voices":
            from hri_msgs.msg import IdsList
            self._subs.append(self.create_subscription(
                IdsList, "/humans/voices/tracked", self._on_voices, reliable))
        self.worker.start()
        self.get_logger().info(f"active: {len(self._subs)} subscriptions")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._unsubscribe()
        if self.worker:
            self.worker.stop()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._unsubscribe()
        if self.worker:
            self.worker.stop()
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = None
        if self._pub is not None:
            self.destroy_lifecycle_publisher(self._pub)
            self._pub = None
        self.core = self.ingest = self.worker = None
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.worker:
            self.worker.stop()
        return TransitionCallbackReturn.SUCCESS

    # -- subscriptions (callbacks only enqueue) ------------------------------------------
    def _sub(self, cls, topic: str, kind: str, qos) -> None:
        def cb(msg, kind=kind, topic=topic):
            self._enqueue(kind, msg, topic)
        self._subs.append(self.create_subscription(cls, topic, cb, qos))

    def _on_voices(self, msg) -> None:
        from hri_msgs.msg import LiveSpeech
        for vid in msg.ids:
            if vid not in self._voice_subs:
                topic = f"/humans/voices/{vid}/speech"
                self._voice_subs[vid] = self.create_subscription(
                    LiveSpeech, topic,
                    lambda m, topic=topic: self._enqueue("live_speech", m, topic), 10)

    def _unsubscribe(self) -> None:
        for s in [*self._subs, *self._voice_subs.values()]:
            self.destroy_subscription(s)
        self._subs, self._voice_subs = [], {}

    def now(self) -> float:
        return self.get_clock().now().nanoseconds / 1e9

    def _enqueue(self, kind: str, msg, topic: str) -> None:
        self.worker.put((kind, msg, self.now(), topic, time.perf_counter()))

    # -- worker ----------------------------------------------------------------------------
    def _process(self, items: list) -> None:
        for kind, msg, receipt, topic, arrival in items:
            if kind == "flush":
                self._poll()
                self.flush()
                self.flushed = True
                continue
            try:
                ok = self.ingest.feed(kind, msg, receipt, topic)
            except Exception as err:  # not a refusal: a bug; count it, keep the batch
                self.health.count("errors.ingest")
                self.get_logger().error(f"{kind} input failed: {err!r}")
                continue
            if ok and kind in ("transcript", "live_speech", "string"):
                stamp = self._event_stamp(kind, msg, receipt)
                if stamp is not None:
                    self._final_arrivals[round(stamp, 6)] = arrival
                    if len(self._final_arrivals) > 512:
                        self._final_arrivals.pop(next(iter(self._final_arrivals)))
        self._poll()

    @staticmethod
    def _event_stamp(kind, msg, receipt) -> Optional[float]:
        if kind == "transcript":
            return convert.time_to_float(msg.header.stamp) if msg.is_final else None
        if kind == "live_speech":
            if not msg.final:
                return None
            hs = convert.time_to_float(msg.header.stamp)
            return hs if hs > 0 else receipt
        return receipt

    def _poll(self) -> None:
        if self.core is None:
            return
        t0 = time.perf_counter()
        utts = self.core.poll(self.now())
        if utts:
            self.health.latency("poll", (time.perf_counter() - t0) * 1e3)
        for utt in utts:
            self.hand_off(utt)

    def request_flush(self) -> None:
        """Ask the worker to flush the core once the queued input is processed (end of a
        replay); :attr:`flushed` turns true when done."""
        self.flushed = False
        self.worker.put(("flush", None, self.now(), "", time.perf_counter()))

    def flush(self) -> None:
        """End of stream: release whatever the core still holds (worker thread only)."""
        for utt in self.core.flush():
            self.hand_off(utt)

    def hand_off(self, utt) -> None:
        arrival = None
        if utt.final_stamp is not None:
            arrival = self._final_arrivals.pop(round(utt.final_stamp, 6), None)
        if arrival is not None:  # final ASR result received -> utterance ready
            self.health.latency("final_to_utterance", (time.perf_counter() - arrival) * 1e3)
        self.health.count("utterances")
        if self.on_utterance is not None:
            self.on_utterance(utt, arrival)
        if self.p["publish_utterances"] and self._pub is not None:
            try:
                self._pub.publish(convert.utterance_to_msg(utt))
                self.published += 1
            except Exception as err:
                self.health.refuse("utterance_publish", str(err))

    def publish_diagnostics(self) -> None:
        if self._diag_pub is None:
            return
        extra = {}
        if self.core is not None:
            try:
                extra["core"] = self.core.stats()
            except Exception:
                pass
        depth = {"input": (self.worker.depth(), self.worker.capacity)} if self.worker else {}
        st = to_status(f"{self.get_name()}: utterances", "erc_ros", self.health, extra, depth)
        self._diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), [st]))


def main(argv=None) -> int:
    return run_node(UtteranceNode, argv)


if __name__ == "__main__":
    sys.exit(main())
