"""Forecasting at the field's scale: sbdiff's conditional presets on a GluonTS benchmark (default
``exchange_rate_nips``: 8 daily exchange rates, 6,071 training days, horizon 30, 5 rolling test
windows), scored as the published tables are (GluonTS's CRPS and CRPS-sum, the weighted quantile loss
over the quantiles 0.05, …, 0.95; ``sbdiff.series.gluonts_crps``), side by side with two baselines
on the same windows:

* seasonal naive (season 5: the same weekday a week before), a point forecast;
* a VAR on the training series (statsmodels, lag order by AIC), paths from its Gaussian innovations.

Each sbdiff row trains ``sbdiff train --method M --data PATH --window L --horizon H`` for the time
budget alone (``train.steps = 0``) with every other setting at its default (``cond.scaling = mean``,
``model.net = auto``: the window network), then draws 100 paths per test window. A variant
``M:key=value,...`` overrides config keys (for example ``sgm:model.net=mlp`` or
``sgm:cond.scaling=standard``) for the comparisons of the issue.

Run alone (timed):
    python benchmarks/scripts/forecast_gluonts.py --data ../shared/data/exchange_rate_nips.tar.gz \\
        [--minutes 4] [--seeds 0,1,2] [--variants sgm,vsdm,dsbm] [--out results/forecast_exchange.json]
Prints a table of mean ± standard error over the seeds; writes the JSON rows and fan charts.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from sbdiff.config import Config
from sbdiff.conditioning import series_test_windows
from sbdiff.evaluation import forecast_eval
from sbdiff.gluonts_data import load_gluonts
from sbdiff.plots import plot_forecast_fans
from sbdiff.series import forecast_scores, seasonal_naive, var_forecast
from sbdiff.train import fit

RESULTS = Path(__file__).resolve().parent.parent / "results"
KEYS = ("gluonts_crps_sum", "gluonts_crps", "coverage_50", "coverage_90", "crps")
#: Published CRPS-sum on exchange_rate_nips (mean ± sd over runs, as the papers report them).
PUBLISHED = [("Transformer-MAF (Rasul et al. 2021)", "0.005 ± 0.003"), ("TimeGrad (Rasul et al. 2021)", "0.006 ± 0.001"),
             ("ScoreGrad sub-VP (Yan et al. 2021)", "0.006"), ("GP-Copula (Salinas et al. 2019)", "0.007 ± 0.000"),
             ("VAR-Lasso", "0.012")]


def _variant(spec: str) -> tuple[str, dict[str, str]]:
    method, _, rest = spec.partition(":")
    overrides = dict(kv.split("=", 1) for kv in rest.split(",") if kv)
    return method, overrides


def _apply(cfg: Config, overrides: dict[str, str]) -> None:
    for key, raw in overrides.items():
        if key == "eps":  # the reference brownian(eps), as the CLI's --eps
            cfg.reference = {"kind": "brownian", "eps": float(raw)}
            continue
        section, name = key.split(".")
        sec = getattr(cfg, section)
        kind = type(getattr(sec, name))
        setattr(sec, name, raw.lower() == "true" if kind is bool else kind(raw))


def _summary(rows: list[dict]) -> dict:
    out = {"n": len(rows)}
    for k in KEYS + ("steps", "train_s"):
        v = np.array([r[k] for r in rows], dtype=np.float64)
        out[k] = float(v.mean())
        out[f"{k}_se"] = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="a GluonTS-format data set (folder or .tar.gz)")
    ap.add_argument("--window", type=int, default=60, help="L: history L - H plus horizon H (default 60)")
    ap.add_argument("--horizon", type=int, default=30)
    ap.add_argument("--minutes", type=float, default=4.0, help="training budget per run (the issue's cap: 20)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--variants", default="sgm,vsdm,dsbm")
    ap.add_argument("--paths", type=int, default=100)
    ap.add_argument("--season", type=int, default=5, help="seasonal naive: the season (5 business days)")
    ap.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--out", default=str(RESULTS / "forecast_exchange.json"))
    ap.add_argument("--markdown", nargs="+", metavar="JSON", help="print the markdown table of earlier result files "
                    "(baselines, then each variant's mean ± standard error and its seeds) and exit")
    args = ap.parse_args()
    if args.markdown:
        print_markdown([json.loads(Path(f).read_text()) for f in args.markdown])
        return
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    L, H = args.window, args.horizon
    probe = Config(method="sgm")
    probe.data.data = args.data
    probe.cond.window, probe.cond.horizon = L, H
    history, future = series_test_windows(probe)
    train = load_gluonts(args.data).train
    rows: list[dict] = []
    if args.baselines:
        naive = seasonal_naive(history, H, args.season)[:, None]
        rows.append({"method": f"seasonal naive (season {args.season})", **forecast_scores(naive, future)})
        var_samples, lags = var_forecast(train, history, H, args.paths, seed=0)
        rows.append({"method": f"VAR({lags}), statsmodels, lag by AIC", **forecast_scores(var_samples, future)})
        for r in rows:
            print(json.dumps(r), flush=True)
    for spec in args.variants.split(","):
        method, overrides = _variant(spec)
        for seed in (int(s) for s in args.seeds.split(",")):
            cfg = Config(method=method, seed=seed)
            cfg.data.data = args.data
            cfg.cond.window, cfg.cond.horizon = L, H
            cfg.train.steps, cfg.train.max_minutes = 0, args.minutes
            _apply(cfg, overrides)
            cfg.validate()
            t0 = time.monotonic()
            run_dir = Path("runs") / f"forecast-{out.stem}-{spec.replace(':', '-').replace(',', '-')}-{seed}"
            res = fit(cfg, run_dir, progress=False)
            train_s = time.monotonic() - t0
            scores, samples = forecast_eval(res.model, history, future, n=args.paths, nfe=cfg.sample.nfe, seed=seed,
                                            scaling=cfg.cond.scaling, anchor=cfg.cond.anchor)
            row = {"method": spec, "seed": seed, "steps": res.steps, "train_s": round(train_s, 1),
                   "net": _net(cfg), **scores}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if seed == int(args.seeds.split(",")[0]):
                plot_forecast_fans(history, samples, future, out.with_name(f"{out.stem}_fans_{_slug(spec)}.png"),
                                   max_windows=5, max_variables=8,
                                   title=f"{spec}, seed {seed}: the {len(history)} test windows (median, 50 %, 90 %)")
    summary = {}
    for spec in dict.fromkeys(r["method"] for r in rows if "seed" in r):
        summary[spec] = _summary([r for r in rows if r["method"] == spec])
    out.write_text(json.dumps({"data": args.data, "window": L, "horizon": H, "minutes": args.minutes,
                               "paths": args.paths, "rows": rows, "summary": summary, "published": PUBLISHED,
                               "date": time.strftime("%Y-%m-%d")}, indent=1) + "\n")
    print_table(rows, summary)


def _slug(spec: str) -> str:
    """A variant as a file-name part: ``sgm:model.net=window`` -> ``sgm_model.net-window``."""
    return spec.replace(":", "_").replace("=", "-").replace(",", "_")


def _net(cfg: Config) -> str:
    from sbdiff.methods.base import network_kind

    return network_kind(cfg)


def print_table(rows: list[dict], summary: dict) -> None:
    """Baselines, sbdiff's rows (mean ± standard error over the seeds) and the published rows."""
    print(f"\n{'method':44} {'CRPS-sum':>16} {'CRPS':>16} {'cov 50 %':>9} {'cov 90 %':>9} {'steps':>6}")
    for r in rows:
        if "seed" not in r:
            print(f"{r['method']:44} {r['gluonts_crps_sum']:16.4f} {r['gluonts_crps']:16.4f} {r['coverage_50']:9.2f} "
                  f"{r['coverage_90']:9.2f}")
    for spec, s in summary.items():
        label = f"{spec} ({s['n']} seeds)"
        print(f"{label:44} {s['gluonts_crps_sum']:8.4f} ± {s['gluonts_crps_sum_se']:.4f} "
              f"{s['gluonts_crps']:8.4f} ± {s['gluonts_crps_se']:.4f} {s['coverage_50']:9.2f} {s['coverage_90']:9.2f} "
              f"{s['steps']:6.0f}")
    for name, value in PUBLISHED:
        print(f"{name + ' (published)':44} {value:>16}")
    sys.stdout.flush()


