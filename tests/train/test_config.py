import hashlib
import math

import pytest

from trainlab import _toml
from trainlab.errors import ConfigError
from trainlab.train import config
from trainlab.train.config import RunConfig


def test_defaults_match_the_documented_table():
    c = config.load()
    assert c == RunConfig()
    assert (c.seed, c.data.name, c.data.test_fraction) == (0, "digits", 0.2)
    assert (c.model.hidden, c.model.activation, c.model.batch_norm) == ([32], "relu", False)
    assert (c.optimizer.name, c.optimizer.lr, c.schedule.name) == ("adam", 0.001, "constant")
    assert (c.train.batch_size, c.train.epochs, c.train.loss) == (32, 30, "cross_entropy")


def test_file_and_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('seed = 4\n[optimizer]\nname = "sgd"\nlr = 1\n[train]\nbatch_size = "full"\n')
    c = config.load(path, ["train.epochs=5", "model.hidden=[64, 64]", "data.name=wine", "optimizer.momentum=0.9"])
    assert c.seed == 4 and c.optimizer.name == "sgd"
    assert c.optimizer.lr == 1.0 and isinstance(c.optimizer.lr, float)
    assert c.train.batch_size == "full" and c.train.epochs == 5
    assert c.model.hidden == [64, 64] and c.data.name == "wine" and c.optimizer.momentum == 0.9


def test_resolved_config_round_trips_through_toml(tmp_path):
    c = config.load(None, ["model.hidden=[8, 4]", "train.batch_size=\"full\"", "data.name=a \"quoted\" path.csv"])
    (tmp_path / "c.toml").write_text(c.to_toml())
    assert config.load(tmp_path / "c.toml") == c
    assert _toml.loads(c.to_toml()) == c.to_dict()


@pytest.mark.parametrize("overrides, match", [
    (["train.batchsize=3"], "unknown key 'train.batchsize'; allowed keys in train: batch_size, epochs"),
    (["colour=1"], "unknown key 'colour'; allowed keys in the top level: seed, data"),
    (["optimizer.name=adamw"], "optimizer.name = 'adamw' is not allowed; use one of: sgd, adagrad, rmsprop, adam"),
    (["model.name=resnet"], "model.name = 'resnet' is not allowed; use one of: mlp, small_cnn"),
    (["model.activation=gelu"], "model.activation = 'gelu' is not allowed"),
    (["schedule.name=cosine"], "schedule.name = 'cosine' is not allowed; use one of: constant, step_decay,"),
    (["train.loss=hinge"], "train.loss = 'hinge' is not allowed; use one of: cross_entropy, mse"),
    (["optimizer.lr=0"], r"optimizer.lr = 0.0 is not allowed; expected a number > 0"),
    (["optimizer.lr=-0.1"], r"optimizer.lr = -0.1 is not allowed"),
    (["optimizer.lr=nan"], r"optimizer.lr = nan is not allowed"),
    (["optimizer.lr=fast"], r"optimizer.lr = 'fast' is not allowed; expected a number"),
    (["train.batch_size=0"],
     r"train.batch_size = 0 is not allowed; expected an integer >= 1 and <= 2147483647 or \"full\""),
    (["train.batch_size=half"], r"train.batch_size = 'half' is not allowed"),
    (["train.batch_size=1.5"], r"train.batch_size = 1.5 is not allowed; expected an integer or a string"),
    (["train.epochs=0"], "train.epochs = 0 is not allowed; expected an integer >= 1"),
    (["train.epochs=true"], "train.epochs = True is not allowed; expected an integer"),
    (["model.hidden=[32, 0]"], r"model.hidden = \[32, 0\] is not allowed"),
    (["model.hidden=32"], r"model.hidden = 32 is not allowed; expected a list of integers"),
    (["data.test_fraction=1"], r"data.test_fraction = 1.0 is not allowed; expected a number in \[0, 1\)"),
    (["optimizer.momentum=0.9"], "optimizer.momentum = 0.9 does not apply to optimizer.name = 'adam', which takes:"
                                 " lr, weight_decay, betas, decoupled"),
    (["optimizer.name=sgd", "optimizer.betas=[0.8, 0.9]"], r"optimizer.betas = \[0.8, 0.9\] does not apply"),
    (["schedule.gamma=0.5", "schedule.name=warmup_cosine"], "schedule.gamma = 0.5 does not apply to schedule.name"
                                                            " = 'warmup_cosine', which takes: warmup_steps, total_steps,"
                                                            " min_lr"),
    (["optimizer.betas=[0.9]"], r"optimizer.betas = \[0.9\]"),
    (["optimizer.momentum=1"], r"optimizer.momentum = 1.0 is not allowed; expected a number in \[0, 1\)"),
    (["seed=-1"], "seed = -1 is not allowed"),
    (["train=3"], "train must be a table"),
    (["epochs"], "is not of the form section.key=value"),
    (["train..epochs=1"], "is not of the form"),
])
def test_bad_values_name_key_value_and_what_is_allowed(overrides, match):
    with pytest.raises(ConfigError, match=match):
        config.load(None, overrides)


