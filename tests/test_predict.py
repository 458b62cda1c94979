"""``synthforge predict`` and the face pipeline: crop geometry against OpenCV, paste-back, fresh-process CLI runs
(no face, --no-detect, --boxes, a video, bad inputs) with a stage-I checkpoint trained for 2 steps here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from next3d_gen.labels import SYNTH
from synthforge.cli import main as cli_main
from synthforge.commands.predict import DEPTH_MM_PER_LEVEL, DEPTH_OFFSET_MM, depth_png
from synthforge.data.toy import make_toy_sample, write_toy_dataset
from synthforge.detect import BoxCalibration, Detection, DlibHogDetector
from synthforge.inference import Prediction
from synthforge.predict import FacePipeline, crop_to_image, paste_faces, warp_crop

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "stage1" / "tiny.yaml"
CROP_SCALE = "1.6"  # data.crop_scale of tiny.yaml


def _blob_centre(image: np.ndarray) -> np.ndarray:
    """Intensity-weighted centroid (x, y) of a single-channel image, pixel-centre convention."""
    img = image.astype(np.float64)
    ys, xs = np.mgrid[: img.shape[0], : img.shape[1]]
    return np.array([(img * xs).sum(), (img * ys).sum()]) / img.sum()


@pytest.mark.parametrize("side", [70.0, 300.0])  # 300 px window -> 32 px crop: the area-averaged path (k = 4)
def test_crop_round_trip_matches_opencv(side: float) -> None:
    rng = np.random.default_rng(0)
    size = 32
    window = (151.3, 122.7, side)
    h, w = 260, 320
    pts = np.stack(
        [
            rng.uniform(window[0] - side / 3, window[0] + side / 3, 20),
            rng.uniform(window[1] - side / 3, window[1] + side / 3, 20),
        ],
        1,
    ).astype(np.float32)
    _, matrix = warp_crop(np.zeros((h, w, 3), np.uint8), window, size)
    in_crop = cv2.transform(pts[None], matrix)[0]  # OpenCV's own affine application
    back = crop_to_image(matrix, in_crop)
    np.testing.assert_allclose(back, pts, atol=1e-3)
    # the crop's pixels follow the same matrix: a Gaussian blob lands where cv2.transform puts its centre
    ys, xs = np.mgrid[:h, :w]
    centre = np.array(window[:2], np.float32)
    for p in centre + (pts[:4] - centre) / 2:  # blobs well inside the crop (no truncation at its border)
        sigma = side / 20
        blob = np.exp(-((xs - p[0]) ** 2 + (ys - p[1]) ** 2) / (2 * sigma**2)) * 255
        crop, _ = warp_crop(np.repeat(blob.astype(np.float32)[..., None], 3, 2), window, size)
        reference = cv2.warpAffine(blob.astype(np.float32), matrix, (size, size), flags=cv2.INTER_LINEAR)
        expected = cv2.transform(p[None, None], matrix)[0, 0]
        np.testing.assert_allclose(_blob_centre(crop[..., 0]), expected, atol=0.05)
        np.testing.assert_allclose(_blob_centre(reference), expected, atol=0.05)


def test_paste_back_matches_inverse_warp() -> None:
    """Labels drawn in the crop land in the image where OpenCV's inverse warp puts them."""
    size = 40
    yy, xx = np.mgrid[:size, :size]
    seg = np.where((xx - 22) ** 2 + (yy - 17) ** 2 < 90, 11, 0)
    seg[(xx < 8) & (yy > 30)] = 3
    probs = np.stack([(seg == c).astype(np.float32) for c in range(SYNTH.num_classes)])
    pred = Prediction(
        seg=seg,
        seg_probs=probs,
        depth=np.full((size, size), 0.02, np.float32),
        landmarks=np.zeros((68, 2), np.float32),
        label_space=SYNTH,
    )
    _, matrix = warp_crop(np.zeros((90, 120, 3), np.uint8), (60.0, 45.0, 100.0), size)
    from synthforge.predict import FaceResult, ImageResult

    result = ImageResult(90, 120, SYNTH, [FaceResult((10, 0, 110, 90), None, None, matrix, pred)])
    paste_faces(result)
    reference = cv2.warpAffine(seg.astype(np.uint8), matrix, (120, 90), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP)
    agree = (result.seg == reference).mean()
    assert agree > 0.98, agree
    assert set(np.unique(result.seg)) == {0, 3, 11}
    fg = result.seg != 0
    np.testing.assert_allclose(result.depth[fg], 0.02, atol=1e-6)
    assert (result.depth[~fg] == 0).all()


