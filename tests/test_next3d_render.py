"""Next3D backend against a stub generator that has Next3D's call signature, loaded through the same code path.

The stub lives in a fake checkout written by the test (legacy.py, dnnlib/util.py, training_avatar_texture/...). It
follows the official tri-plane chain on its own (its own constants, nothing imported from the backend) to find where
a Next3D network shows the landmark rows of ``v``: ``rasterize``'s y flip, ``+ orth_shift``, ``* orth_scale``,
orthographic projection (scale 1, no offset), y/z flip, the rasteriser's x/y negation into PyTorch3D NDC, NDC ->
``grid_sample`` grid, and EG3D's plane sampling at ``2 / box_warp``; depth, which the code does not pin, is put where
the published generator's fit puts it, and an optional ``drawn_at`` affine stands for what the real network learnt
beyond the chain (the alignment). It projects those points with the camera label it receives (inverse cam2world,
normalised intrinsics, pixel index = u * 512 - 0.5 as the ray sampler's pixel centres), records them in
``last_landmarks_px`` and marks them in the image; from a camera that is not 2.7 units from the world origin (its
``avg_camera_radius``; Next3D never saw one) it shows no face (NaN, no marks). ``image_depth`` is the exact ray
distance to a sphere at the world origin.
"""

from __future__ import annotations

import logging
import math
import pickle
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from next3d_gen.camera import intrinsics_from_fov, look_at, orbit_camera, project, world_to_camera
from next3d_gen.errors import UserError
from next3d_gen.render.base import Scene
from next3d_gen.render.next3d import (
    FLAME_TO_WORLD_SCALE,
    NEXT3D_FOCAL_TOLERANCE,
    NEXT3D_TRAINED_FOCAL,
    Next3DConfig,
    Next3DRenderer,
    finish_image,
    flame_to_world,
    world_to_flame,
)

NUM_VERTS = 40
SPHERE_RADIUS_WORLD = 0.5
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "generate" / "next3d.yaml"
FFHQ_RENDERING_KWARGS = {"box_warp": 1, "avg_camera_radius": 2.7, "avg_camera_pivot": [0, 0, 0.2]}
"""The Next3D FFHQ values (train_next3d.py, cfg ffhq) the stub checkpoint stores."""

