"""Loss-guided sampling of the generator: write the samples the current network finds hardest, mixed with uniform ones.

``synthforge generate --guide CKPT --pool P --num N [--guide-uniform R]`` (:func:`generate_guided`):

1. **Candidates.** Candidate ``j`` (``0 <= j < P``) is sample ``j`` of the ordinary dataset of the same generation
   config and seed: its identity, expression, pose and camera come from
   :func:`next3d_gen.sampling.sample_params`, its lighting, skin, hair, glasses and occluders from the renderer's
   continuation of the same per-sample generator. The uniform dataset of that seed is the first ``N`` candidates.
2. **Scoring.** Each candidate is rendered exactly as it would be written (the config's image size, same bytes),
   cropped as training crops its validation samples (the landmark box x the checkpoint's ``data.crop_scale``,
   resized to its crop size, no augmentation: :meth:`LossScorer.item`) and scored by the checkpoint's own training loss:
   the weighted label terms of :class:`synthforge.system.MultiTaskSystem` (segmentation, depth, heatmap, coordinate,
   and normal / UV when trained, with the checkpoint's weights; not the self-supervised term, which needs no label),
   network in eval mode, fp32; each candidate's loss is computed alone from a batched forward pass (so batch-level
   terms such as Dice cover that candidate's classes only). Why not cheaper renders at a lower resolution: the
   procedural renderer draws per-pixel noise from the sample's generator, so at another image size all its later
   draws (lighting, hair, glasses, occluders) change and the scored image would not be the sample written; and
   rendering is not much cheaper there (measured on this machine, one thread: 25 ms per sample at 64 px, 34 ms at
   128 px, 48 ms at 256 px).
3. **Selection** (:func:`select_candidates`): the ``N - round(N * R)`` hardest candidates (highest float32 score,
   ties to the lower index, non-finite scores last) and ``round(N * R)`` drawn uniformly without replacement from
   the other candidates (numpy generator seeded from the config's seed); dataset rows in candidate order.
4. **Writing**: :func:`next3d_gen.pipeline.generate_shard` with those sample indices; each row also stores its
   score (``guide_score``, :data:`next3d_gen.h5.OPTIONAL_FIELDS`) and every shard's ``generator_config`` attribute
   gains a ``guide`` entry (checkpoint SHA-256, pool, uniform fraction, number of hard rows, SHA-256 of the
   selection), so a shard is never resumed or joined with rows of another selection.

Determinism and resuming: the selection is a function of (config, N, P, R, checkpoint) for a fixed torch thread count
(the forward pass may round differently with another). It is saved before any row is written, atomically, as JSON
beside the output (:func:`selection_path`: ``<out>/guide-selection.json`` for a shard folder, ``<file>.guide.json``
for one ``.h5`` file) with every candidate's score; a rerun (resume after a kill, another shard of the same dataset)
reads it instead of scoring again, so it writes the same rows as an uninterrupted run. A selection file made with
other settings is refused (UserError naming it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from next3d_gen import h5
from next3d_gen.errors import UserError
from next3d_gen.pipeline import SamplePipeline, generate_shard, iter_samples
from synthforge.checkpoints import STAGE1, build_stage1_system, load_checkpoint, stage1_crop_scale
from synthforge.data.dataset import LABEL_FIELDS, crop_item
from synthforge.data.transforms import crop_matrix, landmark_box

SCORE_FIELD = "guide_score"
"""The optional HDF5 field holding each row's score (declared in :data:`next3d_gen.h5.OPTIONAL_FIELDS`)."""
SELECTION_FORMAT = 1
"""Version of the selection file layout."""
_UNIFORM_STREAM = 0x6775696465
"""Second word of the seed sequence of the uniform draws (``(config seed, this)``), apart from the samples' own."""


