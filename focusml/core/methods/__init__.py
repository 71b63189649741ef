"""Method registry: every `Method` subclass with a `name` in a module of this package.

Adding a method means adding one module here; `focusml train`, `focusml methods`, the
MLproject generator and the tuner all read `METHODS`.
"""

from __future__ import annotations

import importlib
import pkgutil

from focusml import FocusmlError
from focusml.core.methods.base import Batch, Method, Param, PrepareContext

FAMILIES = ("reference", "replacement", "loss", "peer", "refinement")


def _discover() -> dict[str, type[Method]]:
    found: dict[str, type[Method]] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name == "base" or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, Method) and obj.name and obj.__module__ == module.__name__:
                found[obj.name] = obj
    return dict(sorted(found.items(), key=lambda kv: (FAMILIES.index(kv[1].family), kv[0])))


METHODS: dict[str, type[Method]] = _discover()


def get(name: str) -> type[Method]:
    if name not in METHODS:
        raise FocusmlError(f"unknown method '{name}'. Known methods: {', '.join(METHODS)} (see `focusml methods`).")
    return METHODS[name]


def all_params() -> dict[str, Param]:
    """Union of every method's options by name (first definition wins for help text)."""
    out: dict[str, Param] = {}
    for cls in METHODS.values():
        for p in cls.params:
            out.setdefault(p.name, p)
    return out


__all__ = ["Batch", "FAMILIES", "METHODS", "Method", "Param", "PrepareContext", "all_params", "get"]
