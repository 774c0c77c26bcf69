"""``sedensenet cv``: k-fold cross-validation. Every fold is a normal run folder; the summary gives every metric
of the held-out folds as mean ± std with a 95% interval across folds, and pools the out-of-fold predictions.

Fold ``k`` holds out one k-th of the images (stratified by class; groups and duplicate clusters kept whole), and
splits the rest into train and val: the best epoch (and a threshold or temperature, when asked for) is chosen on
that val part, never on the held-out fold. Rerunning the same command continues where it stopped: finished folds
are read back, a killed fold resumes from its last epoch, missing folds train.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sedensenet.compare import RunOutcome, Summary, summarize, train_or_resume
from sedensenet.config import ConfigError
from sedensenet.engine.faults import TrainingInterrupted
from sedensenet.fileio import atomic_write_json, atomic_write_text
from sedensenet.tracking import parent_run

log = logging.getLogger(__name__)

NOT_METRICS = frozenset({"num_samples", "best_epoch", "epochs_run", "labels_averaged", "labels_averaged_map"})
"""Numbers in metrics.json that describe the run rather than score it."""

PLAN_FILE = "cv_plan.json"
"""The settings a cross-validation folder was started with; a rerun with others is refused."""


@dataclass
class CVResult:
    """The folds' held-out metrics, their summary and the pooled out-of-fold metrics, and where the files are."""

    out_dir: Path
    folds: int
    per_fold: list[dict[str, float]]
    summary: dict[str, Summary]
    pooled: dict[str, float]
    runs: list[Path] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    pooled_intervals: dict[str, list[float]] = field(default_factory=dict)
    """Bootstrap 95% intervals of the pooled out-of-fold metrics (over images), where the metrics compute them."""

    def markdown(self) -> str:
        """cv.md: one row per metric, mean ± std, the 95% interval, each fold and the pooled out-of-fold value."""
        s = self.settings
        lines = [
            f"# Cross-validation: {s.get('data')}, {self.folds} folds",
            "",
            f"{s.get('model')}, {_length(s)}, {s.get('image_size')} px, seed {s.get('seed')}; folds "
            f"stratified by {'label' if 'macro_auroc' in self.summary else 'class'}"
            f"{' and grouped by ' + str(s['groups']) if s.get('groups') else ''}, duplicate "
            "clusters kept in one fold; best epoch chosen on each fold's own val part"
            + (f"; TTA {s['tta']}" if s.get("tta", "none") != "none" else ""),
            "",
            "| metric | mean ± std | 95% interval | " + " | ".join(f"fold {k}" for k in range(1, self.folds + 1))
            + " | pooled out-of-fold |",
            "|---|---:|---:|" + "---:|" * self.folds + "---:|",
        ]  # fmt: skip
        for name, stat in self.summary.items():
            cells = [_fmt(f.get(name)) for f in self.per_fold]
            ci = self.pooled_intervals.get(name)
            pooled = _fmt(self.pooled.get(name)) + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")
            lines.append(f"| {name} | {stat.text()} | {stat.interval()} | {' | '.join(cells)} | {pooled} |")
        lines += [
            "",
            f"Each fold's figures are on its held-out images only. 95% interval: Student's t over the {self.folds} "
            "fold values (clipped to [0, 1] for scores that cannot leave it). Pooled out-of-fold: every image scored "
            "once, by the model that did not train on it, each fold deciding with its own threshold (oof.csv"
            + (", roc.png" if "roc_auc" in self.pooled else "")
            + "); its intervals: stratified bootstrap over the images."
            + (
                " threshold and temperature: what each fold chose on its own val part."
                if {"threshold", "temperature"} & set(self.summary)
                else ""
            ),
        ]
        return "\n".join(lines)


def _length(settings: dict[str, Any]) -> str:
    """How long each fold trained: ``10 epochs``, or ``--time 5m per fold`` (``, at most 10 epochs``)."""
    if not settings.get("time"):
        return _epochs(settings.get("epochs"))
    cap = f", at most {_epochs(settings['epochs'])}" if settings.get("epochs") else ""
    return f"--time {settings['time']} per fold{cap}"


def _epochs(n: Any) -> str:
    """``1 epoch``, ``10 epochs``."""
    return f"{n} epoch" if n == 1 else f"{n} epochs"


