"""Loss-guided vs uniform sampling at the same budget (issue 13): held-out error on the hardest tenth and on real faces.

    python benchmarks/bench_guided.py [--out DIR] [--scale S] [--rounds R] [--num0 N] [--steps0 S] [--num N]
                                      [--pool P] [--steps S] [--heldout H] [--seed S] [--json OUT]
                                      [--realdata DIR | --no-real]

Protocol (every count scales with ``--scale``). The default budget is 9.2 minutes on 2 CPU cores (measured December
2026): 1,500 training steps in all (300 shared, 600 per arm), 9,300 samples rendered (7,200 of them guided
candidates), the AFW dev set twice and the held-out set three times. Most of each arm's data comes from the guided
rounds (1,200 of 1,600 samples), and three rounds re-score with a fresher network than two would. A smoke run
(``--num0 16 --steps0 3 --rounds 1 --num 8 --pool 16 --steps 3 --heldout 20 --image-size 64``) takes about 3 minutes
on a busy machine. Measure on a quiet machine:

1. **Round 0, shared**: ``--num0`` uniform samples (seed ``--seed``) at ``--image-size`` px, ``--steps0`` steps of
   ``--train-config`` (default ``configs/stage1/demo.yaml`` without its time cap, at 80 px crops), bf16 where native.
   The README's figures were measured with the demo network of that time (3-stage trunk, depth weight 200, heatmap
   weight 1); the demo config has since moved to a 4-stage trunk, depth weight 100 and heatmap weight 2.
2. **Arms**: ``--rounds`` more rounds, each adding ``--num`` samples (seed ``--seed`` + r) and ``--steps`` steps on all
   the data so far, continuing the previous checkpoint (:mod:`synthforge.rounds`). *Guided*: the samples are the hardest
   of ``--pool`` candidates for the previous round's network, ``--uniform-fraction`` of them uniform draws
   (:mod:`synthforge.guide`). *Uniform*: samples 0 .. num-1 of the same seeds. Same sample and step counts; both arms
   start from the same round-0 checkpoint (its files are linked into the uniform arm's folder).
3. **Held-out**: ``--heldout`` uniform samples (seed 10000). Per sample: training loss (the guide's score), landmark
   NME (% of the outer-eye-corner distance, crop pixels), segmentation confusion and depth errors on the validation
   crop. Subsets: all; the **hardest tenth** by the round-0 network's loss (chosen by the shared ancestor, so by
   neither arm); and, to show what "hard" is made of, the tenth with the largest camera yaw, the tenth with the widest
   jaw opening, and the samples with inner landmarks hidden (occluders, or the head itself). Per subset and arm: mean
   NME, mean loss, 1 - the pooled foreground mean F1, pooled depth RMSE (mm, median-aligned), and guided vs uniform as
   a relative change of each error (negative = guided better).
4. **AFW dev set** (``../shared/realdata/afw68``, read its README; ``--no-real`` skips it): 68-point NME of each arm's
   final checkpoint, as ``benchmarks/bench_real_transfer.py`` measures it (no fine-tuning).

Figures go to stdout (Markdown) and ``--json``. Rerunning with the same ``--out`` resumes (finished data and rounds
are kept). The issue's target: at least 10 % lower error than uniform on the hardest tenth at the same budget.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from next3d_gen import h5
from next3d_gen.errors import UserError
from next3d_gen.labels import LANDMARK_GROUPS
from next3d_gen.pipeline import SamplePipeline, generate_shard
from next3d_gen.sampling import load_config
from synthforge import metrics
from synthforge.guide import LossScorer
from synthforge.rounds import Recipe, RoundSpec, round_data, round_dir, run_rounds

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REALDATA = ROOT.parent / "shared" / "realdata"
SEED = 100
HELDOUT_SEED = 10_000
INNER = [i for i in range(68) if i not in LANDMARK_GROUPS["jaw"]]


def build_recipe(args: argparse.Namespace) -> Recipe:
    s = args.scale

    def n(value: int) -> int:
        return max(1, round(value * s))

    rounds = [RoundSpec(n(args.num0), n(args.steps0))]
    rounds += [RoundSpec(n(args.num), n(args.steps), max(n(args.pool), n(args.num))) for _ in range(args.rounds)]
    return Recipe(
        train_config=args.train_config.resolve(),
        generate_config=args.generate_config.resolve(),
        rounds=tuple(rounds),
        seed=args.seed,
        image_size=args.image_size,
        uniform_fraction=args.uniform_fraction,
        train_args=tuple(args.train_args),
    )


def share_round0(guided: Path, uniform: Path) -> None:
    """Give the uniform arm the guided arm's round 0 (data hard-linked, training folder copied)."""
    (uniform / "data").mkdir(parents=True, exist_ok=True)
    src, dst = round_data(guided, 0), round_data(uniform, 0)
    if not dst.exists():
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
    if not round_dir(uniform, 0).exists():
        shutil.copytree(round_dir(guided, 0), round_dir(uniform, 0))


