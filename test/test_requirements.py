"""The requirement files agree: what a robot installs (requirements-robot.txt, into a venv
beside the distro's ROS 2) names every package the development machine's requirements.txt
does, except the development tools listed here, and keeps NumPy below 2 (the distro's ROS C
extensions are built against NumPy 1.x). Whether that set runs on NumPy 1.26 is checked by
`make check-numpy1` (minutes: a scratch venv), not here.
"""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: In requirements.txt, not needed on a robot: jiwer scores bench-asr's word error rate.
DEVELOPMENT_ONLY = {"jiwer"}


def _requirements(name: str) -> dict[str, str]:
    out = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            pkg = re.split(r"[<>=!~\[; ]", line)[0].lower().replace("_", "-")
            out[pkg] = line[len(pkg):].strip()
    return out


def test_the_robot_installs_what_the_package_needs():
    dev, robot = _requirements("requirements.txt"), _requirements("requirements-robot.txt")
    missing = set(dev) - set(robot) - DEVELOPMENT_ONLY
    assert not missing, f"in requirements.txt but not requirements-robot.txt: {sorted(missing)}"


def test_the_robot_keeps_numpy_1():
    spec = _requirements("requirements-robot.txt")["numpy"]
    assert "<2" in spec.replace(" ", ""), spec
    # torch is the one exact pin both share: another version pulls CUDA on the dev machine
    assert _requirements("requirements-robot.txt")["torch"] == _requirements("requirements.txt")["torch"]
