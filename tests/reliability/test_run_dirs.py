"""Run directories never lose a file: a fresh run refuses a directory holding files it would
write, ``--resume`` validates everything before it writes anything, two processes never write
one directory, default names are unique, and environment faults (a path that is a file, no
permission, a full disk) are one line naming the path with exit 1."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reliability.conftest import (RUN_FILES, TINY, assert_one_line, assert_unchanged, refused, run_cli,
                                  subprocess_env, tiny_run, tree_hash, unprivileged)

# ---------------------------------------------------------------- fresh runs over existing files


@pytest.mark.parametrize("name", RUN_FILES)
def test_fresh_run_refuses_a_directory_holding_a_run_file(tmp_path, name):
    """issue 12: a fresh ``--out DIR`` replaced the config.toml/summary.json/metrics.jsonl already there."""
    out = tmp_path / "run"
    out.mkdir()
    (out / name).write_text("the user's own file\n")
    refused(["train", *TINY, "--out", out], tmp_path, 2, [name])


def test_refused_second_run_keeps_the_first_runs_config(tmp_path):
    """issue 12: a refused second run had already overwritten the first run's config.toml."""
    out = tiny_run(tmp_path / "run")
    refused(["train", *TINY, "--set", "optimizer.lr=0.1", "--out", out], tmp_path, 2, ["run"])


def test_overwrite_replaces_a_run(tmp_path):
    out = tiny_run(tmp_path / "run")
    result = run_cli(["train", *TINY, "--set", "optimizer.lr=0.01", "--overwrite", "--out", out], tmp_path)
    assert result.code == 0, result.err
    assert "lr = 0.01" in (out / "config.toml").read_text()
    assert sorted(p.name for p in out.iterdir()) == sorted(RUN_FILES)


# ---------------------------------------------------------------- paths that cannot be run directories


def test_out_is_a_file(tmp_path):
    (tmp_path / "run").write_text("a file\n")
    refused(["train", *TINY, "--out", tmp_path / "run"], tmp_path, 1, ["run"])


def test_out_below_a_file(tmp_path):
    (tmp_path / "file").write_text("a file\n")
    refused(["train", *TINY, "--out", tmp_path / "file" / "run"], tmp_path, 1, ["file"])


def test_resume_out_is_a_file(tmp_path):
    (tmp_path / "run").write_text("a file\n")
    refused(["train", "--resume", "--no-progress", "--out", tmp_path / "run"], tmp_path, 1, ["run"])


def test_out_is_a_dangling_link(tmp_path):
    (tmp_path / "run").symlink_to(tmp_path / "nowhere")
    refused(["train", *TINY, "--out", tmp_path / "run"], tmp_path, 1, ["run"])


def test_default_runs_root_is_a_file(tmp_path):
    (tmp_path / "runs").write_text("a file\n")
    refused(["train", *TINY], tmp_path, 1, ["runs"])


def test_out_in_a_read_only_directory(open_tmp):
    parent = open_tmp / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    before = tree_hash(open_tmp)
    with unprivileged():
        result = run_cli(["train", *TINY, "--out", parent / "run"], open_tmp)
    assert_one_line(result, 1, ["ro"])
    assert_unchanged(before, tree_hash(open_tmp))


def test_resume_in_a_read_only_run_directory(open_tmp):
    out = tiny_run(open_tmp / "run")
    for p in [out, *out.iterdir()]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    before = tree_hash(open_tmp)
    with unprivileged():
        result = run_cli(["train", "--resume", "--set", "train.epochs=2", "--no-progress", "--out", out], open_tmp)
    assert_one_line(result, 1, ["run"])
    assert_unchanged(before, tree_hash(open_tmp))


def test_disk_full_while_checkpointing(tmp_path, monkeypatch):
    """``fsync`` is where a full disk reports itself for buffered writes; no temporary file stays behind."""
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    out = tmp_path / "run"
    result = run_cli(["train", *TINY, "--out", out], tmp_path)
    assert_one_line(result, 1, [str(out)])
    leftovers = [p.name for p in tmp_path.rglob("*") if "tmp" in p.name or p.name == ".trainlab.lock"]
    assert not leftovers, leftovers


