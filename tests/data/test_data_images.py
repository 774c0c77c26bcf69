"""check_image, load_image (every mode, EXIF orientation) and ImageFolderDataset."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from sedensenet.data import DataError, ImageFolderDataset, Sample, check_image, load_image, scan_folder

# ------------------------------------------------------------------------------------------------ check_image


def test_check_image_good_file(tmp_path: Path, make_image) -> None:
    assert check_image(make_image(tmp_path / "ok.png")) is None


def test_check_image_refuses_by_pixel_count_before_decoding(tmp_path: Path, make_image, monkeypatch) -> None:
    path = make_image(tmp_path / "big.png", size=(100, 100))

    def no_load(self):
        raise AssertionError("load() must not be called for a too-large image")

    monkeypatch.setattr(Image.Image, "load", no_load)
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_load)
    assert check_image(path, max_pixels=5000) == "too large: 10000 pixels > limit 5000"


def test_check_image_huge_header_refused(tmp_path: Path, make_huge_png) -> None:
    path = make_huge_png(tmp_path / "bomb.png", width=20_000, height=10_000)  # 2e8 pixels
    assert check_image(path) == "too large: 200000000 pixels > limit 89478485"


def test_check_image_reasons(tmp_path: Path, make_image) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("plain text")
    full = make_image(tmp_path / "full.png", size=(64, 64)).read_bytes()
    (tmp_path / "cut.png").write_bytes(full[: len(full) // 2])
    assert check_image(tmp_path / "empty.png") == "empty file (0 bytes)"
    assert check_image(tmp_path / "text.jpg") == "not an image (cannot identify image file)"
    assert check_image(tmp_path / "cut.png").startswith("truncated or corrupt image: ")
    assert check_image(tmp_path / "missing.png").startswith("unreadable: file not found")


def test_check_image_permission_denied(tmp_path: Path, make_image, monkeypatch) -> None:
    path = make_image(tmp_path / "locked.png")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Image, "open", denied)
    assert check_image(path) == "unreadable: permission denied"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_check_image_does_not_hang_on_a_pipe(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.png")
    assert check_image(tmp_path / "pipe.png") == "not a regular file"


# ------------------------------------------------------------------------------------------------ load_image


def test_grayscale_png(tmp_path: Path) -> None:
    path = tmp_path / "g.png"
    Image.fromarray(np.full((4, 6), 77, dtype=np.uint8)).save(path)
    assert load_image(path, in_chans=1).mode == "L"
    rgb = load_image(path, in_chans=3)
    assert rgb.mode == "RGB" and rgb.size == (6, 4)
    assert rgb.getpixel((0, 0)) == (77, 77, 77)
    assert load_image(path, in_chans=4).getpixel((0, 0)) == (77, 77, 77, 255)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "c.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path, quality=100)  # pure red in CMYK
    with Image.open(path) as im:
        assert im.mode == "CMYK"
    rgb = load_image(path, in_chans=3)
    assert rgb.mode == "RGB"
    r, g, b = rgb.getpixel((4, 4))
    assert r > 240 and g < 15 and b < 15
    assert load_image(path, in_chans=1).mode == "L"


def test_rgba_png_drops_alpha(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.new("RGBA", (5, 5), (10, 20, 30, 0)).save(path)
    rgb = load_image(path, in_chans=3)
    assert rgb.mode == "RGB"
    assert rgb.getpixel((2, 2)) == (10, 20, 30)
    assert load_image(path, in_chans=4).getpixel((2, 2)) == (10, 20, 30, 0)


def test_palette_gif_first_frame(tmp_path: Path) -> None:
    path = tmp_path / "p.gif"
    frames = []
    for colour in [(200, 10, 10), (10, 200, 10)]:
        im = Image.new("P", (6, 6), 1)
        im.putpalette([0, 0, 0, *colour] + [0] * 762)
        frames.append(im)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    with Image.open(path) as im:
        assert im.mode == "P" and im.n_frames == 2
    rgb = load_image(path, in_chans=3)
    assert rgb.mode == "RGB"
    assert rgb.getpixel((3, 3)) == (200, 10, 10)
    assert load_image(path, in_chans=1).mode == "L"


def test_16bit_png_scaled_not_clipped(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    Image.fromarray(np.array([[0, 257 * 100, 65535, 1000]], dtype=np.uint16)).save(path)
    with Image.open(path) as im:
        assert im.mode == "I;16"
    gray = load_image(path, in_chans=1)
    assert gray.mode == "L"
    assert list(np.asarray(gray)[0]) == [0, 100, 255, 4]  # 1000 / 257 = 3.9
    assert np.asarray(load_image(path, in_chans=3))[0, 1].tolist() == [100, 100, 100]


def test_32bit_int_and_float_images(tmp_path: Path) -> None:
    ints = tmp_path / "i.tif"
    Image.fromarray(np.array([[0, 257 * 10, 65535]], dtype=np.int32)).save(ints)
    assert list(np.asarray(load_image(ints, in_chans=1))[0]) == [0, 10, 255]
    floats = tmp_path / "f.tif"
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(floats)
    assert list(np.asarray(load_image(floats, in_chans=1))[0]) == [0, 128, 255]
    wide = tmp_path / "w.tif"
    Image.fromarray(np.array([[-2.0, 0.0, 2.0]], dtype=np.float32)).save(wide)
    assert list(np.asarray(load_image(wide, in_chans=1))[0]) == [0, 128, 255]


def test_exif_orientation_applied(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    stored = Image.new("RGB", (20, 10), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 5, 10))  # the left quarter is red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    stored.save(path, exif=exif.tobytes(), quality=95)
    image = load_image(path, in_chans=3)
    assert image.size == (10, 20)
    r, _, b = image.getpixel((5, 1))  # the left edge became the top
    assert r > 200 and b < 60
    r, _, b = image.getpixel((5, 18))
    assert r < 60 and b > 200


def test_bad_in_chans(tmp_path: Path, make_image) -> None:
    with pytest.raises(ValueError, match="in_chans"):
        load_image(make_image(tmp_path / "x.png"), in_chans=0)


# ------------------------------------------------------------------------------------------------ dataset


def test_dataset_items_and_targets(tmp_path: Path, make_tree) -> None:
    make_tree(tmp_path, {"a": 2, "b": 3})
    splits = scan_folder(tmp_path, val_split=0)
    ds = ImageFolderDataset(splits.train)
    assert len(ds) == 5
    assert ds.targets == [0, 0, 1, 1, 1]
    x, y = ds[4]
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and y == 1
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    expected = torch.from_numpy(np.array(Image.open(splits.train[4].path).convert("RGB"))).permute(2, 0, 1)
    torch.testing.assert_close(x, expected.float() / 255)


def test_dataset_in_chans(tmp_path: Path, make_image) -> None:
    path = make_image(tmp_path / "x.png", size=(4, 3))
    gray, _ = ImageFolderDataset([Sample(path, 0)], in_chans=1)[0]
    assert gray.shape == (1, 3, 4)
    two, _ = ImageFolderDataset([Sample(path, 0)], in_chans=2)[0]
    five, _ = ImageFolderDataset([Sample(path, 0)], in_chans=5)[0]
    rgb, _ = ImageFolderDataset([Sample(path, 0)], in_chans=3)[0]
    assert two.shape == (2, 3, 4) and five.shape == (5, 3, 4)
    torch.testing.assert_close(two, rgb[:2])
    torch.testing.assert_close(five, rgb[[0, 1, 2, 0, 1]])


def test_dataset_survives_file_deleted_after_scan(tmp_path: Path, make_tree, caplog) -> None:
    make_tree(tmp_path, {"a": 2, "b": 2})
    splits = scan_folder(tmp_path, val_split=0)
    ds = ImageFolderDataset(splits.train, transform=lambda im: torch.zeros(3, 2, 2))
    gone = splits.train[1].path
    gone.unlink()
    splits.train[2].path.write_bytes(b"garbage")  # changed on disk
    with caplog.at_level(logging.WARNING, logger="sedensenet.data"):
        assert ds[1][1] == 1  # sample 1 (class a) is gone; sample 2 is broken: sample 3 (class b) instead
        assert ds[1][1] == 1
        assert ds[2][1] == 1
        assert ds[0][1] == 0
    assert ds.bad == {1, 2}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # once per bad file
    assert str(gone) in warnings[0]


def test_dataset_all_files_gone(tmp_path: Path, make_tree) -> None:
    make_tree(tmp_path, {"a": 1, "b": 1})
    splits = scan_folder(tmp_path, val_split=0)
    for s in splits.train:
        s.path.unlink()
    with pytest.raises(DataError, match="none of the 2 images could be loaded"):
        ImageFolderDataset(splits.train)[0]


def test_dataset_works_with_dataloader(tmp_path: Path, make_tree) -> None:
    make_tree(tmp_path, {"a": 3, "b": 3})
    ds = ImageFolderDataset(scan_folder(tmp_path, val_split=0).train)
    x, y = next(iter(torch.utils.data.DataLoader(ds, batch_size=6)))
    assert x.shape == (6, 3, 8, 8)
    assert y.tolist() == [0, 0, 0, 1, 1, 1]
