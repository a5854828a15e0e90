"""Figures built on :class:`matplotlib.figure.Figure` directly, so drawing one never touches
pyplot's global state or needs a display."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from matplotlib.figure import Figure


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
