"""One reader for every ultrasound input the bundle accepts.

Training, evaluation, inference, the command-line tool and the Slicer module all read images through
:func:`read_image`, so an image is converted to grey in exactly one way everywhere.

Colour to grey: ITU-R BT.601 luma, ``0.299 R + 0.587 G + 0.114 B``, computed in float (palette images are
expanded to RGB first, an alpha channel is ignored). Intensities keep their original scale; the bundle's
transforms rescale each image to [0, 1].

Geometry follows ITK: a pixel's index is (column i, row j, frame k); ``direction`` holds the LPS unit vectors of
increasing i, j and k as its columns, ``origin`` is the LPS position of the centre of pixel (0, 0, 0).

One module although long: pictures, DICOM (with its many pixel encodings, under pydicom 2.4 and 3) and volumes
all end in the same :class:`UltrasoundImage` with the same grey conversion and checks, which are this module's
point; split, those rules would be spread over several files.
"""

from __future__ import annotations

import logging
import struct
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import nrrd
import numpy as np
import pydicom
from PIL import Image
from pydicom.errors import InvalidDicomError

# pydicom 3 decodes pixel data with pydicom.pixels; pydicom 2.4, which 3D Slicer 5.10 ships, only has
# Dataset.pixel_array and its pixel data handlers. Both are supported so that the bundle runs in a stock Slicer.
PYDICOM_3 = int(pydicom.__version__.split(".")[0]) >= 3
if PYDICOM_3:
    from pydicom.pixels import apply_color_lut, convert_color_space
else:
    from pydicom.pixel_data_handlers.util import apply_color_lut, convert_color_space

__all__ = [
    "ImageReadError",
    "UltrasoundImage",
    "PICTURE_SUFFIXES",
    "DICOM_SUFFIXES",
    "NIFTI_SUFFIXES",
    "NRRD_SUFFIXES",
    "ITK_SUFFIXES",
    "read_image",
    "rgb_to_grey",
    "is_supported",
    "format_of",
]

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
ITK_SUFFIXES = (".mha", ".mhd")
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)

# Larger images are refused instead of exhausting memory; ultrasound frames are rarely above 2000 px.
MAX_PIXELS_PER_FRAME = 8192 * 8192
# A whole cine loop or volume is kept in memory as float32: 2**30 pixels are 4 GiB.
MAX_PIXELS_TOTAL = 2**30

# NRRD axis kinds that index pixels; any other kind (RGB-color, vector, ...) is a per-pixel component axis.
_NRRD_DOMAIN_KINDS = ("domain", "space", "time", "none", "???")
# Sign flips taking NRRD world coordinates to LPS; spaces not listed are taken as LPS.
_NRRD_TO_LPS = {
    "left-posterior-superior": (1, 1, 1),
    "lps": (1, 1, 1),
    "right-anterior-superior": (-1, -1, 1),
    "ras": (-1, -1, 1),
    "left-anterior-superior": (1, -1, 1),
    "las": (1, -1, 1),
}


class ImageReadError(ValueError):
    """An input file could not be read as an ultrasound image; the message names the file and the problem."""


@dataclass
class UltrasoundImage:
    """Grey frames of one input file and the geometry needed to write results aligned with it.

    Args:
        frames: (frames, rows, columns) float32 grey values in the file's own intensity scale.
        path: the file that was read.
        kind: "picture" (PNG/JPEG/...), "dicom" or "volume" (NIfTI/NRRD/MHA); chooses the default output format.
        spacing: (row, column) pixel size in mm, None when the file does not say.
        origin: position of the first pixel in mm (LPS), None when unknown.
        direction: 3x3 direction cosines (LPS), columns for increasing column, row and frame index; None when unknown.
        source: format-specific object the writers need (the pydicom dataset for DICOM, the header for NIfTI/NRRD).
        frame_spacing: distance between frames in mm for volumes, None when unknown or not meaningful (cine loops).
    """

    frames: np.ndarray
    path: Path
    kind: str = "picture"
    spacing: tuple[float, float] | None = None
    origin: tuple[float, float, float] | None = None
    direction: np.ndarray | None = None
    source: Any = field(default=None, repr=False)
    frame_spacing: float | None = None

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def frame_shape(self) -> tuple[int, int]:
        return int(self.frames.shape[1]), int(self.frames.shape[2])


def rgb_to_grey(rgb: np.ndarray) -> np.ndarray:
    """Convert (..., 3 or 4) colour pixels to grey with BT.601 luma; alpha is ignored."""
    return (rgb[..., :3].astype(np.float32) @ LUMA_WEIGHTS).astype(np.float32)


