"""The shipped default model through ONNX Runtime vs PyTorch on MELD dev (engineer C).

The full-dev figure (>= 99.5% label agreement) comes from
``python -m erc_ros export --model models/default --check-dev``; this test exports the
default model into a temporary overlay and checks the first dialogues of MELD dev.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from erc_ros.runtime.evaluation import run_dialogues
from erc_ros.runtime.samples import load_meld, meld_dir
from erc_ros.runtime.pipeline import EmotionPipeline

DEFAULT = Path(__file__).resolve().parents[1] / "models" / "default"

pytestmark = pytest.mark.skipif(not (DEFAULT / "manifest.json").is_file(),
                                reason="models/default has not been trained into the repo")


@pytest.mark.skipif(meld_dir() is None, reason="MELD dev not found ($ERC_ROS_DATA)")
def test_default_model_onnx_agrees_with_torch_on_meld_dev(tmp_path, monkeypatch):
    monkeypatch.setenv("ERC_ROS_CACHE", str(tmp_path / "cache"))
    dialogues = [u for u, _ in load_meld("dev", limit=12)]
    torch_pipe = EmotionPipeline.from_model_dir(DEFAULT, backend="torch")
    ort_pipe = EmotionPipeline.from_model_dir(DEFAULT, backend="onnxruntime", precision="fp32",
                                             prepare=True)
    assert ort_pipe.backend_name == "onnxruntime"
    p_t, l_t, _ = run_dialogues(torch_pipe, dialogues)
    p_o, l_o, _ = run_dialogues(ort_pipe, dialogues)
    agreement = float(np.mean([a == b for a, b in zip(l_t, l_o)]))
    assert agreement >= 0.995, agreement
    assert np.abs(p_t - p_o).max() < 1e-3


@pytest.mark.skipif(meld_dir() is None, reason="MELD dev not found ($ERC_ROS_DATA)")
def test_untrained_modalities_are_neither_run_nor_used():
    """The default model's head was trained on text alone (MELD text only here): its audio
    and video encoders are not run, and audio/faces on an utterance change nothing."""
    from erc_ros.runtime.samples import with_synthetic_media

    pipe = EmotionPipeline.from_model_dir(DEFAULT, backend="torch")
    assert pipe.model.config.trained_modalities == ("text",)
    assert not pipe.model.uses("audio") and not pipe.model.uses("video")
    assert set(pipe.stages) == {"text_encoder", "fusion"}
    (dialogue, _), = load_meld("dev", limit=1)
    plain = [pipe.predict(u).probabilities for u in dialogue[:4]]
    pipe.reset()
    media = [pipe.predict(with_synthetic_media(u, seed=i)).probabilities
             for i, u in enumerate(dialogue[:4])]
    np.testing.assert_allclose(np.stack(plain), np.stack(media), atol=1e-6)
    # A model whose config names no trained modalities runs every encoder it has.
    pipe.model.config.trained_modalities = None
    assert pipe.model.uses("audio") and pipe.model.uses("video")
