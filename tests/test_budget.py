"""Time budgets (``train.max_minutes``) and the alternating presets' schedules: after timing the first
steps, the trainer fits the schedule to the steps the budget allows (``PhaseSchedule.fit_to`` through
``Method.plan_budget``), so the run ends on a finished decoder phase with its learning rate decayed;
the plan is in the checkpoint and a resume continues it bit for bit. The training tests run on a
clock that advances one second per step (deterministic and fast); step budgets are never planned."""

from __future__ import annotations

import json
import math
import time
import types

import pytest
import torch
from safetensors.torch import load_file

from sbdiff import SbdiffError, train
from sbdiff.checkpoint import CHECKPOINT_FILE, read_checkpoint
from sbdiff.config import Config, load_config
from sbdiff.methods import make_method
from sbdiff.methods._alternating import Alternating
from sbdiff.methods._schedule import OPEN, PhaseSchedule
from sbdiff.methods.base import PlanWindow
from sbdiff.registry import REGISTRY

from test_distributed import _small_run

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread for this module

ALTERNATING = [name for name, cls in REGISTRY.items() if issubclass(cls, Alternating)]


def check_fitted(schedule: PhaseSchedule, fitted: PhaseSchedule, total: int, step: int,
                 configured: PhaseSchedule | None = None) -> None:
    """``fitted`` ends at ``total`` on a decoder phase, with no more encoder phases than ``configured``
    (by default ``schedule``), and puts the ``step`` steps taken in the phases ``schedule`` took them in."""
    assert fitted.total_steps() == total and not fitted.open_ended
    last = fitted.phase(total - 1)
    assert last.role == "decoder" and last.end == total and fitted.phase(total) == last
    configured = configured or schedule
    if configured.encoder_phases is not None:
        assert fitted.encoder_phases <= configured.encoder_phases
    for k in range(step):
        a, b = schedule.phase(k), fitted.phase(k)
        assert (a.iteration, a.role, a.start) == (b.iteration, b.role, b.start), k


# -- the fitted schedule --------------------------------------------------------------------------
def test_a_configured_schedule_that_fits_is_kept():
    s = PhaseSchedule(3, 10, 25)  # 65 steps
    assert s.fit_to(65, 5) is s and s.fit_to(1000, 5) is s


@pytest.mark.parametrize("schedule, total, step", [
    (PhaseSchedule(6, 5000), 40_000, 800),  # DSB's defaults, 55k steps configured
    (PhaseSchedule(6, 5000), 54_999, 5000),  # planned at the first phase's last step
    (PhaseSchedule(0, 2000, freeze_encoder=3), 30_000, 300),  # SB-FBSDE's: open-ended last phase
    (PhaseSchedule(0, 2000, freeze_encoder=3), 9_000, 300),  # ... whose phases do not fit
    (PhaseSchedule(0, 10, 20, 5), 1_003, 7),  # unbounded, encoder phases of their own
    (PhaseSchedule(0, 10, 20, 5), 100, 23),  # planned inside the first encoder phase (a warm start)
    (PhaseSchedule(4, 7, 3, 2, freeze_encoder=1), 50, 3),
])
def test_the_fitted_schedule_ends_on_a_decoder_phase_at_the_total(schedule, total, step):
    check_fitted(schedule, schedule.fit_to(total, step), total, step)


def test_the_most_iterations_that_fit_stretched_by_one_factor():
    fitted = PhaseSchedule(6, 5000).fit_to(40_000, 800)  # 3 encoder phases fit at 5000 steps: 35k -> 40k
    assert (fitted.iterations, fitted.first, fitted.enc, fitted.half_steps) == (4, 5714, 5714, 5714)
    assert fitted.last == 40_000 - 5714 * 6  # the rounding's remainder
    unbounded = PhaseSchedule(0, 10, 20, 5).fit_to(1_003, 7)
    assert unbounded.encoder_phases == 65 and unbounded.first == 20 and unbounded.enc == 5


def test_an_open_ended_last_phase_gets_the_rest_of_the_budget():
    s = PhaseSchedule(0, 2000, freeze_encoder=3)  # D0 E0 D1 E1 D2 E2 (12k steps), D3 open-ended
    fitted = s.fit_to(30_000, 300)
    assert (fitted.first, fitted.enc, fitted.half_steps, fitted.encoder_phases) == (2000, 2000, 2000, 3)
    assert fitted.phase(29_999) == fitted.phase(12_000) and fitted.phase(12_000).end == 30_000 < OPEN
    few = s.fit_to(9_000, 300)  # the fitted phases do not fit: one encoder phase, stretched to 3000
    assert (few.encoder_phases, few.first, few.enc, few.last) == (1, 3000, 3000, 3000)


