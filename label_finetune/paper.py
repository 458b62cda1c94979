"""Published numbers printed beside ours in ``synthforge evaluate`` tables (data only).

Source: the SynthForge paper (arXiv 2406.07840v1, the authors' preprint), Tables 1-3; values as printed there, the
method names exactly as printed with the paper's reference numbers in brackets. Column keys are those of
:data:`COLUMNS`; a column the paper does not report (300W Full, failure rates, AUC; LaPa's mean with the mouth merged)
is absent from the row's ``values`` and prints as a blank cell.

Table 3 (CelebAMask-HQ) prints the headers ``LE, RE, LB, RB, L-ER, R-ER``; its caption calls both LE/RE and L-ER/R-ER
"ears". The rows follow the standard CelebAMask-HQ column order of the methods it copies (EAGR, AGRNet, FaRL): LE/RE
are the eyes, LB/RB the brows, L-ER/R-ER the ears, and are stored under those keys (:data:`PRINTED_HEADERS` keeps the
printed names).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PublishedRow:
    """One published table row.

    Attributes:
        method: row label exactly as printed, e.g. "SB + LF w/ fs".
        table: table number in the source.
        source: citation.
        values: column key -> value in the table's unit (NME in %, F1 in %).
    """

    method: str
    table: int
    source: str
    values: dict[str, float] = field(default_factory=dict)


PAPER = "SynthForge (arXiv 2406.07840)"
"""Citation of the paper the rows come from (``source`` is ``f"{PAPER}, Table N"``)."""

W300_COLUMNS: tuple[str, ...] = (
    "common_nme",
    "challenge_nme",
    "full_nme",
    "full_fr_8",
    "full_auc_8",
    "full_fr_10",
    "full_auc_10",
)
"""300W table columns (NME / failure rate in %, AUC x 100), on the splits named by the prefix."""

COLUMNS: dict[str, tuple[str, ...]] = {
    "w300": W300_COLUMNS,
    "lapa": (
        "skin",
        "hair",
        "l-eye",
        "r-eye",
        "u-lip",
        "i-mouth",
        "l-lip",
        "nose",
        "l-brow",
        "r-brow",
        "mean",
        "mean_mouth_merged",
    ),
    "celebamask_hq": (
        "face",
        "nose",
        "glasses",
        "l-eye",
        "r-eye",
        "l-brow",
        "r-brow",
        "l-ear",
        "r-ear",
        "i-mouth",
        "u-lip",
        "l-lip",
        "hair",
        "neck",
        "mean",
    ),
}
"""Table columns per benchmark, in print order."""

TABLES: dict[str, int] = {"w300": 1, "lapa": 2, "celebamask_hq": 3}
"""The paper's table number per benchmark."""

PAPER_COLUMNS: dict[str, tuple[str, ...]] = {
    "w300": ("common_nme", "challenge_nme"),
    "lapa": COLUMNS["lapa"][:11],
    "celebamask_hq": COLUMNS["celebamask_hq"],
}
"""The columns each paper table prints, in its order (keys of :data:`COLUMNS`)."""

PRINTED_HEADERS: dict[str, tuple[str, ...]] = {
    "w300": ("Common", "Challenge"),
    "lapa": ("Skin", "Hair", "L-eye", "R-eye", "U-lip", "I-mouth", "L-lip", "Nose", "L-brow", "R-brow", "Mean"),
    "celebamask_hq": (
        "Face",
        "Nose",
        "Glasses",
        "LE",
        "RE",
        "LB",
        "RB",
        "L-ER",
        "R-ER",
        "IM",
        "UL",
        "LL",
        "Hair",
        "Neck",
        "Mean",
    ),
}
"""Each paper table's headers as printed, parallel to :data:`PAPER_COLUMNS`."""

