"""Watching a run (docs/monitoring.md): TensorBoard events that mirror metrics.jsonl and leave the
weights alone, a log row at every phase's end, curves.png and its phase boundaries, ``sbdiff plot``
on a killed run, the progress bar's fields."""

from __future__ import annotations

import json
import tomllib
import math
import signal
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import matplotlib.axes
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import assert_train_refused
from sbdiff import Config, fit, load_config
from sbdiff import train
from sbdiff.cli import main
from sbdiff.config import config_from_dict
from sbdiff.methods import make_method
from sbdiff.plots import phase_boundaries, read_metrics

NO_TENSORBOARD = "the optional tensorboard package is not installed (pip install 'sbdiff[tensorboard]')"

# 6 + 2 x (8 + 8) = 38 steps: phases end at 6, 14, 22, 30, 38; log rows every 5 steps besides
TINY = """
seed = 4
[data]
data = "moons"
n_samples = 500
[model]
hidden = 16
blocks = 1
time_dim = 8
[train]
batch_size = 32
warmup = 2
log_every = 5
checkpoint_every = 7
[sample]
nfe = 5
[{method}]
iterations = 3
half_steps = 8
first_steps = 6
num_steps = 4
cache_size = 64
"""
PHASE_ENDS = [6, 14, 22, 30, 38]


def _config(method: str = "dsbm", **log) -> Config:
    raw = tomllib.loads(TINY.format(method=method))
    raw["method"] = method
    if method == "dsbm":
        raw["dsbm"]["coupling"] = "independent"
    raw["log"] = log
    return config_from_dict(raw, Config()).validate()


def _weights(run: Path) -> dict:
    return load_file(str(run / "model.safetensors"))


