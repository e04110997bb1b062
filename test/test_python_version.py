"""The Python version setup.py claims (``python_requires``) is the one the code needs.

ROS 2 Humble runs Python 3.10, so a 3.11-only construct (``contextlib.chdir``, ``tomllib``,
``typing.Self``, ``except*``...) breaks erc_ros there although pip lets it install. vermin
(a dev requirement) reads the source and names what each file needs; this test holds every
Python file of the package, its launch file, entry points and tools to the claimed minimum.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _claimed_minimum() -> str:
    m = re.search(r'python_requires\s*=\s*">=\s*(3\.\d+)"', (ROOT / "setup.py").read_text())
    assert m, "setup.py has no python_requires='>=3.N'"
    return m.group(1)


def _vermin(target: str, *paths: Path) -> subprocess.CompletedProcess:
    try:
        import vermin  # noqa: F401
    except ImportError:  # a dev requirement: a missing one is a set-up fault, not a skip
        pytest.fail("vermin is not installed: it is in requirements-dev.txt (run make setup)")
    # --eval-annotations: annotations count (``X | None`` in a dataclass field is evaluated);
    # --exclude long: torch's ``Tensor.long()`` is not Python 2's ``long``.
    cmd = [sys.executable, "-c", "import sys; from vermin import main; sys.exit(main())",
           "--no-tips", "--violations", "--eval-annotations", "--no-parse-comments",
           "--exclude", "long", f"--target={target}-", *map(str, paths)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_the_code_runs_on_the_python_setup_py_claims():
    minimum = _claimed_minimum()
    paths = [ROOT / "erc_ros", ROOT / "launch", ROOT / "test", ROOT / "setup.py",
             *sorted((ROOT / "scripts").iterdir())]
    r = _vermin(minimum, *paths)
    assert r.returncode == 0, (
        f"code that Python {minimum} (setup.py's python_requires) cannot run:\n"
        f"{r.stdout}{r.stderr}")


def test_the_version_check_finds_a_newer_construct(tmp_path):
    """The check is not vacuous: a 3.11-only call fails it at 3.10."""
    f = tmp_path / "uses_311.py"
    f.write_text("import contextlib\n\nwith contextlib.chdir('/'):\n    pass\n")
    r = _vermin("3.10", f)
    assert r.returncode != 0 and "contextlib.chdir" in r.stdout, r.stdout + r.stderr
