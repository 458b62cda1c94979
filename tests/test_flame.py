"""FLAME layer (LBS) against analytic cases and an independent per-vertex numpy LBS; loaders for the official files
(chumpy-free pickle, npz conversions, both landmark-embedding formats, UVs, masks -> labels) and their errors."""

from __future__ import annotations

import dataclasses
import pickle
import pickletools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from flame_fixtures import (
    FakeFlame,
    make_fake_flame,
    write_fake_flame,
    write_flame_npz,
    write_obj_uv,
    write_py2_pickle,
)
from scipy.spatial.transform import Rotation

from next3d_gen.errors import UserError
from next3d_gen.flame import (
    FlameLayer,
    FlameModel,
    contour_yaw_bin,
    load_flame_masks,
    load_flame_model,
    load_landmark_embedding,
    load_uv,
)
from next3d_gen.flame_labels import face_labels_from_masks
from next3d_gen.labels import SYNTH

# ---------------------------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake() -> FakeFlame:
    return make_fake_flame()


@pytest.fixture(scope="module")
def assets(fake: FakeFlame, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_fake_flame(tmp_path_factory.mktemp("flame"), fake)


@pytest.fixture(scope="module")
def model(assets: dict[str, Path]) -> FlameModel:
    return load_flame_model(assets["model"])


@pytest.fixture(scope="module")
def layer64(model: FlameModel) -> FlameLayer:
    return FlameLayer(model).double()


def _rng_params(model: FlameModel, B: int, seed: int, pose_scale: float = 0.3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "shape": torch.randn(B, model.num_shape, generator=g, dtype=torch.float64),
        "expression": torch.randn(B, model.num_expression, generator=g, dtype=torch.float64),
        "pose": pose_scale * torch.randn(B, 15, generator=g, dtype=torch.float64),
        "translation": 0.05 * torch.randn(B, 3, generator=g, dtype=torch.float64),
    }


# ---------------------------------------------------------------------------------------------------------------
# independent reference: straightforward per-vertex numpy LBS + FLAME_PyTorch's contour rule
# ---------------------------------------------------------------------------------------------------------------


def _ref_row(yaw: float) -> int:
    r = min(int(np.round(yaw)), 39)
    if r >= 0:
        return r
    return 78 if r < -39 else 39 - r


def reference_flame(m: FlameModel, shape, expression, pose, translation) -> tuple[np.ndarray, np.ndarray, int]:
    """One sample, float64, per-vertex loop. Returns vertices (V, 3), landmarks (68, 3), contour row."""
    v = m.v_template.astype(np.float64)
    v = v + m.shapedirs.astype(np.float64) @ shape + m.exprdirs.astype(np.float64) @ expression
    J = m.j_regressor.astype(np.float64) @ v
    R = [Rotation.from_rotvec(pose[3 * j : 3 * j + 3]).as_matrix() for j in range(5)]
    feature = np.concatenate([(R[j] - np.eye(3)).ravel() for j in range(1, 5)])
    v = v + m.posedirs.astype(np.float64) @ feature
    G = []
    for j in range(5):
        local = np.eye(4)
        local[:3, :3] = R[j]
        p = int(m.parents[j])
        local[:3, 3] = J[j] - (J[p] if p >= 0 else 0.0)
        G.append(local if p < 0 else G[p] @ local)
    A = []
    for j in range(5):
        unpose = np.eye(4)
        unpose[:3, 3] = -J[j]
        A.append(G[j] @ unpose)
    out = np.zeros_like(v)
    for i in range(len(v)):
        T = sum(m.weights[i, j] * A[j] for j in range(5))
        out[i] = (T @ np.append(v[i], 1.0))[:3]
    out = out + translation
    Rn = R[0] @ R[1]
    yaw = -np.degrees(np.arctan2(-Rn[2, 0], np.hypot(Rn[0, 0], Rn[1, 0])))
    row = _ref_row(yaw)
    faces = np.concatenate([m.dynamic_lmk_faces[row], m.static_lmk_faces])
    bary = np.concatenate([m.dynamic_lmk_bary[row], m.static_lmk_bary]).astype(np.float64)
    lmk = np.einsum("nk,nkc->nc", bary, out[m.faces[faces]])
    return out, lmk, row


# ---------------------------------------------------------------------------------------------------------------
# LBS
# ---------------------------------------------------------------------------------------------------------------


def test_zero_parameters_give_template(model: FlameModel, layer64: FlameLayer) -> None:
    out = layer64(shape=torch.zeros(2, 5))
    v = torch.as_tensor(model.v_template, dtype=torch.float64)
    # 1e-8 m: the skinning weights are stored in float32, so their rows sum to 1 only within ~1e-7.
    torch.testing.assert_close(out.vertices, v.expand(2, -1, -1), rtol=0, atol=1e-8)
    torch.testing.assert_close(out.joints[0], torch.as_tensor(model.j_regressor, dtype=torch.float64) @ v)
    assert out.contour_bin.tolist() == [0, 0]
    faces = np.concatenate([model.dynamic_lmk_faces[0], model.static_lmk_faces])
    bary = np.concatenate([model.dynamic_lmk_bary[0], model.static_lmk_bary]).astype(np.float64)
    expected = np.einsum("nk,nkc->nc", bary, model.v_template.astype(np.float64)[model.faces[faces]])
    np.testing.assert_allclose(out.landmarks[1].numpy(), expected, atol=1e-8)


def test_global_rotation_is_rigid_about_root(model: FlameModel, layer64: FlameLayer) -> None:
    rotvec = np.array([0.3, -0.5, 0.2])
    pose = torch.zeros(1, 15, dtype=torch.float64)
    pose[0, :3] = torch.from_numpy(rotvec)
    out = layer64(pose=pose)
    v = model.v_template.astype(np.float64)
    J0 = model.j_regressor.astype(np.float64)[0] @ v
    R = Rotation.from_rotvec(rotvec).as_matrix()
    np.testing.assert_allclose(out.vertices[0].numpy(), (v - J0) @ R.T + J0, atol=1e-8)
    # pairwise distances preserved (rigid)
    d0 = np.linalg.norm(v[:50, None] - v[None, :50], axis=-1)
    d1 = torch.cdist(out.vertices[0, :50], out.vertices[0, :50]).numpy()
    np.testing.assert_allclose(d1, d0, atol=1e-8)


@pytest.mark.parametrize("zero_posedirs", [True, False])
def test_jaw_rotation_moves_only_jaw_vertices(model: FlameModel, zero_posedirs: bool) -> None:
    m = dataclasses.replace(model, posedirs=np.zeros_like(model.posedirs)) if zero_posedirs else model
    layer = FlameLayer(m).double()
    rotvec = np.array([0.35, 0.05, -0.02])
    pose = torch.zeros(1, 15, dtype=torch.float64)
    pose[0, 6:9] = torch.from_numpy(rotvec)
    verts = layer(pose=pose).vertices[0].numpy()
    v = m.v_template.astype(np.float64)
    R = Rotation.from_rotvec(rotvec).as_matrix()
    corrective = m.posedirs.astype(np.float64)[:, :, 9:18] @ (R - np.eye(3)).ravel()  # jaw = 2nd non-root joint
    v_posed = v + corrective
    no_jaw = m.weights[:, 2] == 0
    full_jaw = m.weights[:, 2] == 1
    assert no_jaw.sum() > 100 and full_jaw.sum() > 10
    np.testing.assert_allclose(verts[no_jaw], v_posed[no_jaw], rtol=0, atol=1e-8)
    if zero_posedirs:
        np.testing.assert_allclose(verts[no_jaw], v[no_jaw], rtol=0, atol=1e-8)
    J2 = m.j_regressor.astype(np.float64)[2] @ v
    np.testing.assert_allclose(verts[full_jaw], (v_posed[full_jaw] - J2) @ R.T + J2, rtol=0, atol=1e-8)
    assert np.abs(verts[full_jaw] - v[full_jaw]).max() > 1e-3


def test_blendshapes_are_linear(model: FlameModel, layer64: FlameLayer) -> None:
    g = torch.Generator().manual_seed(3)
    a_s, b_s = torch.randn(2, 1, model.num_shape, generator=g, dtype=torch.float64)
    a_e, b_e = torch.randn(2, 1, model.num_expression, generator=g, dtype=torch.float64)

    def f(s: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return layer64(shape=s, expression=e).vertices

    f0 = f(torch.zeros_like(a_s), torch.zeros_like(a_e))
    fa, fb, fab = f(a_s, a_e), f(b_s, b_e), f(a_s + b_s, a_e + b_e)
    torch.testing.assert_close(fab - f0, (fa - f0) + (fb - f0), rtol=0, atol=1e-12)
    direct = model.shapedirs.astype(np.float64) @ a_s[0].numpy() + model.exprdirs.astype(np.float64) @ a_e[0].numpy()
    np.testing.assert_allclose((fa - f0)[0].numpy(), direct, atol=1e-12)


def test_fewer_columns_are_zero_padded_and_too_many_raise(model: FlameModel, layer64: FlameLayer) -> None:
    g = torch.Generator().manual_seed(4)
    s = torch.randn(2, 10, generator=g, dtype=torch.float64)
    e = torch.randn(2, 7, generator=g, dtype=torch.float64)
    padded_s = torch.cat([s, torch.zeros(2, model.num_shape - 10, dtype=torch.float64)], 1)
    padded_e = torch.cat([e, torch.zeros(2, model.num_expression - 7, dtype=torch.float64)], 1)
    torch.testing.assert_close(
        layer64(shape=s, expression=e).vertices, layer64(shape=padded_s, expression=padded_e).vertices
    )
    with pytest.raises(ValueError, match="shape"):
        layer64(shape=torch.zeros(1, model.num_shape + 1))
    with pytest.raises(ValueError, match="expression"):
        layer64(expression=torch.zeros(1, model.num_expression + 1))
    with pytest.raises(ValueError, match=r"pose must be \(B, 15\)"):  # a 6-value [global, jaw] pose is not padded
        layer64(pose=torch.zeros(1, 6))


def test_matches_per_vertex_numpy_reference(model: FlameModel, layer64: FlameLayer) -> None:
    p = _rng_params(model, B=3, seed=5, pose_scale=0.3)
    p["pose"][:, 3:6] += torch.tensor([0.0, 0.4, 0.0], dtype=torch.float64)  # some neck yaw: non-zero contour rows
    out = layer64(**p)
    rows = []
    for b in range(3):
        v, lmk, row = reference_flame(model, *(p[k][b].numpy() for k in ("shape", "expression", "pose", "translation")))
        np.testing.assert_allclose(out.vertices[b].numpy(), v, atol=1e-10)
        np.testing.assert_allclose(out.landmarks[b].numpy(), lmk, atol=1e-10)
        rows.append(row)
    assert out.contour_bin.tolist() == rows
    assert any(r != 0 for r in rows)


def test_float32_float64_and_batch_consistency(model: FlameModel, layer64: FlameLayer) -> None:
    p = _rng_params(model, B=3, seed=6)
    layer32 = FlameLayer(model)
    out32 = layer32(**{k: v.float() for k, v in p.items()})
    out64 = layer64(**p)
    assert out32.vertices.dtype == torch.float32 and out64.vertices.dtype == torch.float64
    torch.testing.assert_close(out32.vertices.double(), out64.vertices, rtol=0, atol=2e-6)
    torch.testing.assert_close(out32.landmarks.double(), out64.landmarks, rtol=0, atol=2e-6)
    for b in range(3):
        single = layer64(**{k: v[b : b + 1] for k, v in p.items()})
        torch.testing.assert_close(single.vertices[0], out64.vertices[b], rtol=0, atol=1e-12)
        torch.testing.assert_close(single.landmarks[0], out64.landmarks[b], rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# contour switching with yaw
# ---------------------------------------------------------------------------------------------------------------


def test_contour_yaw_bin_table() -> None:
    yaw = torch.tensor([0.0, 0.4, -0.4, -0.6, 20.0, -20.0, 39.4, 45.0, -39.0, -39.6, -50.0])
    assert contour_yaw_bin(yaw).tolist() == [0, 0, 0, 40, 20, 59, 39, 39, 78, 78, 78]
    assert contour_yaw_bin(yaw).tolist() == [_ref_row(float(y)) for y in yaw]


@pytest.mark.parametrize(
    "global_deg, neck_deg, row",
    [
        # FLAME_PyTorch/smplx negate the Euler yaw: turning the head by +20 deg about +y (towards the subject's
        # left) gives yaw -20, row 39 + 20 = 59; -20 deg gives row 20. The chain is global @ neck.
        (20.0, 0.0, 59),
        (-20.0, 0.0, 20),
        (0.0, 20.0, 59),
        (0.0, -20.0, 20),
        (10.0, 10.0, 59),
        (25.0, -5.0, 59),
    ],
)
def test_contour_rows_follow_global_and_neck_yaw(
    model: FlameModel, fake: FakeFlame, layer64: FlameLayer, global_deg: float, neck_deg: float, row: int
) -> None:
    assert not np.array_equal(fake.dynamic_faces[row], fake.dynamic_faces[0])  # the switch is observable
    pose = torch.zeros(1, 15, dtype=torch.float64)
    pose[0, 1] = np.radians(global_deg)
    pose[0, 4] = np.radians(neck_deg)
    out = layer64(pose=pose)
    assert out.contour_bin.tolist() == [row]
    assert contour_yaw_bin(torch.tensor([-(global_deg + neck_deg)])).tolist() == [row]
    v = out.vertices[0].numpy()
    contour = np.einsum(
        "nk,nkc->nc", model.dynamic_lmk_bary[row].astype(np.float64), v[model.faces[model.dynamic_lmk_faces[row]]]
    )
    np.testing.assert_allclose(out.landmarks[0, :17].numpy(), contour, atol=1e-12)
    row0 = np.einsum(
        "nk,nkc->nc", model.dynamic_lmk_bary[0].astype(np.float64), v[model.faces[model.dynamic_lmk_faces[0]]]
    )
    assert np.abs(out.landmarks[0, :17].numpy() - row0).max() > 1e-3


def test_pitch_and_roll_keep_row_zero(layer64: FlameLayer) -> None:
    pose = torch.zeros(2, 15, dtype=torch.float64)
    pose[0, 0] = 0.5  # pitch
    pose[1, 2] = 0.5  # roll
    assert layer64(pose=pose).contour_bin.tolist() == [0, 0]


# ---------------------------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------------------------


def test_official_pickle_loads_without_chumpy(
    assets: dict[str, Path], fake: FakeFlame, monkeypatch: pytest.MonkeyPatch
) -> None:
    globals_in_file = {
        arg for op, arg, _ in pickletools.genops(assets["model"].read_bytes()) if op.name in ("GLOBAL", "STACK_GLOBAL")
    }
    assert {"chumpy.ch Ch", "scipy.sparse.csc csc_matrix", "numpy.core.multiarray _reconstruct"} <= globals_in_file
    assert "chumpy" not in sys.modules
    monkeypatch.setitem(sys.modules, "chumpy", None)  # any import of chumpy would now raise
    m = load_flame_model(assets["model"])
    monkeypatch.delitem(sys.modules, "chumpy")
    assert "chumpy" not in sys.modules
    np.testing.assert_allclose(m.v_template, fake.v_template, atol=1e-7)
    np.testing.assert_array_equal(m.faces, fake.faces)
    assert m.num_shape == 300 and m.num_expression == 100
    np.testing.assert_allclose(m.shapedirs, fake.shapedirs[:, :, :300], atol=1e-7)
    np.testing.assert_allclose(m.exprdirs, fake.shapedirs[:, :, 300:], atol=1e-7)
    np.testing.assert_allclose(m.posedirs, fake.posedirs, atol=1e-7)
    np.testing.assert_allclose(m.j_regressor, fake.j_regressor, atol=1e-7)
    np.testing.assert_allclose(m.weights, fake.weights, atol=1e-7)
    assert m.parents.tolist() == [-1, 0, 1, 1, 1]
    np.testing.assert_array_equal(m.static_lmk_faces, fake.static_faces)
    np.testing.assert_array_equal(m.dynamic_lmk_faces, fake.dynamic_faces)
    np.testing.assert_allclose(m.dynamic_lmk_bary, fake.dynamic_bary, atol=1e-6)
    np.testing.assert_allclose(m.uv_coords, fake.uv_coords, atol=1e-7)
    np.testing.assert_array_equal(m.uv_faces, fake.uv_faces)
    assert m.face_labels is not None and m.face_labels.shape == (len(fake.faces),)
    assert m.v_template.dtype == np.float32 and m.faces.dtype == np.int64


def test_foreign_pickle_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (print, ("this must not run",))

    path = tmp_path / "generic_model.pkl"
    path.write_bytes(pickle.dumps({"v_template": Evil()}, protocol=2))
    with pytest.raises(UserError, match=r"generic_model\.pkl.*unexpected object .*print"):
        load_flame_model(path)


def test_own_npz_round_trip(model: FlameModel, tmp_path: Path) -> None:
    path = tmp_path / "converted.npz"
    model.save_npz(str(path))
    for back in (load_flame_model(path), FlameModel.load_npz(path)):  # needs nothing beside it
        for f in dataclasses.fields(FlameModel):
            a, b = getattr(model, f.name), getattr(back, f.name)
            if isinstance(a, np.ndarray):
                assert a.dtype == b.dtype and np.array_equal(a, b), f.name
            else:
                assert a == b, f.name


def test_flame_npz_conversion_equals_pickle(model: FlameModel, fake: FakeFlame, assets: dict, tmp_path: Path) -> None:
    for sparse in (True, False):
        path = write_flame_npz(tmp_path / f"FLAME_NEUTRAL_{sparse}.npz", fake, sparse_regressor=sparse)
        m = load_flame_model(path, assets["deca_embedding"], masks_path=assets["masks"], uv_path=assets["uv"])
        for f in dataclasses.fields(FlameModel):
            if f.name != "name":
                a, b = getattr(model, f.name), getattr(m, f.name)
                assert np.array_equal(a, b), (f.name, sparse)


def test_directory_as_model_path(assets: dict[str, Path], model: FlameModel) -> None:
    m = load_flame_model(assets["dir"])
    np.testing.assert_array_equal(m.v_template, model.v_template)


def test_both_embedding_formats_give_the_same_landmarks(model: FlameModel, assets: dict[str, Path]) -> None:
    deca = load_landmark_embedding(assets["deca_embedding"])
    ringnet = load_landmark_embedding(assets["static_embedding"])
    from_dynamic = load_landmark_embedding(assets["dynamic_embedding"])
    for key in deca:
        np.testing.assert_allclose(deca[key], ringnet[key], atol=1e-6, err_msg=key)
        np.testing.assert_array_equal(ringnet[key], from_dynamic[key], err_msg=key)
    m_deca = load_flame_model(assets["model"], assets["deca_embedding"])
    m_ring = load_flame_model(assets["model"], assets["static_embedding"])
    p = _rng_params(m_deca, B=2, seed=7)
    p["pose"][:, 1] = torch.tensor([0.3, -0.4], dtype=torch.float64)
    out_d = FlameLayer(m_deca).double()(**p)
    out_r = FlameLayer(m_ring).double()(**p)
    assert out_d.contour_bin.tolist() == out_r.contour_bin.tolist() != [0, 0]
    torch.testing.assert_close(out_d.landmarks, out_r.landmarks, rtol=0, atol=1e-6)


def test_embedding_search_and_missing_embedding(fake: FakeFlame, tmp_path: Path) -> None:
    ring = write_fake_flame(tmp_path / "ring", fake, embedding="ringnet", uv=None, masks=False)
    m = load_flame_model(ring["model"])
    np.testing.assert_array_equal(m.static_lmk_faces, fake.static_faces)
    assert m.uv_coords is None and m.face_labels is None

    none = write_fake_flame(tmp_path / "none", fake, embedding="none", uv=None, masks=False)
    with pytest.raises(UserError, match=r"generic_model\.pkl.*landmark_embedding\.npy.*flame_static_embedding\.pkl"):
        load_flame_model(none["model"])

    ring["dynamic_embedding"].unlink()
    with pytest.raises(UserError, match=r"flame_static_embedding\.pkl.*flame_dynamic_embedding\.npy is missing"):
        load_flame_model(ring["model"])


def test_shapedirs_split_rule(tmp_path: Path) -> None:
    small = make_fake_flame(num_shape=20, num_expression=10, n_lat=12, n_lon=16)
    paths = write_fake_flame(tmp_path, small, uv=None, masks=False)
    with pytest.warns(UserWarning, match="only 30 columns"):
        m = load_flame_model(paths["model"])
    assert (m.num_shape, m.num_expression) == (30, 0)
    m = load_flame_model(paths["model"], num_expression=10)
    assert (m.num_shape, m.num_expression) == (20, 10)
    np.testing.assert_allclose(m.exprdirs, small.shapedirs[:, :, 20:], atol=1e-7)
    with pytest.raises(UserError, match="num_expression=31"):
        load_flame_model(paths["model"], num_expression=31)


def test_uv_from_obj_matches_npz(fake: FakeFlame, assets: dict[str, Path], tmp_path: Path) -> None:
    vt, ft = load_uv(assets["uv"], fake.faces)
    for shuffle in (False, True):
        obj = write_obj_uv(tmp_path / f"head_template_{shuffle}.obj", fake, shuffle=shuffle)
        vt2, ft2 = load_uv(obj, fake.faces)
        np.testing.assert_allclose(vt2, vt, atol=1e-6)
        np.testing.assert_array_equal(ft2, ft)
    other_faces = fake.faces.copy()
    other_faces[:, 0] = (other_faces[:, 0] + 1) % len(fake.v_template)
    other = dataclasses.replace(fake, faces=other_faces)
    bad = write_obj_uv(tmp_path / "other.obj", other)
    with pytest.raises(UserError, match=r"other\.obj"):
        load_uv(bad, fake.faces)


# ---------------------------------------------------------------------------------------------------------------
# errors name the file and the key
# ---------------------------------------------------------------------------------------------------------------


def _one_line_error(excinfo: pytest.ExceptionInfo[UserError], *needles: str) -> None:
    msg = str(excinfo.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, (n, msg)


def test_truncated_files(assets: dict[str, Path], model: FlameModel, tmp_path: Path) -> None:
    data = assets["model"].read_bytes()
    cut = tmp_path / "generic_model.pkl"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError) as e:
        load_flame_model(cut, assets["deca_embedding"])
    _one_line_error(e, str(cut))

    npz = tmp_path / "own.npz"
    model.save_npz(str(npz))
    raw = npz.read_bytes()
    npz.write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(UserError) as e:
        load_flame_model(npz)
    _one_line_error(e, str(npz))

    emb = tmp_path / "landmark_embedding.npy"
    raw = assets["deca_embedding"].read_bytes()
    emb.write_bytes(raw[: len(raw) - 100])
    with pytest.raises(UserError) as e:
        load_flame_model(assets["model"], emb)
    _one_line_error(e, str(emb))

    with pytest.raises(UserError) as e:
        load_flame_model(tmp_path / "nope.pkl")
    _one_line_error(e, "nope.pkl", "no such file")


def _official_dict(fake: FakeFlame) -> dict:
    from flame_fixtures import _model_dict

    return _model_dict(fake)


def test_missing_key_and_bad_shape_name_file_and_key(fake: FakeFlame, assets: dict[str, Path], tmp_path: Path) -> None:
    d = _official_dict(fake)
    del d["posedirs"]
    path = write_py2_pickle(tmp_path / "no_posedirs.pkl", d, as_chumpy=("shapedirs",))
    with pytest.raises(UserError) as e:
        load_flame_model(path, assets["deca_embedding"])
    _one_line_error(e, str(path), "'posedirs'")

    d = _official_dict(fake)
    d["weights"] = d["weights"][:, :4]
    path = write_py2_pickle(tmp_path / "bad_weights.pkl", d, as_chumpy=("weights",))
    with pytest.raises(UserError) as e:
        load_flame_model(path, assets["deca_embedding"])
    _one_line_error(e, str(path), "'weights'", f"({len(fake.v_template)}, 4)", "expected")

    d = _official_dict(fake)
    d["kintree_table"] = np.array([[0, 0, 3, 1, 1], [0, 1, 2, 3, 4]])
    path = write_py2_pickle(tmp_path / "bad_tree.pkl", d)
    with pytest.raises(UserError) as e:
        load_flame_model(path, assets["deca_embedding"])
    _one_line_error(e, str(path), "'kintree_table'")

    static = write_py2_pickle(
        tmp_path / "flame_static_embedding.pkl",
        {"lmk_face_idx": fake.static_faces[:50], "lmk_b_coords": fake.static_bary[:50]},
    )
    np.save(
        tmp_path / "flame_dynamic_embedding.npy",
        np.array({"lmk_face_idx": fake.dynamic_faces, "lmk_b_coords": fake.dynamic_bary}, dtype=object),
    )
    with pytest.raises(UserError) as e:
        load_flame_model(assets["model"], static)
    _one_line_error(e, str(static), "'lmk_face_idx'", "(50,)")

    static = write_py2_pickle(
        tmp_path / "flame_static_embedding.pkl",
        {"lmk_face_idx": fake.static_faces + len(fake.faces), "lmk_b_coords": fake.static_bary},
    )
    with pytest.raises(UserError) as e:
        load_flame_model(assets["model"], static)
    _one_line_error(e, str(static), "out of range")

    masks = write_py2_pickle(tmp_path / "FLAME_masks.pkl", {"face": np.array([0, len(fake.v_template)])})
    with pytest.raises(UserError) as e:
        load_flame_model(assets["model"], masks_path=masks)
    _one_line_error(e, str(masks), "'face'", "out of range")

    with pytest.raises(UserError) as e:
        load_flame_masks(assets["deca_embedding"])
    _one_line_error(e, str(assets["deca_embedding"]))


# ---------------------------------------------------------------------------------------------------------------
# masks -> labels
# ---------------------------------------------------------------------------------------------------------------


def test_mask_labels_on_fake_flame(model: FlameModel, fake: FakeFlame) -> None:
    labels = model.face_labels
    assert labels is not None and labels.dtype == np.uint8
    assert labels.min() >= 1 and labels.max() < SYNTH.num_classes  # every face labelled
    assert (labels[fake.eyeball_faces["left"]] == SYNTH.id("left_eyeball")).all()
    assert (labels[fake.eyeball_faces["right"]] == SYNTH.id("right_eyeball")).all()
    # every class but inner_mouth occurs on this head (it has no mouth cavity; see the hand-made mouth test)
    assert set(np.unique(labels).tolist()) == set(range(1, 20)) - {SYNTH.id("inner_mouth")}

    cen = model.v_template[model.faces].mean(axis=1)
    upper, lower = labels == SYNTH.id("upper_lip"), labels == SYNTH.id("lower_lip")
    assert upper.sum() > 5 and lower.sum() > 5
    lm = np.einsum("nk,nkc->nc", model.static_lmk_bary, model.v_template[model.faces[model.static_lmk_faces]])
    mouth_y = lm[[60 - 17, 64 - 17], 1].mean()
    assert (cen[upper, 1] > mouth_y - 1e-3).all() and (cen[lower, 1] < mouth_y + 1e-3).all()
    neck, back = labels == SYNTH.id("neck"), labels == SYNTH.id("neck_back")
    assert cen[neck, 2].min() >= cen[back, 2].max()

    # landmarks land on their regions
    on = {i: SYNTH.classes[labels[model.static_lmk_faces[i - 17]]] for i in range(17, 68)}
    assert on[19] == "right_eyebrow" and on[24] == "left_eyebrow"
    assert on[30] == "nose" and on[33] == "nose"
    assert on[36] == "right_eye_region" and on[45] == "left_eye_region"
    assert on[51] == "upper_lip" and on[57] == "lower_lip"


def test_mask_label_rules_on_a_hand_made_mesh() -> None:
    # Vertices far from every landmark band, so only rules 1-3 act. Faces: 0 = (nose, face, lips) -> tie -> nose
    # (precedence); 1 = (face, face, nose) -> face (majority); 2 = (none, none, face) -> face (labelled vertices vote);
    # 3 = all unlabelled -> takes its neighbour's label (face 2 shares vertex 6): face.
    v = np.array(
        [[0, 0, 1], [1, 0, 1], [0, 1, 1], [1, 1, 1], [2, 0, 1], [2, 1, 1], [3, 0, 1], [3, 1, 1], [4, 0, 1]], float
    )
    v[:, 1] -= 5.0
    faces = np.array([[0, 1, 2], [1, 5, 3], [4, 6, 5], [6, 8, 7]])
    masks = {"nose": np.array([0, 3]), "face": np.array([0, 1, 2, 3, 5]), "lips": np.array([2])}
    lm = np.zeros((51, 3))
    lm[:, 1] = 50.0  # brows and mouth far above: nothing is refined
    lm[36 - 17, 0], lm[45 - 17, 0] = -1.0, 1.0
    labels = face_labels_from_masks(v, faces, masks, lm)
    assert [SYNTH.classes[i] for i in labels] == ["nose", "face", "face", "face"]


def test_mask_label_lip_and_inner_mouth_rules() -> None:
    # Inner lip contour at y = 0, z = 1, corners at x = +-1; outer eye corners 6 apart (d = 6); brows far away.
    lm = np.zeros((51, 3))
    lm[:, 1] = 50.0
    lm[36 - 17], lm[45 - 17] = (-3, 5, 0), (3, 5, 0)
    inner = [(-1, 0), (-0.5, 0.1), (0, 0.1), (0.5, 0.1), (1, 0), (0.5, -0.1), (0, -0.1), (-0.5, -0.1)]
    for k, (x, y) in enumerate(inner):
        lm[60 - 17 + k] = (x, y, 1.0)
    tris = [
        [(-0.2, 0.4, 1.2), (0.2, 0.4, 1.2), (0, 0.6, 1.2)],  # upper lip, facing forwards
        [(-0.2, -0.6, 1.2), (0.2, -0.6, 1.2), (0, -0.4, 1.2)],  # lower lip, facing forwards
        [(-0.2, -0.15, 0.8), (0.2, -0.15, 0.8), (0, -0.15, 0.6)],  # lower lip's inner surface: behind, facing up
        [(-0.05, -0.03, 0.5), (0.05, -0.03, 0.5), (0, 0.06, 0.5)],  # 'face' vertex inside the lip polygon, behind
        [(1.5, -0.15, 0.8), (1.9, -0.15, 0.8), (1.7, -0.15, 0.6)],  # like the 3rd, but beyond the mouth corner
    ]
    v = np.asarray(tris, dtype=float).reshape(-1, 3)
    faces = np.arange(15).reshape(5, 3)
    masks = {"lips": np.r_[0:9, 12:15], "face": np.r_[9:12]}
    labels = face_labels_from_masks(v, faces, masks, lm)
    assert [SYNTH.classes[i] for i in labels] == ["upper_lip", "lower_lip", "inner_mouth", "inner_mouth", "lower_lip"]


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-14), (torch.float32, 3e-7)])
def test_batch_rodrigues_matches_scipy(dtype: torch.dtype, atol: float) -> None:
    from next3d_gen.flame import batch_rodrigues

    rng = np.random.default_rng(0)
    axes = rng.normal(size=(8, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    angles = np.array([0.0, 1e-7, 9.9e-4, 1.01e-3, 0.3, 1.5, 3.0, 3.14159])
    vecs = axes * angles[:, None]
    R = batch_rodrigues(torch.tensor(vecs, dtype=dtype))
    np.testing.assert_allclose(R.double().numpy(), Rotation.from_rotvec(vecs).as_matrix(), rtol=0, atol=atol)
    assert torch.equal(R[0], torch.eye(3, dtype=dtype))
    # the derivative at zero is the cross-product matrix: dR/dv_k = [e_k]_x
    jac = torch.autograd.functional.jacobian(lambda x: batch_rodrigues(x[None])[0], torch.zeros(3, dtype=torch.float64))
    for k in range(3):
        e = np.zeros(3)
        e[k] = 1.0
        skew = np.array([[0, -e[2], e[1]], [e[2], 0, -e[0]], [-e[1], e[0], 0]])
        np.testing.assert_allclose(jac[..., k].numpy(), skew, atol=1e-12)
