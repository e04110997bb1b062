"""Test-suite set-up shared by every test.

ROS isolation: several test runs (and developers) may share a machine, so each pytest run
gets its own ROS_DOMAIN_ID, discovery limited to localhost, and ROS_HOME/ROS_LOG_DIR in a
temporary directory. This runs before any test imports rclpy; child processes inherit it.
"""
from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_ros_tmp = tempfile.mkdtemp(prefix="erc_ros_test_")
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(1, 101)))
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_HOME"] = _ros_tmp
os.environ["ROS_LOG_DIR"] = os.path.join(_ros_tmp, "log")
#: The cache `make setup` prepared the default model, the face expert and Whisper base into
#: (read, never written, by the tests that measure what a robot runs: test_ros_lifecycle_memory).
SETUP_CACHE = os.environ.get("ERC_ROS_CACHE") or str(Path.home() / ".cache" / "erc_ros")
# Exported ONNX files and downloaded test sounds go to this run's temp dir, not ~/.cache.
os.environ.setdefault("ERC_ROS_CACHE", os.path.join(_ros_tmp, "cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# The test process is an entry point like any other: its process-wide settings, once.
from erc_ros import process  # noqa: E402

process.set_environment()
process.configure(torch_threads=2, by="pytest")


def pytest_report_header(config):
    return f"ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']} ROS_HOME={_ros_tmp}"


def pytest_unconfigure(config):
    shutil.rmtree(_ros_tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def ros():
    """rclpy initialised for one test module (imported here, not at collection)."""
    import rclpy
    rclpy.init()
    yield
    rclpy.try_shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny random-weight model directory (see _ros_support.tiny_model_dir)."""
    from _ros_support import tiny_model_dir
    return tiny_model_dir(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="session", autouse=True)
def _runtime_files_prepared():
    """What set-up prepares for a robot, prepared once into this run's cache: Whisper base
    (joined) and the shipped voice expert's ONNX files. Every node a test starts then runs
    the default voice path (ONNX Runtime) whatever test ran before it."""
    from erc_ros.core.asr import prepare_model
    from erc_ros.runtime.voice_expert import default_model_dir, prepare

    prepare_model("base")
    if default_model_dir().is_dir():
        prepare(default_model_dir())


#: The two RAVDESS actors the tests' voice expert is trained on (the others stay unheard).
VOICE_TRAIN_SPEAKERS = "ravdess-01,ravdess-02"


@pytest.fixture(scope="session")
def voice_model_dir(tmp_path_factory):
    """A tiny voice expert trained here, as a user trains one (``train --recipe voice-tiny``)
    on two RAVDESS actors from ../shared/data, with Whisper base prepared and its ONNX
    files made (``prepare``): the real expert at a small size (~30 s, once per run)."""
    import subprocess

    from erc_ros.core.asr import prepare_model
    from erc_ros.paths import data_root
    from erc_ros.runtime.voice_expert import prepare

    ravdess = data_root() / "ravdess_speech"
    if not ravdess.is_dir():
        pytest.skip(f"RAVDESS is not in {ravdess} (../shared/data; licensed, never in the "
                    "repository): the voice expert's tests need it")
    prepare_model("base")
    out = tmp_path_factory.mktemp("voice") / "voice-tiny"
    subprocess.run([sys.executable, "-m", "erc_ros", "train", "--recipe", "voice-tiny",
                    "--speakers", VOICE_TRAIN_SPEAKERS, "--out", str(out)], check=True,
                   cwd=ROOT, capture_output=True, timeout=600)
    prepare(out)
    return out
