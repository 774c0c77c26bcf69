"""``sedensenet compare``: train several models on the same split, budget and seeds; tabulate and plot.

This is how the tutorial's claim (SE makes DenseNet better at little cost) is answered with numbers:
each model is trained once per seed with everything else equal, and the table reports the mean and
standard deviation over seeds of the best validation accuracy (and ROC-AUC for two classes).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sedensenet.config import ConfigError
from sedensenet.fileio import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


@dataclass
class ModelRow:
    """One model's results over the seeds."""

    model: str
    params: int
    gmacs: float
    seconds_per_epoch: float
    val_accuracy: list[float] = field(default_factory=list)
    roc_auc: list[float] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)

    def mean_std(self, values: list[float]) -> tuple[float, float]:
        vals = [v for v in values if v is not None and not math.isnan(v)]
        if not vals:
            return math.nan, math.nan
        return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0


@dataclass
class CompareResult:
    """The comparison table and where its files are."""

    rows: list[ModelRow]
    out_dir: Path
    seeds: list[int]

    def markdown(self) -> str:
        """The table as markdown: parameters, GMACs, seconds per epoch, best val accuracy (and AUC) mean ± std."""
        two = any(r.roc_auc for r in self.rows)
        head = "| model | params | GMACs | s/epoch | best val accuracy |" + (" ROC-AUC |" if two else "")
        sep = "|---|---:|---:|---:|---:|" + ("---:|" if two else "")
        lines = [head, sep]
        for r in self.rows:
            acc, acc_sd = r.mean_std(r.val_accuracy)
            line = (
                f"| {r.model} | {r.params:,} | {r.gmacs:.3f} | {r.seconds_per_epoch:.1f} | {acc:.4f} ± {acc_sd:.4f} |"
            )
            if two:
                auc, auc_sd = r.mean_std(r.roc_auc)
                line += f" {auc:.4f} ± {auc_sd:.4f} |"
            lines.append(line)
        lines.append(f"\nmean ± sample std over {len(self.seeds)} seed(s): {', '.join(map(str, self.seeds))}")
        return "\n".join(lines)


def compare(
    data: str,
    models: list[str],
    seeds: int = 3,
    project: str | os.PathLike = "runs",
    name: str = "compare",
    **overrides: Any,
) -> CompareResult:
    """Train every model in ``models`` once per seed on the same split and settings; write the table and figure.

    Args:
        data: image folder or ``builtin:NAME``.
        models: preset names.
        seeds: how many seeds (``seed``, ``seed + 1``, …; the split always uses the first).
        project: folder that receives the comparison folder.
        name: the comparison folder's name (``compare``, ``compare2``, … when it exists).
        **overrides: training settings shared by every run (epochs, image_size, batch_size, …).
    """
    from sedensenet.api import train, training_config
    from sedensenet.reports import new_run_dir, plot_history_comparison

    if not models:
        raise ConfigError("give at least one model to compare")
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    base, _ = training_config(data, **overrides)
    out_dir = new_run_dir(project, name, exist_ok=False)
    seed_list = [base.seed + i for i in range(seeds)]
    rows, curves = [], {}
    for model in models:
        row, model_curves = _train_model(train, data, model, seed_list, base.seed, out_dir, overrides)
        rows.append(row)
        curves[model] = model_curves
    result = CompareResult(rows, out_dir, seed_list)
    _write(result)
    plot_history_comparison(_mean_curves(curves), out_dir / "val_curves.png")
    log.info("comparison written to %s\n%s", out_dir, result.markdown())
    return result


def _train_model(
    train: Any, data: str, model: str, seeds: list[int], split_seed: int, out_dir: Path, overrides: dict[str, Any]
) -> tuple[ModelRow, list[list[float]]]:
    from sedensenet.config import load_yaml
    from sedensenet.model_summary import summary
    from sedensenet.models import create_model

    row, curves = None, []
    for seed in seeds:
        # Same split (split_seed), same budget (no early stopping); only the model and the seed change.
        settings = {**overrides, "model": model, "seed": seed, "split_seed": split_seed, "patience": 0,
                    "project": str(out_dir), "name": f"{model}_seed{seed}", "exist_ok": True}  # fmt: skip
        res = train(data=data, verbose=0, **settings)  # one table at the end, not a screen of epoch lines
        config = load_yaml(res.run_dir / "config.yaml")
        num_classes = len(json.loads((res.run_dir / "classes.json").read_text(encoding="utf-8")))
        if row is None:
            net = create_model(model, num_classes=num_classes, in_chans=int(config["in_chans"]))
            s = summary(net, int(config["image_size"]))
            row = ModelRow(model, s.total_params, s.macs / 1e9, 0.0)
        h = res.history
        row.val_accuracy.append(max(h.history["val_accuracy"]))
        auc = res.metrics.get("val", {}).get("roc_auc")
        if auc is not None and num_classes == 2:
            row.roc_auc.append(auc)
        row.seconds_per_epoch += float(np.mean(h.seconds)) / len(seeds)
        row.runs.append(str(res.run_dir))
        curves.append(h.history["val_accuracy"])
    assert row is not None
    return row, curves


def _mean_curves(curves: dict[str, list[list[float]]]) -> dict[str, list[float]]:
    out = {}
    for model, runs in curves.items():
        n = min(len(r) for r in runs)
        out[f"{model} (mean of {len(runs)})"] = np.mean([r[:n] for r in runs], axis=0).tolist()
    return out


def _write(result: CompareResult) -> None:
    atomic_write_text(result.out_dir / "compare.md", result.markdown() + "\n")
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["model", "params", "gmacs", "seconds_per_epoch", "seed", "best_val_accuracy", "roc_auc", "run"])
    for r in result.rows:
        for i, seed in enumerate(result.seeds):
            auc = r.roc_auc[i] if i < len(r.roc_auc) else ""
            w.writerow([r.model, r.params, f"{r.gmacs:.4f}", f"{r.seconds_per_epoch:.2f}", seed,
                        f"{r.val_accuracy[i]:.6f}", auc, r.runs[i]])  # fmt: skip
    atomic_write_text(result.out_dir / "compare.csv", buf.getvalue())
    atomic_write_json(
        result.out_dir / "compare.json", {"seeds": result.seeds, "rows": [asdict(r) for r in result.rows]}
    )
