"""The nodes over real rclpy, in process, driven through /clock with use_sim_time.

- bad input to the running nodes (malformed / unknown-encoding images, mp3-coded audio,
  reversed stamps, empty transcripts, a 50 Hz flood of transcripts): the nodes stay up,
  /diagnostics names the refused input and its reason, and every valid utterance still gets
  exactly one estimate;
- ROS4HRI input (IdsList + per-voice LiveSpeech, unstamped AudioData + AudioInfo): the voice
  id becomes the speaker, and an hri_msgs/Expression is published in its namespace with the
  utterance end as stamp;
- the lifecycle: a missing or tampered model directory makes configure fail with a clear log
  and an ERROR on /diagnostics;
- the face-expression expert on the generated conversation's real faces: its distribution in
  the EmotionEstimate and an hri_msgs/Expression per face, a defined status with the camera
  off or the expert off, and the fused result identical in all three;
- the voice expert on real speech (RAVDESS actors): its reading (or why not) in every
  EmotionEstimate, counted on /diagnostics, and /humans/voices/<speaker>/expression carrying
  either the voice expert's reading or the fused estimate, never both.
"""
from __future__ import annotations

import math
import shutil
import threading
import time

import numpy as np
import pytest
import rclpy
from rclpy.executors import MultiThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

from _ros_support import Collector, wait_for
from core_support import ravdess_conversation
from erc_ros.ros import convert, emotion_msgs
from erc_ros.ros.composed import ComposedPipeline
from erc_ros.ros.emotion_node import EmotionNode

pytestmark = pytest.mark.ros
RELIABLE = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=500,
                      reliability=ReliabilityPolicy.RELIABLE)
NO_DIARIZATION = [Parameter("perception.diarization.enabled", value=False),
                  Parameter("perception.diarization.warmup", value=False)]




@pytest.fixture(scope="module")
def conversation():
    from erc_ros.synth import conversation as gen
    lines = gen.parse_script("A [joy]: What a lovely surprise to see you here today!\n"
                             "B [anger]: I have waited for almost an hour in the cold rain.\n")
    return gen.build(lines, seed=1)


class Rig:
    """Composed nodes + a driver node on one executor spinning in a thread."""

    def __init__(self, model, utterance_params, pubs, emotion_params=()):
        sim = Parameter("use_sim_time", value=True)
        self.comp = ComposedPipeline([sim, *NO_DIARIZATION, *utterance_params],
                                     [sim, Parameter("model_dir", value=str(model)),
                                      Parameter("prepare", value=True),
                                      Parameter("diagnostics_period", value=0.2),
                                      *emotion_params])
        self.node = rclpy.create_node("test_driver")
        from diagnostic_msgs.msg import DiagnosticArray
        from erc_ros.msg import EmotionEstimate
        from rosgraph_msgs.msg import Clock
        self.clock_pub = self.node.create_publisher(Clock, "/clock", 10)
        self.pubs = {topic: self.node.create_publisher(cls, topic, RELIABLE)
                     for topic, cls in pubs.items()}
        self.estimates, self.diags = Collector(), Collector()
        self.node.create_subscription(EmotionEstimate, "/erc_ros/emotion", self.estimates,
                                      RELIABLE)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diags, 50)
        self.ex = MultiThreadedExecutor(num_threads=3)
        for n in [*self.comp.nodes, self.node]:
            self.ex.add_node(n)
        self.thread = threading.Thread(target=self.ex.spin, daemon=True)
        self.thread.start()
        self.clock(50.0)
        assert self.comp.start()
        for topic in set(pubs) - {"/erc_ros/ground_truth"}:  # discovery
            assert wait_for(lambda t=topic: self.pubs[t].get_subscription_count() > 0, 10), \
                topic

    def clock(self, t: float) -> None:
        from rosgraph_msgs.msg import Clock
        self.now = t
        self.clock_pub.publish(Clock(clock=convert.float_to_time(t)))

    def ticked_diag(self, name_part: str, dt: float = 0.1) -> dict:
        """Move the simulated clock on by ``dt``, then :meth:`diag_values`: /diagnostics runs
        on the nodes' clock, which stops with the conversation, so the newest message can
        predate the last estimate until the clock ticks again."""
        self.clock(self.now + dt)
        return self.diag_values(name_part)

    def publish(self, topic, msg, t=None) -> None:
        if t is not None:
            self.clock(t)
        self.pubs[topic].publish(msg)
        time.sleep(0.002)

    def diag_values(self, name_part: str) -> dict:
        for arr in reversed(self.diags.snapshot()):
            for st in arr.status:
                if name_part in st.name:
                    return {"level": st.level, "message": st.message,
                            **{kv.key: kv.value for kv in st.values}}
        return {}

    def close(self) -> None:
        self.ex.shutdown(timeout_sec=2.0)
        self.comp.destroy()
        self.node.destroy_node()


