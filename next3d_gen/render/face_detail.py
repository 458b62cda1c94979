"""Small facial details of the procedural renderer: eyelashes, iris structure, eyelid shadows on the eyeball,
catchlights, teeth and tongue, the relief of the ears.

Each function works on the pixels of one region (flat lists, shape (M,) or (M, k)) and returns coverages or colours;
the renderer decides where they go. Distances to a region's border are read from a Gaussian-blurred mask of the
neighbouring region (``b``: 0.5 on the border, about 0.16 one blur sigma away, 0.02 at two sigmas).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from next3d_gen.render.fields import Draws, smoothstep


def _periodic(rng: Draws, rows: int, cols: int) -> Tensor:
    """(1, 1, rows, cols + 1) noise grid in [-1, 1], periodic along the columns."""
    g = rng.rand(1, 1, rows, cols) * 2 - 1
    return torch.cat([g, g[..., :1]], -1)


def _lookup(grid: Tensor, angle: Tensor, v: Tensor) -> Tensor:
    """Bilinear lookup of a periodic grid at ``angle`` (radians, any range) and ``v`` in [-1, 1] -> (M,)."""
    u = torch.remainder(angle + math.pi, 2 * math.pi) / math.pi - 1
    pts = torch.stack([u, v.clamp(-1, 1)], -1).view(1, 1, -1, 2)
    return F.grid_sample(grid, pts, mode="bilinear", padding_mode="border", align_corners=True).view(-1)


def eyelashes(rng: Draws, b: Tensor, upper: Tensor, angle: Tensor, density: float, liner: float) -> Tensor:
    """Coverage (M,) in [0, 1] of lashes on eyelid pixels.

    Args:
        rng: draws the lash pattern.
        b: (M,) the eyeball's blurred mask at each pixel (0.5 on the lid margin; the blur sigma is half the upper
            lashes' length).
        upper: (M,) bool pixels of the upper lid.
        angle: (M,) direction of the pixel from the eye centre (radians), mirrored so that it grows towards the
            temple on both eyes (lashes lean outwards).
        density: overall opacity of lashes and lash line (0-1).
        liner: eyeliner (0 = none, 1 = a thick dark line on the upper lid, a thin one below).

    The lid margin gets a dark line (thicker above); upper lashes are about 70 strokes around the eye, reaching two
    blur sigmas from the margin and bending outwards as they go; lower lashes are sparser and half as long.
    """
    grid = _periodic(rng, 1, 72)
    far = (0.5 - b.clamp(0, 0.5)) * 2  # 0 on the margin, towards 1 away from it
    line_w = 0.3 + 0.5 * liner
    line = 1 - smoothstep(0.5 * line_w, line_w, far)
    line = line * torch.where(upper, 0.85 + 0.15 * liner, 0.3 + 0.3 * liner)
    bend = angle + 0.5 * far  # lashes curl towards the temple
    strokes = smoothstep(0.0, 0.45, _lookup(grid, bend * torch.where(upper, 1.0, 0.6), torch.zeros_like(b)))
    reach = torch.where(upper, 1 - smoothstep(0.75, 0.96, far), 0.5 * (1 - smoothstep(0.45, 0.7, far)))
    return (density * torch.maximum(line, 0.9 * strokes * reach)).clamp(0, 1)


def lid_shadow(p: Tensor, upper: Tensor, strength: float) -> Tensor:
    """Brightness factor (M,) of eyeball pixels under the lids: ``p`` (M,) is the blurred mask of the surrounding
    lids at each eyeball pixel (0.5 on the lid margin). The upper lid and its lashes shade a band below it; the
    lower lid a thinner, lighter one."""
    band = smoothstep(0.04, 0.4, p)
    return 1 - strength * band * torch.where(upper, 0.6, 0.25)


def iris(
    rng: Draws,
    base: Tensor,
    rr: Tensor,
    phi: Tensor,
    pupil: float,
    centre_colour: Tensor | None,
) -> Tensor:
    """Iris colour (M, 3) from its ``base`` colour (3,) at normalised radius ``rr`` (M,) (0 centre, 1 the limbus) and
    angle ``phi`` (M,): fine radial fibres, a wavy collarette at about half the radius (inside it the iris is
    lighter, or ``centre_colour`` (3,) for central heterochromia), dark crypts, a dark ruff round the pupil (radius
    ``pupil``, same units)."""
    fibres = _lookup(_periodic(rng, 3, 180), phi, rr * 2 - 1)
    wavy = _lookup(_periodic(rng, 1, 14), phi, torch.zeros_like(rr))
    crypt_grid = _periodic(rng, 6, 40)
    collar = rng.u((0.42, 0.6)) + 0.05 * wavy
    inner = 1 - smoothstep(-0.04, 0.04, rr - collar)
    col = base.expand(len(rr), 3)
    if centre_colour is not None:
        col = torch.lerp(col, centre_colour.expand(len(rr), 3), 0.6 * inner[:, None])
    else:
        col = col * (1 + 0.2 * inner[:, None])
    ring = torch.exp(-(((rr - collar) / 0.035) ** 2))  # the collarette itself: a lighter ridge
    crypts = smoothstep(0.35, 0.7, _lookup(crypt_grid, phi, rr * 2 - 1)) * (rr > collar).float()
    ruff = torch.exp(-(((rr - pupil - 0.03) / 0.03) ** 2))
    shade = (1 + 0.3 * fibres) * (1 + 0.25 * ring) * (1 - 0.45 * crypts) * (1 - 0.5 * ruff)
    return col * shade[:, None]


def catchlight(normal: Tensor, view: Tensor, light: Tensor, radius_deg: float) -> Tensor:
    """(M,) intensity in [0, 1] of the reflection of a round area light of angular ``radius_deg`` (its direction
    ``light`` (3,)) on a glossy sphere with camera-frame ``normal`` (M, 3) seen along ``view`` (M, 3): 1 where the
    normal is within half the radius of the half vector (mirror reflection doubles angles), a soft edge out to it."""
    h = F.normalize(view + light, dim=-1)
    c = (normal * h).sum(1)
    a = math.radians(radius_deg) / 2
    return smoothstep(math.cos(a), math.cos(0.6 * a), c)


def mouth_parts(
    across: Tensor, down: Tensor, near_upper: Tensor, near_lower: Tensor, tooth_width: float, lower_teeth: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Teeth and tongue in the open mouth, from screen-space coordinates of its pixels (M,): ``across`` the mouth
    (pixels from its centre line, signed), ``down`` from the upper inner lip (0) to the lower one (1), and whether a
    pixel lies just inside the upper / lower lip (bool).

    Returns:
        ``(teeth, gaps, tongue)``: (M,) bool tooth pixels (upper row under the upper lip, lower row above the lower
        lip if ``lower_teeth``), (M,) in [0, 1] darkening of the lines between teeth (``tooth_width`` pixels apart,
        a gap on the centre line), (M,) tongue coverage in [0, 1] (the lower middle of the mouth, not on teeth).
    """
    teeth = near_upper | (near_lower & lower_teeth)
    u = across / max(tooth_width, 1e-3)
    frac = u - torch.floor(u)
    edge = torch.minimum(frac, 1 - frac)
    gaps = 1 - smoothstep(0.0, 0.12, edge)
    tongue = smoothstep(0.4, 0.62, down - 0.5 * (across / max(4.5 * tooth_width, 1e-3)) ** 2) * (~teeth).float()
    return teeth, gaps, tongue


def ear_relief(inside: Tensor, strength: float) -> Tensor:
    """Albedo multiplier (M,) of ear pixels: a light rim (the helix) along the ear's outline and a dark hollow (the
    concha) in its middle, which the smooth mesh ear lacks.

    Args:
        inside: (M,) the ear's own blurred mask at each of its pixels (about 0.5 on the outline, near 1 deep inside;
            the blur sigma is a fifth of the ear's size).
        strength: 0 = no relief; the hollow darkens by up to ``0.6 strength``, the rim brightens by ``0.15 strength``.
    """
    rim = smoothstep(0.5, 0.62, inside) * (1 - smoothstep(0.7, 0.82, inside))
    hollow = smoothstep(0.82, 0.97, inside)
    return (1 + 0.15 * strength * rim) * (1 - 0.6 * strength * hollow)
