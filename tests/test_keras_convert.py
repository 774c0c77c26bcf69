"""Keras weights in: the tutorial's SE-DenseNet, saved by tf.keras 2 and Keras 3, converted without TensorFlow.

The fixtures in ``tests/fixtures/keras`` come from ``tools/make_keras_fixtures.py`` (the tutorial's model at
blocks [2, 2, 2, 2], growth rate 8, 16 stem filters, 32x32 inputs, 2 classes, trained a few Adam steps) with the
probabilities Keras gave on fixed uint8 images.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from sedensenet.checkpoint import load_checkpoint
from sedensenet.keras_convert import (
    KERAS_MEAN,
    KERAS_STD,
    KerasConvertError,
    Slot,
    convert_keras,
    convert_keras_file,
    match_layers,
    read_keras_file,
    tutorial_layout,
)
from sedensenet.models import DenseNet, create_model, model_config

h5py = pytest.importorskip("h5py")

FIXTURES = Path(__file__).parent / "fixtures" / "keras"
FORMATS = {
    "tf2_model.h5": "tf.keras 2 full model (.h5)",
    "tf2_weights.h5": "tf.keras 2 weights (.h5)",
    "tf2_model.keras": ".keras archive (Keras 2.21.0)",
    "k3_model.weights.h5": "Keras 3 weights (.weights.h5)",
    "k3_model.keras": ".keras archive (Keras 3.15.1)",
    "k3_blocks1211.weights.h5": "Keras 3 weights (.weights.h5)",
}


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "expected.npz") as data:
        return dict(data)


def probabilities(model: torch.nn.Module, images: np.ndarray, mean: list[float], std: list[float]) -> np.ndarray:
    """Our preprocessing, (x / 255 - mean) / std, on uint8 NHWC images, then softmax of the logits."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255  # (B, 3, H, W) in 0..1
    x = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    with torch.no_grad():
        return torch.softmax(model(x), dim=1).numpy()


def test_fixtures_are_small() -> None:
    total = sum(p.stat().st_size for p in FIXTURES.iterdir())
    assert total < 5 * 2**20, f"Keras fixtures take {total / 2**20:.1f} MB"


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_against_keras(name: str, expected: dict[str, np.ndarray], tmp_path: Path) -> None:
    """Each format converts, goes through our checkpoint, and reproduces Keras' probabilities within 1e-4."""
    out = convert_keras_file(FIXTURES / name, tmp_path / "m.safetensors", model="keras_se_densenet121")
    model, meta = load_checkpoint(out)
    probs = probabilities(model, expected["inputs"], meta.mean, meta.std)
    diff = np.abs(probs - expected[f"probs_{name}"]).max()
    assert diff <= 1e-4, f"{name}: max abs difference {diff:.2e}"
    assert meta.extra["keras_format"] == FORMATS[name]
    assert meta.mean == KERAS_MEAN and meta.std == KERAS_STD
    assert meta.classes == ["0", "1"]
    config = model.config
    assert list(config.block_config) == ([1, 2, 1, 1] if "1211" in name else [2, 2, 2, 2])
    assert (config.growth_rate, config.num_init_features, config.bn_size, config.se_rd_channels) == (8, 16, 4, 16)
    assert config.norm_eps == pytest.approx(1.001e-5) and config.se_placement == ("head",)
    # Full-model files record the input size; weights-only files fall back to the preset's 224.
    assert meta.image_size == (32 if name.endswith((".keras", "model.h5")) else 224)


def test_preprocessing_gives_raw_pixels() -> None:
    """mean 0, std 1/255 turn our x/255 back into the 0..255 pixels the tutorial's Keras model takes."""
    pixels = torch.arange(256, dtype=torch.float32)
    ours = (pixels / 255 - KERAS_MEAN[0]) / KERAS_STD[0]
    torch.testing.assert_close(ours, pixels, atol=1e-4, rtol=0)


def test_against_keras_through_our_eval_pipeline(expected: dict[str, np.ndarray], tmp_path: Path) -> None:
    """The project's evaluation transform, fed the checkpoint's image size, mean and std, matches Keras too."""
    from PIL import Image

    from sedensenet.data.transforms import build_transforms

    out = convert_keras_file(FIXTURES / "tf2_model.h5", tmp_path / "m.safetensors", model="keras_se_densenet121")
    model, meta = load_checkpoint(out)
    assert meta.image_size == expected["inputs"].shape[1]  # the file's own input size: no resampling
    transform = build_transforms(meta.image_size, train=False, mean=meta.mean, std=meta.std)
    x = torch.stack([transform(Image.fromarray(image)) for image in expected["inputs"]])
    torch.testing.assert_close(x, torch.from_numpy(expected["inputs"]).permute(0, 3, 1, 2).float(), atol=1e-4, rtol=0)
    with torch.no_grad():
        probs = torch.softmax(model(x), dim=1).numpy()
    assert np.abs(probs - expected["probs_tf2_model.h5"]).max() <= 1e-4