def test_a_budget_smaller_than_the_first_phase_is_one_decoder_phase():
    fitted = PhaseSchedule(6, 5000).fit_to(1200, 100)
    assert fitted.encoder_phases == 0 and fitted.total_steps() == 1200 and fitted.phase(1199).end == 1200


def test_a_budget_for_the_first_phase_but_no_whole_iteration_is_one_shrunk_iteration():
    # DSB's defaults (15k steps an iteration) on a 5-minute budget of a slow machine: iteration 0 alone
    # would be the reference's reversal, in bridge mode no bridge at all (cBW2-UVP 14 % at D = 16)
    schedule = PhaseSchedule(6, 5000)
    fitted = schedule.fit_to(7445, 600)
    check_fitted(schedule, fitted, 7445, 600)
    assert fitted.encoder_phases == 1 and (fitted.first, fitted.enc) == (2481, 2481) and fitted.last == 7445 - 2 * 2481


def test_a_plan_inside_the_first_encoder_phase_keeps_the_first_phase():
    s = PhaseSchedule(0, 10, 20, 5)
    fitted = s.fit_to(100, 23)
    assert fitted.first == 20 and fitted.phase(23).role == "encoder"
    tiny = s.fit_to(24, 23)  # the encoder phase ends now and one decoder step follows
    assert tiny.phase(22).start == 20 and tiny.phase(22).end == 23 and tiny.phase(23).role == "decoder"
    assert tiny.encoder_phases == 1 and tiny.total_steps() == 24
    with pytest.raises(SbdiffError, match="finished phases"):
        s.fit_to(100, 26)


