"""Training on imported published datasets and on weighted mixtures of sources (issue 13, parts 1 and 2).

Fixtures in each published layout are built by the importer tests' own builders (tests/test_importers.py), imported
with the real importers, then trained on and evaluated with the tiny stage-I config.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_importers import _facesynthetics_tree, _release_tree

from next3d_gen.h5 import DEPTH_KINDS
from next3d_gen.importers import IMPORTERS
from next3d_gen.importers.facesynthetics import import_facesynthetics
from next3d_gen.importers.synthforge_release import import_synthforge_release
from next3d_gen.labels import (
    FACESYNTHETICS,
    FACESYNTHETICS_TO_SYNTH,
    IGNORE_INDEX,
    RELEASE_TO_SYNTH,
    SYNTH,
    TRAINING_MERGE_TABLES,
)
from synthforge import losses as L
from synthforge.cli import main as cli_main
from synthforge.data.dataset import SynthFaceDataset
from synthforge.data.mixture import MixtureSampler, parse_sources
from synthforge.data.toy import write_toy_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "stage1" / "tiny.yaml"


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("sources")
    _facesynthetics_tree(d / "fs_src", n=6)
    _release_tree(d / "release_src", n=4)
    return {
        "fs": import_facesynthetics(d / "fs_src", d / "fs.h5"),
        "release": import_synthforge_release(d / "release_src", d / "release.h5"),
        "synth": write_toy_dataset(d / "synth.h5", 8, 64, seed=0),
        "root": d,
    }


# -- label tables -----------------------------------------------------------------------------------------------------


def test_merge_tables_are_keyed_by_importer_and_cover_every_source_class() -> None:
    assert set(TRAINING_MERGE_TABLES) <= set(IMPORTERS)
    for table in TRAINING_MERGE_TABLES.values():
        hard, partial = table.hard_lut(), table.partial_lut()
        for i, (name, targets) in enumerate(table.allowed):
            allowed = {c for c in range(table.target.num_classes) if partial[i] >> c & 1}
            if len(targets) == 1:
                assert hard[i] == table.target.id(targets[0]) and partial[i] == 0, name
            else:
                assert hard[i] == IGNORE_INDEX and allowed == {table.target.id(t) for t in targets}, name
        assert hard[IGNORE_INDEX] == IGNORE_INDEX and partial[IGNORE_INDEX] == 0
    fs = FACESYNTHETICS_TO_SYNTH
    assert fs.hard_lut()[FACESYNTHETICS.id("hair")] == SYNTH.id("hair")
    assert fs.hard_lut()[FACESYNTHETICS.id("facewear")] == IGNORE_INDEX and fs.partial_lut()[18] == 0  # ignored
    # the release: every class may be hair or eyeglasses under its mesh label
    scalp = RELEASE_TO_SYNTH.partial_lut()[SYNTH.id("scalp")]
    assert {c for c in range(22) if scalp >> c & 1} == {SYNTH.id("scalp"), SYNTH.id("hair"), SYNTH.id("eyeglasses")}


# -- losses -----------------------------------------------------------------------------------------------------------


def test_partial_label_loss_against_a_hand_computation() -> None:
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])  # two pixels, 3 classes
    p = np.exp(logits.numpy()) / np.exp(logits.numpy()).sum(1, keepdims=True)
    target = torch.tensor([1, IGNORE_INDEX])  # pixel 0: hard class 1; pixel 1: partial {0, 2}
    partial = torch.tensor([0, 0b101])
    term = L.segmentation_terms(logits.T.reshape(1, 3, 1, 2), target.view(1, 1, 2), partial.view(1, 1, 2))
    expected = (-math.log(p[0, 1]) - math.log(p[1, 0] + p[1, 2])) / 2
    assert term.value().item() == pytest.approx(expected, rel=1e-6)
    # without partial pixels it is the plain cross-entropy
    plain = torch.nn.functional.cross_entropy(logits[:1], target[:1])
    assert L.segmentation_terms(logits[:1].T.reshape(1, 3, 1, 1), target[:1].view(1, 1, 1)).value() == pytest.approx(
        plain.item(), rel=1e-6
    )


def test_ssi_depth_loss_is_zero_for_an_affine_target_and_scale_free() -> None:
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(2, 1, 6, 6, generator=g)
    mask = torch.rand(2, 1, 6, 6, generator=g) > 0.3
    assert L.ssi_depth_terms(pred, 3.0 * pred - 0.7, mask).value().item() < 1e-5
    target = torch.rand(2, 1, 6, 6, generator=g)
    a = L.ssi_depth_terms(pred, target, mask).value()
    b = L.ssi_depth_terms(pred, 250.0 * target + 9.0, mask).value()  # the target's unit and offset do not matter
    assert a.item() > 0.1 and b.item() == pytest.approx(a.item(), rel=1e-4)


def _fake_outputs(b: int, s: int, requires_grad: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    out = {
        "seg": torch.randn(b, SYNTH.num_classes, s, s, generator=g),
        "depth": torch.randn(b, 1, s, s, generator=g) * 0.05,
        "hm": torch.randn(b, 68, s // 4, s // 4, generator=g),
        "co": torch.rand(b, 68, 2, generator=g) * s,
    }
    return {k: v.requires_grad_(requires_grad) for k, v in out.items()}


def test_missing_fields_contribute_exactly_zero_and_zero_gradient(sources: dict[str, Path]) -> None:
    """A batch of a generated sample (all labels, metric depth), a FaceSynthetics sample (no depth), a release sample
    (relative depth, partial labels): every task term of the system is the pooled value over the samples that have
    its label, and the gradient reaching a sample's outputs through a term it has no label for is exactly zero."""
    from torch.utils.data import default_collate

    from synthforge.system import MultiTaskSystem

    items = [SynthFaceDataset(sources[k], crop_size=32)[0] for k in ("synth", "fs", "release")]
    batch = default_collate(items)
    assert batch["has_depth"].tolist() == [True, False, True] and not batch["depth_mask"][1].any()
    assert batch["depth_kind"].tolist() == [DEPTH_KINDS.index(k) for k in ("metric", "none", "relative")]
    assert batch["has_visibility"].tolist() == [True, False, False] and batch["landmarks_visible"][1:].all()
    assert (batch["seg_partial"][2] != 0).any() and (batch["seg"][2] == IGNORE_INDEX).all()  # release: all partial

    o = _fake_outputs(3, 32)
    net_out = type("Out", (), {"seg": o["seg"], "depth": o["depth"], "heatmaps": [o["hm"]],
                               "landmark_stacks": [o["co"]], "normal": None, "uv": None})()  # fmt: skip
    weights = L.LossConfig(seg=1, depth=100, depth_ssi=2, heatmap=1, coord=0.1)
    system = MultiTaskSystem(torch.nn.Identity(), loss=weights)
    terms = system._task_terms(net_out, batch)
    grads = {}
    for name, outputs in (("depth", "depth"), ("depth_ssi", "depth"), ("seg", "seg"), ("heatmap", "hm")):
        grads[name] = torch.autograd.grad(terms[name].value(), o[outputs], allow_unused=True)[0]
    # metric depth: only sample 0; relative depth: only sample 2; the FaceSynthetics sample gets nothing from either
    assert (grads["depth"][1:] == 0).all() and grads["depth"][0].abs().sum() > 0
    assert (grads["depth_ssi"][:2] == 0).all() and grads["depth_ssi"][2].abs().sum() > 0
    assert terms["depth"].num[1:].tolist() == [0.0, 0.0] and terms["depth"].den[1:].tolist() == [0.0, 0.0]
    assert terms["depth_ssi"].num[:2].tolist() == [0.0, 0.0]
    one = L.masked_l1(o["depth"][:1], batch["depth"][:1], batch["depth_mask"][:1])
    assert terms["depth"].value().item() == pytest.approx(one.item(), rel=1e-6)
    # every sample has seg and landmarks here
    assert all(grads["seg"][i].abs().sum() > 0 for i in range(3))

    # a sample flagged without seg / landmarks drops out of those terms exactly
    batch["has_seg"][1] = False
    batch["has_landmarks"][1] = False
    terms = system._task_terms(net_out, batch)
    for name, outputs in (("seg", "seg"), ("heatmap", "hm"), ("coord", "co")):
        grad = torch.autograd.grad(terms[name].value(), o[outputs])[0]
        assert (grad[1] == 0).all() and terms[name].num[1] == 0 and terms[name].den[1] == 0, name


