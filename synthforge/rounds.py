"""Alternating rounds of stage-I training and loss-guided generation (a recipe such as
``configs/stage1/guided_rounds.yaml``; run it with ``synthforge rounds``).

Round ``r`` (0-based) of a recipe:

1. **Data**: ``<out>/data/round-RR.h5``: ``num`` samples of the recipe's generation config with seed ``seed + r``.
   Round 0, rounds without a ``pool`` and every round of a ``uniform`` run are ordinary (uniform) samples 0 .. num-1 of
   that seed; the other rounds are guided by the previous round's final checkpoint (:func:`synthforge.guide.
   generate_guided`: ``pool`` candidates, ``uniform_fraction`` of the rows drawn uniformly).
2. **Training**: ``synthforge train --config <train_config>`` on all the rounds' data so far (``<out>/data/
   train-RR.json``, an index of round-00 .. round-RR), continuing the previous round's final checkpoint
   (``--ckpt_path``: weights, optimiser, schedule and step restored) up to the cumulative step count, with the
   cosine schedule laid over the whole recipe (``--model.schedule_steps`` = the total steps), in
   ``<out>/train/round-RR``. bf16 mixed precision where the hardware runs it natively, as the demo does.

Everything is deterministic per seed and resumable: rerun the same command and finished data files and rounds whose
final checkpoint reached its step count are kept; an interrupted generation resumes (the guided selection is saved
before any row, see :mod:`synthforge.guide`); an interrupted round's training restarts from the previous round's
checkpoint. ``<out>/rounds.json`` lists each finished round's data, checkpoint and step count.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from next3d_gen.errors import UserError
from next3d_gen.h5 import write_json_atomic


@dataclass(frozen=True)
class RoundSpec:
    """One round: ``num`` new samples (guided from ``pool`` candidates unless ``pool`` is None), then ``steps`` more
    training steps."""

    num: int
    steps: int
    pool: int | None = None


@dataclass(frozen=True)
class Recipe:
    """A rounds recipe (YAML keys of the same names; relative paths are relative to the recipe file's folder).

    Attributes:
        train_config: ``synthforge train`` config of every round.
        generate_config: generation config of every round.
        rounds: the rounds, in order (round 0 is uniform: there is no network yet).
        seed: round ``r`` generates with seed ``seed + r``.
        image_size: overrides the generation config's ``image_size`` (None: keep it).
        uniform_fraction: guided rounds: fraction of the rows drawn uniformly (``--guide-uniform``).
        train_args: extra ``synthforge train`` options of every round.
    """

    train_config: Path
    generate_config: Path
    rounds: tuple[RoundSpec, ...]
    seed: int = 0
    image_size: int | None = None
    uniform_fraction: float = 0.5
    train_args: tuple[str, ...] = field(default_factory=tuple)

    @property
    def total_steps(self) -> int:
        return sum(r.steps for r in self.rounds)


def _int(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{where} must be an integer >= {minimum}, got {value!r}")
    return value


def load_recipe(path: str | Path) -> Recipe:
    """Read and check a rounds recipe.

    Raises:
        UserError: missing or unreadable file, unknown key, bad value (naming the file and the key).
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UserError(f"recipe not found: {p}")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"{p}: invalid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{p}: top level must be a mapping")
    allowed = {"train_config", "generate_config", "rounds", "seed", "image_size", "uniform_fraction", "train_args"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise UserError(f"{p}: unknown key(s) {unknown} (allowed: {', '.join(sorted(allowed))})")
    paths = {}
    for key in ("train_config", "generate_config"):
        if not isinstance(data.get(key), str):
            raise UserError(f"{p}: '{key}' must be a path")
        paths[key] = (p.parent / data[key]).resolve()
        if not paths[key].is_file():
            raise UserError(f"{p}: '{key}' not found: {paths[key]}")
    rounds_data = data.get("rounds")
    if not isinstance(rounds_data, list) or not rounds_data:
        raise UserError(f"{p}: 'rounds' must be a non-empty list")
    rounds = []
    for r, spec in enumerate(rounds_data):
        where = f"{p}: rounds[{r}]"
        if not isinstance(spec, dict) or set(spec) - {"num", "steps", "pool"}:
            raise UserError(f"{where} must be a mapping of num, steps and optionally pool")
        num = _int(spec.get("num"), f"{where}.num", 1)
        pool = spec.get("pool")
        if pool is not None and r == 0:
            raise UserError(f"{where}.pool: round 0 has no network to guide it; leave its pool out")
        if pool is not None:
            _int(pool, f"{where}.pool", num)
        rounds.append(RoundSpec(num, _int(spec.get("steps"), f"{where}.steps", 1), pool))
    fraction = data.get("uniform_fraction", 0.5)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
        raise UserError(f"{p}: 'uniform_fraction' must be in [0, 1], got {fraction!r}")
    args = data.get("train_args") or []
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise UserError(f"{p}: 'train_args' must be a list of strings")
    size = data.get("image_size")
    return Recipe(
        train_config=paths["train_config"],
        generate_config=paths["generate_config"],
        rounds=tuple(rounds),
        seed=_int(data.get("seed", 0), f"{p}: seed", 0),
        image_size=None if size is None else _int(size, f"{p}: image_size", 8),
        uniform_fraction=float(fraction),
        train_args=tuple(args),
    )


def round_data(out: Path, r: int) -> Path:
    """The data file of round ``r``."""
    return out / "data" / f"round-{r:02d}.h5"


def round_dir(out: Path, r: int) -> Path:
    """The training folder (``default_root_dir``) of round ``r``."""
    return out / "train" / f"round-{r:02d}"


def _global_step(path: Path) -> int:
    from synthforge.checkpoints import STAGE1, load_checkpoint

    return int(load_checkpoint(path, expect=STAGE1).get("global_step", -1))


def finished_checkpoint(out: Path, r: int, steps: int) -> Path | None:
    """Round ``r``'s newest ``final.ckpt`` if it reached ``steps`` (the cumulative step count), else None."""
    found = sorted(
        round_dir(out, r).glob("lightning_logs/version_*/checkpoints/final.ckpt"), key=lambda p: p.stat().st_mtime
    )
    return found[-1] if found and _global_step(found[-1]) == steps else None


def generate_round(
    recipe: Recipe, out: Path, r: int, guide_ckpt: Path | None, workers: int, show_progress: bool = True
) -> Path:
    """Write (or resume) round ``r``'s data; guided by ``guide_ckpt`` when it is given and the round has a pool."""
    import torch
    from tqdm import tqdm

    from next3d_gen.pipeline import SamplePipeline, generate_shard
    from next3d_gen.sampling import load_config
    from synthforge.guide import GuideOptions, generate_guided

    spec = recipe.rounds[r]
    overrides: dict[str, Any] = {"seed": recipe.seed + r}
    if recipe.image_size is not None:
        overrides["image_size"] = recipe.image_size
    pipeline = SamplePipeline(load_config(recipe.generate_config, overrides))
    path = round_data(out, r)
    bars: list[tqdm] = []

    def on_score_start(pool: int) -> None:
        bars.append(tqdm(total=pool, desc=f"round {r} scoring", unit="candidate", disable=not show_progress))

    def on_start(done: int) -> None:
        bars.append(
            tqdm(total=spec.num, initial=done, desc=f"round {r} data", unit="sample", disable=not show_progress)
        )

    def step(n: int) -> None:
        bars[-1].update(n)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if guide_ckpt is not None and spec.pool is not None:
            options = GuideOptions(guide_ckpt, spec.pool, recipe.uniform_fraction)
            generate_guided(
                pipeline,
                path,
                spec.num,
                options,
                progress=step,
                on_start=on_start,
                workers=workers,
                score_progress=step,
                on_score_start=on_score_start,
            )
        else:
            generate_shard(pipeline, str(path), spec.num, progress=step, on_start=on_start, workers=workers)
    finally:
        for b in bars:
            b.close()
        torch.set_num_threads(threads)
    return path


def train_round(recipe: Recipe, out: Path, r: int, previous: Path | None) -> Path:
    """Train round ``r`` on rounds 0 .. r's data from ``previous`` (the last round's final checkpoint); returns the
    round's final checkpoint (kept as is when it already reached the round's cumulative step count)."""
    from synthforge.commands import train
    from synthforge.commands.demo import native_bf16

    steps = sum(s.steps for s in recipe.rounds[: r + 1])
    done = finished_checkpoint(out, r, steps)
    if done is not None:
        return done
    index = out / "data" / f"train-{r:02d}.json"
    write_json_atomic(index, {"shards": [{"file": round_data(out, k).name} for k in range(r + 1)]})
    argv = [
        "--config",
        str(recipe.train_config),
        f"--data.train={index}",
        f"--trainer.default_root_dir={round_dir(out, r)}",
        f"--trainer.max_steps={steps}",
        f"--model.schedule_steps={recipe.total_steps}",
    ]
    if not native_bf16():
        argv.append("--trainer.precision=32-true")
    argv += list(recipe.train_args)
    if previous is not None:
        argv.append(f"--ckpt_path={previous}")
    status = train.main(argv)
    if status:
        raise UserError(f"round {r}: synthforge train exited with status {status}")
    final = finished_checkpoint(out, r, steps)
    if final is None:
        raise UserError(f"round {r}: training wrote no final.ckpt at step {steps} under {round_dir(out, r)}")
    return final


def run_rounds(
    recipe: Recipe,
    out: str | Path,
    uniform: bool = False,
    workers: int = 1,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Run (or resume) every round of ``recipe`` into ``out``; returns each round's final checkpoint.

    Args:
        uniform: no guidance: every round's data are uniform samples (the same counts, seeds and steps), the
            baseline a guided run is compared with.
        workers: generating processes.
    """
    out = Path(out)
    (out / "data").mkdir(parents=True, exist_ok=True)
    checkpoints: list[Path] = []
    state = []
    for r, spec in enumerate(recipe.rounds):
        guide = None if uniform or r == 0 or spec.pool is None else checkpoints[-1]
        kind = f"guided by round {r - 1}, pool {spec.pool}" if guide is not None else "uniform"
        log(f"[rounds] round {r}: {spec.num} samples ({kind}), seed {recipe.seed + r} -> {round_data(out, r)}")
        data = generate_round(recipe, out, r, guide, workers, show_progress)
        log(f"[rounds] round {r}: training +{spec.steps} steps on rounds 0-{r} -> {round_dir(out, r)}")
        ckpt = train_round(recipe, out, r, checkpoints[-1] if checkpoints else None)
        checkpoints.append(ckpt)
        state.append(
            {
                "round": r,
                "data": str(data),
                "num": spec.num,
                "pool": spec.pool if guide else None,
                "checkpoint": str(ckpt),
                "global_step": sum(s.steps for s in recipe.rounds[: r + 1]),
            }
        )
        write_json_atomic(out / "rounds.json", {"uniform": uniform, "rounds": state})
    return checkpoints