def test_unreadable_toml(tmp_path):
    (tmp_path / "bad.toml").write_text("[train\nepochs = 3\n")
    with pytest.raises(ConfigError, match="config file '.*bad.toml' is not valid TOML: .*line 1"):
        config.load(tmp_path / "bad.toml")


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file '.*nope.toml' does not exist"):
        config.load(tmp_path / "nope.toml")


BIG = 2**64
# Every numeric key, each with what is refused: NaN/inf, huge, negative, the wrong type.
BOUNDED = [
    # (override, message fragment)
    (f"seed={BIG}", f"seed = {BIG} is not allowed; expected an integer >= 0 and <= 9223372036854775807"),
    (f"seed={2**63}", f"seed = {2**63} is not allowed"),
    ("seed=1.5", "seed = 1.5 is not allowed; expected an integer"),
    ("seed=true", "seed = True is not allowed; expected an integer"),
    ('seed="3"', "seed = '3' is not allowed; expected an integer"),
    ("seed=[3]", r"seed = \[3\] is not allowed; expected an integer"),
    ("data.test_fraction=nan", r"data.test_fraction = nan is not allowed; expected a number in \[0, 1\)"),
    ("data.test_fraction=-0.1", "data.test_fraction = -0.1 is not allowed"),
    ("data.test_fraction=inf", "data.test_fraction = inf is not allowed"),
    ("data.num_classes=1", r"data.num_classes = 1 is not allowed; expected 0 \(infer from the labels\) or an integer >= 2"
                           " and <= 1000000"),
    ("data.num_classes=-3", "data.num_classes = -3 is not allowed"),
    ("data.num_classes=10000000", "data.num_classes = 10000000 is not allowed"),
    ("data.num_classes=3.0", "data.num_classes = 3.0 is not allowed; expected an integer"),
    ("data.num_classes=abc", "data.num_classes = 'abc' is not allowed; expected an integer"),
    ("model.hidden=[100000]", r"model.hidden = \[100000\] is not allowed; expected a list of integers >= 1 and <= 65536"),
    ("model.hidden=[4, -1]", r"model.hidden = \[4, -1\] is not allowed"),
    ("model.hidden=[4.0]", r"model.hidden = \[4.0\] is not allowed; expected a list of integers"),
    ("model.hidden=[true]", r"model.hidden = \[True\] is not allowed; expected a list of integers"),
    (f"model.hidden={[4] * 65}", r"model.hidden = \[4, 4, .*… is not allowed; expected a list of at most 64 layer widths"),
    ("optimizer.lr=1e300", r"optimizer.lr = 1e\+300 is not allowed; expected a number > 0 and <= 1000"),
    ("optimizer.lr=inf", "optimizer.lr = inf is not allowed"),
    ("optimizer.lr=-inf", "optimizer.lr = -inf is not allowed"),
    ("optimizer.lr=1e400", "optimizer.lr = inf is not allowed"),  # TOML reads 1e400 as inf
    (f"optimizer.lr={'9' * 400}", r"optimizer.lr = 9{80}… is not allowed; expected a number > 0 and <= 1000"),
    ("optimizer.lr=[0.1]", r"optimizer.lr = \[0.1\] is not allowed; expected a number"),
    ("optimizer.lr=1979-05-27", r"optimizer.lr = datetime.date\(1979, 5, 27\) is not allowed; expected a number"),
    ("optimizer.weight_decay=1e300", r"optimizer.weight_decay = 1e\+300 is not allowed; expected a number in \[0, 1000\]"),
    ("optimizer.weight_decay=-1e-4", "optimizer.weight_decay = -0.0001 is not allowed"),
    ("optimizer.weight_decay=nan", "optimizer.weight_decay = nan is not allowed"),
    ("optimizer.weight_decay=true", "optimizer.weight_decay = True is not allowed; expected a number"),
    ("optimizer.momentum=-0.5", r"optimizer.momentum = -0.5 is not allowed; expected a number in \[0, 1\)"),
    ("optimizer.momentum=nan", "optimizer.momentum = nan is not allowed"),
    ("optimizer.alpha=1", r"optimizer.alpha = 1.0 is not allowed; expected a number in \[0, 1\)"),
    ("optimizer.betas=[0.9, nan]", r"optimizer.betas = \[0.9, nan\] is not allowed; expected a list of numbers in \[0, 1\)"),
    ("optimizer.betas=[1.0, 0.999]", r"optimizer.betas = \[1.0, 0.999\] is not allowed"),
    ("optimizer.betas=[0.9, 0.99, 0.9]", r"expected a pair \[beta1, beta2\]"),
    (f"optimizer.betas=[0.9, {'9' * 400}]", r"optimizer.betas = \[0.9, 9+… is not allowed; expected a list of numbers"),
    ("schedule.warmup_steps=-1", "schedule.warmup_steps = -1 is not allowed; expected an integer >= 0 and <= 1000000000000"),
    (f"schedule.total_steps={BIG}", f"schedule.total_steps = {BIG} is not allowed"),
    ("schedule.step_size=-2", "schedule.step_size = -2 is not allowed"),
    ("schedule.decay_steps=0", "schedule.decay_steps = 0 is not allowed; expected an integer >= 1"),
    ("schedule.gamma=0", r"schedule.gamma = 0.0 is not allowed; expected a number > 0 and <= 1"),
    ("schedule.gamma=nan", "schedule.gamma = nan is not allowed"),
    ("schedule.min_lr=inf", r"schedule.min_lr = inf is not allowed; expected a number in \[0, 1000\]"),
    (f"schedule.d_model={'9' * 30}", "schedule.d_model = 9{30} is not allowed; expected an integer >= 0 and <= 65536"),
    (f"train.batch_size={BIG}", f"train.batch_size = {BIG} is not allowed"),
    ("train.batch_size=true", "train.batch_size = True is not allowed; expected an integer or a string"),
    ("train.epochs=10000000", "train.epochs = 10000000 is not allowed; expected an integer >= 1 and <= 1000000"),
    ("train.epochs=1e9", "train.epochs = 1000000000.0 is not allowed; expected an integer"),
    ("train.epochs=", "train.epochs = '' is not allowed; expected an integer"),
    ("train.checkpoint_every=-1", "train.checkpoint_every = -1 is not allowed"),
    ("train.device=tpu", "train.device = 'tpu' is not allowed; expected auto, cpu, mps, cuda or cuda:N"),
    ("train.device=cuda:x", "train.device = 'cuda:x' is not allowed"),
    ("train.device=3", "train.device = 3 is not allowed; expected a string"),
    ("data.name=", "data.name = '' is not allowed; expected a bundled data set's name or a file path"),
    ("data.name=\udcff.csv", r"data.name = '\\udcff.csv' is not allowed; expected UTF-8 text"),
    ("model.batch_norm=1", "model.batch_norm = 1 is not allowed; expected true or false"),
]