_PRINTED: dict[str, tuple[tuple[str, tuple[float, ...]], ...]] = {
    "w300": (
        ("Wood et al. [43]", (5.61, 8.43)),
        ("Wood et al. [43] + Label Adaptation", (3.09, 4.86)),
        ("FaRL-B [48]", (2.50, 4.42)),
        ("STAR [49]", (2.52, 4.32)),
        ("DECA [5] + LF", (4.26, 7.33)),
        ("DECA [5] + LF w/ fs", (3.86, 6.40)),
        ("SB", (5.74, 9.30)),
        ("Random Sampling 10K + LF", (5.18, 9.25)),
        ("Random Sampling 10K + LF w/ fs", (5.06, 8.84)),
        ("SB + LF", (3.01, 4.96)),
        ("SB + LF w/ fs", (2.90, 4.74)),
    ),
    "lapa": (
        ("Liu et al. [25]", (92.7, 96.3, 88.1, 88.0, 84.4, 87.6, 85.7, 95.5, 87.7, 87.6, 89.8)),
        ("Te et al. [39]", (97.3, 96.2, 89.5, 90.0, 88.1, 90.0, 89.0, 97.1, 86.5, 87.0, 91.1)),
        ("Wood et al. [43]", (97.1, 85.7, 90.6, 90.1, 85.9, 88.8, 88.4, 96.7, 88.6, 88.5, 90.1)),
        ("FaRL-B [48]", (98.00, 96.52, 93.97, 93.91, 90.15, 91.74, 91.21, 97.92, 92.70, 92.65, 93.88)),
        ("RS + LF 10k samples", (96.53, 94.26, 86.12, 85.58, 81.36, 85.48, 85.74, 95.68, 85.54, 84.48, 87.98)),
        ("DECA + LF 100k samples", (96.36, 93.69, 86.20, 86.05, 81.89, 84.64, 82.74, 95.50, 86.61, 85.74, 87.94)),
        ("SB + LF 100k samples", (96.80, 94.30, 88.60, 88.60, 84.43, 87.97, 87.13, 96.16, 87.64, 88.62, 90.03)),
    ),
    "celebamask_hq": (
        ("Wei et al. [42]", (96.4, 91.9, 89.5, 87.1, 85, 80.8, 82.5, 84.1, 83.3, 90.6, 87.9, 91.0, 91.1, 88.1, 87.80)),
        ("EAGR [39]", (96.2, 94.0, 92.3, 88.6, 88.7, 85.7, 85.2, 88, 85.7, 95.0, 88.9, 91.2, 94.9, 89.4, 90.27)),
        ("AGRNet [38]", (96.5, 93.9, 91.8, 88.7, 89.1, 85.5, 85.6, 88.1, 88.7, 92, 89.1, 91.1, 95.2, 89.9, 90.37)),
        ("DML-CSR [47]", (95.7, 93.9, 92.6, 89.4, 89.6, 85.5, 85.7, 88.3, 88.2, 91.8, 87.4, 91.0, 94.5, 89.6, 90.23)),
        (
            "FaRL-B [48]",
            (96.29, 93.72, 93.91, 88.75, 88.64, 85.24, 85.46, 87.06, 87.36, 90.96, 87.53, 89.81, 95.6, 91.54, 90.13),
        ),
        (
            "SB + LF w/ fs",
            (95.6, 93.0, 89.13, 86.61, 86.32, 83.75, 83.61, 84.88, 84.57, 89.04, 85.85, 88.34, 94.03, 89.36, 88.15),
        ),
    ),
}
"""The rows as printed, values in :data:`PAPER_COLUMNS` order."""

PUBLISHED: dict[str, tuple[PublishedRow, ...]] = {
    ds: tuple(
        PublishedRow(
            method, TABLES[ds], f"{PAPER}, Table {TABLES[ds]}", dict(zip(PAPER_COLUMNS[ds], vals, strict=True))
        )
        for method, vals in rows
    )
    for ds, rows in _PRINTED.items()
}
"""Published rows per benchmark, in the paper's order."""
