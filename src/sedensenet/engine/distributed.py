"""torchrun / DistributedDataParallel glue: process-group set-up, rank helpers, metric reduction.

Launch with ``torchrun --nproc-per-node N -m sedensenet train ...``: torchrun sets RANK, WORLD_SIZE,
LOCAL_RANK and the rendezvous address; every process runs the same training, DistributedSampler
gives each a shard of the data, gradients are averaged by DDP, and only rank 0 writes the run folder.
"""

from __future__ import annotations

import datetime
import logging
import os

import numpy as np
import torch
import torch.distributed as tdist
from torch import nn

from sedensenet.config import ConfigError
from sedensenet.engine.loop import EpochResult, accuracy_of, weighted_loss

log = logging.getLogger(__name__)


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def is_distributed() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def rank() -> int:
    return tdist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return tdist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def init(device_name: str, timeout: datetime.timedelta = datetime.timedelta(minutes=30)) -> torch.device:
    """Join the process group torchrun prepared; returns this process's device (cuda:LOCAL_RANK or cpu).

    ``timeout`` bounds every collective wait: a rank that waits longer for the others fails.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda") or device_name.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    backend = "nccl" if use_cuda else "gloo"
    if not is_distributed():
        tdist.init_process_group(backend=backend, timeout=timeout)
    log.info("distributed: rank %d of %d (%s)", rank(), world_size(), backend)
    return torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")


def shutdown(*, clean: bool = True) -> None:
    """Leave the process group. After a clean run every rank first waits for the others, so none closes its
    connections while another still reads them (gloo can abort a process on a peer's early hang-up); after a
    failure a rank leaves at once rather than wait the whole collective timeout for peers that may be gone."""
    if is_distributed():
        if clean:
            tdist.barrier()
        tdist.destroy_process_group()


def local_batch_size(global_batch: int) -> int:
    """``--batch-size`` is the global batch: each of the N processes takes ``global_batch / N`` images a step,
    so a run gives the same optimisation whatever the number of GPUs (as with Ultralytics and Keras)."""
    n = world_size()
    if global_batch % n:
        raise ConfigError(
            f"--batch-size {global_batch} must be divisible by the {n} processes; try {global_batch // n * n}"
        )
    return global_batch // n


def barrier() -> None:
    if is_distributed():
        tdist.barrier()


def rank0_decides(value: int, device: torch.device) -> int:
    """Rank 0's ``value`` on every rank (a stop, a planned epoch count): decisions from one process's clock, so
    all ranks stop at the same step and train the same epochs. The value itself when not distributed."""
    if not is_distributed():
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    tdist.broadcast(t, src=0)
    return int(t.item())


def reduce_epoch(res: EpochResult, device: torch.device) -> EpochResult:
    """Loss and accuracy of a training epoch over all processes (sample-weighted means)."""
    if not is_distributed():
        return res
    t = torch.tensor([res.loss * res.samples, res.accuracy * res.samples, res.samples], dtype=torch.float64)
    t = t.to(device)
    tdist.all_reduce(t)
    loss_sum, correct, n = t.tolist()
    return EpochResult(loss_sum / n, correct / n, int(n), res.seconds)


def gather_eval(res: EpochResult, device: torch.device, criterion: nn.Module | None) -> EpochResult:
    """Concatenate every process's evaluation outputs, so each sees the metrics of the whole split.

    The loss is :func:`~sedensenet.engine.loop.weighted_loss` with ``criterion``'s class weights, as one process
    computes it.
    """
    if not is_distributed():
        return res
    parts: list = [None] * world_size()
    tdist.all_gather_object(parts, (res.probs, res.targets, res.losses, res.seconds))
    probs = np.concatenate([p[0] for p in parts])
    targets = np.concatenate([p[1] for p in parts])
    losses = np.concatenate([p[2] for p in parts])
    accuracy = accuracy_of(probs, targets)
    loss = weighted_loss(criterion, targets, losses)
    return EpochResult(loss, accuracy, len(targets), max(p[3] for p in parts), probs, targets, losses)
