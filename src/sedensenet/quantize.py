"""int8 ONNX models: ONNX Runtime's static quantization, calibrated and judged on different images.

:func:`quantize_onnx` takes an fp32 ``.onnx`` file written by :mod:`sedensenet.export` and

1. calibrates activation ranges on a few hundred images (:data:`CALIBRATION_IMAGES`) of the run's own training
   split (the run folder's ``config.yaml``, else the checkpoint's metadata, names the data and its split), or
   on ``quant_data``;
2. quantizes weights per output channel and activations per tensor, in the QDQ format (``quantize_static``);
3. measures on held-out images (the run's validation split, or ``eval_data``) the top-1 agreement of the int8
   model with the fp32 one and the change in accuracy, and refuses a model whose agreement is under
   :data:`MIN_AGREEMENT` unless forced. A multi-label model is measured per label: the share of images whose
   decision for that label (its calibrated sigmoid at its stored threshold, as predict decides) is the fp32 model's,
   and the mean absolute difference of its probability; the gate passes when every label's agreement reaches the
   bar, and ``agreement`` is the lowest label's.

The calibration images and the evaluation images are checked to be disjoint: a model is never judged on the
images that set its ranges.
"""

from __future__ import annotations

import logging
import math
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
from sedensenet.data import DataError, ImageFolderDataset, Sample, build_transforms, resolve_data
from sedensenet.data.description import DataDescription, resolve
from sedensenet.engine.samples import expand_inputs, relabel
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
    """Multi-label: the lowest label's agreement (the gate's figure; each label's is in ``per_label``)."""
    fp32_accuracy: float
    """Multi-label: binary accuracy, the share of known label entries decided right."""
    int8_accuracy: float
    method: str = "onnxruntime quantize_static, QDQ, weights int8 per channel, activations uint8 per tensor, MinMax"
    per_label: dict[str, dict[str, float | None]] | None = None
    """Multi-label: per label name, ``agreement`` (share of images decided alike), ``mean_abs_diff`` (of the
    probabilities), ``fp32_accuracy`` and ``int8_accuracy`` (over the images whose label is known; None when none
    is) and ``passed`` (agreement at least :data:`MIN_AGREEMENT`); None for a single-label model."""

    @property
    def accuracy_change(self) -> float:
        return self.int8_accuracy - self.fp32_accuracy

    def failing_labels(self) -> list[str]:
        """Multi-label: the labels whose agreement is under :data:`MIN_AGREEMENT`, lowest first."""
        rows = (self.per_label or {}).items()
        return [name for name, row in sorted(rows, key=lambda r: r[1]["agreement"]) if not row["passed"]]

    def to_dict(self) -> dict[str, Any]:
        figures = {**asdict(self), "accuracy_change": self.accuracy_change, "min_agreement": MIN_AGREEMENT}
        if self.per_label is None:  # a single-label report stays what earlier versions wrote
            del figures["per_label"]
        else:
            figures["task"] = "multi"
        return figures


@dataclass
class QuantData:
    """The images that calibrate and the labelled images that judge, chosen before any work."""

    calibration: list[Path]
    calibration_source: str
    evaluation: list[Sample]
    """Labels are indices into the model's classes; a multi-label model's are label vectors in its label order
    (1.0 present, 0.0 absent, NaN ignored)."""
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
    if meta.multilabel:
        return _relabel_multi(samples, data_classes, meta)
    unknown = sorted(set(data_classes) - set(meta.classes))
    if unknown:
        raise QuantizationError(f"evaluation class folder(s) {unknown} are not classes of this model ({meta.classes})")
    index = {name: i for i, name in enumerate(meta.classes)}
    return [Sample(s.path, index[data_classes[s.label]]) for s in samples]


def _relabel_multi(samples: list[Sample], data_labels: list[str], meta: CheckpointMeta) -> list[Sample]:
    """Multi-label samples with their label vectors in the model's label order (a label the data lacks: NaN)."""
    try:
        return relabel(samples, data_labels, list(meta.classes), source="evaluation data")
    except DataError as e:
        raise QuantizationError(str(e)) from None


