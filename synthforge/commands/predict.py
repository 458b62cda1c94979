"""``synthforge predict``: run a trained network on every face of your photos or videos.

Example::

    synthforge predict --ckpt final.ckpt photos/ clip.mp4 --out predictions --save seg,depth,overlay

CKPT: a stage-I checkpoint (``synthforge train``: the synthetic label space, relative depth, 68 landmarks,
normals / UV when the network has those heads) or a fine-tuned one (``synthforge finetune``: 300W 68 landmarks;
LaPa 11 classes + 106 landmarks when trained with them; CelebAMask-HQ 19 classes; depth when fine-tuned for it).
The label space, class names, palette and crop definition come from the checkpoint. CelebAMask-HQ checkpoints were
trained on whole aligned face images: use ``--no-detect`` on such images (or ``--crop-scale`` for found faces).

INPUT: image files, folders (searched recursively for image files), glob patterns, or video files (every frame, or
every K-th with ``--every K``). Faces come from the dlib HOG detector (its model ships in the ``dlib-bin`` wheel;
nothing is downloaded), from ``--boxes boxes.json``, or ``--no-detect`` takes each input as one face crop. Each face
is predicted twice: from the detector box, then re-cropped from its own predicted landmarks like the training crops
(:mod:`synthforge.predict`).

Outputs under ``--out``, named after the input's stem (video frames: ``<stem>_<frame>``, frame numbers from 0; inputs
found in a folder keep their sub-folder):

* ``<stem>.json``: image size, the checkpoint's kind, dataset and crop, ``flip`` (``--flip``), ``min_share`` (the
  whole-face class gates: ``{"eyeglasses": 0.0075}`` for stage I, ``--glasses-min-share``), its label space
  (name, classes, palette; null without parsing, 300W), and per face ``box`` [x0, y0, x1, y1], detector ``score``,
  ``landmarks`` [[x, y], ...] in the original image's pixels (integer values are pixel centres);
  ``"faces": []`` with a note when none is found; the files written and how to read the depth PNG.
* ``<stem>_seg.png``: 8-bit class ids of the checkpoint's label space in the original image's frame (faces pasted
  back, background 0); not written without a parsing head.
* ``<stem>_depth.png``: 16-bit relative depth, ``mm = value * mm_per_level + offset_mm`` (0 = background); written
  when the network predicts depth and parsing (depth is kept on the parsed foreground).
* ``<stem>_normals.png`` / ``<stem>_uv.png``: when the network has those heads and ``--save`` asks for them.
* ``<stem>_overlay.png``: the photo with parsing colours, boxes, landmarks and a legend.

An unreadable input prints one line naming it and the run goes on; the exit status is then 2.
"""

from __future__ import annotations

