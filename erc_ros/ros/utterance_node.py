"""The utterance node: camera + microphone + ASR -> ``erc_ros/Utterance``.

With ``asr_type: embedded`` the ASR is the node's own (:mod:`erc_ros.core.asr`, on its own
thread inside the core): it also publishes what it recognized (:mod:`erc_ros.ros.asr_output`:
Transcript, and ROS4HRI LiveSpeech per voice with /humans/voices/tracked).

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

from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

from erc_ros import process
from erc_ros.assemble import build_config, build_core, torch_threads
from erc_ros.core.config import PerceptionConfig
from erc_ros.ros import convert, emotion_msgs, tracked
from erc_ros.ros.diagnostics import NodeHealth, diagnostic_array, to_status
from erc_ros.ros.ingest import KINDS, Ingest, final_stamp
from erc_ros.ros.input_health import (STREAMS, TYPE_HINTS, AsrLag, InputWatch, SequenceGaps,
                                      input_problems)
from erc_ros.ros.lifecycle import (ParameterGuard, declare_documented, diagnostics_timer, fail,
                                   read_parameters, run_node, wait_acked)
from erc_ros.ros.tracked import TrackedIds
from erc_ros.ros.worker import Worker

#: name -> (default, description). Every parameter of the node, documented.
PARAMETERS: dict[str, tuple[Any, str]] = {
    "autostart": (True, "configure and activate on start (there is no launch manager here)"),
    "image_topic": ("camera/image_raw", "camera topic (sensor_msgs/Image)"),
    "image_transport": ("raw", "'raw' (Image on image_topic), 'compressed' (CompressedImage "
                               "on image_topic + '/compressed') or 'none'"),
    "audio_topic": ("audio", "microphone topic (audio_common_msgs)"),
    "audio_msg": ("stamped", "'stamped' (AudioDataStamped), 'raw' (AudioData, stamped at "
                             "receipt) or 'none'"),
    "audio_info_topic": ("audio_info", "audio_common_msgs/AudioInfo topic (format of the "
                                        "audio; S16LE mono 16 kHz until one arrives)"),
    "asr_type": ("transcript", "'transcript' (erc_ros/Transcript), 'live_speech' "
                               "(hri_msgs/LiveSpeech on asr_topic), 'hri_voices' (ROS4HRI: "
                               "/humans/voices/<id>/speech for every id on "
                               "/humans/voices/tracked), 'string' (std_msgs/String), 'embedded' "
                               "(the node's own recognizer on the microphone: see "
                               "perception.asr.*) or 'none'"),
    "asr_topic": ("erc_ros/transcript", "ASR topic for asr_type transcript/live_speech/string; "
                                        "asr_type embedded publishes its Transcripts there"),
    "utterance_topic": ("erc_ros/utterances", "output topic (erc_ros/Utterance)"),
    "publish_utterances": (True, "publish utterances (composed mode may hand them over in "
                                 "memory only: then nothing is advertised)"),
    "image_reliability": ("best_effort", "QoS reliability of the camera subscription: "
                                         "'best_effort' (sensor data) or 'reliable'"),
    "audio_reliability": ("reliable", "QoS reliability of the microphone (and AudioInfo) "
                                      "subscription: 'reliable' or 'best_effort' (for "
                                      "microphone drivers that publish best-effort)"),
    "asr_reliability": ("reliable", "QoS reliability of the ASR subscriptions: 'reliable' or "
                                    "'best_effort'"),
    "max_voices": (32, "asr_type hri_voices: at most this many per-voice subscriptions "
                       "(ids left /humans/voices/tracked are unsubscribed); embedded: at most "
                       "this many /humans/voices/<id>/speech publishers"),
    "voice_timeout": (60.0, "asr_type embedded: a voice stays in /humans/voices/tracked this "
                            "many seconds after it was last heard"),
    "voice_announce_timeout": (2.0, "asr_type embedded: a new voice's speech waits at most "
                                    "this many seconds for the readers of "
                                    "/humans/voices/tracked to subscribe to its "
                                    "/humans/voices/<id>/speech (ROS4HRI consumers subscribe "
                                    "when the id appears); 0: published at once"),
    "max_image_pixels": (convert.MAX_IMAGE_PIXELS, "largest camera frame accepted (width x height, raw "
                                      "or compressed); larger ones are refused from their "
                                      "header before decoding (refused.image_too_large)"),
    "max_image_bytes": (convert.MAX_IMAGE_BYTES, "largest CompressedImage payload in bytes; larger "
                                          "ones are refused (refused.image_too_large)"),
    "input_timeout": (10.0, "/diagnostics warns when the microphone or camera sent nothing "
                            "for this many seconds while active (0: never); an input whose "
                            "topic only carries another type is an error at once"),
    "max_audio_loss": (0.05, "/diagnostics warns when more than this share of the last 5 s "
                             "of audio (its stamps, or receipts for unstamped audio) had no "
                             "audio: lost before it reached the node"),
    "max_stamp_offset": (30.0, "/diagnostics warns when input stamps are further than this "
                               "many seconds from the node's clock (a bag played without "
                               "/clock, a driver stamping with its own clock); 0: never"),
    "max_asr_lag": (5.0, "asr_type embedded: /diagnostics warns when the recognizer is more "
                         "than this many seconds behind the audio (error past 4x, or when "
                         "its queue is full); 0: only the full queue"),
    "queue_size": (2000, "bound of the input queue (messages); overflow is dropped and counted"),
    "poll_period": (0.02, "seconds between polls of the core when no input arrives"),
    "diagnostics_period": (1.0, "seconds between /diagnostics messages"),
    "diagnostics_window": (30.0, "seconds of 'now' on /diagnostics: refused input, drops "
                                 "and internal errors older than this no longer raise the "
                                 "level (the totals since start stay beside them)"),
    "shutdown_timeout": (5.0, "on shutdown (SIGINT, SIGTERM, the lifecycle transition): at most "
                              "this many seconds to finish the input taken and the speech the "
                              "embedded recognizer accepted and publish their utterances; "
                              "speech not transcribed by then comes out without text "
                              "(asr.unfinished). With the emotion node's it stays below ros2 "
                              "launch's SIGINT -> SIGKILL window (sigterm_timeout + "
                              "sigkill_timeout, 5 + 5 s)"),
    "perception_config": ("", "optional YAML file with a PerceptionConfig tree; the "
                              "perception.* parameters override it"),
}

#: Ranges of the numeric parameters (the descriptor refuses values outside).
BOUNDS: dict[str, tuple[float, float]] = {
    "queue_size": (1, 1000000), "poll_period": (0.001, 10.0),
    "diagnostics_period": (0.01, 3600.0),
    "diagnostics_window": (1.0, 86400.0), "max_voices": (1, 10000),
    "shutdown_timeout": (0.0, 3600.0),
    "voice_timeout": (0.1, 1e6), "voice_announce_timeout": (0.0, 60.0),
    "input_timeout": (0.0, 1e6), "max_audio_loss": (0.0, 1.0), "max_asr_lag": (0.0, 1e6),
    "max_stamp_offset": (0.0, 1e9),
    "max_image_pixels": (1, 2**31 - 1), "max_image_bytes": (1, 2**31 - 1),
}


#: Keep-last history of the ASR subscriptions (messages).
ASR_DEPTH = 100


def perception_parameters() -> list[tuple[str, Any, str]]:
    """(flat name, default, description) of every PerceptionConfig field usable as a ROS
    parameter (scalars)."""
    return [(k, v, d) for k, v, d in PerceptionConfig.describe()
            if isinstance(v, (bool, int, float, str))]


class UtteranceNode(LifecycleNode):
    """camera / audio / ASR -> Utterance.

    Resources and the transition that makes / frees them: the /diagnostics publisher and
    timer live as long as the node (``__init__`` / ``destroy_node``); the core, worker and
    utterance publisher are made in ``on_configure`` and freed in ``on_cleanup``; the
    subscriptions (per-voice ones included) are made in ``on_activate`` (and as voices are
    tracked) and freed in ``on_deactivate``."""

    def __init__(self, name: str = "utterance_node", **kwargs):
        super().__init__(name, **kwargs)
        self._param_errors = declare_documented(self, PARAMETERS, BOUNDS)
        self._perception_keys: list[str] = []
        self._perception_defaults: dict[str, Any] = {}
        #: Whether the model the utterances go to uses video (the composed process sets it;
        #: None: unknown). See erc_ros.assemble.perception_config.
        self.uses_video: Optional[bool] = None
        try:
            perception = perception_parameters()
        except ImportError:  # core not installed: configure will fail with a clear log
            perception = []
        self._param_errors += declare_documented(
            self, {f"perception.{key}": (default, doc) for key, default, doc in perception})
        for key, default, _ in perception:
            self._perception_keys.append(key)
            self._perception_defaults[key] = default
        self.guard = ParameterGuard(self, extra=self._check_perception)
        self.health = NodeHealth()
        self.core = None
        self.ingest: Optional[Ingest] = None
        self.worker: Optional[Worker] = None
        self.on_utterance: Optional[Callable[[Any, Optional[float]], None]] = None
        self._subs: list = []
        self._voices: Optional[TrackedIds] = None  # asr_type hri_voices, while active
        self._final_arrivals: dict[float, float] = {}
        self._pub = None
        self._asr_out = None  # asr_type embedded: erc_ros.ros.asr_output.AsrOutput
        self._watch: dict[str, InputWatch] = {}  # input kind -> what /diagnostics checks
        self._gaps: dict[str, SequenceGaps] = {}  # input kind -> messages lost on the way
        self._derived: dict[str, Any] = {}  # parameters shown as derived -> their own value
        self._asr_lag = AsrLag()
        self._diag_pub, self._diag_timer = diagnostics_timer(self)
        self.published = 0
        self.flushed = False
        self._active = False  # between on_activate and on_deactivate

    def _perception_overrides(self) -> dict[str, Any]:
        """The perception.* values set away from their defaults (what the user chose)."""
        return {k: v for k, v in ((k, self.get_parameter(f"perception.{k}").value)
                                  for k in self._perception_keys)
                if v != self._perception_defaults[k]}

    def process_request(self) -> dict[str, Any]:
        """What this node asks of its process (:func:`erc_ros.process.configure`): torch's
        pool is the speaker embedder's (perception.diarization.threads)."""
        return {"torch_threads": torch_threads(self._perception_overrides())}

    def _check_perception(self, name: str, value: Any) -> str:
        """Refuse a perception.* value the core would refuse (with its reason)."""
        if not name.startswith("perception."):
            return ""
        over = self._perception_overrides()
        over[name[len("perception."):]] = value
        try:
            build_config(over)
        except ValueError as err:
            return f"{name}: {err}"
        return ""

    # -- lifecycle -----------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._restore_derived()
        p, bad = read_parameters(self, PARAMETERS)
        self.p = p
        if bad:
            return self._fail("invalid parameters: " + "; ".join(bad))
        allocator = process.tune_allocator()  # before the first model (docs/ros.md)
        if allocator:
            self.get_logger().info(allocator)
        try:
            with process.loading_models():
                self.core = build_core(self._perception_overrides(), p["perception_config"],
                                       asr_type=p["asr_type"], uses_video=self.uses_video,
                                       publish_utterances=p["publish_utterances"],
                                       on_asr_result=self._asr_result_ready)
            if self.uses_video is False and not self.core.config.faces.enabled:
                self.get_logger().info("face crops off: the model does not use video and "
                                       "utterances are not published (publish_utterances:="
                                       "true keeps them)")
        except Exception as err:
            return self._fail(f"cannot build the perception core: {err}")
        if self.core.face_expert_message:  # the face-expression expert, or why it is off
            (self.get_logger().info if self.core.face_expert is not None
             else self.get_logger().warning)(self.core.face_expert_message)
        if self.core.voice_expert_message:  # the voice expert, or why it is off
            (self.get_logger().info if self.core.voice_expert is not None
             else self.get_logger().warning)(self.core.voice_expert_message)
        if self.core.recognizer is not None:
            from erc_ros.ros.asr_output import AsrOutput
            rec = self.core.recognizer
            self._asr_out = AsrOutput(self, p["asr_topic"], p["max_voices"], p["voice_timeout"],
                                      self.health, p["voice_announce_timeout"])
            self.get_logger().info(
                f"embedded ASR: Whisper {rec.model_name} ({rec.choice.get('reason', '')}) "
                f"from {rec.model_path} "
                f"({rec.config.compute_type}, {rec.config.threads} threads, language "
                f"{rec.config.language or 'detected'}); transcripts on "
                f"{self._asr_out.transcripts.topic_name}, ROS4HRI voices on /humans/voices")
        self.health.error = ""
        self.ingest = Ingest(self.core, self.health, max_image_pixels=p["max_image_pixels"],
                             max_image_bytes=p["max_image_bytes"])
        self.worker = Worker("input", p["queue_size"], self._process, self.health,
                             idle=self._poll, period=p["poll_period"],
                             on_error=lambda e: self.get_logger().error(f"worker: {e!r}"))
        if p["publish_utterances"]:
            from rclpy.event_handler import PublisherEventCallbacks

            from erc_ros.msg import Utterance
            self._pub = self.create_lifecycle_publisher(  # destroyed at cleanup: no handlers
                Utterance, p["utterance_topic"], 10,
                event_callbacks=PublisherEventCallbacks(use_default_callbacks=False))
        self._show_derived()
        self.guard.configured = True
        self.get_logger().info("configured")
        return TransitionCallbackReturn.SUCCESS

    def _asr_result_ready(self) -> None:
        """The embedded recognizer's text is in (on its thread): the worker polls the core
        at once instead of at its next period (the text's wait for the emotion path)."""
        worker = self.worker
        if worker is not None:
            worker.wake()

    def _fail(self, msg: str) -> TransitionCallbackReturn:
        return fail(self, msg, self._close_core)

    def _show_derived(self) -> None:
        """``perception.asr.enabled`` reads what runs: ``asr_type: embedded`` turns the
        recognizer on without that parameter, which then read False while it ran. While
        configured it says True; :meth:`_restore_derived` gives back the value it had (at
        cleanup, and before a configure reads it)."""
        name = "perception.asr.enabled"
        if self.core is not None and self.core.recognizer is not None and \
                self.has_parameter(name) and not self.get_parameter(name).value:
            self.set_parameters([Parameter(name, value=True)])
            self._derived[name] = False

    def _restore_derived(self) -> None:
        if self._derived:
            derived, self._derived = self._derived, {}
            self.set_parameters([Parameter(k, value=v) for k, v in derived.items()])

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        p = self.p

        def qos(reliability: str, depth: int) -> QoSProfile:
            return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                              reliability=(ReliabilityPolicy.RELIABLE if reliability == "reliable"
                                           else ReliabilityPolicy.BEST_EFFORT))
        cam, mic, asr_qos = (qos(p["image_reliability"], 5), qos(p["audio_reliability"], 100),
                             qos(p["asr_reliability"], ASR_DEPTH))
        from sensor_msgs.msg import CompressedImage, Image
        if p["image_transport"] == "raw":
            self._sub(Image, p["image_topic"], "image", cam)
        elif p["image_transport"] == "compressed":
            self._sub(CompressedImage, p["image_topic"] + "/compressed", "compressed", cam)
        if p["audio_msg"] in ("stamped", "raw"):
            from audio_common_msgs.msg import AudioData, AudioDataStamped, AudioInfo
            if p["audio_msg"] == "stamped":
                self._sub(AudioDataStamped, p["audio_topic"], "audio_stamped", mic)
            else:
                self._sub(AudioData, p["audio_topic"], "audio", mic)
            self._sub(AudioInfo, p["audio_info_topic"], "audio_info", mic)
        asr = p["asr_type"]
        if asr == "transcript":
            from erc_ros.msg import Transcript
            self._sub(Transcript, p["asr_topic"], "transcript", asr_qos)
        elif asr == "live_speech":
            from hri_msgs.msg import LiveSpeech
            self._sub(LiveSpeech, p["asr_topic"], "live_speech", asr_qos)
        elif asr == "string":
            from std_msgs.msg import String
            self._sub(String, p["asr_topic"], "string", asr_qos)
        elif asr == "hri_voices":
            from hri_msgs.msg import IdsList, LiveSpeech

            gaps = self._gaps["live_speech"] = SequenceGaps(self.p["diagnostics_window"])

            def add(vid: str):
                topic = f"/humans/voices/{vid}/speech"

                def cb(m, info, topic=topic):
                    gaps.add(info, self.now())
                    self._enqueue("live_speech", m, topic)
                sub = tracked.subscription(  # destroyed while the executor spins
                    self, LiveSpeech, topic, cb, asr_qos)
                gaps.existing(i.endpoint_gid
                              for i in self.get_publishers_info_by_topic(sub.topic_name))
                return sub
            self._voices = voices = TrackedIds(
                "voice", p["max_voices"], "max_voices", self.health, add,
                lambda vid, sub: self.destroy_subscription(sub))
            self._subs.append(tracked.subscription(
                self, IdsList, "/humans/voices/tracked", lambda m: voices.update(m.ids),
                asr_qos))
        self.worker.start()
        self._active = True
        self.get_logger().info("active: " + ", ".join(
            f"{s.topic_name} ({s.msg_type.__name__})" for s in self._subs))
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        subs = len(self._subs) + (len(self._voices) if self._voices is not None else 0)
        self._unsubscribe()
        if self.worker:
            self.worker.stop()
        queued = self.worker.depth() if self.worker else 0
        self.get_logger().info(f"deactivated: {subs} subscriptions destroyed; {queued} queued "
                               f"inputs wait for the next activate")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._unsubscribe()
        queued = 0
        if self.worker:
            self.worker.stop()
            queued = self.worker.depth()
        recognizer = self.core is not None and self.core.recognizer is not None
        if self._pub is not None:
            self.destroy_lifecycle_publisher(self._pub)
            self._pub = None
        self._close_core()
        self.ingest = self.worker = None
        self.guard.configured = False
        self._restore_derived()
        process.release_memory()
        self.get_logger().info(
            "cleaned up: perception core" + (" and embedded recognizer" if recognizer else "")
            + f" released, {queued} queued inputs dropped")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """SIGINT / SIGTERM (the process's main loop makes this transition) or ``ros2
        lifecycle set ... shutdown``. Active: no more input is taken; what was taken is fed
        to the core, the core is flushed (the speech in progress closed, the recognizer's
        accepted segments waited for) and every utterance is handed on and published, all
        within ``shutdown_timeout``; then the recognizer's thread is joined."""
        self._unsubscribe()
        deadline = time.monotonic() + self.get_parameter("shutdown_timeout").value

        def left() -> float:
            return max(0.0, deadline - time.monotonic())
        drained = True
        if self._active and self.worker is not None and self.core is not None:
            self._active = False
            rec = self.core.recognition
            asr = rec.worker if rec is not None else None
            self.get_logger().info(
                f"shutting down: finishing {self.worker.depth()} queued inputs"
                + (f" and {asr.pending()} speech segments the recognizer accepted"
                   if asr is not None else "")
                + (" and the speech in progress" if self.core.vad.in_speech else "")
                + f" (at most {self.get_parameter('shutdown_timeout').value:g} s)")
            before = self.health.counts["utterances"]
            drained = self.worker.stop(timeout=left(), drain=True)
            if drained:
                try:
                    for utt in self.core.flush(asr_timeout=left()):
                        self.hand_off(utt)
                except Exception as err:  # still free what the node holds
                    self.health.count("errors.shutdown")
                    self.get_logger().error(f"shutdown flush failed: {err!r}")
            else:
                self.get_logger().warning("shutdown: the input worker is still busy after "
                                          "shutdown_timeout; the core is not flushed")
            unfinished = rec.counters["unfinished"] if asr is not None else 0
            self.get_logger().info(
                f"shut down: {self.health.counts['utterances'] - before} utterances "
                f"handed on while shutting down"
                + (f", {unfinished} without text (the recognizer ran out of time)"
                   if unfinished else ""))
        else:
            self.get_logger().info("shut down: nothing to finish (the node was not active)")
        if self.worker:
            self.worker.stop()
        # reliable subscribers acknowledge the last utterances and transcripts
        pubs = [self._pub] if self._pub is not None else []
        if self._asr_out is not None:
            pubs += [self._asr_out.transcripts, *list(self._asr_out.voices.values())]
        wait_acked(pubs, min(1.0, left()) if drained else 0.0)
        self._close_core(join_timeout=max(left(), 2.0))
        return TransitionCallbackReturn.SUCCESS

    def _close_core(self, join_timeout: float = 30.0) -> None:
        """Free the core (the embedded recognizer's thread: segments still waiting are
        dropped, the one being transcribed is finished; a flush comes first where they
        matter) and the ASR publishers."""
        if self._asr_out is not None:
            self._asr_out.destroy()
            self._asr_out = None
        if self.core is not None and not self.core.close(timeout=join_timeout,
                                                         drop_pending=True):
            self.get_logger().warning(
                f"the embedded recognizer's thread is still transcribing after "
                f"{join_timeout:g} s")
        self.core = None

    # -- subscriptions (callbacks only enqueue) ------------------------------------------
    def _sub(self, cls, topic: str, kind: str, qos) -> None:
        gaps = self._gaps[kind] = SequenceGaps(self.p["diagnostics_window"])

        def cb(msg, info, kind=kind, topic=topic):
            gaps.add(info, self.now())
            self._enqueue(kind, msg, topic)
        sub = tracked.subscription(self, cls, topic, cb, qos)  # destroyed at deactivate
        gaps.existing(i.endpoint_gid for i in self.get_publishers_info_by_topic(sub.topic_name))
        self._subs.append(sub)
        param = {"image": "image_reliability", "compressed": "image_reliability",
                 "audio": "audio_reliability", "audio_stamped": "audio_reliability",
                 "audio_info": "audio_reliability"}.get(kind, "asr_reliability")
        self._watch[kind] = InputWatch(
            kind, sub.topic_name, KINDS[kind], streaming=kind in STREAMS,
            reliable=qos.reliability == ReliabilityPolicy.RELIABLE, reliability_param=param,
            hint=TYPE_HINTS.get(kind, ""))

    @property
    def _voice_subs(self) -> dict[str, Any]:
        """asr_type hri_voices: the LiveSpeech subscription of each tracked voice (ROS4HRI:
        /humans/voices/tracked is followed by :class:`TrackedIds`, at most ``max_voices``;
        an id that cannot be a topic name is refused as ``refused.voice_id``)."""
        return dict(self._voices.items) if self._voices is not None else {}

    def _unsubscribe(self) -> None:
        self._watch = {}
        self._gaps = {}
        for s in self._subs:
            self.destroy_subscription(s)
        self._subs = []
        if self._voices is not None:
            self._voices.close()
            self._voices = None

    def now(self) -> float:
        return self.get_clock().now().nanoseconds / 1e9

    def _enqueue(self, kind: str, msg, topic: str) -> None:
        self.health.count("received")  # taken from DDS (queued, or dropped if the queue is full)
        now = self.now()
        watch = self._watch.get(kind)
        if watch is not None:
            header = getattr(msg, "header", None)
            watch.arrived(now, convert.time_to_float(header.stamp) if header else None)
        self.worker.put((kind, msg, now, topic, time.perf_counter()))

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
                self.get_logger().error(f"{kind} input failed: {err!r}",
                                        throttle_duration_sec=5.0)
                continue
            if ok and kind in ("transcript", "live_speech", "string"):
                stamp = final_stamp(kind, msg, receipt)
                if stamp is not None:
                    self._final_arrivals[round(stamp, 6)] = arrival
                    if len(self._final_arrivals) > 512:
                        self._final_arrivals.pop(next(iter(self._final_arrivals)))
        self._poll()

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
        arrival = utt.asr_ready  # the embedded recognizer's text was ready
        if arrival is not None:
            self._asr_lag.done(utt.end)
        if self._asr_out is not None:
            try:
                self._asr_out.publish(utt, self.now())
            except Exception as err:  # never at the cost of the utterance's estimate
                self.health.count("errors.asr_publish")
                self.get_logger().error(f"publishing the recognized text failed: {err!r}",
                                        throttle_duration_sec=5.0)
        if arrival is None and utt.final_stamp is not None:
            arrival = self._final_arrivals.pop(round(utt.final_stamp, 6), None)
        if arrival is not None:  # final ASR result received -> utterance ready
            self.health.latency("final_to_utterance", (time.perf_counter() - arrival) * 1e3)
        self.health.count("utterances")
        if self.on_utterance is not None:
            self.on_utterance(utt, arrival)
        if self.p["publish_utterances"] and self._pub is not None:
            try:
                self._pub.publish(emotion_msgs.utterance_to_msg(utt))
                self.published += 1
            except Exception as err:
                self.health.refuse("utterance_publish", str(err))

    def publish_diagnostics(self) -> None:
        if self._diag_pub is None:
            return
        if self._asr_out is not None:
            self._asr_out.publish_tracked(self.now())
        extra: dict[str, Any] = {}
        if self.core is not None:
            try:
                extra["core"] = self.core.stats()
            except Exception:
                pass
        depth = {"input": (self.worker.depth(), self.worker.capacity)} if self.worker else {}
        problems = self._problems(extra)
        st = to_status(f"{self.get_name()}: utterances", "erc_ros", self.health, extra, depth,
                       problems)
        self._diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), [st]))

    def _problems(self, extra: dict[str, Any]) -> list:
        """What the node fails at now (:func:`erc_ros.ros.input_health.input_problems`);
        their figures go into ``extra``."""
        if self.ingest is None:
            return []

        def publishers(topic: str) -> list[tuple[str, bool]]:
            return [(i.topic_type, i.qos_profile.reliability == ReliabilityPolicy.RELIABLE)
                    for i in self.get_publishers_info_by_topic(topic)]
        return input_problems(self._watch, self._gaps, self.ingest, self._asr_lag, publishers,
                              self.now(), self.p,
                              bool(self.get_parameter("use_sim_time").value), self.health,
                              ASR_DEPTH, extra)

def main(argv=None) -> int:
    return run_node(UtteranceNode, argv)


if __name__ == "__main__":
    sys.exit(main())
