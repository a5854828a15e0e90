"""GGN and empirical Fisher products against dense Jacobian-based references (float64).

References are built here, independently of the operators: the Jacobian ``J`` of the outputs
(``torch.func.jacrev`` through ``functional_call``), the output Hessian of the loss
(``torch.func.hessian``), per-sample gradients one sample at a time, and the residual term
``R = Σ_k (∂L/∂f_k) ∇²_θ f_k`` as the Hessian of ``θ ↦ f(θ)·c`` with ``c = ∂L/∂f`` held fixed.
(curvlinops' operators are compared in ``benchmarks/gauss_newton_check.py``: a ``bench`` extra.)
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import trainlab as tl
from trainlab.curvature import HessianOperator, analysis_mode, hessian
from trainlab.curvature.gauss_newton import FisherOperator, GGNOperator
from trainlab.curvature.products import dense, operator_class
from trainlab.errors import ConfigError

from digests import model_digest
from tolerance import close, tol
from toys import linear_saddle, squared_error

TOL = dict(rtol=1e-10, atol=1e-12)


class Tokens(nn.Module):
    """``(B, T, 4) → (B, T, 3)``: outputs with a token dimension."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))

    def forward(self, x):
        return self.net(x)


def token_cross_entropy(f, y):
    return F.cross_entropy(f.reshape(-1, f.shape[-1]), y.reshape(-1))


def mse(f, y):
    return F.mse_loss(f, y)


def problem(name):
    """(model, loss_fn, x, y) of one test case, float64."""
    gen = torch.Generator().manual_seed(0)
    if name.startswith("mlp"):
        model = tl.nn.mlp(5, [6], 3, activation="tanh", seed=0).double()
        x = torch.randn(40, 5, generator=gen, dtype=torch.float64)
    elif name.startswith("cnn"):
        model = tl.nn.small_cnn(in_channels=1, image_size=4, num_classes=3, channels=(2,), batch_norm=True,
                                seed=0).double()
        model.train()
        for _ in range(3):  # non-trivial running statistics
            model(torch.randn(8, 16, generator=gen, dtype=torch.float64) * 2 + 1)
        model.eval()
        x = torch.randn(24, 16, generator=gen, dtype=torch.float64)
    else:
        torch.manual_seed(0)
        model = Tokens().double()
        x = torch.randn(10, 4, 4, generator=gen, dtype=torch.float64)
    if name.endswith("tokens"):
        return model, token_cross_entropy, x, torch.randint(0, 3, (10, 4), generator=gen)
    if name.endswith("regression"):
        return model, mse, x, torch.randn(len(x), 3, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (len(x),), generator=gen)
    return model, tl.nn.mse_onehot if name.endswith("softmax_mse") else tl.nn.cross_entropy, x, y


#: model-head; every head but the lecture's softmax-MSE is convex in the outputs
CASES = ["mlp-cross_entropy", "mlp-regression", "mlp-softmax_mse", "cnn-cross_entropy", "cnn-regression",
         "tokens-tokens"]


def outputs_of(model, names, x):
    """``θ_S ↦ f(θ_S)`` over the named parameters (flat), the others as they are."""
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]

    def f(theta):
        chunks = theta.split([s.numel() for s in shapes])
        return functional_call(model, {n: c.view(s) for n, c, s in zip(names, chunks, shapes)}, (x,))

    return f, torch.cat([params[n].detach().reshape(-1) for n in names])


def dense_ggn(model, loss_fn, batches, names):
    """``Σ_b (n_b/N) J_bᵀ ∇²_f ℓ_b J_b`` from dense Jacobians and output Hessians."""
    total = sum(len(x) for x, _ in batches)
    G = 0
    for x, y in batches:
        f, theta = outputs_of(model, names, x)
        J = torch.func.jacrev(f)(theta).reshape(-1, theta.numel())
        out = f(theta).detach()
        Hf = torch.func.hessian(lambda o: loss_fn(o.view(out.shape), y))(out.reshape(-1))
        G = G + len(x) / total * J.T @ Hf @ J
    return G


