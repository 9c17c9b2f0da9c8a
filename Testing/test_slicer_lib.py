"""BUSISegmentationLib without 3D Slicer: input files, the bundle command, the background process, the warm engine
and its lifetime, progress, cancellation, results, dependency versions, and a run of the real bundle when its weights
are present. The module's Logic runs here too, on the stand-in Slicer modules of ``fake_slicer``: closing the scene,
areas in mm² or pixels, following the frame shown.

The engine tests run the Lib's real engine process with a stand-in for MONAI's bundle workflow: it reads the input
file the Lib wrote and writes result files in the bundle's formats, so the whole path runs for real in a second
process.
"""

from __future__ import annotations

import ast
import configparser
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import fake_slicer
import nibabel
import nrrd
import numpy as np
import psutil
import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from BUSISegmentationLib import (
    BUNDLE_DIR_ENV,
    LESION_TABLE_HEADERS,
    REQUIREMENTS,
    TORCH_VERSION,
    BackgroundProcess,
    BundleRun,
    OutputParser,
    RunConfig,
    SegmentationCancelled,
    SegmentationError,
    UnmetRequirement,
    build_command,
    diameter_lines,
    inference_overrides,
    lesion_area_text,
    lesion_table_row,
    locate_bundle,
    parse_progress_line,
    pip_install_arguments,
    pixel_size_is_known,
    pixels_to_ras,
    python_problem,
    read_result,
    result_paths,
    segment_array,
    stop_engine,
    unmet_requirements,
    unmet_torch,
    write_input,
)
from BUSISegmentationLib import engine as engine_module

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE_ROOT = REPO_ROOT / "monai_bundle"
LIB_DIR = REPO_ROOT / "BUSISegmentation" / "BUSISegmentationLib"
ROTATION = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])

# Stands in for MONAI's bundle workflow in the engine process: "create_workflow" takes the arguments the Lib sends and
# "run" writes the bundle's output files and prints its progress lines. What a run does is read from the file that
# $FAKE_CONTROL names, at each run, so that one engine process can be told to fail, hang or crash.
FAKE_MONAI_BUNDLE = textwrap.dedent(
    """
    import json, os, subprocess, sys, time
    from pathlib import Path
    import nibabel, nrrd, numpy as np


    class FakeWorkflow:
        def __init__(self, overrides):
            self.overrides = overrides

        def run(self):
            control = Path(os.environ["FAKE_CONTROL"])
            mode = control.read_text() if control.is_file() else "ok"
            input_file = Path(self.overrides["input_files"][0])
            output_dir = Path(self.overrides["output_dir"])
            print(f"fake bundle run in process {os.getpid()}", flush=True)
            if mode == "fail":
                print(f"ERROR {input_file}: cannot be read as an image (truncated)", flush=True)
                raise SystemExit(f"1 of 1 inputs failed:\\n{input_file}: cannot be read as an image (truncated)")
            if mode == "hang":
                child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
                print(f"CHILD {child.pid}", flush=True)
                print("PROGRESS 0 3", flush=True)
                time.sleep(120)
            if mode == "silent":
                time.sleep(120)
            if mode == "crash":
                print("PROGRESS 0 1", flush=True)
                os._exit(3)
            data, header = nrrd.read(str(input_file), index_order="C")
            frames = data.shape[0]
            labels = np.zeros(data.shape[:3], np.uint8)
            for frame in range(frames):
                labels[frame, 1:3, 1:4] = frame % 2 + 1
                print(f"PROGRESS {frame + 1} {frames}", flush=True)
            output_dir.mkdir(parents=True, exist_ok=True)
            stem = input_file.stem
            # like the bundle: lesion areas in mm2 only when the input has a pixel size
            has_geometry = "space directions" in header
            # like the bundle's NIfTI writer: (column, row, frame) voxels, 2D for one frame; the affine is not read
            voxels = np.transpose(labels, (2, 1, 0))
            nibabel.save(nibabel.Nifti1Image(voxels[..., 0] if frames == 1 else voxels, np.eye(4)),
                         output_dir / f"{stem}_seg.nii.gz")
            lesions = [{"frame": f, "class_name": ["benign", "malignant"][f % 2], "confidence": 0.9, "area_px": 6,
                        "area_mm2": 6.0 if has_geometry else None} for f in range(frames)]
            (output_dir / f"{stem}_lesions.json").write_text(json.dumps(lesions))
            seen = {"shape": list(data.shape), "kinds": header["kinds"], "dtype": str(data.dtype),
                    "overrides": self.overrides, "checksum": float(data.astype(np.float64).sum())}
            (output_dir / "seen.json").write_text(json.dumps(seen))


    def create_workflow(**overrides):
        # the networks of the real workflow are loaded here: a warm engine makes this once for many runs
        print(f"fake workflow created in process {os.getpid()}", flush=True)
        return FakeWorkflow(overrides)
    """
)


@pytest.fixture
def fake_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An executable whose MONAI bundle workflow is :data:`FAKE_MONAI_BUNDLE`; ``fake_mode`` says what it does."""
    stub = tmp_path / "stub"
    (stub / "monai").mkdir(parents=True)
    (stub / "monai" / "__init__.py").write_text("")
    (stub / "monai" / "bundle.py").write_text(FAKE_MONAI_BUNDLE)
    launcher = tmp_path / "fake_python"
    launcher.write_text(f'#!/bin/sh\nPYTHONPATH="{stub}" exec "{sys.executable}" "$@"\n')
    launcher.chmod(0o755)
    monkeypatch.setenv("FAKE_CONTROL", str(tmp_path / "fake_mode"))
    return launcher


def fake_mode(mode: str) -> None:
    """What the stand-in bundle does from its next run on: "ok", "fail", "hang", "silent" or "crash"."""
    Path(os.environ["FAKE_CONTROL"]).write_text(mode)


@pytest.fixture(autouse=True)
def no_engine_left() -> None:
    """Every test starts without an engine and leaves none running."""
    stop_engine()
    yield
    stop_engine()


def _gone(pid: int) -> bool:
    """A process is gone when it no longer exists or only its zombie entry is left for its parent to reap."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# --- input files --------------------------------------------------------------------------------------------


