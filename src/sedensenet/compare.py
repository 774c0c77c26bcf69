"""``sedensenet compare``: train several models on the same split, budget and seeds; tabulate and plot. Also the
machinery every study of several runs shares (``cv`` too): a run trained, resumed or read back when finished,
and a statistic summarised across runs.

This is how the tutorial's claim (SE makes DenseNet better at little cost) is answered with numbers:
each model is trained once per seed with everything else equal, and the table reports the mean and
standard deviation over seeds of the best validation accuracy (and ROC-AUC for two classes). With
``folds=k`` each model is cross-validated instead, and the table reports its held-out accuracy over the folds.
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

from sedensenet.config import ConfigError, load_yaml
from sedensenet.fileio import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


@dataclass
class Summary:
    """A statistic over runs (seeds or folds): mean, sample standard deviation and a 95% interval of the mean."""

    mean: float
    std: float
    low: float
    high: float
    n: int

    def text(self, digits: int = 4) -> str:
        """``mean ± std``; ``-`` when there is no value."""
        if self.n == 0:
            return "-"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"

    def interval(self, digits: int = 4) -> str:
        """``[low, high]``; ``-`` when fewer than two values."""
        return "-" if self.n < 2 else f"[{self.low:.{digits}f}, {self.high:.{digits}f}]"


def summarize(values: list[float | None], bounds: tuple[float, float] | None = None) -> Summary:
    """Mean ± sample std of the finite ``values``, with Student's t 95% interval of the mean (``n - 1`` degrees of
    freedom): with five folds or three seeds a bootstrap over the runs would be far too narrow. ``bounds``: the
    range the statistic can take (``(0, 1)`` for an accuracy); the interval is clipped to it."""
    from scipy import stats

    vals = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    n = len(vals)
    if n == 0:
        return Summary(math.nan, math.nan, math.nan, math.nan, 0)
    mean = float(vals.mean())
    if n == 1:
        return Summary(mean, 0.0, math.nan, math.nan, 1)
    std = float(vals.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return Summary(mean, std, low, high, n)


@dataclass
class RunOutcome:
    """A finished run read back from its folder: the final metrics (``val``, ``test``) and the history rows."""

    run_dir: Path
    metrics: dict[str, dict[str, Any]]
    history: list[dict[str, Any]]

    def column(self, name: str) -> list[float]:
        return [float(r[name]) for r in self.history if r.get(name) is not None]


def finished(run_dir: Path, *, held_out: bool = False) -> bool:
    """The run's final evaluation is written (``test/metrics.json`` too when it has a held-out split)."""
    return (run_dir / "metrics.json").is_file() and (not held_out or (run_dir / "test" / "metrics.json").is_file())


def train_or_resume(data: str, run_dir: Path, settings: dict[str, Any], *, held_out: bool = False) -> RunOutcome:
    """Train ``settings`` into ``run_dir``; resume it when a killed run left a resume state there, and only read it
    back when it is finished. This is what makes a study resumable: rerun it and only unfinished runs train."""
    from sedensenet.api import train

    if finished(run_dir, held_out=held_out):
        log.info("%s is finished: read back, not trained again", run_dir)
    elif (run_dir / "state" / "last.pt").is_file():
        log.info("resuming %s", run_dir)
        train(resume=run_dir, verbose=0)
    else:  # verbose=0: one table at the end, not a screen of epoch lines
        train(
            data=data, verbose=0, **{**settings, "project": str(run_dir.parent), "name": run_dir.name, "exist_ok": True}
        )
    return read_outcome(run_dir)


def read_outcome(run_dir: Path) -> RunOutcome:
    """A finished run's metrics and history, from its files."""
    from sedensenet.reports import read_history_csv

    metrics = {}
    for split, path in (("val", run_dir / "metrics.json"), ("test", run_dir / "test" / "metrics.json")):
        if path.is_file():
            metrics[split] = json.loads(path.read_text(encoding="utf-8"))
    return RunOutcome(run_dir, metrics, read_history_csv(run_dir / "history.csv"))


@dataclass
class ModelRow:
    """One model's results over the seeds (or folds)."""

    model: str
    params: int
    gmacs: float
    seconds_per_epoch: float
    val_accuracy: list[float] = field(default_factory=list)
    roc_auc: list[float] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    """Accuracy on each fold's held-out images (``folds`` only)."""
    test_roc_auc: list[float] = field(default_factory=list)
    mean_ap: list[float] = field(default_factory=list)
    """Multi-label: the macro mAP on validation (``roc_auc`` then holds the macro AUROC)."""
    test_mean_ap: list[float] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)
    """Epochs each run trained (under a time budget, what fitted in it)."""

    def mean_std(self, values: list[float]) -> tuple[float, float]:
        s = summarize(values)
        return s.mean, s.std


