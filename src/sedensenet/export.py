"""ONNX and TorchScript export, verified against the eager model; :class:`OnnxModel` runs an exported file.

ONNX goes through :func:`sedensenet.inference.export_onnx`, the package's one ONNX exporter (TorchScript-based,
offline; the ``torch.export``-based one only as a fallback when ``onnxscript`` is installed); the file runner
:class:`OnnxModel` lives in :mod:`sedensenet.inference` too and is re-exported here.

An exported ``.onnx`` file carries everything :class:`~sedensenet.engine.predictor.Predictor` needs in its
``metadata_props``: the full checkpoint metadata as JSON under ``sedensenet``, plus ``classes``,
``image_size``, ``mean``, ``std``, ``in_chans``, ``resize``, ``model_config`` and ``sedensenet_version`` as
separate keys for other runtimes. A TorchScript file carries the same JSON as the extra file ``sedensenet.json``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import nn

from sedensenet.checkpoint import (
    CheckpointError,
    CheckpointMeta,
    load_checkpoint,
    meta_from_json,
    meta_to_json,
    resolve_checkpoint,
)
from sedensenet.errors import UserError
from sedensenet.fileio import atomic_path
from sedensenet.inference import (
    INPUT_NAME,
    MIN_OPSET,
    ONNX_META_KEY,
    OUTPUT_NAME,
    OnnxExportError,
    OnnxModel,
    export_onnx,
    quiet_deprecations,
)

if TYPE_CHECKING:
    from sedensenet.quantize import QuantReport

logger = logging.getLogger(__name__)

__all__ = ["FORMATS", "INPUT_NAME", "MIN_OPSET", "OUTPUT_NAME", "ExportError", "ExportResult", "OnnxModel",
           "SpeedResult", "compare_speed", "export_model", "load_torchscript"]  # fmt: skip

FORMATS = ("onnx", "torchscript")
EXPORT_FORMAT = "sedensenet-export"
VERIFY_ATOL = 1e-4
"""Largest absolute difference in logits between the exported and the eager model that passes verification: the
raw outputs, before softmax (single-label) or each label's sigmoid (multi-label), so it bounds both tasks'
probabilities (a sigmoid moves at most a quarter of its input's change)."""
TORCHSCRIPT_META = "sedensenet.json"
_SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}


class ExportError(UserError, ValueError):
    """An export that cannot be made or that does not reproduce the eager model; the message says why."""


@dataclass
class ExportResult:
    """What :func:`export_model` wrote and how closely it matches the eager model."""

    path: Path
    format: str
    max_abs_diff: float | None
    """Largest absolute logit difference to the eager model on random input (None without verification)."""
    seconds: float
    """Wall time of export plus verification (and quantization and its measurement)."""
    quantization: dict | None = None
    """For an int8 model: what :func:`sedensenet.quantize.measure` found (agreement, accuracies, images)."""


def _random_batch(batch: int, meta: CheckpointMeta, image_size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, meta.in_chans, image_size, image_size, generator=generator)  # (B, C, S, S)


def _max_abs_diff(reference: torch.Tensor, other: torch.Tensor | np.ndarray) -> float:
    other = torch.as_tensor(other)
    if other.shape != reference.shape:
        raise ExportError(f"the exported model returned shape {tuple(other.shape)}, eager {tuple(reference.shape)}")
    return float((reference.double() - other.double()).abs().max())


def _check_diff(diff: float, fmt: str) -> None:
    if not diff <= VERIFY_ATOL:  # also catches NaN
        raise ExportError(
            f"the {fmt} export differs from the eager model by up to {diff:.3g} (tolerance {VERIFY_ATOL:g}); "
            "nothing was written"
        )


