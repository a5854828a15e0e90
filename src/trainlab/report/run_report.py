"""A run's report: ``RUN/report.html`` for a run directory of ``trainlab train``.

One self-contained HTML page (every figure a PNG embedded as a ``data:`` URI, no external
asset, no script), laid out for a phone as well as a desktop: figures in a grid that
stacks into one column on a narrow screen, each figure at most the screen's width and a tap
away from its full-size image. It shows

* the configuration (``config.toml``) in one line and in full;
* the training curves: the loss of every update (``steps.jsonl``) and of every epoch,
  training and test (``metrics.jsonl``), the accuracy, and the learning rate when a
  schedule moves it;
* every instrument of ``instruments.jsonl`` (written by :class:`trainlab.instruments.Monitor`)
  over the updates, one panel each: the value, the per-tensor parts of ``grad_norm`` and
  ``update_ratio`` as thin lines, the dead and saturated shares of each layer for ``units``,
  the line 2/η on ``sharpness`` (η of each update, so it follows a schedule), the
  divergence threshold on ``stability``, the batch size against B_simple on ``noise_scale``;
* the stall doctor's events (lines of ``metrics.jsonl`` with an ``"event"`` key) as labelled
  vertical lines on every panel and in a table.

A run without ``instruments.jsonl`` still gets its curves and events. The logs are read as
the Trainer reads them: a torn last line (a write cut short) is ignored, any other damaged
line is a :class:`~trainlab.errors.DataError` naming the file and line. Figures are
:class:`matplotlib.figure.Figure` objects, never pyplot, so building one touches no global
state.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from matplotlib.figure import Figure

from trainlab import __version__, _toml
from trainlab.errors import ConfigError, DataError
from trainlab.train import rundir
from trainlab.train.checkpoint import write_text

NO_READINGS = "no instrument readings (train with --monitor)"
#: The run's files the report reads.
READ = ("config.toml", "summary.json", "metrics.jsonl", "steps.jsonl", "instruments.jsonl")

# Sizes chosen for a phone: a figure 4.8 in wide is drawn about 370 px wide on a 390 px
# screen (a pixel per point), where these font sizes read at 11 px or more; embedded at 160
# dpi, so the image is sharp on a screen of two pixels per CSS pixel, and in the full-size view.
WIDTH, HEIGHT, DPI = 4.8, 3.6, 160
TICK, LABEL, TITLE, LEGEND = 12, 13, 13.5, 11
EVENT_COLOR = "tab:red"
MAX_PARTS = 12  # thin lines per panel; more would be unreadable
#: Instruments whose parts are parameter tensors in the model's order: a layer story, drawn over depth.
DEPTH = ("grad_norm", "update_ratio")


@dataclass
class Spec:
    """How one instrument is drawn and explained."""

    title: str
    ylabel: str
    label: str  # of the value's line
    caption: str


SPECS: dict[str, Spec] = {
    "grad_norm": Spec(
        "gradient norm", "‖∇L‖", "‖∇L‖, all parameters",
        "‖∇L‖, the norm of the loss gradient on the monitor's fixed sample (thick line), and of each parameter"
        " tensor's part (thin lines). A norm that falls towards zero while the loss stays high is a stall at a"
        " critical point; one that grows by orders of magnitude is a sign of instability."),
    "update_ratio": Spec(
        "update ratio", "‖Δθ‖ / ‖θ‖", "‖Δθ‖/‖θ‖, all parameters",
        "‖Δθ‖/‖θ‖, the size of the last update relative to the parameters, over all parameters (thick line) and"
        " per tensor (thin lines). A common rule of thumb puts healthy values near 1e-3: far below, the layer"
        " barely learns; far above, its updates are unstable."),
    "units": Spec(
        "dead or saturated units", "share of units", "dead or saturated, all layers",
        "The share of units that are dead (a ReLU whose output is 0 for every sample) or saturated (tanh with"
        " |y| > 0.99, sigmoid with y < 0.01 or y > 0.99 for every sample) on the monitor's sample, over all"
        " activation layers (thick line) and per layer (thin lines: dead solid, saturated dashed). Such units pass"
        " no gradient; the lecture's remedies are a better initialisation and normalisation."),
    "sharpness": Spec(
        "sharpness", "λ_max", "λ_max (sharpness)",
        "λ_max, the largest eigenvalue of the loss Hessian on the monitor's sample (Lanczos, warm-started from the"
        " previous reading's eigenvector). Gradient descent with step η diverges along a direction whose curvature"
        " exceeds 2/η, drawn with the η of each update; under full-batch gradient descent λ_max tends to rise to"
        " 2/η and hover there (the edge of stability, Cohen et al. 2021)."),
    "stability": Spec(
        "stability", "η · λ_max", "η·λ_max",
        "η·λ_max for SGD-type updates, and η·λ_max(P⁻¹H) for Adam, RMSProp and Adagrad, with P the optimizer's"
        " current diagonal preconditioner (Cohen et al. 2022). Above the optimizer's threshold (2 for gradient"
        " descent, 2(1 + μ) with momentum μ, (2 + 2β₁)/(1 − β₁) = 38 for Adam with β₁ = 0.9) the step overshoots"
        " along the sharpest direction and diverges; far below it the step is small for the curvature (a crawl)."),
    "noise_scale": Spec(
        "gradient noise scale", "samples", "B_simple = tr(Σ)/‖G‖²",
        "B_simple = tr(Σ)/‖G‖², the simple gradient noise scale from per-sample gradients (McCandlish et al. 2018),"
        " against the batch size of the run. Batches well below B_simple are noise-dominated, so a larger batch"
        " makes each update nearly proportionally more useful; batches well above it spend samples for little"
        " gain."),
    "gsnr": Spec(
        "gradient signal-to-noise ratio", "ratio", "GSNR, mean over parameters",
        "GSNR, the mean over parameters of G_i²/Σ_ii (the squared mean gradient over the per-sample variance), and"
        " when present the norm test statistic of Byrd et al. 2012 (the batch is large enough while it stays at"
        " or below θ²)."),
    "trace": Spec(
        "Hessian trace", "tr(H)", "tr(H), Hutchinson estimate",
        "tr(H), the trace of the loss Hessian on the monitor's sample, estimated by Hutchinson's method"
        " E[vᵀHv] over random sign vectors v: the sum of all curvatures, where λ_max is the largest."),
}


@dataclass
class Run:
    """What the report shows of a run directory."""

    path: Path
    config: dict[str, Any]  # config.toml, parsed ({} when there is none)
    summary: dict[str, Any]  # summary.json ({} when there is none)
    epochs: list[dict[str, Any]]  # metrics.jsonl, the epochs' lines
    events: list[dict[str, Any]]  # metrics.jsonl, the lines with an "event" key, by step
    steps: list[dict[str, Any]]  # steps.jsonl
    readings: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # instrument -> readings by step
    has_instruments: bool = False  # instruments.jsonl exists

    def last_step(self) -> int:
        """The last update any file of the run mentions."""
        return max([r["step"] for r in (*self.steps, *self.epochs, *self.events)]
                   + [r["step"] for rs in self.readings.values() for r in rs], default=0)

    def learning_rates(self) -> list[tuple[int, float]]:
        """``(step, η)`` of every update, from ``steps.jsonl``; else the configured η at the
        run's first and last step; else none."""
        lrs = [(r["step"], float(r["lr"])) for r in self.steps if _drawable(r.get("lr"))]
        if lrs:
            return lrs
        lr = self.config.get("optimizer", {}).get("lr") if isinstance(self.config.get("optimizer"), dict) else None
        return [(0, float(lr)), (max(self.last_step(), 1), float(lr))] if _drawable(lr) else []


