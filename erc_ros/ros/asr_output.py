"""What the embedded recognizer heard, published for everyone else (``asr_type: embedded``).

- ``erc_ros/Transcript`` on the node's ``asr_topic``: each utterance the recognizer gave
  text, with its span, confidence, locale and diarized speaker (``speaker_hint``), so tools
  that read an external ASR's topic read this one;
- ROS4HRI (REP-155): ``hri_msgs/LiveSpeech`` (``final``) on
  ``/humans/voices/<voice id>/speech`` and the voices heard in the last ``voice_timeout``
  seconds as ``hri_msgs/IdsList`` on ``/humans/voices/tracked`` -- what ``asr_vosk`` and a
  voice tracker would give, so erc_ros stands in for both in a ROS4HRI stack. Voice ids are
  the diarized speaker ids as topic tokens (:func:`erc_ros.ros.topic_names.id_token`, the
  mapping the emotion node's ``/humans/voices/<id>/expression`` uses); an utterance with no
  speaker goes to Transcript only. At most ``max_voices`` voice publishers: the least recently heard is
  dropped first.
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import Any

from erc_ros.ros import convert, tracked
from erc_ros.ros.topic_names import id_token

TRACKED_TOPIC = "/humans/voices/tracked"


class AsrOutput:
    """Publishers of the embedded recognizer's results (made in on_configure, freed by
    :meth:`destroy`); :meth:`publish` runs on the node's worker thread,
    :meth:`publish_tracked` also on its timer."""

    def __init__(self, node, transcript_topic: str, max_voices: int, voice_timeout: float,
                 health):
        from erc_ros.msg import Transcript
        from hri_msgs.msg import IdsList
        self.node, self.max_voices, self.voice_timeout = node, int(max_voices), voice_timeout
        self.health = health
        self.transcripts = node.create_publisher(Transcript, transcript_topic, 10)
        self.tracked = node.create_publisher(IdsList, TRACKED_TOPIC, 10)
        self.voices: OrderedDict[str, Any] = OrderedDict()  # id -> publisher, oldest first
        self.heard: dict[str, float] = {}  # id -> node-clock time last heard
        self._lock = threading.Lock()

    def publish(self, utt, now: float) -> None:
        if not utt.has_text:
            return
        from erc_ros.msg import Transcript
        conf = float(utt.text_confidence) if math.isfinite(utt.text_confidence) else math.nan
        msg = Transcript(text=utt.text, is_final=True, speaker_hint=utt.speaker_id,
                         locale=utt.locale, segment_id=utt.utterance_id, confidence=conf)
        msg.header.stamp = convert.float_to_time(utt.final_stamp if utt.final_stamp
                                                 is not None else utt.end)
        msg.header.frame_id = "erc_ros_asr"
        msg.start, msg.end = convert.float_to_time(utt.start), convert.float_to_time(utt.end)
        self.transcripts.publish(msg)
        self.health.count("asr.transcripts_published")
        if not utt.speaker_id:
            self.health.count("asr.no_speaker")
            self.publish_tracked(now)
            return
        with self._lock:
            pub = self._voice(id_token(utt.speaker_id), now)
        from hri_msgs.msg import LiveSpeech
        speech = LiveSpeech(final=utt.text, locale=utt.locale, confidence=conf)
        speech.header.stamp = msg.header.stamp
        pub.publish(speech)
        self.publish_tracked(now)

    def _voice(self, vid: str, now: float):
        """The speech publisher of voice ``vid`` (made on first use), marked heard now."""
        pub = self.voices.pop(vid, None)
        if pub is None:
            from hri_msgs.msg import LiveSpeech
            pub = tracked.publisher(self.node, LiveSpeech, f"/humans/voices/{vid}/speech",
                                    10)  # destroyed while the executor spins (eviction)
            while len(self.voices) >= self.max_voices:
                old, old_pub = self.voices.popitem(last=False)
                self.node.destroy_publisher(old_pub)
                self.heard.pop(old, None)
                self.health.count("asr.voices_evicted")
        self.voices[vid] = pub  # most recently heard last
        self.heard[vid] = now
        return pub

    def publish_tracked(self, now: float) -> None:
        """``/humans/voices/tracked``: the voices heard within ``voice_timeout`` of ``now``."""
        from hri_msgs.msg import IdsList
        with self._lock:
            ids = [v for v, t in self.heard.items() if now - t <= self.voice_timeout]
        msg = IdsList(ids=ids)
        msg.header.stamp = convert.float_to_time(now)
        self.tracked.publish(msg)

    def destroy(self) -> None:
        with self._lock:
            pubs = [self.transcripts, self.tracked, *self.voices.values()]
            self.voices.clear()
            self.heard.clear()
        for pub in pubs:
            self.node.destroy_publisher(pub)
