"""The bundle's network: a residual U-Net with an image-level head, its loss, and bf16 mixed precision.

The network answers two questions at once: which class each pixel belongs to (background, benign, malignant) and
which class the whole image belongs to (normal, benign, malignant). Both come out as one tensor,
``(batch, 6, rows, columns)``: channels 0-2 are the pixel logits, channels 3-5 the image logits repeated at every
pixel. One tensor passes unchanged through MONAI's inferers, flips and resizes (a constant map stays constant), so
every consumer can take the image decision from any pixel of the channels it receives.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from monai.losses import DiceCELoss
from monai.networks.blocks import Convolution, ResidualUnit
from torch import nn

__all__ = [
    "PIXEL_CHANNELS",
    "MixedPrecision",
    "ResidualUNetWithImageHead",
    "SegmentationAndImageLoss",
    "auxiliary_outputs",
    "mixed_precision_dtype",
    "pixel_outputs",
    "split_outputs",
]

PIXEL_CHANNELS = 3  # background, benign, malignant; the image head has the same three classes


def pixel_outputs(outputs: torch.Tensor) -> torch.Tensor:
    """The pixel logits ``(3, ...)`` of one decollated, channel-first output."""
    return outputs[:PIXEL_CHANNELS]


def split_outputs(outputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel logits ``(batch, 3, ...)`` and image logits ``(batch, 3)`` of the network's output."""
    image_logits = outputs[:, PIXEL_CHANNELS : 2 * PIXEL_CHANNELS].flatten(2)[..., 0]
    return outputs[:, :PIXEL_CHANNELS], image_logits


