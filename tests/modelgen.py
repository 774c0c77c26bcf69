"""Small checkpoints for tests: a tiny SE-DenseNet whose weights and BatchNorm statistics have moved; and what an
autograd graph is made of."""

from __future__ import annotations

from pathlib import Path

import torch

import sedensenet


def moved_tiny_checkpoint(path: Path, classes: list[str], seed: int | None = None) -> Path:
    """``se_densenet_tiny`` after three SGD steps on random batches (so BN folding and test-time views are not
    no-ops), saved at ``path`` for 24 px images with mean 0.5 and std 0.25."""
    if seed is not None:
        torch.manual_seed(seed)
    model = sedensenet.create_model("se_densenet_tiny", num_classes=len(classes))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 3, 24, 24) * 2 + 0.5).logsumexp(1).mean().backward()
        opt.step()
    meta = sedensenet.checkpoint.CheckpointMeta(
        model=model.config.to_dict(), classes=list(classes), image_size=24, mean=[0.5] * 3, std=[0.25] * 3
    )
    sedensenet.checkpoint.save_checkpoint(path, model, meta)
    return path


def graph_nodes(node: object) -> set[str]:
    """Names of every autograd node behind ``node`` (an output's ``grad_fn``)."""
    names, todo = set(), [node]
    while todo:
        n = todo.pop()
        if n is not None:
            names.add(type(n).__name__)
            todo += [f for f, _ in n.next_functions]
    return names
