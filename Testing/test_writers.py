"""Tests of scripts.writers: outputs aligned with the input geometry, lesion tables, DICOM SEG and safe writing."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import highdicom as hd
import nibabel as nib
import nrrd
import numpy as np
import pydicom
import pytest
import slicerio
from PIL import Image
from scipy import ndimage

from scripts import writers
from scripts.postprocess import CLASS_NAMES, Lesion
from scripts.reader import read_image
from scripts.writers import SEGMENTS, SegmentationResult, default_formats, write_outputs

DICOM_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom"
needs_dicom = pytest.mark.skipif(not DICOM_DIR.is_dir(), reason=f"{DICOM_DIR} not available")
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _result(image, frames_with_lesions=(0,)) -> SegmentationResult:
    """A label map with one benign and one malignant lesion on the given frames, and its lesion list."""
    labels = np.zeros(image.frames.shape, np.uint8)
    rows, columns = image.frame_shape
    lesions = [[] for _ in range(image.num_frames)]
    for frame in frames_with_lesions:
        labels[frame, rows // 4 : rows // 2, columns // 8 : columns // 3] = 1
        labels[frame, rows // 2 + 2 : rows * 3 // 4, columns // 2 : columns * 7 // 8] = 2
        for lesion_id, label in enumerate((1, 2), start=1):
            mask = labels[frame] == label
            (row_slice, col_slice), = ndimage.find_objects(mask.astype(np.uint8))
            bbox = (row_slice.start, col_slice.start, row_slice.stop - 1, col_slice.stop - 1)
            lesions[frame].append(Lesion(lesion_id, label, CLASS_NAMES[label], 0.8, int(mask.sum()), bbox))
    return SegmentationResult(image=image, labels=labels, lesions=lesions)


def _written(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.rglob("*") if path.is_file())


def test_picture_outputs(tmp_path):
    Image.new("L", (60, 40), 100).save(tmp_path / "scan.png")
    image = read_image(tmp_path / "scan.png")
    assert default_formats(image) == ["png"]
    result = _result(image)
    paths = write_outputs(result, tmp_path / "out" / "sub" / "scan", ["png", "nifti", "seg.nrrd"])
    names = ["scan_seg.png", "scan_seg.nii.gz", "scan_seg.seg.nrrd", "scan_lesions.csv", "scan_lesions.json"]
    assert [path.name for path in paths] == names + ["scan_overlay.png"]
    assert _written(tmp_path / "out") == sorted(names + ["scan_overlay.png"])

    np.testing.assert_array_equal(np.asarray(Image.open(paths[0])), result.labels[0])
    nifti = nib.load(paths[1])
    assert nifti.shape == (60, 40)  # (columns, rows)
    np.testing.assert_allclose(nifti.affine, RAS_TO_LPS)  # 1 mm pixels at the origin, LPS -> RAS
    np.testing.assert_array_equal(np.asarray(nifti.dataobj).T, result.labels[0])

    segmentation = slicerio.read_segmentation(str(paths[2]))
    assert [(s["name"], s["labelValue"]) for s in segmentation["segments"]] == [
        ("Benign lesion", 1),
        ("Malignant lesion", 2),
    ]
    assert segmentation["segments"][1]["terminology"]["type"] == ["SCT", "86049000", "Malignant neoplasm, primary"]
    np.testing.assert_array_equal(segmentation["voxels"][:, :, 0].T, result.labels[0])
    np.testing.assert_allclose(segmentation["ijkToLPS"], np.eye(4))

    rows = list(csv.DictReader(open(paths[3], encoding="utf-8")))
    assert [(row["class_name"], row["area_mm2"]) for row in rows] == [("benign", ""), ("malignant", "")]
    assert json.loads(paths[4].read_text())[0]["area_mm2"] is None
    overlay = np.asarray(Image.open(paths[5]))
    assert overlay.shape == (40, 60, 3)
    benign = overlay[result.labels[0] == 1].mean(axis=0)
    assert benign[1] > benign[0] and benign[1] > benign[2]  # green-ish over benign


def test_nifti_stack_keeps_geometry(tmp_path):
    rotation = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.4, 0.3, 2.5])
    affine[:3, 3] = [12.0, -7.0, 30.0]
    data = np.random.default_rng(0).integers(0, 200, (24, 18, 4)).astype(np.uint8)
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "stack.nii.gz")
    image = read_image(tmp_path / "stack.nii.gz")
    assert default_formats(image) == ["nifti"]
    result = _result(image, frames_with_lesions=(1, 3))
    paths = write_outputs(result, tmp_path / "out" / "stack", ["nifti", "seg.nrrd", "png"])

    nifti = nib.load(paths[0])
    assert nifti.shape == data.shape
    np.testing.assert_allclose(nifti.affine, affine, atol=1e-6)
    np.testing.assert_array_equal(np.transpose(np.asarray(nifti.dataobj), (2, 1, 0)), result.labels)
    again = read_image(paths[0])
    assert again.spacing == pytest.approx(image.spacing) and again.frame_spacing == pytest.approx(2.5)
    assert again.origin == pytest.approx(image.origin)

    segmentation = slicerio.read_segmentation(str(paths[1]))
    np.testing.assert_allclose(segmentation["ijkToLPS"], RAS_TO_LPS @ affine, atol=1e-6)
    np.testing.assert_array_equal(np.transpose(segmentation["voxels"], (2, 1, 0)), result.labels)
    assert [path.name for path in paths[2:6]] == [f"stack_seg_f{frame:04d}.png" for frame in range(4)]
    # The overlay shows the first frame with a lesion.
    overlay = np.asarray(Image.open(paths[-1])).astype(float)
    assert np.abs(overlay[..., 0] - overlay[..., 1])[result.labels[1] > 0].mean() > 10


def test_nrrd_input_default_seg_nrrd_geometry(tmp_path):
    directions = np.array([[0.0, 0.5, 0.0], [0.7, 0.0, 0.0], [0.0, 0.0, 3.0]])
    header = {"space": "left-posterior-superior", "space directions": directions, "space origin": [5.0, 6.0, 7.0]}
    nrrd.write(str(tmp_path / "cine.nrrd"), np.ones((16, 12, 2), np.uint8), header)
    image = read_image(tmp_path / "cine.nrrd")
    assert default_formats(image) == ["seg.nrrd"]
    paths = write_outputs(_result(image), tmp_path / "cine", default_formats(image))
    expected = np.eye(4)
    expected[:3, :3], expected[:3, 3] = directions.T, [5.0, 6.0, 7.0]
    np.testing.assert_allclose(slicerio.read_segmentation(str(paths[0]))["ijkToLPS"], expected, atol=1e-6)


@needs_dicom
@pytest.mark.parametrize("name", ["US1_UNCR.dcm", "ExplVR_BigEnd.dcm"])
def test_dicom_seg_single_frame(tmp_path, name):
    image = read_image(DICOM_DIR / name)
    assert default_formats(image) == ["dicom-seg", "nifti"]
    result = _result(image)
    paths = write_outputs(result, tmp_path / Path(name).stem, default_formats(image))
    seg = hd.seg.segread(paths[0])
    assert paths[0].name == f"{Path(name).stem}_seg.dcm"
    assert seg.SegmentationType == "BINARY" and seg.NumberOfFrames == len(SEGMENTS)
    assert image.source.SOPInstanceUID in [uid for _, _, uid in seg.get_source_image_uids()]
    assert seg.StudyInstanceUID == image.source.StudyInstanceUID
    for description, info in zip(seg.SegmentSequence, SEGMENTS):
        assert description.SegmentLabel == info.name
        assert description.SegmentedPropertyTypeCodeSequence[0].CodeValue == info.type_code[1]
        assert description.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
        assert description.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "BUSI residual U-Net"
    np.testing.assert_array_equal(seg.pixel_array, np.stack([result.labels[0] == 1, result.labels[0] == 2]))


@needs_dicom
def test_dicom_seg_multiframe_cine_one_instance_per_frame(tmp_path):
    image = read_image(DICOM_DIR / "examples_ybr_color.dcm")
    result = _result(image, frames_with_lesions=(0, 17))
    paths = write_outputs(result, tmp_path / "cine", ["dicom-seg"])
    seg_paths = [path for path in paths if path.suffix == ".dcm"]
    assert [path.name for path in seg_paths] == [f"cine_seg_f{frame:04d}.dcm" for frame in range(30)]
    series = set()
    for frame in (0, 5, 17, 29):
        seg = pydicom.dcmread(seg_paths[frame])
        hd.seg.Segmentation.from_dataset(seg)
        series.add(seg.SeriesInstanceUID)
        assert seg.InstanceNumber == frame + 1
        source = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
        assert source.ReferencedSOPInstanceUID == image.source.SOPInstanceUID
        assert source.ReferencedSOPClassUID == image.source.SOPClassUID
        assert source.ReferencedFrameNumber == frame + 1
        masks = seg.pixel_array.reshape(len(SEGMENTS), *image.frame_shape)
        np.testing.assert_array_equal(masks, np.stack([result.labels[frame] == 1, result.labels[frame] == 2]))
    assert len(series) == 1
    # The source dataset is left as it was (the SEG is built from a copy).
    assert image.source.SOPClassUID == pydicom.uid.UltrasoundMultiFrameImageStorage
    assert image.source.NumberOfFrames == 30


@needs_dicom
def test_lesion_tables_with_spacing(tmp_path):
    image = read_image(DICOM_DIR / "OBXXXX1A_2frame.dcm")
    row_mm, col_mm = image.spacing
    result = _result(image, frames_with_lesions=(1,))
    paths = write_outputs(result, tmp_path / "ob", [])
    rows = list(csv.DictReader(open(paths[0], encoding="utf-8")))
    assert list(rows[0]) == list(writers.LESION_COLUMNS)
    records = json.loads(paths[1].read_text())
    assert len(rows) == len(records) == 2
    for row, record, lesion in zip(rows, records, result.lesions[1]):
        assert row["file"] == record["file"] == str(image.path)
        assert int(row["frame"]) == record["frame"] == 1
        assert int(row["area_px"]) == record["area_px"] == lesion.area_px
        assert float(row["area_mm2"]) == pytest.approx(lesion.area_px * row_mm * col_mm)
        assert record["area_mm2"] == pytest.approx(lesion.area_px * row_mm * col_mm)
        bbox = tuple(int(row[key]) for key in ("bbox_row_min", "bbox_col_min", "bbox_row_max", "bbox_col_max"))
        assert bbox == lesion.bbox


@needs_dicom
def test_dicom_seg_error_names_the_file_and_leaves_nothing(tmp_path):
    image = read_image(DICOM_DIR / "US1_UNCR.dcm")
    del image.source.SOPInstanceUID  # nothing to reference
    with pytest.raises(ValueError, match="US1_UNCR.dcm: cannot build a DICOM SEG"):
        write_outputs(_result(image), tmp_path / "out" / "us", ["png", "dicom-seg"])
    assert _written(tmp_path / "out") == []


def test_dicom_seg_refused_for_non_dicom(tmp_path):
    Image.new("L", (20, 20)).save(tmp_path / "scan.png")
    with pytest.raises(ValueError, match="DICOM"):
        write_outputs(_result(read_image(tmp_path / "scan.png")), tmp_path / "out" / "scan", ["png", "dicom-seg"])
    assert not (tmp_path / "out").exists() or _written(tmp_path / "out") == []
    with pytest.raises(ValueError, match="unknown output formats"):
        write_outputs(_result(read_image(tmp_path / "scan.png")), tmp_path / "scan", ["jpeg"])


def test_failure_leaves_no_partial_outputs(tmp_path, monkeypatch):
    Image.new("L", (30, 20), 50).save(tmp_path / "scan.png")
    image = read_image(tmp_path / "scan.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "other.txt").write_text("kept")

    def broken_write(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(writers.slicerio, "write_segmentation", broken_write)
    with pytest.raises(OSError, match="disk full"):
        write_outputs(_result(image), out / "scan", ["png", "nifti", "seg.nrrd"])
    assert _written(out) == ["other.txt"]  # neither outputs nor temporary files


def test_refuses_to_overwrite_the_input(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((40, 30), np.float32), np.eye(4)), tmp_path / "case_seg.nii.gz")
    before = (tmp_path / "case_seg.nii.gz").read_bytes()
    image = read_image(tmp_path / "case_seg.nii.gz")
    with pytest.raises(ValueError, match="overwrite the input"):
        write_outputs(_result(image), tmp_path / "case", ["nifti"])
    assert (tmp_path / "case_seg.nii.gz").read_bytes() == before
    assert _written(tmp_path) == ["case_seg.nii.gz"]


def test_label_map_must_match_the_image(tmp_path):
    Image.new("L", (30, 20)).save(tmp_path / "scan.png")
    result = _result(read_image(tmp_path / "scan.png"))
    result.labels = result.labels[:, :10]
    with pytest.raises(ValueError, match="does not match"):
        write_outputs(result, tmp_path / "scan", ["png"])
