"""Write the segmentation of one input file: label maps aligned with the input, a lesion table and an overlay picture.

Formats (``formats`` argument of :func:`write_outputs`):

- ``png``: ``<stem>_seg.png``, 8-bit label map (0 background, 1 benign, 2 malignant) of the input's size;
  ``<stem>_seg_f0000.png``... for multi-frame inputs.
- ``nifti``: ``<stem>_seg.nii.gz``, the label map with the input geometry (RAS affine).
- ``seg.nrrd``: ``<stem>_seg.seg.nrrd``, a 3D Slicer segmentation with coded, coloured segments.
- ``dicom-seg``: ``<stem>_seg.dcm``, one BINARY DICOM Segmentation instance referencing the source instance (DICOM
  inputs only), with every frame of a multi-frame source (cine loop) in it; segments carry recommended display
  colours. A source without patient geometry is handled as :func:`_dicom_segmentation` describes.

Segment names, colours and codes in every format come from the label vocabulary
(``configs/labels.json``, read by :func:`scripts.labels.load_vocabulary`).

Always written: ``<stem>_lesions.csv`` and ``<stem>_lesions.json``; ``<stem>_overlay.png`` unless turned off.

Every file is first written under a temporary name in the destination folder and renamed only when all of them
succeeded, so a failure leaves no partial outputs.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import re
import uuid
import warnings
from collections.abc import Sequence
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import slicerio
from PIL import Image
from highdicom._standard_utils import is_multiframe_image  # highdicom's own test, so both agree on the SOP class
from highdicom.spatial import get_image_coordinate_system
from pydicom.pixels import pack_bits
from pydicom.sr.codedict import codes
from scipy import ndimage

from scripts.labels import Code, Label, load_vocabulary
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


def _unit_rgb(label: Label) -> tuple[float, float, float]:
    """The label's display colour as RGB in [0, 1] (the vocabulary stores 0-255)."""
    return tuple(channel / 255.0 for channel in label.color)


@dataclass(frozen=True)
class SegmentInfo:
    """Name, colour (RGB in [0, 1]) and SNOMED CT type code (scheme, value, meaning) of one lesion label."""

    label: int
    name: str
    color: tuple[float, float, float]
    type_code: tuple[str, str, str]


# A read-only view of configs/labels.json for code that compares with what the writers write (the 3D Slicer module's
# tests); the writers themselves read the vocabulary.
SEGMENTS = tuple(
    SegmentInfo(label.value, label.name, _unit_rgb(label), (label.type.scheme, label.type.value, label.type.meaning))
    for label in load_vocabulary().lesions
)

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
    paths += [stem.with_name(f"{stem.name}_{name}") for name in ("lesions.csv", "lesions.json")]
    return paths + ([stem.with_name(f"{stem.name}_overlay.png")] if overlay else [])


