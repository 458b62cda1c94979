"""Stage-B losses: segmentation CE, foreground depth L1, landmark heatmap + coordinate terms on every hourglass stack,
optional normal / UV terms, and the self-supervised affine-consistency loss on trunk features.

Every term is a mean (never a sum over pixels), so the weights in :class:`LossConfig` are comparable:

* ``seg``: cross-entropy, mean over non-ignored pixels.
* ``seg_dice``: soft Dice loss, mean over the classes present in the batch (small classes count as much as large
  ones, which CE alone learns slowly).
* ``depth``: L1 of relative depth on ground-truth foreground pixels, in metres (the default weight 100 makes it
  an L1 in centimetres).
* ``depth_l2``: mean squared error of the same (metres squared): weighs the large errors (neck, silhouette edges) that
  dominate an RMSE more than L1 does.
* ``heatmap``: KL divergence between the Gaussian target distribution (sigma ``heatmap_sigma`` heatmap pixels) and
  the spatial softmax of each stack's heatmap, mean over in-crop landmarks and stacks.
* ``coord``: L1 between each stack's soft-argmax coordinates and the target, in heatmap pixels (crop px / 4).
* ``ssl``: L1 between trunk features of an affinely warped image and the warped stop-gradient features of the
  original pass, averaged over the channels and the valid (in-bounds) warped region.
"""

from __future__ import annotations

from dataclasses import dataclass

import kornia.geometry.transform as kgt
import torch
import torch.nn.functional as tnf

from next3d_gen.labels import IGNORE_INDEX
from synthforge.models.heads import image_to_heatmap


@dataclass
class LossConfig:
    """Weights and settings of the stage-B losses (0 disables a term).

    Attributes:
        seg, seg_dice, depth, depth_l2, heatmap, coord, normal, uv, ssl: weights of the terms (see the module
            docstring).
        heatmap_sigma: std of the Gaussian heatmap targets, heatmap pixels.
        ssl_rotation_deg: max |rotation| of the SSL warp, degrees.
        ssl_scale: max relative scale change of the SSL warp (scale in [1 - s, 1 + s]).
        ssl_shift: max |translation| of the SSL warp, fraction of the image side.
    """

    seg: float = 1.0
    seg_dice: float = 0.0
    depth: float = 100.0
    depth_l2: float = 0.0
    heatmap: float = 1.0
    coord: float = 0.1
    normal: float = 0.0
    uv: float = 0.0
    ssl: float = 0.1
    heatmap_sigma: float = 1.0
    ssl_rotation_deg: float = 30.0
    ssl_scale: float = 0.15
    ssl_shift: float = 0.1


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Cross-entropy. logits (B, C, H, W) float; target (B, H, W) int64 ids (``ignore_index`` skipped)."""
    if (target != ignore_index).any():
        return tnf.cross_entropy(logits.float(), target, ignore_index=ignore_index)
    return logits.sum() * 0.0


def dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """1 - soft Dice, averaged over the classes present in ``target``.

    Args:
        logits: (B, C, H, W) float. target: (B, H, W) int64 ids; ``ignore_index`` pixels are left out.
    """
    C = logits.shape[1]
    valid = (target != ignore_index)[:, None].to(torch.float32)  # (B, 1, H, W)
    probs = torch.softmax(logits.float(), dim=1) * valid
    onehot = tnf.one_hot(torch.where(target == ignore_index, 0, target), C).permute(0, 3, 1, 2).float() * valid
    inter = (probs * onehot).sum(dim=(0, 2, 3))
    gt = onehot.sum(dim=(0, 2, 3))
    dice = (2 * inter + 1.0) / (probs.sum(dim=(0, 2, 3)) + gt + 1.0)
    present = gt > 0
    if not present.any():
        return logits.sum() * 0.0
    return (1.0 - dice[present]).mean()


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (B, c, H, W) ``values`` over ``mask`` pixels (broadcast over channels); 0 if the mask is empty."""
    m = mask.to(values.dtype).expand_as(values)
    return (values * m).sum() / m.sum().clamp_min(1.0)


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean |pred - target| over ``mask`` pixels (all (B, c, H, W); mask broadcast over channels). 0 if empty."""
    return _masked_mean((pred.float() - target.float()).abs(), mask)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean (pred - target)^2 over ``mask`` pixels (all (B, c, H, W); mask broadcast over channels). 0 if empty."""
    return _masked_mean((pred.float() - target.float()).square(), mask)


