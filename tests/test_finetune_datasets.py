"""Stage C loaders: official layouts, splits, .pts parsing, mask merging, crops and error messages."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from finetune_trees import (
    CELEBA_PARTITIONS,
    LAPA_COUNTS,
    W300_COUNTS,
    celeba_expected_merge,
    make_celebamask_hq,
    make_lapa,
    make_w300,
    renderer_available,
    write_pts,
)

from label_finetune.datasets import (
    CelebAMaskHQDataset,
    CropConfig,
    FinetuneDataModule,
    LapaDataset,
    W300Dataset,
    collate,
)
from label_finetune.datasets.celebamask_hq import merge_part_masks, write_png_atomic
from label_finetune.datasets.common import square_crop_affine
from label_finetune.datasets.w300 import read_pts
from next3d_gen.errors import UserError
from next3d_gen.labels import IGNORE_INDEX
from synthforge.crops import invert_affine, transform_points

RENDERED = renderer_available()
"""Trees of the loader tests hold procedural renders of the built-in head when stage A is present."""


@pytest.fixture(scope="module")
def w300_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_w300(tmp_path_factory.mktemp("w300"), rendered=RENDERED)


@pytest.fixture(scope="module")
def lapa_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lapa(tmp_path_factory.mktemp("lapa"), rendered=RENDERED)


@pytest.fixture(scope="module")
def celeba_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_celebamask_hq(tmp_path_factory.mktemp("celeba"), rendered=RENDERED)


# ---------------------------------------------------------------------------------------------------------- crops


def test_crop_affine_maps_window_edges_and_matches_warp() -> None:
    box = np.array([10.0, 20.0, 49.0, 39.0])  # 40 x 20 px box, centre (29.5, 29.5)
    a = square_crop_affine(box, scale=1.0, size=40)
    # window side 40 centred at 29.5: its left edge x = 9.5 maps to -0.5, right edge 49.5 to 39.5
    np.testing.assert_allclose(transform_points(a, np.array([[9.5, 9.5], [49.5, 49.5]])), [[-0.5, -0.5], [39.5, 39.5]])
    # at scale 1 the crop is a pure shift: a bright pixel lands exactly where the affine sends it
    image = np.zeros((64, 64, 3), np.uint8)
    image[31, 17] = 255
    crop = cv2.warpAffine(image, a, (40, 40), flags=cv2.INTER_LINEAR)
    u, v = transform_points(a, np.array([[17.0, 31.0]]))[0]
    assert crop[..., 0].argmax() == int(round(v)) * 40 + int(round(u))
    # inverse round trip, with rotation and flip
    a2 = square_crop_affine(box, 1.3, 32, rotation_deg=20.0, shift=(0.05, -0.02), flip=True)
    pts = np.random.default_rng(0).uniform(0, 60, (7, 2))
    np.testing.assert_allclose(transform_points(invert_affine(a2), transform_points(a2, pts)), pts, atol=1e-9)
    # the flip mirrors: a point left of the centre ends up right of the crop centre
    left = transform_points(square_crop_affine(box, 1.0, 40, flip=True), np.array([[12.0, 29.5]]))[0]
    assert left[0] > 19.5


# ------------------------------------------------------------------------------------------------------------ 300W


def test_read_pts_is_one_based(tmp_path: Path) -> None:
    p = tmp_path / "a.pts"
    lm = np.arange(136, dtype=np.float32).reshape(68, 2)
    write_pts(p, lm)  # writes x + 1, y + 1
    np.testing.assert_allclose(read_pts(p), lm, atol=1e-3)
    p.write_text("version: 1\nn_points: 68\n{\n1 2\n}\n")
    with pytest.raises(UserError, match="declares 68 points but holds 1.*a.pts"):
        read_pts(p)
    write_pts(p, lm[:67])
    with pytest.raises(UserError, match="67 points, expected 68.*a.pts"):
        read_pts(p)
    p.write_text("version: 1\nn_points: 68\n{\n" + "1 x\n" * 68 + "}\n")
    with pytest.raises(UserError, match="malformed point line.*a.pts"):
        read_pts(p)


def test_w300_splits_and_samples(w300_root: Path) -> None:
    c = W300_COUNTS
    sizes = {
        "train": c["afw"] + c["helen/trainset"] + c["lfpw/trainset"],
        "common": c["helen/testset"] + c["lfpw/testset"],
        "challenge": c["ibug"],
    }
    sizes["full"] = sizes["common"] + sizes["challenge"]
    for split, n in sizes.items():
        ds = W300Dataset(w300_root, split, resolution=32)
        assert len(ds) == n
    ds = W300Dataset(w300_root, "full", resolution=32)
    names = [ds.name(i) for i in range(len(ds))]
    assert names[0].startswith("helen/testset") and names[-1].startswith("ibug/")
    s = ds[0]
    assert s["image"].shape == (3, 32, 32) and s["image"].dtype == torch.float32
    assert 0 <= float(s["image"].min()) and float(s["image"].max()) <= 1
    lm, orig, a = s["landmarks"].numpy(), s["orig_landmarks"].numpy(), s["affine"].numpy()
    np.testing.assert_allclose(lm, transform_points(a.astype(np.float64), orig.astype(np.float64)), atol=1e-3)
    # landmark box crop at scale 1.4: the points fill the central 1/1.4 of the crop
    span = (lm.max(0) - lm.min(0)).max()
    assert abs(span + 1 - 32 / 1.4) < 0.5
    # training crops flip with the 68-point permutation: outer corner 36 stays on the image left
    train = W300Dataset(w300_root, "train", 32, CropConfig("landmarks", 1.4, flip_prob=1.0), train=True)
    for i in range(len(train)):
        t = train[i]["landmarks"]
        assert t[36, 0] < t[45, 0] and t[0, 0] < t[16, 0]


def test_w300_errors(tmp_path: Path) -> None:
    root = make_w300(tmp_path / "w")
    with pytest.raises(UserError, match="unknown 300W split"):
        W300Dataset(root, "test", 32)
    bad = sorted((root / "ibug").glob("*.jpg"))[0]
    bad.write_bytes(b"not a jpeg")
    ds = W300Dataset(root, "challenge", 32)
    with pytest.raises(UserError, match=f"unreadable image file: .*{bad.name}"):
        ds[0]
    bad.unlink()
    with pytest.raises(UserError, match="missing image file for landmark file: .*ibug"):
        W300Dataset(root, "challenge", 32)
    shutil.rmtree(root / "afw")
    with pytest.raises(UserError, match="missing 300W folder: .*afw"):
        W300Dataset(root, "train", 32)


def _rewrite_pts(path: Path, count: int) -> None:
    """Keep the first ``count`` points of a .pts file (header and braces as the format wants)."""
    write_pts(path, read_pts(path)[:count])


def test_w300_checks_every_pts_file_at_setup(tmp_path: Path) -> None:
    root = make_w300(tmp_path / "w")
    first, second = sorted((root / "afw").glob("*.pts"))[:2]
    _rewrite_pts(second, 67)
    # found when the dataset is built, not when a batch happens to read it
    with pytest.raises(UserError, match=f"landmark file has 67 points, expected 68: .*afw/{second.name}$"):
        W300Dataset(root, "train", 32)
    _rewrite_pts(first, 66)
    more = r"\(and 1 more bad landmark files\)"
    with pytest.raises(UserError, match=rf"has 66 points, expected 68: .*{first.name} {more}$"):
        W300Dataset(root, "train", 32)
    # splits that do not use the folder are unaffected
    assert len(W300Dataset(root, "common", 32)) == W300_COUNTS["helen/testset"] + W300_COUNTS["lfpw/testset"]
    # the points kept at setup are the file's (1-based -> 0-based)
    ds = W300Dataset(root, "challenge", 32)
    np.testing.assert_array_equal(ds.points[0], read_pts(ds.records[0][1]))
    text = ds.records[0][1].read_text().splitlines()
    x, y = (float(v) for v in text[3].split())
    np.testing.assert_allclose(ds[0]["orig_landmarks"][0].numpy(), [x - 1, y - 1], atol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"batch_size": 0}, "--data.batch_size"),
        ({"batch_size": -4}, "--data.batch_size"),
        ({"val_batch_size": 0}, "--data.val_batch_size"),
        ({"num_workers": -1}, "--data.num_workers"),
        ({"resolution": 4}, "--data.resolution"),
    ],
)
def test_datamodule_rejects_bad_counts(w300_root: Path, kwargs: dict, option: str) -> None:
    value = next(iter(kwargs.values()))
    with pytest.raises(UserError, match=f"^{option} must be .*, got {value}$"):
        FinetuneDataModule("w300", str(w300_root), **kwargs)


def test_datamodule_root_and_setup_fit_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=f"^--data.root: {empty} holds no w300 data .*afw"):
        FinetuneDataModule("w300", str(empty))
    with pytest.raises(UserError, match=f"^--data.root: no such folder: {tmp_path / 'nope'}$"):
        FinetuneDataModule("lapa", str(tmp_path / "nope"))
    root = make_w300(tmp_path / "w")
    bad = sorted((root / "lfpw" / "testset").glob("*.pts"))[0]  # in the validation split (common)
    _rewrite_pts(bad, 60)
    dm = FinetuneDataModule("w300", str(root), resolution=32, batch_size=2)  # constructing stays cheap
    with pytest.raises(UserError, match=f"60 points, expected 68: .*{bad.name}"):
        dm.setup_fit()
    write_pts(bad, np.zeros((68, 2), np.float32))
    dm.setup_fit()
    # the loaders reuse the datasets built (and checked) by setup_fit
    assert dm.train_dataloader().dataset is dm.dataset_for(dm.train_split, train=True)
    assert dm.val_dataloader().dataset is dm.dataset_for(dm.val_split)


# ------------------------------------------------------------------------------------------------------------ LaPa


def test_lapa_splits_and_crop(lapa_root: Path) -> None:
    for split, n in LAPA_COUNTS.items():
        assert len(LapaDataset(lapa_root, split, 48)) == n
    ds = LapaDataset(lapa_root, "test", 48, return_original=True)
    s = ds[2]
    assert s["seg"].shape == (48, 48) and s["seg"].dtype == torch.int64
    assert s["landmarks"].shape == (106, 2)
    orig = s["orig_seg"].numpy()
    assert orig.shape == tuple(s["orig_size"].tolist())
    # nearest-neighbour crop: every crop label comes from the original at the inverse-mapped pixel
    inv = invert_affine(s["affine"].numpy().astype(np.float64))
    vv, uu = np.mgrid[0:48, 0:48]
    src = transform_points(inv, np.stack([uu.ravel(), vv.ravel()], 1).astype(np.float64))
    xi, yi = np.round(src[:, 0]).astype(int), np.round(src[:, 1]).astype(int)
    inside = (xi >= 0) & (yi >= 0) & (xi < orig.shape[1]) & (yi < orig.shape[0])
    seg = s["seg"].numpy().ravel()
    # exact-half rounding may differ from OpenCV's; demand agreement almost everywhere
    agree = (seg[inside] == orig[yi[inside], xi[inside]]).mean()
    assert agree > 0.97
    assert (seg[~inside] == IGNORE_INDEX).all()
    # label box crop at scale 1.2: non-background labels span about 1/1.2 of the crop
    fg = np.argwhere((s["seg"].numpy() != 0) & (s["seg"].numpy() != IGNORE_INDEX))
    span = (fg.max(0) - fg.min(0)).max() + 1
    assert abs(span - 48 / 1.2) <= 2


def test_lapa_errors(tmp_path: Path) -> None:
    root = make_lapa(tmp_path / "l")
    label = sorted((root / "val" / "labels").glob("*.png"))[0]
    cv2.imwrite(str(label), np.zeros((5, 7), np.uint8))
    with pytest.raises(UserError, match=f"label map is 7x5.*{label.name}"):
        LapaDataset(root, "val", 32)[0]
    lm = sorted((root / "test" / "landmarks").glob("*.txt"))[1]
    lm.write_text("68\n" + "1 2\n" * 68)
    with pytest.raises(UserError, match=f"68 points.*expected 106.*{lm.name}"):
        LapaDataset(root, "test", 32)  # every landmark file is read when the dataset is set up
    assert len(LapaDataset(root, "test", 32, with_landmarks=False)) == LAPA_COUNTS["test"]
    (root / "train" / "labels" / "train_0000.png").unlink()
    with pytest.raises(UserError, match="missing label file: .*train_0000.png"):
        LapaDataset(root, "train", 32)


# --------------------------------------------------------------------------------------------------- CelebAMask-HQ


def test_celeba_partition_and_merge(celeba_root: Path, tmp_path: Path) -> None:
    for split, code in (("train", 0), ("val", 1), ("test", 2)):
        ds = CelebAMaskHQDataset(celeba_root, split, 32, cache_dir=tmp_path / "cache")
        assert ds.records == [i for i, p in enumerate(CELEBA_PARTITIONS) if p == code]
    ds = CelebAMaskHQDataset(celeba_root, "train", 32, cache_dir=tmp_path / "cache", return_original=True)
    for i, idx in enumerate(ds.records):
        merged = ds.labels(i)
        np.testing.assert_array_equal(merged, celeba_expected_merge(celeba_root, idx))
    assert 17 in ds.labels(0)  # the hair strand overwrote skin
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [f"{i}.png" for i in ds.records]
    s = ds[1]
    expected = celeba_expected_merge(celeba_root, ds.records[1])
    assert s["image"].shape == (3, 32, 32)
    np.testing.assert_array_equal(s["orig_seg"].numpy(), expected)
    # the cache is used on the next read: a cached map is returned even after its source masks change
    cached = tmp_path / "cache" / f"{ds.records[1]}.png"
    cv2.imwrite(str(cached), np.full(expected.shape, 6, np.uint8))
    assert (ds[1]["orig_seg"].numpy() == 6).all()


def test_celeba_partition_file_option(tmp_path: Path) -> None:
    root = make_celebamask_hq(tmp_path / "c", partition_name="elsewhere.txt")
    with pytest.raises(UserError, match="missing CelebA partition file: .*list_eval_partition.txt"):
        CelebAMaskHQDataset(root, "test", 32)
    ds = CelebAMaskHQDataset(root, "test", 32, partition_file=str(root / "elsewhere.txt"))
    assert len(ds) == CELEBA_PARTITIONS.count(2)
    # comma-separated partition files with a header (the Kaggle copy of CelebA) are read too
    lines = (root / "elsewhere.txt").read_text().split()
    csv = root / "p.csv"
    rows = [f"{a},{b}" for a, b in zip(lines[::2], lines[1::2], strict=True)]
    csv.write_text("image_id,partition\n" + "\n".join(rows))
    assert CelebAMaskHQDataset(root, "test", 32, partition_file=str(csv)).records == ds.records


def test_celeba_errors(tmp_path: Path) -> None:
    root = make_celebamask_hq(tmp_path / "c")
    skin = root / "CelebAMask-HQ-mask-anno" / "0" / "00002_skin.png"
    hair = root / "CelebAMask-HQ-mask-anno" / "0" / "00002_hair.png"
    cv2.imwrite(str(hair), np.zeros((16, 16), np.uint8))
    with pytest.raises(UserError, match=f"part mask is 16x16, but .*{skin.name} is 32x32: .*{hair.name}"):
        merge_part_masks(root, 2)
    for p in (root / "CelebAMask-HQ-mask-anno" / "0").glob("00003_*.png"):
        p.unlink()
    with pytest.raises(UserError, match="missing part masks for CelebA-HQ image 3"):
        merge_part_masks(root, 3)
    (root / "CelebA-HQ-img" / "0.jpg").unlink()
    # files are checked when the dataset is set up: the first missing one is named, the others counted (id 3 has no
    # part masks left); the val split, which holds neither id, is not affected
    with pytest.raises(UserError, match=r"missing image file: .*/0\.jpg \(and 1 more images with missing files\)$"):
        CelebAMaskHQDataset(root, "train", 32, cache_dir=tmp_path / "cache")
    assert len(CelebAMaskHQDataset(root, "val", 32, cache_dir=tmp_path / "cache")) == 2
    # a merged map in the cache stands in for the part masks
    (root / "CelebA-HQ-img" / "0.jpg").write_bytes((root / "CelebA-HQ-img" / "1.jpg").read_bytes())
    write_png_atomic(tmp_path / "cache" / "3.png", np.ones((32, 32), np.uint8))
    assert len(CelebAMaskHQDataset(root, "train", 32, cache_dir=tmp_path / "cache")) == 4
    (root / "CelebA-HQ-to-CelebA-mapping.txt").unlink()
    with pytest.raises(UserError, match="missing CelebA-HQ mapping file"):
        CelebAMaskHQDataset(root, "train", 32)


def test_atomic_png_write_never_exposes_partial_files(tmp_path: Path) -> None:
    target = tmp_path / "m.png"
    images = [np.full((64, 64), v, np.uint8) for v in (3, 7)]
    seen: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            if target.exists():
                img = cv2.imread(str(target), cv2.IMREAD_GRAYSCALE)
                seen.append(-1 if img is None else int(img[0, 0]))

    t = threading.Thread(target=reader)
    t.start()
    for k in range(40):
        write_png_atomic(target, images[k % 2])
    stop.set()
    t.join()
    assert set(seen) <= {3, 7}
    assert [p.name for p in tmp_path.iterdir()] == ["m.png"]


# -------------------------------------------------------------------------------------------------- datamodule


def test_datamodule_collates_variable_sizes(lapa_root: Path) -> None:
    dm = FinetuneDataModule("lapa", str(lapa_root), resolution=32, batch_size=2)
    assert (dm.num_classes, dm.num_landmarks) == (11, 106)
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["affine"].shape == (2, 2, 3)
    assert isinstance(batch["orig_seg"], list) and batch["orig_seg"][0].shape != batch["orig_seg"][1].shape
    train = next(iter(dm.train_dataloader()))
    assert train["seg"].shape == (2, 32, 32) and "orig_seg" not in train
    with pytest.raises(UserError, match="--data.dataset"):
        FinetuneDataModule("300w", str(lapa_root))
    assert collate([{"a": torch.zeros(2)}])["a"].shape == (1, 2)
