"""Write the segmentation of one input file: label maps aligned with the input, a lesion table and an overlay picture.

Formats (``formats`` argument of :func:`write_outputs`):

- ``png``: ``<stem>_seg.png``, 8-bit label map (0 background, 1 benign, 2 malignant) of the input's size;
  ``<stem>_seg_f0000.png``... for multi-frame inputs.
- ``nifti``: ``<stem>_seg.nii.gz``, the label map with the input geometry (RAS affine).
- ``seg.nrrd``: ``<stem>_seg.seg.nrrd``, a 3D Slicer segmentation with coded, coloured segments.
- ``dicom-seg``: ``<stem>_seg.dcm``, one BINARY DICOM Segmentation instance referencing the source instance (DICOM
  inputs only), with every frame of a multi-frame source (cine loop) in it; segments carry recommended display
  colours. A source without patient geometry is handled as :func:`scripts.dicom_seg.dicom_segmentation` describes.
- ``dicom-sr``: ``<stem>_sr.dcm``, a DICOM SR Measurement Report (TID 1500) of each lesion's diameters, extent and
  area, referencing the segments of the DICOM SEG written with it (:mod:`scripts.dicom_sr`); DICOM inputs only, and
  only together with ``dicom-seg``.

Segment names, colours and codes in every format come from the label vocabulary
(``configs/labels.json``, read by :func:`scripts.labels.load_vocabulary`).

Always written: ``<stem>_lesions.csv`` and ``<stem>_lesions.json``; ``<stem>_overlay.jpg`` unless turned off.

Every file is first written under a temporary name in the destination folder and renamed only when all of them
succeeded, so a failure leaves no partial outputs.

One module although long: the output names, the all-or-nothing writing and the per-format writers belong together
(the DICOM SEG, the one format with its own dependencies, is in :mod:`scripts.dicom_seg`).
"""

from __future__ import annotations

import csv
import glob
import json
import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import nibabel as nib
import numpy as np
import pydicom
import slicerio
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from scripts.descriptors import DESCRIPTOR_COLUMNS
from scripts.labels import Code, Label, load_vocabulary
from scripts.reader import UltrasoundImage, format_of

if TYPE_CHECKING:  # the writers only read the lesions' attributes; postprocess pulls in torch
    from scripts.postprocess import Lesion

__all__ = [
    "SegmentationResult",
    "SUPPORTED_FORMATS",
    "LESION_COLUMNS",
    "default_formats",
    "output_paths",
    "write_outputs",
]


def _unit_rgb(label: Label) -> tuple[float, float, float]:
    """The label's display colour as RGB in [0, 1] (the vocabulary stores 0-255)."""
    return tuple(channel / 255.0 for channel in label.color)


SUPPORTED_FORMATS = ("png", "nifti", "seg.nrrd", "dicom-seg", "dicom-sr")
LESION_COLUMNS = (
    "file",
    "frame",
    "lesion_id",
    "class_name",
    "label",
    "confidence",
    "area_px",
    "area_mm2",
    "bbox_row_min",
    "bbox_col_min",
    "bbox_row_max",
    "bbox_col_max",
    "peak_probability",
    "uncertainty",
    "review",
    "malignancy_probability",
    *DESCRIPTOR_COLUMNS,
)
DIAMETER_COLOUR = (255, 220, 0)  # yellow: stands out from the grey image and from both lesion colours


@dataclass
class SegmentationResult:
    """Segmentation of one input file.

    Args:
        image: the input as read by :func:`scripts.reader.read_image`.
        labels: (frames, rows, columns) uint8 label map, 0 background, 1 benign, 2 malignant.
        lesions: lesions of each frame.
    """

    image: UltrasoundImage
    labels: np.ndarray
    lesions: list[list[Lesion]]


def default_formats(image: UltrasoundImage) -> list[str]:
    """Label-map formats that suit the input: the format the input's viewer opens best.

    Args:
        image: the input image.

    Returns:
        ["png"] for pictures, ["dicom-seg", "dicom-sr", "nifti"] for DICOM, ["seg.nrrd"] for NRRD and ["nifti"]
        for NIfTI and MetaImage inputs.
    """
    if image.kind == "dicom":
        return ["dicom-seg", "dicom-sr", "nifti"]
    if image.kind == "picture":
        return ["png"]
    return ["seg.nrrd"] if format_of(image.path) == "nrrd" else ["nifti"]


