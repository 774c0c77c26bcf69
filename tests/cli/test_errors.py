"""The CLI tells a user's mistake (one line, exit 2) from a bug of ours (traceback under -v, how to report it)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

import sedensenet.model_summary
from sedensenet.cli import main


def _explode(*args: object, **kwargs: object) -> str:
    raise ZeroDivisionError("boom in the summary")


def test_an_unexpected_error_is_a_bug_with_a_report_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(sedensenet.model_summary, "summary", _explode)
    assert main(["summary", "se_densenet_tiny"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "error: ZeroDivisionError: boom in the summary"
    assert "this is a bug in sedensenet; run again with -v for the traceback and report it at " in err
    assert "Traceback" not in err


def test_verbose_shows_the_traceback_of_a_bug(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(sedensenet.model_summary, "summary", _explode)
    assert main(["summary", "se_densenet_tiny", "-v"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert "in _explode" in err and "ZeroDivisionError: boom in the summary" in err
    assert "this is a bug in sedensenet; report it at " in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["summary", "densenet122"], "error: unknown model 'densenet122'; available models: densenet121"),
        (["train", "--data", "builtin:digits", "--device", "gpu"], "error: --device gpu: Expected one of cpu"),
        (["train", "--data", "builtin:digits", "--drop-rate", "1.5"], "error: drop_rate must be in [0, 1), got 1.5"),
        (["convert-keras", "x.h5", "--output", "x.st", "--blocks", "6,a"], "error: --blocks takes comma-separated"),
        (["explain", "run"], "error: give image files or folders for Grad-CAM, and/or --data DIR"),
    ],
)
def test_a_user_error_is_one_line_and_exit_2(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    project = ["--project", str(tmp_path)] if argv[0] == "train" else []
    assert main([*argv, *project, "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message)
    assert "bug" not in err and "Traceback" not in err


def test_an_os_error_from_the_machine_is_not_a_bug(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def full_disk(*args: object, **kwargs: object) -> str:
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/x")

    monkeypatch.setattr(sedensenet.model_summary, "summary", full_disk)
    assert main(["summary", "se_densenet_tiny"]) == 2
    assert capsys.readouterr().err == "error: [Errno 28] No space left on device: '/runs/x'\n"