@dataclass
class Panel:
    """One figure of the report and its caption (plain text)."""

    key: str
    title: str
    figure: Figure
    caption: str
    instrument: bool = False


# ------------------------------------------------------------------------------------------ reading
def read(run_dir: str | Path) -> Run:
    """The run directory's files, checked. A missing directory, or one that is not a run of
    ``trainlab train``, is a :class:`ConfigError`; a damaged file a :class:`DataError`."""
    path = Path(run_dir)
    if not path.exists():
        raise ConfigError(f"run directory {str(path)!r} does not exist; give the directory `trainlab train --out`"
                          " wrote")
    if not path.is_dir():
        raise ConfigError(f"{str(path)!r} is a file, not a run directory; give the directory `trainlab train --out`"
                          " wrote")
    if not any(os.path.lexists(path / name) for name in ("metrics.jsonl", "steps.jsonl")):
        raise ConfigError(f"{str(path)!r} is not a run directory of `trainlab train`: it holds no metrics.jsonl"
                          " or steps.jsonl")
    rundir.check_run_files(path, READ)  # each a regular file, before any is read (a named pipe would block)
    config = _read_toml(path / "config.toml")
    summary = _read_json(path / "summary.json")
    metrics = read_jsonl(path / "metrics.jsonl", _check_metrics)
    steps = read_jsonl(path / "steps.jsonl", _check_step)
    readings: dict[str, list[dict[str, Any]]] = {}
    for record in read_jsonl(path / "instruments.jsonl", _check_reading):
        readings.setdefault(record["instrument"], []).append(record)
    for records in readings.values():
        records.sort(key=lambda r: r["step"])
    events = sorted((r for r in metrics if "event" in r), key=lambda r: r["step"])
    return Run(path, config, summary, [r for r in metrics if "event" not in r], events, steps, readings,
               (path / "instruments.jsonl").exists())


def read_jsonl(path: Path, check: Callable[[Any], str | None]) -> list[dict[str, Any]]:
    """The records of a JSON-lines file of the run (:func:`trainlab.train.rundir.read_records`):
    a torn last line is ignored, as the Trainer does; any other damaged line, or one that
    ``check`` finds wrong, is a :class:`DataError` naming the file and line."""
    return rundir.read_records(path, check, "repair or delete that line and run the report again")[0]


def _check_metrics(record: Any) -> str | None:
    event = isinstance(record, dict) and "event" in record
    return rundir.record_problem(record, ("step",) if event else ("step", "epoch"),
                                 rundir.NUMBER_FIELDS["metrics.jsonl"][:4])


def _check_step(record: Any) -> str | None:
    return rundir.record_problem(record, ("step",), rundir.NUMBER_FIELDS["steps.jsonl"])


def _check_reading(record: Any) -> str | None:
    if isinstance(record, dict) and (not isinstance(record.get("instrument"), str) or not record["instrument"]):
        return "it needs an instrument name (a string) under 'instrument'"
    return rundir.record_problem(record, ("step",), rundir.NUMBER_FIELDS["instruments.jsonl"])


