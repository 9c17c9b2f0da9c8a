"""Saving epoch checkpoints safely, resuming from the last one that loads, starting from earlier weights, averaging
epoch weights."""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path

import torch
from ignite.engine import Engine
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointLoader, CheckpointSaver

__all__ = [
    "AtomicCheckpointSaver", "average_epoch_weights", "epoch_checkpoints", "latest_checkpoint", "ResumeFromLatest",
]

EPOCH_CHECKPOINT = re.compile(r"checkpoint_epoch=(\d+)\.pt$")
logger = logging.getLogger(__name__)


def epoch_checkpoints(checkpoint_dir: str | Path) -> dict[int, Path]:
    """The ``*checkpoint_epoch=N.pt`` files of ``checkpoint_dir`` by epoch N."""
    found = {}
    for path in Path(checkpoint_dir).glob("*checkpoint_epoch=*.pt"):
        if match := EPOCH_CHECKPOINT.search(path.name):
            found[int(match[1])] = path
    return dict(sorted(found.items()))


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The newest ``*checkpoint_epoch=N.pt`` of ``checkpoint_dir`` that loads, None when there is none.

    A checkpoint that does not load (truncated when a run was killed while writing it) is skipped with a warning.
    """
    for path in reversed(epoch_checkpoints(checkpoint_dir).values()):
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as error:
            logger.warning(f"skipping {path}: it does not load ({error})")
            continue
        return path
    return None


def average_epoch_weights(
    checkpoint_dir: str | Path, first_epoch: int, last_epoch: int, output_path: str | Path
) -> Path:
    """Save the mean of the network weights of epochs ``first_epoch``..``last_epoch`` (weight averaging).

    Averaging the weights of the last epochs of a decaying learning rate gives a flatter, more stable optimum than
    any single epoch. The network uses instance normalisation, which keeps no running statistics, so the averaged
    weights need no re-estimation pass.

    Raises:
        FileNotFoundError: when an epoch of the range has no checkpoint (keep them with ``checkpoint_saver#n_saved``).
    """
    found = epoch_checkpoints(checkpoint_dir)
    epochs = range(first_epoch, last_epoch + 1)
    if missing := [e for e in epochs if e not in found]:
        raise FileNotFoundError(f"{checkpoint_dir}: no checkpoint for epochs {missing}")
    total: dict[str, torch.Tensor] = {}
    for epoch in epochs:
        weights = torch.load(found[epoch], map_location="cpu", weights_only=True)["model"]
        for name, value in weights.items():
            total[name] = total.get(name, 0) + value.double()
    averaged = {name: (value / len(epochs)).to(weights[name].dtype) for name, value in total.items()}
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    partial = output_path.with_name(output_path.name + ".partial")
    torch.save(averaged, partial)
    partial.replace(output_path)
    logger.info(f"averaged the weights of epochs {first_epoch}-{last_epoch} -> {output_path}")
    return output_path


class AtomicCheckpointSaver(CheckpointSaver):
    """:class:`monai.handlers.CheckpointSaver` whose interval checkpoints (``save_interval``) are written atomically.

    MONAI's saver writes each file in place, so a run killed while it writes leaves a truncated checkpoint. Here each
    is written to a temporary file in ``save_dir`` and renamed when complete (ignite's ``DiskSaver(atomic=True)``):
    a checkpoint either is complete or is not there. (MONAI turns this off because the temporary file is readable by
    its owner only; ignite gives group and others read permission after the rename.)
    """

    def __init__(self, save_dir: str, save_dict: dict, **kwargs) -> None:
        super().__init__(save_dir, save_dict, **kwargs)
        if self._interval_checkpoint is not None:
            self._interval_checkpoint.save_handler = DiskSaver(save_dir, atomic=True, require_empty=False)


class ResumeFromLatest:
    """Attach a :class:`monai.handlers.CheckpointLoader` for the newest epoch checkpoint that loads, if there is one.

    Training saves model, optimizer, scheduler and trainer state after every epoch, so an interrupted run started
    again with the same ``output_dir`` continues from the newest checkpoint that loads (:func:`latest_checkpoint`).
    A new run can instead start from the network weights of an earlier one (``initial_weights``) with a fresh
    optimizer and learning-rate schedule.

    Args:
        checkpoint_dir: folder of the epoch checkpoints.
        load_dict: objects to restore, keyed as when saved; ``"model"`` is the network.
        enabled: False starts from scratch even when checkpoints exist.
        map_location: device the tensors are loaded to.
        initial_weights: network weights (a ``model.pt``) to start from when there is no epoch checkpoint to resume.
    """

    def __init__(
        self,
        checkpoint_dir: str,
        load_dict: dict,
        enabled: bool = True,
        map_location: torch.device | str = "cpu",
        initial_weights: str | None = None,
    ) -> None:
        self.map_location = map_location
        self.checkpoint = latest_checkpoint(checkpoint_dir) if enabled else None
        self.load_dict = load_dict
        if self.checkpoint is None and initial_weights:
            if not Path(initial_weights).is_file():
                raise FileNotFoundError(f"{initial_weights}: initial weights not found")
            self.checkpoint, self.load_dict = Path(initial_weights), {"model": load_dict["model"]}

    def attach(self, engine: Engine) -> None:
        if self.checkpoint is None:
            return
        logger.info(f"loading {', '.join(self.load_dict)} from {self.checkpoint}")
        CheckpointLoader(str(self.checkpoint), self.load_dict, map_location=self.map_location).attach(engine)
