"""``trainlab report RUN``: one self-contained HTML page of a run directory — configuration,
training curves, every instrument over the updates and the stall doctor's events."""

from __future__ import annotations

import argparse
from pathlib import Path

from trainlab.errors import ConfigError
from trainlab.train import rundir


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="write RUN/report.html: curves, instruments and the doctor's events of a run",
        description="Write one self-contained HTML page (figures embedded, readable on a phone) for a run directory"
                    " of `trainlab train`: its configuration, the loss and accuracy curves, every instrument read"
                    " during training (train with --monitor) over the updates — 2/η on the sharpness, the"
                    " divergence threshold on the stability, the batch size against B_simple on the noise scale —"
                    " and the stall doctor's events (train with --doctor), marked on every panel and listed. Nothing"
                    " else in the run directory changes; the page is written atomically, never over a run's own files, into"
                    " another run directory or through a link in a run directory.")
    p.add_argument("run_dir", metavar="RUN", help="a run directory of `trainlab train`")
    p.add_argument("--out", metavar="FILE", help="where to write the page (default: RUN/report.html)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out is not None else None
    if out is not None and (args.out == "" or out.is_dir()):
        raise ConfigError(f"--out {args.out!r} is {'empty' if args.out == '' else 'a directory'}; give the file to"
                          " write, e.g. --out report.html")
    rundir.check_output(out if out is not None else Path(args.run_dir) / "report.html", own=args.run_dir)
    from trainlab.report import run_report  # matplotlib: only when the command runs

    path = run_report.write(args.run_dir, out)
    print(f"wrote {path}")
    return 0