import argparse
import functools
import glob
import json
import os
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from next3d_gen.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
OUTPUTS = ("seg", "depth", "normals", "uv", "overlay")
DEFAULT_SAVE = "seg,depth,overlay"
DEPTH_MM_PER_LEVEL = 0.1
"""Depth PNG resolution: one uint16 level = 0.1 mm."""
DEPTH_OFFSET_MM = -3000.0
"""Depth PNG offset: ``mm = level * DEPTH_MM_PER_LEVEL + DEPTH_OFFSET_MM`` (level 0 is reserved for background)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise UserError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="synthforge predict", description="Predict parsing, depth and landmarks on every face.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders, glob patterns or videos")
    p.add_argument("--ckpt", required=True, help="checkpoint written by synthforge train or synthforge finetune")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", default="auto", help="auto (GPU when there is one), cpu, cuda, cuda:N")
    p.add_argument("--batch-size", type=int, default=16, help="face crops per forward pass (default 16)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: the crops of one image are a tiny batch, and the detector runs "
        "in a second thread beside it; on a shared 2-core host 2 threads ran 40x slower)",
    )
    faces = p.add_mutually_exclusive_group()
    faces.add_argument(
        "--boxes",
        help="JSON object: input file name (or stem, or <stem>_<frame>) -> "
        "list of [x0, y0, x1, y1] face boxes in pixels",
    )
    faces.add_argument("--no-detect", action="store_true", help="take each input as one face crop")
    p.add_argument("--detector", default="dlib_hog", help="face detector (default dlib_hog)")
    p.add_argument(
        "--min-face",
        type=float,
        default=None,
        help="smallest face side to find, pixels (default 80: dlib's window; smaller upsamples, larger "
        "downsamples and runs faster)",
    )
    from synthforge.detect import DLIB_THRESHOLD

    p.add_argument(
        "--detect-threshold",
        type=float,
        default=None,
        help=f"detector score threshold (default: the detector's, {DLIB_THRESHOLD:g} for dlib_hog; lower "
        "finds more faces and more false ones, higher fewer)",
    )
    p.add_argument(
        "--save",
        default=DEFAULT_SAVE,
        help=f"outputs besides the JSON, from {','.join(OUTPUTS)} (default {DEFAULT_SAVE}; 'none' for the JSON only)",
    )
    p.add_argument("--every", type=int, default=1, help="videos: predict every K-th frame (default 1)")
    p.add_argument(
        "--flip",
        action="store_true",
        help="flip test: average each face's predictions with those on the mirrored crop (landmarks, parsing, "
        "depth; more accurate, twice the network time)",
    )
    p.add_argument(
        "--glasses-min-share",
        type=float,
        default=None,
        metavar="SHARE",
        help="drop a face's eyeglasses pixels when they cover less than this share of its crop (specks on bare "
        "eyes; default 0.0075 for stage-I checkpoints; 0 keeps every pixel)",
    )
    p.add_argument(
        "--crop-scale",
        type=float,
        default=None,
        help="crop side / crop-box side (default: the checkpoint's data.crop_scale, or data.crop.scale "
        "when fine-tuned; give it for checkpoints that do not record it)",
    )
    return p


@dataclass
class Item:
    """One image to predict: its source, output stem (relative to --out) and, for videos, the frame number."""

    source: Path
    stem: str
    frame: int | None = None
    image: np.ndarray | None = None  # RGB uint8, set for video frames


def expand_inputs(inputs: list[str]) -> tuple[list[tuple[Path, str]], list[str]]:
    """Files to read with their output stems, and the inputs that match nothing (each named once)."""
    files: list[tuple[Path, str]] = []
    missing: list[str] = []
    for arg in inputs:
        path = Path(arg)
        if path.is_dir():
            known = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
            found = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in known)
            files += [(f, str(f.relative_to(path).with_suffix(""))) for f in found]
        elif path.is_file():
            files.append((path, path.stem))
        elif glob.has_magic(arg):
            matches = sorted(Path(m) for m in glob.glob(arg, recursive=True) if Path(m).is_file())
            if not matches:
                missing.append(arg)
            files += [(m, m.stem) for m in matches]
        else:
            missing.append(arg)
    seen: dict[str, Path] = {}
    for f, stem in files:
        if stem in seen and seen[stem] != f:
            raise UserError(f"{f} and {seen[stem]} would write the same outputs ({stem}.json): rename one")
        seen[stem] = f
    return files, missing


def iter_items(files: list[tuple[Path, str]], every: int, failed: list[str]) -> Iterator[Item]:
    """Images and video frames in order; videos that cannot be opened are reported in ``failed``."""
    for path, stem in files:
        if path.suffix.lower() not in VIDEO_EXTENSIONS:
            yield Item(path, stem)
            continue
        cap = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            failed.append(f"{path}: cannot open video")
            continue
        index = 0
        read_any = False
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            read_any = True
            if index % every == 0:
                yield Item(path, f"{stem}_{index:06d}", index, np.ascontiguousarray(frame[..., ::-1]))
            index += 1
        cap.release()
        if not read_any:
            failed.append(f"{path}: no frame could be decoded")


def read_image(path: Path) -> np.ndarray | None:
    """RGB uint8 (H, W, 3), or None when the file is not a readable image (grey and RGBA are converted); OSError
    when it cannot be opened."""
    from synthforge.crops import decode_image

    return decode_image(np.fromfile(path, dtype=np.uint8) if path.stat().st_size else np.zeros(0, np.uint8))


Loaded = tuple[Item, "np.ndarray | None", str, "list | None"]
"""(item, RGB image or None, why it could not be read, detections or None when no detector ran)."""


def load_and_detect(item: Item, detector) -> Loaded:  # noqa: ANN001 - FaceDetector | None
    """Decode one item (unless it is a video frame) and run the detector on it."""
    image, why = item.image, ""
    if image is None:
        try:
            image = read_image(item.source)
        except OSError as err:
            image, why = None, err.strerror or str(err)
        else:
            why = "not a readable image"
    dets = detector.detect(image) if image is not None and detector is not None else None
    return item, image, why, dets


def ahead(items: Iterator[Item], fn: Callable[[Item], Loaded], depth: int = 2) -> Iterator[Loaded]:
    """``fn(item)`` for each item, in order, computed up to ``depth`` items ahead in one worker thread.

    Decoding and detection (dlib holds the GIL) then overlap with the network, whose kernels run without the GIL: on
    2 cores the two halves of the work run side by side.
    """
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict-load") as pool:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def load_boxes(path: str) -> dict[str, list]:
    """Read ``--boxes``: {name: [[x0, y0, x1, y1], ...]} with finite numbers and x1 > x0, y1 > y0."""
    from synthforge.detect import Detection

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise UserError(f"--boxes: file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"--boxes: {path}: not a JSON file ({err})") from None
    if not isinstance(data, dict):
        raise UserError(f"--boxes: {path}: expected an object mapping file names to lists of boxes")
    out: dict[str, list] = {}
    for name, boxes in data.items():
        if not isinstance(boxes, list):
            raise UserError(f"--boxes: {path}: entry {name!r} is not a list of boxes")
        dets = []
        for b in boxes:
            ok = isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b)
            if not ok or not np.all(np.isfinite(b)) or b[2] <= b[0] or b[3] <= b[1]:
                raise UserError(
                    f"--boxes: {path}: entry {name!r}: {b!r} is not a box [x0, y0, x1, y1] with x1 > x0, y1 > y0"
                )
            dets.append(Detection(tuple(float(v) for v in b)))
        out[name] = dets
    return out


def _boxes_for(item: Item, boxes: dict[str, list]) -> list | None:
    keys = (
        [item.stem, Path(item.stem).name]
        if item.frame is not None
        else [str(item.source), item.source.name, item.stem, item.source.stem]
    )
    for key in keys:
        if key in boxes:
            return boxes[key]
    return None


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _png(image: np.ndarray) -> bytes:
    if image.ndim == 3:
        image = np.ascontiguousarray(image[..., ::-1])
    ok, buf = cv2.imencode(".png", image)
    if not ok:  # pragma: no cover - encoding arrays of these dtypes does not fail
        raise OSError("PNG encoding failed")
    return buf.tobytes()


def depth_png(depth_m: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """(H, W) float metres -> uint16 levels (``DEPTH_MM_PER_LEVEL``, ``DEPTH_OFFSET_MM``); 0 off the foreground."""
    levels = np.rint((depth_m.astype(np.float64) * 1000.0 - DEPTH_OFFSET_MM) / DEPTH_MM_PER_LEVEL)
    return np.where(foreground, levels.clip(1, 65535), 0).astype(np.uint16)


def write_outputs(item: Item, image: np.ndarray, result, out_dir: Path, save: set[str], meta: dict) -> int:  # noqa: ANN001
    """Write the JSON and the chosen PNGs of one image; returns the number of faces."""
    from next3d_gen.labels import LabelSpace
    from synthforge import draw

    space = result.label_space
    stem = item.stem
    files: dict[str, str] = {}
    fg = result.foreground
    if "seg" in save and result.seg is not None:
        files["seg"] = f"{Path(stem).name}_seg.png"
        _write_atomic(out_dir / f"{stem}_seg.png", _png(result.seg))
    if "depth" in save and result.depth is not None:
        files["depth"] = f"{Path(stem).name}_depth.png"
        _write_atomic(out_dir / f"{stem}_depth.png", _png(depth_png(result.depth, fg)))
    if "normals" in save and result.normal is not None:
        files["normals"] = f"{Path(stem).name}_normals.png"
        _write_atomic(out_dir / f"{stem}_normals.png", _png(draw.normal_colour(result.normal, fg)))
    if "uv" in save and result.uv is not None:
        files["uv"] = f"{Path(stem).name}_uv.png"
        uv16 = np.rint((result.uv.clip(0, 1)) * 65535).astype(np.uint16)
        rgb = np.concatenate([uv16, np.zeros_like(uv16[..., :1])], -1)
        _write_atomic(out_dir / f"{stem}_uv.png", _png(np.where(fg[..., None], rgb, 0).astype(np.uint16)))
    if "overlay" in save:
        files["overlay"] = f"{Path(stem).name}_overlay.png"
        faces = [(f.box, f.landmarks) for f in result.faces]
        if result.seg is None or space is None:  # no parsing head: boxes and landmarks only
            seg, shown = np.zeros(image.shape[:2], np.uint8), LabelSpace("none", ("background",), ((0, 0, 0),))
        else:
            seg, shown = result.seg, space
        _write_atomic(out_dir / f"{stem}_overlay.png", _png(draw.face_overlay(image, seg, shown, faces)))
    doc = {
        "input": str(item.source),
        "frame": item.frame,
        "image_size": {"width": result.width, "height": result.height},
        **meta,
        "label_space": None
        if space is None
        else {
            "name": space.name,
            "classes": list(space.classes),
            "palette": [list(c) for c in space.palette],
            "background": space.background,
        },
        "num_faces": len(result.faces),
        "faces": [
            {
                "box": [round(v, 2) for v in f.box],
                "score": None if f.score is None else round(f.score, 4),
                "num_landmarks": 0 if f.landmarks is None else len(f.landmarks),
                "landmarks": None if f.landmarks is None else np.round(f.landmarks.astype(np.float64), 2).tolist(),
            }
            for f in result.faces
        ],
        "files": files,
    }
    if not result.faces:
        doc["note"] = "no face found" if meta["faces_from"] == "detector" else "no box given for this input"
    if "depth" in files:
        doc["depth"] = {
            "mm_per_level": DEPTH_MM_PER_LEVEL,
            "offset_mm": DEPTH_OFFSET_MM,
            "background": 0,
            "meaning": "mm = level * mm_per_level + offset_mm: camera z minus the face's median depth "
            "(relative, per face)",
        }
    if "uv" in files:
        doc["uv"] = {"encoding": "R = u * 65535, G = v * 65535, B = 0; 0 off the faces"}
    doc["landmark_convention"] = "pixels of the original image; integer values are pixel centres"
    _write_atomic(out_dir / f"{stem}.json", (json.dumps(doc, indent=1) + "\n").encode("utf-8"))
    return len(result.faces)


def _device(name: str) -> str:
    """'auto' -> Lightning's choice (CUDA when available, else CPU); other names are checked by Lightning."""
    import lightning as L

    try:
        if name == "auto":
            return str(L.Fabric(accelerator="auto", devices=1).device)
        return str(
            L.Fabric(accelerator=name.split(":")[0], devices=[int(name.split(":")[1])] if ":" in name else 1).device
        )
    except (ValueError, RuntimeError, TypeError) as err:
        raise UserError(f"--device {name}: {str(err).splitlines()[0]}") from None


