"""``synthforge export``: ONNX (run in onnxruntime) and TorchScript (``torch.jit.load``) files of a stage-I network
trained 2 steps here, and of a LaPa fine-tuned network (stage I + adapters as one graph), against the PyTorch
network on random inputs of batch 1 and 2; the metadata inside the files; bad inputs.

Every exported file is read back with the formats' own APIs (``onnx`` / ``onnxruntime``, ``torch.jit.load`` with
``_extra_files``), not with the helpers of :mod:`synthforge.export` under test.
"""

from __future__ import annotations

import json
import os
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch

from next3d_gen.labels import LAPA, SYNTH
from synthforge import export as ex
from synthforge.cli import main as cli_main
from synthforge.data.toy import write_toy_dataset

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "stage1" / "tiny.yaml"
LAPA_TINY = ROOT / "configs" / "finetune" / "tiny" / "lapa.yaml"
ATOL = 1e-4  # fp32


@pytest.fixture(scope="module")
def stage1_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real stage-I checkpoint: ``synthforge train`` on the tiny config (64 px crops), 2 steps."""
    d = tmp_path_factory.mktemp("export_stage1")
    train = write_toy_dataset(d / "train.h5", 8, 64, seed=0)
    val = write_toy_dataset(d / "val.h5", 4, 64, seed=1)
    code = cli_main(["train", "--config", str(TINY), f"--data.train={train}", f"--data.val={val}",
                     f"--trainer.default_root_dir={d / 'run'}", "--trainer.max_steps=2"])  # fmt: skip
    assert code == 0
    return d / "run" / "lightning_logs" / "version_0" / "checkpoints" / "final.ckpt"


@pytest.fixture(scope="module")
def lapa_ckpt(stage1_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real fine-tuned checkpoint: ``synthforge finetune`` on a tiny LaPa tree (seg + 106 landmarks, w/ F), 1 step."""
    from finetune_trees import make_lapa

    d = tmp_path_factory.mktemp("export_lapa")
    root = make_lapa(d / "lapa")
    code = cli_main(["finetune", "--config", str(LAPA_TINY), "--data.root", str(root), "--model.backbone",
                     str(stage1_ckpt), "--trainer.default_root_dir", str(d / "run"), "--trainer.max_steps=1",
                     "--model.tasks", "[seg, landmarks]", "--model.with_features", "true",
                     "--data.with_landmarks", "true", "--data.crop.flip_prob", "0"])  # fmt: skip
    assert code == 0
    [ckpt] = sorted((d / "run").rglob("last.ckpt"))
    return ckpt


