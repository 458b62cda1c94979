"""The HDF5 dataset schema (version 3) in one place: dataset names, dtypes, per-sample shapes, file attributes.

Versions: 3 (written now) = 2 with ``beard`` = 22 appended to the synthetic label space (23 classes:
:data:`next3d_gen.labels.SYNTH`; beards were ``hair`` in version 2). 2 = 1 with the synthetic label space extended to
22 classes (``hair`` = 20, ``eyeglasses`` = 21 appended, ids 0-19 unchanged). The datasets, dtypes and attributes are
the same in all three. Version-1 and version-2 files (20-class :data:`next3d_gen.labels.SYNTH_V1`, 22-class
:data:`next3d_gen.labels.SYNTH_V2`) are still read: their label space is presented as the 23-class one
(:func:`next3d_gen.labels.current_label_space`), so they train a 23-class network (they have no beard pixels,
version 1 no hair / eyeglasses pixels either; version 2's hair trains as the partial label {hair, beard}:
:data:`next3d_gen.labels.SYNTH_V2_TO_SYNTH`). A shard is never resumed or finished by a writer of
another schema version or label space (its rows would mix label rules). Optional per-sample datasets
(:data:`OPTIONAL_FIELDS`, e.g. the ``guide_score`` of loss-guided generation) may be present in a file of any
version; they change no other dataset, so readers that do not know them simply ignore them.

Writers and readers import these constants; nothing else spells a dataset name or dtype.

Per-sample shapes use the symbols ``H``, ``W`` (image size), ``S``, ``E`` (FLAME shape / expression columns) and
``Z`` (generator latent size, 0 for the procedural renderer); they are resolved by :func:`sample_shapes`.

Reproducibility ("the same bytes"): a shard written in one go, resumed after a kill or a full disk, or produced with
another worker count holds the same rows: every field of every row, as stored (the raw chunk bytes: values,
compression and checksum) and as read back, and the same file attributes. The HDF5 container around them (where
chunks sit in the file, B-tree nodes, free space, hence the file size and its checksum) is not guaranteed
identical, so compare datasets with :class:`SampleReader` or ``h5py``, not files with ``cmp``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from next3d_gen.errors import UserError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3
"""Schema version written in every new file (see the module docstring for what changed)."""
READABLE_SCHEMA_VERSIONS = (1, 2, 3)
"""Schema versions :class:`SampleReader` accepts."""


@dataclass(frozen=True)
class Field:
    """One per-sample HDF5 dataset: name, numpy dtype, per-sample shape (symbols allowed), and meaning."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]
    doc: str


FIELDS: tuple[Field, ...] = (
    Field("image", "uint8", ("H", "W", 3), "RGB"),
    Field("seg", "uint8", ("H", "W"), "class ids of the file's label space, 255 = ignore"),
    Field("depth", "float16", ("H", "W"), "camera z in metres, 0 = background"),
    Field("normal", "int8", ("H", "W", 3), "camera-space (OpenCV) unit normals x127, 0 on background"),
    Field("uv", "float16", ("H", "W", 2), "template UV coordinates in [0, 1], -1 on background"),
    Field("landmarks_2d", "float32", (68, 2), "iBUG 68 (x, y) pixels, OpenCV pixel-centre convention"),
    Field("landmarks_3d", "float32", (68, 3), "iBUG 68 points in the camera frame (OpenCV), metres"),
    Field("landmarks_visible", "bool", (68,), "not occluded by the head itself"),
    Field("bbox", "float32", (4,), "x0, y0, x1, y1 of the rendered head, pixels"),
    Field("camera_K", "float32", (3, 3), "pixel intrinsics"),
    Field("camera_cam2world", "float32", (4, 4), "OpenCV cam2world, world = head-model frame, metres"),
    Field("flame_shape", "float32", ("S",), "identity coefficients"),
    Field("flame_expression", "float32", ("E",), "expression coefficients"),
    Field("flame_pose", "float32", (15,), "axis-angle global, neck, jaw, left eye, right eye"),
    Field("latent", "float32", ("Z",), "generator latent (empty for the procedural renderer)"),
    Field("sample_seed", "int64", (), "regenerates this one sample alone"),
    Field("complete", "bool", (), "written last for each sample; readers skip incomplete rows"),
)
OPTIONAL_FIELDS: tuple[Field, ...] = (
    Field("guide_score", "float32", (), "loss-guided generation: the guiding network's training loss on this sample"),
)
"""Per-sample datasets that only some writers store (same schema version: readers that do not know one ignore it).
``guide_score`` is written by ``synthforge generate --guide`` (:mod:`synthforge.guide`). A writer stores one only
when asked (:class:`ShardWriter` ``fields``); :class:`SampleReader` returns the fields every file of a dataset has."""
FIELD_BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS + OPTIONAL_FIELDS}

NORMAL_SCALE = 127.0
"""int8 normals store round(n * 127)."""

