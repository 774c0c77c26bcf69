"""``--mlflow``: a run as MLflow shows it (a real SQLite store read back through ``MlflowClient``), its model
loaded and served by MLflow predicting as ``sedensenet predict`` does, cv's folds as children, and a tracking
server that is down costing the run nothing."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from sedensenet import api
from sedensenet.config import InferenceSettings, TrainConfig, load_yaml
from sedensenet.tracking import data_description

pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

TINY = {"model": "se_densenet_tiny", "image_size": 16, "batch_size": 4, "workers": 0, "verbose": 0}


def _store(root: Path) -> str:
    """A SQLite tracking store in ``root`` whose experiment keeps its artifacts there too (MLflow's default is
    ``./mlruns`` in the working folder)."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("sedensenet", artifact_location=(root / "artifacts").as_uri())
    return uri


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tracked(tiny_images: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("mlflow")
    uri = _store(root)
    result = api.train(str(tiny_images), epochs=2, project=str(root / "runs"), mlflow=uri, **TINY)
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("sedensenet").experiment_id])
    assert len(runs) == 1
    return {"uri": uri, "client": client, "run": runs[0], "result": result, "data": tiny_images}


def test_a_tracked_run_has_every_setting_its_epochs_and_its_final_metrics(tracked: dict[str, Any]) -> None:
    client, run, result = tracked["client"], tracked["run"], tracked["result"]
    assert run.info.status == "FINISHED" and run.info.run_name == result.run_dir.name
    params = run.data.params
    config = load_yaml(result.run_dir / "config.yaml")
    assert {k: params[k] for k in ("model", "lr", "epochs", "image_size")} == {
        k: str(config[k]) for k in ("model", "lr", "epochs", "image_size")
    }
    assert params["mlflow"] == tracked["uri"]
    description = data_description(TrainConfig.from_dict(config))
    assert params["data.fingerprint"] == hashlib.sha256(description.to_json().encode()).hexdigest()[:16]
    assert params["data.path"] == str(tracked["data"]) and params["data.source"] == "folder"
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    per_epoch = result.history.history["val_accuracy"]
    assert [(m.step, m.value) for m in history] == list(zip([1, 2], per_epoch, strict=True))
    metrics = json.loads((result.run_dir / "metrics.json").read_text(encoding="utf-8"))
    low, high = metrics["intervals"]["accuracy"]
    assert run.data.metrics["final_val_accuracy"] == pytest.approx(metrics["accuracy"])
    assert (run.data.metrics["final_val_accuracy_ci_low"], run.data.metrics["final_val_accuracy_ci_high"]) == (
        pytest.approx(low), pytest.approx(high))  # fmt: skip
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"curves.png", "metrics.json", "history.csv", "config.yaml", "model"} <= artifacts
    assert not {"weights", "state"} & artifacts


def _predict_rows(tracked: dict[str, Any], files: list[str]) -> dict[str, tuple[str, float]]:
    preds = api.predict(tracked["result"].run_dir, files)
    return {p.path: (p.label, p.probability) for p in preds}


def test_the_logged_model_predicts_as_sedensenet_predict(
    tracked: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow.pyfunc
    import pandas as pd

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracked["uri"])
    assert InferenceSettings() == InferenceSettings(device="auto", backend="auto", tta="none", amp="auto")
    files = sorted(str(p) for p in Path(tracked["data"]).rglob("*.png"))
    model = mlflow.pyfunc.load_model(f"runs:/{tracked['run'].info.run_id}/model")
    assert [c.name for c in model.metadata.get_input_schema().inputs] == ["path"]
    assert [c.name for c in model.metadata.get_output_schema().inputs] == [
        "path", "label", "probability", "top_k", "error"]  # fmt: skip
    out = model.predict(pd.DataFrame({"path": files}))
    expected = _predict_rows(tracked, files)
    assert list(out["path"]) == files
    for row in out.itertuples():
        assert row.label == expected[row.path][0]
        assert row.probability == pytest.approx(expected[row.path][1], abs=1e-5)


