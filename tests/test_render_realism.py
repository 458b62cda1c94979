"""Photoreal details of the procedural renderer (issue 10 part 4): each feature does what it says, its labels follow
its coverage, and the label layers that existed before do not depend on the details.

Scenes: the toy head of ``test_procedural_render`` (labelled by the real rasterizer + annotator).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from next3d_gen.labels import LAYER_COVERAGE_THRESHOLD, SYNTH
from next3d_gen.render import clothing as cloth_lib
from next3d_gen.render import face_detail as face_lib
from next3d_gen.render import hair as hair_lib
from next3d_gen.render import lighting as lighting_lib
from next3d_gen.render.base import NO_OVERRIDE, RenderOutput, Scene
from next3d_gen.render.procedural import NO_CAMERA_EFFECTS, ProceduralConfig, ProceduralRenderer, _Rng

sys.path.insert(0, str(Path(__file__).parent))
from test_procedural_render import make_scene, toy_head_model  # noqa: E402

C = {name: SYNTH.id(name) for name in SYNTH.classes}
HAIR = C["hair"]
BEARD = C["beard"]
QUIET = dict(NO_CAMERA_EFFECTS, hand_prob=0.0, object_prob=0.0, antialias=False, shoulders_prob=0.0, glasses_prob=0.0)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def toy():
    return toy_head_model()


def _render(scene: Scene, seed: int, cfg: ProceduralConfig, renderer: type = ProceduralRenderer) -> RenderOutput:
    return renderer(cfg).render(scene, torch.Generator().manual_seed(seed))


def _labels(out: RenderOutput, scene: Scene) -> np.ndarray:
    if out.label_override is None:
        return np.full((scene.height, scene.width), NO_OVERRIDE, np.uint8)
    return out.label_override.numpy()


def _rng(seed: int) -> _Rng:
    return _Rng(torch.Generator().manual_seed(seed), torch.device("cpu"))


# ----------------------------------------------------------------------------------------------------------------------
# the main random stream: label layers that existed before the details do not depend on them


@pytest.mark.parametrize("seed", range(4))
def test_details_do_not_move_the_other_label_layers(toy, seed: int) -> None:
    """The details draw from their own stream: changing every detail option (with the new labelled layers off)
    leaves label layers and occluders byte-identical, while the image changes."""
    scene = make_scene(toy, 80, yaw=20.0)
    base = dict(hair_prob=1.0, hair_volume_prob=1.0, fringe_prob=0.5, glasses_prob=0.5, hand_prob=0.3, object_prob=0.3,
                flyaway_count_range=(0, 0))  # fmt: skip
    other = dict(base, hair_strand_contrast_range=(0.0, 0.0), hair_wave_range=(0.6, 0.6), hair_flow_offset_range=(1, 1),
                 hair_root_darkness_range=(0.0, 0.0), hair_highlight_range=(0.5, 0.5))  # fmt: skip
    a, b = (_render(scene, seed, ProceduralConfig(**o)) for o in (base, other))
    np.testing.assert_array_equal(_labels(a, scene), _labels(b, scene))
    occ = [o.occluder_mask for o in (a, b)]
    assert (occ[0] is None) == (occ[1] is None) and (occ[0] is None or torch.equal(occ[0], occ[1]))
    assert not torch.equal(a.image, b.image)


# ----------------------------------------------------------------------------------------------------------------------
# hair: strands, highlights, flyaways


def _flow(seed: int = 0, wave: float = 0.0) -> hair_lib.HairFlow:
    return hair_lib.make_flow(_rng(seed), (50.0, 10.0), 100.0, wave, 0.6, 0.0)


def test_strand_texture_varies_across_strands_not_along_them() -> None:
    """Straight hair: over 2 pixels, the texture changes far more across the strands (around the flow centre) than
    along them (away from it); strand directions are radial."""
    flow = _flow()
    g = torch.Generator().manual_seed(0)
    ang = 0.3 + 2.5 * torch.rand(2000, generator=g)
    r = 50 + 40 * torch.rand(2000, generator=g)
    c, s = torch.cos(ang), torch.sin(ang)
    x, y = 50 + r * c, 10 + r * s
    tex, t2 = hair_lib.strand_texture(flow, x, y)
    along, _ = hair_lib.strand_texture(flow, x + 2 * c, y + 2 * s)
    across, _ = hair_lib.strand_texture(flow, x - 2 * s, y + 2 * c)
    d_across, d_along = (across - tex).abs().mean().item(), (along - tex).abs().mean().item()
    assert d_across > 5 * d_along, (d_across, d_along)
    np.testing.assert_allclose(t2.numpy(), torch.stack([c, s], 1).numpy(), atol=1e-5)
    assert tex.min() >= 0.2 and tex.max() <= 2.5 and tex.std() > 0.1


def test_wavy_strands_swing_and_their_tangent_follows_the_curve() -> None:
    """With a wave, the tangent returned is the direction of the curve of constant texture: moving a small step
    along it changes the texture much less than a step across it."""
    flow = _flow(1, wave=0.4)
    g = torch.Generator().manual_seed(0)
    x, y = 50 + 40 + 20 * torch.rand(300, generator=g), 10 + 40 + 20 * torch.rand(300, generator=g)
    tex, t2 = hair_lib.strand_texture(flow, x, y)
    h = 0.05
    t_along, _ = hair_lib.strand_texture(flow, x + h * t2[:, 0], y + h * t2[:, 1])
    t_across, _ = hair_lib.strand_texture(flow, x - h * t2[:, 1], y + h * t2[:, 0])
    assert (t_along - tex).abs().mean() < 0.2 * (t_across - tex).abs().mean()
    radial = torch.nn.functional.normalize(torch.stack([x - 50, y - 10], 1), dim=1)
    assert (t2 * radial).sum(1).min() < 0.97  # the wave turns them away from radial


def test_kajiya_kay_matches_the_formula() -> None:
    """One light: radiance = albedo (ambient + diffuse) + highlights of sin(T', H)^p for the two shifted tangents,
    against a NumPy evaluation of the same formula."""
    g = torch.Generator().manual_seed(3)
    n = torch.nn.functional.normalize(torch.randn(50, 3, generator=g) * 0.3 + torch.tensor([0.0, 0.0, -1.0]), dim=1)
    t = torch.nn.functional.normalize(torch.linalg.cross(n, torch.randn(50, 3, generator=g)), dim=1)
    v = torch.nn.functional.normalize(torch.tensor([[0.1, -0.1, -1.0]]).expand(50, 3), dim=1)
    d = torch.nn.functional.normalize(torch.tensor([[0.3, -0.5, -0.8]]), dim=1)
    col = torch.tensor([[1.0, 0.9, 0.8]])
    alb = torch.rand(50, 3, generator=g) * 0.5
    amb = torch.full((50, 3), 0.1)
    mat = hair_lib.HairMaterial(spec=0.3, exponent=40.0, shift=0.1)
    got = hair_lib.kajiya_kay(alb, n, t, v, d, col, amb, mat).numpy()

    N, T, V, L, A = n.double().numpy(), t.double().numpy(), v.double().numpy(), d.double().numpy()[0], alb.numpy()
    Hv = (V + L) / np.linalg.norm(V + L, axis=1, keepdims=True)
    ndl = N @ L

    def ss(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
        u = np.clip((x - e0) / (e1 - e0), 0, 1)
        return u * u * (3 - 2 * u)

    kk = np.sqrt(np.clip(1 - (T @ L) ** 2, 0, None)) * ss(-0.3, 0.2, ndl)
    diff = 0.4 * kk + 0.6 * np.clip((ndl + 0.25) / 1.25, 0, None)
    want = A * (0.1 + diff[:, None] * col.numpy())
    for sign, w, p, tint in ((1, 1.0, 40.0, None), (-1, 0.6, 20.0, A)):
        Ts = T + sign * 0.1 * N
        Ts /= np.linalg.norm(Ts, axis=1, keepdims=True)
        th = (Ts * Hv).sum(1)
        lobe = np.clip(1 - th**2, 1e-6, None) ** (p / 2) * ss(0.0, 0.3, ndl)
        s = lobe[:, None] * col.numpy() * 0.3 * w
        if tint is not None:
            s = s * tint / np.clip(tint.max(1, keepdims=True), 1e-3, None)
        want = want + s
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)


def test_strand_edge_keeps_the_side_of_the_threshold() -> None:
    g = torch.Generator().manual_seed(0)
    alpha = torch.rand(20000, generator=g)
    alpha[:5] = torch.tensor([0.5, math.nextafter(0.5, 0), math.nextafter(0.5, 1), 0.0, 1.0])
    tex = torch.rand(20000, generator=g) * 2.3 + 0.2
    out = hair_lib.strand_edge(alpha, tex, LAYER_COVERAGE_THRESHOLD)
    assert torch.equal(out >= LAYER_COVERAGE_THRESHOLD, alpha >= LAYER_COVERAGE_THRESHOLD)
    assert out.min() >= 0 and out.max() <= 1 and out[3] == 0 and out[4] == 1
    # bright strands raise thin coverage, gaps lower thick coverage
    thin = (alpha > 0.3) & (alpha < 0.45)
    assert out[thin & (tex > 1.6)].mean() > out[thin & (tex < 0.8)].mean() + 0.05


def test_flyaways_start_on_the_outline_and_stay_on_allowed_pixels() -> None:
    H = W = 64
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    region = ((xx - 32) ** 2 + (yy - 30) ** 2) < 15**2
    allowed = yy < 40  # e.g. the background: strands may not enter rows >= 40
    flow = hair_lib.make_flow(_rng(0), (32.0, 30.0), 40.0, 0.2, 0.5, 0.0)
    a = hair_lib.flyaways(_rng(1), flow, region, allowed, 40, (0.1, 0.3), (0.3, 0.5))
    assert a.shape == (H, W) and a.min() >= 0 and a.max() <= 1
    assert (a[~allowed] == 0).all()
    outside = allowed & ~region
    assert (a[outside] > 0).sum() > 40  # strands leave the region
    # they reach at most max length (0.3 x 40 px, plus bend and the splat) beyond the region
    dist = ((xx - 32) ** 2 + (yy - 30) ** 2).float().sqrt() - 15
    assert dist[a > 0].max() <= 0.3 * 40 + 2
    assert (hair_lib.flyaways(_rng(1), flow, region, allowed, 0, (0.1, 0.3), (0.3, 0.5)) == 0).all()
    torch.testing.assert_close(a, hair_lib.flyaways(_rng(1), flow, region, allowed, 40, (0.1, 0.3), (0.3, 0.5)))


def test_flyaways_only_add_hair_labels_on_the_background(toy) -> None:
    """Forcing many flyaways: labels equal those without them except background pixels that become hair."""
    scene = make_scene(toy, 96, pitch=-20.0)
    head = scene.annotations.mask[0].numpy()
    base = dict(QUIET, hair_prob=1.0, hair_volume_prob=1.0, fringe_prob=0.0)
    added = 0
    for seed in range(3):
        off = _labels(_render(scene, seed, ProceduralConfig(**base, flyaway_count_range=(0, 0))), scene)
        on_out = _render(scene, seed, ProceduralConfig(**base, flyaway_count_range=(300, 300)))
        on = _labels(on_out, scene)
        changed = on != off
        assert (on[changed] == HAIR).all() and not (changed & head).any()
        added += int(changed.sum())
    assert added > 0


def test_hair_strands_show_in_the_image(toy) -> None:
    """The strand contrast option controls the pixel-to-pixel variation on the scalp hair."""
    scene = make_scene(toy, 128, pitch=40.0)  # from above
    scalp = scene.annotations.seg[0].numpy() == C["scalp"]
    inner = scalp & np.roll(scalp, 1, 0) & np.roll(scalp, -1, 0) & np.roll(scalp, 1, 1) & np.roll(scalp, -1, 1)
    rough = {}
    for c in (0.0, 0.8):
        cfg = ProceduralConfig(**QUIET, hair_prob=1.0, fringe_prob=0.0, hair_strand_contrast_range=(c, c),
                               hair_root_darkness_range=(0.0, 0.0), hair_wave_range=(0.0, 0.0),
                               hair_colour_weights=(0, 0, 0, 0, 1, 0, 0, 0))  # fmt: skip
        img = _render(scene, 2, cfg).image.float().mean(-1).numpy()
        lap = np.abs(4 * img - np.roll(img, 1, 0) - np.roll(img, -1, 0) - np.roll(img, 1, 1) - np.roll(img, -1, 1))
        rough[c] = float(lap[inner].mean())
    assert rough[0.8] > 2 * rough[0.0], rough


# ----------------------------------------------------------------------------------------------------------------------
# beard and stubble


class _HairProbe(ProceduralRenderer):
    """Shades every hair layer with a constant linear radiance ``level``: over the head, a pixel is then
    ``skin (1 - a) + level a`` in linear light, so two renders give each pixel's hair coverage ``a``."""

    def __init__(self, config: ProceduralConfig, level: float) -> None:
        super().__init__(config)
        self.level = level

    def _hair_radiance(self, albedo, normal, tangent, view, ambient, lights, material, strands):  # noqa: ANN001, ANN202
        return torch.full_like(albedo, self.level)


# dim light, no specular, exposure 1: the skin's radiance stays below 1 - PROBE, so nothing clips
DIM = dict(QUIET, key_intensity_range=(0.3, 0.3), ambient_range=(0.1, 0.1), fill_ratio_range=(0.2, 0.2),
           specular_range=(0.0, 0.0), exposure_range=(1.0, 1.0))  # fmt: skip
PROBE = 0.4


def _coverage(scene: Scene, seed: int, cfg: ProceduralConfig) -> tuple[np.ndarray, np.ndarray]:
    """(labels, hair coverage of every pixel measured from two probe renders)."""
    lo, hi = (_render(scene, seed, cfg, lambda c, k=k: _HairProbe(c, k)) for k in (0.0, PROBE))
    np.testing.assert_array_equal(_labels(lo, scene), _labels(hi, scene))
    lin = [(o.image.numpy().astype(np.float64) / 255.0) ** 2.2 for o in (lo, hi)]
    return _labels(lo, scene), ((lin[1] - lin[0]) / PROBE).mean(-1)


@pytest.mark.parametrize("style", range(4))
def test_beard_label_follows_its_measured_coverage(toy, style: int) -> None:
    """Head pixels: ``hair`` or ``beard`` exactly where the measured hair coverage (scalp hair, fringe, beard) is >=
    the threshold; ``beard`` is soft (partial coverage exists), lies on the lower face (face, neck, nose classes,
    below the eyes) and is drawn in every style; scalp and fringe hair stay ``hair``."""
    scene = make_scene(toy, 96, pitch=-15.0)
    seg = scene.annotations.seg[0].numpy()
    head = scene.annotations.mask[0].numpy()
    weights = tuple(float(i == style) for i in range(4))
    eps = 0.03
    beard_px = 0
    for seed in range(2):
        cfg = ProceduralConfig(**DIM, hair_prob=1.0, fringe_prob=0.5, hair_volume_prob=0.0, beard_prob=1.0,
                               beard_style_weights=weights, beard_density_range=(0.7, 1.0))  # fmt: skip
        lab, a = _coverage(scene, seed, cfg)
        hair = np.isin(lab, [HAIR, BEARD])
        clear = head & (np.abs(a - LAYER_COVERAGE_THRESHOLD) > eps)
        np.testing.assert_array_equal(hair[clear], a[clear] >= LAYER_COVERAGE_THRESHOLD)
        assert np.abs(a[head & hair & (seg == C["scalp"])] - 1).max() < eps  # scalp hair is opaque
        assert (lab[head & (seg == C["scalp"]) & hair] == HAIR).all()
        out_fringe = ~np.isin(seg, [C["forehead"], C["brow_band"], C["glabella"], C["right_ear"], C["left_ear"]])
        assert not (head & out_fringe & (seg != C["scalp"]) & (lab == HAIR)).any()  # no hair label on the lower face
        beard = head & (lab == BEARD)
        assert np.isin(seg[beard], [C["face"], C["neck"], C["nose"]]).all()
        eye_row = scene.annotations.landmarks_2d[0, 36:48, 1].max().item()
        assert (np.nonzero(beard)[0] > eye_row).all()
        assert (head & out_fringe & (a > 0.05) & (a < 0.45)).sum() > 3  # a soft, thin edge
        beard_px += int(beard.sum())
    assert beard_px > 30


def test_stubble_darkens_the_beard_area_and_is_never_hair(toy) -> None:
    scene = make_scene(toy, 96)
    seg = scene.annotations.seg[0].numpy()
    outs = {}
    for dens in (0.0, 0.45):
        cfg = ProceduralConfig(**QUIET, hair_prob=0.0, beard_prob=0.0, stubble_prob=1.0,
                               stubble_density_range=(dens, dens))  # fmt: skip
        outs[dens] = _render(scene, 0, cfg)
        assert not (_labels(outs[dens], scene) == HAIR).any()
    a, b = (outs[d].image.numpy().astype(int).sum(-1) for d in (0.0, 0.45))
    changed = a != b
    assert changed.sum() > 50 and np.isin(seg[changed], [C["face"], C["neck"]]).all()
    assert (b[changed] < a[changed]).mean() > 0.95
    rows = np.nonzero(changed)[0]
    assert rows.min() > scene.annotations.landmarks_2d[0, 36:48, 1].max().item()  # below the eyes (sideburns rise)


def test_beard_only_adds_beard_labels(toy) -> None:
    scene = make_scene(toy, 80)
    for seed in range(3):
        off, on = (_render(scene, seed, ProceduralConfig(beard_prob=p)) for p in (0.0, 1.0))  # other details stay
        lo, ln = _labels(off, scene), _labels(on, scene)
        changed = lo != ln
        assert (ln[changed] == BEARD).all() and changed.any()
        assert not (lo == BEARD).any()


# ----------------------------------------------------------------------------------------------------------------------
# lighting: ambient occlusion and shadows from the depth map


def _height_field(z: np.ndarray, fx: float = 100.0) -> tuple[lighting_lib.DepthView, torch.Tensor, torch.Tensor]:
    """A depth map (H, W) seen by a camera of focal ``fx`` at the image centre -> its depth view, K, mask."""
    H, W = z.shape
    K = torch.tensor([[fx, 0.0, W / 2 - 0.5], [0.0, fx, H / 2 - 0.5], [0.0, 0.0, 1.0]])
    depth = torch.as_tensor(z, dtype=torch.float32)
    mask = depth > 0
    view = lighting_lib.depth_view(depth, mask, K, max_side=64)
    assert view is not None
    return view, K, mask


def _surface(view: lighting_lib.DepthView, K: torch.Tensor, depth: torch.Tensor, ys: np.ndarray, xs: np.ndarray):
    """Points (N, 3) and camera-facing normals (N, 3) of the depth map at pixels (ys, xs), from finite differences."""
    from next3d_gen.render.fields import rays

    H, W = depth.shape
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    P = rays(K, xx, yy) * depth[..., None]
    dx = P[:, 2:] - P[:, :-2]
    dy = P[2:] - P[:-2]
    n = torch.linalg.cross(dx[1:-1], dy[:, 1:-1])
    n = torch.nn.functional.normalize(n, dim=-1)
    n = torch.where((n * P[1:-1, 1:-1]).sum(-1, keepdim=True) > 0, -n, n)
    ys_t, xs_t = torch.as_tensor(ys), torch.as_tensor(xs)
    return P[ys_t, xs_t], n[ys_t - 1, xs_t - 1]


def test_ambient_occlusion_darkens_concave_places_only() -> None:
    """A plane 1 m away with a pit and a bump (Gaussians 2 cm deep / high): occlusion in the pit, none on the bump,
    the flat plane or the rim of a sphere (convex silhouette)."""
    H = W = 96
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    g = lambda cx, cy, s: np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s**2))  # noqa: E731
    z = 1.0 + 0.02 * g(30, 48, 5) - 0.02 * g(66, 48, 5)  # pit at x=30 (farther), bump at x=66 (nearer)
    view, K, _ = _height_field(z)
    means = lighting_lib.occlusion_means(view)
    depth = torch.as_tensor(z, dtype=torch.float32)
    ys, xs = np.array([48, 48, 20, 48]), np.array([30, 66, 48, 40])
    P, n = _surface(view, K, depth, ys, xs)
    m = lighting_lib.sample_at(view, means, torch.as_tensor(xs), torch.as_tensor(ys))
    occ = lighting_lib.ambient_occlusion(P, n, m, view.head_m)
    assert occ[0] > 0.3 and occ[1] < 0.02 and occ[2] < 0.02, occ
    # a sphere of radius 0.3 m, 2 m away: nothing occluded, also next to its silhouette
    r2 = (xx - 47.5) ** 2 + (yy - 47.5) ** 2
    R_px = 40
    zs = np.where(r2 < R_px**2, 2.0 - 0.3 * np.sqrt(np.clip(1 - r2 / R_px**2, 0, 1)), 0.0)
    view, K, mask = _height_field(zs, fx=2.0 / 0.3 * R_px)
    depth = torch.as_tensor(zs, dtype=torch.float32)
    inner = mask.numpy() & (r2 < (R_px - 2) ** 2)
    ys, xs = np.nonzero(inner)
    P, n = _surface(view, K, depth, ys, xs)
    m = lighting_lib.sample_at(view, lighting_lib.occlusion_means(view), torch.as_tensor(xs), torch.as_tensor(ys))
    assert lighting_lib.ambient_occlusion(P, n, m, view.head_m).max() < 0.05


