"""The shared form of encoders and decoders: a reference SDE plus a control (DESIGN §2)."""

from __future__ import annotations

from torch import Tensor, nn

from ._utils import append_dims, as_time
from .references import ReferenceSDE


class ControlledSDE(nn.Module):
    """Drift ``f(x, t) + sign·g(t)·control(x, t)``: ``sign = +1`` for the encoder (``f + g z_φ``),
    ``−1`` for the decoder (``f − g ẑ_θ``, the backward drift read in forward time).

    Parameters
    ----------
    reference : ReferenceSDE
        Supplies ``f`` and ``g``.
    """

    sign: float = 1.0

    def __init__(self, reference: ReferenceSDE):
        super().__init__()
        self.reference = reference

    def control(self, x: Tensor, t: Tensor, c: Tensor | None = None) -> Tensor:
        """The control (``z_φ`` or ``ẑ_θ``) at ``x`` of shape ``(B, ...)``, ``t`` of shape ``(B,)``, given
        the context ``c`` (``(B,)`` labels or ``(B, k)`` values in model form, one row per row of ``x``;
        ``None``: unconditional, or the null context of a conditional network; DESIGN §4.6)."""
        raise NotImplementedError

    def drift(self, x: Tensor, t: Tensor | float, c: Tensor | None = None) -> Tensor:
        """``f(x, t) + sign·g(t)·control(x, t, c)``, shape of ``x``."""
        t = as_time(t, x)
        f, g = self.reference.sde(x, t)
        return f + self.sign * append_dims(g, x.ndim) * control_at(self, x, t, c)


def control_at(part, x: Tensor, t: Tensor, c: Tensor | None) -> Tensor:
    """``part.control(x, t, c)``, called without ``c`` when there is no context (closed-form controls
    of tests and benchmarks take ``(x, t)`` only)."""
    return part.control(x, t) if c is None else part.control(x, t, c)
