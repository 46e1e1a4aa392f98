"""The command line of conditional generation (DESIGN §4.6, §8): labels (`train --cond`, `sample
--cond K --guidance W`), series (`train --window L --horizon H`, `forecast`), conditional `eval`, and
one line with exit status 2 for each kind of bad input."""

import json

import numpy as np
import pytest

from sbdiff.cli import main

from conftest import write_gluonts

TINY = """
[model]
hidden = 32
blocks = 1
[train]
batch_size = 64
log_every = 10
[sample]
nfe = 10
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cond")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 600)
    x = rng.normal(size=(600, 2)) * 0.3 + np.array([[-2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])[labels]
    np.save(d / "x.npy", x)
    np.save(d / "labels.npy", labels)
    np.save(d / "short_labels.npy", labels[:-1])
    t = np.arange(80)
    series = np.stack([np.sin(2 * np.pi * t / 4), np.cos(2 * np.pi * t / 8)], 1) + 0.1 * rng.normal(size=(80, 2))
    np.savetxt(d / "series.csv", series, delimiter=",", header="a,b", comments="")
    np.save(d / "history.npy", series[-10:])
    (d / "tiny.toml").write_text(TINY)
    return d


@pytest.fixture(scope="module")
def label_run(files):
    out = files / "labels-run"
    assert main(["train", "--data", str(files / "x.npy"), "--cond", str(files / "labels.npy"), "--config",
                 str(files / "tiny.toml"), "--out", str(out), "--steps", "30", "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def series_run(files):
    out = files / "series-run"
    assert main(["train", "--method", "vsdm", "--data", str(files / "series.csv"), "--window", "6", "--horizon", "2",
                 "--config", str(files / "tiny.toml"), "--out", str(out), "--steps", "30", "--quiet"]) == 0
    return out


def test_label_run_samples_a_class_with_and_without_guidance(label_run, tmp_path):
    assert (label_run / "samples.png").is_file()
    for extra in ([], ["--guidance", "2"]):
        out = tmp_path / f"s{len(extra)}.npy"
        assert main(["sample", str(label_run), "--cond", "1", "--n", "7", "--out", str(out), "--quiet", *extra]) == 0
        assert np.load(out).shape == (7, 2)
    res = tmp_path / "eval.json"
    assert main(["eval", str(label_run), "--json", str(res), "--n", "30", "--samples", "30", "--quiet"]) == 0
    keys = json.loads(res.read_text())
    assert {"accuracy_w0", "fd_w0", "classifier_accuracy", "nll", "nll_null"} <= set(keys)


def test_series_run_forecasts_from_a_history(series_run, files, tmp_path):
    assert (series_run / "samples.png").is_file()
    out = tmp_path / "f.npy"
    assert main(["forecast", str(series_run), "--history", str(files / "history.npy"), "--n", "5", "--out", str(out),
                 "--quiet"]) == 0
    assert np.load(out).shape == (5, 2, 2)
    res = tmp_path / "eval.json"
    assert main(["eval", str(series_run), "--json", str(res), "--samples", "20", "--quiet"]) == 0
    keys = json.loads(res.read_text())
    assert {"crps", "crps_sum", "coverage_50", "coverage_90", "nll"} <= set(keys)


def _fails(args, capsys, match):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sbdiff: error:") and match in err[0], err


def test_bad_conditional_input_is_one_line_and_exit_2(label_run, series_run, files, tmp_path, capsys):
    out = str(tmp_path / "o.npy")
    train = ["train", "--config", str(files / "tiny.toml"), "--steps", "2", "--quiet"]
    _fails([*train, "--data", str(files / "x.npy"), "--cond", str(files / "short_labels.npy"),
            "--out", str(tmp_path / "a")], capsys, "599 labels for 600 rows")
    _fails([*train, "--data", str(files / "series.csv"), "--window", "4", "--horizon", "4",
            "--out", str(tmp_path / "b")], capsys, "horizon H = 4 must be less than the window L = 4")
    _fails([*train, "--method", "dsb", "--data", str(files / "x.npy"), "--cond", str(files / "labels.npy"),
            "--out", str(tmp_path / "c")], capsys, "does not generate under a context")
    _fails(["sample", str(label_run), "--cond", "3", "--n", "2", "--out", out], capsys, "never seen in training")
    _fails(["sample", str(label_run), "--n", "2", "--out", out], capsys, "give --cond K")
    short = tmp_path / "short.npy"
    np.save(short, np.zeros((3, 2)))
    _fails(["forecast", str(series_run), "--history", str(short), "--n", "2", "--out", out], capsys,
           "the run needs the last L - H = 4")
    wide = tmp_path / "wide.npy"
    np.save(wide, np.zeros((10, 3)))
    _fails(["forecast", str(series_run), "--history", str(wide), "--n", "2", "--out", out], capsys, "3 variables")
    nan = tmp_path / "nan.npy"
    h = np.zeros((10, 2))
    h[5, 1] = np.nan
    np.save(nan, h)
    _fails(["forecast", str(series_run), "--history", str(nan), "--n", "2", "--out", out], capsys, "NaN")


def test_gluonts_data_set_trains_scores_its_test_windows_and_draws_fans(files, tmp_path, capsys):
    """`train --data FOLDER` on a GluonTS-format set (train/, test/ JSON lines) and `eval RUN --data
    FOLDER`: the data set's own rolling test windows, scored with the published CRPS and CRPS-sum,
    and a fan chart per window; a horizon that does not match the test windows is one line, exit 2."""
    rng = np.random.default_rng(1)
    root = write_gluonts(tmp_path / "toy", 5.0 + 0.1 * rng.standard_normal((90, 2)).cumsum(0), windows=3, horizon=3)
    run = tmp_path / "run"
    assert main(["train", "--method", "dsbm", "--eps", "1", "--data", str(root), "--window", "9", "--horizon", "3",
                 "--config", str(files / "tiny.toml"), "--out", str(run), "--steps", "20", "--quiet"]) == 0
    res = tmp_path / "eval.json"
    assert main(["eval", str(run), "--data", str(root), "--json", str(res), "--samples", "20", "--quiet"]) == 0
    scores = json.loads(res.read_text())
    assert scores["n_windows"] == 3 and 0 < scores["gluonts_crps_sum"] < 1 and 0 < scores["gluonts_crps"] < 1
    assert (run / "forecast_fans.png").is_file() and (run / "samples.png").is_file()
    capsys.readouterr()
    _fails(["train", "--data", str(root), "--window", "9", "--horizon", "4", "--config", str(files / "tiny.toml"),
            "--out", str(tmp_path / "bad"), "--steps", "2", "--quiet"], capsys, "does not match the test windows")
    _fails(["train", "--data", str(tmp_path / "absent.tar.gz"), "--window", "9", "--horizon", "3",
            "--out", str(tmp_path / "bad2"), "--steps", "2", "--quiet"], capsys, "not found")
