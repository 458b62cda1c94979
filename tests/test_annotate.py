"""Tests for next3d_gen.annotate.

The reference rasterization is a brute-force ray caster written here (Moeller-Trumbore over every pixel x face), so
the labels are checked independently of next3d_gen.raster; the same checks then run on the real rasterizer and on
the built-in head model when those modules are importable.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from next3d_gen import camera
from next3d_gen.annotate import (
    DEFAULT_VISIBILITY_TOLERANCE,
    Annotations,
    annotate,
    landmark_visibility,
    mask_bbox,
    render_labels,
    vertex_normals,
)
from next3d_gen.flame import FlameModel

try:
    from next3d_gen.raster import rasterize as _real_rasterize
except ImportError:  # written concurrently; the ray caster covers the annotator meanwhile
    _real_rasterize = None


def raycast(verts: torch.Tensor, faces: torch.Tensor, K: torch.Tensor, H: int, W: int) -> SimpleNamespace:
    """Brute-force reference rasterization: nearest ray-triangle hit through every pixel centre (float64).

    Ray-plane intersection ``t = (n . v0) / (n . d)`` for every (pixel, face) pair, then in-triangle coordinates from
    the dual basis of the triangle's edges (``u = (X - v0) . a``, ``w = (X - v0) . b`` with ``e1 . a = e2 . b = 1``,
    ``e2 . a = e1 . b = 0``); the weights ``(1 - u - w, u, w)`` are the 3D (perspective-correct) barycentrics.
    """
    B = verts.shape[0]
    v = verts.double()
    K = K.double().expand(B, 3, 3)
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    pix = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).reshape(-1, 3)  # (P, 3)
    face_index = torch.full((B, H * W), -1, dtype=torch.long)
    bary = torch.zeros(B, H * W, 3, dtype=torch.float64)
    depth = torch.zeros(B, H * W, dtype=torch.float64)
    for b in range(B):
        d = pix @ torch.linalg.inv(K[b]).T  # (P, 3) rays with z = 1
        v0, v1, v2 = (v[b, faces[:, k]] for k in range(3))  # (F, 3)
        e1, e2 = v1 - v0, v2 - v0
        n = torch.linalg.cross(e1, e2, dim=-1)
        nn2 = (n * n).sum(-1, keepdim=True)
        ok = nn2[:, 0] > 1e-30
        a_ = torch.linalg.cross(e2, n, dim=-1) / nn2.clamp_min(1e-30)
        b_ = torch.linalg.cross(n, e1, dim=-1) / nn2.clamp_min(1e-30)
        nd = d @ n.T  # (P, F)
        valid = ok[None] & (nd.abs() > 1e-14)
        t = (n * v0).sum(-1)[None] / torch.where(valid, nd, torch.ones_like(nd))
        u = t * (d @ a_.T) - (v0 * a_).sum(-1)[None]
        w = t * (d @ b_.T) - (v0 * b_).sum(-1)[None]
        hit = valid & (u >= 0) & (w >= 0) & (u + w <= 1) & (t > 1e-9)
        t = torch.where(hit, t, torch.full_like(t, float("inf")))
        tmin, f = t.min(dim=1)
        any_hit = torch.isfinite(tmin)
        uu = u.gather(1, f[:, None])[:, 0]
        ww = w.gather(1, f[:, None])[:, 0]
        face_index[b] = torch.where(any_hit, f, -1)
        bary[b] = torch.where(any_hit[:, None], torch.stack([1 - uu - ww, uu, ww], -1), 0.0)
        depth[b] = torch.where(any_hit, tmin, 0.0)  # rays have z = 1, so t is camera z
    return SimpleNamespace(
        face_index=face_index.view(B, H, W),
        barycentric=bary.float().view(B, H, W, 3),
        depth=depth.float().view(B, H, W),
    )


BACKENDS = ["raycast"] + (["raster"] if _real_rasterize is not None else [])


def rasterize_with(backend: str, verts, faces, K, H, W):
    if backend == "raycast":
        return raycast(verts, faces, K, H, W)
    return _real_rasterize(verts.float(), faces, K.float().expand(verts.shape[0], 3, 3), H, W)


def icosphere(subdiv: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit icosphere, counter-clockwise faces seen from outside."""
    t = (1 + 5**0.5) / 2
    verts = [(-1, t, 0), (1, t, 0), (-1, -t, 0), (1, -t, 0), (0, -1, t), (0, 1, t), (0, -1, -t), (0, 1, -t),
             (t, 0, -1), (t, 0, 1), (-t, 0, -1), (-t, 0, 1)]  # fmt: skip
    faces = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4), (11, 10, 2),
             (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9), (4, 9, 5), (2, 4, 11),
             (6, 2, 10), (8, 6, 7), (9, 8, 1)]  # fmt: skip
    v = [np.array(p, dtype=np.float64) / np.linalg.norm(p) for p in verts]
    for _ in range(subdiv):
        cache: dict[tuple[int, int], int] = {}

        def mid(a: int, b: int, cache: dict[tuple[int, int], int] = cache) -> int:
            key = (min(a, b), max(a, b))
            if key not in cache:
                m = v[a] + v[b]
                v.append(m / np.linalg.norm(m))
                cache[key] = len(v) - 1
            return cache[key]

        new = []
        for a, b, c in faces:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            new += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        faces = new
    return np.stack(v), np.asarray(faces, dtype=np.int64)


def test_icosphere_fixture_is_outward():
    v, f = icosphere(1)
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    assert np.all((n * v[f].mean(axis=1)).sum(-1) > 0)


# ----------------------------------------------------------------------------------------------------- vertex normals


