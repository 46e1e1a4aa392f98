"""Training schedules of the named methods; each is a preset of the path-VAE trainer (DESIGN §2).

A method builds a :class:`~sbdiff.model.PathVAE` for the data and supplies its losses; the loop in
:mod:`sbdiff.train` is shared.
"""

from __future__ import annotations

from .._utils import SbdiffError
from ..config import Config
from .base import Method
from .dsb import DSB
from .sbfbsde import SBFBSDE
from .sgm import SGM
from .vsdm import VSDM

__all__ = ["Method", "SGM", "DSB", "VSDM", "SBFBSDE", "REGISTRY", "METHODS", "method_class", "make_method"]

#: The one registry of methods: ``config.method`` names a key; the class's attributes (``bridges``,
#: ``defaults``, ``schedule_ends``) are what :meth:`sbdiff.config.Config.validate` reads.
REGISTRY: dict[str, type[Method]] = {"sgm": SGM, "dsb": DSB, "sbfbsde": SBFBSDE, "vsdm": VSDM}
METHODS = tuple(REGISTRY)


def method_class(name: str) -> type[Method]:
    """The class registered as ``name``."""
    if name not in REGISTRY:
        raise SbdiffError(f"unknown method '{name}'; choose from {', '.join(METHODS)}")
    return REGISTRY[name]


def make_method(config: Config) -> Method:
    """The method object named by ``config.method``."""
    return method_class(config.method)(config)
