"""Tests of scripts.writers: outputs aligned with the input geometry, lesion tables, DICOM SEG and safe writing."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
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
from scripts.labels import load_vocabulary
from scripts.postprocess import Lesion, LesionConfidence, measure_lesions
from scripts.reader import ImageReadError, read_image
from scripts.writers import SegmentationResult, default_formats, write_outputs

DICOM_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom"
needs_dicom = pytest.mark.skipif(not DICOM_DIR.is_dir(), reason=f"{DICOM_DIR} not available")
# dciodvfy (dicom3tools, Debian package "dicom3tools") checks a DICOM file against its IOD; .ci/run installs it.
DCIODVFY = shutil.which("dciodvfy")
needs_dciodvfy = pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy not installed (apt-get install dicom3tools)")
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
VOCABULARY = load_vocabulary()


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
            class_name = VOCABULARY.class_names[label]
            lesions[frame].append(Lesion(lesion_id, label, class_name, 0.8, int(mask.sum()), bbox))
    return SegmentationResult(image=image, labels=labels, lesions=lesions)


def _measured(result: SegmentationResult) -> SegmentationResult:
    """``result`` with its lesions measured as the inference measures them, descriptors included."""
    lesions = []
    for labels, grey in zip(result.labels, result.image.frames):
        numbers, count = ndimage.label(labels > 0)
        found = [(int(labels[numbers == k].max()), LesionConfidence(0.8, 0.9, 0.2, True)) for k in range(1, count + 1)]
        lesions.append(measure_lesions(numbers, found, grey, result.image.spacing)[1])
    return SegmentationResult(image=result.image, labels=result.labels, lesions=lesions)


def _written(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.rglob("*") if path.is_file())


def test_picture_outputs(tmp_path):
    Image.new("L", (60, 40), 100).save(tmp_path / "scan.png")
    image = read_image(tmp_path / "scan.png")
    assert default_formats(image) == ["png"]
    result = _result(image)
    paths = write_outputs(result, tmp_path / "out" / "sub" / "scan", ["png", "nifti", "seg.nrrd"])
    names = ["scan_seg.png", "scan_seg.nii.gz", "scan_seg.seg.nrrd", "scan_lesions.csv", "scan_lesions.json"]
    assert [path.name for path in paths] == names + ["scan_overlay.jpg"]
    assert _written(tmp_path / "out") == sorted(names + ["scan_overlay.jpg"])

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
    for segment, label in zip(segmentation["segments"], VOCABULARY.lesions):
        terminology = segment["terminology"]
        assert terminology["type"] == [label.type.scheme, label.type.value, label.type.meaning]
        assert terminology["category"] == ["SCT", "49755003", "Morphologically Altered Structure"]
        assert terminology["anatomicRegion"] == ["SCT", "76752008", "Breast"]
        np.testing.assert_allclose(segment["color"], np.asarray(label.color) / 255, atol=1e-3)
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


def _assert_segments_from_vocabulary(seg: pydicom.Dataset) -> None:
    """Every segment has the vocabulary's name, codes and recommended display colour."""
    assert len(seg.SegmentSequence) == len(VOCABULARY.lesions)
    for description, label in zip(seg.SegmentSequence, VOCABULARY.lesions):
        assert description.SegmentNumber == label.value
        assert description.SegmentLabel == label.name
        (category,) = description.SegmentedPropertyCategoryCodeSequence
        (kind,) = description.SegmentedPropertyTypeCodeSequence
        assert (category.CodingSchemeDesignator, category.CodeValue, category.CodeMeaning) == (
            "SCT",
            "49755003",
            "Morphologically Altered Structure",
        )
        assert (kind.CodingSchemeDesignator, kind.CodeValue, kind.CodeMeaning) == (
            label.type.scheme,
            label.type.value,
            label.type.meaning,
        )
        assert description.AnatomicRegionSequence[0].CodeValue == VOCABULARY.anatomic_region.value
        assert description.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == VOCABULARY.algorithm_name
        shown = hd.color.CIELabColor.from_dicom_value(description.RecommendedDisplayCIELabValue).to_rgb()
        np.testing.assert_allclose(shown, label.color, atol=2)


