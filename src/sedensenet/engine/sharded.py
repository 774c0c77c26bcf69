"""Bulk prediction sharded over processes and machines: ``torchrun ... -m sedensenet predict RUN DIR --output X``.

The sorted file list is cut into one contiguous share per rank. Each rank predicts its share with the same backend
(``auto`` is resolved once from the whole job's size, so no rank picks another path because its share is small)
and writes ``OUTPUT.parts/part-RRRRR-of-WWWWW.csv`` atomically; rank 0 then checks every part against the file list
and writes the merged CSV, in input order, atomically, and removes the parts. A killed job run again with
``resume=True`` keeps every part already written for the same job (``job.json`` says which) and predicts the rest.

Across machines the parts folder must be on a filesystem every machine shares: rank 0 reads all parts.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from sedensenet.config import ConfigError, InferenceSettings
from sedensenet.engine import distributed as dist
from sedensenet.engine.device import amp_dtype, precision_name, select_device
from sedensenet.engine.predictor import ROW_FIELDS, Predictor, predictions_csv
from sedensenet.engine.samples import expand_inputs
from sedensenet.errors import UserError
from sedensenet.fileio import atomic_write_json, atomic_write_text
from sedensenet.inference import resolve_backend

log = logging.getLogger(__name__)

FIELDS = ROW_FIELDS
"""The columns of a part and of the merged file (those of ``probabilities_to_rows``)."""


class ShardError(UserError, RuntimeError):
    """A part that is missing or does not match the job; the message says which and what to do."""


@dataclass
class ShardedResult:
    """What a sharded job wrote (on rank 0; other ranks get ``None`` from :func:`predict_sharded`)."""

    output: Path
    rows: int
    parts: int
    resumed_parts: int
    """Parts found already written (``resume``) and not predicted again."""
    backend: str
    amp: str = "off"
    """The precision every rank ran (``--amp``, with ``auto`` resolved once on rank 0)."""


def parts_dir(output: Path) -> Path:
    return output.with_name(output.name + ".parts")


def part_path(output: Path, rank: int, world: int) -> Path:
    return parts_dir(output) / f"part-{rank:05d}-of-{world:05d}.csv"


def share(n: int, rank: int, world: int) -> slice:
    """Rank ``rank``'s contiguous share of ``n`` files: shares differ by at most one file, in rank order."""
    return slice(rank * n // world, (rank + 1) * n // world)


def predict_sharded(
    model: str | os.PathLike,
    inputs: list[str | os.PathLike] | str | os.PathLike,
    output: str | os.PathLike,
    *,
    top_k: int = 1,
    resume: bool = False,
    settings: InferenceSettings | None = None,
) -> ShardedResult | None:
    """This rank's share of the prediction job; on rank 0, also the merge. Call in every process of the group.

    Args:
        model: checkpoint, run folder or exported ``.onnx`` (every rank loads it).
        inputs: image files and folders; the job is their :func:`expand_inputs` list, in that order.
        output: the merged ``.csv``; the parts go to ``OUTPUT.parts/``.
        resume: keep parts already written by an earlier run of the same job.
        settings: how batches run, as for ``predict`` (this rank's device: torchrun's, chosen by the caller);
            ``amp='auto'`` is resolved once, on rank 0, and every rank runs that precision.

    Returns:
        On rank 0 what was written; ``None`` on the other ranks.
    """
    output = Path(output)
    if output.suffix.lower() != ".csv":
        raise ConfigError(f"sharded prediction writes one CSV: --output must end in .csv, got {output}")
    settings = settings or InferenceSettings()
    files = expand_inputs(inputs)
    rank, world = dist.rank(), dist.world_size()
    device_type = select_device(settings.device).type
    precision = _pin_amp(settings.amp, device_type)
    # One backend for the whole job, not per share (bf16 eager on a CPU where the precision is bf16).
    backend = resolve_backend(settings.backend, device_type, len(files), device_type == "cpu" and precision != "off")
    pinned = replace(settings, backend=backend, amp=precision)
    job = {**_job(model, files, backend, top_k, world), "tta": settings.tta, "amp": precision}
    _check_resumable(output, job, resume)  # every rank, before anything is removed
    dist.barrier()
    if rank == 0:
        _prepare(output, job, resume)
    dist.barrier()
    mine = [str(f) for f in files[share(len(files), rank, world)]]
    part = part_path(output, rank, world)
    done = resume and _read_part(part, mine) is not None
    if done:
        log.warning("rank %d: %s already written (%d rows), skipped", rank, part.name, len(mine))
    else:
        _write_part(part, _predict(model, mine, top_k, pinned))
    resumed = _gather_flags(done)
    if rank != 0:
        return None
    rows = _merge(output, [str(f) for f in files], world)
    return ShardedResult(output, rows, world, sum(resumed), backend, precision)


def _job(model: str | os.PathLike, files: list[Path], backend: str, top_k: int, world: int) -> dict[str, Any]:
    digest = hashlib.sha256("\n".join(map(str, files)).encode("utf-8", "surrogateescape")).hexdigest()
    return {"model": str(model), "files": len(files), "files_sha256": digest, "backend": backend, "top_k": top_k,
            "world_size": world}  # fmt: skip


def _check_resumable(output: Path, job: dict[str, Any], resume: bool) -> None:
    manifest = parts_dir(output) / "job.json"
    if not resume or not manifest.is_file():
        return
    try:
        old = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ShardError(f"{manifest} is unreadable ({e}): remove {manifest.parent} and run without --resume") from None
    changed = sorted(k for k in job if old.get(k) != job[k])
    if changed:
        raise ShardError(
            f"the parts in {manifest.parent} belong to another job ({', '.join(changed)} changed: "
            f"{ {k: old.get(k) for k in changed} } then, { {k: job[k] for k in changed} } now); resume with the same "
            "model, files, backend, --top-k, --tta, --amp and number of processes, or run without --resume to start "
            "over"
        )


def _prepare(output: Path, job: dict[str, Any], resume: bool) -> None:
    folder = parts_dir(output)
    if folder.exists() and not resume:
        log.info("removing %s, parts of an earlier job (no --resume)", folder)
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "job.json", job)


