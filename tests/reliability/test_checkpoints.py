"""Hostile checkpoints: truncated, empty, foreign, pickled objects, other shapes, missing or
extra keys, non-finite weights. ``trainlab train --resume`` and ``trainlab diagnose`` refuse
each with exit 2 and one line naming checkpoint.pt, and change nothing. A diverged run keeps
a finite checkpoint and says which epoch it holds."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

from reliability.conftest import TINY, assert_one_line, refused, run_cli, tiny_run


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def empty(path):
    path.write_bytes(b"")


def foreign_dict(path):
    torch.save({"foo": torch.ones(3)}, path)


def pickled_object(path):
    torch.save({"model": argparse.Namespace(weights=1)}, path)


def text_file(path):
    path.write_text("this is not a checkpoint\n")


def numpy_file(path):
    import numpy as np

    with open(path, "wb") as f:
        np.save(f, np.ones(3))


def edit_model(change):
    def edit(path):
        state = torch.load(path, weights_only=True)
        change(state["model"])
        torch.save(state, path)
    return edit


def first_weight(model_state):
    return next(k for k, v in model_state.items() if k.endswith("weight") and v.dim() == 2)


def drop_a_key(m):
    del m[first_weight(m)]


def add_a_key(m):
    m["extra.weight"] = torch.ones(2)


def reshape(m):
    key = first_weight(m)
    m[key] = torch.zeros(m[key].shape[0] + 1, m[key].shape[1])


def nan_weight(m):
    m[first_weight(m)][0, 0] = math.nan


def inf_weight(m):
    m[first_weight(m)][0, 0] = math.inf


def nan_optimizer_state(path):
    state = torch.load(path, weights_only=True)
    for slot in state["optimizer"]["state"].values():
        for value in slot.values():
            if torch.is_tensor(value) and value.is_floating_point() and value.dim() > 0:
                value.view(-1)[0] = math.nan
    torch.save(state, path)


def no_model_entry(path):
    state = torch.load(path, weights_only=True)
    del state["model"]
    torch.save(state, path)


def no_optimizer_entry(path):
    state = torch.load(path, weights_only=True)
    del state["optimizer"]
    torch.save(state, path)


def optimizer_of_another_run(path):
    other = tiny_run(path.parent.parent / "other", "--set", "optimizer.name=sgd")
    state = torch.load(path, weights_only=True)
    state["optimizer"] = torch.load(other / "checkpoint.pt", weights_only=True)["optimizer"]
    torch.save(state, path)


def model_of_another_run(path):
    other = tiny_run(path.parent.parent / "other", "--set", "model.hidden=[8]")
    path.write_bytes((other / "checkpoint.pt").read_bytes())


def directory(path):
    path.unlink()
    path.mkdir()


BOTH = ("resume", "diagnose")
CASES = [
    ("truncated", truncate, BOTH),
    ("empty", empty, BOTH),
    ("foreign-dict", foreign_dict, BOTH),
    ("pickled-object", pickled_object, BOTH),
    ("text-file", text_file, BOTH),
    ("numpy-file", numpy_file, BOTH),
    ("missing-parameter", edit_model(drop_a_key), BOTH),
    ("extra-parameter", edit_model(add_a_key), BOTH),
    ("other-shape", edit_model(reshape), BOTH),
    ("other-run-model", model_of_another_run, BOTH),
    ("nan-weight", edit_model(nan_weight), BOTH),
    ("inf-weight", edit_model(inf_weight), BOTH),
    ("nan-optimizer-state", nan_optimizer_state, ("resume",)),
    ("no-model-entry", no_model_entry, BOTH),
    ("no-optimizer-entry", no_optimizer_entry, ("resume",)),
    ("optimizer-of-another-run", optimizer_of_another_run, ("resume",)),
    ("no-model-entry-dict", lambda p: torch.save({"epoch": 1}, p), BOTH),
]
PARAMS = [pytest.param(damage, use, id=f"{id}-{use}") for id, damage, uses in CASES for use in uses]


@pytest.mark.parametrize("damage, use", PARAMS)
def test_bad_checkpoint_is_refused(tmp_path, damage, use):
    out = tiny_run(tmp_path / "run")
    damage(out / "checkpoint.pt")
    args = (["train", "--resume", "--set", "train.epochs=2", "--no-progress", "--out", out] if use == "resume"
            else ["diagnose", out, "--no-progress"])
    refused(args, tmp_path, 2, ["checkpoint.pt"])


def test_checkpoint_that_is_a_directory_is_an_environment_fault(tmp_path):
    out = tiny_run(tmp_path / "run")
    directory(out / "checkpoint.pt")
    refused(["train", "--resume", "--set", "train.epochs=2", "--no-progress", "--out", out], tmp_path, 1,
            ["checkpoint.pt"])


def test_diagnose_a_checkpoint_file_by_path(tmp_path):
    out = tiny_run(tmp_path / "run")
    truncate(out / "checkpoint.pt")
    refused(["diagnose", out / "checkpoint.pt", "--no-progress"], tmp_path, 2, ["checkpoint.pt"])


DIVERGING = ["--set", "model.hidden=[16]", "--set", "model.activation=identity", "--set", "train.batch_size=8",
             "--set", "optimizer.name=sgd", "--set", "optimizer.lr=10", "--set", "schedule.name=linear_warmup",
             "--set", "schedule.warmup_steps=80", "--set", "train.epochs=8", "--set", "train.device=cpu"]


def test_diverged_run_keeps_a_finite_checkpoint_and_names_its_epoch(tmp_path):
    """issue 12: after a divergence the "last good checkpoint" could hold weights of 1e28 and
    diagnose then reported a verdict on NaNs."""
    out = tmp_path / "run"
    result = run_cli(["train", *TINY[:2], *DIVERGING, "--no-progress", "--out", out], tmp_path)
    line = assert_one_line(result, 1, ["diverged", "checkpoint"])
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert f"epoch {state['epoch']}" in line
    tensors = list(state["model"].values()) + [v for s in state["optimizer"]["state"].values()
                                                for v in s.values() if torch.is_tensor(v)]
    assert all(torch.isfinite(t).all() for t in tensors if t.is_floating_point())
    assert json.loads((out / "summary.json").read_text())["status"] == "diverged"
    diagnosed = run_cli(["diagnose", out, "--no-progress"], tmp_path)
    assert diagnosed.code == 0, diagnosed.err
    assert "nan" not in diagnosed.out.lower()


def test_diverged_before_any_checkpoint(tmp_path):
    out = tmp_path / "run"
    result = run_cli(["train", *TINY[:2], *DIVERGING, "--set", "schedule.warmup_steps=2", "--no-progress",
                      "--out", out], tmp_path)
    assert_one_line(result, 1, ["diverged"])
    refused(["diagnose", out, "--no-progress"], tmp_path, 2, ["checkpoint.pt"])
    refused(["train", "--resume", "--no-progress", "--out", out], tmp_path, 2, ["checkpoint"])


class PoisonAt:
    """Sets a weight to Inf after update ``k``: the epoch's training losses stay finite, its weights do not."""

    def __init__(self, k: int):
        self.k = k

    def on_step_end(self, trainer, record):
        if trainer.step == self.k:
            with torch.no_grad():
                next(trainer.module.parameters()).view(-1)[0] = math.inf


