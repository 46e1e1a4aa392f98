"""Infrastructure over every registered method, with the small schedules of the DDP test (each
switches phase or updates its encoder inside the 12 steps): a run stopped at step 6 and resumed to 12
is bit-identical to the uninterrupted run, and non-finite losses are skipped without an update."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from sbdiff.config import load_config
from sbdiff.methods import REGISTRY, method_class
from sbdiff.train import fit, load_run, resume_run

from test_distributed import METHOD_EXTRA, _small_run

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread for this module


def _cfg(tmp_path, method):
    _, path = _small_run(tmp_path, method)
    cfg, _ = load_config(path)
    cfg.train.shards = 1  # one losses() call per step
    return cfg


def test_covers_every_registered_method():
    assert set(METHOD_EXTRA) == set(REGISTRY)


@pytest.mark.parametrize("method", list(METHOD_EXTRA))
def test_stop_and_resume_is_bit_identical(tmp_path, method):
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


@pytest.mark.parametrize("method", list(METHOD_EXTRA))
def test_nonfinite_losses_are_skipped_without_update(tmp_path, monkeypatch, method):
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


@pytest.mark.parametrize("method", list(METHOD_EXTRA))
def test_networks_are_the_parts_nets(tmp_path, method):
    import numpy as np

    from sbdiff.methods import make_method

    model = make_method(_cfg(tmp_path, method)).build(np.random.default_rng(0).normal(size=(64, 2)))
    nets = model.networks()
    expected = [part.net for part in (model.encoder, model.decoder) if hasattr(part, "net")]
    assert nets == expected and all(isinstance(n, torch.nn.Module) for n in nets)
    assert len(nets) == (2 if method in ("dsb", "sbfbsde") else 1)  # sgm: fixed, vsdm: linear encoder
