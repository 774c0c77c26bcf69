"""Checkpoints: weights as safetensors with JSON metadata; resume state via ``torch.load(weights_only=True)``.

A checkpoint alone is enough to predict: its metadata carries the architecture, the class names and
the preprocessing (image size, mean, std, channels).
"""

from __future__ import annotations

import json
import os
import pickle
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from sedensenet.errors import UserError
from sedensenet.fileio import atomic_write
from sedensenet.models.densenet import DenseNet, DenseNetConfig

if TYPE_CHECKING:  # the data package (torchvision's transforms with it) loads only for a checkpoint that needs it
    from sedensenet.data.description import DataDescription
    from sedensenet.data.dicom import DicomOptions

FORMAT = "sedensenet-checkpoint"
FORMAT_VERSION = 1
_META_KEY = "sedensenet"


class CheckpointError(UserError, ValueError):
    """A checkpoint or resume-state file that cannot be used; the message names the file and the problem."""


@dataclass
class LabelDecision:
    """How a multi-label model decides one label: present when its (calibrated) probability reaches ``threshold``."""

    name: str
    threshold: float
    """Chosen on validation by the run's rule (``f1`` by default), or the fixed value given."""
    temperature: float | None = None
    """Divides the label's logit before the sigmoid (``--calibrate temperature``); None: none."""

    @classmethod
    def from_dict(cls, data: Any, name: str = "labels") -> LabelDecision:
        _known_keys(data, cls, name)
        if not isinstance(data.get("name"), str):
            raise TypeError(f"{name}.name must be a string, got {data.get('name')!r}")
        threshold = _number(data.get("threshold"), f"{name}.threshold", optional=False)
        if not 0 <= threshold <= 1 + 1e-9:  # type: ignore[operator]
            raise ValueError(f"{name}.threshold must be a probability, got {threshold!r}")
        temperature = _number(data.get("temperature"), f"{name}.temperature")
        if temperature is not None and not 0 < temperature < float("inf"):
            raise ValueError(f"{name}.temperature must be a positive number, got {temperature!r}")
        return cls(data["name"], float(threshold), temperature)  # type: ignore[arg-type]


TASKS = ("single", "multi")
"""``single``: one class out of N (softmax); ``multi``: any set of labels (one sigmoid per label)."""


@dataclass
class Estimate:
    """A figure and its 95% bootstrap interval ``[low, high]`` (None where none was computed, e.g. PPV)."""

    value: float | None
    interval: list[float] | None = None

    @classmethod
    def from_dict(cls, data: Any, name: str) -> Estimate:
        _known_keys(data, cls, name)
        interval = data.get("interval")
        if interval is not None and (not isinstance(interval, list) or len(interval) != 2):
            raise TypeError(f"{name}.interval must be a list [low, high], got {interval!r}")
        bounds = None if interval is None else [_number(v, f"{name}.interval", optional=False) for v in interval]
        return cls(_number(data.get("value"), f"{name}.value"), bounds)  # type: ignore[arg-type]


@dataclass
class SplitEvaluation:
    """One split's headline figures from the run's final evaluation, decided by the stored rule."""

    split: str
    """``test`` or ``val``."""
    label: str
    """What the figures may be trusted for: ``test (evaluated once, with what validation chose)`` or
    ``validation (used for selection...)``, as in metrics.json."""
    images: int
    accuracy: Estimate
    balanced_accuracy: Estimate
    roc_auc: Estimate | None = None
    sensitivity: Estimate | None = None
    """Two classes: of the positive class at the stored threshold (and below: specificity, PPV, NPV)."""
    specificity: Estimate | None = None
    ppv: Estimate | None = None
    npv: Estimate | None = None
    ece: float | None = None
    """Top-label expected calibration error of the probabilities served (after the temperature)."""
    ece_before: float | None = None
    """ECE before the temperature, when one was fitted."""

    @classmethod
    def from_dict(cls, data: Any, name: str) -> SplitEvaluation:
        _known_keys(data, cls, name)
        for key in ("split", "label"):
            if not isinstance(data.get(key), str):
                raise TypeError(f"{name}.{key} must be a string, got {data.get(key)!r}")
        images = data.get("images")
        if isinstance(images, bool) or not isinstance(images, int) or images < 0:
            raise ValueError(f"{name}.images must be a count, got {images!r}")
        figures = {
            key: None if data.get(key) is None else Estimate.from_dict(data[key], f"{name}.{key}")
            for key in ("accuracy", "balanced_accuracy", "roc_auc", "sensitivity", "specificity", "ppv", "npv")
        }
        if figures["accuracy"] is None or figures["balanced_accuracy"] is None:
            raise TypeError(f"{name} needs accuracy and balanced_accuracy")
        ece = {key: _number(data.get(key), f"{name}.{key}") for key in ("ece", "ece_before")}
        return cls(split=data["split"], label=data["label"], images=images, **figures, **ece)  # type: ignore[arg-type]


