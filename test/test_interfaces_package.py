"""The package itself: manifest, build files, set-up idempotency, entry points."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_package_xml_is_valid_and_declares_interface_dependencies():
    from catkin_pkg.package import parse_package

    pkg = parse_package(str(ROOT / "package.xml"))
    pkg.validate()
    assert pkg.name == "erc_ros"
    assert pkg.get_build_type() == "ament_cmake"
    declared = {d.name for d in pkg.build_depends + pkg.exec_depends + pkg.buildtool_depends}
    # every package a .msg refers to is a declared dependency
    used = set()
    for msg in (ROOT / "msg").glob("*.msg"):
        used |= set(re.findall(r"^\s*([a-z_]+)/[A-Z]\w*", msg.read_text(), re.M))
    assert used <= declared, f"undeclared interface dependencies: {used - declared}"
    # the ROS packages the nodes use at run time
    for dep in ("rclpy", "audio_common_msgs", "hri_msgs", "diagnostic_msgs", "rosidl_default_runtime"):
        assert dep in declared, dep
    # version matches the Python package
    setup_py = (ROOT / "setup.py").read_text()
    assert f'version="{pkg.version}"' in setup_py


def test_cmake_installs_existing_executables_and_interfaces():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    for script in re.findall(r"scripts/(\w+)", cmake):
        path = ROOT / "scripts" / script
        assert path.is_file() and path.stat().st_mode & 0o111, f"{path} missing or not executable"
    for msg in re.findall(r'"(msg/\w+\.msg)"', cmake):
        assert (ROOT / msg).is_file(), msg
    assert sorted(re.findall(r'"msg/(\w+)\.msg"', cmake)) == sorted(
        p.stem for p in (ROOT / "msg").glob("*.msg")), "every msg/*.msg must be generated"


def test_dev_interfaces_are_ignored_by_colcon():
    assert (ROOT / "test" / "interfaces" / "COLCON_IGNORE").exists()


def test_generated_interfaces_import():
    from audio_common_msgs.msg import AudioData, AudioDataStamped, AudioInfo  # noqa: F401
    from hri_msgs.msg import Expression, IdsList, LiveSpeech  # noqa: F401

    from erc_ros.msg import EmotionEstimate, Transcript, Utterance  # noqa: F401
    import erc_ros

    # our sources come from the work tree; the generated module from the install
    assert Path(erc_ros.__file__).resolve().parent == ROOT / "erc_ros"


@pytest.mark.long
def test_setup_is_idempotent():
    """make test already ran set-up: running it again must rebuild nothing."""
    out = subprocess.run(["bash", str(ROOT / "tools" / "setup.sh")], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert "generating" not in out and "installing" not in out, out
    assert "ready in" in out


def test_cli_info_runs():
    out = subprocess.run([sys.executable, "-m", "erc_ros", "info"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    assert "erc_ros.msg" in out and "ok" in out


def test_every_declared_make_target_exists():
    """`make help` and .PHONY name only targets that have a rule (no phantom targets)."""
    text = (ROOT / "Makefile").read_text()
    phony = re.search(r"^\.PHONY:(.*)$", text, re.M).group(1).split()
    rules = set(re.findall(r"^([A-Za-z][\w-]*):", text, re.M))
    assert set(phony) <= rules, set(phony) - rules
    helped = set(re.findall(r'@echo "make ([\w-]+)', text))
    assert helped <= rules, helped - rules
