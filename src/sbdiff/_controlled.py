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

    def control(self, x: Tensor, t: Tensor) -> Tensor:
        """The control (``z_φ`` or ``ẑ_θ``) at ``x`` of shape ``(B, ...)``, ``t`` of shape ``(B,)``."""
        raise NotImplementedError

    def drift(self, x: Tensor, t: Tensor | float) -> Tensor:
        """``f(x, t) + sign·g(t)·control(x, t)``, shape of ``x``."""
        t = as_time(t, x)
        f, g = self.reference.sde(x, t)
        return f + self.sign * append_dims(g, x.ndim) * self.control(x, t)
