"""Metrics and decisions of multi-label runs (several findings per image), as CheXNet reports them: per label
AUROC and average precision with stratified-bootstrap intervals, the threshold chosen on validation and the
sensitivity, specificity, PPV, NPV and F1 at it; macro and micro means; subset accuracy, Hamming loss, sample F1.

Inputs are plain arrays: ``targets`` (N, K) float with 1 present, 0 absent and NaN ignored (an uncertain or
missing label), ``probs`` (N, K) sigmoid outputs. An ignored entry counts in no metric of its label, and a label's
metrics (intervals included) depend on its own column only. The bootstrap is ``reports.clinical``'s: its draws,
its blocks, its weighted AUC/AP. Nothing here knows about models.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from sedensenet.config import ConfigError, ThresholdRule
from sedensenet.display import display_width
from sedensenet.fileio import atomic_path
from sedensenet.reports.clinical import (
    BOOTSTRAP_RESAMPLES,
    binary_metrics,
    check_bootstrap,
    choose_threshold,
    draw_counts,
    percentile_interval,
    rank_scores,
    stratified_draws,
    weighted_auc_ap,
)
from sedensenet.reports.diagnostic_plots import unit_square
from sedensenet.reports.figures import figure_writer, new_figure, save_figure
from sedensenet.reports.metrics import finite_or_none

logger = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5
"""A label's threshold when its rule cannot choose one (one class only, or no entry, on validation)."""

PER_LABEL_COLUMNS = (
    "n", "prevalence", "positives", "negatives", "ignored", "auroc", "auroc_ci", "ap", "ap_ci", "threshold",
    "sensitivity", "specificity", "ppv", "npv", "f1", "tp", "fp", "tn", "fn", "note",
)  # fmt: skip
"""The keys of each ``per_label`` entry, in the order of ``per_label.csv`` (whose intervals are two columns)."""


