"""``sedensenet tune``: hyperparameter search with Optuna over ordinary training runs.

A TPE sampler proposes settings from a search space (:data:`DEFAULT_SPACE`, narrowed or widened by a YAML file); a
median pruner stops trials whose validation metric lags the others' at the same epoch (each epoch reports it
through :class:`~sedensenet.engine.run.EpochEnd`). Trial 0 is always the default settings, so the study shows
whether tuning beat them. The study lives in a database: ``runs/tune/<name>/study.db`` (SQLite) by default, so a
rerun after Ctrl-C or a crash continues it (``trials`` is the study's total), or ``--storage postgresql://...``,
where the same command on several machines runs trials in parallel (Optuna's own distributed mode). A heartbeat
marks a trial whose process died as failed, and it is retried with the same settings.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import re
import socket
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from sedensenet.config import ConfigError, TrainConfig, dump_yaml, load_yaml
from sedensenet.engine.faults import StopRun, TrainingInterrupted, TrainingOutOfMemoryError
from sedensenet.engine.memory import MemoryPlanError
from sedensenet.errors import MissingDependencyError
from sedensenet.fileio import atomic_write_text

log = logging.getLogger(__name__)

DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "lr": {"low": 1e-4, "high": 1e-2, "log": True},
    "weight_decay": {"low": 0.0, "high": 0.05},
    "augment": {"choices": ["none", "light", "strong"]},
    "label_smoothing": {"low": 0.0, "high": 0.2},
    "image_size": {"scale": [0.75, 1.0, 1.25]},
    "batch_size": {"scale": [0.5, 1.0, 2.0]},
}
"""The search space: a float range (``low``, ``high``, ``log``), ``choices``, or ``scale``: choices as multiples of
the run's own value (image size rounded to 8 pixels). ``model`` is added with the presets given in ``models``.
A YAML file (``--space``) overrides entries by name: a mapping as here, a list (choices), a single value (fixed)
or ``null`` (left out: the run's setting)."""

HEARTBEAT_SECONDS = 60
"""How often a running trial says it is alive; one silent for twice as long is failed and retried."""
RETRIES = 2
"""How often a trial whose process died is retried."""


@dataclass
class TuneResult:
    """The study's outcome and where its files are."""

    out_dir: Path
    storage: str
    trials: list[dict[str, Any]]
    """One row per trial: number, state, value, the settings tried, the reason a pruned trial gives."""
    best: dict[str, Any]
    """The best trial's row."""
    defaults: dict[str, Any] | None
    """Trial 0's row: the default settings."""
    best_yaml: Path
    score: str
    """What a trial's value is: the best epoch's ``monitor``, or the held-out accuracy over folds."""

    def markdown(self) -> str:
        """The trials table, best first marked, and the defaults against the best."""
        return _markdown(self.trials, self.best, self.defaults, self.score)


def tune(
    data: str,
    *,
    trials: int = 20,
    models: list[str] | None = None,
    storage: str | None = None,
    space: str | None = None,
    folds: int = 0,
    time_per_trial: str | None = None,
    project: str | os.PathLike = "runs",
    name: str = "tune",
    heartbeat: int = HEARTBEAT_SECONDS,
    **overrides: Any,
) -> TuneResult:
    """Tune the training settings on ``data`` with Optuna; write the trials table, the best settings and plots.

    Args:
        data: image folder or ``builtin:NAME``.
        trials: the study's total number of finished (complete or pruned) trials; a rerun continues up to it.
        models: presets to choose among (default: the run's ``model``).
        storage: the study's database URL, e.g. ``postgresql://user@host/db`` to run trials on several machines
            (default: SQLite in ``project/tune/name/study.db``).
        space: a YAML file that narrows or widens the search space (see :data:`DEFAULT_SPACE`).
        folds: score each trial by k-fold cross-validation (held-out accuracy, as ``compare --folds``).
        time_per_trial: each trial's time budget (``5m``, ``90s``), as ``train --time``.
        project: folder that holds ``tune/``.
        name: the study's name and folder; rerunning with the same name continues it.
        heartbeat: seconds between a running trial's heartbeats (a trial silent for twice as long is retried).
        **overrides: training settings shared by every trial (epochs, image_size, …); the search space's
            entries start from them.
    """
    _require("optuna", "tune")
    if trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {trials}")
    if time_per_trial is not None:
        overrides["time"] = time_per_trial
    out_dir = Path(project) / "tune" / name
    out_dir.mkdir(parents=True, exist_ok=True)
    base = _base_config(data, overrides)
    spec = search_space(base, models=models, space_file=space)
    url = storage_url(storage) if storage else f"sqlite:///{(out_dir / 'study.db').resolve()}"
    storage = _storage(url, heartbeat)
    study = _study(storage, name, "accuracy" if folds else base.monitor)
    if not study.trials:  # trial 0: the settings as given, so the study shows whether tuning beat them
        _enqueue_defaults(study, storage, default_params(base, spec))
    done = _finished(study)
    objective = Objective(data, base, spec, overrides, out_dir, folds)
    from sedensenet.tracking import parent_run

    with parent_run(base.mlflow, f"tune {name}", tags={"sedensenet.study": "tune"}):
        if done < trials:
            log.info("study %s: %d of %d trials finished; running the rest (storage %s)", name, done, trials, url)
            _optimize(study, objective, trials)
    monitor = base.monitor if base.monitor != "auto" else "monitor (auto: val_accuracy, val_auc for multi-label)"
    score = f"held-out accuracy ({folds} folds)" if folds else monitor
    return write_outputs(study, out_dir, url, data, overrides, score=score)


def _require(module: str, extra: str) -> None:
    """Say what to install when an optional package is missing, before any work."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(f"sedensenet {extra} needs {module}: pip install 'sedensenet[{extra}]'")


def _optimize(study: Any, objective: Objective, trials: int) -> None:
    """Run trials until the study holds ``trials`` finished ones (other workers' included).

    A worker whose heartbeat came late (a paused or overloaded machine) finds its running trial failed by another
    worker, which retries it; Optuna then refuses this worker's report or result ("Cannot tell a FAIL trial").
    On SQLite two workers starting together can also both take the one queued trial (the defaults) and run it;
    the second to finish is refused ("Cannot tell a COMPLETE trial"). Either way the trial is another worker's
    now: this one logs it and goes on with the next.
    """
    import optuna

    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    try:
        for _ in range(trials + RETRIES + 1):
            try:
                study.optimize(objective, callbacks=[optuna.study.MaxTrialsCallback(trials, states=finished)],
                               gc_after_trial=True)  # fmt: skip
                return
            except (optuna.exceptions.UpdateFinishedTrialError, ValueError) as e:
                if not _taken_over(e):
                    raise
                log.warning("a trial of this worker was finished by another one (failed for a late heartbeat on a "
                            "busy or paused machine, or run by both); the study keeps the other worker's outcome and "
                            "this worker goes on (%s)", e)  # fmt: skip
    except TrainingInterrupted as e:  # Ctrl-C: the trial is failed; the study continues on a rerun
        raise TrainingInterrupted(
            f"tuning stopped in a trial ({e.run_dir}); rerun the same tune command to continue the study "
            f"{study.study_name} ({_finished(study)} of {trials} trials finished)",
            e.run_dir, e.epoch, e.signum, e.command,
        ) from None  # fmt: skip


def _taken_over(error: Exception) -> bool:
    """Whether ``error`` is Optuna refusing an update to a trial that another worker already finished."""
    import optuna

    if isinstance(error, optuna.exceptions.UpdateFinishedTrialError):
        return True
    return (
        isinstance(error, ValueError)
        and re.match(r"Cannot tell a (FAIL|COMPLETE|PRUNED) trial", str(error)) is not None
    )


def storage_url(url: str) -> str:
    """``postgresql://...`` through psycopg2 when psycopg 3 (SQLAlchemy 2.1's default driver) is not installed."""
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgresql", "postgres") and importlib.util.find_spec("psycopg") is None:
        if importlib.util.find_spec("psycopg2") is not None:
            return f"postgresql+psycopg2://{rest}"
    return url


def _base_config(data: str, overrides: dict[str, Any]) -> TrainConfig:
    from sedensenet.api import training_config

    base, _ = training_config(data, **overrides)
    return base


def _storage(url: str, heartbeat: int) -> Any:
    """The database at ``url``, with the heartbeat that retries trials whose process died."""
    import optuna
    from optuna.storages import RDBStorage

    with warnings.catch_warnings():  # the heartbeat is "experimental" in Optuna since 2.8: it is what we rely on
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RDBStorage(url, heartbeat_interval=heartbeat, grace_period=2 * heartbeat, **_retry_callback())


def _enqueue_defaults(study: Any, storage: Any, params: dict[str, Any]) -> None:
    """Enqueue the defaults trial once, however many workers start on the empty study together.

    A study name is unique in the database, so creating a marker study is an atomic try-lock on SQLite and
    PostgreSQL alike: the worker that creates it checks again that the study is still empty, enqueues, and
    drops the marker; a worker that cannot create it leaves the defaults to the one that did.
    """
    import optuna

    try:
        marker = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], f"{study.study_name}.defaults-lock")
    except optuna.exceptions.DuplicatedStudyError:
        return
    try:
        if not study.get_trials(deepcopy=False):
            study.enqueue_trial(params, user_attrs={"defaults": True}, skip_if_exists=True)
    finally:
        storage.delete_study(marker)