def test_depth_png_encoding_round_trip() -> None:
    depth = np.array([[0.0123, -0.05], [0.2, 0.0]], np.float32)
    fg = np.array([[True, True], [True, False]])
    levels = depth_png(depth, fg)
    assert levels.dtype == np.uint16 and levels[1, 1] == 0
    mm = levels.astype(np.float64) * DEPTH_MM_PER_LEVEL + DEPTH_OFFSET_MM
    np.testing.assert_allclose(mm[fg], depth[fg] * 1000, atol=DEPTH_MM_PER_LEVEL / 2 + 1e-6)


def test_box_calibration_and_dlib_blank() -> None:
    cal = BoxCalibration(dx=0.1, dy=-0.2, scale=1.5, views=(("left", BoxCalibration(0.25, 0.5, 0.5)),))
    box = (10.0, 20.0, 50.0, 60.0)
    assert cal.landmark_box(box) == pytest.approx((34.0, 32.0, 60.0))
    assert cal.landmark_box(box, "right") == pytest.approx((34.0, 32.0, 60.0))  # not listed: the top-level values
    assert cal.landmark_box(box, "left") == pytest.approx((40.0, 60.0, 20.0))
    assert cal.for_view("left").mirrored().landmark_box(box) == pytest.approx((20.0, 60.0, 20.0))
    assert DlibHogDetector().detect(np.full((120, 160, 3), 128, np.uint8)) == []
    # resizing for --min-face maps boxes back to the original pixels: upsampled detection of a 2x image
    assert DlibHogDetector(min_face=40).factor == 2.0


def test_dlib_views_and_their_calibration() -> None:
    """dlib's sub-detector index names the view; the side views' landmark boxes are mirror images of each other."""
    import dlib

    from synthforge.detect import DLIB_CALIBRATION, DLIB_THRESHOLD, DLIB_VIEWS, make_detector

    class FakeHog:  # dlib's run(image, upsample, threshold) -> rectangles, scores, sub-detector indices
        def run(self, image: np.ndarray, upsample: int, threshold: float) -> tuple[list, list, list]:
            assert image.shape == (200, 240, 3) and threshold == DLIB_THRESHOLD
            return [dlib.rectangle(20, 40, 99, 119), dlib.rectangle(120, 40, 199, 119)], [1.5, -0.2], [1, 2]

    det = make_detector("dlib_hog", min_face=40)  # the image is upsampled 2x before dlib sees it
    assert det.threshold == DLIB_THRESHOLD and make_detector("dlib_hog", threshold=0.5).threshold == 0.5
    det._detector = FakeHog()
    found = det.detect(np.zeros((100, 120, 3), np.uint8))
    assert [d.view for d in found] == ["left", "right"] and [d.score for d in found] == [1.5, -0.2]
    # dlib's inclusive pixels 20..99 at 2x: edges 19.5..99.5 there, (e + 0.5) / 2 - 0.5 in the photo
    assert found[0].box == pytest.approx((9.5, 19.5, 49.5, 59.5))
    assert DLIB_VIEWS[0] == "front" and set(DLIB_VIEWS) >= {"left", "right"}
    box = (100.0, 50.0, 180.0, 130.0)
    left, right = DLIB_CALIBRATION.landmark_box(box, "left"), DLIB_CALIBRATION.landmark_box(box, "right")
    assert left[0] > 140 > right[0] and left[0] - 140 == pytest.approx(140 - right[0])
    assert left[1:] == pytest.approx(right[1:])
    assert DLIB_CALIBRATION.landmark_box(box, "front_rotated_left") == DLIB_CALIBRATION.landmark_box(box, "front")


class _FixedLandmarks:
    """A stand-in predictor: the same (68, 2) crop-frame landmarks for every crop (no parsing)."""

    crop_size = 32
    label_space = None

    def __init__(self, landmarks: np.ndarray) -> None:
        self.landmarks = landmarks.astype(np.float32)
        self.batches: list[list[np.ndarray]] = []

    def predict(self, images: list[np.ndarray], batch_size: int = 16) -> list[Prediction]:
        self.batches.append(list(images))
        return [Prediction(None, None, None, self.landmarks.copy()) for _ in images]