@needs_dicom
@pytest.mark.parametrize("name", ["US1_UNCR.dcm", "ExplVR_BigEnd.dcm"])
def test_dicom_seg_single_frame(tmp_path, name):
    image = read_image(DICOM_DIR / name)
    assert default_formats(image) == ["dicom-seg", "dicom-sr", "nifti"]
    result = _result(image)
    paths = write_outputs(result, tmp_path / Path(name).stem, default_formats(image))
    seg = hd.seg.segread(paths[0])
    assert paths[0].name == f"{Path(name).stem}_seg.dcm"
    assert seg.SegmentationType == "BINARY" and seg.NumberOfFrames == len(VOCABULARY.lesions)
    assert image.source.SOPInstanceUID in [uid for _, _, uid in seg.get_source_image_uids()]
    assert seg.StudyInstanceUID == image.source.StudyInstanceUID
    assert "PatientOrientation" in seg  # Type 2C: the source has no patient geometry
    _assert_segments_from_vocabulary(seg)
    np.testing.assert_array_equal(seg.pixel_array, np.stack([result.labels[0] == 1, result.labels[0] == 2]))


@needs_dicom
def test_dicom_seg_cine_is_one_multiframe_instance(tmp_path):
    image = read_image(DICOM_DIR / "examples_ybr_color.dcm")
    assert image.num_frames == 30
    result = _result(image, frames_with_lesions=(0, 17))
    paths = write_outputs(result, tmp_path / "cine", ["dicom-seg"])
    assert [path.name for path in paths if path.suffix == ".dcm"] == ["cine_seg.dcm"]
    assert sorted(path.name for path in tmp_path.glob("*.dcm")) == ["cine_seg.dcm"]

    seg = hd.seg.segread(paths[0])
    segments = len(VOCABULARY.lesions)
    assert seg.NumberOfFrames == 30 * segments
    assert seg.SOPClassUID == pydicom.uid.SegmentationStorage
    _assert_segments_from_vocabulary(seg)
    # Every SEG frame names its source frame (a US Multi-frame image) and the segment it holds.
    source_frames = []
    for item in seg.PerFrameFunctionalGroupsSequence:
        (reference,) = item.DerivationImageSequence[0].SourceImageSequence
        assert reference.ReferencedSOPInstanceUID == image.source.SOPInstanceUID
        assert reference.ReferencedSOPClassUID == pydicom.uid.UltrasoundMultiFrameImageStorage
        segment = item.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        source_frames.append((segment, reference.ReferencedFrameNumber))
    assert sorted(source_frames) == [(s, f) for s in range(1, segments + 1) for f in range(1, 31)]
    # highdicom reads the masks back by source frame.
    for frame in (0, 5, 17, 29):
        masks = seg.get_pixels_by_source_frame(
            image.source.SOPInstanceUID, source_frame_numbers=[frame + 1], assert_missing_frames_are_empty=False
        )
        expected = np.stack([result.labels[frame] == label.value for label in VOCABULARY.lesions], axis=-1)
        np.testing.assert_array_equal(masks[0], expected)
    # The source dataset is left as it was (the SEG is built from a copy).
    assert image.source.SOPClassUID == pydicom.uid.UltrasoundMultiFrameImageStorage
    assert image.source.NumberOfFrames == 30


