"""Next3D backend against a stub generator that has Next3D's call signature, loaded through the same code path.

The stub lives in a fake checkout written by the test (legacy.py, dnnlib/util.py, training_avatar_texture/...). It
projects the landmark rows of ``v`` with the EG3D camera label it receives (its own, independent projection code:
EG3D normalised intrinsics, pixel index = u * 512 - 0.5) and returns as ``image_depth`` the exact ray distance to a
sphere in Next3D world, so the test can check our camera mapping and the ray-distance -> camera-z conversion.
"""

from __future__ import annotations

import math
import pickle
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from next3d_gen.camera import intrinsics_from_fov, orbit_camera, project, world_to_camera
from next3d_gen.errors import UserError
from next3d_gen.render.base import Scene
from next3d_gen.render.next3d import (
    FLAME_TO_WORLD_SCALE,
    Next3DConfig,
    Next3DRenderer,
    flame_to_world,
    world_to_flame,
)

NUM_VERTS = 40
SPHERE_RADIUS_WORLD = 0.5

STUB_SOURCE = """
import math
import torch


class TriPlaneGenerator(torch.nn.Module):
    def __init__(self, num_verts, depth_res):
        super().__init__()
        self.z_dim = 8
        self.c_dim = 25
        self.num_verts = num_verts
        self.depth_res = depth_res
        self.neural_rendering_resolution = 16
        self.rendering_kwargs = {"avg_camera_radius": 2.7, "avg_camera_pivot": [0, 0, 0.2]}
        self.scale = torch.nn.Parameter(torch.ones(1))
        self.last_mapping_c = None

    def mapping(self, z, c, truncation_psi=1, truncation_cutoff=None, update_emas=False):
        assert c.shape[1] == 25
        self.last_mapping_c = c.detach().clone()
        return z[:, None, :].repeat(1, 28, 1) * truncation_psi

    def synthesis(self, ws, c, v, neural_rendering_resolution=None, noise_mode="random", **kwargs):
        assert v.shape[1] == self.num_verts + 68 and c.shape[1] == 25
        B = v.shape[0]
        c2w = c[:, :16].reshape(B, 4, 4)
        Kn = c[:, 16:].reshape(B, 3, 3)
        lm = (v[:, self.num_verts:] + torch.tensor([0.0, -0.01, -0.01])) * 2.5
        lm = lm + torch.tensor([0.0, 0.0, math.sqrt(2) / 10])
        R, t = c2w[:, :3, :3], c2w[:, :3, 3]
        cam = torch.einsum("bji,bnj->bni", R, lm - t[:, None])
        u = Kn[:, None, 0, 0] * cam[..., 0] / cam[..., 2] + Kn[:, None, 0, 2]
        w = Kn[:, None, 1, 1] * cam[..., 1] / cam[..., 2] + Kn[:, None, 1, 2]
        image = -torch.ones(B, 3, 512, 512)
        for b in range(B):
            for x, y in zip((u[b] * 512 - 0.5).round().long(), (w[b] * 512 - 0.5).round().long()):
                if 0 <= x < 512 and 0 <= y < 512:
                    image[b, :, y, x] = 1.0
        R_ = self.depth_res
        ys = (torch.arange(R_) + 0.5) / R_
        xs = (torch.arange(R_) + 0.5) / R_
        d = torch.stack(torch.broadcast_tensors(
            (xs[None, :] - Kn[0, 0, 2]) / Kn[0, 0, 0], (ys[:, None] - Kn[0, 1, 2]) / Kn[0, 1, 1],
            torch.ones(R_, R_)), dim=-1)
        d = d / d.norm(dim=-1, keepdim=True)
        dw = d @ R[0].T
        o = t[0]
        b_ = (dw * o).sum(-1)
        disc = b_ ** 2 - (o @ o - SPHERE_R ** 2)
        dist = -b_ - torch.sqrt(disc.clamp(min=0))
        dist = torch.where(disc > 0, dist, torch.full_like(dist, 3.3))
        return {"image": image, "image_depth": dist[None, None].repeat(B, 1, 1, 1)}
""".replace("SPHERE_R", str(SPHERE_RADIUS_WORLD))


@pytest.fixture()
def next3d_checkout(tmp_path: Path) -> tuple[Path, Path]:
    """A fake Next3D checkout and a checkpoint pickled from its stub generator class (``NUM_VERTS`` vertices)."""
    return write_next3d_checkout(tmp_path, NUM_VERTS)