def _has_dicom_preamble(path: Path) -> bool:
    """Whether the file carries the 'DICM' marker after the 128-byte preamble (DICOM files often have no suffix)."""
    try:
        with open(path, "rb") as stream:
            return stream.read(132)[128:] == b"DICM"
    except OSError:
        return False


def format_of(path: str | Path) -> str | None:
    """Format family of a file: "picture", "dicom", "nifti", "nrrd", "itk", or None when not supported.

    The suffix decides, except that a file with the DICOM 'DICM' marker is DICOM whatever its name.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith(DICOM_SUFFIXES) or (path.is_file() and _has_dicom_preamble(path)):
        return "dicom"
    for family, suffixes in (
        ("picture", PICTURE_SUFFIXES),
        ("nifti", NIFTI_SUFFIXES),
        ("nrrd", NRRD_SUFFIXES),
        ("itk", ITK_SUFFIXES),
    ):
        if name.endswith(suffixes):
            return family
    return None


def is_supported(path: str | Path) -> bool:
    """Whether the reader handles the file: a known suffix, or the DICOM marker in a file without one."""
    return format_of(path) is not None


def _check_size(path: Path, rows: int, columns: int, frames: int = 1) -> None:
    """Refuse huge images from their header, before any pixel is decoded."""
    if rows * columns > MAX_PIXELS_PER_FRAME:
        raise ImageReadError(f"{path}: image of {columns}x{rows} pixels is larger than supported")
    if rows * columns * frames > MAX_PIXELS_TOTAL:
        raise ImageReadError(f"{path}: {frames} frames of {columns}x{rows} pixels are more than supported")


def _read_picture(path: Path) -> UltrasoundImage:
    # The size is checked below from the header; PIL's own warning would only repeat it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            pil = Image.open(path)
        except Image.DecompressionBombError as error:
            raise ImageReadError(f"{path}: image is larger than supported ({error})") from error
    with pil:
        _check_size(path, pil.height, pil.width)
        if pil.mode in ("1", "P", "PA", "LA", "CMYK", "YCbCr", "HSV", "LAB"):
            pil = pil.convert({"1": "L", "PA": "RGBA", "LA": "RGBA"}.get(pil.mode, "RGB"))
        array = np.asarray(pil)
    grey = rgb_to_grey(array) if array.ndim == 3 else array.astype(np.float32)
    return UltrasoundImage(frames=grey[np.newaxis], path=path, kind="picture")


def _dicom_spacing(ds: pydicom.Dataset) -> tuple[float, float] | None:
    """(row, column) mm from the first ultrasound region calibrated in cm, else Pixel Spacing."""
    for region in ds.get("SequenceOfUltrasoundRegions", []):
        # Physical units code 3 is cm; other regions (Doppler strips: seconds, cm/s) carry no pixel size.
        if region.get("PhysicalUnitsXDirection") == 3 and region.get("PhysicalUnitsYDirection") == 3:
            delta_x, delta_y = abs(float(region.PhysicalDeltaX)), abs(float(region.PhysicalDeltaY))
            if delta_x > 0 and delta_y > 0:
                return delta_y * 10.0, delta_x * 10.0
    if "PixelSpacing" in ds and len(ds.PixelSpacing) == 2:
        return float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1])
    return None


def _dicom_geometry(ds: pydicom.Dataset) -> tuple[tuple[float, float, float] | None, np.ndarray | None]:
    """Origin and direction from Image Position/Orientation (Patient); ultrasound files usually have neither."""
    if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
        return None, None
    cosines = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
    direction = np.column_stack([cosines[:3], cosines[3:], np.cross(cosines[:3], cosines[3:])])
    return tuple(float(v) for v in ds.ImagePositionPatient), direction


def _decode_pixels_pydicom3(path: Path, ds: pydicom.Dataset, syntax: pydicom.uid.UID) -> tuple[np.ndarray, dict]:
    """Pixels of every frame with pydicom 3, and the decoder's description of them (colour space, frames, bits)."""
    from pydicom.pixels import as_pixel_options, get_decoder

    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as error:
        raise ImageReadError(f"{path}: unsupported DICOM transfer syntax {syntax.name} ({syntax})") from error
    if not decoder.is_available:
        raise ImageReadError(f"{path}: no installed decoder for transfer syntax {syntax.name} ({syntax})")
    # The decoder reports the colour space it returns: pydicom 3 already gives RGB for YBR JPEG and JPEG 2000, so
    # the colour space must be taken from here, not from the dataset, or YBR would be converted twice.
    return decoder.as_array(ds, validate=True, **as_pixel_options(ds))


