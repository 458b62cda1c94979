"""Hair and eyeglasses classes (issue 10, part 3): label/pixel consistency, the pipeline's layer rule, determinism,
schema version 1 files still read and train.

Label consistency is checked against the pixels, not against the renderer's own masks: two renders that differ only
in the hair colour (black vs white) differ exactly on the pixels painted with hair; two renders over a flat black and
a flat white background give the hair volume's coverage of every background pixel (``1 - (white - black)``); two
renders with and without glasses differ where the glasses were drawn.
"""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from next3d_gen import h5
from next3d_gen.errors import UserError
from next3d_gen.labels import (
    IGNORE_INDEX,
    LAYER_COVERAGE_THRESHOLD,
    SYNTH,
    SYNTH_TO_REAL,
    SYNTH_V1,
    SYNTH_V2,
    real_merged_active,
)
from next3d_gen.render.base import NO_OVERRIDE, RenderOutput, Scene
from next3d_gen.render.procedural import (
    HAIR_COLOURS,
    NO_CAMERA_EFFECTS,
    ProceduralConfig,
    ProceduralRenderer,
    _through_lens,
)

sys.path.insert(0, str(Path(__file__).parent))
from test_procedural_render import make_scene, toy_head_model  # noqa: E402

C = {name: SYNTH.id(name) for name in SYNTH.classes}
HAIR, GLASSES = C["hair"], C["eyeglasses"]
ROOT = Path(__file__).resolve().parents[1]

# Everything that is not hair or glasses is switched off or made deterministic in pixels (no blur, no noise, no
# anti-aliasing filter, no shoulders), so that two renders differ only by what a test changes.
QUIET = dict(NO_CAMERA_EFFECTS, hand_prob=0.0, object_prob=0.0, antialias=False, shoulders_prob=0.0)
# Beards (partial coverage, so their thin edge depends on the hair colour without being hair) are checked by their
# measured coverage in test_render_realism.py.
HAIR_ON = dict(QUIET, hair_prob=1.0, fringe_prob=1.0, fringe_length_range=(0.5, 0.9), hair_volume_prob=1.0,
               hair_volume_range=(0.12, 0.2), glasses_prob=0.0, beard_prob=0.0)  # fmt: skip
ONE_HOT = {"black": (1.0,) + (0.0,) * 7, "white": (0.0,) * 7 + (1.0,)}
assert HAIR_COLOURS[0] == (18, 15, 14) and HAIR_COLOURS[-1] == (214, 210, 204)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def toy():
    return toy_head_model()


def _render(scene: Scene, seed: int, renderer: ProceduralRenderer) -> RenderOutput:
    return renderer.render(scene, torch.Generator().manual_seed(seed))


def _override(out: RenderOutput, scene: Scene) -> np.ndarray:
    if out.label_override is None:
        return np.full((scene.height, scene.width), NO_OVERRIDE, np.uint8)
    assert out.label_override.dtype == torch.uint8 and out.label_override.shape == (scene.height, scene.width)
    return out.label_override.numpy()


class _FlatBackground(ProceduralRenderer):
    """The procedural renderer over a flat grey ``level`` background layer (draws no random numbers for it)."""

    def __init__(self, config: ProceduralConfig, level: float) -> None:
        super().__init__(config)
        self.level = level

    def _background(self, rng, kind, H, W, device):  # noqa: ANN001, ANN202 - same signature as the parent
        return torch.full((3, H, W), self.level, device=device)


