"""Names, colours and standard terminology of the segments, read from the module's resource files.

``Resources/labels.csv`` (the column format of MONAIAuto3DSeg's ``labels.csv``) gives each label value a name and
SNOMED CT codes; ``Resources/BUSISegmentation.term.json`` is the terminology context 3D Slicer loads, which also
holds the display colours.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from .bundle import MODULE_DIR

__all__ = ["LABELS_FILE", "TERMINOLOGY_FILE", "ANATOMIC_CONTEXT", "LabelDescription", "load_label_descriptions"]

LABELS_FILE = MODULE_DIR / "Resources" / "labels.csv"
TERMINOLOGY_FILE = MODULE_DIR / "Resources" / "BUSISegmentation.term.json"
# 3D Slicer's built-in anatomic context; it has the Breast code.
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
_CODE_FIELDS = ("CodingSchemeDesignator", "CodeValue", "CodeMeaning")


@dataclass(frozen=True)
class LabelDescription:
    """One segment of the result.

    Args:
        value: label value in the label map.
        name: segment name.
        color: display colour, RGB in [0, 1].
        terminology_entry: 3D Slicer terminology entry
            (``context~category~type~typeModifier~anatomicContext~region~regionModifier``).
    """

    value: int
    name: str
    color: tuple[float, float, float]
    terminology_entry: str


def _code(row: dict, sequence: str) -> str:
    return "^".join((row.get(f"{sequence}.{field}") or "").strip() for field in _CODE_FIELDS)


def _type_colours(terminology: dict) -> dict[tuple[str, str], tuple[float, float, float]]:
    colours = {}
    for category in terminology["SegmentationCodes"]["Category"]:
        for entry in category.get("Type", []):
            if "recommendedDisplayRGBValue" in entry:
                rgb = tuple(float(v) / 255.0 for v in entry["recommendedDisplayRGBValue"])
                colours[(entry["CodingSchemeDesignator"], entry["CodeValue"])] = rgb
    return colours


def load_label_descriptions(
    labels_file: str | Path = LABELS_FILE, terminology_file: str | Path = TERMINOLOGY_FILE
) -> list[LabelDescription]:
    """Segment descriptions in label-value order.

    Raises:
        ValueError: a label value is not a positive integer or appears twice, or a segment type has no colour in
            the terminology file.
    """
    with open(terminology_file, encoding="utf-8") as stream:
        terminology = json.load(stream)
    context = terminology["SegmentationCategoryTypeContextName"]
    colours = _type_colours(terminology)
    descriptions = []
    with open(labels_file, newline="", encoding="utf-8") as stream:
        for row in csv.DictReader(stream):
            value = int(row["LabelValue"])
            if value <= 0 or value in {d.value for d in descriptions}:
                raise ValueError(f"{labels_file}: label value {value} must be positive and unique")
            type_key = (row["SegmentedPropertyTypeCodeSequence.CodingSchemeDesignator"],
                        row["SegmentedPropertyTypeCodeSequence.CodeValue"])  # fmt: skip
            if type_key not in colours:
                raise ValueError(
                    f"{labels_file}: type {'^'.join(type_key)} of label {value} has no colour in {terminology_file}"
                )
            entry = "~".join(
                [
                    context,
                    _code(row, "SegmentedPropertyCategoryCodeSequence"),
                    _code(row, "SegmentedPropertyTypeCodeSequence"),
                    _code(row, "SegmentedPropertyTypeModifierCodeSequence"),
                    ANATOMIC_CONTEXT,
                    _code(row, "AnatomicRegionSequence"),
                    _code(row, "AnatomicRegionModifierSequence"),
                ]
            )
            descriptions.append(LabelDescription(value, row["Name"], colours[type_key], entry))
    return sorted(descriptions, key=lambda d: d.value)