def test_the_rate_decays_to_lr_final_over_the_planned_last_phase():
    cfg = Config()
    cfg.method = "sbfbsde"
    method = make_method(cfg)
    lr_final, half = cfg.sbfbsde.lr_final, cfg.sbfbsde.half_steps
    assert method.lr_factor(20_000) == pytest.approx(lr_final)  # open-ended: decayed after half_steps
    plan = method.plan_budget(30_000, 300)
    assert json.loads(json.dumps(plan)) == plan and "30000 in all" in plan["summary"]
    assert method.max_steps() == 30_000
    start = method.schedule.phase(29_999).start
    assert method.lr_factor(start) == 1.0
    assert method.lr_factor((start + 30_000) // 2) == pytest.approx((1 + lr_final) / 2)  # mid-way down the cosine
    assert method.lr_factor(29_999) == pytest.approx(lr_final, abs=1e-7) and method.lr_factor(30_000) == lr_final
    again = make_method(cfg)
    again.apply_plan(plan)
    assert again.schedule == method.schedule and half == again.schedule.half_steps


def test_later_plans_in_the_first_encoder_phase_and_at_the_last_decoder_phase_keep_the_phases_run():
    cfg = Config()
    cfg.method, cfg.dsb.iterations, cfg.dsb.half_steps, cfg.dsb.cache_refresh = "dsb", 6, 1000, 50
    method = make_method(cfg)
    method.plan_budget(4000, 300)  # timed on an expensive first phase: 1 iteration, stretched to 1333 steps
    first = method.schedule
    assert (first.encoder_phases, first.first, first.enc) == (1, 1333, 1333)
    assert method.replan_window(300, 300) == PlanWindow(1333, 50, 2666)  # the first encoder phase, planned by its end
    assert method.replan_window(2666, 300) is None  # too late
    plan = method.plan_budget(9000, 1500)  # the later phases are cheaper: more of the configured iterations
    fitted = method.schedule
    check_fitted(first, fitted, 9000, 1500, method.configured)  # the steps taken stay in their phases
    assert fitted.encoder_phases == 3 and fitted.first == 1333 and fitted.enc >= 1500 - 1333
    assert fitted.enc == fitted.half_steps == (9000 - 1333) * 1000 // 6000  # the configured lengths, stretched
    again = make_method(cfg)
    again.apply_plan(plan)
    assert again.schedule == fitted
    last = fitted.phase(8999).start  # then all steps up to the last decoder phase, planned at its start
    assert again.replan_window(1500, 1500) == PlanWindow(1500, 50, last, early=False) and again.replan_window(last, 1500) is None
    final = PhaseSchedule(**again.plan_budget(8000, last)["schedule"])  # slower than planned: a shorter last phase
    check_fitted(fitted, final, 8000, last, again.configured)
    p = final.phase(last)
    assert (p.iteration, p.role, p.start, p.end) == (3, "decoder", last, 8000) and again.replan_window(last, last) is None
    late = make_method(cfg)  # a second plan at the end of a first encoder phase longer than the configured one
    late.plan_budget(4000, 300)
    check_fitted(late.schedule, PhaseSchedule(**late.plan_budget(9000, 2666)["schedule"]), 9000, 2666, late.configured)


def test_the_timed_window_skips_a_warm_start():
    cfg = Config()
    cfg.method, cfg.sbfbsde.half_steps, cfg.sbfbsde.cache_refresh = "sbfbsde", 100, 25
    assert make_method(cfg).plan_window(0) == PlanWindow(100, 25, 200)  # after the DSM warm start: the first encoder phase
    assert make_method(cfg).plan_window(200) is None  # too late to plan
    cfg.sbfbsde.warm_start = "none"
    assert make_method(cfg).plan_window(0) == PlanWindow(0, 25, 100)
    cfg.method = "dsb"
    assert make_method(cfg).plan_window(0) == PlanWindow(0, cfg.dsb.cache_refresh, cfg.dsb.half_steps)
    cfg.method = "sgm"
    assert make_method(cfg).plan_window(0) is None  # nothing to plan


# -- training under a time budget -----------------------------------------------------------------
@pytest.fixture
def clock(monkeypatch):
    """The trainer's clock, advanced by one second per training step."""
    now = types.SimpleNamespace(t=1000.0)
    monkeypatch.setattr(train, "time", types.SimpleNamespace(monotonic=lambda: now.t, strftime=time.strftime))
    step = train._train_step

    def timed(s, state):
        now.t += 1.0
        return step(s, state)

    monkeypatch.setattr(train, "_train_step", timed)
    return now


def _timed_config(tmp_path, method, minutes=1.0, steps=0):
    """The preset's smoke setting, its schedule unbounded, with a decaying rate and a time budget."""
    _, path = _small_run(tmp_path, method)
    cfg, _ = load_config(path)
    cfg.train.shards, cfg.train.steps, cfg.train.max_minutes = 1, steps, minutes
    section = getattr(cfg, method)
    section.iterations, section.lr_final = 0, 0.1
    return cfg


class Crash(Exception):
    pass


@pytest.mark.parametrize("method", ALTERNATING)
def test_a_timed_run_ends_on_its_planned_decoder_phase_and_resumes_bit_identically(tmp_path, clock, monkeypatch,
                                                                                      method):
    cfg = _timed_config(tmp_path, method)  # 60 s at 1 s per step
    res = train.fit(cfg, tmp_path / "base", progress=False)
    meta = read_checkpoint(tmp_path / "base" / CHECKPOINT_FILE)[2]
    plan = meta["plan"]
    plans = [plan]  # the plans made, first to last (each holds the one before)
    while "previous" in plans[0]:
        plans.insert(0, plans[0]["previous"])
    total = plan["total_steps"]
    for p in plans:
        left = 60 - p["at_step"]
        assert p["seconds_per_step"] == 1.0 and p["total_steps"] == p["at_step"] + int(train.PLAN_MARGIN * left)
    assert res.stopped_by == "steps" and res.steps == total
    window = make_method(cfg).plan_window(0)
    assert window.start < plans[0]["at_step"] <= window.last  # timed in the window
    assert len(plans) >= 2  # at least the last plan, at the start of the last decoder phase
    for before, after in zip(plans, plans[1:]):
        before_schedule = PhaseSchedule(**before["method"]["schedule"])
        check_fitted(before_schedule, PhaseSchedule(**after["method"]["schedule"]), after["total_steps"],
                     after["at_step"], make_method(cfg).configured)  # the steps taken stay in their phases
    last_phase = PhaseSchedule(**plans[-2]["method"]["schedule"]).phase(plans[-2]["total_steps"] - 1)
    assert plan["at_step"] == last_phase.start  # the last plan: at the start of the last decoder phase
    schedule = PhaseSchedule(**plan["method"]["schedule"])
    assert schedule.total_steps() == total and schedule.phase(total - 1).role == "decoder"
    assert res.last["lr"] == pytest.approx(0.1 * cfg.train.lr)  # decayed to lr_final
    rows = [json.loads(line) for line in (tmp_path / "base" / "metrics.jsonl").read_text().splitlines()]
    logged = [r["budget_plan"] for r in rows if "budget_plan" in r]
    assert logged[-1] == plan and all(p in plans for p in logged)

    # killed just after each plan (resumed from the checkpoint written with it), then near the end
    step, crash_at = train._train_step, [p["at_step"] for p in plans] + [total - 5]

    def crashing(s, state):
        if crash_at and state.step == crash_at[0]:
            crash_at.pop(0)
            raise Crash
        return step(s, state)

    monkeypatch.setattr(train, "_train_step", crashing)
    with pytest.raises(Crash):
        train.fit(cfg, tmp_path / "split", progress=False)
    for p in plans:
        assert read_checkpoint(tmp_path / "split" / CHECKPOINT_FILE)[2]["step"] == p["at_step"]
        with pytest.raises(Crash):
            train.resume_run(tmp_path / "split", progress=False)
    again = train.resume_run(tmp_path / "split", progress=False)
    assert plan["at_step"] <= again.resumed_from < total - 5 and again.steps == total
    assert read_checkpoint(tmp_path / "split" / CHECKPOINT_FILE)[2]["plan"] == plan
    a = load_file(str(tmp_path / "base" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "model.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_a_second_plan_fits_the_schedule_to_the_later_phases_rate(tmp_path, monkeypatch):
    # the first decoder phase costs 2 s a step, the later phases 1 s (bridge matching's OT coupling
    # against its simulated caches): the first plan alone would end the run far inside its budget
    now = types.SimpleNamespace(t=1000.0)
    monkeypatch.setattr(train, "time", types.SimpleNamespace(monotonic=lambda: now.t, strftime=time.strftime))
    step = train._train_step

    def timed(s, state):
        now.t += 2.0 if s.method.schedule.phase(state.step).index == 0 else 1.0
        return step(s, state)

    monkeypatch.setattr(train, "_train_step", timed)
    cfg = _timed_config(tmp_path, "dsbm", minutes=2.0)
    start = now.t
    res = train.fit(cfg, tmp_path / "r", progress=False)
    plan = read_checkpoint(tmp_path / "r" / CHECKPOINT_FILE)[2]["plan"]
    second = plan["previous"]  # the last plan (its rate timed over the phases after the second) ...
    first = second["previous"]  # ... the second (timed on the first encoder phase), the first
    assert "previous" not in first and first["seconds_per_step"] == 2.0
    assert second["seconds_per_step"] == plan["seconds_per_step"] == 1.0
    assert plan["total_steps"] > first["total_steps"] and res.steps == plan["total_steps"]
    used, ran = now.t - start, PhaseSchedule(**first["method"]["schedule"]).first
    assert 2 * ran + first["total_steps"] - ran < 0.5 * 120  # the first plan alone would end before half of it
    assert 0.8 * 120 < used <= 120 and res.stopped_by == "steps"
    schedule = PhaseSchedule(**plan["method"]["schedule"])
    assert schedule.phase(res.steps - 1).role == "decoder" and res.last["lr"] == pytest.approx(0.1 * cfg.train.lr)


def test_train_steps_caps_the_plan(tmp_path, clock):
    res = train.fit(_timed_config(tmp_path, "dsb", minutes=10.0, steps=30), tmp_path / "r", progress=False)
    plan = read_checkpoint(tmp_path / "r" / CHECKPOINT_FILE)[2]["plan"]
    assert res.steps == plan["total_steps"] == 30 and res.stopped_by == "steps"
    assert PhaseSchedule(**plan["method"]["schedule"]).phase(29).end == 30


def test_step_budgets_are_not_planned(tmp_path, monkeypatch):
    def refuse(self, total_steps, step):
        raise AssertionError("planned a run without a time budget")

    monkeypatch.setattr(Alternating, "plan_budget", refuse)
    cfg = _timed_config(tmp_path, "dsb", minutes=0.0, steps=12)
    res = train.fit(cfg, tmp_path / "r", progress=False)
    assert res.steps == 12 and "plan" not in read_checkpoint(tmp_path / "r" / CHECKPOINT_FILE)[2]
    assert math.isfinite(res.last["loss"])


def test_a_budget_that_ends_in_a_warm_start_is_one_decoder_phase(tmp_path, clock):
    cfg = _timed_config(tmp_path, "sbfbsde", minutes=0.5)  # 30 s at 1 s per step; the warm start takes 40
    cfg.sbfbsde.first_steps = 40
    res = train.fit(cfg, tmp_path / "r", progress=False)
    plan = read_checkpoint(tmp_path / "r" / CHECKPOINT_FILE)[2]["plan"]
    assert plan["at_step"] == 10  # 30 % of the budget timed (from the end of the first step)
    assert res.steps == plan["total_steps"] == 10 + int(train.PLAN_MARGIN * 20) and res.stopped_by == "steps"
    assert plan["method"]["schedule"]["iterations"] == 1 and res.last["lr"] == pytest.approx(0.1 * cfg.train.lr)
