"""``--amp auto``: bf16 on CPUs whose bf16 matrix units oneDNN uses and where bf16 is the faster choice (on Sapphire
and Emerald Rapids without AMX: for training, not inference), float32 elsewhere (detection patched both ways, so
these pass on any CPU); predict and evaluate follow the rule and record it in metrics.json; a run records the
precision it trained in, and a resume keeps it."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from imagegen import CLASSES, make_folder  # noqa: E402

import sedensenet  # noqa: E402
from sedensenet.cli import main  # noqa: E402
from sedensenet.config import InferenceSettings, TrainConfig  # noqa: E402
from sedensenet.engine import device as device_mod  # noqa: E402
from sedensenet.engine.predictor import Predictor  # noqa: E402
from sedensenet.inference import ONNX_MIN_IMAGES, OnnxRuntimeModule, describe, resolve_backend  # noqa: E402

CPU = torch.device("cpu")
X86_WITH = {"architecture": "x86_64", "avx512_bf16": True, "amx_bf16": False}
X86_WITHOUT = {"architecture": "x86_64", "avx512_bf16": False, "amx_bf16": False}


EPYC = ("AuthenticAMD", 25, 17)  # Zen 4: AVX512-BF16, bf16 1.6-1.8x float32 (benchmarks/README.md)
EMERALD_RAPIDS = ("GenuineIntel", 6, 207)  # AVX512-BF16 slower than float32 when AMX is hidden


def _caps(monkeypatch: pytest.MonkeyPatch, onednn: bool, caps: dict, cpu: tuple[str, int, int] = EPYC) -> None:
    """The CPU's answers as given (an EPYC unless ``cpu`` names another)."""
    monkeypatch.delenv("SEDENSENET_CPU_BF16", raising=False)  # tests/conftest.py pins float32 for the rest
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    monkeypatch.setattr(device_mod, "cpu_id", lambda: cpu)


def test_cpu_bf16_needs_native_units(monkeypatch: pytest.MonkeyPatch) -> None:
    _caps(monkeypatch, True, X86_WITH)
    assert device_mod.cpu_bf16() == (True, "oneDNN uses this CPU's avx512_bf16")
    _caps(monkeypatch, True, {**X86_WITH, "amx_bf16": True})
    assert device_mod.cpu_bf16() == (True, "oneDNN uses this CPU's amx_bf16 and avx512_bf16")
    _caps(monkeypatch, True, X86_WITHOUT)  # AVX-512 without BF16: oneDNN says yes, but would emulate
    ok, why = device_mod.cpu_bf16()
    assert not ok and "no AVX512-BF16 or AMX-BF16" in why
    _caps(monkeypatch, False, X86_WITH)
    assert device_mod.cpu_bf16() == (False, "oneDNN reports no bf16 support on this CPU")
    _caps(monkeypatch, True, {"architecture": "aarch64"})  # Arm: oneDNN's query asks for the BF16 extension
    assert device_mod.cpu_bf16()[0]


def test_cpu_bf16_keeps_float32_where_avx512_bf16_is_slower(monkeypatch: pytest.MonkeyPatch) -> None:
    _caps(monkeypatch, True, X86_WITH, cpu=EMERALD_RAPIDS)
    assert device_mod.cpu_bf16() == (False, "Emerald Rapids without AMX: its AVX512-BF16 runs DenseNet inference at "
                                            "0.74-0.84x float32's speed")  # fmt: skip
    # training takes bf16 there: the fast paths compute its convolutions in float32
    why = ("Emerald Rapids without AMX: bf16 training computes its convolutions in float32 there, at 0.98-1.58x "
           "float32 training's speed in two thirds of its memory (README.md)")  # fmt: skip
    assert device_mod.cpu_bf16(training=True) == (True, why)
    _caps(monkeypatch, True, {**X86_WITH, "amx_bf16": True}, cpu=EMERALD_RAPIDS)  # with AMX: bf16
    assert device_mod.cpu_bf16() == (True, "oneDNN uses this CPU's amx_bf16 and avx512_bf16")
    _caps(monkeypatch, True, X86_WITH, cpu=("GenuineIntel", 6, 143))  # Sapphire Rapids, the same cores
    assert not device_mod.cpu_bf16()[0]
    _caps(monkeypatch, True, X86_WITH, cpu=("GenuineIntel", 6, 85))  # Cooper Lake: not measured slower
    assert device_mod.cpu_bf16()[0]
    _caps(monkeypatch, True, X86_WITH, cpu=None)  # no /proc/cpuinfo (another OS): the units decide
    assert device_mod.cpu_bf16()[0]
    _caps(monkeypatch, True, X86_WITH, cpu=EMERALD_RAPIDS)
    monkeypatch.setenv("SEDENSENET_CPU_BF16", "1")  # the user's word over the rule
    assert device_mod.cpu_bf16() == (True, "oneDNN uses this CPU's avx512_bf16")


def test_cpu_id_reads_this_machine() -> None:
    found = device_mod.cpu_id()
    if not Path("/proc/cpuinfo").is_file():
        assert found is None
        return
    text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    if "vendor_id" not in text:  # Arm and others name no vendor there
        assert found is None
        return
    vendor, family, model = found
    assert f"vendor_id\t: {vendor}" in text and family > 0 and model >= 0


