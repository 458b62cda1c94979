"""Clothing on the shoulders: colours as portraits have them (many dark jackets and white shirts), fabric folds,
woven patterns, and a shirt seen in the opening of a jacket.

The shoulders' geometry (where the torso is, its neckline) is the procedural renderer's; this module only colours it.
Draws come from the renderer's own stream for clothing (``looks["cloth"]``), so the main stream and every label layer
drawn from it are the same whatever the clothes look like. All fields are (bh, bw) float32 on the background layer's
low-resolution grid; ``along`` / ``across`` are that grid's offsets in full-resolution pixels below and across the
neck base (see :meth:`next3d_gen.render.procedural.ProceduralRenderer._shoulders`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from next3d_gen.render import fields as fx


def cloth_colour(rng: fx.Draws, dark_prob: float, light_prob: float) -> Tensor:
    """An sRGB (3,) float32 colour in [0, 1]: dark (black, navy, charcoal) with probability ``dark_prob``, light
    (white, cream, pale grey) with ``light_prob``, else any hue at moderate saturation (:meth:`Draws.colour`)."""
    x = rng.u((0.0, 1.0))
    if x < dark_prob:
        return fx.hsv_to_rgb(rng.u((0.0, 1.0)), rng.u((0.0, 0.5)), rng.u((0.03, 0.2)), rng.device)
    if x < dark_prob + light_prob:
        return fx.hsv_to_rgb(rng.u((0.0, 1.0)), rng.u((0.0, 0.12)), rng.u((0.75, 0.97)), rng.device)
    return rng.colour()


def fabric_shading(
    rng: fx.Draws, along: Tensor, across: Tensor, head_px: float, fold_range: tuple[float, float], pattern_prob: float
) -> Tensor:
    """Multiplicative (bh, bw) shading of a fabric, about 1: soft folds (two scales of smooth noise, strength drawn
    from ``fold_range``) and, with probability ``pattern_prob``, a woven pattern (stripes, or checks on 40 % of
    patterns) at a random angle, with a period of 2-8 % of the head height ``head_px``."""
    bh, bw = along.shape
    amp = rng.u(fold_range)
    shade = 1 + amp * fx.field(rng, 5, bh, bw, 1)[0] + 0.5 * amp * fx.field(rng, 12, bh, bw, 1)[0]
    if rng.chance(pattern_prob):
        theta = rng.u((0.0, math.pi))
        period = max(head_px * rng.u((0.02, 0.08)), 1.0)
        contrast = rng.u((0.08, 0.3))
        u = along * math.cos(theta) + across * math.sin(theta)
        pattern = torch.sin(2 * math.pi * u / period)
        if rng.chance(0.4):  # checks
            v = -along * math.sin(theta) + across * math.cos(theta)
            pattern = 0.5 * (pattern + torch.sin(2 * math.pi * v / period))
        shade = shade * (1 + contrast * pattern)
    return shade.clamp_min(0.2)


def shirt_opening(rng: fx.Draws, along: Tensor, a: Tensor, open_w: float, open_depth: float) -> tuple[Tensor, Tensor]:
    """A shirt in a jacket's V opening: ``(shirt, edge)``, (bh, bw) bool where the shirt shows below the neckline
    (``open_w`` / ``open_depth``: the skin opening's half width and depth, full-resolution pixels; ``a`` = |across|)
    and (bh, bw) float32 in [0, 1], the jacket's lapel edge (a darker seam along the V)."""
    depth = open_depth * rng.u((1.6, 3.0))
    width = open_w * rng.u((1.1, 1.6))
    edge_y = depth * (1 - (a / width).clamp(0, 1))  # the V's lower edge at each |across|
    shirt = (along < edge_y) & (a < width)
    seam = (1 - ((along - edge_y).abs() / max(open_w * 0.08, 1.0)).clamp(0, 1)) * (a < width).float()
    return shirt, seam
