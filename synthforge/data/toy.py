"""A tiny, label-consistent toy dataset in the stage-A HDF5 schema (for tests and benchmarks, no head model needed).

Each sample is a 2-D cartoon face: an elliptic face region (class ``face``) with eye regions, eyeballs, brows, a nose
and lips of the SYNTH space (classes 0-19 only: no hair or eyeglasses) drawn at positions that follow a random
similarity (centre, size, in-plane rotation); the 68 landmarks sit on the matching parts in iBUG order (subject's right
= image left), depth is an ellipsoidal bulge (camera z in metres, 0 on background), normals are the bulge's analytic
normals and UV is the face-frame coordinate. Images are the palette colours with shading and noise.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from next3d_gen import h5
from next3d_gen.labels import SYNTH, SYNTH_V1, SYNTH_V2

_C = {name: SYNTH.id(name) for name in SYNTH.classes}


def _ellipse(u: np.ndarray, v: np.ndarray, cu: float, cv: float, ru: float, rv: float) -> np.ndarray:
    return ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 <= 1.0


def _ring(cu: float, cv: float, ru: float, rv: float, n: int, start: float = math.pi, closed: bool = True) -> list:
    stop = start + (2 * math.pi if closed else math.pi)
    t = np.linspace(start, stop, n, endpoint=not closed)
    return [(cu + ru * math.cos(a), cv + rv * math.sin(a)) for a in t]


def face_layout() -> tuple[list[tuple], np.ndarray]:
    """Parts (class id, centre u, centre v, radius u, radius v) in the unit face frame and the 68 landmarks there.

    The face frame has u to the image right and v down, the face ellipse has radii (1.0, 1.3). Returns
    ``(parts, landmarks (68, 2))``; parts are painted in order (later ones on top).
    """
    parts = [
        (_C["face"], 0.0, 0.0, 1.0, 1.3),
        (_C["right_eye_region"], -0.42, -0.25, 0.3, 0.18),
        (_C["left_eye_region"], 0.42, -0.25, 0.3, 0.18),
        (_C["right_eyeball"], -0.42, -0.25, 0.1, 0.1),
        (_C["left_eyeball"], 0.42, -0.25, 0.1, 0.1),
        (_C["right_eyebrow"], -0.42, -0.62, 0.32, 0.09),
        (_C["left_eyebrow"], 0.42, -0.62, 0.32, 0.09),
        (_C["nose"], 0.0, 0.15, 0.16, 0.3),
        (_C["upper_lip"], 0.0, 0.66, 0.4, 0.12),
        (_C["lower_lip"], 0.0, 0.8, 0.38, 0.1),
    ]
    lm: list[tuple[float, float]] = []
    lm += [(0.93 * math.cos(a), 1.2 * math.sin(a)) for a in np.linspace(math.pi, 0.0, 17)]  # jaw 0-16 via the chin
    lm += [(-0.42 + 0.24 * t, -0.62) for t in np.linspace(-1, 1, 5)]  # right brow 17-21 (image left)
    lm += [(0.42 + 0.24 * t, -0.62) for t in np.linspace(-1, 1, 5)]  # left brow 22-26
    lm += [(0.0, v) for v in np.linspace(-0.08, 0.3, 4)]  # nose bridge 27-30
    lm += [(u, 0.33) for u in np.linspace(-0.1, 0.1, 5)]  # nose base 31-35
    lm += _ring(-0.42, -0.25, 0.2, 0.12, 6)  # right eye 36-41: outer corner (image left), top, inner, bottom
    lm += _ring(0.42, -0.25, 0.2, 0.12, 6)  # left eye 42-47: inner corner (image left), top, outer, bottom
    lm += [(-0.36, 0.72)] + [(u, 0.6) for u in np.linspace(-0.24, 0.24, 5)] + [(0.36, 0.72)]  # outer lip 48-54
    lm += [(u, 0.84) for u in np.linspace(0.24, -0.24, 5)]  # outer lip 55-59
    lm += [(-0.2, 0.72), (-0.08, 0.68), (0.0, 0.68), (0.08, 0.68), (0.2, 0.72), (0.08, 0.78), (0.0, 0.78)]
    lm += [(-0.08, 0.78)]  # inner lip 60-67
    arr = np.asarray(lm, dtype=np.float64)
    assert arr.shape == (68, 2), arr.shape
    return parts, arr


def make_toy_sample(rng: np.random.Generator, size: int = 64) -> dict[str, np.ndarray]:
    """One toy sample in the schema layout (see module docstring); ``size`` = image side in pixels."""
    parts, lm_face = face_layout()
    scale = size * rng.uniform(0.16, 0.24)
    theta = rng.uniform(-0.4, 0.4)
    cx, cy = size / 2 + rng.uniform(-0.08, 0.08) * size, size / 2 + rng.uniform(-0.05, 0.08) * size
    c, s = math.cos(theta), math.sin(theta)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    # pixel -> face frame (inverse similarity)
    dx, dy = xs - cx, ys - cy
    u = (c * dx + s * dy) / scale
    v = (-s * dx + c * dy) / scale
    seg = np.zeros((size, size), np.uint8)
    for cls, pu, pv, ru, rv in parts:
        seg[_ellipse(u, v, pu, pv, ru, rv)] = cls
    r2 = u**2 + (v / 1.3) ** 2
    fg = r2 <= 1.0
    z0, bulge = rng.uniform(0.5, 0.7), 0.09
    hgt = np.sqrt(np.clip(1 - r2, 0, 1))
    depth = np.where(fg, z0 - bulge * hgt, 0.0).astype(np.float32)
    # analytic normal of the bulge z = z0 - b*sqrt(1-r2) in the face frame, rotated into the image frame
    gu = u / np.maximum(hgt, 0.05)
    gv = v / 1.69 / np.maximum(hgt, 0.05)
    gx, gy = c * gu - s * gv, s * gu + c * gv
    n = np.stack([gx, gy, -np.ones_like(gx)], -1)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    normal = np.where(fg[..., None], np.round(n * h5.NORMAL_SCALE), 0).astype(np.int8)
    uvmap = np.where(fg[..., None], np.stack([(u + 1) / 2, (v + 1.3) / 2.6], -1), -1.0).astype(np.float16)
    palette = SYNTH.palette_array().astype(np.float32)
    shade = 0.75 + 0.25 * hgt[..., None]
    img = palette[seg] * np.where(fg[..., None], shade, 1.0) + rng.normal(0, 6, (size, size, 3))
    img[~fg] = rng.uniform(20, 90, 3) + rng.normal(0, 6, (int((~fg).sum()), 3))
    image = np.clip(img, 0, 255).astype(np.uint8)
    lu, lv = lm_face[:, 0], lm_face[:, 1]
    lm = np.stack([cx + scale * (c * lu - s * lv), cy + scale * (s * lu + c * lv)], 1)
    yy, xx = np.nonzero(fg)
    bbox = np.array([xx.min() - 0.5, yy.min() - 0.5, xx.max() + 0.5, yy.max() + 0.5], np.float32)
    f = size * 2.0
    K = np.array([[f, 0, (size - 1) / 2], [0, f, (size - 1) / 2], [0, 0, 1]], np.float32)
    lm3 = np.concatenate([lm, np.full((68, 1), z0)], 1).astype(np.float32)
    return {
        "image": image,
        "seg": seg,
        "depth": depth.astype(np.float16),
        "normal": normal,
        "uv": uvmap,
        "landmarks_2d": lm.astype(np.float32),
        "landmarks_3d": lm3,
        "landmarks_visible": np.ones(68, bool),
        "bbox": bbox,
        "camera_K": K,
        "camera_cam2world": np.eye(4, dtype=np.float32),
        "flame_shape": np.zeros(4, np.float32),
        "flame_expression": np.zeros(4, np.float32),
        "flame_pose": np.zeros(15, np.float32),
        "latent": np.zeros(0, np.float32),
        "sample_seed": np.int64(0),
    }


def write_toy_dataset(
    path: str | Path,
    num_samples: int,
    image_size: int = 64,
    seed: int = 0,
    incomplete: tuple[int, ...] = (),
    schema_version: int = h5.SCHEMA_VERSION,
) -> Path:
    """Write ``num_samples`` toy samples to one HDF5 file in the stage-A schema.

    Args:
        path: output ``.h5`` file.
        num_samples: rows.
        image_size: image side in pixels.
        seed: sample i uses ``numpy.random.default_rng((seed, i))``.
        incomplete: rows left with ``complete = False`` (to test that readers skip them).
        schema_version: 1 or 2 writes a file as that version's writer did (attribute ``schema_version``, label space
            the 20-class :data:`~next3d_gen.labels.SYNTH_V1` or the 22-class :data:`~next3d_gen.labels.SYNTH_V2`;
            the same datasets), else the current schema.

    Returns:
        The file path.
    """
    path = Path(path)
    shapes = h5.sample_shapes(image_size, image_size, 4, 4, 0)
    if schema_version not in h5.READABLE_SCHEMA_VERSIONS:
        raise ValueError(f"schema_version must be one of {h5.READABLE_SCHEMA_VERSIONS}, got {schema_version}")
    space = {1: SYNTH_V1, 2: SYNTH_V2}.get(schema_version, SYNTH)
    attrs = h5.make_attrs(space.to_json(), {"toy": True, "seed": seed, "num": num_samples}, image_size)
    attrs[h5.ATTR_SCHEMA_VERSION] = int(schema_version)
    writer = h5.ShardWriter(path, num_samples, shapes, attrs)
    for i in range(num_samples):
        sample = make_toy_sample(np.random.default_rng((seed, i)), image_size)
        sample["sample_seed"] = np.int64(seed * 1_000_003 + i)
        writer.write(i, sample)
    if incomplete:
        f = writer._file  # noqa: SLF001 - test helper: clear the flags of chosen rows before finalising
        for row in incomplete:
            f["complete"][row] = False
        f.flush()
        writer._done[list(incomplete)] = False  # noqa: SLF001
        writer.close()
        writer.partial_path.rename(path)
        return path
    writer.finalize()
    return path