@pytest.mark.parametrize("view", [dict(pitch=-25.0), dict(yaw=55.0, pitch=-10.0)])
@pytest.mark.parametrize("seed", [0, 1])
def test_hair_labels_are_where_hair_is_painted_on_the_head(toy, view: dict, seed: int) -> None:
    """Head pixels: ``hair`` exactly where the image depends on the hair colour (scalp hair and fringe are opaque)."""
    scene = make_scene(toy, 96, **view)
    seg = scene.annotations.seg[0].numpy()
    head = scene.annotations.mask[0].numpy()
    outs = {k: _render(scene, seed, ProceduralRenderer(ProceduralConfig(**HAIR_ON, hair_colour_weights=w)))
            for k, w in ONE_HOT.items()}  # fmt: skip
    lab = _override(outs["black"], scene)
    np.testing.assert_array_equal(lab, _override(outs["white"], scene))  # labels do not depend on colours
    diff = np.abs(outs["white"].image.numpy().astype(int) - outs["black"].image.numpy().astype(int)).sum(-1)
    # brows take their colour from the hair colour, lash lines too (on the eye regions): not hair, not compared
    skip = np.isin(seg, [C[n] for n in ("right_eyebrow", "left_eyebrow", "right_eye_region", "left_eye_region")])
    check = head & ~skip
    hair = lab == HAIR
    assert hair[seg == C["scalp"]].all(), "every scalp pixel is covered by hair when hair is on"
    np.testing.assert_array_equal(hair[check], diff[check] > 0)
    assert diff[check & hair].min() > 20  # clearly painted, not a rounding difference
    fringe = hair & head & (seg != C["scalp"])
    assert fringe.any(), "the forced fringe lies on non-scalp head pixels"
    # the fringe is an occluder of the head surface; bare head pixels are not
    occ = outs["black"].occluder_mask.numpy()
    np.testing.assert_array_equal(occ, fringe)


@pytest.mark.parametrize("long_hair, flyaways", [(0.0, 0), (1.0, 0), (0.0, 200), (1.0, 200)])
@pytest.mark.parametrize("seed", [0, 3])
def test_hair_volume_label_follows_its_coverage(toy, seed: int, long_hair: float, flyaways: int) -> None:
    """Background pixels: ``hair`` exactly where the coverage of the hair volume and the flyaway strands, measured
    from the pixels of renders over a black and a white background, is >= LAYER_COVERAGE_THRESHOLD (short and long
    hair, with and without flyaways)."""
    scene = make_scene(toy, 80, pitch=-20.0)
    head = scene.annotations.mask[0].numpy()
    # the layer is drawn at 40 px and upsampled
    cfg = ProceduralConfig(**HAIR_ON, background_max_side=40, long_hair_prob=long_hair,
                           flyaway_count_range=(flyaways, flyaways))  # fmt: skip
    black, white = (_render(scene, seed, _FlatBackground(cfg, level)) for level in (0.0, 1.0))
    lab = _override(black, scene)
    np.testing.assert_array_equal(lab, _override(white, scene))
    # over black: c * a; over white: (1 - a) + c * a  ->  a = 1 - (white - black), up to 8-bit rounding
    alpha = 1.0 - (white.image.numpy().astype(np.float64) - black.image.numpy().astype(np.float64)).mean(-1) / 255.0
    bg = ~head
    clear = bg & (np.abs(alpha - LAYER_COVERAGE_THRESHOLD) > 2.5 / 255)
    np.testing.assert_array_equal(lab[clear] == HAIR, alpha[clear] >= LAYER_COVERAGE_THRESHOLD)
    assert (lab[bg] == HAIR).sum() > 20 and ((alpha[bg] > 0.02) & (alpha[bg] < 0.45)).sum() > 5  # soft edge exists
    assert not np.isin(lab[bg], [c for c in range(256) if c not in (HAIR, NO_OVERRIDE)]).any()
    # no hair anywhere when the renderer draws none
    bare = _render(scene, seed, ProceduralRenderer(ProceduralConfig(**dict(HAIR_ON, hair_prob=0.0))))
    assert not (_override(bare, scene) == HAIR).any()


def test_long_hair_falls_below_the_short_hair(toy) -> None:
    """Long hair reaches lower in the image than the same sample's short hair volume (sanity of the sweep)."""
    scene = make_scene(toy, 80, pitch=-20.0)
    low = {}
    for long_hair in (0.0, 1.0):
        out = _render(
            scene,
            0,
            ProceduralRenderer(
                ProceduralConfig(**HAIR_ON, long_hair_prob=long_hair, long_hair_length_range=(1.0, 1.0))
            ),
        )
        low[long_hair] = int(np.flatnonzero((_override(out, scene) == HAIR).any(1)).max())
    assert low[1.0] > low[0.0] + 10, low


