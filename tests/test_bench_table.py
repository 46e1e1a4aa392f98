"""The side-by-side harness (sbdiff.bench.table, benchmarks/eot_table.py) and the peer solver
(sbdiff.bench.peers): tiny budgets, seconds each."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sbdiff import SbdiffError
from sbdiff.bench import peers, runner, table
from sbdiff.bench.gaussian import random_gaussian_bridge
from sbdiff.bench.metrics import plan_metrics

TINY = dict(n_test=5, n_samples=20, n_marginal=100, n_train=500, nfe=5)
SMALL_NET = {"model": {"hidden": 16, "blocks": 1}, "train": {"batch_size": 64, "log_every": 10},
             "dsb": {"half_steps": 5, "num_steps": 5, "cache_size": 64, "cache_refresh": 0}}
ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("eot_table", ROOT / "benchmarks" / "eot_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_table_trains_scores_writes_and_resumes(tmp_path, monkeypatch, one_thread):
    logs = []
    state = table.run_table(tmp_path, ["sgm", "dsb"], [(2, 1.0)], minutes=None, steps=10, overrides=SMALL_NET,
                            progress=False, log=logs.append, **TINY)
    rows = {r["method"]: r for r in state["rows"]}
    assert set(rows) == {"exact", "sgm", "dsb"}
    assert rows["dsb"]["train_steps"] == 10 and math.isfinite(rows["dsb"]["cbw2_uvp"])
    assert rows["sgm"]["cbw2_uvp"] is None  # generative: marginal only, shown as n/a
    assert math.isfinite(rows["exact"]["cbw2_uvp"]) and rows["exact"]["train_steps"] == 0
    on_disk = json.loads((tmp_path / "eot_table.json").read_text())
    assert on_disk["rows"] == state["rows"] and on_disk["settings"]["steps"] == 10
    assert on_disk["settings"]["family"] == "draft-recipe" and {r["family"] for r in state["rows"]} == {"draft-recipe"}
    md = (tmp_path / "eot_table.md").read_text()
    assert md.startswith("| D | eps | floor | sgm | dsb | best |") and "| 2 | 1 | " in md and "n/a" in md
    assert md.rstrip().endswith("Pair family: draft-recipe.")
    assert "| dsb |" in md.split("| 2 | 1 | ")[1]  # dsb is the only scored solver: it wins the cell
    assert (tmp_path / "eot_table.png").stat().st_size > 1000
    assert sum("[" in line and "training" in line for line in logs) == 2

    def no_training(*a, **k):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr(table, "run_bench", no_training)
    again = table.run_table(tmp_path, ["sgm", "dsb"], [(2, 1.0)], minutes=None, steps=10, overrides=SMALL_NET,
                            progress=False, log=logs.append, **TINY)
    assert again["rows"] == state["rows"] and sum("done before" in line for line in logs) == 3
    with pytest.raises(SbdiffError, match="other settings.*steps: 10 there, 20 now"):
        table.run_table(tmp_path, ["dsb"], [(2, 1.0)], minutes=None, steps=20, overrides=SMALL_NET,
                        progress=False, log=logs.append, **TINY)


def test_a_killed_sweep_resumes_from_the_cells_done(tmp_path, monkeypatch):
    calls = []

    def fake_bench(problem, method, dim, eps, **kw):
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed in the third cell
        calls.append((method, dim))
        return {"problem": problem, "method": method, "dim": dim, "eps": eps, "cbw2_uvp": 1.0 + dim,
                "bw2_uvp": 0.5, "train_steps": 3, "train_seconds": 0.1, "eval_seconds": 0.1}

    monkeypatch.setattr(table, "run_bench", fake_bench)
    cells = [(2, 1.0), (16, 1.0)]
    with pytest.raises(KeyboardInterrupt):
        table.run_table(tmp_path, ["dsb"], cells, log=lambda s: None)
    assert [(r["method"], r["dim"]) for r in json.loads((tmp_path / "eot_table.json").read_text())["rows"]] \
        == [("exact", 2), ("dsb", 2)]
    done = []

    def record(problem, method, dim, eps, **kw):
        done.append((method, dim))
        return {"problem": problem, "method": method, "dim": dim, "eps": eps, "cbw2_uvp": 2.0,
                "bw2_uvp": 0.5, "train_steps": 3, "train_seconds": 0.1, "eval_seconds": 0.1}

    monkeypatch.setattr(table, "run_bench", record)
    state = table.run_table(tmp_path, ["dsb"], cells, log=lambda s: None)
    assert done == [("exact", 16), ("dsb", 16)] and len(state["rows"]) == 4


def _fake_row(problem, method, dim, eps, **kw):
    return {"problem": problem, "method": method, "dim": dim, "eps": eps, "family": kw["family"], "cbw2_uvp": 1.0,
            "bw2_uvp": 0.5, "train_steps": 3, "train_seconds": 0.1, "eval_seconds": 0.1}


def test_script_family_reaches_the_pairs_and_the_files(tmp_path, monkeypatch, capsys):
    seen = []

    def fake_bench(problem, method, dim, eps, **kw):
        seen.append(kw["family"])
        return _fake_row(problem, method, dim, eps, **kw)

    monkeypatch.setattr(table, "run_bench", fake_bench)
    out = tmp_path / "o"
    assert _script().main(["--solvers", "dsb", "--dims", "2", "--family", "rotated", "--out", str(out), "--quiet"]) == 0
    assert seen == ["rotated", "rotated"]
    on_disk = json.loads((out / "eot_table.json").read_text())
    assert on_disk["settings"]["family"] == "rotated" and {r["family"] for r in on_disk["rows"]} == {"rotated"}
    assert "Pair family: rotated" in (out / "eot_table.md").read_text()
    capsys.readouterr()
    # the default family is draft-recipe: this table was measured on another one
    assert _script().main(["--solvers", "dsb", "--dims", "2", "--out", str(out), "--quiet"]) == 2
    assert "family: 'rotated' there, 'draft-recipe' now" in capsys.readouterr().err
    assert _script().main(["--family", "rotated", "--official-dir", str(tmp_path), "--out", str(out), "--quiet"]) == 2
    assert "give one" in capsys.readouterr().err


def test_a_table_from_before_the_families_resumes_as_rotated(tmp_path, monkeypatch):
    monkeypatch.setattr(table, "run_bench", _fake_row)
    table.run_table(tmp_path, ["dsb"], [(2, 1.0)], family="rotated", log=lambda s: None)
    path = tmp_path / "eot_table.json"
    old = json.loads(path.read_text())
    del old["settings"]["family"]
    for r in old["rows"]:
        del r["family"]
    path.write_text(json.dumps(old))
    with pytest.raises(SbdiffError, match="family: 'rotated' there, 'draft-recipe' now"):
        table.run_table(tmp_path, ["dsb"], [(2, 1.0)], log=lambda s: None)
    state = table.run_table(tmp_path, ["dsb"], [(2, 1.0), (16, 1.0)], family="rotated", log=lambda s: None)
    assert state["settings"]["family"] == "rotated" and len(state["rows"]) == 4
    assert json.loads(path.read_text())["settings"]["family"] == "rotated"


def test_comparison_names_the_winner_and_its_ratio():
    rows = [{"method": m, "dim": 16, "eps": 1.0, "cbw2_uvp": v, "bw2_uvp": 0.1, "train_steps": 1,
             "train_seconds": 1.0, "eval_seconds": 1.0} for m, v in (("exact", 0.2), ("dsb", 1.5), ("sf2m", 0.6))]
    line = table.format_comparison(rows, ["dsb", "sf2m"], [(16, 1.0)])[2]
    assert line == "| 16 | 1 | 0.200 | 1.500 | 0.600 | sf2m | 2.50 |"


@pytest.mark.parametrize("solvers, cells, message", [
    (["dsb", "nope"], [(2, 1.0)], "unknown solver 'nope'"),
    (["exact"], [(2, 1.0)], "noise floor"),
    ([], [(2, 1.0)], "non-empty"),
    (["dsb"], [], "no cells"),
    (["dsb"], [(0, 1.0)], "D >= 1"),
    (["dsb"], [(2, float("nan"))], "finite eps"),
])
def test_table_refuses_bad_input_before_any_work(tmp_path, solvers, cells, message):
    with pytest.raises(SbdiffError, match=message):
        table.run_table(tmp_path / "out", solvers, cells, log=lambda s: None)
    assert not (tmp_path / "out").exists()


def test_script_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    script = _script()
    assert script.main(["--solvers", "dsb", "wat", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown solver 'wat'" in err[0] and not (tmp_path / "o").exists()
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "eot_table.json").write_text("{not json")
    assert script.main(["--solvers", "dsb", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "not a table this harness wrote" in capsys.readouterr().err


def test_peer_sampler_with_the_exact_drift_reproduces_the_plan():
    """SF2MSampler integrates dX = [v + s] dt + σ dW: with v the closed-form SB drift of a Gaussian
    bridge and s = 0 it must reproduce the exact plan (cBW2-UVP near the floor), with v shifted not.
    100 steps (measured: 0.25 against a floor of 0.28, shifted 14.4; 0.27 and 14.5 with 200 steps,
    0.26 and 14.8 with 50: the discretisation error is below the estimate's noise)."""
    pair = random_gaussian_bridge(2, 1.0, seed=0)

    def net(fn):
        return lambda x, t: torch.as_tensor(fn(x.double().numpy(), t.double().numpy()), dtype=torch.float32)

    zero = net(lambda x, t: 0.0 * x)
    sizes = dict(n_test=40, n_samples=400, n_marginal=4000)
    floor = plan_metrics(pair, pair.sample_conditional, **sizes)["cbw2_uvp"]
    good = plan_metrics(pair, peers.SF2MSampler(net(pair.drift), zero, 1.0, nfe=100), **sizes)["cbw2_uvp"]
    bad = plan_metrics(pair, peers.SF2MSampler(net(lambda x, t: pair.drift(x, t) + 0.5), zero, 1.0, nfe=100),
                       **sizes)["cbw2_uvp"]
    assert good < 2 * floor + 0.5 and bad > 5 * good


def test_peer_without_torchcfm_names_the_extra(monkeypatch):
    import builtins

    real = builtins.__import__

    def blocked(name, *a, **k):
        if name == "torchcfm":
            raise ImportError("no torchcfm")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", blocked)
    with pytest.raises(SbdiffError, match=r"pip install -c constraints\.txt -e '\.\[bench\]'"):
        peers.train_sf2m(np.zeros((4, 2)), np.zeros((4, 2)), 1.0, steps=1)


def test_torchcfm_score_weighting_learns_half_sigma2_times_the_score():
    """torchcfm's λ_t = 2σ_t/σ²: the minimiser −ε/λ_t of ‖λ_t s + ε‖² is (σ²/2) ∇log p_t(x | x0, x1),
    which is why the peer's SDE drift is v + s (g = σ) and not v + (σ²/2) s."""
    tcfm = pytest.importorskip("torchcfm")
    torch.manual_seed(0)
    eps = 0.7
    fm = tcfm.SchrodingerBridgeConditionalFlowMatcher(sigma=math.sqrt(eps), ot_method="sinkhorn")
    x0, x1 = torch.randn(64, 3, dtype=torch.float64), torch.randn(64, 3, dtype=torch.float64) + 2
    t = torch.rand(64, dtype=torch.float64) * 0.9 + 0.05
    mu = (1 - t[:, None]) * x0 + t[:, None] * x1
    sig_t = math.sqrt(eps) * torch.sqrt(t * (1 - t))[:, None]
    noise = torch.randn_like(x0)
    xt = mu + sig_t * noise
    lam = fm.compute_lambda(t)[:, None]
    score = -(xt - mu) / sig_t**2  # ∇log N(xt | mu, σ_t² I)
    assert torch.allclose(-noise / lam, 0.5 * eps * score, rtol=1e-6)


def test_sf2m_row_through_the_runner(one_thread):
    pytest.importorskip("torchcfm")
    row = runner.run_bench("eot", "sf2m", 2, 1.0, steps=15, overrides={"model": {"hidden": 16, "blocks": 1},
                                                                      "train": {"batch_size": 64}}, **TINY)
    assert row["method"] == "sf2m" and row["train_steps"] == 15 and row["train_seconds"] > 0
    assert math.isfinite(row["cbw2_uvp"]) and math.isfinite(row["bw2_uvp"])


def test_peer_gets_the_bridge_presets_network(monkeypatch):
    """Same network width as ours: the peer's two nets are DSB's and SB-FBSDE's (128 × 2 by default),
    and a config override reaches the peer as it reaches the presets."""
    from sbdiff.config import Config

    seen = {}

    def fake(source, target, eps, **kw):
        seen.update(kw)
        return None, 0, 0.0

    monkeypatch.setitem(peers.PEERS, "sf2m", fake)
    pair = random_gaussian_bridge(2, 1.0)
    runner._train_peer("sf2m", pair, 1.0, seed=0, minutes=None, steps=1, n_train=10, nfe=None, progress=False,
                       overrides=None)
    dsb = Config(method="dsb").validate()
    sb = Config(method="sbfbsde").sbfbsde
    assert (seen["hidden"], seen["blocks"]) == (dsb.model.hidden, dsb.model.blocks) == (sb.hidden, sb.blocks)
    assert seen["ema_decay"] == dsb.train.ema_decay and seen["nfe"] == peers.PEER_NFE
    runner._train_peer("sf2m", pair, 1.0, seed=0, minutes=None, steps=1, n_train=10, nfe=None, progress=False,
                       overrides={"model": {"hidden": 48}})
    assert seen["hidden"] == 48