def _study(storage: Any, name: str, score: str) -> Any:
    """The study ``name`` in ``storage`` (created on first use), with TPE and the median pruner; ``score``
    (a loss is minimised) gives the direction."""
    import optuna

    return optuna.create_study(
        storage=storage, study_name=name, load_if_exists=True,
        direction="minimize" if score.endswith("loss") else "maximize",
        sampler=optuna.samplers.TPESampler(seed=None), pruner=optuna.pruners.MedianPruner(n_warmup_steps=0),
    )  # fmt: skip


def _retry_callback() -> dict[str, Any]:
    """Retry a trial whose heartbeat stopped: Optuna 4.9's name for it, or the older one."""
    from optuna import storages

    if hasattr(storages, "RetryHeartbeatStaleTrialCallback"):
        return {"heartbeat_stale_trial_callback": storages.RetryHeartbeatStaleTrialCallback(max_retry=RETRIES)}
    return {"failed_trial_callback": storages.RetryFailedTrialCallback(max_retry=RETRIES)}


def _finished(study: Any) -> int:
    import optuna

    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def search_space(
    base: TrainConfig, *, models: list[str] | None = None, space_file: str | os.PathLike | None = None
) -> dict[str, Any]:
    """The resolved search space: name -> Optuna distribution, the run's own values always inside it (trial 0)."""
    entries: dict[str, Any] = {k: dict(v) for k, v in DEFAULT_SPACE.items()}
    if models:
        entries["model"] = {"choices": list(models)}
    if space_file:
        entries.update(load_yaml(space_file))
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(entries) - names)
    if unknown:
        raise ConfigError(f"{space_file}: unknown setting(s) {unknown} in the search space")
    return {k: _distribution(k, v, getattr(base, k), space_file) for k, v in entries.items() if v is not None}