@pytest.mark.parametrize("view", [dict(), dict(yaw=60.0)])
def test_eyeglasses_labels_only_where_the_glasses_are_drawn(toy, view: dict) -> None:
    """``eyeglasses`` only on pixels the glasses changed (dark lenses: every lens pixel changes), never without
    glasses; frames and dark lenses hide the head surface (occluder) and are eyeglasses there."""
    scene = make_scene(toy, 96, **view)
    head = scene.annotations.mask[0].numpy()
    base = dict(QUIET, hair_prob=0.0, fringe_prob=0.0, sunglasses_prob=1.0)
    seen = 0
    for seed in range(3):
        on = _render(scene, seed, ProceduralRenderer(ProceduralConfig(**base, glasses_prob=1.0)))
        off = _render(scene, seed, ProceduralRenderer(ProceduralConfig(**base, glasses_prob=0.0)))
        assert not (_override(off, scene) == GLASSES).any() and off.occluder_mask is None
        lab = _override(on, scene) == GLASSES
        changed = (on.image.numpy() != off.image.numpy()).any(-1)
        assert lab.sum() == 0 or (changed[lab]).mean() >= 0.98, (seed, (changed[lab]).mean())
        if on.occluder_mask is not None:
            occ = on.occluder_mask.numpy()
            assert lab[occ].all() and not (occ & ~head).any()
        seen += int(lab.sum())
    assert seen > 50


@pytest.mark.parametrize("yaw", [60.0, -65.0])
def test_eyeglasses_label_on_the_background_follows_coverage(toy, yaw: float) -> None:
    """Glasses beyond the head's silhouette, over a flat black and a flat white background: the white - black
    difference of a pixel is (1 - 0.92 L) (1 - c) for frame coverage c and dark-lens coverage L (the renderer's
    compositing). Both below the threshold 0.5 means a difference above 0.27, either at or above it means at most
    0.54: so eyeglasses exactly where one of them reaches 0.5 requires labels below 0.27 and none above 0.54."""
    scene = make_scene(toy, 96, yaw=yaw)
    bg = ~scene.annotations.mask[0].numpy()
    cfg = ProceduralConfig(**QUIET, hair_prob=0.0, fringe_prob=0.0, glasses_prob=1.0, sunglasses_prob=1.0)
    eps = 2.5 / 255
    labelled = 0
    for seed in range(4):
        black, white = (_render(scene, seed, _FlatBackground(cfg, level)) for level in (0.0, 1.0))
        lab = _override(black, scene) == GLASSES
        np.testing.assert_array_equal(lab, _override(white, scene) == GLASSES)
        d = (white.image.numpy().astype(np.float64) - black.image.numpy().astype(np.float64)).mean(-1) / 255.0
        assert lab[bg & (d < 0.5 * 0.54 - eps)].all()
        assert not lab[bg & (d > 0.54 + eps)].any()
        labelled += int((lab & bg).sum())
    assert labelled > 10


@pytest.mark.parametrize("sunglasses", [0.0, 1.0])
def test_eyes_keep_their_class_behind_clear_lenses_only(toy, sunglasses: float) -> None:
    """CelebAMask-HQ's rule: an eye seen through a clear lens is an eye (only the frame's pixels over it are
    eyeglasses), the skin behind the lens is eyeglasses; a dark lens hides the eye: eyeglasses, an occluder."""
    scene = make_scene(toy, 96)
    seg = scene.annotations.seg[0].numpy()
    eyes = np.isin(seg, [C["right_eyeball"], C["left_eyeball"]])
    skin = np.isin(seg, [C["right_eye_region"], C["left_eye_region"]])
    cfg = ProceduralConfig(**QUIET, hair_prob=0.0, fringe_prob=0.0, glasses_prob=1.0, sunglasses_prob=sunglasses)
    for seed in range(3):
        out = _render(scene, seed, ProceduralRenderer(cfg))
        over = _override(out, scene)
        occ = np.zeros_like(eyes) if out.occluder_mask is None else out.occluder_mask.numpy()
        assert (over[skin] == GLASSES).mean() > 0.5, seed  # the lenses cover the skin round the eyes
        if sunglasses:
            assert (over[eyes] == GLASSES).all() and occ[eyes].all()
        else:
            assert occ[eyes].mean() < 0.1  # a clear lens is not an occluder: the eye's depth and landmarks stay
            np.testing.assert_array_equal(over[eyes] == GLASSES, occ[eyes])  # eyeglasses only under the frame


