"""Export a trained network as one ONNX or TorchScript file with a fixed, documented interface.

Both formats hold the same graph, :class:`ExportWrapper` around the network of a checkpoint (stage I, or stage I +
a fine-tuned stage-II head as one graph), and so take the same input and return the same outputs in the same order:

* input ``image``: (B, 3, S, S) float32 RGB in [0, 1], NCHW. Nothing else is done to it before the graph: the
  network's own normalisation (the trunk's ImageNet mean / std, when it has one) is part of the graph. B is free
  (dynamic axis), S is fixed at export time (``--image-size``, default the checkpoint's training crop size).
* outputs, the entries of :data:`OUTPUTS` the network has, in that order (stage I: ``seg_logits``, ``depth``,
  ``landmarks``, plus ``normal`` / ``uv`` when it has those heads; a fine-tuned model: the ones its tasks give).

The names, shapes and meanings, the input convention, crop size and crop scale, label space, landmark count,
checkpoint kind and package version are written into the file as one JSON document (:func:`export_metadata`):
ONNX ``metadata_props["synthforge"]``, TorchScript ``_extra_files["synthforge.json"]``; :func:`read_metadata`
reads it back from either without running anything in the file.

Exporters (torch 2.14):

* ONNX: ``torch.onnx.export(dynamo=True)`` (the default, ``torch.export``-based exporter; it needs the ``onnx``,
  ``onnxscript`` and ``onnx-ir`` packages, all offline), opset :data:`ONNX_OPSET`, weights inside the one file.
  The TorchScript-based ONNX exporter (``dynamo=False``) is deprecated upstream and not used.
* TorchScript: ``torch.jit.trace``. It still works in torch 2.14 but is deprecated upstream ("switch to
  torch.compile or torch.export", and unsupported on Python 3.14+); its FutureWarning is silenced here.
"""

from __future__ import annotations

import contextlib
import json
import math
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from next3d_gen.errors import UserError
from next3d_gen.h5 import installed_version
from next3d_gen.labels import LabelSpace
from synthforge.inference import CropDefinition, default_min_share

FORMATS = ("onnx", "torchscript")
"""``--format`` values."""

ONNX_OPSET = 18
"""Default-domain opset of exported ONNX files (the opset torch 2.14's ONNX function library is written for, so no
version conversion runs; onnxruntime >= 1.14 runs it)."""

METADATA_KEY = "synthforge"
"""ONNX ``metadata_props`` key holding the metadata JSON."""

METADATA_FILE = "synthforge.json"
"""TorchScript ``_extra_files`` entry holding the metadata JSON (stored as ``<archive>/extra/synthforge.json``)."""

METADATA_VERSION = 1
"""Version of the metadata document's layout."""

INPUT_NAME = "image"
"""Name of the one graph input."""

BATCH_AXIS = "batch"
"""Name of the dynamic batch axis (ONNX ``dim_param``; "B" in the documented shapes)."""

EXAMPLE_BATCH = 2
"""Batch size of the example input the graph is captured with (not 1: ``torch.export`` would specialise a size-1
axis to the constant 1)."""

SELF_CHECK_ATOL = 1e-4
"""The exported file must match PyTorch within ``SELF_CHECK_ATOL * max(1, max |PyTorch output|)`` (fp32)."""


BOX_SIDE = {
    False: "max(x1 - x0, y1 - y0, 1) of the box through the extreme points' pixel centres "
    "(synthforge.data.transforms.landmark_box)",
    True: "max(x1 - x0 + 1, y1 - y0 + 1): the extreme pixels counted (label_finetune.datasets.common."
    "square_crop_affine)",
}
"""How the box side the crop scale multiplies is measured, by ``CropDefinition.pixel_extent``."""


@dataclass(frozen=True)
class OutputSpec:
    """One output of the exported graph.

    Attributes:
        name: graph output name.
        source: attribute of :class:`~synthforge.models.TaskOutputs` / key of ``FinetuneSystem.forward``'s dict
            holding it.
        shape: documented shape (B = batch, S = crop side, C = classes, K = landmarks).
        meaning: units, range and convention.
    """

    name: str
    source: str
    shape: str
    meaning: str


