"""The alternating (IPF-type) base of the presets that fit an encoder and a decoder in turn (DSB,
SB-FBSDE; DESIGN §2).

:class:`Alternating` owns what those presets share: the phase schedule
(:class:`~sbdiff.methods._schedule.PhaseSchedule`, read from the preset's section: ``iterations``,
``half_steps``, ``first_steps`` and, where the section has them, ``encoder_steps`` and
``freeze_encoder``), the per-phase cosine decay of the learning rate to ``lr_final``, a checkpoint at
the end of every phase, the trajectory cache's lifecycle (``cache_refresh``), the freeze policy, the
phase's name (:meth:`Alternating.phase_name`: logged in ``metrics.jsonl``, shown by the progress
bar) and the Gaussian fit of a prior data set. A subclass keeps only what differs: how the frozen side's paths
are simulated (:meth:`Alternating.simulate`) and the loss of a phase (``losses``).

The freeze policy (one for every preset, carried out by the trainer, :mod:`sbdiff.train`): in a
decoder phase the encoder is frozen and vice versa (:meth:`Alternating.frozen`). The frozen network
gets no gradient, so the optimiser keeps its weights and Adam state (a warm start when its turn comes
again), and the trainer's EMA does not move its averaged weights. When the frozen set changes, the
trainer hands the method a copy of the averaged model (:meth:`~sbdiff.methods.Method.set_frozen`): the
frozen network's averaged weights at the end of its phase, from which the other network's training
paths are simulated. Only the trainer writes the EMA.

A time budget (``train.max_minutes``): the trainer times the first steps and calls
:meth:`Alternating.plan_budget` once with the steps the budget allows; the schedule is then fitted to
them (:meth:`~sbdiff.methods._schedule.PhaseSchedule.fit_to`: finite, ending on a decoder phase with
its learning rate decayed) and the plan is kept in the checkpoint, so a resume takes the same
schedule (:meth:`Alternating.apply_plan`). The timed steps are those of the first decoder phase, or of
the first encoder phase when the first decoder phase trains without simulated paths (a warm start,
:meth:`Alternating.needs_cache`; cheaper per step than the rest), in whole cycles of ``cache_refresh``
steps (each holding one cache draw). A plan timed on the first decoder phase is made once more in
the first encoder phase (:meth:`Alternating.replan_window`): the first decoder phase's steps need not
cost what the later phases' do (bridge matching's first phase pays an OT coupling and simulates
nothing, the later ones simulate a cache of the other network's paths; at D = 64 a plan on the first
phase alone ended a 5-minute run after 181 s, and a generative run, whose first phase simulates
nothing, ran into the time limit inside a phase), so the second plan refits the configured schedule,
its first decoder phase as run, to the rate of the later phases. A last plan at the start of the
last decoder phase sets that phase's length alone, from the rate of every step since the plan
before: the machine's speed drifts over a run (a plan on the first encoder phase alone ran a D = 64
run into the time limit inside its last phase, the rate not decayed), and the last phase is what
generates.

A finished run whose encoder did not carry the data to the prior says so
(:meth:`Alternating.run_warning`): when the last logged ``prior_loss`` (the Gaussian-moment KL of the
encoder's ``X_T`` against the prior, or against the prior data set's moments in bridge mode) is above
:data:`PRIOR_LOSS_ALARM` nats per dimension, the trainer prints one line and logs it in
``metrics.jsonl``. Such a bridge is unusable: the decoder was fitted to paths that do not end where
it starts (issue 26: sbfbsde ended a 10-minute D = 16 bridge at a prior loss of 13.5, 0.84 per
dimension, and scored 153 % cBW2-UVP; working runs end below 0.02 per dimension).

The cache of phase ``p`` is drawn at the steps ``due = p.start + j·cache_refresh`` (once per phase when
``cache_refresh = 0``) from a generator seeded by ``(seed, due, CACHE_STREAM)``, so a resumed run (or
another DDP rank) redraws it exactly.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from ..config import Config
from ..distributed import step_generator
from ..model import PathVAE
from ._schedule import OPEN, Phase, PhaseSchedule
from .base import Method, PlanWindow

__all__ = ["Alternating", "CACHE_STREAM", "PRIOR_LOSS_ALARM"]

#: Stream of :func:`~sbdiff.distributed.step_generator` for the trajectory caches.
CACHE_STREAM = 1000
#: Nats per dimension of the final ``prior_loss`` above which a run is flagged as stuck
#: (:meth:`Alternating.run_warning`). 0.05 is, per coordinate, a mean off by 0.32 standard deviations
#: or a standard deviation off by a factor 1.37.
PRIOR_LOSS_ALARM = 0.05


class Alternating(Method):
    """Phases alternating decoder / encoder with trajectory caches of the frozen side (module docstring).

    Subclasses implement :meth:`simulate` and ``losses`` (which read :attr:`phase` and :attr:`cache`),
    and may override :meth:`needs_cache` (a phase trained without simulated paths) and
    :meth:`schedule_of` (no schedule: a preset's non-alternating mode).
    """

    bridges = True
    ddp_find_unused_parameters = True  # one network gets no gradient in each phase

    def __init__(self, config: Config):
        super().__init__(config)
        self.schedule = self.configured = self.schedule_of(config)  # the one in force; the configured one
        self.phase: Phase | None = None  # the phase of the current step
        self.cache = None  # the frozen side's paths (what simulate returned)
        self._cache_step: int | None = None
        self._frozen_model: PathVAE | None = None

    # -- the schedule ------------------------------------------------------------------------------
    @classmethod
    def schedule_of(cls, config: Config) -> PhaseSchedule | None:
        """The phase schedule of the preset's section (``None``: no phases)."""
        s = getattr(config, cls.name)
        return PhaseSchedule(s.iterations, s.half_steps, s.first_steps, getattr(s, "encoder_steps", 0),
                             getattr(s, "freeze_encoder", 0))

    @classmethod
    def schedule_ends(cls, config: Config) -> bool:
        schedule = cls.schedule_of(config)
        return schedule is not None and schedule.total_steps() is not None

    def max_steps(self) -> int | None:
        """The schedule's steps; ``None`` without a schedule or for one without an end of its own
        (open-ended, or a phase of :data:`~sbdiff.methods._schedule.OPEN` steps)."""
        total = None if self.schedule is None else self.schedule.total_steps()
        return None if total is None or total >= OPEN else total

    def plan_window(self, step: int) -> PlanWindow | None:
        """Time the first decoder phase, or the first encoder phase after a first decoder phase without
        simulated paths (a warm start), in whole cycles of ``cache_refresh`` steps; the plan is due by
        the end of that phase (module docstring)."""
        schedule = self.schedule
        if schedule is None:
            return None
        warm = not self.needs_cache(schedule.phase(0)) and schedule.encoder_phases != 0
        start = schedule.first if warm else 0
        last = schedule.phase(start).end
        refresh = getattr(self.config, self.name).cache_refresh
        return PlanWindow(start, refresh or 1, last) if step < last else None  # a session from `last` on: too late

    def replan_window(self, step: int, planned_at: int) -> PlanWindow | None:
        """After a plan timed in the first decoder phase, time the first encoder phase (in whole cycles of
        ``cache_refresh`` steps) and plan again by its end; after a plan inside or after the first
        encoder phase, time every step from it to the last decoder phase and plan at that phase's
        start (module docstring)."""
        schedule = self.schedule
        if schedule is None or not schedule.encoder_phases:
            return None
        refresh = getattr(self.config, self.name).cache_refresh or 1
        if planned_at <= schedule.first:
            window = PlanWindow(schedule.first, refresh, schedule.first + schedule.enc)
        else:
            last = schedule.phase(schedule.total_steps() - 1).start
            window = PlanWindow(planned_at, refresh, last, early=False) if planned_at < last else None
        return window if window is not None and step < window.last else None

    def plan_budget(self, total_steps: int, step: int) -> dict:
        """Fit the configured schedule to ``total_steps``
        (:meth:`~sbdiff.methods._schedule.PhaseSchedule.fit_to`), with its first decoder phase as run
        (a plan's length) once ``step`` is past it (a plan in the first encoder phase: a warm start's
        or a second plan, :meth:`replan_window`), and its encoder phases no shorter than the steps the
        first one has taken; at the start of the last decoder phase of a fitted schedule (the last
        plan), only that phase's length, to end at ``total_steps``."""
        phase = self.schedule.phase(step)
        if step > self.schedule.first and phase.start == step and phase.end == self.schedule.total_steps():
            # the last plan, at the start of the last decoder phase: that phase's length alone
            schedule = dataclasses.replace(self.schedule, last_steps=max(total_steps - step, 1))
            plan = {"schedule": dataclasses.asdict(schedule), "summary": schedule.describe()}
            self.apply_plan(plan)
            return plan
        base, ran = self.configured, self.schedule.first
        if step > ran:
            base = dataclasses.replace(base, first_steps=ran, encoder_steps=max(base.enc, step - ran))
        schedule = base.fit_to(total_steps, step)
        kept = " (the configured schedule fits)" if schedule is base else ""
        plan = {"schedule": dataclasses.asdict(schedule), "summary": schedule.describe() + kept}
        self.apply_plan(plan)
        return plan

    def apply_plan(self, plan: dict) -> None:
        self.schedule = PhaseSchedule(**plan["schedule"])

    def lr_factor(self, step: int) -> float:
        """Cosine decay from 1 to ``lr_final`` over each phase: the regression targets are noisy, and a
        decaying rate averages the noise out before the network is frozen for the next phase. An
        open-ended last decoder phase (after ``freeze_encoder``) decays over ``half_steps`` and then
        stays at ``lr_final`` (a schedule fitted to a time budget has none: its last decoder phase
        decays over its whole length); without a schedule the rate stays at 1."""
        if self.schedule is None:
            return 1.0
        s = getattr(self.config, self.name)
        phase = self.schedule.phase(step)
        length = s.half_steps if phase.end >= OPEN else phase.end - phase.start
        frac = min(max((step - phase.start) / max(length, 1), 0.0), 1.0)
        return s.lr_final + (1 - s.lr_final) * 0.5 * (1 + math.cos(math.pi * frac))

    def checkpoint_due(self, step: int) -> bool:
        """After the last step of every phase (a resume then starts from a completed half-bridge)."""
        return self.schedule is not None and step > 0 and self.schedule.phase(step - 1).end == step

    def frozen(self, step: int) -> tuple[str, ...]:
        if self.schedule is None:
            return ()
        return ("encoder.",) if self.schedule.phase(step).role == "decoder" else ("decoder.",)

    def progress_info(self, step: int) -> dict[str, str]:
        """The phase of ``step`` and the last iteration of a finite schedule: ``{"phase": "decoder 3/7"}``."""
        if self.schedule is None:
            return {}
        phase = self.schedule.phase(step)
        total = f"/{self.schedule.iterations - 1}" if self.schedule.iterations else ""
        return {"phase": f"{phase.role} {phase.iteration}{total}"}

    def phase_name(self, step: int) -> str | None:
        """``"decoder n"`` or ``"encoder n"``: the role and iteration of the schedule's phase of ``step``
        (decoder 0, encoder 0, decoder 1, …); ``None`` without a schedule (a preset's mode without
        phases: dsbm's ``coupled``, sbfbsde's ``joint``)."""
        if self.schedule is None:
            return None
        phase = self.schedule.phase(step)
        return f"{phase.role} {phase.iteration}"

    def run_warning(self, model: PathVAE, last: dict, step: int) -> str | None:
        """The stuck-prior-loss line (module docstring): ``prior_loss`` of ``last`` above
        :data:`PRIOR_LOSS_ALARM` ``· d`` nats; ``None`` otherwise (or without a schedule or a finite
        prior loss)."""
        prior_loss = last.get("prior_loss")
        if self.schedule is None or prior_loss is None or not math.isfinite(prior_loss):
            return None
        limit = PRIOR_LOSS_ALARM * model.dim
        if prior_loss <= limit:
            return None
        done = self.schedule.phase(max(step - 1, 0)).iteration  # encoder phases finished (decoder phase n follows n)
        return (f"{self.name}: the prior loss stayed at {prior_loss:.3g} nats after {done} encoder phase"
                f"{'s' if done != 1 else ''} (above {limit:.3g}, {PRIOR_LOSS_ALARM} per dimension): the encoder "
                "does not carry the data to the prior, so the decoder starts where the encoder never ends; do not "
                "trust this run's samples or plan (docs/presets.md, 'A stuck prior loss')")

    # -- the frozen side and its cache -------------------------------------------------------------
    def set_frozen(self, frozen: PathVAE) -> None:
        self._frozen_model = frozen

    def frozen_part(self, model: PathVAE, phase: Phase):
        """The frozen side of ``phase`` (the encoder when fitting the decoder, and vice versa) with the
        weights the freeze policy hands on: the averaged weights at the end of its phase (the copy
        from :meth:`set_frozen`; the live ``model`` before the trainer has handed one), or its last
        weights when the section says ``freeze = "last"``."""
        last = getattr(getattr(self.config, self.name), "freeze", "average") == "last"
        source = model if last or self._frozen_model is None else self._frozen_model
        return source.encoder if phase.role == "decoder" else source.decoder

    def needs_cache(self, phase: Phase) -> bool:
        """True when ``phase`` trains on simulated paths of the frozen side."""
        return True

    def simulate(self, model: PathVAE, frozen, phase: Phase, generator: torch.Generator):
        """The cache of ``phase``: paths of the ``frozen`` part (an encoder or decoder) drawn with
        ``generator``; returned object is kept as :attr:`cache` until the next refresh."""
        raise NotImplementedError

    def begin_step(self, model: PathVAE, step: int) -> None:
        """Track the phase of ``step`` and refresh the cache when one is due."""
        if self.schedule is None:
            return
        phase = self.phase = self.schedule.phase(step)
        if not self.needs_cache(phase):
            return
        refresh = getattr(self.config, self.name).cache_refresh
        due = phase.start + (step - phase.start) // refresh * refresh if refresh else phase.start
        if self.cache is None or self._cache_step != due:
            gen = step_generator(self.config.seed, due, CACHE_STREAM, model.data_mean.device)
            self.cache = self.simulate(model, self.frozen_part(model, phase), phase, gen)
            self._cache_step = due

    def load_state_dict(self, state: dict) -> None:
        """A resume redraws the cache from its seed at the next :meth:`begin_step`."""
        self.phase = self.cache = self._cache_step = None

    def _require_cache(self) -> tuple[Phase, object]:
        if self.phase is None or self.cache is None:
            raise RuntimeError(f"{self.name}: losses called before begin_step (the training loop draws the cache)")
        return self.phase, self.cache