@dataclass(frozen=True)
class Selection:
    """The candidates a guided dataset is written from.

    Attributes:
        indices: (N,) int64 candidate (= sample) indices of the dataset rows, ascending.
        hard: (N,) bool, True where the row was picked as one of the hardest, False where drawn uniformly.
        scores: (P,) float32 score of every candidate (NaN where the loss was not finite).
    """

    indices: np.ndarray
    hard: np.ndarray
    scores: np.ndarray

    @property
    def row_scores(self) -> np.ndarray:
        """(N,) float32 score of each dataset row."""
        return self.scores[self.indices]

    def digest(self) -> str:
        """SHA-256 (hex) of the rows: indices, hard flags and scores (little-endian bytes)."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.indices, dtype="<i8").tobytes())
        h.update(np.ascontiguousarray(self.hard, dtype=np.uint8).tobytes())
        h.update(np.ascontiguousarray(self.row_scores, dtype="<f4").tobytes())
        return h.hexdigest()


def select_candidates(scores: np.ndarray, num: int, uniform_fraction: float, seed: int) -> Selection:
    """Pick ``num`` of the scored candidates: the hardest, plus a uniform draw from the others.

    Args:
        scores: (P,) candidate scores (higher = harder); cast to float32, non-finite values rank below every finite
            one (never among the hardest unless fewer finite scores than hard picks exist).
        num: rows to pick, ``0 <= num <= P``.
        uniform_fraction: fraction of the rows drawn uniformly, in [0, 1]; ``round(num * uniform_fraction)`` rows
            (Python rounding), the other ``num - that`` are the hardest.
        seed: the generation config's seed (seeds the uniform draw with :data:`_UNIFORM_STREAM`).

    Returns:
        The :class:`Selection` (rows in ascending candidate order).
    """
    s = np.asarray(scores, dtype=np.float32).reshape(-1)
    pool = len(s)
    if not 0 <= num <= pool:
        raise ValueError(f"cannot pick {num} of {pool} candidates")
    if not 0.0 <= uniform_fraction <= 1.0:
        raise ValueError(f"uniform_fraction must be in [0, 1], got {uniform_fraction}")
    n_uniform = round(num * uniform_fraction)
    n_hard = num - n_uniform
    key = np.where(np.isfinite(s), s, -np.inf)
    order = np.lexsort((np.arange(pool), -key))  # descending score, ties to the lower index
    hard = np.sort(order[:n_hard])
    rest = np.setdiff1d(np.arange(pool), hard)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _UNIFORM_STREAM]))
    uniform = np.sort(rng.choice(rest, size=n_uniform, replace=False)) if n_uniform else rest[:0]
    indices = np.union1d(hard, uniform).astype(np.int64)
    scores_out = np.where(np.isfinite(s), s, np.float32("nan")).astype(np.float32)
    return Selection(indices=indices, hard=np.isin(indices, hard), scores=scores_out)


class LossScorer:
    """Scores rendered samples by a stage-I checkpoint's training loss (see the module docstring).

    Args:
        checkpoint: a ``synthforge train`` checkpoint (read safely: :func:`synthforge.checkpoints.load_checkpoint`).
        option: the command-line option naming it (error messages).
        batch_size: crops per forward pass.

    Attributes:
        system: the :class:`~synthforge.system.MultiTaskSystem` (eval mode, CPU).
        crop_size, crop_scale: the checkpoint's training crop (side in pixels; side over the landmark box's side).
        sha256: SHA-256 (hex) of the checkpoint file.
    """

    def __init__(self, checkpoint: str | Path, option: str | None = "--guide", batch_size: int = 32) -> None:
        ckpt = load_checkpoint(checkpoint, option, expect=STAGE1, consumer=option or "LossScorer")
        where = f"{option}: {checkpoint}" if option else str(checkpoint)
        self.system = build_stage1_system(ckpt, checkpoint, option)
        if self.system.crop_size is None:
            raise UserError(f"{where}: checkpoint has no crop size (not written by synthforge train)")
        crop_scale = stage1_crop_scale(ckpt)
        if crop_scale is None:
            raise UserError(f"{where}: checkpoint has no data.crop_scale (not written by synthforge train)")
        self.crop_size = int(self.system.crop_size)
        self.crop_scale = crop_scale
        self.batch_size = int(batch_size)
        self.sha256 = file_sha256(checkpoint)
        cfg = self.system.loss_config
        wanted = [*LABEL_FIELDS, *(["normal"] if cfg.normal else []), *(["uv"] if cfg.uv else [])]
        self._present = dict.fromkeys(wanted, True)  # generated samples have every label

    def item(self, record: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """One schema record (:meth:`next3d_gen.pipeline.SamplePipeline.generate`) as a network input with labels,
        cropped as :class:`synthforge.data.dataset.SynthFaceDataset` crops validation samples, by the same function
        (:func:`synthforge.data.dataset.crop_item`: its keys, shapes, dtypes and frames; ``normal`` / ``uv`` when the
        loss uses them)."""
        lm = record["landmarks_2d"].astype(np.float32)
        cx, cy, side = landmark_box(lm)  # float32 points, as the dataset computes it (same bits)
        matrix = crop_matrix(cx, cy, side * self.crop_scale, self.crop_size)
        return crop_item(record, matrix, self.crop_size, self._present)

    @torch.no_grad()
    def score_items(self, items: Sequence[dict[str, torch.Tensor]]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Scores of items made by :meth:`item`.

        Returns:
            ``(scores, terms)``: (B,) float32 weighted loss per item, and per term name its (B,) float32 unweighted
            value.
        """
        system = self.system
        batch = {key: torch.stack([it[key] for it in items]) for key in items[0]}
        out = system.net(batch["image"])
        totals = np.empty(len(items), dtype=np.float32)
        terms: dict[str, np.ndarray] = {}
        for i in range(len(items)):
            row_terms = system._task_losses(_row(out, i), {key: v[i : i + 1] for key, v in batch.items()})
            totals[i] = float(system._weighted(row_terms))
            for name, value in row_terms.items():
                terms.setdefault(name, np.empty(len(items), dtype=np.float32))[i] = float(value)
        return totals, terms

    def score_records(self, records: Sequence[dict[str, np.ndarray]]) -> np.ndarray:
        """(B,) float32 scores of schema records."""
        return self.score_items([self.item(r) for r in records])[0]


