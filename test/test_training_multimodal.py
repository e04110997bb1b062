"""The multimodal recipe on a tiny MELD.Raw-like set: real H.264/AAC clips (espeak-ng speech,
scikit-image's photographs of faces) read as the perception core reads live input, the audio
and video branches trained over a text model, the result loaded and run by the runtime.

The media carry the label and the text does not (every line is "Okay."): joy is the
astronaut's face and a high, quick voice; sadness other people's faces (LFW) and a low, slow
voice. A text model cannot tell them apart; a model that learned to see and hear can.
"""
from __future__ import annotations

import csv
import json
import time
from dataclasses import replace

import numpy as np
import pytest

from erc_ros import cli
from erc_ros.datasets import iemocap, meld
from erc_ros.models.labels import MELD_LABELS

HEADER = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID",
          "Utterance_ID", "Season", "Episode", "StartTime", "EndTime"]
#: Each dialogue's labels (rotated per dialogue), speakers alternate whatever the label.
PATTERN = ("joy", "sadness", "sadness", "joy")
#: LFW subset images the Haar detector finds once upscaled: train's people, then dev's.
LFW_FACES = ((0, 1, 2, 3), (5, 6))


def _face_images(split: int = 0):
    """(the astronaut, other people's faces) as RGB; dev (``split`` 1) sees the astronaut
    mirrored and people training never saw."""
    import cv2
    from skimage import data as sk

    joy = np.ascontiguousarray(sk.astronaut()[0:300, 150:450][:, ::-1 if split else 1])
    lfw = sk.lfw_subset()
    sad = [cv2.cvtColor((lfw[i] * 255).astype(np.uint8), cv2.COLOR_GRAY2RGB)
           for i in LFW_FACES[split]]
    return joy, sad


def _voices(split: int = 0):
    """Two takes per class, each a high and quick or a low and slow voice (other speeds for
    dev's)."""
    from _runtime_fixtures import espeak

    line = "Okay then."
    fast, slow = (("180", "210"), ("110", "130")) if split == 0 else (("195",), ("120",))
    return {"joy": [espeak(line, "en-us+f3", ("-p", "95", "-s", s)) for s in fast],
            "sadness": [espeak(line, "en-us+m3", ("-p", "5", "-s", s)) for s in slow]}


def write_clip(path, face: np.ndarray, audio: np.ndarray, shift: int = 0, fps: int = 10,
               size=(320, 240), rate: int = 48000) -> None:
    """An MP4 like MELD.Raw's: H.264 video of ``face`` on a grey background (placed by
    ``shift``, moving a little from frame to frame) and AAC stereo audio at 48 kHz (``audio``:
    16 kHz mono)."""
    from fractions import Fraction

    import av
    import cv2
    from scipy.signal import resample_poly

    pcm = resample_poly(audio, rate // 16000, 1).astype(np.float32)
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = size[0], size[1], "yuv420p"
        vs.options = {"preset": "ultrafast"}
        aus = c.add_stream("aac", rate=rate)
        aus.layout = "stereo"
        side = 160
        img = cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA)
        for i in range(max(1, int(np.ceil(pcm.size / rate * fps)))):
            canvas = np.full((size[1], size[0], 3), 90, np.uint8)
            x, y = 50 + 3 * (i % 4) + shift % 20, 30 + (i % 2) + shift // 20 % 20
            canvas[y:y + side, x:x + side] = img
            for p in vs.encode(av.VideoFrame.from_ndarray(canvas, format="rgb24")):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        stereo = np.stack([pcm, pcm])
        for s in range(0, pcm.size, 1024):
            f = av.AudioFrame.from_ndarray(np.ascontiguousarray(stereo[:, s:s + 1024]),
                                           format="fltp", layout="stereo")
            f.sample_rate, f.pts, f.time_base = rate, s, Fraction(1, rate)
            for p in aus.encode(f):
                c.mux(p)
        for p in aus.encode():
            c.mux(p)


