"""The alternating schedule of the IPF-type presets (DSB, SB-FBSDE; DESIGN §2).

Step ``s`` of training belongs to one *phase*: iteration ``n`` first fits the decoder (the encoder
frozen), then the encoder (the decoder frozen). Iteration 0's decoder phase (the reversal of the
reference, i.e. the score model of the foundation) may be longer, encoder phases may have a length
of their own, and the encoder may stop being fitted after some phases (the decoder phase after the
last one then runs until training stops). A finite schedule ends after the decoder phase of its last
iteration, so the last network fitted is the decoder that generates.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._utils import SbdiffError

__all__ = ["Phase", "PhaseSchedule", "OPEN"]

#: ``end`` of an open-ended phase (the decoder phase after the encoder is frozen for good).
OPEN = 2**62


@dataclass(frozen=True)
class Phase:
    """One half-bridge: ``iteration`` (0-based), ``role`` (``"decoder"`` or ``"encoder"``, the network
    being fitted) and its steps ``[start, end)`` (``end = OPEN``: until training stops)."""

    iteration: int
    role: str
    start: int
    end: int

    @property
    def index(self) -> int:
        """Position in the schedule: ``2·iteration`` for a decoder phase, ``2·iteration + 1`` for an encoder's."""
        return 2 * self.iteration + (self.role == "encoder")


@dataclass(frozen=True)
class PhaseSchedule:
    """Alternating phases: decoder phase 0 (``first_steps``), then encoder phase ``n − 1``
    (``encoder_steps``) and decoder phase ``n`` (``half_steps``) for ``n = 1, 2, …``.

    Parameters
    ----------
    iterations : int
        Decoder phases (IPF iterations); the encoder is fitted between them, so a finite schedule
        has ``2·iterations − 1`` phases. 0: alternate until the training budget ends.
    half_steps : int
        Steps of every decoder phase after the first (and of encoder phases, by default).
    first_steps, encoder_steps : int
        Steps of the first decoder phase and of each encoder phase (0: ``half_steps``).
    freeze_encoder : int
        Fit the encoder in this many phases only; the decoder phase after the last one then runs
        until training stops (0: no freeze).
    """

    iterations: int
    half_steps: int
    first_steps: int = 0
    encoder_steps: int = 0
    freeze_encoder: int = 0

    def __post_init__(self):
        if (self.iterations < 0 or self.half_steps < 1 or self.first_steps < 0 or self.encoder_steps < 0
                or self.freeze_encoder < 0):
            raise SbdiffError(f"bad alternating schedule: iterations {self.iterations} (>= 0), half_steps "
                              f"{self.half_steps} (>= 1), first_steps, encoder_steps, freeze_encoder "
                              f"({self.first_steps}, {self.encoder_steps}, {self.freeze_encoder}; >= 0)")

    @property
    def first(self) -> int:
        return self.first_steps or self.half_steps

    @property
    def enc(self) -> int:
        return self.encoder_steps or self.half_steps

    @property
    def encoder_phases(self) -> int | None:
        """Number of encoder phases (``None``: unbounded)."""
        counts = [n for n in ((self.iterations - 1) if self.iterations else None, self.freeze_encoder or None)
                  if n is not None]
        return min(counts) if counts else None

    @property
    def open_ended(self) -> bool:
        """True when the last decoder phase runs until training stops (encoder frozen early)."""
        n = self.encoder_phases
        return bool(self.freeze_encoder) and n == self.freeze_encoder and (
            not self.iterations or self.freeze_encoder < self.iterations - 1)

    def total_steps(self) -> int | None:
        """Steps of the whole schedule (``None``: no end of its own)."""
        n = self.encoder_phases
        if n is None or self.open_ended:
            return None
        return self.first + n * (self.enc + self.half_steps)

    def phase(self, step: int) -> Phase:
        """The phase of step ``step`` (0-based); past a finite schedule's end, its last decoder phase."""
        n_enc = self.encoder_phases
        last_end = None if (n_enc is None or self.open_ended) else self.first + n_enc * (self.enc + self.half_steps)
        if step < self.first:
            end = OPEN if (n_enc == 0 and self.open_ended) else self.first
            return Phase(0, "decoder", 0, end)
        pair = self.enc + self.half_steps
        n, r = divmod(step - self.first, pair)
        if n_enc is not None and n >= n_enc:  # past the last encoder phase: the last decoder phase
            if n_enc == 0:
                return Phase(0, "decoder", 0, OPEN if self.open_ended else self.first)
            start = self.first + (n_enc - 1) * pair + self.enc
            return Phase(n_enc, "decoder", start, OPEN if self.open_ended else last_end)
        start = self.first + n * pair
        if r < self.enc:
            return Phase(n, "encoder", start, start + self.enc)
        end = start + pair
        if self.open_ended and n == n_enc - 1:
            end = OPEN
        return Phase(n + 1, "decoder", start + self.enc, end)