# -- datasets and mixtures --------------------------------------------------------------------------------------------


def test_imported_files_read_as_training_samples(sources: dict[str, Path]) -> None:
    fs = SynthFaceDataset(sources["fs"], crop_size=32)
    assert fs.label_space.classes == SYNTH.classes and fs.depth_kind == "none"
    assert fs.present == {"seg": True, "depth": False, "landmarks_2d": True, "landmarks_visible": False}
    item = fs[0]
    seg = item["seg"]
    hard = set(seg[seg != IGNORE_INDEX].unique().tolist())
    assert hard <= set(range(SYNTH.num_classes)) and (item["seg_partial"][seg != IGNORE_INDEX] == 0).all()
    partial = item["seg_partial"] != 0
    assert partial.any() and (seg[partial] == IGNORE_INDEX).all()
    rel = SynthFaceDataset(sources["release"], crop_size=32)
    assert rel.depth_kind == "relative" and rel.label_space == SYNTH and rel[0]["depth_mask"].any()


def test_parse_sources_forms_and_errors() -> None:
    a = parse_sources("--data.train", "data/a:0.5,data/b.h5:0.3, data/c/index.json:0.2")
    assert [(s.path, s.name) for s in a] == [("data/a", "a"), ("data/b.h5", "b"), ("data/c/index.json", "c")]
    assert [s.weight for s in a] == pytest.approx([0.5, 0.3, 0.2])
    b = parse_sources("--data.train", [{"path": "x/synth", "weight": 3}, "y/synth:1", "z"])
    assert [s.name for s in b] == ["synth", "synth-2", "z"] and [s.weight for s in b] == pytest.approx([0.6, 0.2, 0.2])
    assert parse_sources("--data.train", "one")[0].weight == 1.0
    from next3d_gen.errors import UserError

    for bad in ("a:0,b:1", "a:-1", "a,,b", [{"path": "a", "wieght": 1}]):
        with pytest.raises(UserError, match="--data.train"):
            parse_sources("--data.train", bad)


