"""The 3D Slicer extension's files, checked without 3D Slicer: module source, UI, CMake, terminology, catalog entry
(against Slicer's schema) and the URLs of the extension's description.

Also run here, on the stand-in Slicer modules of ``fake_slicer``, is what the module does with Slicer's own modules:
its dependencies, Sample Data samples, the nodes of a cine result, the Segment button during the installation of the
Python packages, and the "Add to training set" button. The CMake build runs in ``test_extension_build.py``, the
segmentation runs of the Logic in ``test_slicer_lib.py``. What needs Slicer itself runs in Slicer through CTest:
``BUSISegmentationTest`` in the module and ``BUSISegmentation/Testing/Python``.
"""

from __future__ import annotations

import ast
import csv
import json
import py_compile
import re
import shutil
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import fake_slicer
import jsonschema
import numpy as np
import pytest
from PIL import Image
from pydicom.sr.codedict import codes

from BUSISegmentationLib import (
    BUNDLE_DIR_ENV,
    LESION_TABLE_HEADERS,
    SegmentationOutput,
    UnmetRequirement,
    load_label_descriptions,
    pixels_to_ras,
)
from BUSISegmentationLib.labels import load_vocabulary

REPO_ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO_ROOT / "BUSISegmentation"
MODULE_FILE = MODULE_DIR / "BUSISegmentation.py"
LIB_DIR = MODULE_DIR / "BUSISegmentationLib"
RESOURCES = MODULE_DIR / "Resources"
UI_FILE = RESOURCES / "UI" / "BUSISegmentation.ui"
SLICER_ONLY_MODULES = {"slicer", "qt", "vtk", "ctk", "SampleData", "PyTorchUtils"}
# Extensions Index: the repository name starts with "Slicer", the extension name does not.
EXTENSION_REPOSITORY = "https://github.com/busi-segmentation/SlicerBUSISegmentation"
SLICER_SCHEMAS_URL = "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas"
# What the 5.10 extension template of Slicer (Utilities/Templates/Extensions/Default/CMakeLists.txt) starts with.
CMAKE_MINIMUM_OF_SLICER_5_10 = "cmake_minimum_required(VERSION 3.20.6...3.22.6 FATAL_ERROR)"
# Copy of Slicer's Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json, the newest catalog entry schema.
CATALOG_SCHEMA = REPO_ROOT / "Testing" / "schemas" / "slicer-extension-catalog-entry-schema-v1.0.2.json"


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
    assert not widgets["resultsTable"].findall("column")  # the Widget sets them, from the Lib's lesion table


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
    patterns = ("configs/*.json", "configs/logging.conf", "models/*.pt", "scripts/*.py", "sample_data/*.png")
    for pattern in patterns:
        assert f"${{BUNDLE_SOURCE_DIR}}/{pattern}" in text
    # nothing loads the TorchScript exports: the package would carry tens of MB for nothing
    assert "${BUNDLE_SOURCE_DIR}/models/*.ts" not in text
    testing = (MODULE_DIR / "Testing" / "Python" / "CMakeLists.txt").read_text(encoding="utf-8")
    for script in re.findall(r"SCRIPT (\S+)\)", testing):
        assert (MODULE_DIR / "Testing" / "Python" / script).is_file()


