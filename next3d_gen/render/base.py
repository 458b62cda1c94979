"""The image-renderer protocol shared by the procedural renderer and the Next3D adapter.

The generation pipeline rasterizes and annotates the posed head first (labels), then asks a renderer for the RGB
image of the same scene. A renderer may report pixels it covered with something that is not the head surface (hair,
glasses, hands, objects): the pipeline then relabels them (see :class:`RenderOutput`), so labels always agree with the
pixels.
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


NO_OVERRIDE = 255
"""Value of :attr:`RenderOutput.label_override` where the renderer drew nothing that changes the label."""


@dataclass
class RenderOutput:
    """What a renderer returns for one :class:`Scene`.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        latent: (Z,) float32 generator latent (empty for the procedural renderer).
        occluder_mask: (H, W) bool *head* pixels hidden by something in front of the head surface (a hair fringe, a
            glasses frame, a dark lens, a hand, an object); the pipeline sets depth = 0, normal = 0, uv = -1 there,
            marks landmarks under it not visible and sets seg to the pixel's ``label_override``, or to 0
            (background) where it has none. None = nothing in front of the head.
        label_override: (H, W) uint8 class id (of the pipeline's label space) of the topmost layer the renderer drew
            over a pixel, :data:`NO_OVERRIDE` (255) = none (the rasterized label stands): ``hair`` where hair covers
            the pixel, ``beard`` where facial hair does, ``eyeglasses`` where a frame or lens is in front,
            0 (background) where a hand, an object or clothes are,
            each where its coverage is at least :data:`next3d_gen.labels.LAYER_COVERAGE_THRESHOLD`, later layers over
            earlier ones. Outside ``occluder_mask`` only seg changes: on head pixels (hair lying on the scalp, a
            beard, a clear lens) depth, normal, uv and landmark visibility stay the head's; on background pixels (hair
            volume, a lens beyond the silhouette) depth stays 0, so the depth loss (foreground = depth > 0) leaves
            them out. None = no override anywhere.
        depth: optional (H, W) float32 camera-z depth in metres from the renderer itself (Next3D's volume depth,
            converted from ray distance); None = use the rasterized depth.
    """

    image: Tensor
    latent: Tensor
    occluder_mask: Tensor | None = None
    depth: Tensor | None = None
    label_override: Tensor | None = None


@runtime_checkable
class Renderer(Protocol):
    """An image renderer. Implementations must be deterministic given ``generator``."""

    name: str
    latent_dim: int

    def render(self, scene: Scene, generator: torch.Generator) -> RenderOutput:
        """Render ``scene``; every random choice is drawn from ``generator``."""
        ...
