"""Reading the bundle's machine-readable output: ``PROGRESS <done> <total>`` and ``ERROR <message>`` lines.

With ``--progress lines`` the bundle inference prints one ``PROGRESS`` line per segmented frame and one ``ERROR``
line per input it could not segment; everything else it prints is log text.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Progress", "ProgressCallback", "OutputParser", "parse_progress_line", "ERROR_PREFIX"]

ERROR_PREFIX = "ERROR "
_PROGRESS_LINE = re.compile(r"^PROGRESS (\d+) (\d+)\s*$")


@dataclass(frozen=True)
class Progress:
    """State of a run after one line of its output.

    Args:
        done: frames segmented so far.
        total: frames to segment; 0 until the bundle has reported it.
        line: the output line that produced this update, without the line break.
    """

    done: int
    total: int
    line: str

    @property
    def fraction(self) -> float:
        """Share of the frames done, in [0, 1]; 0 while the total is unknown."""
        return min(self.done / self.total, 1.0) if self.total else 0.0


# The one callback type for progress: called once per output line of the inference process.
ProgressCallback = Callable[[Progress], None]


def parse_progress_line(line: str) -> tuple[int, int] | None:
    """``(done, total)`` of a ``PROGRESS <done> <total>`` line, None for any other line."""
    match = _PROGRESS_LINE.match(line.strip())
    return (int(match.group(1)), int(match.group(2))) if match else None


class OutputParser:
    """Follows the output of one run: frame counts, error lines and the most recent lines.

    Args:
        keep_lines: how many of the last output lines to keep for error messages.
    """

    def __init__(self, keep_lines: int = 50) -> None:
        self.done = 0
        self.total = 0
        self.errors: list[str] = []
        self.recent_lines: deque[str] = deque(maxlen=keep_lines)

    def feed(self, line: str) -> Progress:
        """Take one output line and return the progress after it."""
        self.recent_lines.append(line)
        counts = parse_progress_line(line)
        if counts is not None:
            self.done, self.total = counts
        elif line.startswith(ERROR_PREFIX):
            self.errors.append(line[len(ERROR_PREFIX) :].strip())
        return Progress(done=self.done, total=self.total, line=line)

    def failure_message(self, returncode: int | None) -> str:
        """Why a run failed: its ``ERROR`` lines, or its last output lines when it reported none."""
        details = self.errors or [line for line in self.recent_lines if line.strip()][-10:]
        return f"bundle inference failed (exit code {returncode})" + "".join(f"\n{line}" for line in details)
