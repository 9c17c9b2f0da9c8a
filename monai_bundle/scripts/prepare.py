"""Prepare a BUSI folder for training: merged label maps, duplicate groups, a group-aware split and a report.

Layout read (the public release, ``Dataset_BUSI_with_GT``)::

    <dataset_dir>/{benign,malignant,normal}/<class> (N).png  with  <class> (N)_mask[_K].png

Written to ``output_dir`` (never into ``dataset_dir``): ``labels/<class>/<name>.png`` (0 background, 1 benign,
2 malignant; all masks of an image OR-ed), ``datalist.json`` (every usable image with its cross-validation fold)
and ``report.json``.

Duplicates: every pair of images whose 64x64 grey thumbnails correlate above ``thumbnail_threshold`` is one scan
(rescaled copies); pairs whose perceptual hashes are close are confirmed by searching the smaller image inside the
larger one at several scales (cropped copies). Connected pairs form a group, and each group lies in one fold.
Groups whose members carry different labels are left out of every fold.

One module although long: reading the masks, finding duplicates and assigning folds are one step of the workflow,
and the duplicate search is only used here.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.feature import match_template
from skimage.transform import resize

from scripts.labels import load_vocabulary
from scripts.reader import ImageReadError, read_image

__all__ = ["CLASSES", "BUSIPreparation", "find_duplicate_groups", "read_mask"]

logger = logging.getLogger(__name__)

# the BUSI folder of each image class and the label its lesions get, from the label vocabulary
CLASSES = {label.class_name: label.value for label in load_vocabulary().labels}
IMAGE_NAME = re.compile(r"^(?P<stem>.+ \(\d+\))\.png$", re.IGNORECASE)
MASK_NAME = re.compile(r"^(?P<stem>.+ \(\d+\))_mask(_\d+)?\.png$", re.IGNORECASE)


def read_mask(path: Path) -> np.ndarray:
    """Read a BUSI mask in any of its modes (1-bit, grey, RGB, RGBA, palette) as a boolean array."""
    with Image.open(path) as pil:
        if pil.mode == "1":
            return np.asarray(pil, dtype=bool)
        if pil.mode not in ("L", "RGB", "RGBA", "LA", "I", "I;16"):
            pil = pil.convert("RGB")
        array = np.asarray(pil)
    if array.ndim == 3:
        # alpha is often 255 everywhere; the drawn lesion is in the colour planes
        array = array[..., : 3 if array.shape[-1] >= 3 else 1].max(axis=-1)
    return array > (array.max() / 2 if array.max() > 1 else 0)


@dataclass
class _Case:
    name: str  # e.g. "benign/benign (12).png", relative to the dataset folder
    label_class: str
    image_path: Path
    mask_paths: list[Path]


def _thumbnail(grey: np.ndarray, size: int) -> np.ndarray:
    return resize(grey, (size, size), anti_aliasing=True, preserve_range=True).astype(np.float32)


def _standardise(vectors: np.ndarray) -> np.ndarray:
    vectors = vectors - vectors.mean(axis=1, keepdims=True)
    return vectors / (np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-6)


def _crop_match(grey_a: np.ndarray, grey_b: np.ndarray, size: int = 96) -> float:
    """Best normalised cross-correlation of the smaller image found inside the larger one.

    The crop may have been rescaled differently along rows and columns, so both scales are searched, coarse to fine.
    Thumbnails are smoothed so that speckle, which does not survive rescaling, does not decide the match.
    """
    small, large = sorted((grey_a, grey_b), key=lambda g: g.size)
    large_thumb = ndimage.gaussian_filter(_thumbnail(large, size), 1.0)
    small_thumb = ndimage.gaussian_filter(_thumbnail(small, size), 1.0)

    def score(scale_rows: float, scale_cols: float) -> float:
        shape = (max(8, round(size * scale_rows)), max(8, round(size * scale_cols)))
        template = resize(small_thumb, shape, anti_aliasing=True, preserve_range=True).astype(np.float32)
        return float(match_template(large_thumb, template).max()) if template.std() > 1e-3 else -1.0

    coarse = np.linspace(0.6, 1.0, 9)
    best = max((score(r, c), r, c) for r in coarse for c in coarse)
    fine = np.linspace(-0.025, 0.025, 5)
    return max(score(min(best[1] + dr, 1.0), min(best[2] + dc, 1.0)) for dr in fine for dc in fine)


def find_duplicate_groups(
    greys: list[np.ndarray],
    thumbnail_threshold: float = 0.95,
    hash_distance: int = 10,
    crop_threshold: float = 0.85,
) -> tuple[list[list[int]], list[tuple[int, int, str, float]]]:
    """Group images that show the same scan.

    Args:
        greys: grey images.
        thumbnail_threshold: correlation of 64x64 thumbnails above which two images are one scan.
        hash_distance: perceptual-hash Hamming distance up to which a pair is checked for cropping.
        crop_threshold: cross-correlation of the crop search above which a candidate pair is one scan.

    Returns:
        the groups (lists of indices, each of two or more images) and the confirmed pairs
        ``(i, j, method, score)``.
    """
    thumbs = _standardise(np.stack([_thumbnail(g, 64).ravel() for g in greys]))
    correlation = thumbs @ thumbs.T
    hashes = [imagehash.phash(Image.fromarray(np.clip(g, 0, 255).astype(np.uint8))) for g in greys]
    pairs: list[tuple[int, int, str, float]] = []
    for i in range(len(greys)):
        for j in range(i + 1, len(greys)):
            if correlation[i, j] >= thumbnail_threshold:
                pairs.append((i, j, "thumbnail", float(correlation[i, j])))
            elif hashes[i] - hashes[j] <= hash_distance:
                score = _crop_match(greys[i], greys[j])
                if score >= crop_threshold:
                    pairs.append((i, j, "crop", score))
    parent = list(range(len(greys)))

    def root(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for i, j, _, _ in pairs:
        parent[root(i)] = root(j)
    members: dict[int, list[int]] = defaultdict(list)
    for k in range(len(greys)):
        members[root(k)].append(k)
    groups = sorted((m for m in members.values() if len(m) > 1), key=lambda m: m[0])
    return groups, pairs


class BUSIPreparation:
    """Read a BUSI folder and write label maps, a duplicate-aware stratified split and a report.

    Args:
        dataset_dir: folder in the public BUSI layout; only read.
        output_dir: where labels, ``datalist.json`` and ``report.json`` go; must not be inside ``dataset_dir``.
        folds: number of cross-validation folds.
        fold: the fold held out by :meth:`load_datalist` (0 .. folds - 1), or ``"all"`` to hold out nothing (the
            weights to ship, trained once the folds have judged the recipe).
        seed: seed of the fold assignment.
    """

    def __init__(
        self, dataset_dir: str, output_dir: str, folds: int = 5, fold: int | str = 0, seed: int = 0
    ) -> None:
        self.dataset_dir = Path(dataset_dir).resolve()
        self.output_dir = Path(output_dir).resolve()
        if folds < 2 or not (fold == "all" or isinstance(fold, int) and 0 <= fold < folds):
            raise ValueError(f"need folds >= 2 and 0 <= fold < folds or fold 'all', got folds={folds}, fold={fold}")
        self.folds = folds
        self.fold = fold
        self.seed = seed

    @property
    def settings(self) -> dict:
        """Everything the fold assignment depends on; a datalist made with other settings is made again."""
        return {"dataset_dir": str(self.dataset_dir), "folds": self.folds, "seed": self.seed}

    @property
    def datalist_path(self) -> Path:
        return self.output_dir / "datalist.json"

    def run_if_needed(self) -> Path:
        """Prepare unless a datalist made from the same dataset folder exists; return the datalist path."""
        if self.datalist_path.is_file():
            existing = json.loads(self.datalist_path.read_text())
            if existing.get("settings") == self.settings:
                return self.datalist_path
        return self.run()

    def load_datalist(self) -> dict[str, list[dict]]:
        """``training`` (every fold but ``fold``), ``validation`` (``fold``) and ``all`` usable images.

        With ``fold="all"`` every usable image is for training and none for validation.

        The dataset is prepared first when needed.
        """
        items = json.loads(self.run_if_needed().read_text())["items"]
        return {
            "training": [item for item in items if item["fold"] != self.fold],
            "validation": [item for item in items if item["fold"] == self.fold],
            "all": items,
        }

    def _find_cases(self, skipped: list[dict]) -> list[_Case]:
        if not self.dataset_dir.is_dir():
            raise FileNotFoundError(f"{self.dataset_dir}: dataset folder does not exist")
        cases = []
        for label_class in CLASSES:
            class_dir = self.dataset_dir / label_class
            if not class_dir.is_dir():
                continue
            masks: dict[str, list[Path]] = defaultdict(list)
            images = {}
            for path in sorted(class_dir.iterdir()):
                if match := MASK_NAME.match(path.name):
                    masks[match["stem"]].append(path)
                elif match := IMAGE_NAME.match(path.name):
                    images[match["stem"]] = path
                elif path.is_file():
                    skipped.append({"file": str(path), "reason": "not a BUSI image or mask name"})
            for stem, image_path in images.items():
                name = f"{label_class}/{image_path.name}"
                if not masks.get(stem):
                    skipped.append({"file": str(image_path), "reason": "no mask"})
                    continue
                cases.append(_Case(name, label_class, image_path, sorted(masks[stem])))
            for stem in sorted(set(masks) - set(images)):
                skipped.append({"file": str(masks[stem][0]), "reason": "mask without image"})
        if not cases and not skipped:
            raise FileNotFoundError(
                f"{self.dataset_dir}: no BUSI images found; expected benign/, malignant/ and normal/ folders"
            )
        return cases

    def _load_case(self, case: _Case) -> tuple[np.ndarray, np.ndarray]:
        grey = read_image(case.image_path).frames[0]
        foreground = np.zeros(grey.shape, dtype=bool)
        for mask_path in case.mask_paths:
            try:
                mask = read_mask(mask_path)
            except (OSError, ValueError, SyntaxError) as error:
                raise ImageReadError(f"{mask_path}: cannot be read as a mask ({error})") from error
            if mask.shape != grey.shape:
                raise ImageReadError(f"{mask_path}: mask is {mask.shape[::-1]} but the image is {grey.shape[::-1]}")
            foreground |= mask
        return grey, foreground.astype(np.uint8) * CLASSES[case.label_class]

    def _assign_folds(self, cases: list[_Case], groups: list[list[int]], excluded: set[int]) -> list[int]:
        """Fold of each case, whole duplicate groups together, classes spread evenly; excluded cases get -1."""
        in_group = {k for group in groups for k in group} | excluded
        units = list(groups) + [[k] for k in range(len(cases)) if k not in in_group]
        by_class: dict[str, list[list[int]]] = defaultdict(list)
        for unit in units:
            by_class[cases[unit[0]].label_class].append(unit)
        rng = random.Random(self.seed)
        fold_of = [-1] * len(cases)
        for label_class in CLASSES:
            class_units = sorted(by_class[label_class])
            rng.shuffle(class_units)
            filled = [0] * self.folds
            # large groups first, each into the emptiest fold of its class, so folds differ by at most one group
            for unit in sorted(class_units, key=len, reverse=True):
                fold = min(range(self.folds), key=lambda f: (filled[f], f))
                filled[fold] += len(unit)
                for k in unit:
                    fold_of[k] = fold
        return fold_of

    def run(self) -> Path:
        """Prepare the dataset; return the datalist path.

        Raises:
            FileNotFoundError: the folder is missing or holds no BUSI image.
            RuntimeError: no image could be read.
        """
        if self.output_dir == self.dataset_dir or self.dataset_dir in self.output_dir.parents:
            raise ValueError(f"{self.output_dir}: output folder must not be inside the dataset folder")
        skipped: list[dict] = []
        cases = self._find_cases(skipped)
        loaded: list[_Case] = []
        greys, labels = [], []
        for case in cases:
            try:
                grey, label = self._load_case(case)
            except ImageReadError as error:
                # the reader's message starts with the file it could not read (the image or one of its masks)
                reason = str(error).removeprefix(f"{case.image_path}: ")
                skipped.append({"file": str(case.image_path), "reason": reason})
                continue
            loaded.append(case)
            greys.append(grey)
            labels.append(label)
        for entry in skipped:
            logger.warning(f"skipped {entry['file']}: {entry['reason']}")
        if not loaded:
            raise RuntimeError(f"{self.dataset_dir}: no usable image-and-mask pair")

        groups, pairs = find_duplicate_groups(greys)
        # one scan labelled both benign and malignant cannot be scored honestly: leave it out of every split
        conflicts = [group for group in groups if len({loaded[k].label_class for k in group}) > 1]
        excluded = {k for group in conflicts for k in group}
        fold_of = self._assign_folds(loaded, [g for g in groups if g not in conflicts], excluded)

        label_dir = self.output_dir / "labels"
        items = []
        group_of = {k: g for g, group in enumerate(groups) for k in group}
        for k, case in enumerate(loaded):
            if fold_of[k] < 0:
                continue
            label_path = label_dir / case.name
            label_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(labels[k]).save(label_path)
            items.append(
                {
                    "image": str(case.image_path),
                    "label": str(label_path),
                    "name": case.name,
                    "class": CLASSES[case.label_class],
                    "group": group_of.get(k, -1),
                    "fold": fold_of[k],
                }
            )
        report = {
            "dataset_dir": str(self.dataset_dir),
            "images_found": len(cases),
            "images_used": len(loaded),
            "counts_per_fold": [
                dict(Counter(loaded[k].label_class for k in range(len(loaded)) if fold_of[k] == f))
                for f in range(self.folds)
            ],
            "counts_per_class": dict(Counter(case.label_class for case in loaded)),
            "images_with_several_masks": sum(len(case.mask_paths) > 1 for case in loaded),
            "duplicate_groups": len(groups),
            "images_in_duplicate_groups": sum(len(g) for g in groups),
            "duplicate_pairs": [
                {"a": loaded[i].name, "b": loaded[j].name, "method": method, "score": round(score, 4)}
                for i, j, method, score in pairs
            ],
            "groups": [[loaded[k].name for k in group] for group in groups],
            "conflicting_labels": [[loaded[k].name for k in group] for group in conflicts],
            "skipped": skipped,
        }
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "report.json").write_text(json.dumps(report, indent=2))
        partial = self.datalist_path.with_name(self.datalist_path.name + ".partial")
        partial.write_text(json.dumps({"settings": self.settings, "items": items}, indent=1))
        partial.replace(self.datalist_path)
        logger.info(
            f"prepared {len(loaded)} images ({report['counts_per_class']}), {len(groups)} duplicate groups "
            f"({report['images_in_duplicate_groups']} images), {len(conflicts)} with conflicting labels, "
            f"{len(skipped)} skipped; images per fold {[sum(c.values()) for c in report['counts_per_fold']]} "
            f"-> {self.output_dir}"
        )
        return self.datalist_path
