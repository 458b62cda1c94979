"""Tests of next3d_gen.raster against an independent brute-force ray/triangle reference (numpy, float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import next3d_gen.raster as raster
from next3d_gen.raster import Fragments, rasterize

EDGE_EPS = 1e-4  # barycentric margin: pixels whose ray passes this close to any triangle edge are not compared
DEPTH_TIE = 1e-4  # relative depth margin: pixels whose two nearest hits are this close are not compared


def make_K(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def brute_force(V: np.ndarray, F: np.ndarray, K: np.ndarray, H: int, W: int, near: float, cull: bool = False):
    """Reference: for every pixel centre and every triangle, intersect the pixel ray with the triangle.

    Returns face id (-1 bg), depth z, barycentrics (w.r.t. the triangle's 3 vertices), surface point and a bool
    "ambiguous" mask (ray within EDGE_EPS of an edge of a triangle it nearly hits, or a near depth tie).
    """
    jj, ii = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    d = np.stack([jj.ravel(), ii.ravel(), np.ones(H * W)], 1) @ np.linalg.inv(K).T  # rays with d_z = 1
    n_pix = H * W
    best_z = np.full(n_pix, np.inf)
    second_z = np.full(n_pix, np.inf)
    best_f = np.full(n_pix, -1)
    best_b = np.zeros((n_pix, 3))
    amb = np.zeros(n_pix, bool)
    for f, (a, b, c) in enumerate(F):
        X0, X1, X2 = V[a], V[b], V[c]
        n = np.cross(X1 - X0, X2 - X0)
        if cull and np.dot(n, X0) >= 0:  # outward normal must point towards the camera (origin)
            continue
        denom = d @ n
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.dot(n, X0) / denom  # ray parameter = camera z since d_z = 1
            P = d * t[:, None]
            # barycentrics by sub-triangle areas (signed, projected on n)
            nn = np.dot(n, n)
            b0 = np.cross(X1 - P, X2 - P) @ n / nn
            b1 = np.cross(X2 - P, X0 - P) @ n / nn
            b2 = 1.0 - b0 - b1
        bb = np.stack([b0, b1, b2], 1)
        valid = np.isfinite(t) & (t > 0)
        inside = valid & (bb.min(1) >= 0)
        # near plane: only the part of the triangle at z >= near exists
        near_edge = valid & (np.abs(t - near) < 1e-9 * max(1.0, near))
        inside &= t >= near
        close = valid & (np.abs(bb).min(1) < EDGE_EPS) & (bb.min(1) > -EDGE_EPS)
        amb |= close | (near_edge & (bb.min(1) > -EDGE_EPS))
        z = np.where(inside, t, np.inf)
        better = z < best_z
        second_z = np.where(better, best_z, np.minimum(second_z, z))
        best_z = np.where(better, z, best_z)
        best_f = np.where(better, f, best_f)
        best_b = np.where(better[:, None], bb, best_b)
    fg = best_f >= 0
    with np.errstate(invalid="ignore"):
        amb |= fg & (second_z - best_z < DEPTH_TIE * best_z)
    depth = np.where(fg, best_z, 0.0)
    point = d * depth[:, None]
    return (
        best_f.reshape(H, W),
        depth.reshape(H, W),
        best_b.reshape(H, W, 3),
        point.reshape(H, W, 3),
        amb.reshape(H, W),
    )


def random_soup(rng: np.random.Generator, n_tri: int, K: np.ndarray, H: int, W: int, zmin=1.0, zmax=5.0, size=0.3):
    """Random triangles (independent vertices) roughly in view, at various depths and sizes."""
    centres_px = rng.uniform([-2, -2], [W + 1, H + 1], size=(n_tri, 2))
    z = rng.uniform(zmin, zmax, size=n_tri)
    cam = np.stack([(centres_px[:, 0] - K[0, 2]) / K[0, 0] * z, (centres_px[:, 1] - K[1, 2]) / K[1, 1] * z, z], 1)
    scale = rng.uniform(0.2, 1.0, size=(n_tri, 1, 1)) * size * z[:, None, None] / 3
    V = cam[:, None, :] + rng.normal(size=(n_tri, 3, 3)) * scale * np.array([1.0, 1.0, 0.7])
    return V.reshape(-1, 3), np.arange(3 * n_tri).reshape(-1, 3)


def compare(fr: Fragments, b: int, V, F, K, H, W, near, cull=False, depth_tol=1e-5, min_compared=0.85):
    ref_f, ref_z, ref_b, ref_p, amb = brute_force(V, F, K, H, W, near, cull)
    fi = fr.face_index[b].numpy()
    ok = ~amb
    assert ok.mean() >= min_compared, f"too many ambiguous pixels ({1 - ok.mean():.2f})"
    np.testing.assert_array_equal(fi[ok], ref_f[ok])
    fg = ok & (ref_f >= 0)
    assert fg.sum() > 20
    z = fr.depth[b].numpy().astype(np.float64)
    np.testing.assert_allclose(z[fg], ref_z[fg], atol=depth_tol, rtol=0)
    bary = fr.barycentric[b].numpy().astype(np.float64)
    np.testing.assert_allclose(bary[fg], ref_b[fg], atol=1e-4)
    # barycentrics reconstruct the 3D surface point on the pixel ray
    corners = V[F[np.clip(fi, 0, None)]]  # (H, W, 3, 3)
    recon = (bary[..., None] * corners).sum(-2)
    np.testing.assert_allclose(recon[fg], ref_p[fg], atol=depth_tol * 4)
    # background everywhere the reference has none (ambiguous pixels included: bg stays bg or becomes edge fg)
    assert np.all(z[fi < 0] == 0) and np.all(bary[fi < 0] == 0)
    assert np.all(fi[ok & (ref_f < 0)] == -1)
    return int(fg.sum())


# ------------------------------------------------------------------------------------------------------------------
# random meshes against the brute-force reference
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_soups_match_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    H, W = 24, 31
    K = make_K(28.0 + seed, 30.0, 15.2, 11.7)
    n_tri = [20, 35, 50, 60][seed]
    meshes = [random_soup(rng, n_tri, K, H, W, size=[0.3, 0.6, 1.5, 0.3][seed]) for _ in range(2)]
    F = meshes[0][1]
    V = np.stack([m[0] for m in meshes])
    fr = rasterize(
        torch.tensor(V, dtype=torch.float32), torch.tensor(F), torch.tensor(K, dtype=torch.float32), H, W, near=0.05
    )
    assert fr.face_index.shape == (2, H, W) and fr.face_index.dtype == torch.int64
    assert fr.barycentric.shape == (2, H, W, 3) and fr.barycentric.dtype == torch.float32
    assert fr.depth.shape == (2, H, W) and fr.depth.dtype == torch.float32
    for b in range(2):
        compare(fr, b, V[b], F, K, H, W, near=0.05)


def test_large_triangles_and_chunking(monkeypatch: pytest.MonkeyPatch) -> None:
    """Boxes above the dense-bucket limit use the exact-enumeration path; tiny chunks must not change anything."""
    rng = np.random.default_rng(11)
    H, W = 37, 45
    K = make_K(40.0, 40.0, 22.0, 18.0)
    V, F = random_soup(rng, 25, K, H, W, size=2.5)
    args = (torch.tensor(V[None], dtype=torch.float32), torch.tensor(F), torch.tensor(K, dtype=torch.float32), H, W)
    fr = rasterize(*args)
    compare(fr, 0, V, F, K, H, W, near=raster.DEFAULT_NEAR)
    monkeypatch.setattr(raster, "_CHUNK", 50)
    monkeypatch.setattr(raster, "_DENSE_MAX_SIDE", 3)
    fr2 = rasterize(*args)
    assert torch.equal(fr.face_index, fr2.face_index)
    assert torch.equal(fr.depth, fr2.depth)
    assert torch.equal(fr.barycentric, fr2.barycentric)


def test_float64_input() -> None:
    rng = np.random.default_rng(5)
    H, W = 24, 31
    K = make_K(30.0, 30.0, 15.0, 12.0)
    V, F = random_soup(rng, 40, K, H, W, size=0.8)
    fr64 = rasterize(torch.tensor(V[None]), torch.tensor(F), torch.tensor(K), H, W)
    assert fr64.barycentric.dtype == torch.float64 and fr64.depth.dtype == torch.float64
    compare(fr64, 0, V, F, K, H, W, near=raster.DEFAULT_NEAR, depth_tol=1e-9)
    fr32 = rasterize(torch.tensor(V[None], dtype=torch.float32), torch.tensor(F), torch.tensor(K).float(), H, W)
    _, _, _, _, amb = brute_force(V, F, K, H, W, raster.DEFAULT_NEAR)
    assert torch.equal(fr64.face_index[0][torch.from_numpy(~amb)], fr32.face_index[0][torch.from_numpy(~amb)])


# ------------------------------------------------------------------------------------------------------------------
# conventions
# ------------------------------------------------------------------------------------------------------------------


def test_pixel_centre_convention_axis_aligned_triangle() -> None:
    """Pixel (row i, col j) is sampled at x=j, y=i; K maps camera x right / y down to columns / rows."""
    H, W = 10, 12
    f, cx, cy, z = 50.0, 5.5, 4.5, 2.0

    def cam(u: float, v: float) -> list[float]:
        return [(u - cx) * z / f, (v - cy) * z / f, z]

    # right triangle with the right angle at pixel coords (1.5, 1.5), legs along +x and +y; hypotenuse x + y = 10.3
    V = torch.tensor([[cam(1.5, 1.5), cam(8.8, 1.5), cam(1.5, 8.8)]], dtype=torch.float64)
    fr = rasterize(V, torch.tensor([[0, 1, 2]]), torch.tensor(make_K(f, f, cx, cy)), H, W)
    ii, jj = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    expected = (jj >= 2) & (ii >= 2) & (jj + ii <= 10)
    np.testing.assert_array_equal(fr.face_index[0].numpy() == 0, expected)
    assert expected.sum() == 28  # 7 + 6 + ... + 1


def test_edges_and_vertices_on_pixel_centres_are_covered() -> None:
    """Inclusive rule: centres exactly on an edge or a vertex belong to the triangle (exact arithmetic here)."""
    K = torch.eye(3, dtype=torch.float64)  # pixel coords = x/z, y/z; z = 1
    V = torch.tensor([[[0.0, 0.0, 1.0], [4.0, 0.0, 1.0], [0.0, 4.0, 1.0]]], dtype=torch.float64)
    fr = rasterize(V, torch.tensor([[0, 1, 2]]), K, 7, 7)
    ii, jj = np.meshgrid(np.arange(7), np.arange(7), indexing="ij")
    np.testing.assert_array_equal(fr.face_index[0].numpy() == 0, ii + jj <= 4)
    # barycentric weights at the vertices are one-hot
    assert fr.barycentric[0, 0, 0].tolist() == [1.0, 0.0, 0.0]
    assert fr.barycentric[0, 0, 4].tolist() == [0.0, 1.0, 0.0]
    assert fr.barycentric[0, 4, 0].tolist() == [0.0, 0.0, 1.0]


def test_no_cracks_on_a_jittered_grid_with_vertices_on_pixel_centres() -> None:
    """A mesh that tiles the view leaves no pixel uncovered, including centres exactly on shared edges."""
    rng = np.random.default_rng(3)
    H, W, n = 21, 23, 6
    gx = np.linspace(-3, W + 2, n + 1)
    gy = np.linspace(-3, H + 2, n + 1)
    X, Y = np.meshgrid(gx, gy)
    X[1:-1, 1:-1] += rng.uniform(-1.5, 1.5, size=(n - 1, n - 1))
    Y[1:-1, 1:-1] += rng.uniform(-1.5, 1.5, size=(n - 1, n - 1))
    X[2, 2], Y[2, 2] = 5.0, 6.0  # one vertex and several edges through pixel centres
    X, Y = np.round(X * 2) / 2, np.round(Y * 2) / 2  # half-integers: many exact edge hits
    Z = 2.0 + 0.3 * rng.uniform(size=X.shape)
    f, c = 1.0, 0.0
    P = np.stack([(X - c) * Z / f, (Y - c) * Z / f, Z], -1).reshape(-1, 3)
    faces = []
    for r in range(n):
        for q in range(n):
            a, b, cc, d = r * (n + 1) + q, r * (n + 1) + q + 1, (r + 1) * (n + 1) + q, (r + 1) * (n + 1) + q + 1
            faces += [(a, cc, b), (b, cc, d)] if (r + q) % 2 else [(a, cc, d), (a, d, b)]
    Kt = torch.tensor(make_K(f, f, c, c))
    for dtype in (torch.float32, torch.float64):
        fr = rasterize(torch.tensor(P[None], dtype=dtype), torch.tensor(faces), Kt.to(dtype), H, W)
        assert bool((fr.face_index >= 0).all())
        s = fr.barycentric.sum(-1)
        assert torch.allclose(s, torch.ones_like(s))
        assert bool((fr.barycentric >= 0).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_no_cracks_on_shared_edges_through_pixel_centres_with_rounding(dtype: torch.dtype) -> None:
    """Quads split along diagonals that pass (mathematically) through many pixel centres, with inexact coordinates.

    Whatever the rounding, exactly one of the two triangles must claim each centre on the shared edge, or both.
    """
    H = W = 40
    f, cx, cy = 37.3, 19.1, 20.7
    Kt = torch.tensor(make_K(f, f, cx, cy), dtype=dtype)
    verts, faces = [], []
    rng = np.random.default_rng(0)
    for slope in (1.0, -1.0, 2.0, 1.0 / 3.0, -3.0):
        for offset in (-0.7, 0.3, 1.3):
            # shared edge from A to C on the line y = slope * (x - 20) + 20 (through integer points for these slopes)
            xa, xc = -3.1 + offset, 43.3 + offset
            A = (xa, slope * (xa - 20) + 20)
            C = (xc, slope * (xc - 20) + 20)
            B = (C[0] + 60.7, A[1] - 60.3)  # far away on either side: the two triangles tile a band around A-C
            D = (A[0] - 60.9, C[1] + 61.1)
            zs = rng.uniform(1.3, 2.9, size=4)
            base = len(verts)
            for (u, v), z in zip((A, B, C, D), zs, strict=True):
                verts.append([(u - cx) * z / f, (v - cy) * z / f, z])
            faces += [(base, base + 1, base + 2), (base, base + 2, base + 3)]
    V = torch.tensor(verts, dtype=dtype)
    F = torch.tensor(faces)
    slopes = [sl for sl in (1.0, -1.0, 2.0, 1.0 / 3.0, -3.0) for _ in range(3)]
    n_checked = 0
    for i, slope in enumerate(slopes):  # one quad at a time: every pixel centre on the shared edge is covered
        fr = rasterize(V[None], F[2 * i : 2 * i + 2], Kt, H, W)
        for x in range(W):
            y = slope * (x - 20) + 20
            if abs(y - round(y)) < 1e-9 and 0 <= round(y) < H:
                assert int(fr.face_index[0, round(y), x]) >= 0, f"crack at ({x}, {round(y)}) in quad {i}"
                n_checked += 1
    assert n_checked > 300


def test_near_plane_clipping_matches_brute_force() -> None:
    rng = np.random.default_rng(7)
    H, W = 24, 31
    K = make_K(20.0, 20.0, 15.0, 11.5)
    near = 1.0
    V, F = random_soup(rng, 40, K, H, W, zmin=0.2, zmax=2.0, size=1.5)
    V[:3, 2] = [-0.5, 1.5, 1.8]  # one triangle with a vertex behind the camera
    fr = rasterize(
        torch.tensor(V[None], dtype=torch.float32), torch.tensor(F), torch.tensor(K).float(), H, W, near=near
    )
    n = compare(fr, 0, V, F, K, H, W, near=near)
    assert n > 50
    z = fr.depth[0][fr.face_index[0] >= 0]
    assert bool((z >= near * (1 - 1e-6)).all())
    # at least one pixel shows a clipped face (a face with a vertex in front of the near plane)
    zf = V[F][..., 2]
    crossing = np.nonzero((zf.min(1) < near) & (zf.max(1) >= near))[0]
    assert np.isin(fr.face_index[0].numpy(), crossing).any()


def test_everything_behind_near_plane_or_no_faces_is_background() -> None:
    K = torch.tensor(make_K(10.0, 10.0, 4.0, 3.0), dtype=torch.float32)
    V = torch.tensor([[[0.0, 0.0, 0.5], [1.0, 0.0, 0.5], [0.0, 1.0, -0.5]]])
    for verts, faces, near in ((V, torch.tensor([[0, 1, 2]]), 0.6), (V, torch.zeros(0, 3, dtype=torch.long), 0.1)):
        fr = rasterize(verts, faces, K, 6, 8, near=near)
        assert fr.face_index.shape == (1, 6, 8) and bool((fr.face_index == -1).all())
        assert bool((fr.depth == 0).all()) and bool((fr.barycentric == 0).all())
        assert not bool(fr.mask.any())


# ------------------------------------------------------------------------------------------------------------------
# back faces / winding
# ------------------------------------------------------------------------------------------------------------------


def octahedron(scale: float, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    V = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float) * scale + centre
    F = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    n = np.cross(V[F[:, 1]] - V[F[:, 0]], V[F[:, 2]] - V[F[:, 0]])
    assert np.all(np.einsum("ij,ij->i", n, V[F].mean(1) - centre) > 0)  # CCW seen from outside
    return V, F


def test_backface_culling() -> None:
    H, W = 24, 31
    K = make_K(30.0, 30.0, 15.0, 11.5)
    V, F = octahedron(0.3, np.array([0.05, -0.02, 2.0]))
    Vt = torch.tensor(V[None], dtype=torch.float32)
    Kt = torch.tensor(K, dtype=torch.float32)
    # closed convex mesh: culling back faces does not change the image
    a = rasterize(Vt, torch.tensor(F), Kt, H, W, cull_backfaces=False)
    b = rasterize(Vt, torch.tensor(F), Kt, H, W, cull_backfaces=True)
    compare(b, 0, V, F, K, H, W, near=raster.DEFAULT_NEAR, cull=True)
    _, _, _, _, amb = brute_force(V, F, K, H, W, raster.DEFAULT_NEAR)
    ok = torch.from_numpy(~amb)
    assert torch.equal(a.face_index[0][ok], b.face_index[0][ok])
    # the visible faces are exactly those with outward normal towards the camera (z component < 0 here)
    visible = set(b.face_index[0][b.face_index[0] >= 0].tolist())
    n = np.cross(V[F[:, 1]] - V[F[:, 0]], V[F[:, 2]] - V[F[:, 0]])
    assert visible == set(np.nonzero(np.einsum("ij,ij->i", n, V[F[:, 0]]) < 0)[0].tolist())
    # inside-out winding: culling now keeps the far side (its inward normals face the camera); without culling the
    # near side is seen, as before
    Fr = F[:, ::-1].copy()
    c = rasterize(Vt, torch.tensor(Fr), Kt, H, W, cull_backfaces=True)
    compare(c, 0, V, Fr, K, H, W, near=raster.DEFAULT_NEAR, cull=True)
    far = set(c.face_index[0][c.face_index[0] >= 0].tolist())
    assert len(far) >= 3 and far.isdisjoint(visible)
    d = rasterize(Vt, torch.tensor(Fr), Kt, H, W, cull_backfaces=False)
    assert torch.equal(d.face_index[0][ok], a.face_index[0][ok])


def test_front_face_has_negative_signed_area_in_pixels() -> None:
    """The documented winding: front faces have (x1-x0)(y2-y0) - (x2-x0)(y1-y0) < 0 in pixel coordinates."""
    K = torch.tensor(make_K(10.0, 10.0, 4.0, 4.0), dtype=torch.float64)
    # pixel coordinates (x, y): (1, 1) -> (1, 6) -> (6, 1): signed area (0)(0) - (5)(5) < 0
    px = [(1.0, 1.0), (1.0, 6.0), (6.0, 1.0)]
    V = torch.tensor([[[(x - 4.0) / 10.0, (y - 4.0) / 10.0, 1.0] for x, y in px]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2]])
    assert bool(rasterize(V, faces, K, 9, 9, cull_backfaces=True).face_index[0, 2, 2] == 0)
    assert bool((rasterize(V, faces[:, [0, 2, 1]], K, 9, 9, cull_backfaces=True).face_index == -1).all())
    assert bool(rasterize(V, faces[:, [0, 2, 1]], K, 9, 9).face_index[0, 2, 2] == 0)


# ------------------------------------------------------------------------------------------------------------------
# API details
# ------------------------------------------------------------------------------------------------------------------


def test_K_broadcast_nonsquare_and_input_errors() -> None:
    rng = np.random.default_rng(9)
    H, W = 17, 29
    K = make_K(25.0, 22.0, 13.0, 9.0)
    V, F = random_soup(rng, 20, K, H, W, size=0.8)
    Vt = torch.tensor(np.stack([V, V[::-1].copy()]), dtype=torch.float32)  # (2, V, 3), second mesh differs
    a = rasterize(Vt, torch.tensor(F, dtype=torch.int32), torch.tensor(K).float(), H, W)
    b = rasterize(Vt, torch.tensor(F), torch.tensor(K).float().expand(2, 3, 3), H, W, backend="torch")
    assert torch.equal(a.face_index, b.face_index) and torch.equal(a.depth, b.depth)
    compare(a, 1, V[::-1].copy(), F, K, H, W, near=raster.DEFAULT_NEAR)
    with pytest.raises(ValueError):
        rasterize(Vt[0], torch.tensor(F), torch.tensor(K).float(), H, W)
    with pytest.raises(ValueError):
        rasterize(Vt, torch.tensor(F) + 1000, torch.tensor(K).float(), H, W)
    with pytest.raises(ValueError):
        rasterize(Vt, torch.tensor(F), torch.tensor(K).float(), H, W, near=0.0)
    with pytest.raises(ValueError):
        rasterize(Vt, torch.tensor(F), torch.tensor(K).float(), H, W, backend="opengl")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        rasterize(Vt, torch.tensor(F), torch.eye(3).expand(3, 3, 3), H, W)


def test_pytorch3d_backend_matches_torch_backend() -> None:
    pytest.importorskip("pytorch3d")
    rng = np.random.default_rng(4)
    H, W = 24, 31
    K = make_K(30.0, 30.0, 15.0, 11.5)
    V, F = random_soup(rng, 40, K, H, W, zmin=0.5, zmax=3.0, size=1.0)
    args = (torch.tensor(V[None], dtype=torch.float32), torch.tensor(F), torch.tensor(K).float(), H, W)
    for cull in (False, True):
        a = rasterize(*args, near=0.7, cull_backfaces=cull, backend="torch")
        b = rasterize(*args, near=0.7, cull_backfaces=cull, backend="pytorch3d")
        _, _, _, _, amb = brute_force(V, F, K, H, W, 0.7, cull)
        ok = torch.from_numpy(~amb)[None]
        assert torch.equal(a.face_index[ok], b.face_index[ok])
        fg = ok & (a.face_index >= 0)
        assert torch.allclose(a.depth[fg], b.depth[fg], atol=1e-4)
        assert torch.allclose(a.barycentric[fg], b.barycentric[fg], atol=1e-3)