def test_shadows_fall_behind_an_occluder_away_from_the_light() -> None:
    """A plane 1 m away (a head-sized view: 4 pixels per cm) with a 2 cm tall block in front of it: a light from
    the right (+x) shadows the plane just left of the block, not right of it; a light from the camera shadows
    nothing."""
    H = W = 96
    z = np.full((H, W), 1.0)
    z[40:56, 44:52] = 0.98
    view, K, _ = _height_field(z, fx=400.0)
    side = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0, -0.5], [0.0, 0.0, -1.0]]), dim=1)
    vis = lighting_lib.shadow_visibility(view, side, softness=0.05)
    v = lighting_lib.sample_at(view, vis, torch.tensor([40, 56, 20]), torch.tensor([48, 48, 48]))
    assert v[0, 0] < 0.3 and v[1, 0] > 0.95 and v[2, 0] > 0.95, v  # left of block: shadow; right, far: lit
    assert vis[1].min() > 0.95  # frontal light


def test_occlusion_and_shadows_darken_the_built_in_head_where_expected() -> None:
    """Built-in head, light from above: with shadows the neck under the chin darkens, the forehead does not; with
    ambient occlusion the eye regions darken more than the forehead."""
    model = pytest.importorskip("next3d_gen.head_model").builtin_head_model()
    scene = make_scene(model, 128)
    seg = scene.annotations.seg[0].numpy()
    base = dict(QUIET, hair_prob=0.0, beard_prob=0.0, stubble_prob=0.0, num_lights_range=(1, 1),
                light_azimuth_deg_range=(0.0, 0.0), light_elevation_deg_range=(70.0, 70.0), ambient_range=(0.3, 0.3),
                environment_light_range=(0.0, 0.0))  # fmt: skip

    def lum(**kw: tuple[float, float]) -> np.ndarray:
        return _render(scene, 0, ProceduralConfig(**base, **kw)).image.numpy().astype(np.float64).mean(-1)

    none = lum(ambient_occlusion_range=(0.0, 0.0), shadow_strength_range=(0.0, 0.0))
    shadow = lum(ambient_occlusion_range=(0.0, 0.0), shadow_strength_range=(1.0, 1.0))
    ao = lum(ambient_occlusion_range=(1.0, 1.0), shadow_strength_range=(0.0, 0.0))
    neck, fore = seg == C["neck"], seg == C["forehead"]
    eyes = np.isin(seg, [C["right_eye_region"], C["left_eye_region"]])
    assert (none - shadow)[neck].mean() > 10 and np.abs(none - shadow)[fore].mean() < 1
    assert (none - ao)[eyes].mean() > 2 * (none - ao)[fore].mean() + 1


