"""FinetuneSystem: frozen stage-I network + small trainable per-task nets (the paper's stage II label adaptation).

The stage-I network is loaded from a stage-I checkpoint, its parameters get ``requires_grad=False``, it runs under
``torch.no_grad()`` and it stays in eval mode whatever Lightning does (:meth:`FinetuneSystem.train` is overridden),
so its BatchNorm statistics never move (the published code let them drift in two of its three adapters).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as nnf
from torch import nn

from label_finetune.datasets.datamodule import DATASETS
from label_finetune.datasets.lapa import INTER_OCULAR_106
from label_finetune.heads import DepthAdapter, LandmarkAdapter, SegmentationAdapter
from next3d_gen.errors import UserError
from next3d_gen.labels import IGNORE_INDEX, INTER_OCULAR
from synthforge.models.heads import heatmap_to_image, soft_argmax
from synthforge.system import adamw

log = logging.getLogger(__name__)

TASKS = ("seg", "landmarks", "depth")


@dataclass
class Stage1Outputs:
    """The stage-I predictions the adapters read (crop frame, B = batch, H x W = input size).

    Attributes:
        seg: (B, C_s, H, W) float logits.
        depth: (B, 1, H, W) float or None.
        heatmaps: (B, 68, h, w) float, last hourglass stack.
        features: (B, F, H, W) float trunk features.
    """

    seg: torch.Tensor
    depth: torch.Tensor | None
    heatmaps: torch.Tensor
    features: torch.Tensor


def stage1_outputs(out: Any) -> Stage1Outputs:
    """Normalise a stage-I forward result (``TaskOutputs`` dataclass or a dict with the same names)."""

    def get(name: str) -> Any:
        return out.get(name) if isinstance(out, dict) else getattr(out, name, None)

    heatmaps = get("heatmaps")
    if isinstance(heatmaps, (list, tuple)):
        heatmaps = heatmaps[-1]
    seg, features = get("seg"), get("features")
    if seg is None or heatmaps is None or features is None:
        raise TypeError("stage-I output lacks seg, heatmaps or features")
    return Stage1Outputs(seg=seg, depth=get("depth"), heatmaps=heatmaps, features=features)


def load_stage1(path: str | Path) -> tuple[nn.Module, dict[str, Any] | None]:
    """Load the stage-I network from a ``synthforge train`` checkpoint (``MultiTaskSystem``), on the CPU.

    Returns:
        (network, config): the system's ``net`` module, mapping (B, 3, H, W) float images in [0, 1] to
        ``TaskOutputs``; and the system's hyper-parameters when they describe the network (checkpoints written by
        ``synthforge train`` do), so that :func:`build_stage1` can rebuild it without the file.

    The file is read with :func:`synthforge.checkpoints.load_checkpoint` (``weights_only=True``): nothing in it runs.

    Raises:
        UserError: naming ``--model.backbone`` and the file when it is missing, damaged, holds objects that would run
            code, is not a stage-I checkpoint (e.g. a fine-tuned one) or does not match its own network config.
    """
    from synthforge.checkpoints import STAGE1, build_stage1_system, load_checkpoint

    ckpt = load_checkpoint(path, "--model.backbone", expect=STAGE1)  # safe: nothing in the file runs
    hparams = ckpt.get("hyper_parameters") or {}
    if not isinstance(hparams.get("net"), dict):
        raise UserError(
            f"--model.backbone: {path}: the stage-I checkpoint has no network config (not written by synthforge train)"
        )
    net = build_stage1_system(ckpt, path, "--model.backbone").net
    config = dict(hparams)
    meta = ckpt.get("synthforge")
    crop = meta.get("crop_size") if isinstance(meta, dict) else None
    if crop is not None:  # validated by load_checkpoint (a positive int)
        config["_crop_size"] = int(crop)
    return net, config


def build_stage1(config: dict[str, Any]) -> nn.Module:
    """Rebuild the stage-I network (random weights) from the config :func:`load_stage1` returned."""
    from lightning.pytorch.cli import instantiate_module

    from synthforge.system import MultiTaskSystem

    cfg = {k: v for k, v in config.items() if not k.startswith("_")}
    return instantiate_module(MultiTaskSystem, cfg).net


class FinetuneSystem(L.LightningModule):
    """Stage-II label fine-tuning on one benchmark.

    Args:
        backbone: stage-I checkpoint path (``--model.backbone``).
        dataset: benchmark name (``w300``, ``lapa``, ``celebamask_hq``); fixes the output label space / points.
        resolution: input crop size in pixels (linked to ``--data.resolution``).
        tasks: any of ``seg``, ``landmarks``, ``depth``; default: landmarks for 300W, seg for the parsing sets.
        with_features: also feed the stage-I trunk features to every adapter ("w/ F").
        seg_widths: SmallUNet widths of the segmentation adapter.
        landmark_width, landmark_stacks, landmark_depth: hourglass size of the landmark adapter.
        depth_widths: SmallUNet widths of the depth adapter.
        seg_weight, landmark_weight, depth_weight: loss weights.
        lr, weight_decay, lr_min: AdamW learning rate / weight decay and the cosine schedule's floor (per step).
        stage1_config: stage-I hyper-parameters, filled in from ``backbone`` and saved in the checkpoints so that
            ``synthforge evaluate`` can rebuild the frozen network without the stage-I file (not set by users).
        stage1: an already built stage-I network (tests, notebooks); when given, ``backbone`` is not read.
    """

    def __init__(
        self,
        backbone: str | None = None,
        dataset: str = "w300",
        resolution: int = 128,
        tasks: list[str] | None = None,
        with_features: bool = False,
        seg_widths: list[int] | None = None,
        landmark_width: int = 64,
        landmark_stacks: int = 1,
        landmark_depth: int = 3,
        depth_widths: list[int] | None = None,
        seg_weight: float = 1.0,
        landmark_weight: float = 1.0,
        depth_weight: float = 0.5,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        lr_min: float = 1e-6,
        stage1_config: dict[str, Any] | None = None,
        stage1: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["stage1"])
        if dataset not in DATASETS:
            raise UserError(f"--model.dataset: unknown dataset {dataset!r} (choose from {', '.join(DATASETS)})")
        info = DATASETS[dataset]
        if tasks is None:
            tasks = ["seg"] if info.label_space is not None else ["landmarks"]
        for t in tasks:
            if t not in TASKS:
                raise UserError(f"--model.tasks: unknown task {t!r} (choose from {', '.join(TASKS)})")
        if "seg" in tasks and info.label_space is None:
            raise UserError(f"--model.tasks: dataset {dataset} has no segmentation labels")
        if "landmarks" in tasks and not info.num_landmarks:
            raise UserError(f"--model.tasks: dataset {dataset} has no landmarks")
        self.dataset = dataset
        self.tasks = tuple(tasks)
        self.label_space = info.label_space
        self.num_landmarks = info.num_landmarks if "landmarks" in tasks else 0
        if stage1 is None and stage1_config is not None:
            stage1 = build_stage1(stage1_config)  # weights come from the fine-tune checkpoint being loaded
        elif stage1 is None:
            if backbone is None:
                raise UserError("--model.backbone: a stage-I checkpoint is required")
            stage1, stage1_config = load_stage1(backbone)
            self.hparams["stage1_config"] = stage1_config
        crop = (stage1_config or {}).get("_crop_size")
        if crop is not None and crop != resolution:
            log.warning("stage I was trained on %d px crops, fine-tuning uses %d px", crop, resolution)
        divisor = int(getattr(stage1, "size_divisor", 1))
        if resolution % divisor:
            raise UserError(f"--data.resolution {resolution} must be a multiple of {divisor} for this stage-I network")
        self.stage1 = stage1
        for p in self.stage1.parameters():
            p.requires_grad_(False)
        self.stage1.eval()
        probe = self._stage1(torch.zeros(1, 3, resolution, resolution, device=next(stage1.parameters()).device))
        self.stage1_classes = probe.seg.shape[1]
        self.feature_channels = probe.features.shape[1]
        self.heatmap_stride = resolution / probe.heatmaps.shape[-1]
        f = self.feature_channels if with_features else 0
        self.seg_head = (
            SegmentationAdapter(self.stage1_classes, self.label_space.num_classes, f, seg_widths or [32, 64, 128])
            if "seg" in tasks and self.label_space is not None
            else None
        )
        self.landmark_head = (
            LandmarkAdapter(
                probe.heatmaps.shape[1], self.num_landmarks, f, landmark_width, landmark_stacks, landmark_depth
            )
            if "landmarks" in tasks
            else None
        )
        if "depth" in tasks and probe.depth is None:
            raise UserError("--model.tasks: the stage-I network has no depth output")
        self.depth_head = DepthAdapter(f, 0, depth_widths or [16, 32, 64]) if "depth" in tasks else None
        self._val_confusion: torch.Tensor | None = None
        self._val_nme: list[torch.Tensor] = []

    # ------------------------------------------------------------------------------------------------ frozen part

    def train(self, mode: bool = True) -> FinetuneSystem:
        """Switch the adapters' mode; the stage-I network always stays in eval mode (frozen BatchNorm statistics)."""
        super().train(mode)
        self.stage1.eval()
        return self

    @torch.no_grad()
    def _stage1(self, image: torch.Tensor) -> Stage1Outputs:
        self.stage1.eval()
        return stage1_outputs(self.stage1(image))

    def decode_landmarks(self, heatmaps: torch.Tensor) -> torch.Tensor:
        """(B, K, h, w) float landmark-adapter logits -> (B, K, 2) float soft-argmax (x, y) in crop pixels
        (pixel-centre convention; heatmap cell j is centred on crop pixel ``(j + 0.5) * stride - 0.5``)."""
        return heatmap_to_image(soft_argmax(heatmaps)[0], self.heatmap_stride)

    # ---------------------------------------------------------------------------------------------------- forward

    def forward(self, image: torch.Tensor) -> dict[str, Any]:
        """Predict in the crop frame.

        Args:
            image: (B, 3, H, W) float RGB in [0, 1] (H = W = ``resolution``).

        Returns:
            dict with, per task: ``seg`` (B, C, H, W) float logits; ``heatmaps`` list of (B, K, h, w) logits and
            ``landmarks`` (B, K, 2) float crop pixels; ``depth`` (B, 1, H, W) in stage I's depth unit.
        """
        s1 = self._stage1(image)
        feats = s1.features if self.hparams.with_features else None
        out: dict[str, Any] = {}
        if self.seg_head is not None:
            out["seg"] = self.seg_head(s1.seg, feats)
        if self.landmark_head is not None:
            hms = self.landmark_head(s1.heatmaps, feats)
            out["heatmaps"] = hms
            out["landmarks"] = self.decode_landmarks(hms[-1])
        if self.depth_head is not None:
            out["depth"] = self.depth_head(s1.depth, feats)
        return out

    # ----------------------------------------------------------------------------------------------------- losses

    def losses(self, batch: dict[str, Any], out: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Per-task losses (seg: CE; landmarks: L1 of every stack's soft-argmax in units of the crop size; depth:
        masked L1) and their weighted sum under ``total``."""
        res = float(batch["image"].shape[-1])
        parts: dict[str, torch.Tensor] = {}
        total = batch["image"].new_zeros(())
        if "seg" in out:
            parts["seg"] = nnf.cross_entropy(out["seg"], batch["seg"], ignore_index=IGNORE_INDEX)
            total = total + self.hparams.seg_weight * parts["seg"]
        if "landmarks" in out:
            if "landmarks" not in batch:
                raise UserError("model.tasks has 'landmarks' but the data has none (set --data.with_landmarks true)")
            target = batch["landmarks"]
            per_stack = [(self.decode_landmarks(h) - target).abs().mean() / res for h in out["heatmaps"]]
            parts["landmarks"] = torch.stack(per_stack).mean()
            total = total + self.hparams.landmark_weight * parts["landmarks"]
        if "depth" in out and "depth" in batch:
            mask = batch.get("depth_mask", torch.ones_like(batch["depth"], dtype=torch.bool))
            diff = (out["depth"] - batch["depth"]).abs()
            parts["depth"] = (diff * mask).sum() / mask.sum().clamp_min(1)
            total = total + self.hparams.depth_weight * parts["depth"]
        parts["total"] = total
        return parts

    def nme_normalizer(self, landmarks: torch.Tensor) -> torch.Tensor:
        """(N, K, 2) ground truth -> (N,) outer-eye-corner distance (68: points 36/45; LaPa 106: points 66/79)."""
        a, b = INTER_OCULAR if landmarks.shape[1] == 68 else INTER_OCULAR_106
        return (landmarks[:, a] - landmarks[:, b]).norm(dim=-1)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self(batch["image"])
        parts = self.losses(batch, out)
        bs = batch["image"].shape[0]
        for k, v in parts.items():
            self.log(f"train/loss_{k}" if k != "total" else "train/loss", v, batch_size=bs, prog_bar=k == "total")
        return parts["total"]

    # ------------------------------------------------------------------------------------------------- validation

    def on_validation_epoch_start(self) -> None:
        self._val_confusion = None
        self._val_nme = []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        from synthforge.metrics import confusion_matrix, nme

        out = self(batch["image"])
        parts = self.losses(batch, out)
        self.log("val/loss", parts["total"], batch_size=batch["image"].shape[0], sync_dist=True)
        if "seg" in out:
            cm = confusion_matrix(out["seg"].argmax(1), batch["seg"], out["seg"].shape[1])
            self._val_confusion = cm if self._val_confusion is None else self._val_confusion + cm
        if "landmarks" in out:
            t = batch["landmarks"]
            self._val_nme.append(nme(out["landmarks"], t, self.nme_normalizer(t)).detach())

    def on_validation_epoch_end(self) -> None:
        from synthforge.metrics import f1_scores

        if self._val_confusion is not None and self.label_space is not None:
            cm = self._val_confusion
            if self.trainer.world_size > 1:
                cm = self.trainer.strategy.reduce(cm.clone(), reduce_op="sum")
            f1 = f1_scores(cm)
            keep = [i for i in range(len(f1)) if i != self.label_space.background]
            self.log("val/f1_mean", float(torch.nanmean(f1[keep])) * 100.0)
            for i in keep:
                if not torch.isnan(f1[i]):
                    self.log(f"val/f1_{self.label_space.classes[i]}", float(f1[i]) * 100.0)
        if self._val_nme:
            values = torch.cat(self._val_nme)
            self.log("val/nme", float(values.mean()) * 100.0, sync_dist=True)

    # ------------------------------------------------------------------------------------------------- optimizers

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.parameters() if p.requires_grad]
        opt = adamw(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1) if self.trainer else 1
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=self.hparams.lr_min)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def trainable_parameter_count(self) -> int:
        """Number of trained (adapter) parameters."""
        return int(sum(np.prod(p.shape) for p in self.parameters() if p.requires_grad))
