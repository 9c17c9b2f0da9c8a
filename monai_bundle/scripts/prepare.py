"""Prepare labelled images from one or more sources: label maps, groups, group-aware folds, one datalist, a report.

Each layout has one reader, and any number of sources are prepared in one run into one datalist whose items carry
their source:

- ``busi``: the public BUSI release, ``<dir>/{benign,malignant,normal}/<class> (N).png`` with
  ``<class> (N)_mask[_K].png`` (all masks of an image OR-ed; the folder gives the class);
- ``folder``: the layout for one's own data (and BUS-UCLM's), ``<dir>/images/<id>.<ext>``, ``<dir>/masks/<id>.png``
  (8-bit, 0 background, 1 benign, 2 malignant; any picture format the reader takes for the image) and
  ``<dir>/labels.csv`` with an ``id`` column and optional ``pathology`` (normal, benign, malignant),
  ``split_group`` (patient or study: images of one group stay in one fold), ``marks`` and ``doppler`` (yes/no)
  columns;
- ``datalist``: a MONAI datalist JSON in the Decathlon style, ``{"training": [{"image": ..., "label": ...,
  "group": ...}]}`` with paths relative to the JSON file, as :func:`monai.data.load_decathlon_datalist` reads it;
  labels are label maps with the values above.

Written to ``output_dir`` (never into a source): ``labels/<source>/<name>.png`` (0 background, 1 benign,
2 malignant), ``datalist.json`` (every usable image with its source, class, group and cross-validation fold) and
``report.json`` (counts per source, class and fold; duplicates; skipped files with the reason).

Groups: where a source gives groups (``split_group``, ``group``), they are used: one patient's frames are often
near-copies. Otherwise duplicates are searched: every pair of images whose 64x64 grey thumbnails correlate above
``thumbnail_threshold`` is one scan (rescaled copies); pairs whose perceptual hashes are close are confirmed by
searching the smaller image inside the larger one at several scales (cropped copies). Connected pairs form a group;
groups found this way whose members carry different labels are left out of every fold. Folds are assigned within
each source, whole groups together, so that every fold holds about the same share of each source's classes.
"""

from __future__ import annotations

import csv
import json
import logging
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import imagehash
import numpy as np
from monai.data import load_decathlon_datalist
from PIL import Image
from scipy import ndimage
from skimage.feature import match_template
from skimage.transform import resize

from scripts.labels import load_vocabulary
from scripts.reader import ImageReadError, read_image

__all__ = ["CLASSES", "LAYOUTS", "Preparation", "find_duplicate_groups", "read_label_map", "read_mask", "sampling_weights"]

logger = logging.getLogger(__name__)

# image class name -> the label its lesions get, from the label vocabulary (normal 0, benign 1, malignant 2)
CLASSES = {label.class_name: label.value for label in load_vocabulary().labels}
CLASS_NAMES = {value: name for name, value in CLASSES.items()}
IMAGE_NAME = re.compile(r"^(?P<stem>.+ \(\d+\))\.png$", re.IGNORECASE)
MASK_NAME = re.compile(r"^(?P<stem>.+ \(\d+\))_mask(_\d+)?\.png$", re.IGNORECASE)
YES = {"yes", "true", "1", "y"}


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


def read_label_map(path: Path) -> np.ndarray:
    """Read an 8-bit label map (0 background, 1 benign, 2 malignant) as uint8.

    Raises:
        ImageReadError: the file cannot be read, has colour planes or holds other values.
    """
    try:
        with Image.open(path) as pil:
            if pil.mode not in ("L", "P", "I", "I;16", "1"):
                raise ImageReadError(f"{path}: label map must be single-channel 8-bit, not {pil.mode}")
            array = np.asarray(pil)
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageReadError(f"{path}: cannot be read as a label map ({error})") from error
    values = np.unique(array)
    if not set(values.tolist()) <= set(CLASS_NAMES):
        raise ImageReadError(
            f"{path}: label map holds values {values.tolist()[:8]}, expected 0 background, 1 benign, 2 malignant"
        )
    return array.astype(np.uint8)


