"""Who speaks each utterance, as the perception core decides it when the utterance closes.

:class:`Speakers` runs the core's speaker embedder and online diarizer
(:mod:`erc_ros.core.diarization`) over each utterance and owns what spans utterances: the
speakers' turns of a recognized segment whose sentences share one decision (made on the
whole turn: a short sentence alone is a poor sample of a voice), the last utterance built
(the speech after a sentence-end cut may be the same person going on), and where the voice
changes inside a recognized segment.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Container, Optional

import numpy as np

from .config import PerceptionConfig
from .diarization import OnlineDiarizer, SpeakerDecision, SpeakerEmbedder, speaker_changes
from .recognition import Piece
from .segmentation import PendingUtterance
from .types import SAMPLE_RATE
from .voice_onsets import VoiceOnsets, onset_cuts, speaker_onsets


@dataclass
class _Turn:
    """A speaker's turn of a recognized segment cut into sentences: its span, the sentences
    not built yet, and the diarization made on the whole turn when its first is built."""

    start: float
    end: float
    left: int
    embedding: Optional[np.ndarray] = None
    decision: Optional[SpeakerDecision] = None


class Speakers:
    """The speaker of each utterance (see the module documentation). ``embedder``: None
    with ``diarization.enabled`` off (no embeddings: the diarizer has only hints to go
    on). ``on_time(stage, seconds)``: the ``embed_close``, ``cluster`` and ``turn_split``
    stages. ``counters``: ``close_embeddings``, ``turn_splits`` (``onset_splits`` of them where a
    second voice starts), ``speaker_continued``."""

    def __init__(self, config: PerceptionConfig, buffer, embedder: Optional[SpeakerEmbedder],
                 diarizer: OnlineDiarizer, on_time: Callable[[str, float], None]):
        self.config, self.buffer = config, buffer
        self.embedder, self.diarizer = embedder, diarizer
        self._on_time = on_time
        # each turn of a recognized segment cut into sentences, by (recognized segment,
        # turn index), until its sentences are built
        self._turns: dict[tuple[int, int], _Turn] = {}
        #: The last utterance built: (start, end, speaker id).
        self.last_built: Optional[tuple[float, float, str]] = None
        self.counters = {"close_embeddings": 0, "turn_splits": 0, "speaker_continued": 0,
                         "onset_splits": 0}
        #: ``diarization.onset_cuts``: the segmentation model, loaded when the core starts.
        self.onsets = None
        if config.diarization.split_turns and config.diarization.onset_cuts:
            self.onsets = VoiceOnsets()

    # -- recognized segments -----------------------------------------------------------
    def changes(self, words) -> list[int]:
        """``diarization.split_turns``: the word indices of a recognized segment where the
        voice changes at a sentence end (:func:`~erc_ros.core.diarization.speaker_changes`)
        and, with ``diarization.onset_cuts``, where a second voice starts
        (:mod:`~erc_ros.core.voice_onsets`)."""
        dz = self.config.diarization
        t = time.perf_counter()
        voice = speaker_changes(words, self.buffer.read, self.embedder.embed_windows,
                                dz.change_threshold, dz.window_seconds,
                                dz.change_min_side_seconds)
        if self.onsets is not None and len(words) > 1:
            extra = self._onset_cuts(words, voice)
            self.counters["onset_splits"] += len(extra)
            voice = sorted(voice + extra)
        self._on_time("turn_split", time.perf_counter() - t)
        self.counters["turn_splits"] += len(voice)
        return voice

    def _onset_cuts(self, words, taken: list[int]) -> list[int]:
        """The cuts where a second voice starts in the segment's first
        :data:`~erc_ros.core.voice_onsets.CHUNK_SECONDS` (its audio, 0.2 s either side)."""
        dz = self.config.diarization
        seg0, seg1 = words[0].start, words[-1].end
        a0 = max(0.0, seg0 - 0.2)
        audio = self.buffer.read(a0, seg1 + 0.2)
        if audio.size < 2 * dz.change_min_side_seconds * SAMPLE_RATE:
            return []
        t, act = self.onsets.activity(audio)
        t = t + a0
        inside = (t >= seg0 - 0.1) & (t <= seg1 + 0.1)
        found = speaker_onsets(t[inside], act[inside], dz.onset_threshold,
                               dz.onset_min_seconds)
        return onset_cuts(words, found, taken, dz.change_min_side_seconds,
                          dz.onset_max_shift_seconds)

    def share(self, job: int, pieces: list[Piece]) -> None:
        """The pieces of recognized segment ``job``: the sentences of each turn will share
        its decision."""
        for k in {p.turn for p in pieces if p.turn is not None}:
            span = next(p.turn_span for p in pieces if p.turn == k)
            self._turns[(job, k)] = _Turn(*span, left=sum(p.turn == k for p in pieces))

    def taken(self, turn: Optional[tuple[int, int]]) -> Optional[_Turn]:
        """One sentence of ``turn`` is built (or refused): the turn, forgotten after its
        last."""
        shared = self._turns.get(turn) if turn is not None else None
        if shared is not None:
            shared.left -= 1
            if shared.left <= 0:
                del self._turns[turn]
        return shared

    # -- decisions ---------------------------------------------------------------------
    def of(self, p: PendingUtterance, start: float, audio_end: float, has_audio: bool,
           sentence_cuts: Container[float]) -> tuple[Optional[np.ndarray], SpeakerDecision]:
        """(speaker embedding, diarization decision) of the utterance ``p`` builds (its
        audio [start, audio_end]). A sentence of a turn cut into sentences
        (``segmentation.split_sentences``) takes its turn's, made on the whole turn when
        its first sentence is built. ``sentence_cuts``: ends of the segments the recognizer
        cut at a sentence end (``diarization.continue_speaker``)."""
        shared = self.taken(p.turn) if not p.hint else None
        if shared is not None:
            if shared.decision is not None:
                return shared.embedding, shared.decision
            start = shared.start
            audio_end = min(shared.end,
                            start + self.config.segmentation.max_utterance_seconds)
        emb = None
        if self.embedder is not None and has_audio and not p.hint:
            t = time.perf_counter()
            emb, n = self.embedder.utterance_embedding(start, audio_end, self.buffer)
            self._on_time("embed_close", time.perf_counter() - t)
            self.counters["close_embeddings"] += n
        elif self.embedder is not None and p.hint and has_audio:
            emb, _ = self.embedder.utterance_embedding(start, audio_end, self.buffer)
        t = time.perf_counter()
        dec = None if p.hint else self._continued(start, audio_end, sentence_cuts)
        if dec is None:
            dec = self.diarizer.assign(emb, audio_end - start, p.hint)
        self._on_time("cluster", time.perf_counter() - t)
        if shared is not None:
            shared.embedding, shared.decision = emb, dec
        return emb, dec

    def _continued(self, start: float, end: float,
                   sentence_cuts: Container[float]) -> Optional[SpeakerDecision]:
        """``diarization.continue_speaker``: the speaker of the utterance before, where this
        one starts within the VAD's hang-over of a sentence-end cut that ended it (the
        hang-over would have joined the two) and the voice on either side of the pause is
        the same person's (the last and first ``diarization.window_seconds``, at least
        ``change_min_side_seconds`` each, cosine at or above ``continue_threshold``). A
        short piece alone is a poor sample of a voice; across the pause the decision uses
        both sides."""
        if not self.config.diarization.continue_speaker or self.embedder is None or \
                self.last_built is None:
            return None
        s0, e0, who = self.last_built
        dz, v = self.config.diarization, self.config.vad
        if not who or e0 not in sentence_cuts or \
                not 0 <= start - e0 < v.min_silence_seconds - 2 * v.pad_seconds + 1e-6:
            return None
        w, side = dz.window_seconds, dz.change_min_side_seconds
        left = self.buffer.read(max(e0 - w, s0, self.buffer.t_start), e0)
        right = self.buffer.read(start, min(end, start + w))
        if min(left.size, right.size) < side * SAMPLE_RATE:
            return None
        a, b = self.embedder.embed_windows([left, right])
        sim = float(np.dot(a, b))
        if sim < dz.continue_threshold:
            return None
        self.counters["speaker_continued"] += 1
        return SpeakerDecision(who, "continued", float(np.clip(sim, 0, 1)), sim)

    def new_epoch(self) -> None:
        """The audio clock jumped (every sentence of the old epoch was built)."""
        self._turns.clear()
        self.last_built = None
