"""Label spaces as data: class names, ids, palettes, flip pairs, merge tables and the 68-point flip permutation.

This module is the single source of truth for every label constant in the project. Class ids are list positions.
"Left"/"right" in class names are the *subject's* left/right (as in FLAME's masks and the published SynthForge code),
so the subject's right eye appears on the image *left* in a frontal view.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

IGNORE_INDEX = 255
"""Segmentation value that losses and metrics skip."""

NUM_LANDMARKS = 68
"""iBUG 68-point order: 0-16 jaw, 17-26 brows, 27-35 nose, 36-47 eyes, 48-67 mouth."""


@dataclass(frozen=True)
class LabelSpace:
    """A segmentation label space.

    Attributes:
        name: short identifier stored in HDF5 attributes and configs.
        classes: class names; the id of a class is its position.
        palette: one RGB uint8 colour per class, same order.
        flip_pairs: pairs of ids swapped by a horizontal image flip.
        merges: named merged classes for the papers' F1 columns: ``{merged_name: (id, id, ...)}``.
        background: id of the background class.
    """

    name: str
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    flip_pairs: tuple[tuple[int, int], ...] = ()
    merges: dict[str, tuple[int, ...]] = field(default_factory=dict)
    background: int = 0

    def __post_init__(self) -> None:
        if len(self.classes) != len(self.palette):
            raise ValueError(f"label space {self.name}: {len(self.classes)} classes but {len(self.palette)} colours")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def id(self, name: str) -> int:
        """Id of the class called ``name`` (ValueError naming the space when unknown)."""
        try:
            return self.classes.index(name)
        except ValueError:
            raise ValueError(f"label space {self.name!r} has no class {name!r}") from None

    def flip_lut(self) -> np.ndarray:
        """(C,) int64 lookup table mapping each id to its mirror-image id (identity for unpaired classes)."""
        lut = np.arange(max(self.num_classes, IGNORE_INDEX + 1), dtype=np.int64)
        for a, b in self.flip_pairs:
            lut[a], lut[b] = b, a
        return lut

    def palette_array(self) -> np.ndarray:
        """(256, 3) uint8 colour table; ids beyond the space (incl. 255 = ignore) are black."""
        table = np.zeros((256, 3), dtype=np.uint8)
        table[: self.num_classes] = np.asarray(self.palette, dtype=np.uint8)
        return table

    def to_json(self) -> str:
        """JSON description stored as the HDF5 ``label_space`` attribute."""
        return json.dumps(
            {
                "name": self.name,
                "classes": list(self.classes),
                "palette": [list(c) for c in self.palette],
                "flip_pairs": [list(p) for p in self.flip_pairs],
                "merges": {k: list(v) for k, v in self.merges.items()},
                "background": self.background,
                "ignore_index": IGNORE_INDEX,
            }
        )

    @staticmethod
    def from_json(text: str) -> LabelSpace:
        d = json.loads(text)
        return LabelSpace(
            name=d["name"],
            classes=tuple(d["classes"]),
            palette=tuple(tuple(c) for c in d["palette"]),
            flip_pairs=tuple(tuple(p) for p in d["flip_pairs"]),
            merges={k: tuple(v) for k, v in d.get("merges", {}).items()},
            background=int(d.get("background", 0)),
        )


# The 20-class synthetic space of schema-version-1 files. Colours of classes 1-19 are the published SynthForge UV label
# texture's colours (reference: official_synthforge.md section 1.12), so the importer decodes its colour-coded maps
# with this table.
SYNTH_V1 = LabelSpace(
    name="synthforge20",
    classes=(
        "background",
        "face",
        "forehead",
        "glabella",
        "brow_band",
        "right_eye_region",
        "left_eye_region",
        "right_eyeball",
        "left_eyeball",
        "right_eyebrow",
        "left_eyebrow",
        "nose",
        "upper_lip",
        "lower_lip",
        "inner_mouth",
        "right_ear",
        "left_ear",
        "scalp",
        "neck",
        "neck_back",
    ),
    palette=(
        (0, 0, 0),
        (0xF5, 0xDC, 0xCB),
        (0x44, 0x0F, 0x85),
        (0x9D, 0xAB, 0x3B),
        (0x65, 0x6B, 0x38),
        (0x75, 0x7A, 0xE4),
        (0xE5, 0xA5, 0xE7),
        (0x00, 0x00, 0xFF),
        (0xF6, 0x00, 0xFF),
        (0xD3, 0x8F, 0x8F),
        (0x8F, 0xA9, 0xD3),
        (0xC6, 0x02, 0xAC),
        (0xD9, 0x17, 0x17),
        (0x00, 0x88, 0x80),
        (0x00, 0x2F, 0x99),
        (0xFC, 0xFF, 0x00),
        (0x00, 0xFF, 0x3C),
        (0x68, 0x35, 0x16),
        (0xE4, 0xF1, 0x8F),
        (0x50, 0x44, 0x3D),
    ),
    flip_pairs=((5, 6), (7, 8), (9, 10), (15, 16)),
    merges={
        "skin": (1, 2, 3, 4, 5, 6),
        "eyes": (7, 8),
        "brows": (9, 10),
        "mouth": (12, 13, 14),
        "ears": (15, 16),
    },
)
"""The 20-class synthetic label space (ids 0-19) of HDF5 schema version 1 and of the published SynthForge release.

