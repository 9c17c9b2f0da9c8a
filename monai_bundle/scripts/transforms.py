"""Bundle transforms that MONAI does not provide: loading through the project's reader, anti-aliasing, and the
random scanner differences of training (speckle, depth gain, burned-in marks)."""

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

__all__ = ["AntiAliasd", "LoadUltrasoundd", "RandBurnedInMarksd", "RandDepthGaind", "RandSpeckleNoised"]


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
        keep_aspect: the frame is resized so that its longest side fits ``spatial_size`` (``Resize`` with
            ``size_mode="longest"``) instead of to ``spatial_size`` itself.
    """

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: tuple[int, ...],
        keep_aspect: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spatial_size = tuple(spatial_size)
        self.keep_aspect = keep_aspect

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            smoothed = np.asarray(image, dtype=np.float32)
            sizes = image.shape[1:]
            if self.keep_aspect:  # the sizes Resize(size_mode="longest") computes
                scale = max(self.spatial_size) / max(sizes)
                outputs = tuple(int(round(size * scale)) for size in sizes)
            else:
                outputs = self.spatial_size
            for axis, (size, out) in enumerate(zip(sizes, outputs), start=1):
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


class RandDepthGaind(RandomizableTransform, MapTransform):
    """Scanner gain settings: a smooth random time-gain curve and a depth attenuation, both row by row.

    Scanners and operators set the time-gain compensation differently, and tissue attenuation darkens the deep rows
    more on one probe than on another. Each row ``y`` of an image of ``H`` rows is multiplied by
    ``exp(g(y)) * ((1 - floor) * exp(-mu * y / H) + floor)``, where ``g`` interpolates ``control_points`` values drawn
    from ``N(0, log_gain_std)`` and ``mu`` is drawn from ``U(0, max_attenuation)``; the result is clipped to [0, 1]
    (images are scaled to [0, 1] before).

    Args:
        keys: image keys.
        prob: probability of applying the change.
        log_gain_std: standard deviation of the gain curve's control points, in natural-log units (0.2: about 1.7 dB).
        control_points: number of control points of the gain curve, spread evenly from top to bottom.
        max_attenuation: largest attenuation coefficient over the image depth.
        floor: fraction of the brightness that attenuation never takes away.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.3,
        log_gain_std: float = 0.2,
        control_points: int = 5,
        max_attenuation: float = 1.5,
        floor: float = 0.3,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys)
        self.log_gain_std, self.control_points = log_gain_std, control_points
        self.max_attenuation, self.floor = max_attenuation, floor

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        points = self.R.normal(0.0, self.log_gain_std, self.control_points)
        mu = self.R.uniform(0.0, self.max_attenuation)
        for key in self.key_iterator(d):
            rows = d[key].shape[-2]
            depth = np.linspace(0.0, 1.0, rows)
            gain = np.exp(np.interp(depth, np.linspace(0.0, 1.0, self.control_points), points))
            gain *= (1 - self.floor) * np.exp(-mu * depth) + self.floor
            profile = torch.as_tensor(gain, dtype=torch.float32)[:, None]
            d[key] = (d[key] * profile).clamp(0.0, 1.0)
        return d


class RandBurnedInMarksd(RandomizableTransform, MapTransform):
    """Burned-in marks anywhere on the image: caliper crosses, dotted measurement lines and filled text boxes.

    Many scans carry the calipers a sonographer placed on the lesion, and some sources black out text with filled
    boxes. Drawn at random places on every kind of image (normal ones included, across lesions or not), they stop
    the network from learning "calipers mean lesion" or a source's fingerprint. The label map is not changed.

    Args:
        keys: image keys.
        prob: probability of drawing marks on an image.
        max_calipers: up to this many caliper pairs (two crosses, sometimes joined by a dotted line).
        box_prob: probability of also drawing a filled box (black or white) of 2-15 % of the image side.
    """

    def __init__(self, keys: KeysCollection, prob: float = 0.3, max_calipers: int = 2, box_prob: float = 0.3) -> None:
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys)
        self.max_calipers, self.box_prob = max_calipers, box_prob

    def _cross(self, image: torch.Tensor, row: int, col: int, value: float) -> None:
        arm = int(self.R.randint(2, 6))
        rows, cols = image.shape[-2:]
        if self.R.random() < 0.5:  # "+"
            image[..., max(row - arm, 0) : row + arm + 1, col] = value
            image[..., row, max(col - arm, 0) : col + arm + 1] = value
        else:  # "x"
            for step in range(-arm, arm + 1):
                for r, c in ((row + step, col + step), (row + step, col - step)):
                    if 0 <= r < rows and 0 <= c < cols:
                        image[..., r, c] = value

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            image = d[key].clone()
            rows, cols = image.shape[-2:]
            for _ in range(int(self.R.randint(1, self.max_calipers + 1))):
                value = float(self.R.uniform(0.8, 1.0))
                ends = [(int(self.R.randint(0, rows)), int(self.R.randint(0, cols))) for _ in range(2)]
                for row, col in ends:
                    self._cross(image, row, col, value)
                if self.R.random() < 0.5:  # dotted line between the two crosses
                    steps = max(abs(ends[1][0] - ends[0][0]), abs(ends[1][1] - ends[0][1])) // 4
                    for t in np.linspace(0.0, 1.0, steps + 1)[1:-1]:
                        r = round(ends[0][0] + t * (ends[1][0] - ends[0][0]))
                        c = round(ends[0][1] + t * (ends[1][1] - ends[0][1]))
                        image[..., r, c] = value
            if self.R.random() < self.box_prob:
                height, width = (int(self.R.uniform(0.02, 0.15) * n) + 1 for n in (rows, cols))
                top, left = int(self.R.randint(0, rows - height + 1)), int(self.R.randint(0, cols - width + 1))
                image[..., top : top + height, left : left + width] = float(self.R.random() < 0.2)
            d[key] = image
        return d
