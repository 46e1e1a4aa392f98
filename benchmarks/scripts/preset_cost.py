"""Training cost of each method preset beside SGM: same network, same data, same machine, one after another.

    python benchmarks/scripts/preset_cost.py                        # d = 16, 60 s per method, MLP 128×2
    python benchmarks/scripts/preset_cost.py --seconds 300 --json   # also write benchmarks/results/preset_cost_d16_300s.json
    python benchmarks/scripts/preset_cost.py --methods sgm,dsb --hidden 64 --blocks 1
    python benchmarks/scripts/preset_cost.py --methods lightsb,dsbm --seconds 5 --json /tmp/pc.json

The problem is the EOT pair ``sbdiff.bench.eot.make_pair(dim, 1.0, family="rotated")`` (the family of
the recorded results), trained exactly as the bench harness does (``sbdiff.bench.runner._train``,
called here): ``sgm`` and ``vsdm`` on target samples
with their Gaussian prior, ``dsb``, ``sbfbsde``, ``dsbm`` and ``lightsb`` as bridges from the source samples
(reference ``brownian(1.0)``, ``data.normalize = false``). ``lightsb`` has no network: its parameters are
its two Gaussian mixture potentials (``lightsb.components`` K = 50, ``K (2d + 1)`` each, decoder and
encoder), fitted by Adam on the closed-form KL in one phase, with its own recipe (no EMA, warm-up or
clipping, ``train.lr`` from eps). Every other method gets the same network (overrides
``model.hidden/blocks``, default 128 × 2, the width DSB and SB-FBSDE resolve by default, and
``sbfbsde.hidden = 0``; the child refuses a run whose resolved width differs); every method the same
batch, seed and wall-clock budget (``--seconds``, training only), phases of ``--phase-steps`` (1000) steps for DSB and SB-FBSDE
so that a short budget covers decoder and encoder half-bridges (SB-FBSDE's first phase is its DSM
warm start, SGM's objective), torch's default thread count, a log line every ``--log-every`` steps
and no periodic checkpoints (the phase-end checkpoints of DSB / SB-FBSDE are written, as in any
run with a run directory: part of their cost). Each method trains alone in a fresh child process
(this script with ``--child METHOD``), so the rows do not share memory or warm caches.

Columns:

* ``params``: parameters of the trained model (all its networks: DSB and SB-FBSDE train two; LightSB:
  its two mixture potentials);
* ``steps``: optimiser steps done within the budget; ``phases``: half-bridges entered (alternating methods;
  1 for the others);
* ``s/step``: steady-state seconds per optimiser step, from ``metrics.jsonl`` between the first and
  the last logged step (start-up and the first ``log_every`` steps excluded; cache simulations,
  encoder updates and the trainer's prior-loss monitor at log steps included); ``samples/s`` is
  ``batch_size / (s/step)``; ``× SGM`` the ratio of ``s/step`` to SGM's in the same run (SGM is run
  first; ``n/a`` without it in ``--methods``);
* ``peak MiB``: the child's peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``) minus its RSS after the
  imports and the pair's construction, i.e. the growth due to the training data, model, optimiser,
  caches and activations;
* ``steps to 90 %``: the losses are different objectives (DSM, mean matching, divergence-form drift
  matching, ...), so their values are not comparable across methods; the criterion is relative to
  each method's own curve instead: on the first phase's logged loss (the curve up to the first
  half-bridge switch, where the objective changes), smoothed by a trailing mean over ``--smooth``
  log points, the first logged step at which the smoothed loss is within ``--within`` (10 %) of the
  total decrease from its first to its last value (with the training seconds at that step);
  ``n/a`` when the loss did not decrease.

Run it alone on the machine: the numbers are wall-clock.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent / "results"
METHODS = ("sgm", "dsb", "vsdm", "sbfbsde", "dsbm", "lightsb")


def _rss_mib() -> float:
    """Current resident set size (Linux ``/proc``; elsewhere the peak so far)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _segment(row: dict) -> float:
    """The phase a log row belongs to: SB-FBSDE logs ``phase``, DSB ``ipf_iteration`` (+ encoder)."""
    if "phase" in row:
        return round(row["phase"], 3)
    return 2 * row.get("ipf_iteration", 0) + ("encoder_matching" in row)


def steps_to_fraction(rows: list[dict], within: float, smooth: int) -> dict | None:
    """The first log row (``step``, ``elapsed_s``) of the first phase where the smoothed loss is
    within ``within`` of its total decrease (first to last smoothed value); ``None`` when it did not
    decrease."""
    first = [r for r in rows if _segment(r) == _segment(rows[0])]
    loss = [r["loss"] for r in first]
    sm = [sum(loss[max(0, i - smooth + 1):i + 1]) / (i + 1 - max(0, i - smooth + 1)) for i in range(len(loss))]
    if len(sm) < 2 or not sm[0] > sm[-1]:
        return None
    bar = sm[-1] + within * (sm[0] - sm[-1])
    hit = next(r for r, v in zip(first, sm) if v <= bar)
    return {"step": hit["step"], "elapsed_s": hit["elapsed_s"]}


