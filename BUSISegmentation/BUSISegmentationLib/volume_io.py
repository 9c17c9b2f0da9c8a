"""Files exchanged with the bundle: the input image as NRRD, the label map (NIfTI) and lesion table it writes.

Arrays are indexed as 3D Slicer's ``arrayFromVolume`` gives them: ``(frames, rows, columns)`` for scalar images and
``(frames, rows, columns, components)`` for colour. Geometry is given in the order of the file axes (column, row,
frame) and in LPS, the coordinate system of NRRD and DICOM files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np


__all__ = [
    "PICTURE_SUFFIXES",
    "check_input",
    "lesion_area_text",
    "pixel_size_is_known",
    "read_result",
    "result_paths",
    "write_input",
]

# Picture formats: 3D Slicer loads them with 1 mm pixels, a size the file does not give.
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")

_COLOUR_KINDS = {3: "RGB-color", 4: "RGBA-color"}
_NRRD_DTYPES = (
    np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64, np.float32, np.float64
)  # fmt: skip


def _vector(values: Sequence[float], name: str) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float64)
    if vector.shape != (3,) or not np.all(np.isfinite(vector)):
        raise ValueError(f"{name} must be 3 finite numbers (column, row, frame), got {values!r}")
    return vector


def _check_array(array: np.ndarray) -> None:
    if array.ndim not in (3, 4) or 0 in array.shape[:3]:
        raise ValueError(
            f"array of shape {array.shape} is not (frames, rows, columns) or (frames, rows, columns, components)"
        )
    if array.ndim == 4 and array.shape[3] not in _COLOUR_KINDS:
        raise ValueError(f"array of shape {array.shape} has {array.shape[3]} components; only RGB or RGBA is supported")
    if array.dtype.type not in _NRRD_DTYPES:
        raise ValueError(f"array of type {array.dtype} cannot be written to NRRD; use an integer or float type")


def _geometry_header(
    spacing: Sequence[float], origin: Sequence[float], direction: np.ndarray | Sequence[Sequence[float]] | None
) -> dict:
    """NRRD space fields for the column, row and frame axes."""
    spacing = _vector(spacing, "spacing")
    if np.any(spacing <= 0):
        raise ValueError(f"spacing must be positive, got {tuple(spacing)}")
    origin = _vector(origin, "origin")
    direction = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
    if direction.shape != (3, 3) or not np.all(np.isfinite(direction)):
        raise ValueError(f"direction must be a finite 3x3 matrix, got {direction.tolist()}")
    if np.any(np.linalg.norm(direction, axis=0) == 0) or math.isclose(np.linalg.det(direction), 0.0, abs_tol=1e-9):
        raise ValueError(f"direction {direction.tolist()} does not span three independent axes")
    axes = direction / np.linalg.norm(direction, axis=0) * spacing  # columns scaled by spacing
    return {
        "space": "left-posterior-superior",
        "space directions": [list(axes[:, axis]) for axis in range(3)],
        "space origin": list(origin),
    }


def check_input(
    array: np.ndarray,
    spacing: Sequence[float] | None,
    origin: Sequence[float],
    direction: np.ndarray | Sequence[Sequence[float]] | None,
) -> None:
    """Raises the ValueError that :func:`write_input` would raise for these values, without writing anything."""
    _check_array(np.asarray(array))
    if spacing is not None:
        _geometry_header(spacing, origin, direction)


def write_input(
    array: np.ndarray,
    spacing: Sequence[float] | None,
    origin: Sequence[float],
    direction: np.ndarray | Sequence[Sequence[float]] | None,
    path: str | Path,
) -> Path:
    """Write an image or a stack of frames to an NRRD file the bundle reads, pixel values unchanged.

    Colour stays colour (an ``RGB-color`` component axis): converting it to grey is the bundle's preprocessing.

    Args:
        array: ``(frames, rows, columns)`` or ``(frames, rows, columns, 3 or 4)`` pixels.
        spacing: pixel size in mm along the column, row and frame axes (3D Slicer's ``GetSpacing()`` order);
            None when the image has no physical pixel size (see :func:`pixel_size_is_known`). The file then has no
            space fields, like a picture, and the bundle gives lesion areas in pixels only.
        origin: LPS position in mm of the first pixel; not used when ``spacing`` is None.
        direction: 3x3 matrix whose columns are the LPS unit directions of the column, row and frame axes;
            None for identity; not used when ``spacing`` is None.
        path: the ``.nrrd`` file to write; its folder is created.

    Returns:
        ``path``.

    Raises:
        ValueError: the array shape, pixel type or geometry is not usable; the message names the value.
    """
    array = np.asarray(array)
    _check_array(array)
    header = {} if spacing is None else _geometry_header(spacing, origin, direction)
    kinds = ["domain"] * 3
    if array.ndim == 4:
        kinds.insert(0, _COLOUR_KINDS[array.shape[3]])
        if header:
            header["space directions"].insert(0, [math.nan] * 3)
    header["kinds"] = kinds
    header["encoding"] = "raw"  # a temporary file read once: compression would only cost time
    # pynrrd is imported here so that the module loads before the Python dependencies are installed.
    import nrrd

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nrrd.write(str(path), np.ascontiguousarray(array), header, index_order="C")
    return path


def result_paths(output_dir: str | Path, input_stem: str) -> tuple[Path, Path]:
    """The label map (``<stem>_seg.nii.gz``) and lesion table (``<stem>_lesions.json``) the bundle writes for one input
    when asked for the ``nifti`` format."""
    output_dir = Path(output_dir)
    return output_dir / f"{input_stem}_seg.nii.gz", output_dir / f"{input_stem}_lesions.json"


def _read_label_map(path: Path) -> np.ndarray:
    """``(frames, rows, columns)`` uint8 labels of the bundle's NIfTI label map.

    The bundle stores the labels in the voxel order of its input (column, row, frame), so no resampling is needed;
    the RAS affine it writes is the input's geometry, which the caller already has.
    """
    # nibabel is imported here so that the module loads before the Python dependencies are installed.
    import nibabel

    data = np.asanyarray(nibabel.load(str(path)).dataobj)
    if not np.issubdtype(data.dtype, np.integer) or data.ndim not in (2, 3) or data.min() < 0 or data.max() > 255:
        raise ValueError(f"{path}: not a 2D or 3D label map of values 0-255 (type {data.dtype}, shape {data.shape})")
    if data.ndim == 2:
        data = data[..., np.newaxis]  # the bundle writes a one-frame input as a 2D image
    return np.ascontiguousarray(np.transpose(data, (2, 1, 0)), dtype=np.uint8)


def read_result(
    output_dir: str | Path, input_stem: str, shape: Sequence[int] | None = None
) -> tuple[np.ndarray, list[dict]]:
    """Read what the bundle wrote for one input.

    Args:
        output_dir: the bundle's output folder.
        input_stem: file name of the input without its suffix.
        shape: ``(frames, rows, columns)`` of the input, to check the label map against; None to skip the check.

    Returns:
        ``(labels, lesions)``: ``(frames, rows, columns)`` uint8 labels (0 background, 1 benign lesion,
        2 malignant lesion) and one dict per lesion (keys ``frame``, ``lesion_id``, ``class_name``, ``label``,
        ``confidence``, ``area_px``, ``area_mm2``, ``bbox_*``...).

    Raises:
        FileNotFoundError: a result file is missing.
        ValueError: the label map is not an integer image, or its shape is not ``shape``.
    """
    label_map_path, lesions_path = result_paths(output_dir, input_stem)
    for path in (label_map_path, lesions_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the bundle did not write this result file")
    labels = _read_label_map(label_map_path)
    if shape is not None and tuple(labels.shape) != tuple(shape):
        raise ValueError(f"{label_map_path}: label map of shape {labels.shape} does not match the input {tuple(shape)}")
    with open(lesions_path, encoding="utf-8") as stream:
        lesions = json.load(stream)
    return labels, lesions


def pixel_size_is_known(
    spacing: Sequence[float], file_name: str | None = None, dicom_pixel_spacing: str | None = None
) -> bool:
    """Whether the spacing of an image loaded in 3D Slicer is its real pixel size, not the 1 mm Slicer gives images
    whose file does not say.

    Args:
        spacing: column and row (and frame) spacing of the loaded volume in mm.
        file_name: file the volume was loaded from, when it was loaded from a file.
        dicom_pixel_spacing: for a volume loaded from DICOM, the Pixel Spacing or Imager Pixel Spacing value of its
            first instance ("" when it has neither); None for other volumes.
    """
    if not all(math.isclose(value, 1.0) for value in spacing[:2]):
        return True  # only the default 1 mm can have been made up
    if dicom_pixel_spacing is not None:
        return bool(dicom_pixel_spacing.strip())
    if file_name:
        return not file_name.lower().endswith(PICTURE_SUFFIXES)
    return True  # made in the scene, or read from a format that stores geometry (NRRD, NIfTI, MetaImage)


def lesion_area_text(lesion: dict) -> str:
    """Area of a lesion of the bundle's lesion table with its unit: mm² when the image has a pixel size, else
    pixels (the bundle leaves ``area_mm2`` empty then)."""
    if lesion.get("area_mm2") is not None:
        return f"{lesion['area_mm2']:.1f} mm²"
    if lesion.get("area_px") is not None:
        return f"{int(lesion['area_px'])} px"
    return "unknown"