def export_model(
    checkpoint: str | os.PathLike,
    format: Literal["onnx", "torchscript"] = "onnx",
    output: str | os.PathLike | None = None,
    opset: int = MIN_OPSET,
    image_size: int | None = None,
    verify: bool = True,
    quantize: Literal["int8"] | None = None,
    quant_data: str | os.PathLike | None = None,
    eval_data: str | os.PathLike | None = None,
    force: bool = False,
) -> ExportResult:
    """Export a checkpoint to ONNX or TorchScript, verified against the eager model on the spot.

    Args:
        checkpoint: checkpoint .safetensors or run folder (its best checkpoint).
        format: ``"onnx"`` or ``"torchscript"``.
        output: file to write (default: beside the checkpoint, as ``.onnx`` / ``.torchscript.pt``).
        opset: ONNX opset (17 or newer).
        image_size: size of the example input (default: the checkpoint's); not with ``quantize``: int8 is calibrated
            at the model's size.
        verify: run the written model on a random batch and compare with the eager model.
        quantize: ONNX Runtime static int8 quantization (measured; see docs): ``"int8"`` for an ONNX model quantized
            by ONNX Runtime (see :mod:`sedensenet.quantize`), written by default as ``<checkpoint>.int8.onnx``;
            ``None`` for fp32.
        quant_data: images to calibrate int8 on (default: the run's training split); with ``quantize`` only.
        eval_data: labelled images to judge int8 on (default: the run's validation split); with ``quantize`` only.
        force: write an int8 model even under 99% agreement with fp32; with ``quantize`` only.

    Returns:
        The path written, the largest absolute logit difference, the time taken and, for int8, the measurement.

    Raises:
        ExportError: an unknown format, a too-old opset, or outputs that differ by more than 1e-4
            (the file is not written then).
        QuantizationError: no calibration or evaluation data, the two overlap, or the int8 model agrees with fp32
            on fewer than 99% of the held-out images (a multi-label model: its decisions for some label; without
            ``force``); nothing is written then.
    """
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; choose one of: {', '.join(FORMATS)}")
    if format == "onnx" and opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: use {MIN_OPSET} or newer")
    if quantize not in (None, "int8"):
        raise ExportError(f"unknown quantization {quantize!r}: the one supported is int8")
    if quantize and format != "onnx":
        raise ExportError(f"--quantize {quantize} needs --format onnx (ONNX Runtime quantizes), not {format}")
    if quantize is None and (quant_data or eval_data or force):
        raise ExportError("--quant-data, --eval-data and --force go with --quantize int8")
    if quantize and image_size:
        raise ExportError("--image-size cannot be combined with --quantize: int8 is calibrated at the model's size")
    if quantize:
        return _export_int8(checkpoint, output, opset, quant_data, eval_data, force)
    start = time.perf_counter()
    source = resolve_checkpoint(checkpoint)
    model, meta = load_checkpoint(source)
    size = int(image_size or meta.image_size)
    if size != meta.image_size:
        # figures measured at another input size do not describe this file
        meta = replace(meta, image_size=size, evaluation=None)
    try:
        model.check_input(_random_batch(1, meta, size, 0))
    except ValueError as e:
        raise ExportError(str(e)) from None
    path = Path(output) if output is not None else source.with_suffix(_SUFFIXES[format])
    writer = _write_onnx if format == "onnx" else _write_torchscript
    with atomic_path(path) as tmp:
        diff = writer(model, meta, tmp, opset, verify)
    seconds = time.perf_counter() - start
    if diff is None:
        logger.info("exported %s to %s (%s, not verified) in %.1fs", source, path, format, seconds)
    else:
        logger.info("exported %s to %s (%s) in %.1fs; max abs diff to eager %.3g", source, path, format, seconds, diff)
    return ExportResult(path, format, diff, seconds)


def _export_int8(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike | None,
    opset: int,
    quant_data: str | os.PathLike | None,
    eval_data: str | os.PathLike | None,
    force: bool,
) -> ExportResult:
    """fp32 ONNX in a temporary folder, quantized, measured on held-out images; written only when it agrees."""
    import tempfile

    import onnx

    from sedensenet.quantize import MIN_AGREEMENT, QUANT_META_KEY, QuantizationError, choose_images, quantize_onnx

    start = time.perf_counter()
    source = resolve_checkpoint(checkpoint)
    model, meta = load_checkpoint(source)
    data = choose_images(source, meta, quant_data, eval_data)  # bad data is refused before any work
    path = Path(output) if output is not None else source.with_suffix(".int8.onnx")
    with tempfile.TemporaryDirectory(prefix="sedensenet-int8-") as tmp:
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        diff = _write_onnx(model, meta, fp32, opset, verify=True)
        report = quantize_onnx(fp32, int8, meta, data)
        figures = report.to_dict()
        _log_quantization(report)
        if report.agreement < MIN_AGREEMENT and not force:
            raise QuantizationError(_refusal(report, MIN_AGREEMENT))
        int8_meta = replace(meta, extra={**meta.extra, QUANT_META_KEY: figures})
        proto = onnx.load_model(str(int8))
        del proto.metadata_props[:]
        props = _onnx_metadata(int8_meta)
        props[QUANT_META_KEY] = json.dumps(figures, ensure_ascii=False)
        onnx.helper.set_model_props(proto, props)
        proto.producer_name = "sedensenet"
        with atomic_path(path) as target:
            onnx.save_model(proto, str(target))
    seconds = time.perf_counter() - start
    logger.info("exported %s to %s (onnx int8) in %.1fs", source, path, seconds)
    return ExportResult(path, "onnx", diff, seconds, figures)


def _log_quantization(report: QuantReport) -> None:
    logger.info("int8 vs fp32 on %d held-out images: %s agreement %.4f, accuracy %.4f -> %.4f", report.eval_images,
                "top-1" if report.per_label is None else "lowest per-label", report.agreement, report.fp32_accuracy,
                report.int8_accuracy)  # fmt: skip
    for label, row in (report.per_label or {}).items():
        logger.info("  %s: decisions agree on %.4f, mean |p(int8) - p(fp32)| %.4f", label, row["agreement"],
                    row["mean_abs_diff"])  # fmt: skip


