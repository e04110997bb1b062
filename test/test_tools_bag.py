"""The bag tools end to end through the CLI: make-bag (MCAP and sqlite3), eval-bag on many
bags (CSV, metrics JSON keys, confusion PNG, markdown summary, --labels), demo, bench-e2e
(nodes in a separate process) and record (a recorded session evaluates like the original)."""
from __future__ import annotations

import csv
import json
import threading
import time

import pytest

from _ros_support import SCRIPT
from erc_ros.cli import main as cli
from erc_ros.core.types import FACE_CLASSES, VOICE_OK, VOICE_UNCERTAIN, VOICE_UNCERTAIN_REASONS

pytestmark = pytest.mark.ros
FAST = ["--set", "perception.diarization.warmup=false"]



@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    d = tmp_path_factory.mktemp("bags")
    (d / "script.txt").write_text(SCRIPT)
    out = {}
    for storage in ("mcap", "sqlite3"):
        out[storage] = d / storage
        assert cli(["make-bag", "--script", str(d / "script.txt"), "--out", str(out[storage]),
                    "--storage", storage, "--fps", "2"]) == 0
    return out


def test_make_bag_contents(bags):
    from erc_ros.ros.live import bag_connections
    assert (bags["sqlite3"] / "sqlite3.db3").is_file() or list(bags["sqlite3"].glob("*.db3"))
    assert list(bags["mcap"].glob("*.mcap"))
    conns = bag_connections(bags["mcap"])
    assert conns == {"/audio": "audio_common_msgs/msg/AudioDataStamped",
                     "/audio_info": "audio_common_msgs/msg/AudioInfo",
                     "/camera/image_raw/compressed": "sensor_msgs/msg/CompressedImage",
                     "/erc_ros/transcript": "erc_ros/msg/Transcript",
                     "/erc_ros/ground_truth": "std_msgs/msg/String"}
    rows = list(csv.DictReader(open(bags["mcap"] / "labels.csv")))
    assert [r["label"] for r in rows] == ["joy", "anger", "sadness", "neutral"]
    assert cli(["make-bag", "--script", "x", "--out", str(bags["mcap"])]) == 2  # exists


def test_eval_bag_many_bags(bags, model, tmp_path, voice_model_dir):
    out, js = tmp_path / "ev", tmp_path / "m.json"
    rc = cli(["eval-bag", str(bags["mcap"]), str(bags["sqlite3"]), "--model-dir", str(model),
              "--out", str(out), "--json", str(js), "--quiet", *FAST,
              "--set", f"perception.voice.model={voice_model_dir}"])
    assert rc == 0
    m = json.loads(js.read_text())
    for key in ("realtime_factor", "utterances", "estimates", "weighted_f1", "accuracy",
                "per_class_f1", "lost", "latency_ms", "realtime_factor_per_cpu"):
        assert key in m, key
    assert m["utterances"] == 8 and m["estimates"] == 8 and m["lost"] == 0
    assert 0.0 <= m["weighted_f1"] <= 1.0 and m["realtime_factor"] > 0
    assert len(m["bags"]) == 2
    # each bag's perception counters: its 4 timed utterances, each with all its audio
    assert all(b["perception"]["utterances_timed"] == 4 and
               b["perception"]["timed_audio_incomplete"] == 0 for b in m["bags"]), m["bags"]
    rows = list(csv.DictReader(open(out / "utterances.csv")))
    assert len(rows) == 8 and all(r["predicted"] for r in rows)
    # The face expert's own word beside the fused label (the bags' camera shows faces).
    from erc_ros.core.types import FACE_SEEN, FACE_STATUSES

    assert all(r["face_status"] in FACE_STATUSES for r in rows)
    seen = [r for r in rows if r["face_status"] == FACE_SEEN]
    assert seen and all(r["face_label"] and 0 < float(r["face_confidence"]) <= 1 for r in seen)
    assert all(not r["face_label"] for r in rows if r["face_status"] != FACE_SEEN)
    # and the voice expert's, on each utterance's audio: a reading or why not, never nothing
    assert all(r["voice_status"] in (VOICE_OK, VOICE_UNCERTAIN) for r in rows), rows
    for r in rows:
        if r["voice_status"] == VOICE_OK:
            assert r["voice_label"] and 0 < float(r["voice_confidence"]) <= 1
            assert r["voice_reason"] == ""
        else:
            assert r["voice_reason"] in VOICE_UNCERTAIN_REASONS
            assert r["voice_label"] == r["voice_confidence"] == ""
    assert (out / "confusion.png").stat().st_size > 1000
    assert "weighted F1" in (out / "summary.md").read_text()
    # the same bag, stored twice, scores the same (deterministic, storage-independent)
    a = [r["predicted"] for r in rows if r["bag"] == "mcap"]
    b = [r["predicted"] for r in rows if r["bag"] == "sqlite3"]
    assert a == b


