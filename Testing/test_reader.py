"""Tests of scripts.reader: every supported format, the shared ultrasound DICOM files and the bad-input corpus."""

from __future__ import annotations

import logging
import shutil
import struct
import time
import warnings
import zlib
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_color_lut, convert_color_space
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from scripts.reader import ImageReadError, format_of, is_supported, read_image, rgb_to_grey

DICOM_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dicom"
needs_dicom = pytest.mark.skipif(not DICOM_DIR.is_dir(), reason=f"{DICOM_DIR} not available")

# file: (frames, rows, columns, pixel size in mm or None), from the folder's README
SHARED_DICOM = {
    "examples_ybr_color.dcm": (30, 240, 320, 0.5104970559477806),
    "examples_rgb_color.dcm": (1, 240, 320, None),
    "examples_palette.dcm": (1, 350, 800, 0.2622878766196998),
    "ExplVR_BigEnd.dcm": (1, 60, 80, None),
    "US1_UNCR.dcm": (1, 480, 640, None),
    "US1_UNCI.dcm": (1, 480, 640, None),
    "US1_J2KR.dcm": (1, 480, 640, None),
    "US1_J2KI.dcm": (1, 480, 640, None),
    "OBXXXX1A.dcm": (1, 600, 800, 0.2622878766196998),
    "OBXXXX1A_2frame.dcm": (2, 600, 800, 0.2622878766196998),
}


# ---------------------------------------------------------------------------------------------------------- DICOM
@needs_dicom
@pytest.mark.parametrize("name", sorted(SHARED_DICOM))
def test_shared_dicom_frames_shape_spacing(name):
    frames, rows, columns, pixel_mm = SHARED_DICOM[name]
    image = read_image(DICOM_DIR / name)
    assert image.kind == "dicom"
    assert image.frames.shape == (frames, rows, columns)
    assert image.frames.dtype == np.float32
    assert np.ptp(image.frames) > 0
    assert isinstance(image.source, pydicom.Dataset)
    if pixel_mm is None:
        assert image.spacing is None
    else:
        assert image.spacing == pytest.approx((pixel_mm, pixel_mm))


@needs_dicom
def test_every_shared_dicom_file_reads():
    names = sorted(path.name for path in DICOM_DIR.glob("*.dcm"))
    assert names
    for name in names:
        assert read_image(DICOM_DIR / name).num_frames >= 1


@needs_dicom
def test_ybr_jpeg_is_converted_once():
    """pydicom 3 returns RGB for YBR_FULL_422 JPEG; a second conversion would make the grey image green-tinted."""
    path = DICOM_DIR / "examples_ybr_color.dcm"
    grey = read_image(path).frames
    rgb = pydicom.dcmread(path).pixel_array.astype(np.float32)
    means = rgb.reshape(-1, 3).mean(axis=0)
    assert np.ptp(means) < 0.1 * means.mean()  # a grey ultrasound picture: R, G and B alike
    assert np.corrcoef(grey.ravel(), rgb.mean(axis=-1).ravel())[0, 1] > 0.99
    np.testing.assert_allclose(grey, rgb_to_grey(rgb), atol=1e-3)


@needs_dicom
def test_jpeg2000_equals_uncompressed_and_multiframe_equals_single():
    lossless = read_image(DICOM_DIR / "US1_J2KR.dcm").frames
    np.testing.assert_array_equal(lossless, read_image(DICOM_DIR / "US1_UNCR.dcm").frames)
    lossy = read_image(DICOM_DIR / "US1_J2KI.dcm").frames
    assert np.abs(lossy - read_image(DICOM_DIR / "US1_UNCI.dcm").frames).mean() < 2.0
    two = read_image(DICOM_DIR / "OBXXXX1A_2frame.dcm").frames
    np.testing.assert_array_equal(two[0], read_image(DICOM_DIR / "OBXXXX1A.dcm").frames[0])


