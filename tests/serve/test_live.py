"""``sedensenet serve`` as a real process: the command line, and SIGTERM finishing the requests in flight."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from sedensenet.cli import main
from sedensenet.serve.run import ENV_CONFIG, app_from_environment, threads_per_worker

from .conftest import png_bytes, start_server


def test_sigterm_answers_the_requests_in_flight_then_exits(run_dir: Path) -> None:
    proc, url = start_server(run_dir, "--backend", "eager", "--max-batch", "4")
    image = png_bytes(0, size=(300, 300))
    started = [threading.Event() for _ in range(6)]
    go = threading.Event()
    answers: list[int | str] = []

    def body(i: int) -> Iterator[bytes]:
        yield image[:1000]
        started[i].set()  # the request is on the wire, its body half sent
        go.wait(30)
        yield image[1000:]

    def client(i: int) -> None:
        try:
            r = httpx.post(f"{url}/v1/predict", content=body(i), headers={"content-type": "image/png"}, timeout=60)
            answers.append(r.status_code)
        except httpx.HTTPError as exc:
            answers.append(type(exc).__name__)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    assert all(e.wait(30) for e in started)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    go.set()
    for t in threads:
        t.join(timeout=60)
    output = proc.communicate(timeout=60)[0]
    assert answers == [200] * 6, output
    assert proc.returncode in (0, -signal.SIGTERM), output  # uvicorn re-raises the signal after shutting down
    assert "Application shutdown complete" in output
    with pytest.raises(httpx.ConnectError):  # and it is gone
        httpx.get(f"{url}/healthz", timeout=5)


def test_cli_refuses_a_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", str(tmp_path / "nothing.safetensors")]) == 2
    assert "nothing.safetensors" in capsys.readouterr().err


def test_cli_warns_when_bound_beyond_this_machine_without_a_key(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    calls = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: calls.append((app, kw)))
    monkeypatch.delenv("SEDENSENET_API_KEY", raising=False)
    monkeypatch.setenv(ENV_CONFIG, "")  # restored after the test: run_server sets it for its workers
    assert main(["serve", str(run_dir), "--host", "0.0.0.0", "--workers", "2", "--max-batch", "8"]) == 0
    assert "without --api-key" in capsys.readouterr().err
    app, kwargs = calls[0]
    assert app == "sedensenet.serve.run:app_from_environment"
    assert (kwargs["host"], kwargs["port"], kwargs["workers"], kwargs["factory"]) == ("0.0.0.0", 8000, 2, True)
    worker_app = app_from_environment()  # what each worker process builds
    assert isinstance(worker_app, FastAPI)
    settings = worker_app.state.serve.settings
    assert (settings.max_batch, settings.api_key, settings.threads) == (8, None, threads_per_worker(2))

    monkeypatch.setenv("SEDENSENET_API_KEY", "from-the-environment")
    assert main(["serve", str(run_dir), "--host", "0.0.0.0"]) == 0
    assert "without --api-key" not in capsys.readouterr().err
    app, kwargs = calls[1]
    assert isinstance(app, FastAPI) and app.state.serve.settings.api_key == "from-the-environment"
    assert kwargs["host"] == "0.0.0.0" and "workers" not in kwargs


@pytest.mark.slow
def test_two_workers_serve(run_dir: Path) -> None:
    proc, url = start_server(run_dir, "--backend", "eager", "--workers", "2")
    try:
        data = png_bytes(3)
        answers = {httpx.post(f"{url}/v1/predict", content=data, headers={"content-type": "image/png"}).text
                   for _ in range(6)}  # fmt: skip
        assert len(answers) == 1 and '"label"' in next(iter(answers))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
