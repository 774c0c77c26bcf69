"""When a run cannot go on: stop requests and their signal handler, the error types and the advice they carry."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from sedensenet.config import RESUME_MAY_CHANGE, ConfigError, load_yaml
from sedensenet.engine.state import RunContext
from sedensenet.errors import UserError

log = logging.getLogger(__name__)


class StopRequest:
    """Set by a signal handler (Ctrl-C, SIGTERM); the epoch loop checks it after every step."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None


@contextlib.contextmanager
def stop_on_signals(enabled: bool = True) -> Iterator[StopRequest]:
    """While training, SIGINT and SIGTERM ask the loop to stop after the current step; a second one aborts.

    Handlers can only be installed from the main thread; elsewhere (and when ``enabled`` is False, e.g. under
    torchrun, where each process would see the signal at a different step) the default behaviour stays.
    The previous handlers are restored on the way out.
    """
    stop = StopRequest()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield stop
        return

    owner = os.getpid()

    def handler(signum: int, frame: Any) -> None:
        if os.getpid() != owner:  # a forked DataLoader worker inherited this handler: the main process decides
            return
        if stop:
            raise KeyboardInterrupt  # the second signal: abort now (files on disk stay whole: atomic writes)
        stop.signum = signum
        log.warning(
            "%s: stopping after this step; the last complete epoch is kept (press Ctrl-C again to abort now)",
            signal.Signals(signum).name,
        )

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            if h is not None:  # None: a handler installed outside Python, which cannot be put back
                signal.signal(s, h)


class TrainingInterrupted(UserError, RuntimeError):
    """Training stopped on a signal; the run folder holds the last complete epoch and ``command`` continues it.

    ``exit_code`` is 128 + the signal number (130 for SIGINT, 143 for SIGTERM), as a shell reports it.
    """

    def __init__(self, message: str, run_dir: Path, epoch: int, signum: int, command: str) -> None:
        super().__init__(message)
        self.run_dir, self.epoch, self.signum, self.command = run_dir, epoch, signum, command
        self.exit_code = 128 + signum


class RunWriteError(UserError, RuntimeError):
    """A file of the run folder could not be written (disk full, permissions); the message names it."""


class TrainingOutOfMemoryError(UserError, RuntimeError):
    """The device ran out of memory during training; the message says which settings to change."""


class StopRun(Exception):
    """Raised by an epoch callback (a tuner pruning a trial) to end a run after a saved epoch: ``train_run`` stops
    there without the final evaluation; the run folder holds that epoch and can be resumed."""

    def __init__(self, reason: str, *, epoch: int = 0) -> None:
        super().__init__(reason)
        self.reason, self.epoch = reason, epoch


class Abandon(Exception):
    """Raised after a step when a stop was requested: the partial epoch is dropped, the last complete one kept."""


def nan_advice(ctx: RunContext) -> str:
    """What is kept and what to change after a NaN/Inf loss or weights."""
    c, saved = ctx.config, ctx.state.epoch
    kept = (
        f"The checkpoint of epoch {saved} in {ctx.run_dir / 'weights'} is kept (not overwritten)"
        if saved
        else "No epoch was complete, so no checkpoint was written"
    )
    amp = ctx.settings.amp_dtype
    better = "--amp bf16 or --amp off" if amp == torch.float16 else "--amp off"
    overflow = f"overflow in mixed precision (--amp {c.amp}; try {better}), " if amp is not None else ""
    return (
        f"{kept}. Likely causes: a learning rate too high (--lr {c.lr:g}; try {c.lr / 10:g}), {overflow}"
        f"or bad input values"
    )


def oom_advice(ctx: RunContext) -> str:
    """Which settings need less memory per step, for this run."""
    c = ctx.config
    kept = f"the checkpoint of epoch {ctx.state.epoch} is kept" if ctx.state.epoch else "no epoch was complete"
    options = []
    if not ctx.memory_plan.memory_efficient:
        options.append("--memory-efficient on (recomputes features in backward: less memory)")
    if c.batch_size > 1:
        half, twice = max(1, c.batch_size // 2), c.accumulate * 2
        options.append(f"--batch-size {half} --accumulate {twice} (the same effective batch)")
    options.append(f"a smaller --image-size (e.g. {max(1, c.image_size * 3 // 4)})")
    if ctx.settings.device.type == "cuda" and ctx.settings.amp_dtype is None:
        options.append("--amp bf16")
    return (
        f"{ctx.settings.device.type.upper()} ran out of memory in epoch {ctx.state.epoch + 1} "
        f"(model {c.model}, --batch-size {c.batch_size}, --image-size {c.image_size}); {kept}. "
        f"Start again with less memory per step: " + ", ".join(options)
    )


def resume_command(ctx: RunContext) -> str:
    """The command that continues this run, with the resume-time changes (e.g. ``--epochs``) it was given."""
    run = shlex.quote(str(ctx.run_dir))
    if not ctx.state.epoch:
        return f"sedensenet train --config {shlex.quote(str(ctx.run_dir / 'config.yaml'))}"
    try:
        saved = load_yaml(ctx.run_dir / "config.yaml")
    except ConfigError:
        saved = {}
    # not --time: the resume state carries the budget and the time spent
    changed = sorted(k for k in RESUME_MAY_CHANGE - {"time"} if saved.get(k) != getattr(ctx.config, k))
    flags = "".join(_flag(k, getattr(ctx.config, k)) for k in changed)
    return f"sedensenet train --resume {run}{flags}"


def _flag(key: str, value: Any) -> str:
    flag = "--" + key.replace("_", "-")
    if isinstance(value, bool):
        return f" {flag}" if value else f" --no-{key.replace('_', '-')}"
    return f" {flag} {shlex.quote(str(value))}"


def interrupted(ctx: RunContext, interrupt: StopRequest) -> TrainingInterrupted:
    """The error for a run stopped by ``interrupt``'s signal, naming the command that continues it."""
    signum = interrupt.signum or signal.SIGINT
    name, done, command = signal.Signals(signum).name, ctx.state.epoch, resume_command(ctx)
    if done:
        message = (
            f"stopped by {name} after epoch {done} of {ctx.epochs_planned}; its checkpoint is saved in "
            f"{ctx.run_dir}. Continue with: {command}"
        )
    else:
        message = f"stopped by {name} before the first epoch was complete (nothing to resume); start again: {command}"
    return TrainingInterrupted(message, ctx.run_dir, done, signum, command)


def write_failure(ctx: RunContext, path: Path, epoch: int, error: Exception) -> str:
    """The message of a :class:`RunWriteError`: which file, why, free space, and what is kept."""
    reason = f"{type(error).__name__}: {error}" if not isinstance(error, OSError) else (error.strerror or str(error))
    try:
        free = f"; {shutil.disk_usage(path.parent).free / 2**20:.1f} MiB free on its disk"
    except OSError:
        free = ""
    kept = (
        f"The last complete checkpoint is epoch {epoch - 1} (weights and state/last.pt in {ctx.run_dir}); "
        f"make room and continue with: sedensenet train --resume {shlex.quote(str(ctx.run_dir))}"
        if epoch > 1
        else "No epoch has been saved yet"
    )
    return f"could not write {path} after epoch {epoch} ({reason}{free}). {kept}"
