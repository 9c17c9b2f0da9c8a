"""Choose the lesion postprocessing thresholds on out-of-fold predictions.

The networks run once per image (each image by the network of the fold that held it out); every combination of
the grid is then applied to the same probabilities and scored with the evaluation's metrics. The table is written
as CSV, best first by the mean of the target metrics. Choosing thresholds this way uses every usable image without
letting a network judge images it trained on; the chosen values are few, so the out-of-fold figures they give stay
close to what unseen images give.
"""

from __future__ import annotations

import csv
import itertools
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from scripts.evaluate import summarise
from scripts.inference import BatchSegmentation
from scripts.metrics import image_metrics
from scripts.postprocess import FindLesionsd
from scripts.reader import read_image

__all__ = ["PostprocessingSearch", "TARGET_METRICS"]

logger = logging.getLogger(__name__)
TARGET_METRICS = ("lesion_dice", "benign_dice", "malignant_dice", "benign_vs_malignant_accuracy", "normal_predicted_empty")


class PostprocessingSearch:
    """Score a grid of :class:`scripts.postprocess.FindLesionsd` settings on labelled images.

    Args:
        runner: the bundle's inference; its postprocessing is applied with each setting in turn.
        lesion_finder: the runner's lesion-finding step, whose ``settings`` are varied.
        datalist: items with ``image``, ``label`` and ``fold`` paths.
        fold_weights: weights of each fold's network, by fold.
        eval_folds: folds whose images are used.
        output_dir: where ``postprocessing_search.csv`` goes.
        grid: values to try for each setting of ``lesion_finder``.
    """

    def __init__(
        self,
        runner: BatchSegmentation,
        lesion_finder: FindLesionsd,
        datalist: list[dict],
        fold_weights: list[str],
        eval_folds: list[int],
        output_dir: str,
        grid: dict[str, list[float]],
    ) -> None:
        self.runner = runner
        self.lesion_finder = lesion_finder
        self.datalist = [item for item in datalist if item["fold"] in eval_folds]
        self.fold_weights = fold_weights
        self.output_dir = Path(output_dir)
        self.settings = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]

    def run(self) -> list[dict]:
        """Score every combination; returns the rows, best first."""
        default = dict(self.lesion_finder.settings)
        scores: list[list[dict]] = [[] for _ in self.settings]
        key = self.lesion_finder.keys[0]  # where the lesion finder puts its lesion-number map
        try:
            for item in self.datalist:
                self.runner.use_checkpoint(self.fold_weights[item["fold"]])
                predicted = self.runner.probabilities(read_image(item["image"]).frames[:1])[0]
                with Image.open(item["label"]) as pil:
                    truth = np.asarray(pil, dtype=np.uint8)
                # most settings find the same lesions in an image: score each distinct outcome once
                scored: dict[bytes, dict] = {}
                for setting, per_image in zip(self.settings, scores):
                    self.lesion_finder.settings.update(setting)
                    found = self.lesion_finder(dict(predicted))
                    outcome = np.asarray(found[key]).tobytes() + repr(found[f"{key}_found"]).encode()
                    if outcome not in scored:
                        labels = np.asarray(self.runner.postprocessing(dict(predicted))["pred"])[0]
                        scored[outcome] = image_metrics(labels, truth, surface_distance=False)
                    per_image.append(scored[outcome])
        finally:
            self.lesion_finder.settings.update(default)
        rows = []
        for setting, per_image in zip(self.settings, scores):
            summary = summarise(per_image, samples=1)
            row = {**setting, **{metric: round(summary[metric]["mean"], 4) for metric in TARGET_METRICS}}
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
