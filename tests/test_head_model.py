"""Tests of the built-in procedural head model (next3d_gen.head_model)."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from next3d_gen.camera import intrinsics_from_fov, orbit_camera, project, world_to_camera
from next3d_gen.flame import FlameLayer, contour_yaw_bin
from next3d_gen.head_model import (
    ASSET_NAME,
    EXPRESSION_COMPONENT_NAMES,
    EYE_RADIUS,
    SHAPE_COMPONENT_NAMES,
    SHAPE_COMPONENT_STD,
    builtin_head_model,
    head_info,
    load_builtin_npz,
    save_model_npz,
)
from next3d_gen.labels import SYNTH

raster = pytest.importorskip("next3d_gen.raster")

L = SYNTH.id


@pytest.fixture(scope="module")
def model():
    return builtin_head_model()


@pytest.fixture(scope="module")
def info():
    return head_info()


@pytest.fixture(scope="module")
def layer(model):
    return FlameLayer(model)


def _render(model, verts: torch.Tensor, yaw: float, pitch: float, size: int = 160, radius: float = 0.9):
    """Rasterize (B, V, 3) world vertices from an orbit camera; returns fragments, K, cam2world."""
    B = verts.shape[0]
    pivot = torch.tensor([0.0, -0.01, 0.0])
    c2w = orbit_camera(torch.full((B,), float(yaw)), torch.full((B,), float(pitch)), radius, pivot)
    K = intrinsics_from_fov(17.0 * 0.9 / radius, size, size).expand(B, 3, 3)
    vc = world_to_camera(verts.float(), c2w)
    fr = raster.rasterize(vc, torch.as_tensor(model.faces), K, size, size)
    return fr, K, c2w, vc


def _labels_image(model, fr) -> torch.Tensor:
    lab = torch.as_tensor(model.face_labels.astype(np.int64))
    return torch.where(fr.face_index >= 0, lab[fr.face_index.clamp(min=0)], torch.zeros_like(fr.face_index))


# ------------------------------------------------------------------------------------------------------------------
# format
# ------------------------------------------------------------------------------------------------------------------
def test_counts_shapes_and_names(model):
    model.validate("builtin")
    assert 5000 <= model.num_vertices <= 15000
    assert model.num_shape >= 50 and model.num_shape == len(SHAPE_COMPONENT_NAMES) == len(SHAPE_COMPONENT_STD)
    assert model.num_expression >= 20 and model.num_expression == len(EXPRESSION_COMPONENT_NAMES)
    assert model.v_template.dtype == np.float32 and model.faces.dtype == np.int64
    assert model.uv_coords is not None and model.uv_faces is not None and model.face_labels is not None
    assert model.uv_coords.min() >= 0.0 and model.uv_coords.max() <= 1.0
    assert model.face_labels.dtype == np.uint8
    np.testing.assert_array_equal(model.parents, [-1, 0, 1, 1, 1])
    assert model.posedirs.shape == (model.num_vertices, 3, 36)
    # FLAME-like size and placement (metres, y up, z front)
    v = model.v_template
    skin = v[head_info().vertex_part == 0]
    head = skin[skin[:, 1] > -0.03]
    width = np.ptp(head[np.abs(head[:, 1] - 0.0) < 0.04, 0])
    assert 0.14 < width < 0.20  # includes the ears
    assert 0.18 < np.ptp(skin[:, 2]) < 0.24
    assert 0.22 < skin[:, 1].max() - skin[skin[:, 2] > 0.04, 1].min() < 0.25  # crown to chin
    assert 0.08 < skin[:, 2].max() < 0.12  # nose tip


def test_builtin_is_cached_and_copied():
    a = builtin_head_model()
    b = builtin_head_model()
    assert a is not b
    a.v_template[:] = 0
    np.testing.assert_array_equal(b.v_template, builtin_head_model().v_template)
    assert np.abs(builtin_head_model().v_template).max() > 0.05


def test_every_foreground_class_present(model):
    present = set(np.unique(model.face_labels).tolist())
    assert present == set(range(1, 20))


def test_closed_oriented_manifold_and_outward(model, info):
    f = model.faces
    directed = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    counts = Counter(map(tuple, directed.tolist()))
    assert max(counts.values()) == 1  # consistent orientation: no directed edge used twice
    assert all((b, a) in counts for (a, b) in counts)  # closed: every edge has its twin
    v = model.v_template.astype(np.float64)

    def volume(sel):
        t = v[f[sel]]
        return np.einsum("fi,fi->f", t[:, 0], np.cross(t[:, 1], t[:, 2])).sum() / 6.0

    assert volume(np.ones(len(f), bool)) > 0.003  # a head-sized positive volume (m^3)
    for part in (4, 5):  # eyeballs: closed separate spheres, outward
        vol = volume(info.face_part == part)
        assert vol == pytest.approx(4 / 3 * math.pi * EYE_RADIUS**3, rel=0.1)
    # main surface = skin + bags: outward normals on the skin point away from the head centre on average
    t = v[f[info.face_part == 0]]
    n = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
    assert ((n * (t.mean(1) - [0, -0.02, -0.01])).sum(1) > 0).mean() > 0.97


def test_uv_islands_contiguous(model):
    uvf = model.uv_faces
    for name in (
        "right_eyebrow",
        "left_eyebrow",
        "upper_lip",
        "lower_lip",
        "nose",
        "right_eyeball",
        "left_eyeball",
        "inner_mouth",
        "left_ear",
        "forehead",
    ):
        sel = np.where(model.face_labels == L(name))[0]
        # union-find over faces sharing a uv edge
        parent = {int(i): int(i) for i in sel}

        def find(a, parent=parent):
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            return a

        edge_owner = {}
        for fi in sel:
            a, b, c = uvf[fi]
            for e in ((a, b), (b, c), (c, a)):
                key = (min(e), max(e))
                if key in edge_owner:
                    parent[find(int(fi))] = find(edge_owner[key])
                else:
                    edge_owner[key] = int(fi)
        roots = {find(int(i)) for i in sel}
        assert len(roots) == 1, f"{name}: {len(roots)} UV islands"


# ------------------------------------------------------------------------------------------------------------------
# components
# ------------------------------------------------------------------------------------------------------------------
def test_shape_components_orthogonal_and_scaled(model):
    D = model.shapedirs.astype(np.float64).reshape(-1, model.num_shape)
    G = D.T @ D
    d = np.sqrt(np.diag(G))
    C = G / np.outer(d, d)
    np.testing.assert_allclose(C, np.eye(model.num_shape), atol=2e-3)
    max_disp = np.linalg.norm(model.shapedirs, axis=1).max(0)
    np.testing.assert_allclose(max_disp, SHAPE_COMPONENT_STD, rtol=2e-3)
    assert max(SHAPE_COMPONENT_STD) < 0.006  # +-2 sd moves no vertex more than 12 mm


def _tri_normals(v, f):
    t = v[f]
    return np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])


def test_no_inverted_or_collapsed_face_triangles(model, info):
    f = model.faces[info.face_part == 0]
    ref = model.v_template.astype(np.float64)
    n0 = _tri_normals(ref, f)
    a0 = np.linalg.norm(n0, axis=1)
    for dirs, names in ((model.shapedirs, SHAPE_COMPONENT_NAMES), (model.exprdirs, EXPRESSION_COMPONENT_NAMES)):
        for k, name in enumerate(names):
            for s in (-2.0, 2.0):
                n = _tri_normals(ref + s * dirs[:, :, k], f)
                a = np.linalg.norm(n, axis=1)
                cos = (n * n0).sum(1) / (a * a0)
                turned = math.degrees(math.acos(min(max(cos.min(), -1.0), 1.0)))
                assert cos.min() > 0.2, f"{name} at {s}: a triangle turned by {turned:.0f} deg"
                assert (a / a0).min() > 0.1, f"{name} at {s}: a triangle collapsed to {(a / a0).min():.3f}"


def test_components_are_localised_and_nonzero(model, info):
    for dirs in (model.shapedirs, model.exprdirs):
        assert (np.linalg.norm(dirs, axis=1).max(0) > 5e-4).all()
    # mouth cut stays closed under every identity / expression component
    up, lo = info.mouth_upper[1:-1], info.mouth_lower[1:-1]
    np.testing.assert_array_equal(model.shapedirs[up], model.shapedirs[lo])
    np.testing.assert_array_equal(model.exprdirs[up], model.exprdirs[lo])
    # eyeballs move rigidly with identity (translation + isotropic scale about the centre)
    for part in (4, 5):
        ids = np.where(info.vertex_part == part)[0]
        for k in range(model.num_shape):
            d = model.shapedirs[ids, :, k].astype(np.float64)
            p = model.v_template[ids].astype(np.float64)
            for c in range(3):
                A = np.stack([np.ones(len(ids)), p[:, c] - p[:, c].mean()], 1)
                coef, *_ = np.linalg.lstsq(A, d[:, c], rcond=None)
                assert np.abs(A @ coef - d[:, c]).max() < 2e-5


# ------------------------------------------------------------------------------------------------------------------
# joints, skinning, jaw
# ------------------------------------------------------------------------------------------------------------------
def test_skinning_and_joints(model, info, layer):
    W = model.weights
    np.testing.assert_allclose(W.sum(1), 1.0, atol=1e-5)
    assert W.min() >= 0
    np.testing.assert_allclose(model.j_regressor.sum(1), 1.0, atol=1e-5)
    for part, joint in ((4, 4), (5, 3)):
        ids = info.vertex_part == part
        np.testing.assert_allclose(W[ids, joint], 1.0)
    out = layer(pose=torch.zeros(1, 15))
    J = out.joints[0].numpy()
    np.testing.assert_allclose(J[3], info.eye_centres[1], atol=1e-4)  # left eye joint = +x eyeball
    np.testing.assert_allclose(J[4], info.eye_centres[0], atol=1e-4)
    assert J[3, 0] > 0.02 and J[4, 0] < -0.02
    assert J[2, 1] < J[3, 1] and J[1, 1] < J[2, 1] and J[0, 1] < J[1, 1]  # root < neck < jaw < eyes (height)
    # identity moves the joints (regressor over vertices)
    s = torch.zeros(1, model.num_shape)
    s[0, SHAPE_COMPONENT_NAMES.index("eye_spacing")] = 2.0
    J2 = layer(shape=s).joints[0].numpy()
    assert J2[3, 0] - J2[4, 0] > J[3, 0] - J[4, 0] + 1e-3


def test_jaw_opening_moves_only_jaw_vertices_and_opens_lips(model, info, layer):
    pose = torch.zeros(2, 15)
    pose[1, 6] = 0.3
    out = layer(pose=pose)
    d = (out.vertices[1] - out.vertices[0]).norm(dim=1).numpy()
    W = model.weights
    still = (W[:, 2] == 0) & (W[:, 0] + W[:, 1] > 0.999)
    assert d[still].max() < 1e-6
    moved = W[:, 2] > 0.5
    assert np.median(d[moved]) > 0.005
    up, lo = info.mouth_upper[1:-1], info.mouth_lower[1:-1]
    v = out.vertices[1].numpy()
    gap = v[up, 1] - v[lo, 1]
    assert gap.max() > 0.012 and gap.min() > -1e-4
    # the open mouth shows the inner-mouth cavity from the front, the closed one does not
    fr, *_ = _render(model, out.vertices, 0, 0)
    lab = _labels_image(model, fr)
    assert (lab[0] == L("inner_mouth")).sum() <= 3
    assert (lab[1] == L("inner_mouth")).sum() > 40
    assert (lab[1] == L("lower_lip")).sum() > 20


# ------------------------------------------------------------------------------------------------------------------
# eyes
# ------------------------------------------------------------------------------------------------------------------
def test_blink_closes_lids_without_touching_the_eyeball(model, info, layer):
    E = model.num_expression
    kl, kr = EXPRESSION_COMPONENT_NAMES.index("blink_left"), EXPRESSION_COMPONENT_NAMES.index("blink_right")
    amounts = [-2.0, 0.0, 0.5, 1.0, 1.5, 2.0]
    e = torch.zeros(len(amounts), E)
    e[:, kl] = torch.tensor(amounts)
    e[:, kr] = torch.tensor(amounts)
    out = layer(expression=e)
    v = out.vertices.numpy().astype(np.float64)
    f = model.faces
    not_eyeball = ~np.isin(info.face_part, (4, 5))
    n = 8  # barycentric sampling of every triangle near an eye
    bary = np.array([(i / n, j / n, (n - i - j) / n) for i in range(n + 1) for j in range(n + 1 - i)])
    for b in range(len(amounts)):
        for k in range(2):
            c = info.eye_centres[k]
            # every non-eyeball triangle (sampled at corners, edge midpoints and centroid) stays outside the eyeball
            t = v[b][f[not_eyeball]]
            near = np.linalg.norm(t.mean(1) - c, axis=1) < 0.03
            pts = np.einsum("sk,fkc->fsc", bary, t[near]).reshape(-1, 3)
            assert np.linalg.norm(pts - c, axis=1).min() > EYE_RADIUS + 5e-5, f"blink {amounts[b]}"
    fr, *_ = _render(model, out.vertices, 0, 0, size=200)
    lab = _labels_image(model, fr)
    eyeball = (lab == L("left_eyeball")) | (lab == L("right_eyeball"))
    counts = eyeball.flatten(1).sum(1).tolist()
    assert counts[1] > 40  # open at rest
    assert counts[0] > counts[1]  # -2 opens wider
    assert counts[2] >= counts[3] >= counts[4] >= counts[5]
    assert counts[5] <= 2  # +2 closes the eye
    # the margins meet at +2
    for k in range(2):
        up, lo = info.eye_upper[k][1:-1], info.eye_lower[k][1:-1]
        assert np.linalg.norm(v[-1][up] - v[-1][lo], axis=1).max() < 2e-4


def test_blink_is_per_eye(model, info, layer):
    e = torch.zeros(1, model.num_expression)
    e[0, EXPRESSION_COMPONENT_NAMES.index("blink_left")] = 2.0
    d = (layer(expression=e).vertices[0] - layer().vertices[0]).norm(dim=1).numpy()
    v = model.v_template
    assert d[v[:, 0] < -0.01].max() < 1e-7
    assert d[v[:, 0] > 0.01].max() > 0.004


# ------------------------------------------------------------------------------------------------------------------
# landmarks
# ------------------------------------------------------------------------------------------------------------------
EXPECTED = {
    **{i: {"right_eyebrow", "brow_band", "right_eye_region"} for i in range(17, 22)},
    **{i: {"left_eyebrow", "brow_band", "left_eye_region"} for i in range(22, 27)},
    27: {"nose", "glabella"},
    **{i: {"nose"} for i in range(28, 36)},
    **{i: {"right_eye_region", "right_eyeball"} for i in range(36, 42)},
    **{i: {"left_eye_region", "left_eyeball"} for i in range(42, 48)},
    **{i: {"upper_lip", "lower_lip", "inner_mouth"} for i in range(48, 68)},
}


def test_static_landmarks_symmetric(layer):
    lm = layer().landmarks[0].numpy()
    pairs = [(17, 26), (21, 22), (31, 35), (36, 45), (39, 42), (37, 44), (41, 46), (48, 54), (50, 52), (59, 55)]
    for a, b in pairs:
        np.testing.assert_allclose(lm[a] * [-1, 1, 1], lm[b], atol=1.5e-3, err_msg=f"{a}/{b}")
    assert lm[30, 2] == pytest.approx(lm[:, 2].max(), abs=1e-3)  # nose tip is the most frontal landmark
    assert lm[36, 0] < lm[39, 0] < 0 < lm[42, 0] < lm[45, 0]  # subject's right eye on -x, outer corners outside
    assert lm[8, 1] < lm[57, 1] < lm[51, 1] < lm[33, 1] < lm[30, 1] < lm[27, 1]
    # 300W's inner-lip corners sit inside the mouth corners, and the upper lip's peaks close to the middle
    assert lm[48, 0] + 0.002 < lm[60, 0] < lm[62, 0] < lm[64, 0] < lm[54, 0] - 0.002
    assert lm[48, 0] < lm[49, 0] < lm[50, 0] < lm[51, 0] and lm[50, 0] - lm[49, 0] > lm[51, 0] - lm[50, 0]


def test_landmarks_land_on_their_regions(model, layer):
    g = torch.Generator().manual_seed(0)
    n = 12
    yaw = (torch.rand(n, generator=g) - 0.5) * 80
    pitch = (torch.rand(n, generator=g) - 0.5) * 40
    out = layer(pose=torch.zeros(n, 15))
    size = 256
    c2w = orbit_camera(yaw, pitch, 0.9, torch.tensor([0.0, -0.01, 0.0]))
    K = intrinsics_from_fov(17.0, size, size).expand(n, 3, 3)
    vc = world_to_camera(out.vertices, c2w)
    fr = raster.rasterize(vc, torch.as_tensor(model.faces), K, size, size)
    lab = _labels_image(model, fr)
    lc = world_to_camera(out.landmarks, c2w)
    px = project(lc, K).round().long()
    checked = failed = 0
    fails = []
    for b in range(n):
        for i, names in EXPECTED.items():
            x, y = px[b, i].tolist()
            if not (1 <= x < size - 1 and 1 <= y < size - 1):
                continue
            if 0 < fr.depth[b, y, x] < lc[b, i, 2] - 0.003:  # hidden behind the head
                continue
            patch = lab[b, y - 1 : y + 2, x - 1 : x + 2].flatten().tolist()
            checked += 1
            if not {SYNTH.classes[c] for c in patch} & names:
                failed += 1
                fails.append((b, i, [SYNTH.classes[c] for c in set(patch)]))
    assert checked > 0.7 * n * len(EXPECTED)
    assert failed <= 0.02 * checked, fails[:10]


def test_contour_rows_switch_with_yaw_and_follow_the_silhouette(model, layer):
    yaws = [-39.0, -30.0, -12.0, -4.0, 0.0, 4.0, 12.0, 30.0, 39.0]  # 'a' in degrees: head rotated by -a about y
    B = len(yaws)
    pose = torch.zeros(B, 15)
    pose[:, 4] = -torch.tensor(yaws).deg2rad()
    out = layer(pose=pose)
    rows = out.contour_bin.tolist()
    assert rows == contour_yaw_bin(torch.tensor(yaws)).tolist()
    assert len(set(rows)) == B
    assert not np.array_equal(model.dynamic_lmk_faces[rows[0]], model.dynamic_lmk_faces[rows[-1]])
    # a distant narrow-FOV camera in front (the table is defined for orthographic views)
    size = 256
    c2w = orbit_camera(torch.zeros(B), torch.zeros(B), 4.0, torch.tensor([0.0, -0.01, 0.0]))
    K = intrinsics_from_fov(3.83, size, size).expand(B, 3, 3)
    vc = world_to_camera(out.vertices, c2w)
    faces = torch.as_tensor(model.faces)
    fr = raster.rasterize(vc, faces, K, size, size)
    lab = _labels_image(model, fr)
    lc = world_to_camera(out.landmarks[:, :17], c2w)
    px = project(lc, K).round().long()
    for b, a in enumerate(yaws):
        f = faces[torch.as_tensor(model.dynamic_lmk_faces[rows[b]])]
        t = vc[b][f]
        n = torch.linalg.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])
        facing = (n * -t.mean(1)).sum(1) / (n.norm(dim=1) * t.mean(1).norm(dim=1))
        assert facing.min() > -0.05, f"yaw {a}: a contour point on a back-facing triangle"
        for i in range(17):
            x, y = px[b, i].tolist()
            near = lab[b, y - 1 : y + 2, x - 1 : x + 2]
            assert (near == L("face")).any(), f"yaw {a}: contour point {i} is not on the visible face"
            ring = lab[b, y - 2 : y + 3, x - 2 : x + 3]
            assert (ring != L("face")).any(), f"yaw {a}: contour point {i} is inside the face, not on its outline"
        # the turned-away side follows the silhouette against the background / hair
        away = range(0, 5) if a >= 30 else range(12, 17) if a <= -30 else range(0)
        for i in away:
            x, y = px[b, i].tolist()
            patch = lab[b, y - 3 : y + 4, x - 3 : x + 4]
            assert ((patch == 0) | (patch == L("scalp"))).any(), f"yaw {a}: point {i} is off the silhouette"
    # jaw contour of a frontal view: left/right points mirror each other, the chin point is the lowest
    lm0 = out.landmarks[yaws.index(0.0), :17].numpy()
    np.testing.assert_allclose(lm0[::-1, :2] * [-1, 1], lm0[:, :2], atol=3e-3)
    assert lm0[8, 1] == pytest.approx(lm0[:, 1].min(), abs=2e-3)


def _outline_points(mask: np.ndarray, depth: np.ndarray, step: float = 0.005) -> np.ndarray:
    """(N, 2) points (x, y) of the outline of a rendered head, from its raster alone: the midpoints between each
    foreground pixel centre and a 4-neighbour that is background or at least ``step`` metres deeper (the head's
    silhouette against the background and its occluding contours, e.g. the jaw in front of the neck)."""
    d = np.where(mask, depth, np.inf)
    pts = []
    for axis in (0, 1):
        a, c = (d[:-1], d[1:]) if axis == 0 else (d[:, :-1], d[:, 1:])
        edge = (np.isfinite(a) & (c > a + step)) | (np.isfinite(c) & (a > c + step))
        ys, xs = np.nonzero(edge)
        pts.append(np.stack([xs + 0.5 * axis, ys + 0.5 * (1 - axis)], 1))
    return np.concatenate(pts)


def test_outline_contour_lies_on_the_silhouette_of_turned_heads(model, layer):
    """300W's definition: on a turned head the far-side jaw points lie on the outline of the rendered head."""
    from next3d_gen.annotate import render_labels

    g = torch.Generator().manual_seed(0)
    yaws = [30.0, 40.0, 50.0, 60.0, -30.0, -40.0, -50.0, -60.0]
    B = len(yaws)
    shape = (torch.rand(B, model.num_shape, generator=g) - 0.5) * 2
    expression = torch.rand(B, model.num_expression, generator=g) - 0.5
    pitch = (torch.rand(B, generator=g) - 0.5) * 20
    out = layer(shape=shape, expression=expression, pose=torch.zeros(B, 15))
    size = 256
    c2w = orbit_camera(torch.tensor(yaws), pitch, 0.9, torch.tensor([0.0, -0.01, 0.0]))
    K = intrinsics_from_fov(17.0, size, size).expand(B, 3, 3)
    faces = torch.as_tensor(model.faces)
    _, emb = render_labels(out.vertices, faces, K, c2w, size, size, out.landmarks, model)
    _, ann = render_labels(out.vertices, faces, K, c2w, size, size, out.landmarks, model, contour="outline")
    torch.testing.assert_close(ann.landmarks_3d[:, 17:], emb.landmarks_3d[:, 17:], rtol=0, atol=0)  # static kept
    assert torch.equal(ann.seg, emb.seg)
    worst, table_off = [], []
    for b in range(B):
        outline = _outline_points(ann.mask[b].numpy(), ann.depth[b].numpy())
        camera_x = float(c2w[b, 0, 3])
        far = range(0, 8) if camera_x > 0 else range(9, 17)  # the side of the subject turned away from the camera
        for i in far:
            if ann.landmarks_visible[b, i]:
                x, y = ann.landmarks_2d[b, i].tolist()
                worst.append((float(np.hypot(outline[:, 0] - x, outline[:, 1] - y).min()), yaws[b], i))
            # for contrast, the yaw table (head pose 0 here, so its frontal row): hidden or inside the face
            x, y = emb.landmarks_2d[b, i].tolist()
            table_off.append(float(np.hypot(outline[:, 0] - x, outline[:, 1] - y).min()) > 1.0)
    assert len(worst) >= 0.7 * B * 8
    assert max(worst)[0] <= 1.0, sorted(worst)[-5:]
    assert np.mean(table_off) > 0.8  # the check tells the two definitions apart


