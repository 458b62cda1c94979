"""LightningDataModule over a training and a validation SynthForge HDF5 dataset."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from next3d_gen.errors import UserError
from next3d_gen.labels import LabelSpace
from synthforge.data.dataset import SynthFaceDataset
from synthforge.data.transforms import AugmentConfig


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

    Both datasets are opened (headers and ``complete`` flags only) in the constructor, so a wrong path or a file
    that is not a dataset fails before any training starts (UserError naming the file).

    Args:
        train: training set: an ``.h5`` file, a folder of shards or an ``index.json``.
        val: held-out set (no augmentation, no crop jitter); None = no validation.
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
        seed: base seed of the augmentation.
    """

    def __init__(
        self,
        train: str,
        val: str | None = None,
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
        common = {"crop_size": crop_size, "crop_scale": crop_scale, "load_normals": load_normals, "load_uv": load_uv}
        self.train_set = SynthFaceDataset(
            Path(train),
            scale_jitter=scale_jitter,
            shift_jitter=shift_jitter,
            augment=(augment or AugmentConfig()) if augment_enabled else None,
            seed=seed,
            **common,
        )
        self.val_set = SynthFaceDataset(Path(val), **common) if val else None
        if self.val_set is not None and self.val_set.label_space.classes != self.train_set.label_space.classes:
            raise UserError(f"{val}: label space differs from the training set {train}")
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.crop_size = crop_size
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers

    @property
    def label_space(self) -> LabelSpace:
        """The datasets' label space (classes, flip pairs, merge table)."""
        return self.train_set.label_space

    def _loader(self, dataset: SynthFaceDataset, batch_size: int, shuffle: bool) -> DataLoader:
        workers = self.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
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
