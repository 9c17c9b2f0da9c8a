"""Is the lesion malignancy probability calibrated, and do the lesion descriptors add to it? Out of sample on BUS-UCLM.

BUS-UCLM comes from other scanners than BUSI, on which the shipped networks were trained, so every figure here is
out of sample for them. Every image of the prepared BUS-UCLM datalist (``scripts.prepare.Preparation``: label maps,
patient groups, patient-grouped folds 0-4) is segmented once by the inference workflow (``configs/inference.json``,
CPU), and for every lesion it finds the script records:

- the **malignancy probability** the class decision is made on (:func:`scripts.postprocess.find_lesions`): the
  malignant share of the lesion's summed probabilities (malignant over benign + malignant), mixed with the image
  head's malignant share by ``image_class_weight``; the lesion is called malignant above one half;
- the descriptors of its mask (:mod:`scripts.descriptors`, on the frame, in pixels);
- its truth: the most common class of the ground-truth label map under its pixels; a lesion that covers no
  ground-truth lesion pixel is a false positive and is left out of what follows.

The pass takes 10-20 min on one CPU thread; its lesions are cached (``--cache``, one JSON line per image, resumed
when interrupted) and every later run reads them.

Measured on the lesions matched to a true lesion, **each patient fold scored by a fit on the other four folds**:

1. Calibration: expected calibration error (10 equal-width bins of the predicted malignancy probability) and the
   benign-vs-malignant accuracy at one half, before and after temperature scaling and Platt scaling
   (:mod:`scripts.calibration`); a reliability diagram (``--figure``).
2. The descriptors on the model's masks: benign-vs-malignant AUC of each, with a 95 % bootstrap interval (lesions
   resampled within each class); and a logistic model on the descriptors and the network's malignancy logit, fitted
   out of fold, whose accuracy at one half is compared with the network's class decision on the same lesions
   (paired difference, 95 % bootstrap interval over patients, the unit the folds keep apart).

Usage (from the repository root)::

    OMP_NUM_THREADS=1 python benchmarks/lesion_calibration.py [--data ../shared/data/BUS-UCLM] \
        [--cache /tmp/bus_uclm_lesions.jsonl] [--figure monai_bundle/docs/reliability_bus_uclm.png]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "monai_bundle"
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
from descriptor_separation import DESCRIPTORS, separation  # noqa: E402

# descriptors of the logistic model: those defined on (nearly) every lesion
MODEL_DESCRIPTORS = tuple(name for name in DESCRIPTORS if name != "posterior_ratio")


def segment_all(data: Path, cache: Path) -> list[dict]:
    """One record per image of BUS-UCLM with the lesions the shipped ensemble finds; cached in ``cache``."""
    done = {}
    if cache.is_file():
        for line in cache.read_text().splitlines():
            record = json.loads(line)
            done[record["name"]] = record
    sys.path.insert(0, str(BUNDLE))
    from monai.bundle import ConfigParser
    from PIL import Image

    from scripts.descriptors import describe_lesion
    from scripts.predict import split_probabilities
    from scripts.prepare import Preparation
    from scripts.reader import read_image

    items = Preparation([str(data)], "/tmp/bus_uclm_prepared").load_datalist()["all"]
    with open(data / "labels.csv", encoding="utf-8") as stream:
        duplicates = {row["id"]: bool(row["near_duplicate_of"]) for row in csv.DictReader(stream)}
    if all(item["name"] in done for item in items):
        return [done[item["name"]] for item in items]
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    parser.update({"bundle_root": str(BUNDLE), "device": "$torch.device('cpu')"})
    runner = parser.get_parsed_content("runner")
    find, invert, _ = runner.postprocessing.transforms
    weight = find.settings["image_class_weight"]
    with open(cache, "a", encoding="utf-8") as stream:
        for item in items:
            if item["name"] in done:
                continue
            image = read_image(item["image"])
            with Image.open(item["label"]) as pil:
                truth = np.asarray(pil, dtype=np.uint8)
            frame = image.frames[0]
            probabilities = runner.probabilities([frame])[0]
            pixel, head, _ = split_probabilities(np.asarray(probabilities["pred"], dtype=np.float32))
            found = find(probabilities)
            numbers_small = np.rint(np.asarray(found["pred"])[0]).astype(np.int32)
            numbers = np.rint(np.asarray(invert(found)["pred"])[0]).astype(np.int32)
            record = {key: item[key] for key in ("name", "fold", "group", "class")}
            record["near_duplicate"] = duplicates[Path(item["image"]).stem]
            record["lesions"] = []
            head_share = 0.5 if head is None else float(head[2] / max(head[1] + head[2], 1e-6))
            for number, (label, confidence) in enumerate(found["pred_found"], start=1):
                mask = numbers == number
                if not mask.any():
                    continue  # vanished in resizing, as in scripts.postprocess.measure_lesions
                small = numbers_small == number
                benign, malignant = float(pixel[1][small].sum()), float(pixel[2][small].sum())
                pixel_share = malignant / max(benign + malignant, 1e-6)
                under = truth[mask]
                row = describe_lesion(mask, frame.astype(np.float32)).to_row()
                covered = under[under > 0]
                record["lesions"].append({
                    "label": int(label),
                    "pixel_share": pixel_share,
                    "head_share": head_share,
                    "probability": (1 - weight) * pixel_share + weight * head_share,
                    "confidence": confidence.mean,
                    "uncertainty": confidence.uncertainty,
                    "area_px": int(mask.sum()),
                    "overlap_px": int(covered.size),
                    "truth": int(np.bincount(covered).argmax()) if covered.size else 0,
                    "descriptors": {name: row[name] for name in DESCRIPTORS},
                })
            stream.write(json.dumps(record) + "\n")
            stream.flush()
            done[record["name"]] = record
    return [done[item["name"]] for item in items]


if __name__ == "__main__":
    segment_all(REPO_ROOT.parent / "shared" / "data" / "BUS-UCLM", Path("/tmp/bus_uclm_lesions.jsonl"))
