import errno
import fcntl
import json
import os
import pickle
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from trainlab.cli import main
from trainlab.train import rundir

from cli_checks import error_line
from digests import tree_digest

QUICK = ["--set", "train.epochs=2", "--set", "data.name=iris", "--no-progress"]


def test_train_writes_the_run_directory(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *QUICK, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == \
        ["checkpoint.pt", "config.toml", "metrics.jsonl", "steps.jsonl", "summary.json"]
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert f"{100 * summary['eval_accuracy']:.1f} %" in printed and str(out) in printed


def test_resume_continues_to_the_configured_epochs(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", *QUICK, "--out", out]) == 0
    assert main(["train", "--out", out, "--resume", "--set", "train.epochs=4", "--no-progress"]) == 0
    metrics = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    assert [m["epoch"] for m in metrics] == [1, 2, 3, 4]


def test_config_file(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text('[data]\nname = "wine"\n[train]\nepochs = 1\n')
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert 'name = "wine"' in (tmp_path / "run" / "config.toml").read_text()


@pytest.mark.parametrize("args, fragment", [
    (["--set", "train.epochs=0"], "train.epochs = 0 is not allowed; expected an integer >= 1"),
    (["--set", "train.batch_size=0"], "train.batch_size = 0 is not allowed"),
    (["--set", "optimizer.lr=-1"], "optimizer.lr = -1.0 is not allowed; expected a number > 0"),
    (["--set", "optimizer.name=lion"], "optimizer.name = 'lion' is not allowed; use one of"),
    (["--set", "train.lr=1"], "unknown key 'train.lr'"),
    (["--config", "missing.toml"], "config file 'missing.toml' does not exist"),
    (["--set", "data.name=missing.npz"], "data file 'missing.npz' does not exist"),
    (["--set", "data.name=cifar"], "unknown data set 'cifar'"),
    (["--resume"], "--resume needs --out DIR"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, fragment):
    code = main(["train", *args, "--no-progress"] + (["--out", str(tmp_path / "r")] if "--resume" not in args else []))
    line = error_line(capsys, code)
    assert line.startswith("trainlab train: error: ") and fragment in line
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_unreadable_toml_and_bad_data_file(tmp_path, capsys):
    (tmp_path / "bad.toml").write_text("seed = = 1\n")
    line = error_line(capsys, main(["train", "--config", str(tmp_path / "bad.toml")]))
    assert "is not valid TOML" in line
    np.savez(tmp_path / "d.npz", x=np.array([[0.0], [np.nan]]), y=np.array([0, 1]))
    line = error_line(capsys, main(["train", "--set", f"data.name={tmp_path / 'd.npz'}", "--out",
                                    str(tmp_path / "r"), "--no-progress"]))
    assert "inputs must be finite" in line


def test_existing_run_is_kept(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", *QUICK, "--out", out]) == 0
    before = open(os.path.join(out, "checkpoint.pt"), "rb").read()
    line = error_line(capsys, main(["train", *QUICK, "--out", out]))
    assert "already holds a run" in line and "--resume" in line
    assert open(os.path.join(out, "checkpoint.pt"), "rb").read() == before


def test_console_script_help_and_exit_code(tmp_path):
    for argv in (["--help"], ["train", "--help"]):
        result = subprocess.run([sys.executable, "-m", "trainlab", *argv], capture_output=True, text=True)
        assert result.returncode == 0 and "usage: trainlab" in result.stdout
    assert "--resume" in result.stdout and "--set" in result.stdout
    bad = subprocess.run([sys.executable, "-m", "trainlab", "train", "--set", "train.epochs=0"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr
    unknown = subprocess.run([sys.executable, "-m", "trainlab", "fly"], capture_output=True, text=True)
    assert unknown.returncode == 2 and "invalid choice: 'fly'" in unknown.stderr


# ---------------------------------------------------------------------------------------------
# Run directories: a table of hostile run directories and faults. Every case asserts the exit
# code, one line on stderr with no traceback, and (for refusals) that no file changed.

RUN_FILES = ["checkpoint.pt", "config.toml", "metrics.jsonl", "steps.jsonl", "summary.json"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A completed two-epoch run on iris, made once and copied by each case."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", *QUICK, "--out", str(out)]) == 0
    return out


def _edit_checkpoint(edit):
    def setup(run):
        state = torch.load(run / "checkpoint.pt", weights_only=True)
        edit(state)
        torch.save(state, run / "checkpoint.pt")
    return setup


def _write(name, data):
    def setup(run):
        (run / name).write_bytes(data) if isinstance(data, bytes) else (run / name).write_text(data)
    return setup


def _damage_line(name, number):
    def setup(run):
        lines = (run / name).read_text().splitlines(keepends=True)
        lines[number - 1] = '{"epoch": 1, "ste\n'
        (run / name).write_text("".join(lines))
    return setup


def _keep_only(*names):
    def setup(run):
        for p in run.iterdir():
            if p.name not in names:
                p.unlink()
    return setup


def _first_weight(state):
    return next(k for k, v in state["model"].items() if v.ndim == 2)


def _set_nan(state):
    state["model"][_first_weight(state)][0, 0] = float("nan")


def _reshape(state):
    key = _first_weight(state)
    state["model"][key] = torch.zeros(state["model"][key].shape[0] + 1, state["model"][key].shape[1])


def _bad_optimizer_state(state):
    entry = next(iter(state["optimizer"]["state"].values()))
    name = next(k for k, v in entry.items() if isinstance(v, torch.Tensor) and v.ndim > 0)
    entry[name] = torch.zeros(7, 7)


def _inf_optimizer_state(state):
    entry = next(iter(state["optimizer"]["state"].values()))
    name = next(k for k, v in entry.items() if isinstance(v, torch.Tensor) and v.ndim > 0)
    entry[name] = torch.full_like(entry[name], float("inf"))


RESUME = ["--resume", "--no-progress", "--set", "train.epochs=3"]
FRESH = [*QUICK]

REFUSALS = [  # (id, setup of the finished run, extra argv, exit code, fragment of the message)
    ("fresh over a finished run", None, FRESH, 2, "already holds a run (checkpoint.pt)"),
    ("fresh over config.toml alone", _keep_only("config.toml"), FRESH, 2, "already holds config.toml"),
    ("fresh over metrics.jsonl alone", _keep_only("metrics.jsonl"), FRESH, 2, "already holds metrics.jsonl"),
    ("fresh over steps.jsonl alone", _keep_only("steps.jsonl"), FRESH, 2, "already holds steps.jsonl"),
    ("fresh over summary.json alone", _keep_only("summary.json"), FRESH, 2, "already holds summary.json"),
    ("fresh over logs and summary", _keep_only("metrics.jsonl", "summary.json"), FRESH, 2,
     "already holds metrics.jsonl, summary.json; a new run would replace them"),
    ("--overwrite with --resume", None, [*RESUME, "--overwrite"], 2, "choose one of them"),
    ("resume: checkpoint is text", _write("checkpoint.pt", "not a checkpoint\n"), RESUME, 2, "cannot be read"),
    ("resume: checkpoint is empty", _write("checkpoint.pt", b""), RESUME, 2, "is empty (0 bytes)"),
    ("resume: checkpoint truncated", lambda run: (run / "checkpoint.pt").write_bytes(
        (run / "checkpoint.pt").read_bytes()[:3000]), RESUME, 2,
     "truncated, damaged or not a checkpoint written by trainlab"),
    ("resume: checkpoint is a foreign pickle", _write("checkpoint.pt", pickle.dumps({"model": {1, 2}})), RESUME, 2,
     "cannot be read"),
    ("resume: checkpoint holds a list", lambda run: torch.save([1, 2], run / "checkpoint.pt"), RESUME, 2,
     "holds a list, not a dict"),
    ("resume: checkpoint lacks rng", _edit_checkpoint(lambda s: s.pop("rng")), RESUME, 2, "lacks 'rng'"),
    ("resume: checkpoint lacks the optimizer", _edit_checkpoint(lambda s: s.pop("optimizer")), RESUME, 2,
     "lacks 'optimizer'"),
    ("resume: a weight of another shape", _edit_checkpoint(_reshape), RESUME, 2, "does not fit the model"),
    ("resume: a model key missing", _edit_checkpoint(lambda s: s["model"].pop(_first_weight(s))), RESUME, 2,
     "does not fit the model: it lacks"),
    ("resume: optimizer state of another shape", _edit_checkpoint(_bad_optimizer_state), RESUME, 2,
     "does not fit the optimizer"),
    ("resume: NaN weight", _edit_checkpoint(_set_nan), RESUME, 2, "holds non-finite values in the model's"),
    ("resume: inf optimizer state", _edit_checkpoint(_inf_optimizer_state), RESUME, 2,
     "holds non-finite values in the optimizer's"),
    ("resume: negative step", _edit_checkpoint(lambda s: s.update(step=-1)), RESUME, 2, "integers >= 0"),
    ("resume: damaged rng", _edit_checkpoint(lambda s: s["rng"].update(torch=torch.zeros(3))), RESUME, 2,
     "random states"),
    ("resume: damaged metrics line 1", _damage_line("metrics.jsonl", 1), RESUME, 2,
     "metrics.jsonl' line 1 is damaged"),
    ("resume: damaged steps line 3", _damage_line("steps.jsonl", 3), RESUME, 2, "steps.jsonl' line 3 is damaged"),
    ("resume: foreign record in metrics", lambda run: (run / "metrics.jsonl").write_text(
        "[1, 2]\n" + (run / "metrics.jsonl").read_text()), RESUME, 2, "line 1 is not a trainlab record"),
    ("resume: no checkpoint", _keep_only("config.toml", "metrics.jsonl"), RESUME, 2, "no checkpoint.pt"),
    ("resume: no config.toml", _keep_only("checkpoint.pt"), RESUME, 2, "holds no config.toml"),
    ("resume: damaged config.toml", _write("config.toml", "seed = = 1\n"), RESUME, 2, "is not valid TOML"),
    ("resume: changed batch size", None, [*RESUME, "--set", "train.batch_size=16"], 2,
     "cannot resume"),
    ("resume: directory locked by another process", "lock", RESUME, 2, "is in use by another trainlab run"),
    ("fresh: directory locked by another process", "lock-empty", FRESH, 2, "is in use by another trainlab run"),
    ("resume: --out is a file", "file", RESUME, 1, "is a file, not a run directory"),
    ("fresh: --out is a file", "file", FRESH, 1, "is a file, not a run directory"),
    ("fresh: --out under a file", "under-file", FRESH, 1, "Not a directory"),
]


@pytest.mark.parametrize("setup, extra, code, fragment", [c[1:] for c in REFUSALS], ids=[c[0] for c in REFUSALS])
def test_run_directory_refusals(finished_run, tmp_path, capsys, setup, extra, code, fragment):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    out, held = run, None
    if setup == "lock" or setup == "lock-empty":
        if setup == "lock-empty":
            _keep_only()(run)
        held = os.open(run / ".trainlab.lock", os.O_RDWR | os.O_CREAT)
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another open file: conflicts like another process
    elif setup == "file":
        shutil.rmtree(run)
        run.write_text("a file\n")
    elif setup == "under-file":
        shutil.rmtree(run)
        run.write_text("a file\n")
        out = run / "sub"
    elif setup is not None:
        setup(run)
    before = tree_digest(run)
    try:
        line = error_line(capsys, main(["train", *extra, "--out", str(out)]), code)
    finally:
        if held is not None:
            os.close(held)
    assert line.startswith("trainlab train: error: ") and fragment in line, line
    assert str(out) in line or "--overwrite" in line
    assert tree_digest(run) == before


def test_overwrite_replaces_an_earlier_run(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "notes.txt").write_text("mine\n")
    assert main(["train", *QUICK, "--set", "train.epochs=1", "--out", str(run), "--overwrite"]) == 0
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    assert json.loads((run / "summary.json").read_text())["epochs"] == 1
    assert (run / "notes.txt").read_text() == "mine\n"  # only the run's own files are replaced
    assert sorted(p.name for p in run.iterdir()) == sorted(RUN_FILES + ["notes.txt"])  # lock released and removed


def test_failed_resume_writes_nothing_then_a_good_one_keeps_all_history(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    metrics = (run / "metrics.jsonl").read_text()
    good = (run / "checkpoint.pt").read_bytes()
    _write("checkpoint.pt", b"")(run)
    before = tree_digest(run)
    assert main(["train", "--out", str(run), *RESUME]) == 2
    assert tree_digest(run) == before  # config.toml included: it is rewritten only once all is checked
    (run / "checkpoint.pt").write_bytes(good)
    assert main(["train", "--out", str(run), *RESUME]) == 0
    assert (run / "metrics.jsonl").read_text().startswith(metrics)
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


FAULTS = [  # (id, what to break, exit code, fragment)
    ("disk full writing the checkpoint", lambda mp: mp.setattr(torch, "save", _enospc), "checkpoint.pt"),
    ("disk full appending to metrics.jsonl",
     lambda mp: mp.setattr(rundir, "open", lambda *a, **k: _FullFile(), raising=False), "steps.jsonl"),  # appends
    ("disk full taking the lock", lambda mp: mp.setattr(os, "write", _enospc), ".trainlab.lock"),
    ("permission denied on the lock file",
     lambda mp: mp.setattr(rundir.os, "open", _deny_lock), ".trainlab.lock"),
    ("read-only parent directory",
     lambda mp: mp.setattr(Path, "mkdir", _read_only_mkdir), "run"),
]


class _FullFile:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def writelines(self, lines):
        _enospc()


_real_os_open = os.open


def _deny_lock(path, *args, **kwargs):
    if str(path).endswith(".trainlab.lock"):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
    return _real_os_open(path, *args, **kwargs)


def _read_only_mkdir(self, *args, **kwargs):
    raise PermissionError(errno.EROFS, os.strerror(errno.EROFS), str(self))


@pytest.mark.parametrize("fault, fragment", [c[1:] for c in FAULTS], ids=[c[0] for c in FAULTS])
def test_environment_faults_are_one_line_naming_the_path_and_exit_1(tmp_path, capsys, monkeypatch, fault, fragment):
    out = tmp_path / "run"
    fault(monkeypatch)
    line = error_line(capsys, main(["train", *QUICK, "--out", str(out)]), 1)
    monkeypatch.undo()
    assert line.startswith("trainlab train: error: '") and fragment in line and str(out) in line, line
    assert not (out / ".trainlab.lock").exists()  # the lock goes with the failed run


def test_disk_full_on_resume_keeps_the_previous_checkpoint(finished_run, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    good = (run / "checkpoint.pt").read_bytes()
    monkeypatch.setattr(torch, "save", _enospc)
    line = error_line(capsys, main(["train", "--out", str(run), *RESUME]), 1)
    monkeypatch.undo()
    assert "No space left on device" in line and str(run / "checkpoint.pt") in line
    assert (run / "checkpoint.pt").read_bytes() == good
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []  # no temporary file, no lock


@pytest.mark.parametrize("argv, code, fragment", [
    (["diagnose", "{run}", "--out", "{file}/spectrum.png"], 1, "{file}"),
    (["schedule", "plot", "constant", "--out", "{file}/lr.png"], 1, "{file}"),
    (["diagnose", "{run}/checkpoint.pt"], 2, "checkpoint.pt' cannot be read"),
], ids=["diagnose --out under a file", "schedule --out under a file", "diagnose a damaged checkpoint"])
def test_other_subcommands_are_one_line_too(finished_run, tmp_path, capsys, argv, code, fragment):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (tmp_path / "file").write_text("a file\n")
    if code == 2:
        (run / "checkpoint.pt").write_text("garbage\n")
    fill = {"run": str(run), "file": str(tmp_path / "file")}
    before = tree_digest(tmp_path)
    line = error_line(capsys, main([a.format(**fill) for a in argv]), code)
    assert fragment.format(**fill) in line, line
    assert tree_digest(tmp_path) == before


def test_default_run_directories_are_unique_within_one_second(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    frozen = types.SimpleNamespace(strftime=lambda fmt, t=None: "20260101-120000", localtime=lambda t=None: None)
    monkeypatch.setattr(rundir, "time", frozen)
    assert main(["train", *QUICK, "--set", "train.epochs=1"]) == 0
    assert main(["train", *QUICK, "--set", "train.epochs=1"]) == 0
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == ["20260101-120000", "20260101-120000-2"]
    for name in runs:
        assert sorted(p.name for p in (tmp_path / "runs" / name).iterdir()) == RUN_FILES


def test_a_failed_run_leaves_no_empty_default_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "d.npz", x=np.array([[0.0], [np.nan]]), y=np.array([0, 1]))
    error_line(capsys, main(["train", "--set", f"data.name={tmp_path / 'd.npz'}", "--no-progress"]))
    assert list((tmp_path / "runs").iterdir()) == []


def test_a_second_run_is_refused_while_another_process_holds_the_directory(tmp_path, capsys):
    """A real second process: the first run is held at its first step until the test has tried."""
    run = tmp_path / "run"
    go = tmp_path / "go"
    script = (
        "import sys, time, pathlib\n"
        "from trainlab.cli import main\n"
        "from trainlab.train import Callback\n"
        "from trainlab.train import run as run_mod\n"
        "class Hold(Callback):\n"
        "    def on_step_end(self, trainer, record):\n"
        "        if record['step'] == 1:\n"
        "            print('holding', flush=True)\n"
        "            while not pathlib.Path(sys.argv[2]).exists(): time.sleep(0.05)\n"
        "train = run_mod.train\n"
        "run_mod.train = lambda *a, **k: train(*a, **{**k, 'callbacks': [Hold()]})\n"
        "sys.exit(main(['train', '--set', 'train.epochs=1', '--set', 'data.name=iris', '--no-progress',"
        " '--out', sys.argv[1]]))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-c", script, str(run), str(go)], stdout=subprocess.PIPE, text=True,
                             env=env)
    try:
        assert first.stdout.readline().strip() == "holding"
        before = tree_digest(run)
        code = main(["train", "--set", "train.epochs=1", "--set", "data.name=iris", "--no-progress", "--out", str(run),
                     "--overwrite"])
        assert tree_digest(run) == before
    finally:
        go.write_text("")
        first.wait(timeout=120)
    line = error_line(capsys, code, 2)
    assert f"is in use by another trainlab run (pid {first.pid})" in line
    assert first.returncode == 0 and sorted(p.name for p in run.iterdir()) == RUN_FILES


def test_num_classes_with_an_empty_class_warns_in_one_line_and_builds_that_many_outputs(tmp_path, capsys):
    rng = np.random.default_rng(0)
    path = tmp_path / "three.npz"
    np.savez(path, x=rng.normal(size=(60, 4)), y=np.repeat([0, 1, 2], 20))
    out = tmp_path / "run"
    code = main(["train", "--set", f"data.name={path}", "--set", "data.num_classes=5", "--set", "train.epochs=1",
                 "--no-progress", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 0
    assert len(err) == 1 and err[0].startswith("trainlab train: warning:") and "3" in err[0] and "4" in err[0]
    weights = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    last_bias = [v for k, v in weights.items() if k.endswith("bias")][-1]
    assert last_bias.shape == (5,)


def test_small_cnn_on_data_it_cannot_pool_names_the_key(tmp_path, capsys):
    code = main(["train", "--set", "data.name=iris", "--set", "model.name=small_cnn", "--no-progress",
                 "--out", str(tmp_path / "r")])
    line = error_line(capsys, code)
    assert "model.name = 'small_cnn'" in line and "(4,)" in line and not (tmp_path / "r").exists()
