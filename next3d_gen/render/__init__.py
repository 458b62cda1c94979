"""Image renderers behind one protocol (:mod:`next3d_gen.render.base`) and the registry that builds them by name.

Renderer modules are imported only when requested, so asking for ``procedural`` never imports the Next3D adapter.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any

from next3d_gen.errors import UserError
from next3d_gen.render.base import Renderer, RenderOutput, Scene

RENDERERS: dict[str, tuple[str, str, str]] = {
    "procedural": ("next3d_gen.render.procedural", "ProceduralRenderer", "ProceduralConfig"),
    "next3d": ("next3d_gen.render.next3d", "Next3DRenderer", "Next3DConfig"),
}
"""Registry: name -> (module, renderer class, config dataclass) ."""


def build_renderer(name: str, config: Any = None, model: Any = None) -> Renderer:
    """Build the renderer registered as ``name``.

    Args:
        name: a key of :data:`RENDERERS`.
        config: the renderer's config dataclass, or a mapping of its fields (unknown keys raise UserError), or None
            for its defaults.
        model: the ``FlameModel`` that will be posed.

    Raises:
        UserError: unknown name or bad option.
    """
    if name not in RENDERERS:
        raise UserError(f"unknown renderer {name!r} (choose from {', '.join(RENDERERS)})")
    module_name, class_name, config_name = RENDERERS[name]
    module = importlib.import_module(module_name)
    cls = getattr(module, class_name)
    config_cls = getattr(module, config_name, None)
    if config_cls is not None and not isinstance(config, config_cls):
        config = config_from_mapping(config_cls, dict(config or {}), f"renderer.{name}")
    return cls(config, model)


def config_from_mapping(cls: type, data: dict[str, Any], where: str) -> Any:
    """Instantiate the dataclass ``cls`` from ``data``; unknown keys raise UserError naming ``where``."""
    if not dataclasses.is_dataclass(cls):
        return cls(**data)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(names))})")
    try:
        return cls(**data)
    except (TypeError, ValueError) as err:
        raise UserError(f"{where}: {err}") from None


__all__ = ["RENDERERS", "Renderer", "RenderOutput", "Scene", "build_renderer", "config_from_mapping"]
