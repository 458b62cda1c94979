"""Hair appearance for the procedural renderer: strands that follow a hair flow, anisotropic (Kajiya-Kay) shading
with two shifted highlights, and flyaway strands with partial alpha.

Hair here is a layer painted over the head's scalp (and fringe, beard) pixels and over the background (hair volume,
flyaways); what the label map says about it is decided by the renderer from the coverage each layer is drawn with
(:data:`next3d_gen.labels.LAYER_COVERAGE_THRESHOLD`). This module only computes appearance and coverage.

Frames: pixel coordinates ``(x, y)`` (column, row; pixel centres on integers); 3D vectors in the OpenCV camera frame
(x right, y down, z forward), unit normals facing the camera have ``z < 0``.

**Hair flow.** Strands run away from a flow centre (the crown's projection, or a side-swept point), so a strand is a
curve ``theta + A sin(2 pi r / lambda + phi) = const`` in polar coordinates ``(r, theta)`` around that centre (``r``
in head heights): straight for ``A = 0``, wavy or curly otherwise. The strand texture is a sum of noise octaves that
are high-frequency across strands (in ``theta``) and low-frequency along them (in ``r``): broad locks, strands, fine
strands; octaves finer than about 1.5 pixels fade out (no aliasing), roots near the centre are darker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from next3d_gen.render.fields import Draws, smoothstep

_R_MAX = 3.0  # head heights: the strand texture's extent from the flow centre (beyond it, it repeats mirrored)


@dataclass
class HairFlow:
    """One sample's hair flow and strand texture (see the module docstring).

    Attributes:
        centre: (x, y) pixel position of the flow centre (may lie outside the image).
        head_px: head size in pixels (the unit of ``r``).
        wave_amp: angular swing of the strands, radians (0 = straight).
        wave_len: wavelength of the swing along ``r``, head heights.
        wave_phase: phase of the swing, radians.
        grids: three (1, 1, rows, cols + 1) noise grids in [-1, 1], periodic in ``theta`` (last column = first):
            locks, strands, fine strands.
        contrast: strength of the strand texture (log-brightness scale).
        lock_contrast: weight of the lock octave relative to the strands.
        root_dark: darkening at the flow centre (roots), fading out over 0.35 head heights.
    """

    centre: tuple[float, float]
    head_px: float
    wave_amp: float
    wave_len: float
    wave_phase: float
    grids: tuple[Tensor, Tensor, Tensor]
    contrast: float
    lock_contrast: float
    root_dark: float


def make_flow(
    rng: Draws,
    centre: tuple[float, float],
    head_px: float,
    wave_amp: float,
    contrast: float,
    root_dark: float,
    kink: float = 1.0,
) -> HairFlow:
    """Draw a :class:`HairFlow` around ``centre`` (pixels) for a head of ``head_px`` pixels.

    The strand octaves have about 1, 0.3 and 0.1 strands per pixel at half a head height from the centre; curlier
    hair (larger ``wave_amp``) gets a shorter wavelength and more variation along the strands. ``kink`` > 1 makes
    the strands that much shorter and their waves that much shorter too (beard hair).
    """
    curl = min(1.0, wave_amp / 0.6)
    wave_len = rng.u((0.35, 0.9)) * (1.0 - 0.6 * curl) / kink
    n_strands = max(48, int(round(head_px * 1.1)))
    along = max(6, int(round((10 + 40 * curl) * kink)))
    grids = (
        _periodic_grid(rng, 6, max(12, n_strands // 14)),
        _periodic_grid(rng, along, n_strands),
        _periodic_grid(rng, 2 * along, 3 * n_strands),
    )
    return HairFlow(
        centre=(float(centre[0]), float(centre[1])),
        head_px=float(head_px),
        wave_amp=float(wave_amp),
        wave_len=float(wave_len),
        wave_phase=rng.u((0.0, 2 * math.pi)),
        grids=grids,
        contrast=float(contrast),
        lock_contrast=rng.u((0.4, 1.0)),
        root_dark=float(root_dark),
    )


def _periodic_grid(rng: Draws, rows: int, cols: int) -> Tensor:
    g = rng.rand(1, 1, rows, cols) * 2 - 1
    return torch.cat([g, g[..., :1]], -1)


def _wrap(angle: Tensor) -> Tensor:
    """An angle (radians, any range) as the periodic grids' column coordinate in [-1, 1]."""
    return torch.remainder(angle + math.pi, 2 * math.pi) / math.pi - 1


