"""From network input to class probabilities, with test-time flipping and network ensembles, in one place."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.inferers import Inferer
from torch import nn

from scripts.network import PIXEL_CHANNELS

__all__ = [
    "ProbabilityInferer",
    "checkpoint_paths",
    "half_precision",
    "load_networks",
    "save_half_precision",
    "split_probabilities",
]


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
        # load_state_dict copies into the network's own tensors, so weights stored in float16 become its dtype
        member.load_state_dict(torch.load(path, map_location=device, weights_only=True))
        member.eval()
    return members[0] if len(members) == 1 else nn.ModuleList(members)


def half_precision(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``weights`` with every floating-point tensor in float16, the others unchanged.

    Raises:
        ValueError: when a weight is too large for float16.
    """
    halved = {name: value.half() if value.is_floating_point() else value for name, value in weights.items()}
    if overflow := [name for name, value in halved.items() if value.is_floating_point() and not value.isfinite().all()]:
        raise ValueError(f"weights too large for float16: {', '.join(overflow)}")
    return halved


def save_half_precision(checkpoint: str | Path, output_path: str | Path) -> Path:
    """Store the network weights of ``checkpoint`` (a state dict, such as a training run's ``model.pt``) in float16.

    Half the file size of float32; loading casts them back to the network's dtype (:func:`load_networks`). The label
    maps agree with those of the float32 weights to within what ``benchmarks/agreement.py`` reports.
    """
    weights = half_precision(torch.load(checkpoint, map_location="cpu", weights_only=True))
    output_path = Path(output_path)
    partial = output_path.with_name(output_path.name + ".partial")
    torch.save(weights, partial)
    partial.replace(output_path)
    return output_path


def _probabilities(outputs: torch.Tensor) -> torch.Tensor:
    """Softmax over the pixel classes and, separately, over the image classes of a network's output."""
    return torch.cat([part.softmax(1) for part in outputs.split(PIXEL_CHANNELS, dim=1)], dim=1)


def split_probabilities(
    probabilities: np.ndarray,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Pixel probabilities ``(3, rows, columns)``, image probabilities ``(3,)`` or None, and the views'
    disagreement ``(rows, columns)`` or None, of one item of :class:`ProbabilityInferer`'s output.

    The channels are: three pixel-class probabilities; three image-class probabilities for networks with an image
    head; one disagreement channel when several views were averaged. Each layout has its own channel count (3, 4, 6
    or 7), so the count tells them apart.

    Raises:
        ValueError: another shape.
    """
    channels = probabilities.shape[0] if probabilities.ndim == 3 else 0
    if channels not in (PIXEL_CHANNELS, PIXEL_CHANNELS + 1, 2 * PIXEL_CHANNELS, 2 * PIXEL_CHANNELS + 1):
        raise ValueError(f"expected probabilities of 3, 4, 6 or 7 channels (channels, rows, columns), got "
                         f"{probabilities.shape}")
    image = probabilities[PIXEL_CHANNELS : 2 * PIXEL_CHANNELS, 0, 0] if channels >= 2 * PIXEL_CHANNELS else None
    disagreement = probabilities[-1] if channels % PIXEL_CHANNELS == 1 else None
    return probabilities[:PIXEL_CHANNELS], image, disagreement


class ProbabilityInferer(Inferer):
    """Run the network (or each network of an ``nn.ModuleList``) and return averaged probabilities.

    The output has the network's channels: three pixel-class probabilities (background, benign, malignant) and,
    for networks with an image head, three image-class probabilities (normal, benign, malignant). With ``tta``,
    the horizontally mirrored image is segmented too and its probabilities, mirrored back, enter the average.

    When several views are averaged (the networks of an ensemble, each with the mirrored image under ``tta``), one
    more channel follows: how much the views disagree at each pixel, the mean over the views of the total variation
    distance between a view's pixel-class probabilities and their average (half the summed absolute differences;
    0 when all views agree, at most 1). :func:`split_probabilities` takes the channels apart.

    Args:
        tta: also segment the mirrored image; a string such as ``"false"`` from the command line is understood.
    """

    def __init__(self, tta: bool | str = False) -> None:
        super().__init__()
        self.tta = tta.strip().lower() in ("true", "1", "yes") if isinstance(tta, str) else bool(tta)

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args, **kwargs) -> torch.Tensor:
        networks = list(network) if isinstance(network, nn.ModuleList) else [network]
        views = []
        for net in networks:
            views.append(_probabilities(net(inputs)))
            if self.tta:
                views.append(torch.flip(_probabilities(net(torch.flip(inputs, (-1,)))), (-1,)))
        mean = torch.stack(views).mean(0)
        if len(views) == 1:
            return mean
        pixel_mean = mean[:, :PIXEL_CHANNELS]
        distances = [(view[:, :PIXEL_CHANNELS] - pixel_mean).abs().sum(1, keepdim=True) / 2 for view in views]
        return torch.cat([mean, torch.stack(distances).mean(0)], dim=1)
