"""Data loading and validation: built-in sets, files, and clear errors for bad input."""

import numpy as np
import pytest

from sbdiff import SbdiffError
from sbdiff.data import BUILTIN, Standardizer, load_data, on_checkerboard


@pytest.mark.parametrize("name", [n for n in BUILTIN if n != "digits"])
def test_builtin_2d_sets(name):
    x = load_data(name, 1000, seed=0)
    assert x.shape == (1000, 2) and np.isfinite(x).all()
    assert np.array_equal(x, load_data(name, 1000, seed=0))  # seeded
    assert not np.array_equal(x, load_data(name, 1000, seed=1))


def test_digits():
    x = load_data("digits")
    assert x.shape == (1797, 64) and x.min() == 0 and x.max() == 16


def test_image_files_load_flat(tmp_path):
    """Rank-3/4 arrays in .npy/.npz are images: flattened row-major to (N, C·H·W); CSV stays 2-D."""
    imgs = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5).astype(np.uint8)
    np.save(tmp_path / "a.npy", imgs)
    np.savez(tmp_path / "b.npz", imgs[:, 0])
    assert np.array_equal(load_data(str(tmp_path / "a.npy")), imgs.reshape(2, 60).astype(float))
    assert np.array_equal(load_data(str(tmp_path / "b.npz")), imgs[:, 0].reshape(2, 20).astype(float))


def test_checkerboard_lies_on_dark_squares():
    x = load_data("checkerboard", 20000, seed=3)
    assert on_checkerboard(x).all()
    assert np.abs(x).max() <= 4
    shifted = x + np.array([2.0, 0.0])  # moves every point onto a light square (or off the board)
    assert not on_checkerboard(shifted).any()
    # both colours are half the board: uniform points land on dark squares half of the time
    u = np.random.default_rng(0).uniform(-4, 4, (200_000, 2))
    assert abs(on_checkerboard(u).mean() - 0.5) < 0.01


def test_files_roundtrip(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 3))
    np.save(tmp_path / "a.npy", x)
    np.savez(tmp_path / "b.npz", data=x, other=np.zeros(2))
    np.savez(tmp_path / "c.npz", x)
    np.savetxt(tmp_path / "d.csv", x, delimiter=",", header="a,b,c", comments="")
    np.savetxt(tmp_path / "e.csv", x, delimiter=",")
    for name in ("a.npy", "b.npz", "c.npz", "d.csv", "e.csv"):
        assert np.allclose(load_data(str(tmp_path / name)), x), name


def _save(tmp_path, name, arr):
    path = tmp_path / name
    np.save(path, arr)
    return str(path)


@pytest.mark.parametrize(
    "arr, message",
    [
        (np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 1.0]]), r"1 row\(s\) contain NaN or inf \(first at row 1\)"),
        (np.array([[0.0, np.inf], [1.0, 2.0]]), "NaN or inf"),
        (np.zeros((3, 2, 2, 2, 2)), r"expected a 2-D array of shape \(N, d\).*\(3, 2, 2, 2, 2\)"),
        (np.zeros(5), r"for 1-D data use shape \(N, 1\)"),
        (np.zeros((0, 2)), "empty"),
        (np.zeros((1, 2)), "at least 2 samples"),
        (np.array([["a", "b"], ["c", "d"]]), "expected numbers"),
    ],
)
def test_bad_arrays(tmp_path, arr, message):
    with pytest.raises(SbdiffError, match=message):
        load_data(_save(tmp_path, "bad.npy", arr))


def test_bad_files(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(SbdiffError, match="CSV file is empty"):
        load_data(str(tmp_path / "empty.csv"))
    (tmp_path / "text.csv").write_text("1,2\n3,x\n")
    with pytest.raises(SbdiffError, match="non-numeric value in CSV row 2"):
        load_data(str(tmp_path / "text.csv"))
    (tmp_path / "ragged.csv").write_text("1,2\n3\n")
    with pytest.raises(SbdiffError, match="different numbers of columns"):
        load_data(str(tmp_path / "ragged.csv"))
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(SbdiffError, match="cannot read"):
        load_data(str(tmp_path / "empty.npy"))
    with pytest.raises(SbdiffError, match="data file not found"):
        load_data(str(tmp_path / "missing.npy"))
    np.savez(tmp_path / "two.npz", a=np.zeros((3, 2)), b=np.zeros((3, 2)))
    with pytest.raises(SbdiffError, match="several arrays"):
        load_data(str(tmp_path / "two.npz"))
    with pytest.raises(SbdiffError, match="unknown dataset 'chekerboard'"):
        load_data("chekerboard")


def test_standardizer():
    x = np.random.default_rng(0).normal([1, 2], [3, 0.5], size=(10000, 2))
    st = Standardizer.fit(x)
    y = (x - st.mean) / st.scale
    assert np.allclose(y.mean(0), 0, atol=1e-12) and np.allclose(y.std(0), 1)
    ident = Standardizer.fit(x, enabled=False)
    assert np.all(ident.mean == 0) and np.all(ident.scale == 1)
