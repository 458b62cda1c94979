"""``synthforge export``: one ONNX or TorchScript file holding a trained network (stage I, or stage I + a fine-tuned
head as one graph) with its input convention and outputs documented inside it.

Example::

    synthforge export --ckpt final.ckpt --format onnx --out face.onnx [--image-size 256]

The graph takes ``image`` (B, 3, S, S) float32 RGB in [0, 1] (S = ``--image-size``, default the checkpoint's training
crop size; B free) and returns the outputs of :data:`synthforge.export.OUTPUTS` the network has, in that order; the
metadata JSON in the file says which, with shapes, units, crop size and scale, label space and versions
(:mod:`synthforge.export`). The file is written to a temporary name beside ``--out``, loaded back (onnxruntime /
``torch.jit.load``) and compared with PyTorch on one random batch; only when it matches is it renamed to ``--out``
(a failed check exits with status 1 and leaves nothing behind).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from pathlib import Path

import torch

from next3d_gen.errors import UserError
from synthforge.commands import OneLineParser


def build_parser() -> argparse.ArgumentParser:
    from synthforge.export import FORMATS

    p = OneLineParser(prog="synthforge export", description="Export a trained network to ONNX or TorchScript.")
    p.add_argument("--ckpt", required=True, help="checkpoint written by synthforge train or synthforge finetune")
    p.add_argument("--format", required=True, choices=FORMATS, help="onnx (needs the 'export' extra) or torchscript")
    p.add_argument("--out", required=True, help="file to write")
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="input side S in pixels (default: the checkpoint's training crop size; a multiple of the "
        "network's size divisor)",
    )
    return p


def _check_out(out: Path) -> None:
    """Create ``out``'s folder when needed (called once the inputs are known to be good)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"--out: {out}: cannot create its folder ({err.strerror or err})") from None
    if not os.access(out.parent, os.W_OK):
        raise UserError(f"--out: {out}: folder is not writable")


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from synthforge import export as ex

    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out: {out} is a folder (give a file name)")
    if args.format == "onnx" and (missing := ex.onnx_available()):
        raise UserError(f"--format onnx: needs the package {missing} (pip install 'synthforge[export]')")
    source = ex.load_export_source(args.ckpt, "--ckpt")
    size = source.crop_size if args.image_size is None else args.image_size
    wrapper = ex.build_wrapper(source, size, "--image-size")
    metadata = ex.export_metadata(source, wrapper, size, args.format)
    _check_out(out)

    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        ex.EXPORTERS[args.format](wrapper, size, tmp, metadata)
        # self-check on the written bytes: one random batch of 1 (the graph was captured with a batch of 2)
        device = next(wrapper.parameters()).device
        image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
        with torch.no_grad():
            reference = wrapper(image)
        exported = ex.run_exported(tmp, args.format, image)
        names = wrapper.output_names
        if len(exported) != len(names):
            print(
                f"synthforge export: error: the exported file returns {len(exported)} outputs, expected "
                f"{len(names)}; nothing written",
                file=sys.stderr,
            )
            return 1
        diffs = ex.max_abs_differences(reference, exported, names)
        print(f"{args.format}: {ex.INPUT_NAME} (B, 3, {size}, {size}) float32 RGB in [0, 1] ->")
        for name, got in zip(names, exported, strict=True):
            print(f"  {name:<11} {tuple(got.shape)!s:<20} max |PyTorch - {args.format}| = {diffs[name]:.3g}")
        if not ex.within_tolerance(reference, diffs, names):
            print(
                f"synthforge export: error: the exported model differs from PyTorch by more than "
                f"{ex.SELF_CHECK_ATOL:g} x max(1, |output|); nothing written",
                file=sys.stderr,
            )
            return 1
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp made it private; give it the permissions of a normally created file
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    print(
        f"wrote {out} ({source.kind}, trained at {source.crop_size} px, exported at {size} px, "
        f"{out.stat().st_size / 2**20:.1f} MiB)"
    )
    return 0
