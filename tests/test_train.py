"""Fault-tolerant training (issue 9): a run killed (SIGKILL), stopped (SIGTERM/SIGINT), hit by
NaNs or by a failing write, then resumed, ends bit-identical to an uninterrupted run of the same
steps; each logged step is in ``metrics.jsonl`` once; changed configs are refused unless allowed."""

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from sbdiff import checkpoint as ck
from sbdiff._utils import SbdiffError
from sbdiff.cli import build_parser, build_train_config, main
from sbdiff.methods.sgm import SGM
from sbdiff.train import TrainingInterrupted, fit, load_run, resume_run

N = 200  # steps of every run here
TINY = """
seed = 3
[data]
data = "moons"
n_samples = 2000
[model]
hidden = 32
blocks = 1
time_dim = 16
[train]
batch_size = 64
log_every = 15
checkpoint_every = 20
checkpoint_minutes = 0.0
max_nonfinite = 3
[sample]
nfe = 10
"""


def _config(files, *extra):
    args = build_parser().parse_args(["train", "--config", str(files / "tiny.toml"), "--steps", str(N), *extra])
    return build_train_config(args)


def _env():
    # the same intra-op thread count as this process (one_thread), so float reductions match
    return {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "MKL_NUM_THREADS": str(torch.get_num_threads())}


