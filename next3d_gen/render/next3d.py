"""Next3D backend: drive a user's Next3D checkout and checkpoint to render the image (and depth) of a scene.

Nothing here ships Next3D: the user brings a checkout (``checkout``, the repo root with ``legacy.py``, ``dnnlib/``,
``torch_utils/``, ``training_avatar_texture/``) and the network pickle (``checkpoint``, e.g. ``next3d_ffhq_512.pkl``).
Next3D needs real FLAME meshes (5023 vertices + 68 iBUG landmarks), so this backend refuses the built-in head.

What the generator is given (as Next3D's scripts and training data do):

* ``v``: the posed FLAME vertices and the 68 landmarks in raw FLAME metres, shape (1, 5023 + 68, 3), global rotation
  and neck as Next3D was trained (zero; head pose lives in the camera). Never the alignment-corrected mesh: the
  alignment moves only the labels (see :meth:`Next3DRenderer.label_transform`).
* ``c`` of ``synthesis``: the 25-value EG3D label of the rendering camera (16 row-major OpenCV cam2world values in
  Next3D world, 9 row-major intrinsics normalised by image size). ``c`` of ``mapping``: a frontal camera
  (``LookAtPoseSampler`` at yaw = pitch = pi/2 around the checkpoint's ``avg_camera_radius`` / ``avg_camera_pivot``)
  or the rendering camera, always with the trained intrinsic (:data:`NEXT3D_TRAINED_FOCAL`, principal point 0.5).

FLAME -> Next3D world (where the generator draws a FLAME point). Next3D paints its neural texture into the front
tri-plane by rasterising the mesh orthographically (``TriPlaneGenerator.rasterize``, front view = identity rotation):
for a FLAME point (x, y, z)

1. y is negated:                                  (x, -y, z)
2. ``orth_shift`` (0, -0.01, -0.01) is added:      (x, -y - 0.01, z - 0.01)
3. times ``orth_scale`` (5):                       (5x, -5(y + 0.01), 5(z - 0.01))
4. ``batch_orth_proj`` with scale 1, offset 0 keeps x and y; then y (and z) are negated: (5x, 5(y + 0.01))
5. ``Pytorch3dRasterizer`` negates x and y into PyTorch3D NDC (+x left, +y up): (-5x, -5(y + 0.01)). The pixel
   whose centre has NDC (n_x, n_y) is the pixel that ``grid_sample`` (``align_corners=False``) reads at grid
   coordinates (-n_x, -n_y), so the point lands on the 256 x 256 front plane at grid (5x, 5(y + 0.01)).

EG3D's ``sample_from_planes`` reads plane 0 (axes x, y) at ``2 / box_warp * (X, Y)`` for a world point (X, Y, Z).
Equating: X = ``orth_scale * box_warp / 2`` * x = 2.5 x and Y = 2.5 (y + 0.01) = 2.5 y + 0.025, i.e.
``shift_y = -orth_scale * box_warp / 2 * orth_shift_y`` = +0.025 (the sign flips with y in step 1).
The front plane carries no depth, and the side/top planes are not laid out on their planes' axes, so the code does
not pin world z; we take the published SynthForge generator's fitted value ``2.5 * (z - 0.01) + sqrt(2)/10``. Hence
``world = 2.5 * v + (0, 0.025, sqrt(2)/10 - 0.025)`` (:data:`FLAME_TO_WORLD_SCALE`, :data:`FLAME_TO_WORLD_SHIFT`).
The published code used -0.025 in y and its alignment's +0.049 y offset compensated; our default alignment
(``configs/generate/next3d.yaml``) is the published one re-expressed for +0.025, so the labels land where they did.

Our cameras live in the FLAME frame; they are mapped to Next3D world with the same similarity (rotation unchanged,
position scaled and shifted). Next3D's cameras sit :data:`NEXT3D_CAMERA_RADIUS` world units from the world origin and
look at ``avg_camera_pivot`` (``LookAtPoseSampler``; FFHQ labels rescaled to radius 2.7 from the origin), with one
intrinsic; the Next3D generation config samples its cameras that way (a warning is logged once when a scene differs).

On load, ``box_warp``, ``orth_scale``, ``orth_shift``, ``avg_camera_radius`` and ``avg_camera_pivot`` are read from the
checkpoint and must equal the values this mapping was derived for (:data:`NEXT3D_DERIVED_FOR`), else UserError.

Outputs: ``image`` becomes uint8 as the official scripts do (x * 127.5 + 128, clamped to [0, 255], truncated);
``image_depth`` (expected distance along unit rays in world units, at the neural rendering resolution) becomes camera
z in metres (z = range / |d_cam| / 2.5) and is resized to the output size.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import os
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from next3d_gen.camera import look_at, to_eg3d_label
from next3d_gen.errors import UserError
from next3d_gen.render.base import RenderOutput, Scene

log = logging.getLogger(__name__)

NEXT3D_DERIVED_FOR: dict[str, tuple[float, ...]] = {
    "box_warp": (1.0,),
    "orth_scale": (5.0,),
    "orth_shift": (0.0, -0.01, -0.01),
    "avg_camera_radius": (2.7,),
    "avg_camera_pivot": (0.0, 0.0, 0.2),
}
"""Checkpoint constants the FLAME -> world mapping below was derived for (Next3D FFHQ: ``train_next3d.py`` ffhq
``rendering_kwargs``, ``TriPlaneGenerator.__init__``)."""
NEXT3D_CAMERA_RADIUS = NEXT3D_DERIVED_FOR["avg_camera_radius"][0]
"""World-unit distance of every Next3D camera from the world origin."""
NEXT3D_TRAINED_FOCAL = 2985.29 / 700
"""Focal length of Next3D's FFHQ labels in units of image size (``fix_intrinsics``; 4.2647, ~13.37 degrees)."""
NEXT3D_FOCAL_TOLERANCE = 0.05
"""Relative focal deviation from :data:`NEXT3D_TRAINED_FOCAL` accepted without a warning (face size +-5 %)."""
FLAME_TO_WORLD_SCALE = NEXT3D_DERIVED_FOR["orth_scale"][0] * NEXT3D_DERIVED_FOR["box_warp"][0] / 2.0
"""orth_scale * box_warp / 2: one Next3D world unit is 0.4 m of FLAME."""
FLAME_TO_WORLD_SHIFT = (
    FLAME_TO_WORLD_SCALE * NEXT3D_DERIVED_FOR["orth_shift"][0],
    -FLAME_TO_WORLD_SCALE * NEXT3D_DERIVED_FOR["orth_shift"][1],
    FLAME_TO_WORLD_SCALE * NEXT3D_DERIVED_FOR["orth_shift"][2] + math.sqrt(2.0) / 10.0,
)
"""(0, +0.025, sqrt(2)/10 - 0.025): x and y from the tri-plane chain (module docstring), z the published fit."""
NEXT3D_NUM_VERTICES = 5023


