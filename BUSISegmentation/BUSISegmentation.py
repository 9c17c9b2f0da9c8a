"""3D Slicer module "BUSI Segmentation": segments the loaded breast ultrasound image with the MONAI bundle.

Module, Widget, Logic and Test are in this one file, the layout of 3D Slicer's scripted modules (Slicer finds the
classes by these names), hence its length; everything that does not need Slicer is in ``BUSISegmentationLib``.
"""

import importlib
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import qt
import vtk

import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

import BUSISegmentationLib
from BUSISegmentationLib import (
    LESION_TABLE_HEADERS,
    TORCH_REQUIREMENT,
    TORCH_VERSION,
    BundleRun,
    LabelDescription,
    Progress,
    RunConfig,
    SegmentationCancelled,
    SegmentationOutput,
    diameter_lines,
    lesion_table_row,
    load_label_descriptions,
    locate_bundle,
    pip_install_arguments,
    pixel_size_is_known,
    pixels_to_ras,
    python_problem,
    segment_array,
    stop_engine,
    unmet_requirements,
    unmet_torch,
)
from BUSISegmentationLib.labels import TERMINOLOGY_FILE, terminology_context_name
from BUSISegmentationLib.training_set import TrainingCase, add_case

TERMINOLOGY_CONTEXT = terminology_context_name()

# Lib submodules in dependency order, for reloading during development.
LIB_MODULES = (
    "progress", "process", "bundle", "labels", "volume_io", "lesions", "dependencies", "engine", "inference",
    "training_set",
)  # fmt: skip
# How often "Follow the shown frame" looks at the frame shown.
FOLLOW_INTERVAL_MS = 250
# Set (by CMake option BUSISegmentation_ENABLE_LOGIC_TEST) to make the self-test install PyTorch and MONAI and
# segment a sample image; off by default, as in other extensions that run PyTorch models.
TEST_LOGIC_ENV = "BUSISEGMENTATION_TEST_LOGIC"
# Volume attribute: "false" when the volume's spacing is not its pixel size (a sample picture, loaded with 1 mm pixels).
# Kept in the scene, so it still holds when the volume is later saved in a format that stores a spacing.
PIXEL_SIZE_KNOWN_ATTRIBUTE = "BUSISegmentation.PixelSizeKnown"
# Node reference from a diameter line to the segmentation whose lesion it measures: the next run of that segmentation
# replaces the lines. A reference, unlike a copied node ID, follows the segmentation when a scene is loaded.
DIAMETER_SEGMENTATION_ROLE = "BUSISegmentation.lesionSegmentation"
SAMPLE_CATEGORY = "BUSI Segmentation"
# The command that fine-tunes the bundle's networks on a training set folder, run in the bundle folder.
FINETUNE_COMMAND = (
    "python -m monai.bundle run finetune --config_file "
    "\"['configs/inference.json','configs/train.json','configs/finetune.json']\" --dataset_dir FOLDER"
)


#
# BUSISegmentation
#