# ----------------------------------------------------------------------------------------------------------------------
# skin: makeup, oily sheen, fine bumps, subsurface scattering

NO_SKIN_DETAIL = dict(skin_bump_range=(0.0, 0.0), skin_oiliness_range=(0.0, 0.0), subsurface_range=(0.0, 0.0))


def _diff(a: RenderOutput, b: RenderOutput) -> np.ndarray:
    return np.abs(a.image.numpy().astype(int) - b.image.numpy().astype(int)).sum(-1)


def test_makeup_changes_only_its_regions(toy) -> None:
    scene = make_scene(toy, 96)
    seg = scene.annotations.seg[0].numpy()
    base = dict(QUIET, **NO_SKIN_DETAIL, hair_prob=0.0, beard_prob=0.0, makeup_strength_range=(0.6, 0.6))
    plain = _render(scene, 1, ProceduralConfig(**base, eye_shadow_prob=0.0, blush_prob=0.0))
    shadow = _render(scene, 1, ProceduralConfig(**base, eye_shadow_prob=1.0, blush_prob=0.0))
    blush = _render(scene, 1, ProceduralConfig(**base, eye_shadow_prob=0.0, blush_prob=1.0))
    eye_regions = np.isin(seg, [C["right_eye_region"], C["left_eye_region"]])
    d = _diff(plain, shadow) > 0
    assert d.sum() > 10 and eye_regions[d].all()
    centre_row = scene.annotations.landmarks_2d[0, 36:48, 1].mean().item()
    assert (np.nonzero(d)[0] < centre_row + 1).mean() > 0.9  # on the upper lids
    d = _diff(plain, blush) > 0
    assert d.sum() > 10 and (seg[d] == C["face"]).all()
    red = blush.image.numpy().astype(float)[d], plain.image.numpy().astype(float)[d]
    assert (red[0][:, 0] - red[0][:, 2]).mean() > (red[1][:, 0] - red[1][:, 2]).mean()  # redder


