"""Fake FLAME assets, stored exactly the way the official files are, for tests (no licensed asset exists here).

The mesh is a small head-shaped surface: a warped latitude/longitude ellipsoid (denser on the face) with a nose
bump, plus two separate eyeball spheres, in FLAME's frame (metres, y up, z towards the face front, x towards the
subject's left). Everything a FLAME file holds is there and means what it means in FLAME: 5 joints (root at the neck
base, neck, jaw, left eye, right eye), skinning weights (upper head on the neck joint, chin/lower lip on the jaw with a
soft falloff, eyeballs 100% on their eye joints), 51 static landmarks ray-cast onto designed brow/nose/eye/lip points,
a 79 x 17 contour table whose rows move with yaw, the 14 FLAME mask regions, and UVs.

API (all deterministic for a given ``seed``):

- :func:`make_fake_flame` -> :class:`FakeFlame` (the arrays, float64 like the official files);
- :func:`write_fake_flame` (directory, flame=None, ...) -> dict of paths: writes ``generic_model.pkl`` as a
  Python-2 pickle whose arrays are ``chumpy.ch.Ch`` objects (a fake chumpy module exists in ``sys.modules`` only while
  writing, so loading must work without chumpy) with a ``scipy.sparse`` csc ``J_regressor``; DECA's
  ``landmark_embedding.npy`` (torch tensors inside), RingNet's ``flame_static_embedding.pkl`` +
  ``flame_dynamic_embedding.npy``, ``FLAME_masks.pkl``, and ``FLAME_texture.npz`` or ``head_template.obj``;
- :func:`write_flame_npz` (path, flame) -> the smplx-style ``.npz`` conversion of the same model;
- :func:`write_py2_pickle` (path, obj, as_chumpy=()) -> a pickle as Python 2 writes it (``str`` as BINSTRING,
  ``copy_reg``/``__builtin__``/``numpy.core``/``scipy.sparse.csc`` module names);
- :func:`write_obj_uv` (path, flame, shuffle=False) -> an OBJ with ``v``, ``vt`` and ``f v/vt`` lines.

Typical use::

    paths = write_fake_flame(tmp_path)
    model = load_flame_model(paths["model"])       # finds the embedding, UVs and masks beside it
"""

from __future__ import annotations

import contextlib
import pickle
import struct
import sys
import types
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse
import torch

# Head ellipsoid semi-axes (x, y, z), metres.
AXES = (0.075, 0.10, 0.09)
EYE_CENTRES_XY = {"right": (-0.032, 0.02), "left": (0.032, 0.02)}
EYEBALL_RADIUS = 0.012
MOUTH_Y = -0.045


@dataclass
class FakeFlame:
    """The arrays of a fake FLAME model, in the official files' layout (float64, ``shapedirs`` = shape + expression).

    Attributes:
        v_template: (V, 3) metres. faces: (F, 3) int64, outward. shapedirs: (V, 3, S + E). posedirs: (V, 3, 36).
        j_regressor: (5, V) dense (written sparse). weights: (V, 5). kintree_table: (2, 5) uint32, [0, 0] = 2**32 - 1.
        static_faces: (51,) int64, static_bary: (51, 3). dynamic_faces: (79, 17) int64, dynamic_bary: (79, 17, 3).
        masks: FLAME region name -> vertex indices (the 14 official names).
        uv_coords: (T, 2) in [0, 1]; uv_faces: (F, 3) int64.
        num_shape, num_expression: the split of ``shapedirs``.
        eyeball_faces: dict 'left'/'right' -> face indices of each eyeball (the eyeballs are separate components).
    """

    v_template: np.ndarray
    faces: np.ndarray
    shapedirs: np.ndarray
    posedirs: np.ndarray
    j_regressor: np.ndarray
    weights: np.ndarray
    kintree_table: np.ndarray
    static_faces: np.ndarray
    static_bary: np.ndarray
    dynamic_faces: np.ndarray
    dynamic_bary: np.ndarray
    masks: dict[str, np.ndarray]
    uv_coords: np.ndarray
    uv_faces: np.ndarray
    num_shape: int
    num_expression: int
    eyeball_faces: dict[str, np.ndarray]

    @property
    def parents(self) -> np.ndarray:
        p = self.kintree_table[0].astype(np.int64)
        p[0] = -1
        return p