@pytest.mark.slow  # starts a real `mlflow models serve` (8 s)
def test_mlflow_models_serve_answers_as_predict(tracked: dict[str, Any], tmp_path: Path) -> None:
    files = sorted(str(p) for p in Path(tracked["data"]).rglob("*.png"))[:4]
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracked["uri"], "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(sys.path)}  # fmt: skip
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"runs:/{tracked['run'].info.run_id}/model",
           "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        body = json.dumps({"dataframe_split": {"columns": ["path"], "data": [[f] for f in files]}}).encode()
        answer = None
        deadline = time.monotonic() + 90
        while answer is None and time.monotonic() < deadline and server.poll() is None:
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                                 headers={"Content-Type": "application/json"})  # fmt: skip
                with urllib.request.urlopen(request, timeout=30) as response:
                    answer = json.loads(response.read())
            except OSError:
                time.sleep(0.5)
        assert answer is not None, (tmp_path / "serve.log").read_text(errors="replace")[-2000:]
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
        log.close()
    expected = _predict_rows(tracked, files)
    rows = answer["predictions"]
    assert [r["path"] for r in rows] == files
    for r in rows:
        assert r["label"] == expected[r["path"]][0]
        assert r["probability"] == pytest.approx(expected[r["path"]][1], abs=1e-5)