class BUSISegmentation(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("BUSI Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = ["Segmentations", "Sequences", "Terminologies", "SampleData"]
        self.parent.contributors = ["BUSISegmentation contributors"]
        self.parent.helpText = _("""
Segments benign and malignant lesions in breast ultrasound images (PNG/JPEG pictures, single-frame DICOM or cine
loops) with a MONAI bundle trained on the BUSI dataset. Select the image and click Segment.
For research only: not a medical device.

Add to training set: after correcting the segments in Segment Editor, adds the image (the frame shown in the Red
view) with its "Benign lesion" and "Malignant lesion" segments and its patient or study ID to a folder in the
images/ masks/ labels.csv layout. Existing files are never replaced. To fine-tune the model on that folder, run in
the bundle folder (monai_bundle, installed as Resources/monai_bundle next to this module):
""") + "\n" + FINETUNE_COMMAND + "\n"
        self.parent.acknowledgementText = _("""
The model was trained on the BUSI dataset: Al-Dhabyani W, Gomaa M, Khaled H, Fahmy A. Dataset of breast ultrasound
images. Data in Brief 28 (2020) 104863. It runs with MONAI (https://monai.io) and PyTorch.
""")
        slicer.app.connect("startupCompleted()", onStartupCompleted)


def onStartupCompleted():
    BUSISegmentationLogic.loadTerminology()
    registerSampleData()


def registerSampleData():
    """Add the sample images shipped with the bundle to the Sample Data module."""
    import SampleData

    try:
        sampleFolder = locate_bundle() / "sample_data"
    except (FileNotFoundError, ValueError) as error:
        logging.warning(f"BUSI Segmentation sample data not registered: {error}")
        return
    for path in sorted(sampleFolder.glob("*.png")):
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category=SAMPLE_CATEGORY,
            sampleName=path.stem,
            uris=path.as_uri(),
            fileNames=path.name,
            nodeNames=path.stem,
            thumbnailFileName=str(path),
            customDownloader=loadSample,
            loadFileProperties={"singleFile": True},
        )


def loadSample(source):
    """Load a sample picture of the bundle; the Sample Data module calls this when its button is clicked.

    Sample Data's own loading removes the storage node, so the volume would no longer tell that it was read from a
    picture and its made-up 1 mm pixels would be taken for its pixel size; and without "singleFile" the other
    numbered pictures of the folder ("benign (N).png") would be read with it as one series.
    """
    path = locate_bundle() / "sample_data" / source.fileNames[0]
    volumeNode = slicer.util.loadVolume(str(path), {"singleFile": True, "name": source.nodeNames[0]})
    volumeNode.SetAttribute(PIXEL_SIZE_KNOWN_ATTRIBUTE, "false")
    return volumeNode


#
# BUSISegmentationParameterNode
#


class FrameSelection(Enum):
    ALL = "all"
    CURRENT = "current"

    def label(self):
        return _("All frames") if self is FrameSelection.ALL else _("Current frame")


class ComputeDevice(Enum):
    AUTO = "auto"
    CPU = "cpu"
    GPU = "cuda"

    def label(self):
        return {"auto": _("Auto (GPU if available)"), "cpu": _("CPU"), "cuda": _("GPU (CUDA)")}[self.value]


@parameterNodeWrapper
class BUSISegmentationParameterNode:
    """
    The parameters needed by the module.

    inputVolume - Ultrasound image; several slices (or a sequence) are frames of a cine loop.
    outputSegmentation - Segmentation that receives the lesions; a new one is created when empty.
    frames - Segment all frames or only the frame shown in the Red view.
    followFrame - With "Current frame", segment the shown frame again whenever it changes (slider of a cine).
    device - Where the network runs.
    testTimeAugmentation - Also segment the mirrored image and average (twice the computation).
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    frames: FrameSelection = FrameSelection.ALL
    followFrame: bool = False
    device: ComputeDevice = ComputeDevice.AUTO
    testTimeAugmentation: bool = False


#
# BUSISegmentationWidget
#


class BUSISegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._task = None
        self._installing = False
        self._following = False
        self._segmentedFrame = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/BUSISegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.resultsTable.setColumnCount(len(LESION_TABLE_HEADERS))
        self.ui.resultsTable.setHorizontalHeaderLabels(list(LESION_TABLE_HEADERS))

        self.logic = BUSISegmentationLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.followFrameCheckBox.connect("toggled(bool)", self.onFollowFrameToggled)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.addToTrainingSetButton.connect("clicked(bool)", self.onAddToTrainingSetButton)
        self.ui.trainingSetPathLineEdit.connect("currentPathChanged(QString)", self.updateButtons)
        self.ui.splitGroupLineEdit.connect("textChanged(QString)", self.updateButtons)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self._task:
            # The widget is going away: the task must not call back into it.
            self._task.progressCallback = self._task.completedCallback = None
            self.logic.cancel(self._task)
        self._following = False
        stop_engine()
        self.removeObservers()

    def onReload(self) -> None:
        stop_engine()  # before its module is reloaded, which would forget the engine
        for name in LIB_MODULES:
            importlib.reload(sys.modules[f"BUSISegmentationLib.{name}"])
        importlib.reload(BUSISegmentationLib)
        super().onReload()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)
        self.ui.resultsTable.setRowCount(0)  # its lesions, and their diameter lines, leave with the scene

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[BUSISegmentationParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets with a SlicerParameterName property in the .ui file are kept in sync with the node.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self.updateButtons()

    def updateButtons(self, *args) -> None:
        self.updateSegmentButton()
        self.updateTrainingSetButton()

    def updateSegmentButton(self) -> None:
        if self._installing:
            # pip_install processes events while it runs: a second click would start a second installation.
            self.ui.segmentButton.enabled = False
            self.ui.segmentButton.toolTip = _("Installing the Python packages; see the Python console")
            return
        if self._task:
            self.ui.segmentButton.text = _("Cancel")
            self.ui.segmentButton.toolTip = _("Stop the segmentation")
            self.ui.segmentButton.enabled = True
            return
        self.ui.segmentButton.text = _("Segment")
        missing = []
        if not self._parameterNode or not self._parameterNode.inputVolume:
            missing.append(_("Select an input image."))
        bundleProblem = self.logic.bundleProblem()
        if bundleProblem:
            missing.append(bundleProblem)
        self.ui.segmentButton.enabled = not missing
        self.ui.segmentButton.toolTip = "\n".join(missing) or _("Segment benign and malignant lesions")

    def onSegmentButton(self) -> None:
        if self._task:
            self.logic.cancel(self._task)
            self.ui.segmentButton.enabled = False
            self.addLog(_("Cancelling..."))
            return
        with slicer.util.tryWithErrorDisplay(_("Failed to start the segmentation."), waitCursor=True):
            if not self.installDependenciesIfNeeded():
                return
            if not self._parameterNode or not self._parameterNode.inputVolume:
                return  # the scene was closed while the packages were installed
            parameters = self._parameterNode
            if not parameters.outputSegmentation:
                parameters.outputSegmentation = slicer.mrmlScene.AddNewNodeByClass(
                    "vtkMRMLSegmentationNode", f"{parameters.inputVolume.GetName()} lesions"
                )
            self.ui.logTextEdit.clear()
            self.showLesions([])
            self._task = self.logic.process(
                parameters.inputVolume,
                parameters.outputSegmentation,
                allFrames=parameters.frames is FrameSelection.ALL,
                device=parameters.device.value,
                tta=parameters.testTimeAugmentation,
                progressCallback=self.onProgress,
                completedCallback=self.onCompleted,
            )
            self.ui.progressBar.setRange(0, 0)  # busy until the bundle reports the number of frames
        self.updateButtons()

    def updateTrainingSetButton(self) -> None:
        parameters = self._parameterNode
        volume = parameters.inputVolume if parameters else None
        # The DICOM patient (or study) is recorded when there is one; else the user types it.
        dicomGroup = self.logic.dicomPatientOrStudyId(volume) if volume else ""
        self.ui.splitGroupLineEdit.enabled = not dicomGroup
        if dicomGroup:
            self.ui.splitGroupLineEdit.text = ""
        self.ui.splitGroupLineEdit.placeholderText = (
            _("{id} (from DICOM)").format(id=dicomGroup) if dicomGroup else _("Patient or study ID")
        )
        missing = []
        if not volume or not parameters.outputSegmentation:
            missing.append(_("Select an input image and its segmentation."))
        if not self.ui.trainingSetPathLineEdit.currentPath.strip():
            missing.append(_("Choose the training set folder."))
        if not dicomGroup and not self.ui.splitGroupLineEdit.text.strip():
            missing.append(_("Type the patient or study ID of the image."))
        if self._task:
            missing.append(_("Wait for the segmentation to finish."))
        self.ui.addToTrainingSetButton.enabled = not missing
        self.ui.addToTrainingSetButton.toolTip = "\n".join(missing) or _(
            "Add the image and its corrected lesion segments to the training set folder"
        )

    def onAddToTrainingSetButton(self) -> None:
        parameters = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to add the image to the training set."), waitCursor=True):
            case = self.logic.addToTrainingSet(
                parameters.inputVolume,
                parameters.outputSegmentation,
                self.ui.trainingSetPathLineEdit.currentPath,
                self.ui.splitGroupLineEdit.text,
            )
            self.addLog(
                _("Added {id} ({pathology}, patient or study {group}) to {folder}.").format(
                    id=case.id, pathology=case.pathology, group=case.split_group,
                    folder=self.ui.trainingSetPathLineEdit.currentPath,
                )  # fmt: skip
            )

    def installDependenciesIfNeeded(self) -> bool:
        """Ask the user, then install torch and the other Python packages the bundle needs; False if declined."""
        missing = self.logic.missingDependencies()
        if not missing:
            return True
        message = _(
            "BUSI Segmentation needs these Python packages, which are not installed or too old:\n{packages}\n\n"
            "Install them now? Downloading may take several minutes."
        ).format(packages="\n".join(str(requirement) for requirement in missing))
        if any(requirement.installed for requirement in missing):
            message += "\n\n" + _("Restart 3D Slicer after the installation: packages it has loaded are upgraded.")
        if not slicer.util.confirmOkCancelDisplay(message):
            return False
        self.addLog(_("Installing {packages}...").format(packages=", ".join(r.requirement for r in missing)))
        self._installing = True
        self.updateButtons()
        try:
            self.logic.installDependencies()
        finally:
            self._installing = False
            self.updateButtons()
        return True

    def onProgress(self, progress: Progress) -> None:
        if progress.total:
            self.ui.progressBar.setRange(0, progress.total)
            self.ui.progressBar.value = progress.done
        if progress.line.strip():
            self.addLog(progress.line)

    def onDeviceChanged(self) -> None:
        # The engine holds the networks in the memory of the device chosen before (GPU memory): free it now, unless a
        # segmentation still runs there; the next segmentation starts an engine on the new device.
        if not self._task:
            stop_engine()

    def onFollowFrameToggled(self, checked: bool) -> None:
        self._segmentedFrame = None  # the frame shown now is segmented at once
        if checked and not self._following:
            self._following = True
            # later: the parameter node takes the new value in another slot of this signal
            qt.QTimer.singleShot(0, self.followShownFrame)

    def followShownFrame(self) -> None:
        """While "Follow the shown frame" is on, segment the frame shown whenever it changes and nothing else runs;
        with the engine warm, this takes a fraction of a second on a CPU."""
        parameters = self._parameterNode
        if not (self._following and parameters and parameters.followFrame):
            self._following = False
            return
        qt.QTimer.singleShot(FOLLOW_INTERVAL_MS, self.followShownFrame)
        if not parameters.inputVolume or parameters.frames is not FrameSelection.CURRENT or self._task:
            return
        shown = self.logic.shownFrame(parameters.inputVolume)
        if shown != self._segmentedFrame:
            self._segmentedFrame = shown
            self.onSegmentButton()

    def onCompleted(self, task) -> None:
        self._task = None
        self.ui.progressBar.setRange(0, 1)
        self.ui.progressBar.value = 1 if task.succeeded else 0
        self.updateButtons()
        if task.cancelled:
            self.addLog(_("Segmentation cancelled."))
        elif task.error:
            self.addLog(task.error)
            slicer.util.errorDisplay(_("Segmentation failed."), detailedText=task.error)
        else:
            self.showLesions(task.lesions)
            if not task.pixelSizeKnown:
                self.addLog(_("Areas and diameters are in pixels: the image file does not give the pixel size."))
            self.addLog(_("Segmentation completed in {seconds:.1f} s.").format(seconds=task.elapsedSec))

    def showLesions(self, lesions: list) -> None:
        table = self.ui.resultsTable
        table.setRowCount(len(lesions))
        for row, lesion in enumerate(lesions):
            for column, text in enumerate(lesion_table_row(lesion)):
                table.setItem(row, column, qt.QTableWidgetItem(text))

    def addLog(self, text: str) -> None:
        self.ui.logTextEdit.appendPlainText(text)


#
# BUSISegmentationLogic
#


@dataclass
class SegmentationTask:
    """One segmentation started by :meth:`BUSISegmentationLogic.process`.

    frameIndices: index of the input frame (slice, or sequence item) of each segmented frame.
    sequenceBrowser: set when the frames are the items of a sequence; the result is then a segmentation sequence.
    pixelSizeKnown: whether the input's spacing is its pixel size; lesion areas are in pixels when it is not.
    lesions: lesion table of the bundle, with ``frame`` given as input frame index.
    error: why the segmentation failed, empty when it did not.
    cancelEvent: set by :meth:`BUSISegmentationLogic.cancel`, also when the scene is closed.
    """

    inputVolume: object
    outputSegmentation: object
    frameIndices: list
    sequenceBrowser: object = None
    pixelSizeKnown: bool = True
    progressCallback: Optional[Callable] = None
    completedCallback: Optional[Callable] = None
    run: Optional[BundleRun] = None
    lesions: list = field(default_factory=list)
    error: str = ""
    cancelled: bool = False
    cancelEvent: threading.Event = field(default_factory=threading.Event)
    sceneCloseObserver: Optional[int] = None
    finished: bool = False
    startTime: float = field(default_factory=time.time)
    endTime: float = 0.0

    @property
    def succeeded(self) -> bool:
        return self.finished and not self.error and not self.cancelled

    @property
    def elapsedSec(self) -> float:
        return (self.endTime or time.time()) - self.startTime


class BUSISegmentationLogic(ScriptedLoadableModuleLogic):
    """Converts between MRML nodes and arrays and runs the bundle in a background process.
    Uses ScriptedLoadableModuleLogic base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    POLL_INTERVAL_MS = 200
    # Slicer world coordinates are RAS; the files exchanged with the bundle are LPS.
    RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._labelDescriptions: Optional[list[LabelDescription]] = None

    @property
    def labelDescriptions(self) -> list[LabelDescription]:
        """The lesion segments, from the label vocabulary of the bundle. Read on first use, not when the Logic is
        made: the Logic must exist to report that the bundle is missing (see :meth:`bundleProblem`)."""
        if self._labelDescriptions is None:
            self._labelDescriptions = load_label_descriptions()
        return self._labelDescriptions

    def getParameterNode(self):
        return BUSISegmentationParameterNode(super().getParameterNode())

    @staticmethod
    def loadTerminology() -> None:
        """Load the segment terminology (category, types and colours) into the Terminologies module, unless it is
        loaded already."""
        terminologies = slicer.modules.terminologies.logic()
        loaded = vtk.vtkStringArray()
        terminologies.GetLoadedTerminologyNames(loaded)
        if TERMINOLOGY_CONTEXT not in [loaded.GetValue(index) for index in range(loaded.GetNumberOfValues())]:
            terminologies.LoadTerminologyFromFile(str(TERMINOLOGY_FILE))

    @staticmethod
    def bundleProblem() -> str:
        """Why the bundle cannot be used (too old a Slicer, bundle not found), or an empty string."""
        problem = python_problem()
        if problem:
            return problem
        try:
            locate_bundle()
        except (FileNotFoundError, ValueError) as error:
            return str(error)
        return ""

    @staticmethod
    def pythonExecutable() -> str:
        path = shutil.which("PythonSlicer")
        if not path:
            raise RuntimeError("PythonSlicer executable not found; it is needed to run the segmentation")
        return path

    # Dependencies

    @staticmethod
    def missingDependencies() -> list:
        """Requirements (:class:`BUSISegmentationLib.UnmetRequirement`) still to install or upgrade, torch first."""
        torch = unmet_torch()
        return ([torch] if torch else []) + unmet_requirements()

    @staticmethod
    def installDependencies() -> None:
        """Install torch (through the PyTorch extension when present) and the packages the bundle needs, in the
        versions it needs. Does not ask for confirmation: callers ask the user first.

        Raises:
            RuntimeError: the Python of this Slicer is too old, or the installed torch is older than the bundle needs
                (it is not replaced here: the PyTorch extension chose its build for this computer).
        """
        problem = python_problem()
        if problem:
            raise RuntimeError(problem)
        torch = unmet_torch()
        if torch and torch.installed:
            raise RuntimeError(
                f"PyTorch {torch.installed} is installed and BUSI Segmentation needs {TORCH_REQUIREMENT}: install a "
                f"newer PyTorch in the PyTorch Utils module (version requirement {TORCH_VERSION}), then restart Slicer"
            )
        if torch:
            try:
                import PyTorchUtils
            except ModuleNotFoundError:
                slicer.util.pip_install(TORCH_REQUIREMENT)
            else:
                installed = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                    askConfirmation=False, torchVersionRequirement=TORCH_VERSION
                )
                if installed is None:
                    raise RuntimeError("PyTorch could not be installed; install it in the PyTorch Utils module")
        requirements = [unmet.requirement for unmet in unmet_requirements()]
        if requirements:
            # torch is installed first and pinned, so that no package replaces it with a default build from PyPI.
            with tempfile.TemporaryDirectory(prefix="BUSISegmentation-") as folder:
                slicer.util.pip_install(pip_install_arguments(requirements, Path(folder) / "constraints.txt"))

    # MRML <-> arrays

    @staticmethod
    def currentFrameIndex(volumeNode) -> int:
        """Index of the slice (frame) that the Red slice view shows."""
        sliceNode = slicer.mrmlScene.GetNodeByID("vtkMRMLSliceNodeRed")
        frameCount = volumeNode.GetImageData().GetDimensions()[2]
        if not sliceNode:
            return 0
        sliceCenterRas = [sliceNode.GetSliceToRAS().GetElement(row, 3) for row in range(3)] + [1.0]
        rasToIjk = vtk.vtkMatrix4x4()
        volumeNode.GetRASToIJKMatrix(rasToIjk)
        frame = int(round(rasToIjk.MultiplyPoint(sliceCenterRas)[2]))
        return min(max(frame, 0), frameCount - 1)

    @staticmethod
    def dicomValues(volumeNode, tags: tuple) -> Optional[list]:
        """Values of DICOM tags ("gggg,eeee") in the first instance of a volume loaded from DICOM, else None."""
        instanceUids = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split()
        if not instanceUids or not slicer.dicomDatabase:
            return None
        instanceFile = slicer.dicomDatabase.fileForInstance(instanceUids[0])
        return [slicer.dicomDatabase.fileValue(instanceFile, tag) for tag in tags]

    def pixelSizeKnown(self, volumeNode) -> bool:
        """Whether the volume's spacing is its pixel size, not the 1 mm Slicer gives pictures (PNG, JPEG...) and
        DICOM images without Pixel Spacing."""
        if volumeNode.GetAttribute(PIXEL_SIZE_KNOWN_ATTRIBUTE) == "false":
            return False
        storageNode = volumeNode.GetStorageNode()
        fileName = storageNode.GetFileName() if storageNode else None
        pixelSpacing = self.dicomValues(volumeNode, ("0028,0030", "0018,1164"))
        dicomPixelSpacing = None if pixelSpacing is None else " ".join(value for value in pixelSpacing if value)
        return pixel_size_is_known(volumeNode.GetSpacing(), fileName, dicomPixelSpacing)

    def dicomPatientOrStudyId(self, volumeNode) -> str:
        """Patient ID, else Study Instance UID, of a volume loaded from DICOM; empty when it has neither."""
        values = self.dicomValues(volumeNode, ("0010,0020", "0020,000D")) or []
        return next((value.strip() for value in values if value.strip()), "")

    def shownFrame(self, volumeNode) -> tuple:
        """Which frame of a volume is shown: its sequence item (for a cine loaded as a sequence) and its slice in the
        Red view."""
        browser = slicer.modules.sequences.logic().GetFirstBrowserNodeForProxyNode(volumeNode)
        item = browser.GetSelectedItemNumber() if browser else None
        return volumeNode.GetID(), item, self.currentFrameIndex(volumeNode)

    def volumeGeometryLps(self, volumeNode):
        """(spacing, origin, direction) of a volume in the file axis order (column, row, frame) and in LPS."""
        ijkToRas = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(ijkToRas)
        ijkToLps = self.RAS_TO_LPS @ slicer.util.arrayFromVTKMatrix(ijkToRas)[:3]
        spacing = np.linalg.norm(ijkToLps[:, :3], axis=0)
        return spacing, ijkToLps[:, 3], ijkToLps[:, :3] / spacing

    def framesFromVolume(self, volumeNode, allFrames: bool):
        """(array, frameIndices, sequenceBrowser) of the frames to segment.

        Frames are the slices of the volume or, when the volume is the proxy of a sequence and all frames are
        requested, the items of the sequence.
        """
        browser = slicer.modules.sequences.logic().GetFirstBrowserNodeForProxyNode(volumeNode)
        if browser and allFrames:
            sequence = browser.GetSequenceNode(volumeNode)
            itemCount = sequence.GetNumberOfDataNodes()
            items = [slicer.util.arrayFromVolume(sequence.GetNthDataNode(i)) for i in range(itemCount)]
            if any(item.shape != items[0].shape or item.shape[0] != 1 for item in items):
                raise ValueError(f"Items of sequence {sequence.GetName()} must be single frames of the same size")
            return np.concatenate(items), list(range(len(items))), browser
        array = slicer.util.arrayFromVolume(volumeNode)
        if allFrames or array.shape[0] == 1:
            return array, list(range(array.shape[0])), None
        frame = self.currentFrameIndex(volumeNode)
        return array[frame : frame + 1], [frame], None

    # Processing

    def process(
        self,
        inputVolume,
        outputSegmentation,
        allFrames: bool = True,
        device: str = "auto",
        tta: bool = False,
        waitForCompletion: bool = False,
        progressCallback: Optional[Callable[[Progress], None]] = None,
        completedCallback: Optional[Callable[[SegmentationTask], None]] = None,
    ) -> SegmentationTask:
        """Segment lesions of an ultrasound image into a segmentation node.

        :param inputVolume: scalar or RGB volume; several slices, or a sequence proxy, are frames of a cine loop.
        :param outputSegmentation: receives the "Benign lesion" and "Malignant lesion" segments.
        :param allFrames: segment every frame, or only the one shown in the Red view.
        :param device: "auto", "cpu" or "cuda".
        :param tta: also segment the mirrored image and average.
        :param waitForCompletion: block until done (for scripts and tests); errors are then raised.
            Otherwise the bundle runs in the background and errors are reported in the task.
        :param progressCallback: called for every output line of the bundle.
        :param completedCallback: called with the task when it has finished, failed or been cancelled.

        Closing the scene cancels the segmentation: its nodes are removed, so there is nothing to write into.
        """
        if not inputVolume or not outputSegmentation:
            raise ValueError("Input volume and output segmentation are required")
        array, frameIndices, browser = self.framesFromVolume(inputVolume, allFrames)
        spacing, origin, direction = self.volumeGeometryLps(inputVolume)
        if browser is None and frameIndices[0]:
            origin = origin + direction[:, 2] * spacing[2] * frameIndices[0]
        task = SegmentationTask(
            inputVolume, outputSegmentation, frameIndices, browser, self.pixelSizeKnown(inputVolume),
            progressCallback, completedCallback,
        )  # fmt: skip
        if not task.pixelSizeKnown:
            spacing = None  # the bundle then reports lesion areas in pixels, not in made-up mm²
        config = RunConfig(device, tta, self.pythonExecutable(), env=slicer.util.startupEnvironment())
        logging.info(f"Segmenting {len(frameIndices)} frame(s) of {inputVolume.GetName()} on device {device}")
        task.sceneCloseObserver = slicer.mrmlScene.AddObserver(
            slicer.mrmlScene.StartCloseEvent, lambda caller, event: self.cancel(task)
        )
        if waitForCompletion:
            try:
                output = segment_array(
                    array, spacing, origin, direction, device, tta,
                    progress_callback=lambda progress: self._reportProgress(task, progress, processEvents=True),
                    cancel_event=task.cancelEvent, python_executable=config.python_executable, env=config.env,
                )  # fmt: skip
                self.importResult(task, output)
            except SegmentationCancelled:
                task.cancelled = True
                raise
            except Exception as error:
                task.error = str(error)
                raise
            finally:
                self._finish(task)
            return task
        task.run = BundleRun(array, spacing, origin, direction, config)
        try:
            task.run.start()
        except Exception:
            self._stopObservingScene(task)
            raise
        qt.QTimer.singleShot(self.POLL_INTERVAL_MS, lambda: self._poll(task))
        return task

    def cancel(self, task: SegmentationTask) -> None:
        """Stop a running segmentation; its completed callback is called when it has stopped."""
        task.cancelEvent.set()
        if task.run:
            task.run.cancel()

    def _reportProgress(self, task: SegmentationTask, progress: Progress, processEvents: bool = False) -> None:
        logging.debug(progress.line)
        if task.progressCallback:
            task.progressCallback(progress)
        if processEvents:
            slicer.app.processEvents()

    def _poll(self, task: SegmentationTask) -> None:
        for progress in task.run.poll():
            self._reportProgress(task, progress)
        if task.run.is_running:  # it ends with the poll that returns its last line
            qt.QTimer.singleShot(self.POLL_INTERVAL_MS, lambda: self._poll(task))
            return
        try:
            self.importResult(task, task.run.result())
        except SegmentationCancelled:
            task.cancelled = True
        except Exception as error:
            # Runs from a timer: an exception raised here would not reach any caller, so it goes into the task.
            logging.exception("Segmentation failed")
            task.error = str(error)
        finally:
            task.run.cleanup()
            self._finish(task)

    @staticmethod
    def _stopObservingScene(task: SegmentationTask) -> None:
        if task.sceneCloseObserver is not None:
            slicer.mrmlScene.RemoveObserver(task.sceneCloseObserver)
            task.sceneCloseObserver = None

    def _finish(self, task: SegmentationTask) -> None:
        self._stopObservingScene(task)
        task.finished = True
        task.endTime = time.time()
        logging.info(f"Segmentation finished in {task.elapsedSec:.1f} s")
        if task.completedCallback:
            task.completedCallback(task)

    def importResult(self, task: SegmentationTask, output: SegmentationOutput) -> None:
        """Put the label maps into the output segmentation (or segmentation sequence), the lesions into the task and
        their diameters on the image.

        :raises SegmentationCancelled: the task was cancelled, or its input or output node is no longer in the scene.
        """
        inputVolume, outputSegmentation = task.inputVolume, task.outputSegmentation
        if task.cancelEvent.is_set():
            raise SegmentationCancelled("segmentation was cancelled")
        for node in (inputVolume, outputSegmentation):
            if not slicer.mrmlScene.IsNodePresent(node):
                raise SegmentationCancelled(f"{node.GetName()} was removed from the scene; the result is not imported")
        self.loadTerminology()
        if task.sequenceBrowser:
            self._importSequence(task, output.labels)
        else:
            labels = np.zeros(slicer.util.arrayFromVolume(inputVolume).shape[:3], dtype=np.uint8)
            labels[task.frameIndices] = output.labels
            self.updateSegments(outputSegmentation, labels, inputVolume)
        # Nodes made with AddNewNodeByClass, sequence proxies too, are not shown until they have display nodes.
        outputSegmentation.CreateDefaultDisplayNodes()
        # Reference geometry and the place in the subject hierarchy are needed for DICOM Segmentation export.
        referenceRole = outputSegmentation.GetReferenceImageGeometryReferenceRole()
        outputSegmentation.SetNodeReferenceID(referenceRole, inputVolume.GetID())
        outputSegmentation.SetReferenceImageGeometryParameterFromVolumeNode(inputVolume)
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        studyItem = shNode.GetItemParent(shNode.GetItemByDataNode(inputVolume))
        shNode.SetItemParent(shNode.GetItemByDataNode(outputSegmentation), studyItem)
        task.lesions = [dict(lesion, frame=task.frameIndices[lesion["frame"]]) for lesion in output.lesions]
        self.placeDiameterLines(task)

    def diameterLines(self, segmentationNode) -> list:
        """The diameter line markups placed for the lesions of a segmentation node."""
        segmentationId = segmentationNode.GetID()
        return [
            line for line in slicer.util.getNodesByClass("vtkMRMLMarkupsLineNode")
            if line.GetNodeReferenceID(DIAMETER_SEGMENTATION_ROLE) == segmentationId
        ]  # fmt: skip

    def placeDiameterLines(self, task: SegmentationTask) -> None:
        """Place the longest and perpendicular diameters of each lesion of a task as line markups on its image,
        named after the lesion, in place of those of the segmentation's earlier run."""
        for line in self.diameterLines(task.outputSegmentation):
            slicer.mrmlScene.RemoveNode(line)
        ijkToRasMatrix = vtk.vtkMatrix4x4()
        task.inputVolume.GetIJKToRASMatrix(ijkToRasMatrix)
        ijkToRas = slicer.util.arrayFromVTKMatrix(ijkToRasMatrix)
        for lesion in task.lesions:
            # The items of a sequence are single frames, each shown in the one slice of the proxy volume.
            frame = 0 if task.sequenceBrowser else lesion["frame"]
            for diameter in diameter_lines(lesion):
                line = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsLineNode", diameter.name)
                line.CreateDefaultDisplayNodes()
                line.SetAndObserveTransformNodeID(task.inputVolume.GetTransformNodeID())
                for position in pixels_to_ras(diameter.ends, frame, ijkToRas):
                    line.AddControlPoint(*position)
                # Slicer gives lengths in mm: without a pixel size they would be made up (the table gives pixels).
                line.GetMeasurement("length").SetEnabled(task.pixelSizeKnown)
                line.SetNodeReferenceID(DIAMETER_SEGMENTATION_ROLE, task.outputSegmentation.GetID())

    def updateSegments(self, segmentationNode, labels: np.ndarray, referenceVolume) -> None:
        """Set the lesion segments of a segmentation node from a (frames, rows, columns) label map."""
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolume)
        segmentation = segmentationNode.GetSegmentation()
        for description in self.labelDescriptions:
            segmentId = segmentation.GetSegmentIdBySegmentName(description.name)
            if not segmentId:
                segmentId = segmentation.AddEmptySegment("", description.name, description.color)
            segment = segmentation.GetSegment(segmentId)
            segment.SetColor(description.color)
            segment.SetTag(segment.GetTerminologyEntryTagName(), description.terminology_entry)
            mask = (labels == description.value).astype(np.uint8)
            if mask.any():
                slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentationNode, segmentId, referenceVolume)
            else:
                slicer.vtkSlicerSegmentationsModuleLogic.ClearSegment(segmentationNode, segmentId)

    def _importSequence(self, task: SegmentationTask, labels: np.ndarray) -> None:
        """Record one segmentation per sequence item, synchronized with the input sequence."""
        browser, outputSegmentation = task.sequenceBrowser, task.outputSegmentation
        inputSequence = browser.GetSequenceNode(task.inputVolume)
        outputSequence = browser.GetSequenceNode(outputSegmentation)
        newSequence = outputSequence is None
        if newSequence:
            outputSequence = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLSequenceNode", f"{outputSegmentation.GetName()} sequence"
            )
            outputSequence.SetIndexName(inputSequence.GetIndexName())
            outputSequence.SetIndexUnit(inputSequence.GetIndexUnit())
            outputSequence.SetIndexType(inputSequence.GetIndexType())
        # A node of the scene with no display node: removing it leaves nothing behind.
        frameSegmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        try:
            for itemIndex, frameLabels in zip(task.frameIndices, labels):
                self.updateSegments(frameSegmentation, frameLabels[np.newaxis], task.inputVolume)
                outputSequence.SetDataNodeAtValue(frameSegmentation, inputSequence.GetNthIndexValue(itemIndex))
        finally:
            slicer.mrmlScene.RemoveNode(frameSegmentation)
        if newSequence:
            # Unlike the browser's AddProxyNode, the Sequences logic also gives the proxy display and storage nodes.
            if not slicer.modules.sequences.logic().AddSynchronizedNode(outputSequence, outputSegmentation, browser):
                raise RuntimeError(f"{outputSequence.GetName()} cannot be synchronized with {browser.GetName()}")
            browser.SetSaveChanges(outputSequence, True)
        slicer.modules.sequences.logic().UpdateProxyNodesFromSequences(browser)

    # Training set

    def labelMapFromSegments(self, segmentationNode, referenceVolume) -> np.ndarray:
        """(frames, rows, columns) label map of the "Benign lesion" and "Malignant lesion" segments in the geometry
        of a volume; where they overlap, the higher label (malignant) wins.

        :raises ValueError: the segmentation has neither segment.
        """
        labels = np.zeros(slicer.util.arrayFromVolume(referenceVolume).shape[:3], dtype=np.uint8)
        segmentation = segmentationNode.GetSegmentation()
        found = False
        for description in sorted(self.labelDescriptions, key=lambda d: d.value):
            segmentId = segmentation.GetSegmentIdBySegmentName(description.name)
            if not segmentId:
                continue
            found = True
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, referenceVolume)
            if mask is not None:
                labels[mask > 0] = description.value
        if not found:
            names = " or ".join(f'"{d.name}"' for d in self.labelDescriptions)
            raise ValueError(f"{segmentationNode.GetName()} has no {names} segment")
        return labels

    def addToTrainingSet(self, volumeNode, segmentationNode, folder, splitGroup: str = "") -> TrainingCase:
        """Add the frame of a volume shown in the Red view, with its lesion segments, to a training set folder.

        :param splitGroup: patient or study id, used when the volume does not come from DICOM with a Patient ID or
            Study Instance UID.
        :raises ValueError: no segment to take the labels from, or no patient or study id.
        """
        labels = self.labelMapFromSegments(segmentationNode, volumeNode)
        frame = self.currentFrameIndex(volumeNode) if labels.shape[0] > 1 else 0
        image = slicer.util.arrayFromVolume(volumeNode)[frame]
        group = self.dicomPatientOrStudyId(volumeNode) or splitGroup
        name = volumeNode.GetName() if labels.shape[0] == 1 else f"{volumeNode.GetName()} frame {frame}"
        case = add_case(Path(folder), image, labels[frame], group, name)
        logging.info(f"Added {case.image.name} ({case.pathology}, group {case.split_group}) to {folder}")
        return case


