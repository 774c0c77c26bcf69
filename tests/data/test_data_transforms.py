"""build_transforms and compute_mean_std."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from sedensenet.data import IMAGENET_MEAN, IMAGENET_STD, Sample, build_transforms, compute_mean_std


def kinds(pipeline: v2.Compose) -> list[str]:
    return [type(t).__name__ for t in pipeline.transforms]


def test_eval_squashes_and_normalises() -> None:
    image = Image.new("RGB", (40, 20), (255, 0, 128))
    x = build_transforms(16, train=False)(image)
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32
    expected = [(1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], -IMAGENET_MEAN[1] / IMAGENET_STD[1]]
    expected.append((128 / 255 - IMAGENET_MEAN[2]) / IMAGENET_STD[2])
    torch.testing.assert_close(x[:, 8, 8], torch.tensor(expected), atol=1e-5, rtol=0)
    assert kinds(build_transforms(16, train=False)) == ["Resize", "ToImage", "ToDtype", "Normalize"]


def test_train_none_equals_eval() -> None:
    assert kinds(build_transforms(8, train=True, augment="none")) == kinds(build_transforms(8, train=False))


def test_light_and_strong_pipelines() -> None:
    light = build_transforms(24, train=True, augment="light", vflip=True)
    assert kinds(light) == [
        "RandomResizedCrop",
        "RandomHorizontalFlip",
        "RandomVerticalFlip",
        "ToImage",
        "ToDtype",
        "Normalize",
    ]
    assert light.transforms[0].scale == (0.7, 1.0)
    strong = build_transforms(24, train=True, augment="strong")
    assert kinds(strong)[2:4] == ["RandomRotation", "ColorJitter"]
    assert kinds(strong)[-1] == "RandomErasing" and strong.transforms[-1].p == 0.25
    torch.manual_seed(0)
    for pipeline in (light, strong):
        x = pipeline(Image.new("RGB", (50, 30), (10, 200, 30)))
        assert x.shape == (3, 24, 24) and x.dtype == torch.float32


def test_grayscale_uses_averaged_imagenet_stats() -> None:
    pipeline = build_transforms(8, train=True, augment="strong", in_chans=1)
    jitter = next(t for t in pipeline.transforms if isinstance(t, v2.ColorJitter))
    assert jitter.saturation is None and jitter.hue is None
    x = build_transforms(8, train=False, in_chans=1)(Image.new("L", (8, 8), 255))
    assert x.shape == (1, 8, 8)
    expected = (1 - sum(IMAGENET_MEAN) / 3) / (sum(IMAGENET_STD) / 3)
    assert float(x[0, 0, 0]) == pytest.approx(expected, abs=1e-5)


def test_single_value_stats_for_grayscale() -> None:
    x = build_transforms(4, train=False, mean=(0.5,), std=(0.25,))(Image.new("L", (4, 4), 0))
    assert x.shape == (1, 4, 4)
    assert float(x.max()) == pytest.approx(-2.0)


@pytest.mark.parametrize("in_chans", [2, 5])
def test_equal_stats_of_any_length_apply_to_rgb_images(in_chans: int) -> None:
    pipeline = build_transforms(4, train=False, mean=(0.5,) * in_chans, std=(0.5,) * in_chans)
    x = pipeline(Image.new("RGB", (4, 4), (255, 0, 255)))
    assert x.shape == (3, 4, 4)
    assert x[:, 0, 0].tolist() == [1.0, -1.0, 1.0]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="choose one of: none, light, strong"):
        build_transforms(8, train=True, augment="heavy")
    with pytest.raises(ValueError, match="mean/std have 3 values but the images have 4 channels"):
        build_transforms(8, train=False, in_chans=4)
    with pytest.raises(ValueError, match="same length"):
        build_transforms(8, train=False, mean=(0.5, 0.5, 0.5), std=(0.2,))
    with pytest.raises(ValueError, match="mean/std have 2 values but the images have 3 channels"):
        build_transforms(8, train=False, mean=(0.4, 0.5), std=(0.2, 0.2))


def test_compute_mean_std_exact(tmp_path: Path) -> None:
    samples = []
    for i, value in enumerate([(0, 0, 0), (255, 255, 255), (255, 0, 51), (255, 0, 51)]):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (10, 6), value).save(path)
        samples.append(Sample(path, 0))
    mean, std = compute_mean_std(samples, image_size=4)
    assert mean == pytest.approx((0.75, 0.25, 0.35), abs=1e-6)
    # std of {0,1,1,1}, {0,1,0,0}, {0,1,0.2,0.2}
    assert std == pytest.approx((0.433013, 0.433013, 0.384057), abs=1e-6)
    gray_mean, gray_std = compute_mean_std(samples[:2], image_size=4, in_chans=1)
    assert gray_mean == pytest.approx((0.5,)) and gray_std == pytest.approx((0.5,))


def test_compute_mean_std_subset_is_seeded(tmp_path: Path) -> None:
    samples = []
    for i in range(12):
        path = tmp_path / f"{i:02d}.png"
        Image.new("L", (4, 4), i * 20).save(path)
        samples.append(Sample(path, 0))
    a = compute_mean_std(samples, 4, in_chans=1, max_images=5, seed=3)
    assert compute_mean_std(list(reversed(samples)), 4, in_chans=1, max_images=5, seed=3) == a
    assert compute_mean_std(samples, 4, in_chans=1, max_images=5, seed=4) != a
