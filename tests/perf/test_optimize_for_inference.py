"""optimize_for_inference equals the eager model; should_compile decides by arithmetic; tune_malloc can be refused."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

from sedensenet import create_model, inference
from sedensenet.inference import (
    COMPILE_SECONDS,
    EagerInference,
    OnnxRuntimeModule,
    allocator_name,
    describe,
    optimize_for_inference,
    should_compile,
    tune_malloc,
)
from sedensenet.models.densenet import set_fast

needs_ort = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None,
    reason="onnxruntime and onnx are not installed",
)


def _trained_model(name: str = "keras_se_densenet121", size: int = 64) -> torch.nn.Module:
    """A model whose running statistics are not the initial ones (a few training steps on random data)."""
    model = create_model(name, num_classes=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(4, 3, size, size)).logsumexp(1).mean().backward()
        opt.step()
    return model.eval()


def _reference(model: torch.nn.Module) -> torch.nn.Module:
    ref = copy.deepcopy(model)
    set_fast(ref, False)
    return ref.eval()


@pytest.mark.parametrize("backend", ["eager", pytest.param("onnxruntime", marks=needs_ort)])
def test_backends_equal_the_eager_model(backend: str) -> None:
    model = _trained_model()
    ref = _reference(model)
    fast = optimize_for_inference(model, torch.randn(2, 3, 64, 64), backend=backend)
    assert describe(fast) == backend
    for shape in [(5, 3, 64, 64), (1, 3, 80, 96)]:  # other batch sizes and image sizes than the example
        x = torch.randn(*shape)
        with torch.no_grad():
            expected = ref(x)
        assert (fast(x) - expected).abs().max() <= 1e-4


def test_auto_picks_onnxruntime_on_cpu_when_installed() -> None:
    fast = optimize_for_inference(create_model("se_densenet_tiny", num_classes=2))
    has_ort = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
    assert isinstance(fast, OnnxRuntimeModule if has_ort else EagerInference)
    few = optimize_for_inference(create_model("se_densenet_tiny", num_classes=2), images=10)
    assert isinstance(few, EagerInference)  # a small job does not repay the export


def test_unknown_backend_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown inference backend 'tensorrt'"):
        optimize_for_inference(create_model("se_densenet_tiny"), backend="tensorrt")


def test_a_failing_backend_falls_back_to_eager(caplog: pytest.LogCaptureFixture) -> None:
    class NotExportable(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nonzero(x > 0).float().sum().reshape(1, 1).expand(x.shape[0], 1)

    fast = optimize_for_inference(NotExportable(), torch.randn(2, 3, 8, 8), backend="compile", atol=-1.0)
    assert isinstance(fast, EagerInference)
    assert "using eager" in caplog.text or "failed" in caplog.text


@pytest.mark.slow
def test_compile_backend_equals_eager() -> None:
    model = _trained_model("se_densenet_tiny", 16)
    ref = _reference(model)
    fast = optimize_for_inference(model, torch.randn(2, 3, 16, 16), backend="compile")
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert (fast(x) - ref(x)).abs().max() <= 1e-4


@pytest.mark.parametrize(
    ("device", "steps", "epochs", "per_step", "expected"),
    [
        ("cpu", 100, 5, None, False),  # a short CPU run never repays two minutes of compiling
        ("cpu", 10_000, 100, 2.0, False),  # compiled CPU training measured slower than the eager fast path
        ("cuda", 10, 1, None, False),
        ("cuda", 2_000, 30, 0.2, True),
        ("mps", 10_000, 100, 1.0, False),
    ],
)
def test_should_compile(device: str, steps: int, epochs: int, per_step: float | None, expected: bool) -> None:
    decision, reason = should_compile(device, steps, epochs, per_step)
    assert decision is expected
    assert reason.startswith("compiling" if expected else "not compiling")
    if device == "cuda":
        assert f"{steps * epochs:,} steps" in reason
    elif device in COMPILE_SECONDS:
        assert "eager fast path" in reason


def test_should_compile_grows_with_the_run() -> None:
    short, _ = should_compile("cuda", 50, 1)
    long, _ = should_compile("cuda", 5_000, 50)
    assert not short and long


def test_tune_malloc_respects_the_opt_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEDENSENET_MALLOC", "default")
    assert "left as is" in tune_malloc()
    assert allocator_name() in ("glibc", "jemalloc", "tcmalloc", "mimalloc")


def test_training_tunes_malloc_only_when_not_memory_efficient(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEDENSENET_MALLOC", "default")  # exercise the decision without changing this process
    assert inference.tune_malloc_for_training(memory_efficient=True) is None  # the user asked for less memory
    assert inference.tune_malloc_for_training(memory_efficient=False) == "allocator left as is (SEDENSENET_MALLOC)"
    assert not hasattr(inference, "MALLOC_TUNING_ALLOWED")  # a parameter now (train(tune_malloc=...)), not a global
