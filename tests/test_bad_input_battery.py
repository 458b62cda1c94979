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

import pytest
import torch

from synthforge.cli import main as cli_main
from synthforge.data.toy import write_toy_dataset

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "stage1" / "tiny.yaml"
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

    # --- HDF5 data and generation -------------------------------------------------------------------------------

    # --- training / fine-tuning data ----------------------------------------------------------------------------


CASES: list[Case] = [
    # --- generate / preview / import ---
    Case("generate-negative-num", ("generate", "--num", "-3", "--out", "{tmp}/o"), "--num", no_output=("{tmp}/o",)),
    # --- train ---
    Case("train-missing-data", ("train", "--config", str(TINY), "--data.train={tmp}/missing.h5",
                                "--trainer.default_root_dir={tmp}/run"), "{tmp}/missing.h5"),
    Case("train-bad-crop-size", ("train", "--config", str(TINY), "--data.train={toy_train}", "--data.crop_size=60",
                                 "--trainer.default_root_dir={tmp}/run"), "crop_size", no_output=("{tmp}/run",)),
    # --- checkpoints ---

    # --- HDF5 data and generation ---

    # --- training / fine-tuning data ---
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

