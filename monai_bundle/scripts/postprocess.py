"""Turn class probabilities into a lesion label map: one class per connected lesion, specks dropped, holes filled.

The network gives per-pixel probabilities of background, benign and malignant. A pixel belongs to a lesion when the
background probability is below one half; each connected lesion then takes the class with the larger summed
probability over its pixels, so a lesion is never half benign and half malignant. Lesions smaller than
``min_area_fraction`` of the image, or whose mean lesion probability is below ``min_confidence``, are dropped:
they are the false positives that turn a normal image into a lesion image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from scipy import ndimage

__all__ = ["CLASS_NAMES", "Lesion", "LesionPostprocess", "LesionPostprocessd", "label_lesions"]

CLASS_NAMES = {1: "benign", 2: "malignant"}


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
    """

    lesion_id: int
    label: int
    class_name: str
    confidence: float
    area_px: int
    bbox: tuple[int, int, int, int]

    def to_dict(self) -> dict:
        return asdict(self)


def label_lesions(
    probabilities: np.ndarray, min_area_fraction: float = 0.001, min_confidence: float = 0.5
) -> tuple[np.ndarray, list[Lesion]]:
    """Label map and lesion list of one frame.

    Args:
        probabilities: (3, rows, columns) softmax output: background, benign, malignant.
        min_area_fraction: lesions smaller than this fraction of the frame are dropped.
        min_confidence: lesions whose mean lesion probability (benign + malignant) is below this are dropped.

    Returns:
        uint8 label map (0 background, 1 benign, 2 malignant) and the lesions, largest first.
    """
    if probabilities.ndim != 3 or probabilities.shape[0] != 3:
        raise ValueError(f"expected probabilities of shape (3, rows, columns), got {probabilities.shape}")
    lesion_probability = probabilities[1] + probabilities[2]
    foreground = ndimage.binary_fill_holes(lesion_probability > 0.5)
    components, count = ndimage.label(foreground)
    labels = np.zeros(foreground.shape, dtype=np.uint8)
    min_area = min_area_fraction * foreground.size
    found = []
    for index, region in enumerate(ndimage.find_objects(components), start=1):
        mask = components[region] == index
        area = int(mask.sum())
        if area < min_area or lesion_probability[region][mask].mean() < min_confidence:
            continue
        benign, malignant = probabilities[1][region][mask].sum(), probabilities[2][region][mask].sum()
        label = 2 if malignant > benign else 1
        labels[region][mask] = label
        bbox = (region[0].start, region[1].start, region[0].stop - 1, region[1].stop - 1)
        found.append((area, label, float(probabilities[label][region][mask].mean()), bbox))
    found.sort(key=lambda item: -item[0])
    lesions = [
        Lesion(k, label, CLASS_NAMES[label], round(confidence, 4), area, tuple(int(v) for v in bbox))
        for k, (area, label, confidence, bbox) in enumerate(found, start=1)
    ]
    return labels, lesions


class LesionPostprocess:
    """Array transform: (3, H, W) probabilities -> (1, H, W) uint8 label map; see :func:`label_lesions`."""

    def __init__(self, min_area_fraction: float = 0.001, min_confidence: float = 0.5) -> None:
        self.min_area_fraction = min_area_fraction
        self.min_confidence = min_confidence

    def __call__(self, probabilities: torch.Tensor | np.ndarray) -> tuple[np.ndarray, list[Lesion]]:
        array = probabilities.detach().cpu().numpy() if isinstance(probabilities, torch.Tensor) else probabilities
        array = np.asarray(array, dtype=np.float32)
        labels, lesions = label_lesions(array, self.min_area_fraction, self.min_confidence)
        return labels[np.newaxis], lesions


class LesionPostprocessd(MapTransform):
    """Dictionary wrapper of :class:`LesionPostprocess`; the lesion list goes to ``<key>_lesions``."""

    def __init__(self, keys: KeysCollection, min_area_fraction: float = 0.001, min_confidence: float = 0.5) -> None:
        super().__init__(keys)
        self.postprocess = LesionPostprocess(min_area_fraction, min_confidence)

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key], d[f"{key}_lesions"] = self.postprocess(d[key])
        return d
