"""The 3D Slicer extension's files, checked without 3D Slicer: module source, UI, CMake, terminology, catalog entry.

What needs Slicer itself (the Widget, the Logic's MRML conversions, the self-test) runs in Slicer through CTest:
``BUSISegmentationTest`` in the module and ``BUSISegmentation/Testing/Python``.
"""

from __future__ import annotations

import ast
import csv
import json
import py_compile
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image
from pydicom.sr.codedict import codes

from BUSISegmentationLib import load_label_descriptions

REPO_ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO_ROOT / "BUSISegmentation"
MODULE_FILE = MODULE_DIR / "BUSISegmentation.py"
LIB_DIR = MODULE_DIR / "BUSISegmentationLib"
RESOURCES = MODULE_DIR / "Resources"
UI_FILE = RESOURCES / "UI" / "BUSISegmentation.ui"
SLICER_ONLY_MODULES = {"slicer", "qt", "vtk", "ctk", "SampleData", "PyTorchUtils"}


def _imported_roots(path: Path) -> set[str]:
    """Top-level names of every module imported anywhere in a file, including imports inside functions."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def _module_python_files() -> list[Path]:
    # BUSISegmentation/Testing holds tests that run inside Slicer; they may import it.
    return [p for p in MODULE_DIR.rglob("*.py") if "Testing" not in p.relative_to(MODULE_DIR).parts]


def _ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI_FILE).getroot().iter("widget")}


def _widget_property(widget: ET.Element, name: str) -> ET.Element | None:
    return next((p for p in widget.findall("property") if p.get("name") == name), None)


def _cmake_list(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    return match.group(1).split() if match else []


# --- module source ------------------------------------------------------------------------------------------


def test_module_compiles(tmp_path: Path) -> None:
    py_compile.compile(str(MODULE_FILE), cfile=str(tmp_path / "module.pyc"), doraise=True)


def test_slicer_imports_only_in_the_module_file() -> None:
    assert SLICER_ONLY_MODULES & _imported_roots(MODULE_FILE) >= {"slicer", "qt", "vtk"}
    for path in _module_python_files():
        if path != MODULE_FILE:
            assert not SLICER_ONLY_MODULES & _imported_roots(path), f"{path} imports 3D Slicer modules"


def test_module_has_the_scripted_module_classes() -> None:
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    bases = {node.name: [ast.unparse(b) for b in node.bases] for node in tree.body if isinstance(node, ast.ClassDef)}
    assert bases["BUSISegmentation"] == ["ScriptedLoadableModule"]
    assert bases["BUSISegmentationWidget"] == ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]
    assert bases["BUSISegmentationLogic"] == ["ScriptedLoadableModuleLogic"]
    assert bases["BUSISegmentationTest"] == ["ScriptedLoadableModuleTest"]


def test_no_bare_except_or_imp_in_module_and_lib() -> None:
    for path in _module_python_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        assert not [n.lineno for n in ast.walk(tree) if isinstance(n, ast.ExceptHandler) and n.type is None], path
        assert "imp" not in _imported_roots(path), path


def test_logic_opens_no_dialogs() -> None:
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    logic = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "BUSISegmentationLogic")
    source = ast.unparse(logic)
    for dialog in ("Display(", "QMessageBox", "tryWithErrorDisplay", "installTorch(askConfirmation=True"):
        assert dialog not in source


# --- UI ---------------------------------------------------------------------------------------------------------


def test_ui_has_every_widget_the_module_uses() -> None:
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text(encoding="utf-8")))
    widgets = _ui_widgets()
    assert used, "the module uses no widget from the .ui file"
    assert used <= set(widgets), f"missing in {UI_FILE.name}: {sorted(used - set(widgets))}"
    assert widgets["logTextEdit"].get("class") == "QPlainTextEdit"
    assert _widget_property(widgets["logTextEdit"], "readOnly").find("bool").text == "true"
    assert widgets["progressBar"].get("class") == "QProgressBar"
    headers = [c.find("property/string").text for c in widgets["resultsTable"].findall("column")]
    assert headers == ["Frame", "Class", "Confidence", "Area (mm²)"]


def test_ui_parameters_match_the_parameter_node() -> None:
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    node_class = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "BUSISegmentationParameterNode")
    fields = {n.target.id for n in node_class.body if isinstance(n, ast.AnnAssign)}
    bound = {}
    for name, widget in _ui_widgets().items():
        parameter = _widget_property(widget, "SlicerParameterName")
        if parameter is not None:
            bound[parameter.find("string").text] = widget
    assert set(bound) == fields
    assert bound["inputVolume"].get("class") == bound["outputSegmentation"].get("class") == "qMRMLNodeComboBox"
    assert bound["frames"].get("class") == bound["device"].get("class") == "QComboBox"


def test_ui_node_selectors() -> None:
    widgets = _ui_widgets()

    def values(widget: str, name: str) -> list[str]:
        element = _widget_property(widgets[widget], name)
        return [e.text for e in element.iter() if e.tag in ("string", "bool")]

    assert values("inputVolumeSelector", "nodeTypes") == ["vtkMRMLScalarVolumeNode"]  # RGB volumes derive from it
    assert "vtkMRMLLabelMapVolumeNode" in values("inputVolumeSelector", "hideChildNodeTypes")
    assert values("outputSegmentationSelector", "nodeTypes") == ["vtkMRMLSegmentationNode"]
    for flag in ("noneEnabled", "addEnabled", "renameEnabled"):
        assert values("outputSegmentationSelector", flag) == ["true"]
    assert values("outputSegmentationSelector", "noneDisplay") == ["Create new segmentation"]
    receivers = {c.findtext("receiver") for c in ET.parse(UI_FILE).getroot().iter("connection")}
    assert {"inputVolumeSelector", "outputSegmentationSelector"} <= receivers  # they get the MRML scene


def test_icon_is_a_real_picture() -> None:
    with Image.open(RESOURCES / "Icons" / "BUSISegmentation.png") as icon:
        assert icon.format == "PNG" and icon.size == (128, 128)
        assert len(set(icon.convert("RGB").getdata())) > 50


# --- CMake and catalog entry ------------------------------------------------------------------------------------


def test_module_cmake_lists_every_file() -> None:
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    scripts = [s.replace("${MODULE_NAME}", "BUSISegmentation") for s in _cmake_list(text, "MODULE_PYTHON_SCRIPTS")]
    resources = [r.replace("${MODULE_NAME}", "BUSISegmentation") for r in _cmake_list(text, "MODULE_PYTHON_RESOURCES")]
    lib_files = sorted(p.relative_to(MODULE_DIR).as_posix() for p in LIB_DIR.glob("*.py"))
    assert sorted(s for s in scripts if s.startswith("BUSISegmentationLib/")) == lib_files
    assert "BUSISegmentation.py" in scripts
    for listed in scripts + resources:
        assert (MODULE_DIR / listed).is_file(), f"CMake lists missing file {listed}"
    shipped = sorted(p.relative_to(MODULE_DIR).as_posix() for p in RESOURCES.rglob("*") if p.is_file())
    assert sorted(resources) == shipped
    assert "slicerMacroBuildScriptedModule(" in text and "WITH_GENERIC_TESTS" in text
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    # the bundle is copied where BUSISegmentationLib.bundle.locate_bundle looks first
    assert "set(BUNDLE_RESOURCE_DIR Resources/monai_bundle)" in text
    for pattern in ("configs/*.json", "configs/logging.conf", "models/model.pt", "scripts/*.py", "sample_data/*.png"):
        assert f"${{BUNDLE_SOURCE_DIR}}/{pattern}" in text
    testing = (MODULE_DIR / "Testing" / "Python" / "CMakeLists.txt").read_text(encoding="utf-8")
    for script in re.findall(r"SCRIPT (\S+)\)", testing):
        assert (MODULE_DIR / "Testing" / "Python" / script).is_file()


def test_extension_cmake_and_catalog_entry() -> None:
    text = (REPO_ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    metadata = dict(re.findall(r'set\((EXTENSION_\w+) "([^"]*)"\)', text))
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert metadata.get(f"EXTENSION_{key}"), f"EXTENSION_{key} is not set"
    assert metadata["EXTENSION_CATEGORY"] == "Segmentation" and metadata["EXTENSION_DEPENDS"] == "PyTorch"
    assert metadata["EXTENSION_ICONURL"].endswith("BUSISegmentation/Resources/Icons/BUSISegmentation.png")
    order = ["find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})", "add_subdirectory(BUSISegmentation)",
             "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"]  # fmt: skip
    assert [text.index(line) for line in order] == sorted(text.index(line) for line in order)
    catalog = json.loads((REPO_ROOT / "BUSISegmentation.json").read_text(encoding="utf-8"))
    assert catalog["scmurl"] == metadata["EXTENSION_HOMEPAGE"]
    assert catalog["category"] == "Segmentation" and catalog["build_dependencies"] == ["PyTorch"]
    assert catalog["$schema"].endswith("slicer-extension-catalog-item-schema-v1.0.0.json#")


# --- segment names, codes and colours --------------------------------------------------------------------------


def test_labels_and_terminology_agree() -> None:
    with open(RESOURCES / "labels.csv", newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert [(r["LabelValue"], r["Name"]) for r in rows] == [("1", "Benign lesion"), ("2", "Malignant lesion")]
    terminology = json.loads((RESOURCES / "BUSISegmentation.term.json").read_text(encoding="utf-8"))
    (category,) = terminology["SegmentationCodes"]["Category"]
    assert (category["CodeValue"], category["CodeMeaning"]) == ("49755003", "Morphologically Altered Structure")
    types = {t["CodeValue"]: t["CodeMeaning"] for t in category["Type"]}
    assert types == {"3898006": "Neoplasm, benign", "86049000": "Malignant neoplasm, primary"}
    for row in rows:
        assert row["SegmentedPropertyCategoryCodeSequence.CodeValue"] == category["CodeValue"]
        type_code = row["SegmentedPropertyTypeCodeSequence.CodeValue"]
        assert types[type_code] == row["SegmentedPropertyTypeCodeSequence.CodeMeaning"]
        region = (row["AnatomicRegionSequence.CodeValue"], row["AnatomicRegionSequence.CodeMeaning"])
        assert region == ("76752008", "Breast")
    # codes as DICOM (pydicom) defines them
    assert codes.SCT.Breast.value == "76752008"
    assert codes.SCT.MalignantNeoplasmPrimary.value == "86049000"
    assert codes.SCT.MalignantNeoplasmPrimary.meaning.startswith("Malignant neoplasm, primary")


def test_label_descriptions_give_slicer_terminology_entries() -> None:
    descriptions = load_label_descriptions()
    assert [d.value for d in descriptions] == [1, 2]
    benign, malignant = descriptions
    assert benign.terminology_entry == (
        "Segmentation category and type - BUSI Segmentation~SCT^49755003^Morphologically Altered Structure"
        "~SCT^3898006^Neoplasm, benign~^^~Anatomic codes - DICOM master list~SCT^76752008^Breast~^^"
    )
    assert malignant.terminology_entry.count("~") == 6
    assert "~SCT^86049000^Malignant neoplasm, primary~" in malignant.terminology_entry
    assert all(0 <= c <= 1 for d in descriptions for c in d.color) and benign.color != malignant.color


def test_segments_match_what_the_bundle_writes() -> None:
    writers = pytest.importorskip("scripts.writers", reason="bundle writers not importable")
    descriptions = {d.value: d for d in load_label_descriptions()}
    for segment in writers.SEGMENTS:
        description = descriptions[segment.label]
        assert description.name == segment.name
        assert f"{segment.type_code[0]}^{segment.type_code[1]}^" in description.terminology_entry
        assert description.color == pytest.approx(segment.color, abs=1 / 255)
