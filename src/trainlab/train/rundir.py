"""Run directories that never lose a file.

A run directory holds :data:`RUN_FILES`. The rules that keep it safe:

* a fresh run refuses a directory that already holds any file it would write
  (:func:`check_fresh`), unless the caller asked to overwrite;
* one process at a time writes it: :func:`locked` holds an exclusive ``flock`` on
  ``DIR/.trainlab.lock`` and one on the directory itself (an open descriptor of ``DIR``) for
  the whole run, and a second process is refused at once. Why both: the lock file says who
  holds the run (its pid, for the message) and is what other tools see, but anyone can delete
  it, after which a second process would create and lock a new one; the directory cannot be
  deleted while a run writes into it, so its lock still refuses that second process. Where a
  file system cannot lock a directory (some network file systems), the lock file guards alone;
* :func:`new_run_dir` creates default directories with an exclusive ``mkdir``, so two runs
  started in the same second get two directories;
* a run's files are opened with :func:`open_regular`, which refuses up front anything but a
  regular file — a named pipe (whose read would block forever), a socket or device
  (:class:`DataError`); a directory, a link loop or no permission stay the environment's
  :class:`OSError` — and :func:`check_run_files` applies it to every run file before a reader starts;
* logs are read back with :func:`read_log` / :func:`read_records`, line by line: a torn last
  line (a crash mid-write) is dropped; a damaged line anywhere else — not JSON, nested too
  deeply, an integer beyond 64 bits, ``NaN``/``Infinity`` or a number that overflows to
  infinity, longer than :data:`MAX_LINE` bytes, not a record of the expected fields — is
  refused with its file and line number, so no reader meets a RecursionError, a MemoryError
  or a value that does not mean what it says.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator

from trainlab.errors import ConfigError, DataError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there go unlocked
    fcntl = None  # type: ignore[assignment]

#: Every file a run writes into its directory.
RUN_FILES = ("config.toml", "metrics.jsonl", "steps.jsonl", "summary.json", "checkpoint.pt", "instruments.jsonl")
LOCK_NAME = ".trainlab.lock"
#: The longest line (and JSON file) a reader takes, in bytes. trainlab's records are far shorter
#: (an instrument reading with a part for every tensor is tens of kB); a longer one is damage.
MAX_LINE = 8 * 2**20
#: The numeric fields of each log's records, each a number or null where present.
NUMBER_FIELDS = {
    "metrics.jsonl": ("train_loss", "train_accuracy", "eval_loss", "eval_accuracy", "seconds", "seconds_per_update",
                      "lr", "grad_norm"),
    "steps.jsonl": ("loss", "grad_norm", "lr"),
    "instruments.jsonl": ("value", "threshold", "batch_size"),
}

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
    present = [name for name in names if os.path.lexists(out / name)]  # a dangling link or a loop too
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
    try:
        directory = _lock_directory(out)
    except BaseException:
        _release(out, fd)
        raise
    with _held_guard:
        _held[key] = threading.get_ident()
    try:
        yield out
    finally:
        with _held_guard:
            del _held[key]
        _release(out, fd)
        if directory is not None:
            os.close(directory)


def _lock_directory(out: Path) -> int | None:
    """An exclusive ``flock`` on an open descriptor of ``out`` itself (module docstring: it
    outlives a deleted lock file); ``None`` where the file system cannot lock a directory."""
    if fcntl is None:
        return None
    try:
        fd = os.open(out, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # its holder's lock file was deleted: the run is still being written
        os.close(fd)
        raise ConfigError(_busy(out, None)) from None
    except OSError:  # e.g. a network file system that locks only files opened for writing
        os.close(fd)
        return None
    return fd


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


#: Files whose presence makes a directory a run directory: trainlab's logs and lock (a
#: ``config.toml`` or ``checkpoint.pt`` alone does not: many a project holds one).
RUN_MARKERS = ("metrics.jsonl", "steps.jsonl", "instruments.jsonl", LOCK_NAME)


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory holding a run (any of :data:`RUN_MARKERS`)."""
    path = Path(path)
    return path.is_dir() and any(os.path.lexists(path / name) for name in RUN_MARKERS)


