"""``sedensenet tune`` on a tiny real folder: trial 0 is the defaults, the best settings load as a train config,
a SIGKILLed study continues on rerun, and two processes sharing one study (SQLite, and a real PostgreSQL server
started here) run distinct trials."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from postgres import binaries, postgres_server  # noqa: E402

from sedensenet.api import training_config  # noqa: E402
from sedensenet.config import resolve_config  # noqa: E402

optuna = pytest.importorskip("optuna")
from optuna import storages  # noqa: E402
from optuna.trial import TrialState  # noqa: E402
from sqlalchemy.exc import OperationalError  # noqa: E402

from sedensenet.tune import storage_url, tune  # noqa: E402

TINY = {"model": "se_densenet_tiny", "image_size": 16, "epochs": 1, "batch_size": 4, "workers": 0, "max_steps": 1}
FLAGS = ["--model", "se_densenet_tiny", "--image-size", "16", "--epochs", "1", "--batch-size", "4", "--workers", "0",
         "--max-steps", "1", "--heartbeat", "1", "-q"]  # fmt: skip
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def _command(data: Path, project: Path, trials: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sedensenet", "tune", "--data", str(data), "--trials", str(trials), "--project",
            str(project), *FLAGS, *extra]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}


def _study(url: str, name: str = "tune") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def _trials_so_far(url: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials, none while the tune process has not created it yet (no file; or the file without the
    study, or with its tables half made: opening the storage then would create them beside the tune process)."""
    if not Path(url.removeprefix("sqlite:///")).is_file():
        return []
    try:
        return _study(url).get_trials(deepcopy=False)
    except (KeyError, OperationalError):
        return []


def test_trial_0_is_the_defaults_the_best_settings_load_and_each_trial_is_an_mlflow_run(
    tiny_images: Path, tmp_path: Path
) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("lr: {low: 0.001, high: 0.003, log: true}\naugment: null\nbatch_size: [2, 4]\n", encoding="utf-8")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("sedensenet", artifact_location=(tmp_path / "artifacts").as_uri())
    result = tune(str(tiny_images), trials=2, space=str(space), project=tmp_path, mlflow=uri, **TINY)
    assert [r["number"] for r in result.trials] == [0, 1]
    defaults = result.trials[0]
    assert defaults["defaults"] and result.defaults == defaults
    assert {k: defaults[k] for k in ("lr", "weight_decay", "label_smoothing", "image_size", "batch_size")} == {
        "lr": 0.001, "weight_decay": 0.0, "label_smoothing": 0.0, "image_size": 16, "batch_size": 4}  # fmt: skip
    assert "augment" not in defaults  # left out of the space by the file: every trial keeps the run's value
    assert 0.001 <= result.trials[1]["lr"] <= 0.003 and result.trials[1]["batch_size"] in (2, 4)
    assert all(r["state"] == "COMPLETE" for r in result.trials)
    best = result.trials[[r["number"] for r in result.trials].index(result.best["number"])]
    loaded = resolve_config(config_file=result.best_yaml)
    searched = {k: best[k] for k in ("lr", "batch_size", "weight_decay", "label_smoothing")}
    expected, _ = training_config(str(tiny_images), **{**TINY, "mlflow": uri, **searched})
    assert loaded == expected
    out = result.out_dir
    assert out == tmp_path / "tune" / "tune"
    assert (out / "trials.csv").read_text(encoding="utf-8").splitlines()[0].startswith("number,state,value,lr,")
    assert "(defaults)" in (out / "trials.md").read_text(encoding="utf-8")
    assert (out / "optimization_history.png").stat().st_size > 1000
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("sedensenet").experiment_id])
    [parent] = [r for r in runs if r.data.tags.get("sedensenet.study") == "tune"]
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert sorted(children) == ["trial_0", "trial_1"]  # a child run per trial, its settings as params
    assert children["trial_1"].data.params["lr"] == str(result.trials[1]["lr"])


def test_a_trial_that_does_not_fit_in_memory_is_pruned_with_the_reason(tiny_images: Path, tmp_path: Path) -> None:
    from sedensenet.config import ConfigError

    with pytest.raises(ConfigError, match="no trial of study tune completed.*not enough memory"):
        tune(str(tiny_images), trials=1, project=tmp_path, memory_limit="64K", **TINY)
    study = _study(f"sqlite:///{tmp_path / 'tune' / 'tune' / 'study.db'}")
    [trial] = study.get_trials(deepcopy=False)
    assert trial.state == TrialState.PRUNED and "--memory-limit 64K" in trial.user_attrs["reason"]
    assert "not enough memory" in (tmp_path / "tune" / "tune" / "trials.csv").read_text(encoding="utf-8")


