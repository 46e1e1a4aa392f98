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

    def __init__(self, config: Config):
        self.config = config

    def build(self, data: np.ndarray) -> PathVAE:
        """A fresh model for data of shape ``(N, d)`` (data coordinates; used for the standardisation)."""
        raise NotImplementedError

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
