"""Every subcommand (train, diagnose, demo, experiment, schedule plot) refuses bad arguments
with exit 2 and one line naming the value, reports environment faults (a path that is a
directory, no permission, a full disk) with exit 1 naming the path, and changes no file."""

from __future__ import annotations

import re
import signal
import uuid

import pytest
import torch
from torch import nn

from reliability.conftest import (assert_one_line, assert_unchanged, assert_usage_error, refused, run_cli,
                                  tiny_run, tree_hash, unprivileged)

# ---------------------------------------------------------------- argparse-level refusals


@pytest.mark.parametrize("args, names", [
    ([], ["command"]),
    (["fly"], ["fly"]),
    (["train", "--bogus-flag"], ["--bogus-flag"]),
    (["train", "--config"], ["--config"]),
    (["diagnose", "run", "--k", "abc"], ["abc"]),
    (["diagnose", "--model", "m:f", "--weights", "w.pt", "--data", "iris", "--loss", "hinge"], ["hinge"]),
    (["schedule", "plot", "constant", "--steps", "abc"], ["abc"]),
    (["schedule", "plot", "constant", "--lr", "fast"], ["fast"]),
    (["schedule", "draw", "constant"], ["draw"]),
    (["experiment", "momentum", "--seed", "abc"], ["abc"]),
], ids=["no-command", "unknown-command", "train-unknown-flag", "train-config-without-file", "diagnose-k-word",
        "diagnose-loss-unknown", "schedule-steps-word", "schedule-lr-word", "schedule-unknown-action",
        "experiment-seed-word"])
def test_usage_errors(tmp_path, args, names):
    before = tree_hash(tmp_path)
    assert_usage_error(run_cli(args, tmp_path), names)
    assert_unchanged(before, tree_hash(tmp_path))


# ---------------------------------------------------------------- train


def test_train_resume_without_out(tmp_path):
    refused(["train", "--resume", "--no-progress"], tmp_path, 2, ["--out"])


# ---------------------------------------------------------------- diagnose on a run


@pytest.fixture
def run_dir(tmp_path):
    return tiny_run(tmp_path / "run")


@pytest.mark.parametrize("extra, names", [
    (["--k", "0"], ["--k", "0"]),
    (["--k", "-5"], ["--k", "-5"]),
    (["--max-hvp", "0"], ["--max-hvp", "0"]),
    (["--max-samples", "0"], ["--max-samples", "0"]),
    (["--max-samples", "-1"], ["--max-samples", "-1"]),
    (["--model", "m:f"], ["--model"]),
], ids=["k-zero", "k-negative", "max-hvp-zero", "max-samples-zero", "max-samples-negative", "run-and-model"])
def test_diagnose_bad_options(tmp_path, run_dir, extra, names):
    refused(["diagnose", run_dir, *extra, "--no-progress"], tmp_path, 2, names)


def test_diagnose_missing_path(tmp_path):
    refused(["diagnose", tmp_path / "nothing", "--no-progress"], tmp_path, 2, ["nothing"])


def test_diagnose_nothing_named(tmp_path):
    refused(["diagnose", "--no-progress"], tmp_path, 2, ["--model"])


def test_diagnose_run_without_config(tmp_path, run_dir):
    (run_dir / "config.toml").unlink()
    refused(["diagnose", run_dir, "--no-progress"], tmp_path, 2, ["config.toml"])


def test_diagnose_run_with_a_damaged_config(tmp_path, run_dir):
    (run_dir / "config.toml").write_text("[model\nname = 1\n")
    refused(["diagnose", run_dir, "--no-progress"], tmp_path, 2, ["config.toml"])


def test_diagnose_huge_k_is_clamped_and_counts_add_up(tmp_path, run_dir):
    """issue 12: diagnose --k 100000 printed counts that summed to more than the parameters."""
    result = run_cli(["diagnose", run_dir, "--k", "100000", "--no-progress"], tmp_path)
    assert result.code == 0, result.err
    n = int(re.search(r"\(([\d,]+) parameters", result.out).group(1).replace(",", ""))
    counts = re.search(r"([\d,.]+) positive, ([\d,.]+) negative, ([\d,.]+) flat", result.out)
    assert sum(float(c.replace(",", "")) for c in counts.groups()) == pytest.approx(n)


# ---------------------------------------------------------------- diagnose --model (a model trained elsewhere)

MODULE = '''
import torch
from torch import nn

CONSTANT = 3

def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))

def wide():
    return nn.Sequential(nn.Linear(5, 3))

def not_a_module():
    return 42

def fails():
    raise RuntimeError("the factory broke")

def frozen():
    m = nn.Linear(4, 3)
    m.requires_grad_(False)
    return m
'''


