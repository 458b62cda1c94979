"""End-to-end ``synthforge train`` on a toy HDF5 dataset: metrics, checkpoints, resume, bad input, inference, DDP."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from next3d_gen.labels import LAPA, SYNTH
from synthforge.cli import main as cli_main
from synthforge.data.toy import write_toy_dataset

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "stage1" / "tiny.yaml"


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("toy")
    shards = d / "train"
    shards.mkdir()
    write_toy_dataset(shards / "shard-00000-of-00002.h5", 8, 64, seed=0)
    write_toy_dataset(shards / "shard-00001-of-00002.h5", 8, 64, seed=1, incomplete=(3,))
    val = write_toy_dataset(d / "val.h5", 6, 64, seed=2)
    return {"train": shards, "val": val, "root": d}


def _train(args: list[str]) -> int:
    return cli_main(["train", "--config", str(TINY), *args])


def _metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained(toy_data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("run")
    code = _train(
        [
            f"--data.train={toy_data['train']}",
            f"--data.val={toy_data['val']}",
            f"--trainer.default_root_dir={root}",
            "--trainer.max_steps=4",
        ]
    )
    assert code == 0
    return root


def test_train_logs_metrics_checkpoints_and_png(trained: Path) -> None:
    run = trained / "lightning_logs" / "version_0"
    rows = _metrics(run)
    val = [r for r in rows if r.get("val/nme")]
    assert val, "no validation row"
    last = val[-1]
    for key in ("val/nme", "val/seg_f1_mean", "val/depth_rmse_mm", "val/seg_f1/face", "val/loss"):
        assert key in last and last[key] != "", key
        assert np.isfinite(float(last[key]))
    assert 0 <= float(last["val/seg_f1_mean"]) <= 1
    train_losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(train_losses) == 4 and all(np.isfinite(train_losses))
    assert (run / "checkpoints" / "last.ckpt").is_file()
    final = torch.load(run / "checkpoints" / "final.ckpt", map_location="cpu", weights_only=True)
    assert final["global_step"] == 4
    assert list((run / "predictions").glob("*.png"))
    assert (run / "config.yaml").is_file()


def test_resume_from_checkpoint(trained: Path, toy_data: dict[str, Path]) -> None:
    ckpt = trained / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["global_step"] == 4
    code = _train(
        [
            f"--data.train={toy_data['train']}",
            f"--data.val={toy_data['val']}",
            f"--trainer.default_root_dir={trained}",
            "--trainer.max_steps=6",
            f"--ckpt_path={ckpt}",
        ]
    )
    assert code == 0
    new = trained / "lightning_logs" / "version_1" / "checkpoints" / "last.ckpt"
    resumed = torch.load(new, map_location="cpu", weights_only=True)
    assert resumed["global_step"] == 6
    # the optimiser state continued (AdamW step counter counts all 6 steps, not 2)
    steps = [s["step"] for s in resumed["optimizer_states"][0]["state"].values()]
    assert float(steps[0]) == 6.0


def _adam_steps(ckpt: dict) -> float:
    return float(next(iter(ckpt["optimizer_states"][0]["state"].values()))["step"])


@pytest.mark.parametrize(("first", "total"), [(3, 5), (5, 7)], ids=["epoch-end", "mid-epoch"])
def test_end_of_run_checkpoints_agree_and_resume_from_last_matches_uninterrupted(
    first: int, total: int, toy_data: dict[str, Path], tmp_path: Path
) -> None:
    """An odd max_steps is not a multiple of the tiny config's every_n_train_steps=2: ModelCheckpoint alone would
    leave last.ckpt one step behind final.ckpt, and resuming from last.ckpt would redo that step. The training set
    has 3 batches per epoch: 3 steps end at an epoch's end, 5 in the middle of one."""
    data = [f"--data.train={toy_data['train']}", f"--data.val={toy_data['val']}"]
    assert _train([*data, f"--trainer.default_root_dir={tmp_path / 'a'}", f"--trainer.max_steps={first}"]) == 0
    ckpts = tmp_path / "a" / "lightning_logs" / "version_0" / "checkpoints"
    last = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=False)
    final = torch.load(ckpts / "final.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == final["global_step"] == first
    assert _adam_steps(last) == _adam_steps(final) == float(first)
    for key, value in final["state_dict"].items():
        torch.testing.assert_close(last["state_dict"][key], value, rtol=0, atol=0, msg=key)
    assert (ckpts / "step000002.ckpt").is_file()  # the scheduled saves are unchanged

    # resume from last.ckpt up to `total` steps == an uninterrupted run (same step counts, only the missing steps)
    resumed_dir = tmp_path / "a"
    argv = [*data, f"--trainer.default_root_dir={resumed_dir}", f"--trainer.max_steps={total}",
            f"--ckpt_path={ckpts / 'last.ckpt'}"]  # fmt: skip
    assert _train(argv) == 0
    assert _train([*data, f"--trainer.default_root_dir={tmp_path / 'b'}", f"--trainer.max_steps={total}"]) == 0
    resumed = resumed_dir / "lightning_logs" / "version_1"
    straight = tmp_path / "b" / "lightning_logs" / "version_0"
    for name in ("final.ckpt", "last.ckpt"):
        r = torch.load(resumed / "checkpoints" / name, map_location="cpu", weights_only=False)
        u = torch.load(straight / "checkpoints" / name, map_location="cpu", weights_only=False)
        assert r["global_step"] == u["global_step"] == total, name
        assert _adam_steps(r) == _adam_steps(u) == float(total), name
    steps = [[int(r["step"]) for r in _metrics(run) if r.get("train/loss")] for run in (resumed, straight)]
    # exactly the missing steps were trained, logged at the steps where the uninterrupted run logged them
    assert len(steps[1]) == total and steps[0] == steps[1][first:]


def test_finetune_end_of_run_checkpoints_agree_and_resume(trained: Path, tmp_path: Path) -> None:
    """Fine-tuning saves last.ckpt at validation (epoch ends); a run stopped mid-epoch by max_steps gets last.ckpt
    brought up to final.ckpt's step by FinalCheckpoint (configs/finetune/*), and resuming from it trains only the
    missing steps. The tiny 300W tree has 5 training faces: 3 batches of 2 per epoch."""
    from finetune_trees import make_w300

    root = make_w300(tmp_path / "w300")
    backbone = trained / "lightning_logs" / "version_0" / "checkpoints" / "final.ckpt"
    config = ROOT / "configs" / "finetune" / "tiny" / "w300.yaml"

    def finetune(max_steps: int, *extra: str) -> Path:
        run = tmp_path / "run"
        argv = ["finetune", "--config", str(config), "--data.root", str(root), "--data.resolution", "64",
                "--model.backbone", str(backbone), "--trainer.default_root_dir", str(run), "--trainer.max_epochs=5",
                f"--trainer.max_steps={max_steps}", *extra]  # fmt: skip
        assert cli_main(argv) == 0
        return sorted(run.glob("lightning_logs/version_*"))[-1] / "checkpoints"

    ckpts = finetune(5)
    last, final, best = (torch.load(ckpts / n, map_location="cpu", weights_only=False)
                         for n in ("last.ckpt", "final.ckpt", "best.ckpt"))  # fmt: skip
    assert best["global_step"] == 3  # the validation at the end of the first epoch
    assert last["global_step"] == final["global_step"] == 5
    resumed = finetune(6, "--ckpt_path", str(ckpts / "last.ckpt"))
    for name in ("last.ckpt", "final.ckpt"):
        assert torch.load(resumed / name, map_location="cpu", weights_only=False)["global_step"] == 6, name


def test_user_error_in_a_dataloader_worker_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A UserError raised in a DataLoader worker process reaches the user as its own message, not the worker's
    traceback that PyTorch wraps around it."""
    from torch.utils.data import DataLoader

    from next3d_gen.errors import UserError
    from synthforge.cli import user_message

    class Bad(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int) -> torch.Tensor:
            raise UserError(f"unreadable image file: {tmp_path / 'x.jpg'}")

    with pytest.raises(UserError) as info:
        next(iter(DataLoader(Bad(), num_workers=1)))
    wrapped = str(info.value)
    assert wrapped.startswith("Caught UserError in DataLoader worker process 0") and "Traceback" in wrapped
    assert user_message(info.value) == f"unreadable image file: {tmp_path / 'x.jpg'}"
    # anything else is left alone, including a worker's non-UserError re-raised as a UserError-looking text
    assert user_message(UserError("--data.root: no such folder: /x")) == "--data.root: no such folder: /x"
    other = UserError(
        "Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
        "last):\n  File ...\nnext3d_gen.errors.UserError: not this"
    )
    assert user_message(other) == str(other)


def test_worker_error_from_the_cli_is_one_line_without_traceback(trained: Path, tmp_path: Path) -> None:
    """Fresh process, one DataLoader worker: a training image that cannot be decoded (found only when a batch reads
    it) ends the run with exit status 2 and the reader's UserError as the last stderr line, with no worker
    traceback. (Lightning's start-of-fit banner lines come before it: the run had started.)"""
    from finetune_trees import make_w300

    root = make_w300(tmp_path / "w300")
    bad = sorted((root / "afw").glob("*.jpg"))[0]
    bad.write_bytes(b"not a jpeg")
    backbone = trained / "lightning_logs" / "version_0" / "checkpoints" / "final.ckpt"
    argv = ["finetune", "--config", str(ROOT / "configs" / "finetune" / "tiny" / "w300.yaml"), "--data.root",
            str(root), "--data.resolution", "64", "--data.num_workers", "1", "--model.backbone", str(backbone),
            "--trainer.default_root_dir", str(tmp_path / "run")]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "synthforge.cli", *argv], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300, stdin=subprocess.DEVNULL)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1] == f"synthforge finetune: error: unreadable image file: {bad}", proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "DataLoader worker" not in proc.stderr, proc.stderr[-3000:]


