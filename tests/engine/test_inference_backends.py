"""predict/evaluate run through the inference fast path by default; every backend gives the same answers;
``--compile auto`` says what it chose."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from imagegen import CLASSES, make_folder  # noqa: E402
from modelgen import moved_tiny_checkpoint  # noqa: E402

import sedensenet  # noqa: E402
from sedensenet.cli import main  # noqa: E402
from sedensenet.config import InferenceSettings  # noqa: E402
from sedensenet.engine.predictor import Predictor  # noqa: E402
from sedensenet.inference import ONNX_MIN_IMAGES, OnnxRuntimeModule  # noqa: E402

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
needs_ort = pytest.mark.skipif(not HAS_ORT, reason="onnxruntime and onnx are not installed")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A checkpoint whose BatchNorm running statistics have moved (so folding them is not a no-op)."""
    root = tmp_path_factory.mktemp("backends")
    data = make_folder(root / "数据", per_class=6)
    return moved_tiny_checkpoint(root / "模型.safetensors", list(CLASSES)), data


def _probabilities(path: Path, data: Path, backend: str) -> torch.Tensor:
    """Float32 probabilities (amp pinned off: these tests compare numbers to 1e-4)."""
    preds = sedensenet.predict(path, data, top_k=2, device="cpu", backend=backend, amp="off")
    return torch.tensor([[dict(p.top_k)[c] for c in CLASSES] for p in preds], dtype=torch.float64)


@pytest.mark.parametrize("backend", ["auto", "eager", pytest.param("onnxruntime", marks=needs_ort)])
def test_every_backend_predicts_what_the_reference_modules_do(checkpoint: tuple[Path, Path], backend: str) -> None:
    path, data = checkpoint
    reference = _probabilities(path, data, "reference")
    assert reference.shape == (12, 2)
    assert (_probabilities(path, data, backend) - reference).abs().max() <= 1e-4


def test_auto_uses_onnxruntime_for_large_jobs_only(checkpoint: tuple[Path, Path]) -> None:
    float32 = InferenceSettings(device="cpu", amp="off")  # bf16 CPUs stay eager (test_amp)
    predictor = Predictor.load(checkpoint[0], float32)
    small = predictor.runner(images=10)
    assert not isinstance(small, OnnxRuntimeModule)
    large = predictor.runner(images=ONNX_MIN_IMAGES)
    assert isinstance(large, OnnxRuntimeModule) is HAS_ORT
    assert predictor.runner(images=ONNX_MIN_IMAGES) is large  # exported once, then reused


def test_reference_backend_runs_the_unoptimised_modules(checkpoint: tuple[Path, Path]) -> None:
    predictor = Predictor.load(checkpoint[0], InferenceSettings(device="cpu", backend="reference"))
    runner = predictor.runner(images=ONNX_MIN_IMAGES)
    assert runner is predictor.model
    assert not any(getattr(m, "fast", False) for m in runner.modules())


def test_evaluate_cli_takes_a_backend(checkpoint: tuple[Path, Path], tmp_path: Path) -> None:
    path, data = checkpoint
    for backend in ("reference", "eager"):
        out = tmp_path / backend
        argv = ["evaluate", str(path), "--data", str(data), "--split", "all", "--output", str(out)]
        assert main([*argv, "--backend", backend, "--device", "cpu", "--amp", "off", "-q"]) == 0
        assert (out / "metrics.json").is_file()
    ref, eager = (
        json.loads((tmp_path / b / "metrics.json").read_text(encoding="utf-8")) for b in ("reference", "eager")
    )
    assert (ref["inference_backend"], eager["inference_backend"]) == ("reference", "eager")
    assert ref["accuracy"] == eager["accuracy"]
    assert ref["loss"] == pytest.approx(eager["loss"], abs=1e-5)


def test_unknown_backend_is_refused_by_name(checkpoint: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["predict", str(checkpoint[0]), str(checkpoint[1]), "--backend", "tensorrt"])
    assert "invalid choice: 'tensorrt'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--backend 'tensorrt' is not an inference backend: choose from auto"):
        Predictor.load(checkpoint[0], InferenceSettings(device="cpu", backend="tensorrt"))


def test_compile_auto_logs_its_decision(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = make_folder(tmp_path / "data", per_class=4)
    caplog.set_level(logging.INFO, logger="sedensenet")
    sedensenet.train(
        data=str(data), model="se_densenet_tiny", image_size=16, batch_size=4, epochs=1, compile="auto",
        project=str(tmp_path / "runs"), device="cpu", workers=0,
    )  # fmt: skip
    decision = [r.getMessage() for r in caplog.records if r.getMessage().startswith("--compile auto:")]
    assert len(decision) == 1
    assert decision[0].startswith("--compile auto: not compiling: on cpu a compiled step measured")
    assert not any("compiling the model with torch.compile" in r.getMessage() for r in caplog.records)