@needs_dicom
def test_palette_is_expanded_with_the_lut():
    ds = pydicom.dcmread(DICOM_DIR / "examples_palette.dcm")
    expected = rgb_to_grey(apply_color_lut(ds.pixel_array, ds))
    np.testing.assert_allclose(read_image(DICOM_DIR / "examples_palette.dcm").frames[0], expected)


@needs_dicom
def test_uncompressed_ybr_full_and_rle(tmp_path):
    source = DICOM_DIR / "examples_rgb_color.dcm"
    reference = read_image(source).frames
    ds = pydicom.dcmread(source)
    ds.PixelData = convert_color_space(ds.pixel_array, "RGB", "YBR_FULL").tobytes()
    ds.PhotometricInterpretation = "YBR_FULL"
    ds.save_as(tmp_path / "ybr_full.dcm")
    # Y of YCbCr is BT.601 luma: the grey image survives the round trip up to rounding.
    assert np.abs(read_image(tmp_path / "ybr_full.dcm").frames - reference).max() < 2.0
    ds = pydicom.dcmread(source)
    ds.compress(pydicom.uid.RLELossless)
    ds.save_as(tmp_path / "rle.dcm")
    np.testing.assert_array_equal(read_image(tmp_path / "rle.dcm").frames, reference)


@needs_dicom
@pytest.mark.parametrize("name", ["IM000001", "1.2.840.113619.2.1"])
def test_dicom_detected_without_suffix(tmp_path, name):
    shutil.copy(DICOM_DIR / "US1_UNCR.dcm", tmp_path / name)
    assert is_supported(tmp_path / name)
    assert read_image(tmp_path / name).frames.shape == (1, 480, 640)


