"""Builders of tiny 300W / LaPa / CelebAMask-HQ trees in the official on-disk layouts (test helpers).

Faces are either simple drawings (ellipses and polygons) whose label maps and landmarks come from the same geometry
(fast), or (``rendered=True``) faces of the procedural renderer with the built-in head model, whose 20-class labels
are mapped to LaPa / CelebAMask-HQ classes and whose 68 landmarks are written as annotations.
"""

from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np

from next3d_gen.labels import CELEBAMASK_HQ


def template68() -> np.ndarray:
    """(68, 2) iBUG-ordered points in a unit face box (x right, y down; subject's right eye on the image left)."""
    pts = np.zeros((68, 2))
    t = np.linspace(0, np.pi, 17)
    pts[0:17] = np.stack([0.5 - 0.45 * np.cos(t), 0.35 + 0.6 * np.sin(t)], 1)
    pts[17:22] = np.stack([np.linspace(0.15, 0.42, 5), 0.28 - 0.04 * np.sin(np.linspace(0, np.pi, 5))], 1)
    pts[22:27] = np.stack([np.linspace(0.58, 0.85, 5), 0.28 - 0.04 * np.sin(np.linspace(0, np.pi, 5))], 1)
    pts[27:31] = np.stack([np.full(4, 0.5), np.linspace(0.36, 0.58, 4)], 1)
    pts[31:36] = np.stack([np.linspace(0.4, 0.6, 5), np.full(5, 0.64)], 1)
    ang = np.array([np.pi, 2 * np.pi / 3, np.pi / 3, 0, -np.pi / 3, -2 * np.pi / 3])
    for start, cx in ((36, 0.3), (42, 0.7)):  # 36 / 45 are the outer corners
        pts[start : start + 6] = np.stack([cx + 0.1 * np.cos(ang), 0.42 - 0.04 * np.sin(ang)], 1)
    a = np.linspace(np.pi, -np.pi, 13)[:12]
    pts[48:60] = np.stack([0.5 + 0.18 * np.cos(a), 0.78 - 0.07 * np.sin(a)], 1)
    a = np.linspace(np.pi, -np.pi, 9)[:8]
    pts[60:68] = np.stack([0.5 + 0.1 * np.cos(a), 0.78 - 0.03 * np.sin(a)], 1)
    return pts


