"""Sample metrics (POT): invariants that hold exactly."""

import numpy as np
import pytest

from sbdiff import SbdiffError
from sbdiff.bench.metrics import energy_distance, sample_metrics, sliced_w2, w2_exact


def test_w2_of_a_translate_is_the_shift():
    x = np.random.default_rng(0).normal(size=(300, 3))
    c = np.array([0.5, -1.0, 2.0])
    assert abs(w2_exact(x, x) - 0.0) < 1e-9
    assert abs(w2_exact(x, x + c) - np.linalg.norm(c)) < 1e-9


def test_sliced_w2_is_below_w2_and_energy_distance_separates():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(400, 2)), rng.normal(size=(400, 2)) * 2 + 1
    assert sliced_w2(x, y) <= w2_exact(x, y)
    assert abs(energy_distance(x, x)) < 1e-12
    assert energy_distance(x, y) > 0.1


def test_sample_metrics_subsamples_and_checks_shapes():
    rng = np.random.default_rng(2)
    res = sample_metrics(rng.normal(size=(3000, 2)), rng.normal(size=(2500, 2)), max_points=500)
    assert set(res) == {"w2", "sliced_w2", "energy_distance"} and all(np.isfinite(v) for v in res.values())
    with pytest.raises(SbdiffError, match="equal d"):
        w2_exact(np.zeros((3, 2)), np.zeros((3, 3)))
