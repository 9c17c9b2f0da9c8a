"""How a batch run reports progress and failures: a progress bar, machine-readable lines, or nothing.

The line format is the contract with programs that run the bundle (the 3D Slicer module reads it):
``PROGRESS <done> <total>`` after each unit of work and ``ERROR <message>`` for each input that failed, each on
its own line of standard output. Everything else the run prints is log text.
"""

from __future__ import annotations

import logging

from tqdm import tqdm

__all__ = ["PROGRESS_KINDS", "ProgressReporter", "BarProgress", "LineProgress", "make_progress"]

logger = logging.getLogger(__name__)
PROGRESS_KINDS = ("bar", "lines", "none")


class ProgressReporter:
    """Reports nothing but logs failures; the base of the other reporters.

    A run calls :meth:`start` once the amount of work is known, :meth:`advance` after each unit, :meth:`error`
    for each failed input, and :meth:`finish` at the end.
    """

    def __init__(self) -> None:
        self.done, self.total = 0, 0

    def start(self, total: int, unit: str) -> None:
        self.done, self.total = 0, total

    def advance(self) -> None:
        self.done += 1

    def error(self, message: str) -> None:
        logger.error(message)

    def finish(self) -> None:
        pass


class BarProgress(ProgressReporter):
    """A tqdm progress bar on standard error."""

    def __init__(self) -> None:
        super().__init__()
        self.bar: tqdm | None = None

    def start(self, total: int, unit: str) -> None:
        super().start(total, unit)
        self.bar = tqdm(total=total, unit=unit)

    def advance(self) -> None:
        super().advance()
        self.bar.update()

    def finish(self) -> None:
        if self.bar is not None:  # a single input that could not be read never started the bar
            self.bar.close()


class LineProgress(ProgressReporter):
    """``PROGRESS <done> <total>`` and ``ERROR <message>`` lines on standard output, flushed at once."""

    def advance(self) -> None:
        super().advance()
        print(f"PROGRESS {self.done} {self.total}", flush=True)

    def error(self, message: str) -> None:
        super().error(message)
        print(f"ERROR {message}", flush=True)


def make_progress(kind: str) -> ProgressReporter:
    """The reporter for ``kind``: one of :data:`PROGRESS_KINDS`."""
    reporters = {"bar": BarProgress, "lines": LineProgress, "none": ProgressReporter}
    if kind not in reporters:
        raise ValueError(f"progress must be one of {list(PROGRESS_KINDS)}, got {kind!r}")
    return reporters[kind]()
