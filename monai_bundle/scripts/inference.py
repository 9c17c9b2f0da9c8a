"""Segment every image of a folder (or a list of files) and write label maps, lesion tables and overlays.

Every frame goes through the bundle's ``preprocessing`` (the same intensity scaling and resizing as training), the
network, and the bundle's ``postprocessing`` (softmax, resizing back to the frame's size, one class per lesion).
A file that cannot be read or written is reported on one line and skipped; the others are still done, and the run
ends with a non-zero exit code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import Inferer
from tqdm import tqdm

from scripts.reader import ImageReadError, UltrasoundImage, is_supported, read_image
from scripts.writers import SegmentationResult, default_formats, write_outputs

__all__ = ["SegmentationRunner", "find_inputs", "output_stem"]

logger = logging.getLogger(__name__)

FORMATS = ("png", "nifti", "seg.nrrd", "dicom-seg")


def find_inputs(
    input_dir: str | Path | Sequence[str | Path] | None, input_files: Sequence[str | Path] = ()
) -> list[tuple[Path, Path]]:
    """(file, root) pairs: the given files, then every supported file under the input folder(s), sorted."""
    found = [(Path(f), Path(f).parent) for f in input_files]
    folders = [input_dir] if isinstance(input_dir, (str, Path)) else list(input_dir or ())
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise SystemExit(f"{folder}: input folder does not exist")
        found += [(p, folder) for p in sorted(folder.rglob("*")) if p.is_file() and is_supported(p)]
    return found


def output_stem(path: Path, root: Path, output_dir: Path) -> Path:
    """``output_dir/<path relative to root>`` without its suffix (``.nii.gz`` counts as one suffix)."""
    relative = path.relative_to(root)
    name = relative.name[: -len(".nii.gz")] if relative.name.lower().endswith(".nii.gz") else relative.stem
    return output_dir / relative.parent / name


class SegmentationRunner:
    """The bundle's inference: read, preprocess, infer, postprocess and write, file by file.

    Args:
        network: the segmentation network (on ``device``).
        preprocessing: dictionary transform applied to ``{"image": (1, H, W) frame}``.
        postprocessing: dictionary transform turning ``"pred"`` logits into a label map (``"pred"``) and a lesion
            list (``"pred_lesions"``); it may invert ``preprocessing`` using the ``"image"`` entry.
        inferer: how the network is applied to a batch of frames.
        output_dir: where results go; must not be inside ``input_dir``.
        input_dir: folder (or folders) searched recursively for images; None when only ``input_files`` are given.
        input_files: single files to segment.
        checkpoint: weights to load (a state dict), None when the network is already loaded.
        formats: "auto" (each input's default, e.g. PNG for pictures, DICOM SEG for DICOM) or a list of
            "png", "nifti", "seg.nrrd", "dicom-seg".
        device: torch device of the network.
        tta: average the probabilities of the image and its horizontal mirror.
        batch_size: frames per forward pass.
        progress: "bar" (tqdm), "lines" (``PROGRESS done total`` lines on stdout for programs, counting frames
            for a single input and files for several) or "none".
    """

    def __init__(
        self,
        network: torch.nn.Module,
        preprocessing: Callable[[dict], dict],
        postprocessing: Callable[[dict], dict],
        inferer: Inferer,
        output_dir: str,
        input_dir: str | Sequence[str] | None = None,
        input_files: Sequence[str] = (),
        checkpoint: str | None = None,
        formats: str | Sequence[str] = "auto",
        device: torch.device | str = "cpu",
        tta: bool | str = False,
        batch_size: int = 8,
        progress: str = "bar",
    ) -> None:
        if isinstance(formats, str) and formats != "auto":
            formats = [f.strip() for f in formats.split(",")]
        unknown = [] if formats == "auto" else sorted(set(formats) - set(FORMATS))
        if unknown:
            raise ValueError(f"unknown output format(s) {unknown}; choose from {list(FORMATS)} or 'auto'")
        if progress not in ("bar", "lines", "none"):
            raise ValueError(f"progress must be 'bar', 'lines' or 'none', got {progress!r}")
        self.network = network
        self.preprocessing = preprocessing
        self.postprocessing = postprocessing
        self.inferer = inferer
        self.output_dir = Path(output_dir)
        self.input_dir = input_dir
        self.input_files = list(input_files or ())
        self.checkpoint = checkpoint
        self.formats = formats
        self.device = torch.device(device)
        # a command-line override such as ``--tta false`` arrives as a string
        self.tta = tta.strip().lower() in ("true", "1", "yes") if isinstance(tta, str) else bool(tta)
        self.batch_size = batch_size
        self.progress = progress
        self._weights_loaded = checkpoint is None

    def load_weights(self) -> None:
        """Load ``checkpoint`` into the network once (weights only, never pickled code)."""
        if self._weights_loaded:
            return
        if not Path(self.checkpoint).is_file():
            raise FileNotFoundError(f"{self.checkpoint}: model weights not found")
        state = torch.load(self.checkpoint, map_location=self.device, weights_only=True)
        self.network.load_state_dict(state)
        self.network.eval()
        self._weights_loaded = True

    @torch.inference_mode()
    def _segment_frames(self, items: list[dict]) -> list[dict]:
        batch = torch.stack([item["image"].as_tensor() for item in items]).to(self.device)
        logits = self.inferer(batch, self.network)
        if self.tta:
            mirrored = torch.flip(self.inferer(torch.flip(batch, (-1,)), self.network), (-1,))
            # average probabilities, then return to logits so that postprocessing's softmax gives that average
            logits = ((logits.softmax(1) + mirrored.softmax(1)) / 2).log()
        return [self.postprocessing({**item, "pred": logit.cpu()}) for item, logit in zip(items, logits)]

    def predict(self, image: UltrasoundImage, on_frame: Callable[[], None] | None = None) -> SegmentationResult:
        """Label map and lesions of every frame of ``image``."""
        self.load_weights()
        labels, lesions = [], []
        for start in range(0, image.num_frames, self.batch_size):
            items = [
                self.preprocessing({"image": MetaTensor(torch.from_numpy(frame[np.newaxis].copy()))})
                for frame in image.frames[start : start + self.batch_size]
            ]
            for item in self._segment_frames(items):
                labels.append(np.asarray(item["pred"], dtype=np.uint8)[0])
                lesions.append(item["pred_lesions"])
                if on_frame:
                    on_frame()
        return SegmentationResult(image=image, labels=np.stack(labels), lesions=lesions)

    def _check_output_dir(self, inputs: list[tuple[Path, Path]]) -> None:
        output = self.output_dir.resolve()
        for protected in {root.resolve() for _, root in inputs}:
            if output == protected or protected in output.parents:
                raise SystemExit(f"{self.output_dir}: output folder must not be the input folder or inside it")

    def run(self) -> list[Path]:
        """Segment all inputs; returns the files written.

        Raises:
            SystemExit: with a message and a non-zero code when an input failed (after doing the others), when no
                input was found, or when the output folder is inside the input folder.
        """
        try:
            self.load_weights()
        except FileNotFoundError as error:
            raise SystemExit(str(error)) from error
        inputs = find_inputs(self.input_dir, self.input_files)
        if not inputs:
            raise SystemExit(f"no supported image found in {self.input_dir or self.input_files}")
        self._check_output_dir(inputs)
        started = time.perf_counter()
        written: list[Path] = []
        failed: list[str] = []
        stems: dict[Path, Path] = {}
        bar = tqdm(total=len(inputs), unit="file", disable=self.progress != "bar")
        frames_done = 0

        def report_frame() -> None:
            # a single input (e.g. a cine loop from Slicer) reports progress per frame instead of per file
            nonlocal frames_done
            frames_done += 1
            if self.progress == "lines":
                print(f"PROGRESS {frames_done} {image.num_frames}", flush=True)

        def report_failure(path: Path, error: Exception) -> None:
            message = str(error) if str(path) in str(error) else f"{path}: {error}"
            failed.append(message)
            logger.error(message)
            if self.progress == "lines":
                print(f"ERROR {message}", flush=True)

        def finish_writing(pending: tuple[Path, Future] | None) -> None:
            if pending is None:
                return
            try:
                written.extend(pending[1].result())
            except (ValueError, OSError, RuntimeError) as error:
                report_failure(pending[0], error)

        # read the next file and write the previous one while the network works on the current one
        with ThreadPoolExecutor(max_workers=1) as reader_thread, ThreadPoolExecutor(max_workers=1) as writer_thread:
            pending_read = reader_thread.submit(read_image, inputs[0][0])
            pending_write: tuple[Path, Future] | None = None
            for index, (path, root) in enumerate(inputs):
                try:
                    image = pending_read.result()
                except ImageReadError as error:
                    image, problem = None, error
                if index + 1 < len(inputs):
                    pending_read = reader_thread.submit(read_image, inputs[index + 1][0])
                try:
                    if image is None:
                        raise problem
                    stem = output_stem(path, root, self.output_dir)
                    if stem in stems:
                        raise ValueError(f"{path}: its outputs would overwrite those of {stems[stem]}")
                    stems[stem] = path
                    result = self.predict(image, on_frame=report_frame if len(inputs) == 1 else None)
                    formats = default_formats(image) if self.formats == "auto" else list(self.formats)
                    finish_writing(pending_write)
                    pending_write = (path, writer_thread.submit(write_outputs, result, stem, formats))
                except (ImageReadError, ValueError, OSError, RuntimeError) as error:
                    report_failure(path, error)
                bar.update()
                if self.progress == "lines" and len(inputs) > 1:
                    print(f"PROGRESS {index + 1} {len(inputs)}", flush=True)
            finish_writing(pending_write)
        bar.close()
        logger.info(
            f"segmented {len(inputs) - len(failed)} of {len(inputs)} inputs in {time.perf_counter() - started:.1f} s"
            f" -> {self.output_dir}"
        )
        if failed:
            raise SystemExit(f"{len(failed)} of {len(inputs)} inputs failed:\n" + "\n".join(failed))
        return written