def main(argv: list[str]) -> int:
    """Run the command; returns the exit status (2 if any input failed)."""
    args = build_parser().parse_args(argv)
    save = set() if args.save.strip() == "none" else {s.strip() for s in args.save.split(",") if s.strip()}
    unknown = save - set(OUTPUTS)
    if unknown:
        raise UserError(f"--save: unknown output(s) {', '.join(sorted(unknown))} (choose from {', '.join(OUTPUTS)})")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    if args.every < 1:
        raise UserError(f"--every must be >= 1, got {args.every}")
    if args.crop_scale is not None and not args.crop_scale > 0:
        raise UserError(f"--crop-scale must be > 0, got {args.crop_scale}")
    if args.min_face is not None and not args.min_face > 0:
        raise UserError(f"--min-face must be > 0, got {args.min_face}")
    if args.glasses_min_share is not None and not 0.0 <= args.glasses_min_share <= 1.0:
        raise UserError(f"--glasses-min-share must be in [0, 1], got {args.glasses_min_share}")
    if not Path(args.ckpt).is_file():
        raise UserError(f"--ckpt: no such checkpoint file: {args.ckpt}")
    boxes = load_boxes(args.boxes) if args.boxes else None
    files, missing = expand_inputs(args.inputs)
    if not files and not missing:
        raise UserError("no input images found")

    import torch
    from tqdm import tqdm

    from synthforge.detect import DLIB_WINDOW, make_detector
    from synthforge.inference import Predictor
    from synthforge.predict import FacePipeline

    torch.set_num_threads(args.threads)
    detector = None
    if boxes is None and not args.no_detect:
        detector = make_detector(args.detector, min_face=args.min_face or DLIB_WINDOW, threshold=args.detect_threshold)
    predictor = Predictor.from_checkpoint(args.ckpt, device=_device(args.device), option="--ckpt", flip=args.flip)
    if args.glasses_min_share is not None:
        if predictor.label_space is None:
            raise UserError(f"--glasses-min-share: {args.ckpt} has no parsing head ({predictor.dataset})")
        if "eyeglasses" not in predictor.label_space.classes:
            raise UserError(f"--glasses-min-share: {args.ckpt} has no eyeglasses class ({predictor.label_space.name})")
        predictor.min_share["eyeglasses"] = args.glasses_min_share
    crop_scale = args.crop_scale or predictor.crop_scale
    whole_images = predictor.crop is not None and predictor.crop.box == "image"
    if not crop_scale and whole_images and not args.no_detect:
        raise UserError(
            f"--ckpt: {args.ckpt}: fine-tuned on whole aligned face images ({predictor.dataset}): use "
            "--no-detect on such images, or --crop-scale (crop side / face landmark-box side) to crop "
            "the faces of other photos"
        )
    if not crop_scale and not whole_images:
        raise UserError(
            f"{args.ckpt}: the checkpoint does not record its crop scale: pass --crop-scale "
            "(the data.crop_scale it was trained with)"
        )
    pipeline = FacePipeline(predictor, crop_scale, detector, batch_size=args.batch_size)
    out_dir = Path(args.out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--out: cannot create {out_dir}: {err.strerror or err}") from None
    faces_from = "boxes" if boxes is not None else "whole image" if args.no_detect else "detector"
    crop = pipeline.crop
    meta = {
        "checkpoint": str(args.ckpt),
        "checkpoint_kind": predictor.kind,
        "dataset": predictor.dataset,
        "faces_from": faces_from,
        "detector": detector.name if detector is not None else None,
        "crop_scale": pipeline.crop_scale,
        "crop": {"box": crop.box, "scale": crop.scale},
        "flip": pipeline.flip,
        "min_share": predictor.min_share,
    }
    failed: list[str] = [f"{m}: no such file or folder" for m in missing]
    for line in failed:
        print(f"synthforge predict: {line}", file=sys.stderr)
    n_images = n_faces = 0
    t0 = time.perf_counter()
    bar = tqdm(unit="img", desc="predict", disable=None, file=sys.stderr)
    reported = len(failed)
    load = functools.partial(load_and_detect, detector=detector)  # detector: None with --boxes / --no-detect
    for item, image, why, dets in ahead(iter_items(files, args.every, failed), load):
        while reported < len(failed):  # a video that failed to open
            bar.write(f"synthforge predict: {failed[reported]}", file=sys.stderr)
            reported += 1
        if image is None:
            failed.append(f"{item.source}: {why}")
            bar.write(f"synthforge predict: {failed[-1]}", file=sys.stderr)
            reported += 1
            continue
        if boxes is not None:
            result = pipeline.run(image, boxes=_boxes_for(item, boxes) or [])
        elif dets is not None:
            result = pipeline.run(image, boxes=dets, calibration=detector.calibration)
        else:
            result = pipeline.run(image, whole_image=True)
        try:
            n_faces += write_outputs(item, image, result, out_dir, save, meta)
        except OSError as err:
            raise UserError(f"--out: cannot write under {out_dir}: {err.strerror or err}") from None
        n_images += 1
        bar.update(1)
        bar.set_postfix_str(f"{n_faces / max(time.perf_counter() - t0, 1e-9):.1f} faces/s", refresh=False)
    bar.close()
    while reported < len(failed):
        print(f"synthforge predict: {failed[reported]}", file=sys.stderr)
        reported += 1
    elapsed = time.perf_counter() - t0
    print(
        f"{n_images} images, {n_faces} faces in {elapsed:.1f} s ({n_faces / max(elapsed, 1e-9):.1f} faces/s), "
        f"{len(failed)} failed; outputs in {out_dir}"
    )
    return 2 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
