"""Safe loading of the checkpoints users hand us (stage I from ``synthforge train``, stage II from ``finetune``).

Every checkpoint read in the package goes through :func:`load_checkpoint`: ``torch.load(weights_only=True)``, which
only rebuilds tensors and plain containers (dict, list, tuple, str, int, float, bool, None) and refuses any other
pickled object, so loading a file never runs code from it. Our checkpoints hold nothing else: the label space is
stored as a JSON string, the crop size as an int and the network config as plain-data hyper-parameters, so the
allow-list of extra types is empty. Networks are rebuilt from those hyper-parameters by jsonargparse, and only from
``class_path`` values inside :data:`ALLOWED_CLASS_PREFIXES` (naming another module would import it, i.e. run it).

Failures become one-line :class:`~next3d_gen.errors.UserError` messages naming the option (if any) and the file, in
three kinds: not a checkpoint / damaged (random bytes, truncated, empty), unsafe content (objects that would run code:
refused), wrong kind (a stage-I checkpoint where a fine-tuned one is expected, or the reverse).
"""

from __future__ import annotations

import pickle
import re
import zipfile
from argparse import ArgumentError
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from next3d_gen.errors import UserError

if TYPE_CHECKING:
    from torch import nn

    from label_finetune.system import FinetuneSystem
    from synthforge.system import MultiTaskSystem

STAGE1 = "stage1"
"""Kind of a ``synthforge train`` checkpoint (``MultiTaskSystem``: state-dict keys ``net.*``)."""
FINETUNE = "finetune"
"""Kind of a ``synthforge finetune`` checkpoint (``FinetuneSystem``: state-dict keys ``stage1.*`` + adapters)."""

DESCRIPTION = {
    STAGE1: "a stage-I checkpoint (written by synthforge train)",
    FINETUNE: "a fine-tuned checkpoint (written by synthforge finetune)",
}

ALLOWED_CLASS_PREFIXES = ("synthforge.", "label_finetune.", "next3d_gen.", "torch.nn.", "segmentation_models_pytorch.")
"""Modules a checkpoint's hyper-parameters may name as ``class_path`` (everything else is refused)."""

ALLOWED_INSTANTIATORS = ("lightning.pytorch.cli.instantiate_module",)
"""The only ``_instantiator`` LightningCLI writes into hyper-parameters; it is never imported from the file."""

_UNSAFE = re.compile(r"GLOBAL|safe_globals|Unsupported class|allowlist", re.IGNORECASE)


def _where(path: Path, option: str | None) -> str:
    return f"{option}: {path}" if option else str(path)


def load_checkpoint(
    path: str | Path, option: str | None = None, expect: str | None = None, consumer: str | None = None
) -> dict[str, Any]:
    """Read a checkpoint without running code from it, and check that it is the kind expected.

    Args:
        path: the ``.ckpt`` file.
        option: the command-line option that named the file (``--ckpt``), used in error messages; None for the
            Python API (the message then names the file only).
        expect: :data:`STAGE1` or :data:`FINETUNE` to require that kind, or None to accept either.
        consumer: who expects that kind, for the wrong-kind message (default: ``option``).

    Returns:
        The checkpoint dict (tensors on the CPU): ``state_dict``, ``hyper_parameters`` and Lightning's own entries.

    Raises:
        UserError: missing file, not a checkpoint / damaged, unsafe content, or the wrong kind.
    """
    p = Path(path)
    where = _where(p, option)
    ckpt = _safe_torch_load(p, where)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise UserError(
            f"{where}: not a SynthForge checkpoint (no state_dict; expected "
            f"{DESCRIPTION[expect] if expect else 'a synthforge train or finetune checkpoint'})"
        )
    kind = checkpoint_kind(ckpt)
    if expect is not None and kind != expect:
        what = DESCRIPTION[kind] if kind else "not a SynthForge checkpoint (no net.* or stage1.* weights)"
        user = consumer or option or "this function"
        raise UserError(f"{where}: this is {what}, but {user} expects {DESCRIPTION[expect]}")
    check_hyper_parameters(ckpt.get("hyper_parameters"), where)
    if kind == STAGE1:
        check_stage1_metadata(ckpt.get("synthforge"), where)
    return ckpt


