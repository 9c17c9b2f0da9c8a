"""Stand-ins for the 3D Slicer Python modules (``slicer``, ``qt``, ``vtk``, ``SampleData``) that
``BUSISegmentation.py`` imports, so that its Logic and Widget can run in pytest: a scene with nodes and observers,
volume nodes backed by numpy arrays, segmentations, sequences, Qt timers that the test fires itself, and widgets made
from the module's .ui file that record what the Widget sets and can be clicked.

Where the real Slicer behaves in a way that the module must allow for, the stand-ins do the same (each is taken from
Slicer's source): Sample Data's own loading removes the storage node of what it loads; a picture is read with the
other numbered pictures of its folder as one series unless ``singleFile`` is set; ``AddNewNodeByClass`` and the
browser's ``AddProxyNode`` create no display node, the Sequences logic's ``AddSynchronizedNode`` does; removing a node
leaves its display nodes in the scene; ``pip_install`` processes events for every line pip prints (Slicer 5.10).
Only what the module uses is there; the real classes run inside Slicer (CTest).
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import itertools
import json
import os
import re
import sys
import types
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

MODULE_DIR = Path(__file__).resolve().parents[1] / "BUSISegmentation"


class Matrix4x4:
    """vtkMatrix4x4 backed by a numpy array."""

    def __init__(self, values: np.ndarray | None = None) -> None:
        self.values = np.eye(4) if values is None else np.asarray(values, dtype=np.float64)



class Node:
    """An MRML node: a name, attributes, and the scene it is in."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.attributes: dict[str, str] = {}
        self.scene: Scene | None = None

    def GetName(self) -> str:
        return self.name

    def SetName(self, name: str) -> None:
        self.name = name

    def GetID(self) -> str:
        return f"{type(self).__name__}_{id(self)}"

    def GetAttribute(self, name: str) -> str | None:
        return self.attributes.get(name)

    def SetAttribute(self, name: str, value: str) -> None:
        self.attributes[name] = value


class StorageNode(Node):
    def __init__(self, file_name: str) -> None:
        super().__init__()
        self.file_name = file_name

    def GetFileName(self) -> str:
        return self.file_name

    def SetFileName(self, file_name: str) -> None:
        self.file_name = file_name


class DisplayNode(Node):
    """The display node of a displayable node: without one, a node is not shown in any view."""

    def __init__(self, displayable: Node) -> None:
        super().__init__()
        self.displayable = displayable


class ImageData:
    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def GetDimensions(self) -> tuple[int, int, int]:
        frames, rows, columns = self.array.shape[:3]
        return columns, rows, frames


class VolumeNode(Node):
    """A scalar volume: ``array`` is (frames, rows, columns[, components]) as ``arrayFromVolume`` gives it."""

    def __init__(self, name: str, array: np.ndarray, spacing=(1.0, 1.0, 1.0), file_name: str | None = None) -> None:
        super().__init__(name)
        self.array = np.asarray(array)
        self.spacing = tuple(float(v) for v in spacing)
        self.storage = StorageNode(file_name) if file_name else None
        self.transform_node_id: str | None = None

    def GetSpacing(self) -> tuple[float, float, float]:
        return self.spacing

    def GetStorageNode(self) -> StorageNode | None:
        return self.storage

    def SetAndObserveStorageNodeID(self, node_id: str | None) -> None:
        if node_id is None:
            self.storage = None

    def IsA(self, class_name: str) -> bool:
        return class_name == "vtkMRMLStorableNode"

    def GetImageData(self) -> ImageData:
        return ImageData(self.array)

    def GetTransformNodeID(self) -> str | None:
        return self.transform_node_id

    def GetIJKToRASMatrix(self, matrix: Matrix4x4) -> None:
        # Slicer loads pictures and NRRD files in LPS as RAS with the first two axes flipped.
        matrix.values = np.diag([-self.spacing[0], -self.spacing[1], self.spacing[2], 1.0])

    def GetRASToIJKMatrix(self, matrix: Matrix4x4) -> None:
        self.GetIJKToRASMatrix(matrix)
        matrix.values = np.linalg.inv(matrix.values)