@dataclass
class MultiLabelReport:
    """Metrics of one multi-label evaluation pass; every field is a plain Python value (None: undefined)."""

    labels: list[str]
    per_label: dict[str, dict[str, Any]]
    """Keyed by label name; the keys are :data:`PER_LABEL_COLUMNS`. ``n``: the label's unmasked entries;
    ``ignored``: its masked ones; ``auroc`` None with one class only, ``ap`` None without a positive (``note``
    says why); ``*_ci``: ``[lo, hi]``; sensitivity etc. at ``threshold`` (``p >= threshold`` is positive)."""
    macro_auroc: float | None
    macro_auroc_ci: list[float] | None
    labels_averaged: int
    """How many labels the macro AUROC averages: those with both classes in the split."""
    macro_map: float | None
    macro_map_ci: list[float] | None
    labels_averaged_map: int
    """How many labels the macro mAP averages: those with at least one positive in the split."""
    micro_auroc: float | None
    micro_auroc_ci: list[float] | None
    micro_map: float | None
    micro_map_ci: list[float] | None
    subset_accuracy: float | None
    """Share of images whose every unmasked label is decided right (images with no unmasked label left out)."""
    hamming_loss: float | None
    """Share of unmasked entries decided wrong."""
    sample_f1: float | None
    """Mean over images of F1 over the image's unmasked labels; an image with no positive and none called
    positive scores 1 (sklearn's ``zero_division=1``); images with no unmasked label are left out."""
    num_samples: int
    loss: float | None = None
    intervals: dict[str, Any] = field(default_factory=dict)
    """How the intervals were made: ``confidence``, ``resamples``, ``seed``, ``method``; empty: none."""

    def to_dict(self) -> dict[str, Any]:
        """Return the report as a JSON-ready dict (non-finite floats become None)."""
        return finite_or_none(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MultiLabelReport:
        """Rebuild a report from :meth:`to_dict` output (unknown keys are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def format_text(self) -> str:
        """The CheXNet-style console table: one row per finding, then the macro and micro means."""
        head = ["Finding", "n", "prevalence", "AUROC (95% CI)", "AP (95% CI)", "threshold"]
        head += ["sens", "spec", "PPV", "NPV", "F1"]
        rows = [[name, *_table_cells(self.per_label[name])] for name in self.labels]
        widths = [max(display_width(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
        lines = [
            "  ".join(_pad(str(c), w, left=i == 0) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            for r in [head, *rows]
        ]
        lines.insert(1, "-" * len(lines[0]))
        lines.append("")
        lines.append(
            f"macro AUROC {_estimate(self.macro_auroc, self.macro_auroc_ci)} over {self.labels_averaged} of "
            f"{len(self.labels)} labels; macro mAP {_estimate(self.macro_map, self.macro_map_ci)} over "
            f"{self.labels_averaged_map}"
        )
        lines.append(
            f"micro AUROC {_estimate(self.micro_auroc, self.micro_auroc_ci)}; "
            f"micro mAP {_estimate(self.micro_map, self.micro_map_ci)}"
        )
        lines.append(
            f"subset accuracy {_cell(self.subset_accuracy)}, Hamming loss {_cell(self.hamming_loss)}, "
            f"sample F1 {_cell(self.sample_f1)} ({self.num_samples} images)"
        )
        lines += [
            f"note: {name}: {self.per_label[name]['note']}" for name in self.labels if self.per_label[name]["note"]
        ]
        if self.intervals:
            lines.append(
                f"[{self.intervals['confidence']:.0%} intervals: {self.intervals['method']}, "
                f"{self.intervals['resamples']} resamples, seed {self.intervals['seed']}]"
            )
        return "\n".join(lines) + "\n"


def _cell(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _estimate(value: float | None, ci: Sequence[float | None] | None) -> str:
    if value is None:
        return "-"
    if not ci or ci[0] is None:
        return f"{value:.3f}"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _table_cells(m: dict[str, Any]) -> list[str]:
    cells = [str(m["n"]), _cell(m["prevalence"]), _estimate(m["auroc"], m["auroc_ci"]), _estimate(m["ap"], m["ap_ci"])]
    return (
        cells + [_cell(m["threshold"], 4)] + [_cell(m[k]) for k in ("sensitivity", "specificity", "ppv", "npv", "f1")]
    )


def _pad(text: str, width: int, *, left: bool) -> str:
    space = " " * max(0, width - display_width(text))
    return text + space if left else space + text


def _check(targets: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``targets`` and ``probs`` as float64 (N, K) arrays, refused when they do not fit together."""
    t = np.asarray(targets, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    if t.ndim != 2 or t.shape != p.shape:
        raise ValueError(f"targets and probs must both be (N, K), got {t.shape} and {p.shape}")
    known = t[~np.isnan(t)]
    if not np.all((known == 0) | (known == 1)):
        raise ValueError("targets must hold 1 (present), 0 (absent) or NaN (ignored)")
    if not np.all(np.isfinite(p)):
        raise ValueError("probs contain NaN or infinity: no metric can be computed")
    return t, p


def _column(t: np.ndarray, p: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Label k's unmasked entries: (is_positive, scores)."""
    known = ~np.isnan(t[:, k])
    return t[known, k] == 1, p[known, k]


def choose_label_thresholds(
    targets: np.ndarray, probs: np.ndarray, rule: ThresholdRule
) -> tuple[list[float], list[str | None]]:
    """One threshold per label, chosen by ``rule`` on that label's unmasked entries (``clinical.choose_threshold``).

    A rule that needs validation cannot choose for a label with one class only or no entry: that label gets
    :data:`DEFAULT_THRESHOLD` and a note saying why. A fixed rule gives its value to every label.

    Returns:
        The K thresholds and K notes (None where the rule chose).

    Raises:
        ConfigError: for ``argmax``, which is no multi-label rule (the caller maps it to ``f1``).
    """
    if rule.kind == "argmax":
        raise ConfigError("argmax is not a multi-label rule: each label needs a threshold (use f1, the default)")
    t, p = _check(targets, probs)
    thresholds: list[float] = []
    notes: list[str | None] = []
    for k in range(t.shape[1]):
        y, s = _column(t, p, k)
        if rule.needs_validation and (len(y) == 0 or y.all() or not y.any()):
            kind = "no labelled image" if len(y) == 0 else ("only positives" if y.all() else "only negatives")
            thresholds.append(DEFAULT_THRESHOLD)
            notes.append(f"{kind} on validation: threshold {DEFAULT_THRESHOLD} instead of {rule}")
            continue
        thresholds.append(choose_threshold(y, s, rule))
        notes.append(None)
    return thresholds, notes


def multilabel_report(
    targets: np.ndarray,
    probs: np.ndarray,
    labels: list[str],
    thresholds: Sequence[float],
    *,
    seed: int = 0,
    resamples: int = BOOTSTRAP_RESAMPLES,
    confidence: float = 0.95,
    loss: float | None = None,
) -> MultiLabelReport:
    """Every figure of a multi-label evaluation, with bootstrap intervals.

    Args:
        targets: (N, K) float: 1 present, 0 absent, NaN ignored.
        probs: (N, K) probabilities (after any temperatures).
        labels: the K label names, in column order.
        thresholds: the K thresholds (``p >= threshold`` is positive).
        seed, resamples, confidence: the bootstrap (``resamples=0``: no intervals). Each label is resampled
            within its positives and its negatives (stratified) from a generator seeded by ``(seed, label)``, so
            one label's intervals never depend on another's entries; macro and micro means resample images.
        loss: the pass's mean loss, stored as is.

    Raises:
        ValueError: on shapes, targets or thresholds that do not fit together.
    """
    t, p = _check(targets, probs)
    if len(labels) != t.shape[1] or len(thresholds) != t.shape[1]:
        raise ValueError(f"{t.shape[1]} label columns need as many names and thresholds: got {len(labels)}, "
                         f"{len(thresholds)}")  # fmt: skip
    if resamples:
        check_bootstrap(resamples, confidence)
    per_label = {
        name: _label_metrics(t, p, k, float(thresholds[k]), seed=seed, resamples=resamples, confidence=confidence)
        for k, name in enumerate(labels)
    }
    auc_labels = [k for k, name in enumerate(labels) if per_label[name]["auroc"] is not None]
    ap_labels = [k for k, name in enumerate(labels) if per_label[name]["ap"] is not None]
    ci = _image_intervals(t, p, auc_labels, ap_labels, seed=seed, resamples=resamples, confidence=confidence)
    decided = p >= np.asarray(thresholds, dtype=np.float64)[None, :]
    micro_y, micro_s = t[~np.isnan(t)] == 1, p[~np.isnan(t)]
    micro_auroc = float(roc_auc_score(micro_y, micro_s)) if 0 < micro_y.sum() < len(micro_y) else None
    micro_map = float(average_precision_score(micro_y, micro_s)) if micro_y.any() else None
    return MultiLabelReport(
        labels=list(labels),
        per_label=per_label,
        macro_auroc=_mean([per_label[labels[k]]["auroc"] for k in auc_labels]),
        macro_auroc_ci=ci.get("macro_auroc"),
        labels_averaged=len(auc_labels),
        macro_map=_mean([per_label[labels[k]]["ap"] for k in ap_labels]),
        macro_map_ci=ci.get("macro_map"),
        labels_averaged_map=len(ap_labels),
        micro_auroc=micro_auroc,
        micro_auroc_ci=ci.get("micro_auroc") if micro_auroc is not None else None,
        micro_map=micro_map,
        micro_map_ci=ci.get("micro_map") if micro_map is not None else None,
        **_sample_metrics(t, decided),
        num_samples=len(t),
        loss=None if loss is None else float(loss),
        intervals=(
            {"confidence": confidence, "resamples": resamples, "seed": seed, "method": _METHOD} if resamples else {}
        ),
    )


_METHOD = "per label stratified bootstrap (positives and negatives apart); macro and micro: images resampled"


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _label_metrics(
    t: np.ndarray, p: np.ndarray, k: int, threshold: float, *, seed: int, resamples: int, confidence: float
) -> dict[str, Any]:
    """Label k's row of the table: counts, AUROC and AP (with intervals), and the figures at ``threshold``."""
    y, s = _column(t, p, k)
    positives = int(y.sum())
    out: dict[str, Any] = {
        "n": len(y), "prevalence": positives / len(y) if len(y) else None, "positives": positives,
        "negatives": len(y) - positives, "ignored": len(t) - len(y), "auroc": None, "auroc_ci": None,
        "ap": None, "ap_ci": None, "threshold": threshold, "note": None,
    }  # fmt: skip
    out.update(binary_metrics(y.astype(np.int64), (s >= threshold).astype(np.int64), positive=1))
    if len(y) == 0:
        out["note"] = f"no labelled image in this split ({len(t)} ignored): no metric"
        return {key: out[key] for key in PER_LABEL_COLUMNS}
    if positives:
        out["ap"] = float(average_precision_score(y, s))
    if 0 < positives < len(y):
        out["auroc"] = float(roc_auc_score(y, s))
    else:
        out["note"] = (
            "only positives in this split: no AUROC" if positives else "no positive in this split: no AUROC or AP"
        )
    if resamples and positives:
        rng = np.random.default_rng([seed, 1 + k])  # the label's own stream: other labels' entries cannot move it
        ranked = rank_scores(y, s)
        n0 = len(ranked.negatives)  # the draws index negatives then positives, each in score order
        groups = [np.arange(n0), n0 + np.arange(positives)]
        parts = []
        for idx in stratified_draws(groups, resamples, rng):
            counts = draw_counts(idx, len(y))
            parts.append(weighted_auc_ap(ranked, counts[:, n0:], counts[:, :n0]))
        auc, ap = (np.concatenate(v) for v in zip(*parts, strict=True))
        out["ap_ci"] = percentile_interval(ap, confidence)
        out["auroc_ci"] = percentile_interval(auc, confidence) if out["auroc"] is not None else None
    return {key: out[key] for key in PER_LABEL_COLUMNS}


def _image_intervals(
    t: np.ndarray,
    p: np.ndarray,
    auc_labels: list[int],
    ap_labels: list[int],
    *,
    seed: int,
    resamples: int,
    confidence: float,
) -> dict[str, list[float]]:
    """Intervals of the macro and micro means from one bootstrap over images (rows), each image keeping its mask.

    A resample where a label loses one class leaves that label out of its macro mean for that resample.
    """
    if not resamples or not ap_labels:
        return {}
    known = ~np.isnan(t)
    columns = {}  # label -> (its ranked column, the images of its positives, of its negatives)
    for k in sorted(set(auc_labels) | set(ap_labels)):
        rows = np.flatnonzero(known[:, k])
        ranked = rank_scores(t[rows, k] == 1, p[rows, k])
        columns[k] = (ranked, rows[ranked.positives], rows[ranked.negatives])
    pooled_rows, pooled_k = np.nonzero(known)
    ranked = rank_scores(t[pooled_rows, pooled_k] == 1, p[pooled_rows, pooled_k])
    pooled = (ranked, pooled_rows[ranked.positives], pooled_rows[ranked.negatives])
    rng = np.random.default_rng([seed, 0])
    stats: dict[str, list[np.ndarray]] = {"macro_auroc": [], "macro_map": [], "micro_auroc": [], "micro_map": []}
    for idx in stratified_draws([np.arange(len(t))], resamples, rng, width=len(pooled_rows)):
        counts = draw_counts(idx, len(t))  # (b, N): how often each image is drawn
        scores = {k: weighted_auc_ap(r, counts[:, pos], counts[:, neg]) for k, (r, pos, neg) in columns.items()}
        stats["macro_auroc"].append(_row_means([scores[k][0] for k in auc_labels]))
        stats["macro_map"].append(_row_means([scores[k][1] for k in ap_labels]))
        micro_auc, micro_ap = weighted_auc_ap(pooled[0], counts[:, pooled[1]], counts[:, pooled[2]])
        stats["micro_auroc"].append(micro_auc)
        stats["micro_map"].append(micro_ap)
    out = {key: percentile_interval(np.concatenate(v), confidence) for key, v in stats.items()}
    if not auc_labels:
        out.pop("macro_auroc")
    return out


def _row_means(columns: list[np.ndarray]) -> np.ndarray:
    """Mean of each resample over the labels defined in it (NaN where none is)."""
    if not columns:
        return np.full(0, np.nan)
    values = np.stack(columns, 1)  # (b, labels)
    defined = np.isfinite(values)
    with np.errstate(invalid="ignore"):
        return np.where(defined, values, 0).sum(1) / defined.sum(1)


def _sample_metrics(t: np.ndarray, decided: np.ndarray) -> dict[str, float | None]:
    """Subset accuracy, Hamming loss and sample-averaged F1 over the unmasked entries (see the report's fields)."""
    known = ~np.isnan(t)
    truth = t == 1  # NaN compares False: masked entries are then left out through ``known``
    wrong = (truth != decided) & known
    compared = known.any(1)
    if not compared.any():
        return {"subset_accuracy": None, "hamming_loss": None, "sample_f1": None}
    tp = (truth & decided & known).sum(1)
    errors = wrong.sum(1)  # FP + FN
    f1 = np.divide(2 * tp, 2 * tp + errors, out=np.ones(len(t)), where=2 * tp + errors > 0)
    return {
        "subset_accuracy": float(np.mean(errors[compared] == 0)),
        "hamming_loss": float(wrong.sum() / known.sum()),
        "sample_f1": float(np.mean(f1[compared])),
    }


def write_per_label_csv(report: MultiLabelReport, path: str | os.PathLike) -> Path:
    """Write ``per_label.csv`` (UTF-8): one row per label, the columns ``label`` and :data:`PER_LABEL_COLUMNS`,
    each interval as ``*_ci_low`` and ``*_ci_high``; an undefined value is an empty cell."""
    header = ["label"]
    for key in PER_LABEL_COLUMNS:
        header += [f"{key}_low", f"{key}_high"] if key.endswith("_ci") else [key]
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for name in report.labels:
            row: list[Any] = [name]
            for key in PER_LABEL_COLUMNS:
                value = report.per_label[name][key]
                row += (list(value) if value else [None, None]) if key.endswith("_ci") else [value]
            writer.writerow(["" if v is None else v for v in row])
    return Path(path)


@figure_writer
def write_label_predictions(
    path: str | os.PathLike, paths: Sequence[str], targets: np.ndarray, probs: np.ndarray, labels: Sequence[str],
    thresholds: Sequence[float],
) -> Path:  # fmt: skip
    """predictions.csv of a multi-label split: ``path``, ``label`` (the true set, ``|``-joined), ``predicted`` (the
    labels at or above their thresholds), ``ignored`` (labels masked for the image), ``p_<label>`` per label."""
    decided = np.asarray(probs) >= np.asarray(thresholds)[None, :]
    join = lambda mask: "|".join(n for n, m in zip(labels, mask, strict=True) if m)  # noqa: E731
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["path", "label", "predicted", "ignored", *(f"p_{n}" for n in labels)])
        for name, t, d, p in zip(paths, targets, decided, probs, strict=True):
            w.writerow([name, join(t == 1), join(d), join(np.isnan(t)), *(f"{float(v):.6g}" for v in p)])
    return Path(path)


def read_label_predictions(
    path: str | os.PathLike, labels: Sequence[str]
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """:func:`write_label_predictions`'s file back: paths, targets (N, K) with NaN where ignored, the decisions
    (N, K) booleans and the probabilities (N, K)."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))

    def mask(row: dict[str, str], key: str) -> list[bool]:
        names = set(filter(None, row[key].split("|")))
        return [n in names for n in labels]

    targets = np.array([[math.nan if i else float(t) for t, i in zip(mask(r, "label"), mask(r, "ignored"),
                                                                      strict=True)] for r in rows])  # fmt: skip
    decided = np.array([mask(r, "predicted") for r in rows], dtype=bool)
    probs = np.array([[float(r[f"p_{n}"]) for n in labels] for r in rows], dtype=np.float64)
    k = len(labels)
    return [r["path"] for r in rows], targets.reshape(-1, k), decided.reshape(-1, k), probs.reshape(-1, k)


def plot_label_curves(
    targets: np.ndarray,
    probs: np.ndarray,
    labels: Sequence[str],
    path: str | os.PathLike,
    *,
    thresholds: Sequence[float] | None = None,
) -> Path:
    """ROC (left) and precision-recall (right) of every label in one figure, one line per label, each label's
    operating point (its threshold) marked; a label with one class only has no curve and is named below.

    Returns:
        The path written.
    """
    t, p = _check(targets, probs)
    fig = new_figure((12, 5.5))
    roc_ax, pr_ax = fig.subplots(1, 2)
    roc_ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1)
    cmap = colormaps["tab10" if len(labels) <= 10 else "tab20"]
    skipped = []
    for k, name in enumerate(labels):
        y, s = _column(t, p, k)
        if not 0 < y.sum() < len(y):
            skipped.append(str(name))
            continue
        color = cmap(k % cmap.N)
        fpr, tpr, _ = roc_curve(y, s)
        precision, recall, _ = precision_recall_curve(y, s)
        roc_ax.plot(fpr, tpr, color=color, linewidth=1.5, label=f"{name} ({roc_auc_score(y, s):.3f})")
        pr_ax.step(recall, precision, where="post", color=color, linewidth=1.5,
                   label=f"{name} ({average_precision_score(y, s):.3f})")  # fmt: skip
        if thresholds is not None:
            called = s >= thresholds[k]
            sens = float(called[y].mean())
            roc_ax.plot([float(called[~y].mean())], [sens], "o", color=color, markersize=5)
            pr_ax.plot([sens], [float(y[called].mean()) if called.any() else 1.0], "o", color=color, markersize=5)
    legend = 7 if len(labels) > 6 else 9
    unit_square(roc_ax, "False positive rate", "True positive rate", "ROC per label (AUROC)", "lower right", legend)
    unit_square(
        pr_ax, "Recall (sensitivity)", "Precision (PPV)", "Precision-recall per label (AP)", "lower left", legend
    )
    if skipped:
        fig.suptitle(f"one class only, no curve: {', '.join(skipped)}", fontsize=9)
    return save_figure(fig, path)


def binary_accuracy(targets: np.ndarray, probs: np.ndarray) -> float:
    """Keras' binary accuracy over unmasked entries: the share decided right at 0.5 (NaN when every entry is
    masked)."""
    t = np.asarray(targets, dtype=np.float64)
    known = ~np.isnan(t)
    if not known.any():
        return float("nan")
    right = (np.asarray(probs, dtype=np.float64) >= 0.5) == (t == 1)
    return float(right[known].mean())


def epoch_scores(targets: np.ndarray, probs: np.ndarray, task: str) -> dict[str, float]:
    """The per-epoch columns ``val_balanced_accuracy``, ``val_auc`` and ``val_mAP`` (fast: no intervals).

    ``task="single"``: ``targets`` (N,) class indices, ``probs`` (N, C) softmax. Balanced accuracy is the mean
    recall of the argmax over the classes present (sklearn's ``balanced_accuracy_score``); AUC is that of class 1
    for two classes, else the macro one-vs-rest AUC over the classes present; mAP the macro one-vs-rest average
    precision over the classes present. ``task="multi"``: ``targets`` (N, K) with NaN ignored; balanced accuracy
    is the mean over labels with both classes of (sensitivity + specificity) / 2 at 0.5, AUC the macro AUROC over
    those labels, mAP the macro AP over labels with a positive. A score that is undefined (one class only,
    non-finite outputs, no sample) is NaN.
    """
    nan = float("nan")
    p = np.asarray(probs, dtype=np.float64)
    if task not in ("single", "multi"):
        raise ValueError(f"task must be 'single' or 'multi', got {task!r}")
    if len(p) == 0 or not np.all(np.isfinite(p)):
        return {"val_balanced_accuracy": nan, "val_auc": nan, "val_mAP": nan}
    if task == "multi":
        t = np.asarray(targets, dtype=np.float64)
        columns = [_column(t, p, k) for k in range(t.shape[1])]
    else:
        y = np.asarray(targets, dtype=np.int64)
        present = np.unique(y)
        columns = [(y == c, p[:, c]) for c in present]
        if p.shape[1] == 2:  # two classes: the AUC is class 1's, not the mean of two equal numbers
            columns = [(y == 1, p[:, 1])]
    both = [(yk, sk) for yk, sk in columns if 0 < yk.sum() < len(yk)]
    if task == "multi":
        balanced = [(np.mean(sk[yk] >= 0.5) + np.mean(sk[~yk] < 0.5)) / 2 for yk, sk in both]
        ap_columns = [(yk, sk) for yk, sk in columns if yk.any()]
    else:
        decided = p.argmax(1)
        balanced = [np.mean(decided[y == c] == c) for c in present]
        ap_columns = [(y == c, p[:, c]) for c in present]
    return {
        "val_balanced_accuracy": float(np.mean(balanced)) if balanced else nan,
        "val_auc": float(np.mean([roc_auc_score(yk, sk) for yk, sk in both])) if both else nan,
        "val_mAP": float(np.mean([average_precision_score(yk, sk) for yk, sk in ap_columns])) if ap_columns else nan,
    }
