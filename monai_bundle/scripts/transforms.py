"""Bundle transforms that MONAI does not provide: loading through the project's reader, anti-aliasing, speckle noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.networks.layers.convutils import gaussian_1d
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import convert_to_dst_type
from PIL import Image
from scipy import ndimage

from scripts.reader import read_image

__all__ = ["AntiAliasd", "LoadUltrasoundd", "RandSpeckleNoised"]


def _to_meta_tensor(frame: np.ndarray, path: str) -> MetaTensor:
    meta = {"filename_or_obj": str(path), "spatial_shape": np.array(frame.shape), "original_channel_dim": "no_channel"}
    return MetaTensor(torch.as_tensor(frame[np.newaxis], dtype=torch.float32), meta=meta)


class LoadUltrasoundd(MapTransform):
    """Load a grey image with :func:`scripts.reader.read_image` and, optionally, an 8-bit label map.

    Both become (1, rows, columns) float tensors with their file name in the metadata. Only the first frame of the
    image is used: training and evaluation data are single frames. A value that is already an array (a frame that
    inference read itself, one by one) is passed on as it is.

    Args:
        keys: the image key and, optionally, the label key.
        label_key: which of ``keys`` holds a label-map PNG rather than an image.
    """

    def __init__(self, keys: KeysCollection, label_key: str = "label", allow_missing_keys: bool = True) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_key = label_key

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            path = d[key]
            if not isinstance(path, (str, Path)):
                continue
            if key == self.label_key:
                with Image.open(path) as pil:
                    frame = np.asarray(pil, dtype=np.float32)
            else:
                frame = read_image(path).frames[0]
            d[key] = _to_meta_tensor(frame, path)
        return d


class AntiAliasd(MapTransform):
    """Smooth a frame before it is downsampled to ``spatial_size``, exactly as ``Resize(anti_aliasing=True)`` does.

    The same filter as MONAI's: per downsampled axis a Gaussian of sigma ``(input / output - 1) / 2`` (the
    ``skimage`` rule), MONAI's erf-sampled kernel truncated at 4 sigma, zero padding. It is computed with scipy,
    which on one 2D frame takes a fraction of the time of MONAI's torch convolution; ``Resized`` without
    anti-aliasing follows. The frame keeps its geometry, so there is nothing to invert.

    Args:
        keys: image keys (never label maps).
        spatial_size: the size the frame is about to be resized to.
    """

    def __init__(self, keys: KeysCollection, spatial_size: tuple[int, ...], allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spatial_size = tuple(spatial_size)

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            smoothed = np.asarray(image, dtype=np.float32)
            for axis, (size, out) in enumerate(zip(image.shape[1:], self.spatial_size), start=1):
                sigma = (size / out - 1) / 2
                if sigma > 0:
                    kernel = gaussian_1d(torch.tensor(sigma), truncated=4.0, approx="erf").numpy()
                    smoothed = ndimage.correlate1d(smoothed, kernel, axis=axis, mode="constant")
            d[key] = convert_to_dst_type(smoothed, image, dtype=torch.float32)[0]
        return d


class RandSpeckleNoised(RandomizableTransform, MapTransform):
    """Multiplicative Gaussian noise, ``x * (1 + N(0, std))``: the granular speckle of ultrasound.

    Args:
        keys: image keys.
        prob: probability of applying the noise.
        std: standard deviation of the multiplicative noise.
    """

    def __init__(self, keys: KeysCollection, prob: float = 0.2, std: float = 0.1) -> None:
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys)
        self.std = std

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            noise = self.R.normal(0.0, self.std, size=tuple(d[key].shape)).astype(np.float32)
            d[key] = d[key] * (1.0 + torch.as_tensor(noise))
        return d
