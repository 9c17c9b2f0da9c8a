"""What the review flag catches: the lesions the shipped model finds on BUS-UCLM images, wrong or right, against their
uncertainty.

BUS-UCLM comes from other scanners than BUSI, on which the shipped networks were trained. Images with a lesion are
drawn at random (``--seed``); each is segmented by the inference workflow (``configs/inference.json``, CPU), and each
lesion found is **wrong** when fewer than a fifth of its pixels lie on the ground-truth mask (a false positive) or
when the mask's most common class under it is not the lesion's class. Printed: lesions found, images with none,
wrong lesions; for each review threshold, the lesions flagged and the wrong ones among them; and the AUC of the
uncertainty, and of one minus the mean class probability, as a score for "this lesion is wrong".

Usage::

    python benchmarks/lesion_review.py [--data ../shared/data/BUS-UCLM] [--images 200] [--seed 0] [--held_out_fold K]
        [--tta]

The uncertainty needs more than one view: an ensemble, or the mirrored image (``--tta``) for a single network.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from monai.bundle import ConfigParser
from PIL import Image
from scipy.stats import rankdata

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "monai_bundle"
THRESHOLDS = (0.05, 0.075, 0.1, 0.15, 0.2)


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for ``positive`` against the rest, ties counted half."""
    ranks = rankdata(scores)
    count = int(positive.sum())
    return float((ranks[positive].sum() - count * (count + 1) / 2) / (count * (len(scores) - count)))


def main(argv: list[str] | None = None) -> dict:
    options = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    options.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "BUS-UCLM")
    options.add_argument("--images", type=int, default=200, help="lesion images drawn at random")
    options.add_argument("--seed", type=int, default=0)
    options.add_argument(
        "--held_out_fold", type=int, default=None,
        help="only the images of this patient fold (scripts.prepare.Preparation, 5 folds): for weights trained on "
        "BUS-UCLM's other folds, the images they never saw",
    )  # fmt: skip
    options.add_argument("--tta", action="store_true", help="segment the mirrored image too (flip averaging)")
    args = options.parse_args(argv)
    sys.path.insert(0, str(BUNDLE))
    from scripts.predict import checkpoint_paths
    from scripts.prepare import Preparation
    from scripts.reader import read_image

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser.update({"bundle_root": str(BUNDLE), "device": "$torch.device('cpu')", "tta": args.tta})
    if len(checkpoint_paths(parser.get_parsed_content("checkpoint"))) * (2 if args.tta else 1) < 2:
        raise SystemExit("one view per image gives no uncertainty: run with --tta, or with an ensemble as the checkpoint")
    runner = parser.get_parsed_content("runner")
    with open(args.data / "labels.csv", encoding="utf-8") as stream:
        rows = [row for row in csv.DictReader(stream) if row["pathology"] != "normal"]
    if args.held_out_fold is not None:
        items = Preparation([str(args.data)], "/tmp/bus_uclm_prepared").load_datalist()["all"]
        held_out = {Path(item["image"]).stem for item in items if item["fold"] == args.held_out_fold}
        rows = [row for row in rows if row["id"] in held_out]
    np.random.default_rng(args.seed).shuffle(rows)
    wrong, uncertainty, confidence, empty = [], [], [], 0
    for row in rows[: args.images]:
        result = runner.segment(read_image(args.data / "images" / f"{row['id']}.png"))
        with Image.open(args.data / "masks" / f"{row['id']}.png") as pil:
            truth = np.asarray(pil.convert("L"))
        empty += not result.lesions[0]
        for lesion in result.lesions[0]:
            row0, col0, row1, col1 = lesion.bbox
            box = (slice(row0, row1 + 1), slice(col0, col1 + 1))
            under = truth[box][result.labels[0][box] == lesion.label]  # the lesion's pixels (and its class's nearby)
            covered = under[under > 0]
            true_class = int(np.bincount(covered).argmax()) if covered.size > 0.2 * under.size else 0
            wrong.append(true_class != lesion.label)
            uncertainty.append(lesion.uncertainty)
            confidence.append(lesion.confidence)
    wrong, uncertainty, confidence = np.array(wrong), np.array(uncertainty), np.array(confidence)
    print(f"{min(args.images, len(rows))} lesion images: {len(wrong)} lesions found, none in {empty} images; "
          f"{int(wrong.sum())} wrong")
    report = {"lesions": len(wrong), "images_without_lesion": empty, "wrong": int(wrong.sum()), "thresholds": {}}
    for threshold in THRESHOLDS:
        flagged = uncertainty > threshold
        report["thresholds"][threshold] = {"flagged": int(flagged.sum()), "wrong": int((wrong & flagged).sum())}
        print(f"review above {threshold}: {int(flagged.sum())} flagged, {int((wrong & flagged).sum())} of them wrong; "
              f"{int((wrong & ~flagged).sum())} wrong among the {int((~flagged).sum())} others")
    report["auc_uncertainty"], report["auc_one_minus_confidence"] = auc(uncertainty, wrong), auc(-confidence, wrong)
    print(f"AUC for a wrong lesion: uncertainty {report['auc_uncertainty']:.2f}, "
          f"1 - mean class probability {report['auc_one_minus_confidence']:.2f}")
    return report


if __name__ == "__main__":
    main()
