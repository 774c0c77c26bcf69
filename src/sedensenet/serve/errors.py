"""Every refusal as JSON ``{"error": code, "detail": text}`` with a 4xx status (a 5xx only for our own faults)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "too_large",
          415: "unsupported_media_type", 422: "unprocessable", 503: "unavailable"}  # fmt: skip


class ApiError(Exception):
    """A request the server refuses: ``status``, a short machine-readable ``error`` and a ``detail`` sentence
    (naming the file when one is at fault)."""

    def __init__(
        self, status: int, error: str, detail: str, *, file: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.file = file
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {"error": self.error, "detail": self.detail}
        if self.file is not None:
            body["file"] = self.file
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def error_response(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON error body for a status without a more specific code."""
    return ApiError(status, _CODES.get(status, "error"), detail, headers=headers).response()


def install_handlers(app: FastAPI) -> None:
    """JSON bodies for our refusals, FastAPI's validation errors, Starlette's 404/405 and unexpected faults."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("query", "body"))
            parts.append(f"{where}: {e.get('msg', 'invalid')}")
        return ApiError(422, "invalid_parameter", "; ".join(parts) or "invalid request").response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected %s while serving %s", type(exc).__name__, request.url.path, exc_info=exc)
        return ApiError(500, "internal_error", f"the server failed ({type(exc).__name__}); see its log").response()
