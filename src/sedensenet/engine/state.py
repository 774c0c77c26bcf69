"""What a run carries from epoch to epoch and across a resume: context, history, counters, RNG states."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sedensenet import checkpoint as ckpt
from sedensenet.columns import HISTORY_COLUMNS, HISTORY_METRICS
from sedensenet.config import TrainConfig
from sedensenet.data import DataSplits
from sedensenet.engine.budget import TimeBudget
from sedensenet.engine.loop import StepSettings
from sedensenet.engine.memory import MemoryPlan
from sedensenet.models import DenseNet


@dataclass
class History:
    """Per-epoch values, shaped like Keras' ``History``: ``history.history['val_accuracy']`` is a list."""

    history: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in HISTORY_METRICS})
    epoch: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def append(self, epoch: int, row: dict[str, float]) -> None:
        self.epoch.append(epoch)
        self.seconds.append(row["seconds"])
        for key in self.history:
            self.history[key].append(row[key])

    def rows(self) -> list[dict[str, Any]]:
        """One dict per epoch in history.csv's column order."""
        columns = {"epoch": self.epoch, "seconds": self.seconds, **self.history}
        return [{k: columns[k][i] for k in HISTORY_COLUMNS} for i in range(len(self.epoch))]

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]]) -> History:
        h = cls()
        for r in rows:
            # a column added after the state was written reads as not measured
            h.append(int(r["epoch"]), {k: float(r.get(k, math.nan)) for k in (*HISTORY_METRICS, "seconds")})
        return h


@dataclass
class TrainState:
    """What a resumed run needs besides the weights: counters, best metric, history and RNG states."""

    epoch: int = 0
    """Epochs completed."""
    best: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0


@dataclass(kw_only=True)
class RunContext:
    """Everything the epoch loop works with, built once by :func:`sedensenet.engine.session.prepare`."""

    config: TrainConfig
    run_dir: Path
    splits: DataSplits
    model: DenseNet
    train_model: nn.Module
    """The model the loop calls: compiled and/or DDP-wrapped."""
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler | None
    criterion: nn.Module
    settings: StepSettings
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader | None
    meta: ckpt.CheckpointMeta
    memory_plan: MemoryPlan
    """The path this start trains on (:func:`~sedensenet.engine.memory.plan_memory`); config.yaml records it."""
    history: History = field(default_factory=History)
    state: TrainState = field(default_factory=TrainState)
    cache: Any = None
    """The decoded-image cache (``--cache``) the datasets read, reused for the final evaluation."""
    writer: Any = None
    """The TensorBoard writer while the epochs run with ``--tensorboard`` (see ``engine.trainer.training``)."""
    budget: TimeBudget | None = None
    """``--time``: the budget, the time spent and the epochs planned (re-planned after every epoch)."""

    @property
    def epochs_planned(self) -> int:
        """The epochs this run will train: ``config.epochs``, or under ``--time`` the current plan."""
        return self.budget.planned if self.budget is not None else self.config.epochs


def rng_state() -> dict[str, Any]:
    """Every generator a run draws from (PyTorch, CUDA, NumPy, Python), as plain containers and tensors."""
    state = {"torch": torch.get_rng_state(), "numpy": _numpy_state(), "python": _python_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "gauss": [has_gauss, cached]}


def _python_state() -> list[int]:
    version, internal, gauss = random.getstate()
    return [version, *internal, -1 if gauss is None else gauss]


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], *n["gauss"]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1:-1]), None if p[-1] == -1 else p[-1]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resume_state(ctx: RunContext) -> dict[str, Any]:
    """Plain containers and tensors only, so ``torch.load(weights_only=True)`` reads it back."""
    sched = ctx.scheduler.state_dict() if ctx.scheduler is not None else None
    return {
        "epoch": ctx.state.epoch,
        "model": {k: v.detach().to("cpu") for k, v in ctx.model.state_dict().items()},
        "best": ctx.state.best,
        "best_epoch": ctx.state.best_epoch,
        "bad_epochs": ctx.state.bad_epochs,
        "optimizer": ctx.optimizer.state_dict(),
        "scheduler": sched,
        "scaler": ctx.scaler.state_dict() if ctx.scaler is not None else None,
        "rng": rng_state(),
        "history": ctx.history.rows(),
        "time": time.time(),
        **(_budget_state(ctx.budget) if ctx.budget is not None else {}),
    }


def _budget_state(budget: TimeBudget) -> dict[str, Any]:
    """What a resumed ``--time`` run continues from: the budget, the time spent so far and the last plan."""
    return {"time_budget": budget.seconds, "time_spent": budget.elapsed(), "time_planned": budget.planned}


def restore(ctx: RunContext, state: dict[str, Any]) -> None:
    """Load a resume state saved by :func:`resume_state` into ``ctx``.

    The state's own copy of the weights wins over ``weights/last.safetensors`` (loaded by the caller): the
    two are written one after the other, and only the state is guaranteed to belong to the same epoch.
    A state that is not a sedensenet resume state is a :class:`~sedensenet.checkpoint.CheckpointError`.
    """
    source = ctx.run_dir / "state" / "last.pt"
    try:
        if "model" in state:
            ckpt.check_state_dict(source, state["model"], ctx.model.state_dict())
            ctx.model.load_state_dict(state["model"])
        ctx.optimizer.load_state_dict(state["optimizer"])
        if ctx.scheduler is not None and state.get("scheduler") is not None:
            ctx.scheduler.load_state_dict(state["scheduler"])
        if ctx.scaler is not None and state.get("scaler") is not None:
            ctx.scaler.load_state_dict(state["scaler"])
        ctx.state = TrainState(int(state["epoch"]), state["best"], int(state["best_epoch"]), int(state["bad_epochs"]))
        ctx.history = History.from_rows(state["history"])
        set_rng_state(state["rng"])
    except ckpt.CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as e:
        what = f"missing entry {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
        raise ckpt.CheckpointError(f"{source} is not a usable sedensenet resume state ({what})") from None
