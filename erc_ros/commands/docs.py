"""The generated tables of the ``docs/`` pages, rendered from the code's own descriptions.

Each table lives in a page between marker comments::

    <!-- BEGIN GENERATED: perception-parameters -->
    ...
    <!-- END GENERATED -->

and is rendered by the function :data:`TABLES` names for it: the node parameters from the
nodes' ``PARAMETERS`` / ``BOUNDS`` and :data:`erc_ros.ros.choices.CHOICES` (what
``declare_documented`` puts in the descriptors), the launch arguments from
:data:`erc_ros.ros.launch_config.ARGUMENTS` (what the launch file declares), and the
perception parameters from ``PerceptionConfig.describe()``.

``python -m erc_ros.commands.docs --check`` exits 1 when a page's block differs from what the
code renders (``test/test_docs.py`` runs the same check); ``--write`` rewrites the blocks.
The node modules import rclpy, so they are imported only when their table is rendered.
"""
from __future__ import annotations

import argparse
import importlib
import re
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from erc_ros.core.perception import PerceptionConfig
from erc_ros.ros.choices import CHOICES
from erc_ros.ros.launch_config import ARGUMENTS

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

#: The command that brings the pages in line with the code (said by --check and the test).
FIX_COMMAND = "python -m erc_ros.commands.docs --write"

BEGIN = re.compile(r"<!-- BEGIN GENERATED: ([a-z0-9-]+) -->\n")
END = "<!-- END GENERATED -->"


# --- rendering -------------------------------------------------------------------------------

def _escape(text: str) -> str:
    """Markdown table cell text: ``|`` escaped everywhere; ``<``, ``>`` and ``*`` escaped
    outside code spans (``<id>`` would otherwise vanish as an HTML tag)."""
    parts = text.replace("|", "\\|").split("`")
    for i in range(0, len(parts), 2):  # even parts are outside code spans
        parts[i] = (parts[i].replace("<", "&lt;").replace(">", "&gt;")
                    .replace("*", "\\*"))
    return "`".join(parts)


def _type(value: Any) -> str:
    """The ROS parameter type of a default value."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    return type(value).__name__


def _value(value: Any) -> str:
    """A value as it is written in a params file, in a code span."""
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, str) and value == "":
        text = '""'
    else:
        text = str(value)
    return f"`{text}`"


def _allowed(name: str, default: Any, bounds: Optional[tuple[float, float]]) -> str:
    """Allowed values or range, as the descriptor states them (empty when unconstrained)."""
    if name in CHOICES:
        return ", ".join(f"`{c}`" for c in CHOICES[name])
    if bounds is not None and not isinstance(default, bool):
        cast = int if isinstance(default, int) else float
        lo, hi = (cast(b) for b in bounds)
        return f"`{lo}` to `{hi}`"
    return ""


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def node_parameters(module: str) -> str:
    """The parameter table of the node in ``erc_ros.ros.<module>`` (imports rclpy)."""
    mod = importlib.import_module(f"erc_ros.ros.{module}")
    bounds = getattr(mod, "BOUNDS", {})
    rows = [[f"`{name}`", _type(default), _value(default),
             _allowed(name, default, bounds.get(name)), _escape(desc)]
            for name, (default, desc) in mod.PARAMETERS.items()]
    return _table(["parameter", "type", "default", "allowed", "description"], rows)


def utterance_node_parameters() -> str:
    return node_parameters("utterance_node")


def emotion_node_parameters() -> str:
    return node_parameters("emotion_node")


def face_expression_node_parameters() -> str:
    return node_parameters("face_expression_node")


def launch_arguments() -> str:
    """The launch file's arguments (``launch_config.ARGUMENTS``; no rclpy)."""
    rows = [[f"`{name}`", _value(default), _allowed(name, default, None), _escape(desc)]
            for name, (default, desc) in ARGUMENTS.items()]
    return _table(["argument", "default", "allowed", "description"], rows)


def perception_parameters() -> str:
    """``perception.*`` parameters of the utterance node (``PerceptionConfig.describe()``)."""
    rows = [[f"`perception.{name}`", _type(default), _value(default), _escape(desc)]
            for name, default, desc in PerceptionConfig.describe()]
    return _table(["parameter", "type", "default", "description"], rows)


