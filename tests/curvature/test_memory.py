"""What an eigensolve keeps: a small Lanczos basis for large operators, and no kept graph once
the products are over (issue 16's memory target)."""

import torch
import torch.nn.functional as F

import trainlab as tl
from trainlab.curvature import lanczos as lanczos_module
from trainlab.curvature.lanczos import BASIS_BYTES, lanczos
from trainlab.curvature.products import _operator, dense


def test_a_large_operator_gets_a_small_basis_and_still_converges(monkeypatch):
    n = 2**22  # float32: 16 MiB a vector; 64 MiB hold 4, below the floor of wanted + max(3, wanted/2) = 8 (+1 row)
    diagonal = torch.linspace(0, 1, n)
    diagonal[-5:] = torch.tensor([2.0, 2.5, 3.0, 3.5, 4.0])
    sizes = []
    zeros = torch.zeros

    def recording_zeros(*shape, **kwargs):
        if len(shape) == 2 and shape[1] == n:
            sizes.append(shape[0])
        return zeros(*shape, **kwargs)

    monkeypatch.setattr(lanczos_module.torch, "zeros", recording_zeros)
    r = lanczos(lambda v: diagonal * v, n, k=5, tol=1e-6, dtype=torch.float32)
    assert BASIS_BYTES // (n * 4) < 8 and sizes == [5 + 3 + 1]
    assert bool(r.converged.all())
    # a Ritz value lies within its residual of an eigenvalue; the residuals bound the float32 vectors'
    # (tests/curvature/test_lanczos_precision.py), so no tolerance of one CPU's rounding is needed here
    exact = torch.tensor([4.0, 3.5, 3.0, 2.5, 2.0], dtype=torch.float64)
    assert bool(((r.values - exact).abs() <= r.residuals).all()), (r.values - exact, r.residuals)
    assert bool((r.residuals <= 1e-6 * 4.0).all())


def test_release_is_called_once_after_the_last_product_and_before_the_vectors():
    events = []
    A = torch.diag(torch.arange(1.0, 41.0, dtype=torch.float64))

    def matvec(v):
        events.append("product")
        return A @ v

    r = lanczos(matvec, 40, k=3, tol=1e-10, release=lambda: events.append("release"))
    assert events.count("release") == 1 and events[-1] == "release"
    assert torch.allclose(r.values, torch.tensor([40.0, 39.0, 38.0], dtype=torch.float64))


def test_a_released_operator_builds_its_graph_again(small_mlp_problem):
    model, x, y = small_mlp_problem
    with tl.curvature.analysis_mode(model, "eval"):
        op = _operator(model, F.cross_entropy, (x, y), "eval")
        H = dense(op)
        op.release()
        assert op._grad is None
        again = dense(op)
    assert torch.allclose(H, again, atol=1e-13, rtol=0)
    e = tl.curvature.eigs(model, F.cross_entropy, (x, y), k=2, tol=1e-10, progress=False)
    exact = torch.linalg.eigvalsh(H).flip(0)[:2]
    assert torch.allclose(e.values, exact, atol=1e-9)
