"""Evaluate the bundle's inference on labelled images: per-image CSV, summary with 95 % bootstrap intervals, plots.

Predictions are made exactly as by the inference workflow (same runner, same pre- and postprocessing) and compared
with the ground truth at each image's original size. See :mod:`scripts.metrics` for how each metric is defined.

Out of fold: given the weights of each cross-validation fold, every image is segmented by the network of the fold
that held it out, so every usable image is scored by a model that never trained on it or on a duplicate of it.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from scripts.inference import BatchSegmentation
from scripts.labels import load_vocabulary
from scripts.metrics import bootstrap_ci, image_metrics
from scripts.predict import checkpoint_paths
from scripts.reader import read_image
from scripts.writers import overlay_picture

__all__ = ["Evaluation", "summarise"]

logger = logging.getLogger(__name__)


def _mean_with_ci(values: list[float], samples: int, seed: int) -> dict:
    array = np.asarray(values, dtype=float)
    valid = array[~np.isnan(array)]
    low, high = bootstrap_ci(valid, samples, seed)
    return {"mean": float(valid.mean()) if valid.size else float("nan"), "ci95": [low, high], "n": int(valid.size)}


def summarise(rows: list[dict], samples: int = 1000, seed: int = 0) -> dict:
    """Summary metrics of per-image rows from :func:`scripts.metrics.image_metrics`."""
    class_names = load_vocabulary().class_names
    lesion = [r for r in rows if r["true_class"] > 0]
    normal = [r for r in rows if r["true_class"] == 0]
    of = lambda subset, key: [r[key] for r in subset]  # noqa: E731
    detected = [r["predicted_class"] > 0 for r in rows]
    present = [r["true_class"] > 0 for r in rows]
    tp = sum(d and p for d, p in zip(detected, present))
    precision = tp / max(sum(detected), 1)
    recall = tp / max(sum(present), 1)
    confusion = np.zeros((3, 3), dtype=int)
    for r in rows:
        confusion[r["true_class"], r["predicted_class"]] += 1
    return {
        "images": len(rows),
        "images_per_class": {name: sum(r["true_class"] == c for r in rows) for c, name in enumerate(class_names)},
        "lesion_dice": _mean_with_ci(of(lesion, "lesion_dice"), samples, seed),
        "lesion_iou": _mean_with_ci(of(lesion, "lesion_iou"), samples, seed),
        "lesion_precision": _mean_with_ci(of(lesion, "lesion_precision"), samples, seed),
        "lesion_recall": _mean_with_ci(of(lesion, "lesion_recall"), samples, seed),
        "lesion_hd95_px": _mean_with_ci(of(lesion, "lesion_hd95_px"), samples, seed),
        "benign_dice": _mean_with_ci([r["true_class_dice"] for r in lesion if r["true_class"] == 1], samples, seed),
        "benign_iou": _mean_with_ci([r["true_class_iou"] for r in lesion if r["true_class"] == 1], samples, seed),
        "malignant_dice": _mean_with_ci([r["true_class_dice"] for r in lesion if r["true_class"] == 2], samples, seed),
        "malignant_iou": _mean_with_ci([r["true_class_iou"] for r in lesion if r["true_class"] == 2], samples, seed),
        "benign_vs_malignant_accuracy": _mean_with_ci(
            [float(r["predicted_class"] == r["true_class"]) for r in lesion], samples, seed
        ),
        "normal_predicted_empty": _mean_with_ci(of(normal, "predicted_empty"), samples, seed),
        "image_accuracy_3class": _mean_with_ci(
            [float(r["predicted_class"] == r["true_class"]) for r in rows], samples, seed
        ),
        # image level: is a lesion present?
        "lesion_detection": {
            "precision": precision,
            "recall": recall,
            "f1": 2 * precision * recall / max(precision + recall, 1e-9),
        },
        "pixel_accuracy": _mean_with_ci(of(rows, "pixel_accuracy"), samples, seed),
        "mean_iou_with_background": _mean_with_ci(of(rows, "mean_iou_with_background"), samples, seed),
        "confusion_matrix": {"rows_true_cols_predicted": class_names, "counts": confusion.tolist()},
    }


class Evaluation:
    """Run the inference on labelled images and write ``per_image.csv``, ``summary.json`` and PNG figures.

    Args:
        runner: the bundle's inference (its ``segment`` is used, nothing is written by it).
        datalist: items with ``image`` (path), ``label`` (label-map PNG, 0/1/2), ``name`` and, out of fold, ``fold``.
        output_dir: where the results go.
        fold_weights: weights of each fold's network (or list of networks, an ensemble), by fold; each item is then
            segmented by the network of its fold. None segments every item with the runner's own weights.
        eval_folds: the folds whose items are evaluated (default: all of ``fold_weights``); lets a partly
            trained cross-validation be scored on the folds that are done.
        training_log_dir: TensorBoard folder of the training run, for the training-curve figure (optional).
        bootstrap_samples: resamples for the 95 % intervals.
        examples: images shown in the example grid.
        seed: seed of the bootstrap and of the choice of examples.
    """

    def __init__(
        self,
        runner: BatchSegmentation,
        datalist: list[dict],
        output_dir: str,
        fold_weights: list[str | list[str]] | None = None,
        eval_folds: list[int] | None = None,
        training_log_dir: str | None = None,
        bootstrap_samples: int = 1000,
        examples: int = 6,
        seed: int = 0,
    ) -> None:
        if fold_weights is not None:
            eval_folds = list(range(len(fold_weights))) if eval_folds is None else list(eval_folds)
            needed = [path for k in eval_folds for path in checkpoint_paths(fold_weights[k])]
            if missing := [str(path) for path in needed if not path.is_file()]:
                raise FileNotFoundError(f"fold weights not found: {', '.join(missing)}")
            datalist = sorted((item for item in datalist if item["fold"] in eval_folds), key=lambda i: i["fold"])
        if not datalist:
            raise ValueError("the evaluation datalist is empty")
        self.runner = runner
        self.fold_weights = fold_weights
        self.datalist = datalist
        self.output_dir = Path(output_dir)
        self.training_log_dir = training_log_dir
        self.bootstrap_samples = bootstrap_samples
        self.examples = examples
        self.seed = seed

    def run(self) -> dict:
        """Evaluate every item; returns the summary."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        rows, shown = [], []
        rng = np.random.default_rng(self.seed)
        show = set(rng.choice(len(self.datalist), size=min(self.examples, len(self.datalist)), replace=False).tolist())
        for index, item in enumerate(self.datalist):
            if self.fold_weights is not None:
                self.runner.use_checkpoint(self.fold_weights[item["fold"]])
            image = read_image(item["image"])
            with Image.open(item["label"]) as pil:
                truth = np.asarray(pil, dtype=np.uint8)
            prediction = self.runner.segment(image).labels[0]
            name = item.get("name", Path(item["image"]).name)
            rows.append({"name": name, "fold": item.get("fold", ""), **image_metrics(prediction, truth)})
            if index in show:
                shown.append((rows[-1]["name"], image.frames[0], truth, prediction))
        summary = summarise(rows, self.bootstrap_samples, self.seed)
        self._write_csv(rows)
        (self.output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        self._plot_confusion(np.array(summary["confusion_matrix"]["counts"]))
        self._plot_examples(shown)
        if self.training_log_dir:
            self._plot_training_curves(Path(self.training_log_dir))
        logger.info(
            "lesion Dice {:.3f}, benign Dice {:.3f}, malignant Dice {:.3f}, benign-vs-malignant accuracy {:.3f}, "
            "normal predicted empty {:.3f} ({} images) -> {}".format(
                summary["lesion_dice"]["mean"],
                summary["benign_dice"]["mean"],
                summary["malignant_dice"]["mean"],
                summary["benign_vs_malignant_accuracy"]["mean"],
                summary["normal_predicted_empty"]["mean"],
                len(rows),
                self.output_dir,
            )
        )
        return summary

    def _write_csv(self, rows: list[dict]) -> None:
        with open(self.output_dir / "per_image.csv", "w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    def _plot_confusion(self, counts: np.ndarray) -> None:
        figure = Figure(figsize=(4, 3.6))
        axes = figure.subplots()
        axes.imshow(counts, cmap="Blues")
        for (i, j), value in np.ndenumerate(counts):
            axes.text(j, i, str(value), ha="center", va="center", color="black")
        class_names = load_vocabulary().class_names
        axes.set_xticks(range(len(class_names)), class_names)
        axes.set_yticks(range(len(class_names)), class_names)
        axes.set_xlabel("predicted")
        axes.set_ylabel("true")
        axes.set_title("image-level class")
        figure.tight_layout()
        figure.savefig(self.output_dir / "confusion_matrix.png", dpi=120)

    def _plot_examples(self, shown: list[tuple]) -> None:
        if not shown:
            return
        figure = Figure(figsize=(9, 3 * len(shown)))
        axes = figure.subplots(len(shown), 3, squeeze=False)
        for row, (name, grey, truth, prediction) in enumerate(shown):
            pictures = [(name, grey), ("ground truth", overlay_picture(grey, truth))]
            pictures.append(("prediction", overlay_picture(grey, prediction)))
            for column, (title, picture) in enumerate(pictures):
                axes[row, column].imshow(picture, cmap="gray")
                axes[row, column].set_title(title, fontsize=9)
                axes[row, column].axis("off")
        figure.suptitle("green: benign, red: malignant")
        figure.tight_layout()
        figure.savefig(self.output_dir / "examples.png", dpi=100)

    def _plot_training_curves(self, log_dir: Path) -> None:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        if not any(log_dir.glob("events.out.tfevents.*")):
            logger.warning(f"no TensorBoard events in {log_dir}; training curves not drawn")
            return
        events = EventAccumulator(str(log_dir))
        events.Reload()
        tags = [t for t in ("train_loss", "val_mean_dice", "train_mean_dice") if t in events.Tags()["scalars"]]
        figure = Figure(figsize=(4 * len(tags), 3.2))
        axes = figure.subplots(1, len(tags), squeeze=False)
        for axis, tag in zip(axes[0], tags):
            scalars = events.Scalars(tag)
            axis.plot([s.step for s in scalars], [s.value for s in scalars])
            axis.set_title(tag)
            axis.set_xlabel("epoch" if "dice" in tag else "iteration")
        figure.tight_layout()
        figure.savefig(self.output_dir / "training_curves.png", dpi=120)
