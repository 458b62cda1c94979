"""The multi-task network: one trunk, task heads reading its features."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from next3d_gen.labels import SYNTH
from synthforge.models.heads import DenseHead, HourglassLandmarkHead


@dataclass
class TaskOutputs:
    """Outputs of :class:`MultiTaskNet` for a batch of B crops of side H x W.

    Attributes:
        seg: (B, C, H, W) float segmentation logits.
        depth: (B, 1, H, W) float relative depth in metres (camera z minus the foreground median; meaningful on the
            foreground only).
        heatmaps: list (one per hourglass stack) of (B, K, H/4, W/4) float heatmap logits.
        landmark_stacks: list (one per stack) of (B, K, 2) soft-argmax (x, y) in crop pixels.
        landmarks: (B, K, 2) float (x, y) of the last stack, crop pixels, pixel-centre convention.
        features: (B, F, H, W) float trunk features.
        normal: (B, 3, H, W) unit camera-frame normals, or None when the head is off.
        uv: (B, 2, H, W) UV coordinates, or None when the head is off.
    """

    seg: torch.Tensor
    depth: torch.Tensor
    heatmaps: list[torch.Tensor]
    landmark_stacks: list[torch.Tensor]
    landmarks: torch.Tensor
    features: torch.Tensor
    normal: torch.Tensor | None = None
    uv: torch.Tensor | None = None


class MultiTaskNet(nn.Module):
    """Trunk + segmentation, depth and landmark heads (+ optional normal and UV heads).

    Args:
        trunk: module mapping (B, 3, H, W) RGB in [0, 1] to (B, F, H, W) features; must expose ``out_channels``.
        seg_head: features -> (B, C, H, W) logits.
        depth_head: features -> (B, 1, H, W) relative depth.
        landmark_head: features -> dict with ``heatmaps``, ``coords``, ``landmarks`` (see HourglassLandmarkHead).
        normal_head: optional features -> (B, 3, H, W).
        uv_head: optional features -> (B, 2, H, W).
        channels_last: run the convolutions in the channels-last memory format (parameters and activations;
            ~1.3x faster training on CPU through oneDNN, and the format tensor cores prefer under mixed precision).
            The outputs are returned in the standard contiguous format either way.

    Raises:
        ValueError: when a head's ``in_channels`` differs from the trunk's ``out_channels``.
    """

    def __init__(
        self,
        trunk: nn.Module,
        seg_head: nn.Module,
        depth_head: nn.Module,
        landmark_head: nn.Module,
        normal_head: nn.Module | None = None,
        uv_head: nn.Module | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.channels_last = channels_last
        self.trunk = trunk
        self.seg_head = seg_head
        self.depth_head = depth_head
        self.landmark_head = landmark_head
        self.normal_head = normal_head
        self.uv_head = uv_head
        f = getattr(trunk, "out_channels", None)
        for name in ("seg_head", "depth_head", "landmark_head", "normal_head", "uv_head"):
            head = getattr(self, name)
            cin = getattr(head, "in_channels", None)
            if head is not None and f is not None and cin is not None and cin != f:
                raise ValueError(f"{name}.in_channels = {cin} but the trunk gives {f} feature channels")
        if channels_last:
            self.to(memory_format=torch.channels_last)

    @property
    def num_classes(self) -> int | None:
        """C of the segmentation head (when it exposes ``out_channels``)."""
        return getattr(self.seg_head, "out_channels", None)

    @property
    def size_divisor(self) -> int:
        """Input sides must be multiples of this."""
        heads = [getattr(h, "size_divisor", 1) for h in self.head_modules()]
        return max([int(getattr(self.trunk, "size_divisor", 1)), *heads])

    def head_modules(self) -> list[nn.Module]:
        """The heads present (for a separate learning rate)."""
        return [h for h in (self.seg_head, self.depth_head, self.landmark_head, self.normal_head, self.uv_head) if h]

    def forward(self, image: torch.Tensor) -> TaskOutputs:
        """(B, 3, H, W) RGB in [0, 1] -> :class:`TaskOutputs`."""
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        features = self.trunk(image)
        lm = self.landmark_head(features)
        return TaskOutputs(  # .contiguous(): standard layout out, whatever the layout inside
            seg=self.seg_head(features).contiguous(),
            depth=self.depth_head(features).contiguous(),
            heatmaps=[hm.contiguous() for hm in lm["heatmaps"]],
            landmark_stacks=lm["coords"],
            landmarks=lm["landmarks"],
            features=features.contiguous(),
            normal=self.normal_head(features).contiguous() if self.normal_head is not None else None,
            uv=self.uv_head(features).contiguous() if self.uv_head is not None else None,
        )


def build_default_net(
    num_classes: int = SYNTH.num_classes,
    features: int = 64,
    encoder_name: str = "resnet18",
    encoder_depth: int = 4,
    decoder_channels: tuple[int, ...] = (128, 64, 32, 16),
    head_width: int = 32,
    head_levels: int = 1,
    hourglass_width: int = 64,
    num_stacks: int = 2,
    hourglass_depth: int = 3,
) -> MultiTaskNet:
    """Convenience constructor (tests, benchmarks, notebooks); configs spell the same modules out."""
    from synthforge.models.trunk import UNetTrunk

    trunk = UNetTrunk(encoder_name, encoder_depth, decoder_channels, features)
    return MultiTaskNet(
        trunk,
        DenseHead(features, num_classes, head_width, head_levels),
        DenseHead(features, 1, head_width, head_levels, output_scale=0.1),
        HourglassLandmarkHead(features, 68, hourglass_width, num_stacks, hourglass_depth),
    )
