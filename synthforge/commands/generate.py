"""``synthforge generate``: write labeled synthetic faces to HDF5 shards.

Example::

    synthforge generate --config configs/generate/default.yaml --num 10000 --out data/synth
    synthforge generate --config configs/generate/default.yaml --num 10000 --out data/synth \\
        --num-shards 8 --shard-index 3 --camera.fov_deg '[15, 20]'
    synthforge generate --config configs/generate/default.yaml --num 2000 --out data/hard \
        --guide runs/stage1/.../final.ckpt --pool 8000 --guide-uniform 0.5

``--guide CKPT``: loss-guided sampling (:mod:`synthforge.guide`): ``--pool`` candidates (samples 0 .. P-1 of the
seed) are scored by the checkpoint's training loss, and the dataset is written from the hardest ones plus a
``--guide-uniform`` fraction drawn uniformly from the others, each row with its score (``guide_score``); the selection
is saved beside the output first, so reruns and other shards reuse it.

Options are parsed by jsonargparse from :class:`~next3d_gen.sampling.GenerateConfig` and its section dataclasses,
like ``train`` / ``finetune`` parse theirs: every config key is an option ``--section.key VALUE`` (VALUE parsed as
YAML, checked against the key's type; ``--help`` lists them), and a mapping key takes single entries too
(``--renderer.procedural.long_hair_prob 0``). Values given here replace those of ``--config`` (read by
:func:`~next3d_gen.sampling.load_config`, whose errors name the file); a mapping given here is merged into the
file's. Rerunning an interrupted command resumes it (also after a full disk, once space is freed): only incomplete
samples are generated, and every row of the result (each field's stored bytes) and the file attributes equal those
of an uninterrupted run; the HDF5 container layout around them may differ (see :mod:`next3d_gen.h5`).
"""

from __future__ import annotations

import logging
import os
import sys
from argparse import ArgumentError, Namespace
from typing import TYPE_CHECKING, Any

from next3d_gen.errors import UserError
from next3d_gen.h5 import MAX_IMAGE_SIZE
from synthforge.commands import one_line

if TYPE_CHECKING:
    from jsonargparse import ArgumentParser

RUN_KEYS = (
    "config",
    "num",
    "out",
    "image_size",
    "num_shards",
    "shard_index",
    "workers",
    "threads",
    "no_progress",
    "guide",
    "pool",
    "guide_uniform",
    "guide_batch",
)
"""Destinations of the options that are not :class:`~next3d_gen.sampling.GenerateConfig` keys (``image_size`` is
one, given as ``--image-size``: its range is checked before the config is read)."""


def build_parser() -> ArgumentParser:
    """The jsonargparse parser of ``synthforge generate`` (run options, then every config key as ``--section.key``)."""
    from jsonargparse import ArgumentParser

    from next3d_gen.sampling import GenerateConfig

    p = ArgumentParser(
        prog="synthforge generate",
        description="Write labeled synthetic faces (image, seg, depth, normals, uv, landmarks, camera, FLAME) to HDF5."
        " Config keys default to the built-in values shown; --config replaces them, options given here replace that.",
        exit_on_error=False,
    )
    p.add_argument("--config", type=str | None, default=None, help="YAML generation config (default: built-in)")
    p.add_argument("--num", type=int, required=True, help="number of samples of the whole dataset (all shards)")
    p.add_argument("--out", type=str, required=True, help="output folder (shards + index.json), or a .h5 file")
    p.add_argument(
        "--image-size",
        "--image_size",
        dest="image_size",
        type=int | None,
        default=None,
        help=f"square image side in pixels, 8 to {MAX_IMAGE_SIZE} (overrides image_size)",
    )
    p.add_argument("--num-shards", type=int, default=1, help="split the sample indices into K contiguous shards")
    p.add_argument("--shard-index", type=int, default=0, help="which shard this process writes (0-based)")
    p.add_argument(
        "--workers",
        type=int | None,
        default=None,
        help="generating processes, one torch thread each (default: the CPU cores; 1 = this process)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads of this process when --workers 1")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--guide",
        type=str | None,
        default=None,
        help="stage-I checkpoint: write the candidates it finds hardest (loss-guided sampling)",
    )
    p.add_argument("--pool", type=int | None, default=None, help="--guide: candidates scored (default: 4 x --num)")
    p.add_argument(
        "--guide-uniform",
        type=float,
        default=0.5,
        help="--guide: fraction of the samples drawn uniformly from the other candidates",
    )
    p.add_argument("--guide-batch", type=int, default=32, help="--guide: crops per scoring forward pass")
    p.add_class_arguments(GenerateConfig, skip={"image_size"}, instantiate=False)
    # the section's own option (a whole section as YAML) is taken over by the renderer's name; see _renderer_alias
    renderer = p._option_string_actions["--renderer"]  # noqa: SLF001 - argparse's table of options
    renderer.help, renderer.metavar = "renderer name, same as --renderer.name: procedural | next3d", "NAME"
    return p


