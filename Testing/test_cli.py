"""``busi-segment`` end to end: every real DICOM file, synthetic NIfTI / NRRD stacks, and a bad-input corpus."""

from __future__ import annotations

import json
import shutil
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

from scripts.cli import main
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
    # one DICOM SEG per input, all frames of a cine loop in it, references the source instance
    seg_files = sorted(dicom_results.glob(f"{source.stem}_seg*.dcm"))
    assert seg_files
    source_uid = pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID
    for seg_file in seg_files:
        seg = hd.seg.segread(seg_file)
        referenced = {r.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence}
        assert source_uid in referenced
        assert [d.SegmentLabel for d in seg.SegmentSequence] == ["Benign lesion", "Malignant lesion"]
    assert len(seg_files) == 1
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


def test_obvious_commands_work_from_the_folder_of_the_image(tmp_path, monkeypatch, capsys):
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (40, 48), dtype=np.uint8)).save(tmp_path / "scan.png")
    monkeypatch.chdir(tmp_path)
    # the first example of --help, typed where the image is
    assert run_cli("scan.png", "-o", "results") == 0
    assert (tmp_path / "results" / "scan_seg.png").is_file()
    # a folder holding its own results: they are not read as inputs; every format that applies is written
    assert run_cli(".", "-o", "results", "--format", "png,nifti,seg.nrrd,dicom-seg", "--no-overlays") == 0
    printed = capsys.readouterr()
    assert "scan.png: dicom-seg skipped (needs a DICOM input, this is a picture)" in printed.out + printed.err
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == [
        "scan_lesions.csv", "scan_lesions.json", "scan_seg.nii.gz", "scan_seg.png", "scan_seg.seg.nrrd"]
    # the input folder itself is refused; nothing is written into it
    assert run_cli(".", "-o", ".") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results", "scan.png"]


def test_weights_of_a_fine_tuning_replace_the_shipped_ones(tmp_path, capsys):
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (40, 48), dtype=np.uint8)).save(tmp_path / "scan.png")
    # the weights given replace those of models/; a missing file is named and nothing is written
    assert run_cli(tmp_path / "scan.png", "-o", tmp_path / "out", "--weights", REPO / "monai_bundle/models/model.pt") == 0
    assert (tmp_path / "out" / "scan_seg.png").is_file()
    assert run_cli(tmp_path / "scan.png", "-o", tmp_path / "bad", "--weights", tmp_path / "tuned.pt") == 1
    assert f"--weights: {tmp_path / 'tuned.pt'}: no such file" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_unwritable_output_folder_fails_each_input(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(np.zeros((40, 40), dtype=np.uint8)).save(inputs / "a.png")
    # an output folder that cannot be created (a file is in the way): each input fails, nothing is left behind
    (tmp_path / "a_file").write_text("")
    assert run_cli(inputs, "-o", tmp_path / "a_file" / "out") == 1
    assert sorted(p.name for p in inputs.iterdir()) == ["a.png"]


def test_help_explains_every_option():
    done = subprocess.run([sys.executable, "-m", "scripts.cli", "--help"], capture_output=True, text=True,
                          cwd=REPO / "monai_bundle")
    assert done.returncode == 0
    for option in (
        "--output", "--format", "--device", "--tta", "--no-overlays", "--progress", "--weights", "--bundle", "examples:"
    ):
        assert option in done.stdout


def test_wheel_carries_the_bundle_and_its_tool_works_from_any_folder(tmp_path):
    """``pip install`` of the built wheel (dependencies already present) gives a busi-segment that runs its own bundle."""
    wheels, target, source = tmp_path / "wheels", tmp_path / "installed", tmp_path / "source"
    # built from a copy: setuptools builds in the source tree and would leave build/ behind in the checkout
    skip = shutil.ignore_patterns("runs", "eval", "__pycache__")
    for part in ("pyproject.toml", "README.md", "LICENSE", "monai_bundle", "BUSISegmentation/BUSISegmentationLib"):
        copy = shutil.copytree if (REPO / part).is_dir() else shutil.copy
        (source / part).parent.mkdir(parents=True, exist_ok=True)
        copy(REPO / part, source / part, **({"ignore": skip} if (REPO / part).is_dir() else {}))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(wheels)], check=True)
    (wheel,) = wheels.glob("busi_segmentation-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    Image.fromarray(np.random.default_rng(4).integers(0, 255, (40, 48), dtype=np.uint8)).save(work / "scan.png")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(target), "HOME": str(tmp_path)}
    tool = [str(target / "bin" / "busi-segment")]
    done = subprocess.run([*tool, "scan.png", "-o", "results", "--progress", "none", "--device", "cpu"], cwd=work,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (work / "results" / "scan_seg.png").is_file()
    where = subprocess.run([sys.executable, "-c", "import busi_bundle.scripts.cli as c; print(c.BUNDLE_DIR)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True)
    assert Path(where.stdout.strip()) == target / "busi_bundle"
    assert (target / "busi_bundle" / "models" / "model.pt").is_file()
