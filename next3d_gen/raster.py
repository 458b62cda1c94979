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
3. Candidate enumeration along exact row spans, fully vectorised. Each primitive's box is split into pixel rows;
   for every (primitive, row) the interval of pixel centres that can pass the edge test (step 4) is computed from
   the edge coefficients, widened by a bound on the rounding error of the edge formula (relative ``64 eps`` of the
   edge terms), so it contains every centre the test accepts and rarely more. Only these candidates are enumerated
   (segment ids by a count of segment starts and a cumulative sum) and tested exactly, so elongated or thin
   triangles cost no more than their covered pixels. The work runs in chunks of about ``2**19`` box pixels.
4. Coverage by three 2D edge functions ``e_k(q) = (dx_k * qy - dy_k * qx) + c_k``. Each edge's coefficients are
   computed from its endpoints in a canonical order (lexicographic on the projected ``(x, y)``) and then
   sign-flipped, an exact operation, so the two triangles that share an edge compute exactly opposite values at
   every pixel centre: a mesh without T-junctions is rasterized without cracks, whatever the rounding.
5. Depth ``z`` from the screen-space barycentrics ``s_k`` and ``1/z`` interpolation (``1/z = sum_k s_k / z_k``), then
   a z-buffer as one ``scatter_reduce(..., "amin")`` over int64 keys ``(float32 bits of z) << 32 | primitive id``.
   Positive float32 bit patterns order like the floats, so the minimum key is the nearest primitive; equal depths go
   to the lower primitive id (lower face index for unclipped faces). Front-facing primitives are scanned first; a
   back-facing primitive is then skipped when a hierarchical z test proves it hidden: its nearest vertex depth
   (minus a margin far above rounding) exceeds the largest buffered depth over its whole box, read from 2 x 2-tile
   maxima of 8- and 32-pixel tiles (background counts as infinitely deep). Its depth at any covered centre is a
   weighted mean of its vertex depths, so it could never win: the result is identical, only faster (for a closed
   mesh most back faces are skipped).
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

Complexity: ``O(B*V + B*F + R + N_c + B*H*W)`` time, where ``R`` is the number of scanned (primitive, row) pairs (the
sum of the box heights) and ``N_c`` the number of candidates, about the number of covered (primitive, pixel) pairs
(plus at most a pixel per row where a span bound falls within rounding of a pixel centre). For a fixed mesh ``N_c``
grows with the image area and ``R`` with its height. Memory ``O(B*H*W + P + 2**19 + largest box)``, P = number of
primitives. Everything is tensor code (about 60 kernel launches per chunk, all on contiguous 1D tensors), so it runs
unchanged on CUDA tensors. The results are bit-identical to the earlier dense-window implementation.

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

_CHUNK = 1 << 19  # box pixels (an upper bound of the candidates) scanned per chunk
_DENSE_MAX_SIDE = 16  # unused since the span scan replaced the dense windows; kept for code that tunes it
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


# Per-primitive data are kept as rows of (k, P) tensors: ``coef`` (9, P) = (c_k, dx_k, dy_k) for k = 0..2 with
# e_k(q) = (dx_k * qy - dy_k * qx) + c_k, and ``pw`` (3, P) = 1 / z_k.


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
    ny = (by1 - by0 + 1).clamp_(min=0)
    live = keep & (bx1 >= bx0) & (ny > 0)

    coef = _edge_rows(px, py, area2)  # (9, P)
    pixbase = pb * HW
    zbuf = torch.full((B * HW,), _INT64_MAX, dtype=torch.long, device=dev)
    scan = _Scan(coef, pw, bx0, bx1, by0, ny, pixbase, H, W, zbuf)
    # front-facing primitives first; then the back-facing ones that the z-buffer cannot already prove hidden
    scan.run((live & (area2 < 0)).nonzero().squeeze(1))
    if not cull:
        back = (live & (area2 > 0)).nonzero().squeeze(1)
        if back.numel():
            scan.run(_occlusion_cull(back, pw, bx0, bx1, by0, by1, pb, zbuf, B, H, W))
    # ---- winners: perspective-correct barycentrics and depth -------------------------------------------------
    pix = (zbuf != _INT64_MAX).nonzero().squeeze(1)
    if pix.numel() == 0:
        return _pack(face_index, bary_out, depth_out, B, H, W)
    prim = zbuf.index_select(0, pix) & _LOW32
    local = (pix if B == 1 else pix % HW).double()
    qy = ((local + 0.5) * (1.0 / W)).floor_()  # exact row (the fraction is >= 0.5 / W away from an integer)
    qx = (local - qy * W).to(dt)
    qy = qy.to(dt)
    e = [
        _edge(coef[3 * k].index_select(0, prim), coef[3 * k + 1].index_select(0, prim),
              coef[3 * k + 2].index_select(0, prim), qx, qy)
        for k in range(3)
    ]  # fmt: skip
    s = [e[k] * pw[k].index_select(0, prim) for k in range(3)]  # s_k / z_k up to a common factor
    s_sum = s[0] + s[1] + s[2]
    bary = torch.stack([s[0] / s_sum, s[1] / s_sum, s[2] / s_sum], dim=1)
    depth = (e[0] + e[1] + e[2]) / s_sum  # = sum_k bary_k z_k (1/z is affine in screen space)
    if n_full < P:
        clipped = prim >= n_full
        if bool(clipped.any()):
            ci = clipped.nonzero().squeeze(1)
            bary[ci] = torch.einsum("nk,nkj->nj", bary[ci], cM[prim[ci] - n_full])
    face_index.scatter_(0, pix, pf.index_select(0, prim))
    bary_out.index_copy_(0, pix, bary)
    depth_out.scatter_(0, pix, depth)
    return _pack(face_index, bary_out, depth_out, B, H, W)


