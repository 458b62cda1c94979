"""``synthforge evaluate``: benchmark metrics of a fine-tuned checkpoint, the paper table, JSON and CSV.

Example::

    synthforge evaluate --config configs/finetune/w300.yaml --data.root /data/300W --ckpt finetune.ckpt \
        --out results/w300.json

300W: NME (%) normalised by the outer eye corners (36, 45) on common, challenge and full, failure rate (%) and
AUC (x 100) at 8% and 10%. LaPa / CelebAMask-HQ: per-class F1 (%) from a confusion matrix accumulated over the
whole split in the original annotation frame, the papers' columns and their mean (LaPa also with the mouth merged).
The config's ``model`` and ``trainer`` sections are accepted and ignored (the model comes from ``--ckpt``), except
``--model.backbone``, which overrides the stage-I checkpoint path stored in ``--ckpt``.
"""

from __future__ import annotations

import logging
import math
from argparse import ArgumentError
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ActionConfigFile, ArgumentParser

from label_finetune.datasets.datamodule import FinetuneDataModule
from label_finetune.evaluation import markdown_table, nme_summary, run_split, table_rows, write_results
from label_finetune.system import FinetuneSystem
from next3d_gen.errors import UserError
from synthforge.checkpoints import FINETUNE, build_finetune_system, load_checkpoint

log = logging.getLogger(__name__)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="synthforge evaluate", description=__doc__.split("\n\n")[0], exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="finetune config (its data section is used)")
    parser.add_class_arguments(FinetuneDataModule, "data")
    parser.add_class_arguments(FinetuneSystem, "model", instantiate=False)
    parser.add_argument("--trainer", type=dict | None, default=None, help="ignored (accepted from finetune configs)")
    parser.add_argument("--seed_everything", type=bool | int, default=True, help="ignored")
    parser.add_argument("--ckpt_path", type=str | None, default=None, help="ignored (finetune's resume option)")
    for key in ("optimizer", "lr_scheduler"):  # present in configs saved by older LightningCLI runs
        parser.add_argument(f"--{key}", type=dict | None, default=None, help="ignored")
    parser.add_argument("--ckpt", type=str, required=True, help="fine-tuned checkpoint (synthforge finetune)")
    parser.add_argument(
        "--split",
        type=str | None,
        default=None,
        help="comma-separated splits (default: 300W common,challenge,full; others: test)",
    )
    parser.add_argument("--out", type=str, required=True, help="results JSON; the CSV table is written beside it")
    parser.add_argument("--limit", type=int | None, default=None, help="evaluate only the first N images per split")
    parser.add_argument("--label", type=str, default="ours", help="row label of our results in the table")
    return parser


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING)
    parser = build_parser()
    try:
        cfg = parser.parse_args(argv or ["--help"])
    except ArgumentError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        raise UserError(" | ".join(lines[:3])[:400]) from None
    ckpt = Path(cfg.ckpt)
    if not ckpt.is_file():
        raise UserError(f"--ckpt: no such checkpoint: {ckpt}")
    # read safely (nothing in the file runs) and check that it is a fine-tuned checkpoint, before anything else
    state = load_checkpoint(ckpt, "--ckpt", expect=FINETUNE)
    dm: FinetuneDataModule = parser.instantiate_classes(cfg).data
    if cfg.split:
        splits = [s.strip() for s in cfg.split.split(",") if s.strip()]
    else:
        splits = ["common", "challenge", "full"] if dm.dataset == "w300" else [dm.test_split]
    for i, split in enumerate(splits):  # every file and annotation is checked before the model is built
        if not (split == "full" and {"common", "challenge"} <= set(splits[:i])):  # (full = common + challenge)
            dm.dataset_for(split, return_original=True)
    backbone = cfg.model.backbone
    overrides = {"backbone": backbone, "stage1_config": None} if backbone else {}
    model = build_finetune_system(state, ckpt, "--ckpt", **overrides)
    del state
    if model.dataset != dm.dataset:
        raise UserError(f"--ckpt was fine-tuned on {model.dataset}, but --data.dataset is {dm.dataset}")
    if dm.resolution != model.hparams.resolution:
        log.warning(
            "using the checkpoint's resolution %d instead of --data.resolution %d",
            model.hparams.resolution,
            dm.resolution,
        )
        dm.resolution = model.hparams.resolution

    results: dict[str, Any] = {
        "dataset": dm.dataset,
        "checkpoint": str(ckpt),
        "backbone": model.hparams.backbone,
        "resolution": dm.resolution,
        "tasks": list(model.tasks),
        "with_features": bool(model.hparams.with_features),
        "crop": dm.crop.__dict__,
        "splits": {},
    }
    total_images, total_seconds, steady_images, steady_seconds = 0, 0.0, 0, 0.0
    nme_values: dict[str, torch.Tensor] = {}
    for split in splits:
        if split == "full" and "common" in nme_values and "challenge" in nme_values:
            nme_values["full"] = torch.cat([nme_values["common"], nme_values["challenge"]])
            results["splits"]["full"] = nme_summary(nme_values["full"])
            continue
        ds = dm.dataset_for(split, return_original=True)
        run = run_split(model, ds, dm.val_batch_size, dm.num_workers, cfg.limit, progress=True)
        total_images += run["images"]
        total_seconds += run["seconds"]
        steady_images += run["steady_images"]
        steady_seconds += run["steady_seconds"]
        entry: dict[str, Any] = {"images": run["images"]}
        if run["nme"] is not None:
            nme_values[split] = run["nme"].all()
            entry.update(nme_summary(nme_values[split]))
        if run["seg"] is not None:
            acc = run["seg"]
            key = "lapa" if dm.dataset == "lapa" else "celebamask_hq"
            columns = acc.column_f1(key)
            columns["mean"] = _nanmean(columns.values())
            if dm.dataset == "lapa":
                columns["mean_mouth_merged"] = _nanmean(acc.column_f1("lapa_mouth").values())
            entry["columns"] = columns
            entry["per_class_f1"] = acc.per_class_f1()
            entry["confusion"] = acc.confusion.tolist()
        results["splits"][split] = entry
    ips = total_images / total_seconds if total_seconds > 0 else float("nan")
    steady = steady_images / steady_seconds if steady_images and steady_seconds > 0 else float("nan")
    results["throughput"] = {
        "images": total_images,
        "seconds": total_seconds,
        "images_per_second": ips,
        "images_per_second_after_first_batch": steady,
        "device": str(next(model.parameters()).device),
    }
    ours = table_rows(dm.dataset, results)
    results["table"] = ours
    out = Path(cfg.out)
    csv_path = write_results(out, results, dm.dataset)
    print(markdown_table(dm.dataset, ours, cfg.label))
    print(
        f"\nevaluation: {total_images} images in {total_seconds:.1f} s = {ips:.2f} images/s "
        f"({'n/a' if math.isnan(steady) else f'{steady:.2f}'} images/s after the first batch; {dm.dataset}, "
        f"{dm.resolution} px, "
        f"batch {dm.val_batch_size}, {results['throughput']['device']})"
    )
    print(f"wrote {out} and {csv_path}")
    return 0


def _nanmean(values: Any) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else float("nan")
