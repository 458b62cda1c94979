"""Several synthetic-to-real runs side by side, with their spread and how many meet each target.

    python benchmarks/summarize_transfer.py RUN.json [RUN.json ...] [--flip]

Reads the ``--json`` files of ``bench_real_transfer.py`` (one per demo run or checkpoint) and prints one row per run
(AFW dev set NME all / jaw 17 / inner 51, failure rate at 10 %, the parsing means and the F1 of every merged class),
the minimum, median and maximum of each column, and, per target of :data:`TARGETS` (the synthetic-to-real issue's
numbers), the runs that meet it. Where the run's demo folder holds ``metrics.json`` (``synthforge demo``: the
checkpoint's ``<out>/runs/lightning_logs/version_N/checkpoints/final.ckpt``), the held-out synthetic figures and the
demo's minutes are added. ``--flip`` reports the flip-test figures (JSON keys ``afw_flip`` / ``parsing_flip``).

Single runs of the time-capped demo move by several hundredths of parsing F1 and a tenth of a percent of NME with
nothing changed (data order, steps reached): judge a change by the spread of a few runs, not by one.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

# (label, JSON path of the figure, "max" = at most / "min" = at least, bound)
TARGETS: tuple[tuple[str, tuple[str, ...], str, float], ...] = (
    ("NME all <= 8 %", ("afw", "nme_all"), "max", 8.0),
    ("NME jaw <= 12 %", ("afw", "nme_jaw17"), "max", 12.0),
    ("NME inner <= 7 %", ("afw", "nme_inner51"), "max", 7.0),
    ("parsing mean >= 0.65", ("parsing", "f1_mean"), "min", 0.65),
    ("hair >= 0.7", ("parsing", "f1", "hair"), "min", 0.7),
    ("brows >= 0.4", ("parsing", "f1", "brows"), "min", 0.4),
    ("demo <= 15 min", ("demo", "minutes"), "max", 15.0),
)
"""Targets of the synthetic-to-real issue, on the AFW dev set, for the demo's checkpoint with no fine-tuning."""


def _fail(message: str) -> int:
    print(f"summarize_transfer: {message}", file=sys.stderr)
    return 2


def _get(doc: dict, path: tuple[str, ...]) -> float | None:
    for key in path:
        if not isinstance(doc, dict) or key not in doc:
            return None
        doc = doc[key]
    return float(doc) if isinstance(doc, (int, float)) and not isinstance(doc, bool) else None


def _demo_figures(checkpoint: str) -> dict[str, float]:
    """Held-out figures and minutes of the demo that wrote ``checkpoint``, when its ``metrics.json`` is there."""
    path = Path(checkpoint)
    if len(path.parents) < 5:
        return {}
    metrics = path.parents[4] / "metrics.json"
    try:
        doc = json.loads(metrics.read_text())
    except (OSError, ValueError):
        return {}
    out = {k: float(doc[k]) for k in ("nme", "seg_f1_mean", "depth_rmse_mm") if isinstance(doc.get(k), (int, float))}
    timings = doc.get("timings")
    if isinstance(timings, dict) and timings:
        out["minutes"] = sum(float(v) for v in timings.values()) / 60
    return out


def load_run(path: Path, flip: bool) -> dict:
    """The figures of one ``bench_real_transfer.py --json`` file, as ``{"afw", "parsing", "demo"}`` dicts.

    Raises:
        ValueError: the file is not such a JSON (message names the file).
    """
    try:
        doc = json.loads(path.read_text())
    except OSError as err:
        raise ValueError(f"{path}: cannot read: {err.strerror}") from None
    except ValueError:
        raise ValueError(f"{path}: not JSON") from None
    suffix = "_flip" if flip else ""
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k + suffix), dict) for k in ("afw", "parsing")):
        raise ValueError(f"{path}: not a bench_real_transfer.py --json file (no 'afw{suffix}' / 'parsing{suffix}')")
    return {
        "afw": doc["afw" + suffix],
        "parsing": doc["parsing" + suffix],
        "demo": _demo_figures(str(doc.get("checkpoint", ""))),
    }


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def summarize(names: list[str], runs: list[dict]) -> str:
    """The markdown tables for ``runs`` (as :func:`load_run` gives them), one row per name."""
    classes: list[str] = []
    for run in runs:
        for name in run["parsing"].get("f1", {}):
            if name not in classes:
                classes.append(name)
    columns: list[tuple[str, tuple[str, ...], int]] = [
        ("NME", ("afw", "nme_all"), 2),
        ("jaw", ("afw", "nme_jaw17"), 2),
        ("inner", ("afw", "nme_inner51"), 2),
        ("FR 10 %", ("afw", "fr_10"), 1),
        ("parsing mean", ("parsing", "f1_mean"), 3),
        ("in masks", ("parsing", "f1_mean_in_masks"), 3),
        *((c, ("parsing", "f1", c), 3) for c in classes),
        ("held-out NME", ("demo", "nme"), 2),
        ("held-out seg F1", ("demo", "seg_f1_mean"), 3),
        ("held-out depth mm", ("demo", "depth_rmse_mm"), 1),
        ("demo min", ("demo", "minutes"), 1),
    ]
    values = [[_get(run, path) for _, path, _ in columns] for run in runs]
    lines = ["| run | " + " | ".join(c for c, _, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in zip(names, values, strict=True):
        lines.append(f"| {name} | " + " | ".join(_fmt(v, d) for v, (_, _, d) in zip(row, columns, strict=True)) + " |")
    for label, pick in (("min", min), ("median", statistics.median), ("max", max)):
        cells = []
        for j, (_, _, d) in enumerate(columns):
            col = [row[j] for row in values if row[j] is not None]
            cells.append(_fmt(pick(col), d) if col else "-")
        lines.append(f"| **{label}** | " + " | ".join(cells) + " |")
    lines += ["", "| target | runs meeting it | runs missing it |", "|---|---|---|"]
    for label, path, kind, bound in TARGETS:
        met, missed, unknown = [], [], 0
        for name, run in zip(names, runs, strict=True):
            v = _get(run, path)
            if v is None:
                unknown += 1
            elif (v <= bound) if kind == "max" else (v >= bound):
                met.append(name)
            else:
                missed.append(name)
        known = len(met) + len(missed)
        note = f" ({unknown} without the figure)" if unknown else ""
        lines.append(f"| {label} | {len(met)} of {known}{note} | {', '.join(missed) or '-'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="bench_real_transfer.py --json files")
    ap.add_argument("--flip", action="store_true", help="the flip-test figures instead of the plain ones")
    args = ap.parse_args(argv)
    try:
        runs = [load_run(p, args.flip) for p in args.runs]
    except ValueError as err:
        return _fail(str(err))
    print(summarize([p.stem for p in args.runs], runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
