"""Nothing lost (issue 21, item 2, and the named pipe of item 4).

* SIGTERM (a scheduler's preemption) is handled like Ctrl-C: the run checkpoints at the next
  safe point — mid-epoch, during evaluation, during a checkpoint write — and ``trainlab`` exits
  143 with one line; ``--resume`` then ends bit-identical to a run never interrupted. SIGTERM
  during ``diagnose``/``report``/``schedule plot`` leaves no partial or temporary file.
* No command writes over a run's own files: ``--out`` naming a run file, the run directory
  itself, another run directory or a file in it, or a link leading there is refused (exit 2,
  one sentence, nothing changed); a figure in a run directory is never written through a link.
* A second process cannot write a run directory whose lock file was deleted mid-run.
* A named pipe, a directory, a symbolic-link loop or an unreadable file in place of a run file
  is refused up front, never read (a pipe would block forever): a pipe or other special file
  is not a run file (exit 2); what the system refuses (a directory, a loop, no permission) is
  the environment's fault (exit 1), as elsewhere in trainlab.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from reliability.conftest import (PYTHON, RUN_FILES, TINY, assert_one_line, assert_unchanged, refused, run_cli,
                                  subprocess_env, tiny_run, tree_hash, unprivileged)
from reliability.test_resume import SETTINGS, assert_bit_identical, assert_same_history
from trainlab.train import rundir

LOCK = ".trainlab.lock"
ALL_RUN_FILES = (*rundir.RUN_FILES, LOCK)


class Unhandled(Exception):
    """SIGTERM reached the test process without trainlab handling it."""


@pytest.fixture(autouse=True)
def _guards():
    """SIGTERM raises :class:`Unhandled` unless trainlab handles it (the default would kill
    pytest); a reader that blocks fails after 60 s instead of hanging the suite."""
    def unhandled(signum, frame):
        raise Unhandled("SIGTERM was not handled by trainlab")

    def hung(signum, frame):
        raise TimeoutError("the command hung")

    term, alarm = signal.signal(signal.SIGTERM, unhandled), signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, 60)
    yield unhandled
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, alarm)
    signal.signal(signal.SIGTERM, term)


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("template") / "run")


def copy_run(template: Path, where: Path, name: str = "run") -> Path:
    run = where / name
    shutil.copytree(template, run)
    return run


# ================================================================ --out never lands on a run's files

def out_command(command: str, run: Path, out: Path | None) -> list:
    args = {"report": ["report", run], "diagnose": ["diagnose", run, "--no-progress"],
            "schedule": ["schedule", "plot", "constant", "--steps", "10"]}[command]
    return [*args, "--out", out] if out is not None else args


COMMANDS = ("report", "diagnose", "schedule")
INTO_RUN_FILE = [pytest.param(command, name, id=f"{command}-out-{name}") for command in COMMANDS
                 for name in ALL_RUN_FILES]


@pytest.mark.parametrize("command, name", INTO_RUN_FILE)
def test_out_naming_a_run_file_is_refused(template, tmp_path, command, name):
    run = copy_run(template, tmp_path)
    refused(out_command(command, run, run / name), tmp_path, 2, [name])


def other_run(template, tmp_path):
    return copy_run(template, tmp_path, "other")


def link_to_checkpoint(template, tmp_path):
    link = tmp_path / "fig.png"
    link.symlink_to(tmp_path / "run" / "checkpoint.pt")
    return link


#: where --out points -> (its path, a fragment the refusal names)
ELSEWHERE = {
    "the-run-directory": (lambda template, tmp: tmp / "run", "run"),
    "another-run-directory": (other_run, "other"),
    "a-new-file-in-another-run": (lambda template, tmp: other_run(template, tmp) / "figure.png", "other"),
    "a-link-to-the-runs-checkpoint": (link_to_checkpoint, "fig.png"),
}
OUT_ELSEWHERE = [pytest.param(command, where, id=f"{command}-out-{where}") for command in COMMANDS
                 for where in ELSEWHERE]


@pytest.mark.parametrize("command, where", OUT_ELSEWHERE)
def test_out_into_a_run_directory_is_refused(template, tmp_path, command, where):
    """(For ``schedule plot``, which belongs to no run, every run directory is another run's.)"""
    run = copy_run(template, tmp_path)
    make, name = ELSEWHERE[where]
    refused(out_command(command, run, make(template, tmp_path)), tmp_path, 2, [name])


def outside_file(template, tmp_path):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "precious.txt").write_text("the user's own file\n")
    return tmp_path / "outside" / "precious.txt"


