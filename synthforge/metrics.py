"""Evaluation metrics: landmark NME / failure rate / CED AUC, segmentation confusion matrix and F1, depth errors.

Every function takes torch tensors (any device) and is exact (no sampling of the CED curve). Conventions:

* Landmarks are (x, y) pixels of one common frame for prediction and target; NME values are *fractions* of the
  normaliser (multiply by 100 for the "%" of the papers).
* Confusion matrices have **rows = ground truth, columns = prediction**: ``cm[t, p]`` counts pixels whose target is
  ``t`` and prediction is ``p``; pixels whose target equals ``ignore_index`` are not counted.
* F1 per class is ``2 TP / (#pred + #gt)`` from a confusion matrix accumulated over a whole set (dataset-level,
  the published code's and the face-parsing papers' convention), NaN for a class present in neither.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from next3d_gen.labels import IGNORE_INDEX, INTER_OCULAR

NME_NORMALIZERS = ("inter_ocular", "outer_eye_corners", "inter_pupil", "bbox", "bbox_diagonal")


def landmark_normalizer(target: torch.Tensor, normalizer: str = "inter_ocular") -> torch.Tensor:
    """Per-image NME normalising distance computed from the ground-truth landmarks.

    Args:
        target: (N, K, 2) float ground-truth landmarks, pixels.
        normalizer: ``"inter_ocular"`` / ``"outer_eye_corners"`` (distance between points 36 and 45 of the iBUG-68
            order: the 300W "inter-ocular" convention), ``"inter_pupil"`` (distance between the centroids of points
            36-41 and 42-47), ``"bbox"`` (sqrt(w * h) of the landmarks' bounding box), ``"bbox_diagonal"``.

    Returns:
        (N,) float tensor of distances in pixels.
    """
    target = target.float()
    if normalizer in ("inter_ocular", "outer_eye_corners"):
        a, b = INTER_OCULAR
        return (target[:, a] - target[:, b]).norm(dim=-1)
    if normalizer == "inter_pupil":
        return (target[:, 36:42].mean(1) - target[:, 42:48].mean(1)).norm(dim=-1)
    if normalizer in ("bbox", "bbox_diagonal"):
        size = target.amax(dim=1) - target.amin(dim=1)  # (N, 2) width, height
        if normalizer == "bbox":
            return (size[:, 0] * size[:, 1]).clamp_min(0).sqrt()
        return size.norm(dim=-1)
    raise ValueError(f"unknown NME normalizer {normalizer!r} (choose from {', '.join(NME_NORMALIZERS)})")


def nme(
    pred: torch.Tensor,
    target: torch.Tensor,
    normalizer: str | float | torch.Tensor = "inter_ocular",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Normalised mean error per image.

    Args:
        pred: (N, K, 2) predicted landmarks, pixels (same frame as ``target``).
        target: (N, K, 2) ground-truth landmarks, pixels.
        normalizer: a name accepted by :func:`landmark_normalizer` (needs K = 68 for the eye-based ones), a positive
            float used for every image, or an (N,) tensor of per-image distances in pixels.
        mask: optional (N, K) bool; only True points enter the mean (an image without any valid point gives NaN).

    Returns:
        (N,) float tensor: mean point-to-point Euclidean error divided by the normaliser (a fraction, not %).
    """
    if pred.shape != target.shape or pred.ndim != 3 or pred.shape[-1] != 2:
        raise ValueError(f"nme expects two (N, K, 2) tensors, got {tuple(pred.shape)} and {tuple(target.shape)}")
    err = (pred.float() - target.float()).norm(dim=-1)  # (N, K)
    if mask is None:
        per_image = err.mean(dim=1)
    else:
        m = mask.to(err.dtype)
        per_image = (err * m).sum(1) / m.sum(1)
    if isinstance(normalizer, str):
        norm = landmark_normalizer(target, normalizer)
    elif isinstance(normalizer, torch.Tensor):
        norm = normalizer.to(per_image).reshape(-1).expand_as(per_image)
    else:
        norm = torch.full_like(per_image, float(normalizer))
    return per_image / norm


def failure_rate_and_auc(nme_values: torch.Tensor, threshold: float = 0.08) -> tuple[float, float]:
    """Failure rate and area under the cumulative error distribution (CED) curve.

    The CED is ``F(e) = fraction of images with NME <= e``. The AUC is the exact integral of that step function over
    ``[0, threshold]`` divided by ``threshold`` (so a perfect method scores 1.0), which equals
    ``mean(max(threshold - nme, 0)) / threshold``.

    Args:
        nme_values: (N,) per-image NME fractions (e.g. from :func:`nme`).
        threshold: failure threshold, same unit (0.08 or 0.10 in the 300W literature).

    Returns:
        ``(failure_rate, auc)``: fraction of images with NME > threshold, and the normalised AUC, both in [0, 1].
    """
    if threshold <= 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    e = nme_values.detach().double().reshape(-1)
    if e.numel() == 0:
        raise ValueError("failure_rate_and_auc needs at least one NME value")
    failure = (e > threshold).double().mean().item()
    auc = ((threshold - e).clamp_min(0).mean() / threshold).item()
    return failure, auc


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Pixel confusion matrix.

    Args:
        pred: integer tensor of predicted class ids, any shape (e.g. (N, H, W)).
        target: integer tensor of ground-truth ids, same shape; ``ignore_index`` pixels are skipped.
        num_classes: C.
        ignore_index: target value to skip.

    Returns:
        (C, C) int64 tensor on ``pred``'s device, **rows = target, columns = prediction**. Predictions outside
        [0, C) on counted pixels raise ValueError.
    """
    if pred.shape != target.shape:
        raise ValueError(f"confusion_matrix: shapes differ {tuple(pred.shape)} vs {tuple(target.shape)}")
    p = pred.reshape(-1).long()
    t = target.reshape(-1).long().to(p.device)
    keep = t != ignore_index
    p, t = p[keep], t[keep]
    both = torch.cat([p, t])
    if both.numel() and (int(both.min()) < 0 or int(both.max()) >= num_classes):
        raise ValueError(f"confusion_matrix: class ids outside [0, {num_classes})")
    return torch.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def resolve_partial_labels(pred: torch.Tensor, target: torch.Tensor, partial: torch.Tensor) -> torch.Tensor:
    """Ground truth for scoring a map with partial labels (a source class that covers several of ours).

    A partial-label pixel counts as correct when the prediction is one of its allowed classes (the target becomes the
    prediction), else as a miss of its lowest allowed class id; other pixels keep ``target``.

    Args:
        pred: (N, H, W) int64 predicted ids.
        target: (N, H, W) int64 hard ids (``ignore_index`` at partial pixels).
        partial: (N, H, W) int64 bitmasks of the allowed ids (bit c = id c; 0 = no partial label).

    Returns:
        (N, H, W) int64 target for :func:`confusion_matrix`.
    """
    is_partial = partial != 0
    if not bool(is_partial.any()):
        return target
    allowed = ((partial >> pred.clamp(0, 62)) & 1).bool()
    lowest = torch.log2((partial & -partial).double().clamp_min(1.0)).round().long()  # index of the lowest set bit
    return torch.where(is_partial, torch.where(allowed, pred, lowest), target)


def f1_scores(confusion: torch.Tensor) -> torch.Tensor:
    """Per-class F1 (Dice) from a confusion matrix (rows = target, columns = prediction).

    Returns:
        (C,) float64 tensor ``2 TP / (#pred + #gt)``; NaN for classes absent from both prediction and target
        (use ``torch.nanmean`` to average over the present ones).
    """
    cm = confusion.double()
    tp = cm.diagonal()
    denom = cm.sum(0) + cm.sum(1)
    out = 2 * tp / denom
    return torch.where(denom > 0, out, torch.full_like(out, float("nan")))


def merge_confusion(confusion: torch.Tensor, groups: Mapping[str, Sequence[int]]) -> dict[str, torch.Tensor]:
    """Collapse each group of classes of a confusion matrix into a 2x2 (other, group) matrix."""
    out = {}
    c = confusion.shape[0]
    for name, ids in groups.items():
        member = torch.zeros(c, dtype=torch.bool, device=confusion.device)
        member[list(ids)] = True
        tp = confusion[member][:, member].sum()
        gt = confusion[member].sum()
        pr = confusion[:, member].sum()
        tn = confusion.sum() - gt - pr + tp
        out[name] = torch.stack([torch.stack([tn, pr - tp]), torch.stack([gt - tp, tp])])
    return out


def merged_f1_scores(confusion: torch.Tensor, merges: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """F1 of merged classes (e.g. ``LabelSpace.merges``: "mouth" = upper lip + inner mouth + lower lip).

    A pixel counts as a true positive of a merged class when both its target and its prediction belong to the
    group (confusions *inside* the group are forgiven). NaN when the group is absent from both.

    Args:
        confusion: (C, C) matrix from :func:`confusion_matrix`.
        merges: ``{merged_name: (class_id, ...)}``.

    Returns:
        ``{merged_name: f1}``.
    """
    return {name: float(f1_scores(cm2)[1]) for name, cm2 in merge_confusion(confusion, merges).items()}


def foreground_mean_f1(f1: torch.Tensor, background: int | Sequence[int] = 0) -> float:
    """Mean F1 over the classes present (non-NaN), leaving out the background id(s)."""
    keep = torch.ones_like(f1, dtype=torch.bool)
    keep[list(background) if isinstance(background, Sequence) else [background]] = False
    return float(torch.nanmean(f1[keep]))


@dataclass
class DepthErrors:
    """Per-image depth errors over a mask (each (N,) float64; NaN for an image with an empty mask).

    Attributes:
        rmse: root mean squared error, in the input unit (metres -> multiply by 1000 for mm).
        absrel: mean of |pred - target| / target (meaningful for absolute, positive depth only).
        sq_sum: sum of squared errors (input unit squared), for dataset-level accumulation.
        count: number of masked pixels.
    """

    rmse: torch.Tensor
    absrel: torch.Tensor
    sq_sum: torch.Tensor
    count: torch.Tensor


def align_median(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Shift each predicted depth map so that its median over ``mask`` equals the target's median there.

    Args:
        pred, target: (N, H, W) or (N, 1, H, W) float depth maps.
        mask: same shape, bool.

    Returns:
        ``pred`` shifted per image (images with an empty mask are returned unchanged).
    """
    out = pred.clone()
    for i in range(pred.shape[0]):
        m = mask[i].bool()
        if m.any():
            out[i] = pred[i] - pred[i][m].median() + target[i][m].median()
    return out


def depth_errors(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> DepthErrors:
    """RMSE and AbsRel of depth maps over a mask, per image.

    Args:
        pred: (N, H, W) or (N, 1, H, W) float predicted depth (metres, or relative depth in metres).
        target: same shape, ground truth.
        mask: same shape, bool: pixels that count (e.g. ground-truth foreground).

    Returns:
        :class:`DepthErrors` with (N,) tensors.
    """
    n = pred.shape[0]
    p = pred.reshape(n, -1).double()
    t = target.reshape(n, -1).double()
    m = mask.reshape(n, -1).bool()
    diff = torch.where(m, p - t, torch.zeros_like(p))
    count = m.sum(1)
    sq_sum = (diff**2).sum(1)
    cnt = count.double()
    rmse = (sq_sum / cnt).sqrt()
    safe_t = torch.where(m & (t != 0), t, torch.ones_like(t))
    absrel = torch.where(m, diff.abs() / safe_t.abs(), torch.zeros_like(p)).sum(1) / cnt
    return DepthErrors(rmse=rmse, absrel=absrel, sq_sum=sq_sum, count=count)
