"""Choose the lesion postprocessing thresholds on out-of-fold predictions.

The networks run once per image (each image by the network of the fold that held it out); every combination of
the grid is then applied to the same probabilities and scored with the evaluation's metrics. The table is written
as CSV, best first by the mean of the target metrics on the worst source (ties broken by the mean over all
images): a setting that is good on one scanner and loses lesions on another is not chosen. Choosing thresholds
this way uses every usable image without letting a network judge images it trained on. The best setting's figures
are still chosen on the images they are measured on, so a second table says what choosing is worth: for each fold,
the setting that is best on the other folds, scored on that fold, and those scores pooled over all folds next to
the default settings'. When a single fold is scored (a network trained on the other folds), its patients and
duplicate groups are dealt into ``parts`` parts within each source, which stand in for the folds.
"""

from __future__ import annotations

import csv
import itertools
import logging
import random
from pathlib import Path

import numpy as np
from PIL import Image

from scripts.evaluate import TARGET_METRICS, summarise
from scripts.inference import BatchSegmentation
from scripts.metrics import image_metrics
from scripts.postprocess import FindLesionsd
from scripts.reader import read_image

__all__ = ["PostprocessingSearch"]

logger = logging.getLogger(__name__)


class PostprocessingSearch:
    """Score a grid of :class:`scripts.postprocess.FindLesionsd` settings on labelled images.

    Args:
        runner: the bundle's inference; its postprocessing is applied with each setting in turn.
        lesion_finder: the runner's lesion-finding step, whose ``settings`` are varied.
        datalist: items with ``image``, ``label`` and ``fold`` paths.
        fold_weights: weights of each fold's network (or list of networks, an ensemble), by fold.
        eval_folds: folds whose images are used.
        output_dir: where ``postprocessing_search.csv`` goes.
        grid: values to try for each setting of ``lesion_finder``.
        parts: with a single fold in ``eval_folds``, how many parts its groups are dealt into for the table of what
            choosing is worth.
    """

    def __init__(
        self,
        runner: BatchSegmentation,
        lesion_finder: FindLesionsd,
        datalist: list[dict],
        fold_weights: list[str | list[str]],
        eval_folds: list[int],
        output_dir: str,
        grid: dict[str, list[float]],
        parts: int = 2,
    ) -> None:
        self.runner = runner
        self.lesion_finder = lesion_finder
        # fold by fold, so that each fold's weights are loaded once
        self.datalist = sorted((item for item in datalist if item["fold"] in eval_folds), key=lambda i: i["fold"])
        self.fold_weights = fold_weights
        self.output_dir = Path(output_dir)
        self.settings = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
        self.parts = parts

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
        sources = [item.get("source", "") for item in self.datalist]
        rows = [{**setting, **_targets(per_image, sources)} for setting, per_image in zip(self.settings, scores)]
        rows.sort(key=_rank)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        _write_csv(self.output_dir / "postprocessing_search.csv", rows)
        logger.info(f"best on {len(self.datalist)} images: {rows[0]}")
        folds = [str(item["fold"]) for item in self.datalist]
        if len(set(folds)) == 1:
            folds = held_out_parts(self.datalist, self.parts)
        if len(set(folds)) > 1:
            chosen = self._choose_without_each_fold(
                scores, folds, sources, {name: default[name] for name in self.settings[0]}
            )
            _write_csv(self.output_dir / "chosen_without_each_fold.csv", chosen)
            for row in chosen[-2:]:
                logger.info(f"{row['fold']}: {row}")
        return rows

    def _choose_without_each_fold(
        self, scores: list[list[dict]], folds: list[str], sources: list[str], default: dict
    ) -> list[dict]:
        """Per fold: the setting best on the other folds and its scores on this fold; then pooled and the defaults."""
        rows, pooled, pooled_sources = [], [], []
        for fold in sorted(set(folds)):
            others = [i for i, f in enumerate(folds) if f != fold]
            held_out = [i for i, f in enumerate(folds) if f == fold]
            best = min(
                range(len(self.settings)),
                key=lambda s: _rank(_targets([scores[s][i] for i in others], [sources[i] for i in others])),
            )
            pooled += [scores[best][i] for i in held_out]
            pooled_sources += [sources[i] for i in held_out]
            rows.append({
                "fold": fold, **self.settings[best],
                **_targets([scores[best][i] for i in held_out], [sources[i] for i in held_out]),
            })
        rows.append({"fold": "all, each fold's setting chosen on the others", **_targets(pooled, pooled_sources)})
        if default in self.settings:
            rows.append({
                "fold": "all, default settings", **default,
                **_targets(scores[self.settings.index(default)], sources),
            })
        return rows


def held_out_parts(datalist: list[dict], parts: int, seed: int = 0) -> list[str]:
    """The part of each item of one fold, e.g. ``"0, part 1 of 2"``: within each source, its groups (patients,
    duplicate groups; an image without one is its own) shuffled and dealt in turn, so one scan never sits in two."""
    group_of = [(item.get("source", ""), item.get("group") or item.get("name") or item["image"]) for item in datalist]
    part_of: dict[tuple[str, str], int] = {}
    for source in sorted({source for source, _ in group_of}):
        groups = sorted({group for s, group in group_of if s == source})
        random.Random(seed).shuffle(groups)
        part_of.update({(source, group): index % parts for index, group in enumerate(groups)})
    return [f"{item['fold']}, part {part_of[key] + 1} of {parts}" for item, key in zip(datalist, group_of)]


def _rank(row: dict) -> tuple[float, float]:
    """Sort key of a setting's row, best first: the worst source's mean of the targets, then (many settings find the
    same lesions on one source) the mean over all images."""
    return -row["worst_source_mean_of_targets"], -row["mean_of_targets"]


def _targets(per_image: list[dict], sources: list[str]) -> dict:
    """The target metrics of some images, their mean (of those defined: a class may have no images), the share of
    lesion images left empty, and the mean of the targets on each source and on the worst one.

    Settings are ranked by the worst source: one that is good on one scanner and loses lesions on another is not
    chosen."""

    def mean_of_targets(summary: dict) -> float:
        return float(np.nanmean([summary[metric]["mean"] for metric in TARGET_METRICS]))

    summary = summarise(per_image, samples=1)
    row = {metric: round(summary[metric]["mean"], 4) for metric in (*TARGET_METRICS, "lesion_image_missed")}
    row["mean_of_targets"] = round(mean_of_targets(summary), 4)
    by_source = {
        source: mean_of_targets(summarise([r for r, s in zip(per_image, sources) if s == source], samples=1))
        for source in sorted(set(sources))
    }
    if len(by_source) > 1:
        row.update({f"mean_of_targets_{source}": round(value, 4) for source, value in by_source.items()})
    row["worst_source_mean_of_targets"] = round(min(by_source.values()), 4)
    return row


def _write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(field for row in rows for field in row))
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