def dense_fisher(model, loss_fn, batches, names):
    """``(1/N) Σ_i g_i g_iᵀ`` from per-sample gradients, one sample at a time."""
    grads = []
    for x, y in batches:
        for i in range(len(x)):
            f, theta = outputs_of(model, names, x[i:i + 1])
            grads.append(torch.func.grad(lambda t: loss_fn(f(t), y[i:i + 1]))(theta))
    g = torch.stack(grads)
    return g.T @ g / len(g)


def dense_residual(model, loss_fn, x, y, names):
    """``R = Σ_k c_k ∇²_θ f_k``, ``c = ∂L/∂f`` held fixed."""
    f, theta = outputs_of(model, names, x)
    out = f(theta).detach().requires_grad_(True)
    c, = torch.autograd.grad(loss_fn(out, y), out)
    return torch.func.hessian(lambda t: (f(t) * c).sum())(theta)


def operator_dense(kind, model, loss_fn, data, mode="eval", **options):
    with analysis_mode(model, mode):
        return dense(kind(model, loss_fn, data, **options))


def all_names(model):
    return [n for n, _ in model.named_parameters()]


@pytest.mark.parametrize("case", CASES)
def test_products_equal_the_dense_references_and_are_psd(case):
    model, loss_fn, x, y = problem(case)
    names = all_names(model)
    G, Fi = operator_dense(GGNOperator, model, loss_fn, (x, y)), operator_dense(FisherOperator, model, loss_fn, (x, y))
    torch.testing.assert_close(G, dense_ggn(model, loss_fn, [(x, y)], names), **TOL)
    torch.testing.assert_close(Fi, dense_fisher(model, loss_fn, [(x, y)], names), **TOL)
    for M, psd in [(G, not case.endswith("softmax_mse")), (Fi, True)]:
        eigenvalues = torch.linalg.eigvalsh(M)
        # (softmax inside the loss is not convex in the logits: there G has negative eigenvalues)
        assert (eigenvalues.min() >= -1e-10 * eigenvalues.abs().max()) == psd


@pytest.mark.parametrize("case", ["mlp-cross_entropy", "cnn-regression", "tokens-tokens"])
def test_hessian_minus_ggn_is_the_residual_term(case):
    model, loss_fn, x, y = problem(case)
    H = hessian(model, loss_fn, (x, y))
    G = operator_dense(GGNOperator, model, loss_fn, (x, y))
    R = dense_residual(model, loss_fn, x, y, all_names(model))
    assert R.abs().max() > 1e-3  # the network's curvature matters here
    torch.testing.assert_close(H - G, R, **TOL)


def test_at_a_saddle_the_negative_curvature_is_all_in_the_residual():
    model, x, y = linear_saddle()
    H = hessian(model, squared_error, (x, y))
    G = operator_dense(GGNOperator, model, squared_error, (x, y))
    assert torch.linalg.eigvalsh(H).min() < -0.1
    torch.testing.assert_close(G, torch.zeros_like(G), rtol=0, atol=1e-14)  # J = 0 at zero weights


@pytest.mark.parametrize("kind", [GGNOperator, FisherOperator])
@pytest.mark.parametrize("params", ["3.weight", "1", lambda name, p: name.endswith("bias")])
def test_params_give_the_block_of_the_dense_reference(kind, params):
    model, loss_fn, x, y = problem("mlp-cross_entropy")
    reference = {GGNOperator: dense_ggn, FisherOperator: dense_fisher}[kind]
    full = reference(model, loss_fn, [(x, y)], all_names(model))
    with analysis_mode(model, "eval"):
        op = kind(model, loss_fn, (x, y), params=params)
        got = dense(op)
    index = torch.cat([torch.full((p.numel(),), n in op.names) for n, p in model.named_parameters()]).nonzero()[:, 0]
    assert got.shape == (len(index), len(index)) == (op.n, op.n)
    torch.testing.assert_close(got, full[index][:, index], **TOL)


