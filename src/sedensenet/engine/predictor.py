"""Inference with a checkpoint: classify files, evaluate a labelled folder. Batched, robust to bad files."""

from __future__ import annotations

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
from sedensenet.config import CHOICES, ConfigError
from sedensenet.data import (
    IMG_EXTENSIONS,
    DataError,
    DataSplits,
    ImageFolderDataset,
    Sample,
    build_transforms,
    check_image,
    image_to_tensor,
    resolve_data,
    scan_folder,
)
from sedensenet.data.check import drop_duplicates_of_train
from sedensenet.data.folds import fold_splits, fold_units
from sedensenet.display import Table
from sedensenet.engine.decision import decide, positive_of, postprocess
from sedensenet.engine.device import amp_dtype, precision_name
from sedensenet.engine.loader import make_loader
from sedensenet.engine.loop import EpochResult, StepSettings, class_probabilities, evaluate_loader
from sedensenet.engine.tta import check_tta, view_count, with_tta
from sedensenet.inference import (
    BACKENDS,
    INT8_BACKEND,
    OnnxModel,
    describe,
    int8_model_path,
    is_int8,
    optimize_for_inference,
)
from sedensenet.reports.clinical import positive_index

log = logging.getLogger(__name__)
AMP_CHOICES = CHOICES["amp"]


@dataclass
class Prediction:
    """One file's prediction: the top class, its probability and the top-k list; ``error`` when unreadable."""

    path: str
    label: str | None = None
    probability: float | None = None
    top_k: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None

    def __repr__(self) -> str:
        if self.error:
            return f"Prediction({self.path!r}, error={self.error!r})"
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


def probabilities_to_rows(preds: list[Prediction]) -> list[dict[str, Any]]:
    """Flat rows for CSV/JSON output: path, label, probability, top-k as ``class:prob`` pairs, error."""
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


