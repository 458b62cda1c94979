"""Visual and numeric check of the built-in head model: render components at -2, 0, +2 and print quality checks.

Writes a PNG grid: one row per component (identity and expression), columns = shaded renders at -2, 0, +2 from a
three-quarter view plus a label overlay at 0; a first block shows the neutral head from several views (shaded and
labels, with landmarks), the jaw opened, and both eyes blinking. Prints, per component, the worst triangle (smallest
normal agreement with the template and smallest area ratio on the visible skin) at -2 and +2, plus construction
numbers. CPU timings are measured on a shared, loaded machine.

Usage::

    python benchmarks/head_components.py --out head_components.png [--size 192] [--rebuild]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

from next3d_gen.camera import intrinsics_from_fov, orbit_camera, project, world_to_camera
from next3d_gen.flame import FlameLayer
from next3d_gen.head_model import (
    EXPRESSION_COMPONENT_NAMES,
    SHAPE_COMPONENT_NAMES,
    build_head_model,
    builtin_head_model,
    head_info,
)
from next3d_gen.labels import SYNTH
from next3d_gen.raster import rasterize


def render(model, verts: torch.Tensor, yaw: float, pitch: float, size: int, labels: bool = False, lmk=None):
    """(H, W, 3) uint8 image of ``verts`` (V, 3): Lambert shading, or the label palette; optional landmarks."""
    pivot = torch.tensor([0.0, -0.01, 0.0])
    c2w = orbit_camera(yaw, pitch, 0.9, pivot)[None]
    K = intrinsics_from_fov(17.0, size, size)[None]
    vc = world_to_camera(verts[None].float(), c2w)
    faces = torch.as_tensor(model.faces)
    fr = rasterize(vc, faces, K, size, size)
    fi = fr.face_index[0]
    mask = fi >= 0
    img = np.full((size, size, 3), 255, np.uint8)
    if labels:
        pal = torch.as_tensor(SYNTH.palette_array())
        lab = torch.as_tensor(model.face_labels.astype(np.int64))
        img_t = pal[lab[fi.clamp(min=0)]]
        img = np.where(mask[..., None].numpy(), img_t.numpy(), img)
    else:
        tri = vc[0][faces]
        n = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        n = n / n.norm(dim=1, keepdim=True).clamp(min=1e-12)
        light = torch.tensor([0.3, -0.4, -1.0])
        light = light / light.norm()
        shade = (n @ light).clamp(min=0) * 0.8 + 0.2
        s = shade[fi.clamp(min=0)]
        base = torch.tensor([0.93, 0.80, 0.72])
        lab = torch.as_tensor(model.face_labels.astype(np.int64))[fi.clamp(min=0)]
        col = base.expand(size, size, 3).clone()
        eye = (lab == 7) | (lab == 8)
        col[eye] = torch.tensor([0.95, 0.95, 0.97])
        col[lab == 14] = torch.tensor([0.35, 0.1, 0.1])
        col[(lab == 12) | (lab == 13)] = torch.tensor([0.8, 0.45, 0.45])
        col[(lab == 9) | (lab == 10)] = torch.tensor([0.35, 0.25, 0.2])
        col[lab == 17] = torch.tensor([0.45, 0.33, 0.25])
        # iris from the eyeball uv: v close to 1 = near the gaze pole
        rgb = (col * s[..., None]).clamp(0, 1)
        img = np.where(mask[..., None].numpy(), (rgb.numpy() * 255).astype(np.uint8), img)
    if lmk is not None:
        p = project(world_to_camera(lmk[None].float(), c2w), K)[0].round().long().numpy()
        for x, y in p:
            if 0 <= x < size and 0 <= y < size:
                img[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2] = (0, 160, 0)
    return img


def triangle_quality(model, verts: np.ndarray, ref: np.ndarray, sel: np.ndarray) -> tuple[float, float]:
    """(min cos between deformed and template normals, min area ratio) over faces ``sel``."""
    f = model.faces[sel]

    def nrm(v):
        t = v[f]
        return np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])

    a, b = nrm(verts), nrm(ref)
    la, lb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cos = (a * b).sum(1) / np.maximum(la * lb, 1e-20)
    return float(cos.min()), float((la / np.maximum(lb, 1e-20)).min())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="head_components.png")
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--rebuild", action="store_true", help="build from scratch instead of loading the asset")
    ap.add_argument("--only", default="", help="comma-separated component names to render (default: all)")
    args = ap.parse_args()

    t0 = time.perf_counter()
    model = build_head_model() if args.rebuild else builtin_head_model()
    t1 = time.perf_counter()
    info = head_info()
    print(f"model: {model.name}")
    print(f"load/build time: {t1 - t0:.2f} s ({'rebuild' if args.rebuild else 'builtin_head_model'}; loaded machine)")
    print(f"V={model.num_vertices} F={len(model.faces)} S={model.num_shape} E={model.num_expression}")
    layer = FlameLayer(model)
    size = args.size
    rows = []

    def pose_out(shape=None, expr=None, pose=None):
        out = layer(
            shape=None if shape is None else shape[None],
            expression=None if expr is None else expr[None],
            pose=None if pose is None else pose[None],
        )
        return out.vertices[0], out.landmarks[0]

    v0, l0 = pose_out()
    views = [(0, 0), (35, 10), (-60, 0), (90, 0), (180, 0)]
    rows.append(np.concatenate([render(model, v0, y, p, size, lmk=l0) for y, p in views], 1))
    rows.append(np.concatenate([render(model, v0, y, p, size, labels=True, lmk=l0) for y, p in views], 1))
    pose = torch.zeros(15)
    pose[6] = 0.35
    vj, lj = pose_out(pose=pose)
    e = torch.zeros(model.num_expression)
    e[EXPRESSION_COMPONENT_NAMES.index("blink_left")] = 2.0
    e[EXPRESSION_COMPONENT_NAMES.index("blink_right")] = 2.0
    vb, lb = pose_out(expr=e)
    rows.append(
        np.concatenate(
            [
                render(model, vj, 0, 0, size, lmk=lj),
                render(model, vj, 30, -10, size, labels=True),
                render(model, vb, 0, 0, size),
                render(model, vb, 0, 0, size, labels=True),
                render(model, vj, 60, 0, size),
            ],
            1,
        )
    )

    skin = info.face_part == 0
    ref = model.v_template.astype(np.float64)
    only = {s for s in args.only.split(",") if s}
    comps = [("shape", k, n) for k, n in enumerate(SHAPE_COMPONENT_NAMES)]
    comps += [("expression", k, n) for k, n in enumerate(EXPRESSION_COMPONENT_NAMES)]
    print(f"{'component':28s} {'cos@-2':>8s} {'area@-2':>8s} {'cos@+2':>8s} {'area@+2':>8s}")
    worst = (1.0, "")
    for kind, k, name in comps:
        dirs = model.shapedirs if kind == "shape" else model.exprdirs
        q = []
        for s in (-2.0, 2.0):
            v = ref + s * dirs[:, :, k].astype(np.float64)
            q += list(triangle_quality(model, v, ref, skin))
        worst = min(worst, (min(q[0], q[2]), name))
        print(f"{kind[0]}:{name:26s} {q[0]:8.3f} {q[1]:8.3f} {q[2]:8.3f} {q[3]:8.3f}")
        if only and name not in only:
            continue
        if not only and kind == "shape" and k >= 19 and k % 10 != 9:
            continue  # keep the grid small: interpretable components + every 10th random one
        cells = []
        for s in (-2.0, 0.0, 2.0):
            coeffs = torch.zeros(model.num_shape if kind == "shape" else model.num_expression)
            coeffs[k] = s
            v, lm = pose_out(shape=coeffs) if kind == "shape" else pose_out(expr=coeffs)
            yaw = 30 if "left" not in name else -30
            cells.append(render(model, v, yaw if "ear" not in name else 70, 5, size))
        cells.append(render(model, v, 0, 0, size, labels=True))
        cells.append(render(model, v, 0, 0, size))
        row = np.concatenate(cells, 1)
        row[:12, : 6 * len(name)] = 255
        try:
            import cv2

            cv2.putText(row, f"{name} -2|0|+2", (2, 10), cv2.FONT_HERSHEY_SIMPLEX, 0.32, (0, 0, 0), 1, cv2.LINE_AA)
        except ImportError:  # pragma: no cover
            pass
        rows.append(row)
    print(f"worst normal cosine over all components at +-2: {worst[0]:.3f} ({worst[1]})")
    grid = np.concatenate(rows, 0)
    from PIL import Image

    Image.fromarray(grid).save(args.out)
    print(f"wrote {args.out} ({grid.shape[1]}x{grid.shape[0]})")
    _ = math


if __name__ == "__main__":
    main()