@dataclass
class CompareResult:
    """The comparison table and where its files are."""

    rows: list[ModelRow]
    out_dir: Path
    seeds: list[int]
    folds: int = 0
    time: str = ""
    """The time budget every run had (``--time``), if any."""

    def markdown(self) -> str:
        """The table as markdown: parameters, GMACs, seconds per epoch, accuracy (and AUC) mean ± std.

        Over seeds the accuracy is the best validation accuracy; over folds the held-out accuracy, with its 95%
        interval across folds."""
        acc_of = (lambda r: r.test_accuracy) if self.folds else (lambda r: r.val_accuracy)
        auc_of = (lambda r: r.test_roc_auc) if self.folds else (lambda r: r.roc_auc)
        map_of = (lambda r: r.test_mean_ap) if self.folds else (lambda r: r.mean_ap)
        two = any(auc_of(r) for r in self.rows)
        multi = any(map_of(r) for r in self.rows)
        what = "held-out accuracy | 95% interval" if self.folds else "best val accuracy"
        ranking = " macro AUROC | 95% interval | mAP | 95% interval |" if multi else " ROC-AUC |" if two else ""
        head = f"| model | params | GMACs | s/epoch | {what} |" + ranking
        sep = "|---|---:|---:|---:|---:|" + ("---:|" if self.folds else "") + "---:|" * ranking.count("|")
        lines = [head, sep]
        for r in self.rows:
            acc = summarize(acc_of(r), (0.0, 1.0))
            line = f"| {r.model} | {r.params:,} | {r.gmacs:.3f} | {r.seconds_per_epoch:.1f} | {acc.text()} |"
            if self.folds:
                line += f" {acc.interval()} |"
            if multi:
                auc, mean_ap = summarize(auc_of(r), (0.0, 1.0)), summarize(map_of(r), (0.0, 1.0))
                line += f" {auc.text()} | {auc.interval()} | {mean_ap.text()} | {mean_ap.interval()} |"
            elif two:
                line += f" {summarize(auc_of(r)).text()} |"
            lines.append(line)
        if self.folds:
            lines.append(
                f"\nmean ± sample std over {self.folds} folds (seed {self.seeds[0]}); 95% interval: Student's t"
            )
        else:
            lines.append(f"\nmean ± sample std over {len(self.seeds)} seed(s): {', '.join(map(str, self.seeds))}")
        if self.time:
            trained = "; ".join(f"{r.model} {', '.join(map(str, r.epochs))}" for r in self.rows)
            lines.append(f"every run had the same time budget, --time {self.time}; epochs trained: {trained}")
        return "\n".join(lines)


def compare(
    data: str,
    models: list[str],
    seeds: int | None = None,
    project: str | os.PathLike = "runs",
    name: str = "compare",
    folds: int = 0,
    **overrides: Any,
) -> CompareResult:
    """Train several models on the same split, settings and seeds; write a table and the validation curves.

    Args:
        data: image folder or ``builtin:NAME``.
        models: comma-separated presets, e.g. densenet121,keras_se_densenet121.
        seeds: runs per model (seed, seed+1, ...); the split stays fixed (default 3; with ``folds``, each model is
            cross-validated over the folds with one seed instead).
        project: folder that receives the comparison folder.
        name: the comparison folder's name (``compare``, ``compare2``, … when it exists).
        folds: cross-validate every model over this many folds (the same folds for each) instead of seeds; the
            table then reports held-out accuracy. ``seeds`` must be 1 then.
        **overrides: training settings shared by every run (epochs, image_size, batch_size, …). ``time`` is the
            budget of each run, the same for every model: the fair comparison of a small and a large model (the
            small one trains more epochs in it).
    """
    from sedensenet.api import training_config
    from sedensenet.reports import new_run_dir, plot_history_comparison
    from sedensenet.tracking import parent_run

    if not models:
        raise ConfigError("give at least one model to compare")
    if seeds is None:
        seeds = 1 if folds else 3
    if seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    if folds and seeds != 1:
        raise ConfigError(f"--folds {folds} cross-validates each model with one seed: drop --seeds {seeds}")
    base, _ = training_config(data, folds=folds, fold=1 if folds else 0, **overrides)
    out_dir = new_run_dir(project, name, exist_ok=False)
    seed_list = [base.seed + i for i in range(seeds)]
    jobs = [(f"fold_{k}", {"seed": base.seed, "folds": folds, "fold": k}) for k in range(1, folds + 1)] or [
        (f"seed{seed}", {"seed": seed}) for seed in seed_list
    ]
    rows, curves = [], {}
    with parent_run(base.mlflow, f"compare {out_dir.name}", tags={"sedensenet.study": "compare"}):
        for model in models:
            row, model_curves = _train_model(data, model, jobs, base.data_split_seed, out_dir, overrides)
            rows.append(row)
            curves[model] = model_curves
    result = CompareResult(rows, out_dir, seed_list, folds, base.time)
    _write(result)
    plot_history_comparison(_mean_curves(curves), out_dir / "val_curves.png")
    log.info("comparison written to %s\n%s", out_dir, result.markdown())
    return result