@pytest.mark.parametrize("name", ["k3_model.weights.h5", "k3_model.keras", "k3_blocks1211.weights.h5"])
def test_keras3_creation_order_matches_recorded_names(name: str, caplog: pytest.LogCaptureFixture) -> None:
    """Keras 3.15 records each layer's name beside its variables: the n-th Conv2D/BN is the tutorial's n-th."""
    kf = read_keras_file(FIXTURES / name)
    assert not kf.by_name and sum(layer.name is not None for layer in kf.layers) > 10
    blocks = [1, 2, 1, 1] if "1211" in name else [2, 2, 2, 2]
    net = DenseNet(model_config("keras_se_densenet121", 2, block_config=blocks, growth_rate=8, num_init_features=16))
    match = match_layers(kf, tutorial_layout(blocks), net.state_dict())
    assert match.renamed == [] and match.missing == [] and match.unused == [] and match.disagree == []
    with caplog.at_level(logging.WARNING, logger="sedensenet.keras_convert"):
        convert_keras(FIXTURES / name, classes=["cat", "dog"])
    assert not caplog.records


def test_classes_and_image_size(tmp_path: Path) -> None:
    out = convert_keras_file(
        FIXTURES / "tf2_weights.h5", tmp_path / "m.safetensors", num_classes=2, classes=["cats", "dogs"], image_size=64
    )
    _, meta = load_checkpoint(out)
    assert meta.classes == ["cats", "dogs"] and meta.image_size == 64 and meta.preset == "keras_se_densenet201"
    with pytest.raises(KerasConvertError, match="3 class names given for num_classes=2"):
        convert_keras(FIXTURES / "tf2_weights.h5", num_classes=2, classes=["a", "b", "c"])


# ------------------------------------------------------------------------------------------------ errors


def test_wrong_blocks_by_name_lists_layers() -> None:
    with pytest.raises(KerasConvertError) as info:
        convert_keras(FIXTURES / "tf2_weights.h5", blocks=[2, 2, 2, 3])
    message = str(info.value)
    assert "missing from the file (4): conv5_block3_0_bn, conv5_block3_1_conv, conv5_block3_1_bn" in message
    assert "the file itself looks like block_config [2, 2, 2, 2]" in message
    with pytest.raises(KerasConvertError) as info:
        convert_keras(FIXTURES / "tf2_model.h5", blocks=[1, 2, 2, 2])
    message = str(info.value)
    assert "in the file but not used (4): conv2_block2_0_bn, conv2_block2_1_conv, conv2_block2_1_bn" in message
    assert "pool2_bn gamma: file (32,), model expects (24,)" in message


def test_other_architecture_lists_shapes() -> None:
    """A Keras 3 file of blocks [1, 2, 1, 1] read as [2, 2, 2, 2]: positions, Keras paths and shapes named."""
    with pytest.raises(KerasConvertError) as info:
        convert_keras(FIXTURES / "k3_blocks1211.weights.h5", blocks=[2, 2, 2, 2])
    message = str(info.value)
    assert "layers matched by type and creation order" in message
    assert (
        "conv2_block2_1_conv (layers/conv2d_3, named 'pool2_conv' in the file) kernel: file (1, 1, 24, 12), "
        "model expects (1, 1, 24, 32)"
    ) in message
    assert "missing from the file (12): conv4_block2_2_conv (layers/conv2d_14), pool4_bn (layers/batch" in message
    assert "the file itself looks like block_config [1, 2, 1, 1]" in message


def test_wrong_num_classes_names_the_classifier() -> None:
    with pytest.raises(KerasConvertError, match=r"fc1000 kernel: file \(32, 2\), model expects \(32, 3\)"):
        convert_keras(FIXTURES / "tf2_weights.h5", num_classes=3)
    with pytest.raises(KerasConvertError, match=r"fc1000 \(layers/dense\) bias: file \(2,\), model expects \(5,\)"):
        convert_keras(FIXTURES / "k3_model.weights.h5", num_classes=5)


def _edited_copy(name: str, tmp_path: Path, edit) -> Path:  # noqa: ANN001 - a callable taking the h5py.File
    path = tmp_path / name
    shutil.copy(FIXTURES / name, path)
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


