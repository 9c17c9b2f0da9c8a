"""Per-image segmentation metrics for background (0) / benign (1) / malignant (2) label maps.

Conventions, chosen so that false positives on normal images are never hidden (MONAI's ``DiceMetric`` with its
default ``ignore_empty=True`` would score them as NaN and drop them):

- lesion metrics treat benign and malignant together as foreground and are reported for lesion images;
- a normal image (empty ground truth) is scored by whether its prediction is empty;
- Dice / IoU of an empty ground truth and an empty prediction is 1, and of an empty one and a non-empty one 0;
- HD95 is computed only when both masks are non-empty (the count of such images is reported);
- the image-level class of a prediction is "normal" when it has no lesion, otherwise the class with more pixels.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance

__all__ = ["dice", "iou", "hd95", "image_class", "image_metrics", "bootstrap_ci"]


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks; 1 when both are empty."""
    total = prediction.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(prediction, truth).sum() / total)


def iou(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two boolean masks; 1 when both are empty."""
    union = np.logical_or(prediction, truth).sum()
    return 1.0 if union == 0 else float(np.logical_and(prediction, truth).sum() / union)


def hd95(prediction: np.ndarray, truth: np.ndarray, spacing: tuple[float, float] | None = None) -> float:
    """95th-percentile Hausdorff distance in pixels (in mm when ``spacing`` is given); NaN if a mask is empty."""
    if not prediction.any() or not truth.any():
        return float("nan")
    to_tensor = lambda mask: torch.as_tensor(mask[np.newaxis, np.newaxis], dtype=torch.float32)  # noqa: E731
    distance = compute_hausdorff_distance(
        to_tensor(prediction), to_tensor(truth), include_background=True, percentile=95, spacing=spacing
    )
    return float(distance.item())


def image_class(labels: np.ndarray) -> int:
    """Image-level class of a label map: 0 when empty, else the lesion class with more pixels (ties: malignant)."""
    benign, malignant = int((labels == 1).sum()), int((labels == 2).sum())
    if benign + malignant == 0:
        return 0
    return 2 if malignant >= benign else 1


def image_metrics(prediction: np.ndarray, truth: np.ndarray, surface_distance: bool = True) -> dict[str, float]:
    """All per-image metrics of one predicted label map against its ground truth (same shape).

    ``surface_distance=False`` leaves out HD95 (NaN), by far the slowest, for searches that do not rank by it.
    """
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from ground truth shape {truth.shape}")
    predicted_lesion, true_lesion = prediction > 0, truth > 0
    true_class, predicted_class = image_class(truth), image_class(prediction)
    tp = np.logical_and(predicted_lesion, true_lesion).sum()
    present = [c for c in range(3) if (prediction == c).any() or (truth == c).any()]
    row = {
        "true_class": true_class,
        "predicted_class": predicted_class,
        "lesion_dice": dice(predicted_lesion, true_lesion),
        "lesion_iou": iou(predicted_lesion, true_lesion),
        "lesion_precision": float(tp / predicted_lesion.sum()) if predicted_lesion.any() else float("nan"),
        "lesion_recall": float(tp / true_lesion.sum()) if true_lesion.any() else float("nan"),
        "lesion_hd95_px": hd95(predicted_lesion, true_lesion) if surface_distance else float("nan"),
        # Dice / IoU of the image's true lesion class (benign images: class 1, malignant images: class 2)
        "true_class_dice": dice(prediction == true_class, truth == true_class) if true_class else float("nan"),
        "true_class_iou": iou(prediction == true_class, truth == true_class) if true_class else float("nan"),
        "predicted_empty": float(not predicted_lesion.any()),
        "pixel_accuracy": float((prediction == truth).mean()),
        # mean over background, benign and malignant of the classes present in truth or prediction
        "mean_iou_with_background": float(np.mean([iou(prediction == c, truth == c) for c in present])),
    }
    return row


def bootstrap_ci(values: np.ndarray, samples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (NaNs dropped); (nan, nan) when empty."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = rng.choice(values, size=(samples, values.size), replace=True).mean(axis=1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))
