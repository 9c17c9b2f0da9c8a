"""Resuming training from the last finished epoch."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from ignite.engine import Engine
from monai.handlers import CheckpointLoader

__all__ = ["latest_checkpoint", "ResumeFromLatest"]

EPOCH_CHECKPOINT = re.compile(r"checkpoint_epoch=(\d+)\.pt$")
logger = logging.getLogger(__name__)


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The newest ``*checkpoint_epoch=N.pt`` in ``checkpoint_dir``, None when there is none."""
    found = []
    for path in Path(checkpoint_dir).glob("*checkpoint_epoch=*.pt"):
        if match := EPOCH_CHECKPOINT.search(path.name):
            found.append((int(match[1]), path))
    return max(found)[1] if found else None


class ResumeFromLatest:
    """Attach a :class:`monai.handlers.CheckpointLoader` for the newest epoch checkpoint, if there is one.

    Training saves model, optimizer, scheduler and trainer state after every epoch, so an interrupted run started
    again with the same ``output_dir`` continues from the last finished epoch.

    Args:
        checkpoint_dir: folder of the epoch checkpoints.
        load_dict: objects to restore, keyed as when saved.
        enabled: False starts from scratch even when checkpoints exist.
        map_location: device the tensors are loaded to.
    """

    def __init__(
        self, checkpoint_dir: str, load_dict: dict, enabled: bool = True, map_location: torch.device | str = "cpu"
    ) -> None:
        self.checkpoint = latest_checkpoint(checkpoint_dir) if enabled else None
        self.load_dict = load_dict
        self.map_location = map_location

    def attach(self, engine: Engine) -> None:
        if self.checkpoint is None:
            return
        logger.info(f"resuming from {self.checkpoint}")
        loader = CheckpointLoader(load_path=str(self.checkpoint), load_dict=self.load_dict, map_location=self.map_location)
        loader.attach(engine)
