"""The registry of presets (methods): ``@register("name")`` on a :class:`~sbdiff.methods.Method`
subclass makes ``config.method = "name"`` train it.

This module sits below both :mod:`sbdiff.config` and :mod:`sbdiff.methods` (it imports neither):
a preset registers itself when its module is imported, and the config reads each registered class's
self-description (its settings section, defaults, checks) from here. The built-in presets are
imported by :mod:`sbdiff.methods`, which the package imports, so they are always registered.
"""

from __future__ import annotations

from ._utils import SbdiffError

__all__ = ["REGISTRY", "register", "method_class", "method_names"]

#: ``{name: class}`` of every registered preset, in registration order.
REGISTRY: dict[str, type] = {}


def register(name: str):
    """Class decorator: register a preset as ``name`` (sets ``cls.name``).

    Registering a second class under a name already taken is refused (a typo would otherwise
    silently replace a built-in preset); re-registering the same class is a no-op.
    """
    if not name or not name.replace("_", "").isalnum():
        raise SbdiffError(f"a preset name must be a non-empty identifier, got '{name}'")

    def decorate(cls: type) -> type:
        old = REGISTRY.get(name)
        if old is not None and old is not cls and (old.__module__, old.__qualname__) != (cls.__module__,
                                                                                          cls.__qualname__):
            raise SbdiffError(f"a preset named '{name}' is already registered ({old.__module__}.{old.__qualname__})")
        cls.name = name
        REGISTRY[name] = cls
        return cls

    return decorate


def method_names() -> tuple[str, ...]:
    """The registered preset names."""
    return tuple(REGISTRY)


def method_class(name: str) -> type:
    """The class registered as ``name``; an unknown name is refused with the list of choices."""
    if name not in REGISTRY:
        raise SbdiffError(f"unknown method '{name}'; choose from {', '.join(REGISTRY)}")
    return REGISTRY[name]
