"""Torch dataset over the HDF5 shards written by stage A (``next3d_gen.h5`` schema).

Reading goes through :class:`next3d_gen.h5.SampleReader` (a file, a shard folder or an ``index.json``; rows whose
``complete`` flag is False are skipped; files opened lazily per process and reopened after a fork). Each sample is
cropped around its landmark box, resized to ``crop_size`` and, in training, augmented jointly
(:mod:`synthforge.data.transforms`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from next3d_gen import h5
from next3d_gen.errors import UserError
from next3d_gen.labels import LabelSpace
from synthforge.data.transforms import (
    AugmentConfig,
    JointAugment,
    crop_matrix,
    landmark_box,
    warp_sample,
)

REQUIRED_FIELDS = ("image", "seg", "depth", "landmarks_2d", "landmarks_visible")
DAMAGED_KEY = "damaged_skipped"
"""Batch key: per sample, how many damaged rows were skipped to produce it (int64, usually 0)."""

log = logging.getLogger(__name__)


def relative_depth(depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Head-relative depth: camera z minus the foreground median, 0 on background.

    Args:
        depth: (H, W) float32 camera z in metres, 0 = background.

    Returns:
        ``(rel, mask)``: (H, W) float32 metres and (H, W) bool foreground mask (depth > 0).
    """
    mask = depth > 0
    rel = np.zeros_like(depth, dtype=np.float32)
    if mask.any():
        rel[mask] = depth[mask] - np.median(depth[mask])
    return rel, mask


