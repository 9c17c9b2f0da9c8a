"""DICOM SR Measurement Report (TID 1500) of the lesions of a DICOM SEG, built with highdicom.

One planar ROI measurement group (TID 1410) per lesion, referencing the frame of the SEG (:mod:`scripts.dicom_seg`)
that holds the lesion's class segment for the lesion's source frame. Several lesions of one class in one frame share
that SEG frame; the group's tracking identifier ("lesion <id>, frame <frame>", numbered as in the lesion table)
tells them apart. Each group has the lesion's longest diameter (long axis), the longest diameter perpendicular to it
(short axis), width, depth and area (:mod:`scripts.descriptors`): in mm and mm² when the image gives its pixel size,
otherwise the lengths in pixels (UCUM unit ``{pixel}``) and no area. When no lesion was found, the report holds one
measurement group (TID 1501) on the source image with the qualitative evaluation "Finding: Absent" instead.
"""

from __future__ import annotations

import warnings

import highdicom as hd
import pydicom
from highdicom._standard_utils import is_multiframe_image
from pydicom.sr.codedict import codes

from scripts.dicom_seg import _bundle_version, _coded_concept, _seg_source
from scripts.labels import load_vocabulary

__all__ = ["measurement_report"]

# SNOMED CT "Ultrasonography of breast"
PROCEDURE = hd.sr.CodedConcept("47079000", "SCT", "Ultrasonography of breast")
PIXEL_UNIT = hd.sr.CodedConcept("{pixel}", "UCUM", "pixel")


def _measurements(lesion, spacing: tuple[float, float] | None) -> list[hd.sr.Measurement]:
    d = lesion.descriptors
    if spacing is None:
        lengths = [(codes.SCT.LongAxis, d.longest_diameter_px), (codes.SCT.ShortAxis, d.perpendicular_diameter_px),
                   (codes.SCT.Width, d.width_px), (codes.SCT.Depth, d.depth_px)]
        return [hd.sr.Measurement(name=name, value=float(value), unit=PIXEL_UNIT) for name, value in lengths]
    lengths = [(codes.SCT.LongAxis, d.longest_diameter_mm), (codes.SCT.ShortAxis, d.perpendicular_diameter_mm),
               (codes.SCT.Width, d.width_mm), (codes.SCT.Depth, d.depth_mm)]
    area = lesion.area_px * spacing[0] * spacing[1]
    return [hd.sr.Measurement(name=name, value=float(value), unit=codes.UCUM.Millimeter) for name, value in lengths] + [
        hd.sr.Measurement(name=codes.SCT.Area, value=float(area), unit=codes.UCUM.SquareMillimeter)
    ]


def _seg_frame_number(seg: pydicom.Dataset, segment_number: int, source_frame: int) -> int:
    """1-based SEG frame holding ``segment_number`` for the 0-based ``source_frame``."""
    for number, item in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
        if int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber) != segment_number:
            continue
        # the source frame: by temporal position (cine loops without geometry), by the referenced frame number
        # (multi-frame sources with geometry), or none for a single-frame source
        content, source = item.FrameContentSequence[0], item.DerivationImageSequence[0].SourceImageSequence[0]
        if "TemporalPositionIndex" in content:
            frame = int(content.TemporalPositionIndex)
        else:
            frame = int(source.get("ReferencedFrameNumber", 1))
        if frame == source_frame + 1:
            return number
    raise ValueError(f"the DICOM SEG has no frame of segment {segment_number} for source frame {source_frame + 1}")


def _segment_reference(
    ds: pydicom.Dataset, seg: pydicom.Dataset, segment_number: int, frame: int
) -> hd.sr.ReferencedSegmentationFrame:
    """Reference to the SEG frame of ``segment_number`` for the 0-based source ``frame``, and to that source frame."""
    source = hd.sr.SourceImageForSegmentation(
        ds.SOPClassUID,
        ds.SOPInstanceUID,
        # DICOM allows a frame number only for a multi-frame SOP class (not for a single-frame class holding frames)
        referenced_frame_numbers=[frame + 1] if is_multiframe_image(ds) else None,
    )
    reference = hd.sr.ReferencedSegmentationFrame(
        seg.SOPClassUID, seg.SOPInstanceUID, _seg_frame_number(seg, segment_number, frame), segment_number, source
    )
    # DICOM forbids the segment number next to a frame number, which names the segment already (dciodvfy checks it)
    del reference[0].ReferencedSOPSequence[0].ReferencedSegmentNumber
    return reference


def measurement_report(
    ds: pydicom.Dataset, seg: pydicom.Dataset, lesions: list[list], spacing: tuple[float, float] | None
) -> hd.sr.ComprehensiveSR:
    """Comprehensive SR holding a TID 1500 Measurement Report of ``lesions``, referencing ``seg`` and its source.

    Args:
        ds: the source DICOM dataset (the image that was segmented).
        seg: the DICOM SEG of ``ds`` written by :func:`scripts.dicom_seg.dicom_segmentation`.
        lesions: the :class:`scripts.postprocess.Lesion` lists of each frame; lesions without descriptors are left
            out.
        spacing: (row, column) pixel size in mm, or None when unknown.
    """
    vocabulary = load_vocabulary()
    algorithm = hd.sr.AlgorithmIdentification(name=vocabulary.algorithm_name, version=_bundle_version())
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=vocabulary.algorithm_name
        ),
    )
    types = {label.value: label.type for label in vocabulary.lesions}
    groups = []
    for frame, frame_lesions in enumerate(lesions):
        for lesion in frame_lesions:
            if lesion.descriptors is None:
                continue
            reference = _segment_reference(ds, seg, lesion.label, frame)
            groups.append(
                hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=hd.sr.TrackingIdentifier(
                        uid=hd.UID(), identifier=f"lesion {lesion.lesion_id}, frame {frame + 1}"
                    ),
                    referenced_segment=reference,
                    finding_type=_coded_concept(types[lesion.label]),
                    finding_category=_coded_concept(vocabulary.category),
                    algorithm_id=algorithm,
                    measurements=_measurements(lesion, spacing),
                )
            )
    if not groups:
        # TID 1500 needs a measurement group: say, on the source image, that no lesion was found
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="no lesion found"),
                finding_category=_coded_concept(vocabulary.category),
                algorithm_id=algorithm,
                qualitative_evaluations=[hd.sr.QualitativeEvaluation(codes.DCM.Finding, codes.SCT.Absent)],
                source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(ds)],
            )
        )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=PROCEDURE,
        imaging_measurements=groups,
    )
    with warnings.catch_warnings():
        # Single-component patient names are common in ultrasound files; the SR copies them as they are.
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        return hd.sr.ComprehensiveSR(
            evidence=[_seg_source(ds), seg],
            content=report[0],
            series_instance_uid=hd.UID(),
            series_number=901,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="BUSISegmentation contributors",
            series_description=f"{vocabulary.algorithm_name} lesion measurements",
        )