@dataclass
class Next3DConfig:
    """Settings of the Next3D backend (YAML section ``renderer.next3d``).

    Attributes:
        checkout: path of the user's Next3D repository root.
        checkpoint: path of the network pickle (``G_ema`` is used).
        truncation_psi, truncation_cutoff: mapping-network truncation (published: 0.7, 14).
        conditioning: ``"frontal"`` (a frontal camera at the checkpoint's ``avg_camera_radius`` looking at its
            ``avg_camera_pivot`` conditions the mapping network, as Next3D's scripts do) or ``"render"`` (the
            rendering camera's pose, as the published SynthForge generator); both with the trained intrinsic.
        reload_modules: rebuild G from the checkout's source (what the published generator does); needs the
            checkout's ``data/ffhq`` assets; the checkout becomes the working directory while rebuilding.
        neural_rendering_resolution: override of G's raw volume-rendering resolution (None = the checkpoint's).
        alignment: optional 3x4 affine ``[A | c]`` in Next3D world applied to the labels' mesh only.
        expected_vertices: vertex count Next3D expects (FLAME: 5023).
        landmark_filter_px: when set, reject latents whose image disagrees with the projected landmarks by more
            than this mean distance (pixels at 512 px), measured with ``face_alignment`` using weights that must
            already be on disk (nothing is downloaded); None disables the filter.
        landmark_filter_tries: latents tried per sample before keeping the best one.
        device: torch device string; None = CUDA when available, else CPU.
    """

    checkout: str = ""
    checkpoint: str = ""
    truncation_psi: float = 0.7
    truncation_cutoff: int | None = 14
    conditioning: str = "frontal"
    reload_modules: bool = False
    neural_rendering_resolution: int | None = None
    alignment: list[list[float]] | None = None
    expected_vertices: int = NEXT3D_NUM_VERTICES
    landmark_filter_px: float | None = None
    landmark_filter_tries: int = 4
    device: str | None = None