#
# BUSISegmentationTest
#


class BUSISegmentationTest(ScriptedLoadableModuleTest):
    """Loads a sample image shipped with the bundle and checks what needs no PyTorch. With the environment variable
    BUSISEGMENTATION_TEST_LOGIC=1 (CMake option BUSISegmentation_ENABLE_LOGIC_TEST) it also installs the Python
    dependencies if needed, segments the sample, and cancels a segmentation by closing the scene.
    Uses ScriptedLoadableModuleTest base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegmentSampleImage()
        self.setUp()
        self.test_SceneCloseCancelsTheSegmentation()
        self.setUp()
        self.test_CineResultIsShown()
        self.setUp()
        self.test_AddToTrainingSet()

    def loadLesionSample(self):
        registerSampleData()
        sources = slicer.modules.sampleDataSources[SAMPLE_CATEGORY]
        lesionSources = [source for source in sources if not source.sampleName.startswith("normal")]
        self.assertTrue(lesionSources, "the bundle has no sample image with a lesion")
        return lesionSources[0].customDownloader(lesionSources[0])  # what the Sample Data button does

    def logicTestEnabled(self, testName: str) -> bool:
        # PyTorch and MONAI are gigabytes and a CPU segmentation takes minutes: too much for the build machines.
        if os.environ.get(TEST_LOGIC_ENV) == "1":
            return True
        logging.warning(f"{testName} logic testing was skipped; set {TEST_LOGIC_ENV}=1 to run it")
        return False

    def installDependencies(self, logic) -> None:
        if logic.missingDependencies():
            self.delayDisplay(f"Installing {', '.join(map(str, logic.missingDependencies()))}")
            logic.installDependencies()

    def test_SegmentSampleImage(self):
        self.delayDisplay("Loading a sample image shipped with the bundle")
        inputVolume = self.loadLesionSample()
        logic = BUSISegmentationLogic()
        self.assertEqual(logic.bundleProblem(), "")
        self.assertEqual(inputVolume.GetImageData().GetDimensions()[2], 1, "one picture, not a series")
        self.assertFalse(logic.pixelSizeKnown(inputVolume), "a PNG has no pixel size; Slicer gives it 1 mm")
        if not self.logicTestEnabled("test_SegmentSampleImage"):
            self.delayDisplay("Test passed")
            return
        self.installDependencies(logic)

        self.delayDisplay("Segmenting")
        outputSegmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        progress = []
        task = logic.process(inputVolume, outputSegmentation, waitForCompletion=True, progressCallback=progress.append)

        self.assertTrue(task.succeeded)
        self.assertTrue(any(update.total for update in progress))
        segmentation = outputSegmentation.GetSegmentation()
        segmentIds = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
        segmentNames = [segmentation.GetSegment(segmentId).GetName() for segmentId in segmentIds]
        self.assertEqual(segmentNames, ["Benign lesion", "Malignant lesion"])
        lesionPixels = 0
        for segmentId in segmentIds:
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(outputSegmentation, segmentId, inputVolume)
            lesionPixels += 0 if mask is None else int(np.count_nonzero(mask))
            tag = vtk.reference("")
            segmentation.GetSegment(segmentId).GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), tag)
            self.assertIn("SCT^76752008^Breast", tag.get())
        self.assertGreater(lesionPixels, 0)
        self.assertTrue(task.lesions)
        # areas of a picture are in pixels, never in made-up mm²
        self.assertTrue(all(lesion["area_mm2"] is None and lesion["area_px"] > 0 for lesion in task.lesions))
        lines = logic.diameterLines(outputSegmentation)
        self.assertEqual(len(lines), 2 * len(task.lesions), "a longest and a perpendicular diameter per lesion")
        self.assertTrue(all(line.GetNumberOfControlPoints() == 2 for line in lines))
        logic.placeDiameterLines(task)  # as the next run does: the lines are replaced, not added
        self.assertEqual(len(logic.diameterLines(outputSegmentation)), len(lines))
        self.delayDisplay("Test passed")

    def test_SceneCloseCancelsTheSegmentation(self):
        if not self.logicTestEnabled("test_SceneCloseCancelsTheSegmentation"):
            return
        inputVolume = self.loadLesionSample()
        logic = BUSISegmentationLogic()
        self.installDependencies(logic)
        outputSegmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        completed = []
        task = logic.process(inputVolume, outputSegmentation, completedCallback=completed.append)
        slicer.mrmlScene.Clear()
        deadline = time.time() + 60
        while not completed and time.time() < deadline:
            slicer.app.processEvents()
            time.sleep(0.05)
        self.assertEqual(completed, [task])
        self.assertTrue(task.cancelled)
        self.assertEqual(outputSegmentation.GetSegmentation().GetNumberOfSegments(), 0)
        self.delayDisplay("Test passed")

    def test_CineResultIsShown(self):
        """A result imported into a sequence: the output proxy is shown, no other segmentation display is left."""
        inputVolume = self.loadLesionSample()
        sequence = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceNode", "cine")
        for index in range(2):
            sequence.SetDataNodeAtValue(inputVolume, str(index))
        browser = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "cine browser")
        sequencesLogic = slicer.modules.sequences.logic()
        sequencesLogic.AddSynchronizedNode(sequence, None, browser)
        sequencesLogic.UpdateProxyNodesFromSequences(browser)
        proxy = browser.GetProxyNode(sequence)
        outputSegmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        logic = BUSISegmentationLogic()
        _, frameIndices, foundBrowser = logic.framesFromVolume(proxy, allFrames=True)
        self.assertEqual((frameIndices, foundBrowser), ([0, 1], browser))
        labels = np.zeros((2, *slicer.util.arrayFromVolume(proxy).shape[1:3]), dtype=np.uint8)
        labels[1, 10:20, 10:20] = 2
        task = SegmentationTask(proxy, outputSegmentation, frameIndices, browser)
        logic.importResult(task, SegmentationOutput(labels))
        self.assertIsNotNone(outputSegmentation.GetDisplayNode())
        displayNodes = slicer.util.getNodesByClass("vtkMRMLSegmentationDisplayNode")
        self.assertEqual(displayNodes, [outputSegmentation.GetDisplayNode()])
        self.assertEqual(browser.GetSequenceNode(outputSegmentation).GetNumberOfDataNodes(), 2)
        self.delayDisplay("Test passed")

    def test_AddToTrainingSet(self):
        inputVolume = self.loadLesionSample()
        logic = BUSISegmentationLogic()
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        labels = np.zeros(slicer.util.arrayFromVolume(inputVolume).shape[:3], dtype=np.uint8)
        labels[0, 10:20, 10:30] = 1
        logic.updateSegments(segmentation, labels, inputVolume)
        with tempfile.TemporaryDirectory() as folder:
            case = logic.addToTrainingSet(inputVolume, segmentation, folder, "patient 1")
            self.assertEqual((case.pathology, case.split_group), ("benign", "patient 1"))
            mask = slicer.util.loadVolume(str(case.mask), {"singleFile": True})
            self.assertEqual(np.count_nonzero(slicer.util.arrayFromVolume(mask) == 1), 200)
            self.assertIn(f"{case.id},benign,patient 1", (Path(folder) / "labels.csv").read_text())
        self.delayDisplay("Test passed")
