"""The text stage under torchrun: 2 CPU processes (gloo) keep identical weights."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import os, sys, torch
    from safetensors.torch import save_file
    from erc_ros.datasets import meld
    from erc_ros.models.labels import MELD_LABELS
    from erc_ros.paths import data_root
    from erc_ros.training.recipes import RECIPES
    from erc_ros.training.trainer import build_from_recipe
    from erc_ros.training.text_stage import TextStageConfig, train_text_stage

    rank = int(os.environ["RANK"])
    out = sys.argv[1]
    torch.manual_seed(100 + rank)  # different initial weights per rank: DDP must sync them
    model = build_from_recipe(dict(RECIPES["tiny"]), MELD_LABELS, "ddp")
    init = {k: v.clone() for k, v in model.state_dict().items()}
    dialogues = meld.load_meld(data_root() / "meld" / "dev_sent_emo.csv")[:16]
    s = train_text_stage(model, dialogues, [], TextStageConfig(
        epochs=1, batch_size=4, max_steps=4, lr=1e-3, head_lr=1e-3, threads=1), progress=False)
    assert s["steps"] == 4, s
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{out}/rank{rank}.safetensors")
    save_file({k: v.contiguous() for k, v in init.items()}, f"{out}/init{rank}.safetensors")
""")


@pytest.mark.long
def test_two_gloo_processes_keep_identical_weights(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node=2", str(script), str(tmp_path)],
                       env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    w0, w1 = (load_file(str(tmp_path / f"rank{i}.safetensors")) for i in (0, 1))
    i0, i1 = (load_file(str(tmp_path / f"init{i}.safetensors")) for i in (0, 1))
    assert any(not torch.equal(i0[k], i1[k]) for k in i0)  # they did start apart
    for k in w0:
        torch.testing.assert_close(w0[k], w1[k], atol=0, rtol=0, msg=k)
    trained = [k for k in w0 if k.startswith(("text_encoder.", "fusion.proj.0"))]
    moved = [k for k in trained if not torch.equal(w0[k], i0[k])]
    assert len(moved) > 0.8 * len(trained)  # and the text stage trained them