def flame_to_world(points: Tensor) -> Tensor:
    """FLAME-frame metres (..., 3) -> Next3D world units (..., 3)."""
    return points * FLAME_TO_WORLD_SCALE + points.new_tensor(FLAME_TO_WORLD_SHIFT)


def world_to_flame(points: Tensor) -> Tensor:
    """Inverse of :func:`flame_to_world`."""
    return (points - points.new_tensor(FLAME_TO_WORLD_SHIFT)) / FLAME_TO_WORLD_SCALE


def cam2world_to_next3d(cam2world: Tensor) -> Tensor:
    """(B, 4, 4) OpenCV cam2world in the FLAME frame -> the same camera in Next3D world (rotation unchanged)."""
    out = cam2world.clone()
    out[..., :3, 3] = flame_to_world(cam2world[..., :3, 3])
    return out


def trained_intrinsics(dtype: torch.dtype = torch.float32) -> Tensor:
    """(3, 3) normalised intrinsics Next3D was trained with: focal :data:`NEXT3D_TRAINED_FOCAL`, principal point 0.5."""
    f = NEXT3D_TRAINED_FOCAL
    return torch.tensor([[f, 0.0, 0.5], [0.0, f, 0.5], [0.0, 0.0, 1.0]], dtype=dtype)


def frontal_next3d_camera(radius: float, pivot: tuple[float, ...], dtype: torch.dtype) -> Tensor:
    """(4, 4) OpenCV cam2world at (0, 0, radius) looking at ``pivot`` (world units), no roll.

    This is ``LookAtPoseSampler`` at yaw = pitch = pi/2: the camera sphere is centred at the world origin.
    """
    eye = torch.tensor([0.0, 0.0, radius], dtype=dtype)
    return look_at(eye, torch.tensor(pivot, dtype=dtype))


def ray_distance_to_z(range_map: Tensor, K_normalised: Tensor) -> Tensor:
    """Convert a (B, 1, R, R) ray-distance map to camera z along the same rays.

    Next3D casts the ray of pixel (i, j) through the normalised image point ((j+0.5)/R, (i+0.5)/R); its camera-frame
    direction is d = ((u - cx)/fx, (v - cy)/fy, 1) and z = range / |d|.

    Args:
        range_map: (B, 1, R, R) distances along unit rays.
        K_normalised: (B, 3, 3) intrinsics in units of image size.
    """
    B, _, R, C = range_map.shape
    ys = (torch.arange(R, dtype=range_map.dtype, device=range_map.device) + 0.5) / R
    xs = (torch.arange(C, dtype=range_map.dtype, device=range_map.device) + 0.5) / C
    fx, fy = K_normalised[:, 0, 0, None, None], K_normalised[:, 1, 1, None, None]
    cx, cy = K_normalised[:, 0, 2, None, None], K_normalised[:, 1, 2, None, None]
    dx = (xs[None, None, :] - cx) / fx
    dy = (ys[None, :, None] - cy) / fy
    norm = torch.sqrt(dx**2 + dy**2 + 1.0)  # (B, R, C)
    return range_map / norm[:, None]


@contextlib.contextmanager
def _checkout_on_path(checkout: Path, chdir: bool) -> Iterator[None]:
    sys.path.insert(0, str(checkout))
    cwd = os.getcwd()
    try:
        if chdir:
            os.chdir(checkout)
        yield
    finally:
        os.chdir(cwd)
        with contextlib.suppress(ValueError):
            sys.path.remove(str(checkout))


def _ensure_turtle() -> None:
    # Next3D's triplane_next3d.py has a stray `from turtle import update`; slim Pythons have no tkinter.
    try:
        importlib.import_module("turtle")
    except ImportError:
        stub = types.ModuleType("turtle")
        stub.update = lambda *a, **k: None  # type: ignore[attr-defined]
        sys.modules["turtle"] = stub


