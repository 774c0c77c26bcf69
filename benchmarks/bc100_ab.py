"""DenseNet-BC-100 bf16 training before and after issue 28's changes, against its torchvision twin, in ONE process.

Five models step in turn (order reversed every other round), each step timed by this process's CPU time on one
thread, which a machine shared with other work disturbs far less than wall time: the twin, ours as it was
(the reference block in channels_last, SE squeezing with plain ``mean``), ours now, and the same two for
``se_densenet_bc_100``. "Before" is switched in by replacing two functions of ``sedensenet.models.fast`` for its
steps only.

    python benchmarks/bc100_ab.py --size 32 --batch 64 --rounds 6 --output benchmarks/results/bc100_ab_32.json
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
from bench import adam_step, interleaved_cpu_seconds, median_ratio  # noqa: E402

from sedensenet import create_model  # noqa: E402
from sedensenet.models import fast  # noqa: E402

_APPLIES, _MEAN = fast.block_applies, fast.spatial_mean


def _old_block_applies(block: torch.nn.Module, x: torch.Tensor) -> bool:
    """The guard as it was: default training always took the reference block."""
    if block.training and not next(iter(block.values())).memory_efficient:
        return False
    return _APPLIES(block, x)


def _old_mean(x: torch.Tensor, *, enabled: bool = True) -> torch.Tensor:
    return x.mean((2, 3), keepdim=True)


def make_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, before: bool) -> Callable[[], None]:
    """One Adam training step under bf16 autocast; ``before`` runs it with the old guard and squeeze."""
    inner = adam_step(model, x, y, bf16=True)

    def step() -> None:
        if before:
            fast.block_applies, fast.spatial_mean = _old_block_applies, _old_mean
        try:
            inner()
        finally:
            fast.block_applies, fast.spatial_mean = _APPLIES, _MEAN

    return step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, y = torch.randn(args.batch, 3, args.size, args.size), torch.randint(0, 10, (args.batch,))
    steps = {
        "twin": make_step(twin("densenet_bc_100", num_classes=10, memory_efficient=False), x, y, before=False),
        "before": make_step(create_model("densenet_bc_100", num_classes=10), x, y, before=True),
        "after": make_step(create_model("densenet_bc_100", num_classes=10), x, y, before=False),
        "se before": make_step(create_model("se_densenet_bc_100", num_classes=10), x, y, before=True),
        "se after": make_step(create_model("se_densenet_bc_100", num_classes=10), x, y, before=False),
    }
    load = Path("/proc/loadavg").read_text().split()[:3]
    seconds = interleaved_cpu_seconds(steps, args.rounds)
    ratios = {n: median_ratio(seconds["twin"], seconds[n]) for n in steps}
    result = {"size": args.size, "batch": args.batch, "rounds": args.rounds, "threads": 1, "clock": "cpu",
              "loadavg_before": load, "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
              "cpu_seconds": seconds, "ratio_to_twin": ratios}  # fmt: skip
    text = json.dumps(result, indent=1)
    if args.output:
        args.output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