class SynthFaceDataset(Dataset):
    """Cropped (and optionally augmented) samples of a SynthForge HDF5 dataset.

    Args:
        path: an ``.h5`` file, a folder of shards (``*.h5``) or an ``index.json``.
        crop_size: side S of the square crop fed to the network, pixels.
        crop_scale: crop side = ``crop_scale`` x the larger side of the landmark box.
        scale_jitter: training only: the side is multiplied by ``exp(U(-j, j))``.
        shift_jitter: training only: the centre moves by ``U(-j, j)`` x side on each axis.
        augment: joint augmentation settings; None = no augmentation (evaluation).
        load_normals: also return normals (if the file stores them).
        load_uv: also return UV maps (if the file stores them).
        seed: base seed of the random crop jitter / augmentation (mixed with the torch seed of each worker).
        skip_damaged: a row that fails its checksum (:class:`next3d_gen.h5.DamagedRowError`) is skipped: the next
            readable row (wrapping around) is returned instead, with one warning per damaged row and process naming
            file and row, and counted in the item's ``damaged_skipped``. False: UserError naming file and row.

    Each item is a dict of tensors:
        ``image`` (3,S,S) float32 in [0, 1] RGB; ``seg`` (S,S) int64 class ids (255 ignore);
        ``depth`` (1,S,S) float32 relative depth in metres (camera z minus the foreground median, 0 on background);
        ``depth_mask`` (1,S,S) bool foreground; ``landmarks`` (68,2) float32 crop pixels (pixel-centre convention);
        ``landmarks_visible`` (68,) bool; ``landmarks_in_crop`` (68,) bool; ``crop_matrix`` (2,3) float32 mapping
        source-image pixels to crop pixels (before augmentation); ``index`` int64;
        optionally ``normal`` (3,S,S) float32 camera-frame unit normals (0 on background) and ``uv`` (2,S,S) float32
        (-1 on background); ``damaged_skipped`` int64, damaged rows skipped to produce this item (log its sum).
        ``index`` is the sample actually returned (``i`` unless rows were skipped).
    """

    def __init__(
        self,
        path: str | Path,
        crop_size: int = 128,
        crop_scale: float = 1.6,
        scale_jitter: float = 0.0,
        shift_jitter: float = 0.0,
        augment: AugmentConfig | None = None,
        load_normals: bool = False,
        load_uv: bool = False,
        seed: int = 0,
        skip_damaged: bool = True,
    ) -> None:
        fields = list(REQUIRED_FIELDS)
        self.reader = h5.SampleReader(path)
        for name in ("normal", "uv"):
            if {"normal": load_normals, "uv": load_uv}[name]:
                if name not in self.reader.fields:
                    raise UserError(f"{self.reader.files[0]}: has no '{name}' maps (needed by load_{name}s)")
                fields.append(name)
        missing = [f for f in fields if f not in self.reader.fields]
        if missing:
            raise UserError(f"{self.reader.files[0]}: not a SynthForge training set (missing {', '.join(missing)})")
        self.reader.fields = fields
        if len(self.reader) == 0:
            raise UserError(f"{path}: no complete samples")
        self.path = Path(path)
        self.label_space: LabelSpace = self.reader.label_space
        self.crop_size = int(crop_size)
        self.crop_scale = float(crop_scale)
        self.scale_jitter = float(scale_jitter)
        self.shift_jitter = float(shift_jitter)
        self.augment_config = augment
        self.augment = JointAugment(self.label_space, augment, seed=seed) if augment is not None else None
        self.seed = int(seed)
        self._rng_pid: int | None = None
        self._rng = np.random.default_rng(seed)
        self.skip_damaged = bool(skip_damaged)
        self._warned: set[tuple[str, int]] = set()
        self._warned_pid: int | None = None

    def __len__(self) -> int:
        return len(self.reader)

    def _ensure_rng(self) -> None:
        pid = os.getpid()
        if self._rng_pid != pid:  # a fresh generator per process (DataLoader workers get distinct torch seeds)
            s = (torch.initial_seed() + self.seed) % (2**32)
            self._rng = np.random.default_rng(s)
            if self.augment is not None:
                self.augment.reseed(int(s))
            self._rng_pid = pid

    def read(self, i: int) -> dict[str, np.ndarray]:
        """Raw sample ``i`` (schema arrays); a damaged row raises UserError naming its file and row."""
        try:
            return self.reader[i]
        except h5.DamagedRowError as err:
            raise UserError(str(err)) from None
        except OSError as err:
            where, row = self.reader.location(i)
            raise UserError(f"{where}: row {row} cannot be read ({err})") from None

    def _read_skipping(self, i: int) -> tuple[int, dict[str, np.ndarray], int]:
        """``(index, raw sample, damaged rows skipped)``: sample ``i``, or the next readable one if it is damaged."""
        if not self.skip_damaged:
            return i, self.read(i), 0
        pid = os.getpid()
        if self._warned_pid != pid:
            self._warned, self._warned_pid = set(), pid
        n = len(self)
        for skipped in range(n):
            j = (i + skipped) % n
            try:
                return j, self.reader[j], skipped
            except h5.DamagedRowError as err:
                key = (str(err.path), err.row)
                if key not in self._warned:
                    self._warned.add(key)
                    log.warning("%s; skipped", err)
        raise UserError(f"{self.path}: every row is damaged")

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        self._ensure_rng()
        i, raw, skipped = self._read_skipping(i)
        lm = raw["landmarks_2d"].astype(np.float32)
        cx, cy, side = landmark_box(lm)
        side *= self.crop_scale
        train = self.augment is not None
        if train and self.scale_jitter > 0:
            side *= float(np.exp(self._rng.uniform(-self.scale_jitter, self.scale_jitter)))
        if train and self.shift_jitter > 0:
            cx += float(self._rng.uniform(-self.shift_jitter, self.shift_jitter)) * side
            cy += float(self._rng.uniform(-self.shift_jitter, self.shift_jitter)) * side
        matrix = crop_matrix(cx, cy, side, self.crop_size)
        sample = {
            "image": raw["image"],
            "seg": raw["seg"],
            "depth": raw["depth"].astype(np.float32),
            "landmarks": lm,
            "landmarks_visible": raw["landmarks_visible"].astype(bool),
        }
        if "normal" in raw:
            sample["normal"] = raw["normal"].astype(np.float32) / h5.NORMAL_SCALE
        if "uv" in raw:
            sample["uv"] = raw["uv"].astype(np.float32)
        sample = warp_sample(sample, matrix, self.crop_size)
        if self.augment is not None:
            sample = self.augment(sample)
        rel, mask = relative_depth(sample["depth"])
        s = self.crop_size
        lm = sample["landmarks"]
        in_crop = (lm >= -0.5).all(1) & (lm <= s - 0.5).all(1)
        out = {
            "image": torch.from_numpy(np.ascontiguousarray(sample["image"])).permute(2, 0, 1).float().div_(255.0),
            "seg": torch.from_numpy(np.ascontiguousarray(sample["seg"])).long(),
            "depth": torch.from_numpy(rel)[None],
            "depth_mask": torch.from_numpy(mask)[None],
            "landmarks": torch.from_numpy(np.ascontiguousarray(lm, dtype=np.float32)),
            "landmarks_visible": torch.from_numpy(np.ascontiguousarray(sample["landmarks_visible"])),
            "landmarks_in_crop": torch.from_numpy(in_crop),
            "crop_matrix": torch.from_numpy(matrix.astype(np.float32)),
            "index": torch.tensor(i, dtype=torch.int64),
            DAMAGED_KEY: torch.tensor(skipped, dtype=torch.int64),
        }
        if "normal" in sample:
            out["normal"] = torch.from_numpy(np.ascontiguousarray(sample["normal"], dtype=np.float32)).permute(2, 0, 1)
        if "uv" in sample:
            out["uv"] = torch.from_numpy(np.ascontiguousarray(sample["uv"], dtype=np.float32)).permute(2, 0, 1)
        return out