@pytest.fixture
def own_model(tmp_path):
    """A module ``mynet_<id>`` in the working directory and the weights of its ``build()``."""
    name = f"mynet_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(MODULE)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    torch.save(model.state_dict(), tmp_path / "w.pt")
    return name


def own(module: str, factory: str = "build", weights: str = "w.pt", data: str = "iris", *extra: str) -> list[str]:
    return ["diagnose", "--model", f"{module}:{factory}", "--weights", weights, "--data", data, "--no-progress",
            *extra]


def test_diagnose_own_model(tmp_path, own_model):
    result = run_cli(own(own_model), tmp_path)
    assert result.code == 0, result.err
    assert "verdict" in result.out


@pytest.mark.parametrize("spec, names", [
    ("nosuchmodule_xyz:build", ["nosuchmodule_xyz"]),
    ("{m}:nosuch", ["nosuch"]),
    ("{m}", ["MODULE:FACTORY"]),
    ("{m}:", ["{m}:"]),
    ("{m}:CONSTANT", ["CONSTANT"]),
    ("{m}:not_a_module", ["not_a_module", "int"]),
    ("{m}:fails", ["fails", "the factory broke"]),
    ("{m}:frozen", ["parameters"]),
], ids=["no-module", "no-factory", "no-colon", "empty-factory", "not-callable", "returns-int", "factory-raises",
        "no-trainable-parameters"])
def test_diagnose_bad_model(tmp_path, own_model, spec, names):
    spec = spec.format(m=own_model)
    module, _, factory = spec.partition(":")
    args = ["diagnose", "--model", spec, "--weights", "w.pt", "--data", "iris", "--no-progress"]
    refused(args, tmp_path, 2, [n.format(m=own_model) for n in names])


def test_diagnose_model_that_does_not_fit_the_data(tmp_path, own_model):
    """A model taking 5 features against iris's 4: one sentence naming both widths."""
    torch.save(nn.Sequential(nn.Linear(5, 3)).state_dict(), tmp_path / "w5.pt")
    refused(own(own_model, factory="wide", weights="w5.pt"), tmp_path, 2, ["5", "4"])


def save_pickled(path):
    torch.save(nn.Linear(4, 3), path)


def save_other_shapes(path):
    torch.save(nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).state_dict(), path)


def save_nan(path):
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    torch.save(model.state_dict(), path)


@pytest.mark.parametrize("make, names", [
    (None, ["missing.pt"]),
    (lambda p: p.write_bytes(b""), ["bad.pt"]),
    (lambda p: p.write_text("not torch\n"), ["bad.pt"]),
    (save_pickled, ["bad.pt"]),
    (save_other_shapes, ["bad.pt"]),
    (lambda p: torch.save({"0.weight": torch.zeros(5, 4)}, p), ["bad.pt"]),
    (save_nan, ["bad.pt"]),
], ids=["missing", "empty", "text", "pickled-module", "other-shapes", "missing-keys", "nan-weight"])
def test_diagnose_bad_weights(tmp_path, own_model, make, names):
    weights = "missing.pt"
    if make is not None:
        weights = "bad.pt"
        make(tmp_path / weights)
    refused(own(own_model, weights=weights), tmp_path, 2, names)


def test_diagnose_unknown_data(tmp_path, own_model):
    refused(own(own_model, data="cifar"), tmp_path, 2, ["cifar"])


def test_diagnose_data_with_nan(tmp_path, own_model):
    import numpy as np

    x = np.random.default_rng(0).normal(size=(30, 4))
    x[4, 2] = np.nan
    np.savez(tmp_path / "d.npz", x=x, y=np.repeat(np.arange(3), 10))
    refused(own(own_model, data="d.npz"), tmp_path, 2, ["d.npz", "nan"])


# ---------------------------------------------------------------- figures to places they cannot go


def figure_commands(run: str, out: str) -> dict[str, list[str]]:
    return {"diagnose": ["diagnose", run, "--no-progress", "--out", out],
            "schedule": ["schedule", "plot", "constant", "--steps", "10", "--out", out]}


@pytest.mark.parametrize("command", ["diagnose", "schedule"])
@pytest.mark.parametrize("where", ["below-a-file", "a-directory", "disk-full"])
def test_figure_cannot_be_written(tmp_path, run_dir, command, where):
    """(A missing folder is created, as the user would expect; these cannot be.) The disk-full
    case writes through a link to /dev/full, where every write fails with ENOSPC."""
    if where == "below-a-file":
        (tmp_path / "afile").write_text("a file\n")
        out, name = tmp_path / "afile" / "fig.png", "afile"
    elif where == "a-directory":
        out, name = tmp_path / "fig.png", "fig.png"
        out.mkdir()
    else:
        out, name = tmp_path / "fig.png", "fig.png"
        out.symlink_to("/dev/full")
    refused(figure_commands(str(run_dir), str(out))[command], tmp_path, 1, [name])


