"""The fit loop: data and model in, a run folder out, resumable at any completed epoch."""

from __future__ import annotations

import logging
import math
import random
import shlex
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sedensenet import checkpoint as ckpt
from sedensenet.config import RESUME_MAY_CHANGE, ConfigError, TrainConfig, dump_yaml, load_yaml
from sedensenet.data import DataSplits, ImageFolderDataset, build_transforms, compute_mean_std
from sedensenet.engine import distributed as dist
from sedensenet.engine.loop import EpochResult, NonFiniteLossError, StepSettings, evaluate_loader, train_one_epoch
from sedensenet.engine.progress import EpochProgress
from sedensenet.errors import DeviceError, UserError
from sedensenet.fileio import atomic_write_json, atomic_write_text
from sedensenet.models import DenseNet, create_model
from sedensenet.reports import plot_curves, write_history_csv

log = logging.getLogger(__name__)


@dataclass
class History:
    """Per-epoch values, shaped like Keras' ``History``: ``history.history['val_accuracy']`` is a list."""

    history: dict[str, list[float]] = field(
        default_factory=lambda: {k: [] for k in ("loss", "accuracy", "val_loss", "val_accuracy", "lr")}
    )
    epoch: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def append(self, epoch: int, row: dict[str, float]) -> None:
        self.epoch.append(epoch)
        self.seconds.append(row["seconds"])
        for key in self.history:
            self.history[key].append(row[key])

    def rows(self) -> list[dict[str, Any]]:
        """One dict per epoch in history.csv's column order."""
        return [
            {
                "epoch": e,
                "lr": self.history["lr"][i],
                "loss": self.history["loss"][i],
                "accuracy": self.history["accuracy"][i],
                "val_loss": self.history["val_loss"][i],
                "val_accuracy": self.history["val_accuracy"][i],
                "seconds": self.seconds[i],
            }
            for i, e in enumerate(self.epoch)
        ]

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]]) -> History:
        h = cls()
        for r in rows:
            h.append(
                int(r["epoch"]),
                {k: float(r[k]) for k in ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds")},
            )
        return h


@dataclass
class TrainState:
    """What a resumed run needs besides the weights: counters, best metric, history and RNG states."""

    epoch: int = 0
    """Epochs completed."""
    best: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0


def select_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then Apple's MPS, then the CPU; an unavailable device is a clear error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:  # torch names the valid device types
        raise DeviceError(f"--device {name}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"--device {name}: no CUDA GPU is visible to PyTorch; use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceError(f"--device {name}: Apple MPS is not available here")
    return device


def step_settings(config: TrainConfig, device: torch.device) -> tuple[StepSettings, torch.amp.GradScaler | None]:
    """Mixed precision and memory format for ``device``: AMP and channels_last only on GPUs."""
    amp = config.amp
    if amp == "auto":
        amp = "off" if device.type != "cuda" else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    return StepSettings(device, dtype, channels_last=config.channels_last and device.type == "cuda"), scaler


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
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
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], *n["gauss"]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1:-1]), None if p[-1] == -1 else p[-1]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def build_model(config: TrainConfig, num_classes: int) -> DenseNet:
    """The preset with this run's classes and channels; ImageNet or user weights loaded when asked."""
    model = create_model(
        config.model,
        num_classes=num_classes,
        in_chans=config.in_chans,
        pretrained=config.pretrained,
        memory_efficient=config.memory_efficient,
        drop_rate=config.drop_rate,
        head_drop_rate=config.head_drop_rate,
    )
    if config.weights:
        _load_initial_weights(model, Path(config.weights))
    return model


