"""Per-face labels (20-class SYNTH space) for a real FLAME mesh, from ``FLAME_masks.pkl`` and the static landmarks.

FLAME's masks are overlapping vertex sets (14 regions: ``eye_region, neck, left_eyeball, right_eyeball, right_ear,
right_eye_region, forehead, lips, nose, scalp, boundary, face, left_ear, left_eye_region``). They have no eyebrow,
glabella, brow-band, upper/lower-lip, inner-mouth or neck-back region, so those come from the 51 static landmarks
(iBUG points 17-67) placed on the template. All geometry is the template's, FLAME frame (metres, y up, z towards the
face front, x towards the subject's left); "frontal projection" means the (x, y) coordinates; ``d`` is the distance
between the outer eye corners (iBUG 36 and 45), the unit of every band below.

Rules, applied in this order:

1. Vertex class: the highest-precedence region that contains the vertex, with precedence
   eyeballs > ears > nose > lips > eye regions > forehead > face > scalp > neck. ``eye_region`` vertices that are in
   neither ``left_eye_region`` nor ``right_eye_region`` go to the side of their x sign (x > 0: subject's left).
   ``boundary`` (the rim of the neck cut) is ignored; names not listed above are ignored.
   Mapping: eyeballs -> left/right_eyeball, ears -> left/right_ear, nose -> nose, lips -> upper_lip (split in 5),
   eye regions -> left/right_eye_region, forehead -> forehead, face -> face, scalp -> scalp, neck -> neck (split in 7).
2. Face class: majority vote of its three vertices' classes (vertices in no region abstain); ties go to the class
   with the higher precedence.
3. Faces whose vertices are in no region take the most common label of the faces sharing a vertex with them,
   repeated until every face is labelled (a component with no labelled face at all becomes scalp).
4. Brows, on "skin" faces only (face, forehead, eye regions, scalp) that face forwards (normal z > 0) and lie in front
   of the brow landmarks' mean z minus 0.5 d. Let y_b(x) be the brow polyline (17-21 subject's right, 22-26
   subject's left) interpolated at the face centroid's x, for x between the brow's inner end and 0.04 d beyond its
   outer end:
   - eyebrow (right/left_eyebrow): y_b(x) - 0.10 d <= y <= y_b(x) + 0.03 d;
   - brow_band: y_b(x) + 0.03 d < y <= y_b(x) + 0.15 d;
   - glabella: x strictly between the inner brow ends (21, 22), y between the nasal-bridge top (27) and
     0.15 d above the higher inner brow end.
5. Lips: a lips face is upper_lip when its centroid is above the mouth line, lower_lip otherwise; the mouth line is
   y_m(x) = mean of the upper inner-lip polyline (60-64) and the lower one (64-67, 60) at the centroid's x (constant
   beyond the corners); z_m(x), the depth of the lip contact line, is interpolated the same way. inner_mouth: a lips,
   face or nose face whose centroid lies inside the inner-lip polygon (60-67, frontal projection) and behind z_m(x),
   or a lips face between the mouth corners (60, 64), behind z_m(x), whose unit normal does not face forwards
   (n_z < 0.2) and faces the mouth slit (n_y towards y_m, or n_z < -0.5): the inner surface of the lips.
6. Neck: a neck face is neck (front) when its centroid z >= the mean z of the ``neck`` mask vertices, else neck_back.

Every face ends with a non-background label.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from next3d_gen.labels import SYNTH

# Precedence order (first = highest) of the mask-derived base classes: (mask region names, label) pairs.
_PRECEDENCE: tuple[tuple[tuple[str, ...], str], ...] = (
    (("right_eyeball",), "right_eyeball"),
    (("left_eyeball",), "left_eyeball"),
    (("right_ear",), "right_ear"),
    (("left_ear",), "left_ear"),
    (("nose",), "nose"),
    (("lips",), "upper_lip"),
    (("right_eye_region",), "right_eye_region"),
    (("left_eye_region",), "left_eye_region"),
    (("forehead",), "forehead"),
    (("face",), "face"),
    (("scalp",), "scalp"),
    (("neck",), "neck"),
)
MASK_REGIONS: tuple[str, ...] = (
    "eye_region",
    "neck",
    "left_eyeball",
    "right_eyeball",
    "right_ear",
    "right_eye_region",
    "forehead",
    "lips",
    "nose",
    "scalp",
    "boundary",
    "face",
    "left_ear",
    "left_eye_region",
)
"""The 14 region names of FLAME_masks.pkl."""

_SKIN = tuple(SYNTH.id(n) for n in ("face", "forehead", "right_eye_region", "left_eye_region", "scalp"))


def _lmk(static_landmarks: np.ndarray, ibug: int) -> np.ndarray:
    """Position of iBUG point ``ibug`` (17..67) from the (51, 3) static landmarks."""
    return static_landmarks[ibug - 17]


def _curve(points: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Piecewise-linear y(x) through ``points`` (N, >=2) sorted by x; constant beyond the ends."""
    order = np.argsort(points[:, 0])
    return np.interp(x, points[order, 0], points[order, 1])


