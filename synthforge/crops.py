"""Image files and square face crops: the one implementation shared by stage I (:mod:`synthforge.data`), stage II
(:mod:`label_finetune.datasets`), prediction (:mod:`synthforge.predict`, :mod:`synthforge.inference`) and the
benchmarks.

Conventions (project-wide): images are (H, W, 3) uint8 RGB numpy arrays; pixel coordinates are (x, y) with integer
values at pixel centres, so an image of width W spans [-0.5, W - 0.5]. A crop is a (2, 3) float64 affine matrix
``A`` mapping source-image pixels to crop pixels (``[u, v] = A @ [x, y, 1]``); ``cv2.warpAffine`` uses the same
pixel-centre convention, so :func:`warp_image` ``(image, A, R)`` is the crop and :func:`invert_affine` ``(A)`` maps
crop points back. A square crop window is (centre x, centre y, side) in source pixels; :func:`crop_matrix` maps its
edges onto the crop's edges [-0.5, R - 0.5].

Two ways of measuring a box's longer side are in use (see :func:`window_side`): stage I's (``landmark_box``: between
the extreme points, at least 1 pixel) and stage II's (``pixel_extent``: the extreme pixels counted, + 1).
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import torch

from next3d_gen.errors import UserError

# ------------------------------------------------------------------------------------------------------ image files


def decode_image(data: np.ndarray) -> np.ndarray | None:
    """Decode an encoded image file's bytes ((N,) uint8; any format OpenCV reads) to (H, W, 3) uint8 RGB (grey and
    RGBA converted), or None when the bytes are not a decodable image."""
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None or image.ndim != 3 or min(image.shape[:2]) < 1:
        return None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_image(path: Path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB.

    Raises:
        UserError: naming the file when it is missing or cannot be decoded.
    """
    if not path.is_file():
        raise UserError(f"missing image file: {path}")
    image = decode_image(np.fromfile(str(path), dtype=np.uint8))
    if image is None:
        raise UserError(f"unreadable image file: {path}")
    return image


def read_gray(path: Path) -> np.ndarray:
    """Read a single-channel label/mask image as (H, W) uint8 (the first channel if the file is colour).

    Raises:
        UserError: naming the file when it is missing, cannot be decoded or is not 8-bit.
    """
    if not path.is_file():
        raise UserError(f"missing label file: {path}")
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise UserError(f"unreadable label file: {path}")
    if image.ndim == 3:
        image = image[..., 0]
    if image.dtype != np.uint8:
        raise UserError(f"label file is not 8-bit: {path}")
    return image