STUB_SOURCE = """
import math
import torch


class TriPlaneGenerator(torch.nn.Module):
    def __init__(self, num_verts, depth_res, rendering_kwargs, drawn_at=None):
        super().__init__()
        self.z_dim = 8
        self.c_dim = 25
        self.num_verts = num_verts
        self.neural_rendering_resolution = depth_res
        self.rendering_kwargs = dict(rendering_kwargs)
        self.orth_scale = torch.tensor([[5.0]])
        self.orth_shift = torch.tensor([[0.0, -0.01, -0.01]])
        self.drawn_at = drawn_at
        self.scale = torch.nn.Parameter(torch.ones(1))
        self.last_mapping_c = None
        self.last_landmarks_px = None

    def mapping(self, z, c, truncation_psi=1, truncation_cutoff=None, update_emas=False):
        assert c.shape[1] == 25
        self.last_mapping_c = c.detach().clone()
        return z[:, None, :].repeat(1, 28, 1) * truncation_psi

    def shown_at(self, lms):
        # Where a network following the tri-plane chain shows FLAME points lms (B, N, 3): world (B, N, 3).
        box_warp = float(self.rendering_kwargs["box_warp"])
        p = lms.clone()
        p[..., 1] = -p[..., 1]                                   # rasterize: y negated
        p = (p + self.orth_shift) * self.orth_scale              # front view (no rotation): + orth_shift, * orth_scale
        p = p[..., :2] * 1.0 + 0.0                               # batch_orth_proj, camera [1, 0, 0]
        p = torch.stack([p[..., 0], -p[..., 1]], dim=-1)         # y (and z) negated after projecting
        ndc = -p                                                 # Pytorch3dRasterizer: x, y negated (+x left, +y up)
        grid = -ndc                                              # pixel at NDC n is read by grid_sample at -n
        xy = grid * box_warp / 2                                 # sample_from_planes: plane 0 read at 2/box_warp*(X, Y)
        # depth is not pinned by the code; the published generator's fit
        z = (lms[..., 2:] + self.orth_shift[0, 2]) * self.orth_scale[0, 0] * box_warp / 2 + math.sqrt(2) / 10
        world = torch.cat([xy, z], dim=-1)
        if self.drawn_at is not None:                            # what the network learnt beyond the chain
            world = world @ self.drawn_at[:, :3].T + self.drawn_at[:, 3]
        return world

    def synthesis(self, ws, c, v, neural_rendering_resolution=None, noise_mode="random", **kwargs):
        assert v.shape[1] == self.num_verts + 68 and c.shape[1] == 25
        B = v.shape[0]
        c2w = c[:, :16].reshape(B, 4, 4)
        Kn = c[:, 16:].reshape(B, 3, 3)
        world = self.shown_at(v[:, self.num_verts:])
        w2c = torch.linalg.inv(c2w)
        cam = world @ w2c[:, :3, :3].transpose(1, 2) + w2c[:, None, :3, 3]
        u = Kn[:, None, 0, 0] * cam[..., 0] / cam[..., 2] + Kn[:, None, 0, 2]
        w = Kn[:, None, 1, 1] * cam[..., 1] / cam[..., 2] + Kn[:, None, 1, 2]
        px = torch.stack([u, w], dim=-1) * 512 - 0.5
        trained = (c2w[:, :3, 3].norm(dim=-1) / self.rendering_kwargs["avg_camera_radius"] - 1).abs() < 0.01
        px = torch.where(trained[:, None, None], px, torch.full_like(px, float("nan")))
        self.last_landmarks_px = px.detach().clone()
        image = -torch.ones(B, 3, 512, 512)
        for b in range(B):
            for x, y in px[b][torch.isfinite(px[b]).all(-1)].round().long():
                if 0 <= x < 512 and 0 <= y < 512:
                    image[b, :, y, x] = 1.0
        R_ = self.neural_rendering_resolution
        centres = (torch.arange(R_) + 0.5) / R_
        d = torch.stack(torch.broadcast_tensors(
            (centres[None, :] - Kn[0, 0, 2]) / Kn[0, 0, 0], (centres[:, None] - Kn[0, 1, 2]) / Kn[0, 1, 1],
            torch.ones(R_, R_)), dim=-1)
        dw = torch.nn.functional.normalize(d @ c2w[0, :3, :3].T, dim=-1)
        o = c2w[0, :3, 3]
        b_ = (dw * o).sum(-1)
        disc = b_ ** 2 - (o @ o - SPHERE_R ** 2)
        dist = -b_ - torch.sqrt(disc.clamp(min=0))
        dist = torch.where(disc > 0, dist, torch.full_like(dist, 3.3))
        return {"image": image, "image_depth": dist[None, None].repeat(B, 1, 1, 1)}
""".replace("SPHERE_R", str(SPHERE_RADIUS_WORLD))


def yaml_alignment() -> list[list[float]]:
    """The alignment of ``configs/generate/next3d.yaml``."""
    return yaml.safe_load(CONFIG.read_text())["renderer"]["next3d"]["alignment"]


@pytest.fixture()
def next3d_checkout(tmp_path: Path) -> tuple[Path, Path]:
    """A fake Next3D checkout and a checkpoint pickled from its stub generator class (``NUM_VERTS`` vertices)."""
    return write_next3d_checkout(tmp_path, NUM_VERTS)


def write_next3d_checkout(
    tmp_path: Path,
    num_verts: int,
    rendering_kwargs: dict | None = None,
    drawn_at: list[list[float]] | None = None,
    attrs: dict | None = None,
) -> tuple[Path, Path]:
    """Write a fake Next3D checkout and a checkpoint of its stub generator for meshes of ``num_verts`` vertices.

    ``rendering_kwargs`` default to :data:`FFHQ_RENDERING_KWARGS`; ``drawn_at`` is the stub's learnt 3x4 affine;
    ``attrs`` are set on the generator before pickling (``None`` deletes the attribute).
    """
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

        affine = None if drawn_at is None else torch.tensor(drawn_at, dtype=torch.float32)
        G = TriPlaneGenerator(num_verts, 24, rendering_kwargs or FFHQ_RENDERING_KWARGS, affine)
        for name, value in (attrs or {}).items():
            if value is None:
                delattr(G, name)
            else:
                setattr(G, name, value)
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


def _renderer(root: Path, ckpt: Path, **kwargs) -> Next3DRenderer:
    return Next3DRenderer(
        Next3DConfig(checkout=str(root), checkpoint=str(ckpt), expected_vertices=NUM_VERTS, **kwargs), _model()
    )


