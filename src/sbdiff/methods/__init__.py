"""Training schedules of the named methods; each is a preset of the path-VAE trainer (DESIGN §2).

A method builds a :class:`~sbdiff.model.PathVAE` for the data and supplies its losses; the loop in
:mod:`sbdiff.train` is shared.
"""

from __future__ import annotations

from .._utils import SbdiffError
from ..config import AVAILABLE_METHODS, METHODS, Config
from .base import Method
from .dsb import DSB
from .sbfbsde import SBFBSDE
from .sgm import SGM
from .vsdm import VSDM

__all__ = ["Method", "SGM", "DSB", "VSDM", "SBFBSDE", "make_method"]

_REGISTRY: dict[str, type[Method]] = {"sgm": SGM, "dsb": DSB, "vsdm": VSDM, "sbfbsde": SBFBSDE}


def make_method(config: Config) -> Method:
    """The method object named by ``config.method``."""
    if config.method not in METHODS:
        raise SbdiffError(f"unknown method '{config.method}'; choose from {', '.join(METHODS)}")
    if config.method not in _REGISTRY:
        raise SbdiffError(f"method '{config.method}' is not available yet (available: {', '.join(AVAILABLE_METHODS)})")
    return _REGISTRY[config.method](config)
