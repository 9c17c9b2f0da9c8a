"""The 3D Slicer extension configures, builds and installs with CMake, against the stand-in Slicer package.

``Testing/SlicerStandIn`` provides what a Slicer build gives an extension (``SlicerConfig.cmake``, the use file, the
scripted-module and Python-test macros, the extension config and packaging files), with Slicer's checks: a broken
copy command, a listed file that does not exist or a bad path fails here as it would on the Extensions Index.
"""

from __future__ import annotations

import filecmp
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
STAND_IN = REPO_ROOT / "Testing" / "SlicerStandIn"
MODULE_DIR = REPO_ROOT / "BUSISegmentation"
BUNDLE_DIR = REPO_ROOT / "monai_bundle"
SCRIPTED_MODULES = Path("lib") / "Slicer-5.10" / "qt-scripted-modules"
CMAKE = shutil.which("cmake")
CTEST = shutil.which("ctest")
GENERATORS = ["Unix Makefiles"] + (["Ninja"] if shutil.which("ninja") else [])

pytestmark = pytest.mark.skipif(CMAKE is None or CTEST is None, reason="cmake is not installed")


def _cmake(*arguments: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CMAKE, *map(str, arguments)], cwd=cwd, capture_output=True, text=True, timeout=600, check=False
    )


def _configure(
    source: Path, build: Path, *options: str, generator: str = "Unix Makefiles"
) -> subprocess.CompletedProcess:
    return _cmake("-S", source, "-B", build, "-G", generator, f"-DSlicer_DIR={STAND_IN}", *options)


def _registered_tests(build: Path) -> dict[str, dict]:
    """name: {"command": [...], "environment": [...]} of every test CTest would run."""
    listing = subprocess.run(
        [CTEST, "--show-only=json-v1"], cwd=build, capture_output=True, text=True, timeout=60, check=True
    )
    tests = {}
    for test in json.loads(listing.stdout)["tests"]:
        properties = {p["name"]: p["value"] for p in test.get("properties", [])}
        tests[test["name"]] = {"command": test["command"], "environment": properties.get("ENVIRONMENT", [])}
    return tests


def _listed_module_files() -> list[str]:
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    files = []
    for variable in ("MODULE_PYTHON_SCRIPTS", "MODULE_PYTHON_RESOURCES"):
        block = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S).group(1)
        files += [name.replace("${MODULE_NAME}", "BUSISegmentation") for name in block.split()]
    return files


def _bundle_files() -> list[Path]:
    """The bundle files the extension ships: what the module runs, its sample pictures and documentation. Not the
    TorchScript exports (``models/*.ts``), which nothing in the module loads."""
    patterns = ["configs/*.json", "configs/logging.conf", "models/*.pt", "scripts/*.py", "sample_data/*.png",
                "docs/README.md", "LICENSE"]  # fmt: skip
    return sorted({path.relative_to(BUNDLE_DIR) for pattern in patterns for path in BUNDLE_DIR.glob(pattern)})


def _extension_copy(destination: Path) -> Path:
    """The extension's CMake sources in a scratch folder (the bundle linked, not copied), to try broken variants."""
    ignored = shutil.ignore_patterns("*.egg-info", "__pycache__")
    shutil.copytree(MODULE_DIR, destination / "BUSISegmentation", ignore=ignored)
    for name in ("CMakeLists.txt", "README.md", "LICENSE"):
        shutil.copy(REPO_ROOT / name, destination / name)
    (destination / "monai_bundle").symlink_to(BUNDLE_DIR, target_is_directory=True)
    return destination


@pytest.fixture(scope="module", params=GENERATORS)
def built_extension(request, tmp_path_factory) -> tuple[Path, Path]:
    """(build folder, install folder) of the extension, configured, built and installed with one generator."""
    root = tmp_path_factory.mktemp(request.param.replace(" ", "_"))
    build, install = root / "build", root / "install"
    for step in (
        _configure(REPO_ROOT, build, generator=request.param),
        _cmake("--build", build),
        _cmake("--install", build, "--prefix", install),
    ):
        assert step.returncode == 0, step.stdout[-3000:] + step.stderr[-3000:]
    return build, install