def test_write_input_keeps_pixels_and_geometry(tmp_path: Path) -> None:
    array = np.arange(2 * 4 * 5, dtype=np.int16).reshape(2, 4, 5)
    path = write_input(array, (0.1, 0.2, 3.0), (10.0, -20.0, 5.0), ROTATION, tmp_path / "in" / "image.nrrd")
    data, header = nrrd.read(str(path), index_order="C")
    np.testing.assert_array_equal(data, array)
    assert data.dtype == np.int16
    assert list(header["sizes"]) == [5, 4, 2]  # column, row, frame: frames on the slowest axis
    assert header["space"] == "left-posterior-superior"
    np.testing.assert_allclose(header["space directions"], (ROTATION * [0.1, 0.2, 3.0]).T)
    np.testing.assert_allclose(header["space origin"], [10.0, -20.0, 5.0])


def test_write_input_keeps_colour_for_the_bundle_to_convert(tmp_path: Path, bundle_root: Path) -> None:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, size=(3, 6, 7, 3), dtype=np.uint8)
    path = write_input(array, (0.3, 0.3, 1.0), (0.0, 0.0, 0.0), None, tmp_path / "rgb.nrrd")
    data, header = nrrd.read(str(path), index_order="C")
    np.testing.assert_array_equal(data, array)  # no grey conversion here
    assert header["kinds"] == ["RGB-color", "domain", "domain", "domain"]
    reader = pytest.importorskip("scripts.reader")
    image = reader.read_image(path)
    assert image.frames.shape == (3, 6, 7)
    np.testing.assert_allclose(image.frames, reader.rgb_to_grey(array), rtol=1e-6)


def test_write_input_without_pixel_size_reads_as_a_picture(tmp_path: Path) -> None:
    array = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)
    path = write_input(array, None, (1.0, 2.0, 3.0), ROTATION, tmp_path / "picture.nrrd")
    data, header = nrrd.read(str(path), index_order="C")
    np.testing.assert_array_equal(data, array)
    assert not {"space", "space directions", "space origin"} & set(header)
    assert header["kinds"] == ["RGB-color", "domain", "domain", "domain"]
    reader = pytest.importorskip("scripts.reader")
    image = reader.read_image(path)
    # no spacing: the bundle's lesion table then has no area in mm²
    assert image.frames.shape == (2, 4, 5) and image.spacing is None


@pytest.mark.parametrize(
    ("array", "spacing", "direction", "message"),
    [
        (np.zeros((4, 5)), (1, 1, 1), None, "shape"),
        (np.zeros((1, 4, 5, 2)), (1, 1, 1), None, "2 components"),
        (np.zeros((1, 4, 5), bool), (1, 1, 1), None, "bool"),
        (np.zeros((1, 4, 5)), (1, 0, 1), None, "positive"),
        (np.zeros((1, 4, 5)), (1, 1), None, "spacing"),
        (np.zeros((1, 4, 5)), (1, 1, 1), np.zeros((3, 3)), "direction"),
    ],
)
def test_write_input_rejects_unusable_values(tmp_path: Path, array, spacing, direction, message) -> None:
    with pytest.raises(ValueError, match=message):
        write_input(array, spacing, (0, 0, 0), direction, tmp_path / "x.nrrd")


@pytest.mark.parametrize("frames", [1, 3])
def test_read_result_gives_back_the_label_map_the_bundle_wrote(tmp_path: Path, frames: int) -> None:
    # The whole file path of a run but the network: the Lib's input NRRD, read by the bundle's reader; a label map
    # and lesions written by the bundle's writer as the Lib asks for them (NIfTI, no overlay); read back by the Lib.
    reader = pytest.importorskip("scripts.reader")
    writers = pytest.importorskip("scripts.writers")
    postprocess = pytest.importorskip("scripts.postprocess")
    input_file = write_input(np.zeros((frames, 7, 9), np.uint8), (0.3, 0.2, 2.0), (5.0, -3.0, 1.0), ROTATION,
                             tmp_path / "input" / "image.nrrd")  # fmt: skip
    image = reader.read_image(input_file)
    labels = np.random.default_rng(frames).integers(0, 3, size=(frames, 7, 9), dtype=np.uint8)
    lesions = [[postprocess.Lesion(1, 2, "malignant", 0.75, int((labels[f] == 2).sum()), (0, 0, 6, 8))]
               for f in range(frames)]  # fmt: skip
    output_dir = tmp_path / "output"
    written = writers.write_outputs(
        writers.SegmentationResult(image, labels, lesions), output_dir / "image", ["nifti"], overlay=False
    )
    assert sorted(result_paths(output_dir, "image")) == sorted(p for p in written if p.suffix != ".csv")

    read_labels, read_lesions = read_result(output_dir, "image", shape=(frames, 7, 9))
    assert read_labels.dtype == np.uint8
    np.testing.assert_array_equal(read_labels, labels)
    assert [(row["frame"], row["class_name"], row["area_px"]) for row in read_lesions] == [
        (f, "malignant", int((labels[f] == 2).sum())) for f in range(frames)
    ]
    assert read_lesions[0]["area_mm2"] == pytest.approx(read_lesions[0]["area_px"] * 0.3 * 0.2)


def test_read_result_refuses_what_does_not_fit_the_input(tmp_path: Path) -> None:
    label_map_path, lesions_path = result_paths(tmp_path, "image")
    with pytest.raises(FileNotFoundError, match="image_seg.nii.gz"):
        read_result(tmp_path, "image")
    lesions_path.write_text("[]")
    nibabel.save(nibabel.Nifti1Image(np.zeros((6, 4, 2), np.uint8), np.eye(4)), label_map_path)
    assert read_result(tmp_path, "image", shape=(2, 4, 6))[0].shape == (2, 4, 6)
    with pytest.raises(ValueError, match=r"\(2, 4, 6\) does not match the input \(2, 6, 4\)"):
        read_result(tmp_path, "image", shape=(2, 6, 4))
    nibabel.save(nibabel.Nifti1Image(np.zeros((6, 4), np.float32), np.eye(4)), label_map_path)
    with pytest.raises(ValueError, match="float32"):
        read_result(tmp_path, "image")


# --- bundle location and command ----------------------------------------------------------------------------


def test_build_command_follows_the_bundle_contract(tmp_path: Path) -> None:
    input_file = tmp_path / "in" / "a b.nrrd"
    command = build_command("/opt/PythonSlicer", tmp_path / "bundle", input_file, tmp_path / "out", "cpu")
    assert command[:4] == ["/opt/PythonSlicer", "-m", "monai.bundle", "run"]
    options = dict(zip(command[4::2], command[5::2]))
    assert options["--config_file"] == (tmp_path / "bundle" / "configs" / "inference.json").as_posix()
    assert json.loads(options["--input_files"]) == [input_file.as_posix()]
    # a plain label map, no overlay picture: Slicer shows the segmentation itself
    assert json.loads(options["--formats"]) == ["nifti"] and options["--overlays"] == "False"
    assert options["--progress"] == "lines" and options["--device"] == "cpu" and options["--tta"] == "False"
    assert "--device" not in build_command("python", tmp_path, "x.nrrd", tmp_path, "auto")
    with pytest.raises(ValueError, match="'gpu'"):
        build_command("python", tmp_path, "x.nrrd", tmp_path, "gpu")


