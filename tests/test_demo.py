"""End-to-end ``synthforge demo`` on tiny settings (a few samples, two training steps)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from synthforge.cli import main
from synthforge.commands.demo import BUDGET_RESERVE_S, max_time_seconds, training_time_cap


def test_demo_end_to_end_tiny(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    argv = [
        "demo",
        "--out",
        str(out),
        "--num-train",
        "12",
        "--num-heldout",
        "4",
        "--image-size",
        "64",
        "--workers",
        "1",
        "--budget",
        "0.5",  # 30 s: whatever generation takes, training gets the one-minute floor instead of the config's cap
        "--train-args",
        "--trainer.max_steps=2",
        "--data.batch_size=4",
        "--trainer.enable_progress_bar=false",
    ]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("nme", "seg_f1_mean", "depth_rmse_mm"):
        assert metrics[key] == metrics[key] and metrics["baseline_" + key] == metrics["baseline_" + key]  # not NaN
    assert metrics["num_samples"] == 4
    assert (out / "report.png").stat().st_size > 5_000
    printed = capsys.readouterr().out
    assert "| landmark NME (%) |" in printed
    assert "training capped at 1:00 min instead of 12:30 min to keep the demo within --budget 0.5 min" in printed
    [config] = (out / "runs").glob("lightning_logs/version_*/config.yaml")
    assert yaml.safe_load(config.read_text())["trainer"]["max_time"] == "00:00:01:00"


def test_demo_time_budget_arithmetic() -> None:
    assert max_time_seconds("00:00:12:30") == 750.0 and max_time_seconds("01:02:03:04") == 93784.0
    assert max_time_seconds({"minutes": 12, "seconds": 30}) == 750.0
    for bad in (None, "12:30", "00:00:12:3x", 750, {"weeks": 1}, {}):
        assert max_time_seconds(bad) is None
    # the slower host's runs: generation 111 s leaves the config's 750 s; 138 s (a busy machine) cuts it to 732 s
    assert training_time_cap(885.0, 111.0, 750.0) == 750.0
    assert training_time_cap(885.0, 138.0, 750.0) == 885.0 - 138.0 - BUDGET_RESERVE_S
    assert training_time_cap(885.0, 900.0, 750.0) == 60.0  # never below the floor


def test_demo_bad_option_exits_2(tmp_path: Path, capsys) -> None:
    assert main(["demo", "--out", str(tmp_path), "--num-train", "0"]) == 2
    assert "--num-train" in capsys.readouterr().err


def test_demo_configs_are_package_data_and_the_repository_configs() -> None:
    """The demo reads its configs through importlib.resources (synthforge/configs: works from a wheel); in a source
    checkout that folder is the repository's configs/ (one copy), and the package-data patterns take every file of
    it (built wheels hold them; checked by hand with pip wheel + python -m zipfile -l)."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    from synthforge.commands.demo import packaged_config

    root = Path(__file__).resolve().parents[1]
    for rel in ("generate/default.yaml", "stage1/demo.yaml"):
        assert packaged_config(rel).resolve() == (root / "configs" / rel).resolve()
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["synthforge"]
    packaged = {p.resolve() for pattern in patterns for p in (root / "synthforge").glob(pattern)}
    shipped = {p.resolve() for p in (root / "configs").rglob("*") if p.is_file()}
    assert shipped and shipped <= packaged
