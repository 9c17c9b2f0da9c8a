"""What the module shows of the bundle's lesion table: the rows of its results table and the two diameters of each
lesion, placed on the image.

A lesion is one dict of the bundle's lesion table (``<stem>_lesions.json``). Its measurements and ``suggested_*``
terms are computed from the segmentation by the bundle's ``scripts/descriptors.py``; they describe the segmented
region and are not a diagnosis. A value the table leaves out (an older bundle, one view without an uncertainty) is
shown as an empty cell.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .volume_io import lesion_area_text

__all__ = ["LESION_TABLE_HEADERS", "DiameterLine", "diameter_lines", "lesion_table_row", "pixels_to_ras"]

LESION_TABLE_HEADERS = (
    "Frame", "Class", "Confidence", "Area", "Longest diameter", "Perpendicular diameter", "Depth/width",
    "Orientation", "Suggested orientation", "Suggested shape", "Suggested margin", "Uncertainty", "Review",
)  # fmt: skip

# Lesion table prefix of each diameter's columns, and its name on the image.
_DIAMETERS = (("longest_diameter", "longest diameter"), ("perpendicular_diameter", "perpendicular diameter"))


def _number_text(value: float | None, pattern: str) -> str:
    return "" if value is None else pattern.format(value)


def _length_text(lesion: dict, name: str) -> str:
    """Length ``name`` with its unit: mm when the image has a pixel size, else pixels (the bundle leaves ``*_mm``
    empty then), as :func:`lesion_area_text` does for the area."""
    if lesion.get(f"{name}_mm") is not None:
        return f"{lesion[f'{name}_mm']:.1f} mm"
    return _number_text(lesion.get(f"{name}_px"), "{:.1f} px")


def lesion_table_row(lesion: dict) -> list[str]:
    """The cells of one lesion in the results table, in the order of :data:`LESION_TABLE_HEADERS`."""
    review, orientation = lesion.get("review"), lesion.get("orientation_deg")
    return [
        str(lesion["frame"]),
        lesion["class_name"],
        f"{lesion['confidence']:.2f}",
        lesion_area_text(lesion),
        _length_text(lesion, "longest_diameter"),
        _length_text(lesion, "perpendicular_diameter"),
        _number_text(lesion.get("depth_to_width"), "{:.2f}"),
        "" if orientation is None else f"{round(orientation)}°",  # an int: a small negative angle is not "-0°"
        lesion.get("suggested_orientation") or "",
        lesion.get("suggested_shape") or "",
        lesion.get("suggested_margin") or "",
        _number_text(lesion.get("uncertainty"), "{:.3f}"),
        "" if review is None else ("yes" if review else "no"),
    ]


@dataclass(frozen=True)
class DiameterLine:
    """One diameter of a lesion: its name on the image and its end points, ``(row, column)`` pixel coordinates of
    the lesion's frame."""

    name: str
    ends: tuple[tuple[float, float], tuple[float, float]]


def diameter_lines(lesion: dict) -> list[DiameterLine]:
    """The longest and perpendicular diameters of a lesion, named after it ("Lesion 1 (frame 0) longest
    diameter"); a diameter without end points in the table is left out."""
    lines = []
    for prefix, title in _DIAMETERS:
        ends = [lesion.get(f"{prefix}_{end}") for end in ("row0", "col0", "row1", "col1")]
        if None in ends:
            continue
        row0, col0, row1, col1 = ends
        name = f"Lesion {lesion['lesion_id']} (frame {lesion['frame']}) {title}"
        lines.append(DiameterLine(name, ((row0, col0), (row1, col1))))
    return lines


def pixels_to_ras(points: Sequence[Sequence[float]], frame: int, ijk_to_ras: np.ndarray) -> np.ndarray:
    """RAS positions in mm of ``(row, column)`` pixel coordinates of one frame of a volume.

    Args:
        points: ``(row, column)`` pairs; pixel centres are whole numbers, as in the lesion table.
        frame: the frame's slice index (K) in the volume.
        ijk_to_ras: the volume's 4x4 IJK-to-RAS matrix; I runs along columns, J along rows, K along frames.

    Returns:
        ``(len(points), 3)`` RAS positions.
    """
    rows_columns = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    ijk = np.column_stack(
        [rows_columns[:, 1], rows_columns[:, 0], np.full(len(rows_columns), float(frame)), np.ones(len(rows_columns))]
    )
    return (ijk @ np.asarray(ijk_to_ras, dtype=np.float64).T)[:, :3]
