"""int8 ONNX models: ONNX Runtime's static quantization, calibrated and judged on different images.

:func:`quantize_onnx` takes an fp32 ``.onnx`` file written by :mod:`sedensenet.export` and

1. calibrates activation ranges on a few hundred images (:data:`CALIBRATION_IMAGES`) of the run's own training
   split (the run folder's ``config.yaml``, else the checkpoint's metadata, names the data and its split), or
   on ``quant_data``;
2. quantizes weights per output channel and activations per tensor, in the QDQ format (``quantize_static``);
3. measures on held-out images (the run's validation split, or ``eval_data``) the top-1 agreement of the int8
   model with the fp32 one and the change in accuracy, and refuses a model whose agreement is under
   :data:`MIN_AGREEMENT` unless forced.

The calibration images and the evaluation images are checked to be disjoint: a model is never judged on the
images that set its ranges.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sedensenet.checkpoint import CheckpointMeta
from sedensenet.config import TrainConfig, load_yaml
from sedensenet.data import ImageFolderDataset, Sample, build_transforms, resolve_data
from sedensenet.data.description import DataDescription, resolve
from sedensenet.errors import UserError

log = logging.getLogger(__name__)

CALIBRATION_IMAGES = 300
"""Images drawn (seeded) from the calibration set to fit the activation ranges: ONNX Runtime's guidance is a few
hundred; more moves MinMax ranges little and costs calibration time (the whole graph's activations are kept)."""
MIN_AGREEMENT = 0.99
"""The least top-1 agreement with the fp32 model, on held-out images, for an int8 model to be written."""
QUANT_META_KEY = "quantization"
"""Key of the measured figures in the exported file's metadata (and in ``meta.extra`` of its checkpoint JSON)."""


class QuantizationError(UserError, ValueError):
    """An int8 model that cannot be made or that disagrees too often with the fp32 one; the message says why."""


@dataclass
class QuantReport:
    """What quantization measured on the held-out images (stored in the int8 model's metadata)."""

    calibration_images: int
    calibration_data: str
    eval_images: int
    eval_data: str
    agreement: float
    """Share of held-out images whose top-1 class is the same for the int8 and the fp32 model."""
    fp32_accuracy: float
    int8_accuracy: float
    method: str = "onnxruntime quantize_static, QDQ, weights int8 per channel, activations uint8 per tensor, MinMax"

    @property
    def accuracy_change(self) -> float:
        return self.int8_accuracy - self.fp32_accuracy

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "accuracy_change": self.accuracy_change, "min_agreement": MIN_AGREEMENT}


@dataclass
class QuantData:
    """The images that calibrate and the labelled images that judge, chosen before any work."""

    calibration: list[Path]
    calibration_source: str
    evaluation: list[Sample]
    """Labels are indices into the model's classes."""
    evaluation_source: str


def choose_images(
    checkpoint: Path,
    meta: CheckpointMeta,
    quant_data: str | os.PathLike | None = None,
    eval_data: str | os.PathLike | None = None,
    calibration_images: int = CALIBRATION_IMAGES,
) -> QuantData:
    """The calibration files and the labelled evaluation samples for ``checkpoint``; disjoint, or an error.

    Without ``quant_data`` the run's training split is used, without ``eval_data`` its validation split; the run's
    data, validation share and split seed come from ``RUN/config.yaml`` beside ``RUN/weights/``, else from the
    checkpoint's metadata.
    """
    run = _run_data(checkpoint, meta)
    if (quant_data is None or eval_data is None) and run is None:
        raise QuantizationError(
            f"{checkpoint} names no training data (no run folder config.yaml, no data in its metadata): "
            "give --quant-data DIR (calibration images) and --eval-data DIR (labelled held-out images)"
        )
    run_splits = resolve(run) if run is not None and (quant_data is None or eval_data is None) else None
    if quant_data is None:
        calibration, calibration_source = [s.path for s in run_splits.train], f"{run.path} (training split)"
    else:
        from sedensenet.engine.samples import expand_inputs

        calibration, calibration_source = expand_inputs(resolve_data(str(quant_data))), str(quant_data)
    if eval_data is None:
        if not run_splits.val:
            raise QuantizationError(f"{run.path} has no validation split to judge the int8 model: give --eval-data")
        evaluation, evaluation_source = _relabel(run_splits.val, run_splits.classes, meta), f"{run.path} (val)"
    else:
        splits = resolve(replace(DataDescription.for_data(eval_data), val_split=0.0))
        chosen = splits.test or splits.val or splits.train
        evaluation, evaluation_source = _relabel(chosen, splits.classes, meta), str(eval_data)
    judged = {Path(s.path).resolve() for s in evaluation}
    overlap = sorted(p for p in calibration if Path(p).resolve() in judged)
    if overlap:
        raise QuantizationError(
            f"{len(overlap)} calibration image(s) are also evaluation images (e.g. {overlap[0]}): "
            "an int8 model must not be judged on the images that calibrated it; give other --quant-data/--eval-data"
        )
    if not calibration:
        raise QuantizationError(f"no calibration images in {calibration_source}")
    rng = random.Random(0)
    chosen_files = sorted(rng.sample(list(calibration), min(calibration_images, len(calibration))))
    return QuantData(chosen_files, calibration_source, evaluation, evaluation_source)


