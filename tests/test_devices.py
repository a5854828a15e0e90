"""Every device this machine has: the parts that take their device from the model or the data.

Each test runs once per device in ``DEVICES`` (the CPU always; CUDA where a GPU is present) and
compares with an independent reference computed on the CPU in float64, or with PyTorch's own
module or optimizer on the same device. On a CPU-only machine these are the CPU checks; on a GPU
machine the same assertions cover the CUDA paths (multi-tensor optimizer steps, batched
Hessian-vector products, data moved to the model's device).
"""

import math

import pytest
import torch
import torch.nn.functional as F

import trainlab as tl
from trainlab.curvature import HessianOperator, analysis_mode
from trainlab.curvature.products import dense

from tolerance import close, tol

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _float64_mlp(seed: int = 0) -> torch.nn.Module:
    return tl.nn.mlp(64, [12], 10, activation="tanh", seed=seed).double()


@pytest.fixture(scope="module")
def batch(digits):
    x, y = digits[0].tensors
    return x[:200].double(), y[:200]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(32, 24), (8, 6, 5, 5)])
def test_batchnorm_matches_torch_on_the_device(device, shape):
    ours_cls, torch_cls = (tl.nn.BatchNorm1d, torch.nn.BatchNorm1d) if len(shape) == 2 else (
        tl.nn.BatchNorm2d, torch.nn.BatchNorm2d)
    ours, theirs = ours_cls(shape[1]).to(device), torch_cls(shape[1]).to(device)
    gen = torch.Generator().manual_seed(0)
    per_channel = math.prod(shape) // shape[1]  # values each channel's float32 statistics reduce
    for mode in (True, False):
        ours.train(mode), theirs.train(mode)
        for _ in range(3):
            x = (3 * torch.randn(shape, generator=gen) + 1).to(device).requires_grad_()
            dy = torch.randn(shape, generator=gen).to(device)
            got = torch.autograd.grad(ours(x), (x, ours.weight, ours.bias), dy)
            want = torch.autograd.grad(theirs(x), (x, theirs.weight, theirs.bias), dy)
            for g, w in zip(got, want):
                assert g.device.type == device
                torch.testing.assert_close(g, w, **close(torch.float32, per_channel, scale=float(w.abs().max())))
    for a, b in ((ours.running_mean, theirs.running_mean), (ours.running_var, theirs.running_var)):
        torch.testing.assert_close(a, b, **close(torch.float32, 3 * per_channel, scale=float(b.abs().max())))


@pytest.mark.parametrize("device", DEVICES)
def test_cross_entropy_matches_torch_on_the_device(device):
    gen = torch.Generator().manual_seed(1)
    logits = (100 * torch.randn(64, 10, generator=gen)).to(device).requires_grad_()
    target = torch.randint(0, 10, (64,), generator=gen).to(device)
    ours, = torch.autograd.grad(tl.nn.cross_entropy(logits, target), logits)
    want, = torch.autograd.grad(F.cross_entropy(logits, target), logits)
    # float32 log-sum-exps and a mean over all 640 logits of magnitude ~100
    want_loss = F.cross_entropy(logits, target)
    n, scale = logits.numel(), float(logits.abs().max())
    torch.testing.assert_close(tl.nn.cross_entropy(logits, target), want_loss, **close(torch.float32, n, scale))
    torch.testing.assert_close(ours, want, **close(torch.float32, n, scale=float(want.abs().max())))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["SGD", "Adagrad", "RMSProp", "Adam"])
