"""Next3D backend: drive a user's Next3D checkout and checkpoint to render the image (and depth) of a scene.

Nothing here ships Next3D: the user brings a checkout (``checkout``, the repo root with ``legacy.py``, ``dnnlib/``,
``torch_utils/``, ``training_avatar_texture/``) and the network pickle (``checkpoint``, e.g. ``next3d_ffhq_512.pkl``).
Next3D needs real FLAME meshes (5023 vertices + 68 iBUG landmarks), so this backend refuses the built-in head.

Frames (facts from the Next3D code, see docs):

* Next3D takes ``v`` = FLAME vertices and the 68 landmarks in raw FLAME metres, shape (B, 5023 + 68, 3).
* Next3D's render world is FLAME scaled by 2.5 with a fixed shift; the published SynthForge generator also adds
  sqrt(2)/10 to z: ``world = 2.5 * (v + (0, -0.01, -0.01)) + (0, 0, sqrt(2)/10)`` (:data:`FLAME_TO_WORLD_SCALE`,
  :data:`FLAME_TO_WORLD_SHIFT`). Our cameras live in the FLAME frame, so they are mapped with the same similarity
  (rotation unchanged, position scaled and shifted) and encoded as the 25-value EG3D label.
* An optional affine ``alignment`` (3x4, acting in Next3D world; e.g. the published alignment MLP's composed values)
  corrects where the generated face really is; :meth:`Next3DRenderer.label_transform` applies it to the mesh in the
  FLAME frame so the labels are computed on the corrected mesh.
* ``image_depth`` is the expected ray distance in world units; it is converted to camera z in metres
  (z = range / |d_cam| / 2.5) and resized to the output size.
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

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from next3d_gen.camera import to_eg3d_label
from next3d_gen.errors import UserError
from next3d_gen.render.base import RenderOutput, Scene

log = logging.getLogger(__name__)

FLAME_TO_WORLD_SCALE = 2.5
"""Next3D orth_scale / 2: one Next3D world unit is 0.4 m of FLAME."""
FLAME_TO_WORLD_SHIFT = (0.0, -0.025, 2.5 * -0.01 + math.sqrt(2.0) / 10.0)
"""2.5 * orth_shift (0, -0.01, -0.01) plus the published generator's sqrt(2)/10 z offset."""
NEXT3D_NUM_VERTICES = 5023


@dataclass
class Next3DConfig:
    """Settings of the Next3D backend (YAML section ``renderer.next3d``).

    Attributes:
        checkout: path of the user's Next3D repository root.
        checkpoint: path of the network pickle (``G_ema`` is used).
        truncation_psi, truncation_cutoff: mapping-network truncation (published: 0.7, 14).
        conditioning: ``"frontal"`` (a fixed frontal camera conditions the mapping network, as Next3D/EG3D
            recommend for identity consistency) or ``"render"`` (the rendering camera, as the published generator).
        conditioning_radius: world-unit radius of the frontal conditioning camera (Next3D FFHQ: 2.7).
        conditioning_pivot: world-unit look-at point of the frontal conditioning camera (Next3D FFHQ: (0, 0, 0.2)).
        reload_modules: rebuild G from the checkout's source (what the published generator does); needs the
            checkout's ``data/ffhq`` assets; the checkout becomes the working directory while rebuilding.
        neural_rendering_resolution: override of G's raw volume-rendering resolution (None = the checkpoint's).
        alignment: optional 3x4 affine ``[A | c]`` in Next3D world applied to the mesh before labelling.
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
    conditioning_radius: float = 2.7
    conditioning_pivot: tuple[float, float, float] = (0.0, 0.0, 0.2)
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


def frontal_next3d_camera(radius: float, pivot: tuple[float, float, float], dtype: torch.dtype) -> Tensor:
    """(4, 4) OpenCV cam2world at (0, 0, radius) looking at ``pivot`` (world units), no roll."""
    from next3d_gen.camera import look_at

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
    if config.neural_rendering_resolution is not None:
        G.neural_rendering_resolution = int(config.neural_rendering_resolution)
    return G.eval().requires_grad_(False).to(device)


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
        self.config = config
        self.device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.G = load_next3d_generator(config, self.device)
        self.latent_dim = int(self.G.z_dim)
        self._alignment = None
        if config.alignment is not None:
            a = torch.as_tensor(np.asarray(config.alignment, dtype=np.float64), dtype=torch.float32)
            if a.shape != (3, 4):
                raise UserError(f"renderer.next3d.alignment must be 3x4 [A | c], got shape {tuple(a.shape)}")
            self._alignment = a
        self._landmarker = self._build_landmarker() if config.landmark_filter_px is not None else None
        self.stats = {"rendered": 0, "filter_failed": 0}

    def label_transform(self, points_flame: Tensor) -> Tensor:
        """Apply the configured alignment to (..., 3) FLAME-frame points (identity without one)."""
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
        c2w = cam2world_to_next3d(scene.cam2world[None].float())
        render_c = to_eg3d_label(scene.K[None].float(), c2w, scene.height, scene.width)
        if self.config.conditioning == "render":
            return render_c, render_c
        front = frontal_next3d_camera(self.config.conditioning_radius, self.config.conditioning_pivot, torch.float32)
        cond_c = torch.cat([front.reshape(1, 16), render_c[:, 16:]], dim=1)
        return render_c, cond_c

    def render(self, scene: Scene, generator: torch.Generator) -> RenderOutput:
        """Run mapping + synthesis for ``scene``; the latent and the ray-sampling noise come from ``generator``."""
        render_c, cond_c = self._cameras(scene)
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
        img = (out["image"].float() * 127.5 + 128).clamp(0, 255)  # (1, 3, 512, 512), as the published scripts
        depth_range = out["image_depth"].float()
        z_world = ray_distance_to_z(depth_range, render_c[:, 16:].reshape(-1, 3, 3).to(depth_range))
        return img, z_world / FLAME_TO_WORLD_SCALE

    def _landmark_error(self, image: Tensor, scene: Scene) -> float:
        img512 = image[0].permute(1, 2, 0).round().byte().cpu().numpy()
        found = self._landmarker.get_landmarks_from_image(img512)
        if not found:
            return math.inf
        pts = torch.as_tensor(np.asarray(found[0])[:68, :2], dtype=torch.float32)
        ours = scene.annotations.landmarks_2d[0].float().cpu()  # labels: after the alignment transform
        scale = img512.shape[1] / scene.width
        ours = (ours + 0.5) * scale - 0.5  # pixel-centre convention at both resolutions
        return float((pts - ours.cpu()).norm(dim=-1).mean())


def finish_image(image: Tensor, height: int, width: int) -> Tensor:
    """(1, 3, h, w) float in [0, 255] -> (height, width, 3) uint8, resized with antialiasing when needed."""
    if image.shape[-2:] != (height, width):
        image = F.interpolate(image, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return image[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).cpu()
