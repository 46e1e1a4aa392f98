"""The alternating schedule of half-bridges shared by the IPF-type methods (DSB, SB-FBSDE; DESIGN §2).

Step ``s`` of training belongs to one *phase*: iteration ``n`` first fits the decoder (the encoder
frozen), then the encoder (the decoder frozen). Iteration 0's decoder phase (the reversal of the
reference, i.e. the score model of the foundation) may be longer. The schedule ends after the decoder
phase of the last iteration, so the last network fitted is the decoder that generates.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._utils import SbdiffError

__all__ = ["Phase", "HalfBridgeSchedule"]


@dataclass(frozen=True)
class Phase:
    """One half-bridge: ``iteration`` (0-based), ``role`` (``"decoder"`` or ``"encoder"``, the network
    being fitted) and its steps ``[start, end)``."""

    iteration: int
    role: str
    start: int
    end: int

    @property
    def index(self) -> int:
        """Position in the schedule: ``2·iteration`` for a decoder phase, ``2·iteration + 1`` for an encoder's."""
        return 2 * self.iteration + (self.role == "encoder")


@dataclass(frozen=True)
class HalfBridgeSchedule:
    """Phases of ``half_steps`` optimiser steps, alternating decoder / encoder.

    Parameters
    ----------
    iterations : int
        Number of decoder phases (IPF iterations); the encoder is fitted between them, so there are
        ``2·iterations − 1`` phases. 0: no end (the training budget decides).
    half_steps : int
        Steps of every phase except the first.
    first_steps : int
        Steps of the first decoder phase (0: ``half_steps``).
    """

    iterations: int
    half_steps: int
    first_steps: int = 0

    def __post_init__(self):
        if self.iterations < 0 or self.half_steps < 1 or self.first_steps < 0:
            raise SbdiffError(f"bad half-bridge schedule: iterations {self.iterations} (>= 0), half_steps "
                              f"{self.half_steps} (>= 1), first_steps {self.first_steps} (>= 0)")

    @property
    def first(self) -> int:
        return self.first_steps or self.half_steps

    def total_steps(self) -> int | None:
        """Steps of the whole schedule, ``None`` when ``iterations == 0``."""
        if self.iterations == 0:
            return None
        return self.first + 2 * (self.iterations - 1) * self.half_steps

    def phase(self, step: int) -> Phase:
        """The phase that step ``step`` (0-based) belongs to; past the end, the last decoder phase."""
        if step < self.first:
            return Phase(0, "decoder", 0, self.first)
        k = (step - self.first) // self.half_steps + 1  # phase index
        if self.iterations and k > 2 * (self.iterations - 1):
            k = 2 * (self.iterations - 1)
            if k == 0:
                return Phase(0, "decoder", 0, self.first)
        start = self.first + (k - 1) * self.half_steps
        return Phase(k // 2 if k % 2 == 0 else (k - 1) // 2, "decoder" if k % 2 == 0 else "encoder",
                     start, start + self.half_steps)
