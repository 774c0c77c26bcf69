"""Users' commands keep working: every subcommand's flags (names, dest, choices, defaults, kinds) as they were.

The snapshot ``flags_snapshot.json`` was written from the parser before the CLI was generated from a table of
typed functions; a change in a flag's name, choice, default, type or kind fails here. After a deliberate
change (a new flag), rewrite it with ``PYTHONPATH=src python tests/cli/test_flag_snapshot.py`` and review the diff.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sedensenet.cli import build_parser

SNAPSHOT = Path(__file__).with_name("flags_snapshot.json")


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def _action(action: argparse.Action) -> dict[str, Any]:
    kind = type(action).__name__.lstrip("_")
    return {
        "option_strings": list(action.option_strings),
        "dest": action.dest,
        "kind": kind,
        "type": getattr(action.type, "__name__", None) if action.type is not None else None,
        "choices": _jsonable(list(action.choices)) if action.choices is not None else None,
        "default": _jsonable(action.default),
        "nargs": _jsonable(action.nargs),
        "const": _jsonable(action.const),
        "required": action.required,
    }


def flag_table() -> dict[str, list[dict[str, Any]]]:
    """Every subcommand's arguments (help aside), in the order the parser lists them; ``""``: the top level."""
    parser = build_parser()
    skip = (argparse._HelpAction, argparse._SubParsersAction)
    table = {"": [_action(a) for a in parser._actions if not isinstance(a, skip)]}
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        table[name] = [_action(a) for a in p._actions if not isinstance(a, argparse._HelpAction)]
    return table


def test_every_subcommand_keeps_its_flags() -> None:
    expected = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    live = flag_table()
    assert sorted(live) == sorted(expected), "subcommands added or removed"
    for command, actions in expected.items():
        by_dest = {a["dest"] + " ".join(a["option_strings"]): a for a in live[command]}
        for want in actions:
            key = want["dest"] + " ".join(want["option_strings"])
            assert key in by_dest, f"{command}: {want['option_strings'] or want['dest']} is gone"
            assert by_dest[key] == want, f"{command} {want['option_strings'] or want['dest']} changed"
        assert len(live[command]) == len(actions), f"{command}: flags added: update the snapshot deliberately"


def test_the_snapshot_holds_what_users_type() -> None:
    """A guard on the snapshot itself: a few flags users rely on, as they are documented."""
    expected = json.loads(SNAPSHOT.read_text(encoding="utf-8"))

    def flag(command: str, option: str) -> dict[str, Any]:
        return next(a for a in expected[command] if option in a["option_strings"])

    assert flag("predict", "--amp")["choices"] == ["auto", "off", "bf16", "fp16"]
    assert flag("predict", "--amp")["default"] == "auto"
    assert flag("serve", "--workers")["default"] == 1 and flag("serve", "--max-batch")["default"] == 32
    assert flag("train", "--epochs")["default"] == argparse.SUPPRESS
    assert flag("train", "--memory-efficient")["nargs"] == "?"


if __name__ == "__main__":
    commands = [
        f"{json.dumps(name)}: [\n" + ",\n".join("  " + json.dumps(a) for a in actions) + "\n]"
        for name, actions in flag_table().items()
    ]
    SNAPSHOT.write_text("{\n" + ",\n".join(commands) + "\n}\n", encoding="utf-8")  # one flag a line: clear diffs
    print(f"wrote {SNAPSHOT}", file=sys.stderr)
