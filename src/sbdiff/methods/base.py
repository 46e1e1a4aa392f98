"""The interface every method implements for the shared training loop."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from ..config import Config
from ..model import PathVAE


class Method:
    """A preset of the path-VAE trainer: builds the model and supplies its losses.

    Subclasses implement :meth:`build` and :meth:`losses`; :meth:`prior_loss` and
    :meth:`trainable` have defaults.
    """

    name = "method"
    #: True for methods that bridge two data sets (``data`` at t = 0, a second data set as the prior
    #: at t = T, ``decode`` samples the learned conditional plan); the benchmark harness
    #: (:mod:`sbdiff.bench.runner`) scores such methods on the conditional plan (cBW2-UVP).
    bridges = False
    #: Set True when some trainable parameters get no gradient in a step (e.g. an alternating
    #: schedule that trains one network at a time under ``torch.no_grad`` for the other); DDP then
    #: looks for unused parameters. Do not toggle ``requires_grad`` during training: DDP fixes the
    #: set of reduced parameters when it wraps the model.
    ddp_find_unused_parameters = False

    def __init__(self, config: Config):
        self.config = config

    def build(self, data: np.ndarray, prior: np.ndarray | None = None) -> PathVAE:
        """A fresh model for data of shape ``(N, d)`` (data coordinates; used for the standardisation).

        ``prior``: bridge mode (``data.prior`` a data set; :data:`~sbdiff.config.BRIDGE_METHODS`), the
        prior-side samples ``(M, d)`` in data coordinates, kept as ``PathVAE.prior_data``."""
        raise NotImplementedError

    # -- hooks of the training loop (defaults: a stateless method with one optimiser) --------------
    def begin_step(self, model: PathVAE, ema_model: PathVAE, step: int) -> None:
        """Called before optimiser step ``step`` (0-based, the count of steps done), on every rank,
        outside autograd: switch half-bridges, refresh trajectory caches, update parameters that are
        not optimised by the loop's optimiser. ``ema_model`` holds the averaged weights. Randomness
        must come from generators seeded by ``(config.seed, step, …)``
        (:func:`sbdiff.distributed.step_generator` with streams ``>= 1000``), so that a resumed run
        repeats it."""

    def max_steps(self) -> int | None:
        """Steps after which the method's own schedule is complete (``None``: no limit); training
        stops at the smaller of this and ``train.steps``."""
        return None

    def lr_factor(self, step: int) -> float:
        """Factor on ``train.lr`` at step ``step`` (after the warm-up), e.g. a decay within each
        half-bridge; 1 by default."""
        return 1.0

    def checkpoint_due(self, step: int) -> bool:
        """True when a checkpoint should be written after step ``step`` (e.g. the end of a
        half-bridge), besides the loop's regular cadence."""
        return False

    def losses(self, model: PathVAE, batch: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """Losses on a batch ``(B, d)`` in model coordinates.

        Returns a dict with ``loss`` (scalar, differentiated by the loop) and ``drift_matching``
        (scalar); may add ``prior_loss``.
        """
        raise NotImplementedError

    def prior_loss(self, model: PathVAE, batch: Tensor, generator: torch.Generator) -> Tensor:
        """Monitor of the prior loss ``KL(q_T ‖ p_prior)`` on a batch (scalar, nats)."""
        raise NotImplementedError

    def trainable(self, model: PathVAE) -> list[nn.Parameter]:
        """Parameters the optimiser updates."""
        return [p for p in model.parameters() if p.requires_grad]

    def state_dict(self) -> dict:
        """Schedule state to checkpoint (e.g. the current IPF iteration and half-bridge of an
        alternating method); nested dicts/lists of numbers, strings and tensors. Stateless methods
        return ``{}``. Restored by :meth:`load_state_dict` on resume (tensors come back on the CPU)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore the state returned by :meth:`state_dict` (called after :meth:`build`); the
        default, for stateless methods, does nothing."""
