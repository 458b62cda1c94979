"""Import the published SynthForge dataset layout.

Layout (facts: reference official_synthforge.md 1.9 and 1.12)::

    SRC/images/NNNNN.png        RGB
    SRC/seg/NNNNN.png           RGB colour-coded classes (the UV label texture's palette), white background
    SRC/depth/NNNNN.png         8-bit, per-image min-max normalised (near = 0), usually at a lower resolution
    SRC/annotations/NNNNN.json  z, camera_params (25), flame_shape (100), flame_exp (50), flame_pose (6), 2d_kps

Conversion:

* seg: every pixel takes the nearest colour of the 19 class colours of :data:`next3d_gen.labels.SYNTH_V1` (same ids)
  when its RGB distance is below :data:`COLOUR_THRESHOLD`; white and the texture's two unlisted colours (lower-neck
  cyan, unused-UV orange) are background; anything else (anti-aliased borders) is 255 = ignore. The release has no
  hair, eyeglasses or beard class, so the file's label space is that 20-class space (readers present it as
  :data:`next3d_gen.labels.SYNTH`, ids unchanged, like a schema-version-1 file).
* depth: resized to the image size (bilinear) and stored as the unitless value in (0, 1] on the foreground
  (0 = background); the file attribute ``depth_kind`` is ``"relative"``.
* landmarks: ``2d_kps`` are in the continuous convention (0 = left image edge); 0.5 is subtracted to reach ours.
* camera: the 25-value EG3D label is decoded to pixel K and an OpenCV cam2world whose position is mapped from
  Next3D world units to the FLAME frame in metres (same mapping as the Next3D backend).
* FLAME: shape (100), expression (50); the published 6-value pose (global, jaw) becomes our 15-value pose
  (global, neck = 0, jaw, eyes = 0). ``latent`` is z.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from next3d_gen.camera import from_eg3d_label
from next3d_gen.errors import UserError
from next3d_gen.importers import bbox_of_mask, read_image, write_samples
from next3d_gen.labels import IGNORE_INDEX, SYNTH_V1
from next3d_gen.render.next3d import world_to_flame

COLOUR_THRESHOLD = 10.0
"""Largest RGB Euclidean distance at which a seg pixel is matched to a class colour. The release's flat regions match
their table colour within ~2 units; a tight threshold also rejects most anti-aliased blends of two classes, some of
which land within ~13 units of a third class colour (e.g. eyeball/face blends near right_eye_region)."""
BACKGROUND_COLOURS = ((255, 255, 255), (0x00, 0xFF, 0xF1), (0xD1, 0x82, 0x3D))
FIELDS = (
    "image",
    "seg",
    "depth",
    "landmarks_2d",
    "bbox",
    "camera_K",
    "camera_cam2world",
    "flame_shape",
    "flame_expression",
    "flame_pose",
    "latent",
    "sample_seed",
)


def decode_seg(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 colour-coded map -> (H, W) uint8 SYNTH_V1 ids (0 background, 255 ignore)."""
    classes = np.asarray(SYNTH_V1.palette[1:], dtype=np.float32)  # ids 1..19
    colours = np.concatenate([classes, np.asarray(BACKGROUND_COLOURS, np.float32)])
    ids = np.concatenate([np.arange(1, SYNTH_V1.num_classes), np.zeros(len(BACKGROUND_COLOURS), np.int64)])
    flat = rgb.reshape(-1, 3).astype(np.float32)
    d2 = ((flat[:, None, :] - colours[None]) ** 2).sum(-1)
    nearest = d2.argmin(1)
    out = np.where(d2[np.arange(len(flat)), nearest] <= COLOUR_THRESHOLD**2, ids[nearest], IGNORE_INDEX)
    return out.reshape(rgb.shape[:2]).astype(np.uint8)


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"missing file: {path}") from None
    except ValueError as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None