def test_build_command_sets_only_what_the_inference_config_defines(bundle_root: Path) -> None:
    writers = pytest.importorskip("scripts.writers")
    command = build_command("python", bundle_root, "x.nrrd", "out", "cpu", tta=True)
    options = dict(zip(command[4::2], command[5::2]))
    config = json.loads((bundle_root / "configs" / "inference.json").read_text(encoding="utf-8"))
    # "monai.bundle run" would silently add a key the config does not read
    assert {name[2:] for name in options} - {"config_file"} <= set(config)
    assert set(json.loads(options["--formats"])) <= set(writers.SUPPORTED_FORMATS)


def test_locate_bundle_prefers_the_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "inference.json").write_text("{}")
    monkeypatch.setenv(BUNDLE_DIR_ENV, str(tmp_path))
    assert locate_bundle() == tmp_path.resolve()
    monkeypatch.setenv(BUNDLE_DIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="missing"):
        locate_bundle()
    monkeypatch.delenv(BUNDLE_DIR_ENV)
    if (BUNDLE_ROOT / "configs" / "inference.json").is_file():
        assert locate_bundle() == BUNDLE_ROOT.resolve()


# --- progress and process ---------------------------------------------------------------------------------------


def test_progress_lines_are_parsed() -> None:
    assert parse_progress_line("PROGRESS 3 10") == (3, 10)
    assert parse_progress_line("2026-01-01 - INFO - PROGRESS 3 10") is None
    parser = OutputParser()
    updates = [parser.feed(line) for line in ["log text", "PROGRESS 1 4", "ERROR a.png: broken", "PROGRESS 2 4"]]
    assert [(u.done, u.total) for u in updates] == [(0, 0), (1, 4), (1, 4), (2, 4)]
    assert updates[-1].fraction == 0.5
    assert parser.errors == ["a.png: broken"]
    assert "a.png: broken" in parser.failure_message(1) and "exit code 1" in parser.failure_message(1)


def test_lib_reads_the_lines_the_bundle_progress_reporter_prints(capsys, bundle_root: Path) -> None:
    # Both sides of the line contract: the bundle's reporter prints, the Lib's parser reads.
    progress = pytest.importorskip("scripts.progress")
    # The bundle logs to standard output too (configs/logging.conf): its log lines must not count as errors.
    logging_conf = configparser.ConfigParser(interpolation=None)
    logging_conf.read(bundle_root / "configs" / "logging.conf")
    log_to_stdout = logging.StreamHandler(sys.stdout)
    log_to_stdout.setFormatter(logging.Formatter(logging_conf["formatter_fullFormatter"]["format"]))
    logging.getLogger(progress.__name__).addHandler(log_to_stdout)
    try:
        reporter = progress.make_progress("lines")
        reporter.start(3, "frame")
        reporter.advance()
        reporter.error("scan.dcm: cannot be read as an image")
        reporter.advance()
        reporter.advance()
        reporter.finish()
    finally:
        logging.getLogger(progress.__name__).removeHandler(log_to_stdout)
    lines = capsys.readouterr().out.splitlines()
    assert any(" - ERROR - scan.dcm" in line for line in lines)  # the log line is there as well

    parser = OutputParser()
    updates = [parser.feed(line) for line in lines]
    assert [(u.done, u.total) for u in updates if u.line.startswith("PROGRESS")] == [(1, 3), (2, 3), (3, 3)]
    assert (parser.done, parser.total, updates[-1].fraction) == (3, 3, 1.0)
    assert parser.errors == ["scan.dcm: cannot be read as an image"]
    assert "scan.dcm: cannot be read as an image" in parser.failure_message(1)


def test_background_process_collects_output_without_blocking() -> None:
    script = "import time\nfor i in range(3):\n    print(f'PROGRESS {i + 1} 3', flush=True)\n    time.sleep(0.2)\n"
    process = BackgroundProcess([sys.executable, "-c", script])
    process.start()
    started = time.monotonic()
    first_poll = process.poll()
    assert time.monotonic() - started < 0.1  # poll returns at once, whatever the child does
    lines = list(first_poll)
    while process.is_running:
        lines += process.poll()
        time.sleep(0.02)
    lines += process.poll()
    assert lines == ["PROGRESS 1 3", "PROGRESS 2 3", "PROGRESS 3 3"]
    assert process.returncode == 0 and not process.cancelled


# The exit system call of Linux, which ends only the calling thread.
THREAD_EXIT_SYSCALL = {"x86_64": 60, "aarch64": 93}.get(os.uname().machine) if sys.platform == "linux" else None


@pytest.mark.skipif(THREAD_EXIT_SYSCALL is None, reason="needs Linux on x86_64 or aarch64")
def test_a_child_whose_main_thread_ended_is_exiting_before_its_exit_code_is_known(tmp_path: Path) -> None:
    # A killed process with several threads (numpy's, torch's) ends its main thread first; until the others have
    # ended too, it has no exit code and what is written to its input is accepted, never to be read.
    script = (
        "import ctypes, threading, time\n"
        "threading.Thread(target=time.sleep, args=(3,)).start()\n"
        f"ctypes.CDLL(None).syscall({THREAD_EXIT_SYSCALL}, 0)\n"
    )
    process = BackgroundProcess([sys.executable, "-c", script], accepts_input=True)
    process.start()
    _wait_until(lambda: psutil.Process(process.pid).status() == psutil.STATUS_ZOMBIE, timeout=20)
    assert process.returncode is None  # its other thread still runs
    process.send("a request nobody reads")  # accepted
    assert process.exiting
    assert process.wait(timeout=20) == 0 and process.exiting


def test_cancel_kills_the_whole_process_tree() -> None:
    # The child starts a grandchild, as the PythonSlicer launcher starts the real Python.
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    process = BackgroundProcess([sys.executable, "-c", script])
    process.start()
    deadline = time.monotonic() + 20
    lines: list[str] = []
    while not lines and time.monotonic() < deadline:
        lines = process.poll()
        time.sleep(0.05)
    grandchild = int(lines[0])
    assert not _gone(grandchild)
    process.cancel()
    assert process.cancelled
    assert _gone(process.pid) and _gone(grandchild)
    assert process.wait(timeout=10) != 0
    assert not process.is_running


