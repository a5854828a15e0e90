"""What watching costs: training time with the Monitor ÷ without, presets economy and full, on
the digits MLP and the small CNN — and, side by side on the same model and data, Cockpit
(Schneider, Dangel & Hennig 2021, ``cockpit-for-pytorch`` on BackPACK) in its nearest
configuration, with the values of the instruments both have (λ_max, trace, gradient norm, gsnr).

Every configuration trains the same plain loop (SGD, η = 0.05, batches of 32, the same batch
order) for ``--updates`` updates; the runs alternate — none, economy, full, Cockpit economy-like,
Cockpit full-like, none, … — ``--repeats`` times. Each repeat gives a ratio against the unwatched
run of the same repeat (seconds apart, so a slower spell of the machine cancels); the table shows
the median ratio and the range over the repeats. One thread. Targets: economy ≤ 1.10, full ≤ 1.5.

Cockpit's nearest configuration reads what our preset reads, as often (:data:`COCKPIT_OF`:
grad_norm → GradNorm, update_ratio → UpdateSize, sharpness → HessMaxEV, noise_scale → NormTest,
gsnr → MeanGSNR, trace → HessTrace; units and stability have no counterpart). Cockpit reads on the current mini-batch (32 samples); the Monitor on a
fixed sample (256 by default). Cockpit is optional (the ``bench`` extra); where it cannot be imported
or run, its error is printed instead of its rows.

    python benchmarks/monitor_overhead.py [--updates 4000] [--repeats 3] [--sample N] [--skip-cockpit]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

import trainlab as tl
from trainlab.instruments import GradNorm, HessianTrace, Monitor, Sharpness
from trainlab.instruments.monitor import Context
from trainlab.instruments.noise import GSNR

MODELS: dict[str, Callable[[int], nn.Module]] = {
    "digits MLP 64-32-32-10": lambda seed: tl.nn.mlp(64, [32, 32], 10, seed=seed),
    "small CNN (digits 8×8)": lambda seed: tl.nn.small_cnn(seed=seed),
}
BATCH, LR = 32, 0.05
SAMPLE: int | None = None  # the Monitor's sample (--sample; None: its default)


def _order(n: int, updates: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    idx = torch.cat([torch.randperm(n, generator=gen) for _ in range(updates * BATCH // n + 1)])
    return [idx[i * BATCH:(i + 1) * BATCH] for i in range(updates)]


#: The Monitor of the last trainlab run of each (model, preset): its readings' seconds, for the cost table.
MONITORS: dict[tuple[str, str], Monitor] = {}


def train_plain(build: Callable[[int], nn.Module], data: Any, updates: int, preset: str | None,
                key: str = "") -> float:
    """Seconds for ``updates`` SGD updates, with a Monitor of ``preset`` (``None``: none)."""
    x, y = data.tensors
    model = build(0)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    options = {} if SAMPLE is None else {"sample": SAMPLE}
    monitor = Monitor(instruments=preset, progress=False, **options) if preset else None
    batches = _order(len(y), updates, 0)
    start = time.perf_counter()
    for idx in batches:
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        value = loss.item()  # every loop logs its loss, watched or not
        if monitor is not None:
            monitor.after_step(model, value, F.cross_entropy, data, opt, batch_size=BATCH)
    seconds = time.perf_counter() - start
    if monitor is not None:
        MONITORS[key, preset] = monitor
    return seconds


def cost_table(model_name: str, step: float) -> None:
    """Each instrument's cost per reading in training updates (median seconds ÷ one update's),
    the overhead each preset's intervals predict, ``1 + Σ cost_i / every_i``, and the factor by
    which to stretch all of a preset's intervals to meet its target."""
    print(f"\n{model_name}: one update {1e3 * step:.3f} ms; a reading's cost in updates (median; first):")
    for preset, target in (("economy", 1.10), ("full", 1.5)):
        monitor = MONITORS[model_name, preset]
        parts, load = [], 0.0
        for inst in monitor.instruments:
            seconds = [r.seconds for r in monitor.history if r.instrument == inst.name]
            if not seconds:
                continue
            cost = statistics.median(seconds) / step
            load += cost / monitor.period(inst)
            parts.append(f"{inst.name} {cost:.1f} ({seconds[0] / step:.0f}) every {monitor.period(inst)}")
        stretch = load / (target - 1)
        print(f"  {preset}: {'; '.join(parts)}\n    predicted {1 + load:.2f}× (target {target:g}×):"
              f" {'met' if stretch <= 1 else f'stretch every interval ×{stretch:.1f} to meet it'}")