def _distribution(name: str, entry: Any, current: Any, source: Any) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    if isinstance(entry, dict) and "scale" in entry:
        values = [_scaled(name, current, s) for s in entry["scale"]]
        return CategoricalDistribution(sorted(set(values) | {current}))
    if isinstance(entry, dict) and "choices" in entry:
        entry = entry["choices"]
    if isinstance(entry, list):
        return CategoricalDistribution(list(dict.fromkeys([*entry, current])))
    if not isinstance(entry, dict):
        return CategoricalDistribution([entry])
    low, high, log_scale = float(entry["low"]), float(entry["high"]), bool(entry.get("log", False))
    low, high = min(low, float(current)), max(high, float(current))  # the run's value stays reachable (trial 0)
    if log_scale and low <= 0:
        raise ConfigError(f"{source or 'search space'}: {name} has a log range but the run's value is {current}")
    return FloatDistribution(low, high, log=log_scale)


def _scaled(name: str, current: int, factor: float) -> int:
    value = current * float(factor)
    return max(8, int(round(value / 8)) * 8) if name == "image_size" else max(1, int(round(value)))


def default_params(base: TrainConfig, spec: dict[str, Any]) -> dict[str, Any]:
    """The run's own values for every searched setting: trial 0."""
    return {k: getattr(base, k) for k in spec}


