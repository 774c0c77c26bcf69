"""The fit loop: data and model in, a run folder out, resumable at any completed epoch."""

from __future__ import annotations

import logging
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
from sedensenet.config import TrainConfig, dump_yaml
from sedensenet.data import DataSplits, ImageFolderDataset, build_transforms, compute_mean_std
from sedensenet.engine import distributed as dist
from sedensenet.engine.loop import EpochResult, NonFiniteLossError, StepSettings, evaluate_loader, train_one_epoch
from sedensenet.engine.progress import EpochProgress
from sedensenet.fileio import atomic_write_json, atomic_write_text
from sedensenet.models import DenseNet, create_model
from sedensenet.models.se import SqueezeExcite
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
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name}: no CUDA GPU is visible to PyTorch; use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise RuntimeError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError(f"--device {name}: Apple MPS is not available here")
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
            own = model.state_dict()
            keep = {k: v for k, v in tensors.items() if k in own and own[k].shape == v.shape}
            skipped = sorted(set(own) - set(keep))
            if not any(k.startswith("features.") for k in keep):
                raise ckpt.CheckpointError(f"{path} is a checkpoint of another architecture ({meta.preset})")
            model.load_state_dict(keep, strict=False)
            log.info("initialised from %s; %d keys kept fresh: %s", path, len(skipped), skipped[:4])
            return
    load_pretrained(model, path, arch=None)


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
    train_tf = build_transforms(config.image_size, True, config.augment, mean, std, vflip=config.vflip)
    eval_tf = build_transforms(config.image_size, False, "none", mean, std)
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


def fit(ctx: RunContext, progress: bool = False) -> History:
    """Train from ``ctx.state.epoch`` to ``config.epochs``; every epoch leaves a complete, resumable run folder."""
    c = ctx.config
    for epoch in range(ctx.state.epoch + 1, c.epochs + 1):
        frozen = epoch <= c.freeze_epochs
        set_frozen(ctx.model, frozen)
        ctx.train_loader.sampler.set_epoch(epoch)  # type: ignore[union-attr]
        lr = ctx.optimizer.param_groups[0]["lr"]
        bar = EpochProgress(len(ctx.train_loader), f"epoch {epoch}/{c.epochs}", enabled=progress and dist.is_main())
        if frozen:
            ctx.train_model.train()
            _freeze_bn_stats(ctx.model)
        try:
            train = train_one_epoch(
                ctx.train_model, ctx.train_loader, ctx.criterion, ctx.optimizer, ctx.settings, ctx.scaler,
                c.grad_clip, bar.update, epoch,
            )  # fmt: skip
        except NonFiniteLossError as e:
            raise NonFiniteLossError(
                f"{e}. The weights of epoch {ctx.state.epoch} in {ctx.run_dir / 'weights'} are kept. Likely causes: "
                f"a learning rate too high (--lr {c.lr:g}; try {c.lr / 10:g}), fp16 overflow (--amp bf16 or off), "
                f"or bad input values."
            ) from None
        finally:
            bar.close()
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
        if stop:
            break
    return ctx.history


def _validate(ctx: RunContext) -> EpochResult | None:
    if ctx.val_loader is None:
        return None
    res = evaluate_loader(
        ctx.model if not dist.is_distributed() else ctx.model, ctx.val_loader, ctx.criterion, ctx.settings
    )
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
    """Weights first, then the resume state, then history and curves: each written atomically."""
    meta = ctx.meta
    meta.epoch = epoch
    meta.metrics = {k: float(v) for k, v in row.items()}
    weights = ctx.run_dir / "weights"
    ckpt.save_checkpoint(weights / "last.safetensors", ctx.model, meta)
    if is_best:
        ckpt.save_checkpoint(weights / "best.safetensors", ctx.model, meta)
    ckpt.save_state(ctx.run_dir / "state" / "last.pt", resume_state(ctx))
    write_history_csv(ctx.history.rows(), ctx.run_dir / "history.csv")
    plot_curves(ctx.history.history, ctx.run_dir / "curves.png", best_epoch=ctx.state.best_epoch or None)


def resume_state(ctx: RunContext) -> dict[str, Any]:
    """Plain containers and tensors only, so ``torch.load(weights_only=True)`` reads it back."""
    sched = ctx.scheduler.state_dict() if ctx.scheduler is not None else None
    return {
        "epoch": ctx.state.epoch,
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
    """Load a resume state saved by :func:`resume_state` into ``ctx`` (weights are loaded by the caller)."""
    ctx.optimizer.load_state_dict(state["optimizer"])
    if ctx.scheduler is not None and state.get("scheduler") is not None:
        ctx.scheduler.load_state_dict(state["scheduler"])
    if ctx.scaler is not None and state.get("scaler") is not None:
        ctx.scaler.load_state_dict(state["scaler"])
    ctx.state = TrainState(state["epoch"], state["best"], state["best_epoch"], state["bad_epochs"])
    ctx.history = History.from_rows(state["history"])
    set_rng_state(state["rng"])


def write_run_header(ctx: RunContext) -> None:
    """config.yaml, classes.json and skipped.csv: what the run is, before the first epoch."""
    from sedensenet.data import write_skipped_csv

    atomic_write_text(ctx.run_dir / "config.yaml", dump_yaml(ctx.config))
    atomic_write_json(ctx.run_dir / "classes.json", ctx.splits.classes)
    write_skipped_csv(ctx.splits.skipped, ctx.run_dir / "skipped.csv")


def se_gates_enabled(model: nn.Module, on: bool) -> list[SqueezeExcite]:
    """Turn on/off keeping SE gate values (for the explain report)."""
    mods = [m for m in model.modules() if isinstance(m, SqueezeExcite)]
    for m in mods:
        m.keep_gate = on
    return mods