def test_inference_from_checkpoint_maps_back_to_input_pixels(trained: Path) -> None:
    from synthforge.inference import Predictor

    ckpt = trained / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    predictor = Predictor.from_checkpoint(ckpt)
    assert predictor.crop_size == 64 and predictor.label_space.num_classes == SYNTH.num_classes == 23
    img = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    [pred] = predictor.predict(img)
    assert pred.seg.shape == (50, 70) and pred.depth.shape == (50, 70) and pred.landmarks.shape == (68, 2)
    assert np.allclose(pred.seg_probs.sum(0), 1, atol=1e-4)
    # tensors and batches give the same answer as numpy
    [pred_t] = predictor.predict(torch.from_numpy(img).permute(2, 0, 1))
    assert np.allclose(pred_t.landmarks, pred.landmarks, atol=1e-4)


class _FakeNet(torch.nn.Module):
    """Base of the hand-written stand-in networks: one parameter, so that Predictor finds a device."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))


def test_inference_coordinate_mapping_with_a_fake_net() -> None:
    from synthforge.inference import Predictor
    from synthforge.models import TaskOutputs

    class Fake(_FakeNet):
        """Landmark 0 at the crop centre, landmark 1 at crop pixel (0, 0); seg = 1 on the crop's left half."""

        def forward(self, x: torch.Tensor) -> TaskOutputs:
            b, _, h, w = x.shape
            lm = torch.zeros(b, 68, 2)
            lm[:, 0] = (w - 1) / 2
            seg = torch.zeros(b, 3, h, w)
            seg[:, 1, :, : w // 2] = 10
            seg[:, 2, :, w // 2 :] = 10
            z = torch.zeros(b, 1, h, w)
            return TaskOutputs(seg, z, [], [lm], lm, z)

    p = Predictor(Fake(), crop_size=32)
    [a, b] = p.predict([np.zeros((40, 40, 3), np.uint8), np.zeros((20, 40, 3), np.uint8)])
    # square 40 px input, scale 40/32: crop centre 15.5 -> input centre 19.5; crop pixel 0 -> (0.5 * 1.25) - 0.5
    assert np.allclose(a.landmarks[0], [19.5, 19.5]) and np.allclose(a.landmarks[1], [0.125, 0.125])
    assert (a.seg[:, :20] == 1).all() and (a.seg[:, 20:] == 2).all()
    # 20 x 40 input is padded by 10 rows on top: the centre maps to the input centre (19.5, 9.5)
    assert np.allclose(b.landmarks[0], [19.5, 9.5]) and b.seg.shape == (20, 40)


def test_flip_test_averages_in_the_unmirrored_frame() -> None:
    """A fake net that finds a bright square and reports landmark i at (cx + 2 + i, cy), depth = the crop's x
    coordinate and the synthetic right-eye class on the crop's left half. Flip test, computed by hand: landmark j at
    cx + (2 + j - 2 - PERM[j]) / 2 = cx + (j - PERM[j]) / 2, depth (side - 1) / 2 everywhere, the same classes."""
    from next3d_gen.labels import LANDMARK_FLIP_PERMUTATION
    from synthforge.inference import Predictor
    from synthforge.models import TaskOutputs

    class Fake(_FakeNet):
        def forward(self, x: torch.Tensor) -> TaskOutputs:
            b, _, h, w = x.shape
            bright = x.mean(1)  # (B, H, W)
            xs = torch.arange(w, dtype=torch.float32)
            ys = torch.arange(h, dtype=torch.float32)
            mass = bright.sum((1, 2))
            cx = (bright.sum(1) * xs).sum(1) / mass
            cy = (bright.sum(2) * ys).sum(1) / mass
            lm = torch.stack([cx[:, None] + 2 + torch.arange(68.0), cy[:, None].expand(b, 68)], -1)
            seg = torch.zeros(b, len(SYNTH.classes), h, w)
            seg[:, SYNTH.id("right_eye_region"), :, : w // 2] = 10
            seg[:, SYNTH.id("left_eye_region"), :, w // 2 :] = 10
            depth = xs.expand(b, 1, h, w).clone()
            return TaskOutputs(seg, depth, [], [lm], lm, depth)

    img = np.zeros((32, 32, 3), np.uint8)
    img[10:14, 5:9] = 255  # centroid (6.5, 11.5)
    [plain] = Predictor(Fake(), crop_size=32).predict(img)
    [flip] = Predictor(Fake(), crop_size=32, flip=True).predict(img)
    j = np.arange(68)
    assert np.allclose(plain.landmarks[:, 0], 6.5 + 2 + j, atol=1e-3)
    assert np.allclose(flip.landmarks[:, 0], 6.5 + (j - np.asarray(LANDMARK_FLIP_PERMUTATION)) / 2, atol=1e-3)
    assert np.allclose(flip.landmarks[:, 1], 11.5, atol=1e-3)
    assert np.allclose(flip.depth, 15.5, atol=1e-4) and not np.allclose(plain.depth, 15.5)
    assert (flip.seg == plain.seg).all() and (flip.seg[:, :16] == SYNTH.id("right_eye_region")).all()


def test_glasses_gate_drops_specks_per_crop_and_keeps_glasses() -> None:
    """A fake net: ``face`` everywhere (logit 5) and eyeglasses (logit 10) on the first n pixels of row 3 of crop i,
    n = (4, 40)[i] on a 32 x 32 crop, i.e. 0.4 % and 3.9 % of it. The default gate (0.75 %) drops the first crop's
    glasses (probability 0, ``face`` there) and keeps the second's; min_share={} keeps both; a stage-II label space
    without eyeglasses gets no gate."""
    from synthforge.inference import GLASSES_MIN_SHARE, Predictor, default_min_share
    from synthforge.models import TaskOutputs

    g, face = SYNTH.id("eyeglasses"), SYNTH.id("face")

    class Fake(_FakeNet):
        def forward(self, x: torch.Tensor) -> TaskOutputs:
            b, _, h, w = x.shape
            seg = torch.zeros(b, len(SYNTH.classes), h, w)
            seg[:, face] = 5
            for i in range(b):
                n = round(float(x[i, 0, 0, 0]) * 255)  # the pixel count is written into the image
                seg[i, g].view(-1)[3 * w : 3 * w + n] = 10
            z = torch.zeros(b, 1, h, w)
            lm = torch.zeros(b, 68, 2)
            return TaskOutputs(seg, z, [], [lm], lm, z)

    images = [np.full((32, 32, 3), n, np.uint8) for n in (4, 40)]
    assert GLASSES_MIN_SHARE == 0.0075 and 4 / 1024 < GLASSES_MIN_SHARE < 40 / 1024
    speck, glasses = Predictor(Fake(), crop_size=32).predict(images)
    assert not (speck.seg == g).any() and (speck.seg == face).all() and speck.seg_probs[g].max() == 0
    np.testing.assert_allclose(speck.seg_probs.sum(0), 1, atol=1e-5)
    assert (glasses.seg == g).sum() == 40 and (glasses.seg.reshape(-1)[96:136] == g).all()
    ungated = Predictor(Fake(), crop_size=32, min_share={}).predict(images)
    assert [int((p.seg == g).sum()) for p in ungated] == [4, 40]
    assert default_min_share(LAPA) == {} and default_min_share(SYNTH) == {"eyeglasses": GLASSES_MIN_SHARE}
    with pytest.raises(ValueError, match="no class 'eyeglasses'"):
        Predictor(Fake(), crop_size=32, label_space=LAPA, min_share={"eyeglasses": 0.01})


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--data.train=/nonexistent/data.h5"], "/nonexistent/data.h5"),
        (["--model.bogus_option=1"], "bogus_option"),
        (["--data.crop_size=60"], "crop_size"),
        (["--data.batch_size=0"], "--data.batch_size must be a positive integer, got 0"),
        (["--data.batch_size=-4"], "--data.batch_size must be a positive integer, got -4"),
        (["--data.val_batch_size=0"], "--data.val_batch_size"),
        (["--data.num_workers=-1"], "--data.num_workers must be an integer >= 0, got -1"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    extra: list[str], needle: str, toy_data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = [f"--data.train={toy_data['train']}", f"--trainer.default_root_dir={tmp_path}", *extra]
    assert _train(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_corrupt_file_and_unknown_yaml_key_exit_2(toy_data: dict[str, Path], tmp_path: Path, capsys) -> None:  # noqa: ANN001
    bad = tmp_path / "broken.h5"
    bad.write_bytes(b"this is not an HDF5 file" * 10)
    assert _train([f"--data.train={bad}", f"--trainer.default_root_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.h5" in err[0], err
    cfg = tmp_path / "extra.yaml"
    cfg.write_text("data:\n  not_a_key: 3\n")
    assert _train([f"--data.train={toy_data['train']}", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not_a_key" in err[0], err


@pytest.mark.slow
def test_ddp_two_cpu_processes(toy_data: dict[str, Path], tmp_path: Path) -> None:
    ddp = tmp_path / "ddp.yaml"
    ddp.write_text(
        "trainer:\n"
        "  accelerator: cpu\n"
        "  devices: 2\n"
        "  strategy:\n"
        "    class_path: lightning.pytorch.strategies.DDPStrategy\n"
        "    init_args: {process_group_backend: gloo}\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [
        sys.executable, "-m", "synthforge.cli", "train", "--config", str(TINY), "--config", str(ddp),
        f"--data.train={toy_data['train']}", f"--data.val={toy_data['val']}",
        f"--trainer.default_root_dir={tmp_path / 'run'}", "--trainer.max_steps=2",
        "--trainer.max_time=00:00:30:00",  # the time-following schedule broadcasts rank 0's clock
    ]  # fmt: skip
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "run" / "lightning_logs" / "version_0"
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 2
    assert "world_size=2" in res.stderr or "distributed_backend=gloo" in res.stderr
    rows = _metrics(run)
    assert any(r.get("val/nme") for r in rows)


def test_evaluate_synthetic_reports_model_and_baselines(trained: Path, toy_data: dict[str, Path], tmp_path) -> None:  # noqa: ANN001
    from synthforge.evaluation import evaluate_synthetic

    ckpt = trained / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    png = tmp_path / "report.png"
    res = evaluate_synthetic(ckpt, toy_data["val"], batch_size=4, png_path=png)
    assert res["num_samples"] == 6 and png.is_file()
    for key in (
        "nme",
        "seg_f1_mean",
        "depth_rmse_mm",
        "baseline_nme",
        "baseline_seg_f1_mean",
        "baseline_depth_rmse_mm",
    ):
        assert np.isfinite(res[key]), key
    # the majority-class baseline predicts background and face at least: both get an F1 > 0
    assert 0 < res["baseline_seg_f1_mean"] <= 1 and res["baseline_nme"] > 0 and res["baseline_depth_rmse_mm"] > 0


@pytest.mark.parametrize("by_time", [True, False])
def test_cosine_schedule_follows_the_closer_of_max_steps_and_max_time(by_time: bool) -> None:
    import lightning.pytorch as pl

    from synthforge.system import MultiTaskSystem

    system = MultiTaskSystem(torch.nn.Linear(2, 2), lr=1.0, lr_floor=0.1, schedule_steps=100, schedule_by_time=by_time)
    system.trainer = pl.Trainer(max_time={"seconds": 100}, accelerator="cpu", logger=False, enable_checkpointing=False)
    factor = system.configure_optimizers()["lr_scheduler"]["scheduler"].lr_lambdas[0]

    def cosine(t: float) -> float:
        return 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * t))

    timer = next(cb for cb in system.trainer.callbacks if isinstance(cb, pl.callbacks.Timer))
    assert factor(10) == pytest.approx(cosine(0.1))  # no time used yet: the step fraction leads
    timer.load_state_dict({"time_elapsed": {"train": 50.0}})  # half of max_time used (as after a resume)
    system.on_train_batch_start({}, 0)  # where the system reads the clock (rank 0's under DDP)
    assert factor(10) == pytest.approx(cosine(0.5) if by_time else cosine(0.1))
    assert factor(80) == pytest.approx(cosine(0.8))  # the step fraction leads again
    timer.load_state_dict({"time_elapsed": {"train": 100.0}})
    system.on_train_batch_start({}, 0)
    assert factor(10) == pytest.approx(0.1 if by_time else cosine(0.1))


def test_bf16_mixed_precision_trains_on_cpu(toy_data: dict[str, Path], tmp_path: Path) -> None:
    # the demo's and paper.yaml's precision; emulated (slow) where the CPU lacks native bf16, but it must work
    args = [
        f"--data.train={toy_data['train']}",
        f"--data.val={toy_data['val']}",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.max_steps=3",
        "--trainer.precision=bf16-mixed",
    ]
    assert _train(args) == 0
    rows = _metrics(tmp_path / "lightning_logs" / "version_0")
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 3 and all(np.isfinite(losses))
    val = [r for r in rows if r.get("val/depth_rmse_mm")]
    assert val and np.isfinite(float(val[-1]["val/depth_rmse_mm"]))
    final = torch.load(
        tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "final.ckpt", map_location="cpu", weights_only=True
    )
    assert all(v.dtype != torch.bfloat16 for v in final["state_dict"].values())  # weights stay float32
