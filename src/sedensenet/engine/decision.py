"""The decision a model makes, in one place: probabilities post-processed (temperature) and turned into class
indices (threshold or argmax), as its checkpoint's metadata says.

``predict``, ``evaluate``, ``serve`` and the final reports of a training run all call :func:`postprocess` and
:func:`decide`, so the decision that was evaluated is the decision that is deployed. :func:`fit_decision`
chooses the temperature and threshold on validation outputs; :func:`check_decision_settings` refuses settings
that cannot work before any training.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from sedensenet.checkpoint import CheckpointMeta, LabelDecision
from sedensenet.config import ConfigError, ThresholdRule, parse_threshold
from sedensenet.reports.calibration import (
    apply_label_temperatures,
    apply_temperature,
    fit_label_temperatures,
    fit_temperature,
)
from sedensenet.reports.clinical import choose_threshold, decide_binary, positive_index
from sedensenet.reports.multilabel import choose_label_thresholds

log = logging.getLogger(__name__)


def postprocess(probs: np.ndarray, meta: CheckpointMeta) -> np.ndarray:
    """The model's softmax outputs with the checkpoint's temperature applied (unchanged when it has none); in a
    multi-label checkpoint, each label's sigmoid output with its own temperature."""
    if meta.multilabel:
        temps = [d.temperature for d in meta.labels or []]
        if not temps or all(t is None for t in temps):
            return np.asarray(probs)
        return apply_label_temperatures(probs, [1.0 if t is None else t for t in temps])
    return apply_temperature(probs, meta.temperature)


def decide_labels(probs: np.ndarray, meta: CheckpointMeta) -> np.ndarray:
    """Multi-label: which labels each image has, ``(N, K)`` booleans: a label's (calibrated) probability at or
    above its stored threshold (0.5 before thresholds were chosen)."""
    p = np.asarray(probs)
    thresholds = np.array(meta.label_thresholds())
    return p >= thresholds[None, :]


def decide(probs: np.ndarray, meta: CheckpointMeta) -> np.ndarray:
    """Class indices for ``probs`` (already through :func:`postprocess`): the positive class where its probability
    reaches the checkpoint's threshold, else the argmax."""
    p = np.asarray(probs)
    if meta.threshold is None:
        return p.argmax(axis=1)
    return decide_binary(p, meta.classes.index(meta.positive), meta.threshold)


def positive_of(meta: CheckpointMeta) -> int | None:
    """Index of the checkpoint's positive class: the stored one, else the second class; None unless two classes."""
    if len(meta.classes) != 2:
        return None
    return meta.classes.index(meta.positive) if meta.positive in meta.classes else 1


def check_decision_settings(
    threshold: str, positive: str, calibrate: str, classes: Sequence[str], val_labels: Sequence[int]
) -> None:
    """Refuse, before training, a threshold or positive class the problem cannot have (naming what is allowed),
    and a rule chosen on validation when there is no validation split, or one without both classes."""
    rule = parse_threshold(threshold)
    has_validation = len(val_labels) > 0
    if has_validation and rule.needs_validation and len(set(val_labels)) < 2:
        raise ConfigError(
            f"--threshold {rule} is chosen on validation, and the validation split holds one class only: "
            "give it images of both classes (or a larger --val-split)"
        )
    if positive or rule.kind != "argmax":
        try:
            positive_index(classes, positive or None)
        except ValueError as e:
            given = [f"--positive {positive}"] * bool(positive) + [f"--threshold {rule}"] * (rule.kind != "argmax")
            flags = " ".join(given)
            raise ConfigError(f"{flags}: {e}") from None
    if not has_validation and rule.needs_validation:
        raise ConfigError(
            f"--threshold {rule} is chosen on a validation split and this run has none: "
            "set --val-split (e.g. 0.2) or give a fixed threshold such as 0.5"
        )
    if not has_validation and calibrate != "none":
        raise ConfigError(
            f"--calibrate {calibrate} is fitted on a validation split and this run has none: set --val-split"
        )


def check_label_settings(threshold: str, positive: str, calibrate: str, *, has_validation: bool) -> None:
    """A multi-label run's decision settings, refused before training when they cannot work: ``--positive`` (each
    label is its own positive), a rule chosen on validation, or calibration, without a validation split."""
    if positive:
        raise ConfigError(
            f"--positive {positive}: a multi-label run decides each label on its own (present or absent), so there is "
            "no positive class to name; drop --positive"
        )
    rule = label_rule(threshold)
    if not has_validation and (rule.needs_validation or calibrate != "none"):
        what = f"--threshold {rule}" if rule.needs_validation else f"--calibrate {calibrate}"
        raise ConfigError(
            f"{what} is chosen per label on a validation split and this run has none: set --val-split (e.g. 0.2) "
            "or give a fixed threshold such as --threshold 0.5"
        )


