"""Evaluate the bundle's inference on labelled images: per-image CSV, summary with 95 % bootstrap intervals, plots.

Predictions are made exactly as by the inference workflow (same runner, same pre- and postprocessing) and compared
with the ground truth at each image's original size. See :mod:`scripts.metrics` for how each metric is defined.

Out of fold: given the weights of each cross-validation fold, every image is segmented by the network of the fold
that held it out, so every usable image is scored by a model that never trained on it or on a duplicate of it.

Two evaluations of the same images are compared image by image (paired differences with bootstrap intervals) by
:func:`compare_evaluations` (``configs/compare.json``).
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

__all__ = [
    "Evaluation", "LESION_METRICS", "TARGET_METRICS", "compare_evaluations", "headline", "per_image_scores",
    "read_per_image", "summarise", "summarise_by_source",
]

logger = logging.getLogger(__name__)

# per-image metrics with benign and malignant as one foreground, scored on lesion images
LESION_METRICS = ("lesion_dice", "lesion_iou", "lesion_precision", "lesion_recall", "lesion_hd95_px")
# the figures the model is judged by (the targets of the model card), each a mean over images
TARGET_METRICS = (
    "lesion_dice", "benign_dice", "malignant_dice", "benign_vs_malignant_accuracy", "normal_predicted_empty"
)


def _mean_with_ci(values: list[float], samples: int, seed: int) -> dict:
    array = np.asarray(values, dtype=float)
    valid = array[~np.isnan(array)]
    low, high = bootstrap_ci(valid, samples, seed)
    return {"mean": float(valid.mean()) if valid.size else float("nan"), "ci95": [low, high], "n": int(valid.size)}


def per_image_scores(row: dict) -> dict[str, float]:
    """Each summarised metric on one image of :func:`scripts.metrics.image_metrics`; NaN where the metric does not
    apply to the image's true class (lesion metrics on normal images, the normal-empty score on lesion images)."""
    nan, true_class = float("nan"), row["true_class"]
    correct = float(row["predicted_class"] == true_class)
    on_lesion_images = lambda value: value if true_class > 0 else nan  # noqa: E731
    return {
        **{key: on_lesion_images(row[key]) for key in LESION_METRICS},
        "benign_dice": row["true_class_dice"] if true_class == 1 else nan,
        "benign_iou": row["true_class_iou"] if true_class == 1 else nan,
        "malignant_dice": row["true_class_dice"] if true_class == 2 else nan,
        "malignant_iou": row["true_class_iou"] if true_class == 2 else nan,
        "benign_vs_malignant_accuracy": on_lesion_images(correct),
        "normal_predicted_empty": row["predicted_empty"] if true_class == 0 else nan,
        "lesion_image_missed": on_lesion_images(row["predicted_empty"]),
        "image_accuracy_3class": correct,
        "pixel_accuracy": row["pixel_accuracy"],
        "mean_iou_with_background": row["mean_iou_with_background"],
    }


def summarise(rows: list[dict], samples: int = 1000, seed: int = 0) -> dict:
    """Summary metrics of per-image rows from :func:`scripts.metrics.image_metrics`."""
    if not rows:
        return {"images": 0}
    class_names = load_vocabulary().class_names
    scores = [per_image_scores(r) for r in rows]
    detected = [r["predicted_class"] > 0 for r in rows]
    present = [r["true_class"] > 0 for r in rows]
    tp = sum(d and p for d, p in zip(detected, present))
    precision = tp / max(sum(detected), 1)
    recall = tp / max(sum(present), 1)
    confusion = np.zeros((3, 3), dtype=int)
    for r in rows:
        confusion[r["true_class"], r["predicted_class"]] += 1
    with_ci = {key: _mean_with_ci([s[key] for s in scores], samples, seed) for key in scores[0]}
    return {
        "images": len(rows),
        "images_per_class": {name: sum(r["true_class"] == c for r in rows) for c, name in enumerate(class_names)},
        **with_ci,
        # image level: is a lesion present?
        "lesion_detection": {
            "precision": precision,
            "recall": recall,
            "f1": 2 * precision * recall / max(precision + recall, 1e-9),
        },
        "confusion_matrix": {"rows_true_cols_predicted": class_names, "counts": confusion.tolist()},
    }


# per-image columns that describe the image rather than score it
DESCRIPTIVE_COLUMNS = ("name", "fold", "source", "marks")


def summarise_by_source(rows: list[dict], samples: int = 1000, seed: int = 0) -> dict:
    """:func:`summarise` of all rows, of each source's rows and, where a source flags burned-in marks, of its images
    with and without marks: a model must hold on every source, not only on the pooled images."""
    summary = summarise(rows, samples, seed)
    by_source: dict[str, dict] = {}
    for source in sorted({r.get("source", "") for r in rows} - {""}):
        mine = [r for r in rows if r.get("source") == source]
        by_source[source] = summarise(mine, samples, seed)
        for flag, name in (("yes", "with marks"), ("no", "without marks")):
            if any(r.get("marks") == flag for r in mine):
                by_source[f"{source}, {name}"] = summarise([r for r in mine if r.get("marks") == flag], samples, seed)
    return {**summary, "by_source": by_source} if by_source else summary


def headline(summary: dict) -> str:
    """The target figures of a summary on one line."""
    figures = ", ".join(
        f"{metric.replace('_', ' ')} {summary[metric]['mean']:.3f}"
        for metric in (*TARGET_METRICS, "lesion_image_missed")
        if metric in summary
    )
    return f"{figures} ({summary['images']} images)"


