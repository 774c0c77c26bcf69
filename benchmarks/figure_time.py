"""How long each figure of a run's folder takes to draw and write: the seven a two-class run writes (the curves
after every epoch, then the confusion matrices, ROC, precision-recall, reliability and top losses), each the best
of a few repetitions, one process. Run it against another checkout to compare (``PYTHONPATH=<checkout>/src``).

    python benchmarks/figure_time.py --output benchmarks/results/figure_time-2026-12-07-after.json
    PYTHONPATH=/tmp/before/src python benchmarks/figure_time.py --output benchmarks/results/figure_time-before.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import machine  # noqa: E402

import sedensenet  # noqa: E402
from sedensenet.reports.diagnostic_plots import plot_confusion_matrix, plot_pr, plot_reliability, plot_roc  # noqa: E402
from sedensenet.reports.explain_plots import plot_top_losses  # noqa: E402
from sedensenet.reports.plots import plot_curves  # noqa: E402


def figures(folder: Path) -> dict[str, Callable[[], object]]:
    """The run's figures with fixed inputs: 60 validation images of two classes, five epochs, eight top losses."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    scores = np.clip(labels * 0.5 + rng.random(60) * 0.6, 0, 1)
    probs = np.stack([1 - scores, scores], 1)
    history = {"accuracy": [0.5, 0.7, 0.85, 0.9, 0.95], "val_accuracy": [0.45, 0.6, 0.8, 0.88, 0.9],
               "loss": [2.31, 1.2, 0.6, 0.3, 0.12], "val_loss": [2.5, 1.4, 0.7, 0.4, 0.35]}  # fmt: skip
    images = [rng.integers(0, 255, (16, 16, 3), dtype=np.uint8) for _ in range(8)]
    return {
        "curves.png": lambda: plot_curves(history, folder / "curves.png", best_epoch=3),
        "confusion_matrix.png": lambda: plot_confusion_matrix([[5, 3], [2, 9]], ["狗", "猫"], folder / "cm.png"),
        "confusion_matrix_normalized.png": lambda: plot_confusion_matrix(
            [[5, 3], [2, 9]], ["狗", "猫"], folder / "cmn.png", normalize=True),
        "roc.png": lambda: plot_roc(labels, scores, folder / "roc.png", "猫"),
        "pr.png": lambda: plot_pr(labels.astype(bool), scores, folder / "pr.png", "猫", 0.5),
        "calibration.png": lambda: plot_reliability(labels, probs, folder / "calibration.png"),
        "top_losses.png": lambda: plot_top_losses(images, ["true: 狗\npred: 猫 (0.97)\nloss 3.51"] * 8,
                                                  folder / "top_losses.png"),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    result: dict = {
        "machine": machine(), "sedensenet": str(Path(sedensenet.__file__).parent), "repeats": args.repeats,
        "command": " ".join(["python", "benchmarks/figure_time.py", *(argv if argv is not None else sys.argv[1:])]),
        "ms": {},
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for name, draw in figures(Path(tmp)).items():
            draw()  # fonts and caches
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                draw()
                times.append(time.perf_counter() - start)
            result["ms"][name] = round(min(times) * 1000, 1)
            print(f"{name:34s} {result['ms'][name]:7.1f} ms", flush=True)
    result["total_ms"] = round(sum(result["ms"].values()), 1)
    print(f"{'all seven':34s} {result['total_ms']:7.1f} ms")
    if args.output:
        args.output.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
