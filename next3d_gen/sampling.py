"""Parameter and camera distributions for labeled-face generation.

Every range lives in :class:`GenerateConfig` (a nested dataclass, loadable from YAML); no number below is a
sampling range. Each sample draws from its own ``torch.Generator`` whose seed is derived from
``(global seed, sample index)`` by :func:`sample_seed`, so sample ``i`` is the same bytes whichever shard, process
or batch produced it. The generator is handed on to the image renderer afterwards (see :mod:`next3d_gen.pipeline`).

Defaults follow the SynthForge paper and fill in what its published code left out:

* identity (100) and expression (50) coefficients i.i.d. uniform in [-2, 2] (``normal`` also offered; the counts are
  clipped to the model's available columns by the pipeline);
* jaw opening, eye gaze and a small neck rotation (the published code kept every pose at zero);
* camera on a sphere around a look-at pivot (or around a separate ``orbit_center``, as Next3D's cameras orbit the
  world origin while looking at a pivot), yaw +-45 degrees and pitch +-30 degrees (the published +-0.8 rad yaw and
  its arccos-mapped +-0.8 rad pitch), true horizontal field of view uniform in 12-27 degrees;
* camera distance from a framing rule (the view spans ``frame_width_m`` metres at the pivot, so the head fills the
  same part of the frame at every field of view and only the perspective changes), or a fixed distance
  (``distance_mode: fixed``; the published system used 1.08 m).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from next3d_gen.camera import intrinsics_from_fov, look_at, orbit_camera
from next3d_gen.errors import UserError

Range = tuple[float, float]


@dataclass
class CoefficientConfig:
    """Distribution of one block of FLAME coefficients (identity or expression).

    Attributes:
        count: number of leading coefficients drawn (the rest are zero); clipped to the model's columns.
        distribution: ``"uniform"`` (in ``range``) or ``"normal"`` (mean 0, ``std``, clipped to ``range``).
        range: uniform bounds, or clipping bounds of the normal distribution, in standard deviations.
        std: standard deviation of the normal distribution.
    """

    count: int = 100
    distribution: str = "uniform"
    range: Range = (-2.0, 2.0)
    std: float = 1.0


@dataclass
class PoseConfig:
    """Joint rotations in degrees, each uniform in its range (``(0, 0)`` disables a rotation).

    Global head rotation defaults to zero: the camera provides the viewpoint, as in the published system. Eye gaze is
    conjugate (both eyes get the same rotation). Positive jaw opening opens the mouth (rotation about FLAME's +x).

    Attributes:
        closed_mouth_prob: probability of a calm face with closed lips: the jaw rotation (opening and sideways
            shift, which would shear the lips apart) is set to 0 and the expression coefficients are multiplied by
            ``closed_mouth_expression_scale``. Most portraits show closed lips (41 % of the AFW dev set's faces),
            while i.i.d. expressions in [-2, 2] part them in about 99 % of samples (measured on the built-in head,
            whose lips close at a scale of 0.35 or less: inner mouth 0-2 pixels at 128 px). The choice comes
            from its own generator seeded by the sample's seed, so the other draws of a sample do not depend on it.
            0 (the published behaviour) draws nothing.
    """

    global_yaw_deg: Range = (0.0, 0.0)
    global_pitch_deg: Range = (0.0, 0.0)
    global_roll_deg: Range = (0.0, 0.0)
    neck_yaw_deg: Range = (-10.0, 10.0)
    neck_pitch_deg: Range = (-8.0, 8.0)
    neck_roll_deg: Range = (-5.0, 5.0)
    jaw_open_deg: Range = (0.0, 10.0)
    jaw_side_deg: Range = (-2.0, 2.0)
    gaze_yaw_deg: Range = (-20.0, 20.0)
    gaze_pitch_deg: Range = (-15.0, 15.0)
    closed_mouth_prob: float = 0.0
    closed_mouth_expression_scale: float = 0.35


@dataclass
class CameraConfig:
    """Look-at camera on a sphere around ``orbit_center`` (default: the ``pivot``), looking at ``pivot``.

    Attributes:
        yaw_deg: azimuth; positive moves the camera towards the subject's left.
        pitch_deg: elevation; positive moves the camera up (looking down on the head).
        fov_deg: true full horizontal field of view.
        distance_mode: ``"framing"`` (distance = ``frame_width / (2 tan(fov / 2))``) or ``"fixed"`` (``distance_m``).
        frame_width_m: framing: width of the view at the pivot, metres (a head is about 0.15 m wide).
        distance_m: fixed: camera distance from the orbit centre, metres.
        pivot: look-at point, head-model frame, metres.
        pivot_jitter_m: each pivot coordinate is shifted uniformly in [-j, j] (moves the head off-centre).
        orbit_center: centre of the camera sphere, head-model frame, metres (yaw and pitch are measured around it);
            None = the (jittered) pivot. Next3D's cameras orbit its world origin at 2.7 units and look at its
            pivot, 0.2 units in front of the origin.
    """

    yaw_deg: Range = (-45.0, 45.0)
    pitch_deg: Range = (-30.0, 30.0)
    fov_deg: Range = (12.0, 27.0)
    distance_mode: str = "framing"
    frame_width_m: Range = (0.30, 0.38)
    distance_m: Range = (1.08, 1.08)
    pivot: tuple[float, float, float] = (0.0, 0.0, 0.03)
    pivot_jitter_m: float = 0.01
    orbit_center: tuple[float, float, float] | None = None


LANDMARK_CONTOUR_MODES = ("auto", "outline", "embedding")
"""Values of ``model.landmark_contour`` (see :class:`ModelConfig`)."""


@dataclass
class ModelConfig:
    """Head model: ``path`` None = the built-in head; else a FLAME file (``.pkl`` or ``.npz``) and its embedding.

    Attributes:
        landmark_contour: how the 17 jaw landmarks (iBUG 0-16) are placed in each view. ``outline``: 300W's
            definition, on the visible outline of the face: per point a contour line of candidate surface points
            (the built-in head's own lines; for a FLAME file the 79 rows of that point's dynamic embedding), and in
            each view the point of the line where the camera ray grazes the surface ("landmark marching", see
            :func:`next3d_gen.annotate.outline_contour`). ``embedding``: the model's yaw-indexed dynamic embedding,
            as FLAME's reference layers do. ``auto`` (default): ``outline`` for the built-in head, ``embedding``
            for a FLAME file.
    """

    path: str | None = None
    landmark_embedding: str | None = None
    landmark_contour: str = "auto"

    def contour_mode(self) -> str:
        """``outline`` or ``embedding``: :attr:`landmark_contour` with ``auto`` resolved for this model."""
        if self.landmark_contour == "auto":
            return "outline" if self.path is None else "embedding"
        return self.landmark_contour


@dataclass
class RendererConfig:
    """Image renderer: registry name, and one section of options per renderer (checked by that renderer's config
    class; only the section of the chosen renderer is used)."""

    name: str = "procedural"
    procedural: dict[str, Any] = field(default_factory=dict)
    next3d: dict[str, Any] = field(default_factory=dict)

    def options(self) -> dict[str, Any]:
        """The options section of the chosen renderer (empty for a renderer without a section)."""
        return dict(getattr(self, self.name, {}) or {}) if self.name in ("procedural", "next3d") else {}


@dataclass
class StorageConfig:
    """HDF5 filters (see :class:`next3d_gen.h5.ShardWriter`): ``gzip`` | ``lzf`` | ``none``.

    Attributes:
        compression: label maps (seg, depth, normal, uv).
        image_compression: the RGB image (default none: it shrinks little and dominates read time when compressed).
        compression_level: gzip level.
    """

    compression: str = "gzip"
    image_compression: str = "none"
    compression_level: int = 1

    def filter(self, name: str) -> str | None:
        """The h5py compression argument of ``compression`` or ``image_compression``."""
        value = getattr(self, name)
        return None if value == "none" else value


@dataclass
class GenerateConfig:
    """Everything that determines a generated dataset (with the sample count and sharding).

    Attributes:
        seed: global seed; sample ``i`` uses :func:`sample_seed` ``(seed, i)``.
        image_size: square image side in pixels.
        model, renderer, shape, expression, pose, camera, storage: see their classes.
    """

    seed: int = 0
    image_size: int = 256
    model: ModelConfig = field(default_factory=ModelConfig)
    renderer: RendererConfig = field(default_factory=RendererConfig)
    shape: CoefficientConfig = field(default_factory=lambda: CoefficientConfig(count=100))
    expression: CoefficientConfig = field(default_factory=lambda: CoefficientConfig(count=50))
    pose: PoseConfig = field(default_factory=PoseConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return _jsonable(asdict(self))

    def validate(self, source: str = "<config>") -> GenerateConfig:
        """Check values (not only keys); raise UserError naming ``source`` and the key."""
        if self.image_size < 8:
            raise UserError(f"{source}: image_size must be >= 8, got {self.image_size}")
        if not 0 <= self.seed < 2**63:
            raise UserError(f"{source}: seed must be in [0, 2**63), got {self.seed}")
        for name in ("shape", "expression"):
            c: CoefficientConfig = getattr(self, name)
            if c.count < 0:
                raise UserError(f"{source}: {name}.count must be >= 0, got {c.count}")
            if c.distribution not in ("uniform", "normal"):
                raise UserError(f"{source}: {name}.distribution must be 'uniform' or 'normal', got {c.distribution!r}")
            if c.std <= 0:
                raise UserError(f"{source}: {name}.std must be > 0")
        for prefix in ("shape", "expression", "pose", "camera"):
            section = getattr(self, prefix)
            for name, hint in _hint_types(type(section)).items():
                value = getattr(section, name)
                if hint == Range and value[0] > value[1]:
                    raise UserError(f"{source}: {prefix}.{name} must be [low, high] with low <= high, got {value}")
        if self.model.landmark_contour not in LANDMARK_CONTOUR_MODES:
            choices = ", ".join(LANDMARK_CONTOUR_MODES)
            raise UserError(
                f"{source}: model.landmark_contour must be one of {choices}, got {self.model.landmark_contour!r}"
            )
        for name in ("compression", "image_compression"):
            if getattr(self.storage, name) not in ("gzip", "lzf", "none"):
                raise UserError(f"{source}: storage.{name} must be gzip, lzf or none")
        if not 0 <= self.storage.compression_level <= 9:
            raise UserError(f"{source}: storage.compression_level must be in [0, 9]")
        from next3d_gen.render import RENDERERS

        if self.renderer.name not in RENDERERS:
            choices = ", ".join(RENDERERS)
            raise UserError(f"{source}: unknown renderer.name {self.renderer.name!r} (choose from {choices})")
        if not 0 <= self.pose.closed_mouth_prob <= 1:
            raise UserError(f"{source}: pose.closed_mouth_prob must be in [0, 1], got {self.pose.closed_mouth_prob}")
        if not 0 <= self.pose.closed_mouth_expression_scale <= 1:
            scale = self.pose.closed_mouth_expression_scale
            raise UserError(f"{source}: pose.closed_mouth_expression_scale must be in [0, 1], got {scale}")
        cam = self.camera
        if cam.distance_mode not in ("framing", "fixed"):
            raise UserError(f"{source}: camera.distance_mode must be 'framing' or 'fixed', got {cam.distance_mode!r}")
        if not (0 < cam.fov_deg[0] and cam.fov_deg[1] < 180):
            raise UserError(f"{source}: camera.fov_deg must lie in (0, 180)")
        if not (-90 < cam.pitch_deg[0] and cam.pitch_deg[1] < 90):
            raise UserError(f"{source}: camera.pitch_deg must lie in (-90, 90)")
        if min(cam.frame_width_m) <= 0 or min(cam.distance_m) <= 0:
            raise UserError(f"{source}: camera.frame_width_m and camera.distance_m must be > 0")
        return self


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def _hint_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _convert(value: Any, hint: Any, where: str, source: str) -> Any:
    """Convert a YAML value to the annotated type, raising UserError naming ``where``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise UserError(f"{source}: '{where}' must be a mapping, got {type(value).__name__}")
        return _from_dict(hint, value, source, where + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], where, source)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise UserError(f"{source}: '{where}' must be a list of {len(args)} numbers, got {value!r}")
        return tuple(_convert(v, a, where, source) for v, a in zip(value, args, strict=True))
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise UserError(f"{source}: '{where}' must be a mapping")
        return dict(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{source}: '{where}' must be a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{source}: '{where}' must be an integer, got {value!r}")
        return int(value)
    if hint is str:
        if not isinstance(value, str):
            raise UserError(f"{source}: '{where}' must be a string, got {value!r}")
        return value
    return value


def _from_dict(cls: type, data: dict[str, Any], source: str, prefix: str = "") -> Any:
    hints = _hint_types(cls)
    names = {f.name for f in fields(cls)}
    for key in data:
        if key not in names:
            raise UserError(f"{source}: unknown config key '{prefix}{key}' (allowed: {', '.join(sorted(names))})")
    kwargs = {k: _convert(v, hints[k], prefix + k, source) for k, v in data.items()}
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any] | None, source: str = "<config>") -> GenerateConfig:
    """Build and validate a :class:`GenerateConfig` from a (partial) nested dict; unknown keys raise UserError."""
    return _from_dict(GenerateConfig, dict(data or {}), source).validate(source)


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> GenerateConfig:
    """Load a YAML generation config, apply dotted ``overrides`` (``{"camera.fov_deg": [12, 27]}``), validate.

    Raises:
        UserError: missing/unreadable file, bad YAML, unknown key (naming the key and the file), bad value.
    """
    import yaml

    source = str(path) if path is not None else "<defaults>"
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as err:
            raise UserError(f"{p}: invalid YAML ({str(err).splitlines()[0]})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise UserError(f"{p}: top level must be a mapping")
        data = loaded or {}
    for dotted, value in (overrides or {}).items():
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UserError(f"override '{dotted}': '{part}' is not a section")
            node = child
        node[parts[-1]] = value
    return config_from_dict(data, source)


# ----------------------------------------------------------------------------------------------------------------
# Sampling


def sample_seed(seed: int, index: int) -> int:
    """Per-sample seed in [0, 2**63) from the global seed and the sample index (numpy SeedSequence hashing)."""
    if seed < 0 or index < 0:
        raise ValueError("seed and index must be >= 0")
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 32 | int(state[1])) & (2**63 - 1))


