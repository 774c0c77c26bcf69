"""Evaluation outputs for a split: metrics.json, classification table, predictions.csv, confusion matrices, ROC,
PR, calibration, top losses."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import numpy as np

from sedensenet.checkpoint import CheckpointMeta, Estimate, EvaluationSummary, SplitEvaluation, update_meta
from sedensenet.data import Sample, load_image
from sedensenet.data.dicom import DicomOptions
from sedensenet.engine.decision import decide, positive_of, postprocess
from sedensenet.engine.loop import EpochResult
from sedensenet.reports import (
    ClassificationReport,
    compute_metrics,
    plot_confusion_matrix,
    plot_pr,
    plot_reliability,
    plot_roc,
    plot_top_losses,
    write_classification_table,
    write_metrics,
    write_predictions,
)
from sedensenet.reports.multilabel import (
    MultiLabelReport,
    multilabel_report,
    plot_label_curves,
    write_label_predictions,
    write_per_label_csv,
)

log = logging.getLogger(__name__)
TOP_LOSSES = 16
_SPLIT_ORDER = ("test", "val")
"""The order of a summary's splits: the figures to quote first."""


def write_evaluation(
    out_dir: Path,
    result: EpochResult,
    classes: list[str],
    samples: list[Sample],
    in_chans: int = 3,
    extra: dict | None = None,
    meta: CheckpointMeta | None = None,
    *,
    seed: int = 0,
) -> ClassificationReport:
    """Compute the metrics of ``result`` (outputs over ``samples``, in order) and write every report file.

    With ``meta``, the outputs go through its temperature and its decision rule (:mod:`~sedensenet.engine.decision`)
    exactly as ``predict`` applies them; without, the argmax of the raw outputs decides. ``seed`` seeds the
    bootstrap intervals (a run's ``--seed``).
    """
    assert result.probs is not None and result.targets is not None
    raw = result.probs
    probs = raw if meta is None else postprocess(raw, meta)
    y_pred = probs.argmax(1) if meta is None else decide(probs, meta)
    positive = (1 if len(classes) == 2 else None) if meta is None else positive_of(meta)
    temperature = None if meta is None else meta.temperature
    report = compute_metrics(
        result.targets.tolist(), probs, classes, loss=result.loss, y_pred=y_pred, positive=positive,
        threshold=None if meta is None else meta.threshold, uncalibrated=raw if temperature else None,
        temperature=temperature, seed=seed,
    )  # fmt: skip
    write_metrics(report, out_dir / "metrics.json", extra=extra)
    write_classification_table(report, out_dir / "classification_report.txt")
    write_predictions(out_dir / "predictions.csv", [s.path for s in samples], result.targets, probs, classes, y_pred)
    cm = np.asarray(report.confusion_matrix)
    plot_confusion_matrix(cm, classes, out_dir / "confusion_matrix.png")
    plot_confusion_matrix(cm, classes, out_dir / "confusion_matrix_normalized.png", normalize=True)
    if positive is not None:
        is_pos = result.targets == positive
        if len(set(result.targets.tolist())) == 2:
            plot_roc(is_pos.astype(int), probs[:, positive], out_dir / "roc.png", pos_label_name=classes[positive])
        plot_pr(is_pos, probs[:, positive], out_dir / "pr.png", classes[positive], threshold=report.threshold)
    if np.all(np.isfinite(probs)):
        plot_reliability(result.targets, probs, out_dir / "calibration.png", uncalibrated=raw if temperature else None)
    dicom = meta.dicom_options() if meta is not None else None
    _top_losses(out_dir / "top_losses.png", result, y_pred, probs, classes, samples, in_chans, dicom)
    log.info("%s\n%s", out_dir / "metrics.json", report.format_text())
    return report


def write_label_evaluation(
    out_dir: Path,
    result: EpochResult,
    classes: list[str],
    samples: list[Sample],
    extra: dict | None = None,
    meta: CheckpointMeta | None = None,
    *,
    seed: int = 0,
) -> MultiLabelReport:
    """A multi-label split's reports: the CheXNet-style table (per label: AUROC and AP with intervals, prevalence,
    and at the label's threshold sensitivity, specificity, PPV, NPV, F1) in metrics.json's ``per_label``, in
    per_label.csv and in the log; macro and micro means; ROC and PR curves per label; predictions.csv.

    The outputs go through ``meta``'s per-label temperatures and are decided at its thresholds, as ``predict``
    decides (0.5 without ``meta``)."""
    assert result.probs is not None and result.targets is not None
    probs = result.probs if meta is None else postprocess(result.probs, meta)
    thresholds = meta.label_thresholds() if meta is not None else [0.5] * len(classes)
    targets = np.asarray(result.targets, dtype=np.float64)
    report = multilabel_report(targets, probs, classes, thresholds, seed=seed, loss=result.loss)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_metrics(report, out_dir / "metrics.json", extra=extra)
    write_per_label_csv(report, out_dir / "per_label.csv")
    plot_label_curves(targets, probs, classes, out_dir / "label_curves.png", thresholds=thresholds)
    write_label_predictions(out_dir / "predictions.csv", [str(s.path) for s in samples], targets, probs, classes,
                            thresholds)  # fmt: skip
    log.info("%s\n%s", out_dir / "metrics.json", report.format_text())
    return report