def _next3d_camera(yaw: float, pitch: float) -> torch.Tensor:
    """FLAME-frame cam2world of a Next3D camera: 2.7 units from the world origin, looking at (0, 0, 0.2)."""
    centre = world_to_flame(torch.zeros(3))
    eye = orbit_camera(yaw, pitch, 2.7 / FLAME_TO_WORLD_SCALE, centre)[:3, 3]
    return look_at(eye, world_to_flame(torch.tensor([0.0, 0.0, 0.2])))


def _scene(size: int = 24, yaw: float = 20.0, pitch: float = 10.0, fov: float = 13.4, pose=None) -> Scene:
    rng = np.random.default_rng(0)
    verts = torch.as_tensor(rng.normal(scale=0.05, size=(NUM_VERTS, 3)), dtype=torch.float32)
    lms = torch.as_tensor(rng.normal(scale=0.04, size=(68, 3)), dtype=torch.float32) + torch.tensor([0, 0, 0.05])
    K = intrinsics_from_fov(fov, size, size)
    c2w = _next3d_camera(yaw, pitch)
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
        params={} if pose is None else {"pose": pose},
    )


def test_renders_landmarks_where_the_official_chain_puts_them(next3d_checkout):
    root, ckpt = next3d_checkout
    r = _renderer(root, ckpt)
    assert r.latent_dim == 8
    scene = _scene(size=512)
    out = r.render(scene, torch.Generator().manual_seed(0))
    assert out.image.shape == (512, 512, 3) and out.image.dtype == torch.uint8
    assert out.latent.shape == (8,)
    # Where *it* shows the landmarks (from the tri-plane chain) is where *we* project them, to float precision.
    ours = scene.annotations.landmarks_2d[0]
    assert (ours - r.G.last_landmarks_px[0]).abs().max() < 0.02
    inside = ((ours >= 0) & (ours < 511.5)).all(1)
    assert inside.sum() > 40
    marked = out.image[ours[inside, 1].round().long(), ours[inside, 0].round().long()].float().mean(1)
    assert (marked > 250).float().mean() > 0.95


def test_pipeline_labels_land_where_the_generator_shows_the_face(tmp_path):
    """Through the sample pipeline with the Next3D config (cameras, alignment): the generator gets the raw FLAME mesh
    and shows its landmarks, moved by what it learnt (the alignment), exactly where the stored labels are."""
    from flame_fixtures import write_fake_flame

    from next3d_gen.flame import load_flame_model
    from next3d_gen.pipeline import SamplePipeline
    from next3d_gen.sampling import load_config

    flame_paths = write_fake_flame(tmp_path / "flame")
    num_verts = load_flame_model(flame_paths["model"]).num_vertices
    root, ckpt = write_next3d_checkout(tmp_path, num_verts, drawn_at=yaml_alignment())
    config = load_config(
        CONFIG,
        {
            "model.path": str(flame_paths["model"]),
            "renderer.next3d.checkout": str(root),
            "renderer.next3d.checkpoint": str(ckpt),
            "renderer.next3d.expected_vertices": num_verts,
        },
    )
    pipeline = SamplePipeline(config)
    for index in range(4):
        record = pipeline.generate(index)
        shown = pipeline.renderer.G.last_landmarks_px[0].numpy()
        assert np.isfinite(shown).all(), "the generator saw a camera Next3D was not trained with"
        assert np.abs(record["landmarks_2d"] - shown).max() < 0.05
        assert np.abs(record["landmarks_2d"] - 255.5).max() < 256  # the face is in the frame


def test_depth_is_camera_z_in_metres(next3d_checkout):
    root, ckpt = next3d_checkout
    r = _renderer(root, ckpt)
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


