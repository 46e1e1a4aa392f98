"""Plots written into run directories: samples against data, probability-flow trajectories, and
image grids (samples of image runs, and their paths from noise to data)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plot_samples", "plot_trajectories", "plot_path_comparison", "image_grid", "save_image_grid",
           "plot_image_paths"]


def _lims(*arrays: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    pts = np.concatenate([a.reshape(-1, a.shape[-1])[:, :2] for a in arrays])
    lo, hi = np.percentile(pts, 0.5, axis=0), np.percentile(pts, 99.5, axis=0)
    pad = 0.1 * (hi - lo + 1e-9)
    return (lo[0] - pad[0], hi[0] + pad[0]), (lo[1] - pad[1], hi[1] + pad[1])


def plot_samples(samples: np.ndarray, data: np.ndarray, path: str | Path, title: str = "") -> None:
    """Side-by-side scatter of data and model samples (first two coordinates; histogram if d = 1)."""
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
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
