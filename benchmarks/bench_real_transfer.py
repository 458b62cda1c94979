"""Synthetic-to-real transfer: a stage-I checkpoint, with no fine-tuning, on real annotated faces (AFW dev set).

    python benchmarks/bench_real_transfer.py CKPT [--realdata DIR] [--json OUT] [--png OUT] [--crop-scale S]
        [--glasses-min-share F]
    python benchmarks/bench_real_transfer.py --demo [DIR] [--demo-args "--num-train 300"] [--json OUT] [--png OUT]

Data: ``../shared/realdata`` relative to the project root (``--realdata`` overrides; see its README: a development
set, quote figures as "AFW dev set"): ``afw68/`` (337 faces, 68-point ``.pts``), ``celebamask_hq_samples/`` (4 masks,
the dataset's ``g_mask.py`` id order) and ``lapa_sample/`` (1 mask). Never used by the tests.

Crops (:func:`synthforge.crops.face_crop_matrix`, the un-jittered crop of ``SynthFaceDataset``): a square
of ``crop_scale`` x the larger side of a box, centred on the box centre, where ``crop_scale`` is the checkpoint's
``data.crop_scale`` (datamodule hyper-parameters; 1.35 in ``configs/stage1/demo.yaml``) unless ``--crop-scale`` is
given. The box is the annotated 68-point box for AFW. The parsing images have no landmarks: their scoring window
is cut around the box of the annotated face classes (skin, nose, eyes, brows, lips, inner mouth), and, since their
skin reaches the hairline, that box is about 1.3 x a landmark box: the face would be 25 % smaller than in training.
So, as ``synthforge predict`` re-crops a photo on its first-pass landmarks, a first pass on that window gives
landmarks, and the parsing figures are those of a second pass on ``crop_scale`` x their box, scored in that window
(the first pass's own figures are reported too: "face-class-box window"). Windows are resampled at about their own
resolution (bilinear); ``Predictor`` then resizes them to the network's crop size with anti-aliasing and maps its
outputs back to the window's pixels.

Scoring frames (pixel-centre convention: integer coordinates are pixel centres; ``.pts`` are 1-based, 1 is
subtracted): landmarks are mapped back to the original image by the inverse of the crop affine and scored there;
label maps are scored in the crop window, with the ground truth warped by the same affine (nearest neighbour, pixels
outside the photo ignored).

Figures: NME in % of the outer-eye-corner distance (points 36, 45) for all 68 points, the 17 jaw points and the 51
inner points (all with the same per-face normaliser); failure rate and CED AUC at 8 % and 10 % (all points); the
share of faces the network gives glasses (eyeglasses on at least 2 % of the crop; AFW has no glasses labels: about
a quarter of its faces wear glasses, counted by eye, so a much higher share means false glasses on bare eyes); the
mean signed offset of each point (dx along the eye line towards the subject's left eye, dy perpendicular to it,
towards the chin, in % of the inter-ocular distance); parsing F1 per merged class of
:data:`next3d_gen.labels.REAL_MERGED` from the confusion matrix pooled over the parsing images (merge tables:
``next3d_gen.labels.REAL_MERGE_TABLES``), "n/a" for a class the network's label space cannot predict, and two
means: over all classes, and over the classes some mask contains (a class no mask has, such as eyeglasses here,
scores 0 on a single false-positive pixel and says nothing about finding it; when it is never predicted its F1 is
undefined, printed "none" and left out of both means). Predictions are ``Predictor``'s defaults, as ``synthforge
predict`` gives them: eyeglasses specks below ``GLASSES_MIN_SHARE`` of a crop are dropped
(:mod:`synthforge.inference`; ``--glasses-min-share 0`` scores every pixel). Every figure is given twice: "plain"
(one pass per crop) and "flip test" (each crop also predicted mirrored and the two averaged: ``synthforge predict
--flip``; JSON keys ``afw_flip`` / ``parsing_flip``).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from label_finetune.datasets.w300 import read_pts
from next3d_gen.errors import UserError
from next3d_gen.labels import (
    CELEBAMASK_HQ,
    CELEBAMASK_HQ_GMASK_ORDER,
    CELEBAMASK_HQ_TO_REAL,
    IGNORE_INDEX,
    INTER_OCULAR,
    LANDMARK_GROUPS,
    LAPA,
    LAPA_TO_REAL,
    REAL_MERGED,
    SYNTH_TO_REAL,
    RealMergeTable,
    real_merged_active,
    relabel_lut,
)
from synthforge import draw, metrics
from synthforge.crops import (
    face_crop_matrix,
    invert_affine,
    mask_box_points,
    read_gray,
    read_image,
    transform_points,
    warp_image,
    warp_labels,
)
from synthforge.inference import Predictor
from synthforge.visualize import save_png

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REALDATA = ROOT.parent / "shared" / "realdata"
DEFAULT_DEMO_DIR = ROOT / "out" / "real-transfer-demo"
FACE_CLASSES = ("skin", "nose", "eyes", "brows", "lips", "inner_mouth")
"""Merged classes whose union gives the face box of a parsing image."""
THRESHOLDS = (0.08, 0.10)
GLASSES_FACE_SHARE = 0.02  # a face "has glasses" when eyeglasses cover this share of its crop
JAW = LANDMARK_GROUPS["jaw"]
INNER = tuple(i for i in range(68) if i not in JAW)
TILE = 128
"""Side of one picture in the ``--png`` overlay."""


@dataclass
class ParsingItem:
    """One real label map: ``name``, the RGB image and label map in one frame, and how its ids map to merged ids."""

    name: str
    image: np.ndarray  # (H, W, 3) uint8 RGB
    gt_merged: np.ndarray  # (H, W) uint8 REAL_MERGED ids, 255 = ignore
    table: RealMergeTable


def _fail(message: str) -> int:
    print(f"bench_real_transfer: {message}", file=sys.stderr)
    return 2


def _checked_labels(labels: np.ndarray, num_classes: int, path: Path) -> np.ndarray:
    bad = (labels >= num_classes) & (labels != IGNORE_INDEX)
    if bad.any():
        raise UserError(f"label map holds ids >= {num_classes}: {path}")
    return labels


def load_parsing(realdata: Path, active: tuple[str, ...]) -> list[ParsingItem]:
    """The CelebAMask-HQ samples and the LaPa sample, image resized to its label map's size (area filter)."""
    items = []
    celeba = realdata / "celebamask_hq_samples"
    to_celeba = relabel_lut(CELEBAMASK_HQ_GMASK_ORDER, CELEBAMASK_HQ)
    sources = [(p, p.with_suffix(".jpg"), CELEBAMASK_HQ_TO_REAL, CELEBAMASK_HQ) for p in sorted(celeba.glob("*.png"))]
    lapa = realdata / "lapa_sample"
    sources.append((lapa / "grayscale_mask.png", lapa / "image.jpg", LAPA_TO_REAL, LAPA))
    for mask_path, image_path, table, space in sources:
        labels = read_gray(mask_path)
        if space is CELEBAMASK_HQ:
            labels = to_celeba[_checked_labels(labels, len(CELEBAMASK_HQ_GMASK_ORDER), mask_path)]
        labels = _checked_labels(labels, space.num_classes, mask_path)
        image = read_image(image_path)
        h, w = labels.shape
        if abs(image.shape[0] / image.shape[1] - h / w) > 0.01:
            raise UserError(f"image and label map have different aspect ratios: {image_path}")
        if image.shape[:2] != (h, w):
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        gt = table.lut(space, active)[labels]
        name = f"{mask_path.parent.name}/{mask_path.stem}"
        items.append(ParsingItem(name, image, gt, table))
    return items


