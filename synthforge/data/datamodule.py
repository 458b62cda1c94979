"""LightningDataModule over training and validation SynthForge HDF5 datasets: one each, or weighted mixtures of
several sources (generated sets and imported published datasets, :mod:`synthforge.data.mixture`)."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from next3d_gen.errors import UserError
from next3d_gen.labels import LabelSpace
from synthforge.data.dataset import SynthFaceDataset
from synthforge.data.mixture import MixtureDataset, MixtureSampler, Source, parse_sources
from synthforge.data.transforms import AugmentConfig

SourceSpec = str | list[str | dict[str, str | float]]
"""``--data.train`` / ``--data.val``: ``PATH``, ``PATH:W,PATH:W,...`` or a list of ``PATH[:W]`` / ``{path, weight,
name}`` items (:func:`synthforge.data.mixture.parse_sources`)."""


def check_count(option: str, value: int | None, minimum: int, *, optional: bool = False) -> None:
    """Raise a UserError naming ``option`` (``--data.batch_size``) unless ``value`` is an integer >= ``minimum``.

    Called where the option is defined (datamodule constructors), so a bad count fails before the Trainer is built
    instead of as a DataLoader ``ValueError`` traceback. ``optional``: None is allowed (a default applies).
    """
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise UserError(f"{option} must be {what}, got {value!r}")


class SynthDataModule(pl.LightningDataModule):
    """Training / validation loaders for stage B.

    Every dataset is opened (headers and ``complete`` flags only) in the constructor, so a wrong path or a file
    that is not a dataset fails before any training starts (UserError naming the file).

    Args:
        train: training set: an ``.h5`` file, a folder of shards or an ``index.json``; or several with weights
            (``data/synth:0.5,data/facesynthetics:0.3,data/release:0.2`` or a YAML list, see
            :mod:`synthforge.data.mixture`): each batch then draws its samples from the sources by weight,
            deterministically per ``seed``, an epoch being as many draws as the sources have rows together. Every
            source must map into the same training label space (imported files through their merge tables).
        val: held-out set(s) (no augmentation, no crop jitter; several sources are concatenated, weights unused,
            and their metrics are also logged per source); None = no validation.
        batch_size: training batch size per process.
        val_batch_size: validation batch size (default: ``batch_size``).
        num_workers: DataLoader worker processes per training process (0 = read in the main process).
        crop_size: network input side, pixels.
        crop_scale: crop side relative to the landmark box's larger side.
        scale_jitter: training crop scale jitter, ``side *= exp(U(-j, j))``.
        shift_jitter: training crop centre jitter, fraction of the side.
        augment: joint augmentation (None = defaults of :class:`AugmentConfig`).
        augment_enabled: apply the joint augmentation to the training set.
        load_normals: also load normal maps (for the optional normal head).
        load_uv: also load UV maps (for the optional UV head).
        pin_memory: DataLoader ``pin_memory``.
        persistent_workers: keep workers between epochs (only when ``num_workers > 0``).
        seed: base seed of the augmentation and of a mixture's draws.

    Attributes:
        train_sources / val_sources: the parsed :class:`~synthforge.data.mixture.Source` lists.
        train_set / val_set: the dataset of each loader (one source's dataset, or a
            :class:`~synthforge.data.mixture.MixtureDataset` of several).
    """

    def __init__(
        self,
        train: SourceSpec,
        val: SourceSpec | None = None,
        batch_size: int = 16,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        crop_size: int = 128,
        crop_scale: float = 1.6,
        scale_jitter: float = 0.1,
        shift_jitter: float = 0.05,
        augment: AugmentConfig | None = None,
        augment_enabled: bool = True,
        load_normals: bool = False,
        load_uv: bool = False,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_count("--data.batch_size", batch_size, 1)
        check_count("--data.val_batch_size", val_batch_size, 1, optional=True)
        check_count("--data.num_workers", num_workers, 0)
        if not train or train == "???":
            raise UserError("data.train: no training set given (--data.train PATH)")
        self.save_hyperparameters()
        self.train_sources: list[Source] = parse_sources("--data.train", train)
        self.val_sources: list[Source] = parse_sources("--data.val", val) if val else []
        common = {"crop_size": crop_size, "crop_scale": crop_scale, "load_normals": load_normals, "load_uv": load_uv}
        augment = (augment or AugmentConfig()) if augment_enabled else None
        train_sets = [
            SynthFaceDataset(Path(src.path), scale_jitter=scale_jitter, shift_jitter=shift_jitter, augment=augment,
                             seed=seed, source_index=k, **common)
            for k, src in enumerate(self.train_sources)
        ]  # fmt: skip
        val_sets = [
            SynthFaceDataset(Path(src.path), source_index=k, **common) for k, src in enumerate(self.val_sources)
        ]
        space = train_sets[0].label_space
        for src, ds in zip(self.train_sources + self.val_sources, train_sets + val_sets, strict=True):
            if ds.label_space.classes != space.classes:
                raise UserError(
                    f"{src.path}: label space '{ds.label_space.name}' differs from the training set "
                    f"{self.train_sources[0].path} ('{space.name}'), and no merge table maps it"
                )
        for name, wanted in (("normal", load_normals), ("uv", load_uv)):
            if wanted and not any(ds.present[name] for ds in train_sets):
                raise UserError(f"{train_sets[0].reader.files[0]}: has no '{name}' maps (needed by load_{name}s)")
        self.train_set: SynthFaceDataset | MixtureDataset = (
            train_sets[0] if len(train_sets) == 1 else MixtureDataset(train_sets)
        )
        self.val_set: SynthFaceDataset | MixtureDataset | None = (
            None if not val_sets else val_sets[0] if len(val_sets) == 1 else MixtureDataset(val_sets)
        )
        self.seed = seed
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.crop_size = crop_size
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers

    @property
    def label_space(self) -> LabelSpace:
        """The training label space (classes, flip pairs, merge table) every source's ``seg`` is mapped into."""
        ds = self.train_set
        return (ds.sources[0] if isinstance(ds, MixtureDataset) else ds).label_space

    @property
    def source_names(self) -> tuple[str, ...]:
        """Names of the training sources (``train/<name>/...`` logs of a mixture), by ``source`` index."""
        return tuple(s.name for s in self.train_sources)

    @property
    def val_source_names(self) -> tuple[str, ...]:
        """Names of the validation sources (``val/<name>/...`` metrics when there are several)."""
        return tuple(s.name for s in self.val_sources)

    def _loader(self, dataset: SynthFaceDataset | MixtureDataset, batch_size: int, shuffle: bool) -> DataLoader:
        workers = self.num_workers
        sampler = None
        if shuffle and isinstance(dataset, MixtureDataset):
            sampler = MixtureSampler(dataset.lengths, [s.weight for s in self.train_sources], seed=self.seed)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            drop_last=shuffle and len(dataset) >= batch_size,
            num_workers=workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and workers > 0,
            prefetch_factor=4 if workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        return self._loader(self.val_set, self.val_batch_size, shuffle=False)
