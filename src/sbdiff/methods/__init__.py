"""The presets of the path-VAE trainer (DESIGN §2): each is one module holding a registered
:class:`Method` subclass that builds a :class:`~sbdiff.model.PathVAE` for the data and supplies its
losses; the loop in :mod:`sbdiff.train` is shared. Importing this package registers the built-in
presets (:mod:`sbdiff.registry`), the four of the seed papers first and then every other public module
of the package; a preset registers itself with ``@register("name")`` (docs/presets.md, "Adding a
preset"), in this package or in a module of the user's.
"""

from __future__ import annotations

import importlib
import pkgutil

from ..config import Config
from ..registry import REGISTRY, method_class, method_names, register
from .base import Method, build_network, check_flat
from .sgm import SGM  # registration order = the order of the config sections (dsb, vsdm, sbfbsde)
from .dsb import DSB  # noqa: E402
from .vsdm import VSDM  # noqa: E402
from .sbfbsde import SBFBSDE  # noqa: E402

__all__ = ["Method", "build_network", "check_flat", "SGM", "DSB", "VSDM", "SBFBSDE", "REGISTRY", "register",
           "method_class", "method_names", "make_method"]


# Any other public module of this package is a preset too: importing it registers it, so a new
# built-in preset is one file here (and its test file), with no list to extend.
for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_") and _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")


def make_method(config: Config) -> Method:
    """The method object named by ``config.method``."""
    return method_class(config.method)(config)
