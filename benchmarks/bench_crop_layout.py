"""What surrounds the face in training crops, against real photos: the share of hair, background and neck pixels in
the crop's side strips and bottom corners, for the five real masks (``../shared/realdata``, never in tests) and for a
synthetic dataset (a generated HDF5 file, shard folder or index.json, e.g. a demo's ``train``).

Both are cut the same way, as the real masks have no landmarks: a window of 1.35 x the box of the face classes (skin,
nose, eyes, brows, lips, inner mouth: ``bench_real_transfer.FACE_CLASSES``) resampled to 96 x 96 labels
(nearest). Side strips: rows 30-89, 12 columns at each side (hair beside the face); bottom corners: rows 72-95,
24 columns at each side (clothes or hair below the face). Synthetic labels are merged with
``next3d_gen.labels.SYNTH_TO_REAL`` (so beards count as skin, as the real masks paint them).

    python benchmarks/bench_crop_layout.py DATA [--realdata ../shared/realdata] [--num 400]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import bench_real_transfer as transfer  # noqa: E402

from next3d_gen.errors import UserError  # noqa: E402
from next3d_gen.h5 import SampleReader  # noqa: E402
from next3d_gen.labels import REAL_MERGED, SYNTH_TO_REAL, real_merged_active  # noqa: E402
from synthforge.crops import mask_box_points  # noqa: E402

SIDE = 96
REGIONS = {"side strips": (slice(30, 90), 12), "bottom corners": (slice(72, 96), 24)}
COUNTED = ("hair", "background", "neck")


def layout(merged: np.ndarray) -> dict[str, dict[str, float]]:
    """``{region: {class: share of its pixels}}`` of one (H, W) map of :data:`REAL_MERGED` ids."""
    face = np.isin(merged, [REAL_MERGED.id(n) for n in transfer.FACE_CLASSES])
    labels = np.repeat(merged[..., None].astype(np.uint8), 3, 2)
    window, _ = transfer.face_window(labels, mask_box_points(face), 1.35, SIDE)
    crop = cv2.resize(window[..., 0], (SIDE, SIDE), interpolation=cv2.INTER_NEAREST)
    out = {}
    for region, (rows, cols) in REGIONS.items():
        part = np.concatenate([crop[rows, :cols], crop[rows, -cols:]], 1)
        out[region] = {name: float((part == REAL_MERGED.id(name)).mean()) for name in COUNTED}
    return out


def summary(layouts: list[dict[str, dict[str, float]]]) -> str:
    """One line: the mean share of each counted class per region, and how often hair covers over 30 % of it."""
    cells = []
    for region in REGIONS:
        shares = {n: np.mean([lay[region][n] for lay in layouts]) for n in COUNTED}
        over = np.mean([lay[region]["hair"] > 0.3 for lay in layouts])
        cells.append(
            f"{region}: " + ", ".join(f"{n} {v:.2f}" for n, v in shares.items()) + f" (hair > 30 %: {over:.2f})"
        )
    return " | ".join(cells)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", type=Path, help="synthetic HDF5 file, shard folder or index.json")
    p.add_argument("--realdata", type=Path, default=transfer.DEFAULT_REALDATA, help="default %(default)s")
    p.add_argument("--num", type=int, default=400, help="synthetic samples read (default 400)")
    args = p.parse_args(argv)
    try:
        reader = SampleReader(args.data, fields=["seg"])
        for sub in ("celebamask_hq_samples", "lapa_sample"):
            if not (args.realdata / sub).is_dir():
                raise UserError(f"--realdata: folder not found: {args.realdata / sub}")
    except UserError as e:
        print(f"bench_crop_layout: {e}", file=sys.stderr)
        return 2
    space = reader.label_space
    active = real_merged_active(space)
    real = [layout(item.gt_merged) for item in transfer.load_parsing(args.realdata, active)]
    lut = SYNTH_TO_REAL.lut(space, active)
    with reader:
        synth = [layout(lut[reader[i]["seg"]]) for i in range(min(args.num, len(reader)))]
    print(f"real masks ({len(real)}): {summary(real)}")
    print(f"{args.data} ({len(synth)} samples): {summary(synth)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
