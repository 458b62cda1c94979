"""Command implementations behind the one ``synthforge`` entry point (argv parsing lives only here)."""

from __future__ import annotations

import argparse

from next3d_gen.errors import UserError


class OneLineParser(argparse.ArgumentParser):
    """``argparse`` parser whose usage errors raise :class:`UserError`: one line on stderr and exit status 2 through
    the dispatcher, instead of argparse's usage block (sub-parsers made with ``add_subparsers`` inherit it)."""

    def error(self, message: str) -> None:  # type: ignore[override] - raises instead of exiting
        raise UserError(message)


def one_line(text: str) -> str:
    """A jsonargparse error message as one line: its first three non-empty lines joined by `` | `` (jsonargparse
    nests the reason under a header, e.g. ``Parser key "data.batch_size":`` then ``Expected a <class 'int'>``),
    at most 400 characters."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return " | ".join(lines[:3])[:400]
