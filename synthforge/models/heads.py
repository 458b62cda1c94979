"""Task heads on the trunk features: dense heads (segmentation, depth, normals, UV) and the hourglass landmark head.

All heads take trunk features (B, F, H, W) at the input resolution.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as tnf
from torch import nn


class _ChannelsLastGrad(torch.autograd.Function):
    """Identity whose backward hands its gradient on in the channels-last memory format.

    Before a ``torch.cat`` over channels, the gradient a tensor gets back is a channel slice of the concatenation's
    gradient: strided in neither layout, so the bilinear upsampling's backward takes PyTorch's slow generic CPU path
    (9.6 ms instead of 2.0 ms for (16, 32, 48, 48) -> 96 x 96 in bf16, copy included)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return grad.contiguous(memory_format=torch.channels_last)


def _upsample_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of (B, C, h, w) ``x`` to the (H, W) of ``like``; a channels-last ``x`` gets its gradient back
    channels-last (:class:`_ChannelsLastGrad`). Values are those of ``tnf.interpolate``."""
    up = tnf.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)
    if (
        x.requires_grad
        and x.dim() == 4
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    ):
        up = _ChannelsLastGrad.apply(up)
    return up


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class DenseHead(nn.Module):
    """Small UNet (``levels`` >= 1) or plain conv stack (``levels`` = 0) mapping features to a dense output.

    Args:
        in_channels: F.
        out_channels: output channels (C classes, 1 for depth, 3 for normals, 2 for UV).
        width: hidden width at full resolution (doubled at each level down).
        levels: number of stride-2 levels of the small UNet.
        output_scale: the last 1x1 conv's output is multiplied by this (e.g. 0.1 for depth in metres).
        activation: ``None`` | ``"normalize"`` (unit vectors over channels, for normals) | ``"tanh"``.

    Shapes: (B, F, H, W) -> (B, out_channels, H, W); H and W must be divisible by ``2**levels``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        width: int = 32,
        levels: int = 1,
        output_scale: float = 1.0,
        activation: str | None = None,
    ) -> None:
        super().__init__()
        if activation not in (None, "normalize", "tanh"):
            raise ValueError(f"unknown activation {activation!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.inc = conv_bn_relu(in_channels, width)
        widths = [width * 2**i for i in range(levels + 1)]
        self.down = nn.ModuleList(conv_bn_relu(widths[i], widths[i + 1], stride=2) for i in range(levels))
        self.up = nn.ModuleList(conv_bn_relu(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(levels)))
        self.out = nn.Conv2d(width, out_channels, 1)
        self.output_scale = float(output_scale)
        self.activation = activation
        self.size_divisor = 2**levels

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.inc(features)
        skips = [x]
        for down in self.down:
            x = down(x)
            skips.append(x)
        skips.pop()
        for up in self.up:
            skip = skips.pop()
            x = up(torch.cat([_upsample_to(x, skip), skip], 1))
        y = self.out(x) * self.output_scale
        if self.activation == "normalize":
            y = tnf.normalize(y, dim=1, eps=1e-6)
        elif self.activation == "tanh":
            y = torch.tanh(y)
        return y


class Residual(nn.Module):
    """Pre-activation bottleneck residual block (BN-ReLU-1x1, BN-ReLU-3x3, BN-ReLU-1x1) + identity / 1x1 skip.

    The one residual block of the landmark hourglasses (stage I here, the stage-II
    :class:`~label_finetune.heads.LandmarkAdapter`).

    Args:
        cin, cout: input and output channels (a 1x1 conv skip when they differ).
        bias: biases on the two convs followed by a BatchNorm too (redundant there; the fine-tuning adapters have
            them, so that their checkpoints load); the last conv always has one.

    Shapes: (B, cin, H, W) float -> (B, cout, H, W).
    """

    def __init__(self, cin: int, cout: int, bias: bool = False) -> None:
        super().__init__()
        mid = max(cout // 2, 1)
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.ReLU(inplace=False),
            nn.Conv2d(cin, mid, 1, bias=bias),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, padding=1, bias=bias),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, 1),
        )
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.skip(x)