def check_stage1_metadata(meta: Any, where: str) -> None:
    """The ``synthforge`` entry MultiTaskSystem.on_save_checkpoint writes: a dict with ``label_space`` (JSON str of a
    :class:`~next3d_gen.labels.LabelSpace`) and ``crop_size`` (int > 0 or None). Absent is allowed (older files).

    Raises:
        UserError: when it is present but malformed.
    """
    if meta is None:
        return
    from next3d_gen.labels import LabelSpace

    try:
        if not isinstance(meta, dict):
            raise TypeError(f"a {type(meta).__name__}, not a dict")
        if "label_space" in meta:
            if not isinstance(meta["label_space"], str):
                raise TypeError("label_space is not a JSON string")
            LabelSpace.from_json(meta["label_space"])
        crop = meta.get("crop_size")
        if crop is not None and (isinstance(crop, bool) or not isinstance(crop, int) or crop <= 0):
            raise ValueError(f"crop_size {crop!r} is not a positive int")
    except (TypeError, ValueError, KeyError, AttributeError) as err:
        raise UserError(f"{where}: damaged checkpoint metadata 'synthforge' ({str(err)[:120]})") from None


def _safe_torch_load(p: Path, where: str) -> Any:
    """``torch.load(p, weights_only=True)`` on the CPU; every failure -> one-line UserError starting with ``where``."""
    if not p.is_file():
        raise UserError(f"{where}: no such checkpoint file")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if _UNSAFE.search(str(err)):
            raise UserError(
                f"{where}: refused: the checkpoint holds pickled objects that would run code when loaded "
                "(only tensors and plain data are accepted)"
            ) from None
        raise UserError(f"{where}: not a PyTorch checkpoint or damaged (cannot unpickle it)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, IndexError, KeyError) as err:
        first = str(err).splitlines()[0].split(". ")[0][:120] if str(err) else type(err).__name__
        raise UserError(f"{where}: not a PyTorch checkpoint or damaged/truncated ({first})") from None


def load_weights(path: str | Path, option: str | None = None) -> Any:
    """Read a plain weights file (e.g. a ``state_dict`` saved with ``torch.save``) safely: tensors and plain data only.

    Raises:
        UserError: naming ``option`` and the file when it is missing, damaged or holds objects that would run code.
    """
    return _safe_torch_load(Path(path), _where(Path(path), option))


def checkpoint_kind(ckpt: dict[str, Any]) -> str | None:
    """:data:`STAGE1`, :data:`FINETUNE` or None, from the state-dict keys (and the hyper-parameters' names)."""
    keys = [k for k in ckpt.get("state_dict", {}) if isinstance(k, str)]
    hp = ckpt.get("hyper_parameters") or {}
    if any(k.startswith("stage1.") for k in keys) or (isinstance(hp, dict) and "stage1_config" in hp):
        return FINETUNE
    if any(k.startswith("net.") for k in keys):
        return STAGE1
    return None


def check_hyper_parameters(hp: Any, where: str) -> None:
    """Refuse hyper-parameters that would make the network builder import or call something outside our packages.

    Raises:
        UserError: a ``class_path`` outside :data:`ALLOWED_CLASS_PREFIXES`, an unknown ``_instantiator``, or
            hyper-parameters that are not a dict.
    """
    if hp is None:
        return
    if not isinstance(hp, dict):
        raise UserError(f"{where}: damaged checkpoint (hyper_parameters is a {type(hp).__name__}, not a dict)")

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            cp = node.get("class_path")
            if cp is not None and not (isinstance(cp, str) and cp.startswith(ALLOWED_CLASS_PREFIXES)):
                raise UserError(
                    f"{where}: refused: the checkpoint's config names class_path {str(cp)[:80]!r}, "
                    f"outside {', '.join(p.rstrip('.') for p in ALLOWED_CLASS_PREFIXES)}"
                )
            inst = node.get("_instantiator")
            if inst is not None and inst not in ALLOWED_INSTANTIATORS:
                raise UserError(f"{where}: refused: unknown _instantiator {str(inst)[:80]!r} in the checkpoint")
            for v in node.values():
                walk(v)
        elif isinstance(node, (list, tuple)):
            for v in node:
                walk(v)

    walk(hp)


def _init_kwargs(hp: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (hp or {}).items() if not k.startswith("_")}


CROP_BOXES = ("landmarks", "label", "image")
"""What a training crop's square window is sized from (``label_finetune.datasets.common.CropConfig.box``)."""


def stage1_crop_scale(ckpt: dict[str, Any]) -> float | None:
    """``data.crop_scale`` a stage-I checkpoint was trained with (crop side / landmark-box side, from its datamodule
    hyper-parameters), or None when the checkpoint does not record it."""
    dm = ckpt.get("datamodule_hyper_parameters") or {}
    value = dm.get("crop_scale") if isinstance(dm, dict) else None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    return float(value) if ok else None


def finetune_crop(ckpt: dict[str, Any], path: str | Path, option: str | None = None) -> tuple[str, float]:
    """``(box, scale)`` of the crops a fine-tuned checkpoint was trained on (see :data:`CROP_BOXES`).

    From the datamodule's ``crop`` hyper-parameters (``FinetuneDataModule`` records them as plain data); for
    checkpoints written before it did, the dataset's default crop
    (``label_finetune.datasets.datamodule.DATASETS[dataset].crop``), which every shipped finetune config uses.

    Raises:
        UserError: unknown dataset or a malformed crop entry (damaged checkpoint), naming ``option`` and the file.
    """
    from label_finetune.datasets.datamodule import DATASETS

    where = _where(Path(path), option)
    hp = ckpt.get("hyper_parameters") or {}
    dataset = hp.get("dataset", "w300") if isinstance(hp, dict) else None  # FinetuneSystem's default
    if dataset not in DATASETS:
        raise UserError(f"{where}: damaged checkpoint (unknown fine-tuning dataset {str(dataset)[:40]!r})")
    default = DATASETS[dataset].crop
    dm = ckpt.get("datamodule_hyper_parameters") or {}
    crop = dm.get("crop") if isinstance(dm, dict) else None
    if isinstance(crop, dict) and isinstance(crop.get("init_args"), dict):  # jsonargparse's class form
        crop = crop["init_args"]
    crop = crop if isinstance(crop, dict) else {}
    box, scale = crop.get("box", default.box), crop.get("scale", default.scale)
    if box not in CROP_BOXES or isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise UserError(f"{where}: damaged checkpoint (crop box {str(box)[:20]!r}, scale {str(scale)[:20]!r})")
    return str(box), float(scale)


def build_stage1_system(
    ckpt: dict[str, Any], path: str | Path, option: str | None = None, net: nn.Module | None = None
) -> MultiTaskSystem:
    """The :class:`~synthforge.system.MultiTaskSystem` of a stage-I checkpoint read by :func:`load_checkpoint`.

    Args:
        ckpt: the checkpoint dict.
        path, option: for error messages.
        net: an already built network of the same architecture, for checkpoints whose hyper-parameters lack the
            network config (saved outside the CLI); default: rebuilt from ``hyper_parameters["net"]``.

    Returns:
        The system in eval mode on the CPU, with its weights, label space and crop size restored.
    """
    from lightning.pytorch.cli import instantiate_module

    from synthforge.system import MultiTaskSystem

    where = _where(Path(path), option)
    kwargs = _init_kwargs(ckpt.get("hyper_parameters"))
    try:
        if net is not None:
            kwargs["net"] = net
            system = MultiTaskSystem(**kwargs)
        elif isinstance(kwargs.get("net"), dict):
            system = instantiate_module(MultiTaskSystem, kwargs)
        else:
            raise UserError(
                f"{where}: the checkpoint has no network config (not written by synthforge train); "
                "pass the network explicitly"
            )
        system.on_load_checkpoint(ckpt)
        system.load_state_dict(ckpt["state_dict"])
    except UserError:
        raise
    except (TypeError, ValueError, KeyError, RuntimeError, AttributeError, ImportError, ArgumentError) as err:
        first = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise UserError(f"{where}: stage-I checkpoint does not match its network config ({first})") from None
    return system.eval()


def build_finetune_system(
    ckpt: dict[str, Any], path: str | Path, option: str | None = None, **overrides: Any
) -> FinetuneSystem:
    """The :class:`~label_finetune.system.FinetuneSystem` of a fine-tuned checkpoint read by :func:`load_checkpoint`.

    Args:
        ckpt: the checkpoint dict.
        path, option: for error messages.
        overrides: constructor arguments replacing the stored hyper-parameters (e.g. ``backbone``).

    Returns:
        The system in eval mode on the CPU with its weights (frozen stage I and adapters).
    """
    from label_finetune.system import FinetuneSystem

    where = _where(Path(path), option)
    kwargs = {**_init_kwargs(ckpt.get("hyper_parameters")), **overrides}
    try:
        model = FinetuneSystem(**kwargs)
        model.load_state_dict(ckpt["state_dict"])
    except UserError:
        raise
    except (TypeError, ValueError, KeyError, RuntimeError, AttributeError, ImportError, ArgumentError) as err:
        first = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise UserError(f"{where}: fine-tuned checkpoint does not match its config ({first})") from None
    return model.eval()
