"""The served model: predict's :class:`~sedensenet.engine.predictor.Predictor` for batches, an eager copy for
Grad-CAM, the model card, and the decoding of uploads (the same functions ``predict`` uses for files)."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sedensenet.checkpoint import CheckpointError, resolve_checkpoint
from sedensenet.data import decode_image
from sedensenet.engine.predictor import Prediction, Predictor
from sedensenet.serve.settings import ServeSettings

log = logging.getLogger(__name__)

DISPLAY_SIDE = 1024
"""Longest side of the PNGs /v1/explain returns (the overlay, the image and the heat-map)."""
_CARD_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "loss", "num_samples", "split", "best_epoch")


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
    """Loads a checkpoint once; decodes, predicts and explains single images for the HTTP layer."""

    def __init__(self, checkpoint: str | os.PathLike, settings: ServeSettings) -> None:
        self.path = resolve_safetensors(checkpoint)
        self.settings = settings
        self.predictor = Predictor.load(self.path, settings.inference)
        self.meta = self.predictor.meta
        self.classes = self.predictor.classes
        # Grad-CAM hooks its model and back-propagates: it gets its own copy, so batches never see its hooks.
        self.explainer = copy.deepcopy(self.predictor.model).eval()
        self.model_id = file_sha256(self.path)
        self.runner: torch.nn.Module | None = None
        self.backend_used = "not loaded"

    def warm_up(self) -> None:
        """Choose the batch backend (ONNX Runtime is exported and verified here) and run one batch through it."""
        from sedensenet.inference import describe

        self.runner = self.predictor.runner(None)
        self.backend_used = "reference" if self.settings.backend == "reference" else describe(self.runner)
        size, chans = self.meta.image_size, self.meta.in_chans
        self.predict_batch(torch.zeros(2, chans, size, size))
        log.info("model %s ready (%s, backend %s)", self.model_id[:12], self.meta.preset, self.backend_used)

    def decode(self, data: bytes) -> tuple[Image.Image, torch.Tensor]:
        """An upload as the image the model sees and its input tensor; raises ImageRejected."""
        image = decode_image(data, self.meta.in_chans, self.settings.max_pixels)
        return image, self.predictor.preprocess(image)

    def predict_batch(self, images: torch.Tensor) -> np.ndarray:
        """Class probabilities ``(B, K)`` of a batch ``(B, C, S, S)``: called in the batcher's thread."""
        return self.predictor.probabilities(images, self.runner)

    def prediction(self, name: str, probs: np.ndarray, top_k: int) -> Prediction:
        """One image's record from its probabilities, decided exactly as ``predict`` decides (temperature,
        threshold)."""
        return self.predictor.to_predictions([name], np.asarray(probs)[None], top_k)[0]

    def explain(self, image: Image.Image, x: torch.Tensor, target: int | None) -> dict[str, Any]:
        """Grad-CAM overlay, image and heat-map PNGs (base64) and the last SE layer's gates of one image."""
        from sedensenet.explain import explain_image, heatmap_colors, overlay

        result = explain_image(self.explainer, x.to(self.predictor.device), target)
        shown = image.convert("RGB")
        shown.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE))
        heat = heatmap_colors(result.cam, (shown.height, shown.width))  # (H, W, 3) in [0, 1]
        heat_png = Image.fromarray(np.clip(heat * 255 + 0.5, 0, 255).astype(np.uint8))
        return {
            "target": self.classes[result.target],
            "overlay_png": _png(Image.fromarray(overlay(shown, result.cam))),
            "image_png": _png(shown),
            "heatmap_png": _png(heat_png),
            "se_layer": result.se_layer,
            "se_weights": None if result.se_weights is None else [round(float(v), 6) for v in result.se_weights],
        }

    def card(self) -> dict[str, Any]:
        """The model card: what the model is, what it was trained on, how well it did and when."""
        meta = self.meta
        run_dir = self.path.parent.parent if self.path.parent.name == "weights" else None
        params = sum(p.numel() for p in self.predictor.model.parameters())
        mtime = dt.datetime.fromtimestamp(self.path.stat().st_mtime, dt.timezone.utc)
        return {
            "id": self.model_id,
            "checkpoint": self.path.name,
            "classes": list(self.classes),
            "preset": meta.preset,
            "image_size": meta.image_size,
            "in_chans": meta.in_chans,
            "parameters": params,
            "se": bool(getattr(self.predictor.model, "se_modules", dict)()),
            "train_images": meta.extra.get("train_images"),
            "val_images": meta.extra.get("val_images"),
            "data": meta.extra.get("data"),
            "epoch": meta.epoch,
            "metrics": _run_metrics(run_dir) if run_dir else {},
            "trained_at": mtime.isoformat(timespec="seconds"),
            "backend": self.backend_used,
            "limits": {
                "max_upload_mb": self.settings.max_upload_mb,
                "max_files": self.settings.max_files,
                "max_pixels": self.settings.max_pixels,
                "max_batch": self.settings.max_batch,
            },
        }


def _run_metrics(run_dir: Path) -> dict[str, Any]:
    """The validation metrics the run wrote (``metrics.json``), when the checkpoint sits in its run folder."""
    try:
        data = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: data[k] for k in _CARD_METRICS if isinstance(data, dict) and k in data}


def _png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