def load_next3d_generator(config: Next3DConfig, device: torch.device) -> torch.nn.Module:
    """Load ``G_ema`` from the user's checkpoint through the checkout's own ``legacy.load_network_pkl``.

    Raises:
        UserError: missing checkout or checkpoint, or a pickle the checkout cannot load.
    """
    checkout = Path(config.checkout).expanduser()
    checkpoint = Path(config.checkpoint).expanduser()
    if not config.checkout or not (checkout / "legacy.py").is_file():
        raise UserError(f"renderer.next3d.checkout: {str(checkout)!r} is not a Next3D checkout (no legacy.py)")
    if not config.checkpoint or not checkpoint.is_file():
        raise UserError(f"renderer.next3d.checkpoint: {str(checkpoint)!r} does not exist")
    _ensure_turtle()
    with _checkout_on_path(checkout.resolve(), chdir=config.reload_modules):
        try:
            dnnlib = importlib.import_module("dnnlib")
            legacy = importlib.import_module("legacy")
            with dnnlib.util.open_url(str(checkpoint.resolve())) as f:
                G = legacy.load_network_pkl(f)["G_ema"]
        except UserError:
            raise
        except Exception as err:  # noqa: BLE001 - any failure inside the user's checkout is reported as theirs
            raise UserError(f"renderer.next3d.checkpoint: cannot load {str(checkpoint)!r}: {err}") from err
        if config.reload_modules:
            triplane = importlib.import_module("training_avatar_texture.triplane_next3d")
            misc = importlib.import_module("torch_utils.misc")
            G_new = triplane.TriPlaneGenerator(*G.init_args, **G.init_kwargs).eval().requires_grad_(False)
            misc.copy_params_and_buffers(G, G_new, require_all=True)
            G_new.neural_rendering_resolution = G.neural_rendering_resolution
            G_new.rendering_kwargs = G.rendering_kwargs
            G = G_new
    check_checkpoint_constants(G, str(checkpoint))
    if config.neural_rendering_resolution is not None:
        G.neural_rendering_resolution = int(config.neural_rendering_resolution)
    return G.eval().requires_grad_(False).to(device)


def read_checkpoint_constants(G: Any) -> dict[str, tuple[float, ...] | None]:
    """The constants of :data:`NEXT3D_DERIVED_FOR` as stored in a loaded generator (None where absent).

    ``box_warp``, ``avg_camera_radius`` and ``avg_camera_pivot`` come from ``G.rendering_kwargs``; ``orth_scale`` and
    ``orth_shift`` are attributes of ``TriPlaneGenerator`` (tensors of shape (1, 1) and (1, 3)).
    """
    kwargs = getattr(G, "rendering_kwargs", None) or {}
    found: dict[str, tuple[float, ...] | None] = {}
    for name in NEXT3D_DERIVED_FOR:
        value = getattr(G, name, None) if name.startswith("orth_") else kwargs.get(name)
        try:
            found[name] = (
                None if value is None else tuple(torch.as_tensor(value, dtype=torch.float64).view(-1).tolist())
            )
        except (TypeError, ValueError, RuntimeError):
            found[name] = None
    return found


def _same(found: tuple[float, ...] | None, want: tuple[float, ...]) -> bool:
    if found is None or len(found) != len(want):
        return False
    return all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6) for a, b in zip(found, want, strict=True))


def _fmt(values: tuple[float, ...] | None) -> str:
    return "missing" if values is None else "[" + ", ".join(f"{x:.6g}" for x in values) + "]"


def check_checkpoint_constants(G: Any, checkpoint: str) -> None:
    """UserError naming ``checkpoint`` unless its constants equal :data:`NEXT3D_DERIVED_FOR` (to 1e-6)."""
    found = read_checkpoint_constants(G)
    bad = [name for name, want in NEXT3D_DERIVED_FOR.items() if not _same(found[name], want)]
    if bad:
        have = ", ".join(f"{n}={_fmt(found[n])}" for n in bad)
        want = ", ".join(f"{n}={_fmt(NEXT3D_DERIVED_FOR[n])}" for n in bad)
        raise UserError(
            f"renderer.next3d.checkpoint: {checkpoint!r} has {have}; this backend's FLAME->world mapping and "
            f"cameras were derived for {want} (Next3D FFHQ)"
        )


