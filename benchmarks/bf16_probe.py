"""A quick in-process probe: our DenseNet-121 + SE in float32 against bf16 autocast, steps interleaved.

Not a replacement for ``bench.py`` (no peers, one process, no peak memory): a ratio of our own two precisions
that survives a busy machine, since each round times one float32 and one bf16 step back to back.

    python benchmarks/bf16_probe.py --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from sedensenet import create_model
from sedensenet.inference import tune_malloc


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, train: bool,
          bf16: bool) -> float:  # fmt: skip
    """Seconds of one training step (or one inference batch), in float32 or under bf16 autocast."""
    t = time.perf_counter()
    if train:
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    else:
        model.eval()
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            model(x)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    tune_malloc()
    print(f"load average {os.getloadavg()[0]:.1f}; torch {torch.__version__}")
    for task, size, batch, me in (("train", 128, 32, False), ("train", 128, 32, True), ("infer", 224, 32, False)):
        torch.manual_seed(0)
        model = create_model("keras_se_densenet121", num_classes=2, memory_efficient=me)
        opt = torch.optim.Adam(model.parameters())
        x, y = torch.randn(batch, 3, size, size), torch.randint(0, 2, (batch,))
        train = task == "train"
        _step(model, opt, x, y, train, False), _step(model, opt, x, y, train, True)  # warm-up
        ratios, t32, t16 = [], [], []
        for r in range(args.rounds):  # alternate which precision goes first
            if r % 2 == 0:
                a = _step(model, opt, x, y, train, False)
                b = _step(model, opt, x, y, train, True)
            else:
                b = _step(model, opt, x, y, train, True)
                a = _step(model, opt, x, y, train, False)
            t32.append(a), t16.append(b), ratios.append(a / b)
        print(
            f"{task} {size}/{batch}{' memory_efficient' if me else ''}: bf16 {statistics.median(ratios):.2f}x fp32 "
            f"(rounds {', '.join(f'{v:.2f}' for v in ratios)}; fp32 {batch / statistics.median(t32):.1f} img/s, "
            f"bf16 {batch / statistics.median(t16):.1f} img/s)",
            flush=True,
        )
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
