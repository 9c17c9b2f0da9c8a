"""The Python packages the bundle inference needs, in one place.

Inside 3D Slicer, torch is installed through the PyTorch extension (it picks the CUDA build matching the driver)
and the other packages with ``pip``.
"""

from __future__ import annotations

import importlib.util

__all__ = ["TORCH_VERSION", "TORCH_REQUIREMENT", "REQUIREMENTS", "missing_requirements", "torch_missing"]

# torch 2.1 is the oldest release the bundle's MONAI version supports.
TORCH_VERSION = ">=2.1"
TORCH_REQUIREMENT = f"torch{TORCH_VERSION}"
# (pip requirement, module it provides). MONAI 1.5 is the first release with the bundle features used here.
REQUIREMENTS = (
    ("monai[fire,pyyaml]>=1.5", "monai"),
    ("pytorch-ignite", "ignite"),
    ("pillow", "PIL"),
    ("scikit-image", "skimage"),
    ("scipy", "scipy"),
    ("pynrrd", "nrrd"),
    # pydicom 3 moved pixel decoding to pydicom.pixels, which the bundle's reader uses.
    ("pydicom>=3", "pydicom"),
    ("highdicom", "highdicom"),
    ("slicerio", "slicerio"),
    ("nibabel", "nibabel"),
    ("psutil", "psutil"),
    ("fire", "fire"),
    ("pyyaml", "yaml"),
    ("tqdm", "tqdm"),
)


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def torch_missing() -> bool:
    """Whether torch still has to be installed."""
    return not _installed("torch")


def missing_requirements() -> list[str]:
    """pip requirements (torch excluded) whose module cannot be imported."""
    return [requirement for requirement, module in REQUIREMENTS if not _installed(module)]
