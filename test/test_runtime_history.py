"""What a conversation's context holds: only what a model reads of a past utterance (no
audio, no face crops, no features), bounded in count and in bytes (docs/ros.md, Input
limits). In split mode anyone on DDS can send 64 crops of 1 Mpx an utterance: none of them
may outlive its estimate."""
from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

from _runtime_fixtures import tiny_model
from erc_ros.core.conversation import ConversationHistory, utterance_bytes
from erc_ros.core.types import Utterance
from erc_ros.runtime.pipeline import EmotionPipeline


def _utt(cid: str, i: int, text: str = "", faces: int = 0, size: int = 64,
         audio_s: float = 0.0) -> Utterance:
    rng = np.random.default_rng(i)
    return Utterance(f"{cid}-{i}", cid, f"s{i % 2}", float(i), float(i + 1),
                     text=text or f"sentence number {i}",
                     audio=rng.uniform(-0.1, 0.1, int(16000 * audio_s)).astype(np.float32),
                     faces=[rng.integers(0, 255, (size, size, 3), np.uint8)
                            for _ in range(faces)],
                     features={"speaker_embedding": np.ones(256, np.float32)},
                     text_confidence=0.9, locale="en-US")


def test_for_context_keeps_what_the_prompt_reads_and_nothing_heavy():
    u = _utt("a", 1, faces=2, audio_s=1.0)
    kept = u.for_context()
    for name in ("utterance_id", "conversation_id", "speaker_id", "start", "end", "text",
                 "text_confidence", "locale"):
        assert getattr(kept, name) == getattr(u, name)
    assert kept.audio.size == 0 and kept.faces == [] and kept.features == {}
    assert u.has_audio and u.has_video and "speaker_embedding" in u.features  # untouched
    assert utterance_bytes(kept) < 4096 < u.audio.nbytes < utterance_bytes(u)


def test_history_keeps_no_audio_crops_or_features():
    h = ConversationHistory(max_utterances=4)
    u = _utt("a", 0, faces=3, audio_s=1.0)
    crop = weakref.ref(u.faces[0])
    h.add(u)
    (kept,) = h.context("a")
    assert (kept.text, kept.speaker_id) == (u.text, u.speaker_id)
    assert kept.audio.size == 0 and not kept.faces and not kept.features
    del u
    gc.collect()
    assert crop() is None  # the history held no reference to the crops
    assert h.nbytes == utterance_bytes(kept)


def test_history_is_bounded_in_bytes_oldest_and_least_recent_first():
    one = utterance_bytes(_utt("a", 0, text="x" * 1000).for_context())
    h = ConversationHistory(max_utterances=100, max_conversations=10, max_bytes=int(4.5 * one))
    for i in range(2):
        h.add(_utt("a", i, text="x" * 1000))
    for i in range(3):
        h.add(_utt("b", i, text="x" * 1000))
    assert h.nbytes <= h.max_bytes and len(h) == 4
    # "a" is the least recently used: its oldest went first
    assert [u.utterance_id for u in h.context("a")] == ["a-1"]
    h.add(_utt("b", 3, text="x" * 1000))  # "a" goes, then "b" keeps its newest
    assert h.conversation_ids == ["b"] and h.count("b") == 4 and h.nbytes <= h.max_bytes
    h.add(_utt("b", 4, text="x" * 1000))
    assert [u.utterance_id for u in h.context("b")] == ["b-1", "b-2", "b-3", "b-4"]
    # an utterance alone over the bound stays (its successor's prompt reads it), alone
    h.add(_utt("c", 0, text="y" * (6 * one)))
    assert h.conversation_ids == ["c"] and h.count("c") == 1
    assert h.nbytes == utterance_bytes(h.context("c")[0])
    h.reset()
    assert h.nbytes == 0 and len(h) == 0


def test_history_bytes_follow_counts_and_resets():
    h = ConversationHistory(max_utterances=2, max_conversations=2)
    for cid in "abc":
        for i in range(3):
            h.add(_utt(cid, i))
    assert h.conversation_ids == ["b", "c"] and len(h) == 4
    assert h.nbytes == sum(utterance_bytes(u) for c in "bc" for u in h.context(c))
    h.reset("b")
    assert h.nbytes == sum(utterance_bytes(u) for u in h.context("c"))
    with pytest.raises(ValueError):
        ConversationHistory(max_bytes=-1)


@pytest.fixture(scope="module")
def pipe():
    p = EmotionPipeline.from_model(tiny_model(), max_context=8, max_conversations=2,
                                   max_history_bytes=64 * 1024)
    yield p
    p.close()


def test_pipeline_context_holds_no_crops_or_audio_and_stays_under_its_byte_bound(pipe):
    pipe.reset()
    refs = []
    for i in range(6):
        u = _utt("big", i, faces=16, size=256, audio_s=2.0)  # ~3.1 MB crops + 128 kB audio
        refs += [weakref.ref(u.audio)] + [weakref.ref(f) for f in u.faces]
        est = pipe.predict(u)
        assert est.modalities == ["text", "audio", "video"]
        del u
    gc.collect()
    assert not [r for r in refs if r() is not None], "crops or audio outlived their estimate"
    past = pipe.history.context("big")
    assert len(past) == 6 and not any(u.audio.size or u.faces or u.features for u in past)
    s = pipe.stats()
    assert 0 < s["history_bytes"] <= 64 * 1024 and s["history_bytes"] == pipe.history.nbytes
    assert 0 < s["encoded_bytes"] < 64 * 1024


def test_pipeline_encodings_follow_the_byte_bound(pipe):
    """When the byte bound drops past utterances, their encodings go with them: the fusion
    window is the utterances the history holds."""
    pipe.reset()
    long_text = "word " * 2000  # ~10 kB of text an utterance
    fusion = pipe.stages["fusion"]
    real, windows = fusion.run, []

    def counting(inputs):
        windows.append(inputs["text"].shape[1])
        return real(inputs)
    fusion.run = counting
    try:
        for i in range(8):
            pipe.predict(_utt("long", i, text=long_text + str(i)))
    finally:
        del fusion.run
    held = pipe.context_length("long")
    assert 1 < held < 8 and pipe.history.nbytes <= 64 * 1024
    assert windows[-1] == held and len(pipe._encoded["long"].vectors) == held
    pipe.reset()
    assert pipe.stats()["history_bytes"] == 0 and pipe.stats()["encoded_bytes"] == 0
