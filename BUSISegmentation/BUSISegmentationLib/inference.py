"""Segment an image array with the bundle running in a separate process, the warm engine.

:class:`BundleRun` is one inference that its owner polls: a loop in :func:`segment_array`, or a GUI timer in the
3D Slicer module, so that the application stays responsive while the bundle works.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .bundle import inference_overrides, locate_bundle
from .engine import Engine, EngineSettings, acquire_engine
from .progress import OutputParser, Progress, ProgressCallback
from .volume_io import check_input, read_result, write_input

__all__ = [
    "BundleRun",
    "RunConfig",
    "SegmentationCancelled",
    "SegmentationError",
    "SegmentationOutput",
    "segment_array",
]

INPUT_STEM = "image"
POLL_INTERVAL_S = 0.1


class SegmentationError(RuntimeError):
    """The bundle inference failed; the message has its error lines or its last output."""


class SegmentationCancelled(RuntimeError):
    """The run was cancelled before it finished."""


@dataclass
class RunConfig:
    """How the bundle is run.

    Args:
        device: "auto" (GPU when available), "cpu" or "cuda".
        tta: also segment the mirrored image and average.
        python_executable: Python with MONAI and torch; None for the running interpreter.
        bundle_dir: bundle folder; None to search for it (see ``bundle.locate_bundle``).
        env: environment of the inference process; None for the current one.
    """

    device: str = "auto"
    tta: bool = False
    python_executable: str | Path | None = None
    bundle_dir: str | Path | None = None
    env: Mapping[str, str] | None = None


@dataclass
class SegmentationOutput:
    """Result of one run.

    Args:
        labels: ``(frames, rows, columns)`` uint8: 0 background, 1 benign lesion, 2 malignant lesion.
        lesions: one dict per lesion as the bundle's lesion table has it (``frame``, ``class_name``,
            ``confidence``, ``area_px``, ``area_mm2``, ...).
    """

    labels: np.ndarray
    lesions: list[dict] = field(default_factory=list)


class BundleRun:
    """One bundle inference on one array, started with :meth:`start` and followed with :meth:`poll`.

    It runs in the warm engine (see :mod:`BUSISegmentationLib.engine`): the first run of a program starts the engine
    process, later runs with the same device, Python, bundle and environment reuse it and its loaded networks.

    Args:
        array: ``(frames, rows, columns)`` or ``(frames, rows, columns, 3 or 4)`` pixels, as 3D Slicer's
            ``arrayFromVolume`` gives them.
        spacing: pixel size in mm along columns, rows and frames; None when the image has none (a picture): the
            bundle then gives lesion areas in pixels only (``area_mm2`` None).
        origin: LPS position of the first pixel in mm.
        direction: 3x3 LPS directions of the column, row and frame axes (as columns); None for identity.
        config: how to run the bundle.
        work_dir: folder for the input and output files, kept afterwards; None for the engine's own folder, whose
            files are replaced by the next run.
    """

    def __init__(
        self,
        array: np.ndarray,
        spacing: Sequence[float] | None = (1.0, 1.0, 1.0),
        origin: Sequence[float] = (0.0, 0.0, 0.0),
        direction: np.ndarray | None = None,
        config: RunConfig | None = None,
        work_dir: str | Path | None = None,
    ) -> None:
        self.array = np.asarray(array)
        self.spacing = spacing
        self.origin = origin
        self.direction = direction
        self.config = config or RunConfig()
        self.parser = OutputParser()
        self.work_dir = None if work_dir is None else Path(work_dir)
        self._engine: Engine | None = None

    @property
    def output_dir(self) -> Path:
        return self.work_dir / "output"

    def start(self) -> None:
        """Write the input file and send it to the engine, starting the engine when needed.

        Raises:
            ValueError: the array or geometry cannot be written, or the device is unknown.
            FileNotFoundError: the bundle was not found.
        """
        if self._engine is not None:
            raise RuntimeError("the run was already started")
        # Bad values fail here, before an engine process is started for nothing.
        check_input(self.array, self.spacing, self.origin, self.direction)
        bundle_dir = Path(self.config.bundle_dir) if self.config.bundle_dir else locate_bundle()
        env = os.environ if self.config.env is None else self.config.env
        python = self.config.python_executable or sys.executable
        settings = EngineSettings.make(python, bundle_dir, self.config.device, env)
        given_work_dir = self.work_dir
        engine = acquire_engine(settings)
        try:
            for _ in range(2):
                # The engine's folder keeps its file names from run to run, so the engine keeps its workflow.
                self.work_dir = given_work_dir or engine.work_dir
                # The input has a folder of its own: the bundle refuses an output folder inside the input's folder.
                input_file = write_input(
                    self.array, self.spacing, self.origin, self.direction,
                    self.work_dir / "input" / f"{INPUT_STEM}.nrrd",
                )
                shutil.rmtree(self.output_dir, ignore_errors=True)  # a result is never one of an earlier run
                request = inference_overrides(
                    bundle_dir, input_file, self.output_dir, self.config.device, self.config.tta
                )
                if engine.submit(request):
                    break
                # the warm engine died while idle: a new one takes the request and says so
                engine.release()
                engine = acquire_engine(settings)
            else:
                raise SegmentationError(f"the segmentation engine exited at start (exit code {engine.exit_code})")
        except Exception:
            engine.release()
            raise
        self._engine = engine

    @property
    def is_running(self) -> bool:
        """True from :meth:`start` until :meth:`poll` has returned the run's last output line."""
        return self._engine is not None and self._engine.request_open

    def poll(self, timeout: float = 0.0) -> list[Progress]:
        """Progress after each output line received since the last call, waiting up to ``timeout`` seconds for the
        first one (0: never blocks)."""
        if self._engine is None:
            return []
        return [self.parser.feed(line) for line in self._engine.poll(timeout)]

    @property
    def cancelled(self) -> bool:
        """True when the engine was stopped during the run: by :meth:`cancel` or by ``stop_engine``."""
        return self._engine is not None and self._engine.request_cancelled

    def cancel(self) -> None:
        """Stop the inference: the engine process and everything it started (the next run starts a new one)."""
        if self.is_running:
            self._engine.stop()

    def result(self) -> SegmentationOutput:
        """The segmentation of a finished run.

        Raises:
            SegmentationCancelled: the run was cancelled.
            SegmentationError: the inference failed.
        """
        if self._engine is None or self.is_running:
            raise RuntimeError("the run has not finished; poll until is_running is False")
        if self.cancelled:
            raise SegmentationCancelled("segmentation was cancelled")
        returncode = self._engine.returncode
        if returncode != 0:
            raise SegmentationError(self.parser.failure_message(returncode))
        labels, lesions = read_result(self.output_dir, INPUT_STEM, shape=self.array.shape[:3])
        return SegmentationOutput(labels=labels, lesions=lesions)

    def cleanup(self) -> None:
        """Hand the engine back for the next run; a run still going is stopped. A given ``work_dir`` is kept."""
        if self._engine is not None:
            self._engine.release()


