"""Multivariate time series for probabilistic forecasting: data, windows, baselines and scores.

A series is a float64 array ``(T, d)``: rows are time steps, columns are variables. Forecasting is
posed as in CSDI (Tashiro et al. 2021, "CSDI: Conditional score-based diffusion models for
probabilistic time series imputation", NeurIPS), forecast setting: a window of ``L`` consecutive
rows is split into an observed history (the first ``L - H`` rows) and a masked future (the last
``H`` rows), and a conditional generative model draws the future given the history.

The series is split in time (never shuffled): the first rows train the model, the next ones
validate it and the last ones test it (:data:`SPLIT`). Training windows lie entirely in the
training rows; an evaluation window needs only its future inside the evaluated segment, so its
history may reach back into earlier rows, as in a rolling forecast.

Baselines: the seasonal-naive point forecast, and a Gaussian vector autoregression (VAR) with lag
order chosen by AIC (statsmodels; Lütkepohl 2005), sampled by simulating its recursion.

Scores: the continuous ranked probability score, CRPS (Matheson & Winkler 1976; Gneiting & Raftery
2007, "Strictly proper scoring rules, prediction, and estimation", JASA), estimated from samples with
scoringrules' ensemble estimator (the CRPS of the samples' empirical distribution); the normalized
CRPS of CSDI and TimeGrad (sum of CRPS over entries divided by the sum of absolute observations); the
CRPS-sum, the CRPS of the sum over variables (Salinas et al. 2019, "High-dimensional multivariate
forecasting with low-rank Gaussian copula processes", NeurIPS; Rasul et al. 2021, "Autoregressive
denoising diffusion models for multivariate probabilistic time series forecasting" (TimeGrad), ICML),
here reported unnormalized; and the empirical coverage of central intervals.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ._utils import SbdiffError

__all__ = [
    "SPLIT", "BUILTIN_SERIES", "SERIES_SEASON", "load_series", "split_rows", "check_window",
    "sliding_windows", "training_windows", "evaluation_windows", "flatten_windows", "unflatten_windows",
    "seasonal_naive", "var_forecast", "crps", "crps_sum", "normalized_crps", "coverage", "forecast_scores",
    "SCALINGS", "window_scale", "GLUONTS_QUANTILES", "weighted_quantile_loss", "gluonts_crps", "gluonts_crps_sum",
]

#: Default split in time, as fractions of the rows: rows ``[0, 0.7 T)`` train, ``[0.7 T, 0.85 T)``
#: validate, the rest test (boundaries rounded down, see :func:`split_rows`).
SPLIT: tuple[float, float] = (0.7, 0.85)


# ----------------------------------------------------------------------------------------------
# data


def _macrodata() -> np.ndarray:
    """US quarterly macro data 1959Q1–2009Q3 (statsmodels' ``macrodata``): real GDP, real personal
    consumption and real private investment, as quarterly growth in percent ``100 · Δ log x``;
    shape ``(202, 3)`` (the classic statsmodels VAR example)."""
    from statsmodels.datasets import macrodata

    frame = macrodata.load_pandas().data
    levels = frame[["realgdp", "realcons", "realinv"]].to_numpy(dtype=np.float64)
    return 100.0 * np.diff(np.log(levels), axis=0)


#: Built-in series by name: a loader ``() -> (T, d)`` float64 array.
BUILTIN_SERIES: dict[str, Callable[[], np.ndarray]] = {"macrodata": _macrodata}

#: Seasonal period of each built-in series, for :func:`seasonal_naive` (4: quarterly data).
SERIES_SEASON: dict[str, int] = {"macrodata": 4}


def _read_csv(path: Path) -> np.ndarray:
    rows: list[list[float]] = []
    with open(path, newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh), start=1):
            cells = [c.strip() for c in row]
            if not any(cells):
                continue
            try:
                values = [float(c) for c in cells]
            except ValueError:
                if not rows and lineno == 1 and not any(_is_number(c) for c in cells):
                    continue  # a header row
                raise SbdiffError(f"{path}: non-numeric value in line {lineno}: {','.join(cells)[:80]!r}") from None
            if rows and len(values) != len(rows[0]):
                raise SbdiffError(f"{path}: line {lineno} has {len(values)} columns, expected {len(rows[0])}")
            rows.append(values)
    if not rows:
        raise SbdiffError(f"{path}: no numeric rows")
    return np.asarray(rows, dtype=np.float64)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _as_series(a: np.ndarray, what: str) -> np.ndarray:
    """Check and convert a loaded array to a series ``(T, d)`` float64."""
    a = np.asarray(a)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise SbdiffError(f"{what}: expected a numeric array, got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.complexfloating):
        raise SbdiffError(f"{what}: expected a real array, got dtype {a.dtype}")
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise SbdiffError(f"{what}: expected a 1-D or 2-D array (rows = time steps), got shape {a.shape}")
    if a.shape[1] < 1:
        raise SbdiffError(f"{what}: the series has no columns (shape {a.shape})")
    if a.shape[0] < 2:
        raise SbdiffError(f"{what}: a series needs at least 2 rows (time steps), got {a.shape[0]}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        bad = int((~np.isfinite(a)).sum())
        raise SbdiffError(f"{what}: the series has {bad} NaN or infinite value(s)")
    return np.ascontiguousarray(a)


def load_series(spec: str) -> np.ndarray:
    """Load a series by built-in name or from a file.

    Parameters
    ----------
    spec : str
        A name in :data:`BUILTIN_SERIES`, or a path to a ``.npy`` file (a 2-D array, rows = time
        steps, columns = variables; a 1-D array is one variable) or a ``.csv`` file (numeric,
        comma-separated, same layout; a first row of non-numbers is taken as a header and skipped),
        or a GluonTS-format data set (a folder or ``.tar.gz``, :mod:`sbdiff.gluonts_data`): its
        training series side by side.

    Returns
    -------
    np.ndarray, shape (T, d), float64

    Raises
    ------
    SbdiffError
        Unknown name or missing file, unknown extension, non-numeric values, NaN or infinite values,
        an array of rank other than 1 or 2, or fewer than 2 rows.
    """
    from .gluonts_data import is_gluonts, load_gluonts

    spec = str(spec)
    if spec in BUILTIN_SERIES:
        return _as_series(BUILTIN_SERIES[spec](), spec)
    path = Path(spec).expanduser()
    if is_gluonts(path):
        return _as_series(load_gluonts(path).train, spec)
    suffix = path.suffix.lower()
    if not path.is_file():
        if suffix in (".npy", ".csv") or path.exists():
            raise SbdiffError(f"series file not found: {spec}")
        raise SbdiffError(f"unknown series {spec!r}: expected one of {sorted(BUILTIN_SERIES)} or a .npy / .csv file")
    if suffix == ".npy":
        try:
            a = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise SbdiffError(f"{spec}: not a readable .npy array ({str(err).splitlines()[0]})") from None
    elif suffix == ".csv":
        try:
            a = _read_csv(path)
        except UnicodeDecodeError:
            raise SbdiffError(f"{spec}: not a text .csv file") from None
    else:
        raise SbdiffError(f"{spec}: unknown series file extension {path.suffix!r} (expected .npy or .csv)")
    return _as_series(a, spec)


# ----------------------------------------------------------------------------------------------
# splits and windows


def split_rows(n_rows: int, split: Sequence[float] = SPLIT) -> tuple[int, int]:
    """Row boundaries of the train / validation / test split in time.

    Parameters
    ----------
    n_rows : int
        Length ``T`` of the series.
    split : (float, float)
        Fractions ``(a, b)`` with ``0 < a < b < 1``.

    Returns
    -------
    (int, int)
        ``(train_end, val_end) = (floor(a T), floor(b T))``: rows ``[0, train_end)`` train,
        ``[train_end, val_end)`` validate, ``[val_end, T)`` test.
    """
    try:
        a, b = (float(f) for f in split)
    except (TypeError, ValueError):
        raise SbdiffError(f"split must be two fractions (a, b) with 0 < a < b < 1, got {split!r}") from None
    if not 0.0 < a < b < 1.0:
        raise SbdiffError(f"split must be two fractions (a, b) with 0 < a < b < 1, got ({a:g}, {b:g})")
    n_rows = int(n_rows)
    if n_rows < 0:
        raise SbdiffError(f"number of rows must be non-negative, got {n_rows}")
    # round before flooring so that e.g. 0.7 * 100 is 70 whatever the float error
    return int(math.floor(round(a * n_rows, 9))), int(math.floor(round(b * n_rows, 9)))


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def check_window(window: int, horizon: int, n_rows: int | None = None) -> None:
    """Check a window length ``L`` (``--window``) and forecast horizon ``H`` (``--horizon``).

    Raises
    ------
    SbdiffError
        Unless both are integers with ``1 <= H < L``, and ``L <= n_rows`` when ``n_rows`` is given.
    """
    if not _is_int(window):
        raise SbdiffError(f"window L (--window) must be an integer, got {window!r}")
    if not _is_int(horizon):
        raise SbdiffError(f"horizon H (--horizon) must be an integer, got {horizon!r}")
    if horizon < 1:
        raise SbdiffError(f"horizon H = {horizon} must be at least 1 (--horizon)")
    if horizon >= window:
        raise SbdiffError(f"horizon H = {horizon} must be less than the window L = {window} "
                          f"(--horizon < --window: the history needs at least one row)")
    if n_rows is not None and window > n_rows:
        raise SbdiffError(f"window L = {window} (--window) is longer than the series ({n_rows} rows)")


def _check_series(series: np.ndarray) -> np.ndarray:
    series = np.asarray(series, dtype=np.float64)
    if series.ndim != 2:
        raise SbdiffError(f"expected a series of shape (T, d), got shape {series.shape}")
    return series


def sliding_windows(series: np.ndarray, window: int) -> np.ndarray:
    """All windows of ``window`` consecutive rows, stride 1.

    Parameters
    ----------
    series : np.ndarray, shape (T, d)
    window : int
        Window length ``L``, ``1 <= L <= T``.

    Returns
    -------
    np.ndarray, shape (T - L + 1, L, d)
        Window ``i`` is ``series[i : i + L]`` (a copy).
    """
    series = _check_series(series)
    if not _is_int(window) or window < 1:
        raise SbdiffError(f"window L (--window) must be a positive integer, got {window!r}")
    if window > series.shape[0]:
        raise SbdiffError(f"window L = {window} (--window) is longer than the series ({series.shape[0]} rows)")
    view = np.lib.stride_tricks.sliding_window_view(series, window, axis=0)  # (T-L+1, d, L)
    return np.ascontiguousarray(view.transpose(0, 2, 1))


def _split_window(windows: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    return np.ascontiguousarray(windows[:, :-horizon]), np.ascontiguousarray(windows[:, -horizon:])


def training_windows(series: np.ndarray, window: int, horizon: int,
                     split: Sequence[float] | None = SPLIT) -> tuple[np.ndarray, np.ndarray]:
    """Windows lying entirely in the training rows ``[0, train_end)`` (see :func:`split_rows`).

    Parameters
    ----------
    series : np.ndarray, shape (T, d)
    window, horizon : int
        Window length ``L`` and horizon ``H``, ``1 <= H < L``.
    split : (float, float) or None
        ``None``: every row trains (a data set with its own test part, :mod:`sbdiff.gluonts_data`).

    Returns
    -------
    history : np.ndarray, shape (N, L - H, d)
    future : np.ndarray, shape (N, H, d)
        ``N = train_end - L + 1`` windows, stride 1, in time order.
    """
    series = _check_series(series)
    check_window(window, horizon, series.shape[0])
    train_end = series.shape[0] if split is None else split_rows(series.shape[0], split)[0]
    if train_end < window:
        raise SbdiffError(f"no training window: the training segment has {train_end} rows, "
                          f"fewer than the window L = {window} (--window)")
    return _split_window(sliding_windows(series[:train_end], window), horizon)


def _segment(n_rows: int, part: str, split: Sequence[float]) -> tuple[int, int]:
    train_end, val_end = split_rows(n_rows, split)
    if part == "validation":
        return train_end, val_end
    if part == "test":
        return val_end, n_rows
    raise SbdiffError(f"unknown evaluation part {part!r}: expected 'validation' or 'test'")


def evaluation_windows(series: np.ndarray, window: int, horizon: int, part: str = "test",
                       split: Sequence[float] = SPLIT) -> tuple[np.ndarray, np.ndarray]:
    """Windows whose future (last ``H`` rows) lies entirely in the ``part`` segment.

    The history may reach back into earlier segments (a rolling forecast over the segment).

    Parameters
    ----------
    series : np.ndarray, shape (T, d)
    window, horizon : int
        Window length ``L`` and horizon ``H``, ``1 <= H < L``.
    part : {"validation", "test"}
    split : (float, float)

    Returns
    -------
    history : np.ndarray, shape (N, L - H, d)
    future : np.ndarray, shape (N, H, d)
        Stride 1, in time order: the futures start at rows ``start, start + 1, …, end - H`` of the
        segment ``[start, end)`` (first ones skipped while the history would start before row 0).

    Raises
    ------
    SbdiffError
        If no window fits (segment shorter than ``H``), or for an unknown ``part``.
    """
    series = _check_series(series)
    check_window(window, horizon, series.shape[0])
    start, end = _segment(series.shape[0], part, split)
    first = max(0, start - (window - horizon))  # first window start whose future begins at or after `start`
    last = end - window  # last window start whose future ends at or before `end`
    if last < first:
        raise SbdiffError(f"no {part} window: the {part} segment has {end - start} rows (rows {start}..{end - 1}), "
                          f"the horizon H = {horizon} (--horizon) needs at least {horizon}")
    return _split_window(sliding_windows(series[first:last + window], window), horizon)


def flatten_windows(a: np.ndarray) -> np.ndarray:
    """Flatten windows ``(N, K, d)`` to vectors ``(N, K·d)``, row-major (time-major: the ``d``
    variables of step 0, then those of step 1, …)."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 3:
        raise SbdiffError(f"expected windows of shape (N, K, d), got shape {a.shape}")
    return a.reshape(a.shape[0], -1)


def unflatten_windows(a: np.ndarray, d: int) -> np.ndarray:
    """Inverse of :func:`flatten_windows`: ``(..., K·d)`` to ``(..., K, d)``."""
    a = np.asarray(a, dtype=np.float64)
    if not _is_int(d) or d < 1 or a.ndim < 1 or a.shape[-1] % d:
        raise SbdiffError(f"cannot split a last axis of length {a.shape[-1] if a.ndim else 0} into {d!r} variables")
    return a.reshape(*a.shape[:-1], a.shape[-1] // d, d)


# ----------------------------------------------------------------------------------------------
# scaling of windows

#: Scalings of a series run's windows (``cond.scaling``): ``mean`` divides each window, history and
#: future, by the mean absolute value of each variable over the window's own history (GluonTS's
#: ``MeanScaler``, as in DeepAR with ``scaling=True`` and TimeGrad), so that a series whose level leaves
#: the training range still forecasts, and the forecast is multiplied back; ``standard`` keeps the
#: data's units (the model's own per-coordinate standardisation over the training windows is then the
#: only, global, scaling).
SCALINGS = ("mean", "standard")


def window_scale(history: np.ndarray, scaling: str) -> np.ndarray:
    """The scale of each window and variable under ``scaling`` (:data:`SCALINGS`).

    Parameters
    ----------
    history : np.ndarray, shape (N, L - H, d)
    scaling : {"mean", "standard"}

    Returns
    -------
    np.ndarray, shape (N, 1, d)
        ``mean``: ``mean_t |history[n, t, j]|`` (1 where a history is all zero); ``standard``: ones.
        Windows in model units are ``window / scale``; forecasts in data units ``sample · scale``.
    """
    history = _check_history(history)
    if scaling == "standard":
        return np.ones((history.shape[0], 1, history.shape[2]))
    if scaling != "mean":
        raise SbdiffError(f"unknown series scaling {scaling!r}: expected one of {', '.join(SCALINGS)} (cond.scaling)")
    scale = np.abs(history).mean(axis=1, keepdims=True)
    return np.where(scale > 1e-10, scale, 1.0)


# ----------------------------------------------------------------------------------------------
# baselines


def _check_history(history: np.ndarray) -> np.ndarray:
    history = np.asarray(history, dtype=np.float64)
    if history.ndim != 3 or history.shape[1] < 1:
        raise SbdiffError(f"expected histories of shape (N, L - H, d), got shape {history.shape}")
    return history


def seasonal_naive(history: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """Seasonal-naive point forecast: each step repeats the last observed value one season back.

    ``ŷ_{T+h} = y_{T+h-s·ceil(h/s)}`` for ``h = 1..H``, with ``T`` the last history row and ``s``
    the season (``s = 1``: the last value, the naive forecast).

    Parameters
    ----------
    history : np.ndarray, shape (N, L - H, d)
    horizon : int
        ``H >= 1``.
    season : int
        ``s >= 1``, at most the history length ``L - H``.

    Returns
    -------
    np.ndarray, shape (N, H, d)
    """
    history = _check_history(history)
    if not _is_int(horizon) or horizon < 1:
        raise SbdiffError(f"horizon H (--horizon) must be a positive integer, got {horizon!r}")
    if not _is_int(season) or season < 1:
        raise SbdiffError(f"season must be a positive integer, got {season!r}")
    t = history.shape[1]
    if t < season:
        raise SbdiffError(f"seasonal-naive forecast needs a history of at least one season ({season} rows), "
                          f"got {t} rows (L - H)")
    h = np.arange(1, horizon + 1)
    idx = t - 1 + h - season * ((h + season - 1) // season)  # 0-based row of y_{T+h-s·ceil(h/s)}
    return np.ascontiguousarray(history[:, idx])


def _fit_linear_ar(train: np.ndarray, maxlags: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Fit a Gaussian AR / VAR with a constant and AIC lag choice in ``0..maxlags``.

    Returns ``(intercept (d,), coefs (p, d, d), sigma (d, d), p)`` such that
    ``y_t = intercept + Σ_i coefs[i-1] @ y_{t-i} + ε_t``, ``ε_t ~ N(0, sigma)``.
    """
    d = train.shape[1]
    try:
        if d == 1:
            from statsmodels.tsa.ar_model import ar_select_order

            sel = ar_select_order(train[:, 0], maxlags, ic="aic", trend="c")
            res = sel.model.fit()
            lags = [int(k) for k in (sel.ar_lags or [])]
            p = max(lags, default=0)
            coefs = np.zeros((p, 1, 1))
            params = np.asarray(res.params, dtype=np.float64)
            for k, c in zip(lags, params[1:]):
                coefs[k - 1, 0, 0] = c
            return params[:1].copy(), coefs, np.array([[float(res.sigma2)]]), p
        from statsmodels.tsa.api import VAR

        res = VAR(train).fit(maxlags=maxlags, ic="aic", trend="c")
        p = int(res.k_ar)
        return (np.asarray(res.intercept, dtype=np.float64).reshape(d), np.asarray(res.coefs, dtype=np.float64),
                np.asarray(res.sigma_u, dtype=np.float64), p)
    except np.linalg.LinAlgError as err:
        raise SbdiffError(f"VAR baseline: the fit failed ({err}); is a variable constant or collinear?") from None


def _cov_sqrt(sigma: np.ndarray) -> np.ndarray:
    """A factor ``C`` with ``C Cᵀ = sigma`` (Cholesky, or eigen-decomposition if only semi-definite)."""
    sigma = 0.5 * (sigma + sigma.T)
    try:
        return np.linalg.cholesky(sigma)
    except np.linalg.LinAlgError:
        w, v = np.linalg.eigh(sigma)
        return v * np.sqrt(np.clip(w, 0.0, None))


def var_forecast(train_series: np.ndarray, history: np.ndarray, horizon: int, n_samples: int, *,
                 maxlags: int = 8, seed: int = 0) -> tuple[np.ndarray, int]:
    """Probabilistic VAR baseline: sample paths of a Gaussian vector autoregression.

    A VAR with a constant (statsmodels ``VAR``, OLS) is fitted on ``train_series`` with the lag
    order ``p`` chosen by AIC in ``0..min(maxlags, L - H, p_max)``, where ``p_max`` keeps more
    observations than parameters per equation. For one variable (``d == 1``) statsmodels' ``VAR``
    does not apply, and an ``AutoReg`` with a constant and AIC lag choice (``ar_select_order``,
    lags ``1..p``) is fitted instead, sampled the same way. For each history window the recursion
    ``y_t = c + Σ_{i=1}^p A_i y_{t-i} + ε_t``, ``ε_t ~ N(0, Σ)`` with the estimated residual
    covariance ``Σ`` is simulated ``H`` steps ahead from the last ``p`` history rows. Parameter
    uncertainty is ignored, as in statsmodels' own forecast intervals.

    Parameters
    ----------
    train_series : np.ndarray, shape (T, d)
        The rows to fit on (normally the training segment).
    history : np.ndarray, shape (N, L - H, d)
        Conditioning windows.
    horizon : int
        ``H >= 1``.
    n_samples : int
        ``S >= 1`` sample paths per window.
    maxlags : int
        Largest lag order considered (``>= 0``).
    seed : int
        Seed of the innovations (``numpy.random.default_rng``).

    Returns
    -------
    samples : np.ndarray, shape (N, S, H, d)
    p : int
        The chosen lag order.
    """
    train = _check_series(train_series)
    history = _check_history(history)
    n, t_hist, d = history.shape
    if train.shape[1] != d:
        raise SbdiffError(f"VAR baseline: the training series has {train.shape[1]} variables, the histories {d}")
    for name, value, low in (("horizon H (--horizon)", horizon, 1), ("n_samples", n_samples, 1),
                             ("maxlags", maxlags, 0)):
        if not _is_int(value) or value < low:
            raise SbdiffError(f"{name} must be an integer >= {low}, got {value!r}")
    t = train.shape[0]
    p_max = min(maxlags, t_hist, (t - 2) // (d + 1))  # effective rows t - p > d p + 1 parameters
    if p_max < 0 or t < 3:
        raise SbdiffError(f"VAR baseline: the training series has {t} rows, too few to fit")
    intercept, coefs, sigma, p = _fit_linear_ar(train, p_max)
    chol = _cov_sqrt(sigma)

    rng = np.random.default_rng(seed)
    eps = rng.standard_normal((n, n_samples, horizon, d)) @ chol.T
    # state: the last p rows, most recent last, per (window, sample)
    state = np.broadcast_to(history[:, None, t_hist - p:], (n, n_samples, p, d)).copy()
    out = np.empty((n, n_samples, horizon, d))
    for h in range(horizon):
        y = intercept + eps[:, :, h]
        for i in range(p):  # lag i + 1 is row p - 1 - i of the state
            y = y + state[:, :, p - 1 - i] @ coefs[i].T
        out[:, :, h] = y
        if p:
            state = np.concatenate([state[:, :, 1:], y[:, :, None]], axis=2)
    return out, p


# ----------------------------------------------------------------------------------------------
# scores


def _check_forecast(samples: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    samples = np.asarray(samples, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if truth.ndim < 1 or samples.ndim != truth.ndim + 1:
        raise SbdiffError(f"expected samples (N, S, H, d) and truth (N, H, d), got shapes {samples.shape} "
                          f"and {truth.shape}")
    if samples.shape[0] != truth.shape[0] or samples.shape[2:] != truth.shape[1:]:
        raise SbdiffError(f"samples of shape {samples.shape} do not match truth of shape {truth.shape} "
                          f"(expected (N, S, H, d) and (N, H, d))")
    if samples.shape[1] < 1 or truth.size == 0:
        raise SbdiffError(f"empty forecast: samples of shape {samples.shape}, truth of shape {truth.shape}")
    return samples, truth


def _crps_entries(samples: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """CRPS of each entry of ``truth`` under the empirical law of the samples (axis 1)."""
    import scoringrules as sr

    return np.asarray(sr.crps_ensemble(truth, samples, m_axis=1), dtype=np.float64)


def crps(samples: np.ndarray, truth: np.ndarray) -> float:
    """Mean CRPS over all entries (Gneiting & Raftery 2007).

    Each entry is scored by the CRPS of the empirical distribution of its samples,
    ``E|X - y| - ½ E|X - X'|`` (scoringrules' ``crps_ensemble``). A point forecast may be passed
    with ``S = 1``; its CRPS is the absolute error.

    Parameters
    ----------
    samples : np.ndarray, shape (N, S, H, d)
    truth : np.ndarray, shape (N, H, d)

    Returns
    -------
    float
        Lower is better; NaN if a sample is NaN.
    """
    samples, truth = _check_forecast(samples, truth)
    return float(_crps_entries(samples, truth).mean())


def crps_sum(samples: np.ndarray, truth: np.ndarray) -> float:
    """CRPS of the sum over variables (Salinas et al. 2019; Rasul et al. 2021), unnormalized.

    Samples and truth are summed over the last axis ``d`` (giving ``(N, S, H)`` and ``(N, H)``)
    and the CRPS is averaged over windows and steps. Equal to :func:`crps` when ``d = 1``.

    Parameters
    ----------
    samples : np.ndarray, shape (N, S, H, d)
    truth : np.ndarray, shape (N, H, d)

    Returns
    -------
    float
    """
    samples, truth = _check_forecast(samples, truth)
    if truth.ndim < 2:
        raise SbdiffError(f"crps_sum needs a variable axis: got truth of shape {truth.shape}")
    return float(_crps_entries(samples.sum(axis=-1), truth.sum(axis=-1)).mean())


def normalized_crps(samples: np.ndarray, truth: np.ndarray) -> float:
    """Normalized CRPS, ``Σ CRPS / Σ |y|`` over all entries (the CSDI / TimeGrad convention).

    Parameters
    ----------
    samples : np.ndarray, shape (N, S, H, d)
    truth : np.ndarray, shape (N, H, d)

    Returns
    -------
    float
        NaN when every observation is zero.
    """
    samples, truth = _check_forecast(samples, truth)
    denom = float(np.abs(truth).sum())
    if denom == 0.0:
        return float("nan")
    return float(_crps_entries(samples, truth).sum() / denom)


def coverage(samples: np.ndarray, truth: np.ndarray, level: float) -> float:
    """Empirical coverage of the central ``level`` interval of the samples.

    The interval of each entry runs between the sample quantiles ``(1 - level)/2`` and
    ``(1 + level)/2`` (linear interpolation) over the sample axis, ends included.

    Parameters
    ----------
    samples : np.ndarray, shape (N, S, H, d)
    truth : np.ndarray, shape (N, H, d)
    level : float
        In ``(0, 1)``, e.g. 0.9.

    Returns
    -------
    float
        Fraction of truth entries inside their interval (ideally ``level``).
    """
    samples, truth = _check_forecast(samples, truth)
    if not 0.0 < float(level) < 1.0:
        raise SbdiffError(f"coverage level must lie in (0, 1), got {level!r}")
    lo, hi = np.quantile(samples, [(1.0 - level) / 2.0, (1.0 + level) / 2.0], axis=1)
    return float(((truth >= lo) & (truth <= hi)).mean())


def forecast_scores(samples: np.ndarray, truth: np.ndarray) -> dict:
    """All forecast scores at once, for ``eval`` and benchmarks.

    Parameters
    ----------
    samples : np.ndarray, shape (N, S, H, d)
    truth : np.ndarray, shape (N, H, d)

    Returns
    -------
    dict
        ``crps``, ``crps_sum``, ``ncrps`` (scoringrules' ensemble CRPS: per entry, of the sum over
        the variables, normalised), ``gluonts_crps``, ``gluonts_crps_sum`` (the published tables'
        CRPS and CRPS-sum, GluonTS's weighted quantile loss), ``coverage_50``, ``coverage_90``
        (floats) and ``n_windows`` (int, ``N``).
    """
    samples, truth = _check_forecast(samples, truth)
    return {
        "crps": crps(samples, truth),
        "crps_sum": crps_sum(samples, truth),
        "ncrps": normalized_crps(samples, truth),
        "gluonts_crps": gluonts_crps(samples, truth),
        "gluonts_crps_sum": gluonts_crps_sum(samples, truth),
        "coverage_50": coverage(samples, truth, 0.5),
        "coverage_90": coverage(samples, truth, 0.9),
        "n_windows": int(truth.shape[0]),
    }


#: The quantile levels of the published CRPS (TimeGrad's and ScoreGrad's evaluation scripts:
#: ``MultivariateEvaluator(quantiles=(np.arange(20) / 20.0)[1:])``): 0.05, 0.10, …, 0.95.
GLUONTS_QUANTILES: tuple[float, ...] = tuple(float(q) for q in np.arange(1, 20) / 20.0)


def weighted_quantile_loss(samples: np.ndarray, truth: np.ndarray,
                           quantiles: Sequence[float] = GLUONTS_QUANTILES) -> float:
    """GluonTS's ``mean_wQuantileLoss``: the CRPS as the published tables compute it.

    For each level ``q`` the forecast quantile of an entry is GluonTS's sample quantile (the sorted
    samples' entry ``round((S − 1) q)``, NumPy's round-half-to-even), its quantile loss
    ``QL_q = 2 Σ |(ŷ_q − y)(1{y ≤ ŷ_q} − q)|`` is summed over every window, step and variable and
    divided by ``Σ |y|``; the result is the mean over the levels. This approximates the CRPS
    (``CRPS = ∫ QL_q dq``) normalised by the targets' absolute sum (Gneiting & Raftery 2007, eq. 21;
    Salinas et al. 2019; Rasul et al. 2021).

    Parameters
    ----------
    samples : np.ndarray, shape (N, S, H, d)
    truth : np.ndarray, shape (N, H, d)
    quantiles : sequence of float in (0, 1)

    Returns
    -------
    float
        NaN when every target is zero.
    """
    samples, truth = _check_forecast(samples, truth)
    denom = float(np.abs(truth).sum())
    if denom == 0.0:
        return float("nan")
    ordered = np.sort(samples, axis=1)
    n = ordered.shape[1]
    losses = []
    for q in quantiles:
        f = ordered[:, int(np.round((n - 1) * q))]
        losses.append(2.0 * float(np.abs((f - truth) * ((truth <= f) - q)).sum()) / denom)
    return float(np.mean(losses))


def gluonts_crps(samples: np.ndarray, truth: np.ndarray) -> float:
    """The published CRPS: :func:`weighted_quantile_loss` over every entry (``MultivariateEvaluator``'s
    ``mean_wQuantileLoss``). ``samples (N, S, H, d)``, ``truth (N, H, d)``."""
    return weighted_quantile_loss(samples, truth)


def gluonts_crps_sum(samples: np.ndarray, truth: np.ndarray) -> float:
    """The published CRPS-sum: :func:`weighted_quantile_loss` of the sum over the variables
    (``MultivariateEvaluator(target_agg_funcs={"sum": np.sum})``'s ``m_sum_mean_wQuantileLoss``).
    ``samples (N, S, H, d)``, ``truth (N, H, d)``."""
    samples, truth = _check_forecast(samples, truth)
    if truth.ndim < 2:
        raise SbdiffError(f"gluonts_crps_sum needs a variable axis: got truth of shape {truth.shape}")
    return weighted_quantile_loss(samples.sum(axis=-1, keepdims=True), truth.sum(axis=-1, keepdims=True))
