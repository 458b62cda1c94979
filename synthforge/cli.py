"""The one ``synthforge`` command-line entry point.

Each sub-command lives in ``synthforge/commands/<name>.py`` as ``main(argv: list[str]) -> int`` and is imported only
when used, so ``synthforge preview`` does not pay for importing Lightning. A :class:`~next3d_gen.errors.UserError`
(or a jsonargparse/argparse usage error) becomes one line on stderr and exit status 2, also when it was raised in a
DataLoader worker process (PyTorch re-raises it in the main process wrapped in the worker's traceback; the user sees
only the original message).
"""

from __future__ import annotations

import importlib
import re
import sys

from next3d_gen.errors import UserError

COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("synthforge.commands.generate", "write labeled synthetic faces to HDF5 shards"),
    "preview": ("synthforge.commands.preview", "draw a grid of samples of an HDF5 dataset"),
    "import": ("synthforge.commands.importer", "convert a published dataset layout to HDF5"),
    "train": ("synthforge.commands.train", "stage B: train the multi-task network (LightningCLI fit)"),
    "finetune": ("synthforge.commands.finetune", "stage C: label fine-tuning on a real benchmark"),
    "evaluate": ("synthforge.commands.evaluate", "stage C: benchmark metrics and the paper's table"),
    "demo": ("synthforge.commands.demo", "generate -> train -> evaluate -> report, no assets needed"),
    "rounds": ("synthforge.commands.rounds", "alternate training and loss-guided generation (a stage-I recipe)"),
    "predict": ("synthforge.commands.predict", "parsing, depth and landmarks on every face of photos or videos"),
    "export": ("synthforge.commands.export", "one ONNX or TorchScript file of a trained network, documented inside"),
}


_WORKER_HEADER = re.compile(r"^Caught (\w+) in DataLoader worker process \d+\.\nOriginal Traceback")
"""How ``torch.utils.data._utils.ExceptionWrapper.reraise`` starts the message of an error re-raised from a worker."""


def user_message(err: UserError) -> str:
    """The one-line message of ``err``, unwrapped from a DataLoader worker's re-raise.

    A worker's exception comes back as ``UserError("Caught UserError in DataLoader worker process N.\nOriginal
    Traceback (most recent call last):\n ... \nnext3d_gen.errors.UserError: <message>")``; the last traceback line
    holds the original message (UserError messages are one line). Anything else is returned unchanged.
    """
    text = str(err)
    match = _WORKER_HEADER.match(text)
    if match is None:
        return text
    last = text.rstrip().splitlines()[-1]
    name, sep, message = last.partition(": ")
    if sep and name.rsplit(".", 1)[-1] == match.group(1):
        return message
    return text


def usage() -> str:
    lines = ["usage: synthforge <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {doc}" for name, (_, doc) in COMMANDS.items()]
    lines += ["", "Run 'synthforge <command> --help' for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``argv`` (default ``sys.argv[1:]``) to a sub-command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"synthforge: error: unknown command {name!r} (choose from {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[name][0])
        return int(module.main(rest) or 0)
    except UserError as err:
        print(f"synthforge {name}: error: {user_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"synthforge {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
