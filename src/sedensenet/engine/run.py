"""One training run, read top to bottom in :func:`train_run`: set-up, prepare, header, the epochs, the final
evaluation, teardown. Every other piece of a run is called from there, in the order it happens."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from sedensenet.config import TrainConfig, dump_yaml
from sedensenet.data import DataSplits, write_skipped_csv
from sedensenet.data.check import exact_leaks, write_leaks_csv
from sedensenet.data.description import SPLIT_CSV, write_split_csv
from sedensenet.engine import distributed as dist
from sedensenet.engine import session, trainer
from sedensenet.engine.faults import interrupted, stop_on_signals
from sedensenet.engine.progress import TrainProgress
from sedensenet.engine.state import History, RunContext
from sedensenet.fileio import atomic_write_json, atomic_write_text, remove_stale_temporaries
from sedensenet.inference import tune_malloc_for_training

log = logging.getLogger(__name__)


@dataclass
class RunOutcome:
    """What a finished run leaves the caller (``api.train`` wraps it in a ``TrainResult``)."""

    history: History
    run_dir: Path
    metrics: dict[str, Any]
    """The final evaluation per split (rank 0; empty on the other ranks)."""
    best_epoch: int
    memory_plan: dict[str, Any]
    """The path this start trained on, as config.yaml records it."""
    monitor: str = "val_accuracy"
    """The column that picked the best epoch (``auto`` made concrete)."""


@dataclass(frozen=True)
class EpochEnd:
    """What an epoch callback is told after each saved epoch (rank 0 and the others alike)."""

    epoch: int
    row: dict[str, float]
    """The epoch's history row: the :data:`~sedensenet.columns.METRICS` columns, ``lr`` and ``seconds``."""
    run_dir: Path
    epochs: int
    """The epochs planned for the run."""
    monitor: str = "val_accuracy"
    """The column that picks the best epoch (``--monitor``, ``auto`` made concrete for the data)."""


EpochCallback = Callable[[EpochEnd], None]
"""Called after each epoch is saved; it may raise :class:`~sedensenet.engine.faults.StopRun` to end the run."""


def train_run(
    config: TrainConfig | None = None,
    *,
    resume: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    recommended: dict[str, Any] | None = None,
    progress: TrainProgress | None = None,
    tune_malloc: bool = False,
    callbacks: Sequence[EpochCallback] = (),
) -> RunOutcome:
    """Train the run ``config`` describes, or continue the one in the folder ``resume`` (with ``overrides``, the
    settings a resume may change). ``recommended``: the built-in data set's settings ``config`` took (logged);
    ``progress`` shows the bar and epoch lines (default: nothing); ``tune_malloc`` tunes glibc's allocator for the
    whole process unless the run is memory-efficient (``api.train`` and the CLI do; library callers opt in).
    ``callbacks`` are called with an :class:`EpochEnd` after each saved epoch (MLflow's metrics, a tuner's pruner);
    one that raises :class:`~sedensenet.engine.faults.StopRun` ends the run there, without the final evaluation.

    Under torchrun every process calls this; rank 0 alone writes files and speaks. A signal (SIGINT, SIGTERM)
    stops after the current step with :class:`~sedensenet.engine.faults.TrainingInterrupted`.
    """
    if (config is None) == (resume is None):
        raise ValueError("train_run needs either a config (a new run) or resume (a run folder), not both or neither")
    # set-up: one process per device under torchrun, and one voice
    device, reporter = _set_up(config, overrides, recommended, progress)
    try:
        # prepare: memory plan, data, model, optimiser, run folder; the header says what the run is
        ctx = _resume(Path(resume), overrides or {}, device) if resume is not None else _new(config, device)
        if tune_malloc and (tuned := tune_malloc_for_training(ctx.memory_plan.memory_efficient)):
            log.debug("%s", tuned)
        with _log_file(ctx.run_dir / "train.log", enabled=dist.is_main()):
            log.info("run folder: %s  (%s)", ctx.run_dir, data_summary(ctx.splits))
            reporter.write(f"Run folder: {ctx.run_dir} ({data_summary(ctx.splits)})")
            # the epochs: each leaves a complete, resumable run folder
            with stop_on_signals(enabled=not dist.is_distributed()) as interrupt, trainer.training(ctx, interrupt):
                for epoch in trainer.epochs_left(ctx):
                    row, train = trainer.train_epoch(ctx, epoch, reporter, interrupt)
                    if row is None:  # --time: the epoch could not end within the budget; the last complete one is kept
                        break
                    ctx.history.append(epoch, row)
                    trainer.replan(ctx, epoch, row, train)  # --time: the epochs that fit, the cosine fitted to them
                    trainer.step_scheduler(ctx, row["val_loss"])
                    stop = trainer.end_epoch(ctx, epoch, row, train)
                    reporter.epoch_end(epoch, ctx.epochs_planned, row, len(ctx.train_loader),
                                       best=ctx.state.best_epoch == epoch)  # fmt: skip
                    _tell(callbacks, EpochEnd(epoch, row, ctx.run_dir, ctx.epochs_planned, ctx.config.monitor))
                    if interrupt:  # asked during validation or the writes: this epoch is saved, stop here
                        raise interrupted(ctx, interrupt)
                    if stop:
                        reporter.write(f"Epoch {epoch}: early stopping ({ctx.config.monitor} has not improved for "
                                       f"{ctx.config.patience} epochs)")  # fmt: skip
                        break
            # the final evaluation of the best weights: decision rule, calibration, reports (rank 0)
            trainer.record_time_plan(ctx)  # --time: config.yaml keeps the budget and the epochs planned
            metrics = session.finish(ctx)
        return RunOutcome(ctx.history, ctx.run_dir, metrics, ctx.state.best_epoch, ctx.memory_plan.to_dict(),
                          ctx.config.monitor)  # fmt: skip
    finally:
        # teardown: leave the process group (uncleanly after an error, so no rank waits for a dead one)
        dist.shutdown(clean=sys.exc_info()[0] is None)


