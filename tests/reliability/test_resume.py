"""Kill and resume: a run interrupted at step k (Ctrl-C, a hard KeyboardInterrupt, a second
Ctrl-C, SIGINT to a separate process) and resumed ends with the same parameters and optimizer
state, bit for bit, as one never interrupted, also when the interruption falls mid-epoch;
its logs hold each epoch and each step exactly once, with the same values."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from reliability.conftest import run_cli, subprocess_env
from trainlab.train import config as config_mod
from trainlab.train import run as run_mod

SETTINGS = ["data.name=iris", "model.hidden=[8]", "model.batch_norm=true", "train.batch_size=16", "train.epochs=3",
            "schedule.name=warmup_cosine", "schedule.warmup_steps=5", "optimizer.lr=0.01", "train.device=cpu"]
STEPS_PER_EPOCH = 8  # 120 training samples in batches of 16
TIMING = ("seconds", "seconds_per_update", "total_seconds")


def config():
    return config_mod.load(None, SETTINGS)


class InterruptAt:
    """At step ``k``: a Ctrl-C (SIGINT to this process), two of them, or a bare KeyboardInterrupt."""

    def __init__(self, k: int, how: str):
        self.k, self.how = k, how

    def on_step_end(self, trainer, record):
        if trainer.step != self.k:
            return
        if self.how == "raise":
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGINT)
        if self.how == "double-sigint":
            time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs between bytecodes of this thread; give it the chance


def final_state(out):
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    return state["model"], state["optimizer"]


def assert_bit_identical(a, b):
    (model_a, opt_a), (model_b, opt_b) = final_state(a), final_state(b)
    assert model_a.keys() == model_b.keys()
    for key in model_a:
        assert torch.equal(model_a[key], model_b[key]), f"parameter/buffer {key} differs"
    assert opt_a["state"].keys() == opt_b["state"].keys()
    for i in opt_a["state"]:
        for name, value in opt_a["state"][i].items():
            other = opt_b["state"][i][name]
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(other)), f"optimizer state {i}.{name} differs"


def records(path):
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in path.read_text().splitlines()]


def assert_same_history(a, b):
    assert records(a / "steps.jsonl") == records(b / "steps.jsonl")
    assert records(a / "metrics.jsonl") == records(b / "metrics.jsonl")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    run_mod.train(config(), out, progress=False)
    return out


POINTS = {"mid-epoch-1": 3, "end-of-epoch-1": STEPS_PER_EPOCH, "mid-epoch-2": 13,
          "last-but-one-step": 3 * STEPS_PER_EPOCH - 1}
# A bare KeyboardInterrupt (or a second Ctrl-C) stops at once without a checkpoint of its own, so
# those resume from the last epoch's checkpoint: cases after the first one.
CASES = [pytest.param(k, "sigint", id=f"{name}-sigint") for name, k in POINTS.items()] + [
    pytest.param(k, how, id=f"{name}-{how}") for name, k in POINTS.items() if k > STEPS_PER_EPOCH
    for how in ("raise", "double-sigint")]


@pytest.mark.parametrize("k, how", CASES)
def test_interrupted_and_resumed_run_is_bit_identical(tmp_path, reference, k, how):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_mod.train(config(), out, progress=False, callbacks=[InterruptAt(k, how)])
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    run_mod.train(config(), out, resume=True, progress=False)
    assert_bit_identical(reference, out)
    assert_same_history(reference, out)


def test_interrupted_twice_then_resumed(tmp_path, reference):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_mod.train(config(), out, progress=False, callbacks=[InterruptAt(5, "sigint")])
    with pytest.raises(KeyboardInterrupt):
        run_mod.train(config(), out, resume=True, progress=False, callbacks=[InterruptAt(11, "sigint")])
    run_mod.train(config(), out, resume=True, progress=False)
    assert_bit_identical(reference, out)
    assert_same_history(reference, out)


def test_resumed_with_more_epochs_matches_a_longer_run(tmp_path, reference):
    """Resume may raise train.epochs; the result equals a run configured that long from the start
    (the schedule spans the first configuration's updates in both)."""
    out = tmp_path / "run"
    args = ["train", *sum((["--set", s] for s in SETTINGS), []), "--no-progress"]
    assert run_cli([*args, "--set", "train.epochs=2", "--out", out], tmp_path).code == 0
    result = run_cli(["train", "--resume", "--set", "train.epochs=3", "--no-progress", "--out", out], tmp_path)
    assert result.code == 0, result.err
    epochs = [r["epoch"] for r in records(out / "metrics.jsonl")]
    assert epochs == [1, 2, 3]


def test_sigint_to_a_training_process_then_resume(tmp_path):
    """A real Ctrl-C to ``trainlab train`` in its own process mid-run; resumed here, the run ends
    bit-identical to an uninterrupted one."""
    settings = [*SETTINGS, "train.batch_size=2", "train.epochs=10"]
    args = ["train", *sum((["--set", s] for s in settings), []), "--no-progress"]
    reference = tmp_path / "reference"
    assert run_cli([*args, "--out", reference], tmp_path).code == 0
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "trainlab", *args, "--out", str(out)], cwd=tmp_path,
                            env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (out / "metrics.jsonl").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(0.01)  # somewhere inside epoch 2
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"
    result = run_cli(["train", "--resume", "--no-progress", "--out", out], tmp_path)
    assert result.code == 0, result.err
    assert_bit_identical(reference, out)
    assert_same_history(reference, out)
