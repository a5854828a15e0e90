"""Figures built on :class:`matplotlib.figure.Figure` directly, so drawing one never touches
pyplot's global state or needs a display."""

from __future__ import annotations

import os
from copy import deepcopy
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from matplotlib.figure import Figure
from matplotlib.gridspec import GridSpec

if TYPE_CHECKING:
    from trainlab.curvature.layerwise import Layerwise
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
    """Contours of a :class:`trainlab.nn.surface.Surface`, the current parameters marked (in the legend)."""
    fig = Figure(figsize=(6.4, 5.2), layout="constrained")
    ax = fig.add_subplot()
    a, b = surface.alphas.numpy(), surface.betas.numpy()
    filled = ax.contourf(a, b, surface.loss.T.numpy(), levels=levels, cmap="viridis")
    fig.colorbar(filled, ax=ax).set_label("loss")
    ax.plot([0], [0], marker="*", color="white", markersize=12, markeredgecolor="black", linestyle="none",
            label=r"current parameters $\theta$")
    ax.legend(loc="upper right", fontsize="small")
    ax.set(xlabel=r"$\alpha$ (direction 1)", ylabel=r"$\beta$ (direction 2)")
    ax.set_title(title or f"loss around θ (centre {surface.center:.4g})", fontsize="medium")
    return fig


def spectrum_figure(eigenvalues: Sequence[float], title: str, grid: Sequence[float] | None = None,
                    density: Sequence[float] | None = None) -> Figure:
    """The eigenvalues found (sorted), and below them the spectral density when given: panels
    stacked, so the figure stays legible on a narrow screen."""
    fig = Figure(figsize=(6.4, 7.2 if density is not None else 3.8), layout="constrained")
    axes = fig.subplots(2 if density is not None else 1, 1)
    top = axes[0] if density is not None else axes
    values = sorted(float(v) for v in eigenvalues)
    top.plot(range(len(values)), values, "o", ms=3, label="eigenvalue")
    top.axhline(0, color="gray", lw=0.8, label=r"$\lambda = 0$")
    top.set(xlabel="index (ascending)", ylabel="eigenvalue λ")
    top.set_title(title, fontsize="medium", wrap=True)
    top.legend(fontsize="small")
    top.grid(alpha=0.3)
    if density is not None:
        bottom = axes[1]
        bottom.plot(grid, density)
        bottom.set_yscale("log")
        bottom.set(xlabel="λ", ylabel="density")
        bottom.set_title("spectral density (stochastic Lanczos quadrature)", fontsize="medium")
        bottom.grid(alpha=0.3)
    return fig