def _tell(callbacks: Sequence[EpochCallback], event: EpochEnd) -> None:
    """Each callback in turn; a :class:`~sedensenet.engine.faults.StopRun` passes through and ends the run."""
    for callback in callbacks:
        callback(event)


def _set_up(
    config: TrainConfig | None,
    overrides: dict[str, Any] | None,
    recommended: dict[str, Any] | None,
    progress: TrainProgress | None,
) -> tuple[torch.device | None, TrainProgress]:
    """The process group under torchrun (its device; None otherwise) and who reports: rank 0 alone speaks."""
    device = dist.init(_device_name(config, overrides)) if dist.launched_by_torchrun() else None
    reporter = progress or TrainProgress(0)
    if not dist.is_main():
        logging.getLogger("sedensenet").setLevel(logging.WARNING)
        reporter = TrainProgress(0)
    if recommended and config is not None:
        log.info("built-in data %s: recommended settings %s", config.data, recommended)
    return device, reporter


def _device_name(config: TrainConfig | None, overrides: dict[str, Any] | None) -> str:
    """The device torchrun's process group is set up for: the run's, or what a resume asks for."""
    return config.device if config is not None else (overrides or {}).get("device", "auto")


def _new(config: TrainConfig, device: torch.device | None) -> RunContext:
    """A new run: prepared, and its header written (rank 0) before the first epoch."""
    ctx = session.prepare(config, device=device)
    if dist.is_main():
        write_run_header(ctx)
    return ctx


def _resume(run_dir: Path, overrides: dict[str, Any], device: torch.device | None) -> RunContext:
    """A killed or stopped run rebuilt from its folder, after removing the files it was writing when it died."""
    if dist.is_main():
        for stale in remove_stale_temporaries(run_dir):
            log.info("removed %s, left by an interrupted write", stale)
    return session.resume(run_dir, overrides, device=device)


def write_run_header(ctx: RunContext) -> None:
    """config.yaml (with this start's memory plan), classes.json, split.csv (every image's split, class and group),
    skipped.csv and duplicates.csv: what the run is, before the first epoch."""
    recorded = replace(ctx.config, memory_plan=ctx.memory_plan.to_dict())
    atomic_write_text(ctx.run_dir / "config.yaml", dump_yaml(recorded))
    atomic_write_json(ctx.run_dir / "classes.json", ctx.splits.classes)
    write_split_csv(ctx.splits, ctx.run_dir / SPLIT_CSV)
    write_skipped_csv(ctx.splits.skipped, ctx.run_dir / "skipped.csv")
    write_leaks_csv(exact_leaks(ctx.splits), ctx.run_dir / "duplicates.csv")


@contextlib.contextmanager
def _log_file(path: Path, *, enabled: bool) -> Iterator[None]:
    """While the run trains and is evaluated, the package's log records are appended to ``path`` (UTF-8)."""
    if not enabled:
        yield
        return
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("sedensenet")
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()


def data_summary(splits: DataSplits) -> str:
    """``10 classes; train 1438, val 359`` (``10 labels; ...`` for a multi-label set; the skipped files, when
    any): images per split."""
    counts = {k: len(getattr(splits, k)) for k in ("train", "val", "test")}
    kind = "labels" if getattr(splits, "task", "single") == "multi" else "classes"
    return (
        f"{len(splits.classes)} {kind}; "
        + ", ".join(f"{k} {n}" for k, n in counts.items() if n)
        + (f"; {len(splits.skipped)} files skipped (see skipped.csv)" if splits.skipped else "")
    )