#: the target of a link placed where a figure goes in the run directory
LINK_TARGETS = {
    "outside": outside_file,
    "another-runs-checkpoint": lambda template, tmp: other_run(template, tmp) / "checkpoint.pt",
    "own-checkpoint": lambda template, tmp: tmp / "run" / "checkpoint.pt",
    "dangling": lambda template, tmp: tmp / "nowhere.png",
}
#: a figure's place in the run directory: (command, its file name, passed with --out?)
FIGURES = {"report-default": ("report", "report.html", False), "diagnose-default": ("diagnose", "spectrum.png", False),
           "report-out": ("report", "page.html", True), "diagnose-out": ("diagnose", "figure.png", True)}
LINKED = [pytest.param(figure, target, id=f"{figure}-link-to-{target}") for figure in FIGURES for target in LINK_TARGETS]


@pytest.mark.parametrize("figure, target", LINKED)
def test_a_figure_is_never_written_through_a_link_in_a_run_directory(template, tmp_path, figure, target):
    """Decided: a link where a figure goes in a run directory is refused (it is left as it is,
    and so is whatever it points to); the user removes it or chooses another --out."""
    run = copy_run(template, tmp_path)
    command, name, with_out = FIGURES[figure]
    (run / name).symlink_to(LINK_TARGETS[target](template, tmp_path))
    refused(out_command(command, run, run / name if with_out else None), tmp_path, 2, [name, "link"])


@pytest.mark.parametrize("command, name", [("report", "report.html"), ("diagnose", "spectrum.png")],
                         ids=["report-again", "diagnose-again"])
def test_a_figure_of_the_run_may_be_written_again(template, tmp_path, command, name):
    """What must still work: the command's own output in the run directory is replaced, nothing else."""
    run = copy_run(template, tmp_path)
    assert run_cli(out_command(command, run, None), tmp_path).code == 0
    before = tree_hash(tmp_path)
    (run / name).write_bytes(b"an older figure")
    result = run_cli(out_command(command, run, None), tmp_path)
    assert result.code == 0, result.err
    after = tree_hash(tmp_path)
    assert {k: v for k, v in after.items() if not k.endswith(name)} == \
        {k: v for k, v in before.items() if not k.endswith(name)}
    assert (run / name).read_bytes() != b"an older figure"


# ================================================================ special files in place of run files

def fifo(path: Path) -> None:
    os.mkfifo(path)


def directory(path: Path) -> None:
    path.mkdir()


def loop(path: Path) -> None:
    path.symlink_to(path.name)


def unreadable(path: Path) -> None:
    path.write_bytes(b"")
    path.chmod(0)


#: what stands in place of a run file -> (how to make it, the exit code)
SPECIAL = {"fifo": (fifo, 2), "directory": (directory, 1), "symlink-loop": (loop, 1), "unreadable": (unreadable, 1)}
READS = {"resume": rundir.RUN_FILES, "report": ("config.toml", "summary.json", "metrics.jsonl", "steps.jsonl",
                                                 "instruments.jsonl"),
         "diagnose": ("config.toml", "checkpoint.pt")}
SPECIAL_CASES = [pytest.param(reader, name, kind, id=f"{reader}-{name}-{kind}") for reader, names in READS.items()
                 for name in names for kind in SPECIAL]


def reader_command(reader: str, run: Path) -> list:
    return {"resume": ["train", "--resume", "--set", "train.epochs=2", "--no-progress", "--out", run],
            "report": ["report", run], "diagnose": ["diagnose", run, "--no-progress"]}[reader]


@pytest.mark.parametrize("reader, name, kind", SPECIAL_CASES)
def test_a_special_file_in_place_of_a_run_file_is_refused(template, open_tmp, reader, name, kind):
    run = copy_run(template, open_tmp)
    if name == "instruments.jsonl":
        (run / name).write_text('{"step": 4, "instrument": "grad_norm", "value": 1.0, "seconds": 0.01}\n')
    (run / name).unlink(missing_ok=True)
    make, code = SPECIAL[kind]
    make(run / name)
    before = tree_hash(open_tmp)
    if kind == "unreadable":
        run.chmod(0o777)  # so the refusal is about the file, not about the directory
        before = tree_hash(open_tmp)
        with unprivileged():
            result = run_cli(reader_command(reader, run), open_tmp)
    else:
        result = run_cli(reader_command(reader, run), open_tmp)
    assert_one_line(result, code, [name])
    assert_unchanged(before, tree_hash(open_tmp))


