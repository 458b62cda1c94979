"""Face crops and joint (image + labels) augmentation.

Two steps, both on numpy arrays in the HDF5 layout (H x W x C, pixel-centre coordinates: integer values are pixel
centres, an image spans [-0.5, W - 0.5]):

1. :func:`~synthforge.crops.crop_matrix` / :func:`warp_sample`: a square crop around the landmark box (optionally
   jittered), resized to the training resolution with one affine warp (bilinear for the image, nearest for every
   label map). The crop helpers live in :mod:`synthforge.crops` (shared with stage II and prediction) and are
   re-exported here.
2. :class:`JointAugment`: albumentations geometry (horizontal flip, affine rotation / scale / shift, perspective)
   applied identically to image, segmentation (nearest), depth (nearest), normals (nearest), UV (nearest) and the 68
   landmarks (keypoints), followed by image-only photometric noise (blur, random erasing, Gaussian noise,
   brightness / contrast, gamma). What albumentations does not know is fixed here:

   * horizontal flip: landmark indices permuted with ``LANDMARK_FLIP_PERMUTATION``, left/right classes swapped with
     the label space's flip table, normal x negated;
   * in-plane rotation: normal vectors (x, y) rotated by the rotation part of the applied warps (the polar factor of
     the Jacobian at the crop centre; exact for the affine, a first-order approximation under perspective).

   Background fills: image 0, seg 0 (background), depth 0 (= background), normal 0, UV -1.
"""

from __future__ import annotations

from dataclasses import dataclass

import albumentations as A
import cv2
import numpy as np

from next3d_gen.labels import LANDMARK_FLIP_PERMUTATION, LabelSpace
from synthforge.crops import crop_matrix, landmark_box, transform_points, warp_image, warp_labels

__all__ = ["AugmentConfig", "JointAugment", "Sample", "crop_matrix", "flip_sample", "landmark_box", "warp_sample"]
"""``crop_matrix`` and ``landmark_box`` are :mod:`synthforge.crops`' (the dataset's crop is made from them)."""

Sample = dict[str, np.ndarray]
"""Keys: ``image`` (H,W,3) uint8; ``seg`` (H,W) uint8; ``depth`` (H,W) float32 metres; optional ``normal`` (H,W,3)
float32 unit vectors; ``uv`` (H,W,2) float32 (-1 = background); ``landmarks`` (68,2) float32 pixels; optional
``landmarks_visible`` (68,) bool (permuted with the landmarks on flips)."""

_MASK_KEYS = ("depth", "normal", "uv")


def warp_sample(sample: Sample, matrix: np.ndarray, out_size: int) -> Sample:
    """Warp every map of ``sample`` with the (2, 3) affine ``matrix`` into an ``out_size`` square; points too.

    Image: bilinear (:func:`~synthforge.crops.warp_image`); label maps: nearest (:func:`~synthforge.crops.warp_labels`).
    Outside the source: image 0, seg 0, depth 0, normal 0, UV -1.
    """
    out: Sample = {}
    for key, value in sample.items():
        if key == "landmarks":
            out[key] = transform_points(matrix, value)
        elif key == "image":
            out[key] = warp_image(value, matrix, out_size)
        elif value.ndim >= 2 and value.shape[:2] == sample["image"].shape[:2]:
            out[key] = warp_labels(value, matrix, out_size, -1.0 if key == "uv" else 0)
        else:
            out[key] = value
    return out


@dataclass
class AugmentConfig:
    """Augmentation probabilities and ranges (training only).

    Attributes:
        flip_p: horizontal flip probability.
        affine_p: probability of the random similarity; ``rotate_deg`` max |angle|, ``scale`` (min, max),
            ``shift`` max |translation| as a fraction of the crop side.
        perspective_p / perspective_scale: albumentations ``Perspective`` corner-jitter range.
        blur_p / blur_limit: Gaussian blur and its kernel size range (odd ints).
        erase_p / erase_holes / erase_size: random erasing (CoarseDropout) probability, number of holes (min, max),
            hole side range as a fraction of the crop.
        noise_p / noise_std: Gaussian noise probability and std range (fraction of 255).
        color_p / brightness / contrast: brightness / contrast jitter.
        gamma_p / gamma: gamma probability and range in percent (albumentations convention, 100 = identity).
    """

    flip_p: float = 0.5
    affine_p: float = 0.8
    rotate_deg: float = 20.0
    scale: tuple[float, float] = (0.9, 1.1)
    shift: float = 0.05
    perspective_p: float = 0.2
    perspective_scale: tuple[float, float] = (0.02, 0.05)
    blur_p: float = 0.2
    blur_limit: tuple[int, int] = (3, 5)
    erase_p: float = 0.3
    erase_holes: tuple[int, int] = (1, 2)
    erase_size: tuple[float, float] = (0.1, 0.3)
    noise_p: float = 0.2
    noise_std: tuple[float, float] = (0.02, 0.08)
    color_p: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    gamma_p: float = 0.2
    gamma: tuple[float, float] = (70.0, 150.0)


def _polar_rotation(jacobian: np.ndarray) -> np.ndarray:
    """Closest rotation (2, 2) to a 2x2 linear map (orthogonal polar factor, det forced to +1)."""
    u, _, vt = np.linalg.svd(jacobian)
    r = u @ vt
    if np.linalg.det(r) < 0:
        u[:, -1] *= -1
        r = u @ vt
    return r


