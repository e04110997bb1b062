"""Conversion of erc_ros's own messages (erc_ros/Utterance, erc_ros/EmotionEstimate) and of
hri_msgs/Expression to and from the core types.

Pure functions, shared by the nodes and the bag tools, as :mod:`erc_ros.ros.convert` is for the
sensor messages. An Utterance from DDS is bounded (:data:`MAX_UTTERANCE_SECONDS` and the other
``MAX_*``): a message the utterance node cannot have made is refused with a
:class:`~erc_ros.ros.convert.ConversionError` (reason ``utterance``).
"""
from __future__ import annotations

import array
import math

import numpy as np
from builtin_interfaces.msg import Time

from erc_ros.core.segmentation import TRANSCRIPT_BOUNDS
from erc_ros.core.types import (FACE_CLASSES, FACE_SEEN, FACE_STATUSES, SAMPLE_RATE, VOICE_OK,
                                VOICE_STATUSES, VOICE_UNCERTAIN, VOICE_UNCERTAIN_REASONS,
                                Estimate, Utterance)
from erc_ros.ros.convert import (ConversionError, float_to_time, image_to_rgb, rgb_to_image,
                                 time_to_float)

# --- utterances ----------------------------------------------------------------------------

def utterance_to_msg(utt: Utterance):
    """Utterance -> erc_ros/Utterance (audio as int16 PCM, faces as rgb8 Images)."""
    from erc_ros.msg import Utterance as UtteranceMsg
    msg = UtteranceMsg()
    msg.header.stamp = float_to_time(utt.end)
    # header.frame_id is a coordinate frame; the ids have their own fields. An Utterance keeps
    # no sensor frame (its audio and faces come from several inputs), so it stays empty.
    msg.header.frame_id = ""
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
    msg.face_status, msg.face_count = utt.face_status, int(utt.face_count)
    fp = utt.features.get("face_probabilities")
    if fp is not None:
        msg.face_probabilities = array.array("f", np.asarray(fp, np.float32).ravel().tobytes())
    msg.voice_status, msg.voice_reason = utt.voice_status, utt.voice_reason
    vp = utt.features.get("voice_probabilities")
    if vp is not None:
        msg.voice_probabilities = array.array("f",
                                              np.asarray(vp, np.float32).ravel().tobytes())
    return msg


#: Bounds of an erc_ros/Utterance the emotion node accepts (split mode: it comes over DDS
#: from anyone). The utterance node makes at most segmentation.max_utterance_seconds of
#: 16 kHz audio, faces.count crops of faces.size px and texts of at most
#: segmentation.max_text_characters: these leave room for any configuration of it.
MAX_UTTERANCE_SECONDS = 120.0
MAX_UTTERANCE_FACES = 64
MAX_FACE_PIXELS = 1024 * 1024
MAX_UTTERANCE_TEXT = 20000
MAX_EMBEDDING_FLOATS = 4096
#: Bounds of its short strings, in characters: ids the core makes are a few dozen
#: characters; a locale is a BCP-47 / POSIX tag (as an ASR result's, TRANSCRIPT_BOUNDS).
MAX_UTTERANCE_FIELDS = {"utterance_id": 256, "conversation_id": 256, "speaker_id": 256,
                        "speaker_source": 32, "locale": TRANSCRIPT_BOUNDS["locale"]}


