"""Lanczos against dense eigendecompositions (torch.linalg.eigvalsh / eigh)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import trainlab as tl
from trainlab.curvature import eigs, hessian
from trainlab.curvature.lanczos import lanczos
from trainlab.errors import ConfigError


def matrix_with_spectrum(values, seed=0):
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(len(values), len(values), generator=gen, dtype=torch.float64))
    return Q @ torch.diag(values) @ Q.T


def hessian_like_spectrum(n, seed=0):
    """A few large eigenvalues, a dense cluster near zero, a few small negative ones."""
    gen = torch.Generator().manual_seed(seed)
    return torch.cat([torch.linspace(10, 100, 10, dtype=torch.float64),
                      torch.randn(n - 30, generator=gen, dtype=torch.float64) * 0.01,
                      -torch.linspace(0.05, 0.5, 20, dtype=torch.float64)])


def expected(values, which, k):
    s = torch.sort(values, descending=True).values
    return {"largest": s[:k], "smallest": s[-k:], "both": torch.cat([s[:k], s[-k:]])}[which]


@pytest.mark.parametrize("which", ["largest", "smallest", "both"])
@pytest.mark.parametrize("basis_size", [None, 30])  # 30: several thick restarts
def test_extreme_eigenpairs_of_a_known_matrix(which, basis_size):
    values = hessian_like_spectrum(400)
    A = matrix_with_spectrum(values)
    r = lanczos(lambda v: A @ v, 400, 10, which, tol=1e-10, basis_size=basis_size)
    torch.testing.assert_close(r.values, expected(values, which, 10), rtol=1e-9, atol=1e-9)
    assert r.converged.all()
    true_residuals = (A @ r.vectors.T - r.vectors.T * r.values).norm(dim=0)
    torch.testing.assert_close(r.residuals, true_residuals, rtol=0, atol=1e-10)  # the evidence is honest
    torch.testing.assert_close(r.vectors @ r.vectors.T, torch.eye(len(r.values), dtype=torch.float64),
                               rtol=0, atol=1e-10)


def test_low_rank_operator_with_invariant_subspaces():
    A = matrix_with_spectrum(torch.cat([torch.tensor([3.0, -2.0, 1.0], dtype=torch.float64),
                                        torch.zeros(47, dtype=torch.float64)]))
    r = lanczos(lambda v: A @ v, 50, 4, "both", tol=1e-10)
    expected_values = torch.tensor([3.0, 1.0, 0, 0, 0, 0, 0, -2.0], dtype=torch.float64)
    torch.testing.assert_close(r.values, expected_values, rtol=0, atol=1e-10)
    assert r.converged.all()


def test_small_operator_is_solved_exactly():
    values = torch.tensor([5.0, 1.0, -1.0, 0.5, 2.0], dtype=torch.float64)
    r = lanczos(lambda v: matrix_with_spectrum(values) @ v, 5, 10, "largest")
    torch.testing.assert_close(r.values, torch.sort(values, descending=True).values)


@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_eigs_of_an_mlp_hessian_match_the_dense_spectrum(which, digits):
    train, _ = digits
    x, y = train.tensors[0][:300].double(), train.tensors[1][:300]
    model = tl.nn.mlp(64, [16], 10, activation="tanh", seed=0).double()  # 1,210 parameters
    opt = tl.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    dense = torch.linalg.eigvalsh(hessian(model, F.cross_entropy, (x, y)))
    found = eigs(model, F.cross_entropy, (x, y), k=10, which=which)
    reference = dense.flip(0)[:10] if which == "largest" else dense[:10].flip(0)
    torch.testing.assert_close(found.values, reference, rtol=1e-6, atol=0)
    assert found.converged.all() and found.n_hvp < 400 and found.seconds > 0
    named = found.as_params(0)
    assert list(named) == [n for n, _ in model.named_parameters()]
    assert all(t.shape == p.shape for t, p in zip(named.values(), model.parameters()))


def test_bad_arguments():
    A = torch.eye(5, dtype=torch.float64)
    with pytest.raises(ValueError, match="which='top' is not allowed"):
        lanczos(lambda v: A @ v, 5, 2, "top")
    with pytest.raises(ValueError, match="k=0 is not allowed"):
        lanczos(lambda v: A @ v, 5, 0)
    with pytest.raises(ValueError, match="basis_size=3 must exceed the 4 eigenpairs wanted"):
        lanczos(lambda v: A @ v, 50, 4, basis_size=3)


def test_k_above_the_parameter_count_is_clamped_with_a_note(small_mlp_problem):
    model, x, y = small_mlp_problem  # 57 parameters
    H = torch.func.hessian(lambda flat: F.cross_entropy(torch.func.functional_call(
        model, dict(zip([n for n, _ in model.named_parameters()],
                        [c.view_as(p) for c, p in zip(flat.split([p.numel() for p in model.parameters()]),
                                                      model.parameters())])), (x,)), y))(
        torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    found = eigs(model, F.cross_entropy, (x, y), k=1000, progress=False)
    assert found.notes[0].startswith("k=1,000 clamped to 57") and "clamped to 57" in str(found)
    torch.testing.assert_close(found.values, torch.linalg.eigvalsh(H).flip(0), rtol=1e-9, atol=1e-9)
    assert found.n_hvp <= 57
    both = eigs(model, F.cross_entropy, (x, y), k=1000, which="both", progress=False)
    assert "clamped to 29 of each end" in both.notes[0] and len(both.values) == 57


@pytest.mark.parametrize("which", ["largest", "smallest", "both"])
def test_max_hvp_is_respected_and_unconverged_pairs_flagged(which, small_mlp_problem):
    model, x, y = small_mlp_problem
    found = eigs(model, F.cross_entropy, (x, y), k=5, which=which, max_hvp=7, progress=False)
    assert found.n_hvp <= 7 and not found.converged.all()
    assert "converged within 7 products (max_hvp=7)" in found.notes[-1]
    with pytest.raises(ConfigError, match="max_hvp=0 is not allowed"):
        eigs(model, F.cross_entropy, (x, y), max_hvp=0)