def image_to_tensor(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """An (H, W, 3) numpy RGB image (uint8, or float in [0, 1]) or a (3, H, W) tensor (uint8, or float in [0, 1])
    -> (3, H, W) float32 tensor in [0, 1] (uint8 divided by 255).

    Raises:
        ValueError / TypeError: another shape or type.
    """
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an H x W x 3 RGB array, got shape {image.shape}")
        t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    elif isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a 3 x H x W tensor, got shape {tuple(image.shape)}")
        t = image
    else:
        raise TypeError(f"unsupported image type {type(image).__name__}")
    if t.dtype == torch.uint8:
        return t.float() / 255.0
    return t.float()


# ------------------------------------------------------------------------------------------------- boxes, windows


def landmark_box(landmarks: np.ndarray) -> tuple[float, float, float]:
    """Stage I's box measure: centre (x, y) and longer side ``max(width, height, 1)`` of the (K, 2) points' box,
    pixels (computed in the points' dtype)."""
    lo, hi = landmarks.min(0), landmarks.max(0)
    c = (lo + hi) / 2
    return float(c[0]), float(c[1]), float(max(hi[0] - lo[0], hi[1] - lo[1], 1.0))


def box_from_points(points: np.ndarray) -> np.ndarray:
    """Tight box of (K, 2) pixel points -> (4,) float64 x0, y0, x1, y1."""
    return np.array([points[:, 0].min(), points[:, 1].min(), points[:, 0].max(), points[:, 1].max()], np.float64)


def mask_box_points(mask: np.ndarray) -> np.ndarray:
    """(2, 2) float32 points ``[[x0, y0], [x1, y1]]``: pixel centres of the extreme True pixels of an (H, W) bool
    mask, i.e. its box in the landmarks' convention. ValueError if the mask is empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("mask_box_points: the mask is empty")
    return np.array([[cols[0], rows[0]], [cols[-1], rows[-1]]], dtype=np.float32)


def window_side(extent: float, scale: float, pixel_extent: bool = False) -> float:
    """Side (pixels) of the square crop window over a box whose longer side, between its extreme pixel centres, is
    ``extent``: ``scale * extent`` (stage I; :func:`landmark_box` already makes ``extent`` >= 1), or with
    ``pixel_extent`` (stage II: the extreme pixels counted) ``max(scale * (extent + 1), 1)``."""
    if pixel_extent:
        return max(scale * (extent + 1.0), 1.0)
    return extent * scale


def box_window(box: np.ndarray, scale: float, pixel_extent: bool = False) -> tuple[float, float, float]:
    """Crop window (centre x, centre y, side) of a (4,) x0, y0, x1, y1 box: centred on it, side by
    :func:`window_side` of its longer side."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return 0.5 * (x0 + x1), 0.5 * (y0 + y1), window_side(max(x1 - x0, y1 - y0), scale, pixel_extent)


def crop_matrix(
    cx: float, cy: float, side: float, out_size: int, rotation_deg: float = 0.0, flip: bool = False
) -> np.ndarray:
    """(2, 3) float64 affine mapping source pixels to a square ``out_size`` crop of a square window.

    The window is the square of ``side`` source pixels centred on (cx, cy), turned so that the crop's content appears
    rotated by ``rotation_deg`` counter-clockwise as displayed (y down: a point at angle t from the centre, measured
    from +x towards +y, lands at angle t - rotation_deg), then optionally mirrored horizontally about the crop's
    centre. Unrotated and unmirrored, ``x' = (x - cx) * out_size / side + out_size / 2 - 0.5`` (same for y),
    so the window's edges map to the crop's edges [-0.5, out_size - 0.5].
    """
    s = out_size / side
    theta = math.radians(rotation_deg)
    cos, sin = math.cos(theta) * s, math.sin(theta) * s
    fx = -1.0 if flip else 1.0
    m = np.array([[fx * cos, fx * sin, 0.0], [0.0 - sin, cos, 0.0]])  # 0.0 - sin: +0.0 when unrotated
    m[:, 2] = -(m[:, :2] @ np.array([cx, cy], dtype=np.float64)) + out_size / 2 - 0.5
    return m


def face_crop_matrix(points: np.ndarray, crop_scale: float, out_size: int) -> np.ndarray:
    """(2, 3) float64 affine of stage I's un-jittered training crop around (K, 2) points (pixel-centre convention).

    The same window :class:`~synthforge.data.dataset.SynthFaceDataset` crops for validation: a square of
    ``crop_scale`` x the larger side of the points' box (:func:`landmark_box`), centred on the box centre, mapped to
    ``out_size`` pixels by :func:`crop_matrix`. Use it to crop real faces exactly as the network saw synthetic ones.
    """
    cx, cy, side = landmark_box(np.asarray(points, dtype=np.float64))
    return crop_matrix(cx, cy, side * float(crop_scale), out_size)


# ---------------------------------------------------------------------------------------------- points and warps


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine or (3, 3) homography to (K, 2) points (computed in float64).

    Returns:
        (K, 2) points in the input's float dtype (float32 for integer input).
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape == (2, 3):
        m = np.vstack([m, [0.0, 0.0, 1.0]])
    pts = np.asarray(points)
    p = np.concatenate([pts.astype(np.float64), np.ones((len(pts), 1))], 1) @ m.T
    dtype = pts.dtype if np.issubdtype(pts.dtype, np.floating) else np.float32
    return (p[:, :2] / p[:, 2:3]).astype(dtype)


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a (2, 3) affine matrix (crop -> source pixels), float64."""
    return cv2.invertAffineTransform(np.asarray(matrix, np.float64))


def warp_image(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Crop an (H, W, C) image with the (2, 3) affine ``matrix`` to (size, size, C), same dtype (bilinear; 0 outside
    the source)."""
    return cv2.warpAffine(
        image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )


def warp_labels(labels: np.ndarray, matrix: np.ndarray, size: int, fill: float) -> np.ndarray:
    """Crop an (H, W) or (H, W, C) label map (class ids, depth, normals, UV) with the (2, 3) affine ``matrix`` to
    (size, size[, C]), same dtype: nearest neighbour (no blended labels), ``fill`` in every channel outside the
    source."""
    out = cv2.warpAffine(
        labels, matrix, (size, size), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=(fill,) * 4
    )
    return out.reshape((size, size) + labels.shape[2:])
