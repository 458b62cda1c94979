"""Merge tables onto the merged real classes (next3d_gen.labels) and the crop helpers used to score real faces."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from next3d_gen.labels import (
    CELEBAMASK_HQ,
    CELEBAMASK_HQ_GMASK_ORDER,
    CELEBAMASK_HQ_TO_REAL,
    IGNORE_INDEX,
    LABEL_SPACES,
    LAPA,
    LAPA_TO_REAL,
    REAL_MERGE_TABLES,
    REAL_MERGED,
    REAL_MERGED_OPTIONAL,
    SYNTH,
    SYNTH_TO_REAL,
    SYNTH_V1,
    SYNTH_V2,
    LabelSpace,
    real_merged_active,
    relabel_lut,
)
from synthforge.crops import face_crop_matrix, mask_box_points, transform_points

BASE = ("background", "skin", "nose", "eyes", "brows", "lips", "inner_mouth", "ears", "neck")


SPACES = {
    "synthforge20": SYNTH_V1,
    "synthforge22": SYNTH_V2,
    "synthforge23": SYNTH,
    "celebamask_hq19": CELEBAMASK_HQ,
    "lapa11": LAPA,
}
TABLE_OF = {
    "synthforge20": SYNTH_TO_REAL,
    "synthforge22": SYNTH_TO_REAL,
    "synthforge23": SYNTH_TO_REAL,
    "celebamask_hq19": CELEBAMASK_HQ_TO_REAL,
    "lapa11": LAPA_TO_REAL,
}


def test_tables_are_keyed_by_their_spaces() -> None:
    assert set(REAL_MERGE_TABLES) == {SYNTH.name, CELEBAMASK_HQ.name, LAPA.name}
    for name, table in REAL_MERGE_TABLES.items():
        assert table.space == name and name in LABEL_SPACES


@pytest.mark.parametrize("space_name", sorted(SPACES))
def test_every_source_class_appears_once_and_names_exist(space_name: str) -> None:
    space, table = SPACES[space_name], TABLE_OF[space_name]
    counts = Counter(table.source_names())
    assert max(counts.values()) == 1, f"classes listed twice: {[n for n, c in counts.items() if c > 1]}"
    assert set(space.classes) <= set(counts), f"unmapped: {set(space.classes) - set(counts)}"
    assert set(counts) - set(space.classes) <= set(table.optional_names)
    assert {merged for merged, _ in table.columns} <= set(REAL_MERGED.classes)


@pytest.mark.parametrize("space_name", sorted(SPACES))
@pytest.mark.parametrize("with_optional", [False, True])
def test_lut_length_and_values(space_name: str, with_optional: bool) -> None:
    space, table = SPACES[space_name], TABLE_OF[space_name]
    active = real_merged_active(SYNTH if with_optional else SYNTH_V1)
    if table is SYNTH_TO_REAL:  # the predicting space itself decides which optional classes are active
        active = real_merged_active(space)
    lut = table.lut(space, active)
    assert lut.shape == (256,) and lut.dtype == np.uint8
    inside = lut[: space.num_classes]
    assert np.all((inside == IGNORE_INDEX) | np.isin(inside, [REAL_MERGED.id(n) for n in active]))
    assert np.all(lut[space.num_classes :] == IGNORE_INDEX)
    assert lut[space.background] == REAL_MERGED.background
    if table is SYNTH_TO_REAL:  # a prediction always lands in a merged class, never in "ignore"
        assert np.all(inside != IGNORE_INDEX)


def test_active_merged_classes() -> None:
    assert real_merged_active(SYNTH_V1) == BASE
    assert real_merged_active(SYNTH) == BASE + ("hair", "eyeglasses")
    assert set(REAL_MERGED.classes) == set(BASE) | set(REAL_MERGED_OPTIONAL)
    assert len(REAL_MERGED.classes) == 11  # background + ten merged classes


def _merged(table, space: LabelSpace, name: str, active: tuple[str, ...]) -> str | None:
    value = int(table.lut(space, active)[space.id(name)])
    return None if value == IGNORE_INDEX else REAL_MERGED.classes[value]


def test_expected_mappings_without_and_with_hair_and_eyeglasses() -> None:
    base, full = real_merged_active(SYNTH_V1), real_merged_active(SYNTH)
    expected_synth = {
        "face": "skin",
        "forehead": "skin",
        "glabella": "skin",
        "brow_band": "skin",
        "right_eye_region": "skin",
        "left_eye_region": "skin",
        "right_eyeball": "eyes",
        "left_eyeball": "eyes",
        "right_eyebrow": "brows",
        "left_eyebrow": "brows",
        "nose": "nose",
        "upper_lip": "lips",
        "lower_lip": "lips",
        "inner_mouth": "inner_mouth",
        "right_ear": "ears",
        "left_ear": "ears",
        "neck": "neck",
        "neck_back": "neck",
    }
    for name, merged in expected_synth.items():
        assert _merged(SYNTH_TO_REAL, SYNTH_V1, name, base) == merged
        assert _merged(SYNTH_TO_REAL, SYNTH, name, full) == merged
    # scalp: skin under hair -> hair when the class exists, else background (as real hair then is)
    assert _merged(SYNTH_TO_REAL, SYNTH_V1, "scalp", base) == "background"
    assert _merged(SYNTH_TO_REAL, SYNTH, "scalp", full) == "hair"
    assert _merged(SYNTH_TO_REAL, SYNTH, "hair", full) == "hair"
    assert _merged(SYNTH_TO_REAL, SYNTH, "eyeglasses", full) == "eyeglasses"
    assert _merged(SYNTH_TO_REAL, SYNTH, "beard", full) == "skin"  # as CelebAMask-HQ and LaPa label beards
    assert _merged(SYNTH_TO_REAL, SYNTH_V2, "hair", full) == "hair"  # a version-2 network: beards were hair
    # real hair / glasses: scored when active; otherwise hair is background and glasses are not scored
    assert _merged(CELEBAMASK_HQ_TO_REAL, CELEBAMASK_HQ, "hair", base) == "background"
    assert _merged(CELEBAMASK_HQ_TO_REAL, CELEBAMASK_HQ, "eye_g", base) is None
    assert _merged(CELEBAMASK_HQ_TO_REAL, CELEBAMASK_HQ, "hair", full) == "hair"
    assert _merged(CELEBAMASK_HQ_TO_REAL, CELEBAMASK_HQ, "eye_g", full) == "eyeglasses"
    assert _merged(LAPA_TO_REAL, LAPA, "hair", full) == "hair"
    for name in ("cloth", "hat", "ear_r", "neck_l"):
        assert _merged(CELEBAMASK_HQ_TO_REAL, CELEBAMASK_HQ, name, full) == "background"
    assert _merged(CELEBAMASK_HQ_TO_REAL, CELEBAMASK_HQ, "mouth", base) == "inner_mouth"
    assert _merged(LAPA_TO_REAL, LAPA, "inner_mouth", base) == "inner_mouth"


@pytest.mark.parametrize("space_name", sorted(SPACES))
def test_left_right_pooled_so_merging_commutes_with_a_flip(space_name: str) -> None:
    space, table = SPACES[space_name], TABLE_OF[space_name]
    assert space.flip_pairs, "every source space declares its left/right pairs"
    lut = table.lut(space, real_merged_active(SYNTH))
    for a, b in space.flip_pairs:
        assert lut[a] == lut[b] != IGNORE_INDEX, (space.classes[a], space.classes[b])
    # A mirrored image with its left/right classes swapped merges to the mirror of the merged map.
    seg = np.random.default_rng(0).integers(0, space.num_classes, (6, 7)).astype(np.uint8)
    flipped = space.flip_lut().astype(np.uint8)[seg[:, ::-1]]
    np.testing.assert_array_equal(lut[flipped], lut[seg][:, ::-1])


def test_lapa_folds_unlabelled_predictions() -> None:
    fold = LAPA_TO_REAL.prediction_fold(real_merged_active(SYNTH))
    assert fold[REAL_MERGED.id("ears")] == REAL_MERGED.id("skin")
    assert fold[REAL_MERGED.id("neck")] == REAL_MERGED.id("background")
    assert fold[REAL_MERGED.id("eyeglasses")] == REAL_MERGED.id("skin")
    others = [i for i, n in enumerate(REAL_MERGED.classes) if n not in ("ears", "neck", "eyeglasses")]
    np.testing.assert_array_equal(fold[others], others)
    # CelebAMask-HQ labels every merged class: no fold
    np.testing.assert_array_equal(CELEBAMASK_HQ_TO_REAL.prediction_fold(BASE), np.arange(256))


def test_gmask_order_relabel() -> None:
    assert len(CELEBAMASK_HQ_GMASK_ORDER) == CELEBAMASK_HQ.num_classes == 19
    assert set(CELEBAMASK_HQ_GMASK_ORDER) == set(CELEBAMASK_HQ.classes)
    lut = relabel_lut(CELEBAMASK_HQ_GMASK_ORDER, CELEBAMASK_HQ)
    for i, name in enumerate(CELEBAMASK_HQ_GMASK_ORDER):
        assert CELEBAMASK_HQ.classes[lut[i]] == name
    assert lut[2] == CELEBAMASK_HQ.id("nose") and lut[4] == CELEBAMASK_HQ.id("l_eye")
    assert np.all(lut[19:] == IGNORE_INDEX)


def test_lut_rejects_a_space_with_unknown_classes() -> None:
    odd = LabelSpace(name="synthforge23", classes=SYNTH.classes + ("hat",), palette=SYNTH.palette + ((1, 2, 3),))
    with pytest.raises(ValueError, match="hat"):
        SYNTH_TO_REAL.lut(odd, BASE)
    with pytest.raises(ValueError, match="lacks"):
        CELEBAMASK_HQ_TO_REAL.lut(LAPA, BASE)


@pytest.mark.parametrize("scale, out", [(1.35, 80), (1.6, 33)])
def test_face_crop_matrix_window(scale: float, out: int) -> None:
    rng = np.random.default_rng(1)
    pts = rng.uniform([40, 60], [140, 130], (68, 2)).astype(np.float32)
    m = face_crop_matrix(pts, scale, out)
    lo, hi = pts.min(0).astype(np.float64), pts.max(0).astype(np.float64)
    centre, half = (lo + hi) / 2, scale * max(hi - lo) / 2
    corners = np.array([centre - half, centre + half, centre])
    np.testing.assert_allclose(
        transform_points(m, corners), [[-0.5, -0.5], [out - 0.5, out - 0.5], [out / 2 - 0.5] * 2], atol=1e-4
    )
    back = transform_points(cv2.invertAffineTransform(m), transform_points(m, pts))
    np.testing.assert_allclose(back, pts, atol=1e-3)


def test_face_crop_matrix_crops_pixels_where_expected() -> None:
    # A bright square of pixels 20..29 whose box is cropped with scale 1 at 1:1 must fill the crop exactly.
    image = np.zeros((64, 64), np.uint8)
    image[20:30, 20:30] = 255
    box = mask_box_points(image > 0)
    np.testing.assert_array_equal(box, [[20, 20], [29, 29]])
    m = face_crop_matrix(box, 10 / 9, 10)  # window side = 9 px centre-to-centre * 10/9 = 10 px
    crop = cv2.warpAffine(image, m, (10, 10), flags=cv2.INTER_NEAREST)
    assert crop.min() == 255


def test_mask_box_points_empty() -> None:
    with pytest.raises(ValueError, match="empty"):
        mask_box_points(np.zeros((4, 5), bool))


def _bench_module():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_real_transfer.py"
    spec = importlib.util.spec_from_file_location("bench_real_transfer", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_bench_missing_realdata_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = _bench_module()
    missing = tmp_path / "no-realdata"
    assert bench.main([str(tmp_path / "x.ckpt"), "--realdata", str(missing)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(missing) in err[0] and "--realdata" in err[0]
    assert bench.main(["--realdata", str(missing)]) == 2  # neither a checkpoint nor --demo
    assert "--demo" in capsys.readouterr().err


def test_summary_of_runs_counts_targets_and_reads_the_demo_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "summarize_transfer.py"
    spec = importlib.util.spec_from_file_location("summarize_transfer", path)
    summary = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summary)

    def run(name: str, nme: float, hair: float, demo_minutes: float | None) -> Path:
        ckpt = tmp_path / name / "runs" / "lightning_logs" / "version_0" / "checkpoints" / "final.ckpt"
        ckpt.parent.mkdir(parents=True)
        if demo_minutes is not None:
            timings = {"generate_train_s": 60.0, "train_s": demo_minutes * 60 - 60.0}
            metrics = {"nme": 5.0, "seg_f1_mean": 0.7, "depth_rmse_mm": 9.5, "timings": timings}
            (tmp_path / name / "metrics.json").write_text(json.dumps(metrics))
        f1 = {"hair": hair, "brows": 0.75, "eyeglasses": None}
        parsing = {"f1": f1, "f1_mean": (hair + 0.75) / 2, "f1_mean_in_masks": (hair + 0.75) / 2}
        afw = {"nme_all": nme, "nme_jaw17": 11.0, "nme_inner51": 6.5, "fr_10": 15.0}
        doc = {"checkpoint": str(ckpt), "afw": afw, "parsing": parsing, "afw_flip": afw, "parsing_flip": parsing}
        out = tmp_path / f"{name}.json"
        out.write_text(json.dumps(doc))
        return out

    files = [run("a", 7.5, 0.8, 14.5), run("b", 8.2, 0.6, None), run("c", 7.9, 0.71, 15.2)]
    assert summary.main([str(f) for f in files]) == 0
    table = capsys.readouterr().out
    rows = {line.split(" | ")[0].strip("| *"): line for line in table.splitlines() if line.startswith("| ")}
    assert rows["median"].split(" | ")[1] == "7.90" and rows["max"].split(" | ")[1] == "8.20"
    assert "| NME all <= 8 % | 2 of 3 | b |" in table
    assert "| hair >= 0.7 | 2 of 3 | b |" in table
    assert "| parsing mean >= 0.65 | 3 of 3 | - |" in table
    assert "| demo <= 15 min | 1 of 2 (1 without the figure) | c |" in table  # b has no demo folder
    assert rows["a"].split(" | ")[-2:] == ["9.5", "14.5 |"]  # held-out depth and minutes from a's metrics.json
    (tmp_path / "bad.json").write_text("{}")
    assert summary.main([str(files[0]), str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.json" in err[0] and "bench_real_transfer.py --json" in err[0]


def test_bench_eye_frame_offsets() -> None:
    bench = _bench_module()
    gt = np.zeros((1, 68, 2))
    gt[0, 36], gt[0, 45] = [10.0, 10.0], [10.0, 30.0]  # eye line pointing down the image: iod 20
    pred = gt.copy()
    pred[0, 8] += [-2.0, 1.0]  # 1 px along the eye line, 2 px to the image left = towards the chin side
    off = bench.eye_frame_offsets(pred, gt)
    np.testing.assert_allclose(off[0, 8], [5.0, 10.0])
    np.testing.assert_allclose(np.delete(off[0], 8, 0), 0.0)


def test_bench_afw_figures_on_a_stub_predictor(tmp_path: Path) -> None:
    """``evaluate_afw`` on three faces written in the AFW layout (1-based ``.pts`` beside a ``.jpg``) and a stub
    predictor that returns the annotated points exactly (mapped into its crop) and eyeglasses on 5 %, 1 % and 0 %
    of its crops: NME 0, and one face in three "given glasses" (>= 2 %)."""
    bench = _bench_module()
    rng = np.random.default_rng(0)
    shares = (0.05, 0.01, 0.0)
    truth = []
    for i in range(len(shares)):
        pts = rng.uniform(40, 110, (68, 2))
        truth.append(pts)
        cv2.imwrite(str(tmp_path / f"face{i}.jpg"), rng.integers(0, 255, (150, 160, 3), dtype=np.uint8))
        lines = ["version: 1", "n_points: 68", "{", *(f"{x + 1:.3f} {y + 1:.3f}" for x, y in pts), "}"]
        (tmp_path / f"face{i}.pts").write_text("\n".join(lines) + "\n")
    space = SYNTH
    glasses = space.classes.index("eyeglasses")

    class Stub:
        label_space, crop_size, calls = space, 32, 0

        def predict(self, crops: list[np.ndarray]) -> list:
            out = []
            for crop in crops:
                i = self.calls
                self.calls += 1
                window = crop.shape[0]
                matrix = face_crop_matrix(truth[i], 1.35, window)
                seg = np.zeros(crop.shape[:2], np.uint8)
                seg.reshape(-1)[: int(round(shares[i] * seg.size))] = glasses
                out.append(SimpleNamespace(landmarks=transform_points(matrix, truth[i]), seg=seg))
            return out

    class Bar:
        def update(self, n: int) -> None:
            pass

    figures = bench.evaluate_afw(Stub(), tmp_path, 1.35, Bar())
    assert figures["num_faces"] == 3
    assert figures["nme_all"] < 0.01 and figures["fr_10"] == 0.0  # the .pts keep 3 decimals
    assert figures["glasses_faces_pct"] == pytest.approx(100 / 3)