@needs_dicom
def test_dicom_seg_of_single_frame_class_with_two_frames(tmp_path):
    """OBXXXX1A_2frame.dcm is an Ultrasound Image (a single-frame SOP class) holding two frames."""
    image = read_image(DICOM_DIR / "OBXXXX1A_2frame.dcm")
    assert image.source.SOPClassUID == pydicom.uid.UltrasoundImageStorage and image.num_frames == 2
    result = _result(image, frames_with_lesions=(1,))
    paths = write_outputs(result, tmp_path / "ob", ["dicom-seg"])
    seg = pydicom.dcmread(paths[0])
    assert seg.NumberOfFrames == 2 * len(VOCABULARY.lesions)
    positions = []
    for item in seg.PerFrameFunctionalGroupsSequence:
        (reference,) = item.DerivationImageSequence[0].SourceImageSequence
        # DICOM forbids Referenced Frame Number for a single-frame SOP class; the temporal position tells frames apart.
        assert "ReferencedFrameNumber" not in reference
        assert reference.ReferencedSOPClassUID == pydicom.uid.UltrasoundImageStorage
        positions.append(item.FrameContentSequence[0].TemporalPositionIndex)
    masks = seg.pixel_array.reshape(len(VOCABULARY.lesions), 2, *image.frame_shape)
    for segment, label in enumerate(VOCABULARY.lesions):
        for frame in range(2):
            assert positions[segment * 2 + frame] == frame + 1
            np.testing.assert_array_equal(masks[segment, frame], result.labels[frame] == label.value)


def _dciodvfy_errors(path: Path) -> list[str]:
    """The error lines dciodvfy reports for ``path`` (it writes its findings to stderr)."""
    checked = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (checked.stdout + checked.stderr).splitlines() if line.startswith("Error")]


@needs_dicom
@needs_dciodvfy
@pytest.mark.parametrize("name", sorted(path.name for path in DICOM_DIR.glob("*.dcm")) if DICOM_DIR.is_dir() else [])
def test_dicom_seg_passes_dciodvfy(tmp_path, name):
    try:
        image = read_image(DICOM_DIR / name)
    except ImageReadError as error:
        pytest.skip(f"not an image the reader reads: {error}")
    result = _result(image, frames_with_lesions=sorted({0, image.num_frames - 1}))
    paths = write_outputs(result, tmp_path / Path(name).stem, ["dicom-seg"])
    (seg_path,) = [path for path in paths if path.suffix == ".dcm"]
    assert _dciodvfy_errors(seg_path) == []
    seg = pydicom.dcmread(seg_path)
    assert seg.NumberOfFrames == image.num_frames * len(VOCABULARY.lesions)
    _assert_segments_from_vocabulary(seg)


@needs_dicom
@needs_dciodvfy
@pytest.mark.parametrize("name", ["US1_UNCR.dcm", "OBXXXX1A_2frame.dcm", "examples_ybr_color.dcm"])
def test_dicom_sr_measurement_report(tmp_path, name):
    """Without pixel size, a single-frame class holding two frames, and a cine loop (US Multi-frame)."""
    image = read_image(DICOM_DIR / name)
    result = _measured(_result(image, frames_with_lesions=sorted({0, image.num_frames - 1})))
    paths = write_outputs(result, tmp_path / "us", default_formats(image), overlay=False)
    seg_path, sr_path = paths[:2]
    assert (seg_path.name, sr_path.name) == ("us_seg.dcm", "us_sr.dcm")
    assert _dciodvfy_errors(sr_path) == []
    seg = pydicom.dcmread(seg_path)
    segment_frames = seg.pixel_array.reshape(-1, *image.frame_shape)
    sr = hd.sr.srread(sr_path)
    assert sr.StudyInstanceUID == image.source.StudyInstanceUID
    groups = sr.content.get_planar_roi_measurement_groups()
    lesions = [(frame, lesion) for frame, frame_lesions in enumerate(result.lesions) for lesion in frame_lesions]
    assert len(groups) == len(lesions) == 2 * len({0, image.num_frames - 1})
    for group, (frame, lesion) in zip(groups, lesions):
        assert group.tracking_identifier == f"lesion {lesion.lesion_id}, frame {frame + 1}"
        measured = {m.name.meaning: (m.value, m.unit.value) for m in group.get_measurements()}
        d = lesion.descriptors
        if image.spacing is None:
            assert measured == {"Long axis": (pytest.approx(d.longest_diameter_px), "{pixel}"),
                                "Short axis": (pytest.approx(d.perpendicular_diameter_px), "{pixel}"),
                                "Width": (d.width_px, "{pixel}"), "Depth": (d.depth_px, "{pixel}")}
        else:
            assert measured["Long axis"] == (pytest.approx(d.longest_diameter_mm), "mm")
            assert measured["Short axis"] == (pytest.approx(d.perpendicular_diameter_mm), "mm")
            assert measured["Area"] == (pytest.approx(lesion.area_px * image.spacing[0] * image.spacing[1]), "mm2")
        # the group points at the SEG frame of the lesion's class for the lesion's source frame
        (reference,) = group.referenced_segmentation_frame[0].ReferencedSOPSequence
        assert reference.ReferencedSOPInstanceUID == seg.SOPInstanceUID
        seg_frame = int(reference.ReferencedFrameNumber)
        functional = seg.PerFrameFunctionalGroupsSequence[seg_frame - 1]
        assert functional.SegmentIdentificationSequence[0].ReferencedSegmentNumber == lesion.label
        np.testing.assert_array_equal(segment_frames[seg_frame - 1], result.labels[frame] == lesion.label)


