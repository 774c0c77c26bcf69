"""The bugs issue 10's review found in the engine, each pinned by a test that failed before its fix."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from imagegen import CLASSES, make_folder  # noqa: E402

import sedensenet  # noqa: E402
from sedensenet.config import TrainConfig  # noqa: E402
from sedensenet.engine import distributed as dist  # noqa: E402
from sedensenet.engine import trainer  # noqa: E402
from sedensenet.engine.build import freeze_bn_stats, set_frozen  # noqa: E402
from sedensenet.engine.loader import default_workers  # noqa: E402
from sedensenet.engine.loop import EpochResult, weighted_loss  # noqa: E402
from sedensenet.engine.state import HISTORY_METRICS  # noqa: E402
from sedensenet.models import create_model  # noqa: E402

FAST = {"model": "se_densenet_tiny", "image_size": 16, "batch_size": 8, "augment": "light", "workers": 0}


def test_frozen_sync_batchnorm_keeps_its_statistics() -> None:
    model = create_model("se_densenet_tiny", num_classes=2)
    set_frozen(model, True)
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    synced.train()
    freeze_bn_stats(synced)
    sync_bns = [m for m in synced.modules() if isinstance(m, nn.SyncBatchNorm)]
    frozen = [m for m in sync_bns if not m.weight.requires_grad]
    assert len(frozen) > 0 and len(frozen) == len(sync_bns)  # se_densenet_tiny's BN layers are all in the body
    assert [m.training for m in frozen] == [False] * len(frozen)


def test_workers_help_says_what_the_loader_does(monkeypatch: pytest.MonkeyPatch) -> None:
    from sedensenet.cli import _field_docs

    doc = _field_docs(TrainConfig)["workers"]
    assert "on a GPU one per CPU core, at most 8" in doc
    assert "on the CPU one per four cores beyond the first two" in doc
    for cores, cpu, gpu in ((1, 0, 1), (2, 0, 2), (6, 1, 6), (10, 2, 8), (32, 7, 8)):
        monkeypatch.setattr("os.sched_getaffinity", lambda _pid, n=cores: set(range(n)), raising=False)
        assert default_workers(torch.device("cpu")) == cpu, cores
        assert default_workers(torch.device("cuda")) == gpu, cores


def test_val_loss_under_ddp_uses_the_class_weights(tmp_path: Path) -> None:
    criterion = nn.CrossEntropyLoss(weight=torch.tensor([3.0, 1.0]))
    targets = np.array([0, 1, 1])
    losses = np.array([1.0, 2.0, 3.0])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    one = weighted_loss(criterion, targets, losses)
    assert one == pytest.approx((3 * 1.0 + 2.0 + 3.0) / 5)  # 1.6, not the unweighted 2.0
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert dist.is_distributed()
        gathered = dist.gather_eval(EpochResult(one, 2 / 3, 3, 0.1, probs, targets, losses), torch.device("cpu"),
                                    criterion)  # fmt: skip
    finally:
        torch.distributed.destroy_process_group()
    assert gathered.loss == pytest.approx(1.6)
    assert gathered.accuracy == pytest.approx(2 / 3)


def test_compile_auto_on_resume_counts_the_remaining_epochs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sedensenet.inference as inference

    asked: list[tuple[int, int]] = []
    real = inference.should_compile

    def spy(device_type: str, steps_per_epoch: int, epochs: int) -> tuple[bool, str]:
        asked.append((steps_per_epoch, epochs))
        return real(device_type, steps_per_epoch, epochs)

    monkeypatch.setattr(inference, "should_compile", spy)
    data = make_folder(tmp_path / "data", per_class=6)
    first = sedensenet.train(data=str(data), project=str(tmp_path / "runs"), epochs=1, compile="auto", **FAST)
    sedensenet.train(resume=first.run_dir, epochs=3)
    assert [epochs for _, epochs in asked] == [1, 2]  # the resumed run has 2 of its 3 epochs left


def test_final_evaluation_reuses_the_runs_image_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sedensenet.data.cache import ImageCache

    monkeypatch.setenv("SEDENSENET_HOME", str(tmp_path / "home"))
    built: list[int] = []
    real = ImageCache.build.__func__

    def counting(cls, samples, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        built.append(len(samples))
        return real(cls, samples, *args, **kwargs)

    monkeypatch.setattr(ImageCache, "build", classmethod(counting))
    data = make_folder(tmp_path / "data", per_class=6)
    result = sedensenet.train(data=str(data), project=str(tmp_path / "runs"), epochs=1, cache=True, **FAST)
    assert built == [12]  # one cache over every split, opened once: the final evaluation decodes nothing again
    assert set(result.metrics) == {"val"}
    assert result.metrics["val"]["classes"] == list(CLASSES) and 0 <= result.metrics["val"]["accuracy"] <= 1


needs_tensorboard = pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None, reason="the tensorboard package is not installed"
)


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@needs_tensorboard
def test_tensorboard_scalars_are_on_disk_after_training(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "data", per_class=6)
    result = sedensenet.train(data=str(data), project=str(tmp_path / "runs"), epochs=2, tensorboard=True, **FAST)
    scalars = _scalars(result.run_dir)
    assert sorted(scalars) == sorted(HISTORY_METRICS)
    for key in HISTORY_METRICS:
        expected = result.history.history[key]
        assert [step for step, _ in scalars[key]] == [1, 2]
        assert [v for _, v in scalars[key]] == pytest.approx(expected, rel=1e-6), key


@needs_tensorboard
def test_tensorboard_scalars_are_on_disk_after_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_end = trainer.end_epoch

    def fail_after_one(ctx, epoch, row, train):  # noqa: ANN001, ANN202
        real_end(ctx, epoch, row, train)
        raise RuntimeError("boom after epoch 1")

    monkeypatch.setattr(trainer, "end_epoch", fail_after_one)
    data = make_folder(tmp_path / "data", per_class=6)
    with pytest.raises(RuntimeError, match="boom after epoch 1"):
        sedensenet.train(data=str(data), project=str(tmp_path / "runs"), name="t", epochs=3, tensorboard=True, **FAST)
    scalars = _scalars(tmp_path / "runs" / "t")
    assert sorted(scalars) == sorted(HISTORY_METRICS)
    assert [step for step, _ in scalars["loss"]] == [1]
    assert math.isfinite(scalars["loss"][0][1])