class Segment:
    def __init__(self, name: str, color) -> None:
        self.name, self.color = name, tuple(color)
        self.tags: dict[str, str] = {}
        self.mask: np.ndarray | None = None  # binary labelmap in the geometry of the reference volume

    def GetName(self) -> str:
        return self.name

    def SetColor(self, color) -> None:
        self.color = tuple(color)

    def SetTag(self, name: str, value: str) -> None:
        self.tags[name] = value

    @staticmethod
    def GetTerminologyEntryTagName() -> str:
        return "TerminologyEntry"


class Segmentation:
    """vtkSegmentation: segments by id, in the order they were added."""

    def __init__(self) -> None:
        self.segments: dict[str, Segment] = {}

    def AddEmptySegment(self, segment_id: str = "", name: str = "", color=(0.5, 0.5, 0.5)) -> str:
        segment_id = segment_id or f"Segment_{len(self.segments) + 1}"
        self.segments[segment_id] = Segment(name or segment_id, color)
        return segment_id

    def GetSegmentIdBySegmentName(self, name: str) -> str:
        return next((segment_id for segment_id, s in self.segments.items() if s.name == name), "")

    def GetSegment(self, segment_id: str) -> Segment | None:
        return self.segments.get(segment_id)

    def GetNumberOfSegments(self) -> int:
        return len(self.segments)

    def GetNthSegmentID(self, index: int) -> str:
        return list(self.segments)[index]


class SegmentationNode(Node):
    """Records what the Logic writes into it."""

    def __init__(self, name: str = "Segmentation") -> None:
        super().__init__(name)
        self.labels: np.ndarray | None = None
        self.references: dict[str, str] = {}
        self.segmentation = Segmentation()
        self.display: DisplayNode | None = None
        self.storage: StorageNode | None = None

    def GetSegmentation(self) -> Segmentation:
        return self.segmentation

    def GetDisplayNode(self) -> DisplayNode | None:
        return self.display

    def CreateDefaultDisplayNodes(self) -> None:
        # As vtkMRMLSegmentationNode: a node outside a scene gets none, a node with one keeps it.
        if self.display is None and self.scene is not None:
            self.display = self.scene.AddNode(DisplayNode(self))

    def CreateDefaultSequenceDisplayNodes(self) -> None:
        self.CreateDefaultDisplayNodes()

    def AddDefaultStorageNode(self) -> None:
        self.storage = self.storage or StorageNode("")

    def copy_content(self, other: SegmentationNode) -> None:
        """CopyContent: the segments and labels, not the display or storage nodes."""
        self.segmentation = Segmentation()
        for segment_id, segment in other.segmentation.segments.items():
            copied = self.segmentation.segments[segment_id] = Segment(segment.name, segment.color)
            copied.tags = dict(segment.tags)
            copied.mask = None if segment.mask is None else segment.mask.copy()
        self.labels = None if other.labels is None else other.labels.copy()

    def GetReferenceImageGeometryReferenceRole(self) -> str:
        return "referenceImageGeometryRef"

    def SetNodeReferenceID(self, role: str, node_id: str) -> None:
        self.references[role] = node_id

    def SetReferenceImageGeometryParameterFromVolumeNode(self, volume: VolumeNode) -> None:
        self.references["geometry"] = volume.GetID()


class Measurement:
    """vtkMRMLMeasurement: only whether it is enabled (computed and shown)."""

    def __init__(self) -> None:
        self.enabled = True

    def SetEnabled(self, enabled: bool) -> None:
        self.enabled = bool(enabled)

    def GetEnabled(self) -> bool:
        return self.enabled


