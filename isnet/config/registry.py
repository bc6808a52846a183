"""The registry of training methods: what can be named in a config's ``methods:`` list.

A method is registered once, by the module that implements it, with its name, its parameter model (the
``method.<name>`` block of a config), how it combines with others and the factory of its training hooks.
The run configuration, the stress test, the benchmark and the docs all ask this registry what exists, so a
plug-in registered here is usable everywhere without editing any other file.

This module sits at the bottom of the package (it imports no other isnet package). The built-in methods
and any installed plug-in are found through the ``isnet.methods`` entry-point group (declared in
``pyproject.toml``), loaded the first time the registry is read; a method can also be registered at run
time with :func:`register_method` (``isnet.methods.register`` does both halves at once).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable, Optional

from pydantic import BaseModel, ConfigDict

ENTRY_POINT_GROUP = "isnet.methods"
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class MethodParams(BaseModel):
    """Base of a method's parameter model. Unknown keys are errors, as everywhere in a config.

    Override :meth:`resolve` to fill values that depend on the rest of the run configuration, and
    :meth:`check` for constraints across sections (raise ``ValueError`` naming the keys)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def resolve(self, cfg: Any, enabled: bool) -> None:
        """Called for every method block of a validated run config (``cfg``), before the checks."""

    def check(self, cfg: Any) -> None:
        """Called when the method is listed in ``cfg.methods``."""


class NoParams(MethodParams):
    """The parameter model of a method without parameters."""


@dataclass(frozen=True)
class MethodSpec:
    """One registered method. ``factory(cfg)`` builds its training hooks (None: plain cross-entropy)."""

    name: str
    params: type[BaseModel] = NoParams
    factory: Optional[Callable[[Any], Any]] = None
    #: computes the forward pass itself; at most one listed method may
    owns_forward: bool = False
    #: cannot be listed with any other method
    alone: bool = False
    #: names it cannot be listed with
    excludes: frozenset[str] = field(default_factory=frozenset)
    summary: str = ""


_SPECS: dict[str, MethodSpec] = {}
_discovered = False


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add (or replace) a method. Its name must be a lower-case identifier; its params a pydantic model."""
    if not _NAME.match(spec.name):
        raise ValueError(f"method name {spec.name!r} must be a lower-case identifier (letters, digits, '_')")
    if not (isinstance(spec.params, type) and issubclass(spec.params, BaseModel)):
        raise TypeError(f"method {spec.name!r}: params must be a pydantic model class, got {spec.params!r}")
    _SPECS[spec.name] = spec
    return spec


def unregister_method(name: str) -> None:
    """Remove a method (for plug-ins registered temporarily, e.g. in tests)."""
    if name != "standard":
        _SPECS.pop(name, None)


def _discover() -> None:
    """Import every module of the ``isnet.methods`` entry-point group once; importing registers them."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as exc:  # a broken plug-in must not hide the others; say which one failed
            raise ImportError(f"the isnet method plug-in {ep.name!r} ({ep.value}) failed to load: "
                              f"{type(exc).__name__}: {exc}") from exc


def method_specs() -> dict[str, MethodSpec]:
    """Every registered method by name (``standard`` first, then alphabetically)."""
    _discover()
    return {"standard": _SPECS["standard"], **{n: _SPECS[n] for n in sorted(_SPECS) if n != "standard"}}


def method_names() -> list[str]:
    return list(method_specs())


def check_combination(names: list[str]) -> list[str]:
    """``names`` as listed, or a ``ValueError`` saying what is wrong (unknown, doubled, incompatible)."""
    specs = method_specs()
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise ValueError(f"unknown method {unknown[0]!r}; registered methods: {', '.join(specs)}")
    if len(set(names)) != len(names):
        raise ValueError("lists a method twice")
    for n in names:
        if specs[n].alone and len(names) > 1:
            raise ValueError(f"{n!r} ({specs[n].summary or 'a method of its own'}) cannot be combined with "
                             f"other methods")
        clash = sorted(specs[n].excludes & set(names))
        if clash:
            raise ValueError(f"{n!r} cannot be combined with {', '.join(map(repr, clash))}")
    owners = [n for n in names if specs[n].owns_forward]
    if len(owners) > 1:
        raise ValueError(f"methods {owners} each compute their own forward pass and cannot be combined")
    return names


register_method(MethodSpec("standard", alone=True, summary="plain cross-entropy"))
