"""300W (iBUG release) as users unpack it: ``afw/``, ``helen/{trainset,testset}/``, ``lfpw/{trainset,testset}/``,
``ibug/``, each holding images (``.jpg``/``.png``) with a same-stem ``.pts`` file of 68 points.

Splits (the standard protocol): ``train`` = afw + helen/trainset + lfpw/trainset (3,148 faces), ``common`` =
helen/testset + lfpw/testset (554), ``challenge`` = ibug (135), ``full`` = common + challenge (689).

Coordinates: ``.pts`` files use 1-based pixel coordinates (the centre of the top-left pixel is (1, 1), the Matlab
convention of the annotation tools), so 1 is subtracted on reading to get the project's 0-based pixel-centre
convention.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from label_finetune.datasets.common import CropConfig, FaceBenchmark, read_all, require_dir
from next3d_gen.errors import UserError
from next3d_gen.labels import LANDMARK_FLIP_PERMUTATION, NUM_LANDMARKS
from synthforge.crops import read_image

SUBSETS: dict[str, tuple[str, ...]] = {
    "train": ("afw", "helen/trainset", "lfpw/trainset"),
    "common": ("helen/testset", "lfpw/testset"),
    "challenge": ("ibug",),
    "full": ("helen/testset", "lfpw/testset", "ibug"),
}
"""Folders of each split, relative to the dataset root."""

SPLIT_SIZES: dict[str, int] = {"train": 3148, "common": 554, "challenge": 135, "full": 689}
"""Face counts of the official release (for information; the loader uses whatever files are present)."""

IMAGE_SUFFIXES = (".jpg", ".png", ".jpeg", ".JPG", ".PNG", ".JPEG")

PTS_OFFSET = 1.0
"""Subtracted from .pts coordinates: 1-based pixel centres -> 0-based pixel centres."""


def read_pts(path: Path, num_points: int = NUM_LANDMARKS) -> np.ndarray:
    """Parse an iBUG ``.pts`` file.

    Format: ``version: 1`` / ``n_points: N`` / ``{`` / N lines ``x y`` / ``}``.

    Returns:
        (num_points, 2) float32 (x, y) in 0-based pixel-centre coordinates of the image.

    Raises:
        UserError: naming the file if it is missing, malformed, or holds a number of points other than
            ``num_points``.
    """
    if not path.is_file():
        raise UserError(f"missing landmark file: {path}")
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise UserError(f"unreadable landmark file: {path} ({err.strerror})") from None
    declared = None
    points: list[tuple[float, float]] = []
    inside = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("n_points"):
            try:
                declared = int(line.split(":", 1)[1])
            except (IndexError, ValueError):
                raise UserError(f"malformed n_points line in landmark file: {path}") from None
        elif line == "{":
            inside = True
        elif line == "}":
            inside = False
        elif inside:
            parts = line.split()
            try:
                if len(parts) != 2:
                    raise ValueError
                points.append((float(parts[0]), float(parts[1])))
            except ValueError:
                raise UserError(f"malformed point line {line!r} in landmark file: {path}") from None
    if declared is not None and declared != len(points):
        raise UserError(f"landmark file declares {declared} points but holds {len(points)}: {path}")
    if len(points) != num_points:
        raise UserError(f"landmark file has {len(points)} points, expected {num_points}: {path}")
    return np.asarray(points, dtype=np.float32) - np.float32(PTS_OFFSET)


def list_split(root: Path, split: str) -> list[tuple[Path, Path]]:
    """Sorted (image, pts) pairs of a split. Every ``.pts`` must have a same-stem image (UserError otherwise)."""
    if split not in SUBSETS:
        raise UserError(f"unknown 300W split {split!r} (choose from {', '.join(SUBSETS)})")
    pairs: list[tuple[Path, Path]] = []
    for sub in SUBSETS[split]:
        folder = require_dir(root / sub, "300W")
        for pts in sorted(folder.glob("*.pts")):
            image = next((pts.with_suffix(s) for s in IMAGE_SUFFIXES if pts.with_suffix(s).is_file()), None)
            if image is None:
                raise UserError(f"missing image file for landmark file: {pts}")
            pairs.append((image, pts))
    if not pairs:
        raise UserError(f"no .pts files in 300W split {split!r} under {root}")
    return pairs


class W300Dataset(FaceBenchmark):
    """300W faces with 68 iBUG landmarks, cropped around the landmark box.

    Every ``.pts`` file of the split is parsed when the dataset is built (UserError naming the first bad file and
    its point count); the parsed points are kept, so samples read only their image.

    Args:
        root: folder holding afw/, helen/, lfpw/, ibug/.
        split: ``train``, ``common``, ``challenge`` or ``full``.
        resolution, crop, train, return_original, seed: see :class:`FaceBenchmark`.
    """

    num_landmarks = NUM_LANDMARKS
    landmark_flip = LANDMARK_FLIP_PERMUTATION

    def __init__(
        self,
        root: str | Path,
        split: str,
        resolution: int,
        crop: CropConfig | None = None,
        train: bool = False,
        return_original: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(resolution, crop or CropConfig(box="landmarks"), train, return_original, seed)
        self.root = require_dir(Path(root), "300W dataset root")
        self.split = split
        self.records = list_split(self.root, split)
        self.points: list[np.ndarray] = read_all([pts for _, pts in self.records], read_pts, "landmark files")
        """(68, 2) float32 0-based pixel landmarks of each record."""

    def name(self, index: int) -> str:
        image, _ = self.records[index]
        return str(image.relative_to(self.root))

    def load(self, index: int) -> tuple[np.ndarray, None, np.ndarray]:
        image_path, _ = self.records[index]
        return read_image(image_path), None, self.points[index]