def _extension_metadata() -> dict[str, str]:
    text = (REPO_ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    return dict(re.findall(r'set\((EXTENSION_\w+) "([^"]*)"\)', text))


def test_extension_cmake_metadata() -> None:
    text = (REPO_ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    metadata = _extension_metadata()
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert metadata.get(f"EXTENSION_{key}"), f"EXTENSION_{key} is not set"
    assert metadata["EXTENSION_CATEGORY"] == "Segmentation" and metadata["EXTENSION_DEPENDS"] == "PyTorch"
    assert metadata["EXTENSION_ICONURL"].endswith("BUSISegmentation/Resources/Icons/BUSISegmentation.png")
    # the Extensions Index names the catalog entry after project() and wants a repository named Slicer...
    assert re.search(r"^project\(BUSISegmentation\)", text, re.M)
    assert re.search(r"^cmake_minimum_required\(.*\)$", text, re.M).group(0) == CMAKE_MINIMUM_OF_SLICER_5_10
    assert metadata["EXTENSION_HOMEPAGE"] == EXTENSION_REPOSITORY
    order = ["find_package(Slicer 5.10 REQUIRED)", "include(${Slicer_USE_FILE})", "add_subdirectory(BUSISegmentation)",
             "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"]  # fmt: skip
    assert [text.index(line) for line in order] == sorted(text.index(line) for line in order)


def test_every_url_of_the_extension_names_a_file_of_this_repository() -> None:
    text = (REPO_ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    raw_prefix = EXTENSION_REPOSITORY.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    urls = re.findall(r"https://raw\.githubusercontent\.com/[^\s\"]+", text)
    assert len(urls) >= 2  # the icon and at least one screenshot
    for url in urls:
        assert url.startswith(raw_prefix), url
        path = REPO_ROOT / url.removeprefix(raw_prefix)
        assert path.is_file(), f"{url} names {path}, which does not exist"
        with Image.open(path) as picture:
            assert picture.format in ("PNG", "JPEG", "GIF"), url  # image types the Extensions Index accepts
    screenshots = _extension_metadata()["EXTENSION_SCREENSHOTURLS"].split()
    assert screenshots and all(url in urls for url in screenshots)


def test_catalog_entry_validates_against_slicers_schema() -> None:
    catalog = json.loads((REPO_ROOT / "BUSISegmentation.json").read_text(encoding="utf-8"))
    schema = json.loads(CATALOG_SCHEMA.read_text(encoding="utf-8"))
    # the entry names the schema kept here, by the URL Slicer publishes it at
    assert catalog["$schema"] == schema["$id"] == f"{SLICER_SCHEMAS_URL}/{CATALOG_SCHEMA.name}#"
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(catalog, schema)
    assert catalog["scm_url"] == EXTENSION_REPOSITORY == _extension_metadata()["EXTENSION_HOMEPAGE"]
    assert catalog["category"] == "Segmentation" and catalog["build_dependencies"] == ["PyTorch"]
    # the form used before is refused by the schema
    old_form = {key: value for key, value in catalog.items() if not key.startswith("scm_")}
    old_form.update(scmurl=catalog["scm_url"], scmrevision="main")
    assert not jsonschema.Draft7Validator(schema).is_valid(old_form)


def test_readme_names_the_extension_repository() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    slicer_section = readme[readme.index("## In 3D Slicer") :]
    assert EXTENSION_REPOSITORY in slicer_section
    repositories = set(re.findall(r"https://github\.com/busi-segmentation/[\w-]+", readme))
    assert repositories == {EXTENSION_REPOSITORY}


# --- segment names, codes and colours --------------------------------------------------------------------------


def _terminology() -> dict:
    return json.loads((RESOURCES / "BUSISegmentation.term.json").read_text(encoding="utf-8"))


def test_terminology_file_agrees_with_the_bundle_vocabulary() -> None:
    # Slicer loads the terminology file, the bundle writes labels.json's codes: the two must say the same.
    vocabulary = load_vocabulary()
    (category,) = _terminology()["SegmentationCodes"]["Category"]
    code = vocabulary.category
    assert (category["CodingSchemeDesignator"], category["CodeValue"], category["CodeMeaning"]) == (
        code.scheme, code.value, code.meaning
    )  # fmt: skip
    in_terminology = {
        (entry["CodingSchemeDesignator"], entry["CodeValue"]):
            (entry["CodeMeaning"], entry["3dSlicerLabel"], entry["recommendedDisplayRGBValue"])
        for entry in category["Type"]
    }  # fmt: skip
    in_vocabulary = {
        (label.type.scheme, label.type.value): (label.type.meaning, label.name, list(label.color))
        for label in vocabulary.lesions
    }
    assert in_terminology == in_vocabulary
    assert category["showAnatomy"] is True  # the segments carry the anatomic region (breast)
    # codes as DICOM (pydicom) defines them
    assert (vocabulary.anatomic_region.value, vocabulary.anatomic_region.meaning) == (codes.SCT.Breast.value, "Breast")
    assert vocabulary.anatomic_context == "Anatomic codes - DICOM master list"  # Slicer's built-in list has Breast
    assert codes.SCT.MalignantNeoplasmPrimary.value == "86049000"
    assert codes.SCT.MalignantNeoplasmPrimary.meaning.startswith("Malignant neoplasm, primary")


def test_terminology_context_is_the_one_the_vocabulary_names() -> None:
    # A custom context file defines a context of its own name, and a Slicer terminology entry is looked up in the
    # context it names: the bundle's .seg.nrrd files must name the context the module loads.
    assert load_vocabulary().terminology_context == _terminology()["SegmentationCategoryTypeContextName"]


def test_label_descriptions_give_slicer_terminology_entries() -> None:
    descriptions = load_label_descriptions()
    assert [(d.value, d.name) for d in descriptions] == [(1, "Benign lesion"), (2, "Malignant lesion")]
    benign, malignant = descriptions
    assert benign.terminology_entry == (
        "Segmentation category and type - BUSI Segmentation~SCT^49755003^Morphologically Altered Structure"
        "~SCT^3898006^Neoplasm, benign~^^~Anatomic codes - DICOM master list~SCT^76752008^Breast~^^"
    )
    assert malignant.terminology_entry.count("~") == 6
    assert "~SCT^86049000^Malignant neoplasm, primary~" in malignant.terminology_entry
    assert all(0 <= c <= 1 for d in descriptions for c in d.color) and benign.color != malignant.color
    # the entries name the context the module loads into Slicer
    context = _terminology()["SegmentationCategoryTypeContextName"]
    assert all(d.terminology_entry.startswith(f"{context}~") for d in descriptions)


def test_label_descriptions_follow_the_bundle_the_lib_located(tmp_path: Path, monkeypatch) -> None:
    # labels.json of the located bundle is the one definition: a bundle with other labels gives other segments.
    bundle = tmp_path / "bundle"
    for part in ("configs/inference.json", "configs/labels.json", "scripts/labels.py"):
        (bundle / part).parent.mkdir(parents=True, exist_ok=True)
        (bundle / part).write_bytes((REPO_ROOT / "monai_bundle" / part).read_bytes())
    vocabulary = json.loads((bundle / "configs" / "labels.json").read_text(encoding="utf-8"))
    vocabulary["labels"][2].update(name="Carcinoma", color=[0, 0, 255])
    (bundle / "configs" / "labels.json").write_text(json.dumps(vocabulary), encoding="utf-8")
    monkeypatch.setenv(BUNDLE_DIR_ENV, str(bundle))
    benign, malignant = load_label_descriptions()
    assert benign.name == "Benign lesion" and (malignant.name, malignant.color) == ("Carcinoma", (0.0, 0.0, 1.0))
    (bundle / "configs" / "labels.json").unlink()
    with pytest.raises(FileNotFoundError, match="labels.json"):
        load_label_descriptions()


def test_the_vocabulary_reader_the_lib_loads_needs_only_the_standard_library() -> None:
    # BUSISegmentationLib.labels runs the bundle's scripts/labels.py in Slicer, before torch or MONAI is installed.
    reader = REPO_ROOT / "monai_bundle" / "scripts" / "labels.py"
    assert _imported_roots(reader) <= set(sys.stdlib_module_names) | {"__future__"}


def test_segments_match_what_the_bundle_writes() -> None:
    # the bundle's writers name, colour and code their segments from the same vocabulary
    descriptions = {d.value: d for d in load_label_descriptions()}
    for label in load_vocabulary().lesions:
        description = descriptions[label.value]
        assert description.name == label.name
        assert f"{label.type.scheme}^{label.type.value}^" in description.terminology_entry
        assert description.color == pytest.approx(tuple(c / 255 for c in label.color), abs=1 / 255)


# --- the module on stand-in Slicer modules ----------------------------------------------------------------------

SAMPLES = "BUSI Segmentation"
FINETUNE_COMMAND = (
    "python -m monai.bundle run finetune --config_file "
    "\"['configs/inference.json','configs/train.json','configs/finetune.json']\" --dataset_dir FOLDER"
)


@pytest.fixture
def module(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    return fake_slicer.install(monkeypatch)


def _module_class(module) -> types.SimpleNamespace:
    parent = types.SimpleNamespace()
    module.BUSISegmentation(parent)
    return parent


def _widget(module, volume=None):
    if volume is not None:
        module.slicer.mrmlScene.AddNode(volume)
    widget = module.BUSISegmentationWidget()
    widget.setup()
    return widget


def test_module_depends_on_the_slicer_modules_it_uses(module) -> None:
    parent = _module_class(module)
    source = MODULE_FILE.read_text(encoding="utf-8")
    used = {name.lower() for name in re.findall(r"slicer\.modules\.(\w+)\.logic\(\)", source)}
    used |= {"sampledata"} if "import SampleData" in source else set()
    used |= {"segmentations"} if "vtkSlicerSegmentationsModuleLogic" in source else set()
    assert used == {"sequences", "terminologies", "sampledata", "segmentations"}
    assert parent.dependencies == ["Segmentations", "Sequences", "Terminologies", "SampleData"]


def test_help_gives_the_command_that_fine_tunes_on_a_training_set(module) -> None:
    assert FINETUNE_COMMAND in _module_class(module).helpText
    for config in ("inference.json", "train.json"):
        assert (REPO_ROOT / "monai_bundle" / "configs" / config).is_file()


def test_sample_data_gives_one_picture_whose_pixel_size_is_unknown(module, tmp_path: Path, monkeypatch) -> None:
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "monai_bundle" / "configs" / "inference.json", bundle / "configs")
    (bundle / "sample_data").mkdir()
    for number in (1, 2):  # numbered pictures of one size: ITK would read them as one series
        Image.new("L", (6, 5), number).save(bundle / "sample_data" / f"benign ({number}).png")
    monkeypatch.setenv(BUNDLE_DIR_ENV, str(bundle))
    _module_class(module)
    for slot in module.slicer.app.connections["startupCompleted()"]:
        slot()
    volume = fake_slicer.click_sample_button(module.slicer, SAMPLES, "benign (1)")
    assert volume.GetName() == "benign (1)" and volume.array.shape == (1, 5, 6) and volume.array.max() == 1
    logic = module.BUSISegmentationLogic()
    assert not logic.pixelSizeKnown(volume)  # lesion areas in pixels, not in mm² of a made-up 1 mm
    volume.GetStorageNode().SetFileName(str(tmp_path / "saved.nrrd"))  # the scene saved: now an NRRD with 1 mm
    assert not logic.pixelSizeKnown(volume)
    # Sample Data's own loading drops the storage node: the reason for the module's own downloader
    source = module.slicer.modules.sampleDataSources[SAMPLES][0]
    (loaded,) = sys.modules["SampleData"].SampleDataLogic().downloadFromSource(source)
    assert loaded.GetStorageNode() is None and logic.pixelSizeKnown(loaded)


def _cine_scene(scene, frames: np.ndarray) -> tuple:
    """A cine as Slicer loads one: a sequence of frames, its browser and proxy volume, and an output segmentation
    as the Widget makes it."""
    inputSequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "cine")
    for index, frame in enumerate(frames):
        inputSequence.SetDataNodeAtValue(fake_slicer.VolumeNode(f"frame {index}", frame), str(index))
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "cine browser")
    proxy = scene.AddNode(fake_slicer.VolumeNode("cine", frames[0]))
    browser.AddSynchronizedSequenceNode(inputSequence)
    browser.AddProxyNode(proxy, inputSequence)
    return inputSequence, browser, proxy, scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "cine lesions")


