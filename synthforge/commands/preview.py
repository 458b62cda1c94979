"""``synthforge preview``: a PNG grid to check a dataset at a glance.

Per sample: image | segmentation overlay | depth (viridis over the foreground's range, printed under the tile;
background black) | normals ((x, -y, -z) as RGB: facing the camera = blue) | landmarks with their indices (visible:
green dots, yellow numbers; occluded: red crosses, red numbers). A legend maps the classes shown to their names and
colours (the palette of the file's label space). Drawn with :mod:`synthforge.draw` (numpy + OpenCV, the drawing of
the training reports and ``synthforge predict``) on fixed-size tiles: seconds, not minutes, for a 16-sample grid.

Example::

    synthforge preview data/synth --out preview.png --num 16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from next3d_gen.errors import UserError
from synthforge.commands import OneLineParser

if TYPE_CHECKING:
    from next3d_gen.labels import LabelSpace

PANELS = ("image", "segmentation", "depth", "normals", "landmarks")
TILE = 256
PAD = 4
GAP = 8
"""Pixels between two samples drawn side by side."""
HEADER = 22
CAPTION = 14
"""Height of the strip under each row of tiles (sample number, depth range)."""
BACKGROUND = 255
"""Canvas grey level (white, as the legend strip of :func:`synthforge.draw.legend`)."""


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="synthforge preview", description="Draw a grid of samples of an HDF5 dataset.")
    p.add_argument("path", help="HDF5 file, shard folder or index.json")
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument("--num", type=int, default=16, help="samples to draw (default 16)")
    p.add_argument("--start", type=int, default=0, help="first sample (default 0)")
    p.add_argument("--tile", type=int, default=TILE, help=f"tile side in pixels (default {TILE})")
    return p


def _tile(array: np.ndarray, tile: int, nearest: bool = False) -> np.ndarray:
    """(H, W, 3) uint8 -> (tile, tile, 3): nearest for label colours, else area (shrinking) / bilinear (enlarging)."""
    import cv2

    if nearest:
        mode = cv2.INTER_NEAREST
    else:
        mode = cv2.INTER_AREA if tile < max(array.shape[:2]) else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(array), (tile, tile), interpolation=mode)


def _fitting_scale(label: str, scale: float, width: int) -> float:
    """``scale``, or less so that ``label`` in :func:`synthforge.draw.text`'s font fits in ``width`` pixels."""
    import cv2

    text_width = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0]
    return scale * min(1.0, width / max(text_width, 1))


def sample_tiles(
    sample: dict[str, np.ndarray], space: LabelSpace, tile: int
) -> tuple[list[np.ndarray | None], tuple[float, float] | None]:
    """The five panels of one sample (:data:`PANELS`), (tile, tile, 3) uint8 each, None where the field is absent;
    and the foreground depth range the depth panel spans (None without depth or foreground).

    ``sample``: ``image`` (H, W, 3) uint8; optional ``seg`` (H, W) uint8 ids of ``space``, ``depth`` (H, W) float
    (0 = background), ``normal`` (H, W, 3) int8 camera normals x 127, ``landmarks_2d`` (K, 2) float pixels
    (pixel-centre convention) and ``landmarks_visible`` (K,) bool.
    """
    from synthforge import draw

    image = sample["image"]
    h, w = image.shape[:2]
    tiles: list[np.ndarray | None] = [_tile(image, tile)]
    seg = sample.get("seg")
    tiles.append(
        None
        if seg is None
        else _tile(draw.seg_overlay(image, seg, space, 0.6, keep_background=True), tile, nearest=True)
    )
    depth = sample.get("depth")
    depth_range = None
    if depth is None:
        tiles.append(None)
    else:
        fg = depth > 0
        if fg.any():
            depth_range = float(depth[fg].min()), float(depth[fg].max())
        tiles.append(_tile(draw.depth_colour(depth, fg, *(depth_range or (0.0, 1.0))), tile, nearest=True))
    normal = sample.get("normal")
    tiles.append(
        None
        if normal is None
        else _tile(draw.normal_colour(normal.astype(np.float32) / 127.0, np.any(normal != 0, axis=-1)), tile)
    )
    marks = _tile((image.astype(np.float32) * 0.55).astype(np.uint8), tile)
    if "landmarks_2d" in sample:
        lm = sample["landmarks_2d"].astype(np.float64)
        vis = sample.get("landmarks_visible", np.ones(len(lm), dtype=bool))
        pts = (lm + 0.5) * np.array([tile / w, tile / h]) - 0.5  # tile pixels, pixel-centre convention
        marks = draw.points(marks, pts[vis], (60, 255, 60), radius=1.5)
        marks = draw.crosses(marks, pts[~vis], (255, 40, 40), size=2.0)
        scale = max(0.22, tile / 900)
        for j, (x, y) in enumerate(pts):
            if 0 <= x < tile and 0 <= y < tile:
                draw.text(marks, str(j), (int(x) + 2, int(y) - 2), scale, (255, 255, 90) if vis[j] else (255, 90, 90))
    tiles.append(marks)
    return tiles, depth_range


