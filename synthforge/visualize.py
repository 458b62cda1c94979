"""Prediction-vs-ground-truth grids for stage-B batches (uint8 RGB numpy images, drawn with OpenCV)."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from next3d_gen.labels import LabelSpace


def _rgb(image: torch.Tensor) -> np.ndarray:
    return (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8)


def _seg_overlay(image: np.ndarray, seg: torch.Tensor, label_space: LabelSpace, alpha: float = 0.6) -> np.ndarray:
    colours = label_space.palette_array()[seg.detach().cpu().numpy().clip(0, 255).astype(np.uint8)]
    return (image * (1 - alpha) + colours * alpha).astype(np.uint8)


def _depth(depth: torch.Tensor, mask: torch.Tensor, vmin: float, vmax: float) -> np.ndarray:
    d = depth.detach().float().squeeze(0).cpu().numpy()
    m = mask.detach().squeeze(0).cpu().numpy().astype(bool)
    norm = np.clip((d - vmin) / max(vmax - vmin, 1e-6), 0, 1)
    coloured = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)[..., ::-1]
    return np.where(m[..., None], coloured, 0).astype(np.uint8)


def _up(image: np.ndarray, upscale: int) -> np.ndarray:
    if upscale == 1:
        return np.ascontiguousarray(image)
    return cv2.resize(image, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_NEAREST)


def _points(image: np.ndarray, pts: torch.Tensor, colour: tuple[int, int, int], upscale: int) -> np.ndarray:
    """Draw points given in the un-enlarged image's pixel-centre coordinates onto the enlarged ``image``."""
    out = np.ascontiguousarray(image.copy())
    sub = 4  # fixed-point sub-pixel drawing (shift=2)
    for x, y in pts.detach().float().cpu().numpy():
        if np.isfinite(x) and np.isfinite(y):
            cx, cy = (x + 0.5) * upscale - 0.5, (y + 0.5) * upscale - 0.5
            cv2.circle(out, (int(round(cx * sub)), int(round(cy * sub))), sub, colour, -1, cv2.LINE_AA, shift=2)
    return out


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
        _text(titles, title, (j * tile_w + 3, 13))
    shown = [c for c in sorted(present) if 0 <= c < label_space.num_classes and c != label_space.background]
    per_row = max(1, grid.shape[1] // 110)
    legend = np.full((16 * ((len(shown) + per_row - 1) // per_row) + 4, grid.shape[1], 3), 255, np.uint8)
    for m, c in enumerate(shown):
        x, y = (m % per_row) * 110 + 3, (m // per_row) * 16 + 3
        colour = tuple(int(v) for v in label_space.palette[c])
        cv2.rectangle(legend, (x, y + 2), (x + 10, y + 12), colour, -1)
        cv2.rectangle(legend, (x, y + 2), (x + 10, y + 12), (0, 0, 0), 1)
        _text(legend, label_space.classes[c], (x + 14, y + 11))
    return np.concatenate([titles, grid, legend], 0)


COLUMNS = ("input", "GT seg + landmarks", "predicted", "GT rel. depth", "predicted depth")
"""Column titles of :func:`prediction_grid`."""


def _text(image: np.ndarray, text: str, origin: tuple[int, int]) -> None:
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.33, (0, 0, 0), 1, cv2.LINE_AA)


def save_png(path: str, image: np.ndarray) -> None:
    """Write an RGB uint8 image as PNG."""
    if not cv2.imwrite(str(path), np.ascontiguousarray(image[..., ::-1])):
        raise OSError(f"cannot write {path}")