def _renderer_alias(argv: list[str]) -> list[str]:
    """``--renderer NAME`` / ``--renderer=NAME`` -> ``--renderer.name ...`` (the option predates the config keys)."""
    out = []
    for token in argv:
        if token == "--renderer" or token.startswith("--renderer="):
            token = "--renderer.name" + token[len("--renderer") :]
        out.append(token)
    return out


def dotted(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"camera": {"fov_deg": (1, 2)}}`` -> ``{"camera.fov_deg": (1, 2)}``: leaves of nested mappings by dotted key
    (so that a mapping given on the command line is merged into the config file's, entry by entry)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out.update(dotted(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def parse_args(argv: list[str]) -> tuple[Namespace, dict[str, Any]] | None:
    """``(run options, config overrides by dotted key)``, or None after ``--help``.

    Raises:
        UserError: an unknown option, a value of the wrong type (one line naming the option).
    """
    parser = build_parser()
    try:
        given = parser.parse_args(_renderer_alias(argv), defaults=False).as_dict()
    except ArgumentError as err:
        raise UserError(one_line(str(err))) from None
    except SystemExit as err:  # --help
        if err.code in (0, None):
            return None
        raise UserError("invalid arguments (see the message above)") from None
    run = Namespace(**{key: given.pop(key, parser.get_default(key)) for key in RUN_KEYS})
    return run, dotted(given)


def main(argv: list[str]) -> int:
    """Run the command; returns the exit status (UserError propagates to the dispatcher: exit 2)."""
    parsed = parse_args(argv)
    if parsed is None:
        return 0
    args, overrides = parsed
    from next3d_gen.pipeline import check_image_size

    if args.image_size is not None:
        check_image_size(args.image_size, "--image-size")
        overrides["image_size"] = args.image_size
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

    guide = None
    if args.guide is not None:
        from synthforge.guide import GuideOptions

        pool = args.pool if args.pool is not None else 4 * args.num
        guide = GuideOptions(args.guide, pool, args.guide_uniform, args.guide_batch)
        guide.check(args.num)
    elif args.pool is not None:
        raise UserError("--pool needs --guide CKPT")

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

    def on_score_start(pool: int) -> None:
        bars.append(
            tqdm(
                total=pool,
                unit="candidate",
                desc="scoring",
                disable=args.no_progress,
                dynamic_ncols=True,
                file=sys.stderr,
            )
        )

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
        shard = (pipeline, args.out, args.num)
        if guide is None:
            writer = generate_shard(
                *shard, args.num_shards, args.shard_index, lambda n: bars[-1].update(n), on_start, workers=workers
            )
        else:
            from synthforge.guide import generate_guided

            writer = generate_guided(
                *shard,
                guide,
                args.num_shards,
                args.shard_index,
                lambda n: bars[-1].update(n),
                on_start,
                workers,
                lambda n: bars[-1].update(n),
                on_score_start,
            )
    finally:
        for bar in bars:
            bar.close()
        torch.set_num_threads(threads_before)
    logging.getLogger(__name__).info("wrote %s", writer.path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
