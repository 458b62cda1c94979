"""Calibration of the eyeglasses gate (``synthforge.inference.GLASSES_MIN_SHARE``) on synthetic faces only.

    python benchmarks/bench_glasses_gate.py CKPT [--data HELDOUT] [--num 1000] [--seed 7] [--image-size 128]

A stage-I checkpoint parses synthetic faces it has not seen (``--data``, or ``--num`` fresh samples generated with
``configs/generate/default.yaml`` at ``--seed`` into a temporary folder), cut as in training (un-jittered crops at
the checkpoint's crop size and scale). For each candidate share the gate drops a crop's eyeglasses pixels when they
cover less than that share of the crop; the table gives, over all crops: the eyeglasses pixel F1, precision and
recall against the renderer's labels; the share of faces with glasses that keep some glasses pixels; the share of
faces without glasses that still show some. The last line names the largest share (on the grid) whose pixel F1 is
not below the ungated one: the specks it removes were not glasses. Never reads real data.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader
from tqdm import tqdm

from next3d_gen.errors import UserError
from synthforge.data.dataset import SynthFaceDataset
from synthforge.inference import GLASSES_MIN_SHARE, Predictor

ROOT = Path(__file__).resolve().parents[1]
GRID = (0.0, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02)


def glasses_shares(predictor: Predictor, data: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per crop: predicted (ungated argmax) and true eyeglasses pixel counts, and true-positive counts; (N,) each."""
    crop = predictor.crop
    if crop is None:
        raise UserError("the checkpoint records no crop scale (data.crop_scale)")
    ds = SynthFaceDataset(data, crop_size=predictor.crop_size, crop_scale=crop.scale, skip_damaged=False)
    if ds.label_space.classes != predictor.label_space.classes:
        raise UserError(f"{data}: label space differs from the checkpoint's")
    g = predictor.label_space.classes.index("eyeglasses")
    pred_n, gt_n, tp_n = [], [], []
    for batch in tqdm(DataLoader(ds, batch_size=32), desc="parse", unit="batch", file=sys.stderr):
        for pred, seg in zip(predictor.predict(batch["image"]), batch["seg"].numpy(), strict=True):
            p, t = pred.seg == g, seg == g
            pred_n.append(int(p.sum()))
            gt_n.append(int(t.sum()))
            tp_n.append(int((p & t).sum()))
    return np.array(pred_n), np.array(gt_n), np.array(tp_n)


def gate_table(pred_n: np.ndarray, gt_n: np.ndarray, tp_n: np.ndarray, pixels: int) -> list[dict]:
    """One row per share of :data:`GRID`: the gate keeps a crop's glasses pixels when ``pred_n >= share * pixels``."""
    rows = []
    wearer = gt_n > 0
    for share in GRID:
        keep = pred_n >= share * pixels
        tp, pred, gt = int(tp_n[keep].sum()), int(pred_n[keep].sum()), int(gt_n.sum())
        shown = keep & (pred_n > 0)
        rows.append(
            {
                "share": share,
                "f1": 2 * tp / max(pred + gt, 1),
                "precision": tp / max(pred, 1),
                "recall": tp / max(gt, 1),
                "wearers_kept": float(shown[wearer].mean()) if wearer.any() else float("nan"),
                "bare_with_glasses": float(shown[~wearer].mean()) if (~wearer).any() else float("nan"),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ckpt", type=Path, help="stage-I checkpoint (synthforge train)")
    ap.add_argument("--data", type=Path, default=None, help="held-out synthetic set (default: generate --num)")
    ap.add_argument("--num", type=int, default=1000, help="fresh samples to generate (default %(default)s)")
    ap.add_argument("--seed", type=int, default=7, help="seed of the generated samples (default %(default)s)")
    ap.add_argument("--image-size", type=int, default=128, help="render size (default %(default)s, the demo's)")
    args = ap.parse_args(argv)
    try:
        if args.num < 1:
            raise UserError(f"--num must be >= 1, got {args.num}")
        predictor = Predictor.from_checkpoint(args.ckpt, option="ckpt", min_share={})
        if predictor.label_space is None or "eyeglasses" not in predictor.label_space.classes:
            raise UserError(f"{args.ckpt}: no eyeglasses class in the checkpoint's label space")
        with tempfile.TemporaryDirectory() as tmp:
            data = args.data
            if data is None:
                from synthforge.commands import generate

                data = Path(tmp) / "heldout"
                config = ROOT / "configs" / "generate" / "default.yaml"
                status = generate.main(
                    ["--config", str(config), "--num", str(args.num), "--seed", str(args.seed), "--out", str(data)]
                    + ["--image-size", str(args.image_size)]
                )
                if status:
                    return status
            pred_n, gt_n, tp_n = glasses_shares(predictor, data)
    except UserError as err:
        print(f"bench_glasses_gate: {err}", file=sys.stderr)
        return 2
    rows = gate_table(pred_n, gt_n, tp_n, predictor.crop_size**2)
    print(f"\n{len(gt_n)} synthetic crops, {int((gt_n > 0).sum())} with glasses; checkpoint {args.ckpt}")
    print("| gate share (% of crop) | pixel F1 | precision | recall | wearers keeping glasses | bare with glasses |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {100 * r['share']:.2f} | {r['f1']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} "
            f"| {r['wearers_kept']:.3f} | {r['bare_with_glasses']:.3f} |"
        )
    best = max(r["share"] for r in rows if r["f1"] >= rows[0]["f1"])
    print(
        f"largest share with pixel F1 >= the ungated {rows[0]['f1']:.3f}: {100 * best:.2f} % "
        f"(GLASSES_MIN_SHARE: {100 * GLASSES_MIN_SHARE:.2f} %)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
