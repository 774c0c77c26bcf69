"""The request body limit, enforced while the body arrives: parsing a form would read all of it first."""

from __future__ import annotations

import json
from typing import Any

from sedensenet.serve.errors import ApiError

Scope = dict[str, Any]
Message = dict[str, Any]


class UploadTooLarge(ApiError):
    """The body grew past the limit: raised from ``receive`` inside whatever is reading it."""

    def __init__(self, limit: int) -> None:
        mb = limit / 1024 / 1024
        super().__init__(413, "too_large", f"the upload is larger than the limit of {mb:.3g} MB (--max-upload-mb)")


class BodySizeLimit:
    """ASGI middleware: refuse a body over ``max_bytes`` by its Content-Length before reading it, and count the
    bytes of every body (chunked ones included) as they arrive, raising :class:`UploadTooLarge` from ``receive``
    at the first byte over the limit, so nothing larger is ever held in memory."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and not declared.isdigit():
            await _send_error(send, ApiError(400, "bad_request", f"invalid Content-Length {declared[:20]!r}"))
            return
        if declared is not None and int(declared) > self.max_bytes:
            await _send_error(send, UploadTooLarge(self.max_bytes))
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise UploadTooLarge(self.max_bytes)
            return message

        await self.app(scope, counted, send)


async def _send_error(send: Any, error: ApiError) -> None:
    body = json.dumps({"error": error.error, "detail": error.detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]  # fmt: skip
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
