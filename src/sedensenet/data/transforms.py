"""Training and evaluation pipelines (torchvision.transforms.v2) from a PIL image to a normalised tensor."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from torchvision.transforms import v2

from sedensenet.data.images import DataError, Sample, load_image

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AUGMENTS = ("none", "light", "strong")


def image_channels(in_chans: int) -> int:
    """Channels of the image :func:`~sedensenet.data.load_image` gives: 1, 3 or 4 (RGB for any other count)."""
    return in_chans if in_chans in (1, 3, 4) else 3


def _stats(mean: Sequence[float], std: Sequence[float], channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean) != len(std):
        raise ValueError(f"mean and std must have the same length, got {len(mean)} and {len(std)}")
    if any(s <= 0 for s in std):
        raise ValueError(f"std values must be positive, got {std}")
    if len(mean) in (1, channels):
        return mean, std  # one value applies to every channel
    if len(mean) == 3 and channels == 1:
        # RGB statistics for grayscale input: their average, as timm does for in_chans=1
        return (sum(mean) / 3,), (sum(std) / 3,)
    if len(set(mean)) == 1 and len(set(std)) == 1:
        # the same value for every channel (e.g. 5 equal values for in_chans=5, whose images are RGB)
        return mean[:1], std[:1]
    raise ValueError(f"mean/std have {len(mean)} values but the images have {channels} channels")


def build_transforms(
    image_size: int,
    *,
    train: bool,
    augment: str = "light",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    vflip: bool = False,
    in_chans: int | None = None,
    normalize: bool = True,
) -> v2.Compose:
    """The pipeline from a PIL image (as :func:`load_image` returns it) to a normalised float32 tensor.

    Evaluation (and ``augment="none"``) squashes the image to ``image_size`` x ``image_size`` (as Keras'
    ``image_dataset_from_directory`` does). ``"light"`` adds a random resized crop (70-100% of the area) and
    horizontal flips (and vertical flips with ``vflip``); ``"strong"`` also rotates by up to 15 degrees,
    jitters brightness, contrast and saturation (brightness and contrast only for grayscale) and, after
    normalising, erases a random rectangle a quarter of the time.

    Args:
        image_size: side of the square output.
        train: training pipeline (with augmentation) or evaluation pipeline.
        augment: one of ``"none"``, ``"light"``, ``"strong"``.
        mean: per-channel mean: one per image channel, one value (or equal values) for every channel, or
            three RGB values (averaged for grayscale). Images for ``in_chans`` other than 1, 3, 4 are RGB here
            and get their channels repeated by :class:`ImageFolderDataset` after this pipeline.
        std: per-channel standard deviation, as ``mean``.
        vflip: also flip vertically (for images with no up and down: cells, satellite tiles).
        in_chans: channels the model takes; when ``None`` it is taken from ``len(mean)`` (1, 3 or 4).
        normalize: ``False`` stops at a uint8 tensor (the loader then ships a quarter of the bytes and
            :func:`normalize_batch` converts whole batches, on the GPU when there is one).

    Raises:
        ValueError: an unknown ``augment``, a bad ``image_size`` or mean/std that do not fit the channels.
    """
    if augment not in AUGMENTS:
        raise ValueError(f"unknown augment {augment!r}; choose one of: {', '.join(AUGMENTS)}")
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    channels = image_channels(in_chans) if in_chans is not None else (len(mean) if len(mean) in (1, 4) else 3)
    mean, std = _stats(mean, std, channels)

    steps: list[v2.Transform] = []
    if not train or augment == "none":
        steps.append(v2.Resize((image_size, image_size), antialias=True))
    else:
        steps.append(v2.RandomResizedCrop(image_size, scale=(0.7, 1.0), antialias=True))
        steps.append(v2.RandomHorizontalFlip())
        if vflip:
            steps.append(v2.RandomVerticalFlip())
        if augment == "strong":
            steps.append(v2.RandomRotation(15))
            if channels == 1:
                steps.append(v2.ColorJitter(brightness=0.2, contrast=0.2))
            elif channels == 3:  # torchvision's colour functions take 1 or 3 channels only
                steps.append(v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2))
    steps.append(v2.ToImage())
    if normalize:
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
    if train and augment == "strong":
        steps.append(v2.RandomErasing(p=0.25))
    return v2.Compose(steps)


def normalize_batch(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, C, H, W)`` -> float32 normalised, the arithmetic of ``ToDtype(scale=True)`` + ``Normalize``.

    ``mean`` and ``std`` are per-channel tensors (broadcast as ``(1, C, 1, 1)``) on the images' device.
    """
    x = images.to(torch.float32).div_(255.0)
    return x.sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))


def compute_mean_std(
    samples: Sequence[Sample],
    image_size: int,
    in_chans: int = 3,
    max_images: int = 1000,
    seed: int = 0,
    workers: int | None = None,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of the images, resized to ``image_size`` as for training.

    Uses at most ``max_images`` samples, chosen by ``seed`` from the samples sorted by path (so the answer does
    not depend on their order). Returns one value per image channel (see :func:`image_channels`); files that
    fail to load are left out with a warning.

    Raises:
        DataError: no sample could be loaded.
    """
    chosen = sorted(samples, key=lambda s: str(s.path))
    if len(chosen) > max_images:
        chosen = random.Random(seed).sample(chosen, max_images)
    to_tensor = v2.Compose(
        [v2.Resize((image_size, image_size), antialias=True), v2.ToImage(), v2.ToDtype(torch.float64, scale=True)]
    )

    def load(sample: Sample) -> torch.Tensor | None:
        try:
            return to_tensor(load_image(sample.path, in_chans))
        except Exception as exc:  # a file changed since the scan: leave it out
            logger.warning("cannot load %s for mean/std: %s", sample.path, exc)
            return None

    channels = image_channels(in_chans)
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    pixels = 0
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        for x in pool.map(load, chosen):
            if x is None:
                continue
            total += x.sum(dim=(1, 2))
            total_sq += (x * x).sum(dim=(1, 2))
            pixels += x.shape[1] * x.shape[2]
    if pixels == 0:
        raise DataError(f"cannot compute mean/std: none of the {len(chosen)} chosen images could be loaded")
    mean = total / pixels
    std = (total_sq / pixels - mean * mean).clamp(min=0).sqrt()
    if (std < 1e-6).any():
        logger.warning("a channel has (almost) no variation; using std 1.0 for it")
        std = torch.where(std < 1e-6, torch.ones_like(std), std)
    return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std)
