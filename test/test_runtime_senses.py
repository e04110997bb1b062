"""The published label from every sense (erc_ros.runtime.senses) and the pipeline's use of it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from erc_ros.core.types import (FACE_CLASSES, FACE_SEEN, VOICE_OK, VOICE_UNCERTAIN,
                                VOICE_UNFAMILIAR, Utterance)
from erc_ros.models.artefact import ArtefactError, add_artefact, write_manifest
from erc_ros.runtime.pipeline import EmotionPipeline
from erc_ros.runtime.senses import (FEATURES, FUSION_FILE, KIND, Reading, SenseFusion,
                                    SpeakerBaselines, default_model_dir, readings_of)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "models" / "default"


def dist(top: str, p: float) -> np.ndarray:
    """A distribution over FACE_CLASSES with ``p`` on ``top`` and the rest spread evenly."""
    q = np.full(len(FACE_CLASSES), (1 - p) / (len(FACE_CLASSES) - 1))
    q[FACE_CLASSES.index(top)] = p
    return q


def fusion(**theta) -> SenseFusion:
    base = {s: [0.55, 0.0, 0.0, 0.0, 0.0] for s in ("text", "voice", "face")}
    base.update(theta)
    return SenseFusion(list(FACE_CLASSES), base)


def test_a_sense_alone_gives_its_own_distribution_and_none_gives_nothing():
    f = fusion()
    p = dist("joy", 0.6)
    out, used, shares = f.fuse({"text": Reading(p)})
    assert used == ["text"] and shares == [1.0] and np.allclose(out, p)
    out, used, shares = f.fuse({})
    assert out.size == 0 and used == [] and shares == []


def test_weights_follow_the_readings_certainty():
    # the weight grows with certainty: a sure voice outweighs an undecided text
    f = fusion(text=[0.0, 0.0, 3.0, 0.0, 0.0], voice=[0.0, 0.0, 3.0, 0.0, 0.0])
    text, voice = dist("neutral", 0.3), dist("anger", 0.9)
    out, used, shares = f.fuse({"text": Reading(text), "voice": Reading(voice)})
    assert used == ["text", "voice"] and shares[1] > shares[0]
    assert abs(sum(shares) - 1) < 1e-9
    assert FACE_CLASSES[int(np.argmax(out))] == "anger"


def test_a_face_counts_from_the_speakers_second_reading_and_by_how_much_it_changed():
    # a face weighed by how far it is from the speaker's usual face
    f = fusion(face=[-2.0, 0.0, 0.0, 0.0, 6.0])
    smile, frown = dist("joy", 0.95), dist("anger", 0.95)
    text = dist("sadness", 0.4)
    base = SpeakerBaselines()
    assert base.get("alice", "face") is None
    # the first reading only sets the speaker's usual face
    out, used, _ = f.fuse({"text": Reading(text), "face": Reading(smile)})
    assert used == ["text"] and np.allclose(out, text)
    base.add("alice", "face", smile)
    usual = base.get("alice", "face")
    assert np.allclose(usual, np.log(np.clip(smile, 1e-4, 1)))
    # the same smile again tells little; a new expression tells more
    same = f.weight("face", Reading(smile, usual))
    changed = f.weight("face", Reading(frown, usual))
    assert changed > 2 * same
    out, used, shares = f.fuse({"text": Reading(text), "face": Reading(smile, usual)})
    assert used == ["text", "face"] and FACE_CLASSES[int(np.argmax(out))] == "sadness"
    out, _, _ = f.fuse({"text": Reading(text), "face": Reading(frown, usual)})
    assert FACE_CLASSES[int(np.argmax(out))] == "anger"


def _write(folder: Path, fusion: SenseFusion) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / FUSION_FILE).write_text(json.dumps(fusion.to_dict()))
    write_manifest(folder, {"format_version": 1, "kind": KIND, "model_id": "senses-test",
                            "artefacts": {}})
    add_artefact(folder, FUSION_FILE, "fusion")
    return folder


def test_a_floor_keeps_a_light_sense_from_vetoing_what_the_other_puts_first():
    # words at a tenth of the weight that rule out what the voice hears (1e-4 on it)
    f = fusion(text=[-2.2, 0.0, 0.0, 0.0, 0.0], voice=[0.55, 0.0, 0.0, 0.0, 0.0])
    text = np.full(len(FACE_CLASSES), 1e-4)
    text[FACE_CLASSES.index("neutral")], text[FACE_CLASSES.index("anger")] = 0.9, 0.1 - 6e-4
    voice = np.full(len(FACE_CLASSES), 0.04)  # surprise first, anger second
    voice[FACE_CLASSES.index("surprise")], voice[FACE_CLASSES.index("anger")] = 0.5, 0.3
    readings = {"text": Reading(text), "voice": Reading(voice)}
    out, _, shares = f.fuse(readings)
    assert 0.08 < shares[0] < 0.12
    assert FACE_CLASSES[int(np.argmax(out))] == "anger"  # neither sense's first choice
    f.floor = 0.1
    out, _, _ = f.fuse(readings)
    assert FACE_CLASSES[int(np.argmax(out))] == "surprise"
    # kept in the file; a file without it pools at the old floor; out of range is refused
    assert SenseFusion.from_dict(f.to_dict()).floor == 0.1
    old = f.to_dict()
    del old["floor"]
    assert SenseFusion.from_dict(old).floor == 1e-4
    for bad in (0.0, 1.0 / len(FACE_CLASSES)):
        with pytest.raises(ValueError, match="floor"):
            SenseFusion.from_dict({**f.to_dict(), "floor": bad})


def test_a_voice_counts_while_its_expert_finds_the_conversations_voices_familiar():
    f = fusion()
    f.min_familiar_share = 0.5
    order = np.arange(len(FACE_CLASSES))
    base = SpeakerBaselines()
    words, angry = dist("neutral", 0.6), dist("anger", 0.9)

    def heard(voice=None, unfamiliar=False, speaker="alice"):
        return f.fuse(readings_of(order, base, speaker, words, voice, None, unfamiliar))

    # two voices the expert called unfamiliar, then one it read: 1 of 3 familiar
    assert heard(unfamiliar=True)[1] == heard(unfamiliar=True)[1] == ["text"]
    out, used, _ = heard(angry, speaker="bob")
    assert used == ["text"] and np.allclose(out, words)
    # read again (whoever speaks): 2 of 4, it weighs in; a voice too short to read does
    # not count either way
    assert heard(None)[1] == ["text"]
    out, used, _ = heard(angry)
    assert used == ["text", "voice"] and FACE_CLASSES[int(np.argmax(out))] == "anger"
    # a new conversation starts from nothing: its first reading counts
    base = SpeakerBaselines()
    assert heard(angry)[1] == ["text", "voice"]
    # without the rule (0, files before it) every reading counts
    f.min_familiar_share = 0.0
    base = SpeakerBaselines()
    heard(unfamiliar=True), heard(unfamiliar=True)
    assert heard(angry)[1] == ["text", "voice"]
    f.min_familiar_share = 0.5
    assert SenseFusion.from_dict(f.to_dict()).min_familiar_share == 0.5
    old = f.to_dict()
    del old["min_familiar_share"]
    assert SenseFusion.from_dict(old).min_familiar_share == 0.0
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="min_familiar_share"):
            SenseFusion.from_dict({**f.to_dict(), "min_familiar_share": bad})


def test_the_fusion_file_round_trips_and_is_checked(tmp_path):
    f = fusion(text=[0.1, 0.2, 0.3, 0.4, 0.5])
    f.text_model_id = "text-x"
    d = _write(tmp_path / "senses", f)
    g = SenseFusion.load(d)
    assert g.theta == f.theta and g.text_model_id == "text-x"
    assert g.model_id == "senses-test"
    (d / FUSION_FILE).write_text((d / FUSION_FILE).read_text().replace("0.1", "0.9"))
    with pytest.raises(ArtefactError):
        SenseFusion.load(d)
    bad = f.to_dict()
    bad["features"] = list(FEATURES[:-1])
    with pytest.raises(ValueError, match="features"):
        SenseFusion.from_dict(bad)
    for key, value in (("class_names", ["joy", "anger"]), ("theta", {**f.to_dict()["theta"],
                                                                    "voice": [float("nan")] * 5})):
        with pytest.raises(ValueError, match="not"):
            SenseFusion.from_dict({**f.to_dict(), key: value})
    bad = f.to_dict()
    del bad["theta"]["text"]
    with pytest.raises(ValueError, match="text and some of"):
        SenseFusion.from_dict(bad)


def test_the_shipped_fusion_names_the_shipped_text_model_and_weighs_text_and_voice():
    shipped = SenseFusion.load(default_model_dir())
    manifest = json.loads((DEFAULT / "manifest.json").read_text())
    assert shipped.text_model_id == manifest["model_id"]
    assert shipped.class_names == list(FACE_CLASSES)
    assert set(shipped.theta) == {"text", "voice"}
    # the face is reported beside the label, not weighed in it
    smile = dist("joy", 0.95)
    base = SpeakerBaselines()
    base.add("alice", "face", dist("anger", 0.9))
    text = dist("sadness", 0.4)
    out, used, _ = shipped.fuse({"text": Reading(text),
                                 "face": Reading(smile, base.get("alice", "face"))})
    assert used == ["text"] and np.allclose(out, text)


def _utterance(i: int, text: str, voice=None, face=None, speaker="alice") -> Utterance:
    u = Utterance(f"u{i}", "c", speaker, float(i), i + 0.9, text)
    if voice is not None:
        u.voice_status = VOICE_OK
        u.features["voice_probabilities"] = voice
    if face is not None:
        u.face_status, u.face_count = FACE_SEEN, 1
        u.features["face_probabilities"] = face
    return u


@pytest.fixture(scope="module")
def default_pipeline():
    return EmotionPipeline.from_model_dir(DEFAULT, backend="torch")


def test_the_default_pipeline_weighs_every_sense_and_text_keeps_the_text_label(
        default_pipeline):
    pipe = default_pipeline
    assert pipe.set_fusion("senses").startswith("senses:") and pipe.fusion is not None
    pipe.reset()
    words = "Kids are talking by the door."
    angry = dist("anger", 0.97)
    est = pipe.predict(_utterance(0, words, voice=angry))
    assert est.text_label == "neutral"  # the words carry nothing
    assert est.label == "anger" and est.modalities == ["text", "audio"]
    assert len(est.modality_weights) == 2 and abs(sum(est.modality_weights) - 1) < 1e-6
    # voice only (no words heard): the voice's reading, unchanged
    est = pipe.predict(_utterance(1, "", voice=angry, speaker="bob"))
    assert est.modalities == ["audio"] and est.label == "anger"
    assert np.allclose(est.probabilities, est.voice_probabilities, atol=1e-6)
    assert est.text_probabilities == []
    # fusion text: the text model's label, the experts beside it
    assert pipe.set_fusion("text") == "the text model alone" and pipe.fusion is None
    pipe.reset()
    est = pipe.predict(_utterance(0, words, voice=angry))
    assert est.label == est.text_label == "neutral" and est.modalities == ["text"]
    assert est.voice_label == "anger"
    pipe.set_fusion("senses")


def test_the_default_pipeline_leaves_out_a_voice_among_voices_its_expert_does_not_know(
        default_pipeline):
    pipe = default_pipeline
    assert pipe.fusion.min_familiar_share == pytest.approx(1 / 3)
    pipe.reset()
    words = "Kids are talking by the door."
    for i in range(3):  # three voices unlike any the expert learned from (synthetic ones)
        u = _utterance(i, words)
        u.voice_status, u.voice_reason = VOICE_UNCERTAIN, VOICE_UNFAMILIAR
        assert pipe.predict(u).modalities == ["text"]
    # then one it reads: 1 of 4 familiar; the words' label stands, the voice's beside it
    est = pipe.predict(_utterance(3, words, voice=dist("anger", 0.97)))
    assert est.voice_label == "anger" and est.modalities == ["text"]
    assert est.label == est.text_label == "neutral"


def test_a_fusion_fitted_with_another_text_model_is_not_used(default_pipeline, tmp_path):
    other = fusion()
    other.text_model_id = "some-other-model"
    d = _write(tmp_path / "senses", other)
    pipe = default_pipeline
    why = pipe.set_fusion("senses", d)
    assert pipe.fusion is None and pipe.fusion_mode == "text" and "some-other-model" in why
    why = pipe.set_fusion("senses", tmp_path / "missing")
    assert pipe.fusion is None and "no sense fusion" in why
    with pytest.raises(ValueError, match="fusion 'both'"):
        pipe.set_fusion("both")
    pipe.set_fusion("senses")
