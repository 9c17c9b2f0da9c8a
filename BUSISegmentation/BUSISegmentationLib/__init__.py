"""Everything of the BUSISegmentation module that does not need 3D Slicer: finding and running the MONAI bundle
in a background process that stays warm between segmentations, exchanging files with it, following its progress,
the segment descriptions, and what the module shows of the lesion table."""

from .bundle import BUNDLE_DIR_ENV, DEVICES, build_command, inference_overrides, locate_bundle
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
from .engine import stop_engine
from .inference import (
    BundleRun,
    RunConfig,
    SegmentationCancelled,
    SegmentationError,
    SegmentationOutput,
    segment_array,
)
from .labels import LabelDescription, load_label_descriptions
from .lesions import LESION_TABLE_HEADERS, DiameterLine, diameter_lines, lesion_table_row, pixels_to_ras
from .process import BackgroundProcess, kill_process_tree
from .progress import OutputParser, Progress, ProgressCallback, parse_progress_line
from .volume_io import lesion_area_text, pixel_size_is_known, read_result, result_paths, write_input

__all__ = [
    "BUNDLE_DIR_ENV",
    "DEVICES",
    "LESION_TABLE_HEADERS",
    "MINIMUM_SLICER_VERSION",
    "REQUIREMENTS",
    "TORCH_REQUIREMENT",
    "TORCH_VERSION",
    "BackgroundProcess",
    "BundleRun",
    "DiameterLine",
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
    "diameter_lines",
    "inference_overrides",
    "kill_process_tree",
    "lesion_area_text",
    "lesion_table_row",
    "load_label_descriptions",
    "locate_bundle",
    "parse_progress_line",
    "pip_install_arguments",
    "pixel_size_is_known",
    "pixels_to_ras",
    "python_problem",
    "read_result",
    "result_paths",
    "segment_array",
    "stop_engine",
    "unmet_requirements",
    "unmet_torch",
    "write_input",
]
