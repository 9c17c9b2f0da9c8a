"""From network input to class probabilities, with test-time flipping and network ensembles, in one place."""

from __future__ import annotations

import torch
from monai.inferers import Inferer
from torch import nn

from scripts.network import PIXEL_CHANNELS

__all__ = ["ProbabilityInferer"]


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
