"""The served model: predict's :class:`~sedensenet.engine.predictor.Predictor` (callers use it directly for
batches and decisions), the backend chosen at warm-up, an eager copy for Grad-CAM, the decoding of uploads (the
same functions ``predict`` uses for files) and the model card, built from the checkpoint file alone."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import io
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sedensenet.checkpoint import CheckpointError, CheckpointMeta, resolve_checkpoint
from sedensenet.data import decode_image
from sedensenet.data.dicom import DicomOptions
from sedensenet.engine.predictor import Predictor
from sedensenet.inference import describe
from sedensenet.serve.schemas import DataSummary, LabelRule, LabelThreshold, Limits, ModelCard
from sedensenet.serve.settings import ServeSettings

log = logging.getLogger(__name__)

DISPLAY_SIDE = 1024
"""Longest side of the PNGs /v1/explain returns (the overlay, the image and the heat-map)."""


NO_STORED_EVALUATION = (
    "no final evaluation is stored in this checkpoint: a multi-label run writes its evaluation to its run folder "
    "(metrics.json, per_label.csv)"
)
"""The card's ``evaluation_note`` for a multi-label checkpoint without a stored evaluation."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_safetensors(source: str | os.PathLike) -> Path:
    """The checkpoint a run folder or file names; only safetensors files are served (nothing is unpickled)."""
    path = resolve_checkpoint(source)
    if path.suffix.lower() != ".safetensors":
        raise CheckpointError(
            f"{path}: the server loads .safetensors checkpoints only (a run folder or weights/best.safetensors); "
            "an exported .onnx file cannot explain its predictions"
        )
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


class ServedModel:
    """Loads a checkpoint once, warms its batch backend up, decodes and explains single images for the HTTP layer
    and describes itself (:meth:`card`)."""

    def __init__(self, checkpoint: str | os.PathLike, settings: ServeSettings) -> None:
        self.path = resolve_safetensors(checkpoint)
        self.settings = settings
        self.predictor = Predictor.load(self.path, settings.inference)
        # Grad-CAM hooks its model and back-propagates: it gets its own copy, so batches never see its hooks.
        self.explainer = copy.deepcopy(self.predictor.model).eval()
        self.model_id = file_sha256(self.path)
        self.runner: torch.nn.Module | None = None
        self.backend_used = "not loaded"
        # DICOM uploads are windowed as the run was; a multi-frame file (a cine loop) is not one image: refused.
        window = self.predictor.meta.dicom_options()
        self.dicom = DicomOptions(window=window.window if window else None, multiframe="refuse")

    def warm_up(self) -> None:
        """Choose the batch backend (ONNX Runtime is exported and verified here) and run one batch through it."""
        self.runner = self.predictor.runner(None)
        self.backend_used = "reference" if self.settings.backend == "reference" else describe(self.runner)
        meta = self.predictor.meta
        self.predict_batch(torch.zeros(2, meta.in_chans, meta.image_size, meta.image_size))
        log.info("model %s ready (%s, backend %s)", self.model_id[:12], meta.preset, self.backend_used)

    def predict_batch(self, images: torch.Tensor) -> np.ndarray:
        """Class probabilities ``(B, K)`` of a batch ``(B, C, S, S)`` through the backend chosen at warm-up (the
        batcher calls it on its thread)."""
        if self.runner is None:
            raise RuntimeError("warm_up() chooses the backend before the first batch")
        return self.predictor.probabilities(images, self.runner)

    def decode(self, data: bytes) -> tuple[Image.Image, torch.Tensor]:
        """An upload as the image the model sees and its input tensor; raises ImageRejected."""
        image = decode_image(data, self.predictor.meta.in_chans, self.settings.max_pixels, dicom=self.dicom)
        return image, self.predictor.preprocess(image)

    def explain(self, image: Image.Image, x: torch.Tensor, target: int | None) -> dict[str, Any]:
        """Grad-CAM overlay, image and heat-map PNGs (base64) and the last SE layer's gates of one image."""
        from sedensenet.explain import explain_image, heatmap_colors, overlay

        result = explain_image(self.explainer, x.to(self.predictor.device), target)
        shown = image.convert("RGB")
        shown.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE))
        heat = heatmap_colors(result.cam, (shown.height, shown.width))  # (H, W, 3) in [0, 1]
        heat_png = Image.fromarray(np.clip(heat * 255 + 0.5, 0, 255).astype(np.uint8))
        return {
            "target": self.predictor.classes[result.target],
            "overlay_png": _png(Image.fromarray(overlay(shown, result.cam))),
            "image_png": _png(shown),
            "heatmap_png": _png(heat_png),
            "se_layer": result.se_layer,
            "se_weights": None if result.se_weights is None else [round(float(v), 6) for v in result.se_weights],
        }

    def card(self) -> ModelCard:
        """The model card, from the checkpoint file alone (a copy served from elsewhere says the same): what the
        model is, what it was trained on (a name and sizes, never a path), its final evaluation and how it decides."""
        meta = self.predictor.meta
        evaluation = meta.evaluation
        if evaluation is not None and evaluation.evaluated_at:
            trained_at = evaluation.evaluated_at
        else:  # checkpoints written before the evaluation was stored
            trained_at = dt.datetime.fromtimestamp(self.path.stat().st_mtime, dt.timezone.utc).isoformat("T", "seconds")
        s = self.settings
        return ModelCard(
            id=self.model_id, checkpoint=self.path.name, classes=list(self.predictor.classes), preset=meta.preset,
            image_size=meta.image_size, in_chans=meta.in_chans,
            parameters=sum(p.numel() for p in self.predictor.model.parameters()),
            se=bool(getattr(self.predictor.model, "se_modules", dict)()), data=data_summary(meta), epoch=meta.epoch,
            evaluation=evaluation, epoch_metrics=_numbers(meta.metrics), trained_at=trained_at,
            backend=self.backend_used,
            limits=Limits(max_upload_mb=s.max_upload_mb, max_files=s.max_files, max_pixels=s.max_pixels,
                          max_batch=s.max_batch),
            **label_card(meta),
        )  # fmt: skip

    @property
    def thresholds(self) -> list[float] | None:
        """A multi-label model's threshold per label, in its order (0.5 where none is stored, as
        :func:`~sedensenet.engine.decision.decide_labels` decides); None for a single-label model."""
        meta = self.predictor.meta
        if not meta.multilabel:
            return None
        return meta.label_thresholds()


