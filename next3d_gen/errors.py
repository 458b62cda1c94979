"""User-facing errors: the CLI prints them as one line and exits with status 2 (no traceback)."""


class UserError(Exception):
    """A mistake in the user's input (file, option, config): the message names the file or option."""
