"""The JSON the API returns, as pydantic models: the OpenAPI document is the API's contract.

Every /v1 route and probe returns one of these; the model card's figures are the checkpoint's own
:class:`~sedensenet.checkpoint.EvaluationSummary`, so what the card says is what the checkpoint stores.
The multi-label fields are left out of the JSON (``exclude_if``) when they do not apply, so a single-label model's
answers are byte for byte what they were before multi-label models existed.
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


def _none(value: Any) -> bool:
    return value is None


class LabelScore(_Schema):
    """Multi-label: one label's probability and the decision its own threshold makes."""

    label: str
    probability: float
    """The label's (calibrated) probability: the sigmoid of its logit (divided by its temperature when set)."""
    threshold: float
    """The label's threshold, stored in the checkpoint (chosen on validation by the run's rule)."""
    present: bool
    """The decision: present when ``probability >= threshold``, absent otherwise."""


class ImagePrediction(_Schema):
    file: str
    """The uploaded file's name as the client sent it (``body`` for a raw image body)."""
    label: str
    """The predicted class; multi-label: the labels decided present joined by ``|`` (empty when none is)."""
    probability: float | None
    """The predicted class's probability; multi-label: that of the most probable label present (null when none is)."""
    top_k: list[ClassProbability]
    labels: list[str] | None = Field(None, exclude_if=_none)
    """Multi-label only: the labels decided present, the most probable first (left out for a single-label model)."""
    scores: list[LabelScore] | None = Field(None, exclude_if=_none)
    """Multi-label only: every label, in the model's order, with its probability, threshold and decision."""

    @classmethod
    def of(cls, prediction: Prediction, thresholds: list[float] | None = None) -> ImagePrediction:
        """The JSON form of predict's record (the same record the CSV rows come from); ``thresholds``: a multi-label
        model's, in its label order."""
        top_k = [ClassProbability(class_name=c, probability=p) for c, p in prediction.top_k]
        out = cls(file=prediction.path, label=prediction.label, probability=prediction.probability, top_k=top_k)
        if prediction.scores is not None and thresholds is not None:
            out.labels = list(prediction.labels or [])
            out.scores = label_scores(prediction, thresholds)
        return out


def label_scores(prediction: Prediction, thresholds: list[float]) -> list[LabelScore]:
    """Each label of a multi-label record with its threshold; ``present`` is the record's own decision (the labels
    :func:`~sedensenet.engine.decision.decide_labels` chose), not a second comparison."""
    assert prediction.scores is not None
    present = set(prediction.labels or [])
    return [
        LabelScore(label=name, probability=p, threshold=t, present=name in present)
        for (name, p), t in zip(prediction.scores.items(), thresholds, strict=True)
    ]


class PredictResponse(_Schema):
    model_id: str
    """SHA-256 of the checkpoint file."""
    predictions: list[ImagePrediction]


class ExplainResponse(_Schema):
    model_id: str
    file: str
    label: str
    """The predicted class (the batched predictor's answer, as /v1/predict gives it); multi-label: the labels decided
    present joined by ``|``."""
    probability: float | None
    target: str
    """The class (multi-label: the label) the heat-map explains: the Grad-CAM of its logit."""
    overlay_png: str
    """Base64 PNG: the image blended with the Grad-CAM heat-map (longest side at most 1024 px)."""
    image_png: str
    heatmap_png: str
    se_layer: str | None
    se_weights: list[float] | None
    """The SE gate of each channel of ``se_layer`` (the last SE layer) for this image; null without SE."""
    labels: list[str] | None = Field(None, exclude_if=_none)
    """Multi-label only: the labels decided present, the most probable first."""
    target_score: LabelScore | None = Field(None, exclude_if=_none)
    """Multi-label only: the explained label's probability, threshold and decision."""


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


class LabelThreshold(_Schema):
    """Multi-label: how one label is decided."""

    name: str
    threshold: float
    """Present when the label's (calibrated) probability reaches this (0.5 where the checkpoint stores none)."""
    temperature: float | None
    """Divides the label's logit before the sigmoid (``--calibrate temperature``); null: none."""


class LabelRule(_Schema):
    """Multi-label: how the thresholds and temperatures were chosen (the checkpoint's decision record)."""

    threshold: str | None
    """The ``--threshold`` rule (``f1``, ``youden``, ``sens=0.9``, a fixed probability); null where not recorded."""
    calibrate: str | None
    chosen_on: str | None
    """The split the thresholds and temperatures were fitted on; null for a fixed threshold."""


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
    task: str = Field("single", exclude_if=lambda v: v == "single")
    """``multi`` for a multi-label model (``classes`` are its labels, each decided on its own); left out (its
    default, ``single``) for a single-label one."""
    labels: list[LabelThreshold] | None = Field(None, exclude_if=_none)
    """Multi-label only: every label with its threshold and temperature."""
    label_rule: LabelRule | None = Field(None, exclude_if=_none)
    """Multi-label only: how the thresholds were chosen."""
    evaluation_note: str | None = Field(None, exclude_if=_none)
    """Multi-label only: what ``evaluation`` being null means (the final evaluation is not stored in the file)."""


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