class Objective:
    """One trial: the suggested settings trained as an ordinary run (or cross-validated); its best validation
    metric is the value. Each epoch reports the metric to the pruner, which may stop the run there."""

    def __init__(self, data: str, base: TrainConfig, spec: dict[str, Any], overrides: dict[str, Any],
                 out_dir: Path, folds: int) -> None:  # fmt: skip
        self.data, self.base, self.spec, self.overrides, self.out_dir, self.folds = data, base, spec, overrides, \
            out_dir, folds  # fmt: skip

    def __call__(self, trial: Any) -> float:
        import optuna

        params = {k: _suggest(trial, k, d) for k, d in self.spec.items()}
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        settings = {**self.overrides, **params, "project": str(self.out_dir / "trials"), "exist_ok": True,
                    "name": f"trial_{trial.number}"}  # fmt: skip
        try:
            value = self._cross_validated(trial, settings) if self.folds else self._trained(trial, settings)
        except StopRun as e:
            trial.set_user_attr("reason", e.reason)
            raise optuna.TrialPruned(e.reason) from None
        except (TrainingOutOfMemoryError, MemoryPlanError, ConfigError) as e:
            reason = f"does not fit or cannot run: {str(e).splitlines()[0]}"
            log.warning("trial %d pruned: %s", trial.number, reason)
            trial.set_user_attr("reason", reason)
            raise optuna.TrialPruned(reason) from None
        if not math.isfinite(value):
            trial.set_user_attr("reason", "no finite validation metric")
            raise optuna.TrialPruned("no finite validation metric")
        return value

    def _trained(self, trial: Any, settings: dict[str, Any]) -> float:
        from sedensenet.api import train

        monitor = self.base.monitor
        pruning = _Pruning(trial, monitor)
        trial.set_user_attr("run_dir", str(Path(settings["project"]) / settings["name"]))
        try:
            train(self.data, verbose=0, callbacks=[pruning], **settings)
        except LastEpoch:
            pass
        if not pruning.values:
            return math.nan
        return min(pruning.values) if monitor.endswith("loss") else max(pruning.values)

    def _cross_validated(self, trial: Any, settings: dict[str, Any]) -> float:
        from sedensenet.compare import compare, summarize

        model = settings.pop("model", self.base.model)
        name, project = settings.pop("name"), settings.pop("project")
        settings.pop("exist_ok")
        result = compare(self.data, [model], seeds=1, folds=self.folds, project=project, name=name, **settings)
        trial.set_user_attr("run_dir", str(result.out_dir))
        row = result.rows[0]  # multi-label: the held-out macro AUROC (subset accuracy says little there)
        return summarize(row.test_roc_auc if row.test_mean_ap else row.test_accuracy).mean


class LastEpoch(StopRun):
    """A trial's run ends after its last epoch without the final evaluation; its value is its best epoch's."""


def _suggest(trial: Any, name: str, distribution: Any) -> Any:
    from optuna.distributions import CategoricalDistribution

    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(name, distribution.choices)
    return trial.suggest_float(name, distribution.low, distribution.high, log=distribution.log)


