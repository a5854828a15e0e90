"""``trainlab schedule plot NAME``: draw a learning-rate schedule."""

from __future__ import annotations

import argparse
import math

from trainlab.errors import ConfigError
from trainlab.optim import schedules
from trainlab.train import rundir
from trainlab.train.config import parse_override


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("schedule", help="learning-rate schedules",
                       description="Learning-rate schedules of trainlab.optim.schedules.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    plot = actions.add_parser(
        "plot", help="draw a schedule to a PNG file",
        description=f"Draw the learning rate of each update under schedule NAME, one of: "
                    f"{', '.join(schedules.SCHEDULES)}. Example: trainlab schedule plot warmup_cosine "
                    f"--set warmup_steps=100 --set total_steps=1000 --out lr.png")
    plot.add_argument("name", metavar="NAME", help="the schedule")
    plot.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], dest="overrides",
                      help="a parameter of the schedule, e.g. --set warmup_steps=100 (repeatable)")
    plot.add_argument("--lr", type=float, default=1.0, help="the optimizer's learning rate η (default 1)")
    plot.add_argument("--steps", type=int, default=None,
                      help="updates to draw (default: total_steps if the schedule has it, else 1000)")
    plot.add_argument("--out", default="lr.png", metavar="FILE", help="PNG file to write (default lr.png)")
    p.set_defaults(run=run)


#: More updates than a figure can show, and a list of rates that would take long to build.
MAX_STEPS = 1_000_000


def run(args: argparse.Namespace) -> int:
    if args.name not in schedules.SCHEDULES:
        raise ConfigError(f"unknown schedule {args.name!r}; use one of: {', '.join(schedules.SCHEDULES)}")
    kwargs = {}
    for text in args.overrides:
        keys, value = parse_override(text)
        kwargs[".".join(keys)] = value
    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--steps {args.steps} is not allowed; expected an integer >= 1")
    if "total_steps" in schedules.parameters(args.name):
        kwargs.setdefault("total_steps", args.steps or 1000)
    steps = args.steps or kwargs.get("total_steps", 1000)  # trace() validates total_steps before using it
    if isinstance(steps, int) and steps > MAX_STEPS:
        raise ConfigError(f"--steps {steps} is not allowed; a plot shows at most {MAX_STEPS:,} updates")
    if not str(args.out).strip():
        raise ConfigError(f"--out {args.out!r} is not allowed; expected a PNG file name such as lr.png")
    if not 0 < args.lr < math.inf:
        raise ConfigError(f"--lr {args.lr} is not allowed; expected a finite number > 0")
    rundir.check_output(args.out)  # a schedule belongs to no run: never into a run directory
    from trainlab.report import plots  # matplotlib: only when drawing

    lrs = schedules.trace(args.name, steps, lr=args.lr, **kwargs)
    title = f"{args.name}(" + ", ".join(f"{k}={v}" for k, v in kwargs.items()) + f") with lr={args.lr:g}"
    path = plots.save(plots.learning_rate_figure(lrs, title), args.out)
    peak = max(range(steps), key=lrs.__getitem__)
    print(f"wrote {path}: {title} over {steps} updates; peak {lrs[peak]:.4g} at update {peak}, last {lrs[-1]:.4g}")
    return 0
