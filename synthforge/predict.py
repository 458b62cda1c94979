"""Face prediction on whole photos: find faces, crop them as the training crops are made, predict twice, paste back.

Per image (RGB uint8, H x W x 3):

1. Faces: a :class:`~synthforge.detect.FaceDetector`, user boxes, or the whole image as one face.
2. First pass: each face box is turned into an estimated landmark box (the detector's
   :class:`~synthforge.detect.BoxCalibration`), and the crop window is that box's side times the checkpoint's
   ``crop_scale``, centred on it; the window is warped to the network's ``crop_size`` square
   (:func:`~synthforge.data.transforms.crop_matrix`, bilinear, zero border; a window more than twice the crop side is
   first warped at an integer multiple of the crop size and area-averaged down, which keeps the same affine matrix
   and avoids aliasing).
3. Second pass: the first pass's landmarks, mapped back to the image with the inverse affine, define the training crop
   exactly (``landmark_box`` x ``crop_scale``); the network runs again on that crop. Predictors without landmarks keep
   the first pass.
4. Paste back: per face, class probabilities (bilinear) and depth / normals / UV (bilinear) are warped from the crop
   into the image frame over the face's window only; each face writes its foreground pixels (argmax != background).
   Faces are pasted in order of increasing box area, so where two faces overlap the larger (usually nearer) one wins.

Coordinates use the pixel-centre convention everywhere (integer values are pixel centres; an image spans
[-0.5, W - 0.5]). Depth is the network's relative depth in metres per face (camera z minus that face's median, as
trained), meaningful on the foreground only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from next3d_gen.labels import LabelSpace
from synthforge.data.transforms import crop_matrix, landmark_box, transform_points
from synthforge.detect import BoxCalibration, Detection, FaceDetector
from synthforge.inference import Prediction

Window = tuple[float, float, float]
"""A square crop window: centre x, centre y, side (pixels)."""


class CropPredictor(Protocol):
    """What the pipeline needs from :class:`synthforge.inference.Predictor` (stage I or II)."""

    crop_size: int
    label_space: LabelSpace

    def predict(self, images: Sequence[np.ndarray], batch_size: int = 16) -> list[Prediction]: ...


@dataclass
class FaceResult:
    """One face of an image.

    Attributes:
        box: (x0, y0, x1, y1) the face box in image pixels (detector, user, or the whole image).
        score: the detector's score (None for user boxes and ``no_detect``).
        landmarks: (K, 2) float32 (x, y) in image pixels (pixel-centre convention), or None without a landmark head.
        matrix: (2, 3) float64 affine from image pixels to the crop the final prediction was made on.
        prediction: the network's outputs in that crop's pixels.
    """

    box: tuple[float, float, float, float]
    score: float | None
    landmarks: np.ndarray | None
    matrix: np.ndarray
    prediction: Prediction


@dataclass
class ImageResult:
    """All faces of one image and their dense outputs pasted into the image frame.

    Attributes:
        height, width: image size.
        label_space: the classes of ``seg``.
        faces: per face, in input (detection) order.
        seg: (H, W) uint8 class ids, background where no face was pasted.
        depth: (H, W) float32 relative depth in metres (per face), 0 off the foreground.
        normal: (H, W, 3) float32 unit camera-frame normals (0 off the foreground), or None without that head.
        uv: (H, W, 2) float32 UV (-1 off the foreground), or None without that head.
    """

    height: int
    width: int
    label_space: LabelSpace
    faces: list[FaceResult] = field(default_factory=list)
    seg: np.ndarray | None = None
    depth: np.ndarray | None = None
    normal: np.ndarray | None = None
    uv: np.ndarray | None = None

    @property
    def foreground(self) -> np.ndarray:
        """(H, W) bool: pixels where a face's foreground was pasted."""
        return self.seg != self.label_space.background