class _Scan:
    """Coverage + depth test of primitives along exact per-row pixel spans; updates the z-buffer in place.

    For every (primitive, pixel row) the range of pixel centres that can pass the edge test is computed from the
    edge coefficients with a small safety margin (``_span_margin``), so it is a superset of the covered centres,
    almost always exactly them. Only these candidates are enumerated and each is tested with the canonical edge
    formula of :func:`_edge` (bit-identical edge values on every path). The covered candidates' depths enter the
    z-buffer as int64 keys ``(float32 bits of z) << 32 | primitive id`` through one ``scatter_reduce(..., "amin")``
    per chunk. All per-element work is on contiguous 1D tensors (gathers with ``index_select``).

    Span bounds: a centre (qx, qy) of row qy can pass edge k only if ``dy_k * qx <= T_k(qy)`` with
    ``T_k(y) = (dx_k + m1_k) * y + (c_k + m0_k)``, which adds to ``dx_k * y + c_k`` a bound on the rounding error of
    the float edge formula (``0 <= qx < W``, ``0 <= qy``). That is an upper bound ``alpha_k * y + beta_k`` on qx for
    ``dy_k > 0`` and a lower bound for ``dy_k < 0``. A triangle has one edge on one side and two on the other (or
    one each and a horizontal edge); per primitive the bounds are stored as slot 0 = the single side's edge, slots
    1, 2 = the other side's edges multiplied by ``sigma = +-1`` (the side), so that row bound = ``sigma *
    min(slot 1, slot 2)``. Missing or unusable edges (horizontal, or a bound too large to evaluate) are replaced by
    the pixel box's edge one pixel out, so spans always stay within the box (widened by one pixel).
    """

    def __init__(
        self, coef: Tensor, pw: Tensor, bx0: Tensor, bx1: Tensor, by0: Tensor, ny: Tensor, pixbase: Tensor,
        H: int, W: int, zbuf: Tensor,
    ) -> None:  # fmt: skip
        dt = coef.dtype
        self.c, self.dx, self.dy = coef[0::3], coef[1::3], coef[2::3]  # (3, P) each
        self.w = pw
        c, dx, dy = self.c, self.dx, self.dy
        rel, tiny = _span_margin(dt)
        limit = torch.finfo(dt).max / (8.0 * (H + W + 1))  # |alpha| * y + |beta| stays finite
        alpha = (dx + dx.abs() * rel) / dy
        beta = (c + ((c.abs() + dy.abs() * W) * rel + tiny)) / dy
        usable = (alpha.abs() <= limit) & (beta.abs() <= limit)
        up = (usable & (dy > 0)).to(dt)
        lo = (usable & (dy < 0)).to(dt)
        use = up + lo
        alpha = torch.nan_to_num(alpha) * use  # exact zeros where unusable
        beta = torch.nan_to_num(beta) * use
        sig = 1.0 - 2.0 * (lo.sum(0) > up.sum(0)).to(dt)  # (P,) side of the edge pair: +1 upper, -1 lower
        kind = up - lo  # (3, P) +1 upper bound, -1 lower bound, 0 none
        single = (kind == -sig).to(dt)  # at most one per primitive
        pair = (kind == sig).to(dt)  # at most two
        first = pair * (pair.cumsum(0) == 1).to(dt)
        second = pair - first
        has_s, has_1, has_2 = single.sum(0), first.sum(0), second.sum(0)
        # box edge one pixel out, as a bound of the single side (-sig) and (sigma-multiplied) of the pair side
        out_s = torch.where(sig > 0, bx0 - 1, bx1 + 1)
        out_p = torch.where(sig > 0, bx1 + 1, 1 - bx0)
        self.span = torch.stack(
            [
                (alpha * single).sum(0),
                (beta * single).sum(0) + (1 - has_s) * out_s,
                (alpha * first).sum(0) * sig,
                (beta * first).sum(0) * sig + (1 - has_1) * out_p,
                (alpha * second).sum(0) * sig,
                (beta * second).sum(0) * sig + (1 - has_2) * out_p,
                sig,
            ]
        )  # (7, P)
        self.ny = ny.long()
        self.area = ((bx1 - bx0 + 1).clamp(min=0) * ny).long()
        self.by0 = by0.long()
        self.rowpix = pixbase + self.by0 * W  # (P,) pixel index of the box's first row, column 0
        self.W = W
        self.zbuf = zbuf

    def run(self, prims: Tensor) -> None:
        """Scan ``prims`` ((G,) int64 primitive ids with a non-empty box), in chunks of about ``_CHUNK`` box pixels."""
        n = prims.numel()
        if n == 0:
            return
        ends = self.area.index_select(0, prims).cumsum(0)
        total = int(ends[-1])
        cuts = [0, n]
        if total > _CHUNK:
            more = torch.searchsorted(ends, torch.arange(_CHUNK, total, _CHUNK, device=prims.device), right=True)
            cuts = sorted(set(cuts + more.tolist()))
        for s0, s1 in zip(cuts[:-1], cuts[1:], strict=True):
            self._chunk(prims[s0:s1])

    def _chunk(self, prims: Tensor) -> None:
        dev, W = prims.device, self.W
        dt = self.dx.dtype
        # rows: (primitive, y) pairs, primitive-major
        nyc = self.ny.index_select(0, prims)
        rend = nyc.cumsum(0)
        R = int(rend[-1])
        rstart = rend - nyc
        rp = _segment_ids(rstart, R)  # (R,) local primitive of each row
        prow = prims.index_select(0, rp)
        roff = torch.arange(R, device=dev) - rstart.index_select(0, rp)  # row within the box
        y = self.by0.index_select(0, prow) + roff
        yf = y.to(dt)  # exact integers
        sp = [self.span[i].index_select(0, prow) for i in range(7)]
        t0 = torch.addcmul(sp[1], sp[0], yf)
        tp = torch.minimum(torch.addcmul(sp[3], sp[2], yf), torch.addcmul(sp[5], sp[4], yf)).mul_(sp[6])
        xl = torch.minimum(t0, tp).ceil_().clamp_(min=0)
        cnt = (torch.maximum(t0, tp).floor_().clamp_(max=W - 1) - xl + 1).clamp_(min=0).long()
        cend = cnt.cumsum(0)
        N = int(cend[-1])
        if N == 0:
            return
        cq = cend - cnt - xl.long()  # qx = n - cq[row]
        cpix = self.rowpix.index_select(0, prow) + roff * W - cq  # pixel = n + cpix[row]
        # candidates: the pixels of the spans
        cr = _segment_ids(cend - cnt, N)
        n = torch.arange(N, device=dev)
        pix = n + cpix.index_select(0, cr)
        qx = (n - cq.index_select(0, cr)).to(dt)
        qy = yf.index_select(0, cr)
        cp = prow.index_select(0, cr)
        e = [
            _edge(self.c[k].index_select(0, cp), self.dx[k].index_select(0, cp), self.dy[k].index_select(0, cp), qx, qy)
            for k in range(3)
        ]
        w0, w1, w2 = (self.w[k].index_select(0, cp) for k in range(3))
        z = (e[0] + e[1] + e[2]) / (e[0] * w0 + e[1] * w1 + e[2] * w2)
        # covered (all edge values >= 0) with a positive depth (excludes 0/0 at numerically degenerate corners)
        bad = (torch.minimum(torch.minimum(e[0], e[1]), e[2]) < 0) | ~(z > 0)
        # rejected candidates get the empty key (an OR with it would turn a negative z's key into -1, a winner)
        key = torch.where(bad, _INT64_MAX, (z.float().view(torch.int32).long() << 32) | cp)
        self.zbuf.scatter_reduce_(0, pix, key, reduce="amin")


