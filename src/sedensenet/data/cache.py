"""A decoded-image cache: every image once decoded and resized to the training size, kept as uint8 on disk.

Decoding a JPEG costs far more than augmenting a small tensor. The cache decodes each image once (with the
same resize the evaluation pipeline uses), stores the dataset as one memory-mapped ``(N, H, W, C)`` uint8
array, and reuses it across epochs and across runs. Its name depends on the data folder, the size and the
channels; its manifest lists every file's size and modification time, so a changed, added or removed file
rebuilds it. Augmentation then runs on tensors (torchvision.transforms.v2 takes uint8 tensors as well).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap
from torchvision.transforms.v2 import functional as TF

from sedensenet.data.builtin import default_cache_dir
from sedensenet.data.dicom import DicomOptions
from sedensenet.data.images import ImageFolderDataset, Sample, load_image, target
from sedensenet.data.transforms import image_channels

logger = logging.getLogger(__name__)
CACHE_VERSION = 1


def _manifest(samples: Sequence[Sample], image_size: int, in_chans: int, dicom: DicomOptions | None) -> dict:
    files = []
    for s in sorted({str(s.path) for s in samples}):
        st = os.stat(s)
        files.append([s, st.st_size, st.st_mtime_ns])
    out = {"version": CACHE_VERSION, "image_size": image_size, "channels": image_channels(in_chans), "files": files}
    if dicom is not None and dicom.window is not None:  # another window is another image (keys unchanged without)
        out["dicom_window"] = list(dicom.window)
    return out


def _decode(path: str, image_size: int, in_chans: int, dicom: DicomOptions | None = None) -> np.ndarray:
    image = TF.resize(load_image(path, in_chans, dicom=dicom), [image_size, image_size], antialias=True)
    arr = np.asarray(image, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr  # (H, W, C)


class ImageCache:
    """The cache of one set of files at one size: ``index`` maps a path to its row of ``array``."""

    def __init__(self, array_path: Path, files: list[str]) -> None:
        self.array_path = array_path
        self.index = {f: i for i, f in enumerate(files)}
        self._array: np.ndarray | None = None

    @property
    def array(self) -> np.ndarray:
        """The memory-mapped ``(N, H, W, C)`` array, opened lazily (so each loader worker maps it itself)."""
        if self._array is None:
            self._array = np.load(self.array_path, mmap_mode="r")
        return self._array

    def __getstate__(self) -> dict:
        return {"array_path": self.array_path, "index": self.index, "_array": None}

    def image(self, path: str | os.PathLike) -> torch.Tensor:
        """The cached image as a uint8 ``(C, H, W)`` tensor."""
        row = self.array[self.index[str(path)]]
        return torch.from_numpy(np.array(row)).permute(2, 0, 1)  # a copy: the memory map is read-only

    @classmethod
    def build(
        cls,
        samples: Sequence[Sample],
        image_size: int,
        in_chans: int = 3,
        root: Path | None = None,
        workers: int | None = None,
        dicom: DicomOptions | None = None,
    ) -> ImageCache:
        """Open the cache for ``samples`` at ``image_size``, decoding the images first if it is missing or stale
        (DICOM files windowed as ``dicom`` says; the cache holds pixels only, no DICOM tag)."""
        manifest = _manifest(samples, image_size, in_chans, dicom)
        files = [f[0] for f in manifest["files"]]
        digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:20]
        root = root or default_cache_dir() / "cache"
        array_path = root / f"images-{image_size}px-{manifest['channels']}ch-{digest}.npy"
        if array_path.is_file():
            logger.info("decoded-image cache: reusing %s", array_path)
            return cls(array_path, files)
        root.mkdir(parents=True, exist_ok=True)
        tmp = array_path.with_name(f".{array_path.stem}.{os.getpid()}.tmp.npy")
        shape = (len(files), image_size, image_size, manifest["channels"])
        logger.info("decoded-image cache: decoding %d images at %d px into %s", len(files), image_size, array_path)
        out = open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        try:
            with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
                for i, arr in enumerate(pool.map(lambda f: _decode(f, image_size, in_chans, dicom), files)):
                    out[i] = arr
            out.flush()
            del out
            os.replace(tmp, array_path)  # complete or absent: a killed build never looks finished
        finally:
            tmp.unlink(missing_ok=True)
        return cls(array_path, files)


class CachedImageDataset(ImageFolderDataset):
    """:class:`ImageFolderDataset` reading uint8 tensors from an :class:`ImageCache` instead of image files.

    The transform receives a uint8 ``(C, H, W)`` tensor already at the training size; the pipelines of
    :func:`~sedensenet.data.build_transforms` accept it unchanged. Built with ``normalize=False`` they return
    uint8 too, and :func:`~sedensenet.data.normalize_batch` finishes whole batches: the same numbers as
    decoding the file, for a quarter of the bytes between loader processes.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        cache: ImageCache,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        in_chans: int = 3,
    ) -> None:
        super().__init__(samples, transform=transform, in_chans=in_chans)
        self.cache = cache

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        sample = self.samples[index]
        image = self.cache.image(sample.path)
        if self.transform is None:
            x = image.float() / 255.0
            return x[[c % x.shape[0] for c in range(self.in_chans)]], target(sample.label)
        return self._to_tensor(image), target(sample.label)  # type: ignore[arg-type]
