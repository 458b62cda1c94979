"""CelebAMask-HQ as users unpack it::

    <root>/CelebA-HQ-img/<id>.jpg                                  (id = 0..29999, 1024 x 1024)
    <root>/CelebAMask-HQ-mask-anno/<id // 2000>/<id:05d>_<part>.png  (512 x 512 binary part masks)
    <root>/CelebA-HQ-to-CelebA-mapping.txt                          (idx, orig_idx, orig_file)
    <root>/list_eval_partition.txt             (CelebA's "<file> <0|1|2>" lines; or --data.partition_file)

The per-part masks are merged into one 19-class map (:data:`next3d_gen.labels.CELEBAMASK_HQ`) in the standard part
order skin, l_brow, r_brow, l_eye, r_eye, eye_g, l_ear, r_ear, ear_r, nose, mouth, u_lip, l_lip, neck, neck_l, cloth,
hair, hat (ids 1..18): each part's non-zero pixels get its id and later parts overwrite earlier ones, exactly as the
dataset's own ``g_mask.py`` preprocessing that face-parsing codebases use (so hair drawn over skin wins, etc.).
Merged maps are cached as PNG files (written to a temporary file and moved into place with ``os.replace``, so
concurrent workers never see half-written files). The annotation frame (512 x 512) is the evaluation frame: the image
is resized to it (area interpolation) before cropping.

Official split: the CelebA-HQ index is mapped to its CelebA file name, whose partition (0 train, 1 val, 2 test) comes
from CelebA's ``list_eval_partition.txt`` (24,183 / 2,993 / 2,824 images).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from label_finetune.datasets.common import CropConfig, FaceBenchmark, require_dir
from next3d_gen.errors import UserError
from next3d_gen.labels import CELEBAMASK_HQ
from synthforge.crops import read_gray, read_image

PARTS: tuple[str, ...] = CELEBAMASK_HQ.classes[1:]
"""Part file suffixes in merge order; part i gets class id i + 1."""
SPLITS = {"train": 0, "val": 1, "test": 2}
SPLIT_SIZES = {"train": 24183, "val": 2993, "test": 2824}
IMAGE_DIR = "CelebA-HQ-img"
MASK_DIR = "CelebAMask-HQ-mask-anno"
MAPPING_FILE = "CelebA-HQ-to-CelebA-mapping.txt"
PARTITION_FILE = "list_eval_partition.txt"
CACHE_DIR = "synthforge-merged-masks-v1"
FOLDER_SIZE = 2000
"""Masks of ids [2000 k, 2000 (k + 1)) live in the sub-folder ``k``."""


def read_mapping(path: Path) -> dict[int, str]:
    """CelebA-HQ id -> CelebA file name from ``CelebA-HQ-to-CelebA-mapping.txt`` (header line skipped)."""
    if not path.is_file():
        raise UserError(f"missing CelebA-HQ mapping file: {path}")
    mapping: dict[int, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines()):
        parts = line.split()
        if not parts or (n == 0 and not parts[0].isdigit()):
            continue
        if len(parts) < 3 or not parts[0].isdigit():
            raise UserError(f"malformed line {n + 1} in CelebA-HQ mapping file: {path}")
        mapping[int(parts[0])] = parts[2]
    if not mapping:
        raise UserError(f"empty CelebA-HQ mapping file: {path}")
    return mapping


def read_partition(path: Path) -> dict[str, int]:
    """CelebA file name -> partition (0 train, 1 val, 2 test); whitespace- or comma-separated, header optional."""
    if not path.is_file():
        raise UserError(f"missing CelebA partition file: {path} (give it with --data.partition_file)")
    out: dict[str, int] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines()):
        parts = line.replace(",", " ").split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            if n == 0:
                continue  # header such as "image_id,partition"
            raise UserError(f"malformed line {n + 1} in CelebA partition file: {path}")
        out[parts[0]] = int(parts[1])
    return out


def mask_path(root: Path, idx: int, part: str) -> Path:
    """Path of the part mask of CelebA-HQ image ``idx``."""
    return root / MASK_DIR / str(idx // FOLDER_SIZE) / f"{idx:05d}_{part}.png"


def merge_part_masks(root: Path, idx: int) -> np.ndarray:
    """Merge the part masks of image ``idx`` into an (H, W) uint8 19-class map (later parts overwrite earlier ones).

    Raises:
        UserError: no part mask exists for ``idx``, or a mask is unreadable or differs in size from the first one.
    """
    merged: np.ndarray | None = None
    first: Path | None = None
    for label, part in enumerate(PARTS, start=1):
        path = mask_path(root, idx, part)
        if not path.is_file():
            continue  # a part absent from the face has no file
        mask = read_gray(path)
        if merged is None:
            merged, first = np.zeros(mask.shape, np.uint8), path
        elif mask.shape != merged.shape:
            raise UserError(
                f"part mask is {mask.shape[1]}x{mask.shape[0]}, but {first} is "
                f"{merged.shape[1]}x{merged.shape[0]}: {path}"
            )
        merged[mask != 0] = label
    if merged is None:
        raise UserError(f"missing part masks for CelebA-HQ image {idx}: no {mask_path(root, idx, '<part>')}")
    return merged


def write_png_atomic(path: Path, image: np.ndarray) -> None:
    """Write a PNG so that readers see either no file or the complete file (temp file + ``os.replace``)."""
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise UserError(f"could not encode {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.tobytes())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def check_files(root: Path, ids: list[int], cache_dir: Path) -> None:
    """Check that every id has its image and at least one part mask (or a cached merged map), from one directory
    listing per folder (cheap even for the 30,000 images; the masks' contents are read when a sample is loaded).

    Raises:
        UserError: naming the first missing file, plus how many more ids miss files.
    """
    images = {p.name for p in (root / IMAGE_DIR).iterdir()}
    with_masks: set[int] = set()
    for folder in {idx // FOLDER_SIZE for idx in ids}:
        sub = root / MASK_DIR / str(folder)
        if sub.is_dir():
            with_masks.update(int(p.name[:5]) for p in sub.iterdir() if p.suffix == ".png" and p.name[:5].isdigit())
    if cache_dir.is_dir():
        with_masks.update(int(p.stem) for p in cache_dir.glob("*.png") if p.stem.isdigit())
    errors = []
    for idx in ids:
        if f"{idx}.jpg" not in images:
            errors.append(f"missing image file: {root / IMAGE_DIR / f'{idx}.jpg'}")
        elif idx not in with_masks:
            errors.append(f"missing part masks for CelebA-HQ image {idx}: no {mask_path(root, idx, '<part>')}")
    if errors:
        more = f" (and {len(errors) - 1} more images with missing files)" if len(errors) > 1 else ""
        raise UserError(errors[0] + more)


class CelebAMaskHQDataset(FaceBenchmark):
    """CelebAMask-HQ faces with 19-class label maps in the official train/val/test split.

    Args:
        root: dataset root (see the module docstring).
        split: ``train``, ``val`` or ``test``.
        partition_file: CelebA's ``list_eval_partition.txt``; default ``<root>/list_eval_partition.txt``.
        cache_dir: where merged maps are cached; default ``<root>/synthforge-merged-masks-v1``.
        resolution, crop, train, return_original, seed: see :class:`FaceBenchmark`.
    """

    background = CELEBAMASK_HQ.background
    label_flip = CELEBAMASK_HQ.flip_lut()

    def __init__(
        self,
        root: str | Path,
        split: str,
        resolution: int,
        crop: CropConfig | None = None,
        train: bool = False,
        return_original: bool = False,
        seed: int = 0,
        partition_file: str | Path | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        super().__init__(resolution, crop or CropConfig(box="image", scale=1.0), train, return_original, seed)
        if split not in SPLITS:
            raise UserError(f"unknown CelebAMask-HQ split {split!r} (choose from {', '.join(SPLITS)})")
        self.root = require_dir(Path(root), "CelebAMask-HQ dataset root")
        require_dir(self.root / IMAGE_DIR, "CelebA-HQ images")
        require_dir(self.root / MASK_DIR, "CelebAMask-HQ masks")
        self.split = split
        self.cache_dir = Path(cache_dir) if cache_dir is not None else self.root / CACHE_DIR
        mapping = read_mapping(self.root / MAPPING_FILE)
        partition_path = Path(partition_file) if partition_file is not None else self.root / PARTITION_FILE
        partition = read_partition(partition_path)
        wanted = SPLITS[split]
        ids = []
        for idx, orig in sorted(mapping.items()):
            if orig not in partition:
                raise UserError(f"CelebA file {orig} (CelebA-HQ id {idx}) is not listed in {partition_path}")
            if partition[orig] == wanted:
                ids.append(idx)
        if not ids:
            raise UserError(f"CelebAMask-HQ split {split!r} is empty (mapping {self.root / MAPPING_FILE})")
        check_files(self.root, ids, self.cache_dir)
        self.records = ids

    def name(self, index: int) -> str:
        return str(self.records[index])

    def labels(self, index: int) -> np.ndarray:
        """(512, 512) uint8 merged label map of sample ``index`` (from the cache; merged and cached on first use)."""
        idx = self.records[index]
        cached = self.cache_dir / f"{idx}.png"
        if cached.is_file():
            return read_gray(cached)
        merged = merge_part_masks(self.root, idx)
        try:
            write_png_atomic(cached, merged)
        except OSError as err:
            raise UserError(
                f"cannot write the merged-mask cache {cached} ({err.strerror}); "
                "set --data.cache_dir to a writable folder"
            ) from None
        return merged

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, None]:
        idx = self.records[index]
        image_path = self.root / IMAGE_DIR / f"{idx}.jpg"
        image = read_image(image_path)
        labels = self.labels(index)
        h, w = labels.shape
        ih, iw = image.shape[:2]
        if ih * w != iw * h:
            raise UserError(f"image is {iw}x{ih}, not the aspect ratio of its {w}x{h} masks: {image_path}")
        if (ih, iw) != (h, w):
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if ih > h else cv2.INTER_LINEAR)
        return image, labels, None