def test_eval_bag_with_labels_csv(bags, model, tmp_path):
    rows = list(csv.DictReader(open(bags["mcap"] / "labels.csv")))
    for r in rows:
        r["label"] = "neutral"
    path = tmp_path / "labels.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    js = tmp_path / "m.json"
    assert cli(["eval-bag", str(bags["mcap"]), "--labels", str(path), "--model-dir", str(model),
                "--out", str(tmp_path / "ev"), "--json", str(js), "--quiet", *FAST]) == 0
    m = json.loads(js.read_text())
    assert m["support"]["neutral"] == 4 and sum(m["support"].values()) == 4


@pytest.mark.parametrize("setting, says", [
    ("vad.min_silence_seconds=0.25", "perception.vad.min_silence_seconds"),  # prefix left out
    ("perception.vad.min_silenc=0.25", "unknown perception parameter 'vad.min_silenc'"),
    ("perception.vad.min_silence_seconds=soon", "must be a number"),
    ("min_silence=1", "not a parameter of the utterance node"),
])
def test_a_setting_the_node_would_not_take_is_refused_before_any_work(bags, tmp_path, capsys,
                                                                     setting, says):
    # a typo must not give a run with the setting silently left out
    out = tmp_path / "ev"
    assert cli(["eval-bag", str(bags["mcap"]), "--out", str(out), "--set", setting]) == 2
    assert says in capsys.readouterr().err and not out.exists()
    assert cli(["bench-spoken", "--json", str(tmp_path / "s.json"), "--set", setting]) == 2
    assert says in capsys.readouterr().err and not (tmp_path / "s.json").exists()


def test_demo_prints_one_line_per_estimate(bags, model, capsys):
    assert cli(["demo", "--bag", str(bags["mcap"]), "--model-dir", str(model),
                "--rate", "4"]) == 0
    out = capsys.readouterr().out
    lines = [x for x in out.splitlines() if x.strip().endswith(("sea.", "listened!",
                                                                "completely.", "river."))]
    assert len(lines) == 4, out
    assert "0 lost" in out and "weighted F1" in out
    # beside the text label, the face expert's label and probability: the bag's faces are
    # real photographs it reads (the astronaut smiles, Grace Hopper looks neutral)
    header = next(x for x in out.splitlines() if x.lstrip().startswith("time"))
    col = header.index("face")
    faces = [x[col:col + 13].split() for x in lines]
    assert [f[0] for f in faces] == ["joy", "neutral", "joy", "neutral"], out
    # the astronaut's smile is read with certainty; Grace Hopper's neutral face less so
    # (the expert's distributions are wide: label smoothing and the flip)
    assert all(0.8 < float(f[1]) <= 1 for f in faces[::2]), out
    assert all(1 / 7 < float(f[1]) <= 1 for f in faces[1::2]), out
    # and the voice expert's: its label and probability, why it cannot read the voice, or
    # "-" (not run); the bag's voices are espeak's, unlike every voice it learned from
    col = header.index("voice")
    for x in lines:
        cell = x[col:col + 13].split()
        assert cell == ["-"] or (len(cell) == 1 and cell[0] in VOICE_UNCERTAIN_REASONS) or (
            cell[0] in FACE_CLASSES and 0 < float(cell[1]) <= 1), (cell, out)
    assert sum(x[col:col + 13].split() == ["unfamiliar"] for x in lines) >= 3, out


