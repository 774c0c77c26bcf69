"""MLflow tracking of training runs (``--mlflow [URI]``): settings, per-epoch metrics, final metrics with their
intervals, the run folder's reports, and the model as an MLflow pyfunc model that predicts through our Predictor.

Nothing here may fail or stall training. Every call to MLflow runs on a background thread from a queue (MLflow is
imported there too: it takes seconds); a call that fails is retried, and when the store still cannot be reached the
run says so once and goes on without it. Only rank 0 logs. A study (``cv``, ``compare``, ``tune``) opens a parent
run with :func:`parent_run`; the runs trained inside it become its children.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import os
import queue
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from sedensenet.config import InferenceSettings, TrainConfig, load_yaml
from sedensenet.engine.run import EpochEnd
from sedensenet.errors import MissingDependencyError

log = logging.getLogger(__name__)

EXPERIMENT = "sedensenet"
"""The MLflow experiment runs go to, unless ``MLFLOW_EXPERIMENT_NAME`` names another."""
RETRIES = (0.5, 2.0)
"""Seconds to wait before each retry of a failed call to the tracking store."""
FLUSH_SECONDS = 60.0
"""How long the end of a run waits for the queued records to reach the store before it goes on without them."""
OUTPUT_COLUMNS = ("path", "label", "probability", "top_k", "error")
"""The logged model's output columns: ``sedensenet predict --output x.csv``'s."""
SKIPPED_FOLDERS = ("weights", "state")
"""Run-folder parts not logged as artifacts: the model is logged as an MLflow model; resume states are not reports."""
RUN_FILE = "mlflow_run.json"
"""In the run folder: the tracking URI and the MLflow run's id, so that ``--resume`` continues that MLflow run."""

_unreachable: set[str] = set()
"""Tracking URIs found down in this process: later runs (a cv's next fold) skip them at once, and say nothing."""

_parent: contextvars.ContextVar[RunHandle | None] = contextvars.ContextVar("sedensenet_mlflow_parent", default=None)