@torch.no_grad()
def per_sample(ckpt: Path, heldout: Path, batch_size: int = 32) -> dict[str, np.ndarray]:
    """Per held-out sample: ``loss``, ``nme`` (%), ``cm`` (C, C) confusion, ``d_sq`` / ``d_n`` depth error sums."""
    scorer = LossScorer(ckpt, option=None)
    net, c = scorer.system.net, scorer.system.label_space.num_classes
    out: dict[str, list] = {k: [] for k in ("loss", "nme", "cm", "d_sq", "d_n")}
    with h5.SampleReader(heldout) as reader:
        for start in range(0, len(reader), batch_size):
            items = [scorer.item(reader[i]) for i in range(start, min(start + batch_size, len(reader)))]
            out["loss"].append(scorer.score_items(items)[0])
            batch = {
                k: torch.stack([it[k] for it in items]) for k in ("image", "seg", "depth", "depth_mask", "landmarks")
            }
            pred = net(batch["image"])
            out["nme"].append(100 * metrics.nme(pred.landmarks.float(), batch["landmarks"]).numpy())
            seg = pred.seg.argmax(1)
            out["cm"] += [
                metrics.confusion_matrix(seg[i : i + 1], batch["seg"][i : i + 1], c).numpy() for i in range(len(items))
            ]
            mask = batch["depth_mask"].bool()
            err = metrics.depth_errors(
                metrics.align_median(pred.depth.float(), batch["depth"], mask), batch["depth"], mask
            )
            out["d_sq"].append(err.sq_sum.double().numpy().reshape(len(items)))
            out["d_n"].append(err.count.double().numpy().reshape(len(items)))
    return {k: np.stack(v) if k == "cm" else np.concatenate(v) for k, v in out.items()}


def attributes(heldout: Path) -> dict[str, np.ndarray]:
    """Per held-out sample: camera yaw (degrees, from the camera centre in the head frame), jaw opening (degrees, the
    x part of the jaw's axis-angle) and the fraction of the 51 inner landmarks not visible."""
    with h5.SampleReader(heldout, fields=["camera_cam2world", "flame_pose", "landmarks_visible"]) as reader:
        rows = [reader[i] for i in range(len(reader))]
    centre = np.stack([r["camera_cam2world"][:3, 3] for r in rows])
    return {
        "yaw_deg": np.degrees(np.arctan2(centre[:, 0], centre[:, 2])),
        "jaw_deg": np.degrees(np.stack([r["flame_pose"][6] for r in rows])),
        "hidden_inner": np.stack([1.0 - r["landmarks_visible"][INNER].mean() for r in rows]),
    }


def top_tenth(values: np.ndarray) -> np.ndarray:
    """Indices of the largest tenth (at least one), ties to the lower index."""
    k = max(1, math.ceil(len(values) / 10))
    return np.sort(np.lexsort((np.arange(len(values)), -values))[:k])


def subset_figures(ps: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, float]:
    cm = torch.from_numpy(ps["cm"][idx].sum(0))
    f1 = metrics.foreground_mean_f1(metrics.f1_scores(cm), 0)
    return {
        "nme": float(ps["nme"][idx].mean()),
        "loss": float(ps["loss"][idx].mean()),
        "seg_f1_error": 1.0 - float(f1),
        "depth_rmse_mm": float(1000 * math.sqrt(ps["d_sq"][idx].sum() / max(ps["d_n"][idx].sum(), 1))),
    }


