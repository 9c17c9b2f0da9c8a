"""Segment every image of a folder (or a list of files) and write label maps, lesion tables and overlays.

:meth:`BatchSegmentation.segment` is the core every front end shares: each frame goes through the bundle's
``preprocessing`` (the intensity scaling and resizing of training), its ``inferer`` (network, test-time flipping,
ensemble: class probabilities) and its ``postprocessing`` (lesions found at network resolution, then brought to the
frame's size). :meth:`BatchSegmentation.run` is the batch job around it: several files at a time, each read,
segmented and written by one worker thread. A file that cannot be read or written is reported on one line and
skipped; the others are still done, and the run ends with a non-zero exit code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import Inferer

from scripts.predict import load_networks
from scripts.progress import ProgressReporter, make_progress
from scripts.reader import ImageReadError, UltrasoundImage, is_supported, read_image
from scripts.writers import (
    SUPPORTED_FORMATS,
    SegmentationResult,
    applicable_formats,
    default_formats,
    remove_earlier_outputs,
    write_outputs,
)

__all__ = ["BatchSegmentation", "find_inputs", "input_datalist", "output_stem"]

logger = logging.getLogger(__name__)


def find_inputs(
    input_dir: str | Path | Sequence[str | Path] | None,
    input_files: Sequence[str | Path] = (),
    exclude: str | Path | None = None,
) -> list[tuple[Path, Path]]:
    """(file, root) pairs: the given files, then every supported file under the input folder(s), sorted.

    Args:
        input_dir: folder or folders searched recursively; None for none.
        input_files: single files.
        exclude: a folder whose contents are never inputs (the output folder, which may lie inside an input folder).
    """
    found = [(Path(f), Path(f).parent) for f in input_files]
    excluded = Path(exclude).resolve() if exclude is not None else None
    folders = [input_dir] if isinstance(input_dir, (str, Path)) else list(input_dir or ())
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise SystemExit(f"{folder}: input folder does not exist")
        for path in sorted(folder.rglob("*")):
            if excluded is not None and (excluded == path.resolve() or excluded in path.resolve().parents):
                continue
            if path.is_file() and is_supported(path):
                found.append((path, folder))
    return found


def input_datalist(input_dir: str | None, input_files: Sequence[str] = ()) -> list[dict]:
    """``[{"image": path}, ...]`` of the inputs, for MONAI's ``Dataset`` in tools that run the bundle by its ids."""
    return [{"image": str(path)} for path, _ in find_inputs(input_dir, input_files)]


def output_stem(path: Path, root: Path, output_dir: Path) -> Path:
    """``output_dir/<path relative to root>`` without its suffix (``.nii.gz`` counts as one suffix)."""
    relative = path.relative_to(root)
    name = relative.name[: -len(".nii.gz")] if relative.name.lower().endswith(".nii.gz") else relative.stem
    return output_dir / relative.parent / name