def test_first_window_follows_the_detection_view() -> None:
    from synthforge.crops import crop_matrix

    rng = np.random.default_rng(1)
    predictor = _FixedLandmarks(rng.uniform(8, 24, (68, 2)))
    cal = BoxCalibration(0.0, 0.1, 1.0, views=(("left", BoxCalibration(0.2, 0.1, 0.9)),))
    pipe = FacePipeline(predictor, crop_scale=1.5, refine=0)
    dets = [Detection((10.0, 10.0, 50.0, 50.0), 1.0, "left"), Detection((60.0, 10.0, 100.0, 50.0), 1.0, "front")]
    res = pipe.run(np.zeros((80, 120, 3), np.uint8), boxes=dets, calibration=cal)
    np.testing.assert_allclose(res.faces[0].matrix, crop_matrix(38.0, 34.0, 36.0 * 1.5, 32))
    np.testing.assert_allclose(res.faces[1].matrix, crop_matrix(80.0, 34.0, 40.0 * 1.5, 32))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("predict_ckpt")
    data = write_toy_dataset(d / "train.h5", 6, 64, seed=0)
    code = cli_main(
        [
            "train",
            "--config",
            str(TINY),
            f"--data.train={data}",
            f"--trainer.default_root_dir={d}",
            "--trainer.max_steps=2",
        ]
    )
    assert code == 0
    return d / "lightning_logs" / "version_0" / "checkpoints" / "final.ckpt"


def _face(size: int = 64, seed: int = 3) -> np.ndarray:
    return make_toy_sample(np.random.default_rng(seed), size)["image"]


def test_pipeline_python_api(ckpt: Path) -> None:
    from synthforge.inference import Predictor

    predictor = Predictor.from_checkpoint(ckpt)
    pipe = FacePipeline(predictor, float(CROP_SCALE))
    image = np.full((100, 140, 3), 90, np.uint8)
    image[20:84, 50:114] = _face()
    res = pipe.run(image, boxes=[Detection((60.0, 30.0, 104.0, 74.0))])
    assert len(res.faces) == 1 and res.seg.shape == (100, 140) and res.seg.dtype == np.uint8
    face = res.faces[0]
    assert face.prediction.label_space is predictor.label_space
    assert face.landmarks.shape == (68, 2) and np.isfinite(face.landmarks).all()
    # landmarks are the crop's landmarks mapped through the inverse of the final crop matrix
    expect = cv2.transform(face.prediction.landmarks[None].astype(np.float64), cv2.invertAffineTransform(face.matrix))[
        0
    ]
    np.testing.assert_allclose(face.landmarks, expect, atol=1e-3)
    # the final crop is the training crop of those landmarks' predecessor: a square window of the crop size
    assert face.matrix[0, 0] == pytest.approx(face.matrix[1, 1]) and face.matrix[0, 1] == 0
    assert int(res.seg.max()) < SYNTH.num_classes


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "synthforge.cli", "predict", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _write(path: Path, rgb: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))
    return path


def test_cli_detector_blank_and_unreadable(ckpt: Path, tmp_path: Path) -> None:
    blank = _write(tmp_path / "blank.png", np.full((96, 128, 3), 200, np.uint8))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "out"
    r = _run(["--ckpt", str(ckpt), str(blank), str(broken), "--out", str(out), "--crop-scale", CROP_SCALE], tmp_path)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "broken.jpg" in lines[0] and "Traceback" not in r.stderr, r.stderr
    doc = json.loads((out / "blank.json").read_text())
    assert doc["faces"] == [] and doc["num_faces"] == 0 and doc["note"] == "no face found"
    assert doc["image_size"] == {"width": 128, "height": 96}
    assert (cv2.imread(str(out / "blank_seg.png"), cv2.IMREAD_UNCHANGED) == 0).all()
    assert not (out / "broken.json").exists()
    assert "1 failed" in r.stdout


def test_cli_no_detect_and_video(ckpt: Path, tmp_path: Path) -> None:
    face = _write(tmp_path / "face.png", cv2.resize(_face(), (100, 90)))
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 64))
    for seed in range(3):
        writer.write(np.ascontiguousarray(_face(seed=seed)[..., ::-1]))
    writer.release()
    out = tmp_path / "out"
    r = _run(
        [
            "--ckpt",
            str(ckpt),
            str(face),
            str(video),
            "--no-detect",
            "--out",
            str(out),  # crop scale: the ckpt's
            "--save",
            "seg,depth,overlay,normals",
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "face.json").read_text())
    assert doc["num_faces"] == 1 and doc["faces_from"] == "whole image" and doc["crop_scale"] == float(CROP_SCALE)
    assert doc["label_space"]["classes"] == list(SYNTH.classes)
    f = doc["faces"][0]
    assert f["box"] == [-0.5, -0.5, 99.5, 89.5] and f["score"] is None and len(f["landmarks"]) == 68
    seg = cv2.imread(str(out / "face_seg.png"), cv2.IMREAD_UNCHANGED)
    depth = cv2.imread(str(out / "face_depth.png"), cv2.IMREAD_UNCHANGED)
    assert seg.shape == (90, 100) and seg.dtype == np.uint8 and seg.max() < SYNTH.num_classes
    assert depth.shape == (90, 100) and depth.dtype == np.uint16
    assert ((depth == 0) == (seg == 0)).all()
    assert doc["depth"]["mm_per_level"] == DEPTH_MM_PER_LEVEL
    assert "normals" not in doc["files"]  # the tiny network has no normal head: nothing claimed
    overlay = cv2.imread(str(out / "face_overlay.png"))
    assert overlay.shape[0] > 90 and overlay.shape[1] >= 100
    frames = sorted(p.name for p in out.glob("clip_*.json"))
    assert frames == ["clip_000000.json", "clip_000001.json", "clip_000002.json"]
    assert json.loads((out / "clip_000002.json").read_text())["frame"] == 2


