"""Every preset family against its torchvision twin: float32 and bf16, training and inference, default and
memory-efficient, each cell interleaved step by step with its twin, with peak memory.

Each cell is a setting of ``bench.py``'s machinery: the twin (``torchvision.models.DenseNet`` built to the preset's
topology, :func:`_worker.twin`) in one worker process, our plain preset and its SE variant each in another, their
steps interleaved one by one; a ratio is the median over rounds of ``twin seconds / ours seconds``. The raw
results are written after every cell (a run stopped midway keeps what it finished), and
``matrix_table.py`` turns them into the markdown table and the README snippet.

    python benchmarks/matrix.py --quick                  # 3 cells, 3 rounds (7-10 min on 2 cores under load 5-8)
    python benchmarks/matrix.py                          # the whole matrix (about an hour on 2 cores)
    python benchmarks/matrix.py --only 'bc100.*bf16'     # cells whose id matches a regex

Every worker, the twin's too, runs with glibc tuned as ``sedensenet train`` runs (``--malloc tuned``, the default
since 2026-12-07 evening): as glibc comes, large tensors are mapped and unmapped every step, and the page faults
made large float32 cells swing 0.82-1.18x between rounds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench import Config, Row, Setting, machine, run_setting  # noqa: E402

NUM_CLASSES = 10


@dataclass(frozen=True)
class Family:
    """A plain preset, its SE variant, and the image sizes and batches it is measured at."""

    label: str
    short: str
    """The name cell ids start with (``bc100``, ``121``)."""
    plain: str
    se: str
    sizes: tuple[tuple[int, int, int], ...]
    """(image size, training batch, inference batch)."""


FAMILIES = (
    Family("DenseNet-BC-100", "bc100", "densenet_bc_100", "se_densenet_bc_100", ((32, 64, 64), (64, 32, 32))),
    Family("DenseNet-121", "121", "densenet121", "se_densenet121", ((128, 32, 32), (224, 16, 32))),
    Family("DenseNet-169", "169", "densenet169", "se_densenet169", ((224, 16, 32),)),
    Family("DenseNet-201", "201", "densenet201", "se_densenet201", ((224, 16, 32),)),
)
PRECISIONS = ("float32", "bf16")
WORKS = ("train", "train memory-efficient", "infer")
QUICK = ("bc100 32/64 bf16 train$", "121 128/32 bf16 train$", "121 224/32 bf16 infer$")
"""The quick mode's cells: the issue's regression, and the DenseNet-121 training and inference targets."""


def cell_id(family: Family, size: int, batch: int, precision: str, work: str) -> str:
    """A cell's name, e.g. ``bc100 32/64 bf16 train memory-efficient`` (what ``--only`` matches)."""
    return f"{family.short} {size}/{batch} {precision} {work}"


def cells(quick: bool, only: str) -> list[tuple[str, Family, int, int, str, str]]:
    """Every (id, family, size, batch, precision, work) in the matrix, filtered by ``--quick`` / ``--only``."""
    out = []
    for fam in FAMILIES:
        for size, train_batch, infer_batch in fam.sizes:
            for precision in PRECISIONS:
                for work in WORKS:
                    batch = infer_batch if work == "infer" else train_batch
                    cid = cell_id(fam, size, batch, precision, work)
                    wanted = any(re.search(q, cid) for q in QUICK) if quick else True
                    if wanted and re.search(only, cid):
                        out.append((cid, fam, size, batch, precision, work))
    return out


def setting_for(
    fam: Family, size: int, batch: int, precision: str, work: str, steps: int, clock: str, malloc: str = "default"
) -> Setting:
    """The twin (baseline) and our plain and SE presets for one cell, all in the same precision, mode and clock;
    ``malloc="tuned"``: every worker, the twin's too, with glibc tuned as ``sedensenet train`` tunes it."""
    spec: dict[str, Any] = {"num_classes": NUM_CLASSES, "clock": clock}
    if precision == "bf16":
        spec["amp"] = True
    if work == "train memory-efficient":
        spec["memory_efficient"] = True
    if work == "infer":
        spec["backend"] = "eager"
    twin_spec = {k: v for k, v in spec.items() if k != "backend"}
    twin = Config(f"torchvision twin of {fam.plain}", "twin", {**twin_spec, "model": fam.plain})
    ours = [Config(f"ours {name}", "ours", {**spec, "model": name}) for name in (fam.plain, fam.se)]
    task = "infer" if work == "infer" else "train"
    return Setting(task, size, batch, "glibc tuned" if malloc == "tuned" else "glibc", twin, ours, steps, 1)


