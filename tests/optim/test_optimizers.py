"""trainlab.optim against torch.optim (the independent reference) and the lecture's formulas."""

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import trainlab as tl
from trainlab.optim import SGD, Adagrad, Adam, RMSProp
from tolerance import close

STEPS = 60


def small_model(dtype, seed):
    return tl.nn.mlp(5, [8], 3, activation="tanh", seed=seed).to(dtype)


def train(model, optimizer, steps=STEPS, seed=0, scheduler=None):
    """``steps`` updates on a fixed sequence of random batches; returns the parameters."""
    gen = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    for _ in range(steps):
        x = torch.randn(16, 5, generator=gen).to(dtype)
        y = torch.randint(0, 3, (16,), generator=gen)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    return [p.detach().clone() for p in model.parameters()]


def assert_params_equal(ours, theirs, dtype, steps=STEPS):
    """Parameters after ``steps`` updates are a sum of ``steps`` rounded updates, each carrying a momentum
    or moment sum over up to ``steps`` past gradients: steps² rounded terms of the parameters' size (~1)."""
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, **close(dtype, n=steps * steps))


def compare(make_ours, make_torch, dtype, seed, foreach):
    ours_model, torch_model = small_model(dtype, seed), small_model(dtype, seed)
    ours = train(ours_model, make_ours(ours_model.parameters(), foreach=foreach), seed=seed)
    theirs = train(torch_model, make_torch(torch_model.parameters(), foreach=foreach), seed=seed)
    assert_params_equal(ours, theirs, dtype)


common = dict(dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 10_000),
              foreach=st.booleans())


@settings(max_examples=12, deadline=None)
@given(lr=st.floats(1e-3, 0.2), momentum=st.floats(0, 0.95), nesterov=st.booleans(), wd=st.floats(0, 0.05),
       **common)
def test_sgd_momentum_equals_torch_at_constant_lr(lr, momentum, nesterov, wd, dtype, seed, foreach):
    nesterov = nesterov and momentum > 0
    compare(lambda p, foreach: SGD(p, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=wd, foreach=foreach),
            lambda p, foreach: torch.optim.SGD(p, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=wd,
                                               foreach=foreach), dtype, seed, foreach)


@settings(max_examples=12, deadline=None)
@given(lr=st.floats(1e-3, 0.2), eps=st.floats(1e-10, 1e-6), wd=st.floats(0, 0.05), **common)
def test_adagrad_equals_torch(lr, eps, wd, dtype, seed, foreach):
    compare(lambda p, foreach: Adagrad(p, lr=lr, eps=eps, weight_decay=wd, foreach=foreach),
            lambda p, foreach: torch.optim.Adagrad(p, lr=lr, eps=eps, weight_decay=wd, foreach=foreach),
            dtype, seed, foreach)


@settings(max_examples=12, deadline=None)
@given(lr=st.floats(1e-4, 1e-2), alpha=st.floats(0.5, 0.999), eps=st.floats(1e-8, 1e-6), wd=st.floats(0, 0.05),
       **common)
def test_rmsprop_zero_init_equals_torch(lr, alpha, eps, wd, dtype, seed, foreach):
    compare(lambda p, foreach: RMSProp(p, lr=lr, alpha=alpha, eps=eps, init="zero", weight_decay=wd, foreach=foreach),
            lambda p, foreach: torch.optim.RMSprop(p, lr=lr, alpha=alpha, eps=eps, weight_decay=wd, foreach=foreach),
            dtype, seed, foreach)


@settings(max_examples=12, deadline=None)
@given(lr=st.floats(1e-4, 1e-2), beta1=st.floats(0, 0.99), beta2=st.floats(0.9, 0.9999), eps=st.floats(1e-8, 1e-6),
       wd=st.floats(0, 0.1), decoupled=st.booleans(), **common)
def test_adam_and_adamw_equal_torch(lr, beta1, beta2, eps, wd, decoupled, dtype, seed, foreach):
    reference = torch.optim.AdamW if decoupled else torch.optim.Adam
    compare(lambda p, foreach: Adam(p, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=wd, decoupled=decoupled,
                                    foreach=foreach),
            lambda p, foreach: reference(p, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=wd, foreach=foreach),
            dtype, seed, foreach)