def test_cli_boxes_two_faces(ckpt: Path, tmp_path: Path) -> None:
    image = np.full((120, 260, 3), 60, np.uint8)
    image[20:84, 20:84] = _face(seed=1)
    image[30:110, 150:230] = cv2.resize(_face(seed=2), (80, 80))
    photo = _write(tmp_path / "two.jpg", image)
    other = _write(tmp_path / "nobox.png", image)
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"two.jpg": [[30, 28, 74, 80], [162.5, 40, 218, 106]]}))
    out = tmp_path / "out"
    r = _run(
        [
            "--ckpt",
            str(ckpt),
            str(photo),
            str(other),
            "--boxes",
            str(boxes),
            "--out",
            str(out),
            "--crop-scale",
            CROP_SCALE,
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "two.json").read_text())
    assert doc["faces_from"] == "boxes" and doc["num_faces"] == 2
    assert [f["box"] for f in doc["faces"]] == [[30, 28, 74, 80], [162.5, 40, 218, 106]]
    assert json.loads((out / "nobox.json").read_text())["note"] == "no box given for this input"


def test_cli_flip_matches_the_python_pipeline(ckpt: Path, tmp_path: Path) -> None:
    from synthforge.inference import Predictor

    image = np.full((100, 120, 3), 70, np.uint8)
    image[18:82, 30:94] = _face(seed=4)
    photo = _write(tmp_path / "face.png", image)
    (tmp_path / "boxes.json").write_text(json.dumps({"face.png": [[38, 26, 86, 76]]}))
    out = tmp_path / "out"
    r = _run(
        [
            "--ckpt",
            str(ckpt),
            str(photo),
            "--boxes",
            str(tmp_path / "boxes.json"),
            "--out",
            str(out),
            "--save",
            "none",
            "--flip",
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "face.json").read_text())
    assert doc["flip"] is True
    box = [Detection((38.0, 26.0, 86.0, 76.0))]
    flipped = FacePipeline(Predictor.from_checkpoint(ckpt, flip=True)).run(image, boxes=box).faces[0].landmarks
    plain = FacePipeline(Predictor.from_checkpoint(ckpt)).run(image, boxes=box).faces[0].landmarks
    np.testing.assert_allclose(doc["faces"][0]["landmarks"], flipped, atol=0.006)  # the JSON rounds to 0.01 px
    assert np.abs(flipped - plain).max() > 0.1


@pytest.mark.parametrize(
    "case",
    ["missing_ckpt", "not_a_checkpoint", "foreign_checkpoint", "bad_boxes", "bad_save", "bad_glasses_share"],
)
def test_cli_bad_input_exit_2(case: str, ckpt: Path, tmp_path: Path) -> None:
    import torch

    image = _write(tmp_path / "img.png", np.full((40, 40, 3), 100, np.uint8))
    args = ["--ckpt", str(ckpt), str(image), "--out", str(tmp_path / "out"), "--crop-scale", CROP_SCALE]
    needle = None
    if case == "missing_ckpt":
        args[1] = str(tmp_path / "nope.ckpt")
        needle = f"--ckpt: no such checkpoint file: {args[1]}"
    elif case == "not_a_checkpoint":
        (tmp_path / "junk.ckpt").write_bytes(os.urandom(300))
        args[1] = needle = str(tmp_path / "junk.ckpt")
    elif case == "foreign_checkpoint":
        torch.save({"state_dict": {"encoder.weight": torch.zeros(2)}}, tmp_path / "other.ckpt")
        args[1] = needle = str(tmp_path / "other.ckpt")
    elif case == "bad_boxes":
        (tmp_path / "b.json").write_text('{"img.png": [[10, 10, 5, 30]]}')
        args += ["--boxes", str(tmp_path / "b.json")]
        needle = "--boxes"
    elif case == "bad_glasses_share":
        args += ["--glasses-min-share", "1.5"]
        needle = "--glasses-min-share must be in [0, 1], got 1.5"
    else:
        args += ["--save", "seg,mesh"]
        needle = "--save"
    r = _run(args, tmp_path)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("synthforge predict: error:"), r.stderr
    assert not (tmp_path / "out" / "img.json").exists()


