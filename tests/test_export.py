"""ONNX and TorchScript exports reproduce the eager model, carry their metadata, and predict like the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from sedensenet import export
from sedensenet.checkpoint import CheckpointError, CheckpointMeta, load_checkpoint, save_checkpoint
from sedensenet.config import InferenceSettings
from sedensenet.engine.predictor import Predictor
from sedensenet.export import ExportError, OnnxModel, compare_speed, export_model, load_torchscript
from sedensenet.models import create_model

CLASSES = ["猫", "狗", "bird"]
MEAN = [0.5, 0.45, 0.4]
STD = [0.25, 0.2, 0.3]


def _randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BN statistics and biases, so logits are far from zero and differences show."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            elif isinstance(m, torch.nn.Linear):
                m.weight.mul_(10.0)
                m.bias.copy_(torch.randn(m.out_features, generator=g) * 0.1)
    return model


def _checkpoint(tmp_path: Path, preset: str = "se_densenet_tiny", size: int = 16, **overrides: object) -> Path:
    model = _randomise(create_model(preset, num_classes=len(CLASSES), **overrides))
    meta = CheckpointMeta(model=model.config.to_dict(), classes=CLASSES, image_size=size, mean=MEAN, std=STD)
    return save_checkpoint(tmp_path / f"{preset}.safetensors", model, meta)


def _eager(path: Path, x: torch.Tensor) -> torch.Tensor:
    model, _ = load_checkpoint(path)
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize(
    ("preset", "size", "overrides"),
    [
        ("se_densenet_tiny", 16, {}),
        ("keras_se_densenet121", 64, {}),
        ("keras_se_densenet121", 64, {"memory_efficient": True}),
    ],
    ids=["tiny", "keras121", "keras121-memory-efficient"],
)
def test_onnx_and_torchscript_equal_eager(tmp_path: Path, preset: str, size: int, overrides: dict) -> None:
    ckpt = _checkpoint(tmp_path, preset, size, **overrides)
    x = torch.randn(4, 3, size, size)
    expected = _eager(ckpt, x)
    assert expected.abs().max() > 0.1  # the comparison is not between near-zero numbers

    onnx_result = export_model(ckpt, "onnx")
    assert onnx_result.path == ckpt.with_suffix(".onnx") and onnx_result.format == "onnx"
    assert onnx_result.max_abs_diff is not None and onnx_result.max_abs_diff <= 1e-4
    torch.testing.assert_close(OnnxModel(onnx_result.path)(x), expected, rtol=0, atol=1e-4)

    ts_result = export_model(ckpt, "torchscript")
    assert ts_result.path == tmp_path / f"{preset}.torchscript.pt"
    assert ts_result.max_abs_diff is not None and ts_result.max_abs_diff <= 1e-4
    module, _ = load_torchscript(ts_result.path)
    with torch.no_grad():
        torch.testing.assert_close(module(x), expected, rtol=0, atol=1e-4)


def test_onnx_metadata_round_trip(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path)
    out = export_model(ckpt, "onnx", output=tmp_path / "out" / "模型.onnx", opset=18).path
    assert out == tmp_path / "out" / "模型.onnx"
    model = OnnxModel(out)
    assert model.classes == CLASSES
    assert (model.meta.image_size, model.meta.mean, model.meta.std, model.meta.in_chans) == (16, MEAN, STD, 3)
    assert model.meta.model == load_checkpoint(ckpt)[1].model

    proto = onnx.load(str(out))
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["classes"]) == CLASSES
    assert json.loads(props["mean"]) == MEAN and json.loads(props["std"]) == STD
    assert props["image_size"] == "16" and props["in_chans"] == "3" and props["resize"] == "squash"
    assert json.loads(props["model_config"])["se_placement"] == ["head", "block", "transition", "layer"]
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) == 18
    assert [i.name for i in proto.graph.input] == ["images"] and [o.name for o in proto.graph.output] == ["logits"]
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")  # symbolic batch axis


def test_torchscript_metadata_round_trip(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path)
    _, meta = load_torchscript(export_model(ckpt, "torchscript").path)
    assert meta == load_checkpoint(ckpt)[1]


@pytest.mark.parametrize("batch", [1, 5])
def test_onnx_dynamic_batch(tmp_path: Path, batch: int) -> None:
    ckpt = _checkpoint(tmp_path)
    model = OnnxModel(export_model(ckpt).path)
    x = torch.randn(batch, 3, 16, 16)
    out = model(x)
    assert out.shape == (batch, len(CLASSES)) and out.dtype == torch.float32
    torch.testing.assert_close(out, _eager(ckpt, x), rtol=0, atol=1e-4)


def test_onnx_model_acts_like_a_module(tmp_path: Path) -> None:
    model = OnnxModel(export_model(_checkpoint(tmp_path)).path)
    assert model.to("cpu") is model and model.eval() is model and model.train(False) is model
    with pytest.raises(ValueError, match=r"takes \(B, 3, 16, 16\) input"):
        model(torch.randn(2, 3, 20, 20))


def test_image_size_override_is_stored(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path)
    model = OnnxModel(export_model(ckpt, image_size=24).path)
    assert model.meta.image_size == 24
    x = torch.randn(2, 3, 24, 24)
    torch.testing.assert_close(model(x), _eager(ckpt, x), rtol=0, atol=1e-4)


def _write_images(folder: Path) -> list[Path]:
    folder.mkdir()
    rng = np.random.default_rng(0)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0), (255, 160, 0)]
    paths = []
    sizes = [(16, 16), (30, 20), (13, 40), (64, 64), (17, 9), (20, 20)]
    for i, ((h, w), colour) in enumerate(zip(sizes, colours, strict=True)):
        path = folder / f"图{i}.png"
        pixels = np.clip(np.asarray(colour) + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def test_predict_on_onnx_matches_checkpoint(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path)
    onnx_path = export_model(ckpt).path
    files = _write_images(tmp_path / "images")
    float32 = InferenceSettings(device="cpu", amp="off")  # as ONNX Runtime runs
    eager = Predictor.load(ckpt, float32).predict_files(files, top_k=3)
    runtime = Predictor.load(onnx_path).predict_files(files, top_k=3)
    assert [p.label for p in runtime] == [p.label for p in eager]
    assert len({p.label for p in eager}) > 1  # the model does not give every image the same class
    for a, b in zip(eager, runtime, strict=True):
        assert [c for c, _ in a.top_k] == [c for c, _ in b.top_k]
        np.testing.assert_allclose([p for _, p in a.top_k], [p for _, p in b.top_k], rtol=0, atol=1e-4)


def _plain_onnx(path: Path) -> Path:
    node = onnx.helper.make_node("Identity", ["images"], ["logits"])
    tensor = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(
        [node],
        "plain",
        [tensor("images", onnx.TensorProto.FLOAT, [1, 3])],
        [tensor("logits", onnx.TensorProto.FLOAT, [1, 3])],
    )
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), str(path))
    return path


def test_onnx_without_sedensenet_metadata_is_refused(tmp_path: Path) -> None:
    plain = _plain_onnx(tmp_path / "plain.onnx")
    with pytest.raises(CheckpointError, match="no sedensenet metadata"):
        OnnxModel(plain)
    with pytest.raises(CheckpointError, match="no sedensenet metadata"):
        Predictor.load(plain)
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match="not a readable ONNX model"):
        OnnxModel(tmp_path / "junk.onnx")


def test_bad_arguments(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path)
    with pytest.raises(ExportError, match="unknown export format 'tflite'"):
        export_model(ckpt, "tflite")
    with pytest.raises(ExportError, match="opset 13 is too old"):
        export_model(ckpt, opset=13)
    with pytest.raises(ExportError, match="too small"):
        export_model(ckpt, image_size=1)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_failed_verification_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    ckpt = _checkpoint(tmp_path)
    monkeypatch.setattr(export, "VERIFY_ATOL", -1.0)  # any difference, even 0, fails
    with pytest.raises(ExportError, match=f"the {fmt} export differs from the eager model by up to"):
        export_model(ckpt, fmt, output=tmp_path / "out.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == [ckpt.name]
    result = export_model(ckpt, fmt, output=tmp_path / "out.bin", verify=False)
    assert result.max_abs_diff is None and result.path.is_file()


def test_compare_speed_reports_both_runtimes(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path)
    speed = compare_speed(ckpt, export_model(ckpt).path, batch_size=2, repeats=2)
    assert speed.batch_size == 2
    assert speed.eager_images_per_second > 0 and speed.onnxruntime_images_per_second > 0
    assert speed.speedup == pytest.approx(speed.onnxruntime_images_per_second / speed.eager_images_per_second)
