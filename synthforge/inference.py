"""Inference with a trained stage-B checkpoint on arbitrary RGB face crops.

Example::

    from synthforge.inference import Predictor
    predictor = Predictor.from_checkpoint("runs/stage1/lightning_logs/version_0/checkpoints/last.ckpt")
    [pred] = predictor.predict(face_crop_uint8_hwc)
    pred.seg, pred.depth, pred.landmarks       # in face_crop's own pixel grid

Each input is padded (zeros, centred) to a square, resized to the network's crop size, and the outputs are mapped
back: segmentation from bilinearly resized logits, depth bilinearly resized, landmarks by the inverse similarity
(pixel-centre convention: integer coordinates are pixel centres of the input).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as tnf
from torch import nn

from next3d_gen.errors import UserError
from next3d_gen.labels import SYNTH, LabelSpace


@dataclass
class Prediction:
    """Outputs for one input image of size H x W.

    Attributes:
        seg: (H, W) int64 class ids of ``label_space``.
        seg_probs: (C, H, W) float32 class probabilities.
        depth: (H, W) float32 relative depth in metres (camera z minus the head's median depth, up to an offset).
        landmarks: (K, 2) float32 (x, y) in the input's pixels (pixel-centre convention); K = 68 for stage I.
        normal: (H, W, 3) float32 camera-frame unit normals, or None when the network has no normal head.
        uv: (H, W, 2) float32 template UV coordinates, or None when the network has no UV head.
        label_space: the label space of ``seg`` / ``seg_probs`` (the predictor's).
    """

    seg: np.ndarray
    seg_probs: np.ndarray
    depth: np.ndarray
    landmarks: np.ndarray
    normal: np.ndarray | None = None
    uv: np.ndarray | None = None
    label_space: LabelSpace | None = None


ImageLike = np.ndarray | torch.Tensor


def _to_chw_float(image: ImageLike) -> torch.Tensor:
    """HxWx3 uint8 / float numpy, or 3xHxW tensor (uint8 or float in [0, 1]) -> (3, H, W) float32 in [0, 1]."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an H x W x 3 RGB array, got shape {image.shape}")
        t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    elif isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a 3 x H x W tensor, got shape {tuple(image.shape)}")
        t = image
    else:
        raise TypeError(f"unsupported image type {type(image).__name__}")
    if t.dtype == torch.uint8:
        return t.float() / 255.0
    return t.float()


class Predictor:
    """Runs a stage-B network on face crops.

    Args:
        net: the trained network (returns :class:`~synthforge.models.TaskOutputs`).
        crop_size: the side the network was trained at.
        label_space: class names of the segmentation output.
        device: where to run (default: the network's current device).
    """

    def __init__(
        self, net: nn.Module, crop_size: int, label_space: LabelSpace = SYNTH, device: str | None = None
    ) -> None:
        self.net = net.eval()
        if device is not None:
            self.net.to(device)
        self.device = next(self.net.parameters()).device
        self.crop_size = int(crop_size)
        self.label_space = label_space

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | None = None, net: nn.Module | None = None) -> Predictor:
        """Load a checkpoint written by ``synthforge train`` (the network is rebuilt from its saved config).

        The file is read safely (:func:`synthforge.checkpoints.load_checkpoint`): nothing in it is run.

        Args:
            path: ``.ckpt`` file.
            device: optional device string; default CPU.
            net: an already built network of the same architecture (for checkpoints saved outside the CLI).

        Raises:
            UserError: naming the file when it is missing, damaged, holds objects that would run code, or is not a
                stage-I checkpoint (fine-tuned checkpoints are not supported here yet).
        """
        from synthforge.checkpoints import STAGE1, build_stage1_system, load_checkpoint

        ckpt = load_checkpoint(path, expect=STAGE1, consumer="Predictor.from_checkpoint")
        system = build_stage1_system(ckpt, path, net=net)
        crop = system.crop_size
        if crop is None:
            raise UserError(f"{path}: checkpoint has no crop size (not written by synthforge train)")
        return cls(system.net, crop, system.label_space, device)

    @torch.no_grad()
    def predict(self, images: ImageLike | Sequence[ImageLike], batch_size: int = 16) -> list[Prediction]:
        """Predict on one image or a sequence of images (sizes may differ).

        Args:
            images: an H x W x 3 uint8 (or float in [0, 1]) numpy array, a (3, H, W) or (B, 3, H, W) tensor, or a
                sequence of such single images.
            batch_size: images per forward pass.

        Returns:
            One :class:`Prediction` per image, in input order.
        """
        if isinstance(images, torch.Tensor) and images.ndim == 4:
            items = list(images)
        elif isinstance(images, (np.ndarray, torch.Tensor)):
            items = [images]
        else:
            items = list(images)
        chw = [_to_chw_float(im) for im in items]
        s = self.crop_size
        results: list[Prediction] = []
        for start in range(0, len(chw), batch_size):
            chunk = chw[start : start + batch_size]
            geoms = []
            inputs = []
            for img in chunk:
                _, h, w = img.shape
                side = max(h, w)
                ox, oy = (side - w) // 2, (side - h) // 2
                padded = tnf.pad(img, (ox, side - w - ox, oy, side - h - oy))
                resized = tnf.interpolate(padded[None], size=(s, s), mode="bilinear", antialias=True)
                inputs.append(resized[0])
                geoms.append((h, w, side, ox, oy))
            out = self.net(torch.stack(inputs).to(self.device))
            for i, (h, w, side, ox, oy) in enumerate(geoms):
                logits = tnf.interpolate(out.seg[i : i + 1].float(), size=(side, side), mode="bilinear")
                probs = torch.softmax(logits, 1)[0, :, oy : oy + h, ox : ox + w]
                depth = tnf.interpolate(out.depth[i : i + 1].float(), size=(side, side), mode="bilinear")
                depth = depth[0, 0, oy : oy + h, ox : ox + w]
                lm = (out.landmarks[i].float() + 0.5) * (side / s) - 0.5
                lm = lm - torch.tensor([ox, oy], dtype=lm.dtype, device=lm.device)
                extra = {}
                for key in ("normal", "uv"):
                    dense = getattr(out, key, None)
                    if dense is not None:
                        up = tnf.interpolate(dense[i : i + 1].float(), size=(side, side), mode="bilinear")
                        up = up[0, :, oy : oy + h, ox : ox + w]
                        if key == "normal":
                            up = tnf.normalize(up, dim=0)
                        extra[key] = up.permute(1, 2, 0).cpu().numpy().astype(np.float32)
                results.append(
                    Prediction(
                        seg=probs.argmax(0).cpu().numpy().astype(np.int64),
                        seg_probs=probs.cpu().numpy().astype(np.float32),
                        depth=depth.cpu().numpy().astype(np.float32),
                        landmarks=lm.cpu().numpy().astype(np.float32),
                        label_space=self.label_space,
                        **extra,
                    )
                )
        return results