class RunHandle:
    """One MLflow run, created and written on its own background thread; its id is a future (a child waits on it)."""

    def __init__(
        self, uri: str, *, name: str, parent: RunHandle | None = None, tags: dict[str, str] | None = None,
        reopen: str | None = None,
    ) -> None:  # fmt: skip
        """``reopen``: the id of a run to continue (a resumed training run) instead of creating one; when the store
        no longer has it, a new run is made."""
        self.uri, self.name, self.parent, self.reopen = uri, name, parent, reopen
        self.reopened = False
        self.run_id: Future[str] = Future()
        self._queue: queue.Queue[Callable[[Any], None] | None] = queue.Queue()
        self._down = False
        self._thread = threading.Thread(target=self._work, args=(tags or {},), name=f"mlflow-{name}", daemon=True)
        self._thread.start()

    def submit(self, call: Callable[[Any], None]) -> None:
        """Queue ``call(client)``; it runs on the background thread, after the run exists."""
        self._queue.put(call)

    def close(self, status: str = "FINISHED", *, wait: float = FLUSH_SECONDS) -> bool:
        """End the run with ``status`` once everything queued is sent; waits at most ``wait`` seconds (the thread
        is a daemon: what is still queued then is dropped). Returns whether everything reached the store."""
        self.submit(lambda client: client.set_terminated(self.run_id.result(), status=status))
        self._queue.put(None)
        self._thread.join(wait)
        if self._thread.is_alive():
            log.warning("MLflow tracking at %s did not answer within %.0f s: the rest of run %s is not logged",
                        self.uri or "the default store", wait, self.name)  # fmt: skip
            return False
        return not self._down

    def _work(self, tags: dict[str, str]) -> None:
        client = self._start(tags)
        while (call := self._queue.get()) is not None:
            if client is not None and not self._down:
                self._attempt(lambda c=call: c(client))

    def _start(self, tags: dict[str, str]) -> Any:
        """The client and the run (a child of ``parent`` when given); ``None`` when the store cannot be reached."""
        holder: list[Any] = []

        def create() -> None:
            if self.uri in _unreachable:
                raise ConnectionError("found unavailable earlier in this process")
            # a dead server costs seconds, not MLflow's minutes of retries (a user's own settings win)
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0.5")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri=self.uri or None)
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
            experiment = client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
            all_tags = dict(tags)
            if self.parent is not None:
                all_tags["mlflow.parentRunId"] = self.parent.run_id.result(timeout=FLUSH_SECONDS)
            run = self._reopened(client) or client.create_run(experiment_id, run_name=self.name, tags=all_tags)
            holder.append(client)
            self.run_id.set_result(run.info.run_id)

        if not self._attempt(create):
            self.run_id.set_exception(RuntimeError(f"MLflow tracking at {self.uri or 'the default store'} is down"))
            return None
        return holder[0]

    def _reopened(self, client: Any) -> Any:
        """The run :attr:`reopen` names, set running again; None when there is none or the store lost it."""
        if not self.reopen:
            return None
        from mlflow.exceptions import MlflowException

        try:
            run = client.get_run(self.reopen)
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            log.info("MLflow run %s is not in the store any more: the resumed run is logged as a new one", self.reopen)
            return None
        client.update_run(run.info.run_id, status="RUNNING")
        self.reopened = True
        return run

    def _attempt(self, call: Callable[[], None]) -> bool:
        """Run ``call``, retried after :data:`RETRIES`; on the last failure the store counts as down (said once)."""
        for wait in (*(() if self.uri in _unreachable else RETRIES), None):
            try:
                call()
                return True
            except Exception as e:  # any failure of the store: training must not notice
                if wait is None:
                    self._give_up(e)
                    return False
                time.sleep(wait)
        return False

    def _give_up(self, error: Exception) -> None:
        if not self._down:
            self._down = True
            if self.uri in _unreachable:
                return
            _unreachable.add(self.uri)
            first = (str(error).splitlines() or [""])[0][:200]
            where = self.uri or "the default store"
            log.warning("MLflow tracking at %s is unavailable (%s: %s); training goes on without it",
                        where, type(error).__name__, first)  # fmt: skip


@contextlib.contextmanager
def parent_run(uri: str | None, name: str, *, tags: dict[str, str] | None = None) -> Iterator[RunHandle | None]:
    """A parent run (``cv``, ``compare``, ``tune``) for the runs trained inside the block; nothing when ``uri`` is
    None (no ``--mlflow``) or on ranks other than 0."""
    if uri is None or not _is_main():
        yield None
        return
    require_mlflow()
    handle = RunHandle(uri, name=name, parent=_parent.get(), tags=tags)
    token = _parent.set(handle)
    status = "FAILED"
    try:
        yield handle
        status = "FINISHED"
    finally:
        _parent.reset(token)
        handle.close(status)


def require_mlflow() -> None:
    """Say what to install when MLflow is missing, before any training (without importing it: seconds)."""
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        raise MissingDependencyError("--mlflow needs MLflow: pip install 'sedensenet[mlflow]'")


def _is_main() -> bool:
    from sedensenet.engine import distributed as dist

    return dist.is_main()