def row_record(cid: str, row: Row, base: Row) -> dict[str, Any]:
    """One row's raw results: step seconds, per-round ratios to the twin, peaks, and its medians."""
    ratio = statistics.median(row.ratios) if row.ratios else None
    mem = row.memory_mb / base.memory_mb if base.memory_mb == base.memory_mb and row.memory_mb else None
    return {
        "cell": cid, "config": row.config.name, "kind": row.config.kind, "spec": row.config.spec,
        "seconds": row.seconds, "ratios": row.ratios, "ratio": ratio, "images_per_s": row.images_per_second,
        "peak_rss_mb": row.memory_mb, "memory_vs_twin": mem, "ready": row.ready, "final": row.final,
        "error": row.error,
    }  # fmt: skip


def bf16_units() -> str:
    """Which bf16 matrix units the CPU reports (the KVM model name often says only "Xeon Processor")."""
    flags = set(Path("/proc/cpuinfo").read_text().split())
    found = [f for f in ("avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return ", ".join(found) + (" (no AMX)" if "amx_tile" not in flags else "") if found else "no bf16 units"


def one_thread_result(script: str, argv: list[str] | None, rounds: int) -> dict:
    """The header of a one-process A/B script's raw results (one thread, timed by CPU time): the machine, its bf16
    units, the rounds and the command that made them; its cases follow under ``cases``."""
    command = ["python", f"benchmarks/{script}", *(argv if argv is not None else sys.argv[1:])]
    return {"machine": machine(), "bf16_units": bf16_units(), "threads": 1, "clock": "cpu", "rounds": rounds,
            "command": " ".join(command), "cases": []}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 cells (BC-100 and DenseNet-121 bf16), 3 rounds")
    parser.add_argument("--only", default="", help="cells whose id matches this regex (e.g. 'bc100.*train$')")
    parser.add_argument("--steps", type=int, default=0, help="interleaved rounds per candidate (default 5, quick 3)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of every worker")
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall",
        help="time steps by wall clock, or by each worker's CPU time (steadier on a loaded machine with --threads 1)",
    )  # fmt: skip
    parser.add_argument(
        "--malloc", choices=("default", "tuned"), default="tuned",
        help="glibc tuned in every worker, the twin's too, as the CLI tunes it (no mmap, no trim; runs before "
        "2026-12-07 evening used glibc as it comes: --malloc default)",
    )  # fmt: skip
    parser.add_argument("--output", type=Path, default=None, help="raw results (.json; default results/matrix-*.json)")
    args = parser.parse_args(argv)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M")
    output = args.output or HERE / "results" / f"matrix{'-quick' if args.quick else ''}-{stamp}.json"
    steps = args.steps or (3 if args.quick else 5)
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f}s] {msg}", file=sys.stderr, flush=True)

    raw: dict[str, Any] = {
        "started": stamp, "machine": machine(), "bf16_units": bf16_units(), "threads": args.threads,
        "clock": args.clock, "steps": steps, "quick": args.quick, "malloc": args.malloc,
        "command": " ".join(["python", "benchmarks/matrix.py", *(argv if argv is not None else sys.argv[1:])]),
        "cells": [],
    }  # fmt: skip
    for cid, fam, size, batch, precision, work in cells(args.quick, args.only):
        load = Path("/proc/loadavg").read_text().split()[:3]
        log(f"{cid} (load {' '.join(load)})")
        setting = setting_for(fam, size, batch, precision, work, steps, args.clock, args.malloc)
        rows = run_setting(setting, "cpu", args.threads, log)
        records = [row_record(cid, row, rows[0]) for row in rows]
        after = Path("/proc/loadavg").read_text().split()[:3]
        raw["cells"].append(
            {"cell": cid, "family": fam.label, "size": size, "batch": batch, "precision": precision, "work": work,
             "loadavg_before": load, "loadavg_after": after, "rows": records}
        )  # fmt: skip
        raw["wall_s"] = time.perf_counter() - start
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(raw, indent=1))  # after every cell: a stopped run keeps its finished cells
    log(f"raw results: {output}")
    return 0 if all(r["error"] is None for c in raw["cells"] for r in c["rows"]) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