def label_rule(threshold: str) -> ThresholdRule:
    """The multi-label rule for ``--threshold``: ``argmax`` (the single-label default) means ``f1``."""
    rule = parse_threshold(threshold)
    return parse_threshold("f1") if rule.kind == "argmax" else rule


def fit_label_decision(
    meta: CheckpointMeta, y_true: np.ndarray | None, probs: np.ndarray | None, *, threshold: str = "f1",
    calibrate: str = "none", inference: str = "",
) -> dict[str, Any]:  # fmt: skip
    """Multi-label: fit each label's temperature, then its threshold (on the calibrated probabilities), on
    validation outputs (``y_true`` (N, K) with NaN where ignored); store them in ``meta.labels``."""
    rule = label_rule(threshold)
    fitted = rule.needs_validation or calibrate != "none"
    if fitted and (y_true is None or probs is None):
        raise ConfigError(f"--threshold {rule} / --calibrate {calibrate} need validation outputs to be chosen on")
    temps: list[float | None] = [None] * len(meta.classes)
    if calibrate == "temperature":
        temps = list(fit_label_temperatures(y_true, probs))
    meta.labels = [LabelDecision(name, 0.5, t) for name, t in zip(meta.classes, temps, strict=True)]
    notes: list[str | None] = [None] * len(meta.classes)
    if rule.kind == "fixed":
        thresholds = [float(rule.value)] * len(meta.classes)  # type: ignore[arg-type]
    else:
        thresholds, notes = choose_label_thresholds(y_true, postprocess(probs, meta), rule)
    for decision, value, note in zip(meta.labels, thresholds, notes, strict=True):
        decision.threshold = float(value)
        if note:
            log.warning("label %s: %s", decision.name, note)
    meta.temperature, meta.positive, meta.threshold = None, None, None
    meta.decision = {"threshold": str(rule), "calibrate": calibrate, "chosen_on": "validation" if fitted else None,
                     "inference": inference}  # fmt: skip
    log.info("decision: per-label thresholds (%s) %s, %s", rule,
             {d.name: round(d.threshold, 4) for d in meta.labels}, inference)  # fmt: skip
    return meta.decision


def fit_decision(
    meta: CheckpointMeta,
    y_true: Sequence[int] | None,
    probs: np.ndarray | None,
    *,
    threshold: str = "argmax",
    positive: str = "",
    calibrate: str = "none",
    inference: str = "",
) -> dict[str, Any]:
    """Fit the temperature, then the threshold, on validation outputs (``y_true``, ``probs``) and store both in
    ``meta``. Without validation outputs only a fixed threshold and the positive class can be stored.

    The threshold is chosen on the calibrated probabilities, because those are what :func:`decide` compares.

    Returns:
        ``meta.decision``: the rule, what it was chosen on and the inference backend and precision used.
    """
    if meta.multilabel:
        return fit_label_decision(meta, None if y_true is None else np.asarray(y_true, dtype=np.float64), probs,
                                  threshold=threshold, calibrate=calibrate, inference=inference)  # fmt: skip
    rule = parse_threshold(threshold)
    fitted = rule.needs_validation or calibrate != "none"
    if fitted and (y_true is None or probs is None):
        raise ConfigError(f"--threshold {rule} / --calibrate {calibrate} need validation outputs to be chosen on")
    y = None if y_true is None else np.asarray(y_true, dtype=np.int64)
    meta.temperature = fit_temperature(y, probs) if calibrate == "temperature" else None
    meta.positive, meta.threshold = None, None
    if len(meta.classes) == 2:
        pos = positive_index(meta.classes, positive or None)
        meta.positive = meta.classes[pos]
        if rule.kind == "fixed":
            meta.threshold = rule.value
        elif rule.needs_validation:
            meta.threshold = choose_threshold(y == pos, postprocess(probs, meta)[:, pos], rule)
    meta.decision = {
        "threshold": str(rule),
        "calibrate": calibrate,
        "chosen_on": "validation" if fitted else None,
        "inference": inference,
    }
    log.info("decision: temperature %s, threshold %s (%s), %s", meta.temperature, meta.threshold, rule, inference)
    return meta.decision
