"""Numerical and resource faults: a NaN/Inf loss or NaN weights stop training with the epoch, the step and the
likely causes, and never overwrite the last good checkpoint; running out of memory is explained with the
settings to change; settings that cannot work are refused before any work starts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from relkit import FAST, check_run_folder, make_folder
from torch import nn

import sedensenet
from sedensenet.cli import main
from sedensenet.engine import trainer
from sedensenet.engine.faults import TrainingOutOfMemoryError
from sedensenet.engine.loop import NonFiniteLossError

SETTINGS = dict(FAST, epochs=3)
KEPT = ("weights/last.safetensors", "weights/best.safetensors", "state/last.pt", "history.csv", "curves.png")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("numeric") / "data", per_class=10)  # 16 train images: 2 steps


def nan_loss_at_call(monkeypatch: pytest.MonkeyPatch, call: int) -> None:
    counter = {"n": 0}
    base = nn.CrossEntropyLoss

    class Poisoned(base):  # type: ignore[misc, valid-type]
        def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            counter["n"] += 1
            loss = super().forward(logits, target)
            return loss * float("nan") if counter["n"] == call else loss

    monkeypatch.setattr(nn, "CrossEntropyLoss", Poisoned)


def snapshot_after_epoch_one(monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    saved: dict[str, bytes] = {}
    real_end = trainer.end_epoch

    def end(ctx, epoch, row, train):  # noqa: ANN001, ANN202
        stop = real_end(ctx, epoch, row, train)
        if epoch == 1:
            saved.update({f: (ctx.run_dir / f).read_bytes() for f in KEPT})
        return stop

    monkeypatch.setattr(trainer, "end_epoch", end)
    return saved


def test_nan_loss_names_epoch_and_step_and_keeps_the_good_checkpoint(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nan_loss_at_call(monkeypatch, 4)  # epoch 2, step 2
    saved = snapshot_after_epoch_one(monkeypatch)
    with pytest.raises(NonFiniteLossError) as info:
        sedensenet.train(data=str(data), project=str(tmp_path), **SETTINGS)
    message = str(info.value)
    assert "the training loss became nan at epoch 2, step 2" in message
    assert "checkpoint of epoch 1" in message and "not overwritten" in message
    assert "learning rate too high (--lr 0.001; try 0.0001)" in message
    run = tmp_path / "train"
    assert {f: (run / f).read_bytes() for f in KEPT} == saved  # byte for byte what epoch 1 wrote
    assert check_run_folder(run)["state_epoch"] == 1  # and every tensor in it is finite


def test_nan_at_the_first_step_says_no_checkpoint_exists(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nan_loss_at_call(monkeypatch, 1)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 1\. No epoch was complete, so no checkpoint"):
        sedensenet.train(data=str(data), project=str(tmp_path), **SETTINGS)
    assert not (tmp_path / "train" / "weights").exists()


def test_a_learning_rate_far_too_high(data: Path, tmp_path: Path) -> None:
    """No patching: SGD at lr 1e6 blows the model up for real (a NaN loss, or Inf BatchNorm statistics under a
    still finite loss: either way nothing non-finite is saved)."""
    with pytest.raises(NonFiniteLossError) as info:
        sedensenet.train(data=str(data), project=str(tmp_path), optimizer="sgd", lr=1e6, **dict(SETTINGS, epochs=6))
    found = re.search(r"(?:at|during) epoch (\d+)", str(info.value))
    assert found, str(info.value)
    epoch = int(found.group(1))
    assert "try 100000" in str(info.value)
    seen = check_run_folder(tmp_path / "train")  # whatever was saved is finite and loads
    assert seen["state_epoch"] == (epoch - 1 if epoch > 1 else None)


def test_nan_weights_after_a_finite_loss_are_never_saved(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = trainer.train_one_epoch

    def poison_in_epoch_two(model, loader, criterion, optimizer, settings, scaler, clip, progress, epoch, **kw):  # noqa: ANN001, ANN003, ANN202
        out = real(model, loader, criterion, optimizer, settings, scaler, clip, progress, epoch, **kw)
        if epoch == 2:  # as an optimiser step with a huge update would, after the last finite loss
            with torch.no_grad():
                next(model.parameters()).fill_(float("inf"))
        return out

    monkeypatch.setattr(trainer, "train_one_epoch", poison_in_epoch_two)
    saved = snapshot_after_epoch_one(monkeypatch)
    with pytest.raises(NonFiniteLossError, match=r"weights became NaN or Inf during epoch 2 .*features\.conv0\.weight"):
        sedensenet.train(data=str(data), project=str(tmp_path), **SETTINGS)
    assert {f: (tmp_path / "train" / f).read_bytes() for f in KEPT} == saved


def test_cli_prints_the_nan_message_in_one_line(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    nan_loss_at_call(monkeypatch, 4)
    assert main(["train", "--data", str(data), "--project", str(tmp_path), "-q", "--model", "se_densenet_tiny",
                 "--image-size", "16", "--batch-size", "8", "--workers", "0", "--epochs", "3"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip()  # the last line: -q does not hide INFO lines yet (engine.run._log_file)
    assert err.splitlines()[-1].startswith("error: the training loss became nan at epoch 2, step 2")
    assert "Traceback" not in err


@pytest.mark.parametrize("where", ["train_one_epoch", "evaluate_loader"])
def test_out_of_memory_is_explained_without_a_traceback(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, where: str
) -> None:
    real = getattr(trainer, where)
    calls = {"n": 0}

    def out_of_memory(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] == 2:  # in epoch 2
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.1 GiB total)")
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, where, out_of_memory)
    with pytest.raises(TrainingOutOfMemoryError) as info:
        sedensenet.train(data=str(data), project=str(tmp_path), **SETTINGS)
    message = str(info.value)
    assert "ran out of memory in epoch 2" in message and "the checkpoint of epoch 1 is kept" in message
    for hint in (
        "--batch-size 4 --accumulate 2 (the same effective batch)",
        "--memory-efficient on",
        "a smaller --image-size",
    ):
        assert hint in message, message
    calls["n"] = 0
    argv = ["train", "--data", str(data), "--project", str(tmp_path), "--model", "se_densenet_tiny",
            "--image-size", "16", "--batch-size", "8", "--workers", "0", "--epochs", "3", "-q"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()  # (-q does not hide the INFO lines yet: engine.run._log_file; reported)
    assert err.splitlines()[-1].startswith("error: CPU ran out of memory in epoch 2") and "Traceback" not in err


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--model", "densenet121", "--image-size", "16"], "--image-size 16 is too small for densenet121"),
        (["--model", "se_densenet_tiny", "--image-size", "1"], "--image-size 1 is too small for se_densenet_tiny"),
        (["--model", "se_densenet_tiny", "--batch-size", "64"], "--batch-size 64 is larger than the training split"),
        (["--model", "se_densenet_tiny", "--val-split", "1"], "val_split must be in [0, 1)"),
        (["--model", "no_such_net"], "unknown model 'no_such_net'"),
    ],
)
def test_settings_that_cannot_work_are_refused_before_any_work(
    data: Path, tmp_path: Path, capsys, flags: list[str], message: str
) -> None:
    project = tmp_path / "runs"
    assert main(["train", "--data", str(data), "--project", str(project), "--workers", "0", "-q", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not project.exists() or not any(project.iterdir())  # no run folder was made
