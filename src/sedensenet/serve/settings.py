"""What a server may accept and how it batches: one dataclass, checked before anything loads."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sedensenet.config import InferenceSettings

DEFAULT_MAX_PIXELS = 40_000_000


@dataclass(frozen=True)
class ServeSettings:
    """The limits and batching of :func:`~sedensenet.serve.create_app` (the ``serve`` command's flags)."""

    backend: str = "auto"
    """as for predict; auto: ONNX Runtime on CPU when installed, else eager"""
    device: str = "auto"
    """as for predict: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``"""
    max_batch: int = 32
    """images per forward pass"""
    max_wait_ms: float = 5.0
    """how long a batch waits for more images (the first image, while more requests are arriving)"""
    max_upload_mb: float = 20.0
    """request body limit, counted as it arrives"""
    max_pixels: int = DEFAULT_MAX_PIXELS
    """pixels per image (width x height, read from the header before decoding)"""
    max_files: int = 64
    """files per request"""
    max_queue: int = 256
    """images waiting; beyond it 503 with Retry-After"""
    max_explain_queue: int = 8
    """Explain requests waiting for the one explain slot; beyond it 503."""
    api_key: str | None = None
    """require Authorization: Bearer KEY on /v1 (or set SEDENSENET_API_KEY)"""
    cors_origins: tuple[str, ...] = ()
    """allow this browser origin (repeatable; default none: CORS off)"""
    threads: int | None = None
    """Torch intra-op threads of this process (default: torch's)."""

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_pixels", "max_files", "max_queue", "max_explain_queue"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("max_wait_ms", "max_upload_mb"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.max_upload_mb == 0:
            raise ValueError("max_upload_mb must be above 0")
        if self.max_queue < self.max_batch:
            raise ValueError(f"max_queue ({self.max_queue}) must be at least max_batch ({self.max_batch})")
        if self.api_key is not None and len(self.api_key) < 8:
            raise ValueError("the API key must have at least 8 characters")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")
        self.inference  # noqa: B018  (the backend and device, checked where every command checks them)

    @property
    def inference(self) -> InferenceSettings:
        """How the served model runs batches: predict's settings with this server's backend, device and
        ``max_batch``."""
        return InferenceSettings(device=self.device, backend=self.backend, batch_size=self.max_batch)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)