def test_a_cine_result_is_shown_and_leaves_no_node_behind(module) -> None:
    scene, fake = module.slicer.mrmlScene, fake_slicer
    frames = np.random.default_rng(0).integers(0, 256, size=(3, 1, 5, 6), dtype=np.uint8)
    inputSequence, browser, proxy, output = _cine_scene(scene, frames)
    logic = module.BUSISegmentationLogic()
    _, frameIndices, found = logic.framesFromVolume(proxy, allFrames=True)
    assert found is browser and frameIndices == [0, 1, 2]
    labels = np.zeros((3, 5, 6), np.uint8)
    labels[1, 1:3, 1:4], labels[2, 2:4, 2:5] = 1, 2

    for _run in range(2):  # a second run writes into the sequence of the first
        logic.importResult(module.SegmentationTask(proxy, output, frameIndices, browser), SegmentationOutput(labels))
        displays = [node for node in scene.nodes if isinstance(node, fake.DisplayNode)]
        assert displays == [output.GetDisplayNode()] and output.GetDisplayNode() is not None
        assert all(display.displayable.scene is scene for display in displays)
        outputSequence = browser.GetSequenceNode(output)
        assert [outputSequence.GetNthIndexValue(i) for i in range(3)] == ["0", "1", "2"]
        for index in range(3):
            item = outputSequence.GetNthDataNode(index).GetSegmentation()
            for value, name in ((1, "Benign lesion"), (2, "Malignant lesion")):
                mask = item.GetSegment(item.GetSegmentIdBySegmentName(name)).mask
                expected = (labels[index] == value)[np.newaxis]
                np.testing.assert_array_equal(expected if mask is None and not expected.any() else mask, expected)
    # the terminology file is read once, not for every frame nor every run
    assert module.slicer.modules.terminologies.logic().files_read == [str(RESOURCES / "BUSISegmentation.term.json")]