def write_meld(root, split: str, folder: str, dialogues: int, faces, voices) -> tuple:
    """A MELD-format CSV and one clip per utterance in ``root/folder``."""
    clips = root / folder
    clips.mkdir(parents=True, exist_ok=True)
    joy, sad = faces
    rows = []
    for d in range(dialogues):
        for u in range(len(PATTERN)):
            label = PATTERN[(u + d) % len(PATTERN)]
            k = d * len(PATTERN) + u
            face = joy if label == "joy" else sad[k % len(sad)]
            write_clip(clips / f"dia{d}_utt{u}.mp4", face, voices[label][k % len(voices[label])],
                       shift=k)
            rows.append([len(rows) + 1, "Okay.", ("Ross", "Rachel")[u % 2], label,
                         "neutral", d, u, 1, 1, "00:00:01,000", "00:00:02,000"])
    path = root / f"{split}_sent_emo.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        w.writerows(rows)
    return path, clips


@pytest.fixture(scope="module")
def meld_raw(tmp_path_factory):
    """(media root, train CSV, dev CSV, text-only init model directory)."""
    import torch

    from erc_ros.models.artefact import save_model_dir
    from erc_ros.training.recipes import RECIPES
    from erc_ros.training.trainer import build_from_recipe

    root = tmp_path_factory.mktemp("meld_raw")
    train, _ = write_meld(root, "train", "train_splits", 6, _face_images(0), _voices(0))
    dev, _ = write_meld(root, "dev", "dev_splits_complete", 2, _face_images(1), _voices(1))
    torch.manual_seed(0)
    init = build_from_recipe(dict(RECIPES["tiny"]), MELD_LABELS, "tiny-text")
    init.config.trained_modalities = ("text",)  # as `train` saves a text model
    save_model_dir(init, root / "init")
    return root, train, dev, root / "init"


