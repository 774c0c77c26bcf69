"""Which precision ``--amp auto`` should pick on this CPU: torchvision and ours, each in bf16 autocast and float32,
interleaved step by step against torchvision's bf16 (the issue's baseline), with what ``--amp auto`` picks here.

bf16 matrix units do not make bf16 faster everywhere: on a Xeon with AVX512-BF16 and no AMX oneDNN's bf16
convolutions run at about half its float32 ones' speed, and ``--amp auto`` predicts in float32 on such CPUs
(:data:`sedensenet.models.cpu.SLOW_AVX512_BF16`; it trains in bf16 there, whose convolutions compute in float32);
this benchmark is the measurement behind that rule, and the way to check a CPU it does not list. Rows: each is
the median over rounds of ``torchvision bf16 seconds / row seconds`` in one worker process per row (peak RSS per
process).

    python benchmarks/precision.py --threads 1 --clock cpu       # 6 cells (DenseNet-121 and BC-100)
    python benchmarks/precision.py --only '121 224/32'
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench import Config, Setting, machine, run_setting  # noqa: E402
from matrix import NUM_CLASSES, bf16_units, row_record  # noqa: E402

CELLS = (
    ("densenet121", "train", 128, 32), ("densenet121", "train", 224, 16), ("densenet121", "infer", 224, 32),
    ("densenet_bc_100", "train", 32, 64), ("densenet_bc_100", "train", 64, 32), ("densenet_bc_100", "infer", 32, 64),
)  # fmt: skip


def setting_for(model: str, task: str, size: int, batch: int, steps: int, clock: str) -> Setting:
    """torchvision's twin in bf16 (the baseline), then the twin in float32 and ours in both precisions."""
    spec: dict[str, Any] = {"num_classes": NUM_CLASSES, "clock": clock, "model": model}
    ours = {**spec, "backend": "eager"} if task == "infer" else spec
    rows = [
        Config("torchvision twin float32", "twin", spec),
        Config("ours bf16", "ours", {**ours, "amp": True}),
        Config("ours float32", "ours", ours),
    ]
    return Setting(task, size, batch, "glibc", Config("torchvision twin bf16", "twin", {**spec, "amp": True}),
                   rows, steps, 1)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="cells whose id (e.g. '121 224/32 infer') matches this regex")
    parser.add_argument("--steps", type=int, default=5, help="interleaved rounds per row")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of every worker")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="wall clock or each worker's CPU time")
    parser.add_argument("--output", type=Path, default=None, help="raw results (.json; default results/precision-*)")
    args = parser.parse_args(argv)
    import torch

    from sedensenet.engine.device import cpu_bf16

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M")
    output = args.output or HERE / "results" / f"precision-{stamp}.json"
    start = time.perf_counter()
    raw: dict[str, Any] = {
        "started": stamp, "machine": machine(), "bf16_units": bf16_units(), "threads": args.threads,
        "clock": args.clock, "steps": args.steps, "torch": torch.__version__, "cpu_bf16": cpu_bf16(),
        "command": " ".join(["python", "benchmarks/precision.py", *(argv if argv is not None else sys.argv[1:])]),
        "cells": [],
    }  # fmt: skip
    for model, task, size, batch in CELLS:
        cid = f"{'121' if model == 'densenet121' else 'bc100'} {size}/{batch} {task}"
        if not re.search(args.only, cid):
            continue
        print(f"[{time.perf_counter() - start:6.0f}s] {cid}", file=sys.stderr, flush=True)
        rows = run_setting(setting_for(model, task, size, batch, args.steps, args.clock), "cpu", args.threads,
                           lambda msg: print(msg, file=sys.stderr, flush=True))  # fmt: skip
        raw["cells"].append({"cell": cid, "rows": [row_record(cid, row, rows[0]) for row in rows]})
        raw["wall_s"] = time.perf_counter() - start
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(raw, indent=1))
    for cell in raw["cells"]:
        ratios = "  ".join(f"{r['config']} {r['ratio']:.2f}x" for r in cell["rows"] if r["ratio"] is not None)
        print(f"{cell['cell']:18s} {ratios}")
    print(f"raw results: {output}", file=sys.stderr)
    return 0 if all(r["error"] is None for c in raw["cells"] for r in c["rows"]) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
