"""Compare the 68-point landmark *definition* of the generator with 300W's, on the AFW dev set (no network).

Usage::

    python benchmarks/bench_landmark_definition.py [--config configs/generate/default.yaml] [--num 300]
        [--realdata ../shared/realdata] [--frontal 0.08] [--contour outline|embedding]

Annotates ``--num`` synthetic samples of the generation config (head model, landmarks and their labels: the
annotation path only, no image), reads the AFW dev set's 68-point ``.pts`` files (1-based, converted to 0-based
pixel centres) and, for near-frontal faces of both, prints per point the mean signed offset of the synthetic mean
shape against the AFW mean shape, then a summary per group (mean |offset| over the points of jaw / brows / nose /
eyes / mouth) for near-frontal faces and for turned faces.

Method: both sets are taken with their mirror images (flip with the iBUG 68-point permutation), so the comparison is
left-right symmetric: the AFW annotations sit about 1.7 % of the eye distance to the image right of what a network
trained on mirrored data finds (measured by evaluating a network on the AFW faces and on their mirror images), and
that offset no longer shows as a left-right difference of the definition. Every face is aligned to a common frame by
a least-squares similarity transform (Umeyama) fitted on stable inner points (eye corners 36 39 42 45, nose 30 33,
mouth corners 48 54); the frame is the AFW near-frontal mean shape (two rounds of Procrustes averaging), scaled so
the outer inter-ocular distance (36-45) is 1. Offsets are in percent of that distance: dx to the image right, dy
down. Yaw is estimated from landmarks alone and the same way for both sets: ``a = (|x30 - x36| - |x45 - x30|) /
(|x30 - x36| + |x45 - x30|)`` in the aligned frame (nose tip against the outer eye corners); near-frontal = ``|a| <=
--frontal``; turned = ``0.15 <= |a| <= 0.45``, mirrored so the nose points the same way (flip with the iBUG 68-point
permutation).

The AFW files are read from ``--realdata`` (default ``../shared/realdata`` relative to the project root); they are
development data: this script only reads them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from label_finetune.datasets.w300 import read_pts
from next3d_gen.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
ALIGN_POINTS = (36, 39, 42, 45, 30, 33, 48, 54)
GROUPS = {
    "jaw": range(0, 17),
    "brows": range(17, 27),
    "nose": range(27, 36),
    "eyes": range(36, 48),
    "mouth": range(48, 68),
}
TURNED = (0.15, 0.45)


def similarity(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity (Umeyama, no reflection) mapping src (N, 2) onto dst (N, 2): scale, R (2, 2), t."""
    ms, md = src.mean(0), dst.mean(0)
    a, b = src - ms, dst - md
    u, s, vt = np.linalg.svd(b.T @ a)
    d = np.sign(np.linalg.det(u @ vt))
    D = np.diag([1.0, d])
    R = u @ D @ vt
    scale = float((s * np.diag(D)).sum() / (a**2).sum())
    return scale, R, md - scale * R @ ms