def _top_losses(
    path: Path,
    result: EpochResult,
    pred: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    samples: list[Sample],
    in_chans: int,
    dicom: DicomOptions | None = None,
) -> None:
    """The most confidently wrong images: wrong decisions sorted by the model's loss, highest first (DICOM files
    windowed as the run windowed them)."""
    assert result.targets is not None and result.losses is not None
    wrong = np.flatnonzero(pred != result.targets)
    order = wrong[np.argsort(-result.losses[wrong], kind="stable")][:TOP_LOSSES]
    images, titles = [], []
    for i in order:
        img = load_image(samples[i].path, in_chans=1 if in_chans == 1 else 3, dicom=dicom)
        img.thumbnail((160, 160))
        images.append(np.asarray(img))
        titles.append(
            f"true: {classes[result.targets[i]]}\npred: {classes[pred[i]]} ({probs[i, pred[i]]:.2f})\n"
            f"loss {result.losses[i]:.2f}"
        )
    plot_top_losses(images, titles, path)


def record_evaluation(checkpoint: Path, meta: CheckpointMeta, results: dict[str, dict[str, Any]]) -> None:
    """Store the final evaluation's figures in ``checkpoint`` (its metadata ``meta``, as the run finished it), so
    the checkpoint alone, also copied out of its run folder, says how well the model did and on what.

    ``results``: per split (``val``, ``test``), the report's ``to_dict()`` with its ``label``, as ``finish`` returns
    them. A run without best weights or without an evaluated split has nothing to record.
    """
    if not results or not checkpoint.is_file() or meta.multilabel:  # a multi-label card: per_label in metrics.json
        return
    meta.evaluation = evaluation_summary(results, meta)
    update_meta(checkpoint, meta)


def evaluation_summary(results: dict[str, dict[str, Any]], meta: CheckpointMeta) -> EvaluationSummary:
    """The headline figures of each evaluated split (test first), with the decision and calibration they used."""
    reports = {split: ClassificationReport.from_dict(results[split]) for split in _SPLIT_ORDER if split in results}
    intervals = next(iter(reports.values())).intervals
    decision = meta.decision or {}
    return EvaluationSummary(
        splits=[_split_figures(split, report, results[split]["label"]) for split, report in reports.items()],
        positive=meta.positive, threshold=meta.threshold, rule=str(decision.get("threshold") or "argmax"),
        chosen_on=decision.get("chosen_on"), temperature=meta.temperature,
        calibrate=str(decision.get("calibrate") or "none"), inference=str(decision.get("inference") or ""),
        confidence=intervals.get("confidence"), resamples=int(intervals.get("resamples", 0)),
        evaluated_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )  # fmt: skip


def _split_figures(split: str, report: ClassificationReport, label: str) -> SplitEvaluation:
    """Accuracy, balanced accuracy, ROC-AUC and, for two classes, the positive class's figures at the threshold."""
    ci = report.intervals
    recall = ci.get("recall", {})
    binary, positive = report.binary or {}, report.positive_class
    negative = next((c for c in report.classes if c != positive), None)
    two = bool(binary) and positive is not None
    return SplitEvaluation(
        split=split, label=label, images=report.num_samples,
        accuracy=Estimate(report.accuracy, ci.get("accuracy")),
        balanced_accuracy=Estimate(report.balanced_accuracy, ci.get("balanced_accuracy")),
        roc_auc=None if report.roc_auc is None else Estimate(report.roc_auc, ci.get("roc_auc")),
        sensitivity=Estimate(binary["sensitivity"], recall.get(positive)) if two else None,
        specificity=Estimate(binary["specificity"], recall.get(negative)) if two else None,
        ppv=Estimate(binary["ppv"]) if two else None,
        npv=Estimate(binary["npv"]) if two else None,
        ece=report.calibration.get("ece"), ece_before=report.calibration.get("ece_before"),
    )  # fmt: skip
