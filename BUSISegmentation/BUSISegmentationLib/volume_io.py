"""Files exchanged with the bundle: the input image as NRRD, the segmentation and lesion table it writes.

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

from .labels import load_label_descriptions

__all__ = ["read_result", "result_paths", "write_input"]

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


def write_input(
    array: np.ndarray,
    spacing: Sequence[float],
    origin: Sequence[float],
    direction: np.ndarray | Sequence[Sequence[float]] | None,
    path: str | Path,
) -> Path:
    """Write an image or a stack of frames to an NRRD file the bundle reads, pixel values unchanged.

    Colour stays colour (an ``RGB-color`` component axis): converting it to grey is the bundle's preprocessing.

    Args:
        array: ``(frames, rows, columns)`` or ``(frames, rows, columns, 3 or 4)`` pixels.
        spacing: pixel size in mm along the column, row and frame axes (3D Slicer's ``GetSpacing()`` order).
        origin: LPS position in mm of the first pixel.
        direction: 3x3 matrix whose columns are the LPS unit directions of the column, row and frame axes;
            None for identity.
        path: the ``.nrrd`` file to write; its folder is created.

    Returns:
        ``path``.

    Raises:
        ValueError: the array shape, pixel type or geometry is not usable; the message names the value.
    """
    array = np.asarray(array)
    _check_array(array)
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
    space_directions = [list(axes[:, axis]) for axis in range(3)]
    kinds = ["domain"] * 3
    if array.ndim == 4:
        space_directions.insert(0, [math.nan] * 3)
        kinds.insert(0, _COLOUR_KINDS[array.shape[3]])
    header = {
        "space": "left-posterior-superior",
        "space directions": space_directions,
        "space origin": list(origin),
        "kinds": kinds,
        # A temporary file read once: compression would only cost time.
        "encoding": "raw",
    }
    # pynrrd is imported here so that the module loads before the Python dependencies are installed.
    import nrrd

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nrrd.write(str(path), np.ascontiguousarray(array), header, index_order="C")
    return path


def result_paths(output_dir: str | Path, input_stem: str) -> tuple[Path, Path]:
    """The segmentation (``<stem>_seg.seg.nrrd``) and lesion table (``<stem>_lesions.json``) of one input."""
    output_dir = Path(output_dir)
    return output_dir / f"{input_stem}_seg.seg.nrrd", output_dir / f"{input_stem}_lesions.json"


def _segments(header: dict) -> list[tuple[str, int, int]]:
    """(name, label value, layer) of each segment described in a Slicer ``.seg.nrrd`` header."""
    segments = []
    index = 0
    while f"Segment{index}_LabelValue" in header:
        name = header.get(f"Segment{index}_Name", "")
        segments.append((name, int(header[f"Segment{index}_LabelValue"]), int(header.get(f"Segment{index}_Layer", 0))))
        index += 1
    return segments


def _read_labels(path: Path, shape: Sequence[int] | None) -> np.ndarray:
    import nrrd

    data, header = nrrd.read(str(path), index_order="C")
    if data.ndim == 2:
        data = data[np.newaxis]
    # A Slicer segmentation with overlapping segments stores layers along its first file axis (last here).
    layers = data if data.ndim == 4 else data[..., np.newaxis]
    segments = _segments(header)
    if segments:
        # Segments are matched by name, so the labels follow labels.csv whatever values the file uses.
        values = {description.name: description.value for description in load_label_descriptions()}
        labels = np.zeros(layers.shape[:3], dtype=np.uint8)
        for name, label_value, layer in segments:
            labels[layers[..., layer] == label_value] = values.get(name, label_value)
    else:
        labels = layers[..., 0].astype(np.uint8)
    if shape is None or tuple(labels.shape) == tuple(shape):
        return labels
    # Slicer may crop a segmentation to its content; the offset says where the stored box lies.
    offset_ijk = [int(v) for v in str(header.get("Segmentation_ReferenceImageExtentOffset", "0 0 0")).split()]
    start = offset_ijk[::-1]  # (frame, row, column)
    stop = [begin + size for begin, size in zip(start, labels.shape)]
    if any(end > limit for end, limit in zip(stop, shape)):
        raise ValueError(
            f"{path}: segmentation of shape {labels.shape} at {start} does not fit the input {tuple(shape)}"
        )
    full = np.zeros(tuple(shape), dtype=np.uint8)
    full[tuple(slice(begin, end) for begin, end in zip(start, stop))] = labels
    return full


def read_result(
    output_dir: str | Path, input_stem: str, shape: Sequence[int] | None = None
) -> tuple[np.ndarray, list[dict]]:
    """Read what the bundle wrote for one input.

    Args:
        output_dir: the bundle's output folder.
        input_stem: file name of the input without its suffix.
        shape: ``(frames, rows, columns)`` of the input; a segmentation cropped to its content is put back in place.

    Returns:
        ``(labels, lesions)``: ``(frames, rows, columns)`` uint8 labels (0 background, 1 benign lesion,
        2 malignant lesion) and one dict per lesion (keys ``frame``, ``lesion_id``, ``class_name``, ``label``,
        ``confidence``, ``area_px``, ``area_mm2``, ``bbox_*``...).

    Raises:
        FileNotFoundError: a result file is missing.
        ValueError: the segmentation does not fit ``shape``.
    """
    segmentation_path, lesions_path = result_paths(output_dir, input_stem)
    for path in (segmentation_path, lesions_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the bundle did not write this result file")
    labels = _read_labels(segmentation_path, shape)
    with open(lesions_path, encoding="utf-8") as stream:
        lesions = json.load(stream)
    return labels, lesions
