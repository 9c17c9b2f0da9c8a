"""Write the segmentation of one input file: label maps aligned with the input, a lesion table and an overlay picture.

Formats (``formats`` argument of :func:`write_outputs`):

- ``png``: ``<stem>_seg.png``, 8-bit label map (0 background, 1 benign, 2 malignant) of the input's size;
  ``<stem>_seg_f0000.png``... for multi-frame inputs.
- ``nifti``: ``<stem>_seg.nii.gz``, the label map with the input geometry (RAS affine).
- ``seg.nrrd``: ``<stem>_seg.seg.nrrd``, a 3D Slicer segmentation with coded, coloured segments.
- ``dicom-seg``: ``<stem>_seg.dcm``, a BINARY DICOM Segmentation referencing the source instance (DICOM inputs
  only). A multi-frame source without patient geometry (cine loops) gets one SEG instance per frame,
  ``<stem>_seg_f0000.dcm``..., all in one series, each referencing its source frame.

Always written: ``<stem>_lesions.csv``, ``<stem>_lesions.json`` and ``<stem>_overlay.png``.

Every file is first written under a temporary name in the destination folder and renamed only when all of them
succeeded, so a failure leaves no partial outputs.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import slicerio
from PIL import Image
from highdicom.spatial import get_image_coordinate_system
from pydicom.sr.codedict import codes
from scipy import ndimage

from scripts.reader import UltrasoundImage, format_of

if TYPE_CHECKING:  # the writers only read the lesions' attributes; postprocess pulls in torch
    from scripts.postprocess import Lesion

__all__ = [
    "SegmentationResult",
    "SEGMENTS",
    "SUPPORTED_FORMATS",
    "LESION_COLUMNS",
    "default_formats",
    "output_paths",
    "write_outputs",
]


@dataclass(frozen=True)
class SegmentInfo:
    """Name, colour and SNOMED CT coding of one label value."""

    label: int
    name: str
    color: tuple[float, float, float]
    type_code: tuple[str, str, str]


# The single definition of what the label values mean, how they look and how they are coded in every format.
ALGORITHM_NAME = "BUSI residual U-Net"
CATEGORY_CODE = ("SCT", "49755003", "Morphologically Abnormal Structure")
SEGMENTS = (
    SegmentInfo(1, "Benign lesion", (0.2, 0.8, 0.3), ("SCT", "3898006", "Neoplasm, benign")),
    SegmentInfo(2, "Malignant lesion", (0.9, 0.15, 0.15), ("SCT", "86049000", "Malignant neoplasm, primary")),
)
# 3D Slicer's context for category/type terminology entries.
TERMINOLOGY_CONTEXT = "Segmentation category and type - DICOM master list"

SUPPORTED_FORMATS = ("png", "nifti", "seg.nrrd", "dicom-seg")
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
)
OVERLAY_OPACITY = 0.35


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


@functools.lru_cache(maxsize=1)
def _bundle_version() -> str:
    """Version of the bundle from its metadata, written into DICOM SEG files."""
    try:
        with open(Path(__file__).resolve().parents[1] / "configs" / "metadata.json", encoding="utf-8") as stream:
            return str(json.load(stream)["version"])
    except (OSError, ValueError, KeyError):
        return "unknown"


def default_formats(image: UltrasoundImage) -> list[str]:
    """Label-map formats that suit the input: the format the input's viewer opens best.

    Args:
        image: the input image.

    Returns:
        ["png"] for pictures, ["dicom-seg", "nifti"] for DICOM, ["seg.nrrd"] for NRRD and ["nifti"] for
        NIfTI and MetaImage inputs.
    """
    if image.kind == "dicom":
        return ["dicom-seg", "nifti"]
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


def _dicom_seg_per_frame(image: UltrasoundImage) -> bool:
    """Whether the DICOM SEG is written as one instance per source frame.

    highdicom encodes the frames of a multi-frame source only by their position in a patient coordinate system;
    cine loops and most ultrasound files have none, so each frame gets its own SEG instance referencing that frame.
    """
    ds = image.source
    has_positions = get_image_coordinate_system(ds) is not None
    return not has_positions and (image.num_frames > 1 or "NumberOfFrames" in ds)


def output_paths(result: SegmentationResult, output_stem: Path, formats: Sequence[str]) -> list[Path]:
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
            per_frame = _dicom_seg_per_frame(result.image)
            suffixes = _frame_suffixes(count if per_frame else 1)
            paths += [stem.with_name(f"{stem.name}_seg{suffix}.dcm") for suffix in suffixes]
    paths += [stem.with_name(f"{stem.name}_{name}") for name in ("lesions.csv", "lesions.json", "overlay.png")]
    return paths


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


def _write_seg_nrrd(result: SegmentationResult, paths: list[Path]) -> None:
    voxels = np.ascontiguousarray(np.transpose(result.labels, (2, 1, 0)))  # (i, j, k) as Slicer stores it
    segments = []
    for info in SEGMENTS:
        mask = voxels == info.label
        indices = np.nonzero(mask)
        # Slicer marks an empty segment with an empty extent.
        extent = [int(v) for axis in indices for v in (axis.min(), axis.max())] if mask.any() else [0, -1] * 3
        segments.append(
            {
                "id": f"Segment_{info.label}",
                "name": info.name,
                "labelValue": info.label,
                "layer": 0,
                "color": list(info.color),
                "extent": extent,
                "terminology": {
                    "contextName": TERMINOLOGY_CONTEXT,
                    "category": list(CATEGORY_CODE),
                    "type": list(info.type_code),
                },
            }
        )
    segmentation = {"voxels": voxels, "ijkToLPS": ijk_to_lps(result.image), "segments": segments, "encoding": "gzip"}
    slicerio.write_segmentation(str(paths[0]), segmentation)


def _segment_descriptions() -> list[hd.seg.SegmentDescription]:
    algorithm = hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME, version=_bundle_version(), family=codes.cid7162.ArtificialIntelligence
    )
    category = hd.sr.CodedConcept(CATEGORY_CODE[1], CATEGORY_CODE[0], CATEGORY_CODE[2])
    return [
        hd.seg.SegmentDescription(
            segment_number=info.label,
            segment_label=info.name,
            segmented_property_category=category,
            segmented_property_type=hd.sr.CodedConcept(info.type_code[1], info.type_code[0], info.type_code[2]),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for info in SEGMENTS
    ]


def _repaired_date_time(element: pydicom.DataElement) -> str:
    """A DA or TM value in the DICOM form (``20040826``, ``140438``), or "" when it has no such form."""
    text = str(element.value).strip()
    if element.VR == "DA":
        text, parse = "".join(character for character in text if character.isdigit()), pydicom.valuerep.DA
    else:
        text, parse = text.replace(":", ""), pydicom.valuerep.TM
    with warnings.catch_warnings():
        # pydicom accepts some legacy forms with a warning only; those are not valid DICOM either.
        warnings.simplefilter("error")
        try:
            parse(text)
        except (ValueError, UserWarning):
            return ""
    return text


def _seg_source(ds: pydicom.Dataset, single_frame: bool) -> pydicom.Dataset:
    """Metadata-only copy of the source that highdicom accepts; the source dataset itself is not changed.

    Args:
        ds: the source dataset.
        single_frame: present the source as a single-frame ultrasound image (one SEG per source frame).
    """
    pixel_tags = {0x7FE00010, 0x7FE00008, 0x7FE00009}
    copy = pydicom.Dataset({element.tag: element for element in ds if element.tag not in pixel_tags})
    copy.file_meta = ds.file_meta
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        if keyword not in ds:
            raise ValueError(f"source DICOM has no {keyword}: a DICOM SEG cannot reference it")
    # Type 2 attributes may be empty but highdicom copies them, so they must exist.
    type2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID")
    for keyword in type2 + ("AccessionNumber", "ReferringPhysicianName"):
        if keyword not in copy:
            setattr(copy, keyword, "")
    for element in list(copy):
        # Dates and times written with separators ("14:04:38") are common but not valid DICOM; highdicom refuses
        # them, so they are repaired on the copy, or emptied when they cannot be.
        if element.VR in ("DA", "TM") and element.VM == 1 and element.value:
            copy[element.tag] = pydicom.DataElement(element.tag, element.VR, _repaired_date_time(element))
    if single_frame:
        # highdicom then takes the frame as a single-frame image; the references are set back to the real SOP class
        # and frame after the SEG is built. Elements are shared with the source: delete and re-create, not assign.
        if "NumberOfFrames" in copy:
            del copy.NumberOfFrames
        del copy.SOPClassUID
        copy.SOPClassUID = pydicom.uid.UltrasoundImageStorage
    return copy


def _segmentation(
    source: pydicom.Dataset,
    labels: np.ndarray,
    descriptions: list[hd.seg.SegmentDescription],
    series_uid: str,
    frame: int | None,
) -> hd.seg.Segmentation:
    """BINARY DICOM SEG of ``labels``: all frames of ``source``, or its frame ``frame`` (0-based) alone."""
    return hd.seg.Segmentation(
        source_images=[source],
        pixel_array=labels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_uid,
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1 if frame is None else frame + 1,
        manufacturer="BUSISegmentation contributors",
        manufacturer_model_name=ALGORITHM_NAME,
        software_versions=_bundle_version(),
        device_serial_number="0",
        series_description=f"{ALGORITHM_NAME} lesions",
        content_label="LESIONS",
        # Every segment of every frame is stored, so frame counts never depend on where lesions were found.
        omit_empty_frames=False,
    )


def _write_dicom_seg(result: SegmentationResult, paths: list[Path]) -> None:
    ds = result.image.source
    per_frame = _dicom_seg_per_frame(result.image)
    descriptions = _segment_descriptions()
    series_uid = hd.UID()
    # One SEG for the whole source, or one per source frame (see _dicom_seg_per_frame).
    parts = [(None, result.labels)] if not per_frame else list(enumerate(result.labels))
    for (frame, labels), path in zip(parts, paths):
        try:
            with warnings.catch_warnings():
                # Single-component patient names are common in ultrasound files; the SEG copies them as they are.
                warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
                seg = _segmentation(_seg_source(ds, single_frame=per_frame), labels, descriptions, series_uid, frame)
        except (ValueError, TypeError, AttributeError) as error:
            raise ValueError(f"{result.image.path}: cannot build a DICOM SEG ({error})") from error
        if frame is not None:
            # Point the references at the real source SOP class and at the frame this SEG covers.
            for item in seg.PerFrameFunctionalGroupsSequence:
                for source in item.DerivationImageSequence[0].SourceImageSequence:
                    source.ReferencedSOPClassUID = ds.SOPClassUID
                    source.ReferencedFrameNumber = frame + 1
            for series in seg.ReferencedSeriesSequence:
                for instance in series.ReferencedInstanceSequence:
                    instance.ReferencedSOPClassUID = ds.SOPClassUID
        seg.save_as(path)


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


def overlay_picture(grey: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RGB picture of one frame with translucent lesion fills and solid outlines.

    Args:
        grey: (rows, columns) grey frame in any intensity scale.
        labels: (rows, columns) label map.

    Returns:
        (rows, columns, 3) uint8 picture.
    """
    # Robust display range: a few saturated pixels (text, markers) must not darken the image.
    # (estimated on every 4th row and column: the full-frame sort would cost more than the rest of the overlay)
    low, high = np.percentile(grey[::4, ::4], (0.5, 99.5))
    scaled = np.clip((grey - low) / max(float(high - low), 1e-6), 0.0, 1.0)
    picture = np.repeat(scaled[..., np.newaxis], 3, axis=2)
    for info in SEGMENTS:
        mask = labels == info.label
        if not mask.any():
            continue
        colour = np.asarray(info.color)
        picture[mask] = (1 - OVERLAY_OPACITY) * picture[mask] + OVERLAY_OPACITY * colour
        outline = mask & ~ndimage.binary_erosion(mask, iterations=max(1, min(grey.shape) // 300))
        picture[outline] = colour
    return np.round(picture * 255).astype(np.uint8)


def _write_overlay(result: SegmentationResult, paths: list[Path]) -> None:
    with_lesion = np.flatnonzero(result.labels.reshape(result.labels.shape[0], -1).any(axis=1))
    frame = int(with_lesion[0]) if with_lesion.size else 0
    # the overlay is for people: fast compression keeps it from costing as much as the network
    Image.fromarray(overlay_picture(result.image.frames[frame], result.labels[frame]), mode="RGB").save(
        paths[0], format="PNG", compress_level=1
    )


def _check(result: SegmentationResult, formats: Sequence[str]) -> None:
    unknown = [name for name in formats if name not in SUPPORTED_FORMATS]
    if unknown:
        raise ValueError(f"unknown output formats {unknown}; supported: {list(SUPPORTED_FORMATS)}")
    image = result.image
    labels = result.labels
    if labels.shape != image.frames.shape:
        raise ValueError(f"{image.path}: label map of shape {labels.shape} does not match image {image.frames.shape}")
    if labels.dtype != np.uint8 or labels.max(initial=0) > max(info.label for info in SEGMENTS):
        raise ValueError(f"{image.path}: label map must be uint8 with values 0, 1, 2")
    if len(result.lesions) != image.num_frames:
        raise ValueError(f"{image.path}: {len(result.lesions)} lesion lists for {image.num_frames} frames")
    if "dicom-seg" in formats and not isinstance(image.source, pydicom.Dataset):
        raise ValueError(f"{image.path}: a DICOM SEG can only be written for a DICOM input, not a {image.kind}")


def write_outputs(result: SegmentationResult, output_stem: Path, formats: Sequence[str]) -> list[Path]:
    """Write the label maps, lesion tables and overlay of one segmented input.

    Args:
        result: the segmentation of one input file.
        output_stem: output path without suffix, e.g. ``out/sub/name`` for ``name.nii.gz``; parent folders are
            created.
        formats: label-map formats, a subset of :data:`SUPPORTED_FORMATS`.

    Returns:
        the files written.

    Raises:
        ValueError: an unknown format, a label map that does not match the image, DICOM SEG asked for a non-DICOM
            input, or an output path that is the input file.
        OSError: a file could not be written; no output of this call is left behind.
    """
    _check(result, formats)
    output_stem = Path(output_stem)
    paths = output_paths(result, output_stem, formats)
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
            groups.append((_write_dicom_seg, count if _dicom_seg_per_frame(result.image) else 1))
    groups += [(_write_tables, 2), (_write_overlay, 1)]

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
