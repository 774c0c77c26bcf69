"""``--time``: durations, the epoch plan on a fake clock, the re-fitted cosine, and real runs that end within the
budget, stop inside a first epoch that is too long, and resume to the budget they started with."""

from __future__ import annotations

import logging
import math
import re
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from imagegen import make_folder  # noqa: E402

import sedensenet  # noqa: E402
import sedensenet.engine.run  # noqa: E402, F401  (imported before the timed call, as a CLI process has it)
from sedensenet import checkpoint as ckpt  # noqa: E402
from sedensenet.api import training_config  # noqa: E402
from sedensenet.config import ConfigError, TrainConfig, parse_duration, resolve_config  # noqa: E402
from sedensenet.engine import session  # noqa: E402
from sedensenet.engine.budget import FINAL_SECONDS, TimeBudget, plan_epochs  # noqa: E402
from sedensenet.engine.build import FittedCosine, build_scheduler, refit_schedule  # noqa: E402
from sedensenet.reports import read_history_csv  # noqa: E402

FAST = {"model": "se_densenet_tiny", "image_size": 16, "batch_size": 8, "workers": 0, "memory_efficient": "off",
        "verbose": 0}  # fmt: skip


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30m", 1800), ("2h", 7200), ("90s", 90), ("1h30m", 5400), ("1.5h", 5400), ("45", 45), (90, 90), (" 2m ", 120)],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30x", "m", "1h-5m", "0s", "0", "abc", "30 minutes"])
def test_bad_durations_say_how_to_write_one(text: str) -> None:
    with pytest.raises(ConfigError, match=r"--time|budget"):
        parse_duration(text)


def test_time_alone_has_no_epoch_cap_and_explicit_epochs_cap_it(tmp_path: Path) -> None:
    assert resolve_config({"data": "x", "time": "30m"}).epochs == 0
    # a built-in data set's recommended epochs are not the user's: no cap
    assert resolve_config({"data": "x", "time": "30m"}, recommended={"epochs": 8}).epochs == 0
    assert resolve_config({"data": "x", "time": "30m", "epochs": 40}).epochs == 40
    file = tmp_path / "c.yaml"
    file.write_text("epochs: 12\n", encoding="utf-8")
    assert resolve_config({"data": "x", "time": "2h"}, config_file=file).epochs == 12
    assert resolve_config({"data": "x"}).epochs == 25  # no budget: the default as before
    config, recommended = training_config("builtin:digits", time="30m")
    assert config.epochs == 0 and "epochs" not in recommended and recommended["image_size"] == 16
    with pytest.raises(ConfigError, match="epochs must be at least 1 .*--time"):
        TrainConfig(data="x", epochs=0)
    with pytest.raises(ConfigError, match="'ten' is not a duration"):
        resolve_config({"data": "x", "time": "ten"})


def test_plan_is_the_whole_epochs_that_fit_before_the_final_evaluation() -> None:
    assert plan_epochs(done=3, left=100, epoch_seconds=10, final_seconds=15) == 3 + 8  # 85 s: 8 whole epochs
    assert plan_epochs(done=3, left=100, epoch_seconds=10, final_seconds=15, cap=5) == 5
    assert plan_epochs(done=3, left=10, epoch_seconds=10, final_seconds=15) == 3  # never fewer than done
    assert plan_epochs(done=1, left=-5, epoch_seconds=10, final_seconds=1) == 1


def test_replanning_follows_the_measured_epoch_time() -> None:
    clock = FakeClock()
    b = TimeBudget(120.0, clock=clock, write_seconds=0.0).start()
    b.eval_images = (100, 100)
    clock.now += 5  # set-up
    b.begin_epoch(10)
    clock.now += 10  # training + validation
    # 105 s left; the final evaluation: 1.5 x the 2 s validation pass + the fixed part
    assert b.end_epoch(done=1, val_seconds=2.0) == 1 + math.floor((105 - (3 + FINAL_SECONDS)) / 10)
    b.wrote(1.0)  # the writes: the epoch took 11 s
    assert b.epoch_seconds == [11.0]
    clock.now += 1
    b.begin_epoch(10)
    clock.now += 20  # the machine got slower: fewer epochs fit
    planned = b.end_epoch(done=2, val_seconds=2.0)
    assert b.mean_epoch() == pytest.approx((11 + 21) / 2)  # the last write time stands in for this epoch's
    assert planned == 2 + math.floor((120 - 36 - 1 - (3 + FINAL_SECONDS)) / 16)
    assert "--time 2m00s: 36s spent, 1m24s left" in b.describe(2)