def test_a_tracking_server_that_is_down_costs_the_run_nothing(
    tiny_images: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = _free_port()  # nothing listens there
    caplog.set_level(logging.WARNING, logger="sedensenet")
    start = time.monotonic()
    result = api.train(str(tiny_images), epochs=2, project=str(tmp_path), mlflow=f"http://127.0.0.1:{port}", **TINY)
    seconds = time.monotonic() - start
    assert (result.run_dir / "metrics.json").is_file() and result.best_epoch in (1, 2)
    said = [r.getMessage() for r in caplog.records if "is unavailable" in r.getMessage()]
    assert len(said) == 1 and f"127.0.0.1:{port}" in said[0]
    assert seconds < 60, seconds  # the logger gives up after a few seconds; training never waits on it


def _new_runs(client: MlflowClient, before: set[str]) -> list[Any]:
    """The runs of the tracked store's experiment made since ``before`` (its run ids then): the tests below share
    the ``tracked`` store, as a new SQLite store costs seconds of migrations."""
    runs = client.search_runs([client.get_experiment_by_name("sedensenet").experiment_id])
    return [r for r in runs if r.info.run_id not in before]


def _run_ids(client: MlflowClient) -> set[str]:
    return {r.info.run_id for r in _new_runs(client, set())}


def test_a_resumed_run_continues_its_mlflow_run(tracked: dict[str, Any], tmp_path: Path) -> None:
    from sedensenet.engine.faults import StopRun

    def stop_after_the_first(event: Any) -> None:
        if event.epoch == 1:
            raise StopRun("a stop after epoch 1", epoch=1)

    uri, client = tracked["uri"], tracked["client"]
    before = _run_ids(client)
    with pytest.raises(StopRun):
        api.train(str(tracked["data"]), epochs=2, project=str(tmp_path), mlflow=uri, max_steps=1,
                  callbacks=[stop_after_the_first], **TINY)  # fmt: skip
    (run_dir,) = tmp_path.iterdir()
    record = json.loads((run_dir / "mlflow_run.json").read_text(encoding="utf-8"))
    # the mlflow setting comes from the run's config.yaml (which keeps epochs: 2 and so the param does)
    resumed = api.train(resume=run_dir, epochs=3, verbose=0)
    runs = _new_runs(client, before)
    assert [r.info.run_id for r in runs] == [record["run_id"]] and record["tracking_uri"] == uri
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.params["epochs"] == "2"
    assert run.data.tags["sedensenet.stopped"] == "a stop after epoch 1"  # the first part's end, kept
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    per_epoch = resumed.history.history["val_accuracy"]
    assert [(m.step, m.value) for m in history] == list(zip([1, 2, 3], per_epoch, strict=True))
    assert "final_val_accuracy" in run.data.metrics


def test_a_reopened_run_keeps_its_params_and_tags_the_settings_a_resume_changed(tracked: dict[str, Any]) -> None:
    from concurrent.futures import Future
    from types import SimpleNamespace

    from sedensenet.tracking import _log_params

    client = tracked["client"]
    run = client.create_run(client.get_experiment_by_name("sedensenet").experiment_id, run_name="reopened")
    client.log_param(run.info.run_id, "memory_plan.batch_size", "8")
    handle = SimpleNamespace(run_id=Future(), reopened=True)
    handle.run_id.set_result(run.info.run_id)
    _log_params(client, handle, {"memory_plan.batch_size": "4", "lr": "0.001"})  # MLflow refuses a changed param
    data = client.get_run(run.info.run_id).data
    assert data.params == {"memory_plan.batch_size": "8", "lr": "0.001"}
    assert data.tags["sedensenet.resumed.memory_plan.batch_size"] == "4"
    client.delete_run(run.info.run_id)


def test_cv_logs_a_parent_run_with_one_child_per_fold(tracked: dict[str, Any], tmp_path: Path) -> None:
    from sedensenet.cv import cross_validate

    client = tracked["client"]
    before = _run_ids(client)
    cross_validate(str(tracked["data"]), folds=2, project=str(tmp_path), mlflow=tracked["uri"], epochs=1,
                   max_steps=1, **{k: v for k, v in TINY.items() if k != "verbose"})  # fmt: skip
    runs = _new_runs(client, before)
    parents = [r for r in runs if r.data.tags.get("sedensenet.study") == "cv"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(runs) == 3 and sorted(r.info.run_name for r in children) == ["fold_1", "fold_2"]
    assert sorted(r.data.params["fold"] for r in children) == ["1", "2"]
    assert all("final_test_accuracy" in r.data.metrics for r in children)


def test_compare_logs_a_parent_run_with_one_child_per_model_and_seed(tracked: dict[str, Any], tmp_path: Path) -> None:
    from sedensenet.compare import compare

    client = tracked["client"]
    before = _run_ids(client)
    result = compare(str(tracked["data"]), ["se_densenet_tiny", "densenet_bc_100"], seeds=1, project=str(tmp_path),
                     mlflow=tracked["uri"], epochs=1, max_steps=1,
                     **{k: v for k, v in TINY.items() if k not in ("model", "verbose")})  # fmt: skip
    runs = _new_runs(client, before)
    parents = [r for r in runs if r.data.tags.get("sedensenet.study") == "compare"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].info.run_name == f"compare {result.out_dir.name}"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(runs) == 3 and sorted(r.info.run_name for r in children) == [
        f"densenet_bc_100_seed{result.seeds[0]}", f"se_densenet_tiny_seed{result.seeds[0]}"]  # fmt: skip
    assert sorted((r.data.params["model"], r.data.params["seed"]) for r in children) == [
        ("densenet_bc_100", str(result.seeds[0])), ("se_densenet_tiny", str(result.seeds[0]))]  # fmt: skip
    assert all(r.info.status == "FINISHED" and "final_val_accuracy" in r.data.metrics for r in children)


def test_the_bare_flag_means_mlflows_default_store_and_nothing_imports_mlflow_or_optuna_without_it() -> None:
    from sedensenet.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["train", "--mlflow"]).mlflow == ""  # "": MLflow's own default store
    assert parser.parse_args(["cv", "--mlflow", "http://127.0.0.1:5000"]).mlflow == "http://127.0.0.1:5000"
    assert not hasattr(parser.parse_args(["train"]), "mlflow")  # not given: the config's None
    code = ("import sys, sedensenet.cli, sedensenet.api, sedensenet.tracking, sedensenet.tune, sedensenet.cv; "
            "print(sorted(m for m in ('mlflow', 'optuna') if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
                         capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    assert out.stdout.strip() == "[]"  # seconds of imports, paid only with --mlflow / by tune
