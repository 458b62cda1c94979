"""Camera effects of the procedural renderer: what a consumer camera and its file format do to a rendered scene.

Applied once to the finished sRGB image, in the order a camera applies them:

1. optics: defocus (a disc kernel), motion blur (a line kernel, kornia), a slight Gaussian blur;
2. white balance: per-channel gains in linear light (colour temperature along blue-amber, tint along green-magenta);
3. tone: saturation, contrast about mid-grey and a gamma change of the tone curve, and a lens vignette;
4. resolution: a down- and up-sampling through a longer side of f x 256 pixels (a small face in a large photo,
   enlarged to the crop; no change where the image is already that small);
5. sensor noise: signal-dependent (shot) noise per channel plus luminance grain;
6. 8-bit quantisation and JPEG compression (OpenCV's encoder, chroma subsampled, deterministic).

The label maps are not touched: every effect keeps the scene's geometry (blur and resampling move no boundary by
more than the kernel radius). Ranges and probabilities live in :class:`~next3d_gen.render.procedural.ProceduralConfig`
(``*_prob``, ``*_range``); lengths in pixels are given for a 256-pixel image and scale with the image size.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from kornia.filters import filter2d, motion_blur
from torch import Tensor

from next3d_gen.render.fields import Draws, blur

if TYPE_CHECKING:
    from next3d_gen.render.procedural import ProceduralConfig

REFERENCE_SIZE = 256
"""Image side (pixels) at which the pixel lengths of the camera-effect ranges are given."""


def _srgb_to_linear(x: Tensor) -> Tensor:
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055).clamp_min(0) ** 2.4)


def _linear_to_srgb(x: Tensor) -> Tensor:
    x = x.clamp(0, 1)
    return torch.where(x <= 0.0031308, 12.92 * x, 1.055 * x.clamp_min(1e-8) ** (1 / 2.4) - 0.055)


def disc_kernel(radius: float) -> Tensor:
    """(k, k) float32 kernel of a uniform disc of ``radius`` pixels, anti-aliased at its rim (sums to 1)."""
    r = max(float(radius), 0.5)
    half = int(math.ceil(r))
    ax = torch.arange(-half, half + 1, dtype=torch.float32)
    d = torch.sqrt(ax[:, None] ** 2 + ax[None, :] ** 2)
    k = (r + 0.5 - d).clamp(0, 1)
    return k / k.sum()


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB encoded as JPEG at ``quality`` (1-100) and decoded again."""
    ok, buf = cv2.imencode(".jpg", image[:, :, ::-1], [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:  # pragma: no cover - OpenCV always encodes a valid uint8 image
        raise RuntimeError("OpenCV failed to encode a JPEG")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1].copy()


def apply_camera_effects(img: Tensor, rng: Draws, cfg: ProceduralConfig) -> Tensor:
    """The camera's view of a rendered image.

    Args:
        img: (3, H, W) float32 sRGB in [0, 1] (values outside are clipped), on any device.
        rng: the renderer's seeded draws (the same seed gives the same effects and bytes).
        cfg: the renderer's ranges and probabilities.

    Returns:
        (H, W, 3) uint8 sRGB image on ``img``'s device.
    """
    _, H, W = img.shape
    px = max(H, W) / REFERENCE_SIZE  # pixel lengths of the ranges scale with the image
    x = img.clamp(0, 1)[None]  # (1, 3, H, W)

    # 1. optics
    if rng.chance(cfg.defocus_prob):
        x = filter2d(x, disc_kernel(rng.u(cfg.defocus_radius_range) * px)[None].to(x), border_type="replicate")
    if rng.chance(cfg.motion_blur_prob):
        length = max(3, int(round(rng.u(cfg.motion_blur_length_range) * px)) | 1)  # odd kernel size
        x = motion_blur(x, length, rng.u((0.0, 180.0)), rng.u((-1.0, 1.0)), border_type="replicate")
    if rng.chance(cfg.blur_prob):
        x = blur(x[0], rng.u(cfg.blur_sigma_range) * px)[None]

    # 2. white balance in linear light: temperature (blue <-> amber) and tint (green <-> magenta)
    temp, tint = rng.u(cfg.white_balance_range), rng.u(cfg.tint_range)
    gains = torch.tensor([math.exp(temp), math.exp(-tint), math.exp(-temp)], dtype=x.dtype, device=x.device)
    lin = _srgb_to_linear(x) * (gains / gains.mean()).view(1, 3, 1, 1)
    x = _linear_to_srgb(lin)

    # 3. tone: saturation, contrast, gamma; vignette
    sat, contrast, gamma = rng.u(cfg.saturation_range), rng.u(cfg.contrast_range), rng.u(cfg.gamma_range)
    grey = x.mean(1, keepdim=True)
    x = grey + (x - grey) * sat
    x = ((x - 0.5) * contrast + 0.5).clamp(0, 1) ** gamma
    vig = rng.u(cfg.vignette_range)
    if vig > 0:
        ys = torch.linspace(-1, 1, H, device=x.device)[:, None]
        xs = torch.linspace(-1, 1, W, device=x.device)[None, :]
        x = x * (1 - vig * (xs**2 + ys**2) / 2)

    # 4. resolution
    if rng.chance(cfg.low_res_prob):
        # through a longer side of f * 256 pixels, like every length here: the same loss of detail at any size
        f = rng.u(cfg.low_res_scale_range) / px
        if f < 1.0:
            small = F.interpolate(x, size=(max(8, round(H * f)), max(8, round(W * f))), mode="area")
            x = F.interpolate(small, size=(H, W), mode="bilinear", align_corners=False)

    # 5. sensor noise: shot noise grows with the signal, grain is the same on all channels
    shot = rng.u(cfg.shot_noise_range)
    if shot > 0:
        x = x + shot * x.clamp_min(0).sqrt() * rng.randn(1, 3, H, W).to(x)
    sigma = rng.u(cfg.noise_sigma_range)
    if sigma > 0:
        x = x + sigma * rng.randn(1, 1, H, W).to(x)

    # 6. quantisation and JPEG
    image = x[0].permute(1, 2, 0).mul(255.0).add_(0.5).clamp_(0, 255).to(torch.uint8)
    if rng.chance(cfg.jpeg_prob):
        quality = int(round(rng.u(cfg.jpeg_quality_range)))
        image = torch.from_numpy(jpeg_roundtrip(image.cpu().numpy(), quality)).to(img.device)
    return image.contiguous()
