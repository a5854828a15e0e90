"""``params=``: the Hessian block of the chosen parameters, the others held fixed, against the
same block cut out of the dense ``torch.func.hessian`` of the whole parameter vector."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import trainlab as tl
from trainlab.curvature.selection import names, select
from trainlab.errors import ConfigError
from digests import model_digest
from tolerance import close


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()


def _cnn():
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).double()


def _data(model):
    gen = torch.Generator().manual_seed(2)
    shape = (30, 4) if isinstance(model[0], nn.Linear) else (30, 1, 6, 6)
    return torch.randn(*shape, generator=gen, dtype=torch.float64), torch.randint(0, 3, (30,), generator=gen)


def dense_block(model, x, y, chosen):
    """Rows and columns of the full dense Hessian (torch.func.hessian over the flat vector) for ``chosen`` names."""
    named = dict(model.named_parameters())
    shapes = {k: p.shape for k, p in named.items()}
    flat = torch.cat([p.detach().reshape(-1) for p in named.values()])

    def loss(theta):
        parts, start = {}, 0
        for k, shape in shapes.items():
            parts[k] = theta[start:start + math.prod(shape)].view(shape)
            start += math.prod(shape)
        return F.cross_entropy(functional_call(model, parts, (x,)), y)

    H = torch.func.hessian(loss)(flat)
    index, start = [], 0
    for k, shape in shapes.items():
        if k in chosen:
            index += range(start, start + math.prod(shape))
        start += math.prod(shape)
    index = torch.tensor(index)
    return H[index][:, index]


FORMS = [
    ("parameter names", lambda m: ["2.weight", "2.bias"], ["2.weight", "2.bias"]),
    ("module name", lambda m: "2", ["2.weight", "2.bias"]),
    ("module object", lambda m: m[2], ["2.weight", "2.bias"]),
    ("tensors", lambda m: [m[0].weight, m[4].bias], ["0.weight", "4.bias"]),
    ("one tensor", lambda m: m[4].weight, ["4.weight"]),
    ("mixed", lambda m: [m[0], "4.bias"], ["0.weight", "0.bias", "4.bias"]),
    ("filter", lambda m: (lambda name, p: name.endswith("weight")), ["0.weight", "2.weight", "4.weight"]),
    ("None", lambda m: None, ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]),
]


@pytest.mark.parametrize("label,spec,expected", FORMS, ids=[f[0] for f in FORMS])
def test_every_form_selects_those_parameters_in_model_order(label, spec, expected):
    model = _mlp()
    assert names(model, spec(model)) == expected


@pytest.mark.parametrize("label,spec,expected", FORMS[:7], ids=[f[0] for f in FORMS[:7]])
def test_block_of_the_dense_hessian(label, spec, expected):
    model = _mlp()
    x, y = _data(model)
    H = tl.curvature.hessian(model, F.cross_entropy, (x, y), params=spec(model))
    reference = dense_block(model, x, y, expected)
    assert H.shape == reference.shape
    assert torch.allclose(H, reference, atol=1e-10, rtol=0)


def test_block_on_a_cnn_and_every_analysis_agrees():
    model = _cnn()
    x, y = _data(model)
    chosen = ["0.weight", "0.bias"]
    reference = dense_block(model, x, y, chosen)
    H = tl.curvature.hessian(model, F.cross_entropy, (x, y), params=chosen)
    assert torch.allclose(H, reference, atol=1e-10, rtol=0)
    v = torch.randn(3, reference.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    Hv = tl.curvature.hvp(model, F.cross_entropy, [(x[:13], y[:13]), (x[13:], y[13:])], v, params=chosen)
    assert torch.allclose(Hv, v @ reference, atol=1e-10, rtol=0)
    exact = torch.linalg.eigvalsh(reference)
    e = tl.curvature.eigs(model, F.cross_entropy, (x, y), k=2, which="both", tol=1e-10, params=chosen, progress=False)
    assert torch.allclose(e.values, torch.cat([exact[-2:].flip(0), exact[:2].flip(0)]), atol=1e-9)
    assert set(e.as_params(0)) == set(chosen)
    t = tl.curvature.trace(model, F.cross_entropy, (x, y), samples=reference.shape[0] * 3, params=chosen,
                           progress=False)
    assert abs(t.value - float(exact.sum())) <= 1e-8 * max(1.0, abs(float(exact.sum())))  # Hutch++ sketch spans it


def test_gradient_block_is_the_full_gradients_part():
    model = _mlp()
    x, y = _data(model)
    full = tl.curvature.gradient(model, F.cross_entropy, (x, y))
    part = tl.curvature.gradient(model, F.cross_entropy, (x, y), params=["2.weight", "2.bias"])
    start = sum(p.numel() for p in model[0].parameters())
    # float64 sums over the samples, computed for the block alone
    within = close(torch.float64, len(x), float(full.abs().max()))
    assert torch.allclose(part, full[start:start + part.numel()], **within)


def test_diagnose_of_a_block_exact_and_lanczos():
    model = _mlp()
    x, y = _data(model)
    chosen = ["2.weight", "2.bias", "4.weight"]
    exact = torch.linalg.eigvalsh(dense_block(model, x, y, chosen)).flip(0)
    d = tl.diagnose(model, F.cross_entropy, (x, y), params=chosen, progress=False)
    assert d.method == "dense" and d.params == chosen and d.n_params == len(exact)
    assert torch.allclose(d.eigenvalues, exact, atol=1e-10)
    assert d.trace == pytest.approx(float(exact.sum()), abs=1e-10)
    assert "of 2.weight, 2.bias, 4.weight" in str(d)
    g = tl.diagnose(model, F.cross_entropy, (x, y), params=chosen, method="lanczos", k=3, progress=False)
    assert float(g.eigenvalues[0]) == pytest.approx(float(exact[0]), rel=1e-6)
    assert float(g.eigenvalues[-1]) == pytest.approx(float(exact[-1]), rel=1e-6, abs=1e-9)
    assert abs(g.trace - float(exact.sum())) <= 5 * g.trace_stderr + 1e-9


def test_diagnose_of_all_parameters_names_none():
    model = _mlp()
    x, y = _data(model)
    assert tl.diagnose(model, F.cross_entropy, (x, y), progress=False).params == []


def test_analysis_holds_the_others_fixed_and_leaves_the_model_as_it_was():
    model = _mlp()
    model[0].weight.requires_grad_(True)
    x, y = _data(model)
    before = model_digest(model)
    flags = [p.requires_grad for p in model.parameters()]
    tl.curvature.eigs(model, F.cross_entropy, (x, y), k=2, params="4", progress=False)
    tl.diagnose(model, F.cross_entropy, (x, y), params=[model[2]], progress=False)
    assert model_digest(model) == before
    assert [p.requires_grad for p in model.parameters()] == flags


def test_frozen_parameters_are_never_chosen():
    model = _mlp()
    model[2].weight.requires_grad_(False)
    assert names(model, "2") == ["2.bias"]
    with pytest.raises(ConfigError, match="frozen"):
        select(model, ["2.weight"])


FOREIGN = nn.Linear(2, 2)  # built here: building it in a test would draw from the random state checked
BAD = [
    ("foreign tensor", lambda m: [torch.zeros(3)], "not a parameter of the model"),
    ("foreign module", lambda m: FOREIGN, "not part of the model"),
    ("unknown name", lambda m: "5", "neither a parameter nor a submodule"),
    ("misspelt name", lambda m: "2.weigth", "neither a parameter nor a submodule"),
    ("empty list", lambda m: [], "params is empty"),
    ("module without parameters", lambda m: "1", r"the submodule '1' \(Tanh\), which holds no parameters"),
    ("filter choosing none", lambda m: (lambda name, p: False), "chose no parameter"),
    ("a number", lambda m: 3, "not allowed"),
    ("a number in a list", lambda m: [m[0].weight, 3], "allowed: parameter tensors"),
]


@pytest.mark.parametrize("label,spec,message", BAD, ids=[b[0] for b in BAD])
def test_bad_params_are_one_clear_error_and_change_nothing(label, spec, message):
    model = _mlp()
    x, y = _data(model)
    before = model_digest(model)
    with pytest.raises(ConfigError, match=message):
        tl.diagnose(model, F.cross_entropy, (x, y), params=spec(model), progress=False)
    with pytest.raises(ConfigError, match=message):
        tl.curvature.eigs(model, F.cross_entropy, (x, y), params=spec(model), progress=False)
    assert model_digest(model) == before
    assert all(p.requires_grad for p in model.parameters())


def test_escape_from_a_block_moves_only_that_block():
    from toys import Product
    model = Product(3)  # loss of a product of three scalars: at zero a degenerate point
    data = (torch.ones(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        list(model.parameters())[2].fill_(1.0)  # w₁ = w₂ = 0, w₃ = 1: a saddle in (w₁, w₂)
    chosen = names(model)[:2]
    d = tl.diagnose(model, _toy_loss, data, params=chosen, progress=False)
    assert d.verdict == "saddle" and d.params == chosen
    fixed = list(model.parameters())[2].detach().clone()
    e = tl.escape(model, _toy_loss, data, d)
    assert e.accepted and e.loss_after < e.loss_before
    assert torch.equal(list(model.parameters())[2].detach(), fixed)


def _toy_loss(out, y):
    return ((out - y) ** 2).mean()
