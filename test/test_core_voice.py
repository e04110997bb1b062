"""The voice expert inside the perception core, the assembly path and the pipeline, with the
real expert (the tiny model of the ``voice_model_dir`` fixture, trained on RAVDESS actors) on
real speech (RAVDESS clips from ../shared/data): each utterance's audio read when it closes,
the statuses that say why there is no reading, failures counted, a missing model turning the
feature off with one log line, and the reading carried beside the fused estimate in the
model's class order."""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest

import core_support
from core_support import core_config, ravdess_clips
from erc_ros.assemble import build_core, load_voice_expert
from erc_ros.bench.core import stream
from erc_ros.core.config import VoiceConfig
from erc_ros.core.perception import PerceptionCore
from erc_ros.core.types import (FACE_CLASSES, SAMPLE_RATE, VOICE_DISABLED, VOICE_ERROR,
                                VOICE_NO_AUDIO, VOICE_OK, VOICE_UNCERTAIN,
                                VOICE_UNCERTAIN_REASONS, TranscriptEvent, Utterance)
from erc_ros.core.voice_expression import OWN_VOICE_REASONS, VoiceExpressions
from erc_ros.runtime.pipeline import EmotionPipeline


@pytest.fixture(scope="module")
def expert(voice_model_dir):
    from erc_ros.runtime.voice_expert import VoiceExpert
    return VoiceExpert(model_dir=voice_model_dir)


@pytest.fixture(scope="module")
def ravdess_conversation():
    """Two RAVDESS actors taking turns, 3 clips each."""
    return core_support.ravdess_conversation()


def test_the_core_reads_each_utterances_voice_when_it_closes(expert, ravdess_conversation):
    """Every utterance of real speech comes out with the expert's word on its own audio: a
    distribution (ok) or why not (uncertain, with a reason), never nothing; counted in the
    core's stats with the time it took at the close."""
    conv = ravdess_conversation
    core = PerceptionCore(core_config(diarization__enabled=False), voice_expert=expert)
    utts, _ = stream(core, conv, asr="timed", video=False)
    assert len(utts) == len(conv.turns)
    onsets = core.voice_expressions.onsets  # voice.own_voice (on by default)
    assert onsets is not None
    for u in utts:
        assert u.voice_status in (VOICE_OK, VOICE_UNCERTAIN), u.voice_status
        direct = _read(expert, onsets, u.audio)  # the expert on the audio the utterance carries
        assert (u.voice_status, u.voice_reason) == (direct.status, direct.reason)
        if u.voice_status == VOICE_OK:
            p = u.features["voice_probabilities"]
            assert p.dtype == np.float32 and p.shape == (len(FACE_CLASSES),)
            assert abs(float(p.sum()) - 1) < 1e-4
            assert np.allclose(p, direct.probabilities, atol=1e-6)
            assert u.voice_reason == ""
        else:
            assert u.voice_reason in VOICE_UNCERTAIN_REASONS
            assert "voice_probabilities" not in u.features
    st = core.stats()
    vx = st["voice_expression"]
    assert vx["enabled"] and vx["errors"] == 0 and vx["calls"] == len(utts)
    assert vx["backend"] == expert.backend and vx["model"] == expert.model_id
    assert sum(vx["utterances"].values()) == len(utts)
    assert vx["utterances"].get(VOICE_OK, 0) == sum(u.voice_status == VOICE_OK for u in utts)
    assert sum(vx["uncertain"].values()) == vx["utterances"].get(VOICE_UNCERTAIN, 0)
    assert vx["latency_p50_ms"] > 0 and vx["latency_p95_ms"] >= vx["latency_p50_ms"]
    assert st["stages"]["voice_close"]["calls"] == len(utts)
    # one voice a turn: nothing left out of one person's sentence
    assert vx["own_voice"] and vx["other_voice_left_out"] == 0, vx
    # the speech the expert learned from is read, not all doubted
    assert vx["utterances"].get(VOICE_OK, 0) >= 1, vx


def _read(expert, onsets, audio):
    """The expert's reading of an utterance as the core makes it with ``voice.own_voice``:
    one it finds unfamiliar or undecided read again without another voice's frames."""
    r = expert.predict(audio)
    if r.reason in OWN_VOICE_REASONS:
        vc, th = core_config().voice, core_config().diarization.onset_threshold
        own = onsets.own_voice(audio, th, vc.own_voice_min_seconds, vc.own_voice_keep_seconds)
        if own is not None:
            return expert.predict(own)
    return r