def print_markdown(results: list[dict]) -> None:
    """One markdown table of the rows of several result files (baselines once) and the published rows."""
    print("| method | seeds | CRPS-sum | CRPS | coverage 50 % | coverage 90 % | steps |")
    print("|---|---|---|---|---|---|---|")
    seen = set()
    for res in results:
        for r in res["rows"]:
            if "seed" not in r and r["method"] not in seen:
                seen.add(r["method"])
                print(f"| {r['method']} | – | {r['gluonts_crps_sum']:.4f} | {r['gluonts_crps']:.4f} | "
                      f"{r['coverage_50']:.2f} | {r['coverage_90']:.2f} | – |")
    for res in results:
        for spec, s in res["summary"].items():
            runs = [r for r in res["rows"] if r["method"] == spec]
            per = " / ".join(f"{r['gluonts_crps_sum']:.4f}" for r in runs)
            print(f"| {spec}, {res['minutes']:g} min | {s['n']} ({per}) | {s['gluonts_crps_sum']:.4f} ± "
                  f"{s['gluonts_crps_sum_se']:.4f} | {s['gluonts_crps']:.4f} ± {s['gluonts_crps_se']:.4f} | "
                  f"{s['coverage_50']:.2f} | {s['coverage_90']:.2f} | {s['steps']:.0f} |")
    for name, value in PUBLISHED:
        print(f"| {name}, published | – | {value} | | | | |")


if __name__ == "__main__":
    main()
