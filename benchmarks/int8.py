"""int8 against fp32 ONNX Runtime inference, in one process, interleaved: the ratio is what to read.

    python benchmarks/int8.py                                   # keras_se_densenet121, 224 px, batch 32
    python benchmarks/int8.py --rounds 5 --image-size 64 --batch-size 8 --output /tmp/x.json

Both models come from the same random-initialised network (speed does not depend on the weights' values):
exported once with sedensenet's exporter, quantized with :func:`sedensenet.quantize.quantize_file` (the code
`sedensenet export --quantize int8` runs) on random calibration batches. Every round times one batch on each
session, in rotated order, so load from other processes hits all of them alike; the speed-up is the median over
rounds of ``fp32 seconds / int8 seconds``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from sedensenet.inference import export_onnx
from sedensenet.models import create_model
from sedensenet.quantize import quantize_file


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if "vnni" in f or f in ("avx2", "avx512f", "avx512bw"))


def build(args: argparse.Namespace, tmp: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=2).eval()
    example = torch.randn(2, 3, args.image_size, args.image_size)
    paths = {"fp32": tmp / "fp32.onnx"}
    paths["fp32"].write_bytes(export_onnx(model, example))
    rng = np.random.default_rng(0)
    for name, signed in (("int8 (u8 activations, s8 weights)", False), ("int8 (s8 activations, s8 weights)", True)):
        batches = (rng.standard_normal((8, 3, args.image_size, args.image_size), dtype=np.float32) for _ in range(4))
        paths[name] = tmp / f"{'s8s8' if signed else 'u8s8'}.onnx"
        quantize_file(paths["fp32"], paths[name], batches, signed=signed)
    return paths


def run(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        paths = build(args, Path(tmp))
        setup = time.perf_counter() - start
        sessions = {name: _session(p, args.threads) for name, p in paths.items()}
        sizes = {name: p.stat().st_size for name, p in paths.items()}
    x = np.random.default_rng(1).standard_normal((args.batch_size, 3, args.image_size, args.image_size), np.float32)
    names = list(sessions)
    for s in sessions.values():  # warm-up: first runs allocate and pick kernels
        for _ in range(2):
            s.run(None, {"images": x})
    times: dict[str, list[float]] = {n: [] for n in names}
    load = [os.getloadavg()[0]]
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            t = time.perf_counter()
            sessions[n].run(None, {"images": x})
            times[n].append(time.perf_counter() - t)
        load.append(os.getloadavg()[0])
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "model": args.model, "image_size": args.image_size, "batch_size": args.batch_size, "threads": args.threads,
        "rounds": args.rounds, "setup_seconds": setup, "file_bytes": sizes, "seconds": times,
        "load_average_1min": load, "cpu": platform.processor() or platform.machine(), "cpu_flags": _cpu_flags(),
        "cpus": os.cpu_count(), "onnxruntime": ort.__version__, "torch": torch.__version__,
    }  # fmt: skip


def table(result: dict) -> str:
    times = result["seconds"]
    base = times["fp32"]
    lines = ["| configuration | img/s (median) | speed vs fp32 ONNX Runtime: median [range] over rounds | file MB |",
             "|---|---:|---:|---:|"]  # fmt: skip
    for name, t in times.items():
        ratios = [b / s for b, s in zip(base, t, strict=True)]
        rate = result["batch_size"] / statistics.median(t)
        mb = result["file_bytes"][name] / 2**20
        spread = f"{statistics.median(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]"
        lines.append(f"| {name} | {rate:.1f} | {spread} | {mb:.1f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="keras_se_densenet121")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", help="write the raw results as JSON here")
    args = p.parse_args()
    result = run(args)
    result["table"] = table(result)
    print(result["table"])
    load = result["load_average_1min"]
    print(f"\n{result['date']}, {result['cpus']} CPUs {result['cpu_flags']}, onnxruntime {result['onnxruntime']}, "
          f"load average {min(load):.1f}-{max(load):.1f}, setup {result['setup_seconds']:.0f} s")  # fmt: skip
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