def test_optimizer_default_path_matches_torch_on_the_device(device, name):
    """``foreach=None`` is the multi-tensor path on a GPU and the single-tensor one on CPU."""
    make = {"SGD": (lambda p: tl.optim.SGD(p, lr=0.05, momentum=0.9),
                    lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
            "Adagrad": (lambda p: tl.optim.Adagrad(p, lr=0.05), lambda p: torch.optim.Adagrad(p, lr=0.05)),
            "RMSProp": (lambda p: tl.optim.RMSProp(p, lr=0.01, alpha=0.9, init="zero"),
                        lambda p: torch.optim.RMSprop(p, lr=0.01, alpha=0.9)),
            "Adam": (lambda p: tl.optim.Adam(p, lr=0.01), lambda p: torch.optim.Adam(p, lr=0.01))}[name]
    gen = torch.Generator().manual_seed(2)
    start = [torch.randn(7, 5, generator=gen, dtype=torch.float64), torch.randn(5, generator=gen, dtype=torch.float64)]
    ours = [t.clone().to(device).requires_grad_() for t in start]
    theirs = [t.clone().to(device).requires_grad_() for t in start]
    opt_ours, opt_theirs = make[0](ours), make[1](theirs)
    for step in range(30):
        for params, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            ((params[0] ** 2).sum() + (params[0].sin() @ params[1]).sum()).backward()
            opt.step()
    for a, b in zip(ours, theirs):
        assert a.device.type == device
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_hessian_products_on_the_device_match_the_dense_cpu_hessian(device, batch):
    x, y = batch
    reference_model = _float64_mlp()
    with analysis_mode(reference_model, "eval"):
        reference = dense(HessianOperator(reference_model, F.cross_entropy, (x, y)))
    model = _float64_mlp().to(device)
    vectors = torch.randn(4, reference.shape[0], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with analysis_mode(model, "eval"):
        default = HessianOperator(model, F.cross_entropy, (x, y))  # data moved to the model's device
        assert default.batched == (device == "cuda")
        for batched in (False, True):
            op = HessianOperator(model, F.cross_entropy, (x, y), batched=batched)
            block = op.matmat(vectors)
            single = op.matvec(vectors[0])
            assert block.device.type == device and op.n_hvp == 5
            torch.testing.assert_close(block.cpu(), vectors @ reference, rtol=1e-9, atol=1e-11)
            torch.testing.assert_close(single.cpu(), reference @ vectors[0], rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("device", DEVICES)
def test_eigs_and_diagnose_on_the_device_match_the_dense_cpu_spectrum(device, batch):
    x, y = batch
    reference_model = _float64_mlp()
    with analysis_mode(reference_model, "eval"):
        spectrum = torch.linalg.eigvalsh(dense(HessianOperator(reference_model, F.cross_entropy, (x, y))))
    model = _float64_mlp().to(device)
    top = tl.curvature.eigs(model, F.cross_entropy, (x, y), k=3, which="largest", tol=1e-8)
    assert top.vectors.device.type == device and bool(top.converged.all())
    torch.testing.assert_close(top.values.cpu(), spectrum.flip(0)[:3], rtol=1e-6, atol=1e-9)
    found = tl.curvature.diagnose(model, F.cross_entropy, (x, y), method="lanczos", k=3)
    exact = tl.curvature.diagnose(reference_model, F.cross_entropy, (x, y), method="dense")
    assert found.verdict == exact.verdict
    assert found.grad_norm == pytest.approx(exact.grad_norm, rel=1e-9)


@pytest.mark.parametrize("device", DEVICES)
def test_training_on_the_device_resumes_to_the_same_numbers(device, digits, tmp_path):
    train, test = digits

    def trainer(out, epochs, resume=False):
        model = tl.nn.mlp(64, [32], 10, batch_norm=True, seed=0)
        return tl.train.Trainer(model, tl.optim.Adam(model.parameters(), lr=1e-3), F.cross_entropy, train,
                                batch_size=64, epochs=epochs, eval_data=test, seed=0, device=device,
                                out=out, resume=resume, progress=False)

    whole = trainer(tmp_path / "whole", 4)
    whole.fit()
    trainer(tmp_path / "split", 2).fit()
    resumed = trainer(tmp_path / "split", 4, resume=True)
    resumed.fit()
    assert next(resumed.module.parameters()).device.type == device
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    # float32 Adam over `whole.step` updates, each feeding the next: steps² rounded terms (tests/tolerance.py)
    n = whole.step ** 2
    for a, b in zip(whole.history, resumed.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=tol(torch.float32, n))
    for a, b in zip(whole.module.state_dict().values(), resumed.module.state_dict().values()):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, **close(torch.float32, n))
        else:
            assert torch.equal(a.cpu(), b.cpu())  # BatchNorm's batch counts
    assert whole.history[-1]["eval_accuracy"] > 0.8