def draw_face(
    size: tuple[int, int], box: tuple[float, float, float], rng: np.random.Generator, num_points: int = 68
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one face.

    Args:
        size: (H, W) image size.
        box: (x0, y0, side) of the face box in pixels.
        num_points: 68 (iBUG template) or 106 (68 template + 38 points on the face outline).

    Returns:
        image (H, W, 3) uint8 RGB, LaPa-style labels (H, W) uint8, landmarks (num_points, 2) float32 pixels.
    """
    h, w = size
    x0, y0, side = box
    pts = template68()
    if num_points == 106:
        t = np.linspace(0, 2 * np.pi, 39)[:38]
        pts = np.concatenate([pts, np.stack([0.5 + 0.4 * np.cos(t), 0.55 + 0.45 * np.sin(t)], 1)])
    lm = (pts * side + np.array([x0, y0])).astype(np.float32)
    image = np.zeros((h, w, 3), np.uint8)
    image[:] = rng.integers(0, 60, 3, dtype=np.uint8)
    labels = np.zeros((h, w), np.uint8)

    def ell(c: tuple[float, float], ax: tuple[float, float], cls: int, colour: tuple[int, int, int]) -> None:
        centre = (int(round(x0 + c[0] * side)), int(round(y0 + c[1] * side)))
        axes = (max(1, int(round(ax[0] * side))), max(1, int(round(ax[1] * side))))
        cv2.ellipse(image, centre, axes, 0, 0, 360, colour, -1)
        cv2.ellipse(labels, centre, axes, 0, 0, 360, cls, -1)

    ell((0.5, 0.3), (0.52, 0.35), 10, (70, 40, 20))  # hair
    ell((0.5, 0.55), (0.45, 0.45), 1, (220, 180, 150))  # skin
    ell((0.28, 0.28), (0.14, 0.03), 3, (60, 30, 10))  # brows (LaPa: 2 left, 3 right = subject's)
    ell((0.72, 0.28), (0.14, 0.03), 2, (60, 30, 10))
    ell((0.3, 0.42), (0.1, 0.04), 5, (250, 250, 250))  # eyes
    ell((0.7, 0.42), (0.1, 0.04), 4, (250, 250, 250))
    ell((0.5, 0.55), (0.06, 0.1), 6, (200, 140, 120))  # nose
    ell((0.5, 0.75), (0.18, 0.04), 7, (200, 40, 40))  # upper lip
    ell((0.5, 0.81), (0.18, 0.04), 9, (170, 30, 60))  # lower lip
    ell((0.5, 0.78), (0.1, 0.02), 8, (40, 0, 20))  # inner mouth
    noise = rng.integers(-8, 9, image.shape)
    image = np.clip(image.astype(np.int64) + noise, 0, 255).astype(np.uint8)
    return image, labels, lm


def renderer_available() -> bool:
    try:
        import next3d_gen.head_model  # noqa: F401
        import next3d_gen.pipeline  # noqa: F401
        import next3d_gen.render.procedural  # noqa: F401
    except ImportError:
        return False
    return True


RENDER_SIZE = 96


@functools.lru_cache(maxsize=1)
def rendered_faces(count: int = 4) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]:
    """(image (S, S, 3) uint8, SYNTH seg (S, S) uint8, landmarks (68, 2) float32) of ``count`` procedural renders
    (built-in head, S = RENDER_SIZE); cached for the test session."""
    from next3d_gen.pipeline import SamplePipeline
    from next3d_gen.sampling import GenerateConfig

    pipe = SamplePipeline(GenerateConfig(seed=7, image_size=RENDER_SIZE))
    return tuple((r["image"], r["seg"], r["landmarks_2d"]) for r in (pipe.generate(i) for i in range(count)))


SYNTH_TO_LAPA = np.array([0, 1, 1, 1, 1, 1, 1, 5, 4, 3, 2, 6, 7, 9, 8, 1, 1, 10, 0, 0, 10, 1, 1], np.uint8)
"""SYNTH id -> LaPa id (skin regions and ears -> skin, eyeballs -> eyes, scalp and hair -> hair, neck ->
background, eyeglasses -> skin: LaPa has no glasses class and paints them as what they cover; beards -> skin)."""
SYNTH_TO_CELEBA_PART = {
    7: "r_eye",
    8: "l_eye",
    9: "r_brow",
    10: "l_brow",
    11: "nose",
    12: "u_lip",
    13: "l_lip",
    14: "mouth",
    15: "r_ear",
    16: "l_ear",
    17: "hair",
    18: "neck",
    19: "neck",
    20: "hair",
    21: "eye_g",
}


def rendered_face(
    i: int, rng: np.random.Generator, canvas: tuple[int, int], num_points: int = 68
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Render i (cycled) pasted at a random place of a ``canvas`` (H, W) >= RENDER_SIZE image.

    Returns:
        image (H, W, 3) uint8, LaPa labels (H, W) uint8, SYNTH labels (H, W) uint8, landmarks (num_points, 2).
    """
    image, seg, lm = rendered_faces()[i % len(rendered_faces())]
    h, w = canvas
    oy, ox = int(rng.integers(0, h - RENDER_SIZE + 1)), int(rng.integers(0, w - RENDER_SIZE + 1))
    out = np.empty((h, w, 3), np.uint8)
    out[:] = image[0, 0]
    out[oy : oy + RENDER_SIZE, ox : ox + RENDER_SIZE] = image
    synth = np.zeros((h, w), np.uint8)
    synth[oy : oy + RENDER_SIZE, ox : ox + RENDER_SIZE] = seg
    pts = lm + np.array([ox, oy], np.float32)
    if num_points == 106:  # 38 extra points between consecutive iBUG points
        pts = np.concatenate([pts, 0.5 * (pts[:38] + pts[1:39])])
    return out, SYNTH_TO_LAPA[synth], synth, pts.astype(np.float32)


def write_image(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def write_pts(path: Path, lm: np.ndarray) -> None:
    """iBUG .pts with 1-based coordinates."""
    lines = ["version: 1", f"n_points:  {len(lm)}", "{"] + [f"{x + 1:.3f} {y + 1:.3f}" for x, y in lm] + ["}"]
    path.write_text("\n".join(lines) + "\n")


W300_COUNTS = {"afw": 2, "helen/trainset": 2, "lfpw/trainset": 1, "helen/testset": 1, "lfpw/testset": 2, "ibug": 1}


def make_w300(
    root: Path, seed: int = 0, size: int = 96, counts: dict[str, int] | None = None, rendered: bool = False
) -> Path:
    rng = np.random.default_rng(seed)
    k = 0
    for sub, count in (counts or W300_COUNTS).items():
        for i in range(count):
            if rendered:
                image, _, _, lm = rendered_face(k, rng, (max(size, RENDER_SIZE) + 8, max(size, RENDER_SIZE) + 16))
                k += 1
            else:
                side = float(rng.uniform(0.45, 0.6) * size)
                x0, y0 = (float(v) for v in rng.uniform(0.05 * size, size - side - 0.05 * size, 2))
                image, _, lm = draw_face((size, size + 8), (x0, y0, side), rng)
            ext = ".png" if sub.startswith("lfpw") else ".jpg"
            stem = f"img_{i:03d}_{1 + i % 2}"
            write_image(root / sub / f"{stem}{ext}", image)
            write_pts(root / sub / f"{stem}.pts", lm)
    return root


LAPA_COUNTS = {"train": 4, "val": 2, "test": 3}


def make_lapa(
    root: Path, seed: int = 0, size: int = 96, counts: dict[str, int] | None = None, rendered: bool = False
) -> Path:
    rng = np.random.default_rng(seed)
    k = 0
    for split, count in (counts or LAPA_COUNTS).items():
        for i in range(count):
            hw = (size + 8 * (i % 4), size)
            if rendered:
                hw = (max(size, RENDER_SIZE) + 8 * (i % 4), max(size, RENDER_SIZE) + 4)
                image, labels, _, lm = rendered_face(k, rng, hw, num_points=106)
                k += 1
            else:
                side = float(rng.uniform(0.5, 0.65) * size)
                x0, y0 = (float(v) for v in rng.uniform(0.2 * size, size - side - 0.1 * size, 2))
                image, labels, lm = draw_face(hw, (x0, y0, side), rng, num_points=106)
            name = f"{split}_{i:04d}"
            write_image(root / split / "images" / f"{name}.jpg", image)
            (root / split / "labels").mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(root / split / "labels" / f"{name}.png"), labels)
            (root / split / "landmarks").mkdir(parents=True, exist_ok=True)
            text = "106\n" + "\n".join(f"{x:.2f} {y:.2f}" for x, y in lm) + "\n"
            (root / split / "landmarks" / f"{name}.txt").write_text(text)
    return root


LAPA_TO_CELEBA = {
    1: "skin",
    2: "l_brow",
    3: "r_brow",
    4: "l_eye",
    5: "r_eye",
    6: "nose",
    7: "u_lip",
    8: "mouth",
    9: "l_lip",
    10: "hair",
}
CELEBA_PARTITIONS = [0, 0, 0, 0, 1, 1, 2, 2, 2]
"""Partition of CelebA-HQ ids 0..8 in the test tree (4 train, 2 val, 3 test)."""


def make_celebamask_hq(
    root: Path,
    seed: int = 0,
    image_size: int = 64,
    mask_size: int = 32,
    partition_name: str = "list_eval_partition.txt",
    partitions: list[int] | None = None,
    rendered: bool = False,
) -> Path:
    """Tiny CelebAMask-HQ tree (ids 0..n-1 with the given partitions, default :data:`CELEBA_PARTITIONS`).

    With ``rendered``, the masks are RENDER_SIZE px and the images ``2 * RENDER_SIZE`` (as 512 / 1024 in the real
    set); ``image_size`` and ``mask_size`` are then ignored."""
    rng = np.random.default_rng(seed)
    partitions = CELEBA_PARTITIONS if partitions is None else partitions
    n = len(partitions)
    orig_ids = rng.permutation(np.arange(1000, 1000 + 4 * n))[:n]
    mapping = ["idx         orig_idx    orig_file"]
    partition = []
    for idx in range(n):
        folder = root / "CelebAMask-HQ-mask-anno" / str(idx // 2000)
        folder.mkdir(parents=True, exist_ok=True)
        if rendered:
            image, _, synth, _ = rendered_face(idx, rng, (RENDER_SIZE, RENDER_SIZE))
            write_image(root / "CelebA-HQ-img" / f"{idx}.jpg", cv2.resize(image, (2 * RENDER_SIZE, 2 * RENDER_SIZE)))
            parts = {"skin": np.isin(synth, [*range(1, 17), 22])}  # skin under every face part (beards too)
            for sid, part in SYNTH_TO_CELEBA_PART.items():
                parts[part] = parts.get(part, np.zeros_like(parts["skin"])) | (synth == sid)
            if idx % 2 == 0:  # a hair strand over the face
                parts["hair"][RENDER_SIZE // 2 : RENDER_SIZE // 2 + 2, :] = True
            for part, m in parts.items():
                if m.any():
                    assert cv2.imwrite(str(folder / f"{idx:05d}_{part}.png"), m.astype(np.uint8) * 255)
            orig = f"{orig_ids[idx]:06d}.jpg"
            mapping.append(f"{idx:<12d}{orig_ids[idx] - 1:<12d}{orig}")
            partition.append(f"{orig} {partitions[idx]}")
            continue
        image, labels, _ = draw_face(
            (image_size, image_size), (image_size * 0.2, image_size * 0.15, image_size * 0.6), rng
        )
        write_image(root / "CelebA-HQ-img" / f"{idx}.jpg", image)
        small = cv2.resize(labels, (mask_size, mask_size), interpolation=cv2.INTER_NEAREST)
        for lapa_id, part in LAPA_TO_CELEBA.items():
            mask = (small == lapa_id).astype(np.uint8) * 255
            if part == "skin":  # skin also under everything drawn on the face: later parts must overwrite it
                mask = np.isin(small, [1, 2, 3, 4, 5, 6, 7, 8, 9]).astype(np.uint8) * 255
            if part == "hair" and idx % 2 == 0:  # a hair strand over the forehead skin
                mask[mask_size // 3 : mask_size // 3 + 2, :] = 255
            if mask.any():
                assert cv2.imwrite(str(folder / f"{idx:05d}_{part}.png"), np.dstack([mask] * 3))
        if idx % 3 == 0:
            neck = np.zeros_like(small)
            neck[-4:, mask_size // 3 : 2 * mask_size // 3] = 255
            assert cv2.imwrite(str(folder / f"{idx:05d}_neck.png"), neck)
        orig = f"{orig_ids[idx]:06d}.jpg"
        mapping.append(f"{idx:<12d}{orig_ids[idx] - 1:<12d}{orig}")
        partition.append(f"{orig} {partitions[idx]}")
    partition.append("999999.jpg 0")  # CelebA images outside CelebA-HQ are listed too
    (root / "CelebA-HQ-to-CelebA-mapping.txt").write_text("\n".join(mapping) + "\n")
    (root / partition_name).write_text("\n".join(sorted(partition)) + "\n")
    return root


def celeba_expected_merge(root: Path, idx: int) -> np.ndarray:
    """Reference merge: per pixel the largest id among the part masks covering it (the overwrite order is the id
    order, so the last part written is the one with the largest id)."""
    out = None
    for label, part in enumerate(CELEBAMASK_HQ.classes[1:], start=1):
        path = root / "CelebAMask-HQ-mask-anno" / str(idx // 2000) / f"{idx:05d}_{part}.png"
        if path.is_file():
            m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) != 0
            out = np.zeros(m.shape, np.int64) if out is None else out
            out = np.maximum(out, m * label)
    assert out is not None
    return out.astype(np.uint8)
