"""One LightningDataModule for the three benchmarks (``--data.dataset`` picks the layout)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from label_finetune.datasets import celebamask_hq, lapa, w300
from label_finetune.datasets.celebamask_hq import CelebAMaskHQDataset
from label_finetune.datasets.common import CropConfig, FaceBenchmark, collate
from label_finetune.datasets.lapa import NUM_LANDMARKS as LAPA_LANDMARKS
from label_finetune.datasets.lapa import LapaDataset
from label_finetune.datasets.w300 import W300Dataset
from next3d_gen.errors import UserError
from next3d_gen.labels import CELEBAMASK_HQ, LAPA, NUM_LANDMARKS, LabelSpace
from synthforge.data.datamodule import check_count


@dataclass(frozen=True)
class DatasetInfo:
    """What the model needs to know about a benchmark.

    Attributes:
        label_space: parsing label space, or None for landmark-only data.
        num_landmarks: annotated points per face (0 if none).
        splits: (train, val, test) default split names.
        crop: default crop settings.
        layout: top-level entries of the official layout; a root holding none of them is not this dataset.
    """

    label_space: LabelSpace | None
    num_landmarks: int
    splits: tuple[str, str, str]
    crop: CropConfig
    layout: tuple[str, ...] = ()


DATASETS: dict[str, DatasetInfo] = {
    "w300": DatasetInfo(
        None,
        NUM_LANDMARKS,
        ("train", "common", "full"),
        CropConfig("landmarks", 1.4, flip_prob=0.5),
        tuple(dict.fromkeys(sub.split("/")[0] for subs in w300.SUBSETS.values() for sub in subs)),
    ),
    "lapa": DatasetInfo(LAPA, LAPA_LANDMARKS, ("train", "val", "test"), CropConfig("label", 1.2), lapa.SPLITS),
    "celebamask_hq": DatasetInfo(
        CELEBAMASK_HQ,
        0,
        ("train", "val", "test"),
        CropConfig("image", 1.0, 0.05, 0.02, 10.0, flip_prob=0.5),
        (celebamask_hq.IMAGE_DIR, celebamask_hq.MASK_DIR, celebamask_hq.MAPPING_FILE),
    ),
}


def check_root(dataset: str, root: str | Path) -> Path:
    """``root`` as a Path if it is a folder holding at least one entry of ``dataset``'s official layout.

    Cheap (a few ``stat`` calls), so the datamodule runs it in its constructor: an empty or wrong ``--data.root``
    fails before a model is loaded or a Trainer prints anything. The per-split checks (every file and annotation
    of the splits in use) come when the datasets are built (:meth:`FinetuneDataModule.setup_fit`).
    """
    path = Path(root)
    if not str(root) or str(root) == "???":
        raise UserError("--data.root: no dataset root given")
    if not path.is_dir():
        raise UserError(f"--data.root: no such folder: {path}")
    layout = DATASETS[dataset].layout
    if layout and not any((path / entry).exists() for entry in layout):
        raise UserError(f"--data.root: {path} holds no {dataset} data (expected {', '.join(layout)})")
    return path


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
        self.check_options(dataset, root, resolution, batch_size, val_batch_size, num_workers)
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
        # recorded in checkpoints as plain data (datamodule_hyper_parameters; read by synthforge.checkpoints.
        # finetune_crop, so predict/export crop as training did)
        self.save_hyperparameters(
            {"dataset": dataset, "resolution": resolution, "crop": dataclasses.asdict(self.crop)}, logger=False
        )
        if dataset == "lapa" and with_landmarks and self.crop.flip_prob > 0:
            raise UserError(
                "--data.crop.flip_prob must be 0 with LaPa landmarks (no 106-point mirror permutation); "
                "set it to 0 or --data.with_landmarks false"
            )
        self.partition_file = partition_file
        self.cache_dir = cache_dir
        self.with_landmarks = with_landmarks
        self.seed = seed
        self._cache: dict[tuple[str, bool, bool, int], FaceBenchmark] = {}

    @staticmethod
    def check_options(
        dataset: str, root: str, resolution: int, batch_size: int, val_batch_size: int | None, num_workers: int
    ) -> None:
        """The constructor's cheap checks (counts, the root's layout), callable on a parsed config before any class
        is instantiated (``synthforge finetune`` runs them before the stage-I network is loaded). UserError naming
        the option."""
        check_count("--data.batch_size", batch_size, 1)
        check_count("--data.val_batch_size", val_batch_size, 1, optional=True)
        check_count("--data.num_workers", num_workers, 0)
        check_count("--data.resolution", resolution, 8)
        check_root(dataset, root)

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
        """The (cached) dataset of ``split``; ``train`` turns on crop jitter/flips.

        Building a dataset lists its files and reads every annotation file of the split (UserError naming the first
        bad one), so errors surface here rather than in a DataLoader worker hours into a run.
        """
        key = (split, train, return_original, self.resolution)
        if key not in self._cache:
            self._cache[key] = build_dataset(
                self.dataset,
                self.root,
                split,
                self.resolution,
                self.crop,
                train,
                return_original,
                self.seed,
                self.partition_file,
                self.cache_dir,
                self.with_landmarks,
            )
        return self._cache[key]

    def setup_fit(self) -> None:
        """Build (and so check) the training and validation datasets now; ``synthforge finetune`` calls this before
        the Trainer exists, so a bad file is the only line printed. The loaders reuse the built datasets."""
        self.dataset_for(self.train_split, train=True)
        self.dataset_for(self.val_split)

    def _loader(self, ds: FaceBenchmark, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=collate,
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.dataset_for(self.train_split, train=True), self.batch_size, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset_for(self.val_split), self.val_batch_size, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset_for(self.test_split, return_original=True), self.val_batch_size, False)
