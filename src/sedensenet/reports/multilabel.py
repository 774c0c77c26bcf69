"""Placeholder for the multi-label metrics module (the mlmetrics branch replaces this file whole): the per-epoch
scores work; the rest raises NotImplementedError."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, balanced_accuracy_score, roc_auc_score

MultiLabelReport = Any


def _todo(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("reports.multilabel: merged from the mlmetrics branch")


multilabel_report = plot_label_curves = write_per_label_csv = _todo
apply_label_temperatures = choose_label_thresholds = fit_label_temperatures = _todo


def epoch_scores(targets: np.ndarray, probs: np.ndarray, task: str) -> dict[str, float]:
    """Balanced accuracy, macro AUROC and mAP of one validation pass."""
    nan = {"val_balanced_accuracy": math.nan, "val_auc": math.nan, "val_mAP": math.nan}
    if task == "single":
        present = sorted(set(targets.tolist()))
        out = dict(nan, val_balanced_accuracy=float(balanced_accuracy_score(targets, probs.argmax(1))))
        if len(present) < 2:
            return out
        if probs.shape[1] == 2:
            out["val_auc"] = float(roc_auc_score(targets, probs[:, 1]))
        else:
            out["val_auc"] = float(np.mean([roc_auc_score(targets == c, probs[:, c]) for c in present]))
        out["val_mAP"] = float(np.mean([average_precision_score(targets == c, probs[:, c]) for c in present]))
        return out
    aucs, aps = [], []
    for k in range(targets.shape[1]):
        known = ~np.isnan(targets[:, k])
        y, p = targets[known, k] > 0.5, probs[known, k]
        if y.any() and not y.all():
            aucs.append(roc_auc_score(y, p))
        if y.any():
            aps.append(average_precision_score(y, p))
    return dict(
        nan, val_auc=float(np.mean(aucs)) if aucs else math.nan, val_mAP=float(np.mean(aps)) if aps else math.nan
    )
