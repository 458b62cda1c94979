"""FLAME: the model container, the linear-blend-skinning layer, and loaders for the official files.

Frame: FLAME's own, metres, y up, z towards the face front, x towards the subject's left.
Joint order (pose columns): 0 global, 1 neck, 2 jaw, 3 left eye, 4 right eye; pose is axis-angle, (B, 15).
Landmarks come out in iBUG 68-point order: the 17 jaw-contour points (dynamic, chosen from the head + neck yaw,
as FLAME defines it) followed by the 51 static points. 300W's per-view jaw points (on the visible outline of the
face) need the camera, so they are placed by the annotator from :func:`contour_lines`
(:func:`next3d_gen.annotate.outline_contour`, generation option ``model.landmark_contour``).
"""

from __future__ import annotations

import builtins
import codecs
import collections
import copyreg
import importlib
import io
import os
import pickle
import struct
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import IO, Any

import numpy as np
import scipy.sparse
import torch
from torch import Tensor, nn

from next3d_gen.errors import UserError
from next3d_gen.flame_labels import face_labels_from_masks

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
        contour_line_faces: (17, M) int64 per jaw landmark a line of M candidate surface points ordered from the
            face front outwards, crossing the outline of the face in the views of interest (used by the
            ``outline`` landmark definition, :func:`next3d_gen.annotate.outline_contour`), or None: derived from
            the dynamic embedding (:func:`contour_lines`).
        contour_line_bary: (17, M, 3) float32 barycentrics of those points, or None.
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
    contour_line_faces: np.ndarray | None = None
    contour_line_bary: np.ndarray | None = None
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
            "contour_line_faces": (NUM_CONTOUR_LANDMARKS, None),
            "contour_line_bary": (NUM_CONTOUR_LANDMARKS, None, 3),
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
        if (self.contour_line_faces is None) != (self.contour_line_bary is None) or (
            self.contour_line_faces is not None and self.contour_line_faces.shape != self.contour_line_bary.shape[:2]
        ):
            raise ValueError(f"{source}: 'contour_line_faces' and 'contour_line_bary' must come together, same M")
        for key in ("static_lmk_faces", "dynamic_lmk_faces", "contour_line_faces"):
            arr = getattr(self, key)
            if arr is None:
                continue
            if arr.min() < 0 or arr.max() >= F:
                raise ValueError(f"{source}: '{key}' face index out of range [0, {F})")
        if self.uv_faces is not None and self.uv_coords is not None and self.uv_faces.max() >= len(self.uv_coords):
            raise ValueError(f"{source}: 'uv_faces' index out of range [0, {len(self.uv_coords)})")
        return self

    def save_npz(self, path: str) -> None:
        """Write every array to an ``.npz`` (readable by :func:`load_flame_model` / :meth:`load_npz`)."""
        arrays = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        arrays["name"] = np.array(self.name)
        np.savez_compressed(path, **arrays)

    @staticmethod
    def load_npz(path: str | os.PathLike[str]) -> FlameModel:
        """Read a file written by :meth:`save_npz`; the same function as ``load_flame_model(path)``.

        Whatever the file stores (embedding, UVs, labels) is used; UVs or labels it lacks are looked for beside it
        as :func:`load_flame_model` describes. Raises UserError naming the file for a truncated/wrong file.
        """
        return load_flame_model(path)


