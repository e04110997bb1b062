"""Conversion between the sensor messages (time, camera images, audio, transcripts) and
erc_ros's core types (no cv_bridge: cv2 + numpy); erc_ros's own messages (Utterance,
EmotionEstimate) and hri_msgs/Expression are converted in :mod:`erc_ros.ros.emotion_msgs`.

Every function here is pure (message in, core object out or the reverse) so it is shared by
the live nodes and the bag tools (which deserialize bag records into the same message
classes with ``rclpy.serialization``): what a bag evaluation feeds the core is exactly what
the nodes feed it.

Refused input raises :class:`erc_ros.core.errors.InputError`-compatible errors
(:class:`ConversionError`, a ``ValueError`` with a machine-readable ``reason``) that the nodes
count and report on ``/diagnostics``. Camera frames are bounded (:data:`MAX_IMAGE_PIXELS`,
:data:`MAX_IMAGE_BYTES`, overridable per call) and checked from their headers and layout
before anything image-sized is decoded or copied; an OpenCV failure on input is a refusal.
"""
from __future__ import annotations

import array
import math
import struct
from fractions import Fraction
from typing import Optional

import cv2
import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import CompressedImage, Image

from erc_ros.core.audio_buffer import check_format
from erc_ros.core.errors import InputError
from erc_ros.core.types import AudioChunk, AudioFormat, Frame, TranscriptEvent


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

#: Default largest image accepted, in pixels (width * height), raw or compressed: 4096 x 4096
#: = 16.8 Mpx. It admits every camera a conversational robot uses (4K UHD 3840x2160 is
#: 8.3 Mpx, DCI 4K 4096x2160, a 12 Mpx 4032x3024 sensor) and bounds what one frame costs
#: to convert: 50 MB of RGB output, ~134 MB of libjpeg coefficients for a 4-component
#: progressive JPEG. Faces are found in frames far smaller; larger frames are refused with
#: reason ``image_too_large`` before anything image-sized is allocated.
MAX_IMAGE_PIXELS = 4096 * 4096
#: Default largest compressed payload (CompressedImage.data), in bytes: 64 MiB. A JPEG of a
#: 16.8 Mpx camera frame is a few MB and a PNG of one stays under its 50 MB of raw RGB, so
#: only a payload no camera sends is refused (reason ``image_too_large``); it bounds the
#: decoder's work on data whose header passed the pixel check.
MAX_IMAGE_BYTES = 64 << 20

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
# YUV 4:2:2 packs two pixels in four bytes: OpenCV (and the format) needs an even width.
_YUV = {"yuv422": cv2.COLOR_YUV2RGB_UYVY, "uyvy": cv2.COLOR_YUV2RGB_UYVY,
        "yuv422_yuy2": cv2.COLOR_YUV2RGB_YUY2, "yuyv": cv2.COLOR_YUV2RGB_YUY2}


def _check_pixels(kind: str, w: int, h: int, max_pixels: int) -> None:
    if w * h > max_pixels:
        raise ConversionError(
            "image_too_large",
            f"{kind} image {w}x{h} ({w * h} px) is larger than max_image_pixels={max_pixels}")


def _cvt(arr: np.ndarray, code: int, what: str) -> np.ndarray:
    """cv2.cvtColor; an OpenCV failure on input is a refusal, never an escaping cv2.error."""
    try:
        return cv2.cvtColor(arr, code)
    except cv2.error as err:
        raise ConversionError("image_decode",
                              f"OpenCV cannot convert {what}: {_cv2_message(err)}") from None


def _cv2_message(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else type(err).__name__)[:200]


def _rows(buf: np.ndarray, enc: str, w: int, h: int, step: int, row: int) -> np.ndarray:
    """The h rows of ``row`` bytes of a raw image, as one contiguous (h, row) uint8 array.

    ``step`` (bytes per row, padding included; 0 is read as unpadded) must hold a row, and the
    data must hold h rows: the last one may omit its padding, but nothing may follow them.
    Checked before anything is copied."""
    step = step or row
    if step < row:
        raise ConversionError("image_decode",
                              f"{enc} image {w}x{h}: step {step} is shorter than a row of "
                              f"{w} px ({row} bytes)")
    need = step * (h - 1) + row
    if buf.size < need:
        raise ConversionError("image_decode",
                              f"{enc} image {w}x{h} needs {need} bytes, got {buf.size}")
    if buf.size > step * h:
        raise ConversionError("image_decode",
                              f"{enc} image {w}x{h}: data of {buf.size} bytes is longer than "
                              f"step * height = {step * h}")
    return np.ascontiguousarray(np.lib.stride_tricks.as_strided(buf, (h, row), (step, 1)))


