"""The epochs of a run, one step at a time: train and validate an epoch, record it, step the schedule.

:func:`sedensenet.engine.run.train_run` calls these in order; what they work with is built in
:mod:`~sedensenet.engine.build` and :mod:`~sedensenet.engine.session`, what they carry across epochs lives in
:mod:`~sedensenet.engine.state`, and how a run stops on signals and errors in :mod:`~sedensenet.engine.faults`.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from sedensenet import checkpoint as ckpt
from sedensenet.columns import HISTORY_METRICS, METRICS, improved
from sedensenet.engine import distributed as dist
from sedensenet.engine.budget import EXPORT_SECONDS, FINAL_SECONDS
from sedensenet.engine.build import freeze_bn_stats, refit_schedule, set_frozen
from sedensenet.engine.device import amp_dtype
from sedensenet.engine.faults import (
    Abandon,
    RunWriteError,
    StopRequest,
    TrainingInterrupted,
    TrainingOutOfMemoryError,
    interrupted,
    nan_advice,
    oom_advice,
    write_failure,
)
from sedensenet.engine.loop import EpochResult, NonFiniteLossError, evaluate_loader, score_epoch, train_one_epoch
from sedensenet.engine.memory import run_note
from sedensenet.engine.progress import EpochProgress, TrainProgress
from sedensenet.engine.session import record
from sedensenet.engine.state import RunContext, resume_state
from sedensenet.inference import ONNX_MIN_IMAGES
from sedensenet.reports import plot_curves, write_history_csv

log = logging.getLogger(__name__)


@contextlib.contextmanager
def training(ctx: RunContext, interrupt: StopRequest) -> Iterator[None]:
    """Around the epochs: the TensorBoard writer and (CPU, rank 0) the memory note, both closed on every exit;
    a failure turned into the error that says what to do (a stop request, out of memory)."""
    if ctx.config.tensorboard and dist.is_main() and ctx.writer is None:
        ctx.writer = open_tensorboard(ctx.run_dir)
    note = run_note(ctx.run_dir, ctx.config, ctx.memory_plan) if _leaves_note(ctx) else contextlib.nullcontext()
    try:
        with note:
            yield
    except Abandon:
        raise interrupted(ctx, interrupt) from None
    except (TrainingInterrupted, RunWriteError, NonFiniteLossError):
        raise
    except torch.OutOfMemoryError:
        raise TrainingOutOfMemoryError(oom_advice(ctx)) from None
    except Exception:
        if interrupt:  # e.g. a DataLoader worker that the same Ctrl-C (sent to the process group) ended
            raise interrupted(ctx, interrupt) from None
        raise
    finally:  # every exit, normal, error or signal, leaves the event file flushed and closed
        if ctx.writer is not None:
            ctx.writer.close()
            ctx.writer = None


def _leaves_note(ctx: RunContext) -> bool:
    """A CPU run's main process notes its peak memory while it trains: the kernel kills without a word."""
    return ctx.settings.device.type == "cpu" and dist.is_main()


def epochs_left(ctx: RunContext) -> Iterator[int]:
    """The epochs still to train: from after ``ctx.state.epoch`` to the planned last one (``config.epochs``, or under
    ``--time`` the plan, re-read after every epoch); none when a resumed run had already stopped early."""
    c = ctx.config
    if c.patience and ctx.state.bad_epochs >= c.patience:
        log.info("the run stopped early after epoch %d (patience %d): nothing to train", ctx.state.epoch, c.patience)
        return
    if ctx.budget is not None:
        _first_plan(ctx)
    epoch = ctx.state.epoch + 1
    while epoch <= ctx.epochs_planned:
        yield epoch
        epoch += 1


def _first_plan(ctx: RunContext) -> None:
    """Before this start's first epoch nothing is measured: one more epoch when time is left (and the cap allows);
    the steps of that epoch stop it when it turns out too long."""
    b, done = ctx.budget, ctx.state.epoch
    assert b is not None
    b.eval_images = (len(ctx.splits.val), len(ctx.splits.val) + len(ctx.splits.test))
    device, largest = ctx.settings.device, max(len(ctx.splits.val), len(ctx.splits.test))
    if device.type == "cpu" and largest >= ONNX_MIN_IMAGES and amp_dtype("auto", device, quiet=True) is None:
        b.final_fixed = FINAL_SECONDS + EXPORT_SECONDS  # predict's float32 path exports the model for that many images
    # a new run trains at least a step, even past its budget: else there would be nothing to evaluate
    room = (b.left() > 0 or not done) and (not b.cap or done < b.cap)
    b.planned = dist.rank0_decides(max(b.planned, done + 1) if room else done, ctx.settings.device)
    if b.cap:
        b.planned = min(b.planned, b.cap)
    if not room:
        log.info("--time: the budget is spent (%s): nothing more to train", ctx.config.time)


