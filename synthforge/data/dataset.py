"""Torch dataset over the HDF5 shards written by stage A (``next3d_gen.h5`` schema) or by an importer.

Reading goes through :class:`next3d_gen.h5.SampleReader` (a file, a shard folder or an ``index.json``; rows whose
``complete`` flag is False are skipped; files opened lazily per process and reopened after a fork). Each sample is
cropped around its landmark box, resized to ``crop_size`` and, in training, augmented jointly
(:mod:`synthforge.data.transforms`).

A file may lack some labels (an imported published dataset: FaceSynthetics has no depth and no landmark visibility,
the SynthForge release has unitless relative depth). Missing fields are missing, not zero: each item carries presence
flags (``has_seg``, ``has_depth``, ``has_landmarks``, ``has_visibility``) and its ``depth_kind``, and the losses and
metrics skip what a sample lacks (:mod:`synthforge.losses`). A file written by an importer with a merge table in
:data:`next3d_gen.labels.TRAINING_MERGE_TABLES` has its ``seg`` mapped into the training label space there: hard
labels in ``seg``, partial labels (several allowed classes) as bitmasks in ``seg_partial``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from next3d_gen import h5
from next3d_gen.errors import UserError
from next3d_gen.labels import (
    IGNORE_INDEX,
    NUM_LANDMARKS,
    SYNTH_V2,
    SYNTH_V2_TO_SYNTH,
    TRAINING_MERGE_TABLES,
    LabelSpace,
    TrainingMergeTable,
)
from synthforge.data.transforms import (
    AugmentConfig,
    JointAugment,
    crop_matrix,
    landmark_box,
    warp_sample,
)

REQUIRED_FIELDS = ("image",)
"""Fields a training file must have. Besides, a sample needs ``landmarks_2d`` or ``bbox`` to be cropped around."""
LABEL_FIELDS = ("seg", "depth", "landmarks_2d", "landmarks_visible")
"""Fields read when the file has them; each one's absence is flagged per sample (``has_*``) and masked in the losses."""
PRESENCE_KEYS = {"seg": "has_seg", "depth": "has_depth", "landmarks_2d": "has_landmarks",
                 "landmarks_visible": "has_visibility", "normal": "has_normal", "uv": "has_uv"}  # fmt: skip
"""Item key of the (bool scalar) presence flag of each field."""
DAMAGED_KEY = "damaged_skipped"
"""Batch key: per sample, how many damaged rows were skipped to produce it (int64, usually 0)."""

log = logging.getLogger(__name__)


