"""Turn class probabilities into a lesion label map: one class per connected lesion, specks dropped, holes filled.

The work is split in two so that the expensive part runs on the network's small grid:

1. :func:`find_lesions`, at network resolution: a pixel belongs to a lesion when the background probability is
   below one half; holes are filled; each connected lesion takes one class, from its malignant share of the summed
   probability over its pixels (``malignancy_threshold``), so a lesion is never half benign and half malignant.
   Lesions smaller than ``min_area_fraction`` of the image, or whose mean lesion probability is below
   ``min_confidence``, are dropped; so is every lesion when the image head says the image is normal with
   probability above ``max_normal_probability``. The result is a map of lesion numbers (0 none, k lesion k) and
   the class and :class:`LesionConfidence` of each lesion, with the malignancy probability its class was decided
   on (temperature-scaled when ``malignancy_temperature`` is set).
2. The lesion-number map is resized to the frame's size (nearest neighbour, by inverting the preprocessing), and
   :func:`measure_lesions` turns it into the class label map and measures each lesion: area and bounding box, and,
   on the frame's own pixels and spacing, the descriptors of :mod:`scripts.descriptors`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from scipy import ndimage

from scripts.calibration import Calibration
from scripts.descriptors import LesionDescriptors, describe_lesion
from scripts.labels import load_vocabulary
from scripts.network import PIXEL_CHANNELS
from scripts.predict import split_probabilities

__all__ = [
    "Lesion",
    "LesionConfidence",
    "FindLesionsd",
    "MeasureLesionsd",
    "find_lesions",
    "measure_lesions",
]


@dataclass(frozen=True)
class LesionConfidence:
    """How far the network's call on one lesion can be trusted, from the probabilities at network resolution.

    Attributes:
        mean: mean probability of the lesion's class over its pixels.
        peak: highest probability of the lesion's class over its pixels.
        uncertainty: mean over the lesion's pixels of the views' disagreement (see
            :class:`scripts.predict.ProbabilityInferer`): how much the networks of the ensemble, and the mirrored
            image under test-time augmentation, differ on it; None when one view was all there was.
        review: the uncertainty is above the review threshold: a reader should check this lesion.
        malignancy: the probability that the lesion is malignant that its class is decided on (malignant above the
            threshold, one half by default; see :func:`find_lesions`), temperature-scaled when a temperature is set;
            None when not computed.
    """

    mean: float
    peak: float
    uncertainty: float | None
    review: bool
    malignancy: float | None = None


@dataclass
class Lesion:
    """One connected lesion of a frame's label map.

    Attributes:
        lesion_id: 1-based number of the lesion within its frame, largest first.
        label: 1 benign, 2 malignant.
        class_name: "benign" or "malignant".
        confidence: mean probability of ``label`` over the lesion's pixels.
        area_px: number of pixels.
        bbox: (row_min, col_min, row_max, col_max), inclusive.
        peak_probability: highest probability of ``label`` over the lesion's pixels.
        uncertainty: see :class:`LesionConfidence`; None without several views.
        review: flagged for review because of a high uncertainty.
        malignancy_probability: see :class:`LesionConfidence`'s ``malignancy``.
        descriptors: measurements and suggested BI-RADS terms computed from the lesion's segmentation
            (:mod:`scripts.descriptors`); None when not computed.
    """

    lesion_id: int
    label: int
    class_name: str
    confidence: float
    area_px: int
    bbox: tuple[int, int, int, int]
    peak_probability: float | None = None
    uncertainty: float | None = None
    review: bool = False
    descriptors: LesionDescriptors | None = None
    malignancy_probability: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``ndimage.binary_fill_holes`` in one labelling pass instead of dilating the background pixel by pixel."""
    background, _ = ndimage.label(~mask)
    outside = np.unique(np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]]))
    return mask | ~np.isin(background, outside)


