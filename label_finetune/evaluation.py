"""Benchmark evaluation in the original image frame, streamed: only a confusion matrix and per-image NMEs are kept.

Predictions are made on face crops and mapped back with the crop's affine: landmarks through the inverse affine,
segmentation logits resampled (bilinear) onto the original pixel grid and arg-maxed; original pixels outside the crop
window are predicted as background.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as nnf

from label_finetune.paper import COLUMNS, PUBLISHED
from next3d_gen.errors import UserError
from next3d_gen.labels import PAPER_F1_COLUMNS, LabelSpace


def landmarks_to_original(landmarks: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
    """Map crop-frame points back to the original image.

    Args:
        landmarks: (B, K, 2) float crop pixels.
        affine: (B, 2, 3) float, original -> crop.

    Returns:
        (B, K, 2) float original-image pixels.
    """
    a = affine.to(torch.float64)
    lin, t = a[:, :, :2], a[:, :, 2]
    inv = torch.linalg.inv(lin)
    pts = (landmarks.to(torch.float64) - t[:, None, :]) @ inv.transpose(1, 2)
    return pts.to(landmarks.dtype)


def seg_to_original(logits: torch.Tensor, affine: torch.Tensor, size: tuple[int, int], background: int) -> torch.Tensor:
    """Resample one crop's logits onto the original pixel grid and take the arg-max.

    Args:
        logits: (C, R, R) float crop logits.
        affine: (2, 3) float original -> crop.
        size: (H, W) of the original (annotation) frame.
        background: class given to original pixels outside the crop window.

    Returns:
        (H, W) int64 class ids on ``logits``' device.
    """
    h, w = size
    r_h, r_w = logits.shape[-2:]
    dev = logits.device
    ys, xs = torch.meshgrid(
        torch.arange(h, device=dev, dtype=torch.float32),
        torch.arange(w, device=dev, dtype=torch.float32),
        indexing="ij",
    )
    a = affine.to(dev, torch.float32)
    u = a[0, 0] * xs + a[0, 1] * ys + a[0, 2]
    v = a[1, 0] * xs + a[1, 1] * ys + a[1, 2]
    # grid_sample, align_corners=False: normalised -1/+1 are the outer pixel edges -0.5 / R - 0.5
    grid = torch.stack([(2 * u + 1) / r_w - 1, (2 * v + 1) / r_h - 1], -1)[None]
    sampled = nnf.grid_sample(logits[None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    pred = sampled[0].argmax(0)
    outside = (u < -0.5) | (u > r_w - 0.5) | (v < -0.5) | (v > r_h - 0.5)
    return torch.where(outside, torch.full_like(pred, background), pred)


class SegAccumulator:
    """Dataset-level confusion matrix (rows = target, columns = prediction), memory O(C^2)."""

    def __init__(self, label_space: LabelSpace) -> None:
        self.space = label_space
        self.confusion = torch.zeros(label_space.num_classes, label_space.num_classes, dtype=torch.int64)
        self.images = 0

    def update(self, logits: torch.Tensor, affine: torch.Tensor, targets: list[torch.Tensor]) -> None:
        """logits (B, C, R, R), affine (B, 2, 3), targets: B original (H_i, W_i) uint8 label maps."""
        from synthforge.metrics import confusion_matrix

        for i, target in enumerate(targets):
            pred = seg_to_original(logits[i], affine[i], tuple(target.shape), self.space.background)
            cm = confusion_matrix(pred, target.to(pred.device).long(), self.space.num_classes)
            self.confusion += cm.cpu()
            self.images += 1

    def column_f1(self, columns_key: str) -> dict[str, float]:
        """F1 in % of each paper column (merged columns: union of their classes on both sides)."""
        from synthforge.metrics import f1_scores, merged_f1_scores

        f1 = f1_scores(self.confusion)
        out = {}
        for header, names in PAPER_F1_COLUMNS[columns_key]:
            ids = [self.space.id(n) for n in names]
            value = float(f1[ids[0]]) if len(ids) == 1 else merged_f1_scores(self.confusion, {header: ids})[header]
            out[header] = value * 100.0
        return out

    def per_class_f1(self) -> dict[str, float]:
        from synthforge.metrics import f1_scores

        return {n: float(v) * 100.0 for n, v in zip(self.space.classes, f1_scores(self.confusion), strict=True)}


class NMEAccumulator:
    """Per-image NMEs (fractions) in the original frame; memory O(N) floats."""

    def __init__(self, normalizer_points: tuple[int, int]) -> None:
        self.pair = normalizer_points
        self.values: list[torch.Tensor] = []

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred, target: (B, K, 2) original-image pixels."""
        from synthforge.metrics import nme

        a, b = self.pair
        norm = (target[:, a] - target[:, b]).norm(dim=-1)
        self.values.append(nme(pred, target, norm).detach().double().cpu())

    def all(self) -> torch.Tensor:
        return torch.cat(self.values) if self.values else torch.zeros(0, dtype=torch.float64)