# File attributes.
ATTR_SCHEMA_VERSION = "schema_version"
ATTR_LABEL_SPACE = "label_space"
ATTR_GENERATOR_CONFIG = "generator_config"
ATTR_PACKAGE_VERSION = "package_version"
ATTR_IMAGE_SIZE = "image_size"
ATTR_DEPTH_KIND = "depth_kind"
"""``"metric"`` (camera z, metres), ``"relative"`` (imported 8-bit per-image-normalised depth, unitless) or
``"none"`` (the file has no depth). A file without the attribute (older writers) holds metric depth."""
DEPTH_KINDS = ("metric", "relative", "none")
"""The values of :data:`ATTR_DEPTH_KIND`; training batches carry a sample's kind as its index in this tuple."""
REQUIRED_ATTRS = (ATTR_SCHEMA_VERSION, ATTR_LABEL_SPACE, ATTR_IMAGE_SIZE)

MAX_IMAGE_SIZE = 2048
"""Largest image side (pixels) the generator accepts. Every per-pixel buffer of a sample (rasterizer, annotations,
renderer, the row written) grows with the square of the side; 2048 is 4x Next3D's native 512 px. Checked before
anything is allocated."""


def sample_shapes(height: int, width: int, num_shape: int, num_expression: int, latent_dim: int) -> dict[str, tuple]:
    """Resolve every field's per-sample shape for one file (the optional fields' too)."""
    sym = {"H": height, "W": width, "S": num_shape, "E": num_expression, "Z": latent_dim}
    return {f.name: tuple(sym[d] if isinstance(d, str) else d for d in f.shape) for f in FIELDS + OPTIONAL_FIELDS}


def dtype_of(name: str) -> np.dtype:
    """Numpy dtype of the field ``name``."""
    return np.dtype(FIELD_BY_NAME[name].dtype)


# ----------------------------------------------------------------------------------------------------------------
# Sharding

SHARD_PATTERN = "shard-{index:05d}-of-{count:05d}.h5"
PARTIAL_SUFFIX = ".partial"
INDEX_FILE = "index.json"
IMAGE_FIELDS = frozenset({"image", "seg", "depth", "normal", "uv"})
"""Per-pixel fields (compressible). The small per-sample fields are stored uncompressed."""
COMPRESSIONS = ("gzip", "lzf", None)


def shard_range(num_samples: int, num_shards: int, shard_index: int) -> tuple[int, int]:
    """Contiguous sample-index range ``[start, stop)`` of one shard (sizes differ by at most one).

    >>> [shard_range(10, 3, i) for i in range(3)]
    [(0, 3), (3, 6), (6, 10)]
    """
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(f"shard index {shard_index} not in [0, {num_shards})")
    return num_samples * shard_index // num_shards, num_samples * (shard_index + 1) // num_shards


def shard_filename(shard_index: int, num_shards: int) -> str:
    """``shard-00003-of-00008.h5`` style name."""
    return SHARD_PATTERN.format(index=shard_index, count=num_shards)


