"""Tests for next3d_gen.camera against OpenCV, hand-computed values and the EG3D/Next3D camera facts."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from next3d_gen import camera


def _random_K(gen: torch.Generator, B: int, height: int, width: int, skew: bool = False) -> torch.Tensor:
    K = torch.zeros(B, 3, 3, dtype=torch.float64)
    K[:, 0, 0] = 100 + 400 * torch.rand(B, generator=gen, dtype=torch.float64)
    K[:, 1, 1] = K[:, 0, 0] * (0.8 + 0.4 * torch.rand(B, generator=gen, dtype=torch.float64))
    K[:, 0, 2] = width * (0.3 + 0.4 * torch.rand(B, generator=gen, dtype=torch.float64))
    K[:, 1, 2] = height * (0.3 + 0.4 * torch.rand(B, generator=gen, dtype=torch.float64))
    if skew:
        K[:, 0, 1] = 5 * torch.randn(B, generator=gen, dtype=torch.float64)
    K[:, 2, 2] = 1
    return K


def _random_cam2world(gen: torch.Generator, B: int) -> torch.Tensor:
    yaw = 120 * torch.rand(B, generator=gen, dtype=torch.float64) - 60
    pitch = 80 * torch.rand(B, generator=gen, dtype=torch.float64) - 40
    radius = 0.5 + torch.rand(B, generator=gen, dtype=torch.float64)
    pivot = 0.05 * torch.randn(B, 3, generator=gen, dtype=torch.float64)
    return camera.orbit_camera(yaw, pitch, radius, pivot)


def _eg3d_lookat_cam2world(h: float, v: float, radius: float, lookat: np.ndarray) -> np.ndarray:
    """EG3D's LookAtPoseSampler written from its documented formulas (reference B6), numpy float64."""
    v = min(max(v, 1e-5), math.pi - 1e-5)
    phi = math.acos(1 - 2 * v / math.pi)
    o = radius * np.array([math.sin(phi) * math.cos(math.pi - h), math.cos(phi), math.sin(phi) * math.sin(math.pi - h)])
    forward = lookat - o
    forward /= np.linalg.norm(forward)
    right = -np.cross(np.array([0.0, 1.0, 0.0]), forward)
    right /= np.linalg.norm(right)
    up = np.cross(forward, right)
    up /= np.linalg.norm(up)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, up, forward, o
    return m


# ----------------------------------------------------------------------------------------------------- projection


def test_project_matches_cv2_project_points():
    gen = torch.Generator().manual_seed(0)
    B, N, H, W = 4, 200, 240, 320
    K = _random_K(gen, B, H, W)
    pts = torch.randn(B, N, 3, generator=gen, dtype=torch.float64) * 0.3
    pts[..., 2] = 0.2 + 3 * torch.rand(B, N, generator=gen, dtype=torch.float64)
    uv = camera.project(pts, K)
    assert uv.shape == (B, N, 2)
    for b in range(B):
        ref, _ = cv2.projectPoints(pts[b].numpy(), np.zeros(3), np.zeros(3), K[b].numpy(), None)
        np.testing.assert_allclose(uv[b].numpy(), ref.reshape(N, 2), rtol=0, atol=1e-8)


def test_project_world_points_matches_cv2_with_extrinsics():
    """world_to_camera + project == cv2.projectPoints with rvec/tvec of world2cam (an independent transform)."""
    gen = torch.Generator().manual_seed(1)
    B, N = 3, 100
    K = _random_K(gen, B, 256, 256)
    c2w = _random_cam2world(gen, B)
    world = 0.1 * torch.randn(B, N, 3, generator=gen, dtype=torch.float64)
    uv = camera.project(camera.world_to_camera(world, c2w), K)
    for b in range(B):
        R = c2w[b, :3, :3].numpy()
        t = c2w[b, :3, 3].numpy()
        rvec, _ = cv2.Rodrigues(R.T)
        ref, _ = cv2.projectPoints(world[b].numpy(), rvec, -R.T @ t, K[b].numpy(), None)
        np.testing.assert_allclose(uv[b].numpy(), ref.reshape(N, 2), rtol=0, atol=1e-7)


