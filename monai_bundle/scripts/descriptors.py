"""What a radiologist reads off a breast ultrasound lesion, computed from one lesion's segmentation mask.

Every value is a measurement of the segmentation, not of the lesion itself: a mask that misses part of the lesion
gives the measurements of what it holds. The ``suggested_*`` values name the ACR BI-RADS ultrasound lexicon term
that the measurements point to, by the fixed rules below; they are computed from the segmentation and are **not a
diagnosis**.

Geometry. Pixel ``(row, column)`` is the unit square centred on ``(row, column)``; rows grow downwards (depth) and
columns to the right. With a pixel spacing ``(row_mm, column_mm)`` every point is placed at ``(row * row_mm,
column * column_mm)`` mm, so anisotropic pixels are measured in true millimetres; without one the spacing is 1 and
the unit is the pixel. The lesion's **outline** is the polygon through the midpoints of the pixel sides between the
lesion and the background, joined across each pixel corner (marching squares at level one half, the two pixels of a
diagonal pair kept apart). Lengths are given in pixels (``*_px``, the length of the same segment counted in pixel
steps along rows and columns) and, when the spacing is known, in mm (``*_mm``); angles, ratios and shape measures
are computed in mm when the spacing is known.

- **Longest diameter**: the longest segment between two points of the outline (the outline's convex hull's
  diameter), with its end points.
- **Perpendicular diameter**: the longest extent of the outline across the longest diameter: the outline's points
  are grouped in strips one pixel wide perpendicular to the longest diameter, and the strip whose points spread
  furthest along that direction gives the segment (at the strip's centre line, end points at its extreme points).
- **Width** and **depth**: horizontal and vertical extent (columns and rows spanned, whole pixels);
  ``depth_to_width`` is depth over width ("taller than wide" above 1).
- **Fitted ellipse**: the ellipse with the same area centroid and second moments as the lesion's pixels (each pixel
  counted as its square); ``ellipse_major``/``ellipse_minor`` are its full axis lengths, ``orientation_deg`` the
  angle of its major axis from the horizontal (the skin line), in (-90, 90], positive when the axis rises to the
  right on screen.
- **Circularity**: 4 pi area / perimeter², of the outline: 1 for a perfect disc, about 0.9 for a disc drawn in
  pixels (the outline follows their staircase), lower for elongated or ragged outlines.
- **Solidity**: outline area over the area of its convex hull (1 - solidity is the convex-hull deficiency).
- **Margin irregularity**: coefficient of variation (standard deviation over mean) of the normalised radial length
  of the outline's points, where a point's radial length is normalised by the fitted ellipse's radius in the same
  direction from the centroid; a smooth oval therefore scores near 0 however elongated, and lobes, notches and
  spiculations raise it.
- **Posterior acoustic feature**: mean grey level of the band below the lesion (the lesion's columns, from the row
  under its bounding box down by the lesion's depth) over the mean of the bands beside it at the same depth (one
  lesion width on either side); ``None`` when a band falls outside the image.
- **Echogenicity**: mean grey level of the lesion over that of the surrounding tissue (the lesion's bounding box
  widened by a quarter of its size, at least 2 pixels, on each side, lesion pixels excluded).

Suggestions (thresholds fixed here, not fitted to data):

- orientation: "not parallel" when the major axis is closer to vertical than horizontal (``|orientation_deg|`` >
  45); for a nearly round fit (minor / major axis > 0.9), whose angle means little, when ``depth_to_width`` > 1;
  otherwise "parallel";
- shape: "irregular" when margin irregularity > 0.10 or solidity < 0.85, else "round" when minor / major axis
  > 0.9, else "oval";
- margin: "circumscribed" when margin irregularity <= 0.05 and solidity >= 0.90, else "not circumscribed";
- posterior: "enhancement" when the posterior ratio > 1.15, "shadowing" when < 0.85, else "none";
- echogenicity: "hypoechoic" when the echogenicity ratio < 0.8, "hyperechoic" when > 1.2, else "isoechoic".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
from scipy.spatial import ConvexHull

__all__ = ["DESCRIPTOR_COLUMNS", "LesionDescriptors", "describe_lesion"]

NOT_PARALLEL_ANGLE = 45.0
ROUND_AXIS_RATIO = 0.9
IRREGULAR_SHAPE = 0.10
IRREGULAR_SOLIDITY = 0.85
CIRCUMSCRIBED_IRREGULARITY = 0.05
CIRCUMSCRIBED_SOLIDITY = 0.90
ENHANCEMENT, SHADOWING = 1.15, 0.85
HYPOECHOIC, HYPERECHOIC = 0.8, 1.2

Point = tuple[float, float]


@dataclass(frozen=True)
class LesionDescriptors:
    """Descriptors of one lesion; see the module docstring for each definition.

    End points are ``(row, column)`` pixel coordinates of the image the mask came from; ``*_mm`` values are None
    without a pixel spacing, the acoustic values None without a grey image (or outside it).
    """

    longest_diameter_px: float
    longest_diameter_mm: float | None
    longest_diameter_ends: tuple[Point, Point]
    perpendicular_diameter_px: float
    perpendicular_diameter_mm: float | None
    perpendicular_diameter_ends: tuple[Point, Point]
    width_px: int
    width_mm: float | None
    depth_px: int
    depth_mm: float | None
    depth_to_width: float
    orientation_deg: float
    suggested_orientation: str
    ellipse_major_px: float
    ellipse_major_mm: float | None
    ellipse_minor_px: float
    ellipse_minor_mm: float | None
    circularity: float
    solidity: float
    margin_irregularity: float
    suggested_shape: str
    suggested_margin: str
    posterior_ratio: float | None
    suggested_posterior: str | None
    echogenicity_ratio: float | None
    suggested_echogenicity: str | None

    def to_row(self) -> dict:
        """Flat ``{column: value}`` in the order of :data:`DESCRIPTOR_COLUMNS` (end points as four columns each)."""
        row = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name.endswith("_ends"):
                row.update(zip(_end_columns(field.name), (coordinate for point in value for coordinate in point)))
            else:
                row[field.name] = value
        return row


def _end_columns(name: str) -> tuple[str, ...]:
    """Table columns of the end points ``<name>`` (``longest_diameter_ends`` -> ``longest_diameter_row0``, ...)."""
    prefix = name[: -len("_ends")]
    return tuple(f"{prefix}_{end}" for end in ("row0", "col0", "row1", "col1"))


DESCRIPTOR_COLUMNS = tuple(
    column
    for field in fields(LesionDescriptors)
    for column in (_end_columns(field.name) if field.name.endswith("_ends") else (field.name,))
)


# Marching squares on the 2x2 cells of pixel centres, each cell coded by which of its corners are lesion pixels
# (1 top left, 2 top right, 4 bottom left, 8 bottom right): the outline's pieces in each kind of cell. Diagonal pairs
# (codes 6 and 9) keep their two pixels apart, so they cut two corners.
_CORNER_CUTS = np.array([0, 1, 1, 0, 1, 0, 2, 1, 1, 2, 0, 1, 0, 1, 1, 0])
_HORIZONTAL = np.array([0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0])  # top pair in, bottom pair out, or reverse
_VERTICAL = np.array([0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0])
_EIGHTHS_INSIDE = np.array([0, 1, 1, 4, 1, 4, 2, 7, 1, 2, 4, 7, 4, 7, 7, 8])


def _outline(padded: np.ndarray, row_mm: float, col_mm: float) -> tuple[np.ndarray, float, float]:
    """Vertices ``(k, 2)`` (row, column, in the unpadded crop's pixel coordinates), area and perimeter (in mm², mm
    or pixel units) of the marching-squares outline of the zero-padded mask ``padded``."""
    inner = padded[1:-1, 1:-1]
    up, down, left, right = padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]
    rows, cols = np.nonzero(inner & ~(up & down & left & right))  # pixels with a side on the background
    vertices = []
    # a vertex at the midpoint of each pixel side between the lesion and the background
    for neighbour, (d_row, d_col) in ((up, (-0.5, 0.0)), (down, (0.5, 0.0)), (left, (0.0, -0.5)), (right, (0.0, 0.5))):
        side = ~neighbour[rows, cols]
        vertices.append(np.column_stack([rows[side] + d_row, cols[side] + d_col]))
    codes = padded[:-1, :-1] + 2 * padded[:-1, 1:].view(np.uint8) + 4 * padded[1:, :-1].view(np.uint8)
    codes += 8 * padded[1:, 1:].view(np.uint8)
    # counted only where the outline passes, cheaper than over the whole box; all-inside cells are just counted
    cells = np.bincount(codes[(codes != 0) & (codes != 15)], minlength=16)
    cells[15] = np.count_nonzero(codes == 15)
    perimeter = cells @ (_CORNER_CUTS * 0.5 * math.hypot(row_mm, col_mm) + _HORIZONTAL * col_mm + _VERTICAL * row_mm)
    area = cells @ _EIGHTHS_INSIDE / 8 * row_mm * col_mm
    return np.concatenate(vertices), float(area), float(perimeter)


def _pixel_length(vector: np.ndarray, row_mm: float, col_mm: float) -> float:
    """Length in pixel steps of a (row, column) mm vector."""
    return float(math.hypot(vector[0] / row_mm, vector[1] / col_mm))


def _ratio(inner: float | None, outer: float | None) -> float | None:
    return inner / outer if inner is not None and outer is not None and outer > 0 else None


def _acoustic(crop: np.ndarray, grey: np.ndarray, box: tuple[int, int, int, int]) -> tuple[float | None, float | None]:
    """Posterior and echogenicity ratios of the lesion ``crop`` (its bounding-box crop) in ``grey``, the whole image;
    ``box`` is the bounding box (row0, col0, row1, col1), inclusive."""
    row0, col0, row1, col1 = box
    rows, columns = grey.shape
    depth, width = row1 - row0 + 1, col1 - col0 + 1
    band = slice(row1 + 1, min(rows, row1 + 1 + depth))
    below = grey[band, col0 : col1 + 1]
    beside = [grey[band, max(0, col0 - width) : col0], grey[band, col1 + 1 : min(columns, col1 + 1 + width)]]
    posterior = None
    if below.shape[0] == depth and all(side.shape[1] == width for side in beside):  # the whole band is in the image
        posterior = _ratio(float(below.mean()), float(sum(side.sum() for side in beside)) / (2 * depth * width))
    margin_rows, margin_cols = max(2, math.ceil(depth / 4)), max(2, math.ceil(width / 4))
    around = grey[
        max(0, row0 - margin_rows) : row1 + 1 + margin_rows, max(0, col0 - margin_cols) : col1 + 1 + margin_cols
    ]
    # sums rather than masks: the window holds the whole lesion, so the tissue is the window less the lesion
    count = int(np.count_nonzero(crop))
    lesion_sum = float(np.sum(grey[row0 : row1 + 1, col0 : col1 + 1], where=crop))
    tissue = around.size - count
    echogenicity = _ratio(lesion_sum / count, (float(around.sum()) - lesion_sum) / tissue if tissue else None)
    return posterior, echogenicity


def _suggest(value: float | None, low: float, high: float, names: tuple[str, str, str]) -> str | None:
    if value is None:
        return None
    return names[0] if value < low else names[2] if value > high else names[1]


def describe_lesion(
    mask: np.ndarray, grey: np.ndarray | None = None, spacing: tuple[float, float] | None = None
) -> LesionDescriptors:
    """Descriptors of the lesion ``mask``; see the module docstring for the definitions.

    Args:
        mask: (rows, columns) boolean mask of one lesion (all of it: any True pixel counts).
        grey: (rows, columns) grey image the lesion was segmented on, for the acoustic features; None to skip them.
        spacing: (row, column) pixel size in mm; None when unknown.

    Raises:
        ValueError: an empty or non-2D mask, a grey image of another shape, or a spacing that is not two positive
            numbers.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2 or not mask.any():
        raise ValueError(f"a lesion mask must be 2D with at least one pixel, got shape {mask.shape}")
    if grey is not None and np.shape(grey) != mask.shape:
        raise ValueError(f"grey image of shape {np.shape(grey)} does not match the mask {mask.shape}")
    if spacing is not None and (len(spacing) != 2 or not all(np.isfinite(spacing)) or min(spacing) <= 0):
        raise ValueError(f"spacing must be two positive numbers (row, column) in mm, got {spacing!r}")
    row_mm, col_mm = (float(s) for s in spacing) if spacing is not None else (1.0, 1.0)
    in_mm = spacing is not None
    scale = np.array([row_mm, col_mm])

    rows_in, cols_in = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    box = (int(rows_in[0]), int(cols_in[0]), int(rows_in[-1]), int(cols_in[-1]))
    crop = mask[box[0] : box[2] + 1, box[1] : box[3] + 1]
    vertices, area, perimeter = _outline(np.pad(crop, 1), row_mm, col_mm)
    points = vertices * scale  # mm (or pixels)

    # fitted ellipse: second moments of the pixel squares (a square adds 1/12 of its side squared per axis)
    # (from the row and column sums: the pixels themselves are never listed, which large lesions would make slow)
    row_index, col_index = np.arange(crop.shape[0], dtype=np.float64), np.arange(crop.shape[1], dtype=np.float64)
    row_counts, col_counts = np.count_nonzero(crop, axis=1), np.count_nonzero(crop, axis=0)
    count = float(row_counts.sum())
    mean_row, mean_col = row_index @ row_counts / count, col_index @ col_counts / count
    var_row = ((row_index - mean_row) ** 2 @ row_counts / count + 1 / 12) * row_mm**2
    var_col = ((col_index - mean_col) ** 2 @ col_counts / count + 1 / 12) * col_mm**2
    cov = ((row_index - mean_row) @ (crop.astype(np.float32) @ (col_index - mean_col).astype(np.float32)) / count)
    cov *= row_mm * col_mm
    centre = np.array([mean_row, mean_col]) * scale
    half_gap = math.hypot((var_col - var_row) / 2, cov)
    major_var, minor_var = (var_row + var_col) / 2 + half_gap, (var_row + var_col) / 2 - half_gap
    down_angle = 0.5 * math.atan2(2 * cov, var_col - var_row)  # of the major axis, rows growing downwards
    major_axis = np.array([math.sin(down_angle), math.cos(down_angle)])  # (row, column)
    minor_axis = np.array([major_axis[1], -major_axis[0]])
    major, minor = 4 * math.sqrt(major_var), 4 * math.sqrt(max(minor_var, 0.0))
    orientation = -math.degrees(down_angle)
    orientation = orientation - 180 if orientation > 90 else orientation + 180 if orientation <= -90 else orientation

    # longest diameter: the farthest pair of the outline's convex hull
    hull = ConvexHull(points)
    corners = points[hull.vertices]
    gaps = np.linalg.norm(corners[:, np.newaxis] - corners[np.newaxis], axis=2)
    first, second = np.unravel_index(np.argmax(gaps), gaps.shape)
    start, end = corners[first], corners[second]
    longest = float(gaps[first, second])
    along = (end - start) / longest
    across = np.array([along[1], -along[0]])

    # perpendicular diameter: the widest one-pixel strip across the longest diameter
    strip_width = max(row_mm, col_mm)
    u, v = (points - start) @ along, (points - start) @ across
    strips = np.floor(u / strip_width).astype(np.int64)
    order = np.argsort(strips, kind="stable")
    strips, v = strips[order], v[order]
    starts = np.flatnonzero(np.r_[True, strips[1:] != strips[:-1]])
    low, high = np.minimum.reduceat(v, starts), np.maximum.reduceat(v, starts)
    widest = int(np.argmax(high - low))
    centre_line = start + (strips[starts[widest]] + 0.5) * strip_width * along
    cross_ends = (centre_line + low[widest] * across, centre_line + high[widest] * across)
    perpendicular = float(high[widest] - low[widest])

    # normalised radial length: each outline point's distance from the centroid over the ellipse's radius there
    offsets = points - centre
    radial = np.hypot(offsets @ major_axis / (major / 2), offsets @ minor_axis / max(minor / 2, 1e-9))
    irregularity = float(radial.std() / radial.mean())
    solidity = float(min(1.0, area / hull.volume))
    circularity = float(4 * math.pi * area / perimeter**2)

    width, depth = box[3] - box[1] + 1, box[2] - box[0] + 1
    depth_to_width = depth * row_mm / (width * col_mm)
    axis_ratio = minor / major
    if axis_ratio > ROUND_AXIS_RATIO:
        taller = depth_to_width > 1
    else:
        taller = abs(orientation) > NOT_PARALLEL_ANGLE
    if irregularity > IRREGULAR_SHAPE or solidity < IRREGULAR_SOLIDITY:
        shape = "irregular"
    else:
        shape = "round" if axis_ratio > ROUND_AXIS_RATIO else "oval"
    circumscribed = irregularity <= CIRCUMSCRIBED_IRREGULARITY and solidity >= CIRCUMSCRIBED_SOLIDITY

    posterior = echogenicity = None
    if grey is not None:
        posterior, echogenicity = _acoustic(crop, np.asarray(grey, dtype=np.float32), box)

    def mm(value: float) -> float | None:
        return float(value) if in_mm else None

    def ends(pair: tuple[np.ndarray, np.ndarray]) -> tuple[Point, Point]:
        return tuple((float(p[0] / row_mm + box[0]), float(p[1] / col_mm + box[1])) for p in pair)

    return LesionDescriptors(
        longest_diameter_px=_pixel_length(end - start, row_mm, col_mm),
        longest_diameter_mm=mm(longest),
        longest_diameter_ends=ends((start, end)),
        perpendicular_diameter_px=_pixel_length(cross_ends[1] - cross_ends[0], row_mm, col_mm),
        perpendicular_diameter_mm=mm(perpendicular),
        perpendicular_diameter_ends=ends(cross_ends),
        width_px=width,
        width_mm=mm(width * col_mm),
        depth_px=depth,
        depth_mm=mm(depth * row_mm),
        depth_to_width=float(depth_to_width),
        orientation_deg=float(orientation),
        suggested_orientation="not parallel" if taller else "parallel",
        ellipse_major_px=_pixel_length(major * major_axis, row_mm, col_mm),
        ellipse_major_mm=mm(major),
        ellipse_minor_px=_pixel_length(minor * minor_axis, row_mm, col_mm),
        ellipse_minor_mm=mm(minor),
        circularity=circularity,
        solidity=solidity,
        margin_irregularity=irregularity,
        suggested_shape=shape,
        suggested_margin="circumscribed" if circumscribed else "not circumscribed",
        posterior_ratio=posterior,
        suggested_posterior=_suggest(posterior, SHADOWING, ENHANCEMENT, ("shadowing", "none", "enhancement")),
        echogenicity_ratio=echogenicity,
        suggested_echogenicity=_suggest(
            echogenicity, HYPOECHOIC, HYPERECHOIC, ("hypoechoic", "isoechoic", "hyperechoic")
        ),
    )