class RunTracker:
    """The epoch callback of one training run: opens its MLflow run at the first epoch (rank 0 only; the settings
    as params then), logs each epoch's row at its step, and at :meth:`finish` the final metrics, the reports and
    the model."""

    def __init__(self, uri: str) -> None:
        require_mlflow()
        self.uri = uri
        self.handle: RunHandle | None = None
        self._decided = False

    def __call__(self, event: EpochEnd) -> None:
        if not self._decided:
            self._decided = True
            if _is_main():
                run_dir = event.run_dir
                reopen = recorded_run(run_dir, self.uri)
                self.handle = RunHandle(self.uri, name=run_dir.name, parent=_parent.get(), reopen=reopen)
                params = run_params(run_dir)
                self.handle.submit(lambda client: _log_params(client, self.handle, params))
                self.handle.submit(lambda client: _remember_run(run_dir, self.uri, self.handle.run_id.result()))
        if self.handle is not None:
            metrics = {k: float(v) for k, v in event.row.items() if isinstance(v, int | float)}
            run_id, step, stamp = self.handle.run_id, event.epoch, int(time.time() * 1000)
            self.handle.submit(lambda client: _log_metrics(client, run_id.result(), metrics, step, stamp))

    @property
    def run_id(self) -> str | None:
        """The MLflow run's id once it exists (None without one, or when the store is down)."""
        if self.handle is None or not self.handle.run_id.done() or self.handle.run_id.exception():
            return None
        return self.handle.run_id.result()

    def finish(
        self, run_dir: Path, metrics: dict[str, Any], *, status: str = "FINISHED", tags: dict[str, str] | None = None
    ) -> bool:
        """Log the final metrics (with ``*_ci_low`` / ``*_ci_high``), the reports and the model (when the run has
        final metrics), and ``tags``; end the run with ``status``."""
        if self.handle is None:
            return False
        handle = self.handle
        for key, value in (tags or {}).items():
            handle.submit(lambda client, k=key, v=value: client.set_tag(handle.run_id.result(), k, _text(v)))
        if metrics:
            final = final_metrics(metrics)
            handle.submit(lambda client: _log_metrics(client, handle.run_id.result(), final, None, None))
            handle.submit(lambda client: _log_reports(client, handle.run_id.result(), run_dir))
            if (run_dir / "weights" / "best.safetensors").is_file():
                handle.submit(lambda client: log_model(client, handle.run_id.result(), run_dir))
        return handle.close(status)


