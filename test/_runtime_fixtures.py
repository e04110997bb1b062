"""Tiny real models and real media for the runtime tests (engineer C).

Models are built through the models API with tiny random weights (BERT hidden 16, 2 layers,
the packaged MiniLM tokenizer); speech comes from espeak-ng, faces from scikit-image's
astronaut photograph.
"""
from __future__ import annotations

import shutil
import subprocess
import wave
from dataclasses import replace
from pathlib import Path

import numpy as np


def tiny_model(fusion_head: str = "concat", audio: bool = True, video: bool = True,
               model_id: str = "tiny", seed: int = 0):
    import torch

    from erc_ros.models.encoders.audio import AudioEncoderConfig
    from erc_ros.models.encoders.video import VideoEncoderConfig
    from erc_ros.models.erc_model import ErcModelConfig, build_model, tiny_text_config

    torch.manual_seed(seed)
    cfg = ErcModelConfig(model_id=model_id, text=tiny_text_config(),
                         audio=AudioEncoderConfig(dim=8) if audio else None,
                         video=VideoEncoderConfig(dim=8) if video else None,
                         fusion_head=fusion_head,
                         fusion={"d_model": 16, "num_heads": 2, "num_layers": 1, "hidden": 0,
                                 "zero_init_av": False, "dropout": 0.0})
    model = build_model(cfg).eval()
    # Random heads start near-uniform; scale the classifier so labels are decisive and a
    # broken export shows up as label changes, not only as small differences.
    with torch.no_grad():
        for p in model.fusion.parameters():
            p.mul_(3.0)
    return model


def save_tiny(model, directory: Path) -> Path:
    from erc_ros.models.artefact import save_model_dir

    return save_model_dir(model, directory)


def espeak(text: str, voice: str = "en-us+f3", options: tuple = ()) -> np.ndarray:
    """Mono float32 16 kHz speech from espeak-ng (22.05 kHz) resampled with scipy;
    ``options``: more espeak-ng arguments (``("-p", "90")``: pitch, ``("-s", "120")``: words
    per minute)."""
    from scipy.signal import resample_poly

    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed (tools/setup.sh installs it)")
    wav = subprocess.run(["espeak-ng", "-v", voice, *options, "--stdout", text],
                         capture_output=True, check=True).stdout
    import io

    with wave.open(io.BytesIO(wav)) as w:
        sr = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
    return resample_poly(pcm, 16000, sr).astype(np.float32)


def astronaut_faces(n: int = 3, size: int = 64) -> list[np.ndarray]:
    """Crops of the face in skimage's astronaut photo (RGB uint8), slightly shifted."""
    from skimage import data

    img = data.astronaut()
    crops = []
    for k in range(n):
        y, x = 30 + 4 * k, 170 + 3 * k
        crop = img[y:y + 160, x:x + 160]
        idx = (np.arange(size) * crop.shape[0] / size).astype(int)
        crops.append(np.ascontiguousarray(crop[idx][:, idx]))
    return crops


def dialogue_with_media(audio: bool = True, video: bool = True):
    """The built-in conversation with real speech on every utterance and faces on some."""
    from erc_ros.runtime.samples import builtin_dialogues

    out = []
    faces = astronaut_faces()
    for i, u in enumerate(builtin_dialogues()[0]):
        kw = {}
        if audio and i % 3 != 2:
            kw["audio"] = espeak(u.text, "en-us+f3" if u.speaker_id == "Rachel" else "en-us+m3")
        if video and i % 2 == 0:
            kw["faces"] = faces
        out.append(replace(u, **kw))
    return out


def prosody_model_dir(model_dir: Path, out: Path) -> Path:
    """``model_dir`` saved as a model made before eGeMAPS was: its (untrained) audio branch
    reading the 16 prosody statistics + the d-vector (273 features), as the shipped
    ``erc-default-20261121b`` did. The text path is unchanged."""
    from erc_ros.models.artefact import load_model_dir, save_model_dir
    from erc_ros.models.encoders.audio import AudioEncoderConfig, build_audio_encoder

    model = load_model_dir(model_dir)
    model.preprocessor.config.audio.kind = "prosody"  # the model's config.preprocessing too
    cfg = AudioEncoderConfig(dim=model.audio_encoder.dim,
                             in_dim=model.preprocessor.audio_feature_dim)
    model.config.audio, model.audio_encoder = cfg, build_audio_encoder(cfg)
    model.config.model_id = "made-before-egemaps"
    return save_model_dir(model, out, dtype="float16", external_word_embeddings=True)
