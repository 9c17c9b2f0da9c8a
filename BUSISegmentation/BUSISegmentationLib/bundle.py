"""Where the MONAI bundle is and how its inference is started."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

__all__ = [
    "BUNDLE_DIR_ENV",
    "DEVICES",
    "MODULE_DIR",
    "bundle_candidates",
    "build_command",
    "check_device",
    "inference_overrides",
    "locate_bundle",
]

BUNDLE_DIR_ENV = "BUSI_BUNDLE_DIR"
# Directory of BUSISegmentation.py, in the source tree and in an installed extension alike.
MODULE_DIR = Path(__file__).resolve().parents[1]
# Device names the bundle accepts; "auto" keeps the bundle's own choice (the GPU when there is one).
DEVICES = ("auto", "cpu", "cuda")
INFERENCE_CONFIG = Path("configs") / "inference.json"


def bundle_candidates() -> list[Path]:
    """Folders searched for the bundle, in order: ``$BUSI_BUNDLE_DIR``, the module's resources, the source tree, and
    the ``busi_bundle`` package that ``pip install`` of this project puts beside the Lib."""
    candidates = [MODULE_DIR / "Resources" / "monai_bundle", MODULE_DIR.parent / "monai_bundle"]
    installed = importlib.util.find_spec("busi_bundle")
    if installed is not None and installed.submodule_search_locations:
        candidates.append(Path(next(iter(installed.submodule_search_locations))))
    if os.environ.get(BUNDLE_DIR_ENV):
        candidates.insert(0, Path(os.environ[BUNDLE_DIR_ENV]))
    return candidates


def locate_bundle() -> Path:
    """The bundle folder: the first of :func:`bundle_candidates` that holds ``configs/inference.json``.

    Raises:
        ValueError: ``$BUSI_BUNDLE_DIR`` is set but is not a bundle folder.
        FileNotFoundError: no bundle was found; the message lists the folders searched.
    """
    if os.environ.get(BUNDLE_DIR_ENV):
        folder = Path(os.environ[BUNDLE_DIR_ENV])
        if not (folder / INFERENCE_CONFIG).is_file():
            raise ValueError(f"{BUNDLE_DIR_ENV}={folder} is not a bundle folder: it has no {INFERENCE_CONFIG}")
        return folder.resolve()
    for folder in bundle_candidates():
        if (folder / INFERENCE_CONFIG).is_file():
            return folder.resolve()
    searched = ", ".join(str(folder) for folder in bundle_candidates())
    raise FileNotFoundError(f"MONAI bundle not found; searched {searched} (or set {BUNDLE_DIR_ENV})")


def check_device(device: str) -> None:
    """Raises ValueError when ``device`` is not one of :data:`DEVICES`."""
    if device not in DEVICES:
        raise ValueError(f"device {device!r} is not supported; choose from {list(DEVICES)}")


def inference_overrides(
    bundle_dir: str | Path, input_file: str | Path, output_dir: str | Path, device: str = "auto", tta: bool = False
) -> dict:
    """The bundle inference on one file: its config file and the values that override the config's.

    With these, the bundle writes the files that :func:`BUSISegmentationLib.volume_io.result_paths` names: a NIfTI
    label map (0 background, 1 benign, 2 malignant) in the input's geometry and the lesion table. It prints
    ``PROGRESS <done> <total>`` once per frame and ``ERROR <message>`` when the input cannot be segmented. No
    overlay picture is asked for: 3D Slicer shows the segmentation itself. The keys are the arguments of
    ``monai.bundle.create_workflow`` and, with ``--``, of ``python -m monai.bundle run``.

    Args:
        bundle_dir: the bundle folder (see :func:`locate_bundle`).
        input_file: image to segment; ``output_dir`` must not be inside its folder.
        output_dir: folder for the results.
        device: one of :data:`DEVICES`.
        tta: also segment the mirrored image and average (twice the computation).

    Raises:
        ValueError: unknown ``device``.
    """
    check_device(device)
    bundle_dir = Path(bundle_dir)
    overrides = {
        "config_file": (bundle_dir / INFERENCE_CONFIG).as_posix(),
        "bundle_root": bundle_dir.as_posix(),
        "input_files": [Path(input_file).as_posix()],
        "output_dir": Path(output_dir).as_posix(),
        # A plain label map: its values are the vocabulary's label values, so no segment names need matching.
        "formats": ["nifti"],
        "overlays": False,
        "tta": tta,
        "progress": "lines",
    }
    if device != "auto":
        overrides["device"] = device
    return overrides


def _argument(value: str | bool | list[str]) -> str:
    # The bundle parses list overrides as Python literals; JSON strings with forward slashes are valid literals
    # on every platform (a Windows path with backslashes would be read as escape sequences).
    return json.dumps(value) if isinstance(value, list) else str(value)


def build_command(
    python_executable: str | Path,
    bundle_dir: str | Path,
    input_file: str | Path,
    output_dir: str | Path,
    device: str = "auto",
    tta: bool = False,
) -> list[str]:
    """Command line that runs the bundle inference of :func:`inference_overrides` on one file in a new process.

    Args:
        python_executable: Python that has MONAI and torch (``PythonSlicer`` inside 3D Slicer).
        bundle_dir, input_file, output_dir, device, tta: see :func:`inference_overrides`.

    Raises:
        ValueError: unknown ``device``.
    """
    command = [str(python_executable), "-m", "monai.bundle", "run"]
    for name, value in inference_overrides(bundle_dir, input_file, output_dir, device, tta).items():
        command += [f"--{name}", _argument(value)]
    return command
