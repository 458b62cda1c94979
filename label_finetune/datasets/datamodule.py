"""One LightningDataModule for the three benchmarks (``--data.dataset`` picks the layout)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from label_finetune.datasets.celebamask_hq import CelebAMaskHQDataset
from label_finetune.datasets.common import CropConfig, FaceBenchmark, collate
from label_finetune.datasets.lapa import NUM_LANDMARKS as LAPA_LANDMARKS
from label_finetune.datasets.lapa import LapaDataset
from label_finetune.datasets.w300 import W300Dataset
from next3d_gen.errors import UserError
from next3d_gen.labels import CELEBAMASK_HQ, LAPA, NUM_LANDMARKS, LabelSpace


@dataclass(frozen=True)
class DatasetInfo:
    """What the model needs to know about a benchmark.

    Attributes:
        label_space: parsing label space, or None for landmark-only data.
        num_landmarks: annotated points per face (0 if none).
        splits: (train, val, test) default split names.
        crop: default crop settings.
    """

    label_space: LabelSpace | None
    num_landmarks: int
    splits: tuple[str, str, str]
    crop: CropConfig


DATASETS: dict[str, DatasetInfo] = {
    "w300": DatasetInfo(None, NUM_LANDMARKS, ("train", "common", "full"), CropConfig("landmarks", 1.4, flip_prob=0.5)),
    "lapa": DatasetInfo(LAPA, LAPA_LANDMARKS, ("train", "val", "test"), CropConfig("label", 1.2)),
    "celebamask_hq": DatasetInfo(
        CELEBAMASK_HQ, 0, ("train", "val", "test"), CropConfig("image", 1.0, 0.05, 0.02, 10.0, flip_prob=0.5)
    ),
}


def build_dataset(
    dataset: str,
    root: str | Path,
    split: str,
    resolution: int,
    crop: CropConfig | None = None,
    train: bool = False,
    return_original: bool = False,
    seed: int = 0,
    partition_file: str | None = None,
    cache_dir: str | None = None,
    with_landmarks: bool = True,
) -> FaceBenchmark:
    """Build the benchmark dataset ``dataset`` (one of :data:`DATASETS`) for one split."""
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r} (choose from {', '.join(DATASETS)})")
    crop = crop or DATASETS[dataset].crop
    common: dict[str, Any] = dict(crop=crop, train=train, return_original=return_original, seed=seed)
    if dataset == "w300":
        return W300Dataset(root, split, resolution, **common)
    if dataset == "lapa":
        return LapaDataset(root, split, resolution, with_landmarks=with_landmarks, **common)
    return CelebAMaskHQDataset(root, split, resolution, partition_file=partition_file, cache_dir=cache_dir, **common)


class FinetuneDataModule(L.LightningDataModule):
    """Train/val/test loaders of one benchmark.

    Args:
        dataset: ``w300``, ``lapa`` or ``celebamask_hq``.
        root: dataset root folder, as unpacked from the official download.
        resolution: crop side in pixels (should match the stage-I network's training resolution).
        batch_size: training batch size; ``val_batch_size`` defaults to it.
        num_workers: DataLoader worker processes.
        train_split, val_split, test_split: split names (defaults per dataset: 300W train/common/full, LaPa and
            CelebAMask-HQ train/val/test).
        crop: crop settings (defaults per dataset, see :data:`DATASETS`).
        partition_file: CelebA ``list_eval_partition.txt`` (CelebAMask-HQ only; default at the root).
        cache_dir: merged CelebAMask-HQ mask cache (default inside the root).
        with_landmarks: LaPa only: read the 106 landmarks.
        seed: base seed of the training crop jitter.
    """

    def __init__(
        self,
        dataset: str,
        root: str,
        resolution: int = 128,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        train_split: str | None = None,
        val_split: str | None = None,
        test_split: str | None = None,
        crop: CropConfig | None = None,
        partition_file: str | None = None,
        cache_dir: str | None = None,
        with_landmarks: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if dataset not in DATASETS:
            raise UserError(f"--data.dataset: unknown dataset {dataset!r} (choose from {', '.join(DATASETS)})")
        self.dataset = dataset
        self.root = root
        self.resolution = resolution
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        info = DATASETS[dataset]
        self.train_split = train_split or info.splits[0]
        self.val_split = val_split or info.splits[1]
        self.test_split = test_split or info.splits[2]
        self.crop = crop or info.crop
        if dataset == "lapa" and with_landmarks and self.crop.flip_prob > 0:
            raise UserError("--data.crop.flip_prob must be 0 with LaPa landmarks (no 106-point mirror permutation); "
                            "set it to 0 or --data.with_landmarks false")
        self.partition_file = partition_file
        self.cache_dir = cache_dir
        self.with_landmarks = with_landmarks
        self.seed = seed
        self._cache: dict[tuple[str, bool, bool], FaceBenchmark] = {}

    @property
    def label_space(self) -> LabelSpace | None:
        return DATASETS[self.dataset].label_space

    @property
    def num_classes(self) -> int:
        """Parsing classes of the benchmark (0 for landmark-only data)."""
        space = self.label_space
        return space.num_classes if space is not None else 0

    @property
    def num_landmarks(self) -> int:
        """Landmarks per face used for training (0 if none or not requested)."""
        n = DATASETS[self.dataset].num_landmarks
        return n if (self.with_landmarks or self.dataset == "w300") else 0

    def dataset_for(self, split: str, train: bool = False, return_original: bool = False) -> FaceBenchmark:
        """The (cached) dataset of ``split``; ``train`` turns on crop jitter/flips."""
        key = (split, train, return_original)
        if key not in self._cache:
            self._cache[key] = build_dataset(
                self.dataset, self.root, split, self.resolution, self.crop, train, return_original, self.seed,
                self.partition_file, self.cache_dir, self.with_landmarks,
            )
        return self._cache[key]

    def _loader(self, ds: FaceBenchmark, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            ds, batch_size=batch_size, shuffle=shuffle, num_workers=self.num_workers, collate_fn=collate,
            persistent_workers=self.num_workers > 0, drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.dataset_for(self.train_split, train=True), self.batch_size, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset_for(self.val_split), self.val_batch_size, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset_for(self.test_split, return_original=True), self.val_batch_size, False)