class MarkupsLineNode(Node):
    """vtkMRMLMarkupsLineNode (Slicer 5.10): control points in the node's own coordinates, its display node, parent
    transform, node references and its "length" measurement. As in Slicer, a reference to a node that has left the
    scene is gone."""

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self.points: list[tuple[float, float, float]] = []
        self.display: DisplayNode | None = None
        self.transform_node_id: str | None = None
        self.references: dict[str, str] = {}
        self.measurements = {"length": Measurement()}

    def AddControlPoint(self, *args) -> int:
        # AddControlPoint(x, y, z[, label]) or AddControlPoint(point[3][, label])
        position = args[:3] if len(args) >= 3 else args[0]
        self.points.append(tuple(float(value) for value in position))
        return len(self.points) - 1

    def GetNumberOfControlPoints(self) -> int:
        return len(self.points)

    def GetNthControlPointPosition(self, index: int) -> tuple[float, float, float]:
        return self.points[index]

    def CreateDefaultDisplayNodes(self) -> None:
        if self.display is None and self.scene is not None:
            self.display = self.scene.AddNode(DisplayNode(self))

    def GetDisplayNode(self) -> DisplayNode | None:
        return self.display

    def SetAndObserveTransformNodeID(self, node_id: str | None) -> None:
        self.transform_node_id = node_id

    def GetTransformNodeID(self) -> str | None:
        return self.transform_node_id

    def SetNodeReferenceID(self, role: str, node_id: str) -> None:
        self.references[role] = node_id

    def GetNodeReferenceID(self, role: str) -> str | None:
        node_id = self.references.get(role)
        return node_id if self.scene is not None and self.scene.GetNodeByID(node_id) is not None else None

    def GetMeasurement(self, name: str) -> Measurement | None:
        return self.measurements.get(name)


class SequenceNode(Node):
    """vtkMRMLSequenceNode: data nodes by index value; it keeps copies of the nodes it is given."""

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self.index_name, self.index_unit, self.index_type = "time", "s", 0
        self.items: list[tuple[str, Node]] = []

    def SetIndexName(self, value: str) -> None:
        self.index_name = value

    def GetIndexName(self) -> str:
        return self.index_name

    def SetIndexUnit(self, value: str) -> None:
        self.index_unit = value

    def GetIndexUnit(self) -> str:
        return self.index_unit

    def SetIndexType(self, value: int) -> None:
        self.index_type = value

    def GetIndexType(self) -> int:
        return self.index_type

    def GetNumberOfDataNodes(self) -> int:
        return len(self.items)

    def GetNthDataNode(self, index: int) -> Node:
        return self.items[index][1]

    def GetNthIndexValue(self, index: int) -> str:
        return self.items[index][0]

    def SetDataNodeAtValue(self, node: Node, value: str) -> None:
        if isinstance(node, SegmentationNode):
            copied = SegmentationNode(node.name)
            copied.copy_content(node)
        else:
            copied = VolumeNode(node.name, node.array.copy(), node.spacing)
        self.items = [(v, n) for v, n in self.items if v != value] + [(value, copied)]


class SequenceBrowserNode(Node):
    """vtkMRMLSequenceBrowserNode: synchronized sequences, each with its proxy node, and the item shown."""

    def __init__(self, name: str = "Browser") -> None:
        super().__init__(name)
        self.sequences: list[SequenceNode] = []
        self.proxies: dict[int, Node] = {}  # id(sequence): proxy
        self.save_changes: dict[int, bool] = {}
        self.selected_item = 0

    def AddSynchronizedSequenceNode(self, sequence: SequenceNode) -> None:
        if sequence not in self.sequences:
            self.sequences.append(sequence)

    def AddProxyNode(self, proxy: Node, sequence: SequenceNode, copy: bool = True) -> None:
        # Only links the two: no display node is made for the proxy.
        self.proxies[id(sequence)] = proxy

    def GetSequenceNode(self, proxy: Node) -> SequenceNode | None:
        return next((s for s in self.sequences if self.proxies.get(id(s)) is proxy), None)

    def GetProxyNode(self, sequence: SequenceNode) -> Node | None:
        return self.proxies.get(id(sequence))

    def SetSaveChanges(self, sequence: SequenceNode, save: bool) -> None:
        self.save_changes[id(sequence)] = save