def _load_initial_weights(model: DenseNet, path: Path) -> None:
    from sedensenet.models.weights import load_pretrained

    if path.suffix == ".safetensors":
        try:
            tensors, meta = ckpt.read_checkpoint(path)
        except ckpt.CheckpointError:
            tensors = None  # not ours: try it as torchvision weights below
        if tensors is not None:
            _check_same_body(path, meta, model)
            own = model.state_dict()
            keep = {k: v for k, v in tensors.items() if k in own and own[k].shape == v.shape}
            skipped = sorted(set(own) - set(keep))
            if not any(k.startswith("features.") for k in keep):
                raise ckpt.CheckpointError(f"{path} is a checkpoint of another architecture ({meta.preset})")
            model.load_state_dict(keep, strict=False)
            log.info("initialised from %s; %d keys kept fresh: %s", path, len(skipped), skipped[:4])
            return
    load_pretrained(model, path, arch=None)


_BODY = ("growth_rate", "block_config", "num_init_features", "bn_size", "compression", "stem")
"""The settings that make two DenseNets the same architecture apart from SE layers, classifier and channels."""


def _check_same_body(path: Path, meta: ckpt.CheckpointMeta, model: DenseNet) -> None:
    ours = {k: getattr(model.config, k) for k in _BODY}
    theirs = {k: meta.model.get(k) for k in _BODY}
    if isinstance(theirs["block_config"], list):
        theirs["block_config"] = tuple(theirs["block_config"])
    diff = [f"{k} {theirs[k]} vs {ours[k]}" for k in _BODY if theirs[k] != ours[k]]
    if diff:
        raise ckpt.CheckpointError(
            f"{path} is a checkpoint of another architecture ({meta.preset or 'unknown preset'}: "
            f"{', '.join(diff)} in the file vs --model {model.config.extra.get('preset', '')}); --weights needs the "
            "same DenseNet body (SE layers and the classifier may differ)"
        )


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Adam (the tutorial's), AdamW or SGD with Nesterov momentum; no weight decay on BN and biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)


def build_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer) -> Any:
    """Per-epoch schedule: cosine after linear warm-up, or reduce-on-plateau of val_loss, or none."""
    if config.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.1, patience=max(1, config.patience // 2))
    if config.scheduler == "cosine":
        warm = min(config.warmup_epochs, config.epochs - 1)
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, config.epochs - warm))
        if warm == 0:
            return cosine
        linear = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0 / (warm + 1), total_iters=warm)
        return torch.optim.lr_scheduler.SequentialLR(optimizer, [linear, cosine], milestones=[warm])
    if config.warmup_epochs:
        return torch.optim.lr_scheduler.LinearLR(
            optimizer, start_factor=1.0 / (config.warmup_epochs + 1), total_iters=config.warmup_epochs
        )
    return None


def class_weight_tensor(config: TrainConfig, splits: DataSplits) -> torch.Tensor | None:
    """Inverse-frequency weights (scikit-learn's 'balanced') when ``class_weights='auto'``."""
    if config.class_weights != "auto":
        return None
    counts = np.bincount([s.label for s in splits.train], minlength=len(splits.classes)).astype(np.float64)
    weights = counts.sum() / (len(counts) * np.maximum(counts, 1))
    log.info("class weights: %s", dict(zip(splits.classes, np.round(weights, 3).tolist(), strict=True)))
    return torch.tensor(weights, dtype=torch.float32)


def set_frozen(model: DenseNet, frozen: bool) -> None:
    """Freeze everything but the classifier and SE layers (new when starting from ImageNet weights)."""
    trainable = {id(p) for p in model.classifier.parameters()}
    for se in model.se_modules().values():
        trainable |= {id(p) for p in se.parameters()}
    for p in model.parameters():
        p.requires_grad_(not frozen or id(p) in trainable)


def _freeze_bn_stats(model: nn.Module) -> None:
    # While the body is frozen its BatchNorm statistics stay fixed too (Keras' fine-tuning advice).
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and not m.weight.requires_grad:
            m.eval()


def improved(monitor: str, value: float, best: float | None) -> bool:
    if math.isnan(value):
        return False
    if best is None:
        return True
    return value > best if monitor == "val_accuracy" else value < best


@dataclass
class RunContext:
    """Everything the epoch loop works with, built once by :func:`prepare`."""

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
    history: History
    state: TrainState
    writer: Any = None