@pytest.mark.parametrize(
    ("name", "group", "listed"),
    [
        ("tf2_model.h5", "model_weights/conv3_block1_1_conv", "missing from the file (1): conv3_block1_1_conv"),
        ("tf2_weights.h5", "conv1/bn", "missing from the file (1): conv1/bn"),
        ("tf2_weights.h5", "squeeze_excitation_layer", "squeeze_excitation_layer (the SE layer after the last"),
        ("k3_model.weights.h5", "layers/batch_normalization_5", "missing from the file (1): pool2_bn (layers/batch"),
        ("k3_model.weights.h5", "layers/squeeze_excitation_layer", "no layer holding two Dense layers"),
        ("k3_model.weights.h5", "layers/conv2d_7", "missing from the file (1): conv3_block1_2_conv (layers/conv2d_7)"),
    ],
)
def test_missing_layer_is_named(name: str, group: str, listed: str, tmp_path: Path) -> None:
    def delete(f: h5py.File) -> None:
        del f[group]

    with pytest.raises(KerasConvertError) as info:
        convert_keras(_edited_copy(name, tmp_path, delete))
    assert listed in str(info.value)
    if name.startswith("tf2"):
        assert f"listed in the file's layer_names but absent (1): {group.removeprefix('model_weights/')}" in str(
            info.value
        )


