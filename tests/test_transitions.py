"""The Gaussian-transition operators against dense linear algebra, float64: scalar, diagonal and
rotated-basis transitions give M x + L ε, Lᵀ v, L⁻ᵀ v and Lᵀ C⁻¹ x (C = M Mᵀ + Σ) as matrices would."""

import pytest
import torch

from sbdiff.transitions import GaussianTransition

F64 = torch.float64
B, D = 5, 3


def _dense(kind):
    """A transition of the given kind and its dense (B, d, d) mean map and factor."""
    g = torch.Generator().manual_seed(0)
    if kind == "scalar":
        a, s = torch.rand(B, generator=g, dtype=F64) + 0.1, torch.rand(B, generator=g, dtype=F64) + 0.1
        eye = torch.eye(D, dtype=F64)
        return GaussianTransition(a, s), a[:, None, None] * eye, s[:, None, None] * eye
    a, s = torch.rand(B, D, generator=g, dtype=F64) + 0.1, torch.rand(B, D, generator=g, dtype=F64) + 0.1
    U = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=F64))[0] if kind == "basis" else None
    V = torch.eye(D, dtype=F64) if U is None else U
    M = torch.einsum("ij,bj,kj->bik", V, a, V)
    L = torch.einsum("ij,bj,kj->bik", V, s, V)
    return GaussianTransition(a, s, U), M, L


@pytest.mark.parametrize("kind", ["scalar", "diagonal", "basis"])
def test_operators_match_dense_matrices(kind):
    tr, M, L = _dense(kind)
    g = torch.Generator().manual_seed(1)
    x, eps = torch.randn(B, D, generator=g, dtype=F64), torch.randn(B, D, generator=g, dtype=F64)
    mv = lambda A, v: torch.einsum("bij,bj->bi", A, v)  # noqa: E731
    assert torch.allclose(tr.mean(x), mv(M, x), atol=1e-13)
    assert torch.allclose(tr.sample(x, eps), mv(M, x) + mv(L, eps), atol=1e-13)
    assert torch.allclose(tr.factor_t(x), mv(L.transpose(1, 2), x), atol=1e-13)
    assert torch.allclose(tr.inv_factor_t(x), mv(torch.linalg.inv(L).transpose(1, 2), x), atol=1e-12)
    C = M @ M.transpose(1, 2) + L @ L.transpose(1, 2)
    assert torch.allclose(tr.gaussian_noise(x), mv(L.transpose(1, 2) @ torch.linalg.inv(C), x), atol=1e-12)
    if kind == "scalar":
        assert tr.factor().shape == (B,)
        with pytest.raises(ValueError, match="scalar transition"):
            tr.covariance()
    else:
        dense = tr.factor() if kind == "basis" else torch.diag_embed(tr.factor())
        assert torch.allclose(dense, L, atol=1e-13)
        assert torch.allclose(tr.covariance(), L @ L.transpose(1, 2), atol=1e-13)