def test_non_finite_weights_at_an_epoch_end_are_never_the_good_checkpoint(tmp_path):
    """A checkpoint counts as good only when every parameter, buffer and optimizer state is
    finite: the run stops as diverged and keeps epoch 1's."""
    from trainlab.errors import DivergenceError
    from trainlab.train import config as config_mod
    from trainlab.train import run as run_mod

    config = config_mod.load(None, ["data.name=iris", "model.hidden=[4]", "train.batch_size=16", "train.epochs=3",
                                    "train.device=cpu"])
    out = tmp_path / "run"
    with pytest.raises(DivergenceError):
        run_mod.train(config, out, progress=False, callbacks=[PoisonAt(16)])  # 8 updates per epoch
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert json.loads((out / "summary.json").read_text())["status"] == "diverged"


@pytest.mark.parametrize("use", ["resume", "diagnose"])
@pytest.mark.parametrize("change", ["removed", "four-classes"])
def test_the_runs_data_file_changed_since(tmp_path, use, change):
    """A run trained on the user's file, which was then deleted or replaced by data of other
    classes: refused in one line naming the file or the checkpoint, nothing written."""
    import numpy as np

    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, x=rng.normal(size=(30, 4)), y=np.repeat(np.arange(3), 10))
    out = tiny_run(tmp_path / "run", "--set", f"data.name={data}")
    if change == "removed":
        data.unlink()
    else:
        np.savez(data, x=rng.normal(size=(40, 4)), y=np.repeat(np.arange(4), 10))
    args = (["train", "--resume", "--set", "train.epochs=2", "--no-progress", "--out", out] if use == "resume"
            else ["diagnose", out, "--no-progress"])
    result = refused(args, tmp_path, 2)
    assert "d.npz" in result.lines[0] or "checkpoint.pt" in result.lines[0], result.err


@pytest.mark.parametrize("use", ["resume", "diagnose", "diagnose-weights"])
def test_unreadable_checkpoint_is_an_environment_fault(open_tmp, use):
    from reliability.conftest import assert_unchanged, tree_hash, unprivileged

    import uuid

    out = tiny_run(open_tmp / "run")
    out.chmod(0o777)  # the run directory is the user's: only the checkpoint is out of reach
    (out / "checkpoint.pt").chmod(0o000)
    factory = f"net_{uuid.uuid4().hex[:8]}"
    (open_tmp / f"{factory}.py").write_text("from torch import nn\n\ndef build():\n    return nn.Linear(4, 3)\n")
    args = {"resume": ["train", "--resume", "--set", "train.epochs=2", "--no-progress", "--out", out],
            "diagnose": ["diagnose", out, "--no-progress"],
            "diagnose-weights": ["diagnose", "--model", f"{factory}:build", "--weights", out / "checkpoint.pt",
                                 "--data", "iris", "--no-progress"]}[use]
    before = tree_hash(open_tmp)
    with unprivileged():
        result = run_cli(args, open_tmp)
    assert_one_line(result, 1, ["checkpoint.pt"])
    assert_unchanged(before, tree_hash(open_tmp))
