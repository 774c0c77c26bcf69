"""Default training's dense block before and after it became one autograd node that keeps its activations (issue 28).

"before" is what default training ran until this change, the reference layers' modules with the features
concatenated one layer at a time through autograd (put back for its steps only); "after" is the kept block
(``fast_memeff.train_block(keep=True)``): norm1's statistics once per channel, and a backward that adds
``a * d_z`` into one gradient buffer in place instead of computing BatchNorm's whole input gradient and adding it
to the concatenation's. The torchvision twin runs beside them. One process, steps interleaved, the order
reversed every other round; a ratio is the median over rounds.

    python benchmarks/kept_block.py --threads 1 --output benchmarks/results/kept_block-1t-2026-12-07.json
    python benchmarks/kept_block.py --threads 2 --clock wall --output benchmarks/results/kept_block-2t-2026-12-07.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _worker import twin  # noqa: E402
from bench import adam_step, interleaved_cpu_seconds, machine, median_ratio, patched  # noqa: E402
from matrix import NUM_CLASSES, bf16_units  # noqa: E402

from sedensenet import create_model  # noqa: E402
from sedensenet.inference import tune_malloc  # noqa: E402
from sedensenet.models import fast  # noqa: E402

CASES = (("densenet_bc_100", 32, 64), ("densenet_bc_100", 64, 32), ("densenet121", 128, 32))


def _old_forward_block(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    if block.training and not next(iter(block.values())).memory_efficient:
        return fast._incremental_block(block, x)  # (what a GPU still runs)
    return fast.fast_memeff.train_block(block, x) if block.training else fast.fast_infer.eval_block(block, x)


def make_step(model: torch.nn.Module, x: torch.Tensor, bf16: bool, before: bool) -> Callable[[], None]:
    step = adam_step(model, x, torch.zeros(x.shape[0], dtype=torch.long), bf16)
    return patched(step, fast, "forward_block", _old_forward_block) if before else step


def measure(name: str, size: int, batch: int, precision: str, rounds: int, clock: str) -> dict:
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size)
    bf16 = precision == "bf16"
    steps = {
        "torchvision": adam_step(twin(name, num_classes=NUM_CLASSES, memory_efficient=False), x,
                                 torch.zeros(batch, dtype=torch.long), bf16),
        "before": make_step(create_model(name, num_classes=NUM_CLASSES), x, bf16, before=True),
        "after": make_step(create_model(name, num_classes=NUM_CLASSES), x, bf16, before=False),
    }  # fmt: skip
    seconds = interleaved_cpu_seconds(steps, rounds, clock)
    return {
        "model": name, "size": size, "batch": batch, "precision": precision, "seconds": seconds,
        "before_vs_torchvision": median_ratio(seconds["torchvision"], seconds["before"]),
        "after_vs_torchvision": median_ratio(seconds["torchvision"], seconds["after"]),
        "after_over_before_speed": median_ratio(seconds["before"], seconds["after"]),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
        "command": " ".join(["python", "benchmarks/kept_block.py", *(argv if argv is not None else sys.argv[1:])]),
        "cases": [],
    }  # fmt: skip
    for name, size, batch in CASES:
        for precision in ("float32", "bf16"):
            if args.only not in f"{name} {size}/{batch} {precision}":
                continue
            case = measure(name, size, batch, precision, args.rounds, args.clock)
            result["cases"].append(case)
            print(f"{name} {size}/{batch} {precision}: before {case['before_vs_torchvision']:.2f}x, after "
                  f"{case['after_vs_torchvision']:.2f}x torchvision ({case['after_over_before_speed']:.3f}x)",
                  flush=True)  # fmt: skip
            if args.output:
                args.output.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
