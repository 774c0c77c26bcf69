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

import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import before_after  # noqa: E402
from bench import adam_step, patched  # noqa: E402

from sedensenet.models import fast  # noqa: E402

CASES = (("densenet_bc_100", 32, 64), ("densenet_bc_100", 64, 32), ("densenet121", 128, 32))


def _old_forward_block(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    if block.training and not next(iter(block.values())).memory_efficient:
        return fast._incremental_block(block, x)  # (what a GPU still runs)
    return fast.fast_memeff.train_block(block, x) if block.training else fast.fast_infer.eval_block(block, x)


def make_step(model: torch.nn.Module, x: torch.Tensor, bf16: bool, before: bool) -> Callable[[], None]:
    step = adam_step(model, x, torch.zeros(x.shape[0], dtype=torch.long), bf16)
    return patched(step, fast, "forward_block", _old_forward_block) if before else step


def main(argv: list[str] | None = None) -> int:
    return before_after.main(argv, __doc__, "kept_block.py", CASES, make_step)


if __name__ == "__main__":
    sys.exit(main())
