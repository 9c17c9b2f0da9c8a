import unittest

import slicer

from BUSISegmentationLib import load_label_descriptions, locate_bundle
from BUSISegmentationLib.bundle import MODULE_DIR
from BUSISegmentationLib.labels import TERMINOLOGY_FILE


class BUSISegmentationResourcesTest(unittest.TestCase):
    """The files the module needs at run time are where the Lib looks for them (runs without PyTorch)."""

    def test_BundleIsInstalledWithTheModule(self):
        bundle = locate_bundle()
        self.assertEqual(bundle, (MODULE_DIR / "Resources" / "monai_bundle").resolve())
        for name in ("configs/inference.json", "configs/metadata.json", "configs/labels.json", "configs/logging.conf",
                     "models/model.pt", "scripts/inference.py", "scripts/labels.py", "scripts/reader.py",
                     "scripts/writers.py"):
            self.assertTrue((bundle / name).is_file(), f"{name} missing from {bundle}")
        self.assertTrue(list((bundle / "sample_data").glob("*.png")), "no sample image installed")

    def test_TerminologyEntriesAreAccepted(self):
        terminologies = slicer.modules.terminologies.logic()
        contextName = terminologies.LoadTerminologyFromFile(str(TERMINOLOGY_FILE))
        for description in load_label_descriptions():
            self.assertTrue(description.terminology_entry.startswith(contextName + "~"))
            entry = slicer.vtkSlicerTerminologyEntry()
            self.assertTrue(terminologies.DeserializeTerminologyEntry(description.terminology_entry, entry))
            self.assertEqual(entry.GetRegionObject().GetCodeValue(), "76752008")
