"""BUSISegmentationLib without 3D Slicer: input files, the bundle command, the background process, progress,
cancellation, results, and a run of the real bundle when its weights are present.

The process tests run small Python programs standing in for the bundle: they read the input file the Lib wrote
and write result files in the bundle's formats, so the whole path runs for real in a second process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import nrrd
import numpy as np
import psutil
import pytest

from BUSISegmentationLib import (
    BUNDLE_DIR_ENV,
    BackgroundProcess,
    OutputParser,
    SegmentationCancelled,
    SegmentationError,
    build_command,
    locate_bundle,
    parse_progress_line,
    read_result,
    segment_array,
    write_input,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE_ROOT = REPO_ROOT / "monai_bundle"
ROTATION = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])

# Stands in for "python -m monai.bundle run ...": same arguments, same output files and progress lines.
FAKE_BUNDLE = textwrap.dedent(
    """
    import json, os, subprocess, sys, time
    from pathlib import Path
    import nrrd, numpy as np

    args = sys.argv[sys.argv.index("run") + 1:]
    options = dict(zip(args[0::2], args[1::2]))
    mode = os.environ.get("FAKE_MODE", "ok")
    input_file = Path(json.loads(options["--input_files"])[0])
    output_dir = Path(options["--output_dir"])
    print("fake bundle started", flush=True)
    if mode == "fail":
        print(f"ERROR {input_file}: cannot be read as an image (truncated)", flush=True)
        sys.exit(1)
    if mode == "hang":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        print(f"CHILD {child.pid}", flush=True)
        print("PROGRESS 0 3", flush=True)
        time.sleep(120)
    data, header = nrrd.read(str(input_file), index_order="C")
    frames = data.shape[0]
    labels = np.zeros(data.shape[:3], np.uint8)
    for frame in range(frames):
        labels[frame, 1:3, 1:4] = frame % 2 + 1
        print(f"PROGRESS {frame + 1} {frames}", flush=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = input_file.stem
    seg_header = {
        "space": header["space"], "space directions": [d for d in header["space directions"] if not np.isnan(d).any()],
        "space origin": header["space origin"], "kinds": ["domain"] * 3,
        "Segment0_Name": "Benign lesion", "Segment0_LabelValue": "1", "Segment0_Layer": "0",
        "Segment1_Name": "Malignant lesion", "Segment1_LabelValue": "2", "Segment1_Layer": "0",
    }
    nrrd.write(str(output_dir / f"{stem}_seg.seg.nrrd"), labels, seg_header, index_order="C")
    lesions = [{"frame": f, "class_name": ["benign", "malignant"][f % 2], "confidence": 0.9, "area_mm2": 6.0}
               for f in range(frames)]
    (output_dir / f"{stem}_lesions.json").write_text(json.dumps(lesions))
    seen = {"shape": list(data.shape), "kinds": header["kinds"], "dtype": str(data.dtype),
            "options": options, "checksum": float(data.astype(np.float64).sum())}
    (output_dir / "seen.json").write_text(json.dumps(seen))
    """
)


@pytest.fixture
def fake_python(tmp_path: Path) -> Path:
    """An executable that behaves like ``python -m monai.bundle run`` for the arguments the Lib passes."""
    script = tmp_path / "fake_bundle.py"
    script.write_text(FAKE_BUNDLE)
    launcher = tmp_path / "fake_python"
    launcher.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{script}" "$@"\n')
    launcher.chmod(0o755)
    return launcher


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


def test_read_result_maps_segments_by_name_and_restores_cropping(tmp_path: Path) -> None:
    stored = np.zeros((1, 2, 3), np.uint8)
    stored[0, 0, 0], stored[0, 1, 2] = 5, 7
    header = {
        "kinds": ["domain"] * 3,
        "Segmentation_ReferenceImageExtentOffset": "2 1 0",
        "Segment0_Name": "Malignant lesion", "Segment0_LabelValue": "5", "Segment0_Layer": "0",
        "Segment1_Name": "Benign lesion", "Segment1_LabelValue": "7", "Segment1_Layer": "0",
    }  # fmt: skip
    nrrd.write(str(tmp_path / "image_seg.seg.nrrd"), stored, header, index_order="C")
    (tmp_path / "image_lesions.json").write_text("[]")
    labels, lesions = read_result(tmp_path, "image", shape=(1, 4, 6))
    expected = np.zeros((1, 4, 6), np.uint8)
    expected[0, 1, 2], expected[0, 2, 4] = 2, 1
    np.testing.assert_array_equal(labels, expected)
    assert lesions == []
    with pytest.raises(FileNotFoundError, match="other_lesions.json|other_seg"):
        read_result(tmp_path, "other")


# --- bundle location and command ----------------------------------------------------------------------------


def test_build_command_follows_the_bundle_contract(tmp_path: Path) -> None:
    input_file = tmp_path / "in" / "a b.nrrd"
    command = build_command("/opt/PythonSlicer", tmp_path / "bundle", input_file, tmp_path / "out", "cpu")
    assert command[:4] == ["/opt/PythonSlicer", "-m", "monai.bundle", "run"]
    options = dict(zip(command[4::2], command[5::2]))
    assert options["--config_file"] == (tmp_path / "bundle" / "configs" / "inference.json").as_posix()
    assert json.loads(options["--input_files"]) == [input_file.as_posix()]
    assert json.loads(options["--formats"]) == ["seg.nrrd"]
    assert options["--progress"] == "lines" and options["--device"] == "cpu" and options["--tta"] == "False"
    assert "--device" not in build_command("python", tmp_path, "x.nrrd", tmp_path, "auto")
    with pytest.raises(ValueError, match="'gpu'"):
        build_command("python", tmp_path, "x.nrrd", tmp_path, "gpu")


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
    # the work folder was given, so it is kept; the input NRRD carries the geometry
    _, header = nrrd.read(str(tmp_path / "work" / "input" / "image.nrrd"))
    np.testing.assert_allclose(header["space origin"], [1.0, 2.0, 3.0])


def test_segment_array_reports_the_bundle_errors(tmp_path: Path, fake_python: Path, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_MODE", "fail")
    with pytest.raises(SegmentationError, match="truncated") as raised:
        segment_array(np.zeros((1, 4, 4), np.uint8), python_executable=fake_python, bundle_dir=tmp_path)
    assert "exit code 1" in str(raised.value)


def test_segment_array_cancel_event_stops_everything(tmp_path: Path, fake_python: Path, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_MODE", "hang")
    cancel = threading.Event()
    children: list[int] = []
    work_dirs_before = set(Path(tempfile.gettempdir()).glob("BUSISegmentation-*"))

    def on_progress(progress) -> None:
        if progress.line.startswith("CHILD "):
            children.append(int(progress.line.split()[1]))
        if progress.total:
            cancel.set()

    started = time.monotonic()
    with pytest.raises(SegmentationCancelled):
        segment_array(np.zeros((3, 4, 4), np.uint8), progress_callback=on_progress, cancel_event=cancel,
                      python_executable=fake_python, bundle_dir=tmp_path)  # fmt: skip
    assert time.monotonic() - started < 30
    assert children and _gone(children[0])
    assert set(Path(tempfile.gettempdir()).glob("BUSISegmentation-*")) <= work_dirs_before


def test_lib_imports_before_dependencies_are_installed() -> None:
    # In 3D Slicer the module is loaded before pynrrd and psutil are installed.
    code = (
        "import sys\n"
        "for name in ('nrrd', 'psutil', 'torch', 'monai'):\n"
        "    sys.modules[name] = None\n"
        "import BUSISegmentationLib\n"
        "print(sorted(BUSISegmentationLib.missing_requirements())[:1])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "BUSISegmentation")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr


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
    _, header = nrrd.read(str(tmp_path / "grey" / "output" / "image_seg.seg.nrrd"))
    np.testing.assert_allclose(np.abs(np.diag(header["space directions"])), [0.1, 0.2, 1.0])
    assert output.lesions and all(row["area_mm2"] == pytest.approx(row["area_px"] * 0.02) for row in output.lesions)

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
