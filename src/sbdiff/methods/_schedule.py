"""The alternating schedule of the IPF-type presets (DSB, SB-FBSDE; DESIGN §2).

Step ``s`` of training belongs to one *phase*: iteration ``n`` first fits the decoder (the encoder
frozen), then the encoder (the decoder frozen). Iteration 0's decoder phase (the reversal of the
reference, i.e. the score model of the foundation) may be longer, encoder phases may have a length
of their own, and the encoder may stop being fitted after some phases (the decoder phase after the
last one then runs until training stops). A finite schedule ends after the decoder phase of its last
iteration, so the last network fitted is the decoder that generates.

Under a time budget (``train.max_minutes``) the trainer fits the schedule to the steps the budget
allows, once, after timing the first steps (:meth:`PhaseSchedule.fit_to`; the trainer's side is in
:mod:`sbdiff.train`): the fitted schedule is finite and ends on a decoder phase at that count.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

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
    last_steps : int
        Steps of the last decoder phase of a finite schedule with encoder phases (0: ``half_steps``);
        set by :meth:`fit_to`.
    """

    iterations: int
    half_steps: int
    first_steps: int = 0
    encoder_steps: int = 0
    freeze_encoder: int = 0
    last_steps: int = 0

    def __post_init__(self):
        if (self.iterations < 0 or self.half_steps < 1 or self.first_steps < 0 or self.encoder_steps < 0
                or self.freeze_encoder < 0 or self.last_steps < 0):
            raise SbdiffError(f"bad alternating schedule: iterations {self.iterations} (>= 0), half_steps "
                              f"{self.half_steps} (>= 1), first_steps, encoder_steps, freeze_encoder, last_steps "
                              f"({self.first_steps}, {self.encoder_steps}, {self.freeze_encoder}, "
                              f"{self.last_steps}; >= 0)")

    @property
    def first(self) -> int:
        return self.first_steps or self.half_steps

    @property
    def enc(self) -> int:
        return self.encoder_steps or self.half_steps

    @property
    def last(self) -> int:
        """Steps of the last decoder phase after the first (of a finite schedule)."""
        return self.last_steps or self.half_steps

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
        return self.first + n * (self.enc + self.half_steps) + (self.last - self.half_steps if n else 0)

    def phase(self, step: int) -> Phase:
        """The phase of step ``step`` (0-based); past a finite schedule's end, its last decoder phase."""
        n_enc = self.encoder_phases
        if step < self.first or n_enc == 0:
            return Phase(0, "decoder", 0, self.first)
        pair = self.enc + self.half_steps
        n, r = divmod(step - self.first, pair)
        if n_enc is not None and (n >= n_enc or (n == n_enc - 1 and r >= self.enc)):  # the last decoder phase
            start = self.first + (n_enc - 1) * pair + self.enc
            return Phase(n_enc, "decoder", start, OPEN if self.open_ended else start + self.last)
        start = self.first + n * pair
        if r < self.enc:
            return Phase(n, "encoder", start, start + self.enc)
        return Phase(n + 1, "decoder", start + self.enc, start + pair)

    # -- a time budget -----------------------------------------------------------------------------
    def fit_to(self, total: int, step: int) -> PhaseSchedule:
        """This schedule fitted to ``total`` steps, for a plan made after ``step`` steps (which lie in
        the first decoder phase or, when that phase is not timed, the first encoder phase).

        A finite schedule of at most ``total`` steps is kept. An open-ended one (``freeze_encoder``)
        whose phases fit keeps them and its last decoder phase becomes finite with the rest of the
        budget. Otherwise: the most encoder phases (at most the schedule's) whose configured lengths
        fit, all lengths stretched by one factor (integer parts; the remainder goes into the last
        decoder phase) to end at ``total`` on a decoder phase; where the first phase fits but no whole
        iteration does, one iteration shrunk by that factor (below one); fewer than the first phase's
        steps: one decoder phase of ``total`` steps. The phases ``step`` has begun keep their start and the steps
        taken in them (an encoder phase begun keeps the first phase's length and at least one
        decoder phase follows it), so only the current phase's end, and with it the learning rate of
        its steps taken (the cosine over its length), may move.
        """
        first, enc, half = self.first, self.enc, self.half_steps
        if step > first + enc:
            raise SbdiffError(f"a plan after step {step} would change finished phases (first decoder and encoder "
                              f"phases: {first} + {enc} steps)")
        own = self.total_steps()
        if own is not None and own <= total:
            return self
        n_max = self.encoder_phases
        cost = lambda n: first + n * (enc + half)  # noqa: E731  (steps of n encoder phases at the configured lengths)
        if self.open_ended and cost(n_max) <= total:
            return PhaseSchedule(n_max + 1, half, first, enc, last_steps=total - cost(n_max) + half)
        begun = int(step > first)  # an encoder phase has begun: the first decoder phase is done
        n = max(total - first, 0) // (enc + half)
        n = max(begun, n if n_max is None else min(n, n_max))
        if n == 0 and total >= first and n_max != 0:
            n = 1  # the first phase fits but no whole iteration does: one iteration, shrunk (iteration 0 alone
            # is the reference's reversal, in bridge mode no bridge at all)
        if n == 0:
            return PhaseSchedule(1, half, max(total, step, 1))
        fixed = first if begun else 0  # steps not stretched
        room, base = max(total - fixed, 0), cost(n) - fixed
        enc2 = max(enc * room // base, step - first if begun else 1, 1)
        half2 = max(half * room // base, 1)
        first2 = first if begun else max(first * room // base, step, 1)
        last = max(total - first2 - n * enc2 - (n - 1) * half2, 1)
        return replace(self, iterations=n + 1, half_steps=half2, first_steps=first2, encoder_steps=enc2,
                       freeze_encoder=0, last_steps=last)

    def describe(self) -> str:
        """One line: the phases and their lengths."""
        n, total = self.encoder_phases, self.total_steps()
        if n == 0:
            return f"1 decoder phase of {self.first} steps"
        if n is None or total is None:
            return (f"phases of {self.first} (first decoder), {self.enc} (encoder), {self.half_steps} (decoder) steps"
                    + (f", the decoder open-ended after {n} encoder phases" if n is not None else ""))
        return (f"{n + 1} decoder and {n} encoder phases: {self.first} (first decoder), {self.enc} (encoder), "
                f"{self.half_steps} (decoder), {self.last} (last decoder) steps, {total} in all")