def warp_crop(image: np.ndarray, window: Window, crop_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut the square ``window`` out of ``image`` (H, W, C) into a ``crop_size`` square.

    Returns:
        (crop (S, S, C) same dtype, matrix (2, 3) float64 image pixels -> crop pixels). Outside the image: zeros.
    """
    cx, cy, side = window
    matrix = crop_matrix(cx, cy, side, crop_size)
    k = int(side // (2 * crop_size))
    if k >= 2:  # strong downscale: warp at k x the crop size, then box-average (same affine; no aliasing)
        big = cv2.warpAffine(image, crop_matrix(cx, cy, side, k * crop_size), (k * crop_size,) * 2,
                             flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        crop = cv2.resize(big, (crop_size, crop_size), interpolation=cv2.INTER_AREA)
    else:
        crop = cv2.warpAffine(image, matrix, (crop_size, crop_size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT)
    return crop, matrix


def crop_to_image(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map (K, 2) crop pixels back to image pixels with the inverse of the (2, 3) ``matrix``; (K, 2) float32."""
    return transform_points(cv2.invertAffineTransform(matrix), points)


def _window_roi(matrix: np.ndarray, crop_size: int, height: int, width: int) -> tuple[int, int, int, int] | None:
    """Integer pixel range (x0, y0, x1, y1), end exclusive, of the image covered by the crop; None if outside."""
    s = crop_size - 0.5
    corners = crop_to_image(matrix, np.array([[-0.5, -0.5], [s, s]], dtype=np.float32))
    x0, y0 = np.floor(corners.min(0) + 0.5).astype(int)
    x1, y1 = np.ceil(corners.max(0) + 0.5).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    return (int(x0), int(y0), int(x1), int(y1)) if x1 > x0 and y1 > y0 else None


def _to_roi(crop_map: np.ndarray, matrix: np.ndarray, roi: tuple[int, int, int, int], border: int = cv2.BORDER_REPLICATE
            ) -> np.ndarray:
    """Warp an (S, S[, C]) crop-frame map into the image's ``roi`` (bilinear; outside the crop: the edge value
    repeated, so that values next to the crop's edge are not blended with a fill; pass ``BORDER_CONSTANT`` for 0)."""
    x0, y0, x1, y1 = roi
    m = matrix.copy()
    m[:, 2] += m[:, :2] @ np.array([x0, y0], dtype=np.float64)
    out = cv2.warpAffine(np.ascontiguousarray(crop_map), m, (x1 - x0, y1 - y0),
                         flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=border)
    return out.reshape((y1 - y0, x1 - x0) + crop_map.shape[2:])


def paste_faces(result: ImageResult) -> None:
    """Fill ``result.seg`` / ``depth`` / ``normal`` / ``uv`` from its faces (see the module docstring)."""
    h, w, space = result.height, result.width, result.label_space
    result.seg = np.full((h, w), space.background, dtype=np.uint8)
    result.depth = np.zeros((h, w), dtype=np.float32)
    first = result.faces[0].prediction if result.faces else None
    result.normal = np.zeros((h, w, 3), np.float32) if first is not None and first.normal is not None else None
    result.uv = np.full((h, w, 2), -1.0, np.float32) if first is not None and first.uv is not None else None
    for face in sorted(result.faces, key=lambda f: Detection(f.box).area):
        p = face.prediction
        size = p.seg.shape[0]
        roi = _window_roi(face.matrix, size, h, w)
        if roi is None:
            continue
        x0, y0, x1, y1 = roi
        probs = _to_roi(p.seg_probs.transpose(1, 2, 0), face.matrix, roi)
        inside = _to_roi(np.ones((size, size), np.float32), face.matrix, roi, cv2.BORDER_CONSTANT) > 0.5
        seg = probs.argmax(-1)
        fg = inside & (seg != space.background)
        result.seg[y0:y1, x0:x1][fg] = seg[fg].astype(np.uint8)
        result.depth[y0:y1, x0:x1][fg] = _to_roi(p.depth, face.matrix, roi)[fg]
        if result.normal is not None and p.normal is not None:
            n = _to_roi(p.normal, face.matrix, roi)[fg]
            result.normal[y0:y1, x0:x1][fg] = n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-6)
        if result.uv is not None and p.uv is not None:
            result.uv[y0:y1, x0:x1][fg] = _to_roi(p.uv, face.matrix, roi)[fg]