def test_project_skew_and_unbatched_K():
    gen = torch.Generator().manual_seed(2)
    K = _random_K(gen, 1, 100, 100, skew=True)[0]
    pts = torch.tensor([[[0.1, -0.2, 2.0], [-0.3, 0.05, 0.5]]], dtype=torch.float64)
    uv = camera.project(pts, K)  # (3, 3) K is broadcast over the batch
    x, y = pts[0, :, 0] / pts[0, :, 2], pts[0, :, 1] / pts[0, :, 2]
    expected_u = K[0, 0] * x + K[0, 1] * y + K[0, 2]
    expected_v = K[1, 1] * y + K[1, 2]
    torch.testing.assert_close(uv[0], torch.stack([expected_u, expected_v], dim=-1))


def test_project_float32_precision():
    K = camera.intrinsics_from_fov(20.0, 512, 512)[None]
    pts = torch.tensor([[[0.05, -0.07, 2.7]]])
    uv = camera.project(pts, K)
    f = 256 / math.tan(math.radians(10))
    expected = [f * 0.05 / 2.7 + 255.5, f * -0.07 / 2.7 + 255.5]
    np.testing.assert_allclose(uv[0, 0].numpy(), expected, atol=1e-3)


# ----------------------------------------------------------------------------------------------------- intrinsics


@pytest.mark.parametrize("fov", [10.0, 18.837, 45.0, 90.0, 120.0])
@pytest.mark.parametrize("hw", [(64, 64), (96, 160)])
def test_intrinsics_from_fov_edges(fov, hw):
    H, W = hw
    K = camera.intrinsics_from_fov(fov, H, W, dtype=torch.float64)
    assert K.shape == (3, 3)
    t = math.tan(math.radians(fov / 2))
    z = 1.7
    pts = torch.tensor([[[t * z, 0, z], [-t * z, 0, z], [0, 0, z]]], dtype=torch.float64)
    uv = camera.project(pts, K[None])[0]
    np.testing.assert_allclose(uv[0].numpy(), [W - 0.5, (H - 1) / 2], atol=1e-9)
    np.testing.assert_allclose(uv[1].numpy(), [-0.5, (H - 1) / 2], atol=1e-9)
    np.testing.assert_allclose(uv[2].numpy(), [(W - 1) / 2, (H - 1) / 2], atol=1e-9)
    # square pixels: the vertical image edge is at half-height / f
    yz = (H / 2) / K[1, 1].item() * z
    v = camera.project(torch.tensor([[[0, yz, z], [0, -yz, z]]], dtype=torch.float64), K[None])[0, :, 1]
    np.testing.assert_allclose(v.numpy(), [H - 0.5, -0.5], atol=1e-9)


def test_intrinsics_from_fov_batched_and_invalid():
    K = camera.intrinsics_from_fov(torch.tensor([30.0, 60.0]), 32, 48)
    assert K.shape == (2, 3, 3)
    assert K[0, 0, 0] > K[1, 0, 0]
    torch.testing.assert_close(K[1], camera.intrinsics_from_fov(60.0, 32, 48))
    for bad in (0.0, 180.0, -5.0):
        with pytest.raises(ValueError):
            camera.intrinsics_from_fov(bad, 32, 32)


# ----------------------------------------------------------------------------------------------------- extrinsics


def _check_rotation(c2w: torch.Tensor) -> None:
    R = c2w[..., :3, :3]
    eye = torch.eye(3, dtype=R.dtype).expand_as(R)
    torch.testing.assert_close(R.transpose(-1, -2) @ R, eye, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(R.shape[:-2], dtype=R.dtype), atol=1e-6, rtol=0)
    torch.testing.assert_close(c2w[..., 3, :], torch.tensor([0, 0, 0, 1], dtype=R.dtype).expand(c2w.shape[:-2] + (4,)))


