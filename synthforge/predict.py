"""Face prediction on whole photos: find faces, crop them as the training crops are made, predict twice, paste back.

Works with stage-I and fine-tuned (stage-II) predictors alike; the crop follows the predictor's own
:class:`~synthforge.inference.CropDefinition` (from its checkpoint). Per image (RGB uint8, H x W x 3):

1. Faces: a :class:`~synthforge.detect.FaceDetector`, user boxes, or the whole image as one face.
2. First pass: each face box is turned into an estimated landmark box (the detector's
   :class:`~synthforge.detect.BoxCalibration`, per detector view: dlib's side views place their box off the face's
   centre), and the crop window is that box measured as the crop definition
   measures its box (side times the crop scale, centred on it); the window is warped to the network's ``crop_size``
   square (:func:`~synthforge.crops.crop_matrix`, bilinear, zero border; a window more than twice the crop
   side is first warped at an integer multiple of the crop size and area-averaged down, which keeps the same affine
   matrix and avoids aliasing).
3. Second pass: the training crop is made again from the first pass's own predictions, mapped back to the image with
   the inverse affine, and the network runs again on it. Which prediction defines the box is the checkpoint's:

   * ``landmarks`` (stage I: ``landmark_box`` x ``data.crop_scale``; 300W: the 68 points' box x 1.4 with the extreme
     pixels counted, as ``label_finetune``'s ``square_crop_affine``; a LaPa head trained on landmarks: all 106
     points): the predicted landmarks' box;
   * ``label`` (LaPa: the box of the labelled pixels, hair included, x 1.2): the box of the predicted foreground
     (argmax != background) in the first crop. The first window, from the detector's landmark box, may cut the hair
     off; then the box grows with each pass (``refine`` > 1);
   * ``image`` (CelebAMask-HQ: the training crops are the whole aligned images): no re-crop; give aligned face images
     as whole-image crops (``whole_image=True``, ``synthforge predict --no-detect``).

   A face whose box cannot be made (no landmark or parsing head for it, an empty foreground) keeps its first pass.

   With a flip-testing predictor (``Predictor(..., flip=True)``, ``synthforge predict --flip``) every crop is also
   predicted mirrored and the two are averaged inside the predictor (:mod:`synthforge.inference`): landmarks, class
   probabilities, depth and normals; twice the network time.
4. Paste back: per face, class probabilities (bilinear) and depth / normals / UV (bilinear) are warped from the crop
   into the image frame over the face's window only; each face writes its foreground pixels (argmax != background).
   Faces are pasted in order of increasing box area, so where two faces overlap the larger (usually nearer) one wins.
   Without a parsing head (300W) nothing is pasted (``seg`` / ``depth`` are None); landmarks are still given.

Coordinates use the pixel-centre convention everywhere (integer values are pixel centres; an image spans
[-0.5, W - 0.5]). Depth is the network's relative depth in metres per face (camera z minus that face's median, as
trained), meaningful on the foreground only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import cv2
import numpy as np

from next3d_gen.labels import LabelSpace
from synthforge.crops import crop_matrix, invert_affine, mask_box_points, transform_points, warp_image
from synthforge.detect import BoxCalibration, Detection, FaceDetector
from synthforge.inference import CropDefinition, Prediction

Window = tuple[float, float, float]
"""A square crop window: centre x, centre y, side (pixels)."""


class CropPredictor(Protocol):
    """What the pipeline needs from :class:`synthforge.inference.Predictor` (stage I or II). A ``crop`` attribute
    (:class:`~synthforge.inference.CropDefinition`) is used when present; without it crops are landmark boxes as in
    stage I."""

    crop_size: int
    label_space: LabelSpace | None

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
        label_space: the classes of ``seg`` (None when the predictor has no parsing head).
        faces: per face, in input (detection) order.
        seg: (H, W) uint8 class ids, background where no face was pasted; None without a parsing head.
        depth: (H, W) float32 relative depth in metres (per face), 0 off the foreground; None without a depth or a
            parsing head (depth is pasted on the parsed foreground).
        normal: (H, W, 3) float32 unit camera-frame normals (0 off the foreground), or None without that head.
        uv: (H, W, 2) float32 UV (-1 off the foreground), or None without that head.
    """

    height: int
    width: int
    label_space: LabelSpace | None
    faces: list[FaceResult] = field(default_factory=list)
    seg: np.ndarray | None = None
    depth: np.ndarray | None = None
    normal: np.ndarray | None = None
    uv: np.ndarray | None = None

    @property
    def foreground(self) -> np.ndarray:
        """(H, W) bool: pixels where a face's foreground was pasted (none without a parsing head)."""
        if self.seg is None or self.label_space is None:
            return np.zeros((self.height, self.width), dtype=bool)
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
        big = warp_image(image, crop_matrix(cx, cy, side, k * crop_size), k * crop_size)
        crop = cv2.resize(big, (crop_size, crop_size), interpolation=cv2.INTER_AREA)
    else:
        crop = warp_image(image, matrix, crop_size)
    return crop, matrix


