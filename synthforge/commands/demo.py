"""``synthforge demo --out DIR``: generate -> train -> evaluate -> report, on the built-in head (no assets).

Steps (each resumes when rerun with the same ``--out``: finished shards are kept, training restarts):

1. ``DIR/train``: ``--num-train`` samples (seed 0) and ``DIR/heldout``: ``--num-heldout`` samples (seed 1) with the
   built-in head and the procedural renderer (``configs/generate/default.yaml`` at ``--image-size``).
2. ``synthforge train --config configs/stage1/demo.yaml`` on ``DIR/train`` (logs and checkpoints in ``DIR/runs``),
   in bf16 mixed precision where the hardware runs bf16 natively (:func:`native_bf16`), fp32 elsewhere. Training
   stops at the config's ``trainer.max_time`` or earlier when generation took so long that the whole demo would
   overrun ``--budget`` minutes (:func:`training_time_cap`).
3. Evaluation of the final checkpoint on ``DIR/heldout`` next to trivial baselines on the same crops:
   ``DIR/metrics.json`` and ``DIR/report.png`` (inputs, predictions, ground truth).

Both configs are read from the installed package (:func:`packaged_config`), so the demo runs from a wheel too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from next3d_gen.errors import UserError
from next3d_gen.pipeline import check_image_size
from synthforge.commands import OneLineParser


def packaged_config(rel: str) -> Path:
    """The file of a config shipped inside the package: ``synthforge/configs/<rel>`` (package data; in a source
    checkout a symlink to the repository's ``configs/``, the one copy of every config), found through
    :mod:`importlib.resources` so that it works from any installation.

    Raises:
        UserError: the installation lacks it (a package built without its data files).
    """
    from importlib.resources import files

    path = Path(str(files("synthforge").joinpath("configs", *rel.split("/"))))
    if not path.is_file():
        raise UserError(f"config not found in the installed package: {path} (reinstall synthforge)")
    return path


def native_bf16() -> bool:
    """True when the device the demo trains on runs bf16 natively: a CUDA GPU with bf16 support, or (no GPU) a CPU
    with AMX-BF16 or AVX512-BF16. Elsewhere bf16 autocast is emulated and slower than fp32."""
    import torch

    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    if torch.backends.mps.is_available():
        return False
    get_capabilities = getattr(torch.cpu, "get_capabilities", None)  # torch >= 2.6
    if get_capabilities is None:
        return False
    caps = get_capabilities()
    return bool(caps.get("amx_bf16") or caps.get("avx512_bf16"))


BUDGET_RESERVE_S = 15.0
"""Seconds of the demo's budget kept for what follows training's time cap: building the trainer and the model,
saving the final checkpoint and the held-out evaluation (about 3 s each on 2 cores)."""


def max_time_seconds(value: object) -> float | None:
    """Seconds of a Lightning ``trainer.max_time`` given as ``"DD:HH:MM:SS"`` or ``{days, hours, minutes, seconds}``;
    None for anything else (no time cap, or a form this does not read)."""
    if isinstance(value, str):
        parts = value.split(":")
        if len(parts) == 4 and all(p.strip().isdigit() for p in parts):
            d, h, m, sec = (int(p) for p in parts)
            return float(((d * 24 + h) * 60 + m) * 60 + sec)
        return None
    if isinstance(value, dict) and value and set(value) <= {"days", "hours", "minutes", "seconds"}:
        scale = {"days": 86400.0, "hours": 3600.0, "minutes": 60.0, "seconds": 1.0}
        try:
            return sum(float(v) * scale[k] for k, v in value.items())
        except (TypeError, ValueError):
            return None
    return None


def training_time_cap(budget_s: float, elapsed_s: float, config_cap_s: float, minimum_s: float = 60.0) -> float:
    """Seconds of training that keep the demo within ``budget_s``: the config's cap, or less when the time already
    spent (``elapsed_s``, generation) plus the cap and :data:`BUDGET_RESERVE_S` would overrun the budget; never
    below ``minimum_s`` (a checkpoint to evaluate beats none)."""
    return max(minimum_s, min(config_cap_s, budget_s - elapsed_s - BUDGET_RESERVE_S))


def _format_max_time(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 86400:02d}:{s // 3600 % 24:02d}:{s // 60 % 60:02d}:{s % 60:02d}"


def _mmss(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 60}:{s % 60:02d} min"


def _newest_final_checkpoint(runs: Path) -> Path:
    found = sorted(runs.glob("lightning_logs/version_*/checkpoints/final.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UserError(f"training wrote no final.ckpt under {runs}")
    return found[-1]


def main(argv: list[str]) -> int:
    parser = OneLineParser(
        prog="synthforge demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num-train", type=int, default=4800, help="training samples (default 4800)")
    parser.add_argument("--num-heldout", type=int, default=200, help="held-out samples (default 200)")
    parser.add_argument("--image-size", type=int, default=128, help="rendered image side in pixels (default 128)")
    parser.add_argument("--workers", type=int, default=None, help="generation processes (default: CPU cores)")
    parser.add_argument(
        "--budget",
        type=float,
        default=14.75,
        metavar="MIN",
        help="minutes for the whole demo (default 14.75): when generation is slow, training gets less than the "
        "config's time cap so that the total stays within it; 0: always the config's cap",
    )
    parser.add_argument(
        "--train-args",
        nargs=argparse.REMAINDER,
        default=[],
        help="extra 'synthforge train' options, e.g. --train-args --trainer.max_steps 50",
    )
    args = parser.parse_args(argv)
    for name in ("num_train", "num_heldout"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")
    if not args.budget >= 0:
        raise UserError(f"--budget must be >= 0 minutes, got {args.budget}")
    check_image_size(args.image_size, "--image-size")  # before anything is written
    gen_config = packaged_config("generate/default.yaml")
    train_config = packaged_config("stage1/demo.yaml")
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--out: cannot create {out}: {err.strerror}") from None

    from synthforge.commands import generate, train

    timings: dict[str, float] = {}
    workers = [] if args.workers is None else ["--workers", str(args.workers)]
    for split, num, seed in (("train", args.num_train, 0), ("heldout", args.num_heldout, 1)):
        t0 = time.perf_counter()
        print(f"[demo] generating {num} {split} samples at {args.image_size} px -> {out / split}", flush=True)
        status = generate.main(
            [
                "--config",
                str(gen_config),
                "--num",
                str(num),
                "--out",
                str(out / split),
                "--seed",
                str(seed),
                "--image-size",
                str(args.image_size),
                *workers,
            ]
        )
        if status:
            return status
        timings[f"generate_{split}_s"] = time.perf_counter() - t0

    cap_args: list[str] = []
    own_cap = any(a.startswith("--trainer.max_time") for a in args.train_args)
    if args.budget > 0 and not own_cap:
        import yaml

        config_cap = max_time_seconds(
            (yaml.safe_load(train_config.read_text()) or {}).get("trainer", {}).get("max_time")
        )
        spent = sum(timings.values())
        if config_cap is not None:
            cap = training_time_cap(args.budget * 60, spent, config_cap)
            if int(cap) < int(config_cap):  # whole seconds, as max_time is written
                cap_args = [f"--trainer.max_time={_format_max_time(cap)}"]
                print(
                    f"[demo] generation took {_mmss(spent)}: training capped at {_mmss(cap)} instead of "
                    f"{_mmss(config_cap)} to keep the demo within --budget {args.budget:g} min",
                    flush=True,
                )

    t0 = time.perf_counter()
    runs = out / "runs"
    precision = [] if native_bf16() else ["--trainer.precision=32-true"]  # demo.yaml asks for bf16-mixed
    print(
        f"[demo] training {train_config} ({'bf16-mixed' if not precision else 'fp32: no native bf16'}) -> {runs}",
        flush=True,
    )
    status = train.main(
        [
            "--config",
            str(train_config),
            f"--data.train={out / 'train'}",
            f"--trainer.default_root_dir={runs}",
            *precision,
            *cap_args,
            *args.train_args,
        ]
    )
    if status:
        return status
    timings["train_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    from synthforge.evaluation import evaluate_synthetic

    ckpt = _newest_final_checkpoint(runs)
    print(f"[demo] evaluating {ckpt} on {out / 'heldout'}", flush=True)
    metrics = evaluate_synthetic(ckpt, out / "heldout", png_path=out / "report.png")
    timings["evaluate_s"] = time.perf_counter() - t0
    metrics = {**metrics, "checkpoint": str(ckpt), "timings": timings}
    tmp = out / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2))
    os.replace(tmp, out / "metrics.json")

    rows = [("landmark NME (%)", "nme"), ("segmentation F1 mean", "seg_f1_mean"), ("depth RMSE (mm)", "depth_rmse_mm")]
    print("\n| metric | model | trivial baseline |\n|---|---|---|")
    for label, key in rows:
        print(f"| {label} | {metrics[key]:.3f} | {metrics['baseline_' + key]:.3f} |")
    total = sum(timings.values())
    print(f"\nwrote {out / 'metrics.json'} and {out / 'report.png'} ({total / 60:.1f} min)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