def test_vertex_normals_area_weighted_reference():
    gen = torch.Generator().manual_seed(0)
    verts = torch.randn(2, 7, 3, generator=gen, dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3], [0, 3, 4], [1, 5, 2], [4, 3, 6]])
    got = vertex_normals(verts, faces)
    for b in range(2):
        v = verts[b].numpy()
        acc = np.zeros((7, 3))
        for tri in faces.numpy():
            p0, p1, p2 = v[tri]
            cr = np.cross(p1 - p0, p2 - p0)
            area = 0.5 * np.linalg.norm(cr)
            for k in tri:
                acc[k] += area * cr / np.linalg.norm(cr)  # area x unit normal
        acc /= np.linalg.norm(acc, axis=1, keepdims=True)
        np.testing.assert_allclose(got[b].numpy(), acc, atol=1e-12)


def test_vertex_normals_sphere_radial_and_unused_vertex_zero():
    v, f = icosphere(2)
    verts = torch.tensor(np.concatenate([v * 0.1 + [0.3, -0.2, 1.0], [[0.0, 0.0, 0.0]]]), dtype=torch.float32)[None]
    n = vertex_normals(verts, torch.from_numpy(f))
    assert n.dtype == torch.float32
    cos = (n[0, :-1] * torch.tensor(v, dtype=torch.float32)).sum(-1)
    assert cos.min() > 0.995
    torch.testing.assert_close(n[0, -1], torch.zeros(3))  # used by no face


# ----------------------------------------------------------------------------------------------------- plane