def train_epoch(
    ctx: RunContext, epoch: int, progress: TrainProgress, interrupt: StopRequest
) -> tuple[dict[str, float] | None, EpochResult]:
    """Train one epoch (on every process), then validate: the epoch's row of :data:`~sedensenet.columns.METRICS`
    (with ``lr`` and ``seconds``) and the training pass's result.

    When ``interrupt`` is set the current step finishes and :class:`Abandon` drops the partial epoch. When a step
    would overrun a ``--time`` budget the pass ends there: the row is None (the epoch is dropped, the last complete
    one kept) unless no epoch is complete yet, in which case the partial epoch is validated and kept.
    """
    c = ctx.config
    frozen = epoch <= c.freeze_epochs
    set_frozen(ctx.model, frozen)
    ctx.train_loader.sampler.set_epoch(epoch)  # type: ignore[union-attr]
    lr = ctx.optimizer.param_groups[0]["lr"]
    bar = progress.epoch_bar(len(ctx.train_loader), epoch, ctx.epochs_planned)
    if ctx.budget is not None:
        ctx.budget.begin_epoch(_steps(ctx))
    ctx.train_model.train()
    if frozen:
        freeze_bn_stats(ctx.model)
    try:
        train = train_one_epoch(
            ctx.train_model, ctx.train_loader, ctx.criterion, ctx.optimizer, ctx.settings, ctx.scaler,
            c.grad_clip, _after_step(ctx, bar, interrupt), epoch, accumulate=c.accumulate, max_steps=c.max_steps,
        )  # fmt: skip
    except NonFiniteLossError as e:
        raise NonFiniteLossError(f"{e}. {nan_advice(ctx)}") from None
    finally:
        bar.close()
    _check_finite_weights(ctx, epoch)
    if ctx.budget is not None and ctx.budget.overran and _drops(ctx, epoch):
        return None, train
    train = dist.reduce_epoch(train, ctx.settings.device)
    val = _validate(ctx)
    results = {"train": train, "val": val}
    row = {"lr": lr}
    for col in METRICS:
        result = results[col.split]
        row[col.name] = math.nan if result is None else getattr(result, col.of)
    row["seconds"] = train.seconds + (val.seconds if val else 0.0)
    return row, train


def _after_step(ctx: RunContext, bar: EpochProgress, interrupt: StopRequest) -> Any:
    """The loop's per-step callback: advance the bar, then leave the epoch when a stop was requested; under
    ``--time``, end the pass (return True) when rank 0 finds that the next step would overrun the budget."""
    budget, device = ctx.budget, ctx.settings.device

    def update(n: int, loss: torch.Tensor | None, correct: torch.Tensor | None) -> bool:
        bar.update(n, loss, correct)
        if interrupt:
            raise Abandon
        if budget is None:
            return False
        overruns = dist.is_main() and budget.step_overruns(images_per_step=n * dist.world_size())
        budget.overran = bool(dist.rank0_decides(int(overruns), device))
        return budget.overran

    return update


def _steps(ctx: RunContext) -> int:
    """Steps an epoch has: the loader's batches, or ``max_steps`` of them."""
    return min(len(ctx.train_loader), ctx.config.max_steps or len(ctx.train_loader))


def _drops(ctx: RunContext, epoch: int) -> bool:
    """A pass ended by the budget: dropped when an earlier epoch is complete (it is kept), else kept and said."""
    b = ctx.budget
    assert b is not None
    steps, took = _steps(ctx), b.clock() - b.epoch_began
    if ctx.state.epoch:
        b.planned = ctx.state.epoch  # the final plan: the epochs that were completed
    if not dist.is_main():
        return bool(ctx.state.epoch)
    if ctx.state.epoch:
        log.warning("--time %s: epoch %d could not end within the budget; stopped after %d of %d steps, epoch %d "
                    "is kept", ctx.config.time, epoch, b.steps, steps, ctx.state.epoch)  # fmt: skip
        return True
    log.warning("--time %s: epoch %d alone takes about %.1fs (measured: %d of %d steps in %.1fs), longer than the "
                "budget; training stopped at the budget, and these weights are validated, saved and evaluated",
                ctx.config.time, epoch, took / max(1, b.steps) * steps, b.steps, steps, took)  # fmt: skip
    return False


