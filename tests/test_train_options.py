"""Training settings beside the loop's defaults: bf16 autocast, shards, and their validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sbdiff import Config, SbdiffError, fit


def _tiny(steps: int = 6, **train) -> Config:
    cfg = Config()
    cfg.model.hidden, cfg.model.blocks, cfg.model.time_dim = 16, 1, 8
    cfg.train.steps, cfg.train.batch_size, cfg.train.warmup, cfg.train.log_every = steps, 32, 1, steps
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


@pytest.fixture
def data():
    return np.random.default_rng(0).normal(size=(200, 2))


def test_bf16_autocast_trains_close_to_fp32(data):
    full = fit(_tiny(), None, data=data, progress=False)
    half = fit(_tiny(precision="bf16"), None, data=data, progress=False)
    assert np.isfinite(half.last["loss"])
    # same random numbers, same steps: bf16 rounding (8-bit mantissa) moves the loss by well under 5 %
    assert half.last["loss"] == pytest.approx(full.last["loss"], rel=0.05)
    assert half.last["loss"] != full.last["loss"]  # autocast did run in bf16
    for p in half.model.parameters():  # master weights stay float32
        assert p.dtype == torch.float32


def test_shards_accumulate_to_the_same_step_size(data):
    one = fit(_tiny(steps=4), None, data=data, progress=False)
    two = fit(_tiny(steps=4, shards=2), None, data=data, progress=False)
    # different per-shard random numbers, the same expected loss
    assert two.last["loss"] == pytest.approx(one.last["loss"], rel=0.5)


@pytest.mark.parametrize("key, value, match", [
    ("precision", "fp16", "train.precision"),
    ("shards", 0, "train.shards"),
    ("shards", 3, "multiple of train.shards"),
])
def test_bad_training_options(key, value, match):
    cfg = _tiny()
    setattr(cfg.train, key, value)
    with pytest.raises(SbdiffError, match=match):
        cfg.validate()
