"""Choose the lesion postprocessing thresholds (and test-time flipping) on the validation split.

The network runs once per image; every combination of ``min_area_fraction`` and ``min_confidence`` is then applied
to the same probabilities and scored with the evaluation's metrics. The table is written as CSV; the best row by
the mean of the target metrics is logged. Run it on validation data only: choosing on the test split would make
the test figures optimistic.
"""

from __future__ import annotations

import csv
import itertools
import logging
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose
from PIL import Image

from scripts.evaluate import summarise
from scripts.inference import SegmentationRunner
from scripts.metrics import image_metrics
from scripts.postprocess import label_lesions
from scripts.reader import read_image

__all__ = ["PostprocessingSearch", "TARGET_METRICS"]

logger = logging.getLogger(__name__)
TARGET_METRICS = ("lesion_dice", "benign_dice", "malignant_dice", "benign_vs_malignant_accuracy", "normal_predicted_empty")


class PostprocessingSearch:
    """Score a grid of postprocessing thresholds, with and without test-time flipping, on labelled images.

    Args:
        runner: the bundle's inference runner; its postprocessing must end with the lesion labelling step.
        datalist: items with ``image`` and ``label`` paths (the validation split).
        output_dir: where ``postprocessing_search.csv`` goes.
        min_area_fractions: values of ``min_lesion_area_fraction`` to try.
        min_confidences: values of ``min_lesion_confidence`` to try.
    """

    def __init__(
        self,
        runner: SegmentationRunner,
        datalist: list[dict],
        output_dir: str,
        min_area_fractions: list[float],
        min_confidences: list[float],
    ) -> None:
        self.runner = runner
        self.datalist = datalist
        self.output_dir = Path(output_dir)
        self.grid = list(itertools.product(min_area_fractions, min_confidences))
        # everything but the final lesion labelling, which is what is being tuned
        self.to_probabilities = Compose(runner.postprocessing.transforms[:-1])

    @torch.inference_mode()
    def _probabilities(self, grey: np.ndarray, tta: bool) -> np.ndarray:
        item = self.runner.preprocessing({"image": MetaTensor(torch.from_numpy(grey[np.newaxis].copy()))})
        batch = item["image"].as_tensor()[np.newaxis].to(self.runner.device)
        probabilities = self.runner.inferer(batch, self.runner.network).softmax(1)
        if tta:
            mirrored = self.runner.inferer(torch.flip(batch, (-1,)), self.runner.network).softmax(1)
            probabilities = (probabilities + torch.flip(mirrored, (-1,))) / 2
        # postprocessing starts with a softmax: hand it log-probabilities so that it returns these probabilities
        return np.asarray(self.to_probabilities({**item, "pred": probabilities[0].log().cpu()})["pred"])

    def run(self) -> list[dict]:
        """Score every combination; returns the rows, best first."""
        self.runner.load_weights()
        scores: dict[tuple, list[dict]] = {}
        for item in self.datalist:
            grey = read_image(item["image"]).frames[0]
            with Image.open(item["label"]) as pil:
                truth = np.asarray(pil, dtype=np.uint8)
            for tta in (False, True):
                probabilities = self._probabilities(grey, tta)
                for area, confidence in self.grid:
                    labels, _ = label_lesions(probabilities, area, confidence)
                    scores.setdefault((tta, area, confidence), []).append(image_metrics(labels, truth))
        rows = []
        for (tta, area, confidence), per_image in scores.items():
            summary = summarise(per_image, samples=1)
            row = {"tta": tta, "min_lesion_area_fraction": area, "min_lesion_confidence": confidence}
            row.update({metric: round(summary[metric]["mean"], 4) for metric in TARGET_METRICS})
            row["mean_of_targets"] = round(float(np.mean([row[m] for m in TARGET_METRICS])), 4)
            rows.append(row)
        rows.sort(key=lambda r: -r["mean_of_targets"])
        self.output_dir.mkdir(parents=True, exist_ok=True)
        with open(self.output_dir / "postprocessing_search.csv", "w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        logger.info(f"best on {len(self.datalist)} images: {rows[0]}")
        return rows
