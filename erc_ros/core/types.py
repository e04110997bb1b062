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

from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import numpy as np

#: Sample rate of every audio array inside the core and the models.
SAMPLE_RATE = 16000

#: Modality names, in the order used by masks and contribution vectors everywhere.
MODALITIES = ("text", "audio", "video")

#: Classes of the face-expression expert, in the order of every ``face_probabilities``
#: (an Utterance's ``features``, erc_ros/Utterance): MELD's seven.
FACE_CLASSES = ("neutral", "surprise", "fear", "sadness", "joy", "disgust", "anger")

#: What the face-expression expert made of an utterance (``Utterance.face_status``,
#: ``face_status`` of erc_ros/Utterance and EmotionEstimate):
FACE_SEEN = "seen"  #: the speaker's face was found: face_probabilities hold the expert's mean
FACE_NOT_SEEN = "no_face"  #: camera frames in the span, no face found in them
FACE_NO_CAMERA = "no_camera"  #: no camera frame in the utterance's span (camera off / none)
FACE_DISABLED = "disabled"  #: the expert is off (faces.enabled / faces.expression false,
#: the ``fer`` package missing) or the producer of the utterance does not run it
FACE_ERROR = "error"  #: the expert failed on this utterance's crops (counted in the core)
#: the speaker's face was found but the expert cannot read it: too small, too blurred, or its
#: distribution too undecided (faces.expression_* quality gate); no label, no probabilities
FACE_UNCERTAIN = "uncertain"
FACE_STATUSES = (FACE_SEEN, FACE_NOT_SEEN, FACE_NO_CAMERA, FACE_DISABLED, FACE_ERROR,
                 FACE_UNCERTAIN)

#: What the voice expert made of an utterance (``Utterance.voice_status``, ``voice_status`` of
#: erc_ros/Utterance and EmotionEstimate); its classes are :data:`FACE_CLASSES`:
VOICE_OK = "ok"  #: the expert read the voice: voice_probabilities hold its distribution
#: the expert heard the voice but cannot read it (``voice_reason`` says why: one of
#: :data:`VOICE_UNCERTAIN_REASONS`); no label, no probabilities
VOICE_UNCERTAIN = "uncertain"
VOICE_NO_AUDIO = "no_audio"  #: the utterance carries no audio (e.g. text from an ASR node only)
VOICE_DISABLED = "disabled"  #: the expert is off, or the producer of the utterance does not run it
VOICE_ERROR = "error"  #: the expert failed on this utterance's audio (counted in the core)
VOICE_STATUSES = (VOICE_OK, VOICE_UNCERTAIN, VOICE_NO_AUDIO, VOICE_DISABLED, VOICE_ERROR)
#: Why a voice is "uncertain": shorter than the expert reads, too quiet, clipped, a
#: distribution too undecided, or a voice unlike every voice the expert learned from.
VOICE_UNFAMILIAR = "unfamiliar"  #: a voice unlike those the expert learned from
VOICE_UNCERTAIN_REASONS = ("too_short", "too_quiet", "clipped", "undecided", VOICE_UNFAMILIAR)


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
    speaker_source: str = ""  # "hint", "enrolled", "cluster", "continued" or "" (unknown)
    speaker_confidence: float = float("nan")
    text_confidence: float = float("nan")
    locale: str = ""
    final_stamp: Optional[float] = None  # when the final ASR result (or VAD end) arrived
    # Embedded ASR: time.perf_counter() when the recognizer's text was ready (the node
    # measures ASR final -> utterance/estimate from it); None otherwise.
    asr_ready: Optional[float] = None
    # Features the core computed while the person spoke, reused downstream so nothing is
    # computed twice on the latency path: e.g. "speaker_embedding" (the diarization d-vector),
    # "face_probabilities" (the face-expression expert's mean over the speaker's face crops,
    # :data:`FACE_CLASSES` order; only when ``face_status`` is :data:`FACE_SEEN`),
    # "voice_probabilities" (the voice expert's distribution on the utterance's audio,
    # :data:`FACE_CLASSES` order; only when ``voice_status`` is :data:`VOICE_OK`).
    features: dict[str, np.ndarray] = field(default_factory=dict)
    # The face-expression expert on this utterance: one of :data:`FACE_STATUSES` ("" when
    # unknown, e.g. an utterance made by hand) and how many face crops it averaged.
    face_status: str = ""
    face_count: int = 0
    # The voice expert on this utterance's audio: one of :data:`VOICE_STATUSES` ("" when
    # unknown) and, when "uncertain", why (one of :data:`VOICE_UNCERTAIN_REASONS`; else "").
    voice_status: str = ""
    voice_reason: str = ""

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

    def for_context(self) -> "Utterance":
        """What a conversation's history keeps of this utterance once it is past: every
        scalar field (ids, speaker, span, text, confidences, locale, face and voice
        status), without
        the audio, the face crops and the ``features``. A model reads of a past utterance
        only its speaker and text (the text prompt); its encodings are cached as vectors by
        whoever needs them. The copy's :attr:`modality_mask` is therefore text only."""
        return replace(self, audio=np.zeros(0, np.float32), faces=[], features={})


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
    # What the face-expression expert said on its own (a sense fusion that names the face
    # weighs it into ``probabilities``): its distribution in ``class_names`` order (empty
    # unless ``face_status`` is :data:`FACE_SEEN`), the status (:data:`FACE_STATUSES`), the
    # crops it averaged, and valence/arousal from its distribution (NaN without one).
    face_status: str = ""
    face_probabilities: Sequence[float] = ()
    face_count: int = 0
    face_valence: float = float("nan")
    face_arousal: float = float("nan")
    # What the voice expert said on its own (weighed into ``probabilities`` as the face
    # expert's): the status (:data:`VOICE_STATUSES`), why it is "uncertain" (:data:`VOICE_UNCERTAIN_REASONS`,
    # else ""), its distribution in ``class_names`` order (empty unless ``voice_status`` is
    # :data:`VOICE_OK`), and valence/arousal from it (NaN without one).
    voice_status: str = ""
    voice_reason: str = ""
    voice_probabilities: Sequence[float] = ()
    voice_valence: float = float("nan")
    voice_arousal: float = float("nan")
    # The text model's own distribution in ``class_names`` order (empty when the utterance
    # has no words): the "text" sense that the fused ``probabilities`` weigh with the others.
    text_probabilities: Sequence[float] = ()

    @property
    def confidence(self) -> float:
        return float(max(self.probabilities)) if len(self.probabilities) else float("nan")

    @property
    def face_label(self) -> str:
        """The face expert's most probable class ("" without a face)."""
        p = self.face_probabilities
        return str(self.class_names[int(np.argmax(p))]) if len(p) else ""

    @property
    def face_confidence(self) -> float:
        p = self.face_probabilities
        return float(max(p)) if len(p) else float("nan")

    @property
    def text_label(self) -> str:
        """The text model's most probable class on its own ("" without words)."""
        p = self.text_probabilities
        return str(self.class_names[int(np.argmax(p))]) if len(p) else ""

    @property
    def voice_label(self) -> str:
        """The voice expert's most probable class ("" without a reading)."""
        p = self.voice_probabilities
        return str(self.class_names[int(np.argmax(p))]) if len(p) else ""

    @property
    def voice_confidence(self) -> float:
        p = self.voice_probabilities
        return float(max(p)) if len(p) else float("nan")