@dataclass
class EvaluationSummary:
    """The final evaluation of a run, stored in its best checkpoint so that the checkpoint alone (also copied out
    of its run folder) tells how well the model did, on which split, and with which decision rule."""

    splits: list[SplitEvaluation]
    """Test first when the run had a test split, then validation."""
    positive: str | None = None
    """Two classes: the class that sensitivity and the threshold are about."""
    threshold: float | None = None
    """The operating threshold the figures were measured at; None: the argmax decided."""
    rule: str = "argmax"
    """How the threshold was chosen (``argmax``, ``youden``, ``sens=0.95``, a fixed value)."""
    chosen_on: str | None = None
    """The split the threshold and the temperature were chosen on (``validation``), None when nothing was fitted."""
    temperature: float | None = None
    """The calibration applied before deciding (``softmax(log p / T)``); None: none."""
    calibrate: str = "none"
    inference: str = ""
    """The inference backend and precision the outputs came from."""
    confidence: float | None = None
    """The intervals' level (0.95) and bootstrap resamples; None and 0 when no intervals were computed."""
    resamples: int = 0
    evaluated_at: str | None = None
    """When the final evaluation ran (UTC, ISO 8601): the end of training."""

    @property
    def headline(self) -> SplitEvaluation:
        """The figures to quote: test's when the run had a test split."""
        return self.splits[0]

    @classmethod
    def from_dict(cls, data: Any, name: str = "evaluation") -> EvaluationSummary:
        _known_keys(data, cls, name)
        splits = data.get("splits")
        if not isinstance(splits, list) or not splits:
            raise TypeError(f"{name}.splits must be a non-empty list, got {splits!r}")
        texts = {"rule": data.get("rule", "argmax"), "calibrate": data.get("calibrate", "none"),
                 "inference": data.get("inference", "")}  # fmt: skip
        optional = {k: data.get(k) for k in ("positive", "chosen_on", "evaluated_at")}
        for key, value in {**texts, **optional}.items():
            if not isinstance(value, str) and (value is not None or key in texts):
                raise TypeError(f"{name}.{key} must be a string, got {value!r}")
        resamples = data.get("resamples", 0)
        if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 0:
            raise ValueError(f"{name}.resamples must be a count, got {resamples!r}")
        return cls(
            splits=[SplitEvaluation.from_dict(s, f"{name}.splits[{i}]") for i, s in enumerate(splits)],
            **texts, **optional, resamples=resamples,
            **{k: _number(data.get(k), f"{name}.{k}") for k in ("threshold", "temperature", "confidence")},
        )  # fmt: skip


