"""Import Microsoft FaceSynthetics ("Fake It Till You Make It").

Layout: one flat folder with ``NNNNNN.png`` (RGB), ``NNNNNN_seg.png`` (uint8 class ids in the dataset's own
19-class space, 255 = ignore) and ``NNNNNN_ldmks.txt`` (70 rows "x y": the 68 iBUG points, then the two pupils).
The file records :data:`next3d_gen.labels.FACESYNTHETICS` as its label space (ids kept as they are; training maps them
through :data:`next3d_gen.labels.FACESYNTHETICS_TO_SYNTH`). Landmark coordinates are taken as pixel positions in the
pixel-centre convention; the 68 iBUG points are the rows :data:`next3d_gen.labels.FACESYNTHETICS_LANDMARK_ROWS` (the
two pupil rows are dropped). The dataset has no depth, normals, cameras or model parameters, so only image, seg,
landmarks_2d, bbox and sample_seed are stored (``depth_kind`` "none"); training masks the missing terms per sample.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from next3d_gen.errors import UserError
from next3d_gen.importers import bbox_of_mask, read_image, write_samples
from next3d_gen.labels import FACESYNTHETICS, FACESYNTHETICS_LANDMARK_ROWS, IGNORE_INDEX

NUM_LANDMARK_ROWS = 70


def read_landmarks(path: Path) -> np.ndarray:
    """(68, 2) float32 iBUG landmarks from a ``_ldmks.txt`` file (UserError naming the file when malformed)."""
    try:
        rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
        pts = np.asarray(rows, dtype=np.float32)
    except FileNotFoundError:
        raise UserError(f"missing file: {path}") from None
    except ValueError:
        raise UserError(f"{path}: not a list of 'x y' rows") from None
    if pts.ndim != 2 or pts.shape != (NUM_LANDMARK_ROWS, 2):
        raise UserError(f"{path}: {len(rows)} landmark rows, expected {NUM_LANDMARK_ROWS}")
    return pts[list(FACESYNTHETICS_LANDMARK_ROWS)]


def load_sample(src: Path, stem: str, size: int) -> dict[str, np.ndarray]:
    """Read one sample ``stem`` (images must be ``size`` x ``size``)."""
    image = read_image(src / f"{stem}.png", "RGB")
    seg = read_image(src / f"{stem}_seg.png", "L").astype(np.uint8)
    for name, arr in (("", image), ("_seg", seg)):
        if arr.shape[:2] != (size, size):
            raise UserError(f"{src / (stem + name + '.png')}: size {arr.shape[1]}x{arr.shape[0]}, expected {size}")
    bad = (seg >= FACESYNTHETICS.num_classes) & (seg != IGNORE_INDEX)
    if bad.any():
        raise UserError(f"{src / (stem + '_seg.png')}: class id {int(seg[bad].max())} outside the 19-class space")
    foreground = (seg != 0) & (seg != IGNORE_INDEX)
    return {
        "image": image,
        "seg": seg,
        "landmarks_2d": read_landmarks(src / f"{stem}_ldmks.txt"),
        "bbox": bbox_of_mask(foreground),
        "sample_seed": np.int64(-1),
    }


def import_facesynthetics(src: str | Path, out: str | Path, progress=None) -> Path:  # noqa: ANN001
    """Convert the FaceSynthetics folder ``src`` into one HDF5 shard at ``out`` (a ``.h5`` path or a folder)."""
    src = Path(src)
    if not src.is_dir():
        raise UserError(f"{src}: not a folder")
    stems = sorted(p.stem for p in src.glob("*.png") if not p.stem.endswith("_seg"))
    if not stems:
        raise UserError(f"{src}: no FaceSynthetics images (NNNNNN.png)")
    size = int(read_image(src / f"{stems[0]}.png", "RGB").shape[0])
    shapes = {"image": (size, size, 3), "seg": (size, size), "landmarks_2d": (68, 2), "bbox": (4,), "sample_seed": ()}
    config = {"importer": "facesynthetics", "source": str(src.resolve()), "num_samples": len(stems)}
    return write_samples(
        out,
        stems,
        shapes,
        FACESYNTHETICS.to_json(),
        config,
        size,
        "none",
        lambda stem: load_sample(src, stem, size),
        progress,
    )
