"""Run directories that never lose a file.

A run directory holds :data:`RUN_FILES`. The rules that keep it safe:

* a fresh run refuses a directory that already holds any file it would write
  (:func:`check_fresh`), unless the caller asked to overwrite;
* one process at a time writes it: :func:`locked` holds an exclusive ``flock`` on
  ``DIR/.trainlab.lock`` for the whole run, and a second process is refused at once;
* :func:`new_run_dir` creates default directories with an exclusive ``mkdir``, so two runs
  started in the same second get two directories;
* logs are read back with :func:`read_log`: a torn last line (a crash mid-write) is dropped,
  a damaged line anywhere else is refused with its file and line number.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from trainlab.errors import ConfigError, DataError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there go unlocked
    fcntl = None  # type: ignore[assignment]

#: Every file a run writes into its directory.
RUN_FILES = ("config.toml", "metrics.jsonl", "steps.jsonl", "summary.json", "checkpoint.pt", "instruments.jsonl")
LOCK_NAME = ".trainlab.lock"

# Locks this process holds: resolved directory -> the thread holding it. Why: run.train locks
# the directory before writing config.toml, and the Trainer it calls locks it again.
_held: dict[str, int] = {}
_held_guard = threading.Lock()


def check_directory(out: str | Path) -> None:
    """Refuse an ``out`` that exists but is not a directory (an environment fault, like
    any other :class:`OSError`, naming the path)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "is a file, not a run directory", str(out))


def check_fresh(out: str | Path, names: Iterable[str] = RUN_FILES, overwrite: bool = False) -> None:
    """Refuse to start a new run in ``out`` when it holds any of ``names``.

    ``overwrite=True`` allows it (the caller then replaces those files). Reads only.
    """
    out = Path(out)
    check_directory(out)
    if overwrite or not out.is_dir():
        return
    present = [name for name in names if (out / name).exists()]
    if not present:
        return
    if "checkpoint.pt" in present:
        raise ConfigError(f"output directory {str(out)!r} already holds a run (checkpoint.pt); resume it"
                          " (resume=True, --resume), overwrite it (overwrite=True, --overwrite) or choose another"
                          " directory")
    them = "them" if len(present) > 1 else "it"
    raise ConfigError(f"output directory {str(out)!r} already holds {', '.join(present)}; a new run would replace"
                      f" {them}: overwrite {them} (overwrite=True, --overwrite) or choose another directory")


def new_run_dir(root: str | Path = "runs", now: float | None = None) -> Path:
    """Create and return a new directory ``root/YYYYmmdd-HHMMSS`` (``-2``, ``-3``, … when
    that name is taken): ``mkdir`` without ``exist_ok`` is atomic, so two runs started in the
    same second never share one."""
    root = Path(root)
    check_directory(root)
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    for n in range(1, 10_000):
        path = root / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free run directory name", str(root / stamp))


@contextlib.contextmanager
def locked(out: str | Path) -> Iterator[Path]:
    """Hold the exclusive lock of run directory ``out`` (created if missing) while inside.

    Another process that asks for it meanwhile gets a :class:`ConfigError` at once. The
    lock is re-entrant within one thread, and ``.trainlab.lock`` is removed on release, so a
    finished run leaves only its own files.
    """
    out = Path(out)
    check_directory(out)
    out.mkdir(parents=True, exist_ok=True)
    key = str(out.resolve())
    with _held_guard:
        holder = _held.get(key)
    if holder == threading.get_ident():  # the outer holder releases it
        yield out
        return
    if holder is not None:
        raise ConfigError(_busy(out, None))
    fd = _acquire(out)
    with _held_guard:
        _held[key] = threading.get_ident()
    try:
        yield out
    finally:
        with _held_guard:
            del _held[key]
        _release(out, fd)


def _acquire(out: Path) -> int:
    path = out / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is None:
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            raise ConfigError(_busy(out, holder)) from None
        except BaseException as e:
            os.close(fd)
            if isinstance(e, OSError) and e.filename is None:  # e.g. a file system without flock
                e.filename = str(path)
            raise
        # Why: the previous holder unlinks the file on release; if it did so between our open
        # and our flock, we hold a lock on a file nobody else will see. Take the new one.
        try:
            here = os.stat(path)
        except FileNotFoundError:
            here = None
        mine = os.fstat(fd)
        if here is not None and (here.st_ino, here.st_dev) == (mine.st_ino, mine.st_dev):
            break
        os.close(fd)
    try:  # who holds it, for the message another process gets
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError as e:
        _release(out, fd)
        if e.filename is None:
            e.filename = str(path)
        raise
    return fd


def _release(out: Path, fd: int) -> None:
    # Unlink while still holding the lock: a process that opens the path afterwards creates a
    # fresh file, and one that opened the old one sees the mismatch in _acquire.
    with contextlib.suppress(OSError):
        os.unlink(out / LOCK_NAME)
    os.close(fd)


def _busy(out: Path, holder: str | None) -> str:
    who = f" (pid {holder})" if holder and holder.isdigit() else ""
    return (f"run directory {str(out)!r} is in use by another trainlab run{who};"
            " wait for it to finish or choose another directory")


def read_records(path: str | Path, check: Callable[[Any], str | None], remedy: str
                 ) -> tuple[list[dict[str, Any]], bool]:
    """The records of a JSON-lines file and whether its last line was torn.

    A last line that does not parse is a write cut short by a crash and is dropped; any other
    damaged line, or a record for which ``check(record)`` names a problem, raises a
    :class:`DataError` with the file, the line number and ``remedy`` — so no history is ever
    cut away silently. Blank lines are skipped. A missing file has no records.
    """
    path = Path(path)
    if not path.exists():
        return [], False
    lines = path.read_bytes().split(b"\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    records: list[dict[str, Any]] = []
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            if i == last:
                return records, True
            raise DataError(f"{str(path)!r} line {i + 1} is damaged (not a JSON record); {remedy}") from None
        problem = check(record)
        if problem:
            raise DataError(f"{str(path)!r} line {i + 1} is not a trainlab record: {problem}; {remedy}")
        records.append(record)
    return records, False


def read_log(path: str | Path, key: str) -> tuple[list[dict[str, Any]], bool]:
    """A run's log for ``--resume`` (:func:`read_records`): every record a JSON object with an
    integer ``key`` (lines of ``metrics.jsonl`` that carry an ``"event"`` need ``step`` instead)."""
    def check(record: Any) -> str | None:
        wanted = "step" if isinstance(record, dict) and "event" in record else key
        value = record.get(wanted) if isinstance(record, dict) else None
        return f"it needs an integer {wanted!r}" if isinstance(value, bool) or not isinstance(value, int) else None

    return read_records(path, check, "resuming would lose the history after it: repair or delete that line and"
                                     " resume again")