def check_output(out: str | Path, own: str | Path | None = None) -> None:
    """Refuse (:class:`ConfigError`) to write a command's output (a report, a figure) to ``out``
    where it would replace a run's files: a file named as one of :data:`RUN_FILES` or the lock
    in a run directory, a run directory itself, or any file in a run directory other than
    ``own`` (the run the output belongs to; ``None``: it belongs to none). A link in a run
    directory is refused too — an output is written atomically by replacing its path, and
    trainlab does not write through a link there, nor replace the user's link — and a link
    elsewhere is followed to where it leads, which must pass the same checks. Reads only.
    """
    out = Path(out)
    _check_output_path(out, own, out)
    if out.is_symlink() and is_run_dir(out.parent):
        raise ConfigError(f"{str(out)!r} is a symbolic link in run directory {str(out.parent)!r}; trainlab does not"
                          " write an output through a link there: remove the link or write elsewhere")
    real = Path(os.path.realpath(out))
    if real != out.absolute():
        _check_output_path(real, own, out)


def _check_output_path(path: Path, own: str | Path | None, asked: Path) -> None:
    via = "" if path == asked else f" (where {str(asked)!r} leads)"
    if is_run_dir(path):
        raise ConfigError(f"{str(path)!r}{via} is a run directory; give a file to write, outside any other run's"
                          " files, e.g. report.html")
    parent = path.parent
    if not is_run_dir(parent):
        return
    if path.name in (*RUN_FILES, LOCK_NAME) or path.name.startswith(tuple(f".{n}.tmp" for n in RUN_FILES)):
        raise ConfigError(f"{str(path)!r}{via} is the run's own {path.name} in run directory {str(parent)!r}; no"
                          " output is written over a run's files: choose another file name")
    if own is None or not _same_dir(parent, Path(own)):
        raise ConfigError(f"{str(path)!r}{via} lies in run directory {str(parent)!r}, another run's; write outputs"
                          " beside their own run or outside any run directory")


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def open_regular(path: str | Path) -> BinaryIO:
    """``path`` opened for reading (binary), refused up front unless it is a regular file.

    It is opened without blocking, so a named pipe is seen, never read (a read would wait for a
    writer forever); a pipe, socket or device is a :class:`DataError` naming it. A missing file,
    a directory, a link loop or no permission raise the :class:`OSError` naming ``path`` — the
    environment's faults, as a CLI reports them (exit 1).
    """
    path = Path(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", str(path))
        if not stat.S_ISREG(mode):
            raise DataError(f"{str(path)!r} is {_kind(mode)}, not a regular file, so trainlab does not read it;"
                            " move it away or replace it with the run's file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _kind(mode: int) -> str:
    kinds = {stat.S_IFIFO: "a named pipe (FIFO)", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
             stat.S_IFBLK: "a block device"}
    return kinds.get(stat.S_IFMT(mode), "a special file")


def append_lines(path: str | Path, lines: Iterable[str]) -> None:
    """Append ``lines`` (each ending in a newline) to the log ``path``; an :class:`OSError` of the
    write names the path (a failed ``write()`` names no file by itself)."""
    try:
        with open(path, "a") as f:
            f.writelines(lines)
    except OSError as e:
        if e.filename is None and e.errno is not None:
            e.filename = str(path)
        raise


def check_run_files(out: str | Path, names: Iterable[str] = RUN_FILES) -> None:
    """Refuse up front (:func:`open_regular`) any of ``names`` in run directory ``out`` that is
    there but not a readable regular file; missing ones are fine. Reads nothing."""
    for name in names:
        path = Path(out) / name
        if os.path.lexists(path):
            open_regular(path).close()


def read_bounded(path: str | Path, what: str) -> bytes | None:
    """The bytes of a small file of the run (``summary.json``, ``config.toml``), or ``None``
    when it does not exist; one larger than :data:`MAX_LINE` is a :class:`DataError`."""
    if not os.path.lexists(path):
        return None
    with open_regular(path) as f:
        data = f.read(MAX_LINE + 1)
    if len(data) > MAX_LINE:
        raise DataError(f"{what} {str(path)!r} is larger than {MAX_LINE // 2**20} MiB, far larger than the file trainlab"
                        " writes; repair it or move it away")
    return data


class _Damage(ValueError):
    """A line that parses as JSON but holds what trainlab never writes (so not a torn write)."""


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Damage(f"the number {text[:20]} overflows to infinity")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > 19 or not -2**63 <= int(text) < 2**63:
        raise _Damage(f"an integer of {len(text.lstrip('-'))} digits, beyond 64 bits")
    return int(text)


def _no_constant(name: str) -> Any:
    raise _Damage(f"{name}, which JSON does not allow; trainlab writes null for a non-finite value")


def parse_json(raw: bytes) -> Any:
    """The JSON value in ``raw`` (UTF-8), as trainlab writes it: no ``NaN``/``Infinity``, no number
    that overflows to infinity, no integer beyond 64 bits, no nesting deeper than Python's
    recursion limit. Raises :class:`UnicodeDecodeError` or :class:`json.JSONDecodeError` for
    text that is not JSON (what a torn write leaves), and ``ValueError`` naming the reason
    for the rest."""
    text = raw.decode("utf-8")
    try:
        return json.loads(text, parse_float=_finite_float, parse_int=_bounded_int, parse_constant=_no_constant)
    except RecursionError:
        raise _Damage("nested too deeply") from None


def read_records(path: str | Path, check: Callable[[Any], str | None], remedy: str
                 ) -> tuple[list[dict[str, Any]], bool]:
    """The records of a JSON-lines file and whether its last line was torn.

    A last line that is not JSON is a write cut short by a crash and is dropped; any other
    damaged line (:func:`parse_json`, longer than :data:`MAX_LINE`), or a record for which
    ``check(record)`` names a problem, raises a :class:`DataError` with the file, the line
    number and ``remedy`` — so no history is ever cut away silently. Blank lines are skipped.
    A missing file has no records; one that is not a regular file is refused (:func:`open_regular`).
    Read line by line, so a long log never sits in memory twice.
    """
    path = Path(path)
    if not os.path.lexists(path):
        return [], False
    records: list[dict[str, Any]] = []
    with open_regular(path) as f:
        number = 0
        while raw := f.readline(MAX_LINE + 1):
            number += 1
            if len(raw) > MAX_LINE and not raw.endswith(b"\n"):
                raise DataError(f"{str(path)!r} line {number} is damaged (longer than {MAX_LINE // 2**20} MiB, far"
                                f" longer than any record trainlab writes); {remedy}")
            if not raw.strip():
                continue
            try:
                record = parse_json(raw)
            except _Damage as e:
                raise DataError(f"{str(path)!r} line {number} is damaged ({e}); {remedy}") from None
            except ValueError:  # not JSON (UnicodeDecodeError and JSONDecodeError are ValueErrors)
                if _rest_is_blank(f):
                    return records, True
                raise DataError(f"{str(path)!r} line {number} is damaged (not a JSON record); {remedy}") from None
            problem = check(record)
            if problem:
                raise DataError(f"{str(path)!r} line {number} is not a trainlab record: {problem}; {remedy}")
            records.append(record)
    return records, False


def _rest_is_blank(f: BinaryIO) -> bool:
    """Whether nothing but white space follows in ``f`` (so the line just read was the last)."""
    return all(not chunk.strip() for chunk in iter(lambda: f.read(2**20), b""))


def record_problem(record: Any, ints: Iterable[str], numbers: Iterable[str] = ()) -> str | None:
    """What makes ``record`` no trainlab record, or ``None``: it must be a JSON object whose
    ``ints`` are integers >= 0 and whose ``numbers``, where present, are numbers or null."""
    if not isinstance(record, dict):
        return f"expected a JSON object, found {type(record).__name__}"
    for key in ints:
        value = record.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"it needs an integer {key!r} >= 0, found {_show(value)}"
    for key in numbers:
        value = record.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"{key!r} must be a number or null, found {_show(value)}"
    return None


def _show(value: Any) -> str:
    text = " ".join(repr(value).split())
    return text if len(text) <= 40 else text[:37] + "..."


def read_log(path: str | Path, key: str, numbers: Iterable[str] | None = None) -> tuple[list[dict[str, Any]], bool]:
    """A run's log for ``--resume`` (:func:`read_records`): every record a JSON object with an
    integer ``key`` >= 0 (lines of ``metrics.jsonl`` that carry an ``"event"`` need ``step``
    instead) and ``numbers`` (default: :data:`NUMBER_FIELDS` of the file's name) numbers or
    null where present."""
    numbers = tuple(NUMBER_FIELDS.get(Path(path).name, ()) if numbers is None else numbers)

    def check(record: Any) -> str | None:
        if not isinstance(record, dict):
            return f"it needs an integer {key!r} in a JSON object, found a JSON {type(record).__name__}"
        if "event" in record:
            return record_problem(record, ("step",))
        return record_problem(record, (key,), numbers)

    return read_records(path, check, "resuming would lose the history after it: repair or delete that line and"
                                     " resume again")