def layerwise_figure(result: Layerwise) -> Figure:
    """Per row of :func:`trainlab.curvature.layerwise` (top to bottom), ``λ_max`` (upper bar) and
    ``λ_min`` (lower, lighter bar) on a symmetric-log axis, coloured by the block's verdict; a
    diamond at 0 where both are flat; coupling rows hatched and their names in italics. The axis
    is linear within ``±linthresh``, a thousandth of the largest ``|λ|`` (at least the largest
    flat threshold)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    colours = {"saddle": "tab:red", "local_minimum": "tab:blue", "local_maximum": "tab:purple",
               "degenerate": "tab:gray", "not_critical": "tab:orange"}
    rows = result.rows
    fig = Figure(figsize=(7.2, 1.9 + 0.34 * len(rows)), layout="constrained")
    ax = fig.add_subplot()
    y = list(range(len(rows)))[::-1]  # the first row on top, as in the table
    for pos, r in zip(y, rows):
        colour = colours.get(r.verdict, "black")
        hatch = "//" if r.coupling else None
        ax.barh(pos + 0.19, r.lambda_max, height=0.36, color=colour, hatch=hatch, edgecolor="white")
        ax.barh(pos - 0.19, r.lambda_min, height=0.36, color=colour, alpha=0.45, hatch=hatch, edgecolor="white")
        if max(abs(r.lambda_max), abs(r.lambda_min)) <= r.flat_threshold:
            ax.plot([0], [pos], marker="D", ms=6, color=colour, linestyle="none")
    zero = ax.axvline(0, color="black", lw=0.8, label=r"$\lambda = 0$")
    largest = max([abs(v) for r in rows for v in (r.lambda_max, r.lambda_min)] + [0.0])
    floor = max([r.flat_threshold for r in rows] + [0.0])
    ax.set_xscale("symlog", linthresh=max(1e-3 * largest, floor) if largest > 0 else 1.0)
    if largest > 0:
        ax.set_xlim(-1.6 * largest, 1.6 * largest)
    ax.set_yticks(y, [r.name if len(r.name) <= 28 else r.name[:13] + "…" + r.name[-14:] for r in rows])
    for label, r in zip(ax.get_yticklabels(), rows):
        label.set_fontstyle("italic" if r.coupling else "normal")
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel("eigenvalue λ of the block (symmetric log scale)")
    ax.grid(axis="x", alpha=0.3)
    saddles = result.saddles
    what = {"ggn": "Gauss–Newton", "fisher": "empirical Fisher"}.get(result.operator, "Hessian")
    ax.set_title(f"{what} blocks by layer: " + (f"saddle in {', '.join(saddles)}" if saddles
                                                else "no block is a saddle"), fontsize="medium", wrap=True)
    shown = [v for v in colours if any(r.verdict == v for r in rows)]
    handles = [Patch(color="0.15", label=r"$\lambda_{max}$ (upper bar)"),
               Patch(color="0.15", alpha=0.45, label=r"$\lambda_{min}$ (lower bar)")]
    handles += [Patch(color=colours[v], label=v.replace("_", " ")) for v in shown]
    if any(max(abs(r.lambda_max), abs(r.lambda_min)) <= r.flat_threshold for r in rows):
        handles.append(Line2D([], [], marker="D", ms=6, color="0.15", linestyle="none", label="all eigenvalues flat"))
    if any(r.coupling for r in rows):
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="//",
                             label="coupling a + b (italic): joint block"))
    handles.append(zero)
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize="small")
    return fig


def stacked(fig: Figure) -> Figure | None:
    """A copy of a figure of panels side by side (an ``r × c`` grid of subplots, ``c > 1``) with
    its panels stacked one above the other, each as wide as it was, for a narrow screen; ``None``
    for a figure of one column (nothing to stack) or one whose axes are not all in one grid.

    The copy keeps each panel's contents, colour bar, legend and title (twin axes move with their
    panel); panels go top to bottom in reading order (row by row), each with its own y tick
    labels and y label where a shared y axis had hidden them; the copy's size is ``(w / c, h · c)``
    for the figure's ``(w, h)``, laid out by the constrained layout engine. The figure passed in
    is not changed.
    """
    specs = [ax.get_subplotspec() for ax in fig.axes]
    grids = {spec.get_gridspec() for spec in specs if spec is not None}
    if len(grids) != 1:
        return None
    (grid,) = grids
    rows, cols = grid.get_geometry()
    if cols < 2 or not isinstance(grid, GridSpec):
        return None
    if any(spec is not None and (len(spec.rowspan) != 1 or len(spec.colspan) != 1) for spec in specs):
        return None  # a panel spanning cells has no single place in a column
    copy = deepcopy(fig)  # never pickle.loads: nothing here unpickles, not even our own figure
    width, height = fig.get_size_inches()
    copy.set_size_inches(width / cols, height * cols)
    if copy.get_layout_engine() is None:
        copy.set_layout_engine("constrained")
    tall = GridSpec(rows * cols, 1, figure=copy)
    panels = [ax for ax in copy.axes if ax.get_subplotspec() is not None]  # colour bars: placed by the layout
    for ax in panels:
        spec = ax.get_subplotspec()
        ax.set_subplotspec(tall[spec.rowspan.start * cols + spec.colspan.start, 0])
    for ax in panels:  # a shared y axis shows its labels on the left column only; every panel is that now
        siblings = [a for a in ax.get_shared_y_axes().get_siblings(ax) if a is not ax]
        if siblings and ax.yaxis.get_label_position() == "left":
            ax.yaxis.set_tick_params(labelleft=True)
            ax.set_ylabel(ax.get_ylabel() or next((a.get_ylabel() for a in siblings if a.get_ylabel()), ""))
    # The layout engine sizes the margins from the tick labels of the last draw, made at the old
    # shape; one draw at the new shape lets the saved one lay out what it shows.
    copy.draw_without_rendering()
    return copy


def problems(fig: Figure, min_points: float = 9.0) -> list[str]:
    """What keeps ``fig`` from reading on its own, one sentence each (empty when nothing does):
    a colour bar without a label; a reference line (``axhline``/``axvline``) without a label; a
    labelled line or collection in no legend of the figure (one legend may serve panels that share
    their colours); tick labels smaller than ``min_points`` points, legend text smaller than 8.

    Draws nothing; ``fig`` is not changed.
    """
    found = []
    legends = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    shown = {t.get_text() for legend in legends for t in legend.get_texts()}
    tiny = sorted({t.get_fontsize() for legend in legends for t in legend.get_texts() if t.get_fontsize() < 8})
    if tiny:
        found.append(f"legend text of {tiny[0]:.3g} pt (< 8)")
    for n, ax in enumerate(fig.axes, 1):
        name = f"panel {n}" + (f" ({ax.get_title()!r})" if ax.get_title() else "")
        colorbar = getattr(ax, "_colorbar", None)
        if colorbar is not None:
            if not (ax.get_ylabel() or ax.get_xlabel()):
                found.append(f"{name}: a colour bar without a label")
            continue
        for line in ax.lines:
            label = str(line.get_label())
            reference = line.get_transform() in (ax.get_xaxis_transform(), ax.get_yaxis_transform())
            if reference and label.startswith("_"):
                found.append(f"{name}: a reference line without a label")
            elif not label.startswith("_") and label not in shown:
                found.append(f"{name}: {label!r} is not in a legend")
        for collection in ax.collections:
            label = str(collection.get_label())
            if not label.startswith("_") and label not in shown:
                found.append(f"{name}: {label!r} is not in a legend")
        for axis in (ax.xaxis, ax.yaxis):
            sizes = [t.get_fontsize() for t in axis.get_ticklabels()]
            if sizes and min(sizes) < min_points:
                found.append(f"{name}: {axis.axis_name} tick labels of {min(sizes):g} pt (< {min_points:g})")
    return found
