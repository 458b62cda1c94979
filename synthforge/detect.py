"""Face detection behind one small interface, with detectors that work offline (their models ship in their wheels).

A detector takes an RGB uint8 image (H, W, 3) and returns :class:`Detection` boxes. Boxes use the project's
pixel-centre convention: integer coordinates are pixel centres, so a box covering pixel columns ``l .. r`` (inclusive)
spans ``x0 = l - 0.5`` to ``x1 = r + 0.5``.

Each detector also carries a :class:`BoxCalibration`: how its boxes relate to the square that bounds the 68
landmarks (:func:`synthforge.data.transforms.landmark_box`), which is what the training crops are made from. The
first prediction pass crops from ``calibration.landmark_box(box)`` so that the crop matches a training crop as well
as a box allows; the second pass re-crops from the predicted landmarks.

Add a detector by writing a class with ``name``, ``calibration`` and ``detect`` and registering a factory in
:data:`DETECTORS` (``make_detector(name, min_face=...)``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from next3d_gen.errors import UserError


@dataclass(frozen=True)
class Detection:
    """One face: ``box`` (x0, y0, x1, y1) float pixels (pixel-centre convention, edges at half-integers for a box
    of whole pixels) and the detector's ``score`` (None when the box comes from the user)."""

    box: tuple[float, float, float, float]
    score: float | None = None

    @property
    def area(self) -> float:
        return max(self.box[2] - self.box[0], 0.0) * max(self.box[3] - self.box[1], 0.0)


@dataclass(frozen=True)
class BoxCalibration:
    """Maps a detector box to the landmark box: centre ``(cx + dx * w, cy + dy * h)`` and side ``scale * sqrt(w h)``,
    where (cx, cy, w, h) are the box's centre and size. The identity (0, 0, 1) treats the box as the landmark box."""

    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0

    def landmark_box(self, box: tuple[float, float, float, float]) -> tuple[float, float, float]:
        """(cx, cy, side) of the estimated landmark box, pixels (same meaning as ``landmark_box``)."""
        x0, y0, x1, y1 = box
        w, h = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
        return (x0 + x1) / 2 + self.dx * w, (y0 + y1) / 2 + self.dy * h, self.scale * float(np.sqrt(w * h))


class FaceDetector(Protocol):
    """What the prediction pipeline needs from a face detector."""

    name: str
    calibration: BoxCalibration

    def detect(self, image: np.ndarray) -> list[Detection]:
        """All faces of an RGB uint8 (H, W, 3) image, any order."""
        ...


DLIB_WINDOW = 80
"""Side in pixels of the smallest face dlib's HOG frontal detector finds (its 80 x 80 sliding window)."""

DLIB_CALIBRATION = BoxCalibration(dx=-0.015, dy=0.087, scale=1.02)
"""dlib HOG box -> landmark box, measured on the AFW dev set (``benchmarks/bench_predict.py --calibrate``): median
centre offset and side ratio over the 314 of 337 faces dlib finds at ``min_face=40`` (matched to the annotation
by centre distance). The landmark box sits lower than dlib's box (the jaw line is below it); 10-90 % range of the side
ratio: 0.89-1.07."""


class DlibHogDetector:
    """dlib's HOG + linear SVM frontal face detector (the model is compiled into the ``dlib-bin`` wheel).

    Args:
        min_face: smallest face side to find, pixels. The image is resized by ``DLIB_WINDOW / min_face`` before
            detection (upsampled for small faces, downsampled, and faster, when only large faces matter).
        threshold: SVM score threshold (dlib's default 0; lower finds more faces and more false ones: on the AFW
            dev set at ``min_face=40``, 0 finds 93.2 % of the 337 faces, -0.3 finds 97.6 %).
    """

    name = "dlib_hog"
    calibration = DLIB_CALIBRATION

    def __init__(self, min_face: float = DLIB_WINDOW, threshold: float = 0.0) -> None:
        try:
            import dlib
        except ImportError:  # pragma: no cover - dlib-bin is a dependency
            raise UserError("the dlib_hog detector needs dlib (pip install dlib-bin)") from None
        if min_face <= 0:
            raise UserError(f"--min-face must be > 0, got {min_face}")
        self._detector = dlib.get_frontal_face_detector()
        self.factor = DLIB_WINDOW / float(min_face)
        self.threshold = float(threshold)

    def detect(self, image: np.ndarray) -> list[Detection]:
        h, w = image.shape[:2]
        f = self.factor
        if abs(f - 1.0) > 1e-6:
            size = (max(1, round(w * f)), max(1, round(h * f)))
            small = cv2.resize(image, size, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
            fx, fy = size[0] / w, size[1] / h
        else:
            small, fx, fy = np.ascontiguousarray(image), 1.0, 1.0
        rects, scores, _ = self._detector.run(small, 0, self.threshold)
        out = []
        for r, s in zip(rects, scores, strict=True):
            # dlib rectangles hold inclusive pixel indices; edges are half a pixel outside them
            x0, y0, x1, y1 = r.left() - 0.5, r.top() - 0.5, r.right() + 0.5, r.bottom() + 0.5
            box = ((x0 + 0.5) / fx - 0.5, (y0 + 0.5) / fy - 0.5, (x1 + 0.5) / fx - 0.5, (y1 + 0.5) / fy - 0.5)
            out.append(Detection(tuple(float(v) for v in box), float(s)))
        return out


DETECTORS: dict[str, Callable[..., FaceDetector]] = {"dlib_hog": DlibHogDetector}
"""Detector name -> factory taking ``min_face`` (pixels) and ``threshold`` (score cut, the detector's own scale)."""


def make_detector(name: str, min_face: float = DLIB_WINDOW, threshold: float = 0.0) -> FaceDetector:
    """Build the detector registered as ``name`` (UserError naming ``--detector`` when unknown)."""
    if name not in DETECTORS:
        raise UserError(f"--detector: unknown detector {name!r} (choose from {', '.join(DETECTORS)})")
    return DETECTORS[name](min_face=min_face, threshold=threshold)