def _check_finite_weights(ctx: RunContext, epoch: int) -> None:
    """A finite loss can still leave NaN/Inf weights after the last step: never save those."""
    bad = [k for k, v in ctx.model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise NonFiniteLossError(
            f"the weights became NaN or Inf during epoch {epoch} ({len(bad)} tensors, e.g. {bad[0]}). "
            + nan_advice(ctx)
        )


def _validate(ctx: RunContext) -> EpochResult | None:
    if ctx.val_loader is None:
        return None
    res = evaluate_loader(ctx.model, ctx.val_loader, ctx.criterion, ctx.settings)
    return score_epoch(dist.gather_eval(res, ctx.settings.device, ctx.criterion))


def replan(ctx: RunContext, epoch: int, row: dict[str, float], train: EpochResult) -> None:
    """``--time``: the epochs that fit in what is left, from the measured epoch time (rank 0 decides), the cosine
    re-fitted to end at the last of them; the log says the plan. After a pass the budget ended, this is the last."""
    b = ctx.budget
    if b is None:
        return
    val = row["seconds"] - train.seconds if ctx.val_loader is not None else math.nan
    planned = epoch if b.overran else b.end_epoch(done=epoch, val_seconds=val)
    b.planned = dist.rank0_decides(planned, ctx.settings.device)
    refit_schedule(ctx.scheduler, b.planned)
    log.info("%s", b.describe(epoch))


def record_time_plan(ctx: RunContext) -> None:
    """config.yaml's ``time_plan``: the budget, the time spent, the epochs planned last and the epoch time (rank 0)."""
    b = ctx.budget
    if b is None or not dist.is_main():
        return
    plan = {"budget_seconds": round(b.seconds, 1), "spent_seconds": round(b.elapsed(), 1), "planned_epochs": b.planned,
            "epoch_seconds": round(b.mean_epoch(), 2) if b.epoch_seconds else None,
            "final_evaluation_estimate_seconds": round(b.final_estimate(), 1)}  # fmt: skip
    record(ctx.run_dir / "config.yaml", "time_plan", plan)


def step_scheduler(ctx: RunContext, val_loss: float) -> None:
    """One step of the per-epoch schedule; reduce-on-plateau steps on a measured ``val_loss`` only."""
    if ctx.scheduler is None:
        return
    if isinstance(ctx.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        if not math.isnan(val_loss):
            ctx.scheduler.step(val_loss)
    else:
        ctx.scheduler.step()


def end_epoch(ctx: RunContext, epoch: int, row: dict[str, float], train: EpochResult) -> bool:
    """Record the epoch: best so far, checkpoints, history, curves, log line; return True to stop early."""
    c, st = ctx.config, ctx.state
    # without a val split the best epoch is the one of the lowest training loss (kept as -loss, higher is better)
    value = row[c.monitor] if ctx.val_loader is not None else -row["loss"]
    is_best = improved(c.monitor if ctx.val_loader is not None else "val_accuracy", value, st.best)
    if is_best:
        st.best, st.best_epoch, st.bad_epochs = value, epoch, 0
    else:
        st.bad_epochs += 1
    st.epoch = epoch
    began = ctx.budget.clock() if ctx.budget is not None else 0.0
    if dist.is_main():
        _write_epoch(ctx, epoch, row, is_best)
    if ctx.budget is not None:
        ctx.budget.wrote(ctx.budget.clock() - began)
    log.info(_LOG_LINE, epoch, ctx.epochs_planned, *(row[col.name] for col in METRICS), row["lr"], row["seconds"],
             train.images_per_second * dist.world_size(), "  *best*" if is_best else "")  # fmt: skip
    if ctx.writer is not None:
        for key in HISTORY_METRICS:
            ctx.writer.add_scalar(key, row[key], epoch)
    if c.patience and st.bad_epochs >= c.patience:
        log.info("early stop: %s has not improved for %d epochs (best %.4f at epoch %d)",
                 c.monitor, c.patience, st.best, st.best_epoch)  # fmt: skip
        return True
    return False


_LOG_LINE = "epoch %d/%d  " + "".join(f"{col.short} %{col.fmt}  " for col in METRICS) + "lr %.2e  %.1fs (%.0f img/s)%s"
"""The log's line per epoch: ``epoch 3/10  loss 0.6931  acc 0.5000  val_loss …  val_acc …  lr 1.00e-03  2.1s …``."""


def _write_epoch(ctx: RunContext, epoch: int, row: dict[str, float], is_best: bool) -> None:
    """Weights, history and curves, then the resume state: each file is written atomically.

    ``state/last.pt`` (which carries the weights too) is written last: it is the commit point. A run stopped
    between two of these writes resumes from the previous epoch, and redoing the epoch rewrites the same files.
    """
    meta = ctx.meta
    meta.epoch = epoch
    meta.metrics = {k: float(v) for k, v in row.items()}
    weights = ctx.run_dir / "weights"
    best_epoch = ctx.state.best_epoch or None
    save_weights = lambda p: ckpt.save_checkpoint(p, ctx.model, meta)  # noqa: E731
    writes: list[tuple[Path, Any]] = [(weights / "last.safetensors", save_weights)]
    if is_best:
        writes.append((weights / "best.safetensors", save_weights))
    writes += [
        (ctx.run_dir / "history.csv", lambda p: write_history_csv(ctx.history.rows(), p)),
        (ctx.run_dir / "curves.png",
         lambda p: plot_curves(ctx.history.history, p, best_epoch=best_epoch, ranking=ctx.meta.multilabel)),
        (ctx.run_dir / "state" / "last.pt", lambda p: ckpt.save_state(p, resume_state(ctx))),
    ]  # fmt: skip
    for path, write in writes:
        try:
            write(path)
        except Exception as e:  # OSError, or what safetensors / torch.save / matplotlib make of one
            raise RunWriteError(write_failure(ctx, path, epoch, e)) from e


def open_tensorboard(run_dir: Path) -> Any:
    """A SummaryWriter logging to ``run_dir/tensorboard``; None (with a warning) without the tensorboard package."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("--tensorboard needs the tensorboard package: pip install tensorboard (the extra [tensorboard]); "
                    "continuing without it")  # fmt: skip
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))