def test_keras3_names_out_of_order_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Keras 3 loads by position; when the recorded names disagree with the positions, the user hears about it."""

    def swap(f: h5py.File) -> None:
        a, b = f["layers/conv2d_1/vars"].attrs, f["layers/conv2d_3/vars"].attrs
        a["name"], b["name"] = b["name"], a["name"]

    with caplog.at_level(logging.WARNING, logger="sedensenet.keras_convert"):
        convert_keras(_edited_copy("k3_model.weights.h5", tmp_path, swap), classes=["a", "b"])
    assert "layers/conv2d_1 is named 'conv2_block2_1_conv'" in caplog.text


def test_reshaped_layer_is_named(tmp_path: Path) -> None:
    def shrink(f: h5py.File) -> None:
        key = "conv3_block1_2_conv/conv3_block1_2_conv/kernel:0"
        kernel = f[key][...]
        del f[key]
        f[key] = kernel[..., :4]

    with pytest.raises(KerasConvertError) as info:
        convert_keras(_edited_copy("tf2_weights.h5", tmp_path, shrink))
    assert "conv3_block1_2_conv kernel: file (3, 3, 32, 4), model expects (3, 3, 32, 8)" in str(info.value)


def test_keras_archive_with_layer_removed(tmp_path: Path) -> None:
    """A .keras archive whose weights lack a layer: the error names it too."""
    with zipfile.ZipFile(FIXTURES / "tf2_model.keras") as z:
        (tmp_path / "model.weights.h5").write_bytes(z.read("model.weights.h5"))
        config = z.read("config.json")
    with h5py.File(tmp_path / "model.weights.h5", "r+") as f:
        del f["layers/conv2d_19"]
    edited = tmp_path / "edited.keras"
    with zipfile.ZipFile(edited, "w") as z:
        z.writestr("config.json", config)
        z.write(tmp_path / "model.weights.h5", "model.weights.h5")
    with pytest.raises(KerasConvertError, match=r"conv5_block2_2_conv \(layers/conv2d_19\)"):
        convert_keras(edited)


def test_not_a_keras_file(tmp_path: Path) -> None:
    text = tmp_path / "notes.h5"
    text.write_text("not weights")
    with pytest.raises(KerasConvertError, match="neither an HDF5 file nor a .keras archive"):
        convert_keras(text)
    with pytest.raises(KerasConvertError, match="not found"):
        convert_keras(tmp_path / "absent.h5")
    with pytest.raises(KerasConvertError, match="SavedModel"):
        convert_keras(tmp_path)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["data"] = np.zeros(3)
    with pytest.raises(KerasConvertError, match=r"not a Keras model or weights file.*\['data'\]"):
        convert_keras(other)
    archive = tmp_path / "other.keras"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(KerasConvertError, match="no model.weights.h5"):
        convert_keras(archive)


def test_not_the_tutorial_preset() -> None:
    with pytest.raises(KerasConvertError, match="keras_se_densenet121"):
        convert_keras(FIXTURES / "tf2_weights.h5", model="se_densenet121")
    with pytest.raises(ValueError, match="unknown model"):
        convert_keras(FIXTURES / "tf2_weights.h5", model="resnet50")


def test_h5py_missing_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match="pip install h5py"):
        convert_keras(FIXTURES / "tf2_weights.h5")


# ----------------------------------------------------------- round trips through synthetic Keras files


def _keras_variables(sd: dict[str, np.ndarray], slot: Slot) -> dict[str, np.ndarray]:
    """One layer's variables as Keras stores them, from our state dict (the converter's inverse)."""
    p = slot.prefix
    if slot.kind == "conv":
        return {"kernel": sd[f"{p}.weight"].transpose(2, 3, 1, 0)}  # (out, in, kh, kw) -> (kh, kw, in, out)
    if slot.kind == "bn":
        ours = ("weight", "bias", "running_mean", "running_var")
        return {
            k: sd[f"{p}.{t}"] for k, t in zip(("gamma", "beta", "moving_mean", "moving_variance"), ours, strict=True)
        }
    if slot.kind == "dense":
        return {"kernel": sd[f"{p}.weight"].T, "bias": sd[f"{p}.bias"]}
    return {  # the SE layer: two Dense layers, ours are 1x1 convolutions (out, in, 1, 1)
        f"{dense}/{var}": sd[f"{p}.{fc}.weight"][:, :, 0, 0].T if var == "kernel" else sd[f"{p}.{fc}.bias"]
        for dense, fc in (("dense", "fc1"), ("dense_1", "fc2"))
        for var in ("kernel", "bias")
    }


def _write_keras_file(path: Path, net: DenseNet, by_name: bool) -> None:
    """Write ``net``'s weights in the tutorial's Keras layout: tf.keras 2 (by name) or Keras 3 (by type and order)."""
    sd = {k: v.numpy() for k, v in net.state_dict().items()}
    slots = tutorial_layout(net.config.block_config)
    names = ["squeeze_excitation_layer_3" if s.kind == "se" else s.name for s in slots]  # auto-named, session-dependent
    counts: dict[str, int] = {}
    with h5py.File(path, "w") as f:
        if by_name:
            f.attrs["layer_names"] = np.array([n.encode() for n in names])
        for slot, name in zip(slots, names, strict=True):
            values = _keras_variables(sd, slot)
            if by_name:
                weight_names = [f"{name}/{v}:0" for v in values]
                f.require_group(name).attrs["weight_names"] = np.array([w.encode() for w in weight_names])
                for weight_name, value in zip(weight_names, values.values(), strict=True):
                    f[name][weight_name] = value
            elif slot.kind == "se":
                for i, dense in enumerate(("dense", "dense_1"), start=1):
                    f[f"layers/squeeze_excitation_layer/dense{i}/vars/0"] = values[f"{dense}/kernel"]
                    f[f"layers/squeeze_excitation_layer/dense{i}/vars/1"] = values[f"{dense}/bias"]
            else:
                base = {"conv": "conv2d", "bn": "batch_normalization", "dense": "dense"}[slot.kind]
                n = counts[base] = counts.get(base, -1) + 1
                for i, value in enumerate(values.values()):
                    f[f"layers/{base}{f'_{n}' if n else ''}/vars/{i}"] = value


@pytest.mark.parametrize("by_name", [True, False], ids=["tf2-names", "keras3-order"])
@pytest.mark.parametrize("blocks", [(6, 12, 24, 16), (3, 1, 2), (1, 1, 1, 1, 2)])
def test_round_trip_any_block_list(blocks: tuple[int, ...], by_name: bool, tmp_path: Path) -> None:
    """Our model written in either Keras layout comes back identical, blocks and widths inferred from the file."""
    net = create_model("keras_se_densenet121", num_classes=3, block_config=blocks, growth_rate=4, num_init_features=8)
    with torch.no_grad():
        for name, buf in net.named_buffers():
            if "running" in name:
                buf.uniform_(0.5, 1.5)
    path = tmp_path / ("w.h5" if by_name else "w.weights.h5")
    _write_keras_file(path, net, by_name)
    back, meta = convert_keras(path, model="keras_se_densenet169")
    assert back.config.block_config == blocks and back.num_classes == 3
    assert (back.config.growth_rate, back.config.num_init_features) == (4, 8)
    for key, value in net.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(back.state_dict()[key], value, rtol=0, atol=0, msg=key)
    assert back.config.to_dict() | {"extra": {}} == net.config.to_dict() | {"extra": {}}


@pytest.mark.parametrize("name", ["keras_se_densenet121", "keras_se_densenet169", "keras_se_densenet201"])
def test_layout_covers_every_parameter(name: str) -> None:
    """The tutorial layout names a Keras layer for every tensor of the full-size presets, and nothing else."""
    config = model_config(name, num_classes=2)
    keys = {k for k in DenseNet(config).state_dict() if not k.endswith("num_batches_tracked")}
    suffixes = {"conv": ["weight"], "bn": ["weight", "bias", "running_mean", "running_var"],
                "dense": ["weight", "bias"], "se": ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]}  # fmt: skip
    slots = tutorial_layout(config.block_config)
    assert {f"{s.prefix}.{v}" for s in slots for v in suffixes[s.kind]} == keys
    assert len({s.name for s in slots}) == len(slots)


def test_manifest_records_what_keras_refused() -> None:
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    assert "k3_refused.keras" in manifest["refused"] and "get_config" in manifest["refused"]["k3_refused.keras"]
    assert set(FORMATS) <= set(manifest["written"])
