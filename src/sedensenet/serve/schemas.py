"""The JSON the API returns, as pydantic models: the OpenAPI document is the API's contract.

Every /v1 route and probe returns one of these; the model card's figures are the checkpoint's own
:class:`~sedensenet.checkpoint.EvaluationSummary`, so what the card says is what the checkpoint stores.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sedensenet.checkpoint import EvaluationSummary
from sedensenet.engine.predictor import Prediction


class _Schema(BaseModel):
    """Field docstrings become the OpenAPI descriptions."""

    model_config = ConfigDict(use_attribute_docstrings=True)


class ClassProbability(_Schema):
    class_name: str = Field(alias="class")
    probability: float

    model_config = ConfigDict(populate_by_name=True, use_attribute_docstrings=True)


class ImagePrediction(_Schema):
    file: str
    """The uploaded file's name as the client sent it (``body`` for a raw image body)."""
    label: str
    probability: float
    top_k: list[ClassProbability]

    @classmethod
    def of(cls, prediction: Prediction) -> ImagePrediction:
        """The JSON form of predict's record (the same record the CSV rows come from)."""
        top_k = [ClassProbability(class_name=c, probability=p) for c, p in prediction.top_k]
        return cls(file=prediction.path, label=prediction.label, probability=prediction.probability, top_k=top_k)


class PredictResponse(_Schema):
    model_id: str
    """SHA-256 of the checkpoint file."""
    predictions: list[ImagePrediction]


class ExplainResponse(_Schema):
    model_id: str
    file: str
    label: str
    """The predicted class (the batched predictor's answer, as /v1/predict gives it)."""
    probability: float
    target: str
    """The class the heat-map explains."""
    overlay_png: str
    """Base64 PNG: the image blended with the Grad-CAM heat-map (longest side at most 1024 px)."""
    image_png: str
    heatmap_png: str
    se_layer: str | None
    se_weights: list[float] | None
    """The SE gate of each channel of ``se_layer`` (the last SE layer) for this image; null without SE."""


class ErrorBody(_Schema):
    error: str
    detail: str
    file: str | None = None


class Health(_Schema):
    status: str


class DataSummary(_Schema):
    """What the model was trained on: the data set's name and size, never a path of the server's file system."""

    name: str | None
    """The training folder's own name (its last path component) or ``builtin:NAME``."""
    train_images: int | None
    val_images: int | None
    test_images: int | None
    """Images of the test split the final evaluation scored; null without one."""


class Limits(_Schema):
    max_upload_mb: float
    max_files: int
    max_pixels: int
    max_batch: int


class ModelCard(_Schema):
    """What the model is, what it was trained on, how well it did on which split, and how it decides.

    Everything comes from the checkpoint file itself, so a copy of it served from anywhere gives the same card.
    """

    id: str
    """SHA-256 of the checkpoint file."""
    checkpoint: str
    """The checkpoint's file name (no folder)."""
    classes: list[str]
    preset: str | None
    image_size: int
    in_chans: int
    parameters: int
    se: bool
    """Whether the model has squeeze-and-excitation layers."""
    data: DataSummary
    epoch: int | None
    """The epoch whose weights these are (chosen on validation)."""
    evaluation: EvaluationSummary | None
    """The run's final evaluation: test first when the run had a test split (evaluated once, with what validation
    chose), then validation (used for selection: optimistic), each with 95% intervals; the decision rule and the
    calibration they were measured with. Null for checkpoints written before it was stored."""
    epoch_metrics: dict[str, float]
    """The training history row of ``epoch`` (its validation figures chose the epoch, so they are optimistic)."""
    trained_at: str
    """When the final evaluation ran (UTC); the file's modification time for checkpoints without one."""
    backend: str
    limits: Limits


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        400: "malformed multipart body, or no file",
        401: "missing or wrong API key",
        413: "upload over --max-upload-mb, or more files than --max-files",
        415: "not an image (or not an image format we read)",
        422: "empty, truncated, corrupt or too many pixels; or a bad parameter",
        503: "not ready yet, or the queue is full (see Retry-After)",
    }.items()
}
