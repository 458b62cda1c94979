"""Importers: published dataset layouts -> our HDF5 schema (one shard file, resumable like generation).

* ``synthforge``: the published SynthForge release (``images/``, colour-coded ``seg/``, 8-bit ``depth/``,
  ``annotations/*.json``), see :mod:`next3d_gen.importers.synthforge_release`.
* ``facesynthetics``: Microsoft FaceSynthetics (``NNNNNN.png``, ``_seg.png``, ``_ldmks.txt``), see
  :mod:`next3d_gen.importers.facesynthetics`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from next3d_gen.errors import UserError
from next3d_gen.h5 import ShardWriter, make_attrs, shard_filename

IMPORTERS: dict[str, str] = {
    "synthforge": "next3d_gen.importers.synthforge_release:import_synthforge_release",
    "facesynthetics": "next3d_gen.importers.facesynthetics:import_facesynthetics",
}


def output_file(out: str | Path) -> Path:
    """``out`` itself when it names an ``.h5`` file, else the single shard file inside the folder ``out``."""
    out = Path(out)
    return out if out.suffix == ".h5" else out / shard_filename(0, 1)


def read_image(path: Path, mode: str) -> np.ndarray:
    """Read an image file as a numpy array in PIL ``mode`` ("RGB" or "L"); UserError naming the file otherwise."""
    try:
        with Image.open(path) as im:
            if mode == "L" and im.mode not in ("L", "P", "I", "I;16"):
                im = im.convert("L")
            return np.asarray(im.convert(mode) if im.mode not in (mode, "I", "I;16") else im)
    except FileNotFoundError:
        raise UserError(f"missing file: {path}") from None
    except OSError as err:
        raise UserError(f"cannot read image {path}: {err}") from None


def bbox_of_mask(mask: np.ndarray) -> np.ndarray:
    """(4,) float32 x0, y0, x1, y1 pixel-edge box of a boolean (H, W) mask (zeros when empty)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return np.zeros(4, np.float32)
    return np.array([xs.min() - 0.5, ys.min() - 0.5, xs.max() + 0.5, ys.max() + 0.5], np.float32)


def write_samples(
    out: str | Path,
    stems: list[str],
    shapes: dict[str, tuple],
    label_space_json: str,
    config: dict,
    image_size: int,
    depth_kind: str,
    load: Callable[[str], dict[str, np.ndarray]],
    progress: Callable[[Iterable[int], int], Iterable[int]] | None = None,
) -> Path:
    """Write ``load(stem)`` for every stem into one resumable shard; returns the finished file path."""
    path = output_file(out)
    attrs = make_attrs(label_space_json, config, image_size, depth_kind=depth_kind)
    writer = ShardWriter(path, len(stems), {**shapes, "complete": ()}, attrs, fields=list(shapes))
    try:
        rows = writer.pending_rows()
        for row in progress(rows, len(stems)) if progress else rows:
            writer.write(row, load(stems[row]))
        writer.finalize()
    finally:
        writer.close()
    return path