def test_disk_full_while_resuming_loses_nothing(tmp_path, monkeypatch):
    """A full disk during --resume: exit 1 naming the path; the last checkpoint and the history
    before it stay as they were, and once there is space again the run resumes and ends as an
    uninterrupted one would, bit for bit."""
    import torch

    reference = tiny_run(tmp_path / "reference", epochs=3)
    out = tiny_run(tmp_path / "run", epochs=1)
    checkpoint, history = (out / "checkpoint.pt").read_bytes(), (out / "metrics.jsonl").read_text()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", full)
        result = run_cli(["train", "--resume", "--set", "train.epochs=3", "--no-progress", "--out", out], tmp_path)
    assert_one_line(result, 1, [str(out)])
    assert (out / "checkpoint.pt").read_bytes() == checkpoint
    assert (out / "metrics.jsonl").read_text().startswith(history)
    result = run_cli(["train", "--resume", "--set", "train.epochs=3", "--no-progress", "--out", out], tmp_path)
    assert result.code == 0, result.err
    mine, theirs = (torch.load(p / "checkpoint.pt", weights_only=True)["model"] for p in (out, reference))
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


def test_disk_full_in_a_fresh_process(tmp_path):
    """A file-size limit makes every write past 4 kB fail as a full disk would (EFBIG)."""
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN);"
            " resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY));"
            " from trainlab.cli import main; sys.exit(main(sys.argv[1:]))")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", code, "train", *TINY, "--out", str(out)], cwd=tmp_path,
                          env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(out) in lines[0], proc.stderr


# ---------------------------------------------------------------- --resume validates before it writes


def test_resume_a_directory_that_does_not_exist(tmp_path):
    refused(["train", "--resume", "--no-progress", "--out", tmp_path / "nothing"], tmp_path, 2, ["nothing"])


def test_resume_a_directory_without_config(tmp_path):
    out = tiny_run(tmp_path / "run")
    (out / "config.toml").unlink()
    refused(["train", "--resume", "--set", "train.epochs=2", "--no-progress", "--out", out], tmp_path, 2,
            ["config.toml"])


def test_resume_without_checkpoint(tmp_path):
    out = tiny_run(tmp_path / "run")
    (out / "checkpoint.pt").unlink()
    refused(["train", "--resume", "--set", "train.epochs=2", "--no-progress", "--out", out], tmp_path, 2,
            ["checkpoint"])


def test_resume_changing_a_fixed_key(tmp_path):
    """issue 12: a failed --resume rewrote config.toml before it failed."""
    out = tiny_run(tmp_path / "run")
    refused(["train", "--resume", "--set", "train.epochs=2", "--set", "optimizer.lr=0.5", "--no-progress",
             "--out", out], tmp_path, 2, ["optimizer.lr", "0.5"])


def test_resume_with_a_different_config_file(tmp_path):
    out = tiny_run(tmp_path / "run")
    (tmp_path / "other.toml").write_text('seed = 7\n[data]\nname = "iris"\n[model]\nhidden = [4]\n'
                                         '[train]\nepochs = 2\nbatch_size = 16\n')
    refused(["train", "--resume", "--config", tmp_path / "other.toml", "--no-progress", "--out", out], tmp_path, 2,
            ["seed", "7"])


def test_resume_with_a_damaged_config(tmp_path):
    out = tiny_run(tmp_path / "run")
    (out / "config.toml").write_text("seed = = 0\n")
    refused(["train", "--resume", "--set", "train.epochs=2", "--no-progress", "--out", out], tmp_path, 2,
            ["config.toml"])


def test_resume_with_an_unknown_key_in_config(tmp_path):
    out = tiny_run(tmp_path / "run")
    with open(out / "config.toml", "a") as f:
        f.write("\n[extra]\nkey = 1\n")
    refused(["train", "--resume", "--set", "train.epochs=2", "--no-progress", "--out", out], tmp_path, 2,
            ["extra"])


def damage_line(path: Path, index: int, text: str) -> int:
    lines = path.read_text().splitlines(keepends=True)
    assert len(lines) > index + 1, f"{path.name} needs more lines for this case"
    lines[index] = text
    path.write_text("".join(lines))
    return index + 1


@pytest.mark.parametrize("log, text", [
    ("metrics.jsonl", '{"epoch": 1, "train_lo\n'),
    ("steps.jsonl", '{"step": 2, "los\n'),
    ("metrics.jsonl", "[1, 2]\n"),
    ("steps.jsonl", '"a string"\n'),
    ("steps.jsonl", "\x00\x00\x00\n"),
], ids=["metrics-torn-middle", "steps-torn-middle", "metrics-not-an-object", "steps-not-an-object",
        "steps-nul-bytes"])
def test_resume_refuses_a_damaged_line_in_the_middle_of_a_log(tmp_path, log, text):
    """issue 12: --resume after one bad line in the middle of metrics.jsonl (or steps.jsonl)
    rewrote the file with only the lines before it."""
    out = tiny_run(tmp_path / "run", epochs=3)
    number = damage_line(out / log, 1, text)
    refused(["train", "--resume", "--set", "train.epochs=4", "--no-progress", "--out", out], tmp_path, 2,
            [log, f"line {number}"])