def ijk_to_lps(image: UltrasoundImage) -> np.ndarray:
    """4x4 matrix from (column, row, frame, 1) indices to LPS mm; unknown geometry is 1 mm, identity, origin 0."""
    row_mm, col_mm = image.spacing or (1.0, 1.0)
    direction = np.eye(3) if image.direction is None else np.asarray(image.direction, dtype=np.float64)
    matrix = np.eye(4)
    matrix[:3, :3] = direction * np.array([col_mm, row_mm, image.frame_spacing or 1.0])
    if image.origin is not None:
        matrix[:3, 3] = image.origin
    return matrix


def _frame_suffixes(count: int) -> list[str]:
    return [""] if count == 1 else [f"_f{frame:04d}" for frame in range(count)]


def output_paths(
    result: SegmentationResult, output_stem: Path, formats: Sequence[str], overlay: bool = True
) -> list[Path]:
    """Files :func:`write_outputs` writes, in order; see there for the arguments."""
    stem = Path(output_stem)
    count = result.image.num_frames
    paths = []
    for name in formats:
        if name == "png":
            paths += [stem.with_name(f"{stem.name}_seg{suffix}.png") for suffix in _frame_suffixes(count)]
        elif name == "nifti":
            paths.append(stem.with_name(f"{stem.name}_seg.nii.gz"))
        elif name == "seg.nrrd":
            paths.append(stem.with_name(f"{stem.name}_seg.seg.nrrd"))
        elif name == "dicom-seg":
            paths.append(stem.with_name(f"{stem.name}_seg.dcm"))
            if "dicom-sr" in formats:  # written with the SEG it references
                paths.append(stem.with_name(f"{stem.name}_sr.dcm"))
    paths += [stem.with_name(f"{stem.name}_{name}") for name in ("lesions.csv", "lesions.json")]
    return paths + ([stem.with_name(f"{stem.name}_overlay.jpg")] if overlay else [])