# --- segment_array with a stand-in bundle --------------------------------------------------------------------


def test_segment_array_runs_frames_in_a_second_process(tmp_path: Path, fake_python: Path) -> None:
    array = np.random.default_rng(1).integers(0, 256, size=(3, 5, 6, 3), dtype=np.uint8)
    updates = []
    output = segment_array(
        array, spacing=(0.5, 0.25, 2.0), origin=(1.0, 2.0, 3.0), direction=ROTATION, device="cpu",
        progress_callback=updates.append, work_dir=tmp_path / "work", python_executable=fake_python,
        bundle_dir=tmp_path,
    )  # fmt: skip
    assert output.labels.shape == (3, 5, 6) and output.labels.dtype == np.uint8
    assert [int(output.labels[f].max()) for f in range(3)] == [1, 2, 1]
    assert [row["frame"] for row in output.lesions] == [0, 1, 2]
    assert [(u.done, u.total) for u in updates if u.line.startswith("PROGRESS")] == [(1, 3), (2, 3), (3, 3)]
    assert updates[-1].fraction == 1.0
    seen = json.loads((tmp_path / "work" / "output" / "seen.json").read_text())
    assert seen["shape"] == [3, 5, 6, 3] and seen["kinds"][0] == "RGB-color"
    assert seen["checksum"] == float(array.astype(np.float64).sum())
    # the bundle's own inference workflow, with the overrides its command line would get
    work = tmp_path / "work"
    assert seen["overrides"] == inference_overrides(tmp_path, work / "input" / "image.nrrd", work / "output", "cpu")
    # the work folder was given, so it is kept; the input NRRD carries the geometry
    _, header = nrrd.read(str(tmp_path / "work" / "input" / "image.nrrd"))
    np.testing.assert_allclose(header["space origin"], [1.0, 2.0, 3.0])


def _segment(fake_python: Path, bundle_dir: Path, **options) -> list[str]:
    """Output lines of a one-frame segment_array call on the stand-in bundle."""
    lines: list[str] = []
    segment_array(np.zeros((1, 4, 4), np.uint8), progress_callback=lambda p: lines.append(p.line),
                  python_executable=fake_python, bundle_dir=bundle_dir, **options)  # fmt: skip
    return lines


def _engine_pid(lines: list[str]) -> int:
    """The process that ran the stand-in bundle, as its output names it."""
    return int(next(line for line in lines if line.startswith("fake bundle run in process ")).split()[-1])


def _wait_until(done, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.05)


def test_later_segmentations_go_to_the_warm_engine(tmp_path: Path, fake_python: Path) -> None:
    first = _segment(fake_python, tmp_path, device="cpu")
    second = _segment(fake_python, tmp_path, device="cpu")
    engine = _engine_pid(first)
    assert _engine_pid(second) == engine and not _gone(engine)  # the engine waits for the next request
    # the workflow, and with it the networks, is made once for both
    assert any(line.startswith("fake workflow created") for line in first)
    assert not any(line.startswith("fake workflow created") for line in second)
    # other overrides: the same process makes the workflow again
    mirrored = _segment(fake_python, tmp_path, device="cpu", tta=True)
    assert _engine_pid(mirrored) == engine and any(line.startswith("fake workflow created") for line in mirrored)
    # another device: the engine is stopped before a new one starts, so their memory is never held twice
    other_device = _segment(fake_python, tmp_path, device="auto")
    assert _engine_pid(other_device) != engine and _gone(engine)


def test_two_runs_at_a_time_get_an_engine_each(tmp_path: Path, fake_python: Path) -> None:
    config = RunConfig(device="cpu", python_executable=fake_python, bundle_dir=tmp_path)
    runs = [BundleRun(np.zeros((1, 4, 4), np.uint8), config=config) for _ in range(2)]
    for run in runs:
        run.start()
    lines: list[list[str]] = [[], []]
    for run, output in zip(runs, lines):
        while run.is_running:
            output += [progress.line for progress in run.poll(timeout=0.1)]
        assert run.result().labels.max() == 1
        run.cleanup()
    warm, extra = (_engine_pid(output) for output in lines)
    assert warm != extra
    assert not _gone(warm)  # the shared engine stays warm, the second one was only for its run
    _wait_until(lambda: _gone(extra))


def test_engine_stops_after_the_idle_time(tmp_path: Path, fake_python: Path, monkeypatch) -> None:
    monkeypatch.setattr(engine_module, "IDLE_TIMEOUT_S", 0.5)
    engine = _engine_pid(_segment(fake_python, tmp_path))
    _wait_until(lambda: _gone(engine))
    lines = _segment(fake_python, tmp_path)
    assert _engine_pid(lines) != engine
    assert not any("had stopped" in line for line in lines)  # stopped on purpose: nothing to report


def test_a_killed_engine_is_restarted_with_a_log_line(tmp_path: Path, fake_python: Path) -> None:
    engine = _engine_pid(_segment(fake_python, tmp_path))
    os.kill(engine, signal.SIGKILL)
    _wait_until(lambda: _gone(engine))
    lines = _segment(fake_python, tmp_path)
    assert lines[0] == f"The segmentation engine (process {engine}) had stopped (exit code -9); starting a new one"
    assert _engine_pid(lines) != engine


def test_an_engine_that_dies_during_a_run_fails_it_and_the_next_run_gets_a_new_one(
    tmp_path: Path, fake_python: Path
) -> None:
    fake_mode("crash")
    with pytest.raises(SegmentationError, match=r"engine stopped during the segmentation \(exit code 3\)"):
        _segment(fake_python, tmp_path)
    fake_mode("ok")
    assert _segment(fake_python, tmp_path)  # no hang, no error


def test_a_silent_engine_is_stopped_instead_of_waited_for(tmp_path: Path, fake_python: Path, monkeypatch) -> None:
    monkeypatch.setattr(engine_module, "SILENCE_TIMEOUT_S", 1.0)
    fake_mode("silent")
    lines: list[str] = []
    with pytest.raises(SegmentationError, match="printed nothing for 1 s"):
        segment_array(np.zeros((1, 4, 4), np.uint8), progress_callback=lambda p: lines.append(p.line),
                      python_executable=fake_python, bundle_dir=tmp_path)  # fmt: skip
    assert _gone(_engine_pid(lines))


