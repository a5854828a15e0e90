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
    (["train.batch_size=0"], r"train.batch_size = 0 is not allowed; expected an integer >= 1 or \"full\""),
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
