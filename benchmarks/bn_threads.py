"""PyTorch's CPU batch-norm kernels alone, channels_last against NCHW, at 1 and 2 threads (issue 28).

Why DenseNet-BC-100's bf16 lead over its twin shrinks at 2 threads: the training forward and backward of
``native_batch_norm`` on one dense-layer-sized tensor (default 64 x 120 x 32 x 32, float32 parameters as under
autocast), each the best of ``--reps`` wall-clock timings after a warm-up.

    python benchmarks/bn_threads.py --output benchmarks/results/bn_threads-2026-12-07.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import machine  # noqa: E402

aten = torch.ops.aten


def best_ms(fn: Callable[[], object], reps: int) -> float:
    """The fastest of ``reps`` calls after two warm-ups, in milliseconds."""
    fn(), fn()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def kernels(shape: tuple[int, int, int, int], dtype: torch.dtype, fmt: torch.memory_format, reps: int) -> dict:
    """Forward and backward milliseconds of training-mode batch norm, per thread count."""
    x = torch.randn(shape).to(dtype).contiguous(memory_format=fmt)
    grad = torch.randn_like(x)
    c = shape[1]
    weight, bias, mean, var = torch.ones(c), torch.zeros(c), torch.zeros(c), torch.ones(c)
    _, save_mean, save_invstd = aten.native_batch_norm(x, weight, bias, mean.clone(), var.clone(), True, 0.1, 1e-5)
    out: dict = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        forward = best_ms(lambda: aten.native_batch_norm(x, weight, bias, mean, var, True, 0.1, 1e-5), reps)
        backward = best_ms(
            lambda: aten.native_batch_norm_backward(
                grad, x, weight, mean, var, save_mean, save_invstd, True, 1e-5, [True, True, True]
            ),
            reps,
        )
        out[f"{threads} threads"] = {"forward_ms": forward, "backward_ms": backward}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=4, default=(64, 120, 32, 32))
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    shape = tuple(args.shape)
    result: dict = {
        "machine": machine(), "shape": shape, "reps": args.reps, "clock": "wall", "rows": [],
        "command": " ".join(["python", "benchmarks/bn_threads.py", *(argv if argv is not None else sys.argv[1:])]),
    }  # fmt: skip
    for dtype in (torch.bfloat16, torch.float32):
        for name, fmt in (("channels_last", torch.channels_last), ("NCHW", torch.contiguous_format)):
            row = {"dtype": str(dtype).removeprefix("torch."), "layout": name, **kernels(shape, dtype, fmt, args.reps)}
            result["rows"].append(row)
            one, two = row["1 threads"], row["2 threads"]
            print(f"{row['dtype']:8} {name:13} forward {one['forward_ms']:.2f} -> {two['forward_ms']:.2f} ms, "
                  f"backward {one['backward_ms']:.2f} -> {two['backward_ms']:.2f} ms (1 -> 2 threads)")  # fmt: skip
    if args.output:
        args.output.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