def _fmt(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"


def default_name(data: str) -> str:
    """The cross-validation folder's name: the built-in set's, the data folder's, or a manifest's folder's name."""
    text = str(data).rstrip("/\\")
    path = Path(text).resolve().parent if text.lower().endswith((".csv", ".tsv")) else Path(text)
    return text.split(":", 1)[1] if text.startswith("builtin:") else (path.name or "cv")


def cross_validate(
    data: str,
    folds: int = 5,
    project: str | os.PathLike = "runs",
    name: str | None = None,
    **overrides: Any,
) -> CVResult:
    """Train one run per fold under ``project/cv/name/fold_k`` and summarise the held-out folds.

    Args:
        data: image folder or ``builtin:NAME``; a ``test/`` folder is left out (every other image is held out once).
        folds: how many folds (at least 2, at most the images, or groups, of the smallest class).
        project: folder that holds the ``cv/`` folder.
        name: the cross-validation's folder name (default: the data set's name); rerunning with the same name
            continues it.
        **overrides: any training setting (epochs, model, image_size, groups, threshold, …), shared by every fold.
            ``time`` is the budget of each fold (a 5-fold cv with ``time="10m"`` takes about 50 minutes).

    Raises:
        ConfigError / DataError: bad settings, a fold count the data cannot fill, a groups file that misses
            files, or a folder started with other settings: all before any training.
    """
    from sedensenet.api import training_config
    from sedensenet.engine.session import scan

    if "fold" in overrides:
        raise ConfigError("cv trains every fold; to train one fold alone use `sedensenet train --folds K --fold N`")
    overrides.pop("exist_ok", None)  # each fold reuses its own folder: that is how a rerun continues it
    base, _ = training_config(data, folds=folds, fold=1, **overrides)
    scan(base)  # every file checked, the folds feasible, the groups file complete: before any training
    out_dir = Path(project) / "cv" / (name or default_name(data))
    settings = {k: v for k, v in base.to_dict().items() if k not in ("project", "name", "exist_ok", "fold", "mlflow")}
    _claim(out_dir, settings)
    runs: list[RunOutcome] = []
    with parent_run(base.mlflow, f"cv {out_dir.name}", tags={"sedensenet.study": "cv"}):
        _train_folds(data, out_dir, base.data_split_seed, folds, overrides, runs)
    return summarize_folds(out_dir, runs, settings)


def _train_folds(
    data: str, out_dir: Path, split_seed: int, folds: int, overrides: dict[str, Any], runs: list[RunOutcome]
) -> None:
    """Train (or resume, or read back) each fold in turn, appending to ``runs``."""
    for k in range(1, folds + 1):
        job = {**overrides, "folds": folds, "fold": k, "split_seed": split_seed}
        log.info("cross-validation %s: fold %d of %d", out_dir, k, folds)
        try:
            runs.append(train_or_resume(data, out_dir / f"fold_{k}", job, held_out=True))
        except TrainingInterrupted as e:
            raise TrainingInterrupted(
                f"{e}\nOr rerun the same cv command: finished folds are kept, fold {k} resumes and the rest train",
                e.run_dir, e.epoch, e.signum, e.command,
            ) from None  # fmt: skip


def _claim(out_dir: Path, settings: dict[str, Any]) -> None:
    """Start ``out_dir`` with these settings, or continue it when it was started with the same ones."""
    plan = out_dir / PLAN_FILE
    wanted = json.loads(json.dumps(settings))
    if plan.is_file():
        before = json.loads(plan.read_text(encoding="utf-8"))
        differ = sorted(k for k in set(before) | set(wanted) if before.get(k) != wanted.get(k))
        if differ:
            shown = ", ".join(f"{k} {before.get(k)!r} -> {wanted.get(k)!r}" for k in differ[:5])
            raise ConfigError(
                f"{out_dir} holds a cross-validation started with other settings ({shown}): rerun it as it was to "
                "continue it, or give --name for a new one"
            )
        log.info("continuing the cross-validation in %s", out_dir)
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(plan, wanted)


def summarize_folds(out_dir: Path, runs: list[RunOutcome], settings: dict[str, Any]) -> CVResult:
    """cv.md, cv.csv, cv.json, oof.csv (and roc.png for two classes) from the finished fold runs."""
    per_fold = [_scores(r.metrics["test"]) for r in runs]
    names = [n for n in per_fold[0] if all(n in f for f in per_fold)]
    summary = {n: summarize([f[n] for f in per_fold], _bounds(n)) for n in names}
    pooled, pooled_ci = _pooled(out_dir, runs)
    result = CVResult(out_dir, len(runs), per_fold, summary, pooled, [r.run_dir for r in runs], settings, pooled_ci)
    atomic_write_text(out_dir / "cv.md", result.markdown() + "\n")
    _write_csv(result)
    atomic_write_json(out_dir / "cv.json", {
        "folds": result.folds, "settings": settings, "per_fold": per_fold, "pooled_out_of_fold": pooled,
        "pooled_out_of_fold_intervals": pooled_ci, "summary": {n: vars(s) for n, s in summary.items()},
        "runs": [str(p) for p in result.runs],
    })  # fmt: skip
    log.info("cross-validation written to %s\n%s", out_dir, result.markdown())
    return result


BOUNDED = ("accuracy", "precision", "recall", "f1", "auc", "auroc", "_map", "hamming_loss", "sensitivity",
           "specificity", "ppv", "npv")  # fmt: skip
"""Metrics (by the end of their name) that lie in [0, 1]: their intervals are clipped to it."""


def _bounds(name: str) -> tuple[float, float] | None:
    return (0.0, 1.0) if name.endswith(BOUNDED) else None


NESTED = {"binary": ("sensitivity", "specificity", "ppv", "npv"), "calibration": ("ece", "temperature")}
"""Scalars inside metrics.json's sections that cv summarises too (the positive class's, and calibration's)."""


def _scores(metrics: dict[str, Any]) -> dict[str, float]:
    """The scalar metrics of a metrics.json (accuracy, F1s, ROC-AUC, loss, sensitivity, ECE, …, and the threshold
    and temperature the fold chose on its val part), not its bookkeeping."""
    flat = dict(metrics)
    for section, names in NESTED.items():
        flat.update({n: (metrics.get(section) or {}).get(n) for n in names})
    return {
        k: float(v)
        for k, v in flat.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k not in NOT_METRICS
    }


def _pooled(out_dir: Path, runs: list[RunOutcome]) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Every held-out prediction in one table (oof.csv), its metrics with their bootstrap intervals and, for two
    classes, its ROC curve."""
    from sedensenet.reports import compute_metrics, plot_roc, read_predictions

    classes = json.loads((runs[0].run_dir / "classes.json").read_text(encoding="utf-8"))
    if "per_label" in runs[0].metrics["test"]:
        return _pooled_labels(out_dir, runs, classes)
    folds, paths, (y, pred, p) = _held_out(runs, read_predictions, classes)
    rows = list(zip(folds, paths, strict=True))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["fold", "path", "label", "predicted", *(f"p_{c}" for c in classes)])
    for (k, path), target, label, row in zip(rows, y, pred, p, strict=True):
        w.writerow([k, path, classes[target], classes[label], *(f"{v:.6g}" for v in row)])
    atomic_write_text(out_dir / "oof.csv", buf.getvalue())
    calibrated = any((r.metrics["test"].get("calibration") or {}).get("temperature") for r in runs)
    # The folds' loss is the raw model's; with a temperature oof.csv holds calibrated probabilities (see nll, ece).
    loss = None if calibrated else float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean())
    positive_name = runs[0].metrics["test"].get("positive_class")
    positive = classes.index(positive_name) if positive_name in classes else (1 if len(classes) == 2 else None)
    # Each fold's own decisions (its threshold); the bootstrap intervals are the metrics machinery's, over images.
    report = compute_metrics(y.tolist(), p, classes, loss=loss, y_pred=pred, positive=positive)
    if positive is not None and len(set(y.tolist())) == 2:
        plot_roc((y == positive).astype(int), p[:, positive], out_dir / "roc.png", pos_label_name=classes[positive])
    pooled = report.to_dict()
    scores = _scores(pooled)
    scores.pop("threshold", None)  # each fold has its own
    return scores, {k: v for k, v in pooled.get("intervals", {}).items() if isinstance(v, list) and len(v) == 2}


def _held_out(runs: list[RunOutcome], read: Any, names: list[str]) -> tuple[list[int], list[str], list[np.ndarray]]:
    """Every fold's held-out predictions.csv read back with ``read`` (single- or multi-label): each row's fold and
    path, and the arrays ``read`` returns, concatenated over the folds in order."""
    folds, paths, parts = [], [], []
    for k, run in enumerate(runs, start=1):
        p, *arrays = read(run.run_dir / "test" / "predictions.csv", names)
        folds += [k] * len(p)
        paths += p
        parts.append(arrays)
    return folds, paths, [np.concatenate(column) for column in zip(*parts, strict=True)]


def _pooled_labels(
    out_dir: Path, runs: list[RunOutcome], labels: list[str]
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Multi-label: every held-out prediction in oof.csv (each fold's decisions, at its own thresholds) and the
    pooled macro and micro AUROC and mAP with their bootstrap intervals (figures that need no threshold)."""
    from sedensenet.reports.multilabel import multilabel_report, read_label_predictions

    folds, paths, (t, d, q) = _held_out(runs, read_label_predictions, labels)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["fold", "path", "label", "predicted", "ignored", *(f"p_{n}" for n in labels)])
    join = lambda mask: "|".join(n for n, m in zip(labels, mask, strict=True) if m)  # noqa: E731
    for k, path, ti, di, qi in zip(folds, paths, t, d, q, strict=True):
        w.writerow([k, path, join(ti == 1), join(di), join(np.isnan(ti)), *(f"{v:.6g}" for v in qi)])
    atomic_write_text(out_dir / "oof.csv", buf.getvalue())
    report = multilabel_report(t, q, labels, [0.5] * len(labels)).to_dict()
    keys = ("macro_auroc", "macro_map", "micro_auroc", "micro_map")
    scores = {k: float(report[k]) for k in keys if report.get(k) is not None}
    return scores, {k: report[f"{k}_ci"] for k in keys if report.get(f"{k}_ci")}


def _write_csv(result: CVResult) -> None:
    names = list(result.summary)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["row", *names])
    for k, fold in enumerate(result.per_fold, start=1):
        w.writerow([f"fold_{k}", *(_cell(fold.get(n)) for n in names)])
    for row in ("mean", "std", "low", "high"):
        label = {"low": "ci95_low", "high": "ci95_high"}.get(row, row)
        w.writerow([label, *(_cell(getattr(result.summary[n], row)) for n in names)])
    w.writerow(["pooled_out_of_fold", *(_cell(result.pooled.get(n)) for n in names)])
    atomic_write_text(result.out_dir / "cv.csv", buf.getvalue())


def _cell(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.6f}"