@pytest.mark.parametrize("k", [1.0, 0.5])
def test_a_clear_lens_scales_the_image_about_its_centre(k: float) -> None:
    """Through a lens of magnification k, the pixel at lens centre + d shows the image at centre + d / k (bilinear
    sampling at whole pixels is exact): checked on both lenses against direct indexing."""
    H, W = 40, 60
    img = torch.rand(H * W, 3, generator=torch.Generator().manual_seed(0))
    K = torch.tensor([[100.0, 0.0, 30.0], [0.0, 100.0, 20.0], [0.0, 0.0, 1.0]])
    origin, x = torch.tensor([0.0, 0.0, 1.0]), torch.tensor([1.0, 0.0, 0.0])  # lens centres: pixels (20, 20), (40, 20)
    rows, cols, us = [], [], []
    for cx, side in ((20, -1.0), (40, 1.0)):
        for dx, dy in ((0, 0), (2, 1), (-3, 2), (4, -4)):
            rows.append(20 + dy), cols.append(cx + dx), us.append(side * 0.1 + dx / 100)
    ids = torch.tensor(rows) * W + torch.tensor(cols)
    out = _through_lens(img, H, W, ids, torch.tensor(us), K, origin, x, 0.2, k)
    src_c = [round(cx + (c - cx) / k) for c, cx in zip(cols, [20] * 4 + [40] * 4, strict=True)]
    src_r = [round(20 + (r - 20) / k) for r in rows]
    expected = img[torch.tensor(src_r) * W + torch.tensor(src_c)]
    torch.testing.assert_close(out, expected)


# ---------------------------------------------------------------------------------------------------------------------
# pipeline: how a renderer's layers become labels


class _LayerRenderer:
    """Draws nothing but reports fixed layers: a fringe-like occluder labelled hair (rows 0-9 of the head), hair on
    the background (rows 0-9 outside the head), a clear lens (rows 20-29, label only) and a hand (rows 36-39,
    occluder, background)."""

    name = "layers"
    latent_dim = 0

    def render(self, scene: Scene, generator: torch.Generator) -> RenderOutput:
        H, W = scene.height, scene.width
        head = scene.annotations.mask[0]
        top = int(head.any(1).nonzero()[0])
        lab = torch.full((H, W), NO_OVERRIDE, dtype=torch.uint8)
        occ = torch.zeros(H, W, dtype=torch.bool)
        lab[top : top + 10] = HAIR
        occ[top : top + 10] = head[top : top + 10]
        lab[top + 20 : top + 30] = GLASSES
        lab[top + 36 : top + 40] = 0
        occ[top + 36 : top + 40] = head[top + 36 : top + 40]
        image = torch.zeros(H, W, 3, dtype=torch.uint8)
        return RenderOutput(image=image, latent=torch.zeros(0), occluder_mask=occ, label_override=lab)