class BatchSegmentation:
    """The bundle's inference: :meth:`segment` one image, or :meth:`run` over files and write the results.

    Args:
        network: the network (on ``device``), or an ``nn.ModuleList`` of networks for an ensemble.
        preprocessing: dictionary transform of ``{"image": (1, H, W) frame}`` (a path is read by its first step).
        inferer: turns a batch of preprocessed frames into class probabilities.
        postprocessing: dictionary transform turning ``"pred"`` probabilities into a label map (``"pred"``) and a
            lesion list (``"pred_lesions"``) at the frame's size, using the ``"image"`` entry's metadata; it also
            gets the frame under ``"frame"`` and its (row, column) pixel size in mm, or None, under ``"spacing"``.
        output_dir: where results go.
        input_dir: folder (or folders) searched recursively for images; None when only ``input_files`` are given.
        input_files: single files to segment.
        checkpoint: weights to load (a state dict), or a list of them for an ensemble: ``network`` is copied once
            per checkpoint and ``inferer`` averages the copies' probabilities; None when the network is loaded.
        formats: "auto" (each input's default, e.g. PNG for pictures, DICOM SEG for DICOM) or a comma-separated
            string or list of :data:`scripts.writers.SUPPORTED_FORMATS`.
        overlays: also write an overlay picture per input.
        device: torch device of the network.
        batch_size: frames per forward pass.
        progress: "bar", "lines" or "none" (see :mod:`scripts.progress`); a single input counts frames, several
            inputs count files.
        workers: inputs segmented at a time when there are several (see :meth:`run`); None: one per torch thread.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        preprocessing: Callable[[dict], dict],
        inferer: Inferer,
        postprocessing: Callable[[dict], dict],
        output_dir: str,
        input_dir: str | Sequence[str] | None = None,
        input_files: Sequence[str] = (),
        checkpoint: str | Sequence[str] | None = None,
        formats: str | Sequence[str] = "auto",
        overlays: bool | str = True,
        device: torch.device | str = "cpu",
        batch_size: int = 8,
        progress: str = "bar",
        workers: int | None = None,
    ) -> None:
        if isinstance(formats, str) and formats != "auto":
            formats = [f.strip() for f in formats.split(",") if f.strip()]
        unknown = [] if formats == "auto" else sorted(set(formats) - set(SUPPORTED_FORMATS))
        if unknown:
            raise ValueError(f"unknown output format(s) {unknown}; choose from {list(SUPPORTED_FORMATS)} or 'auto'")
        make_progress(progress)  # fail on a bad value now, not after the first file
        self.network = network
        self._member = network  # the network each checkpoint of an ensemble is loaded into a copy of
        self.preprocessing = preprocessing
        self.inferer = inferer
        self.postprocessing = postprocessing
        self.output_dir = Path(output_dir)
        self.input_dir = input_dir
        self.input_files = list(input_files or ())
        self.checkpoint = checkpoint
        self.formats = formats
        # a command-line override such as ``--overlays false`` arrives as a string
        self.overlays = overlays.strip().lower() in ("true", "1", "yes") if isinstance(overlays, str) else overlays
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.progress = progress
        self.workers = workers
        self._weights_loaded = checkpoint is None

    def load_weights(self) -> None:
        """Load ``checkpoint`` (each of them, for an ensemble) once: weights only, never pickled code."""
        if self._weights_loaded:
            return
        self.network = load_networks(self._member, self.checkpoint, self.device)
        self._weights_loaded = True

    def use_checkpoint(self, checkpoint: str | Sequence[str]) -> None:
        """Segment with the weights of ``checkpoint`` (a list: an ensemble) from now on, loaded when first needed."""
        if checkpoint != self.checkpoint:
            self.checkpoint, self._weights_loaded = checkpoint, False

    @torch.inference_mode()
    def probabilities(self, frames: Sequence[np.ndarray]) -> list[dict]:
        """Preprocessed items of ``frames`` with their class probabilities under ``"pred"`` (network resolution)."""
        self.load_weights()
        items = [self.preprocessing({"image": MetaTensor(torch.from_numpy(f[np.newaxis].copy()))}) for f in frames]
        batch = torch.stack([item["image"].as_tensor() for item in items]).to(self.device)
        probabilities = self.inferer(batch, self.network)
        return [{**item, "pred": p.cpu()} for item, p in zip(items, probabilities)]

    def segment(self, image: UltrasoundImage, on_frame: Callable[[], None] | None = None) -> SegmentationResult:
        """Label map and lesions of every frame of ``image``; ``on_frame`` is called after each frame."""
        labels, lesions = [], []
        for start in range(0, image.num_frames, self.batch_size):
            frames = image.frames[start : start + self.batch_size]
            for frame, item in zip(frames, self.probabilities(frames)):
                # the frame itself and its pixel size, for the lesion descriptors
                item = self.postprocessing({**item, "frame": frame, "spacing": image.spacing})
                labels.append(np.asarray(item["pred"], dtype=np.uint8)[0])
                lesions.append(item["pred_lesions"])
                if on_frame:
                    on_frame()
        return SegmentationResult(image=image, labels=np.stack(labels), lesions=lesions)

    def _inputs(self) -> list[tuple[Path, Path]]:
        folders = [self.input_dir] if isinstance(self.input_dir, (str, Path)) else list(self.input_dir or ())
        if any(Path(folder).resolve() == self.output_dir.resolve() for folder in folders):
            # an output folder inside an input folder is fine: it is left out of the search
            raise SystemExit(f"{self.output_dir}: output folder must not be the input folder itself")
        inputs = find_inputs(self.input_dir, self.input_files, exclude=self.output_dir)
        if not inputs:
            raise SystemExit(f"no supported image found in {self.input_dir or self.input_files}")
        return inputs

    def _formats(self, image: UltrasoundImage) -> list[str]:
        requested = default_formats(image) if self.formats == "auto" else list(self.formats)
        formats, skipped = applicable_formats(image, requested)
        for name, reason in skipped:
            logger.warning(f"{image.path}: {name} skipped ({reason})")
        if not formats:
            raise ValueError(f"{image.path}: none of the formats {requested} applies to this input")
        return formats

    def _segment_file(self, path: Path, stem: Path, frame_progress: ProgressReporter | None = None) -> list[Path]:
        """Read, segment and write one input; returns the files written. ``frame_progress`` counts its frames."""
        image = read_image(path)
        formats = self._formats(image)
        on_frame = None
        if frame_progress is not None:
            frame_progress.start(image.num_frames, "frame")
            on_frame = frame_progress.advance
        result = self.segment(image, on_frame=on_frame)
        paths = write_outputs(result, stem, formats, overlay=self.overlays)
        remove_earlier_outputs(stem, keep=paths)
        return paths

    def run(self) -> list[Path]:
        """Segment all inputs; returns the files written, in the order of the inputs.

        Several inputs are segmented ``workers`` at a time, each worker reading, segmenting and writing whole files
        with one torch thread: on a CPU this does more images per second than one file at a time with every core
        inside the network, because reading, pre- and postprocessing and writing then overlap the network. A single
        input (e.g. a cine loop from 3D Slicer) keeps every core for its frames and reports progress per frame.

        Each input's earlier results in the output folder (from an earlier run) are replaced: files of that input
        that this run does not write again are removed, so a folder never mixes two runs of one input.

        Raises:
            SystemExit: with a message and a non-zero code when an input failed (after doing the others) or when
                no input was found.
        """
        try:
            self.load_weights()
        except FileNotFoundError as error:
            raise SystemExit(str(error)) from error
        inputs = self._inputs()
        started = time.perf_counter()
        written: dict[int, list[Path]] = {}
        failed: dict[int, str] = {}
        report = make_progress(self.progress)

        def report_failure(index: int, error: Exception) -> None:
            path = inputs[index][0]
            failed[index] = str(error) if str(path) in str(error) else f"{path}: {error}"
            report.error(failed[index])

        several = len(inputs) > 1
        if several:
            report.start(len(inputs), "file")
        stems: dict[int, Path] = {}  # input index -> output stem, for the inputs to segment
        first_with_stem: dict[Path, Path] = {}
        for index, (path, root) in enumerate(inputs):
            stem = output_stem(path, root, self.output_dir)
            if stem in first_with_stem:
                clash = ValueError(f"{path}: its outputs would overwrite those of {first_with_stem[stem]}")
                report_failure(index, clash)
                report.advance()
            else:
                first_with_stem[stem], stems[index] = path, stem

        def segment_file(index: int) -> Exception | None:
            """The input's failure, if any, reported by the caller: only the main thread reports."""
            try:
                written[index] = self._segment_file(inputs[index][0], stems[index], None if several else report)
            except (ImageReadError, ValueError, OSError, RuntimeError) as error:
                return error
            return None

        def finished(index: int, error: Exception | None) -> None:
            if error is not None:
                report_failure(index, error)
            if several:
                report.advance()

        torch_threads = torch.get_num_threads()
        workers = min(self.workers or torch_threads, len(stems)) if several else 1
        if workers <= 1:
            for index in stems:
                finished(index, segment_file(index))
        else:
            torch.set_num_threads(1)  # the workers share the cores instead of each using all of them
            try:
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    futures = {pool.submit(segment_file, index): index for index in stems}
                    try:
                        for future in as_completed(futures):
                            finished(futures[future], future.result())
                    except BaseException:  # e.g. interrupted: do not start the inputs still waiting
                        for future in futures:
                            future.cancel()
                        raise
            finally:
                torch.set_num_threads(torch_threads)
        report.finish()
        logger.info(
            f"segmented {len(inputs) - len(failed)} of {len(inputs)} inputs in {time.perf_counter() - started:.1f} s"
            f" -> {self.output_dir}"
        )
        if failed:
            messages = [failed[index] for index in sorted(failed)]
            raise SystemExit(f"{len(failed)} of {len(inputs)} inputs failed:\n" + "\n".join(messages))
        return [path for index in sorted(written) for path in written[index]]
