import importlib
import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from enum import Enum
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
    BundleRun,
    Progress,
    RunConfig,
    SegmentationCancelled,
    SegmentationOutput,
    load_label_descriptions,
    locate_bundle,
    missing_requirements,
    segment_array,
    torch_missing,
)
from BUSISegmentationLib.dependencies import TORCH_REQUIREMENT, TORCH_VERSION
from BUSISegmentationLib.labels import TERMINOLOGY_FILE

# Lib submodules in dependency order, for reloading during development.
LIB_MODULES = ("progress", "process", "bundle", "labels", "volume_io", "dependencies", "inference")


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
        self.parent.dependencies = []
        self.parent.contributors = ["BUSISegmentation contributors"]
        self.parent.helpText = _("""
Segments benign and malignant lesions in breast ultrasound images (PNG/JPEG pictures, single-frame DICOM or cine
loops) with a MONAI bundle trained on the BUSI dataset. Select the image and click Segment.
For research only: not a medical device.
""")
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
            category="BUSI Segmentation",
            sampleName=path.stem,
            uris=path.as_uri(),
            fileNames=path.name,
            nodeNames=path.stem,
            thumbnailFileName=str(path),
        )


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
    device - Where the network runs.
    testTimeAugmentation - Also segment the mirrored image and average (twice the computation).
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    frames: FrameSelection = FrameSelection.ALL
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

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/BUSISegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = BUSISegmentationLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self._task:
            # The widget is going away: the task must not call back into it.
            self._task.progressCallback = self._task.completedCallback = None
            self.logic.cancel(self._task)
        self.removeObservers()

    def onReload(self) -> None:
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
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateSegmentButton)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

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
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateSegmentButton)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets with a SlicerParameterName property in the .ui file are kept in sync with the node.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateSegmentButton)
        self.updateSegmentButton()

    def updateSegmentButton(self, caller=None, event=None) -> None:
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
        self.updateSegmentButton()

    def installDependenciesIfNeeded(self) -> bool:
        """Ask the user, then install torch and the other Python packages the bundle needs; False if declined."""
        missing = self.logic.missingDependencies()
        if not missing:
            return True
        message = _(
            "BUSI Segmentation needs these Python packages, which are not installed yet:\n{packages}\n\n"
            "Install them now? Downloading may take several minutes."
        ).format(packages=", ".join(missing))
        if not slicer.util.confirmOkCancelDisplay(message):
            return False
        self.addLog(_("Installing {packages}...").format(packages=", ".join(missing)))
        self.logic.installDependencies()
        return True

    def onProgress(self, progress: Progress) -> None:
        if progress.total:
            self.ui.progressBar.setRange(0, progress.total)
            self.ui.progressBar.value = progress.done
        if progress.line.strip():
            self.addLog(progress.line)

    def onCompleted(self, task) -> None:
        self._task = None
        self.ui.progressBar.setRange(0, 1)
        self.ui.progressBar.value = 1 if task.succeeded else 0
        self.updateSegmentButton()
        if task.cancelled:
            self.addLog(_("Segmentation cancelled."))
        elif task.error:
            self.addLog(task.error)
            slicer.util.errorDisplay(_("Segmentation failed."), detailedText=task.error)
        else:
            self.showLesions(task.lesions)
            self.addLog(_("Segmentation completed in {seconds:.1f} s.").format(seconds=task.elapsedSec))

    def showLesions(self, lesions: list) -> None:
        table = self.ui.resultsTable
        table.setRowCount(len(lesions))
        for row, lesion in enumerate(lesions):
            area = lesion.get("area_mm2")
            cells = [
                str(lesion["frame"]),
                lesion["class_name"],
                f"{lesion['confidence']:.2f}",
                f"{area:.1f}" if area is not None else _("unknown"),
            ]
            for column, text in enumerate(cells):
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
    lesions: lesion table of the bundle, with ``frame`` given as input frame index.
    error: why the segmentation failed, empty when it did not.
    """

    inputVolume: object
    outputSegmentation: object
    frameIndices: list
    sequenceBrowser: object = None
    progressCallback: Optional[Callable] = None
    completedCallback: Optional[Callable] = None
    run: Optional[BundleRun] = None
    lesions: list = field(default_factory=list)
    error: str = ""
    cancelled: bool = False
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
        self.labelDescriptions = load_label_descriptions()

    def getParameterNode(self):
        return BUSISegmentationParameterNode(super().getParameterNode())

    @staticmethod
    def loadTerminology() -> None:
        """Load the segment terminology (category, types and colours) into the Terminologies module."""
        slicer.modules.terminologies.logic().LoadTerminologyFromFile(str(TERMINOLOGY_FILE))

    @staticmethod
    def bundleProblem() -> str:
        """Why the bundle cannot be used, or an empty string."""
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
        """pip requirements still to install, torch included."""
        return ([TORCH_REQUIREMENT] if torch_missing() else []) + missing_requirements()

    @staticmethod
    def installDependencies() -> None:
        """Install torch (through the PyTorch extension when present) and the packages the bundle needs.
        Does not ask for confirmation: callers ask the user first."""
        if torch_missing():
            try:
                import PyTorchUtils
            except ModuleNotFoundError:
                slicer.util.pip_install(TORCH_REQUIREMENT)
            else:
                torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                    askConfirmation=False, torchVersionRequirement=TORCH_VERSION
                )
                if torch is None:
                    raise RuntimeError("PyTorch could not be installed; install it in the PyTorch Utils module")
        requirements = missing_requirements()
        if requirements:
            # torch is installed first, so that no package pulls a default torch build from PyPI.
            slicer.util.pip_install(requirements)

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
        """
        if not inputVolume or not outputSegmentation:
            raise ValueError("Input volume and output segmentation are required")
        array, frameIndices, browser = self.framesFromVolume(inputVolume, allFrames)
        spacing, origin, direction = self.volumeGeometryLps(inputVolume)
        if browser is None and frameIndices[0]:
            origin = origin + direction[:, 2] * spacing[2] * frameIndices[0]
        task = SegmentationTask(
            inputVolume, outputSegmentation, frameIndices, browser, progressCallback, completedCallback
        )
        config = RunConfig(device, tta, self.pythonExecutable(), env=slicer.util.startupEnvironment())
        logging.info(f"Segmenting {len(frameIndices)} frame(s) of {inputVolume.GetName()} on device {device}")
        if waitForCompletion:
            output = segment_array(
                array, spacing, origin, direction, device, tta,
                progress_callback=lambda progress: self._reportProgress(task, progress, processEvents=True),
                python_executable=config.python_executable, env=config.env,
            )  # fmt: skip
            self.importResult(task, output)
            self._finish(task)
            return task
        task.run = BundleRun(array, spacing, origin, direction, config)
        task.run.start()
        qt.QTimer.singleShot(self.POLL_INTERVAL_MS, lambda: self._poll(task))
        return task

    def cancel(self, task: SegmentationTask) -> None:
        """Stop a running segmentation; its completed callback is called when it has stopped."""
        if task.run:
            task.run.cancel()

    def _reportProgress(self, task: SegmentationTask, progress: Progress, processEvents: bool = False) -> None:
        logging.debug(progress.line)
        if task.progressCallback:
            task.progressCallback(progress)
        if processEvents:
            slicer.app.processEvents()

    def _poll(self, task: SegmentationTask) -> None:
        running = task.run.is_running  # read before polling, so the last lines are not missed
        for progress in task.run.poll():
            self._reportProgress(task, progress)
        if running:
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

    def _finish(self, task: SegmentationTask) -> None:
        task.finished = True
        task.endTime = time.time()
        logging.info(f"Segmentation finished in {task.elapsedSec:.1f} s")
        if task.completedCallback:
            task.completedCallback(task)

    def importResult(self, task: SegmentationTask, output: SegmentationOutput) -> None:
        """Put the label maps into the output segmentation (or segmentation sequence), the lesions into the task."""
        inputVolume, outputSegmentation = task.inputVolume, task.outputSegmentation
        if task.sequenceBrowser:
            self._importSequence(task, output.labels)
        else:
            labels = np.zeros(slicer.util.arrayFromVolume(inputVolume).shape[:3], dtype=np.uint8)
            labels[task.frameIndices] = output.labels
            self.updateSegments(outputSegmentation, labels, inputVolume)
        # Reference geometry and the place in the subject hierarchy are needed for DICOM Segmentation export.
        referenceRole = outputSegmentation.GetReferenceImageGeometryReferenceRole()
        outputSegmentation.SetNodeReferenceID(referenceRole, inputVolume.GetID())
        outputSegmentation.SetReferenceImageGeometryParameterFromVolumeNode(inputVolume)
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        studyItem = shNode.GetItemParent(shNode.GetItemByDataNode(inputVolume))
        shNode.SetItemParent(shNode.GetItemByDataNode(outputSegmentation), studyItem)
        task.lesions = [dict(lesion, frame=task.frameIndices[lesion["frame"]]) for lesion in output.lesions]

    def updateSegments(self, segmentationNode, labels: np.ndarray, referenceVolume) -> None:
        """Set the lesion segments of a segmentation node from a (frames, rows, columns) label map."""
        self.loadTerminology()
        segmentationNode.CreateDefaultDisplayNodes()
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
        frameSegmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        try:
            for itemIndex, frameLabels in zip(task.frameIndices, labels):
                self.updateSegments(frameSegmentation, frameLabels[np.newaxis], task.inputVolume)
                outputSequence.SetDataNodeAtValue(frameSegmentation, inputSequence.GetNthIndexValue(itemIndex))
        finally:
            slicer.mrmlScene.RemoveNode(frameSegmentation)
        if newSequence:
            browser.AddSynchronizedSequenceNode(outputSequence)
            browser.AddProxyNode(outputSegmentation, outputSequence, False)
            browser.SetSaveChanges(outputSequence, True)
        slicer.modules.sequences.logic().UpdateProxyNodesFromSequences(browser)


#
# BUSISegmentationTest
#


class BUSISegmentationTest(ScriptedLoadableModuleTest):
    """Segments a sample image shipped with the bundle; installs the Python dependencies first if needed.
    Uses ScriptedLoadableModuleTest base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegmentSampleImage()

    def test_SegmentSampleImage(self):
        self.delayDisplay("Loading a sample image shipped with the bundle")
        samples = sorted((locate_bundle() / "sample_data").glob("*.png"))
        lesionSamples = [path for path in samples if not path.name.startswith("normal")]
        self.assertTrue(lesionSamples, "the bundle has no sample image with a lesion")
        inputVolume = slicer.util.loadVolume(str(lesionSamples[0]), {"singleFile": True})

        logic = BUSISegmentationLogic()
        if logic.missingDependencies():
            self.delayDisplay(f"Installing {', '.join(logic.missingDependencies())}")
            logic.installDependencies()

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
        self.delayDisplay("Test passed")
