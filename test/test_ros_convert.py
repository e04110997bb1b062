"""Message conversion (erc_ros.ros.convert, erc_ros.ros.emotion_msgs): images in every
encoding we accept, audio, transcripts, utterances, estimates, Expression, and exact time
conversion."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CompressedImage, Image
from rclpy.serialization import deserialize_message, serialize_message

from erc_ros.core.errors import InputError
from erc_ros.core.types import AudioFormat, Estimate, TranscriptEvent, Utterance
from erc_ros.ros import convert, emotion_msgs


def _face_like(h=48, w=64):
    """A real image (a smooth colour gradient with a disc), not noise, so JPEG keeps it."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 90)], -1).astype(np.uint8)
    cv2.circle(img, (w // 2, h // 2), min(h, w) // 4, (250, 220, 180), -1)
    return img


def test_time_roundtrip_is_exact_for_sim_time_and_close_for_epoch():
    for sec, ns in [(0, 0), (0, 1), (12, 999_999_999), (3600 * 24 * 40, 123_456_789)]:
        t = Time(sec=sec, nanosec=ns)
        back = convert.float_to_time(convert.time_to_float(t))
        assert (back.sec, back.nanosec) == (sec, ns)
    t = Time(sec=1_700_000_000, nanosec=123_456_789)
    ns = convert.float_to_ns(convert.time_to_float(t))
    assert abs(ns - convert.time_to_ns(t)) <= 120  # float64 resolution at epoch times
    with pytest.raises(InputError):
        convert.float_to_time(float("nan"))
    assert convert.float_to_time(2.9999999999).sec in (2, 3)  # nanosec never reaches 1e9
    assert convert.float_to_time(2.9999999999).nanosec < 1_000_000_000


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "mono8"])
def test_image_roundtrip(encoding):
    rgb = _face_like()
    msg = convert.rgb_to_image(rgb, 1.5, "cam", encoding=encoding)
    msg = deserialize_message(serialize_message(msg), Image)
    frame = convert.image_to_frame(msg)
    assert frame.stamp == 1.5 and frame.frame_id == "cam"
    assert frame.image.shape == (48, 64, 3) and frame.image.dtype == np.uint8
    if encoding == "mono8":
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        assert np.array_equal(frame.image[..., 0], grey)
    else:
        assert np.array_equal(frame.image, rgb)


def test_image_with_row_padding_and_16bit_and_rgba():
    rgb = _face_like(10, 7)
    padded = np.zeros((10, 7 * 3 + 5), np.uint8)
    padded[:, :21] = rgb.reshape(10, 21)
    msg = Image(height=10, width=7, encoding="rgb8", step=26, data=padded.tobytes())
    assert np.array_equal(convert.image_to_rgb(msg), rgb)
    mono16 = (rgb[..., 0].astype(np.uint16) << 8)
    msg = Image(height=10, width=7, encoding="mono16", step=14, data=mono16.tobytes())
    assert np.array_equal(convert.image_to_rgb(msg)[..., 1], rgb[..., 0])
    rgba = np.concatenate([rgb, np.full((10, 7, 1), 255, np.uint8)], -1)
    msg = Image(height=10, width=7, encoding="rgba8", step=28, data=rgba.tobytes())
    assert np.array_equal(convert.image_to_rgb(msg), rgb)


def test_compressed_jpeg_and_png():
    rgb = _face_like()
    png = convert.compressed_to_rgb(convert.rgb_to_compressed(rgb, fmt="png"))
    assert np.array_equal(png, rgb)
    jpg = convert.compressed_to_rgb(convert.rgb_to_compressed(rgb, fmt="jpeg", quality=95))
    assert np.abs(jpg.astype(int) - rgb.astype(int)).mean() < 4


@pytest.mark.parametrize("make, reason", [
    (lambda: Image(height=48, width=64, encoding="rgb8", step=192, data=b"\x00" * 100),
     "image_decode"),
    (lambda: Image(height=2, width=2, encoding="32FC1", step=8, data=b"\x00" * 16),
     "image_encoding"),
    (lambda: Image(height=0, width=0, encoding="rgb8"), "image_decode"),
    (lambda: CompressedImage(format="jpeg", data=b"not a jpeg at all"), "image_decode"),
])
def test_bad_images_are_refused_with_a_reason(make, reason):
    with pytest.raises(InputError) as err:
        convert.image_to_frame(make())
    assert err.value.reason == reason