def child(a: argparse.Namespace) -> dict:
    """Train one method in this process; returns its row (printed as one JSON line)."""
    from sbdiff.bench.eot import make_pair
    from sbdiff.bench.runner import _train

    pair = make_pair(a.dim, 1.0, a.seed, family="rotated")
    base = _rss_mib()
    overrides = {"model": {"hidden": a.hidden, "blocks": a.blocks},
                 "sbfbsde": {"hidden": 0, "half_steps": a.phase_steps}, "dsb": {"half_steps": a.phase_steps},
                 "dsbm": {"half_steps": a.phase_steps},
                 "train": {"log_every": a.log_every, "checkpoint_every": 0, "checkpoint_minutes": 0.0}}
    with tempfile.TemporaryDirectory(prefix="sbdiff-cost-") as tmp:
        run = Path(tmp) / "run"  # a run directory, so that fit writes metrics.jsonl
        obj, res = _train(a.child, "eot", pair, a.dim, 1.0, seed=a.seed, minutes=a.seconds / 60, steps=None,
                          n_train=a.n_train, progress=False, overrides=overrides, run_dir=run)
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    m = obj.config.model
    if a.child != "lightsb" and (m.hidden, m.blocks) != (a.hidden, a.blocks):  # lightsb: no network  # a method default replaced a value left at the generic one
        raise SystemExit(f"{a.child} resolved the network to {m.hidden}×{m.blocks}, not {a.hidden}×{a.blocks}: "
                         "choose a width other than the generic default 256×3")
    if not rows:
        raise SystemExit(f"{a.child}: {res.steps} steps in {a.seconds:g} s, no log line: raise --seconds or "
                         "lower --log-every")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lo, hi = rows[0], rows[-1]
    per_step = (hi["elapsed_s"] - lo["elapsed_s"]) / (hi["step"] - lo["step"]) if hi["step"] > lo["step"] else None
    batch = obj.config.train.batch_size
    return {"method": a.child, "params": sum(p.numel() for p in res.model.parameters()), "steps": res.steps,
            "train_s": round(res.seconds, 2), "phases": len({_segment(r) for r in rows}), "batch_size": batch,
            "s_per_step": per_step, "samples_per_s": batch / per_step if per_step else None,
            "peak_mib": round(peak - base, 1), "rss_base_mib": round(base, 1),
            "steps_to_fraction": steps_to_fraction(rows, a.within, a.smooth), "log_points": len(rows),
            "final_loss": hi["loss"]}


def run_child(method: str, a: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", method] + [
        f"--{k.replace('_', '-')}={getattr(a, k)}" for k in
        ("dim", "seconds", "hidden", "blocks", "seed", "n_train", "log_every", "within", "smooth", "phase_steps")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:  # keep going: one failed row must not lose the others
        print(proc.stderr[-3000:], file=sys.stderr)
        return {"method": method, "error": (proc.stderr.strip().splitlines() or ["exit %d" % proc.returncode])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _f(v, fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


def _hit(h: dict | None) -> str:
    return "n/a" if h is None else f"{h['step']} ({h['elapsed_s']:.1f} s)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated, from " + ", ".join(METHODS))
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--seconds", type=float, default=60.0, help="training budget per method (wall clock)")
    p.add_argument("--hidden", type=int, default=128, help="MLP width (default: the bridge presets' 128)")
    p.add_argument("--blocks", type=int, default=2, help="residual blocks (default: the bridge presets' 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=50_000, help="training samples of each side")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--phase-steps", type=int, default=1000,
                   help="steps per half-bridge of dsb, sbfbsde and dsbm (their defaults: 5000, 2000, 5000), so that the "
                        "budget covers several phases of both kinds")
    p.add_argument("--within", type=float, default=0.1, help="steps-to criterion: share of the decrease left")
    p.add_argument("--smooth", type=int, default=5, help="log points of the trailing mean of the loss")
    p.add_argument("--json", nargs="?", const="", default=None,
                   help="write the rows as JSON (default path: benchmarks/results/preset_cost_d{dim}_{seconds}s.json)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a)), flush=True)
        return
    import torch

    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    methods.sort(key=lambda m: m != "sgm")  # SGM first: the other rows' ratios need it
    print(f"EOT pair d = {a.dim}, eps = 1; MLP {a.hidden}×{a.blocks}; {a.seconds:g} s per method; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads")
    pct = round(100 * (1 - a.within))
    print(f"| method | params | steps | phases | s/step | samples/s | × SGM | peak MiB | steps to {pct} % of "
          "final loss decrease |\n|---|---|---|---|---|---|---|---|---|", flush=True)
    rows, sgm = [], None
    for m in methods:
        r = run_child(m, a)
        rows.append(r)
        if "error" in r:
            print(f"| {m} | failed: {r['error']} |" + " |" * 7, flush=True)
            continue
        if m == "sgm":
            sgm = r["s_per_step"]
        r["ratio_to_sgm"] = r["s_per_step"] / sgm if sgm and r["s_per_step"] else None
        print(f"| {m} | {r['params']:,} | {r['steps']} | {r['phases']} | {_f(r['s_per_step'], '.4f')} | "
              f"{_f(r['samples_per_s'], '.0f')} | {_f(r['ratio_to_sgm'], '.2f')} | {r['peak_mib']:.0f} | "
              f"{_hit(r['steps_to_fraction'])} |", flush=True)
    if a.json is not None:
        path = Path(a.json) if a.json else RESULTS / f"preset_cost_d{a.dim}_{a.seconds:g}s.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "args": {k: v for k, v in vars(a).items() if k not in ("json", "child")},
                                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                                    "rows": rows}, indent=1))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
