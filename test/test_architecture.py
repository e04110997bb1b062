"""The package's layering, read from the source (ast): what ../shared/ARCHITECTURE.md and
the README's architecture section promise.

- core, models, training and runtime never import rclpy (nor anything of erc_ros.ros);
- no import cycle among their modules, counting imports inside functions too (a cycle held
  together by function-local imports is still a cycle);
- components make no process-wide settings: thread counts, OMP_WAIT_POLICY and gc.freeze
  are made once per process by its entry point (erc_ros.process).
"""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "erc_ros"
TIERS = ("erc_ros.core", "erc_ros.models", "erc_ros.training", "erc_ros.runtime")


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


MODULES = _modules()


def _imports(name: str) -> set[str]:
    """Every module ``name`` imports (top level or inside functions), resolved to the longest
    known module name where it is one of ours, else the imported name as written."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in MODULES)
    out = set()
    for m in found:
        while m and m not in MODULES and "." in m and m.startswith("erc_ros"):
            m = m.rpartition(".")[0]
        out.add(m)
    out.discard(name)
    return out


def _tiered(name: str) -> bool:
    return name.startswith(TIERS) and name not in TIERS


def test_the_layers_never_import_ros():
    bad = {m: sorted(i for i in _imports(m) if i.split(".")[0] in ("rclpy", "rosidl_runtime_py")
                     or i.startswith("erc_ros.ros"))
           for m in MODULES if m.startswith(TIERS)}
    assert not {m: v for m, v in bad.items() if v}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_in_the_layers():
    graph = {m: {i for i in _imports(m) if _tiered(i)} for m in MODULES if _tiered(m)}
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


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
