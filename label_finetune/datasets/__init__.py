"""Real benchmark datasets read from their official on-disk layouts (300W, LaPa, CelebAMask-HQ) and their datamodule."""

from label_finetune.datasets.celebamask_hq import CelebAMaskHQDataset
from label_finetune.datasets.common import CropConfig, FaceBenchmark, collate
from label_finetune.datasets.datamodule import DATASETS, FinetuneDataModule, build_dataset
from label_finetune.datasets.lapa import LapaDataset
from label_finetune.datasets.w300 import W300Dataset

__all__ = [
    "DATASETS",
    "CelebAMaskHQDataset",
    "CropConfig",
    "FaceBenchmark",
    "FinetuneDataModule",
    "LapaDataset",
    "W300Dataset",
    "build_dataset",
    "collate",
]
