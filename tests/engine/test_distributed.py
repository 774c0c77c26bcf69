"""DistributedDataParallel through torchrun: 2 CPU processes (gloo) against one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from imagegen import FINDINGS, make_folder, make_multilabel_table  # noqa: E402

from sedensenet.cli import main  # noqa: E402
from sedensenet.engine.launch import torchrun_command  # noqa: E402
from sedensenet.reports import read_history_csv  # noqa: E402


def _train(argv: list[str], nproc: int, cwd: Path) -> subprocess.CompletedProcess:
    base = ["train", *argv, "-q"]
    cmd = torchrun_command(nproc, base) if nproc > 1 else [sys.executable, "-m", "sedensenet", *base]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("ddp")
    data = make_folder(tmp / "data", per_class=12)
    # the full runs are multi-label (masked BCE, sigmoid outputs gathered from both ranks); the frozen ones are not
    table = make_multilabel_table(tmp / "table", n=48, size=16, seed=3, columns=True, uncertain=0.1).csv
    out = {}
    for name, extra in {"frozen": ["--freeze-epochs", "2"], "full": []}.items():
        for nproc in (1, 2):
            # full2 also has a time budget (capped at the 2 epochs): rank 0's plan and step decisions reach rank 1
            extra = [*extra, "--time", "1h"] if name == "full" and nproc == 2 else extra
            source = str(table) if name == "full" else str(data)
            argv = ["--data", source, "--model", "se_densenet_tiny", "--image-size", "16", "--batch-size", "8",
                    "--epochs", "2", "--workers", "0", "--project", str(tmp / "runs"), "--name", f"{name}{nproc}",
                    "--augment", "light", *extra]  # fmt: skip
            if nproc == 1:  # in this process (one intra-op thread, as each torchrun rank): no second start-up
                assert main(["train", *argv, "-q"]) == 0
            else:
                proc = _train(argv, nproc, tmp)
                assert proc.returncode == 0, proc.stderr[-3000:]
            out[f"{name}{nproc}"] = tmp / "runs" / f"{name}{nproc}"
    return out


@pytest.mark.slow
def test_two_processes_equal_one_when_batchnorm_is_frozen(runs: dict[str, Path]) -> None:
    # With BatchNorm statistics fixed, DDP's averaged gradients are exactly the single-process gradients of the
    # same global batch: DistributedSampler's interleaved shards make rank 0 + rank 1 = the same 8 images.
    one, two = read_history_csv(runs["frozen1"] / "history.csv"), read_history_csv(runs["frozen2"] / "history.csv")
    for a, b in zip(one, two, strict=True):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), key
    wa = load_file(runs["frozen1"] / "weights" / "last.safetensors")
    wb = load_file(runs["frozen2"] / "weights" / "last.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4, msg=k)


def test_two_processes_track_one_in_full_training(runs: dict[str, Path]) -> None:
    # Training BatchNorm sees 4 images per process instead of 8, so the runs differ a little, not a lot.
    one, two = read_history_csv(runs["full1"] / "history.csv"), read_history_csv(runs["full2"] / "history.csv")
    assert len(one) == len(two) == 2
    for a, b in zip(one, two, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=0.15)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=0.15)


def test_only_rank_zero_writes(runs: dict[str, Path]) -> None:
    run_root = runs["full2"].parent
    assert sorted(p.name for p in run_root.iterdir()) == ["frozen1", "frozen2", "full1", "full2"]
    metrics = json.loads((runs["full2"] / "metrics.json").read_text(encoding="utf-8"))
    assert sorted(metrics["per_label"]) == sorted(FINDINGS)  # a multi-label run, evaluated on both ranks' outputs
    assert (
        metrics["num_samples"]
        == json.loads((runs["full1"] / "metrics.json").read_text(encoding="utf-8"))["num_samples"]
    )
    log = (runs["full2"] / "train.log").read_text(encoding="utf-8")
    assert log.count("epoch 2/2") == 1
    assert log.count("epochs planned") == 2 and "2 epochs planned (2 done, --epochs 2 at most)" in log


def test_sync_bn_on_cpu_is_refused_before_training(tmp_path: Path) -> None:
    # PyTorch's SyncBatchNorm has GPU kernels only: a CPU run must say so up front, not crash in the first step.
    data = make_folder(tmp_path / "data", per_class=4)
    argv = ["--data", str(data), "--model", "se_densenet_tiny", "--image-size", "16", "--batch-size", "4",
            "--epochs", "1", "--workers", "0", "--project", str(tmp_path / "runs"), "--sync-bn"]  # fmt: skip
    proc = _train(argv, 2, tmp_path)
    assert proc.returncode != 0
    assert "--sync-bn needs CUDA GPUs" in proc.stderr
    assert "error: --sync-bn" in proc.stderr  # the CLI's one-line user error, from the ranks themselves
    assert not list((tmp_path / "runs").glob("*/weights/*.safetensors"))
