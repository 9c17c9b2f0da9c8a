"""Adds corrected segmentations to a training set: a folder in the ``images/ masks/ labels.csv`` layout that the
bundle's data preparation reads (``scripts/prepare.py``, layout ``folder``) and its fine-tuning trains on.

One case is ``images/<id>.png`` (8-bit grey), ``masks/<id>.png`` (8-bit: 0 background, 1 benign, 2 malignant) and a
row of ``labels.csv`` with at least the columns ``id``, ``pathology`` (normal, benign or malignant) and
``split_group`` (the patient or study: the images of one group stay on one side of every split). Files are only
ever created, never replaced: an id that is taken gets a number appended.
"""

from __future__ import annotations

import csv
import glob
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["COLUMNS", "LABELS_FILE", "TrainingCase", "add_case", "grey_8bit", "pathology_of"]

LABELS_FILE = "labels.csv"
COLUMNS = ("id", "pathology", "split_group")
# Label values of the masks, as the bundle's label vocabulary defines them.
BENIGN, MALIGNANT = 1, 2
# Colour to grey as everywhere in the bundle, training included: ITU-R BT.601 luma.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class TrainingCase:
    """A case written by :func:`add_case`: its id, its row of ``labels.csv`` and its two files."""

    id: str
    pathology: str
    split_group: str
    image: Path
    mask: Path


def pathology_of(labels: np.ndarray) -> str:
    """The pathology of an image from its label map: malignant when any pixel is, else benign when any pixel is."""
    if np.any(labels == MALIGNANT):
        return "malignant"
    if np.any(labels == BENIGN):
        return "benign"
    return "normal"


def grey_8bit(image: np.ndarray) -> np.ndarray:
    """An image as 8-bit grey.

    Args:
        image: (rows, columns) grey or (rows, columns, 3 or 4) colour, of any numeric type. 8-bit images keep their
            values (colour through BT.601 luma); others are scaled linearly from their minimum and maximum to 0-255.
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        grey = image[..., :3].astype(np.float64) @ LUMA_WEIGHTS
    elif image.ndim == 2:
        grey = image.astype(np.float64)
    else:
        raise ValueError(f"image must be (rows, columns) or (rows, columns, 3 or 4 components), got {image.shape}")
    if not np.all(np.isfinite(grey)):
        raise ValueError("image has values that are not finite numbers")
    if image.dtype != np.uint8:
        low, high = grey.min(), grey.max()
        grey = (grey - low) * (255.0 / (high - low)) if high > low else np.zeros_like(grey)
    return np.clip(np.round(grey), 0, 255).astype(np.uint8)


def _case_id(name: str) -> str:
    # Ids are file names: keep BUSI's style ("benign (23)"), replace what a file system may refuse.
    return re.sub(r"[^\w .()-]+", "_", name).strip(" ._") or "image"


def _read_table(table: Path) -> tuple[list[str], set[str]]:
    """(columns, ids) of an existing labels.csv."""
    with open(table, newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        rows = list(reader)
        columns = list(reader.fieldnames or [])
    missing = [column for column in COLUMNS if column not in columns]
    if missing:
        raise ValueError(f"{table}: has no column {', '.join(missing)}; a training set's labels.csv needs {COLUMNS}")
    return columns, {(row["id"] or "").strip() for row in rows}


def _taken(folder: Path, case_id: str, ids: set[str]) -> bool:
    # The data preparation matches images to ids by file stem, whatever the picture format.
    pattern = glob.escape(str(folder / "images" / case_id)) + ".*"
    return case_id in ids or bool(glob.glob(pattern)) or (folder / "masks" / f"{case_id}.png").exists()


def _write_png(array: np.ndarray, path: Path) -> None:
    with open(path, "xb") as stream:  # "x": fails instead of replacing a file that appeared meanwhile
        Image.fromarray(array).save(stream, format="PNG")


def add_case(folder: Path, image: np.ndarray, labels: np.ndarray, split_group: str, name: str) -> TrainingCase:
    """Add an image and its label map to the training set in ``folder`` (created if needed).

    Args:
        folder: the training set folder.
        image: (rows, columns) grey or (rows, columns, components) colour image; see :func:`grey_8bit`.
        labels: (rows, columns) label map: 0 background, 1 benign, 2 malignant.
        split_group: patient or study id of the image.
        name: the case id to use, when no file or row of the training set has it yet (else a number is appended).

    Raises:
        ValueError: the label map does not fit the image or has other values, the group is empty, or an existing
            labels.csv lacks a needed column.
    """
    grey = grey_8bit(image)
    labels = np.asarray(labels)
    if labels.shape != grey.shape:
        raise ValueError(f"label map {labels.shape} and image {grey.shape[:2]} differ in size")
    values = set(np.unique(labels).tolist())
    if not values <= {0, BENIGN, MALIGNANT}:
        raise ValueError(f"label map has values {sorted(values - {0, BENIGN, MALIGNANT})}; allowed: 0, 1, 2")
    split_group = split_group.strip()
    if not split_group or "\n" in split_group:
        raise ValueError("a patient or study id (one line) is needed to keep its images on one side of a split")

    folder = Path(folder)
    table = folder / LABELS_FILE
    new_table = not (table.is_file() and table.stat().st_size)
    columns, ids = (list(COLUMNS), set()) if new_table else _read_table(table)
    for subfolder in ("images", "masks"):
        (folder / subfolder).mkdir(parents=True, exist_ok=True)
    base = _case_id(name)
    case_id, number = base, 2
    while _taken(folder, case_id, ids):
        case_id, number = f"{base}-{number}", number + 1

    case = TrainingCase(case_id, pathology_of(labels), split_group,
                        folder / "images" / f"{case_id}.png", folder / "masks" / f"{case_id}.png")  # fmt: skip
    _write_png(grey, case.image)
    try:
        _write_png(labels.astype(np.uint8), case.mask)
    except BaseException:
        case.image.unlink()
        raise
    if not new_table and not table.read_bytes().endswith(b"\n"):
        with open(table, "a", encoding="utf-8") as stream:
            stream.write("\n")  # a row must not be appended to a last line without its line break
    with open(table, "a", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns, restval="")
        if new_table:
            writer.writeheader()
        writer.writerow({"id": case.id, "pathology": case.pathology, "split_group": case.split_group})
    return case
