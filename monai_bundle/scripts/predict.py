"""From network input to class probabilities, with test-time flipping and network ensembles, in one place."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
from monai.inferers import Inferer
from torch import nn

from scripts.network import PIXEL_CHANNELS

__all__ = ["ProbabilityInferer", "checkpoint_paths", "load_networks"]


def checkpoint_paths(checkpoint: str | Path | Sequence[str | Path]) -> list[Path]:
    """The weights files of a checkpoint setting: one path, or a list of them for an ensemble."""
    return [Path(checkpoint)] if isinstance(checkpoint, (str, Path)) else [Path(path) for path in checkpoint]


def load_networks(network: nn.Module, checkpoint: str | Sequence[str], device: torch.device | str = "cpu") -> nn.Module:
    """``network`` with the weights of ``checkpoint`` (weights only, never pickled code), in evaluation mode.

    A list of weights files gives an ``nn.ModuleList``: ``network`` itself takes the first file and a copy of it
    each of the others; :class:`ProbabilityInferer` averages their probabilities.
    """
    paths = checkpoint_paths(checkpoint)
    if missing := [str(path) for path in paths if not path.is_file()]:
        raise FileNotFoundError(f"{', '.join(missing)}: model weights not found")
    members = [network] + [copy.deepcopy(network) for _ in paths[1:]]
    for member, path in zip(members, paths):
        member.load_state_dict(torch.load(path, map_location=device, weights_only=True))
        member.eval()
    return members[0] if len(members) == 1 else nn.ModuleList(members)


def _probabilities(outputs: torch.Tensor) -> torch.Tensor:
    """Softmax over the pixel classes and, separately, over the image classes of a network's output."""
    return torch.cat([part.softmax(1) for part in outputs.split(PIXEL_CHANNELS, dim=1)], dim=1)


class ProbabilityInferer(Inferer):
    """Run the network (or each network of an ``nn.ModuleList``) and return averaged probabilities.

    The output has the network's channels: three pixel-class probabilities (background, benign, malignant) and,
    for networks with an image head, three image-class probabilities (normal, benign, malignant). With ``tta``,
    the horizontally mirrored image is segmented too and its probabilities, mirrored back, enter the average.

    Args:
        tta: also segment the mirrored image; a string such as ``"false"`` from the command line is understood.
    """

    def __init__(self, tta: bool | str = False) -> None:
        super().__init__()
        self.tta = tta.strip().lower() in ("true", "1", "yes") if isinstance(tta, str) else bool(tta)

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args, **kwargs) -> torch.Tensor:
        networks = list(network) if isinstance(network, nn.ModuleList) else [network]
        total = None
        for net in networks:
            views = [_probabilities(net(inputs))]
            if self.tta:
                views.append(torch.flip(_probabilities(net(torch.flip(inputs, (-1,)))), (-1,)))
            for view in views:
                total = view if total is None else total + view
        return total / (len(networks) * (2 if self.tta else 1))