class SequencesLogic:
    """vtkSlicerSequencesLogic, as in Slicer's Modules/Loadable/Sequences/Logic/vtkSlicerSequencesLogic.cxx."""

    def __init__(self, scene: Scene) -> None:
        self.scene = scene

    def GetFirstBrowserNodeForProxyNode(self, proxy: Node) -> SequenceBrowserNode | None:
        browsers = [n for n in self.scene.nodes if isinstance(n, SequenceBrowserNode)]
        return next((b for b in browsers if b.GetSequenceNode(proxy) is not None), None)

    def AddSynchronizedNode(self, sequence, proxy, browser) -> SequenceNode | None:
        if browser is None:
            return None
        browser.AddSynchronizedSequenceNode(sequence)
        if proxy is not None:
            browser.AddProxyNode(proxy, sequence, False)
            proxy.CreateDefaultSequenceDisplayNodes()
            proxy.AddDefaultStorageNode()
        return sequence

    def UpdateProxyNodesFromSequences(self, browser: SequenceBrowserNode) -> None:
        for sequence in browser.sequences:
            proxy = browser.GetProxyNode(sequence)
            if isinstance(proxy, SegmentationNode) and sequence.GetNumberOfDataNodes() > browser.selected_item:
                proxy.copy_content(sequence.GetNthDataNode(browser.selected_item))


class StringArray:
    """vtkStringArray."""

    def __init__(self) -> None:
        self.values: list[str] = []

    def InsertNextValue(self, value: str) -> None:
        self.values.append(value)

    def GetValue(self, index: int) -> str:
        return self.values[index]

    def GetNumberOfValues(self) -> int:
        return len(self.values)


class TerminologiesLogic:
    """vtkSlicerTerminologiesModuleLogic: the contexts loaded, and the files read."""

    def __init__(self) -> None:
        self.contexts: list[str] = []
        self.files_read: list[str] = []

    def LoadTerminologyFromFile(self, path: str) -> str:
        self.files_read.append(path)
        with open(path, encoding="utf-8") as stream:
            context = json.load(stream)["SegmentationCategoryTypeContextName"]
        if context not in self.contexts:
            self.contexts.append(context)
        return context

    def GetLoadedTerminologyNames(self, names: StringArray) -> None:
        for context in self.contexts:
            names.InsertNextValue(context)


NODE_CLASSES = {
    "vtkMRMLSegmentationNode": SegmentationNode,
    "vtkMRMLSequenceNode": SequenceNode,
    "vtkMRMLSequenceBrowserNode": SequenceBrowserNode,
    "vtkMRMLMarkupsLineNode": MarkupsLineNode,
}


class Scene:
    """vtkMRMLScene: nodes, observers and the close events."""

    StartCloseEvent = 66003
    EndCloseEvent = 66004

    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.observers: dict[int, tuple[int, Callable]] = {}
        self._tags = itertools.count(1)

    def AddNode(self, node: Node) -> Node:
        node.scene = self
        self.nodes.append(node)
        return node

    def AddNewNodeByClass(self, class_name: str, name: str = "") -> Node:
        # As in Slicer, the new node has no display node.
        return self.AddNode(NODE_CLASSES[class_name](name))

    def RemoveNode(self, node: Node) -> None:
        # As in Slicer, the display nodes of the removed node stay in the scene.
        self.nodes = [present for present in self.nodes if present is not node]
        node.scene = None

    def GetNodeByID(self, node_id: str) -> Node | None:
        return next((node for node in self.nodes if node.GetID() == node_id), None)

    def GetFirstNodeByClass(self, class_name: str) -> Node | None:
        node_class = {**NODE_CLASSES, "vtkMRMLScalarVolumeNode": VolumeNode}[class_name]
        return next((node for node in self.nodes if isinstance(node, node_class)), None)

    def IsNodePresent(self, node: Node) -> int:
        return int(any(present is node for present in self.nodes))

    def AddObserver(self, event: int, callback: Callable) -> int:
        tag = next(self._tags)
        self.observers[tag] = (event, callback)
        return tag

    def RemoveObserver(self, tag: int) -> None:
        self.observers.pop(tag, None)

    def InvokeEvent(self, event: int) -> None:
        for observed, callback in list(self.observers.values()):
            if observed == event:
                callback(self, event)

    def Clear(self) -> None:
        """Close the scene as File > Close Scene does: StartCloseEvent, nodes removed, EndCloseEvent."""
        self.InvokeEvent(self.StartCloseEvent)
        for node in self.nodes:
            node.scene = None
        self.nodes.clear()
        self.InvokeEvent(self.EndCloseEvent)


