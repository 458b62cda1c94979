"""Stage-B losses: segmentation CE (with partial labels), foreground depth L1 (metric) or scale-and-shift-invariant
L1 (relative depth), landmark heatmap + coordinate terms on every hourglass stack, optional normal / UV terms, and the
self-supervised affine-consistency loss on trunk features.

Every term is a mean (never a sum over pixels), so the weights in :class:`LossConfig` are comparable:

* ``seg``: cross-entropy, mean over labelled pixels. A pixel with a partial label (its source class covers several of
  ours: :data:`next3d_gen.labels.TRAINING_MERGE_TABLES`) counts ``-log(sum of the softmax probabilities of the allowed
  classes)``, the cross-entropy of the set; a hard label is the one-class case.
* ``seg_dice``: soft Dice loss over the hard-labelled pixels, mean over the classes present in the batch (small classes
  count as much as large ones, which CE alone learns slowly).
* ``depth``: L1 of relative depth on ground-truth foreground pixels of samples with *metric* depth, in metres (the
  default weight 100 makes it an L1 in centimetres).
* ``depth_ssi``: for samples with *relative* (unitless) depth: the prediction is aligned to the target by the
  per-sample least-squares scale and shift (as MiDaS does), then the L1 residual is divided by the target's mean
  absolute deviation on the foreground (a unitless fraction of the head's depth spread).
* ``depth_l2``: mean squared error of the metric term (metres squared): weighs the large errors (neck, silhouette
  edges) that dominate an RMSE more than L1 does.
* ``heatmap``: KL divergence between the Gaussian target distribution (sigma ``heatmap_sigma`` heatmap pixels) and
  the spatial softmax of each stack's heatmap, mean over in-crop landmarks and stacks.
* ``coord``: L1 between each stack's soft-argmax coordinates and the target, in heatmap pixels (crop px / 4).
* ``ssl``: L1 between trunk features of an affinely warped image and the warped stop-gradient features of the
  original pass, averaged over the channels and the valid (in-bounds) warped region.

Missing ground truth is masked per sample: the ``*_terms`` functions return a :class:`Term`, per-sample sums and
counts, where a sample without that label (``present`` False, or no pixel / point in its mask) contributes exactly
zero to both, hence exactly zero gradient; the batch value is the pooled mean over the samples that have it, and the
same sums give per-source values of a mixture (:meth:`Term.value` with a selection).
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
        seg, seg_dice, depth, depth_ssi, depth_l2, heatmap, coord, normal, uv, ssl: weights of the terms (see the
            module docstring). ``depth_ssi`` 2.0 puts the two depth terms on one scale: the foreground depth of our
            generated crops (128 px, crop scale 1.6) has a mean absolute deviation of about 2.2 cm (median of 32
            samples), so an error of e metres costs ``100 e`` in ``depth`` and about ``2 e / 0.022 = 91 e`` in
            ``depth_ssi``.
        heatmap_sigma: std of the Gaussian heatmap targets, heatmap pixels.
        ssl_rotation_deg: max |rotation| of the SSL warp, degrees.
        ssl_scale: max relative scale change of the SSL warp (scale in [1 - s, 1 + s]).
        ssl_shift: max |translation| of the SSL warp, fraction of the image side.
    """

    seg: float = 1.0
    seg_dice: float = 0.0
    depth: float = 100.0
    depth_ssi: float = 2.0
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