class Predictor:
    """A model plus the preprocessing and class names its checkpoint carries."""

    def __init__(
        self,
        model: nn.Module,
        meta: ckpt.CheckpointMeta,
        device: torch.device,
        backend: str = "auto",
        tta: str = "none",
        amp: str = "auto",
    ) -> None:
        if backend not in BACKENDS:
            raise ConfigError(f"unknown inference backend {backend!r}: choose from {list(BACKENDS)}")
        self.tta = check_tta(tta)
        if amp not in AMP_CHOICES:
            raise ConfigError(f"--amp {amp!r}: choose from {list(AMP_CHOICES)}")
        self.model = model.to(device).eval()
        self.meta = meta
        self.device = device
        self.backend = backend
        self.amp = amp
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
    def load(
        cls,
        source: str | os.PathLike | nn.Module,
        device: str = "auto",
        backend: str = "auto",
        tta: str = "none",
        amp: str = "auto",
    ) -> Predictor:
        """From a checkpoint, a run folder, or a model returned by :func:`sedensenet.load_model`.

        ``backend`` picks how batches run (see :data:`sedensenet.inference.BACKENDS`); the default, ``auto``, uses ONNX
        Runtime on CPU for jobs of 256 images or more when it is installed and ``amp`` resolves to float32, else the
        model's eager fast path (under bf16 autocast on a CPU with bf16 units, faster than ONNX Runtime's float32).
        ``onnxruntime-int8`` runs the int8 model exported beside the checkpoint (``<checkpoint>.int8.onnx``), or
        ``source`` itself when it is an int8 ``.onnx`` file. ``tta`` (see :data:`sedensenet.config.TTA_MODES`)
        averages the probabilities of a few views of each image.
        ``amp`` as training's ``--amp``: ``auto`` runs the eager path under bf16 autocast on CPUs with bf16 matrix
        units, ``off`` in float32. ONNX Runtime always runs float32 (``backend='auto'`` still picks it for large jobs:
        on a 2-core AVX512-BF16 CPU it measured 1.8x faster than the eager path in bf16).
        """
        from sedensenet.engine.device import select_device

        if backend not in BACKENDS:
            raise ConfigError(f"unknown inference backend {backend!r}: choose from {list(BACKENDS)}")
        check_tta(tta)
        dev = select_device(device)
        if isinstance(source, nn.Module):
            meta = getattr(source, "meta", None)
            if meta is None:
                raise ValueError("this model carries no classes or preprocessing: load it with sedensenet.load_model")
            if backend == INT8_BACKEND:
                raise ConfigError(f"--backend {INT8_BACKEND} runs an exported int8 .onnx file: pass its path or the "
                                  "checkpoint it was exported from, not a model in memory")  # fmt: skip
            return cls(source, meta, dev, backend, tta, amp)
        path = ckpt.resolve_checkpoint(source)
        if backend == INT8_BACKEND:
            path = int8_model_path(path)
        if path.suffix == ".onnx":
            onnx_model = OnnxModel(path)
            int8 = is_int8(onnx_model)
            if backend == INT8_BACKEND and not int8:
                raise ConfigError(f"{path} is an fp32 model; --backend {INT8_BACKEND} needs one exported with "
                                  "--quantize int8")  # fmt: skip
            predictor = cls(onnx_model, onnx_model.meta, torch.device("cpu"), "reference", tta, "off")
            name = INT8_BACKEND if int8 else "onnxruntime"
            predictor._runner = (f"{name} (exported file)", onnx_model)
            return predictor
        model, meta = ckpt.load_checkpoint(path)
        return cls(model, meta, dev, backend, tta, amp)

    @property
    def backend_used(self) -> str:
        """The backend batches went through (``auto`` resolved once a batch has run)."""
        return self._runner[0] if self._runner is not None else self.backend

    def run_samples(self, samples: list[Sample], batch_size: int) -> EpochResult:
        """The model's raw softmax outputs (no temperature, no threshold) over labelled ``samples``; with TTA the mean
        of its views' probabilities, each batch's views through the backend in one call."""
        in_chans = self.meta.in_chans
        dataset = ImageFolderDataset(samples, transform=self.transform, in_chans=in_chans)
        loader = make_loader(dataset, batch_size, seed=0, train=False, device=self.device, workers=-1)
        criterion = nn.CrossEntropyLoss()
        runner = with_tta(self.runner(len(samples) * view_count(self.tta)), self.tta)
        return evaluate_loader(runner, loader, criterion, self.step_settings())

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
        self, inputs: list[str | os.PathLike] | str | os.PathLike, top_k: int = 1, batch_size: int = 32
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
        labels = decide(probs, self.meta)
        return [
            Prediction(str(n), self.classes[label], float(p[label]), self.top_classes(p, top_k))
            for n, p, label in zip(names, probs, labels, strict=True)
        ]

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
        module = with_tta(self.runner(images.shape[0]) if module is None else module, self.tta)
        settings = self.step_settings()
        x, _ = settings.to_device(images, torch.zeros(images.shape[0], dtype=torch.long))
        with settings.autocast():
            logits = module(x)
        return class_probabilities(logits).cpu().numpy()

    def evaluate_folder(
        self,
        data: str | os.PathLike,
        split: str = "auto",
        output: str | os.PathLike | None = None,
        batch_size: int = 32,
        dedupe: str = "off",
        positive: str | None = None,
    ) -> Any:
        """Metrics of the model on a labelled folder, decided as :meth:`predict_files` decides; reports written to
        ``output`` when given. ``positive`` names the positive class of a two-class model (default: the stored
        one, else the second class). ``dedupe`` (``exact`` or ``near``) leaves out the val/test images that
        duplicate a training image."""
        from sedensenet.engine.evaluation import write_evaluation

        meta = self._meta_for(positive)
        samples, data_classes = self.labelled_samples(data, split, dedupe)
        res = self.run_samples(samples, batch_size)
        res.targets = np.asarray([s.label for s in samples])
        if output is None:
            from sedensenet.reports import compute_metrics

            probs = postprocess(res.probs, meta)
            return compute_metrics(
                res.targets.tolist(), probs, self.classes, loss=res.loss, y_pred=decide(probs, meta),
                positive=positive_of(meta), threshold=meta.threshold,
                uncalibrated=res.probs if meta.temperature else None, temperature=meta.temperature,
            )  # fmt: skip
        out = Path(output)
        extra = {"data": str(data), "split": split, "data_classes": data_classes,
                 "inference_backend": self.backend_used, "decision": meta.decision, "dedupe": dedupe,
                 "tta": self.tta,
                 "precision": precision_name(self.amp_dtype)}  # fmt: skip
        return write_evaluation(out, res, self.classes, samples, self.meta.in_chans, extra, meta=meta)

    def _meta_for(self, positive: str | None) -> ckpt.CheckpointMeta:
        """The metadata with ``positive`` as the positive class (checked before any image is read)."""
        if not positive or positive == self.meta.positive:
            return self.meta
        positive_index(self.classes, positive)
        if self.meta.threshold is not None:
            raise ConfigError(
                f"--positive {positive!r}: this checkpoint's threshold {self.meta.threshold:.4f} is about "
                f"{self.meta.positive!r}; evaluate with --positive {self.meta.positive!r} or none"
            )
        return replace(self.meta, positive=positive)

    def labelled_samples(
        self, data: str | os.PathLike, split: str, dedupe: str = "off"
    ) -> tuple[list[Sample], list[str]]:
        """The split's samples with labels mapped to the model's class indices by name (without the duplicates of
        training images when ``dedupe`` is ``exact`` or ``near``)."""
        extra = self.meta.extra
        val_split = float(extra.get("val_split", 0.2)) if split == "val" else 0.0
        seed = int(extra.get("seed", 123))
        folds = int(extra.get("folds", 0)) if split in ("val", "test") else 0
        groups = (extra.get("groups") or None) if val_split or folds else None
        if groups and not Path(groups).is_file():
            log.warning("the groups file %s the model was trained with is gone: the val split may differ", groups)
            groups = None
        splits = scan_folder(resolve_data(str(data)), val_split=0.0 if folds else val_split, seed=seed,
                             groups=groups)  # fmt: skip
        if folds:  # a cross-validation fold's model: its own held-out fold and val split
            splits = fold_splits(splits, folds, int(extra["fold"]), float(extra.get("val_split", 0.2)), seed,
                                 fold_units(splits))  # fmt: skip
        kept, dropped = drop_duplicates_of_train(splits, dedupe)
        chosen = _choose_split(kept, split)
        if dedupe != "off":
            if chosen is kept.train:
                raise DataError(f"--dedupe drops val/test images that duplicate training images, but {split!r} "
                                 f"chose the training images of {splits.root}: use --split val or test")  # fmt: skip
            which = "test" if chosen is kept.test else "val"
            log.info("--dedupe %s: %d %s images left out as duplicates of training images", dedupe, dropped[which],
                     which)  # fmt: skip
        unknown = sorted(set(splits.classes) - set(self.classes))
        if unknown:
            raise DataError(
                f"{data}: class folder(s) {unknown} are not classes of this model ({self.classes}); "
                f"the folder names must match the classes the model was trained on"
            )
        index = {name: i for i, name in enumerate(self.classes)}
        return [Sample(s.path, index[splits.classes[s.label]]) for s in chosen], splits.classes


def _choose_split(splits: DataSplits, split: str) -> list[Sample]:
    if split == "auto":
        return splits.test or splits.val or splits.train
    if split == "all":
        return splits.train + splits.val + splits.test
    chosen = {"train": splits.train, "val": splits.val, "test": splits.test}.get(split)
    if chosen is None:
        raise ConfigError(f"unknown split {split!r}: choose auto, train, val, test or all")
    if not chosen:
        raise DataError(f"{splits.root} has no {split} split")
    return chosen


def expand_inputs(inputs: list[str | os.PathLike] | str | os.PathLike) -> list[Path]:
    """Files as given, folders expanded to their image files (sorted, recursive, hidden files skipped)."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(
                f
                for f in p.rglob("*")
                if f.is_file() and f.suffix.lower() in IMG_EXTENSIONS and not f.name.startswith(".")
            )
            files.extend(found)
        else:
            files.append(p)
    if not files:
        raise DataError(f"no image files found in {[str(i) for i in inputs]}")
    return files