def test_unused_parameters_have_zero_rows():
    model, loss_fn, x, y = problem("mlp-cross_entropy")
    wrapped = nn.ModuleDict({"net": model, "spare": nn.Linear(2, 2).double()})
    wrapped.forward = lambda inp: model(inp)
    G = operator_dense(GGNOperator, wrapped, loss_fn, (x, y))
    assert torch.equal(G[-6:], torch.zeros(6, len(G), dtype=torch.float64))
    assert torch.equal(operator_dense(FisherOperator, wrapped, loss_fn, (x, y), params="spare"),
                       torch.zeros(6, 6, dtype=torch.float64))


@pytest.mark.parametrize("kind", [GGNOperator, FisherOperator])
def test_kept_streamed_batched_chunked_and_split_data_agree(kind):
    model, loss_fn, x, y = problem("cnn-cross_entropy")
    reference = {GGNOperator: dense_ggn, FisherOperator: dense_fisher}[kind]
    expected = reference(model, loss_fn, [(x, y)], all_names(model))
    V = torch.randn(3, len(expected), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    batches = [(x[:11], y[:11]), (x[11:15], y[11:15]), (x[15:], y[15:])]  # unequal sizes
    with analysis_mode(model, "eval"):
        probe = kind(model, loss_fn, (x, y))
        assert probe.keep_graph and probe.graph_bytes > 0 and probe.peak_bytes >= probe.graph_bytes
        variants = {
            "kept": probe,
            "streamed": kind(model, loss_fn, (x, y), keep_graph=False),
            "batched": kind(model, loss_fn, (x, y), keep_graph=True, batched=True),
            "batches": kind(model, loss_fn, batches, keep_graph=True),
            "streamed batches": kind(model, loss_fn, batches, keep_graph=False, batched=True),
            "chunks": kind(model, loss_fn, (x, y), max_graph_bytes=probe.peak_bytes / 3),
        }
        assert not variants["chunks"].keep_graph and len(variants["chunks"].pieces) >= 3
        for name, op in variants.items():
            torch.testing.assert_close(op.matmat(V), V @ expected.T, **TOL, msg=name)
            torch.testing.assert_close(op.matvec(V[0]), expected @ V[0], **TOL, msg=name)
            assert op.n_hvp == 4


def test_gradient_and_loss_are_the_losses_own():
    model, loss_fn, x, y = problem("mlp-cross_entropy")
    batches = [(x[:25], y[:25]), (x[25:], y[25:])]
    with analysis_mode(model, "eval"):
        h = HessianOperator(model, loss_fn, batches)
        for kind in (GGNOperator, FisherOperator):
            for keep in (True, False):
                op = kind(model, loss_fn, batches, keep_graph=keep)
                # the same float64 sums over the samples, perhaps in another order
                want = h.gradient()
                torch.testing.assert_close(op.gradient(), want, **close(torch.float64, len(x), float(want.abs().max())))
                assert op.loss == pytest.approx(h.loss, rel=tol(torch.float64, len(x)))
                assert not op.gradient().requires_grad and op.n_hvp == 0


def test_train_mode_with_batch_norm_matches_a_looped_jacobian_and_leaves_the_model_as_it_was():
    gen = torch.Generator().manual_seed(0)
    model = tl.nn.mlp(5, [6], 3, activation="tanh", batch_norm=True, seed=0).double()
    x, y = torch.randn(20, 5, generator=gen, dtype=torch.float64), torch.randint(0, 3, (20,), generator=gen)
    before = model_digest(model)
    G = operator_dense(GGNOperator, model, tl.nn.cross_entropy, (x, y), mode="train")
    streamed = operator_dense(GGNOperator, model, tl.nn.cross_entropy, (x, y), mode="train", keep_graph=False)
    assert model_digest(model) == before
    # reference: the batch's Jacobian row by row (torch.autograd.functional, no vmap), on a copy in train mode
    twin = copy.deepcopy(model).train()
    f, theta = outputs_of(twin, all_names(twin), x)
    J = torch.autograd.functional.jacobian(f, theta).reshape(-1, theta.numel())
    out = f(theta).detach()
    Hf = torch.autograd.functional.hessian(lambda o: tl.nn.cross_entropy(o.view(out.shape), y), out.reshape(-1))
    torch.testing.assert_close(G, J.T @ Hf @ J, **TOL)
    torch.testing.assert_close(streamed, G, **TOL)


@pytest.mark.parametrize("kind", [GGNOperator, FisherOperator])
def test_train_mode_with_dropout_is_refused_as_random(kind):
    model, loss_fn, x, y = problem("mlp-cross_entropy")
    dropout = nn.Sequential(model, nn.Dropout(0.5))
    with analysis_mode(dropout, "train"), pytest.raises(ConfigError, match="mode='train' gives a different gradient"):
        kind(dropout, loss_fn, (x, y)).check_determinism()


def test_the_model_is_left_unchanged():
    model, loss_fn, x, y = problem("cnn-cross_entropy")
    model.train()
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    before = model_digest(model)
    for kind in (GGNOperator, FisherOperator):
        with analysis_mode(model, "eval"):
            kind(model, loss_fn, (x, y)).matvec(v)
        assert model_digest(model) == before


def test_operator_names_pick_these_classes():
    assert operator_class("ggn") is GGNOperator and operator_class("fisher") is FisherOperator


def test_bad_inputs_are_refused_with_one_sentence():
    model, loss_fn, x, y = problem("mlp-cross_entropy")

    def batch_loss(m, batch):
        return loss_fn(m(batch[0]), batch[1])

    with analysis_mode(model, "eval"):
        for kind, name in [(GGNOperator, "ggn"), (FisherOperator, "fisher")]:
            with pytest.raises(ConfigError, match=rf"^batch_loss is not allowed with operator='{name}': .* needs"
                                                  r" loss_fn\(outputs, targets\) to split the network's outputs"):
                kind(model, None, (x, y), batch_loss=batch_loss)
            with pytest.raises(ConfigError, match=rf"^batch_loss is not allowed with operator='{name}'"):
                kind(model, loss_fn, (x, y), batch_loss=batch_loss)
            with pytest.raises(ConfigError, match=rf"^loss_fn=None is not allowed with operator='{name}'"):
                kind(model, None, (x, y))
            with pytest.raises(ConfigError, match=r"vectors must have shape \(m, 57\)"):
                kind(model, loss_fn, (x, y)).matmat(torch.ones(57, dtype=torch.float64))
        tupled = nn.Sequential(model, Tuple())
        with pytest.raises(ConfigError, match="the model returns tuple, not a tensor: operator='ggn' needs"):
            GGNOperator(tupled, lambda f, t: loss_fn(f[0], t), (x, y), check=False).gradient()
        transposed = nn.Sequential(Tokens().double(), Transpose())  # (T, B, V): samples not first
        xt, yt = torch.randn(6, 4, 4, dtype=torch.float64), torch.randint(0, 3, (6, 4))
        with pytest.raises(ConfigError, match=r"outputs have shape \(4, 6, 3\) for a batch of 6 samples: the"
                                              " empirical Fisher needs one row of outputs per sample"):
            FisherOperator(transposed, lambda f, t: token_cross_entropy(f, t.T), (xt, yt)).gradient()


class Tuple(nn.Module):
    def forward(self, f):
        return (f,)


class Transpose(nn.Module):
    def forward(self, f):
        return f.transpose(0, 1)