@pytest.mark.parametrize("ours, theirs", [
    (lambda p: Adam(p, lr=0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
    (lambda p: SGD(p, lr=0.01, momentum=0.9), lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9)),
])
def test_param_groups_with_their_own_learning_rates(ours, theirs):
    def groups(model):
        return [{"params": model[1].parameters(), "lr": 0.05}, {"params": model[3].parameters()}]

    a, b = small_model(torch.float64, 0), small_model(torch.float64, 0)
    assert_params_equal(train(a, ours(groups(a))), train(b, theirs(groups(b))), torch.float64)


def test_complex_parameters_match_torch():
    z = torch.randn(6, dtype=torch.complex128, generator=torch.Generator().manual_seed(0))
    ours, theirs = z.clone().requires_grad_(), z.clone().requires_grad_()
    oa, ob = Adam([ours], lr=0.05), torch.optim.Adam([theirs], lr=0.05)
    for _ in range(20):
        for p, opt in ((ours, oa), (theirs, ob)):
            opt.zero_grad()
            (p * p.conj() + 0.3 * p.real ** 3).real.sum().backward()
            opt.step()
    torch.testing.assert_close(ours, theirs, **close(torch.float64, n=20 * 20))  # 20 steps of moment sums


# ---------------------------------------------------------------- the lecture's own forms

def test_rmsprop_first_step_is_lr_times_sign_of_gradient():
    model = small_model(torch.float64, 3)
    before = [p.detach().clone() for p in model.parameters()]
    opt = RMSProp(model.parameters(), lr=0.01, eps=1e-12)
    x, y = torch.randn(16, 5, dtype=torch.float64), torch.randint(0, 3, (16,))
    F.cross_entropy(model(x), y).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    for p, p0, g in zip(model.parameters(), before, grads):
        torch.testing.assert_close(p - p0, -0.01 * torch.sign(g), rtol=0, atol=1e-9)


@pytest.mark.parametrize("foreach", [False, True])
def test_rmsprop_first_grad_follows_the_lecture_recursion(foreach):
    """σ^0 = |g^0|, σ^t = sqrt(α σ² + (1−α) g²), θ ← θ − η g / σ, computed by hand on
    L(θ) = Σ a_i θ_i⁴ / 4 (gradient a θ³)."""
    a = torch.tensor([1.0, 0.2, 3.0], dtype=torch.float64)
    theta = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
    opt = RMSProp([theta], lr=0.05, alpha=0.9, eps=1e-300, foreach=foreach)
    ref = theta.detach().clone()
    sigma = None
    for t in range(30):
        g = a * ref ** 3
        sigma = g.abs() if sigma is None else torch.sqrt(0.9 * sigma ** 2 + 0.1 * g ** 2)
        ref = ref - 0.05 * g / sigma
        opt.zero_grad()
        (a * theta ** 4 / 4).sum().backward()
        opt.step()
    torch.testing.assert_close(theta.detach(), ref, **close(torch.float64, n=30 * 30))  # 30 steps of moment sums


@pytest.mark.parametrize("foreach", [False, True])
def test_adagrad_rms_form_equals_cumulative_form(foreach):
    """σ^t = RMS of g^0..g^t with η^t = η/√(t+1): the lecture's form, computed by hand."""
    a = torch.tensor([1.0, 0.2, 3.0], dtype=torch.float64)
    theta = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
    opt = Adagrad([theta], lr=0.3, eps=1e-300, foreach=foreach)
    ref, history = theta.detach().clone(), []
    for t in range(40):
        g = a * ref ** 3
        history.append(g)
        sigma = torch.sqrt(torch.stack(history).pow(2).mean(0))
        ref = ref - (0.3 / math.sqrt(t + 1)) / sigma * g
        opt.zero_grad()
        (a * theta ** 4 / 4).sum().backward()
        opt.step()
    torch.testing.assert_close(theta.detach(), ref, **close(torch.float64, n=40 * 40))  # 40 steps of 40-term means


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_under_a_changing_lr_follows_the_lecture(foreach, nesterov):
    """m^i = λ m^{i-1} − η^i g^{i-1}, θ^i = θ^{i-1} + m^i, by hand, for L = Σ a θ² / 2;
    torch.optim.SGD, which scales past gradients by the current η, differs."""
    a = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    etas = [0.1 * 0.8 ** i for i in range(25)]  # a decaying learning rate
    lam = 0.9

    def run(opt_cls):
        theta = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
        opt = opt_cls([theta], lr=etas[0], momentum=lam, nesterov=nesterov, foreach=foreach)
        for eta in etas:
            opt.param_groups[0]["lr"] = eta
            opt.zero_grad()
            (a * theta ** 2 / 2).sum().backward()
            opt.step()
        return theta.detach()

    theta, m = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    for eta in etas:
        g = a * theta
        m = lam * m - eta * g
        theta = theta + (lam * m - eta * g if nesterov else m)
    torch.testing.assert_close(run(SGD), theta, **close(torch.float64, n=len(etas) ** 2))  # momentum over 25 steps
    assert (run(torch.optim.SGD) - theta).abs().max() > 1e-3  # PyTorch's form is a different method here


def test_state_dict_round_trip_continues_identically():
    for make in (lambda p: SGD(p, lr=0.05, momentum=0.9), lambda p: Adagrad(p, lr=0.05),
                 lambda p: RMSProp(p, lr=0.01), lambda p: Adam(p, lr=0.01, weight_decay=0.01, decoupled=True)):
        model = small_model(torch.float32, 0)
        opt = make(model.parameters())
        train(model, opt, steps=30, seed=1)
        buffer = io.BytesIO()
        torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
        uninterrupted = train(model, opt, steps=30, seed=2)

        buffer.seek(0)
        saved = torch.load(buffer, weights_only=True)
        fresh = small_model(torch.float32, 99)
        fresh.load_state_dict(saved["model"])
        fresh_opt = make(fresh.parameters())
        fresh_opt.load_state_dict(saved["opt"])
        resumed = train(fresh, fresh_opt, steps=30, seed=2)
        for a, b in zip(uninterrupted, resumed):
            assert torch.equal(a, b), type(opt).__name__


@pytest.mark.parametrize("make", [lambda p: SGD(p, lr=0.1), lambda p: Adagrad(p), lambda p: RMSProp(p),
                                  lambda p: Adam(p)])
def test_sparse_gradients_are_refused(make):
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = make(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cls", [SGD, Adagrad, RMSProp, Adam])
def test_low_precision_parameters_train(cls, dtype):
    torch.manual_seed(0)
    w = torch.randn(20, dtype=dtype).requires_grad_()
    opt = cls([w], lr=0.2)
    start = (w.float() ** 2).sum().item()
    for _ in range(20):
        opt.zero_grad()
        (w ** 2).sum().backward()
        opt.step()
    assert w.dtype == dtype and (w.float() ** 2).sum().item() < 0.5 * start


def test_closure_is_evaluated_with_gradients():
    w = torch.ones(2, requires_grad=True)
    opt = Adam([w], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (w ** 2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == 2.0 and w.grad is not None


@pytest.mark.parametrize("make, match", [
    (lambda p: SGD(p, lr=0), "SGD: lr=0 is not allowed; expected a finite number > 0"),
    (lambda p: SGD(p, lr=float("inf")), "SGD: lr=inf is not allowed; expected a finite number > 0"),
    (lambda p: Adam(p, weight_decay=float("inf")), "Adam: weight_decay=inf is not allowed; expected a finite number >= 0"),
    (lambda p: RMSProp(p, weight_decay=float("nan")), "RMSProp: weight_decay=nan is not allowed"),
    (lambda p: SGD(p, lr=-1e-3), "lr=-0.001"),
    (lambda p: SGD(p, lr=0.1, momentum=1.0), r"momentum=1.0 is not allowed; expected a number in \[0, 1\)"),
    (lambda p: SGD(p, lr=0.1, momentum=-0.1), "momentum=-0.1"),
    (lambda p: SGD(p, lr=0.1, nesterov=True), "nesterov=True"),
    (lambda p: Adagrad(p, lr=0.1, eps=0), "Adagrad: eps=0 is not allowed; expected a finite number > 0"),
    (lambda p: RMSProp(p, alpha=1.5), "RMSProp: alpha=1.5"),
    (lambda p: RMSProp(p, init="ones"), "RMSProp: init='ones' is not allowed; expected 'first_grad' or 'zero'"),
    (lambda p: Adam(p, betas=(0.9, 1.0)), r"Adam: betas\[1\]=1.0 is not allowed"),
    (lambda p: Adam(p, betas=(-0.1, 0.9)), r"Adam: betas\[0\]=-0.1"),
    (lambda p: Adam(p, eps=-1e-8), "Adam: eps=-1e-08"),
    (lambda p: Adam(p, weight_decay=-1), "weight_decay=-1"),
])
def test_invalid_hyper_parameters_raise_value_error_naming_them(make, match):
    with pytest.raises(ValueError, match=match):
        make([torch.zeros(1, requires_grad=True)])


def test_optimizers_in_trainer_learn_digits(digits):
    train_data, test = digits
    for make in (lambda p: SGD(p, lr=0.05, momentum=0.9), lambda p: Adagrad(p, lr=0.05),
                 lambda p: RMSProp(p, lr=1e-3), lambda p: Adam(p, lr=1e-3)):
        model = tl.nn.mlp(64, [32], 10, seed=0)
        summary = tl.train.Trainer(model, make(model.parameters()), tl.nn.cross_entropy, train_data, 32, 8,
                                   eval_data=test, progress=False).fit()
        assert summary["eval_accuracy"] > 0.9, make


def test_default_path_is_single_tensor_on_cpu_and_foreach_on_gpus():
    from trainlab.optim._common import use_foreach

    cpu = [torch.zeros(1)]
    assert use_foreach({"foreach": None}, cpu) is False
    assert use_foreach({"foreach": True}, cpu) is True
    if torch.cuda.is_available():
        assert use_foreach({"foreach": None}, [torch.zeros(1, device="cuda")]) is True
