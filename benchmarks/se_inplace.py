"""SE's cost in inference before and after SE layers right after a dense block scale its output in place (issue 28).

Rows per case: the plain preset, its SE variant as before (``x * gate``, a new tensor per SE layer: the old
``features(x)`` swapped back in for its steps only) and as now (``x.mul_(gate)`` on the block's fresh output). One
process, one thread, every forward timed by this process's CPU time, the rows in turn with the order reversed
every other round; SE cost = the median over rounds of ``SE seconds / plain seconds - 1``.

    python benchmarks/se_inplace.py --output benchmarks/results/se_inplace-2026-12-07.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import infer_step, interleaved_cpu_seconds, median_ratio, patched  # noqa: E402
from matrix import NUM_CLASSES, one_thread_result  # noqa: E402

from sedensenet import create_model  # noqa: E402
from sedensenet.models import fast  # noqa: E402

CASES = (
    # (plain, SE variant, image size, batch): the matrix's inference cells, and the tutorial's model (SE in the head)
    ("densenet121", "se_densenet121", 224, 32),
    ("densenet169", "se_densenet169", 224, 32),
    ("densenet_bc_100", "se_densenet_bc_100", 32, 64),
    ("densenet121", "keras_se_densenet121", 224, 32),
)


def make_forward(model: torch.nn.Module, x: torch.Tensor, bf16: bool, before: bool) -> Callable[[], None]:
    """One inference batch; ``before`` runs ``model.features`` as a plain ``nn.Sequential``."""
    model.eval()
    step = infer_step(model, x, bf16)
    return patched(step, fast, "_features", lambda features, x: features(x)) if before else step


def measure(plain: str, se: str, size: int, batch: int, precision: str, rounds: int) -> dict:
    """Seconds per batch of the three rows, interleaved, and SE's cost before and after."""
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size)
    bf16 = precision == "bf16"
    se_model = create_model(se, num_classes=NUM_CLASSES)
    rows = {
        "plain": make_forward(create_model(plain, num_classes=NUM_CLASSES), x, bf16, False),
        "se before": make_forward(se_model, x, bf16, True),
        "se after": make_forward(se_model, x, bf16, False),
    }
    seconds = interleaved_cpu_seconds(rows, rounds)

    def cost(name: str) -> float:
        return median_ratio(seconds[name], seconds["plain"]) - 1

    return {"plain": plain, "se": se, "size": size, "batch": batch, "precision": precision, "cpu_seconds": seconds,
            "se_cost_before": cost("se before"), "se_cost_after": cost("se after")}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--only", default="", help="cases whose SE preset contains this")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = one_thread_result("se_inplace.py", argv, args.rounds)
    for plain, se, size, batch in CASES:
        if args.only not in se:
            continue
        for precision in ("float32", "bf16"):
            case = measure(plain, se, size, batch, precision, args.rounds)
            result["cases"].append(case)
            print(f"{se} {size}/{batch} {precision}: SE cost {case['se_cost_before']:+.1%} -> "
                  f"{case['se_cost_after']:+.1%}", flush=True)  # fmt: skip
            if args.output:
                args.output.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