def _known_keys(data: Any, cls: type, name: str) -> None:
    """``data`` is a JSON object whose keys are fields of ``cls`` (a newer field is an error, as at the top)."""
    if not isinstance(data, dict):
        raise TypeError(f"{name} must be an object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(cls.__dataclass_fields__))  # type: ignore[attr-defined]
    if unknown:
        raise TypeError(f"{name} has unknown fields {unknown}")


def _number(value: Any, name: str, *, optional: bool = True) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number, got {value!r}")
    return float(value)


@dataclass
class CheckpointMeta:
    """Everything besides the weights that is needed to use a model on new images."""

    model: dict[str, Any]
    """The :class:`DenseNetConfig` as a dictionary."""
    classes: list[str]
    image_size: int = 224
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    resize: str = "squash"
    """How images are brought to ``image_size``: ``squash`` (resize both sides, as Keras does)."""
    epoch: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    temperature: float | None = None
    """Divides the log-probabilities before the softmax (fitted on validation by ``--calibrate temperature``)."""
    threshold: float | None = None
    """Two classes: call ``positive`` when its (calibrated) probability is at least this; None: the argmax."""
    positive: str | None = None
    """The positive class that ``threshold`` is about."""
    decision: dict[str, Any] = field(default_factory=dict)
    """How ``temperature`` and ``threshold`` were chosen (rule, split, inference backend and precision)."""
    evaluation: EvaluationSummary | None = None
    """The run's final evaluation (test and validation figures with intervals, the decision rule, the calibration),
    written after training; None in checkpoints written before it or not by a training run."""
    data: DataDescription | None = None
    """The training data and its split, as the run resolved it; None in checkpoints written before it (see
    :meth:`description`) or not by a training run."""
    task: str = "single"
    """``single`` (``classes`` are exclusive: softmax) or ``multi`` (``classes`` are labels: one sigmoid each)."""
    labels: list[LabelDecision] | None = None
    """Multi-label: each label's threshold and temperature, in ``classes`` order; None before they are chosen."""

    @property
    def multilabel(self) -> bool:
        return self.task == "multi"

    def label_thresholds(self) -> list[float]:
        """Multi-label: each label's threshold in ``classes`` order; 0.5 for every label before any was chosen."""
        return [d.threshold for d in self.labels] if self.labels else [0.5] * len(self.classes)

    def dicom_options(self) -> DicomOptions | None:
        """How the run decoded DICOM files (its ``--dicom-window``), for predicting as it trained; None: each file's
        own window."""
        from sedensenet.data.dicom import DicomOptions

        window = self.data.dicom_window if self.data is not None else None
        return DicomOptions(window=window) if window else None

    def description(self) -> DataDescription | None:
        """The run's data and split: the stored description, else one derived from the loose ``extra`` keys that
        earlier versions wrote (``data``, ``val_split``, ``seed``, ``groups``, ``folds``, ``fold``, ``dedupe``);
        None when neither names the data."""
        from sedensenet.data.description import DataDescription

        if self.data is not None:
            return self.data
        extra = self.extra
        if not extra.get("data"):
            return None
        folds = int(extra.get("folds") or 0) or None
        return DataDescription.for_data(
            str(extra["data"]), val_split=float(extra.get("val_split", 0.2)), split_seed=int(extra.get("seed", 123)),
            groups_file=extra.get("groups") or None, folds=folds, fold=int(extra["fold"]) if folds else None,
            dedupe=str(extra.get("dedupe") or "off"),
        )  # fmt: skip

    @property
    def preset(self) -> str | None:
        return self.model.get("extra", {}).get("preset")

    @property
    def in_chans(self) -> int:
        return int(self.model.get("in_chans", 3))

    def __str__(self) -> str:
        """One line: where the weights come from and how images are prepared."""
        source = self.extra.get("converted_from")
        origin = f"epoch {self.epoch}" if self.epoch else (f"converted from {source}" if source else "weights")
        scores = ", ".join(f"{k} {v:.4f}" for k, v in self.metrics.items() if k in ("val_accuracy", "val_loss"))
        size = f"images resized to {self.image_size}x{self.image_size} ({self.resize})"
        return f"checkpoint: {origin}{', ' + scores if scores else ''}; {size}"


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DistributedDataParallel


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: CheckpointMeta) -> Path:
    """Write ``model``'s weights and ``meta`` to ``path`` (``.safetensors``) atomically."""
    from safetensors.torch import save_file

    model = _unwrap(model)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    header = {_META_KEY: meta_to_json(meta)}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    """Read a checkpoint's tensors and metadata, with errors that name the file and the problem."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(_META_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iterator
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint (corrupt or truncated?): {e}") from None
    if raw is None:
        raise CheckpointError(
            f"{path} has no sedensenet metadata; for plain torchvision weights use create_model(..., pretrained=FILE)"
        )
    return tensors, meta_from_json(raw, path)


def meta_to_json(meta: CheckpointMeta, kind: str = FORMAT) -> str:
    """``meta`` as the JSON text stored in checkpoints (``kind`` = :data:`FORMAT`) and exported files.

    Without an evaluation the key is left out, so such metadata stays exactly what earlier versions wrote and read.
    """
    fields = asdict(meta)
    if fields["evaluation"] is None:
        del fields["evaluation"]
    if meta.data is None:
        del fields["data"]
    else:
        fields["data"] = meta.data.to_dict()
    if meta.task == "single":  # a single-label checkpoint's metadata stays what earlier versions wrote and read
        del fields["task"], fields["labels"]
    return json.dumps({"format": kind, "version": FORMAT_VERSION, **fields}, ensure_ascii=False)


def _description_from(data: Any) -> DataDescription:
    """The stored data description (the data package is imported only for a checkpoint that carries one)."""
    from sedensenet.data.description import DataDescription

    return DataDescription.from_dict(data)


def meta_from_json(raw: str | bytes, source: str | os.PathLike) -> CheckpointMeta:
    """Rebuild the metadata stored by :func:`meta_to_json`; :class:`CheckpointError` naming ``source`` when it is
    malformed or written by a newer sedensenet."""
    try:
        d = json.loads(raw)
        if not isinstance(d, dict):
            raise TypeError(f"a JSON {type(d).__name__}, not an object")
        d.pop("format", None)
        version = d.pop("version", None)
        evaluation = d.pop("evaluation", None)
        data = d.pop("data", None)
        labels = d.pop("labels", None)
        if labels is not None and not isinstance(labels, list):
            raise TypeError(f"labels must be a list, got {type(labels).__name__}")
        meta = CheckpointMeta(**d, evaluation=None if evaluation is None else EvaluationSummary.from_dict(evaluation),
                              data=None if data is None else _description_from(data),
                              labels=None if labels is None else [LabelDecision.from_dict(x, f"labels[{i}]")
                                                                  for i, x in enumerate(labels)])  # fmt: skip
        _check_meta(meta)
    except (json.JSONDecodeError, TypeError, ValueError) as e:  # UnicodeDecodeError and DataError are ValueErrors
        raise CheckpointError(f"{source}: its metadata is malformed ({e})") from None
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise CheckpointError(f"{source} was written by a newer sedensenet (format {version}); please upgrade")
    return meta


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A run folder means its ``weights/best.safetensors`` (or ``last`` when no best exists); a file is itself."""
    path = Path(path)
    if path.is_dir():
        for name in ("best", "last"):
            candidate = path / "weights" / f"{name}.safetensors"
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"{path} has no weights/best.safetensors or weights/last.safetensors")
    return path


