"""trainlab.curvature against its peers, side by side in one run, on digits (float64).

Models: an MLP 64-128-128-10 (26,122 parameters) and a small CNN, each trained briefly
with Adam so the Hessian is that of a real training point. Printed, as tables:

1. Hessian-vector product ÷ gradient time (kept-graph products, and plain double backward).
2. Top-10 and bottom-10 eigenvalues to 1e-4 relative accuracy — Hessian-vector products
   and wall time for trainlab ``eigs``, PyHessian ``eigenvalues(top_n=10)`` (power iteration
   with deflation; top only), hessian-eigenthings ``lanczos`` (fixed steps, full
   reorthogonalisation; the smallest step count reaching the accuracy is searched), and scipy
   ``eigsh`` over a ``LinearOperator`` of trainlab's product (the loosest ``tol`` reaching
   the accuracy is searched). The reference is trainlab Lanczos at ``tol=1e-12`` with a 400-
   vector basis, whose residuals are printed. Search costs are not counted: each peer row is
   its cheapest successful setting.
3. Dense Hessian: trainlab ``hessian`` vs ``torch.func.hessian`` on two small models.

Peers come from the ``bench`` extra: ``pip install -e .[bench]``. The same comparison at scale
(torchvision ResNet-18 and a small GPT, float32, with peak memory and curvlinops beside the
others) is ``benchmarks/curvature_scale.py``.

    python benchmarks/curvature.py [--device auto] [--skip-slow-peers]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

import trainlab as tl
from trainlab.curvature import HessianOperator, analysis_mode
from trainlab.curvature.lanczos import lanczos
from trainlab.train.trainer import resolve_device
from timing import median_time

ACCURACY = 1e-4


def trained(model, data, epochs=20, seed=0):
    train, _ = data
    tl.train.Trainer(model, tl.optim.Adam(model.parameters(), lr=1e-3), F.cross_entropy, train, batch_size=64,
                     epochs=epochs, seed=seed, progress=False, device="cpu").fit()
    return model.double().eval()


def relative_error(values, reference):
    values = torch.as_tensor(np.asarray(values, dtype=np.float64))
    values, reference = torch.sort(values, descending=True).values, torch.sort(reference, descending=True).values
    return float(((values - reference).abs() / reference.abs()).max())


# ---------------------------------------------------------------- 1. product cost
def product_cost(name, model, x, y):
    params = list(model.parameters())

    def gradient():
        torch.autograd.grad(F.cross_entropy(model(x), y), params)

    def double_backward():
        g = torch.autograd.grad(F.cross_entropy(model(x), y), params, create_graph=True)
        torch.autograd.grad(g, params, [torch.ones_like(p) for p in params])

    op = HessianOperator(model, F.cross_entropy, (x, y))
    op.gradient()
    v = torch.randn(op.n, dtype=op.dtype, device=op.device)
    t_grad = median_time(gradient, 15)
    t_kept = median_time(lambda: op.matvec(v), 15)
    t_double = median_time(double_backward, 15)
    print(f"| {name} | {1e3 * t_grad:.2f} | {1e3 * t_kept:.2f} | **{t_kept / t_grad:.2f}** | {t_double / t_grad:.2f} |")


# ---------------------------------------------------------------- 2. eigenvalues
class Counted:
    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def trainlab_row(model, x, y, which):
    t0 = time.perf_counter()
    r = tl.curvature.eigs(model, F.cross_entropy, (x, y), k=10, which=which)
    return r.values, r.n_hvp, time.perf_counter() - t0


def pyhessian_rows(model, x, y):
    import importlib

    pyhessian_module = importlib.import_module("pyhessian.hessian")  # the module, not the class it exports

    rows = []
    for tol, max_iter in ((1e-3, 100), (1e-6, 1000)):
        counted = Counted(pyhessian_module.hessian_vector_product)
        pyhessian_module.hessian_vector_product = counted
        torch.manual_seed(0)
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)  # PyHessian draws its vectors in the default dtype
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # PyHessian's backward(create_graph=True) warns about .grad cycles
                t0 = time.perf_counter()
                h = pyhessian_module.hessian(model, F.cross_entropy, data=(x, y), cuda=x.is_cuda)
                values, _ = h.eigenvalues(top_n=10, tol=tol, maxIter=max_iter)
                seconds = time.perf_counter() - t0
        finally:
            torch.set_default_dtype(default)
            pyhessian_module.hessian_vector_product = counted.fn
            model.zero_grad(set_to_none=True)
        rows.append((f"PyHessian eigenvalues(top_n=10, tol={tol:g}, maxIter={max_iter})", values, counted.calls,
                     seconds))
    return rows


def eigenthings_row(model, x, y, which, reference):
    import hessian_eigenthings as he

    for steps in (20, 25, 30, 40, 50, 60, 80, 100, 150, 200, 300, 400, 600, 800):
        op = he.HessianOperator(model, [(x, y)], he.supervised_loss(F.cross_entropy))
        op.matvec = Counted(op.matvec)
        t0 = time.perf_counter()
        r = he.lanczos(op, k=10, max_iter=steps, which="LA" if which == "largest" else "SA", reorthogonalize=True,
                       seed=0)
        seconds = time.perf_counter() - t0
        if relative_error(r.eigenvalues, reference) <= ACCURACY:
            return f"hessian-eigenthings lanczos(max_iter={steps})", r.eigenvalues, op.matvec.calls, seconds
    return "hessian-eigenthings lanczos(max_iter=800)", r.eigenvalues, op.matvec.calls, seconds


def scipy_row(model, x, y, which, reference):
    from scipy.sparse.linalg import LinearOperator, eigsh

    for tol in (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-8):
        t0 = time.perf_counter()
        op = HessianOperator(model, F.cross_entropy, (x, y))
        matvec = Counted(lambda v: op.matvec(torch.from_numpy(np.ascontiguousarray(v).reshape(-1))).cpu().numpy())
        linear = LinearOperator((op.n, op.n), matvec=matvec, dtype=np.float64)
        values = eigsh(linear, k=10, which="LA" if which == "largest" else "SA", tol=tol,
                       v0=np.random.default_rng(0).standard_normal(op.n), maxiter=20_000, return_eigenvectors=False)
        seconds = time.perf_counter() - t0
        if relative_error(values, reference) <= ACCURACY:
            break
    return f"scipy eigsh(LinearOperator, tol={tol:g})", values, matvec.calls, seconds


def eigen_table(name, model, x, y, skip_slow):
    with analysis_mode(model, "eval"):
        op = HessianOperator(model, F.cross_entropy, (x, y))
        refs = {}
        for which in ("largest", "smallest"):
            r = lanczos(op.matvec, op.n, 10, which, tol=1e-12, basis_size=400, max_matvecs=20_000)
            refs[which] = r.values
            print(f"reference {which}-10 for {name}: max residual {float(r.residuals.max()):.1e},"
                  f" values {np.array2string(r.values.numpy(), precision=6, max_line_width=200)}")
    print()
    print("| model | eigenvalues | method | HVPs | seconds | max relative error | HVPs ÷ trainlab | time ÷ trainlab |")
    print("|---|---|---|---|---|---|---|---|")
    for which in ("largest", "smallest"):
        values, hvps, seconds = trainlab_row(model, x, y, which)
        rows = [("trainlab eigs(k=10, tol=1e-6)", values, hvps, seconds)]
        if which == "largest" and not skip_slow:
            rows += pyhessian_rows(model, x, y)
        rows.append(eigenthings_row(model, x, y, which, refs[which]))
        if not skip_slow or which == "largest":
            rows.append(scipy_row(model, x, y, which, refs[which]))
        for method, vals, count, secs in rows:
            err = relative_error(vals, refs[which])
            flag = "" if err <= ACCURACY else " (not reached)"
            print(f"| {name} | {'top' if which == 'largest' else 'bottom'}-10 | {method} | {count} | {secs:.2f} |"
                  f" {err:.1e}{flag} | {count / hvps:.1f} | {secs / seconds:.1f} |")


# ---------------------------------------------------------------- 3. dense Hessian
def dense_row(name, model, x, y):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def f(theta):
        chunks = theta.split([s.numel() for s in shapes])
        return F.cross_entropy(functional_call(model, {n: c.view(s) for n, c, s in zip(names, chunks, shapes)},
                                               (x,)), y)

    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    t0 = time.perf_counter()
    reference = torch.func.hessian(f)(theta)
    t_func = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = tl.curvature.hessian(model, F.cross_entropy, (x, y))
    t_ours = time.perf_counter() - t0
    err = float((ours - reference).abs().max())
    print(f"| {name} | {theta.numel():,} | {t_ours:.2f} | {t_func:.2f} | **{t_ours / t_func:.2f}** | {err:.1e} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--skip-slow-peers", action="store_true",
                   help="skip PyHessian and scipy on the bottom of the spectrum (minutes on CPU)")
    args = p.parse_args()
    device = resolve_device(args.device)
    data = tl.data.load_digits()
    x, y = data[0].tensors[0].double().to(device), data[0].tensors[1].to(device)
    mlp = trained(tl.nn.mlp(64, [128, 128], 10, seed=0), data).to(device)
    cnn = trained(tl.nn.small_cnn(channels=(8, 16), seed=0), data).to(device)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, digits training split"
          f" ({len(y):,} samples, one full batch), float64\n")
    print("| model | gradient ms | HVP ms (kept graph) | HVP ÷ gradient | double backward ÷ gradient |")
    print("|---|---|---|---|---|")
    with analysis_mode(mlp, "eval"), analysis_mode(cnn, "eval"):
        product_cost(f"MLP 64-128-128-10 ({sum(p.numel() for p in mlp.parameters()):,})", mlp, x, y)
        product_cost(f"CNN 8-16 ({sum(p.numel() for p in cnn.parameters()):,})", cnn, x, y)
    print()
    for name, model in (("MLP", mlp), ("CNN", cnn)):
        eigen_table(name, model, x, y, args.skip_slow_peers)
        print()
    print("| model | parameters | trainlab hessian s | torch.func.hessian s | ratio | max difference |")
    print("|---|---|---|---|---|---|")
    dense_row("MLP 64-16-10", trained(tl.nn.mlp(64, [16], 10, seed=0), data, epochs=5).to(device), x, y)
    dense_row("CNN 4-8", trained(tl.nn.small_cnn(channels=(4, 8), seed=0), data, epochs=5).to(device), x, y)
    return 0


if __name__ == "__main__":
    sys.exit(main())