def _conversation_messages(conv, t0: float):
    from erc_ros.bags.make_bag import bag_messages
    return list(bag_messages(conv, fps=2.0, t0=t0))


def test_bad_input_is_refused_reported_and_valid_utterances_get_one_estimate(
        ros, model, conversation):
    from audio_common_msgs.msg import AudioDataStamped, AudioInfo
    from erc_ros.msg import Transcript
    from sensor_msgs.msg import CompressedImage
    from std_msgs.msg import String
    rig = Rig(model, [Parameter("image_transport", value="compressed"),
                      Parameter("image_reliability", value="reliable")],
              {"/audio": AudioDataStamped, "/audio_info": AudioInfo,
               "/camera/image_raw/compressed": CompressedImage,
               "/erc_ros/transcript": Transcript, "/erc_ros/ground_truth": String})
    try:
        t0 = 100.0
        # 1. Garbage before the conversation: an undecodable jpeg, mp3-coded audio.
        rig.publish("/camera/image_raw/compressed",
                    CompressedImage(format="jpeg", data=b"\xff\xd8 not really a jpeg"), t0 - 5)
        rig.publish("/audio_info", AudioInfo(channels=1, sample_rate=16000,
                                             sample_format="S16LE", coding_format="mp3"))
        time.sleep(0.2)
        rig.publish("/audio", convert.pcm16_to_audio_msg(
            np.frombuffer(b"ID3\x03\x00" * 640, np.int16), t0 - 4.9))
        # Empty and reversed-stamp transcripts, and a 50 Hz flood of partials + empty finals.
        bad = convert.event_to_transcript(
            __import__("erc_ros.core.types", fromlist=["x"]).TranscriptEvent(
                stamp=t0 - 4, text="backwards", start=t0 - 4.0, end=t0 - 4.5))
        bad.start, bad.end = convert.float_to_time(t0 - 4.0), convert.float_to_time(t0 - 4.5)
        rig.publish("/erc_ros/transcript", bad)
        from erc_ros.core.types import TranscriptEvent
        for k in range(100):  # 2 s at 50 Hz
            t = t0 - 3.5 + k * 0.02
            rig.publish("/erc_ros/transcript", convert.event_to_transcript(TranscriptEvent(
                stamp=t, text="" if k % 10 == 0 else f"um {k}", is_final=k % 10 == 0)), t)
        # 2. The real conversation, audio format now correct.
        rig.publish("/audio_info", convert.audio_info_msg(), t0 - 1.0)
        msgs = _conversation_messages(conversation, t0)
        n_img = 0
        for topic, t, msg in msgs:
            if topic == "/camera/image_raw/compressed":
                n_img += 1
                if n_img == 3:  # one more malformed image mid-conversation
                    rig.publish(topic, CompressedImage(format="png", data=b"\x89PNG trunc"), t)
                    continue
            rig.publish(topic, msg, t)
        rig.clock(msgs[-1][1] + 5.0)
        assert wait_for(lambda: len(rig.estimates) >= 2, 60), len(rig.estimates)
        time.sleep(1.0)
        ests = rig.estimates.snapshot()
        texts = [e.text for e in ests]
        assert texts == [t.text for t in conversation.turns], texts  # exactly one each
        for est, turn in zip(ests, conversation.turns):
            assert abs(convert.time_to_float(est.header.stamp) - (t0 + turn.end)) < 0.5
        # The nodes are up and say what they refused, and why.
        assert wait_for(lambda: "refused.audio_coding" in rig.diag_values("utterances"), 5)
        d = rig.diag_values("utterances")
        for reason in ("image_decode", "audio_coding"):
            assert int(d.get(f"refused.{reason}", 0)) >= 1, d
        assert any(k.startswith("refused.") and k not in ("refused.image_decode",
                                                          "refused.audio_coding")
                   for k in d), d  # the reversed stamps
        assert d["level"] == b"\x01"  # WARN
        assert wait_for(lambda: "latency.processing.p95_ms" in rig.ticked_diag("emotion", 0.25),
                        10), rig.diag_values("emotion")
        e = rig.diag_values("emotion")
        # backend auto on a CPU machine with onnxruntime: the model was exported on configure
        assert e["model"] == "tiny-test" and e["backend"] == "onnxruntime"
        assert "queue.utterances" in e
    finally:
        rig.close()


