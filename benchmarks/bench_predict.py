"""``synthforge predict`` figures: end-to-end speed, and detection rate / landmark NME on the AFW dev set.

    python benchmarks/bench_predict.py --ckpt STAGE1.ckpt [--only speed|afw|calibrate] [--images 40]
                                       [--crop-scale S] [--min-face PX] [--threshold T] [--refine N]
                                       [--flip] [--threads N]

(a) speed: ~640 x 480 photos with one face (AFW dev-set faces scaled into a 640 x 480 frame when
    ``../shared/realdata/afw68`` exists, else toy faces pasted on a textured background), JPEG-encoded in memory.
    Per image, as ``synthforge predict`` does it: decode, detect, two network passes (crops + forward), paste back,
    write JSON + seg PNG + depth PNG. Prints faces/s end to end and the split decode / detect / network / crop+paste /
    write.
(b) afw: on ``../shared/realdata/afw68`` (337 annotated faces, see its README): detection rate (a detection matches
    a face when its box centre lies within half the landmark box's side of the landmark box's centre), and the landmark
    NME (%, outer eye corners) with detected boxes vs with boxes from the annotation (the landmark box: what the
    training crops are made from), both over the detected faces and through the same pipeline but for the first
    window, plus annotation boxes over all faces, and the detected/annotation ratio per detector view.
(c) calibrate: the dlib box -> landmark box offsets and side ratio per view stored in
    ``synthforge.detect.DLIB_CALIBRATION``: medians over the matched faces, each photo detected at
    ``CALIBRATION_SCALES`` scales spread over one step of dlib's image pyramid (its box sizes are quantised to that
    step and the AFW faces all have about the same size, so one scale would measure one phase of the quantisation).

Exit status 2 when the AFW folder is missing for (b)/(c). Figures depend on machine load.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
AFW = ROOT.parent / "shared" / "realdata" / "afw68"
sys.path.insert(0, str(ROOT))

from synthforge.crops import landmark_box  # noqa: E402
from synthforge.detect import DLIB_THRESHOLD, Detection, DlibHogDetector  # noqa: E402

CALIBRATION_SCALES = 4
"""(c): image scales per photo, ``DLIB_PYRAMID_STEP ** (j / CALIBRATION_SCALES)`` for j = 0 .. 3."""
DLIB_PYRAMID_STEP = 1.2
"""dlib's HOG detector scans a pyramid of images each 5/6 the size of the previous (``pyramid_down<6>``)."""
FRONT_VIEWS = ("front", "front_rotated_left", "front_rotated_right")
"""Views calibrated together (the rotated ones are too few, 24 of the 329 faces, to be fitted alone); "left" and
"right" are fitted together with the right view's horizontal offsets mirrored."""


def afw_faces() -> list[tuple[Path, np.ndarray]]:
    """(image path, (68, 2) 0-based pixel-centre landmarks) of every AFW face."""
    out = []
    for jpg in sorted(AFW.glob("*.jpg")):
        pts = np.loadtxt(jpg.with_suffix(".pts"), comments=("version", "n_points", "{", "}")) - 1.0
        out.append((jpg, pts.astype(np.float32)))
    return out


def match(dets: list[Detection], gt: np.ndarray) -> Detection | None:
    """The detection whose centre is nearest the landmark box centre, within half its side."""
    cx, cy, side = landmark_box(gt)
    best, best_d = None, side / 2
    for d in dets:
        x0, y0, x1, y1 = d.box
        dist = max(abs((x0 + x1) / 2 - cx), abs((y0 + y1) / 2 - cy))
        if dist < best_d:
            best, best_d = d, dist
    return best


def speed_images(n: int) -> list[bytes]:
    """``n`` JPEG-encoded ~640 x 480 photos with one face."""
    rng = np.random.default_rng(0)
    out = []
    if AFW.is_dir():
        faces = afw_faces()
        for i in range(n):
            img = cv2.imread(str(faces[(i * 7) % len(faces)][0]))
            s = 400 / max(img.shape[:2])
            img = cv2.resize(img, None, fx=s, fy=s)
            frame = np.full((480, 640, 3), 110, np.uint8)
            y, x = (480 - img.shape[0]) // 2, (640 - img.shape[1]) // 2
            frame[y : y + img.shape[0], x : x + img.shape[1]] = img
            out.append(cv2.imencode(".jpg", frame)[1].tobytes())
    else:
        from synthforge.data.toy import make_toy_sample

        for i in range(n):
            frame = rng.integers(60, 160, (480, 640, 3), dtype=np.uint8)
            face = cv2.resize(make_toy_sample(np.random.default_rng(i), 64)["image"], (200, 200))
            frame[140:340, 220:420] = face[..., ::-1]
            out.append(cv2.imencode(".jpg", frame)[1].tobytes())
    return out


class _Timed:
    """Wraps a predictor, accumulating the time spent in ``predict``."""

    def __init__(self, predictor) -> None:  # noqa: ANN001
        self.inner, self.seconds = predictor, 0.0
        self.crop_size, self.label_space = predictor.crop_size, predictor.label_space

    def predict(self, images, batch_size: int = 16):  # noqa: ANN001, ANN201
        t = time.perf_counter()
        out = self.inner.predict(images, batch_size=batch_size)
        self.seconds += time.perf_counter() - t
        return out