def _inside_polygon(px: np.ndarray, py: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test; poly (N, 2)."""
    inside = np.zeros(px.shape, dtype=bool)
    n = len(poly)
    for i in range(n):
        (x0, y0), (x1, y1) = poly[i], poly[(i + 1) % n]
        crosses = (y0 > py) != (y1 > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            xc = x0 + (py - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (px < xc)
    return inside


def _vertex_classes(masks: Mapping[str, np.ndarray], vertices: np.ndarray) -> np.ndarray:
    """(V,) precedence rank per vertex (index into _PRECEDENCE), len(_PRECEDENCE) = no region."""
    V = len(vertices)
    none = len(_PRECEDENCE)
    rank = np.full(V, none, dtype=np.int64)
    sets: dict[str, np.ndarray] = {}
    for name, idx in masks.items():
        idx = np.asarray(idx).reshape(-1).astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= V):
            raise ValueError(f"mask region '{name}' has vertex index out of range [0, {V})")
        sets[name] = idx
    if not any(n in sets for n in MASK_REGIONS if n != "boundary"):
        raise ValueError(f"no known FLAME mask region (expected some of {', '.join(MASK_REGIONS)})")
    generic_eye = np.zeros(V, dtype=bool)
    if "eye_region" in sets:
        generic_eye[sets["eye_region"]] = True
        for side in ("left_eye_region", "right_eye_region"):
            if side in sets:
                generic_eye[sets[side]] = False
    # Assign from lowest to highest precedence so that higher ones overwrite.
    for r in range(len(_PRECEDENCE) - 1, -1, -1):
        names, label = _PRECEDENCE[r]
        for name in names:
            if name in sets:
                rank[sets[name]] = r
        if label in ("right_eye_region", "left_eye_region"):
            side = generic_eye & ((vertices[:, 0] > 0) == (label == "left_eye_region"))
            rank[side] = r
    return rank


def _fill_unlabelled(labels: np.ndarray, faces: np.ndarray, num_vertices: int) -> np.ndarray:
    """Give label-0 faces the most common label among faces sharing a vertex, until stable; rest -> scalp."""
    C = SYNTH.num_classes
    labels = labels.copy()
    while True:
        todo = labels == 0
        if not todo.any():
            return labels
        counts = np.zeros((num_vertices, C), dtype=np.int64)
        done = ~todo
        for k in range(3):
            np.add.at(counts, (faces[done, k], labels[done]), 1)
        face_counts = counts[faces[todo]].sum(axis=1)  # (T, C)
        face_counts[:, 0] = 0
        best = face_counts.argmax(axis=1)
        has = face_counts.max(axis=1) > 0
        if not has.any():
            labels[todo] = SYNTH.id("scalp")
            return labels
        idx = np.flatnonzero(todo)[has]
        labels[idx] = best[has]


def face_labels_from_masks(
    vertices: np.ndarray, faces: np.ndarray, masks: Mapping[str, np.ndarray], static_landmarks: np.ndarray
) -> np.ndarray:
    """Per-face SYNTH labels for a FLAME-topology mesh (rules in the module docstring).

    Args:
        vertices: (V, 3) float template vertices, metres, FLAME frame.
        faces: (F, 3) int triangles (outward normals, counter-clockwise seen from outside).
        masks: region name -> int vertex indices, as in FLAME_masks.pkl (regions may overlap).
        static_landmarks: (51, 3) float template positions of iBUG points 17-67.

    Returns:
        (F,) uint8 class ids of next3d_gen.labels.SYNTH, all in 1..19.

    Raises:
        ValueError: no known region, or a vertex index out of range (the message names the region).
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    lm = np.asarray(static_landmarks, dtype=np.float64)
    if lm.shape != (51, 3):
        raise ValueError(f"static_landmarks must be (51, 3), got {lm.shape}")
    V = len(vertices)
    none = len(_PRECEDENCE)

    # 1-2. vertex classes -> face majority with precedence tie-break.
    rank = _vertex_classes(masks, vertices)
    fr = rank[faces]  # (F, 3)
    counts = np.stack([(fr == r).sum(axis=1) for r in range(none)], axis=1)  # (F, R)
    score = counts * (none + 1) - np.arange(none)[None]  # more votes first, then higher precedence
    best = score.argmax(axis=1)
    rank_to_id = np.array([SYNTH.id(label) for _, label in _PRECEDENCE], dtype=np.int64)
    labels = np.where(counts.max(axis=1) > 0, rank_to_id[best], 0)

    # 3. fill faces with no region.
    labels = _fill_unlabelled(labels, faces, V)

    tri = vertices[faces]  # (F, 3, 3)
    cen = tri.mean(axis=1)
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    cx, cy, cz = cen[:, 0], cen[:, 1], cen[:, 2]
    d = float(np.linalg.norm(_lmk(lm, 36) - _lmk(lm, 45)))
    if not d > 0:
        raise ValueError("static landmarks 36 and 45 (outer eye corners) coincide")

    # 4. brows, brow band, glabella.
    brow_pts = np.stack([_lmk(lm, i) for i in range(17, 27)])
    front = (normal[:, 2] > 0) & (cz > brow_pts[:, 2].mean() - 0.5 * d)
    skin = np.isin(labels, _SKIN) & front
    margin = 0.04 * d
    for ids, name in ((range(17, 22), "right_eyebrow"), (range(22, 27), "left_eyebrow")):
        pts = np.stack([_lmk(lm, i) for i in ids])
        inner = _lmk(lm, 21 if name == "right_eyebrow" else 22)[0]
        outer = _lmk(lm, 17 if name == "right_eyebrow" else 26)[0]
        lo, hi = (outer - margin, inner) if outer < inner else (inner, outer + margin)
        in_x = (cx >= lo) & (cx <= hi)
        dy = cy - _curve(pts[:, :2], cx)
        brow = skin & in_x & (dy >= -0.10 * d) & (dy <= 0.03 * d)
        band = skin & in_x & (dy > 0.03 * d) & (dy <= 0.15 * d)
        labels[brow] = SYNTH.id(name)
        labels[band] = SYNTH.id("brow_band")
    x21, x22 = sorted((_lmk(lm, 21)[0], _lmk(lm, 22)[0]))
    top = max(_lmk(lm, 21)[1], _lmk(lm, 22)[1]) + 0.15 * d
    skin = np.isin(labels, _SKIN) & front
    glabella = skin & (cx > x21) & (cx < x22) & (cy >= _lmk(lm, 27)[1]) & (cy <= top)
    labels[glabella] = SYNTH.id("glabella")

    # 5. lips: upper / lower by the mouth line, inner mouth.
    upper = np.stack([_lmk(lm, i) for i in (60, 61, 62, 63, 64)])
    lower = np.stack([_lmk(lm, i) for i in (64, 65, 66, 67, 60)])
    inner_poly = np.stack([_lmk(lm, i) for i in range(60, 68)])
    lips = labels == SYNTH.id("upper_lip")
    y_mouth = 0.5 * (_curve(upper[:, :2], cx) + _curve(lower[:, :2], cx))
    labels[lips & (cy < y_mouth)] = SYNTH.id("lower_lip")
    z_line = 0.5 * (_curve(upper[:, [0, 2]], cx) + _curve(lower[:, [0, 2]], cx))  # depth of the lip contact line
    x_lo, x_hi = sorted((_lmk(lm, 60)[0], _lmk(lm, 64)[0]))
    unit_n = normal / np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-30)
    mouthish = lips | np.isin(labels, (SYNTH.id("face"), SYNTH.id("nose")))
    inside = _inside_polygon(cx, cy, inner_poly[:, :2]) & (cz < z_line)
    towards_slit = (unit_n[:, 1] * (cy - y_mouth) < 0) | (unit_n[:, 2] < -0.5)
    behind = lips & (cx > x_lo) & (cx < x_hi) & (cz < z_line) & (unit_n[:, 2] < 0.2) & towards_slit
    labels[(mouthish & inside) | behind] = SYNTH.id("inner_mouth")

    # 6. neck front / back.
    if "neck" in masks and len(np.asarray(masks["neck"]).reshape(-1)):
        z_neck = vertices[np.asarray(masks["neck"]).reshape(-1).astype(np.int64), 2].mean()
        labels[(labels == SYNTH.id("neck")) & (cz < z_neck)] = SYNTH.id("neck_back")
    return labels.astype(np.uint8)
