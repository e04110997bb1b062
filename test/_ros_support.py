"""Shared helpers of the ROS-layer and tools tests (test_ros_*.py, test_tools_*.py).

Real parts only: a tiny random-weight model built and saved through the models API (hidden
16, the packaged MiniLM tokenizer) until ``models/default`` is what a test needs; speech from
espeak-ng through the conversation generator; bags written by ``make-bag``.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

SCRIPT = """\
Alice [joy]: Good morning, I had a wonderful dream about the sea.
Bob [anger]: I told you the meeting was cancelled and nobody listened!
Alice [sadness]: I am sorry, I missed the message completely.
Bob [neutral]: Then let us go for a walk in the park near the river.
"""

# Faster start for tests: no embedder warm-up run (the first utterance pays for it instead).
FAST_PERCEPTION = {"perception.diarization.warmup": False}


def tiny_model_dir(path: Path) -> Path:
    from erc_ros.models.artefact import save_model_dir
    from erc_ros.models.erc_model import ErcModelConfig, build_model, tiny_text_config
    save_model_dir(build_model(ErcModelConfig(model_id="tiny-test", text=tiny_text_config())),
                   path)
    return path


def make_bag(out: Path, script: str = SCRIPT, fps: float = 2.0, storage: str = "mcap",
             transcripts: bool = True) -> Path:
    from erc_ros.bags import make_bag as mb
    script_file = out.parent / f"{out.name}.txt"
    script_file.write_text(script)
    import argparse
    parser = argparse.ArgumentParser()
    mb.add_arguments(parser)  # the command's own parser: every option has its default
    argv = ["--out", str(out), "--script", str(script_file), "--seed", "0", "--fps", str(fps),
            "--storage", storage, "--jpeg-quality", "60"]
    rc = mb.run(parser.parse_args(argv + ([] if transcripts else ["--no-transcripts"])))
    assert rc == 0
    return out


def close_rig(executor, node, driver) -> None:
    """Stop a test rig: its executor, the node's worker, the node and the driving node."""
    executor.shutdown(timeout_sec=2.0)
    if node.worker:
        node.worker.stop()
    node.destroy_node()
    driver.destroy_node()


def wait_for(cond, timeout: float, period: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(period)
    return bool(cond())


def set_remotely(client, name: str, value):
    """Set one parameter through a node's set_parameters service, as `ros2 param set` does
    (``client``: a SetParameters client, its service up); returns the SetParametersResult."""
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    fut = client.call_async(SetParameters.Request(
        parameters=[Parameter(name, value=value).to_parameter_msg()]))
    assert wait_for(fut.done, 10)
    return fut.result().results[0]


class Collector:
    """Thread-safe list of received messages."""

    def __init__(self):
        self.items: list = []
        self._lock = threading.Lock()

    def __call__(self, msg) -> None:
        with self._lock:
            self.items.append(msg)

    def __len__(self) -> int:
        with self._lock:
            return len(self.items)

    def snapshot(self) -> list:
        with self._lock:
            return list(self.items)


class NodeProcess:
    """A node run as its own process, as ``ros2 run`` does (``python -m <module> --ros-args
    -p k:=v ...``), its log read as it comes (a full pipe would block its logging)."""

    def __init__(self, module: str, params: dict, env: dict | None = None):
        import os
        import subprocess
        import sys
        cmd = [sys.executable, "-m", module, "--ros-args"]
        for k, v in params.items():
            cmd += ["-p", f"{k}:={v}"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=dict(os.environ, PYTHONFAULTHANDLER="1",
                                                         **(env or {})))
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout),
                                        daemon=True)
        self._reader.start()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return "".join(self.lines)

    def stop(self, timeout: float = 15.0):
        """SIGTERM; (exit code or "hung", log)."""
        import subprocess
        if self.alive():
            self.proc.terminate()
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            rc = "hung"
        self._reader.join(5)
        return rc, self.log()
