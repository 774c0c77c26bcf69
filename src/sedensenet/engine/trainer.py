"""The fit loop: train epoch after epoch, each one leaving a complete, resumable run folder.

What the loop works with is built in :mod:`~sedensenet.engine.build` and :mod:`~sedensenet.engine.session`,
what it carries across epochs lives in :mod:`~sedensenet.engine.state`, and how it stops on signals and
errors in :mod:`~sedensenet.engine.faults`.
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path
from typing import Any

import torch

from sedensenet import checkpoint as ckpt
from sedensenet.config import dump_yaml
from sedensenet.engine import distributed as dist
from sedensenet.engine.build import freeze_bn_stats, set_frozen
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
from sedensenet.engine.loop import EpochResult, NonFiniteLossError, evaluate_loader, train_one_epoch
from sedensenet.engine.memory import run_note
from sedensenet.engine.progress import EpochProgress, TrainProgress
from sedensenet.engine.state import HISTORY_METRICS, History, RunContext, resume_state
from sedensenet.fileio import atomic_write_json, atomic_write_text
from sedensenet.reports import plot_curves, write_history_csv

log = logging.getLogger(__name__)


def improved(monitor: str, value: float, best: float | None) -> bool:
    """Whether ``value`` beats ``best`` (higher accuracy, lower loss); NaN never does."""
    if math.isnan(value):
        return False
    if best is None:
        return True
    return value > best if monitor == "val_accuracy" else value < best


def fit(ctx: RunContext, progress: bool | TrainProgress = False, interrupt: StopRequest | None = None) -> History:
    """Train from ``ctx.state.epoch`` to ``config.epochs``; every epoch leaves a complete, resumable run folder.

    ``progress``: a :class:`TrainProgress` (bar and per-epoch lines), or True for the bar alone.

    When ``interrupt`` is set (by a signal handler) the current step finishes, the partial epoch is dropped and
    :class:`TrainingInterrupted` is raised: the last complete epoch on disk is where ``--resume`` continues,
    which keeps a resumed run identical to one never stopped.
    """
    interrupt = interrupt if interrupt is not None else StopRequest()
    if not isinstance(progress, TrainProgress):
        progress = TrainProgress(verbose=0, bar=bool(progress) and dist.is_main())
    if ctx.config.tensorboard and dist.is_main() and ctx.writer is None:
        ctx.writer = open_tensorboard(ctx.run_dir)
    note = run_note(ctx.run_dir, ctx.config) if _leaves_note(ctx) else contextlib.nullcontext()
    try:
        with note:
            return _epochs(ctx, progress, interrupt)
    finally:  # every exit, normal, error or signal, leaves the event file flushed and closed
        if ctx.writer is not None:
            ctx.writer.close()
            ctx.writer = None


def _leaves_note(ctx: RunContext) -> bool:
    """A CPU run's main process notes its peak memory while it trains: the kernel kills without a word."""
    return ctx.settings.device.type == "cpu" and dist.is_main()


def _epochs(ctx: RunContext, progress: TrainProgress, interrupt: StopRequest) -> History:
    """:func:`_train_epochs`, with its failures turned into the errors :func:`fit` documents."""
    try:
        return _train_epochs(ctx, progress, interrupt)
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


