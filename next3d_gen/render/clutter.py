"""Cluttered photo-like backgrounds for the procedural renderer: sharp-edged structures, textures, foliage, and
other faces partly in view.

Real photos (AFW, 300W, LaPa) show rooms, walls, windows, shelves, plants and other people behind the subject, in
focus or not; the smooth gradient and noise backgrounds of :meth:`ProceduralRenderer._background` teach a network
that every sharp edge belongs to the face. :func:`draw_clutter` paints such a scene at full resolution. Everything
here is background: the pipeline labels these pixels ``background`` whatever they show (other faces included).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from next3d_gen.render.fields import Draws


def _grid(H: int, W: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(H, W) x and y in [-W/H', ...]: both axes in units of half the longer side, centred on the image."""
    s = max(H, W) / 2.0
    ys = (torch.arange(H, device=device, dtype=torch.float32) + 0.5 - H / 2.0) / s
    xs = (torch.arange(W, device=device, dtype=torch.float32) + 0.5 - W / 2.0) / s
    return xs[None, :].expand(H, W), ys[:, None].expand(H, W)


def _noise(rng: Draws, res: int, H: int, W: int, channels: int = 1) -> Tensor:
    """(channels, H, W) smooth noise in about [-1, 1] with ``res`` cells across the image."""
    grid = rng.rand(1, channels, res + 1, res + 1) * 2 - 1
    return F.interpolate(grid, size=(H, W), mode="bicubic", align_corners=False)[0]


def _cover(sd: Tensor, px: float) -> Tensor:
    """Anti-aliased coverage (H, W) in [0, 1] of the region ``sd < 0`` of a signed distance in image units."""
    return (0.5 - sd / px).clamp(0, 1)


def _paint(bg: Tensor, alpha: Tensor, fill: Tensor) -> Tensor:
    """``bg`` (3, H, W) with ``fill`` (3, H, W) or (3, 1, 1) laid over where ``alpha`` (H, W) is."""
    return bg * (1 - alpha) + fill * alpha


def _texture(rng: Draws, base: Tensor, u: Tensor, v: Tensor, H: int, W: int) -> Tensor:
    """(3, H, W) fill of a structure: plain, stripes or checks of two colours, or a noisy material; with a shading
    ramp along the structure (light falling off)."""
    kind = rng.int(0, 3)
    shade = (1 + rng.u((-0.25, 0.25)) * v)[None]
    fill = base[:, None, None].expand(3, H, W)
    if kind in (1, 2):
        period = rng.u((0.02, 0.15)) if kind == 1 else rng.u((0.03, 0.2))
        wave = torch.sin(u / period * math.pi)
        if kind == 2:
            wave = wave * torch.sin(v / period * math.pi)
        pattern = (wave > 0).float()[None]
        fill = fill * (1 - pattern) + rng.colour()[:, None, None] * pattern
    elif kind == 3:
        grain = 1 + 0.25 * _noise(rng, rng.int(8, 40), H, W) + 0.1 * _noise(rng, rng.int(40, 90), H, W)
        fill = fill * grain
    return fill * shade


def _structure(rng: Draws, bg: Tensor, xs: Tensor, ys: Tensor, px: float) -> Tensor:
    """A wall panel, window, shelf, door or picture frame: a (mostly upright) rectangle, sharp-edged."""
    H, W = xs.shape
    cx, cy = rng.u((-1.1, 1.1)), rng.u((-1.1, 1.1))
    sx, sy = rng.u((0.05, 0.8)), rng.u((0.05, 0.8))
    rot = rng.u((-0.08, 0.08)) if rng.chance(0.8) else rng.u((0.0, math.pi))
    dx, dy = xs - cx, ys - cy
    u = dx * math.cos(rot) + dy * math.sin(rot)
    v = -dx * math.sin(rot) + dy * math.cos(rot)
    sd = torch.maximum(u.abs() - sx, v.abs() - sy)
    fill = _texture(rng, rng.colour(), u, v, H, W)
    bg = _paint(bg, _cover(sd, px), fill)
    if rng.chance(0.4):  # a frame or edge highlight around it
        width = rng.u((1.0, 4.0)) * px
        bg = _paint(bg, _cover(sd.abs() - width, px), rng.colour()[:, None, None])
    return bg


def _bar(rng: Draws, bg: Tensor, xs: Tensor, ys: Tensor, px: float) -> Tensor:
    """A thin straight bar across the image (pole, cable, window bar, table edge)."""
    ang = rng.u((0.0, math.pi)) if rng.chance(0.4) else rng.int(0, 1) * math.pi / 2 + rng.u((-0.05, 0.05))
    off = rng.u((-1.0, 1.0))
    d = xs * math.sin(ang) - ys * math.cos(ang) - off
    width = rng.u((0.5, 5.0)) * px
    return _paint(bg, _cover(d.abs() - width, px), rng.colour()[:, None, None])


