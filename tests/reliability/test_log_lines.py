"""Readers of a run's logs survive any line: ``trainlab train --resume`` and ``trainlab report``
refuse a hostile line in ``metrics.jsonl``, ``steps.jsonl`` or ``instruments.jsonl`` (and a
hostile ``summary.json`` / ``config.toml``) with one sentence naming the file and the line,
exit 2, and no file changed — never a RecursionError, a ValueError from Python's limit on
integer digits, a MemoryError, a hang or a traceback. A torn last line (a write cut short by a
crash) is still dropped, and what remains is read exactly as the undamaged log."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path
from typing import Callable

import pytest

from reliability.conftest import TINY, assert_unchanged, refused, run_cli, tiny_run, tree_hash

TIMING = ("seconds", "seconds_per_update", "total_seconds")
#: file -> (the field that identifies a record, a numeric field the readers use)
LOGS = {"metrics.jsonl": ("epoch", "train_loss"), "steps.jsonl": ("step", "loss"),
        "instruments.jsonl": ("step", "value")}
DEEP = 100_000
HUGE = 25_000_000  # a 50 MB line
RESUME = ["train", "--resume", "--set", "train.epochs=4", "--no-progress", "--out"]


def with_field(record: dict, field: str, raw: str | bytes | None) -> bytes:
    """``record`` as a JSON line whose ``field`` holds the raw text ``raw`` (``None``: no such field)."""
    record = dict(record)
    if raw is None:
        record.pop(field, None)
        return json.dumps(record).encode()
    record[field] = "@@"
    raw = raw.encode() if isinstance(raw, str) else raw
    return json.dumps(record).encode().replace(b'"@@"', raw)


def key(raw):
    return lambda record, k, v: with_field(record, k, raw)


def value(raw):
    return lambda record, k, v: with_field(record, v, raw)


def whole(raw: bytes):
    return lambda record, k, v: raw


#: hostile line kind -> how to make it from a good record (its key field k, its value field v)
KINDS: dict[str, Callable[[dict, str, str], bytes]] = {
    "deep-array": whole(b"[" * DEEP + b"]" * DEEP),
    "deep-object": whole(b'{"a":' * DEEP + b"1" + b"}" * DEEP),
    "deep-in-a-field": value("[" * DEEP + "]" * DEEP),
    "int-5000-digits-key": key("9" * 5000),
    "int-5000-digits-value": value("9" * 5000),
    "overflow-to-inf": value("1e999"),
    "overflow-to-minus-inf": value("-1e999"),
    "1e308-as-key": key("1e308"),
    "NaN-literal": value("NaN"),
    "Infinity-literal": value("Infinity"),
    "minus-Infinity-literal": value("-Infinity"),
    "NaN-as-key": key("NaN"),
    "garbage": whole(b"this is not JSON at all"),
    "json-array": whole(b"[1, 2, 3]"),
    "json-string": whole(b'"a string"'),
    "json-number": whole(b"42"),
    "json-null": whole(b"null"),
    "key-as-string": key('"2"'),
    "key-as-float": key("2.5"),
    "key-as-bool": key("true"),
    "key-null": key("null"),
    "key-missing": key(None),
    "key-negative": key("-1"),
    "value-as-string": value('"abc"'),
    "value-as-list": value("[1]"),
    "value-as-object": value('{"a": 1}'),
    "value-as-bool": value("true"),
    "nul-bytes": whole(b"\x00" * 8),
    "nul-inside-a-record": lambda record, k, v: b"{\x00" + with_field(record, v, "1")[1:],
    "invalid-utf8": value(b'"\xff\xfe"'),
    "truncated-in-the-middle": lambda record, k, v: json.dumps(record).encode()[:15],
    "50MB-line": whole(b"[" + b"1," * HUGE + b"1]"),
}
READERS = {"resume": lambda run: [*RESUME, run], "report": lambda run: ["report", run]}


@pytest.fixture(autouse=True)
def _no_hang():
    """A reader that blocks fails the case after 30 s instead of hanging the suite."""
    def hung(signum, frame):
        raise TimeoutError("the command hung")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, 30)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A finished 3-epoch tiny run with an ``instruments.jsonl`` of three readings."""
    run = tiny_run(tmp_path_factory.mktemp("template") / "run", epochs=3)
    readings = [{"step": s, "instrument": "grad_norm", "value": 1.0 + s, "seconds": 0.01} for s in (4, 12, 20)]
    (run / "instruments.jsonl").write_text("".join(json.dumps(r) + "\n" for r in readings))
    return run