def test_bench_e2e_times_each_estimate_from_the_speech_it_answers():
    """Two sentences of one recognized segment and a segment alone, all out 0.5 s after
    the segment's end: the first sentence waited for the rest of its segment (1.5 s); the
    segment-last figures leave it out."""
    from types import SimpleNamespace

    from erc_ros.bench.e2e import _speech_end

    ests = [SimpleNamespace(start=0.0, end=1.0, text="Hi."),
            SimpleNamespace(start=1.0, end=2.0, text="Yes."),
            SimpleNamespace(start=3.0, end=4.0, text="No.")]
    out = [2.5, 2.5, 4.5]  # seconds after the bag's start, on the wall clock of one pass
    r = _speech_end([(0.0, 1.0), (1.0, 2.0), (3.0, 4.0)], [(0.0, 100.0)], 0.0, 1.0,
                    [(100.0 + t, e, None) for t, e in zip(out, ests)])
    assert r["speech_end_ms"] == [1500.0, 500.0, 500.0]
    assert r["speech_end_segment_last_n"] == 2
    assert r["speech_end_segment_last_p95_ms"] == 500.0
    # per turn: each of the three turns is the last words of an estimate of its own
    assert r["speech_end_turn_ms"] == [1500.0, 500.0, 500.0]
    assert r["speech_end_turns_unanswered"] == 0
    # one turn heard as two estimates, and a turn nothing heard: the turn is answered by its
    # last piece, from its own end; the other is counted
    r = _speech_end([(0.0, 2.0), (5.0, 6.0)], [(0.0, 100.0)], 0.0, 1.0,
                    [(100.0 + t, e, None) for t, e in zip(out, ests[:2])])
    assert r["speech_end_turn_ms"] == [500.0] and r["speech_end_turns_unanswered"] == 1
    assert r["speech_end_ms"] == [1500.0, 500.0]
    # each turn of each pass with what was said and what answered it (None: unanswered)
    r = _speech_end([(0.0, 2.0, "Hi. Yes."), (5.0, 6.0, "Hm.")], [(0.0, 100.0), (10.0, 200.0)],
                    0.0, 1.0, [(100.0 + t, e, None) for t, e in zip(out, ests[:2])])
    assert r["speech_end_turns"] == [
        {"pass": 0, "start": 0.0, "end": 2.0, "said": "Hi. Yes.", "ms": 500.0, "heard": "Yes."},
        {"pass": 0, "start": 5.0, "end": 6.0, "said": "Hm.", "ms": None, "heard": None},
        {"pass": 1, "start": 0.0, "end": 2.0, "said": "Hi. Yes.", "ms": None, "heard": None},
        {"pass": 1, "start": 5.0, "end": 6.0, "said": "Hm.", "ms": None, "heard": None}]
    assert r["speech_end_turns_unanswered"] == 3
    # A neighbour's estimate that overlaps a turn's end (word times are guesses) does not
    # answer it: the turn's own does. A turn that owns no estimate (heard with a
    # neighbour's words) is answered by the one that overlaps it most.
    ests = [SimpleNamespace(start=0.0, end=2.0, text="This is so great."),
            SimpleNamespace(start=2.0, end=4.0, text="You wanna explain that?"),
            SimpleNamespace(start=4.9, end=7.0, text="Uh huh. I mean, well...")]
    r = _speech_end([(0.0, 2.1), (2.0, 3.0), (5.0, 5.4), (5.3, 7.0)], [(0.0, 100.0)], 0.0,
                    1.0, [(100.0 + t, e, None) for t, e in zip([3.0, 4.5, 7.5], ests)])
    assert r["speech_end_turn_ms"] == [1000.0, 1500.0, 2100.0, 500.0]
    assert [t["heard"] for t in r["speech_end_turns"]] == [e.text for e in ests[:2]] + \
        [ests[2].text] * 2