class Hourglass(nn.Module):
    """Recursive hourglass of ``depth`` levels (max-pool down, nearest up, :class:`Residual` blocks of ``width``
    channels; ``bias`` as there).

    Shapes: (B, width, H, W) float -> (B, width, H, W); H and W must be divisible by ``2**depth``.
    """

    def __init__(self, depth: int, width: int, bias: bool = False) -> None:
        super().__init__()
        self.upper = Residual(width, width, bias)
        self.low1 = Residual(width, width, bias)
        self.low2 = Hourglass(depth - 1, width, bias) if depth > 1 else Residual(width, width, bias)
        self.low3 = Residual(width, width, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = self.low3(self.low2(self.low1(tnf.max_pool2d(x, 2))))
        return self.upper(x) + tnf.interpolate(low, size=x.shape[-2:], mode="nearest")


def soft_argmax(heatmaps: torch.Tensor, beta: torch.Tensor | float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable arg-max of heatmaps.

    Args:
        heatmaps: (B, K, h, w) float logits.
        beta: inverse temperature (scalar tensor or float) multiplying the logits before the spatial softmax.

    Returns:
        ``(coords, prob)``: (B, K, 2) float expected (x, y) in *heatmap* pixel-centre coordinates (integer values at
        heatmap pixel centres) and the (B, K, h, w) softmax probabilities.
    """
    b, k, h, w = heatmaps.shape
    prob = torch.softmax(heatmaps.float().flatten(2) * beta, dim=-1).view(b, k, h, w)
    xs = torch.arange(w, device=heatmaps.device, dtype=prob.dtype)
    ys = torch.arange(h, device=heatmaps.device, dtype=prob.dtype)
    x = (prob.sum(2) * xs).sum(-1)
    y = (prob.sum(3) * ys).sum(-1)
    return torch.stack([x, y], -1), prob


def heatmap_to_image(coords: torch.Tensor, stride: float) -> torch.Tensor:
    """Heatmap pixel-centre coordinates -> input-image pixel-centre coordinates: ``(c + 0.5) * stride - 0.5``
    (``stride``: input pixels per heatmap cell; heatmap cell j covers input pixels [j * stride - 0.5,
    (j + 1) * stride - 0.5])."""
    return (coords + 0.5) * stride - 0.5


def image_to_heatmap(coords: torch.Tensor, stride: float) -> torch.Tensor:
    """Inverse of :func:`heatmap_to_image`."""
    return (coords + 0.5) / stride - 0.5


class HourglassLandmarkHead(nn.Module):
    """Conv stem + stacked hourglass producing K heatmaps at 1/``stride`` resolution, decoded by soft-argmax.

    Args:
        in_channels: F.
        num_landmarks: K (68).
        width: hourglass width.
        num_stacks: number of hourglass stacks (every stack's heatmaps are returned for supervision).
        hourglass_depth: levels of each hourglass (the heatmap side must be divisible by ``2**depth``).
        temperature: initial softmax temperature (``beta = 1 / temperature``).
        learn_temperature: make the temperature a learned parameter.

    Forward: (B, F, H, W) -> dict with ``heatmaps`` (list of (B, K, H/4, W/4) logits, one per stack, already
    multiplied by ``beta``: their spatial softmax is the distribution the coordinates are the mean of),
    ``coords`` (list of (B, K, 2) per-stack soft-argmax coordinates in input pixels) and ``landmarks`` (B, K, 2),
    the last stack's coordinates in the input image's pixel-centre convention.
    """

    stride = 4

    def __init__(
        self,
        in_channels: int,
        num_landmarks: int = 68,
        width: int = 64,
        num_stacks: int = 2,
        hourglass_depth: int = 4,
        temperature: float = 1.0,
        learn_temperature: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.num_landmarks = num_landmarks
        self.hourglass_depth = hourglass_depth
        self.stem = nn.Sequential(
            conv_bn_relu(in_channels, width, 3, stride=2),
            Residual(width, width),
            nn.MaxPool2d(2),
            Residual(width, width),
        )
        self.hourglasses = nn.ModuleList(Hourglass(hourglass_depth, width) for _ in range(num_stacks))
        self.features = nn.ModuleList(
            nn.Sequential(Residual(width, width), conv_bn_relu(width, width, 1)) for _ in range(num_stacks)
        )
        self.to_heatmap = nn.ModuleList(nn.Conv2d(width, num_landmarks, 1) for _ in range(num_stacks))
        self.merge_features = nn.ModuleList(nn.Conv2d(width, width, 1) for _ in range(num_stacks - 1))
        self.merge_heatmaps = nn.ModuleList(nn.Conv2d(num_landmarks, width, 1) for _ in range(num_stacks - 1))
        log_t = torch.tensor(math.log(temperature))
        if learn_temperature:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)

    @property
    def size_divisor(self) -> int:
        """Input sides must be multiples of this (stride x 2**hourglass_depth)."""
        return self.stride * 2**self.hourglass_depth

    @property
    def beta(self) -> torch.Tensor:
        return torch.exp(-self.log_temperature)

    def forward(self, features: torch.Tensor) -> dict[str, list[torch.Tensor] | torch.Tensor]:
        x = self.stem(features)
        heatmaps, coords = [], []
        for i, hourglass in enumerate(self.hourglasses):
            feat = self.features[i](hourglass(x))
            raw = self.to_heatmap[i](feat)
            hm = raw * self.beta
            heatmaps.append(hm)
            c, _ = soft_argmax(hm)
            coords.append(heatmap_to_image(c, self.stride))
            if i < len(self.merge_features):
                x = x + self.merge_features[i](feat) + self.merge_heatmaps[i](raw)
        return {"heatmaps": heatmaps, "coords": coords, "landmarks": coords[-1]}