def test_segment_cannot_be_clicked_while_the_packages_install(module, monkeypatch) -> None:
    widget = _widget(module, fake_slicer.VolumeNode("scan", np.zeros((1, 5, 6), np.uint8)))
    button = widget.ui.segmentButton
    assert button.enabled
    monkeypatch.setattr(module, "unmet_torch", lambda: None)
    monkeypatch.setattr(module, "unmet_requirements", lambda: [UnmetRequirement("monai~=1.6.1", None)])
    started, during = [], []
    monkeypatch.setattr(widget.logic, "process", lambda *args, **kwargs: started.append(args))

    def click_again() -> None:  # while pip_install processes events
        during.append(button.enabled)
        button.click()

    module.slicer.app.queued_events.append(click_again)
    button.click()
    assert during == [False]
    assert len(module.slicer.dialogs.confirmations) == len(module.slicer.pip_installs) == len(started) == 1
    assert module.slicer.dialogs.errors == [] and button.enabled


def _csv_rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "labels.csv", newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def test_add_to_training_set_writes_the_corrected_segments(module, tmp_path: Path) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, size=(1, 5, 6, 3), dtype=np.uint8)
    volume = fake_slicer.VolumeNode("benign (23)", rgb, file_name="/data/benign (23).png")
    widget = _widget(module, volume)
    segmentation = module.slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "lesions")
    widget._parameterNode.outputSegmentation = segmentation
    button = widget.ui.addToTrainingSetButton
    assert not button.enabled
    assert "training set folder" in button.toolTip and "patient or study ID" in button.toolTip
    labels = np.zeros((1, 5, 6), np.uint8)
    labels[0, 1:3, 1:4], labels[0, 3:5, 2:4] = 1, 2
    widget.logic.updateSegments(segmentation, labels, volume)  # as corrected in Segment Editor
    folder = tmp_path / "training set"
    widget.ui.trainingSetPathLineEdit.setCurrentPath(str(folder))
    widget.ui.splitGroupLineEdit.setText("patient 7")
    assert button.enabled
    button.click()
    first_image = (folder / "images" / "benign (23).png").read_bytes()
    button.click()  # the same image again: a new case, the first one untouched
    assert (folder / "images" / "benign (23).png").read_bytes() == first_image
    assert _csv_rows(folder) == [
        {"id": "benign (23)", "pathology": "malignant", "split_group": "patient 7"},
        {"id": "benign (23)-2", "pathology": "malignant", "split_group": "patient 7"},
    ]
    np.testing.assert_array_equal(np.asarray(Image.open(folder / "masks" / "benign (23).png")), labels[0])
    grey = np.round(rgb[0].astype(np.float64) @ [0.299, 0.587, 0.114])
    np.testing.assert_array_equal(np.asarray(Image.open(folder / "images" / "benign (23).png")), grey)
    assert widget.ui.logTextEdit.lines[-1].startswith("Added benign (23)-2 (malignant, patient or study patient 7)")

    # A DICOM image: its Patient ID is recorded, nothing is typed.
    volume.attributes["DICOM.instanceUIDs"] = "1.2.3"
    module.slicer.dicomDatabase.values[("/dicom/1.2.3.dcm", "0010,0020")] = "PAT-42"
    widget.updateButtons()
    assert not widget.ui.splitGroupLineEdit.enabled and widget.ui.splitGroupLineEdit.text == ""
    assert "PAT-42" in widget.ui.splitGroupLineEdit.placeholderText and button.enabled
    button.click()
    assert _csv_rows(folder)[-1]["split_group"] == "PAT-42"

    # A segmentation without the lesion segments: an error, and nothing written.
    widget._parameterNode.outputSegmentation = module.slicer.mrmlScene.AddNewNodeByClass(
        "vtkMRMLSegmentationNode", "other"
    )
    button.click()
    assert 'other has no "Benign lesion" or "Malignant lesion" segment' in module.slicer.dialogs.errors[-1]
    assert len(_csv_rows(folder)) == 3 and len(list((folder / "masks").iterdir())) == 3