def test_subsurface_scattering_reddens_the_terminator_and_shadow_edges(toy) -> None:
    """A light from the side: with scattering, skin just past the terminator gets light, red most, blue least, and
    lit skin far from it changes much less."""
    scene = make_scene(toy, 96)
    seg = scene.annotations.seg[0].numpy()
    base = dict(QUIET, hair_prob=0.0, beard_prob=0.0, stubble_prob=0.0, num_lights_range=(1, 1),
                light_azimuth_deg_range=(90.0, 90.0), light_elevation_deg_range=(0.0, 0.0), specular_range=(0.0, 0.0),
                wrap_range=(0.0, 0.0), skin_bump_range=(0.0, 0.0), ambient_range=(0.05, 0.05))  # fmt: skip
    imgs = [_render(scene, 0, ProceduralConfig(**base, subsurface_range=(r, r))).image.numpy().astype(float)
            for r in (0.0, 0.012)]  # fmt: skip
    nx = scene.annotations.normal[0, ..., 0].numpy()  # the light is at +x
    skin = seg == C["face"]
    past = skin & (nx > -0.25) & (nx < -0.05)
    lit = skin & (nx > 0.7)
    gain = (imgs[1] - imgs[0])[past].mean(0)
    assert gain[0] > gain[1] > gain[2] >= 0 and gain[0] > 3, gain
    assert np.abs(imgs[1] - imgs[0])[lit].mean() < 0.5 * gain[0]