def test_the_voice_is_read_without_a_neighbours_frames(voice_model_dir):
    """Actors answering within 0.10-0.15 s: voice activity hears runs of turns as one
    utterance. With ``voice.own_voice`` (the default) the expert reads one it finds
    unfamiliar or undecided again without the frames of every voice but the main one; the
    utterances themselves, their audio and words, are the ones the core makes without it.
    The tiny expert reads these actors' voices (it learned from actor 1) with or without a
    neighbour: with its gate at 0 it calls every voice unfamiliar, so that the core's rule
    runs on each utterance."""
    import dataclasses

    from erc_ros.runtime.voice_expert import VoiceExpert
    from erc_ros.synth import conversation as cg
    expert = VoiceExpert(model_dir=voice_model_dir)
    expert.gate = dataclasses.replace(expert.gate, max_distance=0.0)
    clips, lines = {}, []
    per_actor = {a: ravdess_clips(a, 4) for a in (1, 3)}
    for i in range(4):
        for a in (1, 3):
            clips[f"a{a}_{i}"] = per_actor[a][i][1]
            lines.append(cg.ScriptLine(f"actor{a}", "Kids are talking by the door",
                                       per_actor[a][i][0], f"a{a}_{i}"))
    conv = cg.build(lines, gap=(0.10, 0.15), seed=3, with_faces=False, name="quick",
                    speech=lambda line, _: clips[line.utterance_id])
    runs = {}
    for own in (True, False):
        core = PerceptionCore(core_config(diarization__enabled=False, voice__own_voice=own),
                              voice_expert=expert)
        utts, _ = stream(core, conv, asr="none", video=False)
        runs[own] = utts, core.stats()["voice_expression"], core.voice_expressions.onsets
        core.close()
    (with_own, st, onsets), (whole, st_whole, none) = runs[True], runs[False]
    assert none is None and not st_whole["own_voice"] and st_whole["other_voice_left_out"] == 0
    assert len(whole) < len(conv.turns)  # turns heard as one utterance
    assert [(u.start, u.end, u.audio.size) for u in with_own] == \
        [(u.start, u.end, u.audio.size) for u in whole]
    assert st["own_voice"] and st["other_voice_left_out"] >= 1, st
    vc, th = core_config().voice, core_config().diarization.onset_threshold
    again = 0
    for u, w in zip(with_own, whole):
        direct = _read(expert, onsets, u.audio)
        assert (u.voice_status, u.voice_reason) == (direct.status, direct.reason)
        if w.voice_reason in OWN_VOICE_REASONS and onsets.own_voice(
                u.audio, th, vc.own_voice_min_seconds, vc.own_voice_keep_seconds) is not None:
            again += 1
        else:  # read as a whole: the same reading as without
            assert (u.voice_status, u.voice_reason) == (w.voice_status, w.voice_reason)
    assert again == st["other_voice_left_out"] >= 1, st