def test_audio_messages():
    from audio_common_msgs.msg import AudioData, AudioInfo
    pcm = (np.sin(np.arange(1600) / 5) * 8000).astype(np.int16)
    msg = convert.pcm16_to_audio_msg(pcm, 2.25, "mic")
    chunk = convert.audio_to_chunk(msg, AudioFormat())
    assert chunk.stamp == 2.25 and chunk.source == "mic"
    assert np.array_equal(np.frombuffer(chunk.data, "<i2"), pcm)
    raw = AudioData(data=pcm.tobytes())
    assert convert.audio_to_chunk(raw, AudioFormat(), stamp=1.0).stamp == 1.0
    with pytest.raises(InputError):
        convert.audio_to_chunk(raw, AudioFormat())
    assert convert.chunk_duration(3200, AudioFormat()) == pytest.approx(0.1)
    fmt = convert.audio_info_to_format(convert.audio_info_msg(AudioFormat(44100, 2)))
    assert (fmt.sample_rate, fmt.channels, fmt.sample_format) == (44100, 2, "S16LE")
    with pytest.raises(InputError) as err:
        convert.audio_info_to_format(AudioInfo(channels=1, sample_rate=16000,
                                               sample_format="S16LE", coding_format="MP3"))
    assert err.value.reason == "audio_coding"
    # every field checked when the AudioInfo comes, not when its audio does (issue 55)
    for kw, why in (({"sample_rate": 0}, "sample_rate is 0"), ({"channels": 0}, "channels is 0"),
                    ({"sample_rate": 4294967295}, "out of range"),
                    ({"sample_format": "S12LE"}, "unknown sample format")):
        info = AudioInfo(**{"channels": 1, "sample_rate": 16000, "sample_format": "S16LE",
                            "coding_format": "wave", **kw})
        with pytest.raises(InputError) as err:
            convert.audio_info_to_format(info)
        assert err.value.reason == "audio_format" and why in str(err.value), kw


def test_transcripts():
    from hri_msgs.msg import LiveSpeech
    from std_msgs.msg import String
    ev = TranscriptEvent(stamp=5.5, text="Hello there!", is_final=True, start=3.25, end=5.0,
                         confidence=0.75, speaker_hint="v1", locale="en_US", segment_id="s1")
    back = convert.transcript_to_event(convert.event_to_transcript(ev))
    assert back == ev
    untimed = convert.transcript_to_event(convert.event_to_transcript(
        TranscriptEvent(stamp=1.0, text="hi")))
    assert not untimed.timed
    bad = convert.event_to_transcript(ev)
    bad.start, bad.end = convert.float_to_time(5.0), convert.float_to_time(3.0)
    with pytest.raises(InputError) as err:
        convert.transcript_to_event(bad)
    assert err.value.reason == "stamp"
    ls = convert.live_speech_to_event(LiveSpeech(final="Yes.", confidence=0.5), 7.0, "anna")
    assert (ls.stamp, ls.text, ls.is_final, ls.speaker_hint) == (7.0, "Yes.", True, "anna")
    part = convert.live_speech_to_event(LiveSpeech(incremental="Ye"), 7.0)
    assert not part.is_final
    assert convert.live_speech_to_event(LiveSpeech(), 7.0) is None
    s = convert.string_to_event(String(data="ok then"), 9.0)
    assert (s.stamp, s.text, s.timed) == (9.0, "ok then", False)