def make_datasets(config: TrainConfig, splits: DataSplits, mean: tuple, std: tuple) -> tuple[Any, Any]:
    train_tf = build_transforms(
        config.image_size, True, config.augment, mean, std, vflip=config.vflip, in_chans=config.in_chans
    )
    eval_tf = build_transforms(config.image_size, False, "none", mean, std, in_chans=config.in_chans)
    if config.cache:
        from sedensenet.data.cache import CachedImageDataset, ImageCache

        # uint8 all the way to the device: StepSettings.to_device normalises whole batches.
        cache = ImageCache.build(splits.train + splits.val + splits.test, config.image_size, config.in_chans)
        kw = {"in_chans": config.in_chans, "normalize": False}
        train_tf = build_transforms(config.image_size, True, config.augment, mean, std, vflip=config.vflip, **kw)
        eval_tf = build_transforms(config.image_size, False, "none", mean, std, **kw)
        train = CachedImageDataset(splits.train, cache, train_tf, config.in_chans)
        val = CachedImageDataset(splits.val, cache, eval_tf, config.in_chans) if splits.val else None
        return train, val
    train = ImageFolderDataset(splits.train, transform=train_tf, in_chans=config.in_chans)
    val = ImageFolderDataset(splits.val, transform=eval_tf, in_chans=config.in_chans) if splits.val else None
    return train, val


def normalization(config: TrainConfig, splits: DataSplits) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet statistics (per channel, averaged for grayscale) or those of the training split."""
    from sedensenet.data import IMAGENET_MEAN, IMAGENET_STD

    if config.normalize == "dataset":
        return compute_mean_std(splits.train, config.image_size, in_chans=config.in_chans)
    if config.in_chans == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    mean, std = float(np.mean(IMAGENET_MEAN)), float(np.mean(IMAGENET_STD))
    return (mean,) * config.in_chans, (std,) * config.in_chans


class StopRequest:
    """Set by a signal handler (Ctrl-C, SIGTERM); :func:`fit` checks it after every training step."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None


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


class _Abandon(Exception):
    """Raised after a step when a stop was requested: the partial epoch is dropped, the last complete one kept."""


def fit(ctx: RunContext, progress: bool = False, interrupt: StopRequest | None = None) -> History:
    """Train from ``ctx.state.epoch`` to ``config.epochs``; every epoch leaves a complete, resumable run folder.

    When ``interrupt`` is set (by a signal handler) the current step finishes, the partial epoch is dropped and
    :class:`TrainingInterrupted` is raised: the last complete epoch on disk is where ``--resume`` continues,
    which keeps a resumed run identical to one never stopped.
    """
    interrupt = interrupt if interrupt is not None else StopRequest()
    try:
        return _epochs(ctx, progress, interrupt)
    except _Abandon:
        raise _interrupted(ctx, interrupt) from None
    except (TrainingInterrupted, RunWriteError, NonFiniteLossError):
        raise
    except torch.OutOfMemoryError:
        raise TrainingOutOfMemoryError(_oom_advice(ctx)) from None
    except Exception:
        if interrupt:  # e.g. a DataLoader worker that the same Ctrl-C (sent to the process group) ended
            raise _interrupted(ctx, interrupt) from None
        raise


def _epochs(ctx: RunContext, progress: bool, interrupt: StopRequest) -> History:
    c = ctx.config
    if c.patience and ctx.state.bad_epochs >= c.patience:  # resuming a run that had already stopped early
        log.info("the run stopped early after epoch %d (patience %d): nothing to train", ctx.state.epoch, c.patience)
        return ctx.history
    for epoch in range(ctx.state.epoch + 1, c.epochs + 1):
        frozen = epoch <= c.freeze_epochs
        set_frozen(ctx.model, frozen)
        ctx.train_loader.sampler.set_epoch(epoch)  # type: ignore[union-attr]
        lr = ctx.optimizer.param_groups[0]["lr"]
        bar = EpochProgress(len(ctx.train_loader), f"epoch {epoch}/{c.epochs}", enabled=progress and dist.is_main())
        ctx.train_model.train()
        if frozen:
            _freeze_bn_stats(ctx.model)
        try:
            train = train_one_epoch(
                ctx.train_model, ctx.train_loader, ctx.criterion, ctx.optimizer, ctx.settings, ctx.scaler,
                c.grad_clip, _after_step(bar, interrupt), epoch,
            )  # fmt: skip
        except NonFiniteLossError as e:
            raise NonFiniteLossError(f"{e}. {_nan_advice(ctx)}") from None
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
        if interrupt:  # asked during validation or the writes: this epoch is saved, stop here
            raise _interrupted(ctx, interrupt)
        if stop:
            break
    return ctx.history


