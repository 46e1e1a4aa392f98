"""Data: built-in 2-D sets, sklearn's ``digits`` (8×8 images), and user files (``.npy``, ``.npz``, ``.csv``).

:func:`load_data` returns a validated float array of shape ``(N, d)`` (rows are samples): numeric,
finite, at least two rows. Images (``digits``, and ``.npy``/``.npz`` arrays of shape ``(N, C, H, W)``
or ``(N, H, W)``) come flattened to ``(N, C·H·W)`` in row-major ``C, H, W`` order, in their own units
(``digits``: 0..16, uint8: 0..255); :func:`image_info` tells their shape and quantisation, and
:class:`ImageScaling` is the map to model coordinates with the uniform dequantisation (see
``docs/images.md``). Problems raise :class:`SbdiffError` naming the file and the problem.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ._utils import SbdiffError

__all__ = ["BUILTIN", "IMAGE_SETS", "load_data", "load_images", "image_info", "ImageInfo", "ImageScaling",
           "make_builtin", "validate_array", "on_checkerboard", "Standardizer"]


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


# built-in image sets: name -> (C, H, W), number of levels (integer values 0..levels-1)
IMAGE_SETS: dict[str, tuple[tuple[int, int, int], int]] = {"digits": ((1, 8, 8), 17)}


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


def validate_array(x: np.ndarray, source: str = "data", *, images: bool = False) -> np.ndarray:
    """Check that ``x`` is a numeric, finite array of shape ``(N, d)`` with ``N >= 2``; return float64.

    With ``images``, arrays of shape ``(N, H, W)`` and ``(N, C, H, W)`` are accepted as well and
    returned flattened to ``(N, C·H·W)`` (row-major).
    """
    x = np.asarray(x)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise SbdiffError(f"{source}: expected numbers, got an array of dtype {x.dtype}")
    if np.iscomplexobj(x):
        raise SbdiffError(f"{source}: expected real numbers, got an array of dtype {x.dtype}")
    if x.size == 0:
        raise SbdiffError(f"{source}: the data is empty (shape {x.shape})")
    if images and x.ndim in (3, 4):
        x = x.reshape(x.shape[0], -1)
    if x.ndim != 2:
        hint = " (for 1-D data use shape (N, 1))" if x.ndim == 1 else ""
        shapes = "(N, d) with rows as samples, or images (N, H, W) / (N, C, H, W)" if images else "(N, d) with rows as samples"
        raise SbdiffError(f"{source}: expected a 2-D array of shape {shapes}, got shape {x.shape}{hint}")
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
        ``scurve``, ``digits``) or a path to ``.npy``/``.npz``/``.csv`` with rows as samples;
        ``digits`` and ``.npy``/``.npz`` images ``(N, H, W)``/``(N, C, H, W)`` come flattened to
        ``(N, C·H·W)`` in their own units (:func:`load_images` also gives their shape and levels).
    n, seed : int
        Size and seed of a generated built-in set (ignored for files and ``digits``).
    """
    if spec in BUILTIN:
        return validate_array(make_builtin(spec, n, seed), spec)
    path = _check_path(spec)
    return validate_array(_read_file(path), str(path), images=path.suffix.lower() in (".npy", ".npz"))


def _check_path(spec: str) -> Path:
    path = Path(spec)
    if path.suffix.lower() not in (".npy", ".npz", ".csv"):
        raise SbdiffError(
            f"unknown dataset '{spec}'; built-in sets: {', '.join(BUILTIN)}, or a .npy/.npz/.csv path"
        )
    if not path.is_file():
        raise SbdiffError(f"data file not found: {spec}")
    return path


# -- images ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageInfo:
    """What a data source is: its image shape and quantisation.

    Attributes
    ----------
    image_shape : tuple (C, H, W) or None
        ``None`` for vector data.
    levels : int
        Number of quantisation levels ``L`` of integer-valued images (uint8: 256, ``digits``: 17,
        floats on the ``k/255`` grid: 256, binary: 2); 0 for continuous values.
    max_value : float
        The value of the top level in data units (integers: ``L − 1``; floats: 1.0). The levels
        are ``0, Δ, 2Δ, …, max_value`` with ``Δ = max_value/(L − 1)``.
    """

    image_shape: tuple[int, int, int] | None
    levels: int = 0
    max_value: float = 1.0


def _quantisation(raw: np.ndarray, source: str) -> tuple[int, float]:
    """``(levels, max_value)`` of an image array in its own units (see :class:`ImageInfo`)."""
    x = np.asarray(raw)
    if x.dtype == bool:
        return 2, 1.0
    if x.dtype == np.uint8:
        return 256, 255.0
    xf = x.astype(np.float64)
    lo, hi = float(xf.min()), float(xf.max())
    if np.issubdtype(x.dtype, np.integer) or np.array_equal(xf, np.round(xf)):
        if lo < 0:
            raise SbdiffError(f"{source}: integer-valued images must be >= 0 (levels 0..L-1), found {lo:g}; "
                              "shift them, or give floats in [0, 1]")
        levels = max(int(hi) + 1, 2)
        return levels, float(levels - 1)
    if lo < 0 or hi > 1:
        raise SbdiffError(f"{source}: float images must lie in [0, 1] (found values in [{lo:g}, {hi:g}]); "
                          "rescale them, or save integer levels (uint8)")
    if np.allclose(xf * 255.0, np.round(xf * 255.0), rtol=0, atol=1e-4):
        return 256, 1.0  # 8-bit images stored as k/255
    return 0, 1.0


