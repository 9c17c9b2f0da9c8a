"""Everything of the BUSISegmentation module that does not need 3D Slicer: finding and running the MONAI bundle
in a background process, exchanging files with it, following its progress, and the segment descriptions."""

from .bundle import BUNDLE_DIR_ENV, DEVICES, build_command, locate_bundle
from .dependencies import REQUIREMENTS, TORCH_REQUIREMENT, TORCH_VERSION, missing_requirements, torch_missing
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
from .volume_io import read_result, result_paths, write_input

__all__ = [
    "BUNDLE_DIR_ENV",
    "DEVICES",
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
    "build_command",
    "kill_process_tree",
    "load_label_descriptions",
    "locate_bundle",
    "missing_requirements",
    "parse_progress_line",
    "read_result",
    "result_paths",
    "segment_array",
    "torch_missing",
    "write_input",
]