def _decode_pixels_pydicom2(path: Path, ds: pydicom.Dataset, syntax: pydicom.uid.UID) -> tuple[np.ndarray, dict]:
    """Pixels of every frame with pydicom 2.4's ``Dataset.pixel_array``, described as in
    :func:`_decode_pixels_pydicom3`."""
    handlers = [handler for handler in pydicom.config.pixel_data_handlers if handler.supports_transfer_syntax(syntax)]
    if not handlers:
        raise ImageReadError(f"{path}: unsupported DICOM transfer syntax {syntax.name} ({syntax})")
    if not any(handler.is_available() for handler in handlers):
        raise ImageReadError(f"{path}: no installed decoder for transfer syntax {syntax.name} ({syntax})")
    array = ds.pixel_array
    photometric = str(ds.PhotometricInterpretation)
    # pydicom 2 leaves JPEG YCbCr as it is, but JPEG 2000 decoders reverse the component transform to RGB.
    if syntax in pydicom.uid.JPEG2000TransferSyntaxes and photometric in ("YBR_ICT", "YBR_RCT"):
        photometric = "RGB"
    meta = {
        "photometric_interpretation": photometric,
        "samples_per_pixel": int(ds.SamplesPerPixel),
        "number_of_frames": int(ds.get("NumberOfFrames") or 1),
        "bits_stored": int(ds.BitsStored),
        "pixel_representation": int(ds.PixelRepresentation),
    }
    return array, meta


def _read_dicom(path: Path) -> UltrasoundImage:
    with warnings.catch_warnings(record=True) as read_warnings:
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError as error:
            raise ImageReadError(f"{path}: not a DICOM file (no 'DICM' marker or file meta information)") from error
    # pydicom returns what precedes the end of a file cut off inside a sequence or encapsulated pixel data, and only
    # warns (pydicom 3 then drops the whole data set, which would look like a file without pixel data).
    if any("End of file reached" in str(warning.message) for warning in read_warnings):
        raise ImageReadError(f"{path}: DICOM file is truncated (it ends inside a sequence or its pixel data)")
    if not any(keyword in ds for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        sop_class = getattr(ds.get("SOPClassUID"), "name", "unknown SOP class")
        raise ImageReadError(f"{path}: DICOM file has no pixel data ({sop_class})")
    frames = int(ds.get("NumberOfFrames") or 1)
    _check_size(path, int(ds.Rows), int(ds.Columns), frames)
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is None:
        raise ImageReadError(f"{path}: DICOM file has no transfer syntax in its file meta information")
    array, meta = _decode_pixels_pydicom3(path, ds, syntax) if PYDICOM_3 else _decode_pixels_pydicom2(path, ds, syntax)
    photometric = str(meta["photometric_interpretation"])
    colour = int(meta["samples_per_pixel"]) > 1
    if int(meta["number_of_frames"]) == 1:
        array = array[np.newaxis]
    if photometric == "PALETTE COLOR":
        grey = rgb_to_grey(apply_color_lut(array, ds))
    elif photometric in ("YBR_FULL", "YBR_FULL_422"):
        grey = rgb_to_grey(convert_color_space(array, photometric, "RGB"))
    elif photometric == "RGB" and colour:
        grey = rgb_to_grey(array)
    elif photometric in ("MONOCHROME1", "MONOCHROME2") and not colour:
        grey = array.astype(np.float32)
        if photometric == "MONOCHROME1":
            # MONOCHROME1 shows low values bright; flip within the stored range so bright tissue is high everywhere.
            bits = int(meta["bits_stored"])
            low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if meta["pixel_representation"] else (0, 2**bits - 1)
            grey = np.float32(low + high) - grey
    else:
        raise ImageReadError(f"{path}: unsupported DICOM photometric interpretation {photometric}")
    origin, direction = _dicom_geometry(ds)
    return UltrasoundImage(
        frames=np.ascontiguousarray(grey, dtype=np.float32),
        path=path,
        kind="dicom",
        spacing=_dicom_spacing(ds),
        origin=origin,
        direction=direction,
        source=ds,
    )


def _volume_image(
    path: Path, array: np.ndarray, ijk_to_lps: np.ndarray | None, source: Any, spacing: np.ndarray | None = None
) -> UltrasoundImage:
    """Frames and geometry of a volume given as an (i, j[, k]) array and its 4x4 index-to-LPS matrix.

    Args:
        path: the file that was read.
        array: 2D (i, j) or 3D (i, j, k) grey array, i the fastest (column) axis.
        ijk_to_lps: 4x4 matrix from (i, j, k, 1) to LPS mm, None when the file has no orientation.
        source: header object kept for the writers.
        spacing: (i, j[, k]) pixel sizes in mm when there is no orientation matrix.
    """
    if array.ndim == 2:
        array = array[..., np.newaxis]
    frames = np.ascontiguousarray(np.transpose(array, (2, 1, 0)), dtype=np.float32)
    image = UltrasoundImage(frames=frames, path=path, kind="volume", source=source)
    if ijk_to_lps is not None:
        axes = ijk_to_lps[:3, :3]
        sizes = np.linalg.norm(axes, axis=0)
        if np.all(sizes[:2] > 0):
            # A missing third axis (2D images) gets the normal of the image plane.
            if sizes[2] == 0:
                axes = np.column_stack([axes[:, 0], axes[:, 1], np.cross(axes[:, 0], axes[:, 1]) / sizes[0] / sizes[1]])
                sizes[2] = 1.0
            image.direction = axes / sizes
            image.origin = tuple(float(v) for v in ijk_to_lps[:3, 3])
            spacing = sizes
    if spacing is not None and len(spacing) >= 2 and np.all(np.isfinite(spacing[:2])):
        image.spacing = (float(spacing[1]), float(spacing[0]))
        if frames.shape[0] > 1 and len(spacing) > 2 and np.isfinite(spacing[2]):
            image.frame_spacing = float(spacing[2])
    return image


def _split_components(path: Path, array: np.ndarray, component_axes: list[int]) -> np.ndarray:
    """Turn an array with at most one colour/vector component axis into grey."""
    if not component_axes:
        return array
    if len(component_axes) > 1 or array.shape[component_axes[0]] not in (3, 4):
        raise ImageReadError(f"{path}: pixels with {array.shape} components are not grey or RGB(A)")
    return rgb_to_grey(np.moveaxis(array, component_axes[0], -1))


def _read_nifti(path: Path) -> UltrasoundImage:
    nifti = nib.load(path)
    shape = tuple(int(v) for v in nifti.shape)
    # Trailing singleton axes (time, components) carry nothing; more than three real axes cannot be frames.
    while len(shape) > 2 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) > 3 or len(shape) < 2:
        raise ImageReadError(f"{path}: NIfTI image of shape {nifti.shape} is not a 2D image or a stack of frames")
    _check_size(path, shape[1], shape[0], shape[2] if len(shape) == 3 else 1)
    array = np.asanyarray(nifti.dataobj)
    if array.dtype.names:
        # RGB24 / RGBA32 images come as structured arrays with one field per channel.
        array = rgb_to_grey(np.stack([array[name] for name in array.dtype.names[:3]], axis=-1))
    array = array.reshape(shape)
    ras_to_lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    return _volume_image(path, array, ras_to_lps @ nifti.affine, nifti.header)