def test_mixture_sampler_proportions_per_batch_and_determinism() -> None:
    lengths, weights, bs = [50, 7, 100], [0.5, 0.3, 0.2], 16
    sampler = MixtureSampler(lengths, weights, seed=3, num_samples=1600)
    idx = sampler.indices()
    src = np.searchsorted(np.cumsum(lengths), idx, side="right")
    counts = np.stack([np.bincount(src[i : i + bs], minlength=3) for i in range(0, len(src), bs)])
    assert np.abs(counts - bs * np.asarray(weights)).max() <= 2  # every batch holds each share to within 2
    assert np.allclose(np.bincount(src) / len(src), weights, atol=0.01)
    # rows: a permutation of each source before any repeat
    first = idx[src == 1][:7] - 50
    assert sorted(first.tolist()) == list(range(7))
    # deterministic per (seed, epoch); another epoch or seed draws another sequence
    assert np.array_equal(MixtureSampler(lengths, weights, seed=3, num_samples=1600).indices(), idx)
    sampler.set_epoch(1)
    assert not np.array_equal(sampler.indices(), idx)
    assert not np.array_equal(MixtureSampler(lengths, weights, seed=4, num_samples=1600).indices(), idx)
    # a DDP rank's strided share (Lightning's wrapper without shuffling) keeps the proportions
    for rank in range(2):
        share = src[rank::2]
        assert np.allclose(np.bincount(share, minlength=3) / len(share), weights, atol=0.02)


# -- import -> train -> evaluate --------------------------------------------------------------------------------------