def _plane_scene(backward: bool):
    """A tilted square (two triangles) in front of an off-centre camera, with analytic labels."""
    H, W = 40, 56
    K = torch.tensor([[60.0, 0.0, 30.2], [0.0, 55.0, 17.7], [0.0, 0.0, 1.0]], dtype=torch.float64)
    a, b = math.radians(25), math.radians(-35)
    Ry = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]], dtype=torch.float64)
    Rx = torch.tensor([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]], dtype=torch.float64)
    R = Ry @ Rx
    e1, e2 = R[:, 0], R[:, 1]
    c0 = torch.tensor([0.02, -0.01, 0.6], dtype=torch.float64)
    s = 0.12
    corners = torch.stack([c0 + i * s * e1 + j * s * e2 for i, j in [(-1, -1), (1, -1), (1, 1), (-1, 1)]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    if backward:
        faces = faces[:, [0, 2, 1]]
    labels = np.array([3, 7], dtype=np.uint8)
    # UV table stored in a different order than the vertices, to check that uv_faces (not faces) is used.
    uv_coords = torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # corner 2, 0, 3, 1
    vert_to_uv = torch.tensor([1, 3, 0, 2])
    uv_faces = vert_to_uv[faces]
    return H, W, K, corners, faces, labels, uv_coords, uv_faces, (c0, e1, e2, s)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("backward", [False, True])
def test_plane_known_values(backend, backward):
    H, W, K, corners, faces, labels, uv_coords, uv_faces, (c0, e1, e2, s) = _plane_scene(backward)
    lmk = torch.stack(
        [
            c0 + 0.3 * s * e1 - 0.5 * s * e2,  # on the plane: visible
            (c0 - 0.2 * s * e1 + 0.4 * s * e2) * 1.05,  # 5% further along its ray: behind the plane
            (c0 + 0.1 * s * e1) * 0.9,  # in front of the plane
            torch.tensor([5.0, 0.0, 1.0], dtype=torch.float64),  # far outside the image
            torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64),  # behind the camera
        ]
    )[None]
    frags = rasterize_with(backend, corners[None].float(), faces, K[None], H, W)
    ann = annotate(
        frags, corners[None].float(), faces, K.float(), lmk.float(),
        face_labels=labels, uv_coords=uv_coords, uv_faces=uv_faces,
    )  # fmt: skip
    assert isinstance(ann, Annotations)
    assert ann.seg.dtype == torch.uint8 and ann.mask.dtype == torch.bool and ann.depth.dtype == torch.float32
    assert ann.normal.shape == (1, H, W, 3) and ann.uv.shape == (1, H, W, 2) and ann.bbox.shape == (1, 4)

    # Analytic ray-plane intersection at every pixel centre.
    n = torch.linalg.cross(e1, e2)
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    rays = torch.stack([xs, ys, torch.ones_like(xs)], -1) @ torch.linalg.inv(K).T  # z = 1
    z = (n @ c0) / (rays @ n)
    X = rays * z[..., None]
    al, be = (X - c0) @ e1 / s, (X - c0) @ e2 / s  # plane coordinates in [-1, 1]
    inside = (al.abs() < 1) & (be.abs() < 1)
    margin = 0.02
    safe = (al.abs() < 1 - margin) & (be.abs() < 1 - margin) & ((al - be).abs() > margin)
    unsafe_outside = ~inside & ((al.abs() > 1 + margin) | (be.abs() > 1 + margin))
    assert safe.sum() > 300
    m = ann.mask[0]
    assert torch.all(m[safe]) and not torch.any(m[unsafe_outside])
    expected_seg = torch.where(al > be, 3, 7).to(torch.uint8)  # face 0 = (c00, c10, c11) is the alpha > beta half
    assert torch.equal(ann.seg[0][safe], expected_seg[safe])
    assert torch.all(ann.seg[0][~m] == 0)
    torch.testing.assert_close(ann.depth[0][safe], z[safe].float(), atol=1e-5, rtol=1e-5)
    assert torch.all(ann.depth[0][~m] == 0)
    n_cam = (-n if float(n @ c0) > 0 else n).float()  # the side that faces the camera, whatever the winding
    torch.testing.assert_close(ann.normal[0][m], n_cam.expand(int(m.sum()), 3), atol=1e-5, rtol=0)
    assert torch.all(ann.normal[0][~m] == 0)
    uv_expected = torch.stack([(al + 1) / 2, (be + 1) / 2], -1).float()
    torch.testing.assert_close(ann.uv[0][safe], uv_expected[safe], atol=1e-5, rtol=0)
    assert torch.all(ann.uv[0][~m] == -1)
    assert ann.uv[0][m].min() >= 0 and ann.uv[0][m].max() <= 1

    # Landmarks: projection, 3D pass-through, visibility.
    torch.testing.assert_close(ann.landmarks_3d, lmk.float())
    torch.testing.assert_close(ann.landmarks_2d[0, :3], camera.project(lmk, K[None])[0, :3].float(), atol=1e-4, rtol=0)
    assert ann.landmarks_visible[0].tolist() == [True, False, True, False, False]

    # Box: the mask's extent, pixel-edge convention.
    rows, cols = torch.nonzero(m, as_tuple=True)
    expected_box = [cols.min() - 0.5, rows.min() - 0.5, cols.max() + 0.5, rows.max() + 0.5]
    assert ann.bbox[0].tolist() == [float(x) for x in expected_box]


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_sided_sheet_uses_face_normals(backend):
    """The same square with both windings: vertex normals cancel to zero, the face normal (towards the camera) is
    used."""
    H, W, K, corners, faces, *_, (c0, e1, e2, s) = _plane_scene(False)
    faces2 = torch.cat([faces, faces[:, [0, 2, 1]]])
    frags = rasterize_with(backend, corners[None], faces2, K[None], H, W)
    ann = annotate(frags, corners[None].float(), faces2, K.float(), torch.zeros(1, 68, 3))
    m = ann.mask[0]
    assert m.sum() > 300
    n = torch.linalg.cross(e1, e2)
    n_cam = (-n if float(n @ c0) > 0 else n).float()
    torch.testing.assert_close(ann.normal[0][m], n_cam.expand(int(m.sum()), 3), atol=1e-5, rtol=0)


def test_annotate_without_labels_or_uvs():
    H, W, K, corners, faces, *_ = _plane_scene(False)
    frags = raycast(corners[None], faces, K[None], H, W)
    ann = annotate(frags, corners[None].float(), faces, K.float(), torch.zeros(1, 68, 3))
    assert torch.equal(ann.seg[0], ann.mask[0].to(torch.uint8))
    assert torch.all(ann.uv == -1)
    assert not ann.landmarks_visible.any()  # z = 0: not in front of the camera
    with pytest.raises(ValueError):
        annotate(frags, corners[None].float(), faces, K.float(), torch.zeros(1, 68, 3), uv_coords=torch.zeros(4, 2))


# ----------------------------------------------------------------------------------------------------- sphere


def _sphere_scene(B: int = 2, subdiv: int = 3, H: int = 48, W: int = 40):
    v, f = icosphere(subdiv)
    r = 0.1
    centres = torch.tensor([[0.02, 0.01, 0.6], [-0.04, 0.03, 0.7]], dtype=torch.float64)[:B]
    verts = torch.tensor(v)[None] * r + centres[:, None]
    faces = torch.from_numpy(f)
    K = camera.intrinsics_from_fov(torch.tensor([35.0, 30.0])[:B], H, W, dtype=torch.float64)
    centroid_x = v[f].mean(axis=1)[:, 0]
    labels = np.where(centroid_x > 0, 2, 5).astype(np.uint8)
    return verts, faces, K, labels, centres, r, v, f


@pytest.mark.parametrize("backend", BACKENDS)
def test_sphere_depth_normals_seg(backend):
    verts, faces, K, labels, centres, r, v, f = _sphere_scene()
    B, H, W = 2, 48, 40
    frags = rasterize_with(backend, verts, faces, K, H, W)
    ann = annotate(frags, verts.float(), faces, K.float(), torch.zeros(B, 68, 3), face_labels=labels)
    m = ann.mask
    assert m.sum() > 400
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    for b in range(B):
        rays = torch.stack([xs, ys, torch.ones_like(xs)], -1) @ torch.linalg.inv(K[b]).T
        # analytic sphere: nearest root of |t d - c|^2 = r^2
        c = centres[b]
        a2, b2, c2 = (rays * rays).sum(-1), -2 * (rays @ c), c @ c - r * r
        disc = b2 * b2 - 4 * a2 * c2
        t = (-b2 - disc.clamp_min(0).sqrt()) / (2 * a2)
        hit = disc > 0
        P = rays * t[..., None]
        n_true = torch.nn.functional.normalize(P - c, dim=-1)
        core = hit & ((n_true * torch.nn.functional.normalize(rays, dim=-1)).sum(-1) < -0.5)  # away from the limb
        mb = m[b]
        assert torch.all(mb[core]) and not torch.any(mb[~hit])
        # tessellation error of a level-3 icosphere: the mesh lies at most ~0.5 mm inside the sphere
        dz = ann.depth[b][core].double() - t[core]
        assert dz.min() > -1e-4 and dz.max() < 2e-3
        nb = ann.normal[b][mb]
        torch.testing.assert_close(nb.norm(dim=-1), torch.ones(nb.shape[0]), atol=1e-5, rtol=0)
        ray_fg = torch.nn.functional.normalize(rays[mb], dim=-1).float()
        assert (nb * ray_fg).sum(-1).max() <= 1e-5  # faces the camera everywhere, silhouettes included
        cos = (ann.normal[b][core].double() * n_true[core]).sum(-1)
        assert cos.min() > math.cos(math.radians(4))
        # segmentation follows the hit point's side of the sphere (away from the x = 0 seam)
        side = (P[..., 0] - c[0]) / r
        clear = core & (side.abs() > 0.15)
        assert torch.equal(ann.seg[b][clear], torch.where(side[clear] > 0, 2, 5).to(torch.uint8))
        assert torch.all(ann.seg[b][~mb] == 0)
    # a sphere seen from inside shows back faces: normals are turned towards the camera
    inside = torch.tensor(v)[None] * 2.0  # camera at the centre of a radius-2 sphere
    fr = rasterize_with(backend, inside, faces, K[:1], H, W)
    ann_in = annotate(fr, inside.float(), faces, K[:1].float(), torch.zeros(1, 68, 3))
    assert ann_in.mask.all()
    nrm = ann_in.normal[0]
    rays = torch.nn.functional.normalize(
        torch.stack([xs, ys, torch.ones_like(xs)], -1) @ torch.linalg.inv(K[0]).T, dim=-1
    ).float()
    assert (nrm * rays).sum(-1).max() < -0.99


@pytest.mark.parametrize("backend", BACKENDS)
def test_sphere_landmark_visibility(backend):
    verts, faces, K, labels, centres, r, v, f = _sphere_scene(B=1, subdiv=3, H=48, W=48)
    H = W = 48
    vc = verts[0]
    tri = vc[faces]  # (F, 3, 3)
    cen = tri.mean(1)
    gn = torch.nn.functional.normalize(torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), dim=-1)
    facing = (gn * torch.nn.functional.normalize(cen, dim=-1)).sum(-1)  # < 0: front, > 0: back
    front = torch.nonzero(facing < -0.8).squeeze(1)[:20]
    back = torch.nonzero(facing > 0.7).squeeze(1)[:20]  # well inside the silhouette (not within a pixel of it)
    limb = torch.nonzero((facing < 0) & (facing > -0.12)).squeeze(1)[:20]  # front faces right at the silhouette
    assert len(front) == len(back) == 20 and len(limb) >= 8
    pts = torch.cat([cen[front], cen[back], cen[limb]])[None]
    frags = rasterize_with(backend, verts, faces, K, H, W)
    ann = annotate(frags, verts.float(), faces, K.float(), pts.float())
    vis = ann.landmarks_visible[0]
    assert vis[:20].all() and not vis[20:40].any() and vis[40:].all()
    # a visible landmark away from the silhouette agrees with the depth buffer at its nearest pixel (at the limb the
    # depth changes by centimetres from one pixel to the next, which is why visibility uses the 2 x 2 maximum)
    uv = ann.landmarks_2d[0, :20]
    px, py = uv[:, 0].round().long(), uv[:, 1].round().long()
    assert ann.mask[0, py, px].all()
    dz = (pts[0, :20, 2].float() - ann.depth[0, py, px]).abs()
    assert dz.max() < 0.005
    # an occluder in front hides front landmarks
    quad = torch.tensor([[-1.0, -1.0, 0.3], [1.0, -1.0, 0.3], [1.0, 1.0, 0.3], [-1.0, 1.0, 0.3]], dtype=torch.float64)
    verts2 = torch.cat([verts[0], quad])[None]
    nv = verts.shape[1]
    faces2 = torch.cat([faces, torch.tensor([[nv, nv + 1, nv + 2], [nv, nv + 2, nv + 3]])])
    ann2 = annotate(rasterize_with(backend, verts2, faces2, K, H, W), verts2.float(), faces2, K.float(), pts.float())
    assert not ann2.landmarks_visible.any()
    assert ann2.mask.all() and torch.allclose(ann2.depth, torch.full((1, H, W), 0.3), atol=1e-5)