def read_per_image(path: str | Path) -> dict[str, dict]:
    """Rows of an evaluation's ``per_image.csv`` by image name, with numbers as numbers."""
    with open(path, newline="") as stream:
        rows = list(csv.DictReader(stream))
    integer = {"true_class", "predicted_class"}
    as_number = lambda key, text: int(text) if key in integer else float(text)  # noqa: E731
    return {
        r["name"]: {k: v if k in DESCRIPTIVE_COLUMNS else as_number(k, v) for k, v in r.items()} for r in rows
    }


def compare_evaluations(baseline_dir: str, candidate_dir: str | None, samples: int = 1000, seed: int = 0) -> dict:
    """Paired difference, candidate minus baseline, of each target metric and the 3-class accuracy on the images
    both evaluations scored: mean of the per-image differences with a 95 % bootstrap interval over images; the same
    for each source under ``by_source`` when the images come from several.

    Written to ``candidate_dir/paired_against_<baseline folder name>.json`` and logged one metric per line.
    """
    if candidate_dir is None:
        raise ValueError("name the evaluation to compare with the baseline: --candidate_dir eval/<name>")
    baseline = read_per_image(Path(baseline_dir) / "per_image.csv")
    candidate = read_per_image(Path(candidate_dir) / "per_image.csv")
    names = sorted(set(baseline) & set(candidate))
    if not names:
        raise ValueError(f"{baseline_dir} and {candidate_dir} share no image")
    result = {"baseline": str(baseline_dir), "candidate": str(candidate_dir), "images": len(names)}
    result.update(_paired_differences(baseline, candidate, names, samples, seed))
    source_of = {name: candidate[name].get("source") or "" for name in names}
    if len(set(source_of.values())) > 1:
        result["by_source"] = {}
        for source in sorted(set(source_of.values())):
            logger.info(f"{source}:")
            of_source = [name for name in names if source_of[name] == source]
            result["by_source"][source] = {
                "images": len(of_source), **_paired_differences(baseline, candidate, of_source, samples, seed)
            }
    output = Path(candidate_dir) / f"paired_against_{Path(baseline_dir).resolve().name}.json"
    output.write_text(json.dumps(result, indent=2))
    return result


def _paired_differences(baseline: dict, candidate: dict, names: list[str], samples: int, seed: int) -> dict:
    """For each metric, both means and the mean per-image difference with its interval, over the images ``names``."""
    result = {}
    for metric in (*TARGET_METRICS, "lesion_image_missed", "image_accuracy_3class"):
        pairs = np.array([[per_image_scores(t[n])[metric] for t in (baseline, candidate)] for n in names])
        pairs = pairs[~np.isnan(pairs).any(axis=1)]
        if not len(pairs):
            continue  # no image of the metric's kind (a source without normal images)
        difference = pairs[:, 1] - pairs[:, 0]
        result[metric] = entry = {
            "baseline": float(pairs[:, 0].mean()),
            "candidate": float(pairs[:, 1].mean()),
            "difference": float(difference.mean()),
            "ci95": list(bootstrap_ci(difference, samples, seed)),
            "n": int(len(pairs)),
        }
        logger.info(
            f"{metric}: {entry['baseline']:.3f} -> {entry['candidate']:.3f}, difference {entry['difference']:+.3f} "
            f"[{entry['ci95'][0]:+.3f}, {entry['ci95'][1]:+.3f}] (n={entry['n']})"
        )
    return result


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
        eval_sources: the sources whose items are evaluated (default: all), e.g. ``["BUS-UCLM"]`` to score a model
            trained on BUSI alone on every image of the other hospital.
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
        eval_sources: list[str] | None = None,
        training_log_dir: str | None = None,
        bootstrap_samples: int = 1000,
        examples: int = 6,
        seed: int = 0,
    ) -> None:
        if eval_sources is not None:
            datalist = [item for item in datalist if item.get("source") in eval_sources]
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
            described = {"name": name, "fold": item.get("fold", ""), "source": item.get("source", "")}
            if "marks" in item:
                described["marks"] = "yes" if item["marks"] else "no"
            rows.append({**described, **image_metrics(prediction, truth)})
            if index in show:
                shown.append((rows[-1]["name"], image.frames[0], truth, prediction))
        summary = summarise_by_source(rows, self.bootstrap_samples, self.seed)
        self._write_csv(rows)
        (self.output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        self._plot_confusion(np.array(summary["confusion_matrix"]["counts"]))
        self._plot_examples(shown)
        if self.training_log_dir:
            self._plot_training_curves(Path(self.training_log_dir))
        for name, part in {"all": summary, **summary.get("by_source", {})}.items():
            logger.info(f"{name}: {headline(part)}")
        logger.info(f"-> {self.output_dir}")
        return summary

    def _write_csv(self, rows: list[dict]) -> None:
        with open(self.output_dir / "per_image.csv", "w", newline="") as stream:
            # sources that flag burned-in marks add a column; other sources' rows leave it empty
            writer = csv.DictWriter(stream, fieldnames=list(dict.fromkeys(k for row in rows for k in row)), restval="")
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
        if not tags:
            logger.warning(f"no training curves in {log_dir}; training curves not drawn")
            return
        figure = Figure(figsize=(4 * len(tags), 3.2))
        axes = figure.subplots(1, len(tags), squeeze=False)
        for axis, tag in zip(axes[0], tags):
            scalars = events.Scalars(tag)
            axis.plot([s.step for s in scalars], [s.value for s in scalars])
            axis.set_title(tag)
            axis.set_xlabel("epoch" if "dice" in tag else "iteration")
        figure.tight_layout()
        figure.savefig(self.output_dir / "training_curves.png", dpi=120)
