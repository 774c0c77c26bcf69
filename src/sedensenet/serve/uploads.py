"""Reading uploads from a request, in memory only: multipart files or a raw image body."""

from __future__ import annotations

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from sedensenet.serve.errors import ApiError
from sedensenet.serve.settings import ServeSettings

RAW_TYPES = ("application/octet-stream",)
MULTIPART = "multipart/form-data"
FILE_FIELDS = 32
"""Non-file form fields accepted (and ignored) in a multipart body."""


async def read_uploads(request: Request, settings: ServeSettings) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` of every file in the request, in order.

    Multipart parts stay in memory (the body limit bounds them), so no upload is ever written to disk.
    """
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == MULTIPART:
        return await _multipart(request, settings)
    if media.startswith("image/") or media in RAW_TYPES:
        data = await request.body()
        return [(request.headers.get("x-filename", "body")[:255], data)]
    raise ApiError(
        415, "unsupported_media_type",
        f"send images as multipart/form-data or as a raw image body (image/*), not {media or 'no Content-Type'}",
    )  # fmt: skip


async def _multipart(request: Request, settings: ServeSettings) -> list[tuple[str, bytes]]:
    parser = MultiPartParser(request.headers, request.stream(), max_files=settings.max_files, max_fields=FILE_FIELDS)
    parser.spool_max_size = settings.max_upload_bytes + 1  # kept in memory: never spooled to a temporary file
    try:
        form = await parser.parse()
    except ApiError:
        raise
    except ClientDisconnect:
        raise ApiError(400, "client_disconnected", "the client closed the connection mid-upload") from None
    except MultiPartException as exc:
        if exc.message.startswith("Too many files"):
            raise ApiError(
                413, "too_many_files", f"more than {settings.max_files} files in one request (--max-files)"
            ) from None
        raise ApiError(400, "malformed_multipart", f"the multipart body cannot be parsed: {exc.message}") from None
    except Exception as exc:  # python-multipart's own parse errors
        raise ApiError(400, "malformed_multipart", f"the multipart body cannot be parsed: {exc}") from None
    try:
        files = [(v.filename or key, await v.read()) for key, v in form.multi_items() if isinstance(v, UploadFile)]
    finally:
        await form.close()
    if not files:
        raise ApiError(400, "no_file", "the form holds no file: send each image as a multipart file field")
    return files
