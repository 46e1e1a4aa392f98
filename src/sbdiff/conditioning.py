"""Conditional training sets (DESIGN §4.6): the points ``x`` and their contexts ``c``.

A conditional run trains on pairs ``(x, c)``:

* **labels** (``cond.labels``): ``x`` the rows of ``data.data``, ``c`` an integer class label per row,
  from a ``.npy`` file or the built-in set's own (``digits``: :func:`sklearn.datasets.load_digits`'s
  targets); the classes must be ``0 … K−1``, each with rows;
* **series windows** (``cond.window = L``, ``cond.horizon = H``; the forecasting case of CSDI's masked
  conditioning, Tashiro et al. 2021): ``data.data`` is a series ``(T, d)`` (rows are time steps), the
  training windows are the sliding windows of ``L`` rows inside its training segment
  (:func:`sbdiff.series.training_windows`), ``x`` the last ``H`` rows of a window flattened to
  ``H·d`` and ``c`` the first ``L − H`` rows flattened to ``(L − H)·d``; with ``cond.scaling = "mean"``
  (the default) both divided, per variable, by the mean absolute value of the window's own history
  (:func:`sbdiff.series.window_scale`, GluonTS's mean scaling). A GluonTS-format data set
  (:mod:`sbdiff.gluonts_data`) trains on every row of its training part and is scored on its own
  test windows (:func:`series_test_windows`); another series on the split of :data:`sbdiff.series.SPLIT`.

:func:`load_training_set` reads either and :func:`resolve_context` records the context's kind and
size in the config (``cond.kind``, ``cond.size``), from which the model is rebuilt.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._utils import SbdiffError
from .config import Config, set_resolved
from .data import load_data

__all__ = ["LABELED_SETS", "load_labels", "check_labels", "load_training_set", "resolve_context", "series_of",
           "scaled_windows", "unscaled_forecast", "series_test_windows"]


def _digit_labels() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().target.astype(np.int64)


#: Built-in data sets that carry their own labels (``cond.labels = "auto"``).
LABELED_SETS = {"digits": _digit_labels}


def check_labels(labels, n_rows: int, source: str = "labels") -> np.ndarray:
    """Integer class labels ``(n_rows,)`` as int64; :class:`~sbdiff.SbdiffError` for another length,
    non-integers, negative labels or classes ``0 … K−1`` with one missing."""
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise SbdiffError(f"{source}: expected one integer label per row, shape (N,), got {y.shape}")
    if len(y) != n_rows:
        raise SbdiffError(f"{source}: {len(y)} labels for {n_rows} rows of data")
    if y.dtype.kind == "f":
        if not np.isfinite(y).all() or not (y == np.round(y)).all():
            raise SbdiffError(f"{source}: labels must be integers")
    elif y.dtype.kind not in "iu":
        raise SbdiffError(f"{source}: labels must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if (y < 0).any():
        raise SbdiffError(f"{source}: labels must be >= 0, got {int(y.min())}")
    missing = np.setdiff1d(np.arange(int(y.max()) + 1), y)
    if len(missing):
        raise SbdiffError(f"{source}: classes must be 0 … K−1 with rows for each; class {int(missing[0])} has none")
    return y


def load_labels(spec: str, data_spec: str, n_rows: int) -> np.ndarray:
    """The labels named by ``cond.labels``: ``"auto"`` (the built-in set's own) or a ``.npy`` path;
    returns ``(n_rows,)`` int64 (:func:`check_labels`)."""
    if spec == "auto":
        if data_spec not in LABELED_SETS:
            raise SbdiffError(f"--cond without a file: the data '{data_spec}' carries no labels of its own "
                              f"(built-in labelled sets: {', '.join(LABELED_SETS)}); give --cond LABELS.npy")
        return check_labels(LABELED_SETS[data_spec](), n_rows, f"{data_spec} labels")
    path = Path(spec)
    if not path.is_file():
        raise SbdiffError(f"labels file not found: {spec}")
    if path.suffix.lower() != ".npy":
        raise SbdiffError(f"labels file {spec}: expected a .npy array of integer labels")
    try:
        y = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise SbdiffError(f"cannot read labels file {spec}: {err}") from None
    return check_labels(y, n_rows, str(path))


def series_of(config: Config) -> np.ndarray:
    """The series ``(T, d)`` of a series run (``data.data``, :func:`sbdiff.series.load_series`)."""
    from .series import load_series

    return load_series(config.data.data)


def scaled_windows(history: np.ndarray, future: np.ndarray | None, scaling: str, anchor: str = "none"):
    """Windows in the units the model is trained in: ``(history / s, future / s − a, s)`` with ``s``
    ``(N, 1, d)`` from :func:`sbdiff.series.window_scale` and the anchor ``a`` (``anchor = "last"``:
    the scaled history's last row, so that the model generates the change since it; ``"none"``: 0);
    ``future`` may be ``None``. A forecast ``y`` in model units is ``(y + a) · s`` in data units
    (:func:`unscaled_forecast`)."""
    from .series import window_scale

    scale = window_scale(history, scaling)
    history = history / scale
    if future is None:
        return history, None, scale
    return history, future / scale - _anchor(history, anchor), scale


def _anchor(history: np.ndarray, anchor: str) -> np.ndarray:
    if anchor == "last":
        return history[:, -1:, :]
    if anchor != "none":
        raise SbdiffError(f"unknown cond.anchor {anchor!r}: expected none or last")
    return np.zeros((history.shape[0], 1, history.shape[2]))


def unscaled_forecast(paths: np.ndarray, history_model: np.ndarray, scale: np.ndarray, anchor: str) -> np.ndarray:
    """Paths ``(N, S, H, d)`` in model units back to data units: ``(y + a) · s`` for the scaled histories
    ``(N, L − H, d)`` and scales ``(N, 1, d)`` of :func:`scaled_windows`."""
    return (paths + _anchor(history_model, anchor)[:, None]) * scale[:, None]


def series_test_windows(config: Config, spec: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The scored windows ``(history (N, L − H, d), future (N, H, d))``, data units, of a series run's
    data (or of ``spec``): a GluonTS-format data set's own test windows
    (:func:`sbdiff.gluonts_data.rolling_test_windows`), otherwise the test segment's rolling windows
    (:func:`sbdiff.series.evaluation_windows`)."""
    from .gluonts_data import is_gluonts, load_gluonts, rolling_test_windows
    from .series import evaluation_windows, load_series

    spec = config.data.data if spec is None else spec
    c = config.cond
    if is_gluonts(spec):
        return rolling_test_windows(load_gluonts(spec), c.window, c.horizon)
    return evaluation_windows(load_series(spec), c.window, c.horizon, part="test")


def load_training_set(config: Config) -> tuple[np.ndarray, np.ndarray | None]:
    """The training points ``(N, D)`` and their contexts (``(N,)`` labels, ``(N, k)`` values, or
    ``None`` for an unconditional run) named by ``config`` (module docstring)."""
    c = config.cond
    if c.window > 0:
        from .gluonts_data import is_gluonts, load_gluonts, rolling_test_windows
        from .series import SPLIT, check_window, flatten_windows, training_windows

        split = SPLIT
        if is_gluonts(config.data.data):  # every training row trains; the horizon must fit the test windows
            dataset = load_gluonts(config.data.data)
            if dataset.test:
                rolling_test_windows(dataset, c.window, c.horizon)
            series, split = dataset.train, None
        else:
            series = series_of(config)
        check_window(c.window, c.horizon, len(series))
        history, future = training_windows(series, c.window, c.horizon, split)
        history, future, _ = scaled_windows(history, future, c.scaling, c.anchor)
        return flatten_windows(future), flatten_windows(history)
    data = load_data(config.data.data, config.data.n_samples, config.seed)
    if c.labels == "none":
        return data, None
    return data, load_labels(c.labels, config.data.data, len(data))


def resolve_context(config: Config, data: np.ndarray, context: np.ndarray | None) -> None:
    """Record the context of the training set in ``cond.kind`` / ``cond.size`` (``label`` with ``K``
    classes, ``vector`` of width ``k``; ``none``), checking it against the data ``(N, D)``."""
    c = config.cond
    if context is None:
        if c.requested:
            raise SbdiffError("the config asks for a conditional model (cond.labels or cond.window) but no "
                              "context was given")
        set_resolved(c, "kind", "none")
        set_resolved(c, "size", 0)
        return
    context = np.asarray(context)
    if len(context) != len(data):
        raise SbdiffError(f"context: {len(context)} rows for {len(data)} rows of data")
    if context.ndim == 1:
        labels = check_labels(context, len(data))
        set_resolved(c, "kind", "label")
        set_resolved(c, "size", int(labels.max()) + 1)
    elif context.ndim == 2:
        if not np.isfinite(context).all():
            raise SbdiffError("context: contains NaN or inf")
        set_resolved(c, "kind", "vector")
        set_resolved(c, "size", int(context.shape[1]))
    else:
        raise SbdiffError(f"context: expected labels (N,) or values (N, k), got shape {context.shape}")
    config.validate()