@pytest.mark.parametrize(
    ("native", "cpu", "want", "line"),
    [
        (True, EPYC, torch.bfloat16, "--amp auto: bf16 on cpu (oneDNN uses this CPU's avx512_bf16; --amp off forces "
         "float32)"),
        (True, EMERALD_RAPIDS, torch.bfloat16, "--amp auto: bf16 on cpu (Emerald Rapids without AMX: bf16 training "
         "computes its convolutions in float32 there"),
        (False, EPYC, None, "--amp auto: fp32 on cpu (no AVX512-BF16 or AMX-BF16"),
    ],
    ids=["bf16_cpu", "slow_bf16_cpu", "older_cpu"],
)  # fmt: skip
def test_amp_auto_on_cpu_follows_detection_and_logs_why(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, native: bool, cpu: tuple,
    want: torch.dtype | None, line: str,
) -> None:  # fmt: skip
    _caps(monkeypatch, True, X86_WITH if native else X86_WITHOUT, cpu)
    with caplog.at_level(logging.INFO, logger="sedensenet.engine.device"):
        settings, scaler = device_mod.step_settings(TrainConfig(data="builtin:digits", amp="auto"), CPU)
    assert settings.amp_dtype == want and scaler is None
    assert line in caplog.text
    inference = device_mod.amp_dtype("auto", CPU, quiet=True)  # predict and evaluate: float32 where bf16 is slower
    assert inference == (None if cpu == EMERALD_RAPIDS else want)
    assert device_mod.step_settings(TrainConfig(data="builtin:digits", amp="off"), CPU)[0].amp_dtype is None
    assert device_mod.step_settings(TrainConfig(data="builtin:digits", amp="bf16"), CPU)[0].amp_dtype == torch.bfloat16


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("amp")
    data = make_folder(root / "数据", per_class=6)
    model = sedensenet.create_model("se_densenet_tiny", num_classes=2)
    meta = sedensenet.checkpoint.CheckpointMeta(
        model=model.config.to_dict(), classes=list(CLASSES), image_size=24, mean=[0.5] * 3, std=[0.25] * 3
    )
    path = root / "模型.safetensors"
    sedensenet.checkpoint.save_checkpoint(path, model, meta)
    return path, data


@pytest.mark.parametrize(("native", "amp", "want"), [(True, "auto", "bf16"), (False, "auto", "fp32"),
                                                     (True, "off", "fp32")])  # fmt: skip
def test_evaluate_records_the_precision(
    checkpoint: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, native: bool, amp: str, want: str
) -> None:
    _caps(monkeypatch, True, X86_WITH if native else X86_WITHOUT)
    path, data = checkpoint
    argv = ["evaluate", str(path), "--data", str(data), "--split", "all", "--output", str(tmp_path), "--amp", amp]
    assert main([*argv, "--device", "cpu", "-q"]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert (metrics["precision"], metrics["inference_backend"], metrics["num_samples"]) == (want, "eager", 12)


def test_bf16_predictions_agree_with_fp32_and_large_jobs_stay_on_bf16_eager(
    checkpoint: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _caps(monkeypatch, True, X86_WITH)
    path, data = checkpoint
    bf16, fp32 = (sedensenet.predict(path, data, top_k=2, device="cpu", amp=a) for a in ("auto", "off"))
    probs = [torch.tensor([[dict(p.top_k)[c] for c in CLASSES] for p in ps]) for ps in (bf16, fp32)]
    assert (probs[0] - probs[1]).abs().max() <= 0.02  # probabilities carry bf16's ~2^-9 relative rounding
    predictor = Predictor.load(path, InferenceSettings(device="cpu"))
    predictor.runner(images=10)
    assert predictor.amp_dtype == torch.bfloat16  # small jobs: the eager path under bf16 autocast
    # Large jobs too: bf16 eager beats ONNX Runtime's float32 on a CPU with bf16 units (1.57x measured).
    assert not isinstance(predictor.runner(images=ONNX_MIN_IMAGES), OnnxRuntimeModule)
    assert describe(predictor.runner(images=ONNX_MIN_IMAGES)) == "eager"
    assert resolve_backend("auto", "cpu", ONNX_MIN_IMAGES, low_precision=True) == "eager"
    assert resolve_backend("onnxruntime", "cpu", ONNX_MIN_IMAGES, low_precision=True) == "onnxruntime"


def test_unknown_amp_is_refused_by_name(checkpoint: tuple[Path, Path]) -> None:
    with pytest.raises(sedensenet.config.ConfigError, match="--amp 'int8'"):
        Predictor.load(checkpoint[0], InferenceSettings(device="cpu", amp="int8"))


def test_a_run_records_the_precision_auto_measured_and_a_resume_keeps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _caps(monkeypatch, True, X86_WITHOUT)  # no bf16 units: auto trains in float32 here
    data = make_folder(tmp_path / "data", per_class=4)
    settings = {"model": "se_densenet_tiny", "image_size": 16, "batch_size": 4, "workers": 0}
    first = sedensenet.train(data=str(data), project=str(tmp_path / "runs"), epochs=1, **settings)
    assert yaml.safe_load((first.run_dir / "config.yaml").read_text(encoding="utf-8"))["amp"] == "off"
    _caps(monkeypatch, True, X86_WITH)  # resumed on an EPYC, where auto would pick bf16: the run keeps float32
    resumed = sedensenet.train(resume=first.run_dir, epochs=2)
    assert yaml.safe_load((resumed.run_dir / "config.yaml").read_text(encoding="utf-8"))["amp"] == "off"
    fresh = sedensenet.train(data=str(data), project=str(tmp_path / "runs"), epochs=1, **settings)
    assert yaml.safe_load((fresh.run_dir / "config.yaml").read_text(encoding="utf-8"))["amp"] == "bf16"