def checkpoint_crop_scale(path: str | Path) -> float | None:
    """``data.crop_scale`` a stage-I checkpoint was trained with (its datamodule hyper-parameters), or None.

    Read through the safe loader :func:`synthforge.checkpoints.load_checkpoint` (nothing in the file is run); used
    until :class:`~synthforge.inference.Predictor` carries the crop scale itself.
    """
    from synthforge.checkpoints import load_checkpoint

    value = (load_checkpoint(path).get("datamodule_hyper_parameters") or {}).get("crop_scale")
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


class FacePipeline:
    """Detect -> crop -> predict -> re-crop from landmarks -> predict -> paste back, on whole images.

    Args:
        predictor: a loaded :class:`~synthforge.inference.Predictor` (its ``crop_size``, ``label_space`` and point
            count define the outputs).
        crop_scale: crop side / landmark-box side the checkpoint was trained with (``data.crop_scale``).
        detector: face detector for :meth:`run` without boxes (None: boxes or ``whole_image`` must be given).
        batch_size: crops per forward pass.
        refine: how many times to re-crop from the latest landmarks (the training crop definition) and predict again
            (1: the two passes of ``synthforge predict``; 0: the detector-box crop only).
    """

    def __init__(
        self,
        predictor: CropPredictor,
        crop_scale: float,
        detector: FaceDetector | None = None,
        batch_size: int = 16,
        refine: int = 1,
    ) -> None:
        if crop_scale <= 0:
            raise ValueError(f"crop_scale must be > 0, got {crop_scale}")
        self.predictor = predictor
        self.crop_scale = float(crop_scale)
        self.detector = detector
        self.batch_size = int(batch_size)
        self.refine = int(refine)

    @property
    def label_space(self) -> LabelSpace:
        return self.predictor.label_space

    def _predict(self, image: np.ndarray, windows: list[Window]) -> list[tuple[np.ndarray, Prediction]]:
        s = self.predictor.crop_size
        crops, matrices = zip(*(warp_crop(image, win, s) for win in windows), strict=True)
        preds = self.predictor.predict(list(crops), batch_size=self.batch_size)
        return list(zip(matrices, preds, strict=True))

    def predict_windows(
        self, image: np.ndarray, detections: list[Detection], windows: list[Window]
    ) -> ImageResult:
        """First pass from explicit crop ``windows`` (one per detection), then ``refine`` passes from landmarks."""
        h, w = image.shape[:2]
        result = ImageResult(height=h, width=w, label_space=self.label_space)
        if detections:
            final = self._predict(image, windows)
            for _ in range(self.refine):
                points = [None if p.landmarks is None else crop_to_image(m, p.landmarks) for m, p in final]
                if any(p is None for p in points):
                    break
                again = []
                for pts in points:
                    cx, cy, side = landmark_box(pts)
                    again.append((cx, cy, side * self.crop_scale))
                final = self._predict(image, again)
            for det, (m, p) in zip(detections, final, strict=True):
                pts = None if p.landmarks is None else crop_to_image(m, p.landmarks)
                result.faces.append(FaceResult(det.box, det.score, pts, m, p))
        paste_faces(result)
        return result

    def run(
        self,
        image: np.ndarray,
        boxes: Sequence[Detection] | None = None,
        calibration: BoxCalibration | None = None,
        whole_image: bool = False,
    ) -> ImageResult:
        """Predict every face of an RGB uint8 (H, W, 3) ``image``.

        Args:
            image: the photo.
            boxes: face boxes to use instead of the detector (treated as landmark boxes unless ``calibration``).
            calibration: box -> landmark box for ``boxes`` (default: identity).
            whole_image: treat the image as one face crop (first-pass window: the image's centred enclosing square,
                as ``Predictor.predict`` pads a crop).
        """
        h, w = image.shape[:2]
        if whole_image:
            dets = [Detection((-0.5, -0.5, w - 0.5, h - 0.5))]
            windows = [((w - 1) / 2, (h - 1) / 2, float(max(w, h)))]
            return self.predict_windows(image, dets, windows)
        if boxes is None:
            if self.detector is None:
                raise ValueError("no detector: give boxes or whole_image=True")
            dets, cal = self.detector.detect(image), self.detector.calibration
        else:
            dets, cal = list(boxes), calibration or BoxCalibration()
        windows = []
        for det in dets:
            cx, cy, side = cal.landmark_box(det.box)
            windows.append((cx, cy, side * self.crop_scale))
        return self.predict_windows(image, dets, windows)
