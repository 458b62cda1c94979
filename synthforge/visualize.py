"""Prediction-vs-ground-truth grids for stage-B batches (uint8 RGB numpy images, drawn with :mod:`synthforge.draw`)."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from next3d_gen.labels import LabelSpace
from synthforge import draw


def _rgb(image: torch.Tensor) -> np.ndarray:
    return (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8)


def _seg_overlay(image: np.ndarray, seg: torch.Tensor, label_space: LabelSpace, alpha: float = 0.6) -> np.ndarray:
    return draw.seg_overlay(image, seg.detach().cpu().numpy(), label_space, alpha)


def _depth(depth: torch.Tensor, mask: torch.Tensor, vmin: float, vmax: float) -> np.ndarray:
    d = depth.detach().float().squeeze(0).cpu().numpy()
    m = mask.detach().squeeze(0).cpu().numpy().astype(bool)
    return draw.depth_colour(d, m, vmin, vmax)


def _up(image: np.ndarray, upscale: int) -> np.ndarray:
    if upscale == 1:
        return np.ascontiguousarray(image)
    return cv2.resize(image, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_NEAREST)


def _points(image: np.ndarray, pts: torch.Tensor, colour: tuple[int, int, int], upscale: int) -> np.ndarray:
    """Draw points given in the un-enlarged image's pixel-centre coordinates onto the enlarged ``image``."""
    return draw.points(image, pts.detach().float().cpu().numpy(), colour, upscale)


def prediction_grid(
    batch: dict[str, torch.Tensor],
    seg_pred: torch.Tensor,
    depth_pred: torch.Tensor,
    landmarks_pred: torch.Tensor,
    label_space: LabelSpace,
    max_rows: int = 4,
    upscale: int = 2,
) -> np.ndarray:
    """One row per sample: input | GT seg + GT landmarks (green) | predicted seg + predicted landmarks (red) |
    GT relative depth | predicted relative depth (aligned to the GT median, GT foreground only), under a title
    strip naming the columns and above a legend of the classes drawn.

    Args:
        batch: a stage-B batch (``image``, ``seg``, ``depth``, ``depth_mask``, ``landmarks``).
        seg_pred: (B, H, W) int64 predicted ids.
        depth_pred: (B, 1, H, W) float predicted relative depth, metres.
        landmarks_pred: (B, 68, 2) crop pixels.
        label_space: colours.
        max_rows: samples drawn.
        upscale: nearest-neighbour enlargement of every tile.

    Returns:
        (title + rows * H * upscale + legend, 5 * W * upscale, 3) uint8 RGB.
    """
    rows = []
    present: set[int] = set()
    n = min(max_rows, batch["image"].shape[0])
    for i in range(n):
        img = _rgb(batch["image"][i])
        mask = batch["depth_mask"][i]
        gt_d = batch["depth"][i]
        pd = depth_pred[i].float()
        if mask.any():
            pd = pd - pd[mask].median() + gt_d[mask].median()
            vmin, vmax = float(gt_d[mask].min()), float(gt_d[mask].max())
        else:
            vmin, vmax = -0.1, 0.1
        present.update(int(c) for c in torch.unique(batch["seg"][i]).tolist() + torch.unique(seg_pred[i]).tolist())
        gt_seg = _up(_seg_overlay(img, batch["seg"][i], label_space), upscale)
        pred_seg = _up(_seg_overlay(img, seg_pred[i], label_space), upscale)
        tiles = [
            _up(img, upscale),
            _points(gt_seg, batch["landmarks"][i], (0, 255, 0), upscale),
            _points(pred_seg, landmarks_pred[i], (255, 0, 0), upscale),
            _up(_depth(gt_d, mask, vmin, vmax), upscale),
            _up(_depth(pd, mask, vmin, vmax), upscale),
        ]
        rows.append(np.concatenate(tiles, 1))
    grid = np.concatenate(rows, 0)
    tile_w = grid.shape[1] // len(COLUMNS)
    titles = np.full((18, grid.shape[1], 3), 255, np.uint8)
    for j, title in enumerate(COLUMNS):
        draw.text(titles, title, (j * tile_w + 3, 13))
    legend = draw.legend(label_space, present, grid.shape[1])
    return np.concatenate([titles, grid, legend], 0)


COLUMNS = ("input", "GT seg + landmarks", "predicted", "GT rel. depth", "predicted depth")
"""Column titles of :func:`prediction_grid`."""


_text = draw.text  # kept for callers of the former private helper (benchmarks/bench_real_transfer.py)


def save_png(path: str, image: np.ndarray) -> None:
    """Write an RGB uint8 image as PNG."""
    if not cv2.imwrite(str(path), np.ascontiguousarray(image[..., ::-1])):
        raise OSError(f"cannot write {path}")
