"""Ctrl-C (SIGINT) and SIGTERM: the current step finishes, the partial epoch is dropped, the run folder keeps the
last complete epoch, the exact resume command is printed, the exit status is non-zero, and resuming gives the
same weights as a run never stopped. A second signal aborts at once."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from relkit import FAST, check_run_folder, cli_args, make_folder, same_weights, start_cli
from torch import nn

import sedensenet
from sedensenet import checkpoint as ckpt
from sedensenet.cli import main
from sedensenet.engine.faults import TrainingInterrupted

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
SETTINGS = dict(FAST, epochs=5, drop_rate=0.1, scheduler="cosine")  # stopped in epoch 3: three epochs to resume
STEPS_PER_EPOCH = 2  # 16 training images, batch 8


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("signals") / "data", per_class=10)


@pytest.fixture(scope="module")
def reference(data: Path) -> tuple[Path, Path]:
    result = sedensenet.train(data=str(data), project=str(data.parent / "runs"), name="reference", **SETTINGS)
    return data, result.run_dir


@pytest.fixture(scope="module")
def reference_without_dropout(data: Path) -> tuple[Path, Path]:
    """Without dropout nothing in a training step draws from the global RNG (augmentation is seeded per sample)."""
    settings = dict(SETTINGS, drop_rate=0.0)
    result = sedensenet.train(data=str(data), project=str(data.parent / "runs"), name="no_dropout", **settings)
    return data, result.run_dir


def signal_at_step(monkeypatch: pytest.MonkeyPatch, step: int, action: Callable[[], None]) -> None:
    """Run ``action`` (e.g. send ourselves SIGINT) inside the loss of training step number ``step`` (from 1)."""
    calls = {"n": 0}
    base = nn.CrossEntropyLoss

    class Signalling(base):  # type: ignore[misc, valid-type]
        def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            calls["n"] += 1
            if calls["n"] == step:
                action()
            return super().forward(logits, target)

    monkeypatch.setattr(nn, "CrossEntropyLoss", Signalling)


def resume_with(command: str) -> int:
    """Run a printed ``sedensenet train --resume ...`` command through the CLI entry point."""
    argv = shlex.split(command)
    assert argv[:3] == ["sedensenet", "train", "--resume"]
    return main([*argv[1:], "-q"])


def test_sigint_drops_the_partial_epoch_and_resume_is_exact(
    reference: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, ref = reference
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)  # (SIGINT is ignored under nohup)
    signal_at_step(monkeypatch, 2 * STEPS_PER_EPOCH + 1, lambda: signal.raise_signal(signal.SIGINT))  # epoch 3
    project = tmp_path / "runs 运行"  # the printed command must quote this
    with pytest.raises(TrainingInterrupted) as info:
        sedensenet.train(data=str(data), project=str(project), name="stopped", **SETTINGS)
    monkeypatch.undo()
    run = project / "stopped"
    e = info.value
    assert (e.epoch, e.signum, e.exit_code, e.run_dir) == (2, signal.SIGINT, 130, run)
    assert e.command == f"sedensenet train --resume {shlex.quote(str(run))}"
    assert "SIGINT after epoch 2 of 5" in str(e) and e.command in str(e)
    seen = check_run_folder(run)
    assert seen["state_epoch"] == seen["last_epoch"] == 2 and seen["history_epochs"] == [1, 2]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # handlers put back
    assert resume_with(e.command) == 0
    for name in ("last", "best"):
        assert same_weights(run / "weights" / f"{name}.safetensors", ref / "weights" / f"{name}.safetensors")


def test_sigterm_during_the_writes_keeps_that_epoch(
    reference: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, _ = reference
    real_save = ckpt.save_checkpoint

    def save_then_signal(path, model, meta):  # noqa: ANN001, ANN202 - SIGTERM arrives while epoch 2 is written
        out = real_save(path, model, meta)
        if meta.epoch == 2:
            signal.raise_signal(signal.SIGTERM)
        return out

    monkeypatch.setattr(ckpt, "save_checkpoint", save_then_signal)
    with pytest.raises(TrainingInterrupted) as info:
        sedensenet.train(data=str(data), project=str(tmp_path), name="term", **SETTINGS)
    assert (info.value.epoch, info.value.exit_code) == (2, 143)
    seen = check_run_folder(tmp_path / "term")
    assert seen["state_epoch"] == 2 and seen["history_epochs"] == [1, 2]


def test_second_signal_aborts_at_once_and_leaves_loadable_files(
    reference: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, _ = reference

    def twice() -> None:
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)
    signal_at_step(monkeypatch, 2 * STEPS_PER_EPOCH + 1, twice)
    with pytest.raises(KeyboardInterrupt):
        sedensenet.train(data=str(data), project=str(tmp_path), name="abort", **SETTINGS)
    assert signal.getsignal(signal.SIGINT) == before
    seen = check_run_folder(tmp_path / "abort")
    assert seen["state_epoch"] == 2


def test_interrupt_before_the_first_epoch_says_to_start_again(
    reference: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, _ = reference
    signal_at_step(monkeypatch, 1, lambda: signal.raise_signal(signal.SIGINT))
    with pytest.raises(TrainingInterrupted) as info:
        sedensenet.train(data=str(data), project=str(tmp_path), name="early", **SETTINGS)
    assert info.value.epoch == 0 and "before the first epoch" in str(info.value)
    assert info.value.command == f"sedensenet train --config {tmp_path / 'early' / 'config.yaml'}"
    assert not (tmp_path / "early" / "state" / "last.pt").exists()


@pytest.mark.slow  # a real CLI process per signal (7-10 s each)
@pytest.mark.parametrize(
    "sig, workers, group",
    [(signal.SIGINT, 1, True), (signal.SIGTERM, 0, False)],
    ids=["ctrl-c-to-the-process-group-with-a-loader-worker", "sigterm"],
)
def test_real_signal_to_the_cli_process(
    request: pytest.FixtureRequest, tmp_path: Path, sig: int, workers: int, group: bool
) -> None:
    """A real signal to ``python -m sedensenet train``: as from a terminal's Ctrl-C (which reaches the DataLoader
    worker too) or a job scheduler's SIGTERM.

    The worker case runs without dropout: a DataLoader with workers draws its base seed from the global RNG once
    per iterator, which shifts dropout after a resume (see test_resume_with_workers_and_dropout_is_exact).
    """
    settings = dict(SETTINGS, workers=workers, drop_rate=0.0 if workers else SETTINGS["drop_rate"])
    data, ref = request.getfixturevalue("reference_without_dropout" if workers else "reference")
    run = tmp_path / "runs" / "cli"
    args = ["train", "--data", str(data), "--project", str(tmp_path / "runs"), "--name", "cli"]
    args += cli_args(settings)
    out_path = tmp_path / "out.txt"
    with open(out_path, "w", encoding="utf-8") as out:
        proc = start_cli(args, tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while proc.poll() is None and "epoch 2/5" not in out_path.read_text(encoding="utf-8"):
                time.sleep(0.01)
            assert proc.poll() is None, out_path.read_text(encoding="utf-8")
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = out_path.read_text(encoding="utf-8")
    assert proc.returncode not in (0, -sig), text  # handled, and reported as a failure
    assert "Traceback" not in text, text
    command = f"sedensenet train --resume {shlex.quote(str(run))}"
    assert text.rstrip().splitlines()[-1].endswith(command), text
    seen = check_run_folder(run)
    assert seen["state_epoch"] is not None and seen["state_epoch"] >= 2
    assert resume_with(command) == 0
    assert same_weights(run / "weights" / "last.safetensors", ref / "weights" / "last.safetensors")


def test_cli_exit_status_is_128_plus_the_signal(monkeypatch: pytest.MonkeyPatch, capsys, tmp_path: Path) -> None:
    def stopped(**kwargs):  # noqa: ANN003, ANN202
        raise TrainingInterrupted("stopped by SIGTERM after epoch 2 of 8; ... Continue with: X", tmp_path, 2, 15, "X")

    monkeypatch.setattr("sedensenet.api.train", stopped)
    assert main(["train", "--data", str(tmp_path)]) == 143
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].endswith("Continue with: X") and "error:" not in err


def test_resume_with_workers_and_dropout_is_exact(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = dict(SETTINGS, epochs=3, workers=1)
    straight = sedensenet.train(data=str(data), project=str(tmp_path), name="straight", **settings)
    signal_at_step(monkeypatch, STEPS_PER_EPOCH + 1, lambda: signal.raise_signal(signal.SIGINT))
    with pytest.raises(TrainingInterrupted) as info:
        sedensenet.train(data=str(data), project=str(tmp_path), name="stopped", **settings)
    monkeypatch.undo()
    sedensenet.train(resume=info.value.run_dir)
    assert same_weights(
        info.value.run_dir / "weights" / "last.safetensors", straight.run_dir / "weights" / "last.safetensors"
    )