def test_look_at_properties():
    gen = torch.Generator().manual_seed(3)
    eye = torch.randn(16, 3, generator=gen, dtype=torch.float64)
    target = 0.1 * torch.randn(16, 3, generator=gen, dtype=torch.float64)
    c2w = camera.look_at(eye, target)
    _check_rotation(c2w)
    torch.testing.assert_close(c2w[:, :3, 3], eye)
    fwd = torch.nn.functional.normalize(target - eye, dim=-1)
    torch.testing.assert_close(c2w[:, :3, 2], fwd)
    # no roll: the camera's x axis is horizontal, its y axis (down) has a negative world-up component
    torch.testing.assert_close(c2w[:, 1, 0], torch.zeros(16, dtype=torch.float64), atol=1e-12, rtol=0)
    assert torch.all(c2w[:, 1, 1] < 0)
    # the target lies on the optical axis at its distance
    tc = camera.world_to_camera(target[:, None], c2w)[:, 0]
    torch.testing.assert_close(tc[:, :2], torch.zeros(16, 2, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(tc[:, 2], (target - eye).norm(dim=-1))
    with pytest.raises(ValueError):
        camera.look_at(torch.tensor([0.0, 2.0, 0.0]), torch.zeros(3))


def test_look_at_matches_eg3d_lookat_sampler():
    """Our look-at at EG3D's camera position equals EG3D's own cam2world (same OpenCV convention)."""
    lookat = np.array([0.0, 0.0, 0.2])
    for h, v in [(math.pi / 2, math.pi / 2), (math.pi / 2 + 0.4, math.pi / 2 - 0.2), (1.1, 1.9), (2.2, 0.9)]:
        ref = _eg3d_lookat_cam2world(h, v, 2.7, lookat)
        ours = camera.look_at(torch.tensor(ref[:3, 3]), torch.tensor(lookat))
        np.testing.assert_allclose(ours.numpy(), ref, atol=1e-12)


def test_eg3d_canonical_frontal_camera():
    expected = torch.tensor([[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 2.7], [0, 0, 0, 1]], dtype=torch.float64)
    pivot = torch.tensor([0.0, 0.0, 0.2], dtype=torch.float64)
    torch.testing.assert_close(camera.orbit_camera(0.0, 0.0, 2.5, pivot), expected)
    torch.testing.assert_close(camera.look_at(torch.tensor([0, 0, 2.7], dtype=torch.float64), pivot), expected)
    # World +x appears at image right, world +y at image top.
    K = camera.intrinsics_from_fov(18.0, 64, 64, dtype=torch.float64)[None]
    pts = torch.tensor([[[0.1, 0, 0.2], [0, 0.1, 0.2]]], dtype=torch.float64)
    uv = camera.project(camera.world_to_camera(pts, expected[None]), K)[0]
    assert uv[0, 0] > 31.5 and abs(uv[0, 1] - 31.5) < 1e-9
    assert uv[1, 1] < 31.5 and abs(uv[1, 0] - 31.5) < 1e-9


def test_orbit_camera_yaw_pitch_directions():
    pivot = torch.tensor([0.01, 0.02, -0.03], dtype=torch.float64)
    base = camera.orbit_camera(0.0, 0.0, 1.0, pivot)[:3, 3]
    yawed = camera.orbit_camera(30.0, 0.0, 1.0, pivot)[:3, 3]
    pitched = camera.orbit_camera(0.0, 20.0, 1.0, pivot)[:3, 3]
    assert yawed[0] > base[0] + 0.4 and abs(yawed[1] - base[1]) < 1e-12
    assert pitched[1] > base[1] + 0.3 and abs(pitched[0] - base[0]) < 1e-12
    # EG3D example: h = pi/2 + 0.4 at radius 2.7 around the origin puts the camera at (1.051, 0, 2.487)
    c = camera.orbit_camera(math.degrees(0.4), 0.0, 2.7, torch.zeros(3, dtype=torch.float64))[:3, 3]
    np.testing.assert_allclose(c.numpy(), [1.051, 0.0, 2.487], atol=1e-3)
    with pytest.raises(ValueError):
        camera.orbit_camera(0.0, 90.0, 1.0, pivot)


def test_orbit_camera_batched_distance_and_pivot_at_principal_point():
    gen = torch.Generator().manual_seed(4)
    B = 10
    yaw = 160 * torch.rand(B, generator=gen, dtype=torch.float64) - 80
    pitch = 160 * torch.rand(B, generator=gen, dtype=torch.float64) - 80
    radius = 0.3 + 2 * torch.rand(B, generator=gen, dtype=torch.float64)
    pivot = 0.1 * torch.randn(B, 3, generator=gen, dtype=torch.float64)
    c2w = camera.orbit_camera(yaw, pitch, radius, pivot)
    assert c2w.shape == (B, 4, 4)
    _check_rotation(c2w)
    torch.testing.assert_close((c2w[:, :3, 3] - pivot).norm(dim=-1), radius)
    K = _random_K(gen, B, 100, 120)
    uv = camera.project(camera.world_to_camera(pivot[:, None], c2w), K)[:, 0]
    torch.testing.assert_close(uv, K[:, :2, 2])
    # relative position follows yaw/pitch exactly
    d = (c2w[:, :3, 3] - pivot) / radius[:, None]
    torch.testing.assert_close(torch.rad2deg(torch.asin(d[:, 1])), pitch)
    torch.testing.assert_close(torch.rad2deg(torch.atan2(d[:, 0], d[:, 2])), yaw)


def test_world_to_camera_inverse_consistency():
    gen = torch.Generator().manual_seed(5)
    B, N = 5, 30
    c2w = _random_cam2world(gen, B)
    world = torch.randn(B, N, 3, generator=gen, dtype=torch.float64)
    cam = camera.world_to_camera(world, c2w)
    back = torch.einsum("bij,bnj->bni", c2w[:, :3, :3], cam) + c2w[:, None, :3, 3]
    torch.testing.assert_close(back, world)
    # the same as multiplying homogeneous points by the inverse matrix
    hom = torch.cat([world, torch.ones(B, N, 1, dtype=world.dtype)], dim=-1)
    ref = torch.einsum("bij,bnj->bni", torch.linalg.inv(c2w), hom)[..., :3]
    torch.testing.assert_close(cam, ref)
    # the camera centre maps to the origin; distances are preserved
    centre = camera.world_to_camera(c2w[:, None, :3, 3], c2w)
    torch.testing.assert_close(centre, torch.zeros(B, 1, 3, dtype=world.dtype))
    torch.testing.assert_close(cam.norm(dim=-1), (world - c2w[:, None, :3, 3]).norm(dim=-1))


# ----------------------------------------------------------------------------------------------------- EG3D label


def test_eg3d_label_round_trip():
    gen = torch.Generator().manual_seed(6)
    B, H, W = 6, 128, 192
    K = _random_K(gen, B, H, W, skew=True)
    c2w = _random_cam2world(gen, B)
    label = camera.to_eg3d_label(K, c2w, H, W)
    assert label.shape == (B, 25)
    torch.testing.assert_close(label[:, :16], c2w.reshape(B, 16))  # row-major cam2world first
    K2, c2w2 = camera.from_eg3d_label(label, H, W)
    torch.testing.assert_close(K2, K)
    torch.testing.assert_close(c2w2, c2w)
    # a single unbatched label is accepted
    K1, c1 = camera.from_eg3d_label(label[0], H, W)
    assert K1.shape == (1, 3, 3) and c1.shape == (1, 4, 4)
    with pytest.raises(ValueError):
        camera.from_eg3d_label(torch.zeros(3, 24), H, W)


@pytest.mark.parametrize("hw", [(512, 512), (256, 128)])
def test_eg3d_normalised_K_is_a_centred_pixel_K(hw):
    H, W = hw
    f = 2985.29 / 700
    Kn = torch.tensor([[f, 0, 0.5], [0, f, 0.5], [0, 0, 1]], dtype=torch.float64)
    c2w = torch.tensor([[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 2.7], [0, 0, 0, 1]], dtype=torch.float64)
    label = torch.cat([c2w.reshape(16), Kn.reshape(9)])
    K, _ = camera.from_eg3d_label(label, H, W)
    expected = torch.tensor([[f * W, 0, (W - 1) / 2], [0, f * H, (H - 1) / 2], [0, 0, 1]], dtype=torch.float64)
    torch.testing.assert_close(K[0], expected)
    torch.testing.assert_close(camera.to_eg3d_label(K, c2w[None], H, W)[0], label)
    # EG3D pixel centres: column j is at normalised (j + 0.5) / W; projecting with the normalised K and converting
    # gives the same pixel coordinates as projecting with the pixel K.
    pts = torch.tensor([[[0.03, -0.02, 2.5], [-0.05, 0.04, 2.3]]], dtype=torch.float64)
    norm_uv = camera.project(pts, Kn[None])
    pix_from_norm = torch.stack([norm_uv[..., 0] * W - 0.5, norm_uv[..., 1] * H - 0.5], dim=-1)
    torch.testing.assert_close(camera.project(pts, K), pix_from_norm)
    # FOV of f = 4.2647: 13.374 degrees across the image
    fov = math.degrees(2 * math.atan(0.5 / f))
    assert abs(fov - 13.374) < 1e-3
    assert abs(camera.intrinsics_from_fov(fov, H, W, dtype=torch.float64)[0, 0].item() - f * W) < 1e-9 * W