def installed_version() -> str:
    """The installed ``synthforge`` distribution's version ("unknown" when running from a source tree)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("synthforge")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def make_attrs(
    label_space_json: str,
    generator_config: dict,
    image_size: int,
    depth_kind: str = "metric",
    package_version: str | None = None,
    **extra: int | float | str,
) -> dict[str, int | float | str]:
    """File attributes of a shard (the generator config is stored as sorted-key JSON)."""
    if package_version is None:
        package_version = installed_version()
    if depth_kind not in DEPTH_KINDS:
        raise ValueError(f"depth_kind must be one of {DEPTH_KINDS}, got {depth_kind!r}")
    return {
        ATTR_SCHEMA_VERSION: SCHEMA_VERSION,
        ATTR_LABEL_SPACE: label_space_json,
        ATTR_GENERATOR_CONFIG: json.dumps(generator_config, sort_keys=True),
        ATTR_PACKAGE_VERSION: package_version,
        ATTR_IMAGE_SIZE: int(image_size),
        ATTR_DEPTH_KIND: depth_kind,
        **extra,
    }


def _decode_attr(value):  # noqa: ANN001, ANN202 - h5py attribute scalar
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


class ShardWriter:
    """Crash-safe writer of one HDF5 shard.

    Strategy (kill -9 at any moment, then rerun the same command):

    * The shard is written as ``<name>.h5.partial`` and renamed to ``<name>.h5`` only once every row is complete,
      so a final ``.h5`` file is always whole.
    * Each row: every field except ``complete`` is written, the file is flushed, then ``complete[row] = True`` is
      written and the file flushed again. A row is complete on disk only after its data is.
    * Every dataset carries a Fletcher-32 checksum per chunk, so a torn chunk is detected on read, not returned.
    * Reopening a ``.partial``: the stored schema version, label space, ``generator_config``, row count and field
      shapes must equal the new ones (else :class:`UserError`); every complete row is read back once (checksums
      verified); if the file cannot be opened or any complete row fails to read, the partial shard is deleted and
      started over (its rows are regenerated: generation is deterministic, so the result is the same bytes). The
      verified rows' stored chunks are then copied unchanged into a fresh container that replaces the partial file
      (an interrupted writer's container may be inconsistent even where its rows read back), and only incomplete
      rows are (re)written.
    * Reopening a finished ``.h5``: the config check, then every row is read back once (checksums verified);
      a file that is not readable HDF5 (e.g. truncated) or a damaged row is a :class:`UserError` naming the file
      (and row): it is never silently accepted or overwritten. Nothing is written.
    * A write that fails (e.g. ENOSPC, disk full) is a :class:`UserError` naming the partial file and row; rows
      already flushed stay complete, so rerunning after freeing space resumes (the row being written when the
      disk filled is incomplete and is written again). A partial file left shorter than its superblock records
      is padded (sparse) so that HDF5 opens it, then rebuilt as above.

    Flushes reach the OS page cache, which survives the death of the process; after power loss the partial file may
    be lost, in which case the shard restarts. HDF5 2.x without SWMR.

    Args:
        path: final file path (``.h5``); the partial file is ``path + ".partial"``.
        num_samples: rows in this file.
        shapes: per-sample shape of every field written (see :func:`sample_shapes`).
        attrs: file attributes (see :func:`make_attrs`); ``generator_config`` identifies the content.
        fields: names of the fields to store (default: all of :data:`FIELDS`); ``complete`` is always stored.
        compression: filter of the per-pixel label maps (seg, depth, normal, uv): ``"gzip"`` (level
            ``compression_level``, with byte shuffle), ``"lzf"`` or None. Measured on this project's data, gzip-1
            reads as fast as lzf and is smaller.
        image_compression: filter of ``image`` (same choices). Default None: rendered images with noise and texture
            shrink only ~25-40% losslessly while decompression would dominate random-access reads.
        compression_level: gzip level.
    """

    def __init__(
        self,
        path: str | Path,
        num_samples: int,
        shapes: dict[str, tuple],
        attrs: dict,
        fields: list[str] | tuple[str, ...] | None = None,
        compression: str | None = "gzip",
        image_compression: str | None = None,
        compression_level: int = 1,
    ) -> None:
        import h5py

        self._h5py = h5py
        self.path = Path(path)
        self.partial_path = self.path.with_name(self.path.name + PARTIAL_SUFFIX)
        self.num_samples = int(num_samples)
        names = [f.name for f in FIELDS] if fields is None else list(fields)
        if "complete" not in names:
            names.append("complete")
        unknown = [n for n in names if n not in FIELD_BY_NAME]
        if unknown:
            raise ValueError(f"unknown fields {unknown}")
        self.fields = [n for n in names if n != "complete"]
        self.shapes = {n: tuple(int(d) for d in shapes[n]) for n in names}
        self.attrs = dict(attrs)
        for name, value in (("compression", compression), ("image_compression", image_compression)):
            if value not in COMPRESSIONS:
                raise UserError(f"storage.{name} must be one of gzip, lzf, none; got {value!r}")
        self.compression = compression
        self.image_compression = image_compression
        self.compression_level = int(compression_level)
        self.restarted = False
        self._file = None
        self._done = np.zeros(self.num_samples, dtype=bool)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot create output folder {self.path.parent}: {err.strerror}") from None
        if not os.access(self.path.parent, os.W_OK):
            raise UserError(f"output folder is not writable: {self.path.parent}")
        if self.path.exists():
            with open_existing(self.path) as f:
                self._check_matches(f, self.path)
                self._done[:] = f["complete"][:]
                if not self._done.all():
                    raise UserError(f"{self.path}: finished shard has incomplete rows; delete it and rerun")
                damage = first_damaged_row(f, self.fields)
            if damage is not None:
                raise UserError(f"{damage}; delete {self.path.name} and rerun to regenerate it")
            return
        if self.partial_path.exists():
            try:
                old = _open_partial(self.partial_path)
            except OSError as err:
                if _is_lock_error(err):
                    raise UserError(f"{self.partial_path} is open in another process; close it first") from None
                log.warning("%s: cannot open the partial shard; starting it over", self.partial_path)
                self._start_over()
            else:
                try:
                    self._check_matches(old, self.partial_path)
                    verified = self._verify_complete_rows(old)
                    if verified:
                        self._rebuild(old)
                finally:
                    _close_quietly(old)  # replaced (or about to be): a failing flush of it does not matter
                if not verified:
                    log.warning("%s: a complete row failed to read back; starting the shard over", self.partial_path)
                    self._start_over()
        else:
            self._create()

    # -- setup ---------------------------------------------------------------------------------------------------
    def _start_over(self) -> None:
        self.restarted = True
        self.partial_path.unlink(missing_ok=True)
        self._done[:] = False
        self._create()

    def _create(self, path: Path | None = None) -> None:
        path = self.partial_path if path is None else path
        try:
            f = self._h5py.File(path, "w", rdcc_nbytes=0)  # rows are written once: no chunk cache
        except OSError as err:
            raise UserError(f"cannot write {path}: {_write_error(err)}") from None
        for key, value in self.attrs.items():
            f.attrs[key] = value
        n = self.num_samples
        for name in self.fields + ["complete"]:
            shape = self.shapes[name]
            chunked = n > 0 and all(shape)
            filters: dict = {}
            if chunked:
                filters["chunks"] = (1, *shape)
                filters["fletcher32"] = True
                method = self.image_compression if name == "image" else self.compression
                if name in IMAGE_FIELDS and method is not None:
                    filters["compression"] = method
                    if method == "gzip":
                        filters["compression_opts"] = self.compression_level
                        filters["shuffle"] = dtype_of(name).itemsize > 1
            f.create_dataset(name, shape=(n, *shape), dtype=dtype_of(name), **filters)
        try:
            f.flush()
        except (OSError, RuntimeError) as err:  # e.g. ENOSPC: nothing of value in the new file yet
            _close_quietly(f)
            path.unlink(missing_ok=True)
            raise UserError(f"cannot write {path}: {_write_error(err)}") from None
        self._file = f

    def _check_matches(self, f, where: Path) -> None:  # noqa: ANN001 - h5py.File
        version = _decode_attr(f.attrs.get(ATTR_SCHEMA_VERSION))
        if version != self.attrs.get(ATTR_SCHEMA_VERSION):
            raise UserError(
                f"{where} was written with schema version {version}, not {self.attrs.get(ATTR_SCHEMA_VERSION)}; "
                "use another --out or delete the file"
            )
        if _decode_attr(f.attrs.get(ATTR_LABEL_SPACE)) != self.attrs.get(ATTR_LABEL_SPACE):
            raise UserError(f"{where} was written with another label space; use another --out or delete the file")
        stored = _decode_attr(f.attrs.get(ATTR_GENERATOR_CONFIG, "null"))
        wanted = self.attrs.get(ATTR_GENERATOR_CONFIG, "null")
        if json.loads(stored) != json.loads(wanted):
            diff = _first_difference(json.loads(stored), json.loads(wanted))
            raise UserError(
                f"{where} was written with a different generator config (differs at {diff}); "
                "use another --out or delete the file"
            )
        for name, shape in self.shapes.items():
            if name not in f or f[name].shape != (self.num_samples, *shape):
                raise UserError(f"{where}: dataset '{name}' does not match the requested layout; delete the file")

    def _rebuild(self, old) -> None:  # noqa: ANN001 - h5py.File
        """A fresh partial file holding the verified complete rows of ``old``, chunk bytes copied unchanged.

        The HDF5 container of an interrupted writer may be inconsistent even where its rows read back (a write that
        failed on a full disk can leave allocation metadata behind the data: later writes then fail), so a resumed
        shard never appends to it: its complete rows' stored chunks (data, filters, checksums: the same bytes) go into
        a new file that replaces the old one. Needs free space for one more copy of those rows while it runs.
        """
        tmp = self.partial_path.with_name(self.partial_path.name + ".rebuild")
        tmp.unlink(missing_ok=True)
        self._create(tmp)
        new = self._file
        try:
            for name in [*self.fields, "complete"]:
                src, dst = old[name], new[name]
                if src.chunks is None:  # no per-row chunks (zero-size rows): nothing stored
                    continue
                for row in np.flatnonzero(self._done):
                    origin = (int(row),) + (0,) * (src.ndim - 1)
                    mask, raw = src.id.read_direct_chunk(origin)
                    dst.id.write_direct_chunk(origin, raw, mask)
            new.flush()
            new.close()
            os.replace(tmp, self.partial_path)
        except (OSError, RuntimeError) as err:
            self._file = None
            _close_quietly(new)
            tmp.unlink(missing_ok=True)
            raise UserError(f"{tmp}: cannot copy the complete rows of the partial shard: {_write_error(err)}") from None
        self._file = self._h5py.File(self.partial_path, "r+", rdcc_nbytes=0)

    def _verify_complete_rows(self, f) -> bool:  # noqa: ANN001 - h5py.File
        """Read every complete row of ``f`` through HDF5's filter pipeline (checksums); record them as done."""
        try:
            done = f["complete"][:].astype(bool)
            for row in np.flatnonzero(done):
                for name in self.fields:
                    f[name][row]
        except Exception:  # noqa: BLE001 - any HDF5 read error means a damaged file
            return False
        self._done[:] = done
        return True

    # -- writing -------------------------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        """True when every row is complete and the file has its final name."""
        return self._file is None and self.path.exists()

    def pending_rows(self) -> list[int]:
        """Rows still to write, ascending."""
        return [int(r) for r in np.flatnonzero(~self._done)]

    def write(self, row: int, sample: dict[str, np.ndarray]) -> None:
        """Write one row (every stored field but ``complete``), flush, then mark it complete and flush.

        Args:
            row: row in this file, ``0 <= row < num_samples``.
            sample: field name -> array of the field's per-sample shape (cast to the schema dtype).

        Raises:
            UserError: the write failed (disk full, I/O error), naming the partial file and the row; rows written
                before stay complete and a rerun resumes.
        """
        if self._file is None:
            raise RuntimeError(f"{self.path} is finished or closed")
        f = self._file
        arrays = {}
        for name in self.fields:
            value = np.asarray(sample[name])
            want = self.shapes[name]
            if value.shape != want:
                raise ValueError(f"field '{name}': shape {value.shape}, expected {want}")
            arrays[name] = value.astype(dtype_of(name), copy=False)
        try:
            for name, value in arrays.items():
                f[name][row] = value
            f.flush()
            f["complete"][row] = True
            f.flush()
        except (OSError, RuntimeError) as err:  # h5py reports a failed flush (e.g. ENOSPC) as RuntimeError
            self._file = None
            _close_quietly(f)  # the container may be inconsistent now; a rerun rebuilds it from the complete rows
            raise UserError(f"{self.partial_path}: cannot write row {row}: {_write_error(err)}") from None
        self._done[row] = True

    def finalize(self) -> bool:
        """If every row is complete: close and rename the partial file to the final name. Returns ``finished``."""
        if self._file is not None and self._done.all():
            self.close()
            try:
                os.replace(self.partial_path, self.path)
            except OSError as err:
                raise UserError(f"cannot rename {self.partial_path} to {self.path.name}: {_write_error(err)}") from None
        return self.finished

    def close(self) -> None:
        """Close without finalizing (the partial file stays resumable)."""
        if self._file is not None:
            f, self._file = self._file, None
            try:
                f.close()
            except (OSError, RuntimeError) as err:
                raise UserError(
                    f"{self.partial_path}: cannot close: {_write_error(err)}; rerun the same command to resume"
                ) from None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _write_error(err: OSError | RuntimeError) -> str:
    """One-line reason of a failed write; a full disk is named as such (h5py's messages carry no errno)."""
    text = " ".join(str(err).split())
    if getattr(err, "errno", None) == errno.ENOSPC or "No space left" in text or "errno = 28" in text:
        return "disk full (ENOSPC); free space and rerun the same command to resume"
    os_error = re.search(r"errno = (\d+), error message = '([^']*)'", text)  # HDF5's wording of a failed write()
    if os_error:
        return f"{os_error.group(2)} (errno {os_error.group(1)}); rerun the same command to resume"
    strerror = getattr(err, "strerror", None)
    return " ".join(strerror.split()) if isinstance(strerror, str) and strerror else text


def _open_partial(path: Path):  # noqa: ANN201 - h5py.File
    """Open a partial shard to resume it (read-write: HDF5's file lock then refuses it while another process holds
    it). A write that failed on a full disk can leave the file shorter than the end of file its superblock records
    (HDF5 then refuses it as "truncated"); it is padded with zeros (a sparse extension, no disk space) up to that
    size and opened again: its complete rows are then verified by their checksums, and only copied from it."""
    import h5py

    try:
        return h5py.File(path, "r+", rdcc_nbytes=0)
    except OSError as err:
        short = re.search(r"truncated file: eof = (\d+),.*stored_eof = (\d+)", " ".join(str(err).split()))
        if short is None or int(short.group(2)) <= int(short.group(1)):
            raise
        os.truncate(path, int(short.group(2)))
        return h5py.File(path, "r+", rdcc_nbytes=0)


def _close_quietly(f) -> None:  # noqa: ANN001 - h5py.File
    """Close a file whose writes failed; a second failure while flushing it is expected and not reported."""
    try:
        f.close()
    except (OSError, RuntimeError):
        pass


def open_existing(path: Path):  # noqa: ANN201 - h5py.File
    """Open an existing HDF5 file read-only; UserError naming it when it is held by a writer or is not readable
    HDF5 (not HDF5 at all, truncated, damaged superblock)."""
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as err:
        if _is_lock_error(err):
            raise UserError(f"{path} is open in another process; close it first") from None
        reason = " ".join(str(err).split())
        raise UserError(
            f"{path} exists but is not a readable HDF5 file ({reason}); delete it or use another --out"
        ) from None


def first_damaged_row(f, fields: list[str] | tuple[str, ...]) -> DamagedRowError | None:  # noqa: ANN001 - h5py.File
    """Read every complete row of the datasets ``fields`` of the open file ``f`` once (checksums verified).

    Returns:
        The first failure (file, row, field, reason), or None when every complete row reads back.
    """
    readers = {name: _FieldReader(f[name]) for name in fields}
    complete = f["complete"][:].astype(bool) if "complete" in f else None
    n = len(complete) if complete is not None else min((f[name].shape[0] for name in fields), default=0)
    for row in range(n):
        if complete is not None and not complete[row]:
            continue
        for name, reader in readers.items():
            try:
                reader.read(row)
            except _ChunkDamaged as err:
                return DamagedRowError(f.filename, row, name, str(err))
    return None


def _is_lock_error(err: OSError) -> bool:
    """True when h5py refused to open a file because another handle (process) holds it, not because it is damaged."""
    text = str(err)
    return isinstance(err, BlockingIOError) or "unable to lock file" in text or "already open for read" in text


def _first_difference(a, b, prefix: str = "") -> str:  # noqa: ANN001
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key, "<missing>") != b.get(key, "<missing>"):
                return _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
    return prefix.rstrip(".") or "<top level>"