# ----------------------------------------------------------------------------------------------------- unit helpers


def test_landmark_visibility_rules():
    H, W = 6, 8
    depth = torch.full((1, H, W), 1.0)
    mask = torch.ones(1, H, W, dtype=torch.bool)
    mask[0, :, 6:] = False  # background on the right
    depth[~mask] = 0
    depth[0, 0:2, 0:2] = 0.5  # something nearer in the top-left corner
    pts2 = torch.tensor(
        [[3.2, 3.0], [3.2, 3.0], [3.2, 3.0], [5.5, 2.0], [0.4, 0.4], [1.2, 1.2], [-0.5, 3.0], [-0.51, 3.0],
         [7.5, 5.5], [7.6, 2.0], [float("nan"), 1.0]]
    )[None]  # fmt: skip
    z = torch.tensor([1.0, 1.0 + 0.9 * DEFAULT_VISIBILITY_TOLERANCE, 1.02, 3.0, 0.9, 0.9, 1.0, 1.0, 2.0, 2.0, 1.0])
    pts3 = torch.cat([pts2 * z[None, :, None], z[None, :, None]], dim=-1)  # only z matters here
    vis = landmark_visibility(pts3, pts2, depth, mask)[0].tolist()
    assert vis == [
        True,  # on the surface
        True,  # within the tolerance
        False,  # 2 cm behind the surface
        True,  # next to background: silhouette points are never hidden by it
        False,  # behind the nearer patch (all four neighbours at 0.5)
        True,  # one neighbour (2, 2) is at depth 1.0 >= 0.9: the max rule keeps it
        True,  # exactly on the left image edge
        False,  # just outside it
        True,  # bottom-right corner, over background
        False,  # outside on the right
        False,  # not finite
    ]
    assert landmark_visibility(pts3, pts2, depth, mask, tolerance=0.05)[0, 2]