def _row(out: Any, i: int) -> Any:
    """Sample ``i`` of a batched :class:`~synthforge.models.TaskOutputs` (tensors and per-stack lists sliced)."""

    def cut(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value[i : i + 1]
        if isinstance(value, list):
            return [v[i : i + 1] for v in value]
        return value

    return type(out)(**{f.name: cut(getattr(out, f.name)) for f in fields(out)})


def file_sha256(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def score_pool(
    pipeline: SamplePipeline,
    scorer: LossScorer,
    pool: int,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Render candidates ``0 .. pool - 1`` of ``pipeline`` (``workers`` processes) and score them here.

    Returns:
        ``(scores, terms)``: (pool,) float32 scores and per loss term its (pool,) float32 values.
    """
    scores = np.empty(pool, dtype=np.float32)
    terms: dict[str, np.ndarray] = {}
    items: list[dict[str, torch.Tensor]] = []
    done = 0
    with closing(iter_samples(pipeline, range(pool), workers)) as records:
        for record in records:
            items.append(scorer.item(record))
            if len(items) == scorer.batch_size or done + len(items) == pool:
                batch_scores, batch_terms = scorer.score_items(items)
                scores[done : done + len(items)] = batch_scores
                for name, values in batch_terms.items():
                    terms.setdefault(name, np.full(pool, np.nan, dtype=np.float32))[done : done + len(items)] = values
                done += len(items)
                if progress is not None:
                    progress(len(items))
                items = []
    return scores, terms


def selection_path(out: str | Path) -> Path:
    """Where the selection of a guided dataset written to ``out`` is kept (see the module docstring)."""
    p = Path(out)
    return p.with_name(p.name + ".guide.json") if p.suffix == ".h5" else p / "guide-selection.json"


def _selection_key(pipeline: SamplePipeline, scorer: LossScorer, num: int, pool: int, uniform: float) -> dict:
    """Everything the selection depends on (stored in the selection file and compared on reuse)."""
    return {
        "generate_config": pipeline.config.to_dict(),
        "num_samples": int(num),
        "pool": int(pool),
        "uniform_fraction": float(uniform),
        "checkpoint_sha256": scorer.sha256,
    }


def save_selection(path: Path, key: dict, selection: Selection, terms: dict[str, np.ndarray]) -> None:
    """Write the selection file (atomic rename): its key, every candidate's score, the rows, per-term means."""

    def mean(values: np.ndarray) -> float | None:
        finite = values[np.isfinite(values)]
        return float(finite.mean()) if finite.size else None

    hard_rows = selection.indices[selection.hard]
    summary = {
        "num_hard": int(selection.hard.sum()),
        "score_mean_pool": mean(selection.scores),
        "score_mean_hard": mean(selection.scores[hard_rows]),
        "score_mean_rows": mean(selection.row_scores),
        "term_mean_pool": {name: mean(v) for name, v in terms.items()},
        "term_mean_hard": {name: mean(v[hard_rows]) for name, v in terms.items()},
    }
    h5.write_json_atomic(
        path,
        {
            "format": SELECTION_FORMAT,
            "key": key,
            "summary": summary,
            "indices": selection.indices.tolist(),
            "hard": selection.hard.astype(bool).tolist(),
            "scores": [float(v) if np.isfinite(v) else None for v in selection.scores],
        },
    )


def load_selection(path: Path, key: dict) -> Selection | None:
    """The selection saved at ``path`` if it exists (None otherwise).

    Raises:
        UserError: the file is unreadable, damaged, or was made with another key (config, counts, checkpoint).
    """
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        stored_key = data["key"]
        if data.get("format") != SELECTION_FORMAT:
            raise ValueError(f"format {data.get('format')!r}")
        scores = np.array([np.nan if v is None else v for v in data["scores"]], dtype=np.float32)
        indices = np.asarray(data["indices"], dtype=np.int64)
        hard = np.asarray(data["hard"], dtype=bool)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{path}: damaged guided selection ({str(err)[:80]}); delete it to score again") from None
    if stored_key != key:
        diff = h5._first_difference(stored_key, key)
        raise UserError(
            f"{path} holds a selection made with other settings (differs at {diff}); use another --out or delete it"
        )
    ok = (
        len(scores) == key["pool"]
        and indices.shape == hard.shape == (key["num_samples"],)
        and (np.diff(indices) > 0).all()
        and (indices.size == 0 or 0 <= indices[0] <= indices[-1] < len(scores))
    )
    if not ok:
        raise UserError(f"{path}: damaged guided selection (inconsistent rows); delete it to score again")
    return Selection(indices=indices, hard=hard, scores=scores)


@dataclass(frozen=True)
class GuideOptions:
    """Settings of guided generation.

    Attributes:
        checkpoint: the guiding stage-I checkpoint.
        pool: candidates scored (P >= the dataset's sample count).
        uniform_fraction: fraction of the rows drawn uniformly from the candidates not among the hardest.
        batch_size: crops per forward pass of the scoring network.
    """

    checkpoint: str | Path
    pool: int
    uniform_fraction: float = 0.5
    batch_size: int = 32

    def check(self, num_samples: int) -> None:
        """UserError naming the option when a value is out of range."""
        if self.pool < num_samples:
            raise UserError(f"--pool must be >= --num ({num_samples}), got {self.pool}")
        if not 0.0 <= self.uniform_fraction <= 1.0:
            raise UserError(f"--guide-uniform must be in [0, 1], got {self.uniform_fraction}")
        if self.batch_size < 1:
            raise UserError(f"--guide-batch must be >= 1, got {self.batch_size}")


def prepare_selection(
    pipeline: SamplePipeline,
    out: str | Path,
    num_samples: int,
    options: GuideOptions,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
    on_score_start: Callable[[int], None] | None = None,
) -> tuple[Selection, dict]:
    """The selection of a guided dataset of ``num_samples`` rows written to ``out``: read from its selection file,
    or scored (``pool`` candidates rendered with ``workers`` processes) and saved there first.

    Args:
        progress: called with the number of candidates just scored.
        on_score_start: called with the pool size when scoring starts (not called when the file is reused).

    Returns:
        ``(selection, guide)``: the selection and the ``guide`` entry of the shards' generator config.
    """
    options.check(num_samples)
    scorer = LossScorer(options.checkpoint, "--guide", options.batch_size)
    if scorer.system.label_space.classes != pipeline.label_space.classes:
        raise UserError(
            f"--guide: {options.checkpoint} predicts the '{scorer.system.label_space.name}' label space, "
            f"the generator writes '{pipeline.label_space.name}'"
        )
    key = _selection_key(pipeline, scorer, num_samples, options.pool, options.uniform_fraction)
    path = selection_path(out)
    selection = load_selection(path, key)
    if selection is None:
        if on_score_start is not None:
            on_score_start(options.pool)
        scores, terms = score_pool(pipeline, scorer, options.pool, workers, progress)
        selection = select_candidates(scores, num_samples, options.uniform_fraction, pipeline.config.seed)
        save_selection(path, key, selection, terms)
    guide = {
        "checkpoint_sha256": scorer.sha256,
        "pool": int(options.pool),
        "uniform_fraction": float(options.uniform_fraction),
        "num_hard": int(selection.hard.sum()),
        "selection_sha256": selection.digest(),
    }
    return selection, guide


def generate_guided(
    pipeline: SamplePipeline,
    out: str | Path,
    num_samples: int,
    options: GuideOptions,
    num_shards: int = 1,
    shard_index: int = 0,
    progress: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    workers: int = 1,
    score_progress: Callable[[int], None] | None = None,
    on_score_start: Callable[[int], None] | None = None,
) -> h5.ShardWriter:
    """Generate (or resume) one shard of a guided dataset: :func:`prepare_selection`, then
    :func:`next3d_gen.pipeline.generate_shard` over the selected candidates with their scores (``guide_score``).

    Arguments as :func:`next3d_gen.pipeline.generate_shard` and :func:`prepare_selection`.
    """
    selection, guide = prepare_selection(pipeline, out, num_samples, options, workers, score_progress, on_score_start)
    return generate_shard(
        pipeline,
        str(out),
        num_samples,
        num_shards,
        shard_index,
        progress,
        on_start,
        workers,
        sample_indices=selection.indices,
        extra_fields={SCORE_FIELD: selection.row_scores},
        config_extra={"guide": guide},
    )