class JointAugment:
    """Random joint geometric + photometric augmentation of one cropped sample.

    Args:
        label_space: gives the left/right class swap applied on horizontal flips.
        config: probabilities and ranges.
        seed: seed of albumentations' generator (``reseed`` changes it, e.g. once per DataLoader worker).
    """

    def __init__(self, label_space: LabelSpace, config: AugmentConfig | None = None, seed: int | None = None) -> None:
        self.config = cfg = config or AugmentConfig()
        self.flip_lut = label_space.flip_lut().astype(np.uint8)[:256]
        self.permutation = np.asarray(LANDMARK_FLIP_PERMUTATION)
        border = {"border_mode": cv2.BORDER_CONSTANT, "fill": 0, "fill_mask": 0}
        self.geometric = A.Compose(
            [
                A.HorizontalFlip(p=cfg.flip_p),
                A.Affine(
                    rotate=(-cfg.rotate_deg, cfg.rotate_deg),
                    scale=cfg.scale,
                    translate_percent=(-cfg.shift, cfg.shift),
                    p=cfg.affine_p,
                    **border,
                ),
                A.Perspective(scale=cfg.perspective_scale, p=cfg.perspective_p, **border),
            ],
            keypoint_params=A.KeypointParams(format="xy", remove_invisible=False),
            additional_targets={k: "mask" for k in _MASK_KEYS},
            save_applied_params=True,
            seed=seed,
        )
        self.photometric = A.Compose(
            [
                A.GaussianBlur(blur_limit=cfg.blur_limit, p=cfg.blur_p),
                A.RandomBrightnessContrast(brightness_limit=cfg.brightness, contrast_limit=cfg.contrast, p=cfg.color_p),
                A.RandomGamma(gamma_limit=cfg.gamma, p=cfg.gamma_p),
                A.GaussNoise(std_range=cfg.noise_std, p=cfg.noise_p),
                A.CoarseDropout(
                    num_holes_range=cfg.erase_holes,
                    hole_height_range=cfg.erase_size,
                    hole_width_range=cfg.erase_size,
                    fill=0,
                    p=cfg.erase_p,
                ),
            ],
            seed=None if seed is None else seed + 1,
        )

    def reseed(self, seed: int) -> None:
        """Re-seed both albumentations pipelines (call once per worker process)."""
        self.geometric.set_random_seed(seed)
        self.photometric.set_random_seed(seed + 1)

    def geometry(self, sample: Sample) -> Sample:
        """Apply only the random geometric part (labels kept aligned); see the module docstring."""
        image = sample["image"]
        h, w = image.shape[:2]
        kwargs = {k: sample[k] for k in _MASK_KEYS if k in sample}
        if "uv" in kwargs:
            kwargs["uv"] = kwargs["uv"] + 1.0  # background -1 -> 0 so that the zero fill means background
        res = self.geometric(image=image, mask=sample["seg"], keypoints=sample["landmarks"], **kwargs)
        out = dict(sample)
        out["image"], out["seg"] = res["image"], res["mask"]
        out["landmarks"] = np.asarray(res["keypoints"], dtype=np.float32).reshape(-1, 2)
        for k in kwargs:
            out[k] = res[k]
        if "uv" in out:
            out["uv"] = out["uv"] - 1.0
        flipped = False
        homography = np.eye(3)
        for name, params in res["applied_transforms"]:
            if name == "HorizontalFlip":
                flipped = True
            elif "matrix" in params:
                homography = np.asarray(params["matrix"], dtype=np.float64) @ homography
        if flipped:
            out["landmarks"] = out["landmarks"][self.permutation]
            if "landmarks_visible" in out:
                out["landmarks_visible"] = out["landmarks_visible"][self.permutation]
            out["seg"] = self.flip_lut[out["seg"]]
            if "normal" in out:
                out["normal"] = out["normal"] * np.array([-1.0, 1.0, 1.0], dtype=np.float32)
        if "normal" in out and not np.allclose(homography, np.eye(3)):
            rot = _polar_rotation(_jacobian_at(homography, (w - 1) / 2, (h - 1) / 2)).astype(np.float32)
            n = out["normal"]
            out["normal"] = np.concatenate([n[..., :2] @ rot.T, n[..., 2:]], axis=-1)
        return out

    def __call__(self, sample: Sample) -> Sample:
        """Geometry, then image-only photometric noise."""
        out = self.geometry(sample)
        out["image"] = self.photometric(image=out["image"])["image"]
        return out


def _jacobian_at(h: np.ndarray, x: float, y: float) -> np.ndarray:
    """2x2 Jacobian of the homography ``h`` (3, 3) at the point (x, y)."""
    p = h @ np.array([x, y, 1.0])
    jac = np.empty((2, 2))
    for i in range(2):
        jac[i] = (h[i, :2] * p[2] - p[i] * h[2, :2]) / p[2] ** 2
    return jac


def flip_sample(sample: Sample, label_space: LabelSpace) -> Sample:
    """Deterministic horizontal flip with full label semantics (used by tests and test-time augmentation).

    ``x' = W - 1 - x`` for landmarks (then permuted), seg classes swapped, normal x negated, UV unchanged.
    """
    w = sample["image"].shape[1]
    out = dict(sample)
    for k in ("image", "seg", "depth", "normal", "uv"):
        if k in sample:
            out[k] = np.ascontiguousarray(sample[k][:, ::-1])
    lm = sample["landmarks"].copy()
    lm[:, 0] = w - 1 - lm[:, 0]
    out["landmarks"] = lm[np.asarray(LANDMARK_FLIP_PERMUTATION)]
    if "landmarks_visible" in out:
        out["landmarks_visible"] = out["landmarks_visible"][np.asarray(LANDMARK_FLIP_PERMUTATION)]
    out["seg"] = label_space.flip_lut().astype(np.uint8)[out["seg"]]
    if "normal" in out:
        out["normal"] = out["normal"] * np.array([-1.0, 1.0, 1.0], dtype=np.float32)
    return out
