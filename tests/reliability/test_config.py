"""Hostile run-configuration files (``trainlab train --config FILE``): each is refused with
exit 2 and one line naming the key and the value, and nothing is written (no run directory
appears, the config file itself is untouched)."""

from __future__ import annotations

import pytest

from reliability.conftest import (TINY, TINY_SETTINGS, assert_one_line, assert_unchanged, refused, run_cli, tree_hash,
                                  unprivileged)

BIG = 2**64


def case(id: str, text: str | bytes, *names: str, sets: bool = True):
    return pytest.param(text, names, sets, id=id)


CASES = [
    case("invalid-toml", "seed = = 1\n", "run.toml", "TOML"),
    case("duplicate-key", "seed = 1\nseed = 2\n", "run.toml", "TOML"),
    case("unterminated-string", '[data]\nname = "iris\n', "run.toml", "TOML"),
    case("not-utf8", b"seed = 0\n\xff\xfe\x00garbage\n", "run.toml"),
    case("binary-file", bytes(range(256)) * 4, "run.toml"),
    case("unknown-top-level-key", "sed = 1\n", "sed"),
    case("unknown-section", "[trian]\nepochs = 1\n", "trian"),
    case("unknown-key-in-section", "[train]\nlr = 0.1\n", "train.lr"),
    case("section-as-value", "data = 3\n", "data", "3", sets=False),
    case("value-as-table", "[seed]\nx = 1\n", "seed"),
    case("epochs-zero", "[train]\nepochs = 0\n", "train.epochs", "0"),
    case("epochs-negative", "[train]\nepochs = -1\n", "train.epochs", "-1"),
    case("epochs-float", "[train]\nepochs = 1.5\n", "train.epochs", "1.5"),
    case("epochs-string", '[train]\nepochs = "2"\n', "train.epochs", "'2'"),
    case("epochs-bool", "[train]\nepochs = true\n", "train.epochs", "True"),
    case("batch-size-zero", "[train]\nbatch_size = 0\n", "train.batch_size", "0"),
    case("batch-size-word", '[train]\nbatch_size = "half"\n', "train.batch_size", "half"),
    case("lr-zero", "[optimizer]\nlr = 0\n", "optimizer.lr", "0"),
    case("lr-nan", "[optimizer]\nlr = nan\n", "optimizer.lr", "nan"),
    case("lr-inf", "[optimizer]\nlr = inf\n", "optimizer.lr", "inf"),
    case("lr-negative", "[optimizer]\nlr = -1e-3\n", "optimizer.lr", "-0.001"),
    # issue 12: weight_decay = 1e300 ended in a traceback
    case("weight-decay-1e300", "[optimizer]\nweight_decay = 1e300\n", "optimizer.weight_decay", "1e+300"),
    case("weight-decay-negative", "[optimizer]\nweight_decay = -0.1\n", "optimizer.weight_decay", "-0.1"),
    # issue 12: seed = 2**64 ended in a traceback
    case("seed-2**64", f"seed = {BIG}\n", "seed", str(BIG)),
    case("seed-negative", "seed = -1\n", "seed", "-1"),
    case("seed-float", "seed = 0.5\n", "seed", "0.5"),
    case("test-fraction-one", "[data]\ntest_fraction = 1.0\n", "data.test_fraction", "1.0"),
    case("test-fraction-negative", "[data]\ntest_fraction = -0.1\n", "data.test_fraction", "-0.1"),
    case("model-unknown", '[model]\nname = "resnet"\n', "model.name", "resnet"),
    case("hidden-zero", "[model]\nhidden = [0]\n", "model.hidden", "0"),
    case("hidden-string", '[model]\nhidden = "32"\n', "model.hidden", "'32'"),
    case("activation-unknown", '[model]\nactivation = "gelu"\n', "model.activation", "gelu"),
    case("momentum-one", '[optimizer]\nname = "sgd"\nmomentum = 1.0\n', "optimizer.momentum", "1.0"),
    case("betas-one-value", "[optimizer]\nbetas = [0.9]\n", "optimizer.betas", "0.9"),
    case("betas-beta1-one", "[optimizer]\nbetas = [1.0, 0.999]\n", "1.0"),
    case("betas-with-sgd", '[optimizer]\nname = "sgd"\nbetas = [0.5, 0.9]\n', "optimizer.betas", "sgd"),
    case("optimizer-unknown", '[optimizer]\nname = "lion"\n', "optimizer.name", "lion"),
    case("schedule-unknown", '[schedule]\nname = "cosine"\n', "schedule.name", "cosine"),
    case("warmup-negative", '[schedule]\nname = "linear_warmup"\nwarmup_steps = -5\n', "warmup_steps", "-5"),
    case("loss-unknown", '[train]\nloss = "hinge"\n', "train.loss", "hinge"),
    case("checkpoint-every-zero", "[train]\ncheckpoint_every = 0\n", "train.checkpoint_every", "0"),
    case("device-unknown", '[train]\ndevice = "tpu"\n', "tpu"),
    case("device-absent-gpu", '[train]\ndevice = "cuda:7"\n', "cuda:7"),
    case("data-name-empty", '[data]\nname = ""\n', "''"),
    case("num-classes-negative", "[data]\nnum_classes = -1\n", "data.num_classes", "-1"),
]


@pytest.mark.parametrize("text, names, sets", CASES)
def test_bad_config_file_is_refused(tmp_path, text, names, sets):
    cfg = tmp_path / "run.toml"
    cfg.write_bytes(text if isinstance(text, bytes) else text.encode())
    overrides = []
    for key, value in TINY_SETTINGS.items():
        section, name = key.split(".")
        written = isinstance(text, str) and f"[{section}]" in text and f"\n{name} =" in f"\n{text}"
        if sets and not written:
            overrides += ["--set", f"{key}={value}".replace("'", "")]
    refused(["train", "--config", cfg, *overrides, "--no-progress", "--out", tmp_path / "run"],
            tmp_path, 2, names)


def test_unreadable_config_file_is_an_environment_fault(open_tmp):
    cfg = open_tmp / "run.toml"
    cfg.write_text("seed = 0\n")
    cfg.chmod(0o000)
    before = tree_hash(open_tmp)
    with unprivileged():
        result = run_cli(["train", "--config", cfg, *TINY, "--out", open_tmp / "run"], open_tmp)
    assert_one_line(result, 1, ["run.toml"])
    assert_unchanged(before, tree_hash(open_tmp))


def test_a_runs_resolved_config_starts_a_new_run(tmp_path):
    """config.toml as a run writes it (every key, resolved) is itself a valid configuration."""
    from reliability.conftest import tiny_run

    first = tiny_run(tmp_path / "first")
    result = run_cli(["train", "--config", first / "config.toml", "--no-progress", "--out", tmp_path / "second"],
                     tmp_path)
    assert result.code == 0, result.err
    assert (tmp_path / "second" / "config.toml").read_text() == (first / "config.toml").read_text()