def _train_model(
    data: str, model: str, jobs: list[tuple[str, dict[str, Any]]], split_seed: int, out_dir: Path,
    overrides: dict[str, Any],
) -> tuple[ModelRow, list[list[float]]]:  # fmt: skip
    from sedensenet.model_summary import summary
    from sedensenet.models import create_model

    row, curves = None, []
    for suffix, job in jobs:
        # Same split (split_seed), same budget (no early stopping); only the model and the seed (or fold) change.
        settings = {**overrides, **job, "model": model, "split_seed": split_seed, "patience": 0}
        res = train_or_resume(data, out_dir / f"{model}_{suffix}", settings, held_out=bool(job.get("folds")))
        config = load_yaml(res.run_dir / "config.yaml")
        classes = json.loads((res.run_dir / "classes.json").read_text(encoding="utf-8"))
        if row is None:
            net = create_model(model, num_classes=len(classes), in_chans=int(config["in_chans"]))
            s = summary(net, int(config["image_size"]))
            row = ModelRow(model, s.total_params, s.macs / 1e9, 0.0)
        row.val_accuracy.append(max(res.column("val_accuracy")))
        _add_scores(row, res.metrics, two=len(classes) == 2)
        row.seconds_per_epoch += float(np.mean(res.column("seconds"))) / len(jobs)
        row.runs.append(str(res.run_dir))
        row.epochs.append(len(res.history))
        curves.append(res.column("val_accuracy"))
    assert row is not None
    return row, curves


def _add_scores(row: ModelRow, metrics: dict[str, Any], *, two: bool) -> None:
    """A run's final figures into its model's row: accuracy and (two classes) ROC-AUC, or for a multi-label run the
    macro AUROC and mAP; on val, and on the held-out fold when there is one."""
    val, test = metrics.get("val", {}), metrics.get("test")
    if "per_label" in val or (test is not None and "per_label" in test):
        for report, auc, mean_ap in ((val, row.roc_auc, row.mean_ap), (test, row.test_roc_auc, row.test_mean_ap)):
            if report and report.get("macro_auroc") is not None:
                auc.append(report["macro_auroc"])
            if report and report.get("macro_map") is not None:
                mean_ap.append(report["macro_map"])
        if test is not None:
            row.test_accuracy.append(test["subset_accuracy"])
        return
    if two and val.get("roc_auc") is not None:
        row.roc_auc.append(val["roc_auc"])
    if test is not None:
        row.test_accuracy.append(test["accuracy"])
        if two and test.get("roc_auc") is not None:
            row.test_roc_auc.append(test["roc_auc"])


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
    w.writerow(["model", "params", "gmacs", "seconds_per_epoch", "seed", "fold", "best_val_accuracy", "roc_auc",
                "test_accuracy", "test_roc_auc", "map", "test_map", "run"])  # fmt: skip
    for r in result.rows:
        for i, run in enumerate(r.runs):
            seed = result.seeds[0] if result.folds else result.seeds[i]
            fold = i + 1 if result.folds else ""
            cells = [_at(r.roc_auc, i), _at(r.test_accuracy, i), _at(r.test_roc_auc, i), _at(r.mean_ap, i),
                     _at(r.test_mean_ap, i)]  # fmt: skip
            w.writerow([r.model, r.params, f"{r.gmacs:.4f}", f"{r.seconds_per_epoch:.2f}", seed, fold,
                        f"{r.val_accuracy[i]:.6f}", *cells, run])  # fmt: skip
    atomic_write_text(result.out_dir / "compare.csv", buf.getvalue())
    atomic_write_json(
        result.out_dir / "compare.json",
        {"seeds": result.seeds, "folds": result.folds, "rows": [asdict(r) for r in result.rows]},
    )


def _at(values: list[float], i: int) -> Any:
    return values[i] if i < len(values) else ""
