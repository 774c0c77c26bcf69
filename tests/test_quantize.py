"""int8 export: calibrated on training images, judged on held-out ones, gated on agreement, metadata carried."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import onnx
import pytest
import torch

from sedensenet import quantize
from sedensenet.checkpoint import CheckpointError, CheckpointMeta, save_checkpoint
from sedensenet.cli import main
from sedensenet.config import ConfigError, InferenceSettings
from sedensenet.engine.predictor import Predictor
from sedensenet.export import ExportError, export_model
from sedensenet.inference import OnnxModel
from sedensenet.models import create_model
from sedensenet.quantize import QuantizationError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from imagegen import CLASSES, make_folder  # noqa: E402


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A run folder whose checkpoint names its data: 2 x 20 images, 25% held out for validation."""
    data = make_folder(tmp_path / "data", per_class=20, size=16)
    torch.manual_seed(0)
    model = create_model("se_densenet_tiny", num_classes=2)
    extra = {"data": str(data), "val_split": 0.25, "seed": 7, "threshold": 0.3, "temperature": 1.5}
    meta = CheckpointMeta(model=model.config.to_dict(), classes=list(CLASSES), image_size=16, extra=extra)
    save_checkpoint(tmp_path / "run" / "weights" / "best.safetensors", model, meta)
    return tmp_path / "run"


def test_int8_export_measures_on_held_out_images_and_carries_metadata(run: Path) -> None:
    res = export_model(run, quantize="int8")
    assert res.path == run / "weights" / "best.int8.onnx" and res.path.is_file()
    q = res.quantization
    assert (q["calibration_images"], q["eval_images"]) == (30, 10)  # train 15 + 15, val 5 + 5
    assert 0.0 <= q["agreement"] <= 1.0 and q["agreement"] >= quantize.MIN_AGREEMENT
    assert q["accuracy_change"] == pytest.approx(q["int8_accuracy"] - q["fp32_accuracy"])
    proto = onnx.load(str(res.path))
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["quantization"]) == q
    assert any(n.op_type == "QuantizeLinear" for n in proto.graph.node)
    loaded = OnnxModel(res.path)
    assert loaded.classes == list(CLASSES)
    # Fields of the checkpoint's metadata travel into the exported model, whatever they are.
    assert loaded.meta.extra["threshold"] == 0.3 and loaded.meta.extra["temperature"] == 1.5
    assert loaded.meta.extra["quantization"] == q


def test_int8_backend_predicts_like_fp32(run: Path, tmp_path: Path) -> None:
    export_model(run, quantize="int8")
    images = tmp_path / "data" / CLASSES[0]
    int8 = Predictor.load(run, InferenceSettings(backend="onnxruntime-int8")).predict_files(images)
    fp32 = Predictor.load(run, InferenceSettings(backend="reference")).predict_files(images)
    assert [p.path for p in int8] == [p.path for p in fp32] and len(int8) == 20
    assert sum(a.label == b.label for a, b in zip(int8, fp32, strict=True)) >= 19
    for a, b in zip(int8, fp32, strict=True):
        assert a.probability == pytest.approx(b.probability, abs=0.05)


def test_low_agreement_is_refused_unless_forced(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quantize, "MIN_AGREEMENT", 1.01)  # no model can agree on 101%: the gate must close
    with pytest.raises(QuantizationError, match=r"agrees with fp32 on .* under the 101% required; nothing was written"):
        export_model(run, quantize="int8")
    assert not (run / "weights" / "best.int8.onnx").exists()
    assert not list((run / "weights").glob("*.tmp*"))
    assert export_model(run, quantize="int8", force=True).path.is_file()


def test_calibration_images_never_judge(run: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    with pytest.raises(QuantizationError, match="also evaluation images"):
        export_model(run, quantize="int8", quant_data=data, eval_data=data)
    with pytest.raises(QuantizationError, match="also evaluation images"):
        export_model(run, quantize="int8", quant_data=data)  # the run's validation images are in there


def test_explicit_data_is_used(run: Path, tmp_path: Path) -> None:
    calib = make_folder(tmp_path / "calib", per_class=3, size=16, seed=1)
    held = make_folder(tmp_path / "held", per_class=4, size=16, seed=2)
    q = export_model(run, quantize="int8", quant_data=calib, eval_data=held).quantization
    assert (q["calibration_images"], q["eval_images"]) == (6, 8)
    assert (q["calibration_data"], q["eval_data"]) == (str(calib), str(held))


def test_a_checkpoint_without_data_needs_both_flags(tmp_path: Path) -> None:
    model = create_model("se_densenet_tiny", num_classes=2)
    meta = CheckpointMeta(model=model.config.to_dict(), classes=list(CLASSES), image_size=16)
    ckpt = save_checkpoint(tmp_path / "m.safetensors", model, meta)
    with pytest.raises(QuantizationError, match="give --quant-data DIR .* and --eval-data DIR"):
        export_model(ckpt, quantize="int8")


def test_cli_int8_flags(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(run), "--quant-data", "x"]) == 2
    assert "go with --quantize int8" in capsys.readouterr().err
    assert main(["export", str(run), "--format", "torchscript", "--quantize", "int8"]) == 2
    assert "needs --format onnx" in capsys.readouterr().err
    assert main(["predict", str(run), str(run), "--backend", "onnxruntime-int8"]) == 2
    assert "no int8 model beside" in capsys.readouterr().err
    assert main(["export", str(run), "--quantize", "int8"]) == 0
    out = capsys.readouterr().out
    assert "top-1 agreement" in out and "onnx int8 written" in out


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"quantize": "int8", "image_size": 32}, "--image-size cannot be combined with --quantize"),
        ({"quant_data": "x"}, "go with --quantize int8"),
        ({"eval_data": "x"}, "go with --quantize int8"),
        ({"force": True}, "go with --quantize int8"),
    ],
)
def test_export_model_refuses_flags_that_do_not_go_together(run: Path, kwargs: dict, message: str) -> None:
    """The checks live in the function the CLI calls: from Python the size is not silently ignored."""
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    with pytest.raises(ExportError, match=message):
        export_model(run, **kwargs)
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before  # refused before anything is written


def test_int8_backend_refuses_fp32_file_and_models_in_memory(run: Path) -> None:
    fp32 = export_model(run, "onnx").path
    with pytest.raises(ConfigError, match="is an fp32 model"):
        Predictor.load(fp32, InferenceSettings(backend="onnxruntime-int8"))
    model = create_model("se_densenet_tiny", num_classes=2)
    model.meta = CheckpointMeta(model=model.config.to_dict(), classes=list(CLASSES), image_size=16)
    with pytest.raises(ConfigError, match="not a model in memory"):
        Predictor.load(model, InferenceSettings(backend="onnxruntime-int8"))
    with pytest.raises(CheckpointError, match="no int8 model beside"):
        Predictor.load(run, InferenceSettings(backend="onnxruntime-int8"))
