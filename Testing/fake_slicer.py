"""Stand-ins for the 3D Slicer Python modules (``slicer``, ``qt``, ``vtk``) that ``BUSISegmentation.py`` imports, so
that its Logic can run in pytest: a scene with nodes and observers, volume nodes backed by numpy arrays, and Qt
timers that the test fires itself. Only what the Logic uses is there; the real classes run inside Slicer (CTest).
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import sys
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

MODULE_DIR = Path(__file__).resolve().parents[1] / "BUSISegmentation"


class Matrix4x4:
    """vtkMatrix4x4 backed by a numpy array."""

    def __init__(self, values: np.ndarray | None = None) -> None:
        self.values = np.eye(4) if values is None else np.asarray(values, dtype=np.float64)



class Node:
    """An MRML node: a name, attributes, and the scene it is in."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.attributes: dict[str, str] = {}
        self.scene: Scene | None = None

    def GetName(self) -> str:
        return self.name

    def GetID(self) -> str:
        return f"{type(self).__name__}_{id(self)}"

    def GetAttribute(self, name: str) -> str | None:
        return self.attributes.get(name)


class StorageNode:
    def __init__(self, file_name: str) -> None:
        self.file_name = file_name

    def GetFileName(self) -> str:
        return self.file_name


class VolumeNode(Node):
    """A scalar volume: ``array`` is (frames, rows, columns[, components]) as ``arrayFromVolume`` gives it."""

    def __init__(self, name: str, array: np.ndarray, spacing=(1.0, 1.0, 1.0), file_name: str | None = None) -> None:
        super().__init__(name)
        self.array = np.asarray(array)
        self.spacing = tuple(float(v) for v in spacing)
        self.storage = StorageNode(file_name) if file_name else None

    def GetSpacing(self) -> tuple[float, float, float]:
        return self.spacing

    def GetStorageNode(self) -> StorageNode | None:
        return self.storage

    def GetIJKToRASMatrix(self, matrix: Matrix4x4) -> None:
        # Slicer loads pictures and NRRD files in LPS as RAS with the first two axes flipped.
        matrix.values = np.diag([-self.spacing[0], -self.spacing[1], self.spacing[2], 1.0])


class SegmentationNode(Node):
    """Records what the Logic writes into it."""

    def __init__(self, name: str = "Segmentation") -> None:
        super().__init__(name)
        self.labels: np.ndarray | None = None
        self.references: dict[str, str] = {}

    def GetReferenceImageGeometryReferenceRole(self) -> str:
        return "referenceImageGeometryRef"

    def SetNodeReferenceID(self, role: str, node_id: str) -> None:
        self.references[role] = node_id

    def SetReferenceImageGeometryParameterFromVolumeNode(self, volume: VolumeNode) -> None:
        self.references["geometry"] = volume.GetID()


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


def _scripted_module_base(name: str) -> type:
    def __init__(self, *args, **kwargs) -> None:
        pass

    def getParameterNode(self):
        return None

    return type(name, (), {"__init__": __init__, "getParameterNode": getParameterNode})


def install(monkeypatch: pytest.MonkeyPatch, python_executable: str | Path = sys.executable) -> types.ModuleType:
    """Put the stand-in modules in ``sys.modules`` and import ``BUSISegmentation.py`` fresh against them.

    Returns:
        the module; ``module.slicer`` is the stand-in ``slicer`` with ``mrmlScene``, ``dicomDatabase`` and the
        timers as ``module.qt.QTimer``.
    """
    slicer = types.ModuleType("slicer")
    slicer.mrmlScene = Scene()
    slicer.dicomDatabase = DicomDatabase()
    slicer.app = types.SimpleNamespace(processEvents=lambda: None, connect=lambda *args: None)
    slicer.vtkMRMLScalarVolumeNode = VolumeNode
    slicer.vtkMRMLSegmentationNode = SegmentationNode
    sequences_logic = types.SimpleNamespace(GetFirstBrowserNodeForProxyNode=lambda node: None)
    hierarchy = types.SimpleNamespace(
        GetItemByDataNode=lambda node: 0, GetItemParent=lambda item: 0, SetItemParent=lambda item, parent: None
    )
    slicer.vtkMRMLSubjectHierarchyNode = types.SimpleNamespace(GetSubjectHierarchyNode=lambda scene: hierarchy)
    slicer.modules = types.SimpleNamespace(sequences=types.SimpleNamespace(logic=lambda: sequences_logic))

    util = types.ModuleType("slicer.util")
    util.VTKObservationMixin = type("VTKObservationMixin", (), {"__init__": lambda self: None})
    util.arrayFromVolume = lambda node: node.array
    util.arrayFromVTKMatrix = lambda matrix: matrix.values.copy()
    util.startupEnvironment = lambda: dict(os.environ)
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    wrapper = types.ModuleType("slicer.parameterNodeWrapper")
    wrapper.parameterNodeWrapper = lambda cls: cls
    scripted = types.ModuleType("slicer.ScriptedLoadableModule")
    for base in ("ScriptedLoadableModule", "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleWidget"):
        setattr(scripted, base, _scripted_module_base(base))
    scripted.ScriptedLoadableModuleTest = type("ScriptedLoadableModuleTest", (), {})
    slicer.util, slicer.i18n, slicer.parameterNodeWrapper, slicer.ScriptedLoadableModule = util, i18n, wrapper, scripted

    qt = types.ModuleType("qt")
    qt.QTimer = Timers()
    vtk = types.ModuleType("vtk")
    vtk.vtkMatrix4x4 = Matrix4x4
    vtk.vtkCommand = types.SimpleNamespace(ModifiedEvent=33)

    for name, module in {"slicer": slicer, "slicer.util": util, "slicer.i18n": i18n,
                         "slicer.parameterNodeWrapper": wrapper, "slicer.ScriptedLoadableModule": scripted,
                         "qt": qt, "vtk": vtk}.items():  # fmt: skip
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.syspath_prepend(str(MODULE_DIR))
    spec = importlib.util.spec_from_file_location("BUSISegmentation", MODULE_DIR / "BUSISegmentation.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "BUSISegmentation", module)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module.BUSISegmentationLogic, "pythonExecutable", staticmethod(lambda: str(python_executable)))
    return module