def contour_lines(model: FlameModel) -> tuple[np.ndarray, np.ndarray]:
    """Per jaw landmark a contour line of candidate surface points, ordered from the face front outwards.

    The model's own lines when it has them (the built-in head); else, for a FLAME file, the 79 rows of each
    point's dynamic embedding sorted by yaw (-39 .. +39 degrees), reversed where that puts the first candidate
    further back (smaller template z) than the last, so every line starts at the face front.

    Returns:
        ``(faces (17, M) int64, barycentrics (17, M, 3) float32)``.
    """
    if model.contour_line_faces is not None and model.contour_line_bary is not None:
        return np.asarray(model.contour_line_faces, np.int64), np.asarray(model.contour_line_bary, np.float32)
    yaws = np.array([r if r <= MAX_CONTOUR_YAW_DEG else MAX_CONTOUR_YAW_DEG - r for r in range(NUM_YAW_BINS)])
    order = np.argsort(yaws, kind="stable")
    faces = np.asarray(model.dynamic_lmk_faces, np.int64)[order].T.copy()  # (17, 79)
    bary = np.asarray(model.dynamic_lmk_bary, np.float32)[order].transpose(1, 0, 2).copy()  # (17, 79, 3)
    v = np.asarray(model.v_template, np.float64)
    z = (v[np.asarray(model.faces)[faces]][..., 2] * bary).sum(-1)  # (17, 79) template depth of each candidate
    flip = z[:, 0] < z[:, -1]
    faces[flip] = faces[flip, ::-1]
    bary[flip] = bary[flip, ::-1]
    return faces, bary


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
    """Axis-angle (N, 3) -> rotation matrices (N, 3, 3); exact identity for a zero vector.

    R = I + a(t) K + b(t) K^2 with K the cross-product matrix of the (unnormalised) vector, t its angle,
    a = sin(t) / t and b = (1 - cos t) / t^2 = 2 sin^2(t / 2) / t^2; below t = 1e-3 both use their Taylor series, so
    the result is exact to the dtype's precision at every angle and the gradient at zero is the true one (dR = K).
    """
    theta2 = (rot_vecs * rot_vecs).sum(dim=1)[:, None, None]  # (N, 1, 1)
    small = theta2 < 1e-6
    safe2 = torch.where(small, torch.ones_like(theta2), theta2)
    safe = torch.sqrt(safe2)
    a = torch.where(small, 1 - theta2 / 6 + theta2 * theta2 / 120, torch.sin(safe) / safe)
    b = torch.where(small, 0.5 - theta2 / 24 + theta2 * theta2 / 720, 2 * torch.sin(safe / 2) ** 2 / safe2)
    rx, ry, rz = rot_vecs.unbind(dim=1)
    zeros = torch.zeros_like(rx)
    K = torch.stack([zeros, -rz, ry, rz, zeros, -rx, -ry, rx, zeros], dim=1).view(-1, 3, 3)
    eye = torch.eye(3, dtype=rot_vecs.dtype, device=rot_vecs.device)[None]
    return eye + a * K + b * torch.bmm(K, K)


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
        if pose is not None and (pose.dim() != 2 or pose.shape[1] != 3 * NUM_JOINTS):
            # Never zero-pad a pose: FLAME_PyTorch's 6-value [global, jaw] pose would silently become [global, neck].
            raise ValueError(f"pose must be (B, 15) [global, neck, jaw, left eye, right eye], got {tuple(pose.shape)}")
        shape = self._coeffs(shape, self.num_shape, B, "shape")
        expression = self._coeffs(expression, self.num_expression, B, "expression")
        pose = self._coeffs(pose, 3 * NUM_JOINTS, B, "pose")

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


# ------------------------------------------------------------------------------------------------------------------
# Loading the official files (no chumpy needed)
# ------------------------------------------------------------------------------------------------------------------

FLAME_NUM_SHAPE = 300
"""Identity columns at the front of an official ``shapedirs`` (the rest are expression), as FLAME loaders assume."""
MODEL_FILE_NAMES = ("generic_model.pkl", "FLAME_NEUTRAL.pkl", "FLAME_NEUTRAL.npz", "flame2023.pkl", "flame2020.pkl")
"""Names tried, in order, when ``model_path`` is a directory."""
DECA_EMBEDDING_NAME = "landmark_embedding.npy"
STATIC_EMBEDDING_NAME = "flame_static_embedding.pkl"
DYNAMIC_EMBEDDING_NAME = "flame_dynamic_embedding.npy"
MASKS_FILE_NAME = "FLAME_masks.pkl"
UV_FILE_NAMES = ("FLAME_texture.npz", "head_template.obj")
"""UV files looked for beside the model, in this order."""

_FLAME_KEYS = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table")
_READ_ERRORS = (
    EOFError,
    pickle.UnpicklingError,
    zipfile.BadZipFile,
    zlib.error,
    struct.error,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    AttributeError,
    UnicodeDecodeError,
    RuntimeError,
)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) < 200 else text[:197] + "..."


