"""Feed ROS messages into a PerceptionCore: THE input path of the nodes and of eval-bag.

The utterance node's worker and the bag replay both call :meth:`Ingest.feed` with a
deserialized message and its kind, so a bag evaluation scores exactly what the robot runs.
Refused input (undecodable images, mp3-coded audio, reversed stamps, ...) raises inside the
converters or the core; :meth:`Ingest.feed` counts it by reason and never lets it escape.
"""
from __future__ import annotations

import re
from typing import Any, Optional, Protocol

from erc_ros.core.types import AudioChunk, AudioFormat, Frame, TranscriptEvent
from erc_ros.ros import convert
from erc_ros.ros.diagnostics import NodeHealth
from erc_ros.ros.input_health import AudioCoverage

#: Input kinds and the ROS type each expects.
KINDS = {
    "image": "sensor_msgs/msg/Image",
    "compressed": "sensor_msgs/msg/CompressedImage",
    "audio_stamped": "audio_common_msgs/msg/AudioDataStamped",
    "audio": "audio_common_msgs/msg/AudioData",
    "audio_info": "audio_common_msgs/msg/AudioInfo",
    "transcript": "erc_ros/msg/Transcript",
    "live_speech": "hri_msgs/msg/LiveSpeech",
    "string": "std_msgs/msg/String",
}
KIND_OF_TYPE = {v: k for k, v in KINDS.items()}

#: Unstamped audio arriving this much later than its continuation is a gap, not jitter.
RAW_AUDIO_GAP_S = 2.0
#: ... and this much earlier is receipt jitter (e.g. a /clock update handled after the audio
#: on a loaded machine), not a clock that went back: the chunk continues the timeline.
RAW_AUDIO_EARLY_S = 1.0

_VOICE_RE = re.compile(r"/humans/voices/([^/]+)/")


def voice_id_of(topic: str) -> str:
    """ROS4HRI per-voice topic (``/humans/voices/<id>/speech``) -> ``<id>`` (else '')."""
    m = _VOICE_RE.search(topic + "/")
    return m.group(1) if m else ""


def final_stamp(kind: str, msg: Any, receipt: float) -> Optional[float]:
    """The stamp a final ASR result of ``kind`` gives its utterance (``final_stamp``; an
    unstamped one is stamped at ``receipt``), None for an incremental one."""
    if kind == "transcript":
        return convert.time_to_float(msg.header.stamp) if msg.is_final else None
    if kind == "live_speech":
        if not msg.final:
            return None
        hs = convert.time_to_float(msg.header.stamp)
        return hs if hs > 0 else receipt
    return receipt


class PerceptionInput(Protocol):
    """What :class:`Ingest` feeds: the input side of
    :class:`~erc_ros.core.perception.PerceptionCore`, which conforms. Each method raises
    InputError (a ValueError) for input it refuses."""

    def push_audio(self, chunk: AudioChunk) -> None: ...

    def push_frame(self, frame: Frame) -> None: ...

    def push_transcript(self, ev: TranscriptEvent) -> None: ...


def convert_ahead(kind: str, msg: Any, max_image_pixels: int = convert.MAX_IMAGE_PIXELS,
                  max_image_bytes: int = convert.MAX_IMAGE_BYTES) -> Any:
    """The conversion of an image message done before :meth:`Ingest.feed` (on another
    thread): a Frame, the ConversionError it raised, or None for other kinds. Prefer
    :meth:`Ingest.convert_ahead`, which applies that Ingest's image limits."""
    if kind not in ("image", "compressed"):
        return None
    try:
        return convert.image_to_frame(msg, max_pixels=max_image_pixels,
                                      max_bytes=max_image_bytes)
    except ValueError as err:
        return err


