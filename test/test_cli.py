"""`python -m erc_ros`: every command's module imports and its `--help` is printed (argparse
formats every help text: a stray `%` in one fails here), and the command table names the
modules as they are laid out."""
from __future__ import annotations

import importlib

import pytest

from erc_ros import cli


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_prints_its_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([name, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m erc_ros {name}"), out[:200]
    module = importlib.import_module(cli.COMMANDS[name][0])
    assert callable(module.add_arguments) and callable(module.run)


def test_an_unknown_command_prints_the_commands_and_fails(capsys):
    assert cli.main(["no-such-command"]) == 2
    out = capsys.readouterr().out
    assert all(name in out for name in cli.COMMANDS)