def _read_toml(path: Path) -> dict[str, Any]:
    data = rundir.read_bounded(path, "configuration")
    if data is None:
        return {}
    try:
        return _toml.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, _toml.TOMLDecodeError) as e:
        raise DataError(f"{str(path)!r} is not valid TOML ({' '.join(str(e).split())}); repair it or move it"
                        " away") from None
    except (RecursionError, ValueError):  # nested too deeply; an integer beyond Python's 4300 digits
        raise DataError(f"{str(path)!r} is not a configuration trainlab writes (values nested too deeply or an"
                        " integer of thousands of digits); repair it or move it away") from None


def _read_json(path: Path) -> dict[str, Any]:
    data = rundir.read_bounded(path, "summary")
    if data is None:
        return {}
    try:
        value = rundir.parse_json(data)
    except ValueError as e:  # not UTF-8, not JSON, or what trainlab never writes (NaN, nested too deeply)
        raise DataError(f"{str(path)!r} is damaged ({' '.join(str(e).split())}); repair it or move it away") from None
    if not isinstance(value, dict):
        raise DataError(f"{str(path)!r} holds a JSON {type(value).__name__}, not the object trainlab writes; repair"
                        " it or move it away")
    return value


# ------------------------------------------------------------------------------------------ figures
def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


#: Values beyond ±LIMIT are not drawn (the captions say how many): an axis spanning ±1e308
#: overflows matplotlib's tick arithmetic, and no training quantity is meant to be that large.
LIMIT = 1e100


def _drawable(value: Any) -> bool:
    """A finite number within ±:data:`LIMIT`."""
    return _finite(value) and abs(value) <= LIMIT


def _number(value: Any) -> float:
    """``value`` as a float, NaN (a gap in a line) when missing, not finite or beyond ±:data:`LIMIT`."""
    return float(value) if _drawable(value) else math.nan


def _undrawn(values: Sequence[Any], what: str) -> str:
    """A caption's note on the ``values`` not drawn (null, not finite or beyond ±LIMIT), or ``""``."""
    n = sum(1 for v in values if not _drawable(v))
    return f" {n} {what}{'s' if n != 1 else ''} not drawn: not finite (null) or beyond ±{LIMIT:.0e}." if n else ""


def _plain_text(text: str) -> str:
    """``text`` from the run's files as matplotlib shows it literally: every ``$`` escaped, so no
    mathtext is parsed (``$\\frac{$`` would be a parse error when the figure is drawn)."""
    return text.replace("$", r"\$")


def _new_figure() -> tuple[Figure, Any]:
    fig = Figure(figsize=(WIDTH, HEIGHT), layout="constrained")
    return fig, fig.add_subplot()


def _style(ax: Any, title: str, ylabel: str, xmax: float | None = None, xlabel: str = "update (step)") -> None:
    if xmax:  # every panel over the same updates, so they line up when compared
        ax.set_xlim(-0.02 * xmax, 1.02 * xmax)
    ax.set_title(title, fontsize=TITLE)
    ax.set_xlabel(xlabel, fontsize=LABEL)
    ax.set_ylabel(ylabel, fontsize=LABEL)
    ax.tick_params(labelsize=TICK)
    ax.grid(alpha=0.3)


def _log_if_wide(ax: Any, values: Sequence[float], ratio: float = 30.0) -> None:
    """A log y scale when every value is positive and they span more than ``ratio``."""
    v = [x for x in values if _finite(x)]
    if v and min(v) > 0 and max(v) / min(v) > ratio:
        ax.set_yscale("log")


def mark_events(ax: Any, events: Sequence[dict[str, Any]]) -> None:
    """Each event as a dashed vertical line at its step, labelled ``E1``, ``E2``, … at the
    top (the numbers of the report's event table)."""
    for i, event in enumerate(events, 1):
        ax.axvline(event["step"], color=EVENT_COLOR, ls="--", lw=1.3,
                   label="doctor's event (E1, E2, …)" if i == 1 else "_nolegend_")
        ax.text(event["step"], 0.97, f"E{i}", transform=ax.get_xaxis_transform(), rotation=90, ha="right",
                va="top", fontsize=LEGEND, color=EVENT_COLOR,
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 1})