def _sample(grid: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """Bilinear lookup of a (1, 1, rows, cols) grid at u (across), v (along), both in [-1, 1] -> (N,)."""
    pts = torch.stack([u, v], -1).view(1, 1, -1, 2)
    return F.grid_sample(grid, pts, mode="bilinear", padding_mode="border", align_corners=True).view(-1)


def strand_texture(flow: HairFlow, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Strand brightness and direction at pixels ``(x, y)`` (N,) float32.

    Returns:
        ``(tex, tangent)``: (N,) brightness multiplier (0.2-2.5, about 1 on average = the hair colour), (N, 2) unit
        direction of the strand through each pixel in the image plane (pointing away from the flow centre).
    """
    dx = x - flow.centre[0]
    dy = y - flow.centre[1]
    r_px = torch.sqrt(dx * dx + dy * dy).clamp_min(1e-3)
    r = r_px / flow.head_px
    theta = torch.atan2(dy, dx)
    # each lock waves with its own phase (a slowly varying function of the angle), so waves do not line up
    phase = flow.wave_phase + math.pi * _sample(flow.grids[0][..., :1, :], _wrap(theta), torch.zeros_like(theta))
    psi = (2 * math.pi / flow.wave_len) * r + phase
    theta_w = theta + flow.wave_amp * torch.sin(psi)
    u = _wrap(theta_w)
    v = (r / _R_MAX).clamp(0, 1) * 2 - 1
    locks, strands, fine = (_sample(g, u, v) for g in flow.grids)
    # an octave fades out where its strands come closer than ~1.5 pixels (near the centre, at small sizes)
    period = 2 * math.pi * r_px
    fade1 = smoothstep(1.5, 3.0, period / (flow.grids[1].shape[-1] - 1))
    fade2 = smoothstep(1.5, 3.0, period / (flow.grids[2].shape[-1] - 1))
    # strands: bright cores, darker gaps between them (shadowing inside the hair); log-normal-like contrast
    s = 0.6 * strands * fade1 + 0.4 * fine * fade2 + 0.5 * flow.lock_contrast * locks
    tex = torch.exp((1.6 * flow.contrast) * s - 0.25 * flow.contrast)
    tex = tex * (1 - flow.root_dark * (1 - smoothstep(0.0, 0.35, r)))
    # direction of the curve theta_w = const: d theta / d r = -A cos(psi) 2 pi / lambda (the phase's slow change
    # with the angle neglected)
    k = -r * flow.wave_amp * torch.cos(psi) * (2 * math.pi / flow.wave_len)
    c, s_ = dx / r_px, dy / r_px
    t = torch.stack([c - s_ * k, s_ + c * k], -1)
    return tex.clamp(0.2, 2.5), F.normalize(t, dim=-1)


def strand_edge(alpha: Tensor, tex: Tensor, threshold: float) -> Tensor:
    """A soft-edged layer's coverage ``alpha`` (N,) turned into strands by the strand texture ``tex`` (N,): steeper
    around ``threshold``, then raised towards it where strands are bright and lowered towards it in the gaps (by at
    most the distance to 0 or 1: no hair appears where there was none, no hole where it was opaque), never across it
    (``result >= threshold`` exactly where ``alpha >= threshold``, so labels decided by the threshold do not
    change)."""
    t = float(threshold)
    lo, hi = t - 0.5 * min(t, 1 - t), t + 0.5 * min(t, 1 - t)
    a = smoothstep(lo, hi, alpha)
    m = ((tex - 1.0) * 1.5).clamp(-1, 1)
    below = (a + torch.minimum(t - a, a) * (0.9 * m.clamp_min(0))).clamp_max(math.nextafter(t, 0.0))
    above = (a - torch.minimum(a - t, 1 - a) * (0.9 * (-m).clamp_min(0))).clamp_min(t)
    return torch.where(alpha >= t, above, below)


def lift_tangent(t2: Tensor, normal: Tensor) -> Tensor:
    """3D unit tangents (N, 3) on the surface with camera-frame ``normal`` (N, 3) whose image direction is ``t2``
    (N, 2) (orthographic approximation: the tangent's z makes it perpendicular to the normal)."""
    nz = normal[:, 2]
    nz = torch.where(nz < 0, nz.clamp(max=-0.2), nz.clamp(min=0.2))
    tz = -(t2[:, 0] * normal[:, 0] + t2[:, 1] * normal[:, 1]) / nz
    return F.normalize(torch.cat([t2, tz[:, None]], 1), dim=-1)


@dataclass
class HairMaterial:
    """Specular parameters of a hair (Kajiya-Kay with two lobes, shifted along the normal in opposite directions).

    Attributes:
        spec: strength of the primary (light-coloured) highlight; the secondary (hair-coloured) one has 0.6 of it.
        exponent: sharpness of the primary highlight; the secondary one has half of it.
        shift: tangent shift of the lobes towards +/- the normal (moves the two highlight bands apart).
    """

    spec: float
    exponent: float
    shift: float


def kajiya_kay(
    albedo: Tensor,
    normal: Tensor,
    tangent: Tensor,
    view: Tensor,
    dirs: Tensor,
    colours: Tensor,
    ambient: Tensor,
    material: HairMaterial,
    visibility: Tensor | None = None,
    glint: Tensor | None = None,
) -> Tensor:
    """Linear radiance (N, 3) of hair: diffuse (half Kajiya-Kay, half wrapped Lambert), two anisotropic highlights.

    Args:
        albedo: (N, 3) linear hair colour (with its strand texture).
        normal, tangent, view: (N, 3) unit camera-frame normal, strand tangent and direction towards the camera.
        dirs, colours: (L, 3) unit directions towards the lights and their colour x intensity.
        ambient: (N, 3) ambient irradiance.
        material: the highlight parameters.
        visibility: optional (N, L) light visibility in [0, 1] (shadows), multiplies diffuse and highlights.
        glint: optional (N,) multiplier of the highlights (the strand texture: highlights break up into strands).
    """
    ndl = normal @ dirs.T  # (N, L)
    tl = tangent @ dirs.T
    kk = (1 - tl * tl).clamp_min(0).sqrt() * smoothstep(-0.3, 0.2, ndl)
    diff = 0.4 * kk + 0.6 * ((ndl + 0.25) / 1.25).clamp_min(0)
    facing = smoothstep(0.0, 0.3, ndl)
    if visibility is not None:
        diff = diff * visibility
        facing = facing * visibility
    inv_h = torch.rsqrt((2 + 2 * (view @ dirs.T)).clamp_min(1e-6))
    spec = albedo.new_zeros(albedo.shape)
    for sign, weight, expo, tint in ((1.0, 1.0, material.exponent, None), (-1.0, 0.6, material.exponent / 2, albedo)):
        t = F.normalize(tangent + (sign * material.shift) * normal, dim=-1)
        th = ((t * view).sum(1, keepdim=True) + t @ dirs.T) * inv_h  # cos(T, H) for each light
        lobe = torch.exp((0.5 * expo) * torch.log((1 - th * th).clamp_min(1e-6))) * facing
        s = (lobe @ colours) * (material.spec * weight)
        if tint is not None:
            s = s * tint / tint.amax(1, keepdim=True).clamp_min(1e-3)
        spec = spec + s
    if glint is not None:
        spec = spec * glint[:, None]
    return albedo * (ambient + diff @ colours) + spec


def flyaways(
    rng: Draws,
    flow: HairFlow,
    region: Tensor,
    allowed: Tensor,
    count: int,
    length_range: tuple[float, float],
    alpha_range: tuple[float, float],
) -> Tensor:
    """Coverage (H, W) float32 in [0, 1] of ``count`` loose strands that start on the outline of the hair ``region``
    (H, W bool) where it borders ``allowed`` pixels (the background), and run outwards along the hair flow with a
    random bend, tapering to their tips; drawn only on ``allowed`` pixels. A strand is about one pixel wide with
    coverage drawn from ``alpha_range``; lengths in head heights from ``length_range``.
    """
    H, W = region.shape
    out = torch.zeros(H * W, device=region.device)
    # draw every random number whether or not strands can be placed (keeps the stream layout simple)
    pick, jitter, turn, bend, length, alpha = (rng.rand(count) for _ in range(6))
    if count <= 0:
        return out.view(H, W)
    nz = region.nonzero()
    if len(nz) == 0:
        return out.view(H, W)
    r0, c0 = max(0, int(nz[:, 0].min()) - 1), max(0, int(nz[:, 1].min()) - 1)
    r1, c1 = min(H, int(nz[:, 0].max()) + 2), min(W, int(nz[:, 1].max()) + 2)
    reg = region[r0:r1, c0:c1]
    outside = (allowed[r0:r1, c0:c1] & ~reg).float()[None, None]
    edge = reg & (F.max_pool2d(outside, 3, 1, 1)[0, 0] > 0)
    local = edge.nonzero()
    if len(local) == 0:
        return out.view(H, W)
    seeds = (local[:, 0] + r0) * W + (local[:, 1] + c0)
    ids = seeds[(pick * len(seeds)).long().clamp(max=len(seeds) - 1)]
    p0 = torch.stack([(ids % W).float(), torch.div(ids, W, rounding_mode="floor").float()], 1) + (jitter[:, None] - 0.5)
    _, t2 = strand_texture(flow, p0[:, 0], p0[:, 1])
    out_dir = F.normalize(p0 - p0.new_tensor(flow.centre), dim=-1)
    ang = (turn - 0.5) * 1.2
    d = F.normalize(0.6 * t2 + 0.8 * out_dir, dim=-1)
    ca, sa = torch.cos(ang), torch.sin(ang)
    d = torch.stack([d[:, 0] * ca - d[:, 1] * sa, d[:, 0] * sa + d[:, 1] * ca], 1)
    lo, hi = length_range
    L = (lo + (hi - lo) * length) * flow.head_px  # (S,) pixels
    perp = torch.stack([-d[:, 1], d[:, 0]], 1)
    p2 = p0 + d * L[:, None]
    p1 = 0.5 * (p0 + p2) + perp * ((bend - 0.5) * 0.8 * L)[:, None]
    n_pts = max(2, int(math.ceil(float(L.max()) / 0.6)))
    s = torch.linspace(0, 1, n_pts, device=region.device)[None, :, None]  # (1, P, 1)
    pts = (1 - s) ** 2 * p0[:, None] + 2 * (1 - s) * s * p1[:, None] + s**2 * p2[:, None]  # (S, P, 2)
    a_lo, a_hi = alpha_range
    w = (a_lo + (a_hi - a_lo) * alpha)[:, None] * (L[:, None] / (n_pts - 1)) * (1 - s[..., 0] ** 2)  # (S, P)
    px, py = pts[..., 0].reshape(-1), pts[..., 1].reshape(-1)
    w = w.reshape(-1)
    x0, y0 = torch.floor(px), torch.floor(py)
    fx, fy = px - x0, py - y0
    for ox, oy, k in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = x0.long() + ox, y0.long() + oy
        ok = (xi >= 0) & (xi < W) & (yi >= 0) & (yi < H)
        out.index_add_(0, (yi * W + xi)[ok], (w * k)[ok])
    return (out.view(H, W).clamp(0, 1) * allowed.float()).contiguous()
