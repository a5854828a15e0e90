"""``trainlab demo`` and ``trainlab experiment``: run the lecture's demonstrations and write
the checked report."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from trainlab.errors import ConfigError

#: The names of :data:`trainlab.experiments.EXPERIMENTS`, in its order. Spelled out here so that
#: building the parser (``trainlab --help``) does not import the experiments and matplotlib;
#: a test checks the two agree.
EXPERIMENT_NAMES = ("critical_points", "batch_size", "momentum", "sharpness", "adaptive_lr", "classification",
                    "normalization")


def add_parser(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser(
        "demo", help="run every lecture demonstration and write a checked report",
        description="Run the lecture's demonstrations (" + ", ".join(EXPERIMENT_NAMES) + ") and write a report —"
                    " index.html, summary.md, results.json and PNG figures — in which each claim of the lecture"
                    " reads held, not held or inconclusive with this run's numbers and, where it rests on random"
                    " draws, a 95 % interval over seeds.")
    _common(demo, default_out="report")
    demo.add_argument("--only", metavar="NAME,...", help="run only these experiments (comma-separated)")
    demo.set_defaults(run=run_demo)
    one = sub.add_parser("experiment", help="run one lecture demonstration",
                         description="Run one demonstration and write its report.")
    one.add_argument("name", metavar="NAME", help="one of: " + ", ".join(EXPERIMENT_NAMES))
    _common(one, default_out=None)
    one.set_defaults(run=run_experiment)


def _common(p: argparse.ArgumentParser, default_out: str | None) -> None:
    p.add_argument("--quick", action="store_true",
                   help="a reduced run (under a minute for all experiments), stated as such in the report")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    p.add_argument("--out", metavar="DIR", default=default_out,
                   help="report directory" + (f" (default {default_out}/)" if default_out else " (default report-NAME/)"))
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_demo(args: argparse.Namespace) -> int:
    return _run(list(EXPERIMENT_NAMES) if args.only is None else only(args.only), args, Path(args.out))


def only(text: str) -> list[str]:
    """The experiments ``--only TEXT`` names, comma-separated, spaces around a name ignored. Naming
    none (``--only ""``, which once ran every experiment) or one twice is a :class:`ConfigError`;
    unknown names are refused by the caller, with the allowed ones."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigError(f"--only {text!r} names no experiment; give one or more of: {', '.join(EXPERIMENT_NAMES)}"
                          " (comma-separated), or leave --only out to run them all")
    twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if twice is not None:
        raise ConfigError(f"--only {text!r} names {twice!r} twice; name each experiment once")
    return names


def run_experiment(args: argparse.Namespace) -> int:
    return _run([args.name], args, Path(args.out or f"report-{args.name}"))


def _run(names: list[str], args: argparse.Namespace, out: Path) -> int:
    unknown = [n for n in names if n not in EXPERIMENT_NAMES]
    if unknown or not names:
        raise ConfigError(f"unknown experiment {unknown[0] if unknown else '(none)'!r};"
                          f" use one of: {', '.join(EXPERIMENT_NAMES)}")
    if args.seed < 0:
        raise ConfigError(f"--seed {args.seed} is not allowed; expected an integer >= 0")
    from trainlab.experiments import EXPERIMENTS, Config  # matplotlib and the data sets: only when run
    from trainlab.report import document

    config = Config(quick=args.quick, seed=args.seed, progress=not args.no_progress)
    start = time.perf_counter()
    results = {name: EXPERIMENTS[name].run(config) for name in names}
    seconds = time.perf_counter() - start
    paths = document.write(results, out, seed=args.seed, seconds=seconds, quick=args.quick)
    print(document.claims_table(results, quick=args.quick))
    print(f"\nreport{' of a quick run' if args.quick else ''}: {paths['html']}"
          f" (also {paths['markdown'].name}, {paths['json'].name}); {seconds:.0f} s")
    return 0