def _legend(fig: Figure, ax: Any) -> None:
    """The legend below the axes, where it hides no line and no event's label: two columns
    when the labels are short, one otherwise; the figure grows to hold it."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    ncol = 2 if max(len(label) for label in labels) <= 22 and len(labels) > 2 else 1
    rows = -(-len(labels) // ncol)
    fig.set_figheight(HEIGHT + 0.23 * rows)
    fig.legend(handles, labels, fontsize=LEGEND, loc="outside lower center", ncol=ncol, frameon=False,
               handlelength=1.8, columnspacing=1.0, borderaxespad=0.2)


def curve_panels(run: Run) -> list[Panel]:
    """The loss (every update and every epoch), the accuracy, and the learning rate when it
    changes during the run."""
    panels = []
    xmax = run.last_step()
    fig, ax = _new_figure()
    values = []
    if run.steps:
        xs, ys = [r["step"] for r in run.steps], [_number(r.get("loss")) for r in run.steps]
        ax.plot(xs, ys, color="tab:blue", lw=0.7, alpha=0.45, label="training loss of each update (its batch)")
        values += ys
    for key, label, color in (("train_loss", "training loss, epoch mean", "tab:blue"),
                              ("eval_loss", "test loss, end of epoch", "tab:orange")):
        points = [(r["step"], _number(r.get(key))) for r in run.epochs if _drawable(r.get(key))]
        if points:
            ax.plot(*zip(*points), "o-" if len(points) <= 60 else "-", color=color, lw=1.8, ms=4, label=label)
            values += [p[1] for p in points]
    _log_if_wide(ax, values)
    mark_events(ax, run.events)
    _style(ax, "loss", "loss", xmax)
    _legend(fig, ax)
    losses = [r.get("loss") for r in run.steps] + [r.get(k) for r in run.epochs for k in ("train_loss", "eval_loss")
                                                   if k in r]
    panels.append(Panel("loss", "Loss", fig, "The training loss of each update (on its batch, thin line), its mean"
                        " over each epoch, and the loss on the test split at the end of each epoch."
                        + _undrawn(losses, "loss value")))
    accuracy = [(key, label, color, [(r["step"], float(r[key])) for r in run.epochs if _drawable(r.get(key))])
                for key, label, color in (("train_accuracy", "training accuracy, epoch mean", "tab:blue"),
                                          ("eval_accuracy", "test accuracy, end of epoch", "tab:orange"))]
    if any(points for *_, points in accuracy):
        fig, ax = _new_figure()
        for key, label, color, points in accuracy:
            if points:
                ax.plot(*zip(*points), "o-" if len(points) <= 60 else "-", color=color, lw=1.8, ms=4, label=label)
        ax.set_ylim(-0.02, 1.02)
        mark_events(ax, run.events)
        _style(ax, "accuracy", "share correct", xmax)
        _legend(fig, ax)
        panels.append(Panel("accuracy", "Accuracy", fig, "The share of samples classified correctly: training"
                            " (mean over each epoch, while training) and test split (end of each epoch)."))
    lrs = [(r["step"], float(r["lr"])) for r in run.steps if _drawable(r.get("lr"))]
    if len({lr for _, lr in lrs}) > 1:
        fig, ax = _new_figure()
        ax.plot(*zip(*lrs), color="tab:green", lw=1.6, drawstyle="steps-post", label="learning rate η of each update")
        _log_if_wide(ax, [lr for _, lr in lrs], ratio=100.0)
        mark_events(ax, run.events)
        _style(ax, "learning rate", "η", xmax)
        _legend(fig, ax)
        panels.append(Panel("lr", "Learning rate", fig, "The learning rate of each update, as the schedule (and"
                            " the stall doctor, where it acted) set it."))
    return panels + logged_panels(run, xmax)


#: The fields of a step record the Trainer writes; any other is a value the user logged (``Watch.log``).
STEP_FIELDS = ("step", "epoch", "loss", "grad_norm", "lr")


def logged_panels(run: Run, xmax: float | None = None) -> list[Panel]:
    """One panel per value logged beside the loss (``Watch.log(name=...)`` in a watched loop), in name
    order, at most :data:`MAX_PARTS`; a value that is never a number is not drawn."""
    names = sorted({k for r in run.steps for k, v in r.items() if k not in STEP_FIELDS and _finite(v)})
    panels = []
    for i, name in enumerate(names[:MAX_PARTS]):
        points = [(r["step"], _number(r.get(name))) for r in run.steps if name in r]
        fig, ax = _new_figure()
        ax.plot(*zip(*points), color="tab:purple", lw=1.2, marker="." if len(points) < 50 else None,
                label=_plain_text(name))
        _log_if_wide(ax, [v for _, v in points])
        mark_events(ax, run.events)
        _style(ax, _plain_text(name), _plain_text(name), xmax)
        _legend(fig, ax)
        caption = f"{name!r} as logged with the loop's Watch.log, at the updates it was logged for."
        caption += _undrawn([r.get(name) for r in run.steps if name in r], "value")
        if i == MAX_PARTS - 1 and len(names) > MAX_PARTS:
            caption += f" Not drawn: {len(names) - MAX_PARTS} more logged value(s), {', '.join(names[MAX_PARTS:][:8])}…"
        panels.append(Panel(f"logged_{name}", name, fig, caption))
    return panels


def instrument_figure(name: str, readings: Sequence[dict[str, Any]], events: Sequence[dict[str, Any]] = (),
                      lrs: Sequence[tuple[int, float]] = (), batch_size: float | None = None,
                      xmax: float | None = None) -> Figure:
    """One instrument's readings over the updates, with the doctor's ``events`` marked.

    ``lrs`` — ``(step, η)`` of each update — draws 2/η on ``sharpness``; ``batch_size`` is
    the run's batch size on ``noise_scale`` where the readings carry none; ``xmax``, the
    run's last update, gives every panel the same x range.
    """
    spec = SPECS.get(name, Spec(_plain_text(name.replace("_", " ")), _plain_text(name), _plain_text(name), ""))
    steps = [r["step"] for r in readings]
    values = [_number(r.get("value")) for r in readings]
    parts = _parts(name, readings)
    fig, ax = _new_figure()
    everything = list(values)
    label = spec.label
    if name == "stability" and any(r.get("preconditioned") for r in readings):
        label = "η·λ_max(P⁻¹H), preconditioned"
    ax.plot(steps, values, "o-" if len(readings) <= 60 else "-", color="black", lw=2.0, ms=3.5, label=label,
            zorder=3)
    colors = _colors(len(parts))
    for (part, ys, style), color in zip(parts, colors):
        ax.plot(steps, ys, style, color=color, lw=0.9, alpha=0.9, label=_plain_text(part))
        everything += ys
    if name == "sharpness" and lrs:
        xs = [s for s, _ in lrs]
        ys = [_number(2.0 / lr) if lr > 0 else math.nan for _, lr in lrs]
        ax.plot(xs, ys, color="tab:red", lw=1.6, drawstyle="steps-post", label="2/η, η of each update")
        everything += ys
    if name == "stability":
        thresholds = [_number(r.get("threshold", 2.0)) for r in readings]
        if len({t for t in thresholds if _finite(t)}) <= 1:
            t = next((t for t in thresholds if _finite(t)), 2.0)
            ax.axhline(t, color="tab:red", lw=1.6, label=f"divergence threshold {t:g}")
        else:
            ax.plot(steps, thresholds, color="tab:red", lw=1.6, drawstyle="steps-post", label="divergence threshold")
        everything += thresholds
    if name == "noise_scale":
        batches = [_number(r.get("batch_size", batch_size)) for r in readings]
        if any(_finite(b) for b in batches):
            ax.plot(steps, batches, color="tab:green", lw=1.8, drawstyle="steps-post",
                    label="batch size B (samples per update)")
            everything += batches
    if name == "gsnr" and any(_finite(r.get("norm_test")) for r in readings):
        tests = [_number(r.get("norm_test")) for r in readings]
        ax.plot(steps, tests, "s--", color="tab:purple", lw=1.2, ms=3, label="norm test statistic (Byrd et al. 2012)")
        everything += tests
    failed = [r["step"] for r in readings if _failed(r)]
    if failed:
        ax.plot(failed, [0.02] * len(failed), "x", color=EVENT_COLOR, ms=7, mew=2,
                transform=ax.get_xaxis_transform(), label="reading failed (see below)")
        if len(failed) == len(readings):
            ax.text(0.5, 0.5, "every reading failed", transform=ax.transAxes, ha="center", va="center",
                    fontsize=LABEL, color=EVENT_COLOR, zorder=5,
                    bbox={"facecolor": "white", "edgecolor": EVENT_COLOR, "alpha": 0.9, "pad": 3})
    if name == "units":
        ax.set_ylim(-0.02, 1.02)
    elif name == "noise_scale":
        _log_if_wide(ax, everything, ratio=0.0)  # always log where it can be: B_simple spans decades over a run
    else:
        _log_if_wide(ax, everything)
    mark_events(ax, events)
    _style(ax, spec.title, spec.ylabel, xmax)
    _legend(fig, ax)
    return fig


def _parts(name: str, readings: Sequence[dict[str, Any]]) -> list[tuple[str, list[float], str]]:
    """The thin lines: ``(label, values, line style)``; for ``units`` each layer's dead and
    saturated shares (a share that stays 0 throughout is left out), for the others each
    parameter tensor's part; when there are more than :data:`MAX_PARTS`, those of :data:`DEPTH`
    evenly spread over depth (first and last layer included: vanishing gradients stay in view),
    the others' largest by median."""
    names = _part_names(readings)
    lines = []
    for part in names:
        if name == "units":
            for kind, style in (("dead", "-"), ("saturated", "--")):
                ys = [_number(p.get(kind)) if isinstance(p := _parts_of(r).get(part), dict) else math.nan
                      for r in readings]
                if any(_finite(y) and y > 0 for y in ys):
                    lines.append((f"{part} {kind}", ys, style))
        else:
            ys = [_number(_parts_of(r).get(part)) for r in readings]
            if any(_finite(y) for y in ys):
                lines.append((part, ys, "-"))
    if len(lines) > MAX_PARTS and name in DEPTH:  # a layer story: first to last, evenly over depth
        lines = [lines[i] for i in _spread(len(lines), MAX_PARTS)]
    elif len(lines) > MAX_PARTS:
        kept = {line[0] for line in sorted(lines, key=lambda line: -_median(line[1]))[:MAX_PARTS]}
        lines = [line for line in lines if line[0] in kept]
    return lines