def normal_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean (1 - cosine) between (B, 3, H, W) normals over the (B, 1, H, W) mask."""
    cos = (tnf.normalize(pred.float(), dim=1) * target.float()).sum(1, keepdim=True)
    return _masked_mean(1 - cos, mask)


def gaussian_targets(coords_hm: torch.Tensor, height: int, width: int, sigma: float) -> torch.Tensor:
    """Normalised Gaussian distributions centred on heatmap coordinates.

    Args:
        coords_hm: (B, K, 2) float (x, y) in heatmap pixel-centre coordinates.
        height, width: heatmap size.
        sigma: std in heatmap pixels.

    Returns:
        (B, K, h, w) float, each map summing to 1.
    """
    xs = torch.arange(width, device=coords_hm.device, dtype=torch.float32)
    ys = torch.arange(height, device=coords_hm.device, dtype=torch.float32)
    dx = (xs.view(1, 1, 1, -1) - coords_hm[..., 0, None, None].float()) ** 2
    dy = (ys.view(1, 1, -1, 1) - coords_hm[..., 1, None, None].float()) ** 2
    logits = -(dx + dy) / (2 * sigma**2)
    return torch.softmax(logits.flatten(2), -1).view(*coords_hm.shape[:2], height, width)


def landmark_losses(
    heatmaps: list[torch.Tensor],
    coords: list[torch.Tensor],
    target: torch.Tensor,
    valid: torch.Tensor,
    stride: int = 4,
    sigma: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Heatmap KL and coordinate L1, averaged over stacks and valid landmarks.

    Args:
        heatmaps: per stack (B, K, h, w) logits of the spatial distribution.
        coords: per stack (B, K, 2) predicted coordinates, input pixels.
        target: (B, K, 2) ground truth, input pixels.
        valid: (B, K) bool (e.g. inside the crop).
        stride: input pixels per heatmap pixel.
        sigma: Gaussian target std, heatmap pixels.

    Returns:
        ``(heatmap_kl, coord_l1_in_heatmap_pixels)`` scalars.
    """
    v = valid.float()
    n = v.sum().clamp_min(1.0)
    target_hm = image_to_heatmap(target.float(), stride)
    hm_total = coords[0].new_zeros(())
    co_total = coords[0].new_zeros(())
    for hm, c in zip(heatmaps, coords, strict=True):
        h, w = hm.shape[-2:]
        tgt = gaussian_targets(target_hm, h, w, sigma)
        logp = torch.log_softmax(hm.float().flatten(2), -1).view_as(tgt)
        kl = (tgt * (torch.log(tgt.clamp_min(1e-12)) - logp)).sum((-1, -2))  # (B, K)
        hm_total = hm_total + (kl * v).sum() / n
        err = (image_to_heatmap(c.float(), stride) - target_hm).abs().sum(-1)  # (B, K)
        co_total = co_total + (err * v).sum() / n
    k = len(heatmaps)
    return hm_total / k, co_total / k


def random_affine(
    batch: int,
    height: int,
    width: int,
    rotation_deg: float,
    scale: float,
    shift: float,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(B, 3, 3) random similarity matrices (pixel coordinates) about the image centre (kornia convention)."""

    def u(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device=device) * (hi - lo) + lo

    angle = u(-rotation_deg, rotation_deg, batch)
    s = u(1 - scale, 1 + scale, batch)
    trans = torch.stack([u(-shift, shift, batch) * width, u(-shift, shift, batch) * height], -1)
    center = torch.tensor([(width - 1) / 2, (height - 1) / 2], device=device).expand(batch, 2)
    return kgt.get_affine_matrix2d(trans, center, torch.stack([s, s], -1), angle)


def warp(x: torch.Tensor, matrix: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Warp (B, C, H, W) with (B, 3, 3) pixel-coordinate matrices (zero padding, same output size)."""
    h, w = x.shape[-2:]
    return kgt.warp_affine(x, matrix[:, :2].to(x.dtype), (h, w), mode=mode, padding_mode="zeros", align_corners=True)


def affine_consistency_loss(
    trunk: torch.nn.Module,
    image: torch.Tensor,
    features: torch.Tensor,
    rotation_deg: float = 30.0,
    scale: float = 0.15,
    shift: float = 0.1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Self-supervised equivariance of the trunk under a random similarity A.

    ``L = mean over valid pixels and channels of |trunk(A(image)) - A(stopgrad(features))|`` where the valid region
    is where the warp of an all-ones map is 1 (pixels whose source lies inside the image, minus a border pixel).

    Args:
        trunk: the trunk (B, 3, H, W) -> (B, F, H, W).
        image: (B, 3, H, W) input images in [0, 1].
        features: (B, F, H, W) trunk features of ``image`` (detached here).
        rotation_deg, scale, shift: ranges of the random similarity (see :func:`random_affine`).
        generator: optional torch generator for reproducible warps.

    Returns:
        Scalar loss.
    """
    b, _, h, w = image.shape
    matrix = random_affine(b, h, w, rotation_deg, scale, shift, image.device, generator)
    warped_image = warp(image, matrix)
    target = warp(features.detach().float(), matrix)
    valid = warp(torch.ones(b, 1, h, w, device=image.device), matrix) > 1 - 1e-3
    pred = trunk(warped_image).float()
    m = valid.float()
    denom = (m.sum() * pred.shape[1]).clamp_min(1.0)
    return ((pred - target).abs() * m).sum() / denom