def test_pipeline_applies_layers_and_occluders() -> None:
    from gen_fixtures import tiny_config_dict, tiny_head_model

    from next3d_gen.pipeline import SamplePipeline
    from next3d_gen.sampling import config_from_dict

    pipe = SamplePipeline(config_from_dict(tiny_config_dict(64)), model=tiny_head_model(), renderer=_LayerRenderer())
    p = pipe.params(0)
    _, ann = pipe.label_view(p)
    rec = pipe.to_record(p, ann, pipe.renderer.render(_scene_of(pipe, p), p.generator))
    raw_seg, raw_depth = ann.seg[0].numpy(), ann.depth[0].numpy()
    head = ann.mask[0].numpy()
    top = int(np.flatnonzero(head.any(1))[0])
    rows = np.arange(64)[:, None] * np.ones((1, 64), int)
    occ = head & (((rows >= top) & (rows < top + 10)) | ((rows >= top + 36) & (rows < top + 40)))
    hair = (rows >= top) & (rows < top + 10)
    lens = (rows >= top + 20) & (rows < top + 30)
    hand = (rows >= top + 36) & (rows < top + 40)
    want = raw_seg.copy()
    want[hair], want[lens], want[hand] = HAIR, GLASSES, 0
    np.testing.assert_array_equal(rec["seg"], want)
    # geometry: gone under the occluders, the head's under the label-only lens, 0 on the background
    np.testing.assert_array_equal(rec["depth"] > 0, head & ~occ)
    np.testing.assert_array_equal(rec["depth"][head & ~occ], raw_depth[head & ~occ].astype(np.float16))
    assert (rec["uv"][occ] == -1).all() and (rec["normal"][occ] == 0).all()
    # landmarks: not visible under an occluder, unchanged under the lens
    lm_row = np.rint(rec["landmarks_2d"][:, 1]).astype(int)
    lm_col = np.rint(rec["landmarks_2d"][:, 0]).astype(int)
    inside = (lm_row >= 0) & (lm_row < 64) & (lm_col >= 0) & (lm_col < 64)
    raw_vis = ann.landmarks_visible[0].numpy()
    under = np.zeros(68, bool)
    under[inside] = occ[lm_row[inside], lm_col[inside]]
    np.testing.assert_array_equal(rec["landmarks_visible"], raw_vis & ~under)


def _scene_of(pipe, p) -> Scene:  # noqa: ANN001
    fragments, ann = pipe.label_view(p)
    return Scene(torch.zeros(0, 3), torch.zeros(68, 3), pipe.layer.faces, p.K, p.cam2world, 64, 64, fragments, ann,
                 pipe.model, {})  # fmt: skip


def test_pipeline_rejects_override_ids_beyond_the_space() -> None:
    from gen_fixtures import tiny_config_dict, tiny_head_model

    from next3d_gen.pipeline import SamplePipeline
    from next3d_gen.sampling import config_from_dict

    class Bad(_LayerRenderer):
        def render(self, scene, generator):  # noqa: ANN001, ANN202
            out = super().render(scene, generator)
            out.label_override[0, 0] = SYNTH.num_classes
            return out

    pipe = SamplePipeline(config_from_dict(tiny_config_dict(32)), model=tiny_head_model(), renderer=Bad())
    with pytest.raises(ValueError, match="label_override"):
        pipe.generate(0)


# ---------------------------------------------------------------------------------------------------------------------
# built-in head end to end: classes present, deterministic


def test_builtin_generation_has_hair_and_glasses_and_is_deterministic(tmp_path: Path) -> None:
    pytest.importorskip("next3d_gen.head_model")
    from next3d_gen.pipeline import SamplePipeline, generate_shard
    from next3d_gen.sampling import config_from_dict

    options = {"hair_prob": 1.0, "fringe_prob": 0.5, "hair_volume_prob": 1.0, "glasses_prob": 1.0,
               "sunglasses_prob": 0.5, "hand_prob": 0.0, "object_prob": 0.0}  # fmt: skip
    cfg = {"seed": 3, "image_size": 64, "shape": {"count": 10}, "expression": {"count": 5},
           "renderer": {"name": "procedural", "procedural": options}}  # fmt: skip
    out = generate_shard(SamplePipeline(config_from_dict(cfg)), str(tmp_path / "a.h5"), 4)
    assert out.finished
    generate_shard(SamplePipeline(config_from_dict(cfg)), str(tmp_path / "b.h5"), 4)
    with h5.SampleReader(tmp_path / "a.h5") as a, h5.SampleReader(tmp_path / "b.h5") as b:
        assert a.attrs[h5.ATTR_SCHEMA_VERSION] == h5.SCHEMA_VERSION == 3 and a.label_space == SYNTH
        segs = [a[i]["seg"] for i in range(4)]
        counts = np.zeros(4, int)
        for i in range(4):
            for key, value in a[i].items():
                assert value.tobytes() == b[i][key].tobytes(), (i, key)
            s = a[i]
            hair = s["seg"] == HAIR
            assert s["seg"].max() < SYNTH.num_classes
            # hair on the background (volume) has no depth; scalp hair keeps the head's depth
            counts += [hair.any(), (s["seg"] == GLASSES).any(), (s["depth"][hair] > 0).any(),
                       (s["depth"][hair] == 0).any()]  # fmt: skip
        assert (counts >= 3).all(), counts
    other = SamplePipeline(config_from_dict(dict(cfg, seed=4))).generate(0)["seg"]
    assert other.tobytes() != segs[0].tobytes()