def test_study_uid_is_the_group_of_a_dicom_image_without_patient_id(module) -> None:
    logic = module.BUSISegmentationLogic()
    volume = fake_slicer.VolumeNode("us", np.zeros((1, 4, 4), np.uint8))
    assert logic.dicomPatientOrStudyId(volume) == ""
    volume.attributes["DICOM.instanceUIDs"] = "1.2.3"
    module.slicer.dicomDatabase.values[("/dicom/1.2.3.dcm", "0020,000D")] = "1.2.840.5"
    assert logic.dicomPatientOrStudyId(volume) == "1.2.840.5"


def _lesion_table(lesions: list[tuple[int, np.ndarray]], spacing: tuple[float, float] | None) -> list[dict]:
    """The bundle's lesion table of ``(frame, mask)`` lesions (frame: index among the segmented frames), with the
    descriptors of the bundle's own ``describe_lesion``."""
    descriptors = pytest.importorskip("scripts.descriptors")
    table = []
    for frame, mask in lesions:
        lesion_id = 1 + sum(earlier["frame"] == frame for earlier in table)
        area_mm2 = None if spacing is None else float(mask.sum() * spacing[0] * spacing[1])
        table.append({"frame": frame, "lesion_id": lesion_id, "class_name": "benign", "label": 1, "confidence": 0.9,
                      "area_px": int(mask.sum()), "area_mm2": area_mm2, "uncertainty": 0.02, "review": False,
                      **descriptors.describe_lesion(mask, spacing=spacing).to_row()})  # fmt: skip
    return table