def relative_depth(depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Head-relative depth: depth minus the foreground median, 0 on background.

    Args:
        depth: (H, W) float32 camera z in metres (or an imported unitless depth, larger = farther), 0 = background.

    Returns:
        ``(rel, mask)``: (H, W) float32 in the input's unit and (H, W) bool foreground mask (depth > 0).
    """
    mask = depth > 0
    rel = np.zeros_like(depth, dtype=np.float32)
    if mask.any():
        rel[mask] = depth[mask] - np.median(depth[mask])
    return rel, mask


def file_merge_table(reader: h5.SampleReader) -> TrainingMergeTable | None:
    """The merge table into the training label space of a dataset's files; None when its ``seg`` is already in
    training ids (generated files of the current schema, or an importer without a table).

    Chosen by the importer recorded in the file's ``generator_config`` (keys of
    :data:`next3d_gen.labels.TRAINING_MERGE_TABLES`); a generated file of schema version 2 (22 classes, beards
    labelled hair) gets :data:`next3d_gen.labels.SYNTH_V2_TO_SYNTH` (its hair is {hair, beard}).

    Raises:
        UserError: the file's label space is not the table's source space (names the file).
    """
    try:
        config = json.loads(reader.attrs.get(h5.ATTR_GENERATOR_CONFIG) or "null")
    except (TypeError, ValueError):
        config = None
    importer = config.get("importer") if isinstance(config, dict) else None
    table = TRAINING_MERGE_TABLES.get(importer) if isinstance(importer, str) else None
    stored = LabelSpace.from_json(reader.attrs[h5.ATTR_LABEL_SPACE])
    if table is None:
        return SYNTH_V2_TO_SYNTH if stored.classes == SYNTH_V2.classes else None
    if stored.classes != table.source_space.classes:
        raise UserError(
            f"{reader.files[0]}: written by the '{importer}' importer but its label space '{stored.name}' is not "
            f"'{table.source_space.name}'"
        )
    return table


def file_depth_kind(reader: h5.SampleReader, stored: set[str]) -> str:
    """A dataset's entry of :data:`next3d_gen.h5.DEPTH_KINDS`: its ``depth_kind`` attribute (metric when absent:
    older writers), ``"none"`` when it stores no depth. UserError naming the file for an unknown kind."""
    if "depth" not in stored:
        return "none"
    kind = reader.attrs.get(h5.ATTR_DEPTH_KIND, "metric")
    if kind not in h5.DEPTH_KINDS:
        raise UserError(f"{reader.files[0]}: unknown {h5.ATTR_DEPTH_KIND} {kind!r} (expected one of {h5.DEPTH_KINDS})")
    return kind


def crop_item(
    raw: dict[str, np.ndarray],
    matrix: np.ndarray,
    crop_size: int,
    present: dict[str, bool],
    depth_kind: str = "metric",
    augment: JointAugment | None = None,
    map_seg: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict[str, torch.Tensor]:
    """One training item (the keys of :class:`SynthFaceDataset` items but ``index``, ``source`` and
    ``damaged_skipped``) from a stored sample.

    Args:
        raw: schema arrays of one sample (a :class:`next3d_gen.h5.SampleReader` row or a
            :meth:`next3d_gen.pipeline.SamplePipeline.generate` record).
        matrix: (2, 3) float crop matrix, source-image pixels -> crop pixels.
        crop_size: crop side S, pixels.
        present: per field of :data:`LABEL_FIELDS` (and normal / uv when wanted) whether ``raw`` has it.
        depth_kind: the file's kind (:data:`next3d_gen.h5.DEPTH_KINDS`).
        augment: joint augmentation after the crop (training), or None.
        map_seg: stored ids (S, S) -> (training ids with 255 at partial / ignored pixels, (S, S) int64 partial
            bitmasks), for a file with a merge table; None: the stored ids, no partial labels.
    """
    has = present
    image = raw["image"]
    sample = {
        "image": image,
        "seg": raw["seg"] if has["seg"] else np.zeros(image.shape[:2], np.uint8),
        "landmarks": raw["landmarks_2d"].astype(np.float32) if has["landmarks_2d"]
        else np.zeros((NUM_LANDMARKS, 2), np.float32),
        "landmarks_visible": raw["landmarks_visible"].astype(bool) if has["landmarks_visible"]
        else np.ones(NUM_LANDMARKS, bool),
    }  # fmt: skip
    if "depth" in raw:
        sample["depth"] = raw["depth"].astype(np.float32)
    if "normal" in raw:
        sample["normal"] = raw["normal"].astype(np.float32) / h5.NORMAL_SCALE
    if "uv" in raw:
        sample["uv"] = raw["uv"].astype(np.float32)
    sample = warp_sample(sample, matrix, crop_size)
    if augment is not None:
        sample = augment(sample)
    s = crop_size
    if "depth" in sample:
        rel, mask = relative_depth(sample["depth"])
    else:
        rel, mask = np.zeros((s, s), np.float32), np.zeros((s, s), bool)
    if not has["seg"]:
        seg, partial = np.full((s, s), IGNORE_INDEX, np.uint8), np.zeros((s, s), np.int64)
    elif map_seg is None:
        seg, partial = sample["seg"], np.zeros((s, s), np.int64)
    else:
        seg, partial = map_seg(sample["seg"])
    lm = sample["landmarks"]
    in_crop = (lm >= -0.5).all(1) & (lm <= s - 0.5).all(1) & has["landmarks_2d"]
    out = {
        "image": torch.from_numpy(np.ascontiguousarray(sample["image"])).permute(2, 0, 1).float().div_(255.0),
        "seg": torch.from_numpy(np.ascontiguousarray(seg)).long(),
        "seg_partial": torch.from_numpy(np.ascontiguousarray(partial)),
        "depth": torch.from_numpy(rel)[None],
        "depth_mask": torch.from_numpy(mask)[None],
        "depth_kind": torch.tensor(h5.DEPTH_KINDS.index(depth_kind), dtype=torch.int64),
        "landmarks": torch.from_numpy(np.ascontiguousarray(lm, dtype=np.float32)),
        "landmarks_visible": torch.from_numpy(np.ascontiguousarray(sample["landmarks_visible"])),
        "landmarks_in_crop": torch.from_numpy(in_crop),
        "crop_matrix": torch.from_numpy(matrix.astype(np.float32)),
    }
    for name, flag in has.items():
        out[PRESENCE_KEYS[name]] = torch.tensor(flag)
    if "normal" in has:
        normal = sample.get("normal", np.zeros((s, s, 3), np.float32))
        out["normal"] = torch.from_numpy(np.ascontiguousarray(normal, dtype=np.float32)).permute(2, 0, 1)
    if "uv" in has:
        uv = sample.get("uv", np.full((s, s, 2), -1.0, np.float32))
        out["uv"] = torch.from_numpy(np.ascontiguousarray(uv, dtype=np.float32)).permute(2, 0, 1)
    return out


class SynthFaceDataset(Dataset):
    """Cropped (and optionally augmented) samples of a SynthForge HDF5 dataset.

    Args:
        path: an ``.h5`` file, a folder of shards (``*.h5``) or an ``index.json``.
        crop_size: side S of the square crop fed to the network, pixels.
        crop_scale: crop side = ``crop_scale`` x the larger side of the landmark box.
        scale_jitter: training only: the side is multiplied by ``exp(U(-j, j))``.
        shift_jitter: training only: the centre moves by ``U(-j, j)`` x side on each axis.
        augment: joint augmentation settings; None = no augmentation (evaluation).
        load_normals: also return normals (zeros and ``has_normal`` False for a file without them).
        load_uv: also return UV maps (-1 and ``has_uv`` False for a file without them).
        seed: base seed of the random crop jitter / augmentation (mixed with the torch seed of each worker and
            ``source_index``).
        skip_damaged: a row that fails its checksum (:class:`next3d_gen.h5.DamagedRowError`) is skipped: the next
            readable row (wrapping around) is returned instead, with one warning per damaged row and process naming
            file and row, and counted in the item's ``damaged_skipped``. False: UserError naming file and row.
        source_index: the items' ``source`` (this dataset's position in a training mixture).

    Attributes:
        label_space: the label space of the items' ``seg`` (the merge table's target for a file with a table, else
            the file's own label space as read: :attr:`next3d_gen.h5.SampleReader.label_space`).
        stored_label_space: the label space of the stored ``seg`` (horizontal flips swap its left/right classes).
        merge_table: the file's :class:`~next3d_gen.labels.TrainingMergeTable`, or None.
        depth_kind: ``"metric"``, ``"relative"`` or ``"none"`` (:func:`file_depth_kind`).
        present: per field of :data:`LABEL_FIELDS` (and normal / uv when loaded): whether the file stores it.

    Each item is a dict of tensors:
        ``image`` (3,S,S) float32 in [0, 1] RGB;
        ``seg`` (S,S) int64 class ids of ``label_space``; 255 = ignore, also at partial-label pixels and everywhere in
        a sample without seg;
        ``seg_partial`` (S,S) int64 bitmask of the classes allowed at a partial-label pixel (bit c = class id c), 0
        elsewhere;
        ``depth`` (1,S,S) float32 relative depth: the stored depth minus its foreground median, 0 on background;
        metres for metric depth, the file's unit for relative depth, 0 everywhere without depth;
        ``depth_mask`` (1,S,S) bool foreground pixels with depth (all False without depth);
        ``depth_kind`` int64 index of the file's kind in :data:`next3d_gen.h5.DEPTH_KINDS`;
        ``landmarks`` (68,2) float32 crop pixels (pixel-centre convention; 0 without landmarks);
        ``landmarks_visible`` (68,) bool (all True when the file stores no visibility: treated as all visible);
        ``landmarks_in_crop`` (68,) bool (the landmark losses' mask), all False without landmarks;
        ``has_seg``, ``has_depth``, ``has_landmarks``, ``has_visibility`` bool: the file has that label;
        ``crop_matrix`` (2,3) float32 mapping source-image pixels to crop pixels (before augmentation);
        ``index`` int64, the sample actually returned (``i`` unless rows were skipped); ``source`` int64;
        optionally ``normal`` (3,S,S) float32 camera-frame unit normals (0 on background) and ``uv`` (2,S,S) float32
        (-1 on background), each with ``has_normal`` / ``has_uv``;
        ``damaged_skipped`` int64, damaged rows skipped to produce this item (log its sum).

    A file without landmarks is cropped around its ``bbox`` (the head box, side x 1, centred); it needs one of them.
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
        source_index: int = 0,
    ) -> None:
        self.reader = h5.SampleReader(path)
        stored = set(self.reader.fields)
        missing = [f for f in REQUIRED_FIELDS if f not in stored]
        if missing:
            raise UserError(f"{self.reader.files[0]}: not a SynthForge training set (missing {', '.join(missing)})")
        if "landmarks_2d" not in stored and "bbox" not in stored:
            raise UserError(f"{self.reader.files[0]}: has neither landmarks_2d nor bbox to crop the faces around")
        optional = [*LABEL_FIELDS, *(["normal"] if load_normals else []), *(["uv"] if load_uv else [])]
        self.present = {name: name in stored for name in optional}
        self.depth_kind = file_depth_kind(self.reader, stored)
        fields = [*REQUIRED_FIELDS, *(f for f in optional if f in stored)]
        if "landmarks_2d" not in stored:
            fields.append("bbox")
        if self.depth_kind == "none" and "depth" in fields:  # depth_kind "none" beside a depth dataset
            fields.remove("depth")
            self.present["depth"] = False
        self.reader.fields = fields
        if len(self.reader) == 0:
            raise UserError(f"{path}: no complete samples")
        self.path = Path(path)
        self.merge_table = file_merge_table(self.reader)
        self.stored_label_space: LabelSpace = self.reader.label_space
        self.label_space: LabelSpace = self.merge_table.target if self.merge_table else self.stored_label_space
        if self.merge_table is not None:
            self._hard_lut = self.merge_table.hard_lut()
            self._partial_lut = self.merge_table.partial_lut()
        self.source_index = int(source_index)
        self.crop_size = int(crop_size)
        self.crop_scale = float(crop_scale)
        self.scale_jitter = float(scale_jitter)
        self.shift_jitter = float(shift_jitter)
        self.augment_config = augment
        self.augment = JointAugment(self.stored_label_space, augment, seed=seed) if augment is not None else None
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
            s = (torch.initial_seed() + self.seed + 1_000_003 * self.source_index) % (2**32)
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

    def _crop_window(self, raw: dict[str, np.ndarray]) -> tuple[float, float, float]:
        """Centre (x, y) and side of the un-jittered crop window, source pixels."""
        if "landmarks_2d" in raw:
            cx, cy, side = landmark_box(raw["landmarks_2d"].astype(np.float32))
            return cx, cy, side * self.crop_scale
        x0, y0, x1, y1 = (float(v) for v in raw["bbox"])  # pixel-edge box
        return (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0, 1.0)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        self._ensure_rng()
        i, raw, skipped = self._read_skipping(i)
        cx, cy, side = self._crop_window(raw)
        train = self.augment is not None
        if train and self.scale_jitter > 0:
            side *= float(np.exp(self._rng.uniform(-self.scale_jitter, self.scale_jitter)))
        if train and self.shift_jitter > 0:
            cx += float(self._rng.uniform(-self.shift_jitter, self.shift_jitter)) * side
            cy += float(self._rng.uniform(-self.shift_jitter, self.shift_jitter)) * side
        matrix = crop_matrix(cx, cy, side, self.crop_size)
        map_seg = None if self.merge_table is None else (lambda seg: (self._hard_lut[seg], self._partial_lut[seg]))
        out = crop_item(raw, matrix, self.crop_size, self.present, self.depth_kind, self.augment, map_seg)
        out["index"] = torch.tensor(i, dtype=torch.int64)
        out["source"] = torch.tensor(self.source_index, dtype=torch.int64)
        out[DAMAGED_KEY] = torch.tensor(skipped, dtype=torch.int64)
        return out