def test_mask_bbox_against_numpy():
    gen = torch.Generator().manual_seed(7)
    masks = torch.zeros(5, 20, 30, dtype=torch.bool)
    for b in range(4):
        y0, x0 = torch.randint(0, 15, (2,), generator=gen).tolist()
        masks[b, y0 : y0 + torch.randint(1, 6, (1,), generator=gen).item(), x0 : x0 + 3] = True
        masks[b, torch.randint(0, 20, (1,), generator=gen).item(), torch.randint(0, 30, (1,), generator=gen).item()] = 1
    box = mask_bbox(masks)
    assert box.dtype == torch.float32 and box.shape == (5, 4)
    for b in range(4):
        r, c = np.nonzero(masks[b].numpy())
        assert box[b].tolist() == [c.min() - 0.5, r.min() - 0.5, c.max() + 0.5, r.max() + 0.5]
        # every foreground pixel (as a unit square) lies inside the box
        assert (c - 0.5 >= box[b, 0].item()).all() and (c + 0.5 <= box[b, 2].item()).all()
    assert box[4].tolist() == [0.0, 0.0, 0.0, 0.0]  # empty mask
    full = mask_bbox(torch.ones(1, 4, 6, dtype=torch.bool))
    assert full[0].tolist() == [-0.5, -0.5, 5.5, 3.5]  # the whole image


# ----------------------------------------------------------------------------------------------------- flip


@pytest.mark.parametrize("backend", BACKENDS)
def test_horizontal_flip_consistency(backend):
    """Mirroring the scene about the optical axis (x -> -x, centred K) mirrors every label."""
    gen = torch.Generator().manual_seed(8)
    v, f = icosphere(2)
    v = v * (1 + 0.15 * torch.rand(len(v), 1, generator=gen, dtype=torch.float64).numpy())  # lumpy, asymmetric
    verts = torch.tensor(v)[None] * 0.1 + torch.tensor([0.03, 0.01, 0.5], dtype=torch.float64)
    faces = torch.from_numpy(f)
    labels = torch.randint(1, 20, (len(f),), generator=gen).to(torch.uint8)
    uvc = torch.rand(len(v), 2, generator=gen)
    H, W = 36, 44
    K = camera.intrinsics_from_fov(30.0, H, W, dtype=torch.float64)[None]
    lmk = verts[:, torch.arange(0, len(v), 9)]
    mirror = torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    verts_m, faces_m, lmk_m = verts * mirror, faces[:, [0, 2, 1]], lmk * mirror
    a = annotate(rasterize_with(backend, verts, faces, K, H, W), verts.float(), faces, K.float(), lmk.float(),
                 face_labels=labels, uv_coords=uvc, uv_faces=faces)  # fmt: skip
    b = annotate(rasterize_with(backend, verts_m, faces_m, K, H, W), verts_m.float(), faces_m, K.float(),
                 lmk_m.float(), face_labels=labels, uv_coords=uvc, uv_faces=faces_m)  # fmt: skip
    flip = lambda t: torch.flip(t, dims=[2])  # noqa: E731
    same = a.mask & flip(b.mask)
    assert (a.mask != flip(b.mask)).float().mean() < 0.01  # ties on edges through pixel centres may differ
    assert (a.seg[same] != flip(b.seg)[same]).float().mean() < 0.01
    torch.testing.assert_close(a.depth[same], flip(b.depth)[same], atol=1e-4, rtol=0)
    torch.testing.assert_close(a.normal[same], (flip(b.normal) * mirror.float())[same], atol=1e-3, rtol=0)
    torch.testing.assert_close(a.uv[same], flip(b.uv)[same], atol=1e-3, rtol=0)
    torch.testing.assert_close(b.landmarks_2d[..., 0], (W - 1) - a.landmarks_2d[..., 0], atol=1e-3, rtol=0)
    torch.testing.assert_close(b.landmarks_2d[..., 1], a.landmarks_2d[..., 1], atol=1e-4, rtol=0)
    assert torch.equal(a.landmarks_visible, b.landmarks_visible)
    if torch.equal(a.mask, flip(b.mask)):
        torch.testing.assert_close(b.bbox[:, [0, 2]], (W - 1) - a.bbox[:, [2, 0]])


# ----------------------------------------------------------------------------------------------------- containers


def test_annotations_index_and_numpy():
    H, W, K, corners, faces, *_ = _plane_scene(False)
    v2 = torch.cat([corners[None], corners[None] * 1.1]).float()
    frags = raycast(v2, faces, K[None], H, W)
    ann = annotate(frags, v2, faces, K.float(), torch.zeros(2, 68, 3))
    one = ann.index(1)
    assert one.batch_size == 1 and torch.equal(one.depth[0], ann.depth[1])
    arrays = ann.numpy(0)
    assert arrays["seg"].shape == (H, W) and arrays["landmarks_2d"].shape == (68, 2) and arrays["bbox"].shape == (4,)


def test_batch_matches_single_views_and_empty_view():
    verts, faces, K, labels, centres, r, v, f = _sphere_scene(B=2)
    H, W = 48, 40
    behind = verts[:1] * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)  # whole sphere behind the camera
    vb = torch.cat([verts[:1], behind, verts[1:]])
    Kb = torch.cat([K[:1], K[:1], K[1:]])
    lmk = vb[:, :68]
    uvc = torch.from_numpy(v[:, :2] * 0.5 + 0.5).float()
    kw = dict(face_labels=labels, uv_coords=uvc, uv_faces=faces)
    ann = annotate(raycast(vb, faces, Kb, H, W), vb.float(), faces, Kb.float(), lmk.float(), **kw)
    assert not ann.mask[1].any() and torch.all(ann.seg[1] == 0) and torch.all(ann.depth[1] == 0)
    assert torch.all(ann.normal[1] == 0) and torch.all(ann.uv[1] == -1) and not ann.landmarks_visible[1].any()
    assert ann.bbox[1].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert torch.equal(ann.bbox, mask_bbox(ann.mask))
    for b in (0, 2):
        one = annotate(raycast(vb[b : b + 1], faces, Kb[b], H, W), vb[b : b + 1].float(), faces, Kb[b].float(),
                       lmk[b : b + 1].float(), **kw)  # fmt: skip
        for name in ("seg", "mask", "depth", "normal", "uv", "landmarks_2d", "landmarks_visible", "bbox"):
            torch.testing.assert_close(getattr(ann, name)[b], getattr(one, name)[0], atol=1e-6, rtol=0)