OUTPUTS: tuple[OutputSpec, ...] = (
    OutputSpec(
        "seg_logits",
        "seg",
        "(B, C, S, S)",
        "float32 segmentation logits over the C classes of label_space (softmax over axis 1 gives the class "
        "probabilities, argmax the class ids)",
    ),
    OutputSpec(
        "depth",
        "depth",
        "(B, 1, S, S)",
        "float32 relative depth in metres: camera z minus the head's median z (defined up to an offset; "
        "meaningful on the face/head foreground only)",
    ),
    OutputSpec(
        "landmarks",
        "landmarks",
        "(B, K, 2)",
        "float32 (x, y) in crop pixels, integer values at pixel centres (the crop spans [-0.5, S - 0.5]); "
        "point order of the checkpoint's landmark scheme (iBUG 68 for stage I and 300W)",
    ),
    OutputSpec(
        "normal",
        "normal",
        "(B, 3, S, S)",
        "float32 camera-frame unit normals (OpenCV axes: x right, y down, z forward)",
    ),
    OutputSpec("uv", "uv", "(B, 2, S, S)", "float32 template UV coordinates (-1 on background)"),
)
"""Every output an exported graph can have, in graph order; a graph has those its network produces."""


def network_outputs(out: Any) -> dict[str, torch.Tensor]:
    """The exportable outputs of one forward result, by graph output name.

    Args:
        out: a :class:`~synthforge.models.TaskOutputs` (stage I) or the dict of ``FinetuneSystem.forward``
            (stage II); any object or mapping with the :attr:`OutputSpec.source` names works.

    Returns:
        ``{spec.name: tensor}`` for the :data:`OUTPUTS` present (not None), in :data:`OUTPUTS` order.
    """
    found: dict[str, torch.Tensor] = {}
    for spec in OUTPUTS:
        value = out.get(spec.source) if isinstance(out, dict) else getattr(out, spec.source, None)
        if value is not None:
            found[spec.name] = value
    return found


class ExportWrapper(nn.Module):
    """The exported graph: the network with a fixed tuple of float32 outputs.

    Args:
        net: the network, mapping (B, 3, S, S) float32 RGB in [0, 1] to a ``TaskOutputs`` or a dict
            (see :func:`network_outputs`); it is put in eval mode.
        output_names: names from :data:`OUTPUTS` the network produces (:func:`probe` finds them); they are put in
            :data:`OUTPUTS` order.

    Forward: ``image`` (B, 3, S, S) float32 in [0, 1] -> tuple of tensors named :attr:`output_names`, float32,
    contiguous (shapes and meanings: :data:`OUTPUTS`).
    """

    def __init__(self, net: nn.Module, output_names: Sequence[str]) -> None:
        super().__init__()
        self.net = net.eval()
        order = [s.name for s in OUTPUTS]
        if not output_names or any(n not in order for n in output_names):
            raise ValueError(f"output_names must be a non-empty subset of {order}, got {output_names}")
        self.output_names: tuple[str, ...] = tuple(sorted(output_names, key=order.index))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        named = network_outputs(self.net(image))
        return tuple(named[n].float().contiguous() for n in self.output_names)