def test_oily_sheen_and_bumps_change_the_highlights(toy) -> None:
    """Oiliness brightens the T-zone's highlights (forehead, glabella, nose) and nothing far from it; fine bumps
    add pixel-to-pixel variation to the skin."""
    scene = make_scene(toy, 128)
    seg = scene.annotations.seg[0].numpy()
    base = dict(QUIET, hair_prob=0.0, beard_prob=0.0, stubble_prob=0.0, num_lights_range=(1, 1),
                light_azimuth_deg_range=(0.0, 0.0), light_elevation_deg_range=(10.0, 10.0),
                specular_range=(0.12, 0.12), subsurface_range=(0.0, 0.0))  # fmt: skip
    dry = _render(scene, 0, ProceduralConfig(**base, skin_oiliness_range=(0.0, 0.0), skin_bump_range=(0.0, 0.0)))
    oily = _render(scene, 0, ProceduralConfig(**base, skin_oiliness_range=(1.0, 1.0), skin_bump_range=(0.0, 0.0)))
    bumpy = _render(scene, 0, ProceduralConfig(**base, skin_oiliness_range=(0.0, 0.0), skin_bump_range=(0.2, 0.2)))
    tzone = np.isin(seg, [C["forehead"], C["glabella"], C["nose"]])
    lum = {k: o.image.numpy().astype(float).mean(-1) for k, o in (("dry", dry), ("oily", oily), ("bumpy", bumpy))}
    assert (lum["oily"] - lum["dry"])[tzone].mean() > 2
    far = np.isin(seg, [C["right_ear"], C["left_ear"], C["scalp"]])
    assert np.abs(lum["oily"] - lum["dry"])[far].max() == 0

    def rough(img: np.ndarray) -> float:
        lap = np.abs(4 * img - np.roll(img, 1, 0) - np.roll(img, -1, 0) - np.roll(img, 1, 1) - np.roll(img, -1, 1))
        return float(lap[tzone].mean())

    assert rough(lum["bumpy"]) > 1.5 * rough(lum["dry"]) + 0.5