@pytest.mark.slow
def test_a_killed_study_continues_and_retries_the_killed_trial(tiny_images: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tune' / 'tune' / 'study.db'}"
    # four epochs a trial: the kill lands inside a trial, not between two
    proc = subprocess.Popen([*_command(tiny_images, tmp_path, 3), "--epochs", "4"], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            # mid-trial: it has reported an epoch and has at least two of its four to go, so the kill cannot land
            # in the moment between one trial's end and the next one's start
            running = [t for t in _trials_so_far(url) if t.state == TrialState.RUNNING and t.number >= 1]
            if any(1 <= len(t.intermediate_values) <= 2 for t in running):
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait(timeout=30)
    stuck = [t.number for t in _trials_so_far(url) if t.state == TrialState.RUNNING]
    assert len(stuck) == 1, "the tune process was not killed inside its second or later trial"
    time.sleep(2.5)  # two heartbeats missed: the killed trial is stale
    result = tune(str(tiny_images), trials=3, project=tmp_path, heartbeat=1, **TINY)
    trials = _study(url).get_trials(deepcopy=False)
    killed = trials[stuck[0]]
    assert killed.state == TrialState.FAIL
    retry = getattr(storages, "RetryHeartbeatStaleTrialCallback", None) or storages.RetryFailedTrialCallback
    retried = [t for t in trials if retry.retried_trial_number(t) == killed.number]
    assert len(retried) == 1 and retried[0].params == killed.params and retried[0].state in FINISHED
    assert len([t for t in trials if t.state in FINISHED]) == 3
    assert [r["state"] for r in result.trials].count("FAIL") == 1


def _two_workers(data: Path, project: Path, url: str, *storage: str) -> list[optuna.trial.FrozenTrial]:
    procs = [subprocess.Popen(_command(data, project, 4, *storage), env=_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE) for _ in range(2)]  # fmt: skip
    errors = [p.communicate(timeout=300)[1].decode(errors="replace") for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    return _study(url).get_trials(deepcopy=False)


def _check_distinct(trials: list[optuna.trial.FrozenTrial]) -> None:
    finished = [t for t in trials if t.state in FINISHED]
    assert 4 <= len(finished) <= 5  # each worker stops when 4 are done; one may still finish its last one
    assert len({t.user_attrs["worker"] for t in finished}) == 2  # both processes ran trials
    folders = [t.user_attrs["run_dir"] for t in finished]
    assert len(set(folders)) == len(folders) and all(Path(f, "history.csv").is_file() for f in folders)
    assert sum(bool(t.user_attrs.get("defaults")) for t in trials) == 1


@pytest.mark.slow
def test_two_processes_share_one_sqlite_study(tiny_images: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tune' / 'tune' / 'study.db'}"
    (tmp_path / "tune" / "tune").mkdir(parents=True)
    optuna.create_study(study_name="tune", storage=url, direction="maximize")
    _check_distinct(_two_workers(tiny_images, tmp_path, url))


@pytest.mark.slow
@pytest.mark.skipif(not binaries() and not os.environ.get("CI"), reason="no PostgreSQL binaries (initdb, pg_ctl)")
def test_two_processes_share_one_postgresql_study(tiny_images: Path, tmp_path: Path) -> None:
    pytest.importorskip("psycopg2")
    with postgres_server() as url:
        optuna.create_study(study_name="tune", storage=storage_url(url), direction="maximize")
        _check_distinct(_two_workers(tiny_images, tmp_path, storage_url(url), "--storage", url))


def test_the_defaults_are_enqueued_only_by_the_worker_that_holds_the_lock(tmp_path: Path) -> None:
    from sedensenet.tune import _enqueue_defaults, _storage

    storage = _storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat=60)
    study = optuna.create_study(storage=storage, study_name="tune")
    held = optuna.create_study(storage=storage, study_name="tune.defaults-lock")  # another worker is enqueuing
    _enqueue_defaults(study, storage, {"lr": 0.001})
    assert study.get_trials(deepcopy=False) == []
    optuna.delete_study(study_name=held.study_name, storage=storage)
    _enqueue_defaults(study, storage, {"lr": 0.001})
    _enqueue_defaults(study, storage, {"lr": 0.001})  # a later worker finds the study no longer empty
    [trial] = study.get_trials(deepcopy=False)
    assert trial.user_attrs == {"defaults": True} and trial.system_attrs["fixed_params"] == {"lr": 0.001}
    assert [s.study_name for s in optuna.get_all_study_summaries(storage=storage)] == ["tune"]  # the lock is dropped


@pytest.mark.parametrize("other", [TrialState.FAIL, TrialState.COMPLETE])
def test_a_worker_whose_trial_another_worker_finished_goes_on(
    other: TrialState, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Another worker finished this worker's running trial, and Optuna refuses this one's report or result, which
    ended the whole worker as a crash. FAIL: a late heartbeat (a paused or overloaded machine) let another worker
    fail it ("Cannot tell a FAIL trial"). COMPLETE: on SQLite both workers took the one queued trial (the
    defaults) and the other one finished it first ("Cannot tell a COMPLETE trial", seen in the two-worker test)."""
    from sedensenet import tune as tune_mod

    storage = tune_mod._storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat=60)
    study = tune_mod._study(storage, "late", "val_accuracy")

    def objective(trial: optuna.trial.Trial) -> float:
        if trial.number == 0:  # what the other worker does to this one
            values = [0.7] if other == TrialState.COMPLETE else None
            storage.set_trial_state_values(trial._trial_id, other, values=values)
            if other == TrialState.FAIL:
                trial.report(0.5, 1)  # refused: the trial has finished
        return 0.9

    with caplog.at_level(logging.WARNING, logger="sedensenet.tune"):
        tune_mod._optimize(study, objective, trials=2)
    trials = study.get_trials(deepcopy=False)
    assert trials[0].state == other and [t.state for t in trials].count(TrialState.COMPLETE) == 2
    if other == TrialState.COMPLETE:
        assert trials[0].values == [0.7]  # the other worker's outcome stands
    assert "finished by another one" in caplog.text
