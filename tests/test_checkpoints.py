"""Safe checkpoint loading (synthforge.checkpoints) through the Python API: nothing in a checkpoint runs, damaged /
unsafe / wrong-kind files raise a UserError naming the file, and safely loaded models equal Lightning's own loader's.

The command-line cases (fresh processes) are rows of tests/test_bad_input_battery.py, section ``checkpoints``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from finetune_trees import make_w300
from test_bad_input_battery import MARKER, TINY, W300_TINY, add_payload

from label_finetune.system import FinetuneSystem, load_stage1
from next3d_gen.errors import UserError
from synthforge.checkpoints import FINETUNE, STAGE1, build_finetune_system, checkpoint_kind, load_checkpoint
from synthforge.cli import main as cli_main
from synthforge.data.toy import write_toy_dataset
from synthforge.evaluation import evaluate_synthetic
from synthforge.inference import Predictor
from synthforge.system import MultiTaskSystem


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real checkpoints (2 steps of ``synthforge train``, 1 step of ``synthforge finetune``) and damaged copies."""
    root = tmp_path_factory.mktemp("ckpts")
    train = write_toy_dataset(root / "train.h5", 8, 64, seed=0)
    val = write_toy_dataset(root / "val.h5", 4, 64, seed=1)
    assert cli_main(["train", "--config", str(TINY), f"--data.train={train}", f"--data.val={val}",
                     f"--trainer.default_root_dir={root / 's1'}", "--trainer.max_steps=2"]) == 0  # fmt: skip
    stage1 = root / "s1" / "lightning_logs" / "version_0" / "checkpoints" / "final.ckpt"
    w300 = make_w300(root / "w300")
    assert (
        cli_main(
            [
                "finetune",
                "--config",
                str(W300_TINY),
                "--data.root",
                str(w300),
                "--model.backbone",
                str(stage1),
                "--trainer.default_root_dir",
                str(root / "ft"),
                "--trainer.max_steps=1",
            ]
        )
        == 0
    )
    finetune = root / "ft" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    data = stage1.read_bytes()
    (root / "truncated.ckpt").write_bytes(data[: len(data) - 200])
    (root / "random.ckpt").write_bytes(os.urandom(2048))
    (root / "empty.ckpt").write_bytes(b"")
    torch.save([torch.zeros(2)], root / "list.ckpt")
    return {
        "stage1": stage1, "finetune": finetune, "val": val, "w300": w300,
        "evil_stage1": add_payload(stage1, root / "evil_stage1.ckpt"),
        "evil_finetune": add_payload(finetune, root / "evil_finetune.ckpt"),
        "truncated": root / "truncated.ckpt", "random": root / "random.ckpt", "empty": root / "empty.ckpt",
        "list": root / "list.ckpt",
    }  # fmt: skip


API: dict[str, Callable[[Path, dict[str, Path]], object]] = {
    "Predictor.from_checkpoint": lambda p, f: Predictor.from_checkpoint(p),
    "evaluate_synthetic": lambda p, f: evaluate_synthetic(p, f["val"]),
    "load_stage1": lambda p, f: load_stage1(p),
}


