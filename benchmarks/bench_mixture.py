"""Training step rate on a mixture of generated data and an imported FaceSynthetics-layout set vs generated data alone.

Issue 13's target: training on an imported FaceSynthetics-layout fixture mixed with generated data runs at no less
than 0.9x the step rate of training on generated data alone (same network, batch, crop).

Data (written to a temporary folder):

* generated: ``synthforge generate`` (``configs/generate/default.yaml``, procedural renderer) at ``--image-size``;
* FaceSynthetics layout: another generated set at ``--fs-size`` (512 px, the published dataset's size) written as
  ``NNNNNN.png`` / ``NNNNNN_seg.png`` (FaceSynthetics class ids: each synthetic class goes to the FaceSynthetics class
  whose merge-table row, :data:`next3d_gen.labels.FACESYNTHETICS_TO_SYNTH`, lists it first) / ``NNNNNN_ldmks.txt``
  (68 points + the two eye centres as pupils), then imported with ``synthforge import facesynthetics``: an HDF5 file
  without depth or visibility, 512 px images, segmentation through the merge table with partial labels.

Both runs are the object graph ``synthforge train`` builds from the same config (default ``configs/stage1/demo.yaml``,
its batch, crop, workers and precision; bf16 only where the CPU has it natively, as ``synthforge demo`` does), the
same initial weights, fed by the real DataLoaders: ``--data.train GEN`` vs ``--data.train GEN:1-f,FS:f``. Runs
alternate (generated, mixed, mixed, generated, ...); each run's rate is 1 / its median step time after warm-up. The
figure is the median over the repeats of the ratio of a repeat's two adjacent runs (robust to a shared machine's load
drifting between repeats); the ratio of the best runs is printed beside it. Also printed: the data pipeline's time
per batch (read + crop + augment + collate in the main process, one thread, as one worker does it) for each set.

    python benchmarks/bench_mixture.py [--steps 30] [--repeats 3] [--fraction 0.5]
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import default_collate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import build, lightning_rate  # noqa: E402


def generate(out: Path, num: int, size: int, seed: int) -> Path:
    from synthforge.cli import main

    argv = ["generate", "--config", str(ROOT / "configs" / "generate" / "default.yaml"), "--num", str(num),
            "--image-size", str(size), "--seed", str(seed), "--out", str(out)]  # fmt: skip
    if main(argv) != 0:
        raise SystemExit(f"generation into {out} failed")
    return out


def synth_to_facesynthetics_lut() -> np.ndarray:
    """(256,) uint8: synthetic id -> the FaceSynthetics id whose merge-table row lists it first (255 elsewhere)."""
    from next3d_gen.labels import FACESYNTHETICS, FACESYNTHETICS_TO_SYNTH, SYNTH

    lut = np.full(256, 255, np.uint8)
    for rank in range(max(len(t) for _, t in FACESYNTHETICS_TO_SYNTH.allowed)):
        for name, targets in FACESYNTHETICS_TO_SYNTH.allowed:
            if rank < len(targets) and lut[SYNTH.id(targets[rank])] == 255:
                lut[SYNTH.id(targets[rank])] = FACESYNTHETICS.id(name)
    return lut


def write_facesynthetics_layout(generated: Path, out: Path) -> Path:
    """Write the samples of a generated set as a FaceSynthetics folder (see the module docstring)."""
    from next3d_gen.h5 import SampleReader

    out.mkdir(parents=True)
    lut = synth_to_facesynthetics_lut()
    reader = SampleReader(generated, fields=["image", "seg", "landmarks_2d"])
    for i in range(len(reader)):
        s = reader[i]
        Image.fromarray(s["image"]).save(out / f"{i:06d}.png")
        Image.fromarray(lut[s["seg"]]).save(out / f"{i:06d}_seg.png")
        lm = s["landmarks_2d"]
        pupils = np.stack([lm[36:42].mean(0), lm[42:48].mean(0)])
        np.savetxt(out / f"{i:06d}_ldmks.txt", np.concatenate([lm, pupils]), fmt="%.3f")
    return out


def pipeline_ms(dataset, batch: int, batches: int = 4) -> float:  # noqa: ANN001
    """Milliseconds per batch to read + crop + augment + collate in this process with one thread (best of 2)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    best = float("inf")
    try:
        for _ in range(2):
            t0 = time.perf_counter()
            for b in range(batches):
                default_collate([dataset[(b * batch + j) % len(dataset)] for j in range(batch)])
            best = min(best, (time.perf_counter() - t0) / batches)
    finally:
        torch.set_num_threads(threads)
    return 1000 * best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "stage1" / "demo.yaml"))
    parser.add_argument("--num-generated", type=int, default=256, help="generated training samples")
    parser.add_argument("--num-fs", type=int, default=128, help="FaceSynthetics-layout samples")
    parser.add_argument("--image-size", type=int, default=256, help="generated images, pixels")
    parser.add_argument("--fs-size", type=int, default=512, help="FaceSynthetics-layout images, pixels")
    parser.add_argument("--fraction", type=float, default=0.5, help="weight of the FaceSynthetics source")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per run (after 3 warm-up steps)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import logging
    import warnings

    from next3d_gen.importers.facesynthetics import import_facesynthetics
    from synthforge.commands.demo import native_bf16

    warnings.filterwarnings("ignore")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        gen = generate(tmp / "gen", args.num_generated, args.image_size, seed=0)
        fs_src = write_facesynthetics_layout(generate(tmp / "fs_gen", args.num_fs, args.fs_size, seed=1), tmp / "fs")
        fs = import_facesynthetics(fs_src, tmp / "fs.h5")
        print(f"data written in {time.perf_counter() - t0:.0f} s: {gen} ({args.image_size} px), {fs} "
              f"({args.fs_size} px, FaceSynthetics layout)", flush=True)  # fmt: skip

        mix = f"{gen}:{1 - args.fraction},{fs}:{args.fraction}"
        import lightning.pytorch  # noqa: F401 - sets its loggers' levels on import; quieten them after that

        for name in ("lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.ERROR)
        system, dm_gen, config = build(args.config, str(gen), None)
        _, dm_mix, _ = build(args.config, mix, None)
        precision = str(config["trainer"]["precision"] or "32-true")
        if precision.startswith("bf16") and not native_bf16():
            precision = "32-true"
        import yaml

        # build() reads with --data.num_workers=0; the runs use the config's worker count
        workers = int((yaml.safe_load(Path(args.config).read_text()).get("data") or {}).get("num_workers", 0))
        for dm in (dm_gen, dm_mix):
            dm.num_workers = workers
        bs = dm_gen.batch_size
        ms_gen, ms_mix = pipeline_ms(dm_gen.train_set, bs), pipeline_ms(dm_mix.train_set, bs)
        print(f"  data pipeline per batch of {bs}: generated {ms_gen:.1f} ms, mixed {ms_mix:.1f} ms", flush=True)

        init = copy.deepcopy(system.net.state_dict())
        warmup, n = 3, args.steps + 4
        rates: dict[str, list[float]] = {"generated": [], "mixed": []}
        for r in range(args.repeats):
            for kind in ("generated", "mixed") if r % 2 == 0 else ("mixed", "generated"):
                dm = dm_gen if kind == "generated" else dm_mix
                system.net.load_state_dict(init)
                system.source_names = dm.source_names  # per-source logging as in a real mixed run
                rates[kind].append(lightning_rate(system, dm.train_dataloader(), warmup, precision, steps=n))
                print(f"  {kind} run: {rates[kind][-1]:.3f} steps/s", flush=True)
        best = {k: max(v) for k, v in rates.items()}

        def runs(values: list[float]) -> str:
            return ", ".join(f"{v:.3f}" for v in values)

        print(f"config: {args.config}  batch: {bs}  crop: {dm_gen.crop_size}  precision: {precision}  "
              f"workers: {workers}  threads: {torch.get_num_threads()}")  # fmt: skip
        print(f"generated alone steps/s: {best['generated']:.3f}   runs: {runs(rates['generated'])}")
        print(f"mixed ({1 - args.fraction:g} generated + {args.fraction:g} FaceSynthetics layout) steps/s: "
              f"{best['mixed']:.3f}   runs: {runs(rates['mixed'])}")  # fmt: skip
        paired = sorted(m / g for m, g in zip(rates["mixed"], rates["generated"], strict=True))
        print(f"mixed / generated step rate, best runs: {best['mixed'] / best['generated']:.3f}; "
              f"per repeat (adjacent runs): {runs(paired)}")  # fmt: skip
        print(f"RATIO mixed / generated step rate (median of the repeats' ratios): {float(np.median(paired)):.3f}   "
              f"(target >= 0.9)")  # fmt: skip


if __name__ == "__main__":
    main()