def find_lesions(
    pixel_probabilities: np.ndarray,
    image_probabilities: np.ndarray | None = None,
    min_area_fraction: float = 0.001,
    min_confidence: float = 0.5,
    max_normal_probability: float = 1.0,
    image_class_weight: float = 0.0,
    disagreement: np.ndarray | None = None,
    review_uncertainty: float = 1.0,
    malignancy_temperature: float = 1.0,
    malignancy_threshold: float = 0.5,
) -> tuple[np.ndarray, list[tuple[int, LesionConfidence]]]:
    """Lesion-number map and ``(label, confidence)`` of each lesion, at the probabilities' resolution.

    Args:
        pixel_probabilities: (3, rows, columns): background, benign, malignant.
        image_probabilities: (3,) image-class probabilities (normal, benign, malignant), or None without an image head.
        min_area_fraction: lesions smaller than this fraction of the frame are dropped.
        min_confidence: lesions whose mean lesion probability (benign + malignant) is below this are dropped.
        max_normal_probability: no lesion is kept when the image head's normal probability is above this.
        image_class_weight: how much the image head, rather than the lesion's pixels, decides whether a lesion is
            malignant: the lesion is malignant when the weighted mean of the two malignant shares (malignant over
            benign + malignant, of the pixels summed over the lesion and of the image head) is above
            ``malignancy_threshold``.
        disagreement: (rows, columns) disagreement of the views the probabilities average, or None for one view.
        review_uncertainty: a lesion whose mean disagreement is above this is flagged for review.
        malignancy_temperature: temperature of the reported malignancy probability (:mod:`scripts.calibration`):
            its logit is divided by it; 1 reports the probability as the networks give it. It never changes a
            lesion's class.
        malignancy_threshold: a lesion is malignant when its malignancy (before the temperature) is above this.

    Returns:
        int32 map (0 none, k for the k-th lesion) and the lesions' label and :class:`LesionConfidence`, numbered
        from 1.
    """
    if pixel_probabilities.ndim != 3 or pixel_probabilities.shape[0] != PIXEL_CHANNELS:
        raise ValueError(f"expected probabilities of shape (3, rows, columns), got {pixel_probabilities.shape}")
    if disagreement is not None and disagreement.shape != pixel_probabilities.shape[1:]:
        raise ValueError(f"disagreement of shape {disagreement.shape} does not match {pixel_probabilities.shape}")
    numbers = np.zeros(pixel_probabilities.shape[1:], dtype=np.int32)
    if image_probabilities is not None and image_probabilities[0] > max_normal_probability:
        return numbers, []
    lesion_probability = pixel_probabilities[1] + pixel_probabilities[2]
    components, _ = ndimage.label(_fill_holes(lesion_probability > 0.5))
    min_area = min_area_fraction * numbers.size
    image_malignant_share = 0.5
    if image_probabilities is not None:
        image_malignant_share = image_probabilities[2] / max(image_probabilities[1] + image_probabilities[2], 1e-6)
    calibration = Calibration(temperature=malignancy_temperature)
    found = []
    for index, region in enumerate(ndimage.find_objects(components), start=1):
        mask = components[region] == index
        if mask.sum() < min_area or lesion_probability[region][mask].mean() < min_confidence:
            continue
        benign, malignant = (pixel_probabilities[c][region][mask].sum() for c in (1, 2))
        malignant_share = malignant / max(benign + malignant, 1e-6)
        weighted = (1 - image_class_weight) * malignant_share + image_class_weight * image_malignant_share
        label = 2 if weighted > malignancy_threshold else 1
        numbers[region][mask] = len(found) + 1
        class_probability = pixel_probabilities[label][region][mask]
        uncertainty = None if disagreement is None else round(float(disagreement[region][mask].mean()), 4)
        confidence = LesionConfidence(
            mean=round(float(class_probability.mean()), 4),
            peak=round(float(class_probability.max()), 4),
            uncertainty=uncertainty,
            review=uncertainty is not None and uncertainty > review_uncertainty,
            malignancy=round(float(calibration(weighted)), 4),
        )
        found.append((label, confidence))
    return numbers, found


