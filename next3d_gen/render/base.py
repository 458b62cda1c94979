"""The image-renderer protocol shared by the procedural renderer and the Next3D adapter.

The generation pipeline rasterizes and annotates the posed head first (labels), then asks a renderer for the RGB
image of the same scene. A renderer may report pixels it covered with something that is not the head (hair,
accessories): the pipeline then relabels them (see :class:`RenderOutput`), so labels always agree with the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor


@dataclass
class Scene:
    """One view of one posed head.

    Attributes:
        vertices_world: (V, 3) float32 posed vertices, head-model (FLAME) frame, metres.
        landmarks_world: (68, 3) float32 iBUG landmarks, same frame.
        faces: (F, 3) int64 triangles.
        K: (3, 3) float32 pixel intrinsics. cam2world: (4, 4) float32 OpenCV camera-to-world.
        height, width: image size in pixels.
        fragments: the label rasterization of this view (``next3d_gen.raster.Fragments`` with batch 1).
        annotations: the labels of this view (``next3d_gen.annotate.Annotations`` with batch 1).
        model: the ``FlameModel`` that was posed (UVs, face labels).
        params: the sampled parameters of this sample (shape, expression, pose, ...), for renderers that need them.
    """

    vertices_world: Tensor
    landmarks_world: Tensor
    faces: Tensor
    K: Tensor
    cam2world: Tensor
    height: int
    width: int
    fragments: Any
    annotations: Any
    model: Any
    params: dict[str, Any]


@dataclass
class RenderOutput:
    """What a renderer returns for one :class:`Scene`.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        latent: (Z,) float32 generator latent (empty for the procedural renderer).
        occluder_mask: (H, W) bool pixels where something other than the head (hair, accessory) is in front;
            the pipeline sets seg = 0 (background), depth = 0, normal = 0, uv = -1 there and marks landmarks under
            it not visible. None = nothing in front of the head.
        depth: optional (H, W) float32 camera-z depth in metres from the renderer itself (Next3D's volume depth,
            converted from ray distance); None = use the rasterized depth.
    """

    image: Tensor
    latent: Tensor
    occluder_mask: Tensor | None = None
    depth: Tensor | None = None


@runtime_checkable
class Renderer(Protocol):
    """An image renderer. Implementations must be deterministic given ``generator``."""

    name: str
    latent_dim: int

    def render(self, scene: Scene, generator: torch.Generator) -> RenderOutput:
        """Render ``scene``; every random choice is drawn from ``generator``."""
        ...
