"""The shipped default model through ONNX Runtime vs PyTorch on MELD dev (engineer C).

The full-dev figure (>= 99.5% label agreement) comes from
``python -m erc_ros export --model models/default --check-dev``; this test exports the
default model into a temporary overlay and checks the first dialogues of MELD dev.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from erc_ros.runtime.evaluation import load_meld, meld_dir, run_dialogues
from erc_ros.runtime.pipeline import EmotionPipeline

DEFAULT = Path(__file__).resolve().parents[1] / "models" / "default"

pytestmark = pytest.mark.skipif(not (DEFAULT / "manifest.json").is_file(),
                                reason="models/default has not been trained into the repo")


@pytest.mark.skipif(meld_dir() is None, reason="MELD dev not found ($ERC_ROS_DATA)")
def test_default_model_onnx_agrees_with_torch_on_meld_dev(tmp_path, monkeypatch):
    monkeypatch.setenv("ERC_ROS_CACHE", str(tmp_path / "cache"))
    dialogues = [u for u, _ in load_meld("dev", limit=12)]
    torch_pipe = EmotionPipeline.from_model_dir(DEFAULT, backend="torch")
    ort_pipe = EmotionPipeline.from_model_dir(DEFAULT, backend="onnxruntime", precision="fp32")
    assert ort_pipe.backend_name == "onnxruntime"
    p_t, l_t, _ = run_dialogues(torch_pipe, dialogues)
    p_o, l_o, _ = run_dialogues(ort_pipe, dialogues)
    agreement = float(np.mean([a == b for a, b in zip(l_t, l_o)]))
    assert agreement >= 0.995, agreement
    assert np.abs(p_t - p_o).max() < 1e-3
