"""Hostile ``--set KEY=VALUE`` overrides of ``trainlab train``: exit 2, one line naming the
key and the value, nothing written."""

from __future__ import annotations

import pytest

from reliability.conftest import refused

BIG = 2**64
BASE = ["--set", "data.name=iris", "--set", "model.hidden=[4]", "--set", "train.epochs=1", "--set", "train.device=cpu",
        "--no-progress"]


def case(id: str, sets: list[str], *names: str, base: bool = True):
    return pytest.param(sets, names, base, id=id)


CASES = [
    case("no-equals", ["train.epochs"], "train.epochs"),
    case("empty-key", ["=5"], "=5"),
    case("empty-key-part", ["train..epochs=5"], "train..epochs"),
    case("leading-dot", [".epochs=1"], ".epochs"),
    case("not-a-number", ["train.epochs=abc"], "train.epochs", "abc"),
    case("empty-value", ["train.epochs="], "train.epochs", "''"),
    case("seed-2**64", [f"seed={BIG}"], "seed", str(BIG)),  # issue 12
    case("seed-negative", ["seed=-1"], "seed", "-1"),
    case("seed-float", ["seed=1.5"], "seed", "1.5"),
    case("seed-bool", ["seed=true"], "seed", "True"),
    case("weight-decay-1e300", ["optimizer.weight_decay=1e300"], "optimizer.weight_decay", "1e+300"),  # issue 12
    case("lr-nan", ["optimizer.lr=nan"], "optimizer.lr", "nan"),
    case("lr-zero", ["optimizer.lr=0"], "optimizer.lr", "0"),
    case("lr-overflow", ["optimizer.lr=1e400"], "optimizer.lr", "inf"),
    case("hidden-negative", ["model.hidden=[64,-1]"], "model.hidden", "-1"),
    case("hidden-broken-list", ["model.hidden=[64,"], "model.hidden", "[64,"),
    case("section-set-to-value", ["train=5"], "train", "5"),
    case("key-below-value", ["train.epochs.x=1"], "train.epochs"),
    case("unknown-section", ["unknown.key=1"], "unknown"),
    case("unknown-key", ["train.unknown=1"], "train.unknown"),
    case("optimizer-unknown", ["optimizer.name=lion"], "optimizer.name", "lion"),
    case("momentum-with-adam", ["optimizer.momentum=0.9"], "optimizer.momentum", "adam"),
    case("warmup-negative", ["schedule.name=warmup_cosine", "schedule.warmup_steps=-1"],
         "warmup_steps", "-1"),
    case("step-size-with-constant", ["schedule.step_size=10"], "schedule.step_size", "constant"),
    case("batch-size-capitalised", ["train.batch_size=Full"], "train.batch_size", "Full"),
    case("device-gpu", ["train.device=gpu"], "gpu"),
    case("test-fraction-nan", ["data.test_fraction=nan"], "data.test_fraction", "nan"),
    case("data-missing-file", ["data.name=/nonexistent/x.npz"], "/nonexistent/x.npz"),
    case("data-unknown-name", ["data.name=cifar"], "cifar"),
    case("num-classes-word", ["data.num_classes=abc"], "data.num_classes", "abc"),
    case("cnn-on-non-square-features", ["model.name=small_cnn", "data.name=wine"], "small_cnn", "13"),
    # iris's 4 features read as 2×2 images: the message must name what the user set, not image_size
    case("cnn-on-2x2-features", ["model.name=small_cnn"], "small_cnn"),
    # BatchNorm cannot train on a batch of one sample: every batch, or the epoch's last (120 = 17·7 + 1)
    case("batch-norm-batch-of-one", ["model.batch_norm=true", "train.batch_size=1"], "batch_size"),
    case("batch-norm-last-batch-of-one", ["model.batch_norm=true", "train.batch_size=7"], "batch_size"),
    case("epochs-huge-float", ["train.epochs=1e9"], "train.epochs", "1000000000.0"),
]


@pytest.mark.parametrize("sets, names, base", CASES)
def test_bad_override_is_refused(tmp_path, sets, names, base):
    args = ["train", *(BASE if base else ["--no-progress"])]
    for s in sets:
        args += ["--set", s]
    refused([*args, "--out", tmp_path / "run"], tmp_path, 2, names)
