"""Cameras: intrinsics, look-at / orbit extrinsics, projection, and the EG3D/Next3D 25-value camera label.

Conventions (ARCHITECTURE.md section 3):

* Camera frame is OpenCV: x right, y down, z forward. ``cam2world`` columns are (right, down, forward, position).
* World frame is the FLAME/head frame: metres, y up, z towards the face front, x towards the subject's left.
* Pixels: integer values are pixel centres; an image spans [-0.5, W-0.5] x [-0.5, H-0.5].
* K is in pixels: ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``; a centred camera has ``cx = (W-1)/2``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def intrinsics_from_fov(
    fov_deg: float | Tensor,
    height: int,
    width: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Pinhole intrinsics from the full horizontal field of view.

    Args:
        fov_deg: full angle across the image width in degrees; a scalar or a (B,) tensor.
        height, width: image size in pixels.

    Returns:
        K: (3, 3) for a scalar fov, else (B, 3, 3); square pixels, principal point at the image centre
        ``((W-1)/2, (H-1)/2)`` in the pixel-centre convention.

    >>> intrinsics_from_fov(90.0, 4, 4)[0, 0].item()
    2.0
    """
    fov = torch.as_tensor(fov_deg, dtype=dtype, device=device)
    if torch.any(fov <= 0) or torch.any(fov >= 180):
        raise ValueError(f"fov_deg must be in (0, 180), got {fov_deg}")
    f = (width / 2.0) / torch.tan(torch.deg2rad(fov) / 2.0)
    K = torch.zeros(fov.shape + (3, 3), dtype=dtype, device=device)
    K[..., 0, 0] = f
    K[..., 1, 1] = f
    K[..., 0, 2] = (width - 1) / 2.0
    K[..., 1, 2] = (height - 1) / 2.0
    K[..., 2, 2] = 1.0
    return K


def look_at(eye: Tensor, target: Tensor, up: Tensor | None = None) -> Tensor:
    """OpenCV cam2world matrices for cameras at ``eye`` looking at ``target`` with no roll.

    Args:
        eye: (..., 3) camera positions, world metres.
        target: (..., 3) points looked at, world metres (broadcast against ``eye``).
        up: (3,) world up direction, default +y. Must not be parallel to the viewing direction.

    Returns:
        cam2world: (..., 4, 4), same dtype as ``eye``; columns right, down, forward, position.
    """
    eye, target = torch.broadcast_tensors(eye, target)
    if up is None:
        up = torch.tensor([0.0, 1.0, 0.0], dtype=eye.dtype, device=eye.device)
    up = up.to(eye).expand_as(eye)
    forward = torch.nn.functional.normalize(target - eye, dim=-1)
    right = torch.linalg.cross(forward, up, dim=-1)
    if torch.any(right.norm(dim=-1) < 1e-8):
        raise ValueError("look_at: viewing direction is parallel to the up vector")
    right = torch.nn.functional.normalize(right, dim=-1)
    down = torch.linalg.cross(forward, right, dim=-1)
    m = torch.zeros(eye.shape[:-1] + (4, 4), dtype=eye.dtype, device=eye.device)
    m[..., :3, 0] = right
    m[..., :3, 1] = down
    m[..., :3, 2] = forward
    m[..., :3, 3] = eye
    m[..., 3, 3] = 1.0
    return m


def orbit_camera(yaw_deg: Tensor | float, pitch_deg: Tensor | float, radius: Tensor | float, pivot: Tensor) -> Tensor:
    """Look-at camera on a sphere around ``pivot``.

    ``yaw = pitch = 0`` puts the camera at ``pivot + (0, 0, radius)`` looking at the face front. Positive yaw moves the
    camera towards +x (the subject's left: the subject's left cheek turns towards the camera); positive pitch moves it
    up (looking down on the head).

    Args:
        yaw_deg, pitch_deg, radius: scalars or (B,) tensors; pitch must be in (-90, 90).
        pivot: (3,) or (B, 3) look-at point, world metres.

    Returns:
        cam2world: (4, 4) or (B, 4, 4).
    """
    pivot = torch.as_tensor(pivot)
    dtype = pivot.dtype if pivot.is_floating_point() else torch.float32
    pivot = pivot.to(dtype)
    yaw = torch.deg2rad(torch.as_tensor(yaw_deg, dtype=dtype, device=pivot.device))
    pitch = torch.deg2rad(torch.as_tensor(pitch_deg, dtype=dtype, device=pivot.device))
    if torch.any(pitch.abs() >= math.pi / 2):
        raise ValueError("pitch_deg must be in (-90, 90)")
    r = torch.as_tensor(radius, dtype=dtype, device=pivot.device)
    x, y, z = torch.broadcast_tensors(
        r * torch.cos(pitch) * torch.sin(yaw), r * torch.sin(pitch), r * torch.cos(pitch) * torch.cos(yaw)
    )
    return look_at(pivot + torch.stack([x, y, z], dim=-1), pivot)


