"""Class-conditional digits (issue 25): sgm and vsdm trained on sklearn's digits with their labels,
every setting at the CLI's default (``sbdiff train --method M --data digits --cond --max-minutes
MIN``: U-Net, ``cond.p_uncond = 0.1``), then scored:

* the share of samples asked for class k that an SVM trained on the real training digits (its own
  accuracy on the real test digits printed beside) classifies as k, at guidance weights 0 / 1 / 3;
* the per-class Fréchet distance of the samples to the real class (and the real split's own floor);
* the conditional bits/dim ``−log p(x | c)`` beside the unconditional ``−log p(x | ∅)`` of the same
  model (the null context the CFG training fits), on held-out real digits.

Run alone (timed):  python benchmarks/conditional_digits.py [--minutes 10] [--methods sgm,vsdm]
Writes benchmarks/results/conditional_digits.json and conditional_digits_<method>.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from sbdiff.conditioning import load_training_set
from sbdiff.config import Config
from sbdiff.evaluation import conditional_nll, label_scores, label_split
from sbdiff.plots import plot_class_grid
from sbdiff.train import fit

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--methods", default="sgm,vsdm")
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--n-nll", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "conditional_digits.json"))
    args = ap.parse_args()
    RESULTS.mkdir(exist_ok=True)
    rows = []
    for method in args.methods.split(","):
        cfg = Config(method=method, seed=args.seed)
        cfg.data.data = "digits"
        cfg.cond.labels = "auto"
        cfg.train.steps = 0
        cfg.train.max_minutes = args.minutes
        cfg.validate()
        data, labels = load_training_set(cfg)
        t0 = time.monotonic()
        res = fit(cfg, Path("runs") / f"cond-digits-{method}", progress=False)
        train_s = time.monotonic() - t0
        model = res.model
        t1 = time.monotonic()
        scores = label_scores(model, data, labels, per_class=args.per_class, guidance=(0.0, 1.0, 3.0),
                              nfe=cfg.sample.nfe, seed=args.seed)
        _, test = label_split(labels, seed=args.seed)
        pick = test[: args.n_nll]
        nll = conditional_nll(model, data[pick], labels[pick], seed=args.seed, exact=False)
        row = {"method": method, "steps": res.steps, "train_s": round(train_s, 1),
               "eval_s": round(time.monotonic() - t1, 1), **scores, **nll}
        rows.append(row)
        print(json.dumps(row), flush=True)
        gen = torch.Generator().manual_seed(args.seed)
        grid = model.sample(100, cond=np.repeat(np.arange(10), 10), nfe=cfg.sample.nfe, generator=gen)
        plot_class_grid(grid.numpy().reshape(10, 10, 8, 8), RESULTS / f"conditional_digits_{method}.png",
                        title=f"{method}, class-conditional digits (w = 0), {args.minutes:g} min", vmin=0, vmax=16)
    Path(args.out).write_text(json.dumps({"rows": rows, "minutes": args.minutes}, indent=1) + "\n")
    print(f"{'method':8} {'steps':>6} {'clf':>6} {'acc w0':>7} {'acc w1':>7} {'acc w3':>7} {'FD w0':>7} {'floor':>6} "
          f"{'bpd|c':>6} {'bpd|0':>6}")
    for r in rows:
        print(f"{r['method']:8} {r['steps']:6d} {r['classifier_accuracy']:6.3f} {r['accuracy_w0']:7.3f} "
              f"{r['accuracy_w1']:7.3f} {r['accuracy_w3']:7.3f} {r['fd_w0']:7.2f} {r['fd_floor']:6.2f} "
              f"{r['nll_bpd']:6.3f} {r['nll_null_bpd']:6.3f}")


if __name__ == "__main__":
    main()
