"""The shared part of the one-process before/after scripts (``kept_block.py``, ``transition_head.py``): for each
(model, size, batch) and precision, a training step of the torchvision twin, of ours with the old code put back
("before") and of ours as it is ("after"), interleaved in one process; ratios are medians over rounds."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _worker import twin  # noqa: E402
from bench import adam_step, interleaved_cpu_seconds, machine, median_ratio  # noqa: E402
from matrix import NUM_CLASSES, bf16_units  # noqa: E402

from sedensenet import create_model  # noqa: E402
from sedensenet.inference import tune_malloc  # noqa: E402

MakeStep = Callable[[torch.nn.Module, torch.Tensor, bool, bool], Callable[[], None]]
"""``(model, images, bf16, before) -> step``: ours with the old code put back when ``before``."""


def measure(name: str, size: int, batch: int, precision: str, rounds: int, clock: str, make_step: MakeStep) -> dict:
    """One case: seconds per step of the twin, "before" and "after", and the three ratios."""
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size)
    bf16 = precision == "bf16"
    labels = torch.zeros(batch, dtype=torch.long)
    steps = {
        "torchvision": adam_step(twin(name, num_classes=NUM_CLASSES, memory_efficient=False), x, labels, bf16),
        "before": make_step(create_model(name, num_classes=NUM_CLASSES), x, bf16, True),
        "after": make_step(create_model(name, num_classes=NUM_CLASSES), x, bf16, False),
    }
    seconds = interleaved_cpu_seconds(steps, rounds, clock)
    return {
        "model": name, "size": size, "batch": batch, "precision": precision, "seconds": seconds,
        "before_vs_torchvision": median_ratio(seconds["torchvision"], seconds["before"]),
        "after_vs_torchvision": median_ratio(seconds["torchvision"], seconds["after"]),
        "after_over_before_speed": median_ratio(seconds["before"], seconds["after"]),
    }  # fmt: skip


def main(argv: list[str] | None, doc: str, script: str, cases: Sequence[tuple[str, int, int]],
         make_step: MakeStep) -> int:  # fmt: skip
    """The command line of a before/after script (``--threads``, ``--clock``, ``--rounds``, ``--only``,
    ``--output``): every case in float32 and bf16, printed and written after each."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", default="", help="cases whose 'model size/batch precision' contains this")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result: dict = {
        "machine": machine(), "bf16_units": bf16_units(), "threads": args.threads, "clock": args.clock,
        "rounds": args.rounds, "malloc": tune_malloc(),
        "command": " ".join(["python", f"benchmarks/{script}", *(argv if argv is not None else sys.argv[1:])]),
        "cases": [],
    }  # fmt: skip
    for name, size, batch in cases:
        for precision in ("float32", "bf16"):
            if args.only not in f"{name} {size}/{batch} {precision}":
                continue
            case = measure(name, size, batch, precision, args.rounds, args.clock, make_step)
            result["cases"].append(case)
            print(f"{name} {size}/{batch} {precision}: before {case['before_vs_torchvision']:.2f}x, after "
                  f"{case['after_vs_torchvision']:.2f}x torchvision ({case['after_over_before_speed']:.3f}x)",
                  flush=True)  # fmt: skip
            if args.output:
                args.output.write_text(json.dumps(result, indent=1))
    return 0