@pytest.mark.long
def test_bench_e2e(bags, model, tmp_path):
    js = tmp_path / "e2e.json"
    assert cli(["bench-e2e", "--bag", str(bags["mcap"]), "--model-dir", str(model),
                "--rate", "2", "--json", str(js)]) == 0
    r = json.loads(js.read_text())
    assert r["utterances"] == 4 and r["lost"] == 0
    assert 0 < r["p50_ms"] <= r["p95_ms"] < 10_000
    # From the end of each turn's speech: the bag's transcript comes 0.15 s (bag time) after
    # it, so each estimate is later from the speech's end than from its transcript.
    assert len(r["speech_end_ms"]) == 4 and r["speech_end_p50_ms"] > r["p50_ms"] > 0
    # each of them with its span and text, in the same order
    assert [e["ms"] for e in r["speech_end_estimates"]] == r["speech_end_ms"]
    assert all(e["start"] < e["end"] and e["text"] for e in r["speech_end_estimates"])
    # the bag's turns are apart: each estimate ends a segment of its own
    assert r["speech_end_segment_last_n"] == 4
    assert r["speech_end_segment_last_p95_ms"] == r["speech_end_p95_ms"]
    assert r["speech_end_turn_ms"] == r["speech_end_ms"]
    assert [t["ms"] for t in r["speech_end_turns"]] == r["speech_end_turn_ms"]
    assert all(t["said"] and t["heard"] for t in r["speech_end_turns"])
    assert r["machine"]["gemm_gflops"] > 0
    assert js.with_suffix(".png").is_file()



def test_bench_e2e_compare_starts_a_second_emotion_node_with_its_settings_last(bags):
    from erc_ros.bench.e2e import COMPARE_TOPIC, node_commands
    one = node_commands(bags["mcap"], "", "auto", "auto", False, ("fusion:=senses",), "")
    assert len(one) == 1 and "erc_ros.ros.composed" in one[0]
    cmds = node_commands(bags["mcap"], "", "auto", "auto", False, ("fusion:=senses",), "",
                         ("fusion:=text",))
    assert [c[c.index("-m") + 1] for c in cmds] == [
        "erc_ros.ros.utterance_node", "erc_ros.ros.emotion_node", "erc_ros.ros.emotion_node"]
    main, cmp = ([c[i + 1] for i in range(len(c)) if c[i] == "-p"] for c in cmds[1:])
    # the compared setting comes after --set's (the last -p of a name wins), on its own topic
    assert main[-1] == "fusion:=senses" and "fusion:=text" not in main
    assert cmp.index("fusion:=text") > cmp.index("fusion:=senses")
    assert f"estimate_topic:={COMPARE_TOPIC}" in cmp and "publish_expression:=false" in cmp
    assert cmds[2][-2:] == ["-r", "__node:=emotion_node_compare"] and "-r" not in cmds[1]


def test_bench_e2e_refuses_a_setting_that_is_not_name_value(bags, capsys):
    for flag, value in (("--compare", "fusion=text"), ("--set", ":=x")):
        assert cli(["bench-e2e", "--bag", str(bags["mcap"]), flag, value]) == 2
        assert f"{flag} {value!r}: a node parameter as NAME:=VALUE" in capsys.readouterr().err


def test_bench_e2e_times_a_bag_without_transcripts_from_its_labels(bags, tmp_path):
    from erc_ros.bench.e2e import labelled_turns
    turns = labelled_turns(bags["mcap"])
    rows = list(csv.DictReader(open(bags["mcap"] / "labels.csv")))
    assert turns == [(float(r["start"]), float(r["end"]), r["text"]) for r in rows]
    assert len(turns) == 4 and all(s < e and t for s, e, t in turns)
    assert labelled_turns(tmp_path) == []


def test_bench_e2e_compares_two_settings_on_the_same_utterances(bags, model, tmp_path):
    js = tmp_path / "e2e.json"
    assert cli(["bench-e2e", "--bag", str(bags["mcap"]), "--model-dir", str(model),
                "--rate", "2", "--set", "backend:=onnxruntime", "--compare", "backend:=torch",
                "--json", str(js)]) == 0
    r = json.loads(js.read_text())
    c = r["compare"]
    assert r["mode"] == "split" and c["set"] == ["backend:=torch"]
    # both nodes answered the same 4 final results, each with its own setting
    assert r["utterances"] == c["utterances"] == 4 and r["lost"] == c["lost"] == 0
    assert [b.split("/")[0] for b in r["backends"]] == ["onnxruntime"], r["backends"]
    assert [b.split("/")[0] for b in c["backends"]] == ["torch"], c["backends"]
    assert len(c["speech_end_ms"]) == 4
    assert r["compare_ratio"]["speech_end_p95_ms"] == pytest.approx(
        r["speech_end_p95_ms"] / c["speech_end_p95_ms"])