def _dicom(path: Path, array: np.ndarray, photometric: str, **attributes) -> Path:
    """Write a small synthetic US DICOM file."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    multiframe = array.ndim == 3
    ds.SOPClassUID = pydicom.uid.UltrasoundMultiFrameImageStorage if multiframe else pydicom.uid.UltrasoundImageStorage
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.Modality = "US"
    ds.Rows, ds.Columns = array.shape[-2:]
    if array.ndim == 3:
        ds.NumberOfFrames = array.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated = ds.BitsStored = array.dtype.itemsize * 8
    ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, 0
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = array.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_monochrome_and_pixel_spacing(tmp_path):
    array = np.arange(3 * 8 * 10, dtype=np.uint16).reshape(3, 8, 10) * 50
    image = read_image(_dicom(tmp_path / "mono2.dcm", array, "MONOCHROME2", PixelSpacing=[0.2, 0.3]))
    np.testing.assert_array_equal(image.frames, array)
    assert image.spacing == pytest.approx((0.2, 0.3))
    inverted = read_image(_dicom(tmp_path / "mono1.dcm", array, "MONOCHROME1")).frames
    np.testing.assert_array_equal(inverted, 65535 - array.astype(np.float32))


@pytest.mark.parametrize("bits", [8, 16])
def test_palette_colour(tmp_path, bits):
    index = np.arange(8 * 10, dtype=np.uint8).reshape(8, 10)
    ramp = np.linspace(0, 2**bits - 1, 256).astype(np.uint16 if bits == 16 else np.uint8)
    luts = {
        f"{colour}PaletteColorLookupTableData": (ramp if colour != "Blue" else ramp[::-1]).tobytes()
        for colour in ("Red", "Green", "Blue")
    }
    descriptors = {f"{colour}PaletteColorLookupTableDescriptor": [256, 0, bits] for colour in ("Red", "Green", "Blue")}
    path = _dicom(tmp_path / "palette.dcm", index, "PALETTE COLOR", **descriptors, **luts)
    grey = read_image(path).frames[0]
    red, blue = ramp[index].astype(np.float32), ramp[255 - index].astype(np.float32)
    np.testing.assert_allclose(grey, 0.299 * red + 0.587 * red + 0.114 * blue, rtol=1e-5)


# --------------------------------------------------------------------------------------------------------- volumes
def test_nifti_stack_geometry(tmp_path):
    data = np.random.default_rng(0).integers(0, 255, (20, 16, 3)).astype(np.int16)  # (i, j, k)
    affine = np.array([[0.5, 0, 0, 10.0], [0, 0.25, 0, -20.0], [0, 0, 2.0, 5.0], [0, 0, 0, 1]])  # RAS
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "stack.nii.gz")
    image = read_image(tmp_path / "stack.nii.gz")
    assert image.kind == "volume" and image.frames.shape == (3, 16, 20)
    np.testing.assert_array_equal(image.frames[2], data[:, :, 2].T)  # frame k: rows j, columns i
    assert image.spacing == pytest.approx((0.25, 0.5)) and image.frame_spacing == pytest.approx(2.0)
    assert image.origin == pytest.approx((-10.0, 20.0, 5.0))  # RAS -> LPS
    np.testing.assert_allclose(image.direction, np.diag([-1.0, -1.0, 1.0]))


def test_nifti_2d_and_rgb24(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((12, 9), np.float32), np.eye(4)), tmp_path / "flat.nii")
    assert read_image(tmp_path / "flat.nii").frames.shape == (1, 9, 12)
    rgb = np.zeros((6, 5, 1), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["R"], rgb["G"], rgb["B"] = 200, 100, 50
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), tmp_path / "rgb.nii.gz")
    image = read_image(tmp_path / "rgb.nii.gz")
    assert image.frames.shape == (1, 5, 6)
    np.testing.assert_allclose(image.frames, 0.299 * 200 + 0.587 * 100 + 0.114 * 50, rtol=1e-5)


def test_nrrd_stack_geometry_ras(tmp_path):
    data = np.random.default_rng(1).random((10, 7, 4)).astype(np.float32)  # (i, j, k)
    header = {
        "space": "right-anterior-superior",
        "space directions": np.diag([0.3, 0.4, 1.5]),
        "space origin": np.array([1.0, 2.0, 3.0]),
    }
    nrrd.write(str(tmp_path / "stack.nrrd"), data, header)
    image = read_image(tmp_path / "stack.nrrd")
    assert image.frames.shape == (4, 7, 10)
    np.testing.assert_allclose(image.frames[1], data[:, :, 1].T)
    assert image.spacing == pytest.approx((0.4, 0.3)) and image.frame_spacing == pytest.approx(1.5)
    assert image.origin == pytest.approx((-1.0, -2.0, 3.0))
    np.testing.assert_allclose(image.direction, np.diag([-1.0, -1.0, 1.0]))


def test_nrrd_rgb_color(tmp_path):
    data = np.zeros((3, 8, 6), np.uint8)  # (component, i, j)
    data[0], data[1], data[2] = 10, 20, 30
    header = {
        "kinds": ["RGB-color", "domain", "domain"],
        "space": "left-posterior-superior",
        "space directions": [[np.nan] * 3, [0.2, 0, 0], [0, 0.2, 0]],
        "space origin": [0.0, 0.0, 0.0],
    }
    nrrd.write(str(tmp_path / "rgb.nrrd"), data, header)
    image = read_image(tmp_path / "rgb.nrrd")
    assert image.frames.shape == (1, 6, 8)
    np.testing.assert_allclose(image.frames, 0.299 * 10 + 0.587 * 20 + 0.114 * 30, rtol=1e-5)
    assert image.spacing == pytest.approx((0.2, 0.2))


def test_metaimage_stack_and_rgb(tmp_path):
    itk = pytest.importorskip("itk")
    data = np.random.default_rng(2).integers(0, 255, (3, 6, 9)).astype(np.uint8)  # (k, j, i)
    volume = itk.image_from_array(data)
    volume.SetSpacing([0.5, 0.6, 2.0])
    volume.SetOrigin([1.0, 2.0, 3.0])
    itk.imwrite(volume, str(tmp_path / "stack.mha"))
    image = read_image(tmp_path / "stack.mha")
    np.testing.assert_array_equal(image.frames, data)
    assert image.spacing == pytest.approx((0.6, 0.5)) and image.frame_spacing == pytest.approx(2.0)
    assert image.origin == pytest.approx((1.0, 2.0, 3.0))
    rgb = np.zeros((6, 9, 3), np.uint8)
    rgb[..., 0] = 90
    itk.imwrite(itk.image_from_array(rgb, is_vector=True), str(tmp_path / "rgb.mha"))
    np.testing.assert_allclose(read_image(tmp_path / "rgb.mha").frames, np.full((1, 6, 9), 0.299 * 90), rtol=1e-5)


# -------------------------------------------------------------------------------------------------------- pictures
@pytest.mark.parametrize(
    "mode, value, expected",
    [
        ("L", 77, 77.0),
        ("RGB", (200, 100, 50), 0.299 * 200 + 0.587 * 100 + 0.114 * 50),
        ("RGBA", (200, 100, 50, 10), 0.299 * 200 + 0.587 * 100 + 0.114 * 50),
        ("I;16", 40000, 40000.0),
        ("1", 1, 255.0),
    ],
)
def test_png_modes(tmp_path, mode, value, expected):
    path = tmp_path / f"picture_{mode.replace(';', '')}.png"
    Image.new(mode, (7, 5), value).save(path)
    image = read_image(path)
    assert image.kind == "picture" and image.frames.shape == (1, 5, 7)
    np.testing.assert_allclose(image.frames, expected, rtol=1e-5)


def test_palette_jpeg_bmp_tiff(tmp_path):
    palette = Image.new("P", (6, 4), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.save(tmp_path / "palette.png")
    np.testing.assert_allclose(read_image(tmp_path / "palette.png").frames, 0.299 * 255, rtol=1e-5)
    for suffix in (".jpg", ".bmp", ".tif"):
        Image.new("RGB", (16, 8), (90, 90, 90)).save(tmp_path / f"grey{suffix}")
        assert np.abs(read_image(tmp_path / f"grey{suffix}").frames - 90).max() <= 2
    pages = [Image.new("L", (5, 5), value) for value in (10, 20)]
    pages[0].save(tmp_path / "pages.tiff", save_all=True, append_images=pages[1:])
    assert read_image(tmp_path / "pages.tiff").frames.shape == (1, 5, 5)


def test_format_of():
    assert format_of("a/b.NII.GZ") == "nifti" and format_of("x.nhdr") == "nrrd" and format_of("x.mhd") == "itk"
    assert format_of("x.dicom") == "dicom" and format_of("x.jpeg") == "picture" and format_of("notes.txt") is None


# ------------------------------------------------------------------------------------------------------ bad inputs
def _png_of_size(path: Path, width: int, height: int) -> Path:
    """A valid 1-bit PNG of any size, written row by row so that building it costs almost nothing."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor, row = zlib.compressobj(9), b"\x00" * (1 + (width + 7) // 8)
    pixels = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    return path