Kept for reading version-1 files: :func:`current_label_space` reads it as :data:`SYNTH` (ids 0-19 keep their meaning;
such a file simply has no ``hair`` / ``eyeglasses`` pixels)."""

SYNTH_V2 = LabelSpace(
    name="synthforge22",
    classes=SYNTH_V1.classes + ("hair", "eyeglasses"),
    palette=SYNTH_V1.palette + ((0xFF, 0x7F, 0x00), (0x00, 0xFF, 0xFF)),  # hair orange (not the scalp brown)
    flip_pairs=SYNTH_V1.flip_pairs,
    merges=dict(SYNTH_V1.merges),
)
"""The 22-class synthetic label space of HDF5 schema version 2: :data:`SYNTH` without ``beard`` (a version-2 file's
beards are ``hair``). Kept for reading version-2 files: :func:`current_label_space` reads it as :data:`SYNTH`, and
training maps its ``hair`` to the partial label {hair, beard} (:data:`SYNTH_V2_TO_SYNTH`)."""

SYNTH = LabelSpace(
    name="synthforge23",
    classes=SYNTH_V2.classes + ("beard",),
    palette=SYNTH_V2.palette + ((0x8B, 0x2B, 0x9E),),  # beard purple
    flip_pairs=SYNTH_V1.flip_pairs,
    merges=dict(SYNTH_V1.merges),
)
"""The synthetic label space (23 classes, HDF5 schema version 3): :data:`SYNTH_V1`'s 20 classes, then

* ``hair`` = 20: hair in front of whatever is behind it: scalp hair, a fringe over the forehead / brows / ears, hair
  volume around the head on the background, flyaway strands. A pixel is ``hair`` where hair covers at least half of
  it (coverage >= :data:`LAYER_COVERAGE_THRESHOLD`); skin seen through thin hair (coverage below that) keeps its skin
  class. ``scalp`` remains the class of *bare* scalp.
* ``eyeglasses`` = 21: glasses frames (rims, bridge, temple arms) and lenses, clear or dark, where they are in front
  of the head or the background (same coverage rule). Eyes and brows seen through a clear lens keep their class, as
  CelebAMask-HQ's masks paint ``l_eye`` / ``r_eye`` / brows over ``eye_g`` (a clear lens does not hide them); skin
  and nose behind it are eyeglasses.
* ``beard`` = 22: facial hair (full beards, goatees, moustaches, chin beards, with their sideburns) where a renderer
  draws it as a hair layer on the face, by the same coverage rule; the procedural renderer's stubble is a shade of
  the skin and keeps the skin's class. A class of its own because the real label sets disagree with scalp hair
  here: CelebAMask-HQ and LaPa label beards skin (:data:`SYNTH_TO_REAL`), FaceSynthetics has a ``beard`` class.