@dataclass
class SampleParams:
    """The sampled parameters of one sample (float32 tensors on the CPU).

    Attributes:
        shape: (S,) identity coefficients. expression: (E,) expression coefficients.
        pose: (15,) axis-angle radians [global, neck, jaw, left eye, right eye], FLAME joint order.
        yaw_deg, pitch_deg, fov_deg, radius: camera azimuth / elevation (degrees), full horizontal FOV (degrees),
            camera distance from the orbit centre (metres; the pivot unless ``camera.orbit_center`` is set).
        pivot: (3,) look-at point, head-model frame, metres.
        K: (3, 3) pixel intrinsics. cam2world: (4, 4) OpenCV camera-to-world (head-model frame, metres).
        sample_seed: the seed of this sample's generator.
        generator: the sample's generator, positioned after the parameter draws (the renderer continues from it).
    """

    shape: Tensor
    expression: Tensor
    pose: Tensor
    yaw_deg: float
    pitch_deg: float
    fov_deg: float
    radius: float
    pivot: Tensor
    K: Tensor
    cam2world: Tensor
    sample_seed: int
    generator: torch.Generator = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        """Parameters as a plain dict (for ``Scene.params``)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "generator"}


def _uniform(g: torch.Generator, r: Range, n: int | None = None) -> Tensor:
    """Uniform draw(s) in [r0, r1] as float64; always consumes the generator (even for an empty range)."""
    u = torch.rand(1 if n is None else n, generator=g, dtype=torch.float64)
    x = r[0] + (r[1] - r[0]) * u
    return x[0] if n is None else x


def _coefficients(g: torch.Generator, cfg: CoefficientConfig, count: int) -> Tensor:
    if count == 0:
        return torch.zeros(0, dtype=torch.float32)
    if cfg.distribution == "uniform":
        x = _uniform(g, cfg.range, count)
    else:
        x = (torch.randn(count, generator=g, dtype=torch.float64) * cfg.std).clamp(cfg.range[0], cfg.range[1])
    return x.to(torch.float32)


def euler_to_axis_angle(yaw_deg: float, pitch_deg: float, roll_deg: float) -> Tensor:
    """Axis-angle (3,) float64 of R = R_y(yaw) @ R_x(pitch) @ R_z(roll) in the head frame (y up, z front).

    Positive yaw turns the face towards its left (+x), positive pitch tilts the face down (+x rotation),
    positive roll is a rotation about +z (the face's forward axis).
    """
    from scipy.spatial.transform import Rotation

    r = Rotation.from_euler("YXZ", [yaw_deg, pitch_deg, roll_deg], degrees=True)
    return torch.as_tensor(r.as_rotvec(), dtype=torch.float64)


def sample_params_from_seed(
    config: GenerateConfig,
    seed_of_sample: int,
    num_shape: int | None = None,
    num_expression: int | None = None,
) -> SampleParams:
    """Draw one sample's parameters from a generator seeded with ``seed_of_sample``.

    Args:
        config: the generation config.
        seed_of_sample: per-sample seed (see :func:`sample_seed`).
        num_shape, num_expression: the model's available columns; the configured counts are clipped to them.

    Returns:
        :class:`SampleParams`; its ``generator`` continues the same stream (for the renderer).
    """
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed_of_sample))
    n_s = config.shape.count if num_shape is None else min(config.shape.count, num_shape)
    n_e = config.expression.count if num_expression is None else min(config.expression.count, num_expression)
    # Draw order is part of the format: changing it changes every dataset.
    shape = _coefficients(g, config.shape, n_s)
    expression = _coefficients(g, config.expression, n_e)
    p = config.pose
    draws = {
        name: float(_uniform(g, getattr(p, name)))
        for name in (
            "global_yaw_deg",
            "global_pitch_deg",
            "global_roll_deg",
            "neck_yaw_deg",
            "neck_pitch_deg",
            "neck_roll_deg",
            "jaw_open_deg",
            "jaw_side_deg",
            "gaze_yaw_deg",
            "gaze_pitch_deg",
        )
    }
    if p.closed_mouth_prob > 0 and _closed_mouth(seed_of_sample, p.closed_mouth_prob):
        draws["jaw_open_deg"] = draws["jaw_side_deg"] = 0.0  # lips meet: no opening, no sideways shear
        expression = expression * p.closed_mouth_expression_scale
    # Head-frame pitch: a positive x rotation moves the front (+z) down, i.e. looks down / opens the jaw.
    pose = torch.zeros(15, dtype=torch.float64)
    pose[0:3] = euler_to_axis_angle(draws["global_yaw_deg"], draws["global_pitch_deg"], draws["global_roll_deg"])
    pose[3:6] = euler_to_axis_angle(draws["neck_yaw_deg"], draws["neck_pitch_deg"], draws["neck_roll_deg"])
    pose[6:9] = euler_to_axis_angle(draws["jaw_side_deg"], draws["jaw_open_deg"], 0.0)
    gaze = euler_to_axis_angle(draws["gaze_yaw_deg"], draws["gaze_pitch_deg"], 0.0)
    pose[9:12] = gaze
    pose[12:15] = gaze

    c = config.camera
    yaw = float(_uniform(g, c.yaw_deg))
    pitch = float(_uniform(g, c.pitch_deg))
    fov = float(_uniform(g, c.fov_deg))
    if c.distance_mode == "framing":
        width_m = float(_uniform(g, c.frame_width_m))
        radius = width_m / (2.0 * math.tan(math.radians(fov) / 2.0))
    else:
        radius = float(_uniform(g, c.distance_m))
    jitter = _uniform(g, (-c.pivot_jitter_m, c.pivot_jitter_m), 3)
    pivot = torch.tensor(c.pivot, dtype=torch.float64) + jitter

    size = config.image_size
    K = intrinsics_from_fov(fov, size, size, dtype=torch.float64)
    if c.orbit_center is None:
        cam2world = orbit_camera(yaw, pitch, radius, pivot)
    else:
        eye = orbit_camera(yaw, pitch, radius, torch.tensor(c.orbit_center, dtype=torch.float64))[:3, 3]
        cam2world = look_at(eye, pivot)
    return SampleParams(
        shape=shape,
        expression=expression,
        pose=pose.to(torch.float32),
        yaw_deg=yaw,
        pitch_deg=pitch,
        fov_deg=fov,
        radius=radius,
        pivot=pivot.to(torch.float32),
        K=K.to(torch.float32),
        cam2world=cam2world.to(torch.float32),
        sample_seed=int(seed_of_sample),
        generator=g,
    )


def _closed_mouth(seed_of_sample: int, prob: float) -> bool:
    """Whether a sample gets a calm, closed-mouth face (:attr:`PoseConfig.closed_mouth_prob`), from a generator of
    its own (seeded from the sample's seed) so that the sample's main stream is the same either way."""
    g = torch.Generator(device="cpu")
    g.manual_seed((int(seed_of_sample) * 0x9E3779B1 + 0x6D6F757468) % 2**63)
    return float(torch.rand((), generator=g, dtype=torch.float64)) < prob


def sample_params(
    config: GenerateConfig,
    seed: int,
    index: int,
    num_shape: int | None = None,
    num_expression: int | None = None,
) -> SampleParams:
    """Parameters of sample ``index`` of the dataset with global ``seed`` (see :func:`sample_params_from_seed`)."""
    return sample_params_from_seed(config, sample_seed(seed, index), num_shape, num_expression)