class _ChumpyStub:
    """Stands in for every chumpy class while unpickling: keeps the pickled state (chumpy puts the array under 'x')."""

    _args: tuple[Any, ...]
    _state: Any

    def __new__(cls, *args: Any, **kwargs: Any) -> _ChumpyStub:
        # Pickle's NEWOBJ calls __new__ (maybe with arguments) and never __init__.
        obj = super().__new__(cls)
        obj._args, obj._state = args, None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self._state = state

    def value(self) -> np.ndarray:
        state = self._state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = state[0]
        if isinstance(state, dict) and "x" in state:
            return np.asarray(_plain(state["x"]))
        if self._args and isinstance(self._args[0], np.ndarray | list | tuple):
            return np.asarray(self._args[0])
        raise ValueError("a chumpy object holds no array under 'x' (a chumpy expression, not a stored array)")


def _load_torch_bytes(data: bytes) -> Any:
    """Stand-in for torch.storage._load_from_bytes that refuses anything but tensors and storages."""
    return torch.load(io.BytesIO(data), weights_only=True)


_SAFE_BUILTINS = frozenset(
    {"object", "set", "frozenset", "list", "dict", "tuple", "int", "float", "complex", "bool", "str", "bytes"}
    | {"bytearray", "slice", "range"}
)


class _FlameUnpickler(pickle.Unpickler):
    """Unpickler for FLAME's Python-2 pickles: chumpy -> stub, old scipy.sparse/numpy module names -> current ones.

    Only the globals such files contain are allowed (numpy arrays/dtypes, scipy sparse matrices, chumpy objects,
    plain containers; torch tensors when ``allow_torch``), so a foreign pickle cannot run code.
    """

    def __init__(self, file: IO[bytes], allow_torch: bool = False) -> None:
        super().__init__(file, encoding="latin1")
        self.allow_torch = allow_torch

    def find_class(self, module: str, name: str) -> Any:
        if module.split(".")[0] == "chumpy":
            return _ChumpyStub
        if module in ("__builtin__", "builtins") and name in _SAFE_BUILTINS:
            return getattr(builtins, name)
        if module in ("copy_reg", "copyreg") and name in ("_reconstructor", "__newobj__"):
            return getattr(copyreg, name)
        if (module, name) == ("_codecs", "encode"):
            return codecs.encode
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module.split(".")[0] == "numpy":
            sub = module.split(".")[1:]
            if sub and sub[0] in ("core", "_core"):
                new = ".".join(["numpy", "_core" if hasattr(np, "_core") else "core", *sub[1:]])
                if (sub[1:], name) in ((["multiarray"], "_reconstruct"), (["multiarray"], "scalar")) or (
                    sub[1:] == ["numeric"] and name == "_frombuffer"
                ):
                    return getattr(importlib.import_module(new), name)
            elif not sub and name in ("ndarray", "dtype"):
                return getattr(np, name)
            elif sub == ["dtypes"] and name.endswith("DType"):
                return getattr(np.dtypes, name)
        if module.startswith("scipy.sparse"):
            cls = getattr(scipy.sparse, name, None)
            if isinstance(cls, type) and issubclass(cls, scipy.sparse.spmatrix | scipy.sparse.sparray):
                return cls
        if self.allow_torch and module.split(".")[0] == "torch":
            if (module, name) == ("torch.storage", "_load_from_bytes"):
                return _load_torch_bytes
            if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
                return getattr(torch._utils, name)
            if module == "torch" and (name.endswith("Storage") or name == "Size"):
                return getattr(torch, name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} (not a FLAME asset)")


def _plain(obj: Any) -> Any:
    """chumpy stubs, sparse matrices and torch tensors -> numpy arrays (recursively through dicts/lists)."""
    if isinstance(obj, _ChumpyStub):
        return obj.value()
    if scipy.sparse.issparse(obj):
        try:
            return np.asarray(obj.toarray())
        except Exception:  # pickles from very old SciPy: rebuild from the stored arrays
            d = vars(obj)
            shape = tuple(d.get("_shape", d.get("shape")))
            cls = scipy.sparse.csr_matrix if "csr" in type(obj).__name__ else scipy.sparse.csc_matrix
            return np.asarray(cls((d["data"], d["indices"], d["indptr"]), shape=shape).toarray())
    if isinstance(obj, Tensor):
        return obj.detach().cpu().numpy()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.ndim == 0:
        return _plain(obj[()])
    return obj


