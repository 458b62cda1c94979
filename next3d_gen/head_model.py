"""The built-in procedural head model: a FLAME-format head that needs no files (the embedded default).

Everything a FLAME model carries is built here from analytic shapes with fixed seeds, so every user sees the same
head and every test runs on it: template, triangles, identity and expression blendshapes, joints, skinning weights,
landmark embedding (51 static + 79 x 17 dynamic contour), UVs and a per-face region label in the 20-class synthetic
label space (:data:`next3d_gen.labels.SYNTH`). It is our own construction, not derived from FLAME data.

Frame and size (FLAME's): metres, y up, z towards the face front, x towards the subject's left; origin near the
head centre. About 0.16 m wide without ears (0.146 m across the cheeks at y = -0.04: the lower face was widened so
that the jaw outline matches 300W faces, see ``benchmarks/bench_landmark_definition.py``), 0.20 m from forehead to the
back of the head, 0.23 m from chin to crown; nose tip near (0, -0.02, 0.11), eyeball centres near (+-0.032, 0.012,
0.06), neck stump down to y = -0.20.

Construction
------------
* Main surface (skin): a longitude/latitude grid of directions (longitude ``phi`` 0 at the face front, positive
  towards +x; elevation ``beta`` from +90 at the crown to -90 at the neck bottom), twice to three times denser on
  the face and around the ears. Each direction is cast from the origin against a smooth union of implicit shapes
  (cranium ellipsoid, lower-face superelliptic prism with a sloping jaw underside, elliptic neck cylinder with a
  flat stump), the base surface being star-shaped. Features are radial displacements defined in (phi, beta):
  brow ridge, eye sockets, nose (ridge rising from the nasion to the tip, wider at the base, with alae),
  cheekbones, lips, mouth corners, chin, ears (half-elliptic flaps with a bowl).
* Mouth: the grid row of the mouth line is cut between the corners (vertices duplicated: upper copies belong to the
  upper lip, lower copies to the lower lip, identical positions at rest), and the slit is closed by an inner-mouth
  bag (rings going back into the head, ending in a pole) labelled inner_mouth. The lower copies, the lower half of
  the bag, the chin and the jaw are skinned to the jaw joint, so ``jaw`` pose opens a cavity.
* Eyes: one cut grid row per eye as well. Skin vertices near each eye are blended onto a lid spheroid around the
  eyeball centre (semi-axes 1.3 R_lid, R_lid, R_lid; R_lid = 13.6 mm), upper copies above the opening and lower
  copies below, so the slit opens into an almond-shaped lid opening. The opening is closed by a socket bag on a
  smaller spheroid (R 13.0 mm) behind the eyeball (labelled as the eye region). Eyeballs are separate UV spheres
  (R 12 mm, gaze along +z) skinned 100 % to their joints (3 = left = +x, 4 = right = -x). Skin near an eye never
  enters the lid spheroid, and blink/squint rotate lid vertices about the eye's horizontal axis, so the lids slide
  over the eyeball without touching it; blink = +2 closes the lid exactly (margins meet).
* Every triangle is counter-clockwise seen from outside; the surface (skin + bags) is a closed oriented 2-manifold
  and each eyeball is a separate closed one (tests check it).

Labels, UVs, landmarks
----------------------
* Face labels come from the construction: lips are whole grid bands between the mouth slit and a vermilion line,
  the inner mouth and sockets are their bags, eyeballs their meshes, and the other regions are curves and
  ellipses in (phi, beta) (hairline, brow arcs, brow band, glabella, eye regions, nose mask, ears, jaw line, nape).
* UVs: the skin grid is one island (u along the grid columns with the seam at the back of the head and the face
  front at u = 0.39; v along the rows, crown at the top, OBJ convention v up), so each region on it is a
  contiguous patch. The mouth bag, the two socket bags and the two eyeballs have their own islands in the strip
  u > 0.79. Eyeball islands: u = azimuth around the gaze axis, v = 1 at the front pole (gaze) falling linearly with
  the polar angle to 0 at the back pole, so iris / pupil are horizontal bands at the top of the island
  (:data:`EYEBALL_UV_BOXES`, :data:`IRIS_POLAR_DEG`, :data:`PUPIL_POLAR_DEG`).
* Static landmarks (iBUG 17-67) are points of the parameter grid (brow arcs, nose ridge and base, eyelid margins at
  the cut, vermilion lines, inner lip line at the cut), stored as face index + barycentrics, placed where 300W's
  annotators put them on the AFW dev set (``_BROW_POINTS``, ``_NOSE_BASE_PHI``, ``_EYE_T``, ``_*_LIP_T``; the
  inner-lip corners sit inside the mouth corners, as 300W's do). The eyebrows (label and points 17-26) follow
  300W's brow positions (``_BROW_PHI`` / ``_BROW_BETA``); the points trace the brow's upper edge as 300W's do, so
  the label hangs below them (``_brow_extent``).
* Jaw points (iBUG 0-16) follow 17 rays in the frontal image plane from (0, -0.03, 0), a point below the nose, in
  the directions :data:`CONTOUR_LEVELS_DEG` (300W's: point 0 at the height of the outer eye corner, 8 straight
  down, 16 towards the subject's left).
* Contour lines (``contour_line_faces`` / ``contour_line_bary``, the ``outline`` landmark definition, see
  :func:`next3d_gen.annotate.outline_contour`): for each jaw point, the plane holding its ray and the depth axis cuts
  the ``face``-labelled skin in a curve from the face front, round the side of the face, to where the face label
  ends (at the ear, under the jaw; at most 88 degrees of longitude, never behind the ears);
  :data:`CONTOUR_LINE_POINTS` points of it at equal angles about the ray's start (exact plane-triangle
  intersections) are stored, front first. Each view picks on each line the point where the
  camera ray grazes the surface, so the points follow the visible outline of the face from any camera.
* The dynamic contour table (the ``embedding`` definition, FLAME's): for each yaw bin a (row r -> a = r for r < 40,
  a = 39 - r otherwise) the template is rotated by -a degrees about y and z-buffered orthographically from +z;
  along the same 17 rays the outermost visible pixel labelled ``face`` is taken, and its face index +
  barycentrics (in the unrotated mesh) are stored.

Components
----------
* Identity (:data:`SHAPE_COMPONENT_NAMES`, 60): 19 interpretable fields, then 41 smooth random cubic-polynomial
  fields; eye regions are forced to move rigidly (eye size scales the eye about its centre), the mouth cut keeps
  both lips together; then Gram-Schmidt over the vertex displacements (in this order) and scaling so one unit is
  one standard deviation, the largest vertex displacement per unit being :data:`SHAPE_COMPONENT_STD` (metres).
* Expression (:data:`EXPRESSION_COMPONENT_NAMES`, 23): localized FACS-like fields (not orthogonalised); jaw
  opening itself is the jaw joint, as in FLAME.
* Joints: 0 global (regressed from the lower neck), 1 neck, 2 jaw (midpoint of two surface points in front of the
  ears), 3 / 4 eyes (eyeball vertex means); parents [-1, 0, 1, 1, 1]; posedirs are zero.

Building takes 20 s to 2 min (mostly the 79-view contour table), so the model is stored in
``next3d_gen/assets/builtin_head.npz`` (3.5 MB, blendshapes as float16 values; written by
``python -m next3d_gen.head_model --write``, same bytes every build) and :func:`builtin_head_model` loads it once
per process (about 0.2-0.6 s) and hands out copies; :func:`build_head_model` rebuilds it from scratch.
:func:`head_info` gives construction data that FLAME files do not carry (parts, eye centres, cut vertices).

Skinning: joint 2 (jaw) takes the lower lip side of the mouth cut, the lower half of the inner-mouth bag, chin and
jaw, with a sigmoid above the mouth line whose width grows away from the mouth corners (soft falloff up the
cheeks) and a falloff below the jaw line into the neck; joint 0 takes the lower neck; joint 1 the rest of the head.
"""

from __future__ import annotations

import copy
import functools
import io
import logging
import math
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from scipy.ndimage import maximum_filter

from next3d_gen.flame import (
    MAX_CONTOUR_YAW_DEG,
    NUM_CONTOUR_LANDMARKS,
    NUM_JOINTS,
    NUM_STATIC_LANDMARKS,
    NUM_YAW_BINS,
    FlameModel,
)
from next3d_gen.labels import SYNTH

log = logging.getLogger(__name__)

__all__ = [
    "builtin_head_model",
    "build_head_model",
    "load_builtin_npz",
    "save_model_npz",
    "HeadInfo",
    "head_info",
    "SHAPE_COMPONENT_NAMES",
    "SHAPE_COMPONENT_STD",
    "EXPRESSION_COMPONENT_NAMES",
    "EYE_RADIUS",
    "EYEBALL_UV_BOXES",
    "IRIS_POLAR_DEG",
    "PUPIL_POLAR_DEG",
    "ASSET_NAME",
]

ASSET_NAME = "builtin_head.npz"
"""File name of the stored model inside ``next3d_gen/assets``."""

EYE_RADIUS = 0.012
"""Eyeball radius in metres."""
_R_LID = 0.0136  # lid spheroid radius (y, z); x semi-axis is _LID_ASPECT times larger
_R_SOCK = 0.0132  # socket bag spheroid radius
_LID_ASPECT = 1.3

IRIS_POLAR_DEG = 27.0
"""Iris edge: polar angle from the gaze axis, degrees (the eyeball UV v = 1 - polar / 180)."""
PUPIL_POLAR_DEG = 11.0
"""Pupil edge: polar angle from the gaze axis, degrees."""

# UV islands (u0, v0, u1, v1). The skin island is u in [0.01, 0.77], v in [0.01, 0.99].
_SKIN_UV = (0.01, 0.01, 0.77, 0.99)
_MOUTH_BAG_UV = (0.79, 0.01, 0.99, 0.13)
_SOCKET_UV = ((0.79, 0.15, 0.99, 0.25), (0.79, 0.27, 0.99, 0.37))  # right (-x), left (+x)
EYEBALL_UV_BOXES = ((0.79, 0.39, 0.99, 0.68), (0.79, 0.70, 0.99, 0.99))
"""UV boxes (u0, v0, u1, v1) of the right (-x, joint 4) and left (+x, joint 3) eyeball islands."""

SHAPE_COMPONENT_NAMES: tuple[str, ...] = (
    "head_width",
    "head_length",
    "head_height",
    "face_length",
    "jaw_width",
    "chin_height",
    "chin_protrusion",
    "cheek_fullness",
    "nose_length",
    "nose_width",
    "nose_bridge",
    "nose_tip",
    "eye_spacing",
    "eye_size",
    "brow_height",
    "lip_thickness",
    "lip_width",
    "ear_size",
    "ear_angle",
) + tuple(f"random_{k:02d}" for k in range(41))
"""Names of the identity components, in column order."""

_INTERPRETABLE_STD = (
    0.0045, 0.0050, 0.0045, 0.0040, 0.0035, 0.0030, 0.0030, 0.0030, 0.0025, 0.0020,
    0.0020, 0.0022, 0.0018, 0.0006, 0.0022, 0.0015, 0.0022, 0.0030, 0.0035,
)  # fmt: skip
SHAPE_COMPONENT_STD: tuple[float, ...] = _INTERPRETABLE_STD + tuple(float(0.0030 * 0.97**k) for k in range(41))
"""Largest vertex displacement (metres) of one unit (one standard deviation) of each identity component."""

EXPRESSION_COMPONENT_NAMES: tuple[str, ...] = (
    "jaw_drop_helper",
    "smile",
    "smile_left",
    "smile_right",
    "frown",
    "brow_raise_inner",
    "brow_raise_outer",
    "brow_lower",
    "blink_left",
    "blink_right",
    "squint_left",
    "squint_right",
    "pucker",
    "lip_press",
    "mouth_stretch",
    "cheek_puff",
    "nose_wrinkle",
    "brow_raise_left",
    "brow_raise_right",
    "mouth_shift",
    "chin_raise",
    "nose_flare",
    "jaw_forward_helper",
)
"""Names of the expression components, in column order (blink_* = +2 closes that eye)."""