def _segment_ids(starts: Tensor, total: int) -> Tensor:
    """(total,) int64 segment index of each position for segments beginning at ``starts`` (sorted, (S,) int64).

    Equivalent to ``repeat_interleave(arange(S), lengths)`` (empty segments allowed), via a count of segment starts
    and a cumulative sum, which is cheaper on CPU.
    """
    marks = torch.zeros(total + 1, dtype=torch.long, device=starts.device)
    marks.scatter_add_(0, starts, torch.ones_like(starts))
    return marks[:total].cumsum(0) - 1


def _span_margin(dt: torch.dtype) -> tuple[float, float]:
    """(relative, absolute) error margin of the span bounds for edge coefficients of dtype ``dt``.

    The float edge formula ``(dx * qy - dy * qx) + c`` differs from its exact value by at most ``3.01 eps / 2``
    times ``|dx qy| + |dy qx| + |c|`` (three roundings) plus underflow; evaluating the bound ``alpha * y + beta``
    adds a few roundings more of the same scale. ``64 eps`` covers both with a wide safety factor.
    """
    fi = torch.finfo(dt)
    return 64.0 * fi.eps, 64.0 * fi.tiny


def _occlusion_cull(
    prims: Tensor,
    pw: Tensor,
    bx0: Tensor,
    bx1: Tensor,
    by0: Tensor,
    by1: Tensor,
    pb: Tensor,
    zbuf: Tensor,
    B: int,
    H: int,
    W: int,
) -> Tensor:
    """Drop the primitives that the current z-buffer proves hidden (hierarchical z test); exact.

    A primitive's depth at any covered pixel centre is a weighted mean of its vertex depths (weights = edge values
    >= 0), so it is at least its nearest vertex depth up to a few roundings. If that nearest depth (minus a margin
    much larger than the rounding) exceeds the largest key depth over every pixel of its box, none of its pixels
    can win the z-test, now or later (the buffer only decreases). The largest depth over a box comes from a tile
    pyramid: tiles of ``t x t`` pixels (t = 8, 32); a box that spans at most 2 x 2 tiles of some level reads one
    precomputed 2 x 2-tile maximum. Background pixels hold the largest key, so boxes touching them are kept.

    Returns:
        (G',) int64 the primitives of ``prims`` that may be visible, in order.
    """
    eps = max(64.0 * torch.finfo(pw.dtype).eps, 1e-5)
    wmax = pw.index_select(1, prims).amax(0)
    zlow = ((1.0 - eps) / wmax).float().view(torch.int32).long()  # (G,) float32 bits, order like the depths
    hz = zbuf.view(B, H, W) >> 32  # (B, H, W) float32 bits of the depth; background: 0x7FFFFFFF (largest)
    x0 = bx0.index_select(0, prims).long()
    x1 = bx1.index_select(0, prims).long()
    y0 = by0.index_select(0, prims).long()
    y1 = by1.index_select(0, prims).long()
    b = pb.index_select(0, prims)
    bound = torch.full_like(zlow, int(_LOW32 >> 1))
    for t in (32, 8):
        Ht, Wt = -(-H // t), -(-W // t)
        pad = hz.new_full((B, Ht * t + t, Wt * t + t), int(_LOW32 >> 1))
        pad[:, :H, :W] = hz
        tm = pad.view(B, Ht + 1, t, Wt + 1, t).amax(dim=(2, 4))  # (B, Ht + 1, Wt + 1) tile maxima, padded
        tm2 = torch.maximum(tm[:, :-1, :-1], tm[:, 1:, :-1])  # maxima over 2 x 2 tiles
        tm2 = torch.maximum(tm2, torch.maximum(tm[:, :-1, 1:], tm[:, 1:, 1:]))
        tx0, ty0 = torch.div(x0, t, rounding_mode="floor"), torch.div(y0, t, rounding_mode="floor")
        fits = torch.div(x1, t, rounding_mode="floor") - tx0 <= 1
        fits &= torch.div(y1, t, rounding_mode="floor") - ty0 <= 1
        val = tm2.reshape(-1).index_select(0, (b * Ht + ty0) * Wt + tx0)
        bound = torch.where(fits, val, bound)
    return prims[zlow <= bound]


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
