"""Speed of reading a manifest: a 10,000-row HAM10000-shaped table parsed, its files' existence checked and split.

Writes (in a temporary folder) 10,000 empty ``images/ISIC_%07d.jpg`` files and a ``labels.csv`` with HAM10000's
columns (lesion_id, image_id without extension, dx, age, sex; 3 images per lesion, 7 classes), then times
:func:`sedensenet.data.table.read_table` and ``resolve(DataDescription.for_data(...), check_images=False)`` (the
images are not decoded: only their existence is checked) three times each. The issue's budget is 2 s.

    python benchmarks/manifest_speed.py [--rows 10000] [--rounds 3] [--output FILE]

The raw figures go to ``--output`` (default ``benchmarks/results/manifest_speed.json``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from sedensenet.data.description import DataDescription, resolve
from sedensenet.data.table import read_table

CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
"""HAM10000's seven diagnoses (the ``dx`` column)."""


def make_table(root: Path, rows: int) -> Path:
    """``rows`` empty JPEG files under ``root/images`` and ``root/labels.csv`` listing them by id, 3 per lesion."""
    images = root / "images"
    images.mkdir(parents=True)
    table = root / "labels.csv"
    with open(table, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["lesion_id", "image_id", "dx", "age", "sex"])
        for i in range(rows):
            image_id = f"ISIC_{i:07d}"
            (images / f"{image_id}.jpg").touch()
            lesion = i // 3
            w.writerow([f"HAM_{lesion:07d}", image_id, CLASSES[lesion % len(CLASSES)], 30 + lesion % 50,
                        "male" if lesion % 2 else "female"])  # fmt: skip
    return table


def _times(fn: Callable[[], object], rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def _cpu_name() -> str:
    try:
        names = re.findall(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
    except OSError:
        names = []
    return names[0].strip() if names else platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "manifest_speed.json"))
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="sedensenet-manifest-") as tmp:
        root = Path(tmp)
        table = make_table(root, args.rows)
        images = root / "images"
        parsed = read_table(table, image_root=images, image_ext=".jpg")
        description = DataDescription.for_data(table, image_root=str(images), image_ext=".jpg")
        splits = resolve(description, check_images=False)
        read_s = _times(lambda: read_table(table, image_root=images, image_ext=".jpg"), args.rounds)
        resolve_s = _times(lambda: resolve(description, check_images=False), args.rounds)
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg_before": list(load_before),
        "loadavg_after": list(os.getloadavg()),
        "rows": args.rows,
        "groups": len({s.group for s in parsed.samples}),
        "classes": len(splits.classes),
        "split": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
        "read_table_s": read_s,
        "resolve_s": resolve_s,
        "read_table_median_s": statistics.median(read_s),
        "resolve_median_s": statistics.median(resolve_s),
        "target_s": 2.0,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"{args.rows} rows, {result['groups']} lesions, {result['classes']} classes; "
          f"split train {len(splits.train)} / val {len(splits.val)} / test {len(splits.test)}")  # fmt: skip
    print(f"read_table median {result['read_table_median_s']:.3f} s  {[round(t, 3) for t in read_s]}")
    print(f"resolve (check_images=False) median {result['resolve_median_s']:.3f} s  "
          f"{[round(t, 3) for t in resolve_s]} (target < 2 s)")  # fmt: skip
    print(f"load average {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}; raw figures in {args.output}")


if __name__ == "__main__":
    main()
