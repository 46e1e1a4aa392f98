"""GluonTS-format data sets: the reader, and the test windows of the published protocol.

The multivariate forecasting benchmarks of TimeGrad (Rasul et al. 2021), ScoreGrad (Yan et al. 2021),
GP-Copula (Salinas et al. 2019) and VSDM's own code come in GluonTS's file format: a folder (or a
``.tar.gz`` of one) holding

* ``metadata/metadata.json`` (frequency, optionally ``prediction_length``),
* ``train/*.json`` (JSON lines ``{"start": ..., "target": [...]}``, one line per series),
* ``test/*.json`` (the same series again, up to the end of each of several rolling test windows: one
  line per series and window, windows in order, each ``H`` steps longer than the one before).

A multivariate data set here is the ``d`` series side by side: the training lines must share their
length (a ragged set is refused), and the test file must hold ``n · d`` lines, ``n`` windows of
``d`` series of one length each. :func:`load_gluonts` reads either form; :func:`rolling_test_windows` cuts
the ``n`` scored windows (history, future) out of the test file, checking the horizon against the
spacing of the windows. The data sets themselves are not shipped: users get them with GluonTS
(``gluonts.dataset.repository.get_dataset``) and pass the folder or archive by path.
"""

from __future__ import annotations

import gzip
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from ._utils import SbdiffError

__all__ = ["GluonTSDataset", "is_gluonts", "load_gluonts", "rolling_test_windows"]


@dataclass
class GluonTSDataset:
    """A multivariate GluonTS-format data set.

    Attributes
    ----------
    name : str
        The folder's name.
    train : np.ndarray, shape (T, d)
        The training series side by side (rows are time steps), float64.
    test : list of np.ndarray, each (T_k, d)
        The test series up to the end of each rolling window, ``T_1 < T_2 < …``.
    metadata : dict
        ``metadata/metadata.json`` (empty where absent).
    """

    name: str
    train: np.ndarray
    test: list[np.ndarray] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)

    @property
    def window_spacing(self) -> int | None:
        """The steps between consecutive test windows' ends (and from the training end to the first),
        when all are equal; ``None`` otherwise or without a test set."""
        ends = [len(self.train)] + [len(a) for a in self.test]
        steps = set(np.diff(ends).tolist())
        return steps.pop() if len(steps) == 1 and len(self.test) else None


def _is_json(name: PurePosixPath) -> bool:
    return name.name.endswith((".json", ".json.gz")) and not name.name.startswith(".")


def _files(root: Path) -> dict[str, list[tuple[str, bytes]]]:
    """``{"train": [...], "test": [...], "metadata": [...]}``: the ``(name, bytes)`` of the JSON files
    under each part of a folder or ``.tar.gz`` (the part is the file's parent folder)."""
    parts: dict[str, list[tuple[str, bytes]]] = {"train": [], "test": [], "metadata": []}
    if root.is_dir():
        for p in sorted(root.rglob("*")):
            name = PurePosixPath(p.relative_to(root).as_posix())
            if p.is_file() and _is_json(name) and name.parent.name in parts:
                parts[name.parent.name].append((str(p), p.read_bytes()))
        return parts
    try:
        with tarfile.open(root, "r:*") as tar:
            for m in sorted(tar.getmembers(), key=lambda m: m.name):
                name = PurePosixPath(m.name)
                if m.isfile() and _is_json(name) and name.parent.name in parts:
                    parts[name.parent.name].append((f"{root}:{m.name}", tar.extractfile(m).read()))
    except (tarfile.TarError, OSError, EOFError) as err:
        raise SbdiffError(f"{root}: not a readable .tar.gz archive ({err})") from None
    return parts


def _json_lines(name: str, raw: bytes) -> list[dict]:
    if name.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except OSError as err:
            raise SbdiffError(f"{name}: not a gzip file ({err})") from None
    rows = []
    for lineno, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise SbdiffError(f"{name}: line {lineno} is not JSON ({err.msg})") from None
        if not isinstance(row, dict) or "target" not in row:
            raise SbdiffError(f"{name}: line {lineno} has no 'target' (expected GluonTS JSON lines with "
                              f"'start' and 'target')")
        rows.append(row)
    return rows


def _target(row: dict, where: str) -> np.ndarray:
    target = row["target"]
    if isinstance(target, list) and target and isinstance(target[0], list):
        raise SbdiffError(f"{where}: a multivariate 'target' (a list of lists) is not supported; expected "
                          f"one series per line")
    try:
        a = np.asarray([np.nan if v is None or v == "NaN" else v for v in target], dtype=np.float64)
    except (TypeError, ValueError):
        raise SbdiffError(f"{where}: 'target' holds non-numeric values") from None
    if a.ndim != 1 or len(a) < 2:
        raise SbdiffError(f"{where}: 'target' must be a list of at least 2 numbers")
    if not np.isfinite(a).all():
        raise SbdiffError(f"{where}: 'target' holds {int((~np.isfinite(a)).sum())} NaN or infinite value(s)")
    return a