def bench_speed(predictor, crop_scale: float, min_face: float, n: int) -> None:  # noqa: ANN001
    from synthforge.commands.predict import Item, write_outputs
    from synthforge.predict import FacePipeline

    images = speed_images(n)
    source = "AFW dev-set faces in a 640x480 frame" if AFW.is_dir() else "toy faces on a 640x480 background"
    detector = DlibHogDetector(min_face=min_face)
    timed = _Timed(predictor)
    pipe = FacePipeline(timed, crop_scale, detector)
    meta = {"checkpoint": "bench", "faces_from": "detector", "detector": detector.name, "crop_scale": crop_scale}
    with tempfile.TemporaryDirectory() as out:
        for warm in images[:2]:  # warm-up (allocator, oneDNN kernels)
            img = cv2.imdecode(np.frombuffer(warm, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
            pipe.run(np.ascontiguousarray(img))
        timed.seconds = 0.0
        t = dict.fromkeys(("decode", "detect", "run", "write"), 0.0)
        faces = 0
        start = time.perf_counter()
        for i, data in enumerate(images):
            t0 = time.perf_counter()
            img = np.ascontiguousarray(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1])
            t1 = time.perf_counter()
            dets = detector.detect(img)
            t2 = time.perf_counter()
            res = pipe.run(img, boxes=dets, calibration=detector.calibration)
            t3 = time.perf_counter()
            faces += write_outputs(Item(Path(f"img{i}.jpg"), f"img{i}"), img, res, Path(out), {"seg", "depth"}, meta)
            t4 = time.perf_counter()
            for k, a, b in (("decode", t0, t1), ("detect", t1, t2), ("run", t2, t3), ("write", t3, t4)):
                t[k] += b - a
        total = time.perf_counter() - start
        net_serial = timed.seconds
        # as synthforge predict runs it: decode + detect one image ahead in a thread, overlapping the network
        from synthforge.commands.predict import ahead, load_and_detect

        paths = []
        for i, data in enumerate(images):
            paths.append(Path(out) / f"in{i}.jpg")
            paths[-1].write_bytes(data)
        items = (Item(p, f"cli_{p.stem}") for p in paths)
        start = time.perf_counter()
        faces_cli = 0
        for item, img, _, dets in ahead(items, functools.partial(load_and_detect, detector=detector)):
            res = pipe.run(img, boxes=dets, calibration=detector.calibration)
            faces_cli += write_outputs(item, img, res, Path(out), {"seg", "depth"}, meta)
        total_cli = time.perf_counter() - start
    net = net_serial
    print(
        f"[speed] {len(images)} images ({source}), {faces} faces found, min_face {min_face:g}, "
        f"crop {predictor.crop_size}px, torch threads {torch.get_num_threads()}"
    )
    print(
        f"[speed] end to end, one step after the other: {faces / total:.1f} faces/s, "
        f"{len(images) / total:.1f} images/s "
        f"({1000 * total / len(images):.1f} ms per image)"
    )
    print(
        f"[speed] as synthforge predict runs (decode + detect overlapped with the network in a thread): "
        f"{faces_cli / total_cli:.1f} faces/s ({1000 * total_cli / len(images):.1f} ms per image)"
    )
    split = {
        "decode": t["decode"],
        "detect": t["detect"],
        "network (2 passes)": net,
        "crop + paste back": t["run"] - net,
        "write JSON + PNGs": t["write"],
    }
    print(
        "[speed] per image: "
        + ", ".join(f"{k} {1000 * v / len(images):.1f} ms ({100 * v / total:.0f}%)" for k, v in split.items())
    )


def bench_afw(
    predictor,
    crop_scale: float,
    min_face: float,
    threshold: float,
    refine: int = 1,  # noqa: ANN001
) -> int:
    from synthforge.metrics import nme
    from synthforge.predict import FacePipeline

    if not AFW.is_dir():
        print(f"[afw] {AFW} not found: skipped", file=sys.stderr)
        return 2
    detector = DlibHogDetector(min_face=min_face, threshold=threshold)
    pipe = FacePipeline(predictor, crop_scale, detector, refine=refine)
    faces = afw_faces()
    det_pred, ann_pred, gts, found, views = [], [], [], [], []
    for jpg, gt in faces:
        img = np.ascontiguousarray(cv2.imread(str(jpg))[..., ::-1])
        x0, y0 = gt.min(0)
        x1, y1 = gt.max(0)
        ann = pipe.run(img, boxes=[Detection((float(x0), float(y0), float(x1), float(y1)))])
        ann_pred.append(ann.faces[0].landmarks)
        d = match(detector.detect(img), gt)
        found.append(d is not None)
        views.append(None if d is None else d.view)
        if d is not None:
            res = pipe.run(img, boxes=[d], calibration=detector.calibration)
            det_pred.append(res.faces[0].landmarks)
        else:
            det_pred.append(np.full_like(gt, np.nan))
        gts.append(gt)
    gt_t = torch.from_numpy(np.stack(gts))
    ann_nme = nme(torch.from_numpy(np.stack(ann_pred)), gt_t) * 100
    f = torch.tensor(found)
    det_nme = nme(torch.from_numpy(np.stack(det_pred))[f], gt_t[f]) * 100
    n, k = len(faces), int(f.sum())
    print(
        f"[afw] detection: {k}/{n} faces found ({100 * k / n:.1f}%), dlib HOG, min_face {min_face:g}, "
        f"threshold {threshold:g}, {refine} re-crop(s) from landmarks{', flip test' if predictor.flip else ''}"
    )
    print(
        f"[afw] NME (%, outer eye corners) on the {k} detected faces: detected boxes {det_nme.mean():.2f}, "
        f"annotation boxes {ann_nme[f].mean():.2f} (ratio {det_nme.mean() / ann_nme[f].mean():.3f}); "
        f"annotation boxes on all {n} faces: {ann_nme.mean():.2f}"
    )
    found_views = [v for v in views if v is not None]
    per_view = []
    for name, group in (("front views", FRONT_VIEWS), ("side views", ("left", "right"))):
        m = torch.tensor([v in group for v in found_views])
        if m.any():
            per_view.append(f"{name} ({int(m.sum())}) {det_nme[m].mean():.2f} vs {ann_nme[f][m].mean():.2f}")
    print("[afw] NME detected vs annotation boxes per detector view: " + ", ".join(per_view))
    return 0


def calibrate(min_face: float, threshold: float) -> int:
    if not AFW.is_dir():
        print(f"[calibrate] {AFW} not found: skipped", file=sys.stderr)
        return 2
    detectors = [
        DlibHogDetector(min_face=min_face / DLIB_PYRAMID_STEP ** (j / CALIBRATION_SCALES), threshold=threshold)
        for j in range(CALIBRATION_SCALES)
    ]
    rows: dict[str, list[tuple[float, float, float]]] = {"front": [], "side": []}
    for jpg, gt in afw_faces():
        img = np.ascontiguousarray(cv2.imread(str(jpg))[..., ::-1])
        for detector in detectors:
            d = match(detector.detect(img), gt)
            if d is None:
                continue
            cx, cy, side = landmark_box(gt)
            x0, y0, x1, y1 = d.box
            w, h = x1 - x0, y1 - y0
            sign = -1.0 if d.view == "right" else 1.0  # the right view as the mirror image of the left one
            rows["front" if d.view in FRONT_VIEWS else "side"].append(
                (sign * (cx - (x0 + x1) / 2) / w, (cy - (y0 + y1) / 2) / h, side / np.sqrt(w * h))
            )
    print(f"[calibrate] min_face {min_face:g}, threshold {threshold:g}, {CALIBRATION_SCALES} scales per photo")
    for name, views in (("front", ", ".join(FRONT_VIEWS)), ("side", "left and mirrored right")):
        a = np.array(rows[name])
        dx, dy = np.median(a[:, :2], 0)
        scale = np.exp(np.median(np.log(a[:, 2])))
        print(
            f"[calibrate] {name} views ({views}; {len(a)} boxes): "
            f"dx={dx:.3f}, dy={dy:.3f}, scale={scale:.3f} "
            f"(side ratio 10-90%: {np.percentile(a[:, 2], 10):.2f}-{np.percentile(a[:, 2], 90):.2f})"
        )
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", help="stage-I checkpoint (synthforge train)")
    p.add_argument("--only", choices=("speed", "afw", "calibrate"), default=None)
    p.add_argument("--images", type=int, default=40, help="images for the speed run")
    p.add_argument("--crop-scale", type=float, default=None, help="default: the checkpoint's data.crop_scale")
    p.add_argument("--min-face", type=float, default=40.0, help="detector min face side, px (default 40)")
    p.add_argument(
        "--threshold",
        type=float,
        default=DLIB_THRESHOLD,
        help=f"detector score threshold for afw and calibrate (default {DLIB_THRESHOLD:g}, the detector's)",
    )
    p.add_argument("--refine", type=int, default=1, help="afw: re-crops from landmarks (default 1, as predict)")
    p.add_argument("--flip", action="store_true", help="flip test, as predict --flip")
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1 as synthforge predict; 0 = torch's default)"
    )
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.only == "calibrate":
        return calibrate(args.min_face, args.threshold)
    if not args.ckpt:
        p.error("--ckpt is needed for speed and afw")
    from synthforge.inference import Predictor

    predictor = Predictor.from_checkpoint(args.ckpt, flip=args.flip)
    crop_scale = args.crop_scale or predictor.crop_scale  # from the checkpoint (None for whole-image crops)
    if not crop_scale:
        p.error("the checkpoint does not record its crop scale: pass --crop-scale")
    status = 0
    if args.only in (None, "speed"):
        bench_speed(predictor, crop_scale, args.min_face, args.images)
    if args.only in (None, "afw"):
        status = bench_afw(predictor, crop_scale, args.min_face, args.threshold, args.refine)
    if args.only is None:
        calibrate(args.min_face, args.threshold)
    return status


if __name__ == "__main__":
    sys.exit(main())
