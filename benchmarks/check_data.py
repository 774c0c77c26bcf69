"""Speed of ``sedensenet check-data``: 10,000 JPEGs of 512x512, decoding included, on this machine's cores.

Generates (once) train/ val/ test/ folders of smooth random colour fields with sensor-like noise, saved as JPEG
quality 90, two classes, with 1% planted copies (re-encoded at quality 60, half of them into another split),
then times :func:`sedensenet.data.check.check_data` end to end: listing, the file check's full decode, the
fingerprints, the exact and near duplicate search and the verdicts. The issue's budget is 2 minutes on 2 cores.

    python benchmarks/check_data.py [--images 10000] [--root /tmp/sedensenet-bench-checkdata] [--output FILE]

The raw figures go to ``--output`` (default ``benchmarks/results/check_data.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image


def _image(rng: np.random.Generator, size: int) -> Image.Image:
    small = rng.integers(0, 255, size=(12, 12, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC), dtype=np.int16)
    noise = rng.integers(-12, 13, size=(size, size, 1), dtype=np.int16)
    return Image.fromarray(np.clip(field + noise, 0, 255).astype(np.uint8))


def make_jpegs(root: Path, n: int, size: int = 512, copies: float = 0.01) -> tuple[Path, int]:
    """``n`` JPEGs (originals plus ``copies`` of them re-encoded at quality 60); returns the root and the copies."""
    marker = root / f".complete-{n}-{size}"
    n_copies = int(n * copies)
    if marker.is_file():
        return root, n_copies
    rng = np.random.default_rng(0)
    originals = n - n_copies
    saved: list[tuple[Path, Image.Image]] = []
    for i in range(originals):
        split = "train" if i < 0.7 * originals else "val" if i < 0.85 * originals else "test"
        d = root / split / ("a" if i % 2 else "b")
        d.mkdir(parents=True, exist_ok=True)
        im = _image(rng, size)
        im.save(d / f"{i:05d}.jpg", quality=90)
        if len(saved) < n_copies:
            saved.append((d, im))
    for k, (d, im) in enumerate(saved):
        target = root / ("test" if k % 2 else d.parent.name) / d.name
        target.mkdir(parents=True, exist_ok=True)
        im.save(target / f"copy{k:04d}.jpg", quality=60)
    marker.touch()
    return root, n_copies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--root", default="/tmp/sedensenet-bench-checkdata")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "check_data.json"))
    args = parser.parse_args()

    t0 = time.perf_counter()
    root, n_copies = make_jpegs(Path(args.root), args.images, args.size)
    generate_s = time.perf_counter() - t0

    from sedensenet.data.check import check_data

    load_before = os.getloadavg()
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    check = check_data(root)
    wall = time.perf_counter() - start
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
    result = {
        "what": f"check_data on {len(check.files)} JPEGs of {args.size}x{args.size}, decoding included",
        "images": len(check.files),
        "planted_copies": n_copies,
        "pairs_found": len(check.pairs),
        "wall_seconds": round(wall, 2),
        "cpu_seconds": round(cpu, 2),
        "images_per_second": round(len(check.files) / wall, 1),
        "cpu_count": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "generate_seconds": round(generate_s, 1),
        "python": platform.python_version(),
        "pillow": Image.__version__,
        "numpy": np.__version__,
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
        ).stdout.strip(),  # fmt: skip
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "note": "read the load averages: other jobs on the machine slow the wall time, not the CPU time",
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
