"""Each subcommand's flags and the parameters of the function it calls agree, so neither drifts from the other.

A row of ``cli.COMMANDS`` names a typed function; every parameter (and every field of a settings dataclass it
takes) must be a flag, and every flag a parameter, except the exclusions ``cli.EXCLUDED`` documents and the
command's own flags (``-q``, ``--strict``, ``--devices``).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from typing import Any

import pytest

from sedensenet import cli
from sedensenet.config import OUTPUT_FIELDS, TrainConfig

COMMON = {"help", "quiet", "verbose"}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def _expected(command: cli.Command) -> set[str]:
    """The flags' dests the functions' signatures call for, read here independently of the generator."""
    dests: set[str] = set()
    for func in command.functions():
        for name, p in inspect.signature(func).parameters.items():
            if p.kind is p.VAR_POSITIONAL or cli.excluded(func, name):
                continue
            if p.kind is p.VAR_KEYWORD:
                assert command.train_flags, f"{func.__name__}(**{name}) takes settings no flag gives"
                continue
            settings = cli.settings_class(p)
            if settings is None:
                dests.add(command.names.get(name, name))
                continue
            dests |= {command.names.get(f.name, f.name) for f in dataclasses.fields(settings)
                      if not cli.excluded(settings, f.name)}  # fmt: skip
    if command.train_flags:
        dests |= {f.name for f in dataclasses.fields(TrainConfig) if f.name not in OUTPUT_FIELDS}
    return dests


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_flag_is_a_parameter_and_every_parameter_a_flag(name: str) -> None:
    command = cli.COMMANDS[name]
    own = {a.dest for a in _subparsers()[name]._actions if set(a.option_strings) & set(command.own)}
    flags = {a.dest for a in _subparsers()[name]._actions} - COMMON - own
    expected = _expected(command)
    assert flags - expected == set(), f"{name}: flags that are no parameter of {command.run.__name__}"
    assert expected - flags == set(), f"{name}: parameters of {command.run.__name__} without a flag"


def test_every_exclusion_names_a_real_parameter_and_says_why() -> None:
    owners: dict[str, Any] = {}
    for command in cli.COMMANDS.values():
        for func in command.functions():
            owners[func.__name__] = set(inspect.signature(func).parameters)
    for cls in cli.SETTINGS.values():
        owners[cls.__name__] = {f.name for f in dataclasses.fields(cls)}
    every = set().union(*owners.values())
    for key, why in cli.EXCLUDED.items():
        owner, _, name = key.rpartition(".")
        assert name in (owners.get(owner, set()) if owner else every), f"EXCLUDED names no parameter: {key}"
        assert len(why) > 10, f"EXCLUDED[{key!r}] must say why"


def test_a_parameter_without_a_flag_fails_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check itself: a parameter the generator leaves out (as an undocumented exclusion) is caught."""
    monkeypatch.setitem(cli.EXCLUDED, "check_data.groups", "left out to prove the check")
    command = cli.COMMANDS["check-data"]
    flags = {a.dest for a in _subparsers()["check-data"]._actions} - COMMON - {"strict"}
    monkeypatch.delitem(cli.EXCLUDED, "check_data.groups")
    assert _expected(command) - flags == {"groups"}


def test_help_comes_from_the_docstrings() -> None:
    evaluate = _subparsers()["evaluate"]
    helps = {a.dest: a.help for a in evaluate._actions}
    assert helps["data"].startswith("labelled image folder (class sub-folders)")  # api.evaluate's Args
    assert helps["amp"].startswith("auto: bf16 on CPUs with bf16 matrix units")  # InferenceSettings.amp's docstring
    assert evaluate.description.startswith("Evaluate a checkpoint on a labelled folder")
