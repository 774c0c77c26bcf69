"""What a server may accept and how it batches: one dataclass, checked before anything loads."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sedensenet.config import INFERENCE_BACKENDS

DEFAULT_MAX_PIXELS = 40_000_000


@dataclass(frozen=True)
class ServeSettings:
    """The limits and batching of :func:`~sedensenet.serve.create_app` (the ``serve`` command's flags)."""

    backend: str = "auto"
    """How batches run: ``predict``'s backends; ``auto`` is ONNX Runtime on CPU when installed, else eager."""
    device: str = "auto"
    max_batch: int = 32
    """Images per forward pass at most."""
    max_wait_ms: float = 5.0
    """How long the first image of a batch waits for others while more requests are arriving."""
    max_upload_mb: float = 20.0
    """Bytes per request body, counted as they arrive."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    """Pixels per image (width x height, read from the header before decoding)."""
    max_files: int = 64
    """Files per request."""
    max_queue: int = 256
    """Images waiting for a forward pass; beyond it requests get 503 with Retry-After."""
    max_explain_queue: int = 8
    """Explain requests waiting for the one explain slot; beyond it 503."""
    api_key: str | None = None
    """When set, every /v1 call needs ``Authorization: Bearer KEY``."""
    cors_origins: tuple[str, ...] = ()
    """Origins allowed to call the API from a browser; none (CORS off) by default."""
    threads: int | None = None
    """Torch intra-op threads of this process (default: torch's)."""

    def __post_init__(self) -> None:
        if self.backend not in INFERENCE_BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}: choose from {list(INFERENCE_BACKENDS)}")
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

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)
