"""Tests of scripts.calibration on synthetic lesions whose true malignancy probability is known."""

from __future__ import annotations

import numpy as np
import pytest

from scripts.calibration import (
    Calibration,
    expected_calibration_error,
    fit_calibration,
    fit_logistic,
    logit,
    reliability,
)


def _lesions(count: int, scale: float, shift: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Predicted probabilities and truths: the truth is drawn from a true probability ``q``; the prediction is
    ``sigmoid(scale * (logit(q) - shift))``, overconfident for ``scale`` > 1 and biased towards benign for
    ``shift`` > 0."""
    rng = np.random.default_rng(seed)
    true_logit = rng.normal(0.0, 1.5, count)
    malignant = rng.random(count) < 1 / (1 + np.exp(-true_logit))
    predicted = 1 / (1 + np.exp(-scale * (true_logit - shift)))
    return predicted, malignant


def test_calibration_error_of_known_bins():
    # ten lesions at 0.9, half malignant: gap 0.4; ten at 0.15, one malignant: gap 0.05
    probabilities = np.array([0.9] * 10 + [0.15] * 10)
    malignant = np.array([1] * 5 + [0] * 5 + [1] + [0] * 9, dtype=bool)
    assert expected_calibration_error(probabilities, malignant) == pytest.approx((10 * 0.4 + 10 * 0.05) / 20)
    bins = reliability(probabilities, malignant)
    assert [(row["low"], row["count"], row["malignant_fraction"]) for row in bins] == [(0.1, 10, 0.1), (0.9, 10, 0.5)]
    # a probability of exactly 1 falls in the last bin
    assert reliability(np.array([1.0]), np.array([True]))[0]["low"] == pytest.approx(0.9)


def test_temperature_recovers_overconfidence_and_keeps_the_decision():
    predicted, malignant = _lesions(20000, scale=3.0)
    calibration = fit_calibration(predicted, malignant)
    assert calibration.temperature == pytest.approx(3.0, rel=0.1)
    assert calibration.offset == 0.0
    calibrated = calibration(predicted)
    assert expected_calibration_error(predicted, malignant) > 0.08
    assert expected_calibration_error(calibrated, malignant) < 0.02
    np.testing.assert_array_equal(calibrated > 0.5, predicted > 0.5)


def test_platt_scaling_moves_the_decision_of_a_biased_probability():
    predicted, malignant = _lesions(20000, scale=1.0, shift=1.0)  # malignant lesions called benign too often
    temperature = fit_calibration(predicted, malignant)
    platt = fit_calibration(predicted, malignant, offset=True)
    assert platt.temperature == pytest.approx(1.0, rel=0.1)
    assert platt.offset == pytest.approx(1.0, abs=0.1)
    accuracy = lambda p: np.mean((p > 0.5) == malignant)  # noqa: E731
    assert accuracy(platt(predicted)) > accuracy(predicted) + 0.02
    assert expected_calibration_error(platt(predicted), malignant) < expected_calibration_error(
        temperature(predicted), malignant
    )


def test_already_calibrated_probabilities_are_left_nearly_as_they_are():
    predicted, malignant = _lesions(20000, scale=1.0)
    assert fit_calibration(predicted, malignant).temperature == pytest.approx(1.0, rel=0.1)
    assert expected_calibration_error(predicted, malignant) < 0.02
    assert np.array_equal(Calibration()(predicted), predicted)


def test_calibration_is_finite_at_zero_and_one():
    calibrated = Calibration(temperature=2.0, offset=0.5)(np.array([0.0, 0.5, 1.0]))
    assert np.all(np.isfinite(calibrated))
    assert calibrated[1] == pytest.approx(1 / (1 + np.exp(-0.5)))
    assert np.all(np.isfinite(logit(np.array([0.0, 1.0]))))


def test_fit_refuses_one_class_and_reversed_rankings():
    with pytest.raises(ValueError, match="both classes"):
        fit_calibration(np.array([0.2, 0.8]), np.array([True, True]))
    predicted, malignant = _lesions(2000, scale=1.0)
    with pytest.raises(ValueError, match="do not rank"):
        fit_calibration(1 - predicted, malignant)


def test_logistic_model_recovers_known_weights():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(20000, 2))
    outcomes = rng.random(20000) < 1 / (1 + np.exp(-(2.0 * features[:, 0] - 1.0 * features[:, 1] + 0.5)))
    np.testing.assert_allclose(fit_logistic(features, outcomes), [2.0, -1.0, 0.5], atol=0.1)
    # a penalty shrinks the weights, not the intercept's role
    shrunk = fit_logistic(features, outcomes, l2=1.0)
    assert np.all(np.abs(shrunk[:2]) < np.array([2.0, 1.0]))


def test_postprocessing_reports_the_malignancy_probability_its_class_is_decided_on():
    from scripts.postprocess import find_lesions, measure_lesions

    probabilities = np.zeros((3, 20, 20), dtype=np.float32)
    probabilities[0] = 1.0
    probabilities[:, 2:8, 2:8] = np.array([0.1, 0.3, 0.6])[:, None, None]  # malignant share 2/3
    probabilities[:, 12:18, 12:18] = np.array([0.1, 0.6, 0.3])[:, None, None]  # malignant share 1/3
    shipped = find_lesions(probabilities, min_area_fraction=0.01)[1]
    assert [(label, confidence.malignancy) for label, confidence in shipped] == [
        (2, pytest.approx(2 / 3, abs=1e-4)), (1, pytest.approx(1 / 3, abs=1e-4))]
    # a temperature of 2 halves the logit, log 2, and keeps each class
    numbers, found = find_lesions(probabilities, min_area_fraction=0.01, malignancy_temperature=2.0)
    calibrated = np.sqrt(2) / (1 + np.sqrt(2))
    assert [(label, confidence.malignancy) for label, confidence in found] == [
        (2, pytest.approx(calibrated, abs=1e-4)), (1, pytest.approx(1 - calibrated, abs=1e-4))]
    _, lesions = measure_lesions(numbers, found)
    assert [lesion.malignancy_probability for lesion in lesions] == [confidence.malignancy for _, confidence in found]