def _backpack_ready(model: nn.Module) -> nn.Module:
    """BackPACK knows torch's layers only: the CNN's Reshape becomes nn.Unflatten (same parameters, same function)."""
    layers = [nn.Unflatten(1, (1, 8, 8)) if type(m).__name__ == "Reshape" else m for m in model]
    return nn.Sequential(*layers)


#: The Cockpit quantity nearest to each trainlab instrument (units and stability have none; NormTest,
#: like noise_scale, is a batch-size test from per-sample gradients).
COCKPIT_OF = {"grad_norm": "GradNorm", "update_ratio": "UpdateSize", "sharpness": "HessMaxEV",
              "noise_scale": "NormTest", "gsnr": "MeanGSNR", "trace": "HessTrace"}


def cockpit_plan(kind: str) -> list[tuple[str, int]]:
    """``(Cockpit quantity, interval)`` for each instrument of the trainlab preset ``kind``."""
    monitor = Monitor(instruments=kind, progress=False)
    return [(COCKPIT_OF[i.name], monitor.period(i)) for i in monitor.instruments if i.name in COCKPIT_OF]


def cockpit_quantities(kind: str) -> list[Any]:
    from cockpit import quantities as q
    from cockpit.utils.schedules import linear

    return [getattr(q, name)(linear(every)) for name, every in cockpit_plan(kind)]


def train_cockpit(build: Callable[[int], nn.Module], data: Any, updates: int, kind: str) -> float:
    """The same loop watched by Cockpit (its documented use: an extended model and loss, a
    ``with cockpit(step, info=...)`` around ``backward``)."""
    from backpack import extend
    from cockpit import Cockpit

    x, y = data.tensors
    model = extend(_backpack_ready(build(0)))
    loss_fn, individual = extend(nn.CrossEntropyLoss()), nn.CrossEntropyLoss(reduction="none")
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    cockpit = Cockpit(model.parameters(), quantities=cockpit_quantities(kind))
    batches = _order(len(y), updates, 0)
    start = time.perf_counter()
    for step, idx in enumerate(batches):
        out = model(x[idx])
        loss, losses = loss_fn(out, y[idx]), individual(out, y[idx])
        opt.zero_grad()
        with cockpit(step, info={"batch_size": len(idx), "individual_losses": losses, "loss": loss,
                                 "optimizer": opt}):
            loss.backward(create_graph=cockpit.create_graph(step))
        opt.step()
        loss.item()
    return time.perf_counter() - start