def _rectangle(top: int, left: int, bottom: int, right: int, shape=(30, 40)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[top:bottom, left:right] = True
    return mask


def _line_ends(line) -> np.ndarray:
    return np.array([line.GetNthControlPointPosition(index) for index in range(line.GetNumberOfControlPoints())])


def test_results_table_and_diameter_lines_replace_those_of_the_last_run(module) -> None:
    scene = module.slicer.mrmlScene
    volume = fake_slicer.VolumeNode("scan", np.zeros((2, 30, 40), np.uint8), (0.2, 0.1, 1.0), "/data/scan.nrrd")
    widget = _widget(module, volume)
    table = widget.ui.resultsTable
    assert table.headers == list(LESION_TABLE_HEADERS)
    logic = widget.logic
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "scan lesions")
    other = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "other lesions")
    own_line = scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode", "my measurement")
    ijk_to_ras = np.diag([-0.2, -0.1, 1.0, 1.0])  # the stand-in volume's geometry

    def run(output, lesions):
        labels = np.zeros((2, 30, 40), np.uint8)
        for frame, mask in lesions:
            labels[frame][mask] = 1
        task = module.SegmentationTask(volume, output, [0, 1])
        logic.importResult(task, SegmentationOutput(labels, _lesion_table(lesions, (0.1, 0.2))))
        task.finished = True
        widget.onCompleted(task)
        return task

    run(other, [(0, _rectangle(2, 2, 6, 8))])
    lesions = [(0, _rectangle(5, 10, 9, 30)), (1, _rectangle(12, 5, 22, 9)), (1, _rectangle(25, 30, 28, 33))]
    task = run(segmentation, lesions)

    rows = [dict(zip(table.headers, (table.rows[(row, column)] for column in range(len(table.headers)))))
            for row in range(len(lesions))]  # fmt: skip
    assert [row["Frame"] for row in rows] == ["0", "1", "1"]
    # 20 columns of 0.2 mm by 4 rows of 0.1 mm (the diagonal is 4.02 mm)
    assert (rows[0]["Longest diameter"], rows[0]["Perpendicular diameter"]) == ("4.0 mm", "0.4 mm")
    assert [(row["Suggested orientation"], row["Uncertainty"], row["Review"]) for row in rows[:2]] == [
        ("parallel", "0.020", "no"), ("not parallel", "0.020", "no")
    ]  # fmt: skip
    lines = logic.diameterLines(segmentation)
    assert [line.GetName() for line in lines] == [
        f"Lesion {number} (frame {frame}) {diameter} diameter"
        for number, frame in ((1, 0), (1, 1), (2, 1)) for diameter in ("longest", "perpendicular")
    ]  # fmt: skip
    for line, lesion in zip(lines[::2], task.lesions):
        ends = [(lesion["longest_diameter_row0"], lesion["longest_diameter_col0"]),
                (lesion["longest_diameter_row1"], lesion["longest_diameter_col1"])]  # fmt: skip
        np.testing.assert_allclose(_line_ends(line), pixels_to_ras(ends, lesion["frame"], ijk_to_ras))
        assert np.linalg.norm(np.subtract(*_line_ends(line))) == pytest.approx(lesion["longest_diameter_mm"])
    assert all(line.GetDisplayNode() is not None and line.GetMeasurement("length").GetEnabled() for line in lines)
    assert _line_ends(lines[2])[:, 2].tolist() == [1.0, 1.0]  # on the slice of frame 1

    # The next run of the same segmentation replaces its lines; the other segmentation's and the user's stay.
    run(segmentation, lesions[:1])
    assert [line.GetName() for line in logic.diameterLines(segmentation)] == [
        "Lesion 1 (frame 0) longest diameter", "Lesion 1 (frame 0) perpendicular diameter"
    ]  # fmt: skip
    assert not any(scene.IsNodePresent(line) for line in lines)
    assert len(logic.diameterLines(other)) == 2 and scene.IsNodePresent(own_line)
    assert table.rows.keys() == {(0, column) for column in range(len(LESION_TABLE_HEADERS))}

    # Closing the scene takes the lines and the table's rows; the next run starts afresh.
    scene.Clear()
    assert table.rows == {} and logic.diameterLines(segmentation) == []
    scene.AddNode(volume)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "scan lesions")
    run(segmentation, lesions[:1])
    assert len(logic.diameterLines(segmentation)) == 2 and len(table.rows) == len(LESION_TABLE_HEADERS)


