"""Default training's transitions and classifier pooling before and after their CPU backward was rebuilt (issue 28).

"before": a transition ran its modules (BatchNorm, ReLU, average pooling: ``avg_pool2d_backward`` zero-fills its
output and adds into it, then ReLU's backward writes a new tensor), and the classifier's ``adaptive_avg_pool2d``
returned an NCHW gradient that the last ReLU's backward read against its channels_last output (a strided path).
"after": each transition is one BN-ReLU-pool node keeping its activation, whose pooling backward is one broadcast
copy and whose ReLU backward runs in place, and the classifier's pooling returns its gradient as a broadcast
view (``fast.global_pool``). Both sides compute the transitions' convolutions alike (in float32 under bf16 where
``fast_storage.float32_convolutions`` says so). The torchvision twin runs beside them. One process, steps
interleaved, the order reversed every other round; a ratio is the median over rounds.

    python benchmarks/transition_head.py --threads 1 --output benchmarks/results/transition_head-1t-2026-12-07.json
"""

from __future__ import annotations

import argparse
import json
import sys
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
from sedensenet.models import fast  # noqa: E402

CASES = (("densenet_bc_100", 32, 64), ("densenet_bc_100", 64, 32), ("densenet121", 128, 32), ("densenet121", 224, 16))


def _old_forward_transition(transition: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    if transition.memory_efficient and fast._fused_transition(transition, x):
        return fast.fast_memeff.transition_forward(transition, x)
    pooled = transition.pool(transition.relu(fast.fast_norm.batch_norm(transition.norm, x)))
    return fast.convolve(transition.conv, pooled)  # (in float32 where bf16 convolutions are: as "after" does)


def make_step(model: torch.nn.Module, x: torch.Tensor, bf16: bool, before: bool) -> Callable[[], None]:
    step = adam_step(model, x, torch.zeros(x.shape[0], dtype=torch.long), bf16)
    if not before:
        return step
    step = patched(step, fast, "forward_transition", _old_forward_transition)
    return patched(step, fast, "global_pool", lambda t: F.adaptive_avg_pool2d(t, 1))


def measure(name: str, size: int, batch: int, precision: str, rounds: int, clock: str) -> dict:
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size)
    bf16 = precision == "bf16"
    labels = torch.zeros(batch, dtype=torch.long)
    steps = {
        "torchvision": adam_step(twin(name, num_classes=NUM_CLASSES, memory_efficient=False), x, labels, bf16),
        "before": make_step(create_model(name, num_classes=NUM_CLASSES), x, bf16, before=True),
        "after": make_step(create_model(name, num_classes=NUM_CLASSES), x, bf16, before=False),
    }
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
        "command": " ".join(["python", "benchmarks/transition_head.py", *(argv if argv is not None else sys.argv[1:])]),
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
