"""Infrastructure over every registered preset (no hand-kept list), each with its own smoke setting
(``Method.smoke``: a schedule that switches phase or updates its encoder inside the 12 steps): a
run stopped at step 6 and resumed to 12 is bit-identical to the uninterrupted run, non-finite losses
are skipped without an update, and a bad value in the preset's section is refused in one line by the
CLI. A new preset written in one file of its own passes the same checks (``test_a_preset_is_one_file``)."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import sys

import pytest
import torch
from safetensors.torch import load_file

from sbdiff.cli import main
from sbdiff.config import load_config, preset_sections
from sbdiff.registry import REGISTRY, method_class
from sbdiff.train import fit, load_run, resume_run

from conftest import assert_train_refused
from test_distributed import _small_run

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread for this module


def _cfg(tmp_path, method):
    _, path = _small_run(tmp_path, method)
    cfg, _ = load_config(path)
    cfg.train.shards = 1  # one losses() call per step
    return cfg


def check_resume_is_bit_identical(tmp_path, method):
    cfg = _cfg(tmp_path, method)
    fit(cfg, tmp_path / "base", progress=False)
    cfg.train.steps = 6
    fit(cfg, tmp_path / "split", progress=False)
    res = resume_run(tmp_path / "split", steps=12, progress=False)
    assert res.resumed_from == 6 and res.steps == 12
    a = load_file(str(tmp_path / "base" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "model.safetensors"))
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def check_nonfinite_losses_are_skipped(tmp_path, monkeypatch, method):
    cls = method_class(method)
    losses, calls = cls.losses, {"n": 0}

    def poisoned(self, model, batch, generator):
        calls["n"] += 1
        out = losses(self, model, batch, generator)
        if calls["n"] in (5, 6):
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(cls, "losses", poisoned)
    res = fit(_cfg(tmp_path, method), tmp_path / "r", progress=False)
    assert res.steps == 12 and res.skipped == 2
    _, model = load_run(tmp_path / "r")
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    x = model.sample(8, nfe=4)
    assert x.shape == (8, 2) and bool(torch.isfinite(x).all())
    assert math.isfinite(float(model.prior_logp(model.sample_prior(4)).sum()))


def check_cli_refuses_bad_section(tmp_path, capsys, method):
    """An unknown key in the preset's section, and a value of the wrong type for its first key."""
    section = preset_sections().get(method)
    (tmp_path / "unknown.toml").write_text(f"[{method}]\nno_such_key = 1\n")
    expected = f"unknown config key '{method}.no_such_key'" if section else f"unknown config key '{method}'"
    assert_train_refused(tmp_path, capsys, method, ["--config", "unknown.toml"], expected)
    if section:
        key = dataclasses.fields(section)[0].name
        (tmp_path / "type.toml").write_text(f"[{method}]\n{key} = [1]\n")
        assert_train_refused(tmp_path, capsys, method, ["--config", "type.toml"], f"config key {method}.{key} must be")


@pytest.mark.parametrize("method", list(REGISTRY))
def test_stop_and_resume_is_bit_identical(tmp_path, method):
    check_resume_is_bit_identical(tmp_path, method)


@pytest.mark.parametrize("method", list(REGISTRY))
def test_nonfinite_losses_are_skipped_without_update(tmp_path, monkeypatch, method):
    check_nonfinite_losses_are_skipped(tmp_path, monkeypatch, method)


@pytest.mark.parametrize("method", list(REGISTRY))
def test_cli_refuses_a_bad_section_in_one_line(tmp_path, capsys, method):
    check_cli_refuses_bad_section(tmp_path, capsys, method)


TOY_PRESET = '''"""A toy preset: SGM's fixed encoder, DSM at times t = t_min + (T - t_min) u^power."""
from dataclasses import dataclass

import torch

from sbdiff import SbdiffError
from sbdiff.config import Section
from sbdiff.decoders import ScoreDecoder
from sbdiff.encoders import FixedEncoder
from sbdiff.methods import Method, build_network, check_flat, register
from sbdiff.objectives import dsm_loss


@dataclass
class ToySettings(Section):
    power: float = 1.0  # training times t_min + (T - t_min) u^power, u uniform


@register("toy")
class Toy(Method):
    settings = ToySettings
    defaults = {"model.hidden": 24}
    smoke = "[toy]\\npower = 2.0\\n"

    @classmethod
    def check(cls, config):
        if not config.toy.power > 0:
            raise SbdiffError(f"toy.power must be positive, got {config.toy.power}")

    def build(self, data, prior=None):
        reference = self.make_reference()
        encoder = FixedEncoder(reference)
        net = build_network(self.config, check_flat(data), reference.T)
        return self.assemble(encoder, ScoreDecoder(encoder, net, "noise"), data)

    def losses(self, model, batch, generator):
        u = torch.rand(batch.shape[0], generator=generator, dtype=batch.dtype)
        t = model.t_min + (model.reference.T - model.t_min) * u ** self.config.toy.power
        loss = dsm_loss(model.encoder, model.decoder, batch, t, generator=generator).mean()
        return {"loss": loss, "drift_matching": loss}
'''