def _pin_amp(amp: str, device_type: str) -> str:
    """``amp`` as one concrete precision for the whole job (``off``, ``bf16`` or ``fp16``): rank 0's reading of
    ``auto``, so that ranks on machines with and without bf16 units do not predict in different precisions."""
    dtype = amp_dtype(amp, torch.device(device_type))
    chosen = ["off" if dtype is None else precision_name(dtype)]  # rank 0's choice replaces it below
    if dist.is_distributed():
        import torch.distributed as tdist

        tdist.broadcast_object_list(chosen, src=0)
    return str(chosen[0])


def _predict(model: str | os.PathLike, files: list[str], top_k: int, settings: InferenceSettings) -> str:
    """This rank's part: the CSV rows of ``files`` (a header alone when its share is empty: nothing is loaded)."""
    return predictions_csv(Predictor.load(model, settings).predict_files(files, top_k=top_k) if files else [])


def _write_part(part: Path, text: str) -> None:
    atomic_write_text(part, text)
    log.info("rank %d: wrote %s", dist.rank(), part.name)


def _read_part(part: Path, expected: list[str]) -> list[dict[str, str]] | None:
    """The part's rows when it exists and covers exactly ``expected`` in order; ``None`` otherwise."""
    if not part.is_file():
        return None
    with part.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return rows if [r.get("path") for r in rows] == expected else None


def _gather_flags(flag: bool) -> list[bool]:
    if not dist.is_distributed():
        return [flag]
    import torch.distributed as tdist

    flags: list[Any] = [None] * dist.world_size()
    tdist.all_gather_object(flags, flag)  # also the barrier before the merge: every part is written
    return [bool(f) for f in flags]


def _merge(output: Path, files: list[str], world: int) -> int:
    parts = []
    for r in range(world):
        part = part_path(output, r, world)
        rows = _read_part(part, files[share(len(files), r, world)])
        if rows is None:
            raise ShardError(
                f"{part} is missing or does not hold rank {r}'s files: across machines the output folder must be "
                "on a filesystem every machine shares; run again with --resume to redo only the missing parts"
            )
        parts.append(rows)
    # the columns of the rows themselves: a multi-label model writes one per label (an empty share: the default)
    fields = next((list(rows[0]) for rows in parts if rows), FIELDS)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for rows in parts:
        writer.writerows(rows)
    atomic_write_text(output, buf.getvalue())
    shutil.rmtree(parts_dir(output))
    log.info("merged %d parts into %s (%d rows)", world, output, len(files))
    return len(files)
