"""The HDF5 dataset schema (version 1) in one place: dataset names, dtypes, per-sample shapes, file attributes.

Writers and readers import these constants; nothing else spells a dataset name or dtype.

Per-sample shapes use the symbols ``H``, ``W`` (image size), ``S``, ``E`` (FLAME shape / expression columns) and
``Z`` (generator latent size, 0 for the procedural renderer); they are resolved by :func:`sample_shapes`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Field:
    """One per-sample HDF5 dataset: name, numpy dtype, per-sample shape (symbols allowed), and meaning."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]
    doc: str


FIELDS: tuple[Field, ...] = (
    Field("image", "uint8", ("H", "W", 3), "RGB"),
    Field("seg", "uint8", ("H", "W"), "class ids of the file's label space, 255 = ignore"),
    Field("depth", "float16", ("H", "W"), "camera z in metres, 0 = background"),
    Field("normal", "int8", ("H", "W", 3), "camera-space (OpenCV) unit normals x127, 0 on background"),
    Field("uv", "float16", ("H", "W", 2), "template UV coordinates in [0, 1], -1 on background"),
    Field("landmarks_2d", "float32", (68, 2), "iBUG 68 (x, y) pixels, OpenCV pixel-centre convention"),
    Field("landmarks_3d", "float32", (68, 3), "iBUG 68 points in the camera frame (OpenCV), metres"),
    Field("landmarks_visible", "bool", (68,), "not occluded by the head itself"),
    Field("bbox", "float32", (4,), "x0, y0, x1, y1 of the rendered head, pixels"),
    Field("camera_K", "float32", (3, 3), "pixel intrinsics"),
    Field("camera_cam2world", "float32", (4, 4), "OpenCV cam2world, world = head-model frame, metres"),
    Field("flame_shape", "float32", ("S",), "identity coefficients"),
    Field("flame_expression", "float32", ("E",), "expression coefficients"),
    Field("flame_pose", "float32", (15,), "axis-angle global, neck, jaw, left eye, right eye"),
    Field("latent", "float32", ("Z",), "generator latent (empty for the procedural renderer)"),
    Field("sample_seed", "int64", (), "regenerates this one sample alone"),
    Field("complete", "bool", (), "written last for each sample; readers skip incomplete rows"),
)
FIELD_BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}

NORMAL_SCALE = 127.0
"""int8 normals store round(n * 127)."""

# File attributes.
ATTR_SCHEMA_VERSION = "schema_version"
ATTR_LABEL_SPACE = "label_space"
ATTR_GENERATOR_CONFIG = "generator_config"
ATTR_PACKAGE_VERSION = "package_version"
ATTR_IMAGE_SIZE = "image_size"
ATTR_DEPTH_KIND = "depth_kind"
"""``"metric"`` (camera z, metres) or ``"relative"`` (imported 8-bit per-image-normalised depth, unitless)."""
REQUIRED_ATTRS = (ATTR_SCHEMA_VERSION, ATTR_LABEL_SPACE, ATTR_IMAGE_SIZE)


def sample_shapes(height: int, width: int, num_shape: int, num_expression: int, latent_dim: int) -> dict[str, tuple]:
    """Resolve every field's per-sample shape for one file."""
    sym = {"H": height, "W": width, "S": num_shape, "E": num_expression, "Z": latent_dim}
    return {f.name: tuple(sym[d] if isinstance(d, str) else d for d in f.shape) for f in FIELDS}


def dtype_of(name: str) -> np.dtype:
    """Numpy dtype of the field ``name``."""
    return np.dtype(FIELD_BY_NAME[name].dtype)