def msg_to_utterance(msg) -> Utterance:
    """erc_ros/Utterance -> Utterance; refuses (reason ``utterance``) a message the utterance
    node cannot have made: audio not at 16 kHz or longer than MAX_UTTERANCE_SECONDS, more
    than MAX_UTTERANCE_FACES crops or a crop over MAX_FACE_PIXELS, text over
    MAX_UTTERANCE_TEXT characters, an embedding over MAX_EMBEDDING_FLOATS values, an id or
    locale longer than MAX_UTTERANCE_FIELDS, a text confidence that is neither NaN nor in
    [0, 1], a speaker confidence or time that is not finite, an end before the start, face
    probabilities that are not one per face class (or not with face_status seen), an unknown
    face_status; likewise voice probabilities that are not one per class (or not with
    voice_status ok), an unknown voice_status, a voice_reason that is not one of the
    expert's, or one with a voice_status other than uncertain."""
    def refuse(why: str):
        raise ConversionError("utterance", f"utterance {msg.utterance_id[:40]!r}: {why}")
    if msg.sample_rate not in (0, SAMPLE_RATE):
        refuse(f"audio at {msg.sample_rate} Hz (16000 expected)")
    if len(msg.audio) > SAMPLE_RATE * MAX_UTTERANCE_SECONDS:
        refuse(f"{len(msg.audio) / SAMPLE_RATE:.0f} s of audio (at most "
               f"{MAX_UTTERANCE_SECONDS:.0f} s)")
    if len(msg.faces) > MAX_UTTERANCE_FACES:
        refuse(f"{len(msg.faces)} face crops (at most {MAX_UTTERANCE_FACES})")
    if len(msg.text) > MAX_UTTERANCE_TEXT:
        refuse(f"{len(msg.text)} characters of text (at most {MAX_UTTERANCE_TEXT})")
    if len(msg.speaker_embedding) > MAX_EMBEDDING_FLOATS:
        refuse(f"speaker embedding of {len(msg.speaker_embedding)} values")
    for name, limit in MAX_UTTERANCE_FIELDS.items():
        if len(getattr(msg, name)) > limit:
            raise ConversionError("utterance", f"utterance {name} of {len(getattr(msg, name))} "
                                               f"characters (at most {limit})")
    tc, sc = float(msg.text_confidence), float(msg.speaker_confidence)
    if not (math.isnan(tc) or 0.0 <= tc <= 1.0):
        refuse(f"text confidence {tc!r} (NaN or within [0, 1])")
    if math.isinf(sc):
        refuse(f"speaker confidence {sc!r} (NaN or finite)")
    if time_to_float(msg.end) < time_to_float(msg.start):
        refuse("ends before it starts")
    if msg.face_status not in ("", *FACE_STATUSES):
        refuse(f"face_status {msg.face_status[:40]!r}")
    if len(msg.face_probabilities) not in (0, len(FACE_CLASSES)) or \
            bool(len(msg.face_probabilities)) != (msg.face_status == FACE_SEEN):
        refuse(f"{len(msg.face_probabilities)} face probabilities with face_status "
               f"{msg.face_status!r}")
    if msg.voice_status not in ("", *VOICE_STATUSES):
        refuse(f"voice_status {msg.voice_status[:40]!r}")
    if msg.voice_reason and (msg.voice_status != VOICE_UNCERTAIN
                             or msg.voice_reason not in VOICE_UNCERTAIN_REASONS):
        refuse(f"voice_reason {msg.voice_reason[:40]!r} with voice_status "
               f"{msg.voice_status!r}")
    if len(msg.voice_probabilities) not in (0, len(FACE_CLASSES)) or \
            bool(len(msg.voice_probabilities)) != (msg.voice_status == VOICE_OK):
        refuse(f"{len(msg.voice_probabilities)} voice probabilities with voice_status "
               f"{msg.voice_status!r}")
    pcm = np.frombuffer(msg.audio, np.int16) if len(msg.audio) else np.zeros(0, np.int16)
    features = {}
    if len(msg.speaker_embedding):
        features["speaker_embedding"] = np.frombuffer(msg.speaker_embedding, np.float32).copy()
    if len(msg.face_probabilities):
        features["face_probabilities"] = np.frombuffer(msg.face_probabilities,
                                                       np.float32).copy()
    if len(msg.voice_probabilities):
        features["voice_probabilities"] = np.frombuffer(msg.voice_probabilities,
                                                        np.float32).copy()
    return Utterance(
        utterance_id=msg.utterance_id, conversation_id=msg.conversation_id,
        speaker_id=msg.speaker_id, start=time_to_float(msg.start), end=time_to_float(msg.end),
        text=msg.text, audio=pcm.astype(np.float32) / 32767.0,
        sample_rate=int(msg.sample_rate) or SAMPLE_RATE,
        faces=[image_to_rgb(f, max_pixels=MAX_FACE_PIXELS) for f in msg.faces],
        speaker_source=msg.speaker_source,
        speaker_confidence=float(msg.speaker_confidence),
        text_confidence=float(msg.text_confidence), locale=msg.locale, features=features,
        face_status=msg.face_status, face_count=max(0, int(msg.face_count)),
        voice_status=msg.voice_status, voice_reason=msg.voice_reason)


# --- estimates -----------------------------------------------------------------------------

def estimate_to_msg(est: Estimate, end_to_end_ms: float = float("nan")):
    from erc_ros.msg import EmotionEstimate
    msg = EmotionEstimate()
    msg.header.stamp = float_to_time(est.end)  # the time the estimate describes
    msg.header.frame_id = ""  # a coordinate frame, none here: the ids have their own fields
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
    msg.text_probabilities = [float(p) for p in est.text_probabilities]
    msg.model_id, msg.backend = est.model_id, est.backend
    msg.processing_latency_ms = float(est.latency_ms)
    msg.end_to_end_latency_ms = float(end_to_end_ms)
    msg.face_status, msg.face_count = est.face_status, int(est.face_count)
    msg.face_label, msg.face_confidence = est.face_label, float(est.face_confidence)
    msg.face_probabilities = [float(p) for p in est.face_probabilities]
    msg.face_valence, msg.face_arousal = float(est.face_valence), float(est.face_arousal)
    msg.voice_status, msg.voice_reason = est.voice_status, est.voice_reason
    msg.voice_label, msg.voice_confidence = est.voice_label, float(est.voice_confidence)
    msg.voice_probabilities = [float(p) for p in est.voice_probabilities]
    msg.voice_valence, msg.voice_arousal = float(est.voice_valence), float(est.voice_arousal)
    return msg