def _run_data(checkpoint: Path, meta: CheckpointMeta) -> DataDescription | None:
    """The run's data and split: its checkpoint's description, else the run folder's config.yaml beside
    ``RUN/weights/`` (runs from before the checkpoint stored one; their split is rebuilt from the same settings)."""
    config = checkpoint.parent.parent / "config.yaml"
    if meta.data is None and checkpoint.parent.name == "weights" and config.is_file():
        from sedensenet.engine.session import describe

        cfg = load_yaml(config)
        if cfg.get("data"):
            known = {f.name for f in fields(TrainConfig)}
            return describe(TrainConfig.from_dict({k: v for k, v in cfg.items() if k in known}, source=str(config)))
    return meta.description()


def _relabel(samples: list[Sample], data_classes: list[str], meta: CheckpointMeta) -> list[Sample]:
    unknown = sorted(set(data_classes) - set(meta.classes))
    if unknown:
        raise QuantizationError(f"evaluation class folder(s) {unknown} are not classes of this model ({meta.classes})")
    index = {name: i for i, name in enumerate(meta.classes)}
    return [Sample(s.path, index[data_classes[s.label]]) for s in samples]


def _batches(files: list[Sample], meta: CheckpointMeta, batch_size: int = 32) -> Iterator[tuple[np.ndarray, list]]:
    """Preprocessed float32 batches ``(B, C, S, S)`` of ``files`` (the model's own eval transform) with labels."""
    transform = build_transforms(meta.image_size, train=False, augment="none", mean=tuple(meta.mean),
                                 std=tuple(meta.std), in_chans=meta.in_chans)  # fmt: skip
    dataset = ImageFolderDataset(files, transform=transform, in_chans=meta.in_chans)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    for x, y in loader:
        yield x.numpy(), y.tolist()


class _Calibration:
    """ONNX Runtime's CalibrationDataReader protocol over an iterator of float32 input batches."""

    def __init__(self, batches: Iterator[np.ndarray], input_name: str) -> None:
        self._batches = batches
        self._input = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._input: batch}


def quantize_file(fp32_path: Path, out_path: Path, batches: Iterator[np.ndarray], *, signed: bool = False) -> None:
    """Write ``fp32_path`` quantized to int8 (QDQ) to ``out_path``, activation ranges calibrated on ``batches``.

    Weights are int8 per output channel (DenseNet's 1x1 convolutions mix hundreds of channels whose scales differ
    widely); activations are uint8 per tensor (``signed``: int8), the pair ONNX Runtime's x86 kernels run fastest
    on CPUs with VNNI. BatchNormalization is left in float: in DenseNet's pre-activation order it follows a
    concatenation, has no convolution to fold into, and ONNX Runtime has no int8 kernel for it. The classifier
    (``Gemm``) stays float too: a negligible share of the work, and where the decision is made (on a digits model
    it raised top-1 agreement with fp32 from 96.4% to 97.2%).
    """
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry
    from onnxruntime.quantization.shape_inference import quant_pre_process

    input_name = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    op_types = sorted(set(QDQRegistry) - {"BatchNormalization", "Gemm"})
    with tempfile.TemporaryDirectory(prefix="sedensenet-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:  # shape inference and graph fusions first, as ONNX Runtime recommends before quantizing
            quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        except Exception as e:  # an optional step: quantize the plain graph when it fails
            log.info("quantization pre-processing skipped (%s: %s)", type(e).__name__, e)
            prepared = fp32_path
        quantize_static(
            str(prepared), str(out_path), _Calibration(batches, input_name), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=op_types, per_channel=True, weight_type=QuantType.QInt8,
            activation_type=QuantType.QInt8 if signed else QuantType.QUInt8, calibrate_method=CalibrationMethod.MinMax,
        )  # fmt: skip


def quantize_onnx(fp32_path: Path, out_path: Path, meta: CheckpointMeta, data: QuantData) -> QuantReport:
    """Write the int8 model of ``fp32_path`` to ``out_path`` (a plain file: the caller renames it into place)
    and return what it measured on the held-out images; the caller sets the file's metadata."""
    batches = (x for x, _ in _batches([Sample(f, 0) for f in data.calibration], meta, batch_size=16))
    quantize_file(fp32_path, out_path, batches)
    return measure(fp32_path, out_path, meta, data)


def measure(fp32_path: Path, int8_path: Path, meta: CheckpointMeta, data: QuantData) -> QuantReport:
    """Top-1 agreement and accuracies of the two models on ``data.evaluation``."""
    import onnxruntime as ort

    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fp32_path, int8_path)]
    name = sessions[0].get_inputs()[0].name
    same = right32 = right8 = n = 0
    for x, y in _batches(data.evaluation, meta):
        top32, top8 = (s.run(None, {name: x})[0].argmax(1) for s in sessions)
        labels = np.asarray(y)
        same += int((top32 == top8).sum())
        right32 += int((top32 == labels).sum())
        right8 += int((top8 == labels).sum())
        n += len(labels)
    if n == 0:
        raise QuantizationError(f"no evaluation images in {data.evaluation_source}")
    return QuantReport(len(data.calibration), data.calibration_source, n, data.evaluation_source, same / n,
                       right32 / n, right8 / n)  # fmt: skip