@dataclass
class Term:
    """A loss term as per-sample sums, so that samples without the label drop out and mixtures can be split by source.

    Attributes:
        num: (B,) float32: sum of the per-pixel / per-point losses of each sample (exactly 0 for a sample without the
            label).
        den: (B,) float32: how many pixels / points each sample counts (0 without the label).
    """

    num: torch.Tensor
    den: torch.Tensor

    def value(self, select: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled mean ``sum(num) / sum(den)`` over all samples or the (B,) bool ``select``; 0 where nothing counts."""
        num, den = (self.num, self.den) if select is None else (self.num[select], self.den[select])
        return num.sum() / den.sum().clamp_min(1.0)


def per_sample_term(values: torch.Tensor, mask: torch.Tensor, present: torch.Tensor | None = None) -> Term:
    """Term of (B, ...) ``values`` over a same-shape (or broadcastable) bool ``mask`` and (B,) ``present``."""
    m = mask.expand_as(values)
    if present is not None:
        m = m & present.view(-1, *([1] * (values.dim() - 1))).bool()
    dims = tuple(range(1, values.dim()))
    num = torch.where(m, values, torch.zeros_like(values)).sum(dims)
    return Term(num, m.sum(dims).to(num.dtype))


def segmentation_terms(
    logits: torch.Tensor,
    target: torch.Tensor,
    partial: torch.Tensor | None = None,
    present: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> Term:
    """Cross-entropy of hard and partial labels, per sample.

    Args:
        logits: (B, C, H, W) float.
        target: (B, H, W) int64 class ids; ``ignore_index`` = no hard label (ignored, or partial).
        partial: optional (B, H, W) int64 bitmasks (bit c = class c allowed) at partial-label pixels, 0 elsewhere;
            such a pixel costs ``logsumexp(all logits) - logsumexp(allowed logits)`` = -log P(allowed set).
        present: optional (B,) bool: samples with a segmentation label.

    Returns:
        :class:`Term` counting every hard- and partial-labelled pixel (nats).
    """
    if partial is None or not bool((partial != 0).any()):
        ce = tnf.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="none")  # 0 if ignored
        return per_sample_term(ce, target != ignore_index, present)
    logp = torch.log_softmax(logits.float(), 1)  # (B, C, H, W), shared by the hard and the partial labels
    hard = target != ignore_index
    nll = -logp.gather(1, torch.where(hard, target, 0)[:, None])[:, 0]  # (B, H, W)
    term = per_sample_term(nll, hard, present)
    pm = partial != 0
    if present is not None:
        pm = pm & present.view(-1, 1, 1).bool()
    b, y, x = pm.nonzero(as_tuple=True)
    lp = logp.permute(0, 2, 3, 1)[b, y, x]  # (N, C) log-probabilities of the partial-label pixels
    allowed = ((partial[b, y, x, None] >> torch.arange(lp.shape[1], device=lp.device)) & 1).bool()
    set_nll = -torch.logsumexp(lp.masked_fill(~allowed, float("-inf")), 1)
    return Term(term.num.index_add(0, b, set_nll), term.den + pm.sum((1, 2)).to(term.den.dtype))


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Cross-entropy. logits (B, C, H, W) float; target (B, H, W) int64 ids (``ignore_index`` skipped)."""
    return segmentation_terms(logits, target, ignore_index=ignore_index).value()


def dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """1 - soft Dice, averaged over the classes present in ``target``.

    Args:
        logits: (B, C, H, W) float. target: (B, H, W) int64 ids; ``ignore_index`` pixels are left out.
    """
    C = logits.shape[1]
    valid = target != ignore_index  # (B, H, W)
    probs = torch.softmax(logits.float(), dim=1)  # (B, C, H, W)
    t = torch.where(valid, target, 0)
    labelled = t[valid]  # (N,) class of each labelled pixel
    # per class: the true class's probability summed over its pixels, its pixel count, all its probability mass
    # (no (B, C, H, W) one-hot: the same sums as with one, in 2/3 of the time with the backward pass)
    inter = probs.new_zeros(C).index_add(0, labelled, probs.gather(1, t[:, None])[:, 0][valid])
    gt = torch.bincount(labelled, minlength=C).to(probs.dtype)
    mass = torch.einsum("bchw,bhw->c", probs, valid.to(probs.dtype))
    dice = (2 * inter + 1.0) / (mass + gt + 1.0)
    present = gt > 0
    if not present.any():
        return logits.sum() * 0.0
    return (1.0 - dice[present]).mean()


def masked_l1_terms(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, present: torch.Tensor | None = None
) -> Term:
    """|pred - target| per sample over ``mask`` pixels (all (B, c, H, W); mask broadcast over channels)."""
    return per_sample_term((pred.float() - target.float()).abs(), mask.bool(), present)


def masked_mse_terms(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, present: torch.Tensor | None = None
) -> Term:
    """(pred - target)^2 per sample over ``mask`` pixels (all (B, c, H, W); mask broadcast over channels)."""
    return per_sample_term((pred.float() - target.float()).square(), mask.bool(), present)


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean |pred - target| over ``mask`` pixels (all (B, c, H, W); mask broadcast over channels). 0 if empty."""
    return masked_l1_terms(pred, target, mask).value()


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean (pred - target)^2 over ``mask`` pixels (all (B, c, H, W); mask broadcast over channels). 0 if empty."""
    return masked_mse_terms(pred, target, mask).value()


def scale_shift_align(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``s * pred + t`` with the per-sample least-squares ``(s, t)`` over ``mask`` (MiDaS's alignment).

    Args:
        pred, target: (B, 1, H, W) float. mask: (B, 1, H, W) bool.

    Returns:
        (B, 1, H, W) float32 aligned prediction (differentiable in ``pred``). A sample whose masked prediction is
        constant (or with fewer than 2 pixels) gets ``s = 0`` and ``t`` = the target's masked mean.
    """
    m = mask.float()
    p, g = pred.float(), target.float()
    n = m.sum((1, 2, 3))
    sp, sg = (m * p).sum((1, 2, 3)), (m * g).sum((1, 2, 3))
    spp, spg = (m * p * p).sum((1, 2, 3)), (m * p * g).sum((1, 2, 3))
    det = n * spp - sp * sp
    ok = det > 1e-12 * n.clamp_min(1.0) ** 2
    s = torch.where(ok, (n * spg - sp * sg) / torch.where(ok, det, torch.ones_like(det)), torch.zeros_like(det))
    t = (sg - s * sp) / n.clamp_min(1.0)
    return s.view(-1, 1, 1, 1) * p + t.view(-1, 1, 1, 1)


def ssi_residual(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale-and-shift-invariant depth residual: ``(align(pred) - target) / spread``.

    ``align`` is :func:`scale_shift_align`; ``spread`` is the target's mean absolute deviation from its masked mean,
    so the residual is unitless and independent of the target's scale and offset.

    Args:
        pred, target: (B, 1, H, W) float. mask: (B, 1, H, W) bool.

    Returns:
        ``(residual, ok)``: (B, 1, H, W) float32 (meaningful on ``mask``) and (B,) bool: samples with at least 3
        masked pixels and a non-flat target (the others must not count).
    """
    m = mask.bool()
    g = target.float()
    n = m.sum((1, 2, 3)).float()
    mean = torch.where(m, g, torch.zeros_like(g)).sum((1, 2, 3)) / n.clamp_min(1.0)
    spread = torch.where(m, (g - mean.view(-1, 1, 1, 1)).abs(), torch.zeros_like(g)).sum((1, 2, 3)) / n.clamp_min(1.0)
    ok = (n >= 3) & (spread > 0)
    safe = torch.where(ok, spread, torch.ones_like(spread)).view(-1, 1, 1, 1)
    return (scale_shift_align(pred, g, m) - g) / safe, ok


def ssi_depth_terms(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, present: torch.Tensor | None = None
) -> Term:
    """Scale-and-shift-invariant depth L1 per sample (for relative, unitless depth): ``|ssi_residual|`` over
    ``mask`` (:func:`ssi_residual`; samples it marks not ok count nothing).

    Args:
        pred, target: (B, 1, H, W) float. mask: (B, 1, H, W) bool. present: optional (B,) bool.
    """
    residual, ok = ssi_residual(pred, target, mask)
    return per_sample_term(residual.abs(), mask.bool(), ok if present is None else ok & present.bool())


def normal_loss_terms(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, present: torch.Tensor | None = None
) -> Term:
    """(1 - cosine) per sample between (B, 3, H, W) normals over the (B, 1, H, W) mask."""
    cos = (tnf.normalize(pred.float(), dim=1) * target.float()).sum(1, keepdim=True)
    return per_sample_term(1 - cos, mask.bool(), present)


def normal_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean (1 - cosine) between (B, 3, H, W) normals over the (B, 1, H, W) mask."""
    return normal_loss_terms(pred, target, mask).value()


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


def landmark_terms(
    heatmaps: list[torch.Tensor],
    coords: list[torch.Tensor],
    target: torch.Tensor,
    valid: torch.Tensor,
    stride: int = 4,
    sigma: float = 1.0,
) -> tuple[Term, Term]:
    """Heatmap KL and coordinate L1 per sample, averaged over stacks, counted over valid landmarks.

    Args:
        heatmaps: per stack (B, K, h, w) logits of the spatial distribution.
        coords: per stack (B, K, 2) predicted coordinates, input pixels.
        target: (B, K, 2) ground truth, input pixels.
        valid: (B, K) bool (e.g. inside the crop; all False for a sample without landmarks).
        stride: input pixels per heatmap pixel.
        sigma: Gaussian target std, heatmap pixels.

    Returns:
        ``(heatmap_kl, coord_l1_in_heatmap_pixels)`` terms.
    """
    v = valid.bool()
    target_hm = image_to_heatmap(target.float(), stride)
    hm_total = coords[0].new_zeros(v.shape, dtype=torch.float32)
    co_total = coords[0].new_zeros(v.shape, dtype=torch.float32)
    targets: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}  # per heatmap size: target, sum t log t
    for hm, c in zip(heatmaps, coords, strict=True):
        h, w = hm.shape[-2:]
        if (h, w) not in targets:  # the stacks share their size: one target for all
            tgt = gaussian_targets(target_hm, h, w, sigma)
            targets[(h, w)] = tgt, (tgt * torch.log(tgt.clamp_min(1e-12))).sum((-1, -2))
        tgt, plogp = targets[(h, w)]
        logp = torch.log_softmax(hm.float().flatten(2), -1).view_as(tgt)
        hm_total = hm_total + plogp - (tgt * logp).sum((-1, -2))  # (B, K) KL(target || softmax)
        co_total = co_total + (image_to_heatmap(c.float(), stride) - target_hm).abs().sum(-1)  # (B, K)
    k = len(heatmaps)
    return per_sample_term(hm_total / k, v), per_sample_term(co_total / k, v)


def landmark_losses(
    heatmaps: list[torch.Tensor],
    coords: list[torch.Tensor],
    target: torch.Tensor,
    valid: torch.Tensor,
    stride: int = 4,
    sigma: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Heatmap KL and coordinate L1, averaged over stacks and valid landmarks (:func:`landmark_terms`' values).

    Returns:
        ``(heatmap_kl, coord_l1_in_heatmap_pixels)`` scalars.
    """
    hm, co = landmark_terms(heatmaps, coords, target, valid, stride, sigma)
    return hm.value(), co.value()


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
