"""Published numbers printed beside ours in ``synthforge evaluate`` tables (data only).

Only numbers whose exact published values are known to the maintainers belong here, each with its source. The
SynthForge paper's (arXiv 2406.07840) exact table values were not available when this module was written, so no
published row is stored yet: the tables show our rows alone until someone adds rows copied from the paper (the column
keys are those of :data:`COLUMNS`; a missing key prints as "-").
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PublishedRow:
    """One published table row.

    Attributes:
        method: row label, e.g. "SynthForge (w/ F)".
        source: citation (paper, table number).
        values: column key -> value in the table's unit (NME/FR in %, AUC in [0, 1] x 100, F1 in %).
    """

    method: str
    source: str
    values: dict[str, float] = field(default_factory=dict)


W300_COLUMNS: tuple[str, ...] = (
    "common_nme", "challenge_nme", "full_nme", "full_fr_8", "full_auc_8", "full_fr_10", "full_auc_10"
)
"""300W table columns (NME / failure rate in %, AUC x 100), on the splits named by the prefix."""

COLUMNS: dict[str, tuple[str, ...]] = {
    "w300": W300_COLUMNS,
    "lapa": ("skin", "hair", "l-eye", "r-eye", "u-lip", "i-mouth", "l-lip", "nose", "l-brow", "r-brow", "mean",
             "mean_mouth_merged"),
    "celebamask_hq": ("face", "nose", "glasses", "l-eye", "r-eye", "l-brow", "r-brow", "l-ear", "r-ear", "i-mouth",
                      "u-lip", "l-lip", "hair", "neck", "mean"),
}
"""Table columns per benchmark, in print order."""

PUBLISHED: dict[str, tuple[PublishedRow, ...]] = {
    "w300": (),
    "lapa": (),
    "celebamask_hq": (),
}
"""Published rows per benchmark (empty: see the module docstring)."""
