"""How fast can a DenseNet's forward (or training step) be on this CPU? Every convolution of the network, timed
alone at oneDNN's speed in float32 and in bf16 (channels_last, the fast path's layout), summed, beside the twin's
and our whole forward (or training step).

The sum of a network's convolutions (the same shapes, the same calls the fast path makes) is a floor under any
exact forward pass that keeps the convolutions as they are: if it is above a target, no rewrite of the rest (batch
norm, concatenation, memory traffic) can reach the target. With ``--work train`` each convolution is timed with its
backward (the input's gradient, except for the stem's, and the weight's), and the whole steps are the matrix's
(forward, cross-entropy, backward, Adam). Shapes are recorded with forward hooks on our model's convolutions, so
pooling-first transitions count at their pooled size.

    python benchmarks/conv_bound.py --model densenet121 --size 224 --batch 32 --threads 2
    python benchmarks/conv_bound.py --threads 1 --clock cpu      # on a machine shared with other work
    python benchmarks/conv_bound.py --work train --model densenet121 --size 128 --batch 32 --threads 1 --clock cpu
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _worker import twin  # noqa: E402
from bench import adam_step, machine  # noqa: E402
from matrix import NUM_CLASSES, bf16_units  # noqa: E402

from sedensenet import create_model  # noqa: E402

aten = torch.ops.aten


def conv_calls(model: torch.nn.Module, x: torch.Tensor) -> list[dict[str, Any]]:
    """Every convolution one forward of the fast path calls: input shape, weight shape, stride and padding.

    Recorded with hooks, which send the fast path to the reference modules: the same convolutions, except that
    the fast path pools before a transition's 1x1 convolution, so those are recorded at the pooled size.
    """
    calls: list[dict[str, Any]] = []

    def hook(name: str) -> Any:
        def record(module: torch.nn.Conv2d, args: tuple[torch.Tensor, ...]) -> None:
            shape = list(args[0].shape)
            if ".transition" in name:  # 2x2 average pooling first on the fast path
                shape[2:] = [shape[2] // 2, shape[3] // 2]
            calls.append({"input": shape, "weight": list(module.weight.shape),
                          "stride": module.stride, "padding": module.padding})  # fmt: skip

        return record

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return calls


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCK["wall"]


def best_of(fn: Any, reps: int) -> float:
    """The fastest of ``reps`` runs after a warm-up (oneDNN builds its kernels on the first call)."""
    fn()
    best = float("inf")
    for _ in range(reps):
        start = clock()
        fn()
        best = min(best, clock() - start)
    return best


def conv_call(c: dict[str, Any], dtype: torch.dtype, train: bool, input_grad: bool) -> tuple[Any, float]:
    """(a function that runs the call, its GFLOP): the forward, and with ``train`` its backward as well."""
    x = torch.randn(c["input"]).to(dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(c["weight"]).to(dtype)
    stride, padding = list(c["stride"]), list(c["padding"])
    out = F.conv2d(x, w, stride=stride, padding=padding)
    gflop = 2 * out.numel() * w[0].numel() / 1e9
    if not train:
        return lambda: F.conv2d(x, w, stride=stride, padding=padding), gflop
    grad, mask = torch.randn_like(out), [input_grad, True, False]

    def step() -> None:
        F.conv2d(x, w, stride=stride, padding=padding)
        aten.convolution_backward(grad, x, w, None, stride, padding, [1, 1], False, [0, 0], 1, mask)

    return step, gflop * (1 + sum(mask))


def conv_seconds(calls: list[dict[str, Any]], dtype: torch.dtype, reps: int, train: bool) -> tuple[float, float]:
    """(seconds, GFLOP) of all the calls, each timed alone (best of ``reps``) in ``dtype``, channels_last.

    ``train``: each call's forward and backward, as a training step runs them; the first call (the stem, whose
    input is the image) computes only its weight's gradient.
    """
    total, flops = 0.0, 0.0
    for i, c in enumerate(calls):
        run, gflop = conv_call(c, dtype, train, input_grad=i > 0)
        total += best_of(run, reps)
        flops += gflop
    return total, flops


def model_seconds(model: torch.nn.Module, x: torch.Tensor, bf16: bool, reps: int, train: bool) -> float:
    """The fastest of ``reps`` forwards (``train``: training steps as the matrix times them, Adam included)."""
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    if not train:

        def run() -> None:
            with torch.inference_mode(), amp:
                model(x)

        return best_of(run, reps)
    model.train()
    return best_of(adam_step(model, x, torch.zeros(x.shape[0], dtype=torch.long), bf16), reps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="densenet121")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--work", choices=("infer", "train"), default="infer")
    parser.add_argument("--clock", choices=tuple(CLOCK), default="wall", help="cpu: this process's CPU time "
                        "(with --threads 1, steady on a machine shared with other work)")  # fmt: skip
    parser.add_argument("--output", type=Path, default=None, help="raw results (.json)")
    args = parser.parse_args(argv)
    global clock
    clock = CLOCK[args.clock]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    train = args.work == "train"
    ours = create_model(args.model, num_classes=NUM_CLASSES).train(train)
    tv = twin(args.model, num_classes=NUM_CLASSES, memory_efficient=False).train(train)
    x = torch.randn(args.batch, 3, args.size, args.size)
    calls = conv_calls(ours, x)
    whole = "train_step" if train else "forward"
    result: dict[str, Any] = {
        "machine": machine(), "bf16_units": bf16_units(), "torch": torch.__version__, "threads": args.threads,
        "work": args.work, "model": args.model, "size": args.size, "batch": args.batch, "convolutions": len(calls),
        "clock": args.clock,
        "command": " ".join(["python", "benchmarks/conv_bound.py", *(argv if argv is not None else sys.argv[1:])]),
    }  # fmt: skip
    for name, dtype in (("float32", torch.float32), ("bf16", torch.bfloat16)):
        seconds, gflop = conv_seconds(calls, dtype, args.reps, train)
        result[f"conv_seconds_{name}"], result["conv_gflop"] = seconds, gflop
        result[f"conv_gflops_per_s_{name}"] = gflop / seconds
        bf16 = dtype == torch.bfloat16
        result[f"twin_{whole}_{name}"] = model_seconds(tv, x, bf16, args.reps, train)
        result[f"ours_{whole}_{name}"] = model_seconds(ours, x, bf16, args.reps, train)
    for name in ("float32", "bf16"):
        twin_s, conv_s, ours_s = (result[f"{k}_{name}"] for k in (f"twin_{whole}", "conv_seconds", f"ours_{whole}"))
        print(f"{name}: convolutions alone {conv_s:.3f} s ({result[f'conv_gflops_per_s_{name}']:.0f} GFLOP/s), "
              f"twin {whole} {twin_s:.3f} s, ours {ours_s:.3f} s ({twin_s / ours_s:.2f}x the twin); "
              f"the convolutions alone would be {twin_s / conv_s:.2f}x the twin")  # fmt: skip
    if args.output:
        args.output.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
