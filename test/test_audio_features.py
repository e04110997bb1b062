"""The packaged audio features: eGeMAPS v02 functionals (afx-audio) on real espeak-ng speech,
finite on awkward input, named and sized as documented, through a tiny model's audio encoder;
model directories made with the older prosody features still load and run them."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from erc_ros.core.types import Utterance
from erc_ros.models.egemaps import (CLIP, EGEMAPS_DIM, EGEMAPS_NAMES, REFERENCE,
                                    egemaps_features, egemaps_functionals)
from erc_ros.models.preprocessing import (PROSODY_NAMES, AudioFeatureConfig, Preprocessor,
                                          PreprocessorConfig, packaged_minilm_dir)

SR = 16000
DEFAULT = Path(__file__).resolve().parents[1] / "models" / "default"
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng is installed by tools/setup.sh on CI")


def _speech(text="I can't believe you did that to me again", voice="en-us+m3", pitch=50):
    from erc_ros.synth.speech import espeak

    return espeak(text, voice, pitch)


def _pre(**audio) -> Preprocessor:
    return Preprocessor(PreprocessorConfig(audio=AudioFeatureConfig(**audio)),
                        packaged_minilm_dir() / "tokenizer.json")


def test_names_order_and_size():
    import afx_audio

    assert EGEMAPS_DIM == len(set(EGEMAPS_NAMES)) == 88
    assert EGEMAPS_NAMES == tuple(afx_audio.EGEMAPS_NAMES)  # openSMILE's order and spelling
    assert EGEMAPS_NAMES[0] == "F0semitoneFrom27.5Hz_sma3nz_amean"
    assert EGEMAPS_NAMES[-1] == "equivalentSoundLevel_dBp"
    assert set(REFERENCE) == set(EGEMAPS_NAMES) and all(s > 0 for _, s in REFERENCE.values())
    assert AudioFeatureConfig().kind == "egemaps"  # the default for new models
    pre = _pre()
    names = pre.audio_feature_names
    assert names[:88] == list(EGEMAPS_NAMES) and names[-1] == "has_speaker_embedding"
    assert names[88] == "speaker_embedding_0" and pre.audio_feature_dim == len(names) == 345
    old = _pre(kind="prosody")
    assert old.audio_feature_names[:16] == list(PROSODY_NAMES) and old.audio_feature_dim == 273
    with pytest.raises(ValueError):
        _pre(kind="waveform").audio_feature_names


@needs_espeak
def test_egemaps_follow_the_voice():
    low, high = _speech(pitch=15), _speech(pitch=85)
    raw_low, raw_high = egemaps_functionals(low), egemaps_functionals(high)
    f0 = EGEMAPS_NAMES.index("F0semitoneFrom27.5Hz_sma3nz_amean")
    hz_low, hz_high = 27.5 * 2 ** (raw_low[f0] / 12), 27.5 * 2 ** (raw_high[f0] / 12)
    assert 60 < hz_low < hz_high < 400  # espeak's -p raises the pitch
    assert raw_high[f0] - raw_low[f0] > 3  # semitones
    voiced = raw_low[EGEMAPS_NAMES.index("VoicedSegmentsPerSec")]
    assert 0.5 < voiced < 10
    # Normalised: speech sits near the reference (most features within a few spreads).
    z = egemaps_features(low)
    assert z.dtype == np.float32 and z.shape == (88,) and np.isfinite(z).all()
    assert np.median(np.abs(z)) < 1.5, np.median(np.abs(z))
    assert np.mean(np.abs(z) < 3) > 0.8


@needs_espeak
def test_awkward_input_gives_finite_features():
    speech = _speech()
    rng = np.random.default_rng(0)
    nan = speech.copy()
    nan[::100] = np.nan
    cases = {"silence 1 s": np.zeros(SR, np.float32), "0.1 s": speech[:SR // 10],
             "clipped": np.clip(speech * 30, -1, 1), "8 s": np.tile(speech, 4)[:8 * SR],
             "white noise": rng.normal(0, 0.3, SR).astype(np.float32),
             "tone": (0.5 * np.sin(2 * np.pi * 220 * np.arange(SR) / SR)).astype(np.float32),
             "nan samples": nan, "25 ms": speech[SR // 2:SR // 2 + 400]}
    for name, x in cases.items():
        z = egemaps_features(x)
        assert z.shape == (88,) and np.isfinite(z).all() and np.abs(z).max() <= CLIP, name
    assert not np.array_equal(egemaps_features(cases["clipped"]), egemaps_features(speech))
    for short in (np.zeros(0, np.float32), speech[:100]):  # under one 20 ms frame: no evidence
        assert np.array_equal(egemaps_features(short), np.zeros(88, np.float32))
    # Through the preprocessor: longer than max_seconds is cut, the d-vector is appended.
    pre = _pre(max_seconds=2.0)
    u = Utterance("u", "c", "s", 0, 9, audio=np.tile(speech, 4))
    u.features["speaker_embedding"] = np.ones(256, np.float32) / 16
    f = pre.audio_inputs(u)["features"]
    assert f.shape == (1, 345) and np.isfinite(f).all() and f[0, -1] == 1
    assert np.array_equal(f[0, :88], egemaps_features(np.tile(speech, 4)[:2 * SR]))


@needs_espeak
def test_tiny_model_runs_its_audio_encoder_on_egemaps():
    from erc_ros.models.encoders.audio import AudioEncoderConfig
    from erc_ros.models.erc_model import ErcModelConfig, build_model, tiny_text_config

    torch.manual_seed(0)
    cfg = ErcModelConfig(model_id="tiny-egemaps", text=tiny_text_config(),
                         audio=AudioEncoderConfig(dim=8), video=None,
                         preprocessing=PreprocessorConfig(audio=AudioFeatureConfig(kind="egemaps")))
    model = build_model(cfg)
    assert model.config.audio.in_dim == 345 == model.audio_encoder.norm.normalized_shape[0]
    utts = [Utterance("a", "c", "Ross", 0, 2, text="hi", audio=_speech(pitch=20)),
            Utterance("b", "c", "Rachel", 2, 4, text="oh hi", audio=_speech("oh hi!", "en-us+f3", 80))]
    text, audio, video, mask = model.encode(utts, [[], utts[:1]])
    assert audio.shape == (2, 8) and mask[:, 1].all()
    assert not torch.allclose(audio[0], audio[1])
    audio.sum().backward()
    assert model.audio_encoder.net[0].weight.grad.abs().sum() > 0


@pytest.mark.skipif(not (DEFAULT / "manifest.json").is_file(), reason="no models/default")
@needs_espeak
def test_default_model_reads_egemaps_and_a_prosody_model_still_runs(tmp_path):
    """The shipped default's audio branch reads eGeMAPS + the d-vector (345 features); a
    model made before eGeMAPS (prosody, 273: the previous shipped default) still loads and
    runs its own features."""
    from _runtime_fixtures import prosody_model_dir

    from erc_ros.models.artefact import load_model_dir

    for d, kind, dim in ((DEFAULT, "egemaps", 88 + 256 + 1),
                         (prosody_model_dir(DEFAULT, tmp_path / "old"), "prosody", 16 + 256 + 1)):
        model = load_model_dir(d)
        pre = model.preprocessor
        assert pre.config.audio.kind == kind and pre.audio_feature_dim == dim
        assert model.config.audio.in_dim == dim
        u = Utterance("a", "c", "Ross", 0, 2, text="hi", audio=_speech())
        feats = pre.audio_inputs(u)["features"]
        assert feats.shape == (1, dim) and np.isfinite(feats).all()
        with torch.no_grad():
            out = model.audio_encoder(torch.as_tensor(feats))
        assert out.shape == (1, model.audio_encoder.dim) and torch.isfinite(out).all()


@needs_espeak
def test_agreement_with_opensmile():
    """Skipped where openSMILE is not installed (research licence: in no requirements file;
    ``pip install opensmile`` beside the project to run it). Figures: docs/audio.md."""
    pytest.importorskip("opensmile")
    from erc_ros.bench.egemaps_agreement import agreement, opensmile_functionals

    clips = [("low", _speech(pitch=20)), ("high", _speech("Oh wow, that is great news!", "en-us+f3", 80)),
             ("mid", _speech("Please leave me alone.", "en-us+f5", 60))]
    afx = np.stack([egemaps_functionals(x) for _, x in clips])
    res = agreement(afx, opensmile_functionals(clips))
    assert res["median_rel"] < 0.25, res["median_rel"]
    f0 = res["features"]["F0semitoneFrom27.5Hz_sma3nz_amean"]
    assert f0["rel"] < 0.05  # under ~1.5 semitones around 30 semitones
