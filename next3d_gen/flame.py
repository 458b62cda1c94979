"""FLAME: the model container, the linear-blend-skinning layer, and loaders for the official files.

Frame: FLAME's own, metres, y up, z towards the face front, x towards the subject's left.
Joint order (pose columns): 0 global, 1 neck, 2 jaw, 3 left eye, 4 right eye; pose is axis-angle, (B, 15).
Landmarks come out in iBUG 68-point order: the 17 jaw-contour points (dynamic, chosen from the head + neck yaw,
as FLAME defines it) followed by the 51 static points.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import torch
from torch import Tensor, nn

NUM_JOINTS = 5
NUM_STATIC_LANDMARKS = 51
NUM_CONTOUR_LANDMARKS = 17
NUM_YAW_BINS = 79
MAX_CONTOUR_YAW_DEG = 39


@dataclass
class FlameModel:
    """Everything that defines a FLAME-format head model, as numpy arrays.

    Real FLAME files and the built-in procedural head (:func:`next3d_gen.head_model.builtin_head_model`) both load
    into this type, so the layer, the annotator and the renderers never ask which model they got.

    Attributes:
        v_template: (V, 3) float32 template vertices, metres, FLAME frame.
        faces: (F, 3) int64 triangles, counter-clockwise seen from outside (outward normals).
        shapedirs: (V, 3, S) float32 identity blendshapes (one unit = one standard deviation).
        exprdirs: (V, 3, E) float32 expression blendshapes.
        posedirs: (V, 3, 36) float32 pose-corrective blendshapes, driven by the flattened (R - I) of joints 1..4.
        j_regressor: (5, V) float32 joint regressor.
        weights: (V, 5) float32 skinning weights (rows sum to 1).
        parents: (5,) int64 kinematic tree, parents[0] = -1.
        static_lmk_faces: (51,) int64 face index per static landmark (iBUG points 17-67).
        static_lmk_bary: (51, 3) float32 barycentric coordinates.
        dynamic_lmk_faces: (79, 17) int64 contour landmark faces per yaw bin (rows 0..39 = yaw 0..39 degrees,
            rows 40..78 = yaw -1..-39 degrees; see :func:`contour_yaw_bin`).
        dynamic_lmk_bary: (79, 17, 3) float32.
        uv_coords: (T, 2) float32 UV coordinates in [0, 1] (OBJ convention: v up), or None.
        uv_faces: (F, 3) int64 indices into ``uv_coords`` per face corner, or None.
        face_labels: (F,) uint8 class ids in the 20-class synthetic label space (next3d_gen.labels.SYNTH), or None.
        name: free-text description (e.g. the file it came from).
    """

    v_template: np.ndarray
    faces: np.ndarray
    shapedirs: np.ndarray
    exprdirs: np.ndarray
    posedirs: np.ndarray
    j_regressor: np.ndarray
    weights: np.ndarray
    parents: np.ndarray
    static_lmk_faces: np.ndarray
    static_lmk_bary: np.ndarray
    dynamic_lmk_faces: np.ndarray
    dynamic_lmk_bary: np.ndarray
    uv_coords: np.ndarray | None = None
    uv_faces: np.ndarray | None = None
    face_labels: np.ndarray | None = None
    name: str = field(default="flame")

    @property
    def num_vertices(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def num_shape(self) -> int:
        return int(self.shapedirs.shape[2])

    @property
    def num_expression(self) -> int:
        return int(self.exprdirs.shape[2])

    def validate(self, source: str = "<model>") -> FlameModel:
        """Check every array's shape against the others; raise ValueError naming ``source`` and the bad key."""
        V = self.v_template.shape[0] if self.v_template.ndim == 2 else -1
        F = self.faces.shape[0] if self.faces.ndim == 2 else -1
        expected = {
            "v_template": (V, 3),
            "faces": (F, 3),
            "shapedirs": (V, 3, None),
            "exprdirs": (V, 3, None),
            "posedirs": (V, 3, 36),
            "j_regressor": (NUM_JOINTS, V),
            "weights": (V, NUM_JOINTS),
            "parents": (NUM_JOINTS,),
            "static_lmk_faces": (NUM_STATIC_LANDMARKS,),
            "static_lmk_bary": (NUM_STATIC_LANDMARKS, 3),
            "dynamic_lmk_faces": (NUM_YAW_BINS, NUM_CONTOUR_LANDMARKS),
            "dynamic_lmk_bary": (NUM_YAW_BINS, NUM_CONTOUR_LANDMARKS, 3),
            "uv_faces": (F, 3),
            "face_labels": (F,),
        }
        for key, shape in expected.items():
            arr = getattr(self, key)
            if arr is None:
                continue
            ok = arr.ndim == len(shape) and all(s is None or s == a for s, a in zip(shape, arr.shape, strict=False))
            if not ok or V <= 0 or F <= 0:
                want = "x".join("*" if s is None else str(s) for s in shape)
                raise ValueError(f"{source}: '{key}' has shape {tuple(arr.shape)}, expected {want}")
        if self.faces.size and (self.faces.min() < 0 or self.faces.max() >= V):
            raise ValueError(f"{source}: 'faces' index out of range [0, {V})")
        for key in ("static_lmk_faces", "dynamic_lmk_faces"):
            arr = getattr(self, key)
            if arr.min() < 0 or arr.max() >= F:
                raise ValueError(f"{source}: '{key}' face index out of range [0, {F})")
        if self.uv_faces is not None and self.uv_coords is not None and self.uv_faces.max() >= len(self.uv_coords):
            raise ValueError(f"{source}: 'uv_faces' index out of range [0, {len(self.uv_coords)})")
        return self

    def save_npz(self, path: str) -> None:
        """Write every array to an ``.npz`` (readable by :func:`load_flame_model`)."""
        arrays = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        arrays["name"] = np.array(self.name)
        np.savez_compressed(path, **arrays)