def msg_to_estimate(msg) -> Estimate:
    return Estimate(
        utterance_id=msg.utterance_id, conversation_id=msg.conversation_id,
        speaker_id=msg.speaker_id, start=time_to_float(msg.start), end=time_to_float(msg.end),
        label=msg.label, class_names=list(msg.class_names),
        probabilities=[float(p) for p in msg.probabilities], valence=float(msg.valence),
        arousal=float(msg.arousal), modalities=list(msg.modalities),
        modality_weights=[float(w) for w in msg.modality_weights],
        text_probabilities=[float(p) for p in msg.text_probabilities], model_id=msg.model_id,
        backend=msg.backend, latency_ms=float(msg.processing_latency_ms), text=msg.text,
        face_status=msg.face_status, face_probabilities=[float(p) for p in msg.face_probabilities],
        face_count=int(msg.face_count), face_valence=float(msg.face_valence),
        face_arousal=float(msg.face_arousal), voice_status=msg.voice_status,
        voice_reason=msg.voice_reason,
        voice_probabilities=[float(p) for p in msg.voice_probabilities],
        voice_valence=float(msg.voice_valence), voice_arousal=float(msg.voice_arousal))


# Class names of MELD / EmoryNLP / IEMOCAP (lower-cased) -> hri_msgs/Expression constants.
EXPRESSION_OF = {
    "neutral": "neutral", "joy": "happy", "joyful": "happy", "happy": "happy",
    "happiness": "happy", "excited": "excited", "surprise": "surprised",
    "surprised": "surprised", "fear": "scared", "scared": "scared", "fearful": "scared",
    "sadness": "sad", "sad": "sad", "disgust": "disgusted", "disgusted": "disgusted",
    "anger": "angry", "angry": "angry", "mad": "angry", "frustrated": "annoyed",
    "frustration": "annoyed", "peaceful": "neutral", "powerful": "excited",
}


def expression_msg(stamp: float | Time, label: str, valence: float, arousal: float,
                   confidence: float):
    """hri_msgs/Expression: ``label`` (a class name of :data:`EXPRESSION_OF`) mapped to the
    ROS4HRI vocabulary (unknown names: empty), valence/arousal clipped to [-1, 1], a
    non-finite confidence as 0. ``stamp``: float seconds or a builtin_interfaces/Time (kept
    exactly, e.g. the stamp of the image the expression describes)."""
    from hri_msgs.msg import Expression
    msg = Expression()
    msg.header.stamp = stamp if isinstance(stamp, Time) else float_to_time(stamp)
    msg.header.frame_id = ""  # a coordinate frame, none here: the person is in the topic name
    msg.expression = EXPRESSION_OF.get(str(label).lower(), "")
    msg.valence = float(np.clip(valence, -1.0, 1.0))
    msg.arousal = float(np.clip(arousal, -1.0, 1.0))
    msg.confidence = float(confidence) if math.isfinite(confidence) else 0.0
    return msg


def estimate_to_expression(est: Estimate):
    """Estimate -> hri_msgs/Expression with valence/arousal/confidence and the utterance's
    end as stamp. Unknown class names map to an empty expression (valence/arousal still
    set)."""
    return expression_msg(est.end, est.label, est.valence, est.arousal, est.confidence)


def _expert_expression(est: Estimate, sense: str, read: str):
    """The ``sense`` expert's part of ``est`` (its ``<sense>_*`` fields) -> hri_msgs/Expression
    (its top class mapped to the ROS4HRI vocabulary, its valence/arousal and confidence, the
    utterance's end as stamp); None unless its status is ``read``."""
    f = lambda name: getattr(est, f"{sense}_{name}")  # noqa: E731
    if f("status") != read or not len(f("probabilities")):
        return None
    return expression_msg(est.end, f("label"), f("valence"), f("arousal"), f("confidence"))


def face_expression(est: Estimate):
    """The face expert's reading as an Expression; None when the face was not seen."""
    return _expert_expression(est, "face", FACE_SEEN)


def voice_expression(est: Estimate):
    """The voice expert's reading as an Expression; None when the voice was not read
    (``voice_status`` other than ok)."""
    return _expert_expression(est, "voice", VOICE_OK)