def measure_lesions(
    numbers: np.ndarray,
    found: list[tuple[int, LesionConfidence]],
    grey: np.ndarray | None = None,
    spacing: tuple[float, float] | None = None,
) -> tuple[np.ndarray, list[Lesion]]:
    """Class label map and :class:`Lesion` list of a lesion-number map (any resolution).

    Areas and bounding boxes are counted inside each lesion's bounding box, so their cost grows with the lesions,
    not with the frame. Lesions that vanished in resizing are left out; the rest are renumbered largest first.

    Args:
        numbers: lesion-number map (0 none, k lesion k), as :func:`find_lesions` gives it, at any resolution.
        found: each lesion's label and confidence, from :func:`find_lesions`.
        grey: the frame ``numbers`` lies on, for the descriptors; None to leave the descriptors out.
        spacing: (row, column) pixel size of the frame in mm, or None when unknown.
    """
    classes = np.array([0] + [label for label, _ in found], dtype=np.uint8)
    labels = classes[numbers]
    names = load_vocabulary().class_names
    measured = []
    for index, region in enumerate(ndimage.find_objects(numbers), start=1):
        if region is None:
            continue
        area = int(np.count_nonzero(numbers[region] == index))
        bbox = tuple(int(v) for v in (region[0].start, region[1].start, region[0].stop - 1, region[1].stop - 1))
        descriptors = None if grey is None else describe_lesion(numbers == index, grey, spacing)
        measured.append((area, *found[index - 1], bbox, descriptors))
    measured.sort(key=lambda item: -item[0])
    lesions = [
        Lesion(k, label, names[label], confidence.mean, area, bbox, confidence.peak, confidence.uncertainty,
               confidence.review, descriptors, confidence.malignancy)
        for k, (area, label, confidence, bbox, descriptors) in enumerate(measured, start=1)
    ]
    return labels, lesions


def _numpy(array: torch.Tensor | np.ndarray) -> np.ndarray:
    return array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)


class FindLesionsd(MapTransform):
    """Probabilities ``(3, 4, 6 or 7, h, w)`` -> lesion-number map ``(1, h, w)``; see :func:`find_lesions`.

    The channels are those of :class:`scripts.predict.ProbabilityInferer` (taken apart by
    :func:`scripts.predict.split_probabilities`): pixel-class probabilities, image-class probabilities of networks
    with an image head, and the views' disagreement when several were averaged. The lesions' classes and
    confidences go to ``<key>_found``. Inverting the preprocessing (``Invertd``, nearest neighbour) then brings the
    map to the frame's size.
    """

    def __init__(
        self,
        keys: KeysCollection,
        min_area_fraction: float = 0.001,
        min_confidence: float = 0.5,
        max_normal_probability: float = 1.0,
        image_class_weight: float = 0.0,
        review_uncertainty: float = 1.0,
        malignancy_temperature: float = 1.0,
        malignancy_threshold: float = 0.5,
    ) -> None:
        super().__init__(keys)
        self.settings = dict(
            min_area_fraction=min_area_fraction,
            min_confidence=min_confidence,
            max_normal_probability=max_normal_probability,
            image_class_weight=image_class_weight,
            review_uncertainty=review_uncertainty,
            malignancy_temperature=malignancy_temperature,
            malignancy_threshold=malignancy_threshold,
        )

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            pixel, image, disagreement = split_probabilities(_numpy(d[key]).astype(np.float32, copy=False))
            numbers, d[f"{key}_found"] = find_lesions(pixel, image, disagreement=disagreement, **self.settings)
            # a MetaTensor, so that Invertd takes the resizing to undo from the "image" entry
            d[key] = MetaTensor(torch.from_numpy(numbers[np.newaxis].astype(np.float32)))
        return d


class MeasureLesionsd(MapTransform):
    """Lesion-number map ``(1, H, W)`` -> uint8 class label map ``(1, H, W)`` and ``<key>_lesions``.

    See :func:`measure_lesions`; reads the classes that :class:`FindLesionsd` put in ``<key>_found``. The lesion
    descriptors are computed when the item carries the frame itself, ``(H, W)``, under ``frame_key`` (as
    :meth:`scripts.inference.BatchSegmentation.segment` gives it, with the frame's ``(row, column)`` spacing in mm, or
    None, under ``spacing_key``); tools that run the bundle's ``postprocessing`` on items without it get the lesions
    without descriptors.

    Args:
        keys: lesion-number map keys.
        frame_key: key of the frame the map lies on.
        spacing_key: key of the frame's pixel spacing.
    """

    def __init__(self, keys: KeysCollection, frame_key: str = "frame", spacing_key: str = "spacing") -> None:
        super().__init__(keys)
        self.frame_key, self.spacing_key = frame_key, spacing_key

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        grey = d.get(self.frame_key)
        grey = None if grey is None else np.asarray(grey, dtype=np.float32)
        for key in self.key_iterator(d):
            numbers = np.rint(_numpy(d[key])[0]).astype(np.int32)
            labels, d[f"{key}_lesions"] = measure_lesions(
                numbers, d.pop(f"{key}_found"), grey, d.get(self.spacing_key)
            )
            d[key] = labels[np.newaxis]
        return d
