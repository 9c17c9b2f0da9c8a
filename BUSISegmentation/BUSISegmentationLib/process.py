"""A child process whose output is read by a thread, so that a GUI can poll it without ever blocking."""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["BackgroundProcess", "kill_process_tree"]


def kill_process_tree(pid: int, timeout: float = 5.0) -> None:
    """Kill a process and all its descendants, children first; wait until the descendants have stopped.

    Killing only the process is not enough: inside 3D Slicer ``PythonSlicer`` is a launcher, and killing it would
    leave the Python process that does the work running. The process itself is not reaped, so that its parent
    still gets its exit code.
    """
    # psutil is imported here so that the module loads before the Python dependencies are installed.
    import psutil

    def running(process: psutil.Process) -> bool:
        try:
            return process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    try:
        parent = psutil.Process(pid)
        descendants = parent.children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for process in descendants + [parent]:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            continue
    deadline = time.monotonic() + timeout
    while any(running(process) for process in descendants) and time.monotonic() < deadline:
        time.sleep(0.02)


class BackgroundProcess:
    """Run a command in the background and collect its output lines (stdout and stderr together).

    Args:
        command: program and arguments.
        env: environment of the child; None keeps the current environment.
        cwd: working directory of the child; None keeps the current one.
        accepts_input: give the child a standard input that :meth:`send` writes to; otherwise it has none.
    """

    def __init__(
        self,
        command: Sequence[str | Path],
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        accepts_input: bool = False,
    ) -> None:
        if not command:
            raise ValueError("command is empty; give the program to run and its arguments")
        self.command = [str(part) for part in command]
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.accepts_input = accepts_input
        self.cancelled = False
        self._process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._lines: queue.Queue[str] = queue.Queue()

    def start(self) -> None:
        """Start the command; output collection begins at once."""
        if self._process is not None:
            raise RuntimeError(f"process {self.command[0]} was already started")
        options = {}
        if os.name == "nt":
            # Keep a console window from popping up for the child on Windows.
            startup = subprocess.STARTUPINFO()
            startup.dwFlags |= subprocess.STARTF_USESHOWWINDOW
            startup.wShowWindow = subprocess.SW_HIDE
            options["startupinfo"] = startup
        self._process = subprocess.Popen(
            self.command,
            stdin=subprocess.PIPE if self.accepts_input else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            env=self.env,
            cwd=self.cwd,
            **options,
        )
        self._reader = threading.Thread(target=self._read_output, name="BackgroundProcessReader", daemon=True)
        self._reader.start()

    def _read_output(self) -> None:
        with self._process.stdout as stream:
            for line in stream:
                self._lines.put(line.rstrip("\r\n"))

    @property
    def pid(self) -> int | None:
        """Process id of the child, None before start."""
        return self._process.pid if self._process is not None else None

    @property
    def is_running(self) -> bool:
        """True while the child runs or output it wrote is still being read."""
        if self._process is None:
            return False
        return self._process.poll() is None or self._reader.is_alive()

    @property
    def returncode(self) -> int | None:
        """Exit code of the child; None before start and while it runs."""
        return self._process.poll() if self._process is not None else None

    @property
    def exiting(self) -> bool:
        """True from the moment the child's main thread has ended, also while its other threads are still ending
        (only then can its exit code be read; meanwhile what is written to its input is accepted and never read)."""
        import psutil

        if self._process is None:
            return False
        if self.returncode is not None:
            return True
        try:
            return psutil.Process(self._process.pid).status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
        except psutil.NoSuchProcess:
            return True

    def send(self, line: str) -> None:
        """Write one line to the child's standard input (see ``accepts_input``).

        Raises:
            OSError: the child has closed its input, or has exited.
        """
        self._process.stdin.write(line + "\n")
        self._process.stdin.flush()

    def poll(self, timeout: float = 0.0) -> list[str]:
        """Output lines received since the last call, waiting up to ``timeout`` seconds for the first one."""
        lines = []
        if timeout > 0:
            try:
                lines.append(self._lines.get(timeout=timeout))
            except queue.Empty:
                return lines
        while True:
            try:
                lines.append(self._lines.get_nowait())
            except queue.Empty:
                return lines

    def cancel(self) -> None:
        """Kill the child and everything it started; does nothing when it has already finished."""
        if self._process is None or self._process.poll() is not None:
            return
        self.cancelled = True
        kill_process_tree(self._process.pid)
        self._process.wait()
        if self._process.stdin is not None:
            try:
                self._process.stdin.close()
            except OSError:
                pass  # the child is gone: what was left unread in the pipe does not matter

    def wait(self, timeout: float | None = None) -> int:
        """Wait until the child has exited and all its output has been read; returns its exit code.

        Raises:
            subprocess.TimeoutExpired: the child did not finish within ``timeout`` seconds.
        """
        if self._process is None:
            raise RuntimeError("process was not started")
        self._process.wait(timeout)
        self._reader.join(timeout)
        return self._process.returncode