def test_utterance_roundtrip_through_the_wire():
    from erc_ros.msg import Utterance as UtteranceMsg
    t = np.arange(16000) / 16000
    audio = (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    utt = Utterance(utterance_id="u1", conversation_id="c1", speaker_id="spk0", start=1.0,
                    end=2.0, text="I'm fine.", audio=audio, faces=[_face_like(32, 32)],
                    speaker_source="cluster", speaker_confidence=0.5, text_confidence=0.875,
                    locale="en_US", features={"speaker_embedding": np.ones(4, np.float32),
                                              "face_probabilities": np.full(7, 1 / 7, np.float32),
                                              "voice_probabilities": np.eye(7, dtype=np.float32)[4]},
                    face_status="seen", face_count=3, voice_status="ok")
    msg = deserialize_message(serialize_message(emotion_msgs.utterance_to_msg(utt)), UtteranceMsg)
    assert convert.time_to_float(msg.header.stamp) == 2.0
    assert msg.header.frame_id == ""  # a coordinate frame, not the conversation id
    assert (msg.has_text, msg.has_audio, msg.has_video) == (True, True, True)
    back = emotion_msgs.msg_to_utterance(msg)
    assert (back.utterance_id, back.conversation_id, back.speaker_id, back.start, back.end,
            back.text) == ("u1", "c1", "spk0", 1.0, 2.0, "I'm fine.")
    assert np.abs(back.audio - audio).max() < 1 / 32767 + 1e-6
    assert np.array_equal(back.faces[0], utt.faces[0])
    assert np.array_equal(back.features["speaker_embedding"], np.ones(4, np.float32))
    assert back.speaker_source == "cluster" and back.text_confidence == 0.875
    assert (back.face_status, back.face_count) == ("seen", 3)
    assert np.array_equal(back.features["face_probabilities"], np.full(7, 1 / 7, np.float32))
    assert (back.voice_status, back.voice_reason) == ("ok", "")
    assert np.array_equal(back.features["voice_probabilities"], np.eye(7, dtype=np.float32)[4])
    # the voice heard but not read: the reason travels, no probabilities
    unsure = Utterance("u", "c", "s", 0, 1, audio=audio, voice_status="uncertain",
                       voice_reason="too_quiet")
    msg = emotion_msgs.utterance_to_msg(unsure)
    assert (msg.voice_status, msg.voice_reason) == (msg.VOICE_UNCERTAIN, "too_quiet")
    back = emotion_msgs.msg_to_utterance(msg)
    assert (back.voice_status, back.voice_reason) == ("uncertain", "too_quiet")
    assert "voice_probabilities" not in back.features
    # a producer without the experts: no status, no probabilities
    plain = emotion_msgs.msg_to_utterance(
        emotion_msgs.utterance_to_msg(Utterance("u", "c", "s", 0, 1)))
    assert plain.face_status == "" and "face_probabilities" not in plain.features
    assert plain.voice_status == plain.voice_reason == ""
    assert "voice_probabilities" not in plain.features


def test_hostile_utterance_messages_are_refused_before_allocating():
    """Split mode: the emotion node takes erc_ros/Utterance from anyone on the graph."""
    from erc_ros.msg import Utterance as UtteranceMsg

    def msg(**kw):
        m = emotion_msgs.utterance_to_msg(Utterance(utterance_id="u", conversation_id="c",
                                               speaker_id="s", start=1.0, end=2.0, text="hi"))
        for k, v in kw.items():
            setattr(m, k, v)
        return m
    big_face = convert.rgb_to_image(np.zeros((1, 1, 3), np.uint8))
    big_face.width, big_face.height, big_face.step = 20000, 20000, 60000  # header only
    cases = {
        "sample_rate": msg(sample_rate=8000),
        "10 min of audio": msg(audio=np.zeros(16000 * 600, np.int16)),
        "1000 faces": msg(faces=[convert.rgb_to_image(np.zeros((2, 2, 3), np.uint8))] * 1000),
        "huge face": msg(faces=[big_face]),
        "1 MB of text": msg(text="a" * (1 << 20)),
        "long embedding": msg(speaker_embedding=np.zeros(5000, np.float32)),
        "reversed span": msg(start=convert.float_to_time(5.0)),
        "face probabilities, no face": msg(face_probabilities=np.ones(7, np.float32)),
        "3 face probabilities": msg(face_status="seen",
                                    face_probabilities=np.ones(3, np.float32)),
        "unknown face status": msg(face_status="x" * 1000),
        "voice probabilities, voice not read": msg(voice_status="uncertain",
                                                   voice_reason="undecided",
                                                   voice_probabilities=np.ones(7, np.float32)),
        "voice ok without probabilities": msg(voice_status="ok"),
        "3 voice probabilities": msg(voice_status="ok",
                                     voice_probabilities=np.ones(3, np.float32)),
        "unknown voice status": msg(voice_status="x" * 1000),
        "unknown voice reason": msg(voice_status="uncertain", voice_reason="x" * 1000),
        "a reason with voice ok": msg(voice_status="ok", voice_reason="too_short",
                                      voice_probabilities=np.ones(7, np.float32)),
        "1 MB speaker id": msg(speaker_id="s" * (1 << 20)),
        "1 MB conversation id": msg(conversation_id="c" * (1 << 20)),
        "1 MB locale": msg(locale="l" * (1 << 20)),
        "text confidence 5": msg(text_confidence=5.0),
        "infinite speaker confidence": msg(speaker_confidence=math.inf),
    }
    for name, m in cases.items():
        assert isinstance(m, UtteranceMsg)
        with pytest.raises(convert.ConversionError) as err:
            emotion_msgs.msg_to_utterance(m)
        assert err.value.reason in ("utterance", "image_too_large"), name
    assert emotion_msgs.msg_to_utterance(msg()).text == "hi"  # the plain one still converts


def test_estimate_and_expression():
    from erc_ros.msg import EmotionEstimate
    est = Estimate(utterance_id="u1", conversation_id="c1", speaker_id="anna", start=1.0,
                   end=2.5, label="joy", class_names=["neutral", "joy", "anger"],
                   probabilities=[0.25, 0.625, 0.125], valence=0.5, arousal=0.25,
                   modalities=["text", "audio"], modality_weights=[0.75, 0.25],
                   model_id="m", backend="torch", latency_ms=3.5, text="Yay",
                   text_probabilities=[0.5, 0.375, 0.125])
    msg = deserialize_message(serialize_message(emotion_msgs.estimate_to_msg(est, 12.0)),
                              EmotionEstimate)
    assert msg.label == "joy" and msg.confidence == 0.625
    assert convert.time_to_float(msg.header.stamp) == 2.5  # the utterance end, not now
    assert msg.end_to_end_latency_ms == 12.0
    assert msg.header.frame_id == ""  # a coordinate frame, not the conversation id
    back = emotion_msgs.msg_to_estimate(msg)
    assert (back.utterance_id, back.conversation_id, back.speaker_id) == ("u1", "c1", "anna")
    assert back.probabilities == [0.25, 0.625, 0.125] and back.modalities == ["text", "audio"]
    # the text sense's own reading travels beside the fused one (eval-bag --live scores it)
    assert back.text_probabilities == [0.5, 0.375, 0.125] and back.text_label == "neutral"
    expr = emotion_msgs.estimate_to_expression(est)
    assert expr.expression == "happy" and expr.confidence == 0.625
    assert (expr.valence, expr.arousal) == (0.5, 0.25)
    assert convert.time_to_float(expr.header.stamp) == 2.5
    assert expr.header.frame_id == ""  # the speaker is in the topic name, not a frame
    est.label = "Mad"
    assert emotion_msgs.estimate_to_expression(est).expression == "angry"
    est.probabilities = []
    assert not math.isnan(emotion_msgs.estimate_to_expression(est).confidence)


def test_estimate_carries_the_face_experts_own_result_beside_the_fused_one():
    from erc_ros.msg import EmotionEstimate
    names = ["neutral", "joy", "anger"]
    est = Estimate(utterance_id="u1", conversation_id="c1", speaker_id="anna", start=1.0,
                   end=2.5, label="joy", class_names=names, probabilities=[0.25, 0.625, 0.125],
                   face_status="seen", face_probabilities=[0.125, 0.125, 0.75], face_count=4,
                   face_valence=-0.5, face_arousal=0.75)
    msg = deserialize_message(serialize_message(emotion_msgs.estimate_to_msg(est)), EmotionEstimate)
    assert msg.label == "joy" and msg.face_label == "anger" and msg.face_confidence == 0.75
    assert (msg.face_status, msg.face_count) == (msg.FACE_SEEN, 4)
    assert list(msg.face_probabilities) == [0.125, 0.125, 0.75]
    back = emotion_msgs.msg_to_estimate(msg)
    assert back.face_label == "anger" and back.face_probabilities == [0.125, 0.125, 0.75]
    face = emotion_msgs.face_expression(est)
    assert face.expression == "angry" and face.confidence == 0.75
    assert (face.valence, face.arousal) == (-0.5, 0.75)
    assert convert.time_to_float(face.header.stamp) == 2.5  # the utterance end, not now
    # no face: the status says why, the rest is empty / NaN, and no Expression is made
    for status in ("no_face", "no_camera", "disabled"):
        none = Estimate("u", "c", "s", 0, 1, "joy", names, [0.25, 0.625, 0.125],
                        face_status=status)
        m = emotion_msgs.estimate_to_msg(none)
        assert m.face_status == status and m.face_label == "" and not len(m.face_probabilities)
        assert math.isnan(m.face_confidence) and math.isnan(m.face_valence)
        assert emotion_msgs.face_expression(none) is None


def test_estimate_carries_the_voice_experts_own_result_beside_the_fused_one():
    from erc_ros.msg import EmotionEstimate
    names = ["neutral", "joy", "anger"]
    est = Estimate(utterance_id="u1", conversation_id="c1", speaker_id="anna", start=1.0,
                   end=2.5, label="joy", class_names=names, probabilities=[0.25, 0.625, 0.125],
                   voice_status="ok", voice_probabilities=[0.75, 0.125, 0.125],
                   voice_valence=0.0625, voice_arousal=-0.25)
    msg = deserialize_message(serialize_message(emotion_msgs.estimate_to_msg(est)), EmotionEstimate)
    assert msg.label == "joy" and msg.voice_label == "neutral" and msg.voice_confidence == 0.75
    assert (msg.voice_status, msg.voice_reason) == (msg.VOICE_OK, "")
    assert list(msg.voice_probabilities) == [0.75, 0.125, 0.125]
    assert (msg.voice_valence, msg.voice_arousal) == (0.0625, -0.25)
    back = emotion_msgs.msg_to_estimate(msg)
    assert back.voice_label == "neutral" and back.voice_probabilities == [0.75, 0.125, 0.125]
    assert (back.voice_status, back.voice_valence, back.voice_arousal) == ("ok", 0.0625, -0.25)
    voice = emotion_msgs.voice_expression(est)
    assert voice.expression == "neutral" and voice.confidence == 0.75
    assert (voice.valence, voice.arousal) == (0.0625, -0.25)
    assert convert.time_to_float(voice.header.stamp) == 2.5  # the utterance end, not now
    # the voice not read: the status (and for uncertain, the reason) says why, the rest is
    # empty / NaN, and no Expression is made
    for status, reason in (("uncertain", "too_short"), ("uncertain", "unfamiliar"),
                           ("no_audio", ""), ("disabled", ""), ("error", "")):
        none = Estimate("u", "c", "s", 0, 1, "joy", names, [0.25, 0.625, 0.125],
                        voice_status=status, voice_reason=reason)
        m = deserialize_message(serialize_message(emotion_msgs.estimate_to_msg(none)),
                                EmotionEstimate)
        assert (m.voice_status, m.voice_reason) == (status, reason)
        assert m.voice_label == "" and not len(m.voice_probabilities)
        assert math.isnan(m.voice_confidence) and math.isnan(m.voice_valence)
        assert math.isnan(m.voice_arousal)
        assert emotion_msgs.msg_to_estimate(m).voice_reason == reason
        assert emotion_msgs.voice_expression(none) is None


def test_unstamped_audio_is_one_timeline_despite_receipt_jitter():
    """Raw AudioData is stamped at receipt: a receipt up to 1 s early (a /clock update handled
    after the audio under sim time) or late continues the timeline; a clock that went back
    further starts a new one."""
    from audio_common_msgs.msg import AudioData

    from erc_ros.core.perception import PerceptionConfig, PerceptionCore
    from erc_ros.ros.ingest import Ingest

    core = PerceptionCore(PerceptionConfig.from_dict(
        {"diarization.enabled": False, "faces.enabled": False}))
    ingest = Ingest(core)
    chunk = AudioData(data=np.zeros(1600, "<i2").tobytes())  # 0.1 s at 16 kHz
    for k, jitter in enumerate([0.0, 0.0, -0.3, -0.6, 0.05, 0.4, -0.2, 0.0]):
        assert ingest.feed("audio", chunk, 100.0 + 0.1 * (k + 1) + jitter, "/audio")
    assert not ingest.health.refused
    assert abs(core.buffer.t_end - 100.8) < 1e-6 and core.buffer.epoch == 0
    assert ingest.feed("audio", chunk, 50.0, "/audio")  # the clock went back 50 s
    assert core.buffer.epoch == 1
