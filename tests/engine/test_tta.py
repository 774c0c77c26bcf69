"""Test-time augmentation: the views, their averaged probabilities, ``none`` unchanged, every backend, the CLI."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from imagegen import CLASSES, make_folder  # noqa: E402
from modelgen import moved_tiny_checkpoint  # noqa: E402

import sedensenet  # noqa: E402
from sedensenet.cli import main  # noqa: E402
from sedensenet.config import TTA_MODES, ConfigError, InferenceSettings  # noqa: E402
from sedensenet.engine.loop import StepSettings, evaluate_loader  # noqa: E402
from sedensenet.engine.predictor import Predictor  # noqa: E402
from sedensenet.engine.samples import labelled_samples  # noqa: E402
from sedensenet.engine.tta import TTAModule, make_views, view_count, with_tta  # noqa: E402

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny model with moved weights (so views give different outputs) and a folder of 12 images."""
    root = tmp_path_factory.mktemp("tta")
    data = make_folder(root / "数据", per_class=6)
    return moved_tiny_checkpoint(root / "模型.safetensors", list(CLASSES), seed=1), data


def test_views_are_the_original_then_flips_and_zooms() -> None:
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    assert [view_count(m) for m in TTA_MODES] == [1, 2, 2, 2, 4]
    flip = make_views(x, "flip")
    assert flip.shape == (4, 3, 8, 8)
    assert torch.equal(flip[:2], x) and torch.equal(flip[2:], x.flip(-1))
    assert torch.equal(make_views(x, "vflip")[2:], x.flip(-2))
    both = make_views(x, "flip+scale")
    assert both.shape == (8, 3, 8, 8)
    zoom = both[4:6]
    assert torch.equal(both[6:], zoom.flip(-1))
    assert not torch.allclose(zoom, x)
    # A constant image zooms to itself: the view is a crop resized back to the same size.
    const = torch.full((1, 1, 8, 8), 0.25)
    assert torch.allclose(make_views(const, "scale")[1], const[0], atol=1e-6)


@pytest.mark.parametrize("mode", ["flip", "vflip", "scale", "flip+scale"])
def test_tta_probabilities_are_the_mean_of_each_views(checkpoint: tuple[Path, Path], mode: str) -> None:
    model = sedensenet.load_model(checkpoint[0]).eval()
    x = torch.randn(5, 3, 24, 24)
    with torch.no_grad():
        tta = TTAModule(model, mode)(x).softmax(1)
        views = make_views(x, mode).view(view_count(mode), 5, 3, 24, 24)
        each = torch.stack([model(v).softmax(1) for v in views])  # (V, B, classes)
    assert not torch.allclose(each[0], each[1], atol=1e-4)  # the views do disagree
    torch.testing.assert_close(tta, each.mean(0), rtol=0, atol=1e-6)


def test_tta_none_is_bit_identical_to_the_plain_path(checkpoint: tuple[Path, Path]) -> None:
    path, data = checkpoint
    predictor = Predictor.load(path, InferenceSettings(device="cpu", backend="eager"))
    samples, _ = labelled_samples(predictor.meta, data, "all")
    assert with_tta(predictor.runner(12), "none") is predictor.runner(12)
    plain = Predictor.load(path, InferenceSettings(device="cpu", backend="eager"))
    dataset = sedensenet.data.ImageFolderDataset(samples, transform=plain.transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=32)
    before = evaluate_loader(plain.runner(12), loader, torch.nn.CrossEntropyLoss(), StepSettings(torch.device("cpu")))
    after = predictor.run_samples(samples, 32)
    assert np.array_equal(before.probs, after.probs) and before.loss == after.loss


def _cli_predict(path: Path, data: Path, out: Path, *flags: str) -> list[dict[str, str]]:
    assert main(["predict", str(path), str(data), "--top-k", "2", "--device", "cpu", "--output", str(out), *flags]) == 0
    with open(out, encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_cli_tta_none_output_equals_no_flag_and_flip_differs(checkpoint: tuple[Path, Path], tmp_path: Path) -> None:
    path, data = checkpoint
    default = _cli_predict(path, data, tmp_path / "a.csv")
    none = _cli_predict(path, data, tmp_path / "b.csv", "--tta", "none")
    flip = _cli_predict(path, data, tmp_path / "c.csv", "--tta", "flip")
    assert default == none and len(none) == 12
    assert [r["top_k"] for r in flip] != [r["top_k"] for r in none]


def test_evaluate_reports_the_tta(checkpoint: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    path, data = checkpoint
    out = tmp_path / "eval"
    assert main(["evaluate", str(path), "--data", str(data), "--tta", "flip+scale", "--output", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8"))["tta"] == "flip+scale"
    assert "TTA flip+scale: mean of 4 views" in capsys.readouterr().out


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime and onnx are not installed")
@pytest.mark.parametrize("backend", ["onnxruntime", "file"])
def test_onnx_backends_get_the_views_too(checkpoint: tuple[Path, Path], tmp_path: Path, backend: str) -> None:
    path, data = checkpoint
    eager = sedensenet.predict(path, data, top_k=2, device="cpu", backend="eager", tta="flip+scale")
    if backend == "file":
        from sedensenet.export import export_model

        source, backend = export_model(path, output=tmp_path / "m.onnx").path, "auto"
    else:
        source = path
    ort = sedensenet.predict(source, data, top_k=2, device="cpu", backend=backend, tta="flip+scale")
    a = np.array([[dict(p.top_k)[c] for c in CLASSES] for p in eager])
    b = np.array([[dict(p.top_k)[c] for c in CLASSES] for p in ort])
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)


def test_unknown_tta_is_refused_before_any_work(checkpoint: tuple[Path, Path]) -> None:
    with pytest.raises(ConfigError, match="--tta 'mirror' is not a test-time augmentation: choose from none, flip"):
        Predictor.load(checkpoint[0], InferenceSettings(device="cpu", tta="mirror"))
    with pytest.raises(ConfigError, match="tta='mirror' is not valid"):
        sedensenet.config.TrainConfig(tta="mirror")


def test_sharded_prediction_runs_tta_and_pins_it_with_the_precision(
    checkpoint: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, data = checkpoint
    single, sharded_out = tmp_path / "single.csv", tmp_path / "sharded.csv"
    common = [str(path), str(data), "--tta", "flip", "--device", "cpu", "--amp", "off", "--backend", "eager"]
    assert main(["predict", *common, "--output", str(single)]) == 0
    assert main(["predict", *common, "--output", str(sharded_out), "--resume"]) == 0  # the sharded path, 1 process
    assert "--amp off" in capsys.readouterr().out
    assert sharded_out.read_text(encoding="utf-8") == single.read_text(encoding="utf-8")
    # Parts of a job with the same files and settings but no TTA are not resumed into this one.
    parts = tmp_path / "again.csv.parts"
    parts.mkdir()
    old_job = {"tta": "none", "amp": "off"}
    (parts / "job.json").write_text(json.dumps(old_job), encoding="utf-8")
    assert main(["predict", *common, "--output", str(tmp_path / "again.csv"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "belong to another job" in err and "tta" in err and "'flip'" in err
