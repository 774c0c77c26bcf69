"""Small generated image folders for end-to-end tests: learnable classes plus every kind of awkward file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("狗", "猫")  # Chinese class names: dog, cat


def pattern_image(label: int, rng: np.random.Generator, size: int = 24) -> Image.Image:
    """Class 0 is bright at the top, class 1 at the bottom; noise on top so it is not trivial."""
    arr = rng.integers(0, 80, size=(size, size, 3), dtype=np.uint8)
    half = slice(0, size // 2) if label == 0 else slice(size // 2, size)
    arr[half] = np.clip(arr[half].astype(int) + 150, 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def make_folder(root: Path, per_class: int = 12, seed: int = 0, size: int = 24) -> Path:
    """root/<class>/<n>.png for the two classes, learnable from the pattern."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pattern_image(label, rng, size).save(d / f"img {i}.png")
    return root


def add_awkward_files(root: Path) -> dict[str, Path]:
    """The bad (corrupt JPEG, zero-byte, text named .png) and the odd-but-good (gray, CMYK, RGBA) files."""
    rng = np.random.default_rng(1)
    dog, cat = root / CLASSES[0], root / CLASSES[1]
    good = pattern_image(0, rng)
    buf = dog / "truncated.jpg"
    good.save(buf, format="JPEG")
    buf.write_bytes(buf.read_bytes()[:200])
    (dog / "empty.png").write_bytes(b"")
    (cat / "notes.png").write_text("this is not an image", encoding="utf-8")
    files = {"truncated": buf, "empty": dog / "empty.png", "text": cat / "notes.png"}
    pattern_image(0, rng).convert("L").save(dog / "gray.png")
    pattern_image(1, rng).convert("CMYK").save(cat / "cmyk.jpg", format="JPEG")
    rgba = pattern_image(1, rng).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(cat / "rgba.png")
    return files
