"""Bag-driven tests: a generated conversation (espeak-ng speech, faces, timed ASR, labels)
written by make-bag, replayed (a) live through the composed nodes with /clock and (b)
offline through the same Ingest -> PerceptionCore -> EmotionPipeline path eval-bag uses.
The labels come from the generated conversation (the bag's labels.csv / ground-truth topic).
"""
from __future__ import annotations

import pytest
import rclpy

from _ros_support import FAST_PERCEPTION, make_bag
from erc_ros.ros.live import live_replay
from erc_ros.ros.replay import replay_bag
from erc_ros.evaluation import eval_bag

pytestmark = pytest.mark.ros



def _stats(live, offline=None) -> str:
    """The cores' counters, whole, for a failure message (why an utterance came out so)."""
    import json
    out = "live: " + json.dumps(live.stats, sort_keys=True, default=str)
    if offline is not None:
        out += "\noffline: " + json.dumps(offline.stats, sort_keys=True, default=str)
    return out


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    return make_bag(tmp_path_factory.mktemp("bags") / "conv")


@pytest.fixture(scope="module")
def offline(bag, model):
    sets = tuple(f"{k}={v}" for k, v in FAST_PERCEPTION.items())
    core = eval_bag.make_core(eval_bag.DEFAULT_CONFIG, sets)
    pipe = eval_bag.make_pipeline(str(model))
    return replay_bag(bag, core, pipe)


def test_offline_replay_one_estimate_per_labelled_turn(bag, offline):
    labels = eval_bag.labels_for(bag, None, offline.ground_truth)
    assert len(labels) == 4 and len(offline.ground_truth) == 4
    assert [lab["label"] for lab in labels] == ["joy", "anger", "sadness", "neutral"]
    pairs = eval_bag.match(labels, offline.estimates)
    assert all(est is not None for _, est in pairs), "lost utterances"
    assert len(offline.estimates) == len(labels)
    for lab, est in pairs:
        assert est.text == lab["text"]  # the timed ASR text of that turn
        assert abs(est.end - lab["end"]) < 0.5 and abs(est.start - lab["start"]) < 0.5
        assert est.model_id == "tiny-test" and len(est.probabilities) == 7
    assert offline.refused == {}


def test_offline_replay_is_deterministic(bag, model, offline):
    sets = tuple(f"{k}={v}" for k, v in FAST_PERCEPTION.items())
    again = replay_bag(bag, eval_bag.make_core(eval_bag.DEFAULT_CONFIG, sets),
                       eval_bag.make_pipeline(str(model)))
    assert [(e.start, e.end, e.label, list(e.probabilities)) for e in again.estimates] == \
        [(e.start, e.end, e.label, list(e.probabilities)) for e in offline.estimates]


def test_live_replay_through_the_nodes_with_clock(bag, model, offline):
    rclpy.init()
    try:
        # 2x, not 4x: a timed result waits for its audio up to asr_wait + max_transcript_lead
        # (8 s) of the clock. After a 2 s stall of a loaded machine, the clock of a 4x replay
        # ran 8 s past audio still queued in DDS, and the utterance was built without it
        # (timed_audio_incomplete; reproduced by freezing the process). At 2x: a 4 s stall.
        live = live_replay(bag, model_dir=str(model), rate=2.0, sets=dict(FAST_PERCEPTION))
    finally:
        rclpy.try_shutdown()
    labels = eval_bag.labels_for(bag, None, live.ground_truth)
    pairs = eval_bag.match(labels, live.estimates)
    assert all(est is not None for _, est in pairs), [lab for lab, e in pairs if e is None]
    assert len(live.estimates) == len(labels)  # exactly one estimate per utterance
    # Same utterances as the offline path (sim time carried end to end: exact spans).
    assert [(e.text, round(e.start, 3), round(e.end, 3)) for e in live.estimates] == \
        [(e.text, round(e.start, 3), round(e.end, 3)) for e in offline.estimates], _stats(live)
    # Same speakers (each utterance's audio all there: the node waits for audio that lags
    # the clock), and the tiny model's text branch then gives the same label.
    assert [(e.speaker_id, e.label) for e in live.estimates] == \
        [(e.speaker_id, e.label) for e in offline.estimates], _stats(live, offline)


@pytest.fixture(scope="module")
def live_speech_bag(bag, tmp_path_factory):
    """The same conversation with its ASR as ROS4HRI/asr_vosk publish it: untimed
    hri_msgs/LiveSpeech (incremental, then final) on one topic, no times, no header stamp."""
    from hri_msgs.msg import LiveSpeech
    from rclpy.serialization import deserialize_message

    from erc_ros.ros.replay import message_class, read_bag
    from erc_ros.bags.make_bag import write_bag

    def records():
        for topic, typ, t_ns, raw in read_bag(bag):
            msg = deserialize_message(raw, message_class(typ))
            if typ == "erc_ros/msg/Transcript":
                topic, msg = "/asr/speech", (LiveSpeech(final=msg.text) if msg.is_final
                                             else LiveSpeech(incremental=msg.text))
            yield topic, t_ns / 1e9, msg
    out = tmp_path_factory.mktemp("bags") / "live_speech"
    write_bag(records(), out)
    (out / "labels.csv").write_bytes((bag / "labels.csv").read_bytes())
    return out


def test_eval_bag_scores_a_live_speech_bag_as_the_live_node_runs_it(live_speech_bag, model):
    """One assembly path: offline eval-bag and the live nodes resolve the untimed ASR of
    the bag the same way (asr_untimed segmentation), so they give the same utterances."""
    sets = tuple(f"{k}={v}" for k, v in FAST_PERCEPTION.items())
    assert eval_bag.bag_asr_type(live_speech_bag) == "live_speech"
    core = eval_bag.make_core(eval_bag.DEFAULT_CONFIG, sets,
                              asr_type=eval_bag.bag_asr_type(live_speech_bag))
    assert core.config.segmentation.mode == "asr_untimed"
    offline = replay_bag(live_speech_bag, core, eval_bag.make_pipeline(str(model)))
    rclpy.init()
    try:
        # Real time, as the robot runs it: untimed ASR results are aligned to voice activity
        # the node has processed, and at 4x the live node (diarization on, 2 shared cores)
        # fell seconds behind the clock and cut speech at the result (failed 1 in 3 runs).
        live = live_replay(live_speech_bag, model_dir=str(model), rate=1.0,
                           sets=dict(FAST_PERCEPTION))
    finally:
        rclpy.try_shutdown()
    labels = eval_bag.labels_for(live_speech_bag, None, offline.ground_truth)
    assert len(offline.estimates) == len(labels) == 4
    assert [e.text for e in offline.estimates] == [lab["text"] for lab in labels]
    assert [(e.text, round(e.start, 2), round(e.end, 2)) for e in live.estimates] == \
        [(e.text, round(e.start, 2), round(e.end, 2)) for e in offline.estimates], \
        _stats(live, offline)
