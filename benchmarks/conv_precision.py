"""bf16 convolutions computed in bf16 or in float32 on this CPU: each of DenseNet's convolutions alone, and whole
training steps under bf16 autocast (issue 28).

``--work convs``: every distinct convolution of a preset (shape, batch), forward and backward (input and weight
gradients), timed by oneDNN in bf16 and in float32 on the same bf16 values, and the two conversions the float32
route adds (the input to float32, the result back to bf16). ``--work train`` (the default): one training step of
each preset under bf16 autocast with the fast paths computing convolutions in float32
(``fast_storage.BF16_CONVOLUTIONS_IN_FLOAT32 = True``) and in bf16 (``False``), the torchvision twin beside
them. One process, steps interleaved, the order reversed every other round; a ratio is the median over rounds.

    python benchmarks/conv_precision.py --work convs --output benchmarks/results/conv_precision-convs-2026-12-07.json
    python benchmarks/conv_precision.py --threads 1 --output benchmarks/results/conv_precision-train-1t-2026-12-07.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _worker import twin  # noqa: E402
from bench import adam_step, interleaved_cpu_seconds, machine, median_ratio, patched  # noqa: E402
from matrix import NUM_CLASSES, bf16_units  # noqa: E402

from sedensenet import create_model  # noqa: E402
from sedensenet.inference import tune_malloc  # noqa: E402
from sedensenet.models import fast_storage  # noqa: E402
from sedensenet.models.cpu import slow_bf16_units  # noqa: E402

CASES = (("densenet_bc_100", 32, 64), ("densenet_bc_100", 64, 32), ("densenet121", 128, 32), ("densenet121", 224, 16))


def _median_ms(fn: Callable[[], object], reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def conv_shapes(name: str, size: int, batch: int) -> list[tuple[tuple[int, ...], torch.nn.Conv2d]]:
    """Every distinct (input shape, convolution) of one forward of the preset, in the order met."""
    model = create_model(name, num_classes=NUM_CLASSES).eval()
    seen: dict[tuple, tuple[tuple[int, ...], torch.nn.Conv2d]] = {}

    def hook(module: torch.nn.Module, args: tuple, _out: torch.Tensor) -> None:
        key = (tuple(args[0].shape), module.out_channels, module.kernel_size, module.stride, module.padding)
        seen.setdefault(key, (tuple(args[0].shape), module))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(torch.randn(batch, 3, size, size))  # hooks: the reference modules run, each convolution seen
    for h in handles:
        h.remove()
    return list(seen.values())


def _conv_calls(
    conv: torch.nn.Conv2d, x: torch.Tensor, w: torch.Tensor, grad: torch.Tensor
) -> tuple[Callable[[], object], Callable[[], object]]:
    """The convolution's forward, and its backward (input and weight gradients), on these tensors."""
    stride, padding = list(conv.stride), list(conv.padding)
    return (
        lambda: F.conv2d(x, w, None, stride, padding),
        lambda: torch.ops.aten.convolution_backward(
            grad, x, w, None, stride, padding, [1, 1], False, [0, 0], 1, [True, True, False]
        ),
    )


def time_convs(name: str, size: int, batch: int, reps: int) -> list[dict]:
    rows = []
    for shape, conv in conv_shapes(name, size, batch):
        x = torch.randn(shape).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        w = conv.weight.detach().to(torch.bfloat16)
        grad = F.conv2d(x, w, None, conv.stride, conv.padding).contiguous(memory_format=torch.channels_last)
        row = {"input": list(shape), "out_channels": conv.out_channels, "kernel": list(conv.kernel_size)}
        for label, dtype in (("bf16", torch.bfloat16), ("float32", torch.float32)):
            forward, backward = _conv_calls(conv, x.to(dtype), w.to(dtype), grad.to(dtype))
            row[f"forward_{label}_ms"] = _median_ms(forward, reps)
            row[f"backward_{label}_ms"] = _median_ms(backward, reps)
        row["input_to_float32_ms"] = _median_ms(x.float, reps)
        row["output_to_bf16_ms"] = _median_ms(grad.float().bfloat16, reps)
        rows.append(row)
        print(f"{name} {size}/{batch} {shape} -> {conv.out_channels} k{conv.kernel_size[0]}: forward "
              f"{row['forward_bf16_ms']:.2f} bf16 / {row['forward_float32_ms']:.2f} float32 ms, backward "
              f"{row['backward_bf16_ms']:.2f} / {row['backward_float32_ms']:.2f} ms", flush=True)  # fmt: skip
    return rows


def time_training(name: str, size: int, batch: int, rounds: int, clock: str) -> dict:
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size)
    labels = torch.zeros(batch, dtype=torch.long)
    steps = {
        "torchvision": adam_step(twin(name, num_classes=NUM_CLASSES, memory_efficient=False), x, labels, True),
        "bf16_convs": patched(adam_step(create_model(name, num_classes=NUM_CLASSES), x, labels, True),
                              fast_storage, "BF16_CONVOLUTIONS_IN_FLOAT32", False),
        "float32_convs": patched(adam_step(create_model(name, num_classes=NUM_CLASSES), x, labels, True),
                                 fast_storage, "BF16_CONVOLUTIONS_IN_FLOAT32", True),
    }  # fmt: skip
    seconds = interleaved_cpu_seconds(steps, rounds, clock)
    return {
        "model": name, "size": size, "batch": batch, "precision": "bf16", "seconds": seconds,
        "bf16_convs_vs_torchvision": median_ratio(seconds["torchvision"], seconds["bf16_convs"]),
        "float32_convs_vs_torchvision": median_ratio(seconds["torchvision"], seconds["float32_convs"]),
        "float32_over_bf16_convs_speed": median_ratio(seconds["bf16_convs"], seconds["float32_convs"]),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", choices=("train", "convs"), default="train")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (train) or repetitions (convs)")
    parser.add_argument("--only", default="", help="cases whose 'model size/batch' contains this")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result: dict = {
        "machine": machine(), "bf16_units": bf16_units(), "slow_bf16_units": slow_bf16_units(),
        "threads": args.threads, "clock": args.clock, "rounds": args.rounds, "malloc": tune_malloc(),
        "command": " ".join(["python", "benchmarks/conv_precision.py", *(argv if argv is not None else sys.argv[1:])]),
        "cases": [],
    }  # fmt: skip
    for name, size, batch in CASES:
        if args.only not in f"{name} {size}/{batch}":
            continue
        if args.work == "convs":
            case = {"model": name, "size": size, "batch": batch, "convs": time_convs(name, size, batch, args.rounds)}
        else:
            case = time_training(name, size, batch, args.rounds, args.clock)
            print(f"{name} {size}/{batch} bf16 train: bf16 convolutions {case['bf16_convs_vs_torchvision']:.2f}x, "
                  f"float32 convolutions {case['float32_convs_vs_torchvision']:.2f}x torchvision "
                  f"({case['float32_over_bf16_convs_speed']:.3f}x)", flush=True)  # fmt: skip
        result["cases"].append(case)
        if args.output:
            args.output.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
