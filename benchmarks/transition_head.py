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

import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import before_after  # noqa: E402
from bench import adam_step, patched  # noqa: E402

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


def main(argv: list[str] | None = None) -> int:
    return before_after.main(argv, __doc__, "transition_head.py", CASES, make_step)


if __name__ == "__main__":
    sys.exit(main())
