"""Figures that score a classifier's outputs: confusion matrices, the ROC curve, the precision-recall curve with
the operating point, and the reliability diagram before/after temperature scaling."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import rcParams
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from sedensenet.reports.calibration import ECE_BINS, expected_calibration_error, reliability_bins
from sedensenet.reports.figures import Margins, figure_writer, new_figure, save_figure, text_families
from sedensenet.reports.metrics import normalize_confusion_matrix

UNIT_SQUARE = Margins()
"""The ROC, precision-recall and reliability diagrams: a square of two rates from 0 to 1, labelled on both axes."""


@figure_writer
def plot_confusion_matrix(
    cm: np.ndarray | Sequence[Sequence[int]],
    classes: Sequence[str],
    path: str | os.PathLike,
    normalize: bool = False,
) -> Path:
    """Draw a confusion matrix (rows: true class, columns: predicted) with the value in each cell.

    Args:
        cm: (C, C) counts.
        classes: the C class names.
        path: where the PNG goes.
        normalize: show each row divided by its total (recall per true class; empty rows stay 0).

    Returns:
        The path written.
    """
    counts = np.asarray(cm)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] != len(classes):
        raise ValueError(f"cm must be ({len(classes)}, {len(classes)}) to match classes, got shape {counts.shape}")
    if len(classes) == 0:
        raise ValueError("cannot plot a confusion matrix without classes")
    values = normalize_confusion_matrix(counts) if normalize else counts.astype(np.float64)
    n, names = len(classes), [str(c) for c in classes]
    side = min(4.0 + 0.45 * n, 24.0)
    fig = new_figure((side + 1.0, side), constrained=False)
    ax = fig.add_subplot()
    vmax = 1.0 if normalize else max(float(values.max()), 1.0)
    image = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if n <= 40:  # beyond that the numbers are unreadable anyway
        _annotate_cells(ax, values, image, normalize, fontsize=max(5.0, 11.0 - 0.15 * n))
    rotate = n > 6 or max(len(name) for name in names) > 8
    ax.set_xticks(range(n), names, rotation=45 if rotate else 0, ha="right" if rotate else "center")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title("Confusion matrix (normalized by true class)" if normalize else "Confusion matrix", y=1.0)
    _class_name_margins(fig, names, rotate)
    return save_figure(fig, path)


def _class_name_margins(fig: Figure, names: list[str], rotate: bool) -> None:
    """Margins for the class names as tick labels, each name measured once (constrained layout lays out every
    tick on each draw): the longest name left of the rows and under the columns (at 45 degrees when ``rotate``),
    the colorbar's labels on the right."""
    width, height = fig.get_size_inches()
    fonts = FontProperties(size=rcParams["xtick.labelsize"], family=text_families())
    renderer = fig.canvas.get_renderer()
    sizes = [renderer.get_text_width_height_descent(name, fonts, ismath=False)[:2] for name in names]
    longest, line = max(w for w, _ in sizes) / fig.dpi, max(h for _, h in sizes) / fig.dpi
    labelled = 0.1 + line + 0.4  # tick and pad, the names, the axis label with its pad and a margin
    below = (longest + line) * math.sqrt(0.5) if rotate else line
    left = longest + labelled
    if rotate:  # the first column's name reaches left of its column, by up to its length at 45 degrees
        first = sizes[0][0] / fig.dpi
        left = max(left, (first + line) * math.sqrt(0.5) - (width - left - 1.2) / len(names) / 2 + 0.15)
    fig.subplots_adjust(left=left / width, right=1 - 0.7 / width, bottom=(below + labelled) / height,
                        top=1 - 0.38 / height)  # fmt: skip


def _annotate_cells(ax: Axes, values: np.ndarray, image: Any, normalize: bool, fontsize: float) -> None:
    for (row, col), value in np.ndenumerate(values):
        red, green, blue, _ = image.cmap(image.norm(value))
        # Relative luminance of the cell colour decides between black and white text.
        dark = 0.2126 * red + 0.7152 * green + 0.0722 * blue < 0.5
        text = f"{value:.2f}" if normalize else f"{int(round(value))}"
        ax.text(col, row, text, ha="center", va="center", fontsize=fontsize, color="white" if dark else "black")


