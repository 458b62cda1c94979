"""Crops and joint augmentation keep images and labels aligned."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from next3d_gen import h5
from next3d_gen.labels import LANDMARK_FLIP_PERMUTATION, SYNTH
from synthforge.crops import crop_matrix, decode_image, transform_points, warp_labels
from synthforge.data.dataset import SynthFaceDataset, relative_depth
from synthforge.data.toy import make_toy_sample, write_toy_dataset
from synthforge.data.transforms import AugmentConfig, JointAugment, flip_sample, warp_sample

SIZE = 128
NO_PHOTO = {"blur_p": 0.0, "erase_p": 0.0, "noise_p": 0.0, "color_p": 0.0, "gamma_p": 0.0}


def _sample(seed: int) -> dict[str, np.ndarray]:
    raw = make_toy_sample(np.random.default_rng(seed), SIZE)
    return {
        "image": raw["image"],
        "seg": raw["seg"],
        "depth": raw["depth"].astype(np.float32),
        "normal": raw["normal"].astype(np.float32) / h5.NORMAL_SCALE,
        "uv": raw["uv"].astype(np.float32),
        "landmarks": raw["landmarks_2d"],
        "landmarks_visible": np.arange(68) % 3 == 0,
    }


def _robust_classes(seg: np.ndarray, lm: np.ndarray, radius: int = 1) -> dict[int, int]:
    """Landmarks whose (2r+1)^2 neighbourhood has a single class: index -> class."""
    out = {}
    for i, (x, y) in enumerate(np.round(lm).astype(int)):
        if radius <= x < seg.shape[1] - radius and radius <= y < seg.shape[0] - radius:
            patch = seg[y - radius : y + radius + 1, x - radius : x + radius + 1]
            if (patch == patch[0, 0]).all():
                out[i] = int(patch[0, 0])
    return out


def _class_at(seg: np.ndarray, pt: np.ndarray) -> int:
    x, y = np.round(pt).astype(int)
    return int(seg[y, x])


def _config(**kw: float) -> AugmentConfig:
    base = {"flip_p": 0.0, "affine_p": 0.0, "perspective_p": 0.0, **NO_PHOTO}
    base.update(kw)
    return AugmentConfig(**base)


CASES = {
    "flip": _config(flip_p=1.0),
    "affine": _config(affine_p=1.0, rotate_deg=35.0, scale=(0.8, 1.2), shift=0.06),
    "perspective": _config(perspective_p=1.0, perspective_scale=(0.04, 0.08)),
    "all": _config(flip_p=1.0, affine_p=1.0, perspective_p=1.0, rotate_deg=35.0),
}


@pytest.mark.parametrize("name", list(CASES))
def test_landmarks_stay_on_their_class(name: str) -> None:
    checked = 0
    for seed in range(4):
        s = _sample(seed)
        robust = _robust_classes(s["seg"], s["landmarks"])
        assert len(robust) > 15  # toy faces put most landmarks well inside their parts
        aug = JointAugment(SYNTH, CASES[name], seed=seed)
        out = aug(s)
        assert out["image"].shape == s["image"].shape and out["seg"].dtype == np.uint8
        for i, c in robust.items():
            p = out["landmarks"][i]
            if (p >= 0).all() and (p <= SIZE - 1).all():
                assert _class_at(out["seg"], p) == c, (name, seed, i, SYNTH.classes[c])
                checked += 1
        # subject's right eye landmarks (36-41) lie on the subject's right eye classes after any transform
        eye = [_class_at(out["seg"], out["landmarks"][i]) for i in range(36, 42)]
        assert set(eye) <= {SYNTH.id("right_eye_region"), SYNTH.id("right_eyeball")}, eye
    assert checked > 60


def test_flip_twice_is_identity_and_matches_albumentations() -> None:
    s = _sample(3)
    twice = flip_sample(flip_sample(s, SYNTH), SYNTH)
    for k in ("image", "seg", "depth", "normal", "uv", "landmarks_visible"):
        assert np.array_equal(twice[k], s[k]), k
    assert np.allclose(twice["landmarks"], s["landmarks"], atol=1e-4)
    once = flip_sample(s, SYNTH)
    # hand check: x' = W - 1 - x, index permuted, classes swapped, normal x negated
    j = 36
    src = s["landmarks"][LANDMARK_FLIP_PERMUTATION[j]]
    assert np.allclose(once["landmarks"][j], [SIZE - 1 - src[0], src[1]])
    lut = SYNTH.flip_lut()
    assert np.array_equal(once["seg"], lut[s["seg"][:, ::-1]].astype(np.uint8))
    assert np.allclose(once["normal"][..., 0], -s["normal"][:, ::-1, 0])
    # albumentations path (p = 1) gives the same arrays
    aug = JointAugment(SYNTH, _config(flip_p=1.0), seed=0)(s)
    for k in ("image", "seg", "depth", "normal", "uv", "landmarks_visible"):
        assert np.allclose(aug[k], once[k]), k
    assert np.allclose(aug["landmarks"], once["landmarks"], atol=1e-4)


def test_in_plane_rotation_rotates_normals() -> None:
    s = _sample(5)
    aug = JointAugment(SYNTH, _config(affine_p=1.0, rotate_deg=40.0, scale=(1.0, 1.0), shift=0.0), seed=1)
    out = aug(s)
    m, _ = cv2.estimateAffinePartial2D(s["landmarks"], out["landmarks"])
    angle = np.arctan2(m[1, 0], m[0, 0])
    assert abs(np.degrees(angle)) > 5  # the draw did rotate
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    inv = cv2.invertAffineTransform(m)
    ys, xs = np.nonzero(out["seg"] > 0)
    src = transform_points(inv, np.stack([xs, ys], 1).astype(np.float32))
    sx, sy = np.round(src).astype(int).T
    ok = (sx >= 0) & (sx < SIZE) & (sy >= 0) & (sy < SIZE)
    ok[ok] &= s["seg"][sy[ok], sx[ok]] > 0
    n_out = out["normal"][ys[ok], xs[ok]]
    n_src = s["normal"][sy[ok], sx[ok]]
    expected = np.concatenate([n_src[:, :2] @ rot.T, n_src[:, 2:]], 1)
    err_rotated = np.degrees(np.arccos(np.clip((n_out * expected).sum(1), -1, 1)))
    err_unrotated = np.degrees(np.arccos(np.clip((n_out * n_src).sum(1), -1, 1)))
    assert np.median(err_rotated) < 3.0
    assert np.median(err_unrotated) > 2 * np.median(err_rotated) + 1.0


def test_label_maps_use_nearest_and_background_fills() -> None:
    s = _sample(7)
    out = JointAugment(SYNTH, CASES["all"], seed=2)(s)
    assert set(np.unique(out["seg"])) <= set(np.unique(s["seg"])) | {0}
    assert set(np.unique(out["depth"])) <= set(np.unique(s["depth"])) | {0.0}
    bg = out["seg"] == 0
    assert np.all(out["uv"][bg] == -1.0)
    assert np.all(out["normal"][bg] == 0.0)
    assert np.all(out["depth"][bg] == 0.0)


def test_crop_matrix_maps_window_edges_and_warps_consistently() -> None:
    m = crop_matrix(40.0, 50.0, 32.0, 64)
    # the window spans cx +- 16, cy +- 16 (pixel-centre coordinates); its edges map to the crop edges -0.5 / 63.5
    # and its centre to the crop centre 31.5
    pts = transform_points(m, np.array([[24.0, 34.0], [56.0, 66.0], [40.0, 50.0]], np.float32))
    assert np.allclose(pts, [[-0.5, -0.5], [63.5, 63.5], [31.5, 31.5]], atol=1e-5)
    s = _sample(1)
    out = warp_sample(s, crop_matrix(*_box(s), SIZE), SIZE)
    robust = _robust_classes(s["seg"], s["landmarks"])
    assert all(_class_at(out["seg"], out["landmarks"][i]) == c for i, c in robust.items())


def test_crop_matrix_rotation_and_flip() -> None:
    """Rotation: the window's centre stays at the crop centre, a point at angle t from it (from +x towards +y) lands at
    angle t - rotation (the content turns counter-clockwise as displayed, y down); the flip mirrors about the crop
    centre."""
    rng = np.random.default_rng(3)
    for _ in range(20):
        cx, cy, side, size, rot = (
            *rng.uniform(20, 80, 2),
            rng.uniform(10, 60),
            int(rng.integers(16, 96)),
            rng.uniform(-40, 40),
        )
        radius, t = rng.uniform(1, 5), rng.uniform(0, 2 * np.pi)
        pt = np.array([[cx + radius * np.cos(t), cy + radius * np.sin(t)], [cx, cy]])
        mid = size / 2 - 0.5
        scaled = radius * size / side
        expected = [mid + scaled * np.cos(t - np.radians(rot)), mid + scaled * np.sin(t - np.radians(rot))]
        out = transform_points(crop_matrix(cx, cy, side, size, rotation_deg=rot), pt)
        np.testing.assert_allclose(out, [expected, [mid, mid]], atol=1e-9)
        flipped = transform_points(crop_matrix(cx, cy, side, size, rotation_deg=rot, flip=True), pt)
        np.testing.assert_allclose(flipped, [[2 * mid - expected[0], expected[1]], [mid, mid]], atol=1e-9)


def test_warp_labels_fills_every_channel_and_decode_image_is_rgb() -> None:
    uv = np.full((8, 8, 2), 0.25, np.float32)
    out = warp_labels(uv, crop_matrix(0.0, 0.0, 8.0, 8), 8, -1.0)  # window centred on the top-left corner
    assert out.shape == (8, 8, 2) and out.dtype == np.float32
    assert np.all(out[:3, :3] == -1.0) and np.all(out[5:, 5:] == 0.25)
    bgr = np.zeros((4, 5, 3), np.uint8)
    bgr[..., 2] = 200  # red in OpenCV's channel order
    ok, png = cv2.imencode(".png", bgr)
    rgb = decode_image(png.ravel())
    assert ok and rgb is not None and rgb.shape == (4, 5, 3) and np.all(rgb[..., 0] == 200) and rgb[..., 2].max() == 0
    assert decode_image(np.frombuffer(b"not an image", np.uint8)) is None
    assert decode_image(np.zeros(0, np.uint8)) is None


def _box(s: dict[str, np.ndarray]) -> tuple[float, float, float]:
    lo, hi = s["landmarks"].min(0), s["landmarks"].max(0)
    return float((lo[0] + hi[0]) / 2), float((lo[1] + hi[1]) / 2), float((hi - lo).max() * 1.2)


def test_dataset_skips_incomplete_rows_and_returns_aligned_crops(tmp_path) -> None:  # noqa: ANN001
    path = write_toy_dataset(tmp_path / "toy.h5", 6, 64, seed=0, incomplete=(1, 4))
    ds = SynthFaceDataset(path, crop_size=64, crop_scale=1.6, augment=CASES["all"], load_normals=True, load_uv=True)
    assert len(ds) == 4
    item = ds[0]
    assert item["image"].shape == (3, 64, 64) and 0 <= item["image"].min() and item["image"].max() <= 1
    assert item["normal"].shape == (3, 64, 64) and item["uv"].shape == (2, 64, 64)
    seg, lm = item["seg"].numpy(), item["landmarks"].numpy()
    eye = {_class_at(seg, lm[i]) for i in range(36, 42) if item["landmarks_in_crop"][i]}
    assert eye <= {SYNTH.id("right_eye_region"), SYNTH.id("right_eyeball")}
    d, m = item["depth"][0].numpy(), item["depth_mask"][0].numpy()
    assert abs(np.median(d[m])) < 1e-3 and np.all(d[~m] == 0)


def test_relative_depth() -> None:
    depth = np.array([[0.0, 0.5], [0.6, 0.7]], np.float32)
    rel, mask = relative_depth(depth)
    assert np.allclose(rel, [[0.0, -0.1], [0.0, 0.1]]) and mask.tolist() == [[False, True], [True, True]]