def test_voice_expressions_says_why_there_is_no_reading(expert, caplog):
    """No expert: disabled; no audio: no_audio; audio it cannot read: uncertain, with the
    expert's reason, counted by reason; audio the expert refuses (NaN): error, counted, the
    first failure logged and the next not; the utterance's status counted apart."""
    _, speech = ravdess_clips(1, 1)[0]
    assert VoiceExpressions(VoiceConfig()).of_utterance(speech) == (VOICE_DISABLED, "", None)
    seen: list[str] = []
    vx = VoiceExpressions(VoiceConfig(), expert, on_time=lambda stage, s: seen.append(stage))
    assert vx.of_utterance(np.zeros(0, np.float32)) == (VOICE_NO_AUDIO, "", None)
    assert vx.counters["calls"] == 0 and not seen  # nothing to read, nothing run
    status, reason, p = vx.of_utterance(speech)
    ref = expert.predict(speech)
    assert (status, reason) == (ref.status, ref.reason)
    assert (p is None) == (status != VOICE_OK)
    # audio it cannot read, each for its reason
    quiet = speech * 1e-2  # 40 dB down: a voice far away
    short = speech[np.argmax(np.abs(speech) > 0.05):][:SAMPLE_RATE // 10]  # 0.1 s of it
    for audio, why in ((quiet, "too_quiet"), (short, "too_short")):
        assert vx.of_utterance(audio) == (VOICE_UNCERTAIN, why, None), why
        assert vx.counters["uncertain"][why] == 1
    with caplog.at_level(logging.ERROR, logger="erc_ros.perception"):
        bad = speech.copy()
        bad[100] = np.nan
        assert vx.of_utterance(bad) == (VOICE_ERROR, "", None)
        assert vx.of_utterance(bad) == (VOICE_ERROR, "", None)
    failures = [r for r in caplog.records if "voice expert failed" in r.getMessage()]
    assert len(failures) == 1 and vx.counters["errors"] == 2
    assert seen == ["voice_close"] * (vx.counters["calls"] + vx.counters["errors"])
    for s in (VOICE_OK, VOICE_OK, VOICE_ERROR):
        vx.count(s)
    st = vx.stats()
    assert st["utterances"] == {VOICE_OK: 2, VOICE_ERROR: 1} and st["errors"] == 2
    assert st["enabled"] and st["backend"] == expert.backend
    assert st["latency_p95_ms"] is not None


def test_the_expert_off_or_missing_leaves_a_status_that_says_so(expert, voice_model_dir,
                                                                  ravdess_conversation,
                                                                  tmp_path, caplog):
    """voice.expression false, or no expert given: every utterance 'disabled'. A model that is
    not there: build_core logs one line saying so and runs without the expert."""
    conv = ravdess_conversation
    for cfg, vx in ((core_config(diarization__enabled=False, voice__expression=False), expert),
                    (core_config(diarization__enabled=False), None)):
        core = PerceptionCore(cfg, voice_expert=vx)
        utts, _ = stream(core, conv, asr="timed", video=False)
        assert utts and {u.voice_status for u in utts} == {VOICE_DISABLED}
        assert all("voice_probabilities" not in u.features for u in utts)
        assert core.stats()["voice_expression"]["enabled"] is False
        assert core.stats()["voice_expression"]["calls"] == 0
    missing = tmp_path / "no_voice_model"
    got, why = load_voice_expert(1, str(missing))
    assert got is None and why.startswith("voice expert off (perception.voice.expression)")
    with caplog.at_level(logging.INFO, logger="erc_ros.assemble"):
        core = build_core({"diarization.enabled": False, "faces.enabled": False,
                           "voice.model": str(missing)})
    lines = [r for r in caplog.records if r.name == "erc_ros.assemble" and "voice" in
             r.getMessage()]
    assert [(r.levelno, r.getMessage()) for r in lines] == [(logging.WARNING, why)]
    assert core.voice_expert is None and core.voice_expert_message == why
    utts, _ = stream(core, conv, asr="timed", video=False)
    assert utts and {u.voice_status for u in utts} == {VOICE_DISABLED}
    # the fixture's model through the same path: loaded, said so
    core = build_core({"diarization.enabled": False, "faces.enabled": False,
                       "voice.model": str(voice_model_dir)})
    assert core.voice_expert is not None and expert.model_id in core.voice_expert_message
    assert "voice_expression" in core.stats() and core.stats()["voice_expression"]["enabled"]


def test_an_utterance_without_audio_is_no_audio(expert):
    """Text from an ASR with no microphone (no audio buffered): no_audio, the expert not run."""
    core = PerceptionCore(core_config(diarization__enabled=False), voice_expert=expert)
    core.poll(2.5)
    core.push_transcript(TranscriptEvent(stamp=2.5, text="Hello there.", start=1.0, end=2.0))
    utts = core.poll(10.0) + core.flush()
    assert [u.voice_status for u in utts] == [VOICE_NO_AUDIO]
    assert core.stats()["voice_expression"]["calls"] == 0
    assert core.stats()["voice_expression"]["utterances"] == {VOICE_NO_AUDIO: 1}


def test_the_pipeline_carries_the_reading_beside_the_fused_estimate(expert, model):
    """The estimate holds the voice expert's distribution in the model's class order, its
    top class, confidence and valence/arousal; the fused result does not change with it."""
    pipe = EmotionPipeline.from_model_dir(model, backend="torch")
    speech = ravdess_clips(2, 1)[0][1]
    r = expert.predict(speech)
    assert r.status == VOICE_OK, (r.status, r.reason, r.detail)

    def utt(i, **kw):
        return Utterance(f"u{i}", f"c{i}", "s", 0.0, 1.0, text="I can't believe it!",
                         audio=speech, **kw)
    est = pipe.predict(utt(1, voice_status=VOICE_OK,
                           features={"voice_probabilities": r.probabilities}))
    names = list(est.class_names)
    assert sorted(names) == sorted(FACE_CLASSES)
    want = [float(r.probabilities[FACE_CLASSES.index(c)]) for c in names]
    assert np.allclose(est.voice_probabilities, want, atol=1e-6)
    assert est.voice_label == r.label and abs(est.voice_confidence - r.confidence) < 1e-6
    assert (est.voice_status, est.voice_reason) == (VOICE_OK, "")
    va = np.asarray(want) @ pipe.valence_arousal
    assert abs(est.voice_valence - va[0]) < 1e-5 and abs(est.voice_arousal - va[1]) < 1e-5
    for i, (status, reason) in enumerate((("uncertain", "unfamiliar"), ("no_audio", ""),
                                          ("", ""))):
        other = pipe.predict(utt(10 + i, voice_status=status, voice_reason=reason))
        assert other.voice_status == (status or VOICE_DISABLED)
        assert other.voice_reason == reason and not len(other.voice_probabilities)
        assert other.voice_label == "" and math.isnan(other.voice_confidence)
        assert math.isnan(other.voice_valence) and math.isnan(other.voice_arousal)
        assert (other.label, list(other.probabilities)) == (est.label, list(est.probabilities))