def _read_nrrd(path: Path) -> UltrasoundImage:
    header = nrrd.read_header(str(path))
    sizes = [int(v) for v in header["sizes"]]
    kinds = [str(kind).lower() for kind in header.get("kinds", ["domain"] * len(sizes))]
    directions = header.get("space directions")
    if directions is not None:
        # pynrrd marks non-spatial axes (colour components) with a row of NaN.
        spatial = [not np.isnan(np.asarray(row, dtype=np.float64)).any() for row in directions]
    else:
        spatial = [kind in _NRRD_DOMAIN_KINDS for kind in kinds]
    component_axes = [axis for axis in range(len(sizes)) if not spatial[axis] or kinds[axis] not in _NRRD_DOMAIN_KINDS]
    domain_axes = [axis for axis in range(len(sizes)) if axis not in component_axes]
    domain_sizes = [sizes[axis] for axis in domain_axes]
    if len(domain_sizes) not in (2, 3):
        raise ImageReadError(f"{path}: NRRD image of sizes {sizes} is not a 2D image or a stack of frames")
    _check_size(path, domain_sizes[1], domain_sizes[0], domain_sizes[2] if len(domain_sizes) == 3 else 1)
    array, header = nrrd.read(str(path))
    array = _split_components(path, array, component_axes)
    ijk_to_lps, spacing = None, None
    if directions is not None:
        flip = np.asarray(_NRRD_TO_LPS.get(str(header.get("space", "")).lower(), (1, 1, 1)), dtype=np.float64)
        vectors = np.asarray([directions[axis] for axis in domain_axes], dtype=np.float64)
        dimension = vectors.shape[1]
        ijk_to_lps = np.eye(4)
        ijk_to_lps[:dimension, : len(vectors)] = vectors.T
        if len(vectors) == 2:
            ijk_to_lps[:3, 2] = 0.0
        origin = np.asarray(header.get("space origin", np.zeros(dimension)), dtype=np.float64)
        ijk_to_lps[:dimension, 3] = np.nan_to_num(origin)
        ijk_to_lps[:3] *= flip[:, np.newaxis]
    elif "spacings" in header:
        spacing = np.asarray([header["spacings"][axis] for axis in domain_axes], dtype=np.float64)
    return _volume_image(path, array, ijk_to_lps, header, spacing)


