"""Stage-B LightningModule: losses, validation metrics, optimiser and schedule around an injected network.

Validation metrics (accumulated over the whole validation set, summed across DDP ranks), each computed only over the
samples that have its ground truth (an imported set may lack depth, or have only relative depth); a metric with no
such sample is not logged, and ``val/count/<metric>`` says how many images it was computed on:

* ``val/nme``: landmark NME in % of the inter-ocular distance (outer eye corners 36 / 45), crop pixels, mean over
  the images with landmarks.
* ``val/seg_f1_mean``: mean per-class F1 over the foreground classes present, from the dataset-level confusion
  matrix; a partial-label pixel counts as correct when the prediction is one of its allowed classes, else as a miss
  of the lowest allowed id (:func:`synthforge.metrics.resolve_partial_labels`); ``val/seg_f1/<class>`` per class and
  ``val/seg_f1_merged/<group>`` for the label space's merge table.
* ``val/depth_rmse_mm``: RMSE of relative depth over ground-truth foreground pixels of the images with *metric* depth
  (all pixels pooled), millimetres, after shifting each predicted map so that its median over the GT foreground
  equals the GT median (relative depth is defined up to that offset).
* ``val/depth_ssi_rmse``: for images with *relative* (unitless) depth: RMSE after the per-image least-squares scale
  and shift alignment, divided by the target's mean absolute deviation (pixels pooled; a unitless fraction).
* ``val/loss_<term>``: each task term pooled over the whole set (the samples with its ground truth), and ``val/loss``,
  their weighted sum (without the SSL term).

With several validation sources (``data.val`` a list), every metric is also logged per source as
``val/<source>/<metric>``; training logs per-source loss terms ``train/<source>/loss_<term>`` for a mixture.

A PNG of predictions vs ground truth for the first validation batch is written at every validation into
``<log_dir>/predictions/``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn import functional as tnf

from next3d_gen.errors import UserError
from next3d_gen.h5 import DEPTH_KINDS
from next3d_gen.labels import IGNORE_INDEX, SYNTH, LabelSpace
from synthforge import losses as L
from synthforge import metrics
from synthforge.models.multitask import TaskOutputs

log = logging.getLogger(__name__)


def adamw(params: Any, **kwargs: Any) -> torch.optim.AdamW:
    """AdamW over ``params`` (tensors or parameter groups), with PyTorch's fused kernel when every parameter is a
    floating-point tensor on a CPU or CUDA device (one kernel for all parameters instead of a loop per tensor: the
    demo network's update takes 3.6 ms instead of 10 ms on 2 CPU cores; same updates up to float rounding)."""
    params = list(params)
    tensors = [t for g in params for t in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(tensors) and all(t.is_floating_point() and t.device.type in ("cpu", "cuda") for t in tensors)
    return torch.optim.AdamW(params, fused=fused, **kwargs)


def _given_hparams() -> bool:
    """True when LightningCLI provides the hyper-parameters (the network's class_path / init_args config)."""
    try:
        from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
    except ImportError:  # pragma: no cover - other Lightning versions
        return False
    return _given_hyperparameters.get() is not None


class MultiTaskSystem(pl.LightningModule):
    """Trains a :class:`~synthforge.models.MultiTaskNet`-like network (injected, any ``nn.Module`` returning
    :class:`~synthforge.models.TaskOutputs`) on SynthForge batches.

    Args:
        net: the network (configs give it as class_path / init_args).
        loss: loss weights and SSL warp ranges.
        lr: head learning rate (AdamW).
        trunk_lr: trunk learning rate (default: ``lr``).
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        warmup_steps: linear warm-up optimiser steps.
        lr_floor: the cosine schedule ends at ``lr_floor`` x the initial rate of each group.
        schedule_steps: length of the cosine schedule in optimiser steps (default: the trainer's estimate).
        schedule_by_time: when the trainer has a ``max_time``, the cosine also advances with the fraction of that
            time used, and the schedule position is whichever of the step and time fractions is further along, so
            the rate reaches its floor when training stops, whichever limit stops it (a time-capped run on a slow
            machine still ends annealed).
        png_rows: samples drawn in the validation PNG (0 = no PNG).
    """

    def __init__(
        self,
        net: nn.Module,
        loss: L.LossConfig | None = None,
        lr: float = 1e-3,
        trunk_lr: float | None = None,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        lr_floor: float = 0.01,
        schedule_steps: int | None = None,
        schedule_by_time: bool = True,
        png_rows: int = 4,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=[] if _given_hparams() else ["net"])
        self.net = net
        self.loss_config = loss or L.LossConfig()
        self.lr = lr
        self.trunk_lr = lr if trunk_lr is None else trunk_lr
        self.weight_decay = weight_decay
        self.betas = tuple(betas)
        self.warmup_steps = warmup_steps
        self.lr_floor = lr_floor
        self.schedule_steps = schedule_steps
        self.schedule_by_time = schedule_by_time
        self._timer: pl.callbacks.Timer | None = None
        self._time_t = 0.0  # fraction of max_time used, refreshed at each training batch (same on every rank)
        self.png_rows = png_rows
        self.label_space: LabelSpace = SYNTH
        self.crop_size: int | None = None
        self.source_names: tuple[str, ...] = ()
        self.val_source_names: tuple[str, ...] = ()
        self._val: dict[str, torch.Tensor] = {}
        self._val_png_batch: tuple | None = None

    # -- setup -------------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        self.check_data(getattr(self.trainer, "datamodule", None) if self._trainer is not None else None)

    def check_data(self, dm: object | None) -> None:
        """Take the label space and crop size of a datamodule and check the network fits them.

        ``synthforge train`` calls this before the Trainer is built, so that a mismatch is the only line printed.

        Raises:
            UserError: the segmentation head's class count differs from the label space's, or the crop size is not a
                multiple of the network's size divisor.
        """
        if dm is not None and hasattr(dm, "label_space"):
            self.label_space = dm.label_space
            self.crop_size = getattr(dm, "crop_size", None)
            self.source_names = tuple(getattr(dm, "source_names", ()))
            self.val_source_names = tuple(getattr(dm, "val_source_names", ()))
        c = getattr(self.net, "num_classes", None)
        if c is not None and c != self.label_space.num_classes:
            raise UserError(
                f"model.net seg_head has {c} classes but the dataset's label space "
                f"'{self.label_space.name}' has {self.label_space.num_classes}"
            )
        div = getattr(self.net, "size_divisor", None)
        if div and self.crop_size and self.crop_size % div:
            raise UserError(f"data.crop_size {self.crop_size} must be a multiple of {div} for this network")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["synthforge"] = {"label_space": self.label_space.to_json(), "crop_size": self.crop_size}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        meta = checkpoint.get("synthforge", {})
        if "label_space" in meta:
            self.label_space = LabelSpace.from_json(meta["label_space"])
        self.crop_size = meta.get("crop_size", self.crop_size)

    def forward(self, image: torch.Tensor) -> TaskOutputs:
        return self.net(image)

    # -- losses ------------------------------------------------------------------------------------------------
    def _task_terms(self, out: TaskOutputs, batch: dict[str, torch.Tensor]) -> dict[str, L.Term | torch.Tensor]:
        """Every weighted task term: a per-sample :class:`~synthforge.losses.Term` (``seg_dice``: a batch value).

        Batches without the presence keys (``has_*``, ``depth_kind``) are taken as fully labelled with metric depth.
        """
        cfg = self.loss_config
        image = batch["image"]
        every = torch.ones(image.shape[0], dtype=torch.bool, device=image.device)

        def has(key: str) -> torch.Tensor:
            return batch[key].bool() if key in batch else every

        terms: dict[str, L.Term | torch.Tensor] = {}
        if cfg.seg:
            terms["seg"] = L.segmentation_terms(out.seg, batch["seg"], batch.get("seg_partial"), has("has_seg"))
        if cfg.seg_dice:
            terms["seg_dice"] = L.dice_loss(out.seg, batch["seg"])
        kind = batch.get("depth_kind")
        metric = every if kind is None else kind == DEPTH_KINDS.index("metric")
        if cfg.depth:
            terms["depth"] = L.masked_l1_terms(out.depth, batch["depth"], batch["depth_mask"], metric)
        if cfg.depth_ssi and kind is not None:
            relative = kind == DEPTH_KINDS.index("relative")
            terms["depth_ssi"] = L.ssi_depth_terms(out.depth, batch["depth"], batch["depth_mask"], relative)
        if cfg.depth_l2:
            terms["depth_l2"] = L.masked_mse_terms(out.depth, batch["depth"], batch["depth_mask"], metric)
        if cfg.heatmap or cfg.coord:
            stride = getattr(getattr(self.net, "landmark_head", None), "stride", 4)
            valid = batch["landmarks_in_crop"] & has("has_landmarks")[:, None]
            hm, co = L.landmark_terms(
                out.heatmaps, out.landmark_stacks, batch["landmarks"], valid, stride, cfg.heatmap_sigma
            )
            if cfg.heatmap:
                terms["heatmap"] = hm
            if cfg.coord:
                terms["coord"] = co
        if cfg.normal and out.normal is not None and "normal" in batch:
            terms["normal"] = L.normal_loss_terms(out.normal, batch["normal"], batch["depth_mask"], has("has_normal"))
        if cfg.uv and out.uv is not None and "uv" in batch:
            terms["uv"] = L.masked_l1_terms(out.uv, batch["uv"], batch["depth_mask"], has("has_uv"))
        return terms

    def _task_losses(self, out: TaskOutputs, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Batch values of :meth:`_task_terms` (pooled over the samples that have each label)."""
        return {k: v.value() if isinstance(v, L.Term) else v for k, v in self._task_terms(out, batch).items()}

    def _weighted(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        cfg = self.loss_config
        return sum(getattr(cfg, k) * v for k, v in terms.items())

    def _log_terms(self, terms: dict[str, L.Term | torch.Tensor], batch_size: int) -> None:
        """``train/loss_<term>`` for the terms some sample of the batch has ground truth for (per step, not synced
        across ranks, so the logged keys may differ between steps and ranks). The counts reach the host in one
        transfer (one device sync per step, not one per term)."""
        keys = [k for k, v in terms.items() if isinstance(v, L.Term)]
        counts = torch.stack([terms[k].den.float().sum() for k in keys]).tolist() if keys else []
        present = {k for k, c in zip(keys, counts, strict=True) if c > 0}
        for k, v in terms.items():
            if not isinstance(v, L.Term) or k in present:
                self.log(f"train/loss_{k}", v.value() if isinstance(v, L.Term) else v, batch_size=batch_size)

    def _log_sources(self, terms: dict[str, L.Term | torch.Tensor], batch: dict[str, torch.Tensor]) -> None:
        """``train/<source>/loss_<term>`` and ``train/<source>/loss`` (weighted sum of its per-sample terms) for each
        source of a mixture present in the batch (samples and counts per source reach the host in one transfer)."""
        names = self.source_names
        if len(names) < 2 or "source" not in batch:
            return
        source = batch["source"]
        keys = [k for k, v in terms.items() if isinstance(v, L.Term)]
        onehot = tnf.one_hot(source.long(), len(names)).to(torch.float32)  # (B, S)
        dens = torch.stack([terms[k].den.float() for k in keys]) if keys else onehot.new_zeros(0, len(source))
        table = torch.cat([onehot.sum(0, keepdim=True), dens @ onehot]).tolist()  # (1 + T, S)
        for s, name in enumerate(names):
            n = int(table[0][s])
            if n == 0:
                continue
            select = source == s
            total = 0.0
            for t, key in enumerate(keys):
                if table[1 + t][s] > 0:
                    value = terms[key].value(select)
                    total = total + getattr(self.loss_config, key) * value
                    self.log(f"train/{name}/loss_{key}", value, batch_size=n)
            self.log(f"train/{name}/loss", total, batch_size=n)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self.net(batch["image"])
        term_sums = self._task_terms(out, batch)
        terms = {k: v.value() if isinstance(v, L.Term) else v for k, v in term_sums.items()}
        cfg = self.loss_config
        if cfg.ssl:
            terms["ssl"] = L.affine_consistency_loss(
                self.net.trunk, batch["image"], out.features, cfg.ssl_rotation_deg, cfg.ssl_scale, cfg.ssl_shift
            )
        total = self._weighted(terms)
        bs = batch["image"].shape[0]
        self.log("train/loss", total, prog_bar=True, batch_size=bs)
        self._log_terms({**term_sums, **({"ssl": terms["ssl"]} if "ssl" in terms else {})}, bs)
        self._log_sources(term_sums, batch)
        if "damaged_skipped" in batch:  # rows failing their checksum, skipped by the dataset (warned per row there)
            # running total of this run (summed over ranks); a per-step value survives log_every_n_steps, and no
            # epoch-level state enters checkpoints
            self._damaged_rows = batch["damaged_skipped"].sum() + getattr(self, "_damaged_rows", 0)
            self.log("train/damaged_rows_skipped", self._damaged_rows.float(), reduce_fx="sum", batch_size=bs,
                     sync_dist=True)  # fmt: skip
        return total

    # -- validation --------------------------------------------------------------------------------------------
    _VAL_SUMS = ("nme_sum", "n_img", "seg_img", "d_sq", "d_n", "d_img", "ssi_sq", "ssi_n", "ssi_img")
    _TERMS = ("seg", "seg_dice", "depth", "depth_ssi", "depth_l2", "heatmap", "coord", "normal", "uv")
    """Task terms :meth:`_task_terms` may return (their validation sums are kept per source)."""

    def on_validation_epoch_start(self) -> None:
        c = self.label_space.num_classes
        k = max(len(self.val_source_names), 1)
        self._val = {"cm": torch.zeros(k, c, c, dtype=torch.int64, device=self.device)}
        for key in (*self._VAL_SUMS, *(f"{s}/{t}" for t in self._TERMS for s in ("num", "den"))):
            self._val[key] = torch.zeros(k, dtype=torch.float64, device=self.device)
        self._val_png_batch = None

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self.net(batch["image"])
        terms = self._task_terms(out, batch)
        bs = batch["image"].shape[0]
        seg_pred = out.seg.argmax(1)
        acc = self._val
        every = torch.ones(bs, dtype=torch.bool, device=seg_pred.device)
        source = batch.get("source", torch.zeros(bs, dtype=torch.int64, device=seg_pred.device))
        source = source.clamp(0, acc["cm"].shape[0] - 1)
        has_lm = batch["has_landmarks"].bool() if "has_landmarks" in batch else every
        kind = batch.get("depth_kind")
        metric = every if kind is None else kind == DEPTH_KINDS.index("metric")
        relative = ~every if kind is None else kind == DEPTH_KINDS.index("relative")
        mask = batch["depth_mask"].bool()
        seg_gt = batch["seg"]
        if "seg_partial" in batch:
            seg_gt = metrics.resolve_partial_labels(seg_pred, seg_gt, batch["seg_partial"])
        e = metrics.nme(out.landmarks.float(), batch["landmarks"].float(), "inter_ocular")
        aligned = metrics.align_median(out.depth.float(), batch["depth"].float(), mask & metric.view(-1, 1, 1, 1))
        err = metrics.depth_errors(aligned, batch["depth"].float(), mask & metric.view(-1, 1, 1, 1))
        residual, ok = L.ssi_residual(out.depth.float(), batch["depth"].float(), mask)
        ssi = L.per_sample_term(residual.square(), mask, ok & relative)  # squared unitless residuals per image
        for k in source.unique().tolist():
            sel = source == k
            acc["cm"][k] += metrics.confusion_matrix(seg_pred[sel], seg_gt[sel], self.label_space.num_classes)
            acc["seg_img"][k] += (seg_gt[sel] != IGNORE_INDEX).flatten(1).any(1).sum()
            lm_sel = sel & has_lm
            acc["nme_sum"][k] += e[lm_sel].double().sum()
            acc["n_img"][k] += lm_sel.sum()
            acc["d_sq"][k] += err.sq_sum[sel].sum()
            acc["d_n"][k] += err.count[sel].sum().double()
            acc["d_img"][k] += (sel & metric & (err.count > 0)).sum()
            acc["ssi_sq"][k] += ssi.num[sel].double().sum()
            acc["ssi_n"][k] += ssi.den[sel].double().sum()
            acc["ssi_img"][k] += (sel & (ssi.den > 0)).sum()
            for name, v in terms.items():  # pooled over the set: sums of the per-sample terms
                if isinstance(v, L.Term):
                    acc[f"num/{name}"][k] += v.num[sel].double().sum()
                    acc[f"den/{name}"][k] += v.den[sel].double().sum()
                else:  # a batch value (Dice): weighted by the source's samples in the batch
                    acc[f"num/{name}"][k] += v.detach().double() * sel.sum()
                    acc[f"den/{name}"][k] += sel.sum()
        if batch_idx == 0 and self._val_png_batch is None and self.png_rows > 0:
            k = min(self.png_rows, bs)
            keep = ("image", "seg", "depth", "depth_mask", "landmarks")
            self._val_png_batch = (
                {key: batch[key][:k].detach().cpu() for key in keep},
                seg_pred[:k].cpu(),
                out.depth[:k].detach().float().cpu(),
                out.landmarks[:k].detach().float().cpu(),
            )

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        reduce = self.trainer.strategy.reduce
        acc = {
            k: reduce(v.clone(), reduce_op="sum") if self.trainer.world_size > 1 else v for k, v in self._val.items()
        }
        names = self.val_source_names
        if len(names) > 1:
            for k, name in enumerate(names):
                self._log_metrics(f"val/{name}", {key: v[k] for key, v in acc.items()})
        self._log_metrics("val", {key: v.sum(0) for key, v in acc.items()}, prog_bar=True)
        self._save_png()

    def _log_metrics(self, prefix: str, acc: dict[str, torch.Tensor], prog_bar: bool = False) -> None:
        """Log the validation metrics of one set of accumulators (see the module docstring) under ``prefix``."""
        log_kw = {"sync_dist": False, "rank_zero_only": False}
        if acc["cm"].sum() > 0:
            f1 = metrics.f1_scores(acc["cm"])
            self.log(f"{prefix}/seg_f1_mean", metrics.foreground_mean_f1(f1, self.label_space.background), **log_kw)
            for i, name in enumerate(self.label_space.classes):
                if not math.isnan(float(f1[i])):
                    self.log(f"{prefix}/seg_f1/{name}", float(f1[i]), **log_kw)
            for name, value in metrics.merged_f1_scores(acc["cm"], self.label_space.merges).items():
                if not math.isnan(value):
                    self.log(f"{prefix}/seg_f1_merged/{name}", value, **log_kw)
        if acc["n_img"] > 0:
            self.log(f"{prefix}/nme", float(100.0 * acc["nme_sum"] / acc["n_img"]), prog_bar=prog_bar, **log_kw)
        if acc["d_n"] > 0:
            self.log(f"{prefix}/depth_rmse_mm", float(1000.0 * (acc["d_sq"] / acc["d_n"]).sqrt()), **log_kw)
        if acc["ssi_n"] > 0:
            self.log(f"{prefix}/depth_ssi_rmse", float((acc["ssi_sq"] / acc["ssi_n"]).sqrt()), **log_kw)
        counts = {"nme": acc["n_img"], "seg_f1_mean": acc["seg_img"], "depth_rmse_mm": acc["d_img"],
                  "depth_ssi_rmse": acc["ssi_img"]}  # fmt: skip
        for name, n in counts.items():
            self.log(f"{prefix}/count/{name}", float(n), **log_kw)
        values = {t: float(acc[f"num/{t}"] / acc[f"den/{t}"]) for t in self._TERMS if acc[f"den/{t}"] > 0}
        for name, value in values.items():
            self.log(f"{prefix}/loss_{name}", value, **log_kw)
        self.log(f"{prefix}/loss", sum(getattr(self.loss_config, t) * v for t, v in values.items()), **log_kw)

    def _save_png(self) -> None:
        if self._val_png_batch is None or self.trainer.sanity_checking:
            return
        root = self.trainer.log_dir or self.trainer.default_root_dir  # collective under DDP: call on every rank
        if not self.trainer.is_global_zero:
            return
        from synthforge.visualize import prediction_grid, save_png

        folder = Path(root) / "predictions"
        folder.mkdir(parents=True, exist_ok=True)
        grid = prediction_grid(*self._val_png_batch, label_space=self.label_space, max_rows=self.png_rows)
        save_png(str(folder / f"val_epoch{self.current_epoch:03d}_step{self.global_step:07d}.png"), grid)

    # -- optimisation ------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict:
        trunk = getattr(self.net, "trunk", None)
        trunk_ids = {id(p) for p in trunk.parameters()} if trunk is not None else set()
        trunk_params = [p for p in self.net.parameters() if id(p) in trunk_ids and p.requires_grad]
        head_params = [p for p in self.net.parameters() if id(p) not in trunk_ids and p.requires_grad]
        groups = [{"params": trunk_params, "lr": self.trunk_lr, "name": "trunk"}]
        groups.append({"params": head_params, "lr": self.lr, "name": "heads"})
        groups = [g for g in groups if g["params"]]
        optimizer = adamw(groups, lr=self.lr, weight_decay=self.weight_decay, betas=self.betas)
        total = self.schedule_steps or int(self.trainer.estimated_stepping_batches)
        warmup, floor = self.warmup_steps, self.lr_floor
        self._timer = self._max_time_timer() if self.schedule_by_time else None

        def factor(step: int) -> float:
            if warmup and step < warmup:
                return (step + 1) / warmup
            t = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
            if self._timer is not None:
                t = max(t, self._time_t)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_batch_start(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        if self._timer is None:
            return
        t = _time_fraction(self._timer)
        if self.trainer.world_size > 1:  # rank 0's clock for all, so every rank applies the same learning rate
            t = float(self.trainer.strategy.broadcast(t, src=0))
        self._time_t = t

    def _max_time_timer(self) -> pl.callbacks.Timer | None:
        """The trainer's ``Timer`` callback (present when ``max_time`` is set), or None."""
        if self._trainer is None:
            return None
        return next((cb for cb in self.trainer.callbacks if isinstance(cb, pl.callbacks.Timer)), None)


def _time_fraction(timer: pl.callbacks.Timer) -> float:
    """Fraction in [0, 1] of the ``max_time`` budget used by training so far (resumed runs included)."""
    elapsed = timer.time_elapsed("train")
    remaining = timer.time_remaining("train")
    if remaining is None or elapsed + remaining <= 0:
        return 0.0
    return min(elapsed / (elapsed + remaining), 1.0)


class FinalCheckpoint(pl.Callback):
    """Write ``<checkpoint dir>/final.ckpt`` when training ends, however it ends (max_steps, max_time, ...), and bring
    ``last.ckpt`` up to the same step.

    ``ModelCheckpoint(save_last=True)`` only refreshes ``last.ckpt`` when it saves on its own schedule, so a run
    stopped between two scheduled saves (``max_steps`` not a multiple of ``every_n_train_steps``, ``max_time``)
    would leave ``last.ckpt`` behind ``final.ckpt``, and resuming from it would redo those steps. At the end of
    training this callback saves the last checkpoint of every ``save_last`` ModelCheckpoint that is behind the
    trainer's ``global_step`` (``save_last="link"``: the link points to ``final.ckpt``), so ``last.ckpt`` and
    ``final.ckpt`` hold the same step. Every rank calls ``trainer.save_checkpoint`` (collective under DDP); rank 0
    writes.

    Args:
        filename: file name inside the ModelCheckpoint folder (or ``<default_root_dir>/checkpoints``).
    """

    def __init__(self, filename: str = "final.ckpt") -> None:
        self.filename = filename
        self.path: Path | None = None
        self._at_end = False

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        ckpt_cb = trainer.checkpoint_callback
        folder = getattr(ckpt_cb, "dirpath", None) or str(Path(trainer.default_root_dir) / "checkpoints")
        self.path = Path(folder) / self.filename
        self._at_end = True
        try:
            trainer.save_checkpoint(self.path, weights_only=False)  # the full, resumable state
            for cb in trainer.checkpoint_callbacks:
                self._refresh_last(trainer, cb)
        finally:
            self._at_end = False

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        """End-of-run saves at an epoch's end: store the logger step counter (``_batches_that_stepped``) as
        Lightning's own saves do, before the last batch's increment, because when a run restarts on a new epoch
        Lightning adds 1 to it (it does not when the run restarts mid-epoch). A resumed run then logs its steps
        where an uninterrupted run would (tested both ways in tests/test_train.py)."""
        epoch_loop = trainer.fit_loop.epoch_loop
        if not self._at_end or epoch_loop.batch_progress.current.ready < trainer.num_training_batches:
            return
        state = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.state_dict", {})
        if state.get("_batches_that_stepped", 0) > 0:
            state["_batches_that_stepped"] -= 1

    def _refresh_last(self, trainer: pl.Trainer, cb: pl.Callback) -> None:
        """Save ``cb``'s last checkpoint at the current step unless it already is (Lightning's own ``save_last``
        code path, so its naming, versioning and link settings apply)."""
        from lightning.pytorch.callbacks import ModelCheckpoint

        if not isinstance(cb, ModelCheckpoint) or not cb.save_last:
            return
        if cb.last_model_path and cb._last_global_step_saved == trainer.global_step:
            return  # already saved at this step
        if cb.save_last == "link":
            cb._last_checkpoint_saved = str(self.path)  # link last.ckpt to final.ckpt
        cb._save_last_checkpoint(trainer, cb._monitor_candidates(trainer))
