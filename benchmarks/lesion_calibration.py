"""Is the lesion malignancy probability calibrated, and do the lesion descriptors add to it? Out of sample on BUS-UCLM.

BUS-UCLM comes from other scanners than BUSI, on which the shipped networks were trained, so every figure here is
out of sample for them. Every image of the prepared BUS-UCLM datalist (``scripts.prepare.Preparation``: label maps,
patient groups, patient-grouped folds 0-4) is segmented once by the inference workflow (``configs/inference.json``,
CPU), and for every lesion it finds the script records:

- the **malignancy probability** the class decision is made on (:func:`scripts.postprocess.find_lesions`): the
  malignant share of the lesion's summed probabilities (malignant over benign + malignant), mixed with the image
  head's malignant share by ``image_class_weight``; the lesion is called malignant above ``malignancy_threshold``;
- the descriptors of its mask (:mod:`scripts.descriptors`, on the frame, in pixels);
- its truth: the most common class of the ground-truth label map under its pixels; a lesion that covers no
  ground-truth lesion pixel is a false positive and is left out of what follows.

The pass takes 10-20 min on one CPU thread; its lesions are cached (``--cache``, one JSON line per image, resumed
when interrupted) and every later run reads them.

Measured on the lesions matched to a true lesion, **each patient fold scored by a fit on the other four folds**:

1. Calibration: expected calibration error (10 equal-width bins of the predicted malignancy probability), log loss
   and the benign-vs-malignant accuracy at one half, before and after temperature scaling and Platt scaling
   (:mod:`scripts.calibration`), with 95 % bootstrap intervals over patients; a reliability diagram (``--figure``).
2. The descriptors on the model's masks: benign-vs-malignant AUC of each, with a 95 % bootstrap interval (lesions
   resampled within each class), next to those of the ground-truth masks of the same images (their largest lesion,
   as ``benchmarks/descriptor_separation.py`` measures them); and a logistic model on the descriptors and the
   network's malignancy logit, fitted out of fold, whose accuracy at one half is compared with the network's class
   decision on the same lesions (paired difference, 95 % bootstrap interval over patients, the unit the folds keep
   apart).

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


def matched_lesions(records: list[dict]) -> list[dict]:
    """Lesions that cover a ground-truth lesion, of images not marked as a near duplicate, with their image's
    name, fold and patient."""
    return [{**lesion, "name": r["name"], "fold": r["fold"], "group": r["group"]}
            for r in records if not r["near_duplicate"] for lesion in r["lesions"] if lesion["truth"] > 0]  # fmt: skip


def out_of_fold(folds: np.ndarray, fit, apply) -> np.ndarray:
    """For each fold, ``apply(model, its lesions)`` with ``model = fit(the other folds' lesions)``; index arrays."""
    result = np.zeros(len(folds))
    for fold in np.unique(folds):
        held_out = np.flatnonzero(folds == fold)
        result[held_out] = apply(fit(np.flatnonzero(folds != fold)), held_out)
    return result


def patient_interval(statistic, groups: np.ndarray, samples: int, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of ``statistic(lesion indices)``, patients resampled with replacement."""
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    values = [statistic(np.concatenate([members[i] for i in rng.integers(len(members), size=len(members))]))
              for _ in range(samples)]  # fmt: skip
    low, high = np.percentile(values, (2.5, 97.5))
    return float(low), float(high)


def descriptor_matrix(lesions: list[dict]) -> np.ndarray:
    """(lesions, descriptors) of :data:`MODEL_DESCRIPTORS`, orientation as its size; NaN where undefined."""
    columns = []
    for name in MODEL_DESCRIPTORS:
        values = np.array([np.nan if lesion["descriptors"][name] is None else lesion["descriptors"][name]
                           for lesion in lesions], dtype=np.float64)  # fmt: skip
        columns.append(np.abs(values) if name == "orientation_deg" else values)
    return np.stack(columns, axis=1)


def descriptor_model(features: np.ndarray, malignant: np.ndarray, l2: float = 0.01):
    """(fit, apply) of a logistic model on standardised features, NaN replaced by the training mean."""
    from scripts.calibration import fit_logistic

    def fit(train: np.ndarray):
        mean, spread = np.nanmean(features[train], axis=0), np.nanstd(features[train], axis=0) + 1e-9
        standard = np.nan_to_num((features[train] - mean) / spread)
        return mean, spread, fit_logistic(standard, malignant[train], l2=l2)

    def apply(model, test: np.ndarray) -> np.ndarray:
        mean, spread, weights = model
        z = np.nan_to_num((features[test] - mean) / spread) @ weights[:-1] + weights[-1]
        return 1 / (1 + np.exp(-z))

    return fit, apply


def plot_reliability(curves: dict[str, np.ndarray], malignant: np.ndarray, path: Path) -> None:
    """Reliability diagram of each named set of probabilities, 10 bins, marker area by the lesions in the bin."""
    from matplotlib.figure import Figure

    from scripts.calibration import expected_calibration_error, reliability

    figure = Figure(figsize=(4.2, 4.0))
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    for (name, probabilities), marker in zip(curves.items(), "osD"):
        bins = reliability(probabilities, malignant)
        ece = expected_calibration_error(probabilities, malignant)
        axes.plot([b["mean_probability"] for b in bins], [b["malignant_fraction"] for b in bins], linewidth=1)
        axes.scatter([b["mean_probability"] for b in bins], [b["malignant_fraction"] for b in bins], marker=marker,
                     s=[8 + 2 * b["count"] for b in bins], label=f"{name} (ECE {ece:.3f})", alpha=0.7)  # fmt: skip
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel("predicted malignancy probability (bin mean)")
    axes.set_ylabel("fraction malignant")
    axes.set_title(f"BUS-UCLM, {len(malignant)} lesions, out of fold", fontsize=9)
    axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> dict:
    options = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    options.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data" / "BUS-UCLM")
    options.add_argument("--cache", type=Path, default=Path("/tmp/bus_uclm_lesions.jsonl"))
    options.add_argument("--figure", type=Path, default=None, help="reliability diagram PNG")
    options.add_argument("--samples", type=int, default=1000, help="bootstrap samples")
    options.add_argument("--json", type=Path, default=Path("/tmp/bus_uclm_calibration.json"))
    args = options.parse_args(argv)
    records = segment_all(args.data, args.cache)
    from descriptor_separation import auc, describe_case

    from scripts.calibration import expected_calibration_error, fit_calibration, logit
    from scripts.metrics import bootstrap_ci

    lesions = matched_lesions(records)
    p = np.array([lesion["probability"] for lesion in lesions])
    malignant = np.array([lesion["truth"] == 2 for lesion in lesions])
    decision = np.array([lesion["label"] == 2 for lesion in lesions])
    assert np.array_equal(decision, p > 0.5), "the recorded probability is not the one the class is decided on"
    folds, groups = np.array([lesion["fold"] for lesion in lesions]), np.array([lesion["group"] for lesion in lesions])
    lesion_images = [r for r in records if r["class"] > 0 and not r["near_duplicate"]]
    report = {
        "lesion_images": len(lesion_images),
        "images_without_matched_lesion": len(lesion_images) - len({lesion["name"] for lesion in lesions}),
        "lesions": len(lesions), "malignant": int(malignant.sum()), "patients": len(set(groups)),
    }  # fmt: skip
    print(f"{report['lesion_images']} lesion images (near duplicates left out), {report['patients']} patients; "
          f"{report['lesions']} found lesions cover a true lesion ({report['malignant']} malignant); "
          f"{report['images_without_matched_lesion']} images have none")

    # 1. calibration, each fold calibrated by a fit on the other four
    curves = {"shipped": p}
    report["calibration"] = {}
    for name, offset in (("temperature", False), ("Platt", True)):
        fit = lambda train, offset=offset: fit_calibration(p[train], malignant[train], offset=offset)  # noqa: E731
        curves[name] = out_of_fold(folds, fit, lambda calibration, test: calibration(p[test]))
        on_all = fit(np.arange(len(p)))
        report["calibration"][name] = {
            "fold_fits": [vars(fit(np.flatnonzero(folds != k))) for k in range(5)], "fit_on_all": vars(on_all)
        }
    print("\n| probability | ECE, 10 bins [95 % interval] | ECE change [95 % interval] | log loss change "
          "[95 % interval] | benign-vs-malignant accuracy at 0.5 [95 % interval] | accuracy change [95 % interval] |"
          "\n|---|---|---|---|---|---|")
    accuracy = lambda q, idx: float(np.mean((q[idx] > 0.5) == malignant[idx]))  # noqa: E731
    ece = lambda q, idx: expected_calibration_error(q[idx], malignant[idx])  # noqa: E731
    sign = np.where(malignant, 1.0, -1.0)
    log_loss = lambda q, idx: float(np.mean(np.logaddexp(0, -sign[idx] * logit(q[idx]))))  # noqa: E731
    report["figures"] = {}
    for name, q in curves.items():
        report["figures"][name] = entry = {
            "ece": ece(q, slice(None)), "ece_ci95": patient_interval(lambda i: ece(q, i), groups, args.samples),
            "accuracy": accuracy(q, slice(None)),
            "accuracy_ci95": patient_interval(lambda i: accuracy(q, i), groups, args.samples),
            "ece_change_ci95": patient_interval(lambda i: ece(q, i) - ece(p, i), groups, args.samples),
            "accuracy_change_ci95": patient_interval(lambda i: accuracy(q, i) - accuracy(p, i), groups, args.samples),
            "log_loss": log_loss(q, slice(None)),
            "log_loss_change_ci95": patient_interval(lambda i: log_loss(q, i) - log_loss(p, i), groups, args.samples),
        }  # fmt: skip
        changes = ["", "", ""]
        if q is not p:
            shipped = report["figures"]["shipped"]
            changes = [f"{entry[key] - shipped[key]:+.3f} [{entry[key + '_change_ci95'][0]:+.3f}, "
                       f"{entry[key + '_change_ci95'][1]:+.3f}]"
                       for key in ("ece", "accuracy", "log_loss")]
        print(f"| {name} | {entry['ece']:.3f} [{entry['ece_ci95'][0]:.3f}, {entry['ece_ci95'][1]:.3f}] | "
              f"{changes[0]} | {changes[2]} | {entry['accuracy']:.3f} [{entry['accuracy_ci95'][0]:.3f}, "
              f"{entry['accuracy_ci95'][1]:.3f}] | {changes[1]} |")
    for name in ("temperature", "Platt"):
        fits = report["calibration"][name]
        print(f"{name}: fitted on the other folds, temperature "
              + ", ".join(f"{f['temperature']:.2f}" for f in fits["fold_fits"])
              + (", offset " + ", ".join(f"{f['offset']:+.2f}" for f in fits["fold_fits"]) if name == "Platt" else "")
              + f" (folds 0-4); on all lesions {fits['fit_on_all']['temperature']:.2f}"
              + (f", offset {fits['fit_on_all']['offset']:+.2f}" if name == "Platt" else ""))
    if args.figure:
        plot_reliability(curves, malignant, args.figure)
        print(f"-> {args.figure}")

    # 2. descriptors of the model's masks, next to those of the ground-truth masks of the same images
    by_name = {r["name"]: r for r in lesion_images}
    model_rows = [{**lesion["descriptors"], "label": lesion["truth"]} for lesion in lesions]
    truth_rows = []
    for name in sorted({lesion["name"] for lesion in lesions}):
        stem = Path(name).stem
        row = describe_case(args.data / "images" / f"{stem}.png", [args.data / "masks" / f"{stem}.png"])
        if row is not None:
            truth_rows.append({**row, "label": by_name[name]["class"]})
    report["separation_model_masks"] = separation(model_rows, args.samples)
    report["separation_truth_masks"] = separation(truth_rows, args.samples)
    rng = np.random.default_rng(0)
    classes = [np.flatnonzero(malignant), np.flatnonzero(~malignant)]
    resampled = []
    for _ in range(args.samples):
        pick = np.concatenate([rng.choice(members, size=len(members)) for members in classes])
        resampled.append(auc(p[pick], malignant[pick]))
    report["probability_auc"] = {"auc": auc(p, malignant), "ci95": list(np.percentile(resampled, (2.5, 97.5)))}
    print("\n| descriptor | model's masks, AUC (95 % interval) | ground-truth masks of the same images |"
          "\n|---|---|---|")
    for name in DESCRIPTORS:
        cells = []
        for table in (report["separation_model_masks"], report["separation_truth_masks"]):
            r = table[name]
            cell = f"{r['auc']:.2f} ({r['low']:.2f}-{r['high']:.2f})"
            if name == "posterior_ratio":  # defined on fewer lesions
                cell += f", on {r['benign']} benign and {r['malignant']} malignant"
            cells.append(cell)
        print(f"| `{name}` | " + " | ".join(cells) + " |")
    low, high = report["probability_auc"]["ci95"]
    print(f"| network's malignancy probability | {report['probability_auc']['auc']:.2f} ({low:.2f}-{high:.2f}) | |")
    print(f"lesions: model's masks {len(model_rows)} ({int(malignant.sum())} malignant); ground-truth masks of the "
          f"same images {len(truth_rows)} ({sum(r['label'] == 2 for r in truth_rows)} malignant)")

    # 3. a logistic model on the descriptors and the network's logit, out of fold, against the network's decision
    features = np.hstack([descriptor_matrix(lesions), logit(p)[:, np.newaxis]])
    score = out_of_fold(folds, *descriptor_model(features, malignant))
    descriptors_only = out_of_fold(folds, *descriptor_model(features[:, :-1], malignant))
    print("\n| benign-vs-malignant call | accuracy [95 % interval] | against the network's decision [95 % interval] |"
          "\n|---|---|---|")
    report["decision"] = {}
    for name, q in (("network's decision (shipped)", p), ("Platt scaling of the network's probability",
                    curves["Platt"]), ("logistic model: descriptors + network logit", score),
                    ("logistic model: descriptors alone", descriptors_only)):  # fmt: skip
        entry = {
            "accuracy": accuracy(q, slice(None)),
            "accuracy_ci95": patient_interval(lambda i: accuracy(q, i), groups, args.samples),
            "difference": accuracy(q, slice(None)) - accuracy(p, slice(None)),
            "difference_ci95_patients": patient_interval(lambda i: accuracy(q, i) - accuracy(p, i), groups,
                                                         args.samples),
            "difference_ci95_lesions": bootstrap_ci(((q > 0.5) == malignant) * 1.0 - (decision == malignant),
                                                    args.samples),
            "auc": auc(q, malignant),
        }  # fmt: skip
        report["decision"][name] = entry
        difference = "" if q is p else (
            f"{entry['difference']:+.3f} [{entry['difference_ci95_patients'][0]:+.3f}, "
            f"{entry['difference_ci95_patients'][1]:+.3f}] (over lesions [{entry['difference_ci95_lesions'][0]:+.3f}, "
            f"{entry['difference_ci95_lesions'][1]:+.3f}])")
        print(f"| {name} | {entry['accuracy']:.3f} [{entry['accuracy_ci95'][0]:.3f}, {entry['accuracy_ci95'][1]:.3f}]"
              f" | {difference} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