def test_diameter_lines_of_a_picture_show_no_length_in_mm_and_follow_its_transform(module) -> None:
    scene = module.slicer.mrmlScene
    volume = scene.AddNode(fake_slicer.VolumeNode("benign (1)", np.zeros((1, 30, 40), np.uint8)))
    volume.transform_node_id = "vtkMRMLLinearTransformNode1"  # a tracked probe, for example
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "lesions")
    mask = _rectangle(5, 10, 9, 30)
    logic = module.BUSISegmentationLogic()
    task = module.SegmentationTask(volume, segmentation, [0], pixelSizeKnown=False)
    logic.importResult(task, SegmentationOutput(mask[np.newaxis].astype(np.uint8), _lesion_table([(0, mask)], None)))
    lines = logic.diameterLines(segmentation)
    assert len(lines) == 2
    # Slicer would give the 1 mm pixels it makes up for a picture as mm; the table gives pixels.
    assert not any(line.GetMeasurement("length").GetEnabled() for line in lines)
    assert all(line.GetTransformNodeID() == "vtkMRMLLinearTransformNode1" for line in lines)  # they stay on the image


def test_diameter_lines_of_a_cine_item_lie_on_the_proxy_slice(module) -> None:
    scene = module.slicer.mrmlScene
    frames = np.zeros((3, 1, 30, 40), np.uint8)
    inputSequence, browser, proxy, output = _cine_scene(scene, frames)
    mask = _rectangle(5, 10, 9, 30)
    labels = np.zeros((3, 30, 40), np.uint8)
    labels[2][mask] = 1
    logic = module.BUSISegmentationLogic()
    task = module.SegmentationTask(proxy, output, [0, 1, 2], browser)
    logic.importResult(task, SegmentationOutput(labels, _lesion_table([(2, mask)], None)))
    lines = logic.diameterLines(output)
    assert [line.GetName() for line in lines] == [
        "Lesion 1 (frame 2) longest diameter", "Lesion 1 (frame 2) perpendicular diameter"
    ]  # fmt: skip
    assert all(_line_ends(line)[:, 2].tolist() == [0.0, 0.0] for line in lines)  # the proxy has one slice
