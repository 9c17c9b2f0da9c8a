"""DICOM Segmentation (SEG) of a label map, referencing its DICOM source, built with highdicom.

Kept apart from the other writers because it is the only part of the inference that needs highdicom (and with it
pydicom 3): importing the writers never imports it.
"""

from __future__ import annotations

import functools
import json
import warnings
from copy import deepcopy
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from highdicom._standard_utils import is_multiframe_image  # highdicom's own test, so both agree on the SOP class
from highdicom.spatial import get_image_coordinate_system
from pydicom.pixels import pack_bits
from pydicom.sr.codedict import codes

from scripts.labels import Code, load_vocabulary

__all__ = ["dicom_segmentation"]


@functools.lru_cache(maxsize=1)
def _bundle_version() -> str:
    """Version of the bundle from its metadata, written into DICOM SEG files."""
    try:
        with open(Path(__file__).resolve().parents[1] / "configs" / "metadata.json", encoding="utf-8") as stream:
            return str(json.load(stream)["version"])
    except (OSError, ValueError, KeyError):
        return "unknown"


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


def dicom_segmentation(ds: pydicom.Dataset, labels: np.ndarray) -> hd.seg.Segmentation:
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
