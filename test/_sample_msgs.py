"""Fully populated messages of every interface erc_ros defines or consumes, for the
interface tests. Deterministic: the same call gives equal messages in any process."""
from __future__ import annotations

import numpy as np


def _time(sec, nanosec):
    from builtin_interfaces.msg import Time

    return Time(sec=sec, nanosec=nanosec)


def _header(sec=1_700_000_000, nanosec=123_456_789, frame_id="mic"):
    from std_msgs.msg import Header

    return Header(stamp=_time(sec, nanosec), frame_id=frame_id)


def image(width=64, height=48, seed=0):
    from sensor_msgs.msg import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image(header=_header(frame_id="camera"), height=height, width=width,
                 encoding="rgb8", is_bigendian=0, step=width * 3, data=pixels.tobytes())


def transcript():
    from erc_ros.msg import Transcript

    return Transcript(header=_header(frame_id="asr"), start=_time(1_700_000_000, 5),
                      end=_time(1_700_000_002, 999_999_999),
                      text="Oh my God, you're back! Ünïcödé ✓", is_final=True,
                      confidence=0.875, speaker_hint="voice_ab12", locale="en_US",
                      segment_id="seg-7")


def utterance():
    from erc_ros.msg import Utterance

    rng = np.random.default_rng(1)
    audio = (rng.standard_normal(16000) * 3000).astype(np.int16)
    return Utterance(header=_header(sec=1_700_000_003, nanosec=0), utterance_id="u-000042",
                     conversation_id="c-0003", speaker_id="spk1",
                     speaker_source=Utterance.SPEAKER_SOURCE_CLUSTER, speaker_confidence=0.875,
                     speaker_embedding=rng.standard_normal(256).astype(np.float32),
                     start=_time(1_700_000_001, 250_000_000), end=_time(1_700_000_003, 0),
                     text="I can't believe it.", text_confidence=0.75, locale="en_US",
                     sample_rate=16000, audio=audio, faces=[image(32, 32, 2), image(32, 32, 3)],
                     has_text=True, has_audio=True, has_video=True, face_status="seen",
                     face_count=2, face_probabilities=np.full(7, 1 / 7, np.float32),
                     voice_status=Utterance.VOICE_UNCERTAIN, voice_reason="too_quiet")


def emotion_estimate():
    from erc_ros.msg import EmotionEstimate

    names = ["neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger"]
    probs = np.array([0.1, 0.5, 0.05, 0.05, 0.2, 0.05, 0.05], np.float32)
    return EmotionEstimate(header=_header(sec=1_700_000_003, nanosec=0), utterance_id="u-000042",
                           conversation_id="c-0003", speaker_id="spk1",
                           start=_time(1_700_000_001, 250_000_000), end=_time(1_700_000_003, 0),
                           text="I can't believe it.", label="surprise", confidence=0.5,
                           class_names=names, probabilities=probs, valence=0.25, arousal=0.75,
                           modalities=["text", "audio"], modality_weights=[0.75, 0.25],
                           model_id="default@abc123", backend="onnxruntime:CPU:int8",
                           processing_latency_ms=12.5, end_to_end_latency_ms=20.25,
                           face_status="seen", face_label="joy", face_confidence=0.625,
                           face_probabilities=np.array([0.125, 0.0625, 0, 0, 0.625, 0, 0.1875],
                                                       np.float32),
                           face_count=3, face_valence=0.5, face_arousal=0.25,
                           voice_status=EmotionEstimate.VOICE_OK, voice_label="surprise",
                           voice_confidence=0.75,
                           voice_probabilities=np.array([0.0625, 0.75, 0.0625, 0, 0.125, 0, 0],
                                                        np.float32),
                           voice_valence=0.125, voice_arousal=0.625)


def audio_data_stamped():
    from audio_common_msgs.msg import AudioData, AudioDataStamped

    pcm = (np.sin(np.arange(1600) / 5.0) * 8000).astype("<i2").tobytes()
    return AudioDataStamped(header=_header(), audio=AudioData(data=pcm))


def audio_info():
    from audio_common_msgs.msg import AudioInfo

    return AudioInfo(channels=2, sample_rate=44100, sample_format="S16LE", bitrate=1411200,
                     coding_format="wave")


def live_speech():
    from hri_msgs.msg import LiveSpeech

    return LiveSpeech(header=_header(frame_id="anonymous_speaker"), incremental="",
                      final="how are you", confidence=0.5, locale="en_GB")


def expression():
    from hri_msgs.msg import Expression

    return Expression(header=_header(frame_id="face_x1y2z"), expression=Expression.SURPRISED,
                      valence=0.25, arousal=0.75, confidence=0.5)


def ids_list():
    from hri_msgs.msg import IdsList

    return IdsList(header=_header(), ids=["x1y2z", "a9b8c"])


#: name -> factory, for every message the interface tests cover.
ALL = {
    "Transcript": transcript,
    "Utterance": utterance,
    "EmotionEstimate": emotion_estimate,
    "Image": image,
    "AudioDataStamped": audio_data_stamped,
    "AudioInfo": audio_info,
    "LiveSpeech": live_speech,
    "Expression": expression,
    "IdsList": ids_list,
}
OURS = ("Transcript", "Utterance", "EmotionEstimate")