# ================================================================ a deleted lock file lets no second writer in

def slow_run(out: Path) -> subprocess.Popen:
    args = ["--set", "data.name=iris", "--set", "model.hidden=[4]", "--set", "train.batch_size=1",
            "--set", "train.epochs=25", "--set", "train.device=cpu", "--no-progress"]
    return subprocess.Popen([PYTHON, "-m", "trainlab", "train", *args, "--out", str(out)], cwd=out.parent,
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, f"the run ended before the test could act: {proc.communicate()[1]}"
    assert path.exists(), f"{path.name} did not appear within {timeout} s"


SECOND = {"resume": ["train", "--resume", "--set", "train.epochs=25", "--no-progress", "--out"],
          "overwrite": ["train", *TINY, "--overwrite", "--out"]}


@pytest.mark.parametrize("second", SECOND, ids=[f"lock-deleted-then-{s}" for s in SECOND])
def test_a_deleted_lock_file_lets_no_second_process_write_the_run(tmp_path, second):
    """issue 21: deleting RUN/.trainlab.lock mid-run let a second process lock a new one and
    write the same run (6,975 duplicated steps). Two real processes: the running one and this one."""
    out = tmp_path / "run"
    first = slow_run(out)
    try:
        wait_for(out / "metrics.jsonl", first)
        (out / LOCK).unlink()
        result = run_cli([*SECOND[second], out], tmp_path)
        assert_one_line(result, 2, ["run", "in use"])
        _, err = first.communicate(timeout=120)
    finally:
        first.kill()
        first.wait()
    assert first.returncode == 0, err
    steps = [json.loads(line)["step"] for line in (out / "steps.jsonl").read_text().splitlines()]
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 25 * 120 + 1)) and epochs == list(range(1, 26))
    assert sorted(p.name for p in out.iterdir()) == sorted(RUN_FILES)


# ================================================================ SIGTERM

SIGTERM_SETTINGS = [*SETTINGS, "train.checkpoint_every=1000"]  # the case: no epoch checkpoint to fall back on
STEPS_PER_EPOCH = 8


