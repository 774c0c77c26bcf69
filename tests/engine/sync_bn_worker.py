"""One of two torchrun processes for ``test_sync_bn.py``: a memory-efficient DenseNet converted to SyncBatchNorm
(as ``--sync-bn`` does) takes a training-mode forward on its half of a global batch; rank 0 writes every
BatchNorm's running statistics from both ranks, and those of the plain model on the whole batch, to ``argv[1]``.

SyncBatchNorm runs only on accelerators: its three statistics kernels are CUDA-only. On CPU they are replaced here
by plain tensor formulas of the same contract, so its real gathering (``all_gather`` over gloo) runs; what the test
checks is that our fast paths hand every BatchNorm to it instead of computing local statistics themselves.
"""

from __future__ import annotations

import copy
import json
import sys

import torch
import torch.distributed as dist
from torch import nn

from sedensenet.models import DenseNet, set_fast


def _chan(t: torch.Tensor) -> torch.Tensor:
    return t.view(1, -1, 1, 1)


def _stats(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
    return mean, (var + eps).rsqrt()


def _gather(x, mean_all, invstd_all, running_mean, running_var, momentum, eps, counts):  # noqa: ANN001, ANN202
    counts = counts.view(-1, 1)
    n = float(counts.sum())
    mean = (mean_all * counts).sum(0) / n
    var = ((invstd_all.pow(-2) - eps + (mean_all - mean) ** 2) * counts).sum(0) / n  # the global biased variance
    if running_mean is not None:
        running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
        running_var.mul_(1 - momentum).add_(var * n / (n - 1), alpha=momentum)
    return mean, (var + eps).rsqrt()


def _elemt(x, weight, bias, mean, invstd, eps):  # noqa: ANN001, ANN202
    return (x - _chan(mean)) * _chan(invstd * weight) + _chan(bias)


def _cpu_sync_batchnorm() -> None:
    torch.batch_norm_stats = _stats
    torch.batch_norm_gather_stats_with_counts = _gather
    torch.batch_norm_elemt = _elemt
    torch._C._get_privateuse1_backend_name = lambda: "cpu"  # SyncBatchNorm's device check lets CPU through


def _running(model: nn.Module) -> dict[str, list[list[float]]]:
    return {
        name: [m.running_mean.tolist(), m.running_var.tolist()]
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    }


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    _cpu_sync_batchnorm()
    torch.manual_seed(0)
    model = DenseNet(growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2, num_classes=3,
                     memory_efficient=True)  # fmt: skip
    x = torch.randn(2 * world, 3, 32, 32) + torch.arange(2 * world).view(-1, 1, 1, 1)  # each rank: other means
    plain = copy.deepcopy(model)
    set_fast(plain, False)
    plain(x)  # the reference: plain BatchNorm over the global batch
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(model).train()
    synced(x[2 * rank : 2 * rank + 2])  # this rank's half, with gradients enabled (the training path)
    gathered: list[dict | None] = [None] * world
    dist.all_gather_object(gathered, _running(synced))
    if rank == 0:
        with open(out, "w", encoding="utf-8") as f:
            json.dump({"ranks": gathered, "global": _running(plain)}, f)
    dist.barrier()  # no rank closes its connections while another still uses them
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
