"""Preparation of the real datasets, of several sources at once and of bad folders; metrics, lesion postprocessing and anti-aliasing on
hand-made arrays."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Resize
from PIL import Image
from scipy import ndimage

from busi_synthetic import make_busi, make_folder_layout
from scripts.evaluate import compare_evaluations, read_per_image, summarise, summarise_by_source
from scripts.metrics import bootstrap_ci, image_metrics
from scripts.postprocess import _fill_holes, find_lesions, measure_lesions
from scripts.prepare import Preparation, sampling_weights
from scripts.finetune import check_output_dir, tuned_parameters, tuning_split
from scripts.tune import held_out_parts
from scripts.transforms import AntiAliasd, RandBurnedInMarksd, RandDepthGaind

BUSI = Path(__file__).resolve().parents[2] / "shared" / "data" / "BUSI"
UCLM = BUSI.parent / "BUS-UCLM"


@pytest.mark.skipif(not BUSI.is_dir(), reason="../shared/data/BUSI is not present")
def test_prepare_real_busi(tmp_path):
    Preparation(str(BUSI), str(tmp_path)).run()
    report = json.loads((tmp_path / "report.json").read_text())
    busi = report["sources"]["BUSI"]
    datalist = json.loads((tmp_path / "datalist.json").read_text())
    assert busi["layout"] == "busi" and report["skipped"] == []
    # 650 images, 19 of which are in groups whose members carry different labels
    assert busi["counts_per_class"] == {"normal": 106, "benign": 366, "malignant": 159}
    # the byte-identical pair filed under both classes is found and kept out of every split
    assert any({"benign/benign (433).png", "malignant/malignant (145).png"} <= set(g) for g in busi["conflicting_labels"])
    fold = {item["name"]: item["fold"] for item in datalist["items"]}
    assert "BUSI/benign/benign (433).png" not in fold
    for group in busi["groups"]:
        assert len({fold[f"BUSI/{name}"] for name in group if f"BUSI/{name}" in fold}) <= 1, group
    # the pairs listed with the dataset (64x64 correlation > 0.99) are all found
    listed = [line.split("\t") for line in (BUSI / "near_duplicates.tsv").read_text().splitlines()[1:]]
    grouped = {name: k for k, group in enumerate(busi["groups"]) for name in group}
    for _, a, b, *_ in listed:
        if (BUSI / a).is_file() and (BUSI / b).is_file():
            assert a in grouped and grouped[a] == grouped[b], (a, b)
    # five folds of nearly equal size, each with every class in proportion
    per_fold = busi["counts_per_fold"]
    assert len(per_fold) == 5 and sum(sum(c.values()) for c in per_fold) == len(fold) == 631
    for label_class in ("normal", "benign", "malignant"):
        counts = [c[label_class] for c in per_fold]
        assert max(counts) - min(counts) <= 3, (label_class, counts)
    # the same settings reuse the datalist; other settings make it again
    preparation = Preparation(str(BUSI), str(tmp_path), folds=5, fold=2)
    assert preparation.run_if_needed() == tmp_path / "datalist.json"
    lists = preparation.load_datalist()
    assert {item["fold"] for item in lists["validation"]} == {2} and 2 not in {i["fold"] for i in lists["training"]}
    assert len(lists["training"]) + len(lists["validation"]) == len(lists["all"]) == 631
    Preparation(str(BUSI), str(tmp_path), folds=4).run_if_needed()
    assert len(json.loads((tmp_path / "report.json").read_text())["sources"]["BUSI"]["counts_per_fold"]) == 4


@pytest.mark.skipif(not UCLM.is_dir(), reason="../shared/data/BUS-UCLM is not present")
def test_prepare_real_bus_uclm_by_patient(tmp_path):
    Preparation(str(UCLM), str(tmp_path)).run()
    uclm = json.loads((tmp_path / "report.json").read_text())["sources"]["BUS-UCLM"]
    items = json.loads((tmp_path / "datalist.json").read_text())["items"]
    assert uclm["layout"] == "folder" and uclm["counts_per_class"] == {"normal": 419, "benign": 174, "malignant": 90}
    # one fold per patient; CHCO's frames are CHVI's (pixel-identical), merged in split_group
    folds_of = defaultdict(set)
    for item in items:
        folds_of[item["group"]].add(item["fold"])
    assert len(folds_of) == 37 and all(len(f) == 1 for f in folds_of.values())
    assert not any(group.endswith("/CHCO") for group in folds_of)
    # every fold holds each class, none more than twice another's share of a class
    for label_class in ("normal", "benign", "malignant"):
        counts = [c[label_class] for c in uclm["counts_per_fold"]]
        assert min(counts) > 0 and max(counts) <= 2 * min(counts), (label_class, counts)
    assert sum(item["marks"] for item in items) == 154 and sum(item["doppler"] for item in items) == 37
    label = np.asarray(Image.open(next(i["label"] for i in items if i["name"] == "BUS-UCLM/ALWI_000.png")))
    assert set(np.unique(label)) == {0, 1}


def test_prepare_several_sources_into_one_datalist(tmp_path):
    busi = tmp_path / "busi_like"
    make_busi(busi, per_class={"benign": 6, "malignant": 5, "normal": 5})
    patients = {f"P{k:02d}": ["normal", "benign" if k % 2 else "malignant", "normal"] for k in range(10)}
    folder = make_folder_layout(tmp_path / "clinic", patients)
    # a Decathlon-style datalist with relative paths and groups
    decathlon = tmp_path / "decathlon"
    make_folder_layout(decathlon, {"Q1": ["benign", "normal"], "Q2": ["malignant", "benign"]}, seed=1)
    (decathlon / "dataset.json").write_text(json.dumps({"training": [
        {"image": f"images/{name}.png", "label": f"masks/{name}.png", "group": name[:2]}
        for name in ("Q1_000", "Q1_001", "Q2_000", "Q2_001")]}))
    preparation = Preparation(
        [str(busi), {"path": str(folder), "name": "clinic"}, str(decathlon / "dataset.json")], str(tmp_path / "out"),
        folds=2,
    )
    items = preparation.load_datalist()["all"]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {s: r["layout"] for s, r in report["sources"].items()} == {
        "busi_like": "busi", "clinic": "folder", "dataset": "datalist"}
    assert Counter(item["source"] for item in items) == {"busi_like": 17, "clinic": 30, "dataset": 4}
    clinic = [item for item in items if item["source"] == "clinic"]
    # a patient's images stay together; both folds hold benign, malignant and normal images of the clinic
    for patient in patients:
        assert len({item["fold"] for item in clinic if item["group"] == f"clinic/{patient}"}) == 1
    for fold in (0, 1):
        assert {item["class"] for item in clinic if item["fold"] == fold} == {0, 1, 2}
    assert {item["name"] for item in items if item["source"] == "dataset"} == {
        "dataset/images/Q1_000.png", "dataset/images/Q1_001.png", "dataset/images/Q2_000.png", "dataset/images/Q2_001.png"}
    label = np.asarray(Image.open(next(i["label"] for i in clinic if i["class"] == 2)))
    assert set(np.unique(label)) == {0, 2}
    # sampling: each source drawn equally often, each class equally often within a source
    def drawn_shares(weights):
        per_source, per_class = Counter(), Counter()
        for item, weight in zip(items, weights):
            per_source[item["source"]] += weight
            per_class[item["source"], item["class"]] += weight
        return per_source, per_class

    per_source, per_class = drawn_shares(sampling_weights(items))
    assert all(math.isclose(total, 1 / 3) for total in per_source.values())
    assert all(math.isclose(per_class["clinic", c], 1 / 9) for c in (0, 1, 2))
    # by the square root of the counts instead: each source still a third, its classes as sqrt(count)
    per_source, per_class = drawn_shares(sampling_weights(items, class_exponent=0.5))
    assert all(math.isclose(total, 1 / 3) for total in per_source.values())
    roots = {c: math.sqrt(n) for c, n in Counter(item["class"] for item in clinic).items()}
    for c, root in roots.items():
        assert math.isclose(per_class["clinic", c], root / sum(roots.values()) / 3)
    # in natural proportions: every image of a source equally likely
    natural = sampling_weights(items, class_exponent=1.0)
    assert len({round(w, 12) for item, w in zip(items, natural) if item["source"] == "clinic"}) == 1


def test_prepare_names_each_bad_mask_and_prepares_the_rest(tmp_path):
    folder = make_folder_layout(tmp_path / "clinic", {"A": ["benign", "malignant", "normal", "benign"]})
    Image.fromarray(np.full((72, 88), 255, dtype=np.uint8)).save(folder / "masks" / "A_000.png")  # 0/255 mask
    Image.fromarray(np.zeros((20, 20), dtype=np.uint8)).save(folder / "masks" / "A_001.png")  # another size
    mask = np.zeros((72, 88), dtype=np.uint8)
    mask[5:9, 5:9] = 2
    Image.fromarray(mask).save(folder / "masks" / "A_003.png")  # listed benign, drawn malignant
    (folder / "images" / "A_009.png").write_bytes((folder / "images" / "A_002.png").read_bytes())  # not listed
    Preparation(str(folder), str(tmp_path / "out")).run()
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    reasons = {Path(s["file"]).name: s["reason"] for s in report["skipped"]}
    assert "holds values [255]" in reasons["A_000.png"] and "expected 0 background, 1 benign, 2 malignant" in reasons[
        "A_000.png"]
    assert "mask is (20, 20) but the image is (88, 72)" in reasons["A_001.png"]
    assert "shows a malignant image but it is listed as benign" in reasons["A_003.png"]
    assert reasons["A_009.png"] == "not listed in labels.csv"
    assert report["sources"]["clinic"]["images_used"] == 1


def test_prepare_refuses_empty_and_wrong_layout(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no labelled images found"):
        Preparation(str(tmp_path / "empty"), str(tmp_path / "out")).run()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Preparation(str(tmp_path / "missing"), str(tmp_path / "out")).run()
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "benign (1).png").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="expected benign/, malignant/ and normal/ folders"):
        Preparation(str(flat), str(tmp_path / "out")).run()
    (flat / "benign").mkdir()
    with pytest.raises(ValueError, match="must not be inside the dataset folder"):
        Preparation(str(flat), str(flat / "prepared")).run()
    with pytest.raises(ValueError, match="same name"):
        Preparation([str(flat), str(tmp_path / "other" / "flat")], str(tmp_path / "out"))


def test_image_metrics_match_hand_computed_values():
    truth = np.zeros((10, 10), dtype=np.uint8)
    truth[2:6, 2:6] = 2  # 16 malignant pixels
    prediction = np.zeros_like(truth)
    prediction[3:7, 2:6] = 2  # 16 pixels, 12 of them overlapping
    prediction[8, 8] = 1  # one benign false positive
    row = image_metrics(prediction, truth)
    assert row["true_class"] == 2 and row["predicted_class"] == 2
    assert row["lesion_dice"] == pytest.approx(2 * 12 / (17 + 16))
    assert row["lesion_iou"] == pytest.approx(12 / 21)
    assert row["lesion_precision"] == pytest.approx(12 / 17)
    assert row["lesion_recall"] == pytest.approx(12 / 16)
    assert row["true_class_dice"] == pytest.approx(2 * 12 / 32)
    assert row["pixel_accuracy"] == pytest.approx((100 - 4 - 4 - 1) / 100)
    # background IoU 79/88, benign 0/1, malignant 12/20
    assert row["mean_iou_with_background"] == pytest.approx((79 / 88 + 0 + 12 / 20) / 3)
    assert row["lesion_hd95_px"] > 0 and not row["predicted_empty"]


def test_normal_images_are_scored_by_empty_prediction():
    truth = np.zeros((8, 8), dtype=np.uint8)
    empty = image_metrics(truth.copy(), truth)
    assert empty["predicted_empty"] == 1.0 and empty["lesion_dice"] == 1.0 and empty["predicted_class"] == 0
    assert math.isnan(empty["lesion_hd95_px"]) and math.isnan(empty["true_class_dice"])
    false_positive = truth.copy()
    false_positive[0, 0] = 1
    scored = image_metrics(false_positive, truth)
    assert scored["predicted_empty"] == 0.0 and scored["lesion_dice"] == 0.0 and scored["predicted_class"] == 1


def test_bootstrap_interval_brackets_the_mean():
    values = np.array([0.2, 0.4, 0.6, 0.8, 1.0, float("nan")])
    low, high = bootstrap_ci(values, samples=2000, seed=1)
    assert low < 0.6 < high and 0.2 <= low and high <= 1.0
    assert all(math.isnan(v) for v in bootstrap_ci(np.array([float("nan")])))


def _write_evaluation(
    folder: Path, predictions: dict[str, np.ndarray], truths: dict[str, np.ndarray], sources: dict[str, str] | None = None
) -> None:
    rows = [
        {"name": name, "fold": 0, "source": (sources or {}).get(name, ""), **image_metrics(predictions[name], truths[name])}
        for name in predictions
    ]
    folder.mkdir()
    with open(folder / "per_image.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_two_evaluations_are_compared_image_by_image(tmp_path):
    square = np.zeros((10, 10), dtype=np.uint8)
    square[2:6, 2:6] = 1
    truths = {"benign": square, "malignant": square * 2, "normal": np.zeros_like(square)}
    half = square.copy()
    half[2:4] = 0
    baseline = {"benign": half, "malignant": square, "normal": square}  # malignant called benign, normal not empty
    candidate = {**truths, "extra": square}  # every image right, and one the baseline did not score
    _write_evaluation(tmp_path / "baseline", baseline, truths)
    _write_evaluation(tmp_path / "candidate", candidate, {**truths, "extra": square})

    result = compare_evaluations(str(tmp_path / "baseline"), str(tmp_path / "candidate"), samples=200)
    assert result["images"] == 3
    half_dice = 2 * 8 / (8 + 16)
    assert result["lesion_dice"]["n"] == 2 and result["lesion_dice"]["baseline"] == pytest.approx((half_dice + 1) / 2)
    assert result["lesion_dice"]["difference"] == pytest.approx((1 - half_dice) / 2)
    assert result["benign_vs_malignant_accuracy"]["difference"] == pytest.approx(0.5)
    assert result["normal_predicted_empty"] == {"baseline": 0.0, "candidate": 1.0, "difference": 1.0,
                                                "ci95": [1.0, 1.0], "n": 1}
    assert result["image_accuracy_3class"]["difference"] == pytest.approx(2 / 3)
    written = json.loads((tmp_path / "candidate" / "paired_against_baseline.json").read_text())
    assert written["malignant_dice"] == result["malignant_dice"]
    # the summary of the rows read back is the one of the rows written
    rows = list(read_per_image(tmp_path / "baseline" / "per_image.csv").values())
    assert summarise(rows)["benign_vs_malignant_accuracy"]["mean"] == 0.5
    with pytest.raises(ValueError, match="--candidate_dir"):
        compare_evaluations(str(tmp_path / "baseline"), None)
    assert "by_source" not in result


def test_a_comparison_of_two_sources_gives_each_source_apart(tmp_path):
    square = np.zeros((10, 10), dtype=np.uint8)
    square[2:6, 2:6] = 1
    truths = {"a1": square, "a2": square, "b1": square, "b2": np.zeros_like(square)}
    sources = {"a1": "A", "a2": "A", "b1": "B", "b2": "B"}
    missed = {**truths, "b1": np.zeros_like(square)}  # the baseline misses the lesion of source B
    _write_evaluation(tmp_path / "baseline", missed, truths, sources)
    _write_evaluation(tmp_path / "candidate", truths, truths, sources)
    result = compare_evaluations(str(tmp_path / "baseline"), str(tmp_path / "candidate"), samples=200)
    assert result["lesion_dice"]["difference"] == pytest.approx(1 / 3)
    by_source = result["by_source"]
    assert by_source["A"]["images"] == 2 and by_source["A"]["lesion_dice"]["difference"] == 0
    assert "normal_predicted_empty" not in by_source["A"]  # source A has no normal image
    assert by_source["B"]["lesion_dice"] == {"baseline": 0.0, "candidate": 1.0, "difference": 1.0,
                                             "ci95": [1.0, 1.0], "n": 1}
    assert by_source["B"]["lesion_image_missed"]["difference"] == -1.0


def test_summary_has_each_source_and_marks_apart():
    lesion = np.zeros((10, 10), dtype=np.uint8)
    lesion[2:6, 2:6] = 1
    empty = np.zeros_like(lesion)
    rows = [
        {"name": "A/1", "source": "A", **image_metrics(lesion, lesion)},
        {"name": "A/2", "source": "A", **image_metrics(empty, empty)},
        {"name": "B/1", "source": "B", "marks": "yes", **image_metrics(lesion, lesion)},
        {"name": "B/2", "source": "B", "marks": "no", **image_metrics(empty, lesion)},  # a lesion missed
    ]
    summary = summarise_by_source(rows, samples=50)
    assert summary["lesion_image_missed"]["mean"] == pytest.approx(1 / 3)
    by_source = summary["by_source"]
    assert set(by_source) == {"A", "B", "B, with marks", "B, without marks"}
    assert by_source["A"]["lesion_image_missed"]["mean"] == 0 and by_source["B"]["lesion_dice"]["mean"] == 0.5
    assert by_source["B, without marks"]["lesion_image_missed"]["mean"] == 1 and by_source["B, with marks"]["images"] == 1
    assert "by_source" not in summarise_by_source([{k: v for k, v in r.items() if k != "source"} for r in rows])


def test_each_lesion_gets_one_class_and_specks_are_dropped():
    probabilities = np.zeros((3, 40, 40), dtype=np.float32)
    probabilities[0] = 1.0
    # a lesion whose pixels are mostly malignant, with a benign-looking corner and a hole
    probabilities[:, 5:20, 5:20] = np.array([0.1, 0.3, 0.6])[:, None, None]
    probabilities[:, 5:9, 5:9] = np.array([0.1, 0.6, 0.3])[:, None, None]
    probabilities[:, 12, 12] = np.array([0.9, 0.05, 0.05])
    # a one-pixel speck and a faint (low-confidence) region
    probabilities[:, 30, 30] = np.array([0.2, 0.8, 0.0])
    probabilities[:, 25:35, 2:12] = np.array([0.45, 0.3, 0.25])[:, None, None]
    numbers, found = find_lesions(probabilities, min_area_fraction=0.002, min_confidence=0.6)
    labels, lesions = measure_lesions(numbers, found)
    assert set(np.unique(labels[5:20, 5:20])) == {2}  # one class, hole filled
    assert labels[30, 30] == 0 and labels[25:35, 2:12].max() == 0
    assert len(lesions) == 1
    lesion = lesions[0]
    assert (lesion.label, lesion.class_name, lesion.area_px) == (2, "malignant", 225)
    assert lesion.bbox == (5, 5, 19, 19)


def test_image_head_keeps_normal_images_empty_and_lesions_are_measured_at_any_size():
    probabilities = np.zeros((3, 20, 20), dtype=np.float32)
    probabilities[0] = 1.0
    probabilities[:, 2:6, 2:6] = np.array([0.1, 0.8, 0.1])[:, None, None]
    probabilities[:, 10:18, 10:18] = np.array([0.1, 0.2, 0.7])[:, None, None]
    normal = np.array([0.9, 0.05, 0.05])
    assert find_lesions(probabilities, normal, max_normal_probability=0.5)[1] == []
    numbers, found = find_lesions(probabilities, normal, max_normal_probability=0.95)
    assert [label for label, _ in found] == [1, 2]
    # the lesion-number map brought to twice the size (nearest neighbour): measured there, largest first
    labels, lesions = measure_lesions(numbers.repeat(2, axis=0).repeat(2, axis=1), found)
    assert labels.shape == (40, 40) and labels[5, 5] == 1 and labels[30, 30] == 2
    assert [(les.lesion_id, les.label, les.area_px, les.bbox) for les in lesions] == [
        (1, 2, 256, (20, 20, 35, 35)), (2, 1, 64, (4, 4, 11, 11))]
    assert lesions[0].confidence == pytest.approx(0.7)
    with pytest.raises(ValueError, match="expected probabilities of shape"):
        find_lesions(probabilities[:2])


def test_image_head_weighs_in_on_each_lesions_class():
    probabilities = np.zeros((3, 20, 20), dtype=np.float32)
    probabilities[0] = 1.0
    probabilities[:, 2:6, 2:6] = np.array([0.1, 0.6, 0.3])[:, None, None]  # malignant share of the pixels: 1/3
    probabilities[:, 10:18, 10:18] = np.array([0.1, 0.2, 0.7])[:, None, None]  # 7/9
    malignant_image = np.array([0.0, 0.2, 0.8])  # malignant share of the head: 0.8

    def classes(weight: float) -> list[int]:
        return [label for label, _ in find_lesions(probabilities, malignant_image, image_class_weight=weight)[1]]

    assert classes(0.0) == [1, 2]  # the pixels alone decide, as without the setting
    assert classes(0.3) == [1, 2]  # 0.7 * 1/3 + 0.3 * 0.8 = 0.473
    assert classes(0.4) == [2, 2]  # 0.6 * 1/3 + 0.4 * 0.8 = 0.52: the head tips the first lesion
    assert classes(1.0) == [2, 2]


def test_malignancy_threshold_moves_the_class_decision():
    probabilities = np.zeros((3, 20, 20), dtype=np.float32)
    probabilities[0] = 1.0
    probabilities[:, 2:6, 2:6] = np.array([0.1, 0.6, 0.3])[:, None, None]  # malignancy 1/3
    probabilities[:, 10:18, 10:18] = np.array([0.1, 0.2, 0.7])[:, None, None]  # 7/9

    def classes(threshold: float) -> list[int]:
        return [label for label, _ in find_lesions(probabilities, malignancy_threshold=threshold)[1]]

    assert classes(0.5) == [1, 2] and classes(0.3) == [2, 2] and classes(0.8) == [1, 1]
    # the reported malignancy is the one decided on, whatever the threshold
    _, found = find_lesions(probabilities, malignancy_threshold=0.3)
    assert [confidence.malignancy for _, confidence in found] == pytest.approx([1 / 3, 7 / 9], abs=1e-4)


def test_tuned_parameters_freeze_every_other_layer():
    network = torch.nn.ModuleDict({"encoders": torch.nn.Linear(2, 2), "decoders": torch.nn.Linear(2, 2)})
    tuned = tuned_parameters(network, ["encoders"])
    assert tuned == list(network["encoders"].parameters())
    assert [p.requires_grad for p in network.parameters()] == [True, True, False, False]
    assert tuned_parameters(network, None) == list(network.parameters())  # None: every layer, as before
    assert all(p.requires_grad for p in network.parameters())
    unknown = r"\['encoder'\] match no layer of the network; its layers: decoders, encoders"
    with pytest.raises(ValueError, match=unknown):
        tuned_parameters(network, ["encoder"])

def test_single_fold_is_dealt_into_parts_whole_groups_within_each_source():
    items = [{"source": source, "group": f"{source}-p{k // 3}", "name": f"{source}{k}", "fold": 0}
             for source in ("A", "B") for k in range(12)]
    items += [{"source": "A", "group": None, "name": f"single{k}", "fold": 0} for k in range(4)]
    parts = held_out_parts(items, parts=2)
    assert set(parts) == {"0, part 1 of 2", "0, part 2 of 2"}
    by_group = defaultdict(set)
    for item, part in zip(items, parts):
        by_group[(item["source"], item["group"] or item["name"])].add(part)
    assert all(len(p) == 1 for p in by_group.values())  # one group, one part
    for source, groups in (("A", 8), ("B", 4)):  # each source's groups dealt evenly
        counts = Counter(p.pop() for (s, _), p in by_group.items() if s == source)
        assert sorted(counts.values()) == [groups // 2, groups // 2]


def test_holes_are_filled_as_scipy_fills_them():
    rng = np.random.default_rng(0)
    for index in range(60):
        seeds = rng.random((96, 128)) < rng.uniform(0.002, 0.05)
        mask = ndimage.binary_dilation(seeds, iterations=int(rng.integers(1, 6)))
        mask = ~mask if index % 3 == 0 else mask  # rings and frames too
        np.testing.assert_array_equal(_fill_holes(mask), ndimage.binary_fill_holes(mask))


@pytest.mark.parametrize("shape", [(470, 560), (300, 200), (256, 700), (100, 120)])
@pytest.mark.parametrize("keep_aspect", [False, True], ids=["squash", "keep aspect"])
def test_anti_aliasing_is_that_of_monai_resize(shape, keep_aspect):
    frame = MetaTensor(torch.from_numpy(np.random.default_rng(1).random((1, *shape), dtype=np.float32)))
    resize = Resize(256, size_mode="longest", mode="bilinear") if keep_aspect else Resize((256, 256), mode="bilinear")
    expected = Resize(resize.spatial_size, size_mode=resize.size_mode, mode="bilinear", anti_aliasing=True)(frame)
    smoothed = AntiAliasd("image", spatial_size=(256, 256), keep_aspect=keep_aspect)({"image": frame})["image"]
    assert isinstance(smoothed, MetaTensor) and smoothed.shape == frame.shape
    resized = resize(smoothed)
    assert resized.shape == expected.shape and max(resized.shape[1:]) == 256
    np.testing.assert_allclose(resized.numpy(), expected.numpy(), atol=1e-5)


def test_depth_gain_changes_rows_smoothly_and_stays_in_range():
    image = MetaTensor(torch.full((1, 64, 48), 0.5))
    gained = RandDepthGaind("image", prob=1.0, log_gain_std=0.3).set_random_state(3)({"image": image})["image"]
    assert gained.shape == image.shape and 0.0 <= float(gained.min()) and float(gained.max()) <= 1.0
    # one factor per row: every row stays constant, the rows differ, neighbours by little
    assert torch.all(gained.std(dim=-1) < 1e-6)
    profile = gained[0, :, 0]
    assert float(profile.max() - profile.min()) > 0.05 and float((profile[1:] - profile[:-1]).abs().max()) < 0.05


def test_burned_in_marks_change_the_image_only():
    rng = np.random.default_rng(0)
    image = MetaTensor(torch.as_tensor(rng.uniform(0.2, 0.4, (1, 64, 64)), dtype=torch.float32))
    label = torch.zeros((1, 64, 64))
    marks = RandBurnedInMarksd("image", prob=1.0, box_prob=1.0).set_random_state(0)
    out = marks({"image": image, "label": label})
    changed = out["image"] != image
    assert torch.equal(out["label"], label) and 10 < int(changed.sum()) < 64 * 64 // 2
    # crosses and lines are bright, a box black or white: every changed pixel is far from the scan's 0.2-0.4
    values = out["image"][changed]
    assert torch.all((values == 0) | (values >= 0.8)) and bool((values == 0).any() or (values == 1).any())
    assert torch.equal(RandBurnedInMarksd("image", prob=0.0)({"image": image})["image"], image)


def test_fine_tuning_split_takes_patients_and_refuses_too_few(tmp_path):
    items = [{"name": f"P{p}_{n}", "group": f"clinic/P{p}", "fold": p % 2, "source": "clinic"}
             for p in range(6) for n in range(5)]
    datalist = {"training": [i for i in items if i["fold"]], "validation": [i for i in items if not i["fold"]], "all": items}
    split = tuning_split(datalist, max_images=7, seed=1)
    patients = Counter(item["group"] for item in split["training"])
    assert len(split["training"]) == 7 and sorted(patients.values()) == [2, 5] and split["validation"] == datalist["validation"]
    assert tuning_split(datalist)["training"] == datalist["training"]
    # the same budget spread over more patients: at most 2 images of each, still only tuning patients
    split = tuning_split(datalist, max_images=5, seed=1, images_per_patient=2)
    patients = Counter(item["group"] for item in split["training"])
    assert len(split["training"]) == 5 and sorted(patients.values()) == [1, 2, 2]
    assert all(item["fold"] == 1 for item in split["training"])
    assert len(tuning_split(datalist, images_per_patient=2)["training"]) == 3 * 2
    with pytest.raises(ValueError, match="30 usable images of 6 patients: too few"):
        tuning_split({**datalist, "validation": []})
    # rehearsal images (the data the shipped weights learned from) are all tuned on, never limited nor scored
    old = [{"name": f"R{n}", "group": None, "fold": n % 2, "source": "rehearsal"} for n in range(8)]
    mixed = {key: value + [i for i in old if key == "all" or (i["fold"] == 0) == (key == "validation")]
             for key, value in datalist.items()}
    split = tuning_split(mixed, max_images=7, seed=1, rehearsal_source="rehearsal")
    assert len(split["training"]) == 7 + 8 and split["validation"] == datalist["validation"]
    with pytest.raises(ValueError, match="the shipped weights' folder"):
        check_output_dir(str(tmp_path / "models" / "."), str(tmp_path / "models"))
    assert check_output_dir(str(tmp_path / "runs"), str(tmp_path / "models")) == str(tmp_path / "runs")