def sphere_model(subdiv: int = 3) -> FlameModel:
    """A 9 cm sphere in FLAME format: labels by octant, UVs from the direction, landmarks on random faces."""
    v, f = icosphere(subdiv)
    nv, nf = len(v), len(f)
    rng = np.random.default_rng(0)
    cen = v[f].mean(axis=1)
    return FlameModel(
        v_template=(v * 0.09).astype(np.float32),
        faces=f,
        shapedirs=np.zeros((nv, 3, 2), np.float32),
        exprdirs=np.zeros((nv, 3, 2), np.float32),
        posedirs=np.zeros((nv, 3, 36), np.float32),
        j_regressor=np.full((5, nv), 1.0 / nv, np.float32),
        weights=np.eye(5, dtype=np.float32)[np.zeros(nv, dtype=np.int64)],
        parents=np.array([-1, 0, 1, 1, 1]),
        static_lmk_faces=rng.integers(0, nf, 51),
        static_lmk_bary=np.full((51, 3), 1 / 3, np.float32),
        dynamic_lmk_faces=rng.integers(0, nf, (79, 17)),
        dynamic_lmk_bary=np.full((79, 17, 3), 1 / 3, np.float32),
        uv_coords=(v[:, :2] * 0.5 + 0.5).astype(np.float32),
        uv_faces=f.copy(),
        face_labels=(1 + (cen[:, 0] > 0) + 2 * (cen[:, 1] > 0) + 4 * (cen[:, 2] > 0)).astype(np.uint8),
        name="sphere",
    )


@pytest.mark.skipif(_real_rasterize is None, reason="next3d_gen.raster not available")
def test_render_labels_matches_manual_pipeline():
    from next3d_gen.flame import FlameLayer

    model = sphere_model()
    layer = FlameLayer(model)
    out = layer(pose=torch.zeros(2, 15), translation=torch.tensor([[0.0, 0.0, 0.0], [0.01, -0.02, 0.03]]))
    H, W = 40, 48
    K = camera.intrinsics_from_fov(25.0, H, W)
    c2w = camera.orbit_camera(torch.tensor([0.0, 50.0]), torch.tensor([10.0, -20.0]), 0.5, torch.zeros(3))
    frags, ann = render_labels(out.vertices, layer.faces, K, c2w, H, W, out.landmarks, model)
    vc = camera.world_to_camera(out.vertices, c2w)
    lc = camera.world_to_camera(out.landmarks, c2w)
    ref = annotate(raycast(vc, layer.faces, K[None], H, W), vc, layer.faces, K, lc, face_labels=model.face_labels,
                   uv_coords=model.uv_coords, uv_faces=model.uv_faces)  # fmt: skip
    assert frags.face_index.shape == (2, H, W)
    assert (ann.mask != ref.mask).float().mean() < 0.005
    both = ann.mask & ref.mask
    assert (ann.seg[both] != ref.seg[both]).float().mean() < 0.005
    torch.testing.assert_close(ann.depth[both], ref.depth[both], atol=1e-5, rtol=0)
    torch.testing.assert_close(ann.landmarks_2d, ref.landmarks_2d)
    torch.testing.assert_close(ann.landmarks_3d, lc)
    assert torch.equal(ann.landmarks_visible, ref.landmarks_visible)
    # unbatched K / cam2world are accepted
    _, one = render_labels(out.vertices[:1], layer.faces, K, c2w[0], H, W, out.landmarks[:1], model)
    assert torch.equal(one.seg[0], ann.seg[0])


# ----------------------------------------------------------------------------------------------------- built-in head


@pytest.fixture(scope="module")
def head():
    if _real_rasterize is None:
        pytest.skip("next3d_gen.raster not available")
    try:
        from next3d_gen.head_model import builtin_head_model
    except ImportError:
        pytest.skip("next3d_gen.head_model.builtin_head_model not available")
    from next3d_gen.flame import FlameLayer

    model = builtin_head_model()
    layer = FlameLayer(model)
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        out = layer(shape=0.5 * torch.randn(1, min(10, layer.num_shape), generator=gen), pose=torch.zeros(1, 15))
    return model, layer, out


def _head_views(n: int, seed: int, max_yaw: float = 75.0, max_pitch: float = 35.0):
    gen = torch.Generator().manual_seed(seed)
    yaw = (2 * torch.rand(n, generator=gen) - 1) * max_yaw
    pitch = (2 * torch.rand(n, generator=gen) - 1) * max_pitch
    fov = 20.0
    radius = 0.34 / (2 * math.tan(math.radians(fov) / 2))  # the default framing: 0.34 m across at the pivot
    return camera.orbit_camera(yaw, pitch, radius, torch.tensor([0.0, 0.0, 0.03])), fov