def train_args(*extra: str) -> list:
    return ["train", *sum((["--set", s] for s in [*SIGTERM_SETTINGS, *extra]), []), "--no-progress"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    assert run_cli([*train_args(), "--out", out]).code == 0
    return out


def kill_self(times: int = 1) -> None:
    for _ in range(times):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # the handler runs between bytecodes of this thread


def at_step(k: int, times: int = 1):
    """Patch: SIGTERM right after update ``k``."""
    def patch(monkeypatch):
        from trainlab.train.trainer import Trainer

        real = Trainer._train_step

        def step(self, *args):
            record = real(self, *args)
            if self.step == k:
                kill_self(times)
            return record

        monkeypatch.setattr(Trainer, "_train_step", step)
    return patch


def in_evaluation(epoch: int):
    """Patch: SIGTERM while evaluating epoch ``epoch``."""
    def patch(monkeypatch):
        from trainlab.train.trainer import Trainer

        real = Trainer.evaluate

        def evaluate(self, data):
            if self.epoch == epoch - 1:
                kill_self()
            return real(self, data)

        monkeypatch.setattr(Trainer, "evaluate", evaluate)
    return patch


def in_checkpoint_write(number: int):
    """Patch: SIGTERM while the ``number``-th checkpoint is being written."""
    def patch(monkeypatch):
        from trainlab.train import checkpoint

        real, calls = checkpoint.save, []

        def save(obj, path):
            calls.append(path)
            if len(calls) == number:
                kill_self()
            return real(obj, path)

        monkeypatch.setattr(checkpoint, "save", save)
    return patch


#: where SIGTERM falls -> (the patch, extra settings)
POINTS = {
    "mid-epoch-1": (at_step(3), []),
    "mid-epoch-3": (at_step(2 * STEPS_PER_EPOCH + 3), []),
    "last-step-of-epoch-1": (at_step(STEPS_PER_EPOCH), []),
    "during-evaluation-of-epoch-2": (in_evaluation(2), []),
    "during-evaluation-of-the-last-epoch": (in_evaluation(3), []),
    "during-a-checkpoint-write": (in_checkpoint_write(1), ["train.checkpoint_every=1"]),
    "twice-mid-epoch-2": (at_step(STEPS_PER_EPOCH + 4, times=2), ["train.checkpoint_every=1"]),
}


@pytest.mark.parametrize("point", POINTS)
def test_sigterm_checkpoints_exits_143_and_resumes_bit_identical(tmp_path, reference, monkeypatch, _guards, point):
    """A second SIGTERM stops at once (as a second Ctrl-C), from the last checkpoint."""
    patch, extra = POINTS[point]
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        patch(m)
        result = run_cli([*train_args(*extra), "--out", out], tmp_path)
    assert_one_line(result, 143, ["SIGTERM", "--resume"])
    assert signal.getsignal(signal.SIGTERM) is _guards  # the caller's handler is back
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    assert (out / "checkpoint.pt").exists()
    result = run_cli(["train", "--resume", "--no-progress", "--out", out], tmp_path)
    assert result.code == 0, result.err
    assert_bit_identical(reference, out)
    assert_same_history(reference, out)


def test_sigterm_through_the_python_api_names_the_signal(tmp_path, _guards):
    """``Trainer.fit`` raises a KeyboardInterrupt (catchable as before) that carries the signal."""
    from trainlab.train import config as config_mod
    from trainlab.train import run as run_mod

    out = tmp_path / "run"

    class Term:
        def on_step_end(self, trainer, record):
            if trainer.step == 5:
                kill_self()

    with pytest.raises(KeyboardInterrupt) as e:
        run_mod.train(config_mod.load(None, SIGTERM_SETTINGS), out, progress=False, callbacks=[Term()])
    assert getattr(e.value, "signum", None) == signal.SIGTERM and "SIGTERM" in str(e.value)
    assert signal.getsignal(signal.SIGTERM) is _guards
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 5


def test_sigint_still_exits_130_with_one_line(tmp_path, monkeypatch):
    out = tmp_path / "run"

    def ctrl_c(self, *args):
        record = real(self, *args)
        if self.step == 3:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
        return record

    from trainlab.train.trainer import Trainer

    real = Trainer._train_step
    monkeypatch.setattr(Trainer, "_train_step", ctrl_c)
    assert_one_line(run_cli([*train_args(), "--out", out], tmp_path), 130, ["interrupted", "--resume"])


def test_sigterm_to_a_training_process_then_resume(tmp_path, reference):
    """A real SIGTERM to ``trainlab train`` in its own process (checkpoint_every=1000, so no
    epoch checkpoint exists yet): exit 143, one line, a checkpoint; resumed, bit-identical."""
    out = tmp_path / "run"
    args = train_args("train.batch_size=2", "train.epochs=10")
    longer = tmp_path / "reference"
    assert run_cli([*args, "--out", longer], tmp_path).code == 0
    proc = subprocess.Popen([PYTHON, "-m", "trainlab", *args, "--out", str(out)], cwd=tmp_path,
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(out / "metrics.jsonl", proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 143, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "SIGTERM" in lines[0], err
    assert (out / "checkpoint.pt").exists()
    result = run_cli(["train", "--resume", "--no-progress", "--out", out], tmp_path)
    assert result.code == 0, result.err
    assert_bit_identical(longer, out)
    assert_same_history(longer, out)


#: SIGTERM in a real process just before the output replaces its target (the temporary file is complete)
KILL_BEFORE_REPLACE = """
import os, signal, sys
real = os.replace
def replace(src, dst, *a, **k):
    if str(dst).endswith(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGTERM)
    return real(src, dst, *a, **k)
os.replace = replace
from trainlab.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("command", COMMANDS, ids=[f"sigterm-during-{c}-write" for c in COMMANDS])
def test_sigterm_while_writing_an_output_leaves_no_file(template, tmp_path, command):
    run = copy_run(template, tmp_path)
    out = tmp_path / ("page.html" if command == "report" else "figure.png")
    before = tree_hash(tmp_path)
    proc = subprocess.run([PYTHON, "-c", KILL_BEFORE_REPLACE, out.name, *map(str, out_command(command, run, out))],
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 143, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "SIGTERM" in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert_unchanged(before, tree_hash(tmp_path))
