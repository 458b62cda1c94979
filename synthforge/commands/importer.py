"""``synthforge import {synthforge,facesynthetics} SRC_DIR --out PATH``: published layouts -> HDF5."""

from __future__ import annotations

import importlib

from tqdm import tqdm

from next3d_gen.importers import IMPORTERS
from synthforge.commands import OneLineParser


def main(argv: list[str]) -> int:
    """Run the command; returns the exit status (UserError propagates to the dispatcher: exit 2)."""
    parser = OneLineParser(prog="synthforge import", description=__doc__)
    parser.add_argument("layout", choices=sorted(IMPORTERS), help="source dataset layout")
    parser.add_argument("src", help="folder of the source dataset")
    parser.add_argument("--out", required=True, help="output .h5 file or folder (resumable: rerun to continue)")
    args = parser.parse_args(argv)
    module_name, func_name = IMPORTERS[args.layout].split(":")
    run = getattr(importlib.import_module(module_name), func_name)

    def progress(rows, total):  # noqa: ANN001, ANN202
        return tqdm(rows, total=len(rows), initial=total - len(rows), desc=f"import {args.layout}", unit="img")

    path = run(args.src, args.out, progress=progress)
    print(f"wrote {path}")
    return 0
