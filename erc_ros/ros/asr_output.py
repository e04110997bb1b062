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

A new voice is announced before it speaks: ROS4HRI consumers (libhri's ``HRIListener``,
pyhri) subscribe to ``/humans/voices/<id>/speech`` when they see the id on
``/humans/voices/tracked``, with a volatile QoS (libhri: the system default), so speech
published in the instant the id first appears reaches none of them (5 of 7 new voices'
first utterances were lost). The id goes on the tracked list at once and that voice's speech
is held until its publisher has as many subscribers as the tracked list has (each follower
subscribed), or ``announce_timeout`` seconds passed (a tracked-list reader that never
follows speech, e.g. a monitor); counted as ``asr.voices_announced`` and
``asr.announce_timeouts``, the wait as ``latency.voice_announce``. With no reader of the
tracked list nothing is held.
"""
from __future__ import annotations

import math
import threading
import time
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
                 health, announce_timeout: float = 2.0):
        from hri_msgs.msg import IdsList
        from rclpy.callback_groups import MutuallyExclusiveCallbackGroup

        from erc_ros.msg import Transcript
        self.node, self.max_voices, self.voice_timeout = node, int(max_voices), voice_timeout
        self.announce_timeout = float(announce_timeout)
        self.health = health
        # destroyed at cleanup, while the executor spins: no event handlers (tracked.py)
        self.transcripts = tracked.publisher(node, Transcript, transcript_topic, 10)
        self.tracked = tracked.publisher(node, IdsList, TRACKED_TOPIC, 10)
        self.voices: OrderedDict[str, Any] = OrderedDict()  # id -> publisher, oldest first
        self.heard: dict[str, float] = {}  # id -> node-clock time last heard
        # New voices' speech until their followers subscribed: id -> (announced at
        # (monotonic), LiveSpeech messages in order)
        self.held: dict[str, tuple[float, list]] = {}
        self._lock = threading.Lock()
        # Looks at the held speech every 20 ms, only while there is some (cancelled else).
        self._release_timer = node.create_timer(
            0.02, self.release_held, callback_group=MutuallyExclusiveCallbackGroup())
        self._release_timer.cancel()

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
        from hri_msgs.msg import LiveSpeech
        speech = LiveSpeech(final=utt.text, locale=utt.locale, confidence=conf)
        speech.header.stamp = msg.header.stamp
        vid = id_token(utt.speaker_id)
        with self._lock:
            pub, new = self._voice(vid, now)
            if new and self.announce_timeout > 0:
                self.held[vid] = (time.monotonic(), [speech])
                self.health.count("asr.voices_announced")
            elif vid in self.held:  # spoke again before its followers came
                self.held[vid][1].append(speech)
            else:
                pub.publish(speech)
        self.publish_tracked(now)  # announces a new voice
        if self.held:
            self._release_timer.reset()
            self.release_held()  # nobody follows the tracked list: at once

    def release_held(self) -> None:
        """Publish each new voice's held speech once every reader of the tracked list has
        subscribed to it, or ``announce_timeout`` passed (timer, and after each publish)."""
        with self._lock:
            followers = self.tracked.get_subscription_count()
            for vid, (since, msgs) in list(self.held.items()):
                pub = self.voices[vid]
                waited = time.monotonic() - since
                matched = pub.get_subscription_count() >= followers
                if not matched and waited < self.announce_timeout:
                    continue
                if not matched:
                    self.health.count("asr.announce_timeouts")
                self.health.latency("voice_announce", waited * 1e3)
                del self.held[vid]
                for m in msgs:
                    pub.publish(m)
            if not self.held:
                self._release_timer.cancel()

    def _voice(self, vid: str, now: float):
        """(the speech publisher of voice ``vid``, whether it is new): made on first use,
        marked heard now."""
        pub = self.voices.pop(vid, None)
        new = pub is None
        if new:
            from hri_msgs.msg import LiveSpeech
            pub = tracked.publisher(self.node, LiveSpeech, f"/humans/voices/{vid}/speech",
                                    10)  # destroyed while the executor spins (eviction)
            while len(self.voices) >= self.max_voices:
                old, old_pub = self.voices.popitem(last=False)
                self.node.destroy_publisher(old_pub)
                self.heard.pop(old, None)
                self.health.count("asr.voices_evicted")
                if self.held.pop(old, None) is not None:  # evicted before its followers came
                    self.health.count("asr.held_speech_dropped")
        self.voices[vid] = pub  # most recently heard last
        self.heard[vid] = now
        return pub, new

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
            self.held.clear()
        self.node.destroy_timer(self._release_timer)
        for pub in pubs:
            self.node.destroy_publisher(pub)