def _random_images(batch: int, size: int, seed: int) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _run_file(path: Path, fmt: str, image: torch.Tensor) -> tuple[list[str], list[np.ndarray]]:
    """Output names and arrays of an exported file, run with the format's own runtime."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=ort.get_available_providers())
        assert [i.name for i in session.get_inputs()] == ["image"]
        names = [o.name for o in session.get_outputs()]
        return names, session.run(None, {"image": image.numpy()})
    module = torch.jit.load(str(path))
    with torch.no_grad():
        outs = module(image)
    assert isinstance(outs, tuple)
    meta = _file_metadata(path, fmt)
    return meta["output_names"], [o.numpy() for o in outs]


def _file_metadata(path: Path, fmt: str) -> dict:
    if fmt == "onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        return json.loads(props["synthforge"])
    files = {"synthforge.json": ""}
    torch.jit.load(str(path), _extra_files=files)
    return json.loads(files["synthforge.json"])


def _export(ckpt: Path, fmt: str, out: Path, *extra: str) -> int:
    return cli_main(["export", "--ckpt", str(ckpt), "--format", fmt, "--out", str(out), *extra])


def _compare(path: Path, fmt: str, wrapper: ex.ExportWrapper, size: int) -> float:
    worst = 0.0
    for batch, seed in ((1, 10), (2, 11)):
        image = _random_images(batch, size, seed)
        with torch.no_grad():
            reference = wrapper(image)
        names, outs = _run_file(path, fmt, image)
        assert names == list(wrapper.output_names)
        for name, ref, got in zip(names, reference, outs, strict=True):
            assert got.shape == tuple(ref.shape), name
            diff = float(np.abs(ref.numpy() - got).max())
            print(f"{fmt} batch {batch} {name}: max abs difference {diff:.3g}")
            assert diff < ATOL, (fmt, batch, name, diff)
            worst = max(worst, diff)
    return worst


def test_wrapper_returns_the_network_outputs_in_the_documented_order(stage1_ckpt: Path) -> None:
    from synthforge.inference import Predictor

    source = ex.load_export_source(stage1_ckpt)
    assert (source.kind, source.crop_size, source.crop.scale, source.crop.box) == ("stage1", 64, 1.6, "landmarks")
    wrapper = ex.build_wrapper(source, 64)
    assert wrapper.output_names == ("seg_logits", "depth", "landmarks")
    image = _random_images(2, 64, 0)
    net = Predictor.from_checkpoint(stage1_ckpt).net  # the library's own loader: an independent path to the weights
    with torch.no_grad():
        seg, depth, landmarks = wrapper(image)
        out = net(image)
    torch.testing.assert_close(seg, out.seg, rtol=0, atol=0)
    torch.testing.assert_close(depth, out.depth, rtol=0, atol=0)
    torch.testing.assert_close(landmarks, out.landmarks, rtol=0, atol=0)
    assert seg.shape == (2, SYNTH.num_classes, 64, 64)
    assert depth.shape == (2, 1, 64, 64) and landmarks.shape == (2, 68, 2)
    assert all(t.dtype == torch.float32 and t.is_contiguous() for t in (seg, depth, landmarks))


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_pytorch_and_documents_itself(
    fmt: str, stage1_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sub" / f"face.{fmt}"
    assert _export(stage1_ckpt, fmt, out) == 0
    printed = capsys.readouterr().out
    assert "seg_logits" in printed and "(1, 68, 2)" in printed and "max |PyTorch" in printed
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not the temporary file's private mode

    wrapper = ex.build_wrapper(ex.load_export_source(stage1_ckpt), 64)
    worst = _compare(out, fmt, wrapper, 64)
    print(f"{fmt}: worst max abs difference over batch 1 and 2: {worst:.3g}")

    meta = _file_metadata(out, fmt)
    assert meta == ex.read_metadata(out, fmt)
    assert meta["checkpoint_kind"] == "stage1" and meta["checkpoint"] == "final.ckpt" and meta["format"] == fmt
    assert meta["package_version"] == version("synthforge")
    assert meta["output_names"] == ["seg_logits", "depth", "landmarks"]
    c = SYNTH.num_classes
    assert [o["shape"] for o in meta["outputs"]] == [["batch", c, 64, 64], ["batch", 1, 64, 64], ["batch", 68, 2]]
    assert meta["input"]["shape"] == ["batch", 3, 64, 64]
    assert (meta["input"]["layout"], meta["input"]["channels"], meta["input"]["range"]) == ("NCHW", "RGB", [0, 1])
    assert meta["input"]["network_normalization"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert meta["crop_size"] == meta["train_crop_size"] == 64
    assert meta["crop"]["scale"] == 1.6 and meta["crop"]["box"] == "landmarks"
    assert meta["label_space"]["classes"] == list(SYNTH.classes) and meta["num_landmarks"] == 68
    assert meta["whole_face_classes"]["min_share"] == {"eyeglasses": 0.0075}  # what synthforge predict gates
    if fmt == "onnx":
        import onnx

        model = onnx.load(str(out))
        onnx.checker.check_model(model)
        assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
        batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
        assert batch_dim.dim_param and not batch_dim.dim_value  # dynamic batch axis
        assert not list(out.parent.glob("*.data"))  # weights inside the one file


def test_torchscript_at_another_image_size(stage1_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "face96.pt"
    assert _export(stage1_ckpt, "torchscript", out, "--image-size", "96") == 0
    wrapper = ex.build_wrapper(ex.load_export_source(stage1_ckpt), 96)
    _compare(out, "torchscript", wrapper, 96)
    meta = _file_metadata(out, "torchscript")
    assert (meta["crop_size"], meta["train_crop_size"]) == (96, 64)
    assert meta["outputs"][0]["shape"] == ["batch", SYNTH.num_classes, 96, 96]


@pytest.mark.slow  # a fine-tuning run (1 step) on top of the stage-I one
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_finetuned_network_exports_as_one_graph(fmt: str, lapa_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / f"lapa.{fmt}"
    assert _export(lapa_ckpt, fmt, out) == 0
    source = ex.load_export_source(lapa_ckpt)
    assert (source.kind, source.dataset, source.crop_size) == ("finetune", "lapa", 32)
    wrapper = ex.build_wrapper(source, 32)
    assert wrapper.output_names == ("seg_logits", "landmarks")
    image = _random_images(2, 32, 3)
    with torch.no_grad():
        seg, landmarks = wrapper(image)
        out_dict = source.net(image)  # FinetuneSystem.forward: the dict the wrapper reads
    torch.testing.assert_close(seg, out_dict["seg"], rtol=0, atol=0)
    torch.testing.assert_close(landmarks, out_dict["landmarks"], rtol=0, atol=0)
    _compare(out, fmt, wrapper, 32)
    meta = _file_metadata(out, fmt)
    assert meta["checkpoint_kind"] == "finetune" and meta["dataset"] == "lapa"
    assert meta["label_space"]["classes"] == list(LAPA.classes) and meta["num_landmarks"] == 106
    assert meta["whole_face_classes"]["min_share"] == {}
    assert meta["crop"] == {**meta["crop"], "scale": 1.2, "box": "label"}
    assert [o["shape"] for o in meta["outputs"]] == [["batch", LAPA.num_classes, 32, 32], ["batch", 106, 2]]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_normal_and_uv_heads_are_exported_after_the_others(fmt: str, tmp_path: Path) -> None:
    """A network with normal and UV heads (none of the shipped tiny configs has them): built here, untrained."""
    from synthforge.models import DenseHead, HourglassLandmarkHead, MultiTaskNet, UNetTrunk

    torch.manual_seed(0)
    net = MultiTaskNet(
        UNetTrunk("resnet18", 3, (16, 8, 8), 8),
        DenseHead(8, 5, 8, 1),
        DenseHead(8, 1, 8, 1, output_scale=0.1),
        HourglassLandmarkHead(8, 68, 16, 1, 2),
        normal_head=DenseHead(8, 3, 8, 1, activation="normalize"),
        uv_head=DenseHead(8, 2, 8, 1, activation="tanh"),
    ).eval()
    source = ex.ExportSource(net, "stage1", 32, net.size_divisor, None, None, None, "made-here.ckpt")
    wrapper = ex.build_wrapper(source, 32)
    assert wrapper.output_names == ("seg_logits", "depth", "landmarks", "normal", "uv")
    image = _random_images(2, 32, 5)
    with torch.no_grad():
        named = dict(zip(wrapper.output_names, wrapper(image), strict=True))
        out = net(image)
    torch.testing.assert_close(named["normal"], out.normal, rtol=0, atol=0)
    torch.testing.assert_close(named["uv"], out.uv, rtol=0, atol=0)
    path = tmp_path / f"net.{fmt}"
    ex.EXPORTERS[fmt](wrapper, 32, path, ex.export_metadata(source, wrapper, 32, fmt))
    _compare(path, fmt, wrapper, 32)
    meta = _file_metadata(path, fmt)
    assert [o["shape"] for o in meta["outputs"]][3:] == [["batch", 3, 32, 32], ["batch", 2, 32, 32]]
    assert meta["label_space"] is None and meta["crop"]["scale"] is None


def test_failed_self_check_writes_nothing(
    stage1_ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = ex.run_exported

    def off_by_a_little(path: Path, fmt: str, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = real(path, fmt, image)
        return (outs[0] + 1e-2, *outs[1:])

    monkeypatch.setattr(ex, "run_exported", off_by_a_little)
    out = tmp_path / "face.pt"
    assert _export(stage1_ckpt, "torchscript", out) == 1
    assert "differs from PyTorch" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--ckpt", "{tmp}/missing.ckpt", "--format", "onnx"], "--ckpt"),
        (["--ckpt", "{ckpt}", "--format", "tflite"], "--format"),
        (["--ckpt", "{ckpt}", "--format", "onnx", "--image-size", "50"], "--image-size"),
        (["--ckpt", "{ckpt}", "--format", "torchscript", "--image-size", "0"], "--image-size"),
        (["--ckpt", "{ckpt}", "--format", "torchscript", "--image-size", "-16"], "--image-size"),
        (["--ckpt", "{ckpt}", "--format", "torchscript", "--image-size", "big"], "--image-size"),
        (["--ckpt", "{tmp}/random.ckpt", "--format", "torchscript"], "--ckpt"),
    ],
    ids=["missing-ckpt", "bad-format", "not-a-multiple", "zero", "negative", "not-a-number", "random-bytes"],
)
def test_bad_input_is_one_line_and_exit_2(
    args: list[str], needle: str, stage1_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "random.ckpt").write_bytes(np.random.default_rng(0).bytes(4096))
    argv = [a.format(tmp=tmp_path, ckpt=stage1_ckpt) for a in args]
    out = tmp_path / "out" / "model.file"
    assert cli_main(["export", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not out.parent.exists()  # nothing created, not even the folder