def draw_grid(path: str, out: str, num: int = 16, start: int = 0, tile: int = TILE) -> Path:
    """Render the preview grid of samples ``start .. start + num - 1`` of ``path`` to the PNG ``out``.

    Raises:
        UserError: ``path`` is not a dataset, or a drawn row is damaged (names file and row); nothing is written.
    """
    from next3d_gen.h5 import ATTR_DEPTH_KIND, DamagedRowError, SampleReader
    from synthforge import draw
    from synthforge.visualize import save_png

    probe = SampleReader(path)
    fields = [f for f in ("image", "seg", "depth", "normal", "landmarks_2d", "landmarks_visible") if f in probe.fields]
    if "image" not in fields:
        raise UserError(f"{path}: no 'image' dataset")
    reader = SampleReader(path, fields=fields)
    n = min(num, max(len(reader) - start, 0))
    if n <= 0:
        raise UserError(f"{path}: no complete samples to draw (it has {len(reader)}, start {start})")
    space = reader.label_space
    relative = reader.attrs.get(ATTR_DEPTH_KIND, "metric") != "metric"
    groups = 1 if n <= 4 else 2  # samples side by side
    rows = (n + groups - 1) // groups
    group_w = len(PANELS) * (tile + PAD) + PAD
    width = groups * group_w + (groups - 1) * GAP
    grid = np.full((HEADER * 2 + rows * (tile + PAD + CAPTION), width, 3), BACKGROUND, np.uint8)
    header = (
        f"{Path(path).name}: {len(reader)} samples, label space {space.name}, {reader.image_size}px; "
        f"landmarks: green visible, red x occluded; depth in {'relative units' if relative else 'metres'}"
    )
    draw.text(grid, header, (PAD, 15), _fitting_scale(header, 0.45, width - 2 * PAD))
    for g in range(groups):
        for j, title in enumerate(PANELS):
            draw.text(
                grid,
                title,
                (g * (group_w + GAP) + PAD + j * (tile + PAD), HEADER + 15),
                _fitting_scale(title, 0.45, tile),
            )
    small = max(0.3, tile / 700)
    present: set[int] = set()
    for k in range(n):
        r, g = divmod(k, groups)
        x0 = g * (group_w + GAP) + PAD
        y0 = HEADER * 2 + r * (tile + PAD + CAPTION)
        try:
            s = reader[start + k]
        except DamagedRowError as err:  # failed checksum / inflate: named, never drawn
            raise UserError(str(err)) from None
        if "seg" in s:
            present.update(int(c) for c in np.unique(s["seg"]))
        tiles, depth_range = sample_tiles(s, space, tile)
        for j, t in enumerate(tiles):
            if t is not None:
                grid[y0 : y0 + tile, x0 + j * (tile + PAD) : x0 + j * (tile + PAD) + tile] = t
        draw.text(grid, f"#{start + k}", (x0, y0 + tile + CAPTION - 3), small)
        if depth_range is not None:
            lo, hi = depth_range
            draw.text(
                grid,
                f"{lo:.3f} - {hi:.3f}{'' if relative else ' m'}",
                (x0 + 2 * (tile + PAD), y0 + tile + CAPTION - 3),
                small,
            )
    reader.close()
    probe.close()
    canvas = np.concatenate([grid, draw.legend(space, present, width)], 0)
    outp = Path(out)
    try:
        outp.parent.mkdir(parents=True, exist_ok=True)
        save_png(str(outp), canvas)
    except OSError as err:
        raise UserError(f"cannot write {outp}: {getattr(err, 'strerror', None) or err}") from None
    return outp


def main(argv: list[str]) -> int:
    """Run the command; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.num < 1:
        raise UserError(f"--num must be >= 1, got {args.num}")
    if args.start < 0:
        raise UserError(f"--start must be >= 0, got {args.start}")
    if args.tile < 32:
        raise UserError(f"--tile must be >= 32, got {args.tile}")
    out = draw_grid(args.path, args.out, args.num, args.start, args.tile)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
