"""The GluonTS-format reader (sbdiff.gluonts_data): folders and archives, the test windows of the
published protocol, and one clear error for each kind of bad input."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest

from sbdiff import SbdiffError
from sbdiff.gluonts_data import is_gluonts, load_gluonts, rolling_test_windows
from sbdiff.series import load_series

from conftest import write_gluonts

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "exchange_rate_nips.tar.gz"


@pytest.fixture
def series():
    rng = np.random.default_rng(0)
    return 10.0 + rng.standard_normal((80, 3)).cumsum(0)


def test_folder_and_archive_read_the_same(tmp_path, series):
    root = write_gluonts(tmp_path / "toy", series)
    archive = tmp_path / "toy.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="toy")
    for spec in (root, archive, tmp_path):  # the folder, the archive, a folder holding the folder
        if spec == tmp_path:
            archive.unlink()
        assert is_gluonts(spec)
        ds = load_gluonts(spec)
        assert ds.name == "toy"
        np.testing.assert_array_equal(ds.train, series[:65])
        assert [len(a) for a in ds.test] == [70, 75, 80]
        assert ds.window_spacing == 5
    np.testing.assert_array_equal(load_series(str(root)), series[:65])


def test_rolling_windows_are_the_last_horizon_of_each_test_series(tmp_path, series):
    ds = load_gluonts(write_gluonts(tmp_path / "toy", series))
    history, future = rolling_test_windows(ds, 12, 5)
    assert history.shape == (3, 7, 3) and future.shape == (3, 5, 3)
    for k, end in enumerate((70, 75, 80)):
        np.testing.assert_array_equal(future[k], series[end - 5:end])
        np.testing.assert_array_equal(history[k], series[end - 12:end - 5])


@pytest.mark.parametrize("case, message", [
    ("missing", "not found"),
    ("ragged", "ragged series"),
    ("nan", "NaN"),
    ("horizon", "does not match the test windows"),
    ("not_json", "is not JSON"),
    ("no_train", "no train/"),
])
def test_bad_input_is_one_clear_error(tmp_path, series, case, message):
    root = tmp_path / "toy"
    horizon = 5
    if case == "missing":
        root = tmp_path / "absent"
    elif case == "ragged":
        write_gluonts(root, series, lines=[{"start": "2000", "target": [1.0, 2.0, 3.0]},
                                           {"start": "2000", "target": [1.0, 2.0]}])
    elif case == "nan":
        bad = series.copy()
        bad[3, 1] = np.nan
        write_gluonts(root, bad)
    elif case == "horizon":
        write_gluonts(root, series)
        horizon = 4
    elif case == "not_json":
        write_gluonts(root, series)
        (root / "train" / "train.json").write_text("{not json\n")
    elif case == "no_train":
        write_gluonts(root, series)
        (root / "train" / "train.json").unlink()
    with pytest.raises(SbdiffError, match=message):
        rolling_test_windows(load_gluonts(root), 12, horizon)


@pytest.mark.skipif(not SHARED.is_file(), reason=f"the shared copy of exchange_rate_nips is absent ({SHARED})")
def test_exchange_rate_nips_reads_as_published():
    """GluonTS's exchange_rate_nips: 8 series of 6,071 training days, 5 rolling test windows of 30."""
    ds = load_gluonts(SHARED)
    assert ds.train.shape == (6071, 8)
    assert [len(a) for a in ds.test] == [6101, 6131, 6161, 6191, 6221]
    history, future = rolling_test_windows(ds, 60, 30)
    assert history.shape == (5, 30, 8) and future.shape == (5, 30, 8)
    np.testing.assert_array_equal(ds.test[0][:6071], ds.train)  # the test series extend the training ones
