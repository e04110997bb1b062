"""Plain-Python install of erc_ros (no ROS needed): `pip install -e .`.

Gives the pure-Python core, the models, training, export and runtime, and the
`erc-ros` command (same as `python -m erc_ros`). The ROS nodes additionally need rclpy and
the generated erc_ros interfaces, which `make setup` (no ROS install) or `colcon build`
(a ROS workspace) provide.
"""
from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent


def requirements(name):
    lines = (here / name).read_text().splitlines()
    return [ln.split("#")[0].strip() for ln in lines if ln.split("#")[0].strip()]


setup(
    name="erc_ros",
    version="0.1.0",
    description="Emotion recognition in conversation for social robots (ROS 2)",
    long_description=(here / "README.md").read_text() if (here / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # + the eval-bag report's template folder (erc_ros/evaluation/report.py), data only
    packages=find_packages(include=["erc_ros", "erc_ros.*"]) + ["erc_ros.evaluation.templates"],
    include_package_data=True,
    package_data={"erc_ros.evaluation.templates": ["*.j2"]},
    # resemblyzer is set up --no-deps by make setup (requirements-nodeps.txt); a plain pip
    # install takes it with its dependencies (webrtcvad then builds from source).
    install_requires=requirements("requirements.txt") + ["resemblyzer==0.1.4"],
    extras_require={"test": requirements("requirements-dev.txt")},
    entry_points={"console_scripts": ["erc-ros=erc_ros.cli:main"]},
)