@pytest.mark.parametrize("override, match", BOUNDED, ids=[o[:40] for o, _ in BOUNDED])
def test_every_number_is_bounded_and_typed(override, match):
    with pytest.raises(ConfigError, match=match) as info:
        config.load(None, [override])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("override", ["seed=0", f"seed={2**63 - 1}", "optimizer.lr=1000", "optimizer.weight_decay=1000",
                                      "optimizer.weight_decay=0", "data.test_fraction=0", "data.num_classes=2",
                                      "data.num_classes=1000000", "model.hidden=[]", "model.hidden=[65536]",
                                      "train.epochs=1000000", "train.device=cuda:3", "optimizer.lr=1e-30"])
def test_the_limits_themselves_are_allowed(override):
    config.load(None, [override])


def test_seed_limit_is_what_torch_and_numpy_accept():
    import numpy as np
    import torch

    top = config.BOUNDS["seed"].high
    torch.Generator().manual_seed(top)
    np.random.default_rng(top)
    assert _toml.loads(config.load(None, [f"seed={top}"]).to_toml())["seed"] == top  # int64 survives TOML


BAD_FILES = [
    # (id, file contents, message fragment)
    ("syntax-error", b"seed = = 1\n", "is not valid TOML: .*line 1"),
    ("duplicate-key", b"seed = 1\nseed = 2\n", "is not valid TOML: Cannot overwrite a value"),
    ("duplicate-table", b"[train]\nepochs = 1\n[train]\nepochs = 2\n", "is not valid TOML"),
    ("unterminated-string", b'[data]\nname = "iris\n', "is not valid TOML"),
    ("not-utf8", b"seed = 0\n\xff\xfe\x00\n", r"is not UTF-8 text \(byte 0xff on line 2, offset 9\)"),
    ("not-utf8-after-bom", b"\xef\xbb\xbfseed = 0\n\xff\n", r"is not UTF-8 text \(byte 0xff on line 2, offset 12\)"),
    ("binary", bytes(range(256)), "is not UTF-8 text"),
    ("nested-too-deep", b"seed = " + b"[" * 5000 + b"]" * 5000 + b"\n", "nest too deeply"),
    ("section-as-value", b"data = 3\n", "data must be a table, got 3"),
    ("array-of-tables", b"[[train]]\nepochs = 1\n", r"train must be a table, got \[\{'epochs': 1\}\]"),
    ("value-as-table", b"[seed]\nx = 1\n", r"seed = \{'x': 1\} is not allowed; expected an integer"),
    ("unknown-section", b"[trian]\nepochs = 1\n", "unknown key 'trian'; allowed keys in the top level"),
    ("sub-table", b"[train.extra]\nx = 1\n", "unknown key 'train.extra'"),
    ("seed-2**64", f"seed = {BIG}\n".encode(), f"seed = {BIG} is not allowed"),
    ("weight-decay-1e300", b"[optimizer]\nweight_decay = 1e300\n", r"optimizer.weight_decay = 1e\+300 is not allowed"),
    ("inline-table-section", b"train = {epochs = 0}\n", "train.epochs = 0 is not allowed"),
    ("empty-file-is-defaults", b"", None),
    ("bom-is-ignored", b"\xef\xbb\xbfseed = 3\n", None),
]