def test_segment_array_reports_the_bundle_errors(tmp_path: Path, fake_python: Path) -> None:
    fake_mode("fail")
    lines: list[str] = []
    with pytest.raises(SegmentationError, match="truncated") as raised:
        segment_array(np.zeros((1, 4, 4), np.uint8), progress_callback=lambda p: lines.append(p.line),
                      python_executable=fake_python, bundle_dir=tmp_path)  # fmt: skip
    assert "exit code 1" in str(raised.value)
    # a failed input does not cost the engine: the next request goes to the same process
    fake_mode("ok")
    assert _engine_pid(_segment(fake_python, tmp_path)) == _engine_pid(lines)


def test_segment_array_cancel_event_stops_everything(tmp_path: Path, fake_python: Path) -> None:
    fake_mode("hang")
    cancel = threading.Event()
    lines: list[str] = []
    work_dirs_before = set(Path(tempfile.gettempdir()).glob("BUSISegmentation-*"))

    def on_progress(progress) -> None:
        lines.append(progress.line)
        if progress.total:
            cancel.set()

    started = time.monotonic()
    with pytest.raises(SegmentationCancelled):
        segment_array(np.zeros((3, 4, 4), np.uint8), progress_callback=on_progress, cancel_event=cancel,
                      python_executable=fake_python, bundle_dir=tmp_path)  # fmt: skip
    assert time.monotonic() - started < 30
    child = int(next(line for line in lines if line.startswith("CHILD ")).split()[1])
    assert _gone(child) and _gone(_engine_pid(lines))
    assert set(Path(tempfile.gettempdir()).glob("BUSISegmentation-*")) <= work_dirs_before
    # the next request starts a new engine, and says nothing of a crash
    fake_mode("ok")
    lines = _segment(fake_python, tmp_path)
    assert not any("had stopped" in line for line in lines)


def test_engine_stops_when_the_program_exits(tmp_path: Path, fake_python: Path) -> None:
    code = (
        "import sys, numpy as np\n"
        "from BUSISegmentationLib import segment_array\n"
        "lines = []\n"
        f"segment_array(np.zeros((1, 4, 4), np.uint8), progress_callback=lambda p: lines.append(p.line),"
        f" python_executable={str(fake_python)!r}, bundle_dir={str(tmp_path)!r})\n"
        "print(next(line for line in lines if line.startswith('fake bundle run')))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "BUSISegmentation")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    engine = _engine_pid(done.stdout.splitlines())
    _wait_until(lambda: _gone(engine))


def test_stop_engine_stops_the_process_and_removes_its_folder(tmp_path: Path, fake_python: Path) -> None:
    # what the 3D Slicer module does when it is cleaned up
    work_dirs_before = set(Path(tempfile.gettempdir()).glob("BUSISegmentation-*"))
    engine = _engine_pid(_segment(fake_python, tmp_path))
    assert set(Path(tempfile.gettempdir()).glob("BUSISegmentation-*")) > work_dirs_before  # its exchange folder
    stop_engine()
    assert _gone(engine)
    assert set(Path(tempfile.gettempdir()).glob("BUSISegmentation-*")) <= work_dirs_before


def test_lib_imports_before_dependencies_are_installed() -> None:
    # In 3D Slicer the module is loaded before pynrrd and psutil are installed.
    code = (
        "import sys\n"
        "for name in ('nrrd', 'nibabel', 'psutil', 'torch', 'monai', 'tqdm'):\n"
        "    sys.modules[name] = None\n"
        "import BUSISegmentationLib\n"
        "print(sorted(map(str, BUSISegmentationLib.unmet_requirements()))[:1])\n"
        # the segment descriptions come from the bundle's vocabulary reader, which needs only the standard library
        "print([d.name for d in BUSISegmentationLib.load_label_descriptions()])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "BUSISegmentation")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "['Benign lesion', 'Malignant lesion']" in result.stdout


# --- dependencies ------------------------------------------------------------------------------------------------


def test_requirements_are_checked_by_installed_version(tmp_path: Path) -> None:
    import pydicom
    import torch

    assert unmet_requirements([f"pydicom=={pydicom.__version__}", "numpy>=1.24"]) == []
    (too_old,) = unmet_requirements(["pydicom>=99"])
    assert too_old == UnmetRequirement("pydicom>=99", pydicom.__version__)
    assert str(too_old) == f"pydicom>=99 ({pydicom.__version__} installed)"
    (missing,) = unmet_requirements(["no-such-package-busi>=1"])
    assert missing.installed is None and str(missing) == "no-such-package-busi>=1 (not installed)"
    # torch builds have a local version ("2.13.0+cpu", "2.9.1+cu128"); it counts as its release
    assert unmet_torch() is None
    assert unmet_requirements([f"torch=={torch.__version__.split('+')[0]}"]) == []
    arguments = pip_install_arguments(["monai~=1.6.1"], tmp_path / "constraints.txt")
    assert arguments == ["--constraint", str(tmp_path / "constraints.txt"), "monai~=1.6.1"]
    assert (tmp_path / "constraints.txt").read_text() == f"torch=={torch.__version__}\n"


def _lowest_version(requirement: Requirement) -> Version:
    return max(Version(spec.version) for spec in requirement.specifier if spec.operator in (">=", "~="))


def test_declared_versions_are_the_ones_the_bundle_and_monai_need(bundle_root: Path) -> None:
    import importlib.metadata

    declared = {Requirement(spec).name: Requirement(spec).specifier for spec, _ in REQUIREMENTS}
    metadata = json.loads((bundle_root / "configs" / "metadata.json").read_text(encoding="utf-8"))
    assert declared["monai"].contains(metadata["monai_version"])
    # never below what MONAI itself requires, or installing MONAI could replace the torch build of the PyTorch extension
    monai_torch = next(
        Requirement(spec) for spec in importlib.metadata.requires("monai") if Requirement(spec).name == "torch"
    )
    assert _lowest_version(Requirement(f"torch{TORCH_VERSION}")) >= _lowest_version(monai_torch)
    # the pinned environment of the command-line tool meets every declared requirement
    pins = dict(line.split("==") for line in (REPO_ROOT / "requirements.txt").read_text().splitlines() if "==" in line)
    for name, specifier in declared.items():
        if name in pins:
            assert specifier.contains(pins[name]), f"requirements.txt pins {name}=={pins[name]}, outside {specifier}"
    assert Version(pins["torch"]) in Requirement(f"torch{TORCH_VERSION}").specifier


def test_python_of_slicer_5_8_is_refused_with_the_version_to_use() -> None:
    assert python_problem((3, 12, 10)) == ""
    assert python_problem((3, 9, 10)) == (
        "BUSI Segmentation needs 3D Slicer 5.10 or later: MONAI needs Python 3.10 or later and this application "
        "has Python 3.9"
    )


def test_module_and_lib_load_in_the_python_of_slicer_5_8() -> None:
    # so that Slicer 5.8 shows why the module cannot run instead of failing to load it
    for path in [REPO_ROOT / "BUSISegmentation" / "BUSISegmentation.py", *LIB_DIR.glob("*.py")]:
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 9))


