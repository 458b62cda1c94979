"""Write a PNG gallery of random procedural renders of the built-in head, each next to its segmentation.

Usage::

    python benchmarks/render_gallery.py --out gallery.png [--num 16] [--size 256] [--seed 0]

Samples come from the generation pipeline's own sampler (identity, expression, pose, camera) with the default
generation config, so the gallery shows what ``synthforge generate`` writes. Occluder pixels are shown as background
in the label panel, as the pipeline relabels them.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from next3d_gen.labels import SYNTH


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gallery.png")
    ap.add_argument("--num", type=int, default=16)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cols", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(1)

    from PIL import Image

    from next3d_gen.pipeline import SamplePipeline
    from next3d_gen.sampling import GenerateConfig

    cfg = GenerateConfig(seed=args.seed, image_size=args.size)
    pipe = SamplePipeline(cfg)
    palette = SYNTH.palette_array()
    tiles = []
    t0 = time.perf_counter()
    for i in range(args.num):
        rec = pipe.generate(i)
        img = rec["image"]
        seg = palette[rec["seg"]]
        overlay = (0.45 * img + 0.55 * seg).astype(np.uint8)
        tiles.append(np.concatenate([img, overlay], axis=1))
    dt = time.perf_counter() - t0
    cols = args.cols
    rows = (len(tiles) + cols - 1) // cols
    h, w = tiles[0].shape[:2]
    sheet = np.full((rows * (h + 4), cols * (w + 4), 3), 255, dtype=np.uint8)
    for k, t in enumerate(tiles):
        r, c = divmod(k, cols)
        sheet[r * (h + 4) : r * (h + 4) + h, c * (w + 4) : c * (w + 4) + w] = t
    Image.fromarray(sheet).save(args.out)
    print(f"gallery: {args.out} ({len(tiles)} samples, {args.size}px, {dt / len(tiles) * 1000:.1f} ms/sample total)")


if __name__ == "__main__":
    main()
