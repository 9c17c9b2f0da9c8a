"""Calibration of a lesion's malignancy probability: temperature and Platt scaling, and how to measure calibration.

The malignancy probability ``p`` of a lesion is the quantity its class is decided on
(:func:`scripts.postprocess.find_lesions`: malignant above its threshold, one half by default). A calibration maps
its logit ``z = log(p / (1 - p))`` to ``sigmoid(z / temperature + offset)``:

- **temperature scaling** fits the temperature alone (offset 0): it makes the probabilities less (temperature > 1)
  or more (< 1) confident and never changes which side of one half a lesion falls on, so the class decision is kept;
- **Platt scaling** fits both: the offset moves the point where the decision flips.

Both are fitted by maximum likelihood on lesions of known class (:func:`fit_calibration`), which must not be the
lesions the calibration is then judged on. Calibration is measured by the expected calibration error
(:func:`expected_calibration_error`) and shown by a reliability diagram (:func:`reliability`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

__all__ = ["Calibration", "expected_calibration_error", "fit_calibration", "fit_logistic", "logit", "reliability"]

EPSILON = 1e-6


def logit(probabilities: np.ndarray) -> np.ndarray:
    """``log(p / (1 - p))``, with ``p`` kept within ``EPSILON`` of 0 and 1 so that it stays finite."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), EPSILON, 1 - EPSILON)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * z))  # exact, and never overflows


@dataclass(frozen=True)
class Calibration:
    """``p -> sigmoid(logit(p) / temperature + offset)``; the default, temperature 1 and offset 0, changes nothing."""

    temperature: float = 1.0
    offset: float = 0.0

    def __call__(self, probabilities: np.ndarray | float) -> np.ndarray:
        if self.temperature == 1.0 and self.offset == 0.0:
            return np.asarray(probabilities, dtype=np.float64)
        return _sigmoid(logit(probabilities) / self.temperature + self.offset)


def fit_logistic(features: np.ndarray, outcomes: np.ndarray, intercept: bool = True, l2: float = 0.0) -> np.ndarray:
    """Weights of the logistic model ``P(outcome) = sigmoid(features @ w[:k] + w[k])`` by maximum likelihood.

    Args:
        features: (n, k) predictors.
        outcomes: (n,) 0/1 or booleans.
        intercept: fit the constant term ``w[k]``; without it the weights are ``k`` long.
        l2: penalty ``l2 / 2 * |w[:k]|^2`` on the weights (not the intercept), per lesion: it keeps the fit finite
            when the classes are separable.
    """
    x = np.asarray(features, dtype=np.float64).reshape(len(outcomes), -1)
    y = np.asarray(outcomes, dtype=np.float64)
    if intercept:
        x = np.hstack([x, np.ones((len(x), 1))])
    penalised = np.ones(x.shape[1])
    if intercept:
        penalised[-1] = 0.0

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = x @ w
        # mean negative log-likelihood, log(1 + e^z) - y z, computed stably
        value = np.mean(np.logaddexp(0, z) - y * z) + l2 / 2 * np.sum(penalised * w**2)
        gradient = x.T @ (_sigmoid(z) - y) / len(y) + l2 * penalised * w
        return value, gradient

    return minimize(loss, np.zeros(x.shape[1]), jac=True, method="L-BFGS-B").x


def fit_calibration(probabilities: np.ndarray, malignant: np.ndarray, offset: bool = False) -> Calibration:
    """Temperature scaling (``offset=False``) or Platt scaling (``offset=True``) fitted to lesions of known class.

    Args:
        probabilities: (n,) malignancy probabilities of the lesions.
        malignant: (n,) their truth, True (or 1) for malignant.

    Raises:
        ValueError: the lesions are all of one class, or the fit gives a scale of zero or below (the probabilities
            rank the classes the wrong way round), which no temperature can mend.
    """
    malignant = np.asarray(malignant, dtype=bool)
    if malignant.all() or not malignant.any():
        raise ValueError("calibration needs lesions of both classes")
    weights = fit_logistic(logit(probabilities)[:, np.newaxis], malignant, intercept=offset)
    if weights[0] <= 0:
        raise ValueError(f"the probabilities do not rank malignant above benign lesions (scale {weights[0]:.3g})")
    return Calibration(temperature=float(1 / weights[0]), offset=float(weights[1]) if offset else 0.0)


def reliability(probabilities: np.ndarray, malignant: np.ndarray, bins: int = 10) -> list[dict]:
    """Lesions grouped in ``bins`` equal-width bins of their probability (the last bin includes 1): for each
    non-empty bin, its range, the lesions in it, their mean probability and the fraction that is malignant."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(malignant, dtype=np.float64)
    index = np.minimum((p * bins).astype(int), bins - 1)
    rows = []
    for b in range(bins):
        inside = index == b
        if inside.any():
            rows.append({
                "low": b / bins, "high": (b + 1) / bins, "count": int(inside.sum()),
                "mean_probability": float(p[inside].mean()), "malignant_fraction": float(y[inside].mean()),
            })  # fmt: skip
    return rows


def expected_calibration_error(probabilities: np.ndarray, malignant: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error of malignancy probabilities: over ``bins`` equal-width bins of the probability,
    the mean, weighted by the lesions in each bin, of the gap between the bin's mean probability and the fraction of
    its lesions that is malignant. 0 for perfectly calibrated probabilities, at most 1."""
    rows = reliability(probabilities, malignant, bins)
    total = sum(row["count"] for row in rows)
    return sum(row["count"] * abs(row["mean_probability"] - row["malignant_fraction"]) for row in rows) / total