@figure_writer
def plot_roc(
    y_true: Sequence[int],
    scores_positive: Sequence[float],
    path: str | os.PathLike,
    pos_label_name: str,
) -> Path:
    """Draw the ROC curve of a two-class problem, with its AUC in the legend and the chance diagonal.

    Args:
        y_true: 0/1 labels, 1 being the positive class.
        scores_positive: the score (probability) of the positive class per sample.
        path: where the PNG goes.
        pos_label_name: the positive class's name, for the legend.

    Returns:
        The path written.
    """
    y = np.asarray(y_true).reshape(-1)
    scores = np.asarray(scores_positive, dtype=np.float64).reshape(-1)
    if len(y) != len(scores):
        raise ValueError(f"y_true has {len(y)} labels but scores_positive has {len(scores)} scores")
    fig = new_figure((5.5, 5), constrained=False)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance (AUC = 0.500)")
    if len(np.unique(y)) == 2 and np.all(np.isfinite(scores)):
        fpr, tpr, _ = roc_curve(y, scores, pos_label=1)
        auc = roc_auc_score(y, scores)
        ax.plot(fpr, tpr, linewidth=2, label=f"{pos_label_name} (AUC = {auc:.3f})")
    else:
        ax.text(0.5, 0.3, "ROC undefined: both classes are needed", ha="center", transform=ax.transAxes)
    unit_square(ax, "False positive rate", "True positive rate", f"ROC: {pos_label_name} vs rest", "lower right")
    UNIT_SQUARE.apply(fig)
    return save_figure(fig, path)


@figure_writer
def plot_pr(
    is_positive: Sequence[bool],
    scores_positive: Sequence[float],
    path: str | os.PathLike,
    pos_label_name: str,
    threshold: float | None = None,
) -> Path:
    """Draw the precision-recall curve of the positive class, its average precision, the prevalence baseline
    and, when given, the operating point of ``threshold``.

    Returns:
        The path written.
    """
    y = np.asarray(is_positive, dtype=bool).reshape(-1)
    scores = np.asarray(scores_positive, dtype=np.float64).reshape(-1)
    if len(y) != len(scores):
        raise ValueError(f"is_positive has {len(y)} labels but scores_positive has {len(scores)} scores")
    fig = new_figure((5.5, 5), constrained=False)
    ax = fig.add_subplot()
    prevalence = float(y.mean()) if len(y) else 0.0
    ax.axhline(prevalence, linestyle="--", color="0.6", linewidth=1, label=f"chance (prevalence {prevalence:.3f})")
    if y.any() and np.all(np.isfinite(scores)):
        precision, recall, _ = precision_recall_curve(y, scores)
        ap = average_precision_score(y, scores)
        ax.step(recall, precision, where="post", linewidth=2, label=f"{pos_label_name} (AP = {ap:.3f})")
        if threshold is not None:
            called = scores >= threshold
            tp = int(np.sum(called & y))
            p_op = tp / called.sum() if called.any() else 1.0
            ax.plot([tp / y.sum()], [p_op], "o", color="C3", label=f"threshold {threshold:.3f}")
    else:
        ax.text(0.5, 0.5, "PR curve undefined: no positive sample", ha="center", transform=ax.transAxes)
    unit_square(ax, "Recall (sensitivity)", "Precision (PPV)", f"Precision-recall: {pos_label_name}", "lower left")
    UNIT_SQUARE.apply(fig)
    return save_figure(fig, path)


def unit_square(ax: Axes, xlabel: str, ylabel: str, title: str, legend_loc: str, fontsize: float | None = None) -> None:
    """The axes of a curve between two rates (ROC, precision-recall): [0, 1] on both, square, labelled; the legend
    (``fontsize`` for many lines) when something is labelled."""
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, y=1.0)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc=legend_loc, fontsize=fontsize)


@figure_writer
def plot_reliability(
    y_true: Sequence[int],
    probs: np.ndarray,
    path: str | os.PathLike,
    uncalibrated: np.ndarray | None = None,
    bins: int = ECE_BINS,
) -> Path:
    """Reliability diagram: accuracy against top-label confidence per bin, the diagonal of perfect calibration,
    ECE in the legend; with ``uncalibrated``, the outputs before temperature scaling as a second series.

    Returns:
        The path written.
    """
    fig = new_figure((5.5, 5), constrained=False)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="perfect calibration")
    series = [("before scaling", uncalibrated, "0.55"), ("after scaling", probs, "C0")]
    if uncalibrated is None:
        series = [("model", probs, "C0")]
    width = 1 / bins
    for i, (name, p, color) in enumerate(series):
        b = reliability_bins(y_true, p, bins)
        used = b["count"] > 0
        shift = (i - (len(series) - 1) / 2) * width / len(series)
        ece = expected_calibration_error(y_true, p, bins)
        ax.bar(
            (b["edges"][:-1] + width / 2 + shift)[used], b["accuracy"][used], width=width / len(series),
            color=color, alpha=0.8, edgecolor="white", label=f"{name} (ECE = {ece:.3f})",
        )  # fmt: skip
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel(f"Confidence of the predicted class ({bins} bins)")
    ax.set_ylabel("Accuracy")
    ax.set_title("Reliability diagram", y=1.0)
    ax.legend(loc="upper left")
    UNIT_SQUARE.apply(fig)
    return save_figure(fig, path)