def test_contour_lines_stay_on_the_face_in_front_of_the_ears(model):
    """Every candidate is on a ``face`` triangle, no further round than 88 degrees of longitude (never behind an
    ear, where the face label continues), and consecutive candidates are close (a line, not scattered points)."""
    lf, lb = model.contour_line_faces, model.contour_line_bary
    assert lf.shape[0] == 17 and lb.shape == (*lf.shape, 3)
    assert np.all(model.face_labels[lf] == L("face"))
    v = model.v_template.astype(np.float64)
    p = (v[model.faces[lf]] * lb[..., None]).sum(2)  # (17, M, 3)
    assert np.degrees(np.abs(np.arctan2(p[..., 0], p[..., 2]))).max() <= 88.5
    assert np.linalg.norm(np.diff(p, axis=1), axis=-1).max() < 0.004
    assert np.all(p[:, 0, 2] > p[:, -1, 2])  # front first


def test_outline_contour_frontal_symmetric_and_deterministic(model, layer):
    from next3d_gen.annotate import outline_contour

    out = layer(pose=torch.zeros(1, 15))
    c2w = orbit_camera(torch.zeros(1), torch.zeros(1), 1.5, torch.tensor([0.0, -0.03, 0.0]))
    vc = world_to_camera(out.vertices, c2w)
    faces = torch.as_tensor(model.faces)
    lines = (torch.as_tensor(model.contour_line_faces), torch.as_tensor(model.contour_line_bary))
    a = outline_contour(vc, faces, *lines)[0].numpy()
    b = outline_contour(vc.clone(), faces, *lines)[0].numpy()
    np.testing.assert_array_equal(a, b)
    # frontal camera on the head's symmetry plane: points i and 16 - i mirror each other about x = 0
    np.testing.assert_allclose(a[::-1, :2] * [-1, 1], a[:, :2], atol=1e-3)
    assert a[8, 1] == pytest.approx(a[:, 1].max(), abs=1e-3)  # the chin is the lowest point (camera y down)
    # point 0 at the height of the outer eye corner (300W), the others below it, in order down to the chin
    eye = world_to_camera(out.landmarks[:, [36, 45]], c2w)[0].numpy()
    assert abs(a[0, 1] - eye[0, 1]) < 0.01 and np.all(np.diff(a[:9, 1]) > 0)