@pytest.mark.parametrize("content, match", [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_config_files_give_one_sentence_and_stay_unchanged(tmp_path, content, match):
    path = tmp_path / "run.toml"
    path.write_bytes(content)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    if match is None:
        config.load(path)
    else:
        with pytest.raises(ConfigError, match=match) as info:
            config.load(path)
        assert "\n" not in str(info.value)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_bom_config_reads_like_without(tmp_path):
    (tmp_path / "bom.toml").write_bytes(b"\xef\xbb\xbfseed = 3\n[train]\nepochs = 2\n")
    assert config.load(tmp_path / "bom.toml") == config.load(None, ["seed=3", "train.epochs=2"])


def test_config_path_that_is_a_directory(tmp_path):
    with pytest.raises(ConfigError, match="config file '.*' is a directory; expected a TOML file"):
        config.load(tmp_path)


BAD_OVERRIDES = [
    (["train.epochs"], "--set 'train.epochs' is not of the form section.key=value"),
    (["=5"], "--set '=5' is not of the form"),
    ([".epochs=1"], "is not of the form"),
    (["train.=1"], "is not of the form"),
    (["train. =1"], "is not of the form"),
    (["unknown.key=1"], "unknown key 'unknown'; allowed keys in the top level: seed, data"),
    (["train.unknown=1"], "unknown key 'train.unknown'; allowed keys in train:"),
    (["data=wine"], "data must be a table, got 'wine'"),
    (["train.epochs=1", "train.epochs.x=1"], r"--set 'train.epochs.x=1': train.epochs = 1 is a value, not a table"),
    (["seed=1", "seed.x.y=1"], "--set 'seed.x.y=1': seed = 1 is a value, not a table"),
    (["model.hidden=[64,"], r"model.hidden = '\[64,' is not allowed; expected a list of integers"),
    (["train.batch_size=Full"], "train.batch_size = 'Full' is not allowed"),
    ([f"model.hidden={'[' * 3000}{']' * 3000}"], "model.hidden = '\\[\\[\\[.*… is not allowed"),
]


@pytest.mark.parametrize("overrides, match", BAD_OVERRIDES, ids=[" ".join(o)[:40] for o, _ in BAD_OVERRIDES])
def test_bad_overrides_give_one_sentence(overrides, match):
    with pytest.raises(ConfigError, match=match) as info:
        config.load(None, overrides)
    assert "\n" not in str(info.value)


def test_num_classes_round_trips_and_defaults_to_infer(tmp_path):
    assert config.load().data.num_classes == 0
    c = config.load(None, ["data.num_classes=12"])
    (tmp_path / "c.toml").write_text(c.to_toml())
    assert config.load(tmp_path / "c.toml").data.num_classes == 12


def test_validate_checks_a_config_built_in_python():
    bad = RunConfig()
    bad.seed = "0"
    with pytest.raises(ConfigError, match="seed = '0' is not allowed; expected an integer"):
        config.validate(bad)
    bad = RunConfig()
    bad.optimizer.weight_decay = math.inf
    with pytest.raises(ConfigError, match="optimizer.weight_decay = inf is not allowed"):
        config.validate(bad)
    bad = RunConfig()
    bad.train = {"epochs": 1}
    with pytest.raises(ConfigError, match="train must be a table"):
        config.validate(bad)
