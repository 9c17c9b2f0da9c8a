"""``busi-segment``: segment breast ultrasound files and folders with the bundle's inference workflow.

The tool ships inside the bundle it runs (``scripts/cli.py``). It only fills in overrides of
``configs/inference.json`` and runs that workflow in this process, so it reads, preprocesses, infers, postprocesses
and writes exactly as ``python -m monai.bundle run`` does. It imports nothing of the bundle before the workflow puts
the bundle on ``sys.path``, so it works from an installed wheel and from a source checkout alike.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["BUNDLE_DIR", "BUNDLE_DIR_ENV", "DEVICES", "FORMATS", "build_parser", "main"]

# The bundle this file belongs to; $BUSI_BUNDLE_DIR or --bundle choose another one.
BUNDLE_DIR = Path(__file__).resolve().parents[1]
BUNDLE_DIR_ENV = "BUSI_BUNDLE_DIR"
# "auto" keeps the bundle's own choice (the GPU when there is one).
DEVICES = ("auto", "cpu", "cuda")
FORMATS = ("png", "nifti", "seg.nrrd", "dicom-seg", "dicom-sr")

EXAMPLES = """\
examples:
  busi-segment scan.png -o results
      results/scan_seg.png (label map 0/1/2), scan_overlay.jpg, scan_lesions.csv/.json
  busi-segment cine.dcm -o results --format dicom-seg,dicom-sr,nifti
      one DICOM SEG referencing the source instance (every frame of a cine loop), a DICOM SR of the lesions'
      measurements referencing the SEG, and NIfTI
  busi-segment stack.nii.gz volume.nrrd -o results --format nifti,seg.nrrd
      every frame of each stack segmented; geometry (spacing, origin, direction) kept
  busi-segment study_folder/ -o results --tta --device cpu --no-overlays
      every supported file under study_folder/, recursively; results/<relative path>/<name>_seg.*

A format that does not apply to an input (DICOM SEG of a picture) is skipped for it with a note. Running again
into the same output folder replaces each input's earlier results: its files that this run does not write again
are removed; other files are left alone. An output folder inside an input folder is left out of the search.

Exit code 0 when every input was segmented, 1 when any failed (each failure is reported on one line).
"""


def _formats(value: str) -> str | list[str]:
    if value == "auto":
        return value
    formats = [f.strip() for f in value.split(",") if f.strip()]
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        raise argparse.ArgumentTypeError(f"unknown format(s) {unknown or value!r}; choose from {', '.join(FORMATS)}")
    return formats


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="busi-segment",
        description="Segment breast ultrasound images into background, benign lesion and malignant lesion. "
        "Research use only, not for diagnosis.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files or folders (searched recursively): PNG, JPEG, BMP, TIFF, DICOM (.dcm or no suffix), "
        "NIfTI, NRRD, MHA/MHD",
    )
    parser.add_argument(
        "-o", "--output", required=True, type=Path, help="output folder (created); must not be an input folder itself"
    )
    parser.add_argument(
        "--format",
        default="auto",
        type=_formats,
        help="comma-separated output formats: png, nifti, seg.nrrd, dicom-seg, dicom-sr (with dicom-seg). 'auto' "
        "(default) chooses per input: PNG for pictures, DICOM SEG, DICOM SR and NIfTI for DICOM, NIfTI for NIfTI/MHA, "
        "seg.nrrd for NRRD",
    )
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="where the network runs; 'auto' (default) uses a CUDA GPU when there is one",
    )
    parser.add_argument(
        "--tta", action="store_true", help="average with the horizontally mirrored image (about twice the time)"
    )
    parser.add_argument(
        "--no-overlays", action="store_true", help="do not write the overlay pictures (faster for large batches)"
    )
    parser.add_argument(
        "--progress",
        choices=("bar", "lines", "none"),
        default="bar",
        help="progress bar (default), 'PROGRESS done total' lines for programs, or nothing",
    )
    parser.add_argument(
        "--weights",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="network weights to use instead of the shipped ones, e.g. the runs/finetune/model.pt of a fine-tuning "
        "on your scanner; several files are averaged as an ensemble",
    )
    parser.add_argument(
        "--bundle", type=Path, help=f"bundle folder (default: ${BUNDLE_DIR_ENV}, else the bundle this tool ships with)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the tool; returns the exit code (SystemExit carries it when inputs fail)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    bundle = args.bundle or Path(os.environ.get(BUNDLE_DIR_ENV) or BUNDLE_DIR)
    configs = bundle / "configs"
    if not (configs / "inference.json").is_file():
        parser.error(f"{bundle}: not a bundle folder (no configs/inference.json)")
    import torch
    from monai.bundle import ConfigWorkflow

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is available here; use --device cpu")
    folders = [str(p) for p in args.inputs if Path(p).is_dir()]
    files = [str(p) for p in args.inputs if not Path(p).is_dir()]
    override = {"device": args.device} if args.device != "auto" else {}
    if args.weights:
        if missing := [str(path) for path in args.weights if not path.is_file()]:
            parser.error(f"--weights: {', '.join(missing)}: no such file")
        override["checkpoint"] = [str(path.resolve()) for path in args.weights]
    workflow = ConfigWorkflow(
        config_file=str(configs / "inference.json"),
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        workflow_type=None,
        bundle_root=str(bundle),
        input_dir=folders,
        input_files=files,
        output_dir=str(args.output),
        formats=args.format,
        tta=args.tta,
        overlays=not args.no_overlays,
        progress=args.progress,
        **override,
    )
    workflow.initialize()
    workflow.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