Flip pairs are those of :data:`SYNTH_V1` (hair, eyeglasses and beard are their own mirror images). The head models
label faces 1-19 only: ``hair``, ``eyeglasses`` and ``beard`` come from the renderer's layers
(:attr:`next3d_gen.render.base.RenderOutput.label_override`; the procedural renderer reports them, the Next3D adapter
does not yet, so its images' hair keeps the mesh labels).
"""

LAYER_COVERAGE_THRESHOLD = 0.5
"""A layer drawn over the head or the background (hair, glasses, a hand) owns a pixel's label where its coverage of
the pixel (alpha, 0-1) is at least this value."""


def current_label_space(space: LabelSpace) -> LabelSpace:
    """The label space a file's ``seg`` is read in: :data:`SYNTH` for a file written with :data:`SYNTH_V1` (schema
    version 1: the same ids 0-19, no hair / eyeglasses / beard pixels) or :data:`SYNTH_V2` (version 2: ids 0-21, no
    beard pixels: its beards are ``hair``, which training reads as {hair, beard}: :data:`SYNTH_V2_TO_SYNTH`), else
    ``space`` itself."""
    if space.classes in (SYNTH_V1.classes, SYNTH_V2.classes):
        return SYNTH
    return space


# LaPa (official ids). 106 landmarks; flips are not used for LaPa.
LAPA = LabelSpace(
    name="lapa11",
    classes=(
        "background",
        "skin",
        "left_eyebrow",
        "right_eyebrow",
        "left_eye",
        "right_eye",
        "nose",
        "upper_lip",
        "inner_mouth",
        "lower_lip",
        "hair",
    ),
    palette=(
        (0, 0, 0),
        (255, 204, 153),
        (102, 51, 0),
        (153, 76, 0),
        (0, 102, 204),
        (0, 153, 255),
        (255, 102, 102),
        (204, 0, 0),
        (64, 0, 64),
        (255, 51, 153),
        (60, 30, 10),
    ),
    flip_pairs=((2, 3), (4, 5)),
    merges={"mouth": (7, 8, 9)},
)

# CelebAMask-HQ, the standard 19-class order used by face-parsing codebases.
CELEBAMASK_HQ = LabelSpace(
    name="celebamask_hq19",
    classes=(
        "background",
        "skin",
        "l_brow",
        "r_brow",
        "l_eye",
        "r_eye",
        "eye_g",
        "l_ear",
        "r_ear",
        "ear_r",
        "nose",
        "mouth",
        "u_lip",
        "l_lip",
        "neck",
        "neck_l",
        "cloth",
        "hair",
        "hat",
    ),
    palette=(
        (0, 0, 0),
        (204, 0, 0),
        (76, 153, 0),
        (204, 204, 0),
        (51, 51, 255),
        (204, 0, 204),
        (0, 255, 255),
        (255, 204, 204),
        (102, 51, 0),
        (255, 0, 0),
        (102, 204, 0),
        (255, 255, 0),
        (0, 0, 153),
        (0, 0, 204),
        (255, 51, 153),
        (0, 204, 204),
        (0, 51, 0),
        (255, 153, 51),
        (0, 204, 0),
    ),
    flip_pairs=((2, 3), (4, 5), (7, 8)),
    merges={"mouth_all": (11, 12, 13)},
)

# Microsoft FaceSynthetics ("Fake It Till You Make It"), official ids; 255 = ignore.
FACESYNTHETICS = LabelSpace(
    name="facesynthetics19",
    classes=(
        "background",
        "skin",
        "nose",
        "right_eye",
        "left_eye",
        "right_brow",
        "left_brow",
        "right_ear",
        "left_ear",
        "mouth_interior",
        "top_lip",
        "bottom_lip",
        "neck",
        "hair",
        "beard",
        "clothing",
        "glasses",
        "headwear",
        "facewear",
    ),
    palette=(
        (0, 0, 0),
        (255, 204, 153),
        (255, 102, 102),
        (0, 153, 255),
        (0, 102, 204),
        (153, 76, 0),
        (102, 51, 0),
        (255, 255, 0),
        (204, 204, 0),
        (64, 0, 64),
        (204, 0, 0),
        (255, 51, 153),
        (255, 153, 51),
        (60, 30, 10),
        (90, 60, 30),
        (0, 51, 0),
        (0, 255, 255),
        (0, 204, 0),
        (128, 128, 128),
    ),
    flip_pairs=((3, 4), (5, 6), (7, 8)),
    merges={"mouth": (9, 10, 11)},
)

LABEL_SPACES: dict[str, LabelSpace] = {
    s.name: s for s in (SYNTH, SYNTH_V2, SYNTH_V1, LAPA, CELEBAMASK_HQ, FACESYNTHETICS)
}


def _landmark_flip_permutation() -> tuple[int, ...]:
    pairs = [(i, 16 - i) for i in range(8)]  # jaw
    pairs += [(17, 26), (18, 25), (19, 24), (20, 23), (21, 22)]  # brows
    pairs += [(31, 35), (32, 34)]  # nose base
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58), (60, 64), (61, 63), (65, 67)]  # mouth
    perm = list(range(NUM_LANDMARKS))
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return tuple(perm)


LANDMARK_FLIP_PERMUTATION: tuple[int, ...] = _landmark_flip_permutation()
"""After a horizontal flip, new landmark i is old landmark ``LANDMARK_FLIP_PERMUTATION[i]`` (an involution)."""

LANDMARK_GROUPS: dict[str, tuple[int, ...]] = {
    "jaw": tuple(range(0, 17)),
    "right_brow": tuple(range(17, 22)),
    "left_brow": tuple(range(22, 27)),
    "nose_bridge": tuple(range(27, 31)),
    "nose_base": tuple(range(31, 36)),
    "right_eye": tuple(range(36, 42)),
    "left_eye": tuple(range(42, 48)),
    "outer_lip": tuple(range(48, 60)),
    "inner_lip": tuple(range(60, 68)),
}
"""iBUG 68 landmark groups (subject's left/right), used for drawing and region checks."""

INTER_OCULAR = (36, 45)
"""Outer eye corners: the inter-ocular NME normaliser for 68-point data."""


PaperColumns = tuple[tuple[str, tuple[str, ...]], ...]
"""A paper's F1 table layout: (column header, class names whose union forms the column) per column."""

PAPER_F1_COLUMNS: dict[str, PaperColumns] = {
    # LaPa: the 10 classes of the face-parsing papers' LaPa table (background left out, hair included).
    "lapa": (
        ("skin", ("skin",)),
        ("hair", ("hair",)),
        ("l-eye", ("left_eye",)),
        ("r-eye", ("right_eye",)),
        ("u-lip", ("upper_lip",)),
        ("i-mouth", ("inner_mouth",)),
        ("l-lip", ("lower_lip",)),
        ("nose", ("nose",)),
        ("l-brow", ("left_eyebrow",)),
        ("r-brow", ("right_eyebrow",)),
    ),
    # LaPa with upper lip + inner mouth + lower lip merged into one "mouth" class (the variant some papers report).
    "lapa_mouth": (
        ("skin", ("skin",)),
        ("hair", ("hair",)),
        ("l-eye", ("left_eye",)),
        ("r-eye", ("right_eye",)),
        ("mouth", ("upper_lip", "inner_mouth", "lower_lip")),
        ("nose", ("nose",)),
        ("l-brow", ("left_eyebrow",)),
        ("r-brow", ("right_eyebrow",)),
    ),
    # CelebAMask-HQ: the 14 columns of the paper's table (no hat, earring, necklace, cloth, background).
    "celebamask_hq": (
        ("face", ("skin",)),
        ("nose", ("nose",)),
        ("glasses", ("eye_g",)),
        ("l-eye", ("l_eye",)),
        ("r-eye", ("r_eye",)),
        ("l-brow", ("l_brow",)),
        ("r-brow", ("r_brow",)),
        ("l-ear", ("l_ear",)),
        ("r-ear", ("r_ear",)),
        ("i-mouth", ("mouth",)),
        ("u-lip", ("u_lip",)),
        ("l-lip", ("l_lip",)),
        ("hair", ("hair",)),
        ("neck", ("neck",)),
    ),
}
"""Per-benchmark F1 columns of the papers' tables (class names refer to :data:`LAPA` / :data:`CELEBAMASK_HQ`)."""


# ---------------------------------------------------------------------------------------------------------------------
# Synthetic-to-real transfer: merge tables onto one label space shared by the synthetic and the real annotations.

REAL_MERGED = LabelSpace(
    name="real_merged11",
    classes=(
        "background",
        "skin",
        "nose",
        "eyes",
        "brows",
        "lips",
        "inner_mouth",
        "ears",
        "neck",
        "hair",
        "eyeglasses",
    ),
    palette=(
        (0, 0, 0),
        (255, 204, 153),
        (255, 102, 102),
        (0, 153, 255),
        (153, 76, 0),
        (204, 0, 0),
        (64, 0, 64),
        (255, 255, 0),
        (0, 204, 102),
        (60, 30, 10),
        (0, 255, 255),
    ),
)
"""The classes on which a network trained on synthetic faces is scored against real annotations (no fine-tuning).

Left and right are pooled (eyes, brows, ears), so the differing left/right conventions of the real label sets cannot
change a score. ``hair`` and ``eyeglasses`` are optional: see :data:`REAL_MERGED_OPTIONAL`.
"""

REAL_MERGED_OPTIONAL: dict[str, str | None] = {"hair": "background", "eyeglasses": None}
"""Merged classes that count only when the predicting (synthetic) label space has a class of that exact name.

Otherwise the class is inactive (its F1 is reported as absent, not 0) and every source class merged into it goes to
the fallback given here instead: ``hair`` -> ``background`` (real hair is not a face class, so a network without a hair
class should call it background, and the synthetic scalp it predicts on the top of the head counts as background
too); ``eyeglasses`` -> ``None`` = ignore (the pixels under a lens are skin or eye for a network that knows no
glasses, and the annotation does not say which).
"""


@dataclass(frozen=True)
class RealMergeTable:
    """How one source label space maps onto :data:`REAL_MERGED`, as data (class *names*, never ids).

    Attributes:
        space: name of the source :class:`LabelSpace` (a key of :data:`LABEL_SPACES`).
        columns: ``(merged class, (source class names, ...))`` pairs, the :data:`PaperColumns` layout of the papers'
            F1 columns; a source class appears in at most one column.
        ignore: source classes not scored (their pixels are set to :data:`IGNORE_INDEX` in a ground-truth map).
        unlabelled: ``(merged class, merged class)`` pairs for merged classes this annotation does not have, naming
            the merged class its annotators gave those pixels: a prediction of the first is scored as the second on
            this source's images, so that the first's F1 is computed from the other sources alone.
        optional_names: source class names that the space may or may not have (``hair``, ``eyeglasses`` and
            ``beard``: in :data:`SYNTH`, not all in :data:`SYNTH_V1` / :data:`SYNTH_V2`); the others must all exist in
            the space.
    """

    space: str
    columns: PaperColumns
    ignore: tuple[str, ...] = ()
    unlabelled: tuple[tuple[str, str], ...] = ()
    optional_names: tuple[str, ...] = ()

    def source_names(self) -> tuple[str, ...]:
        """Every source class name the table mentions (columns and ignore)."""
        return tuple(n for _, names in self.columns for n in names) + self.ignore

    def merged_name(self, source_name: str, active: tuple[str, ...]) -> str | None:
        """Merged class of one source class given the active merged classes (None = ignore)."""
        for merged, names in self.columns:
            if source_name in names:
                while merged is not None and merged not in active:
                    merged = REAL_MERGED_OPTIONAL[merged]
                return merged
        if source_name in self.ignore:
            return None
        raise ValueError(f"merge table of {self.space!r} has no entry for class {source_name!r}")

    def lut(self, space: LabelSpace, active: tuple[str, ...]) -> np.ndarray:
        """(256,) uint8 lookup table: source id -> :data:`REAL_MERGED` id (ignored classes and ids beyond the space,
        including 255, -> :data:`IGNORE_INDEX`).

        The space is matched by class names, not by its ``name``: the synthetic table also serves a synthetic space
        extended with ``hair`` / ``eyeglasses``.

        Raises:
            ValueError: if ``space`` lacks a required class or has a class the table does not mention.
        """
        missing = set(self.source_names()) - set(self.optional_names) - set(space.classes)
        if missing:
            raise ValueError(f"label space {space.name!r} lacks classes {sorted(missing)} of its merge table")
        table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        for i, name in enumerate(space.classes):
            merged = self.merged_name(name, active)
            if merged is not None:
                table[i] = REAL_MERGED.id(merged)
        return table

    def prediction_fold(self, active: tuple[str, ...]) -> np.ndarray:
        """(256,) uint8 lookup table on merged ids applied to *predictions* scored against this source: each
        ``unlabelled`` merged class -> the class its annotators used instead (identity elsewhere)."""
        fold = np.arange(256, dtype=np.uint8)
        for merged, instead in self.unlabelled:
            if merged in active:
                fold[REAL_MERGED.id(merged)] = REAL_MERGED.id(instead)
        return fold


def real_merged_active(space: LabelSpace) -> tuple[str, ...]:
    """Merged classes scored for a network predicting ``space``: all of :data:`REAL_MERGED` except the optional
    ones (:data:`REAL_MERGED_OPTIONAL`) that ``space`` has no class of that name for, in :data:`REAL_MERGED` order."""
    return tuple(c for c in REAL_MERGED.classes if c not in REAL_MERGED_OPTIONAL or c in space.classes)


SYNTH_TO_REAL = RealMergeTable(
    space=SYNTH.name,
    columns=(
        ("background", ("background",)),
        # Skin = every skin region of the face: the eye regions are the skin around the eye (lids, under-eye), the
        # brow band the skin above the brows; the real sets label all of these skin.
        # Beards too: CelebAMask-HQ and LaPa paint facial hair skin.
        ("skin", ("face", "forehead", "glabella", "brow_band", "right_eye_region", "left_eye_region", "beard")),
        ("nose", ("nose",)),
        ("eyes", ("right_eyeball", "left_eyeball")),
        ("brows", ("right_eyebrow", "left_eyebrow")),
        ("lips", ("upper_lip", "lower_lip")),
        ("inner_mouth", ("inner_mouth",)),
        ("ears", ("right_ear", "left_ear")),
        # neck_back is the back of the neck, seen in profiles: the real sets label it neck.
        ("neck", ("neck", "neck_back")),
        # The scalp is skin under hair: real annotators label that area hair. With no hair class it falls back to
        # background (REAL_MERGED_OPTIONAL), i.e. the network is not blamed for calling real hair "scalp".
        ("hair", ("scalp", "hair")),
        ("eyeglasses", ("eyeglasses",)),
    ),
    optional_names=("hair", "eyeglasses", "beard"),
)
"""The synthetic 20, 22 or 23 classes (:data:`SYNTH_V1`, :data:`SYNTH_V2`, :data:`SYNTH`) -> :data:`REAL_MERGED`.
Subject's left/right; pooled, so the convention does not matter here."""

CELEBAMASK_HQ_TO_REAL = RealMergeTable(
    space=CELEBAMASK_HQ.name,
    columns=(
        # Cloth, hat, earrings and necklaces are not face classes: a network that calls them skin is wrong.
        ("background", ("background", "cloth", "hat", "ear_r", "neck_l")),
        ("skin", ("skin",)),
        ("nose", ("nose",)),
        ("eyes", ("l_eye", "r_eye")),
        ("brows", ("l_brow", "r_brow")),
        ("lips", ("u_lip", "l_lip")),
        ("inner_mouth", ("mouth",)),
        ("ears", ("l_ear", "r_ear")),
        ("neck", ("neck",)),
        ("hair", ("hair",)),
        ("eyeglasses", ("eye_g",)),
    ),
)
"""CelebAMask-HQ 19 classes (:data:`CELEBAMASK_HQ` ids) -> :data:`REAL_MERGED`.

Left/right, checked against the images (4 CelebA-HQ samples, frontal): ``l_eye`` / ``l_brow`` / ``l_ear`` lie on the
*image right*, i.e. they are the **subject's left**, the same convention as :data:`SYNTH`. Masks composed by the
dataset's own ``g_mask.py`` use another id order: :data:`CELEBAMASK_HQ_GMASK_ORDER`.
"""

CELEBAMASK_HQ_GMASK_ORDER: tuple[str, ...] = (
    "background",
    "skin",
    "nose",
    "eye_g",
    "l_eye",
    "r_eye",
    "l_brow",
    "r_brow",
    "l_ear",
    "r_ear",
    "mouth",
    "u_lip",
    "l_lip",
    "hair",
    "hat",
    "ear_r",
    "neck_l",
    "neck",
    "cloth",
)
"""Class names by id of single-file CelebAMask-HQ label maps composed with the dataset's ``g_mask.py`` (its part
order, later parts painted over earlier ones). Differs from :data:`CELEBAMASK_HQ` (the face-parsing codebases' order,
used by our stage-C reader); convert with :func:`relabel_lut`."""

LAPA_TO_REAL = RealMergeTable(
    space=LAPA.name,
    columns=(
        ("background", ("background",)),
        ("skin", ("skin",)),
        ("nose", ("nose",)),
        ("eyes", ("left_eye", "right_eye")),
        ("brows", ("left_eyebrow", "right_eyebrow")),
        ("lips", ("upper_lip", "lower_lip")),
        ("inner_mouth", ("inner_mouth",)),
        ("hair", ("hair",)),
    ),
    # LaPa has no ear or neck class: its annotators paint the ears skin (or hair where covered) and the neck
    # background; glasses frames are painted as what they cover, mostly skin. Predictions of ears / neck /
    # eyeglasses are scored as those on LaPa images, so that their F1 come from CelebAMask-HQ alone.
    unlabelled=(("ears", "skin"), ("neck", "background"), ("eyeglasses", "skin")),
)
"""LaPa 11 classes -> :data:`REAL_MERGED`.

Left/right, checked against the LaPa sample (frontal): ``left_eye`` / ``left_eyebrow`` lie on the *image left*, i.e.
LaPa's left is the **image left = the subject's right**, the opposite of :data:`SYNTH` and CelebAMask-HQ. Pooled here;
a per-side comparison with the synthetic classes must swap them.
"""

REAL_MERGE_TABLES: dict[str, RealMergeTable] = {
    t.space: t for t in (SYNTH_TO_REAL, CELEBAMASK_HQ_TO_REAL, LAPA_TO_REAL)
}
"""Merge tables onto :data:`REAL_MERGED`, keyed by source label space name."""


def relabel_lut(source_names: tuple[str, ...], target: LabelSpace) -> np.ndarray:
    """(256,) uint8 lookup table from ids of a list of class names to the ids of the same names in ``target``
    (ids beyond the list, incl. 255, -> :data:`IGNORE_INDEX`). ValueError naming a name ``target`` lacks."""
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for i, name in enumerate(source_names):
        table[i] = target.id(name)
    return table


# ---------------------------------------------------------------------------------------------------------------------
# Training on imported datasets: merge tables from a published dataset's label space into the training space.


@dataclass(frozen=True)
class TrainingMergeTable:
    """How one imported source's segmentation maps into the training label space, as data (class *names*).

    Each source class gets the set of training classes a pixel of that class may belong to:

    * one name: a hard label (cross-entropy on that class);
    * several names: a partial label: the source does not tell which of them the pixel is, and the loss is
      ``-log(sum of the softmax probabilities of the allowed classes)`` (:func:`synthforge.losses.segmentation_terms`);
    * no name: the pixel is ignored (no training class describes it).

    Attributes:
        source: the importer that writes such files (a key of :data:`next3d_gen.importers.IMPORTERS`; readers find
            it in the file's ``generator_config["importer"]``).
        source_space: the label space the file's ``seg`` ids are in (checked against the file by class names).
        target: the training label space.
        allowed: ``(source class, (training classes, ...))`` for every source class, in source id order.
    """

    source: str
    source_space: LabelSpace
    target: LabelSpace
    allowed: tuple[tuple[str, tuple[str, ...]], ...]

    def __post_init__(self) -> None:
        names = tuple(name for name, _ in self.allowed)
        if names != self.source_space.classes:
            raise ValueError(f"merge table of {self.source!r}: rows {names} differ from {self.source_space.name}")
        for _, targets in self.allowed:
            for t in targets:
                self.target.id(t)  # ValueError naming an unknown class
        if self.target.num_classes > 63:
            raise ValueError(f"{self.target.name}: more than 63 classes do not fit an int64 bitmask")

    def hard_lut(self) -> np.ndarray:
        """(256,) uint8: source id -> training id where the row has exactly one class; :data:`IGNORE_INDEX` for
        partial and ignored rows and for ids beyond the source space (incl. 255)."""
        table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        for i, (_, targets) in enumerate(self.allowed):
            if len(targets) == 1:
                table[i] = self.target.id(targets[0])
        return table

    def partial_lut(self) -> np.ndarray:
        """(256,) int64: source id -> bitmask of the allowed training classes (bit ``c`` = class id ``c``) where the
        row has several classes; 0 for hard and ignored rows and for ids beyond the source space."""
        table = np.zeros(256, dtype=np.int64)
        for i, (_, targets) in enumerate(self.allowed):
            if len(targets) > 1:
                table[i] = sum(1 << self.target.id(t) for t in set(targets))
        return table


_SKIN = ("face", "forehead", "glabella", "brow_band", "right_eye_region", "left_eye_region")

FACESYNTHETICS_TO_SYNTH = TrainingMergeTable(
    source="facesynthetics",
    source_space=FACESYNTHETICS,
    target=SYNTH,
    allowed=(
        ("background", ("background",)),
        # FaceSynthetics labels transparent lenses as the class behind them (its README); ours labels skin behind a
        # clear lens eyeglasses, eyes and brows behind it their own class (CelebAMask-HQ's rule), as FaceSynthetics.
        # Skin is every skin region of the face and the bare scalp (our finer skin classes are not in the source).
        ("skin", (*_SKIN, "scalp", "eyeglasses")),
        ("nose", ("nose",)),
        ("right_eye", ("right_eyeball",)),
        ("left_eye", ("left_eyeball",)),
        ("right_brow", ("right_eyebrow",)),
        ("left_brow", ("left_eyebrow",)),
        ("right_ear", ("right_ear",)),
        ("left_ear", ("left_ear",)),
        ("mouth_interior", ("inner_mouth",)),
        ("top_lip", ("upper_lip",)),
        ("bottom_lip", ("lower_lip",)),
        ("neck", ("neck", "neck_back")),
        ("hair", ("hair",)),
        # ours labels facial hair ``beard`` where it covers at least half of a pixel, else the skin under it
        ("beard", ("beard", "face")),
        # clothing and headwear are no face class: background, as the real-data merge tables score them
        ("clothing", ("background",)),
        ("glasses", ("eyeglasses",)),
        ("headwear", ("background",)),
        ("facewear", ()),  # masks and the like over the face: no class of ours, ignored
    ),
)
"""FaceSynthetics' 19 classes -> :data:`SYNTH`. Left/right are taken by name (the subject's, as in :data:`SYNTH`;
FaceSynthetics renders a 3-D face model whose parts are named from the subject's side; not checked against its
images here)."""

RELEASE_TO_SYNTH = TrainingMergeTable(
    source="synthforge",
    source_space=SYNTH_V1,
    target=SYNTH,
    allowed=tuple((name, (name, "hair", "eyeglasses", "beard")) for name in SYNTH_V1.classes),
)
"""The published SynthForge release's 20 classes (its 19 colours + background, decoded to :data:`SYNTH_V1` ids by
:mod:`next3d_gen.importers.synthforge_release`) -> :data:`SYNTH`. Its maps are the FLAME mesh's labels, while its
Next3D images draw hair, glasses and beards the mesh does not have (hair over the forehead, ears and neck, hair volume
on the background, frames and lenses over eyes and nose, beards on the lower face): any pixel may be ``hair``,
``eyeglasses`` or ``beard`` in our space, so every class c is the partial label {c, hair, eyeglasses, beard}."""

SYNTH_V2_TO_SYNTH = TrainingMergeTable(
    source=SYNTH_V2.name,
    source_space=SYNTH_V2,
    target=SYNTH,
    allowed=tuple((name, (name, "beard") if name == "hair" else (name,)) for name in SYNTH_V2.classes),
)
"""A schema-version-2 file's 22 classes -> :data:`SYNTH`. Version 2 labelled beards ``hair``, so its ``hair`` is the
partial label {hair, beard}; every other class is itself. Chosen by the file's label space (generated files name no
importer), see :func:`synthforge.data.dataset.file_merge_table`."""

TRAINING_MERGE_TABLES: dict[str, TrainingMergeTable] = {
    t.source: t for t in (FACESYNTHETICS_TO_SYNTH, RELEASE_TO_SYNTH)
}
"""Merge tables into the training label space, keyed by importer name (``generator_config["importer"]``). A file
written by the generator has none: its ``seg`` is already in its (current) label space."""

FACESYNTHETICS_LANDMARK_ROWS: tuple[int, ...] = tuple(range(NUM_LANDMARKS))
"""Row of a FaceSynthetics ``_ldmks.txt`` (70 rows) giving each iBUG-68 point, in iBUG order: its first 68 rows are the
iBUG-68 scheme, rows 68 and 69 the pupil centres (not used). Note that its points are projections of 3-D points on
the face model ("x-ray" landmarks, its README): the jaw, brow and lip points do not follow the visible outline as
manual (300W) annotations and our generator's do."""
