"""The two nodes as separate processes (split mode: utterances cross DDS as erc_ros/Utterance),
fed by a bag player in this process with /clock; every labelled turn gets exactly one
estimate, and the Utterance messages on the wire carry the audio, the span and the voice
expert's reading, which the estimates carry on."""
from __future__ import annotations

import os
from pathlib import Path
import signal
import subprocess
import sys
import threading
import time

import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor

from _ros_support import Collector, make_bag, tiny_model_dir, wait_for
from erc_ros.core.types import VOICE_UNCERTAIN_REASONS
from erc_ros.ros import convert, emotion_msgs
from erc_ros.ros.live import RELIABLE, BagPlayer, bag_connections, node_params_for_bag
from erc_ros.ros.replay import bag_span
from erc_ros.runtime.backends import cpu_int8
from erc_ros.evaluation import eval_bag

pytestmark = pytest.mark.ros


class _Node:
    """A node process whose log is read as it comes (a full pipe would block its logging);
    Python's faulthandler is on, so SIGABRT dumps every thread's stack into that log."""

    def __init__(self, module: str, params: dict):
        cmd = [sys.executable, "-m", module, "--ros-args"]
        for k, v in params.items():
            cmd += ["-p", f"{k}:={v}"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=dict(os.environ, PYTHONFAULTHANDLER="1"))
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout),
                                         daemon=True)
        self._reader.start()

    def stop(self, timeout: float = 15.0) -> tuple[object, str]:
        """SIGTERM, as ``ros2 launch`` ends a node; (exit code, log). A process still up
        after ``timeout`` s is aborted: code ``"hung"``, its stacks in the log."""
        self.proc.terminate()
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            rc = "hung"
        self._reader.join(5)
        return rc, "".join(self.lines)


def test_split_nodes_across_processes(tmp_path, voice_model_dir):
    bag = make_bag(tmp_path / "conv")
    model = tiny_model_dir(tmp_path / "tiny")
    uparams = {p.name: str(p.value).lower() if isinstance(p.value, bool) else p.value
               for p in node_params_for_bag(bag_connections(bag))}
    uparams.update({"use_sim_time": "true", "perception.diarization.enabled": "false",
                    "perception.diarization.warmup": "false",
                    "perception.voice.model": str(voice_model_dir)})
    procs = [_Node("erc_ros.ros.utterance_node", uparams),
             _Node("erc_ros.ros.emotion_node", {"use_sim_time": "true",
                                                "model_dir": str(model)})]
    rclpy.init()
    node = rclpy.create_node("mp_driver")
    ex = SingleThreadedExecutor()
    try:
        from erc_ros.msg import EmotionEstimate, Utterance
        player = BagPlayer(node, bag_connections(bag))
        ests, utts = Collector(), Collector()
        node.create_subscription(EmotionEstimate, "/erc_ros/emotion", ests, RELIABLE)
        node.create_subscription(Utterance, "/erc_ros/utterances", utts, RELIABLE)
        ex.add_node(node)
        threading.Thread(target=ex.spin, daemon=True).start()
        start, end = bag_span(bag)
        up = wait_for(lambda: node.count_subscribers("/erc_ros/transcript") > 0 and
                      node.count_publishers("/erc_ros/emotion") > 0 and
                      node.count_subscribers("/erc_ros/utterances") > 0, 90, 0.2)
        assert up, [p.proc.poll() for p in procs]
        player.clock(start)
        time.sleep(0.5)
        truth: list = []
        player.play(bag, rate=3.0, ground_truth=truth)
        for k in range(30):  # time goes on after the bag
            player.clock(end + 0.2 * k)
            time.sleep(0.05)
        assert wait_for(lambda: len(ests) >= len(truth), 60), (len(ests), len(truth))
        time.sleep(1.0)
        labels = eval_bag.labels_for(bag, None, truth)
        got = [emotion_msgs.msg_to_estimate(m) for m in ests.snapshot()]
        pairs = eval_bag.match(labels, got)
        assert all(e is not None for _, e in pairs)
        assert len(got) == len(labels) == 4
        wire = utts.snapshot()
        assert len(wire) == 4
        for msg, lab in zip(wire, labels):
            assert msg.text == lab["text"] and msg.has_audio and msg.sample_rate == 16000
            dur = convert.time_to_float(msg.end) - convert.time_to_float(msg.start)
            assert abs(len(msg.audio) / 16000 - dur) < 0.05
            assert msg.header.stamp == msg.end
        # the voice expert ran on each utterance's audio in the utterance node; its reading
        # crossed DDS in the Utterance and comes back in the estimate of that utterance
        by_id = {e.utterance_id: e for e in ests.snapshot()}
        for msg in wire:
            assert msg.voice_status in (msg.VOICE_OK, msg.VOICE_UNCERTAIN), msg.voice_status
            assert (len(msg.voice_probabilities) == 7) == (msg.voice_status == msg.VOICE_OK)
            assert (msg.voice_reason in VOICE_UNCERTAIN_REASONS) == \
                (msg.voice_status == msg.VOICE_UNCERTAIN)
            est = by_id[msg.utterance_id]
            assert (est.voice_status, est.voice_reason) == (msg.voice_status, msg.voice_reason)
            assert sorted(est.voice_probabilities) == sorted(msg.voice_probabilities)
    finally:
        ex.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown()
        ends = [p.stop() for p in procs]  # all of them, before any assert
        for rc, log in ends:
            assert rc == 0, log[-6000:]