def _train_epochs(ctx: RunContext, progress: TrainProgress, interrupt: StopRequest) -> History:
    """Each epoch: train, validate, step the schedule, record; stop early, on request, or after the last."""
    c = ctx.config
    if c.patience and ctx.state.bad_epochs >= c.patience:  # resuming a run that had already stopped early
        log.info("the run stopped early after epoch %d (patience %d): nothing to train", ctx.state.epoch, c.patience)
        return ctx.history
    for epoch in range(ctx.state.epoch + 1, c.epochs + 1):
        frozen = epoch <= c.freeze_epochs
        set_frozen(ctx.model, frozen)
        ctx.train_loader.sampler.set_epoch(epoch)  # type: ignore[union-attr]
        lr = ctx.optimizer.param_groups[0]["lr"]
        bar = progress.epoch_bar(len(ctx.train_loader), epoch, c.epochs)
        ctx.train_model.train()
        if frozen:
            freeze_bn_stats(ctx.model)
        try:
            train = train_one_epoch(
                ctx.train_model, ctx.train_loader, ctx.criterion, ctx.optimizer, ctx.settings, ctx.scaler,
                c.grad_clip, _after_step(bar, interrupt), epoch, accumulate=c.accumulate, max_steps=c.max_steps,
            )  # fmt: skip
        except NonFiniteLossError as e:
            raise NonFiniteLossError(f"{e}. {nan_advice(ctx)}") from None
        finally:
            bar.close()
        _check_finite_weights(ctx, epoch)
        train = dist.reduce_epoch(train, ctx.settings.device)
        val = _validate(ctx)
        row = {
            "lr": lr,
            "loss": train.loss,
            "accuracy": train.accuracy,
            "val_loss": val.loss if val else math.nan,
            "val_accuracy": val.accuracy if val else math.nan,
            "seconds": train.seconds + (val.seconds if val else 0.0),
        }
        ctx.history.append(epoch, row)
        _step_scheduler(ctx, row["val_loss"])
        stop = _end_epoch(ctx, epoch, row, train)
        progress.epoch_end(epoch, c.epochs, row, len(ctx.train_loader), best=ctx.state.best_epoch == epoch)
        if interrupt:  # asked during validation or the writes: this epoch is saved, stop here
            raise interrupted(ctx, interrupt)
        if stop:
            progress.write(f"Epoch {epoch}: early stopping ({c.monitor} has not improved for {c.patience} epochs)")
            break
    return ctx.history


def _after_step(bar: EpochProgress, interrupt: StopRequest) -> Any:
    """The loop's per-step callback: advance the bar, then leave the epoch when a stop was requested."""

    def update(n: int, loss: torch.Tensor | None, correct: torch.Tensor | None) -> None:
        bar.update(n, loss, correct)
        if interrupt:
            raise Abandon

    return update


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
    return dist.gather_eval(res, ctx.settings.device, ctx.criterion)


def _step_scheduler(ctx: RunContext, val_loss: float) -> None:
    if ctx.scheduler is None:
        return
    if isinstance(ctx.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        if not math.isnan(val_loss):
            ctx.scheduler.step(val_loss)
    else:
        ctx.scheduler.step()


def _end_epoch(ctx: RunContext, epoch: int, row: dict[str, float], train: EpochResult) -> bool:
    """Record the epoch: checkpoints, history, curves, log line; return True to stop early."""
    c, st = ctx.config, ctx.state
    value = row[c.monitor] if ctx.val_loader is not None else -row["loss"]
    is_best = improved(c.monitor if ctx.val_loader is not None else "val_accuracy", value, st.best)
    if is_best:
        st.best, st.best_epoch, st.bad_epochs = value, epoch, 0
    else:
        st.bad_epochs += 1
    st.epoch = epoch
    if dist.is_main():
        _write_epoch(ctx, epoch, row, is_best)
    log.info(
        "epoch %d/%d  loss %.4f  acc %.4f  val_loss %.4f  val_acc %.4f  lr %.2e  %.1fs (%.0f img/s)%s",
        epoch, c.epochs, row["loss"], row["accuracy"], row["val_loss"], row["val_accuracy"], row["lr"],
        row["seconds"], train.images_per_second * dist.world_size(), "  *best*" if is_best else "",
    )  # fmt: skip
    if ctx.writer is not None:
        for key in HISTORY_METRICS:
            ctx.writer.add_scalar(key, row[key], epoch)
    if c.patience and st.bad_epochs >= c.patience:
        log.info("early stop: %s has not improved for %d epochs (best %.4f at epoch %d)",
                 c.monitor, c.patience, st.best, st.best_epoch)  # fmt: skip
        return True
    return False


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
        (ctx.run_dir / "curves.png", lambda p: plot_curves(ctx.history.history, p, best_epoch=best_epoch)),
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


def write_run_header(ctx: RunContext) -> None:
    """config.yaml, classes.json, skipped.csv and duplicates.csv: what the run is, before the first epoch."""
    from sedensenet.data import write_skipped_csv
    from sedensenet.data.check import exact_leaks, write_leaks_csv

    atomic_write_text(ctx.run_dir / "config.yaml", dump_yaml(ctx.config))
    atomic_write_json(ctx.run_dir / "classes.json", ctx.splits.classes)
    write_skipped_csv(ctx.splits.skipped, ctx.run_dir / "skipped.csv")
    write_leaks_csv(exact_leaks(ctx.splits), ctx.run_dir / "duplicates.csv")
