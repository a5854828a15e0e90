"""Shared harness of the reliability suite: hostile inputs and faults, each checked for the
exit code, one line on stderr without a traceback that names the bad value, and no file
changed (sha256 of every file before and after).

``run_cli(args, cwd)`` calls ``trainlab.cli.main(argv)`` in this process (milliseconds per
call instead of seconds for a fresh interpreter) with stdout and stderr captured; an
exception that escapes ``main`` is caught and reported as ``code=None`` with its traceback
in ``err``, so a case fails with the traceback in view instead of erroring out.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

from digests import tree_digest  # noqa: E402  (after the thread settings: it imports torch)

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

#: The smallest run that exercises every part: iris (120 training samples), one hidden layer of 4,
#: on the CPU (bit-identical resumes are promised there; and a GPU machine runs the suite the same way).
TINY = ["--set", "data.name=iris", "--set", "train.epochs=1", "--set", "model.hidden=[4]",
        "--set", "train.batch_size=16", "--set", "train.device=cpu", "--no-progress"]
TINY_SETTINGS = {"data.name": "iris", "train.epochs": 1, "model.hidden": [4], "train.batch_size": 16,
                 "train.device": "cpu"}
RUN_FILES = ("config.toml", "metrics.jsonl", "steps.jsonl", "summary.json", "checkpoint.pt")


@dataclass
class CliResult:
    code: int | None  # None: an exception escaped main()
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return [line for line in self.err.strip().splitlines() if line.strip()]


def run_cli(args: Sequence[str], cwd: str | Path | None = None) -> CliResult:
    """``trainlab ARGS`` in this process, in directory ``cwd``; stdout/stderr captured."""
    from trainlab.cli import main

    out, err = io.StringIO(), io.StringIO()
    previous = os.getcwd()
    code: int | None
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as e:  # argparse's own errors
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:  # noqa: BLE001 - the point is to see it
                code = None
                err.write(traceback.format_exc())
    finally:
        os.chdir(previous)
    return CliResult(code, out.getvalue(), err.getvalue())


def run_subprocess(args: Sequence[str], cwd: str | Path, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    """``python -m trainlab ARGS`` in a fresh interpreter, one thread per process."""
    return subprocess.run([PYTHON, "-m", "trainlab", *map(str, args)], cwd=cwd, env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def tree_hash(*paths: str | Path) -> dict[str, str]:
    """``tree_digest`` of each of ``paths`` (files, folders, links), keyed by the full path."""
    return {str(root if rel == "." else root / rel): h
            for root in map(Path, paths) for rel, h in (tree_digest(root) or {}).items()}


def assert_unchanged(before: dict[str, str], after: dict[str, str], allowed_new: Iterable[str] = ()) -> None:
    """No file changed or vanished; new paths only those ending in one of ``allowed_new``."""
    changed = sorted(p for p in before if after.get(p) != before[p])
    new = sorted(p for p in after if p not in before and not any(p.endswith(a) for a in allowed_new))
    if changed or new:
        pytest.fail(f"files changed or removed: {changed}; new files: {new}", pytrace=False)


def assert_one_line(result: CliResult, code: int, names: Sequence[str] = ()) -> str:
    """Exit ``code``, exactly one line on stderr, no traceback, naming every fragment of ``names``."""
    if "Traceback" in result.err or result.code is None:
        pytest.fail(f"traceback (exit {result.code}):\n{result.err[-3000:]}", pytrace=False)
    if result.code != code:
        pytest.fail(f"exit {result.code}, expected {code}; stderr: {result.err[-2000:]!r}", pytrace=False)
    if len(result.lines) != 1:
        pytest.fail(f"expected one line on stderr, got {len(result.lines)}: {result.err[-2000:]!r}", pytrace=False)
    line = result.lines[0]
    missing = [f for f in names if str(f).lower() not in line.lower()]
    if missing:
        pytest.fail(f"{missing} not named in: {line!r}", pytrace=False)
    return line


def assert_usage_error(result: CliResult, names: Sequence[str] = ()) -> str:
    """argparse's refusal: exit 2, the usage then one ``error:`` line naming ``names``; no traceback."""
    if "Traceback" in result.err or result.code != 2 or not result.lines or "error:" not in result.lines[-1]:
        pytest.fail(f"expected a usage error, exit 2; got exit {result.code}: {result.err[-3000:]}", pytrace=False)
    line = result.lines[-1]
    missing = [f for f in names if str(f).lower() not in line.lower()]
    if missing:
        pytest.fail(f"{missing} not named in: {line!r}", pytrace=False)
    return line


def refused(args: Sequence[str], cwd: Path, code: int, names: Sequence[str] = (),
            watch: Iterable[str | Path] = (), allowed_new: Iterable[str] = ()) -> CliResult:
    """Run ``trainlab ARGS`` in ``cwd`` and check the refusal: ``code``, one line naming
    ``names``, and no file under ``cwd`` (and ``watch``) changed."""
    roots = [cwd, *watch]
    before = tree_hash(*roots)
    result = run_cli(args, cwd)
    assert_one_line(result, code, names)
    assert_unchanged(before, tree_hash(*roots), allowed_new)
    return result


def tiny_run(out: Path, *extra: str, epochs: int = 1) -> Path:
    """A completed tiny run in ``out`` (the run directory the hostile cases start from)."""
    result = run_cli(["train", *TINY, "--set", f"train.epochs={epochs}", *extra, "--out", out])
    assert result.code == 0, result.err
    return out


@contextlib.contextmanager
def unprivileged() -> Iterable[None]:
    """Permission checks as an ordinary user: as root (who may write anywhere) the effective
    user becomes ``nobody`` for the block; the real user stays root, so it is undone after."""
    if os.geteuid() != 0:
        yield
        return
    import matplotlib.pyplot  # noqa: F401 - loaded while its config directory is still ours
    import sklearn.datasets  # noqa: F401 - and the libraries trainlab loads lazily

    import trainlab.cli  # noqa: F401

    try:
        os.setegid(65534)
        os.seteuid(65534)
    except PermissionError:  # a container without CAP_SETUID: root it stays, and root may write anywhere
        os.setegid(0)
        pytest.skip("cannot drop root privileges here, so permissions cannot be denied")
    # the checkout under a directory only root may enter (e.g. `git clone . "$(mktemp -d)/c"`, mode 0700):
    # as nobody trainlab could not load its lazily imported modules nor return to the working directory
    import trainlab

    reachable = all(os.access(path, os.R_OK | os.X_OK, effective_ids=True)
                    for path in (Path(trainlab.__file__).parent, os.getcwd()))
    if not reachable:
        os.seteuid(0)
        os.setegid(0)
        pytest.skip("the checkout or the working directory lies where user nobody cannot enter (a 0700 parent"
                    " directory), so permissions cannot be tested as an ordinary user here")
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture
def open_tmp() -> Iterable[Path]:
    """A temporary directory that ``nobody`` can enter (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="trainlab-rel-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for p in [path, *path.rglob("*")]:
            if p.is_dir() and not p.is_symlink():
                p.chmod(0o755)
        import shutil

        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def hang_alarm() -> Iterable[None]:
    """A hang fails the case after 30 s instead of stalling the suite (SIGALRM, main thread)."""
    def fire(signum, frame):
        raise TimeoutError("the analysis ran 30 s: a hang")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.alarm(30)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(autouse=True)
def _keep_sigint_handler() -> Iterable[None]:
    """A case that fails mid-run must not leave trainlab's Ctrl-C handler installed."""
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)
