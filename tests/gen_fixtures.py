"""Fixtures for the generation tests: a tiny FLAME-format sphere head and a label-palette test renderer.

Kept out of the package on purpose (test-only). Importable by subprocess scripts (``sys.path`` + ``import``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from next3d_gen.flame import NUM_YAW_BINS, FlameModel
from next3d_gen.labels import SYNTH
from next3d_gen.render import RENDERERS
from next3d_gen.render.base import RenderOutput, Scene

# The test renderer is reachable through the registry like the real ones (name "palette").
RENDERERS.setdefault("palette", ("gen_fixtures", "PaletteRenderer", "PaletteConfig"))


def tiny_head_model(n_lat: int = 12, n_lon: int = 16, radius: float = 0.09) -> FlameModel:
    """A UV sphere in FLAME format: labelled regions, UVs, smooth shape/expression fields, jaw-skinned lower front."""
    lat = np.linspace(0, np.pi, n_lat + 1)[1:-1]  # rings without the poles
    lon = np.linspace(0, 2 * np.pi, n_lon, endpoint=False)
    # direction: y up, z front; lon = 0 at the front.
    ring = [
        np.stack([np.sin(t) * np.sin(lon), np.full_like(lon, np.cos(t)), np.sin(t) * np.cos(lon)], axis=1) for t in lat
    ]
    dirs = np.concatenate([np.array([[0.0, 1.0, 0.0]]), *ring, np.array([[0.0, -1.0, 0.0]])]).astype(np.float64)
    V = len(dirs)
    top, bottom = 0, V - 1

    def vid(i: int, j: int) -> int:
        return 1 + i * n_lon + (j % n_lon)

    faces = []
    for j in range(n_lon):
        faces.append([top, vid(0, j), vid(0, j + 1)])
    for i in range(len(lat) - 1):
        for j in range(n_lon):
            a, b, c, d = vid(i, j), vid(i, j + 1), vid(i + 1, j), vid(i + 1, j + 1)
            faces += [[a, c, b], [b, c, d]]
    for j in range(n_lon):
        faces.append([bottom, vid(len(lat) - 1, j + 1), vid(len(lat) - 1, j)])
    faces = np.array(faces, dtype=np.int64)
    verts = dirs * radius
    # Make faces counter-clockwise seen from outside (outward normals).
    tri = verts[faces]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    flip = (n * tri.mean(axis=1)).sum(axis=1) < 0
    faces[flip] = faces[flip][:, [0, 2, 1]]
    F = len(faces)

    centre = dirs[faces].mean(axis=1)
    centre /= np.linalg.norm(centre, axis=1, keepdims=True)
    x, y, z = centre.T
    labels = np.full(F, SYNTH.id("scalp"), dtype=np.uint8)
    front = z > 0.3
    labels[front] = SYNTH.id("face")
    labels[front & (y > 0.45)] = SYNTH.id("forehead")
    labels[front & (np.abs(y - 0.2) < 0.15) & (x > 0.15)] = SYNTH.id("left_eye_region")
    labels[front & (np.abs(y - 0.2) < 0.15) & (x < -0.15)] = SYNTH.id("right_eye_region")
    labels[(z > 0.8) & (np.abs(y) < 0.2) & (np.abs(x) < 0.2)] = SYNTH.id("nose")
    labels[front & (np.abs(y + 0.45) < 0.12) & (np.abs(x) < 0.35)] = SYNTH.id("upper_lip")
    labels[y < -0.75] = SYNTH.id("neck")

    uv_coords = np.stack([(np.arctan2(dirs[:, 0], dirs[:, 2]) / (2 * np.pi)) % 1.0, (dirs[:, 1] + 1) / 2], axis=1)

    rng = np.random.default_rng(0)
    shapedirs = np.zeros((V, 3, 6), dtype=np.float64)
    for k in range(3):
        shapedirs[:, k, k] = verts[:, k] * 0.08  # stretch along one axis
    for k in range(3, 6):
        c = rng.normal(size=(3, 3)) * 0.004
        shapedirs[:, :, k] = dirs @ c
    exprdirs = np.zeros((V, 3, 4), dtype=np.float64)
    for k in range(4):
        c = rng.normal(size=(3, 3)) * 0.003
        exprdirs[:, :, k] = (dirs @ c) * (dirs[:, 2:3] > 0)

    j_regressor = np.zeros((5, V), dtype=np.float64)
    j_regressor[0] = 1.0 / V
    j_regressor[1, bottom] = 1.0
    j_regressor[2] = 1.0 / V
    j_regressor[3, vid(len(lat) // 2 - 2, 1)] = 1.0
    j_regressor[4, vid(len(lat) // 2 - 2, -1)] = 1.0
    weights = np.zeros((V, 5), dtype=np.float64)
    jaw = (dirs[:, 1] < -0.3) & (dirs[:, 2] > 0.2)
    weights[jaw, 2] = 1.0
    weights[~jaw, 1] = 1.0

    front_faces = np.flatnonzero(front)
    static = front_faces[np.linspace(0, len(front_faces) - 1, 51).astype(int)]
    dynamic = np.tile(front_faces[np.linspace(0, len(front_faces) - 1, 17).astype(int)], (NUM_YAW_BINS, 1))
    return FlameModel(
        v_template=verts.astype(np.float32),
        faces=faces,
        shapedirs=shapedirs.astype(np.float32),
        exprdirs=exprdirs.astype(np.float32),
        posedirs=np.zeros((V, 3, 36), dtype=np.float32),
        j_regressor=j_regressor.astype(np.float32),
        weights=weights.astype(np.float32),
        parents=np.array([-1, 0, 1, 1, 1], dtype=np.int64),
        static_lmk_faces=static.astype(np.int64),
        static_lmk_bary=np.full((51, 3), 1 / 3, dtype=np.float32),
        dynamic_lmk_faces=dynamic.astype(np.int64),
        dynamic_lmk_bary=np.full((NUM_YAW_BINS, 17, 3), 1 / 3, dtype=np.float32),
        uv_coords=uv_coords.astype(np.float32),
        uv_faces=faces.copy(),
        face_labels=labels,
        name="tiny-sphere",
    ).validate("tiny")


@dataclass
class PaletteConfig:
    """Options of the test renderer."""

    occluder_probability: float = 0.5


class PaletteRenderer:
    """Test renderer: the label palette on a random grey background, random noise, a random occluder bar.

    Every random choice comes from the generator, so samples are reproducible; the occluder exercises the pipeline's
    relabelling. ``latent`` is 4 random numbers (exercises the latent field).
    """

    name = "palette"
    latent_dim = 4

    def __init__(self, config: PaletteConfig | None = None, model: object = None) -> None:
        self.occluder_probability = (config or PaletteConfig()).occluder_probability

    def render(self, scene: Scene, generator: torch.Generator) -> RenderOutput:
        seg = scene.annotations.seg[0].long()
        H, W = scene.height, scene.width
        palette = torch.as_tensor(SYNTH.palette_array(), dtype=torch.float32)
        bg = torch.rand(3, generator=generator) * 255
        image = torch.where((seg > 0)[..., None], palette[seg], bg.expand(H, W, 3))
        image = image + torch.randn(H, W, 3, generator=generator) * 4
        latent = torch.randn(self.latent_dim, generator=generator)
        occ = None
        if float(torch.rand(1, generator=generator)) < self.occluder_probability:
            rows = int(torch.randint(1, H // 2, (1,), generator=generator))
            occ = torch.zeros(H, W, dtype=torch.bool)
            occ[:rows] = True
            image[occ] = torch.tensor([40.0, 25.0, 10.0])  # "hair"
        return RenderOutput(image=image.clamp(0, 255).round().to(torch.uint8), latent=latent, occluder_mask=occ)


def tiny_config_dict(image_size: int = 48) -> dict:
    """A generation config for the tiny model (small counts, small images)."""
    return {
        "image_size": image_size,
        "shape": {"count": 6},
        "expression": {"count": 4, "distribution": "normal"},
        "camera": {"frame_width_m": [0.28, 0.32]},
        "renderer": {"name": "palette"},
    }