# --- pixel size and areas -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spacing", "file_name", "dicom_pixel_spacing", "known"),
    [
        ((1.0, 1.0, 1.0), "/data/scan (1).png", None, False),  # Slicer's made-up 1 mm
        ((1.0, 1.0, 1.0), "/data/scan.JPG", None, False),
        ((0.1, 0.1, 1.0), "/data/scan.png", None, True),  # a PNG with a physical scale (sCAL)
        ((1.0, 1.0, 1.0), "/data/scan.nrrd", None, True),
        ((1.0, 1.0, 1.0), None, None, True),
        ((1.0, 1.0, 1.0), None, "", False),  # DICOM without Pixel Spacing
        ((1.0, 1.0, 1.0), None, "1\\1", True),
    ],
)
def test_pixel_size_is_known_only_when_the_file_gives_it(spacing, file_name, dicom_pixel_spacing, known) -> None:
    assert pixel_size_is_known(spacing, file_name, dicom_pixel_spacing) is known


def test_lesion_area_text_names_its_unit() -> None:
    assert lesion_area_text({"area_px": 120, "area_mm2": 3.04}) == "3.0 mm²"
    assert lesion_area_text({"area_px": 120, "area_mm2": None}) == "120 px"
    assert lesion_area_text({}) == "unknown"


def _ellipse_lesion(spacing: tuple[float, float] | None) -> dict:
    """A lesion row as the bundle's lesion table has it: an ellipse 41 pixels wide and 17 deep, flagged for review,
    with the descriptors of the bundle's own ``describe_lesion``."""
    descriptors = pytest.importorskip("scripts.descriptors")
    rows, columns = np.mgrid[:40, :60]
    mask = ((rows - 20) / 8) ** 2 + ((columns - 30) / 20) ** 2 <= 1
    area_mm2 = None if spacing is None else float(mask.sum() * spacing[0] * spacing[1])
    return {"frame": 2, "lesion_id": 1, "class_name": "benign", "confidence": 0.91, "area_px": int(mask.sum()),
            "area_mm2": area_mm2, "uncertainty": 0.1234, "review": True,
            **descriptors.describe_lesion(mask, spacing=spacing).to_row()}  # fmt: skip


def test_lesion_table_row_gives_the_descriptors_in_mm_or_pixels() -> None:
    row = dict(zip(LESION_TABLE_HEADERS, lesion_table_row(_ellipse_lesion((0.1, 0.2)))))
    assert row == {
        "Frame": "2", "Class": "benign", "Confidence": "0.91", "Area": "9.9 mm²",
        "Longest diameter": "8.2 mm", "Perpendicular diameter": "1.7 mm",  # 41 columns of 0.2 mm, 17 rows of 0.1 mm
        "Depth/width": "0.21", "Orientation": "0°", "Suggested orientation": "parallel", "Suggested shape": "oval",
        "Suggested margin": "circumscribed", "Uncertainty": "0.123", "Review": "yes",
    }  # fmt: skip
    row = dict(zip(LESION_TABLE_HEADERS, lesion_table_row(_ellipse_lesion(None))))
    assert (row["Area"], row["Longest diameter"], row["Perpendicular diameter"]) == ("497 px", "41.0 px", "17.0 px")
    assert row["Depth/width"] == "0.41"  # in pixels: 17 / 41


def test_lesion_table_row_leaves_what_the_table_lacks_empty() -> None:
    descriptors = pytest.importorskip("scripts.descriptors")
    lesion = {"frame": 0, "lesion_id": 1, "class_name": "malignant", "confidence": 0.5, "area_px": 9, "area_mm2": None,
              "uncertainty": None, "review": False, **dict.fromkeys(descriptors.DESCRIPTOR_COLUMNS)}  # fmt: skip
    assert lesion_table_row(lesion) == ["0", "malignant", "0.50", "9 px"] + [""] * 8 + ["no"]
    assert diameter_lines(lesion) == []


def test_diameter_lines_are_named_after_the_lesion_with_the_table_end_points() -> None:
    lesion = _ellipse_lesion((0.1, 0.2))
    longest, perpendicular = diameter_lines(lesion)
    assert longest.name == "Lesion 1 (frame 2) longest diameter"
    assert perpendicular.name == "Lesion 1 (frame 2) perpendicular diameter"
    np.testing.assert_allclose(longest.ends, [(20, 9.5), (20, 50.5)])  # (row, column): across the widest row
    np.testing.assert_allclose(perpendicular.ends, [(11.5, 30), (28.5, 30)])


def test_pixels_to_ras_places_row_column_points_with_the_volume_geometry() -> None:
    spacing = np.array([0.2, 0.1, 3.0])  # columns, rows, frames, as Slicer's GetSpacing
    origin = np.array([10.0, -20.0, 5.0])
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3], ijk_to_ras[:3, 3] = ROTATION @ np.diag(spacing), origin
    (ras,) = pixels_to_ras([(4, 7)], 2, ijk_to_ras)  # row 4, column 7 of frame 2: IJK (7, 4, 2)
    np.testing.assert_allclose(ras, origin + ROTATION @ (spacing * [7, 4, 2]))
    # The diameter placed on the image is as long in mm as the table says, with pixels of other height than width.
    lesion = _ellipse_lesion((spacing[1], spacing[0]))
    for line, length_mm in zip(diameter_lines(lesion), ("longest_diameter_mm", "perpendicular_diameter_mm")):
        start, end = pixels_to_ras(line.ends, lesion["frame"], ijk_to_ras)
        assert np.linalg.norm(end - start) == pytest.approx(lesion[length_mm])
        assert start[2] == end[2] == pytest.approx(origin[2] + 2 * 3.0)  # in the plane of frame 2


# --- the module's Logic on stand-in Slicer modules ------------------------------------------------------------


