"""How well each lesion descriptor separates benign from malignant lesions, on ground-truth masks, by source.

For every benign or malignant image with a mask, the descriptors of :mod:`scripts.descriptors` are computed on the
largest connected lesion of its mask (the OR of all its masks), on the image's grey levels, in pixels (the pictures
give no pixel size; every figure below is a ratio, an angle or a shape measure, or a length that is compared within
one source only). For each descriptor: the area under the ROC curve for malignant against benign (the probability
that a malignant lesion has the larger value; below 0.5 when malignant lesions have smaller values) with a 95 %
bootstrap interval (images resampled within each class).

Sources, in their public layouts:

- BUSI: ``benign/`` and ``malignant/`` with ``<name>_mask*.png``; of each pair in ``near_duplicates.tsv`` the second
  image is left out, and both when the pair has two labels. The list misses many duplicates (published audits find
  about 330 of the 780 images in duplicate groups), so the BUSI intervals are somewhat too narrow.
- BUS-UCLM: ``images/``, ``masks/`` (lesion pixels non-zero) and ``labels.csv`` (pathology); images marked as a
  near duplicate of another are left out.

Usage::

    python benchmarks/descriptor_separation.py [--data ../shared/data] [--samples 1000] [--json FILE]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.stats import rankdata

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "monai_bundle"
DESCRIPTORS = (
    "longest_diameter_px", "perpendicular_diameter_px", "depth_to_width", "orientation_deg", "circularity",
    "solidity", "margin_irregularity", "posterior_ratio", "echogenicity_ratio",
)  # fmt: skip


def busi_cases(root: Path) -> list[tuple[Path, list[Path], int]]:
    """(image, masks, 1 benign / 2 malignant) of BUSI's lesion images, near duplicates left out."""
    left_out = set()
    with open(root / "near_duplicates.tsv", encoding="utf-8") as stream:
        for pair in csv.DictReader(stream, delimiter="\t"):
            conflicting = pair["image_a"].split("/")[0] != pair["image_b"].split("/")[0]
            left_out |= {pair["image_a"], pair["image_b"]} if conflicting else {pair["image_b"]}
    cases = []
    for label, name in ((1, "benign"), (2, "malignant")):
        for image in sorted((root / name).glob("*).png")):
            if f"{name}/{image.name}" not in left_out:
                cases.append((image, sorted(image.parent.glob(f"{image.stem}_mask*.png")), label))
    return cases


def bus_uclm_cases(root: Path) -> list[tuple[Path, list[Path], int]]:
    """(image, [mask], 1 benign / 2 malignant) of BUS-UCLM's lesion images, near duplicates left out."""
    labels = {"benign": 1, "malignant": 2}
    with open(root / "labels.csv", encoding="utf-8") as stream:
        rows = [row for row in csv.DictReader(stream) if row["pathology"] in labels and not row["near_duplicate_of"]]
    return [(root / "images" / f"{row['id']}.png", [root / "masks" / f"{row['id']}.png"], labels[row["pathology"]])
            for row in rows]  # fmt: skip


def describe_case(image: Path, masks: list[Path]) -> dict | None:
    """Descriptors of the largest lesion of the masks' union, or None when the masks are empty."""
    from scripts.descriptors import describe_lesion
    from scripts.reader import read_image

    union = None
    for path in masks:
        with Image.open(path) as pil:
            mask = np.asarray(pil.convert("L")) > 0
        union = mask if union is None else union | mask
    components, count = ndimage.label(union)
    if not count:
        return None
    largest = 1 + int(np.argmax(ndimage.sum_labels(union, components, range(1, count + 1))))
    return describe_lesion(components == largest, read_image(image).frames[0]).to_row()


def auc(scores: np.ndarray, malignant: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for malignant (True) against benign, ties counted half."""
    ranks = rankdata(scores)
    positives = int(malignant.sum())
    negatives = len(scores) - positives
    return float((ranks[malignant].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def separation(rows: list[dict], samples: int, seed: int = 0) -> dict[str, dict]:
    """AUC and 95 % bootstrap interval of each descriptor (lesions where it is defined)."""
    rng = np.random.default_rng(seed)
    results = {}
    for name in DESCRIPTORS:
        defined = [row for row in rows if row[name] is not None]
        scores = np.array([row[name] for row in defined], dtype=np.float64)
        if name == "orientation_deg":
            scores = np.abs(scores)  # how far from the skin line, whichever way the lesion leans
        malignant = np.array([row["label"] == 2 for row in defined])
        classes = [np.flatnonzero(malignant), np.flatnonzero(~malignant)]
        resampled = []
        for _ in range(samples):
            pick = np.concatenate([rng.choice(members, size=len(members)) for members in classes])
            resampled.append(auc(scores[pick], malignant[pick]))
        low, high = np.percentile(resampled, (2.5, 97.5))
        results[name] = {"auc": auc(scores, malignant), "low": float(low), "high": float(high),
                         "benign": int((~malignant).sum()), "malignant": int(malignant.sum())}
    return results


def main(argv: list[str] | None = None) -> dict:
    options = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    options.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data", help="folder of sources")
    options.add_argument("--samples", type=int, default=1000, help="bootstrap samples")
    options.add_argument("--json", type=Path, default=Path("/tmp/busi_descriptor_separation.json"))
    args = options.parse_args(argv)
    sys.path.insert(0, str(BUNDLE))
    report = {}
    for source, cases in (("BUSI", busi_cases(args.data / "BUSI")),
                          ("BUS-UCLM", bus_uclm_cases(args.data / "BUS-UCLM"))):  # fmt: skip
        rows = []
        for image, masks, label in cases:
            row = describe_case(image, masks)
            if row is not None:
                rows.append({**row, "label": label})
        report[source] = separation(rows, args.samples)
    print("| descriptor | " + " | ".join(f"{source} AUC (95 % interval)" for source in report) + " |")
    print("|---|" + "---|" * len(report))
    for name in DESCRIPTORS:
        cells = []
        for r in report.values():
            cell = f"{r[name]['auc']:.2f} ({r[name]['low']:.2f}-{r[name]['high']:.2f})"
            counts = {key: r[name][key] for key in ("benign", "malignant")}
            if counts != {key: r[DESCRIPTORS[0]][key] for key in ("benign", "malignant")}:  # defined for fewer
                cell += f", on {counts['benign']} benign and {counts['malignant']} malignant"
            cells.append(cell)
        print(f"| `{name}` | " + " | ".join(cells) + " |")
    counts = "; ".join(
        f"{source}: {r[DESCRIPTORS[0]]['benign']} benign, {r[DESCRIPTORS[0]]['malignant']} malignant"
        for source, r in report.items()
    )
    print(f"lesions: {counts}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
