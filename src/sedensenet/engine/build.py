"""What a run is made of: model, optimiser, scheduler, class weights, normalisation and datasets."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sedensenet import checkpoint as ckpt
from sedensenet.config import TrainConfig, parse_window
from sedensenet.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataSplits,
    ImageFolderDataset,
    Sample,
    build_transforms,
    compute_mean_std,
)
from sedensenet.data.dicom import DicomOptions
from sedensenet.models import DenseNet, create_model

log = logging.getLogger(__name__)


def build_model(config: TrainConfig, num_classes: int, *, memory_efficient: bool) -> DenseNet:
    """The preset with this run's classes and channels, on the path the memory plan chose (``memory_efficient``);
    ImageNet or user weights loaded when asked."""
    model = create_model(
        config.model,
        num_classes=num_classes,
        in_chans=config.in_chans,
        pretrained=config.pretrained,
        memory_efficient=memory_efficient,
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


def build_optimizer(
    model: nn.Module, *, name: str, lr: float, weight_decay: float, momentum: float
) -> torch.optim.Optimizer:
    """``adam`` (the tutorial's), ``adamw`` or ``sgd`` with Nesterov momentum; no weight decay on BN and biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, name: str, epochs: int, warmup_epochs: int, patience: int, fitted: bool = False
) -> Any:
    """Per-epoch schedule (``name``): ``cosine`` after linear warm-up, ``plateau`` (reduce-on-plateau of val_loss,
    waiting half the early-stopping ``patience``), or ``none`` (the warm-up alone, if any). ``fitted`` (``--time``):
    the cosine is a :class:`FittedCosine`, whose length the epoch loop re-fits to each new plan."""
    if name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.1, patience=max(1, patience // 2))
    if name == "cosine" and fitted:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, FittedCosine(warmup_epochs, epochs))
    if name == "cosine":
        warm = min(warmup_epochs, epochs - 1)
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs - warm))
        if warm == 0:
            return cosine
        linear = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0 / (warm + 1), total_iters=warm)
        return torch.optim.lr_scheduler.SequentialLR(optimizer, [linear, cosine], milestones=[warm])
    if warmup_epochs:
        return torch.optim.lr_scheduler.LinearLR(
            optimizer, start_factor=1.0 / (warmup_epochs + 1), total_iters=warmup_epochs
        )
    return None


class FittedCosine:
    """The learning-rate factor of a cosine schedule that ends at ``total`` epochs, which may change as a time
    budget is re-planned: ``warmup`` epochs of linear warm-up (``e / (warmup + 1)`` in epoch ``e``, as
    ``LinearLR``), 1 in the epoch after them, then half a cosine down to :attr:`FLOOR` in epoch ``total`` itself,
    so the last planned epoch trains at the floor. ``total`` 0: not planned yet (no decay).

    A callable object, so ``LambdaLR.state_dict`` keeps ``warmup`` and ``total`` and a resumed run goes on with the
    same fit."""

    FLOOR = 0.01
    """The end of the schedule, as a fraction of ``lr`` (Ultralytics' ``lrf``)."""

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup, self.total = warmup, total

    def __call__(self, step: int) -> float:
        e = step + 1  # LambdaLR counts steps from 0: the factor of epoch step + 1
        warm = max(0, min(self.warmup, self.total - 2)) if self.total else self.warmup
        if e <= warm:
            return e / (warm + 1)
        if not self.total:
            return 1.0
        span = self.total - warm - 1
        t = min(1.0, (e - warm - 1) / span) if span > 0 else 1.0
        return self.FLOOR + (1 - self.FLOOR) * 0.5 * (1 + math.cos(math.pi * t))


def refit_schedule(scheduler: Any, total: int) -> None:
    """Fit a :class:`FittedCosine` schedule to end at epoch ``total`` (other schedules: nothing to fit)."""
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        for fn in scheduler.lr_lambdas:
            if isinstance(fn, FittedCosine):
                fn.total = total


def class_weight_tensor(splits: DataSplits) -> torch.Tensor:
    """Inverse-frequency weights of the training split's classes (scikit-learn's 'balanced'): ``--class-weights
    auto``."""
    counts = np.bincount([s.label for s in splits.train], minlength=len(splits.classes)).astype(np.float64)
    weights = counts.sum() / (len(counts) * np.maximum(counts, 1))
    log.info("class weights: %s", dict(zip(splits.classes, np.round(weights, 3).tolist(), strict=True)))
    return torch.tensor(weights, dtype=torch.float32)


