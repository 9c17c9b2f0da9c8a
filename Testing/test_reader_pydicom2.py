"""The bundle's reader under pydicom 2.4, the version 3D Slicer 5.10 ships, gives the frames it gives under pydicom 3.

pydicom 2.4 is installed next to the test environment (``make`` puts it in ``.venv/pydicom2``; ``BUSI_PYDICOM2_SITE``
names another folder) and put first on ``PYTHONPATH`` of a second process, so that everything else (numpy, Pillow,
the JPEG decoders) is the same in both runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import convert_color_space
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, RLELossless, generate_uid

from scripts.reader import ImageReadError, read_image

REPO_ROOT = Path(__file__).resolve().parents[1]
DICOM_DIR = REPO_ROOT.parent / "shared" / "data" / "dicom"
PYDICOM2_SITE = Path(os.environ.get("BUSI_PYDICOM2_SITE", REPO_ROOT / ".venv" / "pydicom2"))

# Reads every file named on the command line; saves the frames and, per file, its spacing or its error line.
READ_ALL = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import pydicom
    from scripts import reader

    assert not reader.PYDICOM_3, pydicom.__file__
    output, names = sys.argv[1], sys.argv[2:]
    frames, results = {}, {}
    for index, name in enumerate(names):
        try:
            image = reader.read_image(name)
        except reader.ImageReadError as error:
            results[name] = {"error": str(error)}
        else:
            frames[str(index)] = image.frames
            results[name] = {"spacing": image.spacing}
    np.savez(output + ".npz", **frames)
    with open(output + ".json", "w") as stream:
        json.dump({"version": pydicom.__version__, "results": results}, stream)
    """
)


def _synthetic_variants(folder: Path) -> list[Path]:
    """Encodings the shared files lack: uncompressed YBR_FULL, RLE, MONOCHROME1 16 bit, and a missing decoder."""
    folder.mkdir()
    paths = []
    if (DICOM_DIR / "examples_rgb_color.dcm").is_file():
        ds = pydicom.dcmread(DICOM_DIR / "examples_rgb_color.dcm")
        ds.PixelData = convert_color_space(ds.pixel_array, "RGB", "YBR_FULL").tobytes()
        ds.PhotometricInterpretation = "YBR_FULL"
        ds.save_as(folder / "ybr_full.dcm")
        ds = pydicom.dcmread(DICOM_DIR / "examples_rgb_color.dcm")
        ds.compress(RLELossless)
        ds.save_as(folder / "rle.dcm")
        paths += [folder / "ybr_full.dcm", folder / "rle.dcm"]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = pydicom.uid.UltrasoundMultiFrameImageStorage
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.Modality, ds.Rows, ds.Columns, ds.NumberOfFrames = "US", 6, 5, 2
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelSpacing = 1, "MONOCHROME1", [0.2, 0.3]
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    ds.PixelData = (np.arange(60, dtype=np.uint16) * 1000).tobytes()
    ds.save_as(folder / "mono1.dcm", enforce_file_format=True)
    # Declared JPEG Baseline with bytes no decoder accepts: both versions must refuse it with the reader's error.
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8 not a JPEG", b"\xff\xd8 not a JPEG"])
    ds["PixelData"].VR = "OB"
    ds.save_as(folder / "broken_jpeg.dcm", enforce_file_format=True)
    return paths + [folder / "mono1.dcm", folder / "broken_jpeg.dcm"]


@pytest.mark.skipif(
    not (PYDICOM2_SITE / "pydicom").is_dir(),
    reason=f"pydicom 2.4 not installed in {PYDICOM2_SITE} (make installs it; or set BUSI_PYDICOM2_SITE)",
)
def test_reader_gives_the_same_frames_with_pydicom_2_4(tmp_path: Path) -> None:
    files = sorted(DICOM_DIR.glob("*.dcm")) + _synthetic_variants(tmp_path / "variants")
    script = tmp_path / "read_all.py"
    script.write_text(READ_ALL, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PYDICOM2_SITE), str(REPO_ROOT / "monai_bundle")])}
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "pydicom2"), *map(str, files)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "pydicom2.json").read_text(encoding="utf-8"))
    assert report["version"].startswith("2.4.")
    decoded = np.load(tmp_path / "pydicom2.npz")
    for index, path in enumerate(files):
        result = report["results"][str(path)]
        try:
            expected = read_image(path)
        except ImageReadError as error:
            # refused with the same kind of one-line error, whichever pydicom decoded it
            assert str(index) not in decoded, f"{path.name} was read by pydicom 2.4 only"
            assert result["error"].startswith(f"{path}: ") and str(error).startswith(f"{path}: ")
            continue
        assert "error" not in result, result
        frames = decoded[str(index)]
        assert frames.shape == expected.frames.shape, path.name
        assert result["spacing"] == (list(expected.spacing) if expected.spacing else None)
        syntax = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        if syntax == JPEGBaseline8Bit:
            # pydicom 2.4 converts YCbCr to RGB itself, pydicom 3 lets the JPEG decoder do it: rounding differs.
            np.testing.assert_allclose(frames, expected.frames, atol=2.0, err_msg=path.name)
        else:
            np.testing.assert_array_equal(frames, expected.frames, err_msg=path.name)
    assert "error" in report["results"][str(tmp_path / "variants" / "broken_jpeg.dcm")]


@pytest.mark.skipif(not (PYDICOM2_SITE / "pydicom").is_dir(), reason=f"pydicom 2.4 not installed in {PYDICOM2_SITE}")
def test_inference_for_3d_slicer_runs_with_pydicom_2_4(tmp_path: Path) -> None:
    """What the 3D Slicer module asks of the bundle (a NIfTI label map) needs neither pydicom 3 nor highdicom."""
    source = DICOM_DIR / "US1_J2KR.dcm"
    if not source.is_file():
        pytest.skip("../shared/data/dicom is not present")
    script = textwrap.dedent(
        f"""
        import sys
        import pydicom
        from scripts.cli import main
        assert pydicom.__version__.startswith("2.4"), pydicom.__version__
        code = main([{str(source)!r}, "-o", {str(tmp_path / "out")!r}, "--format", "nifti", "--no-overlays",
                     "--progress", "none", "--device", "cpu"])
        assert "highdicom" not in sys.modules
        sys.exit(code)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PYDICOM2_SITE), str(REPO_ROOT / "monai_bundle")])}
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "out" / "US1_J2KR_seg.nii.gz").is_file()