def _metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "lightning_logs" / "version_0" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _last(rows: list[dict[str, str]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key)]
    return float(values[-1]) if values else None


@pytest.mark.parametrize("layout", ["fs", "release"])
def test_import_train_evaluate_each_published_layout(layout: str, sources: dict[str, Path], tmp_path: Path) -> None:
    from synthforge.evaluation import evaluate_synthetic

    data = sources[layout]
    argv = ["train", "--config", str(TINY), f"--data.train={data}", f"--data.val={data}", "--data.crop_size=32",
            "--data.batch_size=2", f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=3"]  # fmt: skip
    assert cli_main(argv) == 0
    rows = _metrics(tmp_path)
    assert all(np.isfinite(float(r["train/loss"])) for r in rows if r.get("train/loss"))
    assert _last(rows, "val/nme") is not None and _last(rows, "val/count/nme") > 0
    assert _last(rows, "val/seg_f1_mean") is not None
    assert _last(rows, "val/depth_rmse_mm") is None and _last(rows, "val/count/depth_rmse_mm") == 0
    if layout == "fs":  # no depth at all: no depth loss was logged either
        assert _last(rows, "train/loss_depth") is None and _last(rows, "train/loss_depth_ssi") is None
        assert _last(rows, "val/depth_ssi_rmse") is None
    else:  # relative depth: the scale-and-shift-invariant term and metric
        assert _last(rows, "train/loss_depth_ssi") > 0 and _last(rows, "val/depth_ssi_rmse") > 0
        assert _last(rows, "train/loss_depth") is None
    ckpt = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "final.ckpt"
    res = evaluate_synthetic(ckpt, data, batch_size=4)
    assert res["depth_rmse_mm"] is None and res["baseline_depth_rmse_mm"] is None
    assert res["counts"]["depth_rmse_mm"] == 0 and res["counts"]["nme"] == res["num_samples"]
    assert np.isfinite(res["nme"]) and 0 <= res["seg_f1_mean"] <= 1


def test_mixture_trains_with_per_source_logs(sources: dict[str, Path], tmp_path: Path) -> None:
    train = f"{sources['synth']}:0.5,{sources['fs']}:0.3,{sources['release']}:0.2"
    val = f"{sources['synth']},{sources['fs']}"
    argv = ["train", "--config", str(TINY), f"--data.train={train}", f"--data.val={val}", "--data.crop_size=32",
            "--data.batch_size=5", f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=3",
            "--trainer.limit_val_batches=1.0"]  # fmt: skip
    assert cli_main(argv) == 0
    rows = _metrics(tmp_path)
    assert len([r for r in rows if r.get("train/loss")]) == 3
    for name in ("synth", "fs", "release"):
        assert _last(rows, f"train/{name}/loss_seg") is not None, name
    assert _last(rows, "train/synth/loss_depth") is not None and _last(rows, "train/fs/loss_depth") is None
    assert _last(rows, "train/release/loss_depth_ssi") is not None
    assert _last(rows, "val/synth/depth_rmse_mm") > 0 and _last(rows, "val/fs/depth_rmse_mm") is None
    assert _last(rows, "val/fs/nme") > 0 and _last(rows, "val/count/nme") == 14  # 8 + 6 validation images


def test_mixture_yaml_list_and_bad_weight_exit_2(sources: dict[str, Path], tmp_path: Path, capsys) -> None:  # noqa: ANN001
    cfg = tmp_path / "mix.yaml"
    cfg.write_text(f"data:\n  train:\n    - path: {sources['synth']}\n      weight: 2\n    - {sources['fs']}:1\n")
    argv = ["train", "--config", str(TINY), "--config", str(cfg), "--data.crop_size=32", "--data.batch_size=3",
            f"--trainer.default_root_dir={tmp_path / 'run'}", "--trainer.max_steps=1"]  # fmt: skip
    assert cli_main(argv) == 0
    assert _last(_metrics(tmp_path / "run"), "train/fs/loss_seg") is not None
    capsys.readouterr()
    bad = ["train", "--config", str(TINY), f"--data.train={sources['synth']}:0,{sources['fs']}:1"]
    assert cli_main(bad) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--data.train: the weight of" in err[0], err


@pytest.mark.slow
def test_mixture_under_ddp_two_cpu_processes(sources: dict[str, Path], tmp_path: Path) -> None:
    """Two gloo ranks on a mixture with two validation sources: the ranks see different sources in their batches,
    yet every collective matches (no hang) and the per-source metrics are the sums over both ranks."""
    import os
    import subprocess
    import sys

    ddp = tmp_path / "ddp.yaml"
    ddp.write_text("trainer:\n  accelerator: cpu\n  devices: 2\n  strategy:\n"
                   "    class_path: lightning.pytorch.strategies.DDPStrategy\n"
                   "    init_args: {process_group_backend: gloo}\n")  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "synthforge.cli", "train", "--config", str(TINY), "--config", str(ddp),
           f"--data.train={sources['synth']}:0.6,{sources['fs']}:0.4", f"--data.val={sources['synth']},{sources['fs']}",
           "--data.crop_size=32", "--data.batch_size=2", "--trainer.limit_val_batches=1.0",
           f"--trainer.default_root_dir={tmp_path / 'run'}", "--trainer.max_steps=3"]  # fmt: skip
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = _metrics(tmp_path / "run")
    assert _last(rows, "val/count/nme") == 14 and _last(rows, "val/fs/count/nme") == 6
    assert _last(rows, "val/synth/depth_rmse_mm") > 0 and _last(rows, "val/fs/depth_rmse_mm") is None


