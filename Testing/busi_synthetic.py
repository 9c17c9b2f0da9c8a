"""Tiny synthetic datasets: the public BUSI layout with the problems of the real one, and the ``images/ masks/
labels.csv`` layout of a clinic's own data.

BUSI: speckled grey "scans" with dark elliptical lesions; one image with two masks, one RGBA mask, one duplicate
pair (a cropped and rescaled copy of another image), one corrupt image and one image whose mask has the wrong size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

SIZE = (72, 88)  # rows, columns


def _scan(rng: np.random.Generator) -> np.ndarray:
    rows, cols = np.mgrid[0 : SIZE[0], 0 : SIZE[1]]
    base = 120 + 40 * np.sin(rows / (5 + rng.uniform(0, 4))) * np.cos(cols / (7 + rng.uniform(0, 4)))
    # speckle correlated over a few pixels, as in real B-mode images
    speckle = ndimage.gaussian_filter(rng.gamma(4.0, 0.25, SIZE), 1.5)
    return np.clip(base * speckle / speckle.mean(), 0, 255)


def _ellipse(centre: tuple[float, float], radii: tuple[float, float]) -> np.ndarray:
    rows, cols = np.mgrid[0 : SIZE[0], 0 : SIZE[1]]
    return ((rows - centre[0]) / radii[0]) ** 2 + ((cols - centre[1]) / radii[1]) ** 2 <= 1


def _save_mask(mask: np.ndarray, path: Path, mode: str = "1") -> None:
    if mode == "RGBA":
        rgba = np.zeros(mask.shape + (4,), dtype=np.uint8)
        rgba[mask, :3] = 255
        rgba[..., 3] = 255
        Image.fromarray(rgba, "RGBA").save(path)
    else:
        Image.fromarray(mask.astype(np.uint8) * 255).convert(mode).save(path)


def make_busi(root: Path, per_class: dict[str, int] | None = None, seed: int = 0) -> dict[str, Path]:
    """Write the dataset under ``root``; returns the paths of the special cases."""
    per_class = per_class or {"benign": 10, "malignant": 8, "normal": 6}
    rng = np.random.default_rng(seed)
    special: dict[str, Path] = {}
    for label_class, count in per_class.items():
        folder = root / label_class
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(1, count + 1):
            scan = _scan(rng)
            mask = np.zeros(SIZE, dtype=bool)
            if label_class != "normal":
                centre = (rng.uniform(20, 50), rng.uniform(25, 60))
                radii = (rng.uniform(6, 12), rng.uniform(8, 16))
                mask = _ellipse(centre, radii)
                # malignant lesions are darker and irregular, benign ones smooth and brighter
                scan[mask] *= 0.25 if label_class == "malignant" else 0.55
            Image.fromarray(scan.astype(np.uint8)).save(folder / f"{label_class} ({n}).png")
            _save_mask(mask, folder / f"{label_class} ({n})_mask.png")
    benign = root / "benign"
    # a second lesion in its own mask file: the label is the OR of both
    second = _ellipse((60, 15), (5, 6))
    _save_mask(second, benign / "benign (1)_mask_1.png")
    special["multi_mask"] = benign / "benign (1).png"
    # an RGBA mask
    rgba_mask = np.asarray(Image.open(benign / "benign (2)_mask.png"), dtype=bool)
    _save_mask(rgba_mask, benign / "benign (2)_mask.png", mode="RGBA")
    special["rgba_mask"] = benign / "benign (2).png"
    # a duplicate: benign (3) cropped by a few pixels and rescaled, stored under another number
    original = Image.open(benign / "benign (3).png")
    copy = original.crop((3, 2, SIZE[1] - 2, SIZE[0] - 3)).resize((100, 80), Image.BILINEAR)
    copy.save(benign / "benign (40).png")
    Image.open(benign / "benign (3)_mask.png").crop((3, 2, SIZE[1] - 2, SIZE[0] - 3)).resize((100, 80)).save(
        benign / "benign (40)_mask.png"
    )
    special["duplicate_a"], special["duplicate_b"] = benign / "benign (3).png", benign / "benign (40).png"
    # a corrupt image (truncated PNG) with a valid mask
    data = (benign / "benign (4).png").read_bytes()
    (benign / "benign (41).png").write_bytes(data[: len(data) // 3])
    _save_mask(np.zeros(SIZE, dtype=bool), benign / "benign (41)_mask.png")
    special["corrupt"] = benign / "benign (41).png"
    # a mask of another size than its image
    Image.fromarray(np.zeros((10, 10), dtype=np.uint8)).save(benign / "benign (42)_mask.png")
    Image.fromarray(_scan(rng).astype(np.uint8)).save(benign / "benign (42).png")
    special["wrong_mask_size"] = benign / "benign (42).png"
    return special


def make_folder_layout(root: Path, patients: dict[str, list[str]], seed: int = 0) -> Path:
    """A folder in the ``images/ masks/ labels.csv`` layout: each patient's images with their classes, in order."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = ["id,pathology,split_group"]
    for patient, classes in patients.items():
        for n, label_class in enumerate(classes):
            scan = _scan(rng)
            mask = np.zeros(SIZE, dtype=np.uint8)
            if label_class != "normal":
                lesion = _ellipse((rng.uniform(20, 50), rng.uniform(25, 60)), (rng.uniform(6, 12), rng.uniform(8, 16)))
                mask[lesion] = 1 if label_class == "benign" else 2
                scan[lesion] *= 0.25 if label_class == "malignant" else 0.55
            Image.fromarray(scan.astype(np.uint8)).save(root / "images" / f"{patient}_{n:03d}.png")
            Image.fromarray(mask).save(root / "masks" / f"{patient}_{n:03d}.png")
            rows.append(f"{patient}_{n:03d},{label_class},{patient}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root
