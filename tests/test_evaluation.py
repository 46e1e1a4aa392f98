"""The consistency diagnostic of ``eval`` (issue 26): the drift-matching residual and the
``nll > nelbo`` line, on an exact pair (VP reference, ``N(0, I)`` data, the decoder its exact
reversal: the PF-ODE is the identity) and on the same pair with a perturbed encoder."""

import math

import numpy as np
import torch

from sbdiff.decoders import ScoreDecoder
from sbdiff.encoders import Encoder, FixedEncoder
from sbdiff.evaluation import consistency_warning, drift_matching_residual, evaluate
from sbdiff.model import PathVAE
from sbdiff.references import VP


class WigglyEncoder(Encoder):
    """The reference plus a small, rough control ``z = ε sin(ω x)``: its path cost ``E∫½‖z‖²`` is
    small (``≈ d ε²/4``), but its divergence ``ε ω cos(ω x)`` is not, so the PF-ODE it enters is far
    from the probability flow of any process the decoder reverses."""

    def __init__(self, reference, eps: float, omega: float):
        super().__init__(reference)
        self.eps, self.omega = eps, omega

    def control(self, x, t):
        return self.eps * torch.sin(self.omega * x)


def _model(encoder) -> PathVAE:
    ref = encoder.reference
    decoder = ScoreDecoder(ref, lambda x, t: torch.zeros_like(x), "noise")  # ẑ = −g x: N(0, I)'s reversal
    return PathVAE(encoder, decoder, 2, 1e-3, torch.zeros(2), torch.ones(2))


def _gaussian_data(n=4000, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 2))


def test_exact_pair_has_zero_residual_and_no_warning():
    model = _model(FixedEncoder(VP()))
    data = _gaussian_data()
    exact = drift_matching_residual(model, data, n_paths=512, n_points=512, score=lambda x, t: -x)
    assert np.abs(exact["residual"]).max() < 1e-8 and abs(exact["integral"]) < 1e-8
    kernel = drift_matching_residual(model, data, n_paths=4096, n_points=1000)
    print(f"kernel estimate on the exact pair: ½∫r dt = {kernel['integral']:.4f} from t = {kernel['t_from']:.3f}")
    assert kernel["integral"] < 0.1  # the kernel estimate's own error (its floor: 0.07 at d = 2, 4096 paths)
    res = evaluate(model, data, n_nll=300, n_samples=500, nfe=50)
    print({k: res[k] for k in ("nll", "nelbo", "nll_stderr", "nelbo_stderr", "dm_residual")})
    expected = 0.5 * 2 * (1 + math.log(2 * math.pi))  # −E log N(x; 0, I) = H(N(0, I_2))
    assert abs(res["nll"] - expected) < 4 * res["nll_stderr"]
    assert res["consistent"] and consistency_warning(res) is None


def test_perturbed_encoder_is_flagged():
    wiggly = _model(WigglyEncoder(VP(), 0.1, 20.0))
    data = _gaussian_data()
    # q_t stays ≈ N(0, I) (the control is tiny), so with its score the residual is ≈ E‖z‖² = d ε²/2
    r1 = drift_matching_residual(wiggly, data, n_paths=512, n_points=2000, score=lambda x, t: -x)
    print(f"½∫r dt of the perturbed pair: {r1['integral']:.4f} (≈ {0.5 * 2 * 0.01 / 2 * (1 - 1e-3):.4f})")
    assert abs(r1["integral"] - 0.005) < 0.001
    res = evaluate(wiggly, data, n_nll=300, n_samples=500, nfe=50)
    print({k: res[k] for k in ("nll", "nelbo", "nll_stderr", "nelbo_stderr", "dm_residual")})
    line = consistency_warning(res)
    assert not res["consistent"] and line is not None
    assert "trust nelbo" in line and "\n" not in line