def test_ros4hri_voices_and_expression(ros, model, conversation):
    from audio_common_msgs.msg import AudioData, AudioInfo
    from hri_msgs.msg import Expression, IdsList, LiveSpeech
    from sensor_msgs.msg import Image
    rig = Rig(model, [Parameter("image_transport", value="raw"),
                      Parameter("image_reliability", value="reliable"),
                      Parameter("audio_msg", value="raw"),
                      Parameter("asr_type", value="hri_voices")],
              {"/audio": AudioData, "/audio_info": AudioInfo,
               "/humans/voices/tracked": IdsList, "/camera/image_raw": Image},
              [Parameter("voice_expression", value="fused")])  # the fused estimate's topic
    exprs = Collector()
    rig.node.create_subscription(Expression, "/humans/voices/anna/expression", exprs, 10)
    speech = rig.node.create_publisher(LiveSpeech, "/humans/voices/anna/speech", RELIABLE)
    try:
        t0 = 200.0
        rig.publish("/audio_info", convert.audio_info_msg(), t0)
        rig.publish("/humans/voices/tracked", IdsList(ids=["anna"]))
        # raw camera frames in an encoding nobody handles, and one with too few bytes
        rig.publish("/camera/image_raw", Image(height=4, width=4, encoding="32FC1", step=16,
                                               data=b"\x00" * 64))
        rig.publish("/camera/image_raw", Image(height=480, width=640, encoding="bgr8",
                                               step=1920, data=b"\x00" * 1000))
        assert wait_for(lambda: speech.get_subscription_count() > 0, 10)
        pcm = np.clip(np.rint(conversation.audio * 32767), -32768, 32767).astype("<i2")
        turn = conversation.turns[0]
        n = 1600
        for i in range(0, int((turn.end + 0.3) * 16000), n):
            t = t0 + (i + n) / 16000  # raw AudioData is stamped at receipt (clock time)
            rig.publish("/audio", AudioData(data=pcm[i:i + n].tobytes()), t)
            time.sleep(0.01)  # a microphone's pace (5x real time), not a burst
        end_i = i + n
        speech.publish(LiveSpeech(final=turn.text, confidence=0.9, locale="en_US"))
        silence = np.zeros(n, "<i2").tobytes()
        for k in range(30):  # the microphone goes on (silence) after the final result
            end_i += n
            rig.publish("/audio", AudioData(data=silence), t0 + end_i / 16000)
            time.sleep(0.01)
        assert wait_for(lambda: len(rig.estimates) >= 1 and len(exprs) >= 1, 30), (
            rig.comp.utterance.health.snapshot(), rig.comp.utterance.core.stats())
        est = rig.estimates.snapshot()[0]
        assert est.speaker_id == "anna", (est, rig.comp.utterance.core.stats()) and est.text == turn.text
        expr = exprs.snapshot()[0]
        assert expr.header.stamp == est.header.stamp  # the utterance end, not publish time
        assert abs(expr.valence - est.valence) < 1e-6 and abs(expr.confidence -
                                                                 est.confidence) < 1e-6
        assert len(rig.estimates) == 1
        assert wait_for(lambda: "refused.image_encoding" in rig.diag_values("utterances"), 5)
        d = rig.diag_values("utterances")
        assert d["refused.image_encoding"] == "1" and d["refused.image_decode"] == "1", d
        assert "refused.audio_rate" not in d and "refused.stamp" not in d, d
    finally:
        rig.close()


