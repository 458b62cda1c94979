"""Time "all labels of one view": world -> camera, rasterize and annotate, against the 40 ms per-view budget.

Usage::

    python benchmarks/bench_annotate.py [--size 256] [--repeats 30] [--yaw 20] [--threads 1]

Poses the built-in head model (neutral; a procedural stand-in when ``next3d_gen.head_model`` is missing, said so in
the output), places a camera like the default generation config (FOV 20 degrees, 0.34 m framing width, pivot
(0, 0, 0.03)) and prints median milliseconds of

* ``render_labels`` (world_to_camera + rasterize + annotate: what the generator pays per view),
* ``rasterize`` alone and ``annotate`` alone (same fragments),

each as median wall-clock, median process-CPU and minimum process-CPU time, with its ratio to the 40 ms budget.
Runs on ``--threads`` torch threads (default 1: one core). The machine may be shared with other jobs: figures are
as measured, in one process.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from next3d_gen.annotate import annotate, render_labels
from next3d_gen.camera import intrinsics_from_fov, orbit_camera, world_to_camera
from next3d_gen.flame import FlameLayer, FlameModel
from next3d_gen.raster import rasterize

BUDGET_MS = 40.0


def _stand_in_model() -> FlameModel:
    """A head-sized icosphere in FLAME format (used only when the built-in head model is not importable)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_raster import procedural_head

    V, F = procedural_head()
    nv, nf = len(V), len(F)
    rng = np.random.default_rng(0)
    z32 = np.zeros
    return FlameModel(
        v_template=V,
        faces=F,
        shapedirs=z32((nv, 3, 1), np.float32),
        exprdirs=z32((nv, 3, 1), np.float32),
        posedirs=z32((nv, 3, 36), np.float32),
        j_regressor=np.full((5, nv), 1.0 / nv, np.float32),
        weights=np.eye(5, dtype=np.float32)[np.zeros(nv, dtype=np.int64)],
        parents=np.array([-1, 0, 1, 1, 1], dtype=np.int64),
        static_lmk_faces=rng.integers(0, nf, 51),
        static_lmk_bary=np.full((51, 3), 1 / 3, np.float32),
        dynamic_lmk_faces=rng.integers(0, nf, (79, 17)),
        dynamic_lmk_bary=np.full((79, 17, 3), 1 / 3, np.float32),
        uv_coords=(V[:, :2] - V[:, :2].min(0)) / np.ptp(V[:, :2], axis=0),
        uv_faces=F.copy(),
        face_labels=rng.integers(1, 20, nf).astype(np.uint8),
        name="procedural stand-in",
    )


def load_model() -> tuple[FlameModel, str]:
    try:
        from next3d_gen.head_model import builtin_head_model

        return builtin_head_model(), "built-in head model"
    except ImportError as exc:
        return _stand_in_model(), f"procedural stand-in (built-in head model unavailable: {exc})"


def time_ms(fn: Callable[[], object], repeats: int) -> tuple[float, float, float]:
    """Median wall-clock, median process-CPU and minimum process-CPU milliseconds of ``fn``.

    CPU time is less sensitive than wall time to other jobs competing for the cores (with one torch thread it is
    the work done); the minimum is the least disturbed run.
    """
    fn()
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(wall), 1e3 * statistics.median(cpu), 1e3 * min(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--yaw", type=float, default=20.0)
    ap.add_argument("--pitch", type=float, default=5.0)
    ap.add_argument("--fov", type=float, default=20.0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model, name = load_model()
    layer = FlameLayer(model)
    with torch.no_grad():
        out = layer(pose=torch.zeros(1, 15))
    verts, lmk, faces = out.vertices, out.landmarks, layer.faces
    size = args.size
    K = intrinsics_from_fov(args.fov, size, size)[None]
    radius = 0.34 / (2 * math.tan(math.radians(args.fov) / 2))
    c2w = orbit_camera(args.yaw, args.pitch, radius, torch.tensor([0.0, 0.0, 0.03]))[None]
    vcam = world_to_camera(verts, c2w)
    lcam = world_to_camera(lmk, c2w)
    labels, uvc, uvf = model.face_labels, model.uv_coords, model.uv_faces

    print(f"mesh: {name}: {model.num_vertices} vertices, {len(model.faces)} faces")
    print(
        f"view: {size}x{size}, yaw {args.yaw} deg, pitch {args.pitch} deg, fov {args.fov} deg, "
        f"distance {radius:.3f} m; torch threads = {torch.get_num_threads()}"
    )

    frags, ann = render_labels(verts, faces, K, c2w, size, size, lmk, model)
    box = [round(x, 1) for x in ann.bbox[0].tolist()]
    print(
        f"foreground {ann.mask.float().mean().item():.3f} of the image; "
        f"{int(ann.landmarks_visible.sum())}/68 landmarks visible; bbox {box}"
    )

    with torch.no_grad():
        t_all = time_ms(lambda: render_labels(verts, faces, K, c2w, size, size, lmk, model), args.repeats)
        t_ras = time_ms(lambda: rasterize(vcam, faces, K, size, size), args.repeats)
        t_ann = time_ms(
            lambda: annotate(frags, vcam, faces, K, lcam, face_labels=labels, uv_coords=uvc, uv_faces=uvf),
            args.repeats,
        )
    for label, (wall, cpu, cpu_min) in (("render_labels (transform + rasterize + annotate)", t_all),
                                        ("rasterize alone", t_ras), ("annotate alone", t_ann)):  # fmt: skip
        print(
            f"{label}: wall {wall:.2f} ms, cpu {cpu:.2f} ms (medians of {args.repeats}), cpu min {cpu_min:.2f} ms"
            f" | ratio to the {BUDGET_MS:.0f} ms budget: wall {wall / BUDGET_MS:.2f}, cpu {cpu / BUDGET_MS:.2f},"
            f" cpu min {cpu_min / BUDGET_MS:.2f}"
        )
    print(f"annotate / rasterize (median cpu) = {t_ann[1] / t_ras[1]:.2f}")


if __name__ == "__main__":
    main()
