"""Where a training step's time goes: ``torch.profiler`` over two steps of a preset and of its torchvision twin.

Prints (and with ``--output`` writes) the operators by self CPU time for each model, under bf16 autocast unless
``--precision float32``: what the issue-28 notes on batch norm, concatenation and the convolutions quote.

    python benchmarks/profile_step.py --model densenet_bc_100 --size 32 --batch 64 --threads 1
    python benchmarks/profile_step.py --model densenet_bc_100 --size 32 --batch 64 --threads 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import profile

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _worker import twin  # noqa: E402
from bench import adam_step, machine  # noqa: E402
from matrix import NUM_CLASSES  # noqa: E402

from sedensenet import create_model  # noqa: E402


def profile_steps(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool, rows: int) -> str:
    """The operator table (self CPU time) of two Adam training steps, after two unprofiled ones."""
    step = adam_step(model, x, y, bf16)
    step(), step()
    with profile() as prof:
        step(), step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="densenet_bc_100")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", choices=("bf16", "float32"), default="bf16")
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, NUM_CLASSES, (args.batch,))
    command = " ".join(["python", "benchmarks/profile_step.py", *(argv if argv is not None else sys.argv[1:])])
    parts = [f"# {command}\n# {machine()}; {args.threads} thread(s), {args.precision}\n"]
    models = {
        "torchvision twin": twin(args.model, num_classes=NUM_CLASSES, memory_efficient=False),
        "ours": create_model(args.model, num_classes=NUM_CLASSES),
    }
    for name, model in models.items():
        table = profile_steps(model, x, y, args.precision == "bf16", args.rows)
        parts.append(f"## {name}, two steps\n{table}")
    text = "\n".join(parts)
    print(text)
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
