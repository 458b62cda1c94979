"""Fine-tuned (stage-II) checkpoints in ``Predictor.from_checkpoint``, the face pipeline and ``synthforge predict``.

The checkpoints are real: ``synthforge finetune`` runs here for 1 step on tiny LaPa (seg + 106 landmarks), 300W
(68 landmarks) and CelebAMask-HQ (19 classes) trees, on a stage-I network built from configs/stage1/tiny.yaml.
References: the fine-tuned system's own ``forward`` on the same crop, and the crops of the label_finetune datasets.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from finetune_trees import make_celebamask_hq, make_lapa, make_w300
from test_finetune_system import write_tiny_stage1_checkpoint
from test_predict import _run, _write

from label_finetune.datasets.common import CropConfig, square_crop_affine
from label_finetune.datasets.datamodule import build_dataset
from next3d_gen.errors import UserError
from next3d_gen.labels import CELEBAMASK_HQ, LAPA
from synthforge.checkpoints import FINETUNE, build_finetune_system, load_checkpoint
from synthforge.cli import main as cli_main
from synthforge.detect import Detection
from synthforge.inference import CropDefinition, Predictor
from synthforge.predict import FacePipeline, warp_crop

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "finetune" / "tiny"
RES = 32  # data.resolution of the tiny finetune configs


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Data trees and fine-tuned checkpoints (1 step each) for LaPa, 300W and CelebAMask-HQ."""
    root = tmp_path_factory.mktemp("stage2")
    stage1 = write_tiny_stage1_checkpoint(root / "stage1.ckpt")
    trees = {
        "lapa": make_lapa(root / "lapa"),
        "w300": make_w300(root / "w300"),
        "celebamask_hq": make_celebamask_hq(root / "celeba"),
    }
    extra = {
        "lapa": ["--model.tasks", "[seg, landmarks]", "--data.with_landmarks", "true", "--data.crop.flip_prob", "0"],
        "w300": ["--data.crop.scale", "1.5"],
        "celebamask_hq": ["--data.cache_dir", str(root / "cache")],
    }
    out: dict[str, Path] = {"stage1": stage1, **{f"{k}_root": v for k, v in trees.items()}}
    runs = [(ds, ds, extra[ds]) for ds in trees]
    runs.append(("lapa_depth", "lapa", ["--model.tasks", "[seg, depth]"]))  # a depth adapter (no depth labels)
    for name, ds, args in runs:
        run = root / f"run_{name}"
        code = cli_main(
            [
                "finetune",
                "--config",
                str(TINY / f"{ds}.yaml"),
                "--data.root",
                str(trees[ds]),
                "--model.backbone",
                str(stage1),
                "--trainer.default_root_dir",
                str(run),
                "--trainer.max_steps=1",
                *args,
            ]
        )
        assert code == 0
        out[name] = run / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    return out


def _reference(path: Path, crop: np.ndarray) -> dict:
    """The fine-tuned system's own forward on one (RES, RES, 3) uint8 crop (a separately built system)."""
    system = build_finetune_system(load_checkpoint(path, expect=FINETUNE), path)
    x = torch.from_numpy(crop).permute(2, 0, 1).float()[None] / 255.0
    with torch.no_grad():
        return system(x)


def _crop(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (RES, RES, 3), dtype=np.uint8)


def test_lapa_predictions_equal_the_systems_forward(assets: dict[str, Path]) -> None:
    predictor = Predictor.from_checkpoint(assets["lapa"])
    assert predictor.kind == FINETUNE and predictor.dataset == "lapa" and predictor.crop_size == RES
    assert predictor.label_space == LAPA and predictor.crop == CropDefinition("label", 1.2, pixel_extent=True)
    assert predictor.crop_scale == 1.2
    crop = _crop()
    [pred] = predictor.predict(crop)
    ref = _reference(assets["lapa"], crop)
    assert pred.label_space is predictor.label_space and pred.label_space.classes == LAPA.classes
    assert pred.seg_probs.shape == (LAPA.num_classes, RES, RES) and pred.seg.shape == (RES, RES)
    probs = torch.softmax(ref["seg"], 1)[0].numpy()
    np.testing.assert_allclose(pred.seg_probs, probs, atol=1e-5)
    assert (pred.seg == probs.argmax(0)).mean() > 0.99  # ties aside
    assert pred.landmarks.shape == (106, 2)
    np.testing.assert_allclose(pred.landmarks, ref["landmarks"][0].numpy(), atol=1e-4)
    assert pred.depth is None and pred.normal is None and "depth" not in ref


