"""``sedensenet serve`` as a real process: the command line, and SIGTERM finishing the requests in flight."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sedensenet.cli import main

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
    monkeypatch.setattr("sedensenet.serve.run_server", lambda *a, **k: calls.append((a, k)))
    monkeypatch.delenv("SEDENSENET_API_KEY", raising=False)
    assert main(["serve", str(run_dir), "--host", "0.0.0.0", "--workers", "2", "--max-batch", "8"]) == 0
    assert "without --api-key" in capsys.readouterr().err
    (checkpoint, settings), kwargs = calls[0]
    assert settings.max_batch == 8 and settings.api_key is None
    assert kwargs == {"host": "0.0.0.0", "port": 8000, "workers": 2, "log_level": "info"}
    monkeypatch.setenv("SEDENSENET_API_KEY", "from-the-environment")
    assert main(["serve", str(run_dir), "--host", "0.0.0.0"]) == 0
    assert "without --api-key" not in capsys.readouterr().err
    assert calls[1][0][1].api_key == "from-the-environment"
