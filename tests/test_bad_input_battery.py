"""Every CLI command in a fresh interpreter against a table of bad inputs.

Each row of :data:`CASES` runs ``python -m synthforge.cli ARGV`` in a new process (as a user runs it: no log handlers
or warning filters shared with earlier tests) and asserts:

* exit status 2;
* exactly one line on stderr, which names the offending file or option (``needle``);
* nothing written where the command would have written its output (``no_output``), and no partially written file left
  looking complete;
* for the malicious-checkpoint rows: the payload did not run (its marker file does not exist).

Arguments are format strings: ``{name}`` is replaced by the path of the fixture :class:`Assets` builds under that
name (built lazily, once per session, only when a row uses it) or by ``{tmp}``, the case's own empty folder.
A new case is one row.
"""

from __future__ import annotations

import functools
import os
import string
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from synthforge.cli import main as cli_main
from synthforge.data.toy import write_toy_dataset

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "stage1" / "tiny.yaml"
W300_TINY = ROOT / "configs" / "finetune" / "tiny" / "w300.yaml"
GEN_ARGS = (
    "--config",
    str(ROOT / "configs" / "generate" / "tiny.yaml"),
    "--num",
    "4",
    "--image-size",
    "48",
    "--workers",
    "1",
    "--no-progress",
)
"""``synthforge generate`` arguments of the HDF5 rows (the shipped tiny config; the same as ``gen_shard``'s)."""
MARKER = "payload-ran"
"""File the malicious checkpoints' payload would create in the case folder, were it run."""


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    """Arguments after ``synthforge``; ``{name}`` placeholders are filled from :class:`Assets` and ``{tmp}``."""
    needle: str
    """Must appear in the one stderr line (the offending file or option); placeholders allowed."""
    no_output: tuple[str, ...] = ()
    """Paths that must not exist afterwards (placeholders allowed)."""
    payload: bool = False
    """A malicious-checkpoint case: the payload's marker file must not exist afterwards."""


class _Payload:
    """Pickled into a checkpoint: unpickling it without restrictions runs ``touch MARKER`` in the current folder."""

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {MARKER}",))


def add_payload(src: Path, dst: Path) -> Path:
    """An otherwise valid checkpoint with a code-running object added to its top-level dict."""
    ckpt = torch.load(src, map_location="cpu", weights_only=False)  # our own file, written by the test
    ckpt["extra"] = _Payload()
    torch.save(ckpt, dst)
    return dst


