"""A loaded model and how it runs: checkpoint, run folder or exported ``.onnx`` file, the backend and the precision;
batched prediction of files, the ``Prediction`` record and its CSV/JSON rows. Robust to bad files.

Evaluation on labelled data lives in :mod:`sedensenet.engine.labelled`, the listing of files and labelled samples in
:mod:`sedensenet.engine.samples`."""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from sedensenet import checkpoint as ckpt
from sedensenet.config import ConfigError, InferenceSettings
from sedensenet.data import ImageFolderDataset, Sample, build_transforms, check_image, image_to_tensor
from sedensenet.display import Table
from sedensenet.engine.decision import decide, decide_labels, postprocess
from sedensenet.engine.device import amp_dtype, select_device
from sedensenet.engine.loader import make_loader
from sedensenet.engine.loop import EpochResult, MaskedBCEWithLogits, StepSettings, evaluate_loader, probabilities
from sedensenet.engine.samples import expand_inputs
from sedensenet.engine.tta import view_count, with_tta
from sedensenet.fileio import atomic_write_json, atomic_write_text
from sedensenet.inference import INT8_BACKEND, OnnxModel, describe, int8_model_path, is_int8, optimize_for_inference

log = logging.getLogger(__name__)

ROW_FIELDS = ["path", "label", "probability", "top_k", "error"]
"""The columns of :func:`probabilities_to_rows` (and of ``predict --output x.csv``, sharded parts, serve's CSV)."""


@dataclass
class Prediction:
    """One file's prediction: the top class, its probability and the top-k list; ``error`` when unreadable."""

    path: str
    label: str | None = None
    probability: float | None = None
    top_k: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None
    labels: list[str] | None = None
    """Multi-label: the labels decided present (each at its own threshold); ``label`` joins them with ``|``."""
    scores: dict[str, float] | None = None
    """Multi-label: every label's (calibrated) probability, in the checkpoint's order."""

    def __repr__(self) -> str:
        if self.error:
            return f"Prediction({self.path!r}, error={self.error!r})"
        if self.scores is not None:
            shown = ", ".join(f"{c} {p:.4f}" for c, p in self.scores.items())
            return f"Prediction({self.path!r}: [{', '.join(self.labels or [])}]; {shown})"
        others = "".join(f", {c} {p:.4f}" for c, p in self.top_k[1:])
        return f"Prediction({self.path!r}: {self.label} {self.probability or 0.0:.4f}{others})"


class Predictions(list):
    """The list :func:`sedensenet.predict` returns; shows as a table (path, label, probability, top-k, error)."""

    def table(self) -> Table:
        k = max((len(p.top_k) for p in self), default=1)
        errors = any(p.error for p in self)
        header = ["path", "label", "probability"] + (["top-k"] if k > 1 else []) + (["error"] if errors else [])
        rows = [
            [p.path, p.label or "", p.probability]
            + ([", ".join(f"{c} {s:.3f}" for c, s in p.top_k)] if k > 1 else [])
            + ([p.error or ""] if errors else [])
            for p in self
        ]
        return Table(header, rows, title=f"{len(self)} predictions")

    def __repr__(self) -> str:
        return repr(self.table())

    def _repr_html_(self) -> str:
        return self.table()._repr_html_()


MULTILABEL_FIELDS = ["path", "labels", "error"]
"""A multi-label model's rows: path, the decided labels (``|``-joined), one probability column per label (between
``labels`` and ``error``, named after the labels), error."""


def probabilities_to_rows(preds: list[Prediction]) -> list[dict[str, Any]]:
    """Flat rows for CSV/JSON output: path, label, probability, top-k as ``class:prob`` pairs, error; for a
    multi-label model path, labels, each label's probability, error."""
    names = next((list(p.scores) for p in preds if p.scores is not None), None)
    if names is not None:
        return [
            {"path": p.path, "labels": "|".join(p.labels or []),
             **{n: "" if p.scores is None else round(float(p.scores[n]), 6) for n in names}, "error": p.error or ""}
            for p in preds
        ]  # fmt: skip
    return [
        {
            "path": p.path,
            "label": p.label or "",
            "probability": "" if p.probability is None else round(float(p.probability), 6),
            "top_k": ";".join(f"{c}:{np.round(s, 6)}" for c, s in p.top_k),
            "error": p.error or "",
        }
        for p in preds
    ]


