"""Built-in demo sets written out as PNG class folders."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sedensenet.data import BUILTIN, DataError, is_builtin, resolve_data, scan_folder, write_builtin
from sedensenet.data.builtin import MARKER


def test_digits_written_and_scanned(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    root = resolve_data("builtin:digits", cache_dir=tmp_path)
    assert root == tmp_path / "datasets" / "digits"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [str(d) for d in range(10)]
    files = sorted(root.rglob("*.png"))
    assert len(files) == 1797
    digits = load_digits()
    assert [len(list((root / str(d)).iterdir())) for d in range(10)] == np.bincount(digits.target).tolist()
    with Image.open(root / str(digits.target[5]) / "0005.png") as im:
        assert im.mode == "L" and im.size == (8, 8)
        np.testing.assert_array_equal(np.asarray(im), np.rint(digits.images[5] * 255 / 16).astype(np.uint8))
    assert (root / MARKER).is_file()

    splits = scan_folder(root, val_split=0.2)
    assert splits.classes == [str(d) for d in range(10)]
    assert len(splits.train) + len(splits.val) == 1797 and splits.skipped == []


def test_written_once_and_incomplete_folder_rebuilt(tmp_path: Path) -> None:
    dest = tmp_path / "digits"
    dest.mkdir()
    (dest / "0").mkdir()
    (dest / "0" / "half.png").write_bytes(b"")  # an interrupted earlier write: no marker
    write_builtin("digits", dest)
    assert not (dest / "0" / "half.png").exists()
    marker = (dest / MARKER).stat().st_mtime_ns
    assert write_builtin("digits", dest) == dest
    assert (dest / MARKER).stat().st_mtime_ns == marker
    assert [p.name for p in tmp_path.iterdir()] == ["digits"]  # no temporary folder left


def test_faces(tmp_path: Path) -> None:
    root = resolve_data("builtin:faces", cache_dir=tmp_path)
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["face", "non_face"]
    assert len(list((root / "face").glob("*.png"))) == 100
    assert len(list((root / "non_face").glob("*.png"))) == 100
    with Image.open(root / "face" / "0000.png") as im:
        assert im.mode == "L" and im.size == (25, 25)
    assert (root / "non_face" / "0100.png").is_file()


def test_faces_without_scikit_image(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    with pytest.raises(DataError, match="pip install scikit-image"):
        resolve_data("builtin:faces", cache_dir=tmp_path)
    assert list((tmp_path / "datasets").iterdir()) == []


def test_unknown_builtin_lists_choices(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="choose one of: builtin:digits, builtin:faces"):
        resolve_data("builtin:cifar", cache_dir=tmp_path)


def test_default_cache_dir_and_plain_paths(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SEDENSENET_HOME", str(tmp_path / "home"))
    assert resolve_data("builtin:digits") == tmp_path / "home" / "datasets" / "digits"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_data("~/pets") == tmp_path / "pets"
    assert resolve_data(Path("some/where")) == Path("some/where")
    assert is_builtin("builtin:faces") and not is_builtin("faces") and not is_builtin(Path("builtin:faces"))


def test_builtin_settings_are_valid_training_settings() -> None:
    from sedensenet import list_models
    from sedensenet.config import TrainConfig

    assert set(BUILTIN) == {"digits", "faces", "digit-pairs"}
    for settings in BUILTIN.values():
        config = TrainConfig.from_dict(settings)
        assert config.model in list_models() and config.in_chans == 1  # every set is grayscale
