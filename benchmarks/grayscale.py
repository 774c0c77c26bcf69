"""One-channel images (grayscale: X-rays, CT, the built-in digits) on CPU, before and after the fast path gave them
channels_last strides (issue 28).

``x.contiguous(memory_format=torch.channels_last)`` leaves a ``(B, 1, H, W)`` tensor's NCHW strides as they are
(for one channel both layouts are valid), so the stem wrote NCHW and the whole network ran NCHW: no channels_last
convolutions, and default training on the reference block. "before" swaps the old conversion back in for its
steps only. One process, one thread, every step timed by this process's CPU time, the rows in turn with the
order reversed every other round; the ratio is the median of per-round ``before / after``.

    python benchmarks/grayscale.py --output benchmarks/results/grayscale-2026-12-07.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import adam_step, infer_step, interleaved_cpu_seconds, median_ratio, patched  # noqa: E402
from matrix import one_thread_result  # noqa: E402

from sedensenet import create_model  # noqa: E402
from sedensenet.models import fast  # noqa: E402

CASES = (
    # (model, image size, batch, work): the main job's model and size, and DenseNet-121 on a chest X-ray's 224 px
    ("se_densenet_bc_100", 16, 64, "train"),
    ("se_densenet_bc_100", 16, 64, "infer"),
    ("densenet121", 224, 16, "train"),
    ("densenet121", 224, 32, "infer"),
)


def _old_channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def make_step(model: torch.nn.Module, work: str, x: torch.Tensor, bf16: bool, before: bool) -> Callable[[], None]:
    """One training step (Adam) or one inference batch, with the old conversion when ``before``."""
    model.train(work == "train")
    if work == "train":
        step = adam_step(model, x, torch.zeros(x.shape[0], dtype=torch.long), bf16)
    else:
        step = infer_step(model, x, bf16)
    return patched(step, fast, "channels_last", _old_channels_last) if before else step


def measure(name: str, size: int, batch: int, work: str, precision: str, rounds: int) -> dict:
    """Seconds per step of both rows, interleaved, and the median per-round speed-up."""
    torch.manual_seed(0)
    x = torch.randn(batch, 1, size, size)
    bf16 = precision == "bf16"
    steps = {
        label: make_step(create_model(name, num_classes=2, in_chans=1), work, x, bf16, before)
        for label, before in (("before", True), ("after", False))
    }
    seconds = interleaved_cpu_seconds(steps, rounds)
    speedup = median_ratio(seconds["before"], seconds["after"])
    return {"model": name, "size": size, "batch": batch, "work": work, "precision": precision,
            "cpu_seconds": seconds, "after_over_before_speed": speedup}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = one_thread_result("grayscale.py", argv, args.rounds)
    for name, size, batch, work in CASES:
        for precision in ("float32", "bf16"):
            case = measure(name, size, batch, work, precision, args.rounds)
            result["cases"].append(case)
            print(f"{name} {size}/{batch} {work} {precision}: {case['after_over_before_speed']:.2f}x", flush=True)
            if args.output:
                args.output.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
