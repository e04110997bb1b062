"""The robot path: the package builds in a normal ROS 2 workspace with `colcon build`, and
installs its interfaces, Python package, executables, launch files, config and models where
`ros2 run` / `ros2 launch` look for them. Here the ROS 2 underlay is the venv's wheels."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ros
ROOT = Path(__file__).resolve().parents[1]


def _source_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [f for f in out.splitlines() if (ROOT / f).is_file()]


@pytest.fixture(scope="module")
def colcon_install(tmp_path_factory):
    colcon = Path(sys.executable).parent / "colcon"
    assert colcon.exists(), "colcon-common-extensions is in requirements-dev.txt"
    ws = tmp_path_factory.mktemp("ws")
    src = ws / "src" / "erc_ros"
    for rel in _source_files():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    venv = Path(sys.prefix)
    env = dict(os.environ, AMENT_PREFIX_PATH=str(venv), CMAKE_PREFIX_PATH=str(venv))
    proc = subprocess.run(
        [str(colcon), "--log-base", str(ws / "log"), "build", "--base-paths", str(ws / "src"),
         "--build-base", str(ws / "build"), "--install-base", str(ws / "install"),
         "--cmake-args", f"-DPython3_EXECUTABLE={sys.executable}", "-DBUILD_TESTING=OFF"],
        cwd=ws, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # colcon must find exactly our package: the dev-only interface packages stay ignored
    assert "1 package finished" in proc.stdout, proc.stdout
    return ws / "install" / "erc_ros", src


def test_colcon_installs_everything_ros_needs(colcon_install):
    prefix, src = colcon_install
    share = prefix / "share" / "erc_ros"
    assert (share / "package.xml").is_file()
    for msg in (src / "msg").glob("*.msg"):
        assert (share / "msg" / msg.name).is_file(), msg.name
    assert (share / "launch" / "emotion.launch.py").is_file()
    assert (share / "config" / "emotion.yaml").is_file()
    for folder in ("launch", "config", "models"):
        for f in (src / folder).rglob("*"):
            if f.is_file():
                assert (share / folder / f.relative_to(src / folder)).is_file(), f
    for exe in (src / "scripts").iterdir():
        installed = prefix / "lib" / "erc_ros" / exe.name
        assert installed.is_file() and os.access(installed, os.X_OK), exe.name
    assert (share.parent / "ament_index" / "resource_index" / "packages" / "erc_ros").is_file()


def test_installed_python_package_has_sources_and_generated_messages(colcon_install):
    prefix, src = colcon_install
    pyver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = prefix / "lib" / pyver / "site-packages"
    # As after `source install/setup.bash`: the install's site-packages on PYTHONPATH, its
    # prefix on AMENT_PREFIX_PATH. The dev venv's .pth (work tree first on sys.path) must
    # step aside for it: the installed build runs, not the checkout.
    env = dict(os.environ, PYTHONPATH=str(site),
               AMENT_PREFIX_PATH=os.pathsep.join([str(prefix), sys.prefix]))
    env.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
    code = ("import erc_ros, erc_ros.msg, erc_ros.core.types as t; "
            "from erc_ros.msg import EmotionEstimate, Transcript, Utterance; "
            "print(erc_ros.__file__); print(EmotionEstimate().label == ''); "
            "from erc_ros.runtime.manifest import default_model_dir; print(default_model_dir()); "
            "from erc_ros.process import fastdds_profile; print(fastdds_profile()); "
            "from erc_ros.paths import demo_bag; print(demo_bag())")
    out = subprocess.run([sys.executable, "-c", code], cwd=prefix, capture_output=True,
                         text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    first, second, model, profile, bag = out.stdout.split()[:5]
    # the installed erc_ros is our package (not the generated, empty one, nor the checkout)
    assert Path(first).is_relative_to(site), first
    assert second == "True"
    share = prefix / "share" / "erc_ros"
    assert Path(model) == share / "models" / "default"
    assert Path(profile) == share / "config" / "fastdds.xml"
    assert Path(bag) == share / "data" / "demo_bag" and (Path(bag) / "metadata.yaml").is_file()
    info = subprocess.run([sys.executable, "-m", "erc_ros", "info"], cwd=prefix,
                          capture_output=True, text=True, env=env)
    assert f"erc_ros {site / 'erc_ros'} (colcon install)" in info.stdout, info.stdout
    # ... and holds every file of ours: the sources and their data (the report's template)
    for f in (src / "erc_ros").rglob("*"):
        if f.is_file() and "__pycache__" not in f.parts:  # (bytecode: made at import)
            assert (site / "erc_ros" / f.relative_to(src / "erc_ros")).is_file(), f
    assert (site / "erc_ros" / "evaluation" / "templates" / "report.html.j2").is_file()
