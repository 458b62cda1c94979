"""Stage-B evaluation on a held-out synthetic set, with trivial baselines on the same crops.

Metrics (same definitions as the validation metrics of :mod:`synthforge.system`):

* ``nme``: landmark NME, % of the outer-eye-corner distance (36 / 45), mean over images, crop pixels.
* ``seg_f1_mean``: mean F1 over the foreground classes present, from the dataset-level confusion matrix.
* ``depth_rmse_mm``: RMSE of relative depth over ground-truth foreground pixels (pooled), mm, after aligning each
  predicted map's median over the GT foreground to the GT median.

Baselines (computed from the held-out ground truth itself, i.e. as favourable to the baseline as possible):

* ``baseline_nme``: every image predicted as the set's mean landmark shape in the crop.
* ``baseline_seg_f1_mean``: every image predicted as the per-pixel majority class of the set.
* ``baseline_depth_rmse_mm``: every image predicted as the per-pixel mean relative depth map of the set.

Each metric and its baseline are computed only over the samples that have its ground truth (an imported set may
have no depth, or relative depth only: then ``depth_rmse_mm`` and its baseline are None); ``counts`` says how many
images each was computed on. Partial-label pixels are scored as in training's validation
(:func:`synthforge.metrics.resolve_partial_labels`); the majority-class baseline sees the hard labels only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from next3d_gen.errors import UserError
from next3d_gen.h5 import DEPTH_KINDS
from synthforge import metrics
from synthforge.checkpoints import STAGE1, build_stage1_system, load_checkpoint
from synthforge.data.dataset import SynthFaceDataset


def load_system(checkpoint: str | Path):  # noqa: ANN201 - MultiTaskSystem
    """The trained :class:`~synthforge.system.MultiTaskSystem` of a ``synthforge train`` checkpoint (CPU, eval).

    The file is read safely (:func:`synthforge.checkpoints.load_checkpoint`: no code from it runs).

    Raises:
        UserError: naming the file when it is missing, damaged, unsafe or not a stage-I checkpoint.
    """
    return build_stage1_system(load_checkpoint(checkpoint, expect=STAGE1, consumer="load_system"), checkpoint)


@torch.no_grad()
def evaluate_synthetic(
    checkpoint: str | Path,
    dataset: str | Path,
    batch_size: int = 32,
    max_samples: int | None = None,
    png_path: str | Path | None = None,
    png_rows: int = 6,
) -> dict[str, float | int | dict[str, float]]:
    """Evaluate a stage-B checkpoint and the trivial baselines on a held-out HDF5 set.

    Args:
        checkpoint: ``.ckpt`` written by ``synthforge train``.
        dataset: held-out set (file, shard folder or index.json); cropped like the training validation set
            (crop size and scale taken from the checkpoint).
        batch_size: evaluation batch size.
        max_samples: evaluate only the first N samples.
        png_path: if given, write a prediction-vs-ground-truth grid of the first samples there.
        png_rows: samples in that grid.

    Returns:
        ``{"nme", "seg_f1_mean", "depth_rmse_mm", "baseline_nme", "baseline_seg_f1_mean",
        "baseline_depth_rmse_mm", "num_samples", "seg_f1" (per class), "seg_f1_merged", "counts"}``; a metric
        without ground truth in the set is None (``counts``: images per metric).
    """
    ckpt = load_checkpoint(checkpoint, expect=STAGE1, consumer="evaluate_synthetic")
    system = build_stage1_system(ckpt, checkpoint)
    dm_hp = ckpt.get("datamodule_hyper_parameters", {}) or {}
    crop_size = int(system.crop_size or dm_hp.get("crop_size", 128))
    # a damaged held-out row stops the evaluation (UserError naming file and row) instead of being replaced
    ds = SynthFaceDataset(
        dataset, crop_size=crop_size, crop_scale=float(dm_hp.get("crop_scale", 1.6)), skip_damaged=False
    )
    if ds.label_space.classes != system.label_space.classes:
        raise UserError(f"{dataset}: label space differs from the checkpoint's ({system.label_space.name})")
    if max_samples is not None:
        ds = torch.utils.data.Subset(ds, range(min(max_samples, len(ds))))
    label_space = system.label_space
    c = label_space.num_classes
    cm = torch.zeros(c, c, dtype=torch.int64)
    nme_vals, gt_lm, gt_seg, gt_depth, gt_mask, has_lm = [], [], [], [], [], []
    d_sq, d_n, seg_images = 0.0, 0, 0
    png = None
    for batch in DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0):
        out = system.net(batch["image"])
        seg_pred = out.seg.argmax(1)
        seg_gt = metrics.resolve_partial_labels(seg_pred, batch["seg"], batch["seg_partial"])
        cm += metrics.confusion_matrix(seg_pred, seg_gt, c)
        seg_images += int((seg_gt != 255).flatten(1).any(1).sum())
        nme_vals.append(metrics.nme(out.landmarks.float(), batch["landmarks"].float()))
        mask = batch["depth_mask"].bool() & (batch["depth_kind"] == DEPTH_KINDS.index("metric")).view(-1, 1, 1, 1)
        has_lm.append(batch["has_landmarks"].bool())
        aligned = metrics.align_median(out.depth.float(), batch["depth"].float(), mask)
        err = metrics.depth_errors(aligned, batch["depth"].float(), mask)
        d_sq += float(err.sq_sum.sum())
        d_n += int(err.count.sum())
        gt_lm.append(batch["landmarks"].float())
        gt_seg.append(batch["seg"].to(torch.uint8))
        gt_depth.append(batch["depth"].float())
        gt_mask.append(mask)
        if png is None and png_path is not None:
            png = (batch, seg_pred, out.depth.float(), out.landmarks.float())
    keep = torch.cat(has_lm)
    lm = torch.cat(gt_lm)[keep]
    seg = torch.cat(gt_seg).long()
    depth = torch.cat(gt_depth)
    mask = torch.cat(gt_mask)
    f1 = metrics.f1_scores(cm)
    with_depth = int((mask.flatten(1).any(1)).sum())
    result: dict = {
        "num_samples": int(seg.shape[0]),
        "nme": float(100 * torch.cat(nme_vals)[keep].mean()) if len(lm) else None,
        "seg_f1_mean": metrics.foreground_mean_f1(f1, label_space.background),
        "depth_rmse_mm": float(1000 * np.sqrt(d_sq / max(d_n, 1))) if d_n else None,
        "counts": {"nme": len(lm), "seg_f1_mean": seg_images, "depth_rmse_mm": with_depth},
    }  # fmt: skip
    # baselines
    mean_shape = lm.mean(0, keepdim=True).expand_as(lm)
    result["baseline_nme"] = float(100 * metrics.nme(mean_shape, lm).mean()) if len(lm) else None
    onehot_counts = torch.zeros(c, *seg.shape[1:], dtype=torch.int64)
    valid = seg != 255
    for k in range(c):
        onehot_counts[k] = ((seg == k) & valid).sum(0)
    majority = onehot_counts.argmax(0).expand_as(seg)
    f1_base = metrics.f1_scores(metrics.confusion_matrix(majority, seg, c))
    result["baseline_seg_f1_mean"] = (
        metrics.foreground_mean_f1(f1_base, label_space.background) if bool(valid.any()) else None
    )
    fg = mask.float()
    mean_depth = (depth * fg).sum(0, keepdim=True) / fg.sum(0, keepdim=True).clamp_min(1)
    base_depth = metrics.align_median(mean_depth.expand_as(depth).clone(), depth, mask)
    err = metrics.depth_errors(base_depth, depth, mask)
    result["baseline_depth_rmse_mm"] = (
        float(1000 * np.sqrt(float(err.sq_sum.sum()) / max(int(err.count.sum()), 1))) if d_n else None
    )
    result["seg_f1"] = {n: float(v) for n, v in zip(label_space.classes, f1.tolist(), strict=True) if v == v}
    result["seg_f1_merged"] = {k: v for k, v in metrics.merged_f1_scores(cm, label_space.merges).items() if v == v}
    if png is not None:
        from synthforge.visualize import prediction_grid, save_png

        save_png(str(png_path), prediction_grid(*png, label_space=label_space, max_rows=png_rows))
    return result
