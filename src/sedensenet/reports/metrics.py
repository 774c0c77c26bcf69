"""Classification metrics from labels and predicted probabilities: one plain, JSON-ready report.

Everything is computed with ``sklearn.metrics`` over the full label set ``range(C)``, so a class that
is absent from a (small) evaluation split still has its row in the confusion matrix and the table.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

from sedensenet.display import Table, display_width
from sedensenet.reports.calibration import calibration_summary
from sedensenet.reports.clinical import BOOTSTRAP_RESAMPLES, binary_metrics, bootstrap_intervals, decide_binary, pr_auc

logger = logging.getLogger(__name__)


@dataclass
class ClassificationReport:
    """Metrics of one evaluation pass; every field is a plain Python value."""

    accuracy: float
    balanced_accuracy: float
    """Mean recall over the classes present in ``y_true`` (as ``sklearn.metrics.balanced_accuracy_score``)."""
    loss: float | None
    per_class: list[dict[str, Any]]
    """One dict per class, in class order: ``class``, ``precision``, ``recall``, ``f1``, ``support``."""
    macro_precision: float
    macro_recall: float
    macro_f1: float
    weighted_precision: float
    weighted_recall: float
    weighted_f1: float
    confusion_matrix: list[list[int]]
    """Rows are true classes, columns predicted classes."""
    roc_auc: float | None
    """Binary: AUC of the positive class (class 1 by default). Multi-class: macro one-vs-rest AUC when every class
    is present, else None."""
    classes: list[str]
    num_samples: int
    positive_class: str | None = None
    """Two classes: the class that sensitivity, PPV, ROC and PR curves are about."""
    threshold: float | None = None
    """Two classes: predictions are ``positive_class`` when its probability >= this; None: the argmax."""
    binary: dict[str, Any] | None = None
    """Two classes: sensitivity, specificity, ppv, npv, f1 of ``positive_class`` and the counts tp/fp/tn/fn."""
    pr_auc: float | None = None
    """Two classes: average precision of ``positive_class`` (area under its precision-recall curve)."""
    intervals: dict[str, Any] = field(default_factory=dict)
    """Stratified bootstrap intervals: ``accuracy``, ``balanced_accuracy``, ``roc_auc`` as ``[lo, hi]``,
    ``recall`` as ``{class: [lo, hi]}``, and ``confidence``, ``resamples``, ``seed``."""
    calibration: dict[str, Any] = field(default_factory=dict)
    """Top-label ``ece`` (``bins`` equal-width bins) and ``nll``; with a ``temperature``, ``ece_before`` and
    ``nll_before`` of the unscaled outputs."""

    def to_dict(self) -> dict[str, Any]:
        """Return the report as a JSON-ready dict (non-finite floats become None)."""
        return finite_or_none(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassificationReport:
        """Rebuild a report from :meth:`to_dict` output (unknown keys, such as extras, are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def __repr__(self) -> str:
        auc = f", roc_auc={self.roc_auc:.4f}" if self.roc_auc is not None else ""
        return (
            f"ClassificationReport(accuracy={self.accuracy:.4f}, balanced_accuracy={self.balanced_accuracy:.4f}"
            f"{auc}, classes={len(self.classes)}, samples={self.num_samples})"
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """IPython and Jupyter show the table and the confusion matrix."""
        printer.text(self.format_table() + "\n" + str(self._confusion_table()))

    def _repr_html_(self) -> str:
        rows = [[p["class"], p["precision"], p["recall"], p["f1"], p["support"]] for p in self.per_class]
        rows += [
            ["macro avg", self.macro_precision, self.macro_recall, self.macro_f1, self.num_samples],
            ["weighted avg", self.weighted_precision, self.weighted_recall, self.weighted_f1, self.num_samples],
        ]
        notes = [f"accuracy {self.accuracy:.4f}, balanced accuracy {self.balanced_accuracy:.4f}"]
        notes += [f"ROC AUC {self.roc_auc:.4f}"] if self.roc_auc is not None else []
        notes += [f"loss {self.loss:.4f}"] if self.loss is not None else []
        table = Table(["class", "precision", "recall", "f1-score", "support"], rows, notes=notes)
        return table._repr_html_() + self._confusion_table()._repr_html_()

    def _confusion_table(self) -> Table:
        rows = [[f"true {c}", *counts] for c, counts in zip(self.classes, self.confusion_matrix, strict=True)]
        return Table(["confusion matrix", *(f"pred {c}" for c in self.classes)], rows)

    def format_table(self, digits: int = 2) -> str:
        """Return a fixed-width text table in the layout of ``sklearn.metrics.classification_report``."""
        rows = [(p["class"], p["precision"], p["recall"], p["f1"], p["support"]) for p in self.per_class]
        average_rows = [
            ("macro avg", self.macro_precision, self.macro_recall, self.macro_f1, self.num_samples),
            ("weighted avg", self.weighted_precision, self.weighted_recall, self.weighted_f1, self.num_samples),
        ]
        width = max([display_width(str(name)) for name, *_ in rows + average_rows] + [len("accuracy")])
        num_width = max(9, digits + 6)
        head = " " * width + "".join(f"{h:>{num_width + 1}}" for h in ("precision", "recall", "f1-score", "support"))

        def line(name: str, p: float, r: float, f: float, s: int) -> str:
            cells = "".join(f"{v:>{num_width + 1}.{digits}f}" for v in (p, r, f))
            return f"{_pad_left(name, width)}{cells}{s:>{num_width + 1}}"

        lines = [head, ""]
        lines += [line(str(name), *rest) for name, *rest in rows]
        lines.append("")
        blank = " " * (2 * (num_width + 1))
        lines.append(
            f"{_pad_left('accuracy', width)}{blank}{self.accuracy:>{num_width + 1}.{digits}f}"
            f"{self.num_samples:>{num_width + 1}}"
        )
        lines += [line(*row) for row in average_rows]
        lines.append("")
        lines.append(f"balanced accuracy: {self.balanced_accuracy:.{digits + 2}f}")
        if self.roc_auc is not None:
            lines.append(f"ROC AUC: {self.roc_auc:.{digits + 2}f}")
        if self.loss is not None:
            lines.append(f"loss: {self.loss:.{digits + 2}f}")
        return "\n".join(lines) + "\n"

    def format_text(self) -> str:
        """The table, then the summary with intervals, threshold and calibration: classification_report.txt."""
        return self.format_table() + "\n" + self.format_summary()

    def format_summary(self, title: str | None = None) -> str:
        """The figures a reviewer asks for, one per line, with their intervals: ``accuracy 0.929 [0.908, 0.948]``."""
        rows: list[tuple[str, float | None, list[float] | None]] = [
            ("accuracy", self.accuracy, self.intervals.get("accuracy")),
            ("balanced accuracy", self.balanced_accuracy, self.intervals.get("balanced_accuracy")),
            ("ROC-AUC", self.roc_auc, self.intervals.get("roc_auc")),
        ]
        recall_ci = self.intervals.get("recall", {})
        if self.positive_class is not None and self.binary is not None:
            pos = self.positive_class
            negative = next(c for c in self.classes if c != pos)
            rows += [
                ("PR-AUC", self.pr_auc, None),
                (f"sensitivity ({pos})", self.binary["sensitivity"], recall_ci.get(pos)),
                (f"specificity ({negative})", self.binary["specificity"], recall_ci.get(negative)),
                ("PPV", self.binary["ppv"], None),
                ("NPV", self.binary["npv"], None),
                (f"F1 ({self.positive_class})", self.binary["f1"], None),
            ]
        else:
            rows += [(f"recall {p['class']}", p["recall"], recall_ci.get(p["class"])) for p in self.per_class]
        width = max(display_width(name) for name, *_ in rows)
        lines = [title] if title else []
        for name, value, ci in rows:
            if value is None:
                continue
            text = f"{name}{' ' * (width - display_width(name))}  {value:.3f}"
            lines.append(text + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
        if self.intervals:
            lines.append(
                f"[{self.intervals['confidence']:.0%} intervals: stratified bootstrap, {self.intervals['resamples']} "
                f"resamples, seed {self.intervals['seed']}]"
            )
        if self.positive_class is not None:
            rule = "argmax" if self.threshold is None else f"{self.positive_class} when P >= {self.threshold:.4f}"
            lines.append(f"decision: {rule}")
        lines += self._calibration_lines()
        return "\n".join(lines) + "\n"

    def _calibration_lines(self) -> list[str]:
        cal = self.calibration
        if not cal:
            return []
        if "ece_before" in cal:
            return [
                f"calibration: ECE {cal['ece_before']:.3f} -> {cal['ece']:.3f}, NLL {cal['nll_before']:.3f} -> "
                f"{cal['nll']:.3f} (temperature {cal['temperature']:.3f}; top-label ECE, {cal['bins']} bins)"
            ]
        return [f"calibration: ECE {cal['ece']:.3f}, NLL {cal['nll']:.3f} (top-label ECE, {cal['bins']} bins)"]


def compute_metrics(
    y_true: Sequence[int],
    probs: np.ndarray,
    classes: list[str],
    loss: float | None = None,
    *,
    y_pred: Sequence[int] | None = None,
    positive: int | None = None,
    threshold: float | None = None,
    uncalibrated: np.ndarray | None = None,
    temperature: float | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> ClassificationReport:
    """Compute accuracy, per-class precision/recall/F1, confusion matrix, ROC-AUC, calibration and intervals.

    Args:
        y_true: true class indices, length N, each in ``range(len(classes))``.
        probs: (N, C) class probabilities (or any scores), after any temperature scaling.
        classes: the C class names, in index order.
        loss: the mean loss of the pass, stored as is.
        y_pred: the decisions, when made otherwise than by ``threshold`` or the argmax of ``probs``.
        positive: two classes: index of the positive class (default 1); sensitivity etc. are its.
        threshold: two classes: call ``positive`` when its probability >= this (default: the argmax).
        uncalibrated: the probabilities before temperature scaling, to report ECE and NLL before and after.
        temperature: the temperature that turned ``uncalibrated`` into ``probs``, stored in the report.
        resamples: bootstrap resamples for the 95% intervals (0: none); ``seed`` seeds them.

    Returns:
        A :class:`ClassificationReport`.

    Raises:
        ValueError: on empty input or shapes and labels that do not match ``classes``.
    """
    y, scores = _check_inputs(y_true, probs, classes)
    num_classes = len(classes)
    if num_classes == 2:
        positive = 1 if positive is None else positive
        if y_pred is None and threshold is not None:
            y_pred = decide_binary(scores, positive, threshold)
    elif positive is not None or threshold is not None:
        raise ValueError(f"a positive class and a threshold need two classes, not {num_classes}")
    decided = scores.argmax(axis=1) if y_pred is None else np.asarray(y_pred, dtype=np.int64)
    report = _base_report(y, decided, scores, classes, loss, positive)
    if positive is not None:
        report.positive_class = classes[positive]
        report.threshold = None if threshold is None else float(threshold)
        report.binary = binary_metrics(y, decided, positive)
        report.pr_auc = pr_auc(y == positive, scores[:, positive])
    if np.all(np.isfinite(scores)):
        report.calibration = calibration_summary(y, scores, uncalibrated, temperature)
    if resamples:
        ci = bootstrap_intervals(y, decided, scores, num_classes=num_classes, resamples=resamples, seed=seed)
        ci["recall"] = {classes[c]: v for c, v in ci["recall"].items()}
        report.intervals = ci
    return report


def _base_report(
    y: np.ndarray, y_pred: np.ndarray, scores: np.ndarray, classes: list[str], loss: float | None, positive: int | None
) -> ClassificationReport:
    """The confusion matrix and the per-class, macro and weighted precision/recall/F1 of ``y_pred``."""
    num_classes = len(classes)
    labels = list(range(num_classes))
    cm = sk_confusion_matrix(y, y_pred, labels=labels)
    precision, recall, f1, support = precision_recall_fscore_support(
        y, y_pred, labels=labels, average=None, zero_division=0
    )
    averages = {}
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y, y_pred, labels=labels, average=average, zero_division=0)
        averages[average] = (float(p), float(r), float(f))
    per_class = [
        {
            "class": name,
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    ]
    present = support > 0
    return ClassificationReport(
        accuracy=float(np.trace(cm) / len(y)),
        # sklearn's balanced_accuracy_score averages recall over the classes in y_true; computed here
        # from the matrix to avoid its warning when a prediction names a class absent from y_true.
        balanced_accuracy=float(recall[present].mean()),
        loss=None if loss is None else float(loss),
        per_class=per_class,
        macro_precision=averages["macro"][0],
        macro_recall=averages["macro"][1],
        macro_f1=averages["macro"][2],
        weighted_precision=averages["weighted"][0],
        weighted_recall=averages["weighted"][1],
        weighted_f1=averages["weighted"][2],
        confusion_matrix=cm.astype(int).tolist(),
        roc_auc=_roc_auc(y, scores, num_classes, 1 if positive is None else positive),
        classes=list(classes),
        num_samples=len(y),
    )


def normalize_confusion_matrix(cm: np.ndarray | Sequence[Sequence[int]]) -> np.ndarray:
    """Divide each row by its total (recall per true class); a row without samples stays all zeros."""
    matrix = np.asarray(cm, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"confusion matrix must be square (C, C), got shape {matrix.shape}")
    totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)


def _check_inputs(y_true: Sequence[int], probs: np.ndarray, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    scores = np.asarray(probs, dtype=np.float64)
    num_classes = len(classes)
    if num_classes == 0:
        raise ValueError("classes is empty: pass the class names in index order")
    if y.ndim != 1 or len(y) == 0:
        raise ValueError(f"y_true must be a non-empty 1-D sequence of class indices, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.mod(y, 1) == 0):
            raise ValueError("y_true must hold integer class indices")
        y = y.astype(np.int64)
    if scores.ndim != 2 or scores.shape != (len(y), num_classes):
        raise ValueError(
            f"probs must have shape (N, C) = ({len(y)}, {num_classes}) to match y_true and classes, got {scores.shape}"
        )
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"y_true holds labels outside range(0, {num_classes}): min {y.min()}, max {y.max()}")
    return y, scores


def _roc_auc(y: np.ndarray, scores: np.ndarray, num_classes: int, positive: int = 1) -> float | None:
    if num_classes < 2 or not np.all(np.isfinite(scores)):
        if num_classes >= 2:
            logger.warning("probabilities contain NaN or infinity: ROC AUC not computed")
        return None
    present = np.bincount(y, minlength=num_classes) > 0
    if num_classes == 2:
        return float(roc_auc_score(y == positive, scores[:, positive])) if present.all() else None
    if not present.all():
        return None
    # Macro one-vs-rest, class by class: equal to roc_auc_score(multi_class="ovr", average="macro") but
    # without its requirement that each row sums to 1 (float32 softmax output can miss its tolerance).
    return float(np.mean([roc_auc_score(y == c, scores[:, c]) for c in range(num_classes)]))


def finite_or_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _pad_left(text: str, width: int) -> str:
    return " " * max(0, width - display_width(text)) + text