def image_to_rgb(msg: Image, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """sensor_msgs/Image -> HxWx3 uint8 RGB. Raises ConversionError on anything malformed
    (``image_decode``), an unsupported encoding (``image_encoding``) or more than
    ``max_pixels`` pixels (``image_too_large``); all checked before any image-sized copy."""
    h, w, enc = int(msg.height), int(msg.width), msg.encoding
    if h <= 0 or w <= 0:
        raise ConversionError("image_decode", f"image has size {w}x{h}")
    _check_pixels(enc or "raw", w, h, max_pixels)
    buf = np.frombuffer(msg.data, np.uint8)
    step = int(msg.step)
    if enc in _ENCODINGS:
        ch, dtype, code = _ENCODINGS[enc]
        itemsize = np.dtype(dtype).itemsize
        arr = _rows(buf, enc, w, h, step, w * ch * itemsize).view(dtype)
        if itemsize > 1:
            if bool(msg.is_bigendian) != (np.little_endian is False):
                arr = arr.byteswap()
            arr = (arr >> 8).astype(np.uint8)
        arr = arr.reshape(h, w, ch) if ch > 1 else arr.reshape(h, w)
        return np.ascontiguousarray(arr) if code is None else _cvt(arr, code, f"{enc} {w}x{h}")
    if enc in _BAYER or enc in _YUV:
        if enc in _YUV and w % 2:
            raise ConversionError("image_decode",
                                  f"{enc} image {w}x{h}: YUV 4:2:2 needs an even width")
        ch = 1 if enc in _BAYER else 2
        rows = _rows(buf, enc, w, h, step, w * ch)
        arr = rows.reshape(h, w) if ch == 1 else rows.reshape(h, w, 2)
        return _cvt(arr, _BAYER.get(enc, _YUV.get(enc)), f"{enc} {w}x{h}")
    raise ConversionError("image_encoding", f"unsupported image encoding {enc!r}")


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG frame headers (SOFn): every marker C0-CF but DHT (C4), JPG (C8) and DAC (CC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field: TEM and RST0-7.
_JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8)])
# Other formats cv2.imdecode would read, named in the refusal.
_OTHER_FORMATS = ((b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"II+\x00", "BigTIFF"),
                  (b"MM\x00+", "BigTIFF"), (b"BM", "BMP"), (b"GIF8", "GIF"),
                  (b"RIFF", "WebP"), (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
                  (b"\xff\x4f\xff\x51", "JPEG 2000"), (b"#?RADIANCE", "Radiance HDR"),
                  (b"v/1\x01", "OpenEXR"), (b"P1", "PNM"), (b"P2", "PNM"), (b"P3", "PNM"),
                  (b"P4", "PNM"), (b"P5", "PNM"), (b"P6", "PNM"), (b"P7", "PAM"),
                  (b"PF", "PFM"), (b"Pf", "PFM"))


def _png_size(data: memoryview) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR, which the format requires to be the first chunk."""
    if len(data) < 33 or bytes(data[12:16]) != b"IHDR" or \
            struct.unpack_from(">I", data, 8)[0] != 13:
        raise ConversionError("image_decode", "PNG without a complete IHDR chunk first")
    w, h = struct.unpack_from(">II", data, 16)
    if not (0 < w < 1 << 31 and 0 < h < 1 << 31):
        raise ConversionError("image_decode", f"PNG header gives an invalid size {w}x{h}")
    return w, h


def _jpeg_size(data: memoryview) -> tuple[int, int]:
    """(width, height) from a JPEG's first frame header (the one libjpeg decodes), walking the
    marker segments from SOI; strict: bytes between segments, a scan before the frame header,
    a zero height (DNL) or a component count OpenCV cannot read are refused."""
    n, i = len(data), 2
    while True:
        if i >= n or data[i] != 0xFF:
            raise ConversionError("image_decode",
                                  f"JPEG without a frame header (stray or missing bytes at {i})")
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            raise ConversionError("image_decode", "JPEG truncated before its frame header")
        marker = data[i]
        i += 1
        if marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD8, 0xD9, 0xDA, 0x00):  # SOI, EOI, SOS or stuffing before any frame
            raise ConversionError("image_decode",
                                  f"JPEG marker 0x{marker:02X} before its frame header")
        if i + 2 > n:
            raise ConversionError("image_decode", "JPEG truncated before its frame header")
        length = struct.unpack_from(">H", data, i)[0]
        if length < 2 or i + length > n:
            raise ConversionError("image_decode", "JPEG truncated before its frame header")
        if marker in _JPEG_SOF:
            if length < 8:
                raise ConversionError("image_decode", "JPEG frame header too short")
            h, w = struct.unpack_from(">HH", data, i + 3)
            components = data[i + 7]
            if w == 0 or h == 0:
                raise ConversionError("image_decode", f"JPEG frame header gives size {w}x{h}")
            if components not in (1, 3, 4):
                raise ConversionError("image_decode", f"JPEG with {components} components")
            return w, h
        i += length


def compressed_to_rgb(msg: CompressedImage, max_pixels: int = MAX_IMAGE_PIXELS,
                      max_bytes: int = MAX_IMAGE_BYTES) -> np.ndarray:
    """sensor_msgs/CompressedImage (JPEG or PNG) -> HxWx3 uint8 RGB.

    The format is read from the data's signature (``msg.format`` is advisory). The payload
    size and the dimensions in the header (PNG IHDR, JPEG SOFn) are checked against
    ``max_bytes`` and ``max_pixels`` before decoding, so a small file that claims a huge
    image costs nothing (``image_too_large``). Other formats cv2.imdecode reads (TIFF, whose
    strips or tiles can make a small image allocate large decode buffers; BMP, WebP, ...) and
    compressedDepth payloads are refused (``image_encoding``): cameras send JPEG or PNG.
    Anything the decoder cannot read is ``image_decode``."""
    n = len(msg.data)
    if n > max_bytes:
        raise ConversionError("image_too_large",
                              f"compressed image of {n} bytes is larger than "
                              f"max_image_bytes={max_bytes}")
    buf = np.frombuffer(msg.data, np.uint8)
    data = memoryview(buf)
    head = bytes(data[:16])
    if head.startswith(_PNG_SIGNATURE):
        kind, (w, h) = "PNG", _png_size(data)
    elif head.startswith(b"\xff\xd8\xff"):
        kind, (w, h) = "JPEG", _jpeg_size(data)
    else:
        other = next((name for sig, name in _OTHER_FORMATS if head.startswith(sig)), None)
        if "compresseddepth" in msg.format.lower():
            other = "compressedDepth"
        if other is not None:
            raise ConversionError("image_encoding",
                                  f"compressed image is {other} (format {msg.format!r}); "
                                  "erc_ros reads JPEG and PNG camera images only")
        raise ConversionError("image_decode",
                              f"compressed image is neither JPEG nor PNG (format "
                              f"{msg.format!r}, {n} bytes)")
    _check_pixels(kind, w, h, max_pixels)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error as err:
        raise ConversionError("image_decode", f"OpenCV cannot decode the {kind} image "
                                              f"{w}x{h}: {_cv2_message(err)}") from None
    if img is None:
        raise ConversionError("image_decode",
                              f"cannot decode the {kind} image {w}x{h} (format "
                              f"{msg.format!r}, {n} bytes): corrupt or truncated")
    return _cvt(img, cv2.COLOR_BGR2RGB, f"{kind} {w}x{h}")


def image_to_frame(msg: Image | CompressedImage, max_pixels: int = MAX_IMAGE_PIXELS,
                   max_bytes: int = MAX_IMAGE_BYTES) -> Frame:
    """A camera message -> Frame. ``max_pixels`` bounds both kinds, ``max_bytes`` the
    compressed payload (a raw image is bounded by its pixels and its encoding)."""
    if isinstance(msg, CompressedImage):
        img = compressed_to_rgb(msg, max_pixels, max_bytes)
    else:
        img = image_to_rgb(msg, max_pixels)
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
    """audio_common_msgs/AudioInfo -> AudioFormat, checked whole before any audio is read:
    a coding that is not raw PCM (``audio_coding``), a sample rate or channel count of 0
    (unset: erc_ros does not guess one), or a rate, channel count or sample format the audio
    buffer cannot read (``audio_format``, :func:`erc_ros.core.audio_buffer.check_format`)
    is refused, and the node refuses the audio that follows until a good AudioInfo comes."""
    coding = (info.coding_format or "wave").strip().lower()
    if coding not in ("wave", "wav", "pcm", "raw", ""):
        raise ConversionError("audio_coding",
                              f"audio coding {info.coding_format!r} is not raw PCM "
                              "(erc_ros needs wave/pcm; decode it upstream)")
    for name in ("sample_rate", "channels"):
        if int(getattr(info, name)) == 0:
            raise ConversionError("audio_format",
                                  f"AudioInfo {name} is 0 (unset): the capture node must say "
                                  "its audio's format; audio refused until it does")
    fmt = AudioFormat(sample_rate=int(info.sample_rate), channels=int(info.channels),
                      sample_format=(info.sample_format or "S16LE").upper(),
                      coding_format=coding or "wave")
    try:
        check_format(fmt)
    except InputError as err:
        raise ConversionError(err.reason, f"AudioInfo: {err}") from None
    return fmt


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