def crop_to_image(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map (K, 2) crop pixels back to image pixels with the inverse of the (2, 3) ``matrix``; (K, 2) float32."""
    return transform_points(invert_affine(matrix), points)


def _window_roi(matrix: np.ndarray, crop_size: int, height: int, width: int) -> tuple[int, int, int, int] | None:
    """Integer pixel range (x0, y0, x1, y1), end exclusive, of the image covered by the crop; None if outside."""
    s = crop_size - 0.5
    corners = crop_to_image(matrix, np.array([[-0.5, -0.5], [s, s]], dtype=np.float32))
    x0, y0 = np.floor(corners.min(0) + 0.5).astype(int)
    x1, y1 = np.ceil(corners.max(0) + 0.5).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    return (int(x0), int(y0), int(x1), int(y1)) if x1 > x0 and y1 > y0 else None


def _to_roi(
    crop_map: np.ndarray, matrix: np.ndarray, roi: tuple[int, int, int, int], border: int = cv2.BORDER_REPLICATE
) -> np.ndarray:
    """Warp an (S, S[, C]) crop-frame map into the image's ``roi`` (bilinear; outside the crop: the edge value
    repeated, so that values next to the crop's edge are not blended with a fill; pass ``BORDER_CONSTANT`` for 0)."""
    x0, y0, x1, y1 = roi
    m = matrix.copy()
    m[:, 2] += m[:, :2] @ np.array([x0, y0], dtype=np.float64)
    out = cv2.warpAffine(
        np.ascontiguousarray(crop_map),
        m,
        (x1 - x0, y1 - y0),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=border,
    )
    return out.reshape((y1 - y0, x1 - x0) + crop_map.shape[2:])


def paste_faces(result: ImageResult) -> None:
    """Fill ``result.seg`` / ``depth`` / ``normal`` / ``uv`` from its faces (see the module docstring)."""
    h, w, space = result.height, result.width, result.label_space
    first = result.faces[0].prediction if result.faces else None
    if space is None or (first is not None and first.seg_probs is None):  # no parsing head: nothing to paste
        result.seg = result.depth = result.normal = result.uv = None
        return
    result.seg = np.full((h, w), space.background, dtype=np.uint8)
    result.depth = np.zeros((h, w), dtype=np.float32) if first is None or first.depth is not None else None
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
        if result.depth is not None and p.depth is not None:
            result.depth[y0:y1, x0:x1][fg] = _to_roi(p.depth, face.matrix, roi)[fg]
        if result.normal is not None and p.normal is not None:
            n = _to_roi(p.normal, face.matrix, roi)[fg]
            result.normal[y0:y1, x0:x1][fg] = n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-6)
        if result.uv is not None and p.uv is not None:
            result.uv[y0:y1, x0:x1][fg] = _to_roi(p.uv, face.matrix, roi)[fg]


