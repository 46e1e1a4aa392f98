"""Probabilistic forecasting of a real series (issue 25): sgm and vsdm trained on sliding windows of
statsmodels' US macro series (``macrodata``: quarterly growth of real GDP, consumption and
investment, in %), every setting at the CLI's default (``sbdiff train --method M --data macrodata
--window L --horizon H --max-minutes MIN``: the series default of 500 steps ends first, unless
``--steps`` says otherwise; ``--steps 0`` trains for the whole time budget), against two baselines a forecaster tries first, on the
same test windows (the last 15 % of the quarters; history may reach into validation):

* seasonal naive (season 4: the same quarter a year before), a point forecast (its CRPS is the
  absolute error);
* a VAR fitted on the training segment (statsmodels, lag order by AIC), with predictive paths drawn
  from its Gaussian innovations.

Scores (``sbdiff.series.forecast_scores``, CRPS by ``scoringrules``): CRPS per entry, CRPS-sum (of
the sum over the variables), normalised CRPS (CSDI's convention) and the coverage of the central 50 %
and 90 % intervals, from 200 sample paths per window.

Run alone (timed):  python benchmarks/scripts/conditional_forecast.py [--minutes 3] [--steps N] [--seeds 0,1,2] [--part test]
Writes benchmarks/results/conditional_forecast.json and conditional_forecast_fans.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from sbdiff.config import Config
from sbdiff.evaluation import forecast_samples
from sbdiff.plots import plot_forecast_fans
from sbdiff.series import (SERIES_SEASON, evaluation_windows, forecast_scores, load_series, seasonal_naive, split_rows,
                           var_forecast)
from sbdiff.train import fit

RESULTS = Path(__file__).resolve().parent.parent / "results"
KEYS = ("crps", "crps_sum", "ncrps", "coverage_50", "coverage_90")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--steps", type=int, help="step budget (0: the time budget alone; default: the series "
                    "default, config.SERIES_DEFAULTS)")
    ap.add_argument("--methods", default="sgm,vsdm")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--window", type=int, default=12)
    ap.add_argument("--horizon", type=int, default=4)
    ap.add_argument("--paths", type=int, default=200)
    ap.add_argument("--part", choices=("test", "validation"), default="test", help="the windows scored")
    ap.add_argument("--scaling", choices=("mean", "standard"), help="cond.scaling (default: the config's)")
    ap.add_argument("--out", default=str(RESULTS / "conditional_forecast.json"))
    args = ap.parse_args()
    RESULTS.mkdir(exist_ok=True)
    name, L, H = "macrodata", args.window, args.horizon
    series = load_series(name)
    history, future = evaluation_windows(series, L, H, part=args.part)
    train_end, _ = split_rows(len(series))
    rows = []
    naive = seasonal_naive(history, H, SERIES_SEASON[name])[:, None]
    rows.append({"method": "seasonal naive", **forecast_scores(naive, future)})
    var_samples, lags = var_forecast(series[:train_end], history, H, args.paths, seed=0)
    rows.append({"method": f"VAR({lags}) (statsmodels)", **forecast_scores(var_samples, future)})
    fans = {}
    for method in args.methods.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            cfg = Config(method=method, seed=seed)
            cfg.data.data = name
            cfg.cond.window, cfg.cond.horizon = L, H
            if args.scaling:
                cfg.cond.scaling = args.scaling
            if args.steps is not None:
                cfg.train.steps = args.steps  # otherwise the series default (config.SERIES_DEFAULTS)
            cfg.train.max_minutes = args.minutes
            t0 = time.monotonic()
            res = fit(cfg.validate(), Path("runs") / f"cond-forecast-{method}-{seed}", progress=False)
            samples = forecast_samples(res.model, history, args.paths, nfe=cfg.sample.nfe, seed=seed,
                                       scaling=cfg.cond.scaling, anchor=cfg.cond.anchor)
            row = {"method": method, "seed": seed, "steps": res.steps, "train_s": round(time.monotonic() - t0, 1),
                   **forecast_scores(samples, future)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            fans.setdefault(method, samples)
    Path(args.out).write_text(json.dumps({"rows": rows, "series": name, "window": L, "horizon": H,
                                          "minutes": args.minutes, "steps": args.steps, "part": args.part,
                                          "windows": len(history)}, indent=1) + "\n")
    for method, samples in fans.items():
        fan = Path(args.out).with_name(f"{Path(args.out).stem}_fans_{method}.png")
        plot_forecast_fans(history, samples, future, fan,
                           names=["real GDP", "real consumption", "real investment"],
                           title=f"{method} on macrodata {args.part} windows (growth %, L = {L}, H = {H})")
    print(f"{'method':26} {'seed':>4} " + " ".join(f"{k:>11}" for k in KEYS))
    for r in rows:
        print(f"{r['method']:26} {str(r.get('seed', '')):>4} " + " ".join(f"{r[k]:11.4f}" for k in KEYS))


if __name__ == "__main__":
    main()