# ----------------------------------------------------------------------------------------------------------------------
# eyes and mouth


def test_lashes_darken_the_upper_lid_line_most(toy) -> None:
    """Lash density 0 vs 1 on the same scene: only eye-region pixels change, they darken, the upper lid next to the
    eyeball the most (more than the lower lid), pixels far from the eyeball not at all."""
    scene = make_scene(toy, 128)
    seg = scene.annotations.seg[0].numpy()
    base = dict(QUIET, hair_prob=0.0, beard_prob=0.0, eye_shadow_prob=0.0, eyeliner_prob=0.0)
    off, on = (_render(scene, 0, ProceduralConfig(**base, lash_density_range=(d, d))).image.numpy().astype(float)
               for d in (0.0, 1.0))  # fmt: skip
    dark = (off - on).mean(-1)
    lids = np.isin(seg, [C["right_eye_region"], C["left_eye_region"]])
    assert (dark[~lids] == 0).all() and (dark >= -1).all()
    eyeball = np.isin(seg, [C["right_eyeball"], C["left_eyeball"]])
    near = lids & (np.roll(eyeball, 1, 0) | np.roll(eyeball, -1, 0))  # lid pixels right above / below the eyeball
    centre_row = scene.annotations.landmarks_2d[0, 36:48, 1].mean().item()
    rows = np.arange(seg.shape[0])[:, None] * np.ones((1, seg.shape[1]))
    upper = near & (rows < centre_row)
    lower = near & (rows > centre_row)
    assert dark[upper].mean() > 25 and dark[upper].mean() > 2 * dark[lower].mean()
    ball = torch.as_tensor(eyeball, dtype=torch.float32)[None, None]
    far = lids & ~(torch.nn.functional.max_pool2d(ball, 11, 1, 5)[0, 0].numpy() > 0)  # > 5 px from the eyeball
    assert far.sum() > 5 and dark[far].mean() < 0.2 * dark[upper].mean()


def test_eyelash_coverage_function() -> None:
    g = torch.Generator().manual_seed(0)
    b = torch.rand(4000, generator=g) * 0.5
    upper = torch.rand(4000, generator=g) > 0.5
    angle = (torch.rand(4000, generator=g) * 2 - 1) * math.pi
    lash = hair_free = face_lib.eyelashes(_rng(0), b, upper, angle, 1.0, 0.0)
    assert lash.min() >= 0 and lash.max() <= 1
    margin, away = b > 0.45, b < 0.03
    assert lash[margin & upper].mean() > 0.8 and lash[margin & ~upper].mean() < 0.5
    assert lash[away].max() < 0.05  # nothing beyond the lashes' reach
    mid = (b > 0.1) & (b < 0.25) & upper
    assert 0.05 < (lash[mid] > 0.5).float().mean() < 0.95  # strokes with gaps between them
    assert (face_lib.eyelashes(_rng(0), b, upper, angle, 0.0, 0.0) == 0).all()
    liner = face_lib.eyelashes(_rng(0), b, upper, angle, 1.0, 1.0)
    assert (liner >= hair_free - 1e-6).all() and liner[mid].mean() > hair_free[mid].mean()


def test_lid_shadow_and_iris_structure() -> None:
    p = torch.tensor([0.5, 0.5, 0.0])
    shade = face_lib.lid_shadow(p, torch.tensor([True, False, True]), 0.8)
    assert shade[0] < shade[1] < 1 and shade[2] == 1
    rr = torch.linspace(0, 1, 400)
    phi = torch.linspace(-math.pi, math.pi, 400)
    base = torch.tensor([0.1, 0.2, 0.4])
    amber = torch.tensor([0.5, 0.3, 0.05])
    col = face_lib.iris(_rng(0), base, rr, phi, 0.35, amber)
    inner, outer = rr < 0.3, rr > 0.75
    dist = lambda c: (col / col.sum(1, keepdim=True) - c / c.sum()).norm(dim=1)  # noqa: E731 - chromaticity
    assert dist(amber)[inner].mean() < dist(amber)[outer].mean()
    assert col[outer].std(0).mean() > 0.01  # fibres and crypts


def test_catchlight_is_a_spot_where_the_normal_halves_light_and_view() -> None:
    light = torch.nn.functional.normalize(torch.tensor([0.5, -0.5, -1.0]), dim=0)
    view = torch.tensor([0.0, 0.0, -1.0])
    h = torch.nn.functional.normalize(light + view, dim=0)
    g = torch.Generator().manual_seed(0)
    n = torch.nn.functional.normalize(h + 0.3 * torch.randn(3000, 3, generator=g), dim=1)
    ang = torch.rad2deg(torch.acos((n @ h).clamp(-1, 1)))
    small, big = (face_lib.catchlight(n, view.expand(3000, 3), light, r) for r in (8.0, 20.0))
    assert small[ang < 2].min() > 0.99 and small[ang > 4.01].max() == 0
    assert big[ang > 10.01].max() == 0 and (big > 0).sum() > (small > 0).sum()