POS_WEIGHT_CAP = 20.0
"""``--class-weights auto`` in a multi-label run: a label's positive weight is negatives / positives, at most this."""


def positive_weight_tensor(splits: DataSplits, cap: float = POS_WEIGHT_CAP) -> torch.Tensor:
    """Each label's positive weight from its training prevalence (negatives / positives over its unmasked entries,
    capped at ``cap``; 1 for a label without positives): ``--class-weights auto`` in a multi-label run."""
    y = np.array([s.label for s in splits.train], dtype=np.float64).reshape(len(splits.train), len(splits.classes))
    positives, negatives = np.nansum(y == 1, axis=0), np.nansum(y == 0, axis=0)
    weights = np.where(positives > 0, np.minimum(negatives / np.maximum(positives, 1), cap), 1.0)
    log.info("positive weights (negatives / positives, at most %g): %s", cap,
             dict(zip(splits.classes, np.round(weights, 3).tolist(), strict=True)))  # fmt: skip
    return torch.tensor(weights, dtype=torch.float32)


def set_frozen(model: DenseNet, frozen: bool) -> None:
    """Freeze everything but the classifier and SE layers (new when starting from ImageNet weights)."""
    trainable = {id(p) for p in model.classifier.parameters()}
    for se in model.se_modules().values():
        trainable |= {id(p) for p in se.parameters()}
    for p in model.parameters():
        p.requires_grad_(not frozen or id(p) in trainable)


def freeze_bn_stats(model: nn.Module) -> None:
    """Put frozen BatchNorm layers (plain or synchronised) in eval mode: their statistics stay fixed too, as
    Keras advises for fine-tuning."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None and not m.weight.requires_grad:
            m.eval()


def normalization(
    splits: DataSplits, *, normalize: str, image_size: int, in_chans: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``imagenet``: ImageNet's statistics (per channel, averaged for grayscale); ``dataset``: the training split's."""
    if normalize == "dataset":
        return compute_mean_std(splits.train, image_size, in_chans=in_chans)
    if in_chans == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    mean, std = float(np.mean(IMAGENET_MEAN)), float(np.mean(IMAGENET_STD))
    return (mean,) * in_chans, (std,) * in_chans


def open_cache(config: TrainConfig, splits: DataSplits) -> Any:
    """The decoded-image cache of every split (``--cache``), decoded once and shared by all datasets; else None."""
    if not config.cache:
        return None
    from sedensenet.data.cache import ImageCache

    return ImageCache.build(splits.train + splits.val + splits.test, config.image_size, config.in_chans,
                            dicom=dicom_options(config.dicom_window))  # fmt: skip


def make_dataset(
    config: TrainConfig,
    samples: Sequence[Sample],
    mean: Sequence[float],
    std: Sequence[float],
    *,
    train: bool,
    cache: Any = None,
) -> ImageFolderDataset:
    """A dataset over ``samples``: augmented when ``train``; read from ``cache`` (see :func:`open_cache`) if given."""
    augment = config.augment if train else "none"
    vflip = config.vflip and train
    # From the cache, uint8 goes all the way to the device: StepSettings.to_device normalises whole batches.
    tf = build_transforms(
        config.image_size,
        train=train,
        augment=augment,
        mean=mean,
        std=std,
        vflip=vflip,
        in_chans=config.in_chans,
        normalize=cache is None,
    )
    if cache is not None:
        from sedensenet.data.cache import CachedImageDataset

        return CachedImageDataset(samples, cache, tf, config.in_chans)
    return ImageFolderDataset(samples, transform=tf, in_chans=config.in_chans, dicom=dicom_options(config.dicom_window))


def dicom_options(window: str | tuple[float, float] | list[float] | None) -> DicomOptions | None:
    """How DICOM files are decoded for ``--dicom-window`` (text ``C,W`` or a stored pair); None: each file's own."""
    pair = parse_window(window) if isinstance(window, str) else window
    return DicomOptions(window=tuple(pair)) if pair else None
