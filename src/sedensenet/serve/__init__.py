"""``sedensenet serve``: a local web page and a JSON API over a trained model (the ``serve`` extra).

:func:`create_app` builds the FastAPI app for any ASGI server; :func:`run_server` runs it with uvicorn.
The package sits above the engine: it reuses predict's preprocessing, predictor and backends.
"""

from sedensenet.serve.app import create_app
from sedensenet.serve.run import run_server
from sedensenet.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app", "run_server"]
