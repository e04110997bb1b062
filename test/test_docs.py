"""The docs/ pages say what the code declares: every generated table (node parameters, launch
arguments, perception parameters) is exactly what ``erc_ros.commands.docs`` renders from the code
(a renamed, added, re-defaulted or re-described parameter fails here until the pages follow),
every relative link of the README and the pages points to a file and heading that exist, and
the README stays a reference page (under 12,000 characters: history goes to CHANGELOG.md).

Fix a failure with ``python -m erc_ros.commands.docs --write`` (then review the diff)."""
from __future__ import annotations

import pytest

from erc_ros.commands import docs

FIX = f"out of date: run `{docs.FIX_COMMAND}` and commit the pages"


def _page_blocks():
    return [(page, name) for page in docs.pages()
            for name, _, _ in docs.blocks(page.read_text())]


@pytest.mark.parametrize("page,name", _page_blocks(),
                         ids=lambda v: getattr(v, "name", v))
def test_generated_block_matches_the_code(page, name):
    text = page.read_text()
    assert name in docs.TABLES, f"{page.name}: unknown generated block '{name}'"
    got = [text[s:e] for n, s, e in docs.blocks(text) if n == name]
    want = docs.TABLES[name]()
    assert all(g == want for g in got), f"{page.name}: generated '{name}' {FIX}"


def test_every_table_is_on_a_page():
    held = {name for _, name in _page_blocks()}
    assert set(docs.TABLES) <= held, f"missing from docs/: {sorted(set(docs.TABLES) - held)}"


def test_every_node_and_perception_parameter_is_in_a_table():
    """Belt and braces over the renderer: each declared name appears as a table row."""
    import importlib

    from erc_ros.core.perception import PerceptionConfig
    from erc_ros.ros.launch_config import ARGUMENTS

    text = "".join(p.read_text() for p in docs.pages())
    names = [f"`perception.{k}`" for k, _, _ in PerceptionConfig.describe()]
    names += [f"`{k}`" for k in ARGUMENTS]
    for module in ("utterance_node", "emotion_node", "face_expression_node"):
        names += [f"`{k}`" for k in importlib.import_module(f"erc_ros.ros.{module}").PARAMETERS]
    missing = [n for n in names if f"| {n} |" not in text]
    assert not missing, f"{missing} {FIX}"


def test_relative_links_resolve():
    bad = [b for page in [docs.ROOT / "README.md", *docs.pages()]
           for b in docs.broken_links(page)]
    assert not bad, bad


def test_the_readme_stays_short():
    n = len((docs.ROOT / "README.md").read_text(encoding="utf-8"))
    assert n < 12_000, f"README.md has {n} characters: move detail to docs/, history to CHANGELOG.md"


def test_check_names_the_fix(tmp_path):
    """A drifted page is reported, and --write restores it."""
    page = tmp_path / "p.md"
    block = docs.TABLES["launch-arguments"]()
    page.write_text("x\n<!-- BEGIN GENERATED: launch-arguments -->\n| stale |\n"
                    "<!-- END GENERATED -->\n")
    problems = [p for p in docs.check(tmp_path) if "p.md" in p]
    assert problems and "launch-arguments" in problems[0]
    docs.check(tmp_path, write=True)
    assert block in page.read_text()
