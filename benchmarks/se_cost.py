"""What SE itself costs in each cell of the matrix: every preset's SE variant against the plain preset, one process,
steps interleaved (issue 28's bar: an SE variant at most 5% behind its plain preset).

The matrix times each row in its own worker process against the torchvision twin, so the SE cost it shows (the
plain row's ratio over the SE row's) carries two processes' run-to-run spread: neighbouring cells read from -11%
to +12%. Here both models live in one process, one thread, every step timed by this process's CPU time, the two
in turn with the order reversed every other round; SE cost = the median over rounds of ``SE seconds / plain
seconds - 1``. Training steps are the matrix's (Adam, cross-entropy, under bf16 autocast for bf16), with glibc
tuned as ``sedensenet train`` tunes it; inference is eval mode under ``torch.inference_mode``.

    python benchmarks/se_cost.py --output benchmarks/results/se_cost-2026-12-07.json
    python benchmarks/se_cost.py --only 'bc100 .* train' --rounds 7
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import adam_step, infer_step, interleaved_cpu_seconds, median_ratio  # noqa: E402
from matrix import NUM_CLASSES, cells, one_thread_result  # noqa: E402

from sedensenet import create_model  # noqa: E402
from sedensenet.inference import tune_malloc  # noqa: E402


def measure(plain: str, se: str, size: int, batch: int, precision: str, work: str, rounds: int) -> dict:
    """Seconds per step of the plain preset and its SE variant, interleaved, and SE's cost."""
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, NUM_CLASSES, (batch,))
    bf16 = precision == "bf16"
    steps = {}
    for name in (plain, se):
        model = create_model(name, num_classes=NUM_CLASSES, memory_efficient=work == "train memory-efficient")
        if work == "infer":
            steps[name] = infer_step(model.eval(), x, bf16)
        else:
            steps[name] = adam_step(model.train(), x, y, bf16)
    seconds = interleaved_cpu_seconds(steps, rounds)
    return {"plain": plain, "se": se, "size": size, "batch": batch, "precision": precision, "work": work,
            "cpu_seconds": seconds, "se_cost": median_ratio(seconds[se], seconds[plain]) - 1}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", default="", help="cells whose matrix id matches this regex (e.g. 'bc100 .* train')")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = one_thread_result("se_cost.py", argv, args.rounds)
    result["malloc"] = tune_malloc()
    for cid, fam, size, batch, precision, work in cells(quick=False, only=args.only):
        case = {"cell": cid, **measure(fam.plain, fam.se, size, batch, precision, work, args.rounds)}
        result["cases"].append(case)
        print(f"{cid}: SE cost {case['se_cost']:+.1%}", flush=True)
        if args.output:
            args.output.write_text(json.dumps(result, indent=1))
    worst = max(result["cases"], key=lambda c: c["se_cost"], default=None)
    if worst is not None:
        over = [c["cell"] for c in result["cases"] if c["se_cost"] > 0.05]
        print(f"largest SE cost {worst['se_cost']:+.1%} ({worst['cell']}); over 5%: {over or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