class Timers:
    """qt.QTimer.singleShot: callbacks wait here until the test fires them."""

    def __init__(self) -> None:
        self.pending: list[Callable] = []

    def singleShot(self, _interval_ms: int, callback: Callable) -> None:
        self.pending.append(callback)

    def fire(self) -> int:
        """Run the callbacks pending now (those they schedule wait for the next call); how many ran."""
        ready, self.pending = self.pending, []
        for callback in ready:
            callback()
        return len(ready)


class DicomDatabase:
    """slicer.dicomDatabase: tag values per instance file (tags as "gggg,eeee")."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], str] = {}

    def fileForInstance(self, uid: str) -> str:
        return f"/dicom/{uid}.dcm"

    def fileValue(self, file_name: str, tag: str) -> str:
        return self.values.get((file_name, tag), "")


def load_picture(scene: Scene, path: str, properties: dict | None = None) -> VolumeNode:
    """slicer.util.loadVolume of a picture: 1 mm pixels, a storage node with the file name. As ITK's archetype
    reader in Slicer, without ``singleFile`` the pictures of the folder whose names differ only in the last number
    ("benign (2).png" for "benign (1).png") are read with it, as the frames of one series."""
    properties = properties or {}
    path = Path(path)
    files = [path]
    match = list(re.finditer(r"\d+", path.name))
    if match and not properties.get("singleFile"):
        last = match[-1]
        pattern = re.escape(path.name[: last.start()]) + r"\d+" + re.escape(path.name[last.end() :])
        files = sorted((p for p in path.parent.iterdir() if re.fullmatch(pattern, p.name)),
                       key=lambda p: int(re.findall(r"\d+", p.name)[-1]))  # fmt: skip
    frames = [np.asarray(Image.open(file).convert("L")) for file in files]
    if any(frame.shape != frames[0].shape for frame in frames):
        raise RuntimeError(f"{path}: the pictures of the series differ in size")
    name = properties.get("name", path.stem)
    return scene.AddNode(VolumeNode(name, np.stack(frames), (1.0, 1.0, 1.0), str(path)))


def sample_data_module(slicer: types.ModuleType) -> types.ModuleType:
    """SampleData: registration of sample sources and, as Slicer's SampleDataLogic.downloadFromSource and loadNode
    do, loading a source's files with the storage nodes removed afterwards ("read from a temp directory")."""
    module = types.ModuleType("SampleData")

    class SampleDataSource:
        def __init__(self, sampleName=None, uris=None, fileNames=None, nodeNames=None, customDownloader=None,
                     thumbnailFileName=None, loadFileTypes=None, loadFiles=None, loadFileProperties=None,
                     checksums=None) -> None:  # fmt: skip
            def as_list(value):
                return value if isinstance(value, list) else [value]

            self.sampleName, self.customDownloader = sampleName, customDownloader
            self.uris, self.fileNames, self.nodeNames = as_list(uris), as_list(fileNames), as_list(nodeNames)
            self.thumbnailFileName = thumbnailFileName
            self.loadFileProperties = dict(loadFileProperties or {})

    class SampleDataLogic:
        @staticmethod
        def registerCustomSampleDataSource(category="Custom", **kwargs) -> None:
            if not hasattr(slicer.modules, "sampleDataSources"):
                slicer.modules.sampleDataSources = {}
            slicer.modules.sampleDataSources.setdefault(category, []).append(SampleDataSource(**kwargs))

        def downloadFromSource(self, source) -> list:
            nodes = []
            for uri, node_name in zip(source.uris, source.nodeNames):
                path = urllib.request.url2pathname(urllib.parse.urlparse(uri).path)
                node = load_picture(slicer.mrmlScene, path, {**source.loadFileProperties, "name": node_name})
                slicer.mrmlScene.RemoveNode(node.GetStorageNode())
                node.SetAndObserveStorageNodeID(None)
                nodes.append(node)
            return nodes

    module.SampleDataSource, module.SampleDataLogic = SampleDataSource, SampleDataLogic
    return module