def compare_values(build: Callable[[int], nn.Module], data: Any, samples: int = 256
                   ) -> list[tuple[str, float, float, float | None]]:
    """The shared instruments on one model state and one batch (the first ``samples`` samples):
    trainlab's readings, Cockpit's quantities at a single step on that batch, and — for λ_max
    and the trace — the dense float64 Hessian where it is small enough (an independent reference)."""
    from backpack import extend
    from cockpit import Cockpit
    from cockpit import quantities as q
    from cockpit.utils.schedules import linear

    x, y = data.tensors
    model = build(0)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    for idx in _order(len(y), 100, 1):  # a little training first: values away from the initialisation
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    batch = (x[:samples], y[:samples])
    ctx = Context(model, F.cross_entropy, batch, None, opt, 0, LR, samples)
    ours = {}
    with tl.curvature.analysis_mode(model, "eval"):
        ours["λ_max"] = Sharpness(every=1).read(ctx)["value"]
        ours["trace"] = HessianTrace(every=1, samples=200).read(ctx)["value"]
        ours["gradient norm"] = GradNorm(every=1).read(ctx)["value"]
        ours["gsnr"] = GSNR(every=1).read(ctx)["value"]
    exact: dict[str, float] = {}
    if sum(p.numel() for p in model.parameters()) <= 4000:
        import copy
        h = tl.curvature.hessian(copy.deepcopy(model).double(), F.cross_entropy, (batch[0].double(), batch[1]),
                                 max_seconds=None)
        exact = {"λ_max": float(torch.linalg.eigvalsh(h)[-1]), "trace": float(h.trace())}
    model = extend(_backpack_ready(model))
    loss_fn, individual = extend(nn.CrossEntropyLoss()), nn.CrossEntropyLoss(reduction="none")
    every = linear(1)
    cockpit = Cockpit(model.parameters(), quantities=[q.HessMaxEV(every), q.HessTrace(every), q.GradNorm(every),
                                                       q.MeanGSNR(every)])
    model.eval()
    out = model(batch[0])
    loss, losses = loss_fn(out, batch[1]), individual(out, batch[1])
    opt.zero_grad()
    with cockpit(0, info={"batch_size": samples, "individual_losses": losses, "loss": loss, "optimizer": opt}):
        loss.backward(create_graph=cockpit.create_graph(0))
    got = cockpit.get_output()[0]
    theirs = {"λ_max": float(got["HessMaxEV"]), "trace": float(sum(got["HessTrace"])),
              "gradient norm": float(sum(v ** 2 for v in got["GradNorm"]) ** 0.5), "gsnr": float(got["MeanGSNR"])}
    return [(name, ours[name], theirs[name], exact.get(name)) for name in ours]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--updates", type=int, default=4000, help="updates per run (4,000: every preset interval is read)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--sample", type=int, default=None, help="the Monitor's sample (default: the Monitor's own)")
    p.add_argument("--skip-cockpit", action="store_true", help="time trainlab only")
    args = p.parse_args()
    torch.set_num_threads(1)
    global SAMPLE
    SAMPLE = args.sample
    train, _ = tl.data.load_digits(seed=0)
    cockpit_error = "skipped (--skip-cockpit)" if args.skip_cockpit else None
    try:
        if cockpit_error is None:
            import backpack  # noqa: F401
            import cockpit  # noqa: F401
    except Exception as e:  # ImportError, or a dependency that breaks on import
        cockpit_error = f"could not be imported — {type(e).__name__}: {e}"
    print(f"torch {torch.__version__}, 1 thread, {args.updates} updates of batch {BATCH}, {args.repeats}"
          f" alternating repeats, the Monitor's sample {SAMPLE or Monitor().sample}\n")
    steps: dict[str, float] = {}
    print("| model | configuration | seconds (median) | ÷ no monitor (median of repeats) | range | target |")
    print("|---|---|---|---|---|---|")
    for model_name, build in MODELS.items():
        configs: dict[str, Callable[[], float]] = {
            "none": lambda: train_plain(build, train, args.updates, None),
            "trainlab economy": lambda: train_plain(build, train, args.updates, "economy", model_name),
            "trainlab full": lambda: train_plain(build, train, args.updates, "full", model_name),
        }
        if cockpit_error is None:
            configs["Cockpit economy-like"] = lambda: train_cockpit(build, train, args.updates, "economy")
            configs["Cockpit full-like"] = lambda: train_cockpit(build, train, args.updates, "full")
        times: dict[str, list[float]] = {name: [] for name in configs}
        failed: dict[str, str] = {}
        for _ in range(args.repeats):
            for name, run in configs.items():
                if name in failed:
                    continue
                try:
                    times[name].append(run())
                except (RuntimeError, NotImplementedError, TypeError, ValueError, KeyError) as e:
                    failed[name] = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        base = statistics.median(times["none"])
        for name in configs:
            target = {"trainlab economy": "≤ 1.10", "trainlab full": "≤ 1.5"}.get(name, "")
            if name in failed:
                print(f"| {model_name} | {name} | failed: {failed[name]} | | | |")
                continue
            ratios = [t / b for t, b in zip(times[name], times["none"])]
            t = statistics.median(times[name])
            print(f"| {model_name} | {name} | {t:.3f} | {statistics.median(ratios):.3f} |"
                  f" {min(ratios):.2f}–{max(ratios):.2f} | {target} |", flush=True)
        steps[model_name] = base / args.updates
    for model_name, step in steps.items():
        cost_table(model_name, step)
    print()
    if cockpit_error is not None:
        print(f"Cockpit: {cockpit_error}")
        return 0
    for kind in ("economy", "full"):
        print(f"Cockpit {kind}-like: " + ", ".join(f"{name} every {every}" for name, every in cockpit_plan(kind)))
    print()
    print("Shared instruments, one model state (the MLP and CNN after 100 SGD updates), one batch of 256 samples:\n")
    print("| model | instrument | trainlab | Cockpit | trainlab ÷ Cockpit | dense Hessian (float64) |")
    print("|---|---|---|---|---|---|")
    for model_name, build in MODELS.items():
        try:
            rows = compare_values(build, train)
        except (RuntimeError, NotImplementedError, TypeError, ValueError, KeyError) as e:
            print(f"| {model_name} | failed: {' '.join(f'{type(e).__name__}: {e}'.split())[:300]} | | | | |")
            continue
        for name, ours, theirs, exact in rows:
            print(f"| {model_name} | {name} | {ours:.6g} | {theirs:.6g} | {ours / theirs:.4f} |"
                  f" {'—' if exact is None else f'{exact:.6g}'} |")
    print("\ntrace: trainlab Hutchinson (Hutch++, 200 products; an estimate), Cockpit BackPACK's exact diagonal."
          " gsnr: trainlab averages G²/Σ over coordinates some sample moves (sample variance), Cockpit over all"
          " coordinates with the population variance and ε = 1e-5 in the denominator.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