def test_fixture_payload_is_live(files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The malicious checkpoints below do run code when loaded without restrictions (so the tests can fail)."""
    monkeypatch.chdir(tmp_path)
    torch.load(files["evil_stage1"], map_location="cpu", weights_only=False)
    assert (tmp_path / MARKER).exists()


@pytest.mark.parametrize("api", list(API))
def test_api_refuses_malicious_stage1(
    api: str, files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as err:
        API[api](files["evil_stage1"], files)
    msg = str(err.value)
    assert str(files["evil_stage1"]) in msg and "refused" in msg and "\n" not in msg
    assert not (tmp_path / MARKER).exists(), "the checkpoint's payload ran"


def test_malicious_finetune_checkpoint_refused(
    files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="refused"):
        load_checkpoint(files["evil_finetune"], "--ckpt", expect=FINETUNE)
    assert not (tmp_path / MARKER).exists()


@pytest.mark.parametrize("api", [a for a in API if a != "Predictor.from_checkpoint"])  # it takes both kinds
def test_api_names_a_finetuned_checkpoint(api: str, files: dict[str, Path]) -> None:
    """Stage-I-only APIs given a fine-tuned checkpoint say what the file is (tests/test_predict_stage2.py: the
    predictor of a fine-tuned checkpoint)."""
    with pytest.raises(UserError) as err:
        API[api](files["finetune"], files)
    msg = str(err.value)
    assert str(files["finetune"]) in msg and "this is a fine-tuned checkpoint" in msg and "stage-I" in msg


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("random", "not a PyTorch checkpoint"),
        ("truncated", "not a PyTorch checkpoint or damaged/truncated"),
        ("empty", "not a PyTorch checkpoint"),
        ("list", "no state_dict"),
        ("evil_stage1", "holds pickled objects that would run code"),
        ("finetune", "this is a fine-tuned checkpoint"),
    ],
)
def test_load_checkpoint_kinds_of_failure(files: dict[str, Path], name: str, expected: str) -> None:
    with pytest.raises(UserError) as err:
        load_checkpoint(files[name], "--opt", expect=STAGE1)
    msg = str(err.value)
    assert msg.startswith(f"--opt: {files[name]}: ") and expected in msg and "\n" not in msg


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--ckpt: .*missing.ckpt: no such checkpoint file"):
        load_checkpoint(tmp_path / "missing.ckpt", "--ckpt")
    with pytest.raises(UserError, match="no such checkpoint file"):
        load_checkpoint(tmp_path, "--ckpt")  # a folder


def test_kinds_detected(files: dict[str, Path]) -> None:
    assert checkpoint_kind(load_checkpoint(files["stage1"])) == STAGE1
    assert checkpoint_kind(load_checkpoint(files["finetune"])) == FINETUNE


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda hp: hp["net"].__setitem__("class_path", "antigravity.Sky"), "class_path 'antigravity.Sky'"),
        (lambda hp: hp["net"]["init_args"]["trunk"].__setitem__("class_path", "os.Popen"), "class_path 'os.Popen'"),
        (lambda hp: hp.__setitem__("_instantiator", "os.system"), "_instantiator 'os.system'"),
    ],
    ids=["net", "nested", "instantiator"],
)
def test_config_may_not_name_foreign_code(
    files: dict[str, Path], tmp_path: Path, edit: Callable[[dict], None], expected: str
) -> None:
    """Plain-data hyper-parameters that would make the network builder import / call other modules are refused."""
    ckpt = torch.load(files["stage1"], map_location="cpu", weights_only=True)
    edit(ckpt["hyper_parameters"])
    bad = tmp_path / "bad.ckpt"
    torch.save(ckpt, bad)
    for call in (lambda: load_stage1(bad), lambda: Predictor.from_checkpoint(bad)):
        with pytest.raises(UserError) as err:
            call()
        assert str(bad) in str(err.value) and expected in str(err.value) and "refused" in str(err.value)
    assert "antigravity" not in sys.modules


@torch.no_grad()
def test_safe_loaders_match_lightning(files: dict[str, Path]) -> None:
    """The safely rebuilt systems equal Lightning's own ``load_from_checkpoint`` (weights_only=True) on one input."""
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ref = MultiTaskSystem.load_from_checkpoint(files["stage1"], map_location="cpu", weights_only=True).eval()
    predictor = Predictor.from_checkpoint(files["stage1"])
    net, config = load_stage1(files["stage1"])
    assert predictor.crop_size == ref.crop_size == config["_crop_size"] == 64
    assert predictor.label_space == ref.label_space
    expected = ref.net(x)
    for got in (predictor.net(x), net.eval()(x)):
        for key in ("seg", "depth", "landmarks"):
            torch.testing.assert_close(getattr(got, key), getattr(expected, key), rtol=0, atol=0)

    ref_ft = FinetuneSystem.load_from_checkpoint(files["finetune"], map_location="cpu", weights_only=True).eval()
    ft = build_finetune_system(load_checkpoint(files["finetune"], expect=FINETUNE), files["finetune"])
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    a, b = ft(x), ref_ft(x)
    assert a.keys() == b.keys() and a
    for key in a:
        if isinstance(a[key], torch.Tensor):
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_encoder_weights_file_read_safely(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``encoder_weights_path``: a real state_dict is loaded; a code-running one is refused and nothing runs."""
    from synthforge.models.trunk import UNetTrunk

    kw = {"encoder_name": "resnet18", "encoder_depth": 3, "decoder_channels": (16, 8, 8), "out_channels": 8}
    torch.manual_seed(0)
    state = UNetTrunk(**kw).unet.encoder.state_dict()
    good = tmp_path / "enc.pt"
    torch.save(state, good)
    trunk = UNetTrunk(**kw, encoder_weights_path=str(good))
    torch.testing.assert_close(trunk.unet.encoder.conv1.weight, state["conv1.weight"], rtol=0, atol=0)
    evil = add_payload(good, tmp_path / "evil_enc.pt")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=f"encoder_weights_path: {evil}: refused"):
        UNetTrunk(**kw, encoder_weights_path=str(evil))
    assert not (tmp_path / MARKER).exists()


@pytest.mark.parametrize(
    "meta",
    [{"label_space": "{not json", "crop_size": 64}, {"label_space": 3}, {"crop_size": -1}, [1, 2]],
    ids=["bad-json", "not-str", "bad-crop", "not-dict"],
)
def test_damaged_metadata(files: dict[str, Path], tmp_path: Path, meta: object) -> None:
    ckpt = torch.load(files["stage1"], map_location="cpu", weights_only=True)
    ckpt["synthforge"] = meta
    bad = tmp_path / "bad_meta.ckpt"
    torch.save(ckpt, bad)
    with pytest.raises(UserError, match=f"--ckpt_path: {bad}: damaged checkpoint metadata"):
        load_checkpoint(bad, "--ckpt_path", expect=STAGE1)


def test_finetune_resume_reads_safely(files: dict[str, Path], tmp_path: Path) -> None:
    """``finetune --ckpt_path`` (pre-checked, then Trainer.fit(weights_only=True)) continues from the saved step."""
    run = tmp_path / "resumed"
    assert cli_main(["finetune", "--config", str(W300_TINY), "--data.root", str(files["w300"]), "--model.backbone",
                     str(files["stage1"]), "--ckpt_path", str(files["finetune"]), "--trainer.default_root_dir",
                     str(run), "--trainer.max_steps=2", "--trainer.max_epochs=5"]) == 0  # fmt: skip
    last = load_checkpoint(run / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt", expect=FINETUNE)
    assert load_checkpoint(files["finetune"])["global_step"] == 1 and last["global_step"] == 2