def recorded_run(run_dir: Path, uri: str) -> str | None:
    """The id of the MLflow run ``run_dir`` was tracked in at ``uri`` (its :data:`RUN_FILE`), for a resume to continue;
    None when it was not tracked there."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        record = json.loads((run_dir / RUN_FILE).read_text(encoding="utf-8"))
        if record.get("tracking_uri") == uri and isinstance(record.get("run_id"), str):
            return record["run_id"]
    return None


def _remember_run(run_dir: Path, uri: str, run_id: str) -> None:
    """Write :data:`RUN_FILE` (atomically: a kill mid-write leaves the old one)."""
    tmp = run_dir / f"{RUN_FILE}.tmp"
    tmp.write_text(json.dumps({"tracking_uri": uri, "run_id": run_id}, indent=2) + "\n", encoding="utf-8")
    tmp.replace(run_dir / RUN_FILE)


def run_params(run_dir: Path) -> dict[str, str]:
    """Every resolved setting (the run's config.yaml; the memory plan flattened), the data description and its
    fingerprint (``data.fingerprint``: a hash of the description's JSON), as MLflow params."""
    config = load_yaml(run_dir / "config.yaml")
    params = {k: _text(v) for k, v in config.items() if k != "memory_plan"}
    params.update({f"memory_plan.{k}": _text(v) for k, v in (config.get("memory_plan") or {}).items()})
    with contextlib.suppress(Exception):  # a description the data layer cannot make is no reason to stop training
        description = data_description(TrainConfig.from_dict(config, source=str(run_dir / "config.yaml")))
        params.update({f"data.{k}": _text(v) for k, v in description.to_dict().items()})
        params["data.fingerprint"] = hashlib.sha256(description.to_json().encode("utf-8")).hexdigest()[:16]
    return params


def data_description(config: TrainConfig) -> Any:
    """The run's :class:`~sedensenet.data.description.DataDescription`: its data and how it is split."""
    from sedensenet.engine.session import describe

    return describe(config)  # the one description a run resolves (columns and label settings included)


def _text(value: Any) -> str:
    return ("" if value is None else str(value))[:6000]  # MLflow's limit on a param's value


def final_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """``final_{split}_{name}`` for each number of metrics.json (its ``binary`` and ``calibration`` sections too; the
    final evaluation of the best weights, apart from the per-epoch ``val_*``), and ``final_{split}_{name}_ci_low`` /
    ``_ci_high`` for each 95% interval."""
    out: dict[str, float] = {}
    for split, m in metrics.items():
        if not isinstance(m, dict):
            continue
        flat = {**m, **(m.get("binary") or {}), **(m.get("calibration") or {})}
        out.update({f"final_{split}_{k}": float(v) for k, v in flat.items() if _number(v)})
        top = {k.removesuffix("_ci"): v for k, v in m.items() if k.endswith("_ci")}  # multi-label: macro_auroc_ci
        for name, ci in {**(m.get("intervals") or {}), **top}.items():
            if isinstance(ci, list | tuple) and len(ci) == 2 and all(_number(v) for v in ci):
                out[f"final_{split}_{name}_ci_low"], out[f"final_{split}_{name}_ci_high"] = float(ci[0]), float(ci[1])
    return out


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def _log_params(client: Any, handle: RunHandle | None, params: dict[str, str]) -> None:
    """The settings as params. A reopened run keeps the params it has (MLflow refuses to change one): a setting the
    resume changed (``epochs``) is tagged ``sedensenet.resumed.<name>`` with its new value."""
    from mlflow.entities import Param, RunTag

    run_id = handle.run_id.result()  # type: ignore[union-attr]
    existing = client.get_run(run_id).data.params if handle.reopened else {}  # type: ignore[union-attr]
    items = [Param(k, v) for k, v in params.items() if k not in existing]
    changed = [RunTag(f"sedensenet.resumed.{k}", v) for k, v in params.items() if existing.get(k, v) != v]
    for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=items[i : i + 100])
    if changed:
        client.log_batch(run_id, tags=changed)


def _log_metrics(client: Any, run_id: str, metrics: dict[str, float], step: int | None, stamp: int | None) -> None:
    from mlflow.entities import Metric

    stamp = stamp or int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, stamp, step or 0) for k, v in metrics.items()])


def _log_reports(client: Any, run_id: str, run_dir: Path) -> None:
    """The run folder's figures and reports (not its weights or resume states), in their sub-folders."""
    for path in sorted(run_dir.rglob("*")):
        rel = path.relative_to(run_dir)
        if path.is_file() and rel.parts[0] not in SKIPPED_FOLDERS and ".tmp" not in path.name:
            client.log_artifact(run_id, str(path), artifact_path=str(rel.parent) if rel.parent.parts else None)


def log_model(client: Any, run_id: str, run_dir: Path, *, artifact_path: str = "model") -> None:
    """The run's best checkpoint as an MLflow pyfunc model under ``artifact_path``: input a table with a ``path``
    column of image files, output predict's columns (:data:`OUTPUT_COLUMNS`)."""
    import mlflow.pyfunc
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "path")]),
        outputs=Schema([ColSpec("double" if c == "probability" else "string", c) for c in OUTPUT_COLUMNS]),
    )
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bar across the training log
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # MLflow's advice on type hints and input examples: the signature is given, the input is file paths
        warnings.simplefilter("ignore", UserWarning)
        local = Path(tmp) / artifact_path
        mlflow.pyfunc.save_model(
            str(local), python_model=str(Path(__file__).with_name("mlflow_model.py")),
            artifacts={"checkpoint": str(run_dir / "weights" / "best.safetensors")},
            signature=signature, pip_requirements=["sedensenet"],
            model_config={"top_k": 1, **vars(InferenceSettings())},
        )  # fmt: skip
        client.log_artifacts(run_id, str(local), artifact_path=artifact_path)