class Ingest:
    """Converts messages and pushes them into ``core`` (a :class:`PerceptionInput`: the
    PerceptionCore, or what keeps only some inputs, such as the bag report's audio).

    ``max_image_pixels`` (width * height, raw or compressed) and ``max_image_bytes`` (a
    compressed payload) bound what one camera frame may cost: larger frames are refused with
    reason ``image_too_large`` before they are decoded (defaults
    :data:`erc_ros.ros.convert.MAX_IMAGE_PIXELS` and :data:`~erc_ros.ros.convert.MAX_IMAGE_BYTES`,
    documented there)."""

    def __init__(self, core: PerceptionInput, health: Optional[NodeHealth] = None,
                 audio_format: AudioFormat = AudioFormat(),
                 max_image_pixels: int = convert.MAX_IMAGE_PIXELS,
                 max_image_bytes: int = convert.MAX_IMAGE_BYTES):
        for name, value in (("max_image_pixels", max_image_pixels),
                            ("max_image_bytes", max_image_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.max_image_pixels = max_image_pixels
        self.max_image_bytes = max_image_bytes
        self.core = core
        self.health = health or NodeHealth()
        self.audio_format = audio_format  # until an AudioInfo says otherwise
        self.audio_format_error: Optional[convert.ConversionError] = None
        self.last_input_time = float("-inf")
        self._raw_next: Optional[float] = None  # continuation stamp of unstamped audio
        #: Audio received against the time its chunks span: audio lost on the way.
        self.audio_coverage = AudioCoverage()
        #: The audio clock: the end of the newest audio accepted (None before any).
        self.audio_end: Optional[float] = None

    def convert_ahead(self, kind: str, msg: Any) -> Any:
        """:func:`convert_ahead` with this Ingest's image limits."""
        return convert_ahead(kind, msg, self.max_image_pixels, self.max_image_bytes)

    def feed(self, kind: str, msg: Any, receipt: float, topic: str = "",
             converted: Any = None) -> bool:
        """Push one message; ``receipt`` is the node-clock time it arrived (used for inputs
        without a stamp). ``converted``: the result of :meth:`convert_ahead` for this
        message, computed on another thread (offline replay decodes images ahead).
        Returns False when the input was refused (counted by reason)."""
        try:
            if converted is not None:
                if isinstance(converted, BaseException):
                    raise converted
                self.core.push_frame(converted)
            else:
                self._feed(kind, msg, receipt, topic)
        except ValueError as err:  # InputError / ConversionError are ValueErrors
            reason = getattr(err, "reason", None) or type(err).__name__
            self.health.refuse(reason, str(err))
            return False
        self.health.count(f"in.{kind}")
        self.last_input_time = max(self.last_input_time, receipt)
        return True

    def _feed(self, kind: str, msg: Any, receipt: float, topic: str) -> None:
        if kind in ("image", "compressed"):
            self.core.push_frame(convert.image_to_frame(msg, max_pixels=self.max_image_pixels,
                                                        max_bytes=self.max_image_bytes))
        elif kind == "audio_info":
            try:
                self.audio_format = convert.audio_info_to_format(msg)
                self.audio_format_error = None
            except convert.ConversionError as err:
                self.audio_format_error = err
                raise
        elif kind in ("audio_stamped", "audio"):
            if self.audio_format_error is not None:  # e.g. mp3 announced: refuse its data
                raise self.audio_format_error  # (refused here, not lost on the way)
            data = msg.data if kind == "audio" else msg.audio.data
            dur = convert.chunk_duration(len(data), self.audio_format)
            self.audio_coverage.add(receipt - dur if kind == "audio"
                                    else convert.time_to_float(msg.header.stamp), dur, receipt)
            if kind == "audio":
                # Unstamped audio: receipt time minus the chunk's duration, smoothed into a
                # continuous timeline (receipt jitter and bursts of late delivery would
                # otherwise read as a wrong sample rate). A new timeline starts when the
                # clock went back, or on a real gap (receipt well past the continuation).
                dur = convert.chunk_duration(len(msg.data), self.audio_format)
                stamp = receipt - dur
                nxt = self._raw_next
                if nxt is not None and nxt - max(RAW_AUDIO_EARLY_S, 2 * dur) <= stamp <= nxt + \
                        RAW_AUDIO_GAP_S:
                    stamp = nxt
                chunk = convert.audio_to_chunk(msg, self.audio_format, stamp=stamp,
                                               source=topic)
                self.core.push_audio(chunk)
                self._raw_next = stamp + dur
                self.audio_end = stamp + dur
                return
            else:
                chunk = convert.audio_to_chunk(msg, self.audio_format, source=topic)
            self.core.push_audio(chunk)
            self.audio_end = float(chunk.stamp) + dur
        elif kind == "transcript":
            self.core.push_transcript(convert.transcript_to_event(msg))
        elif kind == "live_speech":
            ev = convert.live_speech_to_event(msg, receipt, voice_id_of(topic))
            if ev is None:
                raise convert.ConversionError("empty_transcript", "LiveSpeech without text")
            self.core.push_transcript(ev)
        elif kind == "string":
            self.core.push_transcript(convert.string_to_event(msg, receipt))
        else:
            raise convert.ConversionError("unknown_input", f"unknown input kind {kind!r}")
