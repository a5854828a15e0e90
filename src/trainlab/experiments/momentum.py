"""Lecture part 2 — momentum: a ball rolling downhill keeps its speed over a small bump.

* a one-dimensional error surface with a local minimum before the global one: plain
  gradient descent stops in the first valley, gradient descent with momentum
  (``m = λm − η g``, ``θ = θ + m``) rolls through to the second;
* the lecture's form of momentum equals ``torch.optim.SGD(momentum=λ)`` at a constant
  learning rate (and differs from it under a schedule, where PyTorch rescales past steps).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

import trainlab as tl
from trainlab.experiments.result import Config, Result, stages

NAME = "momentum"
TITLE = "Momentum: rolling over a small bump"
LR, MOMENTUM, START = 0.01, 0.9, -2.5


def surface(theta: torch.Tensor) -> torch.Tensor:
    """``L(θ) = θ⁴/4 − θ³/2 − 0.75θ² + 0.7θ``: minima near −0.93 (local) and 2.06 (global)."""
    return theta ** 4 / 4 - theta ** 3 / 2 - 0.75 * theta ** 2 + 0.7 * theta


def run(config: Config | None = None) -> Result:
    """Lecture part 2, momentum: :func:`rolling`, then :func:`equivalence`.

    Parameters:
        config: a :class:`~trainlab.experiments.result.Config` (default ``None``: ``Config()``). ``quick``
            runs 150 descent steps instead of 300; ``seed`` picks the digits split and the MLP's weights in
            :func:`equivalence`; ``progress`` shows a bar over the 2 stages.

    Returns:
        A :class:`~trainlab.experiments.result.Result` named ``"momentum"`` (``seconds`` set) with the table
        ``ends``, the figure ``rolling`` and three claims (plain gradient descent stops in the local minimum;
        momentum rolls into the lower valley; the lecture's momentum is PyTorch's at a constant η).
    """
    config = config or Config()
    result = Result(NAME, TITLE, config=config)
    with stages(result, 2) as bar:
        rolling(result, config)
        bar.update()
        equivalence(result, config)
        bar.update()
    return result


def _descend(momentum: float, steps: int) -> list[float]:
    theta = torch.tensor([START], dtype=torch.float64, requires_grad=True)
    opt = tl.optim.SGD([theta], lr=LR, momentum=momentum)
    path = [START]
    for _ in range(steps):
        opt.zero_grad()
        surface(theta).sum().backward()
        opt.step()
        path.append(float(theta.detach()))
    return path


def rolling(result: Result, config: Config) -> None:
    """Gradient descent with and without momentum on ``L(θ) = θ⁴/4 − θ³/2 − 0.75θ² + 0.7θ`` from θ = −2.5.

    Lecture claim: with momentum ``m = λm − ηg``, ``θ = θ + m``, a ball rolls over a small bump into the lower
    valley, where plain gradient descent stops in the first (local) minimum. η = 0.01, λ = 0.9.

    Parameters:
        result: the :class:`~trainlab.experiments.result.Result` to add to (no default).
        config: ``quick``: 150 updates (else 300); ``seed`` is not used.

    Returns:
        ``None``. Adds the table ``ends`` (per method: final θ, final loss, largest θ reached), two claims
        and the figure ``rolling``.
    """
    steps = 150 if config.quick else 300
    minima = sorted(r.real for r in np.roots([1, -1.5, -1.5, 0.7]) if abs(r.imag) < 1e-12)
    local, bump, best = minima  # L′ = θ³ − 1.5θ² − 1.5θ + 0.7: two minima around a maximum
    plain, heavy = _descend(0.0, steps), _descend(MOMENTUM, steps)
    result.table("ends", ["method", "final θ", "final loss", "max θ reached"],
                 [["gradient descent", plain[-1], float(surface(torch.tensor(plain[-1]))), max(plain)],
                  [f"momentum λ = {MOMENTUM}", heavy[-1], float(surface(torch.tensor(heavy[-1]))), max(heavy)]])
    result.claim("Plain gradient descent stops in the first (local) minimum.",
                 max(plain) < bump and abs(plain[-1] - local) < 1e-2,
                 f"η = {LR}, {steps} steps from θ = {START}: never passes the bump at {bump:.4f}, ends at θ ="
                 f" {plain[-1]:.4f} (local minimum {local:.4f})")
    result.claim("With momentum the same descent rolls over the bump into the lower valley.",
                 abs(heavy[-1] - best) < 1e-2 and max(heavy) > bump,
                 f"λ = {MOMENTUM}: ends at θ = {heavy[-1]:.4f} (global minimum {best:.4f}, bump at {bump:.4f});"
                 f" L = {float(surface(torch.tensor(heavy[-1]))):.4f} against {float(surface(torch.tensor(plain[-1]))):.4f}",
                 "a ball rolling over a small bump into the lower valley")
    result.figure("rolling", "Gradient descent with and without momentum on a 1-D error surface",
                  _figure(plain, heavy))


def _figure(plain: list[float], heavy: list[float]) -> Figure:
    """The surface with the points each descent visited, and θ over the updates: stacked panels."""
    fig = Figure(figsize=(6.4, 8.4), layout="constrained")
    top, bottom = fig.subplots(2, 1)
    grid = torch.linspace(-2.7, 3.0, 400, dtype=torch.float64)
    local, bump, best = sorted(r.real for r in np.roots([1, -1.5, -1.5, 0.7]) if abs(r.imag) < 1e-12)
    top.plot(grid, surface(grid), "k-", lw=1, label="L(θ) = θ⁴/4 − θ³/2 − 0.75θ² + 0.7θ")
    styles = ((plain, "tab:blue", "o", "-", "gradient descent"),
              (heavy, "tab:red", "^", "--", f"momentum λ = {MOMENTUM}"))
    for path, colour, marker, line, label in styles:
        pts = torch.tensor(path[::3], dtype=torch.float64)
        top.plot(pts, surface(pts), marker, ms=4, color=colour, alpha=0.6, label=f"{label} (every 3rd point)")
        bottom.plot(path, line, color=colour, lw=1.6, label=label)
    for value, name, style in ((local, "local minimum", ":"), (bump, "the bump (a maximum)", "-."),
                               (best, "global minimum", "--")):
        bottom.axhline(value, color="gray", ls=style, lw=1, label=f"{name}, θ = {value:.2f}".replace("-", "−"))
    top.set(xlabel="θ", ylabel="L(θ)", title="the error surface and the points visited")
    bottom.set(xlabel="update", ylabel="θ", title="θ over the updates")
    top.legend(fontsize=9, loc="upper center")
    bottom.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    top.grid(alpha=0.3)
    bottom.grid(alpha=0.3)
    return fig


def equivalence(result: Result, config: Config) -> None:
    """trainlab's SGD against ``torch.optim.SGD``, both with momentum λ = 0.9, at a constant η and under a decay.

    Lecture formula: ``mⁱ = λ mⁱ⁻¹ − η gⁱ⁻¹``, ``θⁱ = θⁱ⁻¹ + mⁱ`` equals PyTorch's
    ``SGD(momentum=λ)`` at a constant learning rate. 100 full-batch steps (η = 0.05) on an MLP 64-16-10 in
    float64 on 256 digits, with and without ``ExponentialLR(0.97)``.

    Parameters:
        result: the :class:`~trainlab.experiments.result.Result` to add to (no default).
        config: ``seed`` picks the digits split and the initial weights; ``quick`` is not used.

    Returns:
        ``None``. Adds one claim, held when the largest parameter difference at a constant η is below 1e-10
        (the evidence gives the difference under the decay too). An identity, true or false whatever the seed,
        so it rests on one run; the rolling claims have no random draw at all.
    """
    train, _ = tl.data.load_digits(seed=config.seed)
    x, y = train.tensors[0][:256].double(), train.tensors[1][:256]
    finals = {}
    for name, make in (("trainlab", tl.optim.SGD), ("torch", torch.optim.SGD)):
        for schedule in (False, True):
            model = tl.nn.mlp(64, [16], 10, seed=config.seed).double()
            opt = make(model.parameters(), lr=0.05, momentum=MOMENTUM)
            sched = torch.optim.lr_scheduler.ExponentialLR(opt, 0.97) if schedule else None
            for _ in range(100):
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
                if sched:
                    sched.step()
            finals[name, schedule] = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
    same = float((finals["trainlab", False] - finals["torch", False]).abs().max())
    scheduled = float((finals["trainlab", True] - finals["torch", True]).abs().max())
    result.claim("The lecture's momentum m = λm − ηg, θ = θ + m is PyTorch's SGD(momentum=λ) at a constant"
                 " learning rate.", same < 1e-10,
                 f"100 steps on an MLP (float64): largest parameter difference {same:.1e}; under an exponential decay"
                 f" of η they differ by {scheduled:.1e}, because PyTorch scales every past gradient by the current η",
                 "mⁱ = λ mⁱ⁻¹ − η gⁱ⁻¹, θⁱ = θⁱ⁻¹ + mⁱ")
