"""`python -m erc_ros info`: what is installed and where — the first thing to run when
something does not work (README, Troubleshooting)."""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import platform
from pathlib import Path

from erc_ros.runtime.manifest import default_model_dir

PACKAGES = ("numpy", "torch", "transformers", "onnxruntime", "cv2", "rosbags", "rclpy")
INTERFACES = ("erc_ros.msg", "audio_common_msgs.msg", "hri_msgs.msg")


def add_arguments(parser) -> None:
    parser.add_argument("--json", metavar="OUT", help="also write the report as JSON")


def collect() -> dict:
    report: dict = {"python": platform.python_version(), "packages": {}, "interfaces": {}}
    for name in PACKAGES:
        try:
            mod = importlib.import_module(name)
            report["packages"][name] = getattr(mod, "__version__", "installed")
        except Exception as exc:  # report, never fail: this is a diagnostic tool
            report["packages"][name] = f"unavailable ({type(exc).__name__}: {exc})"
    for name in INTERFACES:
        try:
            report["interfaces"][name] = "ok" if importlib.util.find_spec(name) else "missing"
        except ModuleNotFoundError:
            report["interfaces"][name] = "missing"
    here = Path(__file__).resolve().parents[1]
    report["erc_ros"] = {"path": str(here), "kind": "colcon install" if "site-packages" in
                         here.parts else "source checkout"}
    models = Path(default_model_dir()).parent
    report["models"] = sorted(p.name for p in models.iterdir() if p.is_dir()) if models.is_dir() else []
    report["ros_env"] = {k: os.environ.get(k, "") for k in
                         ("ROS_DISTRO", "ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE",
                          "RMW_IMPLEMENTATION", "AMENT_PREFIX_PATH")}
    return report


def run(args) -> int:

    report = collect()
    print(f"python {report['python']}")
    print(f"erc_ros {report['erc_ros']['path']} ({report['erc_ros']['kind']})")
    for section in ("packages", "interfaces", "ros_env"):
        print(f"{section}:")
        for k, v in report[section].items():
            print(f"  {k:32s} {v}")
    print(f"models: {', '.join(report['models']) or '(none)'}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0
