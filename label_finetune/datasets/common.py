"""Shared pieces of the real-benchmark loaders: reading every annotation file up front, stage II's square face crops
(box, jitter, flip), collation.

Image files, crop matrices, warps and points between frames are :mod:`synthforge.crops`' (shared with stage I and
prediction; its docstring has the coordinate conventions): a crop is a (2, 3) affine ``A`` mapping *original-image*
pixels to *crop* pixels, and :func:`~synthforge.crops.invert_affine` maps predictions back to the original image for
the metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from next3d_gen.errors import UserError
from next3d_gen.labels import IGNORE_INDEX
from synthforge.crops import (
    box_from_points,
    box_window,
    crop_matrix,
    image_to_tensor,
    mask_box_points,
    transform_points,
    warp_image,
    warp_labels,
)

T = TypeVar("T")

VARIABLE_SIZE_KEYS = ("orig_seg",)
"""Sample keys whose tensors differ in size between samples; :func:`collate` keeps them as lists."""


def read_all(paths: Sequence[Path], reader: Callable[[Path], T], what: str) -> list[T]:
    """``[reader(p) for p in paths]``, reading every file even after a bad one.

    Used when a dataset is set up, so that a damaged annotation file is reported before training starts rather than
    when a batch happens to read it.

    Raises:
        UserError: the first file's message (it names the file and what is wrong), plus how many more of ``what``
            (e.g. "landmark files") are bad.
    """
    out: list[T] = []
    errors: list[str] = []
    for path in paths:
        try:
            out.append(reader(path))
        except UserError as err:
            errors.append(str(err))
    if errors:
        more = f" (and {len(errors) - 1} more bad {what})" if len(errors) > 1 else ""
        raise UserError(errors[0] + more)
    return out


def require_dir(path: Path, what: str) -> Path:
    """Return ``path`` if it is a directory, else raise a UserError naming it."""
    if not path.is_dir():
        raise UserError(f"missing {what} folder: {path}")
    return path


def box_from_labels(labels: np.ndarray, background: int) -> np.ndarray:
    """Box of the pixels that are neither ``background`` nor ignore in an (H, W) label map (whole image if none).

    Returns:
        (4,) float64 x0, y0, x1, y1 in pixel-centre coordinates.
    """
    fg = (labels != background) & (labels != IGNORE_INDEX)
    if not fg.any():
        h, w = labels.shape
        return np.array([0.0, 0.0, w - 1.0, h - 1.0])
    return mask_box_points(fg).reshape(4).astype(np.float64)


def square_crop_affine(
    box: np.ndarray,
    scale: float,
    size: int,
    *,
    rotation_deg: float = 0.0,
    shift: tuple[float, float] = (0.0, 0.0),
    flip: bool = False,
) -> np.ndarray:
    """Affine map from original pixels to a ``size`` x ``size`` crop around a box.

    The crop window is a square of side ``max(scale * (longer side + 1), 1)`` (the box's extreme pixels counted:
    :func:`~synthforge.crops.box_window` with ``pixel_extent``) centred on the box centre (moved by ``shift`` times
    that side), its content rotated by ``rotation_deg`` (counter-clockwise as displayed) and optionally mirrored
    horizontally (:func:`~synthforge.crops.crop_matrix`). The window's edges [c - s/2, c + s/2] map to the crop's edges
    [-0.5, size - 0.5].

    Args:
        box: (4,) x0, y0, x1, y1 in original pixel coordinates (pixel centres of the extreme pixels/points).
        scale: window side over the box's longer side.
        size: crop resolution in pixels.
        rotation_deg: in-plane rotation of the content.
        shift: window centre offset (x, y) in units of the window side.
        flip: mirror the crop horizontally.

    Returns:
        (2, 3) float64 matrix: crop = A @ [x, y, 1].
    """
    cx, cy, side = box_window(box, scale, pixel_extent=True)
    return crop_matrix(cx + shift[0] * side, cy + shift[1] * side, side, size, rotation_deg, flip)


@dataclass
class CropConfig:
    """How a face crop is taken.

    Attributes:
        box: ``"landmarks"`` (box of the annotated points), ``"label"`` (box of the non-background labels) or
            ``"image"`` (the whole image).
        scale: window side over the box's longer side.
        jitter_scale: training only: the scale is multiplied by a factor drawn from [1 - j, 1 + j].
        jitter_shift: training only: the centre moves by up to this fraction of the window side in x and y.
        jitter_rotation_deg: training only: in-plane rotation drawn from [-r, r] degrees.
        flip_prob: training only: probability of a horizontal mirror (labels and landmarks are permuted).
    """

    box: str = "landmarks"
    scale: float = 1.4
    jitter_scale: float = 0.1
    jitter_shift: float = 0.05
    jitter_rotation_deg: float = 15.0
    flip_prob: float = 0.0

    def __post_init__(self) -> None:
        if self.box not in ("landmarks", "label", "image"):
            raise UserError(f"crop.box must be 'landmarks', 'label' or 'image', got {self.box!r}")
        if self.scale <= 0:
            raise UserError(f"crop.scale must be positive, got {self.scale}")


def crop_affine(
    box: np.ndarray, crop: CropConfig, size: int, train: bool, rng: np.random.Generator | None
) -> tuple[np.ndarray, bool]:
    """Crop matrix for one sample; random jitter and flip only when ``train``.

    Returns:
        ((2, 3) float64 affine original -> crop, whether the crop is mirrored).
    """
    if not train or rng is None:
        return square_crop_affine(box, crop.scale, size), False
    scale = crop.scale * float(rng.uniform(1.0 - crop.jitter_scale, 1.0 + crop.jitter_scale))
    shift = tuple(float(v) for v in rng.uniform(-crop.jitter_shift, crop.jitter_shift, size=2))
    rot = float(rng.uniform(-crop.jitter_rotation_deg, crop.jitter_rotation_deg))
    flip = bool(rng.random() < crop.flip_prob)
    return square_crop_affine(box, scale, size, rotation_deg=rot, shift=shift, flip=flip), flip  # type: ignore[arg-type]


class FaceBenchmark(Dataset):
    """Base class of the benchmark datasets: a sorted list of records and the crop logic.

    Subclasses fill ``self.records`` (deterministic order) and implement :meth:`load`, which returns the original
    image and its annotations; this class crops them. Samples are dicts:

    * ``image``: (3, R, R) float32 in [0, 1], the face crop.
    * ``affine``: (2, 3) float32, original pixels -> crop pixels.
    * ``index``: int64 position in the dataset; ``orig_size``: (2,) int64 (H, W) of the annotation frame.
    * ``seg``: (R, R) int64 crop labels (IGNORE_INDEX outside the image), parsing datasets.
    * ``landmarks``: (K, 2) float32 crop pixels; ``orig_landmarks``: (K, 2) float32 original pixels.
    * ``orig_seg``: (H, W) uint8 original label map, only with ``return_original=True`` (evaluation).

    Args:
        resolution: crop side R in pixels.
        crop: crop settings.
        train: random jitter/flip (training split) instead of the deterministic crop.
        return_original: also return the original-resolution label map for evaluation.
        seed: base seed of the per-sample random generators (sample i uses seed + i + 1e6 * epoch-free offset).
    """

    background: int = 0
    num_landmarks: int = 0
    landmark_flip: Sequence[int] | None = None
    label_flip: np.ndarray | None = None

    def __init__(
        self, resolution: int, crop: CropConfig, train: bool = False, return_original: bool = False, seed: int = 0
    ) -> None:
        if resolution < 8:
            raise UserError(f"resolution must be at least 8, got {resolution}")
        self.resolution = int(resolution)
        self.crop = crop
        self.train = train
        self.return_original = return_original
        self.seed = seed
        self.records: list[Any] = []
        self._draws = 0

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(image (H, W, 3) uint8 RGB, labels (H, W) uint8 or None, landmarks (K, 2) float32 or None).

        The labels and the landmarks are in the image's pixel frame (pixel centres at integers).
        """
        raise NotImplementedError

    def name(self, index: int) -> str:
        """A short identifier of sample ``index`` (file stem) for reports."""
        return str(index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self.records):
            raise IndexError(index)
        image, labels, landmarks = self.load(index)
        frame = labels.shape if labels is not None else image.shape[:2]
        if self.crop.box == "landmarks" and landmarks is not None:
            box = box_from_points(landmarks)
        elif self.crop.box == "label" and labels is not None:
            box = box_from_labels(labels, self.background)
        elif self.crop.box == "image":
            box = np.array([0.0, 0.0, frame[1] - 1.0, frame[0] - 1.0])
        else:
            raise UserError(f"crop.box={self.crop.box!r} needs annotations this dataset does not provide")
        rng = None
        if self.train:
            # a fresh stream per draw keeps workers independent and runs reproducible for a given seed
            self._draws += 1
            rng = np.random.default_rng([self.seed, index, self._draws, torch.initial_seed() % (2**31)])
        a, flipped = crop_affine(box, self.crop, self.resolution, self.train, rng)
        if flipped and self.num_landmarks and landmarks is not None and self.landmark_flip is None:
            raise UserError(f"crop.flip_prob > 0 is not supported for {self.num_landmarks}-point landmarks")
        sample: dict[str, Any] = {
            "image": image_to_tensor(warp_image(image, a, self.resolution)),
            "affine": torch.from_numpy(a.astype(np.float32)),
            "index": torch.tensor(index, dtype=torch.int64),
            "orig_size": torch.tensor(frame, dtype=torch.int64),
        }
        if labels is not None:
            seg = warp_labels(labels, a, self.resolution, IGNORE_INDEX)
            if flipped and self.label_flip is not None:
                seg = self.label_flip[seg].astype(np.uint8)
            sample["seg"] = torch.from_numpy(seg.astype(np.int64))
            if self.return_original:
                sample["orig_seg"] = torch.from_numpy(labels)
        if landmarks is not None:
            crop_pts = transform_points(a, landmarks.astype(np.float32))
            if flipped and self.landmark_flip is not None:
                crop_pts = crop_pts[np.asarray(self.landmark_flip)]
            sample["landmarks"] = torch.from_numpy(np.ascontiguousarray(crop_pts, dtype=np.float32))
            sample["orig_landmarks"] = torch.from_numpy(landmarks.astype(np.float32))
        return sample


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch samples: fixed-size entries stacked (``default_collate``), :data:`VARIABLE_SIZE_KEYS` kept as lists."""
    out: dict[str, Any] = {}
    for key in VARIABLE_SIZE_KEYS:
        if key in samples[0]:
            out[key] = [s[key] for s in samples]
    rest = [{k: v for k, v in s.items() if k not in VARIABLE_SIZE_KEYS} for s in samples]
    out.update(default_collate(rest))
    return out
