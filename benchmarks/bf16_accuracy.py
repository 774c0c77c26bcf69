"""Does bf16 training lose accuracy? Final validation accuracy, fp32 against bf16 autocast, over several seeds.

A small SE-DenseNet (per-block SE, memory-efficient mode: the shared-storage block with its hand-written
backward, the stem and transitions as fused nodes, all under autocast) is trained from scratch with the same
seeds, data order and initialisation in float32 (``--amp off``) and under bf16 autocast (what ``--amp auto``
picks on a CPU with bf16 matrix units), on two sets:

- ``gratings``: generated RGB images (``--size``, default 8x8: the whole check has to run in minutes on two
  cores) of a sinusoidal grating in one of 10 orientations 18 degrees apart, random phase, frequency and colour,
  under heavy Gaussian noise, meant to be hard enough that float32 validation accuracy lands between 70% and
  90% (``--noise`` sets it), 3,000 training and 1,000 validation images;
- ``digits``: scikit-learn's handwritten digits (what ``builtin:digits`` serves), 8x8, 1,437 / 360 split.

The check (issue 15): mean bf16 accuracy within 1 point of float32's, and within the seeds' spread.

    python benchmarks/bf16_accuracy.py --output benchmarks/results/bf16_accuracy.md
    python benchmarks/bf16_accuracy.py --sets gratings --noise 1.25 --path default   # the default fast path
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from sedensenet import DenseNet


def gratings(n: int, noise: float, seed: int, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` noisy oriented gratings (3, size, size) and their orientation class (0-9)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    theta = labels.float() * math.pi / 10 + (torch.rand(n, generator=g) - 0.5) * math.pi / 20
    freq = 0.8 + 0.6 * torch.rand(n, generator=g)
    phase = 2 * math.pi * torch.rand(n, generator=g)
    axis = torch.arange(float(size)) - (size - 1) / 2
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    proj = xs * theta.cos().view(-1, 1, 1) + ys * theta.sin().view(-1, 1, 1)
    img = torch.sin(proj * freq.view(-1, 1, 1) + phase.view(-1, 1, 1))
    colour = 0.5 + 0.5 * torch.rand(n, 3, 1, 1, generator=g)
    x = img.unsqueeze(1) * colour + noise * torch.randn(n, 3, size, size, generator=g)
    return x, labels


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = (x - x.mean()) / x.std()
    y = torch.tensor(d.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    val, train = order[:360], order[360:]
    return x[train], y[train], x[val], y[val]


def model(in_chans: int, seed: int, memory_efficient: bool = True) -> DenseNet:
    torch.manual_seed(seed)
    return DenseNet(
        growth_rate=8, block_config=(3, 3, 3), num_init_features=16, bn_size=4, stem="cifar", in_chans=in_chans,
        se_placement=("head", "block"), se_rd_channels=4, num_classes=10, memory_efficient=memory_efficient,
    )  # fmt: skip


def train_once(data: tuple[torch.Tensor, ...], seed: int, bf16: bool, epochs: int, batch: int, lr: float,
               memory_efficient: bool = True) -> float:  # fmt: skip
    """Train from scratch; the final epoch's validation accuracy (in %)."""
    xt, yt, xv, yv = data
    net = model(xt.shape[1], seed, memory_efficient)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(yt) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    for _ in range(epochs):
        net.train()
        order = torch.randperm(len(yt), generator=g)
        for i in range(0, len(yt) - batch + 1, batch):
            idx = order[i : i + batch]
            with amp:
                loss = F.cross_entropy(net(xt[idx]).float(), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    correct = 0
    with torch.inference_mode(), amp:
        for i in range(0, len(yv), 256):
            correct += int((net(xv[i : i + 256]).argmax(1) == yv[i : i + 256]).sum())
    return 100.0 * correct / len(yv)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="digits,gratings")
    parser.add_argument("--size", type=int, default=8, help="side of the generated gratings")
    parser.add_argument("--train", type=int, default=3000, help="generated training images")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--noise", type=float, default=1.25, help="noise std of the gratings (signal amplitude ~0.75)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--path", choices=("memory-efficient", "default"), default="memory-efficient",
        help="the training path: memory-efficient (shared storage) or the default fast path",
    )  # fmt: skip
    parser.add_argument("--output", type=Path, help="also write the markdown table here (and .json of raw results)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sets = {}
    for name in args.sets.split(","):
        if name == "gratings":
            xt, yt = gratings(args.train, args.noise, seed=1, size=args.size)
            xv, yv = gratings(1000, args.noise, seed=2, size=args.size)
            sets[name] = (xt, yt, xv, yv)
        elif name == "digits":
            sets[name] = digits()
        else:
            parser.error(f"--sets: unknown set {name!r}; choose gratings, digits")
    start, load0 = time.perf_counter(), os.getloadavg()[0]
    results: dict[str, dict[str, list[float]]] = {}
    for name, data in sets.items():
        results[name] = {"fp32": [], "bf16": []}
        for seed in range(args.seeds):
            for prec in ("fp32", "bf16"):
                t0 = time.perf_counter()
                acc = train_once(data, seed, prec == "bf16", args.epochs, 64, 3e-3, args.path == "memory-efficient")
                results[name][prec].append(acc)
                print(f"{name} seed {seed} {prec}: {acc:.2f}% ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    lines = [
        f"bf16 accuracy check: {args.seeds} seeds, {args.epochs} epochs, {args.path} path SE-DenseNet "
        f"(growth 8, blocks 3-3-3), AdamW one-cycle lr 3e-3, batch 64; gratings {args.size} px, noise "
        f"{args.noise}; torch {torch.__version__}; wall {(time.perf_counter() - start) / 60:.1f} min, "
        f"load {load0:.1f} at the start.",
        "",
        "| set | val images | fp32 mean (seeds) | bf16 mean (seeds) | bf16 - fp32 | fp32 seed spread "
        "| within 1 pt and spread |",
        "|---|---|---|---|---|---|---|",
    ]
    ok_all = True
    for name, r in results.items():
        f, b = r["fp32"], r["bf16"]
        diff = statistics.mean(b) - statistics.mean(f)
        spread = max(f) - min(f)
        ok = abs(diff) <= 1.0 and abs(diff) <= max(spread, max(b) - min(b))
        ok_all &= ok
        seeds = lambda v: ", ".join(f"{a:.1f}" for a in v)  # noqa: E731
        lines.append(
            f"| {name} | {len(sets[name][3])} | {statistics.mean(f):.2f} ({seeds(f)}) | {statistics.mean(b):.2f} "
            f"({seeds(b)}) | {diff:+.2f} | {spread:.2f} | {'yes' if ok else 'NO'} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        args.output.write_text(text)
        args.output.with_suffix(".json").write_text(json.dumps(results, indent=1))
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
