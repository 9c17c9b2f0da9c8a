"""``busi-segment`` end to end: every real DICOM file, synthetic NIfTI / NRRD stacks, and a bad-input corpus."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import nibabel as nib
import nrrd
import numpy as np
import pydicom
import pytest
import slicerio
from PIL import Image

from BUSISegmentationLib.cli import main
from scripts.reader import read_image

REPO = Path(__file__).resolve().parents[1]
DICOM_DIR = REPO.parent / "shared" / "data" / "dicom"


def run_cli(*args: str) -> int:
    try:
        return main([*map(str, args), "--progress", "none", "--device", "cpu"])
    except SystemExit as stop:
        return 1 if stop.code not in (0, None) else 0


@pytest.fixture(scope="module")
def dicom_results(tmp_path_factory) -> Path:
    if not DICOM_DIR.is_dir():
        pytest.skip("../shared/data/dicom is not present")
    out = tmp_path_factory.mktemp("dicom_out")
    assert run_cli(DICOM_DIR, "-o", out, "--format", "dicom-seg,nifti,seg.nrrd") == 0
    return out


@pytest.mark.parametrize("name", sorted(p.name for p in DICOM_DIR.glob("*.dcm")) if DICOM_DIR.is_dir() else [])
def test_every_shared_dicom_file(dicom_results, name):
    source = DICOM_DIR / name
    image = read_image(source)
    stem = dicom_results / source.stem
    frames, rows, cols = image.frames.shape
    # NIfTI: same size and frame count, spacing carried
    nifti = nib.load(f"{stem}_seg.nii.gz")
    data = np.asarray(nifti.dataobj)
    assert data.shape[:2] == (cols, rows) and (data.shape[2] if data.ndim == 3 else 1) == frames
    assert set(np.unique(data)) <= {0, 1, 2}
    if image.spacing:
        zooms = nifti.header.get_zooms()
        assert zooms[0] == pytest.approx(image.spacing[1], rel=1e-4)
        assert zooms[1] == pytest.approx(image.spacing[0], rel=1e-4)
    # seg.nrrd: named segments with the right label values
    segmentation = slicerio.read_segmentation(f"{stem}_seg.seg.nrrd")
    names = {s["name"]: s["labelValue"] for s in segmentation["segments"]}
    assert names == {"Benign lesion": 1, "Malignant lesion": 2}
    # DICOM SEG (one per frame for cine loops without patient geometry) references the source instance
    seg_files = sorted(dicom_results.glob(f"{source.stem}_seg*.dcm"))
    assert seg_files
    source_uid = pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID
    for seg_file in seg_files:
        seg = hd.seg.segread(seg_file)
        referenced = {r.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence}
        assert source_uid in referenced
        assert [d.SegmentLabel for d in seg.SegmentSequence] == ["Benign lesion", "Malignant lesion"]
    assert len(seg_files) in (1, frames)
    table = json.loads(Path(f"{stem}_lesions.json").read_text())
    assert all(row["frame"] < frames for row in table)


def test_nifti_and_nrrd_stacks_keep_geometry(tmp_path):
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 255, (3, 40, 56)).astype(np.float32)  # frames, rows, columns
    affine = np.diag([-0.3, -0.3, 2.0, 1.0])
    affine[:3, 3] = [10, 20, 30]
    inputs = tmp_path / "in"
    inputs.mkdir()
    nib.save(nib.Nifti1Image(stack.transpose(2, 1, 0), affine), inputs / "stack.nii.gz")
    nrrd.write(str(inputs / "stack2.nrrd"), stack.transpose(2, 1, 0),
               {"space": "left-posterior-superior", "space directions": np.diag([0.25, 0.25, 1.5]),
                "space origin": np.array([1.0, 2.0, 3.0])})
    out = tmp_path / "out"
    assert run_cli(inputs, "-o", out, "--format", "nifti,seg.nrrd") == 0
    result = nib.load(out / "stack_seg.nii.gz")
    assert result.shape[:3] == (56, 40, 3)
    np.testing.assert_allclose(result.affine, affine, atol=1e-5)
    segmentation = slicerio.read_segmentation(str(out / "stack2_seg.seg.nrrd"))
    assert segmentation["voxels"].shape[:3] == (56, 40, 3)
    np.testing.assert_allclose(np.diag(segmentation["ijkToLPS"])[:3], [0.25, 0.25, 1.5], atol=1e-6)


def test_bad_inputs_are_reported_and_the_rest_is_done(tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 80), dtype=np.uint8)).save(inputs / "good.png")
    (inputs / "empty.png").write_bytes(b"")
    (inputs / "text.png").write_text("not an image")
    good = (inputs / "good.png").read_bytes()
    (inputs / "truncated.png").write_bytes(good[: len(good) // 2])
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.UltrasoundImageStorage
    ds.SOPClassUID, ds.SOPInstanceUID = pydicom.uid.UltrasoundImageStorage, pydicom.uid.generate_uid()
    ds.save_as(inputs / "no_pixels.dcm", enforce_file_format=True)
    nib.save(nib.Nifti1Image(np.full((8, 8), np.nan, dtype=np.float32), np.eye(4)), inputs / "nan.nii.gz")
    Image.new("1", (10000, 10000)).save(inputs / "huge.png")
    before = {p: p.stat().st_mtime_ns for p in inputs.iterdir()}
    out = tmp_path / "out"
    assert run_cli(inputs, "-o", out) == 1
    assert (out / "good_seg.png").is_file()
    written = {p.name for p in out.iterdir()}
    for bad in ("empty", "text", "truncated", "no_pixels", "nan", "huge"):
        assert not any(name.startswith(bad) for name in written), bad
    message = capsys.readouterr()
    text = message.out + message.err
    for bad in ("empty.png", "text.png", "truncated.png", "no_pixels.dcm", "nan.nii.gz", "huge.png"):
        assert sum(bad in line and "ERROR" in line for line in text.splitlines()) >= 1, bad
    assert {p: p.stat().st_mtime_ns for p in inputs.iterdir()} == before


def test_output_folder_inside_input_or_unwritable_is_refused(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(np.zeros((40, 40), dtype=np.uint8)).save(inputs / "a.png")
    assert run_cli(inputs, "-o", inputs / "out") == 1
    assert not (inputs / "out").exists()
    # an output folder that cannot be created (a file is in the way): each input fails, nothing is left behind
    (tmp_path / "a_file").write_text("")
    assert run_cli(inputs, "-o", tmp_path / "a_file" / "out") == 1


def test_help_explains_every_option():
    done = subprocess.run([sys.executable, "-m", "BUSISegmentationLib.cli", "--help"], capture_output=True, text=True,
                          cwd=REPO / "BUSISegmentation")
    assert done.returncode == 0
    for option in ("--output", "--format", "--device", "--tta", "--progress", "--bundle", "examples:"):
        assert option in done.stdout