def copy_run(template: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(template, run)
    return run


def damage_line(path: Path, index: int, line: bytes) -> int:
    """Line ``index`` (0-based) of ``path`` replaced by ``line``; its 1-based number."""
    lines = path.read_bytes().split(b"\n")
    assert len(lines) > index + 2, f"{path.name} needs more lines for this case"
    lines[index] = line
    path.write_bytes(b"\n".join(lines))
    return index + 1


HOSTILE = [pytest.param(reader, log, kind, id=f"{reader}-{log}-{kind}")
           for reader in READERS for log in LOGS for kind in KINDS]


@pytest.mark.parametrize("reader, log, kind", HOSTILE)
def test_a_hostile_log_line_is_refused_with_its_file_and_line(template, tmp_path, reader, log, kind):
    run = copy_run(template, tmp_path)
    path = run / log
    record = json.loads(path.read_text().splitlines()[1])
    number = damage_line(path, 1, KINDS[kind](record, *LOGS[log]))
    refused(READERS[reader](run), tmp_path, 2, [log, f"line {number}"])


# ---------------------------------------------------------------- summary.json and config.toml (the report reads both)

WHOLE_FILES = {
    "summary.json": {
        "deep-array": b"[" * DEEP + b"]" * DEEP,
        "deep-in-a-field": b'{"status": "completed", "x": ' + b"[" * DEEP + b"]" * DEEP + b"}",
        "int-5000-digits": b'{"status": "completed", "steps": ' + b"9" * 5000 + b"}",
        "NaN-literal": b'{"status": "completed", "train_loss": NaN}',
        "overflow-to-inf": b'{"status": "completed", "train_loss": 1e999}',
        "invalid-utf8": b'{"status": "\xff\xfe"}',
        "nul-bytes": b"\x00" * 16,
        "50MB": b"[" + b"1," * HUGE + b"1]",
    },
    "config.toml": {
        "deep-array": b"seed = " + b"[" * DEEP + b"]" * DEEP + b"\n",
        "int-5000-digits": b"seed = " + b"9" * 5000 + b"\n",
        "invalid-utf8": b'name = "\xff\xfe"\n',
        "nul-bytes": b"\x00" * 16,
    },
}
WHOLE = [pytest.param(name, kind, id=f"report-{name}-{kind}") for name, kinds in WHOLE_FILES.items() for kind in kinds]


@pytest.mark.parametrize("name, kind", WHOLE)
def test_a_hostile_summary_or_config_is_refused_by_the_report(template, tmp_path, name, kind):
    run = copy_run(template, tmp_path)
    (run / name).write_bytes(WHOLE_FILES[name][kind])
    refused(["report", run], tmp_path, 2, [name])


RESUMED_CONFIG = [pytest.param(kind, id=f"resume-config.toml-{kind}") for kind in WHOLE_FILES["config.toml"]]


@pytest.mark.parametrize("kind", RESUMED_CONFIG)
def test_a_hostile_config_is_refused_by_resume(template, tmp_path, kind):
    run = copy_run(template, tmp_path)
    (run / "config.toml").write_bytes(WHOLE_FILES["config.toml"][kind])
    refused([*RESUME, run], tmp_path, 2, ["config.toml"])


# ---------------------------------------------------------------- what must still work: a torn last line


def records(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def resumed_clean(template, tmp_path_factory) -> Path:
    """The reference: the undamaged template resumed to 4 epochs."""
    run = tmp_path_factory.mktemp("clean") / "run"
    shutil.copytree(template, run)
    assert run_cli([*RESUME, run]).code == 0
    return run


TORN = [pytest.param(reader, log, id=f"{reader}-{log}-torn-last-line") for reader in READERS for log in LOGS]


@pytest.mark.parametrize("reader, log", TORN)
def test_a_torn_last_line_is_dropped_and_the_rest_read_as_before(template, resumed_clean, tmp_path, reader, log):
    """A kill -9 mid-write leaves a last line cut short: dropped, and the rest read exactly as
    the undamaged log is (resume: the same records as the undamaged run resumed; report: the
    same records as the report reads from the undamaged run)."""
    run = copy_run(template, tmp_path)
    with open(run / log, "ab") as f:
        f.write(b'{"step": 25, "epoch": 4, "lo')
    before = tree_hash(tmp_path)
    result = run_cli(READERS[reader](run), tmp_path)
    assert result.code == 0, result.err
    if reader == "resume":
        for name in LOGS:
            assert records(run / name) == records(resumed_clean / name), name
        return
    from trainlab.report import run_report

    assert_unchanged(before, tree_hash(tmp_path), allowed_new=["report.html"])
    torn, clean = run_report.read(run), run_report.read(template)
    assert (torn.epochs, torn.steps, torn.readings, torn.events) == (clean.epochs, clean.steps, clean.readings,
                                                                      clean.events)
