"""Fake image folders made with PIL in a temporary directory."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_image(path: Path, size: tuple[int, int] = (8, 8), mode: str = "RGB", value: int = 0) -> Path:
    """A small image whose pixels depend on ``value`` (so files differ), saved in the format of its suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    pixels = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels).save(path)
    return path


def write_tree(root: Path, counts: dict[str, int], ext: str = ".png", order: Iterable[int] | None = None) -> Path:
    """``root/<class>/img_<i>.<ext>`` for each class; ``order`` permutes the creation order of the files."""
    jobs = [(name, i) for name, n in counts.items() for i in range(n)]
    for k in order if order is not None else range(len(jobs)):
        name, i = jobs[k]
        write_image(root / name / f"img_{i}{ext}", value=zlib.crc32(f"{name}/{i}".encode()))
    return root


def huge_png(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A PNG whose header declares ``width`` x ``height`` pixels, with no pixel data at all."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def make_tree() -> Callable[..., Path]:
    return write_tree


@pytest.fixture
def make_image() -> Callable[..., Path]:
    return write_image


@pytest.fixture
def make_huge_png() -> Callable[..., Path]:
    return huge_png
