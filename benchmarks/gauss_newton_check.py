"""trainlab's GGN and empirical Fisher against curvlinops, and what a product costs.

1. Agreement (float64): ``GGNOperator`` / ``FisherOperator`` products against curvlinops'
   ``GGNLinearOperator`` / ``EFLinearOperator`` on the same data (two batches of unequal size)
   for an MLP and a CNN, cross-entropy and MSE heads; the largest difference relative to the
   largest entry. curvlinops' EF with ``MSELoss(reduction="mean")`` counts each of the ``C``
   outputs as a loss term and is ``C`` times trainlab's (``trainlab.curvature.gauss_newton``),
   so it is divided by ``C`` here.
2. Cost on digits (full training split, MLP 64-128-128-10, the model's dtype): milliseconds per
   product, and as a multiple of one gradient, for the Hessian, GGN and Fisher operators with
   the graphs kept and streamed, for a forward-mode ``J v`` (``torch.autograd.forward_ad``
   through ``functional_call``, the other graphs kept) instead of the double-VJP trick, and for
   curvlinops' products; and the kept graphs' measured bytes and peaks.

Needs the ``bench`` extra (curvlinops): ``pip install -e .[bench]``.

    python benchmarks/gauss_newton_check.py [--device auto] [--reps 15] [--dtype float32]
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.func import functional_call

import trainlab as tl
from trainlab.curvature import HessianOperator, analysis_mode
from trainlab.curvature.gauss_newton import FisherOperator, GGNOperator
from trainlab.train.trainer import resolve_device
from timing import seconds


def heads(classes: int) -> dict:
    """name → (loss module, targets from labels)."""
    return {"cross-entropy": (nn.CrossEntropyLoss(), lambda y: y),
            "MSE": (nn.MSELoss(), lambda y: nn.functional.one_hot(y, classes).to(torch.float64))}


def agreement(device: torch.device) -> None:
    from curvlinops import EFLinearOperator, GGNLinearOperator

    train, _ = tl.data.load_digits()
    x, y = (t[:256].to(device) for t in train.tensors)
    x = x.double()
    models = {"MLP 64-32-10 tanh": lambda: tl.nn.mlp(64, [32], 10, activation="tanh", seed=0),
              "CNN 4-8": lambda: tl.nn.small_cnn(channels=(4, 8), seed=0)}
    print("| model | head | parameters | GGN: max abs difference / max abs | EF: max abs difference / max abs |")
    print("|---|---|---|---|---|")
    worst = 0.0
    for name, make in models.items():
        model = make().to(device=device, dtype=torch.float64).eval()
        params = [p for p in model.parameters()]
        n = sum(p.numel() for p in params)
        V = torch.randn(5, n, device=device, dtype=torch.float64, generator=torch.Generator(device).manual_seed(0))
        for head, (loss, target) in heads(10).items():
            data = [(x[:160], target(y[:160])), (x[160:], target(y[160:]))]
            scale = {"cross-entropy": 1.0, "MSE": 1.0 / 10}[head]
            gaps = []
            pairs = [(GGNOperator, GGNLinearOperator, 1.0), (FisherOperator, EFLinearOperator, scale)]
            for ours, theirs, factor in pairs:
                with analysis_mode(model, "eval"):
                    mine = ours(model, loss, data).matmat(V)
                reference = (theirs(model, loss, params, data) @ V.T).T * factor
                gaps.append(float((mine - reference).abs().max() / reference.abs().max()))
            worst = max(worst, *gaps)
            print(f"| {name} | {head} | {n:,} | {gaps[0]:.1e} | {gaps[1]:.1e} |")
    print(f"\nlargest relative difference: {worst:.1e} ({'within' if worst <= 1e-10 else 'ABOVE'} 1e-10)\n")


def forward_mode_ggn(model: nn.Module, loss: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """``v ↦ G v`` with ``J v`` by forward-mode AD; the outputs' and ``∂ℓ/∂f``'s graphs kept."""
    names, params = zip(*model.named_parameters())
    f = model(x)
    g, = torch.autograd.grad(loss(f, y), f, create_graph=True)

    def product(v: torch.Tensor) -> torch.Tensor:
        tangents = v.split([p.numel() for p in params])
        with fwAD.dual_level():
            duals = {n: fwAD.make_dual(p.detach(), t.view_as(p)) for n, p, t in zip(names, params, tangents)}
            jv = fwAD.unpack_dual(functional_call(model, duals, (x,))).tangent
        hjv, = torch.autograd.grad(g, f, jv, retain_graph=True)
        return torch.cat([t.reshape(-1) for t in torch.autograd.grad(f, params, hjv, retain_graph=True)])

    return product


def cost(device: torch.device, dtype: torch.dtype, reps: int) -> None:
    from curvlinops import EFLinearOperator, GGNLinearOperator

    train, _ = tl.data.load_digits()
    x, y = train.tensors
    x, y = x.to(device=device, dtype=dtype), y.to(device)
    model = tl.nn.mlp(64, [128, 128], 10, seed=0).to(device=device, dtype=dtype).eval()
    loss = nn.CrossEntropyLoss()
    params = list(model.parameters())
    n = sum(p.numel() for p in params)
    v = torch.randn(n, device=device, dtype=dtype, generator=torch.Generator(device).manual_seed(0))
    with analysis_mode(model, "eval"):
        rows = {"gradient": (lambda u: torch.autograd.grad(loss(model(x), y), params), None)}
        for label, kind in [("Hessian", HessianOperator), ("GGN", GGNOperator), ("Fisher", FisherOperator)]:
            probe = kind(model, loss, (x, y))  # measures its graph
            for keep in (True, False):
                op = kind(model, loss, (x, y), keep_graph=keep)
                op.gradient()
                rows[f"{label}, {'kept' if keep else 'streamed'}"] = (op.matvec, probe if keep else None)
        rows["GGN, forward-mode J v, kept"] = (forward_mode_ggn(model, loss, x, y), None)
        curv = {"curvlinops GGN": GGNLinearOperator, "curvlinops EF": EFLinearOperator}
        for label, kind in curv.items():
            op = kind(model, loss, params, [(x, y)], check_deterministic=False)
            rows[label] = ((lambda o: lambda u: o @ u)(op), None)
        times = {label: [] for label in rows}
        for label, (product, _) in rows.items():
            product(v)  # warm-up
        for _ in range(reps):  # alternating, so a busy machine slows every row alike
            for label, (product, _) in rows.items():
                times[label].append(seconds(lambda: product(v), device))
        gradient = statistics.median(times["gradient"])
        print(f"digits training split ({len(y)} samples, one batch), MLP 64-128-128-10 ({n:,} parameters), {dtype},"
              f" cross-entropy; one gradient {1e3 * gradient:.2f} ms; medians of {reps} alternating calls\n")
        print("| product | ms | ÷ gradient | kept graph MiB | peak MiB |")
        print("|---|---|---|---|---|")
        for label, (product, probe) in rows.items():
            ms = statistics.median(times[label])
            sizes = f"{probe.graph_bytes / 2**20:.1f} | {probe.peak_bytes / 2**20:.1f}" if probe else "| "
            print(f"| {label} | {1e3 * ms:.2f} | {ms / gradient:.2f} | {sizes} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = p.parse_args()
    device = resolve_device(args.device)
    print(f"torch {torch.__version__}, device {device}\n")
    agreement(device)
    cost(device, getattr(torch, args.dtype), args.reps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
