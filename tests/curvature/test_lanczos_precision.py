"""The Lanczos solver's ``residuals`` and ``converged`` flags are true of the vectors it returns,
in float32 at millions of dimensions (issue 21): every residual reported bounds the true
``‖H x − θ x‖`` of the returned ``x`` (computed here in float64), within 2×."""

import pytest
import torch

from trainlab.curvature.lanczos import lanczos
from trainlab.errors import ConfigError

N = 2**22  # float32 dot products over 4 M terms are wrong in the 4th digit unless summed in float64


def spectrum(seed: int) -> torch.Tensor:
    """A bulk in [0, 1] and five outliers at each end, drawn per seed; float32 diagonal."""
    g = torch.Generator().manual_seed(seed)
    d = torch.rand(N, generator=g)
    d[:5] = 2 + 3 * torch.rand(5, generator=g)
    d[5:10] = -1 - 2 * torch.rand(5, generator=g)
    return d


def true_residuals(d: torch.Tensor, r) -> torch.Tensor:
    d64 = d.double()
    x = r.vectors.double()
    return (d64 * x - r.values[:, None] * x).norm(dim=1)


@pytest.mark.slow
@pytest.mark.parametrize("seed,which", [(0, "largest"), (1, "smallest"), (2, "both")])
def test_every_pair_flagged_converged_has_the_residual_reported(seed, which):
    d = spectrum(seed)
    r = lanczos(lambda v: d * v, N, k=3, which=which, tol=1e-6, dtype=torch.float32, seed=seed)
    true = true_residuals(d, r)
    assert bool(r.converged.any())
    assert bool((true[r.converged] <= 2 * r.residuals[r.converged]).all()), (true, r.residuals)
    # and a value flagged converged lies within its residual of an eigenvalue (Kahan's bound, ‖x‖ = 1 ± ε)
    exact = d.double()
    for value, res in zip(r.values[r.converged], r.residuals[r.converged]):
        assert float((exact - value).abs().min()) <= 2 * float(res)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-7), (torch.float32, 0.0), (torch.float64, 1e-16),
                                       (torch.float32, float("nan")), (torch.float32, True)])
def test_a_tol_below_the_dtype_floor_is_refused(dtype, tol):
    with pytest.raises(ConfigError, match=r"tol=.* is not allowed; expected a number ≥"):
        lanczos(lambda v: v, 100, k=1, tol=tol, dtype=dtype)
