"""LaPa as users unpack it: ``<root>/{train,val,test}/{images/<name>.jpg, labels/<name>.png, landmarks/<name>.txt}``.

Labels are uint8 class ids in LaPa's official order (see :data:`next3d_gen.labels.LAPA`, background = 0, hair = 10;
no remapping). Landmark files hold the count (106) on the first line and then 106 ``x y`` lines; they are read as
0-based pixel coordinates (LaPa's annotation tools are Python/OpenCV based; the 1-pixel question matters little at
LaPa's resolution but is stated here so it can be changed in one place: :data:`LANDMARK_OFFSET`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from label_finetune.datasets.common import CropConfig, FaceBenchmark, read_all, require_dir
from next3d_gen.errors import UserError
from next3d_gen.labels import LAPA
from synthforge.crops import read_gray, read_image

SPLITS = ("train", "val", "test")
NUM_LANDMARKS = 106
LANDMARK_OFFSET = 0.0
"""Subtracted from the file's coordinates to get 0-based pixel centres."""
INTER_OCULAR_106 = (66, 79)
"""Outer eye corners in LaPa's 106-point order (the published code's NME normaliser)."""


def read_landmarks_txt(path: Path, num_points: int = NUM_LANDMARKS) -> np.ndarray:
    """Parse a LaPa landmark file -> (num_points, 2) float32 pixel coordinates (UserError naming the file)."""
    if not path.is_file():
        raise UserError(f"missing landmark file: {path}")
    try:
        values = path.read_text(encoding="utf-8", errors="replace").split()
        numbers = [float(v) for v in values]
    except (OSError, ValueError):
        raise UserError(f"unreadable landmark file: {path}") from None
    if not numbers or int(numbers[0]) != num_points or len(numbers) != 1 + 2 * num_points:
        count = int(numbers[0]) if numbers else 0
        raise UserError(f"landmark file has {count} points ({len(numbers)} numbers), expected {num_points}: {path}")
    return np.asarray(numbers[1:], dtype=np.float32).reshape(num_points, 2) - np.float32(LANDMARK_OFFSET)


def list_split(root: Path, split: str, with_landmarks: bool = True) -> list[tuple[Path, Path, Path | None]]:
    """Sorted (image, label, landmarks) triples of a split, from the image folder's ``*.jpg`` names."""
    if split not in SPLITS:
        raise UserError(f"unknown LaPa split {split!r} (choose from {', '.join(SPLITS)})")
    folder = require_dir(root / split, "LaPa split")
    images = require_dir(folder / "images", "LaPa images")
    labels = require_dir(folder / "labels", "LaPa labels")
    marks = require_dir(folder / "landmarks", "LaPa landmarks") if with_landmarks else None
    records = []
    for image in sorted(images.glob("*.jpg")):
        label = labels / f"{image.stem}.png"
        if not label.is_file():
            raise UserError(f"missing label file: {label}")
        lm = marks / f"{image.stem}.txt" if marks is not None else None
        if lm is not None and not lm.is_file():
            raise UserError(f"missing landmark file: {lm}")
        records.append((image, label, lm))
    if not records:
        raise UserError(f"no images in {images}")
    return records


class LapaDataset(FaceBenchmark):
    """LaPa faces with 11-class label maps and 106 landmarks.

    Args:
        root: folder holding train/, val/, test/.
        split: ``train``, ``val`` or ``test``.
        with_landmarks: read the 106 landmarks (needed for landmark training/evaluation or ``crop.box="landmarks"``).
            Every landmark file of the split is parsed when the dataset is built (UserError naming the first bad
            file); the label PNG of every image must exist (checked when listing).
        resolution, crop, train, return_original, seed: see :class:`FaceBenchmark`.
    """

    background = LAPA.background
    label_flip = LAPA.flip_lut()
    landmark_flip = None  # the 106-point mirror permutation is not part of the release

    def __init__(
        self,
        root: str | Path,
        split: str,
        resolution: int,
        crop: CropConfig | None = None,
        train: bool = False,
        return_original: bool = False,
        seed: int = 0,
        with_landmarks: bool = True,
    ) -> None:
        super().__init__(resolution, crop or CropConfig(box="label", scale=1.2), train, return_original, seed)
        self.root = require_dir(Path(root), "LaPa dataset root")
        self.split = split
        self.num_landmarks = NUM_LANDMARKS if with_landmarks else 0
        self.records = list_split(self.root, split, with_landmarks)
        marks = [lm for _, _, lm in self.records if lm is not None]
        self.points: list[np.ndarray] | None = (
            read_all(marks, read_landmarks_txt, "landmark files") if with_landmarks else None
        )
        """(106, 2) float32 pixel landmarks of each record (None without landmarks)."""

    def name(self, index: int) -> str:
        return self.records[index][0].stem

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        image_path, label_path, _ = self.records[index]
        image = read_image(image_path)
        labels = read_gray(label_path)
        if labels.shape != image.shape[:2]:
            raise UserError(
                f"label map is {labels.shape[1]}x{labels.shape[0]}, image is "
                f"{image.shape[1]}x{image.shape[0]}: {label_path}"
            )
        if labels.max(initial=0) >= LAPA.num_classes and (labels[labels != 255] >= LAPA.num_classes).any():
            raise UserError(f"label map holds ids >= {LAPA.num_classes}: {label_path}")
        landmarks = self.points[index] if self.points is not None else None
        return image, labels, landmarks
