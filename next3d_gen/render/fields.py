"""Small field and image operations shared by the procedural renderer's modules (noise, blurs, masks, rays).

Conventions: images are (C, H, W) or (H, W) float32 tensors; pixel ``(x, y)`` is column ``x``, row ``y``, with pixel
centres on integers; flat pixel ids are ``y * W + x``. Noise functions draw their random grids from a
:class:`Draws` source (the renderer's seeded random stream).
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor


class Draws(Protocol):
    """The random draws the renderer's modules need (the procedural renderer's seeded ``_Rng`` has them)."""

    device: torch.device

    def u(self, r: tuple[float, float]) -> float: ...

    def chance(self, p: float) -> bool: ...

    def int(self, lo: int, hi: int) -> int: ...

    def rand(self, *shape: int) -> Tensor: ...

    def randn(self, *shape: int) -> Tensor: ...

    def colour(self) -> Tensor: ...


def hsv_to_rgb(h: float, s: float, v: float, device: torch.device) -> Tensor:
    """The sRGB colour (3,) float32 in [0, 1] of hue ``h``, saturation ``s`` and value ``v`` (each in [0, 1])."""
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return torch.tensor(rgb, dtype=torch.float32, device=device)


def smoothstep(e0: float | Tensor, e1: float | Tensor, x: Tensor) -> Tensor:
    t = ((x - e0) / (e1 - e0)).clamp(0, 1)
    return t * t * (3 - 2 * t)


def noise2(rng: Draws, res: tuple[int, int], pts: Tensor, channels: int = 1) -> Tensor:
    """Bilinear value noise in [-1, 1] at (N, 2) points (x, y) -> (N, channels); outside [-1, 1] it mirrors."""
    grid = rng.rand(1, channels, res[0], res[1]) * 2 - 1
    if pts.shape[0] == 0:
        return pts.new_zeros(0, channels)
    out = F.grid_sample(grid, pts.view(1, 1, -1, 2), mode="bilinear", padding_mode="reflection", align_corners=True)
    return out.view(channels, -1).T


def field(rng: Draws, res: int, H: int, W: int, channels: int = 1) -> Tensor:
    """Smooth random field (channels, H, W) in about [-1, 1] (a res x res grid, bicubic then bilinear upsampling)."""
    rh = max(2, round(res * H / max(H, W)))
    rw = max(2, round(res * W / max(H, W)))
    grid = rng.rand(1, channels, rh, rw) * 2 - 1
    mh, mw = min(H, max(32, rh * 6)), min(W, max(32, rw * 6))
    out = F.interpolate(grid, size=(mh, mw), mode="bicubic", align_corners=False)
    if (mh, mw) != (H, W):
        out = F.interpolate(out, size=(H, W), mode="bilinear", align_corners=False)
    return out[0]


def fractal(rng: Draws, H: int, W: int, channels: int, base: int, octaves: int) -> Tensor:
    out = torch.zeros(channels, H, W, device=rng.device)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        out += amp * field(rng, base * 2**o, H, W, channels)
        total += amp
        amp *= 0.5
    return out / total


def blur(img: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (C, H, W) (replicate padding)."""
    if sigma <= 0:
        return img
    r = max(1, int(math.ceil(2.5 * sigma)))
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = (k / k.sum()).tolist()
    C, H, W = img.shape
    if r <= 4 or H * W <= 160 * 160:  # shifted sums beat depthwise convolutions for small kernels / images
        y = F.pad(img[None], (r, r, 0, 0), mode="replicate")[0]
        acc = y[:, :, 0:W] * k[0]
        for i in range(1, 2 * r + 1):
            acc = acc + y[:, :, i : i + W] * k[i]
        y = F.pad(acc[None], (0, 0, r, r), mode="replicate")[0]
        out = y[:, 0:H] * k[0]
        for i in range(1, 2 * r + 1):
            out = out + y[:, i : i + H] * k[i]
        return out
    kt = torch.tensor(k, dtype=img.dtype, device=img.device)
    y = F.pad(img[None], (r, r, r, r), mode="replicate")
    y = F.conv2d(y, kt.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
    y = F.conv2d(y, kt.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)
    return y[0]


def blur_lowres(img: Tensor, sigma: float, max_side: int = 96) -> Tensor:
    """Approximate large Gaussian blur of (C, H, W) at reduced resolution (fast for big sigma)."""
    H, W = img.shape[1:]
    f = max(1, int(max(H, W) // max_side))
    if f == 1 or sigma < 2 * f:
        return blur(img, sigma)
    small = F.avg_pool2d(img[None], f, ceil_mode=True)[0]
    small = blur(small, sigma / f)
    return F.interpolate(small[None], size=(H, W), mode="bilinear", align_corners=False)[0]


def rays(K: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Camera-frame rays (..., 3) with z = 1 through pixel centres (x, y) (integer or float tensors)."""
    x = x.to(torch.float32)
    y = y.to(torch.float32)
    ry = (y - K[1, 2]) / K[1, 1]
    rx = (x - K[0, 2] - K[0, 1] * ry) / K[0, 0]
    return torch.stack([rx, ry, torch.ones_like(rx)], -1)


def masked_blur_at(m: Tensor, sigma: float, pix: Tensor) -> Tensor:
    """Gaussian blur of the (H, W) bool mask ``m`` evaluated at flat pixel ids ``pix`` (computed on m's bbox)."""
    H, W = m.shape
    out = torch.zeros(len(pix), dtype=torch.float32, device=m.device)
    nz = m.nonzero()
    if len(nz) == 0:
        return out
    r = int(math.ceil(2.5 * sigma)) + 1
    r0, c0 = max(0, int(nz[:, 0].min()) - r), max(0, int(nz[:, 1].min()) - r)
    r1, c1 = min(H, int(nz[:, 0].max()) + r + 1), min(W, int(nz[:, 1].max()) + r + 1)
    crop = blur(m[r0:r1, c0:c1].float()[None], sigma)[0]
    y = torch.div(pix, W, rounding_mode="floor")
    x = pix % W
    inside = (y >= r0) & (y < r1) & (x >= c0) & (x < c1)
    out[inside] = crop[y[inside] - r0, x[inside] - c0]
    return out


def dilate_at(m: Tensor, k: tuple[int, int], pix: Tensor) -> Tensor:
    """Max-filter (k = (height, width), odd) of the (H, W) bool mask ``m`` at flat pixel ids ``pix``, as bool."""
    H, W = m.shape
    out = torch.zeros(len(pix), dtype=torch.bool, device=m.device)
    nz = m.nonzero()
    if len(nz) == 0:
        return out
    ry, rx = k[0] // 2, k[1] // 2
    r0, c0 = max(0, int(nz[:, 0].min()) - ry), max(0, int(nz[:, 1].min()) - rx)
    r1, c1 = min(H, int(nz[:, 0].max()) + ry + 1), min(W, int(nz[:, 1].max()) + rx + 1)
    crop = F.max_pool2d(m[r0:r1, c0:c1].float()[None, None], k, stride=1, padding=(ry, rx))[0, 0] > 0
    y = torch.div(pix, W, rounding_mode="floor")
    x = pix % W
    inside = (y >= r0) & (y < r1) & (x >= c0) & (x < c1)
    out[inside] = crop[y[inside] - r0, x[inside] - c0]
    return out


def crop_box(x0: float, y0: float, x1: float, y1: float, H: int, W: int) -> tuple[int, int, int, int] | None:
    """Integer pixel box [r0, r1) x [c0, c1) covering the float box, clipped to the image; None when empty."""
    c0, c1 = max(0, int(math.floor(x0))), min(W, int(math.ceil(x1)) + 1)
    r0, r1 = max(0, int(math.floor(y0))), min(H, int(math.ceil(y1)) + 1)
    if c1 <= c0 or r1 <= r0:
        return None
    return r0, r1, c0, c1