def test_second_pass_crop_is_the_training_crop(tmp_path: Path) -> None:
    """From the true landmarks, the pipeline's crop is bit-identical to the validation crop of SynthFaceDataset."""
    from next3d_gen.h5 import SampleReader
    from synthforge.crops import landmark_box
    from synthforge.data.dataset import SynthFaceDataset

    path = write_toy_dataset(tmp_path / "d.h5", 2, 96, seed=5)
    ds = SynthFaceDataset(path, crop_size=64, crop_scale=1.6)
    raw = SampleReader(path)[1]
    cx, cy, side = landmark_box(raw["landmarks_2d"].astype(np.float32))
    crop, matrix = warp_crop(raw["image"], (cx, cy, side * 1.6), 64)
    sample = ds[1]
    np.testing.assert_allclose(matrix, sample["crop_matrix"].numpy(), atol=1e-5)
    reference = (sample["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert np.abs(crop.astype(int) - reference).max() <= 1


def test_overlapping_faces_larger_pasted_last() -> None:
    from synthforge.predict import FaceResult, ImageResult

    def face(cls: int, window: tuple[float, float, float], box: tuple[float, float, float, float]) -> FaceResult:
        size = 16
        seg = np.full((size, size), cls)
        probs = np.stack([(seg == c).astype(np.float32) for c in range(SYNTH.num_classes)])
        pred = Prediction(
            seg=seg,
            seg_probs=probs,
            depth=np.full((size, size), 0.01 * cls, np.float32),
            landmarks=np.zeros((68, 2), np.float32),
        )
        return FaceResult(box, None, None, warp_crop(np.zeros((60, 60, 3), np.uint8), window, size)[1], pred)

    big = face(1, (30.0, 30.0, 40.0), (10, 10, 50, 50))
    small = face(11, (35.0, 35.0, 20.0), (25, 25, 45, 45))
    for order in ([big, small], [small, big]):
        result = ImageResult(60, 60, SYNTH, list(order))
        paste_faces(result)
        assert result.seg[35, 35] == 1 and result.seg[12, 12] == 1 and result.seg[55, 55] == 0
        assert result.depth[35, 35] == pytest.approx(0.01)


def test_expand_inputs_folders_globs_and_collisions(tmp_path: Path) -> None:
    from next3d_gen.errors import UserError
    from synthforge.commands.predict import expand_inputs

    (tmp_path / "a" / "sub").mkdir(parents=True)
    for name in ("a/x.jpg", "a/sub/y.PNG", "a/notes.txt", "z.png"):
        (tmp_path / name).write_bytes(b"")
    files, missing = expand_inputs([str(tmp_path / "a"), str(tmp_path / "*.png"), str(tmp_path / "none_*.jpg")])
    assert [(p.name, stem) for p, stem in files] == [("y.PNG", "sub/y"), ("x.jpg", "x"), ("z.png", "z")]
    assert missing == [str(tmp_path / "none_*.jpg")]
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.jpg").write_bytes(b"")
    with pytest.raises(UserError, match="same outputs"):
        expand_inputs([str(tmp_path / "a" / "x.jpg"), str(tmp_path / "b" / "x.jpg")])


def test_video_frames_every_k_and_broken_video(tmp_path: Path) -> None:
    from synthforge.commands.predict import iter_items

    video = tmp_path / "v.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (32, 24))
    for k in range(5):
        writer.write(np.full((24, 32, 3), 40 * k, np.uint8))
    writer.release()
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(os.urandom(500))
    failed: list[str] = []
    items = list(iter_items([(video, "v"), (broken, "broken")], 2, failed))
    assert [(it.stem, it.frame) for it in items] == [("v_000000", 0), ("v_000002", 2), ("v_000004", 4)]
    assert items[1].image.shape == (24, 32, 3) and abs(int(items[1].image.mean()) - 80) <= 3
    assert len(failed) == 1 and "broken.mp4" in failed[0]