#: block name -> the function that renders it.
TABLES: dict[str, Callable[[], str]] = {
    "launch-arguments": launch_arguments,
    "utterance-node-parameters": utterance_node_parameters,
    "emotion-node-parameters": emotion_node_parameters,
    "face-expression-node-parameters": face_expression_node_parameters,
    "perception-parameters": perception_parameters,
}


# --- pages -----------------------------------------------------------------------------------

def blocks(text: str) -> list[tuple[str, int, int]]:
    """``(name, start, end)`` of every generated block of a page: ``text[start:end]`` is the
    block's content (between the BEGIN line and the END marker). ValueError on a BEGIN
    without its END."""
    out = []
    for m in BEGIN.finditer(text):
        end = text.find(END, m.end())
        if end < 0:
            raise ValueError(f"'{m.group(0).strip()}' has no '{END}'")
        out.append((m.group(1), m.end(), end))
    return out


def _rel(page: Path) -> str:
    try:
        return str(page.relative_to(ROOT))
    except ValueError:
        return str(page)


def pages(docs: Path = DOCS) -> list[Path]:
    return sorted(docs.glob("*.md"))


def render(text: str, rendered: dict[str, str]) -> str:
    """``text`` with every generated block replaced by its rendering."""
    out, last = [], 0
    for name, start, end in blocks(text):
        if name not in rendered:
            raise ValueError(f"unknown generated block '{name}' (known: {', '.join(TABLES)})")
        out += [text[last:start], rendered[name]]
        last = end
    return "".join(out) + text[last:]


def check(docs: Path = DOCS, write: bool = False) -> list[str]:
    """What is out of date (or, with ``write``, what was rewritten): one line per page block
    that differs from the code's rendering, per table no page holds, per unknown block, and
    per relative link of the README or a page whose file or heading does not exist."""
    rendered = {name: fn() for name, fn in TABLES.items()}
    problems, seen = [], set()
    for page in pages(docs):
        text = page.read_text()
        try:
            new = render(text, rendered)
        except ValueError as err:
            problems.append(f"{_rel(page)}: {err}")
            continue
        found = [name for name, _, _ in blocks(text)]
        seen.update(found)
        if new != text:
            stale = [n for n, s, e in blocks(text) if text[s:e] != rendered[n]]
            problems.append(f"{_rel(page)}: generated "
                            f"{', '.join(stale)} differ{'s' if len(stale) == 1 else ''} "
                            f"from the code")
            if write:
                page.write_text(new)
    problems += [f"no page under docs/ holds the generated block '{name}'"
                 for name in TABLES if name not in seen]
    for page in [ROOT / "README.md", *pages(docs)]:
        problems += broken_links(page)
    return problems


# --- links -------------------------------------------------------------------------------------

_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def anchors(text: str) -> set[str]:
    """The heading anchors GitHub makes for a page (lower case, punctuation dropped, spaces
    to '-', repeats suffixed -1, -2, ...)."""
    out: set[str] = set()
    for line in _FENCE.sub("", text).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        base, n = slug, 0
        while slug in out:
            n += 1
            slug = f"{base}-{n}"
        out.add(slug)
    return out


def broken_links(page: Path) -> list[str]:
    """Relative links of a markdown page whose file or heading anchor does not exist."""
    text = page.read_text()
    bad = []
    for target in _LINK.findall(_FENCE.sub("", text)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{_rel(page)}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
            bad.append(f"{_rel(page)}: {target} (no such heading)")
    return bad


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m erc_ros.commands.docs",
        description="Check or rewrite the generated tables of the docs/ pages.")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true",
                      help="exit 1 if a generated table differs from what the code renders")
    mode.add_argument("--write", action="store_true", help="rewrite the generated tables")
    mode.add_argument("--print", metavar="TABLE", choices=sorted(TABLES),
                      help="print one table (%(choices)s)")
    args = parser.parse_args(argv)
    if args.print:
        sys.stdout.write(TABLES[args.print]())
        return 0
    problems = check(write=args.write)
    if args.write:
        for line in problems:
            print(("rewrote: " if "differ" in line else "") + line)
        return 1 if any("differ" not in p for p in problems) else 0
    for line in problems:
        print(line)
    if problems:
        print(f"run: {FIX_COMMAND}")
        return 1
    print("docs: generated tables match the code")
    return 0


if __name__ == "__main__":
    sys.exit(main())
