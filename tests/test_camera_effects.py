"""Camera effects and cluttered backgrounds of the procedural renderer (next3d_gen.render.camera_effects / clutter)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from next3d_gen.render.camera_effects import apply_camera_effects, disc_kernel, jpeg_roundtrip
from next3d_gen.render.procedural import NO_CAMERA_EFFECTS, ProceduralConfig, ProceduralRenderer, _Rng
from tests.test_procedural_render import make_scene, toy_head_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rng(seed: int) -> _Rng:
    return _Rng(torch.Generator().manual_seed(seed), torch.device("cpu"))


def _image(seed: int = 0, size: int = 48) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(1, 3, 6, 6, generator=g)
    return torch.nn.functional.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)[0]


def test_no_effects_is_plain_quantisation() -> None:
    img = _image()
    out = apply_camera_effects(img, _rng(0), ProceduralConfig(**NO_CAMERA_EFFECTS))
    assert out.dtype == torch.uint8 and out.shape == (48, 48, 3)
    expected = (img.permute(1, 2, 0) * 255 + 0.5).clamp(0, 255).to(torch.uint8)
    # the white-balance and tone steps are identities up to float rounding of the sRGB <-> linear round trip
    assert (out.int() - expected.int()).abs().max() <= 1


def test_effects_are_deterministic_per_seed_and_vary_across_seeds() -> None:
    cfg = ProceduralConfig(defocus_prob=0.5, motion_blur_prob=0.5, low_res_prob=0.5, jpeg_prob=0.5)
    img = _image()
    a = [apply_camera_effects(img, _rng(s), cfg) for s in range(6)]
    b = [apply_camera_effects(img, _rng(s), cfg) for s in range(6)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert len({x.numpy().tobytes() for x in a}) == 6


def test_white_balance_warms_a_grey_image() -> None:
    grey = torch.full((3, 16, 16), 0.5)
    warm = dict(NO_CAMERA_EFFECTS, white_balance_range=(0.2, 0.2))
    out = apply_camera_effects(grey, _rng(0), ProceduralConfig(**warm)).float().mean((0, 1))
    assert out[0] > out[1] > out[2]  # red up, blue down, green between
    cool = dict(NO_CAMERA_EFFECTS, white_balance_range=(-0.2, -0.2))
    out = apply_camera_effects(grey, _rng(0), ProceduralConfig(**cool)).float().mean((0, 1))
    assert out[2] > out[1] > out[0]


def test_defocus_matches_opencv_filter_with_the_same_disc() -> None:
    """The defocus step is a plain 2-D filter with the disc kernel: compare with OpenCV's filter2D (replicate)."""
    img = _image(1)
    radius = 1.7
    cfg = ProceduralConfig(**dict(NO_CAMERA_EFFECTS, defocus_prob=1.0, defocus_radius_range=(radius, radius)))
    out = apply_camera_effects(img, _rng(0), cfg).numpy().astype(np.float64)
    k = disc_kernel(radius * 48 / 256).numpy()
    ref = cv2.filter2D(img.permute(1, 2, 0).numpy(), -1, k, borderType=cv2.BORDER_REPLICATE) * 255
    assert np.abs(out - ref).max() <= 1.01


def test_disc_kernel_is_normalised_round_and_symmetric() -> None:
    for r in (0.5, 1.3, 3.0):
        k = disc_kernel(r)
        assert abs(float(k.sum()) - 1) < 1e-6
        assert torch.allclose(k, k.flip(0)) and torch.allclose(k, k.T)
        assert k.shape[0] == 2 * int(np.ceil(r)) + 1


def test_jpeg_roundtrip_matches_opencv_and_loses_detail_at_low_quality() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    for q in (30, 90):
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(image[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, q])
        assert ok
        np.testing.assert_array_equal(jpeg_roundtrip(image, q), cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1])
    err = [np.abs(jpeg_roundtrip(image, q).astype(int) - image).mean() for q in (30, 95)]
    assert err[0] > err[1] > 0


@pytest.fixture(scope="module")
def scene():
    return make_scene(toy_head_model(), 64)


def _quiet(**kw) -> ProceduralConfig:
    return ProceduralConfig(**dict(NO_CAMERA_EFFECTS, hand_prob=0.0, object_prob=0.0, glasses_prob=0.0,
                                   antialias=False, shoulders_prob=0.0, hair_volume_prob=0.0, **kw))  # fmt: skip


def _render(scene, seed: int, cfg: ProceduralConfig):
    return ProceduralRenderer(cfg).render(scene, torch.Generator().manual_seed(seed))


def _edge_energy(image: torch.Tensor, where: np.ndarray) -> float:
    """Mean absolute horizontal difference (summed over RGB) between neighbours that are both in ``where``."""
    grad = np.abs(np.diff(image.numpy().astype(float), axis=1)).sum(-1)
    return float(grad[where[:, 1:] & where[:, :-1]].mean())


def test_clutter_is_background_only_and_sharper_than_the_smooth_kinds(scene) -> None:
    head = scene.annotations.mask[0].numpy()
    # no light bounced from the background onto the head (environment_light_range), so the head is comparable
    clutter = _quiet(background_weights=(0.0, 0.0, 0.0, 0.0, 0.0, 1.0), other_faces_prob=1.0,
                     environment_light_range=(0.0, 0.0))  # fmt: skip
    smooth = _quiet(background_weights=(1.0, 0.0, 0.0, 0.0, 0.0, 0.0), background_blur_prob=0.0,
                    environment_light_range=(0.0, 0.0))  # fmt: skip
    sharp_clutter = sharp_smooth = 0.0
    for seed in range(4):
        a, b = _render(scene, seed, clutter), _render(scene, seed, smooth)
        # head pixels do not depend on the background (without environment light)
        np.testing.assert_array_equal(a.image.numpy()[head], b.image.numpy()[head])
        assert not np.array_equal(a.image.numpy()[~head], b.image.numpy()[~head])
        sharp_clutter += _edge_energy(a.image, ~head)
        sharp_smooth += _edge_energy(b.image, ~head)
    assert sharp_clutter > 3 * sharp_smooth


def test_low_resolution_is_a_size_in_reference_pixels() -> None:
    """``low_res_scale_range`` is the longer side as a fraction of 256 px: a 48 px image is already smaller than
    0.5 x 256 and stays as it is; a 512 px image goes through 128 px and loses its finest detail."""
    cfg = ProceduralConfig(**dict(NO_CAMERA_EFFECTS, low_res_prob=1.0, low_res_scale_range=(0.5, 0.5)))
    plain = ProceduralConfig(**NO_CAMERA_EFFECTS)
    small = _image(2, 48)
    assert torch.equal(apply_camera_effects(small, _rng(0), cfg), apply_camera_effects(small, _rng(0), plain))
    checks = (torch.arange(512)[:, None] + torch.arange(512)[None, :]) % 2  # finest possible detail
    big = checks.float().expand(3, 512, 512) * 0.8 + 0.1
    out = apply_camera_effects(big, _rng(0), cfg).float()
    assert out.std() < 5  # the 1-pixel checkerboard is averaged away at 128 px
    assert apply_camera_effects(big, _rng(0), plain).float().std() > 90