def test_a_step_that_would_overrun_stops_the_epoch() -> None:
    clock = FakeClock()
    b = TimeBudget(60.0, clock=clock, write_seconds=1.0).start()
    b.eval_images = (40, 40)
    b.begin_epoch(100)
    clock.now += 30  # a slow first step (kernel selection, allocations) alone never stops the run ...
    assert not b.step_overruns(images_per_step=8)
    clock.now += 2
    assert not b.step_overruns(images_per_step=8)  # 32 s spent; next step, validation, writes, final: ~14 s
    b.epoch_seconds.append(40.0)  # (an earlier epoch of this start, so the first step counts too)
    b.begin_epoch(100)
    clock.now += 20  # 52 s spent: 20 s more would overrun
    assert b.step_overruns(images_per_step=8)
    # ... unless the budget is already spent: then even the first step stops it
    late = TimeBudget(10.0, clock=clock).start()
    late.begin_epoch(100)
    clock.now += 11
    assert late.step_overruns(images_per_step=8)


def test_after_the_last_step_only_validation_writes_and_evaluation_count() -> None:
    clock = FakeClock()
    b = TimeBudget(20.0, clock=clock, write_seconds=0.5, val_seconds=1.0).start()
    b.eval_images = (10, 10)
    b.epoch_seconds.append(10.0)
    b.begin_epoch(2)
    clock.now += 5
    assert not b.step_overruns(images_per_step=8)  # 5 + next 5 + 1 + 0.5 + (1.5 + 3) = 16 s
    clock.now += 6
    assert not b.step_overruns(images_per_step=8)  # the last step: 11 + 1 + 0.5 + 4.5 = 17 s (with a next one: 23)


def test_fitted_cosine_reaches_its_floor_at_the_last_planned_epoch() -> None:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = build_scheduler(opt, name="cosine", epochs=0, warmup_epochs=2, patience=0, fitted=True)
    lrs = []
    for epoch in range(1, 9):
        lrs.append(opt.param_groups[0]["lr"])
        if epoch == 3:
            refit_schedule(sched, 8)  # the plan after epoch 3: 8 epochs in all
        opt.step()
        sched.step()
    assert lrs[:2] == pytest.approx([0.1 / 3, 0.2 / 3])  # linear warm-up, as LinearLR
    assert lrs[2] == pytest.approx(0.1)
    assert lrs[-1] == pytest.approx(0.1 * FittedCosine.FLOOR)  # epoch 8, the last planned, trains at the floor
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:], strict=False))
    # the fit travels in the resume state (plain values: weights_only loading reads it)
    state = sched.state_dict()
    assert state["lr_lambdas"][0] == {"warmup": 2, "total": 8}
    again = build_scheduler(torch.optim.SGD([p], lr=0.1), name="cosine", epochs=0, warmup_epochs=2, patience=0,
                            fitted=True)  # fmt: skip
    again.load_state_dict(state)
    assert again.lr_lambdas[0].total == 8