def eye_frame_offsets(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(N, 68, 2) signed offsets pred - gt in a per-face frame aligned with the eye line, % of the inter-ocular
    distance: x along gt[45] - gt[36] (towards the subject's left eye), y perpendicular, towards the chin."""
    a, b = INTER_OCULAR
    axis = gt[:, b] - gt[:, a]
    iod = np.linalg.norm(axis, axis=1, keepdims=True)
    u = axis / iod
    v = np.stack([-u[:, 1], u[:, 0]], 1)
    d = pred - gt
    return 100 * np.stack([(d * u[:, None]).sum(-1), (d * v[:, None]).sum(-1)], -1) / iod[:, :, None]


def evaluate_afw(predictor: Predictor, folder: Path, crop_scale: float, bar: tqdm, batch: int = 16) -> dict:
    pts_files = sorted(folder.glob("*.pts"))
    if not pts_files:
        raise UserError(f"no .pts files in {folder}")
    gts, preds, tiles, glasses = [], [], [], []
    g_id = predictor.label_space.classes.index("eyeglasses") if "eyeglasses" in predictor.label_space.classes else None
    for start in range(0, len(pts_files), batch):
        crops, inverses = [], []
        for pts in pts_files[start : start + batch]:
            gt = read_pts(pts)
            image = read_image(pts.with_suffix(".jpg"))
            crop, matrix = face_window(image, gt, crop_scale, predictor.crop_size)
            crops.append(crop)
            inverses.append(invert_affine(matrix))
            gts.append(gt)
            if len(tiles) < 6:
                show = face_crop_matrix(gt, crop_scale, TILE)
                tiles.append((warp_image(image, show, TILE), transform_points(show, gt), show))
        for pred, inverse in zip(predictor.predict(crops), inverses, strict=True):
            preds.append(transform_points(inverse, pred.landmarks))
            if g_id is not None:
                glasses.append(float((pred.seg == g_id).mean()))
        bar.update(len(crops))
    gt_t = torch.from_numpy(np.stack(gts))
    pred_t = torch.from_numpy(np.stack(preds))
    norm = metrics.landmark_normalizer(gt_t, "inter_ocular")
    nme_all = metrics.nme(pred_t, gt_t, norm)
    out: dict = {
        "num_faces": len(gts),
        "nme_all": 100 * float(nme_all.mean()),
        "nme_jaw17": 100 * float(metrics.nme(pred_t[:, JAW], gt_t[:, JAW], norm).mean()),
        "nme_inner51": 100 * float(metrics.nme(pred_t[:, INNER], gt_t[:, INNER], norm).mean()),
        "nme_median": 100 * float(nme_all.median()),
    }
    for th in THRESHOLDS:
        fr, auc = metrics.failure_rate_and_auc(nme_all, th)
        out[f"fr_{round(th * 100)}"], out[f"auc_{round(th * 100)}"] = 100 * fr, auc
    if glasses:  # no glasses labels in AFW: how often the network sees glasses (about a quarter wear them, by eye)
        out["glasses_faces_pct"] = 100 * float((np.asarray(glasses) >= GLASSES_FACE_SHARE).mean())
    offsets = eye_frame_offsets(pred_t.double().numpy(), gt_t.double().numpy()).mean(0)  # (68, 2)
    out["offset_per_point"] = offsets.round(3).tolist()
    out["offset_groups"] = {g: offsets[list(ids)].mean(0).round(3).tolist() for g, ids in LANDMARK_GROUPS.items()}
    shown = zip(tiles, preds[: len(tiles)], strict=True)
    out["_tiles"] = [(img, gt, transform_points(show, p)) for (img, gt, show), p in shown]
    return out


def _side(points: np.ndarray) -> float:
    return float(max(np.ptp(points[:, 0]), np.ptp(points[:, 1]), 1.0))


def face_window(
    image: np.ndarray, points: np.ndarray, crop_scale: float, min_side: int
) -> tuple[np.ndarray, np.ndarray]:
    """The training crop's window around (K, 2) image points, cut at about its own resolution (at least
    ``min_side`` pixels): (crop, its (2, 3) image -> crop affine)."""
    window = max(int(round(_side(points) * crop_scale)), min_side)
    matrix = face_crop_matrix(points, crop_scale, window)
    return warp_image(image, matrix, window), matrix


def evaluate_parsing(
    predictor: Predictor, items: list[ParsingItem], crop_scale: float, active: tuple[str, ...], bar: tqdm
) -> dict:
    """Parsing F1 per merged class, pooled over the images, in the window ``synthforge predict`` would parse: a
    first pass on ``crop_scale`` x the box of the annotated face classes gives landmarks, and the figures are the
    second pass's on ``crop_scale`` x their box (the training crop's definition), scored there. ``mask_box`` holds
    the first pass's own figures in its window: about 1.3 x a landmark-box window (the face-class box reaches the
    hairline), so the face is smaller there than the network was trained on (``landmark_to_mask_box``: the side
    ratio of the two windows per image)."""
    c = REAL_MERGED.num_classes
    pred_lut = SYNTH_TO_REAL.lut(predictor.label_space, active)
    face_ids = [REAL_MERGED.id(n) for n in FACE_CLASSES]
    total = torch.zeros(c, c, dtype=torch.int64)
    first_total = torch.zeros_like(total)
    by_source: dict[str, torch.Tensor] = {}
    tiles, ratios = [], []
    for item in items:
        face = np.isin(item.gt_merged, face_ids)
        if not face.any():
            raise UserError(f"{item.name}: the label map holds no face class")
        fold = item.table.prediction_fold(active)
        box = mask_box_points(face)
        crop, gt, first, matrix = _parse_window(predictor, item, box, crop_scale)
        first_total += metrics.confusion_matrix(torch.from_numpy(fold[pred_lut[first.seg.astype(np.uint8)]]), gt, c)
        landmarks = transform_points(invert_affine(matrix), first.landmarks)
        ratios.append(round(_side(landmarks) / _side(box), 3))
        crop, gt, pred, _ = _parse_window(predictor, item, landmarks, crop_scale)
        merged = fold[pred_lut[pred.seg.astype(np.uint8)]]
        cm = metrics.confusion_matrix(torch.from_numpy(merged), gt, c)
        total += cm
        src = item.table.space
        by_source[src] = by_source.get(src, torch.zeros_like(cm)) + cm
        size = (TILE, TILE)
        tiles.append(
            (
                cv2.resize(crop, size, interpolation=cv2.INTER_AREA),
                cv2.resize(gt.numpy(), size, interpolation=cv2.INTER_NEAREST),
                cv2.resize(merged, size, interpolation=cv2.INTER_NEAREST),
            )
        )
        bar.update(1)
    return {
        "num_images": len(items),
        **_f1_table(total, active),
        "by_source": {k: _f1_table(v, active) for k, v in by_source.items()},
        "mask_box": _f1_table(first_total, active),
        "landmark_to_mask_box": ratios,
        "_tiles": tiles,
    }


def _parse_window(predictor: Predictor, item: ParsingItem, points: np.ndarray, crop_scale: float):  # noqa: ANN202
    """Parse the window around (K, 2) image points: (crop, ground truth as an int64 tensor, Prediction, affine)."""
    crop, matrix = face_window(item.image, points, crop_scale, predictor.crop_size)
    gt = torch.from_numpy(warp_labels(item.gt_merged, matrix, crop.shape[0], IGNORE_INDEX))
    [pred] = predictor.predict([crop])
    return crop, gt, pred, matrix


def _f1_table(cm: torch.Tensor, active: tuple[str, ...]) -> dict:
    f1 = metrics.f1_scores(cm)
    per_class: dict[str, float | None] = {}
    in_masks = []
    for i, name in enumerate(REAL_MERGED.classes[1:], start=1):
        value = float(f1[i])
        per_class[name] = None if name not in active or math.isnan(value) else value
        if per_class[name] is not None and int(cm[i].sum()) > 0:
            in_masks.append(per_class[name])
    present = [v for v in per_class.values() if v is not None]
    return {
        "f1": per_class,
        "f1_mean": float(np.mean(present)) if present else None,
        # classes with ground-truth pixels only: a class no mask contains scores 0 on a single false pixel
        "f1_mean_in_masks": float(np.mean(in_masks)) if in_masks else None,
    }


def overlay_png(afw: dict, parsing: dict) -> np.ndarray:
    """Top row: AFW crops with ground truth (green) and predicted (red) landmarks; below: per parsing image, crop |
    ground-truth merged classes | predicted merged classes; a legend of the merged classes at the bottom."""
    top = [draw.points(draw.points(img, gt, (0, 255, 0)), p, (255, 0, 0)) for img, gt, p in afw["_tiles"]]
    width = max(len(top), 3) * TILE
    rows = [_pad(np.concatenate(top, 1), width)] if top else []
    for img, gt, pred in parsing["_tiles"]:
        row = [img, *(draw.seg_overlay(img, seg, REAL_MERGED, keep_background=True) for seg in (gt, pred))]
        rows.append(_pad(np.concatenate(row, 1), width))
    title = np.full((18, width, 3), 255, np.uint8)
    draw.text(title, "AFW: GT green, predicted red | parsing: crop, GT, predicted (merged classes)", (3, 13))
    legend = draw.legend(REAL_MERGED, range(REAL_MERGED.num_classes), width)
    return np.concatenate([title, *rows, legend], 0)


def _pad(row: np.ndarray, width: int) -> np.ndarray:
    out = np.full((row.shape[0], width, 3), 255, np.uint8)
    out[:, : row.shape[1]] = row[:, :width]
    return out


def print_report(ckpt: Path, crop_scale: float, runs: dict[str, tuple[dict, dict]], active: tuple[str, ...]) -> None:
    """``runs``: (AFW figures, parsing figures) per way of predicting ("plain", "flip test"); the offsets are the
    first run's."""
    (afw, parsing), *_ = runs.values()
    print(f"\ncheckpoint {ckpt}, crop scale {crop_scale:g}, no fine-tuning (AFW dev set)")
    heads = " | ".join(runs)
    print(
        f"\n| AFW dev set, {afw['num_faces']} faces, NME % (outer eye corners) | {heads} |\n|---|" + "---|" * len(runs)
    )
    rows = [
        ("all 68 points", "nme_all"),
        ("17 jaw points", "nme_jaw17"),
        ("51 inner points", "nme_inner51"),
        ("median over faces, all points", "nme_median"),
    ]
    for th in THRESHOLDS:
        p = round(th * 100)
        rows += [(f"failure rate at {p} % (%)", f"fr_{p}"), (f"AUC at {p} %", f"auc_{p}")]
    if "glasses_faces_pct" in afw:
        share = f"{100 * GLASSES_FACE_SHARE:g}"
        rows.append((f"faces with eyeglasses on >= {share} % of the crop (%)", "glasses_faces_pct"))
    for label, key in rows:
        fmt = ".3f" if key.startswith("auc") else ".2f"
        print(f"| {label} | " + " | ".join(f"{a[key]:{fmt}}" for a, _ in runs.values()) + " |")
    print(
        f"\nmean signed offset ({next(iter(runs))}), % of inter-ocular distance (dx: towards the subject's left eye "
        "along the eye line, dy: towards the chin)"
    )
    print("| jaw point | " + " | ".join(str(i) for i in JAW) + " |\n|---|" + "---|" * len(JAW))
    for axis, name in ((0, "dx"), (1, "dy")):
        print(f"| {name} | " + " | ".join(f"{afw['offset_per_point'][i][axis]:+.1f}" for i in JAW) + " |")
    print("| group | dx | dy |\n|---|---|---|")
    for group, (dx, dy) in afw["offset_groups"].items():
        if group != "jaw":
            print(f"| {group} | {dx:+.1f} | {dy:+.1f} |")
    names = REAL_MERGED.classes[1:]
    print(
        f"\nparsing F1, merged classes, {parsing['num_images']} images (CelebAMask-HQ + LaPa samples; ears and neck "
        "from CelebAMask-HQ only); mean: all classes; in masks: the classes some mask contains"
    )
    print("| crop | " + " | ".join(names) + " | mean | in masks |\n|" + "---|" * (len(names) + 3))
    for way, (_, par) in runs.items():
        for label, table in (("landmark-box window", par), ("face-class-box window", par["mask_box"])):
            cells = [_cell(table["f1"][n], n in active) for n in names]
            means = f"{table['f1_mean']:.3f} | {table['f1_mean_in_masks']:.3f}"
            print(f"| {label}, {way} | " + " | ".join(cells) + f" | {means} |")
    print(
        "landmark-box window / face-class-box window, per image: "
        + ", ".join(f"{r:.2f}" for r in parsing["landmark_to_mask_box"])
    )
    inactive = [n for n in names if n not in active]
    if inactive:
        print(f"(n/a: {', '.join(inactive)}: no such class in the checkpoint's label space)")
    print("(none: in no mask and never predicted: F1 undefined, left out of the means)")


def _cell(f1: float | None, active: bool) -> str:
    if not active:
        return "n/a"
    return "none" if f1 is None else f"{f1:.3f}"


def run_demo(folder: Path, demo_args: str) -> Path:
    """``synthforge demo --out folder`` in a subprocess with this Python; returns the checkpoint it evaluated."""
    if folder.exists() and any(folder.iterdir()):
        raise UserError(
            f"--demo: {folder} is not empty (the demo would reuse its shards and hide a generator "
            "change); pass a new folder"
        )
    cmd = [sys.executable, "-m", "synthforge.cli", "demo", "--out", str(folder), *shlex.split(demo_args)]
    print("[bench_real_transfer] " + " ".join(cmd), flush=True)
    status = subprocess.run(cmd, check=False).returncode
    if status:
        raise SystemExit(status)
    try:
        return Path(json.loads((folder / "metrics.json").read_text())["checkpoint"])
    except (OSError, ValueError, KeyError):
        raise UserError(f"--demo: {folder / 'metrics.json'} names no checkpoint") from None


def _public(figures: dict) -> dict:
    return {k: v for k, v in figures.items() if not k.startswith("_")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ckpt", nargs="?", type=Path, help="stage-I checkpoint (synthforge train)")
    ap.add_argument(
        "--demo",
        nargs="?",
        type=Path,
        const=DEFAULT_DEMO_DIR,
        default=None,
        metavar="DIR",
        help="run 'synthforge demo --out DIR' first (a new folder) and evaluate its checkpoint "
        f"(default {DEFAULT_DEMO_DIR})",
    )
    ap.add_argument("--demo-args", default="", help="extra 'synthforge demo' options, one quoted string")
    ap.add_argument("--realdata", type=Path, default=DEFAULT_REALDATA, help="real data folder (default %(default)s)")
    ap.add_argument("--crop-scale", type=float, default=None, help="override the checkpoint's data.crop_scale")
    ap.add_argument(
        "--glasses-min-share",
        type=float,
        default=None,
        help="eyeglasses gate of the predictions (default: the Predictor's, GLASSES_MIN_SHARE; 0 = no gate)",
    )
    ap.add_argument("--json", type=Path, default=None, help="write all figures there")
    ap.add_argument("--png", type=Path, default=None, help="write an overlay picture there")
    args = ap.parse_args(argv)
    try:
        if (args.ckpt is None) == (args.demo is None):
            raise UserError("give either a checkpoint or --demo [DIR]")
        if args.crop_scale is not None and not args.crop_scale > 0:
            raise UserError(f"--crop-scale must be positive, got {args.crop_scale}")
        if args.glasses_min_share is not None and not 0 <= args.glasses_min_share <= 1:
            raise UserError(f"--glasses-min-share must be in [0, 1], got {args.glasses_min_share}")
        for sub in ("", "afw68", "celebamask_hq_samples", "lapa_sample"):
            if not (args.realdata / sub).is_dir():
                raise UserError(f"--realdata: folder not found: {args.realdata / sub}")
        for opt in ("json", "png"):
            out = getattr(args, opt)
            if out is not None and not out.parent.is_dir():
                raise UserError(f"--{opt}: folder not found: {out.parent}")
        ckpt = run_demo(args.demo, args.demo_args) if args.demo is not None else args.ckpt
        predictor = Predictor.from_checkpoint(ckpt)
        if args.glasses_min_share is not None and "eyeglasses" in predictor.min_share:
            predictor.min_share["eyeglasses"] = args.glasses_min_share
        crop_scale = args.crop_scale if args.crop_scale is not None else predictor.crop_scale  # data.crop_scale
        if crop_scale is None:
            raise UserError(f"{ckpt}: no data.crop_scale in the checkpoint; pass --crop-scale")
        active = real_merged_active(predictor.label_space)
        parsing_items = load_parsing(args.realdata, active)
        n_afw = len(list((args.realdata / "afw68").glob("*.pts")))
        flipped = copy.copy(predictor)
        flipped.flip = True  # the same network, each crop also predicted mirrored (synthforge predict --flip)
        runs: dict[str, tuple[dict, dict]] = {}
        with tqdm(total=2 * (n_afw + len(parsing_items)), unit="face", file=sys.stderr) as bar:
            for way, pred in (("plain", predictor), ("flip test", flipped)):
                afw = evaluate_afw(pred, args.realdata / "afw68", crop_scale, bar)
                runs[way] = (afw, evaluate_parsing(pred, parsing_items, crop_scale, active, bar))
        print_report(Path(ckpt), crop_scale, runs, active)
        (afw, parsing), (afw_flip, parsing_flip) = runs.values()
        if args.json is not None:
            figures = {
                "checkpoint": str(ckpt),
                "crop_scale": crop_scale,
                "min_share": predictor.min_share,
                "realdata": str(args.realdata),
                "afw": _public(afw),
                "parsing": _public(parsing),
                "afw_flip": _public(afw_flip),
                "parsing_flip": _public(parsing_flip),
            }
            args.json.write_text(json.dumps(figures, indent=2))
            print(f"wrote {args.json}")
        if args.png is not None:
            save_png(str(args.png), overlay_png(afw, parsing))
            print(f"wrote {args.png}")
    except UserError as err:
        return _fail(str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
