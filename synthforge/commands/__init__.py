"""Command implementations behind the one ``synthforge`` entry point (argv parsing lives only here)."""

from __future__ import annotations

import argparse

from next3d_gen.errors import UserError


class OneLineParser(argparse.ArgumentParser):
    """``argparse`` parser whose usage errors raise :class:`UserError`: one line on stderr and exit status 2 through
    the dispatcher, instead of argparse's usage block (sub-parsers made with ``add_subparsers`` inherit it)."""

    def error(self, message: str) -> None:  # type: ignore[override] - raises instead of exiting
        raise UserError(message)