def _truncated_png(tmp_path: Path) -> Path:
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / "cut.png")
    data = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    return tmp_path / "cut.png"


def _dicom_without_pixels(tmp_path: Path) -> Path:
    path = _dicom(tmp_path / "no_pixels.dcm", np.zeros((4, 4), np.uint8), "MONOCHROME2")
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    return path


def _dicom_mpeg2(tmp_path: Path) -> Path:
    path = _dicom(tmp_path / "mpeg2.dcm", np.zeros((4, 4), np.uint8), "MONOCHROME2")
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.MPEG2MPML
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 16])
    ds.save_as(path)
    return path


def _truncated_dicom(tmp_path: Path) -> Path:
    path = _dicom(tmp_path / "cut.dcm", np.ones((2, 64, 64), np.uint16), "MONOCHROME2")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 4000])
    return path


def _nan_nifti(tmp_path: Path) -> Path:
    data = np.ones((8, 8, 2), np.float32)
    data[3, 3, 1] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "nan.nii.gz")
    return tmp_path / "nan.nii.gz"


def _inf_nrrd(tmp_path: Path) -> Path:
    data = np.ones((8, 8), np.float32)
    data[0, 0] = np.inf
    nrrd.write(str(tmp_path / "inf.nrrd"), data)
    return tmp_path / "inf.nrrd"