class Next3DRenderer:
    """Renderer protocol implementation for Next3D (see module docstring).

    Args:
        config: :class:`Next3DConfig`.
        model: the FLAME model being posed; must be real FLAME topology (``config.expected_vertices`` vertices).
    """

    name = "next3d"

    def __init__(self, config: Next3DConfig, model) -> None:  # noqa: ANN001 - FlameModel, imported lazily
        if model.num_vertices != config.expected_vertices:
            raise UserError(
                f"the next3d renderer needs the FLAME model ({config.expected_vertices} vertices, e.g. FLAME 2020 "
                f"generic_model.pkl given as model.path); got {model.name!r} with {model.num_vertices} vertices"
            )
        if config.conditioning not in ("frontal", "render"):
            raise UserError(f"renderer.next3d.conditioning must be 'frontal' or 'render', got {config.conditioning!r}")
        self._alignment = None
        if config.alignment is not None:
            a = torch.as_tensor(np.asarray(config.alignment, dtype=np.float64), dtype=torch.float32)
            if a.shape != (3, 4):
                raise UserError(f"renderer.next3d.alignment must be 3x4 [A | c], got shape {tuple(a.shape)}")
            self._alignment = a
        self.config = config
        self.device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.G = load_next3d_generator(config, self.device)
        self.latent_dim = int(self.G.z_dim)
        kwargs = self.G.rendering_kwargs
        self._frontal_c2w = frontal_next3d_camera(
            float(kwargs["avg_camera_radius"]), tuple(float(x) for x in kwargs["avg_camera_pivot"]), torch.float32
        )
        self._landmarker = self._build_landmarker() if config.landmark_filter_px is not None else None
        self._warned: set[str] = set()
        self.stats = {"rendered": 0, "filter_failed": 0}

    def label_transform(self, points_flame: Tensor) -> Tensor:
        """Move (..., 3) FLAME-frame points to where the configured alignment says the image shows them.

        Applied to the labels' mesh only (the generator gets the raw FLAME mesh): ``world_to_flame(A @
        flame_to_world(p) + c)``; identity without an alignment.
        """
        if self._alignment is None:
            return points_flame
        a = self._alignment.to(points_flame)
        world = flame_to_world(points_flame)
        return world_to_flame(world @ a[:, :3].T + a[:, 3])

    def _build_landmarker(self):  # noqa: ANN202
        try:
            fa = importlib.import_module("face_alignment")
        except ImportError:
            raise UserError("renderer.next3d.landmark_filter_px needs the face_alignment package") from None
        ckpt_dir = Path(torch.hub.get_dir()) / "checkpoints"
        if not ckpt_dir.is_dir() or not any(ckpt_dir.glob("*2DFAN*")):
            raise UserError(
                f"renderer.next3d.landmark_filter_px needs face_alignment's weights on disk in {ckpt_dir} "
                "(nothing is downloaded at run time); place them there or disable the filter"
            )
        return fa.FaceAlignment(fa.LandmarksType.TWO_D, device=str(self.device), flip_input=False)

    def _cameras(self, scene: Scene) -> tuple[Tensor, Tensor]:
        """(1, 25) rendering label (the scene's camera in Next3D world) and (1, 25) mapping label (trained K)."""
        c2w = cam2world_to_next3d(scene.cam2world[None].float())
        render_c = to_eg3d_label(scene.K[None].float(), c2w, scene.height, scene.width)
        pose = render_c[:, :16] if self.config.conditioning == "render" else self._frontal_c2w.reshape(1, 16)
        cond_c = torch.cat([pose, trained_intrinsics().reshape(1, 9)], dim=1)
        return render_c, cond_c

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    def _check_scene(self, scene: Scene, render_c: Tensor) -> None:
        """Log once per kind when a scene leaves what Next3D was trained on (camera distance, focal, head pose)."""
        radius = float(render_c[0, [3, 7, 11]].norm())
        if abs(radius / NEXT3D_CAMERA_RADIUS - 1.0) > 0.01:
            self._warn_once(
                "radius",
                "next3d: camera %.3f world units from the world origin; Next3D's cameras are %.1f (see "
                "configs/generate/next3d.yaml: camera.orbit_center and distance_m)",
                radius,
                NEXT3D_CAMERA_RADIUS,
            )
        focal = float(render_c[0, 16])
        if abs(focal / NEXT3D_TRAINED_FOCAL - 1.0) > NEXT3D_FOCAL_TOLERANCE + 1e-6:
            self._warn_once(
                "focal",
                "next3d: normalised focal %.3f is more than %d %% from the trained %.4f (camera.fov_deg)",
                focal,
                round(NEXT3D_FOCAL_TOLERANCE * 100),
                NEXT3D_TRAINED_FOCAL,
            )
        pose = scene.params.get("pose") if isinstance(scene.params, dict) else None
        if pose is not None and float(torch.as_tensor(pose)[:6].abs().max()) > 1e-6:
            self._warn_once(
                "pose",
                "next3d: global/neck rotation turns the mesh-textured face against static tri-planes; Next3D was "
                "trained with zero (set pose.global_*_deg and pose.neck_*_deg to [0, 0])",
            )

    def render(self, scene: Scene, generator: torch.Generator) -> RenderOutput:
        """Run mapping + synthesis for ``scene``; the latent and the ray-sampling noise come from ``generator``.

        ``scene.vertices_world`` / ``landmarks_world`` must be the posed FLAME output (FLAME metres), not the
        label-aligned mesh.
        """
        render_c, cond_c = self._cameras(scene)
        self._check_scene(scene, render_c)
        v = torch.cat([scene.vertices_world, scene.landmarks_world], dim=0)[None].float()
        tries = self.config.landmark_filter_tries if self._landmarker is not None else 1
        best: tuple[float, Tensor, Tensor, Tensor] | None = None
        for _ in range(max(1, tries)):
            z = torch.randn(1, self.latent_dim, generator=generator)
            noise_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            image, depth = self._synthesize(z, render_c, cond_c, v, noise_seed)
            err = self._landmark_error(image, scene) if self._landmarker is not None else 0.0
            if best is None or err < best[0]:
                best = (err, z, image, depth)
            if err <= (self.config.landmark_filter_px or math.inf):
                break
        assert best is not None
        err, z, image, depth = best
        self.stats["rendered"] += 1
        if self._landmarker is not None and err > (self.config.landmark_filter_px or math.inf):
            self.stats["filter_failed"] += 1
            log.warning("next3d: no latent passed the landmark filter (best %.1f px); keeping the best", err)
        size = (scene.height, scene.width)
        depth = F.interpolate(depth, size=size, mode="bilinear", align_corners=False)[0, 0].cpu()
        return RenderOutput(image=finish_image(image, *size), latent=z[0].float().cpu(), depth=depth)

    @torch.no_grad()
    def _synthesize(self, z: Tensor, render_c: Tensor, cond_c: Tensor, v: Tensor, seed: int) -> tuple[Tensor, Tensor]:
        """(1, 3, 512, 512) float image as G returns it (about [-1, 1]) and (1, 1, R, R) camera z in metres."""
        G, dev = self.G, self.device
        devices = [dev] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            ws = G.mapping(
                z.to(dev),
                cond_c.to(dev),
                truncation_psi=self.config.truncation_psi,
                truncation_cutoff=self.config.truncation_cutoff,
            )
            out = G.synthesis(ws, render_c.to(dev), v.to(dev), noise_mode="const")
        depth_range = out["image_depth"].float()
        z_world = ray_distance_to_z(depth_range, render_c[:, 16:].reshape(-1, 3, 3).to(depth_range))
        return out["image"].float(), z_world / FLAME_TO_WORLD_SCALE

    def _landmark_error(self, image: Tensor, scene: Scene) -> float:
        img512 = finish_image(image, *image.shape[-2:]).numpy()
        found = self._landmarker.get_landmarks_from_image(img512)
        if not found:
            return math.inf
        pts = torch.as_tensor(np.asarray(found[0])[:68, :2], dtype=torch.float32)
        ours = scene.annotations.landmarks_2d[0].float().cpu()  # labels: after the alignment transform
        scale = img512.shape[1] / scene.width
        ours = (ours + 0.5) * scale - 0.5  # pixel-centre convention at both resolutions
        return float((pts - ours.cpu()).norm(dim=-1).mean())


def finish_image(image: Tensor, height: int, width: int) -> Tensor:
    """(1, 3, h, w) float generator output (about [-1, 1]) -> (height, width, 3) uint8.

    As Next3D's scripts: ``x * 127.5 + 128``, clamped to [0, 255], cast to uint8 (truncation); a different output
    size is resized (bilinear, antialiased) before the cast.
    """
    rgb = (image.float() * 127.5 + 128.0).clamp(0.0, 255.0)
    if rgb.shape[-2:] != (height, width):
        rgb = F.interpolate(rgb, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
        rgb = rgb.clamp(0.0, 255.0)
    return rgb[0].permute(1, 2, 0).to(torch.uint8).cpu()
