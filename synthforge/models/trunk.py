"""Shared trunk: a segmentation-models-pytorch UNet producing F feature channels at the input resolution."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import segmentation_models_pytorch as smp
import torch
from torch import nn

from next3d_gen.errors import UserError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class UNetTrunk(nn.Module):
    """UNet trunk (smp) with no pretrained download: ``encoder_weights=None``.

    Args:
        encoder_name: any smp encoder (``resnet18``, ``resnet34``, ``tu-resnet10t`` (timm), ...).
        encoder_depth: number of encoder stages (3-5); the input side must be divisible by ``2**encoder_depth``.
        decoder_channels: decoder widths, one per stage (length ``encoder_depth``), from coarse to fine.
        out_channels: F, the number of feature channels returned.
        encoder_weights_path: optional local ``state_dict`` file for the encoder (never downloaded).
        normalize: subtract the ImageNet mean / divide by its std inside the model (input stays in [0, 1]).

    Encoder stages beyond ``encoder_depth`` that smp keeps but never runs (e.g. ResNet ``layer4`` at depth 4) are
    removed, so every parameter receives a gradient (required by DDP without ``find_unused_parameters``).

    Shapes: input (B, 3, H, W) float RGB in [0, 1] -> features (B, F, H, W) float (unbounded).
    """

    def __init__(
        self,
        encoder_name: str = "resnet18",
        encoder_depth: int = 4,
        decoder_channels: Sequence[int] = (128, 64, 32, 16),
        out_channels: int = 64,
        encoder_weights_path: str | None = None,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        if len(decoder_channels) != encoder_depth:
            raise ValueError(f"decoder_channels needs {encoder_depth} widths (one per stage), got {decoder_channels}")
        self.out_channels = int(out_channels)
        self.encoder_depth = int(encoder_depth)
        self.unet = smp.Unet(
            encoder_name=encoder_name,
            encoder_weights=None,
            encoder_depth=encoder_depth,
            decoder_channels=tuple(decoder_channels),
            in_channels=3,
            classes=out_channels,
        )
        if encoder_weights_path:
            from synthforge.checkpoints import load_weights  # safe: tensors and plain data only

            state = load_weights(encoder_weights_path, "encoder_weights_path")
            if not isinstance(state, dict):
                raise UserError(f"encoder_weights_path: {encoder_weights_path}: not a state_dict")
            self.unet.encoder.load_state_dict(state, strict=False)
        self._prune_unused_encoder_stages()
        self.normalize = normalize
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def size_divisor(self) -> int:
        """Input sides must be multiples of this."""
        return 2**self.encoder_depth

    def _prune_unused_encoder_stages(self) -> None:
        enc = self.unet.encoder
        side = 2 ** (self.encoder_depth + 1)
        with torch.enable_grad():
            self.unet.train(False)
            self.unet(torch.zeros(1, 3, side, side)).sum().backward()
            self.unet.train(True)
        for name, child in list(enc.named_children()):
            params = list(child.parameters())
            if params and all(p.grad is None for p in params):
                setattr(enc, name, nn.Identity())
        unused = [n for n, p in self.unet.named_parameters() if p.grad is None]
        self.unet.zero_grad(set_to_none=True)
        if unused:
            log.warning("trunk: %d parameters get no gradient (e.g. %s)", len(unused), unused[0])

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> (B, F, H, W) features."""
        x = (image - self.mean) / self.std if self.normalize else image
        return self.unet(x)
