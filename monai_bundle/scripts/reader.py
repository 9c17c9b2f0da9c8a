"""One reader for every ultrasound input the bundle accepts.

Training, evaluation, inference, the command-line tool and the Slicer module all read images through
:func:`read_image`, so an image is converted to grey in exactly one way everywhere.

Colour to grey: ITU-R BT.601 luma, ``0.299 R + 0.587 G + 0.114 B``, computed in float (palette images are
expanded to RGB first, an alpha channel is ignored). Intensities keep their original scale; the bundle's
transforms rescale each image to [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["ImageReadError", "UltrasoundImage", "PICTURE_SUFFIXES", "read_image", "rgb_to_grey", "is_supported"]

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)

# Larger images are refused instead of exhausting memory; ultrasound frames are rarely above 2000 px.
MAX_PIXELS_PER_FRAME = 8192 * 8192


class ImageReadError(ValueError):
    """An input file could not be read as an ultrasound image; the message names the file and the problem."""


@dataclass
class UltrasoundImage:
    """Grey frames of one input file and the geometry needed to write results aligned with it.

    Args:
        frames: (frames, rows, columns) float32 grey values in the file's own intensity scale.
        path: the file that was read.
        kind: "picture" (PNG/JPEG/...), "dicom" or "volume" (NIfTI/NRRD/MHA); chooses the default output format.
        spacing: (row, column) pixel size in mm, None when the file does not say.
        origin: position of the first pixel in mm (LPS), None when unknown.
        direction: 3x3 direction cosines (LPS), None when unknown.
        source: format-specific object the writers need (e.g. the pydicom dataset for DICOM SEG).
    """

    frames: np.ndarray
    path: Path
    kind: str = "picture"
    spacing: tuple[float, float] | None = None
    origin: tuple[float, float, float] | None = None
    direction: np.ndarray | None = None
    source: Any = field(default=None, repr=False)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def frame_shape(self) -> tuple[int, int]:
        return int(self.frames.shape[1]), int(self.frames.shape[2])


def rgb_to_grey(rgb: np.ndarray) -> np.ndarray:
    """Convert (..., 3 or 4) colour pixels to grey with BT.601 luma; alpha is ignored."""
    return (rgb[..., :3].astype(np.float32) @ LUMA_WEIGHTS).astype(np.float32)


def is_supported(path: str | Path) -> bool:
    """Whether the file name has a suffix the reader handles."""
    return Path(path).suffix.lower() in PICTURE_SUFFIXES


def _read_picture(path: Path) -> UltrasoundImage:
    with Image.open(path) as pil:
        if pil.width * pil.height > MAX_PIXELS_PER_FRAME:
            raise ImageReadError(f"{path}: image of {pil.width}x{pil.height} pixels is larger than supported")
        if pil.mode in ("P", "PA", "LA", "CMYK", "YCbCr", "HSV", "LAB"):
            pil = pil.convert("RGBA" if pil.mode in ("PA", "LA") else "RGB")
        array = np.asarray(pil)
    grey = rgb_to_grey(array) if array.ndim == 3 else array.astype(np.float32)
    return UltrasoundImage(frames=grey[np.newaxis], path=path, kind="picture")


def read_image(path: str | Path) -> UltrasoundImage:
    """Read one image file into grey frames plus geometry.

    Args:
        path: a PNG, JPEG, BMP or TIFF file.

    Raises:
        ImageReadError: the file is missing, empty, truncated, of an unsupported kind or too large;
            the message starts with the file name.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: file is empty")
    if not is_supported(path):
        raise ImageReadError(f"{path}: unsupported file type '{path.suffix}'")
    try:
        image = _read_picture(path)
    except ImageReadError:
        raise
    except (OSError, ValueError, SyntaxError) as error:
        raise ImageReadError(f"{path}: cannot be read as an image ({error})") from error
    if image.frames.size == 0 or min(image.frame_shape) < 2:
        raise ImageReadError(f"{path}: image has no usable pixels (shape {image.frames.shape})")
    return image