@pytest.mark.parametrize("conditioning", ["frontal", "render"])
def test_conditioning_camera_has_the_trained_intrinsic_and_renders_are_deterministic(next3d_checkout, conditioning):
    root, ckpt = next3d_checkout
    r = _renderer(root, ckpt, conditioning=conditioning)
    scene = _scene(size=32, yaw=35.0, fov=13.0)
    a = r.render(scene, torch.Generator().manual_seed(5))
    cond = r.G.last_mapping_c[0]
    f = 2985.29 / 700  # Next3D's FFHQ labels (fix_intrinsics)
    assert torch.allclose(cond[16:], torch.tensor([f, 0, 0.5, 0, f, 0.5, 0, 0, 1.0]), atol=1e-6)
    c2w = cond[:16].reshape(4, 4)
    if conditioning == "frontal":  # LookAtPoseSampler(pi/2, pi/2, pivot (0, 0, 0.2), radius 2.7)
        assert torch.allclose(c2w[:3, 3], torch.tensor([0.0, 0.0, 2.7]), atol=1e-5)
        assert torch.allclose(c2w[:3, :3], torch.diag(torch.tensor([1.0, -1.0, -1.0])), atol=1e-6)
    else:
        assert torch.allclose(c2w[:3, :3], scene.cam2world[:3, :3], atol=1e-6)
        assert torch.allclose(c2w[:3, 3], flame_to_world(scene.cam2world[:3, 3]), atol=1e-6)
    b = r.render(scene, torch.Generator().manual_seed(5))
    assert torch.equal(a.image, b.image) and torch.equal(a.latent, b.latent)


def test_image_becomes_uint8_as_the_official_scripts_do():
    # x * 127.5 + 128, clamped, truncated: 100.7 -> 100 (not 101), -2 -> 0, 1.2 -> 255, 0 -> 128.
    x = torch.tensor([(100.7 - 128) / 127.5, -2.0, 1.2, 0.0]).reshape(1, 1, 1, 4).expand(1, 3, 1, 4)
    out = finish_image(x, 1, 4)
    assert out.dtype == torch.uint8 and out.shape == (1, 4, 3)
    assert out[0, :, 0].tolist() == [100, 0, 255, 128]


def test_refuses_a_checkpoint_with_other_mapping_constants(tmp_path):
    kwargs = dict(FFHQ_RENDERING_KWARGS, box_warp=1.3)
    root, ckpt = write_next3d_checkout(tmp_path / "a", NUM_VERTS, rendering_kwargs=kwargs)
    with pytest.raises(UserError, match=r"next3d_stub\.pkl.*box_warp=\[1\.3\].*box_warp=\[1\]") as err:
        _renderer(root, ckpt)
    assert "\n" not in str(err.value)
    root, ckpt = write_next3d_checkout(tmp_path / "b", NUM_VERTS, attrs={"orth_shift": None})
    with pytest.raises(UserError, match="orth_shift=missing"):
        _renderer(root, ckpt)
    kwargs = dict(FFHQ_RENDERING_KWARGS, avg_camera_pivot=[0, 0, 0])
    root, ckpt = write_next3d_checkout(tmp_path / "c", NUM_VERTS, rendering_kwargs=kwargs)
    with pytest.raises(UserError, match="avg_camera_pivot"):
        _renderer(root, ckpt)


def test_warns_once_outside_what_next3d_was_trained_on(next3d_checkout, caplog):
    root, ckpt = next3d_checkout
    r = _renderer(root, ckpt)
    with caplog.at_level(logging.WARNING, logger="next3d_gen.render.next3d"):
        r.render(_scene(size=16), torch.Generator().manual_seed(0))
        assert caplog.records == []
        neck = torch.zeros(15)
        neck[4] = 0.1
        for _ in range(2):
            r.render(_scene(size=16, fov=20.0, pose=neck), torch.Generator().manual_seed(0))
    messages = [rec.getMessage() for rec in caplog.records]
    assert len(messages) == 2
    assert any("focal" in m for m in messages) and any("neck" in m for m in messages)


def test_alignment_moves_labels_in_world():
    a = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.05], [0.0, 0.0, 1.0, 0.0]]
    r = Next3DRenderer.__new__(Next3DRenderer)
    r._alignment = torch.tensor(a)
    p = torch.tensor([[0.01, 0.02, 0.03]])
    # +0.05 world units in y is +0.02 m in FLAME.
    assert torch.allclose(r.label_transform(p), p + torch.tensor([0.0, 0.05 / 2.5, 0.0]), atol=1e-7)
    assert torch.allclose(world_to_flame(flame_to_world(p)), p, atol=1e-7)