def test_resumed_shard_with_hair_and_glasses_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    """A shard left partial (rows 1 and 3 incomplete, as after a kill) and resumed holds the same rows as one
    written in one go: the label layers are as deterministic as the rest."""
    pytest.importorskip("next3d_gen.head_model")
    import shutil

    from next3d_gen.pipeline import SamplePipeline, generate_shard
    from next3d_gen.sampling import config_from_dict

    options = {"hair_prob": 1.0, "long_hair_prob": 0.5, "hair_volume_prob": 1.0, "glasses_prob": 1.0}
    cfg = config_from_dict({"seed": 9, "image_size": 48, "renderer": {"name": "procedural", "procedural": options}})
    generate_shard(SamplePipeline(cfg), str(tmp_path / "ref.h5"), 4)
    partial = tmp_path / "cut.h5.partial"
    shutil.copy(tmp_path / "ref.h5", partial)
    with h5py.File(partial, "r+") as f:
        f["complete"][1] = f["complete"][3] = False
        f["seg"][1] = np.zeros_like(f["seg"][1])  # what a killed writer may leave in an incomplete row
    writer = generate_shard(SamplePipeline(cfg), str(tmp_path / "cut.h5"), 4)
    assert writer.finished and not partial.exists()
    with h5.SampleReader(tmp_path / "ref.h5") as a, h5.SampleReader(tmp_path / "cut.h5") as b:
        assert len(a) == len(b) == 4 and any((a[i]["seg"] == HAIR).any() for i in range(4))
        for i in range(4):
            for key, value in a[i].items():
                assert value.tobytes() == b[i][key].tobytes(), (i, key)


# ---------------------------------------------------------------------------------------------------------------------
# schema versions 1 and 2