def _snapshot(d) -> dict:
    import hashlib
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def _start_and_log(module: str, params: dict, until: str, env: dict, timeout: float = 120):
    """Run a node process until its log shows ``until`` (or it exits); Ctrl-C it; its log."""
    cmd = [sys.executable, "-m", module, "--ros-args"]
    for k, v in params.items():
        cmd += ["-p", f"{k}:={v}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    wait_for(lambda: any(until in ln for ln in lines) or proc.poll() is not None, timeout, 0.2)
    proc.send_signal(2)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    reader.join(5)
    return "".join(lines), proc.returncode


def test_a_read_only_model_dir_is_never_written_and_the_log_says_what_runs(tmp_path):
    """Issue 11: the emotion node started on a read-only model directory with an empty cache
    loads (torch, saying why and which command prepares ONNX), writes nothing into the
    directory nor the cache; with prepare:=true it builds into the cache only. The log says
    what runs where, and the process-wide settings its entry point made."""
    model = tiny_model_dir(tmp_path / "tiny")
    before = _snapshot(model)
    for p in [model, *model.rglob("*")]:
        p.chmod(p.stat().st_mode & ~0o222)
    cache = tmp_path / "cache"
    env = dict(os.environ, ERC_ROS_CACHE=str(cache))
    try:
        log, rc = _start_and_log("erc_ros.ros.emotion_node",
                                 {"model_dir": str(model), "autostart": "true"}, "active", env)
        assert rc == 0, log
        assert f"configured: model tiny-test from {model} on torch/fp32" in log, log
        assert "python -m erc_ros prepare --model" in log
        assert "process: torch 2 intra-op" in log and "(set by emotion_node)" in log, log
        assert _snapshot(model) == before
        assert not cache.exists() or not any(cache.rglob("*.onnx"))

        log, rc = _start_and_log("erc_ros.ros.emotion_node",
                                 {"model_dir": str(model), "autostart": "true",
                                  "prepare": "true"}, "active", env, timeout=300)
        assert rc == 0, log
        # precision auto: INT8 on a CPU with VNNI, FP32 on one without (runtime.backends)
        auto = "int8" if cpu_int8()[0] else "fp32"
        assert f"on onnxruntime/{auto}" in log and "precision auto: " in log, log
        assert _snapshot(model) == before and any(cache.rglob(f"*.{auto}.onnx"))
    finally:
        for p in [model, *model.rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)


_PROFILE_PROBE = ("from erc_ros import process; process.set_environment(); import os; "
                  "print(os.environ['FASTDDS_DEFAULT_PROFILES_FILE']); import rclpy; "
                  "rclpy.init(); n = rclpy.create_node('profile_probe'); "
                  "from std_msgs.msg import String; n.create_publisher(String, 'probe', 10); "
                  "n.destroy_node(); rclpy.shutdown()")


def _probe(env: dict) -> str:
    r = subprocess.run([sys.executable, "-c", _PROFILE_PROBE], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout + r.stderr


def test_the_fast_dds_profile_is_used_and_parses(tmp_path):
    """Every entry point joins DDS with config/fastdds.xml (50 ms heartbeats: a lost sample
    stalls its topic ~50 ms, not up to 3 s) unless the user set a profile; Fast DDS parses it
    (a broken profile is reported, so this test would see one)."""
    from erc_ros.process import fastdds_profile

    env = {k: v for k, v in os.environ.items() if k != "FASTDDS_DEFAULT_PROFILES_FILE"}
    out = _probe(env)
    assert fastdds_profile() in out and "XMLPARSER" not in out, out
    broken = tmp_path / "broken.xml"
    broken.write_text(Path(fastdds_profile()).read_text().replace("heartbeat_period>",
                                                                  "heartbeat_periodX>"))
    out = _probe({**env, "FASTDDS_DEFAULT_PROFILES_FILE": str(broken)})
    assert str(broken) in out and "XMLPARSER" in out  # the user's own profile is kept