def _raw_events(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar event of the run directory's event files, as written (no reader's purge)."""
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2

    out: dict[str, list] = {}
    for path in sorted(run.glob("events.out.tfevents.*")):
        for record in RawEventFileLoader(str(path)).Load():
            event = event_pb2.Event.FromString(record)
            for v in event.summary.value:
                if v.HasField("simple_value"):
                    out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def _expected(rows: list[dict]) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list] = {}
    for r in rows:
        for k, v in r.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                out.setdefault(k, []).append((r["step"], v))
    return out


def _assert_same(events: dict, rows: list[dict]) -> None:
    expected = _expected([r for r in rows if "loss" in r or "warning" not in r])  # log steps' rows
    assert set(events) == set(expected)
    for tag, pairs in expected.items():
        got = events[tag]
        assert [s for s, _ in got] == [s for s, _ in pairs], tag
        for (_, a), (_, b) in zip(got, pairs):  # float32 in the events
            assert (math.isnan(a) and math.isnan(b)) or np.float32(a) == np.float32(b), (tag, a, b)


def test_tensorboard_events_mirror_metrics_and_leave_the_weights_alone(tmp_path, monkeypatch):
    """A dsbm run with TensorBoard, killed after step 25 (its checkpoint: step 22) and resumed: the
    events equal metrics.jsonl (tags, steps, float32 values; the killed session's events past the
    checkpoint dropped, in the files themselves and for TensorBoard's reader), a sample image at
    every checkpoint, and the weights of the same run without TensorBoard, bit for bit."""
    pytest.importorskip("tensorboard", reason=NO_TENSORBOARD)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    off = tmp_path / "off"
    fit(_config(), off, progress=False)
    on = tmp_path / "on"
    step = train._train_step

    def killed(s, state):
        if state.step == 25:
            raise RuntimeError("killed")
        return step(s, state)

    monkeypatch.setattr(train, "_train_step", killed)
    with pytest.raises(RuntimeError, match="killed"):
        fit(_config(tensorboard=True), on, progress=False)
    assert max(s for s, _ in _raw_events(on)["loss"]) == 25  # past the checkpoint of step 22
    monkeypatch.setattr(train, "_train_step", step)
    fit(_config(tensorboard=True), on, progress=False, resume=True)

    a, b = _weights(off), _weights(on)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = read_metrics(on / "metrics.jsonl")
    assert [r["step"] for r in rows] == [r["step"] for r in read_metrics(off / "metrics.jsonl")]
    _assert_same(_raw_events(on), rows)
    acc = EventAccumulator(str(on), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    _assert_same({tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}, rows)
    checkpoints = sorted(set(range(7, 39, 7)) | set(PHASE_ENDS))
    assert [e.step for e in acc.Images("samples")] == checkpoints


def test_trim_events_drops_the_steps_past_a_checkpoint(tmp_path):
    """What a resume does to the events of earlier sessions (TensorBoard on or off in the new one)."""
    pytest.importorskip("tensorboard", reason=NO_TENSORBOARD)
    from torch.utils.tensorboard import SummaryWriter

    from sbdiff.monitoring import trim_events

    with SummaryWriter(str(tmp_path)) as w:
        for k in range(1, 11):
            w.add_scalar("loss", float(k), k)
    trim_events(tmp_path, 6)
    assert _raw_events(tmp_path) == {"loss": [(k, float(k)) for k in range(1, 7)]}
    trim_events(tmp_path, 0)  # nothing left: the file goes
    assert not list(tmp_path.glob("events.out.tfevents.*"))


def test_tensorboard_is_free_to_change_at_a_resume():
    cfg = config_from_dict({"log": {"tensorboard": True}}, Config())
    assert cfg.log.tensorboard and train._is_free("log.tensorboard")
    assert train.config_changes(Config(), cfg) == {"log.tensorboard": (False, True)}


def test_missing_tensorboard_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` fails
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    assert_train_refused(tmp_path, capsys, "sgm", ["--tensorboard"],
                         "install it with: pip install 'sbdiff[tensorboard]'")


@pytest.fixture(scope="module")
def dsb_run(tmp_path_factory):
    """``sbdiff train`` of a tiny dsb run, recording where curves.png's vertical lines are drawn."""
    d = tmp_path_factory.mktemp("dsb")
    (d / "dsb.toml").write_text(TINY.format(method="dsb"))
    lines, axvline = [], matplotlib.axes.Axes.axvline

    def recording(self, x=0, *args, **kwargs):
        lines.append(x)
        return axvline(self, x, *args, **kwargs)

    matplotlib.axes.Axes.axvline = recording
    try:
        assert main(["train", "--method", "dsb", "--config", str(d / "dsb.toml"), "--out", str(d / "run"),
                     "--quiet"]) == 0
    finally:
        matplotlib.axes.Axes.axvline = axvline
    return d / "run", lines


def test_phase_rows_and_the_plotted_boundaries(dsb_run):
    """A row at the last step of every phase of the schedule, named by its phase; curves.png's
    boundaries are drawn at those steps (4 panels), as phase_boundaries says."""
    run, lines = dsb_run
    assert (run / "curves.png").is_file()
    rows = read_metrics(run / "metrics.jsonl")
    cfg, _ = load_config(run / "config.toml")
    schedule = make_method(cfg.validate()).schedule
    ends = sorted({schedule.phase(k).end for k in range(38)})
    assert ends == PHASE_ENDS and {r["step"] for r in rows} == set(range(5, 39, 5)) | set(ends)
    for r in rows:
        phase = schedule.phase(r["step"] - 1)
        assert r["phase_name"] == f"{phase.role} {phase.iteration}"
    assert phase_boundaries(rows) == ends[:-1]
    assert sorted(set(lines)) == ends[:-1] and len(lines) == 4 * len(ends[:-1])


def test_phase_names_and_progress_fields():
    dsbm = make_method(_config())
    assert [dsbm.phase_name(k) for k in (0, 5, 6, 13, 14, 37, 38)] == [
        "decoder 0", "decoder 0", "encoder 0", "encoder 0", "decoder 1", "decoder 2", "decoder 2"]
    assert dsbm.progress_info(14) == {"phase": "decoder 1/2"}
    coupled = _config()
    coupled.dsbm.schedule, coupled.dsbm.cache_refresh = "coupled", 4
    assert make_method(coupled.validate()).phase_name(3) is None
    assert make_method(Config().validate()).phase_name(3) is None  # sgm: no phases


def test_time_left_by_the_budget_and_its_plan():
    assert [train._format_seconds(s) for s in (45, 151, 3720)] == ["45s", "2m31s", "1h02m"]
    cfg = Config()
    cfg.train.max_minutes = 1.0
    state = train.LoopState(step=60, elapsed_s=30.0, started=time.monotonic())
    s = SimpleNamespace(config=cfg, bar=SimpleNamespace(total=100))
    assert train._time_left(s, state) == pytest.approx(30.0, abs=0.5)  # the budget
    state.plan = {"seconds_per_step": 0.1}
    assert train._time_left(s, state) == pytest.approx(4.0)  # the plan: 40 steps left at 0.1 s
    cfg.train.max_minutes = 0.0
    assert train._time_left(s, state) is None


def test_plot_redraws_a_killed_run(dsb_run, tmp_path, capsys):
    """``sbdiff plot``: curves and samples from the checkpoint of a run without its weights; curves
    alone from a metrics.jsonl alone; a bad directory is one line and exit status 2."""
    run, _ = dsb_run
    killed = tmp_path / "killed"
    killed.mkdir()
    for name in ("config.toml", "metrics.jsonl", "checkpoint.safetensors"):
        (killed / name).write_bytes((run / name).read_bytes())
    assert main(["plot", str(killed), "--quiet"]) == 0
    for name in ("curves.png", "samples.png", "trajectories.png"):
        assert (killed / name).is_file(), name
    assert "checkpoint.safetensors" in capsys.readouterr().out
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "metrics.jsonl").write_bytes((run / "metrics.jsonl").read_bytes())
    assert main(["plot", str(bare), "--quiet"]) == 0
    assert sorted(p.name for p in bare.iterdir()) == ["curves.png", "metrics.jsonl"]
    capsys.readouterr()
    for bad in (tmp_path / "missing", tmp_path / "killed" / "curves.png", tmp_path):
        assert main(["plot", str(bad)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("sbdiff: error: ") and len(err.splitlines()) == 1, err


def test_a_run_stopped_by_a_signal_draws_its_curves(tmp_path, monkeypatch, capsys):
    from sbdiff.methods.sgm import SGM

    calls, losses = {"n": 0}, SGM.losses

    def interrupting(self, model, batch, generator):
        calls["n"] += 1
        if calls["n"] == 12:
            signal.raise_signal(signal.SIGINT)
        return losses(self, model, batch, generator)

    monkeypatch.setattr(SGM, "losses", interrupting)
    (tmp_path / "sgm.toml").write_text(TINY.format(method="vsdm").split("[vsdm]")[0])
    code = main(["train", "--config", str(tmp_path / "sgm.toml"), "--out", str(tmp_path / "run"), "--steps", "30",
                 "--quiet"])
    assert code == 128 + signal.SIGINT and "--resume" in capsys.readouterr().err
    assert (tmp_path / "run" / "curves.png").is_file() and not (tmp_path / "run" / "model.safetensors").exists()