@pytest.mark.parametrize("log, key", [("metrics.jsonl", "epoch"), ("steps.jsonl", "step")])
def test_resume_drops_a_torn_last_line(tmp_path, log, key):
    """A crash mid-write leaves a torn last line: dropped on resume, as before, and nothing else."""
    out = tiny_run(tmp_path / "run", epochs=2)
    kept = [json.loads(line)[key] for line in (out / log).read_text().splitlines()]
    with open(out / log, "a") as f:
        f.write(f'{{"{key}": 999, "lo')
    result = run_cli(["train", "--resume", "--set", "train.epochs=3", "--no-progress", "--out", out], tmp_path)
    assert result.code == 0, result.err
    values = [json.loads(line)[key] for line in (out / log).read_text().splitlines()]
    assert values[:len(kept)] == kept and 999 not in values and values == sorted(set(values))


def test_resume_with_a_damaged_summary(tmp_path):
    """summary.json is rewritten at the end of every run; a damaged one is no reason to refuse."""
    out = tiny_run(tmp_path / "run")
    (out / "summary.json").write_text("{broken")
    result = run_cli(["train", "--resume", "--set", "train.epochs=2", "--no-progress", "--out", out], tmp_path)
    assert result.code == 0, result.err
    assert json.loads((out / "summary.json").read_text())["epochs"] == 2


def test_resume_with_a_log_that_is_a_directory(tmp_path):
    out = tiny_run(tmp_path / "run")
    (out / "steps.jsonl").unlink()
    (out / "steps.jsonl").mkdir()
    refused(["train", "--resume", "--set", "train.epochs=2", "--no-progress", "--out", out], tmp_path, 1,
            ["steps.jsonl"])


# ---------------------------------------------------------------- one writer per directory; unique names


def test_default_run_names_are_unique_within_a_second(tmp_path, monkeypatch):
    """issue 12: two runs started in the same second shared the default run directory. The
    clock is held at one second for all three runs."""
    frozen = time.localtime()
    monkeypatch.setattr(time, "localtime", lambda seconds=None: frozen)
    for _ in range(3):
        result = run_cli(["train", *TINY], tmp_path)
        assert result.code == 0, result.err
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 3
    for run in runs:
        assert sorted(p.name for p in run.iterdir()) == sorted(RUN_FILES)
        assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_two_processes_started_together_get_two_run_directories(tmp_path):
    """issue 12's scene: two runs started at once with default names; each keeps its own
    directory, with one run's metrics and a checkpoint each."""
    procs = [subprocess.Popen([sys.executable, "-m", "trainlab", "train", *TINY], cwd=tmp_path, env=subprocess_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 2
    for run in runs:
        assert sorted(p.name for p in run.iterdir()) == sorted(RUN_FILES)
        assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


LOCK_HOLDER = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT);"
               " fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode());"
               " print('locked', flush=True); time.sleep(60)")


@pytest.mark.parametrize("resume", [False, True], ids=["fresh", "resume"])
def test_a_locked_run_directory_is_refused(tmp_path, resume):
    out = tiny_run(tmp_path / "run") if resume else tmp_path / "run"
    out.mkdir(exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(out / ".trainlab.lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        args = ["--resume", "--set", "train.epochs=2", "--no-progress"] if resume else TINY
        refused(["train", *args, "--out", out], tmp_path, 2, ["run", "in use"])
    finally:
        holder.kill()
        holder.wait()


def test_a_second_process_cannot_write_a_running_directory(tmp_path):
    """While one ``trainlab train`` runs, another one on its directory is refused and the first
    run completes with its files intact."""
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "trainlab", "train", "--set", "data.name=iris",
                              "--set", "model.hidden=[4]", "--set", "train.batch_size=1", "--set", "train.epochs=20",
                              "--set", "train.device=cpu",
                              "--no-progress", "--out", str(out)],
                             cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        deadline = time.time() + 60
        while not (out / "metrics.jsonl").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert first.poll() is None, "the first run ended before the second could try"
        for args in (["--resume", "--set", "train.epochs=21"], ["--overwrite", *TINY[:-1]]):
            result = run_cli(["train", *args, "--no-progress", "--out", out], tmp_path)
            assert_one_line(result, 2, ["in use"])
        _, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 0, err
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 21))
    assert sorted(p.name for p in out.iterdir()) == sorted(RUN_FILES)
