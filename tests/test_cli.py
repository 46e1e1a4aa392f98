"""The command line: a tiny run end to end, the run directory contract, and one clear line for
every kind of bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest

from sbdiff.cli import build_parser, build_train_config, main
from sbdiff.config import load_config

TINY = """
seed = 1
[model]
hidden = 32
blocks = 1
[train]
batch_size = 128
log_every = 20
[sample]
nfe = 20
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    x = rng.normal([1.0, -1.0], [1.0, 0.5], size=(2000, 2))
    np.save(d / "data.npy", x)
    (d / "tiny.toml").write_text(TINY)
    return d


@pytest.fixture(scope="module")
def run(files):
    out = files / "run"
    code = main(["train", "--data", str(files / "data.npy"), "--config", str(files / "tiny.toml"),
                 "--out", str(out), "--steps", "60", "--quiet"])
    assert code == 0
    return out


def test_run_directory_contract(run):
    for name in ("config.toml", "model.safetensors", "metrics.jsonl", "samples.png", "trajectories.png", "curves.png"):
        assert (run / name).is_file(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [20, 40, 60]
    for r in rows:
        assert {"step", "loss", "prior_loss", "drift_matching"} <= set(r)
        assert np.isfinite(r["loss"]) and r["prior_loss"] >= 0
    cfg, _ = load_config(run / "config.toml")
    assert cfg.train.steps == 60 and cfg.model.hidden == 32 and cfg.seed == 1
    assert cfg.reference["kind"] == "vp" and "beta_max" in cfg.reference


def test_existing_run_is_never_overwritten(run, files, capsys):
    before = (run / "model.safetensors").read_bytes()
    code = main(["train", "--data", str(files / "data.npy"), "--out", str(run), "--steps", "5", "--quiet"])
    assert code == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (run / "model.safetensors").read_bytes() == before


def test_sample_decode_encode_with_trajectories(run, tmp_path):
    out, traj = tmp_path / "s.npy", tmp_path / "traj.npy"
    assert main(["sample", str(run), "--n", "50", "--out", str(out), "--nfe", "10", "--trajectory", str(traj), "--quiet"]) == 0
    s, path = np.load(out), np.load(traj)
    assert s.shape == (50, 2) and path.shape == (11, 50, 2)
    assert np.allclose(path[-1], s, atol=1e-6)
    z = np.random.default_rng(1).normal(size=(30, 2))
    np.save(tmp_path / "z.npy", z)
    for ode in ([], ["--ode"]):
        assert main(["decode", str(run), "--from", str(tmp_path / "z.npy"), "--out", str(tmp_path / "x.npy"),
                     "--nfe", "8", "--trajectory", str(traj), "--quiet", *ode]) == 0
        x, path = np.load(tmp_path / "x.npy"), np.load(traj)
        assert x.shape == (30, 2) and path.shape == (9, 30, 2) and np.allclose(path[-1], x, atol=1e-5)
        assert main(["encode", str(run), "--from", str(tmp_path / "x.npy"), "--out", str(tmp_path / "e.npy"),
                     "--nfe", "8", "--trajectory", str(traj), "--quiet", *ode]) == 0
        path = np.load(traj)
        assert np.load(tmp_path / "e.npy").shape == (30, 2) and path.shape == (9, 30, 2)
        assert np.allclose(path[0], x, atol=1e-5)  # the encoder path starts at the given points


def test_ode_round_trip_through_cli(run, tmp_path):
    x = np.random.default_rng(2).normal([1.0, -1.0], [1.0, 0.5], size=(20, 2))
    np.save(tmp_path / "x.npy", x)
    main(["encode", str(run), "--from", str(tmp_path / "x.npy"), "--out", str(tmp_path / "z.npy"), "--ode", "--nfe", "200", "--quiet"])
    main(["decode", str(run), "--from", str(tmp_path / "z.npy"), "--out", str(tmp_path / "x2.npy"), "--ode", "--nfe", "200", "--quiet"])
    assert np.abs(np.load(tmp_path / "x2.npy") - x).max() < 0.05


def test_eval_json(run, files, tmp_path):
    out = tmp_path / "ev.json"
    assert main(["eval", str(run), "--data", str(files / "data.npy"), "--json", str(out), "--n", "50",
                 "--samples", "200", "--nfe", "20", "--quiet"]) == 0
    res = json.loads(out.read_text())
    for key in ("nll", "nelbo", "nll_bpd", "w2", "sliced_w2", "energy_distance"):
        assert np.isfinite(res[key]), key


def test_time_budget_stops_training(files, tmp_path):
    args = build_parser().parse_args(["train", "--data", str(files / "data.npy"), "--max-minutes", "0.01"])
    assert build_train_config(args).train.steps == 0  # the time budget alone
    out = tmp_path / "timed"
    assert main(["train", "--data", str(files / "data.npy"), "--config", str(files / "tiny.toml"), "--out", str(out),
                 "--max-minutes", "0.01", "--quiet"]) == 0
    cfg, _ = load_config(out / "config.toml")
    assert cfg.train.max_minutes == 0.01 and (out / "model.safetensors").is_file()


def _write(tmp_path, name, content):
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content)
    else:
        np.save(path, content)
    return str(path)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: ["--data", _write(p, "nan.npy", np.array([[0.0, 1.0], [np.nan, 1.0], [2.0, 2.0]]))], "contain NaN or inf"),
        (lambda p: ["--data", _write(p, "inf.npy", np.array([[0.0, np.inf], [1.0, 1.0]]))], "contain NaN or inf"),
        (lambda p: ["--data", _write(p, "rank.npy", np.zeros((4, 2, 2, 2, 2)))], "expected a 2-D array"),
        (lambda p: ["--data", _write(p, "empty.csv", "")], "CSV file is empty"),
        (lambda p: ["--data", _write(p, "empty.npy", np.zeros((0, 3)))], "data is empty"),
        (lambda p: ["--data", _write(p, "words.csv", "1,2\nthree,4\n")], "non-numeric value in CSV"),
        (lambda p: ["--data", "chekerboard"], "unknown dataset 'chekerboard'"),
        (lambda p: ["--data", "moons", "--config", _write(p, "c.toml", "[train]\nsteps_ = 3\n")], "unknown config key 'train.steps_'"),
        (lambda p: ["--data", "moons", "--prior", "moons"], "needs a bridge method"),
    ],
)
def test_bad_input_gives_one_clear_line(tmp_path, capsys, make, message):
    code = main(["train", *make(tmp_path), "--out", str(tmp_path / "r"), "--steps", "2", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("sbdiff: error: ") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r" / "model.safetensors").exists()


def test_unknown_method_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--method", "gan"])
    assert exc.value.code == 2
    assert "invalid choice: 'gan'" in capsys.readouterr().err


def test_other_commands_report_bad_input(run, tmp_path, capsys):
    bad = _write(tmp_path, "three.npy", np.zeros((5, 3)))
    assert main(["decode", str(run), "--from", bad, "--out", str(tmp_path / "o.npy"), "--quiet"]) == 2
    assert "dimension 3, the model has 2" in capsys.readouterr().err
    assert main(["sample", str(tmp_path), "--n", "3", "--out", str(tmp_path / "o.npy")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["sample", str(run), "--n", "3", "--out", str(tmp_path / "o.txt"), "--quiet"]) == 2
    assert "must be a .npy path" in capsys.readouterr().err
    assert main(["bench", "gaussian", "--dim", "0"]) == 2
    assert "--dim must be at least 1" in capsys.readouterr().err


def test_console_script_exit_status(tmp_path):
    bad = _write(tmp_path, "nan.npy", np.array([[np.nan, 1.0], [1.0, 1.0]]))
    proc = subprocess.run([sys.executable, "-m", "sbdiff.cli", "train", "--data", bad, "--out", str(tmp_path / "r")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"sbdiff: error: {bad}: 1 row(s) contain NaN or inf (first at row 0); clean the data first"]


def test_demo_writes_plots_metrics_and_one_summary_line(tmp_path, monkeypatch, capsys):
    import sbdiff.cli as cli

    real = cli.demo_config

    def tiny(quick):
        cfg, _, _ = real(quick)
        cfg.model.hidden, cfg.model.blocks = 32, 1
        cfg.train.steps, cfg.sample.nfe, cfg.data.n_samples = 50, 20, 2000
        return cfg, 50, 200

    monkeypatch.setattr(cli, "demo_config", tiny)
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo"), "--quiet"]) == 0
    for name in ("samples.png", "trajectories.png", "curves.png", "metrics.json", "config.toml", "model.safetensors"):
        assert (tmp_path / "demo" / name).is_file(), name
    res = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert {"nll", "nelbo", "w2", "on_checkerboard", "train_steps", "total_seconds"} <= set(res)
    assert res["train_steps"] == 50 and 0 <= res["on_checkerboard"] <= 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("demo: sgm on checkerboard")
    assert real(True)[0].train.max_minutes * 60 <= 90  # the quick demo's training fits its 2 minutes
