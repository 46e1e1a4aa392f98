"""Plots written into run directories: samples against data, probability-flow trajectories, image
grids (samples of image runs, and their paths from noise to data) and the training curves of
``metrics.jsonl`` (:func:`plot_curves`, drawn per phase for the alternating presets)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ._utils import SbdiffError  # noqa: E402

__all__ = ["plot_samples", "samples_figure", "plot_trajectories", "plot_path_comparison", "image_grid",
           "save_image_grid", "plot_image_paths", "read_metrics", "phase_boundaries", "plot_curves",
           "CURVES_FILE"]

#: The training curves' file in a run directory (:func:`plot_curves`).
CURVES_FILE = "curves.png"


def _lims(*arrays: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    pts = np.concatenate([a.reshape(-1, a.shape[-1])[:, :2] for a in arrays])
    lo, hi = np.percentile(pts, 0.5, axis=0), np.percentile(pts, 99.5, axis=0)
    pad = 0.1 * (hi - lo + 1e-9)
    return (lo[0] - pad[0], hi[0] + pad[0]), (lo[1] - pad[1], hi[1] + pad[1])


def plot_samples(samples: np.ndarray, data: np.ndarray, path: str | Path, title: str = "") -> None:
    """Side-by-side scatter of data and model samples (first two coordinates; histogram if d = 1),
    written to ``path`` (:func:`samples_figure`)."""
    fig = samples_figure(samples, data, title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def samples_figure(samples: np.ndarray, data: np.ndarray, title: str = ""):
    """The figure of :func:`plot_samples`, returned open (e.g. for TensorBoard's ``add_figure``, which
    closes it).

    Parameters
    ----------
    samples, data : np.ndarray, shape (N, d) and (M, d)
        Model samples and data points, data coordinates.
    title : str
        The figure's title.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.5), sharex=True, sharey=True)
    for ax, pts, name in zip(axes, (data, samples), ("data", "samples")):
        if pts.shape[1] == 1:
            ax.hist(pts[:, 0], bins=80, density=True, color="C0" if name == "data" else "C1")
        else:
            ax.scatter(pts[:, 0], pts[:, 1], s=1.5, alpha=0.5, color="C0" if name == "data" else "C1")
            ax.set_aspect("equal")
        ax.set_title(f"{name} (n={len(pts)})")
    if samples.shape[1] > 1:
        xl, yl = _lims(data, samples)
        axes[0].set_xlim(*xl)
        axes[0].set_ylim(*yl)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_trajectories(traj: np.ndarray, path: str | Path, title: str = "", n_paths: int = 200) -> None:
    """Paths ``(K+1, N, d)`` from prior side (index 0) to data side (index K): first two coordinates."""
    traj = traj[:, :n_paths]
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    if traj.shape[2] == 1:
        ts = np.linspace(1, 0, traj.shape[0])
        ax.plot(ts, traj[:, :, 0], lw=0.4, alpha=0.5, color="C2")
        ax.set_xlabel("t / T")
    else:
        ax.plot(traj[:, :, 0], traj[:, :, 1], lw=0.4, alpha=0.4, color="C2")
        ax.scatter(traj[0, :, 0], traj[0, :, 1], s=3, color="C0", label="prior side", zorder=3)
        ax.scatter(traj[-1, :, 0], traj[-1, :, 1], s=3, color="C3", label="data side", zorder=3)
        ax.set_aspect("equal")
        ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_path_comparison(trajs: dict[str, np.ndarray], path: str | Path, *, data: np.ndarray | None = None,
                         n_paths: int = 150, title: str = "") -> None:
    """Probability-flow paths of several models side by side, one panel each, on common axes (e.g. SGM
    against VSDM on anisotropic data). ``trajs`` maps a panel title to paths ``(K+1, N, 2)`` from the
    prior side (index 0) to the data side (index K), data coordinates; ``data`` ``(M, 2)`` is drawn
    faintly behind."""
    items = [(name, np.asarray(t)[:, :n_paths, :2]) for name, t in trajs.items()]
    fig, axes = plt.subplots(1, len(items), figsize=(5.0 * len(items), 5.0), sharex=True, sharey=True, squeeze=False)
    xl, yl = _lims(*(t for _, t in items), *(() if data is None else (np.asarray(data)[:, :2],)))
    for ax, (name, traj) in zip(axes[0], items):
        if data is not None:
            ax.scatter(data[:, 0], data[:, 1], s=0.5, alpha=0.15, color="0.5", zorder=1)
        ax.plot(traj[:, :, 0], traj[:, :, 1], lw=0.5, alpha=0.5, color="C2", zorder=2)
        ax.scatter(traj[0, :, 0], traj[0, :, 1], s=3, color="C0", label="prior side", zorder=3)
        ax.scatter(traj[-1, :, 0], traj[-1, :, 1], s=3, color="C3", label="data side", zorder=3)
        ax.set_xlim(*xl)
        ax.set_ylim(*yl)
        ax.set_aspect("equal")
        ax.set_title(name, fontsize=10)
    axes[0][0].legend(loc="upper right", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def image_grid(images: np.ndarray, nrow: int | None = None, pad: int = 1, vmin: float = 0.0,
               vmax: float = 1.0) -> np.ndarray:
    """Tile images ``(N, C, H, W)`` (``C`` = 1 or 3) into one array ``(rows·(H+pad)+pad, cols·(W+pad)+pad, C)``
    with values clipped to ``[vmin, vmax]`` and mapped to ``[0, 1]``; padding is 1 (white)."""
    images = np.asarray(images, np.float64)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape (N, 1|3, H, W), got {images.shape}")
    n, c, h, w = images.shape
    ncol = nrow or int(np.ceil(np.sqrt(n)))
    nrows = int(np.ceil(n / ncol))
    x = np.clip((images - vmin) / (vmax - vmin), 0.0, 1.0)
    grid = np.ones((nrows * (h + pad) + pad, ncol * (w + pad) + pad, c))
    for i in range(n):
        r, q = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[top:top + h, left:left + w] = x[i].transpose(1, 2, 0)
    return grid


def save_image_grid(images: np.ndarray, path: str | Path, *, vmin: float = 0.0, vmax: float = 1.0,
                    nrow: int | None = None, scale: int = 4, data: np.ndarray | None = None,
                    title: str = "") -> None:
    """Write a PNG grid of images ``(N, C, H, W)`` in data units, shown on ``[vmin, vmax]`` (grey
    levels for ``C = 1``, with black at ``vmin`` … white at ``vmax``, inverted so that ink is dark).
    With ``data`` (same layout) the grid of data images is drawn beside the samples.
    """
    panels = [("samples", images)] if data is None else [("data", data), ("samples", images)]
    grids = [(name, image_grid(x, nrow, vmin=vmin, vmax=vmax)) for name, x in panels]
    h, w = grids[0][1].shape[:2]
    fig, axes = plt.subplots(1, len(grids), figsize=(len(grids) * w * scale / 100 + 0.4, h * scale / 100 + 0.6),
                             dpi=100, squeeze=False)
    for ax, (name, g) in zip(axes[0], grids):
        if g.shape[2] == 1:
            ax.imshow(1.0 - g[:, :, 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.imshow(g, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_image_paths(paths: np.ndarray, path: str | Path, *, vmin: float = 0.0, vmax: float = 1.0,
                     n_steps: int = 8, title: str = "") -> None:
    """Paths of images ``(K+1, N, C, H, W)`` from prior side (index 0) to data side (index K): one row
    per path, ``n_steps`` evenly spaced times per row."""
    k = np.linspace(0, paths.shape[0] - 1, n_steps).round().astype(int)
    rows = np.asarray(paths)[k].transpose(1, 0, 2, 3, 4)  # (N, n_steps, C, H, W)
    n = rows.shape[0]
    save_image_grid(rows.reshape(n * n_steps, *rows.shape[2:]), path, vmin=vmin, vmax=vmax, nrow=n_steps,
                    title=title)


__all__ += ["plot_forecast_fans", "plot_class_grid"]


def plot_forecast_fans(history: np.ndarray, samples: np.ndarray, truth: np.ndarray, path: str | Path, *,
                       names: list[str] | None = None, max_windows: int = 4, max_variables: int = 6,
                       title: str = "") -> None:
    """Fan charts of probabilistic forecasts: one row per window, one column per variable.

    Each panel shows the history, the truth over the horizon, the sample median and the 50 % and
    90 % central bands of the samples. Steps are numbered from the first forecast step (1..H); the
    history lies at steps ``-(L-H)+1..0``.

    Parameters
    ----------
    history : np.ndarray, shape (N, L - H, d)
    samples : np.ndarray, shape (N, S, H, d)
    truth : np.ndarray, shape (N, H, d)
    path : str or Path
        PNG file to write.
    names : list of str, optional
        Variable names (column titles); default ``x0, x1, …``.
    max_windows : int
        At most this many windows, evenly spaced over the ``N`` windows.
    max_variables : int
        At most this many variables (the first ones).
    """
    history, samples, truth = (np.asarray(a, np.float64) for a in (history, samples, truth))
    n, t_hist, d = history.shape
    h = truth.shape[1]
    rows = np.unique(np.linspace(0, n - 1, min(n, max(1, max_windows))).round().astype(int))
    cols = range(min(d, max(1, max_variables)))
    names = list(names) if names is not None else [f"x{j}" for j in range(d)]
    steps_hist, steps_fut = np.arange(-t_hist + 1, 1), np.arange(1, h + 1)
    q = np.quantile(samples, [0.05, 0.25, 0.5, 0.75, 0.95], axis=1)  # (5, N, H, d)
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(3.4 * len(cols) + 0.6, 2.3 * len(rows) + 0.6),
                             sharex=True, squeeze=False)
    for r, i in enumerate(rows):
        for c, j in enumerate(cols):
            ax = axes[r][c]
            # join the history to the horizon at step 0 so that the lines are continuous
            ax.plot(steps_hist, history[i, :, j], color="0.2", lw=1.0, label="history")
            ax.plot(np.r_[0, steps_fut], np.r_[history[i, -1, j], truth[i, :, j]], color="C0", lw=1.2,
                    label="truth")
            ax.fill_between(steps_fut, q[0, i, :, j], q[4, i, :, j], color="C1", alpha=0.2, lw=0, label="90 %")
            ax.fill_between(steps_fut, q[1, i, :, j], q[3, i, :, j], color="C1", alpha=0.4, lw=0, label="50 %")
            ax.plot(steps_fut, q[2, i, :, j], color="C1", lw=1.2, label="median")
            ax.axvline(0.5, color="0.6", lw=0.6, ls=":")
            if r == 0:
                ax.set_title(names[j] if j < len(names) else f"x{j}", fontsize=9)
            if c == 0:
                ax.set_ylabel(f"window {i}", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0][0].legend(loc="best", fontsize=6)
    for ax in axes[-1]:
        ax.set_xlabel("step", fontsize=8)
    fig.suptitle(title or f"forecasts: {samples.shape[1]} samples, 50 % and 90 % bands", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_class_grid(images_by_class: np.ndarray, path: str | Path, *, titles: list[str] | None = None,
                    vmin: float | None = None, vmax: float | None = None, scale: int = 4, title: str = "") -> None:
    """A grid of gray image samples, one row per class, labelled with the class.

    Parameters
    ----------
    images_by_class : np.ndarray, shape (K, n, h, w)
        ``n`` images of each of ``K`` classes, in data units.
    path : str or Path
        PNG file to write.
    titles : list of str, optional
        Row labels (length ``K``); default ``class 0, class 1, …``.
    vmin, vmax : float, optional
        Data range shown from white to black (ink dark, as in :func:`save_image_grid`); default the
        range of the images.
    """
    x = np.asarray(images_by_class, np.float64)
    if x.ndim != 4:
        raise ValueError(f"expected images of shape (K, n, h, w), got {x.shape}")
    k, n, h, w = x.shape
    lo = float(x.min()) if vmin is None else vmin
    hi = float(x.max()) if vmax is None else vmax
    if hi <= lo:
        hi = lo + 1.0
    titles = list(titles) if titles is not None else [f"class {c}" for c in range(k)]
    grid = image_grid(x.reshape(k * n, 1, h, w), n, vmin=lo, vmax=hi)
    gh, gw = grid.shape[:2]
    fig, ax = plt.subplots(figsize=(gw * scale / 100 + 1.2, gh * scale / 100 + 0.6), dpi=100)
    ax.imshow(1.0 - grid[:, :, 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks([1 + r * (h + 1) + h / 2 - 0.5 for r in range(k)])
    ax.set_yticklabels([titles[r] if r < len(titles) else f"class {r}" for r in range(k)], fontsize=8)
    ax.set_xticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    ax.tick_params(length=0)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# -- training curves --------------------------------------------------------------------------------
#: The panels of :func:`plot_curves`: title and the ``metrics.jsonl`` keys drawn in it (those present).
CURVE_PANELS = (("loss", ("loss",)), ("prior loss (nats)", ("prior_loss",)),
                ("drift matching", ("drift_matching", "encoder_matching")), ("learning rate", ("lr",)))
#: Colours of the phases' roles (the network a phase fits) and of the keys of a run without phases.
_ROLE_COLOURS = {"decoder": "C0", "encoder": "C1"}


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a ``metrics.jsonl`` (a line cut by a kill, or not an object, is skipped).

    Raises
    ------
    SbdiffError : the file cannot be read.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise SbdiffError(f"cannot read {path}: {err.strerror or err}") from None
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


def _training_rows(rows: list[dict]) -> list[dict]:
    """The rows of training log steps (a warning row of its own, which repeats ``prior_loss``, is not)."""
    return [r for r in rows if "warning" not in r or "loss" in r]


def phase_boundaries(rows: list[dict]) -> list[int]:
    """Where a phased run's ``metrics.jsonl`` says the phase changed: the ``step`` of each row whose
    ``phase_name`` differs from the next row's, i.e. the last step of every phase but the last (the
    trainer writes a row there). Rows without a ``phase_name`` (a run without phases) give ``[]``.

    Parameters
    ----------
    rows : list of dict
        ``metrics.jsonl`` rows in order (:func:`read_metrics`).

    Returns
    -------
    list of int
        Increasing steps; :func:`plot_curves` draws a vertical line at each.
    """
    named = [r for r in _training_rows(rows) if r.get("phase_name") is not None]
    return [a["step"] for a, b in zip(named, named[1:]) if a["phase_name"] != b["phase_name"]]


def _segments(rows: list[dict]) -> list[list[dict]]:
    """Consecutive rows of one phase (one segment of all rows for a run without phases)."""
    out: list[list[dict]] = []
    for r in rows:
        if out and out[-1][-1].get("phase_name") == r.get("phase_name"):
            out[-1].append(r)
        else:
            out.append([r])
    return out


def _value(row: dict, key: str) -> float:
    v = row.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def plot_curves(run_dir: str | Path, path: str | Path | None = None, *, title: str | None = None) -> Path:
    """Draw a run's training curves from its ``metrics.jsonl``: loss, prior loss, drift matching
    (``drift_matching`` and, where logged, ``encoder_matching``) and learning rate against step.

    A phased run (the alternating presets: rows with ``phase_name``) is drawn phase by phase, the
    decoder phases and the encoder phases in two colours, no line joining two phases, with a
    vertical line at every step where ``metrics.jsonl`` says the phase changed
    (:func:`phase_boundaries`). Works on a killed run as well (the rows so far); a file without rows
    gives empty panels.

    Parameters
    ----------
    run_dir : str or Path
        The run directory (holding ``metrics.jsonl``).
    path : str or Path, optional
        The PNG to write; default ``run_dir/curves.png`` (:data:`CURVES_FILE`).
    title : str, optional
        Default: the run directory's name.

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    SbdiffError : ``run_dir`` has no ``metrics.jsonl``, or a file cannot be read or written.
    """
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise SbdiffError(f"{run_dir} has no metrics.jsonl: not a run directory, or a run killed before it began")
    rows = _training_rows(read_metrics(metrics))
    path = Path(path) if path is not None else run_dir / CURVES_FILE
    panels = [(name, [k for k in keys if any(k in r for r in rows)]) for name, keys in CURVE_PANELS]
    panels = [(name, keys) for name, keys in panels if keys] or [("loss", ["loss"])]
    cols = 2 if len(panels) > 1 else 1
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 3.0 * nrows + 0.5), sharex=True, squeeze=False)
    phased = any(r.get("phase_name") is not None for r in rows)
    bounds = phase_boundaries(rows)
    # ``lr`` is the rate of the next step: a phase's last row shows the next phase's first rate
    after = [{**r, "phase_name": nxt.get("phase_name")} if r["step"] in bounds else r
             for r, nxt in zip(rows, rows[1:] + rows[-1:])]
    for ax, (name, keys) in zip(axes.flat, panels):
        drawn = set()
        for seg in _segments(after if keys == ["lr"] else rows):
            steps = [r["step"] for r in seg]
            role = str(seg[0].get("phase_name") or "").split(" ")[0]
            for j, key in enumerate(keys):
                values = [_value(r, key) for r in seg]
                if all(math.isnan(v) for v in values):
                    continue
                if phased:
                    colour = _ROLE_COLOURS.get(role, "C2")
                    label = f"{role} phases" if role else "no phase"
                    style = "-" if j == 0 else "--"
                    if len(keys) > 1:
                        label = f"{key}, {label}"
                else:
                    colour, label, style = f"C{j}", key, "-"
                ax.plot(steps, values, style, color=colour, lw=1.0, marker=".", markersize=3,
                        label=None if label in drawn else label)
                drawn.add(label)
        for b in bounds:
            ax.axvline(b, color="0.6", lw=0.6, ls=":", zorder=0)
        finite = np.array([v for r in rows for k in keys if not math.isnan(v := _value(r, k))])
        if name != "learning rate" and len(finite) and finite.min() > 0 and finite.max() > 50 * finite.min():
            ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
        if len(drawn) > 1:
            ax.legend(fontsize=7, loc="best")
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("step", fontsize=8)
    if not rows:
        axes.flat[0].text(0.5, 0.5, "no log rows yet", ha="center", va="center", transform=axes.flat[0].transAxes)
    note = f"; phase boundaries (dotted): {len(bounds)}" if phased else ""
    fig.suptitle(f"{title or run_dir.name}: {len(rows)} log rows{note}", fontsize=9)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as err:
        raise SbdiffError(f"cannot write {path}: {err.strerror or err}") from None
    finally:
        plt.close(fig)
    return path
