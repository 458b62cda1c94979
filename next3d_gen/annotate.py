"""All per-view labels from one rasterization: segmentation, depth, normals, UVs, 68 landmarks and a bounding box.

Conventions (ARCHITECTURE.md section 3): camera frame OpenCV (x right, y down, z forward), metres; pixel coordinates
with integer values at pixel centres (an image spans [-0.5, W-0.5] x [-0.5, H-0.5]); depth is camera z, 0 on
background. Every per-pixel label is gathered through the rasterizer's face index and perspective-correct barycentric
weights, once per foreground pixel, so all labels of a view agree with each other and with the depth buffer.

Landmark visibility is a depth test against the same buffer (see :func:`landmark_visibility`): a landmark counts as
visible when it is in the image and at most ``visibility_tolerance`` (default 5 mm) behind the deepest of the 2 x 2
pixel centres around its projection, background counting as infinitely deep.

Typical use::

    fragments, ann = render_labels(out.vertices, layer.faces, K, cam2world, 256, 256, out.landmarks, model)
    ann.seg  # (B, 256, 256) uint8 class ids of next3d_gen.labels.SYNTH
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from torch import Tensor

from next3d_gen import camera
from next3d_gen.flame import contour_lines
from next3d_gen.raster import Fragments, rasterize

if TYPE_CHECKING:
    from next3d_gen.flame import FlameModel

DEFAULT_VISIBILITY_TOLERANCE = 0.005
"""Metres a landmark may lie behind the depth buffer and still count as visible (5 mm)."""


class FragmentsLike(Protocol):
    """What :func:`annotate` reads from a rasterization (``next3d_gen.raster.Fragments`` satisfies it).

    Attributes:
        face_index: (B, H, W) int64 index into ``faces`` of the surface seen at each pixel centre, -1 = background.
        barycentric: (B, H, W, 3) float perspective-correct weights of the face's three vertices (sum 1).
        depth: (B, H, W) float camera z in metres, 0 on background.
    """

    face_index: Tensor
    barycentric: Tensor
    depth: Tensor


@dataclass
class Annotations:
    """Labels of a batch of B views rendered at H x W pixels. All tensors live on the input's device.

    Attributes:
        seg: (B, H, W) uint8 class ids (``face_labels[face]``, next3d_gen.labels.SYNTH for the head models);
            0 on background; 1 on every foreground pixel when no face labels were given.
        mask: (B, H, W) bool foreground (the head covers the pixel centre).
        depth: (B, H, W) float32 camera z in metres; 0 on background.
        normal: (B, H, W, 3) float32 camera-space (OpenCV) unit normals, interpolated from area-weighted vertex
            normals and oriented towards the camera: ``dot(normal, p) <= 0`` where ``p`` is the surface point seen
            at the pixel (the viewing ray); for a camera looking straight at the surface this means ``n_z < 0``.
            0 on background.
        uv: (B, H, W, 2) float32 template UV coordinates in [0, 1] (OBJ convention, v up); -1 on background and
            everywhere when the model has no UVs.
        landmarks_2d: (B, 68, 2) float32 projected landmarks (x, y), pixels, OpenCV pixel-centre convention
            (may lie outside the image).
        landmarks_3d: (B, 68, 3) float32 landmarks in the camera frame, metres.
        landmarks_visible: (B, 68) bool: in front of the camera, inside the image ([-0.5, W-0.5] x [-0.5, H-0.5])
            and not hidden by the head itself (see :func:`landmark_visibility`).
        bbox: (B, 4) float32 ``x0, y0, x1, y1`` of the foreground mask in pixels, pixel-edge convention
            (``x0 = min column - 0.5``, ``x1 = max column + 0.5``, same for rows), so a box spans whole pixels;
            all four values are 0 (an empty box, ``x1 <= x0``) when the view has no foreground.
    """

    seg: Tensor
    mask: Tensor
    depth: Tensor
    normal: Tensor
    uv: Tensor
    landmarks_2d: Tensor
    landmarks_3d: Tensor
    landmarks_visible: Tensor
    bbox: Tensor

    @property
    def batch_size(self) -> int:
        return int(self.seg.shape[0])

    def index(self, i: int) -> Annotations:
        """The annotations of view ``i`` alone, with batch size 1 (tensors are views, not copies)."""
        return Annotations(**{f.name: getattr(self, f.name)[i : i + 1] for f in fields(self)})

    def numpy(self, i: int) -> dict[str, np.ndarray]:
        """View ``i`` as numpy arrays without the batch axis, keyed by field name (the HDF5 dataset names)."""
        return {f.name: getattr(self, f.name)[i].detach().cpu().numpy() for f in fields(self)}


def vertex_normals(vertices: Tensor, faces: Tensor, eps: float = 1e-12) -> Tensor:
    """Area-weighted unit vertex normals.

    Each face adds its unnormalised normal ``cross(v1 - v0, v2 - v0)`` (length = twice its area) to its three
    vertices; the sums are normalised. Counter-clockwise faces (seen from outside) give outward normals.

    Args:
        vertices: (B, V, 3) float positions in any frame.
        faces: (F, 3) int64 vertex indices.
        eps: norms below this give a zero normal (vertices used by no face or only by degenerate faces).

    Returns:
        (B, V, 3) unit normals in the frame of ``vertices``, same dtype; zero for vertices used by no face and
        where the face normals cancel (sum shorter than 1e-4 of the sum of their lengths, e.g. a two-sided sheet).
    """
    return _face_and_vertex_normals(vertices, faces, eps)[1]


def _face_and_vertex_normals(vertices: Tensor, faces: Tensor, eps: float = 1e-12) -> tuple[Tensor, Tensor, Tensor]:
    """(B, F, 3) unnormalised face normals, (B, V, 3) unit area-weighted vertex normals, (B, F) face corner 0 dot
    face normal (the sign tells which side of the face a camera at the origin sees)."""
    faces = faces.to(device=vertices.device, dtype=torch.long)
    B, V, _ = vertices.shape
    F = faces.shape[0]
    flat = vertices.reshape(B * V, 3)
    idx = faces.T.reshape(1, 3 * F)  # corner-major: all first corners, then all second, then all third
    if B > 1:
        idx = idx + (torch.arange(B, device=faces.device) * V)[:, None]
    tri = flat.index_select(0, idx.reshape(-1)).view(B, 3, F, 3)
    face_n = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)  # (B, F, 3), |n| = 2 area
    # Accumulate [n, |n|]: a sum much shorter than its terms' lengths has cancelled (e.g. two-sided sheets) and is
    # set to zero rather than normalised rounding noise.
    src = torch.cat([face_n, face_n.norm(dim=-1, keepdim=True)], dim=-1).reshape(B * F, 4)
    acc = torch.zeros(B * V, 4, dtype=vertices.dtype, device=vertices.device)
    idx = idx.view(B, 3, F)
    for k in range(3):
        acc.index_add_(0, idx[:, k].reshape(-1), src)
    vec = acc[:, :3]
    norm = vec.norm(dim=-1, keepdim=True)
    keep = norm > torch.maximum(acc[:, 3:] * 1e-4, torch.full_like(norm, eps))
    vn = torch.where(keep, vec / norm.clamp_min(eps), torch.zeros_like(vec)).view(B, V, 3)
    return face_n, vn, (face_n * tri[:, 0]).sum(dim=-1)


def _as_tensor(x: Tensor | np.ndarray | None, device: torch.device, dtype: torch.dtype | None = None) -> Tensor | None:
    if x is None:
        return None
    return torch.as_tensor(x, device=device, dtype=dtype)


def mask_bbox(mask: Tensor) -> Tensor:
    """Bounding boxes of boolean masks.

    Args:
        mask: (B, H, W) bool.

    Returns:
        (B, 4) float32 ``x0, y0, x1, y1`` in pixels, pixel-edge convention (``x0 = min column - 0.5``,
        ``x1 = max column + 0.5``); all zeros for an empty mask.
    """
    B, H, W = mask.shape
    cols = mask.any(dim=1)  # (B, W)
    rows = mask.any(dim=2)  # (B, H)
    xs = torch.arange(W, device=mask.device)
    ys = torch.arange(H, device=mask.device)
    x0 = torch.where(cols, xs, W).amin(dim=1)
    x1 = torch.where(cols, xs, -1).amax(dim=1)
    y0 = torch.where(rows, ys, H).amin(dim=1)
    y1 = torch.where(rows, ys, -1).amax(dim=1)
    box = torch.stack([x0 - 0.5, y0 - 0.5, x1 + 0.5, y1 + 0.5], dim=1).to(torch.float32)
    return torch.where(cols.any(dim=1, keepdim=True), box, torch.zeros_like(box))


def _pixels_bbox(pix: Tensor, B: int, H: int, W: int) -> Tensor:
    """:func:`mask_bbox` from the flattened (B*H*W) indices of the foreground pixels (no full-image reductions)."""
    box = torch.zeros(B, 4, dtype=torch.float32, device=pix.device)
    if pix.numel() == 0:
        return box
    col = (pix % W).to(torch.float32)
    row = (torch.div(pix, W, rounding_mode="floor") % H).to(torch.float32)
    if B == 1:
        box[0] = torch.stack([col.min() - 0.5, row.min() - 0.5, col.max() + 0.5, row.max() + 0.5])
        return box
    b = torch.div(pix, H * W, rounding_mode="floor")
    lo = torch.full((B, 2), float("inf"), device=pix.device).scatter_reduce(
        0, b[:, None].expand(-1, 2), torch.stack([col, row], -1), "amin"
    )
    hi = torch.full((B, 2), float("-inf"), device=pix.device).scatter_reduce(
        0, b[:, None].expand(-1, 2), torch.stack([col, row], -1), "amax"
    )
    box = torch.cat([lo - 0.5, hi + 0.5], dim=1)
    return torch.where(torch.isfinite(box), box, torch.zeros_like(box))


def landmark_visibility(
    landmarks_cam: Tensor,
    landmarks_2d: Tensor,
    depth: Tensor,
    mask: Tensor,
    tolerance: float = DEFAULT_VISIBILITY_TOLERANCE,
) -> Tensor:
    """Which landmarks the camera sees.

    A landmark is visible when its camera z is positive, its projection lies inside the image
    ([-0.5, W-0.5] x [-0.5, H-0.5]) and it is not behind the rendered surface: ``z <= d_max + tolerance``, where
    ``d_max`` is the largest depth among the (up to) four pixel centres around the projection (the 2 x 2
    neighbourhood ``floor(x) .. floor(x)+1``, ``floor(y) .. floor(y)+1`` inside the image). A background pixel
    counts as infinitely deep, so a landmark on the silhouette is never hidden by the background next to it, and
    the maximum (not the nearest pixel) keeps points on steep surfaces from being hidden by their own slope.

    Args:
        landmarks_cam: (B, N, 3) camera-frame points, metres.
        landmarks_2d: (B, N, 2) their projections (x, y), pixels.
        depth: (B, H, W) camera z depth buffer, metres. mask: (B, H, W) bool foreground.
        tolerance: metres a landmark may lie behind ``d_max`` (rasterization and interpolation error).

    Returns:
        (B, N) bool.
    """
    B, H, W = depth.shape
    x, y = landmarks_2d[..., 0], landmarks_2d[..., 1]
    z = landmarks_cam[..., 2]
    finite = torch.isfinite(landmarks_2d).all(dim=-1)
    inside = finite & (z > 0) & (x >= -0.5) & (x <= W - 0.5) & (y >= -0.5) & (y <= H - 0.5)
    xs = torch.nan_to_num(x, nan=-2.0).clamp(-2.0, W + 1.0).floor().long()
    ys = torch.nan_to_num(y, nan=-2.0).clamp(-2.0, H + 1.0).floor().long()
    buffer = torch.where(mask, depth, torch.full_like(depth, float("inf"))).reshape(B, H * W)
    d_max = torch.full_like(z, float("-inf"))
    for dy in (0, 1):
        for dx in (0, 1):
            cx, cy = xs + dx, ys + dy
            ok = (cx >= 0) & (cx < W) & (cy >= 0) & (cy < H)
            flat = (cy.clamp(0, H - 1) * W + cx.clamp(0, W - 1)).reshape(B, -1)
            d = torch.gather(buffer, 1, flat).reshape(z.shape).to(z.dtype)
            d_max = torch.maximum(d_max, torch.where(ok, d, torch.full_like(d, float("-inf"))))
    return inside & (z <= d_max + tolerance)


def outline_contour(vertices_cam: Tensor, faces: Tensor, line_faces: Tensor, line_bary: Tensor) -> Tensor:
    """Jaw landmarks on the visible outline of the face, per view ("landmark marching").

    Each landmark has a contour line: M candidate surface points (face index + barycentrics) ordered from the face
    front outwards, crossing where a camera sees the outline of the face. In each view the landmark is the first
    point of its line, walking from the front, where the camera ray grazes the surface: the cosine
    ``g = n . p / |p|`` between the interpolated vertex normal ``n`` and the viewing ray ``p`` (camera at the
    origin) changes from negative (facing the camera) to non-negative; the point is linearly interpolated between
    the two candidates around the change. A line without a change (the whole line faces the camera, e.g. the near
    side of a turned head, or faces away) gives its candidate with the smallest ``|g|`` (the line end where the
    face ends). Occlusion by other parts is left to :func:`landmark_visibility`.

    Args:
        vertices_cam: (B, V, 3) float vertices in the OpenCV camera frame, metres (camera at the origin).
        faces: (F, 3) int64 triangles, counter-clockwise seen from outside.
        line_faces: (C, M) int64 face per candidate. line_bary: (C, M, 3) float barycentrics.

    Returns:
        (B, C, 3) float32 landmarks in the camera frame, metres.
    """
    verts = vertices_cam.to(torch.float32)
    faces = faces.to(device=verts.device, dtype=torch.long)
    vn = _face_and_vertex_normals(verts, faces)[1]
    return _outline_from_normals(verts, vn, faces, line_faces.to(verts.device), line_bary.to(verts))


_WINDOW = 6  # candidates on each side of the normal-based crossing searched for the outline's turning point


def _outline_from_normals(verts: Tensor, vn: Tensor, faces: Tensor, line_faces: Tensor, line_bary: Tensor) -> Tensor:
    """:func:`outline_contour` with the (B, V, 3) unit vertex normals ``vn`` already computed."""
    B = verts.shape[0]
    C, M = line_faces.shape
    corner = faces.index_select(0, line_faces.reshape(-1)).reshape(-1)  # (C*M*3,) vertex ids
    w = line_bary.reshape(1, C, M, 3, 1)
    p = (verts.index_select(1, corner).view(B, C, M, 3, 3) * w).sum(3)  # (B, C, M, 3)
    n = (vn.index_select(1, corner).view(B, C, M, 3, 3) * w).sum(3)
    g = (n * p).sum(-1) / p.norm(dim=-1).clamp_min(1e-9)  # (B, C, M) cosine to the viewing ray
    cross = (g[..., :-1] < 0) & (g[..., 1:] >= 0)  # (B, C, M-1)
    has = cross.any(-1)
    last_cross = (M - 2) - cross.flip(-1).float().argmax(-1)
    first = torch.where(has, last_cross, g.abs().argmin(-1).clamp_max(M - 2))
    g0 = g.gather(-1, first[..., None])[..., 0]
    g1 = g.gather(-1, (first + 1)[..., None])[..., 0]
    t = torch.where(has, g0 / (g0 - g1).clamp_max(-1e-12), torch.zeros_like(g0))  # g0 < 0 <= g1: t in (0, 1]
    # a line without a crossing whose smallest |g| is its last candidate: take that candidate itself
    last = (~has) & (g.abs().argmin(-1) == M - 1)
    t = torch.where(last, torch.ones_like(t), t)[..., None]
    p0 = p.gather(2, first[..., None, None].expand(B, C, 1, 3))[:, :, 0]
    p1 = p.gather(2, (first + 1)[..., None, None].expand(B, C, 1, 3))[:, :, 0]
    out = p0 + t * (p1 - p0)
    # Refine on the surface itself (interpolated normals are only approximately perpendicular to the view at the
    # mesh's silhouette): the image of a surface curve stays inside the outline and touches it where the curve
    # crosses the silhouette, so take the candidate furthest along the outline's normal in the image (the image
    # of the surface normal at the crossing), parabola-refined.
    q = p[..., :2] / p[..., 2:].clamp_min(1e-9)  # (B, C, M, 2) normalised image coordinates
    win = torch.arange(-_WINDOW, _WINDOW + 2, device=p.device)
    idx = (first[..., None] + win).clamp(0, M - 1)  # (B, C, 2 W + 2)
    n0 = n.gather(2, first[..., None, None].expand(B, C, 1, 3))[:, :, 0]
    n1 = n.gather(2, (first + 1)[..., None, None].expand(B, C, 1, 3))[:, :, 0]
    nc = n0 + t * (n1 - n0)
    u = torch.nn.functional.normalize(nc[..., :2] - out[..., :2] / out[..., 2:].clamp_min(1e-9) * nc[..., 2:], dim=-1)
    score = (q.gather(2, idx[..., None].expand(B, C, idx.shape[-1], 2)) * u[:, :, None]).sum(-1)
    k = score.argmax(-1)  # (B, C)
    j = idx.gather(-1, k[..., None])[..., 0]
    s_m = score.gather(-1, (k - 1).clamp_min(0)[..., None])[..., 0]
    s_0 = score.gather(-1, k[..., None])[..., 0]
    s_p = score.gather(-1, (k + 1).clamp_max(idx.shape[-1] - 1)[..., None])[..., 0]
    curv = s_m - 2 * s_0 + s_p
    delta = torch.where(curv < 0, 0.5 * (s_m - s_p) / curv.clamp_max(-1e-20), torch.zeros_like(s_0)).clamp(-0.5, 0.5)
    pj = p.gather(2, j[..., None, None].expand(B, C, 1, 3))[:, :, 0]
    pn = p.gather(2, torch.where(delta >= 0, j + 1, j - 1).clamp(0, M - 1)[..., None, None].expand(B, C, 1, 3))
    refined = pj + delta.abs()[..., None] * (pn[:, :, 0] - pj)
    return torch.where(has[..., None], refined, out)


def annotate(
    fragments: FragmentsLike,
    vertices_cam: Tensor,
    faces: Tensor,
    K: Tensor,
    landmarks_cam: Tensor,
    *,
    face_labels: Tensor | np.ndarray | None = None,
    uv_coords: Tensor | np.ndarray | None = None,
    uv_faces: Tensor | np.ndarray | None = None,
    visibility_tolerance: float = DEFAULT_VISIBILITY_TOLERANCE,
    contour_lines: tuple[Tensor | np.ndarray, Tensor | np.ndarray] | None = None,
) -> Annotations:
    """Compute every label of B views from their rasterization.

    Args:
        fragments: the rasterization of ``vertices_cam`` / ``faces`` (see :class:`FragmentsLike`), (B, H, W).
        vertices_cam: (B, V, 3) float vertices in the OpenCV camera frame, metres (the ones that were rasterized).
        faces: (F, 3) int64 triangles.
        K: (B, 3, 3) or (3, 3) pixel intrinsics.
        landmarks_cam: (B, N, 3) landmarks in the camera frame (N = 68 for iBUG), metres.
        face_labels: (F,) integer class id per face (uint8 values), or None (every foreground pixel gets 1).
        uv_coords: (T, 2) UV coordinates in [0, 1], or None (uv is -1 everywhere).
        uv_faces: (F, 3) int64 indices into ``uv_coords`` per face corner; required with ``uv_coords``.
        visibility_tolerance: metres, see :func:`landmark_visibility`.
        contour_lines: ``(faces (C, M) int64, barycentrics (C, M, 3))``: per jaw landmark a line of M candidate
            surface points ordered from the face front outwards (:func:`next3d_gen.flame.contour_lines`); when
            given, landmarks 0..C-1 are replaced by :func:`outline_contour` of this view (300W's definition).

    Returns:
        :class:`Annotations` (computed from the inputs' values; no gradients are needed or kept for the labels).

    Raises:
        ValueError: ``uv_coords`` given without ``uv_faces``.
    """
    face_index = fragments.face_index
    B, H, W = face_index.shape
    device = vertices_cam.device
    verts = vertices_cam.to(torch.float32)
    V = verts.shape[1]
    faces = faces.to(device=device, dtype=torch.long)
    if K.dim() == 2:
        K = K.expand(B, 3, 3)
    f32 = torch.float32

    # Gather once: the foreground pixels of the flattened (B*H*W) batch, their faces, batches and barycentrics.
    mask = face_index >= 0
    pix = torch.nonzero(mask.reshape(-1)).squeeze(1)  # (P,)
    P = pix.shape[0]
    fi = face_index.reshape(-1).index_select(0, pix)  # (P,) face per foreground pixel
    bary = fragments.barycentric.reshape(-1, 3).index_select(0, pix).to(f32)  # (P, 3)
    bt = bary.T[:, :, None]  # (3, P, 1) corner-major weights
    corner = faces.index_select(0, fi).T  # (3, P) vertex ids, corner-major
    face_row = fi
    if B > 1:
        bi = torch.div(pix, H * W, rounding_mode="floor")
        corner = corner + bi * V  # rows of the flattened (B*V) vertex tables
        face_row = fi + bi * faces.shape[0]  # rows of the flattened (B*F) face tables

    # Per-vertex table [position | normal], gathered at the 3 corners of each pixel's face and interpolated.
    face_n, vn, face_side = _face_and_vertex_normals(verts, faces)
    table = torch.cat([verts, vn], dim=-1).reshape(B * V, 6)
    corners = table.index_select(0, corner.reshape(-1)).view(3, P, 6)
    interp = torch.addcmul(torch.addcmul(corners[0] * bt[0], corners[1], bt[1]), corners[2], bt[2])  # (P, 6)
    p, n = interp[:, :3], interp[:, 3:]  # surface point (= viewing ray) and interpolated vertex normal

    # Segmentation.
    seg = torch.zeros(B * H * W, dtype=torch.uint8, device=device)
    labels = _as_tensor(face_labels, device)
    seg[pix] = 1 if labels is None else labels.to(torch.uint8).index_select(0, fi)
    seg = seg.view(B, H, W)

    # Depth (from the rasterizer; background forced to 0).
    depth = torch.where(mask, fragments.depth.to(f32), torch.zeros((), dtype=f32, device=device))

    # Normals. A face seen from its back (face normal . corner > 0) has its normals flipped. Interpolated normals
    # can still point away from the camera near silhouettes: they are projected onto the plane perpendicular to
    # the viewing ray p there (n - max(n.p, 0) / |p|^2 p), then everything is normalised.
    sign = torch.where(face_side.reshape(-1).index_select(0, face_row) > 0, -1.0, 1.0)[:, None]
    n = n * sign
    away = (n * p).sum(dim=-1, keepdim=True).clamp_min(0.0) / (p * p).sum(dim=-1, keepdim=True)
    n = n - away * p
    norm = n.norm(dim=-1, keepdim=True)
    n = n / norm.clamp_min(1e-12)
    bad = norm[:, 0] <= 1e-6  # vertex normals cancelled out (e.g. a two-sided sheet): use the face normal
    if bool(bad.any()):
        geo = face_n.reshape(-1, 3).index_select(0, face_row[bad]) * sign[bad]
        n[bad] = torch.nn.functional.normalize(geo, dim=-1)
    normal = torch.zeros(B * H * W, 3, dtype=f32, device=device)
    normal[pix] = n
    normal = normal.view(B, H, W, 3)

    # UVs.
    uv = torch.full((B * H * W, 2), -1.0, dtype=f32, device=device)
    uvc = _as_tensor(uv_coords, device, f32)
    if uvc is not None:
        uvf = _as_tensor(uv_faces, device, torch.long)
        if uvf is None:
            raise ValueError("annotate: uv_coords given without uv_faces")
        uvk = uvc.index_select(0, uvf.index_select(0, fi).T.reshape(-1)).view(3, P, 2)
        uv[pix] = torch.addcmul(torch.addcmul(uvk[0] * bt[0], uvk[1], bt[1]), uvk[2], bt[2]).clamp(0.0, 1.0)
    uv = uv.view(B, H, W, 2)

    # Landmarks.
    lmk3 = landmarks_cam.to(torch.float32)
    if contour_lines is not None:
        line_faces = torch.as_tensor(contour_lines[0], device=device, dtype=torch.long)
        line_bary = torch.as_tensor(contour_lines[1], device=device, dtype=f32)
        outline = _outline_from_normals(verts, vn, faces, line_faces, line_bary)
        lmk3 = torch.cat([outline, lmk3[:, outline.shape[1] :]], dim=1)
    lmk2 = camera.project(lmk3, K.to(torch.float32))
    visible = landmark_visibility(lmk3, lmk2, depth, mask, visibility_tolerance)

    return Annotations(
        seg=seg,
        mask=mask,
        depth=depth,
        normal=normal,
        uv=uv,
        landmarks_2d=lmk2,
        landmarks_3d=lmk3,
        landmarks_visible=visible,
        bbox=_pixels_bbox(pix, B, H, W),
    )


def render_labels(
    vertices_world: Tensor,
    faces: Tensor,
    K: Tensor,
    cam2world: Tensor,
    height: int,
    width: int,
    landmarks_world: Tensor,
    model: FlameModel,
    *,
    visibility_tolerance: float = DEFAULT_VISIBILITY_TOLERANCE,
    contour: str = "embedding",
) -> tuple[Fragments, Annotations]:
    """Transform to the camera, rasterize and annotate, in one call.

    Args:
        vertices_world: (B, V, 3) posed vertices, head-model (FLAME) frame, metres.
        faces: (F, 3) int64 triangles.
        K: (B, 3, 3) or (3, 3) pixel intrinsics.
        cam2world: (B, 4, 4) or (4, 4) OpenCV camera-to-world.
        height, width: image size in pixels.
        landmarks_world: (B, 68, 3) landmarks, same frame as the vertices.
        model: the posed ``FlameModel``: its ``face_labels``, ``uv_coords`` and ``uv_faces`` are used.
        visibility_tolerance: metres, see :func:`landmark_visibility`.
        contour: ``embedding``: the jaw landmarks (iBUG 0-16) of ``landmarks_world`` are kept (the model's
            yaw-indexed dynamic embedding); ``outline``: they are replaced by the points of the model's contour lines
            on the outline of the face in this view (:func:`outline_contour`, 300W's definition).

    Returns:
        ``(fragments, annotations)``: the :class:`next3d_gen.raster.Fragments` and the :class:`Annotations`.

    Raises:
        ValueError: an unknown ``contour``.
    """
    if contour not in ("embedding", "outline"):
        raise ValueError(f"render_labels: contour must be 'embedding' or 'outline', got {contour!r}")
    B = vertices_world.shape[0]
    if cam2world.dim() == 2:
        cam2world = cam2world.expand(B, 4, 4)
    if K.dim() == 2:
        K = K.expand(B, 3, 3)
    cam2world = cam2world.to(vertices_world)
    verts_cam = camera.world_to_camera(vertices_world, cam2world)
    lmk_cam = camera.world_to_camera(landmarks_world.to(vertices_world), cam2world)
    faces = faces.to(device=vertices_world.device, dtype=torch.long)
    fragments = rasterize(verts_cam, faces, K.to(vertices_world), height, width)
    ann = annotate(
        fragments,
        verts_cam,
        faces,
        K,
        lmk_cam,
        face_labels=model.face_labels,
        uv_coords=model.uv_coords,
        uv_faces=model.uv_faces,
        visibility_tolerance=visibility_tolerance,
        contour_lines=contour_lines(model) if contour == "outline" else None,
    )
    return fragments, ann
