"""Figures built on :class:`matplotlib.figure.Figure` directly, so drawing one never touches
pyplot's global state or needs a display."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from matplotlib.figure import Figure

if TYPE_CHECKING:
    from trainlab.nn.surface import Surface


def learning_rate_figure(lrs: Sequence[float], title: str) -> Figure:
    """The learning rate of each update, ``η^t`` against ``t``."""
    fig = Figure(figsize=(6.4, 3.6), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(range(len(lrs)), lrs, color="tab:blue")
    ax.set(xlabel="update $t$", ylabel=r"learning rate $\eta^t$", xlim=(0, max(len(lrs) - 1, 1)))
    ax.set_title(title, fontsize="medium", wrap=True)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    return fig


def save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG to ``path``, atomically (a temporary sibling moved over it), so a
    full disk or an interruption never leaves a torn figure; a symbolic link is written
    through, to its target. An :class:`OSError` names ``path``."""
    path = Path(path)
    target = path if path.is_symlink() else path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(target, dpi=120, format="png")
        os.replace(target, path)
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None
    finally:
        if target != path:
            target.unlink(missing_ok=True)
    return path


def surface_figure(surface: Surface, title: str = "", levels: int = 30) -> Figure:
    """Contours of a :class:`trainlab.nn.surface.Surface`, the current parameters marked."""
    fig = Figure(figsize=(5.2, 4.4), layout="constrained")
    ax = fig.add_subplot()
    a, b = surface.alphas.numpy(), surface.betas.numpy()
    filled = ax.contourf(a, b, surface.loss.T.numpy(), levels=levels, cmap="viridis")
    fig.colorbar(filled, ax=ax, label="loss")
    ax.plot([0], [0], marker="*", color="white", markersize=12, markeredgecolor="black")
    ax.set(xlabel=r"$\alpha$ (direction 1)", ylabel=r"$\beta$ (direction 2)")
    ax.set_title(title or f"loss around θ (centre {surface.center:.4g})", fontsize="medium")
    return fig


def spectrum_figure(eigenvalues: Sequence[float], title: str, grid: Sequence[float] | None = None,
                    density: Sequence[float] | None = None) -> Figure:
    """The eigenvalues found (sorted), and the spectral density beside them when given."""
    fig = Figure(figsize=(10.0 if density is not None else 5.6, 3.8), layout="constrained")
    axes = fig.subplots(1, 2 if density is not None else 1)
    left = axes[0] if density is not None else axes
    values = sorted(float(v) for v in eigenvalues)
    left.plot(range(len(values)), values, "o", ms=3)
    left.axhline(0, color="gray", lw=0.8)
    left.set(xlabel="index (ascending)", ylabel="eigenvalue λ", title=title)
    left.grid(alpha=0.3)
    if density is not None:
        right = axes[1]
        right.plot(grid, density)
        right.set_yscale("log")
        right.set(xlabel="λ", ylabel="density", title="spectral density (stochastic Lanczos quadrature)")
        right.grid(alpha=0.3)
    return fig
