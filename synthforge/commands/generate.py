"""``synthforge generate``: write labeled synthetic faces to HDF5 shards.

Example::

    synthforge generate --config configs/generate/default.yaml --num 10000 --out data/synth
    synthforge generate --config configs/generate/default.yaml --num 10000 --out data/synth \\
        --num-shards 8 --shard-index 3 --camera.fov_deg '[15, 20]'

Any config key can be overridden as ``--section.key VALUE`` (VALUE is parsed as YAML). Rerunning an interrupted
command resumes it (also after a full disk, once space is freed): only incomplete samples are generated, and every
row of the result (each field's stored bytes) and the file attributes equal those of an uninterrupted run; the HDF5
container layout around them may differ (see :mod:`next3d_gen.h5`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from next3d_gen.errors import UserError
from next3d_gen.h5 import MAX_IMAGE_SIZE
from synthforge.commands import OneLineParser


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="synthforge generate",
        description="Write labeled synthetic faces (image, seg, depth, normals, uv, landmarks, camera, FLAME) to HDF5.",
        epilog="Extra options --section.key VALUE override config keys (VALUE parsed as YAML).",
    )
    p.add_argument("--config", help="YAML generation config (default: built-in defaults)")
    p.add_argument("--num", type=int, required=True, help="number of samples of the whole dataset (all shards)")
    p.add_argument("--out", required=True, help="output folder (shards + index.json), or a .h5 file for one shard")
    p.add_argument("--seed", type=int, help="global seed (overrides the config's seed)")
    p.add_argument(
        "--image-size", type=int, help=f"square image side in pixels, 8 to {MAX_IMAGE_SIZE} (overrides image_size)"
    )
    p.add_argument("--renderer", help="renderer name (overrides renderer.name): procedural | next3d")
    p.add_argument("--num-shards", type=int, default=1, help="split the sample indices into K contiguous shards")
    p.add_argument("--shard-index", type=int, default=0, help="which shard this process writes (0-based)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="generating processes, one torch thread each (default: the number of CPU cores; 1 = this process)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads of this process when --workers 1")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def parse_overrides(extra: list[str]) -> dict[str, object]:
    """``["--a.b", "1", "--c.d=[1, 2]"]`` -> ``{"a.b": 1, "c.d": [1, 2]}`` (values parsed as YAML)."""
    import yaml

    out: dict[str, object] = {}
    i = 0
    while i < len(extra):
        token = extra[i]
        if not token.startswith("--") or len(token) < 3:
            raise UserError(f"unexpected argument {token!r}")
        key, eq, value = token[2:].partition("=")
        if not eq:
            if i + 1 >= len(extra):
                raise UserError(f"option --{key} needs a value")
            value = extra[i + 1]
            i += 1
        i += 1
        key = key.replace("-", "_")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise UserError(f"--{key}: cannot parse value {value!r}") from None
    return out


def main(argv: list[str]) -> int:
    """Run the command; returns the exit status (UserError propagates to the dispatcher: exit 2)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    overrides = parse_overrides(extra)
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.image_size is not None:
        if not 8 <= args.image_size <= MAX_IMAGE_SIZE:
            raise UserError(f"--image-size must be in [8, {MAX_IMAGE_SIZE}] pixels, got {args.image_size}")
        overrides["image_size"] = args.image_size
    if args.renderer is not None:
        overrides["renderer.name"] = args.renderer
    if args.num < 0:
        raise UserError(f"--num must be >= 0, got {args.num}")
    if args.num_shards < 1:
        raise UserError(f"--num-shards must be >= 1, got {args.num_shards}")
    if not 0 <= args.shard_index < args.num_shards:
        raise UserError(f"--shard-index must be in [0, {args.num_shards}), got {args.shard_index}")
    if args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    workers = args.workers if args.workers is not None else max(1, len(os.sched_getaffinity(0)))
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")

    from next3d_gen.sampling import load_config

    config = load_config(args.config, overrides)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import torch
    from tqdm import tqdm

    from next3d_gen import h5
    from next3d_gen.pipeline import SamplePipeline, generate_shard

    start, stop = h5.shard_range(args.num, args.num_shards, args.shard_index)
    pipeline = SamplePipeline(config)
    bars: list[tqdm] = []

    def on_start(already_done: int) -> None:
        bars.append(
            tqdm(
                total=stop - start,
                initial=already_done,  # resumed rows: counted, but not in the samples/s rate
                unit="sample",
                desc=f"shard {args.shard_index}/{args.num_shards}",
                disable=args.no_progress,
                dynamic_ncols=True,
                file=sys.stderr,
            )
        )

    threads_before = torch.get_num_threads()  # restored on return: callers (the demo) train in this process next
    torch.set_num_threads(args.threads)
    try:
        writer = generate_shard(
            pipeline, args.out, args.num, args.num_shards, args.shard_index, lambda n: bars[0].update(n), on_start,
            workers=workers,
        )
    finally:
        for bar in bars:
            bar.close()
        torch.set_num_threads(threads_before)
    logging.getLogger(__name__).info("wrote %s", writer.path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