@pytest.mark.parametrize("command", ["diagnose", "schedule"])
def test_figure_into_a_read_only_directory(open_tmp, command):
    run = tiny_run(open_tmp / "run")
    ro = open_tmp / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    before = tree_hash(open_tmp)
    with unprivileged():
        result = run_cli(figure_commands(str(run), str(ro / "fig.png"))[command], open_tmp)
    assert_one_line(result, 1, ["fig.png"])
    assert_unchanged(before, tree_hash(open_tmp))


# ---------------------------------------------------------------- schedule plot


@pytest.mark.parametrize("args, names", [
    (["nosuch"], ["nosuch"]),
    (["constant", "--steps", "0"], ["--steps", "0"]),
    (["constant", "--steps", "-1"], ["--steps", "-1"]),
    (["constant", "--lr", "0"], ["--lr", "0"]),
    (["constant", "--lr", "nan"], ["--lr", "nan"]),
    (["constant", "--lr", "-1"], ["--lr", "-1"]),
    (["constant", "--lr", "inf"], ["--lr", "inf"]),
    (["linear_warmup", "--set", "warmup_steps=-1"], ["warmup_steps", "-1"]),
    (["constant", "--set", "bogus=1"], ["bogus"]),
    (["linear_warmup", "--set", "warmup_steps"], ["warmup_steps"]),
    (["warmup_cosine", "--set", "warmup_steps=10", "--set", "total_steps=abc"], ["total_steps", "abc"]),
    (["warmup_cosine", "--set", "warmup_steps=10", "--set", "min_lr=5"], ["min_lr", "5"]),
    (["step_decay", "--set", "step_size=0"], ["step_size", "0"]),
    (["exponential_decay", "--set", "gamma=0"], ["gamma", "0"]),
    (["exponential_decay", "--set", "gamma=nan"], ["gamma", "nan"]),
    (["constant", "--steps", "5", "--out", ""], ["--out"]),
], ids=["unknown", "steps-zero", "steps-negative", "lr-zero", "lr-nan", "lr-negative", "lr-inf", "warmup-negative",
        "unknown-parameter", "set-without-value", "total-steps-word", "min-lr-above-lr", "step-size-zero",
        "gamma-zero", "gamma-nan", "out-empty"])
def test_schedule_plot_bad_input(tmp_path, args, names):
    out = [] if "--out" in args else ["--out", tmp_path / "lr.png"]
    refused(["schedule", "plot", *args, *out], tmp_path, 2, names)


class TooSlow(Exception):
    pass


def test_schedule_plot_refuses_an_absurd_number_of_steps(tmp_path):
    """``--steps 10**9`` cannot be drawn (a list of a billion rates, a figure nobody can read):
    refused at once, not after minutes and gigabytes. Given 3 seconds here."""
    def alarm(signum, frame):
        raise TooSlow("schedule plot --steps 1000000000 still running after 3 s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(3)
    try:
        refused(["schedule", "plot", "constant", "--steps", "1000000000", "--out", tmp_path / "lr.png"], tmp_path, 2,
                ["--steps", "1000000000"])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------- demo and experiment


@pytest.mark.parametrize("args, names", [
    (["demo", "--only", "nosuch"], ["nosuch"]),
    (["demo", "--only", ",,,"], ["experiment"]),
    (["demo", "--only", "momentum", "--seed", "-1"], ["--seed", "-1"]),
    (["demo", "--only", "momentum", "--quick", "--seed", str(2**64)], ["seed", str(2**64)]),
    (["experiment", "nosuch"], ["nosuch"]),
    (["experiment", "momentum", "--seed", "-1"], ["--seed", "-1"]),
], ids=["demo-unknown", "demo-only-commas", "demo-seed-negative", "demo-seed-2**64",
        "experiment-unknown", "experiment-seed-negative"])
def test_demo_bad_input(tmp_path, args, names):
    refused([*args, "--no-progress", "--out", tmp_path / "report"], tmp_path, 2, names)


def test_demo_report_directory_is_a_file(tmp_path):
    """An --out that cannot be written is an environment fault; ideally found before the experiments run."""
    (tmp_path / "report").write_text("a file\n")
    refused(["demo", "--only", "momentum", "--quick", "--no-progress", "--out", tmp_path / "report"], tmp_path, 1,
            ["report"])