@pytest.mark.long
def test_multimodal_recipe_trains_audio_and_video(meld_raw, tmp_path, monkeypatch):
    from erc_ros.models.artefact import load_model_dir
    from erc_ros.runtime.pipeline import EmotionPipeline
    from erc_ros.training import recipes
    from erc_ros.training.media import MediaReader

    root, train_csv, dev_csv, init = meld_raw
    monkeypatch.setenv("ERC_ROS_CACHE", str(tmp_path / "cache"))
    # 24 training utterances: smaller batches for more steps (the recipe's 8 dialogues is
    # for MELD's thousand).
    monkeypatch.setitem(recipes.RECIPES, "multimodal",
                        dict(recipes.RECIPES["multimodal"], batch_size=2))
    out = tmp_path / "mm"
    t = time.time()
    assert cli.main(["train", "--recipe", "multimodal", "--media", str(root), "--init",
                     str(init), "--train", str(train_csv), "--dev", str(dev_csv), "--out",
                     str(out), "--epochs", "25", "--lr", "3e-3", "--threads", "2"]) == 0
    print(f"multimodal train command: {time.time() - t:.1f} s")

    man = json.loads((out / "manifest.json").read_text())
    assert man["config"]["trained_modalities"] == ["text", "audio", "video"]
    prov = man["provenance"]
    assert prov["recipe"]["name"] == "multimodal" and len(prov["recipe"]["init"]["manifest_sha256"]) == 64
    assert {k: prov["media"]["train"][k] for k in ("clips", "with_audio", "with_face", "failed")} \
        == {"clips": 24, "with_audio": 24, "with_face": 24, "failed": 0}
    m = prov["dev_metrics"]
    # The text cannot tell joy from sadness; the face and the voice can.
    assert m["weighted_f1"] > m["init_weighted_f1"] and m["weighted_f1"] >= 80, m
    assert (out / "dev_confusion.png").is_file() and (out / "train_log.json").is_file()

    # A second read comes from the cache, the same media.
    dev = meld.load_meld(dev_csv, root / "dev_splits_complete")
    again = MediaReader(progress=False)
    media = [again.read_dialogue(d) for d in dev]
    assert again.counters["from_cache"] == again.counters["clips"] == 8

    # The directory loads and runs through the runtime: audio and video are used, and each
    # changes the estimate.
    model = load_model_dir(out)
    assert model.uses("audio") and model.uses("video")
    pipe = EmotionPipeline.from_model_dir(out, backend="torch", threads=2)
    runs = {}
    for name, drop in (("all", {}), ("no audio", {"audio": np.zeros(0, np.float32)}),
                       ("no video", {"faces": []})):
        probs, used = [], []
        for d, ms in zip(dev, media):
            for u, mm in zip(d.utterances, ms):
                mm.attach(u)
                e = pipe.predict(replace(u, conversation_id=f"{name}-{u.conversation_id}",
                                         **drop))
                probs.append(e.probabilities)
                used.append((tuple(e.modalities), len(e.modality_weights)))
        runs[name] = np.asarray(probs)
        assert set(used) == {({"all": ("text", "audio", "video"), "no audio": ("text", "video"),
                               "no video": ("text", "audio")}[name], 3 - (name != "all"))}
    assert np.abs(runs["all"] - runs["no audio"]).max() > 1e-3
    assert np.abs(runs["all"] - runs["no video"]).max() > 1e-3
    # And the pipeline agrees with the model's own dialogue prediction.
    d = dev[0]
    np.testing.assert_allclose(runs["all"][:len(d.utterances)],
                               model.predict_dialogue(d.utterances), atol=1e-4)

    # `evaluate --media` scores it with its clips as the robot reads them; without them (or
    # with both dropped) it is the text alone, which cannot tell the classes apart here.
    got = {}
    for name, extra in (("media", ["--media", str(root)]), ("text", []),
                        ("dropped", ["--media", str(root / "dev_splits_complete"), "--drop",
                                     "audio", "--drop", "video"])):
        out_json = tmp_path / f"eval-{name}.json"
        assert cli.main(["evaluate", "--csv", str(dev_csv), "--model", str(out), "--json",
                         str(out_json), *extra]) == 0
        got[name] = json.loads(out_json.read_text())
    assert got["media"]["media"]["with_face"] == got["media"]["media"]["clips"] == 8
    assert got["media"]["weighted_f1"] >= 80 > got["text"]["weighted_f1"], got
    assert got["dropped"]["confusion"] == got["text"]["confusion"]
    assert got["dropped"]["media"]["dropped"] == ["audio", "video"]


def _two_utterance_csv(tmp_path):
    """A MELD-format CSV of one dialogue with two utterances (dia0_utt0, dia0_utt1)."""
    csv_path = tmp_path / "train.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        w.writerow([1, "Hello there.", "Ross", "joy", "positive", 0, 0, 1, 1, "", ""])
        w.writerow([2, "Hi.", "Rachel", "neutral", "neutral", 0, 1, 1, 1, "", ""])
    return csv_path