def _side_by_side(rows: list[dict], where: str) -> np.ndarray:
    series = [_target(r, f"{where}, series {i}") for i, r in enumerate(rows)]
    lengths = sorted({len(s) for s in series})
    if len(lengths) > 1:
        raise SbdiffError(f"{where}: ragged series (lengths {lengths[0]} … {lengths[-1]}): a multivariate data set "
                          f"needs its series side by side, of one length")
    return np.stack(series, axis=1)


def is_gluonts(spec: str | Path) -> bool:
    """True when ``spec`` names a folder with a ``train`` subfolder, or a ``.tar.gz`` / ``.tgz`` file:
    the forms :func:`load_gluonts` reads."""
    p = Path(spec).expanduser()
    if p.is_dir():
        return (p / "train").is_dir() or any(q.is_dir() and (q / "train").is_dir() for q in p.iterdir())
    return p.name.endswith((".tar.gz", ".tgz"))


def load_gluonts(spec: str | Path) -> GluonTSDataset:
    """Read a GluonTS-format data set from a folder or a ``.tar.gz`` (module docstring).

    Parameters
    ----------
    spec : str or Path
        The folder (holding ``train/``, ``test/`` and ``metadata/``, or one folder that does) or the
        archive.

    Returns
    -------
    GluonTSDataset
        ``train`` ``(T, d)``; ``test`` the windows' series ``(T_k, d)`` in order of length (empty if
        the set has no test part).

    Raises
    ------
    SbdiffError
        A missing path, no training file, lines that are not GluonTS JSON, ragged series, NaN or
        infinite values, or a test file whose lines are not ``n`` windows of the ``d`` training series.
    """
    root = Path(spec).expanduser()
    if not root.exists():
        raise SbdiffError(f"GluonTS data set not found: {spec}")
    parts = _files(root)
    if not parts["train"]:
        raise SbdiffError(f"{spec}: no train/*.json file: not a GluonTS-format data set (a folder or .tar.gz "
                          f"with metadata/, train/ and test/)")
    train_rows = [r for name, raw in parts["train"] for r in _json_lines(name, raw)]
    train = _side_by_side(train_rows, f"{spec}: train")
    d = train.shape[1]
    test: list[np.ndarray] = []
    test_rows = [r for name, raw in parts["test"] for r in _json_lines(name, raw)]
    if test_rows:
        if len(test_rows) % d:
            raise SbdiffError(f"{spec}: the test file has {len(test_rows)} lines, not a whole number of windows of "
                              f"the {d} training series")
        for k in range(len(test_rows) // d):
            test.append(_side_by_side(test_rows[k * d:(k + 1) * d], f"{spec}: test window {k + 1}"))
        test.sort(key=len)
    metadata: dict = {}
    if parts["metadata"]:
        try:
            metadata = json.loads(parts["metadata"][0][1].decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            metadata = {}
    name = root.name.removesuffix(".tar.gz").removesuffix(".tgz")
    if root.is_dir() and not (root / "train").is_dir():
        name = next((q.name for q in root.iterdir() if q.is_dir() and (q / "train").is_dir()), name)
    return GluonTSDataset(name, np.ascontiguousarray(train), test, metadata if isinstance(metadata, dict) else {})


def rolling_test_windows(dataset: GluonTSDataset, window: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """The scored windows of the published protocol: for each test series ``(T_k, d)``, its last ``H``
    rows are the future and the ``L − H`` rows before them the history.

    Parameters
    ----------
    dataset : GluonTSDataset
    window, horizon : int
        Window length ``L`` and horizon ``H`` (``1 <= H < L``); ``H`` must equal the spacing of the
        test windows (each test series is ``H`` rows longer than the one before, and the first ``H``
        rows longer than the training series), so that the futures are the disjoint rolling windows.

    Returns
    -------
    history : np.ndarray, shape (n, L - H, d)
    future : np.ndarray, shape (n, H, d)
    """
    if not dataset.test:
        raise SbdiffError(f"{dataset.name}: the data set has no test part (test/*.json) to score")
    if not 1 <= int(horizon) < int(window) <= min(len(a) for a in dataset.test):
        raise SbdiffError(f"{dataset.name}: need 1 <= H < L <= the shortest test series ({min(map(len, dataset.test))} "
                          f"rows), got L = {window} (--window), H = {horizon} (--horizon)")
    spacing = dataset.window_spacing
    stated = dataset.metadata.get("prediction_length")
    expected = spacing if spacing is not None else stated
    if expected is not None and int(expected) != horizon:
        raise SbdiffError(f"{dataset.name}: the horizon H = {horizon} (--horizon) does not match the test windows, "
                          f"which are {int(expected)} steps long: train with --horizon {int(expected)}")
    history = np.stack([a[len(a) - window:len(a) - horizon] for a in dataset.test])
    future = np.stack([a[len(a) - horizon:] for a in dataset.test])
    return history, future
