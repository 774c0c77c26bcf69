"""Are the probabilities honest? Top-label expected calibration error, reliability bins, negative log-likelihood,
and temperature scaling (Guo et al. 2017): one number fitted on validation that softens or sharpens every output.

Temperature is applied to probabilities, not logits: ``softmax(log(p) / T)`` equals ``softmax(logits / T)``
because the softmax's normaliser cancels, so the same function serves training, evaluation and prediction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

ECE_BINS = 15
_LOG_T_RANGE = (-4.0, 4.0)  # temperatures from 0.018 to 55: far beyond any sensible calibration
_MIN_PROB = 1e-15  # a probability of 0 for the true class counts as this in the NLL (as sklearn's log_loss)


def apply_temperature(probs: np.ndarray, temperature: float | None) -> np.ndarray:
    """``softmax(log(probs) / temperature)`` in float64; ``probs`` unchanged when ``temperature`` is None or 1.

    A zero probability stays zero; the order of the classes in every row (and so the argmax) never changes.
    """
    if temperature is None or temperature == 1:
        return probs
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    with np.errstate(divide="ignore"):
        z = np.log(np.asarray(probs, dtype=np.float64)) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def negative_log_likelihood(y_true: Sequence[int], probs: np.ndarray) -> float:
    """Mean ``-log p(true class)``, with probabilities clipped at 1e-15 so one certain mistake stays finite."""
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)[np.arange(len(y)), y]
    return float(-np.log(np.clip(p, _MIN_PROB, 1.0)).mean())


def reliability_bins(y_true: Sequence[int], probs: np.ndarray, bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Top-label confidence against accuracy in ``bins`` equal-width bins over (0, 1].

    A prediction of confidence c falls in bin ``ceil(c * bins) - 1`` (bins are open below, closed above).

    Returns:
        ``edges`` (bins + 1), and per bin ``count``, ``confidence`` (mean) and ``accuracy`` (NaN when empty).
    """
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    confidence = p.max(axis=1)
    hit = (p.argmax(axis=1) == y).astype(np.float64)
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, weights=confidence, minlength=bins) / count
        accuracy = np.bincount(which, weights=hit, minlength=bins) / count
    return {"edges": np.linspace(0, 1, bins + 1), "count": count, "confidence": mean_conf, "accuracy": accuracy}


def expected_calibration_error(y_true: Sequence[int], probs: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE: the gap |accuracy - mean confidence| of each bin, weighted by its share of the samples."""
    b = reliability_bins(y_true, probs, bins)
    used = b["count"] > 0
    weights = b["count"][used] / b["count"].sum()
    return float(np.sum(weights * np.abs(b["accuracy"][used] - b["confidence"][used])))


def fit_temperature(y_true: Sequence[int], probs: np.ndarray) -> float:
    """The temperature that minimises the NLL of ``probs`` (a 1-D bounded search over log T).

    Never worse than no scaling on the fitting set: if the search ends above the NLL at T = 1, 1.0 is returned.
    """
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probs, dtype=np.float64)
    if len(y) == 0:
        raise ValueError("cannot fit a temperature on an empty set")
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(y, apply_temperature(p, float(np.exp(log_t)))),
        bounds=_LOG_T_RANGE, method="bounded", options={"xatol": 1e-4},
    )  # fmt: skip
    temperature = float(np.exp(result.x))
    if negative_log_likelihood(y, apply_temperature(p, temperature)) > negative_log_likelihood(y, p):
        return 1.0
    return temperature


def calibration_summary(
    y_true: Sequence[int], probs: np.ndarray, uncalibrated: np.ndarray | None = None, temperature: float | None = None
) -> dict[str, Any]:
    """ECE and NLL of ``probs``; with ``uncalibrated`` (the outputs before temperature scaling), theirs too."""
    out: dict[str, Any] = {
        "bins": ECE_BINS,
        "ece": expected_calibration_error(y_true, probs),
        "nll": negative_log_likelihood(y_true, probs),
        "temperature": temperature,
    }
    if uncalibrated is not None:
        out["ece_before"] = expected_calibration_error(y_true, uncalibrated)
        out["nll_before"] = negative_log_likelihood(y_true, uncalibrated)
    return out
