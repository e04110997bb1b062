"""Conversion between ROS messages and erc_ros's core types (no cv_bridge: cv2 + numpy).

Every function here is pure (message in, core object out or the reverse) so it is shared by
the live nodes and the bag tools (which deserialize bag records into the same message
classes with ``rclpy.serialization``): what a bag evaluation feeds the core is exactly what
the nodes feed it.

Refused input raises :class:`erc_ros.core.errors.InputError`-compatible errors
(:class:`ConversionError`, a ``ValueError`` with a machine-readable ``reason``) that the nodes
count and report on ``/diagnostics``.
"""
from __future__ import annotations

import array
import math
from fractions import Fraction
from typing import Optional

import cv2
import numpy as np

from builtin_interfaces.msg import Time
from sensor_msgs.msg import CompressedImage, Image

from erc_ros.core.types import (SAMPLE_RATE, AudioChunk, AudioFormat, Estimate, Frame,
                                TranscriptEvent, Utterance)

from erc_ros.core.errors import InputError


class ConversionError(InputError):
    """A message that cannot be converted; ``reason`` is short and machine-readable."""

    def __init__(self, reason: str, message: str):
        super().__init__(message, reason=reason)


# --- time ---------------------------------------------------------------------------------

_NS = 1_000_000_000


def time_to_ns(t: Time) -> int:
    return int(t.sec) * _NS + int(t.nanosec)


def time_to_float(t: Time) -> float:
    """builtin_interfaces/Time -> float seconds (correctly rounded integer division)."""
    return (int(t.sec) * _NS + int(t.nanosec)) / _NS


def float_to_ns(seconds: float) -> int:
    """Float seconds -> integer nanoseconds, rounding the exact binary value of the float.

    ``float_to_ns(time_to_float(t)) == time_to_ns(t)`` holds exactly while ``t`` is below
    2**52 ns (~52 days: sim time of any bag); for epoch stamps the float itself carries
    ~0.1 us resolution, and the round trip is within that.
    """
    if not math.isfinite(seconds):
        raise ConversionError("stamp", f"non-finite time {seconds!r}")
    return round(Fraction(seconds) * _NS)


