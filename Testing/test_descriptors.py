"""Tests of scripts.descriptors on shapes whose measurements are known analytically.

Shapes are rasterised by pixel centre (a pixel belongs to the shape when its centre does); the descriptors take each
pixel as its square, so lengths may exceed the analytic ones by up to about one pixel.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from scripts.descriptors import DESCRIPTOR_COLUMNS, describe_lesion


def _ellipse(shape, centre, semi_major, semi_minor, angle_deg, spacing=(1.0, 1.0)) -> np.ndarray:
    """Pixels whose centres lie in the ellipse, in mm; ``angle_deg`` of the major axis, rising to the right."""
    rows, columns = np.mgrid[: shape[0], : shape[1]]
    x, y = (columns - centre[1]) * spacing[1], -(rows - centre[0]) * spacing[0]  # y up
    angle = math.radians(angle_deg)
    along, across = x * math.cos(angle) + y * math.sin(angle), -x * math.sin(angle) + y * math.cos(angle)
    return (along / semi_major) ** 2 + (across / semi_minor) ** 2 <= 1


def _rectangle(shape, centre, length, height, angle_deg) -> np.ndarray:
    rows, columns = np.mgrid[: shape[0], : shape[1]]
    x, y = columns - centre[1], -(rows - centre[0])
    angle = math.radians(angle_deg)
    along, across = x * math.cos(angle) + y * math.sin(angle), -x * math.sin(angle) + y * math.cos(angle)
    return (np.abs(along) <= length / 2) & (np.abs(across) <= height / 2)


def _length(ends) -> float:
    (row0, col0), (row1, col1) = ends
    return math.hypot(row1 - row0, col1 - col0)


def test_circle():
    d = describe_lesion(_ellipse((120, 120), (60, 60), 40, 40, 0))
    assert 80 <= d.longest_diameter_px <= 81.5
    assert 80 <= d.perpendicular_diameter_px <= 81.5
    assert d.width_px == d.depth_px == 81 and d.depth_to_width == 1
    assert d.ellipse_major_px == pytest.approx(80, abs=0.5) and d.ellipse_minor_px == pytest.approx(80, abs=0.5)
    # the outline follows the pixel staircase, which lengthens it by a few per cent
    assert 0.85 < d.circularity <= 1 and d.solidity > 0.97 and d.margin_irregularity < 0.02
    assert (d.suggested_shape, d.suggested_margin, d.suggested_orientation) == ("round", "circumscribed", "parallel")
    # no spacing: nothing in mm; no grey image: no acoustic features
    assert d.longest_diameter_mm is None and d.width_mm is None and d.ellipse_major_mm is None
    assert d.posterior_ratio is None and d.suggested_echogenicity is None


@pytest.mark.parametrize("angle", [0, 20, 35, 60, 90, -30, -75])
def test_ellipse_of_known_axes_and_angle(angle):
    d = describe_lesion(_ellipse((200, 200), (100, 100), 60, 20, angle))
    assert 120 <= d.longest_diameter_px <= 121.5
    assert 40 <= d.perpendicular_diameter_px <= 41.5
    assert d.ellipse_major_px == pytest.approx(120, abs=1) and d.ellipse_minor_px == pytest.approx(40, abs=1)
    assert d.orientation_deg == pytest.approx(angle, abs=0.5)
    # the longest diameter lies along the major axis, and the perpendicular one across it
    (row0, col0), (row1, col1) = d.longest_diameter_ends
    direction = math.degrees(math.atan2(-(row1 - row0), col1 - col0))
    assert min(abs(direction - angle) % 180, 180 - abs(direction - angle) % 180) < 2
    (prow0, pcol0), (prow1, pcol1) = d.perpendicular_diameter_ends
    cosine = ((row1 - row0) * (prow1 - prow0) + (col1 - col0) * (pcol1 - pcol0)) / (
        _length(d.longest_diameter_ends) * _length(d.perpendicular_diameter_ends))
    assert abs(cosine) < 1e-9
    assert _length(d.longest_diameter_ends) == pytest.approx(d.longest_diameter_px)
    # extents of a rotated ellipse: 2 sqrt(a² cos² + b² sin²) wide
    theta = math.radians(angle)
    width = 2 * math.hypot(60 * math.cos(theta), 20 * math.sin(theta))
    depth = 2 * math.hypot(60 * math.sin(theta), 20 * math.cos(theta))
    assert abs(d.width_px - width) <= 1.5 and abs(d.depth_px - depth) <= 1.5
    assert d.suggested_orientation == ("not parallel" if abs(angle) > 45 else "parallel")
    assert (d.suggested_shape, d.suggested_margin) == ("oval", "circumscribed")
    assert d.margin_irregularity < 0.02 and d.solidity > 0.97


def test_rotated_rectangle():
    length, height = 60, 20
    d = describe_lesion(_rectangle((160, 160), (80, 80), length, height, 30))
    diagonal = math.hypot(length, height)
    assert diagonal - 1 <= d.longest_diameter_px <= diagonal + 1.5
    # the widest strip across a rectangle's diagonal runs through a corner: height * diagonal / length
    across = height * diagonal / length
    assert across - 1 <= d.perpendicular_diameter_px <= across + 1.5
    assert d.orientation_deg == pytest.approx(30, abs=0.5)
    # a uniform rectangle's second moments: axes sqrt(12) times the standard deviations, i.e. 4 / sqrt(12) of 2 sides
    assert d.ellipse_major_px == pytest.approx(4 * length / math.sqrt(12), abs=1)
    assert d.ellipse_minor_px == pytest.approx(4 * height / math.sqrt(12), abs=1)
    assert d.solidity > 0.95


def test_notch_makes_the_shape_irregular():
    whole = _ellipse((160, 160), (80, 80), 50, 50, 0)
    notched = whole.copy()
    rows, columns = np.mgrid[:160, :160]
    up_right, across = ((columns - 80) - (rows - 80)) / math.sqrt(2), ((columns - 80) + (rows - 80)) / math.sqrt(2)
    notched[(up_right > 0) & (np.abs(across) < 8)] = False  # a slot from the upper right edge to the centre
    smooth, notch = describe_lesion(whole), describe_lesion(notched)
    assert notch.solidity < 0.9 < smooth.solidity
    assert notch.margin_irregularity > 0.1 > smooth.margin_irregularity
    assert notch.circularity < smooth.circularity
    assert (notch.suggested_shape, notch.suggested_margin) == ("irregular", "not circumscribed")
    # the notch does not change the outer extent
    assert notch.longest_diameter_px == pytest.approx(smooth.longest_diameter_px, abs=0.5)
    assert (notch.width_px, notch.depth_px) == (smooth.width_px, smooth.depth_px)


def test_anisotropic_spacing_measures_in_mm():
    """An ellipse of 30 x 10 mm semi-axes at -60 degrees, in pixels of 0.25 mm (rows) by 0.5 mm (columns)."""
    spacing = (0.25, 0.5)
    d = describe_lesion(_ellipse((300, 200), (150, 100), 30, 10, -60, spacing), spacing=spacing)
    # within a pixel's larger side
    assert d.longest_diameter_mm == pytest.approx(60, abs=0.5)
    assert d.perpendicular_diameter_mm == pytest.approx(20, abs=0.5)
    assert d.ellipse_major_mm == pytest.approx(60, abs=0.5) and d.ellipse_minor_mm == pytest.approx(20, abs=0.5)
    assert d.orientation_deg == pytest.approx(-60, abs=0.5)
    assert d.width_mm == pytest.approx(d.width_px * 0.5) and d.depth_mm == pytest.approx(d.depth_px * 0.25)
    assert d.depth_to_width == pytest.approx(d.depth_mm / d.width_mm)
    assert d.suggested_orientation == "not parallel" and d.suggested_shape == "oval"
    # the pixel lengths are those of the same segments counted in pixel steps
    (row0, col0), (row1, col1) = d.longest_diameter_ends
    assert d.longest_diameter_px == pytest.approx(math.hypot(row1 - row0, col1 - col0))
    assert d.longest_diameter_mm == pytest.approx(math.hypot((row1 - row0) * 0.25, (col1 - col0) * 0.5))
    # in pixels the same lesion is a different shape, so it needs the spacing to be measured right
    in_pixels = describe_lesion(_ellipse((300, 200), (150, 100), 30, 10, -60, spacing))
    assert in_pixels.orientation_deg != pytest.approx(-60, abs=5)


def test_acoustic_features():
    grey = np.full((200, 200), 100.0, dtype=np.float32)
    mask = _ellipse((200, 200), (60, 100), 30, 20, 0)
    grey[mask] = 30  # hypoechoic
    below = slice(81, 122), slice(70, 131)  # the lesion's columns, down by its depth under its bounding box
    shadowed = grey.copy()
    shadowed[below] = 40
    d = describe_lesion(mask, grey)
    assert d.echogenicity_ratio == pytest.approx(0.3) and d.suggested_echogenicity == "hypoechoic"
    assert d.posterior_ratio == pytest.approx(1) and d.suggested_posterior == "none"
    d = describe_lesion(mask, shadowed)
    assert d.posterior_ratio == pytest.approx(0.4, abs=0.01) and d.suggested_posterior == "shadowing"
    enhanced = grey.copy()
    enhanced[below] = 150
    assert describe_lesion(mask, enhanced).suggested_posterior == "enhancement"
    # a lesion whose posterior band leaves the image has no posterior feature
    assert describe_lesion(np.roll(mask, 110, axis=0), grey).posterior_ratio is None


def test_rows_and_bad_input():
    d = describe_lesion(_ellipse((50, 50), (25, 25), 10, 6, 0), spacing=(0.1, 0.1))
    row = d.to_row()
    assert tuple(row) == DESCRIPTOR_COLUMNS
    assert row["longest_diameter_row0"] == d.longest_diameter_ends[0][0]
    with pytest.raises(ValueError, match="at least one pixel"):
        describe_lesion(np.zeros((5, 5), bool))
    with pytest.raises(ValueError, match="does not match the mask"):
        describe_lesion(np.ones((5, 5), bool), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="spacing must be two positive numbers"):
        describe_lesion(np.ones((5, 5), bool), spacing=(0.0, 1.0))


def test_cost_per_lesion_is_a_few_milliseconds():
    """The budget is 5 ms per lesion; a lesion covering a quarter of a BUSI-sized frame is among the largest."""
    grey = np.random.default_rng(0).uniform(0, 255, (470, 560)).astype(np.float32)
    mask = _ellipse((470, 560), (200, 280), 180, 110, 10)
    describe_lesion(mask, grey, (0.1, 0.1))
    best = min(_timed(lambda: describe_lesion(mask, grey, (0.1, 0.1))) for _ in range(5))
    assert best < 0.010  # twice the budget: shared test machines are noisy; benchmarks/benchmark.py measures it


def _timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def test_lesions_carry_confidence_uncertainty_and_descriptors():
    """The inferer's disagreement channel reaches each lesion; the descriptors are measured on the frame."""
    import torch
    from torch import nn

    from scripts.postprocess import FindLesionsd, MeasureLesionsd
    from scripts.predict import ProbabilityInferer

    class Fixed(nn.Module):
        """A stand-in network whose output is given logits."""

        def __init__(self, logits: torch.Tensor) -> None:
            super().__init__()
            self.logits = logits

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            return self.logits.expand(inputs.shape[0], -1, -1, -1)

    def logits(benign: float, malignant: float) -> torch.Tensor:
        """Background everywhere but two square lesions; the second one's class as given."""
        out = torch.zeros(1, 6, 40, 40)
        out[:, 0] = 5.0
        out[:, 0, 5:15, 5:15], out[:, 1, 5:15, 5:15] = 0.0, 6.0  # both networks: benign
        out[:, 0, 22:36, 20:34], out[:, 1, 22:36, 20:34], out[:, 2, 22:36, 20:34] = 0.0, benign, malignant
        out[:, 4] = 1.0  # image head: benign more than normal
        return out

    # the networks agree on the first lesion and disagree on the second one's class
    networks = nn.ModuleList([Fixed(logits(6.0, 0.0)), Fixed(logits(0.0, 6.0))])
    probabilities = ProbabilityInferer()(torch.zeros(1, 1, 40, 40), networks)[0]
    assert probabilities.shape[0] == 7
    frame = np.full((40, 40), 100.0, dtype=np.float32)
    item = FindLesionsd("pred", min_area_fraction=0.01, min_confidence=0.5, review_uncertainty=0.2)(
        {"pred": probabilities, "frame": frame, "spacing": (0.5, 0.5)})
    lesions = MeasureLesionsd("pred")(item)["pred_lesions"]
    assert [lesion.area_px for lesion in lesions] == [196, 100]
    torn, agreed = lesions
    assert agreed.uncertainty < 0.01 and not agreed.review
    assert torn.uncertainty > 0.4 and torn.review
    assert agreed.confidence <= agreed.peak_probability <= 1
    # a 14-pixel square of 0.5 mm pixels; the outline cuts each corner pixel's outer corner off
    assert torn.descriptors.width_mm == 7.0 and torn.descriptors.longest_diameter_mm == pytest.approx(
        math.hypot(14, 13) * 0.5)
    # one network: no disagreement to measure, nothing flagged; no frame: no descriptors
    item = FindLesionsd("pred", min_area_fraction=0.01)({"pred": ProbabilityInferer()(torch.zeros(1, 1, 40, 40),
                                                                                     networks[0])[0]})
    lesions = MeasureLesionsd("pred")(item)["pred_lesions"]
    assert all(lesion.uncertainty is None and not lesion.review and lesion.descriptors is None for lesion in lesions)
