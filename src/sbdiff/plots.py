"""Plots written into run directories: samples against data, and probability-flow trajectories."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plot_samples", "plot_trajectories"]


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
