"""Everything of the BUSISegmentation module that does not need 3D Slicer: finding and running the MONAI bundle
in a background process, exchanging files with it, following its progress, and the segment descriptions."""

from .bundle import BUNDLE_DIR_ENV, DEVICES, build_command, locate_bundle
from .dependencies import (
    MINIMUM_SLICER_VERSION,
    REQUIREMENTS,
    TORCH_REQUIREMENT,
    TORCH_VERSION,
    UnmetRequirement,
    pip_install_arguments,
    python_problem,
    unmet_requirements,
    unmet_torch,
)
from .inference import (
    BundleRun,
    RunConfig,
    SegmentationCancelled,
    SegmentationError,
    SegmentationOutput,
    segment_array,
)
from .labels import LabelDescription, load_label_descriptions
from .process import BackgroundProcess, kill_process_tree
from .progress import OutputParser, Progress, ProgressCallback, parse_progress_line
from .volume_io import lesion_area_text, pixel_size_is_known, read_result, result_paths, write_input

__all__ = [
    "BUNDLE_DIR_ENV",
    "DEVICES",
    "MINIMUM_SLICER_VERSION",
    "REQUIREMENTS",
    "TORCH_REQUIREMENT",
    "TORCH_VERSION",
    "BackgroundProcess",
    "BundleRun",
    "LabelDescription",
    "OutputParser",
    "Progress",
    "ProgressCallback",
    "RunConfig",
    "SegmentationCancelled",
    "SegmentationError",
    "SegmentationOutput",
    "UnmetRequirement",
    "build_command",
    "kill_process_tree",
    "lesion_area_text",
    "load_label_descriptions",
    "locate_bundle",
    "parse_progress_line",
    "pip_install_arguments",
    "pixel_size_is_known",
    "python_problem",
    "read_result",
    "result_paths",
    "segment_array",
    "unmet_requirements",
    "unmet_torch",
    "write_input",
]