def _device(net: nn.Module) -> torch.device:
    p = next(iter(net.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def probe(net: nn.Module, image_size: int, batch: int = 1) -> dict[str, tuple[int, ...]]:
    """Run ``net`` once on zeros of side ``image_size``; the shapes of the outputs it gives, by graph output name."""
    x = torch.zeros(batch, 3, image_size, image_size, device=_device(net))
    return {k: tuple(v.shape) for k, v in network_outputs(net.eval()(x)).items()}


@dataclass
class ExportSource:
    """A network loaded from a checkpoint with what the exported file must say about it.

    Attributes:
        net: (B, 3, S, S) float RGB in [0, 1] -> ``TaskOutputs`` (stage I) or dict (stage II), eval mode.
        kind: :data:`synthforge.checkpoints.STAGE1` or :data:`~synthforge.checkpoints.FINETUNE`.
        crop_size: side of the training crops, pixels.
        size_divisor: input sides must be multiples of this.
        label_space: classes of ``seg_logits`` (None when the network has no segmentation output).
        crop: how the training crops were cut (:class:`synthforge.inference.CropDefinition`: box kind, scale, how
            the box side is measured), None when the checkpoint does not record it.
        dataset: the fine-tuning benchmark (stage II), else None.
        checkpoint: the checkpoint's file name.
    """

    net: nn.Module
    kind: str
    crop_size: int
    size_divisor: int
    label_space: LabelSpace | None
    crop: CropDefinition | None
    dataset: str | None
    checkpoint: str


def load_export_source(path: str | Path, option: str | None = "--ckpt") -> ExportSource:
    """Load a stage-I (``synthforge train``) or fine-tuned (``synthforge finetune``) checkpoint for export.

    Through :meth:`synthforge.inference.Predictor.from_checkpoint`: the file is read with ``torch.load(
    weights_only=True)`` (nothing in it runs) and the network rebuilt from its stored config; the crop size, crop
    definition, label space and kind come from there.

    Raises:
        UserError: naming ``option`` and the file when it is missing, damaged, unsafe, not a SynthForge checkpoint,
            or lacks its crop size.
    """
    from synthforge.inference import Predictor

    predictor = Predictor.from_checkpoint(path, option=option)
    net = predictor.net.eval()
    # every module's own rule (trunk, heads, hourglass); a fine-tuning adapter without one is checked by the probe
    divisor = max(int(getattr(m, "size_divisor", 1) or 1) for m in net.modules())
    return ExportSource(
        net=net,
        kind=predictor.kind,
        crop_size=predictor.crop_size,
        size_divisor=divisor,
        label_space=predictor.label_space,
        crop=predictor.crop,
        dataset=predictor.dataset,
        checkpoint=Path(path).name,
    )


def check_image_size(source: ExportSource, image_size: int, option: str = "--image-size") -> None:
    """Raise a one-line :class:`UserError` naming ``option`` unless ``image_size`` is a positive multiple of the
    network's size divisor (the rule ``MultiTaskSystem.check_data`` applies to ``data.crop_size``) and at most
    4096."""
    d = source.size_divisor
    if image_size <= 0 or image_size > 4096 or image_size % d:
        raise UserError(
            f"{option} {image_size}: must be a multiple of {d} between {d} and 4096 for this network "
            f"(trained at {source.crop_size})"
        )


def build_wrapper(source: ExportSource, image_size: int, option: str = "--image-size") -> ExportWrapper:
    """The :class:`ExportWrapper` of ``source`` at side ``image_size`` (checked, and probed once).

    Raises:
        UserError: naming ``option`` when the size is not allowed or the network cannot run at it.
    """
    check_image_size(source, image_size, option)
    try:
        shapes = probe(source.net, image_size)
    except RuntimeError as err:  # e.g. a fine-tuning adapter with a larger divisor than stage I's
        first = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise UserError(f"{option} {image_size}: the network cannot run at this size ({first})") from None
    if not shapes:
        raise UserError(f"{source.checkpoint}: the network gives none of {', '.join(s.name for s in OUTPUTS)}")
    return ExportWrapper(source.net, tuple(shapes))


def _input_normalisation(net: nn.Module) -> dict[str, Any]:
    """What the graph does to ``image`` before its first convolution (read from the network's trunk)."""
    from synthforge.models.trunk import UNetTrunk

    trunks = [m for m in net.modules() if isinstance(m, UNetTrunk)]
    if trunks and all(t.normalize for t in trunks):
        t = trunks[0]
        return {
            "inside_graph": "(image - mean) / std per channel, ImageNet statistics",
            "mean": [round(v, 6) for v in t.mean.flatten().tolist()],
            "std": [round(v, 6) for v in t.std.flatten().tolist()],
        }
    if trunks and not any(t.normalize for t in trunks):
        return {"inside_graph": "none: the network reads [0, 1] RGB as it is"}
    return {"inside_graph": "unknown (the network has no synthforge UNetTrunk)"}


def export_metadata(source: ExportSource, wrapper: ExportWrapper, image_size: int, fmt: str) -> dict[str, Any]:
    """The JSON document written into the exported file (see the module docstring)."""
    shapes = probe(wrapper.net, image_size)
    specs = {s.name: s for s in OUTPUTS}
    outputs = [
        {
            "name": n,
            "shape": [BATCH_AXIS, *shapes[n][1:]],
            "dtype": "float32",
            "documented_shape": specs[n].shape,
            "meaning": specs[n].meaning,
        }
        for n in wrapper.output_names
    ]
    if "seg_logits" in shapes and source.label_space is not None:
        if shapes["seg_logits"][1] != source.label_space.num_classes:
            raise UserError(
                f"{source.checkpoint}: the network gives {shapes['seg_logits'][1]} classes but its label "
                f"space '{source.label_space.name}' has {source.label_space.num_classes}"
            )
    label_space = json.loads(source.label_space.to_json()) if source.label_space is not None else None
    if "seg_logits" not in shapes:
        label_space = None
    return {
        "metadata_version": METADATA_VERSION,
        "format": fmt,
        "package": "synthforge",
        "package_version": installed_version(),
        "checkpoint_kind": source.kind,
        "checkpoint": source.checkpoint,
        "dataset": source.dataset,
        "input": {
            "name": INPUT_NAME,
            "shape": [BATCH_AXIS, 3, image_size, image_size],
            "dtype": "float32",
            "layout": "NCHW",
            "channels": "RGB",
            "range": [0.0, 1.0],
            "normalization": "none beyond scaling to [0, 1] (uint8 / 255); the network's own normalisation is "
            "part of the graph",
            "network_normalization": _input_normalisation(wrapper.net),
        },
        "outputs": outputs,
        "output_names": list(wrapper.output_names),
        "crop_size": image_size,
        "train_crop_size": source.crop_size,
        "crop": {
            "scale": source.crop.scale if source.crop is not None else None,
            "box": source.crop.box if source.crop is not None else None,
            "box_side": BOX_SIDE[source.crop.pixel_extent] if source.crop is not None else None,
            "meaning": "a square crop of side scale x box_side, centred on the box, resized to crop_size (box "
            "'landmarks': the box of the face's landmarks; 'label': of its labelled pixels; 'image': the "
            "whole image); scale and box are null when the checkpoint does not record them",
        },
        "label_space": label_space,
        "whole_face_classes": {
            "min_share": default_min_share(source.label_space) if label_space is not None else {},
            "meaning": "synthforge predict's gate: in a crop where a listed class wins the argmax on less than this "
            "share of the crop_size x crop_size pixels, that class's probability is set to 0 (specks, e.g. "
            "eyeglasses on bare eyes); the graph's seg_logits are not gated",
        },
        "num_landmarks": int(shapes["landmarks"][1]) if "landmarks" in shapes else 0,
        "pixel_convention": "integer coordinates are pixel centres; the crop spans [-0.5, crop_size - 0.5]",
        "onnx_opset": ONNX_OPSET if fmt == "onnx" else None,
    }


def _example(image_size: int, device: torch.device, batch: int = EXAMPLE_BATCH) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(batch, 3, image_size, image_size, generator=g).to(device)


@contextlib.contextmanager
def _no_torchscript_deprecation() -> Iterator[None]:
    """Silence torch 2.14's FutureWarnings that torch.jit.trace / save / load are deprecated (stated in the docs)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated", category=FutureWarning)
        yield


@contextlib.contextmanager
def _lightning_tracing(module: nn.Module) -> Iterator[None]:
    """Let ``torch.jit.trace`` walk a LightningModule (the fine-tuned system) that has no Trainer.

    The tracer probes every attribute of every submodule; a LightningModule's ``trainer`` property raises unless the
    class flag ``_jit_is_scripting`` is set, which is what ``LightningModule.to_torchscript`` sets around tracing.
    """
    classes = {type(m) for m in module.modules() if hasattr(type(m), "_jit_is_scripting")}
    saved = {c: c.__dict__.get("_jit_is_scripting") for c in classes}
    try:
        for c in classes:
            c._jit_is_scripting = True
        yield
    finally:
        for c, value in saved.items():
            if value is None:
                del c._jit_is_scripting  # back to the inherited LightningModule default
            else:
                c._jit_is_scripting = value


@torch.no_grad()
def export_torchscript(wrapper: ExportWrapper, image_size: int, path: str | Path, metadata: dict[str, Any]) -> None:
    """Trace ``wrapper`` at side ``image_size`` (batch free) and save it with ``metadata`` to ``path``."""
    example = _example(image_size, _device(wrapper))
    with _no_torchscript_deprecation(), _lightning_tracing(wrapper):
        traced = torch.jit.trace(wrapper.eval(), example, check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={METADATA_FILE: json.dumps(metadata, indent=1)})


def onnx_available() -> str | None:
    """None when the ONNX exporter and runtime can be imported, else the missing package's name."""
    import importlib.util

    for name in ("onnx", "onnxscript", "onnx_ir", "onnxruntime"):
        if importlib.util.find_spec(name) is None:
            return name.replace("_", "-")
    return None


@torch.no_grad()
def export_onnx(wrapper: ExportWrapper, image_size: int, path: str | Path, metadata: dict[str, Any]) -> None:
    """Export ``wrapper`` at side ``image_size`` (dynamic batch axis) with the dynamo exporter to one ``.onnx`` file
    (weights inside) with ``metadata`` in ``metadata_props``; the model is checked with ``onnx.checker``."""
    import onnx

    example = _example(image_size, _device(wrapper))
    batch = torch.export.Dim(BATCH_AXIS, min=1)
    program = torch.onnx.export(
        wrapper.eval(),
        (example,),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=list(wrapper.output_names),
        dynamic_shapes={INPUT_NAME: {0: batch}},
        opset_version=ONNX_OPSET,
        optimize=True,
        verbose=False,
    )
    proto = program.model_proto
    proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(metadata, indent=1))
    proto.doc_string = (
        f"SynthForge {metadata['checkpoint_kind']} network: {INPUT_NAME} (B, 3, {image_size}, "
        f"{image_size}) float32 RGB in [0, 1] -> {', '.join(wrapper.output_names)}; details in "
        f"metadata_props['{METADATA_KEY}']"
    )
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(path))


