"""PyTorch's CPU batch-norm kernels alone, channels_last against NCHW, at 1 and 2 threads (issue 28).

Why DenseNet-BC-100's bf16 lead over its twin shrinks at 2 threads: the training forward and backward of
``native_batch_norm`` on one dense-layer-sized tensor (default 64 x 120 x 32 x 32, float32 parameters as under
autocast), each the best of ``--reps`` wall-clock timings after a warm-up. The channels_last kernels give each
thread a ``C``-float slice of one buffer, and when ``C`` is not a multiple of 16 neighbouring threads write the same
cache line. ``channels_last folded`` is :mod:`sedensenet.models.fast_norm`'s cure (rows side by side, so the kernels
see ``r*C`` channels), timed with the fold forced at both thread counts.

    python benchmarks/bn_threads.py --output benchmarks/results/bn_threads-2026-12-07.json
    python benchmarks/bn_threads.py --shape 64 150 16 16 --output benchmarks/results/bn_threads-150-16-2026-12-07.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import machine  # noqa: E402

from sedensenet.inference import tune_malloc  # noqa: E402
from sedensenet.models import fast_norm  # noqa: E402

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


def kernels(
    shape: tuple[int, int, int, int], dtype: torch.dtype, fmt: torch.memory_format, reps: int, fold: bool = False
) -> dict:
    """Forward and backward milliseconds of training-mode batch norm, per thread count (``fold``: folded rows)."""
    x = torch.randn(shape).to(dtype).contiguous(memory_format=fmt)
    grad = torch.randn_like(x)
    c = shape[1]
    weight, bias, mean, var = torch.ones(c), torch.zeros(c), torch.zeros(c), torch.ones(c)
    _, save_mean, save_invstd = aten.native_batch_norm(x, weight, bias, mean.clone(), var.clone(), True, 0.1, 1e-5)
    out: dict = {}
    if fold:
        return _folded(x, grad, weight, bias, reps)
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


def _folded(x: torch.Tensor, grad: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, reps: int) -> dict:
    """:func:`kernels` through fast_norm with the fold forced (its rule folds only at more than one thread)."""
    lanes = 32 if x.dtype == torch.bfloat16 else 16
    r = lanes // math.gcd(x.shape[1], lanes)
    norm = torch.nn.BatchNorm2d(x.shape[1])
    norm.weight.data, norm.bias.data = weight, bias
    out: dict = {"fold": r}
    with mock.patch.object(fast_norm, "fold_factor", lambda t, extra_pass=False: r), torch.no_grad():
        mean, var = fast_norm.batch_stats(x)
        invstd = (var + 1e-5).rsqrt()
        for threads in (1, 2):
            torch.set_num_threads(threads)
            forward = best_ms(lambda: fast_norm.batch_norm(norm, x), reps)
            backward = best_ms(lambda: fast_norm.batch_norm_backward(grad, x, weight, mean, invstd, True), reps)
            out[f"{threads} threads"] = {"forward_ms": forward, "backward_ms": backward}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=4, default=(64, 120, 32, 32))
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    malloc = tune_malloc()  # as the CLI runs: otherwise every float32 output is a fresh mapping, page-faulted
    shape = tuple(args.shape)
    result: dict = {
        "machine": machine(), "shape": shape, "reps": args.reps, "clock": "wall", "malloc": malloc, "rows": [],
        "command": " ".join(["python", "benchmarks/bn_threads.py", *(argv if argv is not None else sys.argv[1:])]),
    }  # fmt: skip
    for dtype in (torch.bfloat16, torch.float32):
        layouts = (("channels_last", torch.channels_last, False), ("channels_last folded", torch.channels_last, True),
                   ("NCHW", torch.contiguous_format, False))  # fmt: skip
        for name, fmt, fold in layouts:
            row = {"dtype": str(dtype).removeprefix("torch."), "layout": name,
                   **kernels(shape, dtype, fmt, args.reps, fold)}  # fmt: skip
            result["rows"].append(row)
            one, two = row["1 threads"], row["2 threads"]
            print(f"{row['dtype']:8} {name:20} forward {one['forward_ms']:.2f} -> {two['forward_ms']:.2f} ms, "
                  f"backward {one['backward_ms']:.2f} -> {two['backward_ms']:.2f} ms (1 -> 2 threads)")  # fmt: skip
    if args.output:
        args.output.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
