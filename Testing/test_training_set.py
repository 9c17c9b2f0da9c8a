"""The training set the Slicer module's "Add to training set" writes: the ``images/ masks/ labels.csv`` layout, read
back with the bundle's own data preparation; files never overwritten; unusable input refused."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from BUSISegmentationLib.training_set import add_case, grey_8bit, pathology_of
from scripts.prepare import read_folder_layout


def _labels(value: int | None) -> np.ndarray:
    labels = np.zeros((6, 8), np.uint8)
    if value:
        labels[2:4, 3:6] = value
    return labels


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "labels.csv", newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def test_cases_are_written_in_the_layout_the_data_preparation_reads(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    folder = tmp_path / "training set"
    cases = [
        add_case(folder, rgb, _labels(1), "patient A", "benign (23)"),
        add_case(folder, rgb[..., 0], _labels(2), "patient A", "scan.nrrd"),
        add_case(folder, rgb[..., 1], _labels(None), " 1.2.840.99 ", "normal/frame 3"),
    ]
    assert [(c.id, c.pathology, c.split_group) for c in cases] == [
        ("benign (23)", "benign", "patient A"), ("scan.nrrd", "malignant", "patient A"),
        ("normal_frame 3", "normal", "1.2.840.99"),
    ]  # fmt: skip
    skipped = []
    read = read_folder_layout(folder, "mine", skipped)
    assert skipped == []
    assert [(c.image_path.name, c.mask_paths, c.label_class, c.group) for c in read] == [
        (case.image.name, [case.mask], case.pathology, case.split_group) for case in cases
    ]
    with Image.open(cases[0].image) as image, Image.open(cases[0].mask) as mask:
        assert image.mode == mask.mode == "L"
        expected = np.round(rgb.astype(np.float64) @ [0.299, 0.587, 0.114])
        np.testing.assert_array_equal(np.asarray(image), expected)
        np.testing.assert_array_equal(np.asarray(mask), _labels(1))
    with Image.open(cases[1].image) as image:
        np.testing.assert_array_equal(np.asarray(image), rgb[..., 0])  # 8-bit grey is kept as it is


def test_existing_files_and_rows_are_never_overwritten(tmp_path: Path) -> None:
    folder = tmp_path / "set"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "scan.jpg").write_bytes(b"someone's picture")  # same stem, other format
    # an existing table with a column of its own and no line break after its last row
    (folder / "labels.csv").write_text("id,pathology,split_group,doppler\nscan,benign,p1,no\nscan-2,normal,p1,yes")
    case = add_case(folder, np.zeros((6, 8), np.uint8), _labels(2), "p2", "scan")
    assert case.id == "scan-3"
    assert (folder / "images" / "scan.jpg").read_bytes() == b"someone's picture"
    again = add_case(folder, np.zeros((6, 8), np.uint8), _labels(1), "p2", "scan")
    assert again.id == "scan-4" and case.mask.is_file() and again.mask.is_file()
    assert _rows(folder) == [
        {"id": "scan", "pathology": "benign", "split_group": "p1", "doppler": "no"},
        {"id": "scan-2", "pathology": "normal", "split_group": "p1", "doppler": "yes"},
        {"id": "scan-3", "pathology": "malignant", "split_group": "p2", "doppler": ""},
        {"id": "scan-4", "pathology": "benign", "split_group": "p2", "doppler": ""},
    ]


@pytest.mark.parametrize(
    ("labels", "group", "table", "message"),
    [
        (np.full((6, 8), 3, np.uint8), "p", None, "values \\[3\\]"),
        (np.zeros((8, 6), np.uint8), "p", None, "differ in size"),
        (np.zeros((6, 8), np.uint8), "  ", None, "patient or study id"),
        (np.zeros((6, 8), np.uint8), "p", "id,pathology\n", "no column split_group"),
    ],
)
def test_unusable_input_is_refused_and_nothing_written(tmp_path: Path, labels, group, table, message) -> None:
    folder = tmp_path / "set"
    if table:
        folder.mkdir()
        (folder / "labels.csv").write_text(table)
    with pytest.raises(ValueError, match=message):
        add_case(folder, np.zeros((6, 8), np.uint8), labels, group, "scan")
    assert not (folder / "images").exists() and not (folder / "masks").exists()


def test_grey_8bit_scales_only_what_is_not_8_bit() -> None:
    sixteen = np.array([[1000, 3000], [5000, 1000]], np.uint16)
    np.testing.assert_array_equal(grey_8bit(sixteen), [[0, 128], [255, 0]])
    np.testing.assert_array_equal(grey_8bit(np.full((2, 2), 7.5)), np.zeros((2, 2)))  # flat image: no contrast
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 1] = 100
    np.testing.assert_array_equal(grey_8bit(rgba), np.full((2, 2), 59))  # round(0.587 * 100), alpha ignored
    with pytest.raises(ValueError, match="components"):
        grey_8bit(np.zeros((2, 2, 2)))


def test_pathology_is_the_worst_class_present() -> None:
    both = _labels(1)
    both[0, 0] = 2
    assert [pathology_of(x) for x in (_labels(None), _labels(1), both)] == ["normal", "benign", "malignant"]