def predictions_csv(preds: list[Prediction]) -> str:
    """The CSV text of :func:`probabilities_to_rows` (header :data:`ROW_FIELDS`): ``predict --output x.csv``, the
    parts of sharded prediction and serve's ``Accept: text/csv`` write these rows."""
    rows = probabilities_to_rows(preds)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ROW_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_predictions(
    path: str | os.PathLike, preds: list[Prediction], *, columns: list[dict[str, str]] | None = None
) -> Path:
    """``preds`` as rows in a ``.json`` file (a list of objects) or CSV (any other suffix), written atomically.

    ``columns``: per prediction, a manifest row's other columns, written after the prediction's own; a name that
    collides with one of :data:`ROW_FIELDS` gets the prefix ``input_``."""
    path = Path(path)
    rows = probabilities_to_rows(preds)
    if columns is not None:
        rows = [{**row, **{(f"input_{k}" if k in row else k): v for k, v in extra.items()}}
                for row, extra in zip(rows, columns, strict=True)]  # fmt: skip
    if path.suffix.lower() == ".json":
        atomic_write_json(path, rows)
    elif columns is None:
        atomic_write_text(path, predictions_csv(preds))
    else:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else list(ROW_FIELDS))
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(path, buffer.getvalue())
    return path


class Predictor:
    """A model plus the preprocessing and class names its checkpoint carries."""

    def __init__(
        self,
        model: nn.Module,
        meta: ckpt.CheckpointMeta,
        settings: InferenceSettings | None = None,
        *,
        device: torch.device | None = None,
    ) -> None:
        """``settings``: how batches run (checked when built); ``device``: one already chosen (a run's, a rank's)
        instead of ``settings.device``."""
        self.settings = settings = settings or InferenceSettings()
        self.device = device if device is not None else select_device(settings.device)
        self.model = model.to(self.device).eval()
        self.meta = meta
        self.backend, self.tta, self.amp = settings.backend, settings.tta, settings.amp
        self._amp_dtype: torch.dtype | None | bool = False  # resolved on first use (False: not yet)
        self._runner: tuple[str, nn.Module] | None = None
        self.classes = list(meta.classes)
        self.transform = build_transforms(
            meta.image_size,
            train=False,
            augment="none",
            mean=tuple(meta.mean),
            std=tuple(meta.std),
            in_chans=meta.in_chans,
        )

    @classmethod
    def load(cls, source: str | os.PathLike | nn.Module, settings: InferenceSettings | None = None) -> Predictor:
        """From a checkpoint, a run folder, an exported ``.onnx`` file, or a model returned by
        :func:`sedensenet.load_model`, to run as ``settings`` say.

        ``settings.backend`` picks how batches run (see :data:`sedensenet.inference.BACKENDS`); the default, ``auto``,
        uses ONNX Runtime on CPU for jobs of 256 images or more when it is installed and ``amp`` resolves to float32,
        else the model's eager fast path (under bf16 autocast on a CPU with bf16 units, faster than ONNX Runtime's
        float32). ``onnxruntime-int8`` runs the int8 model exported beside the checkpoint (``<checkpoint>.int8.onnx``),
        or ``source`` itself when it is an int8 ``.onnx`` file. ``tta`` averages the probabilities of a few views of
        each image. ``amp`` as training's ``--amp``: ``auto`` runs the eager path under bf16 autocast on CPUs with bf16
        matrix units, ``off`` in float32. ONNX Runtime always runs float32 (``backend='auto'`` still picks it for large
        jobs: on a 2-core AVX512-BF16 CPU it measured 1.8x faster than the eager path in bf16).
        """
        settings = settings or InferenceSettings()
        backend = settings.backend
        if isinstance(source, nn.Module):
            meta = getattr(source, "meta", None)
            if meta is None:
                raise ValueError("this model carries no classes or preprocessing: load it with sedensenet.load_model")
            if backend == INT8_BACKEND:
                raise ConfigError(f"--backend {INT8_BACKEND} runs an exported int8 .onnx file: pass its path or the "
                                  "checkpoint it was exported from, not a model in memory")  # fmt: skip
            return cls(source, meta, settings)
        path = ckpt.resolve_checkpoint(source)
        if backend == INT8_BACKEND:
            path = int8_model_path(path)
        if path.suffix == ".onnx":
            return cls._exported(path, settings)
        model, meta = ckpt.load_checkpoint(path)
        return cls(model, meta, settings)

    @classmethod
    def _exported(cls, path: Path, settings: InferenceSettings) -> Predictor:
        """An exported ``.onnx`` file: ONNX Runtime on the CPU in float32, whatever ``settings`` ask of those."""
        select_device(settings.device)  # an unavailable device is refused here too, as for a checkpoint
        onnx_model = OnnxModel(path)
        int8 = is_int8(onnx_model)
        if settings.backend == INT8_BACKEND and not int8:
            raise ConfigError(f"{path} is an fp32 model; --backend {INT8_BACKEND} needs one exported with "
                              "--quantize int8")  # fmt: skip
        pinned = replace(settings, backend="reference", amp="off")
        predictor = cls(onnx_model, onnx_model.meta, pinned, device=torch.device("cpu"))
        name = INT8_BACKEND if int8 else "onnxruntime"
        predictor._runner = (f"{name} (exported file)", onnx_model)
        return predictor

    @property
    def backend_used(self) -> str:
        """The backend batches went through (``auto`` resolved once a batch has run)."""
        return self._runner[0] if self._runner is not None else self.backend

    def run_samples(self, samples: list[Sample], batch_size: int | None = None) -> EpochResult:
        """The model's raw softmax outputs (no temperature, no threshold) over labelled ``samples``; with TTA the mean
        of its views' probabilities, each batch's views through the backend in one call. ``batch_size``: default the
        settings'."""
        in_chans = self.meta.in_chans
        dataset = ImageFolderDataset(
            samples, transform=self.transform, in_chans=in_chans, dicom=self.meta.dicom_options()
        )
        batch = batch_size or self.settings.batch_size
        loader = make_loader(dataset, batch, seed=0, train=False, device=self.device, workers=self.settings.workers)
        multi = self.meta.multilabel
        criterion = MaskedBCEWithLogits() if multi else nn.CrossEntropyLoss()
        runner = with_tta(self.runner(len(samples) * view_count(self.tta)), self.tta, multilabel=multi)
        return evaluate_loader(runner, loader, criterion, self.step_settings(), multilabel=multi)

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """The autocast dtype batches run under (None: float32); ONNX Runtime and exported files run float32."""
        if self._amp_dtype is False:
            self._amp_dtype = amp_dtype(self.amp, self.device)
        if self._runner is not None and self._runner[0].startswith("onnxruntime"):
            return None
        return self._amp_dtype  # type: ignore[return-value]

    def step_settings(self) -> StepSettings:
        """How batches run: :attr:`amp_dtype`, and channels_last on a GPU (as training and the GPU benchmark run)."""
        return StepSettings(self.device, self.amp_dtype, channels_last=self.device.type == "cuda")

    def runner(self, images: int | None = None) -> nn.Module:
        """The module batches go through: the model itself for ``reference``, else what
        :func:`~sedensenet.inference.optimize_for_inference` chose for a job of ``images`` images (kept for
        later calls once ONNX Runtime is set up, so a predictor exports at most once)."""
        if self.backend == "reference":
            module = optimize_for_inference(self.model, backend="reference")
            self._runner = self._runner or ("reference", module)
            return module
        if self._runner is not None and (self._runner[0] != "eager" or self.backend == "eager"):
            return self._runner[1]
        size = self.meta.image_size
        example = torch.zeros(2, self.meta.in_chans, size, size, device=self.device).uniform_(-2, 2)
        low = self.device.type == "cpu" and self.amp_dtype is not None
        module = optimize_for_inference(self.model, example, self.backend, images=images, low_precision=low)
        self._runner = (describe(module), module)
        log.debug("inference backend for %s images: %s", images, self._runner[0])
        return module

    def predict_files(
        self, inputs: list[str | os.PathLike] | str | os.PathLike, top_k: int = 1, batch_size: int | None = None
    ) -> list[Prediction]:
        """Predictions for every image file in ``inputs`` (folders searched recursively), in input order."""
        files = expand_inputs(inputs)
        errors = {f: check_image(f) for f in files}
        good = [f for f in files if errors[f] is None]
        out: dict[Path, Prediction] = {f: Prediction(str(f), error=errors[f]) for f in files if errors[f]}
        if good:
            res = self.run_samples([Sample(f, 0) for f in good], batch_size)
            out.update(zip(good, self.to_predictions(good, res.probs, top_k), strict=True))
        bad = len(files) - len(good)
        if bad:
            log.warning("%d of %d files could not be read and were reported, not predicted", bad, len(files))
        return [out[f] for f in files]

    def to_predictions(self, names: Sequence[Any], probs: np.ndarray, top_k: int = 1) -> list[Prediction]:
        """Prediction records from the model's class probabilities ``(B, K)``: the checkpoint's temperature is
        applied and its decision rule (threshold or argmax) decides, so ``predict`` and ``serve`` decide alike."""
        probs = postprocess(np.asarray(probs), self.meta)
        if self.meta.multilabel:
            present = decide_labels(probs, self.meta)
            return [self._labelled(str(n), p, row, top_k) for n, p, row in zip(names, probs, present, strict=True)]
        labels = decide(probs, self.meta)
        return [
            Prediction(str(n), self.classes[label], float(p[label]), self.top_classes(p, top_k))
            for n, p, label in zip(names, probs, labels, strict=True)
        ]

    def _labelled(self, name: str, probs: np.ndarray, present: np.ndarray, top_k: int) -> Prediction:
        """A multi-label record: the labels decided present, the most probable first; every label's probability."""
        order = [i for i in np.argsort(-probs, kind="stable") if present[i]]
        labels = [self.classes[i] for i in order]
        return Prediction(name, "|".join(labels), float(probs[order[0]]) if order else None,
                          self.top_classes(probs, top_k), labels=labels,
                          scores={c: float(v) for c, v in zip(self.classes, probs, strict=True)})  # fmt: skip

    def top_classes(self, probs: np.ndarray, top_k: int = 1) -> list[tuple[str, float]]:
        """The ``top_k`` (clipped to 1..classes) most probable classes of one image, most probable first."""
        k = max(1, min(top_k, len(self.classes)))
        order = np.argsort(-probs, kind="stable")[:k]
        return [(self.classes[i], float(probs[i])) for i in order]

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One image from :func:`~sedensenet.data.load_image` or :func:`~sedensenet.data.decode_image` as the
        model's input ``(C, S, S)``: the transform and channel handling :meth:`run_samples` applies to files."""
        return image_to_tensor(image, self.transform, self.meta.in_chans)

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor, module: nn.Module | None = None) -> np.ndarray:
        """Class probabilities ``(B, K)`` of a preprocessed batch ``(B, C, S, S)``, computed as :meth:`run_samples`
        computes them (with this predictor's TTA); ``module`` is a runner from :meth:`runner` (default: the runner for
        this batch size)."""
        multi = self.meta.multilabel
        module = with_tta(self.runner(images.shape[0]) if module is None else module, self.tta, multilabel=multi)
        settings = self.step_settings()
        x, _ = settings.to_device(images, torch.zeros(images.shape[0], dtype=torch.long))
        with settings.autocast():
            logits = module(x)
        return probabilities(logits, multilabel=multi).cpu().numpy()