@pytest.fixture
def toy_preset(tmp_path):
    """Write the toy preset to a module of its own, import it (it registers itself) and unregister
    it afterwards."""
    path = tmp_path / "toy_preset.py"
    path.write_text(TOY_PRESET)
    spec = importlib.util.spec_from_file_location("toy_preset", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["toy_preset"] = module
    spec.loader.exec_module(module)
    yield module
    REGISTRY.pop("toy", None)
    sys.modules.pop("toy_preset", None)


def test_a_preset_is_one_file(tmp_path, monkeypatch, capsys, toy_preset):
    """Issue 23: a new preset in one ~40-line module trains through the CLI and passes the
    infrastructure checks, with no other file touched."""
    assert len(TOY_PRESET.splitlines()) <= 45
    assert "toy" in REGISTRY and "toy" in preset_sections()
    code = main(["train", "--method", "toy", "--data", "moons", "--steps", "30", "--out", str(tmp_path / "cli"),
                 "--quiet"])
    assert code == 0
    capsys.readouterr()
    saved, _ = load_config(tmp_path / "cli" / "config.toml")
    assert saved.method == "toy" and saved.toy.power == 1.0 and saved.model.hidden == 24
    _, model = load_run(tmp_path / "cli")
    assert bool(torch.isfinite(model.sample(16, nfe=5)).all())
    (tmp_path / "neg.toml").write_text("[toy]\npower = -1.0\n")
    assert_train_refused(tmp_path, capsys, "toy", ["--config", "neg.toml"], "toy.power must be positive, got -1.0")
    for sub in ("resume", "bad", "nan"):
        (tmp_path / sub).mkdir()
    check_resume_is_bit_identical(tmp_path / "resume", "toy")
    check_cli_refuses_bad_section(tmp_path / "bad", capsys, "toy")
    check_nonfinite_losses_are_skipped(tmp_path / "nan", monkeypatch, "toy")


@pytest.mark.parametrize("method", list(REGISTRY))
def test_networks_are_the_parts_nets(tmp_path, method):
    """``PathVAE.networks()`` (what ``train.compile`` compiles) is each part's network, once."""
    import numpy as np

    from sbdiff.methods import make_method

    model = make_method(_cfg(tmp_path, method)).build(np.random.default_rng(0).normal(size=(64, 2)))
    nets = model.networks()
    expected = [part.net for part in (model.encoder, model.decoder) if isinstance(getattr(part, "net", None),
                                                                               torch.nn.Module)]
    assert nets == expected and len(nets) >= 1 and all(isinstance(n, torch.nn.Module) for n in nets)
    if method in ("dsb", "sbfbsde"):  # both networks learned; sgm: fixed encoder, vsdm: linear encoder
        assert len(nets) == 2


@pytest.mark.parametrize("method", list(REGISTRY))
def test_one_freeze_policy_and_only_the_trainer_writes_the_ema(tmp_path, monkeypatch, method):
    """Between the trainer's EMA updates nothing writes the EMA (``begin_step`` gets no EMA model);
    the update leaves the frozen prefixes' averaged weights unchanged; and the copy handed to
    ``set_frozen`` holds them (the snapshot the other network trains against)."""
    import sbdiff.train as train_module

    seen = {"ema": None, "handed": None, "checks": 0}
    mirror, set_frozen, losses = train_module._mirror_untrained, method_class(method).set_frozen, method_class(method).losses

    def state(s):
        return {k: v.clone() for k, v in s.ema.module.state_dict().items()}

    def after_update(s):
        mirror(s)
        before, frozen = seen["ema"], seen["frozen"]
        now = state(s)
        if before is not None:
            for k in now:
                if k.startswith(frozen):
                    assert torch.equal(now[k], before[k]), k
        seen["ema"], seen["session"] = now, s

    def spy_set_frozen(self, frozen):
        seen["handed"] = frozen
        set_frozen(self, frozen)

    def spy_losses(self, model, batch, generator):
        s = seen.get("session")
        if s is not None:  # begin_step ran since the last update: the EMA is as the trainer left it
            current = state(s)
            assert all(torch.equal(current[k], seen["ema"][k]) for k in current)
            prefixes = s.frozen
            if prefixes:
                handed = seen["handed"].state_dict()
                assert all(torch.equal(handed[k], current[k]) for k in current if k.startswith(prefixes))
                if s.config.train.phase_average:  # the frozen network took its phase average
                    live = model.state_dict()
                    assert all(torch.equal(live[k], current[k]) for k in current if k.startswith(prefixes))
                seen["checks"] += 1
        seen["frozen"] = s.frozen if s is not None and s.frozen else ()
        return losses(self, model, batch, generator)

    monkeypatch.setattr(train_module, "_mirror_untrained", after_update)
    monkeypatch.setattr(method_class(method), "set_frozen", spy_set_frozen)
    monkeypatch.setattr(method_class(method), "losses", spy_losses)
    seen["frozen"] = ()
    fit(_cfg(tmp_path, method), tmp_path / "r", progress=False)
    assert seen["ema"] is not None
    if method in ("dsb", "sbfbsde"):  # alternating presets freeze a side in every step
        assert seen["checks"] >= 10


def _alternating():
    from sbdiff.methods._alternating import Alternating

    return [name for name, cls in REGISTRY.items() if issubclass(cls, Alternating)]


@pytest.mark.parametrize("method", _alternating())
def test_every_alternating_preset_flags_a_stuck_prior_loss(method):
    """The stuck-prior-loss line is the alternating base's: above ``PRIOR_LOSS_ALARM · d`` nats it
    names the loss and the alarm, below (or without a prior loss) it is silent."""
    from sbdiff.methods import make_method
    from sbdiff.methods._alternating import PRIOR_LOSS_ALARM

    cfg = _cfg_plain(method)
    obj = make_method(cfg)
    model = type("M", (), {"dim": 16})()
    limit = PRIOR_LOSS_ALARM * 16
    message = obj.run_warning(model, {"prior_loss": 1.01 * limit}, 10)
    assert message is not None and f"{limit:.3g}" in message and method in message
    assert obj.run_warning(model, {"prior_loss": 0.99 * limit}, 10) is None
    assert obj.run_warning(model, {"prior_loss": float("nan")}, 10) is None and obj.run_warning(model, {}, 10) is None


def _cfg_plain(method):
    from sbdiff.config import Config, config_from_dict

    return config_from_dict({"method": method, "train": {"steps": 10}}, Config()).validate()


@pytest.mark.parametrize("method", ["dsb", "sbfbsde"])
def test_a_stuck_prior_loss_is_flagged_at_the_end(tmp_path, capsys, method):
    """Issue 26: a bridge whose encoder stays at the reference (one decoder phase, no encoder phase)
    between two distant sets ends with a prior loss far above the alarm: the run says so in one line
    on stderr, in ``metrics.jsonl`` and in the result; between sets the reference already joins
    (source = target + N(0, eps)), it stays quiet. (dsbm's first phase fits a coupling of the two sets
    and monitors no encoder, so an encoder left at the reference is not a dsbm run.)"""
    import json

    import numpy as np

    from sbdiff.config import Config, config_from_dict

    rng = np.random.default_rng(0)
    target = (0.5 * rng.standard_normal((2000, 2))).astype(np.float32)
    results = {}
    for name, shift in (("far", 8.0), ("near", 0.0)):
        source = (target + rng.standard_normal(target.shape) + shift).astype(np.float32)
        np.save(tmp_path / f"{name}.npy", source)
        np.save(tmp_path / "target.npy", target)
        cfg = config_from_dict({"method": method, "reference": {"kind": "brownian", "eps": 1.0},
                                "data": {"data": str(tmp_path / "target.npy"), "prior": str(tmp_path / f"{name}.npy")},
                                "model": {"hidden": 32, "blocks": 1, "time_dim": 8},
                                "train": {"steps": 20, "log_every": 10, "batch_size": 64},
                                method: {"iterations": 1, "half_steps": 20, "num_steps": 8, "cache_size": 256}},
                               Config())
        results[name] = fit(cfg.validate(), tmp_path / name, progress=False)
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        results[name + "_rows"] = [r for r in rows if "warning" in r]
    err = capsys.readouterr().err
    assert len(results["far"].warnings) == 1 and "prior loss" in results["far"].warnings[0]
    assert len(results["far_rows"]) == 1 and results["far_rows"][0]["prior_loss"] > 0.1
    assert results["far_rows"][0]["step"] == 20 and "loss" in results["far_rows"][0]  # the last training row
    assert err.count("sbdiff: warning:") == 1 and "\n" not in err.split("sbdiff: warning:")[1].strip()
    assert results["near"].warnings == () and results["near_rows"] == []
