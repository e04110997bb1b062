"""Selecting on what the robot runs: the INT8 text vectors training scores a head on are the
ones of the ONNX Runtime INT8 copy `prepare` makes for the nodes, and a recipe with
``select: fp32+int8`` keeps an epoch, a head or a round by the worse of the two figures."""
from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest
import torch

from erc_ros.datasets import meld
from erc_ros.paths import data_root
from erc_ros.runtime.backends import OrtBackend
from erc_ros.runtime.manifest import find_stage_files
from erc_ros.runtime.prepare import prepare
from erc_ros.runtime.quantize import row_cosines
from erc_ros.training.deployed import (int8_text_encoder, int8_text_vectors, selection_figure,
                                       with_text)
from erc_ros.training.fusion_stage import (FusionStageConfig, dev_figures, encode_dialogues,
                                           fit_head)

MELD_DEV = data_root() / "meld" / "dev_sent_emo.csv"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random model directory, loaded back, and four MELD dev dialogues."""
    from erc_ros.models.artefact import load_model_dir, save_model_dir
    from erc_ros.models.erc_model import ErcModelConfig, build_model, tiny_text_config

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("deployed") / "tiny"
    save_model_dir(build_model(ErcModelConfig(model_id="tiny-int8", text=tiny_text_config(),
                                              audio=None, video=None)), d, dtype="float32")
    return d, load_model_dir(d).eval(), meld.load_meld(MELD_DEV)[:4]


def _sha(p) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_the_int8_copy_is_the_one_prepare_makes_for_the_nodes(tiny, tmp_path, monkeypatch):
    d, model, dialogues = tiny
    monkeypatch.setenv("ERC_ROS_CACHE", str(tmp_path / "cache"))
    rdir = prepare(d, ["int8"])
    shipped = rdir / find_stage_files(rdir, "onnx", "int8")["text_encoder"]
    mine = int8_text_encoder(model, tmp_path / "mine")
    assert _sha(mine) == _sha(shipped)  # byte for byte: the same export and quantization
    # Its vectors: each prompt alone with its past context, as the pipeline feeds it.
    vecs = int8_text_vectors(model, dialogues, threads=1, progress=False)
    ort = OrtBackend(shipped, providers=["CPUExecutionProvider"], threads=1)
    k = model.preprocessor.config.prompt.past_context
    for dlg, v in zip(dialogues, vecs):
        u = dlg.utterances
        want = np.stack([ort.run(model.preprocessor.text_inputs(u[i], u[max(0, i - k):i]))
                         ["text_vec"][0] for i in range(len(u))])
        # The same file on the same inputs: the same integer GEMMs and float epilogues; only
        # the thread split may reorder a float sum (bound: the arithmetic, not a fudge).
        from _tolerances import network_bound

        cfg = model.text_encoder.backbone.config
        bound = network_bound(cfg.num_hidden_layers + 1, cfg.intermediate_size,
                              float(np.abs(want).max()))
        assert v.shape == want.shape and float(np.abs(v.numpy() - want).max()) <= bound
    # And it is a quantized copy of the FP32 encoder, not another model.
    fp32 = encode_dialogues(model, dialogues, progress=False)
    cos = row_cosines(torch.cat([c.text for c in fp32]).numpy(), torch.cat(vecs).numpy())
    assert cos.mean() > 0.9, cos


def test_select_by_the_worse_of_fp32_and_int8(tiny):
    assert selection_figure({"weighted_f1": 61.7, "weighted_f1_int8": 60.8}, "fp32+int8") == 60.8
    assert selection_figure({"weighted_f1": 61.7, "weighted_f1_int8": 62.0}, "fp32+int8") == 61.7
    assert selection_figure({"weighted_f1": 61.7, "weighted_f1_int8": 60.8}, "fp32") == 61.7
    assert selection_figure({}, "fp32+int8") == -1.0
    with pytest.raises(ValueError, match="unknown selection rule"):
        selection_figure({"weighted_f1": 1.0}, "int4")
    # A head over cached vectors: each epoch is scored on both copies, and the kept epoch is
    # the one whose worse figure is best.
    _, model, dialogues = tiny
    cached = encode_dialogues(model, dialogues, progress=False)
    int8 = with_text(cached, int8_text_vectors(model, dialogues, threads=1, progress=False))
    cfg = FusionStageConfig(epochs=4, class_weight_power=0.0, modality_dropout=0.0, threads=1)
    head, _, s = fit_head(model, "concat", cached, cached, cfg, dev_int8=int8,
                          select="fp32+int8")
    hist = s["history"]
    assert all("weighted_f1_int8" in h for h in hist) and s["config"]["select"] == "fp32+int8"
    best = max(hist, key=lambda h: selection_figure(h, "fp32+int8"))
    assert selection_figure(s["best"], "fp32+int8") == selection_figure(best, "fp32+int8")
    # The kept head scores as recorded on both copies.
    again = dev_figures(head, cached, model.label_names, int8)
    assert again["weighted_f1"] == s["best"]["weighted_f1"]
    assert again["weighted_f1_int8"] == s["best"]["weighted_f1_int8"]
    with pytest.raises(ValueError, match="needs dev_int8"):
        fit_head(model, "concat", cached, cached, cfg, select="fp32+int8")
    with pytest.raises(ValueError, match="vector sets"):
        with_text(cached, [c.text for c in cached[:-1]])


def test_vectors_are_cached_per_model_and_data(tiny, tmp_path, monkeypatch):
    """A head refit over the same encoder and data reads the vectors back instead of encoding
    again; other data (or another model) gets a file of its own."""
    _, model, dialogues = tiny
    first = encode_dialogues(model, dialogues, progress=False, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("vectors-*.safetensors"))) == 1
    with monkeypatch.context() as m:
        m.setattr(model, "encode", lambda *a, **k: pytest.fail("encoded again"))
        again = encode_dialogues(model, dialogues, progress=False, cache_dir=tmp_path)
    assert len(again) == len(first)
    for a, b in zip(first, again):
        assert torch.equal(a.text, b.text) and torch.equal(a.labels, b.labels)
        assert torch.equal(a.speakers, b.speakers) and torch.equal(a.modality, b.modality)
    fewer = encode_dialogues(model, dialogues[:2], progress=False, cache_dir=tmp_path)
    assert len(fewer) == 2 and len(list(tmp_path.glob("vectors-*.safetensors"))) == 2


@pytest.mark.long
def test_train_selects_stage_two_and_rounds_on_the_int8_copy_too(tmp_path, monkeypatch,
                                                                  capsys):
    """Stage 2 fits a head per head seed and keeps the best by the rule; a round is kept
    when the mean of its heads beats the model's (the encoders compared, not two seeds)."""
    from erc_ros import cli
    from erc_ros.models.artefact import load_model_dir
    from erc_ros.training import recipes, trainer
    from erc_ros.training.fusion_stage import encode_dialogues as encode

    monkeypatch.setenv("ERC_ROS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(recipes.RECIPES, "tiny", dict(
        recipes.RECIPES["tiny"], select="fp32+int8",
        fusion_stage=dict(head="concat", class_weight_power=0.5, epochs=2, head_seeds=2),
        rounds=[dict(epochs=1)]))
    out = tmp_path / "m"
    assert cli.main(["train", "--recipe", "tiny", "--out", str(out), "--limit-dialogues", "8",
                     "--max-steps", "2", "--fp32"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"round \(cycle 2\): dev \S+ \(INT8 \S+\), 2 heads' mean \S+", err), \
        err[-2000:]
    log = json.loads((out / "train_log.json").read_text())
    s2 = [h for h in log["history"] if h.get("stage") == 2]
    assert len(s2) == 8 and all("weighted_f1_int8" in h for h in s2)  # 2 heads x 2 epochs x 2
    assert [h["head_seed"] for h in s2[:4]] == [13, 13, 14, 14]
    best = json.loads((out / "manifest.json").read_text())["provenance"]["dev_metrics"]
    assert best["select"] == "fp32+int8" and "weighted_f1_int8" in best
    heads = best["heads"]
    assert [h["head_seed"] for h in heads] == [13, 14]
    figures = [selection_figure(h, "fp32+int8") for h in heads]
    assert best["head_mean"] == round(sum(figures) / 2, 2)
    if best.get("stage") == 2:  # a stage-2 head is saved: the best of the two, as recorded
        assert selection_figure(best, "fp32+int8") == max(figures)
        model = load_model_dir(out).eval()
        dev = meld.load_meld(MELD_DEV)[:2]
        assert dev_figures(model.fusion, encode(model, dev, progress=False), model.label_names
                           )["weighted_f1"] == best["weighted_f1"]
    # An --init model is scored here by the rule, never by the INT8 figure its manifest
    # records (made from other weights, or by another machine's kernels).
    calls = []
    scored = trainer._model_figures
    monkeypatch.setattr(trainer, "_model_figures",
                        lambda *a, **k: calls.append(a[0].config.model_id) or scored(*a, **k))
    assert cli.main(["train", "--recipe", "tiny", "--init", str(out), "--out",
                     str(tmp_path / "s2"), "--limit-dialogues", "8", "--cycle", "3"]) == 0
    assert len(calls) == 1
    # Rounds over that model: its heads are fitted first (what its encoder is worth), and
    # --select fp32 goes back to the FP32 figure alone.
    again = tmp_path / "again"
    assert cli.main(["train", "--recipe", "tiny", "--init", str(out), "--out", str(again),
                     "--limit-dialogues", "8", "--max-steps", "2", "--cycle", "2",
                     "--select", "fp32"]) == 0
    log = json.loads((again / "train_log.json").read_text())
    s2 = [h for h in log["history"] if h.get("stage") == 2]
    assert len(s2) == 8 and {h.get("cycle") for h in log["history"]} == {2, None}
    assert not any("weighted_f1_int8" in h for h in log["history"])
    with pytest.raises(SystemExit):
        cli.main(["train", "--recipe", "tiny", "--out", str(again), "--select", "int4"])
    with pytest.raises(SystemExit, match="--recipe multimodal keeps"):
        cli.main(["train", "--recipe", "multimodal", "--out", str(again), "--select", "fp32"])
    # An INT8 copy the runtime would reject (as MPNet's, mean cosine 0.106) is not what the
    # nodes run: they run that encoder in FP32, so selection falls back to the FP32 figure.
    from erc_ros.runtime import quantize

    monkeypatch.setattr(quantize, "MIN_COSINE", 1.5)  # every copy "rejected"
    capsys.readouterr()
    assert cli.main(["train", "--recipe", "tiny", "--out", str(again), "--limit-dialogues",
                     "8", "--max-steps", "2"]) == 0
    assert "the runtime would run it in FP32, so selection is on FP32" in capsys.readouterr().err
    log = json.loads((again / "train_log.json").read_text())
    assert not any("weighted_f1_int8" in h for h in log["history"])


def test_the_int8_copy_selection_scores_is_made_from_the_weights_as_saved(tiny, tmp_path):
    """The INT8 error is a draw that any perturbation of the weights re-rolls (float16
    storage moved one head's INT8 figure by a point), so selection scores the INT8 copy of
    the weights as the model directory will hold them, not of those in memory."""
    from erc_ros.models.artefact import load_model_dir, save_model_dir
    from erc_ros.training.trainer import _int8_dev

    import copy

    model, dialogues = copy.deepcopy(tiny[1]), tiny[2]  # the fixture's model stays as it is
    with torch.no_grad():  # weights that float16 storage really rounds
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    cached = encode_dialogues(model, dialogues, progress=False)
    saved = []

    def store(m, directory, prov=None):
        save_model_dir(m, directory, provenance=prov, dtype="float16")
        saved.append(directory)

    got = _int8_dev(model, dialogues, cached, "fp32+int8", 1, store)
    assert len(saved) == 1 and not saved[0].exists()  # a temporary copy, removed
    save_model_dir(model, tmp_path / "as-saved", dtype="float16")
    want = int8_text_vectors(load_model_dir(tmp_path / "as-saved"), dialogues, threads=1,
                             progress=False)
    assert all(torch.equal(a.text, b) for a, b in zip(got, want))
    assert _int8_dev(model, dialogues, cached, "fp32", 1, store) is None