def _spread(n: int, k: int) -> list[int]:
    """``k`` indices of ``0 … n−1`` evenly spread, the first and the last included (``k ≥ 2``)."""
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def depth_figure(name: str, readings: Sequence[dict[str, Any]]) -> Figure | None:
    """The per-tensor values of ``grad_norm`` or ``update_ratio`` over depth — the parameter
    tensors in the model's order, first layer left, last right — at the first, middle and last
    reading: vanishing gradients fall toward the left, exploding ones rise. ``None`` with fewer
    than three tensors or no finite value."""
    names = _part_names(readings)
    ok = [r for r in readings if any(_finite(_parts_of(r).get(n)) for n in names)]
    if len(names) < 3 or not ok:
        return None
    spec = SPECS.get(name, Spec(_plain_text(name), _plain_text(name), _plain_text(name), ""))
    fig, ax = _new_figure()
    chosen = [ok[i] for i in _spread(len(ok), 3)] if len(ok) >= 3 else ok
    everything = []
    for r, color in zip(chosen, ("tab:blue", "tab:orange", "black")):
        ys = [_number(_parts_of(r).get(n)) for n in names]
        ax.plot(range(len(names)), ys, "o-" if len(names) <= 40 else "-", color=color, lw=1.4, ms=3,
                label=f"update {r['step']}")
        everything += ys
    _log_if_wide(ax, everything)
    ticks = _spread(len(names), min(len(names), 6))
    ax.set_xticks(ticks, [_plain_text(_short(names[i])) for i in ticks], rotation=20, ha="right")
    _style(ax, f"{spec.title}, first layer to last", spec.ylabel, None, xlabel="parameter tensor, in the model's order")
    _legend(fig, ax)
    return fig


