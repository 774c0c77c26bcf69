"""Running the app with uvicorn: one process, or ``workers`` processes that each load the model."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
from dataclasses import asdict, replace
from typing import Any

from sedensenet.serve.settings import ServeSettings

log = logging.getLogger(__name__)

ENV_CONFIG = "SEDENSENET_SERVE_CONFIG"
"""How ``run_server`` hands the checkpoint and settings to worker processes (JSON)."""


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Torch threads for each of ``workers`` processes: the cores shared out, at least one."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, workers))


def app_from_environment() -> Any:
    """The app a worker process builds from :data:`ENV_CONFIG` (uvicorn's factory for ``--workers``)."""
    from sedensenet.serve.app import create_app

    config = json.loads(os.environ[ENV_CONFIG])
    settings = config["settings"]
    settings["cors_origins"] = tuple(settings["cors_origins"])
    return create_app(config["checkpoint"], ServeSettings(**settings))


def run_server(
    checkpoint: str | os.PathLike,
    settings: ServeSettings | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    log_level: str = "info",
) -> None:
    """Serve a model: a web page to drop images on and a JSON API (/v1/predict, /v1/explain, /v1/model).

    Runs until SIGINT/SIGTERM (queued batches finish first).

    Args:
        checkpoint: run folder or .safetensors checkpoint.
        settings: limits, batching, backend and device (:class:`ServeSettings`); without an API key, the one in
            the environment variable SEDENSENET_API_KEY, if set.
        host: address to bind (default: this machine only).
        port: the port to listen on.
        workers: processes, each with the model (threads shared out).
        log_level: uvicorn's log level.

    Raises:
        ValueError: a bad port or worker count, or bad settings.
    """
    import uvicorn

    from sedensenet.serve.app import create_app

    if not 0 <= port <= 65535:
        raise ValueError(f"port must be in 0..65535, got {port}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    settings = settings or ServeSettings()
    if settings.api_key is None and os.environ.get("SEDENSENET_API_KEY"):
        settings = replace(settings, api_key=os.environ["SEDENSENET_API_KEY"])
    if settings.threads is None:
        settings = ServeSettings(**{**asdict(settings), "threads": threads_per_worker(workers)})
    if not is_loopback(host) and settings.api_key is None:
        log.warning(
            "serving on %s without --api-key: anyone who can reach this address can use the model; "
            "set --api-key (or SEDENSENET_API_KEY) or bind 127.0.0.1", host
        )  # fmt: skip
    log.info("serving %s on http://%s:%d/ (Ctrl-C to stop)", checkpoint, host, port)
    common = {"host": host, "port": port, "log_level": log_level, "timeout_graceful_shutdown": 30}
    if workers == 1:
        uvicorn.run(create_app(checkpoint, settings), **common)
        return
    create_app(checkpoint, settings)  # check the checkpoint path once, before the workers start
    os.environ[ENV_CONFIG] = json.dumps({"checkpoint": os.fspath(checkpoint), "settings": asdict(settings)})
    uvicorn.run("sedensenet.serve.run:app_from_environment", factory=True, workers=workers, **common)