def test_builtin_head_random_views(head):
    model, layer, out = head
    N, S = 10, 128
    c2w, fov = _head_views(N, seed=12)
    K = camera.intrinsics_from_fov(fov, S, S)
    verts = out.vertices.expand(N, -1, -1)
    # an extra point on the back of the skull: the template vertex furthest behind, near the midline
    v = torch.as_tensor(model.v_template)
    back_score = -v[:, 2] - 2 * v[:, 0].abs()
    back = out.vertices[0, back_score.argmax()][None, None].expand(N, 1, 3)
    lmk = torch.cat([out.landmarks.expand(N, -1, -1), back], dim=1)
    frags, ann = render_labels(verts, layer.faces, K, c2w, S, S, lmk, model)
    m = ann.mask
    assert m.flatten(1).any(1).all()
    assert torch.equal(ann.bbox, mask_bbox(m))
    ys, xs = torch.meshgrid(torch.arange(S, dtype=torch.float32), torch.arange(S, dtype=torch.float32), indexing="ij")
    rays = torch.nn.functional.normalize(torch.stack([xs, ys, torch.ones_like(xs)], -1) @ torch.linalg.inv(K).T, dim=-1)
    nrm = ann.normal[m]
    torch.testing.assert_close(nrm.norm(dim=-1), torch.ones(nrm.shape[0]), atol=1e-5, rtol=0)
    assert (nrm * rays.expand(N, S, S, 3)[m]).sum(-1).max() <= 1e-5  # every normal faces the camera
    assert torch.all(ann.uv[m] >= 0) and torch.all(ann.uv[m] <= 1) and torch.all(ann.uv[~m] == -1)
    assert torch.all(ann.seg[m] > 0) and torch.all(ann.seg[~m] == 0)

    vis = ann.landmarks_visible
    lmk2 = ann.landmarks_2d
    # the back of the head projects onto the head and is hidden in every view
    bx, by = lmk2[:, 68, 0].round().long(), lmk2[:, 68, 1].round().long()
    assert m[torch.arange(N), by.clamp(0, S - 1), bx.clamp(0, S - 1)].all()
    assert not vis[:, 68].any()
    # visible landmarks lie inside the box (up to the half pixel between a silhouette point and its nearest centre)
    box = ann.bbox[:, None]
    inside = (lmk2[..., 0] >= box[..., 0] - 1) & (lmk2[..., 0] <= box[..., 2] + 1)
    inside &= (lmk2[..., 1] >= box[..., 1] - 1) & (lmk2[..., 1] <= box[..., 3] + 1)
    assert inside[vis].all()
    # Visible landmarks on smooth surface (3 x 3 neighbourhood all foreground with depth range < 1.5 cm: no silhouette
    # or depth edge, where the nearest pixel may show another surface) agree with the depth buffer: typically to
    # about a millimetre, never more than the tolerance behind the local surface, never a centimetre in front of
    # it (thin parts such as eyelid margins sit a few millimetres in front of what the neighbouring pixels show).
    px, py = lmk2[..., 0].round().long().clamp(1, S - 2), lmk2[..., 1].round().long().clamp(1, S - 2)
    b = torch.arange(N)[:, None].expand_as(px)
    smooth = torch.ones_like(vis)
    d_lo, d_hi = torch.full(vis.shape, float("inf")), torch.zeros(vis.shape)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            smooth &= m[b, py + dy, px + dx]
            d_lo = torch.minimum(d_lo, ann.depth[b, py + dy, px + dx])
            d_hi = torch.maximum(d_hi, ann.depth[b, py + dy, px + dx])
    smooth &= (d_hi - d_lo) < 0.015
    z = ann.landmarks_3d[..., 2]
    dz = z - ann.depth[b, py, px]
    sel = vis & smooth
    assert sel.sum() > N * 25
    assert dz[sel].abs().median() < 0.0015, dz[sel].abs().median()
    assert (z - d_hi)[sel].max() <= DEFAULT_VISIBILITY_TOLERANCE
    assert (z - d_lo)[sel].min() > -0.01, (z - d_lo)[sel].min()
    # and a hidden landmark is behind the surface seen at its nearest pixel by more than the tolerance
    hid = ~vis & smooth
    assert torch.all(dz[hid] > DEFAULT_VISIBILITY_TOLERANCE)


def test_builtin_head_frontal_and_profile_visibility(head):
    model, layer, out = head
    S, fov = 128, 20.0
    radius = 0.34 / (2 * math.tan(math.radians(fov) / 2))
    c2w = camera.orbit_camera(torch.tensor([0.0, 80.0, -80.0]), torch.zeros(3), radius, torch.tensor([0.0, 0.0, 0.03]))
    K = camera.intrinsics_from_fov(fov, S, S)
    _, ann = render_labels(out.vertices.expand(3, -1, -1), layer.faces, K, c2w, S, S, out.landmarks.expand(3, -1, -1),
                           model)  # fmt: skip
    vis = ann.landmarks_visible
    # frontal: the whole face is seen (eyes, brows, nose, outer lips)
    assert vis[0, 17:60].all(), torch.nonzero(~vis[0, 17:60]).squeeze(1) + 17
    # profiles: the far eye's outer corner is hidden behind the face, the near one is seen
    # (yaw > 0 moves the camera to the subject's left: iBUG 45 is the left eye's outer corner, 36 the right's)
    assert vis[1, 45] and not vis[1, 36]
    assert vis[2, 36] and not vis[2, 45]


# ------------------------------------------------------------------------------------------- outline jaw contour


