"""Issue 38's tables, assembled from the result files (no training): lightsb on the 12 draft-recipe
cells beside the floor and the issue's targets, and dsbm seeded by the LightSB plan beside dsbm from
its entropic coupling and torchcfm's SF²M.

    python benchmarks/lightsb_summary.py        # prints markdown, writes results/lightsb_summary.md

Sources (``benchmarks/results/``): ``eot_table_lightsb_seed{0,1,2}`` (lightsb, 2 minutes / 10 000
steps a cell), ``eot_table_dsbm_lightsb_seed{0,1,2}`` (dsbm with ``coupling = "lightsb"``, 5 minutes)
and the 5-minute dsbm / sf2m rows of the earlier tables, the newest run of each cell at dsbm's
current defaults first (:data:`BASELINES`).
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
#: The issue's ceiling on lightsb's excess over the floor, by D (every eps).
TARGET = {2: 0.05, 16: 0.10, 64: 0.30, 128: 0.60}
#: Where the dsbm (entropic coupling) and sf2m rows come from, first match wins.
BASELINES = ("eot_table_draft_replan", "eot_table_draft_d64_rerun", "eot_table_draft", "eot_table_draft_d128",
             "eot_table_draft_hard", "eot_table_draft_seed1", "eot_table_draft_seed1_d64", "eot_table_draft_seed2")


def _rows(name: str) -> list[dict]:
    path = RESULTS / name / "eot_table.json"
    return json.loads(path.read_text())["rows"] if path.exists() else []


def _index(names) -> dict:
    out: dict = {}
    for name in names:
        for r in _rows(name):
            out.setdefault((r["method"], r["dim"], r["eps"], r["seed"]), r)
    return out


def _f(v, digits=3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def main() -> None:
    lsb = _index(f"eot_table_lightsb_seed{s}" for s in (0, 1, 2))
    seeded = _index(f"eot_table_dsbm_lightsb_seed{s}" for s in (0, 1, 2))
    base = _index(BASELINES)
    lines = ["## lightsb on the draft-recipe cells (cBW2-UVP %, 1000 × 1000 scoring)", "",
             "| eps | D | seed | floor | lightsb | excess | target | met | train s (steps) | dsbm | sf2m |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    met = total = 0
    for eps in (0.1, 1.0, 10.0):
        for dim in (2, 16, 64, 128):
            for seed in (0, 1, 2):
                r = lsb.get(("lightsb", dim, eps, seed))
                if r is None:
                    continue
                floor = lsb[("exact", dim, eps, seed)]["cbw2_uvp"]
                excess = r["cbw2_uvp"] - floor
                ok = excess <= TARGET[dim]
                met, total = met + ok, total + 1
                d, s = (base.get((m, dim, eps, seed)) for m in ("dsbm", "sf2m"))
                lines.append(f"| {eps:g} | {dim} | {seed} | {_f(floor)} | {_f(r['cbw2_uvp'])} | {excess:+.3f} | "
                             f"≤ {TARGET[dim]:.2f} | {'yes' if ok else '**no**'} | {r['train_seconds']} "
                             f"({r['train_steps']}) | {_f(d and d['cbw2_uvp'])} | {_f(s and s['cbw2_uvp'])} |")
    lines += ["", f"{met} of {total} lightsb cells within the target.", "",
              "## dsbm seeded by the LightSB plan (eps = 1, 5 minutes each; cBW2-UVP %)", "",
              "| D | seed | floor | lightsb | dsbm, lightsb coupling | excess | dsbm, entropic | sf2m | sf2m / seeded |",
              "|---|---|---|---|---|---|---|---|---|"]
    for dim in (16, 64):
        for seed in (0, 1, 2):
            r = seeded.get(("dsbm", dim, 1.0, seed))
            if r is None:
                continue
            floor = seeded[("exact", dim, 1.0, seed)]["cbw2_uvp"]
            light = lsb.get(("lightsb", dim, 1.0, seed))
            d, s = (base.get((m, dim, 1.0, seed)) for m in ("dsbm", "sf2m"))
            ratio = f"{s['cbw2_uvp'] / r['cbw2_uvp']:.2f}" if s else "—"
            lines.append(f"| {dim} | {seed} | {_f(floor)} | {_f(light and light['cbw2_uvp'])} | {_f(r['cbw2_uvp'])} | "
                         f"{r['cbw2_uvp'] - floor:+.3f} | {_f(d and d['cbw2_uvp'])} | {_f(s and s['cbw2_uvp'])} | {ratio} |")
    text = "\n".join(lines) + "\n"
    (RESULTS / "lightsb_summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