def _recording(rec, topics):
    """`record` of ``topics`` into ``rec`` (sim time) on a thread: (thread, stop, counts)."""
    from erc_ros.bags.record import record
    stop, counts = threading.Event(), {}
    th = threading.Thread(target=lambda: counts.update(record(rec, topics, stop=stop,
                                                               use_sim_time=True)))
    th.start()
    return th, stop, counts


def test_record_captures_a_replayable_session(bags, model, tmp_path):
    import rclpy

    from erc_ros.ros.live import BagPlayer, bag_connections
    rec = tmp_path / "rec"
    rclpy.init()
    try:
        th, stop, counts = _recording(rec, ["/audio", "/audio_info", "/erc_ros/transcript"])
        node = rclpy.create_node("rec_player")
        player = BagPlayer(node, bag_connections(bags["mcap"]))
        deadline = time.monotonic() + 10
        while any(node.count_subscribers(t) == 0 for t in ("/audio", "/erc_ros/transcript")) \
                and time.monotonic() < deadline:
            player.clock(1.0)
            time.sleep(0.1)
        time.sleep(0.5)
        player.play(bags["mcap"], rate=4.0)
        time.sleep(1.0)
        stop.set()
        th.join(10)
        node.destroy_node()
    finally:
        rclpy.try_shutdown()
    assert counts["/erc_ros/transcript"] == 8 and counts["/audio"] > 100
    (rec / "labels.csv").write_bytes((bags["mcap"] / "labels.csv").read_bytes())
    js = tmp_path / "m.json"
    assert cli(["eval-bag", str(rec), "--model-dir", str(model), "--out", str(tmp_path / "e"),
                "--json", str(js), "--quiet", *FAST]) == 0
    m = json.loads(js.read_text())
    assert m["estimates"] == 4 and m["lost"] == 0


def test_play_publishes_a_bag_into_running_nodes_with_clock(bags, tmp_path):
    """`python -m erc_ros play` (another process, as a user runs it) into a recorder on sim
    time: every record arrives, stamped by the bag's /clock."""
    import subprocess
    import sys

    import rclpy

    rec = tmp_path / "rec"
    rclpy.init()
    try:
        th, stop, counts = _recording(rec, ["/audio", "/erc_ros/transcript"])
        r = subprocess.run([sys.executable, "-m", "erc_ros", "play", str(bags["mcap"]),
                            "--rate", "4", "--wait", "20"], capture_output=True, text=True,
                           timeout=120)
        time.sleep(1.0)
        stop.set()
        th.join(10)
    finally:
        rclpy.try_shutdown()
    assert r.returncode == 0, r.stderr[-2000:]
    assert "subscribed: /audio, /erc_ros/transcript" in r.stdout, r.stdout
    assert counts["/erc_ros/transcript"] == 8 and counts["/audio"] > 100
    from erc_ros.ros.replay import bag_span
    assert bag_span(rec)[0] >= bag_span(bags["mcap"])[0] - 1e-6  # the bag's clock, not 1970
    assert subprocess.run([sys.executable, "-m", "erc_ros", "play", str(tmp_path / "nope")],
                          capture_output=True).returncode == 2


def test_make_bag_without_meld_data_uses_the_built_in_script(tmp_path, monkeypatch, capsys):
    """A colcon install has no MELD beside it: make-bag says so and speaks its own script."""
    monkeypatch.setenv("ERC_ROS_DATA", str(tmp_path / "no_data_here"))
    assert cli(["make-bag", "--minutes", "0.3", "--fps", "1", "--out", str(tmp_path / "b")]) == 0
    assert "set ERC_ROS_DATA" in capsys.readouterr().err
    rows = list(csv.DictReader(open(tmp_path / "b" / "labels.csv")))
    assert len(rows) >= 4 and {r["speaker"] for r in rows} == {"Alice", "Bob", "Carol"}
    assert cli(["make-bag", "--meld-csv", str(tmp_path / "nope.csv"),
                "--out", str(tmp_path / "c")]) == 2
    assert "no MELD-format CSV" in capsys.readouterr().err