def test_mouth_parts_places_teeth_gaps_and_tongue() -> None:
    across = torch.linspace(-40, 40, 81).repeat(11)
    down = torch.linspace(0, 1, 11).repeat_interleave(81)
    near_upper, near_lower = down < 0.25, down > 0.85
    teeth, gaps, tongue = face_lib.mouth_parts(across, down, near_upper, near_lower, 10.0, lower_teeth=False)
    assert torch.equal(teeth, near_upper)
    assert gaps[across == 0].min() == 1 and gaps[across == 5].max() == 0  # gaps 10 px apart, one on the centre
    assert tongue[teeth].max() == 0 and tongue[(down > 0.9) & (across.abs() < 5)].min() > 0.9
    assert tongue[down < 0.35].max() == 0
    teeth2, _, _ = face_lib.mouth_parts(across, down, near_upper, near_lower, 10.0, lower_teeth=True)
    assert torch.equal(teeth2, near_upper | near_lower)


def _open_mouth_scene(size: int = 128) -> Scene:
    """A built-in head sample of the generation pipeline with its mouth open (inner mouth visible)."""
    pytest.importorskip("next3d_gen.head_model")
    from next3d_gen.pipeline import SamplePipeline
    from next3d_gen.sampling import GenerateConfig

    pipe = SamplePipeline(GenerateConfig(seed=11, image_size=size))
    for i in range(40):
        p = pipe.params(i)
        v, lm, frags, ann = pipe._pose_and_label(p)
        if (ann.seg[0] == C["inner_mouth"]).sum() > 60:
            return Scene(v[0], lm[0], pipe.layer.faces, p.K.to(v), p.cam2world.to(v), size, size, frags, ann,
                         pipe.model, {})  # fmt: skip
    pytest.fail("no open mouth in 40 samples")


def test_teeth_and_tongue_change_only_the_open_mouth_and_brighten_it() -> None:
    scene = _open_mouth_scene(256)  # a mouth opening several times the teeth's reach
    seg = scene.annotations.seg[0].numpy()
    mouth = seg == C["inner_mouth"]
    base = dict(QUIET, hair_prob=0.0, beard_prob=0.0, teeth_prob=0.0, lower_teeth_prob=0.0)
    outs = {t: _render(scene, 0, ProceduralConfig(**base, tongue_prob=t)).image.numpy().astype(float) for t in (0, 1)}
    d = np.abs(outs[1] - outs[0]).sum(-1) > 0
    assert d.any() and mouth[d].all()
    assert (outs[1] - outs[0])[d].mean() > 0  # the tongue is lighter than the cavity
    # teeth (teeth_prob draws from the main stream, so compare within one render): the upper teeth reach about 9 mm
    # below the upper lip, head_px / 32 rows (head_px: the longer side of the head's box); the mouth there is much
    # brighter than deeper in the mouth
    img = _render(scene, 0, ProceduralConfig(**dict(base, teeth_prob=1.0), tongue_prob=0.0)).image.numpy()
    lum = img.astype(float).mean(-1)
    x0, y0, x1, y1 = scene.annotations.bbox[0].tolist()
    reach = (max(3, round(max(x1 - x0, y1 - y0) / 16) | 1)) // 2
    upper_lip = seg == C["upper_lip"]
    below = [mouth & np.roll(upper_lip, r, 0) for r in range(1, reach + 2)]  # mouth pixels r rows under the lip
    teeth = np.logical_or.reduce(below[:reach])
    deeper = mouth & ~np.logical_or.reduce(below)  # more than reach + 1 rows under the lip
    assert reach >= 3 and teeth.sum() > 5 and deeper.sum() > 5, (reach, teeth.sum(), deeper.sum())
    assert lum[teeth].mean() > lum[deeper].mean() + 20
    assert lum[below[reach - 1]].mean() > lum[deeper].mean() + 20  # the deepest teeth row too


def test_catchlight_brightens_only_the_eyes(toy) -> None:
    scene = make_scene(toy, 128)
    seg = scene.annotations.seg[0].numpy()
    base = dict(QUIET, hair_prob=0.0, beard_prob=0.0, num_lights_range=(1, 1), light_azimuth_deg_range=(10.0, 10.0),
                light_elevation_deg_range=(10.0, 10.0), catchlight_radius_deg_range=(16.0, 16.0))  # fmt: skip
    off, on = (_render(scene, 0, ProceduralConfig(**base, catchlight_strength_range=(s, s))).image.numpy().astype(float)
               for s in (0.0, 1.0))  # fmt: skip
    d = (on - off).sum(-1)
    eyes = np.isin(seg, [C["right_eyeball"], C["left_eyeball"]])
    assert (d[~eyes] == 0).all() and d.min() >= 0 and d[eyes].max() > 60


def test_detail_options_are_validated() -> None:
    from next3d_gen.errors import UserError

    cfg = ProceduralConfig.from_dict({"beard_style_weights": [1, 0, 0, 0], "flyaway_count_range": [2, 5]})
    assert cfg.beard_style_weights == (1.0, 0.0, 0.0, 0.0) and cfg.flyaway_count_range == (2, 5)
    bad_options = (
        ({"flyaway_count_range": [-1, 3]}, "flyaway_count_range"),
        ({"beard_style_weights": [0, 0, 0, 0]}, "beard_style_weights"),
        ({"tongue_prob": 1.5}, "tongue_prob"),
        ({"shadow_softness_range": [0.2, 0.1]}, "shadow_softness"),
        ({"cloth_dark_prob": 0.7, "cloth_light_prob": 0.5}, "cloth_dark_prob"),
    )
    for bad, word in bad_options:
        with pytest.raises(UserError, match=word):
            ProceduralConfig.from_dict(bad)


