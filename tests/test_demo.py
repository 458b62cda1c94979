"""End-to-end ``synthforge demo`` on tiny settings (a few samples, two training steps)."""

from __future__ import annotations

import json
from pathlib import Path

from synthforge.cli import main


def test_demo_end_to_end_tiny(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo"
    argv = ["demo", "--out", str(out), "--num-train", "12", "--num-heldout", "4", "--image-size", "64",
            "--workers", "1", "--train-args", "--trainer.max_steps=2", "--data.batch_size=4",
            "--trainer.enable_progress_bar=false"]
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("nme", "seg_f1_mean", "depth_rmse_mm"):
        assert metrics[key] == metrics[key] and metrics["baseline_" + key] == metrics["baseline_" + key]  # not NaN
    assert metrics["num_samples"] == 4
    assert (out / "report.png").stat().st_size > 5_000
    assert "| landmark NME (%) |" in capsys.readouterr().out


def test_demo_bad_option_exits_2(tmp_path: Path, capsys) -> None:
    assert main(["demo", "--out", str(tmp_path), "--num-train", "0"]) == 2
    assert "--num-train" in capsys.readouterr().err
