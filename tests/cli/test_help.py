"""Every subcommand's --help renders: help text comes from docstrings, where a stray ``%`` once broke argparse."""

from __future__ import annotations

import pytest

from sedensenet import cli

SUBCOMMANDS = sorted(cli.build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_help_renders(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([name, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: sedensenet {name}" in capsys.readouterr().out


def test_a_percent_in_a_docstring_reaches_the_help_as_itself() -> None:
    assert cli._plain("the 95% interval of ``x``") == "the 95%% interval of x"