def world_to_camera(points_world: Tensor, cam2world: Tensor) -> Tensor:
    """Transform (B, N, 3) world points to the (B, N, 3) OpenCV camera frame of (B, 4, 4) ``cam2world``."""
    R = cam2world[..., :3, :3]
    t = cam2world[..., :3, 3]
    return torch.einsum("bij,bni->bnj", R, points_world - t[:, None, :])


def project(points_cam: Tensor, K: Tensor, eps: float = 1e-9) -> Tensor:
    """Pinhole projection.

    Args:
        points_cam: (B, N, 3) camera-frame points (OpenCV), metres; z should be positive.
        K: (B, 3, 3) or (3, 3) intrinsics in pixels.

    Returns:
        (B, N, 2) pixel coordinates (x, y), pixel-centre convention.
    """
    if K.dim() == 2:
        K = K.expand(points_cam.shape[0], 3, 3)
    z = points_cam[..., 2:3]
    z = torch.where(z.abs() < eps, torch.full_like(z, eps), z)
    xy = points_cam[..., :2] / z
    u = K[:, None, 0, 0:1] * xy[..., 0:1] + K[:, None, 0, 1:2] * xy[..., 1:2] + K[:, None, 0, 2:3]
    v = K[:, None, 1, 1:2] * xy[..., 1:2] + K[:, None, 1, 2:3]
    return torch.cat([u, v], dim=-1)


def to_eg3d_label(K: Tensor, cam2world: Tensor, height: int, width: int) -> Tensor:
    """EG3D/Next3D 25-value camera label: 16 row-major cam2world values, then 9 row-major normalised intrinsics.

    The normalised intrinsics are in units of image size with the continuous convention (0 = left edge), so
    ``cx_norm = (cx + 0.5) / W``; this is the only place that convention is converted.

    Args:
        K: (B, 3, 3) pixel intrinsics. cam2world: (B, 4, 4) OpenCV.

    Returns:
        (B, 25) float.
    """
    Kn = K.clone()
    Kn[:, 0, 0] = K[:, 0, 0] / width
    Kn[:, 0, 1] = K[:, 0, 1] / width
    Kn[:, 0, 2] = (K[:, 0, 2] + 0.5) / width
    Kn[:, 1, 1] = K[:, 1, 1] / height
    Kn[:, 1, 2] = (K[:, 1, 2] + 0.5) / height
    return torch.cat([cam2world.reshape(-1, 16), Kn.reshape(-1, 9)], dim=1)


def from_eg3d_label(label: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`to_eg3d_label`.

    Args:
        label: (B, 25) or (25,).

    Returns:
        K (B, 3, 3) pixel intrinsics, cam2world (B, 4, 4).
    """
    if label.dim() not in (1, 2) or label.shape[-1] != 25:
        raise ValueError(f"EG3D camera label must be (25,) or (B, 25), got {tuple(label.shape)}")
    label = label.reshape(-1, 25)
    cam2world = label[:, :16].reshape(-1, 4, 4).clone()
    Kn = label[:, 16:].reshape(-1, 3, 3)
    K = Kn.clone()
    K[:, 0, 0] = Kn[:, 0, 0] * width
    K[:, 0, 1] = Kn[:, 0, 1] * width
    K[:, 0, 2] = Kn[:, 0, 2] * width - 0.5
    K[:, 1, 1] = Kn[:, 1, 1] * height
    K[:, 1, 2] = Kn[:, 1, 2] * height - 0.5
    return K, cam2world