def test_config_alignment_is_the_published_one_for_the_derived_shift():
    """The config's alignment after our FLAME->world map equals the published alignment after the published map."""
    published_a = torch.tensor(
        [[1.019561, 0.005742, -0.019674], [-0.019877, 0.969371, -0.009842], [0.007155, 0.079734, 0.988028]],
        dtype=torch.float64,
    )
    published_c = torch.tensor([0.001149, 0.048703, -0.014159], dtype=torch.float64)
    v = torch.tensor([[0.05, -0.08, 0.02], [-0.07, 0.04, 0.09], [0.0, 0.0, 0.0]], dtype=torch.float64)
    published_world = 2.5 * (v + torch.tensor([0.0, -0.01, -0.01], dtype=torch.float64))
    published_world[:, 2] += math.sqrt(2.0) / 10.0
    ours = torch.tensor(yaml_alignment(), dtype=torch.float64)
    got = flame_to_world(v) @ ours[:, :3].T + ours[:, 3]
    assert torch.allclose(got, published_world @ published_a.T + published_c, atol=1e-6)


def test_config_cameras_are_next3ds():
    """Cameras 2.7 units from the world origin looking at (0, 0, 0.2), focal near the trained one, no neck turn."""
    from next3d_gen.sampling import load_config, sample_params

    config = load_config(CONFIG)
    cam = config.camera
    assert torch.allclose(torch.tensor(cam.orbit_center), world_to_flame(torch.zeros(3)), atol=1e-6)
    assert torch.allclose(torch.tensor(cam.pivot), world_to_flame(torch.tensor([0.0, 0.0, 0.2])), atol=1e-6)
    assert cam.distance_mode == "fixed" and cam.distance_m == (2.7 / 2.5, 2.7 / 2.5) and cam.pivot_jitter_m == 0
    for fov in cam.fov_deg:
        f = 0.5 / math.tan(math.radians(fov) / 2)
        assert abs(f / NEXT3D_TRAINED_FOCAL - 1) <= NEXT3D_FOCAL_TOLERANCE
    pose = config.pose
    assert pose.neck_yaw_deg == pose.neck_pitch_deg == pose.neck_roll_deg == (0.0, 0.0)
    assert pose.global_yaw_deg == pose.global_pitch_deg == pose.global_roll_deg == (0.0, 0.0)
    for index in range(5):
        p = sample_params(config, 0, index, 10, 10)
        eye = flame_to_world(p.cam2world[:3, 3].double())
        assert abs(float(eye.norm()) - 2.7) < 1e-5
        forward = torch.nn.functional.normalize(torch.tensor([0.0, 0.0, 0.2], dtype=torch.float64) - eye, dim=0)
        assert torch.allclose(p.cam2world[:3, 2].double(), forward, atol=1e-5)
        assert p.pose[:6].abs().max() == 0


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


def test_generate_command_with_fake_flame_and_stub_next3d(tmp_path, capsys):
    """``synthforge generate`` end to end on the Next3D path: FLAME-format files -> stub Next3D -> HDF5 shard."""
    from flame_fixtures import write_fake_flame

    from next3d_gen import h5
    from next3d_gen.flame import load_flame_model
    from synthforge import cli

    flame_paths = write_fake_flame(tmp_path / "flame")
    num_verts = load_flame_model(flame_paths["model"]).num_vertices
    root, ckpt = write_next3d_checkout(tmp_path, num_verts, drawn_at=yaml_alignment())
    out = tmp_path / "data"
    argv = [
        "generate", "--config", str(CONFIG), "--num", "3", "--out", str(out), "--workers", "1", "--no-progress",
        "--model.path", str(flame_paths["model"]), "--renderer.next3d.checkout", str(root),
        "--renderer.next3d.checkpoint", str(ckpt), "--renderer.next3d.expected_vertices", str(num_verts),
    ]  # fmt: skip
    assert cli.main(argv[:-2] + ["--renderer.next3d.expected_vertices", "5023"]) == 2  # a wrong FLAME is refused
    assert "5023" in capsys.readouterr().err
    assert cli.main(argv) == 0
    with h5.SampleReader(out) as reader:
        assert len(reader) == 3 and reader.image_size == 512
        for i in range(3):
            s = reader[i]
            assert s["latent"].shape == (8,) and s["image"].shape == (512, 512, 3)
            assert (s["seg"] != 0).sum() > 1000 and s["depth"].max() > 0
            # the stub marked where *it* shows the landmarks; our stored 2D landmarks must be there
            ours = np.rint(s["landmarks_2d"]).astype(int)
            inside = (ours >= 0).all(1) & (ours < 512).all(1)
            assert inside.sum() > 40
            assert (s["image"][ours[inside, 1], ours[inside, 0]].mean(1) > 250).mean() > 0.95