def float_to_time(seconds: float) -> Time:
    ns = float_to_ns(seconds)
    if ns < 0:
        raise ConversionError("stamp", f"negative time {seconds!r}")
    return Time(sec=ns // _NS, nanosec=ns % _NS)


def ns_to_time(ns: int) -> Time:
    return Time(sec=int(ns) // _NS, nanosec=int(ns) % _NS)


# --- images -------------------------------------------------------------------------------

# encoding -> (channels, dtype, conversion code to RGB or None)
_ENCODINGS = {
    "rgb8": (3, np.uint8, None),
    "bgr8": (3, np.uint8, cv2.COLOR_BGR2RGB),
    "rgba8": (4, np.uint8, cv2.COLOR_RGBA2RGB),
    "bgra8": (4, np.uint8, cv2.COLOR_BGRA2RGB),
    "mono8": (1, np.uint8, cv2.COLOR_GRAY2RGB),
    "8UC1": (1, np.uint8, cv2.COLOR_GRAY2RGB),
    "8UC3": (3, np.uint8, cv2.COLOR_BGR2RGB),  # OpenCV convention: BGR
    "mono16": (1, np.uint16, cv2.COLOR_GRAY2RGB),
    "16UC1": (1, np.uint16, cv2.COLOR_GRAY2RGB),
    "rgb16": (3, np.uint16, None),
    "bgr16": (3, np.uint16, cv2.COLOR_BGR2RGB),
}
_BAYER = {
    "bayer_rggb8": cv2.COLOR_BayerRG2RGB, "bayer_bggr8": cv2.COLOR_BayerBG2RGB,
    "bayer_gbrg8": cv2.COLOR_BayerGB2RGB, "bayer_grbg8": cv2.COLOR_BayerGR2RGB,
}
_YUV = {"yuv422": cv2.COLOR_YUV2RGB_UYVY, "uyvy": cv2.COLOR_YUV2RGB_UYVY,
        "yuv422_yuy2": cv2.COLOR_YUV2RGB_YUY2, "yuyv": cv2.COLOR_YUV2RGB_YUY2}


def image_to_rgb(msg: Image) -> np.ndarray:
    """sensor_msgs/Image -> HxWx3 uint8 RGB. Raises ConversionError on anything malformed."""
    h, w, enc = int(msg.height), int(msg.width), msg.encoding
    if h <= 0 or w <= 0:
        raise ConversionError("image_decode", f"image has size {w}x{h}")
    buf = np.frombuffer(msg.data, np.uint8)
    step = int(msg.step)
    if enc in _ENCODINGS:
        ch, dtype, code = _ENCODINGS[enc]
        itemsize = np.dtype(dtype).itemsize
        row = w * ch * itemsize
        step = step or row
        if step < row or buf.size < step * (h - 1) + row:
            raise ConversionError(
                "image_decode",
                f"{enc} image {w}x{h} needs {step * (h - 1) + row} bytes, got {buf.size}")
        rows = np.lib.stride_tricks.as_strided(buf, (h, row), (step, 1))
        arr = np.ascontiguousarray(rows).view(dtype)
        if itemsize > 1:
            if bool(msg.is_bigendian) != (np.little_endian is False):
                arr = arr.byteswap()
            arr = (arr >> 8).astype(np.uint8)
        arr = arr.reshape(h, w, ch) if ch > 1 else arr.reshape(h, w)
        return np.ascontiguousarray(arr) if code is None else cv2.cvtColor(arr, code)
    if enc in _BAYER or enc in _YUV:
        ch = 1 if enc in _BAYER else 2
        row = w * ch
        step = step or row
        if step < row or buf.size < step * (h - 1) + row:
            raise ConversionError("image_decode", f"{enc} image {w}x{h}: short data")
        rows = np.ascontiguousarray(np.lib.stride_tricks.as_strided(buf, (h, row), (step, 1)))
        arr = rows.reshape(h, w) if ch == 1 else rows.reshape(h, w, 2)
        return cv2.cvtColor(arr, _BAYER.get(enc, _YUV.get(enc)))
    raise ConversionError("image_encoding", f"unsupported image encoding {enc!r}")


def compressed_to_rgb(msg: CompressedImage) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg/png/...) -> HxWx3 uint8 RGB."""
    buf = np.frombuffer(msg.data, np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    if img is None:
        raise ConversionError("image_decode",
                              f"cannot decode compressed image (format {msg.format!r}, "
                              f"{buf.size} bytes)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def image_to_frame(msg: Image | CompressedImage) -> Frame:
    img = compressed_to_rgb(msg) if isinstance(msg, CompressedImage) else image_to_rgb(msg)
    return Frame(stamp=time_to_float(msg.header.stamp), image=img,
                 frame_id=msg.header.frame_id)


def rgb_to_image(rgb: np.ndarray, stamp: float | Time = 0.0, frame_id: str = "",
                 encoding: str = "rgb8") -> Image:
    """HxWx3 uint8 RGB -> sensor_msgs/Image (rgb8, bgr8 or mono8)."""
    rgb = np.asarray(rgb, np.uint8)
    if encoding == "rgb8":
        data = rgb
    elif encoding == "bgr8":
        data = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    elif encoding == "mono8":
        data = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    else:
        raise ConversionError("image_encoding", f"cannot encode {encoding!r}")
    msg = Image()
    msg.header.stamp = stamp if isinstance(stamp, Time) else float_to_time(stamp)
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(data.shape[0]), int(data.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(data.shape[1] * (1 if data.ndim == 2 else data.shape[2]))
    msg.data = array.array("B", np.ascontiguousarray(data).tobytes())
    return msg


def rgb_to_compressed(rgb: np.ndarray, stamp: float | Time = 0.0, frame_id: str = "",
                      fmt: str = "jpeg", quality: int = 90) -> CompressedImage:
    bgr = cv2.cvtColor(np.asarray(rgb, np.uint8), cv2.COLOR_RGB2BGR)
    ext = ".png" if fmt == "png" else ".jpg"
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext == ".jpg" else []
    ok, enc = cv2.imencode(ext, bgr, params)
    if not ok:  # pragma: no cover
        raise ConversionError("image_encoding", "cv2.imencode failed")
    msg = CompressedImage()
    msg.header.stamp = stamp if isinstance(stamp, Time) else float_to_time(stamp)
    msg.header.frame_id = frame_id
    msg.format = fmt
    msg.data = array.array("B", enc.tobytes())
    return msg


# --- audio (audio_common_msgs, ros-drivers flavour) ----------------------------------------

def audio_info_to_format(info) -> AudioFormat:
    """audio_common_msgs/AudioInfo -> AudioFormat. Refuses non-PCM codings early."""
    coding = (info.coding_format or "wave").strip().lower()
    if coding not in ("wave", "wav", "pcm", "raw", ""):
        raise ConversionError("audio_coding",
                              f"audio coding {info.coding_format!r} is not raw PCM "
                              "(erc_ros needs wave/pcm; decode it upstream)")
    return AudioFormat(sample_rate=int(info.sample_rate) or SAMPLE_RATE,
                       channels=int(info.channels) or 1,
                       sample_format=(info.sample_format or "S16LE").upper(),
                       coding_format=coding or "wave")


def audio_to_chunk(msg, fmt: AudioFormat, stamp: Optional[float] = None,
                   source: str = "") -> AudioChunk:
    """AudioDataStamped (its header stamp) or AudioData (``stamp`` given) -> AudioChunk."""
    if hasattr(msg, "audio"):  # AudioDataStamped
        data = msg.audio.data
        if stamp is None:
            stamp = time_to_float(msg.header.stamp)
        source = source or msg.header.frame_id
    else:
        data = msg.data
    if stamp is None:
        raise ConversionError("stamp", "unstamped AudioData needs a receipt stamp")
    return AudioChunk(stamp=stamp, data=bytes(data), fmt=fmt, source=source)


def chunk_duration(num_bytes: int, fmt: AudioFormat) -> float:
    width = {"U8": 1, "S8": 1, "S16LE": 2, "S16BE": 2, "S24LE": 3, "S24BE": 3,
             "S32LE": 4, "S32BE": 4, "F32LE": 4, "F32BE": 4}.get(fmt.sample_format.upper(), 2)
    return num_bytes / float(width * max(fmt.channels, 1) * max(fmt.sample_rate, 1))


def pcm16_to_audio_msg(pcm: np.ndarray | bytes, stamp: float, frame_id: str = "mic"):
    """int16 PCM -> audio_common_msgs/AudioDataStamped."""
    from audio_common_msgs.msg import AudioDataStamped
    msg = AudioDataStamped()
    msg.header.stamp = float_to_time(stamp)
    msg.header.frame_id = frame_id
    raw = pcm if isinstance(pcm, (bytes, bytearray)) else np.asarray(pcm, "<i2").tobytes()
    msg.audio.data = array.array("B", raw)
    return msg


def audio_info_msg(fmt: AudioFormat = AudioFormat()):
    from audio_common_msgs.msg import AudioInfo
    bits = {"S16LE": 16, "S32LE": 32, "F32LE": 32, "U8": 8}.get(fmt.sample_format, 16)
    return AudioInfo(channels=fmt.channels, sample_rate=fmt.sample_rate,
                     sample_format=fmt.sample_format,
                     bitrate=fmt.sample_rate * fmt.channels * bits,
                     coding_format=fmt.coding_format)


# --- transcripts ---------------------------------------------------------------------------

def transcript_to_event(msg) -> TranscriptEvent:
    """erc_ros/Transcript -> TranscriptEvent (timed when start/end are set, i.e. end > 0)."""
    start, end = time_to_float(msg.start), time_to_float(msg.end)
    timed = end > 0.0
    if timed and end < start:
        raise ConversionError("stamp", f"transcript ends ({end:.3f}) before it starts "
                                       f"({start:.3f})")
    return TranscriptEvent(stamp=time_to_float(msg.header.stamp), text=msg.text,
                           is_final=bool(msg.is_final),
                           start=start if timed else None, end=end if timed else None,
                           confidence=float(msg.confidence), speaker_hint=msg.speaker_hint,
                           locale=msg.locale, segment_id=msg.segment_id)


def event_to_transcript(ev: TranscriptEvent, frame_id: str = "asr"):
    from erc_ros.msg import Transcript
    msg = Transcript()
    msg.header.stamp = float_to_time(ev.stamp)
    msg.header.frame_id = frame_id
    if ev.timed:
        msg.start, msg.end = float_to_time(ev.start), float_to_time(ev.end)
    msg.text = ev.text
    msg.is_final = bool(ev.is_final)
    msg.confidence = float(ev.confidence)
    msg.speaker_hint = ev.speaker_hint
    msg.locale = ev.locale
    msg.segment_id = ev.segment_id
    return msg


def live_speech_to_event(msg, stamp: float, voice_id: str = "") -> Optional[TranscriptEvent]:
    """hri_msgs/LiveSpeech -> TranscriptEvent; ``stamp`` is used when the header is zero.

    Returns None for a message carrying neither incremental nor final text.
    """
    hs = time_to_float(msg.header.stamp)
    st = hs if hs > 0 else stamp
    if msg.final:
        return TranscriptEvent(stamp=st, text=msg.final, is_final=True,
                               confidence=float(msg.confidence), speaker_hint=voice_id,
                               locale=msg.locale)
    if msg.incremental:
        return TranscriptEvent(stamp=st, text=msg.incremental, is_final=False,
                               speaker_hint=voice_id, locale=msg.locale)
    return None


def string_to_event(msg, stamp: float) -> TranscriptEvent:
    """std_msgs/String (a final result, untimed) -> TranscriptEvent stamped at receipt."""
    return TranscriptEvent(stamp=stamp, text=msg.data, is_final=True)


# --- utterances ----------------------------------------------------------------------------

def utterance_to_msg(utt: Utterance):
    """Utterance -> erc_ros/Utterance (audio as int16 PCM, faces as rgb8 Images)."""
    from erc_ros.msg import Utterance as UtteranceMsg
    msg = UtteranceMsg()
    msg.header.stamp = float_to_time(utt.end)
    msg.header.frame_id = utt.conversation_id
    msg.utterance_id, msg.conversation_id = utt.utterance_id, utt.conversation_id
    msg.speaker_id, msg.speaker_source = utt.speaker_id, utt.speaker_source
    msg.speaker_confidence = float(utt.speaker_confidence)
    emb = utt.features.get("speaker_embedding")
    if emb is not None:
        msg.speaker_embedding = array.array("f", np.asarray(emb, np.float32).ravel().tobytes())
    msg.start, msg.end = float_to_time(utt.start), float_to_time(utt.end)
    msg.text, msg.text_confidence, msg.locale = utt.text, float(utt.text_confidence), utt.locale
    audio = np.asarray(utt.audio, np.float32)
    if utt.sample_rate != SAMPLE_RATE and audio.size:
        raise ConversionError("audio_format", f"utterance audio at {utt.sample_rate} Hz")
    msg.sample_rate = SAMPLE_RATE
    pcm = np.clip(np.rint(audio * 32767.0), -32768, 32767).astype(np.int16)
    msg.audio = array.array("h", pcm.tobytes())
    msg.faces = [rgb_to_image(f, utt.end) for f in utt.faces]
    msg.has_text, msg.has_audio, msg.has_video = utt.modality_mask
    return msg


def msg_to_utterance(msg) -> Utterance:
    pcm = np.frombuffer(msg.audio, np.int16) if len(msg.audio) else np.zeros(0, np.int16)
    features = {}
    if len(msg.speaker_embedding):
        features["speaker_embedding"] = np.frombuffer(msg.speaker_embedding, np.float32).copy()
    return Utterance(
        utterance_id=msg.utterance_id, conversation_id=msg.conversation_id,
        speaker_id=msg.speaker_id, start=time_to_float(msg.start), end=time_to_float(msg.end),
        text=msg.text, audio=pcm.astype(np.float32) / 32767.0,
        sample_rate=int(msg.sample_rate) or SAMPLE_RATE,
        faces=[image_to_rgb(f) for f in msg.faces], speaker_source=msg.speaker_source,
        speaker_confidence=float(msg.speaker_confidence),
        text_confidence=float(msg.text_confidence), locale=msg.locale, features=features)


# --- estimates -----------------------------------------------------------------------------

def estimate_to_msg(est: Estimate, end_to_end_ms: float = float("nan")):
    from erc_ros.msg import EmotionEstimate
    msg = EmotionEstimate()
    msg.header.stamp = float_to_time(est.end)  # the time the estimate describes
    msg.header.frame_id = est.conversation_id
    msg.utterance_id, msg.conversation_id, msg.speaker_id = (
        est.utterance_id, est.conversation_id, est.speaker_id)
    msg.start, msg.end = float_to_time(est.start), float_to_time(est.end)
    msg.text = est.text
    msg.label = est.label
    msg.confidence = float(est.confidence)
    msg.class_names = [str(c) for c in est.class_names]
    msg.probabilities = [float(p) for p in est.probabilities]
    msg.valence, msg.arousal = float(est.valence), float(est.arousal)
    msg.modalities = [str(m) for m in est.modalities]
    msg.modality_weights = [float(w) for w in est.modality_weights]
    msg.model_id, msg.backend = est.model_id, est.backend
    msg.processing_latency_ms = float(est.latency_ms)
    msg.end_to_end_latency_ms = float(end_to_end_ms)
    return msg


def msg_to_estimate(msg) -> Estimate:
    return Estimate(
        utterance_id=msg.utterance_id, conversation_id=msg.conversation_id,
        speaker_id=msg.speaker_id, start=time_to_float(msg.start), end=time_to_float(msg.end),
        label=msg.label, class_names=list(msg.class_names),
        probabilities=[float(p) for p in msg.probabilities], valence=float(msg.valence),
        arousal=float(msg.arousal), modalities=list(msg.modalities),
        modality_weights=[float(w) for w in msg.modality_weights], model_id=msg.model_id,
        backend=msg.backend, latency_ms=float(msg.processing_latency_ms), text=msg.text)


# Class names of MELD / EmoryNLP / IEMOCAP (lower-cased) -> hri_msgs/Expression constants.
EXPRESSION_OF = {
    "neutral": "neutral", "joy": "happy", "joyful": "happy", "happy": "happy",
    "happiness": "happy", "excited": "excited", "surprise": "surprised",
    "surprised": "surprised", "fear": "scared", "scared": "scared", "fearful": "scared",
    "sadness": "sad", "sad": "sad", "disgust": "disgusted", "disgusted": "disgusted",
    "anger": "angry", "angry": "angry", "mad": "angry", "frustrated": "annoyed",
    "frustration": "annoyed", "peaceful": "neutral", "powerful": "excited",
}


def estimate_to_expression(est: Estimate):
    """Estimate -> hri_msgs/Expression with valence/arousal/confidence and the utterance's
    end as stamp. Unknown class names map to an empty expression (valence/arousal still
    set)."""
    from hri_msgs.msg import Expression
    msg = Expression()
    msg.header.stamp = float_to_time(est.end)
    msg.header.frame_id = est.speaker_id
    msg.expression = EXPRESSION_OF.get(str(est.label).lower(), "")
    msg.valence = float(np.clip(est.valence, -1.0, 1.0))
    msg.arousal = float(np.clip(est.arousal, -1.0, 1.0))
    c = est.confidence
    msg.confidence = float(c) if math.isfinite(c) else 0.0
    return msg