class _Pruning:
    """The epoch callback of a trial: report the validation metric, stop the run when the pruner says so, and
    after the last epoch (:class:`LastEpoch`): a trial is scored on its epochs, and the final evaluation's reports
    would only cost time (train ``best.yaml`` for them)."""

    def __init__(self, trial: Any, monitor: str) -> None:
        self.trial, self.monitor = trial, monitor
        self.values: list[float] = []

    def __call__(self, event: Any) -> None:
        if self.monitor == "auto":  # the run made it concrete for its data (val_auc for multi-label, ...)
            self.monitor = event.monitor
        value = event.row.get(self.monitor)
        if value is None or not math.isfinite(value):
            return
        self.values.append(float(value))
        self.trial.report(float(value), event.epoch)
        if event.epoch >= event.epochs:
            raise LastEpoch("the trial's last epoch", epoch=event.epoch)
        if self.trial.should_prune():
            raise StopRun(
                f"pruned at epoch {event.epoch}: {self.monitor} {value:.4f}, worse than earlier trials' median there",
                epoch=event.epoch,
            )


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """One row per trial in number order: number, state, value, each searched setting, worker, reason, run."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({
            "number": t.number, "state": t.state.name, "value": t.value, **t.params,
            "defaults": bool(t.user_attrs.get("defaults")), "reason": t.user_attrs.get("reason", ""),
            "worker": t.user_attrs.get("worker", ""), "run_dir": t.user_attrs.get("run_dir", ""),
        })  # fmt: skip
    return rows


def write_outputs(
    study: Any, out_dir: Path, url: str, data: str, overrides: dict[str, Any], *, score: str
) -> TuneResult:
    """trials.csv, trials.md, best.yaml (a config ``train --config`` takes) and Optuna's plots; ``score`` names
    what a trial's value is."""
    rows = trial_rows(study)
    _write_table(rows, out_dir)
    if not any(r["state"] == "COMPLETE" for r in rows):
        reasons = sorted({r["reason"] for r in rows if r["reason"]})
        raise ConfigError(f"no trial of study {study.study_name} completed ({'; '.join(reasons) or 'none ran'}); "
                          f"every trial is in {out_dir / 'trials.csv'}")  # fmt: skip
    best = next(r for r in rows if r["number"] == study.best_trial.number)
    defaults = next((r for r in rows if r["defaults"]), None)
    settings = {**overrides, **study.best_trial.params}
    config = _base_config(data, settings)
    best_yaml = out_dir / "best.yaml"
    atomic_write_text(best_yaml, dump_yaml(config))
    result = TuneResult(out_dir, url, rows, best, defaults, best_yaml, score)
    atomic_write_text(out_dir / "trials.md", result.markdown() + "\n")
    _plots(study, out_dir)
    log.info("tuning written to %s\n%s", out_dir, result.markdown())
    return result


def _write_table(rows: list[dict[str, Any]], out_dir: Path) -> None:
    header = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_dir / "trials.csv", buf.getvalue())


def _markdown(rows: list[dict[str, Any]], best: dict[str, Any], defaults: dict[str, Any] | None, monitor: str) -> str:
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in ("defaults", "worker", "run_dir")]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = [_cell(r.get(k)) for k in keys]
        cells[0] += " (defaults)" if r["defaults"] else ""
        cells[0] += " **best**" if r["number"] == best["number"] else ""
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if defaults is not None and defaults.get("value") is not None:
        lines.append(f"best {monitor} {best['value']:.4f} (trial {best['number']}) against the defaults' "
                     f"{defaults['value']:.4f} (trial {defaults['number']})")  # fmt: skip
    else:
        lines.append(f"best {monitor} {best['value']:.4f} (trial {best['number']}); the defaults' trial did not finish")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _plots(study: Any, out_dir: Path) -> None:
    """optimization_history.png and param_importances.png (Optuna's matplotlib plots; importances need at least
    two finished trials that differ)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as oplt

    for file, plot in (("optimization_history.png", oplt.plot_optimization_history),
                       ("param_importances.png", oplt.plot_param_importances)):  # fmt: skip
        try:
            with warnings.catch_warnings():  # "experimental" since Optuna 2.2, and few trials' importances
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                warnings.simplefilter("ignore", UserWarning)
                ax = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as e:
            log.info("%s not drawn: %s", file, e)
            continue
        figure = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        figure.savefig(out_dir / file, dpi=100, bbox_inches="tight")
        plt.close(figure)