# ------------------------------------------------------------------------------------------------------------------
# asset
# ------------------------------------------------------------------------------------------------------------------
def test_fresh_build_equals_stored_asset(tmp_path):
    """A fresh build equals the stored asset (contour table: a few rows; the full table takes minutes)."""
    from dataclasses import fields
    from pathlib import Path

    import next3d_gen.head_model as hm

    stored_path = Path(hm.__file__).resolve().parent / "assets" / ASSET_NAME
    stored, stored_info = load_builtin_npz(stored_path)
    rows = [0, 17, 39, 40, 61, 78]
    fresh, fresh_info = hm._build(contour_rows=rows)
    for f in fields(stored):
        a, b = getattr(fresh, f.name), getattr(stored, f.name)
        if f.name.startswith("dynamic_lmk"):
            a, b = a[rows], b[rows]
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b, err_msg=f.name)
        else:
            assert a == b
    np.testing.assert_array_equal(fresh_info.vertex_part, stored_info.vertex_part)
    # the writer is deterministic: re-saving the stored model gives the same bytes
    out = tmp_path / "again.npz"
    save_model_npz(stored, out, stored_info)
    assert out.read_bytes() == stored_path.read_bytes()


def test_brow_label_hangs_below_the_brow_points(model, layer):
    """300W's brow points trace the brow's upper edge: in a frontal view the eyebrow label reaches well below each of
    points 18-20 / 23-25 and only a little above it."""
    out = layer(pose=torch.zeros(1, 15))
    size = 256
    c2w = orbit_camera(torch.zeros(1), torch.zeros(1), 0.9, torch.tensor([0.0, -0.01, 0.0]))
    K = intrinsics_from_fov(17.0, size, size)[None]
    fr = raster.rasterize(world_to_camera(out.vertices, c2w), torch.as_tensor(model.faces), K, size, size)
    lab = _labels_image(model, fr)[0]
    px = project(world_to_camera(out.landmarks, c2w), K)[0]
    for i, name in [(k, "right_eyebrow") for k in (18, 19, 20)] + [(k, "left_eyebrow") for k in (23, 24, 25)]:
        x, y = px[i].tolist()
        rows = (lab[:, round(x)] == SYNTH.classes.index(name)).nonzero().flatten().float()
        assert len(rows) > 0, i
        above, below = y - float(rows.min()), float(rows.max()) - y
        assert below > 2.0 * max(above, 0.5), (i, above, below)
        assert above + below > 3.5, (i, above, below)