def _read_npy(fh: IO[bytes], allow_torch: bool = False) -> Any:
    """One ``.npy`` stream; object arrays go through :class:`_FlameUnpickler` (never plain pickle)."""
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    if dtype.hasobject:
        return _plain(_FlameUnpickler(fh, allow_torch).load())
    count = int(np.prod(shape, dtype=np.int64))
    data = fh.read(count * dtype.itemsize)
    if len(data) != count * dtype.itemsize:
        raise EOFError("array data is truncated")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C").copy()


def _check_file(path: Path) -> None:
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a file")


def _read_any(path: Path, allow_torch: bool = False, keys: tuple[str, ...] | None = None) -> Any:
    """A pickle, ``.npy`` or ``.npz`` file (told apart by content) -> plain Python/numpy objects.

    ``keys`` limits which members of an ``.npz`` are read (FLAME_texture.npz also holds a large texture basis).

    Raises:
        UserError: missing, truncated or foreign file (names the file).
    """
    _check_file(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(6)
            fh.seek(0)
            if head.startswith(b"PK"):
                with zipfile.ZipFile(fh) as zf:
                    out = {}
                    for member in zf.namelist():
                        key = member[:-4] if member.endswith(".npy") else member
                        if keys is not None and key not in keys:
                            continue
                        with zf.open(member) as mf:
                            out[key] = _read_npy(io.BufferedReader(mf), allow_torch)  # type: ignore[arg-type]
                    return out
            if head == b"\x93NUMPY":
                return _read_npy(fh, allow_torch)
            return _plain(_FlameUnpickler(fh, allow_torch).load())
    except UserError:
        raise
    except _READ_ERRORS as exc:
        raise UserError(f"{path}: cannot read ({_one_line(exc)}); truncated or not the expected file") from None


def _need(d: Any, key: str, path: Path, shape: tuple[int | None, ...], kind: str = "float") -> np.ndarray:
    """``d[key]`` as an array of the given shape (None = any) and kind ('float' or 'int'); UserError otherwise."""
    if not isinstance(d, dict):
        raise UserError(f"{path}: expected a dict of arrays, found {type(d).__name__}")
    if key not in d:
        raise UserError(f"{path}: missing key '{key}'")
    try:
        arr = np.asarray(_plain(d[key]))
        if kind == "int":
            if arr.dtype.kind == "f" and arr.size and not np.all(arr == np.round(arr)):
                raise ValueError("non-integer values")
            arr = arr.astype(np.int64)
        else:
            arr = arr.astype(np.float32)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{path}: '{key}' is not a numeric array ({_one_line(exc)})") from None
    ok = arr.ndim == len(shape) and all(s is None or s == a for s, a in zip(shape, arr.shape, strict=False))
    if not ok:
        want = "x".join("*" if s is None else str(s) for s in shape)
        raise UserError(f"{path}: '{key}' has shape {tuple(arr.shape)}, expected {want}")
    return arr


def _split_blendshapes(shapedirs: np.ndarray, num_expression: int | None, path: Path) -> tuple[np.ndarray, np.ndarray]:
    K = shapedirs.shape[2]
    if num_expression is not None:
        if not 0 <= num_expression <= K:
            raise UserError(f"{path}: num_expression={num_expression} but 'shapedirs' has {K} columns")
        n_shape = K - num_expression
    elif K > FLAME_NUM_SHAPE:
        n_shape = FLAME_NUM_SHAPE
    else:
        warnings.warn(
            f"{path}: 'shapedirs' has only {K} columns (<= {FLAME_NUM_SHAPE}): loaded as identity only, with no "
            "expression components; pass num_expression= to split it",
            stacklevel=4,
        )
        n_shape = K
    return shapedirs[:, :, :n_shape].copy(), shapedirs[:, :, n_shape:].copy()


def _parents_from(kintree: np.ndarray, path: Path, key: str) -> np.ndarray:
    parents = kintree.astype(np.int64).copy()
    parents[0] = -1
    bad = [j for j in range(1, NUM_JOINTS) if not 0 <= parents[j] < j]
    if bad:
        raise UserError(f"{path}: '{key}' is not a kinematic tree with parents before children: {parents.tolist()}")
    return parents


def _model_arrays(d: Any, path: Path, num_expression: int | None) -> dict[str, Any]:
    """FlameModel fields found in a model file (official FLAME keys, or our own save_npz keys)."""
    if not isinstance(d, dict):
        raise UserError(f"{path}: expected a dict of arrays (a FLAME model), found {type(d).__name__}")
    out: dict[str, Any] = {}
    if all(k in d for k in ("exprdirs", "j_regressor")):  # our own FlameModel.save_npz
        v = _need(d, "v_template", path, (None, 3))
        V = v.shape[0]
        out["v_template"] = v
        out["faces"] = _need(d, "faces", path, (None, 3), "int")
        out["shapedirs"] = _need(d, "shapedirs", path, (V, 3, None))
        out["exprdirs"] = _need(d, "exprdirs", path, (V, 3, None))
        out["posedirs"] = _need(d, "posedirs", path, (V, 3, 36))
        out["j_regressor"] = _need(d, "j_regressor", path, (NUM_JOINTS, V))
        out["weights"] = _need(d, "weights", path, (V, NUM_JOINTS))
        out["parents"] = _parents_from(_need(d, "parents", path, (NUM_JOINTS,), "int"), path, "parents")
        F = out["faces"].shape[0]
        for key, shape, kind in (
            ("static_lmk_faces", (NUM_STATIC_LANDMARKS,), "int"),
            ("static_lmk_bary", (NUM_STATIC_LANDMARKS, 3), "float"),
            ("dynamic_lmk_faces", (NUM_YAW_BINS, NUM_CONTOUR_LANDMARKS), "int"),
            ("dynamic_lmk_bary", (NUM_YAW_BINS, NUM_CONTOUR_LANDMARKS, 3), "float"),
            ("uv_coords", (None, 2), "float"),
            ("uv_faces", (F, 3), "int"),
            ("face_labels", (F,), "int"),
            ("contour_line_faces", (NUM_CONTOUR_LANDMARKS, None), "int"),
            ("contour_line_bary", (NUM_CONTOUR_LANDMARKS, None, 3), "float"),
        ):
            if key in d:
                out[key] = _need(d, key, path, shape, kind)
        if "face_labels" in out:
            out["face_labels"] = out["face_labels"].astype(np.uint8)
        if "name" in d:
            out["name"] = str(np.asarray(d["name"]))
        return out
    for key in _FLAME_KEYS:
        if key not in d:
            raise UserError(f"{path}: missing key '{key}' (not a FLAME model file)")
    v = _need(d, "v_template", path, (None, 3))
    V = v.shape[0]
    out["v_template"] = v
    out["faces"] = _need(d, "f", path, (None, 3), "int")
    out["shapedirs"], out["exprdirs"] = _split_blendshapes(
        _need(d, "shapedirs", path, (V, 3, None)), num_expression, path
    )
    out["posedirs"] = _need(d, "posedirs", path, (V, 3, 36))
    out["j_regressor"] = _need(d, "J_regressor", path, (NUM_JOINTS, V))
    out["weights"] = _need(d, "weights", path, (V, NUM_JOINTS))
    out["parents"] = _parents_from(_need(d, "kintree_table", path, (2, NUM_JOINTS), "int")[0], path, "kintree_table")
    return out


def load_landmark_embedding(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read a FLAME landmark embedding in either published format.

    Accepted: DECA's ``landmark_embedding.npy`` (static + dynamic in one file; torch tensors inside are read without
    running arbitrary code), ``flame_static_embedding.pkl`` (needs ``flame_dynamic_embedding.npy`` beside it), the
    dynamic file itself (needs the static pickle beside it), or a directory holding either.

    Args:
        path: file or directory.

    Returns:
        dict with ``static_lmk_faces`` (51,) int64, ``static_lmk_bary`` (51, 3) float32, ``dynamic_lmk_faces``
        (79, 17) int64 and ``dynamic_lmk_bary`` (79, 17, 3) float32 (rows as in :func:`contour_yaw_bin`).

    Raises:
        UserError: missing/truncated file, missing key or bad shape (names the file and key).
    """
    path = Path(path)
    if path.is_dir():
        found = _find_embedding(path)
        if found is None:
            raise UserError(
                f"{path}: no landmark embedding here (need {DECA_EMBEDDING_NAME}, or {STATIC_EMBEDDING_NAME} "
                f"with {DYNAMIC_EMBEDDING_NAME})"
            )
        path = found
    d = _read_any(path, allow_torch=True)
    if isinstance(d, dict) and "static_lmk_faces_idx" in d:  # DECA
        return {
            "static_lmk_faces": _need(d, "static_lmk_faces_idx", path, (NUM_STATIC_LANDMARKS,), "int"),
            "static_lmk_bary": _need(d, "static_lmk_bary_coords", path, (NUM_STATIC_LANDMARKS, 3)),
            "dynamic_lmk_faces": _need(d, "dynamic_lmk_faces_idx", path, (NUM_YAW_BINS, NUM_CONTOUR_LANDMARKS), "int"),
            "dynamic_lmk_bary": _need(d, "dynamic_lmk_bary_coords", path, (NUM_YAW_BINS, NUM_CONTOUR_LANDMARKS, 3)),
        }
    if not isinstance(d, dict) or "lmk_face_idx" not in d:
        raise UserError(
            f"{path}: missing key 'static_lmk_faces_idx' (DECA) or 'lmk_face_idx' (RingNet/FLAME): "
            "not a landmark embedding"
        )
    is_dynamic = np.asarray(_plain(d["lmk_face_idx"])).ndim == 2
    static_path = path.with_name(STATIC_EMBEDDING_NAME) if is_dynamic else path
    dynamic_path = path if is_dynamic else path.with_name(DYNAMIC_EMBEDDING_NAME)
    other = static_path if is_dynamic else dynamic_path
    if not other.exists():
        raise UserError(
            f"{path}: {other.name} is missing beside it (the static and dynamic FLAME embeddings are used together)"
        )
    static = d if not is_dynamic else _read_any(static_path)
    dynamic = d if is_dynamic else _read_any(dynamic_path, allow_torch=True)
    return {
        "static_lmk_faces": _need(static, "lmk_face_idx", static_path, (NUM_STATIC_LANDMARKS,), "int"),
        "static_lmk_bary": _need(static, "lmk_b_coords", static_path, (NUM_STATIC_LANDMARKS, 3)),
        "dynamic_lmk_faces": _need(dynamic, "lmk_face_idx", dynamic_path, (NUM_YAW_BINS, NUM_CONTOUR_LANDMARKS), "int"),
        "dynamic_lmk_bary": _need(dynamic, "lmk_b_coords", dynamic_path, (NUM_YAW_BINS, NUM_CONTOUR_LANDMARKS, 3)),
    }


def _find_embedding(directory: Path) -> Path | None:
    for name in (DECA_EMBEDDING_NAME, STATIC_EMBEDDING_NAME):
        if (directory / name).is_file():
            return directory / name
    return None


def load_flame_masks(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read ``FLAME_masks.pkl``: region name -> (N,) int64 vertex indices (regions overlap).

    Raises:
        UserError: missing/truncated file or not a dict of index arrays (names the file).
    """
    path = Path(path)
    d = _read_any(path)
    if not isinstance(d, dict) or not d:
        raise UserError(f"{path}: expected a dict of region name -> vertex indices")
    return {str(k): _need(d, k, path, (None,), "int") for k in d}


def _parse_obj_uv(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OBJ -> (vt (T, 2), face vertex indices (F, 3), face vt indices (F, 3)), 0-based; triangles only."""
    _check_file(path)
    num_v = 0
    vt: list[list[float]] = []
    fv: list[list[int]] = []
    ft: list[list[int]] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for lineno, line in enumerate(fh, 1):
                parts = line.split()
                if not parts:
                    continue
                if parts[0] == "v":
                    num_v += 1
                elif parts[0] == "vt":
                    vt.append([float(parts[1]), float(parts[2])])
                elif parts[0] == "f":
                    corners = [p.split("/") for p in parts[1:]]
                    if len(corners) != 3 or any(len(c) < 2 or not c[1] for c in corners):
                        raise ValueError(f"line {lineno}: faces must be triangles written v/vt")
                    iv = [int(c[0]) for c in corners]
                    it = [int(c[1]) for c in corners]
                    fv.append([i - 1 if i > 0 else num_v + i for i in iv])
                    ft.append([i - 1 if i > 0 else len(vt) + i for i in it])
    except (ValueError, IndexError) as exc:
        raise UserError(f"{path}: cannot read the OBJ ({_one_line(exc)})") from None
    if not vt or not fv:
        raise UserError(f"{path}: the OBJ has no 'vt' texture coordinates or no faces")
    return np.asarray(vt, np.float32), np.asarray(fv, np.int64), np.asarray(ft, np.int64)


def load_uv(path: str | os.PathLike[str], faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """UV coordinates for a FLAME mesh from ``FLAME_texture.npz`` (keys vt, ft) or an OBJ (vt + ``f v/vt``).

    An OBJ's faces may list the same triangles as ``faces`` in another order or corner rotation (they are matched).

    Args:
        path: the npz or OBJ file.
        faces: (F, 3) int64 the model's triangles.

    Returns:
        uv_coords (T, 2) float32 (OBJ convention, v up) and uv_faces (F, 3) int64 aligned with ``faces``.

    Raises:
        UserError: missing/truncated file, missing key, bad shape, or triangles that do not match (names the file).
    """
    path = Path(path)
    F = len(faces)
    if path.suffix.lower() == ".obj":
        vt, obj_f, obj_ft = _parse_obj_uv(path)
        if obj_f.shape != faces.shape:
            raise UserError(f"{path}: has {len(obj_f)} faces, the model has {F}")
        if np.array_equal(obj_f, faces):
            ft = obj_ft
        else:
            index = {tuple(sorted(t)): i for i, t in enumerate(obj_f.tolist())}
            try:
                m = np.array([index[tuple(sorted(t))] for t in faces.tolist()], dtype=np.int64)
            except KeyError:
                raise UserError(f"{path}: its triangles are not the model's triangles") from None
            pos = np.argmax(obj_f[m][:, None, :] == faces[:, :, None], axis=2)  # (F, 3) corner position in OBJ face
            ft = np.take_along_axis(obj_ft[m], pos, axis=1)
    else:
        d = _read_any(path, keys=("vt", "ft"))
        vt = _need(d, "vt", path, (None, 2))
        ft = _need(d, "ft", path, (F, 3), "int")
    if ft.size and (ft.min() < 0 or ft.max() >= len(vt)):
        raise UserError(f"{path}: face UV index out of range [0, {len(vt)})")
    return vt.astype(np.float32), ft.astype(np.int64)


def _template_points(v: np.ndarray, faces: np.ndarray, face_idx: np.ndarray, bary: np.ndarray) -> np.ndarray:
    return np.einsum("nk,nkc->nc", bary.astype(np.float64), v.astype(np.float64)[faces[face_idx]])


def _beside(model_path: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (model_path.parent / name).is_file():
            return model_path.parent / name
    return None


def load_flame_model(
    model_path: str | os.PathLike[str],
    landmark_embedding_path: str | os.PathLike[str] | None = None,
    *,
    masks_path: str | os.PathLike[str] | None = None,
    uv_path: str | os.PathLike[str] | None = None,
    num_expression: int | None = None,
) -> FlameModel:
    """Load a FLAME model without chumpy: the official pickle, an ``.npz`` conversion, or :meth:`FlameModel.save_npz`.

    Model file (told apart by content, not by name):

    - official ``generic_model.pkl`` (FLAME 2020/2023, a Python-2 pickle referencing chumpy and scipy.sparse):
      read by a restricted unpickler that maps chumpy objects to their stored arrays and old scipy.sparse names to
      the current ones; chumpy is never imported;
    - an ``.npz`` with the same keys (``v_template, f, shapedirs, posedirs, J_regressor`` (dense or sparse),
      ``weights, kintree_table``), e.g. smplx's ``FLAME_NEUTRAL.npz``;
    - our own :meth:`FlameModel.save_npz` output (has ``exprdirs`` and ``j_regressor``): this function is also the
      loader for those files; whatever it stores is used unless a path below is given explicitly;
    - a directory: the first of :data:`MODEL_FILE_NAMES` found in it.

    ``shapedirs`` split rule (official keys): with more than 300 columns, columns 0-299 are identity and the rest
    expression (FLAME 2020/2023: 300 + 100, the split every reference loader hard-codes). With 300 or fewer columns
    they cannot be told apart: all are identity (a warning says so) unless ``num_expression`` is given.
    ``num_expression`` always wins: the last ``num_expression`` columns are expression.

    Companion files, each looked for beside the model when its argument is None:

    - landmark embedding (required): DECA ``landmark_embedding.npy``, else ``flame_static_embedding.pkl`` with
      ``flame_dynamic_embedding.npy`` (see :func:`load_landmark_embedding`);
    - UVs (optional): ``FLAME_texture.npz`` (``vt``, ``ft``) else ``head_template.obj``; none -> ``uv_coords=None``;
    - masks (optional): ``FLAME_masks.pkl`` -> per-face labels by
      :func:`next3d_gen.flame_labels.face_labels_from_masks`; none -> ``face_labels=None`` (consumers that need
      labels raise).

    Args:
        model_path: model file or directory.
        landmark_embedding_path: embedding file or directory; None = beside the model.
        masks_path: ``FLAME_masks.pkl``; None = beside the model if present.
        uv_path: ``FLAME_texture.npz`` or an OBJ with the FLAME topology; None = beside the model if present.
        num_expression: how many trailing ``shapedirs`` columns are expression (see the split rule).

    Returns:
        A validated :class:`FlameModel` (float32 arrays, FLAME frame, metres).

    Raises:
        UserError: a missing, truncated or wrong file, a missing key or a bad shape; the one-line message names the
            file and the key.
    """
    model_path = Path(model_path)
    if model_path.is_dir():
        found = _beside(model_path / "x", MODEL_FILE_NAMES)
        if found is None:
            raise UserError(f"{model_path}: no FLAME model here (looked for {', '.join(MODEL_FILE_NAMES)})")
        model_path = found
    arrays = _model_arrays(_read_any(model_path), model_path, num_expression)
    own = "exprdirs" in arrays and "static_lmk_faces" in arrays
    V, F = arrays["v_template"].shape[0], arrays["faces"].shape[0]
    if arrays["faces"].size and (arrays["faces"].min() < 0 or arrays["faces"].max() >= V):
        raise UserError(f"{model_path}: 'f' vertex index out of range [0, {V})")

    if landmark_embedding_path is not None or not own:
        emb_path = Path(landmark_embedding_path) if landmark_embedding_path is not None else None
        if emb_path is None:
            emb_path = _find_embedding(model_path.parent)
            if emb_path is None:
                raise UserError(
                    f"{model_path}: no landmark embedding found beside the model; put {DECA_EMBEDDING_NAME} (DECA), "
                    f"or {STATIC_EMBEDDING_NAME} with {DYNAMIC_EMBEDDING_NAME}, there or pass landmark_embedding_path"
                )
        emb = load_landmark_embedding(emb_path)
        for key in ("static_lmk_faces", "dynamic_lmk_faces"):
            if emb[key].min() < 0 or emb[key].max() >= F:
                raise UserError(f"{emb_path}: landmark face index out of range [0, {F}) for this model")
        arrays.update(emb)
        arrays.pop("contour_line_faces", None)  # lines of another embedding: derive them from this one
        arrays.pop("contour_line_bary", None)

    uv_file = Path(uv_path) if uv_path is not None else None
    if uv_file is None and "uv_coords" not in arrays:
        uv_file = _beside(model_path, UV_FILE_NAMES)
    if uv_file is not None:
        arrays["uv_coords"], arrays["uv_faces"] = load_uv(uv_file, arrays["faces"])

    mask_file = Path(masks_path) if masks_path is not None else None
    if mask_file is None and "face_labels" not in arrays:
        mask_file = _beside(model_path, (MASKS_FILE_NAME,))
    if mask_file is not None:
        masks = load_flame_masks(mask_file)
        lmk = _template_points(
            arrays["v_template"], arrays["faces"], arrays["static_lmk_faces"], arrays["static_lmk_bary"]
        )
        try:
            arrays["face_labels"] = face_labels_from_masks(arrays["v_template"], arrays["faces"], masks, lmk)
        except ValueError as exc:
            raise UserError(f"{mask_file}: {_one_line(exc)}") from None

    arrays.setdefault("name", str(model_path))
    try:
        return FlameModel(**arrays).validate(str(model_path))
    except ValueError as exc:
        raise UserError(_one_line(exc)) from None