def afw_figures(ckpt: Path, realdata: Path) -> dict[str, float]:
    """68-point NME figures of ``ckpt`` on the AFW dev set, measured by bench_real_transfer.evaluate_afw."""
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_real_transfer import evaluate_afw

    from synthforge.inference import Predictor

    predictor = Predictor.from_checkpoint(ckpt)
    folder = realdata / "afw68"
    with tqdm(total=len(list(folder.glob("*.pts"))), unit="face", file=sys.stderr, desc="AFW") as bar:
        afw = evaluate_afw(predictor, folder, predictor.crop_scale, bar)
    return {k: afw[k] for k in ("num_faces", "nme_all", "nme_jaw17", "nme_inner51", "fr_10")}


def change(guided: float, uniform: float) -> str:
    return f"{100 * (guided - uniform) / uniform:+.1f} %" if uniform else "n/a"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "bench-guided", help="work folder (default %(default)s)")
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every sample and step count (default 1)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds after round 0 (default 3)")
    ap.add_argument("--num0", type=int, default=400, help="round-0 samples (default 400)")
    ap.add_argument("--steps0", type=int, default=300, help="round-0 training steps (default 300)")
    ap.add_argument("--num", type=int, default=400, help="samples added per round (default 400)")
    ap.add_argument("--pool", type=int, default=2400, help="guided candidates per round (default 2400)")
    ap.add_argument("--steps", type=int, default=200, help="training steps per round (default 200)")
    ap.add_argument("--uniform-fraction", type=float, default=0.2, help="guided rounds' uniform share (default 0.2)")
    ap.add_argument("--heldout", type=int, default=500, help="held-out samples (default 500)")
    ap.add_argument("--image-size", type=int, default=128, help="rendered image side (default 128)")
    ap.add_argument("--train-config", type=Path, default=ROOT / "configs" / "stage1" / "demo.yaml")
    ap.add_argument("--generate-config", type=Path, default=ROOT / "configs" / "generate" / "default.yaml")
    ap.add_argument(
        "--train-args",
        nargs="*",
        default=["--trainer.max_time=null", "--data.crop_size=80"],
        help="extra synthforge train options (default: --trainer.max_time=null --data.crop_size=80, the crop the "
        "figures in the README were measured with)",
    )
    ap.add_argument("--workers", type=int, default=max(1, len(os.sched_getaffinity(0))), help="generating processes")
    ap.add_argument("--realdata", type=Path, default=DEFAULT_REALDATA, help="real data folder (default %(default)s)")
    ap.add_argument("--no-real", action="store_true", help="skip the AFW dev set")
    ap.add_argument(
        "--seed",
        type=int,
        default=SEED,
        help=f"data seed of round r: seed + r (default {SEED}; the held-out set keeps its own)",
    )
    ap.add_argument("--json", type=Path, default=None, help="write the figures there")
    args = ap.parse_args(argv)
    try:
        if args.rounds < 1:
            raise UserError("--rounds must be >= 1")
        if not args.no_real and not (args.realdata / "afw68").is_dir():
            raise UserError(f"--realdata: folder not found: {args.realdata / 'afw68'} (or pass --no-real)")
        recipe = build_recipe(args)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        heldout = args.out / "heldout.h5"
        n_heldout = max(10, round(args.heldout * args.scale))
        config = load_config(args.generate_config, {"seed": HELDOUT_SEED, "image_size": args.image_size})
        print(f"[bench_guided] {n_heldout} held-out samples -> {heldout}", flush=True)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as synthforge generate (the samples' bytes depend on it)
        generate_shard(SamplePipeline(config), str(heldout), n_heldout, workers=args.workers)
        torch.set_num_threads(threads)
        timings["heldout_s"] = time.perf_counter() - t0
        arms = {}
        for arm in ("guided", "uniform"):
            t0 = time.perf_counter()
            folder = args.out / arm
            if arm == "uniform":
                share_round0(args.out / "guided", folder)
            arms[arm] = run_rounds(recipe, folder, uniform=arm == "uniform", workers=args.workers)
            timings[f"{arm}_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        base = per_sample(arms["guided"][0], heldout)
        figures = {arm: per_sample(ckpts[-1], heldout) for arm, ckpts in arms.items()}
        attrs = attributes(heldout)
        subsets = {
            "all": np.arange(len(base["loss"])),
            "hardest tenth (round-0 loss)": top_tenth(base["loss"]),
            "largest |yaw| tenth": top_tenth(np.abs(attrs["yaw_deg"])),
            "widest jaw tenth": top_tenth(attrs["jaw_deg"]),
            "inner landmarks hidden": np.flatnonzero(attrs["hidden_inner"] > 0),
        }
        table = {
            name: {arm: subset_figures(ps, idx) for arm, ps in [("round0", base), *figures.items()]}
            | {"num": int(len(idx))}
            for name, idx in subsets.items()
            if len(idx)
        }
        hard = subsets["hardest tenth (round-0 loss)"]
        makeup = {
            name: {
                "all": float(np.mean(np.abs(v) if name == "yaw_deg" else v)),
                "hardest_tenth": float(np.mean(np.abs(v[hard]) if name == "yaw_deg" else v[hard])),
            }
            for name, v in attrs.items()
        }
        timings["evaluate_s"] = time.perf_counter() - t0
        afw = {}
        if not args.no_real:
            t0 = time.perf_counter()
            afw = {arm: afw_figures(ckpts[-1], args.realdata) for arm, ckpts in arms.items()}
            timings["afw_s"] = time.perf_counter() - t0
    except UserError as err:
        print(f"bench_guided: {err}", file=sys.stderr)
        return 2

    budget = [(s.num, s.pool, s.steps) for s in recipe.rounds]
    print(
        f"\nbudget per arm (round 0 shared): rounds (samples, pool, steps) = {budget}; {recipe.total_steps} steps, "
        f"{sum(s.num for s in recipe.rounds)} samples at {args.image_size} px; guided uniform share "
        f"{recipe.uniform_fraction}; held-out {n_heldout}"
    )
    print("\n| held-out subset | n | metric | round 0 | uniform | guided | guided vs uniform |\n" + "|---" * 7 + "|")
    for name, row in table.items():
        for key, label in (
            ("nme", "NME %"),
            ("loss", "loss"),
            ("seg_f1_error", "1 - seg F1"),
            ("depth_rmse_mm", "depth RMSE mm"),
        ):
            g, u, r0 = row["guided"][key], row["uniform"][key], row["round0"][key]
            print(f"| {name} | {row['num']} | {label} | {r0:.3f} | {u:.3f} | {g:.3f} | {change(g, u)} |")
    print(
        "\nhardest tenth vs all held-out: "
        + ", ".join(f"{k} {v['hardest_tenth']:.3g} vs {v['all']:.3g}" for k, v in makeup.items())
    )
    if afw:
        print(
            f"\n| AFW dev set ({afw['guided']['num_faces']} faces), % | uniform | guided | guided vs uniform |\n"
            "|---|---|---|---|"
        )
        for key, label in (
            ("nme_all", "NME, 68 points"),
            ("nme_jaw17", "NME, 17 jaw points"),
            ("nme_inner51", "NME, 51 inner points"),
            ("fr_10", "failure rate at 10 %"),
        ):
            g, u = afw["guided"][key], afw["uniform"][key]
            print(f"| {label} | {u:.2f} | {g:.2f} | {change(g, u)} |")
    print("timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "budget": budget,
                    "uniform_fraction": recipe.uniform_fraction,
                    "seed": recipe.seed,
                    "heldout": n_heldout,
                    "subsets": table,
                    "hardest_tenth_makeup": makeup,
                    "afw": afw,
                    "timings": timings,
                    "checkpoints": {a: [str(c) for c in v] for a, v in arms.items()},
                },
                indent=2,
            )
        )
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
