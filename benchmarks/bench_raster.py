"""Rasterizer speed against Open3D's Embree ray caster on the same mesh, camera and pixel-centre rays.

Usage::

    python benchmarks/bench_raster.py [--sizes 256 512] [--repeats 15] [--yaw 20]

Prints, per image size and thread setting (1 thread, then torch/Open3D defaults), the median time of
``next3d_gen.raster.rasterize`` (backend "torch", CPU) and of ``open3d.t.geometry.RaycastingScene.cast_rays`` on a
prebuilt scene ("cast"), plus the scene build + cast time ("build+cast", what a freshly posed mesh costs), and the
ratios raster / Open3D. Also prints the agreement of face ids and depths with the ray caster as a sanity check.
The machine may be shared: figures are as measured, in one process, interleaved.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import torch

from next3d_gen.camera import intrinsics_from_fov, orbit_camera, world_to_camera
from next3d_gen.raster import rasterize


def procedural_head(subdiv: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Closed, deformed icosphere (subdiv 5: 10242 vertices, 20480 faces), head-sized, faces CCW from outside."""
    t = (1 + math.sqrt(5)) / 2
    v = [
        (-1, t, 0),
        (1, t, 0),
        (-1, -t, 0),
        (1, -t, 0),
        (0, -1, t),
        (0, 1, t),
        (0, -1, -t),
        (0, 1, -t),
        (t, 0, -1),
        (t, 0, 1),
        (-t, 0, -1),
        (-t, 0, 1),
    ]
    f = [
        (0, 11, 5),
        (0, 5, 1),
        (0, 1, 7),
        (0, 7, 10),
        (0, 10, 11),
        (1, 5, 9),
        (5, 11, 4),
        (11, 10, 2),
        (10, 7, 6),
        (7, 1, 8),
        (3, 9, 4),
        (3, 4, 2),
        (3, 2, 6),
        (3, 6, 8),
        (3, 8, 9),
        (4, 9, 5),
        (2, 4, 11),
        (6, 2, 10),
        (8, 6, 7),
        (9, 8, 1),
    ]
    verts = [np.array(p, dtype=np.float64) / np.linalg.norm(p) for p in v]
    faces = list(f)
    for _ in range(subdiv):
        cache: dict[tuple[int, int], int] = {}

        def mid(a: int, b: int, cache: dict[tuple[int, int], int] = cache) -> int:
            key = (min(a, b), max(a, b))
            if key not in cache:
                m = verts[a] + verts[b]
                verts.append(m / np.linalg.norm(m))
                cache[key] = len(verts) - 1
            return cache[key]

        nf = []
        for a, b, c in faces:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            nf += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        faces = nf
    V = np.stack(verts)
    x, y, z = V[:, 0], V[:, 1], V[:, 2]
    # head-like: ellipsoid, a nose bump on +z, brow ridge, flattened sides, plus ripples
    r = 1 + 0.25 * np.exp(-((x / 0.12) ** 2 + ((y + 0.05) / 0.25) ** 2) * 3) * (z > 0)
    r += 0.05 * np.sin(7 * x) * np.sin(5 * y) * np.cos(3 * z)
    V = V * r[:, None] * np.array([0.075, 0.11, 0.095])
    F = np.asarray(faces, dtype=np.int64)
    n = np.cross(V[F[:, 1]] - V[F[:, 0]], V[F[:, 2]] - V[F[:, 0]])
    assert (np.einsum("ij,ij->i", n, V[F].mean(1)) > 0).mean() > 0.99  # outward, CCW from outside
    return V.astype(np.float32), F


def load_mesh() -> tuple[np.ndarray, np.ndarray, str]:
    try:
        from next3d_gen.head_model import builtin_head_model

        m = builtin_head_model()
        return np.asarray(m.v_template, np.float32), np.asarray(m.faces, np.int64), "builtin head model"
    except Exception as exc:  # noqa: BLE001 - benchmark fallback
        V, F = procedural_head()
        return V, F, f"procedural deformed icosphere (builtin head model unavailable: {type(exc).__name__})"


