"""Grad-CAM heat-maps and SE channel weights on a tiny model trained on two synthetic spatial patterns."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sedensenet.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from sedensenet.data import build_transforms, load_image
from sedensenet.explain import explain_images, grad_cam, se_channel_weights
from sedensenet.models import DenseNet, create_model

CLASSES = ["left", "右"]
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def _pattern(label: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """An RGB uint8 image: class 0 has a bright left half, class 1 a bright right half."""
    image = np.full((h, w, 3), 50.0) + rng.normal(0, 12, (h, w, 3))
    half = w // 2
    if label == 0:
        image[:, :half] += 150
    else:
        image[:, half:] += 150
    return np.clip(image, 0, 255).astype(np.uint8)


def _batch(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    labels = rng.integers(0, 2, n)
    images = np.stack([_pattern(int(y), 16, 16, rng) for y in labels]) / 255.0  # (B, H, W, C)
    x = (torch.from_numpy(images).float().permute(0, 3, 1, 2) - MEAN[0]) / STD[0]  # (B, C, H, W)
    return x, torch.from_numpy(labels)


@pytest.fixture(scope="module")
def trained() -> DenseNet:
    """The tiny SE-DenseNet after a few steps on the two patterns (so classes and gates differ)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = create_model("se_densenet_tiny", num_classes=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(25):
        x, y = _batch(32, rng)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    x, y = _batch(64, rng)
    assert (model.eval()(x).argmax(1) == y).float().mean() > 0.9
    return model


@pytest.fixture
def checkpoint(tmp_path: Path, trained: DenseNet) -> Path:
    meta = CheckpointMeta(model=trained.config.to_dict(), classes=CLASSES, image_size=16, mean=MEAN, std=STD)
    return save_checkpoint(tmp_path / "model.safetensors", trained, meta)


def test_grad_cam_shape_range_and_not_constant(trained: DenseNet) -> None:
    x, _ = _batch(6, np.random.default_rng(1))
    cams = grad_cam(trained, x)
    assert cams.shape == (6, 16, 16)
    assert cams.min() >= 0 and cams.max() <= 1
    assert (cams.flatten(1).std(1) > 0.05).all()
    assert torch.allclose(cams.flatten(1).max(1).values, torch.ones(6))


def test_grad_cam_moves_with_the_target(trained: DenseNet) -> None:
    x, _ = _batch(6, np.random.default_rng(2))
    cam0, cam1 = grad_cam(trained, x, target=0), grad_cam(trained, x, target=1)
    assert (cam0 - cam1).abs().mean() > 1e-3
    with torch.no_grad():
        predicted = trained(x).argmax(1).tolist()
    torch.testing.assert_close(grad_cam(trained, x), grad_cam(trained, x, target=predicted))
    with pytest.raises(ValueError, match=r"target classes must be in 0\.\.1"):
        grad_cam(trained, x, target=2)
    with pytest.raises(ValueError, match="one class per image"):
        grad_cam(trained, x, target=[0, 1])


def test_grad_cam_memory_efficient_matches_and_leaves_the_model_alone(trained: DenseNet) -> None:
    efficient = create_model("se_densenet_tiny", num_classes=2, memory_efficient=True)
    efficient.load_state_dict(trained.state_dict())
    efficient.train()
    efficient.features.norm5.eval()  # a frozen BN keeps its own mode
    x, _ = _batch(4, np.random.default_rng(3))
    torch.testing.assert_close(grad_cam(efficient, x, target=1), grad_cam(trained, x, target=1), atol=1e-5, rtol=0)
    assert efficient.training and not efficient.features.norm5.training and trained.training is False
    assert all(p.grad is None and p.requires_grad for p in efficient.parameters())
    with torch.no_grad():  # works inside no_grad too (e.g. called from an evaluation loop)
        assert grad_cam(trained, x).shape == (4, 16, 16)


def test_grad_cam_of_a_constant_map_is_zero() -> None:
    model = create_model("se_densenet_tiny", num_classes=2)
    torch.nn.init.zeros_(model.classifier.weight)  # no gradient reaches the block: no evidence anywhere
    cams = grad_cam(model, torch.randn(2, 3, 16, 16))
    assert torch.equal(cams, torch.zeros(2, 16, 16))


def _write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def test_explain_images_writes_overlays_at_image_size_and_a_grid(tmp_path: Path, checkpoint: Path) -> None:
    rng = np.random.default_rng(4)
    a = _write(tmp_path / "in" / "猫.png", _pattern(0, 24, 40, rng))
    b = _write(tmp_path / "in" / "sub" / "猫.png", _pattern(1, 31, 17, rng))  # same stem: gets a number
    bad = tmp_path / "in" / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    result = explain_images(checkpoint, [a, b, bad], tmp_path / "out", target="右")
    assert [e.source for e in result.images] == [a, b]
    assert [e.output.name for e in result.images] == ["猫_gradcam.png", "猫_2_gradcam.png"]
    for e, size in zip(result.images, [(40, 24), (17, 31)], strict=True):
        with Image.open(e.output) as im:
            assert im.size == size and im.mode == "RGB"
        assert e.target == "右" and e.predicted in CLASSES and 0.5 <= e.probability <= 1
    assert [e.predicted for e in result.images] == ["left", "右"]
    assert result.grid == tmp_path / "out" / "gradcam_grid.png" and result.grid.is_file()
    assert result.written == [e.output for e in result.images] + [result.grid]
    assert [p for p, _ in result.skipped] == [bad]


def test_explain_images_overlay_follows_the_target(tmp_path: Path, checkpoint: Path) -> None:
    image = _write(tmp_path / "x.png", _pattern(0, 16, 16, np.random.default_rng(5)))
    by_name = explain_images(checkpoint, [image], tmp_path / "left", target="left").images[0]
    by_index = explain_images(checkpoint, [image], tmp_path / "idx", target="0").images[0]
    other = explain_images(checkpoint, [image], tmp_path / "right", target="1").images[0]
    pixels = [np.asarray(Image.open(e.output), dtype=np.float64) for e in (by_name, by_index, other)]
    np.testing.assert_array_equal(pixels[0], pixels[1])
    assert np.abs(pixels[0] - pixels[2]).mean() > 1.0


def test_explain_images_bad_arguments(tmp_path: Path, checkpoint: Path) -> None:
    image = _write(tmp_path / "x.png", _pattern(0, 16, 16, np.random.default_rng(6)))
    with pytest.raises(ValueError, match=r"unknown target class 'dog'; choose one of \['left', '右'\]"):
        explain_images(checkpoint, [image], tmp_path / "out", target="dog")
    with pytest.raises(ValueError, match="unknown explain method 'lime'"):
        explain_images(checkpoint, [image], tmp_path / "out", method="lime")


def _folder(root: Path, per_class: int = 4) -> Path:
    rng = np.random.default_rng(7)
    for label, name in enumerate(CLASSES):
        for i in range(per_class):
            _write(root / name / f"{i}.png", _pattern(label, 16 + 2 * i, 16, rng))
    return root


def _expected_gates(checkpoint: Path, data: Path, layer: str) -> np.ndarray:
    """Per-class mean gates computed directly, without the code under test."""
    model, meta = load_checkpoint(checkpoint)
    se = model.se_modules()[layer]
    seen: list[torch.Tensor] = []
    se.gate.register_forward_hook(lambda module, inputs, output: seen.append(output.flatten(1)))
    transform = build_transforms(16, train=False, augment="none", mean=MEAN, std=STD, in_chans=3)
    rows = []
    for name in CLASSES:
        x = torch.stack([transform(load_image(p)) for p in sorted((data / name).iterdir())])
        with torch.no_grad():
            model(x)
        rows.append(seen.pop().mean(0).numpy())
    return np.stack(rows)


def test_se_channel_weights_files_and_values(tmp_path: Path, checkpoint: Path, trained: DenseNet) -> None:
    data = _folder(tmp_path / "data")
    result = se_channel_weights(checkpoint, data, tmp_path / "se")
    channels = trained.features.se_head.channels
    assert result.layer == "features.se_head" and result.classes == CLASSES and result.counts == [4, 4]
    assert result.matrix.shape == (2, channels)
    np.testing.assert_allclose(result.matrix, _expected_gates(checkpoint, data, "features.se_head"), atol=1e-6)

    with open(result.paths["csv"], encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["class", *(f"ch{c}" for c in range(channels))]
    assert [r[0] for r in rows[1:]] == CLASSES and all(len(r) == channels + 1 for r in rows)
    np.testing.assert_allclose(np.asarray([r[1:] for r in rows[1:]], dtype=float), result.matrix, atol=1e-6)
    assert result.paths["png"] == tmp_path / "se" / "se_weights.png" and result.paths["png"].stat().st_size > 0

    summary = json.loads(result.paths["json"].read_text(encoding="utf-8"))
    assert summary["layer"] == "features.se_head" and summary["channels"] == channels
    (pair,) = summary["distances"]
    assert pair["classes"] == CLASSES
    assert pair["mean_abs_diff"] == pytest.approx(np.abs(result.matrix[0] - result.matrix[1]).mean())
    assert pair["mean_abs_diff"] > 0 and -1 <= pair["cosine"] <= 1
    top = summary["top_channels"]
    assert len(top) == min(10, channels) and top[0]["f_ratio"] >= top[-1]["f_ratio"]
    assert set(top[0]["class_means"]) == set(CLASSES)


def test_se_channel_weights_chosen_layer_and_errors(tmp_path: Path, checkpoint: Path, trained: DenseNet) -> None:
    data = _folder(tmp_path / "data", per_class=2)
    result = se_channel_weights(checkpoint, data, tmp_path / "se", se_layer="features.se1", batch_size=3)
    assert result.matrix.shape == (2, trained.features.se1.channels)
    np.testing.assert_allclose(result.matrix, _expected_gates(checkpoint, data, "features.se1"), atol=1e-6)
    with pytest.raises(ValueError, match="unknown SE layer 'features.nope'; this model has: .*features.se_head"):
        se_channel_weights(checkpoint, data, tmp_path / "se", se_layer="features.nope")

    plain = create_model("se_densenet_tiny", num_classes=2, se_placement=())
    meta = CheckpointMeta(model=plain.config.to_dict(), classes=CLASSES, image_size=16, mean=MEAN, std=STD)
    path = save_checkpoint(tmp_path / "plain.safetensors", plain, meta)
    with pytest.raises(ValueError, match="has no SE layers"):
        se_channel_weights(path, data, tmp_path / "se2")
    assert not (tmp_path / "se2").exists()


@pytest.mark.filterwarnings("error")
def test_new_plots_validate_and_draw(tmp_path: Path) -> None:
    from sedensenet.reports import plot_gradcam_grid, plot_se_weights

    image = np.zeros((10, 12, 3), dtype=np.uint8)
    path = plot_gradcam_grid([image] * 4, [image + 200] * 4, ["a", "b", "猫", "d"], tmp_path / "grid.png", ncols=3)
    with Image.open(path) as im:
        assert im.size == (3 * 440, 2 * 260)
    assert plot_gradcam_grid([], [], [], tmp_path / "empty.png").is_file()
    with pytest.raises(ValueError, match="2 images, 1 overlays and 2 titles"):
        plot_gradcam_grid([image] * 2, [image], ["a", "b"], tmp_path / "x.png")
    matrix = np.random.default_rng(0).random((3, 40))
    assert plot_se_weights(matrix, ["a", "b", "c"], tmp_path / "se.png", order=list(range(39, -1, -1))).is_file()
    with pytest.raises(ValueError, match=r"matrix must be \(len\(classes\)=2, channels\)"):
        plot_se_weights(matrix, ["a", "b"], tmp_path / "se.png")