def _batches(files: list[Sample], meta: CheckpointMeta, batch_size: int = 32) -> Iterator[tuple[np.ndarray, Any]]:
    """Preprocessed float32 batches ``(B, C, S, S)`` of ``files`` (the model's own eval transform) with labels
    ``(B,)`` (class indices) or ``(B, K)`` (label vectors, NaN where ignored)."""
    transform = build_transforms(meta.image_size, train=False, augment="none", mean=tuple(meta.mean),
                                 std=tuple(meta.std), in_chans=meta.in_chans)  # fmt: skip
    dataset = ImageFolderDataset(files, transform=transform, in_chans=meta.in_chans)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    for x, y in loader:
        # a batch of label vectors is a (B, K) tensor, or K (B,) tensors where the dataset yields tuples
        labels = torch.stack([torch.as_tensor(v) for v in y], 1) if isinstance(y, list | tuple) else y
        yield x.numpy(), labels.numpy()


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


def _sessions(fp32_path: Path, int8_path: Path) -> tuple[list[Any], str]:
    import onnxruntime as ort

    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fp32_path, int8_path)]
    return sessions, sessions[0].get_inputs()[0].name


def measure(fp32_path: Path, int8_path: Path, meta: CheckpointMeta, data: QuantData) -> QuantReport:
    """Top-1 agreement and accuracies of the two models on ``data.evaluation`` (per label for a multi-label
    model: :func:`measure_labels`)."""
    if meta.multilabel:
        return measure_labels(fp32_path, int8_path, meta, data)
    sessions, name = _sessions(fp32_path, int8_path)
    same = right32 = right8 = n = 0
    for x, y in _batches(data.evaluation, meta):
        top32, top8 = (s.run(None, {name: x})[0].argmax(1) for s in sessions)
        same += int((top32 == top8).sum())
        right32 += int((top32 == y).sum())
        right8 += int((top8 == y).sum())
        n += len(y)
    if n == 0:
        raise QuantizationError(f"no evaluation images in {data.evaluation_source}")
    return QuantReport(len(data.calibration), data.calibration_source, n, data.evaluation_source, same / n,
                       right32 / n, right8 / n)  # fmt: skip


def measure_labels(fp32_path: Path, int8_path: Path, meta: CheckpointMeta, data: QuantData) -> QuantReport:
    """A multi-label model's int8 against its fp32 one on ``data.evaluation``, label by label: decisions as predict
    makes them (:func:`~sedensenet.engine.decision.postprocess`, then each label's threshold), agreement over every
    image, accuracy over the images whose label is known (NaN: ignored)."""
    from sedensenet.engine.decision import decide_labels, postprocess

    sessions, name = _sessions(fp32_path, int8_path)
    probs: list[list[np.ndarray]] = [[], []]
    targets = []
    for x, y in _batches(data.evaluation, meta):
        for out, session in zip(probs, sessions, strict=True):
            out.append(postprocess(1.0 / (1.0 + np.exp(-session.run(None, {name: x})[0].astype(np.float64))), meta))
        targets.append(np.asarray(y, dtype=np.float64).reshape(len(x), -1))
    if not targets:
        raise QuantizationError(f"no evaluation images in {data.evaluation_source}")
    p32, p8 = (np.concatenate(p) for p in probs)  # (N, K) each
    d32, d8 = decide_labels(p32, meta), decide_labels(p8, meta)
    y = np.concatenate(targets)
    known = ~np.isnan(y)
    truth = y > 0.5
    per_label: dict[str, dict[str, float | None]] = {}
    for k, label in enumerate(meta.classes):
        seen = known[:, k]
        right = [float((d[seen, k] == truth[seen, k]).mean()) if seen.any() else None for d in (d32, d8)]
        agreement = float((d32[:, k] == d8[:, k]).mean())
        per_label[label] = {"agreement": agreement, "mean_abs_diff": float(np.abs(p32[:, k] - p8[:, k]).mean()),
                            "fp32_accuracy": right[0], "int8_accuracy": right[1], "images": int(len(y)),
                            "known": int(seen.sum()), "passed": agreement >= MIN_AGREEMENT}  # fmt: skip
    accuracy = [float((d[known] == truth[known]).mean()) if known.any() else math.nan for d in (d32, d8)]
    lowest = min(row["agreement"] for row in per_label.values())  # type: ignore[type-var]
    return QuantReport(len(data.calibration), data.calibration_source, len(y), data.evaluation_source, lowest,
                       accuracy[0], accuracy[1], per_label=per_label)  # fmt: skip