@needs_dicom
@needs_dciodvfy
def test_dicom_sr_without_lesions_says_so(tmp_path):
    image = read_image(DICOM_DIR / "US1_UNCR.dcm")
    result = SegmentationResult(image=image, labels=np.zeros(image.frames.shape, np.uint8), lesions=[[]])
    paths = write_outputs(result, tmp_path / "us", ["dicom-seg", "dicom-sr"], overlay=False)
    assert _dciodvfy_errors(paths[1]) == []
    sr = hd.sr.srread(paths[1])
    assert sr.content.get_planar_roi_measurement_groups() == []
    (group,) = sr.content.get_image_measurement_groups()
    assert group.tracking_identifier == "no lesion found"


def test_dicom_sr_needs_the_seg(tmp_path):
    Image.new("L", (20, 20)).save(tmp_path / "scan.png")
    image = read_image(tmp_path / "scan.png")
    assert writers.applicable_formats(image, ["png", "dicom-sr"]) == (
        ["png"], [("dicom-sr", "needs a DICOM input, this is a picture")])
    if DICOM_DIR.is_dir():
        dicom = read_image(DICOM_DIR / "US1_UNCR.dcm")
        assert writers.applicable_formats(dicom, ["dicom-sr", "nifti"]) == (
            ["nifti"], [("dicom-sr", "needs dicom-seg, which it references")])
        with pytest.raises(ValueError, match="US1_UNCR.dcm: a DICOM SR is written with the DICOM SEG"):
            write_outputs(_result(dicom), tmp_path / "us", ["dicom-sr"])


def test_overlay_outlines_lesions_and_draws_their_diameters(tmp_path):
    grey = np.random.default_rng(0).integers(40, 200, (200, 240)).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "scan.png")
    result = _measured(_result(read_image(tmp_path / "scan.png")))
    labels, lesions = result.labels[0], result.lesions[0]
    picture = writers.overlay_picture(result.image.frames[0], labels, lesions)
    for lesion in lesions:
        mask = labels == lesion.label
        inside = ndimage.binary_erosion(mask, iterations=3)
        # an outline in the class colour, and the inside left grey (no fill) but for the diameters and their labels
        outline = picture[mask & ~ndimage.binary_erosion(mask)]
        assert (outline == VOCABULARY.labels[lesion.label].color).all(axis=1).mean() > 0.9
        pixels = picture[inside]
        assert (pixels.min(axis=1) == pixels.max(axis=1)).mean() > 0.8
        for ends in (lesion.descriptors.longest_diameter_ends, lesion.descriptors.perpendicular_diameter_ends):
            row, col = np.rint(np.mean(ends, axis=0)).astype(int)
            around_middle = picture[row - 1 : row + 2, col - 1 : col + 2]  # the line's pixels are rounded either way
            assert (around_middle == writers.DIAMETER_COLOUR).all(axis=2).any()
    # without lesion measurements (as evaluation draws it): outlines only
    plain = writers.overlay_picture(result.image.frames[0], labels)
    assert not (plain == writers.DIAMETER_COLOUR).all(axis=2).any()


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
