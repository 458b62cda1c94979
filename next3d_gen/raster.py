"""Triangle rasterizer: per-pixel face index, perspective-correct barycentrics and camera depth.

Conventions (ARCHITECTURE.md section 3): camera frame OpenCV (x right, y down, z forward), metres; ``K`` in pixels
with last row ``(0, 0, 1)``; pixel (row ``i``, column ``j``) is sampled at its centre, the point ``x = j, y = i``
(integer coordinates are pixel centres, the image spans ``[-0.5, W-0.5] x [-0.5, H-0.5]``).

Algorithm (default ``backend="torch"``, pure PyTorch, runs on the device of the inputs):

1. Near plane. Triangles are clipped *exactly* against the plane ``z = near`` in camera space: triangles with all
   three vertices at ``z >= near`` are kept as they are, triangles with all vertices at ``z < near`` are dropped,
   and the rest are clipped into one or two sub-triangles (a corner triangle or a quadrilateral). Sub-triangles keep
   the parent's face index and winding and carry a 3x3 matrix that maps their barycentrics to the parent's, so the
   returned barycentrics always refer to the three vertices of the original face. The clip point on an edge is
   computed from the edge's endpoints in a canonical order (lower vertex index first), so two faces sharing a
   clipped edge get bit-identical clip points (no cracks).
2. Projection of all vertices with ``K``; per-primitive screen bounding box of pixel centres
   ``[ceil(min x), floor(max x)] x [ceil(min y), floor(max y)]`` clipped to the image.
3. Candidate enumeration, fully vectorised. Primitives whose box fits in ``s x s`` pixels with ``s <= 16`` are
   grouped by ``s``; each group is evaluated on a dense (s*s, primitives) window grid by broadcasting per-primitive
   coefficients against the window offsets (no per-pixel gathers); the window is shifted inside the image where the
   box touches the border, so every lane is a real pixel. Larger boxes enumerate exactly their box pixels with
   ``repeat_interleave``. Both paths work in chunks of about ``2**18`` candidates to bound memory.
4. Coverage by three 2D edge functions ``e_k(q) = (dx_k * qy - dy_k * qx) + c_k``. Each edge's coefficients are
   computed from its endpoints in a canonical order (lexicographic on the projected ``(x, y)``) and then
   sign-flipped, an exact operation, so the two triangles that share an edge compute exactly opposite values at
   every pixel centre: a mesh without T-junctions is rasterized without cracks, whatever the rounding.
5. Depth ``z`` from the screen-space barycentrics ``s_k`` and ``1/z`` interpolation (``1/z = sum_k s_k / z_k``), then
   a z-buffer as one ``scatter_reduce(..., "amin")`` over int64 keys ``(float32 bits of z) << 32 | primitive id``.
   Positive float32 bit patterns order like the floats, so the minimum key is the nearest primitive; equal depths go
   to the lower primitive id (lower face index for unclipped faces).
6. For the winning primitive of each covered pixel the perspective-correct barycentrics
   ``b_k = (s_k / z_k) / sum_j (s_j / z_j)`` are computed (then mapped to the parent face for clipped primitives),
   and depth is ``1 / sum_k (s_k / z_k)``, which equals ``sum_k b_k z_k``, so ``sum_k b_k X_k`` is the 3D point on
   the pixel ray up to rounding.

Edge / tie rule: a pixel centre is covered when it is inside the triangle **or on one of its edges** (all three edge
functions >= 0). Pixels on an edge shared by two triangles are therefore claimed by both and resolved by the
z-buffer (smaller depth, then smaller face index). This is not the top-left rule, so two coplanar triangles that
merely touch both "cover" their common edge; for closed meshes that is harmless.

Winding: a face is *front facing* when its outward normal ``(X1 - X0) x (X2 - X0)`` (counter-clockwise seen from
outside, the head-model convention) points towards the camera. In the OpenCV image (y down) such a face has a
*negative* signed area ``(x1 - x0)(y2 - y0) - (x2 - x0)(y1 - y0) < 0`` in pixel coordinates, which is the same as
"counter-clockwise as the image is displayed" (row 0 at the top). ``cull_backfaces=True`` drops every face that is
not front facing (including edge-on faces); otherwise both sides are rasterized. Zero-area projections are always
dropped.

Complexity: ``O(B*V + B*F + N_c + B*H*W)`` time, where ``N_c`` is the number of (primitive, pixel) candidates: the
sum over primitives of their pixel-box area, rounded up to the bucket's square for boxes of side <= 16. For a fixed
mesh ``N_c`` grows with the image area (about 4x from 256 to 512 pixels). Memory ``O(B*H*W + P + 2**18 + largest
box)``, P = number of primitives. Everything is tensor code (about 40 kernel launches per box-size bucket), so it
runs unchanged on CUDA tensors.

Limits: outputs are not differentiable (computed under ``torch.no_grad``); one face per pixel (no layering, no
anti-aliasing, no blur); very large projected coordinates (triangles just in front of a tiny ``near``) lose float32
precision in their edge functions; at most ``2**31 - 1`` primitives per call. Float64 inputs are computed in
float64 throughout (only the z-buffer keys use float32 depth bits, so primitives whose depths agree to float32
precision are ordered by index).

The ``pytorch3d`` backend (only when importable) calls ``pytorch3d.renderer.mesh.rasterize_meshes`` with vertices
mapped to its NDC frame (+x left, +y up), ``perspective_correct=True`` and ``z_clip_value=near``; back faces are
culled here before the call so both backends agree on the winding. It differs from the torch backend only at pixels
whose centre lies (to rounding) on an edge, where pytorch3d's strict inside test applies.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = ["Fragments", "rasterize", "DEFAULT_NEAR", "pytorch3d_available"]

DEFAULT_NEAR = 1e-3
"""Default near-plane distance in metres."""

_CHUNK = 1 << 18
_DENSE_MAX_SIDE = 16
_INT64_MAX = torch.iinfo(torch.int64).max
_LOW32 = 0xFFFFFFFF

Backend = Literal["auto", "torch", "pytorch3d"]


@dataclass
class Fragments:
    """Per-pixel rasterization result for a batch of B images of H x W pixels.

    Attributes:
        face_index: (B, H, W) int64 index into ``faces`` of the visible face, ``-1`` on background.
        barycentric: (B, H, W, 3) float, the dtype of ``vertices_cam``; perspective-correct weights of the visible
            face's three camera-space vertices (in ``faces`` column order), each in [0, 1] and summing to 1, so that
            ``sum_k barycentric[..., k] * X_k`` is the visible 3D surface point on the pixel-centre ray. Zero on
            background.
        depth: (B, H, W) float, camera-frame z of that surface point in metres (not the ray length), ``>= near``;
            ``0`` on background.
    """

    face_index: Tensor
    barycentric: Tensor
    depth: Tensor

    @property
    def mask(self) -> Tensor:
        """(B, H, W) bool foreground mask (``face_index >= 0``)."""
        return self.face_index >= 0


def pytorch3d_available() -> bool:
    """True when ``pytorch3d`` can be imported (the optional ``backend="pytorch3d"``)."""
    return importlib.util.find_spec("pytorch3d") is not None


def rasterize(
    vertices_cam: Tensor,
    faces: Tensor,
    K: Tensor,
    height: int,
    width: int,
    *,
    near: float = DEFAULT_NEAR,
    cull_backfaces: bool = False,
    backend: Backend = "auto",
) -> Fragments:
    """Rasterize a batch of triangle meshes that share one face list.

    Args:
        vertices_cam: (B, V, 3) float32/float64 vertices in the OpenCV camera frame, metres.
        faces: (F, 3) integer vertex indices (int64 preferred), shared by the batch.
        K: (B, 3, 3) or (3, 3) pixel intrinsics (last row ``0 0 1``; skew allowed), pixel-centre convention.
        height, width: output size in pixels.
        near: near-plane distance in metres (> 0); geometry with ``z < near`` is clipped away exactly.
        cull_backfaces: drop faces whose outward normal does not point towards the camera (see module docstring).
        backend: ``"torch"`` (pure PyTorch), ``"pytorch3d"`` (requires pytorch3d) or ``"auto"`` (pytorch3d when
            importable and the tensors are on CUDA, else torch).

    Returns:
        :class:`Fragments` on the device of ``vertices_cam``.

    Raises:
        ValueError: on wrong shapes, out-of-range face indices, a non-positive ``near`` or an unknown backend.
    """
    verts, faces, K = _check_inputs(vertices_cam, faces, K, height, width, near)
    if backend == "auto":
        backend = "pytorch3d" if (verts.is_cuda and pytorch3d_available()) else "torch"
    if backend == "torch":
        with torch.no_grad():
            return _rasterize_torch(verts, faces, K, height, width, near, cull_backfaces)
    if backend == "pytorch3d":
        if not pytorch3d_available():
            raise ValueError("backend='pytorch3d' requested but pytorch3d is not importable")
        with torch.no_grad():
            return _rasterize_pytorch3d(verts, faces, K, height, width, near, cull_backfaces)
    raise ValueError(f"unknown rasterizer backend {backend!r}; expected 'auto', 'torch' or 'pytorch3d'")


# ----------------------------------------------------------------------------------------------------------------
# input checks and geometry shared by the backends
# ----------------------------------------------------------------------------------------------------------------


def _check_inputs(
    verts: Tensor, faces: Tensor, K: Tensor, height: int, width: int, near: float
) -> tuple[Tensor, Tensor, Tensor]:
    if verts.dim() != 3 or verts.shape[-1] != 3:
        raise ValueError(f"vertices_cam must be (B, V, 3), got {tuple(verts.shape)}")
    if not verts.is_floating_point():
        raise ValueError(f"vertices_cam must be a float tensor, got {verts.dtype}")
    if faces.dim() != 2 or faces.shape[-1] != 3:
        raise ValueError(f"faces must be (F, 3), got {tuple(faces.shape)}")
    if faces.is_floating_point() or faces.dtype == torch.bool:
        raise ValueError(f"faces must be an integer tensor, got {faces.dtype}")
    faces = faces.to(device=verts.device, dtype=torch.long)
    B, V = verts.shape[:2]
    if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= V):
        raise ValueError(f"faces index out of range for {V} vertices")
    K = K.to(device=verts.device, dtype=verts.dtype)
    if K.dim() == 2:
        K = K.expand(B, 3, 3)
    if K.shape == (1, 3, 3) and B != 1:
        K = K.expand(B, 3, 3)
    if tuple(K.shape) != (B, 3, 3):
        raise ValueError(f"K must be (3, 3) or (B, 3, 3) with B={B}, got {tuple(K.shape)}")
    if int(height) <= 0 or int(width) <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if not near > 0:
        raise ValueError(f"near must be > 0, got {near}")
    return verts, faces, K


def _project(X: Tensor, K: Tensor) -> tuple[Tensor, Tensor]:
    """(B, N, 3) camera points with z > 0 -> pixel x, y, each (B, N)."""
    iz = 1.0 / X[..., 2]
    xn = X[..., 0] * iz
    yn = X[..., 1] * iz
    k = K[:, None]
    x = k[..., 0, 0] * xn + k[..., 0, 1] * yn + k[..., 0, 2]
    y = k[..., 1, 1] * yn + k[..., 1, 2]
    return x, y


def _clip_near(verts: Tensor, faces: Tensor, near: float, n_in: Tensor):
    """Clip the faces that cross ``z = near``.

    Returns:
        cb: (C,) batch index, cf: (C,) face index, cX: (C, 3, 3) camera vertices of the sub-triangles,
        cM: (C, 3, 3) rows = barycentrics (w.r.t. the parent face's vertices) of each sub-triangle vertex.
    """
    dev, dt = verts.device, verts.dtype
    cross = (n_in == 1) | (n_in == 2)
    bi, fi = cross.nonzero(as_tuple=True)
    if bi.numel() == 0:
        e = verts.new_zeros(0, 3, 3)
        return bi, fi, e, e.clone()
    vid = faces[fi]  # (C, 3)
    X = verts[bi[:, None], vid]  # (C, 3, 3)
    inside = X[..., 2] >= near
    one = n_in[bi, fi] == 1
    # Rotation start: the single inside vertex (one in) or the single outside vertex (two in); keeps the winding.
    start = torch.where(one, inside.to(torch.uint8).argmax(1), (~inside).to(torch.uint8).argmax(1))
    rot = (start[:, None] + torch.arange(3, device=dev)) % 3  # (C, 3) slots in rotated order
    Xr = X.gather(1, rot[..., None].expand(-1, -1, 3))
    vr = vid.gather(1, rot)
    eye = torch.eye(3, dtype=dt, device=dev)
    Er = eye[rot]  # (C, 3, 3) one-hot rows of the rotated slots

    def clip_point(a: int, b: int) -> tuple[Tensor, Tensor]:
        # canonical order: endpoint with the lower vertex index first -> bit-identical point for both faces
        swap = vr[:, a] > vr[:, b]
        lo = torch.where(swap, b, a)
        hi = torch.where(swap, a, b)
        ar = torch.arange(Xr.shape[0], device=dev)
        Xlo, Xhi = Xr[ar, lo], Xr[ar, hi]
        t = (near - Xlo[:, 2]) / (Xhi[:, 2] - Xlo[:, 2])
        P = Xlo + t[:, None] * (Xhi - Xlo)
        m = Er[ar, lo] * (1 - t)[:, None] + Er[ar, hi] * t[:, None]
        return P, m

    P01, m01 = clip_point(0, 1)
    P02, m02 = clip_point(0, 2)
    P12, m12 = clip_point(1, 2)
    X0, X1, X2 = Xr[:, 0], Xr[:, 1], Xr[:, 2]
    E0, E1, E2 = Er[:, 0], Er[:, 1], Er[:, 2]
    # one inside (slot 0 in): triangle (X0, P01, P02)
    # two inside (slot 0 out): triangles (P01, X1, X2) and (P01, X2, P02)
    tA = torch.where(one[:, None, None], torch.stack([X0, P01, P02], 1), torch.stack([P01, X1, X2], 1))
    mA = torch.where(one[:, None, None], torch.stack([E0, m01, m02], 1), torch.stack([m01, E1, E2], 1))
    two = ~one
    tB = torch.stack([P01, X2, P02], 1)[two]
    mB = torch.stack([m01, E2, m02], 1)[two]
    del P12, m12
    cb = torch.cat([bi, bi[two]])
    cf = torch.cat([fi, fi[two]])
    return cb, cf, torch.cat([tA, tB]), torch.cat([mA, mB])


# ----------------------------------------------------------------------------------------------------------------
# pure PyTorch backend
# ----------------------------------------------------------------------------------------------------------------


# (P, 15) primitive table columns
_C_EDGE = 0  # 9 columns: (c_k, dx_k, dy_k) for k = 0..2; e_k(q) = (dx_k * qy - dy_k * qx) + c_k
_C_W = 9  # 3 columns: 1 / z_k
_C_X0, _C_Y0, _C_NX = 12, 13, 14  # pixel box origin and width


def _edge_rows(x: Tensor, y: Tensor, area2: Tensor) -> Tensor:
    """Canonical, orientation-signed edge coefficients.

    Args:
        x, y: (3, P) projected vertex coordinates (row k = vertex k). area2: (P,) signed doubled area.

    Returns:
        (9, P) rows ``c_k, dx_k, dy_k`` for k = 0..2 (edge k is opposite vertex k) such that
        ``e_k(q) = (dx_k * qy - dy_k * qx) + c_k`` is >= 0 inside the triangle. The endpoints enter in lexicographic
        (x, y) order and the sign is applied afterwards (an exact operation), so two triangles sharing an edge get
        exactly opposite coefficients and hence exactly opposite edge values at every pixel centre.
    """
    sgn_area = torch.where(area2 > 0, 1.0, -1.0).to(area2.dtype)
    iu = torch.tensor([1, 2, 0], device=x.device)
    iv = torch.tensor([2, 0, 1], device=x.device)
    ux, uy, vx, vy = x.index_select(0, iu), y.index_select(0, iu), x.index_select(0, iv), y.index_select(0, iv)
    swap = (ux > vx) | ((ux == vx) & (uy > vy))
    ax = torch.where(swap, vx, ux)
    ay = torch.where(swap, vy, uy)
    m = torch.where(swap, -sgn_area, sgn_area)
    dx = (torch.where(swap, ux, vx) - ax) * m
    dy = (torch.where(swap, uy, vy) - ay) * m
    return torch.stack([dy * ax - dx * ay, dx, dy], dim=1).reshape(9, -1)


def _edge(c: Tensor, dx: Tensor, dy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
    """One edge function at pixel centres; the single formula used by every code path (bit-identical results)."""
    return (dx * qy - dy * qx) + c


def _gather_corners(srcs: list[Tensor], batch: Tensor | None, vidT: Tensor) -> list[Tensor]:
    """``[src[batch, vidT] for src in srcs]`` as (3, P) tensors for (B, V) sources and (3, P) vertex ids."""
    flat = vidT if batch is None else vidT + batch[None] * srcs[0].shape[1]
    flat = flat.reshape(-1)
    return [src.reshape(-1).index_select(0, flat).view(3, -1) for src in srcs]


def _rasterize_torch(verts: Tensor, faces: Tensor, K: Tensor, H: int, W: int, near: float, cull: bool) -> Fragments:
    dev, dt = verts.device, verts.dtype
    B, V = verts.shape[:2]
    F = faces.shape[0]
    HW = H * W

    # ---- primitives: unclipped faces + clipped sub-triangles -------------------------------------------------
    vz = verts[..., 2]
    all_front = bool((vz >= near).all())
    if all_front:
        fb = torch.arange(B, device=dev).repeat_interleave(F)
        ff = torch.arange(F, device=dev).repeat(B)
    else:
        n_in = (vz[:, faces] >= near).sum(-1)  # (B, F)
        fb, ff = (n_in == 3).nonzero(as_tuple=True)
    vx, vy = _project(verts, K)  # meaningless for vertices with z <= 0, which are never read
    if all_front and B == 1:
        px, py, pz = _gather_corners([vx, vy, vz], None, faces.T)
    else:
        px, py, pz = _gather_corners([vx, vy, vz], fb, faces.index_select(0, ff).T)
    pw = 1.0 / pz
    n_full = fb.numel()
    pb, pf = fb, ff
    cM = verts.new_zeros(0, 3, 3)
    if not all_front:
        cb, cf, cX, cM = _clip_near(verts, faces, near, n_in)
        if cb.numel():
            cx, cy = _project(cX, K.index_select(0, cb))  # (C, 3) each
            px = torch.cat([px, cx.T], dim=1)
            py = torch.cat([py, cy.T], dim=1)
            pw = torch.cat([pw, 1.0 / cX[..., 2].T], dim=1)
            pb = torch.cat([fb, cb])
            pf = torch.cat([ff, cf])
    P = pb.numel()

    face_index = torch.full((B * HW,), -1, dtype=torch.long, device=dev)
    bary_out = torch.zeros(B * HW, 3, dtype=dt, device=dev)
    depth_out = torch.zeros(B * HW, dtype=dt, device=dev)
    if P == 0:
        return _pack(face_index, bary_out, depth_out, B, H, W)
    if P >= 2**31:
        raise ValueError(f"too many primitives for one rasterize call ({P}); split the batch")

    area2 = (px[1] - px[0]) * (py[2] - py[0]) - (px[2] - px[0]) * (py[1] - py[0])
    keep = torch.isfinite(area2) & (area2 != 0)
    if cull:
        keep &= area2 < 0
    # pixel-centre bounding boxes, clipped to the image
    bx0 = torch.ceil(px.amin(0)).clamp_(0, W)
    bx1 = torch.floor(px.amax(0)).clamp_(-1, W - 1)
    by0 = torch.ceil(py.amin(0)).clamp_(0, H)
    by1 = torch.floor(py.amax(0)).clamp_(-1, H - 1)
    nx = (bx1 - bx0 + 1).clamp_(min=0)
    ny = (by1 - by0 + 1).clamp_(min=0)
    nx = torch.where(keep & (ny > 0), nx, torch.zeros_like(nx))
    side = torch.where(nx > 0, torch.maximum(nx, ny), torch.zeros_like(nx)).long()  # 0 = nothing to scan

    tabT = torch.cat([_edge_rows(px, py, area2), pw, torch.stack([bx0, by0, nx])])  # (15, P)
    tab = tabT.T.contiguous()  # (P, 15)
    pixbase = pb * HW
    zbuf = torch.full((B * HW,), _INT64_MAX, dtype=torch.long, device=dev)

    # small boxes: dense evaluation in square buckets of equal side (no per-candidate gathers)
    dense_max = min(_DENSE_MAX_SIDE, H, W)
    present = torch.bincount(side, minlength=dense_max + 1)[1 : dense_max + 1].nonzero().squeeze(1) + 1
    for s in present.tolist():
        group = (side == s).nonzero().squeeze(1)
        step = max(1, _CHUNK // (s * s))
        for g0 in range(0, group.numel(), step):
            _scan_dense(group[g0 : g0 + step], s, tabT, pixbase, H, W, zbuf)
    # large boxes: exact enumeration of the box pixels, chunked by candidate count
    big = (side > dense_max).nonzero().squeeze(1)
    if big.numel():
        bcounts = (nx * ny).long().index_select(0, big)
        ends = bcounts.cumsum(0)
        total = int(ends[-1])
        cuts = [0, big.numel()]
        if total > _CHUNK:
            more = torch.searchsorted(ends, torch.arange(_CHUNK, total, _CHUNK, device=dev), right=True)
            cuts = sorted(set(cuts + more.tolist()))
        for s0, s1 in zip(cuts[:-1], cuts[1:], strict=True):
            _scan_sparse(big[s0:s1], bcounts[s0:s1], tabT, pixbase, W, zbuf)

    # ---- winners: perspective-correct barycentrics and depth -------------------------------------------------
    pix = (zbuf != _INT64_MAX).nonzero().squeeze(1)
    if pix.numel() == 0:
        return _pack(face_index, bary_out, depth_out, B, H, W)
    prim = zbuf.index_select(0, pix) & _LOW32
    local = pix % HW
    qy = torch.div(local, W, rounding_mode="floor")
    qx = (local - qy * W).to(dt)
    qy = qy.to(dt)
    t = tab.index_select(0, prim)
    e = torch.stack([_edge(t[:, 3 * k], t[:, 3 * k + 1], t[:, 3 * k + 2], qx, qy) for k in range(3)], dim=1)
    s = e * t[:, _C_W : _C_W + 3]  # s_k / z_k up to a common factor
    s_sum = s.sum(1, keepdim=True)
    bary = s / s_sum
    depth = e.sum(1) / s_sum[:, 0]  # = sum_k bary_k z_k (1/z is affine in screen space)
    if n_full < P:
        clipped = prim >= n_full
        if bool(clipped.any()):
            ci = clipped.nonzero().squeeze(1)
            bary[ci] = torch.einsum("nk,nkj->nj", bary[ci], cM[prim[ci] - n_full])
    face_index.index_copy_(0, pix, pf.index_select(0, prim))
    bary_out.index_copy_(0, pix, bary)
    depth_out.index_copy_(0, pix, depth)
    return _pack(face_index, bary_out, depth_out, B, H, W)


def _scan_dense(prims: Tensor, s: int, tabT: Tensor, pixbase: Tensor, H: int, W: int, zbuf: Tensor) -> None:
    """Coverage + depth test of primitives whose pixel box fits in ``s x s`` (``s <= min(H, W)``); updates ``zbuf``.

    Evaluates the edge functions on a dense (s*s, G) grid (window lane x primitive) by broadcasting per-primitive
    rows against the window offsets, then compacts the covered lanes. Primitives are the inner, contiguous dimension
    so every elementwise kernel runs long vectorised loops. The window starts at the box origin, shifted back where
    needed so that it lies inside the image: every lane is a real pixel, tested exactly like any other.
    """
    dev, dt = tabT.device, tabT.dtype
    t = tabT.index_select(1, prims)  # (15, G)
    G = prims.numel()
    x0 = torch.clamp(t[_C_X0], max=float(W - s))  # (G,) window origin
    y0 = torch.clamp(t[_C_Y0], max=float(H - s))
    off = torch.arange(s * s, device=dev)
    oy_l = torch.div(off, s, rounding_mode="floor")
    ox_l = off - oy_l * s
    qx = x0 + ox_l.to(dt)[:, None]  # (s*s, G) exact integers
    qy = y0 + oy_l.to(dt)[:, None]
    e = [_edge(t[3 * k], t[3 * k + 1], t[3 * k + 2], qx, qy) for k in range(3)]
    cov = torch.minimum(torch.minimum(e[0], e[1]), e[2]) >= 0
    idx = cov.view(-1).nonzero().squeeze(1)
    if idx.numel() == 0:
        return
    lane = torch.div(idx, G, rounding_mode="floor")
    g = idx - lane * G
    e0, e1, e2 = (ek.view(-1).index_select(0, idx) for ek in e)
    w0, w1, w2 = (t[_C_W + k].index_select(0, g) for k in range(3))
    z = (e0 + e1 + e2) / (e0 * w0 + e1 * w1 + e2 * w2)
    pid = prims.index_select(0, g)
    rowbase = pixbase.index_select(0, prims) + (y0 * W + x0).long()  # (G,)
    pix = rowbase.index_select(0, g) + (oy_l * W + ox_l).index_select(0, lane)
    key = (z.float().view(torch.int32).long() << 32) | pid
    ok = z > 0  # excludes 0/0 at (numerically) degenerate corners
    if not bool(ok.all()):
        key, pix = key[ok], pix[ok]
    zbuf.scatter_reduce_(0, pix, key, reduce="amin")


def _scan_sparse(prims: Tensor, counts: Tensor, tabT: Tensor, pixbase: Tensor, W: int, zbuf: Tensor) -> None:
    """Coverage + depth test of every pixel in the boxes of ``prims`` (exact enumeration); updates ``zbuf``.

    Boxes are expanded into rows, rows into pixels (two ``repeat_interleave``), so no integer division is needed.
    """
    dev, dt = tabT.device, tabT.dtype
    G = prims.numel()
    t = tabT.index_select(1, prims)  # (15, G)
    nx = t[_C_NX].long()
    ny = torch.div(counts, nx, rounding_mode="floor")
    rp = torch.repeat_interleave(torch.arange(G, device=dev), ny)  # box of each row
    R = rp.numel()
    row_y = t[_C_Y0].index_select(0, rp) + (torch.arange(R, device=dev) - (ny.cumsum(0) - ny).index_select(0, rp)).to(
        dt
    )
    nxr = nx.index_select(0, rp)
    n = int(counts.sum())
    cr = torch.repeat_interleave(torch.arange(R, device=dev), nxr, output_size=n)  # row of each candidate
    ox = torch.arange(n, device=dev) - (nxr.cumsum(0) - nxr).index_select(0, cr)
    g = rp.index_select(0, cr)
    qx = t[_C_X0].index_select(0, g) + ox.to(dt)
    qy = row_y.index_select(0, cr)
    e = [
        _edge(t[3 * k].index_select(0, g), t[3 * k + 1].index_select(0, g), t[3 * k + 2].index_select(0, g), qx, qy)
        for k in range(3)
    ]
    cov = torch.minimum(torch.minimum(e[0], e[1]), e[2]) >= 0
    idx = cov.nonzero().squeeze(1)
    if idx.numel() == 0:
        return
    e0, e1, e2 = (ek.index_select(0, idx) for ek in e)
    gi = g.index_select(0, idx)
    w0, w1, w2 = (t[_C_W + k].index_select(0, gi) for k in range(3))
    z = (e0 + e1 + e2) / (e0 * w0 + e1 * w1 + e2 * w2)
    pid = prims.index_select(0, gi)
    pix = pixbase.index_select(0, pid) + (qy.index_select(0, idx) * W + qx.index_select(0, idx)).long()
    key = (z.float().view(torch.int32).long() << 32) | pid
    ok = z > 0
    if not bool(ok.all()):
        key, pix = key[ok], pix[ok]
    zbuf.scatter_reduce_(0, pix, key, reduce="amin")


def _pack(face_index: Tensor, bary: Tensor, depth: Tensor, B: int, H: int, W: int) -> Fragments:
    return Fragments(face_index=face_index.view(B, H, W), barycentric=bary.view(B, H, W, 3), depth=depth.view(B, H, W))


# ----------------------------------------------------------------------------------------------------------------
# optional pytorch3d backend
# ----------------------------------------------------------------------------------------------------------------


def _rasterize_pytorch3d(
    verts: Tensor, faces: Tensor, K: Tensor, H: int, W: int, near: float, cull: bool
) -> Fragments:  # pragma: no cover - exercised only where pytorch3d is installed
    from pytorch3d.renderer.mesh import rasterize_meshes
    from pytorch3d.structures import Meshes

    B = verts.shape[0]
    z = verts[..., 2]
    # project with a safe z (vertices behind the camera are handled by pytorch3d's z clipping; their x, y only
    # matter through the clipping interpolation, which pytorch3d does in its own screen space)
    zs = torch.where(z.abs() < 1e-12, torch.full_like(z, 1e-12), z)
    x, y = _project(torch.stack([verts[..., 0], verts[..., 1], zs], -1), K)
    # pixel -> pytorch3d NDC (+x left, +y up; the shorter side spans [-1, 1]; pixel centres at (2i+1)/S - 1)
    rx = 2.0 * max(W / H, 1.0)
    ry = 2.0 * max(H / W, 1.0)
    xn = -rx / 2 + (rx * (W - 1 - x) + rx / 2) / W
    yn = -ry / 2 + (ry * (H - 1 - y) + ry / 2) / H
    vndc = torch.stack([xn, yn, z], -1).float()
    face_lists, maps = [], []
    for b in range(B):
        if cull:
            X = verts[b][faces]
            n = torch.linalg.cross(X[:, 1] - X[:, 0], X[:, 2] - X[:, 0], dim=-1)
            front = (n * X[:, 0]).sum(-1) < 0
            keep = front.nonzero().squeeze(1)
        else:
            keep = torch.arange(faces.shape[0], device=verts.device)
        face_lists.append(faces[keep])
        maps.append(keep)
    meshes = Meshes(verts=list(vndc), faces=face_lists)
    p2f, zbuf, bary, _ = rasterize_meshes(
        meshes,
        image_size=(H, W),
        blur_radius=0.0,
        faces_per_pixel=1,
        perspective_correct=True,
        z_clip_value=near,
        cull_backfaces=False,
        max_faces_per_bin=max(int(faces.shape[0]), 1),
    )
    p2f = p2f[..., 0]
    first = meshes.mesh_to_faces_packed_first_idx()
    face_index = torch.full_like(p2f, -1)
    for b in range(B):
        m = p2f[b] >= 0
        face_index[b][m] = maps[b][p2f[b][m] - first[b]]
    fg = face_index >= 0
    bary = torch.where(fg[..., None], bary[..., 0, :], 0).to(verts.dtype)
    tri = faces[face_index.clamp(min=0)]  # (B, H, W, 3)
    zc = torch.gather(z, 1, tri.reshape(B, -1)).view(B, H, W, 3)
    depth = torch.where(fg, (bary * zc).sum(-1), 0)
    return Fragments(face_index=face_index, barycentric=bary, depth=depth)
