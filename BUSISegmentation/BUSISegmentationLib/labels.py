"""Names, colours and standard terminology of the segments, from the label vocabulary of the bundle.

The bundle defines what each label value means in ``configs/labels.json`` and reads that file with
``scripts/labels.py``. The reader needs only the standard library, so it is loaded here from its file: the module
then reads the vocabulary exactly as the bundle's writers do (one parser, one validation), without importing the
bundle's ``scripts`` package (that would put the bundle on ``sys.path``, where its ``scripts`` name could shadow or
be shadowed by another package in 3D Slicer).

``Resources/BUSISegmentation.term.json`` is the terminology context that 3D Slicer loads for the segments; the tests
check that it agrees with ``labels.json``.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from .bundle import MODULE_DIR, locate_bundle

__all__ = [
    "TERMINOLOGY_FILE",
    "VOCABULARY_FILE",
    "VOCABULARY_READER",
    "LabelDescription",
    "load_label_descriptions",
    "load_vocabulary",
    "terminology_context_name",
]

TERMINOLOGY_FILE = MODULE_DIR / "Resources" / "BUSISegmentation.term.json"
# Inside the bundle folder.
VOCABULARY_FILE = Path("configs") / "labels.json"
VOCABULARY_READER = Path("scripts") / "labels.py"


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


# Module name of the bundle's reader once loaded: private, so that it claims neither "scripts" nor "labels".
_READER_MODULE = "_busi_segmentation_bundle_labels"


@functools.lru_cache(maxsize=None)
def _vocabulary_reader(path: Path) -> ModuleType:
    """The bundle's ``scripts/labels.py`` loaded from its file."""
    spec = importlib.util.spec_from_file_location(_READER_MODULE, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path}: cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    # dataclasses look the module up in sys.modules while they process its classes.
    sys.modules[_READER_MODULE] = module
    spec.loader.exec_module(module)
    return module


def load_vocabulary(bundle_dir: str | Path | None = None) -> Any:
    """The label vocabulary of a bundle, read by the bundle's own reader.

    Args:
        bundle_dir: the bundle folder; None to search for it (see :func:`BUSISegmentationLib.bundle.locate_bundle`).

    Returns:
        the bundle's ``scripts.labels.Vocabulary``: ``labels``, ``lesions`` (value, class_name, name, color RGB
        0-255, type code), ``category``, ``anatomic_region``, ``terminology_context``, ``anatomic_context``.

    Raises:
        FileNotFoundError: the bundle, its vocabulary or its reader was not found.
    """
    bundle_dir = locate_bundle() if bundle_dir is None else Path(bundle_dir).resolve()
    for required in (VOCABULARY_READER, VOCABULARY_FILE):
        if not (bundle_dir / required).is_file():
            raise FileNotFoundError(f"{bundle_dir / required}: the bundle has no label vocabulary")
    reader = _vocabulary_reader(bundle_dir / VOCABULARY_READER)
    return reader.load_vocabulary(bundle_dir / VOCABULARY_FILE)


def terminology_context_name(terminology_file: str | Path = TERMINOLOGY_FILE) -> str:
    """Name of the segmentation category and type context that a 3D Slicer terminology file defines."""
    with open(terminology_file, encoding="utf-8") as stream:
        return json.load(stream)["SegmentationCategoryTypeContextName"]


def _code(code: Any) -> str:
    """``scheme^value^meaning`` of a vocabulary code; ``^^`` for none."""
    return "^^" if code is None else f"{code.scheme}^{code.value}^{code.meaning}"


def load_label_descriptions(
    bundle_dir: str | Path | None = None, terminology_file: str | Path = TERMINOLOGY_FILE
) -> list[LabelDescription]:
    """The lesion segments (background excluded) in label-value order, from the bundle's label vocabulary.

    The terminology entries name the context of ``terminology_file``, the one the module loads into 3D Slicer:
    the segment types (a benign neoplasm among them) are defined there, not in Slicer's built-in DICOM master list,
    and Slicer looks a type up in the context its entry names.

    Args:
        bundle_dir: the bundle folder; None to search for it.
        terminology_file: the 3D Slicer terminology context file of the segments.

    Raises:
        FileNotFoundError: the bundle or its vocabulary was not found.
        ValueError: a lesion label of the vocabulary has no colour or no type code.
    """
    vocabulary = load_vocabulary(bundle_dir)
    context = terminology_context_name(terminology_file)
    descriptions = []
    for label in vocabulary.lesions:
        if label.color is None or label.type is None:
            raise ValueError(f"label {label.value} ({label.name}) of the bundle vocabulary needs a colour and a type")
        entry = "~".join(
            [
                context,
                _code(vocabulary.category),
                _code(label.type),
                _code(None),  # type modifier
                vocabulary.anatomic_context,
                _code(vocabulary.anatomic_region),
                _code(None),  # anatomic region modifier
            ]
        )
        color = tuple(channel / 255.0 for channel in label.color)
        descriptions.append(LabelDescription(label.value, label.name, color, entry))
    return sorted(descriptions, key=lambda description: description.value)