def _read_itk(path: Path) -> UltrasoundImage:
    # ITK is imported here: it is large and only MetaImage files need it.
    import itk

    image_io = itk.ImageIOFactory.CreateImageIO(str(path), itk.CommonEnums.IOFileMode_ReadMode)
    if image_io is None:
        raise ImageReadError(f"{path}: not a MetaImage file ITK can read")
    image_io.SetFileName(str(path))
    image_io.ReadImageInformation()
    size = int(image_io.GetNumberOfDimensions())
    dimensions = [int(image_io.GetDimensions(axis)) for axis in range(size)]
    if size not in (2, 3):
        raise ImageReadError(f"{path}: image of size {dimensions} is not a 2D image or a stack of frames")
    _check_size(path, dimensions[1], dimensions[0], dimensions[2] if size == 3 else 1)
    # Reading as float (vector image for RGB and other multi-component pixels) works for every stored pixel type;
    # itk.imread only knows the pixel types ITK was compiled for.
    components = int(image_io.GetNumberOfComponents())
    image_type = itk.VectorImage[itk.F, size] if components > 1 else itk.Image[itk.F, size]
    reader = itk.ImageFileReader[image_type].New(FileName=str(path))
    reader.Update()
    image = reader.GetOutput()
    array = itk.array_from_image(image)  # (k, j, i[, components])
    if components > 1:
        array = _split_components(path, array, [array.ndim - 1])
    array = np.transpose(array)  # back to (i, j[, k])
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:size, :size] = itk.array_from_matrix(image.GetDirection()) * np.asarray(image.GetSpacing())
    ijk_to_lps[:size, 3] = np.asarray(image.GetOrigin())
    if size == 2:
        ijk_to_lps[2, 2] = 0.0
    return _volume_image(path, array, ijk_to_lps, None)


# Each library reports broken files its own way: truncated data, bad headers, missing companion files.
_READ_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
    RuntimeError,
    struct.error,
    zlib.error,
    nib.filebasedimages.ImageFileError,
    nrrd.NRRDError,
)
_READERS = {"picture": _read_picture, "dicom": _read_dicom, "nifti": _read_nifti, "nrrd": _read_nrrd, "itk": _read_itk}


@contextmanager
def _pydicom_reports_silenced() -> Iterator[None]:
    """Keep pydicom's own reports about a bad file off the user's terminal while the file is read.

    pydicom logs a full traceback for every decoder plugin that fails on corrupt compressed pixel data, and warns
    (through its logger and ``warnings``) about truncated files. :func:`read_image` reports the failure itself, once,
    as an ImageReadError naming the file, so these reports would only repeat it.
    """
    logger = logging.getLogger("pydicom")  # parent of pydicom's module loggers (pydicom.pixels.decoders.base...)
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
            yield
    finally:
        logger.setLevel(level)


def read_image(path: str | Path) -> UltrasoundImage:
    """Read one image file into grey frames plus geometry.

    Args:
        path: a PNG, JPEG, BMP or TIFF picture; a DICOM file (by suffix .dcm/.dicom or by its 'DICM' marker);
            a NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr) or MetaImage (.mha, .mhd) 2D image or stack of frames.

    Returns:
        the grey frames with the file's geometry; every frame of a multi-frame file or the last axis of a volume
        is one frame.

    Raises:
        ImageReadError: the file is missing, empty, truncated, of an unsupported kind, too large, a DICOM file
            without pixel data or with an unsupported transfer syntax, or has NaN values; the message starts with
            the file name.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: file is empty")
    family = format_of(path)
    if family is None:
        raise ImageReadError(f"{path}: unsupported file type '{''.join(path.suffixes) or path.name}'")
    try:
        with _pydicom_reports_silenced():
            image = _READERS[family](path)
    except ImageReadError:
        raise
    except _READ_ERRORS as error:
        detail = " ".join(str(error).split())  # some libraries report on several lines
        raise ImageReadError(f"{path}: cannot be read as an image ({type(error).__name__}: {detail})") from error
    if image.frames.size == 0 or min(image.frame_shape) < 2:
        raise ImageReadError(f"{path}: image has no usable pixels (shape {image.frames.shape})")
    if not np.isfinite(image.frames).all():
        raise ImageReadError(f"{path}: image contains NaN or infinite values")
    return image