@pytest.fixture
def slicer_module(monkeypatch: pytest.MonkeyPatch, fake_python: Path):
    module = fake_slicer.install(monkeypatch, fake_python)
    # The MRML conversion of the label map needs Slicer (CTest checks it); here it is recorded on the node.
    def record_labels(self, node, labels, reference) -> None:
        node.labels = labels

    monkeypatch.setattr(module.BUSISegmentationLogic, "updateSegments", record_labels)
    return module


def _volume(module, file_name: str | None = "/data/scan (1).png", spacing=(1.0, 1.0, 1.0)):
    array = np.random.default_rng(0).integers(0, 256, size=(1, 5, 6, 3), dtype=np.uint8)
    return module.slicer.mrmlScene.AddNode(fake_slicer.VolumeNode("scan", array, spacing, file_name))


def _poll_until(module, done, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the segmentation did not finish"
        module.qt.QTimer.fire()
        time.sleep(0.05)


def test_closing_the_scene_stops_the_segmentation_and_writes_nothing(slicer_module) -> None:
    fake_mode("hang")
    scene = slicer_module.slicer.mrmlScene
    volume, segmentation = _volume(slicer_module), scene.AddNode(fake_slicer.SegmentationNode())
    lines, completed = [], []
    task = slicer_module.BUSISegmentationLogic().process(
        volume, segmentation, progressCallback=lambda p: lines.append(p.line), completedCallback=completed.append
    )
    _poll_until(slicer_module, lambda: any(line.startswith("CHILD ") for line in lines))
    child = int(next(line for line in lines if line.startswith("CHILD ")).split()[1])
    started = time.monotonic()
    scene.Clear()
    _poll_until(slicer_module, lambda: completed)
    assert completed == [task] and task.cancelled and not task.error
    assert time.monotonic() - started < 20  # stopped, not waited for (the stand-in bundle sleeps 120 s)
    assert _gone(child) and _gone(_engine_pid(lines))
    assert segmentation.labels is None and not segmentation.references and not task.lesions
    assert scene.observers == {}  # the Logic no longer observes the scene
    # the next segmentation gets a new engine
    fake_mode("ok")
    volume, segmentation = _volume(slicer_module), scene.AddNode(fake_slicer.SegmentationNode())
    assert slicer_module.BUSISegmentationLogic().process(volume, segmentation, waitForCompletion=True).succeeded


def test_a_node_removed_during_the_run_gets_no_result(slicer_module) -> None:
    scene = slicer_module.slicer.mrmlScene
    volume, segmentation = _volume(slicer_module), scene.AddNode(fake_slicer.SegmentationNode())
    completed = []
    task = slicer_module.BUSISegmentationLogic().process(volume, segmentation, completedCallback=completed.append)
    scene.nodes.remove(segmentation)  # deleted in the Data module while the bundle runs
    _poll_until(slicer_module, lambda: completed)
    assert task.cancelled and segmentation.labels is None


def test_a_failed_run_is_reported_in_the_task(slicer_module) -> None:
    fake_mode("fail")
    scene = slicer_module.slicer.mrmlScene
    volume, segmentation = _volume(slicer_module), scene.AddNode(fake_slicer.SegmentationNode())
    completed = []
    with pytest.raises(SegmentationError, match="truncated"):
        slicer_module.BUSISegmentationLogic().process(
            volume, segmentation, waitForCompletion=True, completedCallback=completed.append
        )
    (task,) = completed
    assert "truncated" in task.error and not task.succeeded and not task.cancelled
    assert scene.observers == {}


@pytest.mark.parametrize(
    ("file_name", "spacing", "area"),
    [("/data/scan (1).png", (1.0, 1.0, 1.0), "6 px"), ("/data/scan.nrrd", (0.1, 0.1, 1.0), "6.0 mm²")],
)
def test_areas_are_in_mm2_only_when_the_image_has_a_pixel_size(slicer_module, file_name, spacing, area) -> None:
    scene = slicer_module.slicer.mrmlScene
    volume, segmentation = _volume(slicer_module, file_name, spacing), scene.AddNode(fake_slicer.SegmentationNode())
    task = slicer_module.BUSISegmentationLogic().process(volume, segmentation, waitForCompletion=True)
    assert task.succeeded and task.pixelSizeKnown is (area.endswith("mm²"))
    assert segmentation.labels.shape == (1, 5, 6) and segmentation.labels.max() == 1
    assert [lesion_area_text(lesion) for lesion in task.lesions] == [area]
    assert scene.observers == {}


def test_current_frame_follows_the_shown_frame_and_cleanup_stops_the_engine(slicer_module, monkeypatch) -> None:
    module = slicer_module
    shown = [0]  # the slice the Red view shows
    monkeypatch.setattr(module.BUSISegmentationLogic, "currentFrameIndex", staticmethod(lambda volume: shown[0]))
    monkeypatch.setattr(module.BUSISegmentationLogic, "missingDependencies", staticmethod(lambda: []))
    segmented = []
    process = module.BUSISegmentationLogic.process

    def recording_process(self, *args, **kwargs):
        task = process(self, *args, **kwargs)
        segmented.append(task.frameIndices)
        return task

    monkeypatch.setattr(module.BUSISegmentationLogic, "process", recording_process)
    volume = module.slicer.mrmlScene.AddNode(fake_slicer.VolumeNode("cine", np.zeros((3, 5, 6), np.uint8)))
    widget = module.BUSISegmentationWidget()
    widget.setup()
    parameters = widget._parameterNode
    parameters.inputVolume, parameters.frames = volume, module.FrameSelection.CURRENT
    parameters.followFrame = True
    widget.ui.followFrameCheckBox.emit("toggled(bool)", True)
    _poll_until(module, lambda: segmented == [[0]] and not widget._task)  # the frame shown when turned on
    shown[0] = 2
    _poll_until(module, lambda: segmented == [[0], [2]] and not widget._task)
    for _ in range(3):
        module.qt.QTimer.fire()
    assert segmented == [[0], [2]]  # a frame still shown is not segmented again
    parameters.followFrame = False
    widget.ui.followFrameCheckBox.emit("toggled(bool)", False)
    shown[0] = 1
    for _ in range(3):
        module.qt.QTimer.fire()
    assert segmented == [[0], [2]] and not module.qt.QTimer.pending  # turned off: nothing follows the frame
    # both frames went to one engine, which stops when the module is cleaned up
    engine = _engine_pid(widget.ui.logTextEdit.lines)
    assert not any(line.startswith("fake workflow created") for line in widget.ui.logTextEdit.lines)
    widget.cleanup()
    assert _gone(engine)


def test_changing_the_device_stops_the_engine(slicer_module, tmp_path: Path, fake_python: Path) -> None:
    engine = _engine_pid(_segment(fake_python, tmp_path))
    widget = slicer_module.BUSISegmentationWidget()
    widget.setup()
    widget.ui.deviceComboBox.emit("currentIndexChanged(int)", 1)
    assert _gone(engine)  # its memory is freed now, not when the next segmentation starts another engine
    widget.cleanup()


def test_stopping_the_engine_cancels_the_run_in_progress(tmp_path: Path, fake_python: Path) -> None:
    # what cleaning up the 3D Slicer module, or changing its device, does while a segmentation runs
    fake_mode("hang")
    run = BundleRun(np.zeros((1, 4, 4), np.uint8), config=RunConfig(python_executable=fake_python, bundle_dir=tmp_path))
    run.start()
    lines: list[str] = []

    def bundle_started() -> bool:
        lines.extend(progress.line for progress in run.poll())
        return any(line.startswith("CHILD ") for line in lines)

    _wait_until(bundle_started)
    stop_engine()
    assert not run.is_running and run.cancelled
    with pytest.raises(SegmentationCancelled):
        run.result()
    run.cleanup()
    assert _gone(_engine_pid(lines))


def test_logic_without_a_bundle_reports_it_instead_of_failing(slicer_module, tmp_path, monkeypatch) -> None:
    # The segment descriptions come from the bundle: they are read when a result is imported, not when the Logic
    # is made, so that the Logic can say what is wrong.
    monkeypatch.setenv(BUNDLE_DIR_ENV, str(tmp_path / "no_bundle"))
    logic = slicer_module.BUSISegmentationLogic()
    assert "no_bundle" in logic.bundleProblem()
    with pytest.raises(ValueError, match="no_bundle"):
        logic.labelDescriptions
    monkeypatch.delenv(BUNDLE_DIR_ENV)
    assert [d.name for d in logic.labelDescriptions] == ["Benign lesion", "Malignant lesion"]


def test_dicom_volume_pixel_size_comes_from_the_dicom_database(slicer_module) -> None:
    logic = slicer_module.BUSISegmentationLogic()
    volume = _volume(slicer_module, file_name=None)
    volume.attributes["DICOM.instanceUIDs"] = "1.2.3 1.2.4"
    assert logic.pixelSizeKnown(volume) is False  # ultrasound DICOM without Pixel Spacing: Slicer used 1 mm
    slicer_module.slicer.dicomDatabase.values[("/dicom/1.2.3.dcm", "0028,0030")] = "0.1\\0.1"
    assert logic.pixelSizeKnown(volume) is True


# --- the real bundle --------------------------------------------------------------------------------------------

SAMPLES = sorted((BUNDLE_ROOT / "sample_data").glob("*.png"))
HAS_MODEL = (BUNDLE_ROOT / "configs" / "inference.json").is_file() and (BUNDLE_ROOT / "models" / "model.pt").is_file()


@pytest.fixture(scope="module")
def bundle_snapshot(tmp_path_factory) -> Path:
    """A copy of the bundle, so that weights updated by a training run cannot change between the compared runs."""
    snapshot = tmp_path_factory.mktemp("bundle") / "monai_bundle"
    for part in ("configs", "scripts", "models"):
        shutil.copytree(BUNDLE_ROOT / part, snapshot / part, ignore=shutil.ignore_patterns("__pycache__"))
    return snapshot


@pytest.mark.skipif(not (HAS_MODEL and SAMPLES), reason="bundle inference config, weights or sample images absent")
def test_real_bundle_matches_running_it_on_the_picture(tmp_path: Path, bundle_snapshot: Path) -> None:
    from PIL import Image

    # the benign sample: the shipped weights find its lesion, so the lesion table can be checked too
    sample = next((p for p in SAMPLES if p.name.startswith("benign")), SAMPLES[0])
    picture_dir = tmp_path / "picture"
    picture_dir.mkdir()
    shutil.copy(sample, picture_dir / "sample.png")
    command = build_command(sys.executable, bundle_snapshot, picture_dir / "sample.png", tmp_path / "direct", "cpu")
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    expected, _ = read_result(tmp_path / "direct", "sample")

    pixels = np.asarray(Image.open(sample))
    grey = pixels if pixels.ndim == 2 else pixels[..., :3].astype(np.float32) @ [0.299, 0.587, 0.114]
    grey = np.round(grey).astype(np.uint8)[np.newaxis]
    output = segment_array(grey, spacing=(0.1, 0.2, 1.0), device="cpu", work_dir=tmp_path / "grey",
                           bundle_dir=bundle_snapshot)  # fmt: skip
    np.testing.assert_array_equal(output.labels, expected)
    # the label map carries the input geometry (as a RAS affine)
    label_map_path, _ = result_paths(tmp_path / "grey" / "output", "image")
    np.testing.assert_allclose(np.abs(np.diag(nibabel.load(label_map_path).affine)[:3]), [0.1, 0.2, 1.0])
    assert output.lesions and all(row["area_mm2"] == pytest.approx(row["area_px"] * 0.02) for row in output.lesions)
    # without a pixel size (a picture in Slicer) the bundle gives the areas in pixels only
    output = segment_array(grey, spacing=None, device="cpu", bundle_dir=bundle_snapshot)
    np.testing.assert_array_equal(output.labels, expected)
    assert output.lesions and all(row["area_mm2"] is None and row["area_px"] > 0 for row in output.lesions)

    # Two colour frames: the bundle converts RGB to grey itself, and each frame is segmented.
    rgb = np.repeat(grey[..., np.newaxis], 3, axis=-1)
    stack = np.concatenate([rgb, rgb])
    output = segment_array(stack, device="cpu", bundle_dir=bundle_snapshot)
    assert output.labels.shape == (2, *expected.shape[1:])
    for frame in range(2):
        assert np.mean(output.labels[frame] == expected[0]) > 0.999
    assert {row["frame"] for row in output.lesions} == {0, 1}


def test_unusable_input_leaves_no_temporary_folder(tmp_path: Path) -> None:
    before = set(Path(tempfile.gettempdir()).glob("BUSISegmentation-*"))
    with pytest.raises(ValueError, match="2 components"):
        segment_array(np.zeros((1, 4, 4, 2), np.uint8), bundle_dir=tmp_path)
    assert set(Path(tempfile.gettempdir()).glob("BUSISegmentation-*")) <= before
