"""A warm engine: one background process that keeps the bundle's networks loaded and segments request after request.

Starting Python and importing MONAI takes seconds, segmenting a picture a fraction of one. The first request starts
an engine process; later requests with the same :class:`EngineSettings` go to the same process. There each request
runs the bundle's inference workflow, ``configs/inference.json`` with the overrides of
:func:`~BUSISegmentationLib.bundle.inference_overrides` (those that ``monai.bundle run`` gets from
:func:`~BUSISegmentationLib.bundle.build_command`). The workflow is made again only when the overrides change, so the
networks are loaded once while the files exchanged keep their names.

Protocol: the engine reads one JSON object (the workflow's arguments) per line on its standard input, prints what the
bundle prints (``PROGRESS`` and ``ERROR`` lines, log text) and ends each request with ``ENGINE DONE <exit code>``. It
exits when its standard input ends, so it never outlives the program that started it.

Lifetime: the engine is stopped (killed with everything it started) when its request is cancelled, after
:data:`IDLE_TIMEOUT_S` without a request, before an engine with other settings (another device) starts, by
:func:`stop_engine`, and when the program exits. A request finding the engine dead (crashed or killed) starts a new
one and says so in its first output line; a request whose engine dies or falls silent fails instead of waiting.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from .bundle import MODULE_DIR, check_device
from .process import BackgroundProcess

__all__ = ["DONE_PREFIX", "Engine", "EngineSettings", "acquire_engine", "serve", "stop_engine"]

logger = logging.getLogger(__name__)

ENGINE_MODULE = "BUSISegmentationLib.engine"
DONE_PREFIX = "ENGINE DONE "
# An idle engine holds memory (GPU memory on a GPU), so it does not wait for ever.
IDLE_TIMEOUT_S = 600.0
# A request whose engine prints nothing for this long has hung: the engine is stopped and the request fails. Every
# frame prints a line; before the first, a new engine imports MONAI and loads the networks.
SILENCE_TIMEOUT_S = 300.0
# A process that is ending (killed, or its input closed): how long to wait for its exit code.
EXIT_CODE_WAIT_S = 10.0


@dataclass(frozen=True)
class EngineSettings:
    """What an engine process is started with: a request with other settings needs another process.

    Args:
        python_executable: Python with MONAI and torch (``PythonSlicer`` inside 3D Slicer).
        bundle_dir: the bundle folder.
        device: one of :data:`~BUSISegmentationLib.bundle.DEVICES`; a change stops the engine, freeing its memory.
        env: environment of the process, as sorted (name, value) pairs.
    """

    python_executable: str
    bundle_dir: str
    device: str
    env: tuple[tuple[str, str], ...]

    @classmethod
    def make(
        cls, python_executable: str | Path, bundle_dir: str | Path, device: str, env: Mapping[str, str]
    ) -> EngineSettings:
        check_device(device)
        return cls(str(python_executable), str(bundle_dir), device, tuple(sorted(env.items())))


class Engine:
    """One engine process, serving one request at a time, and its folder for the files of the requests.

    The caller :meth:`reserve` s it, :meth:`submit` s one request, :meth:`poll` s until :attr:`request_open` is False
    and reads :attr:`returncode`, then :meth:`release` s it.

    Args:
        settings: how the process is started.
        keep_warm: after a request, wait for the next one (at most :data:`IDLE_TIMEOUT_S`); False stops the process
            when its request is released.
        note: a line given to the first request before the engine's output (why a new engine was started).
    """

    def __init__(self, settings: EngineSettings, keep_warm: bool = True, note: str = "") -> None:
        self.settings = settings
        self.keep_warm = keep_warm
        self.work_dir = Path(tempfile.mkdtemp(prefix="BUSISegmentation-"))
        self.stopped = False
        # The current request: sent and not yet ended; its exit code once ended; whether the engine was stopped
        # while it was open (cancelled, the module cleaned up, the program ending).
        self.request_open = False
        self.returncode: int | None = None
        self.request_cancelled = False
        self._reserved = False
        self._notes = [note] if note else []
        self._last_output = 0.0
        self._idle_timer: threading.Timer | None = None
        # The idle timer stops the engine from a thread of its own.
        self._lock = threading.RLock()
        env = dict(settings.env)
        env["PYTHONUNBUFFERED"] = "1"  # progress lines arrive as they are printed
        # This Lib, from the folder that holds it: the Python of the bundle may have another copy, or none.
        start = f"import sys; sys.path.insert(0, {str(MODULE_DIR)!r}); from {ENGINE_MODULE} import serve; serve()"
        self._process = BackgroundProcess([settings.python_executable, "-c", start], env=env, accepts_input=True)
        try:
            self._process.start()
        except Exception:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            raise
        _engines.add(self)

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def alive(self) -> bool:
        """True while the process runs and is not ending."""
        return not self._process.exiting

    @property
    def exit_code(self) -> int | None:
        """Exit code of the process; None while it runs. A process that is ending is waited for (at most
        :data:`EXIT_CODE_WAIT_S`), so that its code can be reported."""
        if self.alive:
            return None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=EXIT_CODE_WAIT_S)
        return self._process.returncode

    def reserve(self) -> bool:
        """Take the engine for one request; False when it is taken, stopped or dead."""
        with self._lock:
            if self._reserved or self.stopped or not self.alive:
                return False
            self._cancel_idle_timer()
            self._reserved = True
            return True

    def submit(self, request: Mapping) -> bool:
        """Send one request: the keyword arguments of ``monai.bundle.create_workflow``.

        Returns False, with no request open, when the process turns out to have died before the request reached it
        (the operating system may report a killed process as running until something writes to it).
        """
        with self._lock:
            if not self._reserved or self.request_open:
                raise RuntimeError("reserve the engine, and let its last request finish, before submitting")
            self._process.poll()  # anything printed while idle belongs to no request
            try:
                self._process.send(json.dumps(request))
            except OSError:
                return False  # the replacement's note waits for the exit code (exit_code)
            self.returncode, self.request_open, self._last_output = None, True, time.monotonic()
            return True

    def poll(self, timeout: float = 0.0) -> list[str]:
        """Output lines of the request since the last call, waiting up to ``timeout`` seconds for the first.

        The request ends (:attr:`request_open` False, :attr:`returncode` set) with the call that returns its last
        line: its ``ENGINE DONE`` line, or the end of the output of a process that died.
        """
        with self._lock:
            lines, self._notes = self._notes, []
            if not self.request_open:
                return lines
            running = self._process.is_running  # read before the lines, so the last ones are not missed
            for line in self._process.poll(timeout=0.0 if lines else timeout):
                self._last_output = time.monotonic()
                if line.startswith(DONE_PREFIX):
                    self._end_request(int(line[len(DONE_PREFIX) :]))
                    return lines
                lines.append(line)
            if not running:
                code = self._process.returncode
                lines.append(f"The segmentation engine stopped during the segmentation (exit code {code})")
                self._end_request(code or 1)
            elif time.monotonic() - self._last_output > SILENCE_TIMEOUT_S:
                lines.append(f"The segmentation engine printed nothing for {SILENCE_TIMEOUT_S:.0f} s; it was stopped")
                self._end_request(1)
                self.stop()
            return lines

    def _end_request(self, returncode: int) -> None:
        self.request_open, self.returncode = False, returncode

    def release(self) -> None:
        """End the caller's use. A request still open is stopped with the process; otherwise the engine waits for
        the next request (:attr:`keep_warm`) or stops."""
        with self._lock:
            if not self._reserved:
                return
            self._reserved = False
            if self.request_open or not self.keep_warm:
                self.stop()
            elif not self.stopped:
                self._idle_timer = threading.Timer(IDLE_TIMEOUT_S, self._stop_if_idle)
                self._idle_timer.daemon = True
                self._idle_timer.start()

    def _stop_if_idle(self) -> None:
        with self._lock:
            if not self._reserved:
                logger.info(f"Segmentation engine (process {self.pid}) stopped after {IDLE_TIMEOUT_S:.0f} s idle")
                self.stop()

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def stop(self) -> None:
        """Kill the process and everything it started, and remove the folder; an open request is cancelled."""
        with self._lock:
            self._cancel_idle_timer()
            self.stopped = True
            if self.request_open:
                self.request_open, self.request_cancelled = False, True
            self._process.cancel()
            shutil.rmtree(self.work_dir, ignore_errors=True)
            _engines.discard(self)


# Every engine process not yet stopped, for stop_engine; the shared one is the warm engine requests go to.
_engines: set[Engine] = set()
_shared: Engine | None = None
_shared_lock = threading.Lock()


def acquire_engine(settings: EngineSettings) -> Engine:
    """A reserved engine for one request: the warm one when it has ``settings`` and is free, else a new one.

    A warm engine with other settings is stopped first (its memory is freed before the new one takes its own); when
    the warm engine is busy with another request, this request gets an engine of its own, stopped after it.
    """
    global _shared
    with _shared_lock:
        note = ""
        if _shared is not None and not _shared.stopped and not _shared.alive:
            note = (
                f"The segmentation engine (process {_shared.pid}) had stopped (exit code {_shared.exit_code}); "
                "starting a new one"
            )
            logger.warning(note)
            _shared.stop()
        if _shared is not None and _shared.settings != settings and _shared.reserve():
            _shared.stop()
        if _shared is None or _shared.stopped:
            _shared = Engine(settings, note=note)
        if _shared.settings == settings and _shared.reserve():
            return _shared
    engine = Engine(settings, keep_warm=False)
    engine.reserve()
    return engine


def stop_engine() -> None:
    """Stop every engine process; requests still running end as cancelled. Called when the 3D Slicer module is
    cleaned up or its device setting changes, and when the program exits."""
    global _shared
    with _shared_lock:
        for engine in list(_engines):
            engine.stop()
        _shared = None


atexit.register(stop_engine)


def serve(requests: TextIO = sys.stdin) -> None:
    """The engine process: for each request line, run the bundle's inference workflow and print ``ENGINE DONE
    <exit code>``; return when the input ends."""
    # Imported here: the Lib is loaded in 3D Slicer before MONAI is installed.
    from monai.bundle import create_workflow

    arguments, workflow = None, None
    for line in requests:
        request = json.loads(line)
        try:
            if request != arguments:
                workflow, arguments = create_workflow(**request), request
            path = list(sys.path)
            try:
                workflow.run()
            finally:
                sys.path[:] = path  # every run puts the bundle on the path once more: one entry per request
            code = 0
        except SystemExit as stop:  # how the bundle ends a run in which an input failed, as `monai.bundle run` does
            if isinstance(stop.code, str):
                print(stop.code, file=sys.stderr, flush=True)
            code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
        except Exception:
            traceback.print_exc()
            arguments, code = None, 1  # the workflow is made again for the next request
        print(f"{DONE_PREFIX}{code}", flush=True)
