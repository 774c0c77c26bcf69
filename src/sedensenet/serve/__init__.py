"""``sedensenet serve``: a local web page and a JSON API over a trained model (the ``serve`` extra).

:func:`create_app` builds the FastAPI app for any ASGI server; :func:`run_server` runs it with uvicorn.
The package sits above the engine: it reuses predict's preprocessing, predictor and backends. FastAPI is imported
when the app is built (``create_app``), so the command line can read ``run_server``'s flags without the extra.
"""

from typing import Any

from sedensenet.serve.run import run_server
from sedensenet.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app", "run_server"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from sedensenet.serve.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