# ----------------------------------------------------------------------------------------------------------------------
# clothes: colours, the collar over the neck, long hair behind the back

CLOTHES = dict(QUIET, hair_prob=0.0, beard_prob=0.0, shoulders_prob=1.0, collar_drop_range=(0.05, 0.05),
               neckline_width_range=(0.4, 0.4))  # fmt: skip


def test_cloth_colours_are_dark_or_light_as_asked() -> None:
    rng = _Rng(torch.Generator().manual_seed(0), torch.device("cpu"))
    dark = torch.stack([cloth_lib.cloth_colour(rng, 1.0, 0.0) for _ in range(50)])
    light = torch.stack([cloth_lib.cloth_colour(rng, 0.0, 1.0) for _ in range(50)])
    assert float(dark.max()) <= 0.2 + 1e-6  # value (the largest channel) 0.03-0.2
    assert float(light.min(1).values.min()) >= 0.75 * (1 - 0.12) - 1e-6 and float(light.max()) <= 0.97 + 1e-6
    anyc = torch.stack([cloth_lib.cloth_colour(rng, 0.0, 0.0) for _ in range(200)])
    assert float(anyc.max(1).values.min()) >= 0.15 - 1e-6  # Draws.colour's value range


def test_clothes_cover_the_neck_below_the_collar_only(toy) -> None:
    scene = make_scene(toy, 96)
    seg = scene.annotations.seg[0].numpy()
    head = scene.annotations.mask[0].numpy()
    neck = np.isin(seg, [C["neck"], C["neck_back"]]) & head
    chin_y = float(scene.annotations.landmarks_2d[0, 8, 1])
    assert neck.sum() > 30
    covered_px = 0
    for seed in range(3):
        bare = _labels(_render(scene, seed, ProceduralConfig(**dict(CLOTHES, shoulders_prob=0.0))), scene)
        assert not (bare == C["background"]).any()
        out = _render(scene, seed, ProceduralConfig(**CLOTHES))
        lab = _labels(out, scene)
        covered = lab == C["background"]
        assert (neck[covered]).all() and (np.nonzero(covered)[0] > chin_y).all()  # the neck, below the chin
        np.testing.assert_array_equal(lab[~neck], bare[~neck])  # nothing else changes its label
        occluded = np.zeros_like(covered) if out.occluder_mask is None else out.occluder_mask.numpy()
        np.testing.assert_array_equal(occluded, covered)  # covered neck pixels lose the head's geometry
        covered_px += int(covered.sum())
    assert covered_px > 20


@pytest.mark.parametrize("seed", range(3))
def test_clothes_looks_do_not_move_labels(toy, seed: int) -> None:
    """Colours, folds, patterns and shirts draw after the clothes' label decisions: labels stay byte-identical."""
    scene = make_scene(toy, 80, yaw=15.0)
    base = dict(CLOTHES, hair_prob=1.0, hair_volume_prob=1.0, long_hair_prob=1.0, collar_drop_range=(0.05, 0.5),
                cloth_dark_prob=0.0, cloth_light_prob=0.0, cloth_pattern_prob=0.0, shirt_prob=0.0)  # fmt: skip
    other = dict(base, cloth_dark_prob=1.0, cloth_pattern_prob=1.0, shirt_prob=1.0, cloth_fold_range=(0.3, 0.3))
    a, b = (_render(scene, seed, ProceduralConfig(**o)) for o in (base, other))
    np.testing.assert_array_equal(_labels(a, scene), _labels(b, scene))
    assert not torch.equal(a.image, b.image)


def test_long_hair_behind_the_clothes_is_hidden_by_them(toy) -> None:
    scene = make_scene(toy, 80)
    base = dict(CLOTHES, hair_prob=1.0, hair_volume_prob=1.0, long_hair_prob=1.0, collar_drop_range=(0.05, 0.05),
                flyaway_count_range=(0, 0))  # fmt: skip
    fewer = 0
    for seed in range(3):
        over, behind = (_labels(_render(scene, seed, ProceduralConfig(**dict(base, hair_behind_clothes_prob=p))), scene)
                        for p in (0.0, 1.0))  # fmt: skip
        assert not ((behind == HAIR) & (over != HAIR)).any()  # only removes hair
        fewer += int(((over == HAIR) & (behind != HAIR)).sum())
    assert fewer > 20


# ----------------------------------------------------------------------------------------------------------------------
# ears


def test_ear_relief_has_a_light_rim_and_a_dark_hollow() -> None:
    inside = torch.linspace(0.4, 1.0, 61)
    assert torch.equal(face_lib.ear_relief(inside, 0.0), torch.ones(61))
    f = face_lib.ear_relief(inside, 1.0)
    rim, hollow = f[(inside > 0.62) & (inside < 0.7)], f[inside > 0.97]
    assert float(rim.min()) > 1.1 and torch.allclose(hollow, torch.full_like(hollow, 0.4))
    assert torch.equal(f[inside < 0.5], torch.ones(int((inside < 0.5).sum())))  # outside the outline: unchanged


def test_ear_relief_darkens_the_middle_of_the_ears_only(toy) -> None:
    scene = make_scene(toy, 96, yaw=60.0)
    seg = scene.annotations.seg[0].numpy()
    ear = np.isin(seg, [C["right_ear"], C["left_ear"]])
    assert ear.sum() > 20
    base = dict(QUIET, **NO_SKIN_DETAIL, hair_prob=0.0, beard_prob=0.0)
    flat, relief = (_render(scene, 0, ProceduralConfig(**dict(base, ear_relief_range=(r, r)))) for r in (0.0, 0.8))
    diff = relief.image.numpy().astype(int).sum(-1) - flat.image.numpy().astype(int).sum(-1)
    assert (diff[~ear] == 0).all() and (diff[ear] < 0).sum() > 3
