"""Data: built-in 2-D sets, sklearn's ``digits``, and user files (``.npy``, ``.npz``, ``.csv``).

Everything returns a float array of shape ``(N, d)`` (rows are samples) that has been validated:
numeric, finite, rank 2, at least two rows. Problems raise :class:`SbdiffError` naming the file and
the problem.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np

from ._utils import SbdiffError

__all__ = ["BUILTIN", "load_data", "make_builtin", "validate_array", "on_checkerboard", "Standardizer"]


def _checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    # 8 occupied unit cells (i + j even) of the 4×4 board [-2, 2)², scaled by 2 to [-4, 4)²
    cells = np.array([(i, j) for i in range(-2, 2) for j in range(-2, 2) if (i + j) % 2 == 0], float)
    pick = cells[rng.integers(0, len(cells), n)]
    return 2.0 * (pick + rng.random((n, 2)))


def on_checkerboard(x: np.ndarray) -> np.ndarray:
    """Boolean mask, shape ``(N,)``: which points of ``x`` (``(N, 2)``) lie on the dark squares of the
    built-in ``checkerboard`` (side-2 squares of ``[-4, 4)²`` with ``⌊x/2⌋ + ⌊y/2⌋`` even)."""
    x = np.asarray(x, float)
    inside = np.all((x >= -4) & (x < 4), axis=1)
    cell = np.floor(x / 2.0).astype(int)
    return inside & ((cell[:, 0] + cell[:, 1]) % 2 == 0)


def _moons(n: int, rng: np.random.Generator) -> np.ndarray:
    from sklearn.datasets import make_moons

    x, _ = make_moons(n, noise=0.05, random_state=int(rng.integers(2**31)))
    return (x - np.array([0.5, 0.25])) * 2.0


def _eight_gaussians(n: int, rng: np.random.Generator) -> np.ndarray:
    angles = np.arange(8) * math.pi / 4
    centers = 4.0 * np.stack([np.cos(angles), np.sin(angles)], 1)
    return centers[rng.integers(0, 8, n)] + 0.5 * rng.standard_normal((n, 2))


def _swissroll(n: int, rng: np.random.Generator) -> np.ndarray:
    from sklearn.datasets import make_swiss_roll

    x, _ = make_swiss_roll(n, noise=0.5, random_state=int(rng.integers(2**31)))
    return x[:, [0, 2]] / 3.0


def _spiral(n: int, rng: np.random.Generator) -> np.ndarray:
    # two interleaved arms (FFJORD's "2spirals")
    r = np.sqrt(rng.random(n)) * 3 * math.pi
    sign = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    x = sign[:, None] * np.stack([-np.cos(r) * r, np.sin(r) * r], 1)
    return x / 2.5 + 0.1 * rng.standard_normal((n, 2))


def _scurve(n: int, rng: np.random.Generator) -> np.ndarray:
    from sklearn.datasets import make_s_curve

    x, _ = make_s_curve(n, noise=0.05, random_state=int(rng.integers(2**31)))
    return x[:, [0, 2]] * 1.5


def _digits(n: int, rng: np.random.Generator) -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().data.astype(np.float64)  # (1797, 64), values 0..16; n is ignored


BUILTIN: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    "checkerboard": _checkerboard,
    "moons": _moons,
    "8gaussians": _eight_gaussians,
    "swissroll": _swissroll,
    "spiral": _spiral,
    "scurve": _scurve,
    "digits": _digits,
}


def make_builtin(name: str, n: int, seed: int = 0) -> np.ndarray:
    """Draw ``n`` points of a built-in set (``digits`` returns its 1797 images as 64-vectors)."""
    if name not in BUILTIN:
        raise SbdiffError(f"unknown dataset '{name}'; built-in sets: {', '.join(BUILTIN)} (or a .npy/.npz/.csv path)")
    if int(n) < 2:
        raise SbdiffError(f"need at least 2 samples, got n={n}")
    return BUILTIN[name](int(n), np.random.default_rng(seed))


def validate_array(x: np.ndarray, source: str = "data") -> np.ndarray:
    """Check that ``x`` is a numeric, finite array of shape ``(N, d)`` with ``N >= 2``; return float64."""
    x = np.asarray(x)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise SbdiffError(f"{source}: expected numbers, got an array of dtype {x.dtype}")
    if x.size == 0:
        raise SbdiffError(f"{source}: the data is empty (shape {x.shape})")
    if x.ndim != 2:
        hint = " (for 1-D data use shape (N, 1))" if x.ndim == 1 else ""
        raise SbdiffError(f"{source}: expected a 2-D array of shape (N, d) with rows as samples, got shape {x.shape}{hint}")
    if x.shape[0] < 2:
        raise SbdiffError(f"{source}: need at least 2 samples (rows), got {x.shape[0]}")
    x = x.astype(np.float64)
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise SbdiffError(
            f"{source}: {len(rows)} row(s) contain NaN or inf (first at row {rows[0]}); clean the data first"
        )
    return x


def _read_file(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                keys = list(npz.keys())
                if len(keys) == 1:
                    return npz[keys[0]]
                for key in ("data", "x", "arr_0"):
                    if key in keys:
                        return npz[key]
                raise SbdiffError(f"{path}: .npz holds several arrays ({', '.join(keys)}); name one 'data'")
        if suffix == ".csv":
            return _read_csv(path)
    except SbdiffError:
        raise
    except (ValueError, OSError, EOFError) as err:
        raise SbdiffError(f"{path}: cannot read as {suffix} ({err})") from None
    raise SbdiffError(f"{path}: unsupported file type '{suffix}'; use .npy, .npz or .csv")


def _read_csv(path: Path) -> np.ndarray:
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if not lines:
        raise SbdiffError(f"{path}: the CSV file is empty")

    def numeric(line: str) -> bool:
        try:
            [float(v) for v in line.split(",")]
            return True
        except ValueError:
            return False

    if not numeric(lines[0]) and len(lines) > 1 and numeric(lines[1]):
        lines = lines[1:]  # a header row
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append([float(v) for v in line.split(",")])
        except ValueError:
            raise SbdiffError(f"{path}: non-numeric value in CSV row {i + 1}: {line[:60]!r}") from None
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise SbdiffError(f"{path}: CSV rows have different numbers of columns {sorted(widths)}")
    return np.array(rows, dtype=np.float64)


def load_data(spec: str, n: int = 50_000, seed: int = 0) -> np.ndarray:
    """Load a data set by built-in name or file path; returns a validated ``(N, d)`` float64 array.

    Parameters
    ----------
    spec : str
        A built-in name (``checkerboard``, ``moons``, ``8gaussians``, ``swissroll``, ``spiral``,
        ``scurve``, ``digits``) or a path to ``.npy``/``.npz``/``.csv`` with rows as samples.
    n, seed : int
        Size and seed of a generated built-in set (ignored for files and ``digits``).
    """
    if spec in BUILTIN:
        return validate_array(make_builtin(spec, n, seed), spec)
    path = Path(spec)
    if path.suffix.lower() not in (".npy", ".npz", ".csv"):
        raise SbdiffError(
            f"unknown dataset '{spec}'; built-in sets: {', '.join(BUILTIN)}, or a .npy/.npz/.csv path"
        )
    if not path.is_file():
        raise SbdiffError(f"data file not found: {spec}")
    return validate_array(_read_file(path), str(path))


class Standardizer:
    """Per-coordinate affine map ``y = (x − mean)/scale`` between data and model coordinates.

    Parameters
    ----------
    mean, scale : array of shape (d,)
    """

    def __init__(self, mean: np.ndarray, scale: np.ndarray):
        self.mean = np.asarray(mean, np.float64)
        self.scale = np.asarray(scale, np.float64)

    @classmethod
    def fit(cls, x: np.ndarray, enabled: bool = True) -> "Standardizer":
        d = x.shape[1]
        if not enabled:
            return cls(np.zeros(d), np.ones(d))
        scale = x.std(0)
        scale = np.where(scale > 1e-8, scale, 1.0)
        return cls(x.mean(0), scale)
