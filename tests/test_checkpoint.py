"""Checkpoint I/O: exact round trips of nested training state and RNG states, atomic writes that
leave the previous file intact on failure."""

import errno
import os
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from sbdiff import checkpoint as ck
from sbdiff._utils import SbdiffError


def _trained_adam():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, betas=(0.8, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(5, 3)).pow(2).mean().backward()
        opt.step()
        sched.step()
    return net, opt, sched


def test_pack_unpack_round_trips_optimizer_and_scheduler_state():
    net, opt, sched = _trained_adam()
    tensors = {}
    packed = ck.pack({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, "state", tensors)
    import json

    tensors = {k: v.clone() for k, v in tensors.items()}  # pack references the live state; a file holds copies
    back = ck.unpack(json.loads(json.dumps(packed)), tensors)  # through JSON, as stored
    ref = opt.state_dict()
    assert set(back["optimizer"]["state"]) == set(ref["state"]) == {0, 1, 2, 3}  # int keys survive
    for i, st in ref["state"].items():
        for k, v in st.items():
            assert torch.equal(back["optimizer"]["state"][i][k], v)
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.8, 0.95)  # tuples survive
    assert back["scheduler"]["last_epoch"] == 3 and back["scheduler"]["_last_lr"] == sched.get_last_lr()
    # loading the unpacked state into a fresh optimiser continues identically
    net2 = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    net2.load_state_dict(net.state_dict())
    opt2 = torch.optim.Adam(net2.parameters(), lr=1e-2, betas=(0.8, 0.95))
    opt2.load_state_dict(back["optimizer"])
    x = torch.randn(5, 3)
    for o, n in ((opt, net), (opt2, net2)):
        o.zero_grad()
        n(x).pow(2).mean().backward()
        o.step()
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), net2.parameters()))


def test_pack_refuses_unknown_objects():
    with pytest.raises(SbdiffError, match="cannot store a object"):
        ck.pack({"x": object()}, "state", {})


def test_rng_states_round_trip():
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(1), np.random.seed(2), random.seed(4)
    tensors = {}
    packed = ck.pack(ck.capture_rng(gen), "rng", tensors)
    a = (torch.rand(3), torch.rand(3, generator=gen), np.random.rand(3), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9), gen.manual_seed(9)
    ck.restore_rng(ck.unpack(packed, tensors), gen)
    b = (torch.rand(3), torch.rand(3, generator=gen), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and np.array_equal(a[2], b[2]) and a[3] == b[3]


def test_atomic_save_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "w.safetensors"
    ck.atomic_save({"a": torch.zeros(3)}, path)
    ck.atomic_save({"a": torch.ones(3)}, path)
    assert torch.equal(load_file(str(path))["a"], torch.ones(3))
    assert sorted(os.listdir(tmp_path)) == ["w.safetensors"]


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    ck.atomic_save({"a": torch.zeros(3)}, path)
    before = path.read_bytes()

    def full_disk(tensors, p, metadata):
        p.write_bytes(b"\x00" * 17)  # a partial write, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ck, "_write_file", full_disk)
    with pytest.raises(ck.CheckpointWriteError, match="no space left on device; the previous file there is intact"):
        ck.atomic_save({"a": torch.ones(3)}, path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["w.safetensors"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory_is_a_clear_error(tmp_path):
    path = tmp_path / "w.safetensors"
    ck.atomic_save({"a": torch.zeros(3)}, path)
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(ck.CheckpointWriteError, match="cannot write .*previous file there is intact"):
            ck.atomic_save({"a": torch.ones(3)}, path)
    finally:
        tmp_path.chmod(0o700)
    assert torch.equal(load_file(str(path))["a"], torch.zeros(3))


def test_checkpoint_file_round_trip_and_bad_files(tmp_path):
    net, opt, sched = _trained_adam()
    ema = torch.optim.swa_utils.AveragedModel(net)
    ema.update_parameters(net)
    path = tmp_path / ck.CHECKPOINT_FILE
    ck.write_checkpoint(path, model=net, ema=ema, meta={"step": 7, "sums": {"loss": 0.1 + 0.2}},
                        state={"optimizer": opt.state_dict(), "method": {"ipf_iter": 3, "half": "backward"}})
    model_state, ema_state, meta, state = ck.read_checkpoint(path)
    assert meta["step"] == 7 and meta["sums"]["loss"] == 0.1 + 0.2  # floats are exact
    assert int(ema_state["n_averaged"]) == 1
    assert all(torch.equal(model_state[k], v) for k, v in net.state_dict().items())
    assert state["method"] == {"ipf_iter": 3, "half": "backward"}
    with pytest.raises(SbdiffError, match="no checkpoint at"):
        ck.read_checkpoint(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(SbdiffError, match="not a readable checkpoint"):
        ck.read_checkpoint(tmp_path / "junk.safetensors")
    ck.atomic_save({"a": torch.zeros(1)}, tmp_path / "plain.safetensors")
    with pytest.raises(SbdiffError, match="not a sbdiff checkpoint"):
        ck.read_checkpoint(tmp_path / "plain.safetensors")
