"""Loader throughput: torchvision's ImageFolder with PIL decoding vs sedensenet's decoded-image cache.

Generates (once) a folder of 2,000 JPEGs of 500x375 in two classes, then times full passes of a DataLoader
with the same workers, batch size and training augmentation (random resized crop + flip + normalise, 224 px):

    python benchmarks/data_loader.py [--images 2000] [--workers 2] [--root /tmp/sedensenet-bench-jpegs]

The cache is built during our first epoch (timed apart); the figure that matters is epochs after the first.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import v2

from sedensenet.data import IMAGENET_MEAN, IMAGENET_STD, build_transforms, normalize_batch, scan_folder
from sedensenet.data.cache import CachedImageDataset, ImageCache


def make_jpegs(root: Path, n: int) -> Path:
    """``n`` 500x375 JPEGs of smooth random colour fields (JPEG-typical content), half per class."""
    marker = root / f".complete-{n}"
    if marker.is_file():
        return root
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / ("a" if i % 2 else "b")
        d.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 255, size=(24, 32, 3), dtype=np.uint8)
        Image.fromarray(small).resize((500, 375), Image.BICUBIC).save(d / f"{i:05d}.jpg", quality=90)
    marker.touch()
    return root


def epoch_seconds(loader: DataLoader, finish: object = None) -> float:
    """One full pass; ``finish`` is applied to each batch (our loader ships uint8 and normalises per batch)."""
    start = time.perf_counter()
    for images, _labels in loader:
        if finish is not None:
            finish(images)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--root", default=str(Path(tempfile.gettempdir()) / "sedensenet-bench-jpegs"))
    args = p.parse_args()
    torch.set_num_threads(1)
    root = make_jpegs(Path(args.root), args.images)
    kw = {"batch_size": args.batch_size, "num_workers": args.workers, "shuffle": True,
          "persistent_workers": args.workers > 0}  # fmt: skip

    tv_tf = v2.Compose([v2.RandomResizedCrop(args.size, scale=(0.7, 1.0), antialias=True), v2.RandomHorizontalFlip(),
                        v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                        v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])  # fmt: skip
    tv_loader = DataLoader(datasets.ImageFolder(str(root), transform=tv_tf), **kw)
    tv = [epoch_seconds(tv_loader) for _ in range(args.epochs)]

    splits = scan_folder(root, val_split=0.0)
    build_start = time.perf_counter()
    cache = ImageCache.build(splits.train, args.size, 3, root=root.parent / f"{root.name}-cache")
    build = time.perf_counter() - build_start
    ours_ds = CachedImageDataset(
        splits.train, cache, build_transforms(args.size, train=True, augment="light", normalize=False), 3
    )
    ours_loader = DataLoader(ours_ds, **kw)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    ours = [epoch_seconds(ours_loader, lambda x: normalize_batch(x, mean, std)) for _ in range(args.epochs)]

    n = len(splits.train)
    tv_rate, our_rate = n / statistics.median(tv[1:] or tv), n / statistics.median(ours[1:] or ours)
    print(f"| loader ({n} JPEGs 500x375 -> {args.size} px, {args.workers} workers, batch {args.batch_size}) | "
          "images/s | ratio |")  # fmt: skip
    print("|---|---:|---:|")
    print(f"| torchvision ImageFolder + PIL decode (median of epochs 2-{args.epochs}) | {tv_rate:.0f} | 1.00x |")
    print(f"| sedensenet decoded-image cache (median of epochs 2-{args.epochs}) | {our_rate:.0f} | "
          f"{our_rate / tv_rate:.2f}x |")  # fmt: skip
    print(f"\ncache built once in {build:.1f} s ({n / build:.0f} images/s); per-epoch seconds: torchvision "
          f"{[round(t, 1) for t in tv]}, cache {[round(t, 1) for t in ours]}")  # fmt: skip


if __name__ == "__main__":
    main()