@dataclass
class _Case:
    source: str
    name: str  # unique within the source, e.g. "benign/benign (12).png" or "ALWI_000.png"
    image_path: Path
    mask_paths: list[Path]  # BUSI: binary masks to OR; other layouts: one label map
    label_class: str | None = None  # the class the source states; None: read off the label map
    group: str | None = None  # patient or study given by the source
    binary_masks: bool = False  # BUSI: every mask is one lesion's outline, the folder gives the class
    flags: dict = field(default_factory=dict)  # e.g. {"marks": True}: kept in the datalist for evaluation


def read_busi_layout(folder: Path, source: str, skipped: list[dict]) -> list[_Case]:
    """Cases of a folder in the public BUSI layout."""
    cases = []
    for label_class in CLASSES:
        class_dir = folder / label_class
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
            if not masks.get(stem):
                skipped.append({"file": str(image_path), "reason": "no mask"})
                continue
            cases.append(
                _Case(source, f"{label_class}/{image_path.name}", image_path, sorted(masks[stem]), label_class,
                      binary_masks=True)
            )
        for stem in sorted(set(masks) - set(images)):
            skipped.append({"file": str(masks[stem][0]), "reason": "mask without image"})
    return cases


def read_folder_layout(folder: Path, source: str, skipped: list[dict]) -> list[_Case]:
    """Cases of a folder in the ``images/ masks/ labels.csv`` layout."""
    table = folder / "labels.csv"
    with open(table, newline="") as stream:
        rows = list(csv.DictReader(stream))
    if rows and "id" not in rows[0]:
        raise ValueError(f"{table}: needs an 'id' column (and optionally pathology, split_group)")
    images = {p.stem: p for p in sorted((folder / "images").glob("*")) if p.is_file()}
    cases = []
    for row in rows:
        case_id = row["id"].strip()
        pathology = (row.get("pathology") or "").strip().lower() or None
        if case_id not in images:
            skipped.append({"file": str(folder / "images" / case_id), "reason": "listed in labels.csv, no image"})
            continue
        mask = folder / "masks" / f"{case_id}.png"
        if not mask.is_file():
            skipped.append({"file": str(images[case_id]), "reason": f"no mask {mask.name} in masks/"})
            continue
        if pathology is not None and pathology not in CLASSES:
            skipped.append({"file": str(table), "reason": f"{case_id}: pathology {pathology!r} is not one of {list(CLASSES)}"})
            continue
        group = (row.get("split_group") or row.get("group") or row.get("patient_id") or "").strip() or None
        flags = {key: row[key].strip().lower() in YES for key in ("marks", "doppler") if row.get(key)}
        cases.append(_Case(source, images[case_id].name, images[case_id], [mask], pathology, group, flags=flags))
    listed = {row["id"].strip() for row in rows}
    for case_id in sorted(set(images) - listed):
        skipped.append({"file": str(images[case_id]), "reason": "not listed in labels.csv"})
    return cases


def read_datalist_layout(path: Path, source: str, skipped: list[dict]) -> list[_Case]:
    """Cases of a Decathlon-style datalist JSON (its ``training`` list)."""
    cases = []
    for item in load_decathlon_datalist(str(path), data_list_key="training", base_dir=str(path.parent)):
        image, label = Path(item["image"]), item.get("label")
        if label is None:
            skipped.append({"file": str(image), "reason": "no label in the datalist"})
            continue
        name = str(image.relative_to(path.parent)) if image.is_relative_to(path.parent) else image.name
        group = item.get("group")
        # the class is read off the label map
        cases.append(_Case(source, name, image, [Path(label)], group=None if group is None else str(group)))
    return cases


LAYOUTS = {"busi": read_busi_layout, "folder": read_folder_layout, "datalist": read_datalist_layout}