def _short(name: str, limit: int = 24) -> str:
    return name if len(name) <= limit else "…" + name[-(limit - 1):]


def _failed(reading: dict[str, Any]) -> bool:
    """A reading the Monitor recorded as failed: no finite value, or an error message."""
    return not _finite(reading.get("value")) or isinstance(reading.get("error"), str)


def _parts_of(reading: dict[str, Any]) -> dict[str, Any]:
    parts = reading.get("parts")
    return parts if isinstance(parts, dict) else {}


def _part_names(readings: Sequence[dict[str, Any]]) -> list[str]:
    """The names under ``parts``, in the order they first appear."""
    return list(dict.fromkeys(k for r in readings for k in _parts_of(r)))


def _median(values: Sequence[float]) -> float:
    v = sorted(x for x in values if _finite(x))
    return v[len(v) // 2] if v else -math.inf


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def instrument_panels(run: Run) -> list[Panel]:
    """One panel per instrument, the known ones first in a fixed order."""
    order = [n for n in SPECS if n in run.readings] + sorted(n for n in run.readings if n not in SPECS)
    lrs = run.learning_rates()
    # the summary holds the samples per update ("full" resolved); the configuration may say "full"
    batch = run.summary.get("batch_size")
    if not _finite(batch) and isinstance(run.config.get("train"), dict):
        batch = run.config["train"].get("batch_size")
    batch = batch if _finite(batch) else None
    panels = []
    for name in order:
        readings = run.readings[name]
        fig = instrument_figure(name, readings, run.events, lrs, batch, run.last_step())
        spec = SPECS.get(name)
        panels.append(Panel(name, spec.title.capitalize() if spec else name, fig,
                            _instrument_caption(name, readings, spec, run), instrument=True))
        depth = depth_figure(name, readings) if name in DEPTH else None
        if depth is not None:
            count = len(_part_names(readings))
            panels.append(Panel(f"{name}_depth", f"{spec.title.capitalize() if spec else name} over depth", depth,
                                f"Each of the {count} parameter tensors, in the model's order (first layer left,"
                                " last right), at the first, middle and last reading: a profile falling toward the"
                                " first layers is vanishing gradients, one rising toward them exploding"
                                " (Glorot & Bengio 2010; Pascanu et al. 2013)."))  # not a figure per instrument
    return panels


def _instrument_caption(name: str, readings: Sequence[dict[str, Any]], spec: Spec | None, run: Run) -> str:
    ok = [r for r in readings if not _failed(r)]
    seconds = [float(r["seconds"]) for r in readings if _finite(r.get("seconds"))]
    text = (spec.caption + " ") if spec and spec.caption else ""
    first, last = readings[0]["step"], readings[-1]["step"]
    text += f"{len(readings)} reading{'s' if len(readings) != 1 else ''}, " + (
        f"update {first}" if first == last else f"updates {first}–{last}")
    if ok:
        text += f"; last value {float(ok[-1]['value']):.4g} at update {ok[-1]['step']}"
    large = [r["value"] for r in ok if not _drawable(r["value"])]
    if seconds:
        text += f"; {sum(seconds) / len(seconds):.3g} s per reading"
    hvps = [r["n_hvp"] for r in readings if _finite(r.get("n_hvp"))]
    if hvps and sum(hvps) > 0:  # stability reuses the sharpness reading's λ_max at no cost
        text += f"; {sum(hvps) / len(hvps):.3g} Hessian-vector products per reading"
    text += "." + _undrawn(large, "reading value")
    if name == "sharpness":
        if not run.learning_rates():
            text += " No learning rate is logged, so 2/η is not drawn."
        elif not run.steps:
            text += " 2/η uses the configured learning rate (no steps.jsonl)."
        optimizer = run.config.get("optimizer", {}).get("name") if isinstance(run.config.get("optimizer"), dict) \
            else None
        if optimizer in ("adam", "rmsprop", "adagrad"):
            text += (f" This run used {optimizer}, whose step is scaled per parameter: its threshold is on the"
                     " stability panel (preconditioned); 2/η here is for reference.")
    if name == "units":
        quiet = [layer for layer in _part_names(readings)
                 if all(not (isinstance(p := _parts_of(r).get(layer), dict) and _finite(p.get(k)) and p[k] > 0)
                        for r in readings for k in ("dead", "saturated"))]
        if quiet:
            text += (f" No dead or saturated unit at any reading in layer{'s' if len(quiet) > 1 else ''}"
                     f" {', '.join(quiet)}.")
    if name in DEPTH and len(_part_names(readings)) > MAX_PARTS:
        text += (f" Thin lines: {len(_spread(len(_part_names(readings)), MAX_PARTS))} of the"
                 f" {len(_part_names(readings))} parameter tensors, evenly spread from the first layer to the last"
                 " (all of them in the panel over depth).")
    failed = [r for r in readings if _failed(r)]
    if failed:
        first = failed[0]
        text += (f" {len(failed)} reading{'s' if len(failed) != 1 else ''} failed (marked ✕), the first at update"
                 f" {first['step']}: {_first_sentence(str(first.get('error') or 'no finite value'))}")
    return text


def _first_sentence(text: str, limit: int = 160) -> str:
    """``text`` on one line, cut after its first sentence or at ``limit`` characters."""
    text = " ".join(text.split())
    end = text.find(". ")
    text = text[:end + 1] if 0 <= end < limit else text
    text = text if len(text) <= limit else text[:limit - 1] + "…"
    return text if text.endswith((".", "…", "!", "?")) else text + "."


# ------------------------------------------------------------------------------------------ the page
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1120px;margin:auto;padding:1em;
line-height:1.45;color:#222;font-size:16px;-webkit-text-size-adjust:100%}
h1{font-size:1.5em;margin:.3em 0;overflow-wrap:anywhere}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;
margin-top:1.6em}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,500px),1fr));gap:1.2em 1.4em}
figure{margin:0;min-width:0}figure img{display:block;width:100%;height:auto;border:1px solid #eee}
figure:target{grid-column:1/-1;overflow-x:auto}figure:target img{width:auto;max-width:none}
figcaption{font-size:.92em;color:#444;margin-top:.3em}.size{font-size:.85em;white-space:nowrap}
.fit,figure:target .full{display:none}figure:target .fit{display:inline}
table{border-collapse:collapse;font-size:.9em;display:block;overflow-x:auto;max-width:100%}
th,td{border:1px solid #ddd;padding:.3em .5em;text-align:left;vertical-align:top}th{background:#f4f4f4}
td.num{text-align:right;font-variant-numeric:tabular-nums}.event{color:#c0392b;font-weight:600}
.note{background:#f8f8f2;border-left:4px solid #ccc;padding:.5em 1em}code{overflow-wrap:anywhere}
details summary{cursor:pointer;margin:.5em 0}
@media (max-width:600px){body{padding:.6em}h1{font-size:1.25em}h2{font-size:1.15em}
table.events tr:first-child{display:none}table.events,table.events tr,table.events td{display:block}
table.events tr{border:1px solid #ddd;margin-bottom:.6em}table.events td{border:none;padding:.15em .5em;text-align:left}
table.events td::before{content:attr(data-label) ": ";color:#777;font-size:.85em}}
"""


def to_html(run: Run, curves: Sequence[Panel], instruments: Sequence[Panel]) -> str:
    """The page, every figure rendered and embedded."""
    name = run.path.resolve().name or str(run.path)
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width,initial-scale=1'>",
             f"<title>trainlab run report: {html.escape(name)}</title><style>{CSS}</style></head><body>",
             f"<h1>Run report: {html.escape(name)}</h1>",
             f"<p>{html.escape(_headline(run))}</p>",
             "<p>Sections: <a href='#config'>configuration</a> · <a href='#curves'>training curves</a> ·"
             " <a href='#events'>doctor's events</a> · <a href='#instruments'>instruments</a>."
             " Tap a figure for its full-size image.</p>",
             "<h2 id='config'>Configuration</h2>", _config_html(run),
             "<h2 id='curves'>Training curves</h2>", _figures_html(curves),
             f"<h2 id='events'>Doctor's events ({len(run.events)})</h2>", _events_html(run),
             "<h2 id='instruments'>Instruments</h2>"]
    if instruments:
        parts.append(f"<p>{len(instruments)} instrument{'s' if len(instruments) != 1 else ''} read during training"
                     " on a fixed sample of the training data (instruments.jsonl), each over the updates; the doctor's"
                     " events are marked E1, E2, … on every panel.</p>")
        parts.append(_figures_html(instruments))
    else:
        why = "" if not run.has_instruments else " (instruments.jsonl holds none)"
        parts.append(f"<p class='note'>{NO_READINGS}{why}.</p>")
    parts.append(f"<p class='size'>Written by trainlab {html.escape(__version__)} on"
                 f" {time.strftime('%Y-%m-%d %H:%M:%S')} from {html.escape(str(run.path))}.</p></body></html>")
    return "\n".join(parts)


def _headline(run: Run) -> str:
    last = run.epochs[-1] if run.epochs else {}
    s = {**last, **run.summary}
    bits = [f"status {s['status']}"] if isinstance(s.get("status"), str) else []
    epochs = s.get("epochs", last.get("epoch"))
    if _finite(epochs):
        bits.append(f"{int(epochs)} epoch{'s' if epochs != 1 else ''}")
    steps = s.get("steps", run.steps[-1]["step"] if run.steps else last.get("step"))
    if _finite(steps):
        bits.append(f"{int(steps):,} updates")
    if not _finite(s.get("train_loss")) and _finite(s.get("loss")):  # a watched loop: its last logged loss
        bits.append(f"last logged loss {s['loss']:.4g}")
    for key, what in (("train_loss", "training loss"), ("eval_loss", "test loss")):
        if _finite(s.get(key)):
            bits.append(f"{what} {s[key]:.4g}")
    for key, what in (("train_accuracy", "training accuracy"), ("eval_accuracy", "test accuracy")):
        if _finite(s.get(key)):
            bits.append(f"{what} {100 * s[key]:.1f}\u00a0%")  # no-break spaces: a number stays with its unit
    if _finite(s.get("total_seconds")):
        bits.append(f"{s['total_seconds']:.3g}\u00a0s of training")
    return (", ".join(bits) + ".") if bits else "No epoch completed yet."


def _config_html(run: Run) -> str:
    if not run.config:
        return "<p class='note'>No config.toml in this directory (a run of the Python API?).</p>"
    c = run.config

    def get(section: str, key: str) -> Any:
        value = c.get(section, {})
        return value.get(key) if isinstance(value, dict) else None

    model = f"{get('model', 'name') or 'model'}"
    if get("model", "name") == "mlp" and get("model", "hidden") is not None:
        model += f" {get('model', 'hidden')}"
    if get("model", "activation"):
        model += f" ({get('model', 'activation')}{', batch norm' if get('model', 'batch_norm') else ''})"
    bits = [f"{model} on {get('data', 'name') or '?'}",
            f"{get('optimizer', 'name') or 'optimizer'}, η = {get('optimizer', 'lr')}",
            f"schedule {get('schedule', 'name') or 'constant'}"]
    # a watched loop's config (source = "trainlab.watch") knows no epochs or seed: only what is there is said
    bits += [text for text, value in ((f"batch {get('train', 'batch_size')}", get("train", "batch_size")),
                                      (f"{get('train', 'epochs')} epochs", get("train", "epochs")),
                                      (f"loss {get('train', 'loss')}", get("train", "loss")),
                                      (f"seed {c.get('seed')}", c.get("seed"))) if value is not None]
    if c.get("source") == "trainlab.watch":
        bits.append("watched with trainlab.watch")
    rows = []
    for section, value in c.items():
        items = value.items() if isinstance(value, dict) else [("", value)]
        for key, v in items:
            rows.append(f"<tr><td><code>{html.escape(f'{section}.{key}' if key else section)}</code></td>"
                        f"<td><code>{html.escape(json.dumps(v, ensure_ascii=False, default=_toml_json))}</code>"
                        "</td></tr>")
    return (f"<p>{html.escape(' · '.join(bits))}</p><details><summary>config.toml in full ({len(rows)} keys)"
            f"</summary><table><tr><th>key</th><th>value</th></tr>{''.join(rows)}</table></details>")


def _toml_json(value: Any) -> str:
    """A TOML date, time or date-time (which JSON has not) as its ISO text; anything else as ``str``."""
    return value.isoformat() if callable(getattr(value, "isoformat", None)) else str(value)


def _events_html(run: Run) -> str:
    if not run.events:
        return "<p>The stall doctor logged no event (none found, or the run was trained without --doctor).</p>"
    keys = ["mark", "update", "epoch", "verdict"] + (["reading"] if any("reading" in e for e in run.events) else []) \
        + ["action", "message"]
    rows = ["<table class='events'><tr>" + "".join(f"<th>{k}</th>" for k in keys) + "</tr>"]
    for i, e in enumerate(run.events, 1):
        action = e.get("action", "")
        if action and e.get("applied") is not None and "applied" not in str(e.get("message", "")):
            action = f"{action} ({'applied' if e['applied'] else 'not applied'})"
        message = str(e.get("message", ""))
        if e.get("remedy") and str(e["remedy"]) not in message:  # the doctor's reason, when it names one
            message = f"{message} — {e['remedy']}" if message else str(e["remedy"])
        cells = {"mark": f"E{i}", "update": e["step"], "epoch": e.get("epoch", ""),
                 "verdict": str(e.get("verdict", e.get("event", ""))).replace("_", " "),
                 "reading": e.get("reading", ""), "action": action, "message": message}
        cls = {"mark": " class='event'", "update": " class='num'", "epoch": " class='num'"}
        rows.append("<tr>" + "".join(f"<td{cls.get(k, '')} data-label='{k}'>{html.escape(str(cells[k]))}</td>"
                                     for k in keys) + "</tr>")
    rows.append("</table>")
    return "".join(rows)


def _figures_html(panels: Sequence[Panel]) -> str:
    out = ["<div class='grid'>"]
    for p in panels:
        data = base64.b64encode(_png(p.figure)).decode("ascii")
        anchor = f"fig-{html.escape(p.key)}"
        kind = f" class='instrument' data-instrument='{html.escape(p.key)}'" if p.instrument else ""
        out.append(f"<figure id='{anchor}'{kind}><span id='{anchor}-fit'></span><a href='#{anchor}'><img"
                   f" alt='{html.escape(p.title)}'"
                   f" src='data:image/png;base64,{data}'></a><figcaption><b>{html.escape(p.title)}.</b>"
                   f" {html.escape(p.caption)} <a class='size full' href='#{anchor}'>full size ⤢</a>"
                   f"<a class='size fit' href='#{anchor}-fit'>fit to screen</a>"
                   "</figcaption></figure>")
    out.append("</div>")
    return "".join(out)


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # an emoji in a name is drawn as a box: the page shows it, no need to warn
        warnings.filterwarnings("ignore", message="Glyph .* missing from", category=UserWarning)
        fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def write(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the report of ``run_dir`` to ``out`` (default ``run_dir/report.html``),
    atomically, and return its path. Nothing is written when a file cannot be read."""
    run = read(run_dir)
    out = Path(out) if out is not None else run.path / "report.html"
    page = to_html(run, curve_panels(run), instrument_panels(run))
    try:
        write_text(page, out)
    except OSError as e:  # a missing folder is reported on the temporary sibling; name the file asked for
        raise OSError(e.errno, e.strerror or str(e), str(out)) from None
    return out