def applicable_formats(image: UltrasoundImage, requested: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """The requested formats that can be written for ``image``, and ``(format, reason)`` for the others."""
    if isinstance(image.source, pydicom.Dataset):
        return list(requested), []
    skipped = [(name, f"needs a DICOM input, this is a {image.kind}") for name in requested if name == "dicom-seg"]
    return [name for name in requested if name != "dicom-seg"], skipped


def earlier_outputs(output_stem: Path) -> list[Path]:
    """Files in ``output_stem``'s folder that :func:`write_outputs` may have written for that stem, in any format."""
    stem = Path(output_stem)
    if not stem.parent.is_dir():
        return []
    frame = re.compile(re.escape(stem.name) + r"_seg(_f\d{4})?\.(png|dcm)$")
    suffixes = ("seg.nii.gz", "seg.seg.nrrd", "lesions.csv", "lesions.json", "overlay.png")
    fixed = {f"{stem.name}_{suffix}" for suffix in suffixes}
    return sorted(p for p in stem.parent.iterdir() if p.is_file() and (p.name in fixed or frame.match(p.name)))


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


def _coded_concept(code: Code) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(code.value, code.scheme, code.meaning)


def _segment_descriptions() -> list[hd.seg.SegmentDescription]:
    vocabulary = load_vocabulary()
    algorithm = hd.AlgorithmIdentificationSequence(
        name=vocabulary.algorithm_name, version=_bundle_version(), family=codes.cid7162.ArtificialIntelligence
    )
    return [
        hd.seg.SegmentDescription(
            segment_number=label.value,
            segment_label=label.name,
            segmented_property_category=_coded_concept(vocabulary.category),
            segmented_property_type=_coded_concept(label.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            anatomic_regions=[_coded_concept(vocabulary.anatomic_region)],
            display_color=hd.color.CIELabColor.from_rgb(*label.color),
        )
        for label in vocabulary.lesions
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


def _seg_source(ds: pydicom.Dataset) -> pydicom.Dataset:
    """Metadata-only copy of the source that highdicom accepts; the source dataset itself is not changed.

    Elements are shared with the source: change the copy by deleting and re-creating elements, never by assigning
    to an element's value.
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
    for keyword in ("PatientSize", "PatientWeight"):
        # Scanners write 0 for "not measured"; these attributes are optional, and a SEG stating a weight of 0 kg
        # would be wrong (dciodvfy warns), so the SEG leaves them out.
        if keyword in copy and not copy[keyword].value:
            del copy[keyword]
    return copy


def _highdicom_segmentation(
    source: pydicom.Dataset, labels: np.ndarray, descriptions: list[hd.seg.SegmentDescription]
) -> hd.seg.Segmentation:
    """BINARY DICOM SEG of the (frames, rows, columns) label map ``labels`` as highdicom builds it."""
    return hd.seg.Segmentation(
        source_images=[source],
        pixel_array=labels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="BUSISegmentation contributors",
        manufacturer_model_name=load_vocabulary().algorithm_name,
        software_versions=_bundle_version(),
        device_serial_number="0",
        series_description=f"{load_vocabulary().algorithm_name} lesions",
        content_label="LESIONS",
        # Every segment of every frame is stored, so frame counts never depend on where lesions were found.
        omit_empty_frames=False,
    )


def _single_frame_stand_in(source: pydicom.Dataset) -> None:
    """Present the metadata copy ``source`` to highdicom as a single-frame ultrasound image of its first frame.

    highdicom 0.28 reads the geometry of a multi-frame SOP class from functional groups, which classic multi-frame
    files (US Multi-frame) do not have, and refuses several frames without a frame of reference ("Only a single frame
    is supported when the source image has no Frame of Reference UID", highdicom issue #284).
    :func:`_refer_to_source_frames` restores the real references afterwards.
    """
    # The copy shares elements with the source dataset: delete and re-create, never assign.
    for keyword in ("NumberOfFrames", "SOPClassUID"):
        if keyword in source:
            delattr(source, keyword)
    source.SOPClassUID = pydicom.uid.UltrasoundImageStorage


def _refer_to_source_frames(seg: hd.seg.Segmentation, ds: pydicom.Dataset, labels: np.ndarray) -> None:
    """Turn highdicom's SEG of a single-frame stand-in (:func:`_single_frame_stand_in`) into the SEG of all frames.

    Without a frame of reference, DICOM relates SEG frames to source frames through the Derivation Image functional
    group of each SEG frame (PS3.3 A.51.5); the Multi-frame Dimension module then only has to tell frames apart. So
    the SEG frame of segment ``s`` and source frame ``f`` (1-based) copies highdicom's frame of segment ``s`` and gets
    Temporal Position Index ``f`` in its Frame Content, the second dimension after the segment number. Only for a
    multi-frame SOP class does it name source frame ``f`` by Referenced Frame Number: DICOM forbids that attribute
    for a single-frame SOP class, even in a file that nevertheless holds several frames, whose SEG frames then follow
    the source frames by temporal position alone.

    Args:
        seg: highdicom's SEG of the stand-in: one frame per segment, in segment order.
        ds: the real source dataset.
        labels: (frames, rows, columns) label map of all source frames.
    """
    frames, rows, columns = labels.shape
    refers_to_frames = is_multiframe_image(ds)
    items = []
    for template in seg.PerFrameFunctionalGroupsSequence:
        segment_number = int(template.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        for frame_number in range(1, frames + 1):
            item = deepcopy(template)
            content = item.FrameContentSequence[0]
            content.DimensionIndexValues = [segment_number, frame_number]
            content.TemporalPositionIndex = frame_number
            for reference in item.DerivationImageSequence[0].SourceImageSequence:
                reference.ReferencedSOPClassUID = ds.SOPClassUID
                if refers_to_frames:
                    reference.ReferencedFrameNumber = frame_number
            items.append(item)
    seg.PerFrameFunctionalGroupsSequence = items
    for reference in seg.get("SourceImageSequence", []):
        reference.ReferencedSOPClassUID = ds.SOPClassUID
    for series in seg.ReferencedSeriesSequence:
        for reference in series.ReferencedInstanceSequence:
            reference.ReferencedSOPClassUID = ds.SOPClassUID

    frame_index = pydicom.Dataset()
    frame_index.DimensionOrganizationUID = seg.DimensionIndexSequence[0].DimensionOrganizationUID
    frame_index.DimensionIndexPointer = pydicom.tag.Tag("TemporalPositionIndex")
    frame_index.FunctionalGroupPointer = pydicom.tag.Tag("FrameContentSequence")
    frame_index.DimensionDescriptionLabel = "Source frame"
    seg.DimensionIndexSequence.append(frame_index)

    # BINARY pixel data: one bit per pixel, frames packed back to back in the order of the functional groups.
    segment_numbers = [int(segment.SegmentNumber) for segment in seg.SegmentSequence]
    masks = np.stack([labels == number for number in segment_numbers]).reshape(-1, rows, columns)
    seg.NumberOfFrames = masks.shape[0]
    seg.PixelData = pack_bits(masks.view(np.uint8))


def _dicom_segmentation(ds: pydicom.Dataset, labels: np.ndarray) -> hd.seg.Segmentation:
    """One BINARY DICOM SEG of all frames of ``labels`` (frames, rows, columns), referencing the source ``ds``.

    highdicom places the frames of a source with patient geometry by their plane positions and handles a
    single-frame source without geometry. A multi-frame source without geometry (cine loops) is given to highdicom
    as a single-frame stand-in of its first frame, and that SEG is then extended to every frame.
    """
    source = _seg_source(ds)
    has_geometry = get_image_coordinate_system(source) is not None
    stand_in = not has_geometry and (is_multiframe_image(ds) or labels.shape[0] > 1)
    if stand_in:
        _single_frame_stand_in(source)
    with warnings.catch_warnings():
        # Single-component patient names are common in ultrasound files; the SEG copies them as they are.
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        seg = _highdicom_segmentation(source, labels[:1] if stand_in else labels, _segment_descriptions())
    if stand_in:
        _refer_to_source_frames(seg, ds, labels)
    if not has_geometry:
        # Patient Orientation (General Image module) is Type 2C: required when the frames carry no patient
        # orientation, and highdicom does not write it. The SEG's pixels are the source's, so is its orientation.
        seg.PatientOrientation = ds.get("PatientOrientation") or ""
    return seg


def _write_dicom_seg(result: SegmentationResult, paths: list[Path]) -> None:
    try:
        seg = _dicom_segmentation(result.image.source, result.labels)
    except (ValueError, TypeError, AttributeError) as error:
        raise ValueError(f"{result.image.path}: cannot build a DICOM SEG ({error})") from error
    seg.save_as(paths[0])


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
    for label in load_vocabulary().lesions:
        mask = labels == label.value
        if not mask.any():
            continue
        colour = np.asarray(_unit_rgb(label))
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
    highest = max(label.value for label in load_vocabulary().labels)
    if labels.dtype != np.uint8 or labels.max(initial=0) > highest:
        raise ValueError(f"{image.path}: label map must be uint8 with values 0 to {highest}")
    if len(result.lesions) != image.num_frames:
        raise ValueError(f"{image.path}: {len(result.lesions)} lesion lists for {image.num_frames} frames")
    if "dicom-seg" in formats and not isinstance(image.source, pydicom.Dataset):
        raise ValueError(f"{image.path}: a DICOM SEG can only be written for a DICOM input, not a {image.kind}")


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
            groups.append((_write_dicom_seg, 1))
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