def test_build_and_install_trees_hold_the_module_and_the_bundle(built_extension) -> None:
    build, install = built_extension
    assert any(" (" in path.name for path in _bundle_files()), "sample files with parentheses are what this checks"
    for tree in (build / SCRIPTED_MODULES, install / SCRIPTED_MODULES):
        for name in _listed_module_files():
            assert filecmp.cmp(MODULE_DIR / name, tree / name, shallow=False), f"{name} missing or different in {tree}"
        bundle = tree / "Resources" / "monai_bundle"
        for relative in _bundle_files():
            assert filecmp.cmp(BUNDLE_DIR / relative, bundle / relative, shallow=False), f"{relative} in {bundle}"
        # nothing else: no TorchScript export (tens of MB each), no cache or training output
        assert {path.relative_to(bundle) for path in bundle.rglob("*") if path.is_file()} == set(_bundle_files())
    description = dict(
        line.split(" ", 1) for line in (build / "BUSISegmentation.s4ext").read_text(encoding="utf-8").splitlines()
    )
    assert description["depends"] == "PyTorch" and description["category"] == "Segmentation"
    assert description["homepage"].endswith("/SlicerBUSISegmentation")


def test_self_test_runs_without_the_logic_unless_asked(built_extension, tmp_path: Path) -> None:
    build, _ = built_extension
    tests = _registered_tests(build)
    assert set(tests) == {
        "py_BUSISegmentation",
        "py_BUSISegmentationResourcesTest",
        "py_nomainwindow_qSlicerBUSISegmentationModuleGenericTest",
    }
    environments = [variable for test in tests.values() for variable in test["environment"]]
    assert not any("BUSISEGMENTATION_TEST_LOGIC" in variable for variable in environments)
    unit_test = next(arg for arg in tests["py_BUSISegmentation"]["command"] if "runUnitTest" in arg)
    assert unit_test.endswith("'BUSISegmentation')")

    with_logic = tmp_path / "with_logic"
    step = _configure(REPO_ROOT, with_logic, "-DBUSISegmentation_ENABLE_LOGIC_TEST=ON")
    assert step.returncode == 0, step.stderr
    tests = _registered_tests(with_logic)
    assert tests["py_BUSISegmentation"]["environment"] == ["BUSISEGMENTATION_TEST_LOGIC=1"]
    assert tests["py_BUSISegmentationResourcesTest"]["environment"] == []


def test_slicer_older_than_5_10_is_refused(tmp_path: Path) -> None:
    step = _configure(REPO_ROOT, tmp_path / "build", "-DSlicerStandIn_VERSION=5.8.1")
    assert step.returncode != 0
    message = " ".join(step.stderr.split())
    assert "5.8.1" in message and "5.10" in message


def test_stand_in_refuses_a_listed_file_that_does_not_exist(tmp_path: Path) -> None:
    source = _extension_copy(tmp_path / "source")
    cmake_file = source / "BUSISegmentation" / "CMakeLists.txt"
    text = cmake_file.read_text(encoding="utf-8")
    marker = "Resources/${MODULE_NAME}.term.json"
    assert marker in text
    cmake_file.write_text(text.replace(marker, marker + "\n  Resources/missing.csv"))
    step = _configure(source, tmp_path / "build")
    assert step.returncode != 0
    assert "lists a file that does not exist: Resources/missing.csv" in " ".join(step.stderr.split())


def test_stand_in_build_fails_on_a_copy_command_the_shell_cannot_run(tmp_path: Path) -> None:
    # Without VERBATIM the file names with parentheses reach /bin/sh unquoted, as they did before the fix.
    source = _extension_copy(tmp_path / "source")
    cmake_file = source / "BUSISegmentation" / "CMakeLists.txt"
    text = cmake_file.read_text(encoding="utf-8")
    assert text.count("    VERBATIM\n") == 1
    unquoted = text.replace("    VERBATIM\n", "").replace('"${source}" "${target}"', "${source} ${target}")
    cmake_file.write_text(unquoted, encoding="utf-8")
    assert _configure(source, tmp_path / "build").returncode == 0
    step = _cmake("--build", tmp_path / "build")
    assert step.returncode != 0
    assert "benign (23).png" in step.stdout + step.stderr
