"""``synthforge preview``: a PNG grid to check a dataset at a glance.

Per sample: image | segmentation overlay | depth (turbo colour map over the foreground range, printed in the tile;
background white) | normals ((x, -y, -z) as RGB: facing the camera = blue) | landmarks with their indices (visible:
green dots, yellow numbers; occluded: red crosses, red numbers). A legend maps the classes shown to their names and
colours (the palette of the file's label space). Drawn with PIL on fixed-size tiles: seconds, not minutes, for a
16-sample grid.

Example::

    synthforge preview data/synth --out preview.png --num 16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from next3d_gen.errors import UserError
from synthforge.commands import OneLineParser

PANELS = ("image", "segmentation", "depth", "normals", "landmarks")
TILE = 256
PAD = 4
HEADER = 22


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="synthforge preview", description="Draw a grid of samples of an HDF5 dataset.")
    p.add_argument("path", help="HDF5 file, shard folder or index.json")
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument("--num", type=int, default=16, help="samples to draw (default 16)")
    p.add_argument("--start", type=int, default=0, help="first sample (default 0)")
    p.add_argument("--tile", type=int, default=TILE, help=f"tile side in pixels (default {TILE})")
    return p


def seg_overlay(image: np.ndarray, seg: np.ndarray, palette: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """(H, W, 3) uint8: ``palette[seg]`` blended over the image on labelled pixels (class 0 and 255 left as is)."""
    colours = palette[seg].astype(np.float32)
    labelled = ((seg != 0) & (seg != 255))[..., None]
    out = np.where(labelled, (1 - alpha) * image.astype(np.float32) + alpha * colours, image.astype(np.float32))
    return out.clip(0, 255).astype(np.uint8)


def normal_rgb(normal: np.ndarray) -> np.ndarray:
    """(H, W, 3) int8 x127 camera normals -> uint8 colours of (x, -y, -z) (facing the camera = blue); bg black."""
    n = normal.astype(np.float32) / 127.0
    bg = ~np.any(normal != 0, axis=-1)
    rgb = (np.stack([n[..., 0], -n[..., 1], -n[..., 2]], axis=-1) * 0.5 + 0.5) * 255
    rgb[bg] = 0
    return rgb.clip(0, 255).astype(np.uint8)


def depth_rgb(depth: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(H, W) depth -> (H, W, 3) uint8 turbo colours over the foreground's [min, max]; background white."""
    import matplotlib

    lut = (matplotlib.colormaps["turbo"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    d = depth.astype(np.float32)
    fg = d > 0
    if not fg.any():
        return np.full((*d.shape, 3), 255, dtype=np.uint8), 0.0, 0.0
    lo, hi = float(d[fg].min()), float(d[fg].max())
    idx = np.clip((d - lo) / max(hi - lo, 1e-9) * 255, 0, 255).astype(np.uint8)
    rgb = lut[idx]
    rgb[~fg] = 255
    return rgb, lo, hi


def _font(size: int):  # noqa: ANN202 - PIL font
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def _tile(array: np.ndarray, tile: int, nearest: bool = False):  # noqa: ANN202 - PIL image
    from PIL import Image

    im = Image.fromarray(array)
    return im.resize((tile, tile), Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR)


def draw_grid(path: str, out: str, num: int = 16, start: int = 0, tile: int = TILE) -> Path:
    """Render the preview grid of samples ``start .. start + num - 1`` of ``path`` to the PNG ``out``.

    Raises:
        UserError: ``path`` is not a dataset, or a drawn row is damaged (names file and row); nothing is written.
    """
    from PIL import Image, ImageDraw

    from next3d_gen.h5 import ATTR_DEPTH_KIND, DamagedRowError, SampleReader

    probe = SampleReader(path)
    fields = [f for f in ("image", "seg", "depth", "normal", "landmarks_2d", "landmarks_visible") if f in probe.fields]
    if "image" not in fields:
        raise UserError(f"{path}: no 'image' dataset")
    reader = SampleReader(path, fields=fields)
    n = min(num, max(len(reader) - start, 0))
    if n <= 0:
        raise UserError(f"{path}: no complete samples to draw (it has {len(reader)}, start {start})")
    space = reader.label_space
    palette = space.palette_array()
    relative = reader.attrs.get(ATTR_DEPTH_KIND, "metric") != "metric"
    groups = 1 if n <= 4 else 2  # samples side by side
    rows = (n + groups - 1) // groups
    group_w = len(PANELS) * (tile + PAD) + PAD
    width = groups * group_w + (groups - 1) * 8
    small, medium = _font(max(7, tile // 30)), _font(12)
    legend_rows = (space.num_classes + 4) // 5
    height = HEADER * 2 + rows * (tile + PAD + 14) + 16 * legend_rows + 24
    canvas = Image.new("RGB", (width, height), (250, 250, 250))
    draw = ImageDraw.Draw(canvas)
    draw.text(
        (PAD, 4),
        f"{Path(path).name}: {len(reader)} samples, label space {space.name}, "
        f"{reader.image_size}px; landmarks: green visible, red x occluded; depth in "
        f"{'relative units' if relative else 'metres'}",
        fill=(0, 0, 0),
        font=medium,
    )
    for g in range(groups):
        for j, title in enumerate(PANELS):
            draw.text((g * (group_w + 8) + PAD + j * (tile + PAD), HEADER + 2), title, fill=(0, 0, 0), font=medium)
    present: set[int] = set()
    for k in range(n):
        r, g = divmod(k, groups)
        x0 = g * (group_w + 8) + PAD
        y0 = HEADER * 2 + r * (tile + PAD + 14)
        try:
            s = reader[start + k]
        except DamagedRowError as err:  # failed checksum / inflate: named, never drawn
            raise UserError(str(err)) from None
        image = s["image"]
        h, w = image.shape[:2]
        tiles = [_tile(image, tile)]
        if "seg" in s:
            present.update(int(c) for c in np.unique(s["seg"]) if c not in (space.background, 255))
            tiles.append(_tile(seg_overlay(image, s["seg"], palette), tile, nearest=True))
        else:
            tiles.append(None)
        lo = hi = 0.0
        if "depth" in s:
            d_rgb, lo, hi = depth_rgb(s["depth"])
            tiles.append(_tile(d_rgb, tile, nearest=True))
        else:
            tiles.append(None)
        tiles.append(_tile(normal_rgb(s["normal"]), tile) if "normal" in s else None)
        tiles.append(_tile((image.astype(np.float32) * 0.55).astype(np.uint8), tile))
        for j, t in enumerate(tiles):
            if t is not None:
                canvas.paste(t, (x0 + j * (tile + PAD), y0))
        draw.text((x0, y0 + tile + 1), f"#{start + k}", fill=(0, 0, 0), font=small)
        if "depth" in s and hi > 0:
            unit = "" if relative else " m"
            draw.text((x0 + 2 * (tile + PAD), y0 + tile + 1), f"{lo:.3f} - {hi:.3f}{unit}", fill=(0, 0, 0), font=small)
        if "landmarks_2d" in s:
            lx0 = x0 + 4 * (tile + PAD)
            sx, sy = tile / w, tile / h
            lm = s["landmarks_2d"]
            vis = s.get("landmarks_visible", np.ones(len(lm), dtype=bool))
            for j, (x, y) in enumerate(lm):
                # pixel-centre convention: pixel x spans [x - 0.5, x + 0.5] -> tile coordinates
                px, py = lx0 + (x + 0.5) * sx, y0 + (y + 0.5) * sy
                if not (lx0 <= px < lx0 + tile and y0 <= py < y0 + tile):
                    continue
                if vis[j]:
                    draw.ellipse((px - 1.5, py - 1.5, px + 1.5, py + 1.5), fill=(60, 255, 60))
                    colour = (255, 255, 90)
                else:
                    draw.line((px - 2, py - 2, px + 2, py + 2), fill=(255, 40, 40))
                    draw.line((px - 2, py + 2, px + 2, py - 2), fill=(255, 40, 40))
                    colour = (255, 90, 90)
                draw.text((px + 2, py - 2), str(j), fill=colour, font=small)
    ly = HEADER * 2 + rows * (tile + PAD + 14) + 6
    col_w = width // 5
    for m, c in enumerate(sorted(present)):
        lx, lyy = PAD + (m % 5) * col_w, ly + (m // 5) * 16
        swatch = tuple(int(v) for v in space.palette[c])
        draw.rectangle((lx, lyy + 2, lx + 12, lyy + 12), fill=swatch, outline=(0, 0, 0))
        draw.text((lx + 16, lyy), f"{c} {space.classes[c]}", fill=(0, 0, 0), font=medium)
    reader.close()
    probe.close()
    outp = Path(out)
    try:
        outp.parent.mkdir(parents=True, exist_ok=True)
        canvas.save(outp, format="PNG")
    except OSError as err:
        raise UserError(f"cannot write {outp}: {err.strerror or err}") from None
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
