"""Metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from synthforge import metrics


def _face(scale: float = 1.0) -> torch.Tensor:
    pts = torch.zeros(68, 2)
    pts[:, 0] = torch.arange(68, dtype=torch.float32)
    pts[36] = torch.tensor([10.0, 20.0])
    pts[45] = torch.tensor([40.0, 60.0])  # distance 50
    return pts * scale


def test_nme_inter_ocular_hand_computed() -> None:
    gt = _face().unsqueeze(0)
    pred = gt.clone()
    pred[0, 0, 0] += 3.0  # one point off by 3 px, another by (3, 4) -> 5 px
    pred[0, 1] += torch.tensor([3.0, 4.0])
    expected = (3.0 + 5.0) / 68 / 50.0
    got = metrics.nme(pred, gt)
    assert got.shape == (1,)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert metrics.nme(pred, gt, "outer_eye_corners").item() == pytest.approx(expected, rel=1e-6)
    assert metrics.nme(pred, gt, 10.0).item() == pytest.approx(8.0 / 68 / 10.0, rel=1e-6)
    assert metrics.nme(pred, gt, torch.tensor([4.0])).item() == pytest.approx(8.0 / 68 / 4.0, rel=1e-6)


def test_nme_bbox_and_mask() -> None:
    gt = torch.tensor([[[0.0, 0.0], [4.0, 0.0], [4.0, 9.0], [0.0, 9.0]]])
    pred = gt + torch.tensor([[[1.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 2.0]]])
    # bbox = sqrt(4 * 9) = 6; mean error = 3/4
    assert metrics.nme(pred, gt, "bbox").item() == pytest.approx(0.75 / 6.0)
    assert metrics.nme(pred, gt, "bbox_diagonal").item() == pytest.approx(0.75 / math.hypot(4, 9))
    mask = torch.tensor([[True, True, False, False]])
    assert metrics.nme(pred, gt, 1.0, mask=mask).item() == pytest.approx(0.5)
    with pytest.raises(ValueError):
        metrics.nme(pred, gt, "nope")


def test_failure_rate_and_auc_exact() -> None:
    e = torch.tensor([0.0, 0.02, 0.05, 0.2])
    fr, auc = metrics.failure_rate_and_auc(e, 0.1)
    assert fr == pytest.approx(0.25)
    # CED integral on [0, 0.1]: 0.25*0.1(all>=0)... = mean(max(0.1 - e, 0)) = (0.1 + 0.08 + 0.05 + 0) / 4
    assert auc == pytest.approx((0.1 + 0.08 + 0.05) / 4 / 0.1)
    # Brute-force Riemann sum of the CED curve agrees.
    xs = torch.linspace(0, 0.1, 100001, dtype=torch.float64)
    ced = (e.double()[None, :] <= xs[:, None]).double().mean(1)
    assert auc == pytest.approx(torch.trapezoid(ced, xs).item() / 0.1, abs=1e-4)


def test_confusion_matrix_and_f1() -> None:
    target = torch.tensor([[0, 0, 1, 1, 2, 255]])
    pred = torch.tensor([[0, 1, 1, 1, 0, 2]])
    cm = metrics.confusion_matrix(pred, target, 4)
    expected = torch.zeros(4, 4, dtype=torch.int64)
    expected[0, 0] = 1
    expected[0, 1] = 1
    expected[1, 1] = 2
    expected[2, 0] = 1
    assert cm.dtype == torch.int64
    assert torch.equal(cm, expected)  # rows = target, cols = pred; 255 skipped
    f1 = metrics.f1_scores(cm)
    assert f1[0].item() == pytest.approx(2 * 1 / (2 + 2))
    assert f1[1].item() == pytest.approx(2 * 2 / (3 + 2))
    assert f1[2].item() == 0.0
    assert math.isnan(f1[3].item())
    assert metrics.foreground_mean_f1(f1) == pytest.approx((0.8 + 0.0) / 2)
    with pytest.raises(ValueError):
        metrics.confusion_matrix(torch.tensor([5]), torch.tensor([0]), 4)


def test_merged_f1() -> None:
    # classes 1 and 2 merged: confusions between them are forgiven.
    target = torch.tensor([1, 1, 2, 2, 0, 0])
    pred = torch.tensor([2, 1, 1, 0, 0, 1])
    cm = metrics.confusion_matrix(pred, target, 3)
    got = metrics.merged_f1_scores(cm, {"m": (1, 2)})
    # group: gt = 4 pixels, pred = 4 pixels (idx 0,1,2,5), TP = 3 (idx 0,1,2)
    assert got["m"] == pytest.approx(2 * 3 / 8)


def test_depth_errors_and_median_alignment() -> None:
    target = torch.tensor([[[1.0, 2.0], [3.0, 0.0]]])
    pred = torch.tensor([[[1.5, 2.0], [2.0, 9.0]]])
    mask = target > 0
    err = metrics.depth_errors(pred, target, mask)
    assert err.rmse.item() == pytest.approx(math.sqrt((0.25 + 0 + 1) / 3))
    assert err.absrel.item() == pytest.approx((0.5 / 1 + 0 + 1 / 3) / 3)
    assert err.count.item() == 3
    shifted = metrics.align_median(target + 0.7, target, mask)
    assert torch.allclose(shifted[mask], target[mask])
