"""The Python packages, and their versions, that the bundle's inference needs inside 3D Slicer, in one place.

Inside 3D Slicer, torch is installed through the PyTorch extension (it picks the CUDA build matching the driver)
and the other packages with ``pip``, the installed torch pinned so that no requirement can replace that build.
Versions are read from the installed distributions' metadata (``importlib.metadata``) and compared with
``packaging``, as pip does; a package that imports is not enough when its version is too old.
"""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version

__all__ = [
    "MINIMUM_PYTHON",
    "MINIMUM_SLICER_VERSION",
    "REQUIREMENTS",
    "TORCH_REQUIREMENT",
    "TORCH_VERSION",
    "UnmetRequirement",
    "installed_version",
    "pip_install_arguments",
    "python_problem",
    "unmet_requirements",
    "unmet_torch",
]

# MONAI 1.6 needs Python 3.10 or later: 3D Slicer 5.8 has Python 3.9, 5.10 and 5.12 have Python 3.12.
MINIMUM_SLICER_VERSION = "5.10"
MINIMUM_PYTHON = (3, 10)

# MONAI 1.6.1 requires torch>=2.8.0. A lower floor would let installing MONAI replace the torch build that the
# PyTorch extension chose; the installed torch is also pinned while the other packages are installed.
TORCH_VERSION = ">=2.8"
TORCH_REQUIREMENT = f"torch{TORCH_VERSION}"

# (pip requirement, what needs it). Packages that only training or data preparation use are not listed.
REQUIREMENTS = (
    ("monai~=1.6.1", "the bundle's configs are written for MONAI 1.6 (monai_version in configs/metadata.json)"),
    ("pytorch-ignite>=0.4.11", "MONAI's evaluator engine; 0.4.11 is the version MONAI checks for"),
    ("fire", "'python -m monai.bundle run' parses its arguments with it"),
    ("pynrrd", "the image given to the bundle is an NRRD file, which the bundle's reader reads with it"),
    ("nibabel", "the label map the bundle writes for 3D Slicer is a NIfTI file; also the bundle's reader and writers"),
    ("pillow", "the bundle's reader and writers"),
    ("scipy", "lesion labelling in the bundle's postprocessing"),
    ("tqdm", "progress of the bundle's inference"),
    ("slicerio", "the bundle's writers import it (for their .seg.nrrd format)"),
    # The bundle's reader works with pydicom 2.4 (3D Slicer 5.10's) and 3; only its DICOM SEG writer needs
    # highdicom and pydicom 3, and 3D Slicer asks for a NIfTI label map, so neither is installed here.
    ("pydicom>=2.4", "the bundle's reader, for DICOM images"),
    ("psutil", "stopping the segmentation process and the processes it started"),
)


@dataclass(frozen=True)
class UnmetRequirement:
    """A requirement that the installed packages do not meet.

    Args:
        requirement: pip requirement, for example ``"pydicom>=3.0.1"``.
        installed: the installed version, None when the package is not installed.
    """

    requirement: str
    installed: str | None

    def __str__(self) -> str:
        state = "not installed" if self.installed is None else f"{self.installed} installed"
        return f"{self.requirement} ({state})"


def installed_version(distribution: str) -> str | None:
    """Version of an installed distribution (pip name, any case), None when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _unmet(requirement: str) -> UnmetRequirement | None:
    parsed = Requirement(requirement)
    installed = installed_version(parsed.name)
    if installed is None:
        return UnmetRequirement(requirement, None)
    try:
        # Pre-releases and local builds (torch "2.9.1+cu128") count: what is installed is what runs.
        satisfied = parsed.specifier.contains(Version(installed), prereleases=True)
    except InvalidVersion:
        satisfied = False
    return None if satisfied else UnmetRequirement(requirement, installed)


def unmet_torch() -> UnmetRequirement | None:
    """torch when it is missing or older than :data:`TORCH_VERSION`, else None."""
    return _unmet(TORCH_REQUIREMENT)


def unmet_requirements(requirements: Sequence[str] | None = None) -> list[UnmetRequirement]:
    """Requirements (torch excluded) not met by the installed packages.

    Args:
        requirements: pip requirements to check; None for the pip requirements of :data:`REQUIREMENTS`.
    """
    if requirements is None:
        requirements = [requirement for requirement, _ in REQUIREMENTS]
    return [unmet for unmet in map(_unmet, requirements) if unmet is not None]


def python_problem(version_info: Sequence[int] = sys.version_info) -> str:
    """Why this Python cannot run the bundle, or an empty string."""
    if tuple(version_info[:2]) >= MINIMUM_PYTHON:
        return ""
    return (
        f"BUSI Segmentation needs 3D Slicer {MINIMUM_SLICER_VERSION} or later: MONAI needs Python "
        f"{'.'.join(map(str, MINIMUM_PYTHON))} or later and this application has Python "
        f"{'.'.join(map(str, version_info[:2]))}"
    )


def pip_install_arguments(requirements: Sequence[str], constraints_file: str | Path) -> list[str]:
    """Arguments of ``pip install`` for ``requirements`` that cannot replace the installed torch.

    ``constraints_file`` is written with the installed torch version, so pip fails instead of installing another
    torch build when a requirement asks for one.

    Raises:
        RuntimeError: torch is not installed yet (install it first, through the PyTorch extension).
    """
    torch_version = installed_version("torch")
    if torch_version is None:
        raise RuntimeError("torch must be installed before the other packages, or pip would install its own build")
    constraints_file = Path(constraints_file)
    constraints_file.write_text(f"torch=={torch_version}\n", encoding="utf-8")
    return ["--constraint", str(constraints_file), *requirements]