def detect_layout(path: Path) -> str:
    """The layout of a source path: a JSON file is a datalist, a folder with labels.csv the folder layout, else BUSI."""
    if path.is_file() and path.suffix.lower() == ".json":
        return "datalist"
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: dataset folder does not exist")
    if (path / "labels.csv").is_file():
        return "folder"
    if any((path / label_class).is_dir() for label_class in CLASSES):
        return "busi"
    raise FileNotFoundError(
        f"{path}: no labelled images found; expected benign/, malignant/ and normal/ folders (BUSI), "
        "images/ masks/ labels.csv, or a datalist JSON"
    )


def sampling_weights(items: list[dict], class_exponent: float = 0.0) -> list[float]:
    """Weight of each datalist item so that every source is drawn equally often and, within a source, each class in
    proportion to its image count raised to ``class_exponent``.

    0 (the default) draws every class of a source equally often: a source's hundreds of near-identical normal frames
    then weigh no more than its few malignant lesions; 1 draws a source's images in their natural proportions, and
    0.5 in between (by the square root of the counts).
    """
    keys = [(item["source"], item["class"]) for item in items]
    counts = Counter(keys)
    class_share = {key: count**class_exponent for key, count in counts.items()}
    source_total: Counter = Counter()
    for (source, _), share in class_share.items():
        source_total[source] += share
    sources = len(source_total)
    return [class_share[key] / (sources * source_total[key[0]] * counts[key]) for key in keys]


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