_SEED = 20251122

# ----------------------------------------------------------------------------------------------------------------
# Layout constants (degrees in the (phi, beta) direction domain, metres otherwise)
# ----------------------------------------------------------------------------------------------------------------
_NR = 104  # grid rows incl. both poles
_NH = 58  # half the number of grid columns
_NC = 2 * _NH
_BETA_EYE = 8.0
_PHI_EYE = 22.0
# Mouth line, mouth width and subnasale from the AFW definition check (benchmarks/bench_landmark_definition.py,
# near-frontal mean |offset| in % of the outer inter-ocular distance): with the mouth at -36 degrees, 24.5 mm half
# width and the subnasale at -20.5 degrees, the nose base sat 5-7 % too high and the mouth 5 % too low and 7 % too
# narrow per corner (nose 3.6, mouth 6.0); now nose 2.0, mouth 2.3. The network trained on the old head showed the
# same offsets on the real faces (nose base 7.5 % too high, corners 4-6 % too narrow).
_BETA_MOUTH = -34.0
_MOUTH_HALF_X = 0.029
_LIP_PHI = 20.6  # longitude (degrees) where the lip bands end, just beyond the mouth corners
_BETA_NASION = 10.5
_BETA_TIP = -13.0
_BETA_SUB = -24.0
_PHI_EAR = 93.0
_BETA_EAR = -1.0
_MOUTH_BAG_RINGS = (  # depth behind the lip line, half height, width factor
    (0.004, 0.0030, 0.97),
    (0.010, 0.0075, 0.92),
    (0.018, 0.0100, 0.84),
    (0.026, 0.0090, 0.72),
    (0.032, 0.0060, 0.55),
)
_SOCKET_RINGS = 4
_EYE_POLAR_RINGS = 14
_EYE_AZIMUTHS = 24


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _gauss(*terms: np.ndarray) -> np.ndarray:
    """exp(-0.5 * sum(t**2)) for normalised offsets ``t``."""
    return np.exp(-0.5 * sum(t * t for t in terms))


def _warped(n: int, lo: float, hi: float, density) -> np.ndarray:
    """``n`` samples from ``lo`` to ``hi`` (inclusive) with spacing inversely proportional to ``density(x)``."""
    xs = np.linspace(lo, hi, 8001)
    d = density(xs)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (d[1:] + d[:-1]))])
    cdf /= cdf[-1]
    return np.interp(np.linspace(0.0, 1.0, n), cdf, xs)


def _box(x: np.ndarray, lo: float, hi: float, soft: float) -> np.ndarray:
    return _smoothstep(lo - soft, lo + soft, x) * _smoothstep(hi + soft, hi - soft, x)


# ----------------------------------------------------------------------------------------------------------------
# Base implicit shape
# ----------------------------------------------------------------------------------------------------------------
def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b * (1 - h) + a * h - k * h * (1 - h)


def _sdf(p: np.ndarray) -> np.ndarray:
    """Approximate signed distance (metres, negative inside) of the base head + neck; p (..., 3)."""
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    # Cranium ellipsoid.
    c = np.array([0.0, 0.022, -0.013])
    r = np.array([0.073, 0.103, 0.099])
    q = np.sqrt((((p - c) / r) ** 2).sum(-1))
    d_cran = (q - 1.0) * 0.075
    # Lower face: superelliptic prism with a sloping jaw underside.
    ys = [-0.12, -0.105, -0.095, -0.075, -0.04, 0.0, 0.035]
    W = np.interp(y, ys, [0.018, 0.032, 0.047, 0.064, 0.073, 0.075, 0.072])
    Zf = np.interp(y, ys, [0.058, 0.068, 0.074, 0.080, 0.083, 0.082, 0.080])
    Zb = -0.02
    zc = 0.5 * (Zf + Zb)
    D = 0.5 * (Zf - Zb)
    ex = 2.4
    qf = (np.abs(x / W) ** ex + np.abs((z - zc) / D) ** ex) ** (1.0 / ex)
    d1 = (qf - 1.0) * np.minimum(W, D)
    yb = -0.074 - 0.033 * np.clip((z + 0.005) / 0.075, 0.0, 1.0)
    d_face = np.maximum(np.maximum(d1, yb - y), y - 0.035)
    # Neck: elliptic cylinder with a flat stump.
    qn = np.sqrt((x / 0.054) ** 2 + ((z + 0.022) / 0.060) ** 2)
    d_neck = np.maximum(np.maximum((qn - 1.0) * 0.055, -0.2 - y), y - 0.0)
    return _smin(_smin(d_cran, d_face, 0.012), d_neck, 0.02)


def _cast(dirs: np.ndarray) -> np.ndarray:
    """Distance from the origin along unit ``dirs`` (N, 3) to the base surface (first exit), (N,)."""
    steps = np.linspace(0.0, 0.4, 81)
    vals = _sdf(dirs[:, None, :] * steps[None, :, None])  # (N, S)
    outside = vals > 0
    k = np.argmax(outside, axis=1)
    lo = steps[np.maximum(k - 1, 0)]
    hi = steps[k]
    for _ in range(32):
        mid = 0.5 * (lo + hi)
        inside = _sdf(dirs * mid[:, None]) <= 0
        lo = np.where(inside, mid, lo)
        hi = np.where(inside, hi, mid)
    return 0.5 * (lo + hi)


def _dirs(beta_deg: np.ndarray, phi_deg: np.ndarray) -> np.ndarray:
    b = np.deg2rad(beta_deg)
    f = np.deg2rad(phi_deg)
    return np.stack([np.cos(b) * np.sin(f), np.sin(b), np.cos(b) * np.cos(f)], axis=-1)