def applicable_formats(image: UltrasoundImage, requested: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """The requested formats that can be written for ``image``, and ``(format, reason)`` for the others."""
    dicom = ("dicom-seg", "dicom-sr")
    if not isinstance(image.source, pydicom.Dataset):
        skipped = [(name, f"needs a DICOM input, this is a {image.kind}") for name in requested if name in dicom]
        return [name for name in requested if name not in dicom], skipped
    if "dicom-sr" in requested and "dicom-seg" not in requested:
        kept = [name for name in requested if name != "dicom-sr"]
        return kept, [("dicom-sr", "needs dicom-seg, which it references")]
    return list(requested), []


def earlier_outputs(output_stem: Path) -> list[Path]:
    """Files in ``output_stem``'s folder that :func:`write_outputs` may have written for that stem, in any format."""
    stem = Path(output_stem)
    if not stem.parent.is_dir():
        return []
    frame = re.compile(re.escape(stem.name) + r"_seg(_f\d{4})?\.(png|dcm)$")
    # overlay.png: what earlier versions wrote
    suffixes = ("seg.nii.gz", "seg.seg.nrrd", "sr.dcm", "lesions.csv", "lesions.json", "overlay.jpg", "overlay.png")
    fixed = {f"{stem.name}_{suffix}" for suffix in suffixes}
    # matched by name before any file-system call: a folder of many results is listed, not stat'ed file by file
    candidates = stem.parent.glob(glob.escape(stem.name) + "_*")
    return sorted(p for p in candidates if (p.name in fixed or frame.match(p.name)) and p.is_file())


def remove_earlier_outputs(output_stem: Path, keep: Sequence[Path]) -> list[Path]:
    """Remove the files of :func:`earlier_outputs` that are not in ``keep``; returns those removed.

    Run after writing an input's results, so that its folder never mixes them with those of an earlier run (a
    two-frame run's ``_seg_f0000.dcm`` next to a one-frame run's ``_seg.dcm``). Other inputs' files are untouched.
    """
    kept = {Path(path).resolve() for path in keep}
    removed = [path for path in earlier_outputs(output_stem) if path.resolve() not in kept]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def _write_png(result: SegmentationResult, paths: list[Path]) -> None:
    for frame, path in zip(result.labels, paths):
        Image.fromarray(frame, mode="L").save(path, format="PNG", compress_level=1)


def _write_nifti(result: SegmentationResult, paths: list[Path]) -> None:
    # NIfTI is RAS: flip the first two world axes of the LPS geometry.
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_lps(result.image)
    data = np.transpose(result.labels, (2, 1, 0))  # (column, row, frame) = NIfTI (i, j, k)
    nifti = nib.Nifti1Image(data[..., 0] if data.shape[2] == 1 else data, affine)
    nifti.set_qform(affine, code=1)
    nifti.set_sform(affine, code=1)
    nifti.header.set_xyzt_units("mm")
    nib.save(nifti, paths[0])


def _slicer_code(code: Code) -> list[str]:
    return [code.scheme, code.value, code.meaning]


def _write_seg_nrrd(result: SegmentationResult, paths: list[Path]) -> None:
    vocabulary = load_vocabulary()
    voxels = np.ascontiguousarray(np.transpose(result.labels, (2, 1, 0)))  # (i, j, k) as Slicer stores it
    segments = []
    for label in vocabulary.lesions:
        mask = voxels == label.value
        indices = np.nonzero(mask)
        # Slicer marks an empty segment with an empty extent.
        extent = [int(v) for axis in indices for v in (axis.min(), axis.max())] if mask.any() else [0, -1] * 3
        segments.append(
            {
                "id": f"Segment_{label.value}",
                "name": label.name,
                "labelValue": label.value,
                "layer": 0,
                "color": list(_unit_rgb(label)),
                "extent": extent,
                "terminology": {
                    "contextName": vocabulary.terminology_context,
                    "category": _slicer_code(vocabulary.category),
                    "type": _slicer_code(label.type),
                    "anatomicContextName": vocabulary.anatomic_context,
                    "anatomicRegion": _slicer_code(vocabulary.anatomic_region),
                },
            }
        )
    segmentation = {"voxels": voxels, "ijkToLPS": ijk_to_lps(result.image), "segments": segments, "encoding": "gzip"}
    slicerio.write_segmentation(str(paths[0]), segmentation)


def _write_dicom_seg(result: SegmentationResult, paths: list[Path]) -> None:
    """The DICOM SEG in ``paths[0]`` and, when a second path is given, the DICOM SR that references it."""
    # imported here: DICOM SEG and SR need highdicom and pydicom 3, which nothing else of the inference does
    from scripts.dicom_seg import dicom_segmentation

    try:
        seg = dicom_segmentation(result.image.source, result.labels)
    except (ValueError, TypeError, AttributeError) as error:
        raise ValueError(f"{result.image.path}: cannot build a DICOM SEG ({error})") from error
    seg.save_as(paths[0])
    if len(paths) > 1:
        from scripts.dicom_sr import measurement_report

        try:
            sr = measurement_report(result.image.source, seg, result.lesions, result.image.spacing)
        except (ValueError, TypeError, AttributeError) as error:
            raise ValueError(f"{result.image.path}: cannot build a DICOM SR ({error})") from error
        sr.save_as(paths[1])


def _lesion_rows(result: SegmentationResult) -> list[dict]:
    spacing = result.image.spacing
    rows = []
    for frame, lesions in enumerate(result.lesions):
        for lesion in lesions:
            rows.append(
                {
                    "file": str(result.image.path),
                    "frame": frame,
                    "lesion_id": lesion.lesion_id,
                    "class_name": lesion.class_name,
                    "label": lesion.label,
                    "confidence": lesion.confidence,
                    "area_px": lesion.area_px,
                    "area_mm2": None if spacing is None else lesion.area_px * spacing[0] * spacing[1],
                    "bbox_row_min": lesion.bbox[0],
                    "bbox_col_min": lesion.bbox[1],
                    "bbox_row_max": lesion.bbox[2],
                    "bbox_col_max": lesion.bbox[3],
                    "peak_probability": lesion.peak_probability,
                    "uncertainty": lesion.uncertainty,
                    "review": lesion.review,
                    "malignancy_probability": lesion.malignancy_probability,
                    **(lesion.descriptors.to_row() if lesion.descriptors else dict.fromkeys(DESCRIPTOR_COLUMNS)),
                }
            )
    return rows


def _write_tables(result: SegmentationResult, paths: list[Path]) -> None:
    rows = _lesion_rows(result)
    with open(paths[0], "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=LESION_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)  # None is written as an empty cell
    with open(paths[1], "w", encoding="utf-8") as stream:
        json.dump(rows, stream, indent=2)


def _length_text(millimetres: float | None, pixels: float) -> str:
    return f"{millimetres:.1f} mm" if millimetres is not None else f"{pixels:.0f} px"


def overlay_picture(grey: np.ndarray, labels: np.ndarray, lesions: Sequence[Lesion] = ()) -> np.ndarray:
    """RGB picture of one frame with each lesion's outline, its two diameters and a label, for people to look at.

    The lesions are outlined, not filled, so that the texture inside stays visible. For each lesion of
    ``lesions`` that has descriptors, the longest diameter and the longest one perpendicular to it are drawn with
    their lengths (mm when the frame's pixel size is known, else pixels), and a label gives the class, the mean
    class probability and, for a lesion flagged for review, "review".

    Args:
        grey: (rows, columns) grey frame in any intensity scale.
        labels: (rows, columns) label map.
        lesions: the frame's lesions, as measured on ``labels``.

    Returns:
        (rows, columns, 3) uint8 picture.
    """
    # Robust display range: a few saturated pixels (text, markers) must not darken the image.
    # (estimated on every 4th row and column: the full-frame sort would cost more than the rest of the overlay)
    low, high = (float(v) for v in np.percentile(grey[::4, ::4], (0.5, 99.5)))
    shown = np.clip((grey - low) * (255.0 / max(high - low, 1e-6)) + 0.5, 0, 255).astype(np.uint8)
    picture = np.repeat(shown[..., np.newaxis], 3, axis=2)
    thickness = max(1, min(grey.shape) // 300)
    for label in load_vocabulary().lesions:
        mask = labels == label.value
        rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if not rows.size:
            continue
        # only inside the label's bounding box: the erosion sees nothing but zeros beyond it either way
        box = (slice(rows[0], rows[-1] + 1), slice(columns[0], columns[-1] + 1))
        inside = mask[box]
        picture[box][inside & ~ndimage.binary_erosion(inside, iterations=thickness)] = label.color
    measured = [lesion for lesion in lesions if lesion.descriptors is not None]
    if not measured:
        return picture
    image = Image.fromarray(picture, mode="RGB")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(11, min(grey.shape) // 35))
    colours = {label.value: label.color for label in load_vocabulary().lesions}
    for lesion in measured:
        d = lesion.descriptors
        for ends, text in (
            (d.longest_diameter_ends, _length_text(d.longest_diameter_mm, d.longest_diameter_px)),
            (d.perpendicular_diameter_ends, _length_text(d.perpendicular_diameter_mm, d.perpendicular_diameter_px)),
        ):
            (row0, col0), (row1, col1) = ends
            draw.line([(col0, row0), (col1, row1)], fill=DIAMETER_COLOUR, width=thickness)
            # the length next to the end further right, where it least covers the lesion
            row, col = max(ends, key=lambda end: end[1])
            draw.text((col + 3 * thickness, row), text, fill=DIAMETER_COLOUR, font=font, anchor="lm",
                      stroke_width=1, stroke_fill=(0, 0, 0))
        caption = f"{lesion.lesion_id} {lesion.class_name} {lesion.confidence:.2f}"
        caption += " review" if lesion.review else ""
        row_min, col_min, row_max, _ = lesion.bbox
        # above the lesion, or below it when there is no room above
        above = row_min > 1.5 * font.size
        place = (col_min, row_min - 2 * thickness) if above else (col_min, row_max + 2 * thickness)
        draw.text(place, caption, fill=tuple(colours[lesion.label]), font=font, anchor="ld" if above else "lt",
                  stroke_width=1, stroke_fill=(0, 0, 0))
    return np.asarray(image)


def _write_overlay(result: SegmentationResult, paths: list[Path]) -> None:
    with_lesion = np.flatnonzero(result.labels.reshape(result.labels.shape[0], -1).any(axis=1))
    frame = int(with_lesion[0]) if with_lesion.size else 0
    picture = overlay_picture(result.image.frames[frame], result.labels[frame], result.lesions[frame])
    # The overlay is for people to look at, not for measuring: JPEG encodes it in about 1 ms, where even the
    # fastest PNG compression took 10-13 ms per BUSI-sized picture, more than the rest of the work around the network.
    Image.fromarray(picture, mode="RGB").save(paths[0], format="JPEG", quality=90)


def _check(result: SegmentationResult, formats: Sequence[str]) -> None:
    unknown = [name for name in formats if name not in SUPPORTED_FORMATS]
    if unknown:
        raise ValueError(f"unknown output formats {unknown}; supported: {list(SUPPORTED_FORMATS)}")
    image = result.image
    labels = result.labels
    if labels.shape != image.frames.shape:
        raise ValueError(f"{image.path}: label map of shape {labels.shape} does not match image {image.frames.shape}")
    highest = max(label.value for label in load_vocabulary().labels)
    if labels.dtype != np.uint8 or labels.max(initial=0) > highest:
        raise ValueError(f"{image.path}: label map must be uint8 with values 0 to {highest}")
    if len(result.lesions) != image.num_frames:
        raise ValueError(f"{image.path}: {len(result.lesions)} lesion lists for {image.num_frames} frames")
    if {"dicom-seg", "dicom-sr"} & set(formats) and not isinstance(image.source, pydicom.Dataset):
        raise ValueError(f"{image.path}: a DICOM SEG or SR can only be written for a DICOM input, not a {image.kind}")
    if "dicom-sr" in formats and "dicom-seg" not in formats:
        raise ValueError(f"{image.path}: a DICOM SR is written with the DICOM SEG it references: add dicom-seg")


def write_outputs(
    result: SegmentationResult, output_stem: Path, formats: Sequence[str], overlay: bool = True
) -> list[Path]:
    """Write the label maps, lesion tables and overlay of one segmented input.

    Args:
        result: the segmentation of one input file.
        output_stem: output path without suffix, e.g. ``out/sub/name`` for ``name.nii.gz``; parent folders are
            created.
        formats: label-map formats, a subset of :data:`SUPPORTED_FORMATS`.
        overlay: also write the overlay picture.

    Returns:
        the files written.

    Raises:
        ValueError: an unknown format, a label map that does not match the image, DICOM SEG asked for a non-DICOM
            input, or an output path that is the input file.
        OSError: a file could not be written; no output of this call is left behind.
    """
    _check(result, formats)
    output_stem = Path(output_stem)
    paths = output_paths(result, output_stem, formats, overlay)
    source = Path(result.image.path).resolve()
    for path in paths:
        if path.resolve() == source:
            raise ValueError(f"{path}: output would overwrite the input file")

    count = result.image.num_frames
    groups: list[tuple[Callable[[SegmentationResult, list[Path]], None], int]] = []
    for name in formats:
        if name == "png":
            groups.append((_write_png, count))
        elif name == "nifti":
            groups.append((_write_nifti, 1))
        elif name == "seg.nrrd":
            groups.append((_write_seg_nrrd, 1))
        elif name == "dicom-seg":
            groups.append((_write_dicom_seg, 2 if "dicom-sr" in formats else 1))
    groups += [(_write_tables, 2)] + ([(_write_overlay, 1)] if overlay else [])

    output_stem.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:12]
    # Temporary names keep the final suffix, which the libraries use to pick the encoding (.nii.gz, .seg.nrrd).
    temporary = [path.with_name(f".{token}-{path.name}") for path in paths]
    try:
        start = 0
        for write, size in groups:
            write(result, temporary[start : start + size])
            start += size
        for temp, path in zip(temporary, paths):
            os.replace(temp, path)
    except BaseException:
        for temp in temporary:
            temp.unlink(missing_ok=True)
        raise
    return paths