def write_next3d_checkout(tmp_path: Path, num_verts: int) -> tuple[Path, Path]:
    """Write a fake Next3D checkout and a checkpoint of its stub generator for meshes of ``num_verts`` vertices."""
    root = tmp_path / "Next3D"
    (root / "dnnlib").mkdir(parents=True)
    (root / "training_avatar_texture").mkdir()
    (root / "legacy.py").write_text("import pickle\n\ndef load_network_pkl(f):\n    return pickle.load(f)\n")
    (root / "dnnlib" / "__init__.py").write_text("from . import util\n")
    (root / "dnnlib" / "util.py").write_text("def open_url(url):\n    return open(url, 'rb')\n")
    (root / "training_avatar_texture" / "__init__.py").write_text("")
    (root / "training_avatar_texture" / "triplane_next3d.py").write_text(textwrap.dedent(STUB_SOURCE))
    sys.path.insert(0, str(root))
    try:
        from training_avatar_texture.triplane_next3d import TriPlaneGenerator  # type: ignore[import-not-found]

        G = TriPlaneGenerator(num_verts, depth_res=24)
        ckpt = tmp_path / "next3d_stub.pkl"
        with open(ckpt, "wb") as f:
            pickle.dump({"G_ema": G, "G": None, "D": None}, f)
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m.split(".")[0] in ("training_avatar_texture", "dnnlib", "legacy")]:
            del sys.modules[name]
    return root, ckpt


def _model(num_verts: int = NUM_VERTS) -> SimpleNamespace:
    return SimpleNamespace(num_vertices=num_verts, name="fake-flame")


def _scene(size: int = 24, yaw: float = 20.0, pitch: float = 10.0) -> Scene:
    rng = np.random.default_rng(0)
    verts = torch.as_tensor(rng.normal(scale=0.05, size=(NUM_VERTS, 3)), dtype=torch.float32)
    lms = torch.as_tensor(rng.normal(scale=0.04, size=(68, 3)), dtype=torch.float32) + torch.tensor([0, 0, 0.05])
    K = intrinsics_from_fov(18.0, size, size)
    c2w = orbit_camera(yaw, pitch, 1.0, torch.tensor([0.0, 0.0, 0.0]))
    lm2d = project(world_to_camera(lms[None], c2w[None]), K[None])
    return Scene(
        vertices_world=verts,
        landmarks_world=lms,
        faces=torch.zeros(0, 3, dtype=torch.long),
        K=K,
        cam2world=c2w,
        height=size,
        width=size,
        fragments=None,
        annotations=SimpleNamespace(landmarks_2d=lm2d),
        model=None,
        params={},
    )


def test_loads_through_checkout_and_projects_consistently(next3d_checkout):
    root, ckpt = next3d_checkout
    r = Next3DRenderer(Next3DConfig(checkout=str(root), checkpoint=str(ckpt), expected_vertices=NUM_VERTS), _model())
    assert r.latent_dim == 8
    scene = _scene(size=512)
    out = r.render(scene, torch.Generator().manual_seed(0))
    assert out.image.shape == (512, 512, 3) and out.image.dtype == torch.uint8
    assert out.latent.shape == (8,)
    # The stub marked the pixels where *it* projects the landmarks: they must be where *we* project them.
    ours = scene.annotations.landmarks_2d[0].round().long()
    inside = (ours >= 0).all(1) & (ours < 512).all(1)
    assert inside.sum() > 40
    marked = out.image[ours[inside, 1], ours[inside, 0]].float().mean(1)
    assert (marked > 250).float().mean() > 0.95


def test_depth_is_camera_z_in_metres(next3d_checkout):
    root, ckpt = next3d_checkout
    r = Next3DRenderer(Next3DConfig(checkout=str(root), checkpoint=str(ckpt), expected_vertices=NUM_VERTS), _model())
    scene = _scene(size=24)
    depth = r.render(scene, torch.Generator().manual_seed(1)).depth
    assert depth.shape == (24, 24)
    # Independent reference: intersect our own pixel-centre rays (FLAME frame, metres) with the sphere.
    centre = world_to_flame(torch.zeros(3))
    radius = SPHERE_RADIUS_WORLD / FLAME_TO_WORLD_SCALE
    K, c2w = scene.K.double(), scene.cam2world.double()
    j, i = torch.meshgrid(torch.arange(24.0), torch.arange(24.0), indexing="xy")
    d_cam = torch.stack([(j - K[0, 2]) / K[0, 0], (i - K[1, 2]) / K[1, 1], torch.ones_like(j)], -1).double()
    d_world = torch.nn.functional.normalize(d_cam @ c2w[:3, :3].T, dim=-1)
    o = c2w[:3, 3] - centre.double()
    b = (d_world * o).sum(-1)
    disc = b**2 - (o @ o - radius**2)
    t = -b - torch.sqrt(disc.clamp(min=0))
    z_ref = t * (d_world @ c2w[:3, 2])
    hit = disc > 1e-4
    assert hit.sum() > 50
    assert torch.allclose(depth[hit].double(), z_ref[hit], atol=1e-4)