def _foliage(rng: Draws, bg: Tensor, xs: Tensor, ys: Tensor, px: float) -> Tensor:
    """Leaves or a bush: thresholded noise in greens and browns with fine texture."""
    H, W = xs.shape
    n = _noise(rng, rng.int(6, 20), H, W)[0] + 0.5 * _noise(rng, rng.int(20, 50), H, W)[0]
    cx, cy, r = rng.u((-1.0, 1.0)), rng.u((-1.0, 1.0)), rng.u((0.3, 0.9))
    region = ((xs - cx) ** 2 + (ys - cy) ** 2).sqrt() / r
    alpha = ((n - region + 0.6) * 6).clamp(0, 1)
    green = torch.tensor([rng.u((0.1, 0.35)), rng.u((0.25, 0.55)), rng.u((0.05, 0.25))], device=bg.device)
    fill = green[:, None, None] * (0.6 + 0.6 * (0.5 + 0.5 * _noise(rng, rng.int(40, 90), H, W)))
    return _paint(bg, alpha, fill)


def _face(rng: Draws, bg: Tensor, xs: Tensor, ys: Tensor, px: float, skin: Tensor, hair: Tensor) -> Tensor:
    """Another person's face partly in view near an image border: hair, skin oval, brows, eyes, nose, mouth."""
    side = rng.int(0, 2)  # left, right, top
    along = rng.u((-0.9, 0.9))
    edge = rng.u((0.75, 1.05))
    cx, cy = [(-edge, along), (edge, along), (along, -edge)][side]
    r = rng.u((0.15, 0.4))
    tilt = rng.u((-0.3, 0.3))
    dx, dy = xs - cx, ys - cy
    u = dx * math.cos(tilt) + dy * math.sin(tilt)
    v = -dx * math.sin(tilt) + dy * math.cos(tilt)
    light = rng.u((-1.0, 1.0))
    hair_sd = ((u / (0.95 * r)) ** 2 + ((v + 0.25 * r) / (1.05 * r)) ** 2).sqrt() - 1
    bg = _paint(bg, _cover(hair_sd * r, px), hair[:, None, None] * (0.8 + 0.2 * _noise(rng, 30, *xs.shape)))
    face_sd = ((u / (0.72 * r)) ** 2 + ((v - 0.1 * r) / (0.95 * r)) ** 2).sqrt() - 1
    shading = (1 + 0.25 * light * u / r - 0.1 * (v / r).clamp(0) ** 2).clamp(0.4, 1.3)
    bg = _paint(bg, _cover(face_sd * r, px), skin[:, None, None] * shading[None])
    dark = skin * 0.35
    for sgn in (-1.0, 1.0):
        eye = ((u - sgn * 0.3 * r) / (0.12 * r)) ** 2 + ((v + 0.05 * r) / (0.05 * r)) ** 2
        bg = _paint(bg, _cover((eye.sqrt() - 1) * 0.05 * r, px), dark[:, None, None] * 0.6)
        brow = ((u - sgn * 0.3 * r) / (0.16 * r)) ** 2 + ((v + 0.2 * r) / (0.03 * r)) ** 2
        bg = _paint(bg, _cover((brow.sqrt() - 1) * 0.03 * r, px) * 0.8, hair[:, None, None] * 0.8)
    nose = (u / (0.07 * r)) ** 2 + ((v - 0.25 * r) / (0.05 * r)) ** 2
    bg = _paint(bg, _cover((nose.sqrt() - 1) * 0.05 * r, px) * 0.5, dark[:, None, None])
    lips = torch.tensor([0.6, 0.25, 0.25], device=bg.device) * 0.5 + skin * 0.5
    mouth = (u / (0.22 * r)) ** 2 + ((v - 0.5 * r) / (0.06 * r)) ** 2
    return _paint(bg, _cover((mouth.sqrt() - 1) * 0.06 * r, px), lips[:, None, None])


def draw_clutter(
    rng: Draws, H: int, W: int, skin_tones: Tensor, hair_colours: Tensor, other_faces_prob: float
) -> Tensor:
    """A cluttered background.

    Args:
        rng: the renderer's seeded draws.
        H, W: image size in pixels.
        skin_tones: (K, 3) float sRGB in [0, 1], skin colours for other faces.
        hair_colours: (M, 3) float sRGB in [0, 1], their hair colours.
        other_faces_prob: probability of one other face near a border (and again of a second one).

    Returns:
        (3, H, W) float32 sRGB in [0, 1] on ``rng.device``.
    """
    device = rng.device
    xs, ys = _grid(H, W, device)
    px = 2.0 / max(H, W)  # one pixel in image units
    top, bottom = rng.colour(), rng.colour()
    t = (ys * 0.5 + 0.5).clamp(0, 1)[None]
    bg = top[:, None, None] * (1 - t) + bottom[:, None, None] * t
    bg = bg * (1 + 0.08 * _noise(rng, rng.int(2, 6), H, W))
    for _ in range(rng.int(2, 8)):
        bg = _structure(rng, bg, xs, ys, px)
    for _ in range(rng.int(0, 5)):
        bg = _bar(rng, bg, xs, ys, px)
    if rng.chance(0.3):
        bg = _foliage(rng, bg, xs, ys, px)
    for _ in range(2):
        if not rng.chance(other_faces_prob):
            break
        skin = skin_tones[rng.int(0, len(skin_tones) - 1)]
        hair = hair_colours[rng.int(0, len(hair_colours) - 1)]
        bg = _face(rng, bg, xs, ys, px, skin, hair)
    return bg.clamp(0, 1)