def _after_step(bar: EpochProgress, interrupt: StopRequest) -> Any:
    """The loop's per-step callback: advance the bar, then leave the epoch when a stop was requested."""

    def update(n: int, loss: torch.Tensor | None, correct: torch.Tensor | None) -> None:
        bar.update(n, loss, correct)
        if interrupt:
            raise _Abandon

    return update


def _nan_advice(ctx: RunContext) -> str:
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


def _check_finite_weights(ctx: RunContext, epoch: int) -> None:
    """A finite loss can still leave NaN/Inf weights after the last step: never save those."""
    bad = [k for k, v in ctx.model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise NonFiniteLossError(
            f"the weights became NaN or Inf during epoch {epoch} ({len(bad)} tensors, e.g. {bad[0]}). "
            + _nan_advice(ctx)
        )


def _oom_advice(ctx: RunContext) -> str:
    c = ctx.config
    kept = f"the checkpoint of epoch {ctx.state.epoch} is kept" if ctx.state.epoch else "no epoch was complete"
    options = [f"--batch-size {max(1, c.batch_size // 2)}"]
    if not c.memory_efficient:
        options.append("--memory-efficient (recomputes features in backward: less memory, a little slower)")
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
    changed = sorted(k for k in RESUME_MAY_CHANGE if saved.get(k) != getattr(ctx.config, k))
    flags = "".join(_flag(k, getattr(ctx.config, k)) for k in changed)
    return f"sedensenet train --resume {run}{flags}"


def _flag(key: str, value: Any) -> str:
    flag = "--" + key.replace("_", "-")
    if isinstance(value, bool):
        return f" {flag}" if value else f" --no-{key.replace('_', '-')}"
    return f" {flag} {shlex.quote(str(value))}"


def _interrupted(ctx: RunContext, interrupt: StopRequest) -> TrainingInterrupted:
    signum = interrupt.signum or signal.SIGINT
    name, done, command = signal.Signals(signum).name, ctx.state.epoch, resume_command(ctx)
    if done:
        message = (
            f"stopped by {name} after epoch {done} of {ctx.config.epochs}; its checkpoint is saved in "
            f"{ctx.run_dir}. Continue with: {command}"
        )
    else:
        message = f"stopped by {name} before the first epoch was complete (nothing to resume); start again: {command}"
    return TrainingInterrupted(message, ctx.run_dir, done, signum, command)


def _validate(ctx: RunContext) -> EpochResult | None:
    if ctx.val_loader is None:
        return None
    res = evaluate_loader(ctx.model, ctx.val_loader, ctx.criterion, ctx.settings)
    return dist.gather_eval(res, ctx.settings.device)


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
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
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
            raise RunWriteError(_write_failure(ctx, path, epoch, e)) from e


def _write_failure(ctx: RunContext, path: Path, epoch: int, error: Exception) -> str:
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
    }


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


def write_run_header(ctx: RunContext) -> None:
    """config.yaml, classes.json and skipped.csv: what the run is, before the first epoch."""
    from sedensenet.data import write_skipped_csv

    atomic_write_text(ctx.run_dir / "config.yaml", dump_yaml(ctx.config))
    atomic_write_json(ctx.run_dir / "classes.json", ctx.splits.classes)
    write_skipped_csv(ctx.splits.skipped, ctx.run_dir / "skipped.csv")
