"""Side-by-side tables on the entropic-OT benchmark: several solvers (sbdiff's bridge presets and peer
solvers of other libraries, :mod:`sbdiff.bench.peers`) trained on the same pair, with the same
samples and the same wall-clock budget, scored by the same protocol (:func:`run_bench`), cell by cell.

:func:`run_table` writes three files into ``out_dir`` after every cell, so that a killed sweep loses
at most the cell it was in and resumes from the cells already done:

* ``eot_table.json`` — ``{"settings": {...}, "rows": [...]}``: one :func:`run_bench` row per
  (solver, D, eps), the ``exact`` rows being the protocol's noise floor; the settings and every row
  name the pair family (``draft-recipe`` by default, ``rotated``, or ``official``);
* ``eot_table.md`` — the markdown table (cBW2-UVP per cell and solver beside the floor, the winner
  and its ratio to the runner-up; then every row in full; then the pair family);
* ``eot_table.png`` — cBW2-UVP per cell and solver (log scale), the floor drawn as a dashed line,
  the pair family in the title.

Used by ``benchmarks/eot_table.py``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .._utils import SbdiffError
from ..checkpoint import atomic_write_text
from .eot import DEFAULT_FAMILY
from .runner import pair_family, run_bench

__all__ = ["run_table", "format_comparison", "plot_comparison", "DEFAULT_SOLVERS", "DEFAULT_CELLS"]

#: sbdiff's bridge presets and torchcfm's SF²M-Sink.
DEFAULT_SOLVERS = ("lightsb", "dsbm", "sf2m", "sbfbsde", "dsb")
#: The eps = 1 row at D = 2, 16, 64.
DEFAULT_CELLS = ((2, 1.0), (16, 1.0), (64, 1.0))
_FILES = ("eot_table.json", "eot_table.md", "eot_table.png")
_SETTINGS = ("family", "minutes", "steps", "seed", "n_test", "n_samples", "n_marginal", "n_train", "nfe",
             "official_dir", "overrides")


def _key(row: dict) -> tuple:
    return row["method"], int(row["dim"]), float(row["eps"])


def _check_cells(solvers, cells) -> tuple[list[str], list[tuple[int, float]]]:
    solvers = list(solvers)
    if not solvers or len(set(solvers)) != len(solvers):
        raise SbdiffError(f"solvers must be a non-empty list of distinct names, got {solvers}")
    if "exact" in solvers:
        raise SbdiffError("'exact' is the noise floor, measured for every cell anyway: drop it from the solvers")
    from ..methods import REGISTRY
    from .peers import PEERS, _import_torchcfm

    unknown = [m for m in solvers if m not in REGISTRY and m not in PEERS]
    if unknown:
        raise SbdiffError(f"unknown solver {', '.join(map(repr, unknown))}; choose from "
                          f"{', '.join(list(REGISTRY) + list(PEERS))}")
    if "sf2m" in solvers:
        _import_torchcfm()  # fail before the sweep, not at its first sf2m cell
    out = []
    for cell in cells:
        try:
            dim, eps = int(cell[0]), float(cell[1])
        except (TypeError, ValueError, IndexError):
            raise SbdiffError(f"a cell is a pair (D, eps), got {cell!r}") from None
        if dim < 1 or not (eps > 0 and math.isfinite(eps)):
            raise SbdiffError(f"a cell needs D >= 1 and a finite eps > 0, got D={dim}, eps={eps}")
        out.append((dim, eps))
    if not out:
        raise SbdiffError("no cells to run")
    return solvers, out


def run_table(out_dir, solvers=DEFAULT_SOLVERS, cells=DEFAULT_CELLS, *, minutes: float | None = 5.0,
              steps: int | None = None, seed: int = 0, n_test: int = 1000, n_samples: int = 1000,
              n_marginal: int = 10_000, n_train: int = 50_000, nfe: int | None = None, official_dir=None,
              family: str = DEFAULT_FAMILY, overrides: dict | None = None, progress: bool = True,
              log=print) -> dict:
    """Train and score every solver on every cell of the ``eot`` problem; resume a killed sweep.

    Parameters
    ----------
    out_dir : path
        Where the JSON, markdown and PNG go (created). A JSON already there is resumed: its rows are
        kept and their (solver, D, eps) skipped, provided it was written with the same settings (a
        table written before the pair families existed counts as ``rotated``, or ``official``).
    solvers : list of str
        sbdiff method names and peer names (``sf2m``); default :data:`DEFAULT_SOLVERS`.
    cells : list of (D, eps)
        Default :data:`DEFAULT_CELLS`.
    minutes, steps, seed, n_test, n_samples, n_marginal, n_train, nfe, official_dir, family, overrides :
        As :func:`~sbdiff.bench.runner.run_bench`; the same for every solver and cell. ``family``:
        the pair family, ``draft-recipe`` (default) or ``rotated`` (not used with ``official_dir``).
    progress : bool
        Training progress bars (one line per cell is logged regardless, through ``log``).

    Returns
    -------
    dict ``{"settings": {...}, "rows": [...]}`` (the JSON written).
    """
    label = pair_family("eot", family, official_dir)
    solvers, cells = _check_cells(solvers, cells)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"family": label, "minutes": minutes, "steps": steps, "seed": seed, "n_test": n_test,
                "n_samples": n_samples, "n_marginal": n_marginal, "n_train": n_train, "nfe": nfe,
                "official_dir": None if official_dir is None else str(official_dir), "overrides": overrides or {}}
    path = out / _FILES[0]
    state = {"settings": settings, "rows": []}
    if path.exists():
        try:
            state = json.loads(path.read_text())
            old = state["settings"]
            rows = state["rows"]
            keys = [_key(r) for r in rows]
        except (ValueError, KeyError, TypeError):
            raise SbdiffError(f"{path} is not a table this harness wrote: move it away or choose another out_dir") from None
        if isinstance(old, dict) and "family" not in old:  # written before the families: sbdiff's first draw
            old["family"] = "rotated" if old.get("official_dir") is None else "official"
        diff = [k for k in _SETTINGS if old.get(k) != settings[k]]
        if diff:
            what = ", ".join(f"{k}: {old.get(k)!r} there, {settings[k]!r} now" for k in diff)
            raise SbdiffError(f"{path} was written with other settings ({what}); "
                              "resume with the same settings or choose another out_dir")
        log(f"resuming {path}: {len(keys)} rows done")
        state["settings"] = settings
    done = {_key(r) for r in state["rows"]}
    todo = [(m, d, e) for d, e in cells for m in ["exact"] + solvers]
    kw = {k: settings[k] for k in ("seed", "n_test", "n_samples", "n_marginal", "n_train", "nfe")}
    kw["family"] = family
    for i, (method, dim, eps) in enumerate(todo, 1):
        tag = f"[{i}/{len(todo)}] D={dim} eps={eps:g} {'floor' if method == 'exact' else method}"
        if (method, dim, eps) in done:
            log(f"{tag}: done before, kept")
            continue
        log(f"{tag}: " + ("scoring the exact sampler" if method == "exact" else
                          f"training ({_budget(minutes, steps)}) and scoring"))
        row = run_bench("eot", method, dim, eps, minutes=None if method == "exact" else minutes,
                        steps=None if method == "exact" else steps, official_dir=official_dir,
                        overrides=overrides, progress=progress, **kw)
        state["rows"].append(row)
        done.add((method, dim, eps))
        atomic_write_text(json.dumps(state, indent=1) + "\n", path)
        atomic_write_text("\n".join(format_comparison(state["rows"], solvers, cells)) + "\n", out / _FILES[1])
        plot_comparison(state["rows"], solvers, cells, out / _FILES[2])
        log(f"{tag}: cBW2-UVP {_pct(row['cbw2_uvp'])}, BW2-UVP {_pct(row['bw2_uvp'])}, "
            f"{row['train_steps']} steps in {row['train_seconds']} s (+{row['eval_seconds']} s scoring)")
    return state


def _budget(minutes, steps) -> str:
    parts = ([f"{minutes:g} min"] if minutes is not None else []) + ([f"{steps} steps"] if steps is not None else [])
    return " / ".join(parts) or "config default"


def _pct(v) -> str:
    return "n/a" if v is None else f"{v:.3f} %"


def _num(v, fmt: str = ".3f") -> str:
    return "n/a" if v is None else format(v, fmt)


def format_comparison(rows: list[dict], solvers, cells) -> list[str]:
    """Markdown lines: cBW2-UVP [%] per cell (rows) and solver (columns) beside the floor, the winner
    of each cell with the ratio runner-up / winner, then every row in full, then the rows' pair
    family (:func:`_families`)."""
    by = {_key(r): r for r in rows}
    lines = ["| D | eps | floor | " + " | ".join(solvers) + " | best | runner-up / best |",
             "|---|---|---|" + "---|" * len(solvers) + "---|---|"]
    for dim, eps in cells:
        floor = by.get(("exact", dim, eps))
        vals = {m: by[(m, dim, eps)]["cbw2_uvp"] for m in solvers if (m, dim, eps) in by}
        scored = sorted((v, m) for m, v in vals.items() if v is not None)
        best = scored[0][1] if scored else "—"
        ratio = f"{scored[1][0] / scored[0][0]:.2f}" if len(scored) > 1 and scored[0][0] > 0 else "—"
        cols = [_num(vals[m]) if m in vals else "…" for m in solvers]
        lines.append(f"| {dim} | {eps:g} | {_num(floor['cbw2_uvp']) if floor else '…'} | " + " | ".join(cols)
                     + f" | {best} | {ratio} |")
    lines += ["", "| solver | D | eps | cBW2-UVP % | BW2-UVP % | train steps | train s | scoring s |",
              "|---|---|---|---|---|---|---|---|"]
    for dim, eps in cells:
        for m in ["exact"] + list(solvers):
            r = by.get((m, dim, eps))
            if r is not None:
                name = "floor (exact)" if m == "exact" else m
                lines.append(f"| {name} | {dim} | {eps:g} | {_num(r['cbw2_uvp'])} | {_num(r['bw2_uvp'])} | "
                             f"{r['train_steps']} | {r['train_seconds']} | {r['eval_seconds']} |")
    fams = _families(rows)
    if fams:
        lines += ["", f"Pair family: {fams}."]
    return lines


def _families(rows: list[dict]) -> str:
    """The pair families the rows were measured on, comma-separated ('' when no row says)."""
    return ", ".join(sorted({str(r["family"]) for r in rows if r.get("family")}))


def plot_comparison(rows: list[dict], solvers, cells, path) -> None:
    """Grouped bars of cBW2-UVP [%] (log scale) per cell and solver, the floor of each cell dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {_key(r): r for r in rows}
    width = 0.8 / len(solvers)
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(cells), 3.6))
    for j, m in enumerate(solvers):
        xs, ys = [], []
        for i, (dim, eps) in enumerate(cells):
            v = by.get((m, dim, eps), {}).get("cbw2_uvp")
            if v is not None:
                xs.append(i - 0.4 + width * (j + 0.5))
                ys.append(max(v, 1e-4))
        ax.bar(xs, ys, width, label=m)
    for i, (dim, eps) in enumerate(cells):
        floor = by.get(("exact", dim, eps), {}).get("cbw2_uvp")
        if floor is not None:
            ax.hlines(floor, i - 0.45, i + 0.45, colors="k", linestyles="--",
                      label="noise floor (exact sampler)" if i == 0 else None)
    ax.set_xticks(range(len(cells)), [f"D={d}\neps={e:g}" for d, e in cells])
    ax.set_yscale("log")
    ax.set_ylabel("cBW2-UVP [%]")
    ax.legend(fontsize=8)
    fams = _families(rows)
    ax.set_title("entropic-OT benchmark" + (f" ({fams} pairs)" if fams else "") + ": same pair, samples and budget",
                 fontsize=9)
    fig.tight_layout()
    tmp = Path(path).with_name(Path(path).stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