@pytest.mark.slow
def test_a_time_run_ends_within_its_budget(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "data", per_class=40)
    started = time.monotonic()
    result = sedensenet.train(str(data), time="15s", scheduler="cosine", project=str(tmp_path / "runs"), **FAST)
    wall = time.monotonic() - started
    assert wall <= 15 + max(0.05 * 15, 10), f"{wall:.1f}s for a 15 s budget"
    assert wall >= 10, f"{wall:.1f}s: the run gave up most of its budget"
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text(encoding="utf-8"))
    assert saved["time"] == "15s" and saved["epochs"] == 0
    plan = saved["time_plan"]
    assert plan["budget_seconds"] == 15.0 and plan["planned_epochs"] >= 2
    rows = read_history_csv(result.run_dir / "history.csv")
    log = (result.run_dir / "train.log").read_text(encoding="utf-8")
    assert log.count("epochs planned") >= plan["planned_epochs"] - 1
    assert (result.run_dir / "metrics.json").is_file()
    assert len(rows) == plan["planned_epochs"]
    plans = {int(done): int(n) for n, done in re.findall(r"(\d+) epochs planned \((\d+) done", log)}
    if "could not end within the budget" not in log:
        assert min(r["lr"] for r in rows) == rows[-1]["lr"]
        if plans[len(rows) - 1] == len(rows):  # planned as the last before it ran: the cosine ended at its floor
            assert rows[-1]["lr"] == pytest.approx(1e-3 * FittedCosine.FLOOR)
        else:  # a slower last epoch (a loaded machine) shrank the plan to the epochs done: the run ends there
            assert plans[len(rows) - 1] > len(rows) and plans[len(rows)] == len(rows)
    else:  # a step of the last planned epoch would have overrun: it was dropped, the one before is the run's
        assert f"epoch {len(rows)} is kept" in log