def contour_yaw_bin(yaw_deg: Tensor) -> Tensor:
    """Row of the dynamic contour table for a head yaw, exactly as FLAME's reference layers index it.

    Args:
        yaw_deg: (B,) yaw in degrees, already negated as FLAME does (see :meth:`FlameLayer.contour_yaw`).

    Returns:
        (B,) int64 rows: round(yaw) for 0..39 (clamped at 39), 39 - round(yaw) for -1..-39, 78 below -39.
    """
    y = torch.round(yaw_deg).clamp(max=MAX_CONTOUR_YAW_DEG).long()
    neg = torch.where(y < -MAX_CONTOUR_YAW_DEG, torch.full_like(y, 78), 39 - y)
    return torch.where(y < 0, neg, y)


def batch_rodrigues(rot_vecs: Tensor) -> Tensor:
    """Axis-angle (N, 3) -> rotation matrices (N, 3, 3); exact identity for a zero vector."""
    angle = torch.norm(rot_vecs + 1e-8, dim=1, keepdim=True)  # (N, 1)
    axis = rot_vecs / angle
    cos = torch.cos(angle)[:, :, None]
    sin = torch.sin(angle)[:, :, None]
    rx, ry, rz = axis.unbind(dim=1)
    zeros = torch.zeros_like(rx)
    K = torch.stack([zeros, -rz, ry, rz, zeros, -rx, -ry, rx, zeros], dim=1).view(-1, 3, 3)
    eye = torch.eye(3, dtype=rot_vecs.dtype, device=rot_vecs.device)[None]
    return eye + sin * K + (1 - cos) * torch.bmm(K, K)


@dataclass
class FlameOutput:
    """Result of :class:`FlameLayer`.

    Attributes:
        vertices: (B, V, 3) posed vertices, metres, FLAME frame (+ translation).
        landmarks: (B, 68, 3) iBUG-order landmarks on the posed surface, same frame.
        joints: (B, 5, 3) posed joint positions.
        contour_bin: (B,) int64 row of the dynamic contour table that was used.
    """

    vertices: Tensor
    landmarks: Tensor
    joints: Tensor
    contour_bin: Tensor