def check_folder_config(folder: str | Path, generator_config_json: str) -> None:
    """Raise UserError if a finished shard in ``folder`` was made with another generator config.

    Shards of one dataset are written by separate processes; this stops a shard from joining a dataset it does not
    belong to (e.g. a rerun with a changed option). Unfinished shards are checked when they are resumed.
    """
    import h5py

    wanted = json.loads(generator_config_json)
    for p in sorted(Path(folder).glob("shard-*-of-*.h5")):
        try:
            f = h5py.File(p, "r")
        except OSError as err:
            if _is_lock_error(err):
                continue
            open_existing(p)  # raises the UserError naming the unreadable file
        with f:
            stored = json.loads(_decode_attr(f.attrs.get(ATTR_GENERATOR_CONFIG, "null")))
        if stored != wanted:
            raise UserError(
                f"{p} belongs to a dataset with a different generator config (differs at "
                f"{_first_difference(stored, wanted)}); use another --out"
            )


def write_index(folder: str | Path, num_shards: int) -> Path | None:
    """Write ``index.json`` listing the shards once all ``num_shards`` final files exist (atomic rename).

    Returns:
        The index path, or None while a shard is still missing.
    """
    folder = Path(folder)
    entries = []
    start = 0
    for i in range(num_shards):
        p = folder / shard_filename(i, num_shards)
        if not p.exists():
            return None
        with open_existing(p) as f:
            n = int(f["complete"].shape[0])
            config = _decode_attr(f.attrs.get(ATTR_GENERATOR_CONFIG, "null"))
        entries.append({"file": p.name, "num_samples": n, "sample_start": start})
        start += n
    index = {
        "schema_version": SCHEMA_VERSION,
        "num_shards": num_shards,
        "num_samples": start,
        "shards": entries,
        ATTR_GENERATOR_CONFIG: json.loads(config),
    }
    path = folder / INDEX_FILE
    write_json_atomic(path, index)
    return path


