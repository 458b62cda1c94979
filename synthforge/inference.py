"""Inference with a trained checkpoint on arbitrary RGB face crops: stage I (``synthforge train``) or stage II
(``synthforge finetune``).

Example::

    from synthforge.inference import Predictor
    predictor = Predictor.from_checkpoint("runs/stage1/lightning_logs/version_0/checkpoints/last.ckpt")
    [pred] = predictor.predict(face_crop_uint8_hwc)
    pred.seg, pred.depth, pred.landmarks       # in face_crop's own pixel grid; pred.label_space names seg's ids

A stage-I checkpoint predicts the synthetic label space (``next3d_gen.labels.SYNTH``), relative depth, 68 landmarks
(and normals / UV when the network has those heads). A fine-tuned checkpoint predicts in its dataset's label space:
300W 68 landmarks (no parsing: ``seg`` is None), LaPa 11 classes (+ 106 landmarks when trained with them),
CelebAMask-HQ 19 classes; depth when it was fine-tuned for depth. Absent outputs are None.

Each input is padded (zeros, centred) to a square, resized to the network's crop size, and the outputs are mapped
back (the same for both kinds): segmentation from bilinearly resized logits, depth bilinearly resized, landmarks by
the inverse similarity (pixel-centre convention: integer coordinates are pixel centres of the input).

``Predictor(..., flip=True)`` (``synthforge predict --flip``) also runs the mirrored crop and averages the two
(flip test): segmentation logits with the label space's left/right classes swapped back, depth and normals (x
negated) mirrored back, 68 landmarks mirrored and re-indexed with
:data:`~next3d_gen.labels.LANDMARK_FLIP_PERMUTATION`. UV coordinates and landmark sets without a flip permutation
(LaPa's 106 points) come from the unflipped pass. Twice the network time; on the AFW dev set it lowers the demo
checkpoints' NME by 2-4 % (README).

Whole-face classes (``min_share``): a pair of glasses is one object across both eyes, so a face either has a sizeable
eyeglasses region or none. When a crop's eyeglasses pixels (argmax, at the network's resolution, after the flip
average) cover less than :data:`GLASSES_MIN_SHARE` of the network's input square, they are specks on a bare face
(squinting or shadowed eyes): the class's probability is set to 0 in that crop (the others renormalised), so ``seg``
takes the next most probable class there. Stage-I checkpoints gate ``eyeglasses`` by default; ``min_share={}`` (or
``synthforge predict --glasses-min-share 0``) keeps every pixel; other label spaces are not gated unless asked.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as tnf
from torch import nn

from next3d_gen.errors import UserError
from next3d_gen.labels import LANDMARK_FLIP_PERMUTATION, SYNTH, LabelSpace
from synthforge.checkpoints import (
    FINETUNE,
    STAGE1,
    build_finetune_system,
    build_stage1_system,
    checkpoint_kind,
    finetune_crop,
    load_checkpoint,
    stage1_crop_scale,
)
from synthforge.crops import box_from_points, box_window, image_to_tensor, landmark_box, window_side


@dataclass
class Prediction:
    """Outputs for one input image of size H x W (None: the network has no such output).

    Attributes:
        seg: (H, W) int64 class ids of ``label_space``, or None (300W fine-tuned checkpoints have no parsing).
        seg_probs: (C, H, W) float32 class probabilities (0 for a whole-face class gated in this crop: see the
            module docstring), or None with ``seg``.
        depth: (H, W) float32 relative depth in metres (camera z minus the head's median depth, up to an offset), or
            None (fine-tuned checkpoints without a depth adapter).
        landmarks: (K, 2) float32 (x, y) in the input's pixels (pixel-centre convention), or None; K = 68 for stage I
            and 300W, 106 for LaPa.
        normal: (H, W, 3) float32 camera-frame unit normals, or None when the network has no normal head.
        uv: (H, W, 2) float32 template UV coordinates, or None when the network has no UV head.
        label_space: the label space of ``seg`` / ``seg_probs`` (the predictor's; None without parsing).
    """

    seg: np.ndarray | None
    seg_probs: np.ndarray | None
    depth: np.ndarray | None
    landmarks: np.ndarray | None
    normal: np.ndarray | None = None
    uv: np.ndarray | None = None
    label_space: LabelSpace | None = None


@dataclass(frozen=True)
class CropDefinition:
    """How a checkpoint's training crops were cut around a face, so that a photo's face can be cut the same way.

    The window is a square centred on a box (x0, y0, x1, y1 of pixel centres) with side ``scale`` x the box's longer
    side, mapped onto the crop's edges (:func:`synthforge.crops.crop_matrix`; the side by
    :func:`synthforge.crops.window_side`).

    Attributes:
        box: what the box is: ``"landmarks"`` (the face's landmarks), ``"label"`` (its non-background parsing labels,
            LaPa) or ``"image"`` (the whole image: aligned face images, CelebAMask-HQ); values of
            :data:`synthforge.checkpoints.CROP_BOXES`.
        scale: window side over the box's longer side.
        pixel_extent: how the longer side is measured. False (stage I, :func:`~synthforge.crops.landmark_box`):
            ``max(x1 - x0, y1 - y0, 1)``. True (stage II, ``label_finetune.datasets.common.square_crop_affine``):
            ``max(x1 - x0 + 1, y1 - y0 + 1)`` (the extreme pixels counted), the window side then at least 1 pixel.
    """

    box: str
    scale: float
    pixel_extent: bool = False

    def window(self, cx: float, cy: float, side: float) -> tuple[float, float, float]:
        """Crop window (centre x, centre y, side) of a box with centre (cx, cy) and longer side ``side``
        (measured between extreme pixel centres, as :func:`~synthforge.crops.landmark_box` does)."""
        return cx, cy, window_side(side, self.scale, self.pixel_extent)

    def window_of_points(self, points: np.ndarray) -> tuple[float, float, float]:
        """Crop window of the box of (K, 2) points (image pixels)."""
        if self.pixel_extent:
            return box_window(box_from_points(np.asarray(points, dtype=np.float64)), self.scale, pixel_extent=True)
        return self.window(*landmark_box(points))


ImageLike = np.ndarray | torch.Tensor

GLASSES_MIN_SHARE = 0.0075
"""Smallest share of the crop that a face's ``eyeglasses`` pixels must cover to be kept (module docstring).

Calibrated on synthetic faces, never on real ones (``benchmarks/bench_glasses_gate.py``, 1,000 fresh renders, two
demo checkpoints): every pair of glasses covers at least 2.1 % of the training crop in its labels; gating at 0.75 %
gives the best mean eyeglasses pixel F1 of the shares tried (0.320 and 0.416 against 0.318 and 0.404 ungated) while
bare faces with glasses pixels fall from 64 % to 3-5 % and wearers keeping some fall from 94-97 % to 62-74 %."""


def default_min_share(label_space: LabelSpace | None) -> dict[str, float]:
    """The whole-face gates a label space gets by default: ``eyeglasses`` at :data:`GLASSES_MIN_SHARE` when it has
    that class (the synthetic space), none otherwise."""
    if label_space is not None and "eyeglasses" in label_space.classes:
        return {"eyeglasses": GLASSES_MIN_SHARE}
    return {}


def _output(out: Any, name: str) -> torch.Tensor | None:
    """Field ``name`` of a network's output: a stage-I ``TaskOutputs`` (attributes) or a ``FinetuneSystem`` dict."""
    return out.get(name) if isinstance(out, dict) else getattr(out, name, None)


class Predictor:
    """Runs a stage-I network or a fine-tuned (stage-II) system on face crops.

    Args:
        net: the trained network: a stage-I network (returns :class:`~synthforge.models.TaskOutputs`) or a
            :class:`~label_finetune.system.FinetuneSystem` (returns a dict with ``seg`` / ``landmarks`` / ``depth``).
        crop_size: the side the network was trained at.
        label_space: class names of the segmentation output (None when the network has none).
        device: where to run (default: the network's current device).
        crop: how the training crops were cut (None: unknown; :class:`synthforge.predict.FacePipeline` then needs a
            crop scale).
        kind: :data:`synthforge.checkpoints.STAGE1` or :data:`~synthforge.checkpoints.FINETUNE`.
        dataset: the fine-tuning dataset (``w300``, ``lapa``, ``celebamask_hq``), None for stage I.
        flip: average every prediction with the prediction on the mirrored crop (flip test; module docstring).
        min_share: whole-face classes, ``{class name: smallest share of the crop}`` (module docstring); None: the
            label space's :func:`default_min_share`; ``{}``: no gate.

    Attributes:
        crop_scale: the first-pass crop scale of :class:`synthforge.predict.FacePipeline` (window side over the
            face's landmark-box side): ``crop.scale``, or None when unknown or when the crops are whole images.
    """

    def __init__(
        self,
        net: nn.Module,
        crop_size: int,
        label_space: LabelSpace | None = SYNTH,
        device: str | None = None,
        *,
        crop: CropDefinition | None = None,
        kind: str = STAGE1,
        dataset: str | None = None,
        flip: bool = False,
        min_share: dict[str, float] | None = None,
    ) -> None:
        self.net = net.eval()
        if device is not None:
            self.net.to(device)
        self.device = next(self.net.parameters()).device
        self.crop_size = int(crop_size)
        self.label_space = label_space
        self.crop = crop
        self.crop_scale: float | None = crop.scale if crop is not None and crop.box != "image" else None
        self.kind = kind
        self.dataset = dataset
        self.flip = flip
        self.min_share = default_min_share(label_space) if min_share is None else dict(min_share)
        for name, share in self.min_share.items():
            if label_space is None or name not in label_space.classes:
                raise ValueError(f"min_share: no class {name!r} in the label space")
            if not 0.0 <= share <= 1.0:
                raise ValueError(f"min_share[{name!r}] must be in [0, 1], got {share}")

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | None = None,
        net: nn.Module | None = None,
        option: str | None = None,
        flip: bool = False,
        min_share: dict[str, float] | None = None,
    ) -> Predictor:
        """Load a checkpoint written by ``synthforge train`` or ``synthforge finetune`` (networks rebuilt from their
        saved config; a fine-tuned checkpoint holds its frozen stage-I network, the stage-I file is not needed).

        The file is read safely (:func:`synthforge.checkpoints.load_checkpoint`): nothing in it is run. The label
        space, crop size and crop definition come from the checkpoint (:func:`synthforge.checkpoints.finetune_crop`
        for fine-tuned ones).

        Args:
            path: ``.ckpt`` file.
            device: optional device string; default CPU.
            net: stage I only: an already built network of the same architecture (for checkpoints saved outside the
                CLI).
            option: the command-line option that named the file, for error messages (``--ckpt``).
            flip: flip test (see the class).
            min_share: whole-face class gates (see the class; None: the label space's default).

        Raises:
            UserError: naming the option and the file when it is missing, damaged, holds objects that would run
                code, or is neither kind of SynthForge checkpoint.
        """
        where = f"{option}: {path}" if option else str(path)
        ckpt = load_checkpoint(path, option, consumer="Predictor.from_checkpoint")
        kind = checkpoint_kind(ckpt)
        if kind == STAGE1:
            system = build_stage1_system(ckpt, path, option, net=net)
            crop = system.crop_size
            if crop is None:
                raise UserError(f"{where}: checkpoint has no crop size (not written by synthforge train)")
            scale = stage1_crop_scale(ckpt)
            definition = CropDefinition("landmarks", scale) if scale is not None else None
            return cls(
                system.net,
                crop,
                system.label_space,
                device,
                crop=definition,
                kind=STAGE1,
                flip=flip,
                min_share=min_share,
            )
        if kind == FINETUNE:
            if net is not None:
                raise ValueError("net= applies to stage-I checkpoints only")
            box, scale = finetune_crop(ckpt, path, option)
            # its "stage I was trained on N px crops, fine-tuning uses M px" notice is about training: not repeated here
            notices = logging.getLogger("label_finetune.system")
            level = notices.level
            notices.setLevel(logging.ERROR)
            try:
                system = build_finetune_system(ckpt, path, option)
            finally:
                notices.setLevel(level)
            return cls(
                system,
                int(system.hparams.resolution),
                system.label_space,
                device,
                crop=CropDefinition(box, scale, pixel_extent=True),
                kind=FINETUNE,
                dataset=system.dataset,
                flip=flip,
                min_share=min_share,
            )
        raise UserError(
            f"{where}: not a SynthForge checkpoint (no net.* or stage1.* weights; expected one written by "
            "synthforge train or synthforge finetune)"
        )

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
        chw = [image_to_tensor(im) for im in items]
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
            batch = torch.stack(inputs).to(self.device)
            out = self.net(batch)
            if self.flip:
                out = self._flip_average(out, self.net(batch.flip(-1)), s)
            seg_out, depth_out, lm_out = _output(out, "seg"), _output(out, "depth"), _output(out, "landmarks")
            if seg_out is not None:
                seg_out = self._gate_whole_face_classes(seg_out.float())
            for i, (h, w, side, ox, oy) in enumerate(geoms):
                seg = probs = depth = lm = None
                if seg_out is not None:
                    logits = tnf.interpolate(seg_out[i : i + 1].float(), size=(side, side), mode="bilinear")
                    probs = torch.softmax(logits, 1)[0, :, oy : oy + h, ox : ox + w]
                    seg = probs.argmax(0).cpu().numpy().astype(np.int64)
                    probs = probs.cpu().numpy().astype(np.float32)
                if depth_out is not None:
                    up = tnf.interpolate(depth_out[i : i + 1].float(), size=(side, side), mode="bilinear")
                    depth = up[0, 0, oy : oy + h, ox : ox + w].cpu().numpy().astype(np.float32)
                if lm_out is not None:
                    pts = (lm_out[i].float() + 0.5) * (side / s) - 0.5
                    pts = pts - torch.tensor([ox, oy], dtype=pts.dtype, device=pts.device)
                    lm = pts.cpu().numpy().astype(np.float32)
                extra = {}
                for key in ("normal", "uv"):
                    dense = _output(out, key)
                    if dense is not None:
                        up = tnf.interpolate(dense[i : i + 1].float(), size=(side, side), mode="bilinear")
                        up = up[0, :, oy : oy + h, ox : ox + w]
                        if key == "normal":
                            up = tnf.normalize(up, dim=0)
                        extra[key] = up.permute(1, 2, 0).cpu().numpy().astype(np.float32)
                results.append(
                    Prediction(
                        seg=seg, seg_probs=probs, depth=depth, landmarks=lm, label_space=self.label_space, **extra
                    )
                )
        return results

    def _gate_whole_face_classes(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) float logits at the network's resolution, with each ``min_share`` class pushed to -1e9 in
        the crops whose argmax gives it less than its share of the h x w pixels (probability 0 after softmax)."""
        if not self.min_share or self.label_space is None:
            return logits
        winner = logits.argmax(1)  # (B, h, w), before any class is gated
        for name, share in self.min_share.items():
            idx = self.label_space.classes.index(name)
            if idx >= logits.shape[1] or share <= 0:
                continue
            drop = (winner == idx).float().mean((1, 2)) < share  # (B,) crops where the class is only specks
            if bool(drop.any()):
                logits = logits.clone()
                logits[drop, idx] = -1e9
        return logits

    def _flip_average(self, out: Any, mirrored: Any, side: int) -> dict[str, torch.Tensor | None]:
        """The network's outputs on a batch and on the same batch mirrored (x -> ``side`` - 1 - x), averaged in the
        unmirrored frame: seg logits (B, C, h, w) with left/right classes swapped back, depth (B, 1, h, w), normals
        (B, 3, h, w) with x negated, landmarks (B, 68, 2) crop pixels re-indexed by the flip permutation; UV and
        landmark sets of another size keep the unmirrored pass."""
        merged: dict[str, torch.Tensor | None] = {}
        for key in ("seg", "depth", "normal", "uv", "landmarks"):
            a, b = _output(out, key), _output(mirrored, key)
            if a is None or b is None or key == "uv":
                merged[key] = a
                continue
            a, b = a.float(), b.float()
            if key == "landmarks":
                if a.shape[1] != len(LANDMARK_FLIP_PERMUTATION):
                    merged[key] = a
                    continue
                b = b[:, list(LANDMARK_FLIP_PERMUTATION)]
                b = torch.stack([side - 1 - b[..., 0], b[..., 1]], -1)
            else:
                b = b.flip(-1)
                if key == "seg" and self.label_space is not None:
                    b = b[:, torch.as_tensor(self.label_space.flip_lut()[: b.shape[1]], device=b.device)]
                if key == "normal":
                    b = torch.cat([-b[:, :1], b[:, 1:]], 1)
            merged[key] = (a + b) / 2
        return merged
