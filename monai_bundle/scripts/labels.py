"""The label vocabulary of ``configs/labels.json``: values, names, colours and SNOMED CT codes.

Label value 0 is background in a label map and "normal" as an image class; 1 is benign, 2 malignant, in both.
This module needs only the standard library, so the 3D Slicer module can read the same file without torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = ["VOCABULARY_FILE", "Code", "Label", "Vocabulary", "load_vocabulary"]

VOCABULARY_FILE = Path(__file__).resolve().parents[1] / "configs" / "labels.json"


@dataclass(frozen=True)
class Code:
    """A coded concept: coding scheme designator, code value, code meaning."""

    scheme: str
    value: str
    meaning: str


@dataclass(frozen=True)
class Label:
    """One label value.

    Attributes:
        value: value in label maps (0 background, 1 benign, 2 malignant).
        class_name: image class of an image whose lesions carry this label ("normal" for 0).
        name: segment name shown to people.
        color: display colour, RGB 0-255 (None for background).
        type: SNOMED CT type code of the segment (None for background).
    """

    value: int
    class_name: str
    name: str
    color: tuple[int, int, int] | None = None
    type: Code | None = None


@dataclass(frozen=True)
class Vocabulary:
    """The whole vocabulary; ``lesions`` are the labels other than background, in value order."""

    algorithm_name: str
    terminology_context: str
    anatomic_context: str
    category: Code
    anatomic_region: Code
    labels: tuple[Label, ...]

    @property
    def lesions(self) -> tuple[Label, ...]:
        return tuple(label for label in self.labels if label.value > 0)

    @property
    def class_names(self) -> list[str]:
        """Image class names by value: ``["normal", "benign", "malignant"]``."""
        return [label.class_name for label in self.labels]

    def by_value(self, value: int) -> Label:
        return next(label for label in self.labels if label.value == value)


@lru_cache(maxsize=None)
def load_vocabulary(path: str | Path = VOCABULARY_FILE) -> Vocabulary:
    """Read ``configs/labels.json`` (or another file of the same form)."""
    raw = json.loads(Path(path).read_text())
    labels = tuple(
        Label(
            value=int(entry["value"]),
            class_name=entry["class_name"],
            name=entry["name"],
            color=tuple(entry["color"]) if "color" in entry else None,
            type=Code(**entry["type"]) if "type" in entry else None,
        )
        for entry in raw["labels"]
    )
    if [label.value for label in labels] != list(range(len(labels))):
        raise ValueError(f"{path}: label values must be 0, 1, 2, ... in order")
    return Vocabulary(
        algorithm_name=raw["algorithm_name"],
        terminology_context=raw["terminology_context"],
        anatomic_context=raw["anatomic_context"],
        category=Code(**raw["category"]),
        anatomic_region=Code(**raw["anatomic_region"]),
        labels=labels,
    )
