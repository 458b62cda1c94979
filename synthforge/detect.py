"""Face detection behind one small interface, with detectors that work offline (their models ship in their wheels).

A detector takes an RGB uint8 image (H, W, 3) and returns :class:`Detection` boxes. Boxes use the project's
pixel-centre convention: integer coordinates are pixel centres, so a box covering pixel columns ``l .. r`` (inclusive)
spans ``x0 = l - 0.5`` to ``x1 = r + 0.5``.

Each detector also carries a :class:`BoxCalibration`: how its boxes relate to the square that bounds the 68
landmarks (:func:`synthforge.data.transforms.landmark_box`), which is what the training crops are made from, per
``view`` when the detector tells which of its sub-models found the face (dlib: front, left, right, ...). The first
prediction pass crops from ``calibration.landmark_box(box, view)`` so that the crop matches a training crop as well
as a box allows; the second pass re-crops from the predicted landmarks.

Add a detector by writing a class with ``name``, ``calibration`` and ``detect`` and registering a factory in
:data:`DETECTORS` (``make_detector(name, min_face=...)``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import cv2
import numpy as np

from next3d_gen.errors import UserError


@dataclass(frozen=True)
class Detection:
    """One face: ``box`` (x0, y0, x1, y1) float pixels (pixel-centre convention, edges at half-integers for a box
    of whole pixels), the detector's ``score`` (None when the box comes from the user) and ``view``: which of the
    detector's sub-models found it (:data:`DLIB_VIEWS` for dlib; None when unknown), which selects the calibration."""

    box: tuple[float, float, float, float]
    score: float | None = None
    view: str | None = None

    @property
    def area(self) -> float:
        return max(self.box[2] - self.box[0], 0.0) * max(self.box[3] - self.box[1], 0.0)


@dataclass(frozen=True)
class BoxCalibration:
    """Maps a detector box to the landmark box: centre ``(cx + dx * w, cy + dy * h)`` and side ``scale * sqrt(w h)``,
    where (cx, cy, w, h) are the box's centre and size. The identity (0, 0, 1) treats the box as the landmark box.

    ``views`` holds other (dx, dy, scale) for boxes of named detector views (:attr:`Detection.view`), as
    ``((name, BoxCalibration), ...)``; a box of any other view, or without one, uses the top-level values.
    """

    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0
    views: tuple[tuple[str, BoxCalibration], ...] = ()

    def for_view(self, view: str | None) -> BoxCalibration:
        """The calibration of boxes of ``view`` (without ``views`` of its own)."""
        own = dict(self.views).get(view) if view is not None else None
        return replace(own or self, views=())

    def mirrored(self) -> BoxCalibration:
        """The calibration of the horizontally mirrored detector (``dx`` negated; views not kept)."""
        return BoxCalibration(-self.dx, self.dy, self.scale)

    def landmark_box(
        self, box: tuple[float, float, float, float], view: str | None = None
    ) -> tuple[float, float, float]:
        """(cx, cy, side) of the estimated landmark box of a ``box`` found by ``view``, pixels (same meaning as
        ``landmark_box``)."""
        c = self.for_view(view)
        x0, y0, x1, y1 = box
        w, h = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
        return (x0 + x1) / 2 + c.dx * w, (y0 + y1) / 2 + c.dy * h, c.scale * float(np.sqrt(w * h))


class FaceDetector(Protocol):
    """What the prediction pipeline needs from a face detector."""

    name: str
    calibration: BoxCalibration

    def detect(self, image: np.ndarray) -> list[Detection]:
        """All faces of an RGB uint8 (H, W, 3) image, any order."""
        ...


DLIB_WINDOW = 80
"""Side in pixels of the smallest face dlib's HOG frontal detector finds (its 80 x 80 sliding window)."""

DLIB_VIEWS = ("front", "left", "right", "front_rotated_left", "front_rotated_right")
"""dlib's frontal face detector is five HOG filters: front looking, left looking, right looking, front looking but
rotated left, front looking but rotated right; its ``run`` tells which one fired by this index. "left" finds faces
turned towards the image's left (the face's landmarks then lie right of the box's centre)."""

