"""The JSON the API returns, as pydantic models: the OpenAPI document is the API's contract."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ClassProbability(BaseModel):
    class_name: str = Field(alias="class")
    probability: float

    model_config = {"populate_by_name": True}


class ImagePrediction(BaseModel):
    file: str
    """The uploaded file's name as the client sent it (``body`` for a raw image body)."""
    label: str
    probability: float
    top_k: list[ClassProbability]


class PredictResponse(BaseModel):
    model_id: str
    """SHA-256 of the checkpoint file."""
    predictions: list[ImagePrediction]


class ExplainResponse(BaseModel):
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


class ErrorBody(BaseModel):
    error: str
    detail: str
    file: str | None = None


class Health(BaseModel):
    status: str


ModelCard = dict[str, Any]

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
