"""The FastAPI app: the page, ``/v1/predict``, ``/v1/explain``, ``/v1/model`` and the health probes.

The model loads in the lifespan handler and a warm-up batch runs before ``/readyz`` answers 200. Predictions go
through :class:`~sedensenet.serve.batching.DynamicBatcher`; explanations run one at a time on their own thread.
Logs never name an uploaded file or hold its pixels.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np
import torch
from fastapi import Depends, FastAPI, Query, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response

from sedensenet import __version__
from sedensenet.data import ImageRejected
from sedensenet.engine.predictor import predictions_csv
from sedensenet.serve.batching import DynamicBatcher, QueueFull
from sedensenet.serve.errors import ApiError, install_handlers
from sedensenet.serve.limits import BodySizeLimit
from sedensenet.serve.model import ServedModel, resolve_safetensors
from sedensenet.serve.schemas import (
    ERROR_RESPONSES,
    ExplainResponse,
    Health,
    ImagePrediction,
    ModelCard,
    PredictResponse,
    label_scores,
)
from sedensenet.serve.settings import ServeSettings
from sedensenet.serve.uploads import read_uploads

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1
ASSETS = {"app.js": "text/javascript", "style.css": "text/css", "favicon.svg": "image/svg+xml"}
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_KIND_STATUS = {"not_image": 415, "unsupported": 415, "empty": 422, "too_large": 422, "corrupt": 422,
                "unreadable": 422}  # fmt: skip
_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@dataclass
class ServerState:
    """What the lifespan handler sets up; ``ready`` turns true after the warm-up batch."""

    settings: ServeSettings
    model: ServedModel | None = None
    batcher: DynamicBatcher | None = None
    ready: bool = False
    explain_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    explain_waiting: int = 0
    explain_executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="sedensenet-explain")
    )


def create_app(checkpoint: str | os.PathLike, settings: ServeSettings | None = None, **overrides: Any) -> FastAPI:
    """A FastAPI app serving ``checkpoint`` (a ``.safetensors`` file or a run folder).

    Args:
        checkpoint: the model; checked here, loaded when the app starts (its lifespan).
        settings: limits and batching; ``overrides`` replace single fields (``max_batch=8``).
    """
    settings = ServeSettings(**{**(vars(settings) if settings else {}), **overrides})
    resolve_safetensors(checkpoint)  # a wrong path fails now, not in a worker later
    state = ServerState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.threads:
            torch.set_num_threads(settings.threads)
        state.model = await asyncio.to_thread(ServedModel, checkpoint, settings)
        await asyncio.to_thread(state.model.warm_up)
        state.batcher = DynamicBatcher(
            state.model.predict_batch, settings.max_batch, settings.max_wait_ms, settings.max_queue
        )
        state.batcher.start()
        state.ready = True
        try:
            yield
        finally:  # uvicorn has stopped accepting and answered what was in flight; finish what is queued
            state.ready = False
            await state.batcher.close()
            state.explain_executor.shutdown(wait=True)

    app = FastAPI(
        title="sedensenet", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
        description="Image classification with a sedensenet checkpoint. Errors are JSON {error, detail}.",
    )  # fmt: skip
    app.state.serve = state
    install_handlers(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Filename"],
        )  # fmt: skip
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)
    _add_page_routes(app, state)
    _add_api_routes(app, state)
    return app


def _add_page_routes(app: FastAPI, state: ServerState) -> None:
    static = resources.files("sedensenet.serve") / "static"

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return Response((static / "index.html").read_bytes(), media_type="text/html; charset=utf-8",
                        headers=PAGE_HEADERS)  # fmt: skip

    @app.get("/assets/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in ASSETS:
            raise ApiError(404, "not_found", f"no asset {name!r}")
        return Response((static / name).read_bytes(), media_type=ASSETS[name], headers=PAGE_HEADERS)

    @app.get("/healthz", response_model=Health, tags=["health"])
    async def healthz() -> Health:
        """Alive: the process answers."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, responses={503: ERROR_RESPONSES[503]}, tags=["health"])
    async def readyz() -> Any:
        """Ready: the model is loaded and a warm-up batch has run."""
        if not state.ready:
            return _not_ready().response()
        return Health(status="ready")


def _not_ready() -> ApiError:
    return ApiError(503, "not_ready", "the model is still loading", headers={"Retry-After": str(RETRY_AFTER_S)})