EXPORTERS: dict[str, Callable[[ExportWrapper, int, str | Path, dict[str, Any]], None]] = {
    "onnx": export_onnx,
    "torchscript": export_torchscript,
}


def read_metadata(path: str | Path, fmt: str) -> dict[str, Any]:
    """The metadata JSON of an exported file, read without running anything in it.

    Raises:
        UserError: naming the file when it holds no SynthForge metadata.
    """
    text: str | None = None
    if fmt == "onnx":
        import onnx

        model = onnx.load_model(str(path), load_external_data=False)
        text = next((p.value for p in model.metadata_props if p.key == METADATA_KEY), None)
    elif fmt == "torchscript":
        with zipfile.ZipFile(path) as zf:
            name = next((n for n in zf.namelist() if n.endswith(f"/extra/{METADATA_FILE}")), None)
            text = zf.read(name).decode("utf-8") if name else None
    else:
        raise ValueError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    if text is None:
        raise UserError(f"{path}: no SynthForge metadata in this {fmt} file")
    return json.loads(text)


def run_exported(path: str | Path, fmt: str, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Run an exported file (one we wrote: TorchScript files hold code) on ``image`` (B, 3, S, S) float32 in [0, 1].

    ONNX runs in onnxruntime (all its available execution providers, in its order of preference), TorchScript in
    ``torch.jit.load`` on ``image``'s device. Returns the outputs in graph order, on ``image``'s device.
    """
    if fmt == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(torch.get_num_threads(), 1)
        session = ort.InferenceSession(str(path), options, providers=ort.get_available_providers())
        outs = session.run(None, {INPUT_NAME: image.detach().cpu().numpy()})
        return tuple(torch.from_numpy(o).to(image.device) for o in outs)
    if fmt == "torchscript":
        with _no_torchscript_deprecation():
            module = torch.jit.load(str(path), map_location=image.device)
        with torch.no_grad():
            return tuple(module(image))
    raise ValueError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")


def max_abs_differences(
    reference: tuple[torch.Tensor, ...], exported: tuple[torch.Tensor, ...], names: tuple[str, ...]
) -> dict[str, float]:
    """``{name: max |reference - exported|}`` per output (inf when a shape differs or a value is not finite)."""
    diffs: dict[str, float] = {}
    for name, a, b in zip(names, reference, exported, strict=True):
        if a.shape != b.shape:
            diffs[name] = math.inf
            continue
        d = (a.float() - b.float().to(a.device)).abs()
        diffs[name] = float(d.max()) if bool(torch.isfinite(d).all()) else math.inf
    return diffs


def within_tolerance(reference: tuple[torch.Tensor, ...], diffs: dict[str, float], names: tuple[str, ...]) -> bool:
    """Every output's difference within :data:`SELF_CHECK_ATOL` x max(1, its largest magnitude)."""
    return all(
        diffs[n] <= SELF_CHECK_ATOL * max(1.0, float(r.abs().max())) for n, r in zip(names, reference, strict=True)
    )