def test_frontal_conditioning_and_determinism(next3d_checkout):
    root, ckpt = next3d_checkout
    r = Next3DRenderer(Next3DConfig(checkout=str(root), checkpoint=str(ckpt), expected_vertices=NUM_VERTS), _model())
    scene = _scene(size=32, yaw=35.0)
    a = r.render(scene, torch.Generator().manual_seed(5))
    cond = r.G.last_mapping_c[0]
    c2w = cond[:16].reshape(4, 4)
    assert torch.allclose(c2w[:3, 3], torch.tensor([0.0, 0.0, 2.7]), atol=1e-5)
    assert torch.allclose(c2w[:3, 2], torch.nn.functional.normalize(torch.tensor([0.0, 0.0, -2.5]), dim=0), atol=1e-5)
    b = r.render(scene, torch.Generator().manual_seed(5))
    assert torch.equal(a.image, b.image) and torch.equal(a.latent, b.latent)


def test_alignment_transform_is_applied_in_world():
    a = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.05], [0.0, 0.0, 1.0, 0.0]]
    r = Next3DRenderer.__new__(Next3DRenderer)
    r._alignment = torch.tensor(a)
    p = torch.tensor([[0.01, 0.02, 0.03]])
    # +0.05 world units in y is +0.02 m in FLAME.
    assert torch.allclose(r.label_transform(p), p + torch.tensor([0.0, 0.05 / 2.5, 0.0]), atol=1e-7)
    assert torch.allclose(world_to_flame(flame_to_world(p)), p, atol=1e-7)


def test_refuses_builtin_head_and_bad_paths(next3d_checkout, tmp_path):
    root, ckpt = next3d_checkout
    with pytest.raises(UserError, match="needs the FLAME model"):
        Next3DRenderer(Next3DConfig(checkout=str(root), checkpoint=str(ckpt)), _model(num_verts=NUM_VERTS))
    with pytest.raises(UserError, match="not a Next3D checkout"):
        cfg = Next3DConfig(checkout=str(tmp_path), checkpoint=str(ckpt), expected_vertices=NUM_VERTS)
        Next3DRenderer(cfg, _model())
    with pytest.raises(UserError, match="does not exist"):
        Next3DRenderer(
            Next3DConfig(checkout=str(root), checkpoint=str(tmp_path / "nope.pkl"), expected_vertices=NUM_VERTS),
            _model(),
        )
    assert math.isfinite(FLAME_TO_WORLD_SCALE)


def test_generate_command_with_fake_flame_and_stub_next3d(tmp_path, capsys):
    """``synthforge generate`` end to end on the Next3D path: FLAME-format files -> stub Next3D -> HDF5 shard."""
    from flame_fixtures import write_fake_flame

    from next3d_gen import h5
    from next3d_gen.flame import load_flame_model
    from synthforge import cli

    flame_paths = write_fake_flame(tmp_path / "flame")
    num_verts = load_flame_model(flame_paths["model"]).num_vertices
    root, ckpt = write_next3d_checkout(tmp_path, num_verts)
    config = Path(__file__).resolve().parents[1] / "configs" / "generate" / "next3d.yaml"
    out = tmp_path / "data"
    argv = [
        "generate", "--config", str(config), "--num", "3", "--out", str(out), "--workers", "1", "--no-progress",
        "--model.path", str(flame_paths["model"]), "--renderer.next3d.checkout", str(root),
        "--renderer.next3d.checkpoint", str(ckpt), "--renderer.next3d.expected_vertices", str(num_verts),
    ]
    assert cli.main(argv[:-2] + ["--renderer.next3d.expected_vertices", "5023"]) == 2  # a wrong FLAME is refused
    assert "5023" in capsys.readouterr().err
    assert cli.main(argv) == 0
    with h5.SampleReader(out) as reader:
        assert len(reader) == 3 and reader.image_size == 512
        for i in range(3):
            s = reader[i]
            assert s["latent"].shape == (8,) and s["image"].shape == (512, 512, 3)
            assert (s["seg"] != 0).sum() > 1000 and s["depth"].max() > 0
            # the stub marked where *it* projects the landmarks; our stored 2D landmarks must be there
            ours = np.rint(s["landmarks_2d"]).astype(int)
            inside = (ours >= 0).all(1) & (ours < 512).all(1)
            assert inside.sum() > 40
            assert (s["image"][ours[inside, 1], ours[inside, 0]].mean(1) > 250).mean() > 0.95
