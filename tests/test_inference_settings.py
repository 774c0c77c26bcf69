"""InferenceSettings: how a model runs, declared once and checked once, whoever builds it."""

from __future__ import annotations

import pytest

from sedensenet.api import inference_settings
from sedensenet.config import INFERENCE_BACKENDS, ConfigError, InferenceSettings
from sedensenet.serve.settings import ServeSettings


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("backend", "tensorrt", "--backend 'tensorrt' is not an inference backend: choose from auto, onnxruntime"),
        ("tta", "mirror", "--tta 'mirror' is not a test-time augmentation: choose from none, flip, vflip"),
        ("amp", "int8", "--amp 'int8' is not a precision: choose from auto, off, bf16, fp16"),
        ("batch_size", 0, "--batch-size must be a whole number >= 1, got 0"),
        ("batch_size", True, "--batch-size must be a whole number >= 1, got True"),
        ("workers", -2, "--workers must be a whole number >= -1, got -2"),
        ("device", "", "--device '': give auto, cpu, cuda, cuda:N or mps"),
    ],
)
def test_a_bad_setting_names_the_flag_and_what_is_valid(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        InferenceSettings(**{field: value})


def test_keyword_arguments_become_settings_in_one_place() -> None:
    base = InferenceSettings(device="cpu", tta="vflip")
    assert inference_settings(base, amp="off", batch_size=8) == InferenceSettings("cpu", "auto", "vflip", "off", 8)
    assert inference_settings() == InferenceSettings()
    with pytest.raises(TypeError, match="unknown inference setting.*'bacth_size'.*valid: amp, backend, batch_size"):
        inference_settings(bacth_size=8)
    with pytest.raises(ConfigError, match="--backend 'gpu'"):  # replaced fields are checked like new ones
        inference_settings(base, backend="gpu")


def test_the_server_runs_with_predicts_settings() -> None:
    served = ServeSettings(backend="reference", device="cpu", max_batch=8, max_queue=8).inference
    assert served == InferenceSettings(device="cpu", backend="reference", batch_size=8)
    assert set(INFERENCE_BACKENDS) >= {"auto", "reference", "onnxruntime-int8"}
    with pytest.raises(ValueError, match="--backend 'tpu' is not an inference backend"):
        ServeSettings(backend="tpu")
