"""``trainlab`` command line: one module per subcommand, each with ``add_parser`` and ``run``.

Errors that are the user's to fix (:class:`~trainlab.errors.ConfigError`,
:class:`~trainlab.errors.DataError`) print one line and exit 2, with no traceback; a fault
of the environment (an :class:`OSError`: disk full, permission denied, a path that is a
file) prints one line naming the path and exits 1, as does a diverged run. A command stopped
by Ctrl-C (SIGINT) or SIGTERM prints one line naming the signal and exits ``128 + signal``:
130 and 143 (:mod:`trainlab.train.interrupt`; SIGTERM raises as Ctrl-C does, so a command's
atomic writes leave no temporary file behind).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Sequence

from trainlab import __version__, distributed
from trainlab.cli import demo, diagnose, report, schedule, train
from trainlab.errors import ConfigError, DataError, DivergenceError
from trainlab.train import interrupt

SUBCOMMANDS = (demo, train, diagnose, schedule, report)


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors are one line too (exit 2, as argparse's own):
    ``trainlab train: error: argument --k: invalid int value: 'abc' (see trainlab train --help)``."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="trainlab",
        description="Why won't my network train? Diagnose critical points and apply the standard remedies.")
    p.add_argument("--version", action="version", version=f"trainlab {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        with interrupt.raising(), warnings.catch_warnings():
            warnings.showwarning = _one_line_warning(args.command)
            distributed.init()  # under torchrun: join the process group; a no-op in one process
            return args.run(args)
    except (ConfigError, DataError) as e:
        print(f"trainlab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except DivergenceError as e:
        print(f"trainlab {args.command}: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"trainlab {args.command}: error: {describe_os_error(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        stopped = e if isinstance(e, interrupt.Interrupted) else interrupt.Interrupted(interrupt.signum_of(e))
        print(f"trainlab {args.command}: {' '.join(str(stopped).split())}", file=sys.stderr)
        return stopped.exit_code


def _one_line_warning(command: str):
    """A warning as one line, ``trainlab COMMAND: warning: MESSAGE`` (Python's default shows
    the file and source line too, which mean nothing to a user of the command line)."""
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        print(f"trainlab {command}: warning: {' '.join(str(message).split())}", file=file or sys.stderr)
    return show


def describe_os_error(e: OSError) -> str:
    """One line: the path(s) and what the system said, e.g.
    ``'runs/a/checkpoint.pt': No space left on device``."""
    reason = e.strerror or str(e) or type(e).__name__
    paths = [repr(str(p)) for p in (e.filename, e.filename2) if p is not None]
    line = f"{' -> '.join(paths)}: {reason}" if paths else reason
    return " ".join(line.split())  # one line, whatever the message held