def load_images(spec: str) -> tuple[np.ndarray, ImageInfo]:
    """Load an image data set: ``digits`` or a ``.npy``/``.npz`` array of shape ``(N, C, H, W)`` or ``(N, H, W)``.

    Returns
    -------
    x : ndarray, shape (N, C·H·W)
        Validated, flattened (row-major ``C, H, W``), float64, in the data's own units.
    info : ImageInfo
    """
    if spec in IMAGE_SETS:
        shape, levels = IMAGE_SETS[spec]
        return load_data(spec), ImageInfo(shape, levels, float(levels - 1))
    if spec in BUILTIN:
        raise SbdiffError(f"'{spec}' is not an image data set (image sets: {', '.join(IMAGE_SETS)})")
    path = _check_path(spec)
    raw = _read_file(path) if path.suffix.lower() != ".csv" else None
    if raw is None or np.asarray(raw).ndim not in (3, 4):
        shape = "a CSV file" if raw is None else f"shape {np.asarray(raw).shape}"
        raise SbdiffError(f"{path}: images must be a .npy/.npz array of shape (N, C, H, W) or (N, H, W), got {shape}")
    raw = np.asarray(raw)
    x = validate_array(raw, str(path), images=True)
    image_shape = (1, *raw.shape[1:]) if raw.ndim == 3 else tuple(raw.shape[1:])
    levels, max_value = _quantisation(raw, str(path))
    return x, ImageInfo(tuple(int(s) for s in image_shape), levels, max_value)


def image_info(spec: str) -> ImageInfo:
    """Shape and quantisation of a data source (``image_shape`` is ``None`` for vector data).

    Built-in sets are known without loading; for ``.npy``/``.npz`` files of rank 3 or 4 the array
    is read (to find its levels); rank-2 arrays and CSV files are vectors.
    """
    if spec in IMAGE_SETS:
        shape, levels = IMAGE_SETS[spec]
        return ImageInfo(shape, levels, float(levels - 1))
    if spec in BUILTIN:
        return ImageInfo(None)
    path = _check_path(spec)
    if path.suffix.lower() == ".csv":
        return ImageInfo(None)
    if path.suffix.lower() == ".npy":
        try:  # the header alone tells the rank
            ndim = np.load(path, mmap_mode="r", allow_pickle=False).ndim
        except (ValueError, OSError, EOFError) as err:
            raise SbdiffError(f"{path}: cannot read as .npy ({err})") from None
        if ndim not in (3, 4):
            return ImageInfo(None)
    elif np.asarray(_read_file(path)).ndim not in (3, 4):
        return ImageInfo(None)
    return load_images(spec)[1]


class ImageScaling:
    """The map between image data units and model coordinates, with uniform dequantisation.

    For integer-valued images with ``L`` levels ``x ∈ {0, Δ, …, (L−1)Δ}^D`` (``Δ = max_value/(L−1)``;
    ``Δ = 1`` for integer arrays) the dequantised point is ``x + Δ·u``, ``u ~ U[0, 1)^D`` (Uria et al.
    2013; Theis et al. 2016), equivalently ``y = (k + u)/L ∈ [0, 1)^D`` for the level index ``k``;
    model coordinates are ``2y − 1 ∈ [−1, 1)^D``: ONE scalar affine map ``m = (x − c)/s`` with
    ``c = s = LΔ/2`` (the same for every pixel; not per-pixel standardisation, which would blow up
    pixels that are constant in the data). Continuous images (``levels = 0``) in ``[0, max_value]``
    get ``c = s = max_value/2`` and no noise.

    Parameters
    ----------
    levels : int
        ``L`` (0: continuous, no dequantisation).
    max_value : float
        Value of the top level in data units.
    """

    def __init__(self, levels: int, max_value: float):
        if levels == 1 or levels < 0 or not max_value > 0:
            raise SbdiffError(f"image scaling needs levels = 0 or >= 2 and max_value > 0, got {levels}, {max_value}")
        self.levels = int(levels)
        self.max_value = float(max_value)
        self.step = self.max_value / (self.levels - 1) if self.levels else 0.0  # Δ, 0 when continuous
        top = self.levels * self.step if self.levels else self.max_value
        self.center = self.scale = top / 2.0

    def to_model(self, x: np.ndarray) -> np.ndarray:
        """Data units -> model coordinates (no noise): level ``k`` goes to the corner ``2k/L − 1``."""
        return (np.asarray(x, np.float64) - self.center) / self.scale


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