class Assets:
    """Inputs the rows refer to by name, built on first use (one instance per test session)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, name: str) -> Path:
        builder = getattr(self, f"_build_{name}", None)
        if builder is None:
            raise KeyError(f"no asset named {name!r}")
        return self._cached(name)

    @functools.cache  # noqa: B019 - one Assets per session
    def _cached(self, name: str) -> Path:
        return getattr(self, f"_build_{name}")()

    # --- shared -------------------------------------------------------------------------------------------------
    def _build_toy_train(self) -> Path:
        return write_toy_dataset(self.root / "toy_train.h5", 8, 64, seed=0)

    def _build_toy_val(self) -> Path:
        return write_toy_dataset(self.root / "toy_val.h5", 4, 64, seed=1)

    def _build_stage1(self) -> Path:
        """A real stage-I checkpoint (``synthforge train`` on the tiny config, 2 steps)."""
        run = self.root / "stage1_run"
        code = cli_main(["train", "--config", str(TINY), f"--data.train={self.path('toy_train')}",
                         f"--data.val={self.path('toy_val')}", f"--trainer.default_root_dir={run}",
                         "--trainer.max_steps=2"])  # fmt: skip
        assert code == 0
        return run / "lightning_logs" / "version_0" / "checkpoints" / "final.ckpt"

    def _build_random_bytes(self) -> Path:
        p = self.root / "random.ckpt"
        p.write_bytes(os.urandom(4096))
        return p

    # --- checkpoints ----------------------------------------------------------------------------------------------
    def _build_evil_stage1(self) -> Path:
        return add_payload(self.path("stage1"), self.root / "evil_stage1.ckpt")

    def _build_truncated_stage1(self) -> Path:
        data = self.path("stage1").read_bytes()
        p = self.root / "truncated_stage1.ckpt"
        p.write_bytes(data[: len(data) // 2])
        return p

    def _build_w300(self) -> Path:
        from finetune_trees import make_w300

        return make_w300(self.root / "w300")

    def _build_finetune(self) -> Path:
        """A real fine-tuned checkpoint (``synthforge finetune`` on a tiny 300W tree, 1 step)."""
        run = self.root / "finetune_run"
        code = cli_main(["finetune", "--config", str(W300_TINY), "--data.root", str(self.path("w300")),
                         "--model.backbone", str(self.path("stage1")), "--trainer.default_root_dir", str(run),
                         "--trainer.max_steps=1"])  # fmt: skip
        assert code == 0
        return run / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"

    def _build_evil_finetune(self) -> Path:
        return add_payload(self.path("finetune"), self.root / "evil_finetune.ckpt")

    # --- predict / demo ------------------------------------------------------------------------------------------
    def _build_grey_png(self) -> Path:
        import cv2

        p = self.root / "grey.png"
        cv2.imwrite(str(p), np.full((64, 64, 3), 128, np.uint8))
        return p

    # --- HDF5 data and generation -------------------------------------------------------------------------------
    def _build_gen_shard(self) -> Path:
        """A finished 4-row shard written by ``synthforge generate`` (shipped tiny config at 48 px, one process)."""
        out = self.root / "gen_shard.h5"
        assert cli_main(["generate", *GEN_ARGS, "--out", str(out)]) == 0
        return out

    def _damaged_copy(self, name: str, field: str, row: int = 2, source: str = "gen_shard") -> Path:
        """A copy of the asset ``source`` with 100 bytes (at most: the chunk minus its checksum) of ``row``'s
        ``field`` chunk zeroed."""
        import shutil

        import h5py

        p = self.root / name
        shutil.copyfile(self.path(source), p)
        with h5py.File(p, "r") as f:
            info = f[field].id.get_chunk_info(row)
        at = min(10, info.size - 5)
        with open(p, "r+b") as fh:
            fh.seek(info.byte_offset + at)
            fh.write(b"\0" * min(100, info.size - 4 - at))
        return p

    def _build_gen_damaged_image(self) -> Path:
        return self._damaged_copy("gen_damaged_image.h5", "image")

    def _build_gen_damaged_seg(self) -> Path:
        return self._damaged_copy("gen_damaged_seg.h5", "seg")

    def _build_not_hdf5(self) -> Path:
        p = self.root / "not_hdf5.h5"
        p.write_text("this is not an HDF5 file\n" * 20)
        return p

    def _build_truncated_shard_folder(self) -> Path:
        """An output folder holding a finished shard cut to half its size."""
        folder = self.root / "truncated_out"
        folder.mkdir()
        data = self.path("gen_shard").read_bytes()
        (folder / "shard-00000-of-00001.h5").write_bytes(data[: len(data) // 2])
        return folder

    def _build_fs_source(self) -> Path:
        """A 2-image Microsoft FaceSynthetics tree (``NNNNNN.png``, ``_seg.png``, ``_ldmks.txt``)."""
        import numpy as np
        from PIL import Image

        root = self.root / "fs_source"
        root.mkdir()
        rng = np.random.default_rng(0)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / f"{i:06d}.png")
            Image.fromarray(rng.integers(0, 19, (32, 32), dtype=np.uint8)).save(root / f"{i:06d}_seg.png")
            np.savetxt(root / f"{i:06d}_ldmks.txt", rng.uniform(0, 32, (70, 2)))
        return root

    def _build_fs_imported(self) -> Path:
        out = self.root / "fs_imported.h5"
        assert cli_main(["import", "facesynthetics", str(self.path("fs_source")), "--out", str(out)]) == 0
        return out

    def _build_fs_imported_damaged(self) -> Path:
        return self._damaged_copy("fs_imported_damaged.h5", "seg", row=1, source="fs_imported")

    def _build_plain_file(self) -> Path:
        p = self.root / "plain_file.txt"
        p.write_text("x")
        return p

    def _build_bad_yaml(self) -> Path:
        p = self.root / "bad_generate.yaml"
        p.write_text("camera: [1, 2\n")
        return p

    # --- training / fine-tuning data ----------------------------------------------------------------------------
    def _build_empty_root(self) -> Path:
        p = self.root / "empty_root"
        p.mkdir()
        return p

    def _build_w300_bad_pts(self) -> Path:
        """A tiny 300W tree whose second afw face (training split) has 67 points instead of 68."""
        from finetune_trees import make_w300, write_pts

        from label_finetune.datasets.w300 import read_pts

        root = make_w300(self.root / "w300_bad_pts")
        bad = root / "afw" / "img_001_2.pts"
        write_pts(bad, read_pts(bad)[:67])
        return root


CASES: list[Case] = [
    # --- generate / preview / import ---
    Case("generate-negative-num", ("generate", "--num", "-3", "--out", "{tmp}/o"), "--num", no_output=("{tmp}/o",)),
    # --- train ---
    Case(
        "train-missing-data",
        ("train", "--config", str(TINY), "--data.train={tmp}/missing.h5", "--trainer.default_root_dir={tmp}/run"),
        "{tmp}/missing.h5",
    ),
    Case(
        "train-bad-crop-size",
        (
            "train",
            "--config",
            str(TINY),
            "--data.train={toy_train}",
            "--data.crop_size=60",
            "--trainer.default_root_dir={tmp}/run",
        ),
        "crop_size",
        no_output=("{tmp}/run",),
    ),
    # --- checkpoints ---
    # code-running payloads: refused, nothing runs, nothing written
    Case(
        "evaluate-evil-finetune",
        (
            "evaluate",
            "--config",
            str(W300_TINY),
            "--data.root",
            "{w300}",
            "--ckpt",
            "{evil_finetune}",
            "--out",
            "{tmp}/r.json",
        ),
        "--ckpt: {evil_finetune}: refused",
        no_output=("{tmp}/r.json",),
        payload=True,
    ),
    Case(
        "finetune-evil-backbone",
        (
            "finetune",
            "--config",
            str(W300_TINY),
            "--data.root",
            "{w300}",
            "--model.backbone",
            "{evil_stage1}",
            "--trainer.default_root_dir",
            "{tmp}/run",
        ),
        "--model.backbone: {evil_stage1}: refused",
        no_output=("{tmp}/run",),
        payload=True,
    ),
    Case(
        "evaluate-evil-backbone-override",
        (
            "evaluate",
            "--config",
            str(W300_TINY),
            "--data.root",
            "{w300}",
            "--model.backbone",
            "{evil_stage1}",
            "--ckpt",
            "{finetune}",
            "--out",
            "{tmp}/r.json",
        ),
        "--model.backbone: {evil_stage1}: refused",
        no_output=("{tmp}/r.json",),
        payload=True,
    ),
    Case(
        "train-resume-evil",
        (
            "train",
            "--config",
            str(TINY),
            "--data.train={toy_train}",
            "--data.val={toy_val}",
            "--ckpt_path={evil_stage1}",
            "--trainer.default_root_dir={tmp}/run",
        ),
        "--ckpt_path: {evil_stage1}: refused",
        no_output=("{tmp}/run",),
        payload=True,
    ),
    Case(
        "finetune-resume-evil",
        (
            "finetune",
            "--config",
            str(W300_TINY),
            "--data.root",
            "{w300}",
            "--model.backbone",
            "{stage1}",
            "--ckpt_path",
            "{evil_finetune}",
            "--trainer.default_root_dir",
            "{tmp}/run",
        ),
        "--ckpt_path: {evil_finetune}: refused",
        no_output=("{tmp}/run",),
        payload=True,
    ),
    # damaged files
    Case(
        "evaluate-random-bytes",
        (
            "evaluate",
            "--config",
            str(W300_TINY),
            "--data.root",
            "{w300}",
            "--ckpt",
            "{random_bytes}",
            "--out",
            "{tmp}/r.json",
        ),
        "--ckpt: {random_bytes}: not a PyTorch checkpoint",
        no_output=("{tmp}/r.json",),
    ),
    Case(
        "train-resume-truncated",
        (
            "train",
            "--config",
            str(TINY),
            "--data.train={toy_train}",
            "--data.val={toy_val}",
            "--ckpt_path={truncated_stage1}",
            "--trainer.default_root_dir={tmp}/run",
        ),
        "--ckpt_path: {truncated_stage1}: not a PyTorch checkpoint",
        no_output=("{tmp}/run",),
    ),
    # the wrong kind of checkpoint: the message says what the file is
    Case(
        "evaluate-stage1-as-ckpt",
        (
            "evaluate",
            "--config",
            str(W300_TINY),
            "--data.root",
            "{w300}",
            "--ckpt",
            "{stage1}",
            "--out",
            "{tmp}/r.json",
        ),
        "--ckpt: {stage1}: this is a stage-I checkpoint",
        no_output=("{tmp}/r.json",),
    ),
    Case(
        "finetune-finetuned-as-backbone",
        (
            "finetune",
            "--config",
            str(W300_TINY),
            "--data.root",
            "{w300}",
            "--model.backbone",
            "{finetune}",
            "--trainer.default_root_dir",
            "{tmp}/run",
        ),
        "--model.backbone: {finetune}: this is a fine-tuned checkpoint",
        no_output=("{tmp}/run",),
    ),
    # --- predict / demo ---
    Case(
        "predict-evil-ckpt",
        ("predict", "--ckpt", "{evil_stage1}", "{grey_png}", "--out", "{tmp}/o", "--no-detect"),
        "{evil_stage1}",
        no_output=("{tmp}/o",),
        payload=True,
    ),
    Case(
        "predict-random-bytes",
        ("predict", "--ckpt", "{random_bytes}", "{grey_png}", "--out", "{tmp}/o"),
        "{random_bytes}",
        no_output=("{tmp}/o",),
    ),
    Case(
        "predict-missing-ckpt",
        ("predict", "--ckpt", "{tmp}/none.ckpt", "{grey_png}", "--out", "{tmp}/o"),
        "{tmp}/none.ckpt",
        no_output=("{tmp}/o",),
    ),
    Case(
        "predict-unknown-output",
        ("predict", "--ckpt", "{stage1}", "{grey_png}", "--out", "{tmp}/o", "--save", "foo"),
        "--save",
        no_output=("{tmp}/o",),
    ),
    Case(
        "export-evil-ckpt",
        ("export", "--ckpt", "{evil_stage1}", "--format", "torchscript", "--out", "{tmp}/m.pt"),
        "{evil_stage1}",
        no_output=("{tmp}/m.pt",),
        payload=True,
    ),
    Case(
        "export-missing-ckpt",
        ("export", "--ckpt", "{tmp}/none.ckpt", "--format", "torchscript", "--out", "{tmp}/m.pt"),
        "{tmp}/none.ckpt",
        no_output=("{tmp}/m.pt",),
    ),
    Case(
        "export-unknown-format",
        ("export", "--ckpt", "{stage1}", "--format", "tflite", "--out", "{tmp}/m.pt"),
        "--format",
        no_output=("{tmp}/m.pt",),
    ),
    Case(
        "export-bad-image-size",
        ("export", "--ckpt", "{stage1}", "--format", "torchscript", "--out", "{tmp}/m.pt", "--image-size", "-4"),
        "--image-size",
        no_output=("{tmp}/m.pt",),
    ),
    Case(
        "export-out-is-a-folder", ("export", "--ckpt", "{stage1}", "--format", "torchscript", "--out", "{tmp}"), "--out"
    ),
    Case(
        "demo-negative-count", ("demo", "--out", "{tmp}/d", "--num-train", "-5"), "--num-train", no_output=("{tmp}/d",)
    ),
    Case(
        "demo-not-a-number",
        ("demo", "--out", "{tmp}/d", "--num-heldout", "abc"),
        "--num-heldout",
        no_output=("{tmp}/d",),
    ),
    Case("demo-negative-budget", ("demo", "--out", "{tmp}/d", "--budget", "-1"), "--budget", no_output=("{tmp}/d",)),
    Case(
        "demo-image-size-too-large",
        ("demo", "--out", "{tmp}/d", "--image-size", "100000"),
        "--image-size",
        no_output=("{tmp}/d",),
    ),
    # --- HDF5 data and generation ---
    Case(
        "generate-out-not-hdf5",
        ("generate", *GEN_ARGS, "--out", "{not_hdf5}"),
        "{not_hdf5}",
        no_output=("{not_hdf5}.partial",),
    ),
    Case(
        "generate-out-truncated-shard",
        ("generate", *GEN_ARGS, "--out", "{truncated_shard_folder}"),
        "{truncated_shard_folder}/shard-00000-of-00001.h5",
        no_output=("{truncated_shard_folder}/index.json", "{truncated_shard_folder}/shard-00000-of-00001.h5.partial"),
    ),
    Case(
        "import-out-not-hdf5",
        ("import", "facesynthetics", "{fs_source}", "--out", "{not_hdf5}"),
        "{not_hdf5}",
        no_output=("{not_hdf5}.partial",),
    ),
    Case(
        "import-out-truncated-shard",
        ("import", "facesynthetics", "{fs_source}", "--out", "{truncated_shard_folder}"),
        "{truncated_shard_folder}/shard-00000-of-00001.h5",
        no_output=("{truncated_shard_folder}/shard-00000-of-00001.h5.partial",),
    ),
    Case(
        "generate-image-size-too-large",
        ("generate", "--num", "1", "--out", "{tmp}/o", "--image-size", "100000"),
        "--image-size",
        no_output=("{tmp}/o",),
    ),
    Case(
        "preview-damaged-image-chunk",
        ("preview", "{gen_damaged_image}", "--out", "{tmp}/p.png"),
        "{gen_damaged_image}: row 2",
        no_output=("{tmp}/p.png",),
    ),
    Case(
        "preview-damaged-seg-chunk",
        ("preview", "{gen_damaged_seg}", "--out", "{tmp}/p.png"),
        "{gen_damaged_seg}: row 2",
        no_output=("{tmp}/p.png",),
    ),
    Case(
        "preview-missing",
        ("preview", "{tmp}/missing", "--out", "{tmp}/p.png"),
        "{tmp}/missing",
        no_output=("{tmp}/p.png",),
    ),
    Case(
        "import-rerun-onto-damaged-output",
        ("import", "facesynthetics", "{fs_source}", "--out", "{fs_imported_damaged}"),
        "{fs_imported_damaged}: row 1",
    ),
    Case(
        "generate-bad-shard-index",
        ("generate", "--num", "2", "--num-shards", "2", "--shard-index", "3", "--out", "{tmp}/o"),
        "--shard-index",
        no_output=("{tmp}/o",),
    ),
    Case(
        "generate-unknown-config-key",
        ("generate", "--num", "2", "--camera.fov_degs", "[1, 2]", "--out", "{tmp}/o"),
        "camera.fov_degs",
        no_output=("{tmp}/o",),
    ),
    Case(
        "generate-missing-flame-model",
        ("generate", "--num", "2", "--model.path", "{tmp}/generic_model.pkl", "--out", "{tmp}/o"),
        "{tmp}/generic_model.pkl",
        no_output=("{tmp}/o",),
    ),
    Case(
        "generate-unknown-renderer",
        ("generate", "--num", "2", "--renderer", "nope", "--out", "{tmp}/o"),
        "renderer",
        no_output=("{tmp}/o",),
    ),
    Case(
        "generate-unknown-renderer-option",
        ("generate", "--num", "1", "--renderer.procedural.no_such_option", "1", "--out", "{tmp}/o"),
        "no_such_option",
        no_output=("{tmp}/o",),
    ),
    Case("generate-out-under-a-file", ("generate", *GEN_ARGS, "--out", "{plain_file}/sub"), "{plain_file}"),
    Case(
        "generate-bad-yaml",
        ("generate", "--config", "{bad_yaml}", "--num", "1", "--out", "{tmp}/o"),
        "{bad_yaml}",
        no_output=("{tmp}/o",),
    ),
    # --- training / fine-tuning data ---
    # counts are checked where the option is defined (the datamodule), before the Trainer prints anything
    Case(
        "train-batch-size-0",
        (
            "train",
            "--config",
            str(TINY),
            "--data.train={toy_train}",
            "--data.batch_size=0",
            "--trainer.default_root_dir={tmp}/run",
        ),
        "--data.batch_size",
        no_output=("{tmp}/run",),
    ),
    Case(
        "train-batch-size-negative",
        (
            "train",
            "--config",
            str(TINY),
            "--data.train={toy_train}",
            "--data.batch_size=-4",
            "--trainer.default_root_dir={tmp}/run",
        ),
        "--data.batch_size must be a positive integer, got -4",
        no_output=("{tmp}/run",),
    ),
    Case(
        "finetune-batch-size-0",
        (
            "finetune",
            "--config",
            str(W300_TINY),
            "--data.root",
            "{w300}",
            "--data.batch_size",
            "0",
            "--model.backbone",
            "{stage1}",
            "--trainer.default_root_dir",
            "{tmp}/run",
        ),
        "--data.batch_size",
        no_output=("{tmp}/run",),
    ),
    Case(
        "finetune-num-workers-negative",
        (
            "finetune",
            "--config",
            str(W300_TINY),
            "--data.root",
            "{w300}",
            "--data.num_workers",
            "-1",
            "--model.backbone",
            "{stage1}",
            "--trainer.default_root_dir",
            "{tmp}/run",
        ),
        "--data.num_workers",
        no_output=("{tmp}/run",),
    ),
    # an empty root: no Lightning banner or model warning before the error
    Case(
        "finetune-empty-root",
        (
            "finetune",
            "--config",
            str(W300_TINY),
            "--data.root",
            "{empty_root}",
            "--model.backbone",
            "{stage1}",
            "--trainer.default_root_dir",
            "{tmp}/run",
        ),
        "--data.root: {empty_root}",
        no_output=("{tmp}/run",),
    ),
    Case(
        "evaluate-empty-root",
        (
            "evaluate",
            "--config",
            str(W300_TINY),
            "--data.root",
            "{empty_root}",
            "--ckpt",
            "{finetune}",
            "--out",
            "{tmp}/r.json",
        ),
        "--data.root: {empty_root}",
        no_output=("{tmp}/r.json",),
    ),
    # every annotation file of the splits in use is read when the data are set up, before training starts
    # (resolution 64 = the stage-I network's, so that no resolution warning precedes the error)
    Case(
        "finetune-bad-pts",
        (
            "finetune",
            "--config",
            str(W300_TINY),
            "--data.root",
            "{w300_bad_pts}",
            "--data.resolution",
            "64",
            "--model.backbone",
            "{stage1}",
            "--trainer.default_root_dir",
            "{tmp}/run",
        ),
        "67 points, expected 68: {w300_bad_pts}/afw/img_001_2.pts",
        no_output=("{tmp}/run",),
    ),
    Case(
        "evaluate-bad-pts",
        (
            "evaluate",
            "--config",
            str(W300_TINY),
            "--data.root",
            "{w300_bad_pts}",
            "--split",
            "train",
            "--ckpt",
            "{finetune}",
            "--out",
            "{tmp}/r.json",
        ),
        "{w300_bad_pts}/afw/img_001_2.pts",
        no_output=("{tmp}/r.json",),
    ),
]


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Assets:
    return Assets(tmp_path_factory.mktemp("battery_assets"))


class _Fill(string.Formatter):
    def __init__(self, assets: Assets, tmp: Path) -> None:
        self.assets, self.tmp = assets, tmp

    def get_value(self, key, args, kwargs):  # noqa: ANN001, ANN202 - string.Formatter's signature
        return str(self.tmp) if key == "tmp" else str(self.assets.path(key))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_exits_2_with_one_line(case: Case, assets: Assets, tmp_path: Path) -> None:
    fill = _Fill(assets, tmp_path)
    argv = [fill.format(a) for a in case.argv]
    proc = subprocess.run([sys.executable, "-m", "synthforge.cli", *argv], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300, stdin=subprocess.DEVNULL)  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert fill.format(case.needle) in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    for p in case.no_output:
        assert not Path(fill.format(p)).exists(), f"{p} was written"
    if case.payload:
        assert not (tmp_path / MARKER).exists(), "the checkpoint's payload ran"


def test_payload_runs_when_loaded_unsafely(tmp_path: Path) -> None:
    """The malicious rows can fail: an unrestricted load of such a file does run the payload."""
    small = tmp_path / "small.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, small)
    evil = add_payload(small, tmp_path / "evil.ckpt")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        torch.load(evil, map_location="cpu", weights_only=False)
    finally:
        os.chdir(cwd)
    assert (tmp_path / MARKER).exists()