def test_w300_predictions_equal_the_systems_forward(assets: dict[str, Path]) -> None:
    predictor = Predictor.from_checkpoint(assets["w300"])
    # the checkpoint records the crop it was trained with (--data.crop.scale 1.5, not the dataset's default 1.4)
    assert predictor.label_space is None and predictor.crop == CropDefinition("landmarks", 1.5, pixel_extent=True)
    crop = _crop(1)
    [pred] = predictor.predict(crop)
    ref = _reference(assets["w300"], crop)
    assert pred.seg is None and pred.seg_probs is None and pred.depth is None and "seg" not in ref
    assert pred.landmarks.shape == (68, 2)
    np.testing.assert_allclose(pred.landmarks, ref["landmarks"][0].numpy(), atol=1e-4)
    # a non-square input: the crop centred in a zero-padded square of twice its side (the shared stage-I mapping)
    big = np.zeros((2 * RES, 2 * RES, 3), np.uint8)
    big[RES // 2 : RES // 2 + RES, :] = cv2.resize(crop, (2 * RES, RES), interpolation=cv2.INTER_NEAREST)
    [wide] = predictor.predict(big[RES // 2 : RES // 2 + RES])
    [square] = predictor.predict(big)
    np.testing.assert_allclose(wide.landmarks + [0, RES // 2], square.landmarks, atol=1e-3)


def test_depth_adapter_output_and_paste(assets: dict[str, Path]) -> None:
    predictor = Predictor.from_checkpoint(assets["lapa_depth"])
    crop = _crop(3)
    [pred] = predictor.predict(crop)
    ref = _reference(assets["lapa_depth"], crop)
    assert pred.landmarks is None and pred.depth.shape == (RES, RES)
    np.testing.assert_allclose(pred.depth, ref["depth"][0, 0].numpy(), atol=1e-5)
    res = FacePipeline(predictor, refine=0).run(crop, whole_image=True)  # identity window, first pass only
    fg = pred.seg != LAPA.background
    np.testing.assert_allclose(res.depth[fg], pred.depth[fg], atol=1e-5)
    assert (res.depth[~fg] == 0).all()


def test_celebamask_predictor_whole_image_crops(assets: dict[str, Path]) -> None:
    predictor = Predictor.from_checkpoint(assets["celebamask_hq"])
    assert predictor.label_space == CELEBAMASK_HQ and predictor.crop.box == "image" and predictor.crop_scale is None
    crop = _crop(2)
    [pred] = predictor.predict(crop)
    assert pred.landmarks is None and pred.seg.max() < CELEBAMASK_HQ.num_classes
    np.testing.assert_allclose(
        pred.seg_probs, torch.softmax(_reference(assets["celebamask_hq"], crop)["seg"], 1)[0], atol=1e-5
    )
    pipe = FacePipeline(predictor)
    res = pipe.run(crop, whole_image=True)  # the training crop of an aligned image: the image itself
    np.testing.assert_array_equal(res.seg, pred.seg.astype(np.uint8))  # identity window: pasted as predicted
    with pytest.raises(ValueError, match="whole aligned face images"):
        pipe.run(crop, boxes=[Detection((4.0, 4.0, 20.0, 20.0))])


def test_crop_definitions_equal_the_datasets_crops(assets: dict[str, Path]) -> None:
    """From the true annotations, the pipeline's window for a fine-tuned checkpoint is the benchmark's own crop."""
    for ds, split in (("w300", "common"), ("lapa", "test")):
        crop = Predictor.from_checkpoint(assets[ds]).crop
        trained = CropConfig(box=crop.box, scale=crop.scale)  # the checkpoint's crop (300W: scale 1.5 here)
        data = build_dataset(ds, assets[f"{ds}_root"], split, RES, crop=trained, return_original=True)
        for i in range(len(data)):
            sample = data[i]
            if crop.box == "landmarks":
                pts = sample["orig_landmarks"].numpy()
            else:
                ys, xs = np.nonzero(sample["orig_seg"].numpy() != LAPA.background)
                pts = np.array([[xs.min(), ys.min()], [xs.max(), ys.max()]], np.float32)
            _, matrix = warp_crop(np.zeros((8, 8, 3), np.uint8), crop.window_of_points(pts), RES)
            np.testing.assert_allclose(matrix, sample["affine"].numpy(), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("ds", ["w300", "lapa"])
def test_second_pass_uses_the_checkpoints_crop(ds: str, assets: dict[str, Path]) -> None:
    """The final crop is ``square_crop_affine`` of the first pass's landmark box (300W) / foreground box (LaPa)."""
    predictor = Predictor.from_checkpoint(assets[ds])
    image = cv2.imread(str(next((assets[f"{ds}_root"]).rglob("*.jpg"))))[..., ::-1].copy()
    h, w = image.shape[:2]
    boxes = [Detection((w * 0.2, h * 0.2, w * 0.8, h * 0.8))]
    first = FacePipeline(predictor, refine=0).run(image, boxes=boxes).faces[0]
    final = FacePipeline(predictor).run(image, boxes=boxes).faces[0]
    if ds == "w300":
        pts = first.landmarks.astype(np.float64)
    else:  # box of the first pass's predicted foreground, from crop pixels to image pixels by hand
        ys, xs = np.nonzero(first.prediction.seg != 0)
        inv = cv2.invertAffineTransform(first.matrix)
        pts = np.array([[xs.min(), ys.min(), 1.0], [xs.max(), ys.max(), 1.0]]) @ inv.T
    box = np.array([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()])
    np.testing.assert_allclose(final.matrix, square_crop_affine(box, predictor.crop.scale, RES), atol=1e-4)
    n = 68 if ds == "w300" else 106
    assert final.landmarks.shape == (n, 2)


def test_cli_lapa_no_detect_and_unreadable(assets: dict[str, Path], tmp_path: Path) -> None:
    image = cv2.imread(str(sorted((assets["lapa_root"] / "test" / "images").glob("*.jpg"))[0]))[..., ::-1]
    face = _write(tmp_path / "face.png", image)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "out"
    r = _run(["--ckpt", str(assets["lapa"]), str(face), str(broken), "--no-detect", "--out", str(out)], tmp_path)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "broken.jpg" in lines[0] and "Traceback" not in r.stderr, r.stderr
    doc = json.loads((out / "face.json").read_text())
    assert doc["checkpoint_kind"] == "finetune" and doc["dataset"] == "lapa"
    assert doc["crop"] == {"box": "label", "scale": 1.2} and doc["crop_scale"] == 1.2
    assert doc["label_space"]["name"] == LAPA.name and doc["label_space"]["classes"] == list(LAPA.classes)
    assert doc["label_space"]["palette"] == [list(c) for c in LAPA.palette]
    [f] = doc["faces"]
    assert f["num_landmarks"] == 106 and len(f["landmarks"]) == 106
    seg = cv2.imread(str(out / "face_seg.png"), cv2.IMREAD_UNCHANGED)
    assert seg.shape == image.shape[:2] and seg.dtype == np.uint8 and seg.max() < LAPA.num_classes
    assert "depth" not in doc["files"] and (out / "face_overlay.png").is_file()


def test_cli_w300_landmarks_only(assets: dict[str, Path], tmp_path: Path) -> None:
    image = cv2.imread(str(sorted((assets["w300_root"] / "afw").glob("*.jpg"))[0]))[..., ::-1]
    face = _write(tmp_path / "face.png", image)
    out = tmp_path / "out"
    r = _run(["--ckpt", str(assets["w300"]), str(face), "--no-detect", "--out", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "face.json").read_text())
    assert doc["dataset"] == "w300" and doc["label_space"] is None and doc["crop"]["box"] == "landmarks"
    [f] = doc["faces"]
    assert f["num_landmarks"] == 68 and np.isfinite(f["landmarks"]).all()
    assert set(doc["files"]) == {"overlay"} and not (out / "face_seg.png").exists()
    # the eyeglasses gate is a parsing option: asking for it on a landmark-only checkpoint is a mistake
    r = _run(["--ckpt", str(assets["w300"]), str(face), "--no-detect", "--out", str(out), "--glasses-min-share", "0"],
             tmp_path)  # fmt: skip
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "--glasses-min-share" in lines[0], r.stderr
    assert "no parsing head" in lines[0] and str(assets["w300"]) in lines[0]


@pytest.mark.parametrize("case", ["foreign", "truncated"])
def test_cli_bad_checkpoint_exit_2(case: str, assets: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / f"{case}.ckpt"
    if case == "foreign":  # a checkpoint of some other model
        torch.save({"state_dict": {"encoder.weight": torch.zeros(2)}}, bad)
        expected = "not a SynthForge checkpoint"
    else:
        data = assets["lapa"].read_bytes()
        bad.write_bytes(data[: len(data) // 2])
        expected = "damaged"
    image = _write(tmp_path / "img.png", np.full((40, 40, 3), 100, np.uint8))
    r = _run(["--ckpt", str(bad), str(image), "--no-detect", "--out", str(tmp_path / "out")], tmp_path)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and f"--ckpt: {bad}: " in lines[0] and expected in lines[0], r.stderr
    with pytest.raises(UserError, match=expected):
        Predictor.from_checkpoint(bad)


def test_cli_celebamask_needs_no_detect_or_crop_scale(
    assets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = _write(tmp_path / "img.png", np.full((40, 40, 3), 100, np.uint8))
    code = cli_main(
        [
            "predict",
            "--ckpt",
            str(assets["celebamask_hq"]),
            str(image),
            "--boxes",
            str(_boxes(tmp_path)),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--ckpt: {assets['celebamask_hq']}" in err[0] and "--no-detect" in err[0], err
    code = cli_main(
        ["predict", "--ckpt", str(assets["celebamask_hq"]), str(image), "--no-detect", "--out", str(tmp_path / "out")]
    )
    assert code == 0
    doc = json.loads((tmp_path / "out" / "img.json").read_text())
    assert doc["label_space"]["classes"] == list(CELEBAMASK_HQ.classes) and doc["faces"][0]["landmarks"] is None


def _boxes(tmp_path: Path) -> Path:
    p = tmp_path / "boxes.json"
    p.write_text(json.dumps({"img.png": [[5, 5, 30, 30]]}))
    return p