def _refusal(report: QuantReport, bar: float) -> str:
    """Why an int8 model is not written: its agreement (a multi-label model's failing labels) under the bar."""
    if report.per_label is None:
        return (f"the int8 model agrees with fp32 on {report.agreement:.2%} of {report.eval_images} held-out images "
                f"(accuracy {report.fp32_accuracy:.4f} -> {report.int8_accuracy:.4f}), under the {bar:.0%} required; "
                "nothing was written (--force writes it anyway)")  # fmt: skip
    failing = ", ".join(f"{name} {report.per_label[name]['agreement']:.2%}" for name in report.failing_labels())
    return (f"the int8 model's decisions agree with fp32's on {report.eval_images} held-out images under the "
            f"{bar:.0%} required for label(s): {failing}; nothing was written (--force writes it anyway)")  # fmt: skip


def _onnx_metadata(meta: CheckpointMeta) -> dict[str, str]:
    from sedensenet import __version__

    return {
        ONNX_META_KEY: meta_to_json(meta, EXPORT_FORMAT),
        "classes": json.dumps(meta.classes, ensure_ascii=False),
        **_task_metadata(meta),
        "image_size": str(meta.image_size),
        "mean": json.dumps(list(meta.mean)),
        "std": json.dumps(list(meta.std)),
        "in_chans": str(meta.in_chans),
        "resize": meta.resize,
        "input_layout": "NCHW float32, RGB scaled to [0, 1] then (x - mean) / std",
        "model_config": json.dumps(meta.model, ensure_ascii=False),
        "sedensenet_version": __version__,
    }


def _task_metadata(meta: CheckpointMeta) -> dict[str, str]:
    """For other runtimes: a multi-label file says its outputs are one logit per label, and each label's decision."""
    if not meta.multilabel:
        return {}
    labels = [{"name": d.name, "threshold": d.threshold, "temperature": d.temperature} for d in meta.labels or []]
    return {
        "task": "multi",
        "outputs": "logits, one per label: probability = sigmoid(logit / temperature), present when >= threshold",
        "labels": json.dumps(labels, ensure_ascii=False),
    }


def _write_onnx(model: nn.Module, meta: CheckpointMeta, tmp: Path, opset: int, verify: bool) -> float | None:
    import onnx

    try:
        onnx_bytes = export_onnx(model, _random_batch(2, meta, meta.image_size, 1), opset)
    except OnnxExportError as e:
        raise ExportError(str(e)) from e
    proto = onnx.load_model_from_string(onnx_bytes)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, _onnx_metadata(meta))
    proto.producer_name = "sedensenet"
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(tmp))
    if not verify:
        return None
    # A batch size other than the traced one, so a batch dimension baked into the graph would show up.
    x = _random_batch(3, meta, meta.image_size, 2)
    with torch.no_grad():
        expected = model(x)
    diff = _max_abs_diff(expected, OnnxModel(tmp)(x))
    _check_diff(diff, "onnx")
    return diff


def _write_torchscript(model: nn.Module, meta: CheckpointMeta, tmp: Path, opset: int, verify: bool) -> float | None:
    del opset  # ONNX only
    with quiet_deprecations(), torch.no_grad():
        traced = torch.jit.trace(model, _random_batch(2, meta, meta.image_size, 1))
        torch.jit.save(traced, str(tmp), _extra_files={TORCHSCRIPT_META: meta_to_json(meta, EXPORT_FORMAT)})
    if not verify:
        return None
    loaded, _ = load_torchscript(tmp)
    x = _random_batch(3, meta, meta.image_size, 2)
    with torch.no_grad():
        diff = _max_abs_diff(model(x), loaded(x))
    _check_diff(diff, "torchscript")
    return diff


def load_torchscript(path: str | os.PathLike) -> tuple[torch.jit.ScriptModule, CheckpointMeta]:
    """Load a TorchScript file written by :func:`export_model`, with its metadata (CPU, eval mode)."""
    path = Path(path)
    extra = {TORCHSCRIPT_META: ""}
    try:
        with quiet_deprecations():
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except (RuntimeError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable TorchScript file: {e}") from None
    if not extra[TORCHSCRIPT_META]:
        raise CheckpointError(f"{path} has no sedensenet metadata: export it with `sedensenet export`")
    return module.eval(), meta_from_json(extra[TORCHSCRIPT_META], path)


@dataclass
class SpeedResult:
    """Inference throughput of the eager model and the exported ONNX model on the same random batches."""

    batch_size: int
    eager_images_per_second: float
    onnxruntime_images_per_second: float

    @property
    def speedup(self) -> float:
        return self.onnxruntime_images_per_second / self.eager_images_per_second


def compare_speed(
    checkpoint: str | os.PathLike, onnx_path: str | os.PathLike, batch_size: int = 8, repeats: int = 10
) -> SpeedResult:
    """Time eager PyTorch against ONNX Runtime (CPU) on ``repeats`` batches after one warm-up each."""
    model, _ = load_checkpoint(resolve_checkpoint(checkpoint))
    runtime = OnnxModel(onnx_path)
    x = _random_batch(batch_size, runtime.meta, runtime.meta.image_size, 0)
    rates = []
    for run in (model, runtime):
        with torch.inference_mode():
            run(x)
            start = time.perf_counter()
            for _ in range(repeats):
                run(x)
        rates.append(batch_size * repeats / (time.perf_counter() - start))
    return SpeedResult(batch_size, rates[0], rates[1])