class FacePipeline:
    """Detect -> crop -> predict -> re-crop as in training -> predict -> paste back, on whole images.

    Args:
        predictor: a loaded :class:`~synthforge.inference.Predictor` (its ``crop_size``, ``label_space``, point
            count and crop definition ``crop`` define the outputs and the crops).
        crop_scale: crop side / crop-box side (default: the predictor's ``crop_scale``, i.e. its checkpoint's
            ``data.crop_scale`` for stage I, ``data.crop.scale`` for fine-tuned ones); given, it replaces the scale of
            the predictor's crop definition.
        detector: face detector for :meth:`run` without boxes (None: boxes or ``whole_image`` must be given).
        batch_size: crops per forward pass.
        refine: how many times to re-crop from the latest predictions (the training crop definition) and predict
            again (1: the two passes of ``synthforge predict``; 0: the detector-box crop only). More is not better
            for every network: on the AFW dev set a 2,000-step demo network's predicted landmark box sits a little
            low and large, each re-crop compounds it, and every pass after the first raised the landmark NME by about
            0.5 (from annotation and detector boxes alike).

    Raises:
        ValueError: no crop scale (neither given nor known to the predictor), or not > 0.
    """

    def __init__(
        self,
        predictor: CropPredictor,
        crop_scale: float | None = None,
        detector: FaceDetector | None = None,
        batch_size: int = 16,
        refine: int = 1,
    ) -> None:
        base: CropDefinition | None = getattr(predictor, "crop", None)
        if crop_scale is None:
            crop_scale = getattr(predictor, "crop_scale", None)
        if crop_scale is not None and not crop_scale > 0:
            raise ValueError(f"crop_scale must be > 0, got {crop_scale}")
        if crop_scale is None and (base is None or base.box != "image"):
            raise ValueError("no crop scale: the predictor's checkpoint does not record one; pass crop_scale")
        self.predictor = predictor
        # None only for whole-image crop definitions: then run() needs whole_image=True
        self.crop_scale = None if crop_scale is None else float(crop_scale)
        if base is None:
            self.crop = CropDefinition("landmarks", float(crop_scale))
        else:
            self.crop = base if crop_scale is None else dataclasses.replace(base, scale=float(crop_scale))
        self.detector = detector
        self.batch_size = int(batch_size)
        self.refine = int(refine)

    @property
    def label_space(self) -> LabelSpace | None:
        return self.predictor.label_space

    @property
    def flip(self) -> bool:
        """Whether the predictor averages each crop with its mirror image (flip test)."""
        return bool(getattr(self.predictor, "flip", False))

    def _predict(self, image: np.ndarray, windows: list[Window]) -> list[tuple[np.ndarray, Prediction]]:
        s = self.predictor.crop_size
        crops, matrices = zip(*(warp_crop(image, win, s) for win in windows), strict=True)
        preds = self.predictor.predict(list(crops), batch_size=self.batch_size)
        return list(zip(matrices, preds, strict=True))

    def training_window(self, matrix: np.ndarray, prediction: Prediction) -> Window | None:
        """The training crop window (image pixels) of a face from its prediction in the crop ``matrix`` maps the
        image to, per the crop definition's box (module docstring, step 3); None when it cannot be made."""
        box = self.crop.box
        if box == "landmarks" and prediction.landmarks is not None:
            return self.crop.window_of_points(crop_to_image(matrix, prediction.landmarks))
        if box == "label" and prediction.seg is not None and self.label_space is not None:
            fg = prediction.seg != self.label_space.background
            if fg.any():  # the crop is axis-aligned: the box's two corners map to the image box's corners
                return self.crop.window_of_points(crop_to_image(matrix, mask_box_points(fg)))
        return None

    def predict_windows(self, image: np.ndarray, detections: list[Detection], windows: list[Window]) -> ImageResult:
        """First pass from explicit crop ``windows`` (one per detection), then ``refine`` passes from predictions."""
        h, w = image.shape[:2]
        result = ImageResult(height=h, width=w, label_space=self.label_space)
        if detections:
            final = self._predict(image, windows)
            for _ in range(self.refine):
                again = [self.training_window(m, p) for m, p in final]
                todo = [i for i, win in enumerate(again) if win is not None]
                if not todo:
                    break
                for i, r in zip(todo, self._predict(image, [again[i] for i in todo]), strict=True):
                    final[i] = r
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
            calibration: box -> landmark box for ``boxes`` (default: identity), per ``Detection.view`` when it
                has views.
            whole_image: treat the image as one face crop (first-pass window: the image's centred enclosing square,
                as ``Predictor.predict`` pads a crop; the crop definition ``image`` is this window).
        """
        h, w = image.shape[:2]
        if whole_image:
            dets = [Detection((-0.5, -0.5, w - 0.5, h - 0.5))]
            windows = [((w - 1) / 2, (h - 1) / 2, float(max(w, h)))]
            return self.predict_windows(image, dets, windows)
        if self.crop_scale is None:
            raise ValueError(
                "the checkpoint was trained on whole aligned face images (crop box 'image'): use "
                "whole_image=True on such images, or give FacePipeline a crop_scale for face boxes"
            )
        if boxes is None:
            if self.detector is None:
                raise ValueError("no detector: give boxes or whole_image=True")
            dets, cal = self.detector.detect(image), self.detector.calibration
        else:
            dets, cal = list(boxes), calibration or BoxCalibration()
        windows = [self.crop.window(*cal.landmark_box(det.box, det.view)) for det in dets]
        return self.predict_windows(image, dets, windows)
