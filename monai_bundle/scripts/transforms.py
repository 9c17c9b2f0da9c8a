"""Bundle transforms that MONAI does not provide: loading through the project's reader, speckle noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform
from PIL import Image

from scripts.reader import read_image

__all__ = ["LoadUltrasoundd", "RandSpeckleNoised"]


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