def _guard(state: ServerState) -> Any:
    """The dependency of every /v1 route: the API key (constant-time comparison), then readiness."""
    key = state.settings.api_key

    async def check(request: Request) -> ServedModel:
        if key is not None:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
                raise ApiError(401, "unauthorized", "this server needs the header Authorization: Bearer <API key>",
                               headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
        if not state.ready or state.model is None:
            raise _not_ready()
        return state.model

    return Depends(check)


def _add_api_routes(app: FastAPI, state: ServerState) -> None:
    guard = _guard(state)

    @app.get("/v1/model", response_model=ModelCard, responses=ERROR_RESPONSES, tags=["v1"])
    async def model_card(model: ServedModel = guard) -> ModelCard:
        """The model card: classes, preset, image size, parameters, the training data's name and size, the final
        evaluation (test first, each split with its label and 95% intervals), the decision rule and calibration."""
        return model.card()

    @app.post("/v1/predict", response_model=PredictResponse, responses=ERROR_RESPONSES, tags=["v1"],
              openapi_extra=_PREDICT_BODY)  # fmt: skip
    async def predict(request: Request, model: ServedModel = guard, top_k: int = Query(1, ge=1, le=1000)) -> Any:
        """Classify images: multipart files (field ``file``, repeatable) or one raw image body. A multi-label model
        also gives each image's decided labels and every label's probability, threshold and decision.
        ``Accept: text/csv`` gives the rows ``sedensenet predict --output`` writes."""
        assert state.batcher is not None
        with state.batcher.arriving() as arrival:  # batches wait for this request while it is decoded
            names, tensors = await _decode_request(request, state, keep_images=False)
            probs = await _submit(state, tensors, arrival)
        preds = model.predictor.to_predictions(names, np.stack(probs), top_k)
        if "text/csv" in request.headers.get("accept", ""):
            return Response(predictions_csv(preds), media_type="text/csv; charset=utf-8")
        thresholds = model.thresholds
        return PredictResponse(model_id=model.model_id, predictions=[ImagePrediction.of(p, thresholds) for p in preds])

    @app.post("/v1/explain", response_model=ExplainResponse, responses=ERROR_RESPONSES, tags=["v1"],
              openapi_extra=_PREDICT_BODY)  # fmt: skip
    async def explain(request: Request, model: ServedModel = guard, target: str | None = Query(None)) -> Any:
        """Grad-CAM overlay and SE channel weights of one image (``Accept: image/png``: the overlay alone).
        ``target``: the class (multi-label: the label) to explain, by name or index; default the most probable."""
        return await _explain(request, state, model, target)


async def _decode_request(request: Request, state: ServerState, keep_images: bool) -> tuple[list[str], list[Any]]:
    """Read and decode every upload (in a worker thread); the first refused file decides the status."""
    assert state.model is not None
    files = await read_uploads(request, state.settings)
    decoded = await asyncio.to_thread(_decode_all, state.model, files)
    refused = [(name, exc) for name, exc in decoded if isinstance(exc, ImageRejected)]
    if refused:
        name, exc = refused[0]
        more = f" ({len(refused) - 1} more files refused)" if len(refused) > 1 else ""
        raise ApiError(_KIND_STATUS.get(exc.kind, 422), exc.kind, f"{name}: {exc.reason}{more}", file=name)
    names = [name for name, _ in decoded]
    items = [item if keep_images else item[1] for _, item in decoded]
    return names, items


def _decode_all(model: ServedModel, files: list[tuple[str, bytes]]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for name, data in files:
        try:
            out.append((name, model.decode(data)))
        except ImageRejected as exc:
            out.append((name, exc))
    return out


async def _submit(state: ServerState, tensors: list[torch.Tensor], arrival: Any = None) -> list[Any]:
    assert state.batcher is not None
    try:
        return await state.batcher.submit(tensors, arrival)
    except QueueFull as exc:
        raise ApiError(503, "busy", f"the server is busy: {exc}; retry shortly",
                       headers={"Retry-After": str(RETRY_AFTER_S)}) from None  # fmt: skip


async def _explain(request: Request, state: ServerState, model: ServedModel, target: str | None) -> Any:
    from sedensenet.explain import resolve_target

    classes = model.predictor.classes
    try:
        target_index = resolve_target(target, classes)
    except ValueError as exc:
        if model.thresholds is None:
            raise ApiError(422, "invalid_parameter", f"target: {exc}") from None
        raise ApiError(422, "invalid_parameter", f"target: unknown label {target!r}; this model's labels are "
                       f"{', '.join(classes)} (or an index 0..{len(classes) - 1})") from None  # fmt: skip
    if state.explain_waiting >= state.settings.max_explain_queue:
        raise ApiError(503, "busy", "too many explanations are waiting; retry shortly",
                       headers={"Retry-After": str(RETRY_AFTER_S)})  # fmt: skip
    assert state.batcher is not None
    with state.batcher.arriving() as arrival:
        names, items = await _decode_request(request, state, keep_images=True)
        if len(items) != 1:
            raise ApiError(400, "one_image", f"/v1/explain takes one image, got {len(items)}")
        (image, x), name = items[0], names[0]
        (probs,) = await _submit(state, [x], arrival)
    (pred,) = model.predictor.to_predictions([name], probs[None], 1)
    state.explain_waiting += 1
    try:
        async with state.explain_lock:
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(state.explain_executor, model.explain, image, x, target_index)
    finally:
        state.explain_waiting -= 1
    if "image/png" in request.headers.get("accept", ""):
        return Response(base64.b64decode(result["overlay_png"]), media_type="image/png")
    response = ExplainResponse(model_id=model.model_id, file=name, label=pred.label, probability=pred.probability,
                               **result)  # fmt: skip
    if model.thresholds is not None:  # multi-label: the decided set, and how the explained label was decided
        response.labels = list(pred.labels or [])
        response.target_score = label_scores(pred, model.thresholds)[classes.index(result["target"])]
    return response
