"""Throughput and latency of ``sedensenet serve`` next to offline ``sedensenet predict``, on the same images.

A ``keras_se_densenet121`` checkpoint (random weights, 2 classes, 224 px) and a set of JPEGs are made in a
temporary folder. In one run the script measures:

- offline ``predict``: a child process loads the checkpoint with ``Predictor`` (the code ``sedensenet predict``
  runs), warms up, and times ``predict_files`` over all images at batch 32; also one image's forward pass;
- the server: ``sedensenet serve`` in a child process, driven by N concurrent clients (N = 1, 8, 32), each
  sending one image per ``/v1/predict`` request: images/s and p50/p95/p99 latency, and ``/v1/explain`` latency.

Both sides use the same backend (``--backend``, default ONNX Runtime when installed, else eager) and the same
threads (the machine's cores). Counts and time are bounded (``--requests``, ``--seconds``).

    python benchmarks/serve.py                        # ~3-5 min on a 2-core VM
    python benchmarks/serve.py --requests 32 --concurrency 1,8   # quicker
    python benchmarks/serve.py --output benchmarks/results/serve.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODEL = "keras_se_densenet121"
SIZE = 224


def make_inputs(root: Path, images: int) -> tuple[Path, Path]:
    """The checkpoint (random weights) and ``images`` JPEGs of 320x256 (resized by preprocessing)."""
    import torch
    from PIL import Image

    from sedensenet.checkpoint import CheckpointMeta, save_checkpoint
    from sedensenet.models import create_model

    torch.manual_seed(0)
    model = create_model(MODEL, num_classes=2)
    checkpoint = root / "weights" / "best.safetensors"
    meta = CheckpointMeta(model=model.config.to_dict(), classes=["a", "b"], image_size=SIZE)
    save_checkpoint(checkpoint, model, meta)
    folder = root / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(images):
        base = np.linspace(0, 255, 320, dtype=np.float32)[None, :, None] * np.ones((256, 1, 3), np.float32)
        noisy = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(folder / f"{i:03d}.jpg", quality=90)
    return checkpoint, folder


def offline_worker(checkpoint: str, folder: str, backend: str) -> None:
    """In a child process: what ``sedensenet predict`` does, timed; prints JSON."""
    import torch

    from sedensenet.config import InferenceSettings
    from sedensenet.engine.predictor import Predictor
    from sedensenet.inference import describe, tune_malloc

    tune_malloc()  # as the CLI does
    start = time.perf_counter()
    predictor = Predictor.load(checkpoint, InferenceSettings(device="cpu", backend=backend))
    files = sorted(Path(folder).iterdir())
    predictor.predict_files(files[:32], batch_size=32)  # warm-up: exports ONNX once, as a long job would
    setup = time.perf_counter() - start
    start = time.perf_counter()
    predictor.predict_files(files, batch_size=32)
    seconds = time.perf_counter() - start
    module = predictor.runner(len(files))
    x = torch.randn(1, 3, SIZE, SIZE)
    single = []
    for _ in range(7):
        t = time.perf_counter()
        predictor.probabilities(x, module)
        single.append(time.perf_counter() - t)
    print(json.dumps({
        "images": len(files), "seconds": seconds, "images_per_s": len(files) / seconds, "setup_s": setup,
        "single_forward_s": statistics.median(single), "backend": describe(module),
        "threads": torch.get_num_threads(),
    }))  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: Path, backend: str) -> tuple[subprocess.Popen, str, float]:
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "sedensenet", "serve", str(checkpoint), "--port", str(port), "--backend", backend,
           "--max-batch", "32", "-q"]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    while time.perf_counter() - start < 300:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.stderr.read()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url, time.perf_counter() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    proc.kill()
    raise SystemExit("the server was not ready after 300 s")


async def drive(url: str, images: list[bytes], concurrency: int, requests: int, seconds: float) -> dict:
    """``concurrency`` clients in a closed loop, one image per request, until ``requests`` or ``seconds``."""
    import httpx

    latencies: list[float] = []
    sent = 0
    deadline = time.perf_counter() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal sent
        while sent < requests and time.perf_counter() < deadline:
            data = images[sent % len(images)]
            sent += 1
            t = time.perf_counter()
            r = await http.post(f"{url}/v1/predict", content=data, headers={"content-type": "image/jpeg"})
            r.raise_for_status()
            latencies.append(time.perf_counter() - t)

    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        for _ in range(2):  # warm the connections and the server's code paths
            (await http.post(f"{url}/v1/predict", content=images[0], headers={"content-type": "image/jpeg"}))
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    q = np.percentile(np.asarray(latencies), [50, 95, 99]) * 1000
    return {"concurrency": concurrency, "requests": len(latencies), "seconds": wall,
            "images_per_s": len(latencies) / wall, "p50_ms": q[0], "p95_ms": q[1], "p99_ms": q[2]}  # fmt: skip


def explain_latency(url: str, image: bytes, runs: int = 5) -> float:
    import httpx

    times = []
    for _ in range(runs + 1):
        t = time.perf_counter()
        httpx.post(f"{url}/v1/explain", content=image, headers={"content-type": "image/jpeg"}, timeout=300)
        times.append(time.perf_counter() - t)
    return statistics.median(times[1:]) * 1000


def default_backend() -> str:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return "eager"
    return "onnxruntime"


def table(result: dict) -> str:
    off = result["offline"]
    rows = [
        "| | concurrency | images | images/s | vs offline predict | p50 ms | p95 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| offline `predict` (batch 32) | – | {off['images']} | {off['images_per_s']:.1f} | 1.00x | – | – | – |",
    ]
    for r in result["server"]:
        rows.append(f"| `serve` /v1/predict | {r['concurrency']} | {r['requests']} | {r['images_per_s']:.1f} | "
                    f"{r['images_per_s'] / off['images_per_s']:.2f}x | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | "
                    f"{r['p99_ms']:.0f} |")  # fmt: skip
    single = off["single_forward_s"] * 1000
    rows.append("")
    rows.append(f"One image's forward pass: {single:.0f} ms; `/v1/explain` (Grad-CAM + SE gates, one image): "
                f"{result['explain_p50_ms']:.0f} ms (median of 5). Backend: {off['backend']}.")  # fmt: skip
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="distinct images (offline predict runs all)")
    parser.add_argument("--requests", type=int, default=96, help="requests per concurrency level, at most")
    parser.add_argument("--seconds", type=float, default=90, help="time per concurrency level, at most")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--backend", default=None, help="default: onnxruntime when installed, else eager")
    parser.add_argument("--output", help="write the raw results as JSON here (and print the table)")
    parser.add_argument("--offline-worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.offline_worker:
        offline_worker(*args.offline_worker)
        return
    backend = args.backend or default_backend()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, folder = make_inputs(Path(tmp), args.images)
        worker = subprocess.run([sys.executable, __file__, "--offline-worker", str(checkpoint), str(folder), backend],
                                capture_output=True, text=True, check=True)  # fmt: skip
        offline = json.loads(worker.stdout.strip().splitlines()[-1])
        images = [p.read_bytes() for p in sorted(folder.iterdir())]
        proc, url, ready_s = start_server(checkpoint, backend)
        try:
            server = []
            for c in (int(v) for v in args.concurrency.split(",")):
                requests = max(args.requests, 2 * c)
                server.append(asyncio.run(drive(url, images, c, requests, args.seconds)))
                print(f"concurrency {c}: {server[-1]['images_per_s']:.1f} img/s", file=sys.stderr)
            explain_ms = explain_latency(url, images[0])
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    result = {
        "model": MODEL, "image_size": SIZE, "backend": backend, "offline": offline, "server": server,
        "server_ready_s": ready_s, "explain_p50_ms": explain_ms,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cores": os.cpu_count(),
                    "loadavg": os.getloadavg(), "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }  # fmt: skip
    print(table(result))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
