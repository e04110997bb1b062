"""Plain data types that flow through erc_ros.

These are the only things the ROS layer (``erc_ros.ros``), the perception core
(``erc_ros.core``), the models and the runtime exchange. They import neither rclpy nor
torch. Times are float seconds in the clock of the input that produced them (for live
ROS input: the ROS clock of the message stamps, sim time during bag replay).

Audio inside an :class:`Utterance` is always mono float32 in [-1, 1] at
:data:`SAMPLE_RATE` (16 kHz): every encoder expects that, and the audio buffer is the one
place that converts whatever the microphone delivers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

#: Sample rate of every audio array inside the core and the models.
SAMPLE_RATE = 16000

#: Modality names, in the order used by masks and contribution vectors everywhere.
MODALITIES = ("text", "audio", "video")


@dataclass(frozen=True)
class AudioFormat:
    """How the bytes of an audio chunk are to be read (audio_common's ``AudioInfo``).

    ``sample_format`` uses GStreamer names: ``S16LE``, ``S32LE``, ``F32LE``, ``U8`` (and the
    big-endian variants). ``coding_format`` must be raw PCM (``wave``/``pcm``/``raw``);
    anything else (``mp3``, ``opus``...) is refused by the audio buffer.
    """

    sample_rate: int = SAMPLE_RATE
    channels: int = 1
    sample_format: str = "S16LE"
    coding_format: str = "wave"


@dataclass
class AudioChunk:
    """A chunk of audio as received: raw bytes (or an already decoded array) and a stamp.

    ``stamp`` is the time of the first sample. ``data`` is either ``bytes`` to be decoded
    according to ``fmt`` or a numpy array (interleaved if ``fmt.channels > 1``).
    """

    stamp: float
    data: bytes | np.ndarray
    fmt: AudioFormat = field(default_factory=AudioFormat)
    source: str = ""  # e.g. the topic or the ROS4HRI voice id it came from


@dataclass
class Frame:
    """One camera image: ``image`` is HxWx3 uint8 in RGB order."""

    stamp: float
    image: np.ndarray
    frame_id: str = ""


@dataclass
class TranscriptEvent:
    """One ASR result.

    ``start``/``end`` are the utterance times when the producer gives them (our
    ``Transcript`` message), ``None`` otherwise (``hri_msgs/LiveSpeech``, ``std_msgs/String``),
    in which case segmentation aligns the text to voice activity. ``stamp`` is when the
    result was produced (receipt time for producers that stamp nothing).
    """

    stamp: float
    text: str
    is_final: bool = True
    start: Optional[float] = None
    end: Optional[float] = None
    confidence: float = float("nan")
    speaker_hint: str = ""  # upstream voice/person id (ROS4HRI voice id); wins over diarization
    locale: str = ""
    segment_id: str = ""  # links incremental results to their final result, if the ASR has one

    @property
    def timed(self) -> bool:
        return self.start is not None and self.end is not None


@dataclass
class Utterance:
    """One assembled utterance: who said what, when, with its audio and face crops."""

    utterance_id: str
    conversation_id: str
    speaker_id: str
    start: float
    end: float
    text: str = ""
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    sample_rate: int = SAMPLE_RATE
    faces: list[np.ndarray] = field(default_factory=list)  # HxWx3 uint8 RGB crops, fixed size
    speaker_source: str = ""  # "hint", "enrolled", "cluster" or "" (unknown)
    speaker_confidence: float = float("nan")
    text_confidence: float = float("nan")
    locale: str = ""
    final_stamp: Optional[float] = None  # when the final ASR result (or VAD end) arrived
    # Embedded ASR: time.perf_counter() when the recognizer's text was ready (the node
    # measures ASR final -> utterance/estimate from it); None otherwise.
    asr_ready: Optional[float] = None
    # Features the core computed while the person spoke, reused downstream so nothing is
    # computed twice on the latency path: e.g. "speaker_embedding" (the diarization d-vector).
    features: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def has_text(self) -> bool:
        return bool(self.text.strip())

    @property
    def has_audio(self) -> bool:
        return self.audio.size > 0

    @property
    def has_video(self) -> bool:
        return len(self.faces) > 0

    @property
    def modality_mask(self) -> tuple[bool, bool, bool]:
        """Presence of (text, audio, video), in :data:`MODALITIES` order."""
        return (self.has_text, self.has_audio, self.has_video)

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass
class Estimate:
    """The emotion estimate for one utterance."""

    utterance_id: str
    conversation_id: str
    speaker_id: str
    start: float
    end: float
    label: str
    class_names: Sequence[str]
    probabilities: Sequence[float]
    valence: float = 0.0
    arousal: float = 0.0
    modalities: Sequence[str] = ()  # the modalities that were used
    modality_weights: Sequence[float] = ()  # contribution of each used modality, sums to 1
    model_id: str = ""
    backend: str = ""
    latency_ms: float = float("nan")  # processing time inside the pipeline
    text: str = ""

    @property
    def confidence(self) -> float:
        return float(max(self.probabilities)) if len(self.probabilities) else float("nan")