def test_lifecycle_refuses_missing_and_tampered_models(ros, model, tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    diags = Collector()
    watcher = rclpy.create_node("diag_watcher")
    watcher.create_subscription(DiagnosticArray, "/diagnostics", diags, 10)
    ex = MultiThreadedExecutor(num_threads=2)
    ex.add_node(watcher)
    threading.Thread(target=ex.spin, daemon=True).start()
    try:
        node = EmotionNode(parameter_overrides=[
            Parameter("model_dir", value=str(tmp_path / "nope")),
            Parameter("autostart", value=False)])
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert "nope" in node.health.error
        node.destroy_node()
        bad = tmp_path / "tampered"
        shutil.copytree(model, bad)
        weights = sorted(bad.glob("*.safetensors"))[0]
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
        node = EmotionNode(parameter_overrides=[Parameter("model_dir", value=str(bad))])
        ex.add_node(node)
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert weights.name in node.health.error
        assert wait_for(lambda: any(st.level == DiagnosticStatus.ERROR and
                                    weights.name in st.message
                                    for a in diags.snapshot() for st in a.status), 10)
        # a good model configures and activates; cleanup frees it
        node2 = EmotionNode(name="emotion_ok",
                            parameter_overrides=[Parameter("model_dir", value=str(model))])
        assert node2.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node2.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert node2.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert node2.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
        assert node2.pipeline is None
        node2.destroy_node()
        ex.remove_node(node)
        node.destroy_node()
    finally:
        ex.shutdown(timeout_sec=1.0)
        watcher.destroy_node()


def test_every_parameter_is_declared_with_a_description(ros):
    from erc_ros.core.config import PerceptionConfig
    from erc_ros.ros.utterance_node import PARAMETERS, UtteranceNode
    node = UtteranceNode(name="params_check", parameter_overrides=[
        Parameter("autostart", value=False),
        Parameter("perception.vad.threshold", value=0.6)])
    try:
        names = list(PARAMETERS) + [f"perception.{k}" for k, v, _ in PerceptionConfig.describe()
                                    if isinstance(v, (bool, int, float, str))]
        descs = node.describe_parameters(names)
        assert all(d.description for d in descs), [d.name for d in descs if not d.description]
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.core.config.vad.threshold == 0.6  # the override reached the core
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    finally:
        node.destroy_node()


def test_composed_skips_face_crops_nobody_uses(ros, tmp_path):
    """A text-only model in the composed process, utterances not published: the utterance
    node makes no face crops (latency path); publishing utterances keeps them."""
    from erc_ros.models.artefact import save_model_dir
    from erc_ros.models.erc_model import ErcModelConfig, build_model, tiny_text_config

    text_only = build_model(ErcModelConfig(model_id="tiny-text", text=tiny_text_config(),
                                           trained_modalities=("text",)))
    save_model_dir(text_only, tmp_path / "text")
    # the face-expression expert (on by default) needs the speaker's face, not the crops
    for publish, expression, faces, crops in ((False, False, False, True),
                                              (True, False, True, True),
                                              (False, True, True, False),
                                              (True, True, True, True)):
        comp = ComposedPipeline([*NO_DIARIZATION, Parameter("publish_utterances", value=publish),
                                 Parameter("perception.faces.expression", value=expression)],
                                [Parameter("model_dir", value=str(tmp_path / "text")),
                                 Parameter("backend", value="torch")])
        try:
            assert comp.start()
            assert comp.utterance.core.config.faces.enabled is faces
            assert comp.utterance.core.config.faces.crops is crops
            assert (comp.utterance.core.frames is not None) is faces
        finally:
            comp.destroy()
    # eval-bag's offline core follows the same rule (an explicit setting wins).
    from erc_ros.evaluation.eval_bag import make_core, make_pipeline

    pipe = make_pipeline(str(tmp_path / "text"), backend="torch")
    off = ("perception.faces.expression=false",)
    assert make_core(sets=off, pipeline=pipe).config.faces.enabled is False
    assert make_core(sets=(*off, "perception.faces.enabled=true"),
                     pipeline=pipe).config.faces.enabled
    faces = make_core(pipeline=pipe).config.faces
    assert faces.enabled and not faces.crops  # the expert's faces, no crops


def test_face_expert_beside_the_fused_estimate(ros, tmp_path, conversation):
    """The generated conversation (real LFW faces, speech, timed transcripts) through the
    composed nodes with a text-only model, three ways: expert on, expert off, camera off.
    Expert on: each estimate carries the face expert's distribution, and an hri_msgs/Expression
    with valence/arousal comes on /humans/faces/<speaker>/expression stamped with the
    utterance's end. Expert off / camera off: a status that says so, nothing else. The fused
    label and probabilities are the same in all three (the face is not fused)."""
    from audio_common_msgs.msg import AudioDataStamped, AudioInfo
    from erc_ros.models.artefact import save_model_dir
    from erc_ros.models.erc_model import ErcModelConfig, build_model, tiny_text_config
    from erc_ros.msg import EmotionEstimate, Transcript
    from hri_msgs.msg import Expression
    from sensor_msgs.msg import CompressedImage

    text_only = build_model(ErcModelConfig(model_id="tiny-text", text=tiny_text_config(),
                                           trained_modalities=("text",)))
    save_model_dir(text_only, tmp_path / "text")
    t0 = 300.0
    msgs = _conversation_messages(conversation, t0)
    speaker_at = {round(t0 + tr.start, 3): tr.speaker for tr in conversation.turns}
    for topic, _, msg in msgs:  # the ASR names the speaker (diarization is off here)
        if topic == "/erc_ros/transcript":
            msg.speaker_hint = speaker_at[round(convert.time_to_float(msg.start), 3)]
    runs = {}
    for name, camera, expression in (("on", True, True), ("off", True, False),
                                     ("no_camera", False, True)):
        pubs = {"/audio": AudioDataStamped, "/audio_info": AudioInfo,
                "/erc_ros/transcript": Transcript}
        if camera:
            pubs["/camera/image_raw/compressed"] = CompressedImage
        rig = Rig(tmp_path / "text",
                  [Parameter("image_transport", value="compressed" if camera else "none"),
                   Parameter("image_reliability", value="reliable"),
                   Parameter("perception.faces.expression", value=expression)], pubs)
        faces = {s: Collector() for s in conversation.speakers}
        for s, col in faces.items():
            rig.node.create_subscription(Expression, f"/humans/faces/{s}/expression", col, 10)
        try:
            for topic, t, msg in msgs:
                if topic in rig.pubs:
                    rig.publish(topic, msg, t)
            rig.clock(msgs[-1][1] + 5.0)
            n = len(conversation.turns)
            assert wait_for(lambda: len(rig.estimates) >= n, 60), len(rig.estimates)
            if expression and camera:
                assert wait_for(lambda: sum(len(c) for c in faces.values()) >= n, 10)
            status = "seen" if expression and camera else (
                "disabled" if not expression else "no_camera")
            assert wait_for(lambda: rig.ticked_diag("emotion").get(f"face_status.{status}")
                            == str(n), 20)
            assert wait_for(lambda: rig.ticked_diag("utterances").get("core.counters.utterances")
                            == str(n), 20)
            time.sleep(0.5)
            runs[name] = (rig.estimates.snapshot(), {s: c.snapshot() for s, c in faces.items()},
                          rig.diag_values("utterances"), rig.diag_values("emotion"))
        finally:
            rig.close()
    ests, faces, d_utt, d_emo = runs["on"]
    assert len(ests) == len(conversation.turns)
    for est, turn in zip(ests, conversation.turns):
        assert est.face_status == EmotionEstimate.FACE_SEEN and est.face_count >= 1
        assert len(est.face_probabilities) == len(est.class_names)
        assert abs(sum(est.face_probabilities) - 1) < 1e-3
        assert est.face_label in est.class_names
        assert est.face_confidence == max(est.face_probabilities)
        assert -1 <= est.face_valence <= 1 and -1 <= est.face_arousal <= 1
        assert est.modalities == ["text"]  # the face is reported, not fused
        expr = [e for e in faces[turn.speaker] if e.header.stamp == est.header.stamp]
        assert len(expr) == 1, (turn.speaker, faces)  # one per utterance, stamped its end
        e = expr[0]
        assert e.expression == emotion_msgs.EXPRESSION_OF[est.face_label]
        assert abs(e.valence - est.face_valence) < 1e-6
        assert abs(e.arousal - est.face_arousal) < 1e-6
        assert abs(e.confidence - est.face_confidence) < 1e-6
    assert d_emo["face_status.seen"] == str(len(ests)) and d_emo["face_expressions"] == str(
        len(ests))
    assert d_utt["core.face_expression.enabled"] == "True"
    assert int(d_utt["core.face_expression.calls"]) >= 1
    assert "core.face_expression.latency_p95_ms" in d_utt
    assert d_utt["core.counters.utterances_face"] == str(len(ests))
    for name, status in (("off", "disabled"), ("no_camera", "no_camera")):
        other, other_faces, _, d = runs[name]
        assert [o.face_status for o in other] == [status] * len(ests)
        assert all(not len(o.face_probabilities) and o.face_label == "" and o.face_count == 0
                   for o in other)
        assert not any(other_faces.values())
        assert d[f"face_status.{status}"] == str(len(ests))
        # the fused result does not change with the face expert or the camera
        assert [(o.label, list(o.probabilities)) for o in other] == \
            [(e.label, list(e.probabilities)) for e in ests]


def test_voice_expert_beside_the_fused_estimate(ros, model, voice_model_dir):
    """Real speech (two RAVDESS actors; timed transcripts naming the speaker) through the
    composed nodes with the voice expert of the fixture's model, twice: voice_expression
    voice (the default), then fused. Every estimate carries the expert's word on its
    utterance's audio (ok with a distribution, or uncertain with a reason; never nothing),
    counted on /diagnostics per status and reason. /humans/voices/<speaker>/expression carries
    the voice expert's reading of each utterance it read (voice) or the fused estimate of
    each (fused), never both; the fused result is the same either way."""
    from audio_common_msgs.msg import AudioDataStamped, AudioInfo
    from erc_ros.core.types import VOICE_UNCERTAIN_REASONS
    from erc_ros.msg import EmotionEstimate, Transcript
    from hri_msgs.msg import Expression

    conv = ravdess_conversation()
    n = len(conv.turns)
    t0 = 400.0
    msgs = _conversation_messages(conv, t0)
    speaker_at = {round(t0 + tr.start, 3): tr.speaker for tr in conv.turns}
    for topic, _, msg in msgs:  # the ASR names the speaker (diarization is off here)
        if topic == "/erc_ros/transcript":
            msg.speaker_hint = speaker_at[round(convert.time_to_float(msg.start), 3)]
    runs = {}
    for mode in ("voice", "fused"):
        rig = Rig(model, [Parameter("image_transport", value="none"),
                          Parameter("perception.voice.model", value=str(voice_model_dir))],
                  {"/audio": AudioDataStamped, "/audio_info": AudioInfo,
                   "/erc_ros/transcript": Transcript},
                  [Parameter("voice_expression", value=mode)])
        voices = {s: Collector() for s in conv.speakers}
        for s, col in voices.items():
            rig.node.create_subscription(Expression, f"/humans/voices/{s}/expression", col, 10)
        try:
            for topic, t, msg in msgs:
                if topic in rig.pubs:
                    rig.publish(topic, msg, t)
            rig.clock(msgs[-1][1] + 5.0)
            assert wait_for(lambda: len(rig.estimates) >= n, 60), len(rig.estimates)
            assert wait_for(lambda: sum(int(v) for k, v in rig.ticked_diag("emotion").items()
                                        if k.startswith("voice_status.")) == n, 20)
            assert wait_for(lambda: rig.ticked_diag("utterances").get(
                "core.voice_expression.calls") == str(n), 20)
            time.sleep(0.5)  # the last Expressions
            runs[mode] = (rig.estimates.snapshot(), {s: c.snapshot() for s, c in voices.items()},
                          rig.diag_values("utterances"), rig.diag_values("emotion"))
        finally:
            rig.close()
    ests, voices, d_utt, d_emo = runs["voice"]
    assert len(ests) == n
    read = [e for e in ests if e.voice_status == EmotionEstimate.VOICE_OK]
    assert read, [(e.voice_status, e.voice_reason) for e in ests]  # speech it learned from
    for est, turn in zip(ests, conv.turns):
        assert est.voice_status in (EmotionEstimate.VOICE_OK, EmotionEstimate.VOICE_UNCERTAIN)
        mine = [e for e in voices[turn.speaker] if e.header.stamp == est.header.stamp]
        if est.voice_status == EmotionEstimate.VOICE_OK:
            assert est.voice_reason == ""
            assert len(est.voice_probabilities) == len(est.class_names)
            assert abs(sum(est.voice_probabilities) - 1) < 1e-3
            assert est.voice_label in est.class_names
            assert est.voice_confidence == max(est.voice_probabilities)
            assert -1 <= est.voice_valence <= 1 and -1 <= est.voice_arousal <= 1
            assert len(mine) == 1, (turn.speaker, voices)  # one per utterance, stamped its end
            e = mine[0]
            assert e.expression == emotion_msgs.EXPRESSION_OF[est.voice_label]
            assert abs(e.valence - est.voice_valence) < 1e-6
            assert abs(e.arousal - est.voice_arousal) < 1e-6
            assert abs(e.confidence - est.voice_confidence) < 1e-6
        else:
            assert est.voice_reason in VOICE_UNCERTAIN_REASONS
            assert not len(est.voice_probabilities) and est.voice_label == ""
            assert math.isnan(est.voice_confidence) and math.isnan(est.voice_valence)
            assert mine == []  # nothing read, nothing published
    # the voice topics carry the voice expert's readings, nothing else (no fused estimate)
    assert sum(len(v) for v in voices.values()) == len(read)
    assert d_emo.get("voice_expressions") == str(len(read))
    for status in ("ok", "uncertain"):
        got = sum(e.voice_status == status for e in ests)
        assert d_emo.get(f"voice_status.{status}", "0") == str(got), d_emo
    for reason in VOICE_UNCERTAIN_REASONS:
        got = sum(e.voice_reason == reason for e in ests)
        assert d_emo.get(f"voice_uncertain.{reason}", "0") == str(got), d_emo
        assert d_utt[f"core.voice_expression.uncertain.{reason}"] == str(got)
    assert d_utt["core.voice_expression.enabled"] == "True"
    assert d_utt["core.voice_expression.errors"] == "0"
    assert "core.voice_expression.latency_p95_ms" in d_utt
    assert d_utt["core.voice_expression.utterances.ok"] == str(len(read))
    # voice_expression fused: the fused estimate on the voice topics, one per estimate
    fused, fused_voices, _, d_fused = runs["fused"]
    assert all(e.voice_status in (EmotionEstimate.VOICE_OK, EmotionEstimate.VOICE_UNCERTAIN)
               for e in fused)
    assert [(e.label, list(e.probabilities)) for e in fused] == \
        [(e.label, list(e.probabilities)) for e in ests]
    assert "voice_expressions" not in d_fused
    for est, turn in zip(fused, conv.turns):
        mine = [e for e in fused_voices[turn.speaker] if e.header.stamp == est.header.stamp]
        assert len(mine) == 1 and abs(mine[0].valence - est.valence) < 1e-6
        assert abs(mine[0].confidence - est.confidence) < 1e-6
    assert sum(len(v) for v in fused_voices.values()) == n


def test_fused_and_face_expressions_never_share_a_topic(ros, model):
    """expression_namespace faces would publish the fused estimate on the face expert's
    /humans/faces/<speaker>/expression: configure refuses it, saying how to resolve it."""
    ns = Parameter("expression_namespace", value="faces")
    node = EmotionNode(name="emotion_ns", parameter_overrides=[
        Parameter("model_dir", value=str(model)), Parameter("backend", value="torch"),
        Parameter("autostart", value=False), ns])
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert "publish_face_expression" in node.health.error
    finally:
        node.destroy_node()
    node = EmotionNode(name="emotion_ns2", parameter_overrides=[
        Parameter("model_dir", value=str(model)), Parameter("backend", value="torch"),
        Parameter("autostart", value=False), ns,
        Parameter("publish_face_expression", value=False)])
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    finally:
        node.destroy_node()