def _write(name: str, content: bytes):
    def build(tmp_path: Path) -> Path:
        (tmp_path / name).write_bytes(content)
        return tmp_path / name

    return build


BAD_INPUTS = {
    "missing": (lambda tmp_path: tmp_path / "absent.png", "no such file"),
    "zero_byte": (_write("empty.png", b""), "empty"),
    "truncated_png": (_truncated_png, "cannot be read"),
    "text_named_png": (_write("notes.png", b"this is not a picture\n" * 10), "cannot be read"),
    "text_named_dcm": (_write("notes.dcm", b"this is not DICOM\n" * 10), "not a DICOM file"),
    "unsupported_suffix": (_write("notes.txt", b"text"), "unsupported file type"),
    "dicom_without_pixels": (_dicom_without_pixels, "no pixel data"),
    "dicom_mpeg2": (_dicom_mpeg2, "unsupported DICOM transfer syntax"),
    "truncated_dicom": (_truncated_dicom, "cannot be read"),
    "huge_png": (lambda tmp_path: _png_of_size(tmp_path / "huge.png", 10000, 10000), "larger than supported"),
    "pil_bomb_png": (lambda tmp_path: _png_of_size(tmp_path / "bomb.png", 20000, 20000), "larger than supported"),
    "truncated_nifti": (_write("cut.nii.gz", zlib.compress(b"\x00" * 100)[:20]), "cannot be read"),
    "mhd_without_raw": (
        _write("lonely.mhd", b"NDims = 2\nDimSize = 4 4\nElementType = MET_UCHAR\nElementDataFile = gone.raw\n"),
        "cannot be read",
    ),
    "nan_nifti": (_nan_nifti, "NaN"),
    "inf_nrrd": (_inf_nrrd, "NaN or infinite"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_raises_one_error_naming_the_file(tmp_path, case):
    build, problem = BAD_INPUTS[case]
    path = build(tmp_path)
    start = time.perf_counter()
    with pytest.raises(ImageReadError) as raised:
        read_image(path)
    message = str(raised.value)
    assert message.startswith(str(path)), message
    assert problem in message, message
    assert time.perf_counter() - start < 2.0  # huge images are refused from the header, not decoded


# ------------------------------------------------------------------------------------ corrupt JPEG-compressed DICOM
def _jpeg_dicom_cut_file(tmp_path: Path) -> Path:
    """The JPEG cine cut off inside its pixel data, as an interrupted copy leaves it."""
    data = (DICOM_DIR / "examples_ybr_color.dcm").read_bytes()
    path = tmp_path / "cut_file.dcm"
    path.write_bytes(data[: len(data) * 3 // 4])
    return path


def _jpeg_dicom_cut_codestreams(tmp_path: Path) -> Path:
    """The JPEG cine with every frame's JPEG data cut to 100 bytes: a well-formed DICOM file that no decoder reads."""
    ds = pydicom.dcmread(DICOM_DIR / "examples_ybr_color.dcm")
    frames = pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames))
    ds.PixelData = pydicom.encaps.encapsulate([frame[:100] for frame in frames])
    path = tmp_path / "cut_codestreams.dcm"
    ds.save_as(path)
    return path


@needs_dicom
@pytest.mark.parametrize(
    "build, problem",
    [(_jpeg_dicom_cut_file, "truncated"), (_jpeg_dicom_cut_codestreams, "cannot be read as an image")],
    ids=["cut_file", "cut_codestreams"],
)
def test_corrupt_jpeg_dicom_one_line_error_without_tracebacks(tmp_path, capsys, caplog, build, problem):
    """pydicom logs a traceback for each decoder plugin that fails; none may reach the user, only the reader's line."""
    path = build(tmp_path)
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageReadError) as raised:
            read_image(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: ") and problem in message and "\n" not in message, message
    captured = capsys.readouterr()
    for output in (captured.out, captured.err, caplog.text):
        assert "Traceback" not in output, output
    assert [record.getMessage() for record in caplog.records if record.name.startswith("pydicom")] == []
    assert [str(warning.message) for warning in caught if "pydicom" in warning.filename] == []