def test_a_broken_clip_warns_and_keeps_the_text(tmp_path, monkeypatch, capsys):
    from erc_ros.training.media import attach_media

    monkeypatch.setenv("ERC_ROS_CACHE", str(tmp_path / "cache"))
    clips = tmp_path / "train_splits"
    clips.mkdir()
    (clips / "dia0_utt0.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    csv_path = _two_utterance_csv(tmp_path)
    (d,) = meld.load_meld(csv_path, clips)
    summary = attach_media([d])
    err = capsys.readouterr().err
    assert "warning:" in err and "dia0_utt0.mp4" in err and "cannot decode" in err
    assert "1 files could not be decoded, 1 clips missing" in err
    assert (summary["clips"], summary["failed"], summary["missing"]) == (2, 1, 1)
    u = d.utterances[0]
    assert u.text == "Hello there." and not u.has_audio and not u.has_video
    assert "speaker_embedding" not in u.features
    assert meld.meld_split_dir(tmp_path, "train") == clips


def test_iemocap_utterances_are_cut_from_the_dialogue_video(tmp_path, monkeypatch):
    """IEMOCAP: each utterance's audio from its sentence WAV, its faces from its span of the
    dialogue's AVI (one pass over it), cached like clips."""
    import av

    from erc_ros.training.media import MediaReader

    monkeypatch.setenv("ERC_ROS_CACHE", str(tmp_path / "cache"))
    joy, sad = _face_images()
    root = tmp_path / "IEMOCAP_full_release"
    s = root / "Session1" / "dialog"
    for sub in ("transcriptions", "EmoEvaluation", "avi/DivX"):
        (s / sub).mkdir(parents=True)
    (s / "transcriptions" / "Ses01F_impro01.txt").write_text(
        "Ses01F_impro01_F000 [000.5000-001.5000]: Excuse me.\n"
        "Ses01F_impro01_M000 [002.5000-003.5000]: Yes?\n")
    (s / "EmoEvaluation" / "Ses01F_impro01.txt").write_text(
        "[0.5 - 1.5]\tSes01F_impro01_F000\tneu\t[2.5, 2.5, 2.5]\n"
        "[2.5 - 3.5]\tSes01F_impro01_M000\tsad\t[2.5, 2.5, 2.5]\n")
    # 4 s of video: the astronaut until 2 s, then another face.
    with av.open(str(s / "avi" / "DivX" / "Ses01F_impro01.avi"), "w") as c:
        vs = c.add_stream("mpeg4", rate=10)
        vs.width, vs.height, vs.pix_fmt = 320, 240, "yuv420p"
        import cv2

        for i in range(40):
            canvas = np.full((240, 320, 3), 90, np.uint8)
            face = joy if i < 20 else sad[0]
            canvas[40:200, 60:220] = cv2.resize(face, (160, 160), interpolation=cv2.INTER_AREA)
            for p in vs.encode(av.VideoFrame.from_ndarray(canvas, format="rgb24")):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
    from _runtime_fixtures import espeak
    from scipy.io import wavfile

    wavs = root / "Session1" / "sentences" / "wav" / "Ses01F_impro01"
    wavs.mkdir(parents=True)
    wavfile.write(wavs / "Ses01F_impro01_F000.wav", 16000, espeak("Excuse me."))
    (d,) = iemocap.load_iemocap(root, sessions=(1,), with_media=True)
    assert d.media[1].start == 2.5 and d.media[1].video.name == "Ses01F_impro01.avi"
    reader = MediaReader(progress=False)
    first, second = reader.read_dialogue(d)
    assert first.audio.size > 0 and first.speaker_embedding is not None
    assert second.audio.size == 0 and second.speaker_embedding is None  # no WAV: faces only
    assert len(first.faces) == len(second.faces) == 8
    # Different people in the two spans: the crops differ (grey LFW vs colour astronaut).
    colour = [float(np.std(f.astype(float), axis=2).mean()) for f in (first.faces[0], second.faces[0])]
    assert colour[0] > 5 > colour[1]
    again = MediaReader(progress=False)
    cached = again.read_dialogue(d)
    assert again.counters["from_cache"] == 2
    assert all(np.array_equal(a, b) for a, b in zip(cached[0].faces, first.faces))


def test_training_media_are_the_live_ones():
    """What training makes of an utterance's media is what the live core made of them, on
    the scripted three-person conversation streamed through the core (audio, 15 fps camera
    frames of the three faces, the speaker's mouth moving, timed ASR):

    - the d-vector from the utterance's audio alone (the core's windows, the VAD's speech
      ratio, the tail window): cosine > 0.97 with the live one on every turn, and closer to
      it than to any other speaker's;
    - the face crops from the same frames (the core's frame buffer, detector, frame choice
      and speaker selection weighted by voice activity): the speaker's face on 11 turns of
      12, as live. The detection schedule differs (live, it follows the polls), so a turn
      where two faces score alike may go either way: the two agree on at least 10."""
    from core_support import best_turn, face_owner, run_core, script_conversation

    from erc_ros.training.media import MediaReader, _activity

    conv = script_conversation()
    utts, _ = run_core(conv, asr="timed", video=True, t0=1000.0)
    reader = MediaReader(progress=False, use_cache=False)
    probs = [reader._speech_probabilities(u.audio) for u in utts]
    ours = np.stack([reader._embedding(u.audio, p) for u, p in zip(utts, probs)])
    live = np.stack([u.features["speaker_embedding"] for u in utts])
    same = np.sum(ours * live, axis=1)
    assert same.min() > 0.97, same
    speakers = [u.speaker_id for u in utts]
    other = [float(ours[i] @ live[j]) for i in range(len(utts)) for j in range(len(utts))
             if speakers[i] != speakers[j]]
    assert max(other) < same.min()

    faces = reader.span_faces(((1000.0 + t, img) for t, img in conv.frames(15.0)),
                              [(u.start, u.end, _activity(p, u.start))
                               for u, p in zip(utts, probs)])

    def whose(crops):  # the owner of most of the crops
        owners = [face_owner(conv, c) for c in crops]
        return max(set(owners), key=owners.count)

    truth = [best_turn(conv, u, 1000.0)[0].speaker for u in utts]
    offline = [whose(f) for f in faces]
    online = [whose(u.faces) for u in utts]
    assert all(len(f) == 8 and f[0].shape == (112, 112, 3) for f in faces)
    assert sum(a == b for a, b in zip(offline, truth)) >= 11, (offline, truth)
    assert sum(a == b for a, b in zip(online, truth)) >= 11, (online, truth)
    assert sum(a == b for a, b in zip(offline, online)) >= 10


def test_an_untrained_prosody_branch_becomes_egemaps(tmp_path):
    """Models made before eGeMAPS (the previous shipped default among them): their audio
    branch (never trained) reads the 16 prosody statistics. The multimodal recipe trains that
    branch over eGeMAPS, the packaged features, and keeps the text path's head."""
    import torch

    from _runtime_fixtures import prosody_model_dir

    from erc_ros.models.artefact import load_model_dir
    from erc_ros.paths import share_path
    from erc_ros.training.multimodal_stage import complete_model

    model = load_model_dir(prosody_model_dir(share_path("models", "default"), tmp_path / "old"))
    assert model.preprocessor.config.audio.kind == "prosody" and not model.uses("audio")
    head = {k: v.clone() for k, v in model.fusion.state_dict().items()}
    added = complete_model(model)
    assert "audio" in added and model.preprocessor.config.audio.kind == "egemaps"
    assert model.audio_encoder.config.in_dim == model.preprocessor.audio_feature_dim == 88 + 256 + 1
    assert model.config.audio is model.audio_encoder.config
    assert all(torch.equal(v, head[k]) for k, v in model.fusion.state_dict().items())
    # The shipped default was made with eGeMAPS: nothing to replace, the untrained branch
    # already reads the packaged features.
    shipped = load_model_dir(share_path("models", "default"))
    assert shipped.preprocessor.config.audio.kind == "egemaps" and not shipped.uses("audio")


def test_a_clip_too_long_or_too_large_is_refused_with_its_reason(tmp_path, monkeypatch, capsys):
    """Whole clips are bounded (an episode dropped in the folder is not one utterance):
    refused with the reason, the utterance keeps its text, nothing else is lost."""
    from _runtime_fixtures import espeak

    from erc_ros.training import media
    from erc_ros.training.media import attach_media

    monkeypatch.setenv("ERC_ROS_CACHE", str(tmp_path / "cache"))
    clips = tmp_path / "train_splits"
    clips.mkdir()
    joy, _ = _face_images()
    speech = espeak("Okay then, this is a longer line of speech.", "en-us+f3")
    for u in range(2):
        write_clip(clips / f"dia0_utt{u}.mp4", joy, speech)
    csv_path = _two_utterance_csv(tmp_path)
    monkeypatch.setattr(media, "MAX_CLIP_SECONDS", 0.5)
    (d,) = meld.load_meld(csv_path, clips)
    summary = attach_media([d])
    err = capsys.readouterr().err
    assert "longer than 0.5 s: not one utterance's clip" in err
    assert summary["failed"] == 2 and not any(u.has_audio or u.has_video for u in d.utterances)
    with pytest.raises(ValueError, match="audio longer than 0.5 s"):
        media.decode_audio(clips / "dia0_utt0.mp4")
    monkeypatch.setattr(media, "MAX_CLIP_SECONDS", 600.0)
    monkeypatch.setattr(media, "MAX_FRAME_PIXELS", 100 * 100)
    (d,) = meld.load_meld(csv_path, clips)
    summary = attach_media([d])
    assert "larger than 8K" in capsys.readouterr().err and summary["failed"] == 2


def test_clips_read_on_ray_are_the_ones_read_here(meld_raw, tmp_path, monkeypatch):
    """The media reading as Ray tasks (--workers 2 on a local Ray): each clip's audio, face
    crops are the single-process ones, bit for bit (the same code and settings), the d-vector
    too up to float32 rounding (a worker's torch runs on one thread, this process's on its
    own count: sums in another order, ~1e-7 on a unit vector), and `evaluate --media
    --workers 2` gives the same scores."""
    ray = pytest.importorskip("ray", reason="the Ray extra (make setup-ray) is not installed")
    from erc_ros.training.media import MediaReader, prefetch_on_ray
    # one local Ray of 2 CPUs for both parts (the commands use a running one as they find it)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        _compare_ray_media(meld_raw, tmp_path, monkeypatch, MediaReader, prefetch_on_ray)
    finally:
        ray.shutdown()


def _compare_ray_media(meld_raw, tmp_path, monkeypatch, MediaReader, prefetch_on_ray):

    root, train_csv, dev_csv, init = meld_raw
    dialogues = meld.load_meld(train_csv, root / "train_splits")
    here = MediaReader(cache_dir=tmp_path / "here", progress=False)
    mine = [here.read_dialogue(d) for d in dialogues]
    ray_reader = MediaReader(cache_dir=tmp_path / "ray", progress=False)
    counts = prefetch_on_ray(ray_reader, dialogues, workers=2)
    assert counts["clips"] == 24 and counts["failed"] == counts["failed_tasks"] == 0
    theirs = [ray_reader.read_dialogue(d) for d in dialogues]
    assert ray_reader.counters["from_cache"] == 24  # all of it read by the workers
    for a, b in zip(sum(mine, []), sum(theirs, [])):
        np.testing.assert_array_equal(a.audio, b.audio)
        assert len(a.faces) == len(b.faces) > 0
        for x, y in zip(a.faces, b.faces):
            np.testing.assert_array_equal(x, y)
        np.testing.assert_allclose(a.speaker_embedding, b.speaker_embedding, rtol=0, atol=1e-6)

    got = {}
    for name, extra in (("here", []), ("ray", ["--workers", "2"])):
        monkeypatch.setenv("ERC_ROS_CACHE", str(tmp_path / f"cache-{name}"))
        out_json = tmp_path / f"eval-{name}.json"
        assert cli.main(["evaluate", "--csv", str(dev_csv), "--model", str(init), "--json",
                         str(out_json), "--media", str(root), *extra]) == 0
        got[name] = json.loads(out_json.read_text())
    assert got["ray"]["media"]["on_ray"]["clips"] == 8
    assert got["ray"]["media"]["from_cache"] == 8 and got["here"]["media"]["from_cache"] == 0
    for k in ("weighted_f1", "accuracy", "confusion"):
        assert got["ray"][k] == got["here"][k]
