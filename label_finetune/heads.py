"""Label-finetuning networks: small per-task nets on the frozen stage-I outputs (optionally + trunk features, "w/ F").

All modules are plain ``nn.Module``s. Shapes use B = batch, H x W = crop resolution, h x w = heatmap resolution,
C_s = stage-I segmentation classes, F = stage-I trunk feature channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as nnf
from torch import nn

from synthforge.models.heads import Hourglass, Residual


def conv_block(cin: int, cout: int) -> nn.Sequential:
    """Two 3x3 conv + BatchNorm + ReLU layers (spatial size kept)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SmallUNet(nn.Module):
    """A compact UNet: len(widths) - 1 max-pool downsamplings, bilinear upsampling with skip connections.

    Args:
        in_channels: input channels.
        out_channels: output channels (logits or values, no activation).
        widths: channels per level, finest first (e.g. (32, 64, 128)); H and W must be divisible by
            2 ** (len(widths) - 1).
    """

    def __init__(self, in_channels: int, out_channels: int, widths: Sequence[int] = (32, 64, 128)) -> None:
        super().__init__()
        widths = list(widths)
        if not widths:
            raise ValueError("SmallUNet needs at least one width")
        self.down = nn.ModuleList()
        c = in_channels
        for w in widths:
            self.down.append(conv_block(c, w))
            c = w
        self.up = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up.append(conv_block(c + w, w))
            c = w
        self.out = nn.Conv2d(c, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in, H, W) -> (B, out, H, W)."""
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = nnf.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            x = nnf.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        return self.out(x)


class SegmentationAdapter(nn.Module):
    """Maps frozen stage-I segmentation logits (+ optionally trunk features) to a benchmark's label space.

    Args:
        stage1_classes: C_s.
        num_classes: classes of the target label space.
        feature_channels: F to concatenate the trunk features ("w/ F"), 0 for logits only.
        widths: SmallUNet widths.
    """

    def __init__(
        self, stage1_classes: int, num_classes: int, feature_channels: int = 0, widths: Sequence[int] = (32, 64, 128)
    ) -> None:
        super().__init__()
        self.feature_channels = feature_channels
        self.net = SmallUNet(stage1_classes + feature_channels, num_classes, widths)

    def forward(self, seg_logits: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """seg_logits (B, C_s, H, W), features (B, F, H, W) or None -> (B, num_classes, H, W) float logits."""
        x = seg_logits
        if self.feature_channels:
            if features is None:
                raise ValueError("SegmentationAdapter was built with features but got none")
            x = torch.cat([x, features], 1)
        return self.net(x)


OLD_HOURGLASS_NAMES = {"skip": "upper", "down": "low1", "inner": "low2", "up": "low3"}
"""Block names (``old: new``) of the adapter's hourglasses in checkpoints from before they were :class:`Hourglass`."""


def _rename_old_hourglass_keys(module: nn.Module, state_dict: dict[str, torch.Tensor], prefix: str, *_: object) -> None:
    """Load-state-dict pre-hook: ``hourglasses.0.inner.skip.body.2.weight`` -> ``hourglasses.0.low2.upper.body.2...``
    (a checkpoint of the adapter's own hourglass, whose layers and order were those of :class:`Hourglass`)."""
    start = prefix + "hourglasses."
    for key in [k for k in state_dict if k.startswith(start)]:
        stack, _, rest = key[len(start) :].partition(".")
        blocks, sep, tail = rest.partition(".body.")
        names = blocks.split(".")
        if sep and all(name in OLD_HOURGLASS_NAMES for name in names):
            new = ".".join(OLD_HOURGLASS_NAMES[name] for name in names)
            state_dict[f"{start}{stack}.{new}{sep}{tail}"] = state_dict.pop(key)


class LandmarkAdapter(nn.Module):
    """Landmark hourglass on the frozen stage-I heatmaps (+ optionally pooled trunk features).

    The stem maps [heatmaps, F] to ``width`` channels; ``stacks`` hourglasses follow, each with its own heatmap
    output (intermediate supervision); the last one is decoded by :func:`~synthforge.models.heads.soft_argmax`.
    The residual blocks and hourglasses are stage I's (:class:`~synthforge.models.heads.Residual`,
    :class:`~synthforge.models.heads.Hourglass`) with biases on every conv; checkpoints written before they were
    shared load unchanged (their block names are mapped on loading).

    Args:
        stage1_points: heatmap channels of stage I (68).
        num_points: K outputs (68 for 300W, 106 for LaPa).
        feature_channels: F to add the trunk features ("w/ F"), 0 for heatmaps only.
        width: hourglass channels.
        stacks: number of hourglasses.
        depth: levels per hourglass (h must be divisible by 2 ** depth).
    """

    def __init__(
        self,
        stage1_points: int,
        num_points: int,
        feature_channels: int = 0,
        width: int = 64,
        stacks: int = 1,
        depth: int = 3,
    ) -> None:
        super().__init__()
        self.feature_channels = feature_channels
        self.stem = nn.Sequential(
            nn.Conv2d(stage1_points + feature_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            Residual(width, width, bias=True),
        )
        self.hourglasses = nn.ModuleList(Hourglass(depth, width, bias=True) for _ in range(stacks))
        self.heads = nn.ModuleList(nn.Conv2d(width, num_points, 1) for _ in range(stacks))
        self.remaps = nn.ModuleList(nn.Conv2d(num_points, width, 1) for _ in range(stacks - 1))
        self.register_load_state_dict_pre_hook(_rename_old_hourglass_keys)

    def forward(self, heatmaps: torch.Tensor, features: torch.Tensor | None = None) -> list[torch.Tensor]:
        """heatmaps (B, 68, h, w), features (B, F, H, W) or None -> list (one per stack) of (B, K, h, w) logits."""
        x = heatmaps
        if self.feature_channels:
            if features is None:
                raise ValueError("LandmarkAdapter was built with features but got none")
            x = torch.cat([x, nnf.adaptive_avg_pool2d(features, heatmaps.shape[-2:])], 1)
        x = self.stem(x)
        outs = []
        for i, (hg, head) in enumerate(zip(self.hourglasses, self.heads, strict=True)):
            y = hg(x)
            out = head(y)
            outs.append(out)
            if i < len(self.remaps):
                x = x + y + self.remaps[i](out)
        return outs


class DepthAdapter(nn.Module):
    """Residual depth correction: frozen stage-I depth + SmallUNet([depth, F?, seg logits?]).

    Args:
        feature_channels: F ("w/ F") or 0.
        seg_channels: C_s to also feed the stage-I segmentation logits, or 0.
        widths: SmallUNet widths.
    """

    def __init__(self, feature_channels: int = 0, seg_channels: int = 0, widths: Sequence[int] = (16, 32, 64)) -> None:
        super().__init__()
        self.feature_channels = feature_channels
        self.seg_channels = seg_channels
        self.net = SmallUNet(1 + feature_channels + seg_channels, 1, widths)
        nn.init.zeros_(self.net.out.weight)
        nn.init.zeros_(self.net.out.bias)

    def forward(
        self, depth: torch.Tensor, features: torch.Tensor | None = None, seg_logits: torch.Tensor | None = None
    ) -> torch.Tensor:
        """depth (B, 1, H, W) stage-I depth -> (B, 1, H, W) corrected depth (same unit; starts as the identity)."""
        parts = [depth]
        if self.feature_channels:
            parts.append(features)  # type: ignore[arg-type]
        if self.seg_channels:
            parts.append(seg_logits)  # type: ignore[arg-type]
        return depth + self.net(torch.cat(parts, 1))