def timings(fn, repeats: int) -> tuple[float, float, float]:
    """(median wall, min wall, median process CPU) seconds over ``repeats`` calls after one warm-up call."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), min(wall), statistics.median(cpu)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--yaw", type=float, default=20.0, help="camera yaw in degrees")
    ap.add_argument("--fov", type=float, default=20.0, help="horizontal field of view in degrees")
    ap.add_argument("--radius", type=float, default=0.7, help="camera distance in metres")
    args = ap.parse_args()

    import open3d as o3d

    V, F, name = load_mesh()
    print(f"mesh: {name}: {V.shape[0]} vertices, {F.shape[0]} faces")
    Vt = torch.from_numpy(V)[None]
    pivot = Vt[0].mean(0)
    c2w = orbit_camera(args.yaw, 5.0, args.radius, pivot)[None]
    vcam = world_to_camera(Vt, c2w).contiguous()
    faces = torch.from_numpy(F)
    vcam_np = vcam[0].numpy()
    tri_np = F.astype(np.uint32)
    default_threads = torch.get_num_threads()
    print(
        f"camera: yaw {args.yaw} deg, pitch 5 deg, distance {args.radius} m, fov {args.fov} deg; "
        f"torch default threads = {default_threads}"
    )

    def build_scene():
        scene = o3d.t.geometry.RaycastingScene()
        scene.add_triangles(o3d.core.Tensor(vcam_np), o3d.core.Tensor(tri_np))
        return scene

    for size in args.sizes:
        K = intrinsics_from_fov(args.fov, size, size)[None]
        jj, ii = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32))
        Kn = K[0].numpy()
        dx = (jj - Kn[0, 2]) / Kn[0, 0]
        dy = (ii - Kn[1, 2]) / Kn[1, 1]
        rays_np = np.stack([np.zeros_like(dx)] * 3 + [dx, dy, np.ones_like(dx)], -1).astype(np.float32)
        rays = o3d.core.Tensor(rays_np)
        fr = rasterize(vcam, faces, K, size, size, backend="torch")
        scene = build_scene()
        ans = scene.cast_rays(rays)
        hit = np.isfinite(ans["t_hit"].numpy())
        o3d_fid = np.where(hit, ans["primitive_ids"].numpy().astype(np.int64), -1)
        ours = fr.face_index[0].numpy()
        agree = (o3d_fid == ours).mean()
        both = hit & (ours >= 0)
        dz = np.abs(ans["t_hit"].numpy()[both] - fr.depth[0].numpy()[both]).max() if both.any() else 0.0
        print(
            f"[{size}x{size}] coverage {(ours >= 0).mean():.3f}; face-id agreement with Open3D {agree:.5f}; "
            f"max |depth diff| on common pixels {dz:.2e} m"
        )
        for label, nthreads in (("1 thread", 1), (f"default ({default_threads} threads)", 0)):
            torch.set_num_threads(1 if nthreads == 1 else default_threads)
            t_r = timings(lambda K=K, s=size: rasterize(vcam, faces, K, s, s, backend="torch"), args.repeats)
            t_rc = timings(
                lambda K=K, s=size: rasterize(vcam, faces, K, s, s, backend="torch", cull_backfaces=True), args.repeats
            )
            t_c = timings(lambda sc=scene, r=rays, n=nthreads: sc.cast_rays(r, nthreads=n), args.repeats)
            t_b = timings(lambda r=rays, n=nthreads: build_scene().cast_rays(r, nthreads=n), args.repeats)
            for stat, i in (("median wall", 0), ("min wall", 1), ("median cpu", 2)):
                if nthreads != 1 and i == 2:
                    continue  # process CPU time sums threads: only meaningful for the 1-thread figures
                print(
                    f"[{size}x{size}] {label}, {stat}: raster {t_r[i] * 1e3:.2f} ms "
                    f"(culled {t_rc[i] * 1e3:.2f} ms) | open3d cast {t_c[i] * 1e3:.2f} ms | "
                    f"open3d build+cast {t_b[i] * 1e3:.2f} ms | RATIO raster/cast = {t_r[i] / t_c[i]:.2f}x | "
                    f"raster/(build+cast) = {t_r[i] / t_b[i]:.2f}x"
                )
        torch.set_num_threads(default_threads)


if __name__ == "__main__":
    main()