def write_json_atomic(path: str | Path, data: object) -> None:
    """Write ``data`` as JSON (indent 1) to ``path`` through a temporary file and a rename, so a reader sees the old
    file or the new one, never a part; the folder is created when missing. UserError naming the file on failure."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {_write_error(err)}") from None


# ----------------------------------------------------------------------------------------------------------------
# Reading


def resolve_files(path: str | Path) -> list[Path]:
    """HDF5 files of a dataset given a file, a shard folder (its ``index.json`` or every ``*.h5`` in it, sorted),
    or an index file. Raises UserError when nothing is found."""
    p = Path(path)
    if p.is_dir():
        if (p / INDEX_FILE).exists():
            return resolve_files(p / INDEX_FILE)
        files = sorted(p.glob("*.h5"))
        if not files:
            raise UserError(f"no .h5 files in {p} (unfinished shards are named *.h5.partial)")
        return files
    if not p.exists():
        raise UserError(f"dataset not found: {p}")
    if p.suffix == ".json":
        try:
            index = json.loads(p.read_text())
            return [p.parent / s["file"] for s in index["shards"]]
        except (ValueError, KeyError, TypeError) as err:
            raise UserError(f"{p}: not a dataset index ({err})") from None
    return [p]


class DamagedRowError(OSError):
    """A stored row that fails its Fletcher-32 checksum or cannot be decoded; never returned as data.

    Attributes:
        path: the HDF5 file.
        row: row index in that file.
        field: the dataset whose chunk is damaged.
        reason: what failed (checksum, inflate, size, HDF5's message).
    """

    def __init__(self, path: str | Path, row: int, field: str, reason: str) -> None:
        self.path, self.row, self.field, self.reason = Path(path), int(row), field, reason
        super().__init__(f"{path}: row {row} is damaged ('{field}': {reason})")


class _ChunkDamaged(Exception):
    """Internal: one chunk failed to decode (the reader adds file and row)."""


_FLETCHER_MOD = 65535
_FLETCHER_BLOCK = 1 << 22
"""Words per vectorised step: keeps every int64 partial sum exact (block * block * 65535 < 2**63)."""
_word_index = np.zeros(0, dtype=np.int64)


def fletcher32(data: bytes | memoryview) -> int:
    """HDF5's Fletcher-32 checksum of ``data`` (``H5_checksum_fletcher32`` in HDF5's ``H5checksum.c``), vectorised.

    HDF5 reads the bytes as big-endian 16-bit words ``w_0 .. w_{m-1}`` (an odd trailing byte is the high byte of a
    last word), keeps ``sum1 = sum w_i`` and ``sum2 = sum (m - i) w_i`` folded modulo 65535 in ones'-complement
    style (a non-zero sum folds to 1..65535, never to 0; only all-zero data gives 0), and returns
    ``sum2 << 16 | sum1``. Here both sums are computed exactly (int64 numpy sums and dot products per block of
    :data:`_FLETCHER_BLOCK` words, combined as Python ints), then reduced the same way.

    Returns:
        The 32-bit checksum; the HDF5 filter stores it after the (filtered) chunk as 4 little-endian bytes.
    """
    global _word_index
    size = memoryview(data).nbytes
    n_words = size // 2
    if len(_word_index) < min(n_words, _FLETCHER_BLOCK):
        _word_index = np.arange(min(max(n_words, 2 * len(_word_index)), _FLETCHER_BLOCK), dtype=np.int64)
    be = np.frombuffer(data, dtype=">u2", count=n_words)
    total = weighted = 0  # sum w_i and sum i * w_i over the whole words
    for start in range(0, n_words, _FLETCHER_BLOCK):
        words = be[start : start + _FLETCHER_BLOCK].astype(np.uint16).astype(np.int64)  # byte swap, then widen
        block_sum = int(words.sum())
        weighted += start * block_sum + int(_word_index[: len(words)] @ words)
        total += block_sum
    m = n_words + size % 2
    last = memoryview(data).cast("B")[-1] << 8 if size % 2 else 0
    s1 = total + last
    s2 = m * total - weighted + last
    sum1 = (s1 - 1) % _FLETCHER_MOD + 1 if s1 else 0
    sum2 = (s2 - 1) % _FLETCHER_MOD + 1 if s2 else 0
    return (sum2 << 16) | sum1


def checksum_matches(chunk: bytes) -> bool:
    """True when the last 4 bytes of a stored chunk equal the Fletcher-32 of the bytes before them.

    Also accepts the byte-swapped value that HDF5 before 1.6.3 wrote on little-endian machines (HDF5's reader
    accepts both).
    """
    if len(chunk) < 4:
        return False
    stored = int.from_bytes(chunk[-4:], "little")
    value = fletcher32(memoryview(chunk)[:-4])
    swapped = ((value & 0x00FF00FF) << 8) | ((value >> 8) & 0x00FF00FF)
    return stored in (value, swapped)


class _FieldReader:
    """Reads one row of one per-sample dataset with as little per-call overhead as possible.

    Fast path (unshuffled chunks of one row, uncompressed or gzip): the row's chunk is fetched raw
    (``read_direct_chunk``) and decoded here: verify the Fletcher-32 trailer (:func:`fletcher32`), drop it, inflate
    gzip. This skips HDF5's per-read selection, filter and type-conversion machinery (3x less overhead for the small
    fields). Any other layout (byte shuffle, lzf, other filters, contiguous storage, a chunk stored with a filter
    skipped) falls back to a low-level ``H5Dread`` of the row, with the file type as memory type, so bool (an HDF5
    enum) is copied, not converted; there HDF5's own filter pipeline verifies the checksum.

    Raises:
        _ChunkDamaged: the row's chunk fails its checksum, does not inflate, has the wrong size, or HDF5 cannot read
            it (the caller, :class:`SampleReader`, turns it into :class:`DamagedRowError` naming file and row).
    """

    def __init__(self, ds) -> None:  # noqa: ANN001 - h5py.Dataset
        from h5py import h5s

        self.id = ds.id
        self.shape = tuple(ds.shape[1:])
        self.dtype = ds.dtype
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * ds.dtype.itemsize
        self.mspace = h5s.create_simple((1, *self.shape)) if self.nbytes else None
        self.ftype = ds.id.get_type()
        self.origin = (0,) * len(self.shape)
        self.fast = (
            self.nbytes > 0
            and ds.chunks == (1, *self.shape)
            and ds.compression in (None, "gzip")
            and not (ds.shuffle and ds.dtype.itemsize > 1)  # HDF5's C unshuffle beats numpy's strided copy
            and ds.scaleoffset is None
            and ds.dtype.byteorder in ("=", "|", "<" if sys.byteorder == "little" else ">")
        )
        self.gzip = ds.compression == "gzip"
        self.trailer = 4 if ds.fletcher32 else 0

    def read(self, row: int) -> np.ndarray:
        """Row ``row`` as an array of the per-sample shape and the stored dtype (a copy)."""
        if self.nbytes == 0:
            return np.empty(self.shape, dtype=self.dtype)
        if self.fast:
            try:
                mask, raw = self.id.read_direct_chunk((row, *self.origin))
            except OSError as err:  # e.g. a chunk address or size pointing outside the file
                raise _ChunkDamaged(str(err)) from None
            if mask == 0:
                if self.trailer:
                    if not checksum_matches(raw):
                        raise _ChunkDamaged("Fletcher-32 checksum mismatch")
                    raw = raw[: -self.trailer]
                if self.gzip:
                    try:
                        raw = zlib.decompress(raw)
                    except zlib.error as err:
                        raise _ChunkDamaged(f"gzip: {err}") from None
                if len(raw) != self.nbytes:
                    raise _ChunkDamaged(f"chunk holds {len(raw)} bytes, expected {self.nbytes}")
                return np.frombuffer(raw, dtype=self.dtype).reshape(self.shape).copy()
        buf = np.empty((1, *self.shape), dtype=self.dtype)
        fspace = self.id.get_space()
        fspace.select_hyperslab((row, *self.origin), (1, *self.shape))
        try:
            self.id.read(self.mspace, fspace, buf, mtype=self.ftype)
        except OSError as err:  # HDF5's filter pipeline: checksum, inflate
            raise _ChunkDamaged(str(err)) from None
        return buf[0]


class SampleReader:
    """Random access to the complete samples of one or more shard files.

    Files are opened lazily in the process that reads (and reopened after a fork), so a reader can be handed to
    DataLoader workers; no h5py handle crosses a fork or a pickle.

    Args:
        path: an HDF5 file, a shard folder, or an ``index.json``.
        fields: field names to return (default: every field stored in every file, except ``complete``; a field
            only some files hold, e.g. an optional one, is left out).

    Attributes:
        files: the files, in sample order.
        attrs: the first file's attributes (decoded: strings, ints).
    """

    def __init__(self, path: str | Path, fields: list[str] | tuple[str, ...] | None = None) -> None:
        import h5py

        self.files = resolve_files(path)
        rows: list[np.ndarray] = []
        file_ids: list[np.ndarray] = []
        self.attrs: dict = {}
        stored: list[str] | None = None
        stored_by_file: list[list[str]] = []
        for k, p in enumerate(self.files):
            try:
                with h5py.File(p, "r") as f:
                    attrs = {key: _decode_attr(v) for key, v in f.attrs.items()}
                    missing = [a for a in REQUIRED_ATTRS if a not in attrs]
                    if missing:
                        raise UserError(f"{p}: not a SynthForge dataset (missing attributes {missing})")
                    if attrs[ATTR_SCHEMA_VERSION] not in READABLE_SCHEMA_VERSIONS:
                        readable = " or ".join(str(v) for v in READABLE_SCHEMA_VERSIONS)
                        raise UserError(f"{p}: schema version {attrs[ATTR_SCHEMA_VERSION]}, expected {readable}")
                    names = [n for n in f.keys() if n in FIELD_BY_NAME and n != "complete"]
                    complete = f["complete"][:].astype(bool) if "complete" in f else None
                    n_rows = f[names[0]].shape[0] if names else 0
            except OSError as err:
                if _is_lock_error(err):
                    raise UserError(f"{p} is being written by another process") from None
                raise UserError(f"cannot read {p}: {err}") from None
            if k == 0:
                self.attrs = attrs
                stored = names
            else:
                for key in (ATTR_LABEL_SPACE, ATTR_IMAGE_SIZE, ATTR_SCHEMA_VERSION):
                    if attrs[key] != self.attrs[key]:
                        raise UserError(f"{p}: attribute '{key}' differs from {self.files[0]}")
                stored = [n for n in stored if n in names]
            stored_by_file.append(names)
            good = np.flatnonzero(complete) if complete is not None else np.arange(n_rows)
            rows.append(good)
            file_ids.append(np.full(len(good), k))
        self._rows = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        self._file_ids = np.concatenate(file_ids) if file_ids else np.zeros(0, dtype=np.int64)
        assert stored is not None
        if fields is None:
            self.fields = list(stored)
        else:
            for names, p in zip(stored_by_file, self.files, strict=True):
                bad = [n for n in fields if n not in names]
                if bad:
                    raise UserError(f"{p}: no field(s) {bad} (stored: {', '.join(names)})")
            self.fields = list(fields)
        self._pid: int | None = None
        self._handles: dict[int, tuple] = {}

    @property
    def label_space(self):  # noqa: ANN201 - LabelSpace, imported lazily
        """The file's :class:`~next3d_gen.labels.LabelSpace`, as read: a version-1 or version-2 file's 20- or
        22-class synthetic space is presented as the current 23-class one (same ids;
        :func:`~next3d_gen.labels.current_label_space`)."""
        from next3d_gen.labels import LabelSpace, current_label_space

        return current_label_space(LabelSpace.from_json(self.attrs[ATTR_LABEL_SPACE]))

    @property
    def image_size(self) -> int:
        return int(self.attrs[ATTR_IMAGE_SIZE])

    def __len__(self) -> int:
        return int(len(self._rows))

    def location(self, i: int) -> tuple[Path, int]:
        """(file, row) of sample ``i``."""
        return self.files[int(self._file_ids[i])], int(self._rows[i])

    def _datasets(self, k: int) -> dict[str, _FieldReader]:
        import h5py

        pid = os.getpid()
        if self._pid != pid:
            self._handles = {}  # handles of the parent process are dropped, never used or closed here
            self._pid = pid
        entry = self._handles.get(k)
        if entry is None:
            f = h5py.File(self.files[k], "r")
            entry = (f, {name: _FieldReader(f[name]) for name in self.fields})
            self._handles[k] = entry
        return entry[1]

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        """Sample ``i`` as ``{field: array}`` with the schema's dtypes and per-sample shapes.

        Raises:
            DamagedRowError: a field of the sample's row fails its checksum or cannot be decoded (names file, row).
        """
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sample {i} out of range [0, {n})")
        readers = self._datasets(int(self._file_ids[i]))
        row = int(self._rows[i])
        out = {}
        for name, reader in readers.items():
            try:
                out[name] = reader.read(row)
            except _ChunkDamaged as err:
                raise DamagedRowError(self.files[int(self._file_ids[i])], row, name, str(err)) from None
        return out

    def close(self) -> None:
        """Close the files this process opened."""
        if self._pid == os.getpid():
            for f, _ in self._handles.values():
                f.close()
        self._handles = {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"] = {}
        state["_pid"] = None
        return state

    def __enter__(self) -> SampleReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
