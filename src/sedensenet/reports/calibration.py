"""Are the probabilities honest? Top-label expected calibration error, reliability bins, negative log-likelihood,
and temperature scaling (Guo et al. 2017): one number fitted on validation that softens or sharpens every output.

Temperature is applied to probabilities, not logits: ``softmax(log(p) / T)`` equals ``softmax(logits / T)``
because the softmax's normaliser cancels, so the same function serves training, evaluation and prediction.
A multi-label model has one temperature per label, on its sigmoid: ``sigmoid(logit(p) / T_k)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit

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


def _label_logits(probs: np.ndarray) -> np.ndarray:
    """``logit(p)`` in float64, from probabilities clipped to [1e-15, 1 - 1e-15] so a saturated output stays finite."""
    p = np.clip(np.asarray(probs, dtype=np.float64), _MIN_PROB, 1 - _MIN_PROB)
    return np.log(p) - np.log1p(-p)


def _binary_nll(targets: np.ndarray, logits: np.ndarray, temperature: float) -> float:
    """Mean binary cross-entropy of ``sigmoid(logits / temperature)`` against 0/1 ``targets`` (stable form)."""
    z = logits / temperature
    return float(np.mean(np.logaddexp(0.0, z) - targets * z))


def apply_label_temperatures(probs: np.ndarray, temperatures: Sequence[float | None]) -> np.ndarray:
    """Multi-label temperature scaling: column k becomes ``sigmoid(logit(p_k) / T_k)`` (float64).

    A temperature of None or 1 leaves its column as it was; the order of the images within a label never changes.
    """
    p = np.array(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(temperatures):
        raise ValueError(f"probs must be (N, {len(temperatures)}) for {len(temperatures)} temperatures, got {p.shape}")
    for k, t in enumerate(temperatures):
        if t is None or t == 1:
            continue
        if not t > 0:
            raise ValueError(f"temperature of label {k} must be positive, got {t}")
        p[:, k] = expit(_label_logits(p[:, k]) / t)
    return p


def fit_label_temperatures(targets: np.ndarray, probs: np.ndarray) -> list[float]:
    """One temperature per label minimising the masked binary NLL of ``sigmoid(logit(p) / T)`` on these outputs.

    Each label is fitted on its own entries (NaN targets are ignored). A label that cannot be fitted, with no
    entries or one class only (its NLL falls as T shrinks towards 0 without end), keeps 1.0, as does one whose
    fit would not beat T = 1 on the fitting set.

    Args:
        targets: (N, K) float, 1 present, 0 absent, NaN ignored.
        probs: (N, K) sigmoid outputs.
    """
    t = np.asarray(targets, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    if t.shape != p.shape or t.ndim != 2:
        raise ValueError(f"targets and probs must both be (N, K), got {t.shape} and {p.shape}")
    temperatures = []
    for k in range(t.shape[1]):
        known = ~np.isnan(t[:, k])
        y, z = t[known, k], _label_logits(p[known, k])
        if len(np.unique(y)) < 2:
            temperatures.append(1.0)
            continue
        result = minimize_scalar(
            lambda log_t, y=y, z=z: _binary_nll(y, z, float(np.exp(log_t))),
            bounds=_LOG_T_RANGE, method="bounded", options={"xatol": 1e-4},
        )  # fmt: skip
        temperature = float(np.exp(result.x))
        temperatures.append(temperature if _binary_nll(y, z, temperature) < _binary_nll(y, z, 1.0) else 1.0)
    return temperatures