def segment_array(
    array: np.ndarray,
    spacing: Sequence[float] | None = (1.0, 1.0, 1.0),
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    direction: np.ndarray | None = None,
    device: str = "auto",
    tta: bool = False,
    progress_callback: ProgressCallback | None = None,
    cancel_event: threading.Event | None = None,
    work_dir: str | Path | None = None,
    python_executable: str | Path | None = None,
    bundle_dir: str | Path | None = None,
    env: Mapping[str, str] | None = None,
) -> SegmentationOutput:
    """Segment every frame of an image with the bundle and wait for the result.

    Args:
        array: ``(frames, rows, columns)`` or ``(frames, rows, columns, 3 or 4)`` pixels.
        spacing: pixel size in mm along columns, rows and frames; None when the image has none (a picture): the
            bundle then gives lesion areas in pixels only (``area_mm2`` None).
        origin: LPS position of the first pixel in mm.
        direction: 3x3 LPS directions of the column, row and frame axes (as columns); None for identity.
        device: "auto", "cpu" or "cuda".
        tta: also segment the mirrored image and average.
        progress_callback: called with the progress after each output line of the inference.
        cancel_event: when set, the inference is stopped and :class:`SegmentationCancelled` raised.
        work_dir: keep the input and output files in this folder; None for the engine's folder, reused by the next
            call.
        python_executable: Python with MONAI and torch; None for the running interpreter.
        bundle_dir: bundle folder; None to search for it.
        env: environment of the inference process; None for the current one.

    Raises:
        ValueError: bad array, geometry or device.
        SegmentationError: the inference failed.
        SegmentationCancelled: ``cancel_event`` was set.
    """
    config = RunConfig(device=device, tta=tta, python_executable=python_executable, bundle_dir=bundle_dir, env=env)
    run = BundleRun(array, spacing, origin, direction, config, work_dir)
    try:
        run.start()
        while True:
            for progress in run.poll(timeout=POLL_INTERVAL_S):
                if progress_callback:
                    progress_callback(progress)
            if cancel_event is not None and cancel_event.is_set():
                run.cancel()
                raise SegmentationCancelled("segmentation was cancelled")
            if not run.is_running:
                return run.result()
    finally:
        run.cleanup()
