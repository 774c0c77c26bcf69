"""Evaluation outputs for a split: metrics.json, classification table, confusion matrices, ROC, top losses."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from sedensenet.data import Sample, load_image
from sedensenet.engine.loop import EpochResult
from sedensenet.reports import (
    ClassificationReport,
    compute_metrics,
    plot_confusion_matrix,
    plot_roc,
    plot_top_losses,
    write_classification_table,
    write_metrics,
)

log = logging.getLogger(__name__)
TOP_LOSSES = 16


def write_evaluation(
    out_dir: Path,
    result: EpochResult,
    classes: list[str],
    samples: list[Sample],
    in_chans: int = 3,
    extra: dict | None = None,
) -> ClassificationReport:
    """Compute the metrics of ``result`` (outputs over ``samples``, in order) and write every report file."""
    assert result.probs is not None and result.targets is not None
    report = compute_metrics(result.targets.tolist(), result.probs, classes, loss=result.loss)
    write_metrics(report, out_dir / "metrics.json", extra=extra)
    write_classification_table(report, out_dir / "classification_report.txt")
    cm = np.asarray(report.confusion_matrix)
    plot_confusion_matrix(cm, classes, out_dir / "confusion_matrix.png")
    plot_confusion_matrix(cm, classes, out_dir / "confusion_matrix_normalized.png", normalize=True)
    if len(classes) == 2 and len(set(result.targets.tolist())) == 2:
        plot_roc(result.targets, result.probs[:, 1], out_dir / "roc.png", pos_label_name=classes[1])
    _top_losses(out_dir / "top_losses.png", result, classes, samples, in_chans)
    log.info("%s\n%s", out_dir / "metrics.json", report.format_table())
    return report


def _top_losses(path: Path, result: EpochResult, classes: list[str], samples: list[Sample], in_chans: int) -> None:
    """The most confidently wrong images: wrong predictions sorted by loss, highest first."""
    assert result.probs is not None and result.targets is not None and result.losses is not None
    pred = result.probs.argmax(1)
    wrong = np.flatnonzero(pred != result.targets)
    order = wrong[np.argsort(-result.losses[wrong], kind="stable")][:TOP_LOSSES]
    images, titles = [], []
    for i in order:
        img = load_image(samples[i].path, in_chans=1 if in_chans == 1 else 3)
        img.thumbnail((160, 160))
        images.append(np.asarray(img))
        titles.append(
            f"true: {classes[result.targets[i]]}\npred: {classes[pred[i]]} ({result.probs[i, pred[i]]:.2f})\n"
            f"loss {result.losses[i]:.2f}"
        )
    plot_top_losses(images, titles, path)