def _check_meta(meta: CheckpointMeta) -> None:
    """The metadata fields that preprocessing and predictions rely on have the right types."""
    if not isinstance(meta.model, dict):
        raise TypeError(f"model settings must be an object, got {type(meta.model).__name__}")
    if not isinstance(meta.classes, list) or not all(isinstance(c, str) for c in meta.classes):
        raise TypeError("classes must be a list of names")
    if isinstance(meta.image_size, bool) or not isinstance(meta.image_size, int) or meta.image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {meta.image_size!r}")
    for key in ("mean", "std"):
        values = getattr(meta, key)
        if not isinstance(values, list) or not all(isinstance(v, int | float) for v in values):
            raise TypeError(f"{key} must be a list of numbers")
    _check_decision(meta)
    _check_labels(meta)


def _check_labels(meta: CheckpointMeta) -> None:
    """A multi-label checkpoint's per-label decisions name its classes, in order."""
    if meta.task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {meta.task!r}")
    if meta.labels is None:
        return
    if meta.task != "multi":
        raise ValueError("per-label thresholds belong to a multi-label checkpoint (task 'multi')")
    if [d.name for d in meta.labels] != meta.classes:
        raise ValueError(f"labels {[d.name for d in meta.labels]} do not match the classes {meta.classes}")


