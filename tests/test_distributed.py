"""Multi-process training (DDP over gloo, launched by torchrun) equals one process with the same
global batch, shards and seed; only rank 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from sbdiff import distributed
from sbdiff._utils import SbdiffError
from sbdiff.config import load_config
from sbdiff.train import fit, load_run

CONFIG = """
seed = 3
method = "{method}"
[data]
data = "{data}"
[model]
hidden = 32
blocks = 1
time_dim = 16
[train]
steps = 12
batch_size = 64
shards = 2
log_every = 4
checkpoint_every = 6
warmup = 2
[sample]
nfe = 20
{extra}"""

# Per method: the preset's own smoke setting (``Method.smoke``: a schedule that switches phase or
# updates its encoder inside the 12 steps, with small caches), read from the registry.
def _smoke(method: str) -> str:
    from sbdiff.registry import method_class

    return method_class(method).smoke


def _registered() -> list[str]:
    from sbdiff.registry import REGISTRY

    return list(REGISTRY)


def _small_run(tmp_path, method="sgm"):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(500, 2)) @ np.array([[1.0, 0.3], [0.0, 0.5]])
    np.save(tmp_path / "data.npy", data)
    cfg_path = tmp_path / "cfg.toml"
    cfg_path.write_text(CONFIG.format(data=tmp_path / "data.npy", method=method, extra=_smoke(method)))
    return tmp_path, cfg_path


@pytest.fixture
def small_run(tmp_path):
    return _small_run(tmp_path)


def _torchrun(args, env_extra=None, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "sbdiff.cli", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("method", _registered())
def test_ddp_two_processes_equal_one_process(tmp_path, method):
    tmp, cfg_path = _small_run(tmp_path, method)
    proc = _torchrun(["train", "--config", str(cfg_path), "--out", str(tmp / "ddp"), "--quiet"])
    assert proc.returncode == 0, proc.stderr[-3000:]

    cfg, _ = load_config(cfg_path)
    fit(cfg, tmp / "single", progress=False)
    for ema in (False, True):
        _, ddp_model = load_run(tmp / "ddp", ema=ema)
        _, one_model = load_run(tmp / "single", ema=ema)
        ddp_state, one_state = ddp_model.state_dict(), one_model.state_dict()
        assert ddp_state.keys() == one_state.keys()
        for key in one_state:
            torch.testing.assert_close(ddp_state[key], one_state[key], rtol=1e-4, atol=1e-5, msg=key)
    # the runs did train: the weights moved away from the model after one step
    init_cfg, _ = load_config(cfg_path)
    init_cfg.train.steps = 1
    fit(init_cfg, tmp / "one_step", progress=False)
    early, late = load_run(tmp / "one_step", ema=False)[1], load_run(tmp / "single", ema=False)[1]
    moved = max(float((a - b).detach().abs().max()) for a, b in zip(early.parameters(), late.parameters()))
    assert moved > 1e-2  # a thousand times the tolerance above

    # one writer: the run records the world size, and each log step appears once
    ddp_cfg, _ = load_config(tmp / "ddp" / "config.toml")
    assert ddp_cfg.train.world_size == 2 and ddp_cfg.train.shards == 2
    one_cfg, _ = load_config(tmp / "single" / "config.toml")
    assert one_cfg.train.world_size == 1
    single = [json.loads(line) for line in (tmp / "single" / "metrics.jsonl").read_text().splitlines()]
    multi = [json.loads(line) for line in (tmp / "ddp" / "metrics.jsonl").read_text().splitlines()]
    steps = [row["step"] for row in multi]  # every 4 steps, and at each phase's last step (phased presets)
    assert steps == [row["step"] for row in single] and steps == sorted(set(steps)) and {4, 8, 12} <= set(steps)
    for a, b in zip(single, multi):  # logged losses are the all-reduced means: equal too
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    written = {p.name for p in (tmp / "ddp").iterdir()}
    assert written - {"samples.png", "trajectories.png", "curves.png"} == {p.name for p in (tmp / "single").iterdir()}


def test_ddp_rejects_shards_not_multiple_of_world(small_run):
    tmp, cfg_path = small_run
    cfg_path.write_text(cfg_path.read_text().replace("shards = 2", "shards = 3").replace("batch_size = 64",
                                                                                        "batch_size = 96"))
    proc = _torchrun(["train", "--config", str(cfg_path), "--out", str(tmp / "bad"), "--quiet"])
    assert proc.returncode != 0
    assert "not a multiple of the 2 processes" in proc.stderr


def test_detect_reads_torchrun_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.detect() == distributed.DistEnv(0, 1, 0)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    env = distributed.detect()
    assert env.active and not env.is_writer and env.world_size == 4
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(SbdiffError, match="inconsistent torchrun environment"):
        distributed.detect()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(SbdiffError, match="not an integer"):
        distributed.detect()


def test_step_generator_is_counter_based():
    a = torch.rand(4, generator=distributed.step_generator(1, 7, 2))
    b = torch.rand(4, generator=distributed.step_generator(1, 7, 2))
    c = torch.rand(4, generator=distributed.step_generator(1, 7, 3))
    d = torch.rand(4, generator=distributed.step_generator(1, 8, 2))
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, d)


def test_shard_slices():
    assert distributed.shard_slices(8, 2) == [slice(0, 4), slice(4, 8)]
    with pytest.raises(SbdiffError, match="multiple"):
        distributed.shard_slices(10, 3)
