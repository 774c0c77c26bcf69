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

from sedensenet.checkpoint import CheckpointMeta
from sedensenet.config import ConfigError, parse_threshold
from sedensenet.reports.calibration import apply_temperature, fit_temperature
from sedensenet.reports.clinical import choose_threshold, decide_binary, positive_index

log = logging.getLogger(__name__)


def postprocess(probs: np.ndarray, meta: CheckpointMeta) -> np.ndarray:
    """The model's softmax outputs with the checkpoint's temperature applied (unchanged when it has none)."""
    return apply_temperature(probs, meta.temperature)


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