def align(shapes: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """(N, 68, 2) shapes mapped to the frame of ``ref`` (68, 2) by similarities fitted on :data:`ALIGN_POINTS`."""
    idx = list(ALIGN_POINTS)
    out = np.empty_like(shapes)
    for i, s in enumerate(shapes):
        scale, R, t = similarity(s[idx], ref[idx])
        out[i] = scale * s @ R.T + t
    return out


def yaw_asymmetry(aligned: np.ndarray) -> np.ndarray:
    """(N,) landmark yaw estimate in [-1, 1] (0 = frontal): nose tip against the outer eye corners."""
    left = np.abs(aligned[:, 30, 0] - aligned[:, 36, 0])
    right = np.abs(aligned[:, 45, 0] - aligned[:, 30, 0])
    return (left - right) / (left + right)


def mirror(shapes: np.ndarray) -> np.ndarray:
    """Horizontal mirror of (N, 68, 2) shapes with the iBUG point permutation (x -> -x)."""
    from next3d_gen.labels import LANDMARK_FLIP_PERMUTATION

    out = shapes[:, list(LANDMARK_FLIP_PERMUTATION)].copy()
    out[..., 0] *= -1
    return out


def reference_frame(afw: np.ndarray, frontal: float) -> np.ndarray:
    """The AFW near-frontal mean shape, centred, inter-ocular distance 1 (two rounds of Procrustes averaging)."""
    ref = afw[0] - afw[0].mean(0)
    for _ in range(3):
        ref = ref / np.linalg.norm(ref[45] - ref[36])
        al = align(afw, ref)
        keep = np.abs(yaw_asymmetry(al)) <= frontal
        ref = al[keep].mean(0)
        ref = ref - ref[list(ALIGN_POINTS)].mean(0)
    return ref / np.linalg.norm(ref[45] - ref[36])


def synthetic_landmarks(config_path: Path, num: int, contour: str | None) -> np.ndarray:
    """(num, 68, 2) projected landmarks of samples 0..num-1 of the config (annotation path, no image)."""
    from next3d_gen.pipeline import SamplePipeline
    from next3d_gen.sampling import load_config

    overrides = {} if contour is None else {"model.landmark_contour": contour}
    cfg = load_config(config_path, overrides)

    class _NoRender:
        latent_dim = 0

    pipe = SamplePipeline(cfg, renderer=_NoRender())  # type: ignore[arg-type]
    out = np.empty((num, 68, 2))
    with torch.no_grad():
        for i in range(num):
            _, ann = pipe.label_view(pipe.params(i))
            out[i] = ann.landmarks_2d[0].double().numpy()
    return out


def _summary(diff: np.ndarray) -> str:
    mag = np.linalg.norm(diff, axis=1) * 100
    return "  ".join(f"{g} {mag[list(r)].mean():5.2f}" for g, r in GROUPS.items())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "generate" / "default.yaml"))
    ap.add_argument("--num", type=int, default=300, help="synthetic samples (default 300)")
    ap.add_argument("--realdata", default=str(ROOT.parent / "shared" / "realdata"), help="folder holding afw68/")
    ap.add_argument("--frontal", type=float, default=0.08, help="near-frontal: |yaw asymmetry| <= this")
    ap.add_argument("--contour", default=None, help="model.landmark_contour override (outline | embedding)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    afw_dir = Path(args.realdata) / "afw68"
    files = sorted(afw_dir.glob("*.pts")) if afw_dir.is_dir() else []
    if not files:
        print(f"--realdata: no AFW .pts files in {afw_dir}", file=sys.stderr)  # noqa: T201
        return 2
    # both sets with their mirror images (module docstring)
    try:  # 0-based pixel centres (the files are 1-based); the project's one .pts reader
        afw = np.stack([read_pts(f) for f in files]).astype(np.float64)
    except UserError as err:
        print(f"bench_landmark_definition: {err}", file=sys.stderr)  # noqa: T201
        return 2
    afw = np.concatenate([afw, mirror(afw)])
    ref = reference_frame(afw, args.frontal)
    syn = synthetic_landmarks(Path(args.config), args.num, args.contour)
    syn = np.concatenate([syn, mirror(syn)])

    sets = {}
    for name, shapes in (("afw", afw), ("syn", syn)):
        al = align(shapes, ref)
        a = yaw_asymmetry(al)
        front = al[np.abs(a) <= args.frontal]
        turned_r = al[(a >= TURNED[0]) & (a <= TURNED[1])]
        turned_l = al[(-a >= TURNED[0]) & (-a <= TURNED[1])]
        turned = np.concatenate([turned_r, align(mirror(turned_l), ref)])
        sets[name] = (front, turned)
    (af, at), (sf, st) = sets["afw"], sets["syn"]
    print(  # noqa: T201
        f"AFW dev set: {len(afw) // 2} faces x 2 mirrored ({len(af)} near-frontal, {len(at)} turned); "
        f"synthetic: {len(syn) // 2} samples x 2 "
        f"({len(sf)} near-frontal, {len(st)} turned); config {args.config}, contour {args.contour or 'config'}"
    )
    diff = sf.mean(0) - af.mean(0)
    print("near-frontal, synthetic mean - AFW mean, % of outer inter-ocular distance (dx right, dy down):")  # noqa: T201
    for k in range(68):
        print(f"  {k:2d}  dx {diff[k, 0] * 100:+6.2f}  dy {diff[k, 1] * 100:+6.2f}")  # noqa: T201
    print(f"near-frontal mean |offset| %: {_summary(diff)}")  # noqa: T201
    if len(at) and len(st):
        dt = st.mean(0) - at.mean(0)
        print(f"turned ({TURNED[0]}..{TURNED[1]}, mirrored) mean |offset| %: {_summary(dt)}")  # noqa: T201
        jaw = " ".join(f"{k}:{dt[k, 0] * 100:+.1f}/{dt[k, 1] * 100:+.1f}" for k in range(17))
        print(f"turned, jaw points dx/dy %: {jaw}")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
