"""Audio and video encoders on real signals (espeak-ng speech, a photographed face)."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import torch

from _tolerances import network_bound
from erc_ros.core.types import Utterance
from erc_ros.models.encoders.audio import AudioEncoderConfig, build_audio_encoder
from erc_ros.models.encoders.video import VideoEncoderConfig, build_video_encoder
from erc_ros.models.preprocessing import Preprocessor, PreprocessorConfig, packaged_minilm_dir, prosody_features
from erc_ros.core.audio_buffer import read_wav_16k

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                reason="espeak-ng is installed by tools/setup.sh on CI")


def _speech(tmp_path, pitch, text="I can't believe you did that to me again", name="a"):
    wav = tmp_path / f"{name}.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-p", str(pitch), "-w", str(wav), text],
                   check=True, capture_output=True)
    return read_wav_16k(wav)


def test_prosody_features_follow_the_voice(tmp_path):
    low, high = _speech(tmp_path, 10, name="low"), _speech(tmp_path, 90, name="high")
    fl, fh = prosody_features(low), prosody_features(high)
    assert abs(fl[0] - low.size / 16000) < 1e-3  # duration
    assert 0.3 < fl[6] <= 1.0  # voiced fraction of speech
    f0_low, f0_high = np.exp(fl[7]), np.exp(fh[7])
    assert 60 < f0_low < f0_high < 400  # espeak's -p raises the pitch
    assert np.all(prosody_features(np.zeros(100, np.float32)) == 0)


def test_prosody_encoder_uses_the_speaker_embedding(tmp_path):
    pre = Preprocessor(PreprocessorConfig(), packaged_minilm_dir() / "tokenizer.json")
    u = Utterance("u", "c", "s", 0, 1, audio=_speech(tmp_path, 50))
    f0 = pre.audio_inputs(u)["features"]
    u.features["speaker_embedding"] = np.ones(256, np.float32) / 16
    f1 = pre.audio_inputs(u)["features"]
    assert f0.shape == f1.shape == (1, pre.audio_feature_dim) and f0[0, -1] == 0 and f1[0, -1] == 1
    torch.manual_seed(0)
    enc = build_audio_encoder(AudioEncoderConfig(in_dim=pre.audio_feature_dim, dim=8))
    a, b = enc(torch.as_tensor(f0)), enc(torch.as_tensor(f1))
    assert a.shape == (1, 8) and not torch.allclose(a, b)
    b.sum().backward()
    assert enc.net[0].weight.grad.abs().sum() > 0


def test_ssl_audio_encoder_attention_mask(tmp_path):
    """A tiny wav2vec2 (random weights): a padded batch row equals the row run alone."""
    cfg = dict(model_type="wav2vec2", hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=32, conv_dim=[16, 16], conv_kernel=[10, 3], conv_stride=[5, 2],
               num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
               feat_extract_norm="layer", do_stable_layer_norm=True)
    torch.manual_seed(0)
    enc = build_audio_encoder(AudioEncoderConfig(kind="ssl", backbone=cfg)).eval()
    pre = Preprocessor(PreprocessorConfig(), packaged_minilm_dir() / "tokenizer.json")
    pre.config.audio.kind = "waveform"
    long = pre.audio_inputs(Utterance("a", "c", "s", 0, 1, audio=_speech(tmp_path, 50)))
    short = pre.audio_inputs(Utterance("b", "c", "s", 0, 1, audio=_speech(tmp_path, 50, "yes", "b")))
    n = long["input_values"].shape[1]
    m = short["input_values"].shape[1]
    vals = np.zeros((2, n), np.float32)
    mask = np.zeros((2, n), np.int64)
    vals[0], mask[0] = long["input_values"][0], 1
    vals[1, :m], mask[1, :m] = short["input_values"][0], 1
    with torch.no_grad():
        both = enc(torch.as_tensor(vals), torch.as_tensor(mask))
        alone = enc(torch.as_tensor(short["input_values"]), torch.as_tensor(short["attention_mask"]))
    assert both.shape == (2, enc.dim) == (2, 16)
    # Rounding only: 2 feature convolutions (10 and 3 x 16 terms), the feature projection,
    # the positional convolution (16 taps x 8 channels per group = 128 terms) and 2 layers of
    # 7 dot-product steps (the softmax-weighted sum runs over the frames).
    frames = n // (5 * 2)  # conv strides 5 and 2
    bound = network_bound(2 + 1 + 1 + 2 * 7, max(128, frames), alone.abs().max().item())
    assert (both[1] - alone[0]).abs().max().item() <= bound


def _face():
    from skimage import data

    img = data.astronaut()  # a photographed, smiling face
    return np.ascontiguousarray(img[30:230, 150:330])


@pytest.mark.parametrize("kind", ["cnn", "vit"])
def test_video_encoder_frame_mask(kind):
    pre = Preprocessor(PreprocessorConfig(), packaged_minilm_dir() / "tokenizer.json")
    face = _face()
    u = Utterance("u", "c", "s", 0, 1, faces=[face, face[:, ::-1].copy()])
    v = pre.video_inputs(u)
    assert v["pixel_values"].shape == (1, 4, 1, 48, 48) and v["frame_mask"].sum() == 2
    assert abs(float(v["pixel_values"][0, 0].mean())) < 1.0  # normalised
    if kind == "cnn":
        cfg = VideoEncoderConfig(kind="cnn", dim=8)
    else:
        cfg = VideoEncoderConfig(kind="vit", backbone=dict(
            model_type="vit", hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=32, image_size=48, patch_size=16, num_channels=1))
    torch.manual_seed(0)
    enc = build_video_encoder(cfg).eval()
    px, fm = torch.as_tensor(v["pixel_values"]), torch.as_tensor(v["frame_mask"])
    with torch.no_grad():
        a = enc(px, fm)
        px2 = px.clone()
        px2[0, 2:] = torch.randn_like(px2[0, 2:])  # masked-out frames do not matter
        b = enc(px2, fm)
        fm2 = fm.clone()
        fm2[0, 1] = False  # dropping a real frame does
        c = enc(px, fm2)
    assert a.shape == (1, enc.dim)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    enc.train()
    if kind == "cnn":
        enc(px, fm).sum().backward()
        assert enc.net[0].weight.grad.abs().sum() > 0