def _ckpt_step(run) -> int | None:
    try:
        with safe_open(str(run / ck.CHECKPOINT_FILE), framework="pt") as fh:
            return json.loads(fh.metadata()["sbdiff"])["step"]
    except Exception:  # not there yet
        return None


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_same_run(run, base):
    a, b = load_file(str(run / "model.safetensors")), load_file(str(base / "model.safetensors"))
    assert set(a) == set(b) and any(k.startswith("ema.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bit-identical, model and EMA
    ma, mb = _metrics(run), _metrics(base)
    assert [r["step"] for r in ma] == [r["step"] for r in mb] == [*range(15, N, 15), N]  # each step once
    for ra, rb in zip(ma, mb):
        ra.pop("elapsed_s"), rb.pop("elapsed_s")
        assert ra == rb  # the logged losses too (accumulators restored mid-window)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread for this module


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    (d / "tiny.toml").write_text(TINY)
    return d


@pytest.fixture(scope="module")
def base(files):
    """The uninterrupted run of N steps."""
    res = fit(_config(files), files / "base", progress=False)
    assert res.steps == N and res.stopped_by == "steps" and res.resumed_from is None
    return files / "base"


def _spawn(files, run):
    cmd = [sys.executable, "-m", "sbdiff.cli", "train", "--config", str(files / "tiny.toml"), "--steps", str(N),
           "--out", str(run), "--quiet"]
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(proc, run, at_least, timeout=120):
    t0 = time.monotonic()
    while (_ckpt_step(run) or 0) < at_least:
        assert proc.poll() is None, f"the run ended before it could be stopped: {proc.communicate()}"
        assert time.monotonic() - t0 < timeout, "no checkpoint appeared"
        time.sleep(0.005)


def test_sigkill_then_resume_is_bit_identical(files, base):
    run = files / "killed"
    proc = _spawn(files, run)
    _wait_for_checkpoint(proc, run, 40)  # at least one checkpoint replaced by a newer one
    proc.kill()
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    stopped_at = _ckpt_step(run)
    assert 40 <= stopped_at < N and not (run / "model.safetensors").exists()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    _assert_same_run(run, base)
    resumes = [json.loads(line) for line in (run / "resumes.jsonl").read_text().splitlines()]
    assert resumes[0]["from_step"] == stopped_at and resumes[0]["changed"] == {}


def test_sigterm_writes_checkpoint_and_resumes(files, base, capsys):
    run = files / "terminated"
    proc = _spawn(files, run)
    _wait_for_checkpoint(proc, run, 20)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    m = re.search(r"training stopped by SIGTERM after step (\d+); checkpoint saved in .*"
                  r"Continue with: sbdiff train --resume (\S+)", err)
    assert m, err
    step = int(m.group(1))
    assert _ckpt_step(run) == step < N  # the checkpoint is of the step the signal finished
    assert max(r["step"] for r in _metrics(run)) <= step
    assert resume_run(m.group(2), progress=False).resumed_from == step
    _assert_same_run(run, base)


def test_sigint_in_process_checkpoints_mid_window_and_restores_handlers(files, base, monkeypatch):
    run = files / "sigint"
    calls = {"n": 0}
    losses = SGM.losses

    def interrupting(self, model, batch, generator):
        calls["n"] += 1
        if calls["n"] == 37:
            signal.raise_signal(signal.SIGINT)  # arrives during step 37
        return losses(self, model, batch, generator)

    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    monkeypatch.setattr(SGM, "losses", interrupting)
    with pytest.raises(TrainingInterrupted, match="SIGINT after step 37") as info:
        fit(_config(files), run, progress=False)
    assert info.value.signum == signal.SIGINT and info.value.step == 37
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert _ckpt_step(run) == 37  # between checkpoints (20, 40) and log steps (30, 45)
    monkeypatch.setattr(SGM, "losses", losses)
    res = resume_run(run, progress=False)
    assert res.steps == N and res.resumed_from == 37
    _assert_same_run(run, base)


def _nan_from(monkeypatch, first, last=10**9, where="loss"):
    losses = SGM.losses
    calls = {"n": 0}

    def poisoned(self, model, batch, generator):
        calls["n"] += 1
        out = losses(self, model, batch, generator)
        if first <= calls["n"] <= last:
            if where == "loss":
                out["loss"] = out["loss"] * float("nan")
            else:  # finite loss, NaN gradient: d/dp sqrt(u) at u = 0 is inf, times 0
                p = next(model.parameters())
                out["loss"] = out["loss"] + 0.0 * torch.sqrt(p.sum() - p.sum().detach())
        return out

    monkeypatch.setattr(SGM, "losses", poisoned)


def test_nan_loss_skips_then_stops_keeping_last_good_checkpoint(files, base, monkeypatch):
    run = files / "nan"
    _nan_from(monkeypatch, 50)
    with pytest.raises(SbdiffError, match=r"non-finite loss at step 53 \(4 steps in a row, more than "
                                          r"train.max_nonfinite = 3\); the last good checkpoint \(step 40\)"):
        fit(_config(files), run, progress=False)
    assert _ckpt_step(run) == 40 and not (run / "model.safetensors").exists()
    assert max(r["step"] for r in _metrics(run)) == 45
    monkeypatch.undo()
    res = resume_run(run, progress=False)  # the last good checkpoint loads and continues exactly
    assert res.resumed_from == 40
    _assert_same_run(run, base)


def test_nan_stop_at_once(files, monkeypatch, tmp_path):
    _nan_from(monkeypatch, 5)
    with pytest.raises(SbdiffError, match=r"non-finite loss at step 5 \(train.max_nonfinite = 0 stops at the first\); "
                                          "no checkpoint was written"):
        fit(_with(_config(files), max_nonfinite=0), tmp_path / "r", progress=False)


def _with(cfg, **train):
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


@pytest.mark.parametrize("where", ["loss", "gradients"])
def test_nonfinite_steps_are_skipped_without_update(files, monkeypatch, tmp_path, where):
    _nan_from(monkeypatch, 10, 11, where)
    res = fit(_with(_config(files), steps=30), tmp_path / "r", progress=False)
    assert res.steps == 30 and res.skipped == 2
    rows = _metrics(tmp_path / "r")
    assert rows[0]["skipped_nonfinite"] == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    _, _, meta, state = ck.read_checkpoint(tmp_path / "r" / ck.CHECKPOINT_FILE)
    adam_steps = {float(s["step"]) for s in state["optimizer"]["state"].values()}
    assert adam_steps == {28.0} and state["scheduler"]["last_epoch"] == 28  # 2 updates skipped
    assert meta["skipped"] == 2 and meta["streak"] == 0
    _, model = load_run(tmp_path / "r")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_failed_write_keeps_previous_checkpoint(files, base, monkeypatch):
    run = files / "enospc"
    write = ck._write_file
    calls = {"n": 0}

    def failing(tensors, path, metadata):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint: half written, then the disk is full
            path.write_bytes(b"\x00" * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write(tensors, path, metadata)

    monkeypatch.setattr(ck, "_write_file", failing)
    with pytest.raises(ck.CheckpointWriteError, match=r"training stopped at step 40: cannot write .*checkpoint"
                                                      r".*no space left on device.*last good checkpoint \(step 20\) "
                                                      r"is intact.*--resume"):
        fit(_config(files), run, progress=False)
    assert _ckpt_step(run) == 20
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    assert ck.read_checkpoint(run / ck.CHECKPOINT_FILE)[2]["step"] == 20
    resume_run(run, progress=False)
    _assert_same_run(run, base)


def test_changed_config_is_refused_unless_allowed(files, base, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(base, run)
    other = tmp_path / "other.toml"
    other.write_text("[train]\nlr = 0.001\nbatch_size = 32\n")
    code = main(["train", "--resume", str(run), "--config", str(other), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "changed: train.batch_size (64 -> 32), train.lr (0.002 -> 0.001)" in err and "--allow-config-change" in err
    # allowed, but the checkpoint cannot fit another architecture: a clear error, the run untouched
    wide = tmp_path / "wide.toml"
    wide.write_text("[model]\nhidden = 48\n")
    saved = (run / "config.toml").read_text()
    assert main(["train", "--resume", str(run), "--config", str(wide), "--allow-config-change", "--quiet"]) == 2
    assert "does not fit the model of this config" in capsys.readouterr().err
    assert (run / "config.toml").read_text() == saved and not (run / "resumes.jsonl").exists()
    # data with other contents under the same config
    with pytest.raises(SbdiffError, match=r"data \(contents\)"):
        fit(_config(files), run, resume=True, data=torch.randn(100, 2).numpy(), progress=False)
    # budgets may change freely: extend the run
    assert main(["train", "--resume", str(run), "--steps", str(N + 20), "--quiet"]) == 0
    assert max(r["step"] for r in _metrics(run)) == N + 20
    # the opt-in: continues with the new lr, recorded in resumes.jsonl and config.toml
    assert main(["train", "--resume", str(run), "--config", str(other), "--steps", str(N + 40),
                 "--allow-config-change", "--quiet"]) == 0
    cfg, _ = load_run(run)
    assert cfg.train.lr == 0.001 and cfg.train.batch_size == 32 and cfg.train.steps == N + 40
    resumes = [json.loads(line) for line in (run / "resumes.jsonl").read_text().splitlines()]
    assert resumes[-1]["changed"]["train.lr"] == [0.002, 0.001] and resumes[-1]["from_step"] == N + 20
    rows = _metrics(run)
    assert rows[-1]["step"] == N + 40 and rows[-1]["lr"] == 0.001
    assert [r["step"] for r in rows] == sorted({r["step"] for r in rows})


def test_resume_argument_errors(files, tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path), "--quiet"]) == 2
    assert "is not a run directory" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "drop --out" in capsys.readouterr().err
    assert main(["train", "--config", str(files / "tiny.toml"), "--allow-config-change", "--quiet"]) == 2
    assert "only applies with --resume" in capsys.readouterr().err


def test_resume_before_first_checkpoint_restarts(files, base, tmp_path):
    import shutil

    run = tmp_path / "early"
    run.mkdir()
    shutil.copy(base / "config.toml", run / "config.toml")  # killed before its first checkpoint
    (run / "metrics.jsonl").write_text('{"step": 15, "loss": 1.0}\n{"step": 30, "lo')  # cut mid-line
    res = resume_run(run, progress=False)
    assert res.resumed_from is None
    _assert_same_run(run, base)


class _CustomNet(torch.nn.Module):
    """A network of a class the trainer does not know (not TimeMLP/UNet): ``(x, t) -> (B, d)``."""

    def __init__(self, dim):
        super().__init__()
        self.lin = torch.nn.Linear(dim + 1, dim)

    def forward(self, x, t):
        return self.lin(torch.cat([x, t.reshape(-1, 1).expand(x.shape[0], 1).to(x)], dim=1))


def test_compile_compiles_any_network_class(files, monkeypatch):
    build = SGM.build

    def custom_build(self, data, prior=None):
        model = build(self, data, prior)
        model.decoder.net = _CustomNet(model.dim)
        return model

    compiled = []
    monkeypatch.setattr(SGM, "build", custom_build)
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(self))  # not really
    res = fit(_with(_config(files), steps=3, compile=True), progress=False)
    assert res.steps == 3
    assert len(compiled) == 1 and isinstance(compiled[0], _CustomNet)  # SGM's encoder is the fixed reference


def test_prior_loss_monitor_has_its_own_stream(files, monkeypatch, tmp_path):
    from sbdiff.distributed import step_generator
    from sbdiff.train import PRIOR_LOSS_STREAM

    prior_loss, seen = SGM.prior_loss, []

    def recording(self, model, batch, generator):
        seen.append(generator.get_state().clone())  # before it draws anything
        return prior_loss(self, model, batch, generator)

    monkeypatch.setattr(SGM, "prior_loss", recording)
    cfg = _with(_config(files), steps=30)
    fit(cfg, tmp_path / "r", progress=False)
    assert [r["step"] for r in _metrics(tmp_path / "r")] == [15, 30]
    for state, step in zip(seen, (15, 30), strict=True):  # fresh: seeded by (seed, step index, 999)
        assert torch.equal(state, step_generator(cfg.seed, step - 1, PRIOR_LOSS_STREAM).get_state())


def test_loop_state_is_the_checkpoint_meta(files, monkeypatch, tmp_path):
    from sbdiff import train
    from sbdiff.train import LoopState

    write, metas = train.write_checkpoint, []

    def recording(path, *, meta, **kw):
        metas.append(json.loads(json.dumps(meta)))  # as the file holds it
        return write(path, meta=meta, **kw)

    monkeypatch.setattr(train, "write_checkpoint", recording)
    fit(_with(_config(files), steps=30), tmp_path / "r", progress=False)
    meta = metas[0]  # step 20: mid log window (rows at 15 and 30)
    assert set(meta) == {"step", "elapsed_s", "last", "log_sums", "log_count", "skipped", "streak", "phase_updates",
                         "method", "data_sha256", "config", "torch"}
    assert set(ck.read_checkpoint(tmp_path / "r" / ck.CHECKPOINT_FILE)[2]) == set(meta) | {"format"}
    state = LoopState.from_meta(meta)
    assert state.step == 20 and state.log_count == 5 and state.last["step"] == 15
    assert set(state.log_sums) == {"loss", "drift_matching"} and all(n == 5 for _, n in state.log_sums.values())
    again = json.loads(json.dumps(state.to_meta()))
    assert {k: v for k, v in again.items() if k != "elapsed_s"} == {k: meta[k] for k in again if k != "elapsed_s"}
    assert again["elapsed_s"] >= meta["elapsed_s"]
    old = {**meta, "log_sums": {"loss": 2.5}}  # older checkpoints: bare sums over log_count steps
    assert LoopState.from_meta(old).log_sums == {"loss": (2.5, 5)}
    del old["phase_updates"]  # checkpoints before train.phase_average
    assert LoopState.from_meta(old).phase_updates == 0