def label_card(meta: CheckpointMeta) -> dict[str, Any]:
    """The card's multi-label fields: the task, each label's threshold and temperature, how they were chosen, and
    a note when no evaluation is stored; nothing for a single-label model (its card stays as it was)."""
    if not meta.multilabel:
        return {}
    if meta.labels:
        labels = [LabelThreshold(name=d.name, threshold=d.threshold, temperature=d.temperature) for d in meta.labels]
    else:  # thresholds not chosen (yet): decide_labels decides at 0.5
        labels = [LabelThreshold(name=c, threshold=0.5, temperature=None) for c in meta.classes]
    how = meta.decision or {}
    rule = LabelRule(threshold=how.get("threshold"), calibrate=how.get("calibrate"), chosen_on=how.get("chosen_on"))
    note = NO_STORED_EVALUATION if meta.evaluation is None else None
    return {"task": "multi", "labels": labels, "label_rule": rule, "evaluation_note": note}


def data_summary(meta: CheckpointMeta) -> DataSummary:
    """The training data's name and sizes; ``meta.extra["data"]`` is the folder as it was typed, so only its last
    component is shown (``builtin:NAME`` as it is)."""
    test = next((s for s in meta.evaluation.splits if s.split == "test"), None) if meta.evaluation else None
    return DataSummary(
        name=data_name(meta.extra.get("data")), train_images=_count(meta.extra.get("train_images")),
        val_images=_count(meta.extra.get("val_images")), test_images=None if test is None else test.images,
    )  # fmt: skip


def data_name(data: Any) -> str | None:
    """``/home/me/xray/`` -> ``xray``, ``C:\\data\\xray`` -> ``xray``, ``builtin:digits`` as it is; a table is
    named with its folder (``/data/skin/labels.csv`` -> ``skin/labels.csv``: ``labels.csv`` alone says nothing);
    None when the name says nothing (``.``, ``..``, empty)."""
    if not isinstance(data, str):
        return None
    parts = [p for p in re.split(r"[\\/]+", data) if p not in ("", ".", "..")]
    if len(parts) >= 2 and parts[-1].lower().endswith((".csv", ".tsv")):
        return "/".join(parts[-2:])
    return parts[-1] if parts else None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _numbers(metrics: Any) -> dict[str, float]:
    """The numeric entries of the stored history row (the metadata is not checked field by field there)."""
    items = metrics.items() if isinstance(metrics, dict) else ()
    return {str(k): float(v) for k, v in items if isinstance(v, int | float) and not isinstance(v, bool)}


def _png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
