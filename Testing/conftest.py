"""Shared test set-up: the bundle's ``scripts`` package and ``BUSISegmentationLib`` importable; the bundle's path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE_ROOT = REPO_ROOT / "monai_bundle"

for importable in (BUNDLE_ROOT, REPO_ROOT / "BUSISegmentation"):
    if str(importable) not in sys.path:
        sys.path.insert(0, str(importable))


@pytest.fixture(scope="session")
def bundle_root() -> Path:
    return BUNDLE_ROOT