def test_a_first_epoch_longer_than_the_budget_stops_at_it_and_is_evaluated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a clock that runs 100,000 times fast, the 10 s budget is spent during the set-up (0.1 ms of real time,
    however warm the process): one step is trained, and that partial epoch is validated, saved and evaluated."""
    base = time.monotonic()
    fast = lambda: base + (time.monotonic() - base) * 100_000  # noqa: E731
    monkeypatch.setattr(session, "TimeBudget", lambda *a, **k: TimeBudget(*a, **k, clock=fast))
    data = make_folder(tmp_path / "data", per_class=12)
    result = sedensenet.train(str(data), time="10s", project=str(tmp_path / "runs"), **FAST)
    rows = read_history_csv(result.run_dir / "history.csv")
    assert [r["epoch"] for r in rows] == [1]
    log = (result.run_dir / "train.log").read_text(encoding="utf-8")
    assert "epoch 1 alone takes about" in log and "(measured: 1 of 3 steps in" in log
    assert (result.run_dir / "weights" / "best.safetensors").is_file()
    assert result.metrics["val"]["num_samples"] == 4


def test_resume_continues_to_the_budget_it_started_with(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sedensenet")
    data = make_folder(tmp_path / "data", per_class=8)
    first = sedensenet.train(str(data), time="1h", epochs=1, project=str(tmp_path / "runs"), **FAST)
    state = ckpt.load_state(first.run_dir / "state" / "last.pt")
    spent = state["time_spent"]
    assert state["time_budget"] == 3600.0 and 0 < spent < 60 and state["time_planned"] == 1
    verbose = {k: v for k, v in FAST.items() if k == "verbose"}
    again = sedensenet.train(resume=first.run_dir, epochs=2, **verbose)
    state = ckpt.load_state(again.run_dir / "state" / "last.pt")
    assert state["epoch"] == 2 and state["time_budget"] == 3600.0  # the original budget
    assert spent < state["time_spent"] < 3600
    # a new --time on resume is the time still to spend, counted from what the state says was spent
    spent = state["time_spent"]
    third = sedensenet.train(resume=first.run_dir, epochs=3, time="10m", **verbose)
    state = ckpt.load_state(third.run_dir / "state" / "last.pt")
    assert state["epoch"] == 3 and state["time_budget"] == pytest.approx(spent + 600)
    assert "after epoch 2: " in caplog.text and "of its --time 1h00m spent" in caplog.text


def test_a_resume_state_from_before_time_budgets_counts_nothing_spent() -> None:
    clock = FakeClock()
    ctx = SimpleNamespace(budget=TimeBudget(3600.0, clock=clock).start(), state=SimpleNamespace(epoch=3), run_dir="r")
    session._continue_budget(ctx, {"epoch": 3, "history": []}, {})  # no time_* entries: written before --time
    assert (ctx.budget.seconds, ctx.budget.spent_before, ctx.budget.planned) == (3600.0, 0.0, 3)
    session._continue_budget(ctx, {"epoch": 3, "time_spent": 100.0, "time_budget": 900.0}, {"time": "5m"})
    assert (ctx.budget.seconds, ctx.budget.spent_before) == (400.0, 100.0)


def test_help_shows_the_budget_and_studies_say_how_they_share_it(capsys: pytest.CaptureFixture) -> None:
    from sedensenet.cli import main
    from sedensenet.compare import CompareResult, ModelRow
    from sedensenet.cv import CVResult

    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])  # argparse expands % in help: the field docs must not hold one
    assert exit_.value.code == 0 and "--time TIME" in capsys.readouterr().out
    rows = [ModelRow("small", 10, 0.1, 1.0, [0.9], epochs=[12]), ModelRow("large", 99, 0.9, 4.0, [0.9], epochs=[3])]
    text = CompareResult(rows, Path("c"), [123], time="5m").markdown()
    assert "every run had the same time budget, --time 5m; epochs trained: small 12; large 3" in text
    settings = {"data": "d", "model": "m", "epochs": 0, "time": "10m", "image_size": 16, "seed": 1}
    assert "m, --time 10m per fold, 16 px" in CVResult(Path("cv"), 2, [], {}, {}, settings=settings).markdown()
    capped = CVResult(Path("cv"), 2, [], {}, {}, settings={**settings, "epochs": 1}).markdown()
    assert "--time 10m per fold, at most 1 epoch," in capped


def test_a_run_started_without_a_budget_resumes_under_one_with_a_fitted_cosine(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "data", per_class=6)
    first = sedensenet.train(str(data), epochs=1, scheduler="cosine", project=str(tmp_path / "runs"), **FAST)
    assert "lr_lambdas" not in ckpt.load_state(first.run_dir / "state" / "last.pt")["scheduler"]  # PyTorch's cosine
    sedensenet.train(resume=first.run_dir, epochs=3, time="1h", verbose=0)
    state = ckpt.load_state(first.run_dir / "state" / "last.pt")
    assert state["scheduler"]["lr_lambdas"][0] == {"warmup": 0, "total": 3} and state["time_budget"] == 3600.0
    rows = read_history_csv(first.run_dir / "history.csv")
    assert rows[-1]["epoch"] == 3 and rows[-1]["lr"] == pytest.approx(1e-3 * FittedCosine.FLOOR)


def test_cv_and_compare_give_each_run_the_whole_budget(tiny_images: Path, tmp_path: Path) -> None:
    """``--time`` in a study is each run's budget (a fold's, a model and seed's), kept in each run's config.yaml;
    the explicit ``--epochs 1`` caps the plan so the test ends in seconds."""
    from sedensenet.compare import compare
    from sedensenet.cv import cross_validate

    small = {"time": "20s", "epochs": 1, "max_steps": 1, "batch_size": 2}  # a 4-image training split per fold
    budget = {k: v for k, v in FAST.items() if k != "verbose"} | small
    cv = cross_validate(str(tiny_images), folds=2, project=str(tmp_path), **budget)
    budget.pop("model")
    compared = compare(str(tiny_images), ["se_densenet_tiny"], seeds=1, project=str(tmp_path), **budget)
    runs = [*cv.runs, *(Path(r) for r in compared.rows[0].runs)]
    assert len(runs) == 3 and "--time 20s per fold" in cv.markdown()
    assert "every run had the same time budget, --time 20s" in compared.markdown()
    for run in runs:
        saved = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
        assert (saved["time"], saved["epochs"]) == ("20s", 1), run
        plan = saved["time_plan"]
        assert (plan["budget_seconds"], plan["planned_epochs"]) == (20.0, 1), run
        assert 0 < plan["spent_seconds"] < 20, run
        assert [r["epoch"] for r in read_history_csv(run / "history.csv")] == [1], run