def auxiliary_outputs(outputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The deep-supervision pixel logits ``(batch, 3, ...)`` of a training-mode output, next-to-last level first."""
    extra = outputs[:, 2 * PIXEL_CHANNELS :]
    return extra.split(PIXEL_CHANNELS, dim=1) if extra.shape[1] else ()


class ResidualUNetWithImageHead(nn.Module):
    """MONAI's residual U-Net layout (``monai.networks.nets.UNet`` with ``num_res_units``) plus an image head.

    The encoder, bottleneck and decoder are built from the same blocks as MONAI's ``UNet``; the head pools the
    bottleneck features (mean and max) into the image-class logits. The head sees the whole image, so it can say
    "no lesion" where pixels alone would leave speckle-sized false alarms.

    Args:
        in_channels: image channels.
        out_channels: pixel classes; the image head has as many classes.
        channels: feature channels per level, the last is the bottleneck.
        strides: down-sampling stride of each level but the bottleneck.
        num_res_units: residual sub-units per encoder block.
        norm: normalisation of every block.
        dropout: dropout of every block and of the head.
        deep_supervision: decoder levels above the output that also predict the pixel classes while training
            (deep supervision, a 1x1 convolution each); their logits, upsampled to the output's size, follow the
            image logits as more channels in training mode only. Weights trained with it need it to load.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = PIXEL_CHANNELS,
        channels: tuple[int, ...] = (32, 64, 128, 256, 512),
        strides: tuple[int, ...] = (2, 2, 2, 2),
        num_res_units: int = 2,
        norm: str = "instance",
        dropout: float = 0.1,
        deep_supervision: int = 0,
    ) -> None:
        super().__init__()
        if len(channels) != len(strides) + 1 or num_res_units < 1:
            raise ValueError(f"need len(channels) == len(strides) + 1 and num_res_units >= 1, got {channels}, {strides}")
        if not 0 <= deep_supervision < len(strides):
            raise ValueError(f"deep_supervision must be 0 to {len(strides) - 1}, got {deep_supervision}")
        block = dict(spatial_dims=2, norm=norm, dropout=dropout)
        self.encoders = nn.ModuleList(
            ResidualUnit(in_channels=c_in, out_channels=c_out, strides=s, subunits=num_res_units, **block)
            for c_in, c_out, s in zip((in_channels, *channels[:-2]), channels[:-1], strides)
        )
        self.bottleneck = ResidualUnit(
            in_channels=channels[-2], out_channels=channels[-1], strides=1, subunits=num_res_units, **block
        )
        self.decoders = nn.ModuleList()  # deepest first, the order they run in
        for level, stride in reversed(list(enumerate(strides))):
            deeper = channels[level + 1] if level == len(strides) - 1 else channels[level]
            out = out_channels if level == 0 else channels[level - 1]
            self.decoders.append(
                nn.Sequential(
                    Convolution(
                        in_channels=channels[level] + deeper, out_channels=out, strides=stride, is_transposed=True,
                        **block,
                    ),
                    ResidualUnit(in_channels=out, out_channels=out, strides=1, subunits=1, last_conv_only=level == 0,
                                 **block),
                )
            )
        self.image_head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * channels[-1], out_channels))
        # the decoder of level k outputs channels[k - 1] features; heads for levels 1 .. deep_supervision
        self.auxiliary_heads = nn.ModuleList(
            nn.Conv2d(channels[level - 1], out_channels, kernel_size=1) for level in range(1, deep_supervision + 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
        x = self.bottleneck(x)
        image_logits = self.image_head(torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1))
        decoded: list[torch.Tensor] = []  # each decoder's output, deepest first: decoded[-1 - k] is level k's
        for depth, decoder in enumerate(self.decoders):
            x = decoder(torch.cat([skips[len(skips) - 1 - depth], x], dim=1))
            decoded.append(x)
        image_map = image_logits[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
        auxiliary: list[torch.Tensor] = []
        if self.training:
            for index, head in enumerate(self.auxiliary_heads):  # head `index` supervises level index + 1
                logits = head(decoded[-2 - index])
                auxiliary.append(nn.functional.interpolate(logits, size=x.shape[2:], mode="bilinear").to(x.dtype))
        return torch.cat([x, image_map.to(x.dtype)] + auxiliary, dim=1)


class SegmentationAndImageLoss(nn.Module):
    """Dice + cross-entropy on the pixels plus ``image_weight`` x cross-entropy on the image class.

    The image class is read off the label map (its largest label: 0 normal, 1 benign, 2 malignant), so the datalist
    needs nothing more. Deep-supervision logits (:func:`auxiliary_outputs`) add their own pixel loss, weighted by half
    for each level further from the output. Losses are computed in float32 whatever precision the network ran in.

    Args:
        class_weights: pixel cross-entropy weights of background, benign, malignant.
        image_weight: weight of the image-class term.
    """

    def __init__(self, class_weights: list[float] | None = None, image_weight: float = 0.3) -> None:
        super().__init__()
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self.pixel_loss = DiceCELoss(to_onehot_y=True, softmax=True, batch=True, weight=weight)
        self.image_loss = nn.CrossEntropyLoss()
        self.image_weight = image_weight

    def forward(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        outputs = outputs.float()
        pixel_logits, image_logits = split_outputs(outputs)
        image_class = labels.flatten(1).amax(dim=1).long()
        loss = self.pixel_loss(pixel_logits, labels) + self.image_weight * self.image_loss(image_logits, image_class)
        for level, logits in enumerate(auxiliary_outputs(outputs), start=1):
            loss = loss + 0.5**level * self.pixel_loss(logits, labels)
        return loss


def _cpu_has_bf16() -> bool:
    if sys.platform == "linux" and Path("/proc/cpuinfo").is_file():
        flags = Path("/proc/cpuinfo").read_text()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    return False


def mixed_precision_dtype(device: torch.device | str, enabled: bool = True) -> torch.dtype | None:
    """bf16 where the hardware computes it natively (CUDA with bf16, CPUs with AVX512-BF16 or AMX), else None.

    On CPUs without native bf16 the emulated kernels are slower than float32, so those stay in float32.
    """
    device = torch.device(device)
    if not enabled:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if device.type == "cpu" and _cpu_has_bf16() else None


class MixedPrecision(nn.Module):
    """Run ``network`` under ``torch.autocast`` in ``dtype`` and return float32 outputs.

    MONAI's trainers and evaluators autocast on CUDA only; wrapping the network gives CPUs the same benefit for
    training, validation and inference alike. The wrapper is transparent to checkpoints: its state dict is the
    wrapped network's, so weights saved from either load into either.

    Args:
        network: the network to run.
        dtype: autocast precision; None runs in float32.
    """

    def __init__(self, network: nn.Module, dtype: torch.dtype | None) -> None:
        super().__init__()
        self.network = network
        self.dtype = dtype

    def state_dict(self, *args, **kwargs):
        return self.network.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.network.load_state_dict(state_dict, strict=strict, assign=assign)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dtype is None:
            return self.network(x)
        with torch.autocast(device_type=x.device.type, dtype=self.dtype):
            outputs = self.network(x)
        return outputs.float()
