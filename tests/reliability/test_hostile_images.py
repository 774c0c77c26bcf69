"""Hostile image files: random and mutated bytes of every supported format, crafted huge dimensions, odd names,
links and unreadable files. Each file must end as "ok" (and then load) or "skipped: reason" — never an uncaught
exception or a hang.

``SEDENSENET_FUZZ_EXAMPLES`` sets the number of fuzz cases per test (default 200 in CI; e.g. 5000 on demand).
The cases are derandomized: a given count always tries the same inputs.
"""

from __future__ import annotations

import builtins
import io
import os
import random
import signal
import struct
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

import sedensenet
from sedensenet import checkpoint as ckpt
from sedensenet.data import DEFAULT_MAX_PIXELS, ImageFolderDataset, Sample, build_transforms, check_image, scan_folder

FUZZ_EXAMPLES = int(os.environ.get("SEDENSENET_FUZZ_EXAMPLES", "200"))
HANG_SECONDS = 60  # a guard against a decoder that never returns, not a speed test
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
OUTCOMES: Counter[str] = Counter()
"""Reason (first words) -> count over the fuzz cases run in this session, for docs/reliability.md."""


def _encode(image: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def seed_images() -> dict[str, tuple[str, bytes]]:
    """Small valid files of every supported format and the modes users meet: name -> (suffix, bytes)."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8))
    gray16 = Image.fromarray(rng.integers(0, 65536, (10, 12), dtype=np.uint16))
    frames = [rgb.convert("P"), rgb.rotate(90).convert("P")]
    return {
        "png": (".png", _encode(rgb, "PNG")),
        "png16": (".png", _encode(gray16, "PNG")),
        "png_palette": (".png", _encode(rgb.convert("P"), "PNG")),
        "jpeg": (".jpg", _encode(rgb, "JPEG", quality=90)),
        "jpeg_progressive": (".jpg", _encode(rgb, "JPEG", progressive=True)),
        "jpeg_cmyk": (".jpg", _encode(rgb.convert("CMYK"), "JPEG")),
        "gif": (".gif", _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])),
        "bmp": (".bmp", _encode(rgb, "BMP")),
        "tiff": (".tif", _encode(rgb, "TIFF", compression="tiff_deflate")),
        "tiff16": (".tiff", _encode(gray16, "TIFF")),
        "webp": (".webp", _encode(rgb, "WEBP", quality=80)),
        "webp_lossless": (".webp", _encode(rgb.convert("RGBA"), "WEBP", lossless=True)),
    }


SEEDS = seed_images()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def with_dimensions(name: str, data: bytes, width: int, height: int) -> bytes:
    """The file with its header's width and height replaced (checksums kept valid where the format has them)."""
    b = bytearray(data)
    if name.startswith("png"):
        ihdr = bytes(b[16:29])
        return bytes(b[:8]) + _png_chunk(b"IHDR", struct.pack(">II", width, height) + ihdr[8:]) + bytes(b[33:])
    if name == "bmp":
        b[18:26] = struct.pack("<ii", min(width, 2**31 - 1), min(height, 2**31 - 1))
    elif name == "gif":
        b[6:10] = struct.pack("<HH", min(width, 65535), min(height, 65535))
    elif name.startswith("jpeg"):
        sof = max(b.find(b"\xff\xc0"), b.find(b"\xff\xc2"))
        if sof > 0:
            b[sof + 5 : sof + 9] = struct.pack(">HH", min(height, 65535), min(width, 65535))
    return bytes(b)


@st.composite
def hostile_files(draw: st.DrawFn) -> tuple[str, bytes]:
    """(suffix, bytes): a seed image truncated, bit-flipped, spliced, re-dimensioned, or plain random bytes."""
    name = draw(st.sampled_from(sorted(SEEDS)))
    suffix, data = SEEDS[name]
    kind = draw(st.sampled_from(["truncate", "flip", "splice", "dimensions", "random", "header_only"]))
    if kind == "truncate":
        return suffix, data[: draw(st.integers(0, len(data) - 1))]
    if kind == "flip":
        b = bytearray(data)
        for pos, value in draw(st.lists(st.tuples(st.integers(0, len(b) - 1), st.integers(0, 255)), max_size=8)):
            b[pos] = value
        return suffix, bytes(b)
    if kind == "splice":
        at = draw(st.integers(0, len(data)))
        return suffix, data[:at] + draw(st.binary(max_size=64)) + data[at + draw(st.integers(0, 64)) :]
    if kind == "dimensions":
        small = st.integers(1, 2048)
        huge = st.integers(DEFAULT_MAX_PIXELS // 1000, 2**31 - 1)
        width, height = draw(st.sampled_from([(small, small), (huge, huge), (huge, small), (small, huge)]))
        return suffix, with_dimensions(name, data, draw(width), draw(height))
    if kind == "header_only":
        return suffix, data[: draw(st.integers(1, 64))]
    return draw(st.sampled_from([s for s, _ in SEEDS.values()])), draw(st.binary(max_size=2048))


@contextmanager
def hang_guard(seconds: int = HANG_SECONDS) -> Iterator[None]:
    def hung(signum: int, frame: object) -> None:
        raise AssertionError(f"no answer after {seconds}s: the decoder hangs")

    if not hasattr(signal, "SIGALRM"):  # Windows: no alarm; a hang shows as CI's own timeout
        yield
        return
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


EVAL = build_transforms(16, train=False, augment="none", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@FUZZ
@given(case=hostile_files())
def test_fuzzed_image_is_ok_and_loads_or_skipped_with_a_reason(tmp_path_factory, case: tuple[str, bytes]) -> None:
    suffix, data = case
    path = tmp_path_factory.mktemp("fuzz", numbered=True) / f"case{suffix}"
    path.write_bytes(data)
    with hang_guard():
        reason = check_image(path)
    OUTCOMES[reason.split(":")[0] if reason else "ok"] += 1
    if reason is not None:
        assert isinstance(reason, str) and reason.strip()
        return
    with hang_guard():  # what the scan passed, the training loader must load
        x, label = ImageFolderDataset([Sample(path, 0)], transform=EVAL, in_chans=3)[0]
    assert x.shape == (3, 16, 16) and bool(torch.isfinite(x).all()) and label == 0


@pytest.mark.parametrize("name", sorted(n for n in SEEDS if n.startswith(("png", "bmp", "gif", "jpeg"))))
def test_declared_dimensions_over_the_limit_are_refused_before_decoding(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    suffix, data = SEEDS[name]
    path = tmp_path / f"bomb{suffix}"
    path.write_bytes(with_dimensions(name, data, 60_000, 60_000))
    decoded: list[str] = []
    real_load = Image.Image.load

    def spy(self: Image.Image) -> object:
        decoded.append(name)
        return real_load(self)

    monkeypatch.setattr(Image.Image, "load", spy)
    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    reason = check_image(path)
    assert reason is not None and reason.startswith("too large: 3600000000 pixels")
    assert not decoded


def test_a_folder_of_hostile_files_is_scanned_and_the_good_ones_train(tmp_path: Path) -> None:
    """Mutated files, odd names (spaces, Chinese, emoji), hidden files, a link to itself, a dangling link, a link
    loop between folders and an unreadable file: the scan lists each bad one with a reason, the rest load."""
    rng = random.Random(7)
    root = tmp_path / "数据 data"
    good: list[Path] = []
    for cls in ("猫 cat", "dog 🐶"):
        d = root / cls
        d.mkdir(parents=True)
        for i, (name, (suffix, data)) in enumerate(sorted(SEEDS.items())):
            path = d / f"{name} {i} 图像 😀{suffix}"
            path.write_bytes(data)
            good.append(path)
            cut = bytearray(data[: rng.randint(1, len(data) - 1)])
            (d / f"cut {name}{suffix}").write_bytes(bytes(cut))
        for hidden in (".DS_Store", "Thumbs.db", "._resource_fork.jpg", "desktop.ini"):
            (d / hidden).write_bytes(b"\0\1\2")
        (d / "self.png").symlink_to(d / "self.png")
        (d / "dangling.jpg").symlink_to(d / "nowhere.jpg")
        (d / "loop").symlink_to(root)  # a folder link back up: not followed, so no endless walk
    locked = root / "猫 cat" / "locked.png"
    locked.write_bytes(SEEDS["png"][1])
    real_open = builtins.open

    def guarded_open(file: object, *args: object, **kwargs: object) -> object:
        if isinstance(file, str | os.PathLike) and Path(file) == locked:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:  # as root chmod 000 cannot refuse a read: refuse it here
        mp.setattr(builtins, "open", guarded_open)
        splits = scan_folder(root, val_split=0)
    reasons = {s.path.name: s.reason for s in splits.skipped}
    assert {s.path for s in splits.train} == set(good)
    assert reasons["self.png"].startswith("unreadable") and reasons["dangling.jpg"].startswith("unreadable")
    assert reasons["locked.png"] == "unreadable: permission denied"
    assert all(n.startswith(("cut ", "self", "dangling", "locked")) for n in reasons)
    assert not any(n.startswith((".", "Thumbs", "desktop")) for n in reasons)
    ds = ImageFolderDataset(splits.train, transform=EVAL)
    assert all(ds[i][0].shape == (3, 16, 16) for i in range(len(ds))) and not ds.bad


def test_predict_on_a_folder_with_bad_files_predicts_the_good_and_reports_the_bad(tmp_path: Path) -> None:
    model = sedensenet.create_model("se_densenet_tiny", num_classes=2)
    meta = ckpt.CheckpointMeta(model=model.config.to_dict(), classes=["a", "b"], image_size=16)
    ckpt.save_checkpoint(tmp_path / "m.safetensors", model, meta)
    folder = tmp_path / "to predict"
    folder.mkdir()
    bad: dict[str, Callable[[Path], object]] = {
        "empty.png": lambda p: p.write_bytes(b""),
        "text.jpg": lambda p: p.write_text("not an image"),
        "cut.webp": lambda p: p.write_bytes(SEEDS["webp"][1][:40]),
        "bomb.png": lambda p: p.write_bytes(with_dimensions("png", SEEDS["png"][1], 50_000, 50_000)),
    }
    for name, make in bad.items():
        make(folder / name)
    for name, (suffix, data) in SEEDS.items():
        (folder / f"good {name}{suffix}").write_bytes(data)
    (folder / ".DS_Store").write_bytes(b"\0")
    preds = sedensenet.predict(tmp_path / "m.safetensors", [folder], device="cpu")
    by_name = {Path(p.path).name: p for p in preds}
    assert set(by_name) == set(bad) | {f"good {n}{s}" for n, (s, _) in SEEDS.items()}
    assert all(by_name[n].error and by_name[n].label is None for n in bad)
    assert "too large" in by_name["bomb.png"].error
    assert all(p.label in ("a", "b") and not p.error for n, p in by_name.items() if n.startswith("good"))
