"""The decoded-image cache: the same evaluation tensors as decoding the files, reused, rebuilt on change."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from imagegen import make_folder  # noqa: E402

from sedensenet.data import ImageFolderDataset, build_transforms, normalize_batch, scan_folder  # noqa: E402
from sedensenet.data.cache import CachedImageDataset, ImageCache  # noqa: E402


@pytest.mark.parametrize("in_chans", [1, 3, 5])
def test_cached_eval_tensors_equal_decoded_ones(tmp_path: Path, in_chans: int) -> None:
    splits = scan_folder(make_folder(tmp_path / "d", per_class=4, size=40), val_split=0.25)
    tf = build_transforms(16, train=False, augment="none", mean=(0.5,), std=(0.25,), in_chans=in_chans)
    cache = ImageCache.build(splits.train + splits.val, 16, in_chans, root=tmp_path / "c")
    plain = ImageFolderDataset(splits.val, tf, in_chans)
    cached = CachedImageDataset(splits.val, cache, tf, in_chans)
    for i in range(len(plain)):
        (a, la), (b, lb) = plain[i], cached[i]
        assert a.shape == b.shape == (in_chans, 16, 16) and la == lb
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    train = CachedImageDataset(
        splits.train, cache, build_transforms(16, train=True, augment="strong", in_chans=in_chans), in_chans
    )
    assert train[0][0].shape == (in_chans, 16, 16)
    # uint8 to the loader, normalised by batch: the same numbers as the float pipeline
    u8 = CachedImageDataset(
        splits.val,
        cache,
        build_transforms(16, train=False, augment="none", in_chans=in_chans, normalize=False),
        in_chans,
    )
    batch = torch.stack([u8[i][0] for i in range(len(u8))])
    assert batch.dtype == torch.uint8
    stats = torch.full((in_chans,), 0.5), torch.full((in_chans,), 0.25)
    floats = torch.stack([plain[i][0] for i in range(len(plain))])
    torch.testing.assert_close(normalize_batch(batch, *stats), floats, atol=1e-6, rtol=0)


def test_cache_is_reused_and_rebuilt_when_a_file_changes(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "d", per_class=3, size=30)
    samples = scan_folder(data, val_split=0.0).train
    first = ImageCache.build(samples, 16, 3, root=tmp_path / "c")
    again = ImageCache.build(samples, 16, 3, root=tmp_path / "c")
    assert again.array_path == first.array_path
    assert len(list((tmp_path / "c").glob("*.npy"))) == 1
    changed = samples[0].path
    from PIL import Image

    Image.new("RGB", (30, 30), (255, 0, 0)).save(changed)
    rebuilt = ImageCache.build(samples, 16, 3, root=tmp_path / "c")
    assert rebuilt.array_path != first.array_path
    assert rebuilt.image(changed)[0].float().mean() > 250  # the new red image, not the old pixels


def test_training_with_cache_matches_training_without(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sedensenet

    data = make_folder(tmp_path / "d", per_class=6)
    common = {"data": str(data), "model": "se_densenet_tiny", "image_size": 24, "epochs": 2, "batch_size": 4,
              "augment": "none", "workers": 0, "project": str(tmp_path / "runs")}  # fmt: skip
    plain = sedensenet.train(name="plain", **common)
    monkeypatch.setenv("SEDENSENET_HOME", str(tmp_path / "home"))
    cached = sedensenet.train(name="cached", cache=True, **common)
    assert cached.history.history["val_loss"] == pytest.approx(plain.history.history["val_loss"], abs=1e-6)
    assert list((tmp_path / "home" / "cache").glob("*.npy"))