def test_mixture_batches_are_the_same_with_any_worker_count(sources: dict[str, Path]) -> None:
    """The draws come from the seeded sampler in the main process: the (source, row) of every batch item is the same
    with 0 or 2 DataLoader workers (each worker opens its own reader per source)."""
    from synthforge.data.datamodule import SynthDataModule

    def draws(workers: int) -> list[tuple[int, int]]:
        dm = SynthDataModule(f"{sources['synth']}:2,{sources['fs']}:1,{sources['release']}:1", batch_size=3,
                             num_workers=workers, crop_size=32, persistent_workers=False, seed=5)  # fmt: skip
        return [(int(s), int(i)) for b in dm.train_dataloader() for s, i in zip(b["source"], b["index"], strict=True)]

    single = draws(0)
    assert draws(2) == single and len(single) == 18  # 8 + 6 + 4 rows, 6 full batches
    counts = np.bincount([s for s, _ in single], minlength=3)
    assert np.abs(counts - np.array([9, 4.5, 4.5])).max() <= 1  # weights 2:1:1 of 18 draws


def test_a_file_without_landmarks_is_cropped_around_its_head_box(tmp_path: Path) -> None:
    from next3d_gen.importers import write_samples

    size = 40
    image = np.zeros((size, size, 3), np.uint8)
    seg = np.zeros((size, size), np.uint8)
    seg[10:30, 14:24] = FACESYNTHETICS.id("skin")  # head box x 13.5..23.5, y 9.5..29.5 (pixel edges)
    image[seg > 0] = 200
    sample = {"image": image, "seg": seg, "bbox": np.array([13.5, 9.5, 23.5, 29.5], np.float32),
              "sample_seed": np.int64(-1)}  # fmt: skip
    shapes = {"image": (size, size, 3), "seg": (size, size), "bbox": (4,), "sample_seed": ()}
    path = write_samples(tmp_path / "nolm.h5", ["a"], shapes, FACESYNTHETICS.to_json(), {"importer": "facesynthetics"},
                         size, "none", lambda stem: sample)  # fmt: skip
    ds = SynthFaceDataset(path, crop_size=20)
    item = ds[0]
    assert not item["has_landmarks"] and not item["landmarks_in_crop"].any() and not item["has_depth"]
    # the 20 px head box fills the 20 px crop: the face column spans the crop's middle half, rows all of it
    face = item["seg_partial"] != 0  # FaceSynthetics skin is a partial label
    assert face[:, 5:15].all() and not face[:, :4].any() and not face[:, 16:].any()