def _array(ann: dict, key: str, shape: tuple[int, ...], path: Path) -> np.ndarray:
    if key not in ann:
        raise UserError(f"{path}: missing key '{key}'")
    a = np.asarray(ann[key], dtype=np.float32)
    if a.size != int(np.prod(shape)):
        raise UserError(f"{path}: '{key}' has {a.size} values, expected {int(np.prod(shape))}")
    return a.reshape(shape)


def load_sample(src: Path, stem: str, size: int) -> dict[str, np.ndarray]:
    """Read and convert one sample ``stem`` of the release at ``src`` (images must be ``size`` x ``size``)."""
    image = read_image(src / "images" / f"{stem}.png", "RGB")
    if image.shape[:2] != (size, size):
        raise UserError(f"{src / 'images' / (stem + '.png')}: size {image.shape[1]}x{image.shape[0]}, expected {size}")
    seg_rgb = read_image(src / "seg" / f"{stem}.png", "RGB")
    if seg_rgb.shape[:2] != (size, size):
        raise UserError(f"{src / 'seg' / (stem + '.png')}: size differs from its image")
    seg = decode_seg(seg_rgb)
    depth8 = read_image(src / "depth" / f"{stem}.png", "L").astype(np.float32)
    depth = F.interpolate(
        torch.from_numpy(depth8)[None, None], size=(size, size), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    foreground = (seg != 0) & (seg != IGNORE_INDEX)
    depth = np.where(foreground, (depth + 1.0) / 256.0, 0.0)
    ann_path = src / "annotations" / f"{stem}.json"
    ann = _load_json(ann_path)
    K, c2w = from_eg3d_label(torch.from_numpy(_array(ann, "camera_params", (25,), ann_path)), size, size)
    c2w[0, :3, 3] = world_to_flame(c2w[0, :3, 3])
    pose6 = _array(ann, "flame_pose", (6,), ann_path)
    pose = np.zeros(15, np.float32)
    pose[0:3], pose[6:9] = pose6[:3], pose6[3:]
    return {
        "image": image,
        "seg": seg,
        "depth": depth.astype(np.float16),
        "landmarks_2d": _array(ann, "2d_kps", (68, 2), ann_path) - 0.5,
        "bbox": bbox_of_mask(foreground),
        "camera_K": K[0].numpy(),
        "camera_cam2world": c2w[0].numpy(),
        "flame_shape": _array(ann, "flame_shape", (100,), ann_path),
        "flame_expression": _array(ann, "flame_exp", (50,), ann_path),
        "flame_pose": pose,
        "latent": _array(ann, "z", (len(ann.get("z", [])),), ann_path),
        "sample_seed": np.int64(-1),
    }


def import_synthforge_release(src: str | Path, out: str | Path, progress=None) -> Path:  # noqa: ANN001
    """Convert the release at ``src`` into one HDF5 shard at ``out`` (a ``.h5`` path or a folder)."""
    src = Path(src)
    if not (src / "images").is_dir():
        raise UserError(f"{src}: not a SynthForge release (no images/ folder)")
    stems = sorted(p.stem for p in (src / "images").glob("*.png"))
    if not stems:
        raise UserError(f"{src / 'images'}: no .png images")
    first = read_image(src / "images" / f"{stems[0]}.png", "RGB")
    size = int(first.shape[0])
    z_dim = len(_load_json(src / "annotations" / f"{stems[0]}.json").get("z", []))
    shapes = {
        "image": (size, size, 3),
        "seg": (size, size),
        "depth": (size, size),
        "landmarks_2d": (68, 2),
        "bbox": (4,),
        "camera_K": (3, 3),
        "camera_cam2world": (4, 4),
        "flame_shape": (100,),
        "flame_expression": (50,),
        "flame_pose": (15,),
        "latent": (z_dim,),
        "sample_seed": (),
    }
    config = {"importer": "synthforge", "source": str(src.resolve()), "num_samples": len(stems)}
    return write_samples(
        out,
        stems,
        shapes,
        SYNTH_V1.to_json(),
        config,
        size,
        "relative",
        lambda stem: load_sample(src, stem, size),
        progress,
    )
