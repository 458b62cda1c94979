"""Procedural image renderer: a shaded, textured head over a random background, with no assets.

The renderer paints the head in the label rasterization the pipeline already made (``scene.fragments`` and
``scene.annotations``), so every painted region sits exactly on its label:

* **Texture space.** Each foreground pixel gets its *rest-pose* position (the template vertices of its face,
  weighted by its barycentrics), normalised to the template's bounding box. Procedural textures are functions of
  that position, so they stick to the surface under pose and expression and need no UV layout (real FLAME and the
  built-in head work alike). Smooth noise comes from fixed per-vertex noise bases (computed once per model) mixed
  with per-sample random weights and interpolated like any vertex attribute; pore-scale noise is per pixel. Soft
  region weights (cheeks, under-eyes, beard area) are anchored on the rest-pose landmarks once per model.
* **Albedo.** Skin base colour from a light-to-dark scale of human skin tones (``skin_tone_range`` picks the
  position on it) with per-identity redness/yellowness/brightness; low-frequency blotches, mid and fine noise;
  cheek flush; darker/redder tones on ears, neck, eye regions; optional freckles and stubble; makeup (eye shadow on
  the upper lids, blush on the cheeks, lipstick). Eyebrows are
  noise-modulated strokes on the eyebrow classes, lips a lip tone on the lip classes, the inner mouth dark with
  optional teeth (an upper row showing about 9 mm below the upper lip, as incisors do, a lower row above the lower
  lip, dark lines between them, darker towards the corners) and a tongue (from
  the mouth's screen-space frame given by the lip landmarks), eyeballs get sclera / iris (radial streaks and fibres,
  wavy collarette, crypts, dark ruff and limbal ring, optional amber centre) / pupil from the direction out of each
  eyeball's centre in the rest pose (the iris follows the eye joint) and a shadow under the lids; the lids get a
  lash line and lash strokes leaning towards the temple (upper: long and dense; lower: short and sparse) and a wet
  lower margin (:mod:`next3d_gen.render.face_detail`). The scalp gets hair (opaque) or bare skin.
* **Hair** (:mod:`next3d_gen.render.hair`): scalp hair, fringe, hair volume and flyaways share one flow (strands
  running away from a point beyond the crown, straight to curly) and strand texture (locks, strands, fine strands,
  darker roots), shaded with Kajiya-Kay diffuse and two shifted anisotropic highlights that break up along the
  strands; the volume's soft edge turns into strands and loose flyaway strands with partial alpha leave the outline.
  Beards (full, goatee, moustache, chin; regions anchored on the rest-pose landmarks) are a hair layer on the skin
  with short kinked strands running away from the nose tip and a ragged, thinning edge, composited over the shaded
  skin by their coverage in linear light; stubble stays in the skin's albedo.
* **Shading** per pixel with the annotation normals (camera frame): hemisphere ambient (tinted by the background's
  upper / lower half: light bounced by the scene) + 1-3 coloured directional lights, wrapped Lambert diffuse +
  Blinn-Phong specular (per-region strength and exponent; stronger and sharper on an oily T-zone; the skin's
  highlights see a normal perturbed by fine bumps) in linear RGB, then sRGB encoding; the direct light is scattered
  under the skin (per-channel wrap and shadow blur, red widest: soft, reddish terminators and shadow edges); hair
  pixels are shaded as hair; the key light, seen as an area light, makes a catchlight in the eyes. Ambient
  occlusion and soft shadows come from the rasterized depth at reduced resolution (:mod:`next3d_gen.render.lighting`):
  occlusion where the surroundings rise above a pixel's tangent plane (eye sockets, nose sides, under the chin), and
  shadow rays marched over the depth map towards each light (the nose's, the brows' and the chin's shadows) with a
  penumbra that widens with distance.
* **Background**: gradient, radial, fractal noise, colour field or random shapes, optional blur; optional
  shoulders below the neck (clothes: :mod:`next3d_gen.render.clothing`; their collar also covers the neck below it)
  and hair volume around the head (drawn behind the head, with a soft alpha; long hair also falls from the scalp
  beside the face and neck, over the clothes or behind them).
* **Occluders** in front of the head: hair fringe over the forehead, glasses (ray-cast in 3D against a frame built
  from the posed landmarks, depth-tested against the head), hands and random objects (screen space). Their
  head pixels are returned in ``occluder_mask``; the pipeline clears the head geometry there (depth 0, normal 0,
  uv -1) and marks landmarks under them not visible (see :class:`next3d_gen.render.base.RenderOutput`).
  Clear lenses are not occluders; sunglasses are. A clear lens shows the image behind it scaled about the lens
  centre (``lens_magnification_range``) under a glare band (``lens_glare_range``); its landmarks and labels stay
  those of the geometry behind it.
* **Labels of the layers** (``label_override``, :data:`next3d_gen.labels.SYNTH` ids), in drawing order, a layer
  owning a pixel where its coverage (alpha) is >= :data:`next3d_gen.labels.LAYER_COVERAGE_THRESHOLD`: ``hair`` on
  the scalp pixels and fringe pixels painted with hair (both opaque: coverage 1, so no skin shows through; a bare
  scalp keeps ``scalp``), and on background pixels where the coverage of the hair volume (its alpha upsampled like
  the image layer it is drawn on, with strands at its edge that never cross the threshold) and of the flyaway
  strands, ``1 - (1 - volume)(1 - flyaways)``, reaches the threshold; ``eyeglasses`` where the frame's (rims,
  bridge, arms) or a lens's coverage does, depth-tested against the head, over the head or the background, clear
  lenses included except over the eyes and brows, which keep their class behind a clear lens (CelebAMask-HQ's
  rule); ``beard`` on head pixels where a beard's coverage reaches the threshold (a beard is not an
  occluder: the skin's geometry stays); ``background`` where a hand, an object or the clothes (over the neck below
  the collar) cover the pixel. Head pixels under scalp hair, a beard or a clear lens keep their geometry.
* **Anti-aliasing**: the silhouette, depth discontinuities inside the head and the border of the scalp hair are
  blended with a small filter (coverage estimate from the mask; labels keep the rasterized regions); occluders
  are drawn from signed distances with analytic coverage.

Every random choice comes from the ``torch.Generator`` given to :meth:`ProceduralRenderer.render` (drawn on the
generator's device, used on the scene's device), so the same generator state gives the same bytes (for a fixed
torch thread count: reductions may round differently with another thread count). Appearance details (hair strands
and highlights, flyaways, ...) draw from a second generator seeded from a hash of the given one's state
(one per detail, ``_Looks``), so the label layers drawn from the main stream do not change with them.

Speed: the work is on the foreground pixel list (not the full image) except the composition; the background is
drawn at ``background_max_side`` pixels and upsampled. Run it with one torch thread per process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import typing
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from next3d_gen.errors import UserError
from next3d_gen.labels import LAYER_COVERAGE_THRESHOLD, SYNTH
from next3d_gen.render import clothing as cloth_lib
from next3d_gen.render import face_detail as face_lib
from next3d_gen.render import fields as fx
from next3d_gen.render import hair as hair_lib
from next3d_gen.render import lighting as lighting_lib
from next3d_gen.render.base import NO_OVERRIDE, RenderOutput, Scene
from next3d_gen.render.camera_effects import apply_camera_effects
from next3d_gen.render.clutter import draw_clutter

Range = tuple[float, float]

# Class ids (from the label space, never literals).
_C = {name: SYNTH.id(name) for name in SYNTH.classes}
_SEEN_THROUGH_LENSES = torch.tensor([_C[n] for n in ("right_eyeball", "left_eyeball", "right_eyebrow", "left_eyebrow")])
"""Classes that keep their label behind a clear lens, as in CelebAMask-HQ, whose masks paint ``l_eye`` / ``r_eye`` /
``l_brow`` / ``r_brow`` over ``eye_g``: there an eye seen through glasses is an eye."""
_CLUTTER = 5  # index of the clutter kind in ProceduralConfig.background_weights

# Light-to-dark skin-tone scale (sRGB 0-255), roughly Fitzpatrick I-VI plus a very dark tone. Position 0 = lightest.
SKIN_TONES: tuple[tuple[int, int, int], ...] = (
    (246, 214, 196),
    (236, 196, 168),
    (222, 172, 138),
    (198, 144, 106),
    (164, 112, 78),
    (126, 84, 58),
    (92, 60, 42),
    (62, 42, 32),
)
# Hair colours (sRGB): black, dark brown, brown, light brown, blonde, auburn/red, grey, white.
HAIR_COLOURS: tuple[tuple[int, int, int], ...] = (
    (18, 15, 14),
    (42, 30, 22),
    (78, 52, 34),
    (124, 88, 56),
    (196, 158, 102),
    (140, 62, 32),
    (128, 126, 124),
    (214, 210, 204),
)
# Iris colours (sRGB): dark brown, brown, hazel, green, blue, grey.
IRIS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (52, 30, 18),
    (96, 58, 30),
    (118, 92, 48),
    (82, 110, 66),
    (78, 112, 156),
    (118, 128, 136),
)
# Lipstick colours (sRGB) used with probability ``lipstick_prob``.
LIPSTICK_COLOURS: tuple[tuple[int, int, int], ...] = (
    (170, 30, 45),
    (120, 20, 40),
    (200, 80, 100),
    (150, 70, 60),
    (90, 30, 50),
)
# Eye-shadow colours (sRGB) used with probability ``eye_shadow_prob``: brown, taupe, bronze, pink, plum, smoky,
# blue-grey, olive.
EYE_SHADOW_COLOURS: tuple[tuple[int, int, int], ...] = (
    (110, 80, 60),
    (150, 122, 104),
    (172, 122, 80),
    (196, 124, 142),
    (112, 70, 118),
    (52, 46, 52),
    (92, 110, 140),
    (104, 118, 78),
)
# Blush colours (sRGB) used with probability ``blush_prob``: rose, peach, berry, coral.
BLUSH_COLOURS: tuple[tuple[int, int, int], ...] = (
    (222, 120, 124),
    (234, 142, 112),
    (196, 96, 112),
    (214, 128, 100),
)


@dataclass
class ProceduralConfig:
    """Every range and probability of the procedural renderer (YAML: ``renderer.options``).

    Ranges are ``(low, high)`` pairs drawn uniformly; probabilities are in [0, 1]; weight lists are relative
    (need not sum to 1). Colours are sRGB in [0, 1] unless noted.

    Attributes:
        skin_tone_range: position on the light (0) to dark (1) scale :data:`SKIN_TONES`, uniform.
        skin_redness_range, skin_yellowness_range: per-identity tint offsets of the base skin colour.
        skin_brightness_range: per-identity multiplier of the base skin colour.
        skin_blotch_strength: amplitude of the low-frequency albedo variation (relative).
        skin_noise_strength: amplitude of the mid + fine (pore-scale) albedo noise (relative).
        cheek_flush_range: strength of the reddening on the cheeks, nose tip and ears.
        region_tone_jitter: per-region random brightness change (ears, neck, eye regions), relative.
        freckles_prob, stubble_prob: probability of freckles / beard stubble for an identity (stubble darkens the
            skin's albedo in the beard area and is never labelled beard); ``stubble_density_range`` its strength.
        brow_density_range: opacity of the eyebrow hair colour over the skin.
        lip_darkness_range: multiplier of the skin colour that gives the natural lip tone.
        lip_redness_range: extra red of the natural lip tone.
        lipstick_prob: probability of a lipstick colour (from :data:`LIPSTICK_COLOURS`).
        eye_shadow_prob, blush_prob: probability of eye shadow on the upper eye regions (a colour of
            :data:`EYE_SHADOW_COLOURS`, strongest at the lid and the outer corner) / blush on the cheeks
            (:data:`BLUSH_COLOURS`); ``makeup_strength_range`` their opacity.
        skin_bump_range: strength of the fine bumps (pores, skin relief) that break up the skin's highlights (a
            perturbation of the normal used by the specular term only).
        skin_oiliness_range: oily sheen of the T-zone (forehead, glabella, nose, chin): up to twice the specular
            strength and sharpness there (0 = none).
        subsurface_range: subsurface scattering radius of red light in the skin, as a fraction of the head size
            (green 0.45 of it, blue 0.25): the direct light wraps further round the terminator (by 25 x the radius,
            at most 0.5) and shadow edges blur over the radius, so both soften and turn red.
        iris_colour_weights: relative weights of :data:`IRIS_COLOURS` (6 values).
        iris_angle_deg_range: half-angle of the iris seen from the eyeball centre (degrees).
        pupil_fraction_range: pupil radius as a fraction of the iris radius.
        teeth_prob: probability that teeth are visible behind the upper lip when the mouth is open (separated by
            dark lines, darker towards the mouth corners); ``lower_teeth_prob`` of a lower row too.
        tongue_prob: probability of a tongue in the lower middle of an open mouth.
        lash_density_range: opacity of the lash lines and lashes (upper lashes lean towards the temple, lower ones
            are sparser and shorter); ``eyeliner_prob``: a thick dark line on the upper lid, a thin one below.
        iris_heterochromia_prob: probability of an amber ring inside the collarette (central heterochromia); every
            iris has radial fibres, a wavy collarette, crypts and a dark ruff round the pupil.
        catchlight_radius_deg_range, catchlight_strength_range: angular radius of the key light seen as an area
            light, reflected in the wet eyeball as a soft spot, and its strength.
        hair_prob: probability of hair on the scalp (else bare, skin-coloured scalp).
        hair_colour_weights: relative weights of :data:`HAIR_COLOURS` (8 values).
        hair_volume_prob: probability of hair volume drawn on the background around the scalp silhouette.
        hair_volume_range: its thickness as a fraction of the head height in pixels.
        long_hair_prob: probability that the hair volume also falls down from the scalp (long hair: beside the face
            and neck, behind the head, over the shoulders).
        long_hair_length_range: how far it falls, as a fraction of the head size in pixels.
        fringe_prob: probability of a fringe over the forehead (an occluder of the head surface, labelled hair).
        fringe_length_range: how far the fringe reaches down the forehead (0 = hairline, 1 = brows).
        beard_prob: probability of a beard (a hair layer on the skin of the lower face, labelled ``beard`` where its
            coverage reaches :data:`~next3d_gen.labels.LAYER_COVERAGE_THRESHOLD`, thinner at its ragged edge);
            most beards also get stubble around them. 0.3: with beards on 20 % of heads, bearded faces with closed
            lips (8 % of samples) were rare enough that the network called lips framed by beard a mouth opening
            (21 false inner-mouth pixels per 96-pixel crop on such renders; 15 with 0.3, and half the false inner
            mouth on the real bearded faces: inner-mouth F1 0.38 -> 0.51).
        beard_style_weights: relative weights of the beard styles: full (cheeks, jaw, under the chin, sideburns,
            moustache), goatee (moustache and chin), moustache, chin.
        beard_density_range: the beard's coverage inside its area (below the threshold it would be stubble-like).
        beard_curl_range: angular swing of the beard's strands (radians), which run away from the nose tip.
        Hair look (:mod:`next3d_gen.render.hair`; scalp hair, fringe, volume and flyaways share one flow):
        hair_strand_contrast_range: brightness contrast of the strand texture (0 = flat colour).
        hair_wave_range: angular swing of the strands in radians (0 = straight, 0.5 = curly).
        hair_flow_offset_range: sideways offset of the flow centre from the crown (rest-pose units; larger =
            side-swept hair).
        hair_root_darkness_range: darkening of the hair at its roots (near the flow centre).
        hair_highlight_range, hair_highlight_exponent_range: strength and sharpness of the anisotropic highlight.
        flyaway_count_range: (min, max) number of loose strands at the hair's outline over the background
            (integers, inclusive); ``flyaway_length_range`` their length in head heights, ``flyaway_alpha_range``
            their coverage (below the label threshold where a single strand crosses a pixel).
        num_lights_range: (min, max) number of directional lights (integers, inclusive).
        light_azimuth_deg_range, light_elevation_deg_range: direction towards the key light in the camera frame
            (azimuth from the viewing axis towards image right, elevation upwards).
        key_intensity_range: key light intensity (irradiance of a surface facing it).
        fill_ratio_range: intensity of the other lights relative to the key light.
        ambient_range: ambient (hemisphere) intensity.
        light_saturation_range: saturation of the light colours (0 = white), warm or cool.
        specular_range: skin specular strength; exponent in ``shininess_range``.
        wrap_range: wrap-lighting amount (soft terminator of skin).
        background_weights: relative weights of background kinds: gradient, radial, noise, field, shapes,
            clutter (a sharp photo-like scene at full resolution, :mod:`next3d_gen.render.clutter`).
        other_faces_prob: in clutter backgrounds, probability of another face near a border (and of a second).
        background_blur_prob: probability of a defocus blur of the background.
        background_max_side: the background (with shoulders and hair volume) is drawn at most this many pixels
            on its longer side and upsampled (it is smooth; this keeps the renderer fast at large sizes).
        shoulders_prob: probability of shoulders/clothing below the neck (background pixels only).
        ear_relief_range: strength of the ears' relief (a light rim and a dark hollow, see
            :func:`next3d_gen.render.face_detail.ear_relief`; 0 = smooth ears).
        cloth_dark_prob, cloth_light_prob: probability that the clothes are dark (black, navy, charcoal: v 0.03-0.2)
            or light (white, cream: v 0.75-0.97, nearly grey), as suits and shirts in portraits are; else any colour.
        cloth_fold_range: strength of the fabric's soft folds (relative brightness swing).
        cloth_pattern_prob: probability of a woven pattern (stripes or checks).
        shirt_prob: probability of a shirt (mostly light) in the V opening of the clothes, with a darker lapel seam.
        hair_behind_clothes_prob: probability that the hair volume (long hair) falls behind the clothes, not over them.
        collar_drop_range: how far below the chin the clothes' collar is, in chin-to-eyes distances; the clothes
            cover the neck below it (labelled ``background``, as CelebAMask-HQ's ``cloth`` merges).
        neckline_width_range, neckline_depth_range: the skin opening of the clothes below the collar: half width
            relative to the neck's (below 1 the clothes wrap the sides of the neck, as collars do) and depth relative
            to the head height.
        glasses_prob, sunglasses_prob: probability of glasses; of the lenses being dark (sunglasses occlude
            the eyes, clear lenses do not).
        lens_magnification_range: how much a clear lens scales the face behind it about the lens centre (below 1:
            short-sight lenses, which shrink the eyes and shift the face's outline at the lens edge).
        lens_glare_range: brightness added by the glare band across a clear lens (reflected light).
        hand_prob: probability of a hand-like shape in front of the face.
        object_prob: probability of a random object in front of the face.
        occluder_cover_range: how far into the head bounding box a hand/object reaches (fraction of its size).
        exposure_range: global exposure multiplier.
        ambient_occlusion_range: strength of the screen-space ambient occlusion of the head (0 = none;
            :mod:`next3d_gen.render.lighting`): eye sockets, nose sides, mouth corners, under the chin.
        shadow_strength_range: how dark the lights' shadows cast by the head on itself are (0 = none, 1 = no light
            from that light in its shadow: e.g. the nose's shadow, the brows' over the eyes, the chin's on the neck).
        shadow_softness_range: penumbra growth, metres per metre between occluder and receiver (an area light).
        environment_light_range: how far the ambient light is tinted towards the background's colour (upper half
            from above, lower half from below).
        Camera effects (:mod:`next3d_gen.render.camera_effects`; pixel lengths are for a 256-pixel image and scale
        with the image size; :data:`NO_CAMERA_EFFECTS` switches them all off):
        defocus_prob, defocus_radius_range: probability and radius (pixels) of a lens defocus (disc kernel).
        motion_blur_prob, motion_blur_length_range: probability and length (pixels) of a straight motion blur.
        blur_prob: probability of a slight whole-image Gaussian blur (sigma in ``blur_sigma_range`` pixels).
        white_balance_range: colour temperature error, log gain of red against blue (positive = warmer).
        tint_range: green-magenta error, log gain of green (positive = more magenta).
        saturation_range, contrast_range, gamma_range: tone-curve changes (1 = none).
        vignette_range: darkening of the image corners (0 = none, 0.3 = 30 % at the corners).
        low_res_prob, low_res_scale_range: probability of a down- and up-sampling, and its longer side as a fraction
            of 256 pixels (a small face in a large photo, enlarged; a smaller image is left as it is).
        shot_noise_range: signal-dependent noise per channel, standard deviation at full white.
        noise_sigma_range: luminance grain standard deviation (in [0, 1] units of the sRGB image).
        jpeg_prob, jpeg_quality_range: probability and quality (1-100) of a JPEG compression.
        antialias: blend silhouette and depth-discontinuity pixels with a small filter.
    """

    skin_tone_range: Range = (0.0, 1.0)
    skin_redness_range: Range = (-0.04, 0.06)
    skin_yellowness_range: Range = (-0.04, 0.05)
    skin_brightness_range: Range = (0.92, 1.08)
    skin_blotch_strength: float = 0.08
    skin_noise_strength: float = 0.06
    cheek_flush_range: Range = (0.0, 0.12)
    region_tone_jitter: float = 0.06
    freckles_prob: float = 0.12
    stubble_prob: float = 0.2
    stubble_density_range: Range = (0.15, 0.45)
    brow_density_range: Range = (0.8, 1.0)
    lip_darkness_range: Range = (0.62, 0.85)
    lip_redness_range: Range = (0.15, 0.4)
    lipstick_prob: float = 0.12
    eye_shadow_prob: float = 0.15
    blush_prob: float = 0.15
    makeup_strength_range: Range = (0.2, 0.6)
    skin_bump_range: Range = (0.02, 0.1)
    skin_oiliness_range: Range = (0.0, 0.7)
    subsurface_range: Range = (0.003, 0.012)
    iris_colour_weights: tuple[float, float, float, float, float, float] = (4.0, 3.0, 1.5, 1.0, 1.5, 0.6)
    iris_angle_deg_range: Range = (26.0, 33.0)
    pupil_fraction_range: Range = (0.28, 0.45)
    teeth_prob: float = 0.8
    lower_teeth_prob: float = 0.5
    tongue_prob: float = 0.7
    lash_density_range: Range = (0.75, 1.0)
    eyeliner_prob: float = 0.3
    iris_heterochromia_prob: float = 0.25
    catchlight_radius_deg_range: Range = (5.0, 16.0)
    catchlight_strength_range: Range = (0.4, 1.0)
    hair_prob: float = 0.95
    hair_colour_weights: tuple[float, float, float, float, float, float, float, float] = (
        3.0,
        3.0,
        2.5,
        1.5,
        1.0,
        0.6,
        0.7,
        0.3,
    )
    hair_volume_prob: float = 0.9
    hair_volume_range: Range = (0.15, 0.5)
    long_hair_prob: float = 0.8
    long_hair_length_range: Range = (0.8, 1.6)
    fringe_prob: float = 0.3
    fringe_length_range: Range = (0.2, 0.8)
    beard_prob: float = 0.3
    beard_style_weights: tuple[float, float, float, float] = (3.0, 2.0, 1.0, 0.5)
    beard_density_range: Range = (0.55, 1.0)
    beard_curl_range: Range = (0.05, 0.4)
    hair_strand_contrast_range: Range = (0.5, 0.9)
    hair_wave_range: Range = (0.0, 0.45)
    hair_flow_offset_range: Range = (-0.45, 0.45)
    hair_root_darkness_range: Range = (0.05, 0.35)
    hair_highlight_range: Range = (0.04, 0.2)
    hair_highlight_exponent_range: Range = (30.0, 120.0)
    flyaway_count_range: tuple[int, int] = (0, 120)
    flyaway_length_range: Range = (0.015, 0.1)
    flyaway_alpha_range: Range = (0.1, 0.45)
    num_lights_range: tuple[int, int] = (1, 3)
    light_azimuth_deg_range: Range = (-70.0, 70.0)
    light_elevation_deg_range: Range = (-15.0, 60.0)
    key_intensity_range: Range = (0.7, 1.1)
    fill_ratio_range: Range = (0.15, 0.6)
    ambient_range: Range = (0.15, 0.4)
    light_saturation_range: Range = (0.0, 0.25)
    specular_range: Range = (0.03, 0.12)
    shininess_range: Range = (12.0, 40.0)
    wrap_range: Range = (0.1, 0.35)
    background_weights: tuple[float, float, float, float, float, float] = (1.0, 1.0, 1.0, 1.0, 1.0, 4.0)
    other_faces_prob: float = 0.35
    background_blur_prob: float = 0.4
    background_max_side: int = 96
    shoulders_prob: float = 0.7
    ear_relief_range: Range = (0.3, 0.8)
    cloth_dark_prob: float = 0.35
    cloth_light_prob: float = 0.15
    cloth_fold_range: Range = (0.05, 0.3)
    cloth_pattern_prob: float = 0.2
    shirt_prob: float = 0.35
    collar_drop_range: Range = (0.05, 0.5)
    neckline_width_range: Range = (0.4, 1.6)
    neckline_depth_range: Range = (0.05, 0.3)
    hair_behind_clothes_prob: float = 0.5
    glasses_prob: float = 0.15
    sunglasses_prob: float = 0.2
    lens_magnification_range: Range = (0.86, 1.06)
    lens_glare_range: Range = (0.03, 0.3)
    hand_prob: float = 0.08
    object_prob: float = 0.12
    occluder_cover_range: Range = (0.1, 0.4)
    exposure_range: Range = (0.9, 1.15)
    ambient_occlusion_range: Range = (0.4, 1.0)
    shadow_strength_range: Range = (0.5, 1.0)
    shadow_softness_range: Range = (0.02, 0.15)
    environment_light_range: Range = (0.0, 0.6)
    defocus_prob: float = 0.15
    defocus_radius_range: Range = (0.6, 2.0)
    motion_blur_prob: float = 0.1
    motion_blur_length_range: Range = (3.0, 9.0)
    blur_prob: float = 0.15
    blur_sigma_range: Range = (0.3, 0.8)
    white_balance_range: Range = (-0.15, 0.15)
    tint_range: Range = (-0.05, 0.05)
    saturation_range: Range = (0.7, 1.2)
    contrast_range: Range = (0.85, 1.15)
    gamma_range: Range = (0.85, 1.2)
    vignette_range: Range = (0.0, 0.3)
    low_res_prob: float = 0.2
    low_res_scale_range: Range = (0.35, 0.8)
    shot_noise_range: Range = (0.0, 0.03)
    noise_sigma_range: Range = (0.0, 0.02)
    jpeg_prob: float = 0.6
    jpeg_quality_range: Range = (50.0, 95.0)
    antialias: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, source: str = "renderer.options") -> ProceduralConfig:
        """Check ranges (low <= high) and probabilities (in [0, 1]); raise UserError naming the option."""
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name.endswith("_range"):
                if not (isinstance(v, (tuple, list)) and len(v) == 2) or v[0] > v[1]:
                    raise UserError(f"{source}: '{f.name}' must be [low, high] with low <= high, got {v!r}")
            elif f.name.endswith("_prob"):
                if not 0.0 <= float(v) <= 1.0:
                    raise UserError(f"{source}: '{f.name}' must be a probability in [0, 1], got {v!r}")
            elif f.name.endswith("_weights"):
                if any(float(w) < 0 for w in v) or sum(float(w) for w in v) <= 0:
                    raise UserError(f"{source}: '{f.name}' must be non-negative weights with a positive sum")
        if self.flyaway_count_range[0] < 0:
            raise UserError(f"{source}: 'flyaway_count_range' must not be negative, got {self.flyaway_count_range!r}")
        if self.cloth_dark_prob + self.cloth_light_prob > 1.0:
            raise UserError(f"{source}: 'cloth_dark_prob' + 'cloth_light_prob' must be at most 1")
        if self.num_lights_range[0] < 1:
            raise UserError(f"{source}: 'num_lights_range' must start at 1 or more, got {self.num_lights_range!r}")
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, source: str = "renderer.options") -> ProceduralConfig:
        """Build from a (partial) mapping such as the generation YAML's ``renderer.options``.

        Lists become tuples; unknown keys, wrong lengths and wrong types raise UserError naming the key.
        """
        hints = typing.get_type_hints(cls)
        names = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in (data or {}).items():
            if key not in names:
                raise UserError(f"{source}: unknown option '{key}' of the procedural renderer")
            hint = hints[key]
            if typing.get_origin(hint) is tuple:
                args = typing.get_args(hint)
                if not isinstance(value, (list, tuple)) or len(value) != len(args):
                    raise UserError(f"{source}: '{key}' must be a list of {len(args)} numbers, got {value!r}")
                if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
                    raise UserError(f"{source}: '{key}' must be a list of numbers, got {value!r}")
                if any(a is int and not float(v).is_integer() for a, v in zip(args, value, strict=True)):
                    raise UserError(f"{source}: '{key}' must be a list of integers, got {value!r}")
                kwargs[key] = tuple(a(v) for a, v in zip(args, value, strict=True))
            elif hint is int:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise UserError(f"{source}: '{key}' must be an integer, got {value!r}")
                kwargs[key] = value
            elif hint is bool:
                if not isinstance(value, bool):
                    raise UserError(f"{source}: '{key}' must be true or false, got {value!r}")
                kwargs[key] = value
            else:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise UserError(f"{source}: '{key}' must be a number, got {value!r}")
                kwargs[key] = float(value)
        cfg = cls(**kwargs)
        return cfg.validate(source)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


NO_CAMERA_EFFECTS: dict[str, Any] = {
    "defocus_prob": 0.0,
    "motion_blur_prob": 0.0,
    "blur_prob": 0.0,
    "white_balance_range": (0.0, 0.0),
    "tint_range": (0.0, 0.0),
    "saturation_range": (1.0, 1.0),
    "contrast_range": (1.0, 1.0),
    "gamma_range": (1.0, 1.0),
    "vignette_range": (0.0, 0.0),
    "low_res_prob": 0.0,
    "shot_noise_range": (0.0, 0.0),
    "noise_sigma_range": (0.0, 0.0),
    "jpeg_prob": 0.0,
}
""":class:`ProceduralConfig` options that switch every camera effect off (the image is the shaded scene, quantised)."""


# ----------------------------------------------------------------------------------------------------------------------
# Random draws


class _Rng:
    """Draws from a ``torch.Generator`` (on its device) and moves results to ``device``."""

    def __init__(self, generator: torch.Generator, device: torch.device) -> None:
        self.g = generator
        self.device = device
        self._buf: list[float] = []
        self._pos = 0

    def rand(self, *shape: int) -> Tensor:
        return torch.rand(shape, generator=self.g, device=self.g.device).to(self.device)

    def randn(self, *shape: int) -> Tensor:
        return torch.randn(shape, generator=self.g, device=self.g.device).to(self.device)

    def _next(self) -> float:
        """Next uniform [0, 1) scalar; scalars are drawn 64 at a time (one generator call instead of 64)."""
        if self._pos >= len(self._buf):
            self._buf = torch.rand(64, generator=self.g, device=self.g.device, dtype=torch.float64).tolist()
            self._pos = 0
        self._pos += 1
        return self._buf[self._pos - 1]

    def u(self, r: Range | tuple[int, int]) -> float:
        return float(r[0]) + (float(r[1]) - float(r[0])) * self._next()

    def chance(self, p: float) -> bool:
        return self._next() < p

    def int(self, lo: int, hi: int) -> int:
        """Integer uniform in [lo, hi] inclusive."""
        return min(int(lo) + int(self._next() * (int(hi) - int(lo) + 1)), int(hi))

    def choice(self, weights: tuple[float, ...] | list[float]) -> int:
        """Index drawn with probability proportional to ``weights``."""
        total = float(sum(weights))
        x = self._next() * total
        acc = 0.0
        for i, w in enumerate(weights):
            acc += float(w)
            if x < acc:
                return i
        return len(weights) - 1

    def colour(self) -> Tensor:
        """A random sRGB colour (3,) in [0, 1], from HSV with moderate saturation."""
        h, s, v = self.u((0.0, 1.0)), self.u((0.05, 0.75)), self.u((0.15, 0.95))
        return fx.hsv_to_rgb(h, s, v, self.device)


class _Looks:
    """Seeded random streams for the appearance details, one per detail (``looks["hair"]``, ``looks["beard"]``, ...).

    Each stream's generator is seeded from a hash of the main generator's state at the start of the render (which
    it leaves untouched) and the detail's name. So the main stream, and with it every label layer drawn from it (hair
    volume, fringe, glasses, hands, objects), is the same whether or how the details are drawn, and switching one
    detail on or off leaves the others' draws as they were.
    """

    def __init__(self, generator: torch.Generator, device: torch.device) -> None:
        self._key = hashlib.blake2b(generator.get_state().cpu().numpy().tobytes(), digest_size=16).digest()
        self._gen_device = generator.device
        self.device = device
        self._rngs: dict[str, _Rng] = {}

    def __getitem__(self, name: str) -> _Rng:
        rng = self._rngs.get(name)
        if rng is None:
            digest = hashlib.blake2b(self._key + name.encode(), digest_size=8).digest()
            g = torch.Generator(device=self._gen_device)
            g.manual_seed(int.from_bytes(digest, "little") >> 1)
            rng = self._rngs[name] = _Rng(g, self.device)
        return rng


def _to_image_size(layers: Tensor, H: int, W: int) -> Tensor:
    """(C, h, w) fields of the low-resolution background layer -> (C, H, W), bilinearly upsampled as the layer's
    image is (unchanged when already (H, W))."""
    if tuple(layers.shape[1:]) == (H, W):
        return layers
    return F.interpolate(layers[None], size=(H, W), mode="bilinear", align_corners=False)[0]


_LUT_SIZE = 4096
_LUTS: dict[tuple[str, str], Tensor] = {}
_CONSTS: dict[tuple[Any, str], Tensor] = {}


def _const(device: torch.device, *values: Any) -> Tensor:
    """A cached float32 constant tensor (creating small tensors is slow next to the per-image work)."""
    key = (values, str(device))
    t = _CONSTS.get(key)
    if t is None:
        t = torch.tensor(values[0] if len(values) == 1 else values, dtype=torch.float32, device=device)
        _CONSTS[key] = t
    return t


def _lin(srgb: Tensor) -> Tensor:
    """sRGB [0, 1] -> linear (gamma 2.2 approximation); for small (colour) tensors."""
    return srgb.clamp(0, 1) ** 2.2


def _through_lens(
    img: Tensor, H: int, W: int, ids: Tensor, u: Tensor, K: Tensor, origin: Tensor, x: Tensor, ipd: float, k: float
) -> Tensor:
    """The (N, 3) colours seen through a clear lens at the pixels ``ids`` (flat indices into the (H*W, 3) image):
    the image bilinearly resampled about the projected centre of the lens each pixel is in (``u``: the pixel's
    lens-plane coordinate along ``x``, metres from the bridge; the lens centres are at ``origin +- x ipd / 2``),
    magnified by ``k`` (below 1: the minifying lenses of short sight)."""
    centres = torch.stack([origin + x * side * ipd / 2 for side in (-1.0, 1.0)])
    cpx = centres[:, :2] / centres[:, 2:3].clamp_min(1e-3) * torch.stack([K[0, 0], K[1, 1]]) + K[:2, 2]
    c = cpx[(u > 0).long()]  # (N, 2) the centre of each pixel's lens
    pix = torch.stack([ids % W, ids // W], 1).to(c.dtype)
    src = c + (pix - c) / k
    grid = torch.stack([2 * src[:, 0] / (W - 1) - 1, 2 * src[:, 1] / (H - 1) - 1], 1)[None, None]
    chw = img.T.reshape(1, 3, H, W)
    out = F.grid_sample(chw, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out[0, :, 0].T


def _srgb(lin: Tensor) -> Tensor:
    """Linear -> sRGB (gamma 1/2.2) through a 4096-entry lookup table (a pow per pixel is slow on CPU)."""
    key = ("srgb", str(lin.device))
    lut = _LUTS.get(key)
    if lut is None:
        lut = (torch.linspace(0, 1, _LUT_SIZE, dtype=torch.float64) ** (1 / 2.2)).float().to(lin.device)
        _LUTS[key] = lut
    idx = (lin.clamp(0, 1) * (_LUT_SIZE - 1) + 0.5).long()
    return lut[idx]


def _palette(colours: tuple[tuple[int, int, int], ...], device: torch.device) -> Tensor:
    return _const(device, colours) / 255.0


def _edges(mask: Tensor, depth: Tensor, jump: float, layer: Tensor | None = None) -> Tensor:
    """(M,) flat ids of pixels on the silhouette, next to a depth jump larger than ``jump`` metres, or on the
    border of the (H, W) bool ``layer`` (an opaque layer painted on the head, e.g. scalp hair) inside the head."""
    H, W = mask.shape
    e = torch.zeros_like(mask)
    dh = mask[:, 1:] != mask[:, :-1]
    dv = mask[1:] != mask[:-1]
    both_h = mask[:, 1:] & mask[:, :-1]
    both_v = mask[1:] & mask[:-1]
    dh = dh | (both_h & ((depth[:, 1:] - depth[:, :-1]).abs() > jump))
    dv = dv | (both_v & ((depth[1:] - depth[:-1]).abs() > jump))
    if layer is not None:
        dh = dh | (both_h & (layer[:, 1:] != layer[:, :-1]))
        dv = dv | (both_v & (layer[1:] != layer[:-1]))
    e[:, 1:] |= dh
    e[:, :-1] |= dh
    e[1:] |= dv
    e[:-1] |= dv
    return e.reshape(-1).nonzero().squeeze(1)


_TENT = (
    (-1, -1, 1.0),
    (-1, 0, 2.0),
    (-1, 1, 1.0),
    (0, -1, 2.0),
    (0, 0, 4.0),
    (0, 1, 2.0),
    (1, -1, 1.0),
    (1, 0, 2.0),
    (1, 1, 1.0),
)


def _filter_at(img: Tensor, ids: Tensor, H: int, W: int) -> Tensor:
    """Replace pixels ``ids`` of the (H*W, 3) image by its 3x3 tent-filtered value (edge anti-aliasing)."""
    if ids.numel() == 0:
        return img
    y = torch.div(ids, W, rounding_mode="floor")
    x = ids % W
    acc = torch.zeros(len(ids), 3, dtype=img.dtype, device=img.device)
    for dy, dx, w in _TENT:
        acc += img[(y + dy).clamp(0, H - 1) * W + (x + dx).clamp(0, W - 1)] * (w / 16.0)
    img[ids] = acc
    return img


class _ClassMasks:
    """Lazy ``{class name: (N,) bool}`` over the per-pixel class ids (only the classes asked for are compared)."""

    def __init__(self, cls: Tensor) -> None:
        self.cls = cls
        self._m: dict[str, Tensor] = {}

    def __getitem__(self, name: str) -> Tensor:
        m = self._m.get(name)
        if m is None:
            m = self.cls == _C[name]
            self._m[name] = m
        return m


def _sweep(m: Tensor, direction: tuple[float, float], length: int) -> Tensor:
    """Max of the (C, H, W) map ``m`` shifted by ``k * direction`` (x, y) pixels (rounded, zero fill), k = 0..length."""
    out = m.clone()
    _, H, W = m.shape
    for k in range(1, max(0, length) + 1):
        dx, dy = int(round(k * direction[0])), int(round(k * direction[1]))
        if abs(dx) >= W or abs(dy) >= H:
            break
        src = m[:, max(0, -dy) : H - max(0, dy), max(0, -dx) : W - max(0, dx)]
        rows, cols = slice(max(0, dy), H - max(0, -dy)), slice(max(0, dx), W - max(0, -dx))
        out[:, rows, cols] = torch.maximum(out[:, rows, cols], src)
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Per-model cache

_NB = 6  # noise basis fields per frequency band


@dataclass
class _ModelData:
    """Rest-pose data of one FlameModel, as tensors on one device."""

    model: Any
    device: torch.device
    rest: Tensor  # (V, 3) template vertices normalised to about [-1, 1]^3 (centre of the bounding box, max half-extent)
    scale: float  # metres per normalised unit
    faces: Tensor  # (F, 3) int64
    lmk: Tensor  # (68, 3) rest-pose landmarks, normalised (jaw contour rows from the frontal bin)
    eye_centre: Tensor  # (2, 3) rest eyeball centres [right (class right_eyeball), left], normalised
    eye_ok: Tensor  # (2,) bool: the model has that eyeball
    basis: Tensor  # (V, 2 * _NB) fixed smooth noise fields on the rest surface (low then mid frequency), unit std
    regions: Tensor  # (V, 7) fixed soft region weights: cheek/nose flush, under-eye, freckle area, stubble area,
    # beard styles: moustache, chin, full beard
    s_io: float  # rest inter-ocular distance (outer eye corners), normalised units
    brow_span: tuple[float, float]  # |x| of the inner and outer brow ends (rest, normalised)
    brow_y: float  # rest height of the brow middles
    eye_z: float  # rest depth of the outer eye corner
    scalp_ids: Tensor  # (S,) int64 vertices of scalp faces (all vertices when the model has no labels)


def _model_data(model: Any, faces: Tensor, device: torch.device) -> _ModelData:
    v = torch.as_tensor(np.asarray(model.v_template), dtype=torch.float32, device=device)
    lo, hi = v.amin(0), v.amax(0)
    centre = (lo + hi) / 2
    scale = float((hi - lo).max() / 2)
    rest = (v - centre) / scale
    faces = faces.to(device=device, dtype=torch.long)

    def bary_points(fidx: np.ndarray, bary: np.ndarray) -> Tensor:
        fi = torch.as_tensor(np.asarray(fidx), dtype=torch.long, device=device)
        b = torch.as_tensor(np.asarray(bary), dtype=torch.float32, device=device)
        return (rest[faces[fi]] * b[..., None]).sum(-2)

    static = bary_points(model.static_lmk_faces, model.static_lmk_bary)  # (51, 3)
    contour = bary_points(np.asarray(model.dynamic_lmk_faces)[0], np.asarray(model.dynamic_lmk_bary)[0])  # (17, 3)
    lmk = torch.cat([contour, static], 0)
    centres = torch.zeros(2, 3, device=device)
    ok = torch.zeros(2, dtype=torch.bool, device=device)
    if model.face_labels is not None:
        labels = torch.as_tensor(np.asarray(model.face_labels), dtype=torch.long, device=device)
        for i, cls in enumerate((_C["right_eyeball"], _C["left_eyeball"])):
            sel = labels == cls
            if bool(sel.any()):
                vid = torch.unique(faces[sel].reshape(-1))
                pts = rest[vid]
                # Sphere centre: the point equidistant from the eyeball vertices (least squares), robust to the
                # eyeball being a partial sphere.
                A = torch.cat([2 * pts, torch.ones(len(pts), 1, device=device)], 1)
                b = (pts**2).sum(1, keepdim=True)
                sol = torch.linalg.lstsq(A.double().cpu(), b.double().cpu()).solution.float().to(device)
                c = sol[:3, 0]
                if not bool(torch.isfinite(c).all()) or float((c - pts.mean(0)).norm()) > 0.2:
                    c = pts.mean(0)
                centres[i] = c
                ok[i] = True
    scalp_ids = torch.arange(len(rest), device=device)
    if model.face_labels is not None:
        sel = torch.as_tensor(np.asarray(model.face_labels), dtype=torch.long, device=device) == _C["scalp"]
        if bool(sel.any()):
            scalp_ids = torch.unique(faces[sel].reshape(-1))
    # fixed noise bases (a fixed seed: they belong to the model, not to a sample); each sample mixes them with
    # random weights, which costs a matrix product per vertex instead of a 3D noise lookup per pixel
    g = torch.Generator().manual_seed(20250101)
    cols = []
    for res in (5, 14):
        grid = torch.rand(1, _NB, res, res, res, generator=g) * 2 - 1
        val = (
            F.grid_sample(grid, rest.cpu().clamp(-1, 1).view(1, 1, 1, -1, 3), align_corners=True, padding_mode="border")
            .view(_NB, -1)
            .T
        )
        cols.append((val - val.mean(0)) / val.std(0).clamp_min(1e-6))
    basis = torch.cat(cols, 1).to(device)

    # soft region weights anchored on the rest-pose landmarks (functions of the template only)
    s_io = float((lmk[45] - lmk[36]).norm()) + 1e-6

    def near(p: Tensor, radius: float) -> Tensor:
        return torch.exp(-((rest - p) ** 2).sum(1) / (2 * (radius * s_io) ** 2))

    side = torch.tensor([1.0, 0.0, 0.0], device=device) * s_io
    down = torch.tensor([0.0, -0.08, 0.0], device=device) * s_io
    flush = near(0.5 * (lmk[36] + lmk[48]) - 0.1 * side, 0.25) + near(0.5 * (lmk[45] + lmk[54]) + 0.1 * side, 0.25)
    flush = flush + 0.7 * near(lmk[30], 0.12)
    under = near(lmk[40] + down, 0.13) + near(lmk[47] + down, 0.13)
    freckle = near(lmk[30], 0.6)
    y = rest[:, 1]
    below_nose = fx.smoothstep(0.0, 0.2 * s_io, lmk[33][1] - y - 0.05 * s_io)
    above_chin = fx.smoothstep(-0.35 * s_io, -0.1 * s_io, y - lmk[8][1])
    inner = 1 - fx.smoothstep(0.85, 1.0, rest[:, 0].abs() / lmk[0][0].abs().clamp_min(1e-3))
    beard = below_nose * above_chin * inner
    # beard styles: moustache (nose base to upper lip), chin (below the lower lip), full (cheeks below a line from
    # the nose base to the ears, jaw, under the chin, sideburns in front of the ears)
    x, z = rest[:, 0].abs(), rest[:, 2]
    mouth_hw = float((lmk[54][0] - lmk[48][0]).abs()) / 2
    jaw_x = float(lmk[0][0].abs())
    moustache = fx.smoothstep(lmk[51][1] - 0.06 * s_io, lmk[51][1] + 0.02 * s_io, y)
    moustache = moustache * (1 - fx.smoothstep(lmk[33][1] - 0.06 * s_io, lmk[33][1] + 0.0 * s_io, y))
    moustache = moustache * (1 - fx.smoothstep(mouth_hw + 0.02 * s_io, mouth_hw + 0.14 * s_io, x))
    chin = fx.smoothstep(-0.3 * s_io, -0.12 * s_io, y - lmk[8][1])
    chin = chin * (1 - fx.smoothstep(-0.1 * s_io, 0.0, y - lmk[57][1]))
    chin = chin * (1 - fx.smoothstep(0.8 * mouth_hw, 1.2 * mouth_hw, x))
    t_line = ((x - mouth_hw) / max(jaw_x - mouth_hw, 1e-3)).clamp(0, 1)  # 0 at the mouth corner, 1 at the jaw end
    line_y = (lmk[33][1] - 0.08 * s_io) * (1 - t_line) + (lmk[0][1] - 0.1 * s_io) * t_line
    # the jaw line's height at each |x| (contour points 0-8 and 8-16 averaged), for the beard's edge on the neck
    mirror = lmk[8:17].flip(0)
    jx = 0.5 * (lmk[0:9, 0].abs() + mirror[:, 0].abs())
    jy = 0.5 * (lmk[0:9, 1] + mirror[:, 1])
    order = torch.argsort(jx)
    jx, jy = jx[order], jy[order]
    k = torch.searchsorted(jx.contiguous(), x.contiguous()).clamp(1, len(jx) - 1)
    f = ((x - jx[k - 1]) / (jx[k] - jx[k - 1]).clamp_min(1e-6)).clamp(0, 1)
    jaw_y = jy[k - 1] * (1 - f) + jy[k] * f
    cheeks = 1 - fx.smoothstep(-0.08 * s_io, 0.04 * s_io, y - line_y)
    cheeks = cheeks * fx.smoothstep(-0.4 * s_io, -0.05 * s_io, y - jaw_y)
    cheeks = cheeks * (1 - fx.smoothstep(1.0, 1.08, x / max(jaw_x, 1e-3))) * fx.smoothstep(-0.6, -0.2, z - lmk[0][2])
    full = torch.maximum(torch.maximum(moustache, chin), cheeks)
    regions = torch.stack([flush, under, freckle, beard, moustache, chin, full], 1)
    return _ModelData(
        model=model,
        device=device,
        rest=rest,
        scale=scale,
        faces=faces,
        lmk=lmk,
        eye_centre=centres,
        eye_ok=ok,
        basis=basis,
        regions=regions,
        s_io=s_io,
        brow_span=(float(min(lmk[21][0].abs(), lmk[22][0].abs())), float(max(lmk[17][0].abs(), lmk[26][0].abs()))),
        brow_y=float((lmk[19][1] + lmk[24][1]) / 2),
        eye_z=float(lmk[36][2]),
        scalp_ids=scalp_ids,
    )


# ----------------------------------------------------------------------------------------------------------------------
# The renderer


class ProceduralRenderer:
    """Shaded, procedurally textured head over a random background (see the module docstring).

    Example:
        >>> r = ProceduralRenderer(ProceduralConfig())
        >>> out = r.render(scene, torch.Generator().manual_seed(0))  # doctest: +SKIP
        >>> out.image.shape, out.image.dtype  # doctest: +SKIP
        (torch.Size([256, 256, 3]), torch.uint8)
    """

    name = "procedural"
    latent_dim = 0

    def __init__(self, config: ProceduralConfig | None = None, model: Any = None) -> None:
        """Args: config: options (defaults when None); model: the FlameModel that will be posed (optional; its
        rest-pose data is prepared lazily on first render either way)."""
        self.config = config if config is not None else ProceduralConfig()
        self._cache: _ModelData | None = None

    def _data(self, scene: Scene, device: torch.device) -> _ModelData:
        c = self._cache
        if c is None or c.model is not scene.model or c.device != device or c.faces.shape != scene.faces.shape:
            c = _model_data(scene.model, torch.as_tensor(scene.faces), device)
            self._cache = c
        return c

    # ------------------------------------------------------------------------------------------------------------------
    def render(self, scene: Scene, generator: torch.Generator) -> RenderOutput:
        """Render ``scene``.

        Args:
            scene: the view (uses ``fragments``, ``annotations``, ``model``, ``faces``, ``K``, height, width).
            generator: every random choice is drawn from it.

        Returns:
            :class:`RenderOutput` with ``image`` (H, W, 3) uint8 RGB, ``latent`` (0,) float32, ``occluder_mask``
            (H, W) bool (head pixels covered by hair fringe, sunglasses, glasses frames, hands or objects) or None,
            and ``label_override`` (H, W) uint8 (hair / eyeglasses / background layers, 255 = none; see the module
            docstring) or None.
        """
        cfg = self.config
        ann, frag = scene.annotations, scene.fragments
        H, W = int(scene.height), int(scene.width)
        device = ann.seg.device
        rng = _Rng(generator, device)
        looks = _Looks(generator, device)  # appearance details only, one stream each (see _Looks)
        data = self._data(scene, device)

        fi_img = frag.face_index[0].to(device)
        mask = fi_img >= 0  # (H, W)
        seg = ann.seg[0].to(device).long()
        pix = mask.reshape(-1).nonzero().squeeze(1)  # (N,) foreground pixel ids
        fi = fi_img.reshape(-1)[pix]
        bary = frag.barycentric[0].reshape(-1, 3)[pix].to(device, torch.float32)
        cls = seg.reshape(-1)[pix]
        normal = ann.normal[0].reshape(-1, 3)[pix].to(torch.float32)
        depth_img = ann.depth[0].to(torch.float32)
        # rest position (normalised) and the sample's smooth noise fields, interpolated from the face's vertices
        nb = data.basis.shape[1] // 2
        mix_low = rng.randn(nb, 3)
        mix_mid = rng.randn(nb, 1)
        mix = torch.zeros(2 * nb, 4, device=device)
        mix[:nb, :3] = mix_low / mix_low.norm(dim=0, keepdim=True)
        mix[nb:, 3:] = mix_mid / mix_mid.norm(dim=0, keepdim=True)
        vert_attr = torch.cat([data.rest, data.basis @ mix, data.regions], 1)  # (V, 14)
        corners = data.faces[fi]  # (N, 3)
        attr = vert_attr.index_select(0, corners[:, 0]) * bary[:, 0:1]
        attr = torch.addcmul(attr, vert_attr.index_select(0, corners[:, 1]), bary[:, 1:2])
        attr = torch.addcmul(attr, vert_attr.index_select(0, corners[:, 2]), bary[:, 2:3])
        rest = attr[:, :3]  # (N, 3)
        blotch = attr[:, 3:6]  # (N, 3) low-frequency: brightness, redness, yellowness; about unit std
        mid = attr[:, 6:7]  # (N, 1) mid frequency
        reg = attr[:, 7:]  # (N, 7) fixed region weights (see _ModelData.regions)

        K = torch.as_tensor(scene.K, dtype=torch.float32, device=device).reshape(3, 3)
        ray = fx.rays(K, pix % W, torch.div(pix, W, rounding_mode="floor"))  # (N, 3) camera rays with z = 1
        view = -F.normalize(ray, dim=-1)  # (N, 3) towards the camera

        bbox = ann.bbox[0].to(torch.float32)
        head_px = float(max(bbox[3] - bbox[1], bbox[2] - bbox[0], 1.0))

        is_ = _ClassMasks(cls)

        # ---------------- identity appearance ----------------
        tones = _lin(_palette(SKIN_TONES, device))
        t = rng.u(cfg.skin_tone_range) * (len(SKIN_TONES) - 1)
        i0 = min(int(t), len(SKIN_TONES) - 2)
        skin = tones[i0] * (1 - (t - i0)) + tones[i0 + 1] * (t - i0)
        red, yel = rng.u(cfg.skin_redness_range), rng.u(cfg.skin_yellowness_range)
        bri = rng.u(cfg.skin_brightness_range)
        skin = skin * torch.tensor([1 + red + 0.5 * yel, 1 + 0.3 * yel - 0.2 * red, 1 - yel - 0.3 * red], device=device)
        skin = (skin * bri).clamp(0.002, 0.95)

        # multi-scale albedo variation on the rest surface (stable under pose)
        pts = rest.clamp(-1, 1)
        fine = rng.rand(len(pix), 1) * 2 - 1  # pore-scale: per pixel
        albedo = skin.expand(len(pix), 3).clone()
        bl = cfg.skin_blotch_strength
        # channel 0: brightness, channel 1: redness (R up, G/B down), channel 2: yellowness (R/G up, B down)
        tint = blotch[:, 1:2] * _const(device, (0.6, -0.3, -0.3))
        tint = tint + blotch[:, 2:3] * _const(device, (0.2, 0.2, -0.5))
        albedo = albedo * (1 + 0.6 * bl * blotch[:, :1]) * (1 + 0.3 * bl * tint)
        ns = cfg.skin_noise_strength
        albedo = albedo * (1 + ns * (0.5 * mid + 0.5 * fine))

        s_io = data.s_io
        ones3 = torch.ones(3, device=device)

        # reddening: cheeks, nose tip, ears
        flush = rng.u(cfg.cheek_flush_range)
        redness = flush * reg[:, 0]
        redness = redness + flush * 0.8 * (is_["right_ear"] | is_["left_ear"]).float()
        albedo = albedo * (1 + redness[:, None] * _const(device, (0.25, -0.25, -0.25)))

        # regional tones
        jit = cfg.region_tone_jitter
        tone_lut = [1.0] * 256
        for names, base in (
            (("right_ear", "left_ear"), 0.96),
            (("neck", "neck_back"), 0.97),
            (("right_eye_region", "left_eye_region"), 0.9),
        ):
            f = base + jit * (2 * rng.u((0, 1)) - 1)
            for name in names:
                tone_lut[_C[name]] = f
        albedo = albedo * torch.tensor(tone_lut, dtype=torch.float32, device=device)[cls][:, None]
        # the ears' relief: a light rim and a dark hollow (the mesh's ears are smooth)
        relief = looks["ears"].u(cfg.ear_relief_range)
        for name in ("right_ear", "left_ear") if relief > 0 else ():
            e = is_[name].nonzero().squeeze(1)
            if len(e) > 3:
                sigma = max(0.5, 0.2 * math.sqrt(len(e)))
                inside = fx.masked_blur_at(seg == _C[name], sigma, pix[e])
                albedo[e] = albedo[e] * face_lib.ear_relief(inside, relief)[:, None]
        # slight purple-brown darkening under the eyes
        albedo = albedo * (1 - 0.12 * reg[:, 1:2] * _const(device, (1.0, 1.1, 0.9)))

        # freckles
        if rng.chance(cfg.freckles_prob):
            fr = fx.noise2(rng, (160, 160), pts[:, :2], 1)[:, 0]
            area = reg[:, 2] * (is_["face"] | is_["nose"] | is_["forehead"]).float()
            spots = fx.smoothstep(0.45, 0.75, fr) * area * rng.u((0.2, 0.5))
            albedo = albedo * (1 - spots[:, None] * _const(device, (0.35, 0.5, 0.6)))
        # stubble (lower face below the nose base, down to just under the chin)
        st: Tensor | None = None
        dens = 0.0
        if rng.chance(cfg.stubble_prob):
            st = fx.noise2(rng, (150, 150), pts[:, :2], 1)[:, 0] * 0.5 + (rng.rand(len(pix)) - 0.5)
            dens = rng.u(cfg.stubble_density_range)
        brng = looks["beard"]
        has_beard = brng.chance(cfg.beard_prob)
        if has_beard and st is None and brng.chance(0.7):  # most beards fade into stubble
            st = fx.noise2(brng, (150, 150), pts[:, :2], 1)[:, 0] * 0.5 + (brng.rand(len(pix)) - 0.5)
            dens = brng.u(cfg.stubble_density_range)
        if st is not None:
            area = torch.maximum(reg[:, 3], reg[:, 6]) * (is_["face"] | is_["neck"]).float()
            hair_dark = torch.minimum(_lin(_const(device, (0.12, 0.1, 0.09))), skin * 0.5)
            amt = (area * dens * (0.7 + 0.5 * st)).clamp(0, 1)[:, None]
            albedo = albedo * (1 - amt) + hair_dark * amt

        # ---------------- hair colour (scalp and brows share it) ----------------
        hair_col = _lin(_palette(HAIR_COLOURS, device)[rng.choice(cfg.hair_colour_weights)])
        hair_col = (hair_col * rng.u((0.8, 1.2))).clamp(0, 1)
        # brows darker than the hair (light hair: much darker, in the skin's hue), never darker than black
        brow_col = torch.minimum(hair_col, hair_col * 0.45 + 0.003)
        brow_col = torch.minimum(brow_col, skin * 0.25)

        def where_(m: Tensor) -> Tensor:
            return m.nonzero().squeeze(1)

        # ---------------- eyebrows ----------------
        bi = where_(is_["right_eyebrow"] | is_["left_eyebrow"])
        if len(bi):
            # feathered interior (screen space) x stroke noise (rest space, strokes slanting outwards and up)
            brow_img = (seg == _C["right_eyebrow"]) | (seg == _C["left_eyebrow"])
            r_px = max(1.0, head_px / 110.0)
            feather = fx.masked_blur_at(brow_img, 0.6 * r_px, pix[bi])
            rb = rest[bi]
            s = rb[:, 0].abs()
            s_in, s_out = data.brow_span
            u = ((s - s_in) / max(s_out - s_in, 1e-4)).clamp(0, 1)
            theta = 1.2 - 0.95 * u
            ct, st_ = torch.cos(theta), torch.sin(theta)
            a = s * ct + rb[:, 1] * st_
            b = -s * st_ + rb[:, 1] * ct
            stroke_pitch = 0.0012 / data.scale  # ~1.2 mm between strokes
            q = torch.stack([(b / (stroke_pitch * 96)), a / (stroke_pitch * 96 * 6)], 1)
            strokes = fx.noise2(rng, (96, 96), q * 2 - 1, 1)[:, 0]
            density = rng.u(cfg.brow_density_range) * (1.0 - 0.3 * u) * fx.smoothstep(0.05, 0.45, feather)
            amt = (density * (0.8 + 0.3 * strokes)).clamp(0, 1)[:, None]
            albedo[bi] = albedo[bi] * (1 - amt) + brow_col * amt

        # ---------------- lips ----------------
        li = where_(is_["upper_lip"] | is_["lower_lip"])
        if len(li):
            dark = rng.u(cfg.lip_darkness_range)
            lr = rng.u(cfg.lip_redness_range)
            lip_col = skin * dark * torch.tensor([1 + lr, 1 - 0.8 * lr, 1 - 0.4 * lr], device=device)
            if rng.chance(cfg.lipstick_prob):
                lc = _lin(_palette(LIPSTICK_COLOURS, device)[rng.int(0, len(LIPSTICK_COLOURS) - 1)])
                lip_col = lip_col * 0.3 + lc * 0.7
            rl = rest[li]
            lines = fx.noise2(rng, (6, 160), torch.stack([rl[:, 1] * 4, rl[:, 0] * 2], 1).clamp(-1, 1), 1)
            lower_boost = 1.0 + 0.08 * (cls[li] == _C["lower_lip"]).float()[:, None]
            albedo[li] = (lip_col * (1 + 0.08 * lines) * lower_boost).clamp(0, 1)

        # ---------------- makeup: eye shadow and blush ----------------
        srng = looks["skin"]
        if srng.chance(cfg.eye_shadow_prob):
            col = _lin(_palette(EYE_SHADOW_COLOURS, device)[srng.int(0, len(EYE_SHADOW_COLOURS) - 1)])
            amount = srng.u(cfg.makeup_strength_range)
            oi = where_(is_["right_eye_region"] | is_["left_eye_region"])
            if len(oi):
                ro = rest[oi]
                right = ro[:, 0] < 0
                c = torch.where(right[:, None], data.eye_centre[0], data.eye_centre[1])
                up = ro[:, 1] - c[:, 1]  # above the eye centre
                out = (ro[:, 0] - c[:, 0]).abs() * torch.sign(ro[:, 0])  # towards the temple
                a = fx.smoothstep(-0.02 * s_io, 0.04 * s_io, up) * (1 - fx.smoothstep(0.12 * s_io, 0.3 * s_io, up))
                a = a * (0.7 + 0.3 * fx.smoothstep(-0.1 * s_io, 0.15 * s_io, out)) * amount
                albedo[oi] = torch.lerp(albedo[oi], col.expand(len(oi), 3), a[:, None])
        if srng.chance(cfg.blush_prob):
            col = _lin(_palette(BLUSH_COLOURS, device)[srng.int(0, len(BLUSH_COLOURS) - 1)])
            a = (0.5 * srng.u(cfg.makeup_strength_range) * reg[:, 0] * is_["face"].float()).clamp(0, 1)
            albedo = albedo * (1 + a[:, None] * (col / col.mean() - 1))

        # ---------------- inner mouth and teeth ----------------
        mi = where_(is_["inner_mouth"])
        ti = mi[:0]
        mouth_light = tongue_a = torch.zeros(0, device=device)
        if len(mi):
            mouth_col = _lin(_const(device, (0.55, 0.26, 0.26))) * rng.u((0.6, 1.1))
            # deeper = darker (relative to the lips' depth)
            d_flat = depth_img.reshape(-1)
            d_m = d_flat[pix[mi]]
            lip_depth = d_flat[pix[li]].min() if len(li) else d_m.min()
            deep = ((d_m - lip_depth) / 0.03).clamp(0, 1)[:, None]
            albedo[mi] = mouth_col * (1 - 0.6 * deep)
            # screen-space frame of the mouth: across (from its centre line) and down (upper to lower inner lip)
            lmk2 = ann.landmarks_2d[0].to(device, torch.float32)
            mx, my = (pix[mi] % W).float(), torch.div(pix[mi], W, rounding_mode="floor").float()
            corner_l, corner_r, top, bottom = lmk2[48], lmk2[54], lmk2[62], lmk2[66]
            side = F.normalize(corner_r - corner_l, dim=0)
            dn = torch.stack([-side[1], side[0]])
            rel = torch.stack([mx, my], 1) - 0.5 * (corner_l + corner_r)
            across = rel @ side
            opening = float((bottom - top) @ dn)
            down = ((torch.stack([mx, my], 1) - top) @ dn) / max(opening, 1.0)
            mouth_w = float((corner_r - corner_l).norm())
            mrng = looks["mouth"]
            k = max(3, int(round(head_px / 30)) | 1)
            # upper teeth show about 9 mm below the upper lip (a central incisor's crown is 10-11 mm; head_px, the
            # head-and-neck box, spans about 0.3 m): a max-filter k_up rows tall reaches k_up // 2 rows down
            k_up = max(3, int(round(head_px / 16)) | 1)
            near_upper = torch.zeros_like(mi, dtype=torch.bool)
            tooth = _lin(_const(device, (0.9, 0.87, 0.78)))
            if rng.chance(cfg.teeth_prob):
                near_upper = fx.dilate_at(seg == _C["upper_lip"], (k_up, 3), pix[mi])
                tooth = tooth * rng.u((0.75, 1.0))
                rng.rand(1, 1, 4, 24)  # a grid the teeth no longer use: keeps the main stream's layout
            near_lower = fx.dilate_at(seg == _C["lower_lip"], (max(3, k - 2), 3), pix[mi]) & (down > 0.5)
            lower_teeth = mrng.chance(cfg.lower_teeth_prob) and bool(near_upper.any())
            teeth, gaps, tongue = face_lib.mouth_parts(across, down, near_upper, near_lower, mouth_w / 7.0, lower_teeth)
            if not mrng.chance(cfg.tongue_prob):
                tongue = torch.zeros_like(tongue)
            tongue_col = _lin(_const(device, (0.72, 0.38, 0.4))) * mrng.u((0.7, 1.1))
            albedo[mi] = torch.lerp(albedo[mi], tongue_col * (1 - 0.3 * deep), tongue[:, None])
            tongue_a = tongue
            mouth_light = 0.55 + 0.2 * tongue + 0.3 * teeth.float()  # cavity darkening: less on tongue and teeth
            corner = fx.smoothstep(0.25, 0.5, across.abs() / max(mouth_w, 1.0))  # teeth darken towards the corners
            tv = tooth * ((1 - 0.4 * gaps) * (1 - 0.5 * corner) * (1 - 0.35 * deep[:, 0]))[:, None]
            ti = mi[teeth]
            albedo[ti] = tv[teeth]

        # ---------------- eyeballs ----------------
        any_eye = False
        iris_col = _lin(_palette(IRIS_COLOURS, device)[rng.choice(cfg.iris_colour_weights)])
        iris_col = iris_col * rng.u((0.8, 1.2))
        iris_ang = math.radians(rng.u(cfg.iris_angle_deg_range))
        pupil_ang = iris_ang * rng.u(cfg.pupil_fraction_range)
        sclera = _lin(_const(device, (0.86, 0.83, 0.79))) * rng.u((0.8, 1.0))
        radial_grid = rng.rand(1, 1, 6, 72) * 2 - 1
        vein = _const(device, (0.6, 1.0, 1.0))
        erng = looks["eyes"]
        centre_col = _lin(_const(device, (0.62, 0.42, 0.14))) if erng.chance(cfg.iris_heterochromia_prob) else None
        eyeball_img = (seg == _C["right_eyeball"]) | (seg == _C["left_eyeball"])
        lm2d = ann.landmarks_2d[0].to(device, torch.float32)
        lash_sigma = max(0.6, 0.035 * float((lm2d[45] - lm2d[36]).norm()))  # half the upper lashes' length
        cornea = torch.zeros(len(pix), device=device)
        # closeness of eyeball pixels to the lids: 1 - the eyeball's blurred mask (0.5 on the lid margin)
        near_lid = torch.zeros(len(pix), device=device)
        balls = where_(is_["right_eyeball"] | is_["left_eyeball"])
        if len(balls):
            near_lid[balls] = 1 - fx.masked_blur_at(eyeball_img, 1.5 * lash_sigma, pix[balls])
        for k_eye, name in enumerate(("right_eyeball", "left_eyeball")):
            ei = where_(is_[name])
            if not len(ei):
                continue
            any_eye = True
            re_ = rest[ei]
            c = data.eye_centre[k_eye] if bool(data.eye_ok[k_eye]) else re_.mean(0)
            d = F.normalize(re_ - c, dim=-1)
            ang = torch.acos(d[:, 2].clamp(-1, 1))  # angle from the rest gaze (+z)
            phi = torch.atan2(d[:, 1], d[:, 0])
            rr = ang / iris_ang
            q = torch.stack([phi / math.pi, (rr * 2 - 1).clamp(-1, 1)], 1)
            streaks = F.grid_sample(radial_grid, q.view(1, 1, -1, 2), align_corners=True, padding_mode="border").view(
                -1
            )
            ic = iris_col * (1 + 0.35 * streaks[:, None]) * (1 + 0.4 * (1 - rr.clamp(0, 1))[:, None])
            ic = ic * (1 - 0.55 * fx.smoothstep(0.75, 1.0, rr)[:, None])  # dark limbal ring
            ic = face_lib.iris(erng, ic, rr, phi, pupil_ang / iris_ang, centre_col)
            in_iris = (1 - fx.smoothstep(0.94, 1.04, rr))[:, None]
            pf = pupil_ang / iris_ang
            in_pupil = (1 - fx.smoothstep(pf - 0.06, pf + 0.04, rr))[:, None]
            sc = sclera * (1 - 0.18 * fx.smoothstep(1.3, 2.6, rr)[:, None] * vein)
            col = sc * (1 - in_iris) + ic * in_iris
            col = col * (1 - in_pupil) + 0.01 * in_pupil
            # the lids (and lashes) shade the eyeball below the upper lid and above the lower one
            shade = face_lib.lid_shadow(near_lid[ei], re_[:, 1] > c[1], erng.u((0.5, 0.9)))
            albedo[ei] = col * shade[:, None]
            cornea[ei] = 1 - fx.smoothstep(1.0, 1.3, rr)  # the cornea's bulge over the iris: the wettest part
        lash_f = rng.u((0.7, 1.0))
        wet = mi[:0]  # the lower lid's wet margin (glossy)
        if any_eye:
            # lashes and lash lines on the eye-region pixels round the eyeball, denser on the upper lid (above the
            # eyeball centre in the rest pose)
            oi = where_(is_["right_eye_region"] | is_["left_eye_region"])
            b = fx.masked_blur_at(eyeball_img, lash_sigma, pix[oi])
            lids = oi[b > 0.005]
            if len(lids):
                b = b[b > 0.005]
                rl = rest[lids]
                right = rl[:, 0] < 0
                cen = torch.where(right[:, None], data.eye_centre[0], data.eye_centre[1])
                upper = rl[:, 1] > cen[:, 1]
                out = torch.where(right, cen[:, 0] - rl[:, 0], rl[:, 0] - cen[:, 0])  # towards the temple
                angle = torch.atan2(rl[:, 1] - cen[:, 1], out)
                liner = erng.u((0.4, 1.0)) if erng.chance(cfg.eyeliner_prob) else 0.0
                density = erng.u(cfg.lash_density_range) * lash_f
                lash = face_lib.eyelashes(erng, b, upper, angle, density, liner)[:, None]
                lash_col = torch.minimum(hair_col, torch.full_like(hair_col, 0.01))
                albedo[lids] = albedo[lids] * (1 - lash) + lash_col * lash
                wet = lids[~upper & (b > 0.3)]

        # ---------------- scalp / hair ----------------
        occl = torch.zeros(H * W, dtype=torch.bool, device=device)
        layer = torch.full((H * W,), NO_OVERRIDE, dtype=torch.uint8, device=device)  # label_override, flat
        has_hair = rng.chance(cfg.hair_prob)
        scalp = is_["scalp"]
        hi = mi[:0]  # pixels painted with hair
        hair_s, hair_t2 = torch.zeros(0, device=device), torch.zeros(0, 2, device=device)  # strand texture, direction
        flow, hair_mat = self._hair_flow(looks["hair"], scene, data, K, bbox, head_px)
        if has_hair:
            hmask = scalp
            if rng.chance(cfg.fringe_prob):
                # fringe: hair continues down the forehead to a noisy edge between hairline and brows
                reach = rng.u(cfg.fringe_length_range)
                fore = is_["forehead"]
                top = float(rest[scalp | fore, 1].max()) if bool((scalp | fore).any()) else 1.0
                brow_y = data.brow_y
                hairline = float(rest[fore, 1].max()) if bool(fore.any()) else top
                edge_y = hairline - reach * (hairline - brow_y)
                wav = fx.noise2(rng, (1, 12), torch.stack([rest[:, 0], torch.zeros_like(rest[:, 0])], 1), 1)[:, 0]
                fr = (rest[:, 1] > edge_y + 0.06 * s_io * wav) & (
                    fore | is_["brow_band"] | is_["glabella"] | is_["right_ear"] | is_["left_ear"]
                )
                fr = fr & (rest[:, 2] > data.eye_z - 1.0 * s_io)
                occl[pix[fr]] = True
                hmask = hmask | fr
            hi = where_(hmask)
            rh = rest[hi]
            r = rh.norm(dim=1).clamp_min(1e-6)
            azim = torch.atan2(rh[:, 0], rh[:, 2]) / math.pi
            elev = torch.asin((rh[:, 1] / r).clamp(-1, 1)) / (math.pi / 2)
            ae = torch.stack([azim, elev], 1)
            rng.rand(1, 1, 24, 200)  # a grid the strand texture no longer uses: keeps the main stream's layout
            clumps = fx.noise2(rng, (6, 30), ae, 1)  # (M, 1) large clumps on the head
            hx, hy = (pix[hi] % W).float(), torch.div(pix[hi], W, rounding_mode="floor").float()
            hair_s, hair_t2 = hair_lib.strand_texture(flow, hx, hy)
            albedo[hi] = hair_col * (hair_s[:, None] * (1 + 0.12 * clumps))
            layer[pix[hi]] = _C["hair"]  # painted opaque: coverage 1
        else:
            # bare or shaved scalp: skin, optionally with a dark stubble shadow
            if rng.chance(0.4) and bool(scalp.any()):
                # shaved: a faint hair shadow fading in from the scalp boundary
                si = where_(scalp)
                r_px = max(1.0, head_px / 60.0)
                fade = fx.smoothstep(0.5, 1.0, fx.masked_blur_at(seg == _C["scalp"], r_px, pix[si]))[:, None] * 0.12
                albedo[si] = albedo[si] * (1 - fade) + hair_col * fade

        # ---------------- beard: a hair layer on the skin, labelled beard where its coverage reaches the threshold ---
        beard_px, beard_a = mi[:0], torch.zeros(0, device=device)
        beard_s, beard_t2, beard_alb = beard_a, torch.zeros(0, 2, device=device), torch.zeros(0, 3, device=device)
        if has_beard:
            style = brng.choice(cfg.beard_style_weights)
            w = (reg[:, 6], torch.maximum(reg[:, 4], reg[:, 5]), reg[:, 4], reg[:, 5])[style]
            ragged = fx.noise2(brng, (48, 48), pts[:, :2], 1)[:, 0]
            grain = brng.rand(len(pix)) - 0.5
            cover = brng.u(cfg.beard_density_range) * fx.smoothstep(0.3, 0.7, w + 0.2 * ragged + 0.15 * grain)
            cover = cover * (is_["face"] | is_["neck"] | is_["nose"]).float()
            beard_px = where_(cover > 1.0 / 255)
            beard_a = cover[beard_px]
            beard_col = hair_col * brng.u((0.6, 1.0))
            if brng.chance(0.15):  # greying
                beard_col = beard_col + (_lin(_const(device, (0.6, 0.6, 0.6))) - beard_col) * brng.u((0.3, 0.8))
            nose = ann.landmarks_2d[0, 30].to(device, torch.float32)
            curl, contrast = brng.u(cfg.beard_curl_range), brng.u((0.5, 0.9))
            beard_flow = hair_lib.make_flow(brng, (float(nose[0]), float(nose[1])), 0.6 * head_px, curl, contrast, 0.0,
                                            kink=4.0)  # fmt: skip
            bx, by = (pix[beard_px] % W).float(), torch.div(pix[beard_px], W, rounding_mode="floor").float()
            beard_s, beard_t2 = hair_lib.strand_texture(beard_flow, bx, by)
            beard_alb = beard_col * beard_s[:, None]
            layer[pix[beard_px[beard_a >= LAYER_COVERAGE_THRESHOLD]]] = _C["beard"]

        # ---------------- lights ----------------
        n_lights = rng.int(cfg.num_lights_range[0], cfg.num_lights_range[1])
        L_dirs, L_cols = [], []
        key = rng.u(cfg.key_intensity_range)
        for li in range(n_lights):
            az = math.radians(rng.u(cfg.light_azimuth_deg_range))
            el = math.radians(rng.u(cfg.light_elevation_deg_range))
            if li > 0 and rng.chance(0.25):  # occasional rim light from behind
                az = az + math.pi * (0.6 if az > 0 else -0.6)
            d = torch.tensor([math.sin(az) * math.cos(el), -math.sin(el), -math.cos(az) * math.cos(el)], device=device)
            inten = key if li == 0 else key * rng.u(cfg.fill_ratio_range)
            sat = rng.u(cfg.light_saturation_range)
            warm = torch.tensor([1.0, 0.82, 0.62], device=device)
            cool = torch.tensor([0.7, 0.83, 1.0], device=device)
            tint = warm if rng.chance(0.5) else cool
            col = (1 - sat) + sat * tint
            L_dirs.append(d)
            L_cols.append(col / col.mean() * inten)
        amb = rng.u(cfg.ambient_range)
        amb_tint = 1 + 0.15 * (rng.rand(3) * 2 - 1)
        exposure = rng.u(cfg.exposure_range)
        wrap = rng.u(cfg.wrap_range)
        ks_skin = rng.u(cfg.specular_range)
        shin_skin = rng.u(cfg.shininess_range)

        # ---------------- background layer (low resolution, then upsampled; behind the head) ----------------
        bg_kind = rng.choice(cfg.background_weights)
        f_bg = 1 if bg_kind == _CLUTTER else max(1, math.ceil(max(H, W) / cfg.background_max_side))
        bh, bw = math.ceil(H / f_bg), math.ceil(W / f_bg)
        bg = self._background(rng, bg_kind, bh, bw, device)
        lm2 = ann.landmarks_2d[0].to(device, torch.float32)
        neck_img = (seg == _C["neck"]) | (seg == _C["neck_back"])  # (H, W) bool
        clothes = torso = None
        if rng.chance(cfg.shoulders_prob):
            bg, torso, *clothes = self._shoulders(rng, looks["cloth"], bg, neck_img, lm2, head_px, skin, f_bg)
        hair_img = torch.zeros(H * W, device=device)
        hair_img[pix[hi]] = 1.0
        vol_alpha = vol_shade = None
        if has_hair and rng.chance(cfg.hair_volume_prob):
            vol_shade, vol_alpha = self._hair_volume(rng, bh, bw, hair_img.view(H, W), head_px, f_bg, lm2)
            # the coverage of a full-size pixel: the alpha upsampled like the layer itself
            vol_alpha, vol_shade = _to_image_size(torch.stack([vol_alpha, vol_shade]), H, W)
            if torso is not None:  # long hair falling behind the back: the clothes hide it (0 where it falls over)
                vol_alpha = vol_alpha * (1 - _to_image_size(torso[None], H, W)[0])
        bg_small = bg
        bg = bg[None].contiguous(memory_format=torch.channels_last)
        if (bh, bw) != (H, W):
            bg = F.interpolate(bg, size=(H, W), mode="bilinear", align_corners=False)

        # ---------------- light from the scene: environment colour, occlusion, shadows (no main-stream draws) ----
        lrng = looks["light"]
        D = torch.stack(L_dirs)
        Lc = torch.stack(L_cols)
        amb_up, amb_down = self._environment(lrng, bg_small, amb, amb_tint)
        ao_strength, shadow_strength = lrng.u(cfg.ambient_occlusion_range), lrng.u(cfg.shadow_strength_range)
        softness = lrng.u(cfg.shadow_softness_range)
        view_d = light_maps = None
        if (ao_strength > 0 or shadow_strength > 0) and len(pix):
            view_d = lighting_lib.depth_view(depth_img, mask, K)
        sss = srng.u(cfg.subsurface_range)  # scattering radius of red light in the skin, head sizes
        if view_d is not None:
            means = lighting_lib.occlusion_means(view_d)
            if shadow_strength > 0:
                sh = 1 - shadow_strength * (1 - lighting_lib.shadow_visibility(view_d, D, softness))
            else:
                sh = torch.ones(len(D), *means.shape[1:], device=device)
            # light scattered under the skin: red and green see softer shadow edges than blue
            r_low = sss * view_d.head_m / view_d.m_per_px
            sh_r, sh_g = (lighting_lib.masked_blur(view_d, sh, k * r_low) if k * r_low > 0.3 else sh for k in (1, 0.45))
            light_maps = torch.cat([sh, sh_r, sh_g, means], 0)  # (3 L + 3 x AO radii, h, w)

        # per-pixel material from per-class tables, then teeth and hair
        ks_t = [ks_skin] * 256
        shin_t = [shin_skin] * 256
        wrap_t = [wrap] * 256
        for name in ("forehead", "nose", "glabella"):  # oily T-zone
            ks_t[_C[name]] = ks_skin * 1.6
        for name in ("upper_lip", "lower_lip"):
            ks_t[_C[name]] = ks_skin * 2.0
            shin_t[_C[name]] = shin_skin * 1.5
        for name in ("right_eyeball", "left_eyeball"):
            ks_t[_C[name]], shin_t[_C[name]], wrap_t[_C[name]] = 0.6, 400.0, 0.0
        ks_t[_C["inner_mouth"]] = ks_skin * 0.5
        tables = torch.tensor([ks_t, shin_t, wrap_t], dtype=torch.float32, device=device)[:, cls]  # (3, N)
        ks = tables[0] * (0.8 + 0.4 * fine[:, 0])
        shin = tables[1]
        wrap_px = tables[2]
        # skin detail (its own stream): oily T-zone, fine bumps for the highlights, subsurface radius
        oil = srng.u(cfg.skin_oiliness_range)
        tzone = (is_["forehead"] | is_["glabella"] | is_["nose"]).float() + 0.7 * reg[:, 5]
        ks = ks * (1 + oil * tzone)
        shin = shin * (1 + oil * tzone)
        bump = srng.u(cfg.skin_bump_range)
        relief = 0.6 * srng.randn(len(pix), 2) + 0.8 * fx.noise2(srng, (120, 120), pts[:, :2], 2)
        if len(ti):
            ks[ti] = 0.25
            wrap_px[ti] = 0.0
        if len(mi):  # a wet tongue
            ks[mi] = torch.lerp(ks[mi], torch.full_like(ks[mi], 0.3), tongue_a)
            shin[mi] = torch.lerp(shin[mi], torch.full_like(shin[mi], 40.0), tongue_a)
        if len(wet):  # the lower lid's wet margin
            ks[wet], shin[wet] = 0.45, 80.0

        # shading, all lights at once: D (L, 3) directions towards the lights, Lc (L, 3) colours x intensities
        n = normal
        ndl = n @ D.T  # (N, L)
        nL = len(D)
        ambient = self._ambient(n, amb_up, amb_down)  # (N, 3)
        vis = vis_r = vis_g = torch.ones_like(ndl)  # (N, L) light visibility (red and green: softer, see above)
        ao = torch.zeros_like(ndl[:, :1])
        if view_d is not None and light_maps is not None:  # ambient occlusion and shadows from the depth map
            py = torch.div(pix, W, rounding_mode="floor")
            terms = lighting_lib.sample_at(view_d, light_maps, pix % W, py)
            vis, vis_r, vis_g = terms[:, :nL], terms[:, nL : 2 * nL], terms[:, 2 * nL : 3 * nL]
            points = ray * depth_img.reshape(-1)[pix][:, None]
            ao = lighting_lib.ambient_occlusion(points, n, terms[:, 3 * nL :], view_d.head_m)[:, None] * ao_strength
            ambient = ambient * (1 - ao)
        # diffuse per channel: subsurface scattering wraps red light further round the terminator (red-shifted
        # wrap) and softens its shadow edges
        skin_px = ~(is_["right_eyeball"] | is_["left_eyeball"] | is_["inner_mouth"])
        if len(hi):
            skin_px[hi] = False
        sss_wrap = min(0.5, 25.0 * sss) * skin_px.float()[:, None]
        direct = torch.empty_like(albedo)
        for c, (k, v) in enumerate(((1.0, vis_r), (0.45, vis_g), (0.25, vis))):
            w = wrap_px[:, None] + k * sss_wrap
            direct[:, c] = (((ndl + w) / (1 + w)).clamp_min(0) * v * (1 - 0.3 * ao)) @ Lc[:, c]
        irr = ambient + direct
        # n . normalize(view + d) for unit view and d: (n.v + n.d) / sqrt(2 + 2 v.d), without (N, L, 3) temporaries;
        # the highlights see a bumpy normal (pores, relief) on the skin
        nb = n + bump * skin_px[:, None].float() * torch.cat([relief, torch.zeros_like(relief[:, :1])], 1)
        nb = F.normalize(nb, dim=-1)
        nv = (nb * view) @ ones3
        ndh = ((nv[:, None] + nb @ D.T) * torch.rsqrt((2 + 2 * (view @ D.T)).clamp_min(1e-6))).clamp_min(1e-6)
        norm = ((shin + 8) / (8 * math.pi)).clamp(max=4.0) * ks
        sp = torch.exp(shin[:, None] * torch.log(ndh)) * (ndl > 0) * norm[:, None]
        spec = (sp * vis) @ Lc
        rad = albedo * irr + spec
        eye_px = where_(is_["right_eyeball"] | is_["left_eyeball"])
        if len(eye_px):  # the key light seen as an area light in the wet eye
            radius, strength = erng.u(cfg.catchlight_radius_deg_range), erng.u(cfg.catchlight_strength_range)
            glint = face_lib.catchlight(n[eye_px], view[eye_px], D[0], radius) * vis[eye_px, 0] * strength
            glint = glint * (0.25 + 0.75 * cornea[eye_px])  # the sclera is less glossy
            rad[eye_px] += glint[:, None] * (Lc[0] / Lc[0].max().clamp_min(1e-6))
        if len(hi):  # scalp hair and fringe: opaque hair (coverage 1)
            tangent = hair_lib.lift_tangent(hair_t2, n[hi])
            rad[hi] = self._hair_radiance(albedo[hi], n[hi], tangent, view[hi], ambient[hi], (D, Lc, vis[hi]), hair_mat,
                                          hair_s)  # fmt: skip
        if len(beard_px):  # the beard over the skin, composited by its coverage
            bn = n[beard_px]
            beard_mat = dataclasses.replace(hair_mat, spec=0.5 * hair_mat.spec, exponent=0.5 * hair_mat.exponent)
            rb = self._hair_radiance(beard_alb, bn, hair_lib.lift_tangent(beard_t2, bn), view[beard_px],
                                     ambient[beard_px], (D, Lc, vis[beard_px]), beard_mat, beard_s)  # fmt: skip
            rad[beard_px] = torch.lerp(rad[beard_px], rb, beard_a[:, None])
        if len(mi):  # cavity darkening: the inner mouth gets less light
            rad[mi] = rad[mi] * mouth_light[:, None]
        rad = rad * exposure
        head_rgb = _srgb(rad)  # (N, 3) sRGB

        # ---------------- compose: hair layers over the background, then the head, anti-aliased at edges ----------
        img = bg.permute(0, 2, 3, 1).reshape(-1, 3)  # (H*W, 3); a view when the layout is channels-last
        if img.data_ptr() == bg.data_ptr() and (bh, bw) == (H, W):
            img = img.clone()
        if has_hair:
            lighting = (D, Lc, amb_up, amb_down, exposure)
            hair_head = hair_img.view(H, W) > 0.5
            cover = self._hair_layers(looks["hair"], img, K, mask, hair_head, vol_alpha, vol_shade, flow, hair_mat,
                                      hair_col, bbox, head_px, lighting)  # fmt: skip
            layer[(cover.reshape(-1) >= LAYER_COVERAGE_THRESHOLD) & ~mask.reshape(-1)] = _C["hair"]  # behind the head
        img[pix] = head_rgb
        if cfg.antialias and len(pix):
            edge = _edges(mask, depth_img, 0.01, hair_img.view(H, W) > 0.5)
            img = _filter_at(img, edge, H, W)

        # ---------------- occluders in front ----------------
        if clothes is not None:  # the clothes over the neck below the collar (labelled background, like a hand)
            both = _to_image_size(torch.cat([clothes[0][None], clothes[1]]), H, W)
            front, colour = both[0], both[1:]
            on_neck = neck_img & mask
            a = (front * on_neck.float()).reshape(-1, 1)
            img = torch.lerp(img, colour.reshape(3, -1).T, a)
            c_occ = on_neck.reshape(-1) & (a[:, 0] >= LAYER_COVERAGE_THRESHOLD)
            occl |= c_occ
            layer[c_occ] = _C["background"]
        if rng.chance(cfg.glasses_prob):
            g_occ, g_seen = self._glasses(rng, img, ann, depth_img, mask, K, L_cols, amb)
            occl |= g_occ.reshape(-1)
            # eyes and brows seen through a clear lens (no frame in front) keep their class (CelebAMask-HQ's rule)
            through = g_seen & ~g_occ & torch.isin(seg, _SEEN_THROUGH_LENSES.to(device))
            layer[(g_seen & ~through).reshape(-1)] = _C["eyeglasses"]
        for kind, p in (("hand", cfg.hand_prob), ("object", cfg.object_prob)):
            if rng.chance(p):
                o_occ = self._blob_occluder(rng, img, H, W, bbox, kind, skin)
                occl |= o_occ.reshape(-1)
                layer[o_occ.reshape(-1)] = _C["background"]

        # ---------------- camera effects ----------------
        image = apply_camera_effects(img.T.reshape(3, H, W), rng, cfg)
        occluder = occl.view(H, W) & mask
        layer = layer.view(H, W)
        return RenderOutput(
            image=image,
            latent=torch.zeros(0, dtype=torch.float32, device=device),
            occluder_mask=occluder if bool(occluder.any()) else None,
            label_override=layer if bool((layer != NO_OVERRIDE).any()) else None,
        )

    # ------------------------------------------------------------------------------------------------------------------
    def _background(self, rng: _Rng, kind: int, H: int, W: int, device: torch.device) -> Tensor:
        """(3, H, W) sRGB background in [0, 1]."""
        cfg = self.config
        ys, xs = torch.meshgrid(
            torch.linspace(-1, 1, H, device=device), torch.linspace(-1, 1, W, device=device), indexing="ij"
        )
        c1, c2, c3 = rng.colour(), rng.colour(), rng.colour()
        if kind == 0:  # linear gradient, 2-3 stops
            ang = rng.u((0, 2 * math.pi))
            t = ((xs * math.cos(ang) + ys * math.sin(ang)) * 0.5 + 0.5).clamp(0, 1)[None]
            mid = rng.u((0.3, 0.7))
            bg = torch.where(
                t < mid,
                c1[:, None, None] * (1 - t / mid) + c2[:, None, None] * (t / mid),
                c2[:, None, None] * (1 - (t - mid) / (1 - mid)) + c3[:, None, None] * ((t - mid) / (1 - mid)),
            )
            bg = bg + 0.03 * fx.field(rng, 6, H, W, 1)
        elif kind == 1:  # radial
            cx, cy = rng.u((-0.8, 0.8)), rng.u((-0.8, 0.8))
            r = ((xs - cx) ** 2 + (ys - cy) ** 2).sqrt()[None] / rng.u((0.8, 2.0))
            t = r.clamp(0, 1)
            bg = c1[:, None, None] * (1 - t) + c2[:, None, None] * t + 0.03 * fx.field(rng, 5, H, W, 1)
        elif kind == 2:  # fractal noise mapped to a 3-colour palette
            nz = fx.fractal(rng, H, W, 1, rng.int(2, 5), 4)
            t = (nz * rng.u((1.0, 2.0)) * 0.5 + 0.5).clamp(0, 1)
            bg = torch.where(
                t < 0.5,
                c1[:, None, None] * (1 - 2 * t) + c2[:, None, None] * (2 * t),
                c2[:, None, None] * (2 - 2 * t) + c3[:, None, None] * (2 * t - 1),
            )
        elif kind == 3:  # colour field (like a defocused scene)
            res = rng.int(2, 6)
            # colours around a random mean colour, saturation limited (a blurred room, not a rainbow)
            spread = rng.u((0.15, 0.45))
            grid = c1.view(1, 3, 1, 1) + spread * (rng.rand(1, 3, res, res) - 0.5)
            grey = grid.mean(1, keepdim=True)
            grid = grey + (grid - grey) * rng.u((0.3, 0.9))
            bg = F.interpolate(grid, size=(H, W), mode="bicubic", align_corners=False)[0]
            bg = bg + 0.04 * fx.fractal(rng, H, W, 3, 8, 3)
        elif kind == _CLUTTER:
            bg = draw_clutter(
                rng, H, W, _palette(SKIN_TONES, device), _palette(HAIR_COLOURS, device), cfg.other_faces_prob
            )
        else:  # random shapes on a flat/gradient base
            t = (ys * 0.5 + 0.5)[None]
            bg = c1[:, None, None] * (1 - t) + c2[:, None, None] * t
            n_shapes = rng.int(3, 9)
            for _ in range(n_shapes):
                col = rng.colour()
                cx, cy = rng.u((-1.2, 1.2)), rng.u((-1.2, 1.2))
                sx, sy = rng.u((0.05, 0.6)), rng.u((0.05, 0.6))
                rot = rng.u((0, math.pi))
                dx, dy = xs - cx, ys - cy
                u = dx * math.cos(rot) + dy * math.sin(rot)
                v = -dx * math.sin(rot) + dy * math.cos(rot)
                px = 2.0 / max(H, W)
                if rng.chance(0.5):  # ellipse (approximate signed distance)
                    sd = (((u / sx) ** 2 + (v / sy) ** 2).sqrt() - 1) * min(sx, sy)
                else:  # rectangle / stripe
                    sd = torch.maximum(u.abs() - sx, v.abs() - sy * (0.15 if rng.chance(0.3) else 1.0))
                a = (0.5 - sd / px).clamp(0, 1)[None] * rng.u((0.5, 1.0))
                bg = bg * (1 - a) + col[:, None, None] * a
            bg = bg + 0.02 * fx.field(rng, 8, H, W, 1)
        if rng.chance(cfg.background_blur_prob):
            bg = fx.blur_lowres(bg, rng.u((1.0, 4.0)) * max(H, W) / 256, max_side=64)
        # a soft vignette / lighting falloff
        vig = rng.u((0.0, 0.3))
        bg = bg * (1 - vig * (xs**2 + ys**2)[None] / 2)
        return bg.clamp(0, 1)

    def _shoulders(
        self, rng: _Rng, crng: _Rng, bg: Tensor, neck: Tensor, lm2: Tensor, head_px: float, skin: Tensor, f: int
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Draw a clothed torso below the neck (``neck``: (H, W) bool pixels of the neck classes) on the (3, h, w)
        background drawn at 1/``f`` of the image size (shape from the main stream ``rng``, the clothes' colours and
        fabric from their own stream ``crng``).

        Returns:
            ``(bg, behind, front, colour)``: the background with the torso; (h, w) float32 coverage in [0, 1] of the
            torso where the hair volume falls behind it (all 0 when the hair falls over the clothes, see
            ``hair_behind_clothes_prob``), and of the clothes themselves (the torso without its skin neckline), which
            also cover the neck mesh below the collar; and (3, h, w) sRGB colour of the torso.
        """
        device = bg.device
        _, bh, bw = bg.shape
        chin = lm2[8]
        eyes_mid = 0.5 * (lm2[36:42].mean(0) + lm2[42:48].mean(0))
        down = F.normalize(chin - eyes_mid, dim=0)
        if not bool(torch.isfinite(down).all()):
            return bg, bg.new_zeros(bh, bw), bg.new_zeros(bh, bw), bg
        # the collar's front: below the chin by a fraction of the chin-eyes distance (the neck mesh is longer than a
        # real neck above the clothes; the clothes cover the rest of it, see the return value)
        base = chin + down * float((chin - eyes_mid).norm()) * crng.u(self.config.collar_drop_range)
        behind = crng.chance(self.config.hair_behind_clothes_prob)  # before the looks: labels don't depend on them
        if bool(neck.any()):
            yy, xx = neck.nonzero(as_tuple=True)
            near = ((xx.float() - base[0]) * down[0] + (yy.float() - base[1]) * down[1]).abs() < 0.1 * head_px
            xx, yy = (xx[near], yy[near]) if bool(near.any()) else (xx, yy)
            neck_w = float(((xx.float() - base[0]) * down[1] - (yy.float() - base[1]) * down[0]).abs().max())
        else:
            neck_w = 0.2 * head_px
        neck_w = min(max(neck_w, 0.12 * head_px), 0.3 * head_px)
        # low-resolution grid in full-resolution pixel coordinates
        xs = (torch.arange(bw, dtype=torch.float32, device=device) + 0.5) * f - 0.5
        ys = (torch.arange(bh, dtype=torch.float32, device=device) + 0.5) * f - 0.5
        dx, dy = xs[None, :] - base[0], ys[:, None] - base[1]
        along = dx * down[0] + dy * down[1]  # pixels below the neck base
        across = dx * down[1] - dy * down[0]
        a = across.abs()
        shoulder_w = head_px * rng.u((0.6, 0.85))  # half width of the shoulders
        drop = head_px * rng.u((0.05, 0.2))  # how far the shoulder line falls from the neck to the shoulder
        # top of the torso: rises to the neck (trapezius), falls at the shoulders, then down the arms
        top = drop * fx.smoothstep(neck_w * 0.8, neck_w * 3.0, a) - head_px * 0.04
        top = top + 12.0 * (a - shoulder_w).clamp_min(0) ** 2 / head_px
        alpha = (0.5 + (along - top) / f).clamp(0, 1)
        rng.colour()  # the former clothing colour: keeps the main stream's layout (colours come from ``crng``)
        cfg = self.config
        cloth = cloth_lib.cloth_colour(crng, cfg.cloth_dark_prob, cfg.cloth_light_prob)
        open_depth = head_px * rng.u(cfg.neckline_depth_range)
        open_w = neck_w * rng.u(cfg.neckline_width_range)
        neckline = (along < open_depth * (1 - (a / open_w).clamp(0, 1) ** rng.u((1.0, 2.5)))) & (a < open_w)
        skin_s = _srgb(skin * 0.8)
        shade = 0.75 + 0.25 * torch.cos((across / (shoulder_w * 1.2)).clamp(-1.5, 1.5))
        texture = 1 + 0.05 * fx.field(rng, 20, bh, bw, 1)[0]
        texture = texture * cloth_lib.fabric_shading(crng, along, across, head_px, cfg.cloth_fold_range,
                                                     cfg.cloth_pattern_prob)  # fmt: skip
        col = cloth[:, None, None].expand(3, bh, bw)
        if crng.chance(cfg.shirt_prob):  # a shirt in the opening of a jacket, the jacket's lapels darker at the seam
            shirt, seam = cloth_lib.shirt_opening(crng, along, a, open_w, open_depth)
            shirt_col = cloth_lib.cloth_colour(crng, 0.1, 0.6)
            col = torch.where(shirt[None], shirt_col[:, None, None], col) * (1 - 0.4 * seam)[None]
        col = torch.where(neckline[None], skin_s[:, None, None], col) * (shade * texture)[None]
        col = col * (1 - 0.3 * (along / (bh * f)).clamp(0, 1))[None]
        return bg * (1 - alpha[None]) + col * alpha[None], alpha * float(behind), alpha * (~neckline).float(), col

    def _hair_volume(
        self, rng: _Rng, bh: int, bw: int, hair_img: Tensor, head_px: float, f: int, lm2: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Hair around the scalp silhouette at the background layer's low resolution (bh, bw) = 1/``f`` of the
        image (it is drawn behind the head); long hair (``long_hair_prob``) is the scalp hair's silhouette swept down
        the face's down direction (eyes to chin, from the (68, 2) image landmarks ``lm2``) before the volume is grown
        around it. ``hair_img`` (H, W) float32 is 1 on the head pixels painted with hair.

        Returns:
            ``(shade, alpha)``: (bh, bw) float32 brightness of the volume (darker towards its outer edge, clumps) and
            its alpha in [0, 1].
        """
        if not bool((hair_img > 0.5).any()):
            return hair_img.new_ones(bh, bw), hair_img.new_zeros(bh, bw)
        small = F.avg_pool2d(hair_img[None, None], f, ceil_mode=True)[0] if f > 1 else hair_img[None]
        small = small[:, :bh, :bw]
        long_hair = rng.chance(self.config.long_hair_prob)
        fall = rng.u(self.config.long_hair_length_range) * head_px / f  # low-resolution pixels
        down = F.normalize(lm2[8] - 0.5 * (lm2[36:42].mean(0) + lm2[42:48].mean(0)), dim=0)
        if long_hair and bool(torch.isfinite(down).all()):
            small = _sweep(small, (float(down[0]), float(down[1])), int(round(fall)))
        thick = rng.u(self.config.hair_volume_range) * head_px / f
        spread = fx.blur_lowres(small, max(0.7, thick / 2), max_side=64)[0]
        wav = fx.field(rng, 24, bh, bw, 1)[0]
        peak = spread.max().clamp_min(1e-6)
        region = fx.smoothstep(0.16, 0.3, spread / peak + 0.1 * wav)
        clumps = 1 + 0.2 * fx.field(rng, 60, bh, bw, 1)[0]
        shade = (0.5 + 0.5 * (spread / peak).clamp(0, 1)) * clumps
        return shade, region

    def _environment(self, rng: _Rng, bg: Tensor, amb: float, amb_tint: Tensor) -> tuple[Tensor, Tensor]:
        """Linear ambient colours (3,) from above and from below: ``amb`` x ``amb_tint`` (0.6 of it from below),
        tinted towards the mean colour of the upper / lower half of the (3, h, w) sRGB background by a fraction
        drawn from ``environment_light_range`` (light bounced by the scene)."""
        mix = rng.u(self.config.environment_light_range)
        h = bg.shape[1]
        tints = []
        for part in (bg[:, : max(1, h // 2)], bg[:, h // 2 :]):
            c = _lin(part.mean((1, 2)))
            tints.append(1 + mix * ((c / c.mean().clamp_min(1e-3)).clamp(0.3, 2.5) - 1))
        base = amb * amb_tint
        return base * tints[0], 0.6 * base * tints[1]

    @staticmethod
    def _ambient(normal: Tensor, up: Tensor, down: Tensor) -> Tensor:
        """(N, 3) ambient irradiance of camera-frame normals (N, 3): ``up`` facing up (y down), ``down`` facing down,
        linear in between."""
        w = 0.5 - 0.5 * normal[:, 1:2]
        return down + w * (up - down)

    def _hair_flow(
        self, look: _Rng, scene: Scene, data: _ModelData, K: Tensor, bbox: Tensor, head_px: float
    ) -> tuple[hair_lib.HairFlow, hair_lib.HairMaterial]:
        """The sample's hair flow and its highlight material. The flow centre is the projection of a point beyond the
        crown (a scalp vertex at the top and back of the head, moved sideways by ``hair_flow_offset_range``), away
        from the head's centre by 0.2-0.6 of the crown's distance to it."""
        cfg = self.config
        device = K.device
        off, back = look.u(cfg.hair_flow_offset_range), look.u((0.8, 2.5))
        wave, contrast = look.u(cfg.hair_wave_range), look.u(cfg.hair_strand_contrast_range)
        root = look.u(cfg.hair_root_darkness_range)
        material = hair_lib.HairMaterial(
            spec=look.u(cfg.hair_highlight_range),
            exponent=look.u(cfg.hair_highlight_exponent_range),
            shift=look.u((0.05, 0.2)),
        )
        lift = look.u((0.2, 0.6))
        ids = data.scalp_ids
        target = F.normalize(torch.tensor([off, 1.0, -back], device=device), dim=0)
        verts = torch.as_tensor(scene.vertices_world, dtype=torch.float32).to(device)
        x0, y0, x1, _ = (float(v) for v in bbox)
        centre = ((x0 + x1) / 2, y0)  # without the posed mesh: the top of the head's box
        if len(verts) == len(data.rest):
            crown = verts[int(ids[int(torch.argmax(data.rest[ids] @ target))])]
            # the flow centre sits outside the head, beyond the crown: seen from the front the strands come over
            # the top of the head instead of converging on a visible point
            centre3 = 0.5 * (verts.amin(0) + verts.amax(0))
            crown = crown + lift * (crown - centre3)
            c2w = torch.as_tensor(scene.cam2world, dtype=torch.float32, device=device).reshape(4, 4)
            p = c2w[:3, :3].T @ (crown - c2w[:3, 3])
            if float(p[2]) > 1e-3 and bool(torch.isfinite(p).all()):
                q = K @ (p / p[2])
                centre = (float(q[0]), float(q[1]))
        return hair_lib.make_flow(look, centre, head_px, wave, contrast, root), material

    def _hair_radiance(
        self,
        albedo: Tensor,
        normal: Tensor,
        tangent: Tensor,
        view: Tensor,
        ambient: Tensor,
        lights: tuple[Tensor, Tensor, Tensor | None],
        material: hair_lib.HairMaterial,
        strands: Tensor,
    ) -> Tensor:
        """Linear radiance (M, 3) of the hair at M pixels (every hair layer is shaded here; see
        :func:`next3d_gen.render.hair.kajiya_kay` for the arguments; ``lights`` is ``(dirs, colours, visibility or
        None)``, ``strands`` (M,) the strand texture, whose square makes the highlights break up into strands)."""
        dirs, colours, visibility = lights
        glint = strands * strands
        return hair_lib.kajiya_kay(
            albedo, normal, tangent, view, dirs, colours, ambient, material, visibility=visibility, glint=glint
        )

    def _hair_layers(
        self,
        look: _Rng,
        img: Tensor,
        K: Tensor,
        mask: Tensor,
        hair_head: Tensor,
        vol_alpha: Tensor | None,
        vol_shade: Tensor | None,
        flow: hair_lib.HairFlow,
        material: hair_lib.HairMaterial,
        hair_col: Tensor,
        bbox: Tensor,
        head_px: float,
        lighting: tuple[Tensor, Tensor, Tensor, Tensor, float],
    ) -> Tensor:
        """Draw the hair volume (``vol_alpha`` / ``vol_shade``: (H, W) alpha and brightness, or None) and flyaway
        strands into the (H*W, 3) sRGB image ``img`` in place, on the background pixels (not ``mask``), with the strand
        texture and hair shading at full resolution. Flyaways start on the outline of the hair (the head pixels
        painted with hair, ``hair_head``, and the volume where its alpha reaches the label threshold).

        The volume's soft edge becomes strands (:func:`next3d_gen.render.hair.strand_edge`: its coverage changes but
        stays on the same side of the label threshold).

        Returns:
            (H, W) float32 coverage of the hair layers on each background pixel: ``1 - (1 - volume)(1 - flyaways)``.
        """
        cfg = self.config
        H, W = mask.shape
        dirs, colours, amb_up, amb_down, exposure = lighting
        x0, y0, x1, y1 = (float(v) for v in bbox)
        centre = torch.tensor([(x0 + x1) / 2, (y0 + y1) / 2], device=img.device)

        def shade(ids: Tensor, bright: Tensor) -> tuple[Tensor, Tensor]:
            """sRGB colour (M, 3) of the hair at flat pixel ids (M,) and its strand texture (M,)."""
            x, y = (ids % W).float(), torch.div(ids, W, rounding_mode="floor").float()
            tex, t2 = hair_lib.strand_texture(flow, x, y)
            e = (torch.stack([x, y], 1) - centre) / (0.5 * head_px)
            e = e / e.norm(dim=1, keepdim=True).clamp_min(1.0)
            n = F.normalize(torch.cat([0.6 * e, -torch.ones_like(x)[:, None]], 1), dim=-1)  # a rounded volume
            view = -F.normalize(fx.rays(K, x, y), dim=-1)
            ambient = self._ambient(n, amb_up, amb_down)
            albedo = hair_col * (tex * bright)[:, None]
            tangent = hair_lib.lift_tangent(t2, n)
            rad = self._hair_radiance(albedo, n, tangent, view, ambient, (dirs, colours, None), material, tex)
            return _srgb(rad * exposure), tex

        cover = torch.zeros(H, W, device=img.device)
        if vol_alpha is not None and vol_shade is not None:
            ids = ((vol_alpha > 1.0 / 512) & ~mask).reshape(-1).nonzero().squeeze(1)
            if len(ids):
                a = vol_alpha.reshape(-1)[ids]
                rgb, tex = shade(ids, vol_shade.reshape(-1)[ids])
                a = hair_lib.strand_edge(a, tex, LAYER_COVERAGE_THRESHOLD)
                cover.view(-1)[ids] = a
                img[ids] = img[ids] * (1 - a[:, None]) + rgb * a[:, None]
        count = look.int(cfg.flyaway_count_range[0], cfg.flyaway_count_range[1])
        region = hair_head | (cover >= LAYER_COVERAGE_THRESHOLD)
        fly = hair_lib.flyaways(look, flow, region, ~mask, count, cfg.flyaway_length_range, cfg.flyaway_alpha_range)
        ids = (fly > 0).reshape(-1).nonzero().squeeze(1)
        if len(ids):
            a = fly.reshape(-1)[ids][:, None]
            img[ids] = img[ids] * (1 - a) + shade(ids, torch.full_like(a[:, 0], 1.1))[0] * a
        return 1 - (1 - cover) * (1 - fly)

    def _glasses(
        self, rng: _Rng, img: Tensor, ann: Any, depth: Tensor, mask: Tensor, K: Tensor, lights: list, amb: float
    ) -> tuple[Tensor, Tensor]:
        """Glasses ray-cast in 3D, drawn into the (H*W, 3) image in place.

        Returns:
            ``(occluded, seen)``: (H, W) bool head pixels the frame (or dark lenses) covers, and (H, W) bool pixels,
            head or background, where the frame or a lens (clear or dark) is in front with coverage >=
            :data:`~next3d_gen.labels.LAYER_COVERAGE_THRESHOLD`.

        The frame is built from the posed 3D landmarks: a lens plane just in front of the nose bridge carries two
        superellipse rims; the bridge and the temple arms are capsules; everything is depth-tested against the head.
        """
        H, W = depth.shape
        device = img.device
        covered = torch.zeros(H, W, dtype=torch.bool, device=device)
        seen = torch.zeros(H, W, dtype=torch.bool, device=device)
        L = ann.landmarks_3d[0].to(device, torch.float32)
        c_r, c_l = L[36:42].mean(0), L[42:48].mean(0)
        x = F.normalize(c_l - c_r, dim=0)
        mouth = L[48:68].mean(0)
        mid = 0.5 * (c_r + c_l)
        ydn = F.normalize((mouth - mid) - ((mouth - mid) @ x) * x, dim=0)
        front = -torch.linalg.cross(x, ydn, dim=0)  # out of the face
        ipd = float((c_l - c_r).norm())
        fwd = max(float((L[27] - mid) @ front), 0.0) + ipd * rng.u((0.06, 0.16))
        origin = mid + front * fwd + ydn * (ipd * rng.u((-0.06, 0.03)))
        a = ipd * rng.u((0.36, 0.46))  # lens half width
        b = a * rng.u((0.55, 0.85))  # lens half height
        p_exp = rng.u((2.0, 5.0))
        rim = ipd * rng.u((0.04, 0.09))
        dark = rng.chance(self.config.sunglasses_prob)
        frames = ((0.02, 0.02, 0.02), (0.25, 0.13, 0.06), (0.7, 0.7, 0.72), (0.75, 0.6, 0.3))
        frame_col = _const(device, frames[rng.int(0, 3)])
        if rng.chance(0.2):
            frame_col = _lin(rng.colour())
        if float(frame_col.mean()) > 0.5:  # metal: thin, yet wide enough to be seen at the training crop size
            rim *= 0.45
        # clear lenses bend and reflect light: the face behind is scaled about the lens centre (power of the lens)
        # and a soft glare band crosses it, so a clear lens is visible in the image, as in photos
        magnify = rng.u(self.config.lens_magnification_range)
        glare = rng.u(self.config.lens_glare_range)
        glare_at, glare_width = rng.u((-0.7, 0.7)), rng.u((0.15, 0.6))
        arm_len = ipd * rng.u((1.3, 1.6))
        tint = _lin(rng.colour()) * 0.08
        if not bool(torch.isfinite(origin).all()) or float(origin[2]) <= 0.01:
            return covered, seen

        # 3D control points -> crop box on the image
        ends = []
        for side in (-1.0, 1.0):
            p0 = origin + x * side * (ipd / 2 + a) - ydn * b * 0.4
            ends.append((p0, p0 - front * arm_len + x * side * ipd * 0.08 + ydn * b * 0.3))
        corners = torch.stack(
            [origin + x * sx * (ipd / 2 + a) + ydn * sy * b for sx in (-1.0, 1.0) for sy in (-1.0, 1.0)]
            + [e for pair in ends for e in pair]
        )
        corners = corners[corners[:, 2] > 0.01]
        if len(corners) == 0:
            return covered, seen
        uvp = corners[:, :2] / corners[:, 2:3] * torch.stack([K[0, 0], K[1, 1]]) + torch.stack([K[0, 2], K[1, 2]])
        pad = rim / float(corners[:, 2].min()) * float(K[0, 0]) + 3
        box = fx.crop_box(
            float(uvp[:, 0].min()) - pad,
            float(uvp[:, 1].min()) - pad,
            float(uvp[:, 0].max()) + pad,
            float(uvp[:, 1].max()) + pad,
            H,
            W,
        )
        if box is None:
            return covered, seen
        r0, r1, c0, c1 = box
        yy, xx = torch.meshgrid(torch.arange(r0, r1, device=device), torch.arange(c0, c1, device=device), indexing="ij")
        ids = (yy * W + xx).reshape(-1)
        rays = fx.rays(K, xx.reshape(-1), yy.reshape(-1))
        head_d = torch.where(mask.reshape(-1)[ids], depth.reshape(-1)[ids], torch.full_like(rays[:, 0], 1e9))
        fK = float(K[0, 0])

        # rims on the lens plane
        denom = rays @ front
        tpl = (origin @ front) / torch.where(denom.abs() < 1e-6, torch.full_like(denom, 1e-6), denom)
        hit = rays * tpl[:, None]
        rel = hit - origin
        u = rel @ x
        v = rel @ ydn
        zpl = hit[:, 2]
        m_per_px = zpl.clamp_min(1e-3) / fK  # metres per pixel on the lens plane
        cover = torch.zeros_like(zpl)
        lens = torch.zeros_like(zpl)
        for side in (-1.0, 1.0):
            du, dv = (u - side * ipd / 2).abs() / a, v.abs() / b
            r = (du**p_exp + dv**p_exp).pow(1 / p_exp)  # 1 on the rim centre line
            sd = (r - 1).abs() * min(a, b) - rim / 2  # approximate distance to the rim band, metres
            cover = torch.maximum(cover, (0.5 - sd / m_per_px).clamp(0, 1))
            lens = torch.maximum(lens, (0.5 - (r - 1) * min(a, b) / m_per_px).clamp(0, 1))
        ok = ((zpl > 0) & (zpl < head_d + 0.002)).float()
        cover = cover * ok
        lens = lens * ok

        rr = F.normalize(rays, dim=-1)

        def capsule(p0: Tensor, p1: Tensor, radius: float) -> Tensor:
            """Coverage of a 3D capsule seen through each pixel ray, zero where the head is in front."""
            d = p1 - p0
            a11 = d @ d
            b12 = rr @ d
            c1_ = rr @ p0
            e = d @ p0
            den = (a11 - b12**2).clamp_min(1e-12)
            s = ((b12 * c1_ - e) / den).clamp(0, 1)
            q = p0 + s[:, None] * d
            tt = (rr * q).sum(1)
            dist = (tt.clamp_min(0)[:, None] * rr - q).norm(dim=1)
            mpp = q[:, 2].clamp_min(1e-3) / fK
            cov = (0.5 + (radius - dist) / mpp).clamp(0, 1)
            return cov * (q[:, 2] < head_d + 0.002).float() * (q[:, 2] > 0).float()

        bp0 = origin + x * (-ipd / 2 + a * 0.95) - ydn * b * 0.3
        bp1 = origin + x * (ipd / 2 - a * 0.95) - ydn * b * 0.3
        cover = torch.maximum(cover, capsule(bp0, bp1, rim / 2))
        for p0, p1 in ends:
            cover = torch.maximum(cover, capsule(p0, p1, rim / 2))

        base = img[ids]
        if dark:
            refl = 0.15 * (1 - (v / (2 * b)).clamp(-1, 1)) * (0.5 + 0.5 * ((u + v) / (2 * a)).clamp(-1, 1))
            lens_col = _srgb(tint + refl[:, None] * 0.3)
            base = base * (1 - lens[:, None] * 0.92) + lens_col * lens[:, None] * 0.92
        else:
            behind = _through_lens(img, H, W, ids, u, K, origin, x, ipd, magnify)
            band = ((u.abs() - ipd / 2) * 0.7 - v) / a - glare_at  # across a diagonal band on each lens
            refl = glare * fx.smoothstep(0.0, 1.0, 1 - band.abs() / glare_width) + 0.04
            base = torch.lerp(base, behind, lens[:, None]) + (lens * refl)[:, None]
        shade = amb + 0.8 * float(sum(float(c.mean()) for c in lights)) / max(len(lights), 1)
        fc = _srgb(frame_col * shade * (1.0 + 0.3 * fx.smoothstep(0.0, 1.0, -v / b))[:, None])
        img[ids] = (base * (1 - cover[:, None]) + fc * cover[:, None]).clamp(0, 1)
        t = LAYER_COVERAGE_THRESHOLD
        cov = (cover >= t) | ((lens >= t) if dark else torch.zeros_like(cover, dtype=torch.bool))
        covered.view(-1)[ids] = cov
        seen.view(-1)[ids] = (cover >= t) | (lens >= t)  # cover and lens are 0 where the head is in front
        return covered & mask, seen

    def _blob_occluder(self, rng: _Rng, img: Tensor, H: int, W: int, bbox: Tensor, kind: str, skin: Tensor) -> Tensor:
        """A hand (palm, fingers, thumb, arm) or a random object entering over the head bounding box, drawn into
        the (H*W, 3) image in place; returns the (H, W) bool pixels it covers (coverage >=
        :data:`~next3d_gen.labels.LAYER_COVERAGE_THRESHOLD`)."""
        device = img.device
        covered = torch.zeros(H, W, dtype=torch.bool, device=device)
        x0, y0, x1, y1 = (float(v) for v in bbox)
        if x1 <= x0:
            return covered
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        size = max(x1 - x0, y1 - y0)
        ang = rng.u((0, 2 * math.pi))
        dirv = (math.cos(ang), math.sin(ang))
        cover_frac = rng.u(self.config.occluder_cover_range)
        if kind == "hand":
            palm_r = size * rng.u((0.18, 0.26))
            dist = size * (0.5 - cover_frac) + palm_r * 1.6
            px, py = cx + dirv[0] * dist, cy + dirv[1] * dist
            reach = 2.6 * palm_r
            far = (px + dirv[0] * 2 * (H + W), py + dirv[1] * 2 * (H + W))
            bx0, bx1 = min(px - reach, far[0]), max(px + reach, far[0])
            by0, by1 = min(py - reach, far[1]), max(py + reach, far[1])
        else:
            r = size * rng.u((0.15, 0.4))
            dist = size * (0.5 - cover_frac) + r
            px, py = cx + dirv[0] * dist, cy + dirv[1] * dist
            bx0, bx1, by0, by1 = px - r - 2, px + r + 2, py - r - 2, py + r + 2
        box = fx.crop_box(bx0, by0, bx1, by1, H, W)
        # draw every random number whether or not the shape is visible (keeps the stream layout simple)
        spread = rng.u((0.0, 0.25))
        flen_f = rng.u((1.1, 1.6))
        thumb_side = 1.0 if rng.chance(0.5) else -1.0
        gloved = rng.chance(0.3)
        tone_f = rng.u((0.7, 1.3))
        c = rng.colour()
        rot = rng.u((0, math.pi))
        asp = rng.u((0.3, 1.0))
        ellipse = rng.chance(0.5)
        corner = rng.u((0.0, 0.5))
        g_ang = rng.u((0, 6.3))
        if box is None:
            return covered
        r0, r1, c0, c1 = box
        h, w = r1 - r0, c1 - c0
        ys, xs = torch.meshgrid(
            torch.arange(r0, r1, dtype=torch.float32, device=device),
            torch.arange(c0, c1, dtype=torch.float32, device=device),
            indexing="ij",
        )
        if kind == "hand":
            u = (xs - px) * dirv[0] + (ys - py) * dirv[1]
            v = -(xs - px) * dirv[1] + (ys - py) * dirv[0]
            sd = ((u / (palm_r * 1.1)) ** 2 + (v / palm_r) ** 2).sqrt() * palm_r - palm_r
            flen = palm_r * flen_f
            fr = palm_r * 0.2
            for k in range(4):
                off = (k - 1.5) * palm_r * 0.45
                a_f = (k - 1.5) * spread
                ddx, ddy = -math.cos(a_f), math.sin(a_f)
                q0u, q0v = -palm_r * 0.6, off
                q1u, q1v = q0u + ddx * flen * (0.85 + 0.15 * (k in (1, 2))), q0v + ddy * flen
                du, dv = q1u - q0u, q1v - q0v
                ll = du * du + dv * dv
                s = (((u - q0u) * du + (v - q0v) * dv) / ll).clamp(0, 1)
                sd = torch.minimum(sd, ((u - q0u - s * du) ** 2 + (v - q0v - s * dv) ** 2).sqrt() - fr)
            tu0, tv0 = 0.0, palm_r * 0.9 * thumb_side
            tu1, tv1 = -palm_r * 1.1, tv0 * 1.5
            du, dv = tu1 - tu0, tv1 - tv0
            s = (((u - tu0) * du + (v - tv0) * dv) / (du * du + dv * dv)).clamp(0, 1)
            sd = torch.minimum(sd, ((u - tu0 - s * du) ** 2 + (v - tv0 - s * dv) ** 2).sqrt() - fr * 1.15)
            sd = torch.minimum(sd, torch.maximum(v.abs() - palm_r * 0.75, -u))  # the arm, away from the face
            tone = _lin(c) * 0.5 if gloved else skin * tone_f
            base = _srgb(tone.clamp(0, 1))
            shade = 0.65 + 0.35 * fx.smoothstep(-palm_r * 0.5, 0.0, -sd)  # darker towards the edges (roundness)
            col = base[:, None, None] * shade[None] * (1 + 0.04 * fx.field(rng, 16, h, w, 1))
        else:
            u = (xs - px) * math.cos(rot) + (ys - py) * math.sin(rot)
            v = -(xs - px) * math.sin(rot) + (ys - py) * math.cos(rot)
            if ellipse:
                sd = ((u / r) ** 2 + (v / (r * asp)) ** 2).sqrt() * r * asp - r * asp
            else:
                rr = r * asp * corner
                qu, qv = u.abs() - (r - rr), v.abs() - (r * asp - rr)
                sd = (qu.clamp_min(0) ** 2 + qv.clamp_min(0) ** 2).sqrt() + torch.maximum(qu, qv).clamp_max(0) - rr
            g = 0.7 + 0.3 * fx.smoothstep(-r, r, u * math.cos(g_ang) + v)
            col = c[:, None, None] * g[None] * (1 + 0.08 * fx.fractal(rng, h, w, 1, 6, 3))
        alpha = (0.5 - sd).clamp(0, 1).reshape(-1, 1)
        ids = (ys.long() * W + xs.long()).reshape(-1)
        img[ids] = img[ids] * (1 - alpha) + col.clamp(0, 1).reshape(3, -1).T * alpha
        covered.view(-1)[ids] = alpha[:, 0] >= LAYER_COVERAGE_THRESHOLD
        return covered