class FlameLayer(nn.Module):
    """Differentiable FLAME forward pass (linear blend skinning as FLAME defines it).

    Holds the model as buffers, so ``.to(device)`` / ``.double()`` move and cast it. Inputs are cast to the layer's
    dtype and device.

    Example:
        >>> from next3d_gen.head_model import builtin_head_model
        >>> layer = FlameLayer(builtin_head_model())
        >>> out = layer(shape=torch.zeros(2, 10), pose=torch.zeros(2, 15))
        >>> tuple(out.landmarks.shape)
        (2, 68, 3)
    """

    faces: Tensor

    def __init__(self, model: FlameModel) -> None:
        super().__init__()
        model.validate(model.name)
        self.model = model
        V = model.num_vertices
        f32 = torch.float32
        self.register_buffer("v_template", torch.as_tensor(model.v_template, dtype=f32))
        self.register_buffer("shapedirs", torch.as_tensor(model.shapedirs, dtype=f32))
        self.register_buffer("exprdirs", torch.as_tensor(model.exprdirs, dtype=f32))
        # (V, 3, 36) -> (36, V*3) so that pose_feature @ posedirs gives per-vertex offsets.
        self.register_buffer("posedirs", torch.as_tensor(model.posedirs, dtype=f32).reshape(V * 3, 36).T.contiguous())
        self.register_buffer("j_regressor", torch.as_tensor(model.j_regressor, dtype=f32))
        self.register_buffer("weights", torch.as_tensor(model.weights, dtype=f32))
        self.register_buffer("parents", torch.as_tensor(model.parents, dtype=torch.long), persistent=False)
        self.register_buffer("faces", torch.as_tensor(model.faces, dtype=torch.long), persistent=False)
        self.register_buffer("static_lmk_faces", torch.as_tensor(model.static_lmk_faces, dtype=torch.long))
        self.register_buffer("static_lmk_bary", torch.as_tensor(model.static_lmk_bary, dtype=f32))
        self.register_buffer("dynamic_lmk_faces", torch.as_tensor(model.dynamic_lmk_faces, dtype=torch.long))
        self.register_buffer("dynamic_lmk_bary", torch.as_tensor(model.dynamic_lmk_bary, dtype=f32))

    @property
    def num_shape(self) -> int:
        return int(self.shapedirs.shape[2])

    @property
    def num_expression(self) -> int:
        return int(self.exprdirs.shape[2])

    def _coeffs(self, x: Tensor | None, n_model: int, batch: int, name: str) -> Tensor:
        ref = self.v_template
        if x is None:
            return ref.new_zeros(batch, n_model)
        x = x.to(dtype=ref.dtype, device=ref.device)
        if x.dim() != 2 or x.shape[0] != batch:
            raise ValueError(f"{name} must be (B, n) with B={batch}, got {tuple(x.shape)}")
        if x.shape[1] > n_model:
            raise ValueError(f"{name} has {x.shape[1]} columns but the model has only {n_model}")
        if x.shape[1] < n_model:
            x = torch.cat([x, x.new_zeros(batch, n_model - x.shape[1])], dim=1)
        return x

    def forward(
        self,
        shape: Tensor | None = None,
        expression: Tensor | None = None,
        pose: Tensor | None = None,
        translation: Tensor | None = None,
    ) -> FlameOutput:
        """Pose the model.

        Args:
            shape: (B, S') identity coefficients, S' <= model S; missing columns are zero.
            expression: (B, E') expression coefficients, E' <= model E.
            pose: (B, 15) axis-angle [global, neck, jaw, left eye, right eye], radians.
            translation: (B, 3) metres, added last; None = zero.

        Returns:
            :class:`FlameOutput`.
        """
        given = [t for t in (shape, expression, pose, translation) if t is not None]
        B = given[0].shape[0] if given else 1
        shape = self._coeffs(shape, self.num_shape, B, "shape")
        expression = self._coeffs(expression, self.num_expression, B, "expression")
        pose = self._coeffs(pose, 3 * NUM_JOINTS, B, "pose")
        if pose.shape[1] != 3 * NUM_JOINTS:
            raise ValueError("pose must have 15 columns")

        v_shaped = (
            self.v_template[None]
            + torch.einsum("bs,vcs->bvc", shape, self.shapedirs)
            + torch.einsum("be,vce->bvc", expression, self.exprdirs)
        )  # (B, V, 3)
        joints = torch.einsum("jv,bvc->bjc", self.j_regressor, v_shaped)  # (B, 5, 3)
        rot = batch_rodrigues(pose.reshape(-1, 3)).view(B, NUM_JOINTS, 3, 3)
        eye3 = torch.eye(3, dtype=pose.dtype, device=pose.device)
        pose_feature = (rot[:, 1:] - eye3).reshape(B, 36)
        v_posed = v_shaped + (pose_feature @ self.posedirs).view(B, -1, 3)

        # Rigid transforms down the kinematic tree, relative to the rest joints.
        rel_joints = joints.clone()
        rel_joints[:, 1:] -= joints[:, self.parents[1:]]
        local = torch.zeros(B, NUM_JOINTS, 4, 4, dtype=pose.dtype, device=pose.device)
        local[..., :3, :3] = rot
        local[..., :3, 3] = rel_joints
        local[..., 3, 3] = 1.0
        chain = [local[:, 0]]
        for j in range(1, NUM_JOINTS):
            chain.append(chain[int(self.parents[j])] @ local[:, j])
        world = torch.stack(chain, dim=1)  # (B, 5, 4, 4)
        posed_joints = world[..., :3, 3]
        rel = world.clone()
        rel[..., :3, 3] -= torch.einsum("bjik,bjk->bji", world[..., :3, :3], joints)
        T = torch.einsum("vj,bjik->bvik", self.weights, rel)  # (B, V, 4, 4)
        verts = torch.einsum("bvik,bvk->bvi", T[..., :3, :3], v_posed) + T[..., :3, 3]

        if translation is not None:
            translation = translation.to(verts)
            verts = verts + translation[:, None]
            posed_joints = posed_joints + translation[:, None]

        contour_bin = contour_yaw_bin(self.contour_yaw(rot))
        lmk_faces = torch.cat([self.dynamic_lmk_faces[contour_bin], self.static_lmk_faces.expand(B, -1)], dim=1)
        lmk_bary = torch.cat([self.dynamic_lmk_bary[contour_bin], self.static_lmk_bary.expand(B, -1, -1)], dim=1)
        landmarks = barycentric_points(verts, self.faces, lmk_faces, lmk_bary)
        return FlameOutput(vertices=verts, landmarks=landmarks, joints=posed_joints, contour_bin=contour_bin)

    @staticmethod
    def contour_yaw(rot: Tensor) -> Tensor:
        """Yaw in degrees that selects the contour row: -euler_y(R_global @ R_neck), as FLAME's reference layers.

        Args:
            rot: (B, 5, 3, 3) joint rotations.

        Returns:
            (B,) degrees. Positive when the head turns towards its right (its left cheek towards a frontal camera).
        """
        R = rot[:, 0] @ rot[:, 1]
        euler_y = torch.atan2(-R[:, 2, 0], torch.sqrt(R[:, 0, 0] ** 2 + R[:, 1, 0] ** 2))
        return -torch.rad2deg(euler_y)


def barycentric_points(vertices: Tensor, faces: Tensor, face_idx: Tensor, bary: Tensor) -> Tensor:
    """Points on a mesh surface.

    Args:
        vertices: (B, V, 3). faces: (F, 3) int64. face_idx: (B, N) or (N,) int64. bary: (B, N, 3) or (N, 3).

    Returns:
        (B, N, 3) points ``sum_k bary[..., k] * vertices[faces[face_idx, k]]``.
    """
    B = vertices.shape[0]
    if face_idx.dim() == 1:
        face_idx = face_idx.expand(B, -1)
    if bary.dim() == 2:
        bary = bary.expand(B, -1, -1)
    tri = faces[face_idx]  # (B, N, 3)
    corners = torch.gather(vertices, 1, tri.reshape(B, -1, 1).expand(-1, -1, 3)).view(B, -1, 3, 3)
    return (corners * bary.to(vertices)[..., None]).sum(dim=2)
