"""Estimated vs measured peak training memory on CPU (issue 14): one child process per configuration.

Each child builds the model, allocates Adam's state (a step on zero gradients), runs ``--steps`` training steps
(forward, cross-entropy, backward, Adam) on a fixed random batch and reports its peak RSS (``ru_maxrss``). The
default path runs with the CLI's glibc tuning (:func:`sedensenet.inference.tune_malloc`), the memory-efficient
path without it, as ``sedensenet train`` does.

    python benchmarks/memory_table.py --output benchmarks/results/memory.json      # measure (one at a time)
    python benchmarks/memory_table.py --table benchmarks/results/memory.json       # estimates next to them
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

MODELS = ("keras_se_densenet121", "keras_se_densenet201", "keras_se_densenet169")
SIZES = (128, 224)
BATCHES = (16, 32)
PATHS = ("off", "on")


def child(model_name: str, size: int, batch: int, path: str, steps: int) -> dict:
    """Run ``steps`` training steps in this process; return its peak RSS in bytes and the step times."""
    import torch

    from sedensenet.inference import tune_malloc
    from sedensenet.models import create_model

    torch.set_num_threads(2)
    tuned = tune_malloc() if path == "off" else "not tuned (memory-efficient)"
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=2, memory_efficient=path == "on").train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.randn(batch, 3, size, size)
    labels = torch.randint(0, 2, (batch,))
    for param in model.parameters():  # Adam's state exists from here on, as in every step after the first
        param.grad = torch.zeros_like(param)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "model": model_name, "image_size": size, "batch_size": batch, "memory_efficient": path,
        "steps": steps, "peak_rss_bytes": peak, "built_rss_bytes": built, "step_seconds": times, "malloc": tuned,
    }  # fmt: skip


def available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def measure(output: Path, steps: int, only: str) -> None:
    """Every configuration in turn (never two at once), appended to ``output`` as it finishes."""
    from sedensenet.engine.memory import estimate_peak

    done = json.loads(output.read_text()) if output.exists() else []
    seen = {(r["model"], r["image_size"], r["batch_size"], r["memory_efficient"]) for r in done}
    for model in MODELS:
        if only and only not in model:
            continue
        for size in SIZES:
            for batch in BATCHES:
                for path in PATHS:
                    if (model, size, batch, path) in seen:
                        continue
                    need = 1.3 * estimate_peak(model, size, batch, path == "on") + 2 * 2**30
                    while available_bytes() < need:  # a shared machine: wait for room rather than starve it
                        time.sleep(20)
                    cmd = [sys.executable, __file__, "--child", model, str(size), str(batch), path, str(steps)]
                    env = {**os.environ, "OMP_NUM_THREADS": "2"}
                    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
                    if out.returncode:
                        print(out.stderr[-2000:], file=sys.stderr)
                        continue
                    row = json.loads(out.stdout.strip().splitlines()[-1])
                    row["load_average"] = os.getloadavg()[0]
                    done.append(row)
                    output.write_text(json.dumps(done, indent=1))
                    gb = row["peak_rss_bytes"] / 1e9
                    print(f"{model} {size}/{batch} memory_efficient={path}: {gb:.2f} GB", flush=True)


def table(results: Path) -> str:
    """Markdown rows: estimate, measurement and their ratio for every measured configuration."""
    from sedensenet.engine.memory import estimate_peak

    lines = [
        "| model | size/batch | path | estimated GB | measured GB (peak RSS) | estimate / measured |",
        "|---|---|---|---:|---:|---:|",
    ]
    rows = json.loads(results.read_text())
    for r in sorted(rows, key=lambda r: (r["model"], r["image_size"], r["batch_size"], r["memory_efficient"])):
        est = estimate_peak(r["model"], r["image_size"], r["batch_size"], r["memory_efficient"] == "on", "cpu")
        path = "memory-efficient" if r["memory_efficient"] == "on" else "default (tuned malloc)"
        lines.append(
            f"| {r['model']} | {r['image_size']}/{r['batch_size']} | {path} | {est / 1e9:.2f} | "
            f"{r['peak_rss_bytes'] / 1e9:.2f} | {est / r['peak_rss_bytes']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", nargs=5, metavar=("MODEL", "SIZE", "BATCH", "PATH", "STEPS"))
    p.add_argument("--output", type=Path, default=Path("benchmarks/results/memory.json"))
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--only", default="", help="measure only the models whose name contains this")
    p.add_argument("--table", type=Path, help="print estimates next to the results in this file")
    a = p.parse_args()
    if a.child:
        m, s, b, path, steps = a.child
        print(json.dumps(child(m, int(s), int(b), path, int(steps))))
    elif a.table:
        print(table(a.table))
    else:
        a.output.parent.mkdir(parents=True, exist_ok=True)
        measure(a.output, a.steps, a.only)


if __name__ == "__main__":
    main()
