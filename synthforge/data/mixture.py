"""Training on several datasets at once: source specs, the concatenated dataset and the weighted sampler.

``--data.train`` names one dataset or several with weights::

    --data.train data/synth:0.5,data/facesynthetics:0.3,data/release:0.2

or, in a YAML config, a list whose items are ``PATH[:WEIGHT]`` strings or ``{path: PATH, weight: W, name: NAME}``
mappings (weight 1 and the path's name when left out). Weights are relative (normalised to sum 1).

Each batch draws its samples from the sources by weight, deterministically per seed (:class:`MixtureSampler`): the
sampler runs in the main process and hands every DataLoader worker (and, through Lightning's distributed wrapper,
every DDP rank) indices of one fixed sequence, so the mix does not depend on the worker or rank count. Each source is
its own :class:`~synthforge.data.dataset.SynthFaceDataset` with its own reader, so each worker keeps one open reader
per source.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from next3d_gen.errors import UserError

GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
"""Step of the additive recurrence that assigns sources to draw positions (the golden ratio's fractional part)."""


@dataclass(frozen=True)
class Source:
    """One training source: ``path`` (a dataset: file, shard folder or index.json), its normalised ``weight`` and the
    ``name`` used in the logs (``train/<name>/...``)."""

    path: str
    weight: float
    name: str


def _name_of(path: str) -> str:
    p = Path(path)
    stem = p.parent.name if p.name == "index.json" else (p.stem if p.suffix == ".h5" else p.name)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._") or "source"


def _split_weight(item: str) -> tuple[str, float]:
    path, sep, tail = item.rpartition(":")
    if sep and path:
        try:
            return path, float(tail)
        except ValueError:
            pass  # a colon inside the path: no weight
    return item, 1.0


def parse_sources(option: str, value: str | Sequence[str | dict]) -> list[Source]:
    """The sources of ``value`` (see the module docstring) with weights normalised to sum 1 and unique names.

    Raises:
        UserError: naming ``option``: an empty spec, a weight that is not a positive finite number, an unknown key.
    """
    if isinstance(value, str):
        items: list[str | dict] = [part.strip() for part in value.split(",")]
    elif isinstance(value, Sequence):
        items = list(value)
    else:
        raise UserError(f"{option}: expected PATH[:WEIGHT][,PATH[:WEIGHT]...] or a list, got {value!r}")
    specs: list[tuple[str, float, str | None]] = []
    for item in items:
        if isinstance(item, dict):
            unknown = set(item) - {"path", "weight", "name"}
            if unknown or "path" not in item:
                raise UserError(f"{option}: a source mapping has keys path, weight, name; got {sorted(item)}")
            path, weight, name = str(item["path"]), item.get("weight", 1.0), item.get("name")
        elif isinstance(item, str) and item.strip():
            (path, weight), name = _split_weight(item.strip()), None
        else:
            raise UserError(f"{option}: empty source in {value!r}")
        try:
            weight = float(weight)
        except (TypeError, ValueError):
            weight = float("nan")
        if not (math.isfinite(weight) and weight > 0):
            raise UserError(f"{option}: the weight of {path} must be a positive number, got {weight}")
        specs.append((path, weight, None if name is None else str(name)))
    if not specs:
        raise UserError(f"{option}: no source given")
    total = sum(w for _, w, _ in specs)
    names: list[str] = []
    for path, _, name in specs:
        base = name or _name_of(path)
        unique, k = base, 2
        while unique in names:
            unique, k = f"{base}-{k}", k + 1
        names.append(unique)
    return [Source(path, w / total, n) for (path, w, _), n in zip(specs, names, strict=True)]


class MixtureDataset(Dataset):
    """The concatenation of several source datasets: global index ``offsets[k] + row`` is row ``row`` of source ``k``.

    Items are the sources' own items (each carries its ``source`` index). Validation iterates it in order; training
    draws from it with :class:`MixtureSampler`.
    """

    def __init__(self, sources: Sequence[Dataset]) -> None:
        self.sources = list(sources)
        self.lengths = [len(s) for s in self.sources]
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, i: int) -> tuple[int, int]:
        """(source, row) of global index ``i``."""
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range [0, {len(self)})")
        k = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return k, int(i - self.offsets[k])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        k, row = self.locate(int(i))
        return self.sources[k][row]


class MixtureSampler(Sampler[int]):
    """Weighted, seeded draws over a :class:`MixtureDataset` (global indices).

    Epoch ``e`` is a fixed sequence of ``num_samples`` indices, a function of (seed, e) only:

    * the source of draw ``n`` is the one whose cumulative-weight interval holds ``frac(u + n * GOLDEN)``, ``u``
      uniform per epoch. This additive recurrence is equidistributed with low discrepancy: every run of consecutive
      draws (a batch, or a DDP rank's strided share) holds each source's share up to about one sample, where
      independent draws would vary by the binomial spread;
    * the rows of source ``k`` follow a random permutation of its rows, a new one each time it is used up.

    Args:
        lengths: rows per source.
        weights: relative source weights (normalised here).
        seed: base seed (``data.seed``).
        num_samples: draws per epoch (default: the total number of rows).
    """

    def __init__(self, lengths: Sequence[int], weights: Sequence[float], seed: int = 0,
                 num_samples: int | None = None) -> None:  # fmt: skip
        if len(lengths) != len(weights) or not lengths or min(lengths) < 1:
            raise ValueError("MixtureSampler needs one weight and at least one row per source")
        w = np.asarray(weights, dtype=np.float64)
        self.cdf = np.cumsum(w / w.sum())
        self.cdf[-1] = 1.0
        self.lengths = [int(n) for n in lengths]
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        self.seed = int(seed)
        self.num_samples = int(num_samples if num_samples is not None else sum(self.lengths))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's sequence (Lightning calls this at every epoch start)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def sources(self) -> np.ndarray:
        """(num_samples,) int64 source of each draw of the current epoch."""
        u = np.random.default_rng([self.seed, self.epoch, 0]).random()
        x = (u + np.arange(self.num_samples, dtype=np.float64) * GOLDEN) % 1.0
        return np.minimum(np.searchsorted(self.cdf, x, side="right"), len(self.lengths) - 1)

    def indices(self) -> np.ndarray:
        """(num_samples,) int64 global indices of the current epoch."""
        src = self.sources()
        out = np.empty(self.num_samples, dtype=np.int64)
        for k, n in enumerate(self.lengths):
            where = np.flatnonzero(src == k)
            rng = np.random.default_rng([self.seed, self.epoch, 1 + k])
            cycles = -(-len(where) // n)
            rows = np.concatenate([rng.permutation(n) for _ in range(cycles)]) if cycles else np.zeros(0, np.int64)
            out[where] = self.offsets[k] + rows[: len(where)]
        return out

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())