@pytest.mark.parametrize(("version", "space"), [(1, SYNTH_V1), (2, SYNTH_V2)])
def test_older_version_files_read_as_the_23_class_space_and_train(tmp_path: Path, version: int, space) -> None:  # noqa: ANN001
    from synthforge.cli import main as cli_main
    from synthforge.data.toy import write_toy_dataset

    v1 = write_toy_dataset(tmp_path / "v1.h5", 8, 64, seed=0, schema_version=version)
    with h5py.File(v1, "r") as f:  # written as that version's writer did
        assert f.attrs[h5.ATTR_SCHEMA_VERSION] == version
        assert json_classes(f.attrs[h5.ATTR_LABEL_SPACE]) == list(space.classes)
    with h5.SampleReader(v1) as r:
        assert r.label_space == SYNTH and r.label_space.num_classes == 23
        assert max(int(r[i]["seg"].max()) for i in range(len(r))) < 20
    val = write_toy_dataset(tmp_path / "val.h5", 4, 64, seed=1)  # a version-3 validation set joins it
    code = cli_main(
        [
            "train",
            "--config",
            str(ROOT / "configs/stage1/tiny.yaml"),
            f"--data.train={v1}",
            f"--data.val={val}",
            f"--trainer.default_root_dir={tmp_path / 'run'}",
            "--trainer.max_steps=2",
        ]
    )
    assert code == 0
    ckpt = torch.load(tmp_path / "run/lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2 and json_classes(ckpt["synthforge"]["label_space"]) == list(SYNTH.classes)


def test_version_2_hair_trains_as_hair_or_beard(tmp_path: Path) -> None:
    """Version 2 labelled beards hair: its hair pixels become the partial label {hair, beard}; version 3 is as is."""
    from synthforge.data.dataset import SynthFaceDataset, file_merge_table
    from synthforge.data.toy import write_toy_dataset

    v2 = write_toy_dataset(tmp_path / "v2.h5", 2, 64, seed=0, schema_version=2)
    with h5py.File(v2, "r+") as f:  # the toy faces have no hair: paint the face region hair
        seg = f["seg"][0]
        seg[seg == SYNTH.id("face")] = HAIR
        f["seg"][0] = seg
    ds = SynthFaceDataset(v2, crop_size=48)
    assert file_merge_table(ds.reader) is not None and ds.label_space == SYNTH
    item = ds[0]
    partial = item["seg_partial"] != 0
    assert partial.any() and (item["seg"][partial] == IGNORE_INDEX).all()
    assert set(item["seg_partial"][partial].unique().tolist()) == {(1 << HAIR) | (1 << SYNTH.id("beard"))}
    assert (item["seg"] != IGNORE_INDEX).any()  # the other classes stay hard labels
    v3 = write_toy_dataset(tmp_path / "v3.h5", 2, 64, seed=0)
    with h5.SampleReader(v3) as r:
        assert file_merge_table(r) is None


def json_classes(text) -> list[str]:  # noqa: ANN001
    import json

    return json.loads(text.decode() if isinstance(text, bytes) else text)["classes"]


def test_unknown_schema_version_is_refused(tmp_path: Path) -> None:
    from synthforge.data.toy import write_toy_dataset

    path = write_toy_dataset(tmp_path / "v.h5", 2, 32)
    with h5py.File(path, "r+") as f:
        f.attrs[h5.ATTR_SCHEMA_VERSION] = 4
    with pytest.raises(UserError, match=r"schema version 4, expected 1 or 2 or 3"):
        h5.SampleReader(path)


def test_a_version_1_shard_is_never_resumed_by_the_current_writer(tmp_path: Path) -> None:
    from synthforge.data.toy import make_toy_sample

    shapes = h5.sample_shapes(32, 32, 4, 4, 0)
    config = {"toy": True}
    old = h5.make_attrs(SYNTH_V1.to_json(), config, 32)
    old[h5.ATTR_SCHEMA_VERSION] = 1
    w = h5.ShardWriter(tmp_path / "s.h5", 3, shapes, old)
    w.write(0, make_toy_sample(np.random.default_rng(0), 32))
    w.close()  # a partial version-1 shard, same generator config
    new = h5.make_attrs(SYNTH.to_json(), config, 32)
    with pytest.raises(UserError, match="schema version 1, not 3"):
        h5.ShardWriter(tmp_path / "s.h5", 3, shapes, new)
    with pytest.raises(UserError, match="another label space"):
        h5.ShardWriter(tmp_path / "s.h5", 3, shapes, dict(old, **{h5.ATTR_LABEL_SPACE: SYNTH.to_json()}))
    w = h5.ShardWriter(tmp_path / "s.h5", 3, shapes, dict(old))  # a writer of its own version resumes it
    assert w.pending_rows() == [1, 2]
    w.close()


# ---------------------------------------------------------------------------------------------------------------------
# label space as data


def test_label_space_extends_versions_1_and_2() -> None:
    assert SYNTH.classes[:20] == SYNTH_V1.classes and SYNTH.classes[20:] == ("hair", "eyeglasses", "beard")
    assert SYNTH.classes[:22] == SYNTH_V2.classes and SYNTH.palette[:22] == SYNTH_V2.palette
    assert SYNTH.palette[:20] == SYNTH_V1.palette and len(set(SYNTH.palette)) == SYNTH.num_classes
    assert SYNTH.flip_pairs == SYNTH_V1.flip_pairs and SYNTH.flip_lut()[HAIR] == HAIR
    assert real_merged_active(SYNTH)[-2:] == ("hair", "eyeglasses")
    lut = SYNTH_TO_REAL.lut(SYNTH, real_merged_active(SYNTH))
    from next3d_gen.labels import REAL_MERGED

    assert REAL_MERGED.classes[lut[HAIR]] == "hair" and REAL_MERGED.classes[lut[GLASSES]] == "eyeglasses"
    assert REAL_MERGED.classes[lut[SYNTH.id("beard")]] == "skin"  # CelebAMask-HQ and LaPa paint beards skin
