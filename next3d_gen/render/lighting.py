"""Screen-space lighting terms of the procedural renderer, from the head's rasterized depth: ambient occlusion and
soft shadows, computed at reduced resolution on the head's bounding box and read back at full-resolution pixels.

Frames: camera z depth in metres (0 on the background), OpenCV camera frame (x right, y down, z forward), pixel
intrinsics ``K`` of the full-resolution image. The depth map is a height field seen from the camera, so an occluder
is a surface in front of a shadow ray's point (with a limited thickness, as the hidden side is unknown).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from next3d_gen.render.fields import blur_lowres, rays, smoothstep

_FAR = 1e3  # metres: depth given to background pixels of the low-resolution map (never an occluder)


@dataclass
class DepthView:
    """The head's depth map at reduced resolution.

    Attributes:
        depth: (h, w) float32 mean camera z (metres) of the head pixels in each block; ``_FAR`` where no head.
        mask: (h, w) bool blocks at least half covered by the head.
        r0, c0: full-resolution pixel of the crop's top-left corner.
        f: downsampling factor (a low-resolution pixel is f x f full-resolution pixels).
        K: (3, 3) float32 full-resolution intrinsics.
        m_per_px: metres per low-resolution pixel at the head's median depth.
        head_m: head size in metres (its bounding box's longer side at the median depth).
    """

    depth: Tensor
    mask: Tensor
    r0: int
    c0: int
    f: int
    K: Tensor
    m_per_px: float
    head_m: float


def depth_view(depth: Tensor, mask: Tensor, K: Tensor, max_side: int = 72) -> DepthView | None:
    """Crop (H, W) ``depth`` / bool ``mask`` to the head's box (2-pixel margin) and average it down so the longer
    side is at most ``max_side``; None when the head is not in view."""
    nz = mask.nonzero()
    if len(nz) == 0:
        return None
    H, W = mask.shape
    y0, x0 = int(nz[:, 0].min()), int(nz[:, 1].min())
    y1, x1 = int(nz[:, 0].max()) + 1, int(nz[:, 1].max()) + 1
    f = max(1, math.ceil(max(y1 - y0 + 4, x1 - x0 + 4) / max_side))
    r0, c0 = max(0, y0 - 2), max(0, x0 - 2)
    h, w = math.ceil((min(H, y1 + 2) - r0) / f), math.ceil((min(W, x1 + 2) - c0) / f)
    m = torch.zeros(h * f, w * f, device=depth.device)
    d = torch.zeros(h * f, w * f, device=depth.device)
    rr, cc = min(H, r0 + h * f) - r0, min(W, c0 + w * f) - c0
    m[:rr, :cc] = mask[r0 : r0 + rr, c0 : c0 + cc].float()
    d[:rr, :cc] = depth[r0 : r0 + rr, c0 : c0 + cc] * m[:rr, :cc]
    if f > 1:
        cnt = F.avg_pool2d(m[None, None], f)[0, 0]
        d = F.avg_pool2d(d[None, None], f)[0, 0] / cnt.clamp_min(1e-6)
    else:
        cnt = m
    low = cnt >= 0.5
    z = float(depth[mask].median())
    fx = float(K[0, 0])
    head_m = max(y1 - y0, x1 - x0) * z / fx
    return DepthView(
        depth=torch.where(low, d, torch.full_like(d, _FAR)),
        mask=low,
        r0=r0,
        c0=c0,
        f=f,
        K=K,
        m_per_px=f * z / fx,
        head_m=head_m,
    )


def masked_blur(view: DepthView, x: Tensor, sigma_px: float) -> Tensor:
    """Mean of (C, h, w) ``x`` over the head's blocks in a Gaussian window of ``sigma_px`` low-resolution pixels."""
    m = view.mask.float()[None]
    both = blur_lowres(torch.cat([x * m, m], 0), sigma_px, max_side=36)  # large windows at half resolution
    return both[:-1] / both[-1:].clamp_min(1e-4)


AO_RADII = (0.03, 0.1)
"""Gaussian window sizes of the ambient occlusion, in head sizes (small creases, then eye sockets / under the chin)."""


def _points(view: DepthView) -> Tensor:
    """(3, h, w) camera-frame surface point of each low-resolution head block (metres; meaningless off the head)."""
    h, w = view.depth.shape
    dev = view.depth.device
    ys, xs = torch.meshgrid(torch.arange(h, device=dev), torch.arange(w, device=dev), indexing="ij")
    full_x = view.c0 + (xs.float() + 0.5) * view.f - 0.5
    full_y = view.r0 + (ys.float() + 0.5) * view.f - 0.5
    d = torch.where(view.mask, view.depth, torch.zeros_like(view.depth))
    return (rays(view.K, full_x, full_y) * d[..., None]).permute(2, 0, 1)


def occlusion_means(view: DepthView) -> Tensor:
    """(3 x len(AO_RADII), h, w) mean surface point of the head around each block, one Gaussian window per radius
    (the input of :func:`ambient_occlusion`)."""
    pts = _points(view)
    return torch.cat([masked_blur(view, pts, max(0.5, r * view.head_m / view.m_per_px)) for r in AO_RADII], 0)


def ambient_occlusion(points: Tensor, normals: Tensor, means: Tensor, head_m: float) -> Tensor:
    """(N,) occlusion in [0, 1] of surface points (N, 3) with camera-facing unit ``normals`` (N, 3), given the mean
    head points around them (N, 3 x len(AO_RADII), from :func:`occlusion_means`): how far the surroundings rise
    above the point's tangent plane, relative to the window's size. Concave places (eye sockets, the sides of the
    nose, mouth corners, the neck under the chin) are occluded; flat and convex ones (silhouettes included) are
    not."""
    occ = torch.zeros(len(points), device=points.device)
    for k, r in enumerate(AO_RADII):
        rise = ((means[:, 3 * k : 3 * k + 3] - points) * normals).sum(1)
        occ = occ + (rise / (0.3 * r * head_m)).clamp(0, 0.85) / len(AO_RADII)
    return occ


def shadow_visibility(view: DepthView, dirs: Tensor, softness: float, steps: int = 10) -> Tensor:
    """(L, h, w) visibility in [0, 1] of each light (``dirs``: (L, 3) unit directions towards the lights) from each
    head block: the block's surface point marched towards the light over 1-50 % of the head size; a step is shadowed
    by a head surface in front of it (less than a third of the head size in front: surfaces are not infinitely
    thick); the penumbra widens by ``softness`` metres per metre marched (an area light), then it is blurred by a
    low-resolution pixel."""
    h, w = view.depth.shape
    dev = view.depth.device
    sel = view.mask.reshape(-1)
    p = _points(view).reshape(3, -1).T[sel]
    t = view.head_m * torch.logspace(math.log10(0.01), math.log10(0.5), steps, device=dev)  # (S,) metres
    bias = 0.75 * view.m_per_px + 0.001
    thick = view.head_m / 3
    vis = torch.ones(len(dirs), h * w, device=dev)
    grid = view.depth[None, None]
    for k, d in enumerate(dirs):
        q = p[:, None, :] + t[None, :, None] * d  # (P, S, 3)
        z = q[..., 2].clamp_min(1e-3)
        u = (view.K[0, 0] * q[..., 0] + view.K[0, 1] * q[..., 1]) / z + view.K[0, 2]
        v = view.K[1, 1] * q[..., 1] / z + view.K[1, 2]
        gx = ((u - view.c0 + 0.5) / view.f - 0.5) / max(w - 1, 1) * 2 - 1
        gy = ((v - view.r0 + 0.5) / view.f - 0.5) / max(h - 1, 1) * 2 - 1
        g = torch.stack([gx, gy], -1)[None]
        surf = F.grid_sample(grid, g, mode="bilinear", padding_mode="border", align_corners=True)[0, 0]
        dz = z - surf  # > 0: the head surface is in front of the ray point
        soft = softness * t[None, :] + bias
        blocked = smoothstep(0.0, 1.0, (dz - bias) / soft) * (1 - smoothstep(thick, 2 * thick, dz))
        vis[k, sel] = 1 - blocked.amax(1)
    vis = vis.view(-1, h, w)
    return masked_blur(view, vis, 0.7).clamp(0, 1)


def sample_at(view: DepthView, fields: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Bilinear lookup of low-resolution (C, h, w) ``fields`` at full-resolution pixel centres ``(x, y)`` (N,)
    -> (N, C)."""
    h, w = fields.shape[1:]
    gx = ((x.float() - view.c0 + 0.5) / view.f - 0.5) / max(w - 1, 1) * 2 - 1
    gy = ((y.float() - view.r0 + 0.5) / view.f - 0.5) / max(h - 1, 1) * 2 - 1
    g = torch.stack([gx, gy], -1).view(1, 1, -1, 2)
    return F.grid_sample(fields[None], g, mode="bilinear", padding_mode="border", align_corners=True)[0, :, 0].T