def click_sample_button(slicer: types.ModuleType, category: str, sample_name: str):
    """What the Sample Data module's button of a sample does: its custom downloader, else downloadFromSource."""
    source = next(s for s in slicer.modules.sampleDataSources[category] if s.sampleName == sample_name)
    if source.customDownloader:
        return source.customDownloader(source)
    return sys.modules["SampleData"].SampleDataLogic().downloadFromSource(source)[0]


class Widget:
    """A Qt widget of the .ui file: the properties the module sets, signals with their slots, and a click that, as
    in Qt, does nothing while the widget is disabled."""

    def __init__(self, class_name: str = "QWidget", name: str = "") -> None:
        self.class_name, self.name = class_name, name
        self.enabled, self.text, self.toolTip, self.placeholderText = True, "", "", ""
        self.currentPath, self.value, self.minimum, self.maximum = "", 0, 0, 100
        self.lines: list[str] = []
        self.rows: dict[tuple[int, int], str] = {}
        self.headers: list[str] = []
        self.slots: dict[str, list[Callable]] = {}

    def connect(self, signal: str, slot: Callable) -> None:
        self.slots.setdefault(signal, []).append(slot)

    def emit(self, signal: str, *args) -> None:
        for slot in self.slots.get(signal, []):
            # PythonQt passes a slot only as many of the signal's arguments as it takes.
            parameters = inspect.signature(slot).parameters.values()
            if any(p.kind is p.VAR_POSITIONAL for p in parameters):
                slot(*args)
            else:
                slot(*args[: len(parameters)])

    def click(self) -> None:
        if self.enabled:
            self.emit("clicked(bool)", False)

    def setText(self, text: str) -> None:
        self.text = text
        self.emit("textChanged(QString)", text)

    def setCurrentPath(self, path: str) -> None:
        self.currentPath = path
        self.emit("currentPathChanged(QString)", path)

    def setMRMLScene(self, scene) -> None:
        self.scene = scene

    def addWidget(self, widget) -> None:
        self.child = widget

    def appendPlainText(self, text: str) -> None:
        self.lines.append(text)

    def clear(self) -> None:
        self.lines = []

    def setRange(self, minimum: int, maximum: int) -> None:
        self.minimum, self.maximum = minimum, maximum

    def setColumnCount(self, count: int) -> None:
        self.headers = self.headers[:count] + [""] * (count - len(self.headers))
        self.rows = {key: text for key, text in self.rows.items() if key[1] < count}

    def setHorizontalHeaderLabels(self, labels: list[str]) -> None:
        self.headers[: len(labels)] = labels

    def setRowCount(self, count: int) -> None:
        self.rows = {key: text for key, text in self.rows.items() if key[0] < count}

    def setItem(self, row: int, column: int, item) -> None:
        self.rows[(row, column)] = item.text


def load_ui(path: str) -> Widget:
    """slicer.util.loadUI: the top widget, with every named widget of the file in ``children``."""
    root_element = ET.parse(path).getroot().find("widget")
    root = Widget(root_element.get("class"), root_element.get("name"))
    root.children = {}
    for element in root_element.iter("widget"):
        widget = Widget(element.get("class"), element.get("name"))
        for prop in element.findall("property"):
            value = prop.find("*")
            if prop.get("name") == "enabled":
                widget.enabled = value.text == "true"
            elif prop.get("name") in ("text", "toolTip", "placeholderText") and value.tag == "string":
                setattr(widget, prop.get("name"), value.text or "")
        root.children[widget.name] = widget
    return root


class Dialogs:
    """slicer.util's dialogs: what they were asked, and the answer the test chose for confirmations."""

    def __init__(self) -> None:
        self.confirm_answer = True
        self.confirmations: list[str] = []
        self.errors: list[str] = []

    def confirmOkCancelDisplay(self, text: str, *args, **kwargs) -> bool:
        self.confirmations.append(text)
        return self.confirm_answer

    def errorDisplay(self, text: str, *args, detailedText: str = "", **kwargs) -> None:
        self.errors.append(f"{text} {detailedText}".strip())

    @contextlib.contextmanager
    def tryWithErrorDisplay(self, message: str = "", waitCursor: bool = False):
        try:
            yield
        except Exception as error:
            self.errorDisplay(message, detailedText=str(error))