def _sphere(n_lat: int, n_lon: int, warp: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit-sphere grid denser around the +z direction: directions (N, 3) and outward faces (M, 3)."""
    w = np.linspace(-1.0, 1.0, n_lat + 2)[1:-1]
    theta = np.pi / 2 + np.pi / 2 * np.sign(w) * np.abs(w) ** warp  # 0 = top (+y)
    u = np.linspace(-1.0, 1.0, n_lon, endpoint=False)
    phi = np.pi * np.sign(u) * np.abs(u) ** warp  # 0 = front (+z), +pi/2 = +x
    t, p = np.meshgrid(theta, phi, indexing="ij")
    dirs = np.stack([np.sin(t) * np.sin(p), np.cos(t), np.sin(t) * np.cos(p)], axis=-1).reshape(-1, 3)
    dirs = np.concatenate([dirs, [[0.0, 1.0, 0.0], [0.0, -1.0, 0.0]]])
    top, bottom = n_lat * n_lon, n_lat * n_lon + 1
    faces = []
    for i in range(n_lat - 1):
        for j in range(n_lon):
            a, b = i * n_lon + j, i * n_lon + (j + 1) % n_lon
            c, d = a + n_lon, b + n_lon
            faces += [[a, c, b], [b, c, d]]
    for j in range(n_lon):
        faces.append([top, j, (j + 1) % n_lon])
        last = (n_lat - 1) * n_lon
        faces.append([bottom, last + (j + 1) % n_lon, last + j])
    faces = np.asarray(faces, dtype=np.int64)
    tri = dirs[faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    inward = (n * tri.mean(axis=1)).sum(axis=1) < 0
    faces[inward] = faces[inward][:, ::-1]
    return dirs, faces


def _ray_cast(v: np.ndarray, faces: np.ndarray, cand: np.ndarray, xy: np.ndarray) -> tuple[int, np.ndarray]:
    """Frontmost candidate face under the frontal ray through ``xy``, with barycentrics (nearest centroid if none)."""
    tri = v[faces[cand]]  # (C, 3, 3)
    a, b, c = tri[:, 0, :2], tri[:, 1, :2], tri[:, 2, :2]
    v0, v1, v2 = b - a, c - a, xy[None] - a
    den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        l1 = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / den
        l2 = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / den
    l0 = 1 - l1 - l2
    inside = (l0 >= 0) & (l1 >= 0) & (l2 >= 0) & (np.abs(den) > 0)
    if inside.any():
        k = np.flatnonzero(inside)[np.argmax(tri[inside, :, 2].mean(axis=1))]
        return int(cand[k]), np.array([l0[k], l1[k], l2[k]])
    k = int(np.argmin(((tri.mean(axis=1)[:, :2] - xy) ** 2).sum(axis=1)))
    return int(cand[k]), np.full(3, 1.0 / 3.0)


def _static_landmark_targets() -> np.ndarray:
    """(51, 2) designed frontal (x, y) positions of iBUG points 17-67 (subject's right = -x)."""
    pts: list[tuple[float, float]] = []
    for i in range(5):  # 17-21: right brow, outer -> inner
        s = i / 4
        pts.append((-0.055 + 0.042 * s, 0.040 + 0.006 * np.sin(np.pi * s)))
    for i in range(5):  # 22-26: left brow, inner -> outer
        s = i / 4
        pts.append((0.013 + 0.042 * s, 0.040 + 0.006 * np.sin(np.pi * s)))
    pts += [(0.0, 0.026), (0.0, 0.013), (0.0, 0.0), (0.0, -0.012)]  # 27-30 bridge
    pts += [(-0.014, -0.020), (-0.007, -0.022), (0.0, -0.023), (0.007, -0.022), (0.014, -0.020)]  # 31-35
    for side, order in ((-1, (-1, -0.4, 0.4, 1)), (1, (-1, -0.4, 0.4, 1))):
        cx, cy = EYE_CENTRES_XY["right" if side < 0 else "left"]
        xs = [cx + 0.013 * o for o in order]
        if side < 0:  # 36 outer, 37-38 upper, 39 inner, 40-41 lower
            pts += [(xs[0], cy), (xs[1], cy + 0.005), (xs[2], cy + 0.005), (xs[3], cy)]
            pts += [(xs[2], cy - 0.005), (xs[1], cy - 0.005)]
        else:  # 42 inner, 43-44 upper, 45 outer, 46-47 lower
            pts += [(xs[0], cy), (xs[1], cy + 0.005), (xs[2], cy + 0.005), (xs[3], cy)]
            pts += [(xs[2], cy - 0.005), (xs[1], cy - 0.005)]
    m = MOUTH_Y
    outer_top = [(-0.025, m), (-0.016, m + 0.007), (-0.006, m + 0.010), (0.0, m + 0.009), (0.006, m + 0.010)]
    outer_top += [(0.016, m + 0.007), (0.025, m)]  # 48-54
    outer_bottom = [(0.016, m - 0.008), (0.007, m - 0.011), (0.0, m - 0.012), (-0.007, m - 0.011)]
    outer_bottom += [(-0.016, m - 0.008)]  # 55-59
    inner = [(-0.020, m), (-0.008, m + 0.002), (0.0, m + 0.002), (0.008, m + 0.002), (0.020, m)]  # 60-64
    inner += [(0.008, m - 0.002), (0.0, m - 0.002), (-0.008, m - 0.002)]  # 65-67
    pts += outer_top + outer_bottom + inner
    out = np.asarray(pts, dtype=np.float64)
    assert out.shape == (51, 2)
    return out


def make_fake_flame(
    num_shape: int = 300,
    num_expression: int = 100,
    n_lat: int = 34,
    n_lon: int = 40,
    seed: int = 0,
) -> FakeFlame:
    """Build the fake model's arrays.

    Args:
        num_shape, num_expression: blendshape columns (official files: 300 + 100; the loader's default split
            needs more than 300 columns in all, see ``load_flame_model``).
        n_lat, n_lon: head grid resolution (vertices = n_lat * n_lon + 2, plus 2 x 50 eyeball vertices).
        seed: random seed of the blendshapes, pose correctives and landmark barycentrics.
    """
    rng = np.random.default_rng(seed)
    ax, ay, az = AXES
    dirs, head_faces = _sphere(n_lat, n_lon, warp=1.6)
    base = dirs * np.array(AXES)
    v = base.copy()
    v[:, 2] += 0.018 * np.exp(-((v[:, 0] / 0.011) ** 2) - ((v[:, 1] + 0.002) / 0.02) ** 2) * (v[:, 2] > 0)
    n_head = len(v)

    eye_dirs, eye_faces = _sphere(6, 8, warp=1.0)
    parts_v, parts_f, eyeball_faces, eyeball_verts = [v], [head_faces], {}, {}
    offset, f_offset = n_head, len(head_faces)
    for side in ("left", "right"):
        cx, cy = EYE_CENTRES_XY[side]
        zs = az * np.sqrt(1 - (cx / ax) ** 2 - (cy / ay) ** 2)
        parts_v.append(eye_dirs * EYEBALL_RADIUS + np.array([cx, cy, zs - 0.005]))
        parts_f.append(eye_faces + offset)
        eyeball_verts[side] = np.arange(offset, offset + len(eye_dirs))
        eyeball_faces[side] = np.arange(f_offset, f_offset + len(eye_faces))
        offset += len(eye_dirs)
        f_offset += len(eye_faces)
    v = np.concatenate(parts_v)
    faces = np.concatenate(parts_f)
    V = len(v)

    # --- masks (vertex sets, overlapping like FLAME's) ---
    hx, hy, hz = base[:, 0], base[:, 1], base[:, 2]
    front = hz > 0.3 * az
    hv = np.arange(n_head)

    def ellipse(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        return ((hx - cx) / rx) ** 2 + ((hy - cy) / ry) ** 2 < 1

    right_eye = front & ellipse(*EYE_CENTRES_XY["right"], 0.022, 0.014)
    left_eye = front & ellipse(*EYE_CENTRES_XY["left"], 0.022, 0.014)
    face = (hz > 0.35 * az) & (hy > -0.09) & (hy < 0.06)
    side = (np.abs(dirs[:n_head, 0]) > 0.9) & (np.abs(hz) < 0.03)
    masks = {
        "eye_region": hv[right_eye | left_eye],
        "neck": hv[(hy < -0.07) & ~face],
        "left_eyeball": eyeball_verts["left"],
        "right_eyeball": eyeball_verts["right"],
        "right_ear": hv[side & (hx < 0) & (np.abs(hy) < 0.025)],
        "right_eye_region": hv[right_eye],
        "forehead": hv[front & (hy > 0.032)],
        "lips": hv[front & ellipse(0.0, MOUTH_Y - 0.001, 0.032, 0.016)],
        "nose": hv[front & (np.abs(hx) < 0.016) & (hy > -0.028) & (hy < 0.026)],
        "scalp": hv[(hy > -0.02) & ~face],
        "boundary": hv[hy < -0.098],
        "face": hv[face],
        "left_ear": hv[side & (hx > 0) & (np.abs(hy) < 0.025)],
        "left_eye_region": hv[left_eye],
    }

    # --- joints, weights ---
    ring_of = np.arange(n_lat * n_lon) // n_lon
    J = np.zeros((5, V))
    J[0, (ring_of == n_lat - 1).nonzero()[0]] = 1.0  # root: the lowest ring's centre
    neck_ring = int(np.argmin([abs(hy[: n_lat * n_lon][ring_of == r].mean() + 0.06) for r in range(n_lat)]))
    J[1, (ring_of == neck_ring).nonzero()[0]] = 1.0
    for sx in (-1, 1):  # jaw: midpoint of two vertices below the ears
        target = np.array([sx * 0.07, -0.01, -0.005])
        J[2, int(np.argmin(((v[:n_head] - target) ** 2).sum(axis=1)))] = 1.0
    J[3, eyeball_verts["left"]] = 1.0
    J[4, eyeball_verts["right"]] = 1.0
    J /= J.sum(axis=1, keepdims=True)

    weights = np.zeros((V, 5))
    y, z = v[:n_head, 1], v[:n_head, 2]
    w_jaw = np.clip((MOUTH_Y - 0.002 - y) / 0.012, 0, 1) * np.clip((z - 0.02) / 0.02, 0, 1)
    w_root = np.clip((-0.075 - y) / 0.02, 0, 1) * (1 - w_jaw)
    weights[:n_head, 0] = w_root
    weights[:n_head, 2] = w_jaw
    weights[:n_head, 1] = 1 - w_jaw - w_root
    weights[eyeball_verts["left"], 3] = 1.0
    weights[eyeball_verts["right"], 4] = 1.0

    shapedirs = rng.normal(0.0, 1e-3, (V, 3, num_shape + num_expression))
    posedirs = rng.normal(0.0, 2e-4, (V, 3, 36))
    kintree = np.array([[2**32 - 1, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.uint32)

    # --- landmarks ---
    hf = np.arange(len(head_faces))
    tri = v[faces[hf]]
    nz = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])[:, 2]
    cand = hf[(nz > 0) & (tri[:, :, 2].mean(axis=1) > 0)]
    static = [_ray_cast(v, faces, cand, p) for p in _static_landmark_targets()]
    static_faces = np.array([s[0] for s in static], dtype=np.int64)
    static_bary = np.stack([s[1] for s in static])
    dynamic_faces = np.zeros((79, 17), dtype=np.int64)
    alpha = -np.pi / 2 + np.pi * np.arange(17) / 16
    cen = tri[:, :, :2].mean(axis=1)
    for row in range(79):
        yaw = row if row <= 39 else 39 - row
        xy = np.stack([0.066 * np.sin(alpha) + 0.0004 * yaw, 0.01 - 0.085 * np.cos(alpha)], axis=1)
        d2 = ((cen[cand][None] - xy[:, None]) ** 2).sum(axis=2)
        dynamic_faces[row] = cand[np.argmin(d2, axis=1)]
    dynamic_bary = rng.dirichlet(np.ones(3), size=(79, 17))

    # --- UVs: planar frontal layout, stored in a permuted order so that ft matters ---
    uv = np.stack([0.5 + v[:, 0] / 0.2, 0.5 + v[:, 1] / 0.25], axis=1).clip(0, 1)
    perm = rng.permutation(V)
    inv = np.empty(V, dtype=np.int64)
    inv[perm] = np.arange(V)
    return FakeFlame(
        v_template=v,
        faces=faces,
        shapedirs=shapedirs,
        posedirs=posedirs,
        j_regressor=J,
        weights=weights,
        kintree_table=kintree,
        static_faces=static_faces,
        static_bary=static_bary,
        dynamic_faces=dynamic_faces,
        dynamic_bary=dynamic_bary,
        masks=masks,
        uv_coords=uv[perm],
        uv_faces=inv[faces],
        num_shape=num_shape,
        num_expression=num_expression,
        eyeball_faces=eyeball_faces,
    )


# ------------------------------------------------------------------------------------------------------------------
# Python-2 style pickles
# ------------------------------------------------------------------------------------------------------------------

_PY2_MODULES = {"copyreg": "copy_reg", "builtins": "__builtin__"}


def _py2_module(module: str) -> str:
    if module in _PY2_MODULES:
        return _PY2_MODULES[module]
    if module.startswith("numpy._core"):
        return "numpy.core" + module[len("numpy._core") :]
    if module.startswith("scipy.sparse._"):
        return "scipy.sparse." + module[len("scipy.sparse._") :]
    return module


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Pure-Python pickler that writes what Python 2 wrote: byte strings as BINSTRING, Python-2 module names."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def save_py2_str(self, obj: bytes | str) -> None:
        data = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    def save_text(self, obj: str) -> None:
        if obj.isascii():
            self.save_py2_str(obj)
        else:
            self.save_str(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_text

    def save_global(self, obj: Any, name: str | None = None) -> None:
        if name is None:
            name = getattr(obj, "__qualname__", None) or obj.__name__
        module = getattr(obj, "__module__", None) or pickle.whichmodule(obj, name)
        self.write(pickle.GLOBAL + f"{_py2_module(module)}\n{name}\n".encode("ascii"))
        self.memoize(obj)


@contextlib.contextmanager
def fake_chumpy() -> Iterator[type]:
    """A fake ``chumpy`` package (``chumpy.ch.Ch`` keeps its array as ``self.x``) in sys.modules, removed on exit."""
    chumpy = types.ModuleType("chumpy")
    ch = types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x: np.ndarray) -> None:
            self.x = x
            self._dirty_vars: set[str] = set()
            self.label = None

    Ch.__module__ = "chumpy.ch"
    Ch.__qualname__ = "Ch"
    ch.Ch = Ch  # type: ignore[attr-defined]
    chumpy.ch = ch  # type: ignore[attr-defined]
    chumpy.Ch = Ch  # type: ignore[attr-defined]
    saved = {k: sys.modules.get(k) for k in ("chumpy", "chumpy.ch")}
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = chumpy, ch
    try:
        yield Ch
    finally:
        for k, old in saved.items():
            if old is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = old


def write_py2_pickle(path: str | Path, obj: Any, as_chumpy: Iterable[str] = ()) -> Path:
    """Write ``obj`` (a dict for FLAME files) as a Python-2 protocol-2 pickle; ``as_chumpy`` keys become ``Ch``."""
    path = Path(path)
    keys = set(as_chumpy)
    with fake_chumpy() as Ch:
        if keys:
            obj = {k: (Ch(v) if k in keys else v) for k, v in obj.items()}
        with open(path, "wb") as fh:
            _Py2Pickler(fh, protocol=2).dump(obj)
    return path


def _model_dict(flame: FakeFlame) -> dict[str, Any]:
    return {
        "v_template": flame.v_template,
        "f": flame.faces.astype(np.uint32),
        "shapedirs": flame.shapedirs,
        "posedirs": flame.posedirs,
        "J_regressor": scipy.sparse.csc_matrix(flame.j_regressor),
        "weights": flame.weights,
        "kintree_table": flame.kintree_table,
        "J": flame.j_regressor @ flame.v_template,
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }


def write_flame_npz(path: str | Path, flame: FakeFlame, sparse_regressor: bool = True) -> Path:
    """The smplx-style ``.npz`` conversion (same keys as the pickle; a sparse J_regressor becomes an object array)."""
    d = _model_dict(flame)
    if sparse_regressor:
        reg = np.empty((), dtype=object)
        reg[()] = d["J_regressor"]
        d["J_regressor"] = reg
    else:
        d["J_regressor"] = flame.j_regressor
    path = Path(path)
    np.savez(path, **d)
    return path


def write_obj_uv(path: str | Path, flame: FakeFlame, shuffle: bool = False, seed: int = 0) -> Path:
    """OBJ with the model's topology and UVs (``f v/vt``); ``shuffle`` permutes faces and rotates their corners.

    Vertex positions are moved 1.4 m up, like DECA's head_template.obj (only faces and UVs are meant to be used).
    """
    path = Path(path)
    fv, ft = flame.faces.copy(), flame.uv_faces.copy()
    if shuffle:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(fv))
        fv, ft = fv[order], ft[order]
        roll = rng.integers(0, 3, len(fv))
        idx = (np.arange(3)[None] + roll[:, None]) % 3
        fv, ft = np.take_along_axis(fv, idx, 1), np.take_along_axis(ft, idx, 1)
    lines = [f"v {x:.6f} {y + 1.4:.6f} {z:.6f}" for x, y, z in flame.v_template]
    lines += [f"vt {u:.7f} {w:.7f}" for u, w in flame.uv_coords]
    lines += [f"f {a + 1}/{p + 1} {b + 1}/{q + 1} {c + 1}/{r + 1}" for (a, b, c), (p, q, r) in zip(fv, ft, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_fake_flame(
    directory: str | Path,
    flame: FakeFlame | None = None,
    *,
    embedding: str = "both",
    uv: str | None = "npz",
    masks: bool = True,
    model_name: str = "generic_model.pkl",
) -> dict[str, Path]:
    """Write a fake FLAME asset folder the way the official downloads store it.

    Args:
        directory: target folder (created).
        flame: the arrays; default ``make_fake_flame()``.
        embedding: "both", "deca" (landmark_embedding.npy), "ringnet" (flame_static_embedding.pkl +
            flame_dynamic_embedding.npy) or "none".
        uv: "npz" (FLAME_texture.npz with vt, ft), "obj" (head_template.obj) or None.
        masks: write FLAME_masks.pkl.
        model_name: file name of the model pickle.

    Returns:
        dict with "dir", "model" and, when written, "deca_embedding", "static_embedding", "dynamic_embedding",
        "masks", "uv".
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    flame = flame if flame is not None else make_fake_flame()
    paths = {"dir": directory}
    paths["model"] = write_py2_pickle(
        directory / model_name, _model_dict(flame), as_chumpy=("v_template", "shapedirs", "posedirs", "weights", "J")
    )
    if embedding in ("both", "deca"):
        full_faces = np.concatenate([flame.dynamic_faces[0], flame.static_faces])
        full_bary = np.concatenate([flame.dynamic_bary[0], flame.static_bary])
        deca = {
            "static_lmk_faces_idx": flame.static_faces,
            "static_lmk_bary_coords": flame.static_bary,
            "dynamic_lmk_faces_idx": torch.from_numpy(flame.dynamic_faces),
            "dynamic_lmk_bary_coords": torch.from_numpy(flame.dynamic_bary.astype(np.float32)),
            "full_lmk_faces_idx": full_faces[None],
            "full_lmk_bary_coords": full_bary[None],
        }
        paths["deca_embedding"] = directory / "landmark_embedding.npy"
        np.save(paths["deca_embedding"], np.array(deca, dtype=object), allow_pickle=True)
    if embedding in ("both", "ringnet"):
        paths["static_embedding"] = write_py2_pickle(
            directory / "flame_static_embedding.pkl",
            {"lmk_face_idx": flame.static_faces.astype(np.uint32), "lmk_b_coords": flame.static_bary},
        )
        paths["dynamic_embedding"] = directory / "flame_dynamic_embedding.npy"
        dyn = {"lmk_face_idx": flame.dynamic_faces, "lmk_b_coords": flame.dynamic_bary}
        np.save(paths["dynamic_embedding"], np.array(dyn, dtype=object), allow_pickle=True)
    if masks:
        paths["masks"] = write_py2_pickle(directory / "FLAME_masks.pkl", dict(flame.masks))
    if uv == "npz":
        paths["uv"] = directory / "FLAME_texture.npz"
        np.savez(paths["uv"], vt=flame.uv_coords, ft=flame.uv_faces, mean=np.zeros((4, 4, 3)))
    elif uv == "obj":
        paths["uv"] = write_obj_uv(directory / "head_template.obj", flame)
    return paths