DLIB_THRESHOLD = -0.3
"""Default SVM score threshold of :class:`DlibHogDetector`. On the AFW dev set at ``min_face=40`` dlib's own default
(0) finds 93.2 % of the 337 faces, -0.3 finds 97.6 % (-0.5: 98.8 %); the faces found between -0.3 and 0 are real
(partly cut faces at the photos' edges), and on 59 face-free pictures (screenshots, plots) -0.3 adds no box to the
one that 0 finds, -0.5 adds 4."""

_DLIB_SIDE = BoxCalibration(dx=0.125, dy=0.128, scale=0.975)  # the "left" view; "right" is its mirror image
DLIB_CALIBRATION = BoxCalibration(
    dx=-0.004, dy=0.065, scale=1.022, views=(("left", _DLIB_SIDE), ("right", _DLIB_SIDE.mirrored()))
)
"""dlib HOG box -> landmark box per view, measured on the AFW dev set (``benchmarks/bench_predict.py --only
calibrate``): medians of the centre offsets and of the side ratio of the faces dlib finds at ``min_face=40``,
threshold -0.3 (matched to the annotation by centre distance), each photo detected at 4 scales a quarter of dlib's
pyramid step apart (dlib's boxes come in sizes 1.2x apart, and the AFW faces are all about 200 pixels: at one scale
the ratio's median lands on one of two modes). Front views (front and the two rotated ones, 715 boxes) and the side
views (left and mirrored right, 592 boxes) are fitted apart: the side views' boxes sit 12 % of their width off the
landmark box's centre, towards the back of the head; the landmark box sits lower than every view's box (the jaw line
is below it). One calibration for all views (before) left the detected-box NME 16 % above the annotation-box NME;
this one 9 % (README, Benchmarks)."""


class DlibHogDetector:
    """dlib's HOG + linear SVM frontal face detector (the model is compiled into the ``dlib-bin`` wheel).

    Args:
        min_face: smallest face side to find, pixels. The image is resized by ``DLIB_WINDOW / min_face`` before
            detection (upsampled for small faces, downsampled, and faster, when only large faces matter).
        threshold: SVM score threshold (default :data:`DLIB_THRESHOLD`; dlib's own default is 0; lower finds more
            faces and more false ones).
    """

    name = "dlib_hog"
    calibration = DLIB_CALIBRATION

    def __init__(self, min_face: float = DLIB_WINDOW, threshold: float = DLIB_THRESHOLD) -> None:
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
        rects, scores, views = self._detector.run(small, 0, self.threshold)
        out = []
        for r, s, v in zip(rects, scores, views, strict=True):
            # dlib rectangles hold inclusive pixel indices; edges are half a pixel outside them
            x0, y0, x1, y1 = r.left() - 0.5, r.top() - 0.5, r.right() + 0.5, r.bottom() + 0.5
            box = ((x0 + 0.5) / fx - 0.5, (y0 + 0.5) / fy - 0.5, (x1 + 0.5) / fx - 0.5, (y1 + 0.5) / fy - 0.5)
            out.append(Detection(tuple(float(c) for c in box), float(s), DLIB_VIEWS[int(v)]))
        return out


DETECTORS: dict[str, Callable[..., FaceDetector]] = {"dlib_hog": DlibHogDetector}
"""Detector name -> factory taking ``min_face`` (pixels) and optionally ``threshold`` (score cut, the detector's own
scale; without it the detector's default)."""


def make_detector(name: str, min_face: float = DLIB_WINDOW, threshold: float | None = None) -> FaceDetector:
    """Build the detector registered as ``name`` (UserError naming ``--detector`` when unknown); ``threshold`` None
    keeps the detector's default."""
    if name not in DETECTORS:
        raise UserError(f"--detector: unknown detector {name!r} (choose from {', '.join(DETECTORS)})")
    if threshold is None:
        return DETECTORS[name](min_face=min_face)
    return DETECTORS[name](min_face=min_face, threshold=threshold)
