import json
import os
import subprocess
import sys

import numpy as np
import pytest

from trainlab.cli import main

QUICK = ["--set", "train.epochs=2", "--set", "data.name=iris", "--no-progress"]


def one_error_line(capsys, code):
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1 and "Traceback" not in captured.err
    return lines[0]


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
    line = one_error_line(capsys, code)
    assert line.startswith("trainlab train: error: ") and fragment in line
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_unreadable_toml_and_bad_data_file(tmp_path, capsys):
    (tmp_path / "bad.toml").write_text("seed = = 1\n")
    line = one_error_line(capsys, main(["train", "--config", str(tmp_path / "bad.toml")]))
    assert "is not valid TOML" in line
    np.savez(tmp_path / "d.npz", x=np.array([[0.0], [np.nan]]), y=np.array([0, 1]))
    line = one_error_line(capsys, main(["train", "--set", f"data.name={tmp_path / 'd.npz'}", "--out",
                                        str(tmp_path / "r"), "--no-progress"]))
    assert "inputs must be finite" in line


def test_existing_run_is_kept(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", *QUICK, "--out", out]) == 0
    before = open(os.path.join(out, "checkpoint.pt"), "rb").read()
    line = one_error_line(capsys, main(["train", *QUICK, "--out", out]))
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