class App:
    """slicer.app: signal connections, and events that the test queues to happen while events are processed (a
    click during a long call that processes events, for example)."""

    def __init__(self) -> None:
        self.connections: dict[str, list[Callable]] = {}
        self.queued_events: list[Callable] = []

    def connect(self, signal: str, slot: Callable) -> None:
        self.connections.setdefault(signal, []).append(slot)

    def processEvents(self) -> None:
        events, self.queued_events = self.queued_events, []
        for event in events:
            event()


def _observable_parameter_node(cls: type) -> type:
    """parameterNodeWrapper: the annotated fields with their defaults; setting one invokes ModifiedEvent."""
    fields = {name: getattr(cls, name, None) for name in cls.__annotations__}

    def __init__(self, node) -> None:
        object.__setattr__(self, "_observers", {})
        object.__setattr__(self, "_tags", itertools.count(1))
        for name, default in fields.items():
            object.__setattr__(self, name, default)

    def __setattr__(self, name, value) -> None:
        object.__setattr__(self, name, value)
        for callback in list(self._observers.values()):
            callback(self, VTK_MODIFIED_EVENT)

    def AddObserver(self, event, callback) -> int:
        tag = next(self._tags)
        self._observers[tag] = callback
        return tag

    def RemoveObserver(self, tag: int) -> None:
        self._observers.pop(tag, None)

    methods = {"__init__": __init__, "__setattr__": __setattr__, "AddObserver": AddObserver,
               "RemoveObserver": RemoveObserver, "connectGui": lambda self, ui: object(),
               "disconnectGui": lambda self, tag: None}  # fmt: skip
    return type(cls.__name__, (), {**methods, "__doc__": cls.__doc__})


VTK_MODIFIED_EVENT = 33


class VTKObservationMixin:
    """slicer.util.VTKObservationMixin: observers added to objects that have AddObserver."""

    def __init__(self) -> None:
        self.observations: list[tuple[object, int, Callable, object]] = []

    def addObserver(self, obj, event, callback) -> None:
        tag = obj.AddObserver(event, callback)
        self.observations.append((obj, event, callback, tag))

    def removeObserver(self, obj, event, callback) -> None:
        for observation in [o for o in self.observations if o[0] is obj and o[1] == event and o[2] == callback]:
            self.observations.remove(observation)
            obj.RemoveObserver(observation[3])

    def removeObservers(self) -> None:
        for obj, event, callback, _ in list(self.observations):
            self.removeObserver(obj, event, callback)


def _scripted_module_base(name: str) -> type:
    def __init__(self, parent=None, *args, **kwargs) -> None:
        self.parent = parent if parent is not None else types.SimpleNamespace(isEntered=True)

    def getParameterNode(self):
        return Node("BUSISegmentation parameters")

    def setup(self) -> None:
        self.layout = Widget("QVBoxLayout")

    def resourcePath(self, relative: str) -> str:
        return str(MODULE_DIR / "Resources" / relative)

    methods = {"__init__": __init__, "getParameterNode": getParameterNode}
    if name == "ScriptedLoadableModuleWidget":
        methods.update(setup=setup, resourcePath=resourcePath)
    return type(name, (), methods)