def _cast_from(centre: np.ndarray, dirs: np.ndarray, v: np.ndarray, f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Face and barycentrics where rays from ``centre`` (inside a closed mesh) along ``dirs`` (N, 3) leave it."""
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    e1, e2 = b - a, c - a
    faces, bary = [], []
    for d in dirs:
        pv = np.cross(d, e2)
        det = (e1 * pv).sum(1)
        inv = 1.0 / np.where(np.abs(det) > 1e-15, det, np.inf)
        tv = centre - a
        u = (tv * pv).sum(1) * inv
        qv = np.cross(tv, e1)
        w = (qv * d).sum(1) * inv
        t = (qv * e2).sum(1) * inv
        ok = (u >= 0) & (w >= 0) & (u + w <= 1) & (t > 0)
        k = int(np.where(ok)[0][np.argmin(t[ok])])
        faces.append(k)
        bary.append([1 - u[k] - w[k], u[k], w[k]])
    return np.asarray(faces), np.asarray(bary)


def test_outline_contour_on_a_sphere_matches_the_analytic_silhouette():
    """Lines of candidates on a sphere (camera frame): the chosen points lie on the sphere's silhouette cone,
    ``angle(p, centre) = asin(R / |centre|)``; a line that never grazes gives its last candidate."""
    from next3d_gen.annotate import outline_contour

    v, f = icosphere(4)
    R, centre = 0.1, np.array([0.03, -0.02, 0.6])
    verts = v * R + centre
    view = -centre / np.linalg.norm(centre)  # towards the camera
    side = np.cross(view, [0.0, 1.0, 0.0])
    side /= np.linalg.norm(side)
    up = np.cross(side, view)
    psi = np.deg2rad(np.linspace(10.0, 150.0, 48))  # from the front across the silhouette (90 degrees) and beyond
    lines = []
    for ang in np.deg2rad([0.0, 50.0, 130.0, 200.0, 290.0]):
        d = math.cos(ang) * side + math.sin(ang) * up
        lines.append(_cast_from(centre, np.cos(psi)[:, None] * view + np.sin(psi)[:, None] * d, verts, f))
    short = np.deg2rad(np.linspace(10.0, 60.0, 48))  # a line that stays on the front
    lines.append(_cast_from(centre, np.cos(short)[:, None] * view + np.sin(short)[:, None] * side, verts, f))
    lf = torch.as_tensor(np.stack([x[0] for x in lines]))
    lb = torch.as_tensor(np.stack([x[1] for x in lines]), dtype=torch.float32)
    vc = torch.as_tensor(verts, dtype=torch.float32)[None]
    p = outline_contour(vc, torch.as_tensor(f), lf, lb)[0].double().numpy()
    cosang = (p @ centre) / (np.linalg.norm(p, axis=1) * np.linalg.norm(centre))
    expected = math.asin(R / np.linalg.norm(centre))
    np.testing.assert_allclose(np.arccos(np.clip(cosang[:5], -1, 1)), expected, atol=2e-4)  # 0.12 mm at 0.6 m
    last = (verts[f[lf[5, -1]]] * lb[5, -1].double().numpy()[:, None]).sum(0)
    np.testing.assert_allclose(p[5], last, atol=1e-6)
    assert torch.equal(outline_contour(vc, torch.as_tensor(f), lf, lb), outline_contour(vc, torch.as_tensor(f), lf, lb))


def test_contour_lines_from_a_flame_embedding():
    """Without its own lines, a model's lines are its dynamic embedding, one column per point, front first."""
    from next3d_gen.flame import contour_lines
    from next3d_gen.head_model import builtin_head_model

    model = builtin_head_model()
    own_f, own_b = contour_lines(model)
    assert own_f.shape[0] == 17 and own_b.shape == (*own_f.shape, 3)
    model.contour_line_faces = model.contour_line_bary = None
    lf, lb = contour_lines(model)
    assert lf.shape == (17, 79) and lb.shape == (17, 79, 3)
    for k in range(17):
        assert sorted(lf[k].tolist()) == sorted(model.dynamic_lmk_faces[:, k].tolist())
    z = (model.v_template[model.faces[lf]][..., 2] * lb).sum(-1)
    assert np.all(z[:, 0] >= z[:, -1])


def test_generation_config_selects_the_jaw_definition():
    from next3d_gen.errors import UserError
    from next3d_gen.pipeline import SamplePipeline
    from next3d_gen.sampling import config_from_dict

    assert config_from_dict({}).model.contour_mode() == "outline"  # built-in head
    assert config_from_dict({"model": {"path": "x.pkl"}}).model.contour_mode() == "embedding"  # FLAME file
    assert config_from_dict({"model": {"path": "x.pkl", "landmark_contour": "outline"}}).model.contour_mode() == (
        "outline"
    )
    with pytest.raises(UserError, match="model.landmark_contour"):
        config_from_dict({"model": {"landmark_contour": "silhouette"}})

    class _NoImage:
        latent_dim = 0

    anns = {}
    for mode in ("embedding", "outline"):
        cfg = config_from_dict({"image_size": 64, "model": {"landmark_contour": mode}})
        pipe = SamplePipeline(cfg, renderer=_NoImage())  # type: ignore[arg-type]
        p = pipe.params(3)
        anns[mode] = pipe.label_view(p)[1]
        if mode == "embedding":  # the layer's landmarks, untouched
            out = pipe.layer(shape=p.shape[None], expression=p.expression[None], pose=p.pose[None])
            lc = camera.world_to_camera(out.landmarks, p.cam2world[None])
            torch.testing.assert_close(anns[mode].landmarks_3d, lc)
    e, o = anns["embedding"], anns["outline"]
    assert torch.equal(e.landmarks_3d[:, 17:], o.landmarks_3d[:, 17:]) and torch.equal(e.seg, o.seg)
    assert (e.landmarks_3d[:, :17] - o.landmarks_3d[:, :17]).norm(dim=-1).max() > 1e-3