def _check_decision(meta: CheckpointMeta) -> None:
    """Temperature and threshold, when present, are numbers that can be applied as they are."""
    t = meta.temperature
    if t is not None and (isinstance(t, bool) or not isinstance(t, int | float) or not 0 < t < float("inf")):
        raise ValueError(f"temperature must be a positive number, got {t!r}")
    if meta.threshold is None:
        return
    th = meta.threshold
    # a threshold just above 1 (chosen by spec=1.0) calls nothing positive
    if isinstance(th, bool) or not isinstance(th, int | float) or not 0 <= th <= 1 + 1e-9:
        raise ValueError(f"threshold must be a probability, got {th!r}")
    if len(meta.classes) != 2 or meta.positive not in meta.classes:
        raise ValueError(f"a threshold needs two classes and a positive one among them, got {meta.positive!r}")


def check_state_dict(source: str | os.PathLike, tensors: dict[str, Any], expected: dict[str, torch.Tensor]) -> None:
    """Raise :class:`CheckpointError` naming ``source`` unless ``tensors`` has exactly ``expected``'s keys,
    shapes and dtypes."""
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise CheckpointError(f"{source}: the weights are not a mapping of names to tensors")
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [
        f"{k}: file {tuple(tensors[k].shape)} {tensors[k].dtype} vs model {tuple(v.shape)} {v.dtype}"
        for k, v in expected.items()
        if k in tensors and (tensors[k].shape != v.shape or tensors[k].dtype != v.dtype)
    ]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{source}: weights do not match the stored architecture: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shape/dtype {wrong[:5]}"
        )


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[DenseNet, CheckpointMeta]:
    """Rebuild the model stored in ``path`` and load its weights; returns the model (eval mode) and metadata."""
    tensors, meta = read_checkpoint(path)
    try:
        config = DenseNetConfig.from_dict(dict(meta.model))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: the stored model settings are invalid ({e})") from None
    # The stored settings are checked against the stored tensors on the meta device first (no memory used),
    # so metadata that claims an enormous network cannot make us allocate it.
    with torch.device("meta"):
        skeleton = DenseNet(config)
    check_state_dict(path, tensors, skeleton.state_dict())
    model = DenseNet(config)
    model.load_state_dict(tensors)
    model.classes = list(meta.classes)  # type: ignore[attr-defined]
    model.meta = meta  # type: ignore[attr-defined]
    return model.to(map_location).eval(), meta


def save_state(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write resume state (optimizer, scheduler, scaler, RNG, counters) atomically with ``torch.save``."""
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def update_meta(path: str | os.PathLike, meta: CheckpointMeta) -> Path:
    """Rewrite ``path`` with the same tensors and new metadata (atomically), e.g. to add a chosen threshold."""
    from safetensors.torch import save_file

    tensors, _ = read_checkpoint(path)
    header = {_META_KEY: meta_to_json(meta)}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read resume state with ``weights_only=True``: only tensors and plain containers, never code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"resume state not found: {path} (a run folder gets one when its first epoch is complete; "
            "a run stopped before that has nothing to resume: start it again)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        code = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if code:
            raise CheckpointError(
                f"refused to load {path}: it holds Python objects ({code.group(1)}) that would run code when "
                "unpickled; a sedensenet resume state holds only tensors and plain values"
            ) from None
        reason = f"corrupt, or not a state file: {_brief(e)}"
        raise CheckpointError(f"{path} is not a readable resume state ({reason})") from None
    except Exception as e:  # torch.load raises RuntimeError, EOFError, KeyError, ... on damaged files
        raise CheckpointError(f"{path} is not a readable resume state (truncated or corrupt?): {_brief(e)}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a sedensenet resume state (it holds a {type(state).__name__})")
    return state


def _brief(error: BaseException) -> str:
    """The informative line of a (often many-line) torch.load error."""
    text = str(error)
    detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    line = detail.group(1) if detail else next((ln for ln in text.splitlines() if ln.strip()), "")
    line = line.split(". This is an internal", 1)[0].strip()
    return f"{type(error).__name__}: {line[:200]}" if line else type(error).__name__