def nme_summary(values: torch.Tensor) -> dict[str, float]:
    """NME (%), failure rate (%) and AUC (x 100) at 8% and 10% of per-image NME fractions."""
    from synthforge.metrics import failure_rate_and_auc

    out = {"images": int(values.numel()), "nme": float(values.mean()) * 100.0}
    for thr in (8, 10):
        fr, auc = failure_rate_and_auc(values, thr / 100.0)
        out[f"fr_{thr}"] = fr * 100.0
        out[f"auc_{thr}"] = auc * 100.0
    return out


def table_rows(dataset: str, results: dict[str, Any]) -> dict[str, float]:
    """Our row of the paper table from the ``results`` dict written by ``synthforge evaluate``."""
    if dataset == "w300":
        row = {}
        for split in ("common", "challenge", "full"):
            if split in results["splits"]:
                r = results["splits"][split]
                row[f"{split}_nme"] = r["nme"]
                if split == "full":
                    row.update({f"full_{k}": r[k] for k in ("fr_8", "auc_8", "fr_10", "auc_10")})
        return row
    split = next(iter(results["splits"].values()))
    return dict(split["columns"])


def _fmt(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def markdown_table(dataset: str, ours: dict[str, float], label: str = "ours") -> str:
    """Markdown table: the paper's rows (:mod:`label_finetune.paper`) then ours, columns of :data:`COLUMNS`.

    A column the paper does not report is a blank cell in its rows; a metric of ours that could not be computed
    prints as "-". The source of the published rows follows the table.
    """
    published = PUBLISHED[dataset]
    cols = [c for c in COLUMNS[dataset] if c in ours or any(c in r.values for r in published)]
    lines = ["| method | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for row in published:
        lines.append(
            f"| {row.method} | " + " | ".join(_fmt(row.values[c]) if c in row.values else "" for c in cols) + " |"
        )
    lines.append(f"| {label} | " + " | ".join(_fmt(ours.get(c)) for c in cols) + " |")
    sources = sorted({row.source for row in published})
    if sources:
        lines += ["", "Published rows: " + "; ".join(sources) + "."]
    return "\n".join(lines)


def csv_text(dataset: str, ours: dict[str, float], label: str = "ours") -> str:
    """The same table as CSV (published rows first)."""
    cols = list(COLUMNS[dataset])
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["method", *cols])
    for row in PUBLISHED[dataset]:
        w.writerow([row.method, *[row.values.get(c, "") for c in cols]])
    w.writerow([label, *[("" if ours.get(c) is None else f"{ours[c]:.4f}") for c in cols]])
    return buf.getvalue()


def write_results(path: Path, results: dict[str, Any], dataset: str) -> Path:
    """Write the JSON results and a CSV table beside it (same stem); returns the CSV path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, allow_nan=True) + "\n")
    csv_path = path.with_suffix(".csv")
    csv_path.write_text(csv_text(dataset, table_rows(dataset, results)))
    return csv_path


def run_split(
    model: Any,
    dataset: Any,
    batch_size: int = 8,
    num_workers: int = 0,
    limit: int | None = None,
    progress: bool = False,
    fabric: Any = None,
) -> dict[str, Any]:
    """Evaluate a :class:`~label_finetune.system.FinetuneSystem` on one dataset split (``return_original=True``).

    The device is Lightning's choice (``Fabric(accelerator="auto")``) unless a ``fabric`` is given.

    Returns:
        dict with ``seg`` (:class:`SegAccumulator` or None), ``nme`` (:class:`NMEAccumulator` or None), ``images``
        and ``seconds`` (wall time of the loop, data loading and mapping back included), and ``steady_images`` /
        ``steady_seconds``: the same without the first batch (warm-up).
    """
    import time

    import lightning as L
    from torch.utils.data import DataLoader, Subset
    from tqdm import tqdm

    from label_finetune.datasets.common import collate
    from label_finetune.datasets.lapa import INTER_OCULAR_106
    from next3d_gen.labels import INTER_OCULAR

    if limit is not None and limit < len(dataset):
        dataset = Subset(dataset, range(limit))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate)
    fabric = fabric or L.Fabric(accelerator="auto", devices=1)
    module = fabric.setup_module(model)
    loader = fabric.setup_dataloaders(loader)
    model.eval()
    seg = SegAccumulator(model.label_space) if model.seg_head is not None else None
    lm = None
    if model.landmark_head is not None:
        lm = NMEAccumulator(INTER_OCULAR if model.num_landmarks == 68 else INTER_OCULAR_106)
    images = 0
    first_images, first_seconds = 0, 0.0
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in tqdm(loader, desc="evaluate", disable=not progress, unit="batch"):
            out = module(batch["image"])
            if seg is not None:
                seg.update(out["seg"], batch["affine"], batch["orig_seg"])
            if lm is not None:
                if "orig_landmarks" not in batch:
                    raise UserError("the model predicts landmarks, the data has none: set --data.with_landmarks true")
                lm.update(landmarks_to_original(out["landmarks"], batch["affine"]), batch["orig_landmarks"])
            images += batch["image"].shape[0]
            if not first_images:
                first_images, first_seconds = images, time.perf_counter() - start
    seconds = time.perf_counter() - start
    return {
        "seg": seg,
        "nme": lm,
        "images": images,
        "seconds": seconds,
        "steady_images": images - first_images,
        "steady_seconds": seconds - first_seconds,
    }
