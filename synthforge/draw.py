"""Drawing helpers shared by the report grids, ``synthforge preview`` and ``synthforge predict`` (numpy + OpenCV, RGB
uint8 images).

Colours come from the label space (:meth:`~next3d_gen.labels.LabelSpace.palette_array`). Points use the pixel-centre
convention (integer values are pixel centres) and are drawn with sub-pixel precision.
"""

from __future__ import annotations

from collections.abc import Iterable

import cv2
import numpy as np

from next3d_gen.labels import IGNORE_INDEX, LabelSpace

LEGEND_CELL = 110
"""Width in pixels of one legend entry (swatch + name)."""
LEGEND_ROW = 16
"""Height in pixels of one legend row."""
_SUBPIXEL_SHIFT = 2  # OpenCV fixed-point drawing: coordinates in 1/4 pixels


def text(
    image: np.ndarray,
    label: str,
    origin: tuple[int, int],
    scale: float = 0.33,
    colour: tuple[int, int, int] = (0, 0, 0),
) -> None:
    """Text (black by default) with its baseline at ``origin`` (in place)."""
    cv2.putText(image, label, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def seg_overlay(
    image: np.ndarray, seg: np.ndarray, label_space: LabelSpace, alpha: float = 0.6, keep_background: bool = False
) -> np.ndarray:
    """(H, W, 3) uint8: the class colours of ``seg`` (H, W ints) blended over ``image`` with weight ``alpha``.

    With ``keep_background`` the background class and the ignore value keep the image as is; otherwise every pixel
    is blended (background colour included).
    """
    ids = np.asarray(seg).clip(0, 255).astype(np.uint8)
    colours = label_space.palette_array()[ids]
    blended = image * (1 - alpha) + colours * alpha  # float64
    if keep_background:
        labelled = ((ids != label_space.background) & (ids != IGNORE_INDEX))[..., None]
        blended = np.where(labelled, blended, image)
    return blended.astype(np.uint8)


def points(
    image: np.ndarray, pts: np.ndarray, colour: tuple[int, int, int], upscale: float = 1.0, radius: float = 1.0
) -> np.ndarray:
    """Copy of ``image`` with filled dots at ``pts`` (K, 2), given in the pixels of an image ``upscale`` times
    smaller (pixel-centre convention); non-finite points are skipped."""
    out = np.ascontiguousarray(image.copy())
    sub = 1 << _SUBPIXEL_SHIFT
    for x, y in np.asarray(pts, dtype=np.float64):
        if np.isfinite(x) and np.isfinite(y):
            cx, cy = (x + 0.5) * upscale - 0.5, (y + 0.5) * upscale - 0.5
            cv2.circle(
                out,
                (int(round(cx * sub)), int(round(cy * sub))),
                max(1, int(round(radius * sub))),
                colour,
                -1,
                cv2.LINE_AA,
                shift=_SUBPIXEL_SHIFT,
            )
    return out


def crosses(
    image: np.ndarray, pts: np.ndarray, colour: tuple[int, int, int], upscale: float = 1.0, size: float = 2.0
) -> np.ndarray:
    """Copy of ``image`` with diagonal crosses (half-width ``size`` pixels) at ``pts`` (K, 2), placed as
    :func:`points` places its dots; non-finite points are skipped."""
    out = np.ascontiguousarray(image.copy())
    sub = 1 << _SUBPIXEL_SHIFT
    for x, y in np.asarray(pts, dtype=np.float64):
        if np.isfinite(x) and np.isfinite(y):
            cx, cy = (x + 0.5) * upscale - 0.5, (y + 0.5) * upscale - 0.5
            for dy in (-size, size):
                a = (int(round((cx - size) * sub)), int(round((cy - dy) * sub)))
                b = (int(round((cx + size) * sub)), int(round((cy + dy) * sub)))
                cv2.line(out, a, b, colour, 1, cv2.LINE_AA, shift=_SUBPIXEL_SHIFT)
    return out


def box(image: np.ndarray, xyxy: Iterable[float], colour: tuple[int, int, int], thickness: int = 1) -> None:
    """Rectangle with edges at the (x0, y0, x1, y1) pixel coordinates (in place)."""
    sub = 1 << _SUBPIXEL_SHIFT
    x0, y0, x1, y1 = (int(round(v * sub)) for v in xyxy)
    cv2.rectangle(image, (x0, y0), (x1, y1), colour, thickness, cv2.LINE_AA, shift=_SUBPIXEL_SHIFT)


def legend(label_space: LabelSpace, class_ids: Iterable[int], width: int) -> np.ndarray:
    """(rows * 16 + 4, width, 3) uint8 white strip: a colour swatch and the name of each class in ``class_ids``
    (background and ids outside the space are skipped), as many per row as fit in ``width``."""
    shown = [c for c in sorted(set(class_ids)) if 0 <= c < label_space.num_classes and c != label_space.background]
    per_row = max(1, width // LEGEND_CELL)
    strip = np.full((LEGEND_ROW * ((len(shown) + per_row - 1) // per_row) + 4, width, 3), 255, np.uint8)
    for m, c in enumerate(shown):
        x, y = (m % per_row) * LEGEND_CELL + 3, (m // per_row) * LEGEND_ROW + 3
        colour = tuple(int(v) for v in label_space.palette[c])
        cv2.rectangle(strip, (x, y + 2), (x + 10, y + 12), colour, -1)
        cv2.rectangle(strip, (x, y + 2), (x + 10, y + 12), (0, 0, 0), 1)
        text(strip, label_space.classes[c], (x + 14, y + 11))
    return strip


def depth_colour(depth: np.ndarray, mask: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """(H, W) depth -> (H, W, 3) uint8 viridis colours over [vmin, vmax] on ``mask``, black elsewhere."""
    norm = np.clip((depth.astype(np.float32) - vmin) / max(vmax - vmin, 1e-6), 0, 1)
    coloured = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)[..., ::-1]
    return np.where(mask[..., None], coloured, 0).astype(np.uint8)


def normal_colour(normal: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(H, W, 3) float unit camera normals -> uint8 colours of (x, -y, -z) (facing the camera = blue); black off
    ``mask``."""
    n = normal.astype(np.float32)
    rgb = (np.stack([n[..., 0], -n[..., 1], -n[..., 2]], axis=-1) * 0.5 + 0.5) * 255
    return np.where(mask[..., None], rgb.clip(0, 255), 0).astype(np.uint8)


def face_overlay(
    image: np.ndarray,
    seg: np.ndarray,
    label_space: LabelSpace,
    faces: Iterable[tuple[Iterable[float], np.ndarray | None]],
    alpha: float = 0.5,
) -> np.ndarray:
    """What ``synthforge predict`` shows a person: the photo with parsing colours (background left as is), each
    face's box (yellow) and landmarks (green dots, radius scaled to the box), and a legend of the classes present.

    Args:
        image: (H, W, 3) uint8 RGB.
        seg: (H, W) class ids.
        label_space: colours and names.
        faces: (box (x0, y0, x1, y1), landmarks (K, 2) or None) per face, image pixels.

    Returns:
        (H + legend height, max(W, 220), 3) uint8 RGB.
    """
    out = seg_overlay(image, seg, label_space, alpha, keep_background=True)
    for xyxy, pts in faces:
        xyxy = list(xyxy)
        side = max(xyxy[2] - xyxy[0], xyxy[3] - xyxy[1])
        box(out, xyxy, (255, 220, 0), max(1, int(side // 150)))
        if pts is not None:
            out = points(out, pts, (0, 255, 0), radius=max(1.0, side / 160))
    width = max(out.shape[1], 2 * LEGEND_CELL)
    if width > out.shape[1]:
        out = np.concatenate([out, np.full((out.shape[0], width - out.shape[1], 3), 255, np.uint8)], 1)
    return np.concatenate([out, legend(label_space, np.unique(seg).tolist(), width)], 0)