def install(monkeypatch: pytest.MonkeyPatch, python_executable: str | Path = sys.executable) -> types.ModuleType:
    """Put the stand-in modules in ``sys.modules`` and import ``BUSISegmentation.py`` fresh against them.

    Returns:
        the module; ``module.slicer`` is the stand-in ``slicer`` with ``mrmlScene``, ``dicomDatabase``, ``app``
        (``queued_events`` run when events are processed), ``dialogs`` (what was asked and shown), ``pip_installs``
        (the requirements of every ``pip_install``), and the timers as ``module.qt.QTimer``.
    """
    slicer = types.ModuleType("slicer")
    slicer.mrmlScene = Scene()
    slicer.dicomDatabase = DicomDatabase()
    slicer.app = App()
    slicer.vtkMRMLScalarVolumeNode = VolumeNode
    slicer.vtkMRMLSegmentationNode = SegmentationNode
    sequences_logic = SequencesLogic(slicer.mrmlScene)
    terminologies_logic = TerminologiesLogic()
    hierarchy = types.SimpleNamespace(
        GetItemByDataNode=lambda node: 0, GetItemParent=lambda item: 0, SetItemParent=lambda item, parent: None
    )
    slicer.vtkMRMLSubjectHierarchyNode = types.SimpleNamespace(GetSubjectHierarchyNode=lambda scene: hierarchy)
    slicer.modules = types.SimpleNamespace(
        sequences=types.SimpleNamespace(logic=lambda: sequences_logic),
        terminologies=types.SimpleNamespace(logic=lambda: terminologies_logic),
    )

    def clear_segment(node: SegmentationNode, segment_id: str) -> None:
        node.segmentation.segments[segment_id].mask = None

    def update_segment(mask: np.ndarray, node: SegmentationNode, segment_id: str, reference=None) -> None:
        node.segmentation.segments[segment_id].mask = np.asarray(mask).copy()

    def segment_array(node: SegmentationNode, segment_id: str, reference=None) -> np.ndarray | None:
        mask = node.segmentation.segments[segment_id].mask
        return None if mask is None else mask.copy()

    slicer.vtkSlicerSegmentationsModuleLogic = types.SimpleNamespace(ClearSegment=clear_segment)
    slicer.dialogs = Dialogs()
    slicer.pip_installs = []

    def pip_install(requirements) -> None:
        # Slicer 5.10: logProcessOutput calls processEvents for every line pip prints.
        slicer.pip_installs.append(requirements)
        for _line in range(3):
            slicer.app.processEvents()

    util = types.ModuleType("slicer.util")
    util.VTKObservationMixin = VTKObservationMixin
    util.arrayFromVolume = lambda node: node.array
    util.arrayFromVTKMatrix = lambda matrix: matrix.values.copy()
    util.getNodesByClass = lambda name: [n for n in slicer.mrmlScene.nodes if isinstance(n, NODE_CLASSES[name])]
    util.startupEnvironment = lambda: dict(os.environ)
    util.loadVolume = lambda path, properties=None: load_picture(slicer.mrmlScene, path, properties)
    util.loadUI = load_ui
    util.childWidgetVariables = lambda root: types.SimpleNamespace(**root.children)
    util.updateSegmentBinaryLabelmapFromArray = update_segment
    util.arrayFromSegmentBinaryLabelmap = segment_array
    util.pip_install = pip_install
    for dialog in ("confirmOkCancelDisplay", "errorDisplay", "tryWithErrorDisplay"):
        setattr(util, dialog, getattr(slicer.dialogs, dialog))
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = _observable_parameter_node
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    for base in ("ScriptedLoadableModule", "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleWidget"):
        setattr(scripted, base, _scripted_module_base(base))
    scripted.ScriptedLoadableModuleTest = type("ScriptedLoadableModuleTest", (), {})
    slicer.util, slicer.i18n, slicer.parameterNodeWrapper, slicer.ScriptedLoadableModule = util, i18n, wrapper, scripted

    qt = types.ModuleType("qt")
    qt.QTimer = Timers()
    qt.QTableWidgetItem = lambda text: types.SimpleNamespace(text=text)
    vtk = types.ModuleType("vtk")
    vtk.vtkMatrix4x4 = Matrix4x4
    vtk.vtkStringArray = StringArray
    vtk.vtkCommand = types.SimpleNamespace(ModifiedEvent=VTK_MODIFIED_EVENT)

    for name, module in {"slicer": slicer, "slicer.util": util, "slicer.i18n": i18n,
                         "slicer.parameterNodeWrapper": wrapper, "slicer.ScriptedLoadableModule": scripted,
                         "qt": qt, "vtk": vtk, "SampleData": sample_data_module(slicer)}.items():  # fmt: skip
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.syspath_prepend(str(MODULE_DIR))
    spec = importlib.util.spec_from_file_location("BUSISegmentation", MODULE_DIR / "BUSISegmentation.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "BUSISegmentation", module)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module.BUSISegmentationLogic, "pythonExecutable", staticmethod(lambda: str(python_executable)))
    return module