class Preparation:
    """Read labelled sources and write label maps, group-aware stratified folds, one datalist and a report.

    Args:
        sources: a source path (folder or datalist JSON) or a list of them; each entry may also be a dict
            ``{"path": ..., "name": ...}``. The name (default: the folder or file name without suffix) prefixes every
            image name in the datalist; sources are only read.
        output_dir: where labels, ``datalist.json`` and ``report.json`` go; must not be inside a source.
        folds: number of cross-validation folds.
        fold: the fold held out by :meth:`load_datalist` (0 .. folds - 1), or ``"all"`` to hold out nothing (the
            weights to ship, trained once the folds have judged the recipe).
        seed: seed of the fold assignment.
    """

    def __init__(
        self, sources: str | list, output_dir: str, folds: int = 5, fold: int | str = 0, seed: int = 0
    ) -> None:
        entries = sources if isinstance(sources, (list, tuple)) else [sources]
        if not entries:
            raise ValueError("no dataset given")
        self.sources = []
        for entry in entries:
            entry = dict(entry) if isinstance(entry, dict) else {"path": entry}
            path = Path(entry["path"]).resolve()
            self.sources.append({"name": entry.get("name") or path.stem, "path": path})
        if len({s["name"] for s in self.sources}) < len(self.sources):
            raise ValueError(f"two sources have the same name: {[s['name'] for s in self.sources]}")
        self.output_dir = Path(output_dir).resolve()
        if folds < 2 or not (fold == "all" or isinstance(fold, int) and 0 <= fold < folds):
            raise ValueError(f"need folds >= 2 and 0 <= fold < folds or fold 'all', got folds={folds}, fold={fold}")
        self.folds = folds
        self.fold = fold
        self.seed = seed

    @property
    def settings(self) -> dict:
        """Everything the datalist depends on; a datalist made with other settings is made again."""
        return {
            "sources": [{"name": s["name"], "path": str(s["path"])} for s in self.sources],
            "folds": self.folds,
            "seed": self.seed,
        }

    @property
    def datalist_path(self) -> Path:
        return self.output_dir / "datalist.json"

    def run_if_needed(self) -> Path:
        """Prepare unless a datalist made with the same settings exists; return the datalist path."""
        if self.datalist_path.is_file():
            existing = json.loads(self.datalist_path.read_text())
            if existing.get("settings") == self.settings:
                return self.datalist_path
        return self.run()

    def load_datalist(self) -> dict[str, list[dict]]:
        """``training`` (every fold but ``fold``), ``validation`` (``fold``) and ``all`` usable images.

        With ``fold="all"`` every usable image is for training and none for validation.

        The sources are prepared first when needed.
        """
        items = json.loads(self.run_if_needed().read_text())["items"]
        return {
            "training": [item for item in items if item["fold"] != self.fold],
            "validation": [item for item in items if item["fold"] == self.fold],
            "all": items,
        }

    @staticmethod
    def _load_case(case: _Case) -> tuple[np.ndarray, np.ndarray]:
        grey = read_image(case.image_path).frames[0]
        if not case.binary_masks:
            label = read_label_map(case.mask_paths[0])
            if label.shape != grey.shape:
                raise ImageReadError(
                    f"{case.mask_paths[0]}: mask is {label.shape[::-1]} but the image is {grey.shape[::-1]}"
                )
            stated = case.label_class
            found = CLASS_NAMES[int(label.max())]
            if stated is not None and stated != found:
                raise ImageReadError(f"{case.mask_paths[0]}: the mask shows a {found} image but it is listed as {stated}")
            case.label_class = found
            return grey, label
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

    def _assign_folds(self, cases: list[_Case], groups: list[list[int]]) -> list[int]:
        """Fold of each case: whole groups together, each source's classes spread evenly over the folds.

        Groups go largest first, each to the fold where the classes it holds are least filled so far (relative to the
        class's total in its source), so folds differ by about one group per class.
        """
        fold_of = [-1] * len(cases)
        for source in self.sources:
            units = [g for g in groups if cases[g[0]].source == source["name"]]
            # seeded by source, so a source's folds are the same whichever other sources are prepared with it
            random.Random(f"{self.seed}/{source['name']}").shuffle(units)
            units.sort(key=len, reverse=True)
            totals = Counter(cases[k].label_class for unit in units for k in unit)
            filled = [Counter() for _ in range(self.folds)]
            for unit in units:
                holds = Counter(cases[k].label_class for k in unit)
                cost = lambda f: (  # noqa: E731
                    sum(n * filled[f][c] / totals[c] for c, n in holds.items()), sum(filled[f].values()), f
                )
                fold = min(range(self.folds), key=cost)
                filled[fold].update(holds)
                for k in unit:
                    fold_of[k] = fold
        return fold_of

    def _read_source(self, source: dict, skipped: list[dict]) -> list[_Case]:
        path = source["path"]
        if path == self.output_dir or path in self.output_dir.parents:
            raise ValueError(f"{self.output_dir}: output folder must not be inside the dataset folder {path}")
        cases = LAYOUTS[detect_layout(path)](path, source["name"], skipped)
        if not cases and not skipped:
            raise FileNotFoundError(f"{path}: no labelled images found")
        return cases

    def run(self) -> Path:
        """Prepare every source; return the datalist path.

        Raises:
            FileNotFoundError: a source is missing or holds no labelled image.
            RuntimeError: no image could be read.
        """
        skipped: list[dict] = []
        loaded: list[_Case] = []
        labels: list[np.ndarray] = []
        groups: list[list[int]] = []
        pairs_found: list[dict] = []
        conflicts: list[list[int]] = []
        for source in self.sources:
            greys, first = [], len(loaded)
            for case in self._read_source(source, skipped):
                try:
                    grey, label = self._load_case(case)
                except ImageReadError as error:
                    # the reader's message starts with the file it could not read (the image or one of its masks)
                    reason = str(error).removeprefix(f"{case.image_path}: ")
                    skipped.append({"file": str(case.image_path), "reason": reason})
                    continue
                loaded.append(case)
                labels.append(label)
                greys.append(grey)
            if any(case.group is None for case in loaded[first:]):
                # no groups given: one scan is one group, duplicates searched
                found, pairs = find_duplicate_groups(greys)
                found = [[first + k for k in group] for group in found]
                pairs_found += [
                    {"a": f"{source['name']}/{loaded[first + i].name}", "b": f"{source['name']}/{loaded[first + j].name}",
                     "method": method, "score": round(score, 4)}
                    for i, j, method, score in pairs
                ]
                # one scan labelled both benign and malignant cannot be scored honestly: leave it out of every split
                conflicts += [g for g in found if len({loaded[k].label_class for k in g}) > 1]
                grouped = {k for g in found for k in g}
                found += [[k] for k in range(first, len(loaded)) if k not in grouped]
            else:
                members: dict[str, list[int]] = defaultdict(list)
                for k in range(first, len(loaded)):
                    members[loaded[k].group].append(k)
                found = list(members.values())
            groups += found
        for entry in skipped:
            logger.warning(f"skipped {entry['file']}: {entry['reason']}")
        if not loaded:
            raise RuntimeError(f"{', '.join(str(s['path']) for s in self.sources)}: no usable image-and-mask pair")

        usable_groups = [g for g in groups if g not in conflicts]
        fold_of = self._assign_folds(loaded, usable_groups)
        group_name = {}
        for g, group in enumerate(usable_groups):
            case = loaded[group[0]]
            if len(group) > 1 or case.group is not None:
                group_name.update({k: f"{case.source}/{case.group if case.group is not None else g}" for k in group})

        items = []
        for k, case in enumerate(loaded):
            if fold_of[k] < 0:
                continue
            label_path = self.output_dir / "labels" / case.source / Path(case.name).with_suffix(".png")
            label_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(labels[k]).save(label_path)
            items.append(
                {
                    "image": str(case.image_path),
                    "label": str(label_path),
                    "name": f"{case.source}/{case.name}",
                    "source": case.source,
                    "class": CLASSES[case.label_class],
                    "group": group_name.get(k),
                    "fold": fold_of[k],
                    **case.flags,
                }
            )
        report = {"sources": {}, "skipped": skipped, "duplicate_pairs": pairs_found}
        for source in self.sources:
            mine = [k for k, case in enumerate(loaded) if case.source == source["name"]]
            mine_groups = [g for g in groups if loaded[g[0]].source == source["name"]]
            report["sources"][source["name"]] = {
                "path": str(source["path"]),
                "layout": detect_layout(source["path"]),
                "images_used": sum(fold_of[k] >= 0 for k in mine),
                "counts_per_class": dict(Counter(loaded[k].label_class for k in mine if fold_of[k] >= 0)),
                "counts_per_fold": [
                    dict(Counter(loaded[k].label_class for k in mine if fold_of[k] == f)) for f in range(self.folds)
                ],
                "images_with_several_masks": sum(len(loaded[k].mask_paths) > 1 for k in mine),
                "groups_of_several_images": sum(len(g) > 1 for g in mine_groups),
                "images_in_groups": sum(len(g) for g in mine_groups if len(g) > 1),
                "groups": [[loaded[k].name for k in g] for g in mine_groups if len(g) > 1],
                "conflicting_labels": [[loaded[k].name for k in g] for g in conflicts if loaded[g[0]].source == source["name"]],
                "skipped": sum(1 for entry in skipped if Path(entry["file"]).is_relative_to(source["path"])),
            }
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "report.json").write_text(json.dumps(report, indent=2))
        partial = self.datalist_path.with_name(self.datalist_path.name + ".partial")
        partial.write_text(json.dumps({"settings": self.settings, "items": items}, indent=1))
        partial.replace(self.datalist_path)
        for name, counts in report["sources"].items():
            logger.info(
                f"{name}: prepared {counts['images_used']} images ({counts['counts_per_class']}), "
                f"{counts['groups_of_several_images']} groups of several images, "
                f"{len(counts['conflicting_labels'])} with conflicting labels, {counts['skipped']} skipped; "
                f"images per fold {[sum(c.values()) for c in counts['counts_per_fold']]}"
            )
        logger.info(f"datalist of {len(items)} images -> {self.datalist_path}")
        return self.datalist_path
