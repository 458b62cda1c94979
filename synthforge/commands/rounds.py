"""``synthforge rounds --recipe RECIPE.yaml --out DIR [--uniform]``: alternate stage-I training and loss-guided
generation, round by round (:mod:`synthforge.rounds`; recipe: ``configs/stage1/guided_rounds.yaml``).

Example::

    synthforge rounds --recipe configs/stage1/guided_rounds.yaml --out runs/guided
    synthforge rounds --recipe configs/stage1/guided_rounds.yaml --out runs/uniform --uniform   # the baseline

Rerunning the same command resumes it: finished data files and rounds are kept.
"""

from __future__ import annotations

import argparse
import os
import sys

from next3d_gen.errors import UserError
from synthforge.commands import OneLineParser


def main(argv: list[str]) -> int:
    """Run the command; returns the exit status (UserError propagates to the dispatcher: exit 2)."""
    p = OneLineParser(
        prog="synthforge rounds", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--recipe", required=True, help="rounds recipe (e.g. configs/stage1/guided_rounds.yaml)")
    p.add_argument("--out", required=True, help="output folder (data/, train/, rounds.json)")
    p.add_argument(
        "--uniform",
        action="store_true",
        help="no guidance: every round's samples drawn uniformly (same counts, seeds and steps)",
    )
    p.add_argument("--workers", type=int, default=None, help="generating processes (default: the CPU cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    workers = args.workers if args.workers is not None else max(1, len(os.sched_getaffinity(0)))
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    from synthforge.rounds import load_recipe, run_rounds

    recipe = load_recipe(args.recipe)
    checkpoints = run_rounds(
        recipe, args.out, uniform=args.uniform, workers=workers, show_progress=not args.no_progress
    )
    print(f"[rounds] final checkpoint: {checkpoints[-1]}", flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