# ----------------------------------------------------------------------------------------------------------------
# Radial features in the (phi, beta) domain
# ----------------------------------------------------------------------------------------------------------------
def _nose_height(phi: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Radial nose displacement (metres)."""
    h_tip = 0.0235
    s = np.clip((_BETA_NASION - beta) / (_BETA_NASION - _BETA_TIP), 0.0, 1.0)  # 0 at nasion, 1 at tip
    above = h_tip * (0.10 * np.sin(np.pi * s) + s**1.35)
    u = np.clip((_BETA_TIP - beta) / (_BETA_TIP - _BETA_SUB), 0.0, 1.0)  # 0 at tip, 1 at subnasale
    below = h_tip * (1.0 - u**1.5) ** 1.2
    h = np.where(beta >= _BETA_TIP, above, below)
    h = h * _smoothstep(_BETA_SUB - 1.5, _BETA_SUB + 0.5, beta) + 0.0015 * _gauss(
        (beta - _BETA_SUB) / 2.0, phi / 6.0
    ) * (beta < _BETA_SUB)
    half = np.interp(beta, [_BETA_SUB, _BETA_TIP, 0.0, _BETA_NASION, _BETA_NASION + 6], [10.0, 8.5, 6.0, 5.0, 4.5])
    cross = np.exp(-0.5 * (phi / (0.45 * half)) ** 2)
    nose = h * cross
    alae = 0.0075 * _gauss((np.abs(phi) - 8.0) / 2.8, (beta - (_BETA_SUB + 4.0)) / 2.8)
    return nose + alae


def _features(phi: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Radial displacement (metres) of all base features except the eyelids."""
    aphi = np.abs(phi)
    d = _nose_height(phi, beta)
    # Brow ridge and glabella.
    d += 0.0042 * _gauss((beta - 19.0) / 3.5) * _box(aphi, -1, 36, 10) * (1.0 - 0.25 * _gauss(phi / 4.0))
    d += 0.0015 * _gauss(phi / 5.0, (beta - 13.0) / 3.0)
    # Eye sockets (the lid blend replaces the centre).
    d -= 0.0045 * _gauss((aphi - _PHI_EYE) / 8.0, (beta - _BETA_EYE) / 5.0)
    # Cheekbones and cheeks.
    d += 0.0050 * _gauss((aphi - 33.0) / 9.0, (beta + 6.0) / 6.0)
    d += 0.0025 * _gauss((aphi - 27.0) / 10.0, (beta + 22.0) / 9.0)
    # Nasolabial groove.
    d -= 0.0012 * _gauss((aphi - 14.0 - 0.35 * (beta - _BETA_SUB)) / 2.0, (beta + 28.0) / 6.0)
    # Muzzle, lips, mouth corners.
    lipw = np.clip(1.0 - (aphi / _LIP_PHI) ** 2, 0.0, 1.0) ** 0.7
    d += 0.0040 * _gauss(phi / (_LIP_PHI - 2.5), (beta - _BETA_MOUTH) / 8.0)
    d += 0.0040 * _gauss((beta - (_BETA_MOUTH + 2.6)) / 1.9) * lipw
    d += 0.0042 * _gauss((beta - (_BETA_MOUTH - 3.0)) / 2.3) * lipw
    d -= 0.0022 * _gauss((aphi - (_LIP_PHI - 0.5)) / 2.5, (beta - _BETA_MOUTH) / 2.5)
    d -= 0.0008 * _gauss(phi / 2.0, (beta - (_BETA_MOUTH + 8.0)) / 3.0)  # philtrum
    # Mentolabial sulcus and chin.
    d -= 0.0020 * _gauss(phi / 12.0, (beta - (_BETA_MOUTH - 10.0)) / 2.5)
    d += 0.0075 * _gauss(phi / 10.0, (beta + 55.0) / 5.5)
    # Ears: half-elliptic flaps with a bowl, flaring backwards.
    u = (aphi - _PHI_EAR) / 9.5
    v = (beta - _BETA_EAR) / 21.0
    r = np.sqrt(u * u + v * v)
    ear = _smoothstep(1.0, 0.72, r) * (0.55 + 0.45 * _smoothstep(0.25, 0.75, r)) * (1.0 + 0.35 * np.clip(u, -1, 1))
    d += 0.0155 * ear
    return d


# ----------------------------------------------------------------------------------------------------------------
# Eyes: lid spheroid coordinates
# ----------------------------------------------------------------------------------------------------------------
def _lid_point(c: np.ndarray, psi: np.ndarray, e: np.ndarray, radius: float) -> np.ndarray:
    """Point on the spheroid (aspect*radius, radius, radius) around ``c`` at angles psi (x) and e (elevation), rad."""
    return c + np.stack(
        [_LID_ASPECT * radius * np.sin(psi), radius * np.cos(psi) * np.sin(e), radius * np.cos(psi) * np.cos(e)],
        axis=-1,
    )


def _spheroid_norm(p: np.ndarray, c: np.ndarray, radius: float) -> np.ndarray:
    q = (p - c) / np.array([_LID_ASPECT * radius, radius, radius])
    return np.sqrt((q * q).sum(-1))


def _rot_x(p: np.ndarray, c: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rotate points (N, 3) about the x axis through ``c`` by ``angle`` (N,) radians (positive raises the front)."""
    q = p - c
    ca, sa = np.cos(angle), np.sin(angle)
    return c + np.stack([q[:, 0], q[:, 1] * ca + q[:, 2] * sa, -q[:, 1] * sa + q[:, 2] * ca], axis=-1)


def _margin_elev(psi_n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upper and lower lid margin elevation (rad) for normalised psi in [-1, 1] (outside: the corner elevation)."""
    g = np.cos(0.5 * np.pi * np.clip(psi_n, -1, 1)) ** 0.85
    return np.deg2rad(26.0) * g, -np.deg2rad(18.0) * g


# ----------------------------------------------------------------------------------------------------------------
# Mesh assembly helpers
# ----------------------------------------------------------------------------------------------------------------
def _strip(top_v, bot_v, top_uv, bot_uv, wrap: bool = True):
    """Triangles of a band between two vertex rows (CCW from outside for rows ordered top->bottom, left->right).

    top_v/bot_v: (n,) vertex ids, top_uv/bot_uv: (n+1,) uv ids (last = seam copy of the first when wrapping).
    Returns faces (m, 3), uv faces (m, 3), column index (m,), triangle kind (m,) (0 = a-c-b, 1 = a-d-c).
    """
    n = len(top_v)
    j = np.arange(n if wrap else n - 1)
    jn = (j + 1) % n
    a, b, c, d = top_v[j], top_v[jn], bot_v[jn], bot_v[j]
    ua, ub, uc, ud = top_uv[j], top_uv[j + 1], bot_uv[j + 1], bot_uv[j]
    f1 = np.stack([a, c, b], 1)
    u1 = np.stack([ua, uc, ub], 1)
    f2 = np.stack([a, d, c], 1)
    u2 = np.stack([ua, ud, uc], 1)
    k1 = a != b
    k2 = c != d
    faces = np.concatenate([f1[k1], f2[k2]])
    uvf = np.concatenate([u1[k1], u2[k2]])
    col = np.concatenate([j[k1], j[k2]])
    kind = np.concatenate([np.zeros(k1.sum(), np.int64), np.ones(k2.sum(), np.int64)])
    return faces, uvf, col, kind


class _Mesh:
    """Accumulates vertices, uv coords, faces and per-face metadata."""

    def __init__(self) -> None:
        self.verts: list[np.ndarray] = []
        self.nv = 0
        self.uvs: list[np.ndarray] = []
        self.nuv = 0
        self.faces: list[np.ndarray] = []
        self.uvfaces: list[np.ndarray] = []
        self.part: list[np.ndarray] = []
        self.band: list[np.ndarray] = []
        self.col: list[np.ndarray] = []
        self.kind: list[np.ndarray] = []

    def add_verts(self, p: np.ndarray) -> np.ndarray:
        idx = np.arange(self.nv, self.nv + len(p))
        self.verts.append(np.asarray(p, np.float64))
        self.nv += len(p)
        return idx

    def add_uvs(self, uv: np.ndarray) -> np.ndarray:
        idx = np.arange(self.nuv, self.nuv + len(uv))
        self.uvs.append(np.asarray(uv, np.float64))
        self.nuv += len(uv)
        return idx

    def add_faces(self, faces, uvf, part: int, band: int, col, kind) -> None:
        self.faces.append(faces)
        self.uvfaces.append(uvf)
        self.part.append(np.full(len(faces), part))
        self.band.append(np.full(len(faces), band))
        self.col.append(col)
        self.kind.append(kind)

    def ring_grid(self, rows_v: list[np.ndarray], rows_uv: list[np.ndarray], part: int, band0: int = 0) -> None:
        for b in range(len(rows_v) - 1):
            f, u, c, k = _strip(rows_v[b], rows_v[b + 1], rows_uv[b], rows_uv[b + 1])
            self.add_faces(f, u, part, band0 + b, c, k)


def _uv_grid(n_rows: int, n_cols: int, box) -> np.ndarray:
    """(n_rows, n_cols + 1, 2) uv grid over ``box`` (row 0 at the top, columns incl. a seam copy)."""
    u0, v0, u1, v1 = box
    u = np.linspace(u0, u1, n_cols + 1)
    v = np.linspace(v1, v0, n_rows)
    return np.stack(np.broadcast_arrays(u[None, :], v[:, None]), axis=-1)


# Part ids.
_SKIN, _MOUTH_BAG, _SOCKET_R, _SOCKET_L, _EYEBALL_R, _EYEBALL_L = range(6)


@dataclass
class HeadInfo:
    """Construction data of the built-in head that is not part of the FLAME format (for tests, renderers, tools).

    Attributes:
        vertex_part: (V,) int64 part id per vertex: 0 skin, 1 inner-mouth bag, 2/3 right/left socket bag,
            4/5 right/left eyeball.
        face_part: (F,) int64 part id per face (same ids).
        eye_centres: (2, 3) float64 eyeball centres [right (-x), left (+x)], template, metres.
        mouth_upper: (n,) int64 skin vertices on the upper side of the mouth cut (corner to corner).
        mouth_lower: (n,) int64 the matching lower-side vertices (same positions at rest; corners shared).
        eye_upper: two (n,) int64 arrays, upper lid margin vertices of [right, left] eye (corner to corner).
        eye_lower: two (n,) int64 arrays, lower lid margin vertices (corners shared with ``eye_upper``).
    """

    vertex_part: np.ndarray
    face_part: np.ndarray
    eye_centres: np.ndarray
    mouth_upper: np.ndarray
    mouth_lower: np.ndarray
    eye_upper: tuple[np.ndarray, np.ndarray]
    eye_lower: tuple[np.ndarray, np.ndarray]


# ----------------------------------------------------------------------------------------------------------------
# The builder
# ----------------------------------------------------------------------------------------------------------------
def _grid_angles() -> tuple[np.ndarray, np.ndarray, int, int]:
    """Row elevations (NR,) from +90 to -90 and column longitudes (NC,) from -180, plus eye / mouth row ids."""

    def rho_beta(b):
        return 1.0 + 2.6 * _box(b, -68.0, 50.0, 8.0)

    beta = _warped(_NR, 90.0, -90.0, rho_beta)
    r_eye = int(np.argmin(np.abs(beta - _BETA_EYE)))
    r_mouth = int(np.argmin(np.abs(beta - _BETA_MOUTH)))

    # Snap the two cut rows exactly, spreading the shift over the neighbours.
    def snap(beta, r, target):
        shift = target - beta[r]
        k = np.arange(len(beta))
        w = np.clip(1.0 - np.abs(k - r) / 4.0, 0.0, 1.0)
        return beta + shift * w

    beta = snap(beta, r_eye, _BETA_EYE)
    beta = snap(beta, r_mouth, _BETA_MOUTH)

    def rho_phi(f):
        return 1.0 + 2.7 * _box(f, -60.0, 60.0, 8.0) + 1.4 * _gauss((np.abs(f) - _PHI_EAR) / 12.0)

    half = _warped(_NH + 1, 0.0, 180.0, rho_phi)
    phi = np.concatenate([-half[_NH:0:-1], half[:_NH]])
    return beta, phi, r_eye, r_mouth


def _build(contour_rows: list[int] | None = None) -> tuple[FlameModel, HeadInfo]:
    """Build the model; ``contour_rows`` limits the (slow) contour table to those rows (others zero, for tests)."""
    beta, phi, r_eye, r_mouth = _grid_angles()
    NR, NC = _NR, _NC
    B, P = np.meshgrid(beta[1:-1], phi, indexing="ij")  # (NR-2, NC)
    dirs = _dirs(B, P)
    radius = _cast(dirs.reshape(-1, 3)).reshape(B.shape)
    radius = radius + _features(P, B)
    grid = dirs * radius[..., None]  # (NR-2, NC, 3) base skin positions
    top = dirs[0, 0] * 0 + np.array([0.0, _cast(np.array([[0.0, 1.0, 0.0]]))[0], 0.0])
    bottom = np.array([0.0, -_cast(np.array([[0.0, -1.0, 0.0]]))[0], 0.0])

    # ---- the three cuts (columns strictly between the corner columns get a lower copy)
    def cut_cols(center_phi: float, half_x: float, row: int) -> tuple[int, int]:
        xs = grid[row - 1, :, 0]
        x_mid = grid[row - 1, int(np.argmin(np.abs(phi - center_phi))), 0]
        cols = np.where((np.abs(phi - center_phi) < 25.0) & (np.abs(xs - x_mid) <= half_x))[0]
        return int(cols.min()), int(cols.max())

    jm0, jm1 = cut_cols(0.0, _MOUTH_HALF_X, r_mouth)
    # Eye centres: behind the base surface at the eye direction.
    eye_c = []
    for s in (-1.0, 1.0):
        d0 = _dirs(np.array(_BETA_EYE), np.array(s * _PHI_EYE))
        p0 = d0 * (_cast(d0[None])[0] + _features(np.array(s * _PHI_EYE), np.array(_BETA_EYE)) + 0.0045)
        eye_c.append(p0 - np.array([0.0, 0.0, _R_LID + 0.0004]))
    eye_c = np.array(eye_c)  # [right (-x), left (+x)]
    half_eye_x = _LID_ASPECT * _R_LID * math.sin(math.radians(62.0))
    eye_cols = []
    for k in range(2):
        xs = grid[r_eye - 1, :, 0]
        cand = np.where((np.abs(phi - (2 * k - 1) * _PHI_EYE) < 20.0) & (np.abs(xs - eye_c[k, 0]) <= half_eye_x))[0]
        eye_cols.append((int(cand.min()), int(cand.max())))

    mesh = _Mesh()
    top_id = mesh.add_verts(top[None])[0]
    grid_ids = mesh.add_verts(grid.reshape(-1, 3)).reshape(NR - 2, NC)
    bottom_id = mesh.add_verts(bottom[None])[0]
    row_ids = [np.full(NC, top_id)] + [grid_ids[i] for i in range(NR - 2)] + [np.full(NC, bottom_id)]
    row_ids_down = [r.copy() for r in row_ids]  # ids used by the band *below* a row

    def make_cut(row: int, j0: int, j1: int) -> tuple[np.ndarray, np.ndarray]:
        inner = np.arange(j0 + 1, j1)
        upper = row_ids[row][inner]
        lower = mesh.add_verts(grid[row - 1, inner])
        row_ids_down[row][inner] = lower
        corner0, corner1 = row_ids[row][j0], row_ids[row][j1]
        return (
            np.concatenate([[corner0], upper, [corner1]]),
            np.concatenate([[corner0], lower, [corner1]]),
        )

    mouth_up, mouth_lo = make_cut(r_mouth, jm0, jm1)
    eye_up, eye_lo = [], []
    for k in range(2):
        u, lo = make_cut(r_eye, *eye_cols[k])
        eye_up.append(u)
        eye_lo.append(lo)

    # ---- skin uv + faces
    uvg = _uv_grid(NR, NC, _SKIN_UV)
    uvg[0, :, 0] += 0.5 * (_SKIN_UV[2] - _SKIN_UV[0]) / NC  # pole corners at column centres
    uvg[-1, :, 0] += 0.5 * (_SKIN_UV[2] - _SKIN_UV[0]) / NC
    uv_ids = mesh.add_uvs(uvg.reshape(-1, 2)).reshape(NR, NC + 1)
    for b in range(NR - 1):
        f, u, c, k = _strip(row_ids_down[b], row_ids[b + 1], uv_ids[b], uv_ids[b + 1])
        mesh.add_faces(f, u, _SKIN, b, c, k)

    # ---- eye lids: blend skin near each eye onto the lid spheroid
    verts = np.concatenate(mesh.verts)
    vrow = np.full(mesh.nv, -1)
    vcol = np.full(mesh.nv, -1)
    for i in range(NR - 2):
        vrow[grid_ids[i]] = i + 1
        vcol[grid_ids[i]] = np.arange(NC)
    for ids_lo, ids_up in [(mouth_lo, mouth_up)] + list(zip(eye_lo, eye_up, strict=True)):
        vrow[ids_lo[1:-1]] = vrow[ids_up[1:-1]]
        vcol[ids_lo[1:-1]] = vcol[ids_up[1:-1]]
    lid_info = []  # per eye: (vertex ids, psi, e, weight, side, psi_n)
    for k in range(2):
        c = eye_c[k]
        j0, j1 = eye_cols[k]
        ids = np.where(
            (vrow > 0)
            & (np.abs(verts[:, 0] - c[0]) < 0.035)
            & (np.abs(verts[:, 1] - c[1]) < 0.035)
            & (verts[:, 2] > c[2] - 0.01)
        )[0]
        row, col = vrow[ids], vcol[ids]
        q = (verts[ids] - c) / np.array([_LID_ASPECT * _R_LID, _R_LID, _R_LID])
        rho = np.linalg.norm(q, axis=1)
        u = q / rho[:, None]
        psi = np.arcsin(np.clip(u[:, 0], -1, 1))
        e = np.arctan2(u[:, 1], u[:, 2])
        cut = (row == r_eye) & (col >= j0) & (col <= j1)
        e = np.where(cut, 0.0, e)
        psi_c = [psi[(row == r_eye) & (col == jj)][0] for jj in (j0, j1)]
        psi_n = np.where(psi < 0, psi / -psi_c[0], psi / psi_c[1])
        e_up, e_lo = _margin_elev(psi_n)
        is_lower_copy = np.isin(ids, eye_lo[k][1:-1])
        above = (row < r_eye) | ((row == r_eye) & ~is_lower_copy)
        e_top, e_bot = np.deg2rad(80.0), np.deg2rad(-70.0)
        e_new_up = e + e_up * (1.0 - np.clip(e, 0, e_top) / e_top)
        e_new_lo = e + e_lo * (1.0 - np.clip(e, e_bot, 0) / e_bot)
        loc = _smoothstep(2.1, 1.35, rho)  # only the skin close to the eye is remapped
        e_new = e + loc * (np.where(above, e_new_up, e_new_lo) - e)
        w = loc * _smoothstep(1.8, 1.0, np.sqrt(psi_n**2 + (e / np.deg2rad(55.0)) ** 2))
        w = w * np.clip(1.0 - psi_n**2, 0.0, 1.0)  # the corners keep their depth
        rho_new = np.maximum(1.0, (1 - w) * rho + w)
        cpsi = np.cos(psi)
        unew = np.stack([np.sin(psi), cpsi * np.sin(e_new), cpsi * np.cos(e_new)], -1)
        verts[ids] = c + rho_new[:, None] * unew * np.array([_LID_ASPECT * _R_LID, _R_LID, _R_LID])
        lid_info.append((ids, psi, e_new, loc, np.where(above, 1, -1), psi_n, rho, row, col))
    # rebuild mesh verts from the edited array
    mesh.verts = [verts]

    # ---- mouth bag
    loop_m = np.concatenate([mouth_up, mouth_lo[-2:0:-1]])
    n_up = len(mouth_up)
    lp = verts[loop_m]
    xm = lp[:, 0]
    s = np.clip(0.5 + xm / (2 * np.abs(xm).max()), 0, 1)
    prof = np.sin(np.pi * s) ** 0.7
    sign = np.where(np.arange(len(loop_m)) < n_up, 1.0, -1.0)
    sign[0] = 0.0
    sign[n_up - 1] = 0.0
    rings = []
    for depth, hh, wf in _MOUTH_BAG_RINGS:
        q = lp.copy()
        q[:, 0] *= wf
        q[:, 1] += sign * hh * prof
        q[:, 2] -= depth
        rings.append(q)
    mouth_pole = rings[-1].mean(0) - np.array([0.0, 0.0, 0.005])
    m_ring_ids = [mesh.add_verts(r) for r in rings]
    m_pole = mesh.add_verts(mouth_pole[None])[0]
    nl = len(loop_m)
    uvb = _uv_grid(len(rings) + 2, nl, _MOUTH_BAG_UV)
    uvb_ids = mesh.add_uvs(uvb.reshape(-1, 2)).reshape(len(rings) + 2, nl + 1)
    rows_v = [loop_m] + m_ring_ids + [np.full(nl, m_pole)]
    mesh.ring_grid(rows_v, list(uvb_ids), _MOUTH_BAG)
    mouth_bag_rows = rows_v

    # ---- socket bags
    socket_rows = []
    for k in range(2):
        c = eye_c[k]
        loop = np.concatenate([eye_up[k], eye_lo[k][-2:0:-1]])
        lp = verts[loop] - c
        u = lp / np.array([_LID_ASPECT, 1.0, 1.0])
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        back = np.array([0.0, 0.0, -1.0])
        rows = [loop]
        for r in range(1, _SOCKET_RINGS + 1):
            t = r / (_SOCKET_RINGS + 1)
            om = np.arccos(np.clip(u @ back, -1, 1))
            a = np.sin((1 - t) * om) / np.sin(om)
            bb = np.sin(t * om) / np.sin(om)
            d = a[:, None] * u + bb[:, None] * back
            d /= np.linalg.norm(d, axis=1, keepdims=True)
            rows.append(mesh.add_verts(c + d * np.array([_LID_ASPECT, 1.0, 1.0]) * _R_SOCK))
        rows.append(np.full(len(loop), mesh.add_verts((c + back * _R_SOCK)[None])[0]))
        uvs = _uv_grid(len(rows), len(loop), _SOCKET_UV[k])
        uvs_ids = mesh.add_uvs(uvs.reshape(-1, 2)).reshape(len(rows), len(loop) + 1)
        mesh.ring_grid(rows, list(uvs_ids), _SOCKET_R + k)
        socket_rows.append(rows)

    # ---- eyeballs (UV spheres, gaze +z); right (-x) first, then left (+x)
    eyeball_ids = []
    for k in range(2):
        c = eye_c[k]
        th = np.linspace(0, np.pi, _EYE_POLAR_RINGS + 1)[1:-1]
        az = np.linspace(0, 2 * np.pi, _EYE_AZIMUTHS, endpoint=False)
        T, A = np.meshgrid(th, az, indexing="ij")
        # rows run front -> back and columns counter-clockwise seen from the front: CCW from outside
        pts = c + EYE_RADIUS * np.stack([np.sin(T) * np.cos(A), np.sin(T) * np.sin(A), np.cos(T)], -1)
        front = mesh.add_verts((c + [0, 0, EYE_RADIUS])[None])[0]
        ring_ids = mesh.add_verts(pts.reshape(-1, 3)).reshape(len(th), _EYE_AZIMUTHS)
        backp = mesh.add_verts((c - [0, 0, EYE_RADIUS])[None])[0]
        rows = [np.full(_EYE_AZIMUTHS, front)] + list(ring_ids) + [np.full(_EYE_AZIMUTHS, backp)]
        uve = _uv_grid(len(rows), _EYE_AZIMUTHS, EYEBALL_UV_BOXES[k])
        uve[0, :, 0] += 0.5 * (EYEBALL_UV_BOXES[k][2] - EYEBALL_UV_BOXES[k][0]) / _EYE_AZIMUTHS
        uve[-1, :, 0] += 0.5 * (EYEBALL_UV_BOXES[k][2] - EYEBALL_UV_BOXES[k][0]) / _EYE_AZIMUTHS
        uve_ids = mesh.add_uvs(uve.reshape(-1, 2)).reshape(len(rows), _EYE_AZIMUTHS + 1)
        mesh.ring_grid(rows, list(uve_ids), _EYEBALL_R + k)
        eyeball_ids.append(np.concatenate([[front], ring_ids.ravel(), [backp]]))

    V_all = np.concatenate(mesh.verts)
    faces = np.concatenate(mesh.faces).astype(np.int64)
    uv_faces = np.concatenate(mesh.uvfaces).astype(np.int64)
    uv_coords = np.concatenate(mesh.uvs)
    face_part = np.concatenate(mesh.part)
    face_band = np.concatenate(mesh.band)
    face_col = np.concatenate(mesh.col)
    face_kind = np.concatenate(mesh.kind)
    V = len(V_all)
    vpart = np.zeros(V, np.int64)
    for part in range(1, 6):
        vpart[np.unique(faces[face_part == part])] = part
    vpart[np.unique(faces[face_part == _SKIN])] = _SKIN  # loops belong to the skin

    ctx = _Ctx(
        beta=beta,
        phi=phi,
        r_eye=r_eye,
        r_mouth=r_mouth,
        verts=V_all,
        faces=faces,
        face_part=face_part,
        face_band=face_band,
        face_col=face_col,
        face_kind=face_kind,
        vpart=vpart,
        eye_c=eye_c,
        mouth_up=mouth_up,
        mouth_lo=mouth_lo,
        eye_up=eye_up,
        eye_lo=eye_lo,
        eye_cols=eye_cols,
        mouth_cols=(jm0, jm1),
        lid_info=lid_info,
        mouth_bag_rows=mouth_bag_rows,
        socket_rows=socket_rows,
        eyeball_ids=eyeball_ids,
    )
    labels = _face_labels(ctx)
    ctx.labels = labels
    weights = _skinning(ctx)
    jreg = _regressor(ctx)
    shapedirs = _shape_components(ctx)
    exprdirs = _expression_components(ctx)
    st_faces, st_bary = _static_landmarks(ctx)
    dyn_faces, dyn_bary = _contour_table(ctx, rows=contour_rows)
    line_faces, line_bary = _contour_lines(ctx)

    model = FlameModel(
        v_template=V_all.astype(np.float32),
        faces=faces,
        shapedirs=shapedirs.astype(np.float32),
        exprdirs=exprdirs.astype(np.float32),
        posedirs=np.zeros((V, 3, 36), np.float32),
        j_regressor=jreg.astype(np.float32),
        weights=weights.astype(np.float32),
        parents=np.array([-1, 0, 1, 1, 1], np.int64),
        static_lmk_faces=st_faces,
        static_lmk_bary=st_bary.astype(np.float32),
        dynamic_lmk_faces=dyn_faces,
        dynamic_lmk_bary=dyn_bary.astype(np.float32),
        uv_coords=np.clip(uv_coords, 0, 1).astype(np.float32),
        uv_faces=uv_faces,
        face_labels=labels.astype(np.uint8),
        contour_line_faces=line_faces,
        contour_line_bary=line_bary.astype(np.float32),
        name="synthforge builtin procedural head v1",
    )
    info = HeadInfo(
        vertex_part=vpart,
        face_part=face_part,
        eye_centres=eye_c,
        mouth_upper=mouth_up,
        mouth_lower=mouth_lo,
        eye_upper=(eye_up[0], eye_up[1]),
        eye_lower=(eye_lo[0], eye_lo[1]),
    )
    return model, info


@dataclass
class _Ctx:
    beta: np.ndarray
    phi: np.ndarray
    r_eye: int
    r_mouth: int
    verts: np.ndarray
    faces: np.ndarray
    face_part: np.ndarray
    face_band: np.ndarray
    face_col: np.ndarray
    face_kind: np.ndarray
    vpart: np.ndarray
    eye_c: np.ndarray
    mouth_up: np.ndarray
    mouth_lo: np.ndarray
    eye_up: list
    eye_lo: list
    eye_cols: list
    mouth_cols: tuple
    lid_info: list
    mouth_bag_rows: list
    socket_rows: list
    eyeball_ids: list
    labels: np.ndarray | None = None

    def face_angles(self) -> tuple[np.ndarray, np.ndarray]:
        """(phi, beta) degrees of each skin face's grid cell centre (garbage for other parts)."""
        b = np.clip(self.face_band, 0, _NR - 2)
        beta_c = 0.5 * (self.beta[b] + self.beta[np.minimum(b + 1, _NR - 1)])
        j = np.clip(self.face_col, 0, _NC - 1)
        phi_next = np.where(j + 1 < _NC, self.phi[np.minimum(j + 1, _NC - 1)], 180.0)
        phi_c = 0.5 * (self.phi[j] + phi_next)
        return phi_c, beta_c


# ----------------------------------------------------------------------------------------------------------------
# Labels
# ----------------------------------------------------------------------------------------------------------------
# Eyebrow centre line through 300W's five brow points (iBUG 21..17 / 22..26 at these |phi|, beta), measured as
# the direction of the AFW dev set's near-frontal mean brow points mapped onto the template
# (benchmarks/bench_landmark_definition.py): before, the brows ended at |phi| 36 and the outer points sat 12-13 % of
# the inter-ocular distance too far in (and 5-6 % too high); 300W's brows reach well past the outer eye corners.
_BROW_PHI = (7.7, 17.1, 27.7, 38.8, 49.4)
_BROW_BETA = (18.7, 22.1, 23.4, 22.0, 16.8)
_BROW_END = 52.0  # |phi| where the eyebrow ends


def _brow_centre(aphi: np.ndarray) -> np.ndarray:
    """Elevation (deg) of the eyebrow centre line at |phi| (arched, highest a third of the way out)."""
    return np.interp(aphi, _BROW_PHI, _BROW_BETA)


def _brow_extent(aphi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper elevation (deg) of the eyebrow at |phi|. 300W's brow points trace the brow's upper edge, so
    the brow hangs below its centre line (the landmark line) and rises only a little above it; thickest inside."""
    knots = [6.0, 14.0, 30.0, 42.0, _BROW_END]
    centre = _brow_centre(aphi)
    below = np.interp(aphi, knots, [5.2, 4.8, 4.0, 2.9, 1.6])
    above = np.interp(aphi, knots, [0.9, 0.8, 0.6, 0.5, 0.4])
    return centre - below, centre + above


def _lip_heights(aphi: np.ndarray, half_phi: float) -> tuple[np.ndarray, np.ndarray]:
    """Upper and lower vermilion heights (deg of beta) above / below the mouth cut at |phi|."""
    t = np.clip(aphi / half_phi, 0, 1)
    base = np.sqrt(np.clip(1 - t**2, 0, 1))
    up = 0.7 + 3.2 * base * (1.0 - 0.18 * np.exp(-((aphi / 2.5) ** 2))) + 0.6 * np.exp(-(((aphi - 4.5) / 2.5) ** 2))
    lo = 0.8 + 4.0 * base**0.8
    return up, lo


def _hairline(aphi: np.ndarray) -> np.ndarray:
    return np.interp(aphi, [0, 30, 55, 75, 95, 115, 140, 180], [47, 45, 36, 20, 14, 5, -20, -30])


def _face_labels(ctx: _Ctx) -> np.ndarray:
    L = SYNTH.id
    F = len(ctx.faces)
    lab = np.full(F, L("face"), np.int64)
    phi_c, beta_c = ctx.face_angles()
    aphi = np.abs(phi_c)
    cen = ctx.verts[ctx.faces].mean(1)
    x, y, z = cen.T
    skin = ctx.face_part == _SKIN
    left = phi_c > 0
    # neck (below the jaw line) and nape
    jaw_y = -0.074 - 0.033 * np.clip((z + 0.005) / 0.075, 0.0, 1.0)
    neck = skin & (y < jaw_y - 0.006) & (aphi < 120)
    lab[neck] = L("neck")
    back = skin & (aphi >= 100) & (y < -0.045 + 0.0 * x)
    lab[back & (y < -0.04)] = L("neck_back")
    lab[skin & (aphi >= 120) & (y < -0.045)] = L("neck_back")
    # scalp
    hair = skin & (beta_c > _hairline(aphi)) & ~(lab == L("neck_back"))
    lab[hair] = L("scalp")
    # forehead (front, below the hairline)
    brow_lo, brow_hi = _brow_extent(aphi)
    front = skin & (aphi < 55) & ~hair
    lab[front & (beta_c > brow_hi + 6.0)] = L("forehead")
    band = front & (beta_c > brow_hi) & (beta_c <= brow_hi + 6.0) & (aphi < _BROW_END + 2.0)
    lab[band] = L("brow_band")
    # eye regions (ellipse around each eye in the direction domain), below the brows
    for side, name in ((-1, "right_eye_region"), (1, "left_eye_region")):
        half_b = np.where(beta_c > _BETA_EYE, 9.0, 7.0)
        ell = ((phi_c - side * _PHI_EYE) / 14.5) ** 2 + ((beta_c - _BETA_EYE - 0.5) / half_b) ** 2
        m = skin & (ell < 1.0) & (beta_c < brow_lo)
        lab[m] = L(name)
    # eyebrows
    brow = skin & (aphi > 6.0) & (aphi < _BROW_END) & (beta_c > brow_lo) & (beta_c < brow_hi)
    lab[brow & ~left] = L("right_eyebrow")
    lab[brow & left] = L("left_eyebrow")
    # glabella: between the brows down to the nasion
    gl = skin & (aphi <= 6.5) & (beta_c > _BETA_NASION - 2.0) & (beta_c < brow_hi + 6.0)
    lab[gl] = L("glabella")
    # nose
    nose = skin & (_nose_height(phi_c, beta_c) > 0.0012) & (beta_c < _BETA_NASION - 2.0) & (beta_c > _BETA_SUB - 2.0)
    lab[nose] = L("nose")
    # lips: grid bands next to the mouth cut
    half_phi = float(np.abs(ctx.phi[list(ctx.mouth_cols)]).max())
    up_h, lo_h = _lip_heights(aphi, half_phi)
    inner = skin & (aphi < half_phi + 0.01)
    lab[inner & (beta_c > _BETA_MOUTH) & (beta_c < _BETA_MOUTH + up_h)] = L("upper_lip")
    lab[inner & (beta_c < _BETA_MOUTH) & (beta_c > _BETA_MOUTH - lo_h)] = L("lower_lip")
    # ears
    ear = skin & ((((aphi - _PHI_EAR) / 9.5) ** 2 + ((beta_c - _BETA_EAR) / 21.0) ** 2) < 1.02)
    lab[ear & ~left] = L("right_ear")
    lab[ear & left] = L("left_ear")
    # other parts
    lab[ctx.face_part == _MOUTH_BAG] = L("inner_mouth")
    lab[ctx.face_part == _SOCKET_R] = L("right_eye_region")
    lab[ctx.face_part == _SOCKET_L] = L("left_eye_region")
    lab[ctx.face_part == _EYEBALL_R] = L("right_eyeball")
    lab[ctx.face_part == _EYEBALL_L] = L("left_eyeball")
    return lab


# ----------------------------------------------------------------------------------------------------------------
# Skinning and joints
# ----------------------------------------------------------------------------------------------------------------
def _mouth_frame(ctx: _Ctx) -> tuple[float, float]:
    y_m = float(ctx.verts[ctx.mouth_up, 1].mean())
    x_mc = float(np.abs(ctx.verts[ctx.mouth_up, 0]).max())
    return y_m, x_mc


def _skinning(ctx: _Ctx) -> np.ndarray:
    P = ctx.verts
    V = len(P)
    x, y, z = P.T
    y_m, x_mc = _mouth_frame(ctx)
    lat = np.maximum(np.abs(x) - x_mc, 0.0)
    level = y_m + 0.55 * lat
    sig = 0.0008 + 0.55 * lat
    S = 1.0 / (1.0 + np.exp(-np.clip((level - y) / sig, -60, 60)))
    y_jaw = -0.074 - 0.033 * np.clip((z + 0.005) / 0.075, 0.0, 1.0)  # the jaw underside of the base shape
    A = _smoothstep(-0.035, 0.02, z) * _smoothstep(y_jaw - 0.035, y_jaw - 0.004, y)
    wj = S * A
    wj[ctx.mouth_up[1:-1]] = 0.0
    wj[ctx.mouth_lo[1:-1]] = A[ctx.mouth_lo[1:-1]]
    # inner-mouth bag: margins -> 0.5 at the back pole
    rows = ctx.mouth_bag_rows
    K = len(rows) - 1
    w_loop = wj[rows[0]]
    for r in range(1, K + 1):
        t = r / K
        wj[rows[r]] = (1 - t) * w_loop + t * 0.5
    wr = _smoothstep(-0.15, -0.195, y) * (1 - wj)
    W = np.zeros((V, NUM_JOINTS))
    W[:, 0] = wr
    W[:, 2] = wj
    W[:, 1] = 1.0 - wr - wj
    for k, joint in ((0, 4), (1, 3)):
        ids = ctx.eyeball_ids[k]
        W[ids] = 0.0
        W[ids, joint] = 1.0
    return W


def _nearest_skin(ctx: _Ctx, target: np.ndarray) -> int:
    skin = np.where(ctx.vpart == _SKIN)[0]
    return int(skin[np.argmin(((ctx.verts[skin] - target) ** 2).sum(1))])


def _regressor(ctx: _Ctx) -> np.ndarray:
    V = len(ctx.verts)
    J = np.zeros((NUM_JOINTS, V))
    for j, (tx, ty, tz) in ((0, (0.054, -0.17, -0.022)), (1, (0.054, -0.105, -0.022)), (2, (0.07, -0.028, -0.006))):
        a = _nearest_skin(ctx, np.array([tx, ty, tz]))
        b = _nearest_skin(ctx, np.array([-tx, ty, tz]))
        J[j, a] += 0.5
        J[j, b] += 0.5
    for k, joint in ((0, 4), (1, 3)):
        ids = ctx.eyeball_ids[k]
        J[joint, ids] = 1.0 / len(ids)
    return J


# ----------------------------------------------------------------------------------------------------------------
# Components
# ----------------------------------------------------------------------------------------------------------------
def _grid_vertex(ctx: _Ctx, beta: float, phi: float) -> int:
    r = int(np.argmin(np.abs(ctx.beta[1:-1] - beta))) + 1
    c = int(np.argmin(np.abs(ctx.phi - phi)))
    return 1 + (r - 1) * _NC + c


def _eye_masks(ctx: _Ctx, Q: np.ndarray) -> np.ndarray:
    """(2, N) rigid-eye masks for points Q (1 near the eye / eyeball / socket, 0 away)."""
    m = np.stack([_smoothstep(2.5, 1.15, _spheroid_norm(Q, c, _R_LID)) for c in ctx.eye_c])
    V = len(ctx.verts)
    for k in range(2):
        for ids in (ctx.eyeball_ids[k], np.concatenate(ctx.socket_rows[k][1:])):
            m[k, ids[ids < V]] = 1.0
    return m


def _refs(ctx: _Ctx) -> dict[str, np.ndarray]:
    P = ctx.verts
    g = functools.partial(_grid_vertex, ctx)
    lab = ctx.labels
    L = SYNTH.id
    ear_l = P[np.unique(ctx.faces[lab == L("left_ear")])].mean(0)
    ear_r = P[np.unique(ctx.faces[lab == L("right_ear")])].mean(0)
    return {
        "nose_tip": P[g(_BETA_TIP, 0.0)],
        "nose_base": P[g(_BETA_SUB + 3.0, 0.0)],
        "bridge": P[g(0.5 * (_BETA_NASION + _BETA_TIP) + 4.0, 0.0)],
        "chin": P[g(-55.0, 0.0)],
        "mouth": P[ctx.mouth_up].mean(0),
        "corner_r": P[ctx.mouth_up[0]],
        "corner_l": P[ctx.mouth_up[-1]],
        "cheek_l": P[g(-10.0, 30.0)],
        "cheek_r": P[g(-10.0, -30.0)],
        "brow_l": P[g(float(_brow_centre(np.array(22.0))), 22.0)],
        "brow_r": P[g(float(_brow_centre(np.array(22.0))), -22.0)],
        "brow_in_l": P[g(float(_brow_centre(np.array(10.0))), 10.0)],
        "brow_in_r": P[g(float(_brow_centre(np.array(10.0))), -10.0)],
        "brow_out_l": P[g(float(_brow_centre(np.array(34.0))), 34.0)],
        "brow_out_r": P[g(float(_brow_centre(np.array(34.0))), -34.0)],
        "ear_l": ear_l,
        "ear_r": ear_r,
        "jaw_l": P[g(-40.0, 62.0)],
        "jaw_r": P[g(-40.0, -62.0)],
    }


def _g3(Q: np.ndarray, c: np.ndarray, s) -> np.ndarray:
    s = np.broadcast_to(np.asarray(s, np.float64), (3,))
    return _gauss(*((Q - c) / s).T)


def _pair(Q: np.ndarray, cl: np.ndarray, cr: np.ndarray, s) -> np.ndarray:
    return _g3(Q, cl, s) + _g3(Q, cr, s)


def _identity_fields(ctx: _Ctx, Q: np.ndarray) -> list[np.ndarray]:
    R = _refs(ctx)
    x, y, z = Q.T
    sx = np.sign(x)
    one = np.ones_like(x)
    zero = np.zeros_like(x)
    head = _smoothstep(-0.13, -0.07, y)
    V3 = lambda a, b, c: np.stack(np.broadcast_arrays(a, b, c), -1).astype(np.float64)  # noqa: E731
    em = _eye_masks(ctx, Q)
    out = []
    out.append(V3(x * head, zero, zero))  # head_width
    out.append(V3(zero, zero, np.minimum(z - 0.03, 0.0) * head))  # head_length
    out.append(V3(zero, np.maximum(y - 0.02, 0.0), zero))  # head_height
    out.append(V3(zero, np.minimum(y - 0.0, 0.0) * _smoothstep(-0.04, 0.03, z) * _smoothstep(-0.16, -0.1, y), zero))
    jaw = _g3(Q, np.array([0.0, -0.075, 0.0]), (1.0, 0.025, 0.04)) * _smoothstep(-0.06, 0.0, z)
    out.append(V3(x * jaw, zero, zero))  # jaw_width
    out.append(V3(zero, -_g3(Q, R["chin"], 0.02), zero))  # chin_height
    out.append(V3(zero, zero, _g3(Q, R["chin"], 0.02)))  # chin_protrusion
    ch = _pair(Q, R["cheek_l"], R["cheek_r"], 0.02)
    out.append(V3(0.7 * sx * ch, zero, 0.5 * ch))  # cheek_fullness
    out.append(V3(zero, -_g3(Q, R["nose_tip"], (0.012, 0.012, 0.015)), 0.3 * _g3(Q, R["nose_tip"], 0.012)))
    out.append(V3((x / 0.015) * _g3(Q, R["nose_base"], (0.015, 0.01, 0.02)), zero, zero))  # nose_width
    out.append(V3(zero, zero, _g3(Q, R["bridge"], (0.006, 0.012, 0.02))))  # nose_bridge
    out.append(V3(zero, zero, _g3(Q, R["nose_tip"], 0.008)))  # nose_tip
    m_eyes = em.sum(0)
    out.append(V3(np.tanh(x / 0.008) * m_eyes, zero, zero))  # eye_spacing
    es = np.zeros_like(Q)
    for k in range(2):
        es += em[k][:, None] * (Q - ctx.eye_c[k])
    out.append(es)  # eye_size (similarity about each eye centre)
    out.append(V3(zero, _pair(Q, R["brow_l"], R["brow_r"], (0.02, 0.01, 0.02)), zero))  # brow_height
    lm = _g3(Q, R["mouth"], (0.022, 0.01, 0.012))
    out.append(V3(zero, 0.25 * (y - R["mouth"][1]) / 0.004 * lm, lm))  # lip_thickness
    out.append(V3((x / 0.025) * _g3(Q, R["mouth"], (0.03, 0.012, 0.02)), zero, zero))  # lip_width
    ear_m = np.stack([_g3(Q, R["ear_l"], (0.03, 0.03, 0.02)), _g3(Q, R["ear_r"], (0.03, 0.03, 0.02))])
    side = np.stack([x > 0.05, x < -0.05]).astype(np.float64)
    es2 = np.zeros_like(Q)
    for k, key in enumerate(("ear_l", "ear_r")):
        root = R[key] * np.array([0.9, 1.0, 1.0])
        es2 += (ear_m[k] * side[k])[:, None] * (Q - root)
    out.append(es2)  # ear_size
    ea = np.zeros_like(Q)
    for k, key in enumerate(("ear_l", "ear_r")):
        back = np.maximum(R[key][2] + 0.012 - z, 0.0)
        ea[:, 0] += (2 * (k == 0) - 1) * back * ear_m[k] * side[k] / 0.02
    out.append(ea)  # ear_angle
    # random smooth cubic fields
    rng = np.random.default_rng(_SEED)
    X, Y, Z = x / 0.075, (y + 0.01) / 0.11, z / 0.1
    mons = []
    for i in range(4):
        for j in range(4 - i):
            for k in range(4 - i - j):
                mons.append((i, j, k))
    env = _smoothstep(-0.19, -0.12, y)
    for r in range(41):
        coef = rng.standard_normal((len(mons), 3)) / np.array([1.0 + sum(m) for m in mons])[:, None]
        sym = (r % 4) != 3

        def field(X, Y, Z, coef=coef):
            f = np.zeros((len(X), 3))
            for (i, j, k), c in zip(mons, coef, strict=True):
                f += np.outer(X**i * Y**j * Z**k, c)
            return f

        f = field(X, Y, Z)
        fm = field(-X, Y, Z) * np.array([-1.0, 1.0, 1.0])
        out.append((0.5 * (f + fm) if sym else 0.5 * (f - fm)) * env[:, None])
    del one
    return out


def _constrain(ctx: _Ctx, d: np.ndarray, em: np.ndarray, rigid_eyes: bool = True) -> np.ndarray:
    """Apply the rigid-eye and closed-mouth constraints to a field evaluated at verts + 2 eye centres."""
    V = len(ctx.verts)
    out = d[:V].copy()
    if rigid_eyes:
        mt = np.clip(em[:, :V].sum(0), 0, 1)
        out *= (1 - mt)[:, None]
        for k in range(2):
            out += em[k, :V, None] * d[V + k][None]
    up, lo = ctx.mouth_up[1:-1], ctx.mouth_lo[1:-1]
    avg = 0.5 * (out[up] + out[lo])
    out[up] = avg
    out[lo] = avg
    return out


def _round16(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float16).astype(np.float64)


def _shape_components(ctx: _Ctx) -> np.ndarray:
    V = len(ctx.verts)
    Q = np.concatenate([ctx.verts, ctx.eye_c])
    em = _eye_masks(ctx, Q)
    raw = _identity_fields(ctx, Q)
    cols = []
    for k, d in enumerate(raw):
        cols.append(_constrain(ctx, d, em, rigid_eyes=SHAPE_COMPONENT_NAMES[k] != "eye_size").reshape(-1))
    M = np.stack(cols, 1)  # (3V, S)
    # Gram-Schmidt in column order == thin QR with a positive diagonal of R.
    Qm, Rm = np.linalg.qr(M)
    M = Qm * np.sign(np.diag(Rm))[None]
    out = M.reshape(V, 3, -1)
    mags = np.linalg.norm(out, axis=1).max(0)
    out = out * (np.array(SHAPE_COMPONENT_STD) / mags)[None, None]
    return _round16(out)


def _lid_rotation(ctx: _Ctx, k: int, up_angle: float, lo_angle: float) -> np.ndarray:
    """Displacement field (V, 3): half of rotating the upper lid by -up_angle*gap and the lower by +lo_angle*gap.

    ``gap`` is the opening (upper minus lower margin elevation) at each column, so up + lo = 1 closes the eye at +2.
    """
    V = len(ctx.verts)
    d = np.zeros((V, 3))
    ids, psi, e, loc, side, psi_n = ctx.lid_info[k][:6]
    c = ctx.eye_c[k]
    j0, j1 = ctx.eye_cols[k]
    e_up, e_lo = _margin_elev(psi_n)
    gap = np.where(np.abs(psi_n) < 1.0, e_up - e_lo, 0.0)
    w_p = _smoothstep(1.45, 1.0, np.abs(psi_n)) * loc
    f_up = np.clip(1.0 - (e - e_up) / np.deg2rad(80.0), 0, 1) * w_p
    f_lo = np.clip(1.0 - (e_lo - e) / np.deg2rad(50.0), 0, 1) * w_p
    ang = np.where(side > 0, -up_angle * gap * f_up, lo_angle * gap * f_lo)
    p = ctx.verts[ids]
    d[ids] = 0.5 * (_rot_x(p, c, ang) - p)
    # socket bag rings follow their margin vertex, fading to the back pole
    rows = ctx.socket_rows[k]
    loop = rows[0]
    pos = {int(v): i for i, v in enumerate(ids)}
    ang_loop = np.array([ang[pos[int(v)]] for v in loop])
    K = len(rows) - 1
    for r in range(1, K):
        t = r / K
        q = ctx.verts[rows[r]]
        d[rows[r]] = 0.5 * (_rot_x(q, c, (1 - t) * ang_loop) - q)
    return d


def _normalise(d: np.ndarray, amp: float) -> np.ndarray:
    m = np.linalg.norm(d, axis=1).max()
    return d * (amp / m) if m > 0 else d


def _expression_components(ctx: _Ctx) -> np.ndarray:
    Q = np.concatenate([ctx.verts, ctx.eye_c])
    em = _eye_masks(ctx, Q)
    R = _refs(ctx)
    x, y, z = Q.T
    sx = np.sign(x)
    zero = np.zeros_like(x)
    V3 = lambda a, b, c: np.stack(np.broadcast_arrays(a, b, c), -1).astype(np.float64)  # noqa: E731
    y_m = R["mouth"][1]
    lowface = _smoothstep(y_m + 0.012, y_m - 0.03, y) * _smoothstep(-0.03, 0.03, z) * _smoothstep(-0.14, -0.1, y)
    gcl = _g3(Q, R["corner_l"], (0.012, 0.012, 0.015))
    gcr = _g3(Q, R["corner_r"], (0.012, 0.012, 0.015))
    gchl = _g3(Q, R["cheek_l"] + [0, -0.01, 0], 0.018)
    gchr = _g3(Q, R["cheek_r"] + [0, -0.01, 0], 0.018)
    smile_l = V3(0.5 * gcl + 0.0 * x, 1.0 * gcl + 0.35 * gchl, -0.5 * gcl + 0.2 * gchl)
    smile_r = V3(-0.5 * gcr, 1.0 * gcr + 0.35 * gchr, -0.5 * gcr + 0.2 * gchr)
    gm = _g3(Q, R["mouth"], (0.02, 0.01, 0.012))
    gbin = _pair(Q, R["brow_in_l"], R["brow_in_r"], (0.012, 0.012, 0.02))
    gbout = _pair(Q, R["brow_out_l"], R["brow_out_r"], (0.012, 0.012, 0.02))
    gbl = _g3(Q, R["brow_l"], (0.025, 0.013, 0.02))
    gbr = _g3(Q, R["brow_r"], (0.025, 0.013, 0.02))
    gch2 = _pair(Q, R["cheek_l"] + [0.0, -0.022, -0.005], R["cheek_r"] + [0.0, -0.022, -0.005], 0.02)
    gnose_up = _g3(Q, R["bridge"] + [0, -0.006, -0.004], (0.014, 0.008, 0.02))
    galae = _g3(Q, R["nose_base"] + [0.0, 0.004, -0.004], (0.016, 0.008, 0.015))
    gchin = _g3(Q, R["chin"] + [0, 0.01, 0], (0.02, 0.015, 0.02))
    fields: dict[str, tuple[np.ndarray, float]] = {
        "jaw_drop_helper": (V3(zero, -lowface, -0.3 * lowface), 0.004),
        "smile": (smile_l + smile_r, 0.0035),
        "smile_left": (smile_l, 0.0035),
        "smile_right": (smile_r, 0.0035),
        "frown": (V3(0.2 * np.tanh(x / 0.01) * (gcl + gcr), -(gcl + gcr), zero), 0.003),
        "brow_raise_inner": (V3(zero, gbin, 0.2 * gbin), 0.003),
        "brow_raise_outer": (V3(zero, gbout, 0.1 * gbout), 0.003),
        "brow_lower": (V3(-0.4 * np.tanh(x / 0.01) * (gbl + gbr), -(gbl + gbr), 0.15 * (gbl + gbr)), 0.002),
        "pucker": (V3(-0.8 * (x / 0.02) * gm, zero, gm), 0.003),
        "lip_press": (V3(zero, -0.8 * (y - y_m) / 0.004 * gm, -0.3 * gm), 0.0015),
        "mouth_stretch": (V3(np.tanh(x / 0.01) * (gcl + gcr), -0.5 * (gcl + gcr), -0.2 * (gcl + gcr)), 0.003),
        "cheek_puff": (V3(sx * gch2, zero, 0.5 * gch2), 0.004),
        "nose_wrinkle": (V3(zero, gnose_up, 0.3 * gnose_up), 0.002),
        "brow_raise_left": (V3(zero, gbl, 0.15 * gbl), 0.003),
        "brow_raise_right": (V3(zero, gbr, 0.15 * gbr), 0.003),
        "mouth_shift": (V3(gm * _smoothstep(-0.14, -0.1, y), zero, zero), 0.003),
        "chin_raise": (V3(zero, gchin, 0.3 * gchin), 0.0025),
        "nose_flare": (V3((x / 0.012) * galae, zero, zero), 0.0012),
        "jaw_forward_helper": (V3(zero, zero, lowface), 0.003),
    }
    cols = []
    for name in EXPRESSION_COMPONENT_NAMES:
        if name.startswith("blink_") or name.startswith("squint_"):
            k = 1 if name.endswith("left") else 0
            if name.startswith("blink_"):
                d = _lid_rotation(ctx, k, 0.8, 0.2)
            else:
                d = _lid_rotation(ctx, k, 0.12, 0.4)
                key = "cheek_l" if k == 1 else "cheek_r"
                gc = _g3(Q, R[key] + [0.0, 0.012, -0.004], (0.015, 0.008, 0.015))
                lift = _constrain(ctx, V3(zero, gc, 0.3 * gc), em)
                d = d + _normalise(lift, 0.0012)
        else:
            f, amp = fields[name]
            d = _normalise(_constrain(ctx, f, em), amp)
        cols.append(d)
    return _round16(np.stack(cols, -1))


# ----------------------------------------------------------------------------------------------------------------
# Landmarks
# ----------------------------------------------------------------------------------------------------------------
def _face_lookup(ctx: _Ctx) -> dict[tuple[int, int, int], int]:
    skin = np.where(ctx.face_part == _SKIN)[0]
    return {(int(ctx.face_band[f]), int(ctx.face_col[f]), int(ctx.face_kind[f])): int(f) for f in skin}


def _col_index(ctx: _Ctx, phi: float) -> float:
    return float(np.interp(phi, ctx.phi, np.arange(_NC)))


def _row_index(ctx: _Ctx, beta: float) -> float:
    return float(np.interp(-beta, -ctx.beta, np.arange(_NR)))


def _grid_point(ctx: _Ctx, lut, row: float, col: float, side: str | None = None) -> tuple[int, np.ndarray]:
    """Face + barycentrics of the grid point at fractional (row, col); ``side`` picks a cut row's side."""
    if side == "upper":
        band, v = int(round(row)) - 1, 1.0
    elif side == "lower":
        band, v = int(round(row)), 0.0
    else:
        band = min(int(math.floor(row)), _NR - 2)
        v = row - band
    j = min(int(math.floor(col)), _NC - 1)
    u = col - j
    if u >= v:
        f = lut[(band, j, 0)]
        bary = np.array([1 - u, v, u - v])
    else:
        f = lut[(band, j, 1)]
        bary = np.array([1 - v, v - u, u])
    return f, bary


# Where the static points sit, from the AFW definition check (benchmarks/bench_landmark_definition.py, near-frontal
# faces of both sets and their mirror images, mean offset per point in % of the outer inter-ocular distance). Before:
# points 31/35 and 32/34 sat 2.8 and 2.1 inside 300W's, the upper lip's 49/53 and 50/52 1.9 and 2.5 outside them,
# the inner-lip corners 60/64 (then on the mouth corners) 3.9 outside, the outer brow ends 2.2 outside and the lid
# points next to the inner eye corners 2.1-2.3 too close to them (mean |offset| brows 1.17, nose 2.08, eyes 1.47,
# mouth 2.18); now 0.67 / 1.47 / 1.00 / 1.15. The network trained on the old points carried the same offsets onto
# the real faces (nose wings 3.1 inside, inner-lip corners 4.3 outside); with these its inner-point NME on the AFW dev
# set fell from 6.8-6.9 to 6.5 %.
_BROW_POINTS = ((7.7, 18.7), (16.6, 21.9), (27.2, 23.3), (38.1, 22.1), (47.6, 16.8))
"""(|phi|, beta) of points 21..17 (22..26 mirrored): on the brow centre line, the outer end 0.9 degrees below it."""
_NOSE_BASE_PHI = (9.5, 5.1)
"""|phi| of the nose-base points 31/35 and 32/34."""
_EYE_T = (1 / 3, 0.6)
"""Lid points 37/41 and 38/40: fractions of the way from the outer to the inner eye corner (mirrored for 43-47)."""
_UPPER_LIP_T = (0.25, 0.6)
_LOWER_LIP_T = (0.28, 0.64)
"""Outer-lip points 50/52, 49/53 and 58/56, 59/55: longitude as a fraction of the mouth corners'."""
_INNER_LIP_T = (0.85, 0.255, 0.265)
"""Inner-lip corners 60/64, then 61/63 and 67/65, on the mouth cut: fractions of the mouth corners' longitude."""


def _static_landmarks(ctx: _Ctx) -> tuple[np.ndarray, np.ndarray]:
    lut = _face_lookup(ctx)
    pts: list[tuple[int, np.ndarray]] = []

    def at(beta: float, phi: float, side: str | None = None, col: float | None = None) -> None:
        c = _col_index(ctx, phi) if col is None else col
        r = _row_index(ctx, beta)
        pts.append(_grid_point(ctx, lut, r, c, side))

    # 17-26 brows
    for a, b in (*((-a, b) for a, b in _BROW_POINTS[::-1]), *_BROW_POINTS):
        at(b, a)
    # 27-30 nose ridge, 31-35 nose base
    NW, NM = _NOSE_BASE_PHI
    top = _BETA_EYE + 2.0
    for t in (0.0, 1 / 3, 2 / 3, 1.0):
        at(top + t * (_BETA_TIP - top), 0.0)
    for a, b in (
        (-NW, _BETA_SUB + 3.5),
        (-NM, _BETA_SUB + 1.2),
        (0.0, _BETA_SUB + 0.3),
        (NM, _BETA_SUB + 1.2),
        (NW, _BETA_SUB + 3.5),
    ):
        at(b, a)
    # 36-47 eyes
    for k in range(2):
        j0, j1 = ctx.eye_cols[k]
        # the columns run towards +x: from the outer corner of the right eye (k 0), from the inner one of the left
        t1, t2 = _EYE_T if k == 0 else (1.0 - _EYE_T[1], 1.0 - _EYE_T[0])
        for t, side in ((0.0, "upper"), (t1, "upper"), (t2, "upper"), (1.0, "upper"), (t2, "lower"), (t1, "lower")):
            at(_BETA_EYE, 0.0, side, col=j0 + t * (j1 - j0))
    # 48-59 outer lips, 60-67 inner lips
    jm0, jm1 = ctx.mouth_cols
    half = float(np.abs(ctx.phi[[jm0, jm1]]).max())
    up_h = lambda a: float(_lip_heights(np.array(abs(a)), half)[0])  # noqa: E731
    lo_h = lambda a: float(_lip_heights(np.array(abs(a)), half)[1])  # noqa: E731
    u1, u2 = _UPPER_LIP_T
    l1, l2 = _LOWER_LIP_T
    ic, iu, il = _INNER_LIP_T
    at(_BETA_MOUTH, 0.0, "upper", col=float(jm0))
    for a in (-u2, -u1, 0.0, u1, u2):
        at(_BETA_MOUTH + 0.85 * up_h(a * half), a * half)
    at(_BETA_MOUTH, 0.0, "upper", col=float(jm1))
    for a in (l2, l1, 0.0, -l1, -l2):
        at(_BETA_MOUTH - 0.85 * lo_h(a * half), a * half)
    at(_BETA_MOUTH, -ic * half, "upper")
    for a in (-iu, 0.0, iu):
        at(_BETA_MOUTH, a * half, "upper")
    at(_BETA_MOUTH, ic * half, "upper")
    for a in (il, 0.0, -il):
        at(_BETA_MOUTH, a * half, "lower")
    assert len(pts) == NUM_STATIC_LANDMARKS
    return np.array([p[0] for p in pts], np.int64), np.stack([p[1] for p in pts])


_CONTOUR_CENTRE_Y = -0.03  # the jaw landmarks' rays start at (0, -0.03, 0), below the nose
CONTOUR_LEVELS_DEG: tuple[float, ...] = (
    -118.6, -105.7, -90.8, -74.9, -59.0, -43.7, -28.7, -14.3, 0.0,
    14.3, 28.7, 43.7, 59.0, 74.9, 90.8, 105.7, 118.6,
)  # fmt: skip
"""Directions (degrees in the frontal image plane, 0 = down, positive towards the subject's left = +x) of the rays
from (0, -0.03, 0) that place iBUG jaw points 0..16 on the built-in head: the directions of 300W's mean frontal
jaw points seen from there (AFW dev set near-frontal mean, aligned on the inner points and mirrored to be
symmetric; ``benchmarks/bench_landmark_definition.py``): point 0 at eye-corner height, about 15 degrees apart."""
_CONTOUR_MAX_PHI = 88.0  # contour lines end here at the latest: the face label wraps round under the ears
CONTOUR_LINE_POINTS = 128
"""Candidate surface points per jaw landmark contour line of the built-in head."""


def _bary_pattern(n: int = 5) -> np.ndarray:
    return np.array([(i / n, j / n, (n - i - j) / n) for i in range(n + 1) for j in range(n + 1 - i)])


def _contour_yaw_deg(row: int) -> int:
    return row if row <= MAX_CONTOUR_YAW_DEG else MAX_CONTOUR_YAW_DEG - row


def _contour_lines(ctx: _Ctx, num: int = CONTOUR_LINE_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """(17, num) faces and (17, num, 3) barycentrics of the jaw landmarks' contour lines (module docstring)."""
    L = SYNTH.id
    cen = ctx.verts[ctx.faces].mean(1)
    front = np.degrees(np.abs(np.arctan2(cen[:, 0], cen[:, 2]))) <= _CONTOUR_MAX_PHI
    fa = np.where((ctx.face_part == _SKIN) & (ctx.labels == L("face")) & front)[0]
    tri = ctx.verts[ctx.faces[fa]]  # (F, 3, 3)
    eye3 = np.eye(3)
    centre = np.array([0.0, _CONTOUR_CENTRE_Y, 0.0])
    faces_out = np.zeros((NUM_CONTOUR_LANDMARKS, num), np.int64)
    bary_out = np.zeros((NUM_CONTOUR_LANDMARKS, num, 3))
    psi = np.deg2rad(np.linspace(0.0, 180.0, 721))
    for k, lev in enumerate(np.deg2rad(CONTOUR_LEVELS_DEG)):
        d = np.array([math.sin(lev), -math.cos(lev), 0.0])  # outward in the frontal image plane
        normal = np.cross(d, [0.0, 0.0, 1.0])  # the plane holds d and the depth axis
        e = (tri - centre) @ normal  # (F, 3) signed distances of the corners
        ends, bars = [], []
        for a, b in ((0, 1), (1, 2), (2, 0)):
            cut = (e[:, a] > 0) != (e[:, b] > 0)
            t = np.where(cut, e[:, a] / np.where(cut, e[:, a] - e[:, b], 1.0), 0.0)
            ends.append((tri[:, a] + t[:, None] * (tri[:, b] - tri[:, a]), cut))
            bars.append(eye3[a] + t[:, None] * (eye3[b] - eye3[a]))
        # each crossing triangle has exactly two cut edges: its segment in the plane
        cuts = np.stack([c for _, c in ends], 1)  # (F, 3)
        seg = np.where(cuts.sum(1) == 2)[0]
        first = np.argmax(cuts[seg], 1)
        second = 2 - np.argmax(cuts[seg][:, ::-1], 1)
        pts = np.stack([p for p, _ in ends], 1)[seg]  # (S, 3 edges, 3)
        bb = np.stack(bars, 1)[seg]
        rows = np.arange(len(seg))
        p0, p1 = pts[rows, first], pts[rows, second]
        b0, b1 = bb[rows, first], bb[rows, second]
        u0, w0 = (p0 - centre) @ d, (p0 - centre)[:, 2]  # in-plane coordinates: outward, depth
        u1, w1 = (p1 - centre) @ d, (p1 - centre)[:, 2]
        # intersect the in-plane rays (sin psi, cos psi) from the centre with every segment
        ru, rw = np.sin(psi)[:, None], np.cos(psi)[:, None]
        du, dw = u1 - u0, w1 - w0
        den = ru * dw - rw * du  # (P, S)
        ok = np.abs(den) > 1e-15
        den = np.where(ok, den, 1.0)
        s_par = (u0 * dw - w0 * du) / den  # distance along the ray
        t_par = (u0 * rw - w0 * ru) / den  # position on the segment
        hit = ok & (t_par >= 0) & (t_par <= 1) & (s_par > 0)
        dist = np.where(hit, s_par, -1.0)
        best = dist.argmax(1)
        found = np.where(dist.max(1) > 0)[0]
        # the line is the longest run of hits (gaps under 1 degree bridged): below the lips for the chin, not the
        # philtrum; the cheek, not a patch of face label under the jaw further back
        cut_at = np.where(np.diff(found) > 4)[0] + 1
        runs = np.split(found, cut_at)
        found = runs[int(np.argmax([psi[r[-1]] - psi[r[0]] for r in runs]))]
        lo, hi = psi[found[0]], psi[found[-1]]
        targets = np.searchsorted(psi, np.linspace(lo, hi, num) - 1e-12)
        for i, ti in enumerate(targets):
            j = found[np.searchsorted(psi[found], psi[ti] - 1e-12).clip(0, len(found) - 1)]
            sj = best[j]
            tt = t_par[j, sj]
            faces_out[k, i] = fa[seg[sj]]
            bary_out[k, i] = b0[sj] + tt * (b1[sj] - b0[sj])
    return faces_out, bary_out


def _contour_table(ctx: _Ctx, pixel: float = 0.001, rows: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(79, 17) faces and (79, 17, 3) barycentrics of the dynamic jaw contour (see the module docstring)."""
    L = SYNTH.id
    cen = ctx.verts[ctx.faces].mean(1)
    region = (cen[:, 1] < 0.05) & (cen[:, 1] > -0.15) & (cen[:, 2] > -0.07)
    occ = np.where(np.isin(ctx.face_part, (_SKIN, _EYEBALL_R, _EYEBALL_L)) & region)[0]
    is_face = ctx.labels[occ] == L("face")
    tri = ctx.verts[ctx.faces[occ]]  # (F, 3, 3)
    edge = np.linalg.norm(tri - np.roll(tri, 1, axis=1), axis=2).max(1)
    order_n = np.clip(np.ceil(edge / (0.45 * pixel)), 2, 16).astype(np.int64)  # samples closer than half a pixel
    groups = [(n, np.where(order_n == n)[0], _bary_pattern(int(n))) for n in np.unique(order_n)]
    centre = np.array([0.0, _CONTOUR_CENTRE_Y, 0.0])
    levels = np.deg2rad(np.asarray(CONTOUR_LEVELS_DEG))
    half = 0.5 * np.diff(levels).min()
    faces_out = np.zeros((NUM_YAW_BINS, NUM_CONTOUR_LANDMARKS), np.int64)
    bary_out = np.zeros((NUM_YAW_BINS, NUM_CONTOUR_LANDMARKS, 3))
    for row in range(NUM_YAW_BINS) if rows is None else rows:
        a = math.radians(-_contour_yaw_deg(row))
        Ry = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
        t = tri @ Ry.T
        nz = np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0])[:, 2]
        pts, fid, bar = [], [], []
        for _, members, bp in groups:
            members = members[nz[members] > 0]
            sp = (bp[None, :, :, None] * t[members][:, None, :, :]).sum(2)  # (Fg, S, 3)
            pts.append(sp.reshape(-1, 3))
            fid.append(np.repeat(members, len(bp)))
            bar.append(np.tile(bp, (len(members), 1)))
        sp = np.concatenate(pts)
        fid = np.concatenate(fid)
        bar = np.concatenate(bar)
        ix = np.floor(sp[:, 0] / pixel + 0.5).astype(np.int64)  # pixel centres at multiples of ``pixel``:
        iy = np.floor(sp[:, 1] / pixel + 0.5).astype(np.int64)  # a mirror-symmetric grid
        key = (ix + 4096) * 8192 + (iy + 4096)
        order = np.argsort(-sp[:, 2], kind="stable")  # nearest (largest z) first
        _, first = np.unique(key[order], return_index=True)
        win = order[first]  # sample winning each pixel
        # drop face pixels next to a nearer non-face surface (occlusion boundaries at the ear and nose), so
        # the points stay visible under small changes of the view (perspective cameras)
        gx, gy = ix[win] - ix[win].min() + 4, iy[win] - iy[win].min() + 4
        zimg = np.full((gx.max() + 5, gy.max() + 5), -np.inf)
        other = ~is_face[fid[win]]
        zimg[gx[other], gy[other]] = sp[win[other], 2]
        zmax = maximum_filter(zimg, size=7, mode="constant", cval=-np.inf)
        unoccluded = zmax[gx, gy] <= sp[win, 2] + 0.003
        win = win[~other & unoccluded]
        wf = fid[win]
        px = np.stack([ix[win] * pixel, iy[win] * pixel], 1)
        c2 = Ry @ centre
        dx, dy = px[:, 0] - c2[0], px[:, 1] - c2[1]
        ang = np.arctan2(dx, -dy)
        dist = np.hypot(dx, dy)
        for k, lev in enumerate(levels):
            sel = np.where(np.abs(ang - lev) <= half)[0]
            far = sel[dist[sel] >= dist[sel].max() - 0.0008]  # outermost within 0.8 mm, then closest to the ray
            best = far[np.argmin(np.abs(ang[far] - lev))]
            faces_out[row, k] = occ[wf[best]]
            bary_out[row, k] = bar[win[best]]
    return faces_out, bary_out


# ----------------------------------------------------------------------------------------------------------------
# Storage and public API
# ----------------------------------------------------------------------------------------------------------------
_HALF_KEYS = ("shapedirs", "exprdirs")  # stored as float16 (the build rounds them to float16 values already)
_INFO_KEYS = ("vertex_part", "face_part", "eye_centres", "mouth_upper", "mouth_lower")


def _asset_path() -> Path:
    return Path(__file__).resolve().parent / "assets" / ASSET_NAME


def save_model_npz(model: FlameModel, path: str | Path, info: HeadInfo | None = None) -> None:
    """Write ``model`` (and optionally its :class:`HeadInfo`) to an ``.npz`` with byte-identical output per content.

    Blendshapes are stored as float16 (the built-in head's are float16 values), everything else as is. Zip entries
    carry a fixed timestamp, so the same model always gives the same bytes.
    """
    arrays: dict[str, np.ndarray] = {}
    for f in fields(model):
        value = getattr(model, f.name)
        if value is None:
            continue
        if f.name == "name":
            arrays["name"] = np.array(str(value))
        elif f.name in _HALF_KEYS:
            arrays[f.name] = np.asarray(value).astype(np.float16)
        else:
            arrays[f.name] = np.asarray(value)
    if info is not None:
        for key in _INFO_KEYS:
            arrays["info_" + key] = np.asarray(getattr(info, key))
        for k in range(2):
            arrays[f"info_eye_upper_{k}"] = info.eye_upper[k]
            arrays[f"info_eye_lower_{k}"] = info.eye_lower[k]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            arr = np.asarray(arrays[key])
            arr = arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)
            np.lib.format.write_array(buf, arr, allow_pickle=False)
            zi = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            zi.compress_type = zipfile.ZIP_DEFLATED
            zi.external_attr = 0o644 << 16
            zf.writestr(zi, buf.getvalue())


def load_builtin_npz(path: str | Path) -> tuple[FlameModel, HeadInfo | None]:
    """Read a file written by :func:`save_model_npz` (blendshapes back to float32).

    Raises:
        ValueError: a missing key or inconsistent shapes (message names ``path``).
    """
    with np.load(path, allow_pickle=False) as z:
        kw: dict[str, object] = {}
        for f in fields(FlameModel):
            if f.name in z.files:
                kw[f.name] = str(z[f.name].reshape(-1)[0]) if f.name == "name" else z[f.name]
        optional = ("uv_coords", "uv_faces", "face_labels", "contour_line_faces", "contour_line_bary", "name")
        missing = [f.name for f in fields(FlameModel) if f.name not in kw and f.name not in optional]
        if missing:
            raise ValueError(f"{path}: missing arrays {missing}")
        for key in _HALF_KEYS:
            kw[key] = np.asarray(kw[key]).astype(np.float32)
        model = FlameModel(**kw)  # type: ignore[arg-type]
        info = None
        if "info_vertex_part" in z.files:
            info = HeadInfo(
                **{key: z["info_" + key] for key in _INFO_KEYS},
                eye_upper=(z["info_eye_upper_0"], z["info_eye_upper_1"]),
                eye_lower=(z["info_eye_lower_0"], z["info_eye_lower_1"]),
            )
    model.validate(str(path))
    return model, info


def build_head_model() -> FlameModel:
    """Build the built-in head from scratch (deterministic; takes seconds, see :func:`builtin_head_model`).

    Returns:
        :class:`~next3d_gen.flame.FlameModel`, identical to the stored asset.
    """
    return _build()[0]


@functools.lru_cache(maxsize=1)
def _cached() -> tuple[FlameModel, HeadInfo]:
    path = _asset_path()
    if path.is_file():
        model, info = load_builtin_npz(path)
        if info is not None:
            return model, info
    log.warning("built-in head asset %s missing or incomplete; building it (takes a while)", path.name)
    return _build()


def builtin_head_model() -> FlameModel:
    """The built-in procedural head in FLAME format (needs no files; loaded once per process, then copied).

    Returns:
        A fresh copy of the cached :class:`~next3d_gen.flame.FlameModel`: 60 identity components
        (:data:`SHAPE_COMPONENT_NAMES`), 23 expression components (:data:`EXPRESSION_COMPONENT_NAMES`), 5 joints,
        UVs and 20-class face labels. See the module docstring for the frame and the construction.
    """
    return copy.deepcopy(_cached()[0])


def head_info() -> HeadInfo:
    """Construction data of the built-in head (vertex / face parts, eye centres, cut vertices), a fresh copy."""
    return copy.deepcopy(_cached()[1])


def _main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m next3d_gen.head_model", description="Build the built-in head asset.")
    ap.add_argument("--write", action="store_true", help=f"build and write next3d_gen/assets/{ASSET_NAME}")
    ap.add_argument("--out", default=None, help="write to this path instead")
    args = ap.parse_args(argv)
    if not args.write and args.out is None:
        ap.print_help()
        return 0
    model, info = _build()
    out = Path(args.out) if args.out else _asset_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    save_model_npz(model, out, info)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB): V={model.num_vertices} F={len(model.faces)}")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
